//! rshlssink writing local files: ffprobe reads the playlists and every segment; segmenting,
//! keyframe requests, live windows, restarts and errors.

mod common;

use std::time::Duration;

use common::hls::*;
use gst::prelude::*;
use m3u8_rs::MediaPlaylistType;

const FRAME: f64 = 1.0 / 30.0;

fn total(p: &m3u8_rs::MediaPlaylist) -> f64 {
    p.segments.iter().map(|s| f64::from(s.duration)).sum()
}

#[test]
fn vod_with_audio_and_video_reads_in_ffprobe() {
    let dir = TempDir::new("vod");
    // 5 s of video: 150 frames.
    run_sink(
        &format!("location={} target-duration=2 playlist-type=vod", dir.str()),
        &format!("{} {}", video(150, 30), audio(5.0)),
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    assert_eq!(playlist.playlist_type, Some(MediaPlaylistType::Vod));
    assert!(playlist.end_list);
    assert_eq!(playlist.target_duration, 2);
    assert_eq!(playlist.media_sequence, 0);
    assert_eq!(playlist.segments.len(), 3);
    for s in &playlist.segments {
        assert!(
            f64::from(s.duration) <= 2.0 + 1e-3,
            "{} is {} s",
            s.uri,
            s.duration
        );
    }
    assert!(
        (total(&playlist) - 5.0).abs() <= FRAME,
        "{}",
        total(&playlist)
    );

    let probe = ffprobe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    let mut codecs: Vec<String> = probe.streams.iter().map(|s| s.0.clone()).collect();
    codecs.sort();
    assert_eq!(codecs, ["aac", "h264"], "{probe:?}");
    let duration = probe.duration.expect("duration");
    assert!(
        (duration - 5.0).abs() <= FRAME,
        "ffprobe duration {duration}"
    );
    assert_segments_readable(dir.path(), &playlist);
    // Nothing but the playlist and the segments (no temporary files left).
    assert_eq!(
        dir.files(),
        [
            "playlist.m3u8",
            "segment00000.ts",
            "segment00001.ts",
            "segment00002.ts"
        ]
    );
}

#[test]
fn hlssink2_style_pattern_locations() {
    let dir = TempDir::new("pattern");
    run_sink(
        &format!(
            "location={}/part-%03d.ts playlist-location={}/index.m3u8 target-duration=1 \
             playlist-root=http://cdn.invalid/x",
            dir.str(),
            dir.str()
        ),
        &video(60, 30),
    );
    let playlist = read_playlist(&dir.join("index.m3u8"));
    let uris: Vec<&str> = playlist.segments.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            "http://cdn.invalid/x/part-000.ts",
            "http://cdn.invalid/x/part-001.ts"
        ]
    );
    assert_eq!(dir.files(), ["index.m3u8", "part-000.ts", "part-001.ts"]);
}

