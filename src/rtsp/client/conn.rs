//! One RTSP connection seen from the client: requests matched to responses by CSeq, interleaved
//! data and server requests (RFC 2326 10: ANNOUNCE, GET_PARAMETER, OPTIONS, REDIRECT) handed to
//! a callback.
//!
//! Specifications: RFC 2326 §10.12 (interleaved data), §12.17 (CSeq matching), §10 (requests from
//! the server: §10.1 OPTIONS, §10.3 ANNOUNCE, §10.8 GET_PARAMETER, §10.10 REDIRECT); RFC 7826 §14,
//! §18.20; RFC 7826 §19.1 and RFC 8446 (`rtsps`: RTSP inside TLS, with rustls); Apple's
//! "Tunnelling RTSP and RTP through HTTP" (the HTTP tunnel, see [`crate::rtsp::tunnel`]).
//!
//! The messages travel over one TCP connection, in clear or inside TLS, or through the HTTP
//! tunnel: received on the GET connection, sent base64-encoded on the POST connection, each of
//! them in clear or inside TLS. TLS state is shared by both directions of a connection: the
//! reader decrypts what it read under its lock, a writer encrypts under it while holding the
//! write lock, so that records leave in the order they were sealed.
//!
//! Reading is done by a thread of the connection's own, blocked in `read` on the socket: per
//! burst from the server one wake-up and one system call, where an async reader pays an epoll
//! round trip and the runtime's bookkeeping besides. The callback runs on that thread and may
//! do the work of the data there (rtspsrc2 pushes it downstream, as a source's streaming
//! thread does), so no second thread has to be woken per burst.
//!
//! That work may block: a paused sink holds the pushing thread, a full queue downstream too.
//! Meanwhile the socket also carries the answers to requests (the very PAUSE that paused the
//! pipeline waits for its answer). So while the reader is inside the callback and a request
//! waits, a standby reader reads in its place: responses reach their waiters, server requests
//! are answered, and what else it reads is kept, bounded, for the reader to hand on afterwards
//! in order. The standby reader runs on the shared runtime's blocking pool only for as long as
//! that lasts, so a connection has one thread of its own: the reader.

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rtsp_types::{Method, Request, Response, StatusCode, Version, headers};
use tokio::sync::oneshot;

use super::{ClientError, redact_url};
use crate::rtsp::codec::{self, Decoder, Frame, Limits};
use crate::rtsp::tunnel;

/// What the server sends besides responses.
#[derive(Debug)]
pub enum Incoming {
    Interleaved {
        channel: u8,
        data: Bytes,
    },
    /// A request from the server; it has already been answered 200 OK.
    Request(Request<Vec<u8>>),
    /// Everything decoded from one read has been handed over: a point to pass on what was
    /// gathered from it.
    ReadDone,
    /// Interleaved packets read while the reader was blocked were dropped: more than
    /// [`BACKLOG_BYTES`] piled up.
    Dropped(u64),
    /// The connection ended (EOF, error, or garbage past recovery).
    Closed(String),
}

/// Interleaved data the standby reader keeps while the reader is blocked, at most.
pub const BACKLOG_BYTES: usize = 8 << 20;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 64 * 1024;

/// Who waits for what, and what the reader is doing: one lock, so that the standby reader's
/// condition (a request waits while the reader is inside the callback) is seen by both sides.
#[derive(Default)]
struct Control {
    pending: HashMap<u32, oneshot::Sender<Response<Vec<u8>>>>,
    /// The reader is inside the callback.
    delivering: bool,
    /// The connection is being dropped, or the standby reader saw its end.
    stopped: bool,
    /// A standby reader is running (on the shared runtime's blocking pool).
    standby_running: bool,
}

impl Control {
    fn needs_standby(&self) -> bool {
        !self.stopped && self.delivering && !self.pending.is_empty()
    }
}

/// What the standby reader read for the reader.
#[derive(Default)]
struct Backlog {
    items: VecDeque<Incoming>,
    bytes: usize,
    dropped: u64,
}

/// What carries the RTSP messages to and from the server.
#[derive(Debug, Clone, Default)]
pub struct Carrier {
    /// TLS with this configuration (`rtsps`); the server's name is the host connected to.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The HTTP tunnel (`rtsph`, rtspsrc's `protocols=http`): the target of its GET and POST
    /// (the URL's path and query).
    pub tunnel: Option<String>,
}

/// The TLS state of one TCP connection, shared by its reader and its writer.
type Tls = Arc<Mutex<rustls::ClientConnection>>;

/// Where and how bytes are sent: a socket, maybe inside TLS, maybe the tunnel's base64.
struct Writer {
    socket: TcpStream,
    tls: Option<Tls>,
    base64: bool,
}

impl Writer {
    /// `plain` as it goes on the wire, with the TLS records rustls has pending (so sealing
    /// nothing flushes them).
    fn seal(&self, plain: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let plain = if self.base64 {
            tunnel::encode(&plain)
        } else {
            plain
        };
        let Some(tls) = &self.tls else {
            return Ok(plain);
        };
        let mut tls = tls.lock().unwrap();
        tls.writer().write_all(&plain).map_err(write_error)?;
        let mut out = Vec::with_capacity(plain.len() + 64);
        while tls.wants_write() {
            tls.write_tls(&mut out).map_err(write_error)?;
        }
        Ok(out)
    }

