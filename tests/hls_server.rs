//! rshlssink's built-in HTTP server: ffprobe plays from it; path traversal, methods, MIME types,
//! CORS, caching, HEAD and ranges byte-exact, request bodies, and the limits under attack
//! (slowloris, idle connections, trickled bodies, one address taking every connection) while
//! ffmpeg plays from another address at the rate it had before the attack.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Conn;
use common::hls::*;
use gst::prelude::*;

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

/// A live stream at a constant bitrate (x264's rate control on noise: every 1 s segment about
/// 110 kB), so that a player's rates before and during an attack compare within a percent.
const CBR_VIDEO: &str = "videotestsrc is-live=true pattern=snow \
    ! video/x-raw,width=160,height=120,framerate=30/1 \
    ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=800 ! h.";
/// Shorter than the default 10 s, to keep each attack test well under a minute.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long each rate is measured.
const WINDOW: Duration = Duration::from_secs(5);

/// ffmpeg playing the live playlist in real time (`-re`, as a player does, from 127.0.0.1):
/// its remuxed output is counted.
struct Player {
    _child: common::ChildGuard,
    meter: common::ByteMeter,
}

impl Player {
    fn start(url: &str) -> Player {
        let mut child = common::ChildGuard::spawn(std::process::Command::new("ffmpeg").args([
            "-nostdin",
            "-loglevel",
            "error",
            "-re",
            "-i",
            url,
            "-c",
            "copy",
            "-f",
            "mpegts",
            "-flush_packets",
            "1",
            "pipe:1",
        ]));
        let meter = common::ByteMeter::of_stdout(&mut child);
        assert!(
            meter.wait_for_data(Duration::from_secs(20)),
            "ffmpeg received nothing"
        );
        Player {
            _child: child,
            meter,
        }
    }
}

