//! ISO BMFF box writing: the init segment (ftyp + moov with mvex/trex) and media fragments
//! (styp, moof with mfhd and one traf per track: tfhd, tfdt, trun; then mdat).
//!
//! Specifications: ISO/IEC 14496-12 §4.2 (box and full box headers), §4.3 (ftyp), §8.8.15 (styp),
//! §8.2.2 (mvhd), §8.3.2 (tkhd), §8.4.2 (mdhd), §8.4.3 (hdlr), §8.4.5 (vmhd, smhd), §8.7.2
//! (dinf/dref), §8.5.2 (stsd: VisualSampleEntry, AudioSampleEntry), §8.6.1.2, §8.7.4, §8.7.3,
//! §8.7.5 (empty stts, stsc, stsz, stco), §8.8.1-§8.8.3 (mvex, trex), §8.8.4-§8.8.8 (moof, mfhd,
//! traf, tfhd, trun), §8.8.12 (tfdt), §8.8.3.1 (sample flags); ISO/IEC 23000-19 (CMAF) §7.3
//! (tfhd default-base-is-moof, tfdt in every traf, trun version 1 with signed composition
//! offsets); ISO/IEC 14496-14 §5.6 (esds), ISO/IEC 14496-1 §7.2.6.5-§7.2.6.7 (ES_Descriptor,
//! DecoderConfigDescriptor, SLConfigDescriptor); ISO/IEC 14496-15 §5.3.3 (avcC), §8.3.3
//! (hvcC); "Encapsulation of Opus in ISO Base Media File Format" v0.6.8 §4.3 (Opus, dOps); "AV1
//! Codec ISO Media File Format Binding" v1.2.0 §2.2-§2.3 (av01, av1C).

use super::{SampleEntry, Track};

