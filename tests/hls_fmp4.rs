//! fMP4/CMAF HLS (`segment-format=fmp4`) read by readers we did not write: ffprobe reads every
//! segment behind its init segment (codecs, sample entry tags, frame counts, durations against
//! EXTINF within a frame, a timeline without gaps), the playlist as a whole (also AES-128
//! encrypted), and GStreamer's own HLS demuxers decode it (hlsdemux from files and from the
//! element's server while live, hlsdemux2 from the server). A change of format mid-stream gets a new init segment and a discontinuity.
//! (hls.js in Chromium plays it too: tests/hls_browser.rs.)
//!
//! The box structure is checked with mp4box.js (GPAC's MP4 parser in JavaScript, from npm, run by
//! Node: `bash .ci/deps` puts it under target/test-assets/mp4box; Debian 12 packages no
//! gpac/MP4Box and no bento4 mp4dump) through tests/fmp4_check.js, for H.264 + AAC and H.265 +
//! Opus, muxed and as multivariant renditions, and for LL-HLS segments made of parts: ftyp + moov
//! with mvex/trex, styp + moof + mdat segments (a moof + mdat per part), mfhd sequence numbers
//! strictly increasing, tfdt continuous across segments, trun sample counts equal to the frames
//! sent and to ffprobe's, trun durations equal to EXTINF, trun data offsets tiling the mdat
//! payload, and the codec strings mp4box.js derives from the sample entries equal to the
//! multivariant playlist's CODECS (constraint flags included). The checks are shown to fail on a
//! segment with a moved tfdt, a repeated sequence number or a data offset outside the mdat. The
//! unit tests in src/hls/fmp4/ check each box.

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

/// Where `.ci/deps` unpacks the mp4box npm package (mp4box.js, GPAC's MP4 parser in JavaScript).
const MP4BOX_JS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/test-assets/mp4box/dist/mp4box.all.cjs"
);
/// The script that has mp4box.js parse the segments and prints what it found as JSON.
const FMP4_CHECK_JS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fmp4_check.js");

/// Just enough JSON to read tests/fmp4_check.js's summary (no JSON crate among the dependencies).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Json {
        let b = text.as_bytes();
        let mut at = 0;
        let v = Json::value(b, &mut at);
        Json::skip_ws(b, &mut at);
        assert_eq!(at, b.len(), "trailing data after the JSON");
        v
    }

    fn skip_ws(b: &[u8], at: &mut usize) {
        while *at < b.len() && b[*at].is_ascii_whitespace() {
            *at += 1;
        }
    }

    fn value(b: &[u8], at: &mut usize) -> Json {
        Json::skip_ws(b, at);
        match b[*at] {
            b'{' => {
                *at += 1;
                let mut fields = Vec::new();
                loop {
                    Json::skip_ws(b, at);
                    if b[*at] == b'}' {
                        *at += 1;
                        return Json::Obj(fields);
                    }
                    if b[*at] == b',' {
                        *at += 1;
                        continue;
                    }
                    let Json::Str(key) = Json::value(b, at) else {
                        panic!("object key at {at}")
                    };
                    Json::skip_ws(b, at);
                    assert_eq!(b[*at], b':', "':' at {at}");
                    *at += 1;
                    fields.push((key, Json::value(b, at)));
                }
            }
            b'[' => {
                *at += 1;
                let mut items = Vec::new();
                loop {
                    Json::skip_ws(b, at);
                    if b[*at] == b']' {
                        *at += 1;
                        return Json::Arr(items);
                    }
                    if b[*at] == b',' {
                        *at += 1;
                        continue;
                    }
                    items.push(Json::value(b, at));
                }
            }
            b'"' => {
                *at += 1;
                let mut s = String::new();
                loop {
                    match b[*at] {
                        b'"' => {
                            *at += 1;
                            return Json::Str(s);
                        }
                        b'\\' => {
                            *at += 2;
                            match b[*at - 1] {
                                b'n' => s.push('\n'),
                                b't' => s.push('\t'),
                                b'u' => {
                                    let hex = std::str::from_utf8(&b[*at..*at + 4]).unwrap();
                                    let c = u32::from_str_radix(hex, 16).unwrap();
                                    s.push(char::from_u32(c).unwrap_or('?'));
                                    *at += 4;
                                }
                                c => s.push(char::from(c)),
                            }
                        }
                        _ => {
                            let start = *at;
                            while b[*at] != b'"' && b[*at] != b'\\' {
                                *at += 1;
                            }
                            s.push_str(std::str::from_utf8(&b[start..*at]).unwrap());
                        }
                    }
                }
            }
            b't' | b'f' | b'n' => {
                let word: String = b[*at..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .map(|&c| char::from(c))
                    .collect();
                *at += word.len();
                match word.as_str() {
                    "true" => Json::Bool(true),
                    "false" => Json::Bool(false),
                    "null" => Json::Null,
                    w => panic!("JSON word {w}"),
                }
            }
            _ => {
                let start = *at;
                while *at < b.len() && b"+-.eE0123456789".contains(&b[*at]) {
                    *at += 1;
                }
                let n = std::str::from_utf8(&b[start..*at]).unwrap();
                Json::Num(n.parse().unwrap_or_else(|_| panic!("JSON number {n:?}")))
            }
        }
    }

    /// The field `key` of an object (Null when absent).
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(fields) => fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or(&Json::Null),
            _ => &Json::Null,
        }
    }

    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(items) => items,
            _ => &[],
        }
    }

    fn num(&self) -> f64 {
        match self {
            Json::Num(n) => *n,
            other => panic!("not a number: {other:?}"),
        }
    }

    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    fn is_true(&self) -> bool {
        *self == Json::Bool(true)
    }
}