    /// Seals and sends `plain`, blocking (bounded by the socket's send timeout).
    fn send(&self, plain: Vec<u8>) -> Result<(), ClientError> {
        let bytes = self.seal(plain)?;
        (&self.socket).write_all(&bytes).map_err(write_error)
    }
}

/// Reads once from `socket` and hands what came, in clear, to `out`. Ok: whether TLS has
/// records to send back (the answer to a key update); Err: the connection is over.
fn read_clear(
    socket: &TcpStream,
    tls: Option<&Tls>,
    buf: &mut [u8],
    mut out: impl FnMut(&[u8]),
) -> Result<bool, String> {
    let n = match (&*socket).read(buf) {
        Ok(0) => return Err("the server closed the connection".into()),
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(false),
        Err(e) => return Err(format!("reading from the server: {e}")),
    };
    let Some(tls) = tls else {
        out(&buf[..n]);
        return Ok(false);
    };
    let mut tls = tls.lock().unwrap();
    let mut input = &buf[..n];
    let mut plain = [0u8; 16 * 1024];
    while !input.is_empty() {
        tls.read_tls(&mut input)
            .map_err(|e| format!("TLS: reading from the server: {e}"))?;
        let state = tls
            .process_new_packets()
            .map_err(|e| format!("TLS: {}", crate::net::tls::describe(&e)))?;
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            let got = tls
                .reader()
                .read(&mut plain[..left.min(16 * 1024)])
                .map_err(|e| format!("TLS: {e}"))?;
            if got == 0 {
                break;
            }
            out(&plain[..got]);
            left -= got;
        }
    }
    Ok(tls.wants_write())
}

/// The reading side: whoever holds it reads.
struct ReadSide {
    socket: TcpStream,
    tls: Option<Tls>,
    /// Where the reader's own TLS records go when the tunnel's GET connection is its own
    /// (else through the connection's writer).
    own_writer: Option<Writer>,
    decoder: Decoder,
    buf: Vec<u8>,
}

struct Shared {
    control: Mutex<Control>,
    read: Mutex<ReadSide>,
    backlog: Mutex<Backlog>,
    /// Blocking, with the connection's timeout as its send timeout. An async lock, so that a
    /// write that cannot finish at once keeps it while it goes on off the runtime.
    write: Arc<tokio::sync::Mutex<Writer>>,
    /// Who logs (the element's name, the `id` of log records) and the server's address.
    name: String,
    peer: SocketAddr,
    /// For shutting the sockets (two for the tunnel) down while others use them.
    sockets: Vec<TcpStream>,
    /// Set before the socket is shut down on drop: nothing more is handed to the callback.
    stop: AtomicBool,
    timeout: Duration,
}

impl Shared {
    /// Writes from a thread outside the runtime (the reader's, the standby reader's).
    fn write_all(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.write.blocking_lock().send(bytes)
    }

    /// One read from the socket, decoded: responses go to their waiters, requests are
    /// answered, the rest lands in `out`. Err: the connection is over.
    /// The waiter of the only request outstanding, for a response without CSeq; `None` when
    /// no request or more than one is outstanding.
    fn take_only_pending(
        &self,
        resp: &Response<Vec<u8>>,
    ) -> Option<oneshot::Sender<Response<Vec<u8>>>> {
        let mut c = self.control.lock().unwrap();
        if c.pending.len() != 1 {
            return None;
        }
        let cseq = *c.pending.keys().next()?;
        log::debug!(
            id = self.name.as_str();
            "{}: a response ({} {}) without CSeq taken as the answer to CSeq {cseq}, the only request outstanding",
            self.peer,
            u16::from(resp.status()),
            resp.reason_phrase()
        );
        c.pending.remove(&cseq)
    }

