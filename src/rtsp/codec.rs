//! Incremental framing of an RTSP byte stream, for servers and clients over TCP.
//!
//! Specifications: RFC 2326 §4 (message, §4.4 length), §6-§7 (request and status lines), §10.12
//! (interleaved data), §12.14 Content-Length, §12.17 CSeq; RFC 7826 §5, §7.1, §8.1, §14, §18.17,
//! §18.20.
//!
//! The stream carries RTSP requests and responses ([RFC 2326 section 4], [RFC 7826 section 5]:
//! start line, headers, an empty line, then `Content-Length` bytes of body) mixed with
//! interleaved binary data ([RFC 2326 section 10.12], [RFC 7826 section 14]: `$`, a channel
//! byte, a 16-bit big-endian length, then the payload).
//!
//! [`Decoder`] does the framing itself (find the end of the header block, read
//! `Content-Length`, enforce [`Limits`]) and hands each complete message to
//! [`rtsp_types::Message::parse`]. Knowing the extent of a message before parsing it is what
//! makes recovery possible: a message that does not parse is skipped as a whole and reported as
//! [`DecodeError::Malformed`], with its `CSeq` if one can be read from the raw text, so a server
//! can answer `400 Bad Request` and go on with the next message.
//!
//! Tolerance: empty lines between messages are skipped (as HTTP does, RFC 7230 section 3.5) and
//! header blocks with bare LF line endings are accepted (they are rewritten to CRLF, which is
//! all `rtsp-types` accepts).
//!
//! [RFC 2326 section 4]: https://www.rfc-editor.org/rfc/rfc2326#section-4
//! [RFC 2326 section 10.12]: https://www.rfc-editor.org/rfc/rfc2326#section-10.12
//! [RFC 7826 section 5]: https://www.rfc-editor.org/rfc/rfc7826#section-5
//! [RFC 7826 section 14]: https://www.rfc-editor.org/rfc/rfc7826#section-14

use std::{borrow::Cow, fmt};

use bytes::{Buf, Bytes, BytesMut};
use rtsp_types::{Headers, Message, headers::CONTENT_LENGTH};

/// Size limits applied while decoding, to bound memory per connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum size of a start line plus headers, including the terminating empty line.
    pub max_header_bytes: usize,
    /// Maximum `Content-Length` of a message body.
    pub max_body_bytes: usize,
}

/// 16 KiB of headers, 1 MiB of body.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// One unit of the RTSP stream.
#[derive(Debug)]
pub enum Frame {
    /// An RTSP request (RFC 7826 section 7).
    Request(rtsp_types::Request<Vec<u8>>),
    /// An RTSP response (RFC 7826 section 8).
    Response(rtsp_types::Response<Vec<u8>>),
    /// RFC 2326 10.12 `$` channel len payload
    Interleaved {
        /// Channel identifier, as negotiated with `interleaved=` in the Transport header.
        channel: u8,
        /// The payload (an RTP or RTCP packet).
        data: Bytes,
    },
}

/// Why the stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A message that cannot be parsed. The decoder has skipped it (up to the end of its headers
    /// plus its Content-Length body if readable) and can go on. `cseq` is the CSeq header value
    /// if one could be read from the raw header text.
    Malformed {
        /// `CSeq` of the message, for the error response.
        cseq: Option<u32>,
        /// What was wrong, for logging.
        reason: String,
    },
    /// Header block exceeds the limit: connection must be answered (e.g. 431/400) and closed.
    /// Not recoverable.
    HeaderTooLarge {
        /// `CSeq` of the message, if found in the buffered part of the headers.
        cseq: Option<u32>,
    },
    /// Content-Length exceeds the limit (413). Not recoverable.
    BodyTooLarge {
        /// `CSeq` of the message.
        cseq: Option<u32>,
    },
}