/// A track as mp4box.js read it: its init segment's codec string, handler and timescale, and the
/// samples the fragments hold.
#[derive(Debug)]
struct Mp4Track {
    codec: String,
    handler: String,
    samples: usize,
}

/// Runs tests/fmp4_check.js (mp4box.js) over the init segment and segments of the media playlist
/// `name` in `dir` (one init segment) and returns its summary.
fn mp4box_summary(dir: &Path, name: &str) -> (m3u8_rs::MediaPlaylist, Json) {
    assert!(
        Path::new(MP4BOX_JS).exists(),
        "{MP4BOX_JS} is missing: run `bash .ci/deps`"
    );
    let playlist = read_playlist(&dir.join(name));
    let init = playlist.segments[0]
        .map
        .as_ref()
        .expect("EXT-X-MAP")
        .uri
        .clone();
    assert!(
        playlist.segments.iter().skip(1).all(|s| s.map.is_none()),
        "one init segment"
    );
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(dir).arg(FMP4_CHECK_JS).arg(&init);
    for s in &playlist.segments {
        cmd.arg(&s.uri);
    }
    let (out, timed_out) = common::run(&mut cmd, Duration::from_secs(60));
    assert!(!timed_out, "fmp4_check.js timed out");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fmp4_check.js: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    (playlist, Json::parse(&stdout))
}

