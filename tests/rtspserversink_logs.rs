//! rtspserversink's debug log (category `lsrtsp`, levels 5 and 6) as an operator reads it: the
//! RTSP dialogue of a real client with peer, CSeq and session, sessions created and ended, refusals
//! with their reason, RTCP reports, slow clients, and never a credential.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;

/// Records kept at most: the capture stays bounded however long a test runs.
const MAX_RECORDS: usize = 20_000;

/// One `lsrtsp` record: level, message, id.
#[derive(Debug, Clone)]
struct Record {
    level: gst::DebugLevel,
    text: String,
    id: Option<String>,
}

/// Captures the `lsrtsp` records at level 6 while alive. Tests of this file take turns: the log
/// function is process-wide.
struct Capture {
    records: Arc<Mutex<Vec<Record>>>,
    handler: Option<gst::log::DebugLogFunction>,
    _turn: MutexGuard<'static, ()>,
}

impl Capture {
    fn start() -> Capture {
        static TURN: Mutex<()> = Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        init();
        gst::log::set_active(true);
        // Records go to the capture only, not to stderr.
        gst::log::remove_default_log_function();
        let cat = gst::DebugCategory::get("lsrtsp").expect("the lsrtsp category exists");
        cat.set_threshold(gst::DebugLevel::Log);
        let records: Arc<Mutex<Vec<Record>>> = Arc::default();
        let sink = records.clone();
        let handler =
            gst::log::add_log_function(move |cat, level, _file, _func, _line, _obj, msg| {
                if cat.name() != "lsrtsp" {
                    return;
                }
                let mut records = sink.lock().unwrap();
                if records.len() < MAX_RECORDS {
                    records.push(Record {
                        level,
                        text: msg.get().map(|m| m.to_string()).unwrap_or_default(),
                        id: msg.id().map(|id| id.to_string()),
                    });
                }
            });
        Capture {
            records,
            handler: Some(handler),
            _turn: turn,
        }
    }

    fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Waits (bounded) for a record containing all of `parts`.
    fn wait_for(&self, parts: &[&str], timeout: Duration) -> Option<Record> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self
                .records()
                .into_iter()
                .find(|r| parts.iter().all(|p| r.text.contains(p)))
            {
                return Some(r);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The text of every record, one a line, for failure messages (bounded).
    fn dump(&self) -> String {
        let all: String = self
            .records()
            .iter()
            .map(|r| format!("{:?} {}\n", r.level, r.text))
            .collect();
        tail(&all, 8000).to_owned()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(h) = self.handler.take() {
            gst::log::remove_log_function(h);
        }
        if let Some(cat) = gst::DebugCategory::get("lsrtsp") {
            cat.set_threshold(gst::DebugLevel::None);
        }
    }
}

/// The record at `level` that contains every one of `parts`.
fn find<'a>(records: &'a [Record], level: gst::DebugLevel, parts: &[&str]) -> Option<&'a Record> {
    records
        .iter()
        .find(|r| r.level == level && parts.iter().all(|p| r.text.contains(p)))
}

