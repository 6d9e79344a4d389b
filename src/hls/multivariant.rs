//! Multivariant (master) playlists for adaptive bitrate: the model, RFC 6381 `CODECS` strings
//! from caps fields passed as plain data, and the measured bandwidth of each rendition.
//! BANDWIDTH is the peak segment bit rate of the variant (its audio rendition included),
//! AVERAGE-BANDWIDTH the average over the segments. No GStreamer types here.
//!
//! Specifications: RFC 8216 §4.3.4.1 (EXT-X-MEDIA), §4.3.4.2 (EXT-X-STREAM-INF), §4.3.4.3
//! (EXT-X-I-FRAME-STREAM-INF); RFC 8216bis §4.1
//! (peak segment bit rate); RFC 6381 §3 (codecs parameter); ISO/IEC 14496-15 Annex E (avc1/hvc1
//! strings); the AV1 codec ISO media file format binding §5 (av01).

use std::fmt::Write as _;

/// A codec as the element's caps describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    /// H.264: `profile` and `level` as h264parse/x264enc write them ("high", "3.1").
    H264 {
        profile: Option<String>,
        level: Option<String>,
    },
    /// H.265: `profile`, `tier` ("main"/"high"), `level` ("3.1").
    H265 {
        profile: Option<String>,
        tier: Option<String>,
        level: Option<String>,
    },
    /// AV1 (`av01.P.LLT.DD` needs the sequence header; the generic profile 0 string is given).
    Av1,
    /// AAC, `profile` "lc", "he-aac", "he-aac-v2", "main".
    Aac {
        profile: Option<String>,
    },
    /// MPEG-1/2 audio layer 3.
    Mp3,
    Opus,
    /// A string made from the stream itself (the fMP4 sample entry's avcC/hvcC, with the SPS's
    /// constraint flags), used as it is.
    Rfc6381(String),
}

/// RFC 6381 string of `codec` (`avc1.PPCCLL`, `hvc1.P.C.TL.B0`, `mp4a.40.2`, `opus`, ...).
pub fn codec_string(codec: &Codec) -> String {
    match codec {
        Codec::H264 { profile, level } => {
            // profile_idc and constraint_set flags per ITU-T H.264 A.2.
            let (idc, flags) = match profile.as_deref().unwrap_or("high") {
                "baseline" => (66u8, 0x00u8),
                "constrained-baseline" => (66, 0xC0),
                "main" => (77, 0x00),
                "extended" => (88, 0x00),
                "high" | "progressive-high" => (100, 0x00),
                "constrained-high" => (100, 0x0C),
                "high-10" | "high-10-intra" => (110, 0x00),
                "high-4:2:2" | "high-4:2:2-intra" => (122, 0x00),
                "high-4:4:4" | "high-4:4:4-intra" => (244, 0x00),
                _ => (100, 0x00),
            };
            let level_idc = level.as_deref().map_or(31, h264_level_idc);
            format!("avc1.{idc:02X}{flags:02X}{level_idc:02X}")
        }
        Codec::H265 {
            profile,
            tier,
            level,
        } => {
            // ISO/IEC 14496-15 E.3: profile_idc, reversed compatibility flags, tier + level_idc,
            // constraint bytes (progressive_source_flag set).
            let (idc, compat) = match profile.as_deref().unwrap_or("main") {
                "main-10" | "main-10-intra" => (2u8, 4u32),
                "main-still-picture" => (3, 8),
                "main" => (1, 6),
                _ => (4, 0x10),
            };
            let tier = if tier.as_deref() == Some("high") {
                'H'
            } else {
                'L'
            };
            // level_idc is 30 times the level number.
            let level_idc = level
                .as_deref()
                .and_then(|l| l.parse::<f64>().ok())
                .filter(|l| (0.0..=8.5).contains(l))
                .map_or(93, |l| (l * 30.0).round() as u32);
            format!("hvc1.{idc}.{compat:X}.{tier}{level_idc}.B0")
        }
        Codec::Av1 => "av01.0.08M.08".to_owned(),
        Codec::Aac { profile } => {
            // Audio object types: 2 LC, 5 SBR (HE-AAC), 29 PS (HE-AACv2), 1 Main.
            let aot = match profile.as_deref() {
                Some("he-aac") => 5,
                Some("he-aac-v2") => 29,
                Some("main") => 1,
                _ => 2,
            };
            format!("mp4a.40.{aot}")
        }
        Codec::Mp3 => "mp4a.40.34".to_owned(),
        Codec::Opus => "opus".to_owned(),
        Codec::Rfc6381(s) => s.clone(),
    }
}

