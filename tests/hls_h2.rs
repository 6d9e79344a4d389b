//! rshlssink's built-in server over TLS (`tls-certificate-file`/`tls-key-file`,
//! `tls-certificate`), HTTP/2 when ALPN picks it and HTTP/1.1 otherwise, with clients we did not
//! write: curl (libcurl with nghttp2), nghttp and h2load (nghttp2-client), ffprobe (FFmpeg's
//! HTTPS, HTTP/1.1) and openssl s_client for connections that send nothing. Certificates are
//! generated with rcgen for 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Certs;
use common::hls::*;
use gst::prelude::*;

fn serve_tls(tag: &str, extra: &str) -> (Served, Certs) {
    let certs = Certs::new(tag);
    let served = serve_live(
        tag,
        &format!("playlist-length=3 {} {extra}", certs.props()),
        LIVE_VIDEO,
    );
    (served, certs)
}

/// Runs a command (at most 30 s): (exit success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, Vec<u8>, String) {
    let (out, timed_out) = common::run(cmd, Duration::from_secs(30));
    assert!(!timed_out, "{cmd:?} timed out");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl with `args` (certificate checks off: the certificate is self-signed): the HTTP version
/// and status it reports, and the body.
fn curl(args: &[&str]) -> (String, u16, Vec<u8>) {
    let body = std::env::temp_dir().join(format!(
        "hlsh2-curl-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "-k", "--max-time", "20", "-o"])
        .arg(&body)
        .args(["-w", "%{http_version} %{http_code}"])
        .args(args));
    assert!(ok, "curl {args:?}: {err}");
    let out = String::from_utf8(out).unwrap();
    let (version, status) = out.split_once(' ').expect("version and status");
    let data = std::fs::read(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    (version.to_owned(), status.parse().unwrap(), data)
}

#[test]
fn curl_gets_http2_with_alpn_and_http1_without() {
    let (r, _certs) = serve_tls("curl", "");
    let base = format!("https://127.0.0.1:{}", r.port);
    let (version, status, body) = curl(&["--http2", &format!("{base}/playlist.m3u8")]);
    assert_eq!((version.as_str(), status), ("2", 200));
    assert!(body.starts_with(b"#EXTM3U"), "{body:?}");
    let served = m3u8_rs::parse_media_playlist_res(&body).expect("playlist parses");
    assert!(!served.segments.is_empty());

    let (version, status, _) = curl(&["--http1.1", &format!("{base}/playlist.m3u8")]);
    assert_eq!((version.as_str(), status), ("1.1", 200));

    // A segment, whole, a range of it and its head, over HTTP/2: byte-exact.
    let name = &served.segments[0].uri;
    let whole = std::fs::read(r.dir.join(name)).unwrap();
    let url = format!("{base}/{name}");
    let (version, status, body) = curl(&["--http2", &url]);
    assert_eq!((version.as_str(), status), ("2", 200));
    assert_eq!(body, whole);
    let (_, status, body) = curl(&["--http2", "-r", "188-375", &url]);
    assert_eq!(status, 206);
    assert_eq!(body, whole[188..376]);
    let (_, status, body) = curl(&["--http2", "-r", &format!("{}-", whole.len()), &url]);
    assert_eq!((status, body.len()), (416, 0));
    let (ok, head, err) = run(Command::new("curl").args(["-sS", "-k", "--http2", "-I", &url]));
    assert!(ok, "curl -I: {err}");
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", whole.len())),
        "{head}"
    );
    assert!(head.contains("content-type: video/mp2t"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");

    // The same refusals as over HTTP/1.1.
    for (path, expected) in [
        ("/%2e%2e/etc/passwd", 400),
        ("/nothing.ts", 404),
        ("/a/b.ts", 400),
    ] {
        let (_, status, body) = curl(&["--http2", "--path-as-is", &format!("{base}{path}")]);
        assert_eq!(status, expected, "{path}");
        assert!(body.is_empty());
    }
    let (_, status, _) = curl(&["--http2", "-X", "DELETE", &format!("{base}/playlist.m3u8")]);
    assert_eq!(status, 405);
    // A request body over 64 KiB: 413 while the client still sends it, then the stream is reset
    // with NO_ERROR (RFC 9113 §8.1). nghttp, not curl: curl 7.88 fails such a request ("Stream
    // error in the HTTP/2 framing layer") without reading the answer.
    let body_file = r.dir.join("big-body");
    std::fs::write(&body_file, vec![b'a'; 8 << 20]).unwrap();
    let (ok, out, err) = run(Command::new("nghttp")
        .args(["-v", "-t", "20", "-d"])
        .arg(&body_file)
        .arg(format!("{base}/playlist.m3u8")));
    let out = String::from_utf8_lossy(&out);
    assert!(ok, "nghttp -d: {err}\n{out}");
    assert!(out.contains(":status: 413"), "{out}");
    assert!(!out.contains("error_code=CANCEL"), "{out}");
    // A head over the 8 KiB the server announces (SETTINGS_MAX_HEADER_LIST_SIZE).
    let (_, status, _) = curl(&[
        "--http2",
        "-H",
        &format!("X-Big: {}", "b".repeat(10 * 1024)),
        &format!("{base}/playlist.m3u8"),
    ]);
    assert_eq!(status, 431, "a 10 KiB header");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = connect_from([127, 0, 0, 1], r.port).unwrap();
    plain
        .write_all(b"GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
}

#[test]
fn ffprobe_plays_over_https() {
    let (r, _certs) = serve_tls("ffprobe", "");
    let url = format!("https://127.0.0.1:{}/playlist.m3u8", r.port);
    let probe = ffprobe(&url, &["-tls_verify", "0"]);
    assert_eq!(probe.streams, [("h264".to_string(), "video".to_string())]);
}

/// nghttp fetches the playlist and segments as concurrent streams of one HTTP/2 connection and
/// reads the SETTINGS the server announces; h2load puts 400 requests on 4 connections, with 32
/// streams at once on each (all answered) and with 40 (those past the server's 32 refused).
#[test]
fn nghttp_and_h2load() {
    let (r, _certs) = serve_tls("nghttp", "");
    let base = format!("https://127.0.0.1:{}", r.port);
    let playlist = read_playlist(&r.dir.join("playlist.m3u8"));
    let mut urls = vec![format!("{base}/playlist.m3u8")];
    urls.extend(
        playlist
            .segments
            .iter()
            .map(|s| format!("{base}/{}", s.uri)),
    );
    let (ok, out, err) = run(Command::new("nghttp")
        .args(["-v", "-n", "-t", "20"])
        .args(&urls));
    let out = String::from_utf8_lossy(&out);
    assert!(ok, "nghttp: {err}\n{}", common::tail(&out, 3000));
    assert!(
        out.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):32"),
        "{out}"
    );
    assert!(
        out.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):8192"),
        "{out}"
    );
    let ok_streams = out.matches(":status: 200").count();
    assert_eq!(ok_streams, urls.len(), "{}", common::tail(&out, 3000));

    let h2load = |streams: &str| {
        let (ok, out, err) = run(Command::new("h2load").args([
            "-n",
            "400",
            "-c",
            "4",
            "-m",
            streams,
            &format!("{base}/playlist.m3u8"),
        ]));
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(ok, "h2load: {err}\n{out}");
        assert!(out.contains("Application protocol: h2"), "{out}");
        let count = |what: &str| -> u32 {
            let at = out
                .find(what)
                .unwrap_or_else(|| panic!("no {what:?} in {out}"));
            let before = out[..at].trim_end();
            let number = before.rsplit([' ', ',']).next().unwrap();
            number
                .parse()
                .unwrap_or_else(|_| panic!("{what:?} in {out}"))
        };
        (count(" succeeded"), count(" failed"), out)
    };
    // As many streams as the server allows at once: every request is answered.
    let (succeeded, failed, out) = h2load("32");
    assert_eq!((succeeded, failed), (400, 0), "{out}");
    assert!(out.contains("status codes: 400 2xx"), "{out}");
    // More: h2load opens up to 40 before it has read the server's SETTINGS, and those past 32
    // are refused (RST_STREAM REFUSED_STREAM), at most 8 on each of the 4 connections.
    let (succeeded, failed, out) = h2load("40");
    assert_eq!(succeeded + failed, 400, "{out}");
    assert!(failed <= 4 * 8, "{out}");
}

/// Connections that say nothing are closed at the request deadline: one that never starts the
/// TLS handshake, and an HTTP/2 one (ALPN h2) that sends nothing after it.
#[test]
fn silent_connections_are_closed_at_the_deadline() {
    let (r, _certs) = serve_tls("silent", "http-request-timeout=2");
    let mut raw = connect_from([127, 0, 0, 1], r.port).unwrap();
    let t0 = Instant::now();
    let s_client = common::ChildGuard::spawn(Command::new("openssl").args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{}", r.port),
        "-alpn",
        "h2",
        "-ign_eof",
    ]));
    let (out, timed_out) = s_client.wait_output(Duration::from_secs(10));
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!timed_out, "s_client still connected after 10 s");
    assert!(stdout.contains("ALPN protocol: h2"), "{stdout}");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// `tls-certificate` (a GTlsCertificate) serves HTTPS too; conflicting or incomplete TLS
