//! rtspserversink's access control against real clients: ffprobe, the stock rtspsrc and our
//! rtspsrc2 with right, wrong and missing credentials (Digest, and Basic when asked for), a
//! refused address (403), the `authorize` signal, sessions that no other connection or user can
//! take over (454); each while another, authorised client keeps playing.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstlivestreaming::rtsp::auth::{Authenticator, Credentials, choose, parse_challenges};

const USERS: &str = r#"users=<"alice:S3cr3t","bob:B0bPass">"#;
const REALM: &str = "GStreamer RTSP Server";

/// Buffers (or packets) seen by a client that should play throughout a test.
#[derive(Default)]
struct Arrivals {
    count: u64,
    last: Option<Instant>,
    max_gap: Duration,
}

impl Arrivals {
    fn record(&mut self, buffers: u64) {
        let now = Instant::now();
        if let Some(last) = self.last {
            self.max_gap = self.max_gap.max(now - last);
        }
        self.last = Some(now);
        self.count += buffers;
    }

    fn assert_played_throughout(&self, who: &str) {
        assert!(self.count > 30, "{who}: only {} buffers", self.count);
        let since = self.last.map(|l| l.elapsed());
        assert!(
            since.is_some_and(|s| s < Duration::from_secs(2)),
            "{who} stopped playing {since:?} ago"
        );
        assert!(
            self.max_gap < Duration::from_secs(2),
            "{who} had a gap of {:?}",
            self.max_gap
        );
    }
}

/// rtspsrc2 with alice's credentials over TCP, playing until dropped.
struct Keeper {
    pipeline: gst::Pipeline,
    arrivals: Arc<Mutex<Arrivals>>,
}

impl Keeper {
    fn start(url: &str) -> Keeper {
        init();
        let pipeline = gst::parse::launch(&format!(
            "rtspsrc2 name=src location={url} protocols=tcp user-id=alice user-pw=S3cr3t \
             src. ! fakesink name=out sync=false async=false"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        assert_ours(&pipeline.by_name("src").unwrap());
        let arrivals: Arc<Mutex<Arrivals>> = Arc::default();
        let sink = arrivals.clone();
        pipeline
            .by_name("out")
            .unwrap()
            .static_pad("sink")
            .unwrap()
            .add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                move |_, info| {
                    // A buffer list (a frame's packets read at once) counts its buffers.
                    let buffers = match &info.data {
                        Some(gst::PadProbeData::BufferList(list)) => list.len() as u64,
                        _ => 1,
                    };
                    // Not poisoned by a failed assertion of the test thread: no abort here.
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(buffers);
                    gst::PadProbeReturn::Ok
                },
            );
        pipeline.set_state(gst::State::Playing).unwrap();
        let keeper = Keeper { pipeline, arrivals };
        let deadline = Instant::now() + Duration::from_secs(20);
        while keeper.arrivals.lock().unwrap().count < 10 {
            let bus = keeper.pipeline.bus().unwrap();
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                panic!("the keeper failed: {msg:?}");
            }
            assert!(Instant::now() < deadline, "the keeper does not play");
            std::thread::sleep(Duration::from_millis(50));
        }
        keeper
    }

