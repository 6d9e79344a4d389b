//! Plain-Rust RTP/RTCP helpers shared by the streaming elements (no GStreamer types).
//!
//! Specifications: RFC 3550 §5.1 (fixed header), §5.3.1 (header extension); RFC 5761 §4 (RTP/RTCP
//! demultiplexing).
//!
//! * This module: RTP fixed-header parsing per RFC 3550 section 5.1 (version, padding,
//!   CSRC list, header extension of section 5.3.1) and the RTP/RTCP demultiplexing
//!   heuristic of RFC 5761 section 4.
//! * [`rtcp`]: compound RTCP parsing and SR/RR/SDES/BYE writing (RFC 3550 section 6).
//! * [`ssrc`]: which SSRC a received stream follows (changes only when announced or sustained).
//! * [`stats`]: receiver statistics (RFC 3550 appendices A.1, A.3 and A.8).
//! * [`ntp`]: 64-bit and 16.16 NTP timestamp conversions (RFC 3550 section 4, RFC 5905).
//! * [`keyframe`]: random-access point detection for H.264 (RFC 6184), H.265 (RFC 7798),
//!   VP8 (RFC 7741) and VP9 (RFC 9628) payloads.
//! * [`payload`]: H.264 (RFC 6184) and Opus (RFC 7587) payloading into the packets a sender
//!   writes, no object per packet.
//!
//! Every parser works on untrusted input: it never panics and never reads out of bounds.

pub mod jitterbuffer;
pub mod keyframe;
pub mod ntp;
pub mod payload;
pub mod rtcp;
pub mod ssrc;
pub mod stats;
pub mod timing;

use std::fmt;

/// Length of the fixed RTP header (RFC 3550 5.1).
pub const RTP_FIXED_HEADER_LEN: usize = 12;

/// The RTP protocol version carried in the top two bits of every RTP and RTCP packet.
pub const RTP_VERSION: u8 = 2;

/// Parsed RTP fixed header, with the location of the payload inside the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit (M); its meaning is defined by the payload format.
    pub marker: bool,
    /// Payload type (PT), 7 bits.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// RTP timestamp, in units of the payload format's clock rate.
    pub timestamp: u32,
    /// Synchronization source identifier.
    pub ssrc: u32,
    /// Number of CSRC identifiers following the fixed header (CC).
    pub csrc_count: u8,
    /// Whether a header extension is present (X).
    pub has_extension: bool,
    /// Whether the packet carries padding (P).
    pub has_padding: bool,
    /// offset of the payload in the packet
    pub payload_offset: usize,
    /// payload length excluding padding
    pub payload_len: usize,
}

/// Reasons an RTP packet is rejected by [`parse_rtp_header`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtpError {
    /// The packet is shorter than its fixed header plus CSRC list.
    TooShort,
    /// The version field is not 2.
    BadVersion(u8),
    /// The padding count is zero or larger than the payload.
    BadPadding,
    /// The header extension is truncated.
    BadExtension,
}

impl fmt::Display for RtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => f.write_str("RTP packet too short"),
            Self::BadVersion(v) => write!(f, "unsupported RTP version {v}"),
            Self::BadPadding => f.write_str("invalid RTP padding"),
            Self::BadExtension => f.write_str("truncated RTP header extension"),
        }
    }
}

impl std::error::Error for RtpError {}

/// Parses and validates the RTP header of `packet` (RFC 3550 5.1): version 2, CSRC list,
/// header extension (5.3.1) and padding. The payload is `packet[payload_offset..][..payload_len]`.
pub fn parse_rtp_header(packet: &[u8]) -> Result<RtpHeader, RtpError> {
    let fixed = packet
        .get(..RTP_FIXED_HEADER_LEN)
        .ok_or(RtpError::TooShort)?;
    let version = fixed[0] >> 6;
    if version != RTP_VERSION {
        return Err(RtpError::BadVersion(version));
    }
    let has_padding = fixed[0] & 0x20 != 0;
    let has_extension = fixed[0] & 0x10 != 0;
    let csrc_count = fixed[0] & 0x0f;

    let mut offset = RTP_FIXED_HEADER_LEN + 4 * usize::from(csrc_count);
    if packet.len() < offset {
        return Err(RtpError::TooShort);
    }
    if has_extension {
        // 16-bit profile-defined field, 16-bit length in 32-bit words, then the data.
        let words = packet
            .get(offset + 2..)
            .and_then(|ext| ext.first_chunk::<2>())
            .ok_or(RtpError::BadExtension)?;
        offset += 4 + 4 * usize::from(u16::from_be_bytes(*words));
        if packet.len() < offset {
            return Err(RtpError::BadExtension);
        }
    }

    let mut end = packet.len();
    if has_padding {
        // The last octet counts the padding octets, itself included.
        let pad = usize::from(packet[end - 1]);
        if pad == 0 || pad > end - offset {
            return Err(RtpError::BadPadding);
        }
        end -= pad;
    }

    Ok(RtpHeader {
        marker: fixed[1] & 0x80 != 0,
        payload_type: fixed[1] & 0x7f,
        sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
        timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
        csrc_count,
        has_extension,
        has_padding,
        payload_offset: offset,
        payload_len: end - offset,
    })
}

