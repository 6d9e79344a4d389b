//! rtspsrc2 on a network with an attacker: a spoofer on another loopback address (127.0.0.2)
//! sending RTP and RTCP to the client's ports while it plays from rtspserversink on 127.0.0.1,
//! and redirects (3xx, REDIRECT) to scripted servers that record the `Authorization` they get:
//! credentials go only to the host they were given for, and never show in a log line.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use gst::prelude::*;

/// What left rtspsrc2's pad: one RTP packet.
#[derive(Debug, Clone, Copy)]
struct Out {
    seq: u16,
    ts: u32,
    ssrc: u32,
    pts: Option<gst::ClockTime>,
    discont: bool,
    at: Instant,
}

/// A free even/odd UDP port pair on every address (for rtspsrc2's `port-range`).
fn free_port_pair() -> u16 {
    loop {
        let a = UdpSocket::bind("0.0.0.0:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p.is_multiple_of(2) && p < u16::MAX && UdpSocket::bind(("0.0.0.0", p + 1)).is_ok() {
            return p;
        }
    }
}

/// The current wallclock as a 64-bit NTP timestamp.
fn ntp_now() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let secs = d.as_secs() + 2_208_988_800;
    (secs << 32) | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

fn rtp(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0x65, 0x88, 0x84, 0x00]);
    p
}

fn sender_report(ssrc: u32, ntp: u64, rtptime: u32) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&ntp.to_be_bytes());
    p.extend_from_slice(&rtptime.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p
}

#[test]
fn a_spoofer_on_another_address_does_not_disturb_the_stream() {
    let port = free_port_pair();
    let client = format!("protocols=udp port-range={port}-{}", port + 1);
    let spoofer = UdpSocket::bind("127.0.0.2:0").expect("127.0.0.2 on loopback");
    spoofed_while_playing("", &client, &spoofer, ("127.0.0.1".parse().unwrap(), port));
}

/// The same over multicast: the spoofer on 127.0.0.2 sends to the group and ports the
/// server's SETUP answer names (rtspserversink has one group and one port pair to give).
#[test]
fn a_spoofer_sending_to_the_multicast_group_does_not_disturb_the_stream() {
    let port = free_port_pair();
    let server = format!(
        "multicast-iface=127.0.0.1 multicast-address-min=239.255.46.1 \
         multicast-address-max=239.255.46.1 multicast-port-min={port} multicast-port-max={}",
        port + 1
    );
    let spoofer = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    spoofer
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .expect("127.0.0.2 on loopback");
    spoofer
        .set_multicast_if_v4(&"127.0.0.1".parse().unwrap())
        .unwrap();
    let spoofer = UdpSocket::from(spoofer);
    let group = "239.255.46.1".parse().unwrap();
    spoofed_while_playing(
        &server,
        "protocols=udp-mcast multicast-iface=lo",
        &spoofer,
        (group, port),
    );
}

