//! rsrtmpsink and rshlssink start no runtime of their own: rshlssink's HTTP server runs on the
//! plugin's shared runtime, rsrtmpsink keeps one network thread per publication (a current-thread
//! runtime on it: `benches/rtmp_publish.rs` measured it cheaper than the shared runtime), and
//! each rshlssink one output worker. Stopping them (publishing to nginx-rtmp; serving HTTP with a
//! client connected) returns at once, ends every connection and frees the port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gst::prelude::*;

use common::hls::{TempDir, wait_for};
use common::rtmp::Nginx;

const INSTANCES: usize = 5;
/// Threads that may appear besides the counted ones (GStreamer's clock thread, a GLib pool).
const SLACK: usize = 2;

/// The process's threads' names, one entry per thread.
fn thread_names() -> Vec<String> {
    common::threads_by_name()
        .into_iter()
        .flat_map(|(name, n)| std::iter::repeat_n(name, n))
        .collect()
}

/// A live H.264 source without encoder threads of its own, ending in `! `.
fn video() -> &'static str {
    "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=15/1,format=I420 \
     ! x264enc threads=1 tune=zerolatency speed-preset=ultrafast key-int-max=15 bitrate=200 \
     ! h264parse ! "
}

fn launch(desc: &str) -> gst::Pipeline {
    let pipeline = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("pipeline '{desc}': {e}"))
        .downcast::<gst::Pipeline>()
        .expect("pipeline");
    pipeline
        .set_state(gst::State::Playing)
        .expect("pipeline to PLAYING");
    pipeline
}

fn stop_within_a_second(pipeline: &gst::Pipeline, what: &str) {
    let start = Instant::now();
    let _ = pipeline.set_state(gst::State::Null);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "stopping {what} took {took:?}"
    );
}

#[test]
fn rtmp_and_hls_sinks_add_no_threads_and_stop_at_once() {
    common::init();
    let nginx = Nginx::start();
    let dirs: Vec<TempDir> = (0..INSTANCES)
        .map(|i| TempDir::new(&format!("element-threads-{i}")))
        .collect();

    let before = thread_names();
    let rtmp: Vec<_> = (0..INSTANCES)
        .map(|i| {
            launch(&format!(
                "{} flvmux streamable=true ! rsrtmpsink location={}",
                video(),
                nginx.url(&format!("threads{i}"))
            ))
        })
        .collect();
    let hls: Vec<_> = dirs
        .iter()
        .map(|dir| {
            launch(&format!(
                "{} rshlssink name=h location={} target-duration=1 http-port=0 \
                 http-address=127.0.0.1",
                video(),
                dir.str()
            ))
        })
        .collect();
    // Every publication publishing, every playlist written.
    for p in &rtmp {
        let sink = p
            .children()
            .into_iter()
            .find(|e| e.factory().is_some_and(|f| f.name() == "rsrtmpsink"));
        let sink = sink.expect("rsrtmpsink");
        assert!(
            wait_for(Duration::from_secs(20), || {
                sink.property::<gst::Structure>("stats")
                    .get::<bool>("publishing")
                    .unwrap_or(false)
            }),
            "rsrtmpsink did not publish to nginx: {}",
            nginx.error_log()
        );
    }
    let mut ports = Vec::new();
    let mut clients = Vec::new();
    for (p, dir) in hls.iter().zip(&dirs) {
        let port = p.by_name("h").unwrap().property::<i32>("http-bound-port");
        assert!(port > 0);
        let port = port as u16;
        let playlist = dir.join("playlist.m3u8");
        assert!(
            wait_for(Duration::from_secs(20), || playlist.exists()),
            "no playlist"
        );
        // A client on a kept-alive connection, between requests.
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET /playlist.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        ports.push(port);
        clients.push(c);
    }

    // The threads that appeared, by name, less the sources' streaming threads
    // (videotestsrcN:src, flvmuxN:src) and the shared runtime's workers (a constant; names are
    // cut to 15 bytes).
    let names = thread_names();
    let mut new = names.clone();
    for n in &before {
        if let Some(i) = new.iter().position(|m| m == n) {
            new.swap_remove(i);
        }
    }
    let count = |name: &str| new.iter().filter(|n| *n == name).count();
    eprintln!(
        "{} new threads for {INSTANCES} rsrtmpsink + {INSTANCES} rshlssink: {new:?}",
        new.len()
    );
    // Per rshlssink: its output worker (file I/O is blocking); per rsrtmpsink: its network
    // thread. Nothing else per element: no runtime, no HTTP server thread.
    assert_eq!(count("hls-output"), INSTANCES, "{names:?}");
    assert_eq!(count("rsrtmpsink-net"), INSTANCES, "{names:?}");
    let others: Vec<_> = new
        .iter()
        .filter(|n| {
            !(n.starts_with("videotestsrc")
                || n.starts_with("flvmux")
                || n.starts_with("livestreaming-r")
                || *n == "hls-output"
                || *n == "rsrtmpsink-net")
        })
        .collect();
    assert!(
        others.len() <= SLACK,
        "threads of no source and no shared runtime: {others:?} (all: {names:?})"
    );

    for p in &rtmp {
        stop_within_a_second(p, "rsrtmpsink");
    }
    for p in &hls {
        stop_within_a_second(p, "rshlssink");
    }
    // Every connection ended with the server, and its port is free again.
    for (mut c, port) in clients.into_iter().zip(ports) {
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut rest = Vec::new();
        let closed = c.read_to_end(&mut rest);
        assert!(
            !matches!(&closed, Err(e) if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )),
            "connection to {port} still open a second after the stop"
        );
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} not released: {e}"));
    }
}
