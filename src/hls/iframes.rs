//! I-frame playlists: where the keyframes are inside finished segments, and the
//! `EXT-X-I-FRAMES-ONLY` playlist that names each of them as a byte range of its segment.
//!
//! Specifications: RFC 8216 §4.3.3.6 (EXT-X-I-FRAMES-ONLY: each entry is a byte range holding one
//! I-frame, its EXTINF the time to the next I-frame), §4.3.2.2 (EXT-X-BYTERANGE), §4.3.2.5
//! (EXT-X-MAP in an I-frame playlist, version 5), §4.3.4.3 (EXT-X-I-FRAME-STREAM-INF, in the
//! multivariant playlist); ISO/IEC 13818-1 §2.4.3.2-§2.4.3.5 (TS packets, adaptation field,
//! random_access_indicator), §2.4.3.6-§2.4.3.7 (PES header, PTS); ISO/IEC 14496-12 §8.8.7-§8.8.12
//! (tfhd, trun, tfdt) with `default-base-is-moof`.
//!
//! MPEG-TS: an I-frame is the video PES whose first packet has the random_access_indicator; its
//! range runs from the last PAT before it (the muxer writes PAT and PMT right before every
//! keyframe, so a player finds the tables in the range) to the end of its last packet (audio
//! packets interleaved with it are in the range, those after it are not).
//! fMP4: an I-frame is a fragment (moof) whose video run starts with a sync sample; its range is
//! the moof, the mdat header and that sample (the video's data comes first in the mdat), which is
//! what a player needs with the init segment (EXT-X-MAP). Keyframes in the middle of a fragment
//! are not listed (fragments are cut at keyframes: segment starts, and LL-HLS parts that start
//! with one). Nothing here trusts the bytes: a malformed segment gives fewer entries, never a
//! panic.

use m3u8_rs::{ByteRange, MediaPlaylist, MediaSegment};

const TS_PACKET: usize = 188;
/// 90 kHz, the PTS clock of MPEG-TS.
pub const TS_TIMESCALE: u32 = 90_000;

/// One I-frame: its byte range in the segment and its presentation time (track timescale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IFrame {
    pub offset: u64,
    pub length: u64,
    pub time: u64,
}

/// An entry of the I-frame playlist: a byte range of a segment and how long it stands for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IFrameEntry {
    pub offset: u64,
    pub length: u64,
    pub duration_s: f64,
}

fn pes_pts(payload: &[u8]) -> Option<u64> {
    // 00 00 01 stream_id len(2) flags(2) header_len, then PTS when PTS_DTS_flags has it.
    if payload.len() < 14 || payload[..3] != [0, 0, 1] || payload[7] & 0x80 == 0 {
        return None;
    }
    let p = &payload[9..14];
    Some(
        (u64::from(p[0] >> 1) & 0x07) << 30
            | u64::from(p[1]) << 22
            | (u64::from(p[2]) >> 1) << 15
            | u64::from(p[3]) << 7
            | u64::from(p[4]) >> 1,
    )
}

