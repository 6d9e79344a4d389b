//! I-frame playlists (`i-frame-playlist=true`): `NAME-iframes.m3u8` beside each video media
//! playlist, EXT-X-I-FRAMES-ONLY with an EXT-X-BYTERANGE per keyframe, read by readers we did
//! not write: m3u8-rs parses them, ffprobe decodes each byte range on its own (MPEG-TS: the
//! range alone; fMP4: the init segment and the range) as exactly one I-frame first, and ffprobe
//! plays the TS I-frame playlist as a whole; with renditions the multivariant playlist lists
//! them with EXT-X-I-FRAME-STREAM-INF.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gst::prelude::*;

use common::abr::abr_sources;
use common::hls::*;

/// 180 frames (6 s) of 320x240@30 H.264 with a keyframe every second, and AAC.
fn sources() -> String {
    "videotestsrc num-buffers=180 ! video/x-raw,width=320,height=240,framerate=30/1 \
     ! x264enc key-int-max=30 tune=zerolatency speed-preset=ultrafast ! h264parse ! h.video \
     audiotestsrc num-buffers=260 samplesperbuffer=1024 ! audio/x-raw,rate=44100 \
     ! voaacenc ! aacparse ! h.audio"
        .to_owned()
}

/// (key_frame, pict_type) of each video frame ffprobe decodes from `file`.
fn video_frames(file: &Path) -> Vec<(bool, String)> {
    let (out, timed_out) = common::run(
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_frames"])
            .args([
                "-show_entries",
                "frame=key_frame,pict_type",
                "-of",
                "csv=p=0",
            ])
            .arg(file),
        Duration::from_secs(30),
    );
    assert!(
        !timed_out && out.status.success(),
        "ffprobe {}",
        file.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // key_frame,pict_type[,side data...]
            let mut fields = l.trim().split(',');
            let k = fields.next()?;
            let t = fields.next()?;
            Some((k == "1", t.to_owned()))
        })
        .collect()
}

fn iframe_playlist(path: &Path) -> m3u8_rs::MediaPlaylist {
    let p = read_playlist(path);
    assert!(p.i_frames_only, "{} is no I-frame playlist", path.display());
    p
}

/// Every entry of the I-frame playlist `name` in `dir`: its byte range (behind the init segment
/// for fMP4) decodes first to a keyframe, alone for TS. Returns the entries per segment URI.
fn check_ranges(dir: &TempDir, name: &str) -> Vec<(String, u64, u64, f32)> {
    let p = iframe_playlist(&dir.join(name));
    assert!(!p.segments.is_empty(), "{name} is empty");
    let mut map: Option<String> = None;
    let mut out = Vec::new();
    for (i, s) in p.segments.iter().enumerate() {
        if let Some(m) = &s.map {
            map = Some(m.uri.clone());
        }
        let range = s.byte_range.as_ref().expect("EXT-X-BYTERANGE");
        let offset = range.offset.expect("an offset in every EXT-X-BYTERANGE");
        let data = std::fs::read(dir.join(&s.uri)).unwrap();
        let end = (offset + range.length) as usize;
        assert!(end <= data.len(), "{name} entry {i}: range past {}", s.uri);
        let mut bytes = match &map {
            Some(m) => std::fs::read(dir.join(m)).unwrap(),
            None => Vec::new(),
        };
        bytes.extend_from_slice(&data[offset as usize..end]);
        let file = dir.join(&format!(
            "range-{i}.{}",
            if map.is_some() { "mp4" } else { "ts" }
        ));
        std::fs::write(&file, bytes).unwrap();
        let frames = video_frames(&file);
        assert!(
            frames.first().is_some_and(|(k, t)| *k && t == "I"),
            "{name} entry {i} ({}@{offset} of {}): {frames:?}",
            range.length,
            s.uri
        );
        if map.is_none() {
            // TS: the keyframe and nothing of the next frame.
            assert_eq!(frames.len(), 1, "{name} entry {i}: {frames:?}");
        }
        out.push((s.uri.clone(), offset, range.length, s.duration));
    }
    out
}

