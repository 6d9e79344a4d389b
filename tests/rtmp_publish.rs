//! rsrtmpsink publishing to real servers on 127.0.0.1: nginx-rtmp (recording what it receives)
//! and ffmpeg listening as an RTMP server; the recordings are checked with ffprobe.

mod common;

use gst::prelude::*;
use std::time::Duration;

use common::init;
use common::rtmp::{
    Nginx, Publish, TempDir, av_flv_source, ffmpeg_listen, free_port, probe_file,
    wait_file_settled, wait_listening,
};

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
    let ffmpeg = ffmpeg_listen(port, &out, &[]);
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

/// Live 320x240 snow (incompressible) at ~1.5 Mbit/s and AAC, `seconds` long.
fn fast_live_source(seconds: u32) -> String {
    let frames = seconds * 30;
    let buffers = u64::from(frames) * 44100 / 30 / 1024;
    format!(
        "videotestsrc is-live=true pattern=snow num-buffers={frames} \
         ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=1500 \
         ! h264parse ! queue ! m. \
         audiotestsrc is-live=true num-buffers={buffers} samplesperbuffer=1024 \
         ! audio/x-raw,rate=44100,channels=2 ! audioconvert ! voaacenc ! aacparse ! queue ! m. \
         flvmux streamable=true name=m ! "
    )
}

/// Bytes per second sent from 1 s to 4 s after publishing started (out-bytes-total sampled
/// every 50 ms), and the stats at the end of the window.
fn measured_rate(p: &Publish) -> (f64, gst::Structure) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.stats().get::<bool>("publishing").unwrap() {
        assert!(std::time::Instant::now() < deadline, "not publishing");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let t0 = std::time::Instant::now();
    let b0 = u64_field(&p.stats(), "out-bytes-total");
    std::thread::sleep(Duration::from_secs(3));
    let stats = p.stats();
    let b1 = u64_field(&stats, "out-bytes-total");
    ((b1 - b0) as f64 / t0.elapsed().as_secs_f64(), stats)
}

#[test]
fn peak_kbps_limits_the_send_rate_and_the_queue_drops_the_excess() {
    let nginx = Nginx::start();
    // 300 kbit/s = 37500 B/s for a ~1.6 Mbit/s stream.
    let p = Publish::start(
        &fast_live_source(6),
        &format!(
            "location={} peak-kbps=300 queue-size=150000",
            nginx.url("limited")
        ),
    );
    assert_eq!(p.sink.property::<u32>("peak-kbps"), 300);
    let (rate, stats) = measured_rate(&p);
    eprintln!("peak-kbps=300: {rate:.0} B/s");
    assert!(
        (rate - 37_500.0).abs() < 3_750.0,
        "measured {rate:.0} B/s for a 37500 B/s limit; {stats}"
    );
    // The limit made the queue overflow: its drop policy took over.
    assert!(u64_field(&stats, "drops") > 0, "{stats}");
    let (r, _) = p.wait(Duration::from_secs(30));
    r.unwrap_or_else(|e| panic!("publishing failed: {e}"));

    // Without the limit the same stream goes out at its own rate, nothing dropped.
    let p = Publish::start(
        &fast_live_source(6),
        &format!("location={} queue-size=150000", nginx.url("free")),
    );
    let (rate, stats) = measured_rate(&p);
    eprintln!("no limit: {rate:.0} B/s");
    assert!(
        rate > 3.0 * 37_500.0,
        "measured {rate:.0} B/s without a limit; {stats}"
    );
    assert_eq!(u64_field(&stats, "drops"), 0, "{stats}");
    // Changed while playing: the new limit applies at once.
    p.sink.set_property("peak-kbps", 300u32);
    std::thread::sleep(Duration::from_millis(500));
    let b0 = u64_field(&p.stats(), "out-bytes-total");
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let rate = (u64_field(&p.stats(), "out-bytes-total") - b0) as f64 / t0.elapsed().as_secs_f64();
    eprintln!("peak-kbps=300 set while playing: {rate:.0} B/s");
    assert!(
        (rate - 37_500.0).abs() < 3_750.0,
        "measured {rate:.0} B/s after setting peak-kbps=300 while playing"
    );
    let (r, _) = p.wait(Duration::from_secs(30));
    r.unwrap_or_else(|e| panic!("publishing failed: {e}"));
}
