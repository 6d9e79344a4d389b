//! The built-in HTTP server: serves the files the output has published, nothing else, over
//! HTTP/1.1, and over TLS (when a certificate is set) HTTP/2 too, chosen by ALPN (`h2`, else
//! `http/1.1`). The messages are hyper's (1.x, its server connections for each protocol); what
//! is served, and the limits, are this module's.
//!
//! Specifications: RFC 9110 §9.3.1, §9.3.2, §9.3.7 (GET, HEAD, OPTIONS), §14 (Range), §15.3.7
//! (206), §15.5.9 (408), §15.5.14 (413), §15.5.17 (416); RFC 9112 (HTTP/1.1 messages, §9.3
//! persistent connections, §6.3 message length); RFC 9113 (HTTP/2), RFC 7301 (ALPN); RFC 9111
//! §5.2 (Cache-Control); the Fetch standard's CORS headers; RFC 8216 §4 (playlist media type).
//!
//! Names are looked up in [`Published`] (the last path component of each file written), so no
//! request path can reach another file: `..`, encoded or not, and any path with a directory part is
//! refused with 400. GET, HEAD and OPTIONS (CORS preflight); HTTP/1.1 keep-alive and pipelining;
//! HTTP/2 with at most [`MAX_STREAMS`] concurrent streams.
//!
//! Limits, so that a few hostile clients cannot lock the others out (kept from the hand-written
//! HTTP/1.1 server this replaced; the deadlines are in [`conn`], for both protocols):
//! - a request (head and body) must arrive complete within [`HttpConfig::request_timeout`] of the
//!   connection starting to wait for it (after it is accepted or its previous answer is sent):
//!   HTTP/1.1 answers 408 and closes when part of it came, and closes silently an idle
//!   kept-alive connection; HTTP/2 sends GOAWAY when no stream is open for that long. The TLS
//!   handshake must end within it too.
//! - an answer must be sent within the request timeout plus [`conn::WRITE_TIMEOUT`], else the
//!   connection is dropped (a client that stops reading, HTTP/2 flow control included).
//! - at most [`HttpConfig::max_connections`] connections, and at most
//!   [`HttpConfig::max_connections_per_address`] from one client address (an IPv6 client by its
//!   /64): beyond either, 503 over plain HTTP; over TLS the connection is closed before the
//!   handshake (a 503 would cost the server a handshake per refused connection).
//! - heads of at most 8 KiB (HTTP/1.1: 431; HTTP/2: the header list size it announces, and
//!   hyper refuses larger ones) with at most 32 fields (431).
//! - a request body of up to 64 KiB is read and dropped, a larger one is refused with 413, and
//!   Transfer-Encoding with 400 (hyper refuses malformed or conflicting Content-Lengths with 400):
//!   a body is never read as the next request, and a refusal closes an HTTP/1.1 connection.
//! - HEAD reads no file data; a range request reads only the range. A connection holds at most
//!   [`conn::MAX_BODIES`] answers with file data at once (HTTP/2 streams beyond wait), so that
//!   streams a client does not read cannot pin more copies of segments than that in memory.
//!
//! For LL-HLS's blocking requests, a handler can wait, bounded, for a file to be published:
//! [`Published::wait_for`].

mod conn;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use self::conn::{Activity, Answer, LINGER, Transport, Verdict};
use super::store::{FileKind, Published};
use crate::runtime::TaskGroup;

const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Header fields of a request at most (HTTP/1.1; HTTP/2 is bounded by the header list size).
const MAX_HEADERS: usize = 32;
/// Concurrent streams of an HTTP/2 connection at most (the SETTINGS it announces).
pub const MAX_STREAMS: u32 = 32;
/// The default of [`HttpConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Request bodies up to this size are read and dropped; larger ones are refused.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// HTTP/2 PINGs an idle-looking connection this often while streams are open, and drops it when
/// one is not answered within [`H2_PING_TIMEOUT`].
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
    Content-Length: 0\r\nConnection: close\r\n\r\n";
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

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
    /// Serve HTTPS with this (its ALPN protocols are set here: `h2`, `http/1.1`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A running server on the plugin's shared runtime; stops when dropped: the listener and every
/// connection are tasks of one [`TaskGroup`], all aborted at once.
pub struct HttpServer {
    tasks: Arc<TaskGroup>,
    accept: tokio::task::JoinHandle<()>,
    local_addr: SocketAddr,
}

