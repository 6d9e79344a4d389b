//! rtspserversink serving RTSP tunnelled through HTTP (Apple's GET/POST tunnel, as
//! gst-rtsp-server answers it) on its RTSP port, to clients we did not write: the stock C
//! `rtspsrc` (`rtsph://`, and `rtspsh://` inside TLS) and ffprobe (`-rtsp_transport http`); our
//! rtspsrc2 (`rtsph://`); hand-written GET/POST pairs for what the server refuses and for a
//! GET whose POST never comes, while another client keeps playing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::rtmp::{TempDir, self_signed_cert};
use common::*;

fn url(server: &ServerPipeline, scheme: &str) -> String {
    format!("{scheme}://127.0.0.1:{}/", server.port)
}

#[test]
fn stock_rtspsrc_plays_through_the_tunnel() {
    let server = ServerPipeline::start("", &av_source(false));
    let frames = rtspsrc_decode(&url(&server, "rtsph"), "tcp", 30, "");
    assert_eq!(frames, 30);
    assert!(server.errors().is_empty(), "{:?}", server.errors());
}

#[test]
fn stock_rtspsrc_plays_through_the_tunnel_inside_tls() {
    let dir = TempDir::new("srvtunnel-tls");
    let (cert, key) = self_signed_cert(dir.path(), "IP:127.0.0.1");
    let props = format!(
        "tls-certificate-file={} tls-key-file={}",
        cert.display(),
        key.display()
    );
    let server = ServerPipeline::start(&props, &av_source(false));
    let frames = rtspsrc_decode(&url(&server, "rtspsh"), "tcp", 30, "tls-validation-flags=0");
    assert_eq!(frames, 30);
}

#[test]
fn ffprobe_plays_through_the_tunnel() {
    let server = ServerPipeline::start("", &av_source(true));
    let out = ffprobe(
        &url(&server, "rtsp"),
        "http",
        "stream=codec_name,width,height",
    );
    assert!(out.contains("h264,320,240"), "streams: {out}");
    assert!(out.contains("opus"), "streams: {out}");
}

#[test]
fn rtspsrc2_plays_through_the_tunnel() {
    let server = ServerPipeline::start("", &av_source(false));
    common::stock::decode(&format!("location={}", url(&server, "rtsph"))).unwrap();
    common::stock::decode(&format!("location={} protocols=http", server.url("/"))).unwrap();
}

/// One side of a hand-made tunnel.
fn open_side(port: u16, method: &str, cookie: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let header = match method {
        "GET" => "Accept: application/x-rtsp-tunnelled",
        _ => "Content-Type: application/x-rtsp-tunnelled\r\nContent-Length: 32767",
    };
    write!(
        s,
        "{method} / HTTP/1.0\r\nx-sessioncookie: {cookie}\r\n{header}\r\n\r\n"
    )
    .unwrap();
    s
}

/// The head of an HTTP answer: its lines.
fn read_http_head(reader: &mut impl BufRead) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            return lines;
        }
        lines.push(line.to_owned());
    }
}

/// The HTTP answer to a refused tunnel request, then the end of the connection.
fn refusal(mut s: TcpStream) -> String {
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or("").to_owned()
}

fn post_request(post: &mut TcpStream, cseq: u32) {
    let req = format!("OPTIONS rtsp://127.0.0.1/ RTSP/1.0\r\nCSeq: {cseq}\r\n\r\n");
    let encoded = base64::engine::general_purpose::STANDARD.encode(req);
    // Split across writes, as a proxy may.
    let (a, b) = encoded.split_at(7);
    post.write_all(a.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    post.write_all(b.as_bytes()).unwrap();
}

#[test]
fn posts_pair_only_with_their_get_one_at_a_time() {
    let server = ServerPipeline::start("", &av_source(false));
    let port = server.port;
    // No GET has this cookie.
    assert_eq!(
        refusal(open_side(port, "POST", "unknown")),
        "HTTP/1.0 404 Not Found"
    );
    let get = open_side(port, "GET", "c00kie");
    let mut get = RawClient::from_stream(get);
    let mut reader = BufReader::new(get.stream.try_clone().unwrap());
    let head = read_http_head(&mut reader);
    assert_eq!(head[0], "HTTP/1.0 200 OK", "{head:?}");
    assert!(head.contains(&"Content-Type: application/x-rtsp-tunnelled".to_owned()));
    assert!(head.contains(&"Cache-Control: no-cache".to_owned()));
    assert!(!head.iter().any(|h| h.starts_with("Content-Length")));
    drop(reader);
    // Cookies are compared exactly.
    assert_eq!(
        refusal(open_side(port, "POST", "C00KIE")),
        "HTTP/1.0 404 Not Found"
    );
    let mut post = open_side(port, "POST", "c00kie");
    post_request(&mut post, 1);
    let r = get.read_response();
    assert_eq!((r.status, r.header("CSeq")), (200, Some("1")), "{r:?}");
    // One POST at a time.
    assert_eq!(
        refusal(open_side(port, "POST", "c00kie")),
        "HTTP/1.0 409 Conflict"
    );
    // The POST closes; the tunnel stays, and a new POST continues it.
    drop(post);
    std::thread::sleep(Duration::from_millis(200));
    let mut post = open_side(port, "POST", "c00kie");
    post_request(&mut post, 2);
    let r = get.read_response();
    assert_eq!((r.status, r.header("CSeq")), (200, Some("2")), "{r:?}");
    // Not base64: the tunnel is closed.
    post.write_all(b"OPTIONS * RTSP/1.0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    get.stream.read_to_end(&mut rest).unwrap();
}

#[test]
fn a_get_without_post_is_closed_while_another_client_plays() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut player = RawClient::connect(server.port);
    player.play_tcp(&server.url("/"));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                player.read_interleaved(0, 1);
                received.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let get = open_side(server.port, "GET", "lonely");
    let opened = Instant::now();
    let mut reader = BufReader::new(get);
    assert_eq!(read_http_head(&mut reader)[0], "HTTP/1.0 200 OK");
    let mut rest = Vec::new();
    // Read timeout 20 s: the server closes it first.
    reader.read_to_end(&mut rest).unwrap();
    let waited = opened.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(15)).contains(&waited),
        "closed after {waited:?}"
    );
    assert!(rest.is_empty(), "{rest:?}");
    // The player kept receiving, and still does.
    let before = received.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(1));
    let after = received.load(Ordering::SeqCst);
    assert!(before > 200 && after > before + 20, "{before} then {after}");
    stop.store(true, Ordering::SeqCst);
    reading.join().unwrap();
}

#[test]
fn a_tunnel_from_a_denied_address_is_refused() {
    let server = ServerPipeline::start("allowed-addresses=127.0.0.2", &av_source(false));
    for method in ["GET", "POST"] {
        assert_eq!(
            refusal(open_side(server.port, method, "c")),
            "HTTP/1.0 403 Forbidden"
        );
    }
}
