//! rsrtmpsink keeps publishing when nginx-rtmp is killed and restarted: it reconnects with
//! backoff, announces each attempt, and the new recording starts at a keyframe with the codec
//! configuration; without a server to come back to it gives up with one error.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use gst::prelude::*;

use common::rtmp::{Nginx, Publish, av_flv_source, probe_file, wait_file_settled};

fn wait_publishing(p: &Publish, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !p.stats().get::<bool>("publishing").unwrap() {
        assert!(
            Instant::now() < deadline,
            "not publishing after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn names(messages: &[gst::Structure]) -> Vec<String> {
    messages.iter().map(|s| s.name().to_string()).collect()
}

/// The key_frame flag of the first video frame of a file.
fn first_video_frame_is_key(path: &std::path::Path) -> bool {
    let (out, timed_out) = common::run(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-read_intervals",
            "%+#1",
            "-show_entries",
            "frame=key_frame",
            "-of",
            "csv=p=0",
            &path.display().to_string(),
        ]),
        Duration::from_secs(20),
    );
    assert!(!timed_out);
    String::from_utf8_lossy(&out.stdout).trim() == "1"
}

#[test]
fn reconnects_when_nginx_restarts_and_resumes_at_a_keyframe() {
    let mut nginx = Nginx::start();
    let key = "blink";
    // 12 s of live video and audio.
    let p = Publish::start(
        &av_flv_source(360, true, true),
        &format!(
            "location={} reconnect-initial-delay=300 reconnect-attempts=5",
            nginx.url(key)
        ),
    );
    wait_publishing(&p, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    nginx.kill();
    let first = nginx.recording(key);
    let kept = first.with_file_name(format!("{key}-before.flv"));
    std::fs::rename(&first, &kept).expect("first recording");
    std::thread::sleep(Duration::from_millis(800));
    nginx.restart();
    let (r, messages) = p.wait(Duration::from_secs(40));
    r.unwrap_or_else(|e| panic!("no EOS after the restart: {e}\n{}", nginx.error_log()));
    let names = names(&messages);
    let attempts = names
        .iter()
        .filter(|n| *n == "rsrtmpsink-reconnect")
        .count();
    assert!(attempts >= 1, "{names:?}");
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "rsrtmpsink-reconnected")
            .count(),
        1,
        "{names:?}"
    );
    let reconnect = messages
        .iter()
        .find(|s| s.name() == "rsrtmpsink-reconnect")
        .unwrap();
    assert_eq!(reconnect.get::<u32>("attempt").unwrap(), 1);
    assert_eq!(reconnect.get::<u32>("max-attempts").unwrap(), 5);
    assert!(
        reconnect
            .get::<String>("reason")
            .unwrap()
            .contains("closed")
    );
    let stats = p.stats();
    assert_eq!(
        stats.get::<u64>("reconnects").unwrap(),
        attempts as u64,
        "{stats}"
    );
    p.pipeline.set_state(gst::State::Null).unwrap();

    // The recording after the restart: H.264 and AAC, starting at a keyframe, several seconds.
    let second = nginx.recording(key);
    wait_file_settled(&second, Duration::from_secs(10));
    let probe = probe_file(&second);
    let (vcodec, vframes) = probe.stream("video").expect("video after the restart");
    assert_eq!(vcodec, "h264");
    assert!(vframes >= 120, "{vframes} frames after the restart");
    assert_eq!(probe.stream("audio").map(|a| a.0), Some("aac"));
    assert!(first_video_frame_is_key(&second));
    // Before the kill: about 3 s.
    let before = probe_file(&kept);
    assert!(before.stream("video").unwrap().1 >= 60);
}