    fn read_once(&self, side: &mut ReadSide, out: &mut Vec<Incoming>) -> Result<(), String> {
        let ReadSide {
            socket,
            tls,
            own_writer,
            decoder,
            buf,
        } = side;
        if read_clear(socket, tls.as_ref(), buf, |plain| decoder.extend(plain))? {
            match own_writer {
                Some(w) => w.send(Vec::new()),
                None => self.write_all(Vec::new()),
            }
            .map_err(|e| e.to_string())?;
        }
        loop {
            match decoder.decode() {
                Ok(None) => return Ok(()),
                Ok(Some(Frame::Interleaved { channel, data })) => {
                    out.push(Incoming::Interleaved { channel, data });
                }
                Ok(Some(Frame::Response(resp))) => {
                    let cseq = resp
                        .header(&headers::CSEQ)
                        .and_then(|v| v.as_str().trim().parse::<u32>().ok());
                    let waiter = match cseq {
                        Some(c) => self.control.lock().unwrap().pending.remove(&c),
                        // Liberal in what we accept: a response without a (number for) CSeq
                        // answers the request outstanding when there is exactly one (ffmpeg
                        // 5.1's listener answers TEARDOWN while recording with a 501 without
                        // CSeq); with none or several it answers nothing we can tell.
                        None => self.take_only_pending(&resp),
                    };
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(resp);
                        }
                        None => log::warn!(
                            id = self.name.as_str();
                            "{}: ignoring a response ({} {}) with CSeq {:?}, which answers no request waiting",
                            self.peer,
                            u16::from(resp.status()),
                            resp.reason_phrase(),
                            cseq
                        ),
                    }
                }
                Ok(Some(Frame::Request(req))) => {
                    log::debug!(
                        id = self.name.as_str();
                        "{}: the server sent {:?} {} (CSeq {})",
                        self.peer,
                        req.method(),
                        req.request_uri().map_or("*".into(), |u| redact_url(u.as_str()).into_owned()),
                        req.header(&headers::CSEQ).map_or("-", |v| v.as_str())
                    );
                    log_headers(&self.name, "<", req.headers());
                    let status = match req.method() {
                        Method::Options
                        | Method::GetParameter
                        | Method::SetParameter
                        | Method::Announce
                        | Method::Redirect => StatusCode::Ok,
                        _ => StatusCode::NotImplemented,
                    };
                    let mut b = Response::builder(Version::V1_0, status);
                    if let Some(c) = req.header(&headers::CSEQ) {
                        b = b.header(headers::CSEQ, c.as_str());
                    }
                    let mut bytes = Vec::new();
                    codec::encode_response(&b.build(Vec::new()), &mut bytes);
                    self.write_all(bytes).map_err(|e| e.to_string())?;
                    if status == StatusCode::Ok {
                        out.push(Incoming::Request(req));
                    }
                }
                Err(e) if e.is_fatal() => {
                    return Err(format!("unreadable data from the server: {e}"));
                }
                // A garbled message is skipped; the request it answered times out.
                Err(e) => log::warn!(
                    id = self.name.as_str();
                    "{}: skipping a garbled message: {e}",
                    self.peer
                ),
            }
        }
    }

    /// No more reading: waiters learn that no answer is coming.
    fn close(&self) {
        let mut c = self.control.lock().unwrap();
        c.stopped = true;
        c.pending.clear();
    }

    /// Starts a standby reader when one is needed and none runs. Called with the control lock
    /// held, as the standby reader decides under it to end, so that no need goes unseen.
    fn start_standby(self: &Arc<Self>, c: &mut Control) {
        if c.needs_standby() && !c.standby_running {
            c.standby_running = true;
            let shared = self.clone();
            crate::runtime::handle().spawn_blocking(move || shared.standby());
        }
    }

    fn set_delivering(self: &Arc<Self>, delivering: bool) {
        let mut c = self.control.lock().unwrap();
        c.delivering = delivering;
        self.start_standby(&mut c);
    }

    fn reader(self: &Arc<Self>, mut on_incoming: impl FnMut(Incoming)) {
        let mut items = Vec::new();
        loop {
            {
                let mut side = self.read.lock().unwrap();
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                // What the standby thread read comes before anything read now.
                let mut backlog = self.backlog.lock().unwrap();
                if backlog.dropped > 0 {
                    items.push(Incoming::Dropped(std::mem::take(&mut backlog.dropped)));
                }
                items.extend(backlog.items.drain(..));
                backlog.bytes = 0;
                drop(backlog);
                if items.is_empty()
                    && let Err(reason) = self.read_once(&mut side, &mut items)
                {
                    items.push(Incoming::Closed(reason));
                }
            }
            self.set_delivering(true);
            for item in items.drain(..) {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                if let Incoming::Closed(_) = item {
                    self.close();
                    on_incoming(item);
                    return;
                }
                on_incoming(item);
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            on_incoming(Incoming::ReadDone);
            self.set_delivering(false);
        }
    }

    /// Reads while the reader is held and requests wait; ends as soon as either is no longer so.
    fn standby(&self) {
        let mut got = Vec::new();
        loop {
            {
                let mut c = self.control.lock().unwrap();
                if !c.needs_standby() {
                    c.standby_running = false;
                    return;
                }
            }
            let mut side = self.read.lock().unwrap();
            // The reader may have come back meanwhile (then it reads itself).
            if !self.control.lock().unwrap().needs_standby() {
                continue;
            }
            let result = self.read_once(&mut side, &mut got);
            let mut backlog = self.backlog.lock().unwrap();
            for item in got.drain(..) {
                if let Incoming::Interleaved { data, .. } = &item {
                    if backlog.bytes + data.len() > BACKLOG_BYTES {
                        backlog.dropped += 1;
                        continue;
                    }
                    backlog.bytes += data.len();
                }
                backlog.items.push_back(item);
            }
            if let Err(reason) = result {
                backlog.items.push_back(Incoming::Closed(reason));
                drop(backlog);
                self.close();
                self.control.lock().unwrap().standby_running = false;
                return;
            }
        }
    }
}

fn write_error(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::Timeout("writing to the server".into())
        }
        _ => ClientError::io("writing to the server", &e),
    }
}