/// "3.1" → 31, "1b" → 9 (ITU-T H.264 Table A-1 as written in avc1 strings), else 31.
fn h264_level_idc(level: &str) -> u8 {
    if level == "1b" {
        return 9;
    }
    let mut parts = level.splitn(2, '.');
    let major = parts.next().and_then(|m| m.parse::<u8>().ok());
    let minor = parts.next().map_or(Some(0), |m| m.parse::<u8>().ok());
    match (major, minor) {
        (Some(major @ 1..=6), Some(minor @ 0..=9)) => major * 10 + minor,
        _ => 31,
    }
}

/// Peak and average bit rate of a rendition's segments.
///
/// The peak is RFC 8216bis §4.1's peak segment bit rate: the highest rate of any contiguous set
/// of segments lasting 0.5 to 1.5 times the target duration (so a short last segment holding one
/// keyframe does not count on its own); a segment longer than that counts alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Bandwidth {
    /// Bits per second of the contiguous segments with the highest rate so far.
    pub peak_bps: u64,
    total_bytes: u64,
    total_s: f64,
    /// Segments counted.
    pub segments: u64,
    target_s: f64,
    /// The last segments (bytes, seconds), as many as the peak's window can span.
    recent: std::collections::VecDeque<(u64, f64)>,
}

/// Segments the peak window looks back over at most.
const PEAK_WINDOW: usize = 64;

impl Bandwidth {
    /// For segments of `target_s` seconds (0: every segment on its own).
    pub fn new(target_s: f64) -> Bandwidth {
        Bandwidth {
            peak_bps: 0,
            total_bytes: 0,
            total_s: 0.0,
            segments: 0,
            target_s: if target_s.is_finite() {
                target_s.max(0.0)
            } else {
                0.0
            },
            recent: std::collections::VecDeque::new(),
        }
    }

    /// One finished segment of `bytes` lasting `duration_s` seconds.
    pub fn add(&mut self, bytes: u64, duration_s: f64) {
        self.segments += 1;
        if !(duration_s.is_finite() && duration_s > 0.0) {
            return;
        }
        self.total_bytes = self.total_bytes.saturating_add(bytes);
        self.total_s += duration_s;
        if self.recent.len() == PEAK_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((bytes, duration_s));
        let (low, high) = (0.5 * self.target_s, 1.5 * self.target_s);
        let (mut sum_bytes, mut sum_s) = (0u64, 0.0f64);
        for (i, &(b, d)) in self.recent.iter().rev().enumerate() {
            sum_bytes = sum_bytes.saturating_add(b);
            sum_s += d;
            // A set longer than the window only counts when it is the one segment.
            if sum_s > high && i > 0 {
                break;
            }
            if sum_s >= low || self.target_s == 0.0 {
                let bps = (sum_bytes as f64 * 8.0 / sum_s).ceil() as u64;
                self.peak_bps = self.peak_bps.max(bps);
            }
            if self.target_s == 0.0 {
                break;
            }
        }
        // Nothing long enough yet (a stream shorter than half a target): what there is.
        if self.peak_bps == 0 {
            self.peak_bps = self.average_bps();
        }
    }

    /// Average bits per second over every segment (0 before the first).
    pub fn average_bps(&self) -> u64 {
        if self.total_s > 0.0 {
            (self.total_bytes as f64 * 8.0 / self.total_s).ceil() as u64
        } else {
            0
        }
    }
}

/// An audio rendition: `EXT-X-MEDIA:TYPE=AUDIO`.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioRendition {
    pub name: String,
    pub uri: String,
    pub codec: Option<Codec>,
    pub bandwidth: Bandwidth,
}

/// A video variant: `EXT-X-STREAM-INF` + its media playlist's URI.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub uri: String,
    pub codec: Option<Codec>,
    pub resolution: Option<(u32, u32)>,
    /// Frames per second (num, den).
    pub frame_rate: Option<(i32, i32)>,
    pub bandwidth: Bandwidth,
    /// Its I-frame playlist, if written: `EXT-X-I-FRAME-STREAM-INF`.
    pub iframes: Option<IFrameVariant>,
}

/// An I-frame playlist of a variant (RFC 8216 §4.3.4.3).
#[derive(Debug, Clone, PartialEq)]
pub struct IFrameVariant {
    pub uri: String,
    /// The peak bit rate of its I-frames (each I-frame's size over the time it stands for).
    pub peak_bps: u64,
}

/// The group ID of the audio renditions.
pub const AUDIO_GROUP: &str = "audio";

