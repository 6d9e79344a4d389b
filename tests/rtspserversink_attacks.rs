//! rtspserversink under attack from other loopback addresses (127.0.0.2 and up) while the stock
//! `rtspsrc` (gst-launch-1.0) plays over TCP from 127.0.0.1: it must keep receiving at the rate
//! it had before the attack, a new client (ffprobe) must be served during it, and the limit that
//! stops the attack must show in `stats`. The input is uncompressed audio (L16), a constant
//! bitrate, so that the rates before and during an attack compare to the byte.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::hls::connect_from;
use common::*;

/// 48 kHz stereo 16-bit: 192,000 bytes/s of payload.
const SOURCE: &str = "audiotestsrc is-live=true samplesperbuffer=480 \
    ! audio/x-raw,format=S16BE,rate=48000,channels=2 ! rtpL16pay ! sink.";
/// Shorter than the default 10 s, to keep each test well under a minute.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long each rate is measured.
const WINDOW: Duration = Duration::from_secs(5);

fn start_server() -> ServerPipeline {
    raise_nofile_limit();
    ServerPipeline::start(
        &format!("request-timeout={}", REQUEST_TIMEOUT.as_secs()),
        SOURCE,
    )
}

/// Raises the soft limit of open files to the hard limit: an attack holds a thousand sockets
/// at both ends in this process.
fn raise_nofile_limit() {
    use nix::libc;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The stock rtspsrc playing over TCP into fdsink; its output's bytes are counted.
struct Player {
    _child: ChildGuard,
    meter: ByteMeter,
}

impl Player {
    fn start(url: &str) -> Player {
        let mut child = ChildGuard::spawn(std::process::Command::new("gst-launch-1.0").args([
            "-q",
            "rtspsrc",
            &format!("location={url}"),
            "protocols=tcp",
            "latency=100",
            "!",
            "fdsink",
            "fd=1",
            "sync=false",
        ]));
        let meter = ByteMeter::of_stdout(&mut child);
        assert!(
            meter.wait_for_data(Duration::from_secs(20)),
            "rtspsrc received nothing"
        );
        Player {
            _child: child,
            meter,
        }
    }
}

/// Plays from `server` while `attack` runs on its own thread (until the flag it gets is set):
/// asserts that the player's rate during the attack is within 5% (plus 4 kB/s) of its rate
/// before it and that ffprobe, started after the request timeout, is served. Returns what the
/// attack returned.
fn play_through<T: Send + 'static>(
    server: &ServerPipeline,
    attack: impl FnOnce(u16, Arc<AtomicBool>) -> T + Send + 'static,
) -> T {
    let url = server.url("/");
    let player = Player::start(&url);
    thread::sleep(Duration::from_secs(1));
    let before = player.meter.rate(WINDOW);
    assert!(before > 150_000.0, "rtspsrc receives only {before:.0} B/s");
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (port, stop) = (server.port, stop.clone());
        thread::spawn(move || attack(port, stop))
    };
    thread::sleep(Duration::from_millis(500));
    let during = player.meter.rate(WINDOW);
    // A new client gets in while the attack goes on.
    let probe = ffprobe(&url, "tcp", "stream=codec_name");
    stop.store(true, Ordering::Relaxed);
    let result = attacker.join().expect("attack thread");
    assert_rate_kept("rtspsrc", before, during, 4000.0);
    assert_eq!(probe.trim(), "pcm_s16be", "ffprobe during the attack");
    result
}

fn stat(server: &ServerPipeline, field: &str) -> u64 {
    server.stats().get::<u64>(field).unwrap()
}

/// 1000 idle connections from 50 addresses (20 each, under the per-address cap): together they
/// take every connection slot, until the request timeout closes them, as they have no session.
#[test]
fn a_thousand_idle_connections() {
    let server = start_server();
    let opened = play_through(&server, |port, stop| {
        let conns: Vec<TcpStream> = (0..1000u32)
            .filter_map(|i| connect_from([127, 0, 1, 1 + (i % 50) as u8], port).ok())
            .collect();
        while !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50));
        }
        conns.len()
    });
    assert_eq!(opened, 1000);
    let closed = stat(&server, "connections-idle-closed");
    let refused = stat(&server, "connections-refused");
    assert!(
        closed + refused >= 1000,
        "{closed} idle connections closed, {refused} refused"
    );
}