#[test]
fn gives_up_after_the_reconnect_limit() {
    let mut nginx = Nginx::start();
    let p = Publish::start(
        &av_flv_source(100_000, false, true),
        &format!(
            "location={} reconnect-initial-delay=100 reconnect-max-delay=200 reconnect-attempts=2 timeout=2",
            nginx.url("gone")
        ),
    );
    wait_publishing(&p, Duration::from_secs(10));
    nginx.kill();
    let start = Instant::now();
    let bus = p.pipeline.bus().unwrap();
    let mut attempts = 0;
    let error = loop {
        let msg = bus
            .timed_pop(gst::ClockTime::from_seconds(15))
            .expect("an error within 15 s");
        match msg.view() {
            gst::MessageView::Element(e)
                if e.structure()
                    .is_some_and(|s| s.name() == "rsrtmpsink-reconnect") =>
            {
                attempts += 1
            }
            gst::MessageView::Error(e) => break e.error(),
            gst::MessageView::Eos(_) => panic!("EOS instead of an error"),
            _ => {}
        }
    };
    assert_eq!(attempts, 2);
    assert!(error.matches(gst::ResourceError::Write), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("gave up after 2 reconnection attempts"),
        "{text}"
    );
    assert!(text.contains("refused"), "the last failure: {text}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// ffmpeg listening once on `port`, copying what it receives into `out` with the timestamps
/// exactly as they arrived (`-copyts`). `wait`: until it listens (not when a reconnecting
/// publisher may take the one connection it accepts, and with it the listening state, at once).
fn ffmpeg_listen(port: u16, out: &std::path::Path, wait: bool) -> common::ChildGuard {
    let child = common::rtmp::ffmpeg_listen(port, out, &["-copyts", "-f", "flv"]);
    if wait {
        common::rtmp::wait_listening(port, Duration::from_secs(10), "ffmpeg -listen");
    }
    child
}

/// The video packets' dts in seconds, in file order.
fn video_dts(path: &std::path::Path) -> Vec<f64> {
    let (out, timed_out) = common::run(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=dts_time",
            "-of",
            "csv=p=0",
            &path.display().to_string(),
        ]),
        Duration::from_secs(20),
    );
    assert!(!timed_out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect()
}

/// Publishes to ffmpeg, ends that ffmpeg (SIGINT: it finishes its file), waits 2 s, starts a
/// new one on the same port and lets rsrtmpsink reconnect. The queue holds about 0.6 s of the
/// stream, so most of the outage is dropped. Returns the gap between the last
/// video timestamp received by the first ffmpeg and the first one received by the second.
fn reconnection_gap(props: &str) -> f64 {
    let dir = common::rtmp::TempDir::new("continue-ts");
    let port = common::rtmp::free_port();
    let (a, b) = (dir.path().join("a.flv"), dir.path().join("b.flv"));
    let first = ffmpeg_listen(port, &a, true);
    let p = Publish::start(
        &av_flv_source(300, true, true),
        &format!(
            "location=rtmp://127.0.0.1:{port}/live/x reconnect-initial-delay=300 \
             reconnect-max-delay=300 reconnect-attempts=30 queue-size=65536 {props}"
        ),
    );
    wait_publishing(&p, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let pid = first.0.as_ref().unwrap().id().to_string();
    let _ = common::run(
        Command::new("kill").args(["-INT", &pid]),
        Duration::from_secs(5),
    );
    let (_, timed_out) = first.wait_output(Duration::from_secs(10));
    assert!(!timed_out, "the first ffmpeg did not end on SIGINT");
    std::thread::sleep(Duration::from_secs(2));
    let second = ffmpeg_listen(port, &b, false);
    let (r, messages) = p.wait(Duration::from_secs(40));
    r.expect("EOS after the reconnection");
    assert!(
        names(&messages).contains(&"rsrtmpsink-reconnected".to_owned()),
        "{:?}",
        names(&messages)
    );
    p.pipeline.set_state(gst::State::Null).unwrap();
    let (_, timed_out) = second.wait_output(Duration::from_secs(20));
    assert!(!timed_out, "the second ffmpeg did not finish");
    let (before, after) = (video_dts(&a), video_dts(&b));
    assert!(
        before.len() >= 30 && after.len() >= 30,
        "{before:?} {after:?}"
    );
    assert!(
        after.windows(2).all(|w| w[0] <= w[1]),
        "timestamps go back: {after:?}"
    );
    let gap = after[0] - before.last().unwrap();
    eprintln!("{props:?}: gap {gap} s");
    gap
}

#[test]
fn continue_timestamps_removes_the_outage_from_the_timeline() {
    // Without: the pipeline's timestamps, so what the queue dropped of the 2 s outage is a gap.
    let gap = reconnection_gap("");
    assert!(gap > 1.0, "gap {gap} s without continue-timestamps");
    // With: the first frame after the reconnection follows the last one received closely (what
    // ffmpeg had not yet received when it stopped is lost, a few frames at most).
    let gap = reconnection_gap("continue-timestamps=true");
    assert!(
        (0.0..0.3).contains(&gap),
        "gap {gap} s with continue-timestamps"
    );
}
