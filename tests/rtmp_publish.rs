//! rsrtmpsink publishing to real servers on 127.0.0.1: nginx-rtmp (recording what it receives)
//! and ffmpeg listening as an RTMP server; the recordings are checked with ffprobe.

mod common;

use std::process::Command;

use gst::prelude::*;
use std::time::Duration;

use common::rtmp::{
    Nginx, Publish, TempDir, av_flv_source, free_port, probe_file, wait_file_settled,
    wait_listening,
};
use common::{ChildGuard, init};

const FRAMES: u32 = 300;

fn u64_field(s: &gst::Structure, name: &str) -> u64 {
    s.get::<u64>(name)
        .unwrap_or_else(|e| panic!("stats field {name}: {e} in {s}"))
}

#[test]
fn publishes_h264_and_aac_to_nginx_rtmp() {
    let nginx = Nginx::start();
    let key = "sk_test_secret42";
    let p = Publish::start(
        &av_flv_source(FRAMES, true, false),
        &format!("location={} sync=false chunk-size=4096", nginx.url(key)),
    );
    let (r, _) = p.wait(Duration::from_secs(90));
    r.unwrap_or_else(|e| panic!("publishing failed: {e}\nnginx: {}", nginx.error_log()));
    let stats = p.stats();
    // Every frame went out; nothing was dropped; the server acknowledged some of it.
    // Frames, the sequence header, and flvmux's end-of-sequence tag.
    assert!(
        u64_field(&stats, "video-tags") > u64::from(FRAMES),
        "{stats}"
    );
    let audio_tags = u64_field(&stats, "audio-tags");
    assert!(audio_tags > 400, "{stats}");
    assert_eq!(u64_field(&stats, "drops"), 0, "{stats}");
    assert!(u64_field(&stats, "data-tags") >= 1, "onMetaData: {stats}");
    assert!(
        u64_field(&stats, "in-bytes-total") > 3073,
        "handshake and more: {stats}"
    );
    assert!(
        stats.get::<u32>("in-window-ack-size").unwrap() > 0,
        "nginx's window: {stats}"
    );
    assert!(u64_field(&stats, "out-bytes-total") > 100_000, "{stats}");
    assert_eq!(stats.get::<u32>("out-chunk-size").unwrap(), 4096);
    assert_eq!(
        stats.get::<u32>("in-chunk-size").unwrap(),
        4096,
        "nginx's chunk_size honoured: {stats}"
    );
    assert!(u64_field(&stats, "acks-received") > 0, "{stats}");
    assert!(stats.get::<bool>("publishing").unwrap());
    // Stopping sends deleteStream; nginx closes the recording.
    p.pipeline.set_state(gst::State::Null).unwrap();
    let rec = nginx.recording(key);
    wait_file_settled(&rec, Duration::from_secs(10));
    let probe = probe_file(&rec);
    assert_eq!(probe.stream("video"), Some(("h264", u64::from(FRAMES))));
    let (acodec, aframes) = probe.stream("audio").expect("audio stream");
    assert_eq!(acodec, "aac");
    // The sequence header is no frame.
    assert_eq!(aframes, audio_tags - 1);
    assert!(
        (9.5..10.6).contains(&probe.duration),
        "duration {}",
        probe.duration
    );
}

#[test]
fn publishes_every_frame_to_ffmpeg_listening() {
    init();
    let dir = TempDir::new("ffmpeg");
    let port = free_port();
    let out = dir.path().join("out.flv");
    let ffmpeg = ChildGuard::spawn(Command::new("ffmpeg").args([
        "-nostdin",
        "-loglevel",
        "error",
        "-listen",
        "1",
        "-i",
        &format!("rtmp://127.0.0.1:{port}/live/x"),
        "-c",
        "copy",
        "-y",
        &out.display().to_string(),
    ]));
    wait_listening(port, Duration::from_secs(10), "ffmpeg -listen");
    let p = Publish::start(
        &av_flv_source(FRAMES, true, false),
        &format!("location=rtmp://127.0.0.1:{port}/live/x sync=false"),
    );
    let (r, _) = p.wait(Duration::from_secs(90));
    r.expect("publishing to ffmpeg");
    let stats = p.stats();
    assert_eq!(u64_field(&stats, "drops"), 0, "{stats}");
    assert_eq!(
        stats.get::<u32>("out-chunk-size").unwrap(),
        128,
        "rtmp2sink's default"
    );
    p.pipeline.set_state(gst::State::Null).unwrap();
    let (output, timed_out) = ffmpeg.wait_output(Duration::from_secs(20));
    assert!(
        !timed_out,
        "ffmpeg did not finish: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let probe = probe_file(&out);
    assert_eq!(
        probe.stream("video"),
        Some(("h264", u64::from(FRAMES))),
        "ffmpeg: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (acodec, aframes) = probe.stream("audio").expect("audio stream");
    assert_eq!(acodec, "aac");
    assert_eq!(aframes, u64_field(&stats, "audio-tags") - 1);
}

#[test]
fn the_stream_key_stays_out_of_logs_and_messages() {
    init();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let sink_log = seen.clone();
    gst::log::add_log_function(move |cat, _level, _file, _function, _line, _obj, msg| {
        if cat.name() == "rsrtmpsink"
            && let Some(m) = msg.get()
        {
            sink_log.lock().unwrap().push(m.to_string());
        }
    });
    gst::log::set_threshold_for_name("rsrtmpsink", gst::DebugLevel::Log);
    let nginx = Nginx::start();
    let key = "sk_live_TOPSECRET";
    let p = Publish::start(
        &av_flv_source(30, false, false),
        &format!("location={} sync=false", nginx.url(key)),
    );
    let (r, _) = p.wait(Duration::from_secs(30));
    r.expect("publish");
    p.pipeline.set_state(gst::State::Null).unwrap();
    let logs = seen.lock().unwrap();
    assert!(
        logs.iter()
            .any(|l| l.contains("publishing to rtmp://127.0.0.1")),
        "{logs:?}"
    );
    assert!(logs.iter().all(|l| !l.contains("TOPSECRET")), "{logs:?}");
}