#[test]
fn live_window_slides_and_old_segments_are_deleted() {
    let dir = TempDir::new("live");
    run_sink(
        &format!(
            "location={} target-duration=1 playlist-length=3 max-files=4",
            dir.str()
        ),
        &video(300, 30),
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    assert_eq!(playlist.playlist_type, None);
    assert!(playlist.end_list, "EOS ends the playlist");
    assert_eq!(playlist.media_sequence, 7);
    let uris: Vec<&str> = playlist.segments.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(
        uris,
        ["segment00007.ts", "segment00008.ts", "segment00009.ts"]
    );
    // max-files=4: one segment that left the playlist is kept for late readers.
    assert_eq!(
        dir.files(),
        [
            "playlist.m3u8",
            "segment00006.ts",
            "segment00007.ts",
            "segment00008.ts",
            "segment00009.ts"
        ]
    );
    assert_segments_readable(dir.path(), &playlist);
}

#[test]
fn event_playlist_keeps_every_segment() {
    let dir = TempDir::new("event");
    run_sink(
        &format!(
            "location={} target-duration=1 playlist-type=event playlist-length=2 max-files=2",
            dir.str()
        ),
        &video(150, 30),
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    assert_eq!(playlist.playlist_type, Some(MediaPlaylistType::Event));
    assert!(playlist.end_list);
    assert_eq!(playlist.segments.len(), 5);
    assert_eq!(dir.files().len(), 6);
    let probe = ffprobe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    assert!((probe.duration.unwrap() - 5.0).abs() <= FRAME, "{probe:?}");
}

#[test]
fn keyframe_requests_keep_segments_within_the_target() {
    // The encoder would make one keyframe in 10 s: every later cut comes from our requests.
    let dir = TempDir::new("kf");
    run_sink(
        &format!("location={} target-duration=1 playlist-type=vod", dir.str()),
        &video(120, 300),
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    assert_eq!(playlist.target_duration, 1);
    let durations: Vec<f32> = playlist.segments.iter().map(|s| s.duration).collect();
    assert_eq!(durations.len(), 4, "{durations:?}");
    for d in &durations {
        assert!((f64::from(*d) - 1.0).abs() < 1e-3, "{durations:?}");
    }

    // The same with B-frames and lookahead (x264's veryfast preset): the muxer stamps decode
    // times, the durations still count presentation time.
    let dir = TempDir::new("kf-bframes");
    run_sink(
        &format!("location={} target-duration=1 playlist-type=vod", dir.str()),
        "videotestsrc num-buffers=120 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc speed-preset=veryfast bframes=3 key-int-max=300 ! h264parse ! h.",
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    let durations: Vec<f32> = playlist.segments.iter().map(|s| s.duration).collect();
    assert_eq!(durations.len(), 4, "{durations:?}");
    for d in &durations {
        assert!((f64::from(*d) - 1.0).abs() < 1e-3, "{durations:?}");
    }
    assert_segments_readable(dir.path(), &playlist);
    let probe = ffprobe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    assert!((probe.duration.unwrap() - 4.0).abs() <= FRAME, "{probe:?}");

    // Without requests, the encoder's one keyframe makes one long segment and the target
    // duration in the playlist rises to cover it.
    let dir = TempDir::new("nokf");
    run_sink(
        &format!(
            "location={} target-duration=1 playlist-type=vod send-keyframe-requests=false",
            dir.str()
        ),
        &video(120, 300),
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    assert_eq!(playlist.segments.len(), 1);
    assert_eq!(playlist.target_duration, 4);
    assert!((total(&playlist) - 4.0).abs() <= FRAME);
}

#[test]
fn live_playlist_is_readable_while_streaming_and_stop_keeps_the_last_segment() {
    let dir = TempDir::new("running");
    let (pipeline, _sink) = pipeline(
        &format!("location={} target-duration=1 playlist-length=3", dir.str()),
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h.",
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let path = dir.join("playlist.m3u8");
    assert!(
        wait_for(Duration::from_secs(20), || path.exists()
            && read_playlist(&path).segments.len() >= 2),
        "no playlist with 2 segments"
    );
    let live = read_playlist(&path);
    assert!(!live.end_list);
    let probe = ffprobe(&path.to_string_lossy(), &[]);
    assert_eq!(probe.streams, [("h264".to_string(), "video".to_string())]);
    std::thread::sleep(Duration::from_millis(500));
    pipeline.set_state(gst::State::Null).unwrap();
    // Stopping without EOS writes what was buffered, without EXT-X-ENDLIST.
    let after = read_playlist(&path);
    assert!(!after.end_list);
    let last = after.segments.last().unwrap();
    assert!(last.duration > 0.0 && last.duration < 1.001, "{last:?}");
    assert_segments_readable(dir.path(), &after);
}

/// Runs a live source into `props` until the playlist lists `segments` more segments than it did,
/// then stops without EOS (as a crashed or restarted encoder would).
fn run_live_then_stop(props: &str, path: &std::path::Path, segments: usize) {
    let before = if path.exists() {
        read_playlist(path).segments.len()
    } else {
        0
    };
    let (pipeline, _) = common::hls::pipeline(
        props,
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h.",
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let ok = wait_for(Duration::from_secs(20), || {
        path.exists() && read_playlist(path).segments.len() >= before + segments
    });
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(ok, "no {segments} new segments");
}

#[test]
fn restart_continues_the_playlist_after_a_discontinuity() {
    let dir = TempDir::new("restart");
    let props = format!(
        "location={} target-duration=1 playlist-length=4 max-files=0",
        dir.str()
    );
    let path = dir.join("playlist.m3u8");
    run_live_then_stop(&props, &path, 2);
    let first = read_playlist(&path);
    let n = first.segments.len() as u64;
    assert!(!first.end_list);
    assert!(!first.segments.iter().any(|s| s.discontinuity));

    // Second run into the same place: numbering goes on after a discontinuity.
    run_live_then_stop(&props, &path, 1);
    let second = read_playlist(&path);
    let restarted = second
        .segments
        .iter()
        .position(|s| s.uri == format!("segment{n:05}.ts"))
        .unwrap_or_else(|| panic!("segment {n} listed: {second:?}"));
    assert!(second.segments[restarted].discontinuity, "{second:?}");
    let total_so_far = second.media_sequence + second.segments.len() as u64;
    for (i, s) in second.segments.iter().enumerate() {
        let seq = second.media_sequence + i as u64;
        assert_eq!(
            s.uri,
            format!("segment{seq:05}.ts"),
            "sequence numbers continue"
        );
        assert_eq!(s.discontinuity, seq == n, "{second:?}");
    }
    let probe = ffprobe(&path.to_string_lossy(), &[]);
    assert_eq!(probe.streams.len(), 1);

    // A third run (5 s to EOS) slides both discontinuities out of the 4-segment window:
    // EXT-X-DISCONTINUITY-SEQUENCE counts them.
    run_sink(&props, &video(150, 30));
    let third = read_playlist(&path);
    assert!(third.end_list);
    assert_eq!(third.segments.len(), 4);
    assert_eq!(third.media_sequence, total_so_far + 5 - 4);
    assert!(!third.segments.iter().any(|s| s.discontinuity), "{third:?}");
    assert_eq!(third.discontinuity_sequence, 2, "{third:?}");
    assert_segments_readable(dir.path(), &third);
}

#[test]
fn caps_change_mid_stream_is_a_discontinuity() {
    let dir = TempDir::new("caps");
    let (pipeline, _) = common::hls::pipeline(
        &format!("location={} target-duration=1 playlist-type=vod", dir.str()),
        "videotestsrc name=src num-buffers=120 ! capsfilter name=cf \
         caps=video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc speed-preset=ultrafast key-int-max=30 ! h264parse ! h.",
    );
    let cf = pipeline.by_name("cf").unwrap();
    let src_pad = pipeline.by_name("src").unwrap().static_pad("src").unwrap();
    src_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(gst::PadProbeData::Buffer(b)) = &info.data
            && b.offset() == 45
        {
            cf.set_property(
                "caps",
                gst::Caps::builder("video/x-raw")
                    .field("width", 160)
                    .field("height", 120)
                    .field("framerate", gst::Fraction::new(30, 1))
                    .field("format", "I420")
                    .build(),
            );
        }
        gst::PadProbeReturn::Ok
    });
    run_to_end(&pipeline, Duration::from_secs(60)).expect("EOS");
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    let flags: Vec<bool> = playlist.segments.iter().map(|s| s.discontinuity).collect();
    assert_eq!(flags.iter().filter(|d| **d).count(), 1, "{playlist:?}");
    assert!(!flags[0]);
    assert_segments_readable(dir.path(), &playlist);
}

#[test]
fn unwritable_location_is_a_clear_error() {
    let dir = TempDir::new("unwritable");
    // A directory below a regular file can never be created, even by root.
    let file = dir.join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let location = format!("{}/hls", file.display());
    let (pipeline, _) = common::hls::pipeline(
        &format!("location={location} target-duration=1"),
        &video(90, 30),
    );
    let err = run_to_end(&pipeline, Duration::from_secs(60)).expect_err("must fail");
    assert!(err.contains(&location), "{err}");
}

#[test]
fn audio_only_is_segmented_too() {
    let dir = TempDir::new("audio");
    run_sink(
        &format!("location={} target-duration=1 playlist-type=vod", dir.str()),
        &audio(3.0),
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    assert!(playlist.segments.len() >= 3, "{playlist:?}");
    for s in &playlist.segments {
        assert!(s.duration <= 1.1, "{playlist:?}");
    }
    let probe = ffprobe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    assert_eq!(probe.streams, [("aac".to_string(), "audio".to_string())]);
    assert_segments_readable(dir.path(), &playlist);
}

#[test]
fn program_date_time_follows_the_segments() {
    let dir = TempDir::new("pdt");
    let before = std::time::SystemTime::now();
    run_sink(
        &format!(
            "location={} target-duration=1 playlist-type=event program-date-time=true",
            dir.str()
        ),
        &video(90, 30),
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    assert_eq!(playlist.segments.len(), 3);
    let times: Vec<_> = playlist
        .segments
        .iter()
        .map(|s| s.program_date_time.expect("EXT-X-PROGRAM-DATE-TIME"))
        .collect();
    let first = std::time::SystemTime::from(times[0]);
    assert!(
        first >= before - Duration::from_secs(1) && first <= std::time::SystemTime::now(),
        "{first:?}"
    );
    for (w, s) in times.windows(2).zip(&playlist.segments) {
        let step = (w[1] - w[0]).num_milliseconds();
        assert!(
            (step - (f64::from(s.duration) * 1000.0).round() as i64).abs() <= 1,
            "{step} ms between segments of {} s",
            s.duration
        );
    }
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_a_valid_playlist() {
    let dir = TempDir::new("full");
    let disk = dir.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let _mounted = SmallDisk::mount(&disk, "1200k");
    let (pipeline, _) = common::hls::pipeline(
        &format!("location={} target-duration=1", disk.display()),
        "videotestsrc num-buffers=300 pattern=snow \
         ! video/x-raw,width=640,height=480,framerate=30/1 \
         ! x264enc speed-preset=ultrafast bitrate=3000 key-int-max=30 ! h.",
    );
    let err = run_to_end(&pipeline, Duration::from_secs(60)).expect_err("disk full");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&disk.to_string_lossy().into_owned()), "{err}");
    // What was published before the disk filled up is intact.
    let path = disk.join("playlist.m3u8");
    assert!(path.exists(), "at least one playlist was written: {err}");
    let playlist = read_playlist(&path);
    assert!(!playlist.end_list);
    assert_segments_readable(&disk, &playlist);
}

#[test]
fn target_duration_zero_cuts_at_every_keyframe() {
    let dir = TempDir::new("every-keyframe");
    // A keyframe every 15 frames (0.5 s), 3 s.
    run_sink(
        &format!("location={} target-duration=0 playlist-type=vod", dir.str()),
        &video(90, 15),
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    let durations: Vec<f32> = playlist.segments.iter().map(|s| s.duration).collect();
    assert_eq!(durations.len(), 6, "{durations:?}");
    for d in &durations {
        assert!((f64::from(*d) - 0.5).abs() < 1e-3, "{durations:?}");
    }
    // EXT-X-TARGETDURATION is a positive integer covering them.
    assert_eq!(playlist.target_duration, 1);
    assert_segments_readable(dir.path(), &playlist);
}

#[test]
fn each_segment_is_announced_with_an_element_message() {
    let dir = TempDir::new("messages");
    let (pipeline, _) = common::hls::pipeline(
        &format!(
            "location={} target-duration=1 playlist-length=2 max-files=2",
            dir.str()
        ),
        &video(120, 30),
    );
    let (result, messages) = run_collecting(&pipeline, Duration::from_secs(60));
    result.expect("EOS");
    let added: Vec<&gst::Structure> = messages
        .iter()
        .filter(|s| s.name() == "rshlssink-segment-added")
        .collect();
    let locations: Vec<String> = added
        .iter()
        .map(|s| s.get::<String>("location").unwrap())
        .collect();
    let want: Vec<String> = (0..4)
        .map(|i| format!("{}/segment{i:05}.ts", dir.str()))
        .collect();
    assert_eq!(locations, want);
    let sequences: Vec<u64> = added.iter().map(|s| s.get("sequence").unwrap()).collect();
    assert_eq!(sequences, [0, 1, 2, 3]);
    for s in &added {
        let d: f64 = s.get("duration").unwrap();
        assert!((d - 1.0).abs() < 1e-3, "{s}");
    }
    // max-files=2: the third and fourth segments each expire one.
    let deleted: Vec<Vec<String>> = added
        .iter()
        .map(|s| {
            s.get::<gst::List>("deleted")
                .unwrap()
                .iter()
                .map(|v| v.get::<String>().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        deleted,
        [vec![], vec![], vec![want[0].clone()], vec![want[1].clone()]]
    );
}

#[test]
fn h265_and_mp3_play_too() {
    let dir = TempDir::new("hevc");
    run_sink(
        &format!("location={} target-duration=1 playlist-type=vod", dir.str()),
        "videotestsrc num-buffers=60 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x265enc speed-preset=ultrafast key-int-max=300 ! h265parse ! h. \
         audiotestsrc num-buffers=90 samplesperbuffer=1152 ! audio/x-raw,rate=44100 \
         ! lamemp3enc ! mpegaudioparse ! h.",
    );
    let playlist = read_playlist(&dir.join("playlist.m3u8"));
    // Keyframes came from our requests: x265's own interval is 10 s here.
    assert_eq!(playlist.segments.len(), 2, "{playlist:?}");
    for s in &playlist.segments {
        assert!((f64::from(s.duration) - 1.0).abs() < 1e-3, "{playlist:?}");
    }
    let probe = ffprobe(&dir.join("playlist.m3u8").to_string_lossy(), &[]);
    let mut codecs: Vec<String> = probe.streams.iter().map(|s| s.0.clone()).collect();
    codecs.sort();
    assert_eq!(codecs, ["hevc", "mp3"], "{probe:?}");
    assert_segments_readable(dir.path(), &playlist);
}