/// What every connection of a server shares.
struct Shared {
    config: HttpConfig,
    files: Arc<Published>,
    tasks: Arc<TaskGroup>,
    /// LL-HLS requests held until what they ask for exists: at most `max_connections` at once
    /// (beyond that 503 at once), so held requests cannot pile up.
    held: Arc<Semaphore>,
}

impl HttpServer {
    pub fn start(mut config: HttpConfig, files: Arc<Published>) -> std::io::Result<HttpServer> {
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
        let acceptor = config.tls.take().map(|tls| {
            let mut tls = (*tls).clone();
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let tls = Arc::new(tls);
            config.tls = Some(tls.clone());
            tokio_rustls::TlsAcceptor::from(tls)
        });
        log::debug!(
            "HTTP server listening on {local_addr} ({}; at most {max_total} connections, \
             {max_per_address} per address)",
            if acceptor.is_some() {
                "TLS: HTTP/2 and HTTP/1.1"
            } else {
                "HTTP/1.1"
            }
        );
        let limit = Arc::new(Semaphore::new(max_total));
        let per_address = Arc::new(PerAddress {
            max: max_per_address,
            open: Mutex::default(),
        });
        let tasks = Arc::new(TaskGroup::new());
        let shared = Arc::new(Shared {
            held: Arc::new(Semaphore::new(config.max_connections.max(1))),
            config,
            files,
            tasks: tasks.clone(),
        });
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
                        let shared = shared.clone();
                        let acceptor = acceptor.clone();
                        log::trace!("HTTP connection from {peer}");
                        group.spawn(async move {
                            match acceptor {
                                None => serve(stream, peer, false, shared).await,
                                Some(acceptor) => {
                                    let timeout = shared.config.request_timeout;
                                    match tokio::time::timeout(timeout, acceptor.accept(stream))
                                        .await
                                    {
                                        Ok(Ok(tls)) => {
                                            let h2 = tls.get_ref().1.alpn_protocol()
                                                == Some(b"h2".as_slice());
                                            serve(tls, peer, h2, shared).await
                                        }
                                        Ok(Err(e)) => {
                                            log::debug!("HTTP {peer}: TLS handshake failed: {e}")
                                        }
                                        Err(_) => log::debug!(
                                            "HTTP {peer}: no TLS handshake within {timeout:?}: \
                                             closed"
                                        ),
                                    }
                                }
                            }
                            log::trace!("HTTP connection from {peer} closed");
                            drop(held);
                        });
                    }
                    Err(why) if acceptor.is_some() => {
                        log::debug!("HTTP connection from {peer} closed: {why} already");
                    }
                    Err(why) => {
                        log::debug!("HTTP connection from {peer} refused with 503: {why} already");
                        group.spawn(conn::linger(stream, Some(SERVICE_UNAVAILABLE)));
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

/// Runs hyper's HTTP/2 streams as tasks of the server's group.
#[derive(Clone)]
struct GroupExecutor(Arc<TaskGroup>);

impl<F> hyper::rt::Executor<F> for GroupExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// Serves one connection (TCP, or TLS over it) with HTTP/2 or HTTP/1.1, until it closes or its
/// deadlines end it.
async fn serve<S>(stream: S, peer: SocketAddr, h2: bool, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(Transport::new(
        stream,
        activity.clone(),
        shared.tasks.clone(),
    ));
    let timeout = shared.config.request_timeout;
    let service = {
        let activity = activity.clone();
        let shared = shared.clone();
        hyper::service::service_fn(move |request| {
            let (shared, activity) = (shared.clone(), activity.clone());
            async move { Ok::<_, Infallible>(respond(request, peer, &shared, &activity).await) }
        })
    };
    if h2 {
        let mut builder =
            hyper::server::conn::http2::Builder::new(GroupExecutor(shared.tasks.clone()));
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        let conn = std::pin::pin!(builder.serve_connection(io, service));
        watch(
            conn,
            &activity,
            timeout,
            peer,
            Some(|c: Pin<&mut _>| hyper::server::conn::http2::Connection::graceful_shutdown(c)),
        )
        .await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .max_buf_size(MAX_HEADER_BYTES)
            .max_headers(MAX_HEADERS)
            .keep_alive(true);
        let conn = std::pin::pin!(builder.serve_connection(io, service));
        watch(conn, &activity, timeout, peer, None::<fn(Pin<&mut _>)>).await;
    }
}

/// Drives a connection and ends it at its deadlines ([`conn::Activity::verdict`]): HTTP/1.1
/// (no `graceful`) by dropping it (with a 408 first for a partial request); HTTP/2 with
/// `graceful` (GOAWAY), then after [`LINGER`] by dropping it.
async fn watch<F: Future<Output = hyper::Result<()>>>(
    mut conn: Pin<&mut F>,
    activity: &Activity,
    timeout: Duration,
    peer: SocketAddr,
    graceful: Option<impl FnOnce(Pin<&mut F>)>,
) {
    let mut graceful = graceful;
    let mut closing: Option<Instant> = None;
    loop {
        let wake = match closing {
            Some(at) if Instant::now() >= at => return,
            Some(at) => at,
            None => match activity.verdict(Instant::now(), timeout) {
                Verdict::Until(at) => at,
                Verdict::Stuck => {
                    log::debug!(
                        "HTTP {peer}: an answer not sent within {:?}: dropped",
                        timeout + conn::WRITE_TIMEOUT
                    );
                    return;
                }
                verdict => match graceful.take() {
                    None if verdict == Verdict::Incomplete => {
                        log::debug!("HTTP {peer}: request not complete within {timeout:?}: 408");
                        activity.say_last(REQUEST_TIMEOUT);
                        return;
                    }
                    None => {
                        log::debug!("HTTP {peer}: no request within {timeout:?}: closed");
                        return;
                    }
                    Some(graceful) => {
                        log::debug!("HTTP {peer}: no stream within {timeout:?}: GOAWAY");
                        graceful(conn.as_mut());
                        let at = Instant::now() + LINGER;
                        closing = Some(at);
                        at
                    }
                },
            },
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    log::debug!("HTTP {peer}: connection ended: {e}");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake) => {}
            // An answer began or the last one ended: the deadline moved.
            _ = activity.changed(), if closing.is_none() => {}
        }
    }
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
        FileKind::Segment | FileKind::Init | FileKind::Part
            if name.ends_with(".mp4") || name.ends_with(".m4s") =>
        {
            "video/mp4"
        }
        FileKind::Segment | FileKind::Init | FileKind::Part if name.ends_with(".aac") => {
            "audio/aac"
        }
        FileKind::Segment | FileKind::Init | FileKind::Part => "video/mp2t",
    }
}