/// The I-frames of a transport stream segment (whole 188-byte packets); times in 90 kHz.
pub fn scan_ts(data: &[u8]) -> Vec<IFrame> {
    let mut out = Vec::new();
    let mut last_pat: Option<usize> = None;
    // The keyframe whose range is open: (start of its range, its PID, its PTS), and the end of
    // its last packet so far (what follows it on other PIDs is left out).
    let mut open: Option<(usize, u16, u64)> = None;
    let mut open_end = 0usize;
    let mut pts_base: Option<u64> = None;
    for (i, p) in data.chunks_exact(TS_PACKET).enumerate() {
        let at = i * TS_PACKET;
        if p[0] != 0x47 {
            break;
        }
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        if pid == 0 {
            last_pat = Some(at);
            continue;
        }
        if p[1] & 0x40 == 0 {
            if open.is_some_and(|(_, open_pid, _)| open_pid == pid) {
                open_end = at + TS_PACKET;
            }
            continue;
        }
        let afc = (p[3] >> 4) & 0x03;
        let (payload_at, rai) = if afc & 0x02 != 0 {
            let len = usize::from(p[4]);
            (5 + len, len > 0 && p[5] & 0x40 != 0)
        } else {
            (4, false)
        };
        let Some(payload) = p.get(payload_at..).filter(|_| afc & 0x01 != 0) else {
            continue;
        };
        let video = payload.len() >= 4 && payload[..3] == [0, 0, 1] && payload[3] & 0xf0 == 0xe0;
        if !video {
            continue;
        }
        // A video PES starts here: it ends the open I-frame's range.
        if let Some((start, open_pid, time)) = open
            && open_pid == pid
        {
            out.push(IFrame {
                offset: start as u64,
                length: (open_end - start) as u64,
                time,
            });
            open = None;
        }
        if rai && open.is_none() {
            let Some(pts) = pes_pts(payload) else {
                continue;
            };
            // Times relative to the first, unwrapped (33 bits).
            let base = *pts_base.get_or_insert(pts);
            let time = pts.wrapping_sub(base) & ((1 << 33) - 1);
            open = Some((last_pat.unwrap_or(at), pid, time));
            open_end = at + TS_PACKET;
        }
    }
    if let Some((start, _, time)) = open {
        out.push(IFrame {
            offset: start as u64,
            length: (open_end - start) as u64,
            time,
        });
    }
    out
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The boxes in `d`: (type, start, end), stopping at the first malformed one.
fn boxes(d: &[u8]) -> Vec<([u8; 4], usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(size) = u32_at(d, at) {
        let Some(kind) = d.get(at + 4..at + 8) else {
            break;
        };
        let size = match size {
            1 => match u64_at(d, at + 8).and_then(|s| usize::try_from(s).ok()) {
                Some(s) => s,
                None => break,
            },
            0 => d.len() - at,
            s => s as usize,
        };
        let Some(end) = at.checked_add(size).filter(|&e| size >= 8 && e <= d.len()) else {
            break;
        };
        out.push((kind.try_into().unwrap_or([0; 4]), at, end));
        at = end;
    }
    out
}

/// A tfhd's defaults for the samples of its traf (the trex's are not known here): sample size
/// and sample flags, when it carries them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TrackDefaults {
    size: Option<u32>,
    flags: Option<u32>,
}

/// From a tfhd body: (track_ID, default-base-is-moof without an explicit base offset, defaults).
fn track_header(tfhd: &[u8]) -> Option<(u32, bool, TrackDefaults)> {
    // version(1) flags(3) track_ID(4) [base_data_offset(8)] [sample_description_index(4)]
    // [default_sample_duration(4)] [default_sample_size(4)] [default_sample_flags(4)]
    let flags = u32_at(tfhd, 0)? & 0x00ff_ffff;
    let id = u32_at(tfhd, 4)?;
    let mut at = 8usize;
    let mut field = |bit: u32, len: usize| -> Option<Option<usize>> {
        if flags & bit == 0 {
            return Some(None);
        }
        let here = at;
        at = at.checked_add(len)?;
        Some(Some(here))
    };
    let _base = field(0x1, 8)?;
    let _description = field(0x2, 4)?;
    let _duration = field(0x8, 4)?;
    let size = field(0x10, 4)?;
    let sample_flags = field(0x20, 4)?;
    let defaults = TrackDefaults {
        size: match size {
            Some(at) => Some(u32_at(tfhd, at)?),
            None => None,
        },
        flags: match sample_flags {
            Some(at) => Some(u32_at(tfhd, at)?),
            None => None,
        },
    };
    // Only default-base-is-moof with no explicit base offset.
    Some((id, flags & 0x02_0000 != 0 && flags & 0x1 == 0, defaults))
}

