//! RTSP tunnelled through HTTP (the QuickTime tunnel), without I/O: the two HTTP requests that
//! open it, the server's answer to the first, and the base64 coding of the client's direction.
//!
//! Specifications: Apple's "Tunnelling RTSP and RTP through HTTP" (QuickTime Streaming Server
//! documentation): the client opens two HTTP connections that name the same `x-sessioncookie`.
//! On the first it sends `GET` (`Accept: application/x-rtsp-tunnelled`); the server answers
//! `200 OK` with that content type and then sends everything (RTSP responses and requests,
//! interleaved RTP/RTCP) in clear on it, as on an RTSP connection. On the second it sends `POST`
//! (`Content-Type: application/x-rtsp-tunnelled`, a large `Content-Length` it never reaches), which
//! the server does not answer, and then its RTSP messages, each base64-encoded (RFC 4648 §4, with
//! padding), on it. HTTP message syntax: RFC 9112 (HTTP/1.0 as QuickTime and GStreamer send it).
//!
//! [`Base64Decoder`] reads what arrives on the POST connection (the server's side), split
//! anywhere, with line breaks or spaces between the characters, each message padded on its own.

use base64::Engine;

/// The content type of both directions of a tunnel.
pub const CONTENT_TYPE: &str = "application/x-rtsp-tunnelled";

/// The longest head of the server's answer to GET that is read.
pub const MAX_HEAD: usize = 8 * 1024;

/// Why a tunnel cannot be opened, or what the POST direction carried is not base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// The server answered GET with another status than 200.
    #[error("the server answered the tunnel's GET with {status} {reason}")]
    Status { status: u16, reason: String },
    /// The answer to GET is no HTTP response.
    #[error("the answer to the tunnel's GET is no HTTP response: {0}")]
    Malformed(String),
    /// The answer's head is longer than [`MAX_HEAD`].
    #[error("the answer to the tunnel's GET has a head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    /// A byte that is neither base64 nor white space.
    #[error("byte {byte:#04x} at offset {offset} is not base64")]
    NotBase64 { byte: u8, offset: u64 },
    /// `=` where no padding may be, or data after it within a quantum.
    #[error("misplaced base64 padding at offset {offset}")]
    Padding { offset: u64 },
}

/// A fresh session cookie: 128 random bits in hex.
pub fn new_cookie() -> String {
    use rand::RngExt;
    let bits: u128 = rand::rng().random();
    format!("{bits:032x}")
}

/// The GET that opens the server-to-client direction. `target`: the RTSP URL's path and
/// query; `host`: `host[:port]` as the URL names it.
pub fn get_request(target: &str, host: &str, cookie: &str, user_agent: &str) -> String {
    format!(
        "GET {target} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n\
         x-sessioncookie: {cookie}\r\nAccept: {CONTENT_TYPE}\r\n\
         Pragma: no-cache\r\nCache-Control: no-cache\r\n\r\n"
    )
}

/// The POST that opens the client-to-server direction (not answered by the server).
pub fn post_request(target: &str, host: &str, cookie: &str, user_agent: &str) -> String {
    format!(
        "POST {target} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n\
         x-sessioncookie: {cookie}\r\nContent-Type: {CONTENT_TYPE}\r\n\
         Pragma: no-cache\r\nCache-Control: no-cache\r\nContent-Length: 32767\r\n\
         Expires: Sun, 9 Jan 1972 00:00:00 GMT\r\n\r\n"
    )
}

/// Reads the head of the server's answer to GET at the start of `buf`: `Ok(None)` when more is
/// needed, `Ok(Some(len))` for a 200 answer whose head takes `len` bytes (what follows is the
/// RTSP stream).
pub fn parse_get_response(buf: &[u8]) -> Result<Option<usize>, TunnelError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.unwrap_or(0);
            if status != 200 {
                return Err(TunnelError::Status {
                    status,
                    reason: resp.reason.unwrap_or("").to_owned(),
                });
            }
            Ok(Some(len))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(TunnelError::HeadTooLong),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(TunnelError::Malformed(e.to_string())),
    }
}

/// `plain` (one RTSP message or interleaved frame) as the POST direction carries it.
pub fn encode(plain: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(plain)
        .into_bytes()
}

/// Decodes the POST direction: base64 in chunks split anywhere, white space ignored, each
/// message padded on its own. Never panics: anything else is a [`TunnelError`].
#[derive(Debug, Default)]
pub struct Base64Decoder {
    /// The sextets of the current quantum, most significant first.
    bits: u32,
    /// Characters of the current quantum (0..4), padding included.
    len: u8,
    /// `=` in the current quantum.
    padding: u8,
    /// Bytes of input seen.
    offset: u64,
}

