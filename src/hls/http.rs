//! The built-in HTTP server: serves the files the output has published, nothing else.
//!
//! Specifications: RFC 9110 §9.3.1, §9.3.2, §9.3.7 (GET, HEAD, OPTIONS), §14 (Range), §15.3.7
//! (206), §15.5.17 (416); RFC 9112 §9.3 (persistent connections); RFC 9111 §5.2 (Cache-Control);
//! the Fetch standard's CORS headers; RFC 8216 §4 (playlist media type).
//!
//! Names are looked up in [`Published`] (the last path component of each file written), so no
//! request path can reach another file: `..`, encoded or not, and any path with a directory part is
//! refused with 400. GET, HEAD and OPTIONS (CORS preflight); HTTP/1.1 keep-alive; a bounded number
//! of connections (503 beyond it); bounded header size and read times.
//!
//! RFC 9110 (GET, HEAD, OPTIONS; §14 range requests) over RFC 9112 HTTP/1.1 messages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::store::{FileKind, Published};
use crate::runtime::TaskGroup;

const MAX_HEADER_BYTES: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub address: SocketAddr,
    pub max_connections: usize,
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
        log::debug!(
            "HTTP server listening on {local_addr} (at most {} connections)",
            config.max_connections.max(1)
        );
        let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
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
                match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let files = files.clone();
                        let config = config.clone();
                        log::trace!("HTTP connection from {peer}");
                        group.spawn(async move {
                            serve_connection(stream, peer, &files, &config).await;
                            log::trace!("HTTP connection from {peer} closed");
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        log::debug!(
                            "HTTP connection from {peer} refused with 503: {} connections \
                             already",
                            config.max_connections.max(1)
                        );
                        group.spawn(async move {
                            let mut stream = stream;
                            // Read the request first (briefly) so that closing does not reset
                            // the connection before the client has read the answer.
                            let mut head = [0u8; 2048];
                            let _ = tokio::time::timeout(
                                Duration::from_millis(500),
                                stream.read(&mut head),
                            )
                            .await;
                            let resp = response(
                                503,
                                "Service Unavailable",
                                &[("Retry-After", "1")],
                                0,
                                true,
                            );
                            let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                                stream.write_all(&resp).await?;
                                stream.shutdown().await
                            })
                            .await;
                        });
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

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    files: &Published,
    config: &HttpConfig,
) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Read one request head.
        let head_len = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_HEADER_BYTES {
                log::debug!("HTTP {peer}: request head over {MAX_HEADER_BYTES} bytes: 431");
                let r = response(431, "Request Header Fields Too Large", &[], 0, true);
                let _ = stream.write_all(&r).await;
                return;
            }
            let mut chunk = [0u8; 2048];
            match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&buf[..head_len]);
        let (method, path, version, close_requested, range) = match parsed {
            Ok(httparse::Status::Complete(_)) => {
                let close = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && String::from_utf8_lossy(h.value).eq_ignore_ascii_case("close")
                });
                let range = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("range"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                    req.version.unwrap_or(0),
                    close,
                    range,
                )
            }
            _ => {
                log::debug!("HTTP {peer}: malformed request: 400");
                let r = response(400, "Bad Request", &[], 0, true);
                let _ = stream.write_all(&r).await;
                return;
            }
        };
        buf.drain(..head_len);
        // Request bodies are not expected; a client that sends one is not kept alive.
        let close = close_requested || version == 0 || !buf.is_empty();
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
    let Ok(Ok(data)) = tokio::task::spawn_blocking(move || std::fs::read(file)).await else {
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
    match byte_range(range, data.len()) {
        ByteRange::Whole => {
            let head = response(200, "OK", &headers, data.len(), close);
            (head, (method == "GET").then_some(data))
        }
        ByteRange::Part(start, end) => {
            let content_range = format!("bytes {start}-{end}/{}", data.len());
            headers.push(("Content-Range", &content_range));
            let head = response(206, "Partial Content", &headers, end + 1 - start, close);
            (head, (method == "GET").then(|| data[start..=end].to_vec()))
        }
        ByteRange::Unsatisfiable => {
            let content_range = format!("bytes */{}", data.len());
            headers.push(("Content-Range", &content_range));
            (
                response(416, "Range Not Satisfiable", &headers, 0, close),
                None,
            )
        }
    }
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