#[test]
fn ts_i_frame_playlist_names_every_keyframe() {
    let dir = TempDir::new("iframes-ts");
    run_sink(
        &format!(
            "location={} target-duration=2 playlist-type=vod i-frame-playlist=true",
            dir.str()
        ),
        &sources(),
    );
    let media = read_playlist(&dir.join("playlist.m3u8"));
    let entries = check_ranges(&dir, "playlist-iframes.m3u8");
    // A keyframe a second: two per 2 s segment, each standing for a second.
    assert_eq!(entries.len(), 6, "{entries:?}");
    for s in &media.segments {
        let of: Vec<_> = entries.iter().filter(|e| e.0 == s.uri).collect();
        assert_eq!(of.len(), 2, "{}: {entries:?}", s.uri);
        assert!(of[0].1 < of[1].1, "in order");
        let sum: f32 = of.iter().map(|e| e.3).sum();
        assert!(
            (sum - s.duration).abs() < 0.01,
            "{}: {sum} s of I-frames",
            s.uri
        );
    }
    let p = iframe_playlist(&dir.join("playlist-iframes.m3u8"));
    assert!(p.end_list);
    assert_eq!(p.playlist_type, Some(m3u8_rs::MediaPlaylistType::Vod));
    // ffprobe plays the I-frame playlist: the six keyframes.
    let (out, _) = common::run(
        Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
            .arg(dir.join("playlist-iframes.m3u8")),
        Duration::from_secs(30),
    );
    // (ffprobe repeats the stream under the HLS program.)
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().next(), Some("6"), "{stdout}");
}

/// The top-level boxes of an fMP4 segment, each moof with its trafs (track id, sample count,
/// whether the first sample is a sync sample): what a failure shows of a segment.
fn box_summary(data: &[u8]) -> String {
    fn boxes(d: &[u8]) -> Vec<(String, &[u8])> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= d.len() {
            let size = u32::from_be_bytes(d[at..at + 4].try_into().unwrap()) as usize;
            if size < 8 || at + size > d.len() {
                out.push((format!("<bad box of {size} bytes at {at}>"), &d[..0]));
                break;
            }
            out.push((
                String::from_utf8_lossy(&d[at + 4..at + 8]).into_owned(),
                &d[at + 8..at + size],
            ));
            at += size;
        }
        out
    }
    let u32_at = |d: &[u8], at: usize| {
        d.get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    let mut out = Vec::new();
    for (kind, body) in boxes(data) {
        if kind != "moof" {
            out.push(format!("{kind}({})", body.len() + 8));
            continue;
        }
        let mut trafs = Vec::new();
        for (kind, traf) in boxes(body) {
            if kind != "traf" {
                continue;
            }
            let mut desc = String::new();
            for (kind, b) in boxes(traf) {
                match kind.as_str() {
                    "tfhd" => desc += &format!("id {:?}", u32_at(b, 4)),
                    "trun" => {
                        // version+flags, count, data offset, then per sample: duration, size,
                        // flags (as our muxer writes them).
                        let flags = u32_at(b, 0).unwrap_or(0) & 0xff_ffff;
                        desc += &format!(
                            " trun flags {flags:#x} count {:?} first flags {:x?}",
                            u32_at(b, 4),
                            u32_at(b, 20)
                        );
                    }
                    _ => {}
                }
            }
            trafs.push(desc);
        }
        out.push(format!("moof[{}]", trafs.join("; ")));
    }
    out.join(" ")
}

/// What a failure needs: both playlists, the files and each segment's boxes.
fn fmp4_diagnostics(dir: &TempDir) -> String {
    let mut out = String::new();
    for name in ["playlist.m3u8", "playlist-iframes.m3u8"] {
        let text = std::fs::read(dir.join(name)).unwrap_or_default();
        out += &format!("--- {name}\n{}\n", String::from_utf8_lossy(&text));
    }
    for f in dir.files() {
        if f.ends_with(".m4s") {
            let data = std::fs::read(dir.join(&f)).unwrap_or_default();
            out += &format!("--- {f}: {}\n", box_summary(&data));
        }
    }
    out += &format!("--- files: {:?}", dir.files());
    out
}

