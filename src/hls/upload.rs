//! Upload to an HTTP(S) origin (nginx WebDAV, any server taking PUT and DELETE), and the HTTP/1.1
//! client the S3 store ([`super::s3`]) sends its signed requests with.
//!
//! Specifications: RFC 9110 §9.3.4 (PUT), §9.3.5 (DELETE), §9.2.2 (idempotent methods), §15
//! (status codes); RFC 6585 §4 (429); RFC 9112 (HTTP/1.1 messages: §6 message body length, §7.1
//! chunked transfer coding, §9.3 persistent connections, §9.3.1 retrying requests); TLS 1.2/1.3
//! (RFC 5246, RFC 8446) by rustls.
//!
//! The output worker thread sends one request at a time with bounded connect/read/write times
//! and retries failures with backoff. Connection errors, timeouts, 408, 429 and 5xx are retried;
//! other 4xx answers to PUT (403, 405, 413, ...) and TLS failures (an untrusted certificate) mean
//! the origin will never take the files and stop the output with an error. https uses rustls with
//! the ring provider, trusting the system's CAs (loaded once per process by [`crate::net::tls`],
//! as rsrtmpsink does) and optionally the CAs of a PEM file.
//!
//! Connections are kept alive (RFC 9112 §9.3): each answer is read whole (Content-Length or
//! chunked), and the connection goes back to a small pool (one per origin, [`POOL_SIZE`] origins,
//! closed after [`POOL_IDLE`] unused) unless the server said `Connection: close`, answered
//! without a length, or sent a body larger than [`BODY_LIMIT`]. Before a kept connection is used
//! it is checked for a close the server already sent; a server may still close it while the
//! request is on its way. A request on a reused connection that gets no answer byte because the
//! connection was closed (EOF, reset, broken pipe) is sent once more on a new connection at once,
//! which the caller never sees as a failure: PUT and DELETE are idempotent (RFC 9110 §9.2.2,
//! RFC 9112 §9.3.1). A timeout is no such close and is reported.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::net::tls::CaFileError;

use super::store::{FileKind, Store, StoreError};

/// Origins whose idle connection is kept.
pub const POOL_SIZE: usize = 4;
/// A kept connection unused this long is closed rather than reused.
pub const POOL_IDLE: Duration = Duration::from_secs(30);
/// Bytes of an answer's body read at most to keep its connection; past that the connection is
/// closed. The first [`BODY_KEPT`] bytes are kept (an S3 error document).
pub const BODY_LIMIT: u64 = 1024 * 1024;
pub const BODY_KEPT: usize = 64 * 1024;
/// An answer's head (status line and headers) at most.
const HEAD_LIMIT: usize = 64 * 1024;

/// What a connection is to: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// An open connection.
struct Conn {
    origin: Origin,
    stream: Box<dyn Stream>,
    /// The TCP socket under `stream` (the same socket), to look for a close while idle.
    tcp: TcpStream,
    idle_since: Instant,
    /// Requests answered on it so far.
    answered: u32,
}

