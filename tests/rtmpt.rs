//! RTMPT (RTMP tunnelled in HTTP POSTs) and RTMPTS (that inside TLS) into rtmpserversrc, on the
//! same port as plain RTMP, from publishers we did not write: ffmpeg (`rtmpt://`, `rtmpts://`)
//! and the stock librtmp `rtmpsink` (`rtmpt://`); and from our rsrtmpsink (`rtmpt://`,
//! `rtmpts://`); RTMPE and RTMPTE from librtmp (`rtmpe://`, `rtmpte://`, the type-8 handshake);
//! RTMPS from librtmp (`rtmps://`, with `tls-max-version=1.2`). Each publishes the same 3 s H.264+AAC file and the recording has every frame
//! (counted by ffprobe). Hostile tunnel clients (garbage HTTP, unknown and stolen session ids, a
//! huge body, an oversized head, hundreds of sessions) each end with a log line while ffmpeg's
//! publication on another connection keeps every frame. Loopback only, every wait bounded,
//! every child killed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;

use common::rtmp::{Recorder, TempDir, captured_logs, self_signed_cert, wait_line};
use common::{ChildGuard, plugin_dir};

use common::rtmp::test_flv as input;

/// The `lsrtmp` debug lines of this process.
fn logs() -> Arc<Mutex<Vec<String>>> {
    captured_logs(&["lsrtmp"], gst::DebugLevel::Debug)
}

fn wait_log(timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    wait_line(&logs(), timeout, pred)
}

/// rtmpserversrc with `props` on a free port recording into DIR/out.flv, this process's log
/// captured.
fn start_server(props: &str) -> Recorder {
    logs();
    Recorder::start("rtmpt", props, "")
}

/// ffmpeg publishing the input in real time. FFmpeg's RTMPT sends what it buffered only when it
/// next reads, every `rtmp_flush_interval` packets (10 by default), and drops what is left when
/// closing: with the default the last few packets never leave it (seen here: 1 video and 3
/// audio frames). With 1 every packet goes out in its own request.
fn ffmpeg_publish(url: &str) -> ChildGuard {
    common::rtmp::ffmpeg_publish(url, &["-rtmp_flush_interval", "1"])
}

/// A gst-launch-1.0 child publishing the input, paced by the clock, through `sink`.
fn gst_publish(sink: &str) -> ChildGuard {
    let pipeline = format!(
        "filesrc location={} ! flvdemux name=d \
         d.video ! queue ! h264parse ! identity sync=true ! m. \
         d.audio ! queue ! aacparse ! identity sync=true ! m. \
         flvmux name=m streamable=true ! {sink}",
        input().path.display()
    );
    ChildGuard::spawn(
        Command::new("gst-launch-1.0")
            .env("GST_PLUGIN_PATH", plugin_dir())
            // A registry of its own beside the plugin: with the shared default one, every run
            // with another plugin path made the next stock gst-launch-1.0 rescan all plugins.
            .env(
                "GST_REGISTRY",
                plugin_dir().join("gst-registry-rtmp-tests.bin"),
            )
            // Our rsrtmpsink's decisions (the RTMPE handshake) on stderr.
            .env("GST_DEBUG", "lsrtmp:5")
            .env("GST_DEBUG_NO_COLOR", "1")
            .arg("-e")
            .args(pipeline.split_whitespace()),
    )
}

/// Waits for the child to succeed; its stderr.
fn wait_success(child: ChildGuard, what: &str) -> String {
    let (out, timed_out) = child.wait_output(Duration::from_secs(40));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !timed_out && out.status.success(),
        "{what}: {}",
        common::tail(&stderr, 3000)
    );
    stderr
}

fn assert_every_frame(server: &Recorder, what: &str) {
    server.wait_eos(Duration::from_secs(15));
    let i = input();
    assert_eq!(
        server.recorded(),
        (i.video, i.audio),
        "{what}: (video, audio) frames recorded vs in the file"
    );
}

fn tls_props(dir: &Path) -> String {
    let (cert, key) = self_signed_cert(dir, "IP:127.0.0.1");
    format!(
        "tls-certificate-file={} tls-key-file={}",
        cert.display(),
        key.display()
    )
}

#[test]
fn ffmpeg_rtmpt_and_rtmpts_deliver_every_frame() {
    let server = start_server("");
    wait_success(ffmpeg_publish(&server.url("rtmpt", "key")), "ffmpeg rtmpt");
    assert_every_frame(&server, "ffmpeg rtmpt://");
    assert!(
        wait_log(Duration::from_secs(5), |l| l.contains("RTMPT requests)")).is_some(),
        "the publication came through the tunnel"
    );

    let certs = TempDir::new("rtmpt-certs");
    let server = start_server(&tls_props(certs.path()));
    wait_success(
        ffmpeg_publish(&server.url("rtmpts", "key")),
        "ffmpeg rtmpts",
    );
    assert_every_frame(&server, "ffmpeg rtmpts://");
}

