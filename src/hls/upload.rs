//! Upload to an HTTP origin (nginx WebDAV, any server taking PUT and DELETE).
//!
//! One HTTP/1.1 request per file on its own connection, run by the output worker thread with
//! bounded connect/read/write times; the worker retries failures with backoff. Connection errors,
//! timeouts, 408, 429 and 5xx are retried; other 4xx answers to PUT (403, 405, 413, ...) mean the
//! origin will never take the files and stop the output with an error.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::store::{FileKind, Store, StoreError};

#[derive(Debug, Clone)]
pub struct HttpStore {
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub user_agent: String,
}

impl Default for HttpStore {
    fn default() -> Self {
        HttpStore {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(20),
            user_agent: format!("gst-plugin-livestreaming/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

fn content_type(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Playlist => "application/vnd.apple.mpegurl",
        FileKind::Segment => "video/mp2t",
        FileKind::Key => "application/octet-stream",
    }
}

impl HttpStore {
    /// Sends one request and returns the status code.
    pub fn request(
        &self,
        method: &str,
        location: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<u16, StoreError> {
        let url = url::Url::parse(location)
            .map_err(|e| StoreError::fatal(format!("invalid URL {location}: {e}")))?;
        if url.scheme() != "http" {
            return Err(StoreError::fatal(format!(
                "cannot upload to {location}: only http:// is supported"
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| StoreError::fatal(format!("no host in {location}")))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| StoreError::retryable(format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| StoreError::retryable(format!("no address for {host}")))?;
        let net = |e: std::io::Error| StoreError::retryable(format!("{method} {location}: {e}"));
        let mut stream = TcpStream::connect_timeout(&addr, self.connect_timeout).map_err(net)?;
        stream
            .set_read_timeout(Some(self.io_timeout))
            .map_err(net)?;
        stream
            .set_write_timeout(Some(self.io_timeout))
            .map_err(net)?;
        let _ = stream.set_nodelay(true);
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {}\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            self.user_agent,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(net)?;
        stream.write_all(body).map_err(net)?;
        stream.flush().map_err(net)?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).map_err(net)?;
            if n == 0 {
                return Err(StoreError::retryable(format!(
                    "{method} {location}: connection closed before a response"
                )));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(_)) => {
                    return resp.code.ok_or_else(|| {
                        StoreError::retryable(format!("{method} {location}: no status"))
                    });
                }
                Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => continue,
                _ => {
                    return Err(StoreError::retryable(format!(
                        "{method} {location}: malformed response"
                    )));
                }
            }
        }
    }
}

fn check(method: &str, location: &str, status: u16) -> Result<(), StoreError> {
    match status {
        200..=299 => Ok(()),
        // Already gone: what a DELETE wants.
        404 | 410 if method == "DELETE" => Ok(()),
        408 | 425 | 429 | 500..=599 => Err(StoreError::retryable(format!(
            "{method} {location}: HTTP {status}"
        ))),
        _ => Err(StoreError::fatal(format!(
            "{method} {location}: the origin answered HTTP {status}"
        ))),
    }
}

impl Store for HttpStore {
    fn put(&self, location: &str, kind: FileKind, data: &[u8]) -> Result<(), StoreError> {
        let status = self.request("PUT", location, Some(content_type(kind)), data)?;
        check("PUT", location, status)
    }

    fn delete(&self, location: &str, _kind: FileKind) -> Result<(), StoreError> {
        let status = self.request("DELETE", location, None, &[])?;
        // A refused DELETE leaves a stale file behind but must not stop the stream.
        check("DELETE", location, status).map_err(|e| StoreError::retryable(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot origin answering `status`; returns what it received.
    fn origin(status: u16) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/live/s.ts", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then Content-Length bytes of body.
            loop {
                let n = s.read(&mut chunk).unwrap();
                got.extend_from_slice(&chunk[..n]);
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
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").unwrap();
            got
        });
        (url, h)
    }

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
        assert!(got.ends_with("\r\n\r\n0123456789"));
    }

    #[test]
    fn statuses_map_to_retry_or_stop() {
        let (url, h) = origin(503);
        let e = HttpStore::default()
            .put(&url, FileKind::Segment, b"x")
            .unwrap_err();
        assert!(e.retryable);
        h.join().unwrap();
        let (url, h) = origin(403);
        let e = HttpStore::default()
            .put(&url, FileKind::Segment, b"x")
            .unwrap_err();
        assert!(!e.retryable, "{e:?}");
        assert!(e.message.contains("403"));
        h.join().unwrap();
        let (url, h) = origin(404);
        HttpStore::default()
            .delete(&url, FileKind::Segment)
            .unwrap();
        h.join().unwrap();
    }

    #[test]
    fn nothing_listening_is_retryable() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x.ts", l.local_addr().unwrap());
        drop(l);
        let e = HttpStore::default()
            .put(&url, FileKind::Segment, b"x")
            .unwrap_err();
        assert!(e.retryable);
        let e = HttpStore::default()
            .put("https://127.0.0.1:1/x.ts", FileKind::Segment, b"x")
            .unwrap_err();
        assert!(!e.retryable && e.message.contains("http://"));
    }
}
