//! rshlssink's built-in HTTP server: ffprobe plays from it; path traversal, methods, MIME types,
//! CORS, caching, HEAD and ranges byte-exact, request bodies, and the limits under attack
//! (slowloris, one address taking every connection) while a client on another address plays.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

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

/// The newest segment the playlist names: (name, its bytes).
fn newest_segment(r: &Served) -> (String, Vec<u8>) {
    let playlist = read_playlist(&r.dir.join("playlist.m3u8"));
    let name = playlist.segments.last().expect("a segment").uri.clone();
    let data = std::fs::read(r.dir.join(&name)).unwrap();
    (name, data)
}

#[test]
fn head_and_ranges_are_byte_exact() {
    let r = start_serving("");
    let (name, whole) = newest_segment(&r);
    let len = whole.len();
    assert!(len > 2000, "{len} bytes");
    let path = format!("/{name}");
    let mut s = connect_from([127, 0, 0, 1], r.port).unwrap();
    let mut ask = |method: &str, range: Option<&str>| {
        let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n{range}\r\n").unwrap();
        read_response(&mut s, method)
    };
    let (status, headers, body) = ask("HEAD", None);
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-length"),
        Some(len.to_string().as_str())
    );
    assert!(body.is_empty());
    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=188-375", 188, 375),
        ("bytes=-100", len - 100, len - 1),
        ("bytes=1000-", 1000, len - 1),
        ("bytes=0-", 0, len - 1),
        (
            &format!("bytes={}-{}", len - 10, len + 1000),
            len - 10,
            len - 1,
        ),
    ] {
        let content_range = format!("bytes {start}-{end}/{len}");
        let (status, headers, body) = ask("GET", Some(range));
        assert_eq!(status, 206, "{range}");
        assert_eq!(
            header(&headers, "content-range"),
            Some(content_range.as_str())
        );
        assert_eq!(body, whole[start..=end], "{range}");
        let (status, headers, body) = ask("HEAD", Some(range));
        assert_eq!(status, 206, "HEAD {range}");
        assert_eq!(
            header(&headers, "content-range"),
            Some(content_range.as_str())
        );
        let n = (end + 1 - start).to_string();
        assert_eq!(header(&headers, "content-length"), Some(n.as_str()));
        assert!(body.is_empty());
    }
    let (status, headers, _) = ask("HEAD", Some(&format!("bytes={len}-")));
    assert_eq!(status, 416);
    assert_eq!(
        header(&headers, "content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    // Several ranges: the whole file.
    let (status, _, body) = ask("GET", Some("bytes=0-1,5-6"));
    assert_eq!(status, 200);
    assert_eq!(body, whole);
}

#[test]
fn request_bodies_are_consumed_or_refused() {
    let r = start_serving("");
    // A body that looks like a request is the first request's body, not a second request.
    let inner = "GET /nothing.ts HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = connect_from([127, 0, 0, 1], r.port).unwrap();
    write!(
        s,
        "GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{inner}\
         GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD /playlist.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        inner.len()
    )
    .unwrap();
    let (status, _, body) = read_response(&mut s, "GET");
    assert_eq!(status, 200);
    assert!(body.starts_with(b"#EXTM3U"));
    let (status, _, body) = read_response(&mut s, "GET");
    assert_eq!(status, 200, "the pipelined request after the body");
    assert!(body.starts_with(b"#EXTM3U"));
    assert_eq!(read_response(&mut s, "HEAD").0, 200);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // Refused: the answer, then the connection closes without reading the rest as requests.
    for (request, status) in [
        (
            "GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             25\r\nGET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
             Content-Length: 60\r\n\r\nGET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        (
            "GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n\
             GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n",
            413,
        ),
    ] {
        let mut s = connect_from([127, 0, 0, 1], r.port).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let (got, _, rest) = parse_response(&raw);
        assert_eq!(got, status, "{request:?}");
        assert!(
            rest.is_empty(),
            "one answer only: {}",
            String::from_utf8_lossy(&raw)
        );
    }
}

#[test]
fn one_address_cannot_take_every_connection() {
    let r = start_serving("http-max-connections-per-address=3 http-max-connections=10");
    let get = b"GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n";
    // Three kept-alive connections from 127.0.0.2 are served ...
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from([127, 0, 0, 2], r.port).unwrap();
        s.write_all(get).unwrap();
        assert_eq!(read_one(&mut s).0, 200);
        held.push(s);
    }
    // ... a fourth is refused, while 127.0.0.1 is still served.
    let mut fourth = connect_from([127, 0, 0, 2], r.port).unwrap();
    fourth.write_all(get).unwrap();
    let mut raw = Vec::new();
    let _ = fourth.read_to_end(&mut raw);
    assert_eq!(parse_response(&raw).0, 503);
    for _ in 0..5 {
        assert_eq!(http_request(r.port, "GET", "/playlist.m3u8").0, 200);
    }
    // Once one of the three closes, 127.0.0.2 is served again.
    drop(held.pop());
    assert!(wait_for(Duration::from_secs(5), || {
        let Ok(mut s) = connect_from([127, 0, 0, 2], r.port) else {
            return false;
        };
        s.write_all(get).is_ok() && read_one(&mut s).0 == 200
    }));
}

/// One slowloris connection as the attacker sees it.
struct Loris {
    stream: std::net::TcpStream,
    opened: Instant,
    /// When the server closed it, and its first answer line.
    closed: Option<(Instant, String)>,
    answer: Vec<u8>,
}

/// 150 slowloris connections from 127.0.0.2 (a request head, then one byte every 9 s, topped up
/// every 9 s) for 30 s, while ffprobe on 127.0.0.1 plays and every segment is fetched: every
/// client request succeeds, and no attacking connection stays open past the request deadline.
#[test]
fn slowloris_connections_do_not_lock_out_a_player() {
    const ATTACKERS: usize = 150;
    const TICK: Duration = Duration::from_secs(9);
    let r = start_serving("");
    let port = r.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attack = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut all: Vec<Loris> = Vec::new();
            let mut next_tick = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next_tick {
                    next_tick = now + TICK;
                    for l in all.iter_mut().filter(|l| l.closed.is_none()) {
                        let _ = l.stream.write_all(b"X");
                    }
                    let open = all.iter().filter(|l| l.closed.is_none()).count();
                    for _ in open..ATTACKERS {
                        let Ok(mut stream) = connect_from([127, 0, 0, 2], port) else {
                            continue;
                        };
                        stream.set_nonblocking(true).unwrap();
                        let _ = stream.write_all(b"GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\nX-");
                        all.push(Loris {
                            stream,
                            opened: Instant::now(),
                            closed: None,
                            answer: Vec::new(),
                        });
                    }
                }
                for l in all.iter_mut().filter(|l| l.closed.is_none()) {
                    let mut buf = [0u8; 512];
                    match l.stream.read(&mut buf) {
                        Ok(0) => {}
                        Ok(n) => {
                            l.answer.extend_from_slice(&buf[..n]);
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(_) => {}
                    }
                    let answer = String::from_utf8_lossy(&l.answer);
                    let first = answer.lines().next().unwrap_or("").to_owned();
                    l.closed = Some((Instant::now(), first));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            all
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    // The player: ffprobe, and every segment of the playlist, again and again.
    let url = format!("http://127.0.0.1:{port}/playlist.m3u8");
    let t0 = Instant::now();
    let mut probes = 0;
    let mut fetched = 0;
    let mut slowest = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(30) {
        let probe = ffprobe(&url, &[]);
        assert_eq!(probe.streams, [("h264".to_string(), "video".to_string())]);
        probes += 1;
        let playlist = read_playlist(&r.dir.join("playlist.m3u8"));
        for seg in &playlist.segments {
            let started = Instant::now();
            let (status, _, body) = http_request(port, "GET", &format!("/{}", seg.uri));
            // A segment may expire between reading the playlist and asking for it.
            assert!(status == 200 || status == 404, "{}: {status}", seg.uri);
            if status == 200 {
                slowest = slowest.max(started.elapsed());
                assert_eq!(body[0], 0x47);
                fetched += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let all = attack.join().unwrap();
    assert!(
        probes >= 3 && fetched >= 6,
        "{probes} probes, {fetched} segments"
    );
    // Live playback keeps up: each 1 s segment arrives well within its duration.
    assert!(
        slowest < Duration::from_millis(500),
        "a segment took {slowest:?}"
    );
    eprintln!("{probes} probes, {fetched} segments, slowest {slowest:?}");
    let end = Instant::now();
    let timed_out = all
        .iter()
        .filter(|l| l.closed.as_ref().is_some_and(|(_, a)| a.contains(" 408 ")))
        .count();
    let refused = all
        .iter()
        .filter(|l| l.closed.as_ref().is_some_and(|(_, a)| a.contains(" 503 ")))
        .count();
    assert!(
        timed_out >= 16,
        "{timed_out} closed with 408 ({} connections)",
        all.len()
    );
    assert!(refused >= ATTACKERS, "{refused} refused with 503");
    // No attacking connection stayed open past the 10 s deadline.
    for l in &all {
        let closed = l.closed.as_ref().map_or(end, |c| c.0);
        let lived = closed - l.opened;
        assert!(
            lived < Duration::from_secs(12),
            "open {lived:?}: {:?}",
            l.closed
        );
    }
}

/// Reads one response to a GET from a kept-alive connection: its status and body length.
fn read_one(s: &mut std::net::TcpStream) -> (u16, usize) {
    let (status, _, body) = read_response(s, "GET");
    (status, body.len())
}