impl Conn {
    /// Whether an idle connection can take another request: the server has sent nothing (no
    /// FIN, no TLS close_notify, no stray bytes) and it has not been idle too long.
    fn usable(&self) -> bool {
        if self.idle_since.elapsed() > POOL_IDLE {
            return false;
        }
        if self.tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let quiet =
            matches!(self.tcp.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        self.tcp.set_nonblocking(false).is_ok() && quiet
    }
}

/// An answer: its status and the first [`BODY_KEPT`] bytes of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request. `shown` names it in logs and errors (never the URL when it carries a signature).
pub struct Request<'a> {
    pub method: &'static str,
    pub url: &'a url::Url,
    pub shown: &'a str,
    /// Besides Host, User-Agent and Content-Length.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

pub struct HttpStore {
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub user_agent: String,
    tls: Arc<rustls::ClientConfig>,
    pool: Mutex<Vec<Conn>>,
    /// Connections opened so far.
    opened: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for HttpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStore")
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

impl Default for HttpStore {
    fn default() -> Self {
        HttpStore::new(None).expect("without a CA file the TLS set-up cannot fail")
    }
}

/// Why an upload store cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("bad CA certificate in {path}: {message}")]
    BadCertificate { path: String, message: String },
    #[error("no certificate in CA file {path}")]
    NoCertificate { path: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

pub use super::location::redact_location;

/// TLS client configuration: the system's CAs (as rsrtmpsink and GStreamer's own TLS elements
/// trust) plus the certificates in `ca_file`.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsSetupError> {
    let roots = crate::net::tls::roots_with_ca_file(ca_file).map_err(|e| match e {
        CaFileError::Read { path, source } => TlsSetupError::CaFile {
            path: path.display().to_string(),
            message: source.to_string(),
        },
        CaFileError::Pem { path, source } => TlsSetupError::CaFile {
            path: path.display().to_string(),
            message: source.to_string(),
        },
        CaFileError::Certificate { path, source } => TlsSetupError::BadCertificate {
            path: path.display().to_string(),
            message: source.to_string(),
        },
        CaFileError::Empty { path } => TlsSetupError::NoCertificate {
            path: path.display().to_string(),
        },
    })?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

impl HttpStore {
    /// A store for http:// and https:// origins; https trusts `ca_file` besides the system's CAs.
    pub fn new(ca_file: Option<&Path>) -> Result<HttpStore, TlsSetupError> {
        Ok(HttpStore {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(20),
            user_agent: format!("gst-plugin-livestreaming/{}", env!("CARGO_PKG_VERSION")),
            tls: Arc::new(tls_config(ca_file)?),
            pool: Mutex::new(Vec::new()),
            opened: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Connections opened so far (each request without a kept connection opens one).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// I/O errors from rustls that carry a TLS error (bad certificate, handshake failure) will not
/// go away by retrying.
fn io_error(method: &'static str, shown: &str, e: &std::io::Error) -> StoreError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some();
    if tls {
        StoreError::Tls {
            method,
            location: redact_location(shown).into_owned(),
            message: e.to_string(),
        }
    } else {
        StoreError::Network {
            method,
            location: redact_location(shown).into_owned(),
            kind: Some(e.kind()),
            message: e.to_string(),
        }
    }
}

fn net_error(method: &'static str, shown: &str, message: impl Into<String>) -> StoreError {
    StoreError::Network {
        method,
        location: redact_location(shown).into_owned(),
        kind: None,
        message: message.into(),
    }
}

/// How an exchange on a connection failed.
enum Failure {
    /// The connection was closed (EOF, reset, broken pipe) before any byte of an answer: on a
    /// reused connection, the server had closed it; the request can be sent again.
    Closed(StoreError),
    Other(StoreError),
}

impl Failure {
    fn error(self) -> StoreError {
        match self {
            Failure::Closed(e) | Failure::Other(e) => e,
        }
    }
}

fn is_close(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | NotConnected
    )
}

/// Reads an answer from a connection, buffering what it has read past the part asked for.
struct Incoming<'a> {
    stream: &'a mut dyn Stream,
    buf: Vec<u8>,
    /// Bytes read from the connection so far.
    received: u64,
}

impl Incoming<'_> {
    /// Reads more into `buf`; 0 at the end of the connection.
    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        self.received += n as u64;
        Ok(n)
    }

    /// A CRLF-terminated line (without it), at most 4 KiB.
    fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > 4096 {
                return Err("chunk line too long".into());
            }
            match self.fill() {
                Ok(0) => return Err("connection closed in the body".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Takes `n` body bytes, keeping up to [`BODY_KEPT`] of the body in `kept`.
    fn take(&mut self, mut n: u64, kept: &mut Vec<u8>) -> Result<(), String> {
        while n > 0 {
            if self.buf.is_empty() {
                match self.fill() {
                    Ok(0) => return Err("connection closed in the body".into()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            let k = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
            let room = BODY_KEPT.saturating_sub(kept.len()).min(k);
            kept.extend_from_slice(&self.buf[..room]);
            self.buf.drain(..k);
            n -= k as u64;
        }
        Ok(())
    }
}

/// The body framing of an answer (RFC 9112 §6.3).
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Reads one final answer (skipping 1xx) and its body. The bool: the connection can carry
/// another request.
fn read_answer(
    stream: &mut dyn Stream,
    method: &'static str,
    shown: &str,
) -> Result<(Response, bool), Failure> {
    let mut inc = Incoming {
        stream,
        buf: Vec::with_capacity(1024),
        received: 0,
    };
    let other = |m: String| Failure::Other(net_error(method, shown, m));
    let (status, framing, mut keep) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&inc.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                log::trace!(
                    "{method} {}: answered {status} {}",
                    redact_location(shown),
                    resp.reason.unwrap_or("")
                );
                let mut close = resp.version != Some(1);
                let mut length = None;
                let mut chunked = false;
                for h in resp.headers.iter() {
                    let value = String::from_utf8_lossy(h.value);
                    let value = value.trim();
                    if h.name.eq_ignore_ascii_case("connection") {
                        close |= value
                            .split(',')
                            .any(|t| t.trim().eq_ignore_ascii_case("close"));
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        match value.parse::<u64>() {
                            Ok(l) if length.is_none_or(|old| old == l) => length = Some(l),
                            _ => return Err(other("bad Content-Length".into())),
                        }
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = value
                            .rsplit(',')
                            .next()
                            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
                    }
                }
                inc.buf.drain(..n);
                if (100..200).contains(&status) {
                    continue;
                }
                let framing = if method == "HEAD" || status == 204 || status == 304 {
                    Framing::None
                } else if chunked {
                    Framing::Chunked
                } else if let Some(l) = length {
                    Framing::Length(l)
                } else {
                    Framing::UntilClose
                };
                break (status, framing, !close);
            }
            Ok(httparse::Status::Partial) if inc.buf.len() < HEAD_LIMIT => {}
            Ok(httparse::Status::Partial) => return Err(other("answer head too large".into())),
            Err(e) => return Err(other(format!("malformed answer: {e}"))),
        }
        let nothing_yet = inc.received == 0;
        match inc.fill() {
            Ok(0) if nothing_yet => {
                return Err(Failure::Closed(net_error(
                    method,
                    shown,
                    "connection closed before an answer",
                )));
            }
            Ok(0) => return Err(other("connection closed in the answer head".into())),
            Ok(_) => {}
            Err(e) if nothing_yet && is_close(e.kind()) => {
                return Err(Failure::Closed(io_error(method, shown, &e)));
            }
            Err(e) => return Err(Failure::Other(io_error(method, shown, &e))),
        }
    };
    let mut body = Vec::new();
    match framing {
        Framing::None => {}
        Framing::Length(l) if l <= BODY_LIMIT => inc.take(l, &mut body).map_err(other)?,
        Framing::Length(_) => keep = false,
        Framing::Chunked => {
            let mut total = 0u64;
            loop {
                let line = inc.line().map_err(other)?;
                let line = String::from_utf8_lossy(&line);
                let size = line.split(';').next().unwrap_or("").trim();
                let size =
                    u64::from_str_radix(size, 16).map_err(|_| other("bad chunk size".into()))?;
                total = total.saturating_add(size);
                if total > BODY_LIMIT {
                    keep = false;
                    break;
                }
                if size == 0 {
                    // Trailer fields up to the empty line.
                    while !inc.line().map_err(other)?.is_empty() {}
                    break;
                }
                inc.take(size, &mut body).map_err(other)?;
                if !inc.line().map_err(other)?.is_empty() {
                    return Err(other("chunk not followed by CRLF".into()));
                }
            }
        }
        Framing::UntilClose => {
            // Read what comes within the limit; the connection cannot be reused anyway.
            keep = false;
            while (inc.received as usize) < HEAD_LIMIT + BODY_LIMIT as usize {
                let room = BODY_KEPT.saturating_sub(body.len()).min(inc.buf.len());
                body.extend_from_slice(&inc.buf[..room]);
                inc.buf.clear();
                match inc.fill() {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }
    // Bytes past the answer: the server is out of step with us.
    if !inc.buf.is_empty() {
        keep = false;
    }
    Ok((Response { status, body }, keep))
}

/// Content-Type of a file: by kind, and for segments by the file name's extension (as the
/// built-in server answers).
pub fn content_type(kind: FileKind, location: &str) -> &'static str {
    match kind {
        FileKind::Playlist => "application/vnd.apple.mpegurl",
        FileKind::Key => "application/octet-stream",
        FileKind::Segment | FileKind::Init | FileKind::Part
            if location.ends_with(".mp4") || location.ends_with(".m4s") =>
        {
            "video/mp4"
        }
        FileKind::Segment | FileKind::Init | FileKind::Part if location.ends_with(".aac") => {
            "audio/aac"
        }
        FileKind::Segment | FileKind::Init | FileKind::Part => "video/mp2t",
    }
}

impl HttpStore {
    fn take_pooled(&self, origin: &Origin) -> Option<Conn> {
        let mut pool = self.pool.lock().unwrap();
        let i = pool.iter().position(|c| c.origin == *origin)?;
        let conn = pool.swap_remove(i);
        if conn.usable() {
            Some(conn)
        } else {
            log::debug!(
                "upload: the kept connection to {origin} was closed by the server or idle for \
                 {} ms: opening a new one",
                conn.idle_since.elapsed().as_millis()
            );
            None
        }
    }

    fn give_back(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut pool = self.pool.lock().unwrap();
        pool.retain(|c| c.origin != conn.origin);
        if pool.len() >= POOL_SIZE {
            pool.remove(0);
        }
        pool.push(conn);
    }

    fn connect(&self, origin: &Origin, req: &Request<'_>) -> Result<Conn, StoreError> {
        let (method, shown) = (req.method, req.shown);
        let addr = (origin.host.trim_matches(['[', ']']), origin.port)
            .to_socket_addrs()
            .map_err(|e| {
                net_error(
                    method,
                    shown,
                    format!("cannot resolve {}: {e}", origin.host),
                )
            })?
            .next()
            .ok_or_else(|| net_error(method, shown, format!("no address for {}", origin.host)))?;
        let net = |e: std::io::Error| io_error(method, shown, &e);
        log::trace!("{method} {}: connecting to {addr}", redact_location(shown));
        let tcp = TcpStream::connect_timeout(&addr, self.connect_timeout).map_err(net)?;
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tcp.set_read_timeout(Some(self.io_timeout)).map_err(net)?;
        tcp.set_write_timeout(Some(self.io_timeout)).map_err(net)?;
        let _ = tcp.set_nodelay(true);
        let handle = tcp.try_clone().map_err(net)?;
        let stream: Box<dyn Stream> = if origin.https {
            // Brackets of an IPv6 literal are not part of the name.
            let name = ServerName::try_from(origin.host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| StoreError::Location {
                    location: redact_location(shown).into_owned(),
                    message: format!("bad TLS name: {e}"),
                })?;
            let conn = rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| {
                StoreError::Tls {
                    method,
                    location: redact_location(shown).into_owned(),
                    message: e.to_string(),
                }
            })?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        } else {
            Box::new(tcp)
        };
        Ok(Conn {
            origin: origin.clone(),
            stream,
            tcp: handle,
            idle_since: Instant::now(),
            answered: 0,
        })
    }

    /// Sends the request on `conn` and reads the answer; a connection that can carry another
    /// request goes back to the pool.
    fn exchange(
        &self,
        mut conn: Conn,
        head: &[u8],
        req: &Request<'_>,
    ) -> Result<Response, Failure> {
        let (method, shown) = (req.method, req.shown);
        let sent = conn
            .stream
            .write_all(head)
            .and_then(|()| conn.stream.write_all(req.body))
            .and_then(|()| conn.stream.flush());
        if let Err(e) = sent {
            let err = io_error(method, shown, &e);
            // A TLS error is no close, whatever its I/O kind.
            return Err(
                if is_close(e.kind()) && !matches!(err, StoreError::Tls { .. }) {
                    Failure::Closed(err)
                } else {
                    Failure::Other(err)
                },
            );
        }
        let (response, keep) = read_answer(conn.stream.as_mut(), method, shown)?;
        conn.answered += 1;
        if keep {
            self.give_back(conn);
        } else {
            log::trace!(
                "connection to {} closed after {} answers",
                conn.origin,
                conn.answered
            );
        }
        Ok(response)
    }

    /// Sends one request, on a kept connection to its origin if there is one, and returns the
    /// answer.
    pub fn send(&self, req: &Request<'_>) -> Result<Response, StoreError> {
        let (method, shown) = (req.method, req.shown);
        let bad = |message: String| StoreError::Location {
            location: redact_location(shown).into_owned(),
            message,
        };
        let https = match req.url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(bad(format!("scheme {other} is not http or https"))),
        };
        let host = req.url.host_str().ok_or_else(|| bad("no host".into()))?;
        let origin = Origin {
            https,
            host: host.to_owned(),
            port: req
                .url
                .port_or_known_default()
                .unwrap_or(if https { 443 } else { 80 }),
        };
        let mut path = req.url.path().to_owned();
        if let Some(q) = req.url.query() {
            path.push('?');
            path.push_str(q);
        }
        let host_header = match req.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {}\r\n\
             Content-Length: {}\r\n",
            self.user_agent,
            req.body.len()
        );
        for (name, value) in req.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        log::trace!(
            "{method} {} ({} bytes)",
            redact_location(shown),
            req.body.len()
        );
        if let Some(conn) = self.take_pooled(&origin) {
            let answered = conn.answered;
            match self.exchange(conn, head.as_bytes(), req) {
                Ok(r) => return Ok(r),
                Err(Failure::Closed(e)) => log::debug!(
                    "upload: {method} {}: the kept connection to {origin} (after {answered} \
                     answers) was closed by the server ({e}); sending again on a new one",
                    redact_location(shown)
                ),
                Err(Failure::Other(e)) => return Err(e),
            }
        }
        let conn = self.connect(&origin, req)?;
        self.exchange(conn, head.as_bytes(), req)
            .map_err(Failure::error)
    }

    /// Sends one request and returns the status code.
    pub fn request(
        &self,
        method: &'static str,
        location: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<u16, StoreError> {
        let url = url::Url::parse(location).map_err(|e| StoreError::Location {
            location: redact_location(location).into_owned(),
            message: format!("invalid URL: {e}"),
        })?;
        let ct;
        let headers: &[(&str, &str)] = match content_type {
            Some(t) => {
                ct = [("Content-Type", t)];
                &ct
            }
            None => &[],
        };
        self.send(&Request {
            method,
            url: &url,
            shown: location,
            headers,
            body,
        })
        .map(|r| r.status)
    }
}

/// The status as a result; whether a failure is worth retrying is [`StoreError::retryable`]'s call
/// (408, 425, 429, 5xx and any refused DELETE are).
fn check(method: &'static str, location: &str, status: u16) -> Result<(), StoreError> {
    log::debug!(
        "upload: {method} {} answered HTTP {status}",
        redact_location(location)
    );
    match status {
        200..=299 => Ok(()),
        // Already gone: what a DELETE wants.
        404 | 410 if method == "DELETE" => Ok(()),
        _ => Err(StoreError::Http {
            method,
            location: redact_location(location).into_owned(),
            status,
        }),
    }
}

impl Store for HttpStore {
    fn put(&self, location: &str, kind: FileKind, data: &[u8]) -> Result<(), StoreError> {
        let status = self.request("PUT", location, Some(content_type(kind, location)), data)?;
        check("PUT", location, status)
    }

    fn delete(&self, location: &str, _kind: FileKind) -> Result<(), StoreError> {
        let status = self.request("DELETE", location, None, &[])?;
        // A refused DELETE leaves a stale file behind but must not stop the stream: it is
        // retryable (see `StoreError::retryable`), then given up with a warning.
        check("DELETE", location, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Reads one request (head and Content-Length bytes of body) from `s`; None at EOF.
    fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                if got.len() >= end + 4 + len {
                    return Some(got);
                }
            }
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&chunk[..n]);
        }
    }

    /// A one-shot origin answering `status`; returns what it received.
    fn origin(status: u16) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/live/s.ts", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let got = read_request(&mut s).unwrap();
            write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").unwrap();
            got
        });
        (url, h)
    }

