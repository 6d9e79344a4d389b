//! RTP payloading of H.264 and Opus without a per-packet object: the packets of one frame are
//! written, headers and all, into a single allocation and handed out as [`Bytes`] slices of it,
//! which is what the publisher writes to the socket.
//!
//! Specifications: RFC 3550 §5.1 (the fixed header: sequence number, timestamp, SSRC, marker
//! bit), §5.3 (the profile's marker bit: last packet of a frame); RFC 6184 §5.6 (single NAL
//! unit packets), §5.8 (FU-A fragmentation units), §6.3 (non-interleaved mode), §8.1
//! (`packetization-mode`, `profile-level-id`, `sprop-parameter-sets`), §8.2.1 (SDP mapping);
//! ITU-T H.264 §7.3.2.1, §7.3.2.2 (the SPS and PPS ids read for bookkeeping), Annex B (byte
//! stream: start codes); ISO/IEC 14496-15 §5.3.3 (AVCDecoderConfigurationRecord, length-prefixed
//! NAL units); RFC 7798 §4.4.1 (H.265 single NAL unit packets), §4.4.3 (fragmentation units),
//! §7.1 (`sprop-vps`, `sprop-sps`, `sprop-pps`), ISO/IEC 14496-15 §8.3.3
//! (HEVCDecoderConfigurationRecord); RFC 7587 §4.2 (one Opus packet per RTP packet, 48 kHz timestamps), §6.1
//! (`OPUS/48000/2`, `sprop-stereo`, `sprop-maxcapturerate`); RFC 7845 §5.1, §5.2 (the OpusHead
//! and OpusTags headers, which are not sent).
//!
//! * H.264: each access unit (one input buffer) is split into NAL units; access unit
//!   delimiters (type 9) and filler data (12) are left out; SPS (7) and PPS (8) are remembered
//!   (from the AVCDecoderConfigurationRecord or in band) and sent before every IDR picture (5)
//!   of an access unit that does not carry them itself, so that a receiver joining at any
//!   keyframe decodes. A NAL unit that fits in `mtu` bytes of RTP goes as a single NAL unit
//!   packet, a larger one as FU-A fragments no packet of which exceeds `mtu`. The marker bit is
//!   set on the access unit's last packet (`packetization-mode=1`).
//! * H.265: the same rules with RFC 7798's two-byte NAL unit header: access unit delimiters
//!   (35) and filler data (38) left out, VPS (32), SPS (33) and PPS (34) sent before every IRAP
//!   picture (16-21) of an access unit that does not carry them, FU fragments (type 49) for a
//!   NAL unit larger than `mtu`. No aggregation packets, no DONL (`sprop-max-don-diff` 0).
//! * Opus: each input buffer is one Opus packet and one RTP packet (RFC 7587 forbids splitting
//!   it, so `mtu` cannot be honoured for a packet larger than it: an Opus packet is at most
//!   1275 bytes per frame, 120 ms at most, well under usual MTUs).
//!
//! Bad input never panics: truncated length prefixes, missing start codes and short parameter
//! sets are skipped.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use crate::rtsp::sdp::MediaDescription;

use super::RTP_FIXED_HEADER_LEN;

/// RTP clock rate of H.264 (RFC 6184 §8.2.1).
pub const H264_CLOCK_RATE: u32 = 90_000;
/// RTP clock rate of Opus (RFC 7587 §4.1).
pub const OPUS_CLOCK_RATE: u32 = 48_000;

/// Most SPS and PPS kept (H.264 §7.4.2.1: ids up to 31 and 255).
const MAX_SPS: usize = 32;
const MAX_PPS: usize = 256;

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const NAL_FILLER: u8 = 12;
const NAL_FU_A: u8 = 28;

/// The RTP header fields of one stream: payload type, SSRC, the next sequence number and the
/// timestamp offset (the last three random, RFC 3550 §5.1).
#[derive(Debug, Clone)]
pub struct RtpState {
    payload_type: u8,
    clock_rate: u32,
    ssrc: u32,
    seq: u16,
    timestamp_offset: u32,
    last_timestamp: u32,
}

impl RtpState {
    /// A stream with a random SSRC, first sequence number and timestamp offset.
    pub fn new(payload_type: u8, clock_rate: u32) -> RtpState {
        RtpState::with(
            payload_type,
            clock_rate,
            rand::random(),
            rand::random(),
            rand::random(),
        )
    }

