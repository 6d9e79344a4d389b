//! RTCP packets (RFC 3550 section 6): compound packet parsing, and writing of the
//! SR/RR + SDES CNAME compounds (6.1) and BYE packets that a sender or receiver emits.
//!
//! Specifications: RFC 3550 §6.1 (compound packets), §6.4.1 (SR), §6.4.2 (RR), §6.5 and §6.5.1
//! (SDES, CNAME), §6.6 (BYE), §6.7 (APP); other types (RFC 4585 feedback, RFC 3611 XR) pass through
//! unparsed.
//!
//! Every RTCP packet starts with the common header of 6.4.1:
//!
//! ```text
//!  0                   1                   2                   3
//! |V=2|P|    RC   |       PT      |             length            |
//! ```
//!
//! where `length` is the packet size in 32-bit words minus one, and the 5-bit count field is the
//! report block count (SR/RR), chunk count (SDES), source count (BYE) or subtype (APP).
//! Packet types other than SR, RR, SDES, BYE and APP (e.g. RTPFB/PSFB of RFC 4585, XR of
//! RFC 3611) are kept raw as [`RtcpPacket::Other`].

use std::fmt;
use std::time::Duration;

use super::ntp::{ntp_middle32, ntp_short_to_duration};

/// Sender report packet type (RFC 3550 6.4.1).
pub const PT_SR: u8 = 200;
/// Receiver report packet type (RFC 3550 6.4.2).
pub const PT_RR: u8 = 201;
/// Source description packet type (RFC 3550 6.5).
pub const PT_SDES: u8 = 202;
/// Goodbye packet type (RFC 3550 6.6).
pub const PT_BYE: u8 = 203;
/// Application-defined packet type (RFC 3550 6.7).
pub const PT_APP: u8 = 204;

/// SDES item type of the canonical end-point identifier (RFC 3550 6.5.1).
pub const SDES_CNAME: u8 = 1;

/// Largest value of the 5-bit count field: report blocks, SDES chunks or BYE sources per packet.
pub const MAX_COUNT: usize = 31;

/// A reception report block, carried in SR and RR packets (RFC 3550 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// SSRC of the source this block reports on.
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in units of 1/256.
    pub fraction_lost: u8,
    /// Cumulative number of packets lost; a 24-bit signed value on the wire (writers clamp).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles in the upper 16 bits).
    pub extended_highest_seq: u32,
    /// Interarrival jitter, in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from the source (0 if none).
    pub last_sr: u32,
    /// Delay since that SR was received, in units of 1/65536 s (0 if none).
    pub delay_since_last_sr: u32,
}

/// Sender report (RFC 3550 6.4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderReport {
    /// SSRC of the sender.
    pub ssrc: u32,
    /// Wall-clock time of the report as a 64-bit NTP timestamp.
    pub ntp_timestamp: u64,
    /// The same instant in the RTP timestamp units of the stream.
    pub rtp_timestamp: u32,
    /// RTP packets sent since the start of transmission.
    pub packet_count: u32,
    /// RTP payload octets sent since the start of transmission.
    pub octet_count: u32,
    /// Reception report blocks (at most [`MAX_COUNT`] are written).
    pub reports: Vec<ReportBlock>,
}

/// Receiver report (RFC 3550 6.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverReport {
    /// SSRC of the packet's originator.
    pub ssrc: u32,
    /// Reception report blocks (possibly none; at most [`MAX_COUNT`] are written).
    pub reports: Vec<ReportBlock>,
}

/// One SDES chunk: a source and its items (RFC 3550 6.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesChunk {
    /// SSRC or CSRC the items describe.
    pub ssrc: u32,
    /// `(item type, text)` pairs, e.g. `(SDES_CNAME, "user@host")`. Text that is not valid
    /// UTF-8 is decoded lossily.
    pub items: Vec<(u8, String)>,
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    /// Sender report (PT 200).
    SenderReport(SenderReport),
    /// Receiver report (PT 201).
    ReceiverReport(ReceiverReport),
    /// Source description chunks (PT 202).
    SourceDescription(Vec<SdesChunk>),
    /// Goodbye (PT 203): the sources leaving and an optional reason.
    Bye {
        /// Sources leaving the session.
        ssrcs: Vec<u32>,
        /// Reason for leaving; `None` when absent or empty.
        reason: Option<String>,
    },
    /// Application-defined packet (PT 204).
    App {
        /// 5-bit subtype from the count field.
        subtype: u8,
        /// SSRC of the originator.
        ssrc: u32,
        /// Four ASCII characters naming the application.
        name: [u8; 4],
        /// Application-dependent data.
        data: Vec<u8>,
    },
    /// any other packet type (RTPFB/PSFB/XR...), kept raw
    Other {
        /// Packet type (PT).
        packet_type: u8,
        /// The 5-bit count/format field (e.g. FMT for feedback packets).
        count: u8,
        /// Body after the 4-byte common header, padding removed.
        body: Vec<u8>,
    },
}

