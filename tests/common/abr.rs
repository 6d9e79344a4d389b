//! The multivariant (ABR) input of the rshlssink tests: one test picture in three x264enc
//! renditions and AAC, for `video_%u` / `audio_%u` pads.

/// The renditions: (width, height, kbit/s).
pub const RENDITIONS: [(u32, u32, u32); 3] = [(640, 360, 800), (480, 270, 400), (320, 180, 200)];

/// `frames` of 640x360@30 video (live or not) in three x264enc renditions into `h.video_0..2`
/// and AAC into `h.audio_0`.
pub fn abr_sources(live: bool, frames: Option<u32>) -> String {
    let (num, audio_num) = match frames {
        Some(f) => (
            format!("num-buffers={f}"),
            format!(
                "num-buffers={}",
                (f64::from(f) / 30.0 * 44100.0 / 1024.0).ceil()
            ),
        ),
        None => (String::new(), String::new()),
    };
    let mut s = format!(
        "videotestsrc is-live={live} {num} \
         ! video/x-raw,width=640,height=360,framerate=30/1,format=I420 ! tee name=t "
    );
    for (i, (w, h, kbps)) in RENDITIONS.iter().enumerate() {
        s += &format!(
            "t. ! queue ! videoscale ! video/x-raw,width={w},height={h} \
             ! x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} \
             ! h264parse ! h.video_{i} "
        );
    }
    s += &format!(
        "audiotestsrc is-live={live} {audio_num} samplesperbuffer=1024 \
         ! audio/x-raw,rate=44100 ! voaacenc ! aacparse ! h.audio_0"
    );
    s
}

/// What an upload of a live [`abr_sources`] stream with `max-files=max_files` must hold in `dir`
/// (the origin's directory, or objects fetched back into one), `files` being its listing: the
/// multivariant `playlist.m3u8` naming three video variants and the audio group, each of whose
/// media playlists is there and ended, lists only segments that are there and that ffprobe reads,
/// and no more than `max_files` segments per rendition (expired ones were deleted).
pub fn assert_uploaded_multivariant(dir: &std::path::Path, files: &[String], max_files: usize) {
    let bytes = std::fs::read(dir.join("playlist.m3u8")).expect("the multivariant playlist");
    let m = m3u8_rs::parse_master_playlist_res(&bytes).unwrap_or_else(|e| {
        panic!(
            "not a multivariant playlist: {e:?}\n{}",
            String::from_utf8_lossy(&bytes)
        )
    });
    // I-frame playlists (`i-frame-playlist`): uploaded too, naming segments that are there.
    for v in m.variants.iter().filter(|v| v.is_i_frame) {
        assert!(
            files.contains(&v.uri),
            "{} was not uploaded: {files:?}",
            v.uri
        );
        let p = super::hls::read_playlist(&dir.join(&v.uri));
        assert!(
            p.i_frames_only && p.end_list && !p.segments.is_empty(),
            "{p:?}"
        );
        for s in &p.segments {
            let r = s.byte_range.as_ref().expect("EXT-X-BYTERANGE");
            let size = std::fs::metadata(dir.join(&s.uri)).map_or(0, |m| m.len());
            assert!(r.offset.unwrap_or(0) + r.length <= size, "{}: {r:?}", s.uri);
        }
    }
    let variants: Vec<&m3u8_rs::VariantStream> =
        m.variants.iter().filter(|v| !v.is_i_frame).collect();
    assert_eq!(variants.len(), RENDITIONS.len(), "{m:?}");
    assert_eq!(m.alternatives.len(), 1, "{m:?}");
    let mut uris: Vec<String> = variants.iter().map(|v| v.uri.clone()).collect();
    uris.extend(m.alternatives.iter().filter_map(|a| a.uri.clone()));
    assert_eq!(
        uris,
        [
            "video_0.m3u8",
            "video_1.m3u8",
            "video_2.m3u8",
            "audio_0.m3u8"
        ]
    );
    for (v, (w, h, _)) in variants.iter().zip(RENDITIONS) {
        let r = v.resolution.expect("RESOLUTION");
        assert_eq!((r.width, r.height), (u64::from(w), u64::from(h)));
        assert!(v.bandwidth > 0 && v.codecs.is_some(), "{v:?}");
    }
    for uri in &uris {
        assert!(files.contains(uri), "{uri} was not uploaded: {files:?}");
        let playlist = super::hls::read_playlist(&dir.join(uri));
        assert!(playlist.end_list, "{uri} has no ENDLIST");
        assert!(!playlist.segments.is_empty(), "{uri}: {playlist:?}");
        for s in &playlist.segments {
            assert!(
                files.contains(&s.uri),
                "{uri} lists {} which is missing",
                s.uri
            );
        }
        super::hls::assert_segments_readable(dir, &playlist);
        let name = uri.trim_end_matches(".m3u8");
        let segments = files
            .iter()
            .filter(|f| f.starts_with(&format!("{name}_segment")))
            .count();
        assert!(
            segments <= max_files && segments >= playlist.segments.len(),
            "{segments} segments of {name} kept: {files:?}"
        );
    }
    // Nothing but the renditions' files.
    for f in files {
        assert!(
            f == "playlist.m3u8"
                || uris
                    .iter()
                    .any(|u| f.starts_with(u.trim_end_matches(".m3u8"))),
            "{f} was uploaded too"
        );
    }
}