/// Writes what the socket takes without waiting; returns how much that was (less than all
/// only when its send buffer is full).
#[cfg(target_os = "linux")]
fn write_now(socket: &TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd;
    let mut sent = 0;
    while sent < bytes.len() {
        match send(
            socket.as_raw_fd(),
            &bytes[sent..],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(sent)
}

/// Elsewhere every write goes to the blocking pool.
#[cfg(not(target_os = "linux"))]
fn write_now(_socket: &TcpStream, _bytes: &[u8]) -> std::io::Result<usize> {
    Ok(0)
}

/// `socket` made blocking, with `timeout` for sending.
fn blocking(socket: TcpStream, timeout: Duration) -> std::io::Result<TcpStream> {
    socket.set_nonblocking(false)?;
    let _ = socket.set_nodelay(true);
    socket.set_write_timeout(Some(timeout))?;
    Ok(socket)
}

/// The connection's sockets once set up.
struct Wires {
    /// What the reader reads, and its TLS.
    read: (TcpStream, Option<Tls>),
    /// The tunnel's GET connection, for the reader's own TLS records.
    own_writer: Option<Writer>,
    write: Writer,
    /// What was read past the tunnel's HTTP answer, in clear: the start of the RTSP stream.
    early: Vec<u8>,
}

impl Wires {
    fn plain(socket: TcpStream) -> std::io::Result<Wires> {
        Ok(Wires {
            read: (socket.try_clone()?, None),
            own_writer: None,
            write: Writer {
                socket,
                tls: None,
                base64: false,
            },
            early: Vec::new(),
        })
    }
}

/// TLS and the HTTP tunnel, set up on a blocking thread (every read bounded by `timeout`).
struct Setup {
    carrier: Carrier,
    host: String,
    /// `host:port`, the tunnel's Host header.
    authority: String,
    user_agent: String,
    name: String,
    timeout: Duration,
}

impl Setup {
    fn run(self, socket: TcpStream) -> Result<Wires, ClientError> {
        let io = |e: std::io::Error| ClientError::io("setting up the connection", &e);
        socket.set_read_timeout(Some(self.timeout)).map_err(io)?;
        let tls = self.secure(&socket)?;
        let Some(target) = &self.carrier.tunnel else {
            socket.set_read_timeout(None).map_err(io)?;
            return Ok(Wires {
                read: (socket.try_clone().map_err(io)?, tls.clone()),
                own_writer: None,
                write: Writer {
                    socket,
                    tls,
                    base64: false,
                },
                early: Vec::new(),
            });
        };
        let peer = socket.peer_addr().map_err(io)?;
        let cookie = tunnel::new_cookie();
        let (get, early) = self.open_get(socket, tls, target, &cookie)?;
        // The POST goes to the address the GET reached: the same server behind any name.
        let post = TcpStream::connect_timeout(&peer, self.timeout)
            .map_err(|e| ClientError::io(format!("opening the tunnel's POST to {peer}"), &e))?;
        let post = blocking(post, self.timeout).map_err(io)?;
        post.set_read_timeout(Some(self.timeout)).map_err(io)?;
        let tls = self.secure(&post)?;
        let mut post = Writer {
            socket: post,
            tls,
            base64: false,
        };
        let request = tunnel::post_request(target, &self.authority, &cookie, &self.user_agent);
        post.send(request.into_bytes())?;
        post.base64 = true;
        log::debug!(id = self.name.as_str(); "{peer}: HTTP tunnel open (GET and POST to {target})");
        get.socket.set_read_timeout(None).map_err(io)?;
        Ok(Wires {
            read: (get.socket.try_clone().map_err(io)?, get.tls.clone()),
            own_writer: Some(get),
            write: post,
            early,
        })
    }

    /// Sends the tunnel's GET and reads the head of its answer: the GET connection and the
    /// clear bytes read past the head.
    fn open_get(
        &self,
        socket: TcpStream,
        tls: Option<Tls>,
        target: &str,
        cookie: &str,
    ) -> Result<(Writer, Vec<u8>), ClientError> {
        let get = Writer {
            socket,
            tls,
            base64: false,
        };
        let request = tunnel::get_request(target, &self.authority, cookie, &self.user_agent);
        get.send(request.into_bytes())?;
        let mut head = Vec::new();
        let mut buf = vec![0; 4096];
        loop {
            if let Some(len) = tunnel::parse_get_response(&head)? {
                return Ok((get, head.split_off(len)));
            }
            read_clear(&get.socket, get.tls.as_ref(), &mut buf, |b| {
                head.extend_from_slice(b)
            })
            .map_err(|e| ClientError::Closed(format!("opening the HTTP tunnel: {e}")))?;
        }
    }

    /// The TLS handshake on `socket`, when the carrier asks for TLS.
    fn secure(&self, socket: &TcpStream) -> Result<Option<Tls>, ClientError> {
        let Some(config) = &self.carrier.tls else {
            return Ok(None);
        };
        let host = self.host.as_str();
        let fail = |e: &rustls::Error| {
            log::debug!(id = self.name.as_str(); "{host}: TLS refused: {e}");
            ClientError::Tls {
                host: host.to_owned(),
                reason: crate::net::tls::describe(e),
                certificate: matches!(e, rustls::Error::InvalidCertificate(_)),
            }
        };
        let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::Protocol(format!("'{host}' is no TLS server name: {e}")))?;
        let mut tls =
            rustls::ClientConnection::new(config.clone(), server_name).map_err(|e| fail(&e))?;
        // Sealed records are taken at once (Writer::seal): no bound is needed.
        tls.set_buffer_limit(None);
        let mut io = socket;
        while tls.is_handshaking() {
            tls.complete_io(&mut io)
                .map_err(|e| match crate::net::tls::rustls_error(&e) {
                    Some(e) => fail(e),
                    None if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        ClientError::Timeout(format!("TLS handshake with {host}"))
                    }
                    None => ClientError::io(format!("TLS handshake with {host}"), &e),
                })?;
        }
        log::debug!(
            id = self.name.as_str();
            "{host}: TLS established: {:?}, {:?}",
            tls.protocol_version(),
            tls.negotiated_cipher_suite().map(|s| s.suite())
        );
        Ok(Some(Arc::new(Mutex::new(tls))))
    }
}

