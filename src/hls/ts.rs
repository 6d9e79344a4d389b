//! A small MPEG-TS muxer (ISO/IEC 13818-1) for HLS, without GStreamer types.
//!
//! Specifications: ISO/IEC 13818-1 §2.4.3.2-§2.4.3.5 (transport packets, adaptation field: PCR,
//! random_access_indicator, stuffing), §2.4.3.6-§2.4.3.7 (PES packets, PTS/DTS), §2.4.4 (PAT, PMT,
//! stream_type), annex A (CRC_32); ISO/IEC 14496-3 §1.A.2 (ADTS); ITU-T H.264 §7.3.2.4
//! and H.265 §7.3.2.5 (access unit delimiters); RFC 8216 §3.2.
//!
//! `rshlssink`'s built-in muxer (`muxer=builtin`, the default): it does only what HLS needs, at
//! a fraction of the stock `mpegtsmux`'s cost, which was nearly all of rshlssink's CPU.
//!
//! One program (number 1), PMT on PID 0x1000, elementary streams on PIDs 0x100, 0x101, ... in the
//! order given. What it writes:
//! - PAT and PMT on request ([`TsMuxer::write_tables`], e.g. at the start of every segment) and
//!   again before a frame when [`TsMuxerConfig::table_interval_ns`] has passed since the last
//!   ones, and before every video keyframe, so each segment cut at a keyframe starts with them;
//! - one PES packet per frame (access unit) with PTS, and DTS when it differs, data alignment set;
//!   video PES packets longer than 65535 bytes have PES_packet_length 0 (allowed for video);
//! - the PCR on the PCR stream (the first video stream, else the first stream) in the adaptation
//!   field of the first packet of each of its frames;
//! - random_access_indicator on the first packet of each video keyframe (and of every audio
//!   frame, each of which is one);
//! - stuffing through the adaptation field, so every packet is exactly 188 bytes;
//! - per-PID continuity counters (PAT, PMT and each stream).
//!
//! Codecs: H.264 (stream type 0x1b) and H.265 (0x24) as byte-stream access units, an access unit
//! delimiter is put in front when the access unit does not start with one (Apple's HLS
//! requirement); AAC (0x0f) as ADTS, either given as ADTS or raw with an AudioSpecificConfig, in
//! which case the muxer writes the ADTS headers (AAC Main/LC/SSR/LTP, explicit sample rates
//! only); MPEG-1 audio (0x03) and MPEG-2 (LSF) audio (0x04), e.g. MP3.
//!
//! Timestamps are nanoseconds on the caller's clock (running time); in the stream they are
//! 90 kHz, shifted by [`TIMESTAMP_OFFSET_NS`] so that early B-frame decode times stay positive,
//! and wrap at 33 bits. The PCR runs [`PCR_LEAD_NS`] behind the decode times, so a decoder's
//! buffer has time to fill.

/// Size of a transport stream packet.
pub const PACKET_SIZE: usize = 188;
const SYNC_BYTE: u8 = 0x47;
/// PID of the program map table.
pub const PMT_PID: u16 = 0x1000;
/// PID of the first elementary stream; the others follow.
pub const FIRST_ES_PID: u16 = 0x100;
/// Added to every timestamp (ns) before it is written: 1 s, so that decode times before the
/// first presentation time and the PCR's lead stay positive.
pub const TIMESTAMP_OFFSET_NS: u64 = 1_000_000_000;
/// The PCR is this much (ns) behind the decode time of the frame it is sent with.
pub const PCR_LEAD_NS: u64 = 100_000_000;
/// 33-bit 90 kHz timestamps wrap here.
const TS_WRAP: u64 = 1 << 33;

