//! RTMPT: RTMP tunnelled through HTTP/1.1 POST requests, both sides.
//!
//! The client opens a session with `POST /open/1` (the answer's body is the session id and a
//! newline), then carries the RTMP byte stream in the bodies of `POST /send/ID/SEQ` and collects
//! the server's bytes from the answers; with nothing to send it polls with `POST /idle/ID/SEQ`
//! and ends with `POST /close/ID/SEQ`. Every answer but open's starts with one byte, the
//! polling interval the server suggests; the rest is RTMP. Content type `application/x-fcs`.
//! Flash also asks `POST /fcs/ident2` first (answered 404 here, as servers without an edge do).
//!
//! This module has the framing (parsing requests and answers, writing them), the server's
//! per-session state (the bytes waiting for the next answer) and the client's pump, which runs
//! the tunnel for a byte stream that the publisher's core reads and writes as if it were a
//! socket. The RTMP inside is the same sans-I/O core as over TCP.
//!
//! Specifications: RTMPT has none published; this follows what librtmp (rtmp.c `HTTP_Post`,
//! `HTTP_read`) and FFmpeg (libavformat/rtmphttp.c) send and expect, and Red5's RTMPT servlet for
//! the polling byte. HTTP/1.1: RFC 9112 (message framing), RFC 9110 (status codes).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// The request head's size limit (the request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers in a request or answer at most.
const MAX_HEADERS: usize = 32;
/// The content type of every RTMPT request and answer.
pub const CONTENT_TYPE: &str = "application/x-fcs";

/// What a tunnel request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `POST /fcs/ident2` (Flash's probe for an edge server).
    Ident,
    /// `POST /open/1`: a new session.
    Open,
    /// `POST /send/ID/SEQ`: RTMP bytes for session ID.
    Send { session: String, seq: u64 },
    /// `POST /idle/ID/SEQ`: a poll.
    Idle { session: String, seq: u64 },
    /// `POST /close/ID/SEQ`: the end of the session.
    Close { session: String, seq: u64 },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ident => "ident2",
            Command::Open => "open",
            Command::Send { .. } => "send",
            Command::Idle { .. } => "idle",
            Command::Close { .. } => "close",
        }
    }

    pub fn session(&self) -> Option<&str> {
        match self {
            Command::Send { session, .. }
            | Command::Idle { session, .. }
            | Command::Close { session, .. } => Some(session),
            _ => None,
        }
    }
}

/// A request the server cannot take. The HTTP status it is answered with: [`RequestError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed HTTP request: {0}")]
    Malformed(httparse::Error),
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("method {0} (RTMPT uses POST)")]
    Method(String),
    #[error("path is no RTMPT command ({len} bytes)")]
    Path { len: usize },
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding is not supported (RTMPT clients send Content-Length)")]
    TransferEncoding,
    #[error("body of {len} bytes (at most {max})")]
    BodyTooLarge { len: u64, max: usize },
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::HeadTooLarge => 431,
            RequestError::Method(_) => 405,
            RequestError::Path { .. } => 404,
            RequestError::TransferEncoding => 501,
            RequestError::BodyTooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub content_length: usize,
    /// The client asked to close the connection after the answer.
    pub close: bool,
    /// The head's length in bytes (the body follows).
    pub head_len: usize,
}

/// Parses a request head from the start of `buf`: `Ok(None)` while incomplete. The body may be
/// at most `max_body` bytes.
pub fn parse_request(buf: &[u8], max_body: usize) -> Result<Option<Request>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(RequestError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(e) => return Err(RequestError::Malformed(e)),
    };
    if head_len > MAX_HEAD {
        return Err(RequestError::HeadTooLarge);
    }
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let mut content_length: Option<u64> = None;
    let mut close = req.version == Some(0);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(RequestError::ContentLength)?;
            if content_length.is_some_and(|c| c != v) {
                return Err(RequestError::ContentLength);
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::TransferEncoding);
        } else if h.name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    if method != "POST" {
        return Err(RequestError::Method(method.chars().take(16).collect()));
    }
    let command = parse_path(path).ok_or(RequestError::Path { len: path.len() })?;
    let len = content_length.unwrap_or(0);
    if len > max_body as u64 {
        return Err(RequestError::BodyTooLarge { len, max: max_body });
    }
    Ok(Some(Request {
        command,
        content_length: len as usize,
        close,
        head_len,
    }))
}