/// From a trun: the data offset and the first sample's (duration-free) size, decode-to-
/// presentation offset and whether it is a sync sample. Its flags are first_sample_flags, else
/// its own sample_flags, else the tfhd's default; its size its own, else the tfhd's default.
fn first_sample(trun: &[u8], defaults: TrackDefaults) -> Option<(i64, u64, i64, bool)> {
    // version(1) flags(3) sample_count(4) [data_offset] [first_sample_flags] samples...
    let version = *trun.first()?;
    let flags = u32_at(trun, 0)? & 0x00ff_ffff;
    let count = u32_at(trun, 4)?;
    if count == 0 {
        return None;
    }
    let mut at = 8;
    let mut data_offset = 0i64;
    if flags & 0x1 != 0 {
        data_offset = i64::from(u32_at(trun, at)? as i32);
        at += 4;
    }
    let mut sample_flags = None;
    if flags & 0x4 != 0 {
        sample_flags = Some(u32_at(trun, at)?);
        at += 4;
    }
    if flags & 0x100 != 0 {
        at += 4;
    }
    let size = if flags & 0x200 != 0 {
        let s = u32_at(trun, at)?;
        at += 4;
        u64::from(s)
    } else {
        u64::from(defaults.size?)
    };
    if flags & 0x400 != 0 {
        let f = u32_at(trun, at)?;
        at += 4;
        sample_flags = sample_flags.or(Some(f));
    }
    let sample_flags = sample_flags.or(defaults.flags);
    let cts = if flags & 0x800 != 0 {
        let v = u32_at(trun, at)?;
        if version == 0 {
            i64::from(v)
        } else {
            i64::from(v as i32)
        }
    } else {
        0
    };
    // sample_is_non_sync_sample (bit 16) clear: a sync sample. No flags: not known to be one.
    let sync = sample_flags.is_some_and(|f| f & 0x0001_0000 == 0);
    Some((data_offset, size, cts, sync))
}

/// The I-frames of an fMP4 media segment (styp + moof/mdat fragments) for the video track
/// `track_id`; times are its presentation times in the track's timescale.
pub fn scan_fmp4(data: &[u8], track_id: u32) -> Vec<IFrame> {
    let mut out = Vec::new();
    for (kind, start, end) in boxes(data) {
        if &kind != b"moof" {
            continue;
        }
        let moof = &data[start + 8..end];
        for (kind, s, e) in boxes(moof) {
            if &kind != b"traf" {
                continue;
            }
            let traf = &moof[s + 8..e];
            let mut header = None;
            let mut decode_time = None;
            // The first trun, read once the tfhd's defaults are known (whatever the order).
            let mut trun = None;
            for (kind, s, e) in boxes(traf) {
                let body = &traf[s + 8..e];
                match &kind {
                    b"tfhd" => header = track_header(body),
                    b"tfdt" => {
                        decode_time = match body.first() {
                            Some(1) => u64_at(body, 4),
                            Some(_) => u32_at(body, 4).map(u64::from),
                            None => None,
                        }
                    }
                    b"trun" if trun.is_none() => trun = Some(body),
                    _ => {}
                }
            }
            let Some((id, true, defaults)) = header else {
                continue;
            };
            if id != track_id {
                continue;
            }
            let first = trun.and_then(|t| first_sample(t, defaults));
            let (Some(dt), Some((offset, size, cts, true))) = (decode_time, first) else {
                continue;
            };
            let Ok(offset) = u64::try_from(offset) else {
                continue;
            };
            let Some(length) = offset.checked_add(size) else {
                continue;
            };
            if (start as u64)
                .checked_add(length)
                .is_none_or(|e| e > data.len() as u64)
            {
                continue;
            }
            out.push(IFrame {
                offset: start as u64,
                length,
                time: dt.saturating_add_signed(cts),
            });
        }
    }
    out
}

/// Entries for the I-frames of one segment lasting `segment_s`: each lasts until the next, the
/// last until the end of the segment (the first starts the segment).
pub fn entries(frames: &[IFrame], timescale: u32, segment_s: f64) -> Vec<IFrameEntry> {
    let Some(first) = frames.first() else {
        return Vec::new();
    };
    let ts = f64::from(timescale.max(1));
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let end_s = match frames.get(i + 1) {
                Some(next) => next.time.saturating_sub(first.time) as f64 / ts,
                None => segment_s,
            };
            let start_s = f.time.saturating_sub(first.time) as f64 / ts;
            IFrameEntry {
                offset: f.offset,
                length: f.length,
                duration_s: (end_s - start_s).max(0.0),
            }
        })
        .collect()
}