/// What an elementary stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    /// H.264 byte-stream, one access unit per frame.
    H264,
    /// H.265 byte-stream, one access unit per frame.
    H265,
    /// AAC in ADTS frames (one or more per frame).
    AacAdts,
    /// Raw AAC frames; the muxer adds ADTS headers made from this AudioSpecificConfig (the
    /// caps' codec_data).
    AacRaw(AdtsConfig),
    /// MPEG-1 audio (layers 1-3, 32/44.1/48 kHz): stream type 0x03.
    Mpeg1Audio,
    /// MPEG-2 LSF audio (16/22.05/24 kHz; also MPEG-2.5): stream type 0x04.
    Mpeg2Audio,
}

impl Codec {
    pub fn stream_type(&self) -> u8 {
        match self {
            Codec::H264 => 0x1b,
            Codec::H265 => 0x24,
            Codec::AacAdts | Codec::AacRaw(_) => 0x0f,
            Codec::Mpeg1Audio => 0x03,
            Codec::Mpeg2Audio => 0x04,
        }
    }

    pub fn is_video(&self) -> bool {
        matches!(self, Codec::H264 | Codec::H265)
    }

    fn stream_id(&self) -> u8 {
        if self.is_video() { 0xe0 } else { 0xc0 }
    }
}

/// The fields an ADTS header needs, from an AudioSpecificConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsConfig {
    /// ADTS profile: audio object type - 1 (0 Main, 1 LC, 2 SSR, 3 LTP).
    pub profile: u8,
    pub sampling_index: u8,
    pub channel_config: u8,
}

impl AdtsConfig {
    /// Reads an AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1). `None` for what ADTS cannot
    /// describe: object types above 4 (HE-AAC signalled explicitly, ...), an explicit sample
    /// rate, a channel configuration of 0 (a program config element) or above 7.
    pub fn from_audio_specific_config(asc: &[u8]) -> Option<AdtsConfig> {
        if asc.len() < 2 {
            return None;
        }
        let object_type = asc[0] >> 3;
        let sampling_index = ((asc[0] & 0x07) << 1) | (asc[1] >> 7);
        let channel_config = (asc[1] >> 3) & 0x0f;
        if !(1..=4).contains(&object_type)
            || sampling_index > 12
            || !(1..=7).contains(&channel_config)
        {
            return None;
        }
        Some(AdtsConfig {
            profile: object_type - 1,
            sampling_index,
            channel_config,
        })
    }

    /// The 7-byte ADTS header (no CRC) of a frame with `payload_len` bytes of raw AAC.
    pub fn header(&self, payload_len: usize) -> [u8; 7] {
        let len = payload_len + 7;
        [
            0xff,
            0xf1, // MPEG-4, layer 0, no CRC
            (self.profile << 6) | (self.sampling_index << 2) | (self.channel_config >> 2),
            ((self.channel_config & 3) << 6) | ((len >> 11) as u8 & 0x03),
            (len >> 3) as u8,
            ((len as u8 & 0x07) << 5) | 0x1f, // buffer fullness 0x7ff: variable rate
            0xfc,
        ]
    }
}

/// One encoded frame (access unit) of a stream.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub data: &'a [u8],
    /// Presentation time (ns, may be negative down to -[`TIMESTAMP_OFFSET_NS`]); `None` for
    /// none (then no PTS is written).
    pub pts_ns: Option<i64>,
    /// Decode time (ns, as the PTS); `None`: the same as the presentation time.
    pub dts_ns: Option<i64>,
    /// A video keyframe (audio frames are always random access points).
    pub keyframe: bool,
}

#[derive(Debug, Clone)]
pub struct TsMuxerConfig {
    /// PAT/PMT are repeated before a frame when this much (ns, decode time) has passed since
    /// they were last written; 0 writes them only on request and before video keyframes.
    pub table_interval_ns: u64,
}

impl Default for TsMuxerConfig {
    fn default() -> Self {
        TsMuxerConfig {
            table_interval_ns: 100_000_000,
        }
    }
}

struct Stream {
    codec: Codec,
    pid: u16,
    cc: u8,
}