    /// An origin that answers each connection's requests with `answers` in turn (one per
    /// request; after the last one it closes the connection) and counts connections.
    fn scripted(
        conns: Vec<Vec<&'static str>>,
    ) -> (String, std::thread::JoinHandle<Vec<Vec<Vec<u8>>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/live/", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answers in conns {
                let (mut s, _) = l.accept().unwrap();
                let mut reqs = Vec::new();
                for a in answers {
                    let Some(r) = read_request(&mut s) else { break };
                    reqs.push(r);
                    if !a.is_empty() {
                        s.write_all(a.as_bytes()).unwrap();
                    }
                }
                seen.push(reqs);
            }
            seen
        });
        (url, h)
    }

    const OK: &str = "HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated";

    #[test]
    fn puts_with_length_and_type() {
        let (url, h) = origin(201);
        HttpStore::default()
            .put(&url, FileKind::Segment, b"0123456789")
            .unwrap();
        let got = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(got.starts_with("PUT /live/s.ts HTTP/1.1\r\n"), "{got}");
        assert!(got.contains("Content-Length: 10\r\n"));
        assert!(got.contains("Content-Type: video/mp2t\r\n"));
        assert!(!got.to_lowercase().contains("connection: close"), "{got}");
        assert!(got.ends_with("\r\n\r\n0123456789"));
    }

    #[test]
    fn one_connection_carries_many_requests() {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                       4;ext=1\r\nabcd\r\n2\r\nef\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let no_content = "HTTP/1.1 204 No Content\r\n\r\n";
        let interim =
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let (url, h) = scripted(vec![vec![OK, chunked, no_content, interim, OK]]);
        let store = HttpStore::default();
        for i in 0..4 {
            store
                .put(&format!("{url}s{i}.ts"), FileKind::Segment, b"x")
                .unwrap();
        }
        store
            .delete(&format!("{url}s0.ts"), FileKind::Segment)
            .unwrap();
        assert_eq!(store.connections_opened(), 1);
        let seen = h.join().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].len(), 5);
        assert!(seen[0][4].starts_with(b"DELETE /live/s0.ts HTTP/1.1\r\n"));
    }

    #[test]
    fn a_kept_connection_the_server_closed_is_replaced_without_a_failure() {
        // The first connection answers once, then reads the next request and closes without
        // an answer (the server's idle close crossing our request); the request goes again on
        // a second connection.
        let (url, h) = scripted(vec![vec![OK, ""], vec![OK, OK]]);
        let store = HttpStore::default();
        store
            .put(&format!("{url}a.ts"), FileKind::Segment, b"1")
            .unwrap();
        store
            .put(&format!("{url}b.ts"), FileKind::Segment, b"2")
            .unwrap();
        store
            .put(&format!("{url}c.ts"), FileKind::Segment, b"3")
            .unwrap();
        assert_eq!(store.connections_opened(), 2);
        let seen = h.join().unwrap();
        assert!(seen[0][1].starts_with(b"PUT /live/b.ts"));
        assert!(seen[1][0].starts_with(b"PUT /live/b.ts"), "sent again");
        assert!(seen[1][1].starts_with(b"PUT /live/c.ts"));
    }

    #[test]
    fn a_closed_new_connection_is_a_failure_and_never_resent() {
        // Nothing kept: a connection that closes before answering is an error to retry later.
        let (url, h) = scripted(vec![vec![""]]);
        let store = HttpStore::default();
        let e = store
            .put(&format!("{url}a.ts"), FileKind::Segment, b"1")
            .unwrap_err();
        assert!(e.retryable(), "{e:?}");
        assert_eq!(store.connections_opened(), 1);
        assert_eq!(h.join().unwrap()[0].len(), 1);
    }

    #[test]
    fn answers_that_end_the_connection_are_not_reused() {
        let close = "HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let (url, h) = scripted(vec![vec![close], vec![OK]]);
        let store = HttpStore::default();
        store
            .put(&format!("{url}a.ts"), FileKind::Segment, b"1")
            .unwrap();
        store
            .put(&format!("{url}b.ts"), FileKind::Segment, b"2")
            .unwrap();
        assert_eq!(store.connections_opened(), 2);
        h.join().unwrap();
        // HTTP/1.0, and a body without a length (read to the close).
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x.ts", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 200 OK\r\n\r\nbody to the end",
            ] {
                let (mut s, _) = l.accept().unwrap();
                read_request(&mut s).unwrap();
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let store = HttpStore::default();
        store.put(&url, FileKind::Segment, b"1").unwrap();
        store.put(&url, FileKind::Segment, b"2").unwrap();
        assert_eq!(store.connections_opened(), 2);
        server.join().unwrap();
    }

    #[test]
    fn statuses_map_to_retry_or_stop() {
        let (url, h) = origin(503);
        let e = HttpStore::default()
            .put(&url, FileKind::Segment, b"x")
            .unwrap_err();
        assert!(e.retryable());
        h.join().unwrap();
        let (url, h) = origin(403);
        let e = HttpStore::default()
            .put(&url, FileKind::Segment, b"x")
            .unwrap_err();
        assert!(!e.retryable(), "{e:?}");
        assert!(matches!(e, StoreError::Http { status: 403, .. }), "{e:?}");
        h.join().unwrap();
        let (url, h) = origin(404);
        HttpStore::default()
            .delete(&url, FileKind::Segment)
            .unwrap();
        h.join().unwrap();
        // A refused DELETE is retried, then given up on, never fatal.
        let (url, h) = origin(403);
        let e = HttpStore::default()
            .delete(&url, FileKind::Segment)
            .unwrap_err();
        assert!(e.retryable(), "{e:?}");
        h.join().unwrap();
    }

    #[test]
    fn a_server_that_is_not_tls_is_no_https_origin() {
        // Plain HTTP on the other end: the TLS handshake fails, which no retry fixes.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/x.ts", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        });
        let e = HttpStore::default()
            .put(&url, FileKind::Segment, b"x")
            .unwrap_err();
        assert!(!e.retryable(), "{e:?}");
        assert!(matches!(e, StoreError::Tls { .. }), "{e:?}");
        h.join().unwrap();
    }

    #[test]
    fn credentials_stay_out_of_errors() {
        assert_eq!(
            redact_location("https://user:pa55@origin.example/live/s.ts"),
            "https://origin.example/live/s.ts"
        );
        assert_eq!(redact_location("/local/s.ts"), "/local/s.ts");
        let e = HttpStore::default()
            .put("ftp://user:pa55@h/x.ts", FileKind::Segment, b"x")
            .unwrap_err();
        assert!(!format!("{e} {e:?}").contains("pa55"), "{e:?}");
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let path = std::env::temp_dir().join(format!("hls-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(matches!(
            tls_config(Some(&path)),
            Err(TlsSetupError::NoCertificate { .. })
        ));
        let _ = std::fs::remove_file(&path);
        assert!(tls_config(Some(Path::new("/nonexistent/ca.pem"))).is_err());
    }

    #[test]
    fn nothing_listening_is_retryable() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x.ts", l.local_addr().unwrap());
        drop(l);
        let e = HttpStore::default()
            .put(&url, FileKind::Segment, b"x")
            .unwrap_err();
        assert!(e.retryable());
        let e = HttpStore::default()
            .put("ftp://127.0.0.1:1/x.ts", FileKind::Segment, b"x")
            .unwrap_err();
        assert!(!e.retryable() && e.to_string().contains("ftp"));
    }

    #[test]
    fn content_types_follow_the_file() {
        assert_eq!(content_type(FileKind::Segment, "a/s1.ts"), "video/mp2t");
        assert_eq!(content_type(FileKind::Segment, "a/s1.m4s"), "video/mp4");
        assert_eq!(content_type(FileKind::Segment, "a/init.mp4"), "video/mp4");
        assert_eq!(
            content_type(FileKind::Playlist, "p.m3u8"),
            "application/vnd.apple.mpegurl"
        );
    }
}