/// Reasons a compound RTCP packet is rejected by [`parse_compound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpError {
    /// The buffer is empty.
    Empty,
    /// A packet header or body extends past the end of the buffer (this includes trailing
    /// bytes too short to be a header).
    Truncated,
    /// A packet's version field is not 2.
    BadVersion(u8),
    /// A packet's padding count is zero or larger than its body.
    BadPadding,
    /// A packet's body does not match its type and count (e.g. missing report blocks).
    Malformed {
        /// Type of the offending packet.
        packet_type: u8,
    },
}

impl fmt::Display for RtcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty RTCP packet"),
            Self::Truncated => f.write_str("truncated RTCP packet"),
            Self::BadVersion(v) => write!(f, "unsupported RTCP version {v}"),
            Self::BadPadding => f.write_str("invalid RTCP padding"),
            Self::Malformed { packet_type } => {
                write!(f, "malformed RTCP packet of type {packet_type}")
            }
        }
    }
}

impl std::error::Error for RtcpError {}

/// Parses a compound RTCP packet. Lenient like real receivers: a malformed packet in the middle is an error, trailing garbage is an error; never panics.
///
/// "Lenient" means the RFC 3550 A.2 compound rules are not enforced: the first packet need not
/// be an SR or RR (reduced-size RTCP, RFC 5506), padding is accepted on any packet, and bytes
/// after the announced contents of a packet (profile extensions) are ignored.
pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::Empty);
    }
    let mut packets = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let &[b0, packet_type, l0, l1, ..] = rest else {
            return Err(RtcpError::Truncated);
        };
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion(version));
        }
        let len = (usize::from(u16::from_be_bytes([l0, l1])) + 1) * 4;
        let (packet, tail) = rest.split_at_checked(len).ok_or(RtcpError::Truncated)?;
        rest = tail;

        let mut body = packet.get(4..).unwrap_or_default();
        if b0 & 0x20 != 0 {
            let pad = body.last().map_or(0, |&p| usize::from(p));
            if pad == 0 || pad > body.len() {
                return Err(RtcpError::BadPadding);
            }
            body = body.get(..body.len() - pad).unwrap_or_default();
        }
        let packet =
            parse_body(b0 & 0x1f, packet_type, body).ok_or(RtcpError::Malformed { packet_type })?;
        packets.push(packet);
    }
    Ok(packets)
}

fn parse_body(count: u8, packet_type: u8, body: &[u8]) -> Option<RtcpPacket> {
    let mut r = Reader(body);
    Some(match packet_type {
        PT_SR => RtcpPacket::SenderReport(SenderReport {
            ssrc: r.u32()?,
            ntp_timestamp: u64::from_be_bytes(r.array()?),
            rtp_timestamp: r.u32()?,
            packet_count: r.u32()?,
            octet_count: r.u32()?,
            reports: r.repeat(count, Reader::report_block)?,
        }),
        PT_RR => RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: r.u32()?,
            reports: r.repeat(count, Reader::report_block)?,
        }),
        PT_SDES => RtcpPacket::SourceDescription(r.repeat(count, Reader::sdes_chunk)?),
        PT_BYE => {
            let ssrcs = r.repeat(count, Reader::u32)?;
            let reason = match r.u8() {
                None | Some(0) => None,
                Some(len) => Some(String::from_utf8_lossy(r.bytes(len.into())?).into_owned()),
            };
            RtcpPacket::Bye { ssrcs, reason }
        }
        PT_APP => RtcpPacket::App {
            subtype: count,
            ssrc: r.u32()?,
            name: r.array()?,
            data: r.0.to_vec(),
        },
        _ => RtcpPacket::Other {
            packet_type,
            count,
            body: body.to_vec(),
        },
    })
}

