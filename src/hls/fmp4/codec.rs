//! From what encoders give to what ISO BMFF wants: Annex B byte-stream access units to
//! length-prefixed samples without parameter sets (which go into avcC/hvcC, as `avc1`/`hvc1`
//! require), decoder configuration records built from the parameter sets, ADTS to raw AAC with its
//! AudioSpecificConfig, OpusHead to dOps fields, AV1 temporal units without temporal delimiters.
//!
//! Specifications: ITU-T H.264 Annex B (byte stream), §7.3.2.1 (SPS: profile, constraint flags,
//! level are its first bytes), §7.4.1.2 (nal_unit_type); ITU-T H.265 §7.3.1.2 (NAL unit header),
//! §7.3.2.2 (SPS), §7.3.3 (profile_tier_level), §7.4.2.4.4 (emulation prevention); ISO/IEC
//! 14496-15 §5.3.3.1 (AVCDecoderConfigurationRecord), §8.3.3.1 (HEVCDecoderConfigurationRecord);
//! ISO/IEC 14496-3 §1.6.2.1 (AudioSpecificConfig), §1.A.2.2 (ADTS header); RFC 7845 §5.1
//! (OpusHead); AV1 bitstream spec §5.3 (OBU header), §5.5 (sequence header OBU), §7.5 (temporal
//! delimiters); AV1 ISO BMFF binding v1.2.0 §2.3 (AV1CodecConfigurationRecord).

/// The NAL units of an Annex B byte stream (start codes of 3 or 4 bytes removed; trailing
/// zero bytes belong to the next start code).
pub fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (n, &(_, payload)) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(data.len(), |s| s.0);
        while end > payload && data[end - 1] == 0 {
            end -= 1;
        }
        if end > payload {
            nals.push(&data[payload..end]);
        }
    }
    nals
}

/// Which video codec's NAL units these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NalCodec {
    H264,
    H265,
}

/// Parameter sets seen in an access unit, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParameterSets {
    pub vps: Vec<Vec<u8>>,
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
}

impl ParameterSets {
    pub fn is_empty(&self) -> bool {
        self.vps.is_empty() && self.sps.is_empty() && self.pps.is_empty()
    }

    /// Whether every set a decoder configuration record needs is there.
    pub fn complete(&self, codec: NalCodec) -> bool {
        !self.sps.is_empty()
            && !self.pps.is_empty()
            && (codec == NalCodec::H264 || !self.vps.is_empty())
    }
}

/// An Annex B access unit as an ISO BMFF sample: each NAL unit with a 4-byte length, access unit
/// delimiters and parameter sets left out (the parameter sets are returned).
pub fn annexb_to_sample(data: &[u8], codec: NalCodec) -> (Vec<u8>, ParameterSets) {
    let mut sample = Vec::with_capacity(data.len() + 16);
    let mut sets = ParameterSets::default();
    for nal in annexb_nals(data) {
        match (codec, nal_type(nal, codec)) {
            (NalCodec::H264, 7) | (NalCodec::H265, 33) => sets.sps.push(nal.to_vec()),
            (NalCodec::H264, 8) | (NalCodec::H265, 34) => sets.pps.push(nal.to_vec()),
            (NalCodec::H265, 32) => sets.vps.push(nal.to_vec()),
            (NalCodec::H264, 9) | (NalCodec::H265, 35) => {}
            _ => {
                let len = u32::try_from(nal.len()).unwrap_or(u32::MAX);
                sample.extend_from_slice(&len.to_be_bytes());
                sample.extend_from_slice(nal);
            }
        }
    }
    (sample, sets)
}

fn nal_type(nal: &[u8], codec: NalCodec) -> u8 {
    match codec {
        NalCodec::H264 => nal[0] & 0x1f,
        NalCodec::H265 => (nal[0] >> 1) & 0x3f,
    }
}

fn push_sets(out: &mut Vec<u8>, sets: &[Vec<u8>]) -> Option<()> {
    for s in sets {
        out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
        out.extend_from_slice(s);
    }
    Some(())
}