    fn assert_played_throughout(&self) {
        self.arrivals
            .lock()
            .unwrap()
            .assert_played_throughout("rtspsrc2 (alice)");
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Runs ffprobe on `url` over TCP: (success, stdout, stderr).
fn ffprobe_run(url: &str) -> (bool, String, String) {
    let (out, timed_out) = run(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
            url,
        ]),
        Duration::from_secs(30),
    );
    assert!(!timed_out, "ffprobe timed out");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stock rtspsrc in gst-launch-1.0 with `extra` properties: (depayloaded buffers that
/// reached the sink, all output). Played means all 10 arrived: the exit status is not the
/// measure, because rtspsrc 1.22 over TCP can fail its own PAUSE on the way down after the EOS
/// ("Could not send message. (Received end-of-file)" with the request never sent), seen on a
/// loaded machine.
fn rtspsrc_run(url: &str, extra: &str) -> (u32, String) {
    let pipeline = format!(
        "rtspsrc location={url} protocols=tcp {extra} ! rtph264depay \
         ! fakesink num-buffers=10 silent=false"
    );
    let (out, timed_out) = run(
        Command::new("gst-launch-1.0")
            .arg("-v")
            .args(pipeline.split_whitespace()),
        Duration::from_secs(30),
    );
    assert!(!timed_out, "rtspsrc timed out");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let buffers = stdout.matches("fakesink0: last-message = chain").count() as u32;
    (
        buffers,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// rtspsrc2 decoding 30 frames of `url`, or its error with the error's kind.
fn rtspsrc2_run(url: &str, extra: &str) -> Result<(), String> {
    common::stock::decode(&format!(
        "location={url} protocols=tcp reconnect-attempts=0 {extra}"
    ))
}

/// The `WWW-Authenticate` headers of a response, in order.
fn challenges(r: &RawResponse) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("WWW-Authenticate"))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn real_clients_with_the_right_credentials_play() {
    let server = ServerPipeline::start(USERS, &av_source(false));
    let url = server.url("/");
    let keeper = Keeper::start(&url);

    let port = server.port;
    let (ok, out, err) = ffprobe_run(&format!("rtsp://alice:S3cr3t@127.0.0.1:{port}/"));
    assert!(ok && out.trim() == "h264", "ffprobe: {out} {err}");
    let (buffers, out) = rtspsrc_run(&url, "user-id=bob user-pw=B0bPass");
    assert_eq!(
        buffers,
        10,
        "stock rtspsrc with Digest: {}",
        tail(&out, 2000)
    );
    rtspsrc2_run(&url, "user-id=bob user-pw=B0bPass").unwrap();

    // Digest only by default: both algorithms, MD5 last (ffmpeg and rtspsrc take the last one).
    let mut raw = RawClient::connect(port);
    let r = raw.request("DESCRIBE", &url, &[], "");
    assert_eq!(r.status, 401);
    let offered = challenges(&r);
    assert_eq!(offered.len(), 2, "{offered:?}");
    assert!(offered[0].starts_with(&format!(
        "Digest realm=\"{REALM}\", qop=\"auth\", algorithm=SHA-256, nonce="
    )));
    assert!(offered[1].contains("algorithm=MD5"), "{offered:?}");
    // OPTIONS stays open, as in gst-rtsp-server.
    assert_eq!(raw.request("OPTIONS", "*", &[], "").status, 200);
    keeper.assert_played_throughout();
}

#[test]
fn wrong_or_missing_credentials_get_401_and_the_clients_error() {
    let server = ServerPipeline::start(USERS, &av_source(false));
    let url = server.url("/");
    let keeper = Keeper::start(&url);
    let port = server.port;

    for creds in ["alice:Guessed1@", "carol:S3cr3t@", ""] {
        let (ok, out, err) = ffprobe_run(&format!("rtsp://{creds}127.0.0.1:{port}/"));
        assert!(!ok, "ffprobe with '{creds}' played: {out}");
        assert!(err.contains("401 Unauthorized"), "{creds}: {err}");
    }
    let (buffers, out) = rtspsrc_run(&url, "user-id=alice user-pw=Guessed1");
    assert_eq!(buffers, 0, "stock rtspsrc played with a wrong password");
    assert!(out.contains("Unauthorized"), "{}", tail(&out, 2000));
    let (buffers, out) = rtspsrc_run(&url, "");
    assert!(
        buffers == 0 && out.contains("Unauthorized"),
        "{}",
        tail(&out, 2000)
    );

    let err = rtspsrc2_run(&url, "user-id=alice user-pw=Guessed1").unwrap_err();
    assert!(
        err.contains("refused the credentials of user 'alice'"),
        "{err}"
    );
    assert!(err.contains("[Some(NotAuthorized)]"), "{err}");
    let err = rtspsrc2_run(&url, "").unwrap_err();
    assert!(err.contains("requires credentials"), "{err}");

    // Every method but OPTIONS needs them, also for a path that does not exist.
    let mut raw = RawClient::connect(port);
    for (method, path) in [
        ("DESCRIBE", "/nope"),
        ("SETUP", "/stream=0"),
        ("PLAY", "/"),
        ("GET_PARAMETER", "/"),
        ("TEARDOWN", "/"),
    ] {
        let r = raw.request(method, &server.url(path), &[], "");
        assert_eq!(r.status, 401, "{method} {path}");
        assert_eq!(challenges(&r).len(), 2, "{method}");
    }
    // Basic is not offered over plain TCP unless asked for: refused even with the right password.
    let r = raw.request(
        "DESCRIBE",
        &url,
        &[("Authorization", "Basic YWxpY2U6UzNjcjN0")],
        "",
    );
    assert_eq!(r.status, 401);
    keeper.assert_played_throughout();
}

#[test]
fn basic_only_when_asked_for() {
    let server = ServerPipeline::start(&format!("auth-methods=basic {USERS}"), &av_source(false));
    let url = server.url("/");
    let mut raw = RawClient::connect(server.port);
    let r = raw.request("DESCRIBE", &url, &[], "");
    assert_eq!(r.status, 401);
    assert_eq!(challenges(&r), [format!("Basic realm=\"{REALM}\"")]);
    let r = raw.request(
        "DESCRIBE",
        &url,
        &[("Authorization", "Basic YWxpY2U6UzNjcjN0")],
        "",
    );
    assert_eq!(r.status, 200);
    let (buffers, out) = rtspsrc_run(&url, "user-id=alice user-pw=S3cr3t");
    assert_eq!(
        buffers,
        10,
        "stock rtspsrc with Basic: {}",
        tail(&out, 2000)
    );
    let (buffers, out) = rtspsrc_run(&url, "user-id=alice user-pw=Guessed1");
    assert!(
        buffers == 0 && out.contains("Unauthorized"),
        "{}",
        tail(&out, 2000)
    );
    drop(server);

    let server = ServerPipeline::start(
        &format!("auth-methods=basic+digest {USERS}"),
        &av_source(false),
    );
    let mut raw = RawClient::connect(server.port);
    let r = raw.request("DESCRIBE", &server.url("/"), &[], "");
    let offered = challenges(&r);
    assert_eq!(offered.len(), 3, "{offered:?}");
    assert!(offered[0].contains("SHA-256") && offered[1].contains("MD5"));
    assert!(offered[2].starts_with("Basic"));
    // ffmpeg prefers Digest.
    let (ok, out, err) = ffprobe_run(&format!("rtsp://alice:S3cr3t@127.0.0.1:{}/", server.port));
    assert!(ok && out.trim() == "h264", "ffprobe: {out} {err}");
}

/// A TCP connection to 127.0.0.1:`port` from `local` (another loopback address).
fn connect_from(local: [u8; 4], port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((local, 0)).into()).unwrap();
    socket
        .connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)).into(),
            Duration::from_secs(5),
        )
        .unwrap();
    socket.into()
}

