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