/// The muxer: frames in, whole 188-byte packets appended to a caller's buffer.
pub struct TsMuxer {
    config: TsMuxerConfig,
    streams: Vec<Stream>,
    pcr_stream: usize,
    pat_section: Vec<u8>,
    pmt_section: Vec<u8>,
    pat_cc: u8,
    pmt_cc: u8,
    last_tables_ns: Option<i64>,
    scratch: Vec<u8>,
}

/// ns → 90 kHz, offset by [`TIMESTAMP_OFFSET_NS`] (earlier times are 0) and wrapped to 33 bits.
pub fn to_90khz(ns: i64) -> u64 {
    ((offset_ns(ns) as u128 * 9 / 100_000) as u64) % TS_WRAP
}

fn offset_ns(ns: i64) -> u64 {
    (i128::from(ns) + i128::from(TIMESTAMP_OFFSET_NS)).max(0) as u64
}

/// CRC-32/MPEG-2 (polynomial 0x04c11db7, initial value all ones, no reflection, no final xor),
/// the CRC of PSI sections.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A PSI section: table id, the syntax fields, `body`, CRC.
fn psi_section(table_id: u8, id_extension: u16, body: &[u8]) -> Vec<u8> {
    let section_length = 5 + body.len() + 4;
    let mut s = Vec::with_capacity(3 + section_length);
    s.push(table_id);
    // section_syntax_indicator 1, '0', reserved '11', 12-bit length.
    s.push(0xb0 | ((section_length >> 8) as u8 & 0x0f));
    s.push(section_length as u8);
    s.extend_from_slice(&id_extension.to_be_bytes());
    s.push(0xc1); // reserved, version 0, current_next_indicator 1
    s.push(0); // section_number
    s.push(0); // last_section_number
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

/// Writes a 5-byte PES timestamp with the given 4-bit prefix.
fn put_timestamp(out: &mut Vec<u8>, prefix: u8, ts: u64) {
    out.push((prefix << 4) | (((ts >> 30) as u8 & 0x07) << 1) | 1);
    out.push((ts >> 22) as u8);
    out.push((((ts >> 15) as u8) << 1) | 1);
    out.push((ts >> 7) as u8);
    out.push(((ts as u8) << 1) | 1);
}

/// Whether a byte-stream access unit starts with an access unit delimiter.
fn starts_with_aud(data: &[u8], h265: bool) -> bool {
    let nal = if data.starts_with(&[0, 0, 0, 1]) {
        data.get(4)
    } else if data.starts_with(&[0, 0, 1]) {
        data.get(3)
    } else {
        None
    };
    match nal {
        Some(&b) if h265 => (b >> 1) & 0x3f == 35,
        Some(&b) => b & 0x1f == 9,
        None => false,
    }
}

const H264_AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xf0];
const H265_AUD: [u8; 7] = [0, 0, 0, 1, 0x46, 0x01, 0x50];

impl TsMuxer {
    /// A muxer for these streams (PIDs 0x100, 0x101, ... in this order). `None` without streams.
    pub fn new(codecs: &[Codec], config: TsMuxerConfig) -> Option<TsMuxer> {
        if codecs.is_empty() || codecs.len() > 16 {
            return None;
        }
        let streams: Vec<Stream> = codecs
            .iter()
            .enumerate()
            .map(|(i, c)| Stream {
                codec: c.clone(),
                pid: FIRST_ES_PID + i as u16,
                cc: 0,
            })
            .collect();
        let pcr_stream = streams.iter().position(|s| s.codec.is_video()).unwrap_or(0);
        let mut pat_body = Vec::new();
        pat_body.extend_from_slice(&1u16.to_be_bytes());
        pat_body.extend_from_slice(&(0xe000 | PMT_PID).to_be_bytes());
        let pat_section = psi_section(0x00, 1, &pat_body);
        let mut pmt_body = Vec::new();
        pmt_body.extend_from_slice(&(0xe000 | streams[pcr_stream].pid).to_be_bytes());
        pmt_body.extend_from_slice(&0xf000u16.to_be_bytes()); // program_info_length 0
        for s in &streams {
            pmt_body.push(s.codec.stream_type());
            pmt_body.extend_from_slice(&(0xe000 | s.pid).to_be_bytes());
            pmt_body.extend_from_slice(&0xf000u16.to_be_bytes()); // ES_info_length 0
        }
        let pmt_section = psi_section(0x02, 1, &pmt_body);
        Some(TsMuxer {
            config,
            streams,
            pcr_stream,
            pat_section,
            pmt_section,
            pat_cc: 0,
            pmt_cc: 0,
            last_tables_ns: None,
            scratch: Vec::new(),
        })
    }