/// Asserts the structure mp4box.js found in the fMP4 output of media playlist `name`: an init
/// segment of ftyp + moov with mvex and a trex per trak (no samples in the moov); media segments
/// of styp + moof + mdat (a moof + mdat per LL-HLS part) whose mfhd sequence numbers strictly
/// increase; per track a tfdt that
/// continues where the previous fragment's trun durations ended (within one sample); trun data
/// offsets (relative to the moof, default-base-is-moof) that tile the mdat payload exactly; the
/// video (or only) track's trun durations summing to EXTINF within a frame; the samples
/// mp4box.js reads from all fragments equal to the truns'. Returns the tracks.
fn assert_mp4box_structure(dir: &Path, name: &str) -> Vec<Mp4Track> {
    let (playlist, summary) = mp4box_summary(dir, name);
    let problems = summary.get("problems").arr();
    assert!(problems.is_empty(), "mp4box.js: {problems:?}");
    let init = summary.get("init");
    let boxes: Vec<&str> = init.get("boxes").arr().iter().map(Json::str).collect();
    assert_eq!(boxes, ["ftyp", "moov"], "{name}: init segment");
    assert!(!init.get("ftyp").get("major").str().is_empty());
    let moov = init.get("moov");
    assert!(moov.get("mvex").is_true(), "{name}: no mvex");
    let tracks = moov.get("tracks").arr();
    assert!(!tracks.is_empty(), "{name}: no trak");
    let ids: Vec<f64> = tracks.iter().map(|t| t.get("id").num()).collect();
    let trex: Vec<f64> = moov
        .get("trex")
        .arr()
        .iter()
        .map(|t| t.get("track_id").num())
        .collect();
    assert_eq!(trex, ids, "{name}: a trex per trak");
    for t in tracks {
        assert_eq!(
            t.get("stbl_samples").num(),
            0.0,
            "{name}: samples in the moov"
        );
        assert!(t.get("timescale").num() > 0.0);
    }
    let cut_on = tracks
        .iter()
        .position(|t| t.get("handler").str() == "vide")
        .unwrap_or(0);

    let segments = summary.get("segments").arr();
    assert_eq!(segments.len(), playlist.segments.len());
    let mut last_sequence = 0.0;
    // Per track: where the next fragment's tfdt must be, samples and one sample's duration.
    let mut next_tfdt: Vec<Option<f64>> = vec![None; tracks.len()];
    let mut samples = vec![0usize; tracks.len()];
    for (segment, listed) in segments.iter().zip(&playlist.segments) {
        let file = segment.get("file").str();
        let types: Vec<&str> = segment
            .get("boxes")
            .arr()
            .iter()
            .map(|b| b.get("type").str())
            .collect();
        // One fragment, or one per LL-HLS part.
        assert!(
            types.len() >= 3
                && types[0] == "styp"
                && types[1..].chunks(2).all(|c| c == ["moof", "mdat"]),
            "{file}: {types:?}"
        );
        assert!(!segment.get("styp").get("major").str().is_empty());
        let mdats = segment.get("mdats").arr();
        let mut cut_on_duration = 0.0;
        for (moof, mdat) in segment.get("moofs").arr().iter().zip(mdats) {
            let sequence = moof.get("sequence_number").num();
            assert!(
                sequence > last_sequence,
                "{file}: mfhd sequence number {sequence} after {last_sequence}"
            );
            last_sequence = sequence;
            let mut ranges = Vec::new();
            for traf in moof.get("trafs").arr() {
                let id = traf.get("track_id").num();
                let t = ids.iter().position(|&i| i == id).expect("traf of a trak");
                assert!(traf.get("default_base_is_moof").is_true(), "{file}");
                let tfdt = traf.get("base_media_decode_time").num();
                let count = traf.get("samples").num();
                let duration = traf.get("duration").num();
                assert!(count > 0.0, "{file}: empty traf");
                let one_sample = duration / count;
                if let Some(expected) = next_tfdt[t] {
                    assert!(
                        (tfdt - expected).abs() <= one_sample,
                        "{file}: track {id} tfdt {tfdt}, the previous fragment ended at {expected}"
                    );
                }
                next_tfdt[t] = Some(tfdt + duration);
                samples[t] += count as usize;
                if t == cut_on {
                    cut_on_duration += duration / tracks[t].get("timescale").num();
                }
                assert!(
                    traf.get("inside_mdat").is_true(),
                    "{file}: track {id}'s sample data outside the mdat: {traf:?}"
                );
                for run in traf.get("truns").arr() {
                    ranges.push((run.get("data_start").num(), run.get("data_end").num()));
                }
            }
            // The sample data tiles the mdat payload: nothing outside, overlapping or unused.
            ranges.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut at = mdat.get("start").num();
            for (start, end) in ranges {
                assert_eq!(start, at, "{file}: sample data not contiguous in the mdat");
                at = end;
            }
            assert_eq!(at, mdat.get("end").num(), "{file}: mdat bytes unused");
        }
        assert!(
            (cut_on_duration - f64::from(listed.duration)).abs() <= FRAME + 1e-3,
            "{file}: track {} lasts {cut_on_duration} s, EXTINF {}",
            ids[cut_on],
            listed.duration
        );
    }
    let combined: Vec<usize> = summary
        .get("combined")
        .arr()
        .iter()
        .map(|t| t.get("samples").num() as usize)
        .collect();
    assert_eq!(combined, samples, "{name}: mp4box.js's sample tables");
    tracks
        .iter()
        .zip(samples)
        .map(|(t, samples)| Mp4Track {
            codec: t.get("codec").str().to_owned(),
            handler: t.get("handler").str().to_owned(),
            samples,
        })
        .collect()
}