/// Why a request is answered with an error (and an HTTP/1.1 connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    why: &'static str,
}

/// Reads and drops a request's body, refusing what [`MAX_BODY_BYTES`] and the deadline do not
/// allow.
async fn drop_body(
    headers: &header::HeaderMap,
    body: &mut Incoming,
    deadline: Instant,
) -> Result<(), Refusal> {
    let too_large = Refusal {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        why: "a request body over 64 KiB",
    };
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            why: "a request with Transfer-Encoding",
        });
    }
    // hyper has checked Content-Length: the size is known before any of the body is read.
    if body.size_hint().lower() > MAX_BODY_BYTES {
        return Err(too_large);
    }
    let mut read = 0u64;
    while !body.is_end_stream() {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
        match tokio::time::timeout_at(deadline, frame).await {
            Err(_) => {
                return Err(Refusal {
                    status: StatusCode::REQUEST_TIMEOUT,
                    why: "request body not complete within the request timeout",
                });
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(Refusal {
                    status: StatusCode::BAD_REQUEST,
                    why: "a request body that ended early or was malformed",
                });
            }
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > MAX_BODY_BYTES {
                    return Err(too_large);
                }
            }
        }
    }
    Ok(())
}

/// An answer before it becomes a hyper response.
struct Reply {
    /// Held while the body is made and sent ([`conn::MAX_BODIES`]).
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    status: StatusCode,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The Content-Length: the body's, or (HEAD) the one GET would have.
    length: usize,
    body: Bytes,
    /// A part being written, streamed until it is complete (no Content-Length: chunked over
    /// HTTP/1.1), with its deadline and its permit of a held request.
    growing: Option<(
        Arc<crate::hls::growing::Growing>,
        Instant,
        tokio::sync::OwnedSemaphorePermit,
    )>,
}

impl Reply {
    fn empty(status: StatusCode) -> Reply {
        Reply {
            permit: None,
            status,
            headers: Vec::new(),
            length: 0,
            body: Bytes::new(),
            growing: None,
        }
    }

