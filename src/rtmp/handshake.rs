//! The RTMP handshake, client side: C0+C1 out, S0+S1+S2 in, C2 (the echo of S1) out.
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
}