/// A hand-driven client that plays over TCP on a thread of its own until stopped.
struct RawKeeper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Arrivals>>,
}

impl RawKeeper {
    fn start(mut client: RawClient, url: &str) -> RawKeeper {
        client.play_tcp(url);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut arrivals = Arrivals::default();
            while !flag.load(Ordering::Relaxed) {
                if let Incoming::Data(0, _) = client.read_next() {
                    arrivals.record(1);
                }
            }
            arrivals
        });
        RawKeeper {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Arrivals {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the keeper read")
    }
}

#[test]
fn a_denied_address_gets_403_and_is_disconnected() {
    let server = ServerPipeline::start("allowed-addresses=127.0.0.2/32", &av_source(false));
    let url = server.url("/");
    let port = server.port;
    let keeper = RawKeeper::start(
        RawClient::from_stream(connect_from([127, 0, 0, 2], port)),
        &url,
    );

    let mut denied = RawClient::connect(port);
    let r = denied.request("OPTIONS", "*", &[], "");
    assert_eq!(r.status, 403);
    let mut rest = [0u8; 16];
    assert_eq!(
        std::io::Read::read(&mut denied.stream, &mut rest).unwrap_or(0),
        0,
        "the connection is closed after the 403"
    );
    let (ok, _, err) = ffprobe_run(&url);
    assert!(!ok && err.contains("403 Forbidden"), "{err}");
    let (buffers, out) = rtspsrc_run(&url, "");
    assert!(
        buffers == 0 && out.contains("Forbidden"),
        "{}",
        tail(&out, 2000)
    );
    std::thread::sleep(Duration::from_secs(1));
    keeper
        .finish()
        .assert_played_throughout("the client from 127.0.0.2");
}