/// Writes a box: the 32-bit size is patched in when `body` has written the content.
pub fn write_box(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(kind);
    body(out);
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: version and 24-bit flags after the header.
pub fn write_full_box(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    write_box(out, kind, |out| {
        out.push(version);
        out.extend_from_slice(&flags.to_be_bytes()[1..]);
        body(out);
    });
}

fn u16be(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn u32be(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn u64be(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// The unity matrix of mvhd and tkhd (§8.2.2.3).
const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// Brands of the init segment: ISO BMFF with tfdt/trun v1 (`iso6`) and `mp41`. Not CMAF's `cmfc`:
/// a CMAF track file has one track, and audio and video share the init segment here.
const INIT_BRANDS: [&[u8; 4]; 2] = [b"iso6", b"mp41"];

/// sample_flags (§8.8.3.1) of a sync sample: depends on no other (sample_depends_on 2).
pub const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;
/// sample_flags of a non-sync sample: depends on others, sample_is_non_sync_sample.
pub const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0101_0000;

/// The initialisation segment for these tracks (track IDs 1, 2, ... in order).
pub fn init_segment(tracks: &[Track]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_box(&mut out, b"ftyp", |o| {
        o.extend_from_slice(b"iso6");
        u32be(o, 0);
        for b in INIT_BRANDS {
            o.extend_from_slice(b);
        }
    });
    write_box(&mut out, b"moov", |o| {
        write_full_box(o, b"mvhd", 0, 0, |o| {
            u32be(o, 0); // creation_time
            u32be(o, 0); // modification_time
            u32be(o, 1000); // timescale
            u32be(o, 0); // duration: fragmented, unknown
            u32be(o, 0x0001_0000); // rate 1.0
            u16be(o, 0x0100); // volume 1.0
            o.extend_from_slice(&[0; 10]);
            for m in MATRIX {
                u32be(o, m);
            }
            o.extend_from_slice(&[0; 24]); // pre_defined
            u32be(o, u32::try_from(tracks.len() + 1).unwrap_or(u32::MAX)); // next_track_ID
        });
        for (i, t) in tracks.iter().enumerate() {
            write_trak(o, track_id(i), t);
        }
        write_box(o, b"mvex", |o| {
            for i in 0..tracks.len() {
                write_full_box(o, b"trex", 0, 0, |o| {
                    u32be(o, track_id(i));
                    u32be(o, 1); // default_sample_description_index
                    u32be(o, 0); // default_sample_duration
                    u32be(o, 0); // default_sample_size
                    u32be(o, 0); // default_sample_flags
                });
            }
        });
    });
    out
}

/// Track IDs are the track's index plus one.
pub fn track_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

fn write_trak(out: &mut Vec<u8>, id: u32, t: &Track) {
    let video = t.entry.is_video();
    write_box(out, b"trak", |o| {
        // Flags: track_enabled | track_in_movie.
        write_full_box(o, b"tkhd", 0, 3, |o| {
            u32be(o, 0);
            u32be(o, 0);
            u32be(o, id);
            u32be(o, 0); // reserved
            u32be(o, 0); // duration
            o.extend_from_slice(&[0; 8]);
            u16be(o, 0); // layer
            u16be(o, 0); // alternate_group
            u16be(o, if video { 0 } else { 0x0100 }); // volume
            u16be(o, 0);
            for m in MATRIX {
                u32be(o, m);
            }
            let (w, h) = t.entry.dimensions();
            u32be(o, u32::from(w) << 16);
            u32be(o, u32::from(h) << 16);
        });
        write_box(o, b"mdia", |o| {
            write_full_box(o, b"mdhd", 0, 0, |o| {
                u32be(o, 0);
                u32be(o, 0);
                u32be(o, t.timescale);
                u32be(o, 0);
                // language "und", packed ISO-639-2/T.
                u16be(o, 0x55c4);
                u16be(o, 0);
            });
            write_full_box(o, b"hdlr", 0, 0, |o| {
                u32be(o, 0);
                o.extend_from_slice(if video { b"vide" } else { b"soun" });
                o.extend_from_slice(&[0; 12]);
                o.extend_from_slice(if video {
                    b"VideoHandler\0"
                } else {
                    b"SoundHandler\0"
                });
            });
            write_box(o, b"minf", |o| {
                if video {
                    write_full_box(o, b"vmhd", 0, 1, |o| o.extend_from_slice(&[0; 8]));
                } else {
                    write_full_box(o, b"smhd", 0, 0, |o| o.extend_from_slice(&[0; 4]));
                }
                write_box(o, b"dinf", |o| {
                    write_full_box(o, b"dref", 0, 0, |o| {
                        u32be(o, 1);
                        // Flag 1: the media is in this file.
                        write_full_box(o, b"url ", 0, 1, |_| {});
                    });
                });
                write_box(o, b"stbl", |o| {
                    write_full_box(o, b"stsd", 0, 0, |o| {
                        u32be(o, 1);
                        write_sample_entry(o, &t.entry);
                    });
                    for kind in [b"stts", b"stsc", b"stco"] {
                        write_full_box(o, kind, 0, 0, |o| u32be(o, 0));
                    }
                    write_full_box(o, b"stsz", 0, 0, |o| {
                        u32be(o, 0);
                        u32be(o, 0);
                    });
                });
            });
        });
    });
}

fn write_visual_entry(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    width: u16,
    height: u16,
    config: impl FnOnce(&mut Vec<u8>),
) {
    write_box(out, kind, |o| {
        o.extend_from_slice(&[0; 6]);
        u16be(o, 1); // data_reference_index
        o.extend_from_slice(&[0; 16]);
        u16be(o, width);
        u16be(o, height);
        u32be(o, 0x0048_0000); // 72 dpi
        u32be(o, 0x0048_0000);
        u32be(o, 0);
        u16be(o, 1); // frame_count
        o.extend_from_slice(&[0; 32]); // compressorname
        u16be(o, 0x0018); // depth
        u16be(o, 0xffff); // pre_defined = -1
        config(o);
    });
}

fn write_audio_entry(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    channels: u16,
    rate: u32,
    config: impl FnOnce(&mut Vec<u8>),
) {
    write_box(out, kind, |o| {
        o.extend_from_slice(&[0; 6]);
        u16be(o, 1);
        o.extend_from_slice(&[0; 8]);
        u16be(o, channels);
        u16be(o, 16); // samplesize
        u16be(o, 0);
        u16be(o, 0);
        // 16.16 fixed point; rates above 65535 Hz do not fit and are written as 0.
        u32be(o, if rate <= 0xffff { rate << 16 } else { 0 });
        config(o);
    });
}

/// An MPEG-4 descriptor (ISO/IEC 14496-1 §8.3.3): tag, size in 7-bit groups, body.
fn write_descriptor(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    let len = body.len();
    let mut groups = Vec::with_capacity(4);
    let mut n = len;
    loop {
        groups.push((n & 0x7f) as u8);
        n >>= 7;
        if n == 0 || groups.len() == 4 {
            break;
        }
    }
    for (i, g) in groups.iter().rev().enumerate() {
        out.push(if i + 1 < groups.len() { g | 0x80 } else { *g });
    }
    out.extend_from_slice(body);
}

/// The esds box body of AAC with this AudioSpecificConfig.
pub fn esds_descriptors(asc: &[u8], bitrate: u32) -> Vec<u8> {
    let mut dsi = Vec::new();
    write_descriptor(&mut dsi, 0x05, asc);
    let mut dcd = vec![
        0x40, // objectTypeIndication: Audio ISO/IEC 14496-3
        0x15, // streamType 5 (audio) << 2 | upStream 0 | reserved 1
        0, 0, 0, // bufferSizeDB
    ];
    dcd.extend_from_slice(&bitrate.to_be_bytes()); // maxBitrate
    dcd.extend_from_slice(&bitrate.to_be_bytes()); // avgBitrate
    dcd.extend_from_slice(&dsi);
    let mut es = vec![0, 1, 0]; // ES_ID 1, no flags
    write_descriptor(&mut es, 0x04, &dcd);
    write_descriptor(&mut es, 0x06, &[0x02]); // SLConfigDescriptor: predefined MP4
    let mut out = Vec::new();
    write_descriptor(&mut out, 0x03, &es);
    out
}

fn write_sample_entry(out: &mut Vec<u8>, entry: &SampleEntry) {
    match entry {
        SampleEntry::Avc {
            width,
            height,
            avcc,
        } => write_visual_entry(out, b"avc1", *width, *height, |o| {
            write_box(o, b"avcC", |o| o.extend_from_slice(avcc));
        }),
        SampleEntry::Hevc {
            width,
            height,
            hvcc,
        } => write_visual_entry(out, b"hvc1", *width, *height, |o| {
            write_box(o, b"hvcC", |o| o.extend_from_slice(hvcc));
        }),
        SampleEntry::Av1 {
            width,
            height,
            av1c,
        } => write_visual_entry(out, b"av01", *width, *height, |o| {
            write_box(o, b"av1C", |o| o.extend_from_slice(av1c));
        }),
        SampleEntry::Aac {
            channels,
            rate,
            asc,
        } => write_audio_entry(out, b"mp4a", *channels, *rate, |o| {
            write_full_box(o, b"esds", 0, 0, |o| {
                o.extend_from_slice(&esds_descriptors(asc, 0));
            });
        }),
        SampleEntry::Opus {
            channels,
            pre_skip,
            input_rate,
            gain,
            mapping,
        } => write_audio_entry(out, b"Opus", *channels, 48000, |o| {
            write_box(o, b"dOps", |o| {
                o.push(0); // Version
                o.push(u8::try_from(*channels).unwrap_or(u8::MAX));
                u16be(o, *pre_skip);
                u32be(o, *input_rate);
                o.extend_from_slice(&gain.to_be_bytes());
                // ChannelMappingFamily, then (family != 0) the mapping table from OpusHead.
                match mapping {
                    None => o.push(0),
                    Some(m) => o.extend_from_slice(m),
                }
            });
        }),
    }
}

/// One sample in a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentSample {
    /// Its data as it goes into mdat (length-prefixed NAL units, raw AAC, Opus packets, OBUs).
    pub data: Vec<u8>,
    /// Duration in the track's timescale.
    pub duration: u32,
    /// Presentation minus decode time, in the track's timescale.
    pub composition_offset: i32,
    pub sync: bool,
}

/// One track's run in a fragment: its samples, and the decode time of the first (timescale).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrackRun {
    pub base_decode_time: u64,
    pub samples: Vec<FragmentSample>,
}

/// Writes `styp` (a media segment, `msdh`; no segment index, so not `msix`), to start a media
/// segment.
pub fn write_styp(out: &mut Vec<u8>) {
    write_box(out, b"styp", |o| {
        o.extend_from_slice(b"msdh");
        u32be(o, 0);
        o.extend_from_slice(b"msdh"); // compatible brands
    });
}

/// Writes one fragment: moof (mfhd `sequence`, one traf per track with samples; `runs[i]` is the
/// track with ID i + 1) and the mdat with their data, in track order. A media segment is one or
/// more of these (LL-HLS parts are fragments of one segment). Tracks without samples get no traf.
pub fn write_fragment(out: &mut Vec<u8>, sequence: u32, runs: &[TrackRun]) {
    let moof_start = out.len();
    // trun data_offset fields to patch once the moof's size is known: (position, offset in mdat).
    let mut patches = Vec::new();
    let mut mdat_offset = 0usize;
    write_box(out, b"moof", |o| {
        write_full_box(o, b"mfhd", 0, 0, |o| u32be(o, sequence));
        for (i, run) in runs.iter().enumerate() {
            if run.samples.is_empty() {
                continue;
            }
            write_box(o, b"traf", |o| {
                // default-base-is-moof: data offsets count from the moof's first byte.
                write_full_box(o, b"tfhd", 0, 0x02_0000, |o| u32be(o, track_id(i)));
                write_full_box(o, b"tfdt", 1, 0, |o| u64be(o, run.base_decode_time));
                let cts = run.samples.iter().any(|s| s.composition_offset != 0);
                // data-offset, sample-duration, -size, -flags, (-composition-time-offset).
                let flags = 0x0001 | 0x0100 | 0x0200 | 0x0400 | if cts { 0x0800 } else { 0 };
                write_full_box(o, b"trun", 1, flags, |o| {
                    u32be(o, u32::try_from(run.samples.len()).unwrap_or(u32::MAX));
                    patches.push((o.len(), mdat_offset));
                    u32be(o, 0);
                    for s in &run.samples {
                        u32be(o, s.duration);
                        u32be(o, u32::try_from(s.data.len()).unwrap_or(u32::MAX));
                        u32be(
                            o,
                            if s.sync {
                                SYNC_SAMPLE_FLAGS
                            } else {
                                NON_SYNC_SAMPLE_FLAGS
                            },
                        );
                        if cts {
                            o.extend_from_slice(&s.composition_offset.to_be_bytes());
                        }
                        mdat_offset += s.data.len();
                    }
                });
            });
        }
    });
    let moof_size = out.len() - moof_start;
    let mdat_size = 8 + mdat_offset;
    for (pos, offset) in patches {
        let data_offset = i32::try_from(moof_size + 8 + offset).unwrap_or(i32::MAX);
        out[pos..pos + 4].copy_from_slice(&data_offset.to_be_bytes());
    }
    out.reserve(mdat_size);
    match u32::try_from(mdat_size) {
        Ok(size) => {
            u32be(out, size);
            out.extend_from_slice(b"mdat");
        }
        Err(_) => {
            // largesize (§4.2): size 1, then the 64-bit size counting its own 8 bytes.
            u32be(out, 1);
            out.extend_from_slice(b"mdat");
            u64be(out, (mdat_size + 8) as u64);
        }
    }
    for run in runs {
        for s in &run.samples {
            out.extend_from_slice(&s.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Box headers in `data`: (type, offset, size) of the top-level boxes.
    fn boxes(data: &[u8]) -> Vec<(String, usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 8 <= data.len() {
            let size = u32::from_be_bytes(data[i..i + 4].try_into().unwrap()) as usize;
            let kind = String::from_utf8_lossy(&data[i + 4..i + 8]).into_owned();
            assert!(
                size >= 8 && i + size <= data.len(),
                "{kind} at {i}: size {size}"
            );
            out.push((kind, i, size));
            i += size;
        }
        assert_eq!(i, data.len(), "trailing bytes");
        out
    }

    /// The children of the box at `offset` (after `skip` bytes of its own fields).
    fn children(data: &[u8], offset: usize, skip: usize) -> Vec<(String, usize, usize)> {
        let size = u32::from_be_bytes(data[offset..offset + 4].try_into().unwrap()) as usize;
        boxes(&data[offset + 8 + skip..offset + size])
            .into_iter()
            .map(|(k, o, s)| (k, o + offset + 8 + skip, s))
            .collect()
    }

    fn find<'a>(list: &'a [(String, usize, usize)], kind: &str) -> &'a (String, usize, usize) {
        list.iter()
            .find(|b| b.0 == kind)
            .unwrap_or_else(|| panic!("no {kind} in {list:?}"))
    }

    fn names(list: &[(String, usize, usize)]) -> Vec<&str> {
        list.iter().map(|b| b.0.as_str()).collect()
    }

    #[test]
    fn box_and_full_box_headers() {
        let mut out = Vec::new();
        write_box(&mut out, b"free", |o| o.extend_from_slice(b"abc"));
        assert_eq!(out, b"\0\0\0\x0bfreeabc");
        out.clear();
        write_full_box(&mut out, b"mfhd", 1, 0x02_0001, |o| u32be(o, 7));
        assert_eq!(out, b"\0\0\0\x10mfhd\x01\x02\x00\x01\0\0\0\x07");
    }

    #[test]
    fn descriptor_sizes_use_seven_bit_groups() {
        let mut out = Vec::new();
        write_descriptor(&mut out, 5, &[1, 2]);
        assert_eq!(out, [5, 2, 1, 2]);
        out.clear();
        write_descriptor(&mut out, 5, &[0; 200]);
        assert_eq!(&out[..3], [5, 0x81, 0x48]);
        assert_eq!(out.len(), 203);
    }

    #[test]
    fn esds_nests_es_decoder_config_and_specific_info() {
        let d = esds_descriptors(&[0x12, 0x10], 128_000);
        // ES_Descriptor (3) of 3 + DecoderConfig (2 + 13 + DSI 4) + SL (3) bytes.
        assert_eq!(d[0], 3);
        assert_eq!(usize::from(d[1]), d.len() - 2);
        assert_eq!(&d[2..5], [0, 1, 0]);
        assert_eq!(d[5], 4);
        assert_eq!(d[7], 0x40);
        assert_eq!(d[8], 0x15);
        assert_eq!(&d[12..16], 128_000u32.to_be_bytes());
        assert_eq!(&d[20..24], [5, 2, 0x12, 0x10]);
        assert_eq!(&d[24..], [6, 1, 2]);
    }

    fn avc_track() -> Track {
        Track {
            timescale: 90000,
            entry: SampleEntry::Avc {
                width: 320,
                height: 240,
                avcc: vec![1, 0x42, 0xc0, 0x1e, 0xff, 0xe0, 0],
            },
        }
    }

    fn aac_track() -> Track {
        Track {
            timescale: 44100,
            entry: SampleEntry::Aac {
                channels: 2,
                rate: 44100,
                asc: vec![0x12, 0x10],
            },
        }
    }

    #[test]
    fn init_segment_has_ftyp_and_moov_with_a_trak_and_trex_per_track() {
        let init = init_segment(&[avc_track(), aac_track()]);
        let top = boxes(&init);
        assert_eq!(names(&top), ["ftyp", "moov"]);
        assert_eq!(&init[8..12], b"iso6");
        let moov = children(&init, top[1].1, 0);
        assert_eq!(names(&moov), ["mvhd", "trak", "trak", "mvex"]);
        // mvhd version 0: next_track_ID is its last field.
        let mvhd = find(&moov, "mvhd");
        assert_eq!(mvhd.2, 108);
        assert_eq!(&init[mvhd.1 + 104..mvhd.1 + 108], 3u32.to_be_bytes());
        let mvex = children(&init, find(&moov, "mvex").1, 0);
        assert_eq!(names(&mvex), ["trex", "trex"]);
        assert_eq!(&init[mvex[1].1 + 12..mvex[1].1 + 16], 2u32.to_be_bytes());
        // The video trak: tkhd with ID 1 and 320x240, then mdia/minf/stbl/stsd/avc1/avcC.
        let trak = children(&init, moov[1].1, 0);
        assert_eq!(names(&trak), ["tkhd", "mdia"]);
        let tkhd = &trak[0];
        assert_eq!(tkhd.2, 92);
        assert_eq!(&init[tkhd.1 + 20..tkhd.1 + 24], 1u32.to_be_bytes());
        assert_eq!(
            &init[tkhd.1 + 84..tkhd.1 + 88],
            (320u32 << 16).to_be_bytes()
        );
        let mdia = children(&init, trak[1].1, 0);
        assert_eq!(names(&mdia), ["mdhd", "hdlr", "minf"]);
        assert_eq!(
            &init[mdia[0].1 + 20..mdia[0].1 + 24],
            90000u32.to_be_bytes()
        );
        assert_eq!(&init[mdia[1].1 + 16..mdia[1].1 + 20], b"vide");
        let minf = children(&init, mdia[2].1, 0);
        assert_eq!(names(&minf), ["vmhd", "dinf", "stbl"]);
        let stbl = children(&init, minf[2].1, 0);
        assert_eq!(names(&stbl), ["stsd", "stts", "stsc", "stco", "stsz"]);
        let stsd = children(&init, stbl[0].1, 8);
        assert_eq!(names(&stsd), ["avc1"]);
        let avc1 = children(&init, stsd[0].1, 78);
        assert_eq!(names(&avc1), ["avcC"]);
        assert_eq!(&init[stsd[0].1 + 32..stsd[0].1 + 36], [1, 64, 0, 240]);
        // The audio trak: smhd, mp4a with esds.
        let trak = children(&init, moov[2].1, 0);
        let mdia = children(&init, trak[1].1, 0);
        assert_eq!(&init[mdia[1].1 + 16..mdia[1].1 + 20], b"soun");
        let minf = children(&init, mdia[2].1, 0);
        assert_eq!(names(&minf), ["smhd", "dinf", "stbl"]);
        let stbl = children(&init, minf[2].1, 0);
        let stsd = children(&init, stbl[0].1, 8);
        assert_eq!(names(&stsd), ["mp4a"]);
        let mp4a = stsd[0].1;
        assert_eq!(&init[mp4a + 24..mp4a + 26], 2u16.to_be_bytes());
        assert_eq!(&init[mp4a + 32..mp4a + 36], (44100u32 << 16).to_be_bytes());
        assert_eq!(names(&children(&init, mp4a, 28)), ["esds"]);
    }

    #[test]
    fn opus_entry_carries_dops() {
        let init = init_segment(&[Track {
            timescale: 48000,
            entry: SampleEntry::Opus {
                channels: 2,
                pre_skip: 312,
                input_rate: 48000,
                gain: 0,
                mapping: None,
            },
        }]);
        let at = init.windows(4).position(|w| w == b"dOps").expect("dOps") - 4;
        assert_eq!(
            &init[at..at + 19],
            [
                0, 0, 0, 19, b'd', b'O', b'p', b's', 0, 2, 1, 56, 0, 0, 0xbb, 0x80, 0, 0, 0
            ]
        );
        assert_eq!(&init[at - 32..at - 28], b"Opus");
    }

    #[test]
    fn fragment_offsets_point_at_each_tracks_data() {
        let runs = [
            TrackRun {
                base_decode_time: 90000,
                samples: vec![
                    FragmentSample {
                        data: vec![1; 10],
                        duration: 3000,
                        composition_offset: 6000,
                        sync: true,
                    },
                    FragmentSample {
                        data: vec![2; 5],
                        duration: 3000,
                        composition_offset: -3000,
                        sync: false,
                    },
                ],
            },
            TrackRun {
                base_decode_time: 44100,
                samples: vec![FragmentSample {
                    data: vec![3; 7],
                    duration: 1024,
                    composition_offset: 0,
                    sync: true,
                }],
            },
        ];
        let mut out = Vec::new();
        write_styp(&mut out);
        write_fragment(&mut out, 5, &runs);
        let top = boxes(&out);
        assert_eq!(names(&top), ["styp", "moof", "mdat"]);
        let moof = top[1].1;
        let parts = children(&out, moof, 0);
        assert_eq!(names(&parts), ["mfhd", "traf", "traf"]);
        assert_eq!(&out[parts[0].1 + 12..parts[0].1 + 16], 5u32.to_be_bytes());
        let mdat = top[2].1;
        assert_eq!(
            &out[mdat + 8..],
            [[1; 10].as_slice(), &[2; 5], &[3; 7]].concat()
        );
        for (t, (first_byte, count, base, flags)) in
            [(1, 2, 90000u64, 0x000f01u32), (3, 1, 44100, 0x000701)]
                .iter()
                .enumerate()
        {
            let traf = children(&out, parts[t + 1].1, 0);
            assert_eq!(names(&traf), ["tfhd", "tfdt", "trun"]);
            let tfhd = traf[0].1;
            assert_eq!(&out[tfhd + 8..tfhd + 12], [0, 2, 0, 0]);
            assert_eq!(
                &out[tfhd + 12..tfhd + 16],
                track_id(t).to_be_bytes().as_slice()
            );
            let tfdt = traf[1].1;
            assert_eq!(out[tfdt + 8], 1, "tfdt version 1");
            assert_eq!(&out[tfdt + 12..tfdt + 20], base.to_be_bytes());
            let trun = traf[2].1;
            assert_eq!(out[trun + 8], 1, "trun version 1");
            assert_eq!(&out[trun + 9..trun + 12], &flags.to_be_bytes()[1..]);
            assert_eq!(&out[trun + 12..trun + 16], (*count as u32).to_be_bytes());
            let offset = i32::from_be_bytes(out[trun + 16..trun + 20].try_into().unwrap());
            assert_eq!(out[moof + offset as usize], *first_byte);
        }
        // The second video sample: size 5, non-sync flags, composition offset -3000.
        let trun = children(&out, parts[1].1, 0)[2].1;
        let second = trun + 20 + 16;
        assert_eq!(&out[second + 4..second + 8], 5u32.to_be_bytes());
        assert_eq!(
            &out[second + 8..second + 12],
            NON_SYNC_SAMPLE_FLAGS.to_be_bytes()
        );
        assert_eq!(&out[second + 12..second + 16], (-3000i32).to_be_bytes());
    }

    #[test]
    fn tracks_without_samples_get_no_traf() {
        let mut out = Vec::new();
        let runs = [
            TrackRun::default(),
            TrackRun {
                base_decode_time: 0,
                samples: vec![FragmentSample {
                    data: vec![9],
                    duration: 1,
                    composition_offset: 0,
                    sync: true,
                }],
            },
        ];
        write_fragment(&mut out, 1, &runs);
        let top = boxes(&out);
        let parts = children(&out, top[0].1, 0);
        assert_eq!(names(&parts), ["mfhd", "traf"]);
        let tfhd = children(&out, parts[1].1, 0)[0].1;
        assert_eq!(&out[tfhd + 12..tfhd + 16], 2u32.to_be_bytes());
    }
}
