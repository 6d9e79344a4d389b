//! Replays the committed fuzz inputs (`fuzz/corpus/<target>/`: seeds; `fuzz/regressions/<target>/`:
//! the inputs of fixed crashes) through the entry points the fuzz targets call
//! (`gstlivestreaming::fuzzing`), on stable. Any panic fails, also one in a server's task.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gstlivestreaming::fuzzing;

/// A fuzz target's entry point.
type Entry = fn(&[u8]);

/// Every fuzz target (`fuzz/fuzz_targets/<name>.rs`) and its entry point.
const TARGETS: &[(&str, Entry)] = &[
    ("amf0", fuzzing::amf0),
    ("flv", fuzzing::flv),
    ("hls_fmp4_codec", fuzzing::hls_fmp4_codec),
    ("hls_http", fuzzing::hls_http),
    ("hls_playlist_resume", fuzzing::hls_playlist_resume),
    ("hls_range", fuzzing::hls_range),
    ("rtcp_compound", fuzzing::rtcp_compound),
    ("rtmp_chunk", fuzzing::rtmp_chunk),
    ("rtmp_enhanced", fuzzing::rtmp_enhanced),
    ("rtmp_publisher", fuzzing::rtmp_publisher),
    ("rtmp_server", fuzzing::rtmp_server),
    ("rtp_header", fuzzing::rtp_header),
    ("rtp_receiver", fuzzing::rtp_receiver),
    ("rtsp_auth", fuzzing::rtsp_auth),
    ("rtsp_codec", fuzzing::rtsp_codec),
    ("rtsp_sdp", fuzzing::rtsp_sdp),
    ("rtsp_server", fuzzing::rtsp_server),
    ("rtsp_server_auth", fuzzing::rtsp_server_auth),
    ("rtsp_server_record", fuzzing::rtsp_server_record),
    ("rtsp_transport", fuzzing::rtsp_transport),
    ("rtsp_tunnel", fuzzing::rtsp_tunnel),
];

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none when the directory does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir.map(|e| e.expect("directory entry").path()).collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_is_replayed_and_has_seeds() {
    let mut names: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| {
            let path = e.expect("directory entry").path();
            path.file_stem()
                .expect("a file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let listed: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, listed, "fuzz/fuzz_targets and TARGETS differ");
    for name in listed {
        assert!(
            !inputs("corpus", name).is_empty(),
            "no seeds in fuzz/corpus/{name}"
        );
    }
}

#[test]
fn committed_inputs_replay_without_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let mut failed = Vec::new();
    let mut replayed = 0;
    for (name, entry) in TARGETS {
        for path in inputs("corpus", name)
            .into_iter()
            .chain(inputs("regressions", name))
        {
            let data = std::fs::read(&path).expect("read an input");
            let before = PANICS.load(Ordering::SeqCst);
            let returned = std::panic::catch_unwind(|| entry(&data)).is_ok();
            if !returned || PANICS.load(Ordering::SeqCst) != before {
                failed.push(path);
            }
            replayed += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {replayed} inputs panicked: {failed:#?}",
        failed.len()
    );
}
