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
//! The server side tells a tunnel's HTTP request from RTSP with [`sniff`], reads its head with
//! [`parse_request`] and answers with [`get_response`] or [`error_response`].

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
    /// A request head that is no HTTP request (server side).
    #[error("no HTTP request: {0}")]
    BadRequest(httparse::Error),
    /// A request head longer than [`MAX_HEAD`] (server side).
    #[error("an HTTP request head longer than {MAX_HEAD} bytes")]
    RequestTooLong,
    /// An HTTP request that opens no tunnel: another method, no `x-sessioncookie`, or a GET
    /// that does not accept [`CONTENT_TYPE`].
    #[error("{method} without {missing}: no tunnel")]
    NotTunnel {
        method: String,
        missing: &'static str,
    },
}

/// How a connection to an RTSP server starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Too few bytes to tell.
    NeedMore,
    /// An HTTP `GET` or `POST`: one side of a tunnel.
    Http,
    /// Anything else: RTSP (no RTSP method is `GET` or `POST`; `GET_PARAMETER` is told apart).
    Rtsp,
}

/// Tells from the first bytes of a connection whether it opens a tunnel.
pub fn sniff(start: &[u8]) -> Opening {
    let mut opening = Opening::Rtsp;
    for method in [&b"GET "[..], b"POST "] {
        let n = start.len().min(method.len());
        if start[..n] == method[..n] {
            opening = if n == method.len() {
                Opening::Http
            } else {
                Opening::NeedMore
            };
            break;
        }
    }
    opening
}

/// The side of a tunnel an HTTP request opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The server-to-client direction.
    Get,
    /// The client-to-server direction (base64).
    Post,
}

/// A tunnel's opening request, as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequest {
    pub side: Side,
    /// `x-sessioncookie`, compared exactly (white space around it trimmed as HTTP does).
    pub cookie: String,
}

/// Reads the head of a tunnel's opening request at the start of `buf`: `Ok(None)` when more is
/// needed, else the request and the length of its head (what follows is a POST's body).
pub fn parse_request(buf: &[u8]) -> Result<Option<(TunnelRequest, usize)>, TunnelError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => return Err(TunnelError::RequestTooLong),
        Err(e) => return Err(TunnelError::BadRequest(e)),
    };
    let method = req.method.unwrap_or("");
    let not_tunnel = |missing| TunnelError::NotTunnel {
        method: method.to_owned(),
        missing,
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let side = match method {
        "GET" => Side::Get,
        "POST" => Side::Post,
        _ => return Err(not_tunnel("being GET or POST")),
    };
    let accepted = header("accept").is_some_and(|v| {
        v.split(',')
            .any(|t| t.split(';').next().unwrap_or("").trim() == CONTENT_TYPE)
    });
    if side == Side::Get && !accepted {
        return Err(not_tunnel("Accept: application/x-rtsp-tunnelled"));
    }
    let cookie = match header("x-sessioncookie") {
        Some(c) if !c.is_empty() => c.to_owned(),
        _ => return Err(not_tunnel("x-sessioncookie")),
    };
    Ok(Some((TunnelRequest { side, cookie }, len)))
}

/// The server's answer to a tunnel's GET, after which the RTSP stream follows (no
/// Content-Length: the body lasts as long as the connection, as gst-rtsp-server answers).
pub fn get_response(server: &str) -> String {
    format!(
        "HTTP/1.0 200 OK\r\nServer: {server}\r\nContent-Type: {CONTENT_TYPE}\r\n\
         Cache-Control: no-cache\r\nPragma: no-cache\r\n\r\n"
    )
}

/// The server's answer to a tunnel request it refuses; the connection is closed after it.
pub fn error_response(status: u16, reason: &str, server: &str) -> String {
    format!(
        "HTTP/1.0 {status} {reason}\r\nServer: {server}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
}

/// The start of a cookie, for logs (a cookie lets whoever knows it talk into the tunnel).
pub fn short_cookie(cookie: &str) -> &str {
    let end = cookie
        .char_indices()
        .nth(8)
        .map_or(cookie.len(), |(i, _)| i);
    &cookie[..end]
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
    fn openings_are_told_apart() {
        for (start, want) in [
            (&b""[..], Opening::NeedMore),
            (b"G", Opening::NeedMore),
            (b"POST", Opening::NeedMore),
            (b"GET ", Opening::Http),
            (b"POST /x", Opening::Http),
            (b"GET_PARAMETER", Opening::Rtsp),
            (b"OPTIONS", Opening::Rtsp),
            (b"$\x00", Opening::Rtsp),
            (b"PO", Opening::NeedMore),
            (b"PLAY", Opening::Rtsp),
        ] {
            assert_eq!(sniff(start), want, "{start:?}");
        }
    }

    #[test]
    fn tunnel_requests_are_read_as_our_client_sends_them() {
        let cookie = new_cookie();
        let get = get_request("/live", "h:1", &cookie, "ua");
        assert_eq!(parse_request(&get.as_bytes()[..10]), Ok(None));
        let (req, len) = parse_request(get.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (req.side, req.cookie.as_str(), len),
            (Side::Get, &*cookie, get.len())
        );
        let mut post = post_request("/live", "h:1", &cookie, "ua").into_bytes();
        let head = post.len();
        post.extend_from_slice(&encode(b"OPTIONS"));
        let (req, len) = parse_request(&post).unwrap().unwrap();
        assert_eq!((req.side, len), (Side::Post, head));
        // ffmpeg's GET: the content type among others.
        let ffmpeg = b"GET / HTTP/1.1\r\nx-sessioncookie: abc \r\n\
                       Accept: application/x-rtsp-tunnelled, text/plain\r\n\r\n";
        let (req, _) = parse_request(ffmpeg).unwrap().unwrap();
        assert_eq!(req.cookie, "abc");
    }

    #[test]
    fn other_requests_open_no_tunnel() {
        let not_tunnel = |head: &[u8]| match parse_request(head) {
            Err(TunnelError::NotTunnel { missing, .. }) => missing,
            other => panic!("{head:?}: {other:?}"),
        };
        assert_eq!(
            not_tunnel(b"GET / HTTP/1.0\r\nx-sessioncookie: a\r\n\r\n"),
            "Accept: application/x-rtsp-tunnelled"
        );
        assert_eq!(
            not_tunnel(b"POST / HTTP/1.0\r\nx-sessioncookie:\r\n\r\n"),
            "x-sessioncookie"
        );
        assert_eq!(not_tunnel(b"PUT / HTTP/1.0\r\n\r\n"), "being GET or POST");
        assert!(matches!(
            parse_request(b"GET \x01 HTTP/1.0\r\n\r\n"),
            Err(TunnelError::BadRequest(_))
        ));
        let endless = [b"GET / HTTP/1.0\r\n".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert_eq!(parse_request(&endless), Err(TunnelError::RequestTooLong));
    }

    #[test]
    fn the_server_answers_as_gst_rtsp_server() {
        let ok = get_response("s");
        assert_eq!(parse_get_response(ok.as_bytes()), Ok(Some(ok.len())));
        assert!(ok.contains("Content-Type: application/x-rtsp-tunnelled\r\n"));
        assert!(ok.contains("Cache-Control: no-cache\r\n"));
        assert!(!ok.to_ascii_lowercase().contains("content-length"));
        let refused = error_response(404, "Not Found", "s");
        assert!(matches!(
            parse_get_response(refused.as_bytes()),
            Err(TunnelError::Status { status: 404, .. })
        ));
        assert_eq!(short_cookie("0123456789abcdef"), "01234567");
        assert_eq!(short_cookie("äb"), "äb");
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