    fn header(mut self, name: header::HeaderName, value: &str) -> Reply {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    fn cors(self) -> Reply {
        self.header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
            .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD, OPTIONS")
            .header(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Range, Origin, Accept",
            )
    }
}

/// Answers one request (of either protocol) and logs it.
async fn respond(
    request: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
    activity: &Arc<Activity>,
) -> Response<Answer> {
    let (answering, awaited_since) = activity.begin();
    let version = request.version();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let deadline = awaited_since + shared.config.request_timeout;
    let (parts, mut body) = request.into_parts();
    let (reply, close) = match drop_body(&parts.headers, &mut body, deadline).await {
        Ok(()) => {
            let reply = handle(&method, &path, &query, range.as_deref(), shared, activity).await;
            (reply, false)
        }
        Err(refusal) => {
            log::debug!(
                "HTTP {peer}: {method} {path}: {}: {}",
                refusal.why,
                refusal.status.as_u16()
            );
            (Reply::empty(refusal.status), true)
        }
    };
    let (streamed, bytes) = match &reply.growing {
        Some((part, ..)) => ("streamed as it is written, so far ", part.len()),
        None => ("", reply.body.len()),
    };
    log::debug!(
        "HTTP {peer}: {method} {path} {version:?} (Range {}) -> {}, {streamed}{bytes} bytes",
        range.as_deref().unwrap_or("none"),
        reply.status.as_u16(),
    );
    let Reply {
        permit,
        status,
        headers,
        length,
        body: data,
        growing,
    } = reply;
    // An HTTP/2 request body not read to its end (a refusal) is dropped with the answer: h2
    // resets the stream with NO_ERROR once the answer is complete (RFC 9113 §8.1), with CANCEL
    // when the body is dropped before.
    let unread = (version == Version::HTTP_2).then_some(body);
    let streamed = growing.is_some();
    let answer = match growing {
        Some((part, deadline, held)) => {
            Answer::growing(part, deadline, held, answering, permit, unread)
        }
        None => Answer::new(data, answering, permit, unread),
    };
    let mut response = Response::new(answer);
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (name, value) in headers {
        map.append(name, value);
    }
    if !streamed {
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    // HTTP/2 has no Connection header (RFC 9113 §8.2.2): a refused stream does not end the
    // connection.
    if close && version < Version::HTTP_2 {
        map.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The LL-HLS directives of a playlist request's query (RFC 8216bis §6.2.5): `_HLS_msn`,
/// `_HLS_part`, `_HLS_skip`. Other parameters are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Directives {
    pub msn: Option<u64>,
    pub part: Option<u64>,
    pub skip: bool,
}

/// None for a malformed directive, or `_HLS_part` without `_HLS_msn` (400, §6.2.5.2).
pub fn directives(query: &str) -> Option<Directives> {
    let mut d = Directives::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "_HLS_msn" => d.msn = Some(v.parse().ok()?),
            "_HLS_part" => d.part = Some(v.parse().ok()?),
            "_HLS_skip" => match v {
                "YES" | "v2" => d.skip = true,
                _ => return None,
            },
            _ => {}
        }
    }
    if d.part.is_some() && d.msn.is_none() {
        return None;
    }
    Some(d)
}

/// How long an LL-HLS request is held at most: three target durations (RFC 8216bis §6.2.5.2
/// advises 503 after that), within the request timeout (so the answer keeps its deadline).
fn hold_bound(target_s: u64, request_timeout: Duration) -> Duration {
    Duration::from_secs(3 * target_s.max(1)).min(request_timeout)
}

/// Holds an LL-HLS request (blocking reload, preload-hinted part) until `name` is what it asks
/// for; the reply to send instead when that does not happen (503: too many held, or not in
/// time; 400: too far ahead), None when it is there.
async fn hold(name: &str, directives: Directives, shared: &Shared) -> Option<Reply> {
    let refuse = |status: StatusCode, why: &str| {
        log::debug!("LL-HLS {name}: {why}: {}", status.as_u16());
        Some(Reply::empty(status).cors())
    };
    let files = &shared.files;
    let timeout = shared.config.request_timeout;
    if let Some(msn) = directives.msn {
        // A playlist that does not offer blocking reloads is answered as it is.
        let position = files.position(name)?;
        if position.has(msn, directives.part) {
            return None;
        }
        if position.too_far(msn, directives.part) {
            return refuse(StatusCode::BAD_REQUEST, "too far ahead of the playlist");
        }
        let Ok(_permit) = shared.held.clone().try_acquire_owned() else {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many requests held");
        };
        let bound = hold_bound(position.target_s, timeout);
        log::trace!(
            "LL-HLS {name}: holding for segment {msn} part {:?} (at most {bound:?})",
            directives.part
        );
        if !files
            .wait_for_position(name, msn, directives.part, bound)
            .await
        {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "not there in time");
        }
        return None;
    }
    if files.get(name).is_none() && (files.is_hinted(name) || files.growing(name).is_some()) {
        let Ok(_permit) = shared.held.clone().try_acquire_owned() else {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many requests held");
        };
        // The hint's playlist's target: the part is due within a part duration.
        let bound = hold_bound(1, timeout);
        log::trace!("LL-HLS {name}: preload-hinted part, holding until written");
        if files.wait_for(name, bound).await.is_none() {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "hinted part not written in time",
            );
        }
    }
    None
}

