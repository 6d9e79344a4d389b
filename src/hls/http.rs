//! The built-in HTTP server: serves the files the output has published, nothing else.
//!
//! Specifications: RFC 9110 §9.3.1, §9.3.2, §9.3.7 (GET, HEAD, OPTIONS), §14 (Range), §15.3.7
//! (206), §15.5.17 (416); RFC 9112 §9.3 (persistent connections); RFC 9111 §5.2 (Cache-Control);
//! the Fetch standard's CORS headers; RFC 8216 §4 (playlist media type).
//!
//! Names are looked up in [`Published`] (the last path component of each file written), so no
//! request path can reach another file: `..`, encoded or not, and any path with a directory part is
//! refused with 400. GET, HEAD and OPTIONS (CORS preflight); HTTP/1.1 keep-alive and pipelining.
//!
//! Limits, so that a few hostile clients cannot lock the others out: a request (head and body)
//! must arrive complete within [`HttpConfig::request_timeout`] of the server starting to wait for it (408 and
//! close; an idle kept-alive connection is closed then too); at most
//! [`HttpConfig::max_connections`] connections, and at most
//! [`HttpConfig::max_connections_per_address`] from one client address (an IPv6 client by its
//! /64), 503 beyond either; heads of at most 8 KiB (431). A request body (Content-Length) of up
//! to 64 KiB is read and dropped, a larger one is refused with 413, and Transfer-Encoding or a
//! malformed or conflicting Content-Length with 400 (RFC 9112 §6.3): a body is never read as the
//! next request. HEAD reads no file data; a range request reads only the range.
//!
//! RFC 9110 (GET, HEAD, OPTIONS; §14 range requests; §15.5.9 408, §15.5.14 413) over RFC 9112
//! HTTP/1.1 messages.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::store::{FileKind, Published};
use crate::runtime::TaskGroup;