/// The `CODECS` of the multivariant playlist's (only) variant.
fn announced_codecs(dir: &Path) -> Vec<String> {
    let bytes = std::fs::read(dir.join("playlist.m3u8")).unwrap();
    let m = m3u8_rs::parse_master_playlist_res(&bytes).expect("multivariant playlist");
    assert_eq!(m.variants.len(), 1, "{m:?}");
    m.variants[0]
        .codecs
        .as_deref()
        .expect("CODECS")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Codec strings compare without case (RFC 6381 hex digits; mp4box.js writes `avc1.4d4015` and
/// `Opus`, the playlist `avc1.4D4015` and `opus`).
fn same_codec(announced: &str, found: &str) -> bool {
    announced.eq_ignore_ascii_case(found)
}

/// mp4box.js reads `sources` written as fMP4 by rshlssink: muxed (`video`/`audio` pads, both
/// tracks in each segment) and as renditions (`video_0`/`audio_0`, whose multivariant playlist
/// announces CODECS). Checks the structure of both ([`assert_mp4box_structure`]), the video
/// samples against `frames` and ffprobe's count, the audio samples against ffprobe's, and each
/// track's codec string against the CODECS.
fn mp4box_reads(tag: &str, target: u32, sources: &str, frames: usize) {
    let props = |d: &TempDir| {
        format!(
            "location={} segment-format=fmp4 target-duration={target} playlist-type=vod",
            d.str()
        )
    };
    let muxed = TempDir::new(&format!("fmp4-mp4box-{tag}"));
    run_sink(&props(&muxed), sources);
    let tracks = assert_mp4box_structure(muxed.path(), "playlist.m3u8");
    assert_eq!(
        tracks
            .iter()
            .map(|t| t.handler.as_str())
            .collect::<Vec<_>>(),
        ["vide", "soun"]
    );
    let (_, packets) = probe(&muxed.join("playlist.m3u8").to_string_lossy(), &[]);
    let ffprobe_count = |i| packets.iter().filter(|p| p.0 == i).count();
    assert_eq!(tracks[0].samples, frames, "{tracks:?}");
    assert_eq!(tracks[0].samples, ffprobe_count(0), "{tracks:?}");
    assert_eq!(tracks[1].samples, ffprobe_count(1), "{tracks:?}");
    checks_catch_corruption(&muxed);

    let renditions = TempDir::new(&format!("fmp4-mp4box-{tag}-mv"));
    run_sink(
        &props(&renditions),
        &sources
            .replace("h.video", "h.video_0")
            .replace("h.audio", "h.audio_0"),
    );
    let codecs = announced_codecs(renditions.path());
    let mut found = Vec::new();
    for name in ["video_0.m3u8", "audio_0.m3u8"] {
        let t = assert_mp4box_structure(renditions.path(), name);
        assert_eq!(t.len(), 1, "{name}: {t:?}");
        found.push(t[0].codec.clone());
    }
    assert_eq!(codecs.len(), 2, "{codecs:?}");
    for (announced, (rendition, muxed)) in codecs.iter().zip(found.iter().zip(&tracks)) {
        assert!(
            same_codec(announced, rendition) && same_codec(announced, &muxed.codec),
            "CODECS says {announced}, mp4box.js finds {rendition} (muxed: {})",
            muxed.codec
        );
    }
}

/// The checks fail on broken output: one field at a time is changed in the second segment
/// (the first traf's tfdt moved by two frames, the mfhd sequence number set back to 1, the first
/// trun's data offset moved past the mdat), [`assert_mp4box_structure`] must panic naming it,
/// and the file is restored.
fn checks_catch_corruption(dir: &TempDir) {
    let path = dir.join("segment00001.m4s");
    let good = std::fs::read(&path).unwrap();
    let at = |fourcc: &[u8]| {
        good.windows(4)
            .position(|w| w == fourcc)
            .unwrap_or_else(|| panic!("no {fourcc:?}"))
    };
    let mut broken = Vec::new();
    // tfdt v1: version/flags, then a 64-bit baseMediaDecodeTime.
    let tfdt = at(b"tfdt") + 8;
    assert_eq!(good[tfdt - 4], 1, "tfdt version 1");
    let mut b = good.clone();
    let t = u64::from_be_bytes(b[tfdt..tfdt + 8].try_into().unwrap()) + 6000;
    b[tfdt..tfdt + 8].copy_from_slice(&t.to_be_bytes());
    broken.push((b, "tfdt"));
    let mfhd = at(b"mfhd") + 8;
    let mut b = good.clone();
    b[mfhd..mfhd + 4].copy_from_slice(&1u32.to_be_bytes());
    broken.push((b, "sequence number"));
    // trun: version/flags, sample_count, data_offset (flag 0x1).
    let trun = at(b"trun") + 12;
    let mut b = good.clone();
    b[trun..trun + 4].copy_from_slice(&i32::MAX.to_be_bytes());
    broken.push((b, "outside the mdat"));
    for (data, what) in broken {
        std::fs::write(&path, data).unwrap();
        let result =
            std::panic::catch_unwind(|| assert_mp4box_structure(dir.path(), "playlist.m3u8"));
        let message = result
            .err()
            .and_then(|e| e.downcast::<String>().ok())
            .unwrap_or_else(|| panic!("a broken {what} passed the checks"));
        assert!(message.contains(what), "broken {what}, but: {message}");
    }
    std::fs::write(&path, good).unwrap();
}

/// LL-HLS (`part-duration`): a segment is its parts' fragments, one moof + mdat each, and the
/// sequence numbers and tfdt run on from part to part.
#[test]
fn mp4box_js_reads_low_latency_fmp4_segments_made_of_parts() {
    let dir = TempDir::new("fmp4-mp4box-parts");
    run_sink(
        &format!(
            "location={} segment-format=fmp4 part-duration=0.2 target-duration=1 \
             playlist-type=vod",
            dir.str()
        ),
        &format!("{}video {}audio", video(90, 30), audio(3.0)),
    );
    let tracks = assert_mp4box_structure(dir.path(), "playlist.m3u8");
    assert_eq!(tracks[0].samples, 90, "{tracks:?}");
    let (_, summary) = mp4box_summary(dir.path(), "playlist.m3u8");
    for segment in summary.get("segments").arr() {
        assert_eq!(
            segment.get("moofs").arr().len(),
            5,
            "five parts of 0.2 s: {}",
            segment.get("file").str()
        );
    }
}

#[test]
fn mp4box_js_reads_the_h264_and_aac_structure() {
    mp4box_reads(
        "avc",
        2,
        &format!(
            "{}video {}audio",
            video(150, 30).replace("x264enc", "x264enc bframes=2 b-adapt=false"),
            audio(5.0)
        ),
        150,
    );
}

#[test]
fn mp4box_js_reads_the_h265_and_opus_structure() {
    mp4box_reads(
        "hevc",
        1,
        "videotestsrc num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x265enc speed-preset=ultrafast key-int-max=15 ! h265parse ! h.video \
         audiotestsrc num-buffers=150 samplesperbuffer=960 ! audio/x-raw,rate=48000 ! opusenc \
         ! h.audio",
        90,
    );
}