/// A GET for a part that is preload-hinted or being written: held until its first bytes are
/// known (or its file), then answered with them and the rest as they are written. None when the
/// file is there (or comes first) or the name is no such part: it is served as any file.
async fn stream_part(name: &str, shared: &Shared, activity: &Activity) -> Option<Reply> {
    use crate::hls::store::HintedPart;
    let files = &shared.files;
    if files.get(name).is_some() {
        return None;
    }
    let hinted = files.hinted_by(name);
    if hinted.is_none() && files.growing(name).is_none() {
        return None;
    }
    let refuse = |status: StatusCode, why: &str| {
        log::debug!("LL-HLS {name}: {why}: {}", status.as_u16());
        Some(Reply::empty(status).cors())
    };
    let Ok(held) = shared.held.clone().try_acquire_owned() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many requests held");
    };
    // A part is complete within a target duration of its hint: three of them at most, as for
    // blocking reloads.
    let bound = hold_bound(
        hinted.map_or(1, |p| p.target_s),
        shared.config.request_timeout,
    );
    let deadline = Instant::now() + bound;
    let part = match files.wait_for_part(name, bound).await {
        None => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "hinted part not begun in time",
            );
        }
        Some(HintedPart::File(..)) => return None,
        Some(HintedPart::Growing(part)) => part,
    };
    log::trace!(
        "LL-HLS {name}: streaming the part as it is written ({} bytes so far)",
        part.len()
    );
    let permit = activity.body_permit().await;
    let kind = crate::hls::store::FileKind::Part;
    Some(Reply {
        permit,
        growing: Some((part, deadline, held)),
        ..Reply::empty(StatusCode::OK)
            .cors()
            .header(header::CONTENT_TYPE, content_type(kind, name))
            .header(header::CACHE_CONTROL, "public, max-age=86400")
    })
}