/// An fMP4 I-frame playlist with one entry per segment: its fragment, starting with the
/// segment's keyframe, standing for the whole segment; one init segment for audio and video.
fn assert_an_i_frame_per_fmp4_segment(dir: &TempDir) {
    let media = read_playlist(&dir.join("playlist.m3u8"));
    let why = || fmp4_diagnostics(dir);
    let inits: Vec<_> = dir
        .files()
        .into_iter()
        .filter(|f| f.starts_with("init"))
        .collect();
    assert_eq!(inits.len(), 1, "{inits:?}\n{}", why());
    assert!(media.segments.iter().all(|s| !s.discontinuity), "{}", why());
    let entries = check_ranges(dir, "playlist-iframes.m3u8");
    // One fragment per segment, starting with its keyframe.
    assert_eq!(
        entries.len(),
        media.segments.len(),
        "{entries:?}\n{}",
        why()
    );
    for (e, s) in entries.iter().zip(&media.segments) {
        assert_eq!(e.0, s.uri, "{}", why());
        assert!((e.3 - s.duration).abs() < 0.01, "{}", why());
    }
    let p = iframe_playlist(&dir.join("playlist-iframes.m3u8"));
    assert!(p.segments[0].map.is_some(), "EXT-X-MAP");
    assert!(p.version.unwrap_or(0) >= 5);
}

const FMP4_PROPS: &str =
    "target-duration=2 playlist-type=vod i-frame-playlist=true segment-format=fmp4";

#[test]
fn fmp4_i_frame_playlist_names_each_fragment_start() {
    let dir = TempDir::new("iframes-fmp4");
    run_sink(&format!("location={} {FMP4_PROPS}", dir.str()), &sources());
    assert_an_i_frame_per_fmp4_segment(&dir);
}

/// The audio (not live) is all there before the video encoder's first frame, which comes after
/// its caps: the audio runs more than 5 s ahead, but the sink waits for the video's first
/// frame (its track) rather than start with an audio-only init segment and segment (no
/// I-frame) and a discontinuity when the video comes. Under load this happened by itself; here
/// the video's first buffer waits (after its caps went through) for the audio's EOS, and the
/// audio's first buffer waits for the video's caps.
#[test]
fn fmp4_audio_ahead_of_the_first_video_frame_waits_for_it() {
    use std::sync::{Arc, Condvar, Mutex};
    let dir = TempDir::new("iframes-fmp4-late-video");
    let (p, h) = pipeline(&format!("location={} {FMP4_PROPS}", dir.str()), &sources());
    // (video caps through, audio EOS seen, the video's first buffer was held until then)
    type State = (Mutex<(bool, bool, bool)>, Condvar);
    let state: Arc<State> = Arc::new((Mutex::new((false, false, false)), Condvar::new()));
    // No panic on a streaming thread: a wait that times out lets the buffer go, and the
    // assertion after the run says the case was not staged.
    let wait_until = |state: &State, f: fn(&(bool, bool, bool)) -> bool| -> bool {
        let (lock, cv) = state;
        let guard = lock.lock().unwrap();
        let (_guard, timeout) = cv
            .wait_timeout_while(guard, Duration::from_secs(30), |s| !f(s))
            .unwrap();
        !timeout.timed_out()
    };
    let s = state.clone();
    h.static_pad("video")
        .expect("video pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            // Its caps went through before this first buffer.
            s.0.lock().unwrap().0 = true;
            s.1.notify_all();
            let held = wait_until(&s, |s| s.1);
            s.0.lock().unwrap().2 = held;
            gst::PadProbeReturn::Remove
        });
    let audio = h.static_pad("audio").expect("audio pad");
    let s = state.clone();
    audio.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        wait_until(&s, |s| s.0);
        gst::PadProbeReturn::Remove
    });
    let s = state.clone();
    audio.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(e)) = &info.data
            && e.type_() == gst::EventType::Eos
        {
            s.0.lock().unwrap().1 = true;
            s.1.notify_all();
        }
        gst::PadProbeReturn::Ok
    });
    run_to_end(&p, Duration::from_secs(60)).expect("pipeline runs to EOS");
    assert!(
        state.0.lock().unwrap().2,
        "the video's first buffer was not held until the audio's EOS"
    );
    assert_an_i_frame_per_fmp4_segment(&dir);
}