fn parse_path(path: &str) -> Option<Command> {
    // Some clients send an absolute URI; only the path counts, never a query.
    let path = match path.find("://") {
        Some(i) => &path[i + 3..][path[i + 3..].find('/')?..],
        None => path,
    };
    let mut parts = path.strip_prefix('/')?.split('/');
    let cmd = parts.next()?;
    let (a, b, rest) = (parts.next(), parts.next(), parts.next());
    if rest.is_some() {
        return None;
    }
    let session_ok =
        |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_alphanumeric());
    let with_session = |session: Option<&str>, seq: Option<&str>| {
        let session = session.filter(|s| session_ok(s))?.to_owned();
        let seq = seq?.parse::<u64>().ok()?;
        Some((session, seq))
    };
    match cmd {
        "fcs" if a == Some("ident2") && b.is_none() => Some(Command::Ident),
        "open" if a.is_some_and(|a| a.parse::<u64>().is_ok()) && b.is_none() => Some(Command::Open),
        "send" => with_session(a, b).map(|(session, seq)| Command::Send { session, seq }),
        "idle" => with_session(a, b).map(|(session, seq)| Command::Idle { session, seq }),
        "close" => with_session(a, b).map(|(session, seq)| Command::Close { session, seq }),
        _ => None,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// An answer: the status line and headers librtmp's parser needs (it wants exactly
/// `HTTP/1.1 200 ` and a `Content-Length:`), then `polling` (if any) and `body`.
pub fn response(status: u16, polling: Option<u8>, body: &[u8], close: bool) -> Vec<u8> {
    let len = body.len() + usize::from(polling.is_some());
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: gst-livestreaming\r\nContent-Type: {CONTENT_TYPE}\r\n\
         Content-Length: {len}\r\nCache-Control: no-cache\r\nConnection: {}\r\n\r\n",
        reason(status),
        if close { "close" } else { "Keep-Alive" }
    )
    .into_bytes();
    out.reserve(len);
    out.extend(polling);
    out.extend_from_slice(body);
    out
}

/// The polling interval byte of an answer: 1 with data; growing with each empty answer in a row
/// up to 0x21, as Red5 does (clients that honour it poll less often when nothing happens).
pub fn polling_byte(empty_in_a_row: u32) -> u8 {
    u8::try_from(empty_in_a_row.saturating_add(1).min(0x21)).unwrap_or(0x21)
}