async fn handle(
    method: &Method,
    path: &str,
    query: &str,
    range: Option<&str>,
    shared: &Shared,
    activity: &Activity,
) -> Reply {
    match *method {
        Method::OPTIONS => {
            return Reply::empty(StatusCode::NO_CONTENT)
                .cors()
                .header(header::ACCESS_CONTROL_MAX_AGE, "86400")
                .header(header::ALLOW, "GET, HEAD, OPTIONS");
        }
        Method::GET | Method::HEAD => {}
        _ => {
            return Reply::empty(StatusCode::METHOD_NOT_ALLOWED)
                .cors()
                .header(header::ALLOW, "GET, HEAD, OPTIONS");
        }
    }
    let name = match target(path) {
        Target::Name(n) => n,
        Target::BadPath => return Reply::empty(StatusCode::BAD_REQUEST).cors(),
    };
    let not_found = || Reply::empty(StatusCode::NOT_FOUND).cors();
    let Some(directives) = directives(query) else {
        return Reply::empty(StatusCode::BAD_REQUEST).cors();
    };
    // A GET of the whole preload-hinted part: answered at once, with its bytes as they are
    // written (HEAD and ranges wait for the file in `hold`).
    if *method == Method::GET
        && range.is_none()
        && directives.msn.is_none()
        && let Some(reply) = stream_part(&name, shared, activity).await
    {
        return reply;
    }
    if let Some(refusal) = hold(&name, directives, shared).await {
        return refusal;
    }
    // A delta update for `_HLS_skip` when the writer made one (with the playlist).
    let delta = crate::hls::writer::delta_location(&name);
    let name = if directives.skip && shared.files.position(&delta).is_some() {
        delta
    } else {
        name
    };
    let Some((file, kind)) = shared.files.get(&name) else {
        return not_found();
    };
    let range = range.map(str::to_owned);
    let with_body = *method == Method::GET;
    let permit = match with_body {
        true => activity.body_permit().await,
        false => None,
    };
    let read = move || read_file(&file, range.as_deref(), with_body);
    let Ok(Ok((len, range, data))) = tokio::task::spawn_blocking(read).await else {
        return not_found();
    };
    let cache = match kind {
        FileKind::Playlist => shared.config.playlist_cache_control.as_str(),
        FileKind::Segment | FileKind::Init | FileKind::Part => "public, max-age=86400",
        FileKind::Key => "private, max-age=86400",
    };
    let body = data.map(Bytes::from).unwrap_or_default();
    let mut permit = permit;
    let mut reply = |status, length| Reply {
        permit: permit.take(),
        length,
        body: body.clone(),
        ..Reply::empty(status)
            .cors()
            .header(header::CONTENT_TYPE, content_type(kind, &name))
            .header(header::CACHE_CONTROL, cache)
            .header(header::ACCEPT_RANGES, "bytes")
    };
    match range {
        ByteRange::Whole => reply(StatusCode::OK, len),
        ByteRange::Part(start, end) => reply(StatusCode::PARTIAL_CONTENT, end + 1 - start)
            .header(header::CONTENT_RANGE, &format!("bytes {start}-{end}/{len}")),
        ByteRange::Unsatisfiable => Reply {
            length: 0,
            ..reply(StatusCode::RANGE_NOT_SATISFIABLE, 0)
        }
        .header(header::CONTENT_RANGE, &format!("bytes */{len}")),
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

    /// A wait for a file ends when the output publishes it, not before, and at its bound when
    /// nothing is published.
    #[test]
    fn a_request_can_wait_for_a_file_to_be_published() {
        use crate::hls::store::{DirStore, Job, Output, OutputConfig};
        let dir = std::env::temp_dir().join(format!("hls-http-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let published = Arc::new(Published::default());
        let output = Output::start(
            Arc::new(DirStore),
            OutputConfig::default(),
            Some(published.clone()),
            Box::new(|_| {}),
        );
        let put = |name: &str| {
            let location = dir.join(name).to_string_lossy().into_owned();
            let data = Arc::new(b"data".to_vec());
            let kind = FileKind::Segment;
            output.submit(Job::Put {
                location,
                kind,
                data,
            })
        };
        let runtime = crate::runtime::handle();
        put("now.ts").unwrap();
        assert!(output.flush(Duration::from_secs(10)));
        let t0 = std::time::Instant::now();
        let found = runtime.block_on(published.wait_for("now.ts", Duration::from_secs(5)));
        // At once, not after the 5 s timeout (1 s leaves room for a loaded machine).
        assert!(found.is_some() && t0.elapsed() < Duration::from_secs(1));

        // Timed from before the spawn: the task may start late on a loaded machine.
        let t0 = Instant::now();
        let waiter = {
            let published = published.clone();
            runtime.spawn(async move {
                let found = published.wait_for("later.ts", Duration::from_secs(5)).await;
                (found, t0.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "answered before the file exists");
        put("later.ts").unwrap();
        let (found, took) = runtime.block_on(waiter).unwrap();
        assert_eq!(found.unwrap().0, dir.join("later.ts"));
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );

        let t0 = std::time::Instant::now();
        let none = runtime.block_on(published.wait_for("never.ts", Duration::from_millis(300)));
        assert!(none.is_none());
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        drop(output);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The watchdog follows the connection: an answer that outlasts the first deadline moves it,
    /// and the end of that answer moves it back (to the request timeout after the answer, not
    /// the answer's own longer deadline).
    #[test]
    fn the_watchdog_follows_answers() {
        let runtime = crate::runtime::handle();
        let timeout = Duration::from_millis(300);
        let activity = Activity::new();
        let peer: SocketAddr = ([127, 0, 0, 1], 9).into();
        let watched = {
            let activity = activity.clone();
            runtime.spawn(async move {
                let conn = std::pin::pin!(std::future::pending::<hyper::Result<()>>());
                let t0 = Instant::now();
                watch(conn, &activity, timeout, peer, None::<fn(Pin<&mut _>)>).await;
                t0.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let (answering, _) = activity.begin();
        // Past the first deadline, with the answer still being sent.
        std::thread::sleep(Duration::from_millis(400));
        assert!(!watched.is_finished(), "closed while answering");
        drop(answering);
        let took = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), watched)
                .await
                .expect("closed within 5 s")
                .unwrap()
        });
        assert!(
            took >= Duration::from_millis(750) && took < Duration::from_millis(1500),
            "closed {took:?} after it began"
        );
    }

    /// What hyper decides about a request's head and body (the hand-written server's rules,
    /// checked on loopback against a server with nothing published): the status each gets.
    #[test]
    fn request_heads_and_their_bodies() {
        use std::io::Write;
        let server = HttpServer::start(
            HttpConfig {
                address: ([127, 0, 0, 1], 0).into(),
                max_connections: 16,
                max_connections_per_address: 16,
                request_timeout: Duration::from_secs(5),
                playlist_cache_control: "no-cache".into(),
                tls: None,
            },
            Arc::new(Published::default()),
        )
        .unwrap();
        let status = |request: &str| -> String {
            let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            let answer = String::from_utf8_lossy(&answer);
            answer.get(..12).unwrap_or(&answer).to_owned()
        };
        let close = "Connection: close\r\n";
        assert_eq!(
            status(&format!("GET /p.m3u8 HTTP/1.1\r\n{close}\r\n")),
            "HTTP/1.1 404"
        );
        assert_eq!(
            status(&format!(
                "GET /p.m3u8 HTTP/1.1\r\nContent-Length: 3\r\n{close}\r\nabc"
            )),
            "HTTP/1.1 404"
        );
        let big = format!("X-Big: {}\r\n", "b".repeat(9000));
        let many: String = (0..40).map(|i| format!("X-{i}: a\r\n")).collect();
        for (head, expected) in [
            ("Content-Length: 65537\r\n", "HTTP/1.1 413"),
            (
                "Content-Length: 99999999999999999999999\r\n",
                "HTTP/1.1 400",
            ),
            ("Transfer-Encoding: chunked\r\n", "HTTP/1.1 400"),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "HTTP/1.1 400",
            ),
            ("Content-Length: 5\r\nContent-Length: 6\r\n", "HTTP/1.1 400"),
            ("Content-Length: +5\r\n", "HTTP/1.1 400"),
            ("Content-Length: -1\r\n", "HTTP/1.1 400"),
            ("Content-Length: 5, 5\r\n", "HTTP/1.1 400"),
            (&big, "HTTP/1.1 431"),
            (&many, "HTTP/1.1 431"),
        ] {
            let request = format!("GET /p.m3u8 HTTP/1.1\r\n{head}\r\n");
            assert_eq!(status(&request), expected, "{head:.60}");
        }
        assert_eq!(status("\x01\x02 garbage\r\n\r\n"), "HTTP/1.1 400");
    }

    #[test]
    fn ll_hls_directives() {
        let d = |q| directives(q);
        assert_eq!(d(""), Some(Directives::default()));
        assert_eq!(
            d("_HLS_msn=12&_HLS_part=3&x=1"),
            Some(Directives {
                msn: Some(12),
                part: Some(3),
                skip: false
            })
        );
        assert_eq!(d("_HLS_skip=YES").map(|d| d.skip), Some(true));
        assert_eq!(d("_HLS_skip=v2").map(|d| d.skip), Some(true));
        for bad in [
            "_HLS_part=1",
            "_HLS_msn=-1",
            "_HLS_msn=",
            "_HLS_skip=NO",
            "_HLS_msn=99999999999999999999",
        ] {
            assert_eq!(d(bad), None, "{bad}");
        }
        assert_eq!(
            hold_bound(1, Duration::from_secs(10)),
            Duration::from_secs(3)
        );
        assert_eq!(
            hold_bound(6, Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn mime_types() {
        assert_eq!(
            content_type(FileKind::Playlist, "p.m3u8"),
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(content_type(FileKind::Segment, "s.ts"), "video/mp2t");
        assert_eq!(content_type(FileKind::Init, "init00000.mp4"), "video/mp4");
        assert_eq!(
            content_type(FileKind::Key, "k.key"),
            "application/octet-stream"
        );
    }
}