/// Returns the payload described by `h`, or an empty slice if `h` does not fit `packet`
/// (e.g. a header parsed from a different packet).
pub fn rtp_payload<'a>(packet: &'a [u8], h: &RtpHeader) -> &'a [u8] {
    h.payload_offset
        .checked_add(h.payload_len)
        .and_then(|end| packet.get(h.payload_offset..end))
        .unwrap_or_default()
}

/// Heuristic used on multiplexed channels: RTCP packet types 200..=206 in the 2nd byte (RFC 5761 4)
///
/// Also requires version 2 and at least a 4-byte RTCP header, so garbage is classified as RTP
/// (and then rejected by [`parse_rtp_header`]).
pub fn is_rtcp(packet: &[u8]) -> bool {
    match packet {
        [b0, pt, _, _, ..] => b0 >> 6 == RTP_VERSION && (200..=206).contains(pt),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// Feeds `f` with deterministic pseudo-random buffers; any panic fails the calling test.
    /// Buffers optionally start with `prefix`, which steers them past the first sanity checks.
    pub fn fuzz(prefix: &[u8], iterations: usize, mut f: impl FnMut(&[u8])) {
        let mut rng = StdRng::seed_from_u64(0x5eed_1234);
        let mut buf = Vec::new();
        for i in 0..iterations {
            let len = rng.random_range(0..96);
            buf.clear();
            if i % 2 == 0 {
                buf.extend_from_slice(prefix);
            }
            buf.extend((0..len).map(|_| rng.random::<u8>()));
            f(&buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(b0: u8, tail: &[u8]) -> Vec<u8> {
        let mut p = vec![
            b0,
            0x80 | 96,
            0x12,
            0x34,
            0,
            0,
            0x10,
            0,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        p.extend_from_slice(tail);
        p
    }

    #[test]
    fn parses_plain_header() {
        let p = packet(0x80, &[1, 2, 3]);
        let h = parse_rtp_header(&p).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                marker: true,
                payload_type: 96,
                sequence: 0x1234,
                timestamp: 0x1000,
                ssrc: 0xdead_beef,
                csrc_count: 0,
                has_extension: false,
                has_padding: false,
                payload_offset: 12,
                payload_len: 3,
            }
        );
        assert_eq!(rtp_payload(&p, &h), &[1, 2, 3]);
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        // CC=1, X, P: one CSRC, a one-word extension, 2 payload bytes, 3 padding bytes.
        let tail = [
            0, 0, 0, 1, // CSRC
            0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0, // extension header + 1 word
            7, 8, // payload
            0, 0, 3, // padding
        ];
        let p = packet(0x80 | 0x20 | 0x10 | 1, &tail);
        let h = parse_rtp_header(&p).unwrap();
        assert_eq!(
            (h.csrc_count, h.has_extension, h.has_padding),
            (1, true, true)
        );
        assert_eq!((h.payload_offset, h.payload_len), (24, 2));
        assert_eq!(rtp_payload(&p, &h), &[7, 8]);
    }

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(parse_rtp_header(&[0x80; 11]), Err(RtpError::TooShort));
        assert_eq!(
            parse_rtp_header(&packet(0x40, &[])),
            Err(RtpError::BadVersion(1))
        );
        assert_eq!(
            parse_rtp_header(&packet(0x82, &[0; 4])),
            Err(RtpError::TooShort)
        );
        assert_eq!(
            parse_rtp_header(&packet(0x90, &[0, 0])),
            Err(RtpError::BadExtension)
        );
        assert_eq!(
            parse_rtp_header(&packet(0x90, &[0, 0, 0, 2, 0, 0, 0, 0])),
            Err(RtpError::BadExtension)
        );
        assert_eq!(
            parse_rtp_header(&packet(0xa0, &[1, 0])),
            Err(RtpError::BadPadding)
        );
        assert_eq!(
            parse_rtp_header(&packet(0xa0, &[1, 3])),
            Err(RtpError::BadPadding)
        );
        // Padding may consume the whole payload.
        let h = parse_rtp_header(&packet(0xa0, &[0, 2])).unwrap();
        assert_eq!(h.payload_len, 0);
    }

    #[test]
    fn payload_of_mismatched_header_is_empty() {
        let h = parse_rtp_header(&packet(0x80, &[0; 100])).unwrap();
        assert_eq!(rtp_payload(&[0; 20], &h), &[] as &[u8]);
        let bogus = RtpHeader {
            payload_offset: usize::MAX,
            payload_len: 2,
            ..h
        };
        assert_eq!(rtp_payload(&[0; 20], &bogus), &[] as &[u8]);
    }

    #[test]
    fn demultiplexes_rtcp() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 206, 0, 2, 0, 0, 0, 0]));
        assert!(!is_rtcp(&[0x80, 96, 0, 1]));
        assert!(!is_rtcp(&[0x80, 0x80 | 96, 0, 1])); // RTP with marker, PT 96 -> 224
        assert!(!is_rtcp(&[0x80, 207, 0, 1]));
        assert!(!is_rtcp(&[0x00, 200, 0, 1]));
        assert!(!is_rtcp(&[0x80, 200]));
    }

    #[test]
    fn random_input_never_panics() {
        test_util::fuzz(&[0x80], 20_000, |buf| {
            if let Ok(h) = parse_rtp_header(buf) {
                assert!(h.payload_offset + h.payload_len <= buf.len());
                assert_eq!(rtp_payload(buf, &h).len(), h.payload_len);
            }
            let _ = is_rtcp(buf);
        });
    }
}