#[test]
fn renditions_list_their_i_frame_playlists() {
    let dir = TempDir::new("iframes-abr");
    run_sink(
        &format!(
            "location={} target-duration=2 playlist-type=vod i-frame-playlist=true",
            dir.str()
        ),
        &abr_sources(false, Some(120)),
    );
    let bytes = std::fs::read(dir.join("playlist.m3u8")).unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let m = m3u8_rs::parse_master_playlist_res(&bytes).expect("multivariant playlist");
    let iframe: Vec<_> = m.variants.iter().filter(|v| v.is_i_frame).collect();
    assert_eq!(iframe.len(), 3, "{text}");
    for (i, v) in iframe.iter().enumerate() {
        assert_eq!(v.uri, format!("video_{i}-iframes.m3u8"));
        assert!(v.bandwidth > 1000, "{text}");
        assert!(
            v.codecs.as_deref().is_some_and(|c| c.starts_with("avc1.")),
            "{text}"
        );
        assert!(v.resolution.is_some(), "{text}");
        check_ranges(&dir, &v.uri);
    }
    assert_eq!(m.variants.iter().filter(|v| !v.is_i_frame).count(), 3);
    assert!(!dir.join("audio_0-iframes.m3u8").exists());
    assert!(!dir.join("playlist-iframes.m3u8").exists());
    // Players that skip I-frame variants still play the multivariant playlist.
    let probe = ffprobe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    let h264 = probe.streams.iter().filter(|(c, _)| c == "h264").count();
    assert_eq!(h264, 3, "{probe:?}");
    assert!(probe.streams.iter().any(|(c, _)| c == "aac"), "{probe:?}");
}

#[test]
fn i_frame_playlists_and_encryption_do_not_mix() {
    let dir = TempDir::new("iframes-aes");
    let (p, _) = pipeline(
        &format!(
            "location={} i-frame-playlist=true encryption=aes-128",
            dir.str()
        ),
        &sources(),
    );
    let err = run_to_end(&p, Duration::from_secs(30)).expect_err("refused");
    assert!(err.contains("i-frame-playlist"), "{err}");
}

/// Live, from the element's server: the I-frame playlist is served and follows the media
/// playlist's window, and each entry's byte range is answered (206) with those bytes of the
/// segment, as players fetch them.
#[test]
fn the_server_serves_i_frame_ranges() {
    let live = serve_live("iframes-live", "i-frame-playlist=true", LIVE_VIDEO);
    let port = live.port;
    let (status, headers, body) = http_request(port, "GET", "/playlist-iframes.m3u8");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    let p = m3u8_rs::parse_media_playlist_res(&body).expect("I-frame playlist");
    assert!(p.i_frames_only && !p.end_list);
    let media = read_playlist(&live.dir.join("playlist.m3u8"));
    assert!(p.media_sequence >= media.media_sequence.saturating_sub(1));
    assert!(p.segments.len() >= 2, "{p:?}");
    for s in &p.segments {
        let r = s.byte_range.as_ref().unwrap();
        let offset = r.offset.unwrap();
        let last = offset + r.length - 1;
        let (status, _, part) = http_request_with(
            port,
            "GET",
            &format!("/{}", s.uri),
            &[&format!("Range: bytes={offset}-{last}")],
        );
        assert_eq!(status, 206, "{}", s.uri);
        let file = std::fs::read(live.dir.join(&s.uri)).unwrap();
        assert!(part == file[offset as usize..=last as usize], "{}", s.uri);
        let tmp = live.dir.join("range.ts");
        std::fs::write(&tmp, &part).unwrap();
        let frames = video_frames(&tmp);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert!(frames[0].0, "{frames:?}");
    }
}
