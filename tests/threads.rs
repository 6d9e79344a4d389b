//! Threads: an application receiving many cameras gets a bounded number of threads per rtspsrc2,
//! not a runtime and a handful of threads per instance.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gst::prelude::*;

use common::{ChildGuard, plugin_dir};

/// Instances per test.
const INSTANCES: usize = 100;
/// Threads each rtspsrc2 may take (its reader and its pad's task).
const PER_INSTANCE: usize = 2;
/// Threads of the process besides the instances': the test harness, GStreamer's own, the
/// shared runtime's workers.
const CONSTANT: usize = 16;

/// The process's threads by name, for the failure message.
fn thread_names() -> String {
    common::threads_by_name()
        .iter()
        .map(|(n, c)| format!("{n}: {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An rtspserversink in a child process (so that its threads are not counted), on a free port.
fn server(max_connections: usize) -> (ChildGuard, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("threads-registry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = ChildGuard::spawn(
        Command::new("gst-launch-1.0")
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("GST_REGISTRY", dir.join("registry.bin"))
            .args(["-q", "videotestsrc", "is-live=true", "!"])
            .args(["video/x-raw,width=160,height=120,framerate=15/1", "!"])
            .args(["x264enc", "tune=zerolatency", "speed-preset=ultrafast"])
            .args(["bitrate=200", "key-int-max=15", "!", "rtspserversink"])
            .arg(format!("port={port}"))
            .arg("address=127.0.0.1")
            .arg(format!("max-connections={max_connections}"))
            // Every instance connects from 127.0.0.1.
            .arg(format!("max-connections-per-address={max_connections}")),
    );
    // Wait until it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "rtspserversink did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, port)
}

fn many_instances_share_threads(protocols: &str) {
    common::init();
    let (_server, port) = server(INSTANCES * 2);
    let before = common::threads_of_this_process();
    let pipeline = gst::Pipeline::new();
    let receiving = Arc::new(AtomicUsize::new(0));
    for _ in 0..INSTANCES {
        let src = gst::ElementFactory::make("rtspsrc2")
            .property("location", format!("rtsp://127.0.0.1:{port}/"))
            .property_from_str("protocols", protocols)
            .build()
            .unwrap();
        common::assert_ours(&src);
        common::add_counted_receiver(&pipeline, &src, &receiving);
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiving.load(Ordering::SeqCst) < INSTANCES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let received = receiving.load(Ordering::SeqCst);
    // Count after every instance has sent Receiver Reports (every 5 s) while receiving.
    std::thread::sleep(Duration::from_millis(5500));
    let threads = common::threads_of_this_process();
    let names = thread_names();
    let _ = pipeline.set_state(gst::State::Null);
    eprintln!(
        "{protocols}: {received}/{INSTANCES} instances receiving; {threads} threads ({before} before)"
    );
    assert_eq!(received, INSTANCES, "instances that received buffers");
    assert!(
        threads <= before + INSTANCES * PER_INSTANCE + CONSTANT,
        "{INSTANCES} rtspsrc2 over {protocols} take {} threads (at most {} allowed): {names}",
        threads - before,
        INSTANCES * PER_INSTANCE + CONSTANT
    );
}

/// One test: the count is of the whole process, so the two transports run one after the other.
#[test]
fn hundred_rtspsrc2_take_at_most_two_threads_each() {
    many_instances_share_threads("tcp");
    many_instances_share_threads("udp");
}