#[test]
fn the_authorize_signal_decides_each_request() {
    type Call = (
        Option<String>,
        String,
        String,
        String,
        std::thread::ThreadId,
    );
    let server = ServerPipeline::start(USERS, &av_source(false));
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let seen = calls.clone();
    server.sink.connect("authorize", false, move |args| {
        let user = args[1].get::<Option<String>>().unwrap();
        let method = args[2].get::<String>().unwrap();
        let path = args[3].get::<String>().unwrap();
        let address = args[4].get::<String>().unwrap();
        let allow = user.as_deref() != Some("bob");
        let thread = std::thread::current().id();
        seen.lock()
            .unwrap()
            .push((user, method, path, address, thread));
        Some(allow.to_value())
    });
    let url = server.url("/");
    let keeper = Keeper::start(&url);
    let port = server.port;

    let (ok, _, err) = ffprobe_run(&format!("rtsp://bob:B0bPass@127.0.0.1:{port}/"));
    assert!(!ok && err.contains("403 Forbidden"), "{err}");
    let err = rtspsrc2_run(&url, "user-id=bob user-pw=B0bPass").unwrap_err();
    assert!(err.contains("403"), "{err}");
    let (ok, out, err) = ffprobe_run(&format!("rtsp://alice:S3cr3t@127.0.0.1:{port}/"));
    assert!(ok && out.trim() == "h264", "ffprobe: {out} {err}");
    keeper.assert_played_throughout();

    let calls = calls.lock().unwrap();
    let has = |user: &str, method: &str| {
        calls.iter().any(|(u, m, p, a, _)| {
            u.as_deref() == Some(user) && m == method && p == "/" && a == "127.0.0.1"
        })
    };
    assert!(
        has("alice", "DESCRIBE") && has("alice", "PLAY"),
        "{calls:?}"
    );
    assert!(has("bob", "DESCRIBE"), "{calls:?}");
    assert!(calls.iter().all(|c| c.1 != "OPTIONS"), "{calls:?}");
    assert!(calls.iter().any(|c| c.2.contains("stream=0")), "{calls:?}");
    let test_thread = std::thread::current().id();
    assert!(
        calls.iter().all(|c| c.4 != test_thread),
        "emitted on a runtime thread"
    );
}

/// A raw client that answers 401s with the given credentials.
struct AuthedClient {
    raw: RawClient,
    credentials: Credentials,
    auth: Option<Authenticator>,
}

impl AuthedClient {
    fn connect(port: u16, user: &str, password: &str) -> AuthedClient {
        AuthedClient {
            raw: RawClient::connect(port),
            credentials: Credentials {
                user: user.into(),
                password: password.into(),
            },
            auth: None,
        }
    }