#[test]
fn a_real_client_session_is_logged_at_debug_and_headers_at_log_level() {
    let capture = Capture::start();
    let server = ServerPipeline::start("rtcp-interval=500", &av_source(false));
    let url = server.url("/");
    let port = server.port;

    // Credentials in a request URL and an Authorization header never appear.
    let mut raw = RawClient::connect(port);
    let raw_peer = raw.stream.local_addr().unwrap().to_string();
    let r = raw.request(
        "OPTIONS",
        &format!("rtsp://admin:hunter2@127.0.0.1:{port}/"),
        &[("Authorization", "Basic YWRtaW46aHVudGVyMg==")],
        "",
    );
    assert_eq!(r.status, 200);
    // A refused SETUP says why.
    let r = raw.request(
        "SETUP",
        &format!("{url}stream=0"),
        &[("Transport", "RTP/AVP;unicast")],
        "",
    );
    assert_eq!(r.status, 461);
    // A Receiver Report on an interleaved channel is logged with its figures.
    let (raw_session, _) = raw.play_tcp(&url);
    let rr = receiver_report();
    let mut frame = vec![b'$', 1];
    frame.extend_from_slice(&(rr.len() as u16).to_be_bytes());
    frame.extend_from_slice(&rr);
    raw.stream.write_all(&frame).unwrap();
    assert!(
        capture
            .wait_for(
                &[
                    &format!("RTCP report from {raw_peer}"),
                    "fraction lost 25.0%"
                ],
                Duration::from_secs(5)
            )
            .is_some(),
        "no receiver report record:\n{}",
        capture.dump()
    );
    // Its join asked the encoder for a keyframe.
    assert!(
        capture
            .wait_for(
                &[&format!(
                    "stream 0: asking upstream for a keyframe: session {raw_session} of \
                     {raw_peer} joins"
                )],
                Duration::ZERO
            )
            .is_some(),
        "no keyframe request record:\n{}",
        capture.dump()
    );
    let r = raw.request("TEARDOWN", &url, &[("Session", &raw_session)], "");
    assert_eq!(r.status, 200);

    // The real client: stock rtspsrc in gst-launch-1.0.
    assert_eq!(rtspsrc_decode(&url, "tcp", 60, ""), 60);

    let records = capture.records();
    let describe = records
        .iter()
        .find(|r| {
            r.level == gst::DebugLevel::Debug
                && r.text
                    .contains(&format!(": request DESCRIBE {url} RTSP/1.0 (CSeq "))
                && !r.text.starts_with(&format!("{raw_peer}:"))
        })
        .unwrap_or_else(|| panic!("no DESCRIBE record:\n{}", capture.dump()));
    assert_eq!(describe.id.as_deref(), Some("sink"), "{describe:?}");
    // The peer is the client's address, 127.0.0.1:<its port>.
    let peer = describe.text.split(": request").next().unwrap().to_owned();
    assert!(peer.starts_with("127.0.0.1:"), "{describe:?}");
    assert_ne!(peer, raw_peer);
    let of_peer: Vec<&Record> = records
        .iter()
        .filter(|r| r.text.starts_with(&format!("{peer}:")))
        .collect();
    let has = |level: gst::DebugLevel, parts: &[&str]| {
        of_peer
            .iter()
            .any(|r| r.level == level && parts.iter().all(|p| r.text.contains(p)))
    };
    let setup = of_peer
        .iter()
        .find(|r| r.text.contains(": request SETUP ") && r.text.contains("stream=0 RTSP/1.0"))
        .unwrap_or_else(|| panic!("no SETUP record for {peer}:\n{}", capture.dump()));
    assert!(setup.text.contains("(CSeq "), "{setup:?}");
    // The session the SETUP created, from the answer's record.
    let created = of_peer
        .iter()
        .find(|r| r.text.contains(": session ") && r.text.contains(" created (timeout 60 s"))
        .unwrap_or_else(|| panic!("no session created record:\n{}", capture.dump()));
    let session = created
        .text
        .split(": session ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .unwrap()
        .to_owned();
    assert!(
        has(
            gst::DebugLevel::Debug,
            &[": request PLAY ", &format!("session {session})")]
        ),
        "no PLAY request record:\n{}",
        capture.dump()
    );
    assert!(
        has(
            gst::DebugLevel::Debug,
            &[": answer RTSP/1.0 200 ", &format!("session {session})")]
        ),
        "no status line record:\n{}",
        capture.dump()
    );
    assert!(
        has(
            gst::DebugLevel::Debug,
            &[&format!(
                "session {session} stream 0: sending over tcp {peer} interleaved channels"
            )]
        ),
        "no transport record:\n{}",
        capture.dump()
    );
    assert!(
        has(
            gst::DebugLevel::Debug,
            &[&format!("session {session} plays after ")]
        ),
        "no play record:\n{}",
        capture.dump()
    );
    // Headers at level 6 only: the PLAY answer's RTP-Info.
    assert!(
        has(
            gst::DebugLevel::Log,
            &[": answer headers: ", "RTP-Info: url="]
        ),
        "no answer headers record:\n{}",
        capture.dump()
    );
    assert!(
        !has(gst::DebugLevel::Debug, &["headers: "]),
        "headers at debug level"
    );
    // The session ends: by TEARDOWN, or with its connection.
    let ended = capture
        .wait_for(&[&format!("{peer}: session {session} ")], Duration::ZERO)
        .is_some()
        && (capture
            .wait_for(
                &[&format!("session {session} torn down by the client")],
                Duration::from_secs(5),
            )
            .is_some()
            || capture
                .wait_for(
                    &[&format!("session {session} ended with its connection")],
                    Duration::from_secs(1),
                )
                .is_some());
    assert!(ended, "session end not logged:\n{}", capture.dump());
    assert!(
        capture
            .wait_for(
                &[&format!("{peer}: connection "), " closed: "],
                Duration::from_secs(5)
            )
            .is_some(),
        "connection close not logged:\n{}",
        capture.dump()
    );
    drop(server);
    let records = capture.records();
    // Sender Reports at level 6.
    assert!(
        find(
            &records,
            gst::DebugLevel::Log,
            &["RTCP sender report to tcp "]
        )
        .is_some(),
        "no sender report record:\n{}",
        capture.dump()
    );
    // The raw client's refused SETUP and its redacted credentials.
    assert!(
        find(
            &records,
            gst::DebugLevel::Debug,
            &[
                &raw_peer,
                "SETUP refused: 461 ",
                "no alternative the server allows"
            ]
        )
        .is_some(),
        "no refusal record: {:?}",
        records
            .iter()
            .filter(|r| r.text.contains("refused"))
            .collect::<Vec<_>>()
    );
    assert!(
        find(
            &records,
            gst::DebugLevel::Debug,
            &[&format!(
                "request OPTIONS rtsp://redacted@127.0.0.1:{port}/ RTSP/1.0"
            )]
        )
        .is_some(),
        "no redacted OPTIONS record:\n{}",
        capture.dump()
    );
    assert!(
        find(
            &records,
            gst::DebugLevel::Log,
            &["Authorization: <redacted>"]
        )
        .is_some(),
        "no redacted header:\n{}",
        capture.dump()
    );
    for r in &records {
        assert!(
            !r.text.contains("hunter2") && !r.text.contains("YWRtaW46aHVudGVyMg"),
            "a credential in the log: {r:?}"
        );
    }
    assert!(records.len() < MAX_RECORDS, "{} records", records.len());
}

#[test]
fn a_slow_client_is_logged_once_per_episode_and_when_cut_off() {
    let capture = Capture::start();
    // Large frames (noise) so that the stalled client's socket buffers fill quickly.
    let server = ServerPipeline::start(
        "client-queue-size=262144 client-stall-timeout=1000",
        NOISE_VIDEO,
    );
    // A client that plays over TCP and never reads, with a tiny receive buffer.
    let mut stalled = RawClient::from_stream(connect_small_buffer(server.port));
    let peer = stalled.stream.local_addr().unwrap().to_string();
    stalled.play_tcp(&server.url("/"));
    let cut = capture.wait_for(
        &[
            &format!("{peer}: disconnecting a stalled client"),
            "took nothing for 1s",
        ],
        Duration::from_secs(30),
    );
    assert!(cut.is_some(), "no stall record:\n{}", capture.dump());
    assert!(
        capture
            .wait_for(
                &[
                    &format!("{peer}: connection "),
                    "closed: the client read nothing for 1s"
                ],
                Duration::from_secs(5),
            )
            .is_some(),
        "no close record:\n{}",
        capture.dump()
    );
    let records = capture.records();
    let drops: Vec<&Record> = records
        .iter()
        .filter(|r| {
            r.text
                .starts_with(&format!("{peer}: client reads too slowly: "))
        })
        .collect();
    // The stalled client never caught up: one episode, one record, however many frames.
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!(drops[0].level, gst::DebugLevel::Debug);
    assert!(
        drops[0].text.contains("bytes queued (limit 262144)"),
        "{drops:?}"
    );
    assert!(
        server.stats().get::<u64>("frames-dropped").unwrap() > 1,
        "{}",
        server.stats()
    );
    drop(stalled);
}

#[test]
fn an_expired_session_is_logged_with_why() {
    let capture = Capture::start();
    let server = ServerPipeline::start("session-timeout=1", &av_source(false));
    let url = server.url("/");
    let mut c = RawClient::connect(server.port);
    let peer = c.stream.local_addr().unwrap().to_string();
    let r = c.request(
        "SETUP",
        &format!("{url}stream=0"),
        &[("Transport", "RTP/AVP;unicast;client_port=40020-40021")],
        "",
    );
    assert_eq!(r.status, 200);
    let session = r.session().unwrap();
    let expired = capture.wait_for(
        &[
            &format!(
                "{peer}: session {session} expired: no RTSP request or RTCP from the client for "
            ),
            "(session-timeout 1 s)",
        ],
        Duration::from_secs(6),
    );
    assert!(expired.is_some(), "no expiry record:\n{}", capture.dump());
    assert!(
        capture
            .wait_for(
                &[&format!(
                    "session {session} stream 0: sending over udp 127.0.0.1:40020 (RTCP port 40021)"
                )],
                Duration::ZERO
            )
            .is_some(),
        "no transport record:\n{}",
        capture.dump()
    );
}

#[test]
fn access_decisions_are_logged_with_why_and_never_a_secret() {
    use gstlivestreaming::rtsp::auth::{
        Authenticator, Challenge, Credentials, choose, parse_challenges,
    };

    let capture = Capture::start();
    let server = ServerPipeline::start(
        r#"users=<"alice:S3cr3t"> allowed-addresses=127.0.0.1"#,
        &av_source(false),
    );
    let url = server.url("/");
    let port = server.port;
    let creds = Credentials {
        user: "alice".into(),
        password: "S3cr3t".into(),
    };

    // ffmpeg with a wrong, then the right password.
    let (out, _) = run(
        std::process::Command::new("ffprobe").args([
            "-v",
            "error",
            &format!("rtsp://alice:Guessed1@127.0.0.1:{port}/"),
        ]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert_eq!(
        ffprobe(
            &format!("rtsp://alice:S3cr3t@127.0.0.1:{port}/"),
            "tcp",
            "stream=codec_name"
        )
        .trim(),
        "h264"
    );

    // A hand-made Digest answer, sent twice, then from another connection.
    let mut raw = RawClient::connect(port);
    let raw_peer = raw.stream.local_addr().unwrap().to_string();
    let r = raw.request("DESCRIBE", &url, &[], "");
    let offered: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "WWW-Authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    let challenges = parse_challenges(offered);
    let mut auth = Authenticator::new(creds.clone(), choose(&challenges).unwrap().clone());
    let authorization = auth.authorization("DESCRIBE", &url);
    let response = authorization.split("response=\"").nth(1).unwrap()[..64].to_owned();
    let with = [("Authorization", authorization.as_str())];
    assert_eq!(raw.request("DESCRIBE", &url, &with, "").status, 200);
    assert_eq!(raw.request("DESCRIBE", &url, &with, "").status, 401);
    let mut other = RawClient::connect(port);
    let next = auth.authorization("DESCRIBE", &url);
    let r = other.request("DESCRIBE", &url, &[("Authorization", &next)], "");
    assert_eq!(r.status, 401);
    // The right password with a nonce the server never issued.
    let forged = Challenge::Digest {
        realm: "GStreamer RTSP Server".into(),
        nonce: "0123456789abcdef".into(),
        opaque: None,
        algorithm: None,
        qop_auth: false,
        stale: false,
        userhash: false,
    };
    let stale = Authenticator::new(creds, forged).authorization("DESCRIBE", &url);
    let r = other.request("DESCRIBE", &url, &[("Authorization", &stale)], "");
    assert_eq!(r.status, 401);
    assert!(
        r.header("WWW-Authenticate")
            .unwrap()
            .ends_with("stale=true")
    );

    // A client from an address that is not allowed.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 3], 0)).into())
        .unwrap();
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut denied = RawClient::from_stream(socket.into());
    assert_eq!(denied.request("OPTIONS", "*", &[], "").status, 403);
    assert!(
        capture
            .wait_for(
                &["127.0.0.3", "closed: its address is not allowed"],
                Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        capture.dump()
    );

    let records = capture.records();
    let debug = gst::DebugLevel::Debug;
    for parts in [
        &["DESCRIBE refused: 401 Unauthorized: user 'alice': wrong password"][..],
        &["DESCRIBE authenticated: user 'alice' (Digest MD5)"],
        &[
            &raw_peer,
            "DESCRIBE authenticated: user 'alice' (Digest SHA-256)",
        ],
        &[
            &raw_peer,
            "DESCRIBE refused: 401 Unauthorized: user 'alice': nonce count 00000001 replayed",
        ],
        &[
            "DESCRIBE refused: 401 Unauthorized: user 'alice': the nonce belongs to another connection",
        ],
        &["DESCRIBE refused: 401 Unauthorized: user 'alice': stale nonce"],
        &[
            "127.0.0.3",
            "OPTIONS refused: 403 Forbidden: address 127.0.0.3 is not in allowed-addresses",
        ],
    ] {
        assert!(
            find(&records, debug, parts).is_some(),
            "no debug record with {parts:?}:\n{}",
            capture.dump()
        );
    }
    let leaks: Vec<&Record> = records
        .iter()
        .filter(|r| {
            r.text.contains("S3cr3t") || r.text.contains("Guessed1") || r.text.contains(&response)
        })
        .collect();
    assert!(leaks.is_empty(), "secrets logged: {leaks:?}");
    assert!(
        find(
            &records,
            gst::DebugLevel::Log,
            &["Authorization: <redacted>"]
        )
        .is_some(),
        "{}",
        capture.dump()
    );
}