/// Bounds-checked big-endian cursor; every read returns `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.array().map(u8::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn repeat<T>(&mut self, n: u8, mut f: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        (0..n).map(|_| f(self)).collect()
    }

    fn report_block(&mut self) -> Option<ReportBlock> {
        let ssrc = self.u32()?;
        let [fraction_lost, l0, l1, l2] = self.array()?;
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            // Sign-extend the 24-bit value.
            cumulative_lost: i32::from_be_bytes([l0, l1, l2, 0]) >> 8,
            extended_highest_seq: self.u32()?,
            jitter: self.u32()?,
            last_sr: self.u32()?,
            delay_since_last_sr: self.u32()?,
        })
    }

    fn sdes_chunk(&mut self) -> Option<SdesChunk> {
        let start = self.0.len();
        let ssrc = self.u32()?;
        let mut items = Vec::new();
        loop {
            match self.u8()? {
                0 => break,
                kind => {
                    let len = self.u8()?;
                    let text = String::from_utf8_lossy(self.bytes(len.into())?).into_owned();
                    items.push((kind, text));
                }
            }
        }
        // The item list ends with null octets up to the next 32-bit boundary.
        let used = start - self.0.len();
        self.bytes((4 - used % 4) % 4)?;
        Some(SdesChunk { ssrc, items })
    }
}

/// Appends an SR (with its report blocks, at most 31) followed by an SDES with CNAME (RFC 3550 6.1 compound rule) to `out`.
///
/// Report blocks beyond [`MAX_COUNT`] are dropped; a CNAME longer than 255 bytes is truncated
/// at a character boundary.
pub fn write_sender_report(sr: &SenderReport, cname: &str, out: &mut Vec<u8>) {
    let blocks = &sr.reports[..sr.reports.len().min(MAX_COUNT)];
    let start = begin(out, blocks.len(), PT_SR);
    out.extend_from_slice(&sr.ssrc.to_be_bytes());
    out.extend_from_slice(&sr.ntp_timestamp.to_be_bytes());
    out.extend_from_slice(&sr.rtp_timestamp.to_be_bytes());
    out.extend_from_slice(&sr.packet_count.to_be_bytes());
    out.extend_from_slice(&sr.octet_count.to_be_bytes());
    blocks.iter().for_each(|b| put_report_block(b, out));
    finish(out, start);
    write_cname(sr.ssrc, cname, out);
}

/// Appends an RR followed by SDES CNAME. An RR with zero report blocks is valid.
///
/// Truncation rules are those of [`write_sender_report`].
pub fn write_receiver_report(rr: &ReceiverReport, cname: &str, out: &mut Vec<u8>) {
    let blocks = &rr.reports[..rr.reports.len().min(MAX_COUNT)];
    let start = begin(out, blocks.len(), PT_RR);
    out.extend_from_slice(&rr.ssrc.to_be_bytes());
    blocks.iter().for_each(|b| put_report_block(b, out));
    finish(out, start);
    write_cname(rr.ssrc, cname, out);
}

/// Appends an SDES packet with the given chunks (at most 31). Items of type 0 (the list
/// terminator) are skipped and texts are truncated to 255 bytes at a character boundary.
pub fn write_sdes(chunks: &[SdesChunk], out: &mut Vec<u8>) {
    let chunks = &chunks[..chunks.len().min(MAX_COUNT)];
    let start = begin(out, chunks.len(), PT_SDES);
    for chunk in chunks {
        put_sdes_chunk(
            chunk.ssrc,
            chunk.items.iter().map(|(t, s)| (*t, s.as_str())),
            out,
        );
    }
    finish(out, start);
}

/// Appends a BYE packet.
///
/// At most 31 SSRCs are written; an empty reason is omitted and a longer one than 255 bytes is
/// truncated at a character boundary.
pub fn write_bye(ssrcs: &[u32], reason: Option<&str>, out: &mut Vec<u8>) {
    let ssrcs = &ssrcs[..ssrcs.len().min(MAX_COUNT)];
    let start = begin(out, ssrcs.len(), PT_BYE);
    ssrcs
        .iter()
        .for_each(|s| out.extend_from_slice(&s.to_be_bytes()));
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        put_text(reason, out);
    }
    finish(out, start);
}