    /// The PID of stream `index`.
    pub fn pid(&self, index: usize) -> u16 {
        self.streams[index].pid
    }

    /// The PID that carries the PCR.
    pub fn pcr_pid(&self) -> u16 {
        self.streams[self.pcr_stream].pid
    }

    /// Appends a PAT and a PMT packet.
    pub fn write_tables(&mut self, out: &mut Vec<u8>) {
        for (pid, section, cc) in [
            (0u16, &self.pat_section, &mut self.pat_cc),
            (PMT_PID, &self.pmt_section, &mut self.pmt_cc),
        ] {
            let start = out.len();
            out.extend_from_slice(&[
                SYNC_BYTE,
                0x40 | (pid >> 8) as u8,
                pid as u8,
                0x10 | *cc,
                0, // pointer_field
            ]);
            out.extend_from_slice(section);
            out.resize(start + PACKET_SIZE, 0xff);
            *cc = (*cc + 1) & 0x0f;
        }
    }

    /// Appends the packets of one frame of stream `index` (PAT/PMT first when they are due).
    pub fn write_frame(&mut self, index: usize, frame: &Frame, out: &mut Vec<u8>) {
        let dts_ns = frame.dts_ns.or(frame.pts_ns);
        let video = self.streams[index].codec.is_video();
        let tables_due = (video && frame.keyframe)
            || match (self.last_tables_ns, dts_ns) {
                (None, _) => true,
                (Some(last), Some(now)) => {
                    self.config.table_interval_ns > 0
                        && now.saturating_sub(last) >= self.config.table_interval_ns as i64
                }
                (Some(_), None) => false,
            };
        if tables_due {
            self.write_tables(out);
            if let Some(now) = dts_ns {
                self.last_tables_ns = Some(now);
            }
        }

        // PES header, then what the muxer puts in front of the frame (an AUD or an ADTS header).
        let pts = frame.pts_ns.map(to_90khz);
        let dts = dts_ns.map(to_90khz).filter(|d| Some(*d) != pts);
        let mut head = std::mem::take(&mut self.scratch);
        head.clear();
        head.extend_from_slice(&[0, 0, 1, self.streams[index].codec.stream_id(), 0, 0, 0x84]);
        match (pts, dts) {
            (Some(p), Some(d)) => {
                head.extend_from_slice(&[0xc0, 10]);
                put_timestamp(&mut head, 0x3, p);
                put_timestamp(&mut head, 0x1, d);
            }
            (Some(p), None) => {
                head.extend_from_slice(&[0x80, 5]);
                put_timestamp(&mut head, 0x2, p);
            }
            _ => head.extend_from_slice(&[0x00, 0]),
        }
        match &self.streams[index].codec {
            Codec::H264 if !starts_with_aud(frame.data, false) => head.extend_from_slice(&H264_AUD),
            Codec::H265 if !starts_with_aud(frame.data, true) => head.extend_from_slice(&H265_AUD),
            Codec::AacRaw(cfg) => head.extend_from_slice(&cfg.header(frame.data.len())),
            _ => {}
        }
        let pes_len = head.len() - 6 + frame.data.len();
        // 0 (unbounded) is allowed for video only; audio frames are never this long.
        let pes_len_field = u16::try_from(pes_len).unwrap_or(0);
        head[4..6].copy_from_slice(&pes_len_field.to_be_bytes());

        let pcr = (index == self.pcr_stream)
            .then(|| dts_ns.map(|d| offset_ns(d).saturating_sub(PCR_LEAD_NS)))
            .flatten();
        let random_access = frame.keyframe || !video;
        let stream = &mut self.streams[index];
        write_pes(
            out,
            stream.pid,
            &mut stream.cc,
            &head,
            frame.data,
            pcr,
            random_access,
        );
        self.scratch = head;
    }
}

