//! rshlssink's built-in HTTP server: ffprobe plays from it; path traversal, methods, MIME types,
//! CORS, caching and the connection limit.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::hls::*;

fn start_serving(extra: &str) -> Served {
    serve_live("server", &format!("playlist-length=3 {extra}"), LIVE_VIDEO)
}

#[test]
fn ffprobe_plays_the_served_playlist() {
    let r = start_serving("");
    let url = format!("http://127.0.0.1:{}/playlist.m3u8", r.port);
    let probe = ffprobe(&url, &[]);
    assert_eq!(probe.streams, [("h264".to_string(), "video".to_string())]);
}

#[test]
fn serves_published_files_with_types_cors_and_caching() {
    let r = start_serving("");
    let (status, headers, body) = http_request(r.port, "GET", "/playlist.m3u8");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    let playlist = m3u8_rs::parse_media_playlist_res(&body).expect("served playlist parses");
    let first = &playlist.segments[0].uri;

    let (status, headers, body) = http_request(r.port, "GET", &format!("/{first}"));
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("video/mp2t"));
    assert!(
        header(&headers, "cache-control")
            .unwrap()
            .contains("max-age=")
    );
    assert_eq!(body, std::fs::read(r.dir.join(first)).unwrap());
    assert_eq!(body[0], 0x47, "a transport stream");

    let (status, headers, body) = http_request(r.port, "HEAD", &format!("/{first}"));
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert!(
        header(&headers, "content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );

    let (status, headers, _) = http_request(r.port, "OPTIONS", "/playlist.m3u8");
    assert_eq!(status, 204);
    assert!(
        header(&headers, "access-control-allow-methods")
            .unwrap()
            .contains("GET")
    );

    // Byte ranges, as some players ask for them.
    let whole = std::fs::read(r.dir.join(first)).unwrap();
    let (status, headers, part) = http_request_with(
        r.port,
        "GET",
        &format!("/{first}"),
        &["Range: bytes=188-375"],
    );
    assert_eq!(status, 206);
    assert_eq!(part, whole[188..376]);
    assert_eq!(
        header(&headers, "content-range"),
        Some(format!("bytes 188-375/{}", whole.len()).as_str())
    );
    let (status, _, _) = http_request_with(
        r.port,
        "GET",
        &format!("/{first}"),
        &[&format!("Range: bytes={}-", whole.len())],
    );
    assert_eq!(status, 416);

    assert_eq!(http_request(r.port, "POST", "/playlist.m3u8").0, 405);
    assert_eq!(http_request(r.port, "DELETE", "/playlist.m3u8").0, 405);
    assert_eq!(http_request(r.port, "GET", "/nothing.ts").0, 404);
}

#[test]
fn path_traversal_is_refused() {
    let r = start_serving("");
    // A file that exists next to the output directory must stay out of reach.
    let secret = r
        .dir
        .path()
        .parent()
        .unwrap()
        .join(format!("rshlssink-secret-{}.ts", std::process::id()));
    std::fs::write(&secret, b"secret").unwrap();
    let name = secret.file_name().unwrap().to_string_lossy().into_owned();
    for path in [
        "/../etc/passwd".to_string(),
        "/%2e%2e/etc/passwd".to_string(),
        "/%2E%2E%2Fetc%2Fpasswd".to_string(),
        "/..%2f..%2f..%2fetc%2fpasswd".to_string(),
        format!("/../{name}"),
        format!("/%2e%2e%2f{name}"),
        "/etc/passwd".to_string(),
        "/%2fetc%2fpasswd".to_string(),
        "/..\\etc\\passwd".to_string(),
    ] {
        let (status, _, body) = http_request(r.port, "GET", &path);
        assert!(
            status == 400 || status == 404,
            "{path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(!body.windows(5).any(|w| w == b"root:"), "{path}");
        assert!(!body.windows(6).any(|w| w == b"secret"), "{path}");
    }
    let _ = std::fs::remove_file(&secret);
    // Files in the output directory that the element did not write are not served either.
    std::fs::write(r.dir.join("other.ts"), b"not ours").unwrap();
    assert_eq!(http_request(r.port, "GET", "/other.ts").0, 404);
    // Garbage is a 400, not a hang.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], r.port).into();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\x01\x02 garbage\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_eq!(parse_response(&raw).0, 400);
}

#[test]
fn connections_are_bounded_and_kept_alive() {
    let r = start_serving("http-max-connections=2");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], r.port).into();
    let connect = || {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // Two keep-alive connections, each answering two requests.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect();
        for _ in 0..2 {
            s.write_all(b"GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let (status, len) = read_one(&mut s);
            assert_eq!(status, 200);
            assert!(len > 0);
        }
        held.push(s);
    }
    // A third is refused while they stay open.
    let mut third = connect();
    third
        .write_all(b"GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = third.read_to_end(&mut raw);
    assert_eq!(parse_response(&raw).0, 503);
    // Once one closes, a new connection is served.
    drop(held.pop());
    assert!(wait_for(Duration::from_secs(5), || {
        try_http_request(r.port, "GET", "/playlist.m3u8").is_ok_and(|resp| resp.0 == 200)
    }));
}

/// Reads one response with a Content-Length from a kept-alive connection.
fn read_one(s: &mut std::net::TcpStream) -> (u16, usize) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response head");
        raw.push(byte[0]);
    }
    let (status, headers, _) = parse_response(&raw);
    let len: usize = header(&headers, "content-length").unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, len)
}