/// The AVCDecoderConfigurationRecord (avcC body) for these SPS and PPS; 4-byte NAL lengths. For
/// profiles other than Baseline, Main and Extended (66, 77, 88: the High profiles, 244 High 4:4:4
/// Predictive included, as FFmpeg writes them) with the chroma format and bit depths of the first
/// SPS (§5.3.3.1).
pub fn avcc(sets: &ParameterSets) -> Option<Vec<u8>> {
    let sps = sets.sps.first()?;
    if sps.len() < 4 || sets.pps.is_empty() || sets.sps.len() > 31 || sets.pps.len() > 255 {
        return None;
    }
    let mut out = vec![1, sps[1], sps[2], sps[3], 0xfc | 3];
    out.push(0xe0 | u8::try_from(sets.sps.len()).ok()?);
    push_sets(&mut out, &sets.sps)?;
    out.push(u8::try_from(sets.pps.len()).ok()?);
    push_sets(&mut out, &sets.pps)?;
    if !matches!(sps[1], 66 | 77 | 88) {
        let rbsp = rbsp(sps, 4);
        let mut b = Bits {
            data: &rbsp,
            pos: 0,
        };
        b.ue()?; // seq_parameter_set_id
        let chroma_format_idc = b.ue()?;
        if chroma_format_idc == 3 {
            b.bit()?; // separate_colour_plane_flag
        }
        let luma = b.ue()?;
        let chroma = b.ue()?;
        if chroma_format_idc > 3 || luma > 7 || chroma > 7 {
            return None;
        }
        out.push(0xfc | chroma_format_idc as u8);
        out.push(0xf8 | luma as u8);
        out.push(0xf8 | chroma as u8);
        out.push(0); // numOfSequenceParameterSetExt
    }
    Some(out)
}