impl DecodeError {
    /// Whether the stream is unusable after this error: the connection should be answered and
    /// closed. Only [`DecodeError::Malformed`] is recoverable.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, DecodeError::Malformed { .. })
    }

    /// `CSeq` of the offending message, if known.
    pub fn cseq(&self) -> Option<u32> {
        match *self {
            DecodeError::Malformed { cseq, .. }
            | DecodeError::HeaderTooLarge { cseq }
            | DecodeError::BodyTooLarge { cseq } => cseq,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed { reason, .. } => write!(f, "malformed RTSP message: {reason}"),
            DecodeError::HeaderTooLarge { .. } => f.write_str("RTSP header block too large"),
            DecodeError::BodyTooLarge { .. } => f.write_str("RTSP message body too large"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Extent of the text message at the front of the buffer, once its headers are complete.
#[derive(Debug, Clone, Copy)]
struct Pending {
    header_len: usize,
    total_len: usize,
    cseq: Option<u32>,
}

/// Incremental decoder: [`extend`](Self::extend) it with bytes as they are read from the socket,
/// then call [`decode`](Self::decode) until it returns `Ok(None)`.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    buf: BytesMut,
    /// Where the search for the end of the header block resumes, so that a message arriving in
    /// many small reads is scanned once.
    scan_from: usize,
    pending: Option<Pending>,
    fatal: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder with an empty buffer.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            buf: BytesMut::new(),
            scan_from: 0,
            pending: None,
            fatal: None,
        }
    }

    /// Appends bytes as they are read from the stream (no read buffer is lent out).
    pub fn extend(&mut self, data: &[u8]) {
        if self.buf.is_empty() {
            // Everything before was decoded, and the frames handed out still share that
            // allocation: growing it would allocate anew at its full capacity (and touch
            // fresh pages) on every read. A buffer the size of what came costs less.
            self.buf = BytesMut::from(data);
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// Next complete frame, Ok(None) if more data is needed. After a fatal error, further calls
    /// return the same error.
    ///
    /// Every call that returns a frame or [`DecodeError::Malformed`] consumes input, so calling
    /// this in a loop until `Ok(None)` or a fatal error always terminates.
    pub fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(err) = &self.fatal {
            return Err(err.clone());
        }
        let res = self.decode_inner();
        if let Err(err) = &res
            && err.is_fatal()
        {
            self.fatal = Some(err.clone());
        }
        res
    }

    /// Number of bytes received but not decoded yet.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    fn decode_inner(&mut self) -> Result<Option<Frame>, DecodeError> {
        let pending = match self.pending {
            Some(pending) => pending,
            None => {
                let blank = self
                    .buf
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
                self.buf.advance(blank);
                match self.buf.first() {
                    None => return Ok(None),
                    Some(b'$') => return Ok(self.decode_interleaved()),
                    Some(_) => {}
                }
                let Some(pending) = self.scan_headers()? else {
                    return Ok(None);
                };
                self.pending = Some(pending);
                pending
            }
        };
        if self.buf.len() < pending.total_len {
            return Ok(None);
        }
        self.pending = None;
        let msg = self.buf.split_to(pending.total_len);
        parse_message(&msg, pending.header_len)
            .map(Some)
            .map_err(|reason| DecodeError::Malformed {
                cseq: pending.cseq,
                reason,
            })
    }

    fn decode_interleaved(&mut self) -> Option<Frame> {
        let &[_, channel, hi, lo] = self.buf.get(..4)? else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if self.buf.len() < 4 + len {
            return None;
        }
        self.buf.advance(4);
        let data = self.buf.split_to(len).freeze();
        Some(Frame::Interleaved { channel, data })
    }

    /// Looks for the end of the header block of the text message at the front of the buffer.
    fn scan_headers(&mut self) -> Result<Option<Pending>, DecodeError> {
        let window = &self.buf[..self.buf.len().min(self.limits.max_header_bytes)];
        let Some(header_len) = find_header_end(window, &mut self.scan_from) else {
            if self.buf.len() >= self.limits.max_header_bytes {
                let cseq = raw_cseq(window);
                return Err(DecodeError::HeaderTooLarge { cseq });
            }
            return Ok(None);
        };
        self.scan_from = 0;
        let header = &self.buf[..header_len];
        let cseq = raw_cseq(header);
        let body_len = match raw_content_length(header) {
            Ok(len) => len,
            Err(reason) => {
                // Without a usable length the body (if any) can't be skipped: resync after the
                // headers.
                self.buf.advance(header_len);
                return Err(DecodeError::Malformed { cseq, reason });
            }
        };
        if body_len > self.limits.max_body_bytes {
            return Err(DecodeError::BodyTooLarge { cseq });
        }
        Ok(Some(Pending {
            header_len,
            total_len: header_len + body_len,
            cseq,
        }))
    }
}

