//! Random-access point detection on RTP payloads, so a server can start sending to a new client
//! at a keyframe.
//!
//! Specifications: RFC 6184 §5.7.1, §5.8 (H.264); RFC 7798 §4.4.2, §4.4.3 (H.265); RFC 7741 §4.2,
//! §4.3 (VP8); RFC 9628 §4.2 (VP9).
//!
//! * H.264, RFC 6184: NAL unit types IDR (5) and SPS (7), also inside STAP-A/STAP-B aggregates
//!   (5.7.1) and at the start of FU-A/FU-B fragments (5.8).
//! * H.265, RFC 7798: IRAP NAL units (16..=21, BLA/IDR/CRA), VPS (32) and SPS (33), also inside
//!   aggregation packets (4.4.2, assuming no DONL fields) and at the start of fragmentation
//!   units (4.4.3).
//! * VP8, RFC 7741: the first packet of partition 0 (S=1, PID=0) whose payload header has the
//!   inverse key frame flag P clear (4.2, 4.3).
//! * VP9, RFC 9628: the start of a frame (B=1) that is not inter-picture predicted (P=0), and
//!   of the base spatial layer (SID=0) when layer indices are present (4.2).

/// `encoding_name` as in SDP rtpmap (case-insensitive: H264, H265, VP8, VP9; anything else — audio etc. — returns true).
///
/// Video payloads that are empty or truncated return false.
pub fn starts_keyframe(encoding_name: &str, payload: &[u8]) -> bool {
    let is = |name: &str| encoding_name.eq_ignore_ascii_case(name);
    if is("H264") {
        h264(payload)
    } else if is("H265") {
        h265(payload)
    } else if is("VP8") {
        vp8(payload)
    } else if is("VP9") {
        vp9(payload)
    } else {
        true
    }
}

fn h264(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const STAP_B: u8 = 25;
    const FU_A: u8 = 28;
    const FU_B: u8 = 29;
    let is_rap = |nal: &[u8]| nal.first().is_some_and(|b| matches!(b & 0x1f, IDR | SPS));

    match payload {
        [b, ..] if matches!(b & 0x1f, IDR | SPS) => true,
        [b, rest @ ..] if b & 0x1f == STAP_A => aggregated_nals(rest).any(is_rap),
        // STAP-B carries a 16-bit DON before the NAL units.
        [b, _, _, rest @ ..] if b & 0x1f == STAP_B => aggregated_nals(rest).any(is_rap),
        // FU header: S E R Type.
        [b, fu, ..] if matches!(b & 0x1f, FU_A | FU_B) => fu & 0x80 != 0 && fu & 0x1f == IDR,
        _ => false,
    }
}

fn h265(payload: &[u8]) -> bool {
    const AP: u8 = 48;
    const FU: u8 = 49;
    let nal_type = |b: u8| (b >> 1) & 0x3f;
    let is_rap_type = |t: u8| matches!(t, 16..=21 | 32 | 33);
    let is_rap = |nal: &[u8]| nal.first().is_some_and(|&b| is_rap_type(nal_type(b)));

    // Two-byte NAL unit header (type in bits 1..=6 of the first byte).
    match payload {
        [b, _, rest @ ..] if nal_type(*b) == AP => aggregated_nals(rest).any(is_rap),
        // FU header: S E FuType.
        [b, _, fu, ..] if nal_type(*b) == FU => fu & 0x80 != 0 && is_rap_type(fu & 0x3f),
        [b, _, ..] => is_rap_type(nal_type(*b)),
        _ => false,
    }
}

/// NAL units of an aggregation packet body: each is preceded by its 16-bit size. Iteration stops
/// at the first size that is zero or exceeds the remaining data.
fn aggregated_nals(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (size, rest) = data.split_first_chunk::<2>()?;
        let size = usize::from(u16::from_be_bytes(*size));
        if size == 0 {
            return None;
        }
        let (nal, rest) = rest.split_at_checked(size)?;
        data = rest;
        Some(nal)
    })
}

fn vp8(payload: &[u8]) -> bool {
    // Payload descriptor: X R N S R PID(3).
    let Some((&b0, mut rest)) = payload.split_first() else {
        return false;
    };
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return false;
    }
    if b0 & 0x80 != 0 {
        // Extension byte: I L T K, then PictureID (1 or 2 bytes, M bit), TL0PICIDX, TID/KEYIDX.
        let Some((&ext, tail)) = rest.split_first() else {
            return false;
        };
        rest = tail;
        if ext & 0x80 != 0 {
            rest = rest.get(picture_id_len(rest)..).unwrap_or_default();
        }
        let skip = usize::from(ext & 0x40 != 0) + usize::from(ext & 0x30 != 0);
        rest = rest.get(skip..).unwrap_or_default();
    }
    // VP8 payload header: Size0(3) H VER(3) P, with P the inverse key frame flag.
    rest.first().is_some_and(|b| b & 0x01 == 0)
}

fn vp9(payload: &[u8]) -> bool {
    // Payload descriptor: I P L F B E V Z.
    let Some((&b0, rest)) = payload.split_first() else {
        return false;
    };
    if b0 & 0x08 == 0 || b0 & 0x40 != 0 {
        return false;
    }
    if b0 & 0x20 == 0 {
        return true;
    }
    // Layer indices follow the optional PictureID (1 or 2 bytes, M bit): TID(3) U SID(3) D.
    let skip = if b0 & 0x80 != 0 {
        picture_id_len(rest)
    } else {
        0
    };
    rest.get(skip)
        .is_some_and(|layers| (layers >> 1) & 0x07 == 0)
}