/// The RBSP of a NAL unit (after its `header` bytes): emulation prevention bytes removed.
fn rbsp(nal: &[u8], header: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal.get(header..).unwrap_or(&[]) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Reads bits MSB first; None past the end.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(b))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.pos += n;
        (self.pos <= self.data.len() * 8).then_some(())
    }

    /// uvlc() of AV1 (§4.10.3): like ue(v); 32 or more leading zeros is the largest value.
    fn uvlc(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros >= 32 {
                return Some(u32::MAX);
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    /// ue(v): Exp-Golomb, at most 31 leading zeros.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }
}

/// The HEVCDecoderConfigurationRecord (hvcC body) for these VPS, SPS and PPS (arrays complete:
/// `hvc1`), 4-byte NAL lengths. The profile, tier, level, chroma format and bit depths come from
/// the first SPS.
pub fn hvcc(sets: &ParameterSets) -> Option<Vec<u8>> {
    let sps = sets.sps.first()?;
    if sets.vps.is_empty() || sets.pps.is_empty() {
        return None;
    }
    let rbsp = rbsp(sps, 2);
    let mut b = Bits {
        data: &rbsp,
        pos: 0,
    };
    b.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = b.bits(3)?;
    let temporal_id_nested = b.bit()?;
    // general_profile_space .. general_level_idc: 12 bytes, byte aligned here.
    let ptl = rbsp.get(1..13)?.to_vec();
    b.skip(96)?;
    let mut sub_profile = Vec::new();
    for _ in 0..max_sub_layers_minus1 {
        sub_profile.push((b.bit()?, b.bit()?));
    }
    if max_sub_layers_minus1 > 0 {
        b.skip(2 * (8 - max_sub_layers_minus1 as usize))?;
    }
    for (profile, level) in sub_profile {
        b.skip(if profile == 1 { 88 } else { 0 } + if level == 1 { 8 } else { 0 })?;
    }
    b.ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = b.ue()?;
    if chroma_format_idc == 3 {
        b.bit()?;
    }
    b.ue()?; // width
    b.ue()?; // height
    if b.bit()? == 1 {
        for _ in 0..4 {
            b.ue()?;
        }
    }
    let bit_depth_luma_minus8 = b.ue()?;
    let bit_depth_chroma_minus8 = b.ue()?;
    if chroma_format_idc > 3 || bit_depth_luma_minus8 > 7 || bit_depth_chroma_minus8 > 7 {
        return None;
    }
    let mut out = vec![1];
    out.extend_from_slice(&ptl);
    out.extend_from_slice(&[0xf0, 0x00]); // min_spatial_segmentation_idc 0
    out.push(0xfc); // parallelismType 0
    out.push(0xfc | chroma_format_idc as u8);
    out.push(0xf8 | bit_depth_luma_minus8 as u8);
    out.push(0xf8 | bit_depth_chroma_minus8 as u8);
    out.extend_from_slice(&[0, 0]); // avgFrameRate
    // constantFrameRate 0, numTemporalLayers, temporalIdNested, lengthSizeMinusOne 3.
    out.push((((max_sub_layers_minus1 + 1) as u8) << 3) | ((temporal_id_nested as u8) << 2) | 3);
    out.push(3);
    for (kind, list) in [(32u8, &sets.vps), (33, &sets.sps), (34, &sets.pps)] {
        out.push(0x80 | kind); // array_completeness 1
        out.extend_from_slice(&u16::try_from(list.len()).ok()?.to_be_bytes());
        push_sets(&mut out, list)?;
    }
    Some(out)
}

/// The RFC 6381 `codecs` parameter of an avcC record (`avc1.PPCCLL`).
pub fn avc_codecs(avcc: &[u8]) -> Option<String> {
    Some(format!(
        "avc1.{:02x}{:02x}{:02x}",
        avcc.get(1)?,
        avcc.get(2)?,
        avcc.get(3)?
    ))
}

/// The RFC 6381 `codecs` parameter of an hvcC record (ISO/IEC 14496-15 E.3:
/// `hvc1.[A-C]PROFILE.COMPAT.TLEVEL.C1.C2...`: the compatibility flags bit-reversed in hex, the
/// constraint indicator bytes in hex with trailing zero bytes left out).
pub fn hvc_codecs(hvcc: &[u8]) -> Option<String> {
    let first = *hvcc.get(1)?;
    let space = ["", "A", "B", "C"][usize::from(first >> 6)];
    let tier = if first & 0x20 != 0 { 'H' } else { 'L' };
    let compat = u32::from_be_bytes(hvcc.get(2..6)?.try_into().ok()?).reverse_bits();
    let constraints = hvcc.get(6..12)?;
    let level = *hvcc.get(12)?;
    let mut out = format!("hvc1.{space}{}.{compat:X}.{tier}{level}", first & 0x1f);
    let used = constraints
        .iter()
        .rposition(|&c| c != 0)
        .map_or(0, |i| i + 1);
    for c in &constraints[..used] {
        out.push_str(&format!(".{c:02X}"));
    }
    Some(out)
}

/// One ADTS frame's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsHeader {
    /// Audio object type (profile + 1).
    pub object_type: u8,
    pub frequency_index: u8,
    pub channel_config: u8,
    pub header_len: usize,
    pub frame_len: usize,
}

pub fn parse_adts(data: &[u8]) -> Option<AdtsHeader> {
    if data.len() < 7 || data[0] != 0xff || data[1] & 0xf6 != 0xf0 {
        return None;
    }
    let header_len = if data[1] & 1 == 1 { 7 } else { 9 };
    let frame_len = (usize::from(data[3] & 3) << 11)
        | (usize::from(data[4]) << 3)
        | (usize::from(data[5]) >> 5);
    if frame_len < header_len {
        return None;
    }
    Some(AdtsHeader {
        object_type: (data[2] >> 6) + 1,
        frequency_index: (data[2] >> 2) & 0xf,
        channel_config: ((data[2] & 1) << 2) | (data[3] >> 6),
        header_len,
        frame_len,
    })
}

impl AdtsHeader {
    /// The AudioSpecificConfig this header stands for (2 bytes).
    pub fn audio_specific_config(&self) -> Vec<u8> {
        vec![
            (self.object_type << 3) | (self.frequency_index >> 1),
            ((self.frequency_index & 1) << 7) | (self.channel_config << 3),
        ]
    }
}

