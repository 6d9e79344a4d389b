//! rtspserversink on the plugin's shared runtime: stopping it ends every connection at once
//! without blocking, frees its port for the next start, and an element takes no threads of its
//! own (only GStreamer's streaming threads upstream of it).

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

/// A small live H.264 input that starts no encoder threads of its own.
const SOURCE: &str = "videotestsrc is-live=true ! \
     video/x-raw,width=160,height=120,framerate=15/1,format=I420 ! x264enc tune=zerolatency \
     speed-preset=ultrafast threads=1 bitrate=200 key-int-max=15 ! sink.";

/// The threads named in `after` that `before` did not have, by name.
fn new_threads(
    before: &BTreeMap<String, usize>,
    after: &BTreeMap<String, usize>,
) -> BTreeMap<String, usize> {
    after
        .iter()
        .filter_map(|(name, n)| {
            let extra = n.saturating_sub(before.get(name).copied().unwrap_or(0));
            (extra > 0).then(|| (name.clone(), extra))
        })
        .collect()
}

/// How a client's connection ended after the server stopped.
#[derive(Debug)]
enum End {
    Eof(Instant),
    Error(#[allow(dead_code)] std::io::ErrorKind),
    Silence,
}

/// Reads (and discards) everything until the server closes the connection.
fn read_to_end(mut stream: TcpStream) -> End {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return End::Eof(Instant::now()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return End::Silence;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return End::Error(e.kind()),
        }
    }
}

fn stopping_with_twenty_clients_returns_at_once_and_every_client_sees_the_end() {
    const CLIENTS: usize = 20;
    let server = ServerPipeline::start("", &av_source(false));
    let (tx, rx) = mpsc::channel::<()>();
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let (port, url, tx) = (server.port, server.url("/"), tx.clone());
        readers.push(std::thread::spawn(move || {
            let mut c = RawClient::connect(port);
            c.play_tcp(&url);
            let stream = c.stream.try_clone().unwrap();
            tx.send(()).unwrap();
            read_to_end(stream)
        }));
    }
    drop(tx);
    for i in 0..CLIENTS {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("only {i} of {CLIENTS} clients play: {e}"));
    }
    let connections = server.stats().get::<u32>("connections").unwrap();
    assert_eq!(connections as usize, CLIENTS, "{:?}", server.stats());

    let stopping = Instant::now();
    server.pipeline.set_state(gst::State::Null).unwrap();
    let stop_took = stopping.elapsed();
    let ends: Vec<End> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    eprintln!("stopping took {stop_took:?}; clients saw: {ends:?}");
    assert!(
        stop_took < Duration::from_secs(1),
        "stopping with {CLIENTS} clients took {stop_took:?}"
    );
    for (i, end) in ends.iter().enumerate() {
        match end {
            End::Eof(at) => assert!(
                at.duration_since(stopping) < Duration::from_secs(2),
                "client {i} saw the end {:?} after the stop",
                at.duration_since(stopping)
            ),
            other => panic!("client {i}: {other:?} instead of the end of the stream"),
        }
    }
}

fn the_port_can_be_bound_again_right_after_stopping() {
    init();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let desc = format!("rtspserversink name=sink address=127.0.0.1 port={port} {SOURCE}");
    let pipeline = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    assert_ours(&sink);
    pipeline.set_state(gst::State::Playing).unwrap();
    for round in 0..5 {
        assert_eq!(sink.property::<i32>("bound-port"), i32::from(port));
        // A client that plays, still connected when the server stops.
        let mut c = RawClient::connect(port);
        c.play_tcp(&format!("rtsp://127.0.0.1:{port}/"));
        assert!(!c.read_interleaved(0, 2).is_empty());
        let stream = c.stream.try_clone().unwrap();
        let stopping = Instant::now();
        pipeline.set_state(gst::State::Null).unwrap();
        assert!(stopping.elapsed() < Duration::from_secs(1));
        // At once: before the runtime has got round to dropping the stopped server's tasks.
        pipeline
            .set_state(gst::State::Playing)
            .unwrap_or_else(|e| panic!("start {} on port {port}: {e}", round + 1));
        match read_to_end(stream) {
            End::Eof(_) => {}
            other => panic!("round {round}: the client saw {other:?} after the stop"),
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
}

fn servers_take_no_threads_of_their_own() {
    /// rtspsrc2 instances, half on each server.
    const RECEIVERS: usize = 10;
    /// Threads an rtspsrc2 may take (its reader and its pad's task; see tests/threads.rs).
    const PER_RECEIVER: usize = 2;
    /// GStreamer's streaming threads of the two server pipelines (one per videotestsrc).
    const SERVER_STREAMING: usize = 2;
    /// Threads GStreamer starts once (its clock, ...).
    const CONSTANT: usize = 3;
    init();
    // The shared runtime's workers are there before the elements.
    let _ = gstlivestreaming::runtime::handle();
    std::thread::sleep(Duration::from_millis(100));
    let before = threads_of_this_process();
    let names_before = threads_by_name();

    let servers = [
        ServerPipeline::start("", SOURCE),
        ServerPipeline::start("", SOURCE),
    ];
    let pipeline = gst::Pipeline::new();
    let receiving = Arc::new(AtomicUsize::new(0));
    for i in 0..RECEIVERS {
        let src = gst::ElementFactory::make("rtspsrc2")
            .property("location", servers[i % 2].url("/"))
            .property_from_str("protocols", "tcp")
            .build()
            .unwrap();
        assert_ours(&src);
        common::add_counted_receiver(&pipeline, &src, &receiving);
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiving.load(Ordering::SeqCst) < RECEIVERS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let every connection settle (answers, RTCP) before counting.
    std::thread::sleep(Duration::from_secs(1));
    let threads = threads_of_this_process();
    let new = new_threads(&names_before, &threads_by_name());
    let served: u32 = servers
        .iter()
        .map(|s| s.stats().get::<u32>("connections").unwrap())
        .sum();
    let _ = pipeline.set_state(gst::State::Null);
    drop(servers);
    eprintln!("{threads} threads ({before} before); new: {new:?}");
    assert_eq!(
        receiving.load(Ordering::SeqCst),
        RECEIVERS,
        "receivers that got buffers"
    );
    assert_eq!(served as usize, RECEIVERS, "connections the servers count");
    // No thread of the servers' own: every new thread is a GStreamer task ("element:pad"), a
    // receiver's reader, or one of the shared runtime's.
    let foreign: Vec<(&String, &usize)> = new
        .iter()
        .filter(|(name, _)| {
            let ours = ["rtsp-read", "rtsp-udp", "livestreaming"];
            !name.contains(':') && !ours.iter().any(|p| name.starts_with(p))
        })
        .collect();
    assert!(
        foreign.iter().map(|(_, n)| **n).sum::<usize>() <= CONSTANT,
        "threads that are neither GStreamer's streaming threads, rtspsrc2's nor the shared \
         runtime's: {foreign:?} (all new: {new:?})"
    );
    let allowed = SERVER_STREAMING + RECEIVERS * PER_RECEIVER + CONSTANT;
    assert!(
        threads <= before + allowed,
        "2 rtspserversink + {RECEIVERS} rtspsrc2 take {} threads (at most {allowed}): {new:?}",
        threads - before
    );
}

/// One test: the thread count is of the whole process, so nothing else may run beside it.
#[test]
fn stop_is_prompt_frees_the_port_and_servers_take_no_threads() {
    servers_take_no_threads_of_their_own();
    stopping_with_twenty_clients_returns_at_once_and_every_client_sees_the_end();
    the_port_can_be_bound_again_right_after_stopping();
}