#[test]
fn stock_librtmp_rtmpsink_rtmpt_delivers_every_frame() {
    let server = start_server("");
    let child = gst_publish(&format!("rtmpsink location={}", server.url("rtmpt", "key")));
    wait_success(child, "rtmpsink rtmpt");
    // librtmp closes its socket right after FCUnpublish, deleteStream and close, with answers
    // unread (a reset): the requests it sent still end the publication at once.
    assert_every_frame(&server, "librtmp rtmpsink rtmpt://");
}

#[test]
fn our_rsrtmpsink_rtmpt_and_rtmpts_deliver_every_frame() {
    let server = start_server("");
    let child = gst_publish(&format!(
        "rsrtmpsink location={}",
        server.url("rtmpt", "key")
    ));
    wait_success(child, "rsrtmpsink rtmpt");
    assert_every_frame(&server, "rsrtmpsink rtmpt://");

    let certs = TempDir::new("rtmpt-certs");
    let server = start_server(&tls_props(certs.path()));
    let child = gst_publish(&format!(
        "rsrtmpsink location={} tls-validation-flags=0",
        server.url("rtmpts", "key")
    ));
    wait_success(child, "rsrtmpsink rtmpts");
    assert_every_frame(&server, "rsrtmpsink rtmpts://");
}

#[test]
fn stock_librtmp_rtmpsink_rtmpe_and_rtmpte_deliver_every_frame() {
    for scheme in ["rtmpe", "rtmpte"] {
        let server = start_server("");
        let child = gst_publish(&format!("rtmpsink location={}", server.url(scheme, "key")));
        wait_success(child, scheme);
        assert_every_frame(&server, &format!("librtmp rtmpsink {scheme}://"));
    }
    assert!(
        wait_log(Duration::from_secs(5), |l| l
            .contains("RTMPE handshake (type 8"))
        .is_some(),
        "the encrypted handshake was used, of type 8 (librtmp's C1 is of version 128.x: it \
         takes S2 and sends C2 with XTEA-encrypted signatures)"
    );
}

/// librtmp's `rtmps://` (the stock rtmpsink; Debian builds librtmp with GnuTLS) completes a
/// TLS 1.3 handshake and then gives up after the RTMP handshake's first answer; with
/// `tls-max-version=1.2` it publishes every frame. Ffmpeg and rtmp2sink take either
/// (tests/rtmpserversrc.rs); a version other than 1.2 or 1.3 stops the element from starting.
#[test]
fn stock_librtmp_rtmpsink_rtmps_publishes_with_tls_max_version_1_2() {
    let certs = TempDir::new("rtmps-certs");
    let server = start_server(&format!("{} tls-max-version=1.2", tls_props(certs.path())));
    assert_eq!(server.src.property::<String>("tls-max-version"), "1.2");
    let child = gst_publish(&format!("rtmpsink location={}", server.url("rtmps", "key")));
    wait_success(child, "rtmpsink rtmps with TLS 1.2");
    assert_every_frame(&server, "librtmp rtmpsink rtmps:// (TLS 1.2)");
    assert!(
        wait_log(Duration::from_secs(5), |l| l.contains("TLS handshake done")
            && l.contains("TLSv1_2"))
        .is_some(),
        "TLS 1.2 negotiated"
    );

    // The default offers TLS 1.3, which librtmp fails on: the reason for the property.
    let server = start_server(&tls_props(certs.path()));
    let child = gst_publish(&format!("rtmpsink location={}", server.url("rtmps", "key")));
    let (out, timed_out) = child.wait_output(Duration::from_secs(40));
    assert!(
        !timed_out && !out.status.success(),
        "librtmp's rtmps:// now works with TLS 1.3: tls-max-version's documentation is out of date"
    );

    let p = gst::parse::launch(&format!(
        "rtmpserversrc address=127.0.0.1 port=0 {} tls-max-version=1.1 ! fakesink",
        tls_props(certs.path())
    ))
    .unwrap();
    assert!(p.set_state(gst::State::Playing).is_err(), "TLS 1.1 refused");
    let _ = p.set_state(gst::State::Null);
}

#[test]
fn our_rsrtmpsink_rtmpe_and_rtmpte_deliver_every_frame() {
    for scheme in ["rtmpe", "rtmpte"] {
        let server = start_server("");
        let child = gst_publish(&format!(
            "rsrtmpsink location={}",
            server.url(scheme, "key")
        ));
        let stderr = wait_success(child, scheme);
        assert!(
            stderr.contains("RTMPE handshake done (type 8"),
            "rsrtmpsink used the encrypted handshake"
        );
        assert_every_frame(&server, &format!("rsrtmpsink {scheme}://"));
    }
}

#[test]
fn rtmpe_without_a_digest_is_closed_with_the_reason() {
    let server = start_server("");
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let peer = s.local_addr().unwrap().to_string();
    let mut c0c1 = vec![6u8];
    c0c1.extend_from_slice(&[0x11u8; 1536]);
    s.write_all(&c0c1).unwrap();
    expect_closed(&peer, "RTMPE C1 carries no valid Flash Player digest");
    // Type 8 is RTMPE too: the same check.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let peer = s.local_addr().unwrap().to_string();
    c0c1[0] = 8;
    s.write_all(&c0c1).unwrap();
    expect_closed(&peer, "RTMPE C1 carries no valid Flash Player digest");
    // Type 9 (Blowfish) is not offered: the plain server refuses it with its reason.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let peer = s.local_addr().unwrap().to_string();
    c0c1[0] = 9;
    s.write_all(&c0c1).unwrap();
    expect_closed(&peer, "RTMPE, C0 version 9");
}