/// The peak bit rate of `entries` (bits per second of the largest I-frame for its time), for
/// EXT-X-I-FRAME-STREAM-INF's BANDWIDTH.
pub fn peak_bps(entries: &[IFrameEntry]) -> u64 {
    entries
        .iter()
        .filter(|e| e.duration_s > 0.0)
        .map(|e| (e.length as f64 * 8.0 / e.duration_s).ceil() as u64)
        .max()
        .unwrap_or(0)
}

/// The I-frame playlist of `media` (the media playlist as m3u8-rs has it): each of its segments
/// replaced by the entries `of(sequence)` gives, with the same sequence numbers, discontinuities,
/// init segments, window and end. Needs version 4 (EXT-X-I-FRAMES-ONLY), 5 with EXT-X-MAP.
pub fn playlist<'a>(
    media: &MediaPlaylist,
    of: impl Fn(u64) -> Option<&'a [IFrameEntry]>,
) -> MediaPlaylist {
    let mut segments = Vec::new();
    let mut map_in_effect = None;
    let mut map_written = None;
    let mut discontinuity = false;
    for (i, s) in media.segments.iter().enumerate() {
        if s.map.is_some() {
            map_in_effect = s.map.clone();
        }
        discontinuity |= s.discontinuity;
        let Some(list) = of(media.media_sequence + i as u64) else {
            continue;
        };
        for e in list {
            let map = (map_in_effect != map_written).then(|| map_in_effect.clone());
            map_written = map_in_effect.clone();
            segments.push(MediaSegment {
                uri: s.uri.clone(),
                duration: e.duration_s as f32,
                byte_range: Some(ByteRange {
                    length: e.length,
                    offset: Some(e.offset),
                }),
                discontinuity: std::mem::take(&mut discontinuity),
                map: map.flatten(),
                ..Default::default()
            });
        }
    }
    let min = if map_in_effect.is_some() { 5 } else { 4 };
    MediaPlaylist {
        version: Some(media.version.unwrap_or(1).max(min)),
        target_duration: media.target_duration,
        media_sequence: media.media_sequence,
        segments,
        discontinuity_sequence: media.discontinuity_sequence,
        end_list: media.end_list,
        playlist_type: media.playlist_type.clone(),
        i_frames_only: true,
        ..Default::default()
    }
}