/// The raw AAC frames of a buffer of ADTS frames, and the first header.
pub fn adts_frames(data: &[u8]) -> (Vec<&[u8]>, Option<AdtsHeader>) {
    let mut frames = Vec::new();
    let mut first = None;
    let mut i = 0;
    while let Some(h) = data.get(i..).and_then(parse_adts) {
        let Some(raw) = data.get(i + h.header_len..i + h.frame_len) else {
            break;
        };
        first.get_or_insert(h);
        frames.push(raw);
        i += h.frame_len;
    }
    (frames, first)
}

/// dOps fields from an OpusHead packet (RFC 7845 §5.1, little-endian there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u16,
    pub pre_skip: u16,
    pub input_rate: u32,
    pub gain: i16,
    /// ChannelMappingFamily and, for families other than 0, stream count, coupled count and the
    /// channel mapping (as dOps wants them); None for family 0.
    pub mapping: Option<Vec<u8>>,
}

pub fn parse_opus_head(head: &[u8]) -> Option<OpusHead> {
    if head.len() < 19 || &head[..8] != b"OpusHead" {
        return None;
    }
    let channels = head[9];
    let family = head[18];
    let mapping = if family == 0 {
        None
    } else {
        Some(head.get(18..21 + usize::from(channels))?.to_vec())
    };
    Some(OpusHead {
        channels: u16::from(channels),
        pre_skip: u16::from_le_bytes([head[10], head[11]]),
        input_rate: u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
        gain: i16::from_le_bytes([head[16], head[17]]),
        mapping,
    })
}

/// An AV1 temporal unit (low-overhead format, every OBU with a size field) as an ISO BMFF sample:
/// temporal delimiters left out (AV1 binding §2.4). None when an OBU has no size field or runs
/// past the end.
pub fn av1_sample(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    for (kind, obu, _) in av1_obus(data)? {
        if kind != 2 {
            out.extend_from_slice(obu);
        }
    }
    Some(out)
}

/// The OBUs of a temporal unit: (obu_type, the whole OBU with its header). None when an OBU has
/// no size field or runs past the end.
fn av1_obus(data: &[u8]) -> Option<Vec<(u8, &[u8], usize)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let header = data[i];
        let obu_type = (header >> 3) & 0xf;
        let extension = (header >> 2) & 1 == 1;
        if (header >> 1) & 1 == 0 {
            return None;
        }
        let mut p = i + 1 + usize::from(extension);
        let mut size: u64 = 0;
        for n in 0..8 {
            let b = *data.get(p)?;
            p += 1;
            size |= u64::from(b & 0x7f) << (7 * n);
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = p.checked_add(usize::try_from(size).ok()?)?;
        if end > data.len() {
            return None;
        }
        // (type, whole OBU, offset of its payload within it)
        out.push((obu_type, &data[i..end], p - i));
        i = end;
    }
    Some(out)
}

/// The sequence header OBU of a temporal unit, if it has one.
pub fn av1_sequence_header(data: &[u8]) -> Option<&[u8]> {
    av1_obus(data)?.into_iter().find(|o| o.0 == 1).map(|o| o.1)
}