    fn request(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> RawResponse {
        for _ in 0..2 {
            let mut with = headers.to_vec();
            let authorization = self.auth.as_mut().map(|a| a.authorization(method, url));
            if let Some(a) = &authorization {
                with.push(("Authorization", a));
            }
            let r = self.raw.request(method, url, &with, "");
            if r.status != 401 {
                return r;
            }
            let offered = parse_challenges(challenges(&r));
            let challenge = choose(&offered).expect("a challenge").clone();
            self.auth = Some(Authenticator::new(self.credentials.clone(), challenge));
        }
        panic!(
            "{method} still 401 with {}'s credentials",
            self.credentials.user
        );
    }
}

#[test]
fn a_session_cannot_be_taken_over_from_another_connection_or_user() {
    let server = ServerPipeline::start(USERS, &av_source(false));
    let url = server.url("/");
    let port = server.port;
    let mut owner = AuthedClient::connect(port, "alice", "S3cr3t");
    let transport = [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")];
    let r = owner.request("SETUP", &format!("{url}stream=0"), &transport);
    assert_eq!(r.status, 200, "{r:?}");
    let session = r.session().unwrap();
    let r = owner.request("PLAY", &url, &[("Session", &session)]);
    assert_eq!(r.status, 200);
    assert_eq!(owner.raw.read_interleaved(0, 5).len(), 5);

    let with_session = [("Session", session.as_str())];
    // The same user on another connection, and another user on yet another one.
    for (user, password) in [("alice", "S3cr3t"), ("bob", "B0bPass")] {
        let mut other = AuthedClient::connect(port, user, password);
        for method in ["GET_PARAMETER", "PAUSE", "PLAY", "TEARDOWN"] {
            let r = other.request(method, &url, &with_session);
            assert_eq!(r.status, 454, "{user}: {method}");
        }
        let mut setup = with_session.to_vec();
        setup.push(("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3"));
        let r = other.request("SETUP", &format!("{url}stream=0"), &setup);
        assert_eq!(r.status, 454, "{user}: SETUP");
    }
    // Another user on the owner's connection.
    owner.credentials.user = "bob".into();
    owner.credentials.password = "B0bPass".into();
    owner.auth = None;
    let r = owner.request("PAUSE", &url, &with_session);
    assert_eq!(r.status, 454, "bob on alice's connection");
    owner.credentials.user = "alice".into();
    owner.credentials.password = "S3cr3t".into();
    owner.auth = None;
    // The owner still plays and keeps its session.
    assert_eq!(owner.raw.read_interleaved(0, 30).len(), 30);
    let r = owner.request("GET_PARAMETER", &url, &with_session);
    assert_eq!(r.status, 200);

    // Without users, the connection alone owns the session.
    let server = ServerPipeline::start("", &av_source(false));
    let url = server.url("/");
    let mut owner = RawClient::connect(server.port);
    let (session, _) = owner.play_tcp(&url);
    let mut thief = RawClient::connect(server.port);
    let r = thief.request("TEARDOWN", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 454);
    assert_eq!(owner.read_interleaved(0, 30).len(), 30);
}

/// A pipeline of an rtspserversink with `props` alone, brought to READY: the error it posts.
fn start_error(props: &str) -> String {
    init();
    let sink =
        gst::parse::launch(&format!("rtspserversink address=127.0.0.1 port=0 {props}")).unwrap();
    let pipeline = gst::Pipeline::new();
    pipeline.add(&sink).unwrap();
    assert!(
        pipeline.set_state(gst::State::Ready).is_err(),
        "{props} started"
    );
    let msg = pipeline
        .bus()
        .unwrap()
        .pop_filtered(&[gst::MessageType::Error])
        .expect("an error message");
    let _ = pipeline.set_state(gst::State::Null);
    match msg.view() {
        gst::MessageView::Error(e) => e.error().to_string(),
        _ => unreachable!(),
    }
}

#[test]
fn bad_access_settings_are_clear_errors_at_start() {
    let dir = common::hls::TempDir::new("auth");
    let file = dir.join("users.htdigest");
    std::fs::write(
        &file,
        format!("alice:{REALM}:090fb52e784bf0c7c6a90a0eb113199c\nbob:{REALM}:not-an-ha1\n"),
    )
    .unwrap();
    let err = start_error(&format!("users-file={}", file.display()));
    assert!(
        err.contains("users-file") && err.contains("line 2"),
        "{err}"
    );
    assert!(!err.contains("090fb52e"), "no HA1 in errors: {err}");

    let err = start_error(&format!("users-file={}", dir.join("missing").display()));
    assert!(err.contains("cannot be read"), "{err}");
    let err = start_error("allowed-addresses=\"127.0.0.1, 10.0.0.0/33\"");
    assert!(err.contains("'10.0.0.0/33'"), "{err}");
    let err = start_error(r#"users=<"alice:S3cr3t","nocolon">"#);
    assert!(err.contains("users entry 2"), "{err}");
    assert!(!err.contains("S3cr3t") && !err.contains("nocolon"), "{err}");

    // A good htdigest file: alice's HA1 for the default realm, played by ffprobe.
    std::fs::write(
        &file,
        format!("# htdigest\nalice:{REALM}:090fb52e784bf0c7c6a90a0eb113199c\n"),
    )
    .unwrap();
    let server =
        ServerPipeline::start(&format!("users-file={}", file.display()), &av_source(false));
    let (ok, out, err) = ffprobe_run(&format!("rtsp://alice:S3cr3t@127.0.0.1:{}/", server.port));
    assert!(ok && out.trim() == "h264", "ffprobe: {out} {err}");
}