/// Packetizes `head` followed by `body` into TS packets of `pid`. The first packet carries the
/// payload_unit_start_indicator and, when asked, the PCR (ns on the stream's clock) and the
/// random_access_indicator in its adaptation field; the last is padded by adaptation field
/// stuffing.
fn write_pes(
    out: &mut Vec<u8>,
    pid: u16,
    cc: &mut u8,
    head: &[u8],
    body: &[u8],
    pcr_ns: Option<u64>,
    random_access: bool,
) {
    let total = head.len() + body.len();
    let mut written = 0;
    let mut first = true;
    out.reserve((total / 184 + 2) * PACKET_SIZE);
    while written < total || first {
        let (pcr, rai) = if first {
            (pcr_ns, random_access)
        } else {
            (None, false)
        };
        // Adaptation field bytes needed (length byte included) for flags and PCR.
        let af_min = if pcr.is_some() {
            8
        } else if rai {
            2
        } else {
            0
        };
        let take = (total - written).min(184 - af_min);
        let af_len = 184 - take; // 0, or the whole adaptation field with its length byte
        out.push(SYNC_BYTE);
        out.push(if first { 0x40 } else { 0 } | (pid >> 8) as u8 & 0x1f);
        out.push(pid as u8);
        out.push(if af_len > 0 { 0x30 } else { 0x10 } | *cc);
        *cc = (*cc + 1) & 0x0f;
        if af_len > 0 {
            out.push((af_len - 1) as u8);
            if af_len > 1 {
                let mut flags = 0u8;
                if rai {
                    flags |= 0x40;
                }
                if pcr.is_some() {
                    flags |= 0x10;
                }
                out.push(flags);
                let mut used = 2;
                if let Some(ns) = pcr {
                    // 27 MHz: base (90 kHz, 33 bits) and extension (0..300).
                    let ticks = (ns as u128 * 27 / 1000) as u64;
                    let base = (ticks / 300) % TS_WRAP;
                    let ext = ticks % 300;
                    out.push((base >> 25) as u8);
                    out.push((base >> 17) as u8);
                    out.push((base >> 9) as u8);
                    out.push((base >> 1) as u8);
                    out.push((((base & 1) as u8) << 7) | 0x7e | ((ext >> 8) as u8 & 1));
                    out.push(ext as u8);
                    used += 6;
                }
                out.resize(out.len() + (af_len - used), 0xff);
            }
        }
        // Payload: from head, then body.
        let mut left = take;
        if written < head.len() {
            let n = left.min(head.len() - written);
            out.extend_from_slice(&head[written..written + n]);
            written += n;
            left -= n;
        }
        if left > 0 {
            let from = written - head.len();
            out.extend_from_slice(&body[from..from + left]);
            written += left;
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    fn packets(data: &[u8]) -> Vec<&[u8]> {
        assert_eq!(data.len() % PACKET_SIZE, 0, "whole packets");
        data.chunks(PACKET_SIZE).collect()
    }

    fn pid(p: &[u8]) -> u16 {
        (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2])
    }

    fn payload(p: &[u8]) -> &[u8] {
        match (p[3] >> 4) & 3 {
            1 => &p[4..],
            3 => &p[5 + p[4] as usize..],
            _ => &[],
        }
    }

    /// Reassembles the PES packets of `pid`: (payload_unit_start packet, bytes).
    fn pes_packets(data: &[u8], want: u16) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for p in packets(data) {
            if pid(p) != want {
                continue;
            }
            if p[1] & 0x40 != 0 {
                out.push((p.to_vec(), Vec::new()));
            }
            out.last_mut().unwrap().1.extend_from_slice(payload(p));
        }
        out
    }

    fn read_timestamp(b: &[u8]) -> u64 {
        assert_eq!(b[0] & 1, 1);
        assert_eq!(b[2] & 1, 1);
        assert_eq!(b[4] & 1, 1);
        (u64::from(b[0] >> 1 & 7) << 30)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1)
    }

    fn read_pcr(p: &[u8]) -> Option<u64> {
        if (p[3] >> 4) & 2 == 0 || p[4] == 0 || p[5] & 0x10 == 0 {
            return None;
        }
        let b = &p[6..12];
        let base = (u64::from(b[0]) << 25)
            | (u64::from(b[1]) << 17)
            | (u64::from(b[2]) << 9)
            | (u64::from(b[3]) << 1)
            | u64::from(b[4] >> 7);
        let ext = (u64::from(b[4] & 1) << 8) | u64::from(b[5]);
        Some(base * 300 + ext)
    }

    fn muxer(codecs: &[Codec]) -> TsMuxer {
        TsMuxer::new(codecs, TsMuxerConfig::default()).unwrap()
    }

    #[test]
    fn crc32_mpeg2_check_value() {
        // The catalogue's check value for "123456789".
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_e6e7);
        // A section followed by its CRC checks to 0.
        let s = psi_section(0, 1, &[0, 1, 0xf0, 0]);
        assert_eq!(crc32_mpeg2(&s), 0);
    }

    #[test]
    fn pat_and_pmt_are_valid_sections() {
        let mut m = muxer(&[Codec::H264, Codec::AacAdts]);
        let mut out = Vec::new();
        m.write_tables(&mut out);
        let ps = packets(&out);
        assert_eq!(ps.len(), 2);
        assert_eq!(pid(ps[0]), 0);
        assert_eq!(pid(ps[1]), PMT_PID);
        for p in &ps {
            assert_eq!(p[0], SYNC_BYTE);
            assert_ne!(p[1] & 0x40, 0, "unit start");
            assert_eq!(p[4], 0, "pointer field");
            let sec = &p[5..];
            let len = ((usize::from(sec[1]) & 0x0f) << 8) | usize::from(sec[2]);
            assert_eq!(crc32_mpeg2(&sec[..3 + len]), 0, "CRC");
            assert!(sec[3 + len..].iter().all(|&b| b == 0xff));
        }
        let pat = &ps[0][5..];
        assert_eq!(pat[0], 0);
        assert_eq!(&pat[8..12], &[0, 1, 0xf0, 0x00]);
        let pmt = &ps[1][5..];
        assert_eq!(pmt[0], 2);
        assert_eq!(
            u16::from_be_bytes([pmt[8], pmt[9]]) & 0x1fff,
            0x100,
            "PCR PID"
        );
        assert_eq!(&pmt[12..17], &[0x1b, 0xe1, 0x00, 0xf0, 0]);
        assert_eq!(&pmt[17..22], &[0x0f, 0xe1, 0x01, 0xf0, 0]);
        // Stream types of the other codecs.
        assert_eq!(Codec::H265.stream_type(), 0x24);
        assert_eq!(Codec::Mpeg1Audio.stream_type(), 0x03);
        assert_eq!(Codec::Mpeg2Audio.stream_type(), 0x04);
        // The PCR is on the audio PID when there is no video.
        assert_eq!(muxer(&[Codec::AacAdts]).pcr_pid(), 0x100);
        assert_eq!(muxer(&[Codec::AacAdts, Codec::H265]).pcr_pid(), 0x101);
    }

    #[test]
    fn frames_are_whole_packets_with_continuous_counters() {
        let mut m = muxer(&[Codec::H264, Codec::AacAdts]);
        let mut out = Vec::new();
        let mut frames = Vec::new();
        // Sizes around every packet boundary, and a frame too big for PES_packet_length.
        for (i, len) in (0..400).chain([70_000, 1, 183, 184, 185]).enumerate() {
            let mut data = vec![0u8; len.max(6)];
            data[..6].copy_from_slice(&H264_AUD);
            for (j, b) in data.iter_mut().enumerate().skip(6) {
                *b = (j * 7 + i) as u8 | 1;
            }
            let t = i as i64 * 33 * MS;
            m.write_frame(
                0,
                &Frame {
                    data: &data,
                    pts_ns: Some(t + 66 * MS),
                    dts_ns: Some(t),
                    keyframe: i % 30 == 0,
                },
                &mut out,
            );
            frames.push(data);
            let audio = [0xffu8, 0xf1, 0x50, 0x80, 0x02, 0x1f, 0xfc, 1, 2, 3];
            m.write_frame(
                1,
                &Frame {
                    data: &audio,
                    pts_ns: Some(t),
                    dts_ns: None,
                    keyframe: false,
                },
                &mut out,
            );
        }
        let mut cc: std::collections::HashMap<u16, u8> = Default::default();
        for p in packets(&out) {
            assert_eq!(p[0], SYNC_BYTE);
            let afc = (p[3] >> 4) & 3;
            assert!(afc == 1 || afc == 3, "payload in every packet");
            if afc == 3 {
                assert!(usize::from(p[4]) <= 183);
            }
            let c = p[3] & 0x0f;
            if let Some(prev) = cc.insert(pid(p), c) {
                assert_eq!(c, (prev + 1) & 0x0f, "continuity on PID {}", pid(p));
            }
        }
        let video = pes_packets(&out, 0x100);
        assert_eq!(video.len(), frames.len());
        for ((first, pes), frame) in video.iter().zip(&frames) {
            assert_eq!(&pes[..4], &[0, 0, 1, 0xe0]);
            let len = usize::from(u16::from_be_bytes([pes[4], pes[5]]));
            if frame.len() + 13 > 0xffff {
                assert_eq!(len, 0);
            } else {
                assert_eq!(len, pes.len() - 6);
            }
            assert_eq!(pes[6], 0x84, "data alignment");
            assert_eq!(pes[7], 0xc0, "PTS and DTS");
            assert_eq!(&pes[19..], &frame[..], "payload unchanged (it has an AUD)");
            assert!(read_pcr(first).is_some(), "PCR with every video frame");
        }
        let audio = pes_packets(&out, 0x101);
        assert_eq!(audio.len(), frames.len());
        for (first, pes) in &audio {
            assert_eq!(&pes[..4], &[0, 0, 1, 0xc0]);
            assert_eq!(pes[7], 0x80, "PTS only");
            assert_eq!(
                usize::from(u16::from_be_bytes([pes[4], pes[5]])),
                pes.len() - 6
            );
            assert!(read_pcr(first).is_none(), "no PCR on audio next to video");
            assert_ne!(first[5] & 0x40, 0, "audio frames are random access points");
        }
    }

    #[test]
    fn timestamps_pcr_and_random_access() {
        let mut m = muxer(&[Codec::H264]);
        let mut out = Vec::new();
        let data = [0, 0, 0, 1, 0x65, 0x88];
        m.write_frame(
            0,
            &Frame {
                data: &data,
                pts_ns: Some(2_000 * MS),
                dts_ns: Some(1_900 * MS),
                keyframe: true,
            },
            &mut out,
        );
        let ps = packets(&out);
        assert_eq!(ps.len(), 3, "PAT, PMT, one frame packet");
        let p = ps[2];
        assert_eq!(p[3] >> 4, 3);
        assert_ne!(p[5] & 0x40, 0, "random_access_indicator on a keyframe");
        assert_eq!(
            read_pcr(p),
            Some((1_900 + 1_000 - 100) * 27_000),
            "PCR in 27 MHz units"
        );
        let pes = payload(p);
        assert_eq!(read_timestamp(&pes[9..14]), (2_000 + 1_000) * 90);
        assert_eq!(pes[9] >> 4, 3);
        assert_eq!(read_timestamp(&pes[14..19]), (1_900 + 1_000) * 90);
        assert_eq!(pes[14] >> 4, 1);
        assert_eq!(&pes[19..25], &H264_AUD, "AUD put in front");
        assert_eq!(&pes[25..], &data);

        // A delta frame: no tables (within the interval), no random access flag, PTS only when
        // equal to DTS.
        out.clear();
        m.write_frame(
            0,
            &Frame {
                data: &data,
                pts_ns: Some(1_933 * MS),
                dts_ns: Some(1_933 * MS),
                keyframe: false,
            },
            &mut out,
        );
        let ps = packets(&out);
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0][5] & 0x40, 0);
        assert_eq!(payload(ps[0])[7], 0x80);

        // 33-bit wrap.
        let big = (1i64 << 33) * 100_000 / 9 + 5 * MS;
        assert!(to_90khz(big).abs_diff((5 + 1_000) * 90) <= 1);
    }

    #[test]
    fn tables_repeat_and_precede_keyframes() {
        let mut m = muxer(&[Codec::H265, Codec::AacAdts]);
        let mut out = Vec::new();
        let frame = |t: i64, keyframe| Frame {
            data: &[0, 0, 1, 0x46, 0x01, 0x50, 0, 0, 1, 0x26, 1],
            pts_ns: Some(t),
            dts_ns: None,
            keyframe,
        };
        let mut tables_at = Vec::new();
        for i in 0..60i64 {
            let before = out.len();
            m.write_frame(0, &frame(i * 20 * MS, i % 25 == 0), &mut out);
            if pid(&out[before..]) == 0 {
                tables_at.push(i);
            }
        }
        // Every 100 ms (5 frames of 20 ms) and at each keyframe.
        assert_eq!(tables_at, (0..60).step_by(5).collect::<Vec<_>>());
        let pes = pes_packets(&out, 0x100);
        assert_eq!(
            &pes[0].1[14..17],
            &[0, 0, 1],
            "an H.265 AUD is kept, not doubled"
        );
    }

    #[test]
    fn raw_aac_gets_adts_headers() {
        // AAC LC, 44.1 kHz, stereo.
        let cfg = AdtsConfig::from_audio_specific_config(&[0x12, 0x10]).unwrap();
        assert_eq!(
            cfg,
            AdtsConfig {
                profile: 1,
                sampling_index: 4,
                channel_config: 2
            }
        );
        assert_eq!(AdtsConfig::from_audio_specific_config(&[0x2b, 0x92]), None); // HE-AAC
        let mut m = muxer(&[Codec::AacRaw(cfg)]);
        let mut out = Vec::new();
        let raw = vec![0x21u8; 300];
        m.write_frame(
            0,
            &Frame {
                data: &raw,
                pts_ns: Some(0),
                dts_ns: None,
                keyframe: false,
            },
            &mut out,
        );
        let (first, pes) = &pes_packets(&out, 0x100)[0];
        assert!(read_pcr(first).is_some(), "PCR on audio when audio only");
        let adts = &pes[14..21];
        assert_eq!(adts[0], 0xff);
        assert_eq!(adts[1] & 0xf6, 0xf0, "sync, layer 0");
        assert_eq!(adts[2] >> 6, 1, "LC");
        assert_eq!((adts[2] >> 2) & 0xf, 4);
        assert_eq!(((adts[2] & 1) << 2) | (adts[3] >> 6), 2);
        let len = (usize::from(adts[3] & 3) << 11)
            | (usize::from(adts[4]) << 3)
            | usize::from(adts[5] >> 5);
        assert_eq!(len, 307);
        assert_eq!(&pes[21..], &raw[..]);
    }
}
