//! Multivariant HLS (adaptive bitrate): three x264enc renditions and an AAC rendition into one
//! rshlssink (`video_%u` / `audio_%u` pads), read by readers we did not write. m3u8-rs parses the
//! multivariant playlist (three variants with measured BANDWIDTH / AVERAGE-BANDWIDTH, CODECS,
//! RESOLUTION, FRAME-RATE, the audio group), ffprobe reads every variant's media playlist and
//! every segment, and the segments of all renditions cover the same time ranges (EXTINF and the
//! first PTS per sequence number within a frame). hls.js in Chromium lists the three levels and
//! switches when told to: tests/hls_browser.rs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::abr::{RENDITIONS, abr_sources, assert_uploaded_multivariant};
use common::hls::*;
use common::origin::{Nginx, files_in};

const FRAME: f64 = 1.0 / 30.0;

/// The first stream's (codec, width, height, start time) of `kind` ("v" or "a") in `file`.
fn first_stream(file: &str, kind: &str) -> (String, u32, u32, f64) {
    let (out, timed_out) = common::run(
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", &format!("{kind}:0")])
            .args([
                "-show_entries",
                "stream=codec_name,width,height,start_time",
                "-of",
                "default=noprint_wrappers=1",
                file,
            ]),
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !timed_out && out.status.success(),
        "ffprobe {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let get = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_owned()
    };
    (
        get("codec_name"),
        get("width").parse().unwrap_or(0),
        get("height").parse().unwrap_or(0),
        get("start_time")
            .parse()
            .unwrap_or_else(|_| panic!("no start_time for {file}: {stdout}")),
    )
}