/// rtspsrc2 (`client` properties) plays from rtspserversink (`server` properties) while
/// `spoofer` sends RTP and RTCP to `target` (the RTP address and port; RTCP on the next port):
/// nothing of it reaches the pad or the timeline, and every datagram is counted as foreign.
fn spoofed_while_playing(
    server: &str,
    client: &str,
    spoofer: &UdpSocket,
    (target, port): (std::net::IpAddr, u16),
) {
    // Sender Reports twice a second, so that the timeline is anchored before the attack.
    let server = ServerPipeline::start(&format!("rtcp-interval=500 {server}"), &av_source(false));
    let (pipeline, src, out) = launch_recording_pads(
        &format!(
            "rtspsrc2 name=src location={} {client} latency=200 ! fakesink sync=false",
            server.url("/"),
        ),
        "src",
        |b, at| {
            let m = b.map_readable().unwrap();
            Out {
                seq: u16::from_be_bytes([m[2], m[3]]),
                ts: u32::from_be_bytes([m[4], m[5], m[6], m[7]]),
                ssrc: u32::from_be_bytes([m[8], m[9], m[10], m[11]]),
                pts: b.pts(),
                discont: b.flags().contains(gst::BufferFlags::DISCONT),
                at,
            }
        },
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let stream_stats = |src: &gst::Element| {
        src.property::<gst::Structure>("stats")
            .get::<gst::Array>("streams")
            .unwrap()
            .first()
            .map(|s| s.get::<gst::Structure>().unwrap())
    };
    // Playing, with the sender's reports applied.
    let deadline = Instant::now() + Duration::from_secs(15);
    while out.lock().unwrap().len() < 60
        || stream_stats(&src).is_none_or(|s| s.get::<u64>("sender-reports").unwrap() < 2)
    {
        assert!(Instant::now() < deadline, "not playing within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The attack: what the sender sends, with its own SSRC, but from 127.0.0.2. Runs of packets
    // far ahead in sequence (each would restart the jitter buffer) with timestamps an hour on,
    // and Sender Reports an hour off (each would move the timeline).
    let last = *out.lock().unwrap().last().unwrap();
    let attack_start = Instant::now();
    let (mut rtp_sent, mut rtcp_sent) = (0u64, 0u64);
    for round in 0..5u16 {
        for k in 0..8 {
            let seq = last.seq.wrapping_add(20000 + 10 * round + k);
            let ts = last.ts.wrapping_add(90000 * 3600);
            spoofer
                .send_to(&rtp(last.ssrc, seq, ts), (target, port))
                .unwrap();
            rtp_sent += 1;
        }
        let report = sender_report(last.ssrc, ntp_now() + (3600 << 32), last.ts);
        spoofer.send_to(&report, (target, port + 1)).unwrap();
        rtcp_sent += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let stats = stream_stats(&src).unwrap();
    let error = pipeline
        .bus()
        .unwrap()
        .pop_filtered(&[gst::MessageType::Error]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(error.is_none(), "{error:?}");

    let out = out.lock().unwrap().clone();
    let after: Vec<Out> = out
        .iter()
        .copied()
        .filter(|o| o.at >= attack_start)
        .collect();
    // Buffers kept flowing, all of them the sender's, in sequence, without a discontinuity.
    assert!(
        after.len() >= 60,
        "only {} buffers after the attack",
        after.len()
    );
    let stranger = after.iter().find(|o| o.ssrc != last.ssrc || o.discont);
    assert!(stranger.is_none(), "{stranger:?}");
    for w in out.windows(2).filter(|w| w[1].at >= attack_start) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{:?} then {:?}",
            w[0],
            w[1]
        );
        // The same timeline: no jump of the presentation times.
        let (a, b) = (w[0].pts.unwrap(), w[1].pts.unwrap());
        assert!(
            b >= a && b - a < gst::ClockTime::from_mseconds(500),
            "{:?} then {:?}",
            w[0],
            w[1]
        );
    }
    // Every spoofed datagram was dropped and counted.
    assert_eq!(
        stats.get::<u64>("packets-foreign-address").unwrap(),
        rtp_sent + rtcp_sent,
        "{stats}"
    );
    assert_eq!(stats.get::<u64>("packets-stray").unwrap(), 0, "{stats}");
}

/// A scripted RTSP server on `ip`, answering each request with `answer(method, path, head)`
/// (the head's text, for headers) and recording every request's head.
struct Scripted {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

type Answer = dyn Fn(&str, &str, &str) -> Vec<u8> + Send + Sync;

impl Scripted {
    fn start(ip: &str, answer: Arc<Answer>) -> Scripted {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (answer, record) = (answer.clone(), record.clone());
                std::thread::spawn(move || Self::serve(conn, &*answer, &record));
            }
        });
        Scripted { port, heads }
    }

    fn serve(mut conn: TcpStream, answer: &Answer, record: &Mutex<Vec<String>>) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // Interleaved frames (the client's RTCP) are skipped.
            while pending.first() == Some(&b'$') && pending.len() >= 4 {
                let len = 4 + usize::from(u16::from_be_bytes([pending[2], pending[3]]));
                if pending.len() < len {
                    break;
                }
                pending.drain(..len);
            }
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                pending.drain(..end + 4);
                record.lock().unwrap().push(head.clone());
                let mut start = head.split_whitespace();
                let method = start.next().unwrap_or("");
                // The client's answer to a request of ours.
                if method.starts_with("RTSP/") {
                    continue;
                }
                let path = start
                    .next()
                    .and_then(|u| u.split_once("://"))
                    .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                    .unwrap_or("/");
                if conn.write_all(&answer(method, path, &head)).is_err() {
                    return;
                }
                continue;
            }
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The `Authorization` values of the requests so far.
    fn authorizations(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .flat_map(|h| h.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .collect()
    }

    /// The request lines so far.
    fn requests(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.lines().next().unwrap_or("").to_owned())
            .collect()
    }
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream=0\r\n";

const USER: &str = "alice";
const PASSWORD: &str = "S3cr3t-Never-Elsewhere";

fn cseq(head: &str) -> &str {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("cseq"))
        })
        .map_or("0", |(_, v)| v.trim())
}