/// Where the I-frame playlist of the media playlist at `playlist_location` goes:
/// `video_0.m3u8` → `video_0-iframes.m3u8`.
pub fn iframes_location(playlist_location: &str) -> String {
    match playlist_location.strip_suffix(".m3u8") {
        Some(stem) => format!("{stem}-iframes.m3u8"),
        None => format!("{playlist_location}-iframes.m3u8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::fmp4::boxes::{FragmentSample, TrackRun, write_fragment, write_styp};
    use crate::hls::ts::{Codec, Frame, TsMuxer, TsMuxerConfig};

    fn frame(data: &[u8], pts_ms: i64, keyframe: bool) -> Frame<'_> {
        Frame {
            data,
            pts_ns: Some(pts_ms * 1_000_000),
            dts_ns: Some(pts_ms * 1_000_000),
            keyframe,
        }
    }

    /// Two keyframes (at 0 and 1 s) with delta frames and audio between them.
    fn ts_segment() -> (Vec<u8>, Vec<usize>) {
        let mut mux = TsMuxer::new(
            &[Codec::H264, Codec::Mpeg1Audio],
            TsMuxerConfig {
                table_interval_ns: 0,
            },
        )
        .unwrap();
        let idr = [0, 0, 0, 1, 0x65, 0x88, 0x84].repeat(100);
        let delta = [0, 0, 0, 1, 0x41, 0x9a].repeat(40);
        let mut out = Vec::new();
        let mut keyframe_at = Vec::new();
        for k in 0..2 {
            keyframe_at.push(out.len());
            mux.write_frame(0, &frame(&idr, k * 1000, true), &mut out);
            for f in 1..30 {
                mux.write_frame(
                    1,
                    &frame(&[0xff, 0xfb, 0x90, 0x00], k * 1000 + f * 33, true),
                    &mut out,
                );
                mux.write_frame(0, &frame(&delta, k * 1000 + f * 33, false), &mut out);
            }
        }
        (out, keyframe_at)
    }

    #[test]
    fn ts_keyframes_with_their_tables() {
        let (data, keyframe_at) = ts_segment();
        let frames = scan_ts(&data);
        assert_eq!(frames.len(), 2, "{frames:?}");
        for (f, &at) in frames.iter().zip(&keyframe_at) {
            // Starts at the PAT written right before the keyframe.
            assert_eq!(f.offset as usize, at);
            assert_eq!(data[at + 1] & 0x1f, 0);
            assert_eq!(data[at + 2], 0);
            assert_eq!(f.length as usize % TS_PACKET, 0);
            // PAT, PMT and the 700-byte keyframe in 4 packets: it ends with the keyframe's last
            // packet, before the audio frame muxed after it.
            assert_eq!(f.length as usize, 6 * TS_PACKET, "{f:?}");
            let last = at + f.length as usize - TS_PACKET;
            let pid = |i: usize| (u16::from(data[i + 1] & 0x1f) << 8) | u16::from(data[i + 2]);
            assert_eq!(pid(last), pid(at + 2 * TS_PACKET), "the keyframe's own PID");
            assert_ne!(pid(last + TS_PACKET), pid(last), "audio follows");
        }
        assert_eq!(frames[0].time, 0);
        assert_eq!(frames[1].time, 90_000);
        let e = entries(&frames, TS_TIMESCALE, 2.0);
        assert!((e[0].duration_s - 1.0).abs() < 1e-9 && (e[1].duration_s - 1.0).abs() < 1e-9);
        assert!(peak_bps(&e) > 0);
    }

    #[test]
    fn hostile_ts_gives_fewer_entries_never_a_panic() {
        let (data, _) = ts_segment();
        for cut in [0, 1, 187, 188, 189, 400, 1000, data.len() - 1] {
            let _ = scan_ts(&data[..cut]);
        }
        let mut bad = data.clone();
        for i in (0..bad.len()).step_by(7) {
            bad[i] = bad[i].wrapping_mul(31).wrapping_add(7);
        }
        let _ = scan_ts(&bad);
        // Every adaptation field length, including ones past the packet.
        let mut p = vec![0x47, 0x40, 0x41, 0x30];
        p.resize(TS_PACKET, 0xff);
        for len in 0..=255u8 {
            p[4] = len;
            assert!(scan_ts(&p).len() <= 1);
        }
    }

    fn sample(len: usize, sync: bool) -> FragmentSample {
        FragmentSample {
            data: vec![if sync { 0x65 } else { 0x41 }; len],
            duration: 3000,
            composition_offset: 0,
            sync,
        }
    }

    #[test]
    fn fmp4_fragments_that_start_with_a_sync_sample() {
        let mut data = Vec::new();
        write_styp(&mut data);
        let starts = [data.len()];
        let audio = TrackRun {
            base_decode_time: 0,
            samples: vec![FragmentSample {
                data: vec![0x21; 50],
                duration: 1024,
                composition_offset: 0,
                sync: true,
            }],
        };
        write_fragment(
            &mut data,
            1,
            &[
                TrackRun {
                    base_decode_time: 9000,
                    samples: vec![sample(500, true), sample(100, false), sample(100, false)],
                },
                audio.clone(),
            ],
        );
        let second = data.len();
        // A fragment that does not start with a keyframe is no I-frame.
        write_fragment(
            &mut data,
            2,
            &[
                TrackRun {
                    base_decode_time: 18000,
                    samples: vec![sample(100, false)],
                },
                audio.clone(),
            ],
        );
        let third = data.len();
        write_fragment(
            &mut data,
            3,
            &[
                TrackRun {
                    base_decode_time: 27000,
                    samples: vec![sample(400, true)],
                },
                audio,
            ],
        );
        let frames = scan_fmp4(&data, 1);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].offset as usize, starts[0]);
        assert_eq!(frames[0].time, 9000);
        // The range ends right after the keyframe's bytes, inside the mdat.
        let end = (frames[0].offset + frames[0].length) as usize;
        assert!(end < second);
        assert_eq!(&data[end - 500..end], &[0x65; 500][..]);
        assert_eq!(frames[1].offset as usize, third);
        let end = (frames[1].offset + frames[1].length) as usize;
        assert_eq!(&data[end - 400..end], &[0x65; 400][..]);
        assert!(scan_fmp4(&data, 2).len() <= 3);
        let e = entries(&frames, 90_000, 0.6);
        assert!((e[0].duration_s - 0.2).abs() < 1e-9 && (e[1].duration_s - 0.4).abs() < 1e-9);
        // Truncated anywhere, mangled anywhere: no panic.
        for cut in (0..data.len()).step_by(13) {
            let _ = scan_fmp4(&data[..cut], 1);
            let mut bad = data.clone();
            bad[cut] ^= 0xff;
            let _ = scan_fmp4(&bad, 1);
        }
    }

    /// A fragment as other muxers write it: one traf for `track`, its boxes in `order`, the
    /// sync flag of the first sample carried by `how`; 3 samples of 100 bytes, the first one
    /// of 0x65.
    fn foreign_fragment(track: u32, how: &str, order: &[&[u8; 4]]) -> Vec<u8> {
        use crate::hls::fmp4::boxes::{
            NON_SYNC_SAMPLE_FLAGS, SYNC_SAMPLE_FLAGS, write_box, write_full_box,
        };
        let be = |o: &mut Vec<u8>, v: u32| o.extend_from_slice(&v.to_be_bytes());
        let mut moof = Vec::new();
        // Written twice: the data offset (moof size + mdat header) is known the second time.
        let mut data_offset = 0u32;
        for _ in 0..2 {
            moof.clear();
            write_box(&mut moof, b"moof", |o| {
                write_full_box(o, b"mfhd", 0, 0, |o| be(o, 1));
                write_box(o, b"traf", |o| {
                    for kind in order {
                        match *kind {
                            b"tfhd" => {
                                // default-base-is-moof; with defaults: size, then flags.
                                let (flags, fields): (u32, Vec<u32>) = match how {
                                    "default" => (0x02_0030, vec![100, SYNC_SAMPLE_FLAGS]),
                                    _ => (0x02_0000, vec![]),
                                };
                                write_full_box(o, b"tfhd", 0, flags, |o| {
                                    be(o, track);
                                    for f in fields {
                                        be(o, f);
                                    }
                                });
                            }
                            b"tfdt" => write_full_box(o, b"tfdt", 0, 0, |o| be(o, 9000)),
                            _ => {
                                // data-offset; "first": first-sample-flags, then size and
                                // flags per sample; "default": nothing per sample.
                                let flags = match how {
                                    "first" => 0x0001 | 0x0004 | 0x0200 | 0x0400,
                                    _ => 0x0001,
                                };
                                write_full_box(o, b"trun", 0, flags, |o| {
                                    be(o, 3);
                                    be(o, data_offset);
                                    if how == "first" {
                                        be(o, SYNC_SAMPLE_FLAGS);
                                        for _ in 0..3 {
                                            be(o, 100);
                                            be(o, NON_SYNC_SAMPLE_FLAGS);
                                        }
                                    }
                                });
                            }
                        }
                    }
                });
            });
            data_offset = u32::try_from(moof.len() + 8).unwrap();
        }
        let mut data = Vec::new();
        write_styp(&mut data);
        data.extend_from_slice(&moof);
        be(&mut data, 8 + 300);
        data.extend_from_slice(b"mdat");
        data.extend_from_slice(&[0x65; 100]);
        data.extend_from_slice(&[0x41; 200]);
        data
    }

    /// The sync flag in the tfhd's default_sample_flags (size in default_sample_size) or in
    /// the trun's first_sample_flags (the others non-sync), in either box order: the fragment
    /// is an I-frame, its range ending after the first sample. Another track's: none.
    #[test]
    fn fmp4_sync_flags_from_defaults_or_first_sample_flags_in_any_box_order() {
        for how in ["default", "first"] {
            for order in [[b"tfhd", b"tfdt", b"trun"], [b"trun", b"tfdt", b"tfhd"]] {
                let data = foreign_fragment(1, how, &order);
                let frames = scan_fmp4(&data, 1);
                assert_eq!(frames.len(), 1, "{how} {order:?}: {frames:?}");
                assert_eq!(frames[0].offset, 20, "after the styp");
                assert_eq!(frames[0].time, 9000);
                let end = (frames[0].offset + frames[0].length) as usize;
                assert_eq!(&data[end - 100..end], &[0x65; 100][..], "{how} {order:?}");
                assert!(scan_fmp4(&data, 2).is_empty());
            }
        }
        // No flags anywhere: not known to be a sync sample.
        let mut data = foreign_fragment(1, "default", &[b"tfhd", b"tfdt", b"trun"]);
        // tfhd flags: keep default-base-is-moof and the size, drop default_sample_flags (its
        // value stays as padding the parser no longer reads).
        let at = data.windows(4).position(|w| w == b"tfhd").expect("a tfhd");
        data[at + 7] = 0x10;
        assert!(scan_fmp4(&data, 1).is_empty());
    }

    #[test]
    fn the_playlist_follows_the_media_playlist() {
        let media = MediaPlaylist {
            version: Some(6),
            target_duration: 2,
            media_sequence: 5,
            discontinuity_sequence: 1,
            segments: vec![
                MediaSegment {
                    uri: "s5.m4s".into(),
                    duration: 2.0,
                    map: Some(m3u8_rs::Map {
                        uri: "init5.mp4".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                MediaSegment {
                    uri: "s6.m4s".into(),
                    duration: 2.0,
                    discontinuity: true,
                    ..Default::default()
                },
            ],
            end_list: true,
            ..Default::default()
        };
        let e5 = [
            IFrameEntry {
                offset: 24,
                length: 1000,
                duration_s: 1.0,
            },
            IFrameEntry {
                offset: 5000,
                length: 800,
                duration_s: 1.0,
            },
        ];
        let e6 = [IFrameEntry {
            offset: 24,
            length: 900,
            duration_s: 2.0,
        }];
        let p = playlist(&media, |seq| match seq {
            5 => Some(&e5[..]),
            6 => Some(&e6[..]),
            _ => None,
        });
        let mut text = Vec::new();
        p.write_to(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
        assert!(parsed.i_frames_only, "{text}");
        assert_eq!(parsed.media_sequence, 5);
        assert_eq!(parsed.discontinuity_sequence, 1);
        assert!(parsed.end_list);
        assert_eq!(parsed.segments.len(), 3, "{text}");
        assert_eq!(
            parsed.segments[1].byte_range,
            Some(ByteRange {
                length: 800,
                offset: Some(5000)
            })
        );
        assert_eq!(parsed.segments[0].map.as_ref().unwrap().uri, "init5.mp4");
        assert!(parsed.segments[1].map.is_none());
        assert!(!parsed.segments[1].discontinuity && parsed.segments[2].discontinuity);
        assert_eq!(parsed.segments[2].uri, "s6.m4s");
        assert!(text.contains("#EXT-X-VERSION:6"), "{text}");
        assert_eq!(
            iframes_location("/a/video_0.m3u8"),
            "/a/video_0-iframes.m3u8"
        );
    }
}