/// Length of a VP8/VP9 PictureID field starting at `data[0]`: 2 bytes if its M bit is set.
fn picture_id_len(data: &[u8]) -> usize {
    match data.first() {
        Some(id) if id & 0x80 != 0 => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264() {
        let kf = |p: &[u8]| starts_keyframe("H264", p);
        assert!(kf(&[0x65, 0x88])); // IDR
        assert!(kf(&[0x67, 0x42])); // SPS
        assert!(!kf(&[0x41, 0x9a])); // non-IDR slice
        assert!(!kf(&[0x68, 0xce])); // PPS alone
        assert!(!kf(&[]));
        // STAP-A: SEI, SPS.
        assert!(kf(&[0x18, 0, 2, 0x06, 0x05, 0, 2, 0x67, 0x42]));
        // STAP-A: SEI, PPS only; then one with a size running past the end.
        assert!(!kf(&[0x18, 0, 2, 0x06, 0x05, 0, 2, 0x68, 0xce]));
        assert!(!kf(&[0x18, 0, 9, 0x67, 0x42]));
        // STAP-B: DON, then IDR.
        assert!(kf(&[0x19, 0, 7, 0, 1, 0x65]));
        // FU-A: start of IDR, middle of IDR, start of non-IDR.
        assert!(kf(&[0x7c, 0x85, 0xb8]));
        assert!(!kf(&[0x7c, 0x05, 0xb8]));
        assert!(!kf(&[0x5c, 0x81, 0x9a]));
        assert!(!kf(&[0x7c]));
        assert!(starts_keyframe("h264", &[0x65]));
    }

    #[test]
    fn h265() {
        let kf = |p: &[u8]| starts_keyframe("H265", p);
        let header = |t: u8| [t << 1, 0x01];
        for t in [16, 19, 20, 21, 32, 33] {
            assert!(kf(&header(t)), "type {t}");
        }
        for t in [0, 1, 22, 34, 39] {
            assert!(!kf(&header(t)), "type {t}");
        }
        assert!(!kf(&[0x26]));
        // AP: PPS (34), then IDR_W_RADL (19).
        assert!(kf(&[0x60, 0x01, 0, 2, 0x44, 0x01, 0, 3, 0x26, 0x01, 0xaf]));
        assert!(!kf(&[0x60, 0x01, 0, 2, 0x44, 0x01, 0, 2, 0x02, 0x01]));
        // FU: start of CRA (21), continuation of CRA, start of TRAIL_R (1).
        assert!(kf(&[0x62, 0x01, 0x95, 0xaa]));
        assert!(!kf(&[0x62, 0x01, 0x15, 0xaa]));
        assert!(!kf(&[0x62, 0x01, 0x81, 0xaa]));
        assert!(!kf(&[0x62, 0x01]));
    }

    #[test]
    fn vp8() {
        let kf = |p: &[u8]| starts_keyframe("VP8", p);
        assert!(kf(&[0x10, 0x50])); // S=1, PID=0, P=0
        assert!(!kf(&[0x10, 0x51])); // inter frame
        assert!(!kf(&[0x00, 0x50])); // not the start of a partition
        assert!(!kf(&[0x11, 0x50])); // partition 1
        assert!(!kf(&[0x10]));
        // X with I (15-bit PictureID), L, T: 4 extension bytes before the payload header.
        assert!(kf(&[0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x50]));
        assert!(!kf(&[0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x51]));
        // X with I (7-bit PictureID) and K only.
        assert!(kf(&[0x90, 0x90, 0x12, 0x1f, 0x50]));
        // Truncated extensions.
        assert!(!kf(&[0x90, 0xe0, 0x81]));
        assert!(!kf(&[0x90]));
    }

    #[test]
    fn vp9() {
        let kf = |p: &[u8]| starts_keyframe("vp9", p);
        assert!(kf(&[0x08, 0x82])); // B, no P
        assert!(!kf(&[0x48, 0x86])); // inter-predicted
        assert!(!kf(&[0x04, 0x82])); // not the start of a frame
        assert!(!kf(&[]));
        // I (15-bit PictureID) + L: base layer (SID 0), then spatial layer 1.
        assert!(kf(&[0xa8, 0x80, 0x01, 0x00, 0x00]));
        assert!(!kf(&[0xa8, 0x80, 0x01, 0x02, 0x00]));
        // L without PictureID, truncated.
        assert!(kf(&[0x28, 0x20]));
        assert!(!kf(&[0x28]));
        assert!(!kf(&[0xa8, 0x80, 0x01]));
    }

    #[test]
    fn other_encodings_always_start() {
        assert!(starts_keyframe("OPUS", &[]));
        assert!(starts_keyframe("MPEG4-GENERIC", &[1, 2, 3]));
    }

    #[test]
    fn random_input_never_panics() {
        for name in ["H264", "H265", "VP8", "VP9"] {
            super::super::test_util::fuzz(&[], 20_000, |p| {
                let _ = starts_keyframe(name, p);
            });
        }
    }
}