impl Base64Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `input`, appending the bytes to `out`. After an error the decoder is not to be
    /// used any more (the tunnel is broken).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TunnelError> {
        for &byte in input {
            let offset = self.offset;
            self.offset += 1;
            let sextet = match byte {
                b'A'..=b'Z' => byte - b'A',
                b'a'..=b'z' => byte - b'a' + 26,
                b'0'..=b'9' => byte - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if self.len >= 2 => {
                    self.padding += 1;
                    0
                }
                b'=' => return Err(TunnelError::Padding { offset }),
                b' ' | b'\t' | b'\r' | b'\n' => continue,
                _ => return Err(TunnelError::NotBase64 { byte, offset }),
            };
            if byte != b'=' && self.padding > 0 {
                return Err(TunnelError::Padding { offset });
            }
            self.bits = self.bits << 6 | u32::from(sextet);
            self.len += 1;
            if self.len == 4 {
                let [_, a, b, c] = self.bits.to_be_bytes();
                let n = 3 - usize::from(self.padding);
                out.extend_from_slice(&[a, b, c][..n]);
                (self.bits, self.len, self.padding) = (0, 0, 0);
            }
        }
        Ok(())
    }

    /// Whether the input so far ends on a quantum's boundary (nothing is held back).
    pub fn is_aligned(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<u8>, TunnelError> {
        let mut d = Base64Decoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.decode(c, &mut out)?;
        }
        assert!(d.is_aligned());
        Ok(out)
    }

    #[test]
    fn encoded_messages_decode_split_anywhere() {
        let messages: [&[u8]; 3] = [
            b"OPTIONS rtsp://h/live RTSP/1.0\r\nCSeq: 1\r\n\r\n",
            b"x",
            b"\x24\x01\x00\x02ab",
        ];
        let stream: Vec<u8> = messages.iter().flat_map(|m| encode(m)).collect();
        let want = messages.concat();
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(decode_all(&[a, b]).unwrap(), want, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_all(&bytewise).unwrap(), want);
    }

    #[test]
    fn white_space_is_ignored() {
        // RFC 4648 §10's vectors, wrapped as MIME writers wrap lines.
        assert_eq!(decode_all(&[b"Zm9v\r\nYmFy\n"]).unwrap(), b"foobar");
        assert_eq!(decode_all(&[b"Zm8=  Zg==\t"]).unwrap(), b"fof");
        assert_eq!(decode_all(&[b""]).unwrap(), b"");
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let mut out = Vec::new();
        assert_eq!(
            Base64Decoder::new().decode(b"Zm9v!", &mut out),
            Err(TunnelError::NotBase64 {
                byte: b'!',
                offset: 4
            })
        );
        for bad in [&b"="[..], b"Z===", b"Zm=v", b"Zg==\n="] {
            let e = Base64Decoder::new().decode(bad, &mut out).unwrap_err();
            assert!(matches!(e, TunnelError::Padding { .. }), "{bad:?}: {e:?}");
        }
        // Every byte value, in every position of a quantum: an answer, never a panic.
        for byte in 0..=255u8 {
            for prefix in [&b""[..], b"Z", b"Zm", b"Zm9", b"Zm=", b"Zg="] {
                let _ = Base64Decoder::new().decode(&[prefix, &[byte]].concat(), &mut out);
            }
        }
    }

    #[test]
    fn the_get_answer_is_checked() {
        let head = b"HTTP/1.0 200 OK\r\nContent-Type: application/x-rtsp-tunnelled\r\n\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"RTSP/1.0 200 OK\r\n");
        assert_eq!(parse_get_response(&buf), Ok(Some(head.len())));
        assert_eq!(parse_get_response(&head[..20]), Ok(None));
        assert_eq!(
            parse_get_response(b"HTTP/1.0 404 Not Found\r\n\r\n"),
            Err(TunnelError::Status {
                status: 404,
                reason: "Not Found".into()
            })
        );
        assert!(matches!(
            parse_get_response(b"RTSP/1.0 200 OK\r\n\r\n"),
            Err(TunnelError::Malformed(_))
        ));
        let endless = [b"HTTP/1.0 200 OK\r\n".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert_eq!(parse_get_response(&endless), Err(TunnelError::HeadTooLong));
    }

    #[test]
    fn requests_name_the_cookie_and_content_type() {
        let cookie = new_cookie();
        assert_eq!(cookie.len(), 32);
        assert_ne!(cookie, new_cookie());
        let get = get_request("/live?a=1", "127.0.0.1:8554", &cookie, "ua");
        assert!(get.starts_with("GET /live?a=1 HTTP/1.0\r\n"));
        assert!(get.contains(&format!("x-sessioncookie: {cookie}\r\n")));
        assert!(get.contains("Accept: application/x-rtsp-tunnelled\r\n"));
        assert!(get.ends_with("\r\n\r\n"));
        let post = post_request("/live", "h", &cookie, "ua");
        assert!(post.starts_with("POST /live HTTP/1.0\r\n"));
        assert!(post.contains("Content-Type: application/x-rtsp-tunnelled\r\n"));
        assert!(post.contains(&format!("x-sessioncookie: {cookie}\r\n")));
    }
}