/// The multivariant playlist of `variants` (each playing with the `audio` group, when there is
/// audio). Audio-only (no variants): one variant per audio rendition.
pub fn render(variants: &[Variant], audio: &[AudioRendition]) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    if variants.is_empty() {
        for a in audio {
            stream_inf(
                &mut out,
                &a.bandwidth,
                a.codec.iter().collect(),
                None,
                None,
                None,
            );
            let _ = writeln!(out, "{}", a.uri);
        }
        return out;
    }
    for (i, a) in audio.iter().enumerate() {
        let default = if i == 0 { "YES" } else { "NO" };
        let _ = writeln!(
            out,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{AUDIO_GROUP}\",NAME=\"{}\",DEFAULT={default},AUTOSELECT=YES,URI=\"{}\"",
            quoted(&a.name),
            quoted(&a.uri)
        );
    }
    // The group's worst case: the audio rendition with the highest rate.
    let audio_peak = audio.iter().map(|a| a.bandwidth.peak_bps).max();
    let audio_average = audio.iter().map(|a| a.bandwidth.average_bps()).max();
    let audio_codec = audio.first().and_then(|a| a.codec.as_ref());
    for v in variants {
        let peak = v.bandwidth.peak_bps + audio_peak.unwrap_or(0);
        let average = v.bandwidth.average_bps() + audio_average.unwrap_or(0);
        let codecs: Vec<&Codec> = v.codec.iter().chain(audio_codec).collect();
        stream_inf_with(
            &mut out,
            peak,
            average,
            codecs,
            v.resolution,
            v.frame_rate,
            (!audio.is_empty()).then_some(AUDIO_GROUP),
        );
        let _ = writeln!(out, "{}", v.uri);
    }
    // I-frame playlists, with the video's attributes (no audio in them).
    for v in variants {
        let Some(i) = &v.iframes else { continue };
        let _ = write!(
            out,
            "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={}",
            i.peak_bps.max(1)
        );
        if let Some(c) = &v.codec {
            let _ = write!(out, ",CODECS=\"{}\"", codec_string(c));
        }
        if let Some((w, h)) = v.resolution {
            let _ = write!(out, ",RESOLUTION={w}x{h}");
        }
        let _ = writeln!(out, ",URI=\"{}\"", quoted(&i.uri));
    }
    out
}

fn stream_inf(
    out: &mut String,
    bandwidth: &Bandwidth,
    codecs: Vec<&Codec>,
    resolution: Option<(u32, u32)>,
    frame_rate: Option<(i32, i32)>,
    audio_group: Option<&str>,
) {
    stream_inf_with(
        out,
        bandwidth.peak_bps,
        bandwidth.average_bps(),
        codecs,
        resolution,
        frame_rate,
        audio_group,
    );
}

fn stream_inf_with(
    out: &mut String,
    peak: u64,
    average: u64,
    codecs: Vec<&Codec>,
    resolution: Option<(u32, u32)>,
    frame_rate: Option<(i32, i32)>,
    audio_group: Option<&str>,
) {
    let _ = write!(out, "#EXT-X-STREAM-INF:BANDWIDTH={}", peak.max(1));
    if average > 0 {
        let _ = write!(out, ",AVERAGE-BANDWIDTH={average}");
    }
    if !codecs.is_empty() {
        let list: Vec<String> = codecs.into_iter().map(codec_string).collect();
        let _ = write!(out, ",CODECS=\"{}\"", list.join(","));
    }
    if let Some((w, h)) = resolution {
        let _ = write!(out, ",RESOLUTION={w}x{h}");
    }
    if let Some((n, d)) = frame_rate.filter(|&(n, d)| n > 0 && d > 0) {
        let _ = write!(out, ",FRAME-RATE={:.3}", f64::from(n) / f64::from(d));
    }
    if let Some(g) = audio_group {
        let _ = write!(out, ",AUDIO=\"{g}\"");
    }
    out.push('\n');
}