/// Round-trip time from a report block received at `arrival_ntp` (RFC 3550 6.4.1: A - LSR - DLSR in 16.16 units). None if LSR is 0 or the result would be negative.
///
/// The subtraction is done modulo 2^32 (the 16.16 clock wraps every ~18 hours); an arrival
/// time more than ~9 hours before LSR counts as negative.
pub fn round_trip_time(block: &ReportBlock, arrival_ntp: u64) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let since_sr = ntp_middle32(arrival_ntp).wrapping_sub(block.last_sr);
    if since_sr > i32::MAX as u32 {
        return None;
    }
    since_sr
        .checked_sub(block.delay_since_last_sr)
        .map(ntp_short_to_duration)
}

/// Starts a packet at the end of `out` with a placeholder length; returns its offset.
fn begin(out: &mut Vec<u8>, count: usize, packet_type: u8) -> usize {
    debug_assert!(count <= MAX_COUNT);
    let start = out.len();
    out.extend_from_slice(&[0x80 | (count as u8 & 0x1f), packet_type, 0, 0]);
    start
}

/// Zero-pads the packet started at `start` to a 32-bit boundary and fills in its length.
fn finish(out: &mut Vec<u8>, start: usize) {
    let padded = (out.len() - start).next_multiple_of(4);
    out.resize(start + padded, 0);
    // Packets written here are at most a few hundred words long.
    let words = (padded / 4 - 1) as u16;
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

fn put_report_block(b: &ReportBlock, out: &mut Vec<u8>) {
    // RFC 3550 A.3: clamp to the 24-bit signed range.
    let lost = b.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff).to_be_bytes();
    out.extend_from_slice(&b.ssrc.to_be_bytes());
    out.extend_from_slice(&[b.fraction_lost, lost[1], lost[2], lost[3]]);
    out.extend_from_slice(&b.extended_highest_seq.to_be_bytes());
    out.extend_from_slice(&b.jitter.to_be_bytes());
    out.extend_from_slice(&b.last_sr.to_be_bytes());
    out.extend_from_slice(&b.delay_since_last_sr.to_be_bytes());
}

/// Writes one SDES chunk, including its terminating null octets (the chunk starts aligned).
fn put_sdes_chunk<'a>(
    ssrc: u32,
    items: impl IntoIterator<Item = (u8, &'a str)>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&ssrc.to_be_bytes());
    for (kind, text) in items.into_iter().filter(|&(kind, _)| kind != 0) {
        out.push(kind);
        put_text(text, out);
    }
    // At least one null octet ends the list, then pad to the next 32-bit boundary.
    out.push(0);
    let padded = (out.len() - start).next_multiple_of(4);
    out.resize(start + padded, 0);
}

fn write_cname(ssrc: u32, cname: &str, out: &mut Vec<u8>) {
    let start = begin(out, 1, PT_SDES);
    put_sdes_chunk(ssrc, [(SDES_CNAME, cname)], out);
    finish(out, start);
}