fn has_authorization(head: &str) -> bool {
    head.to_ascii_lowercase().contains("\nauthorization:")
}

fn answer(head: &str, status: &str, extra: &str, body: &str) -> Vec<u8> {
    let len = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    format!(
        "RTSP/1.0 {status}\r\nCSeq: {}\r\n{extra}{len}\r\n{body}",
        cseq(head)
    )
    .into_bytes()
}

/// A well-behaved server (TCP interleaved) that wants Basic credentials for DESCRIBE, and
/// answers it with `describe(path)` when that gives one: a status (3xx) and its Location.
fn server(
    describe: impl Fn(&str) -> Option<(&'static str, String)> + Send + Sync + 'static,
) -> Arc<Answer> {
    Arc::new(move |method, path, head| match method {
        "OPTIONS" => answer(
            head,
            "200 OK",
            "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n",
            "",
        ),
        "DESCRIBE" if !has_authorization(head) => answer(
            head,
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"cam\"\r\n",
            "",
        ),
        "DESCRIBE" => match describe(path) {
            Some((status, location)) => {
                answer(head, status, &format!("Location: {location}\r\n"), "")
            }
            None => answer(head, "200 OK", "Content-Type: application/sdp\r\n", SDP),
        },
        "SETUP" => answer(
            head,
            "200 OK",
            "Session: 12345678;timeout=60\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
            "",
        ),
        _ => answer(head, "200 OK", "Session: 12345678\r\n", ""),
    })
}

/// Collects what our categories log at every level while `f` runs.
fn logged_while<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    init();
    gst::log::remove_default_log_function();
    let logged: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = logged.clone();
    let handler = gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
        let name = cat.name();
        if (name.starts_with("ls") || name == "rtspsrc2")
            && let Some(m) = msg.get()
        {
            sink.lock().unwrap().push(format!("{name}: {m}"));
        }
    });
    gst::log::set_threshold_from_string("lsrtsp:9,lsrtp:9,rtspsrc2:9", false);
    let result = f();
    gst::log::set_threshold_from_string("lsrtsp:0,lsrtp:0,rtspsrc2:0", false);
    gst::log::remove_log_function(handler);
    let logged = logged.lock().unwrap().clone();
    (result, logged)
}

/// Plays `location` (extra properties in it) until `done` holds or an error comes (15 s at
/// most); returns the error's text and debug, and every message the bus had.
fn play_until(location: &str, done: impl Fn() -> bool) -> (Option<String>, Vec<String>) {
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location={location} protocols=tcp reconnect-attempts=0 ! fakesink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    assert_ours(&pipeline.by_name("src").unwrap());
    let bus = pipeline.bus().unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut error, mut shown) = (None, Vec::new());
    while error.is_none() && !done() && Instant::now() < deadline {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(50)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Error(e) => {
                let text = format!("{} {:?}", e.error(), e.debug());
                shown.push(text.clone());
                error = Some(text);
            }
            _ => shown.push(format!("{msg:?}")),
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (error, shown)
}

fn assert_no_password(lines: &[String]) {
    for line in lines {
        assert!(!line.contains(PASSWORD), "the password shows: {line}");
        assert!(
            !line.contains(&format!("{USER}:")),
            "credentials show: {line}"
        );
    }
}