/// A quoted-string may hold neither `"` nor line breaks (RFC 8216 §4.2).
fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '"' | '\r' | '\n'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h264(profile: &str, level: &str) -> Codec {
        Codec::H264 {
            profile: Some(profile.into()),
            level: Some(level.into()),
        }
    }

    #[test]
    fn codec_strings() {
        assert_eq!(codec_string(&h264("high", "3.1")), "avc1.64001F");
        assert_eq!(codec_string(&h264("main", "4")), "avc1.4D0028");
        assert_eq!(
            codec_string(&h264("constrained-baseline", "3")),
            "avc1.42C01E"
        );
        assert_eq!(codec_string(&h264("baseline", "1b")), "avc1.420009");
        assert_eq!(codec_string(&h264("high", "nonsense")), "avc1.64001F");
        assert_eq!(
            codec_string(&Codec::H265 {
                profile: Some("main".into()),
                tier: Some("main".into()),
                level: Some("3.1".into())
            }),
            "hvc1.1.6.L93.B0"
        );
        assert_eq!(
            codec_string(&Codec::H265 {
                profile: Some("main-10".into()),
                tier: Some("high".into()),
                level: Some("5.1".into())
            }),
            "hvc1.2.4.H153.B0"
        );
        assert_eq!(
            codec_string(&Codec::Aac {
                profile: Some("lc".into())
            }),
            "mp4a.40.2"
        );
        assert_eq!(
            codec_string(&Codec::Aac {
                profile: Some("he-aac".into())
            }),
            "mp4a.40.5"
        );
        assert_eq!(codec_string(&Codec::Opus), "opus");
        assert_eq!(codec_string(&Codec::Mp3), "mp4a.40.34");
    }

    #[test]
    fn bandwidth_is_peak_and_average() {
        let mut b = Bandwidth::new(2.0);
        assert_eq!(b.average_bps(), 0);
        b.add(100_000, 2.0); // 400 kbit/s
        b.add(50_000, 2.0); // 200 kbit/s
        b.add(1_000, 0.0); // no duration: counted, not measured
        assert_eq!(b.peak_bps, 400_000);
        assert_eq!(b.average_bps(), 300_000);
        assert_eq!(b.segments, 3);
        // A short last segment with a keyframe counts with the one before it (0.5 to 1.5
        // targets), not alone (10 kB in 1/30 s would be 2.4 Mbit/s).
        b.add(10_000, 1.0 / 30.0);
        assert_eq!(b.peak_bps, 400_000);
        assert!(b.average_bps() > 300_000);
        // A segment longer than 1.5 targets counts alone.
        b.add(400_000, 4.0);
        assert_eq!(b.peak_bps, 800_000);
        // Without a target every segment counts alone.
        let mut each = Bandwidth::new(0.0);
        each.add(10_000, 0.1);
        each.add(10_000, 1.0);
        assert_eq!(each.peak_bps, 800_000);
        // Shorter than half a target in all: what there is.
        let mut short = Bandwidth::new(10.0);
        short.add(1_000, 1.0);
        assert_eq!(short.peak_bps, 8_000);
    }

    #[test]
    fn renders_variants_with_an_audio_group() {
        let mut vb = Bandwidth::new(2.0);
        vb.add(250_000, 2.0); // 1 Mbit/s
        let mut ab = Bandwidth::new(2.0);
        ab.add(16_000, 2.0); // 64 kbit/s
        let text = render(
            &[Variant {
                uri: "video_0.m3u8".into(),
                codec: Some(h264("high", "3")),
                resolution: Some((640, 360)),
                frame_rate: Some((30000, 1001)),
                bandwidth: vb,
                iframes: Some(IFrameVariant {
                    uri: "video_0-iframes.m3u8".into(),
                    peak_bps: 2_000_000,
                }),
            }],
            &[AudioRendition {
                name: "audio_\"0".into(),
                uri: "audio_0.m3u8".into(),
                codec: Some(Codec::Aac { profile: None }),
                bandwidth: ab,
            }],
        );
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"audio_0\",DEFAULT=YES,AUTOSELECT=YES,URI=\"audio_0.m3u8\"\n\
             #EXT-X-STREAM-INF:BANDWIDTH=1064000,AVERAGE-BANDWIDTH=1064000,CODECS=\"avc1.64001E,mp4a.40.2\",RESOLUTION=640x360,FRAME-RATE=29.970,AUDIO=\"audio\"\n\
             video_0.m3u8\n\
             #EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=2000000,CODECS=\"avc1.64001E\",RESOLUTION=640x360,URI=\"video_0-iframes.m3u8\"\n"
        );
        // m3u8-rs reads it as a master playlist with the same attributes.
        let parsed = m3u8_rs::parse_master_playlist_res(text.as_bytes()).expect("parses");
        assert_eq!(parsed.variants.len(), 2);
        assert!(!parsed.variants[0].is_i_frame);
        assert_eq!(parsed.variants[0].bandwidth, 1_064_000);
        assert_eq!(parsed.variants[0].audio.as_deref(), Some("audio"));
        assert_eq!(parsed.alternatives.len(), 1);
        let i = parsed
            .variants
            .iter()
            .find(|v| v.is_i_frame)
            .expect("I-frame variant");
        assert_eq!(i.uri, "video_0-iframes.m3u8");
        assert_eq!(i.bandwidth, 2_000_000);
    }

    #[test]
    fn audio_only_is_a_variant_per_rendition() {
        let text = render(
            &[],
            &[AudioRendition {
                name: "a".into(),
                uri: "a.m3u8".into(),
                codec: Some(Codec::Opus),
                bandwidth: Bandwidth::new(2.0),
            }],
        );
        assert!(text.contains("#EXT-X-STREAM-INF:BANDWIDTH=1,CODECS=\"opus\"\na.m3u8\n"));
    }
}
