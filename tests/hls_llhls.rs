//! Low-Latency HLS (`part-duration` with `segment-format=fmp4`) from the element's own server:
//! blocking playlist reloads (`_HLS_msn`/`_HLS_part`: held until the part exists, answered then,
//! not before, within a bound; too far ahead refused), a preload-hinted part requested before
//! it exists, delta updates (`_HLS_skip=YES`) read by m3u8-rs, and ffprobe still reading the
//! output. (hls.js in `lowLatencyMode` and its latency: tests/hls_browser.rs.)

mod common;

use std::time::{Duration, Instant};

use common::hls::*;
use gst::prelude::*;
use gstlivestreaming::hls::store::PlaylistPosition;

const LL: &str = "segment-format=fmp4 part-duration=0.2 playlist-length=12 max-files=14";

fn get(port: u16, path: &str) -> (u16, Vec<u8>, Duration) {
    let start = Instant::now();
    let (status, _, body) = http_request(port, "GET", path);
    (status, body, start.elapsed())
}

fn position(body: &[u8]) -> PlaylistPosition {
    PlaylistPosition::parse(body)
        .unwrap_or_else(|| panic!("no LL-HLS playlist: {}", String::from_utf8_lossy(body)))
}

#[test]
fn blocking_reloads_hinted_parts_and_delta_updates() {
    common::init();
    let live = serve_live("llhls", LL, LIVE_VIDEO);
    let port = live.port;
    let (status, body, _) = get(port, "/playlist.m3u8");
    assert_eq!(status, 200);
    let now = position(&body);
    assert!((now.part_target_s - 0.2).abs() < 1e-9, "{now:?}");

    // A part two ahead of the last listed one: held until it exists, then answered at once.
    let (msn, part) = (now.next_msn, now.open_parts + 1);
    let part_file = live.dir.join(&format!("segment{msn:05}.{part}.m4s"));
    let (status, body, took) = get(
        port,
        &format!("/playlist.m3u8?_HLS_msn={msn}&_HLS_part={part}"),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let then = position(&body);
    assert!(then.has(msn, Some(part)), "{then:?} lacks {msn}.{part}");
    // It was not answered before: the request took about the two parts' time (and the part
    // may have been the last of its segment, so the segment is complete instead).
    assert!(
        took >= Duration::from_millis(150),
        "answered after {took:?}, before the part could exist"
    );
    assert!(took < Duration::from_secs(3), "held {took:?}");
    assert!(
        part_file.exists() || then.next_msn > msn,
        "answered before {} existed",
        part_file.display()
    );

    // A whole segment ahead: held until that segment is complete.
    let next = then.next_msn;
    let (status, body, took) = get(port, &format!("/playlist.m3u8?_HLS_msn={next}"));
    assert_eq!(status, 200);
    assert!(position(&body).next_msn > next);
    assert!(took < Duration::from_secs(3), "held {took:?}");

    // Too far ahead: refused at once (RFC 8216bis 6.2.5.2), as are malformed directives.
    let (status, _, took) = get(port, &format!("/playlist.m3u8?_HLS_msn={}", next + 10));
    assert_eq!(status, 400);
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The Advance Part Limit is 3 / 0.2 = 15 parts.
    let (_, body, _) = get(port, "/playlist.m3u8");
    let p = position(&body);
    let far = p.open_parts + 20;
    let (status, _, _) = get(
        port,
        &format!("/playlist.m3u8?_HLS_msn={}&_HLS_part={far}", p.next_msn),
    );
    assert_eq!(status, 400);
    assert_eq!(get(port, "/playlist.m3u8?_HLS_part=1").0, 400);
    assert_eq!(get(port, "/playlist.m3u8?_HLS_msn=x").0, 400);

    // The preload-hinted part before it exists: held, then served.
    let (_, body, _) = get(port, "/playlist.m3u8");
    let hint = position(&body).preload_hint.expect("a preload hint");
    assert!(!live.dir.join(&hint).exists(), "{hint} exists already");
    let (status, body, took) = get(port, &format!("/{hint}"));
    assert_eq!(status, 200, "{hint}");
    assert_eq!(&body[4..8], b"moof", "{hint}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // Any other part that does not exist is not held: 404 at once.
    let (status, _, took) = get(port, "/segment99999.0.m4s");
    assert_eq!(status, 404);
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Delta updates once the playlist is longer than CAN-SKIP-UNTIL (6 s) plus a segment.
    assert!(
        wait_for(Duration::from_secs(20), || {
            read_playlist(&live.dir.join("playlist.m3u8"))
                .segments
                .len()
                >= 9
        }),
        "the playlist did not grow to 9 segments"
    );
    let (status, body, _) = get(port, "/playlist.m3u8?_HLS_skip=YES");
    assert_eq!(status, 200);
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(text.contains("#EXT-X-VERSION:9\n"), "{text}");
    let skipped: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-SKIP:SKIPPED-SEGMENTS="))
        .unwrap_or_else(|| panic!("no EXT-X-SKIP: {text}"))
        .parse()
        .unwrap();
    assert!(skipped >= 1, "{text}");
    let delta = m3u8_rs::parse_media_playlist_res(&body).expect("m3u8-rs reads the delta update");
    let (_, full, _) = get(port, "/playlist.m3u8");
    let full = m3u8_rs::parse_media_playlist_res(&full).unwrap();
    assert_eq!(delta.media_sequence, full.media_sequence);
    // The delta lists the same last segment as the full playlist, and skipped + listed covers
    // it (a segment may have been added between the two requests).
    assert!(delta.segments.len() + skipped >= full.segments.len() - 1);
    // Skipping combined with a blocking request.
    let target = position(&text.into_bytes()).next_msn;
    let (status, body, _) = get(
        port,
        &format!("/playlist.m3u8?_HLS_msn={target}&_HLS_skip=YES"),
    );
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("#EXT-X-SKIP:"));

    // ffprobe still reads the output: the playlist, and a part behind its init segment.
    let url = format!("http://127.0.0.1:{port}/playlist.m3u8");
    let probe = ffprobe(&url, &["-read_intervals", "%+1"]);
    assert!(probe.streams.iter().any(|(_, t)| t == "video"), "{probe:?}");

    // Nothing new comes (the pipeline paused): a blocking request ends with a 503 at the bound,
    // three target durations (3 s), not before and not much later.
    live.pipeline.set_state(gst::State::Paused).expect("PAUSED");
    std::thread::sleep(Duration::from_millis(500));
    let (_, body, _) = get(port, "/playlist.m3u8");
    let p = position(&body);
    let (status, _, took) = get(
        port,
        &format!(
            "/playlist.m3u8?_HLS_msn={}&_HLS_part={}",
            p.next_msn,
            p.open_parts + 1
        ),
    );
    assert_eq!(status, 503);
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(5),
        "503 after {took:?}"
    );
    drop(live);
}
