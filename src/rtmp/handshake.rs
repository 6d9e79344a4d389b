//! The RTMP handshake, client side (C0+C1 out, S0+S1+S2 in, C2 (the echo of S1) out) and server side
//! (C0+C1 in, S0+S1+S2 out, C2 in; plain, or the digest handshake when C1 carries a player digest).
//!
//! Specifications: RTMP specification 1.0 §5.2 (§5.2.1 sequence, §5.2.2 C0/S0, §5.2.3 C1/S1, §5.2.4
//! C2/S2).
//!
//! This is the plain handshake (version 3, a zero "version" field in C1, so servers answer with
//! the plain handshake too). S0 must be version 3; S2 should echo C1's random bytes. Some servers
//! answer with a digest handshake's S2 regardless; a mismatch is reported, not fatal.
//!
//! Adobe RTMP Specification 1.0 §5.2.

pub const RTMP_VERSION: u8 = 3;
pub const PACKET_SIZE: usize = 1536;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// S0 carried another version: not an RTMP server, or RTMPE (version 6).
    #[error("{}", version_text(*.0))]
    Version(u8),
}

fn version_text(v: u8) -> String {
    if v == 6 {
        "the server wants encrypted RTMP (RTMPE, S0 version 6), unsupported".into()
    } else {
        format!("not an RTMP server: S0 carries version {v} (0x{v:02x}), expected 3")
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Completed {
    /// C2, to send.
    pub c2: Vec<u8>,
    /// Bytes after S2 (the server's first chunks).
    pub leftover: Vec<u8>,
    /// Whether S2 echoed C1's random bytes.
    pub s2_echo_ok: bool,
    /// The server's time field from S1.
    pub server_time: u32,
}

#[derive(Debug)]
pub struct ClientHandshake {
    c1: Vec<u8>,
    received: Vec<u8>,
}

/// Where the server's answer stands, for logs.
fn logged_steps(before: usize, after: usize) -> impl Iterator<Item = &'static str> {
    [
        (1, "S0"),
        (1 + PACKET_SIZE, "S1"),
        (1 + 2 * PACKET_SIZE, "S2"),
    ]
    .into_iter()
    .filter(move |(end, _)| before < *end && after >= *end)
    .map(|(_, name)| name)
}

impl ClientHandshake {
    /// `epoch_ms`: C1's time field; `random`: its 1528 random bytes. Returns C0+C1 to send.
    pub fn new(epoch_ms: u32, random: &[u8; PACKET_SIZE - 8]) -> (Self, Vec<u8>) {
        let mut c1 = Vec::with_capacity(PACKET_SIZE);
        c1.extend_from_slice(&epoch_ms.to_be_bytes());
        c1.extend_from_slice(&[0, 0, 0, 0]);
        c1.extend_from_slice(random);
        let mut out = Vec::with_capacity(1 + PACKET_SIZE);
        out.push(RTMP_VERSION);
        out.extend_from_slice(&c1);
        log::debug!(
            "handshake: C0 (version {RTMP_VERSION}) and C1 ({PACKET_SIZE} bytes, time {epoch_ms}) to send"
        );
        (
            Self {
                c1,
                received: Vec::new(),
            },
            out,
        )
    }

    /// Bytes still missing until S0+S1+S2 are complete.
    pub fn missing(&self) -> usize {
        (1 + 2 * PACKET_SIZE).saturating_sub(self.received.len())
    }

    /// Feeds bytes from the server; Ok(Some) once S0+S1+S2 have arrived.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Completed>, HandshakeError> {
        let before = self.received.len();
        self.received.extend_from_slice(data);
        if let Some(&v) = self.received.first()
            && v != RTMP_VERSION
        {
            log::debug!("handshake: S0 carries version {v}, expected {RTMP_VERSION}");
            return Err(HandshakeError::Version(v));
        }
        log::trace!(
            "handshake: {} bytes from the server, {} of S0+S1+S2 so far",
            data.len(),
            self.received.len()
        );
        for step in logged_steps(before, self.received.len()) {
            match step {
                "S0" => log::debug!("handshake: S0 received (version {RTMP_VERSION})"),
                "S1" => log::debug!(
                    "handshake: S1 received (server time {}, version field {:02x?})",
                    u32::from_be_bytes(self.received[1..5].try_into().unwrap_or_default()),
                    &self.received[5..9]
                ),
                _ => log::debug!("handshake: S2 received"),
            }
        }
        if self.missing() > 0 {
            return Ok(None);
        }
        let s1 = &self.received[1..1 + PACKET_SIZE];
        let s2 = &self.received[1 + PACKET_SIZE..1 + 2 * PACKET_SIZE];
        let server_time = u32::from_be_bytes(s1[0..4].try_into().unwrap());
        // C2 echoes S1: its time, our read time (0 will do), its random bytes.
        let mut c2 = Vec::with_capacity(PACKET_SIZE);
        c2.extend_from_slice(&s1[0..4]);
        c2.extend_from_slice(&[0, 0, 0, 0]);
        c2.extend_from_slice(&s1[8..]);
        let s2_echo_ok = s2[8..] == self.c1[8..];
        let leftover = self.received[1 + 2 * PACKET_SIZE..].to_vec();
        log::debug!(
            "handshake: S2 {} our C1; C2 ({PACKET_SIZE} bytes) to send, {} bytes of chunks after S2",
            if s2_echo_ok {
                "echoes"
            } else {
                "does not echo"
            },
            leftover.len()
        );
        Ok(Some(Completed {
            c2,
            leftover,
            s2_echo_ok,
            server_time,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Server side.
//
// The plain handshake answers C1 with S1 (our time, a zero version field, random bytes) and S2
// (the echo of C1). Flash Player 9 and later, librtmp and OBS put a non-zero version in C1 and an
// HMAC-SHA256 digest (key: "Genuine Adobe Flash Player 001") at an offset that C1 itself encodes
// (scheme 0: the 4 bytes at 8, scheme 1: the 4 bytes at 772); they expect S1 to carry a digest
// made with the server key ("Genuine Adobe Flash Media Server 001") and the last 32 bytes of S2
// to be an HMAC of S2 keyed with HMAC(full server key, C1's digest), and give up otherwise
// ("Couldn't verify the server digest", "Server not genuine Adobe!"). This is how Flash Media
// Server answered, what librtmp's own server half (SHandShake) does, and what nginx-rtmp does.
// ---------------------------------------------------------------------------------------------

/// "Genuine Adobe Flash Media Server 001" and 32 further bytes (the server key).
const FMS_KEY: [u8; 68] = [
    0x47, 0x65, 0x6e, 0x75, 0x69, 0x6e, 0x65, 0x20, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x20, 0x46, 0x6c,
    0x61, 0x73, 0x68, 0x20, 0x4d, 0x65, 0x64, 0x69, 0x61, 0x20, 0x53, 0x65, 0x72, 0x76, 0x65, 0x72,
    0x20, 0x30, 0x30, 0x31, 0xf0, 0xee, 0xc2, 0x4a, 0x80, 0x68, 0xbe, 0xe8, 0x2e, 0x00, 0xd0, 0xd1,
    0x02, 0x9e, 0x7e, 0x57, 0x6e, 0xec, 0x5d, 0x2d, 0x29, 0x80, 0x6f, 0xab, 0x93, 0xb8, 0xe6, 0x36,
    0xcf, 0xeb, 0x31, 0xae,
];
/// The part of the server key that signs S1.
const FMS_KEY_OPEN: usize = 36;
/// "Genuine Adobe Flash Player 001" (the part of the player key that signs C1).
const FP_KEY_OPEN: &[u8; 30] = b"Genuine Adobe Flash Player 001";
const DIGEST_LEN: usize = 32;

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Where the digest of a 1536-byte handshake packet is for `scheme` 0 (offset bytes at 8) or 1
/// (at 772): always inside the packet, with room for the 32 bytes.
pub fn digest_offset(packet: &[u8; PACKET_SIZE], scheme: u8) -> usize {
    let base = if scheme == 0 { 8 } else { 772 };
    let sum: usize = packet[base..base + 4].iter().map(|&b| usize::from(b)).sum();
    sum % 728 + base + 4
}

/// The digest a packet should carry at `offset`: HMAC of the packet without those 32 bytes.
fn packet_digest(packet: &[u8; PACKET_SIZE], offset: usize, key: &[u8]) -> [u8; 32] {
    hmac_sha256(key, &[&packet[..offset], &packet[offset + DIGEST_LEN..]])
}

/// The scheme and offset of a valid player digest in C1, if it carries one.
pub fn find_client_digest(c1: &[u8; PACKET_SIZE]) -> Option<(u8, usize)> {
    [0u8, 1].into_iter().find_map(|scheme| {
        let offset = digest_offset(c1, scheme);
        (packet_digest(c1, offset, FP_KEY_OPEN) == c1[offset..offset + DIGEST_LEN])
            .then_some((scheme, offset))
    })
}

/// Signs S1 in place at the offset of `scheme` with the server key; returns the offset.
pub fn sign_server_packet(s1: &mut [u8; PACKET_SIZE], scheme: u8) -> usize {
    let offset = digest_offset(s1, scheme);
    let d = packet_digest(s1, offset, &FMS_KEY[..FMS_KEY_OPEN]);
    s1[offset..offset + DIGEST_LEN].copy_from_slice(&d);
    offset
}

/// Makes the last 32 bytes of S2 the signature a digest client checks: HMAC(S2 without them)
/// keyed with HMAC(full server key, C1's digest).
pub fn sign_s2(s2: &mut [u8; PACKET_SIZE], client_digest: &[u8]) {
    let key = hmac_sha256(&FMS_KEY, &[client_digest]);
    let sig = hmac_sha256(&key, &[&s2[..PACKET_SIZE - DIGEST_LEN]]);
    s2[PACKET_SIZE - DIGEST_LEN..].copy_from_slice(&sig);
}

/// A client's handshake the server refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerHandshakeError {
    /// C0 carried another version: 6 and 8 are RTMPE, anything else is not RTMP (an HTTP
    /// request, TLS to a plain port, garbage).
    #[error("{}", client_version_text(*.0))]
    Version(u8),
}

fn client_version_text(v: u8) -> String {
    match v {
        6 | 8 | 9 => {
            format!("the client wants encrypted RTMP (RTMPE, C0 version {v}), unsupported")
        }
        0x16 => "not RTMP: C0 is 0x16, a TLS ClientHello (rtmps:// to a plain RTMP port?)".into(),
        _ => format!("not an RTMP client: C0 carries version {v} (0x{v:02x}), expected 3"),
    }
}

/// What the server's handshake became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    Plain,
    /// The digest handshake, C1's digest found at this scheme.
    Digest {
        scheme: u8,
    },
}

/// The server half: C0+C1 in, S0+S1+S2 out, C2 in.
#[derive(Debug)]
pub struct ServerHandshake {
    received: Vec<u8>,
    answered: bool,
    kind: HandshakeKind,
    epoch_ms: u32,
    random: Box<[u8; PACKET_SIZE]>,
}

/// What feeding the server handshake gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerStep {
    /// More bytes needed.
    Pending,
    /// S0+S1+S2 to send (once, when C0+C1 are complete).
    Answer(Vec<u8>),
    /// C2 arrived: the handshake is done; bytes after it are chunks.
    Done { leftover: Vec<u8> },
}

impl ServerHandshake {
    /// `epoch_ms`: S1's time field; `random`: the bytes S1 and S2 are made of.
    pub fn new(epoch_ms: u32, random: &[u8; PACKET_SIZE]) -> Self {
        Self {
            received: Vec::with_capacity(1 + PACKET_SIZE),
            answered: false,
            kind: HandshakeKind::Plain,
            epoch_ms,
            random: Box::new(*random),
        }
    }

    pub fn kind(&self) -> HandshakeKind {
        self.kind
    }

    /// Bytes still missing until the next step (C0+C1, then C2).
    pub fn missing(&self) -> usize {
        (1 + 2 * PACKET_SIZE).saturating_sub(self.received.len())
    }

    /// Feeds the client's bytes. Hands out the answer once C0+C1 are in, then Done after C2;
    /// both may come from one call (C0+C1+C2 sent together), the answer first: call again with
    /// an empty slice after an Answer.
    pub fn feed(&mut self, data: &[u8]) -> Result<ServerStep, ServerHandshakeError> {
        // Never hold more than C0+C1+C2; the rest is leftover.
        self.received.extend_from_slice(data);
        if let Some(&v) = self.received.first()
            && v != RTMP_VERSION
        {
            return Err(ServerHandshakeError::Version(v));
        }
        if !self.answered {
            if self.received.len() < 1 + PACKET_SIZE {
                return Ok(ServerStep::Pending);
            }
            self.answered = true;
            return Ok(ServerStep::Answer(self.answer()));
        }
        if self.received.len() < 1 + 2 * PACKET_SIZE {
            return Ok(ServerStep::Pending);
        }
        let leftover = self.received.split_off(1 + 2 * PACKET_SIZE);
        let c2 = &self.received[1 + PACKET_SIZE..];
        log::trace!(
            "handshake: C2 received ({}echoes S1)",
            if c2[8..] == self.random[8..] {
                ""
            } else {
                "no exact echo; that is allowed: "
            }
        );
        Ok(ServerStep::Done { leftover })
    }

    fn answer(&mut self) -> Vec<u8> {
        let c1: [u8; PACKET_SIZE] = self.received[1..1 + PACKET_SIZE]
            .try_into()
            .expect("C1 is complete");
        let client_version = &c1[4..8];
        let mut s1 = *self.random;
        s1[0..4].copy_from_slice(&self.epoch_ms.to_be_bytes());
        let mut out = Vec::with_capacity(1 + 2 * PACKET_SIZE);
        out.push(RTMP_VERSION);
        let digest = if client_version != [0, 0, 0, 0] {
            find_client_digest(&c1)
        } else {
            None
        };
        match digest {
            Some((scheme, offset)) => {
                self.kind = HandshakeKind::Digest { scheme };
                // A server version, as Flash Media Server 3.5 announced itself.
                s1[4..8].copy_from_slice(&[3, 5, 1, 1]);
                sign_server_packet(&mut s1, scheme);
                // S2: S1's random bytes reversed (any random will do), signed.
                let mut s2 = [0u8; PACKET_SIZE];
                for (d, s) in s2.iter_mut().zip(self.random.iter().rev()) {
                    *d = *s;
                }
                sign_s2(&mut s2, &c1[offset..offset + DIGEST_LEN]);
                log::debug!(
                    "handshake: C1 carries a player digest (scheme {scheme}, client version {}.{}.{}.{}): \
                     digest handshake, S1 and S2 signed",
                    client_version[0],
                    client_version[1],
                    client_version[2],
                    client_version[3]
                );
                out.extend_from_slice(&s1);
                out.extend_from_slice(&s2);
            }
            None => {
                s1[4..8].copy_from_slice(&[0, 0, 0, 0]);
                log::debug!(
                    "handshake: plain (C1 version field {client_version:02x?}, no player digest): \
                     S2 echoes C1"
                );
                out.extend_from_slice(&s1);
                out.extend_from_slice(&c1);
            }
        }
        // S1 as sent, for C2's echo check.
        *self.random = s1;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random() -> [u8; PACKET_SIZE - 8] {
        let mut r = [0u8; PACKET_SIZE - 8];
        for (i, b) in r.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        r
    }

    /// What a plain-handshake server answers: S0, S1 (its own), S2 (echo of C1).
    fn server_answer(c0c1: &[u8]) -> Vec<u8> {
        let mut out = vec![3u8];
        out.extend_from_slice(&1234u32.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend((0..PACKET_SIZE - 8).map(|i| (i * 13) as u8));
        out.extend_from_slice(&c0c1[1..]);
        out
    }

    #[test]
    fn c0_c1_layout() {
        let (_, out) = ClientHandshake::new(42, &random());
        assert_eq!(out.len(), 1 + PACKET_SIZE);
        assert_eq!(out[0], 3);
        assert_eq!(&out[1..5], &42u32.to_be_bytes());
        assert_eq!(&out[5..9], &[0, 0, 0, 0], "zero version: plain handshake");
        assert_eq!(&out[9..], &random()[..]);
    }

    #[test]
    fn completes_byte_by_byte_with_leftover() {
        let (mut hs, c0c1) = ClientHandshake::new(1, &random());
        let mut answer = server_answer(&c0c1);
        answer.extend_from_slice(b"chunks");
        let mut done = None;
        for (i, b) in answer.iter().enumerate() {
            let r = hs.feed(&[*b]).unwrap();
            if i < 2 * PACKET_SIZE {
                assert!(r.is_none(), "done early at byte {i}");
            }
            if r.is_some() {
                done = r;
                // Remaining bytes arrive after completion in practice; feed them together here.
                break;
            }
        }
        let done = done.expect("completed");
        assert!(done.s2_echo_ok);
        assert_eq!(done.server_time, 1234);
        assert_eq!(&done.c2[0..4], &1234u32.to_be_bytes());
        assert_eq!(&done.c2[8..], &answer[9..PACKET_SIZE + 1]);
        // Fed in one go, the extra bytes come back as leftover.
        let (mut hs, c0c1) = ClientHandshake::new(1, &random());
        let mut answer = server_answer(&c0c1);
        answer.extend_from_slice(b"chunks");
        let done = hs.feed(&answer).unwrap().unwrap();
        assert_eq!(done.leftover, b"chunks");
    }

    #[test]
    fn wrong_echo_is_reported() {
        let (mut hs, c0c1) = ClientHandshake::new(1, &random());
        let mut answer = server_answer(&c0c1);
        let last = answer.len() - 1;
        answer[last] ^= 0xff;
        assert!(!hs.feed(&answer).unwrap().unwrap().s2_echo_ok);
    }

    #[test]
    fn garbage_fails_at_the_first_byte() {
        let (mut hs, _) = ClientHandshake::new(1, &random());
        assert_eq!(hs.feed(b"HTTP/1.1 400"), Err(HandshakeError::Version(b'H')));
        let (mut hs, _) = ClientHandshake::new(1, &random());
        assert_eq!(hs.feed(&[6]), Err(HandshakeError::Version(6)));
        assert!(HandshakeError::Version(6).to_string().contains("RTMPE"));
    }

    /// A C1 as librtmp's FP9 handshake makes it: a version, random bytes, a digest at `scheme`.
    fn digest_c1(scheme: u8) -> [u8; PACKET_SIZE] {
        let mut c1 = [0u8; PACKET_SIZE];
        for (i, b) in c1.iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
        c1[0..4].copy_from_slice(&[0, 0, 0, 0]);
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        let offset = digest_offset(&c1, scheme);
        let d = packet_digest(&c1, offset, FP_KEY_OPEN);
        c1[offset..offset + DIGEST_LEN].copy_from_slice(&d);
        c1
    }

    #[test]
    fn hmac_sha256_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            mac[..8],
            [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e],
            "RFC 4231 test case 2"
        );
        // A key longer than the block is hashed first (RFC 4231 test case 6).
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(mac[..4], [0x60, 0xe4, 0x31, 0x59]);
    }

    #[test]
    fn server_plain_handshake_echoes_c1() {
        let mut hs = ServerHandshake::new(77, &[5; PACKET_SIZE]);
        let mut c0c1 = vec![3u8];
        c0c1.extend((0..PACKET_SIZE).map(|i| (i % 251) as u8));
        c0c1[5..9].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(hs.feed(&c0c1[..100]).unwrap(), ServerStep::Pending);
        let ServerStep::Answer(answer) = hs.feed(&c0c1[100..]).unwrap() else {
            panic!("no answer");
        };
        assert_eq!(hs.kind(), HandshakeKind::Plain);
        assert_eq!(answer.len(), 1 + 2 * PACKET_SIZE);
        assert_eq!(answer[0], 3);
        assert_eq!(&answer[1..5], &77u32.to_be_bytes());
        assert_eq!(&answer[5..9], &[0, 0, 0, 0]);
        assert_eq!(&answer[1 + PACKET_SIZE..], &c0c1[1..], "S2 echoes C1");
        // C2 (the echo of S1) and the first chunk in one read.
        let mut c2 = answer[1..1 + PACKET_SIZE].to_vec();
        c2.extend_from_slice(b"chunk");
        assert_eq!(hs.feed(&c2[..10]).unwrap(), ServerStep::Pending);
        assert_eq!(
            hs.feed(&c2[10..]).unwrap(),
            ServerStep::Done {
                leftover: b"chunk".to_vec()
            }
        );
    }

    #[test]
    fn server_digest_handshake_is_what_librtmp_verifies() {
        for scheme in [0u8, 1] {
            let c1 = digest_c1(scheme);
            assert_eq!(find_client_digest(&c1).map(|(s, _)| s), Some(scheme));
            let mut hs = ServerHandshake::new(1, &[9; PACKET_SIZE]);
            let mut c0c1 = vec![3u8];
            c0c1.extend_from_slice(&c1);
            let ServerStep::Answer(answer) = hs.feed(&c0c1).unwrap() else {
                panic!("no answer");
            };
            assert_eq!(hs.kind(), HandshakeKind::Digest { scheme });
            let s1: [u8; PACKET_SIZE] = answer[1..1 + PACKET_SIZE].try_into().unwrap();
            let s2: [u8; PACKET_SIZE] = answer[1 + PACKET_SIZE..].try_into().unwrap();
            assert_ne!(&s1[4..8], &[0, 0, 0, 0], "a server version");
            // librtmp's HandShake: S1's digest verifies with the server key at one of the schemes.
            let s1_offset = digest_offset(&s1, scheme);
            assert_eq!(
                packet_digest(&s1, s1_offset, &FMS_KEY[..FMS_KEY_OPEN]),
                s1[s1_offset..s1_offset + 32]
            );
            // ... and S2's last 32 bytes are HMAC(S2 head, HMAC(FMS key, C1 digest)).
            let c1_offset = digest_offset(&c1, scheme);
            let key = hmac_sha256(&FMS_KEY, &[&c1[c1_offset..c1_offset + 32]]);
            assert_eq!(
                hmac_sha256(&key, &[&s2[..PACKET_SIZE - 32]]),
                s2[PACKET_SIZE - 32..]
            );
        }
        // A version field without a valid digest (ffmpeg's plain C1 has 9.0.124.2 and a digest;
        // a non-Flash client may put anything): plain answer.
        let mut c1 = digest_c1(0);
        c1[100] ^= 1;
        c1[900] ^= 1;
        let mut hs = ServerHandshake::new(1, &[9; PACKET_SIZE]);
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&c1);
        let ServerStep::Answer(answer) = hs.feed(&c0c1).unwrap() else {
            panic!("no answer");
        };
        assert_eq!(hs.kind(), HandshakeKind::Plain);
        assert_eq!(&answer[1 + PACKET_SIZE..], &c1[..]);
    }

    #[test]
    fn server_takes_c0_c1_c2_and_chunks_in_one_read() {
        let mut hs = ServerHandshake::new(1, &[4; PACKET_SIZE]);
        let mut all = vec![3u8];
        all.extend_from_slice(&[0; 2 * PACKET_SIZE]);
        all.extend_from_slice(b"connect");
        assert!(matches!(hs.feed(&all).unwrap(), ServerStep::Answer(_)));
        assert_eq!(
            hs.feed(&[]).unwrap(),
            ServerStep::Done {
                leftover: b"connect".to_vec()
            }
        );
    }

    #[test]
    fn server_refuses_other_versions() {
        let mut hs = ServerHandshake::new(1, &[0; PACKET_SIZE]);
        assert_eq!(
            hs.feed(b"GET / HTTP/1.1\r\n"),
            Err(ServerHandshakeError::Version(b'G'))
        );
        let mut hs = ServerHandshake::new(1, &[0; PACKET_SIZE]);
        let e = hs.feed(&[6]).unwrap_err();
        assert!(e.to_string().contains("RTMPE"), "{e}");
        let mut hs = ServerHandshake::new(1, &[0; PACKET_SIZE]);
        assert!(
            hs.feed(&[0x16, 3, 1])
                .unwrap_err()
                .to_string()
                .contains("TLS")
        );
    }
}