/// Length of the header block (up to and including the empty line ending it, CRLF or LF), or
/// `None` if it is not complete. `from` is where the previous search stopped.
fn find_header_end(buf: &[u8], from: &mut usize) -> Option<usize> {
    while let Some(offset) = buf.get(*from..)?.iter().position(|&b| b == b'\n') {
        let nl = *from + offset;
        match &buf[nl + 1..] {
            [b'\n', ..] => return Some(nl + 2),
            [b'\r', b'\n', ..] => return Some(nl + 3),
            [] | [b'\r'] => {
                *from = nl;
                return None;
            }
            _ => *from = nl + 1,
        }
    }
    *from = buf.len();
    None
}

/// Values of the header `name` in a raw (possibly invalid) header block, trimmed. The start
/// line and continuation lines are ignored.
fn raw_header<'a>(block: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    block
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(move |line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (key, value) = line.split_at(colon);
            key.trim_ascii_end()
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| value[1..].trim_ascii())
        })
}

fn raw_cseq(block: &[u8]) -> Option<u32> {
    let value = raw_header(block, "CSeq").next()?;
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The first `Content-Length`, as `rtsp-types` does; 0 if absent.
fn raw_content_length(block: &[u8]) -> Result<usize, String> {
    let Some(value) = raw_header(block, "Content-Length").next() else {
        return Ok(0);
    };
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "invalid Content-Length {:?}",
            String::from_utf8_lossy(value)
        ));
    }
    // Only digits: parsing fails on overflow only, which is too large anyway.
    Ok(std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX))
}

/// Parses one complete message: `header_len` bytes of headers then the whole body.
fn parse_message(msg: &[u8], header_len: usize) -> Result<Frame, String> {
    let (header, body) = msg.split_at(header_len.min(msg.len()));
    let normalized;
    let data = if header.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') {
        normalized = [crlf_line_endings(header).as_slice(), body].concat();
        &normalized[..]
    } else {
        msg
    };
    match Message::<Vec<u8>>::parse(data) {
        Ok((_, consumed)) if consumed != data.len() => Err(format!(
            "message length mismatch ({consumed} != {})",
            data.len()
        )),
        Ok((Message::Request(req), _)) => Ok(Frame::Request(req)),
        Ok((Message::Response(resp), _)) => Ok(Frame::Response(resp)),
        Ok((Message::Data(_), _)) => Err("unexpected interleaved frame".into()),
        Err(_) => {
            let first_line = header.split(|&b| b == b'\n').next().unwrap_or_default();
            let first_line = String::from_utf8_lossy(&first_line[..first_line.len().min(100)]);
            Err(format!(
                "cannot parse message starting with {:?}",
                first_line.trim_end()
            ))
        }
    }
}

fn crlf_line_endings(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + 32);
    let mut prev = 0;
    for &b in header {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// `msg`, with a `Content-Length` header matching `body`: its length when non-empty, none (or
/// `0`) otherwise. Cloned only when the header needs fixing.
fn with_content_length<'a, M>(msg: &'a M, body: &[u8]) -> Cow<'a, M>
where
    M: Clone + AsRef<Headers> + AsMut<Headers>,
{
    let expected = (!body.is_empty()).then(|| body.len().to_string());
    let current = msg.as_ref().get(&CONTENT_LENGTH).map(|v| v.as_str().trim());
    let correct = match (&expected, current) {
        (None, None | Some("0")) => true,
        (Some(expected), Some(current)) => expected == current,
        _ => false,
    };
    if correct {
        return Cow::Borrowed(msg);
    }
    let mut msg = msg.clone();
    match expected {
        Some(len) => msg.as_mut().insert(CONTENT_LENGTH, len),
        None => msg.as_mut().remove(&CONTENT_LENGTH),
    }
    Cow::Owned(msg)
}

/// Serialises a response (status line, headers, body) into `out`. Sets Content-Length from the
/// body when non-empty (and drops a stale one when it is empty).
pub fn encode_response(resp: &rtsp_types::Response<Vec<u8>>, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = with_content_length(resp, resp.body()).write(out);
}