/// 200 slowloris connections from 127.0.0.2, each a request head sent one byte a second, those
/// closed replaced every second: the per-address cap refuses most, the request timeout ends the
/// others with 408.
#[test]
fn two_hundred_slowloris_connections() {
    let server = start_server();
    let conns = play_through(&server, |port, stop| {
        let mut all: Vec<Conn> = Vec::new();
        let mut tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            all.iter_mut().for_each(Conn::poll);
            if Instant::now() >= tick {
                tick += Duration::from_secs(1);
                for c in all.iter_mut().filter(|c| c.closed.is_none()) {
                    let _ = c.stream.write_all(b"x");
                }
                let open = all.iter().filter(|c| c.closed.is_none()).count();
                for _ in open..200 {
                    let head = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX";
                    all.extend(Conn::open([127, 0, 0, 2], port, head));
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        all
    });
    let longest = conns.iter().map(Conn::lifetime).max().unwrap();
    assert!(
        longest < REQUEST_TIMEOUT + Duration::from_millis(1500),
        "a slowloris connection stayed open {longest:?}"
    );
    let timed_out = conns.iter().filter(|c| c.status() == Some("408")).count();
    assert!(timed_out >= 32, "only {timed_out} answered 408");
    assert!(stat(&server, "requests-timed-out") >= timed_out as u64);
    assert!(stat(&server, "connections-refused-per-address") > 0);
}

/// Sends `n` SETUPs (UDP, no session) on `stream` at once and returns how many were answered
/// 200 and how many 503.
fn pipelined_setups(stream: TcpStream, port: u16, n: usize) -> (usize, usize) {
    let mut writer = stream.try_clone().unwrap();
    let url = format!("rtsp://127.0.0.1:{port}/");
    let sender = thread::spawn(move || {
        for cseq in 1..=n {
            let req = format!(
                "SETUP {url} RTSP/1.0\r\nCSeq: {cseq}\r\n\
                 Transport: RTP/AVP;unicast;client_port=40000-40001\r\n\r\n"
            );
            writer.write_all(req.as_bytes()).expect("SETUP sent");
        }
    });
    let mut client = RawClient::from_stream(stream);
    let (mut created, mut refused) = (0, 0);
    for _ in 0..n {
        match client.read_response().status {
            200 => created += 1,
            503 => refused += 1,
            other => panic!("SETUP answered {other}"),
        }
    }
    sender.join().unwrap();
    (created, refused)
}

/// A client on 127.0.0.2 SETUPs 10,000 sessions, first pipelined on one connection (the first
/// 8 are created, the others get 503), then 8 at a time on 1250 connections one after the
/// other: the sessions it never plays end with each connection, so they never fill
/// `max-sessions` (and ffprobe gets one during the attack).
#[test]
fn ten_thousand_setups() {
    let server = start_server();
    let (one, many) = play_through(&server, |port, _stop| {
        let conn = || connect_from([127, 0, 0, 2], port).expect("connect");
        let one = pipelined_setups(conn(), port, 10_000);
        let mut many = (0, 0);
        for _ in 0..1250 {
            let (created, refused) = pipelined_setups(conn(), port, 8);
            many = (many.0 + created, many.1 + refused);
        }
        (one, many)
    });
    assert_eq!(one, (8, 9992), "on one connection: (created, refused)");
    assert_eq!(many, (10_000, 0), "8 per connection: (created, refused)");
    assert_eq!(stat(&server, "sessions-refused"), 9992);
}

/// 100 connections from ten addresses sending a request with a body a KiB at a time: those
/// announcing 1 MiB get 413 at once, those announcing less than the limit 408 after the request
/// timeout.
#[test]
fn bodies_trickled_on_a_hundred_connections() {
    let server = start_server();
    let conns = play_through(&server, |port, stop| {
        let mut all: Vec<(Conn, usize)> = (0..100u8)
            .filter_map(|i| {
                let length = if i % 2 == 0 { 1 << 20 } else { 60_000 };
                let head = format!(
                    "SET_PARAMETER rtsp://127.0.0.1:{port}/ RTSP/1.0\r\nCSeq: 1\r\n\
                     Content-Type: text/parameters\r\nContent-Length: {length}\r\n\r\n"
                );
                Some((
                    Conn::open([127, 0, 2, 1 + i % 10], port, head.as_bytes())?,
                    length,
                ))
            })
            .collect();
        let chunk = vec![b'a'; 1024];
        while !stop.load(Ordering::Relaxed) {
            for (c, _) in &mut all {
                c.poll();
                if c.closed.is_none() {
                    let _ = c.stream.write_all(&chunk);
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
        all
    });
    assert_eq!(conns.len(), 100);
    for (c, length) in &conns {
        let (status, within) = if *length > 65536 {
            ("413", Duration::from_secs(1))
        } else {
            ("408", REQUEST_TIMEOUT + Duration::from_millis(1500))
        };
        assert_eq!(c.status(), Some(status), "Content-Length {length}");
        assert!(c.lifetime() < within, "{:?} open", c.lifetime());
    }
    assert_eq!(stat(&server, "requests-too-large"), 50);
    assert_eq!(stat(&server, "requests-timed-out"), 50);
}