/// The AV1CodecConfigurationRecord (av1C body) for a sequence header OBU: profile, level and
/// tier of operating point 0, bit depth and chroma from its color_config, the OBU itself as
/// configOBUs.
pub fn av1c(sequence_header: &[u8]) -> Option<Vec<u8>> {
    let (kind, obu, payload) = *av1_obus(sequence_header)?.first()?;
    if kind != 1 {
        return None;
    }
    let mut b = Bits {
        data: &obu[payload..],
        pos: 0,
    };
    let profile = b.bits(3)?;
    b.bit()?; // still_picture
    let reduced = b.bit()? == 1;
    let (level, tier);
    if reduced {
        level = b.bits(5)?;
        tier = 0;
    } else {
        let mut decoder_model_info = false;
        let mut buffer_delay_length = 0;
        if b.bit()? == 1 {
            // timing_info
            b.skip(64)?;
            if b.bit()? == 1 {
                b.uvlc()?;
            }
            decoder_model_info = b.bit()? == 1;
            if decoder_model_info {
                buffer_delay_length = b.bits(5)? as usize + 1;
                b.skip(32 + 5 + 5)?;
            }
        }
        let initial_display_delay = b.bit()? == 1;
        let points = b.bits(5)? + 1;
        let mut first = None;
        for _ in 0..points {
            b.skip(12)?; // operating_point_idc
            let l = b.bits(5)?;
            let t = if l > 7 { b.bit()? } else { 0 };
            first.get_or_insert((l, t));
            if decoder_model_info && b.bit()? == 1 {
                b.skip(2 * buffer_delay_length + 1)?;
            }
            if initial_display_delay && b.bit()? == 1 {
                b.skip(4)?;
            }
        }
        (level, tier) = first?;
    }
    let width_bits = b.bits(4)? as usize + 1;
    let height_bits = b.bits(4)? as usize + 1;
    b.skip(width_bits + height_bits)?;
    if !reduced && b.bit()? == 1 {
        // frame_id_numbers_present: delta_frame_id_length_minus_2, additional_frame_id_length_minus_1
        b.skip(7)?;
    }
    b.skip(3)?; // use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
    if !reduced {
        b.skip(4)?; // interintra, masked compound, warped motion, dual filter
        let enable_order_hint = b.bit()? == 1;
        if enable_order_hint {
            b.skip(2)?; // jnt_comp, ref_frame_mvs
        }
        let force_screen_content_tools = if b.bit()? == 1 { 2 } else { b.bit()? };
        if force_screen_content_tools > 0 && b.bit()? == 0 {
            b.bit()?; // seq_force_integer_mv
        }
        if enable_order_hint {
            b.skip(3)?;
        }
    }
    b.skip(3)?; // superres, cdef, restoration
    // color_config
    let high_bitdepth = b.bit()?;
    let twelve_bit = if profile == 2 && high_bitdepth == 1 {
        b.bit()?
    } else {
        0
    };
    let mono = if profile == 1 { 0 } else { b.bit()? };
    let (mut cp, mut tc, mut mc) = (2, 2, 2);
    if b.bit()? == 1 {
        cp = b.bits(8)?;
        tc = b.bits(8)?;
        mc = b.bits(8)?;
    }
    let (ssx, ssy, position);
    if mono == 1 {
        b.bit()?;
        (ssx, ssy, position) = (1, 1, 0);
    } else if cp == 1 && tc == 13 && mc == 0 {
        (ssx, ssy, position) = (0, 0, 0);
    } else {
        b.bit()?; // color_range
        (ssx, ssy) = match profile {
            0 => (1, 1),
            1 => (0, 0),
            _ if twelve_bit == 1 => {
                let x = b.bit()?;
                (x, if x == 1 { b.bit()? } else { 0 })
            }
            _ => (1, 0),
        };
        position = if ssx == 1 && ssy == 1 { b.bits(2)? } else { 0 };
    }
    let mut out = vec![
        0x81,
        ((profile as u8) << 5) | level as u8,
        ((tier as u8) << 7)
            | ((high_bitdepth as u8) << 6)
            | ((twelve_bit as u8) << 5)
            | ((mono as u8) << 4)
            | ((ssx as u8) << 3)
            | ((ssy as u8) << 2)
            | position as u8,
        0,
    ];
    out.extend_from_slice(obu);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_splits_on_three_and_four_byte_start_codes() {
        let data = [
            0, 0, 0, 1, 9, 0xf0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x65, 7,
        ];
        let nals = annexb_nals(&data);
        assert_eq!(nals, [&[9, 0xf0][..], &[0x67, 1, 2], &[0x65, 7]]);
        assert!(annexb_nals(&[1, 2, 3]).is_empty());
        assert!(annexb_nals(&[0, 0, 1]).is_empty());
    }

    #[test]
    fn h264_access_unit_becomes_length_prefixed_without_aud_and_parameter_sets() {
        let data = [
            0, 0, 0, 1, 0x09, 0xf0, // AUD
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, // SPS
            0, 0, 0, 1, 0x68, 0xce, // PPS
            0, 0, 1, 0x06, 5, // SEI
            0, 0, 1, 0x65, 0x88, 0x84, // IDR slice
        ];
        let (sample, sets) = annexb_to_sample(&data, NalCodec::H264);
        assert_eq!(sample, [0, 0, 0, 2, 0x06, 5, 0, 0, 0, 3, 0x65, 0x88, 0x84]);
        assert_eq!(sets.sps, [vec![0x67, 0x42, 0xc0, 0x1e]]);
        assert_eq!(sets.pps, [vec![0x68, 0xce]]);
        assert!(sets.complete(NalCodec::H264));
        let avcc = avcc(&sets).unwrap();
        assert_eq!(
            avcc,
            [
                1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 4, 0x67, 0x42, 0xc0, 0x1e, 1, 0, 2, 0x68, 0xce
            ]
        );
        assert_eq!(avc_codecs(&avcc).unwrap(), "avc1.42c01e");
        assert!(super::avcc(&ParameterSets::default()).is_none());
    }

    /// VPS, SPS and PPS x265 (Debian 12) wrote for 320x240 I420: Main, level 2.1.
    const HEVC_VPS: &[u8] = &[
        0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00,
        0x03, 0x00, 0x00, 0x03, 0x00, 0x3f, 0x95, 0x98, 0x09,
    ];
    const HEVC_SPS: &[u8] = &[
        0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x03, 0x00, 0x3f, 0xa0, 0x0a, 0x08, 0x0f, 0x16, 0x59, 0x59, 0xa4, 0x93, 0x2b, 0xff, 0xc0,
        0x00, 0x40, 0x00, 0x5a, 0x83, 0x03, 0x03, 0x02, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00,
        0x03, 0x00, 0x3c, 0x10,
    ];
    /// The SPS x265 wrote for 320x240 Y444_12LE (RExt profile 4, 12-bit 4:4:4, level 2.1).
    const HEVC_SPS_444: &[u8] = &[
        0x42, 0x01, 0x01, 0x04, 0x08, 0x00, 0x00, 0x03, 0x00, 0x98, 0x08, 0x00, 0x00, 0x03, 0x00,
        0x00, 0x3f, 0x90, 0x01, 0x41, 0x01, 0xe2, 0x29, 0x4b, 0x2b, 0x34, 0x92, 0x65, 0x7f, 0xf8,
        0x00, 0x08, 0x00, 0x0b, 0x50, 0x60, 0x60, 0x60, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40, 0x00,
        0x00, 0x07, 0x82,
    ];
    const HEVC_PPS: &[u8] = &[0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40];

    #[test]
    fn hvcc_takes_profile_tier_level_chroma_and_depth_from_the_sps() {
        let mut data = Vec::new();
        for nal in [
            &[0x46, 0x01, 0x10][..],
            HEVC_VPS,
            HEVC_SPS,
            HEVC_PPS,
            &[0x26, 0x01, 0xaf],
        ] {
            data.extend_from_slice(&[0, 0, 0, 1]);
            data.extend_from_slice(nal);
        }
        let (sample, sets) = annexb_to_sample(&data, NalCodec::H265);
        assert_eq!(
            sample,
            [0, 0, 0, 3, 0x26, 0x01, 0xaf],
            "AUD and sets left out"
        );
        assert!(sets.complete(NalCodec::H265));
        let h = hvcc(&sets).unwrap();
        assert_eq!(h[0], 1);
        // Main profile (1), tier 0, compatibility flags 0x60000000, level 63 (2.1).
        assert_eq!(h[1], 0x01);
        assert_eq!(&h[2..6], [0x60, 0, 0, 0]);
        assert_eq!(h[6], 0x90, "progressive, frame only");
        assert_eq!(h[12], 63);
        assert_eq!(h[16], 0xfd, "4:2:0");
        assert_eq!(h[17], 0xf8, "8-bit luma");
        assert_eq!(h[18], 0xf8, "8-bit chroma");
        assert_eq!(h[21], 0x0f, "one temporal layer, nested, 4-byte lengths");
        // What mp4box.js (and GPAC) say for it: compatibility flags reversed, constraint bytes
        // up to the last non-zero one.
        assert_eq!(hvc_codecs(&h).unwrap(), "hvc1.1.6.L63.90");
        assert_eq!(h[22], 3);
        assert_eq!(&h[23..26], [0xa0, 0, 1]);
        assert_eq!(
            usize::from(u16::from_be_bytes([h[26], h[27]])),
            HEVC_VPS.len()
        );
        assert_eq!(
            h.len(),
            23 + 3 * 5 + HEVC_VPS.len() + HEVC_SPS.len() + HEVC_PPS.len()
        );
        // Truncated or missing sets give no record, not a panic.
        for cut in 0..HEVC_SPS.len() {
            let mut s = sets.clone();
            s.sps = vec![HEVC_SPS[..cut].to_vec()];
            let _ = hvcc(&s);
        }
        let mut s = sets.clone();
        s.vps.clear();
        assert!(hvcc(&s).is_none());
        s = sets.clone();
        s.sps = vec![HEVC_SPS_444.to_vec()];
        let h = hvcc(&s).unwrap();
        assert_eq!(h[1], 0x04, "RExt");
        assert!(hvc_codecs(&h).unwrap().starts_with("hvc1.4."));
        // High tier, profile space 2, level 5.1, two constraint bytes; too short: none.
        let mut r = [0u8; 13];
        r[1] = 0x80 | 0x20 | 2;
        r[2..6].copy_from_slice(&[0x20, 0, 0, 0]);
        r[6] = 0xb0;
        r[7] = 0x08;
        r[12] = 153;
        assert_eq!(hvc_codecs(&r).unwrap(), "hvc1.B2.4.H153.B0.08");
        assert_eq!(hvc_codecs(&r[..12]), None);
        assert_eq!(h[12], 63);
        assert_eq!(h[16], 0xff, "4:4:4");
        assert_eq!((h[17], h[18]), (0xfc, 0xfc), "12-bit");
    }

    #[test]
    fn emulation_prevention_bytes_are_removed() {
        assert_eq!(rbsp(&[0x42, 0x01, 0, 0, 3, 1, 0, 0, 3], 2), [0, 0, 1, 0, 0]);
    }

    #[test]
    fn exp_golomb() {
        // 1 -> 0, 010 -> 1, 011 -> 2, 00100 -> 3
        let data = [0b1010_0110, 0b0100_0000];
        let mut b = Bits {
            data: &data,
            pos: 0,
        };
        assert_eq!(
            [b.ue(), b.ue(), b.ue(), b.ue()],
            [Some(0), Some(1), Some(2), Some(3)]
        );
        assert_eq!(b.ue(), None);
    }

    #[test]
    fn adts_frames_become_raw_with_their_config() {
        // AAC LC, 44.1 kHz (index 4), stereo, protection absent, 7 + 3 bytes.
        let frame = [0xff, 0xf1, 0x50, 0x80, 0x01, 0x5f, 0xfc, 1, 2, 3];
        let two = [frame, frame].concat();
        let (frames, h) = adts_frames(&two);
        assert_eq!(frames, [&[1, 2, 3][..], &[1, 2, 3]]);
        let h = h.unwrap();
        assert_eq!(
            (h.object_type, h.frequency_index, h.channel_config),
            (2, 4, 2)
        );
        assert_eq!(h.audio_specific_config(), [0x12, 0x10]);
        // A frame length beyond the buffer stops there.
        assert_eq!(adts_frames(&frame[..8]).0.len(), 0);
        assert!(parse_adts(&[0xff, 0xf1, 0x50, 0x80, 0, 0, 0]).is_none());
    }

    #[test]
    fn opus_head_fields() {
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 2, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0, 0, 0]);
        let h = parse_opus_head(&head).unwrap();
        assert_eq!(
            h,
            OpusHead {
                channels: 2,
                pre_skip: 312,
                input_rate: 48000,
                gain: 0,
                mapping: None
            }
        );
        let mut six = b"OpusHead".to_vec();
        six.extend_from_slice(&[
            1, 6, 0, 0, 0x80, 0xbb, 0, 0, 0, 0, 1, 4, 2, 0, 4, 1, 2, 3, 5,
        ]);
        assert_eq!(
            parse_opus_head(&six).unwrap().mapping.unwrap(),
            [1, 4, 2, 0, 4, 1, 2, 3, 5]
        );
        assert!(parse_opus_head(&six[..20]).is_none());
        assert!(parse_opus_head(b"OpusTags").is_none());
    }

    #[test]
    fn av1_temporal_delimiters_are_dropped() {
        // TD (type 2, size 0), sequence header (type 1, 2 bytes), frame (type 6, 1 byte).
        let tu = [0x12, 0x00, 0x0a, 0x02, 0xaa, 0xbb, 0x32, 0x01, 0xcc];
        assert_eq!(
            av1_sample(&tu).unwrap(),
            [0x0a, 0x02, 0xaa, 0xbb, 0x32, 0x01, 0xcc]
        );
        assert!(av1_sample(&[0x32, 0x05, 0]).is_none(), "size past the end");
        assert!(av1_sample(&[0x30]).is_none(), "no size field");
    }

    /// The first temporal unit av1enc (libaom, Debian 12) wrote for 160x120 I420: temporal
    /// delimiter, then the sequence header OBU.
    const AV1_TU_START: &[u8] = &[
        0x12, 0x00, 0x0a, 0x0b, 0x00, 0x00, 0x00, 0x03, 0xb4, 0xff, 0x7e, 0x06, 0xd7, 0xc8, 0x02,
    ];

    #[test]
    fn av1c_from_the_sequence_header() {
        let seq = av1_sequence_header(AV1_TU_START).unwrap();
        assert_eq!(seq, &AV1_TU_START[2..]);
        let c = av1c(seq).unwrap();
        // Main profile, level 0 (2.0), 8-bit 4:2:0, chroma position 0.
        assert_eq!(&c[..4], [0x81, 0x00, 0x0c, 0x00]);
        assert_eq!(&c[4..], seq);
        // Truncated headers give no record, not a panic.
        for cut in 0..seq.len() {
            let mut t = seq[..cut].to_vec();
            if t.len() >= 2 {
                t[1] = (cut - 2) as u8;
            }
            let _ = av1c(&t);
        }
        assert!(av1c(&[0x12, 0x00]).is_none(), "not a sequence header");
    }

    #[test]
    fn avcc_of_high_profiles_carries_chroma_format_and_bit_depths() {
        // x264 (Debian 12) for 320x240: I420 High, and Y444 High 4:4:4 Predictive.
        let high = [
            0x67, 0x64, 0x00, 0x14, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x6a, 0x0c, 0x0c, 0x0d,
            0x4a, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x79, 0x1e, 0x28, 0x53,
            0x2c,
        ];
        let h444 = [
            0x67, 0xf4, 0x00, 0x0d, 0x91, 0x9b, 0x28, 0x28, 0x3f, 0x60, 0x2d, 0x41, 0x81, 0x81,
            0x90, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc8, 0xf1, 0x42, 0x99,
            0x60,
        ];
        for (sps, chroma) in [(&high[..], 1u8), (&h444[..], 3)] {
            let sets = ParameterSets {
                vps: vec![],
                sps: vec![sps.to_vec()],
                pps: vec![vec![0x68, 0xee]],
            };
            let c = avcc(&sets).unwrap();
            // 5 + 1 + 2 + SPS + 1 + 2 + PPS, then the 4 bytes of the High profile extension.
            assert_eq!(c.len(), 11 + sps.len() + 2 + 4);
            assert_eq!(&c[c.len() - 4..], [0xfc | chroma, 0xf8, 0xf8, 0]);
        }
    }
}