/// As [`encode_response`], with one `name` header line per value (rtsp-types would join them
/// into one; RFC 7235 4.1 wants one `WWW-Authenticate` per challenge for many clients).
pub fn encode_response_with(
    resp: &rtsp_types::Response<Vec<u8>>,
    name: &rtsp_types::HeaderName,
    values: &[String],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    encode_response(resp, out);
    if values.is_empty() {
        return;
    }
    let Some(end) = out[start..].windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let lines: Vec<u8> = values
        .iter()
        .flat_map(|v| format!("{name}: {v}\r\n").into_bytes())
        .collect();
    let at = start + end + 2;
    out.splice(at..at, lines);
}

/// Serialises a request (request line, headers, body) into `out`. Sets Content-Length from the
/// body when non-empty (and drops a stale one when it is empty).
pub fn encode_request(req: &rtsp_types::Request<Vec<u8>>, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = with_content_length(req, req.body()).write(out);
}

/// The 4-byte interleaved header: `$`, channel, big-endian length (RFC 2326 section 10.12).
pub fn interleaved_header(channel: u8, len: u16) -> [u8; 4] {
    let [hi, lo] = len.to_be_bytes();
    [b'$', channel, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtsp_types::{Method, StatusCode, Version, headers::CSEQ};

    const OPTIONS: &[u8] = b"OPTIONS rtsp://127.0.0.1:8554/test RTSP/1.0\r\nCSeq: 1\r\n\
        User-Agent: Lavf61.7.100\r\n\r\n";
    const SET_PARAMETER: &[u8] = b"SET_PARAMETER rtsp://127.0.0.1:8554/test RTSP/1.0\r\n\
        CSeq: 2\r\nContent-Type: text/parameters\r\nContent-Length: 10\r\n\r\nfoo: bar\r\n";

    /// Decodes until more data is needed; panics on errors.
    fn drain(dec: &mut Decoder) -> Vec<Frame> {
        std::iter::from_fn(|| dec.decode().unwrap()).collect()
    }

    fn decode_all(input: &[u8]) -> Vec<Frame> {
        let mut dec = Decoder::default();
        dec.extend(input);
        drain(&mut dec)
    }

    fn request(frame: &Frame) -> &rtsp_types::Request<Vec<u8>> {
        match frame {
            Frame::Request(req) => req,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn cseq(frame: &Frame) -> &str {
        request(frame).header(&CSEQ).unwrap().as_str()
    }

    /// A stream of two requests (one with a body), two interleaved frames and a response.
    fn mixed_stream() -> Vec<u8> {
        let mut input = OPTIONS.to_vec();
        input.extend(interleaved_header(0, 3));
        input.extend([1, 2, 3]);
        input.extend(SET_PARAMETER);
        input.extend(interleaved_header(1, 0));
        input.extend(b"RTSP/1.0 200 OK\r\nCSeq: 5\r\nContent-Length: 4\r\n\r\nv=0\n");
        input
    }

    fn check_mixed(frames: &[Frame]) {
        assert_eq!(frames.len(), 5, "{frames:?}");
        assert_eq!(request(&frames[0]).method(), Method::Options);
        assert_eq!(cseq(&frames[0]), "1");
        assert!(
            matches!(&frames[1], Frame::Interleaved { channel: 0, data } if data[..] == [1, 2, 3])
        );
        assert_eq!(request(&frames[2]).method(), Method::SetParameter);
        assert_eq!(request(&frames[2]).body(), b"foo: bar\r\n");
        assert!(matches!(&frames[3], Frame::Interleaved { channel: 1, data } if data.is_empty()));
        let Frame::Response(resp) = &frames[4] else {
            panic!("expected a response, got {:?}", frames[4]);
        };
        assert_eq!(resp.status(), StatusCode::Ok);
        assert_eq!(resp.body(), b"v=0\n");
    }

    #[test]
    fn one_buffer_with_several_frames() {
        let input = mixed_stream();
        let mut dec = Decoder::default();
        dec.extend(&input);
        check_mixed(&drain(&mut dec));
        assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn byte_by_byte() {
        let mut dec = Decoder::default();
        let mut frames = Vec::new();
        for &b in &mixed_stream() {
            dec.extend(&[b]);
            frames.extend(drain(&mut dec));
        }
        check_mixed(&frames);
    }

    #[test]
    fn split_at_every_position() {
        let input = mixed_stream();
        for split in 0..=input.len() {
            let mut dec = Decoder::default();
            dec.extend(&input[..split]);
            let mut frames = drain(&mut dec);
            dec.extend(&input[split..]);
            frames.extend(drain(&mut dec));
            check_mixed(&frames);
        }
    }

    #[test]
    fn tolerated_variants() {
        // Blank lines between messages, bare LF line endings, unknown method, RTSP 2.0.
        let frames = decode_all(
            b"\r\n\r\nOPTIONS * RTSP/1.0\nCSeq: 3\n\n\
              \r\nFOO rtsp://x RTSP/1.0\r\nCSeq: 4\r\n\r\n\
              OPTIONS * RTSP/2.0\r\nCSeq: 5\r\n\r\n\
              ANNOUNCE rtsp://x/y RTSP/1.0\nCSeq: 6\nContent-Length: 3\n\nv=0",
        );
        assert_eq!(frames.len(), 4);
        assert_eq!(request(&frames[0]).request_uri(), None);
        assert_eq!(cseq(&frames[0]), "3");
        assert_eq!(
            request(&frames[1]).method(),
            Method::Extension("FOO".into())
        );
        assert_eq!(request(&frames[2]).version(), Version::V2_0);
        assert_eq!(request(&frames[3]).body(), b"v=0");
    }

    #[test]
    fn malformed_is_skipped_with_its_body() {
        let mut dec = Decoder::default();
        dec.extend(
            b"PLAY rtsp://x/ RTSP/1.0\r\nCSeq: 7\r\nthis is not a header\r\n\
              Content-Length: 4\r\n\r\nbody",
        );
        dec.extend(OPTIONS);
        let err = dec.decode().unwrap_err();
        assert_eq!(err.cseq(), Some(7));
        assert!(!err.is_fatal());
        assert!(matches!(err, DecodeError::Malformed { .. }));
        let frames = drain(&mut dec);
        assert_eq!(frames.len(), 1);
        assert_eq!(cseq(&frames[0]), "1");
    }

    #[test]
    fn malformed_variants_resync() {
        for (bad, cseq) in [
            // Not RTSP at all.
            (&b"GARBAGE\r\n\r\n"[..], None),
            // Unsupported version, lower-case CSeq.
            (b"OPTIONS * HTTP/1.1\r\ncseq: 8\r\n\r\n", Some(8)),
            // Invalid URI.
            (
                b"DESCRIBE rtsp://[::1 RTSP/1.0\r\nCSeq : 9\r\n\r\n",
                Some(9),
            ),
            // Unreadable Content-Length: only the headers are skipped.
            (
                b"SETUP rtsp://x/ RTSP/1.0\r\nCSeq: 10\r\nContent-Length: -1\r\n\r\n",
                Some(10),
            ),
            // Non-UTF-8 header.
            (
                b"OPTIONS * RTSP/1.0\r\nCSeq: 11\r\nX: \xff\r\n\r\n",
                Some(11),
            ),
        ] {
            let mut dec = Decoder::default();
            dec.extend(bad);
            dec.extend(OPTIONS);
            let err = dec.decode().unwrap_err();
            assert!(
                matches!(&err, DecodeError::Malformed { cseq: c, .. } if *c == cseq),
                "{err:?}"
            );
            let frames = drain(&mut dec);
            assert_eq!(frames.len(), 1, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(dec.buffered_len(), 0);
        }
    }

    #[test]
    fn header_too_large_is_fatal() {
        let limits = Limits {
            max_header_bytes: 64,
            ..Limits::default()
        };
        let mut dec = Decoder::new(limits);
        dec.extend(b"OPTIONS * RTSP/1.0\r\nCSeq: 12\r\nX-Long: ");
        assert!(dec.decode().unwrap().is_none());
        dec.extend(&[b'a'; 64]);
        let err = dec.decode().unwrap_err();
        assert_eq!(err, DecodeError::HeaderTooLarge { cseq: Some(12) });
        assert!(err.is_fatal());
        // Sticky, even once valid data follows.
        dec.extend(b"\r\n\r\n");
        dec.extend(OPTIONS);
        assert_eq!(dec.decode().unwrap_err(), err);

        // A header block exactly at the limit is fine.
        let mut dec = Decoder::new(Limits {
            max_header_bytes: OPTIONS.len(),
            ..limits
        });
        dec.extend(OPTIONS);
        assert_eq!(drain(&mut dec).len(), 1);
    }

    #[test]
    fn body_too_large_is_fatal() {
        let mut dec = Decoder::new(Limits {
            max_body_bytes: 9,
            ..Limits::default()
        });
        dec.extend(SET_PARAMETER);
        let err = dec.decode().unwrap_err();
        assert_eq!(err, DecodeError::BodyTooLarge { cseq: Some(2) });
        assert!(err.is_fatal());
        assert_eq!(dec.decode().unwrap_err(), err);

        let mut dec = Decoder::default();
        dec.extend(b"ANNOUNCE rtsp://x/ RTSP/1.0\r\nCSeq: 3\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert_eq!(
            dec.decode().unwrap_err(),
            DecodeError::BodyTooLarge { cseq: Some(3) }
        );
    }

    /// Random bytes, with some RTSP-looking pieces mixed in: no panic, no endless wait.
    #[test]
    fn garbage_never_hangs() {
        let limits = Limits {
            max_header_bytes: 512,
            max_body_bytes: 4096,
        };
        let pieces: [&[u8]; 6] = [
            b"\r\n",
            b"\n\n",
            b"$",
            b"RTSP/1.0 ",
            OPTIONS,
            b"Content-Length: 12\r\n",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut frames, mut malformed, mut fatal) = (0, 0, 0);
        for _ in 0..200 {
            let mut dec = Decoder::new(limits);
            'stream: for _ in 0..200 {
                let r = next();
                if r % 4 == 0 {
                    dec.extend(pieces[(r >> 8) as usize % pieces.len()]);
                } else {
                    let chunk: Vec<u8> = (0..(r >> 8) % 64).map(|_| next() as u8).collect();
                    dec.extend(&chunk);
                }
                loop {
                    let before = dec.buffered_len();
                    match dec.decode() {
                        Ok(Some(_)) => frames += 1,
                        Err(DecodeError::Malformed { .. }) => malformed += 1,
                        Ok(None) => break,
                        Err(_) => {
                            fatal += 1;
                            break 'stream;
                        }
                    }
                    assert!(dec.buffered_len() < before, "no progress");
                }
                // Waiting is bounded by the largest frame the limits allow.
                assert!(dec.buffered_len() <= 4 + 65535 + limits.max_header_bytes + 4096);
            }
        }
        // All outcomes were exercised.
        assert!(
            frames > 0 && malformed > 0 && fatal > 0,
            "{frames} {malformed} {fatal}"
        );
    }

    #[test]
    fn encode_sets_content_length() {
        let resp = rtsp_types::Response::builder(Version::V1_0, StatusCode::Ok)
            .header(CSEQ, "3")
            .build(Vec::new())
            .map_body(|_| b"v=0\r\n".to_vec());
        let mut out = Vec::new();
        encode_response(&resp, &mut out);
        assert!(out.ends_with(b"Content-Length: 5\r\nCSeq: 3\r\n\r\nv=0\r\n"));
        let frames = decode_all(&out);
        let [Frame::Response(decoded)] = &frames[..] else {
            panic!("{frames:?}");
        };
        assert_eq!(decoded, &resp);

        // A stale Content-Length on an empty body is dropped.
        let mut req = rtsp_types::Request::builder(Method::Options, Version::V1_0)
            .header(CSEQ, "4")
            .build(Vec::new());
        req.insert_header(CONTENT_LENGTH, "12");
        let mut out = Vec::new();
        encode_request(&req, &mut out);
        assert_eq!(out, b"OPTIONS * RTSP/1.0\r\nCSeq: 4\r\n\r\n");
    }

    #[test]
    fn interleaved_header_layout() {
        assert_eq!(interleaved_header(3, 0x1234), [b'$', 3, 0x12, 0x34]);
    }

    #[test]
    fn repeated_headers_get_one_line_each() {
        let resp = rtsp_types::Response::builder(Version::V1_0, StatusCode::Unauthorized)
            .header(CSEQ, "3")
            .build(Vec::new());
        let mut out = b"before".to_vec();
        let values = [
            "Digest realm=\"r\", nonce=\"n\"".to_owned(),
            "Basic realm=\"r\"".to_owned(),
        ];
        encode_response_with(
            &resp,
            &rtsp_types::headers::WWW_AUTHENTICATE,
            &values,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "beforeRTSP/1.0 401 Unauthorized\r\nCSeq: 3\r\n\
             WWW-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\n\
             WWW-Authenticate: Basic realm=\"r\"\r\n\r\n"
        );
    }
}
