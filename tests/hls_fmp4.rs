//! fMP4/CMAF HLS (`segment-format=fmp4`) read by readers we did not write: ffprobe reads every
//! segment behind its init segment (codecs, sample entry tags, frame counts, durations against
//! EXTINF within a frame, a timeline without gaps), the playlist as a whole (also AES-128
//! encrypted), and GStreamer's own HLS demuxers decode it (hlsdemux from files and from the
//! element's server while live, hlsdemux2 from the server). A change of format mid-stream gets a new init segment and a discontinuity.
//! (hls.js in Chromium plays it too: tests/hls_browser.rs.)
//!
//! No MP4 structure checker is packaged for Debian 12 (no gpac/MP4Box, no bento4 mp4dump), so
//! the box layout is checked by the unit tests in src/hls/fmp4/ and by these readers.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::hls::*;
use gst::prelude::*;

const FRAME: f64 = 1.0 / 30.0;

/// A stream as ffprobe sees it.
#[derive(Debug, Clone, PartialEq)]
struct Stream {
    kind: String,
    codec: String,
    tag: String,
    profile: String,
}

/// ffprobe's streams and packets (stream index, pts in s, duration in s) of `input`.
fn probe(input: &str, extra: &[&str]) -> (Vec<Stream>, Vec<(usize, f64, f64)>) {
    let (out, timed_out) = common::run(
        std::process::Command::new("ffprobe")
            .args(["-v", "error"])
            .args(extra)
            .args([
                "-show_entries",
                "stream=index,codec_type,codec_name,codec_tag_string,profile:\
                 packet=stream_index,pts_time,duration_time",
                "-of",
                "compact=p=0",
                input,
            ]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!timed_out, "ffprobe {input} timed out");
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffprobe {input}: {stderr}"
    );
    let mut streams = Vec::new();
    let mut packets = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: std::collections::HashMap<&str, &str> =
            line.split('|').filter_map(|f| f.split_once('=')).collect();
        if let Some(i) = fields.get("stream_index") {
            let num = |k: &str| {
                fields
                    .get(k)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            packets.push((i.parse().unwrap(), num("pts_time"), num("duration_time")));
        } else if fields.contains_key("codec_type") {
            // The playlist's program lists the same streams again.
            let index: usize = fields
                .get("index")
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            if index < streams.len() {
                continue;
            }
            let get = |k: &str| fields.get(k).copied().unwrap_or("").to_owned();
            streams.push(Stream {
                kind: get("codec_type"),
                codec: get("codec_name"),
                tag: get("codec_tag_string"),
                profile: get("profile"),
            });
        }
    }
    (streams, packets)
}

/// Checks every listed segment, read behind the init segment the playlist maps it to: the
/// expected (codec, tag) per stream, video frames one frame apart covering EXTINF within a frame,
/// and each segment's video starting where the previous one ended. Returns the video frames counted.
fn assert_segments(dir: &Path, expected: &[(&str, &str)]) -> usize {
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    assert_eq!(playlist.version, Some(6), "EXT-X-MAP needs version 6");
    let mut map = None;
    let mut frames = 0;
    let mut next_pts: Option<f64> = None;
    for (n, s) in playlist.segments.iter().enumerate() {
        if let Some(m) = &s.map {
            map = Some(m.uri.clone());
        }
        let init = map.as_ref().expect("an EXT-X-MAP before the first segment");
        assert!(s.uri.ends_with(".m4s"), "{}", s.uri);
        let mut joined = std::fs::read(dir.join(init)).unwrap();
        assert_eq!(&joined[4..8], b"ftyp", "{init}");
        let data = std::fs::read(dir.join(&s.uri)).unwrap();
        assert_eq!(&data[4..8], b"styp", "{}", s.uri);
        joined.extend_from_slice(&data);
        let path = dir.join(format!("joined{n}.mp4"));
        std::fs::write(&path, joined).unwrap();
        let (streams, packets) = probe(&path.to_string_lossy(), &[]);
        std::fs::remove_file(&path).unwrap();
        let got: Vec<(&str, &str)> = streams
            .iter()
            .map(|s| (s.codec.as_str(), s.tag.as_str()))
            .collect();
        assert_eq!(got, expected, "{}", s.uri);
        let video: Vec<&(usize, f64, f64)> = packets.iter().filter(|p| p.0 == 0).collect();
        let audio = packets.iter().filter(|p| p.0 == 1).count();
        assert!(expected.len() < 2 || audio > 0, "{}: no audio", s.uri);
        // Presentation times one frame apart: the trun's durations and composition offsets.
        let mut pts: Vec<f64> = video.iter().map(|p| p.1).collect();
        pts.sort_by(f64::total_cmp);
        for w in pts.windows(2) {
            assert!(
                (w[1] - w[0] - FRAME).abs() < 1e-3,
                "{}: frames at {} and {}",
                s.uri,
                w[0],
                w[1]
            );
        }
        let first = pts.first().copied().unwrap_or(f64::NAN);
        let covered = video.len() as f64 * FRAME;
        assert!(
            (covered - f64::from(s.duration)).abs() <= FRAME + 1e-3,
            "{}: {} frames ({covered:.3} s) but EXTINF {}",
            s.uri,
            video.len(),
            s.duration
        );
        if let Some(expected_start) = next_pts {
            assert!(
                (first - expected_start).abs() < 1e-3,
                "{}: video starts at {first}, the previous segment ended at {expected_start}",
                s.uri
            );
        }
        next_pts = Some(first + covered);
        frames += video.len();
    }
    frames
}

