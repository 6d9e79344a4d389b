//! rsrtmpsink against pyrtmp 0.3.1 (PyPI), a small Python RTMP server we did not write, whose
//! answers break two rules: its `_result` for connect opens chunk stream 3 with a type 1 header
//! (it had sent type 0 only on chunk stream 2), and its onStatus for publish comes with a type 1
//! header that keeps message stream 0. ffmpeg records every frame through it; rsrtmpsink used to
//! stop at once ("chunk of type 1 on chunk stream 3 without a previous header"). Now it takes the
//! missing fields from the latest header (logged at INFO) and records every frame too.
//! pyrtmp lives in a venv under target/test-assets (.ci/deps installs it); the server script is
//! tests/common/pyrtmp_record.py (its README's recorder). Loopback only, every wait bounded, the
//! child killed.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;

use common::rtmp::{Publish, TempDir, av_flv_source, probe_file, wait_file_settled};
use common::{ChildGuard, ffmpeg_test_media};

fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/test-assets/pyrtmp/bin/python");
    assert!(
        python.exists(),
        "{} missing: run .ci/deps (pyrtmp 0.3.1 in a venv)",
        python.display()
    );
    python
}

/// pyrtmp recording into `out`; the port it listens on.
fn pyrtmp(out: &Path) -> (ChildGuard, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/pyrtmp_record.py");
    let mut child = ChildGuard::spawn(Command::new(python()).arg(script).arg(out));
    let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("pyrtmp printed no port");
    let port = line.trim().parse().expect("a port");
    (child, port)
}

fn frames(path: &Path) -> (u64, u64) {
    wait_file_settled(path, Duration::from_secs(10));
    let probe = probe_file(path);
    (
        probe.stream("video").map_or(0, |s| s.1),
        probe.stream("audio").map_or(0, |s| s.1),
    )
}

#[test]
fn rsrtmpsink_records_every_frame_through_pyrtmp() {
    let logs: Arc<Mutex<Vec<String>>> = Default::default();
    {
        common::init();
        let l = logs.clone();
        gst::log::add_log_function(move |cat, level, _file, _func, _line, _obj, msg| {
            if cat.name() == "lsrtmp"
                && level == gst::DebugLevel::Info
                && let Some(m) = msg.get()
            {
                l.lock().unwrap().push(m.to_string());
            }
        });
        gst::log::set_threshold_for_name("lsrtmp", gst::DebugLevel::Info);
    }
    let dir = TempDir::new("pyrtmp");
    let out = dir.path().join("out.flv");
    let (_server, port) = pyrtmp(&out);
    // 90 video frames (3 s at 30 fps) and about 129 AAC frames, as fast as they come.
    let p = Publish::start(
        &av_flv_source(90, true, false),
        &format!("location=rtmp://127.0.0.1:{port}/live/key"),
    );
    let (r, _) = p.wait(Duration::from_secs(60));
    r.expect("publishing through pyrtmp");
    let audio_tags = p.stats().get::<u64>("audio-tags").unwrap();
    p.pipeline.set_state(gst::State::Null).unwrap();
    let (v, a) = frames(&out);
    assert_eq!(v, 90, "video frames");
    // The AAC sequence header is no frame.
    assert_eq!(a, audio_tags - 1, "audio frames");
    let logs = logs.lock().unwrap();
    assert!(
        logs.iter().any(|l| l
            .contains("chunk of type 1 on chunk stream 3 without a previous header: tolerated")),
        "{logs:?}"
    );
}

#[test]
fn ffmpeg_records_every_frame_through_pyrtmp() {
    // The baseline the issue names: ffmpeg is as liberal.
    let dir = TempDir::new("pyrtmp-ffmpeg");
    let input = dir.path().join("in.flv");
    ffmpeg_test_media(
        &input,
        "320x240",
        3,
        None,
        &["-preset", "ultrafast", "-f", "flv"],
    );
    let out = dir.path().join("out.flv");
    let (_server, port) = pyrtmp(&out);
    let (o, timed_out) = ChildGuard::spawn(Command::new("ffmpeg").args([
        "-v",
        "error",
        "-i",
        input.to_str().unwrap(),
        "-c",
        "copy",
        "-f",
        "flv",
        &format!("rtmp://127.0.0.1:{port}/live/key"),
    ]))
    .wait_output(Duration::from_secs(60));
    assert!(!timed_out && o.status.success(), "{o:?}");
    assert_eq!(frames(&out).0, 90);
}