/// A new session id: 128 random bits in hex (unguessable; it is the session's only credential).
pub fn new_session_id() -> String {
    use rand::RngExt;
    let mut b = [0u8; 16];
    rand::rng().fill(&mut b[..]);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The client side could not run the tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("HTTP {context}: {kind}")]
    Io {
        context: &'static str,
        kind: std::io::ErrorKind,
    },
    #[error("the server closed the connection during {0}")]
    Closed(&'static str),
    #[error("no answer to {0} within the timeout")]
    Timeout(&'static str),
    #[error("answer to {0} is no HTTP ({1})")]
    Malformed(&'static str, httparse::Error),
    #[error("answer to {command} has status {status}")]
    Status { command: &'static str, status: u16 },
    #[error("answer to {0} has no usable Content-Length")]
    ContentLength(&'static str),
    #[error("answer to open has no session id")]
    NoSession,
}

/// The client's HTTP connection to the tunnel server.
pub struct ClientTunnel<S> {
    stream: S,
    host: String,
    session: String,
    seq: u64,
    buf: Vec<u8>,
    timeout: Duration,
    name: String,
}

/// Answers carry a body of at most this (a server's RTMP output; the core limits messages).
const MAX_ANSWER_BODY: usize = 16 * 1024 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin> ClientTunnel<S> {
    /// Opens a session (`POST /open/1`) over `stream`; `host` is the Host header's value.
    pub async fn open(
        stream: S,
        host: String,
        timeout: Duration,
        name: String,
    ) -> Result<Self, TunnelError> {
        let mut t = ClientTunnel {
            stream,
            host,
            session: String::new(),
            seq: 0,
            buf: Vec::new(),
            timeout,
            name,
        };
        let body = t.exchange("open", b"\0").await?;
        let id = std::str::from_utf8(&body)
            .map(str::trim)
            .unwrap_or_default()
            .to_owned();
        if id.is_empty() || !id.bytes().all(|c| c.is_ascii_graphic()) || id.len() > 256 {
            return Err(TunnelError::NoSession);
        }
        log_id!(
            debug,
            &t.name,
            "RTMPT session opened ({} character id)",
            id.len()
        );
        t.session = id;
        Ok(t)
    }

    /// One request and its answer; the answer's body.
    async fn exchange(
        &mut self,
        command: &'static str,
        body: &[u8],
    ) -> Result<Vec<u8>, TunnelError> {
        let path = if command == "open" {
            "/open/1".to_owned()
        } else {
            self.seq += 1;
            format!("/{command}/{}/{}", self.session, self.seq)
        };
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\nUser-Agent: gst-livestreaming\r\n\
             Connection: Keep-Alive\r\nCache-Control: no-cache\r\nContent-Type: {CONTENT_TYPE}\r\n\
             Content-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        log_id!(trace, &self.name, "RTMPT {command}: {} bytes", body.len());
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.stream.write_all(&req))
            .await
            .map_err(|_| TunnelError::Timeout(command))?
            .map_err(|e| TunnelError::Io {
                context: "write",
                kind: e.kind(),
            })?;
        tokio::time::timeout(timeout, self.read_answer(command))
            .await
            .map_err(|_| TunnelError::Timeout(command))?
    }

    async fn read_answer(&mut self, command: &'static str) -> Result<Vec<u8>, TunnelError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let status = resp.code.unwrap_or(0);
                    let len = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .filter(|&l| l <= MAX_ANSWER_BODY)
                        .ok_or(TunnelError::ContentLength(command))?;
                    while self.buf.len() < head + len {
                        self.fill(command).await?;
                    }
                    let body = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    if status != 200 {
                        return Err(TunnelError::Status { command, status });
                    }
                    return Ok(body);
                }
                Ok(httparse::Status::Partial) if self.buf.len() <= MAX_HEAD => {
                    self.fill(command).await?
                }
                Ok(httparse::Status::Partial) => {
                    return Err(TunnelError::Malformed(
                        command,
                        httparse::Error::TooManyHeaders,
                    ));
                }
                Err(e) => return Err(TunnelError::Malformed(command, e)),
            }
        }
    }

    async fn fill(&mut self, command: &'static str) -> Result<(), TunnelError> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| TunnelError::Io {
                context: "read",
                kind: e.kind(),
            })?;
        if n == 0 {
            return Err(TunnelError::Closed(command));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Runs the tunnel for `app`, the other end of the byte stream the RTMP core uses: what the
    /// core writes goes out in `send` requests, answers come back into it; with nothing to send,
    /// polls with `idle` (every 5 ms after traffic, backing off to 200 ms). Ends with `close`
    /// when the core's side closes; on a tunnel failure closes `app` (the core sees the
    /// connection end) and logs why.
    pub async fn pump(mut self, mut app: DuplexStream) {
        let mut out = vec![0u8; 256 * 1024];
        let mut delay = Duration::from_millis(5);
        let result: Result<(), TunnelError> = async {
            loop {
                let n = tokio::select! {
                    r = app.read(&mut out) => match r {
                        Ok(0) | Err(_) => {
                            // The core is done: close the session (best effort).
                            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                                let _ = self.exchange("close", b"\0").await;
                                // Over TLS: close_notify.
                                self.stream.shutdown().await
                            })
                            .await;
                            return Ok(());
                        }
                        Ok(n) => n,
                    },
                    () = tokio::time::sleep(delay) => 0,
                };
                let answer = if n > 0 {
                    self.exchange("send", &out[..n]).await?
                } else {
                    self.exchange("idle", b"\0").await?
                };
                let data = answer.get(1..).unwrap_or_default();
                if data.is_empty() && n == 0 {
                    delay = (delay * 2).min(Duration::from_millis(200));
                } else {
                    delay = Duration::from_millis(5);
                }
                if !data.is_empty() && app.write_all(data).await.is_err() {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = result {
            log_id!(debug, &self.name, "RTMPT tunnel ended: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_librtmp_and_ffmpeg() {
        // librtmp's HTTP_Post.
        let r = b"POST /open/1 HTTP/1.1\r\nHost: 127.0.0.1:1935\r\nAccept: */*\r\nUser-Agent: Shockwave Flash\r\nConnection: Keep-Alive\r\nCache-Control: no-cache\r\nContent-type: application/x-fcs\r\nContent-length: 1\r\n\r\n\0";
        let req = parse_request(r, 100).unwrap().unwrap();
        assert_eq!(req.command, Command::Open);
        assert_eq!(req.content_length, 1);
        assert_eq!(req.head_len, r.len() - 1);
        assert!(!req.close);
        let r = b"POST /send/0a1b/7 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(
            parse_request(r, 100).unwrap().unwrap().command,
            Command::Send {
                session: "0a1b".into(),
                seq: 7
            }
        );
        let r = b"POST /idle/x/0 HTTP/1.1\r\nConnection: close\r\n\r\n";
        let req = parse_request(r, 100).unwrap().unwrap();
        assert!(req.close);
        assert_eq!(req.content_length, 0);
        assert_eq!(
            parse_request(b"POST /fcs/ident2 HTTP/1.1\r\n\r\n", 1)
                .unwrap()
                .unwrap()
                .command,
            Command::Ident
        );
        assert_eq!(
            parse_request(b"POST /close/abc/2 HTTP/1.1\r\n\r\n", 1)
                .unwrap()
                .unwrap()
                .command,
            Command::Close {
                session: "abc".into(),
                seq: 2
            }
        );
        // Incomplete.
        assert_eq!(
            parse_request(b"POST /open/1 HTTP/1.1\r\nHost:", 1),
            Ok(None)
        );
    }

    #[test]
    fn refused_requests() {
        let st = |r: &[u8]| parse_request(r, 100).unwrap_err().status();
        assert_eq!(st(b"GET /open/1 HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(st(b"POST /send/abc HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(st(b"POST /send/a-b/1 HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(st(b"POST /send/ab/x HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(st(b"POST /send/ab/1/2 HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(st(b"POST /etc/passwd HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(
            st(b"POST /open/1 HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
            413
        );
        assert_eq!(
            st(b"POST /open/1 HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            st(b"POST /open/1 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            st(b"POST /open/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(st(b"\x00\x01garbage\r\n\r\n"), 400);
        let mut big = b"POST /open/1 HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(st(&big), 431);
    }

    #[test]
    fn answers_parse_as_librtmp_expects() {
        let a = response(200, Some(1), b"xyz", false);
        let s = String::from_utf8_lossy(&a);
        assert!(s.starts_with("HTTP/1.1 200 "));
        assert!(s.contains("Content-Length: 4\r\n"));
        assert!(a.ends_with(b"\r\n\r\n\x01xyz"));
        assert_eq!(polling_byte(0), 1);
        assert_eq!(polling_byte(1000), 0x21);
        let id = new_session_id();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_session_id());
    }

    #[tokio::test]
    async fn client_against_a_scripted_server() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let next = |buf: &mut Vec<u8>| -> Option<(Request, Vec<u8>)> {
                let req = parse_request(buf, 1 << 20).unwrap()?;
                let end = req.head_len + req.content_length;
                if buf.len() < end {
                    return None;
                }
                let body = buf[req.head_len..end].to_vec();
                buf.drain(..end);
                Some((req, body))
            };
            let mut seen = Vec::new();
            loop {
                let (req, body) = loop {
                    if let Some(r) = next(&mut buf) {
                        break r;
                    }
                    let n = server.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return seen;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                };
                let answer = match &req.command {
                    Command::Open => response(200, None, b"s1\n", false),
                    Command::Send { session, .. } => {
                        assert_eq!(session, "s1");
                        seen.extend_from_slice(&body);
                        response(200, Some(1), b"pong", false)
                    }
                    Command::Idle { .. } => response(200, Some(5), b"", false),
                    Command::Close { .. } => {
                        server
                            .write_all(&response(200, Some(0), b"", true))
                            .await
                            .unwrap();
                        return seen;
                    }
                    Command::Ident => unreachable!(),
                };
                server.write_all(&answer).await.unwrap();
            }
        });
        let t = ClientTunnel::open(client, "h:1".into(), Duration::from_secs(5), String::new())
            .await
            .unwrap();
        let (mut core, app) = tokio::io::duplex(64 * 1024);
        let pump = tokio::spawn(t.pump(app));
        core.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), core.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"pong");
        drop(core);
        tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(srv.await.unwrap(), b"ping");
    }
}