/// Video frames GStreamer's HLS demuxer (hlsdemux, via uridecodebin) decodes from `uri`,
/// stopping at `enough` or after `timeout`.
fn gst_decoded_frames(uri: &str, enough: u64, timeout: Duration) -> u64 {
    decoded_frames_with("uridecodebin", uri, enough, timeout)
}

/// [`gst_decoded_frames`] through `bin` (`uridecodebin3` uses hlsdemux2, for http(s) only).
fn decoded_frames_with(bin: &str, uri: &str, enough: u64, timeout: Duration) -> u64 {
    let pipeline = gst::parse::launch(&format!(
        "{bin} uri={uri} caps=video/x-raw ! fakesink name=v sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    pipeline
        .by_name("v")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    let bus = pipeline.bus().unwrap();
    let deadline = Instant::now() + timeout;
    let mut error = None;
    while Instant::now() < deadline && count.load(std::sync::atomic::Ordering::Relaxed) < enough {
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) {
            if let gst::MessageView::Error(e) = msg.view() {
                error = Some(format!("{} ({:?})", e.error(), e.debug()));
            }
            break;
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(error.is_none(), "GStreamer could not play {uri}: {error:?}");
    count.load(std::sync::atomic::Ordering::Relaxed)
}

fn files_named(dir: &TempDir) -> Vec<String> {
    let mut f = dir.files();
    f.retain(|n| !n.starts_with("joined"));
    f
}

#[test]
fn h264_and_aac_segments_read_in_ffprobe_and_gstreamer() {
    let dir = TempDir::new("fmp4-avc");
    run_sink(
        &format!(
            "location={} segment-format=fmp4 target-duration=2 playlist-type=vod",
            dir.str()
        ),
        // B-frames: composition offsets in the trun.
        &format!(
            "{}video {}audio",
            video(150, 30).replace("x264enc", "x264enc bframes=2 b-adapt=false"),
            audio(5.0)
        ),
    );
    let files = files_named(&dir);
    assert_eq!(
        files,
        [
            "init00000.mp4",
            "playlist.m3u8",
            "segment00000.m4s",
            "segment00001.m4s",
            "segment00002.m4s"
        ]
    );
    let frames = assert_segments(dir.path(), &[("h264", "avc1"), ("aac", "mp4a")]);
    assert_eq!(frames, 150);
    // The playlist as a whole (ffmpeg's HLS demuxer): every frame, both streams.
    let (streams, packets) = probe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert_eq!(packets.iter().filter(|p| p.0 == 0).count(), 150);
    // 1024 samples at 44.1 kHz a packet.
    let audio_s = packets.iter().filter(|p| p.0 == 1).count() as f64 * 1024.0 / 44100.0;
    assert!((audio_s - 5.0).abs() < 0.1, "audio covers {audio_s} s");
    let uri = format!("file://{}", dir.join("playlist.m3u8").display());
    assert_eq!(gst_decoded_frames(&uri, 150, Duration::from_secs(30)), 150);
}

#[test]
fn h265_and_opus_segments_read_in_ffprobe_and_gstreamer() {
    let dir = TempDir::new("fmp4-hevc");
    run_sink(
        &format!(
            "location={} segment-format=fmp4 target-duration=1 playlist-type=vod",
            dir.str()
        ),
        "videotestsrc num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x265enc speed-preset=ultrafast key-int-max=15 ! h265parse ! h.video \
         audiotestsrc num-buffers=150 samplesperbuffer=960 ! audio/x-raw,rate=48000 ! opusenc \
         ! h.audio",
    );
    let frames = assert_segments(dir.path(), &[("hevc", "hvc1"), ("opus", "Opus")]);
    assert_eq!(frames, 90);
    let (streams, _) = probe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    assert_eq!(streams[0].profile, "Main", "hvcC from the SPS: {streams:?}");
    let uri = format!("file://{}", dir.join("playlist.m3u8").display());
    assert_eq!(gst_decoded_frames(&uri, 90, Duration::from_secs(30)), 90);
}

/// AV1 (libaom's av1enc): av1C made from the sequence header.
#[test]
fn av1_segments_read_in_ffprobe_and_gstreamer() {
    let dir = TempDir::new("fmp4-av1");
    run_sink(
        &format!(
            "location={} segment-format=fmp4 target-duration=1 playlist-type=vod",
            dir.str()
        ),
        "videotestsrc num-buffers=60 ! video/x-raw,width=160,height=120,framerate=30/1,format=I420 \
         ! av1enc cpu-used=8 keyframe-max-dist=30 ! av1parse ! h.video",
    );
    let frames = assert_segments(dir.path(), &[("av1", "av01")]);
    assert_eq!(frames, 60);
    let (streams, _) = probe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    assert_eq!(streams[0].profile, "Main", "{streams:?}");
    let uri = format!("file://{}", dir.join("playlist.m3u8").display());
    assert_eq!(gst_decoded_frames(&uri, 60, Duration::from_secs(30)), 60);
}

/// Audio only, AAC in ADTS (headers removed, AudioSpecificConfig made from them): cut at any
/// frame once the target is reached.
#[test]
fn adts_audio_only_is_cut_at_frames() {
    let dir = TempDir::new("fmp4-adts");
    run_sink(
        &format!(
            "location={} segment-format=fmp4 target-duration=1 playlist-type=vod",
            dir.str()
        ),
        "audiotestsrc num-buffers=100 samplesperbuffer=1024 ! audio/x-raw,rate=44100 ! voaacenc \
         ! aacparse ! audio/mpeg,stream-format=adts ! h.audio",
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    assert_eq!(playlist.segments.len(), 3);
    let (streams, packets) = probe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    assert_eq!(
        (streams[0].codec.as_str(), streams[0].tag.as_str()),
        ("aac", "mp4a")
    );
    assert_eq!(packets.len(), 100);
    let listed: f32 = playlist.segments.iter().map(|s| s.duration).sum();
    let media = 100.0 * 1024.0 / 44100.0;
    assert!(
        (listed - media).abs() < 0.03,
        "EXTINF sum {listed}, media {media}"
    );
}

/// MPEG-TS cannot carry AV1: a clear error that names the way out.
#[test]
fn av1_into_mpeg_ts_is_an_error_naming_fmp4() {
    let dir = TempDir::new("fmp4-av1-ts");
    let (p, _) = pipeline(
        &format!("location={}", dir.str()),
        "videotestsrc num-buffers=5 ! video/x-raw,width=160,height=120,format=I420 \
         ! av1enc cpu-used=8 ! av1parse ! h.video",
    );
    let err = run_to_end(&p, Duration::from_secs(60)).expect_err("AV1 into TS must fail");
    assert!(err.contains("segment-format=fmp4"), "{err}");
}

#[test]
fn aes_128_encrypts_media_segments_and_leaves_the_init_segment_clear() {
    let dir = TempDir::new("fmp4-aes");
    run_sink(
        &format!(
            "location={} segment-format=fmp4 target-duration=2 playlist-type=vod \
             encryption=aes-128 key-rotation=2",
            dir.str()
        ),
        &format!("{}video {}audio", video(150, 30), audio(5.0)),
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    for s in &playlist.segments {
        let data = std::fs::read(dir.join(&s.uri)).unwrap();
        assert_eq!(data.len() % 16, 0, "{}: whole AES-128 blocks", s.uri);
        assert_ne!(&data[4..8], b"styp", "{} is not encrypted", s.uri);
    }
    let init = std::fs::read(dir.join("init00000.mp4")).unwrap();
    assert_eq!(&init[4..8], b"ftyp", "the init segment stays in clear");
    let (streams, packets) = probe(
        &dir.join("playlist.m3u8").to_string_lossy(),
        &["-allowed_extensions", "ALL"],
    );
    let codecs: Vec<&str> = streams.iter().map(|s| s.codec.as_str()).collect();
    assert_eq!(codecs, ["h264", "aac"]);
    assert_eq!(packets.iter().filter(|p| p.0 == 0).count(), 150);
}

#[test]
fn gstreamer_plays_a_live_fmp4_stream_from_the_built_in_server() {
    let live = serve_live(
        "fmp4-live",
        "segment-format=fmp4",
        &format!(
            "{LIVE_VIDEO}video audiotestsrc is-live=true ! audioconvert ! voaacenc ! aacparse \
             ! h.audio"
        ),
    );
    let playlist = read_playlist(&live.dir.join("playlist.m3u8"));
    assert!(playlist.segments[0].map.is_some());
    let (status, headers, body) = http_request(live.port, "GET", "/init00000.mp4");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("video/mp4"));
    assert_eq!(&body[4..8], b"ftyp");
    let uri = format!("http://127.0.0.1:{}/playlist.m3u8", live.port);
    let frames = gst_decoded_frames(&uri, 60, Duration::from_secs(30));
    assert!(frames >= 60, "only {frames} frames decoded from {uri}");
    // The newer demuxer too (hlsdemux2, what playbin3 uses).
    let frames = decoded_frames_with("uridecodebin3", &uri, 60, Duration::from_secs(30));
    assert!(
        frames >= 60,
        "hlsdemux2: only {frames} frames decoded from {uri}"
    );
    // ffmpeg reads it over HTTP too.
    let (streams, _) = probe(&uri, &["-read_intervals", "%+1"]);
    assert_eq!(streams.len(), 2, "{streams:?}");
}

#[test]
fn a_format_change_writes_a_new_init_segment_after_a_discontinuity() {
    let dir = TempDir::new("fmp4-change");
    let (pipeline, _) = pipeline(
        &format!(
            "location={} segment-format=fmp4 target-duration=1 playlist-type=event",
            dir.str()
        ),
        "videotestsrc is-live=true ! video/x-raw,framerate=30/1,format=I420 ! videoscale \
         ! capsfilter name=cf caps=video/x-raw,width=320,height=240 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h.video",
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let path = dir.join("playlist.m3u8");
    assert!(wait_for(Duration::from_secs(20), || path.exists()
        && read_playlist(&path).segments.len() >= 2));
    pipeline.by_name("cf").unwrap().set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("width", 640)
            .field("height", 480)
            .build(),
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            let p = read_playlist(&path);
            p.segments.iter().filter(|s| s.map.is_some()).count() >= 2
                && p.segments
                    .iter()
                    .rev()
                    .take_while(|s| s.map.is_none())
                    .count()
                    >= 2
        }),
        "no second init segment: {:?}",
        read_playlist(&path)
    );
    pipeline.send_event(gst::event::Eos::new());
    let bus = pipeline.bus().unwrap();
    assert!(
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos])
            .is_some()
    );
    pipeline.set_state(gst::State::Null).unwrap();
    let playlist = read_playlist(&path);
    let changed = playlist
        .segments
        .iter()
        .position(|s| s.map.is_some() && s.map.as_ref().unwrap().uri != "init00000.mp4")
        .expect("a second map");
    assert!(
        playlist.segments[changed].discontinuity,
        "the first segment of the new format is a discontinuity"
    );
    let new_init = &playlist.segments[changed].map.as_ref().unwrap().uri;
    assert_eq!(*new_init, format!("init{changed:05}.mp4"));
    // Each side reads with its own init segment, at its own size.
    let sizes: Vec<String> = [0, changed]
        .iter()
        .map(|&n| {
            let init = if n == 0 { "init00000.mp4" } else { new_init };
            let mut data = std::fs::read(dir.join(init)).unwrap();
            data.extend(std::fs::read(dir.join(&playlist.segments[n].uri)).unwrap());
            let p = dir.join("joined.mp4");
            std::fs::write(&p, data).unwrap();
            let (out, _) = common::run(
                std::process::Command::new("ffprobe").args([
                    "-v",
                    "error",
                    "-show_entries",
                    "stream=width,height",
                    "-of",
                    "csv=p=0",
                    &p.to_string_lossy(),
                ]),
                Duration::from_secs(30),
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .collect();
    assert_eq!(sizes, ["320,240", "640,480"]);
}
