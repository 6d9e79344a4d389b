//! Enhanced RTMP (E-RTMP) audio and video tag bodies, both ways: the ex-headers that carry codecs
//! classic FLV has no id for (HEVC `hvc1`, AV1 `av01`, VP9 `vp09`, Opus...) by FourCC, their
//! packet types (SequenceStart, CodedFrames with and without composition time, SequenceEnd,
//! Metadata) and multitrack messages (one message, several tracks, each with its id). Parsing
//! never panics and never allocates by a count read from the input: a message yields at most
//! [`MAX_TRACKS`] packets and every size is checked against the bytes present.
//!
//! Specifications: Veovera Enhanced RTMP v1 (ExVideoTagHeader: IsExHeader, PacketType, FourCC)
//! and v2 (v2-2024-05-15-a1: ExAudioTagHeader with SoundFormat 9, AudioPacketType, AudioFourCc;
//! VideoPacketType.Multitrack and AudioPacketType.Multitrack with AvMultitrackType OneTrack,
//! ManyTracks, ManyTracksManyCodecs; VideoFrameType.Command). The configuration records carried
//! by SequenceStart: ISO/IEC 14496-15 §8.3.3 (hvcC), AV1 Codec ISO Media File Format Binding §2.3
//! (av1C), VP Codec ISO Media File Format Binding §2.2 (vpcC), RFC 7845 §5.1 (OpusHead).

use bytes::Bytes;

/// Packets per message at most (the track id is one byte; a message naming more tracks than
/// that is hostile).
pub const MAX_TRACKS: usize = 16;

/// Audio SoundFormat 9: the ExAudioTagHeader follows.
pub const SOUND_FORMAT_EX: u8 = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub [u8; 4]);

impl FourCc {
    pub const HEVC: FourCc = FourCc(*b"hvc1");
    pub const AV1: FourCc = FourCc(*b"av01");
    pub const VP9: FourCc = FourCc(*b"vp09");
    pub const VP8: FourCc = FourCc(*b"vp08");
    pub const AVC: FourCc = FourCc(*b"avc1");
    pub const OPUS: FourCc = FourCc(*b"Opus");
    pub const FLAC: FourCc = FourCc(*b"fLaC");
    pub const AC3: FourCc = FourCc(*b"ac-3");
    pub const EAC3: FourCc = FourCc(*b"ec-3");
    pub const MP3: FourCc = FourCc(*b".mp3");
    pub const AAC: FourCc = FourCc(*b"mp4a");

    /// Video codecs whose layout we know: avc1 and hvc1 coded frames carry a composition time
    /// (SI24) unless sent as CodedFramesX; the others never do.
    pub fn is_known_video(self) -> bool {
        matches!(
            self,
            Self::HEVC | Self::AV1 | Self::VP9 | Self::VP8 | Self::AVC
        )
    }

    fn has_composition_time(self) -> bool {
        matches!(self, Self::HEVC | Self::AVC)
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl std::fmt::Display for FourCc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// What a packet of one track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// The codec configuration record (hvcC, av1C, vpcC, OpusHead...).
    SequenceStart,
    /// One access unit; `composition_time` in ms (PTS - DTS; 0 for CodedFramesX and codecs
    /// without it).
    CodedFrames {
        composition_time: i32,
    },
    SequenceEnd,
    /// Video: AMF-encoded metadata (HDR colour information...).
    Metadata,
    /// Video: an MPEG-2 TS descriptor instead of a configuration record (AV1).
    Mpeg2TsSequenceStart,
    /// Audio: the channel layout.
    MultichannelConfig,
}

/// One track's packet of an E-RTMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub track: u8,
    pub fourcc: FourCc,
    pub kind: PacketKind,
    /// Video frame type 1 (a keyframe); always true for audio.
    pub keyframe: bool,
    pub data: Bytes,
}

/// A video message whose frame type is Command (5): no media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoCommand(pub u8);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Packets(Vec<Packet>),
    Command(VideoCommand),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExError {
    #[error("E-RTMP: not an ex-header message")]
    NotEnhanced,
    #[error("E-RTMP: message truncated ({need} bytes needed, {have} present)")]
    Truncated { need: usize, have: usize },
    #[error("E-RTMP: unknown video FourCC {0}")]
    UnknownVideoFourCc(FourCc),
    #[error("E-RTMP: unknown {media} packet type {packet_type}")]
    UnknownPacketType {
        media: &'static str,
        packet_type: u8,
    },
    #[error("E-RTMP: unknown multitrack type {0}")]
    UnknownMultitrackType(u8),
    #[error("E-RTMP: multitrack message names more than {MAX_TRACKS} tracks")]
    TooManyTracks,
    #[error("E-RTMP: multitrack message nested in a multitrack message")]
    NestedMultitrack,
}