fn master(path: &std::path::Path) -> m3u8_rs::MasterPlaylist {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    m3u8_rs::parse_master_playlist_res(&bytes).unwrap_or_else(|e| {
        panic!(
            "not a multivariant playlist: {e:?}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// Bits per second of the segments of `playlist` that last at least half a target duration,
/// each (the peak BANDWIDTH must cover them) and all together (AVERAGE-BANDWIDTH).
fn rates(dir: &TempDir, playlist: &m3u8_rs::MediaPlaylist, target: f64) -> (f64, f64) {
    let (mut peak, mut bytes, mut seconds) = (0.0f64, 0.0, 0.0);
    for s in &playlist.segments {
        let size = std::fs::metadata(dir.join(&s.uri)).unwrap().len() as f64;
        let d = f64::from(s.duration);
        if d >= 0.5 * target {
            peak = peak.max(size * 8.0 / d);
        }
        bytes += size;
        seconds += d;
    }
    (peak, bytes * 8.0 / seconds)
}

/// The init segment (EXT-X-MAP) segment `i` of `playlist` is read with, if any: the last one
/// named at or before it.
fn map_of(playlist: &m3u8_rs::MediaPlaylist, i: usize) -> Option<&m3u8_rs::Map> {
    playlist.segments[..=i]
        .iter()
        .rev()
        .find_map(|s| s.map.as_ref())
}

/// What ffprobe reads for segment `i`: the file, or (fMP4) its init segment and it in one file.
fn probe_input(dir: &TempDir, playlist: &m3u8_rs::MediaPlaylist, i: usize) -> String {
    let segment = &playlist.segments[i];
    let path = dir.join(&segment.uri);
    let Some(map) = map_of(playlist, i) else {
        return path.to_string_lossy().into_owned();
    };
    let mut data = std::fs::read(dir.join(&map.uri)).unwrap();
    data.extend(std::fs::read(&path).unwrap());
    let joined = dir.join(&format!("probe-{}.mp4", segment.uri));
    std::fs::write(&joined, data).unwrap();
    joined.to_string_lossy().into_owned()
}

/// The first SPS's profile_idc, constraint flags and level_idc: after a start code in TS, in
/// the avcC of the fMP4 init segment.
fn avc1_of(dir: &TempDir, playlist: &m3u8_rs::MediaPlaylist) -> String {
    let segment = &playlist.segments[0];
    let b = match &segment.map {
        None => {
            let data = std::fs::read(dir.join(&segment.uri)).unwrap();
            let at = data
                .windows(4)
                .position(|w| w == [0, 0, 1, 0x67])
                .expect("an SPS in the first segment");
            data[at + 4..at + 7].to_vec()
        }
        Some(map) => {
            let data = std::fs::read(dir.join(&map.uri)).unwrap();
            let at = data
                .windows(4)
                .position(|w| w == b"avcC")
                .expect("avcC in the init segment");
            data[at + 5..at + 8].to_vec()
        }
    };
    format!("avc1.{:02X}{:02X}{:02X}", b[0], b[1], b[2])
}

#[test]
fn three_renditions_and_audio_make_an_aligned_multivariant_stream() {
    aligned_multivariant_stream("");
}

#[test]
fn three_fmp4_renditions_and_audio_make_an_aligned_multivariant_stream() {
    aligned_multivariant_stream("segment-format=fmp4");
}

fn aligned_multivariant_stream(props: &str) {
    let dir = TempDir::new("abr");
    run_sink(
        &format!(
            "location={} target-duration=2 playlist-type=vod {props}",
            dir.str()
        ),
        &abr_sources(false, Some(200)),
    );
    let files = dir.files();
    let m = master(&dir.join("playlist.m3u8"));
    eprintln!(
        "{}",
        std::fs::read_to_string(dir.join("playlist.m3u8")).unwrap()
    );

    // The audio group.
    assert_eq!(m.alternatives.len(), 1, "{m:?}");
    let a = &m.alternatives[0];
    assert_eq!(a.media_type, m3u8_rs::AlternativeMediaType::Audio);
    assert_eq!(a.group_id, "audio");
    assert_eq!(a.uri.as_deref(), Some("audio_0.m3u8"));
    assert!(a.default && a.autoselect);
    let audio = read_playlist(&dir.join("audio_0.m3u8"));
    let (audio_peak, audio_average) = rates(&dir, &audio, 2.0);

    // A variant per rendition, in the order of the pads.
    assert_eq!(m.variants.len(), 3, "{m:?}");
    let mut playlists = Vec::new();
    for (i, (v, (w, h, _))) in m.variants.iter().zip(RENDITIONS).enumerate() {
        assert_eq!(v.uri, format!("video_{i}.m3u8"));
        assert!(files.contains(&v.uri), "{} missing: {files:?}", v.uri);
        let res = v.resolution.expect("RESOLUTION");
        assert_eq!((res.width, res.height), (u64::from(w), u64::from(h)));
        assert_eq!(v.frame_rate, Some(30.0));
        assert_eq!(v.audio.as_deref(), Some("audio"));
        let playlist = read_playlist(&dir.join(&v.uri));
        // avc1.PPCCLL is the profile, constraint flags and level of the stream's own SPS.
        let codecs = v.codecs.as_deref().expect("CODECS");
        let avc1 = avc1_of(&dir, &playlist);
        assert_eq!(codecs, format!("{avc1},mp4a.40.2"), "CODECS");
        assert!(playlist.end_list);
        assert!(playlist.segments.len() >= 3, "{playlist:?}");
        // Measured: the peak covers every full segment with the audio's, and the average is
        // the files' (EXTINF rounding aside).
        let (peak, average) = rates(&dir, &playlist, 2.0);
        let bandwidth = v.bandwidth as f64;
        assert!(
            bandwidth >= (peak + audio_peak) * 0.999,
            "BANDWIDTH {bandwidth} below the peak segment rate {peak} + {audio_peak}"
        );
        let avg = v.average_bandwidth.expect("AVERAGE-BANDWIDTH") as f64;
        let expected = average + audio_average;
        assert!(
            (avg - expected).abs() <= expected * 0.01,
            "AVERAGE-BANDWIDTH {avg}, the files make {expected}"
        );
        assert!(avg <= bandwidth);
        // ffprobe reads the variant's media playlist.
        let probe = ffprobe(&dir.join(&v.uri).to_string_lossy(), &[]);
        assert_eq!(probe.streams, [("h264".to_owned(), "video".to_owned())]);
        playlists.push(playlist);
    }
    // The bit rates follow the encoders' (800, 400, 200 kbit/s).
    assert!(
        m.variants[0].bandwidth > m.variants[1].bandwidth
            && m.variants[1].bandwidth > m.variants[2].bandwidth,
        "{m:?}"
    );
    let probe = ffprobe(&dir.join("audio_0.m3u8").to_string_lossy(), &[]);
    assert_eq!(probe.streams, [("aac".to_owned(), "audio".to_owned())]);

    // Aligned: every rendition has the same segments, each lasting as long and starting at the
    // same PTS (within a frame), and the audio's start with them.
    let n = playlists[0].segments.len();
    for p in &playlists {
        assert_eq!(p.segments.len(), n, "segment counts differ");
    }
    assert!(
        audio.segments.len().abs_diff(n) <= 1,
        "{} audio segments, {n} video",
        audio.segments.len()
    );
    for seq in 0..n {
        let first = &playlists[0].segments[seq];
        let (_, _, _, start) = first_stream(&probe_input(&dir, &playlists[0], seq), "v");
        for (i, p) in playlists.iter().enumerate() {
            let s = &p.segments[seq];
            let (codec, w, h, pts) = first_stream(&probe_input(&dir, p, seq), "v");
            assert_eq!(
                (codec.as_str(), w, h),
                ("h264", RENDITIONS[i].0, RENDITIONS[i].1)
            );
            assert!(
                (f64::from(s.duration) - f64::from(first.duration)).abs() < FRAME / 2.0,
                "segment {seq}: video_{i} lasts {}, video_0 {}",
                s.duration,
                first.duration
            );
            assert!(
                (pts - start).abs() < FRAME / 2.0,
                "segment {seq}: video_{i} starts at {pts}, video_0 at {start}"
            );
        }
        // The audio is cut at the first AAC frame at or after the boundary (23 ms frames).
        if seq < audio.segments.len() {
            let (codec, _, _, pts) = first_stream(&probe_input(&dir, &audio, seq), "a");
            assert_eq!(codec, "aac");
            assert!(
                (pts - start).abs() < FRAME,
                "segment {seq}: audio starts at {pts}, video at {start}"
            );
        }
        eprintln!("segment {seq}: {:.3} s from {start:.3}", first.duration);
    }
}

/// The multivariant playlist and every rendition's files come from the element's server.
#[test]
fn the_server_serves_the_multivariant_stream() {
    let live = serve_live_waiting_for("abrlive", "", &abr_sources(true, None), "video_2.m3u8");
    let port = live.port;
    assert!(
        wait_for(Duration::from_secs(20), || live
            .dir
            .join("playlist.m3u8")
            .exists()),
        "no multivariant playlist"
    );
    let (status, headers, body) = http_request(port, "GET", "/playlist.m3u8");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    let m = m3u8_rs::parse_master_playlist_res(&body).expect("multivariant playlist");
    assert_eq!(m.variants.len(), 3);
    for v in &m.variants {
        let probe = ffprobe(&format!("http://127.0.0.1:{port}/{}", v.uri), &[]);
        assert!(
            probe.streams.iter().any(|(c, _)| c == "h264"),
            "{}: {probe:?}",
            v.uri
        );
    }
    // Live too, the renditions' segments of each sequence number last as long.
    let playlists: Vec<m3u8_rs::MediaPlaylist> = (0..3)
        .map(|i| read_playlist(&live.dir.join(&format!("video_{i}.m3u8"))))
        .collect();
    for (i, s) in playlists[0].segments.iter().enumerate() {
        let seq = playlists[0].media_sequence + i as u64;
        for p in &playlists[1..] {
            let Some(other) = seq
                .checked_sub(p.media_sequence)
                .and_then(|i| p.segments.get(i as usize))
            else {
                continue;
            };
            assert!(
                (f64::from(other.duration) - f64::from(s.duration)).abs() < FRAME / 2.0,
                "live segment {seq}: {} s and {} s",
                s.duration,
                other.duration
            );
        }
    }
    assert!(playlists[0].segments.len() >= 2);
    // ffprobe through the multivariant playlist sees every variant and the audio.
    let probe = ffprobe(&format!("http://127.0.0.1:{port}/playlist.m3u8"), &[]);
    let h264 = probe.streams.iter().filter(|(c, _)| c == "h264").count();
    assert_eq!(h264, 3, "{probe:?}");
    assert!(probe.streams.iter().any(|(c, _)| c == "aac"), "{probe:?}");
}

/// Uploaded to an HTTP origin (nginx WebDAV, PUT and DELETE): the multivariant playlist lists
/// the uploaded media playlists, whose segments are there (expired ones deleted per rendition),
/// and ffprobe plays the stream through the origin: three H.264 variants and the AAC group.
#[test]
fn the_multivariant_stream_uploads_to_an_http_origin() {
    let nginx = Nginx::start();
    run_sink(
        &format!(
            "location=http://127.0.0.1:{}/abr target-duration=1 playlist-length=3 max-files=4",
            nginx.port
        ),
        &abr_sources(false, Some(240)),
    );
    let remote = nginx.www("abr");
    let files = files_in(&remote);
    assert_uploaded_multivariant(&remote, &files, 4);
    let log = nginx.access_log();
    for name in ["video_0", "video_1", "video_2", "audio_0"] {
        assert!(
            log.contains(&format!("\"PUT /abr/{name}.m3u8 HTTP/1.1\" 20")),
            "{name}.m3u8 not PUT: {log}"
        );
        assert!(
            log.contains(&format!(
                "\"DELETE /abr/{name}_segment00000.ts HTTP/1.1\" 204"
            )),
            "{name}'s first segment not deleted: {log}"
        );
    }
    let probe = ffprobe(
        &format!("http://127.0.0.1:{}/abr/playlist.m3u8", nginx.port),
        &[],
    );
    let h264 = probe.streams.iter().filter(|(c, _)| c == "h264").count();
    assert_eq!(h264, 3, "{probe:?}");
    assert!(probe.streams.iter().any(|(c, _)| c == "aac"), "{probe:?}");
}

/// AES-128 with renditions: every rendition encrypts with keys of its own (`NAME_key00000.key`,
/// rotated at the same sequence numbers), each segment decrypts with the key and IV its media
/// playlist names, and ffprobe reads every variant and the whole multivariant stream.
#[test]
fn encrypted_renditions_each_have_their_own_keys() {
    encrypted_renditions("");
}

#[test]
fn encrypted_fmp4_renditions_each_have_their_own_keys() {
    encrypted_renditions("segment-format=fmp4");
}

fn encrypted_renditions(props: &str) {
    use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
    type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;
    let dir = TempDir::new("abr-aes");
    run_sink(
        &format!(
            "location={} target-duration=1 playlist-type=vod encryption=aes-128 key-rotation=2 \
             {props}",
            dir.str()
        ),
        &abr_sources(false, Some(150)),
    );
    let mut first_keys = Vec::new();
    for name in ["video_0", "video_1", "video_2", "audio_0"] {
        let playlist = read_playlist(&dir.join(&format!("{name}.m3u8")));
        assert!(playlist.segments.len() >= 4, "{name}: {playlist:?}");
        let mut uris = Vec::new();
        let mut key: Option<m3u8_rs::Key> = None;
        for s in &playlist.segments {
            if let Some(k) = &s.key {
                key = Some(k.clone());
            }
            let k = key.as_ref().expect("a key for every segment");
            assert_eq!(k.method, m3u8_rs::KeyMethod::AES128, "{name}");
            let uri = k.uri.clone().unwrap();
            assert!(uri.starts_with(&format!("{name}_key")), "{name}: {uri}");
            if !uris.contains(&uri) {
                uris.push(uri.clone());
            }
            let key_bytes: [u8; 16] = std::fs::read(dir.join(&uri))
                .unwrap()
                .try_into()
                .expect("16-byte key");
            let iv_hex = k.iv.as_deref().unwrap().trim_start_matches("0x");
            let iv: [u8; 16] = (0..16)
                .map(|i| u8::from_str_radix(&iv_hex[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<_>>()
                .try_into()
                .unwrap();
            let data = std::fs::read(dir.join(&s.uri)).unwrap();
            let plain = Aes128CbcDec::new(&key_bytes.into(), &iv.into())
                .decrypt_padded_vec_mut::<Pkcs7>(&data)
                .unwrap_or_else(|_| panic!("{} decrypts with {uri}", s.uri));
            if props.contains("fmp4") {
                assert_eq!(&plain[4..8], b"styp", "{}", s.uri);
                assert_ne!(&data[4..8], b"styp", "{} is not encrypted", s.uri);
            } else {
                assert_eq!(plain[0], 0x47, "{}", s.uri);
                assert!(
                    (0..data.len() / 188).any(|i| data[i * 188] != 0x47),
                    "{} is not encrypted",
                    s.uri
                );
            }
            if first_keys.len() < 4 && uris.len() == 1 && s.uri == playlist.segments[0].uri {
                first_keys.push(key_bytes);
            }
        }
        // key-rotation=2: a new key every two segments.
        assert_eq!(
            uris.len(),
            playlist.segments.len().div_ceil(2),
            "{name}: {uris:?}"
        );
        let probe = ffprobe(
            &dir.join(&format!("{name}.m3u8")).to_string_lossy(),
            &["-allowed_extensions", "ALL"],
        );
        assert_eq!(probe.streams.len(), 1, "{name}: {probe:?}");
    }
    // Four renditions, four different keys.
    first_keys.sort();
    first_keys.dedup();
    assert_eq!(first_keys.len(), 4);
    let probe = ffprobe(
        &dir.join("playlist.m3u8").to_string_lossy(),
        &["-allowed_extensions", "ALL"],
    );
    let h264 = probe.streams.iter().filter(|(c, _)| c == "h264").count();
    assert_eq!(h264, 3, "{probe:?}");
    assert!(probe.streams.iter().any(|(c, _)| c == "aac"), "{probe:?}");
}

/// Renditions cannot be mixed with the single-stream pads.
#[test]
fn renditions_and_plain_pads_do_not_mix() {
    common::init();
    let sink = gst::ElementFactory::make("rshlssink").build().unwrap();
    use gst::prelude::*;
    let v0 = sink.request_pad_simple("video_%u").expect("video_%u");
    assert_eq!(v0.name(), "video_0");
    let v1 = sink.request_pad_simple("video_%u").expect("video_%u");
    assert_eq!(v1.name(), "video_1");
    assert!(sink.request_pad_simple("video").is_none());
    assert!(sink.request_pad_simple("audio").is_none());
    sink.release_request_pad(&v0);
    sink.release_request_pad(&v1);
    let plain = sink.request_pad_simple("video").expect("video");
    assert!(sink.request_pad_simple("video_%u").is_none());
    sink.release_request_pad(&plain);
}
