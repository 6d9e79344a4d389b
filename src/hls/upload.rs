//! Upload to an HTTP(S) origin (nginx WebDAV, any server taking PUT and DELETE).
//!
//! Specifications: RFC 9110 §9.3.4 (PUT), §9.3.5 (DELETE), §15 (status codes); RFC 6585 §4 (429);
//! RFC 9112 (HTTP/1.1 messages); TLS 1.2/1.3 (RFC 5246, RFC 8446) by rustls.
//!
//! One HTTP/1.1 request per file on its own connection, run by the output worker thread with
//! bounded connect/read/write times; the worker retries failures with backoff. Connection errors,
//! timeouts, 408, 429 and 5xx are retried; other 4xx answers to PUT (403, 405, 413, ...) and TLS
//! failures (an untrusted certificate) mean the origin will never take the files and stop the
//! output with an error. https uses rustls with the ring provider, trusting the system's CAs
//! (loaded once per process by [`crate::net::tls`], as rsrtmpsink does) and optionally the CAs
//! of a PEM file.
//!
//! RFC 9110 §9.3.4 (PUT) and §9.3.5 (DELETE).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::net::tls::CaFileError;

use super::store::{FileKind, Store, StoreError};

#[derive(Debug, Clone)]
pub struct HttpStore {
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub user_agent: String,
    tls: Arc<rustls::ClientConfig>,
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
        })
    }
}

/// I/O errors from rustls that carry a TLS error (bad certificate, handshake failure) will not
/// go away by retrying.
fn io_error(method: &'static str, location: &str, e: std::io::Error) -> StoreError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some();
    if tls {
        StoreError::Tls {
            method,
            location: redact_location(location).into_owned(),
            message: e.to_string(),
        }
    } else {
        StoreError::Network {
            method,
            location: redact_location(location).into_owned(),
            kind: Some(e.kind()),
            message: e.to_string(),
        }
    }
}

fn net_error(method: &'static str, location: &str, message: impl Into<String>) -> StoreError {
    StoreError::Network {
        method,
        location: redact_location(location).into_owned(),
        kind: None,
        message: message.into(),
    }
}

/// Writes `head` and `body` and reads the response head; the status code.
fn exchange<S: Read + Write>(
    stream: &mut S,
    head: &[u8],
    body: &[u8],
    method: &'static str,
    location: &str,
) -> Result<u16, StoreError> {
    let net = |e: std::io::Error| io_error(method, location, e);
    stream.write_all(head).map_err(net)?;
    stream.write_all(body).map_err(net)?;
    stream.flush().map_err(net)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).map_err(net)?;
        if n == 0 {
            return Err(net_error(
                method,
                location,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                log::trace!(
                    "{method} {}: answered {:?} {}",
                    redact_location(location),
                    resp.code,
                    resp.reason.unwrap_or("")
                );
                return resp
                    .code
                    .ok_or_else(|| net_error(method, location, "no status"));
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => continue,
            _ => {
                return Err(net_error(method, location, "malformed response"));
            }
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
        method: &'static str,
        location: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<u16, StoreError> {
        let bad = |message: String| StoreError::Location {
            location: redact_location(location).into_owned(),
            message,
        };
        let url = url::Url::parse(location).map_err(|e| bad(format!("invalid URL: {e}")))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(bad(format!("scheme {other} is not http or https"))),
        };
        let host = url.host_str().ok_or_else(|| bad("no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| net_error(method, location, format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| net_error(method, location, format!("no address for {host}")))?;
        let net = |e: std::io::Error| StoreError::Network {
            method,
            location: redact_location(location).into_owned(),
            kind: Some(e.kind()),
            message: e.to_string(),
        };
        log::trace!(
            "{method} {} ({} bytes): connecting to {addr}",
            redact_location(location),
            body.len()
        );
        let stream = TcpStream::connect_timeout(&addr, self.connect_timeout).map_err(net)?;
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
        if https {
            // Brackets of an IPv6 literal are not part of the name.
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| bad(format!("bad TLS name: {e}")))?;
            let conn = rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| {
                StoreError::Tls {
                    method,
                    location: redact_location(location).into_owned(),
                    message: e.to_string(),
                }
            })?;
            let mut tls = rustls::StreamOwned::new(conn, stream);
            exchange(&mut tls, head.as_bytes(), body, method, location)
        } else {
            let mut stream = stream;
            exchange(&mut stream, head.as_bytes(), body, method, location)
        }
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
        let status = self.request("PUT", location, Some(content_type(kind)), data)?;
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
}
