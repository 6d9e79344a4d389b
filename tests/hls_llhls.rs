//! Low-Latency HLS (`part-duration`) from the element's own server: blocking playlist reloads
//! (`_HLS_msn`/`_HLS_part`: held until the part exists, answered then, not before, within a
//! bound; too far ahead refused), a preload-hinted part requested before it is complete
//! (streamed as it is written, chunked, the same bytes as its file), delta updates
//! (`_HLS_skip=YES`) read by m3u8-rs, ffprobe still reading the output, EXT-X-RENDITION-REPORT
//! with renditions, and MPEG-TS parts. (hls.js in `lowLatencyMode` and its latency:
//! tests/hls_browser.rs.)

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

/// A GET read as HTTP/1.1 chunked transfer coding: each data chunk with when it came (after
/// the request was sent) and whether `file` existed then.
struct Streamed {
    status: u16,
    transfer_encoding: Option<String>,
    content_length: bool,
    body: Vec<u8>,
    chunks: Vec<(Duration, bool)>,
    took: Duration,
}

fn stream_chunked(port: u16, path: &str, file: &std::path::Path) -> Streamed {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("response head");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push(line.trim_end().to_owned());
    }
    let status = head[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    let field = |name: &str| {
        head.iter().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let transfer_encoding = field("transfer-encoding");
    let content_length = field("content-length").is_some();
    let (mut body, mut chunks) = (Vec::new(), Vec::new());
    if transfer_encoding.as_deref() == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            let mut data = vec![0; n + 2];
            r.read_exact(&mut data).expect("chunk data");
            if n == 0 {
                break;
            }
            chunks.push((start.elapsed(), file.exists()));
            body.extend_from_slice(&data[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Streamed {
        status,
        transfer_encoding,
        content_length,
        body,
        chunks,
        took: start.elapsed(),
    }
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

    // The preload-hinted part: answered at once, its bytes streamed as they are written
    // (chunked), the body identical to the part's file. Timing on a busy machine varies: one of
    // a few tries must show bytes that came before the file existed, spread over the part.
    let mut streamed_early = false;
    for _ in 0..5 {
        let (_, body, _) = get(port, "/playlist.m3u8");
        let hint = position(&body).preload_hint.expect("a preload hint");
        let file = live.dir.join(&hint);
        let s = stream_chunked(port, &format!("/{hint}"), &file);
        assert_eq!(s.status, 200, "{hint}");
        if s.transfer_encoding.is_none() && s.content_length {
            // Complete before it was asked for (a loaded machine): served whole. Next try.
            eprintln!("{hint}: complete before it was asked for");
            continue;
        }
        assert_eq!(s.transfer_encoding.as_deref(), Some("chunked"), "{hint}");
        assert!(
            !s.content_length,
            "{hint}: Content-Length on a streamed part"
        );
        assert_eq!(&s.body[4..8], b"moof", "{hint}");
        let written = std::fs::read(&file).expect("the part's file after its stream ended");
        assert!(
            s.body == written,
            "{hint}: streamed bytes differ from the file"
        );
        assert!(s.took < Duration::from_secs(3), "{:?}", s.took);
        let first = s.chunks.first().expect("data chunks");
        let last = s.chunks.last().unwrap();
        eprintln!(
            "{hint}: {} bytes in {} chunks, first after {:?} (file existed: {}), last after {:?}",
            s.body.len(),
            s.chunks.len(),
            first.0,
            first.1,
            last.0
        );
        if !first.1 && s.chunks.len() > 1 && last.0 - first.0 >= Duration::from_millis(50) {
            streamed_early = true;
            break;
        }
    }
    assert!(
        streamed_early,
        "no hinted part was streamed before its file was written"
    );
    // curl decodes the chunked answer to the same bytes.
    let (_, body, _) = get(port, "/playlist.m3u8");
    let hint = position(&body).preload_hint.expect("a preload hint");
    let out = live.dir.join("curl.m4s");
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o"])
        .arg(&out)
        .arg(format!("http://127.0.0.1:{port}/{hint}"))
        .status()
        .expect("curl");
    assert!(curl.success(), "curl {hint}: {curl}");
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(live.dir.join(&hint)).unwrap(),
        "curl's copy of {hint} differs from the file"
    );
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

/// EXT-X-RENDITION-REPORT: with renditions, each LL-HLS media playlist reports where the other
/// rendition is (LAST-MSN/LAST-PART), fresh: a part the other's playlist lists among its last
/// ones, which a blocking request for it gets at once.
#[test]
fn renditions_report_each_other() {
    common::init();
    let sources = "videotestsrc is-live=true \
         ! video/x-raw,width=320,height=180,framerate=30/1 ! tee name=t \
         t. ! queue ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 \
         ! h264parse ! h.video_0 \
         t. ! queue ! videoscale ! video/x-raw,width=160,height=90 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse ! h.video_1";
    let live = serve_live_waiting_for("llabr", LL, sources, "video_1.m3u8");
    let port = live.port;
    for (me, other) in [("video_0", "video_1"), ("video_1", "video_0")] {
        let (status, body, _) = get(port, &format!("/{me}.m3u8"));
        assert_eq!(status, 200);
        let text = String::from_utf8(body.clone()).unwrap();
        m3u8_rs::parse_media_playlist_res(&body).expect("m3u8-rs reads the playlist");
        let reports: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-RENDITION-REPORT:"))
            .collect();
        assert_eq!(reports.len(), 1, "{me}: {text}");
        let attr = |name: &str| {
            reports[0]
                .split(',')
                .find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{me}: no {name} in {}", reports[0]))
                .to_owned()
        };
        assert_eq!(attr("URI"), format!("\"{other}.m3u8\""));
        let msn: u64 = attr("LAST-MSN").parse().unwrap();
        let part: u64 = attr("LAST-PART").parse().unwrap();
        // The other rendition's playlist, right after: the reported part is among its last.
        let t0 = Instant::now();
        let (status, body, _) = get(
            port,
            &format!("/{other}.m3u8?_HLS_msn={msn}&_HLS_part={part}"),
        );
        let took = t0.elapsed();
        assert_eq!(status, 200);
        assert!(
            took < Duration::from_millis(150),
            "held {took:?}: a stale report"
        );
        let other_text = String::from_utf8(body).unwrap();
        let parts: Vec<&str> = other_text
            .lines()
            .filter(|l| l.starts_with("#EXT-X-PART:"))
            .collect();
        let name = format!("\"{other}_segment{msn:05}.{part}.m4s\"");
        let at = parts
            .iter()
            .position(|l| l.contains(&name))
            .unwrap_or_else(|| panic!("{me} reports {name}, not in {other_text}"));
        assert!(
            at + 4 >= parts.len(),
            "{me} reports {name}, part {at} of the {} listed",
            parts.len()
        );
        eprintln!(
            "{me} reports {other} at {msn}.{part}, part {at} of the {} listed",
            parts.len()
        );
    }
    // The multivariant playlist itself carries no report.
    let (_, master, _) = get(port, "/playlist.m3u8");
    assert!(!String::from_utf8_lossy(&master).contains("RENDITION-REPORT"));
    drop(live);
}

/// Video packets (frames) ffprobe demuxes from `file`, or None when it cannot read it.
fn video_packets(file: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("timeout")
        .args([
            "30",
            "ffprobe",
            "-v",
            "error",
            "-count_packets",
            "-select_streams",
            "v:0",
        ])
        .args(["-show_entries", "stream=nb_read_packets", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    // The first line: a TS input lists its streams under its program too.
    let first = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches(',');
    out.status.success().then(|| first.parse().ok())?
}

/// LL-HLS parts of MPEG-TS segments (`part-duration` without `segment-format=fmp4`): listed as
/// EXT-X-PART, each a file ffprobe reads on its own (starting with PAT/PMT), the segment their
/// bytes in order with as many video frames; blocking reloads and the streamed hinted part work
/// as for fMP4; ffprobe reads the LL playlist through the server.
#[test]
fn mpegts_parts() {
    common::init();
    let sources = format!(
        "{LIVE_VIDEO} audiotestsrc is-live=true samplesperbuffer=1024 \
         ! audio/x-raw,rate=44100 ! voaacenc ! aacparse ! h."
    );
    let live = serve_live(
        "llts",
        "part-duration=0.2 playlist-length=12 max-files=14",
        &sources,
    );
    let port = live.port;
    let (status, body, _) = get(port, "/playlist.m3u8");
    assert_eq!(status, 200);
    let text = String::from_utf8(body.clone()).unwrap();
    let now = position(&body);
    assert!((now.part_target_s - 0.2).abs() < 1e-9, "{now:?}");
    assert!(text.contains("#EXT-X-PART:"), "{text}");
    assert!(
        now.preload_hint
            .as_deref()
            .is_some_and(|h| h.ends_with(".ts")),
        "{now:?}"
    );
    m3u8_rs::parse_media_playlist_res(&body).expect("m3u8-rs reads it");

    // A complete segment with its parts listed: each part alone, and the segment.
    let segment = now.next_msn - 1;
    let name = format!("segment{segment:05}.ts");
    let parts: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("#EXT-X-PART:"))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|u| u.starts_with(&format!("segment{segment:05}.")))
        .map(str::to_owned)
        .collect();
    assert!(parts.len() >= 4, "{name}: parts {parts:?} in {text}");
    let mut joined = Vec::new();
    let mut frames = 0;
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part, &format!("segment{segment:05}.{i}.ts"));
        let file = live.dir.join(part);
        let data = std::fs::read(&file).unwrap();
        assert_eq!(&data[..2], &[0x47, 0x40], "{part} starts with the PAT");
        joined.extend_from_slice(&data);
        let probe = ffprobe(&file.to_string_lossy(), &[]);
        assert!(
            probe.streams.iter().any(|(_, t)| t == "video"),
            "{part}: {probe:?}"
        );
        let n = video_packets(&file).unwrap_or_else(|| panic!("ffprobe reads no frame of {part}"));
        assert!((1..=6).contains(&n), "{part}: {n} frames in 0.2 s");
        frames += n;
    }
    let whole = live.dir.join(&name);
    assert!(
        std::fs::read(&whole).unwrap() == joined,
        "{name} is its parts in order"
    );
    assert_eq!(video_packets(&whole), Some(frames), "{name}");
    let probe = ffprobe(&whole.to_string_lossy(), &[]);
    assert_eq!(probe.streams.len(), 2, "{name}: {probe:?}");

    // A blocking reload for the next part, then the hinted part streamed as it is written.
    let (msn, part) = (now.next_msn + 1, 0);
    let (status, body, took) = get(
        port,
        &format!("/playlist.m3u8?_HLS_msn={msn}&_HLS_part={part}"),
    );
    assert_eq!(status, 200);
    assert!(position(&body).has(msn, Some(part)));
    assert!(took < Duration::from_secs(3), "held {took:?}");
    let mut hint = position(&body).preload_hint.expect("a preload hint");
    let mut tries = 0;
    let (s, file) = loop {
        let file = live.dir.join(&hint);
        let s = stream_chunked(port, &format!("/{hint}"), &file);
        assert_eq!(s.status, 200);
        tries += 1;
        // Complete before it was asked for (a loaded machine): served whole; a fresh hint.
        if s.transfer_encoding.is_none() && s.content_length && tries < 5 {
            eprintln!("{hint}: complete before it was asked for");
            let (_, body, _) = get(port, "/playlist.m3u8");
            hint = position(&body).preload_hint.expect("a preload hint");
            continue;
        }
        break (s, file);
    };
    assert_eq!(s.transfer_encoding.as_deref(), Some("chunked"));
    assert!(
        s.body == std::fs::read(&file).unwrap(),
        "{hint}: streamed bytes differ"
    );
    assert!(s.chunks.len() > 1, "{hint}: {} chunks", s.chunks.len());

    // ffprobe through the server, from the LL playlist.
    let url = format!("http://127.0.0.1:{port}/playlist.m3u8");
    let probe = ffprobe(&url, &["-read_intervals", "%+1"]);
    assert!(probe.streams.iter().any(|(_, t)| t == "video"), "{probe:?}");
    drop(live);
}

/// Over HTTPS with HTTP/2 (ALPN h2), the preload-hinted part streams too: nghttp sees its DATA
/// frames arrive spread over the part's duration, and curl (HTTP/2) gets it without a
/// Content-Length, with the bytes of its file.
#[test]
fn hinted_part_streams_over_http2() {
    common::init();
    let certs = TempDir::new("llh2certs");
    let (cert, key) = common::rtmp::self_signed_cert(certs.path(), "IP:127.0.0.1");
    let live = serve_live(
        "llh2",
        &format!(
            "{LL} tls-certificate-file={} tls-key-file={}",
            cert.display(),
            key.display()
        ),
        LIVE_VIDEO,
    );
    let base = format!("https://127.0.0.1:{}", live.port);
    let hint = || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-k", "--http2", "--max-time", "5"])
            .arg(format!("{base}/playlist.m3u8"))
            .output()
            .expect("curl");
        assert!(out.status.success());
        position(&out.stdout).preload_hint.expect("a preload hint")
    };
    // nghttp -v: "[  0.123] recv DATA frame <length=N, flags=0x00, stream_id=13>" per frame.
    let mut spread_ok = false;
    for _ in 0..5 {
        let part = hint();
        let out = std::process::Command::new("timeout")
            .args(["10", "nghttp", "-nv"])
            .arg(format!("{base}/{part}"))
            .output()
            .expect("nghttp");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "nghttp {part}: {text}");
        let data: Vec<f64> = text
            .lines()
            .filter(|l| l.contains("recv DATA frame") && !l.contains("length=0,"))
            .filter_map(|l| {
                l.trim_start_matches('[')
                    .split(']')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        assert!(!text.contains("content-length"), "{part}: {text}");
        let spread = data.last().zip(data.first()).map_or(0.0, |(l, f)| l - f);
        eprintln!("{part}: {} DATA frames over {spread:.3} s", data.len());
        if data.len() > 1 && spread >= 0.05 {
            spread_ok = true;
            break;
        }
    }
    assert!(
        spread_ok,
        "no hinted part came in DATA frames spread over its duration"
    );
    // On a loaded machine the hinted part may be complete before curl asks for it (then it is
    // served whole, with a Content-Length): a few tries, each with a fresh hint.
    let copy = live.dir.join("h2copy.m4s");
    let headers = live.dir.join("h2headers.txt");
    let mut streamed = None;
    for _ in 0..5 {
        let part = hint();
        let status = std::process::Command::new("curl")
            .args(["-sS", "-k", "--http2", "--max-time", "5", "-D"])
            .arg(&headers)
            .arg("-o")
            .arg(&copy)
            .arg(format!("{base}/{part}"))
            .status()
            .expect("curl");
        assert!(status.success());
        let head = std::fs::read_to_string(&headers)
            .unwrap()
            .to_ascii_lowercase();
        assert!(head.starts_with("http/2 200"), "{head}");
        if !head.contains("content-length") {
            streamed = Some(part);
            break;
        }
        eprintln!("{part} was complete before it was asked for: {head}");
    }
    let part = streamed.expect("no hinted part was streamed without a Content-Length");
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(live.dir.join(&part)).unwrap(),
        "{part}: curl's HTTP/2 copy differs from the file"
    );
    drop(live);
}