/// Writes a publisher's packets on the thread that has them (the streaming thread), sparing
/// the hand-over to the network thread while the socket takes them at once.
#[derive(Clone)]
pub struct DirectWriter {
    shared: Arc<Shared>,
}

impl DirectWriter {
    /// Writes `packets` as interleaved frames now, if no other write is in progress: Ok(true)
    /// when they were taken (whatever the send buffer did not take at once is finished on the
    /// blocking pool, holding the connection's writer so nothing comes in between), Ok(false)
    /// when the writer is busy or the connection stopped (queue them instead). Never blocks.
    pub fn try_send_interleaved_many(&self, packets: &[(u8, &[u8])]) -> Result<bool, ClientError> {
        if self.shared.stop.load(Ordering::Acquire) {
            return Ok(false);
        }
        let Ok(w) = self.shared.write.clone().try_lock_owned() else {
            return Ok(false);
        };
        let buf = interleaved_frames(packets)?;
        if buf.is_empty() {
            return Ok(true);
        }
        let bytes = w.seal(buf)?;
        let sent = write_now(&w.socket, &bytes).map_err(write_error)?;
        if sent < bytes.len() {
            let (name, peer) = (self.shared.name.clone(), self.shared.peer);
            crate::runtime::handle().spawn_blocking(move || {
                if let Err(e) = (&w.socket).write_all(&bytes[sent..]) {
                    // The reader sees the connection end too; this says why.
                    log::debug!(id = name.as_str(); "{peer}: writing to the server failed: {e}");
                }
            });
        }
        Ok(true)
    }
}

/// Packets as interleaved frames ($, channel, length, data). A packet too large for a frame
/// (64 KiB) is an error.
fn interleaved_frames(packets: &[(u8, &[u8])]) -> Result<Vec<u8>, ClientError> {
    let mut buf = Vec::with_capacity(packets.iter().map(|(_, d)| d.len() + 4).sum());
    for &(channel, data) in packets {
        let len = u16::try_from(data.len())
            .map_err(|_| ClientError::Protocol("interleaved packet too large".into()))?;
        buf.extend_from_slice(&codec::interleaved_header(channel, len));
        buf.extend_from_slice(data);
    }
    Ok(buf)
}

/// A connected RTSP control connection.
pub struct Connection {
    shared: Arc<Shared>,
    cseq: AtomicU32,
    user_agent: String,
}