mod video_type {
    pub const SEQUENCE_START: u8 = 0;
    pub const CODED_FRAMES: u8 = 1;
    pub const SEQUENCE_END: u8 = 2;
    pub const CODED_FRAMES_X: u8 = 3;
    pub const METADATA: u8 = 4;
    pub const MPEG2TS_SEQUENCE_START: u8 = 5;
    pub const MULTITRACK: u8 = 6;
}

mod audio_type {
    pub const SEQUENCE_START: u8 = 0;
    pub const CODED_FRAMES: u8 = 1;
    pub const SEQUENCE_END: u8 = 2;
    pub const MULTICHANNEL_CONFIG: u8 = 4;
    pub const MULTITRACK: u8 = 5;
}

const FRAME_TYPE_KEY: u8 = 1;
const FRAME_TYPE_COMMAND: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Multitrack {
    OneTrack,
    ManyTracks,
    ManyTracksManyCodecs,
}

/// Whether a video tag body starts with an ex-header (IsExHeader set).
pub fn is_enhanced_video(data: &[u8]) -> bool {
    data.first().is_some_and(|b| b & 0x80 != 0)
}

/// Whether an audio tag body is SoundFormat 9 (ExAudioTagHeader).
pub fn is_enhanced_audio(data: &[u8]) -> bool {
    data.first().is_some_and(|b| b >> 4 == SOUND_FORMAT_EX)
}

struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn need(&self, n: usize) -> Result<(), ExError> {
        let have = self.data.len().saturating_sub(self.pos);
        if have < n {
            return Err(ExError::Truncated {
                need: self.pos.saturating_add(n),
                have: self.data.len(),
            });
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, ExError> {
        self.need(1)?;
        let b = self.data[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn u24(&mut self) -> Result<u32, ExError> {
        self.need(3)?;
        let d = &self.data[self.pos..self.pos + 3];
        self.pos += 3;
        Ok(u32::from(d[0]) << 16 | u32::from(d[1]) << 8 | u32::from(d[2]))
    }

    fn si24(&mut self) -> Result<i32, ExError> {
        let v = self.u24()?;
        // Sign-extend 24 bits.
        Ok(((v << 8) as i32) >> 8)
    }

    fn fourcc(&mut self) -> Result<FourCc, ExError> {
        self.need(4)?;
        let mut f = [0u8; 4];
        f.copy_from_slice(&self.data[self.pos..self.pos + 4]);
        self.pos += 4;
        Ok(FourCc(f))
    }

    fn slice(&mut self, n: usize) -> Result<Bytes, ExError> {
        self.need(n)?;
        let b = self.data.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn rest(&mut self) -> Bytes {
        let b = self.data.slice(self.pos.min(self.data.len())..);
        self.pos = self.data.len();
        b
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// After the first byte of an ex-header: for a multitrack packet (`multitrack` is the media's
/// packet type for it), the multitrack byte and, unless every track has its own codec, the
/// shared FourCC; otherwise the FourCC. Returns the packet type of the tracks' payload.
fn read_track_prelude(
    r: &mut Reader<'_>,
    packet_type: u8,
    multitrack: u8,
) -> Result<(u8, Option<Multitrack>, Option<FourCc>), ExError> {
    if packet_type != multitrack {
        return Ok((packet_type, None, Some(r.fourcc()?)));
    }
    let b1 = r.u8()?;
    let multi = multitrack_type(b1 >> 4)?;
    let packet_type = b1 & 0x0f;
    if packet_type == multitrack {
        return Err(ExError::NestedMultitrack);
    }
    let fourcc = if multi == Multitrack::ManyTracksManyCodecs {
        None
    } else {
        Some(r.fourcc()?)
    };
    Ok((packet_type, Some(multi), fourcc))
}

fn multitrack_type(v: u8) -> Result<Multitrack, ExError> {
    match v {
        0 => Ok(Multitrack::OneTrack),
        1 => Ok(Multitrack::ManyTracks),
        2 => Ok(Multitrack::ManyTracksManyCodecs),
        other => Err(ExError::UnknownMultitrackType(other)),
    }
}

/// The tracks of a message: (track id, FourCC, the track's body).
fn tracks(
    r: &mut Reader<'_>,
    multi: Option<Multitrack>,
    mut fourcc: Option<FourCc>,
) -> Result<Vec<(u8, FourCc, Bytes)>, ExError> {
    let Some(multi) = multi else {
        let fourcc = fourcc.ok_or(ExError::NotEnhanced)?;
        return Ok(vec![(0, fourcc, r.rest())]);
    };
    let mut out = Vec::new();
    loop {
        if out.len() == MAX_TRACKS {
            return Err(ExError::TooManyTracks);
        }
        if multi == Multitrack::ManyTracksManyCodecs {
            fourcc = Some(r.fourcc()?);
        }
        let track = r.u8()?;
        let body = if multi == Multitrack::OneTrack {
            r.rest()
        } else {
            let size = r.u24()? as usize;
            r.slice(size)?
        };
        out.push((track, fourcc.ok_or(ExError::NotEnhanced)?, body));
        if multi == Multitrack::OneTrack || r.is_empty() {
            return Ok(out);
        }
    }
}

/// Parses a video tag body whose IsExHeader bit is set.
pub fn parse_video(data: &Bytes) -> Result<Message, ExError> {
    let mut r = Reader { data, pos: 0 };
    let b0 = r.u8()?;
    if b0 & 0x80 == 0 {
        return Err(ExError::NotEnhanced);
    }
    let frame_type = (b0 >> 4) & 0x7;
    let packet_type = b0 & 0x0f;
    if packet_type != video_type::METADATA && frame_type == FRAME_TYPE_COMMAND {
        return Ok(Message::Command(VideoCommand(r.u8()?)));
    }
    let (packet_type, multi, fourcc) =
        read_track_prelude(&mut r, packet_type, video_type::MULTITRACK)?;
    if packet_type > video_type::MPEG2TS_SEQUENCE_START {
        return Err(ExError::UnknownPacketType {
            media: "video",
            packet_type,
        });
    }
    let mut packets = Vec::new();
    for (track, fourcc, body) in tracks(&mut r, multi, fourcc)? {
        if !fourcc.is_known_video() {
            return Err(ExError::UnknownVideoFourCc(fourcc));
        }
        let mut b = Reader {
            data: &body,
            pos: 0,
        };
        let kind = match packet_type {
            video_type::SEQUENCE_START => PacketKind::SequenceStart,
            video_type::CODED_FRAMES if fourcc.has_composition_time() => PacketKind::CodedFrames {
                composition_time: b.si24()?,
            },
            video_type::CODED_FRAMES | video_type::CODED_FRAMES_X => PacketKind::CodedFrames {
                composition_time: 0,
            },
            video_type::SEQUENCE_END => PacketKind::SequenceEnd,
            video_type::METADATA => PacketKind::Metadata,
            _ => PacketKind::Mpeg2TsSequenceStart,
        };
        packets.push(Packet {
            track,
            fourcc,
            kind,
            keyframe: frame_type == FRAME_TYPE_KEY,
            data: b.rest(),
        });
    }
    Ok(Message::Packets(packets))
}

/// Parses an audio tag body whose SoundFormat is 9. Any FourCC is taken (audio bodies have no
/// codec-dependent header); what to do with an unknown one is the caller's.
pub fn parse_audio(data: &Bytes) -> Result<Vec<Packet>, ExError> {
    let mut r = Reader { data, pos: 0 };
    let b0 = r.u8()?;
    if b0 >> 4 != SOUND_FORMAT_EX {
        return Err(ExError::NotEnhanced);
    }
    let packet_type = b0 & 0x0f;
    let (packet_type, multi, fourcc) =
        read_track_prelude(&mut r, packet_type, audio_type::MULTITRACK)?;
    let kind = match packet_type {
        audio_type::SEQUENCE_START => PacketKind::SequenceStart,
        audio_type::CODED_FRAMES => PacketKind::CodedFrames {
            composition_time: 0,
        },
        audio_type::SEQUENCE_END => PacketKind::SequenceEnd,
        audio_type::MULTICHANNEL_CONFIG => PacketKind::MultichannelConfig,
        other => {
            return Err(ExError::UnknownPacketType {
                media: "audio",
                packet_type: other,
            });
        }
    };
    Ok(tracks(&mut r, multi, fourcc)?
        .into_iter()
        .map(|(track, fourcc, data)| Packet {
            track,
            fourcc,
            kind,
            keyframe: true,
            data,
        })
        .collect())
}

/// Whether a video or audio tag body is an E-RTMP codec configuration (SequenceStart, also in
/// a multitrack message) or carries no frame (SequenceEnd, Metadata, MultichannelConfig,
/// a command): such tags are never dropped. `None`: not an ex-header body.
pub fn is_config_or_marker(video: bool, data: &[u8]) -> Option<bool> {
    let &b0 = data.first()?;
    let (multi, packet_type) = if video {
        if b0 & 0x80 == 0 {
            return None;
        }
        if (b0 >> 4) & 0x7 == FRAME_TYPE_COMMAND && b0 & 0x0f != video_type::METADATA {
            return Some(true);
        }
        (video_type::MULTITRACK, b0 & 0x0f)
    } else {
        if b0 >> 4 != SOUND_FORMAT_EX {
            return None;
        }
        (audio_type::MULTITRACK, b0 & 0x0f)
    };
    let packet_type = if packet_type == multi {
        data.get(1).map_or(packet_type, |b| b & 0x0f)
    } else {
        packet_type
    };
    Some(if video {
        !matches!(
            packet_type,
            video_type::CODED_FRAMES | video_type::CODED_FRAMES_X
        )
    } else {
        packet_type != audio_type::CODED_FRAMES
    })
}

/// Writes a single-track video tag body. `kind` CodedFrames with composition time 0 is sent as
/// CodedFramesX; avc1/hvc1 frames with another composition time as CodedFrames with the SI24
/// (clamped to its range).
pub fn write_video(fourcc: FourCc, kind: PacketKind, keyframe: bool, payload: &[u8]) -> Vec<u8> {
    let frame_type = if keyframe { FRAME_TYPE_KEY } else { 2 };
    let (packet_type, cts) = match kind {
        PacketKind::SequenceStart => (video_type::SEQUENCE_START, None),
        PacketKind::CodedFrames { composition_time } => {
            if composition_time != 0 && fourcc.has_composition_time() {
                (video_type::CODED_FRAMES, Some(composition_time))
            } else {
                (video_type::CODED_FRAMES_X, None)
            }
        }
        PacketKind::SequenceEnd => (video_type::SEQUENCE_END, None),
        PacketKind::Metadata => (video_type::METADATA, None),
        PacketKind::Mpeg2TsSequenceStart => (video_type::MPEG2TS_SEQUENCE_START, None),
        // Not a video packet type: a SequenceEnd is the harmless reading.
        PacketKind::MultichannelConfig => (video_type::SEQUENCE_END, None),
    };
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(0x80 | frame_type << 4 | packet_type);
    out.extend_from_slice(&fourcc.0);
    if let Some(cts) = cts {
        let cts = cts.clamp(-0x80_0000, 0x7f_ffff);
        out.extend_from_slice(&cts.to_be_bytes()[1..]);
    }
    out.extend_from_slice(payload);
    out
}

/// Writes a single-track audio tag body (SoundFormat 9).
pub fn write_audio(fourcc: FourCc, kind: PacketKind, payload: &[u8]) -> Vec<u8> {
    let packet_type = match kind {
        PacketKind::SequenceStart => audio_type::SEQUENCE_START,
        PacketKind::CodedFrames { .. } => audio_type::CODED_FRAMES,
        PacketKind::MultichannelConfig => audio_type::MULTICHANNEL_CONFIG,
        _ => audio_type::SEQUENCE_END,
    };
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(SOUND_FORMAT_EX << 4 | packet_type);
    out.extend_from_slice(&fourcc.0);
    out.extend_from_slice(payload);
    out
}

/// A classic FLV audio or video tag body of a codec an elementary stream can carry (AVC, AAC,
/// MP3), as the packet its Enhanced RTMP form (`avc1`, `mp4a`, `.mp3`) would give, so both take
/// the same path. `None`: another codec, an ex-header, or too short.
pub fn classic_packet(video: bool, data: &Bytes) -> Option<Packet> {
    let &b0 = data.first()?;
    if video {
        // AVC: FrameType|7, AVCPacketType, CompositionTime SI24 (FLV 10.1 E.4.3.1).
        if b0 & 0x80 != 0 || b0 & 0x0f != 7 {
            return None;
        }
        let mut r = Reader { data, pos: 1 };
        let packet_type = r.u8().ok()?;
        let composition_time = r.si24().ok()?;
        let kind = match packet_type {
            0 => PacketKind::SequenceStart,
            1 => PacketKind::CodedFrames { composition_time },
            2 => PacketKind::SequenceEnd,
            _ => return None,
        };
        return Some(Packet {
            track: 0,
            fourcc: FourCc::AVC,
            kind,
            keyframe: (b0 >> 4) & 7 == FRAME_TYPE_KEY,
            data: r.rest(),
        });
    }
    let (fourcc, kind, at) = match b0 >> 4 {
        // AAC: AACPacketType 0 is the AudioSpecificConfig (E.4.2.2).
        10 => {
            let kind = match *data.get(1)? {
                0 => PacketKind::SequenceStart,
                1 => PacketKind::CodedFrames {
                    composition_time: 0,
                },
                _ => return None,
            };
            (FourCc::AAC, kind, 2)
        }
        2 => (
            FourCc::MP3,
            PacketKind::CodedFrames {
                composition_time: 0,
            },
            1,
        ),
        _ => return None,
    };
    Some(Packet {
        track: 0,
        fourcc,
        kind,
        keyframe: true,
        data: data.slice(at.min(data.len())..),
    })
}

/// The first AV1 sequence header OBU (type 1) of a temporal unit in the low-overhead format
/// (every OBU with its size field), as a whole OBU.
pub fn av1_sequence_header_obu(data: &[u8]) -> Option<&[u8]> {
    let mut pos = 0usize;
    while pos < data.len() {
        let header = data[pos];
        let obu_type = (header >> 3) & 0x0f;
        let ext = header & 0x04 != 0;
        if header & 0x02 == 0 {
            // No size field: the OBU runs to the end.
            return (obu_type == 1).then(|| &data[pos..]);
        }
        let mut at = pos + 1 + usize::from(ext);
        let mut size = 0u64;
        let mut i = 0;
        loop {
            let b = *data.get(at)?;
            at += 1;
            size |= u64::from(b & 0x7f) << (7 * i);
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if i == 8 {
                return None;
            }
        }
        let end = at.checked_add(usize::try_from(size).ok()?)?;
        if end > data.len() {
            return None;
        }
        if obu_type == 1 {
            return Some(&data[pos..end]);
        }
        pos = end;
    }
    None
}

/// An AV1CodecConfigurationRecord (av1C) for a sequence header OBU: seq_profile and the first
/// operating point's level and tier read from it (level 31, "maximum parameters", when timing
/// information hides them), the colour fields from `high_bitdepth`, `twelve_bit`, `mono`,
/// `subsampling` (x, y), and the OBU itself as configOBUs.
pub fn av1_config_record(
    seq_obu: &[u8],
    high_bitdepth: bool,
    twelve_bit: bool,
    mono: bool,
    subsampling: (bool, bool),
) -> Vec<u8> {
    // The payload starts after the OBU header (+ extension) and the size field.
    let payload = (|| {
        let header = *seq_obu.first()?;
        let mut at = 1 + usize::from(header & 0x04 != 0);
        if header & 0x02 != 0 {
            while seq_obu.get(at)? & 0x80 != 0 {
                at += 1;
            }
            at += 1;
        }
        seq_obu.get(at..)
    })()
    .unwrap_or(&[]);
    let bits = |from: usize, n: usize| -> Option<u8> {
        let mut v = 0u8;
        for i in from..from + n {
            let byte = payload.get(i / 8)?;
            v = v << 1 | ((byte >> (7 - i % 8)) & 1);
        }
        Some(v)
    };
    let profile = bits(0, 3).unwrap_or(0);
    let reduced = bits(4, 1).unwrap_or(0) == 1;
    let (level, tier) = if reduced {
        (bits(5, 5).unwrap_or(31), 0)
    } else if bits(5, 1) == Some(0) {
        // No timing info: initial_display_delay_present_flag(1), operating_points_cnt_minus_1(5),
        // operating_point_idc[0](12), seq_level_idx[0](5), seq_tier[0] when the level > 7.
        let level = bits(24, 5).unwrap_or(31);
        let tier = if level > 7 {
            bits(29, 1).unwrap_or(0)
        } else {
            0
        };
        (level, tier)
    } else {
        (31, 0)
    };
    let mut out = vec![
        0x81,
        profile << 5 | (level & 0x1f),
        tier << 7
            | u8::from(high_bitdepth) << 6
            | u8::from(twelve_bit) << 5
            | u8::from(mono) << 4
            | u8::from(subsampling.0) << 3
            | u8::from(subsampling.1) << 2,
        0,
    ];
    out.extend_from_slice(seq_obu);
    out
}

/// A VPCodecConfigurationRecord (vpcC, version 1) with 4:2:0 colocated chroma, limited range
/// and unspecified colour: `profile`, `level` (10 × the level number; 0 unknown), `bit_depth`.
pub fn vp9_config_record(profile: u8, level: u8, bit_depth: u8) -> Vec<u8> {
    vec![
        1,
        0,
        0,
        0,
        profile,
        level,
        (bit_depth & 0x0f) << 4 | 1 << 1,
        2,
        2,
        2,
        0,
        0,
    ]
}

/// The fields of an OpusHead (RFC 7845 §5.1) that caps need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    pub pre_skip: u16,
    pub input_rate: u32,
    pub mapping_family: u8,
    /// Family ≠ 0: (stream count, coupled count, channel mapping).
    pub mapping: Option<(u8, u8, Vec<u8>)>,
}

/// Parses an OpusHead; `None` when it is not one or is truncated.
pub fn parse_opus_head(data: &[u8]) -> Option<OpusHead> {
    if data.len() < 19 || &data[..8] != b"OpusHead" {
        return None;
    }
    let channels = data[9];
    if channels == 0 {
        return None;
    }
    let pre_skip = u16::from_le_bytes([data[10], data[11]]);
    let input_rate = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
    let mapping_family = data[18];
    let mapping = if mapping_family == 0 {
        None
    } else {
        let rest = data.get(19..)?;
        let streams = *rest.first()?;
        let coupled = *rest.get(1)?;
        let map = rest.get(2..2 + usize::from(channels))?.to_vec();
        Some((streams, coupled, map))
    };
    Some(OpusHead {
        channels,
        pre_skip,
        input_rate,
        mapping_family,
        mapping,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[u8]) -> Bytes {
        Bytes::copy_from_slice(v)
    }

    #[test]
    fn hevc_sequence_start_and_frames_round_trip() {
        let seq = write_video(
            FourCc::HEVC,
            PacketKind::SequenceStart,
            true,
            b"hvcC-record",
        );
        assert_eq!(&seq[..5], &[0x90, b'h', b'v', b'c', b'1']);
        let Message::Packets(p) = parse_video(&b(&seq)).unwrap() else {
            panic!()
        };
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].kind, PacketKind::SequenceStart);
        assert_eq!(&p[0].data[..], b"hvcC-record");
        assert_eq!(is_config_or_marker(true, &seq), Some(true));

        // Composition time -40 ms: CodedFrames with SI24 0xffffd8.
        let f = write_video(
            FourCc::HEVC,
            PacketKind::CodedFrames {
                composition_time: -40,
            },
            false,
            &[0, 0, 0, 1, 0x26],
        );
        assert_eq!(&f[..8], &[0xa1, b'h', b'v', b'c', b'1', 0xff, 0xff, 0xd8]);
        let Message::Packets(p) = parse_video(&b(&f)).unwrap() else {
            panic!()
        };
        assert_eq!(
            p[0].kind,
            PacketKind::CodedFrames {
                composition_time: -40
            }
        );
        assert!(!p[0].keyframe);
        assert_eq!(&p[0].data[..], &[0, 0, 0, 1, 0x26]);
        assert_eq!(is_config_or_marker(true, &f), Some(false));

        // Composition time 0: CodedFramesX, no SI24.
        let x = write_video(
            FourCc::HEVC,
            PacketKind::CodedFrames {
                composition_time: 0,
            },
            true,
            b"au",
        );
        assert_eq!(&x[..], &[0x93, b'h', b'v', b'c', b'1', b'a', b'u']);
        let Message::Packets(p) = parse_video(&b(&x)).unwrap() else {
            panic!()
        };
        assert!(p[0].keyframe);
        assert_eq!(&p[0].data[..], b"au");
    }

    #[test]
    fn av1_and_vp9_frames_have_no_composition_time() {
        // av01 CodedFrames (1): the body is the OBUs straight after the FourCC.
        let raw = [0x91, b'a', b'v', b'0', b'1', 0x12, 0x00, 0x0a];
        let Message::Packets(p) = parse_video(&b(&raw)).unwrap() else {
            panic!()
        };
        assert_eq!(p[0].fourcc, FourCc::AV1);
        assert_eq!(
            p[0].kind,
            PacketKind::CodedFrames {
                composition_time: 0
            }
        );
        assert_eq!(&p[0].data[..], &[0x12, 0x00, 0x0a]);
        // Written with a composition time anyway: CodedFramesX, which means the same.
        let w = write_video(
            FourCc::VP9,
            PacketKind::CodedFrames {
                composition_time: 33,
            },
            false,
            b"f",
        );
        assert_eq!(&w[..], &[0xa3, b'v', b'p', b'0', b'9', b'f']);
    }

    #[test]
    fn sequence_end_metadata_and_command() {
        let end = [0x92, b'h', b'v', b'c', b'1'];
        let Message::Packets(p) = parse_video(&b(&end)).unwrap() else {
            panic!()
        };
        assert_eq!(p[0].kind, PacketKind::SequenceEnd);
        assert!(p[0].data.is_empty());
        assert_eq!(is_config_or_marker(true, &end), Some(true));
        // Command frame (5): one byte, no FourCC.
        assert_eq!(
            parse_video(&b(&[0xd1, 0x00])).unwrap(),
            Message::Command(VideoCommand(0))
        );
        // Metadata ignores the frame type, even Command.
        let meta = [0xd4, b'a', b'v', b'0', b'1', 0x02, 0x00, 0x00];
        let Message::Packets(p) = parse_video(&b(&meta)).unwrap() else {
            panic!()
        };
        assert_eq!(p[0].kind, PacketKind::Metadata);
    }

    #[test]
    fn opus_audio_round_trip_and_head() {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 2, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0, 0, 0]);
        let seq = write_audio(FourCc::OPUS, PacketKind::SequenceStart, &head);
        assert_eq!(&seq[..5], &[0x90, b'O', b'p', b'u', b's']);
        assert!(is_enhanced_audio(&seq));
        let p = parse_audio(&b(&seq)).unwrap();
        assert_eq!(p[0].kind, PacketKind::SequenceStart);
        assert_eq!(is_config_or_marker(false, &seq), Some(true));
        let h = parse_opus_head(&p[0].data).unwrap();
        assert_eq!(
            h,
            OpusHead {
                channels: 2,
                pre_skip: 312,
                input_rate: 48000,
                mapping_family: 0,
                mapping: None
            }
        );
        let f = write_audio(
            FourCc::OPUS,
            PacketKind::CodedFrames {
                composition_time: 0,
            },
            b"pkt",
        );
        assert_eq!(&f[..], &[0x91, b'O', b'p', b'u', b's', b'p', b'k', b't']);
        assert_eq!(is_config_or_marker(false, &f), Some(false));
        // Classic AAC is not an ex-header.
        assert_eq!(is_config_or_marker(false, &[0xaf, 1]), None);
        assert_eq!(is_config_or_marker(true, &[0x17, 1]), None);
        // Family 1 (surround) with its mapping table; a truncated table is no head.
        let mut h51 = b"OpusHead".to_vec();
        h51.extend_from_slice(&[
            1, 6, 0, 0, 0x80, 0xbb, 0, 0, 0, 0, 1, 4, 2, 0, 4, 1, 2, 3, 5,
        ]);
        let h = parse_opus_head(&h51).unwrap();
        assert_eq!(h.mapping, Some((4, 2, vec![0, 4, 1, 2, 3, 5])));
        assert_eq!(parse_opus_head(&h51[..h51.len() - 1]), None);
        assert_eq!(parse_opus_head(b"OpusTags"), None);
    }

    #[test]
    fn multitrack_video_many_tracks_and_many_codecs() {
        // ManyTracks (1) of hvc1 CodedFramesX (3): track 0 "ab", track 1 "c".
        let raw = [
            0x96, 0x13, b'h', b'v', b'c', b'1', 0, 0, 0, 2, b'a', b'b', 1, 0, 0, 1, b'c',
        ];
        let Message::Packets(p) = parse_video(&b(&raw)).unwrap() else {
            panic!()
        };
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].track, &p[0].data[..]), (0, &b"ab"[..]));
        assert_eq!((p[1].track, &p[1].data[..]), (1, &b"c"[..]));
        assert!(p[0].keyframe);
        assert_eq!(is_config_or_marker(true, &raw), Some(false));
        // ManyTracksManyCodecs (2) SequenceStart (0): av01 on track 0, vp09 on track 2.
        let raw = [
            0x96, 0x20, b'a', b'v', b'0', b'1', 0, 0, 0, 1, 0x81, b'v', b'p', b'0', b'9', 2, 0, 0,
            1, 0x01,
        ];
        let Message::Packets(p) = parse_video(&b(&raw)).unwrap() else {
            panic!()
        };
        assert_eq!(p[0].fourcc, FourCc::AV1);
        assert_eq!(p[1].fourcc, FourCc::VP9);
        assert_eq!(p[1].track, 2);
        assert_eq!(p[1].kind, PacketKind::SequenceStart);
        assert_eq!(is_config_or_marker(true, &raw), Some(true));
        // OneTrack (0): the rest of the message is the track, with hvc1's SI24.
        let raw = [0x96, 0x01, b'h', b'v', b'c', b'1', 3, 0, 0, 5, b'x'];
        let Message::Packets(p) = parse_video(&b(&raw)).unwrap() else {
            panic!()
        };
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].track, 3);
        assert_eq!(
            p[0].kind,
            PacketKind::CodedFrames {
                composition_time: 5
            }
        );
    }

    #[test]
    fn multitrack_audio() {
        // Audio Multitrack (5), ManyTracks (1) of Opus CodedFrames (1).
        let raw = [
            0x95, 0x11, b'O', b'p', b'u', b's', 0, 0, 0, 1, b'a', 1, 0, 0, 2, b'b', b'c',
        ];
        let p = parse_audio(&b(&raw)).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(&p[1].data[..], b"bc");
        assert_eq!(is_config_or_marker(false, &raw), Some(false));
    }

    #[test]
    fn classic_avc_and_aac_as_packets() {
        let p = classic_packet(true, &b(&[0x27, 1, 0, 0, 0x50, 9, 9])).unwrap();
        assert_eq!(p.fourcc, FourCc::AVC);
        assert_eq!(
            p.kind,
            PacketKind::CodedFrames {
                composition_time: 80
            }
        );
        assert!(!p.keyframe);
        assert_eq!(&p.data[..], &[9, 9]);
        let p = classic_packet(false, &b(&[0xaf, 0, 0x12, 0x10])).unwrap();
        assert_eq!((p.fourcc, p.kind), (FourCc::AAC, PacketKind::SequenceStart));
        assert_eq!(&p.data[..], &[0x12, 0x10]);
        assert_eq!(classic_packet(true, &b(&[0x17, 1, 0])), None);
        assert_eq!(classic_packet(true, &b(&[0x12, 1, 0, 0, 0])), None, "H.263");
        assert_eq!(classic_packet(false, &b(&[0xaf])), None);
        assert_eq!(classic_packet(false, &b(&[0x91, b'O'])), None);
    }

    #[test]
    fn av1_and_vp9_configuration_records() {
        // A temporal delimiter (type 2, size 0), then a sequence header (type 1) of 3 bytes:
        // seq_profile 0, no timing info, one operating point, idc 0, level 8 (4.0), tier 1.
        // Bits: 000 0 0 0 0 00000 000000000000 01000 1 -> 0x00 0x00 0x00 0x44 after the
        // first 24 bits... laid out: [0b0000_0000, 0b0000_0000, 0b0000_0000, 0b0100_0100].
        let seq = [0x0a, 0x04, 0x00, 0x00, 0x00, 0x44];
        let mut tu = vec![0x12, 0x00];
        tu.extend_from_slice(&seq);
        tu.extend_from_slice(&[0x32, 0x01, 0xff]);
        assert_eq!(av1_sequence_header_obu(&tu), Some(&seq[..]));
        let rec = av1_config_record(&seq, false, false, false, (true, true));
        assert_eq!(&rec[..4], &[0x81, 0x08, 0x80 | 0x0c, 0]);
        assert_eq!(&rec[4..], &seq);
        // No sequence header, truncated sizes, absurd LEB128: none.
        assert_eq!(av1_sequence_header_obu(&[0x12, 0x00]), None);
        assert_eq!(av1_sequence_header_obu(&[0x0a, 0x05, 0]), None);
        assert_eq!(
            av1_sequence_header_obu(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        // A record from a truncated OBU still has its fixed fields.
        assert_eq!(
            av1_config_record(&[0x0a], true, false, false, (true, true)).len(),
            5
        );
        assert_eq!(
            vp9_config_record(0, 31, 8),
            [1, 0, 0, 0, 0, 31, 0x82, 2, 2, 2, 0, 0]
        );
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        // Truncated ex-headers.
        for raw in [
            &[0x90][..],
            &[0x90, b'h', b'v'],
            &[0x91, b'h', b'v', b'c', b'1', 0xff],
            &[0x96],
            &[0x96, 0x13, b'h'],
            &[0xd0],
        ] {
            assert!(
                matches!(parse_video(&b(raw)), Err(ExError::Truncated { .. })),
                "{raw:?}"
            );
        }
        for raw in [
            &[0x90][..],
            &[0x91, b'O'],
            &[0x95, 0x11, b'O', b'p', b'u', b's', 0],
        ] {
            assert!(
                matches!(parse_audio(&b(raw)), Err(ExError::Truncated { .. })),
                "{raw:?}"
            );
        }
        // A track size beyond the message.
        let raw = [0x96, 0x13, b'h', b'v', b'c', b'1', 0, 0xff, 0xff, 0xff, 1];
        assert!(matches!(
            parse_video(&b(&raw)),
            Err(ExError::Truncated { .. })
        ));
        // Unknown FourCC, unknown packet types and multitrack types, nesting.
        assert_eq!(
            parse_video(&b(&[0x91, b'x', b'y', b'z', b'w', 1, 2, 3])),
            Err(ExError::UnknownVideoFourCc(FourCc(*b"xyzw")))
        );
        assert!(matches!(
            parse_video(&b(&[0x97, b'h', b'v', b'c', b'1'])),
            Err(ExError::UnknownPacketType { .. })
        ));
        assert!(matches!(
            parse_audio(&b(&[0x97, b'O', b'p', b'u', b's'])),
            Err(ExError::UnknownPacketType { .. })
        ));
        assert_eq!(
            parse_video(&b(&[0x96, 0x51, b'h', b'v', b'c', b'1'])),
            Err(ExError::UnknownMultitrackType(5))
        );
        assert_eq!(
            parse_video(&b(&[0x96, 0x16, b'h', b'v', b'c', b'1'])),
            Err(ExError::NestedMultitrack)
        );
        assert_eq!(
            parse_video(&b(&[0x17, 1, 0, 0, 0])),
            Err(ExError::NotEnhanced)
        );
        // An absurd track count: 100000 empty tracks in one message stop at MAX_TRACKS.
        let mut raw = vec![0x96, 0x13, b'h', b'v', b'c', b'1'];
        for i in 0..100_000u32 {
            raw.extend_from_slice(&[(i % 256) as u8, 0, 0, 0]);
        }
        assert_eq!(parse_video(&b(&raw)), Err(ExError::TooManyTracks));
        let mut raw = vec![0x95, 0x20];
        for _ in 0..1000 {
            raw.extend_from_slice(&[b'O', b'p', b'u', b's', 0, 0, 0, 0]);
        }
        assert_eq!(parse_audio(&b(&raw)), Err(ExError::TooManyTracks));
        // Every prefix of valid messages, and every single-byte corruption: no panic.
        let good = [
            0x96, 0x20, b'a', b'v', b'0', b'1', 0, 0, 0, 1, 0x81, b'h', b'v', b'c', b'1', 2, 0, 0,
            4, 0, 0, 1, 9,
        ];
        for n in 0..good.len() {
            let _ = parse_video(&b(&good[..n]));
            let _ = parse_audio(&b(&good[..n]));
            let _ = is_config_or_marker(true, &good[..n]);
            let _ = is_config_or_marker(false, &good[..n]);
            for v in [0u8, 0x0f, 0x80, 0xff] {
                let mut m = good.to_vec();
                m[n] = v;
                let _ = parse_video(&b(&m));
                let mut a = m.clone();
                a[0] = 0x95;
                let _ = parse_audio(&b(&a));
            }
        }
        for n in 0..40 {
            let _ = parse_opus_head(&[0xffu8; 40][..n]);
        }
    }
}