/// settings stop the element from starting with an error that says why.
#[test]
fn tls_certificate_object_and_setting_errors() {
    let certs = Certs::new("object");
    let dir = TempDir::new("tlsobject");
    let (live, sink) = pipeline(
        &format!(
            "location={} target-duration=1 http-port=0 http-address=127.0.0.1",
            dir.str()
        ),
        LIVE_VIDEO,
    );
    let cert = gio::TlsCertificate::from_files(&certs.cert, &certs.key).unwrap();
    sink.set_property("tls-certificate", &cert);
    assert!(
        sink.property::<Option<gio::TlsCertificate>>("tls-certificate")
            .is_some()
    );
    live.set_state(gst::State::Playing).expect("PLAYING");
    let port = sink.property::<i32>("http-bound-port");
    let path = dir.join("playlist.m3u8");
    assert!(wait_for(Duration::from_secs(20), || path.exists()));
    let (version, status, body) = curl(&[
        "--http2",
        &format!("https://127.0.0.1:{port}/playlist.m3u8"),
    ]);
    assert_eq!((version.as_str(), status), ("2", 200));
    assert!(body.starts_with(b"#EXTM3U"));
    live.set_state(gst::State::Null).unwrap();

    for (props, says) in [
        (
            format!("tls-key-file={}", certs.key.display()),
            "tls-key-file is set without tls-certificate-file",
        ),
        (
            format!("tls-certificate-file={}", certs.key.display()),
            "no certificate",
        ),
    ] {
        let dir = TempDir::new("tlsbad");
        let (bad, _) = pipeline(
            &format!(
                "location={} target-duration=1 http-port=0 http-address=127.0.0.1 {props}",
                dir.str()
            ),
            LIVE_VIDEO,
        );
        let err = run_to_end(&bad, Duration::from_secs(10)).unwrap_err();
        assert!(err.contains(says), "{props}: {err}");
    }
}