impl Connection {
    /// Connects within `timeout` (over `carrier`) and starts the reader. `on_incoming` runs on
    /// the reader's thread (see the module's documentation); it is not called any more once
    /// the connection is dropped.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        host: &str,
        port: u16,
        carrier: &Carrier,
        timeout: Duration,
        limits: Limits,
        user_agent: String,
        name: String,
        on_incoming: impl FnMut(Incoming) + Send + 'static,
    ) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
            .await
            .map_err(|_| ClientError::Timeout(format!("connecting to {host}:{port}")))?
            .map_err(|e| ClientError::io(format!("connecting to {host}:{port}"), &e))?;
        let io = |e: std::io::Error| ClientError::io("setting up the connection", &e);
        let socket = blocking(stream.into_std().map_err(io)?, timeout).map_err(io)?;
        let peer = socket.peer_addr().map_err(io)?;
        log::debug!(id = name.as_str(); "{peer}: connected");
        let wires = if carrier.tls.is_none() && carrier.tunnel.is_none() {
            Wires::plain(socket).map_err(io)?
        } else {
            let setup = Setup {
                carrier: carrier.clone(),
                host: host.to_owned(),
                authority: if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                },
                user_agent: user_agent.clone(),
                name: name.clone(),
                timeout,
            };
            tokio::task::spawn_blocking(move || setup.run(socket))
                .await
                .map_err(|e| ClientError::Closed(format!("setting up the connection: {e}")))??
        };
        let mut decoder = Decoder::new(limits);
        decoder.extend(&wires.early);
        let sockets = vec![
            wires.read.0.try_clone().map_err(io)?,
            wires.write.socket.try_clone().map_err(io)?,
        ];
        let shared = Arc::new(Shared {
            control: Mutex::default(),
            read: Mutex::new(ReadSide {
                socket: wires.read.0,
                tls: wires.read.1,
                own_writer: wires.own_writer,
                decoder,
                buf: vec![0; READ_SIZE],
            }),
            backlog: Mutex::default(),
            write: Arc::new(tokio::sync::Mutex::new(wires.write)),
            name,
            peer,
            sockets,
            stop: AtomicBool::new(false),
            timeout,
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| ClientError::io(format!("starting the connection's {name}"), &e))
        };
        let s = shared.clone();
        // Detached, as the standby reader: the reader may be held by downstream when the
        // connection is dropped; it ends as soon as it is let go (the socket is shut down).
        spawn("rtsp-read", Box::new(move || s.reader(on_incoming)))
            .inspect_err(|_| shared.close())?;
        Ok(Connection {
            shared,
            cseq: AtomicU32::new(1),
            user_agent,
        })
    }

    /// Writes on a blocking thread; the socket's send timeout bounds it.
    async fn write(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        let w = self.shared.write.clone().lock_owned().await;
        let bytes = w.seal(bytes)?;
        // Requests and RTCP are small: the socket takes them at once, no thread is involved.
        let sent = write_now(&w.socket, &bytes).map_err(write_error)?;
        if sent == bytes.len() {
            return Ok(());
        }
        // The send buffer is full (a server that does not read): finish on the blocking pool,
        // keeping the lock so that nothing else is written in between.
        tokio::task::spawn_blocking(move || {
            (&w.socket).write_all(&bytes[sent..]).map_err(write_error)
        })
        .await
        .map_err(|e| ClientError::Closed(format!("writing to the server: {e}")))?
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Sends interleaved data (RTCP to the server).
    pub async fn send_interleaved(&self, channel: u8, data: &[u8]) -> Result<(), ClientError> {
        let len = u16::try_from(data.len())
            .map_err(|_| ClientError::Protocol("interleaved packet too large".into()))?;
        let mut buf = Vec::with_capacity(data.len() + 4);
        buf.extend_from_slice(&codec::interleaved_header(channel, len));
        buf.extend_from_slice(data);
        self.write(buf).await
    }

    /// Sends interleaved packets (RTP and RTCP to the server when publishing) in one write.
    /// A packet too large for a frame (64 KiB) is an error and nothing is sent.
    pub async fn send_interleaved_many(&self, packets: &[(u8, &[u8])]) -> Result<(), ClientError> {
        let buf = interleaved_frames(packets)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.write(buf).await
    }

    /// A handle that writes interleaved packets from any thread without waiting, when nothing
    /// else is being written (see [`DirectWriter::try_send_interleaved_many`]).
    pub fn direct_writer(&self) -> DirectWriter {
        DirectWriter {
            shared: self.shared.clone(),
        }
    }

    /// Sends a request (CSeq and User-Agent are added) and waits for its response.
    pub async fn request(
        &self,
        mut req: Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, ClientError> {
        let cseq = self.cseq.fetch_add(1, Ordering::Relaxed);
        req.insert_header(headers::CSEQ, cseq.to_string());
        req.insert_header(headers::USER_AGENT, self.user_agent.as_str());
        let (tx, rx) = oneshot::channel();
        {
            let mut c = self.shared.control.lock().unwrap();
            if c.stopped {
                return Err(ClientError::Closed("the connection is closed".into()));
            }
            c.pending.insert(cseq, tx);
            self.shared.start_standby(&mut c);
        }
        let forget = || self.shared.control.lock().unwrap().pending.remove(&cseq);
        let mut bytes = Vec::with_capacity(256);
        codec::encode_request(&req, &mut bytes);
        let method = format!("{:?}", req.method()).to_uppercase();
        let (name, peer) = (self.shared.name.as_str(), self.shared.peer);
        let uri = req.request_uri().map(|u| u.as_str()).unwrap_or("*");
        let session = req.header(&headers::SESSION).map_or("-", |v| v.as_str());
        log::debug!(
            id = name;
            "{peer}: sending {method} {} (CSeq {cseq}, session {session})",
            redact_url(uri)
        );
        log_headers(name, ">", req.headers());
        let sent = std::time::Instant::now();
        if let Err(e) = self.write(bytes).await {
            forget();
            log::debug!(id = name; "{peer}: {method} (CSeq {cseq}) not sent: {e}");
            return Err(e);
        }
        match tokio::time::timeout(self.shared.timeout, rx).await {
            Ok(Ok(resp)) => {
                log::debug!(
                    id = name;
                    "{peer}: {method} (CSeq {cseq}, session {session}) answered {} {} in {:.1} ms",
                    u16::from(resp.status()),
                    resp.reason_phrase(),
                    sent.elapsed().as_secs_f64() * 1000.0
                );
                log_headers(name, "<", resp.headers());
                Ok(resp)
            }
            Ok(Err(_)) => Err(ClientError::Closed(format!(
                "connection closed while waiting for the {method} response"
            ))),
            Err(_) => {
                forget();
                log::debug!(
                    id = name;
                    "{peer}: no answer to {method} (CSeq {cseq}) within {:?}",
                    self.shared.timeout
                );
                Err(ClientError::Timeout(format!("no response to {method}")))
            }
        }
    }
}

/// Logs `headers` at trace level (GStreamer's LOG), one line each, `dir` `>` sent or `<`
/// received; credentials are shown as `<redacted>`.
fn log_headers<'a>(
    name: &str,
    dir: &str,
    headers: impl Iterator<Item = (&'a rtsp_types::HeaderName, &'a rtsp_types::HeaderValue)>,
) {
    if !log::log_enabled!(log::Level::Trace) {
        return;
    }
    for (header, value) in headers {
        let secret = *header == headers::AUTHORIZATION || *header == headers::PROXY_AUTHORIZATION;
        let value = if secret {
            "<redacted>".into()
        } else {
            redact_url(value.as_str())
        };
        log::trace!(id = name; "{dir} {}: {value}", header.as_str());
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.close();
        // Wakes a thread blocked in read on it.
        for socket in &self.shared.sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A connection to a listener on 127.0.0.1, with the runtime it was made on and the
    /// server's end of it.
    fn connect_locally(
        on_incoming: impl FnMut(Incoming) + Send + 'static,
    ) -> (tokio::runtime::Runtime, Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt
            .block_on(Connection::connect(
                "127.0.0.1",
                port,
                &Carrier::default(),
                Duration::from_secs(5),
                Limits::default(),
                "test".into(),
                "test".into(),
                on_incoming,
            ))
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        (rt, conn, server)
    }

    fn interleaved(channel: u8, seq: u32, len: usize) -> Vec<u8> {
        let mut data = seq.to_be_bytes().to_vec();
        data.resize(len, 0xab);
        let mut out = codec::interleaved_header(channel, len as u16).to_vec();
        out.extend(data);
        out
    }

    fn seq_of(data: &[u8]) -> u32 {
        u32::from_be_bytes(data[..4].try_into().unwrap())
    }

    /// Reads one request's head from the client; returns its CSeq.
    fn read_request(reader: &mut std::io::BufReader<TcpStream>) -> String {
        let mut cseq = String::new();
        loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "client closed");
            if let Some(v) = line.strip_prefix("CSeq:") {
                cseq = v.trim().to_owned();
            }
            if line == "\r\n" {
                return cseq;
            }
        }
    }

    /// A connection whose callback reports what it gets and holds the reader on the first
    /// interleaved packet (as a paused sink holds a push) until `release_tx` sends, with the
    /// server's end of it; the server has sent that first packet and the reader is held.
    struct Held {
        rt: tokio::runtime::Runtime,
        conn: Connection,
        server: TcpStream,
        release_tx: mpsc::Sender<()>,
        seen_rx: mpsc::Receiver<Incoming>,
    }

    fn held_connection() -> Held {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let (seen_tx, seen_rx) = mpsc::channel::<Incoming>();
        let blocked = AtomicBool::new(false);
        let (rt, conn, mut server) = connect_locally(move |incoming| {
            let first = matches!(incoming, Incoming::Interleaved { .. })
                && !blocked.swap(true, Ordering::Relaxed);
            let _ = seen_tx.send(incoming);
            if first {
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            }
        });
        server.write_all(&interleaved(0, 0, 1000)).unwrap();
        assert!(matches!(
            seen_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Incoming::Interleaved { .. }
        ));
        Held {
            rt,
            conn,
            server,
            release_tx,
            seen_rx,
        }
    }

    fn get_parameter() -> Request<Vec<u8>> {
        Request::builder(Method::GetParameter, Version::V1_0)
            .request_uri(rtsp_types::Url::parse("rtsp://127.0.0.1/").unwrap())
            .build(Vec::new())
    }

    /// The callback holds the reader on the first packet (as a paused sink holds a push). A
    /// request made meanwhile still gets its answer, which the server sends after more data;
    /// once let go, the callback sees every packet, in order, then nothing is lost or dropped.
    #[test]
    fn requests_are_answered_while_the_callback_blocks() {
        let Held {
            rt,
            conn,
            server,
            release_tx,
            seen_rx,
        } = held_connection();
        let mut writer = server.try_clone().unwrap();
        let server_thread = std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(server);
            let cseq = read_request(&mut reader);
            for seq in 1..=50 {
                writer.write_all(&interleaved(0, seq, 1000)).unwrap();
            }
            write!(writer, "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\r\n").unwrap();
            for seq in 51..=60 {
                writer.write_all(&interleaved(0, seq, 1000)).unwrap();
            }
            (reader, writer)
        });
        let started = std::time::Instant::now();
        let resp = rt.block_on(conn.request(get_parameter())).unwrap();
        assert_eq!(resp.status(), StatusCode::Ok);
        assert!(started.elapsed() < Duration::from_secs(2));
        let _peer = server_thread.join().unwrap();
        release_tx.send(()).unwrap();
        let mut seqs = Vec::new();
        while seqs.len() < 60 {
            match seen_rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                Incoming::Interleaved { data, .. } => seqs.push(seq_of(&data)),
                Incoming::ReadDone => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    }

    /// While the callback is held and a request waits, what the server sends beyond the
    /// backlog's bound is dropped and reported, not buffered without end.
    #[test]
    fn the_backlog_is_bounded() {
        let Held {
            rt,
            conn,
            server,
            release_tx,
            seen_rx,
        } = held_connection();
        let mut writer = server.try_clone().unwrap();
        let packets = BACKLOG_BYTES / 60_000 + 20;
        let server_thread = std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(server);
            let cseq = read_request(&mut reader);
            for seq in 1..=packets as u32 {
                writer.write_all(&interleaved(0, seq, 60_000)).unwrap();
            }
            write!(writer, "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\r\n").unwrap();
            (reader, writer)
        });
        let resp = rt.block_on(conn.request(get_parameter())).unwrap();
        assert_eq!(resp.status(), StatusCode::Ok);
        let _peer = server_thread.join().unwrap();
        release_tx.send(()).unwrap();
        let (mut kept, mut dropped) = (Vec::new(), 0);
        while kept.len() as u64 + dropped < packets as u64 {
            match seen_rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                Incoming::Interleaved { data, .. } => kept.push(seq_of(&data)),
                Incoming::Dropped(n) => dropped += n,
                Incoming::ReadDone => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(dropped >= 20, "{dropped} dropped");
        assert!(kept.len() * 60_000 <= BACKLOG_BYTES);
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "out of order");
    }

    /// A response without CSeq (ffmpeg 5.1's listener answering TEARDOWN with a bare 501) is
    /// the answer to the only request outstanding: it is returned at once, not at the timeout.
    #[test]
    fn a_response_without_cseq_answers_the_only_request_outstanding() {
        let (rt, conn, server) = connect_locally(|_| {});
        let mut writer = server.try_clone().unwrap();
        let server_thread = std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(server);
            read_request(&mut reader);
            writer
                .write_all(b"RTSP/1.0 501 Not Implemented\r\n\r\n")
                .unwrap();
            (reader, writer)
        });
        let started = std::time::Instant::now();
        let resp = rt.block_on(conn.request(get_parameter())).unwrap();
        assert_eq!(resp.status(), StatusCode::NotImplemented);
        assert!(started.elapsed() < Duration::from_secs(2));
        let _peer = server_thread.join().unwrap();
    }

    /// With two requests outstanding, a response without CSeq answers neither (which one it
    /// answers cannot be told): each still gets its own answer.
    #[test]
    fn a_response_without_cseq_answers_nothing_when_two_requests_wait() {
        let (rt, conn, server) = connect_locally(|_| {});
        let mut writer = server.try_clone().unwrap();
        let server_thread = std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(server);
            let first = read_request(&mut reader);
            let second = read_request(&mut reader);
            writer
                .write_all(b"RTSP/1.0 501 Not Implemented\r\n\r\n")
                .unwrap();
            for cseq in [second, first] {
                write!(writer, "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\r\n").unwrap();
            }
            (reader, writer)
        });
        let (a, b) = rt.block_on(async {
            tokio::join!(conn.request(get_parameter()), conn.request(get_parameter()))
        });
        assert_eq!(a.unwrap().status(), StatusCode::Ok);
        assert_eq!(b.unwrap().status(), StatusCode::Ok);
        let _peer = server_thread.join().unwrap();
    }

    /// Dropping the connection wakes its threads and calls the callback no more.
    #[test]
    fn dropping_stops_the_callbacks() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let (_rt, conn, mut server) = connect_locally(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        drop(conn);
        std::thread::sleep(Duration::from_millis(100));
        // Not even Closed: the connection was let go, not lost.
        let _ = server.write_all(&interleaved(0, 0, 100));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        let mut buf = [0u8; 1];
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            server.read(&mut buf).unwrap(),
            0,
            "the socket was not closed"
        );
    }

    /// Through the HTTP tunnel: the GET and the POST name one cookie, requests (and
    /// interleaved data) go base64 on the POST, answers come in clear on the GET.
    #[test]
    fn the_tunnel_sends_base64_on_post_and_reads_the_get() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let head = |reader: &mut std::io::BufReader<TcpStream>| {
                let mut lines = Vec::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        return lines;
                    }
                    lines.push(line.trim_end().to_owned());
                }
            };
            let cookie = |lines: &[String]| {
                lines
                    .iter()
                    .find_map(|l| l.strip_prefix("x-sessioncookie: "))
                    .unwrap()
                    .to_owned()
            };
            let (get, _) = listener.accept().unwrap();
            let mut get_reader = std::io::BufReader::new(get.try_clone().unwrap());
            let get_head = head(&mut get_reader);
            assert_eq!(get_head[0], "GET /live HTTP/1.0");
            (&get)
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/x-rtsp-tunnelled\r\n\r\n")
                .unwrap();
            let (post, _) = listener.accept().unwrap();
            let mut post_reader = std::io::BufReader::new(post);
            let post_head = head(&mut post_reader);
            assert_eq!(post_head[0], "POST /live HTTP/1.0");
            assert_eq!(cookie(&get_head), cookie(&post_head));
            // Decode what the client posts until a whole request and an interleaved frame.
            let (mut decoder, mut plain) = (tunnel::Base64Decoder::new(), Vec::new());
            let mut buf = [0u8; 1024];
            while !plain.ends_with(b"\x24\x01\x00\x02hi") {
                let n = post_reader.read(&mut buf).unwrap();
                assert!(n > 0, "the POST closed");
                decoder.decode(&buf[..n], &mut plain).unwrap();
            }
            let text = String::from_utf8_lossy(&plain).into_owned();
            assert!(
                text.starts_with("GET_PARAMETER rtsp://127.0.0.1/ RTSP/1.0\r\n"),
                "{text}"
            );
            let cseq = text
                .lines()
                .find_map(|l| l.strip_prefix("CSeq: "))
                .unwrap()
                .to_owned();
            (&get)
                .write_all(format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\r\n").as_bytes())
                .unwrap();
            get
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let carrier = Carrier {
            tls: None,
            tunnel: Some("/live".into()),
        };
        let conn = rt
            .block_on(Connection::connect(
                "127.0.0.1",
                port,
                &carrier,
                Duration::from_secs(5),
                Limits::default(),
                "test".into(),
                "test".into(),
                |_| {},
            ))
            .unwrap();
        let resp = rt.block_on(async {
            let request = conn.request(get_parameter());
            let rtcp = async {
                // Sent after the request (the write lock keeps the order).
                tokio::task::yield_now().await;
                conn.send_interleaved(1, b"hi").await.unwrap();
            };
            tokio::join!(request, rtcp).0
        });
        assert_eq!(resp.unwrap().status(), StatusCode::Ok);
        let _get = server.join().unwrap();
    }
}