/// Writes a length-prefixed text, truncated to 255 bytes at a character boundary.
fn put_text(text: &str, out: &mut Vec<u8>) {
    let text = &text[..text.floor_char_boundary(255)];
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1122_3344;

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: 0x5566_7788,
            fraction_lost: 0x40,
            cumulative_lost: -3,
            extended_highest_seq: 0x0001_0005,
            jitter: 0x20,
            last_sr: 0xb705_2000,
            delay_since_last_sr: 0x0005_4000,
        }
    }

    /// SDES with one chunk: SSRC, CNAME "host", terminator, 1 byte of padding.
    const SDES_HOST: [u8; 16] = [
        0x81, 202, 0, 3, 0x11, 0x22, 0x33, 0x44, 1, 4, b'h', b'o', b's', b't', 0, 0,
    ];

    #[test]
    fn sender_report_matches_rfc_layout() {
        let sr = SenderReport {
            ssrc: SSRC,
            ntp_timestamp: 0xb44d_b705_2000_0000,
            rtp_timestamp: 0x0001_0000,
            packet_count: 10,
            octet_count: 1000,
            reports: vec![block()],
        };
        let mut expected = vec![
            0x81, 200, 0, 12, // V=2, RC=1, PT=SR, length 12 words + 1
            0x11, 0x22, 0x33, 0x44, // SSRC of sender
            0xb4, 0x4d, 0xb7, 0x05, 0x20, 0, 0, 0, // NTP timestamp
            0, 1, 0, 0, // RTP timestamp
            0, 0, 0, 10, // packet count
            0, 0, 0x03, 0xe8, // octet count
            0x55, 0x66, 0x77, 0x88, // SSRC_1
            0x40, 0xff, 0xff, 0xfd, // fraction lost, cumulative lost (-3)
            0, 1, 0, 5, // extended highest sequence number
            0, 0, 0, 0x20, // jitter
            0xb7, 0x05, 0x20, 0, // LSR
            0, 5, 0x40, 0, // DLSR
        ];
        expected.extend_from_slice(&SDES_HOST);

        let mut out = vec![];
        write_sender_report(&sr, "host", &mut out);
        assert_eq!(out, expected);
        assert_eq!(
            parse_compound(&out).unwrap(),
            [
                RtcpPacket::SenderReport(sr),
                RtcpPacket::SourceDescription(vec![SdesChunk {
                    ssrc: SSRC,
                    items: vec![(SDES_CNAME, "host".into())],
                }]),
            ]
        );
    }

    #[test]
    fn empty_receiver_report_round_trips() {
        let rr = ReceiverReport {
            ssrc: SSRC,
            reports: vec![],
        };
        let mut out = vec![];
        write_receiver_report(&rr, "host", &mut out);
        let mut expected = vec![0x80, 201, 0, 1, 0x11, 0x22, 0x33, 0x44];
        expected.extend_from_slice(&SDES_HOST);
        assert_eq!(out, expected);
        let parsed = parse_compound(&out).unwrap();
        assert_eq!(parsed[0], RtcpPacket::ReceiverReport(rr));
    }

    #[test]
    fn receiver_report_caps_blocks_and_clamps_loss() {
        let big = ReportBlock {
            cumulative_lost: 10_000_000,
            ..block()
        };
        let small = ReportBlock {
            cumulative_lost: -10_000_000,
            ..block()
        };
        let rr = ReceiverReport {
            ssrc: SSRC,
            reports: [big, small].repeat(20),
        };
        let mut out = vec![];
        write_receiver_report(&rr, "", &mut out);
        let packets = parse_compound(&out).unwrap();
        let [RtcpPacket::ReceiverReport(parsed), _] = packets.as_slice() else {
            panic!("unexpected parse of {out:?}");
        };
        assert_eq!(parsed.reports.len(), MAX_COUNT);
        assert_eq!(parsed.reports[0].cumulative_lost, 0x7f_ffff);
        assert_eq!(parsed.reports[1].cumulative_lost, -0x80_0000);
    }

    #[test]
    fn sdes_round_trips() {
        let chunks = vec![
            SdesChunk {
                ssrc: 1,
                items: vec![
                    (SDES_CNAME, "a@b".into()),
                    (2, "Name".into()),
                    (6, "tool".into()),
                ],
            },
            SdesChunk {
                ssrc: 2,
                items: vec![],
            },
            SdesChunk {
                ssrc: 3,
                items: vec![(SDES_CNAME, "é".repeat(200))],
            },
        ];
        let mut out = vec![];
        write_sdes(&chunks, &mut out);
        assert_eq!(out.len() % 4, 0);
        let packets = parse_compound(&out).unwrap();
        let [RtcpPacket::SourceDescription(parsed)] = packets.as_slice() else {
            panic!("unexpected parse of {out:?}");
        };
        assert_eq!(parsed[..2], chunks[..2]);
        // 255 bytes cannot hold 128 two-byte characters: truncated at a char boundary.
        assert_eq!(parsed[2].items[0].1, "é".repeat(127));
    }

    #[test]
    fn bye_matches_rfc_layout() {
        let mut out = vec![];
        write_bye(&[1, 2], Some("done"), &mut out);
        #[rustfmt::skip]
        let expected = [
            0x82, 203, 0, 4,
            0, 0, 0, 1,
            0, 0, 0, 2,
            4, b'd', b'o', b'n',
            b'e', 0, 0, 0,
        ];
        assert_eq!(out, expected);
        assert_eq!(
            parse_compound(&out).unwrap(),
            [RtcpPacket::Bye {
                ssrcs: vec![1, 2],
                reason: Some("done".into())
            }]
        );

        out.clear();
        write_bye(&[7], Some(""), &mut out);
        assert_eq!(out, [0x81, 203, 0, 1, 0, 0, 0, 7]);
        assert_eq!(
            parse_compound(&out).unwrap(),
            [RtcpPacket::Bye {
                ssrcs: vec![7],
                reason: None
            }]
        );
    }

    #[test]
    fn parses_app_feedback_and_padding() {
        #[rustfmt::skip]
        let buf = [
            0x83, 204, 0, 3, 0, 0, 0, 9, b'T', b'E', b'S', b'T', 1, 2, 3, 4, // APP subtype 3
            0xa1, 206, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 4, // PLI + 4 bytes padding
        ];
        assert_eq!(
            parse_compound(&buf).unwrap(),
            [
                RtcpPacket::App {
                    subtype: 3,
                    ssrc: 9,
                    name: *b"TEST",
                    data: vec![1, 2, 3, 4]
                },
                RtcpPacket::Other {
                    packet_type: 206,
                    count: 1,
                    body: vec![0, 0, 0, 1, 0, 0, 0, 2]
                },
            ]
        );
    }

    #[test]
    fn rejects_malformed_input() {
        use RtcpError::*;
        let mut valid = vec![];
        write_receiver_report(
            &ReceiverReport {
                ssrc: 1,
                reports: vec![block()],
            },
            "x",
            &mut valid,
        );

        assert_eq!(parse_compound(&[]), Err(Empty));
        assert_eq!(parse_compound(&[0x80, 201, 0]), Err(Truncated));
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 2, 0, 0, 0, 1]),
            Err(Truncated)
        );
        assert_eq!(
            parse_compound(&[0x40, 201, 0, 1, 0, 0, 0, 1]),
            Err(BadVersion(1))
        );
        // RC=1 but no report block.
        assert_eq!(
            parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 1]),
            Err(Malformed { packet_type: 201 })
        );
        // SDES item list without terminator.
        assert_eq!(
            parse_compound(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 2, b'a', b'b']),
            Err(Malformed { packet_type: 202 })
        );
        // BYE reason longer than the packet.
        assert_eq!(
            parse_compound(&[0x80, 203, 0, 1, 9, b'a', 0, 0]),
            Err(Malformed { packet_type: 203 })
        );
        assert_eq!(
            parse_compound(&[0xa0, 203, 0, 1, 0, 0, 0, 0]),
            Err(BadPadding)
        );
        assert_eq!(
            parse_compound(&[0xa0, 203, 0, 1, 0, 0, 0, 5]),
            Err(BadPadding)
        );

        let mut trailing = valid.clone();
        trailing.extend_from_slice(&[0x80, 201]);
        assert_eq!(parse_compound(&trailing), Err(Truncated));

        // Every cut inside a packet is an error, every cut between packets is not.
        for cut in 1..valid.len() {
            let boundary = cut == 32;
            assert_eq!(
                parse_compound(&valid[..cut]).is_ok(),
                boundary,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn round_trip_time_rfc_example() {
        // RFC 3550 6.4.1: A = 0xb710:8000, LSR = 0xb705:2000, DLSR = 0x0005:4000 -> 6.125 s.
        let arrival = 0xb44d_b710_8000_0000;
        assert_eq!(
            round_trip_time(&block(), arrival),
            Some(Duration::from_millis(6125))
        );
        let no_sr = ReportBlock {
            last_sr: 0,
            ..block()
        };
        assert_eq!(round_trip_time(&no_sr, arrival), None);
        let long_dlsr = ReportBlock {
            delay_since_last_sr: 0x0020_0000,
            ..block()
        };
        assert_eq!(round_trip_time(&long_dlsr, arrival), None);
        // Arrival before the SR was sent (clock mismatch).
        assert_eq!(round_trip_time(&block(), 0xb44d_b700_0000_0000), None);
        // Across the 16.16 wrap.
        let wrapped = ReportBlock {
            last_sr: 0xffff_8000,
            delay_since_last_sr: 0x0000_8000,
            ..block()
        };
        assert_eq!(
            round_trip_time(&wrapped, 0x0001_0001_0000_0000),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn random_input_never_panics() {
        super::super::test_util::fuzz(&[0x80], 20_000, |buf| {
            if let Ok(packets) = parse_compound(buf) {
                assert!(!packets.is_empty());
            }
        });
        // Valid headers with random bodies reach the per-type parsers.
        for pt in 200..=206 {
            for count in [0u8, 1, 2, 31] {
                super::super::test_util::fuzz(&[], 2_000, |body| {
                    let words = (body.len() / 4) as u8;
                    let mut buf = vec![0x80 | count, pt, 0, words];
                    buf.extend_from_slice(&body[..usize::from(words) * 4]);
                    let _ = parse_compound(&buf);
                });
            }
        }
    }
}
