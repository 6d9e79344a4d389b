//! SIGKILL of a gst-launch-1.0 pipeline mid-stream: the playlist left behind parses and names only
//! complete segments.

mod common;

use std::process::Command;
use std::time::Duration;

use common::hls::*;
use common::{ChildGuard, plugin_dir};

fn segment_duration(path: &std::path::Path) -> f64 {
    let probe = ffprobe(&path.to_string_lossy(), &[]);
    assert_eq!(
        probe.streams,
        [("h264".to_string(), "video".to_string())],
        "{}",
        path.display()
    );
    probe.duration.expect("duration")
}

#[test]
fn sigkill_leaves_a_playlist_of_complete_segments() {
    let plugins = plugin_dir();
    // Kill at different points within a segment.
    for (round, extra_ms) in [150u64, 480, 820].into_iter().enumerate() {
        let dir = TempDir::new("kill");
        let registry = dir.join("registry.bin");
        let out = dir.join("out");
        let mut child = ChildGuard::spawn(
            Command::new("gst-launch-1.0")
                .env("GST_PLUGIN_PATH", &plugins)
                .env("GST_REGISTRY", &registry)
                .args(["-q", "videotestsrc", "is-live=true", "!"])
                .args(["video/x-raw,width=640,height=480,framerate=30/1", "!"])
                .args([
                    "x264enc",
                    "tune=zerolatency",
                    "speed-preset=ultrafast",
                    "bitrate=4000",
                    "key-int-max=30",
                    "!",
                    "rshlssink",
                    &format!("location={}", out.display()),
                    "target-duration=1",
                    "playlist-length=0",
                    "max-files=0",
                ]),
        );
        let playlist_path = out.join("playlist.m3u8");
        let ready = wait_for(Duration::from_secs(30), || {
            playlist_path.exists() && read_playlist(&playlist_path).segments.len() >= 3
        });
        if !ready {
            let c = child.0.take().unwrap();
            let (o, _) = ChildGuard(Some(c)).wait_output(Duration::from_secs(1));
            panic!(
                "round {round}: no playlist with 3 segments; stderr: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        let mut c = child.0.take().unwrap();
        c.kill().expect("SIGKILL");
        let status = c.wait().unwrap();
        assert!(!status.success(), "killed, not exited");

        let playlist = read_playlist(&playlist_path);
        assert!(!playlist.end_list, "no EOS, no ENDLIST");
        assert!(playlist.segments.len() >= 3);
        for s in &playlist.segments {
            let path = out.join(&s.uri);
            assert!(path.exists(), "round {round}: {} listed but missing", s.uri);
            let d = segment_duration(&path);
            assert!(
                (d - f64::from(s.duration)).abs() < 0.1,
                "round {round}: {} is {d} s, the playlist says {}",
                s.uri,
                s.duration
            );
        }
        // Whatever was being written when killed stays out of the way (hidden temporary name).
        for name in dir_files(&out) {
            assert!(
                name == "playlist.m3u8"
                    || (name.starts_with("segment") && name.ends_with(".ts"))
                    || (name.starts_with('.') && name.ends_with(".tmp")),
                "round {round}: unexpected file {name}"
            );
        }
        // The next run clears such leftovers and continues the playlist.
        std::fs::write(out.join(".segment99999.ts.tmp"), b"partial").unwrap();
        run_sink(
            &format!(
                "location={} target-duration=1 playlist-length=0 max-files=0",
                out.display()
            ),
            &video(30, 30),
        );
        assert!(
            !dir_files(&out).iter().any(|n| n.ends_with(".tmp")),
            "round {round}: {:?}",
            dir_files(&out)
        );
        let resumed = read_playlist(&playlist_path);
        assert_eq!(resumed.segments.len(), playlist.segments.len() + 1);
        assert!(resumed.segments.last().unwrap().discontinuity);
    }
}

fn dir_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