/// Sends `request` on a new connection from `source` and returns the answer's status (0: none)
/// and the connection's local address (the peer the server logs).
fn exchange_from(source: &str, port: u16, request: &[u8]) -> (u16, String, Vec<u8>) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(
        &format!("{source}:0")
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let peer = s.local_addr().unwrap().to_string();
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the answer's head and its Content-Length of body are in.
    loop {
        if let Some(head) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&answer[..head]).to_string();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if answer.len() >= head + 4 + len {
                let status = text
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return (status, peer, answer[head + 4..head + 4 + len].to_vec());
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (0, peer, answer),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

fn exchange(port: u16, request: &[u8]) -> (u16, String, Vec<u8>) {
    exchange_from("127.0.0.1", port, request)
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-fcs\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Waits for the server's line about the end of `peer`'s connection; it must say `reason`.
fn expect_closed(peer: &str, reason: &str) {
    let line = wait_log(Duration::from_secs(10), |l| {
        l.contains(&format!("{peer}: connection closed"))
    })
    .unwrap_or_else(|| panic!("no 'connection closed' line for {peer} ({reason})"));
    assert!(line.contains(reason), "{line} should say {reason}");
}

#[test]
fn hostile_tunnel_clients_end_with_a_log_line_while_ffmpeg_publishes_every_frame() {
    let server = start_server("handshake-timeout=3 max-connections=20");
    let port = server.port;
    let ffmpeg = ffmpeg_publish(&server.url("rtmpt", "key"));
    server.wait_publishing(Duration::from_secs(10));

    // Garbage after a letter: no HTTP.
    let (status, peer, _) = exchange(port, b"P\x00\x01\x02 garbage\r\n\r\n");
    assert_eq!(status, 400);
    expect_closed(&peer, "malformed HTTP request");
    // Someone else's HTTP client.
    let (status, peer, _) = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 405);
    expect_closed(&peer, "not an RTMP client, and no RTMPT request");
    // An unknown session id.
    let (status, peer, _) = exchange(
        port,
        &post("/send/0123456789abcdef0123456789abcdef/1", b"x"),
    );
    assert_eq!(status, 404);
    expect_closed(&peer, "unknown session id");
    // A body of 1 GB announced.
    let (status, peer, _) = exchange(
        port,
        b"POST /open/1 HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n",
    );
    assert_eq!(status, 413);
    expect_closed(&peer, "body of 1000000000 bytes");
    // A head of 20 KiB.
    let mut big = b"POST /open/1 HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(20 * 1024, b'a');
    let (status, peer, _) = exchange(port, &big);
    assert_eq!(status, 431);
    expect_closed(&peer, "request head larger than");
    // A session opened from 127.0.0.1, used from 127.0.0.2 (another address on loopback).
    let (status, _, id) = exchange(port, &post("/open/1", b"\0"));
    assert_eq!(status, 200);
    let id = String::from_utf8(id).unwrap().trim().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    let (status, peer, _) =
        exchange_from("127.0.0.2", port, &post(&format!("/idle/{id}/1"), b"\0"));
    assert_eq!(status, 404);
    expect_closed(&peer, "session id of another client address");
    // Hundreds of sessions, each opened on a new connection: at most max-connections (HTTP
    // connections and sessions) wait; the oldest make room; the publishing session and its
    // connection are never among them.
    let mut ids = std::collections::HashSet::new();
    for _ in 0..300 {
        let (status, _, id) = exchange(port, &post("/open/1", b"\0"));
        assert_eq!(status, 200);
        ids.insert(String::from_utf8(id).unwrap().trim().to_owned());
    }
    assert_eq!(ids.len(), 300, "every session id differs");
    assert!(
        wait_log(Duration::from_secs(5), |l| l
            .contains("evicted by a newer connection"))
        .is_some(),
        "sessions made room"
    );

    wait_success(ffmpeg, "ffmpeg rtmpt");
    let stats = server.stats();
    assert_eq!(stats.get::<u64>("frames-dropped").unwrap(), 0, "{stats}");
    assert_every_frame(&server, "the real publisher next to the hostile clients");
    // No session id in any log line.
    let l = logs();
    let l = l.lock().unwrap();
    let leaked: Vec<_> = l
        .iter()
        .filter(|line| ids.iter().any(|id| line.contains(id.as_str())) || line.contains(&id))
        .collect();
    assert!(leaked.is_empty(), "session ids logged: {leaked:?}");
}

#[test]
fn rtmpt_false_answers_http_as_a_plain_rtmp_port_does() {
    let server = start_server("rtmpt=false");
    let (status, peer, _) = exchange(server.port, &post("/open/1", b"\0"));
    assert_eq!(status, 0, "no HTTP answer");
    expect_closed(&peer, "not an RTMP client");
    assert!(!server.src.property::<bool>("rtmpt"));
}