    /// A stream with these SSRC, first sequence number and timestamp offset.
    pub fn with(
        payload_type: u8,
        clock_rate: u32,
        ssrc: u32,
        seq: u16,
        timestamp_offset: u32,
    ) -> RtpState {
        RtpState {
            payload_type: payload_type & 0x7f,
            clock_rate,
            ssrc,
            seq,
            timestamp_offset,
            last_timestamp: timestamp_offset,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// The RTP timestamp of a frame at `running_ns` nanoseconds (the timestamp offset plus the
    /// time in clock ticks, modulo 2^32); `None` (no time): the previous frame's.
    pub fn timestamp(&mut self, running_ns: Option<u64>) -> u32 {
        if let Some(ns) = running_ns {
            let ticks = u128::from(ns) * u128::from(self.clock_rate) / 1_000_000_000;
            self.last_timestamp = self
                .timestamp_offset
                .wrapping_add((ticks % (1u128 << 32)) as u32);
        }
        self.last_timestamp
    }
}

/// One packet to write: up to two bytes of payload header (FU-A indicator and header) and a
/// slice of the input.
struct Piece<'a> {
    prefix: [u8; 3],
    prefix_len: usize,
    data: &'a [u8],
}

/// Writes `pieces` as RTP packets of one frame (timestamp `timestamp`, the marker bit on the
/// last when `marker`) into one allocation, appended to `out`.
fn write_frame(
    rtp: &mut RtpState,
    timestamp: u32,
    pieces: &[Piece<'_>],
    marker: bool,
    out: &mut Vec<Bytes>,
) {
    if pieces.is_empty() {
        return;
    }
    let total: usize = pieces
        .iter()
        .map(|p| RTP_FIXED_HEADER_LEN + p.prefix_len + p.data.len())
        .sum();
    let mut buf = BytesMut::with_capacity(total);
    out.reserve(pieces.len());
    let last = pieces.len() - 1;
    for (i, p) in pieces.iter().enumerate() {
        let m = if marker && i == last { 0x80 } else { 0 };
        buf.put_u8(0x80); // version 2, no padding, no extension, no CSRC
        buf.put_u8(m | rtp.payload_type);
        buf.put_u16(rtp.seq);
        buf.put_u32(timestamp);
        buf.put_u32(rtp.ssrc);
        buf.put_slice(&p.prefix[..p.prefix_len]);
        buf.put_slice(p.data);
        rtp.seq = rtp.seq.wrapping_add(1);
        out.push(
            buf.split_to(RTP_FIXED_HEADER_LEN + p.prefix_len + p.data.len())
                .freeze(),
        );
    }
}

/// A NAL unit as one single NAL unit packet when it fits in `max_payload` bytes, else as FU-A
/// fragments (RFC 6184 §5.8): the NAL header's F and NRI in the indicator, its type in the FU
/// header with S on the first fragment and E on the last.
fn push_nal<'a>(pieces: &mut Vec<Piece<'a>>, nal: &'a [u8], max_payload: usize) {
    if nal.len() <= max_payload {
        pieces.push(Piece {
            prefix: [0; 3],
            prefix_len: 0,
            data: nal,
        });
        return;
    }
    let indicator = (nal[0] & 0xe0) | NAL_FU_A;
    let kind = nal[0] & 0x1f;
    let body = &nal[1..];
    let chunk = max_payload.saturating_sub(2).max(1);
    let n = body.len().div_ceil(chunk);
    for (i, part) in body.chunks(chunk).enumerate() {
        let start = if i == 0 { 0x80 } else { 0 };
        let end = if i + 1 == n { 0x40 } else { 0 };
        pieces.push(Piece {
            prefix: [indicator, start | end | kind, 0],
            prefix_len: 2,
            data: part,
        });
    }
}

/// How the H.264 input frames its NAL units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Framing {
    /// Annex B byte stream: start codes.
    ByteStream,
    /// Length-prefixed (`avc`), the prefix `length_size` bytes long (1, 2 or 4).
    Avc { length_size: usize },
}

impl H264Framing {
    /// The (start, end) of each NAL unit of `au` as framed so, into `out` (cleared first).
    fn nal_units(self, au: &[u8], out: &mut Vec<(usize, usize)>) {
        out.clear();
        match self {
            H264Framing::ByteStream => annexb_nal_units(au, out),
            H264Framing::Avc { length_size } => avc_nal_units(au, length_size, out),
        }
    }
}