/// An HTTP/2 client that grants no flow-control window (nghttp with windows of 0 bytes) cannot
/// hold its connection: it is dropped when its answer is not sent within the request timeout plus
/// the 30 s write timeout, while other clients are served meanwhile.
#[test]
fn a_client_that_does_not_read_is_dropped() {
    let (r, _certs) = serve_tls("stuck", "http-request-timeout=1");
    let base = format!("https://127.0.0.1:{}", r.port);
    let segment = read_playlist(&r.dir.join("playlist.m3u8")).segments[0]
        .uri
        .clone();
    let t0 = Instant::now();
    let stuck = common::ChildGuard::spawn(Command::new("nghttp").args([
        "-w",
        "0",
        "-W",
        "0",
        &format!("{base}/{segment}"),
    ]));
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        let (version, status, _) = curl(&["--http2", &format!("{base}/playlist.m3u8")]);
        assert_eq!((version.as_str(), status), ("2", 200));
    }
    let (out, timed_out) = stuck.wait_output(Duration::from_secs(60));
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!timed_out, "nghttp still connected after 60 s");
    assert!(
        format!("{stdout}{stderr}").contains("processed=0"),
        "{stdout}{stderr}"
    );
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(40),
        "dropped after {took:?}"
    );
}

/// Over TLS a connection beyond `http-max-connections` is closed before the handshake (no 503:
/// that would cost a handshake per refused connection); once a slot is free, curl is served.
#[test]
fn connections_beyond_the_limit_are_closed_before_the_handshake() {
    let (r, _certs) = serve_tls("limit", "http-max-connections=2");
    let url = format!("https://127.0.0.1:{}/playlist.m3u8", r.port);
    let mut held: Vec<_> = (0..2)
        .map(|_| connect_from([127, 0, 0, 1], r.port).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (out, timed_out) = common::run(
        Command::new("curl").args([
            "-sS",
            "-k",
            "--http2",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            &url,
        ]),
        Duration::from_secs(20),
    );
    assert!(!timed_out);
    assert!(
        !out.status.success(),
        "served a third connection: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(held.pop());
    assert!(wait_for(Duration::from_secs(5), || {
        let (out, _) = common::run(
            Command::new("curl").args([
                "-sS",
                "-k",
                "--http2",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                &url,
            ]),
            Duration::from_secs(10),
        );
        out.status.success()
    }));
}