/// Serves [`CBR_VIDEO`] with `http-request-timeout` at [`REQUEST_TIMEOUT`] and plays it with
/// ffmpeg while `attack` runs on its own thread (from other addresses, until the flag it gets
/// is set): asserts that ffmpeg's rate during the attack is within 5% (plus 4 kB/s) of its rate
/// before it and that ffprobe, started after the request timeout, is served. Returns what the
/// attack returned.
fn play_through<T: Send + 'static>(
    props: &str,
    attack: impl FnOnce(u16, Arc<AtomicBool>) -> T + Send + 'static,
) -> T {
    let r = serve_live(
        "attack",
        &format!(
            "playlist-length=3 http-request-timeout={} {props}",
            REQUEST_TIMEOUT.as_secs()
        ),
        CBR_VIDEO,
    );
    let url = format!("http://127.0.0.1:{}/playlist.m3u8", r.port);
    let player = Player::start(&url);
    std::thread::sleep(Duration::from_secs(1));
    let before = player.meter.rate(WINDOW);
    assert!(before > 50_000.0, "ffmpeg receives only {before:.0} B/s");
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (port, stop) = (r.port, stop.clone());
        std::thread::spawn(move || attack(port, stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let during = player.meter.rate(WINDOW);
    // A new client gets in while the attack goes on.
    let probe = ffprobe(&url, &[]);
    stop.store(true, Ordering::Relaxed);
    let result = attacker.join().expect("attack thread");
    common::assert_rate_kept("ffmpeg", before, during, 4000.0);
    assert_eq!(
        probe.streams,
        [("h264".to_string(), "video".to_string())],
        "ffprobe during the attack"
    );
    result
}

/// Polls `conns` every 20 ms until `stop`, calling `tick` with them once a second (first at
/// once).
fn attack_loop(stop: &AtomicBool, conns: &mut Vec<Conn>, mut tick: impl FnMut(&mut Vec<Conn>)) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        conns.iter_mut().for_each(Conn::poll);
        if Instant::now() >= next {
            next += Duration::from_secs(1);
            tick(conns);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 150 slowloris connections from 127.0.0.2 (a request head, then one byte a second; those
/// closed replaced every second): the per-address cap refuses most with 503, the request
/// deadline ends the others with 408.
#[test]
fn slowloris_connections() {
    const ATTACKERS: usize = 150;
    let all = play_through("", |port, stop| {
        let mut all = Vec::new();
        attack_loop(&stop, &mut all, |all| {
            for c in all.iter_mut().filter(|c| c.closed.is_none()) {
                let _ = c.stream.write_all(b"X");
            }
            let open = all.iter().filter(|c| c.closed.is_none()).count();
            for _ in open..ATTACKERS {
                let head = b"GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\nX-";
                all.extend(Conn::open([127, 0, 0, 2], port, head));
            }
        });
        all
    });
    let timed_out = all.iter().filter(|c| c.status() == Some("408")).count();
    let refused = all.iter().filter(|c| c.status() == Some("503")).count();
    assert!(timed_out >= 16, "{timed_out} closed with 408");
    assert!(refused >= ATTACKERS, "{refused} refused with 503");
    let longest = all.iter().map(Conn::lifetime).max().unwrap();
    assert!(
        longest < REQUEST_TIMEOUT + Duration::from_millis(1500),
        "a slowloris connection stayed open {longest:?}"
    );
}

/// 100 idle connections from ten addresses (10 each, under the per-address cap): together they
/// take every slot of `http-max-connections` but those the player holds, until the request
/// deadline closes them.
#[test]
fn a_hundred_idle_connections() {
    let all = play_through("", |port, stop| {
        let mut all: Vec<Conn> = (0..100u8)
            .filter_map(|i| Conn::open([127, 0, 1, 1 + i % 10], port, b""))
            .collect();
        attack_loop(&stop, &mut all, |_| {});
        all
    });
    assert_eq!(all.len(), 100);
    for c in &all {
        let status = c.status();
        assert!(
            c.closed.is_some() && (status.is_none() || status == Some("503")),
            "{status:?}"
        );
        assert!(
            c.lifetime() < REQUEST_TIMEOUT + Duration::from_millis(1500),
            "an idle connection stayed open {:?}",
            c.lifetime()
        );
    }
}

/// 80 connections from ten addresses (under `http-max-connections`, 100, with the player's)
/// sending a request with a body a KiB at a time: those
/// announcing 1 MiB get 413 at once, those announcing less than the 64 KiB limit 408 at the
/// request deadline.
#[test]
fn bodies_trickled_on_a_hundred_connections() {
    let all = play_through("", |port, stop| {
        let mut all: Vec<Conn> = (0..80u8)
            .filter_map(|i| {
                let length = if i % 2 == 0 { 1 << 20 } else { 60_000 };
                let head = format!(
                    "GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
                );
                Conn::open([127, 0, 2, 1 + i % 10], port, head.as_bytes())
            })
            .collect();
        let chunk = vec![b'a'; 1024];
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            all.iter_mut().for_each(Conn::poll);
            if Instant::now() >= next {
                next += Duration::from_millis(200);
                for c in all.iter_mut().filter(|c| c.closed.is_none()) {
                    let _ = c.stream.write_all(&chunk);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        all
    });
    assert_eq!(all.len(), 80);
    for (i, c) in all.iter().enumerate() {
        let (status, within) = if i % 2 == 0 {
            ("413", Duration::from_secs(1))
        } else {
            ("408", REQUEST_TIMEOUT + Duration::from_millis(1500))
        };
        assert_eq!(
            c.status(),
            Some(status),
            "connection {i}: closed after {:?}: {:?}",
            c.closed.map(|t| t - c.opened),
            String::from_utf8_lossy(&c.answer)
        );
        assert!(c.lifetime() < within, "{:?} open", c.lifetime());
    }
}

/// `http-request-timeout` sets the deadline: an incomplete request is answered 408 and an idle
/// connection closed after it, not after the default 10 s.
#[test]
fn the_request_deadline_is_a_property() {
    let r = start_serving("http-request-timeout=2");
    let sink = r.pipeline.by_name("h").unwrap();
    assert_eq!(sink.property::<u32>("http-request-timeout"), 2);
    // Connections that were answered once: the deadline starts again after the answer.
    let mut kept = connect_from([127, 0, 0, 1], r.port).unwrap();
    let mut kept_partial = connect_from([127, 0, 0, 1], r.port).unwrap();
    let get = b"GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n";
    for s in [&mut kept, &mut kept_partial] {
        s.write_all(get).unwrap();
        assert_eq!(read_one(s).0, 200);
    }
    let mut partial = connect_from([127, 0, 0, 1], r.port).unwrap();
    let mut idle = connect_from([127, 0, 0, 1], r.port).unwrap();
    let t0 = Instant::now();
    kept_partial
        .write_all(b"GET /playlist.m3u8 HTTP/1.1\r\n")
        .unwrap();
    partial
        .write_all(b"GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut raw = Vec::new();
    partial.read_to_end(&mut raw).unwrap();
    let answered = t0.elapsed();
    assert_eq!(parse_response(&raw).0, 408);
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    let closed = t0.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    for (what, took) in [("408", answered), ("idle close", closed)] {
        assert!(
            took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
            "{what} after {took:?}"
        );
    }
    let mut rest = Vec::new();
    kept_partial.read_to_end(&mut rest).unwrap();
    let took_408 = t0.elapsed();
    assert_eq!(parse_response(&rest).0, 408);
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest).unwrap();
    let took_close = t0.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    for (what, took) in [
        ("408 after an answer", took_408),
        ("idle close after an answer", took_close),
    ] {
        assert!(
            took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
            "{what} after {took:?}"
        );
    }
}

/// Reads one response to a GET from a kept-alive connection: its status and body length.
fn read_one(s: &mut std::net::TcpStream) -> (u16, usize) {
    let (status, _, body) = read_response(s, "GET");
    (status, body.len())
}