/// The two ways of giving credentials: user-id/user-pw, and the location's user info.
fn locations(port: u16) -> [String; 2] {
    [
        format!("rtsp://127.0.0.1:{port}/live user-id={USER} user-pw={PASSWORD}"),
        format!("rtsp://{USER}:{PASSWORD}@127.0.0.1:{port}/live"),
    ]
}

#[test]
fn a_redirect_to_another_host_or_port_carries_no_credentials() {
    for other_ip in ["127.0.0.2", "127.0.0.1"] {
        // The target asks for credentials too: the old client answered with ours.
        let target = Scripted::start(other_ip, server(|_| None));
        let to = format!("rtsp://{other_ip}:{}/moved", target.port);
        let origin = Scripted::start(
            "127.0.0.1",
            server(move |_| Some(("302 Moved Temporarily", to.clone()))),
        );
        for location in locations(origin.port) {
            let ((error, shown), logged) = logged_while(|| play_until(&location, || false));
            assert!(
                target.requests().iter().any(|r| r.starts_with("DESCRIBE")),
                "the redirect was not followed to {other_ip}: {:?}",
                target.requests()
            );
            assert_eq!(target.authorizations(), Vec::<String>::new(), "{other_ip}");
            let error = error.expect("an error: the target wants credentials");
            assert!(error.contains("credentials"), "{error}");
            assert!(!origin.authorizations().is_empty(), "the origin got none");
            assert!(
                logged
                    .iter()
                    .any(|l| l.contains("redirected to another host") && l.contains(other_ip)),
                "the dropped credentials are not logged"
            );
            assert_no_password(&shown);
            assert_no_password(&logged);
        }
    }
}

#[test]
fn a_redirect_on_the_same_host_keeps_the_credentials() {
    let origin = Arc::new(Mutex::new(0u16));
    let port = origin.clone();
    let cam = Scripted::start(
        "127.0.0.1",
        server(move |path| {
            (path == "/live").then(|| {
                let port = *port.lock().unwrap();
                (
                    "301 Moved Permanently",
                    format!("rtsp://127.0.0.1:{port}/moved"),
                )
            })
        }),
    );
    *origin.lock().unwrap() = cam.port;
    for location in locations(cam.port) {
        cam.heads.lock().unwrap().clear();
        let playing = || cam.requests().iter().any(|r| r.starts_with("PLAY"));
        let ((error, shown), logged) = logged_while(|| play_until(&location, playing));
        assert_eq!(error, None);
        let moved: Vec<String> = cam
            .heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.starts_with("DESCRIBE rtsp://127.0.0.1") && h.contains("/moved"))
            .cloned()
            .collect();
        assert!(
            moved.iter().any(|h| has_authorization(h)),
            "no credentials for the same host: {moved:?}"
        );
        assert_no_password(&shown);
        assert_no_password(&logged);
    }
}

#[test]
fn a_redirect_request_to_another_host_carries_no_credentials() {
    let target = Scripted::start("127.0.0.2", server(|_| None));
    let to = format!("rtsp://127.0.0.2:{}/moved", target.port);
    // After PLAY the origin sends REDIRECT (RFC 2326 10.10) on the connection.
    let normal = server(|_| None);
    let origin = Scripted::start(
        "127.0.0.1",
        Arc::new(move |method, path, head| {
            let mut out = normal(method, path, head);
            if method == "PLAY" {
                out.extend_from_slice(
                    format!("REDIRECT {to} RTSP/1.0\r\nCSeq: 1\r\nLocation: {to}\r\n\r\n")
                        .as_bytes(),
                );
            }
            out
        }),
    );
    for location in locations(origin.port) {
        let ((error, shown), logged) = logged_while(|| play_until(&location, || false));
        assert!(
            target.requests().iter().any(|r| r.starts_with("DESCRIBE")),
            "the REDIRECT was not followed: {:?}",
            target.requests()
        );
        assert_eq!(target.authorizations(), Vec::<String>::new());
        let error = error.expect("an error: the target wants credentials");
        assert!(error.contains("credentials"), "{error}");
        assert!(!origin.authorizations().is_empty());
        assert_no_password(&shown);
        assert_no_password(&logged);
    }
}