const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The default of [`HttpConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Request bodies up to this size are read and dropped; larger ones are refused.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// How long a connection that is closed with an error is still read from, so that the client
/// gets the answer rather than a reset (RFC 9112 §9.6).
const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub address: SocketAddr,
    pub max_connections: usize,
    /// Open connections from one client address at most (an IPv6 client counts by its /64).
    pub max_connections_per_address: usize,
    /// A request, head and body, must arrive within this from when the server starts waiting
    /// for it (after the connection is accepted or the previous answer is sent).
    pub request_timeout: Duration,
    /// Cache-Control for playlists (live ones change every segment).
    pub playlist_cache_control: String,
}

/// A running server on the plugin's shared runtime; stops when dropped: the listener and every
/// connection are tasks of one [`TaskGroup`], all aborted at once.
pub struct HttpServer {
    tasks: Arc<TaskGroup>,
    accept: tokio::task::JoinHandle<()>,
    local_addr: SocketAddr,
}

impl HttpServer {
    pub fn start(config: HttpConfig, files: Arc<Published>) -> std::io::Result<HttpServer> {
        // Bound here, so that a port in use is an error of start().
        let listener = std::net::TcpListener::bind(config.address)?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _runtime = crate::runtime::handle().enter();
            TcpListener::from_std(listener)?
        };
        let local_addr = listener.local_addr()?;
        let max_total = config.max_connections.max(1);
        let max_per_address = config.max_connections_per_address.max(1);
        log::debug!(
            "HTTP server listening on {local_addr} (at most {max_total} connections, \
             {max_per_address} per address)"
        );
        let limit = Arc::new(Semaphore::new(max_total));
        let per_address = Arc::new(PerAddress {
            max: max_per_address,
            open: Mutex::default(),
        });
        let config = Arc::new(config);
        let tasks = Arc::new(TaskGroup::new());
        let group = tasks.clone();
        let accept = tasks.spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        log::debug!("HTTP server: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let admitted = match per_address.take(peer.ip()) {
                    None => Err(format_args!(
                        "{max_per_address} connections from its address"
                    )),
                    Some(slot) => match limit.clone().try_acquire_owned() {
                        Ok(permit) => Ok((slot, permit)),
                        Err(_) => Err(format_args!("{max_total} connections in all")),
                    },
                };
                match admitted {
                    Ok(held) => {
                        let files = files.clone();
                        let config = config.clone();
                        log::trace!("HTTP connection from {peer}");
                        group.spawn(async move {
                            serve_connection(stream, peer, &files, &config).await;
                            log::trace!("HTTP connection from {peer} closed");
                            drop(held);
                        });
                    }
                    Err(why) => {
                        log::debug!("HTTP connection from {peer} refused with 503: {why} already");
                        let resp =
                            response(503, "Service Unavailable", &[("Retry-After", "1")], 0, true);
                        group.spawn(close_with(stream, resp));
                    }
                }
            }
        });
        Ok(HttpServer {
            tasks,
            accept,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// The open connections per client address.
struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// The address a client is counted by: IPv4 (also IPv4-mapped IPv6) as it is, IPv6 by its
    /// /64, the smallest prefix a site is given (RFC 6177).
    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & (u128::MAX << 64)).into()),
            v4 => v4,
        }
    }

    /// A connection slot for a client at `ip`, none when it has `max` open.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = PerAddress::key(ip);
        let mut open = self.open.lock().unwrap();
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

/// One open connection of a client address; released when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Sends `answer` and closes, reading (and dropping) what the client still sends for at most
/// [`LINGER`] so that the close does not reset the connection before the answer is read.
async fn close_with(mut stream: TcpStream, answer: Vec<u8>) {
    let sent = tokio::time::timeout(LINGER, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
        // The port is free once the aborted accept task has dropped the listener, which a worker
        // does at once: wait for that briefly so that the port can be bound again right after a
        // stop, but never from inside the runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            let deadline = std::time::Instant::now() + Duration::from_millis(500);
            while !self.accept.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        log::debug!("HTTP server on {} stopped", self.local_addr);
    }
}

fn response(
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    content_length: usize,
    close: bool,
) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(&format!("Content-Length: {content_length}\r\n"));
    if close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Decodes %XX escapes; None for malformed escapes or non-UTF-8 results.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a request path asks for: the published name, or why it is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Name(String),
    BadPath,
}

pub fn target(raw_path: &str) -> Target {
    let path = raw_path.split(['?', '#']).next().unwrap_or("");
    let Some(decoded) = percent_decode(path) else {
        return Target::BadPath;
    };
    let Some(name) = decoded.strip_prefix('/') else {
        return Target::BadPath;
    };
    if name.is_empty()
        || name == "."
        || name.contains("..")
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control)
    {
        return Target::BadPath;
    }
    Target::Name(name.to_owned())
}

pub fn content_type(kind: FileKind, name: &str) -> &'static str {
    match kind {
        FileKind::Playlist => "application/vnd.apple.mpegurl",
        FileKind::Key => "application/octet-stream",
        FileKind::Segment if name.ends_with(".mp4") || name.ends_with(".m4s") => "video/mp4",
        FileKind::Segment if name.ends_with(".aac") => "audio/aac",
        FileKind::Segment => "video/mp2t",
    }
}

const CORS: [(&str, &str); 3] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"),
    ("Access-Control-Allow-Headers", "Range, Origin, Accept"),
];

/// One request as far as this server looks at it.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    range: Option<String>,
    /// The client asked to close after the answer (or speaks HTTP/1.0).
    close: bool,
}

/// Why a request is answered with an error and the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    status: u16,
    reason: &'static str,
    why: &'static str,
}

impl Refusal {
    const fn bad(why: &'static str) -> Refusal {
        Refusal {
            status: 400,
            reason: "Bad Request",
            why,
        }
    }
}

#[derive(Debug)]
enum ReadError {
    /// The client closed the connection, or reading failed.
    Closed,
    Refused(Refusal),
}

impl From<Refusal> for ReadError {
    fn from(r: Refusal) -> ReadError {
        ReadError::Refused(r)
    }
}

/// The request of a head (which ends with its empty line) and the length of its body.
fn parse_head(head: &[u8]) -> Result<(Request, usize), Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err(Refusal::bad("malformed request"));
    }
    let mut close = req.version != Some(1);
    let mut range = None;
    let mut body: Option<u64> = None;
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if h.name.eq_ignore_ascii_case("range") {
            range = Some(value.into_owned());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Refusal::bad("a request with Transfer-Encoding"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let value = value.trim();
            let n = value
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or(Refusal::bad("a malformed Content-Length"))?;
            if body.is_some_and(|m| m != n) {
                return Err(Refusal::bad("conflicting Content-Lengths"));
            }
            body = Some(n);
        }
    }
    let body = body.unwrap_or(0);
    if body > MAX_BODY_BYTES {
        return Err(Refusal {
            status: 413,
            reason: "Content Too Large",
            why: "a request body over 64 KiB",
        });
    }
    let request = Request {
        method: req.method.unwrap_or("").to_owned(),
        path: req.path.unwrap_or("").to_owned(),
        range,
        close,
    };
    // At most MAX_BODY_BYTES: fits.
    Ok((request, body as usize))
}

/// Appends what the client sent next to `buf`.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut chunk = [0u8; 2048];
    match stream.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        _ => Err(ReadError::Closed),
    }
}

/// Reads the next request from `buf` and the stream, its body dropped; bytes after it (the
/// next pipelined request) stay in `buf`. `in_body` is set once the head is complete (its
/// bytes have left `buf` then: the request is not an idle connection's).
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    in_body: &mut bool,
) -> Result<Request, ReadError> {
    let mut scanned = 0;
    let head_len = loop {
        if let Some(pos) = buf[scanned..].windows(4).position(|w| w == b"\r\n\r\n") {
            break scanned + pos + 4;
        }
        if buf.len() > MAX_HEADER_BYTES {
            return Err(Refusal {
                status: 431,
                reason: "Request Header Fields Too Large",
                why: "a request head over 8 KiB",
            }
            .into());
        }
        scanned = buf.len().saturating_sub(3);
        read_more(stream, buf).await?;
    };
    let (request, mut body) = parse_head(&buf[..head_len])?;
    buf.drain(..head_len);
    *in_body = true;
    loop {
        let n = body.min(buf.len());
        buf.drain(..n);
        body -= n;
        if body == 0 {
            return Ok(request);
        }
        read_more(stream, buf).await?;
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    files: &Published,
    config: &HttpConfig,
) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let timeout = config.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut in_body = false;
        let read = read_request(&mut stream, &mut buf, &mut in_body);
        let request = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(r)) => r,
            Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::Refused(r))) => {
                log::debug!("HTTP {peer}: {}: {}", r.why, r.status);
                close_with(stream, response(r.status, r.reason, &[], 0, true)).await;
                return;
            }
            Err(_) if buf.is_empty() && !in_body => {
                log::debug!("HTTP {peer}: no request within {timeout:?}: closed");
                return;
            }
            Err(_) => {
                log::debug!(
                    "HTTP {peer}: request not complete within {timeout:?} ({}): 408",
                    if in_body {
                        "in its body"
                    } else {
                        "in its head"
                    }
                );
                let r = response(408, "Request Timeout", &[], 0, true);
                close_with(stream, r).await;
                return;
            }
        };
        let Request {
            method,
            path,
            range,
            close,
        } = request;
        let (head, body) = handle(&method, &path, range.as_deref(), files, config, close).await;
        // The status is in the answer's first line: "HTTP/1.1 200 OK".
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("?");
        log::debug!(
            "HTTP {peer}: {method} {path} (Range {}) -> {status}, {} bytes",
            range.as_deref().unwrap_or("none"),
            body.as_ref().map_or(0, |b| b.len())
        );
        let write = async {
            stream.write_all(&head).await?;
            if let Some(b) = &body {
                stream.write_all(b).await?;
            }
            stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// What a `Range` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No range, or one this server does not do (several ranges): the whole file.
    Whole,
    /// Bytes `start..=end`.
    Part(usize, usize),
    /// Cannot be satisfied (416).
    Unsatisfiable,
}

/// A single `bytes=` range of a file of `len` bytes.
pub fn byte_range(header: Option<&str>, len: usize) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let parse = || -> Option<(usize, usize)> {
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        let last = len.checked_sub(1)?;
        let (start, end) = if a.is_empty() {
            // The last b bytes.
            let n: usize = b.parse().ok().filter(|n| *n > 0)?;
            (len.saturating_sub(n), last)
        } else {
            let start: usize = a.parse().ok()?;
            let end = if b.is_empty() {
                last
            } else {
                b.parse::<usize>().ok()?.min(last)
            };
            (start, end)
        };
        (start < len && start <= end).then_some((start, end))
    };
    match parse() {
        Some((start, end)) => ByteRange::Part(start, end),
        None => ByteRange::Unsatisfiable,
    }
}

async fn handle(
    method: &str,
    path: &str,
    range: Option<&str>,
    files: &Published,
    config: &HttpConfig,
    close: bool,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut headers: Vec<(&str, &str)> = CORS.to_vec();
    match method {
        "OPTIONS" => {
            headers.push(("Access-Control-Max-Age", "86400"));
            headers.push(("Allow", "GET, HEAD, OPTIONS"));
            return (response(204, "No Content", &headers, 0, close), None);
        }
        "GET" | "HEAD" => {}
        _ => {
            headers.push(("Allow", "GET, HEAD, OPTIONS"));
            return (
                response(405, "Method Not Allowed", &headers, 0, close),
                None,
            );
        }
    }
    let name = match target(path) {
        Target::Name(n) => n,
        Target::BadPath => return (response(400, "Bad Request", &headers, 0, close), None),
    };
    let not_found = || (response(404, "Not Found", &CORS, 0, close), None);
    let Some((file, kind)) = files.get(&name) else {
        return not_found();
    };
    let range = range.map(str::to_owned);
    let with_body = method == "GET";
    let read = move || read_file(&file, range.as_deref(), with_body);
    let Ok(Ok((len, range, data))) = tokio::task::spawn_blocking(read).await else {
        return not_found();
    };
    let cache = match kind {
        FileKind::Playlist => config.playlist_cache_control.as_str(),
        FileKind::Segment => "public, max-age=86400",
        FileKind::Key => "private, max-age=86400",
    };
    headers.push(("Content-Type", content_type(kind, &name)));
    headers.push(("Cache-Control", cache));
    headers.push(("Accept-Ranges", "bytes"));
    match range {
        ByteRange::Whole => (response(200, "OK", &headers, len, close), data),
        ByteRange::Part(start, end) => {
            let content_range = format!("bytes {start}-{end}/{len}");
            headers.push(("Content-Range", &content_range));
            let head = response(206, "Partial Content", &headers, end + 1 - start, close);
            (head, data)
        }
        ByteRange::Unsatisfiable => {
            let content_range = format!("bytes */{len}");
            headers.push(("Content-Range", &content_range));
            (
                response(416, "Range Not Satisfiable", &headers, 0, close),
                None,
            )
        }
    }
}

/// The length of the file at `path`, the part a `Range` header asks for, and with `with_body`
/// that part's bytes: only they are read (HEAD reads none).
fn read_file(
    path: &Path,
    range: Option<&str>,
    with_body: bool,
) -> std::io::Result<(usize, ByteRange, Option<Vec<u8>>)> {
    let mut file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::FileTooLarge))?;
    let range = byte_range(range, len);
    let (start, n) = match range {
        _ if !with_body => return Ok((len, range, None)),
        ByteRange::Whole => (0, len),
        ByteRange::Part(start, end) => (start, end + 1 - start),
        ByteRange::Unsatisfiable => return Ok((len, range, None)),
    };
    file.seek(SeekFrom::Start(start as u64))?;
    let mut data = vec![0; n];
    file.read_exact(&mut data)?;
    Ok((len, range, Some(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_targets() {
        assert_eq!(
            target("/playlist.m3u8"),
            Target::Name("playlist.m3u8".into())
        );
        assert_eq!(target("/seg%2000.ts?x=1"), Target::Name("seg 00.ts".into()));
        for bad in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/..%2fetc",
            "/a/b.ts",
            "/%5c..%5cx",
            "/",
            "",
            "playlist.m3u8",
            "/%zz",
            "/%00",
            "/%ff",
        ] {
            assert_eq!(target(bad), Target::BadPath, "{bad}");
        }
    }

    #[test]
    fn byte_ranges() {
        use ByteRange::*;
        assert_eq!(byte_range(None, 100), Whole);
        assert_eq!(byte_range(Some("bytes=0-9"), 100), Part(0, 9));
        assert_eq!(byte_range(Some("bytes=90-"), 100), Part(90, 99));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Part(90, 99));
        assert_eq!(byte_range(Some("bytes=-500"), 100), Part(0, 99));
        assert_eq!(byte_range(Some("bytes=50-500"), 100), Part(50, 99));
        assert_eq!(byte_range(Some("bytes=0-1,5-6"), 100), Whole);
        assert_eq!(byte_range(Some("items=0-1"), 100), Whole);
        assert_eq!(byte_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=9-2"), 100), Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=x-"), 100), Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn request_heads_and_their_bodies() {
        let parse = |head: &str| parse_head(head.as_bytes());
        let (req, body) =
            parse("GET /p.m3u8 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n").unwrap();
        assert_eq!(
            req,
            Request {
                method: "GET".into(),
                path: "/p.m3u8".into(),
                range: Some("bytes=0-9".into()),
                close: false,
            }
        );
        assert_eq!(body, 0);
        let close = |head: &str| parse(head).unwrap().0.close;
        assert!(close(
            "GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n"
        ));
        assert!(close("GET / HTTP/1.0\r\n\r\n"));
        assert!(!close("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"));

        assert_eq!(
            parse("GET / HTTP/1.1\r\nContent-Length: 20\r\n\r\n")
                .unwrap()
                .1,
            20
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nContent-Length: 65536\r\ncontent-length: 65536\r\n\r\n")
                .unwrap()
                .1,
            65536
        );
        let status = |head: &str| parse(head).unwrap_err().status;
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
            413
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        for bad in [
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            "\x01\x02 garbage\r\n\r\n",
        ] {
            assert_eq!(status(bad), 400, "{bad:?}");
        }
    }

    /// HEAD and ranges of a 64 GiB (sparse) file: reading all of it would not fit in memory.
    #[test]
    fn only_the_requested_bytes_are_read() {
        let path = std::env::temp_dir().join(format!("hls-http-sparse-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let len = 64usize << 30;
        file.set_len(len as u64).unwrap();
        {
            use std::io::Write;
            let mut file = file;
            file.seek(SeekFrom::Start(len as u64 - 4)).unwrap();
            file.write_all(b"tail").unwrap();
        }
        let head = read_file(&path, None, false).unwrap();
        assert_eq!(head, (len, ByteRange::Whole, None));
        let head = read_file(&path, Some("bytes=-4"), false).unwrap();
        assert_eq!(head, (len, ByteRange::Part(len - 4, len - 1), None));
        let tail = read_file(&path, Some("bytes=-4"), true).unwrap();
        assert_eq!(tail.2.as_deref(), Some(&b"tail"[..]));
        let middle = read_file(&path, Some("bytes=1000-1009"), true).unwrap();
        assert_eq!(middle.2, Some(vec![0; 10]));
        let none = read_file(&path, Some(&format!("bytes={len}-")), true).unwrap();
        assert_eq!(none, (len, ByteRange::Unsatisfiable, None));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn connections_are_counted_per_address() {
        let table = Arc::new(PerAddress {
            max: 2,
            open: Mutex::default(),
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let first = table.take(a).unwrap();
        let second = table.take("::ffff:127.0.0.2".parse().unwrap()).unwrap();
        assert!(
            table.take(a).is_none(),
            "an IPv4-mapped address is the same client"
        );
        assert!(table.take("127.0.0.1".parse().unwrap()).is_some());
        drop(first);
        let third = table.take(a).unwrap();
        drop((second, third));
        assert!(
            table.open.lock().unwrap().is_empty(),
            "released slots are forgotten"
        );

        let _one = table.take("2001:db8::1".parse().unwrap()).unwrap();
        let _two = table.take("2001:db8::ffff:2".parse().unwrap()).unwrap();
        assert!(
            table.take("2001:db8:0:0:1::".parse().unwrap()).is_none(),
            "one /64"
        );
        assert!(
            table.take("2001:db8:0:1::1".parse().unwrap()).is_some(),
            "another /64"
        );
    }

    #[test]
    fn mime_types() {
        assert_eq!(
            content_type(FileKind::Playlist, "p.m3u8"),
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(content_type(FileKind::Segment, "s.ts"), "video/mp2t");
        assert_eq!(
            content_type(FileKind::Key, "k.key"),
            "application/octet-stream"
        );
    }
}