/// An AVCDecoderConfigurationRecord that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid AVCDecoderConfigurationRecord: {0}")]
pub struct AvccError(&'static str);

/// The NAL unit length size and the SPS and PPS of an AVCDecoderConfigurationRecord.
pub type Avcc = (usize, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Reads an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1.2).
pub fn parse_avcc(data: &[u8]) -> Result<Avcc, AvccError> {
    let mut r = data;
    let mut take = |n: usize| -> Result<&[u8], AvccError> {
        if r.len() < n {
            return Err(AvccError("truncated"));
        }
        let (head, rest) = r.split_at(n);
        r = rest;
        Ok(head)
    };
    let fixed = take(6)?;
    if fixed[0] != 1 {
        return Err(AvccError("configurationVersion is not 1"));
    }
    let length_size = usize::from(fixed[4] & 0x03) + 1;
    if length_size == 3 {
        return Err(AvccError("lengthSizeMinusOne is 2"));
    }
    let mut sets = [Vec::new(), Vec::new()];
    for (k, set) in sets.iter_mut().enumerate() {
        let count = if k == 0 {
            usize::from(fixed[5] & 0x1f)
        } else {
            usize::from(take(1)?[0])
        };
        for _ in 0..count {
            let len = take(2)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let nal = take(len)?;
            if !nal.is_empty() {
                set.push(nal.to_vec());
            }
        }
    }
    let [sps, pps] = sets;
    Ok((length_size, sps, pps))
}

/// The NAL units of an Annex B byte stream (start codes `00 00 01` or `00 00 00 01`, trailing
/// zero bytes dropped). Bytes before the first start code are a NAL unit of their own only
/// when there is no start code at all.
pub fn annexb_nal_units(data: &[u8], out: &mut Vec<(usize, usize)>) {
    // (start, end) of each NAL unit's bytes.
    let first = out.len();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i + 2 < data.len() {
        if data[i + 2] > 1 {
            i += 3;
        } else if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            if let Some(s) = start {
                out.push((s, i));
            }
            start = Some(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    match start {
        Some(s) => out.push((s, data.len())),
        None if out.len() == first && !data.is_empty() => out.push((0, data.len())),
        None => {}
    }
    for nal in &mut out[first..] {
        while nal.1 > nal.0 && data[nal.1 - 1] == 0 {
            nal.1 -= 1;
        }
    }
    let mut k = first;
    while k < out.len() {
        if out[k].0 >= out[k].1 {
            out.remove(k);
        } else {
            k += 1;
        }
    }
}

/// The NAL units of a length-prefixed access unit; a length running past the end ends it.
pub fn avc_nal_units(data: &[u8], length_size: usize, out: &mut Vec<(usize, usize)>) {
    let mut i = 0usize;
    while let Some(prefix) = data.get(i..i.saturating_add(length_size)) {
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let start = i + length_size;
        let Some(end) = start.checked_add(len).filter(|&e| e <= data.len()) else {
            log::trace!(
                "length-prefixed NAL unit of {len} bytes runs past the end of its access unit \
                 ({} bytes left): the rest is left out",
                data.len() - start
            );
            break;
        };
        if len > 0 {
            out.push((start, end));
        }
        i = end;
        if length_size == 0 {
            break;
        }
    }
}

/// Reads an unsigned Exp-Golomb code (H.264 §9.1) at bit `*pos` of `data` (emulation
/// prevention bytes are not removed: the ids read here sit in the first bytes of a parameter
/// set, before any can occur in practice).
fn read_ue(data: &[u8], pos: &mut usize) -> Option<u32> {
    let bit = |p: usize| -> Option<u32> {
        let byte = data.get(p / 8)?;
        Some(u32::from((byte >> (7 - (p % 8))) & 1))
    };
    let mut zeros = 0;
    while bit(*pos)? == 0 {
        zeros += 1;
        *pos += 1;
        if zeros > 31 {
            return None;
        }
    }
    *pos += 1;
    let mut value = 0u32;
    for _ in 0..zeros {
        value = (value << 1) | bit(*pos)?;
        *pos += 1;
    }
    Some(((1u64 << zeros) - 1 + u64::from(value)).min(u64::from(u32::MAX)) as u32)
}

/// seq_parameter_set_id of an SPS NAL unit (header included), 0 when unreadable.
fn sps_id(nal: &[u8]) -> u32 {
    let mut pos = 32; // NAL header, profile_idc, constraint flags, level_idc
    read_ue(nal, &mut pos).unwrap_or(0)
}

/// pic_parameter_set_id of a PPS NAL unit (header included), 0 when unreadable.
fn pps_id(nal: &[u8]) -> u32 {
    let mut pos = 8;
    read_ue(nal, &mut pos).unwrap_or(0)
}

/// Keeps `nal` as the parameter set `id`; true when that changed what is kept.
fn remember(sets: &mut Vec<(u32, Vec<u8>)>, id: u32, nal: &[u8], max: usize) -> bool {
    if let Some(slot) = sets.iter_mut().find(|(i, _)| *i == id) {
        if slot.1 == nal {
            return false;
        }
        slot.1 = nal.to_vec();
        return true;
    }
    if sets.len() >= max {
        return false;
    }
    sets.push((id, nal.to_vec()));
    true
}

/// RFC 6184 payloader (packetization-mode 1: single NAL unit packets and FU-A).
#[derive(Debug, Clone)]
pub struct H264Payloader {
    rtp: RtpState,
    mtu: usize,
    framing: H264Framing,
    sps: Vec<(u32, Vec<u8>)>,
    pps: Vec<(u32, Vec<u8>)>,
    /// The parameter sets changed since [`H264Payloader::take_media_change`].
    changed: bool,
    nals: Vec<(usize, usize)>,
}

impl H264Payloader {
    /// `mtu`: the largest RTP packet made (header included).
    pub fn new(rtp: RtpState, mtu: usize, framing: H264Framing) -> H264Payloader {
        H264Payloader {
            rtp,
            mtu,
            framing,
            sps: Vec::new(),
            pps: Vec::new(),
            changed: false,
            nals: Vec::new(),
        }
    }

    /// For length-prefixed input: its AVCDecoderConfigurationRecord (the length size and the
    /// parameter sets).
    pub fn with_avcc(rtp: RtpState, mtu: usize, avcc: &[u8]) -> Result<H264Payloader, AvccError> {
        let (length_size, sps, pps) = parse_avcc(avcc)?;
        let mut pay = H264Payloader::new(rtp, mtu, H264Framing::Avc { length_size });
        for nal in sps {
            pay.changed |= remember(&mut pay.sps, sps_id(&nal), &nal, MAX_SPS);
        }
        for nal in pps {
            pay.changed |= remember(&mut pay.pps, pps_id(&nal), &nal, MAX_PPS);
        }
        Ok(pay)
    }

    pub fn rtp(&self) -> &RtpState {
        &self.rtp
    }

    /// The RTP packets of one access unit at `running_ns`, appended to `out`.
    pub fn payload(&mut self, au: &[u8], running_ns: Option<u64>, out: &mut Vec<Bytes>) {
        let timestamp = self.rtp.timestamp(running_ns);
        let mut nals = std::mem::take(&mut self.nals);
        self.framing.nal_units(au, &mut nals);
        // In-band parameter sets first: they replace what the record or earlier frames gave.
        let (mut has_sps, mut has_pps) = (false, false);
        for &(s, e) in &nals {
            let nal = &au[s..e];
            match nal[0] & 0x1f {
                NAL_SPS => {
                    has_sps = true;
                    self.changed |= remember(&mut self.sps, sps_id(nal), nal, MAX_SPS);
                }
                NAL_PPS => {
                    has_pps = true;
                    self.changed |= remember(&mut self.pps, pps_id(nal), nal, MAX_PPS);
                }
                _ => {}
            }
        }
        let max_payload = self.mtu.saturating_sub(RTP_FIXED_HEADER_LEN).max(3);
        let mut pieces: Vec<Piece<'_>> = Vec::new();
        let mut params_sent = false;
        for &(s, e) in &nals {
            let nal = &au[s..e];
            match nal[0] & 0x1f {
                NAL_AUD | NAL_FILLER => continue,
                NAL_IDR if !params_sent && (!has_sps || !has_pps) => {
                    // RFC 6184 §8.4 recommends parameter sets out of band too; here they go
                    // in band before each IDR so a receiver joining at any keyframe decodes.
                    if !has_sps {
                        for (_, sps) in &self.sps {
                            push_nal(&mut pieces, sps, max_payload);
                        }
                    }
                    if !has_pps {
                        for (_, pps) in &self.pps {
                            push_nal(&mut pieces, pps, max_payload);
                        }
                    }
                    params_sent = true;
                }
                _ => {}
            }
            push_nal(&mut pieces, nal, max_payload);
        }
        write_frame(&mut self.rtp, timestamp, &pieces, true, out);
        drop(pieces);
        self.nals = nals;
    }

    /// The SDP media description (RFC 6184 §8.2.1) once an SPS and a PPS are known, and only
    /// when they changed since the last call.
    pub fn take_media_change(&mut self) -> Option<MediaDescription> {
        if !self.changed {
            return None;
        }
        let media = self.media()?;
        self.changed = false;
        Some(media)
    }

    /// The SDP media description: `H264/90000`, `packetization-mode=1`, `profile-level-id`
    /// from the first SPS, `sprop-parameter-sets` (SPSs, then PPSs); `None` before an SPS and
    /// a PPS are known.
    pub fn media(&self) -> Option<MediaDescription> {
        let (_, first) = self.sps.first()?;
        if self.pps.is_empty() {
            return None;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let sprop = self
            .sps
            .iter()
            .chain(&self.pps)
            .map(|(_, nal)| b64.encode(nal))
            .collect::<Vec<_>>()
            .join(",");
        let mut fmtp = vec![("packetization-mode".to_owned(), "1".to_owned())];
        if let Some(p) = first.get(1..4) {
            fmtp.push((
                "profile-level-id".to_owned(),
                format!("{:02x}{:02x}{:02x}", p[0], p[1], p[2]),
            ));
        }
        fmtp.push(("sprop-parameter-sets".to_owned(), sprop));
        Some(media(
            "video",
            self.rtp.payload_type,
            "H264",
            H264_CLOCK_RATE,
            None,
            fmtp,
        ))
    }
}

fn media(
    kind: &str,
    payload_type: u8,
    encoding_name: &str,
    clock_rate: u32,
    encoding_params: Option<&str>,
    fmtp: Vec<(String, String)>,
) -> MediaDescription {
    MediaDescription {
        media: kind.to_owned(),
        payload_type,
        encoding_name: encoding_name.to_owned(),
        clock_rate,
        encoding_params: encoding_params.map(str::to_owned),
        fmtp,
        control: String::new(),
        multicast: None,
        port: 0,
        bandwidth_kbps: None,
        attributes: Vec::new(),
    }
}

const HEVC_IRAP: std::ops::RangeInclusive<u8> = 16..=21;
const HEVC_VPS: u8 = 32;
const HEVC_SPS: u8 = 33;
const HEVC_PPS: u8 = 34;
const HEVC_AUD: u8 = 35;
const HEVC_FILLER: u8 = 38;
const HEVC_FU: u8 = 49;

/// A H.265 NAL unit (two header bytes at least) as one single NAL unit packet when it fits in
/// `max_payload` bytes, else as fragmentation units (RFC 7798 §4.4.3): a payload header of
/// type 49 with the NAL header's F, LayerId and TID, then the FU header with S on the first
/// fragment, E on the last and the NAL unit type.
fn push_hevc_nal<'a>(pieces: &mut Vec<Piece<'a>>, nal: &'a [u8], max_payload: usize) {
    if nal.len() <= max_payload || nal.len() < 3 {
        pieces.push(Piece {
            prefix: [0; 3],
            prefix_len: 0,
            data: nal,
        });
        return;
    }
    let header = [(nal[0] & 0x81) | (HEVC_FU << 1), nal[1]];
    let kind = (nal[0] >> 1) & 0x3f;
    let body = &nal[2..];
    let chunk = max_payload.saturating_sub(3).max(1);
    let n = body.len().div_ceil(chunk);
    for (i, part) in body.chunks(chunk).enumerate() {
        let start = if i == 0 { 0x80 } else { 0 };
        let end = if i + 1 == n { 0x40 } else { 0 };
        pieces.push(Piece {
            prefix: [header[0], header[1], start | end | kind],
            prefix_len: 3,
            data: part,
        });
    }
}

/// The NAL unit length size and the VPS, SPS and PPS of a HEVCDecoderConfigurationRecord.
pub type Hvcc = (usize, Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Reads a HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 §8.3.3.1.2): 22 fixed bytes, then
/// arrays of NAL units by type.
pub fn parse_hvcc(data: &[u8]) -> Result<Hvcc, AvccError> {
    let mut r = data;
    let mut take = |n: usize| -> Result<&[u8], AvccError> {
        if r.len() < n {
            return Err(AvccError("truncated"));
        }
        let (head, rest) = r.split_at(n);
        r = rest;
        Ok(head)
    };
    let fixed = take(23)?;
    if fixed[0] != 1 {
        return Err(AvccError("configurationVersion is not 1"));
    }
    let length_size = usize::from(fixed[21] & 0x03) + 1;
    if length_size == 3 {
        return Err(AvccError("lengthSizeMinusOne is 2"));
    }
    let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..fixed[22] {
        let kind = take(1)?[0] & 0x3f;
        let count = take(2)?;
        for _ in 0..u16::from_be_bytes([count[0], count[1]]) {
            let len = take(2)?;
            let nal = take(usize::from(u16::from_be_bytes([len[0], len[1]])))?;
            let set = match kind {
                HEVC_VPS => &mut vps,
                HEVC_SPS => &mut sps,
                HEVC_PPS => &mut pps,
                _ => continue,
            };
            if nal.len() >= 2 {
                set.push(nal.to_vec());
            }
        }
    }
    Ok((length_size, vps, sps, pps))
}

/// RFC 7798 payloader (single NAL unit packets and fragmentation units).
#[derive(Debug, Clone)]
pub struct H265Payloader {
    rtp: RtpState,
    mtu: usize,
    framing: H264Framing,
    /// (NAL unit type, bytes) of the parameter sets, the latest of each kind (one VPS, SPS
    /// and PPS; streams with several keep them in band).
    params: [Option<Vec<u8>>; 3],
    changed: bool,
    nals: Vec<(usize, usize)>,
}

impl H265Payloader {
    /// `framing`: start codes or length prefixes, as for H.264.
    pub fn new(rtp: RtpState, mtu: usize, framing: H264Framing) -> H265Payloader {
        H265Payloader {
            rtp,
            mtu,
            framing,
            params: [None, None, None],
            changed: false,
            nals: Vec::new(),
        }
    }

    /// For length-prefixed input (`hvc1`/`hev1`): its HEVCDecoderConfigurationRecord.
    pub fn with_hvcc(rtp: RtpState, mtu: usize, hvcc: &[u8]) -> Result<H265Payloader, AvccError> {
        let (length_size, vps, sps, pps) = parse_hvcc(hvcc)?;
        let mut pay = H265Payloader::new(rtp, mtu, H264Framing::Avc { length_size });
        for (k, set) in [vps, sps, pps].into_iter().enumerate() {
            if let Some(first) = set.into_iter().next() {
                pay.params[k] = Some(first);
                pay.changed = true;
            }
        }
        Ok(pay)
    }

    pub fn rtp(&self) -> &RtpState {
        &self.rtp
    }

    /// The RTP packets of one access unit at `running_ns`, appended to `out`.
    pub fn payload(&mut self, au: &[u8], running_ns: Option<u64>, out: &mut Vec<Bytes>) {
        let timestamp = self.rtp.timestamp(running_ns);
        let mut nals = std::mem::take(&mut self.nals);
        self.framing.nal_units(au, &mut nals);
        let mut has = [false; 3];
        for &(s, e) in &nals {
            let nal = &au[s..e];
            let kind = (nal[0] >> 1) & 0x3f;
            if (HEVC_VPS..=HEVC_PPS).contains(&kind) && nal.len() >= 2 {
                let k = usize::from(kind - HEVC_VPS);
                has[k] = true;
                if self.params[k].as_deref() != Some(nal) {
                    self.params[k] = Some(nal.to_vec());
                    self.changed = true;
                }
            }
        }
        let max_payload = self.mtu.saturating_sub(RTP_FIXED_HEADER_LEN).max(4);
        let mut pieces: Vec<Piece<'_>> = Vec::new();
        let mut params_sent = false;
        for &(s, e) in &nals {
            let nal = &au[s..e];
            if nal.len() < 2 {
                continue;
            }
            let kind = (nal[0] >> 1) & 0x3f;
            if kind == HEVC_AUD || kind == HEVC_FILLER {
                continue;
            }
            if HEVC_IRAP.contains(&kind) && !params_sent {
                for (k, param) in self.params.iter().enumerate() {
                    if let (false, Some(param)) = (has[k], param) {
                        push_hevc_nal(&mut pieces, param, max_payload);
                    }
                }
                params_sent = true;
            }
            push_hevc_nal(&mut pieces, nal, max_payload);
        }
        write_frame(&mut self.rtp, timestamp, &pieces, true, out);
        drop(pieces);
        self.nals = nals;
    }

    /// The SDP media description when it became known or changed since the last call.
    pub fn take_media_change(&mut self) -> Option<MediaDescription> {
        if !self.changed {
            return None;
        }
        let media = self.media()?;
        self.changed = false;
        Some(media)
    }

    /// `H265/90000` with `sprop-vps`, `sprop-sps` and `sprop-pps` (RFC 7798 §7.1); `None`
    /// before all three are known.
    pub fn media(&self) -> Option<MediaDescription> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut fmtp = Vec::new();
        for (name, param) in ["sprop-vps", "sprop-sps", "sprop-pps"]
            .into_iter()
            .zip(&self.params)
        {
            fmtp.push((name.to_owned(), b64.encode(param.as_ref()?)));
        }
        Some(media(
            "video",
            self.rtp.payload_type,
            "H265",
            H264_CLOCK_RATE,
            None,
            fmtp,
        ))
    }
}

/// RFC 7587 payloader: one Opus packet per RTP packet.
#[derive(Debug, Clone)]
pub struct OpusPayloader {
    rtp: RtpState,
    channels: u32,
    rate: u32,
}

impl OpusPayloader {
    /// `channels` (1 or 2) and `rate` (the capture rate) of the input.
    pub fn new(rtp: RtpState, channels: u32, rate: u32) -> OpusPayloader {
        OpusPayloader {
            rtp,
            channels,
            rate,
        }
    }

    pub fn rtp(&self) -> &RtpState {
        &self.rtp
    }

    /// The RTP packet of one Opus packet at `running_ns`, appended to `out`; nothing for an
    /// empty buffer or an OpusHead/OpusTags header.
    pub fn payload(&mut self, packet: &[u8], running_ns: Option<u64>, out: &mut Vec<Bytes>) {
        if packet.is_empty() || packet.starts_with(b"OpusHead") || packet.starts_with(b"OpusTags") {
            return;
        }
        let timestamp = self.rtp.timestamp(running_ns);
        let piece = Piece {
            prefix: [0; 3],
            prefix_len: 0,
            data: packet,
        };
        write_frame(&mut self.rtp, timestamp, &[piece], false, out);
    }

    /// `OPUS/48000/2` (always, RFC 7587 §7) with `sprop-stereo` and `sprop-maxcapturerate`.
    pub fn media(&self) -> MediaDescription {
        media(
            "audio",
            self.rtp.payload_type,
            "OPUS",
            OPUS_CLOCK_RATE,
            Some("2"),
            vec![
                (
                    "sprop-stereo".to_owned(),
                    if self.channels == 2 { "1" } else { "0" }.to_owned(),
                ),
                ("sprop-maxcapturerate".to_owned(), self.rate.to_string()),
            ],
        )
    }
}

/// A payloader of either kind.
#[derive(Debug, Clone)]
pub enum Payloader {
    H264(H264Payloader),
    H265(H265Payloader),
    Opus(OpusPayloader),
}

impl Payloader {
    /// The RTP packets of one input buffer at `running_ns`, appended to `out`.
    pub fn payload(&mut self, data: &[u8], running_ns: Option<u64>, out: &mut Vec<Bytes>) {
        match self {
            Payloader::H264(p) => p.payload(data, running_ns, out),
            Payloader::H265(p) => p.payload(data, running_ns, out),
            Payloader::Opus(p) => p.payload(data, running_ns, out),
        }
    }

    /// The media description, when known.
    pub fn media(&self) -> Option<MediaDescription> {
        match self {
            Payloader::H264(p) => p.media(),
            Payloader::H265(p) => p.media(),
            Payloader::Opus(p) => Some(p.media()),
        }
    }

    /// The media description when it became known or changed since the last call.
    pub fn take_media_change(&mut self) -> Option<MediaDescription> {
        match self {
            Payloader::H264(p) => p.take_media_change(),
            Payloader::H265(p) => p.take_media_change(),
            Payloader::Opus(_) => None,
        }
    }

    pub fn rtp(&self) -> &RtpState {
        match self {
            Payloader::H264(p) => p.rtp(),
            Payloader::H265(p) => p.rtp(),
            Payloader::Opus(p) => p.rtp(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{parse_rtp_header, rtp_payload};

    fn state() -> RtpState {
        RtpState::with(96, H264_CLOCK_RATE, 0x1122_3344, 0xfffe, 1000)
    }

    const SPS: [u8; 8] = [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16];
    const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, n) in nals.iter().enumerate() {
            v.extend_from_slice(if i == 0 {
                &[0, 0, 0, 1][..]
            } else {
                &[0, 0, 1][..]
            });
            v.extend_from_slice(n);
        }
        v
    }

    fn avc(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    fn avcc() -> Vec<u8> {
        let mut v = vec![1, 0x42, 0xc0, 0x1f, 0xff, 0xe1];
        v.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
        v.extend_from_slice(&SPS);
        v.push(1);
        v.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
        v.extend_from_slice(&PPS);
        v
    }

    /// (marker, seq, timestamp, payload) of each packet.
    fn parts(packets: &[Bytes]) -> Vec<(bool, u16, u32, Vec<u8>)> {
        packets
            .iter()
            .map(|p| {
                let h = parse_rtp_header(p).unwrap();
                assert_eq!(h.ssrc, 0x1122_3344);
                assert_eq!(h.payload_type, 96);
                (
                    h.marker,
                    h.sequence,
                    h.timestamp,
                    rtp_payload(p, &h).to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn rtp_header_bytes() {
        let mut rtp = state();
        let mut out = Vec::new();
        let piece = Piece {
            prefix: [0; 3],
            prefix_len: 0,
            data: &[0xaa],
        };
        write_frame(&mut rtp, 0x0102_0304, &[piece], true, &mut out);
        assert_eq!(
            out[0].as_ref(),
            &[
                0x80, 0xe0, 0xff, 0xfe, 0x01, 0x02, 0x03, 0x04, 0x11, 0x22, 0x33, 0x44, 0xaa
            ]
        );
    }

    #[test]
    fn timestamps_from_running_time_wrap() {
        let mut rtp = RtpState::with(96, H264_CLOCK_RATE, 1, 0, u32::MAX - 89);
        assert_eq!(rtp.timestamp(Some(0)), u32::MAX - 89);
        // 1 ms at 90 kHz: 90 ticks, past the wrap.
        assert_eq!(rtp.timestamp(Some(1_000_000)), 0);
        assert_eq!(rtp.timestamp(None), 0);
        // Hours in: no overflow.
        let _ = rtp.timestamp(Some(u64::MAX));
    }

    #[test]
    fn single_nal_units_with_marker_on_the_last() {
        let mut pay = H264Payloader::new(state(), 1400, H264Framing::ByteStream);
        let mut out = Vec::new();
        let slice = [0x41, 1, 2, 3];
        let au = annexb(&[&[0x09, 0xf0], &slice, &[0x41, 4, 5, 0, 0]]);
        pay.payload(&au, Some(1_000_000_000), &mut out);
        let p = parts(&out);
        // The AUD is left out, the trailing zero bytes too.
        assert_eq!(
            p,
            vec![
                (false, 0xfffe, 1000 + 90_000, slice.to_vec()),
                (true, 0xffff, 1000 + 90_000, vec![0x41, 4, 5]),
            ]
        );
        out.clear();
        pay.payload(&annexb(&[&slice]), Some(1_040_000_000), &mut out);
        let p = parts(&out);
        assert_eq!(p, vec![(true, 0, 1000 + 93_600, slice.to_vec())]);
    }

    #[test]
    fn fu_a_fragments_fit_the_mtu() {
        let mtu = 100;
        let mut pay = H264Payloader::new(state(), mtu, H264Framing::Avc { length_size: 4 });
        let mut idr = vec![0x65];
        idr.extend((0..250u32).map(|i| i as u8));
        let mut out = Vec::new();
        pay.payload(&avc(&[&idr]), Some(0), &mut out);
        assert!(out.iter().all(|p| p.len() <= mtu));
        let p = parts(&out);
        // 250 bytes after the NAL header, 86 per fragment (100 - 12 - 2): 86 + 86 + 78.
        assert_eq!(p.len(), 3);
        assert_eq!(&p[0].3[..2], &[0x7c, 0x85]); // NRI 3, type 28; S, type 5
        assert_eq!(&p[1].3[..2], &[0x7c, 0x05]);
        assert_eq!(&p[2].3[..2], &[0x7c, 0x45]); // E
        assert_eq!([false, false, true], [p[0].0, p[1].0, p[2].0]);
        let body: Vec<u8> = p.iter().flat_map(|x| x.3[2..].to_vec()).collect();
        assert_eq!(body, idr[1..]);
        // One NAL unit of exactly mtu - 12 bytes still goes whole.
        out.clear();
        let fits = vec![0x41; mtu - 12];
        pay.payload(&avc(&[&fits]), Some(0), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), mtu);
    }

    #[test]
    fn parameter_sets_before_every_idr_from_the_record() {
        let mut pay = H264Payloader::with_avcc(state(), 1400, &avcc()).unwrap();
        let idr = [0x65, 0x88, 0x84];
        let mut out = Vec::new();
        pay.payload(&avc(&[&[0x09, 0xf0], &idr]), Some(0), &mut out);
        let p: Vec<Vec<u8>> = parts(&out).into_iter().map(|x| x.3).collect();
        assert_eq!(p, vec![SPS.to_vec(), PPS.to_vec(), idr.to_vec()]);
        // Not before a non-IDR slice.
        out.clear();
        pay.payload(&avc(&[&[0x41, 0x9a]]), Some(0), &mut out);
        assert_eq!(out.len(), 1);
        // Again before the next IDR.
        out.clear();
        pay.payload(&avc(&[&idr]), Some(0), &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn in_band_parameter_sets_are_not_repeated_and_replace_the_old() {
        let mut pay = H264Payloader::new(state(), 1400, H264Framing::ByteStream);
        assert!(pay.take_media_change().is_none());
        let idr = [0x65, 0x88];
        let mut out = Vec::new();
        pay.payload(&annexb(&[&SPS, &PPS, &idr]), Some(0), &mut out);
        assert_eq!(out.len(), 3);
        let media = pay
            .take_media_change()
            .expect("known after the first SPS/PPS");
        assert!(pay.take_media_change().is_none());
        assert_eq!(media.encoding_name, "H264");
        assert_eq!(media.clock_rate, 90_000);
        assert_eq!(
            media.fmtp,
            vec![
                ("packetization-mode".into(), "1".into()),
                ("profile-level-id".into(), "42c01f".into()),
                (
                    "sprop-parameter-sets".into(),
                    "Z0LAH9oBQBY=,aM48gA==".into()
                ),
            ]
        );
        // A new SPS with the same id replaces the old one.
        let sps2 = [0x67, 0x4d, 0x40, 0x1f, 0xda, 0x01];
        out.clear();
        pay.payload(&annexb(&[&sps2, &PPS, &idr]), Some(0), &mut out);
        let media = pay.take_media_change().unwrap();
        assert_eq!(media.fmtp[1].1, "4d401f");
        out.clear();
        pay.payload(&annexb(&[&idr]), Some(0), &mut out);
        let p: Vec<Vec<u8>> = parts(&out).into_iter().map(|x| x.3).collect();
        assert_eq!(p, vec![sps2.to_vec(), PPS.to_vec(), idr.to_vec()]);
    }

    #[test]
    fn bad_input_does_not_panic() {
        let mut pay = H264Payloader::new(state(), 1400, H264Framing::Avc { length_size: 4 });
        let mut out = Vec::new();
        for au in [
            &[][..],
            &[0, 0][..],
            &[0, 0, 0, 9, 0x65][..],
            &[0xff, 0xff, 0xff, 0xff][..],
            &[0, 0, 0, 0, 0, 0, 0, 1, 0x41][..],
        ] {
            pay.payload(au, None, &mut out);
        }
        assert_eq!(
            parts(&out).iter().map(|x| x.3.clone()).collect::<Vec<_>>(),
            vec![vec![0x41]]
        );
        let mut pay = H264Payloader::new(state(), 0, H264Framing::ByteStream);
        out.clear();
        for au in [
            &[][..],
            &[0, 0, 1][..],
            &[0, 0, 0, 1, 0, 0, 1][..],
            &[1, 2, 3][..],
        ] {
            pay.payload(au, None, &mut out);
        }
        // Without a start code the whole buffer is one NAL unit.
        assert_eq!(
            parts(&out).iter().map(|x| x.3.clone()).collect::<Vec<_>>(),
            vec![vec![1, 2, 3]]
        );
        // An MTU below the header still makes packets (one byte of NAL unit per fragment).
        out.clear();
        pay.payload(&annexb(&[&[0x65, 1, 2, 3]]), None, &mut out);
        assert_eq!(out.len(), 3);
        assert!(parse_avcc(&[1, 0x42]).is_err());
        assert!(parse_avcc(&[1, 0x42, 0, 0x1f, 0xff, 0xe1, 0, 9, 0x67]).is_err());
        assert!(parse_avcc(&[0, 0x42, 0, 0x1f, 0xff, 0xe0, 0]).is_err());
        let (len, sps, pps) = parse_avcc(&avcc()).unwrap();
        assert_eq!((len, sps, pps), (4, vec![SPS.to_vec()], vec![PPS.to_vec()]));
    }

    #[test]
    fn parameter_set_ids() {
        assert_eq!(sps_id(&SPS), 0);
        // ue(v) "011" = 2 after the three fixed bytes.
        assert_eq!(sps_id(&[0x67, 0x42, 0xc0, 0x1f, 0b0110_0000]), 2);
        assert_eq!(pps_id(&PPS), 0);
        assert_eq!(pps_id(&[0x68, 0b0010_0000]), 3);
        assert_eq!(pps_id(&[0x68]), 0);
    }

    const VPS: [u8; 4] = [0x40, 0x01, 0x0c, 0x01];
    const HSPS: [u8; 4] = [0x42, 0x01, 0x01, 0x01];
    const HPPS: [u8; 4] = [0x44, 0x01, 0xc1, 0x72];

    fn hvcc() -> Vec<u8> {
        let mut v = vec![1];
        v.extend_from_slice(&[0; 20]);
        v.push(0xf3); // lengthSizeMinusOne 3
        v.push(3);
        for nal in [&VPS, &HSPS, &HPPS] {
            v.push((nal[0] >> 1) & 0x3f);
            v.extend_from_slice(&1u16.to_be_bytes());
            v.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            v.extend_from_slice(nal);
        }
        v
    }

    #[test]
    fn h265_parameter_sets_before_irap_and_fragments() {
        let mut pay = H265Payloader::with_hvcc(state(), 100, &hvcc()).unwrap();
        let media = pay.take_media_change().unwrap();
        assert_eq!(media.encoding_name, "H265");
        assert_eq!(
            media.fmtp,
            vec![
                ("sprop-vps".into(), "QAEMAQ==".into()),
                ("sprop-sps".into(), "QgEBAQ==".into()),
                ("sprop-pps".into(), "RAHBcg==".into()),
            ]
        );
        // An IDR_W_RADL (19) of 200 bytes after its two-byte header, and an AUD (35).
        let mut idr = vec![19 << 1, 0x01];
        idr.extend((0..200u32).map(|i| i as u8));
        let mut out = Vec::new();
        pay.payload(&avc(&[&[35 << 1, 1, 0x50], &idr]), Some(0), &mut out);
        assert!(out.iter().all(|p| p.len() <= 100));
        let p = parts(&out);
        assert_eq!(p[0].3, VPS);
        assert_eq!(p[1].3, HSPS);
        assert_eq!(p[2].3, HPPS);
        // 200 bytes, 85 per fragment (100 - 12 - 3): 85 + 85 + 30.
        assert_eq!(p.len(), 6);
        assert_eq!(&p[3].3[..3], &[49 << 1, 0x01, 0x80 | 19]);
        assert_eq!(&p[4].3[..3], &[49 << 1, 0x01, 19]);
        assert_eq!(&p[5].3[..3], &[49 << 1, 0x01, 0x40 | 19]);
        assert!(p[5].0 && !p[4].0);
        let body: Vec<u8> = p[3..].iter().flat_map(|x| x.3[3..].to_vec()).collect();
        assert_eq!(body, idr[2..]);
        // A trailing picture (1): no parameter sets.
        out.clear();
        pay.payload(&avc(&[&[1 << 1, 1, 0xaa]]), Some(0), &mut out);
        assert_eq!(out.len(), 1);
        assert!(parse_hvcc(&hvcc()[..30]).is_err());
        assert!(parse_hvcc(&[1, 2, 3]).is_err());
    }

    #[test]
    fn h265_byte_stream_learns_parameter_sets_in_band() {
        let mut pay = H265Payloader::new(state(), 1400, H264Framing::ByteStream);
        let mut out = Vec::new();
        pay.payload(&annexb(&[&[1 << 1, 1, 0xaa]]), None, &mut out);
        assert!(pay.take_media_change().is_none());
        let cra = [21 << 1, 1, 0xbb];
        pay.payload(&annexb(&[&VPS, &HSPS, &HPPS, &cra]), None, &mut out);
        assert!(pay.take_media_change().is_some());
        out.clear();
        pay.payload(&annexb(&[&cra]), None, &mut out);
        assert_eq!(out.len(), 4);
        // Junk never panics.
        for junk in [&[0, 0, 1, 0x40][..], &[0, 0, 1][..], &[7][..]] {
            pay.payload(junk, None, &mut out);
        }
    }

    #[test]
    fn opus_one_packet_per_buffer() {
        let mut pay = OpusPayloader::new(
            RtpState::with(97, OPUS_CLOCK_RATE, 0x1122_3344, 7, 0),
            2,
            48_000,
        );
        let mut out = Vec::new();
        pay.payload(b"OpusHead\x01\x02", Some(0), &mut out);
        pay.payload(b"OpusTags", Some(0), &mut out);
        pay.payload(&[], Some(0), &mut out);
        assert!(out.is_empty());
        pay.payload(&[0xfc, 1, 2], Some(20_000_000), &mut out);
        let h = parse_rtp_header(&out[0]).unwrap();
        assert_eq!(
            (h.marker, h.payload_type, h.sequence, h.timestamp),
            (false, 97, 7, 960)
        );
        assert_eq!(rtp_payload(&out[0], &h), &[0xfc, 1, 2]);
        let m = pay.media();
        assert_eq!(
            (
                m.encoding_name.as_str(),
                m.clock_rate,
                m.encoding_params.as_deref()
            ),
            ("OPUS", 48_000, Some("2"))
        );
        assert_eq!(m.fmtp[0], ("sprop-stereo".into(), "1".into()));
        assert_eq!(m.fmtp[1], ("sprop-maxcapturerate".into(), "48000".into()));
    }
}
