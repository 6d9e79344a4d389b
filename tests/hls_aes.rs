//! AES-128 encrypted HLS: ffmpeg decrypts and decodes it, from files and from the built-in server;
//! the segments on disk are really encrypted with the key and IV the playlist names.

mod common;

use std::process::Command;
use std::time::Duration;

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use common::hls::*;
use gst::prelude::*;

type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

/// Decodes `input` with ffmpeg and returns the number of video frames decoded.
fn ffmpeg_decoded_frames(input: &str) -> u64 {
    let (out, timed_out) = common::run(
        Command::new("ffmpeg").args([
            "-nostdin",
            "-v",
            "error",
            "-stats",
            // ffmpeg opens local files of unusual extensions (the .key files) only when told.
            "-allowed_extensions",
            "ALL",
            "-i",
            input,
            "-map",
            "0:v:0",
            "-f",
            "null",
            "-",
        ]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!timed_out, "ffmpeg timed out: {stderr}");
    assert!(out.status.success(), "ffmpeg failed: {stderr}");
    // "frame=  150 fps=..." — the last progress line counts every frame.
    let last = stderr
        .rsplit("frame=")
        .next()
        .unwrap_or_else(|| panic!("no frame count in {stderr}"));
    last.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in {stderr}"))
}

#[test]
fn ffmpeg_decrypts_and_decodes_every_frame() {
    let dir = TempDir::new("aes");
    run_sink(
        &format!(
            "location={} target-duration=1 playlist-type=vod encryption=aes-128 key-rotation=2",
            dir.str()
        ),
        &format!("{} {}", video(150, 30), audio(5.0)),
    );
    let path = dir.join("playlist.m3u8");
    let playlist = read_playlist(&path);
    assert_eq!(playlist.segments.len(), 5);
    assert!(playlist.version.unwrap() >= 2, "IV needs version 2");
    let mut key_uris = Vec::new();
    let mut current: Option<(Vec<u8>, [u8; 16])> = None;
    for s in &playlist.segments {
        let key = s
            .key
            .as_ref()
            .expect("every segment has its EXT-X-KEY (own IV)");
        assert_eq!(key.method, m3u8_rs::KeyMethod::AES128);
        let uri = key.uri.clone().unwrap();
        if !key_uris.contains(&uri) {
            key_uris.push(uri.clone());
        }
        let key_bytes = std::fs::read(dir.join(&uri)).unwrap();
        assert_eq!(key_bytes.len(), 16);
        let iv_hex = key.iv.as_deref().unwrap().trim_start_matches("0x");
        let iv: [u8; 16] = (0..16)
            .map(|i| u8::from_str_radix(&iv_hex[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        if let Some((_, prev_iv)) = &current {
            assert_ne!(prev_iv, &iv, "a fresh IV per segment");
        }
        current = Some((key_bytes.clone(), iv));
        let data = std::fs::read(dir.join(&s.uri)).unwrap();
        assert_eq!(data.len() % 16, 0);
        let key16: [u8; 16] = key_bytes.try_into().unwrap();
        let plain = Aes128CbcDec::new(&key16.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&data)
            .expect("decrypts with the named key and IV");
        assert_eq!(plain.len() % 188, 0);
        assert_eq!(plain[0], 0x47);
        assert!(
            (0..data.len() / 188).any(|i| data[i * 188] != 0x47),
            "the file on disk is not plain TS"
        );
    }
    // key-rotation=2: 5 segments use 3 keys.
    assert_eq!(key_uris, ["key00000.key", "key00001.key", "key00002.key"]);
    assert_eq!(ffmpeg_decoded_frames(&path.to_string_lossy()), 150);
    let probe = ffprobe(&path.to_string_lossy(), &["-allowed_extensions", "ALL"]);
    assert_eq!(probe.streams.len(), 2, "{probe:?}");
}

#[test]
fn ffmpeg_plays_an_encrypted_live_stream_from_the_built_in_server() {
    let dir = TempDir::new("aes-live");
    let (pipeline, sink) = pipeline(
        &format!(
            "location={} target-duration=1 playlist-length=3 max-files=5 encryption=aes-128 \
             key-rotation=1 http-port=0 http-address=127.0.0.1",
            dir.str()
        ),
        LIVE_VIDEO,
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let port = sink.property::<i32>("http-bound-port");
    let path = dir.join("playlist.m3u8");
    let ready = wait_for(Duration::from_secs(20), || {
        path.exists() && read_playlist(&path).segments.len() >= 3
    });
    if !ready {
        let _ = pipeline.set_state(gst::State::Null);
        panic!("no playlist with 3 segments");
    }
    let url = format!("http://127.0.0.1:{port}/playlist.m3u8");
    let (out, timed_out) = common::run(
        Command::new("ffmpeg").args([
            "-nostdin", "-v", "error", "-i", &url, "-t", "2", "-f", "null", "-",
        ]),
        Duration::from_secs(40),
    );
    let playlist = read_playlist(&path);
    let current_key = playlist.segments[0]
        .key
        .as_ref()
        .unwrap()
        .uri
        .clone()
        .unwrap();
    let (cur_status, cur_headers, cur_key) =
        http_request(port as u16, "GET", &format!("/{current_key}"));
    pipeline.set_state(gst::State::Null).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!timed_out, "ffmpeg timed out: {stderr}");
    assert!(out.status.success(), "ffmpeg failed: {stderr}");
    assert!(!stderr.contains("decrypt"), "{stderr}");
    assert_eq!(cur_status, 200);
    assert_eq!(cur_key.len(), 16);
    assert_eq!(
        header(&cur_headers, "content-type"),
        Some("application/octet-stream")
    );
}
