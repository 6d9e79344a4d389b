//! The RTMP server's network side on the plugin's shared runtime: listens (plain TCP, or TLS for
//! RTMPS), tells RTMP from RTMPT (HTTP, [`crate::rtmp::tunnel`]) by the first byte and RTMPE by
//! C0 = 6 or 8 ([`crate::rtmp::rtmpe`]), runs one task per connection or tunnel session over
//! [`Connection`], decides each publish (application,
//! stream key, busy or taken over, the application's hook) and hands the accepted publication's
//! media to the [`Output`] queue, which never makes a connection wait.
//!
//! Limits: connections at most `max_connections` (more are closed at once); the handshake,
//! connect and publish must be done within `handshake_timeout`; a connection that sends nothing
//! for `idle_timeout` is closed; everything the core refuses (chunk sizes, message sizes, chunk
//! stream ids, AMF nesting) ends the connection. Each end is one DEBUG line with the peer and
//! why.
//!
//! Specifications: none of its own: the protocol is [`super`]'s (RTMP specification 1.0); TLS is
//! rustls's (RFC 8446, RFC 5246).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::super::flv::TagKind;
use super::output::{Item, Output};
use super::{Connection, ConnectionConfig, Event, Phase, PublishRequest};
use crate::rtmp::tunnel::{self, Command, Request, RequestError};
use crate::runtime::TaskGroup;

/// What the application's hook is asked about a publish.
#[derive(Debug, Clone)]
pub struct PublishInfo {
    pub app: String,
    /// The stream key (the hook may need it; never logged).
    pub key: String,
    pub peer: SocketAddr,
    pub query: String,
}

pub type PublishHook = Arc<dyn Fn(&PublishInfo) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    /// The application publishers must connect to; empty: any.
    pub application: String,
    /// The stream key they must publish; empty: any.
    pub stream_key: String,
    /// A second publisher replaces the first (otherwise it is refused).
    pub takeover: bool,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub chunk_size: u32,
    pub max_message_size: u32,
    pub hook: Option<PublishHook>,
    /// Adobe/Limelight authentication of connect (rtmpserversrc's `users`).
    pub auth: Option<Arc<super::super::auth::ServerAuth>>,
    /// RTMPT (RTMP in HTTP POSTs) on the same port: a connection whose first byte is a letter
    /// is taken as HTTP (an RTMP C0 is 3 or 6).
    pub rtmpt: bool,
    /// How long a publisher thread lets audio and metadata wait for the next video frame before
    /// it wakes the consumer for them (see [`publish_thread`]); zero: never held.
    pub hold: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            address: IpAddr::from([127, 0, 0, 1]),
            port: 1935,
            application: String::new(),
            stream_key: String::new(),
            takeover: false,
            tls: None,
            max_connections: 100,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            chunk_size: 4096,
            max_message_size: 8 * 1024 * 1024,
            hook: None,
            auth: None,
            rtmpt: true,
            hold: MAX_HOLD,
        }
    }
}

/// Counters for `stats`.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub publishes_refused: AtomicU64,
    pub publishers: AtomicU64,
    /// Bytes received from the current (or last) publisher.
    pub bytes_received: AtomicU64,
    pub open: AtomicUsize,
}

/// The current publisher, for `stats`.
#[derive(Debug, Clone)]
pub struct PublisherInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub started: Instant,
    pub in_chunk_size: u32,
    pub app: String,
    pub fourcc_list: Vec<String>,
}

struct Active {
    info: PublisherInfo,
    /// Makes the connection stop (taken over).
    kick: Arc<Kick>,
}

/// How a publishing connection is told that another publisher took over: its task is notified;
/// its thread (see [`publish_thread`]) finds its socket shut for reading.
#[derive(Default)]
struct Kick {
    notify: Notify,
    taken: std::sync::atomic::AtomicBool,
    /// The publisher thread's socket (another descriptor of it).
    socket: Mutex<Option<socket2::Socket>>,
}

impl Kick {
    fn kick(&self) {
        self.taken.store(true, Ordering::Release);
        self.notify.notify_one();
        if let Some(s) = self.socket.lock().unwrap().as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Read);
        }
    }

    fn taken(&self) -> bool {
        self.taken.load(Ordering::Acquire)
    }
}

struct Shared {
    config: ListenerConfig,
    output: Arc<Output>,
    active: Mutex<Option<Active>>,
    /// Connections not yet publishing, oldest first: (connection id, its eviction notice).
    pending: Mutex<std::collections::VecDeque<(u64, Arc<Notify>)>>,
    /// The id of the publisher whose tags go to the output (0: none): a publisher taken over
    /// may still be reading its last bytes, which must not reach the new publication.
    current: AtomicU64,
    next_conn: AtomicU64,
    counters: ListenerCounters,
    next_id: AtomicU64,
    /// Open RTMPT sessions by id.
    tunnels: Mutex<HashMap<String, Arc<TunnelSession>>>,
    /// The RTMPT sessions' RTMP connections (they outlive the HTTP connections).
    tunnel_tasks: TaskGroup,
    /// The publishers on threads of their own (plain TCP), by connection id: another
    /// descriptor of each socket, shut down by [`Listener::stop`].
    threads: Mutex<HashMap<u64, socket2::Socket>>,
    /// Notified when a publisher thread took its entry off `threads`, after its last line.
    thread_ended: std::sync::Condvar,
    /// Set by [`Listener::stop`]: a publisher thread finding its socket shut says why.
    stopped: std::sync::atomic::AtomicBool,
}

pub struct Listener {
    shared: Arc<Shared>,
    local: SocketAddr,
    listener: Arc<TcpListener>,
    tasks: TaskGroup,
}

macro_rules! ldebug {
    ($shared:expr, $($arg:tt)+) => { log_id!(debug, &$shared.config.name, $($arg)+) };
}

impl Listener {
    /// Binds and starts accepting on the shared runtime.
    pub fn start(config: ListenerConfig, output: Arc<Output>) -> std::io::Result<Listener> {
        let addr = SocketAddr::new(config.address, config.port);
        let std_listener = bind(addr)?;
        let handle = crate::runtime::handle();
        let listener = {
            let _guard = handle.enter();
            Arc::new(TcpListener::from_std(std_listener)?)
        };
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            output,
            active: Mutex::new(None),
            pending: Mutex::new(std::collections::VecDeque::new()),
            current: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            counters: ListenerCounters::default(),
            next_id: AtomicU64::new(1),
            tunnels: Mutex::new(HashMap::new()),
            tunnel_tasks: TaskGroup::new(),
            threads: Mutex::new(HashMap::new()),
            thread_ended: std::sync::Condvar::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        ldebug!(
            shared,
            "listening for RTMP{} publishers on {local} (application '{}', stream key {})",
            if shared.config.tls.is_some() { "S" } else { "" },
            shared.config.application,
            if shared.config.stream_key.is_empty() {
                "any"
            } else {
                "set"
            }
        );
        let tasks = TaskGroup::new();
        tasks.spawn(accept_loop(shared.clone(), listener.clone()));
        Ok(Listener {
            shared,
            local,
            listener,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn counters(&self) -> &ListenerCounters {
        &self.shared.counters
    }

    pub fn publisher(&self) -> Option<PublisherInfo> {
        self.shared
            .active
            .lock()
            .unwrap()
            .as_ref()
            .map(|a| a.info.clone())
    }

    /// Stops listening and closes every connection. Tasks on the runtime are aborted without
    /// waiting; publisher threads, whose blocking read the shut socket ends at once, are given
    /// up to [`THREAD_STOP_WAIT`] to end their publication and log their connection's last line
    /// (a process that exits right after stopping the element would otherwise lose it). Later
    /// calls do nothing.
    pub fn stop(&self) {
        if self.shared.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let threads = self.shared.threads.lock().unwrap();
        ldebug!(
            self.shared,
            "stopping: closing {} connection(s), {} of them publishers on threads of their own \
             (each logs its last line)",
            self.shared.counters.open.load(Ordering::Relaxed),
            threads.len()
        );
        for socket in threads.values() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        let (threads, wait) = self
            .shared
            .thread_ended
            .wait_timeout_while(threads, THREAD_STOP_WAIT, |t| !t.is_empty())
            .unwrap();
        if wait.timed_out() {
            ldebug!(
                self.shared,
                "stopping: {} publisher thread(s) still ending after {THREAD_STOP_WAIT:?}; not waiting longer",
                threads.len()
            );
        }
        drop(threads);
        self.tasks.abort_all();
        self.shared.tunnel_tasks.abort_all();
        self.shared.tunnels.lock().unwrap().clear();
        let _ = socket2::SockRef::from(&*self.listener).shutdown(std::net::Shutdown::Both);
        *self.shared.active.lock().unwrap() = None;
        self.shared.current.store(0, Ordering::Release);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn accept_loop(shared: Arc<Shared>, listener: Arc<TcpListener>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                ldebug!(
                    shared,
                    "accepting a connection failed: {e}; retrying in 50 ms"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        let (id, evict) = admit(&shared, peer);
        let _ = stream.set_nodelay(true);
        connections.spawn(serve(shared.clone(), stream, peer, id, evict));
    }
}

/// A new connection (TCP, or an RTMPT session) joins the connections that have not published
/// yet; at `max_connections` the oldest of them is closed to make room.
fn admit(shared: &Shared, peer: SocketAddr) -> (u64, Arc<Notify>) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let evict = Arc::new(Notify::new());
    // Connections that have not published yet are bounded: the oldest makes room for the
    // newest (idle or slow clients cannot lock a publisher out; a publishing connection is
    // never closed for a new one).
    let mut pending = shared.pending.lock().unwrap();
    if pending.len() >= shared.config.max_connections
        && let Some((old, notice)) = pending.pop_front()
    {
        shared
            .counters
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        ldebug!(
            shared,
            "{peer}: {} connections without a publication (max-connections): closing the oldest, \
             connection {old}, to make room",
            shared.config.max_connections
        );
        notice.notify_one();
    }
    pending.push_back((id, evict.clone()));
    (id, evict)
}

/// Counts an open connection while alive, and takes it off the pending list when it ends.
struct OpenGuard(Arc<Shared>, u64);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
        self.0
            .pending
            .lock()
            .unwrap()
            .retain(|(id, _)| *id != self.1);
    }
}

async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    evict: Arc<Notify>,
) {
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    let _guard = OpenGuard(shared.clone(), id);
    ldebug!(shared, "{peer}: connection accepted");
    let deadline = Instant::now() + shared.config.handshake_timeout;
    // RTMPT clients write a request's head and body separately (FFmpeg without TCP_NODELAY):
    // answering the head's segment with an immediate ACK saves a delayed-ACK wait (40 ms) per
    // request. A second descriptor of the socket sets that after each read.
    let ack = if shared.config.rtmpt {
        socket2::SockRef::from(&stream).try_clone().ok()
    } else {
        None
    };
    if shared.config.rtmpt && ack.is_none() {
        ldebug!(
            shared,
            "{peer}: no second descriptor for the socket: RTMPT off for it"
        );
    }
    let Some(tls) = shared.config.tls.clone() else {
        let (r, w) = stream.into_split();
        return sniff(shared, r, w, peer, deadline, id, evict, ack).await;
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let accepted = tokio::select! {
        a = tokio::time::timeout_at(deadline.into(), accept) => a,
        () = evict.notified() => {
            ldebug!(shared, "{peer}: connection closed: {EVICTED}");
            return;
        }
    };
    match accepted {
        Ok(Ok(stream)) => {
            let session = stream.get_ref().1;
            ldebug!(
                shared,
                "{peer}: TLS handshake done ({:?}, {:?})",
                session.protocol_version(),
                session.negotiated_cipher_suite().map(|s| s.suite())
            );
            let (r, w) = tokio::io::split(stream);
            sniff(shared, r, w, peer, deadline, id, evict, ack).await;
        }
        Ok(Err(e)) => ldebug!(
            shared,
            "{peer}: connection closed: TLS handshake failed: {e}"
        ),
        Err(_) => ldebug!(
            shared,
            "{peer}: connection closed: no TLS handshake within {:?}",
            shared.config.handshake_timeout
        ),
    }
}

/// Reads the first bytes and hands the connection to RTMP (a C0 is 3 or 6) or, when `rtmpt` is
/// on and it starts with a letter (an HTTP method), to the RTMPT server.
#[allow(clippy::too_many_arguments)]
async fn sniff<R, W>(
    shared: Arc<Shared>,
    mut r: R,
    w: W,
    peer: SocketAddr,
    deadline: Instant,
    id: u64,
    evict: Arc<Notify>,
    ack: Option<socket2::Socket>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut first = vec![0u8; 4096];
    let read = tokio::select! {
        r = tokio::time::timeout_at(deadline.into(), r.read(&mut first)) => r,
        () = evict.notified() => {
            ldebug!(shared, "{peer}: connection closed: {EVICTED}");
            return;
        }
    };
    let n = match read {
        Ok(Ok(0)) => {
            ldebug!(shared, "{peer}: connection closed before sending anything");
            return;
        }
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            ldebug!(shared, "{peer}: connection closed: read failed: {e}");
            return;
        }
        Err(_) => {
            ldebug!(
                shared,
                "{peer}: connection closed: nothing received within {:?}",
                shared.config.handshake_timeout
            );
            return;
        }
    };
    first.truncate(n);
    // `ack` is set only for TCP connections with RTMPT on (not for tunnel sessions).
    if ack.is_some() && first[0].is_ascii_alphabetic() {
        ldebug!(shared, "{peer}: HTTP request: serving RTMPT");
        quick_ack(ack.as_ref());
        http(shared, first, r, w, peer, deadline, id, evict, ack).await;
    } else {
        rtmp(shared, first, r, w, peer, deadline, id, evict).await;
    }
}

/// An RTMP connection whose first bytes (`first`, not empty) were read already: plain (C0 = 3),
/// or RTMPE (C0 = 6 or 8), whose handshake is done here; the RTMP connection then sees a plain
/// handshake and the decrypted stream, and its answers are encrypted.
#[allow(clippy::too_many_arguments)]
async fn rtmp<R, W>(
    shared: Arc<Shared>,
    mut first: Vec<u8>,
    mut r: R,
    mut w: W,
    peer: SocketAddr,
    deadline: Instant,
    id: u64,
    evict: Arc<Notify>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    use crate::rtmp::rtmpe;
    if !first.first().is_some_and(|&v| rtmpe::is_rtmpe(v)) {
        let r = std::io::Cursor::new(first).chain(r);
        return run(shared, r, w, peer, deadline, id, evict).await;
    }
    let total = 1 + 2 * super::PACKET_SIZE;
    let mut answer = None;
    let mut chunk = vec![0u8; 16 * 1024];
    let ended = loop {
        if answer.is_none() && first.len() > super::PACKET_SIZE {
            let mut random = [0u8; super::PACKET_SIZE];
            {
                use rand::RngExt;
                rand::rng().fill(&mut random[..]);
            }
            match rtmpe::server_answer(&first[..1 + super::PACKET_SIZE], &random) {
                Ok(a) => {
                    ldebug!(
                        shared,
                        "{peer}: RTMPE handshake (type {}, digest scheme {}, 1024-bit Diffie-Hellman): S1 and S2 signed{}, RC4 from now on",
                        a.version,
                        a.scheme,
                        if a.version == rtmpe::RTMPE_XTEA_VERSION {
                            " (S2's signature XTEA-encrypted)"
                        } else {
                            ""
                        }
                    );
                    match tokio::time::timeout_at(deadline.into(), w.write_all(&a.s0s1s2)).await {
                        Ok(Ok(())) => {}
                        _ => break Some("writing the RTMPE handshake failed".to_owned()),
                    }
                    answer = Some(a);
                }
                Err(e) => break Some(e.to_string()),
            }
        }
        if answer.is_some() && first.len() >= total {
            break None;
        }
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), r.read(&mut chunk)) => r,
            () = evict.notified() => break Some(EVICTED.to_owned()),
        };
        match read {
            Ok(Ok(0)) => {
                break Some("the client closed the connection in the RTMPE handshake".into());
            }
            Ok(Ok(n)) => first.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => break Some(format!("read failed: {e}")),
            Err(_) => {
                break Some(format!(
                    "no complete RTMPE handshake within {:?}",
                    shared.config.handshake_timeout
                ));
            }
        }
    };
    let (Some(a), None) = (answer, ended.as_ref()) else {
        ldebug!(
            shared,
            "{peer}: connection closed: {}",
            ended.unwrap_or_default()
        );
        return;
    };
    let mut from_client = a.from_client;
    // The RTMP connection gets a plain handshake (C1 without a version: no digest) and what
    // followed C2, decrypted; its S0+S1+S2 are not sent.
    let mut after = first.split_off(total);
    from_client.apply(&mut after);
    let mut plain = vec![3u8];
    plain.resize(total, 0);
    plain.extend_from_slice(&after);
    let r = std::io::Cursor::new(plain).chain(Rc4Reader {
        inner: r,
        rc4: from_client,
    });
    let w = Rc4Writer {
        inner: w,
        rc4: a.to_client,
        skip: total,
        pending: Vec::new(),
        written: 0,
        accepted: 0,
    };
    run(shared, r, w, peer, deadline, id, evict).await;
}

/// Decrypts what it reads (RTMPE).
struct Rc4Reader<R> {
    inner: R,
    rc4: crate::rtmp::rtmpe::Rc4,
}

impl<R: AsyncRead + Unpin> AsyncRead for Rc4Reader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if res.is_ready() {
            this.rc4.apply(&mut buf.filled_mut()[before..]);
        }
        res
    }
}

/// Encrypts what it writes (RTMPE), after dropping the first `skip` bytes (the RTMP
/// connection's own plain handshake answer). A write is encrypted once and retried until the
/// socket took it all, then reported as written: callers repeat a pending write with the same
/// bytes (`write_all` does).
struct Rc4Writer<W> {
    inner: W,
    rc4: crate::rtmp::rtmpe::Rc4,
    skip: usize,
    pending: Vec<u8>,
    written: usize,
    /// How many of the caller's bytes `pending` stands for.
    accepted: usize,
}

impl<W: AsyncWrite + Unpin> Rc4Writer<W> {
    fn poll_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while self.written < self.pending.len() {
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..])
            {
                std::task::Poll::Ready(Ok(0)) => {
                    return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                std::task::Poll::Ready(Ok(n)) => self.written += n,
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Rc4Writer<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            let dropped = this.skip.min(buf.len());
            this.skip -= dropped;
            if dropped == buf.len() {
                return std::task::Poll::Ready(Ok(dropped));
            }
            let n = buf.len().min(64 * 1024);
            this.pending.extend_from_slice(&buf[dropped..n]);
            this.rc4.apply(&mut this.pending);
            this.written = 0;
            this.accepted = n;
        }
        match this.poll_pending(cx) {
            std::task::Poll::Ready(Ok(())) => {
                this.pending.clear();
                std::task::Poll::Ready(Ok(this.accepted))
            }
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An RTMPT session: the tunnel's end of the byte stream its RTMP connection reads and writes.
struct TunnelSession {
    /// The RTMP connection's id (in `pending` until it publishes).
    conn_id: u64,
    /// Only the address that opened the session may use it.
    peer: IpAddr,
    io: tokio::sync::Mutex<TunnelIo>,
}

struct TunnelIo {
    r: tokio::io::ReadHalf<tokio::io::DuplexStream>,
    /// None once closed.
    w: Option<tokio::io::WriteHalf<tokio::io::DuplexStream>>,
    /// Empty answers in a row (the polling byte grows with them).
    empty: u32,
}

/// Bytes the server's RTMP side may have waiting for a client that does not poll: its writes
/// wait beyond this (and fail after 10 s, closing the session).
const TUNNEL_BUFFER: usize = 1024 * 1024;
/// Bytes in one answer at most.
const MAX_ANSWER: usize = 1024 * 1024;

/// A request's body limit: one RTMP message of the largest size with its chunk headers.
fn max_body(config: &ListenerConfig) -> usize {
    let m = config.max_message_size as usize;
    m + m / 64 + 64 * 1024
}

/// True once the RTMP connection `conn_id` is no longer waiting to publish (it publishes, or
/// it ended).
fn published(shared: &Shared, conn_id: u64) -> bool {
    !shared
        .pending
        .lock()
        .unwrap()
        .iter()
        .any(|(c, _)| *c == conn_id)
}

/// Serves RTMPT requests on one HTTP/1.1 connection (keep-alive, pipelined requests answered
/// in order). A refused request is answered with its status and ends the connection.
#[allow(clippy::too_many_arguments)]
async fn http<R, W>(
    shared: Arc<Shared>,
    mut buf: Vec<u8>,
    mut r: R,
    mut w: W,
    peer: SocketAddr,
    deadline: Instant,
    conn_id: u64,
    evict: Arc<Notify>,
    ack: Option<socket2::Socket>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limit = max_body(&shared.config);
    // Set once this connection carries a publishing session: no longer evictable.
    let mut carrying = false;
    let mut requests = 0u64;
    // Once an answer could not be written: the requests still buffered are handled (unanswered)
    // before the connection ends with this reason.
    let mut write_failed: Option<String> = None;
    let end: String = 'conn: loop {
        // The first request within the handshake timeout, then the idle timeout between them.
        let until = if requests == 0 {
            deadline
        } else {
            Instant::now() + shared.config.idle_timeout
        };
        let mut need_body: Option<Request> = None;
        let (req, body) = loop {
            if let Some(req) = &need_body {
                let end = req.head_len + req.content_length;
                if buf.len() >= end {
                    let body = buf[req.head_len..end].to_vec();
                    buf.drain(..end);
                    break (need_body.take().unwrap(), body);
                }
            } else {
                match tunnel::parse_request(&buf, limit) {
                    Ok(Some(req)) => {
                        need_body = Some(req);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        refuse(&mut w, &e).await;
                        let what = match e {
                            // GET / and the like: someone else's HTTP client.
                            RequestError::Method(_) | RequestError::Path { .. }
                                if requests == 0 =>
                            {
                                "not an RTMP client, and no RTMPT request"
                            }
                            _ => "RTMPT request refused",
                        };
                        break 'conn format!("{what} ({}): {e}", e.status());
                    }
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::select! {
                r = tokio::time::timeout_at(until.into(), r.read(&mut chunk)) => r,
                () = evict.notified(), if !carrying => break 'conn EVICTED.into(),
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) if write_failed.is_some() => {
                    break 'conn write_failed.take().unwrap_or_default();
                }
                Ok(Ok(0)) if buf.is_empty() => {
                    break 'conn "the client closed the connection".into();
                }
                Ok(Ok(0)) => break 'conn "the client closed the connection in a request".into(),
                Ok(Ok(n)) => {
                    quick_ack(ack.as_ref());
                    buf.extend_from_slice(&chunk[..n]);
                }
                Ok(Err(e)) => break 'conn format!("read failed: {e}"),
                Err(_) if requests == 0 => {
                    break 'conn format!(
                        "no complete RTMPT request within {:?}",
                        shared.config.handshake_timeout
                    );
                }
                Err(_) => {
                    break 'conn format!("no RTMPT request for {:?}", shared.config.idle_timeout);
                }
            }
        };
        requests += 1;
        let answer = match tunnel_request(&shared, &req.command, &body, peer).await {
            Ok((polling, data)) => tunnel::response(200, polling, &data, req.close),
            Err((status, why)) => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    w.write_all(&tunnel::response(status, None, b"", true)),
                )
                .await;
                break format!("RTMPT {} refused ({status}): {why}", req.command.name());
            }
        };
        if !carrying
            && let Some(id) = req.command.session()
            && let Some(s) = shared.tunnels.lock().unwrap().get(id).cloned()
            && published(&shared, s.conn_id)
        {
            // This connection carries a publication: it is no longer a pending one.
            carrying = true;
            shared
                .pending
                .lock()
                .unwrap()
                .retain(|(c, _)| *c != conn_id);
        }
        if write_failed.is_none() {
            match tokio::time::timeout(Duration::from_secs(10), w.write_all(&answer)).await {
                Ok(Ok(())) => {}
                // librtmp closes its socket right after its last requests (FCUnpublish,
                // deleteStream, close) with our answers unread: the reset makes the write
                // fail, but the requests already received still count.
                Ok(Err(e)) => write_failed = Some(format!("write failed: {e}")),
                Err(_) => break "the client read nothing for 10 s".into(),
            }
        }
        if req.close {
            break "the client asked to close the connection".into();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
    ldebug!(
        shared,
        "{peer}: connection closed: {end} (HTTP, {requests} RTMPT requests)"
    );
}

/// Linux leaves quick-ACK mode by itself: set again after each read.
fn quick_ack(socket: Option<&socket2::Socket>) {
    #[cfg(target_os = "linux")]
    if let Some(s) = socket {
        let _ = s.set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, e: &RequestError) {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        w.write_all(&tunnel::response(e.status(), None, b"", true)),
    )
    .await;
}

/// One RTMPT request: its answer (polling byte, body) or a refusal (status, reason).
async fn tunnel_request(
    shared: &Arc<Shared>,
    command: &Command,
    body: &[u8],
    peer: SocketAddr,
) -> Result<(Option<u8>, Vec<u8>), (u16, &'static str)> {
    let session = match command {
        Command::Ident => return Err((404, "no edge server here (fcs/ident2)")),
        Command::Open => return Ok((None, open_session(shared, peer))),
        Command::Send { session, .. }
        | Command::Idle { session, .. }
        | Command::Close { session, .. } => {
            let s = shared.tunnels.lock().unwrap().get(session).cloned();
            match s {
                // A session that ended on our side (its publisher unpublished, the element
                // stopped) may still be closed by the client: nothing to refuse.
                None if matches!(command, Command::Close { .. }) => {
                    ldebug!(shared, "{peer}: RTMPT close of an unknown or ended session");
                    return Ok((Some(0), Vec::new()));
                }
                None => return Err((404, "unknown session id")),
                Some(s) if s.peer != peer.ip() => {
                    return Err((404, "session id of another client address"));
                }
                Some(s) => s,
            }
        }
    };
    log::trace!(
        "{peer}: RTMPT {} for connection {}: {} bytes",
        command.name(),
        session.conn_id,
        body.len()
    );
    let mut io = session.io.lock().await;
    let wait = match command {
        Command::Close { session: id, .. } => {
            shared.tunnels.lock().unwrap().remove(id);
            // The RTMP connection reads the end of its stream and closes.
            io.w = None;
            return Ok((Some(0), Vec::new()));
        }
        Command::Send { .. } => {
            let Some(w) = io.w.as_mut() else {
                return Err((404, "session closed"));
            };
            match tokio::time::timeout(Duration::from_secs(10), w.write_all(body)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err((404, "session ended")),
                Err(_) => return Err((503, "the RTMP connection took nothing for 10 s")),
            }
            // Until it publishes, give the answer a moment (the handshake's and commands'
            // answers go back in this response); a publisher's sends are answered at once.
            if published(shared, session.conn_id) {
                Duration::ZERO
            } else {
                Duration::from_millis(20)
            }
        }
        _ => {
            if published(shared, session.conn_id) {
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            }
        }
    };
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut wait = wait;
    while data.len() < MAX_ANSWER {
        match tokio::time::timeout(wait, io.r.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => data.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        wait = Duration::ZERO;
    }
    io.empty = if data.is_empty() { io.empty + 1 } else { 0 };
    Ok((Some(tunnel::polling_byte(io.empty)), data))
}

/// Opens an RTMPT session: its RTMP connection runs on the listener's task group until it ends
/// (closed, timed out, evicted before publishing); the answer is its id.
fn open_session(shared: &Arc<Shared>, peer: SocketAddr) -> Vec<u8> {
    let id = tunnel::new_session_id();
    let (core, tunnel_end) = tokio::io::duplex(TUNNEL_BUFFER);
    let (tr, tw) = tokio::io::split(tunnel_end);
    let (cr, cw) = tokio::io::split(core);
    let (conn_id, evict) = admit(shared, peer);
    let session = Arc::new(TunnelSession {
        conn_id,
        peer: peer.ip(),
        io: tokio::sync::Mutex::new(TunnelIo {
            r: tr,
            w: Some(tw),
            empty: 0,
        }),
    });
    shared.tunnels.lock().unwrap().insert(id.clone(), session);
    ldebug!(shared, "{peer}: RTMPT session opened: connection {conn_id}");
    let sh = shared.clone();
    let key = id.clone();
    shared.tunnel_tasks.spawn(async move {
        sh.counters.open.fetch_add(1, Ordering::Relaxed);
        let _guard = OpenGuard(sh.clone(), conn_id);
        let deadline = Instant::now() + sh.config.handshake_timeout;
        // RTMP or RTMPE (RTMPTE) inside the tunnel.
        sniff(sh.clone(), cr, cw, peer, deadline, conn_id, evict, None).await;
        sh.tunnels.lock().unwrap().remove(&key);
    });
    let mut body = id.into_bytes();
    body.push(b'\n');
    body
}

/// How long [`Listener::stop`] waits for publisher threads to end once their sockets are shut.
const THREAD_STOP_WAIT: Duration = Duration::from_millis(500);

const EVICTED: &str = "evicted by a newer connection before it published (max-connections)";

/// How a connection ended, for the log line.
enum End {
    Closed,
    Error(String),
    Timeout(String),
    Refused(&'static str),
    TakenOver,
    Evicted,
    /// The element stopped (a publisher thread's socket was shut).
    Stopped,
}

impl End {
    fn reason(&self) -> String {
        match self {
            End::Closed => "the client closed the connection".to_owned(),
            End::Error(e) => e.clone(),
            End::Timeout(e) => e.clone(),
            End::Refused(why) => format!("publish refused: {why}"),
            End::TakenOver => "another publisher took over".into(),
            End::Evicted => EVICTED.into(),
            End::Stopped => "the element stopped".into(),
        }
    }
}

/// The connection's last line, once it ended (its publication, if any, ended with it).
fn closed(shared: &Shared, conn: &Connection, peer: SocketAddr, end: &End, publisher: Option<u64>) {
    let reason = end.reason();
    if let Some(id) = publisher {
        end_publication(shared, id, &reason);
    }
    ldebug!(
        shared,
        "{peer}: connection closed: {reason} ({} bytes in, {} out{})",
        conn.counters.bytes_in,
        conn.counters.bytes_out,
        match publisher {
            Some(id) => format!(", publisher {id}"),
            None => String::new(),
        }
    );
}

async fn run<R, W>(
    shared: Arc<Shared>,
    mut r: R,
    mut w: W,
    peer: SocketAddr,
    mut deadline: Instant,
    conn_id: u64,
    evict: Arc<Notify>,
) where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin + 'static,
{
    let config = ConnectionConfig {
        name: shared.config.name.clone(),
        peer: peer.to_string(),
        application: shared.config.application.clone(),
        chunk_size: shared.config.chunk_size,
        max_message_size: shared.config.max_message_size,
        auth: shared.config.auth.clone(),
        ..ConnectionConfig::default()
    };
    let mut random = [0u8; super::PACKET_SIZE];
    {
        use rand::RngExt;
        rand::rng().fill(&mut random[..]);
    }
    let epoch = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        & 0xffff_ffff) as u32;
    let mut conn = Connection::new(config, epoch, &random);
    let kick = Arc::new(Kick::default());
    let mut publisher: Option<u64> = None;
    let mut detach_tried = false;
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        // Until publishing, the whole set-up has one deadline; then the idle timeout.
        let set_up = conn.phase() != Phase::Publishing;
        let until = if set_up {
            deadline
        } else {
            Instant::now() + shared.config.idle_timeout
        };
        let read = tokio::select! {
            r = tokio::time::timeout_at(until.into(), r.read(&mut buf)) => r,
            _ = kick.notify.notified() => break End::TakenOver,
            // Only before publishing: a publisher is never evicted (a notice that comes too
            // late is ignored).
            _ = evict.notified(), if publisher.is_none() => break End::Evicted,
        };
        let n = match read {
            Err(_) if set_up => {
                break End::Timeout(format!(
                    "no complete handshake, connect and publish within {:?} (stuck in {:?})",
                    shared.config.handshake_timeout,
                    conn.phase()
                ));
            }
            Err(_) => {
                break End::Timeout(format!(
                    "nothing received for {:?}",
                    shared.config.idle_timeout
                ));
            }
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => break End::Error(format!("read failed: {e}")),
        };
        if publisher.is_some() {
            shared
                .counters
                .bytes_received
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        let mut events = match conn.receive(&buf[..n]) {
            Ok(e) => e,
            Err(e) => {
                // The answer to a refused connect goes out before closing.
                let out = conn.take_output();
                let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(&out)).await;
                break End::Error(e.to_string());
            }
        };
        let mut end = None;
        while !events.is_empty() {
            let mut answered = false;
            for ev in std::mem::take(&mut events) {
                match ev {
                    Event::Media(tag) => {
                        if let Some(id) = publisher
                            && shared.current.load(Ordering::Acquire) == id
                        {
                            shared.output.push_tag(tag);
                        }
                    }
                    Event::Publish(req) => match decide(&shared, &conn, &req, peer, &kick) {
                        Ok(id) => {
                            answered = true;
                            // Publishing: no longer evictable.
                            shared
                                .pending
                                .lock()
                                .unwrap()
                                .retain(|(c, _)| *c != conn_id);
                            conn.accept_publish();
                            publisher = Some(id);
                            shared.counters.publishers.fetch_add(1, Ordering::Relaxed);
                            shared.counters.bytes_received.store(0, Ordering::Relaxed);
                            // `decide` queued Item::Started.
                        }
                        Err((code, why)) => {
                            shared
                                .counters
                                .publishes_refused
                                .fetch_add(1, Ordering::Relaxed);
                            conn.refuse_publish(code, why);
                            end = Some(End::Refused(why));
                        }
                    },
                    Event::Unpublished(how) => {
                        // The publication ends; the connection stays until the client closes it
                        // (rtmp2sink sends deleteStream after FCUnpublish and takes a close
                        // before its own for an error), at most another handshake-timeout.
                        if let Some(id) = publisher.take() {
                            end_publication(
                                &shared,
                                id,
                                &format!("the client unpublished ({how})"),
                            );
                            ldebug!(
                                shared,
                                "{peer}: publisher {id} unpublished ({how}); the connection may close"
                            );
                        }
                        deadline = Instant::now() + shared.config.handshake_timeout;
                    }
                    Event::Connected(_) => {}
                }
            }
            if !answered || end.is_some() {
                break;
            }
            // What came after the publish, now that it is answered.
            match conn.receive(&[]) {
                Ok(e) => events = e,
                Err(e) => end = Some(End::Error(e.to_string())),
            }
        }
        let out = conn.take_output();
        if !out.is_empty() {
            match tokio::time::timeout(Duration::from_secs(10), w.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break End::Error(format!("write failed: {e}")),
                Err(_) => break End::Timeout("the client read nothing for 10 s".into()),
            }
        }
        if let Some(end) = end {
            break end;
        }
        if let Some(id) = publisher
            && !detach_tried
        {
            // Publishing over plain TCP: the rest of the connection is a thread's (see
            // [`publish_thread`]).
            detach_tried = true;
            match into_std(r, w) {
                Ok(Ok(stream)) => {
                    start_publish_thread(shared, conn, stream, peer, conn_id, id, kick);
                    return;
                }
                Ok(Err(e)) => {
                    let end = End::Error(format!("the socket could not leave the runtime: {e}"));
                    closed(&shared, &conn, peer, &end, publisher);
                    return;
                }
                Err((r2, w2)) => (r, w) = (r2, w2),
            }
        }
    };
    if matches!(end, End::TakenOver) {
        conn.end_publish("NetStream.Unpublish.Success", "another publisher took over");
        let out = conn.take_output();
        let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(&out)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
    closed(&shared, &conn, peer, &end, publisher);
}

/// The socket of a plain TCP connection (`rtmp`'s reader: the first bytes read, then the
/// socket's read half; the write half), blocking, when those bytes were all taken; otherwise
/// (TLS, RTMPE, RTMPT) the reader and writer as they were.
#[allow(clippy::type_complexity)]
fn into_std<R: 'static, W: 'static>(
    r: R,
    w: W,
) -> Result<std::io::Result<std::net::TcpStream>, (R, W)> {
    use std::any::Any;
    type PlainReader = tokio::io::Chain<std::io::Cursor<Vec<u8>>, tokio::net::tcp::OwnedReadHalf>;
    let back = |r: Box<dyn Any>, w: Box<dyn Any>| match (r.downcast::<R>(), w.downcast::<W>()) {
        (Ok(r), Ok(w)) => Err((*r, *w)),
        _ => unreachable!("the reader and writer are of the types they were"),
    };
    let r: Box<dyn Any> = Box::new(r);
    let w: Box<dyn Any> = Box::new(w);
    if !r.is::<PlainReader>() || !w.is::<tokio::net::tcp::OwnedWriteHalf>() {
        return back(r, w);
    }
    let (Ok(r), Ok(w)) = (
        r.downcast::<PlainReader>(),
        w.downcast::<tokio::net::tcp::OwnedWriteHalf>(),
    ) else {
        unreachable!("checked above");
    };
    let (first, half) = r.into_inner();
    if first.position() < first.get_ref().len() as u64 {
        return back(Box::new(first.chain(half)), w);
    }
    let stream = match half.reunite(*w) {
        Ok(s) => s,
        Err(e) => return back(Box::new(first.chain(e.0)), Box::new(e.1)),
    };
    // Failing here (leaving the runtime's poller), the connection is lost: Ok(Err).
    Ok(stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s)))
}

/// Publisher `id` is gone: its slot is free, the output learns why.
fn end_publication(shared: &Shared, id: u64, reason: &str) {
    let mut active = shared.active.lock().unwrap();
    if active.as_ref().is_some_and(|a| a.info.id == id) {
        *active = None;
        shared.current.store(0, Ordering::Release);
    }
    drop(active);
    shared.output.push_marker(Item::Ended {
        publisher: id,
        reason: reason.to_owned(),
    });
}

/// Allows a publish (the publisher's id) or refuses it (onStatus code, reason).
fn decide(
    shared: &Shared,
    conn: &Connection,
    req: &PublishRequest,
    peer: SocketAddr,
    kick: &Arc<Kick>,
) -> Result<u64, (&'static str, &'static str)> {
    let c = &shared.config;
    let app = conn
        .connect_info()
        .map(|i| i.app.split('?').next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    if !c.stream_key.is_empty() && !constant_time_eq(req.key.as_bytes(), c.stream_key.as_bytes()) {
        ldebug!(shared, "{peer}: publish refused: wrong stream key");
        return Err(("NetStream.Publish.BadName", "wrong stream key"));
    }
    if let Some(hook) = &c.hook {
        let info = PublishInfo {
            app: app.clone(),
            key: req.key.clone(),
            peer,
            query: req.query.clone(),
        };
        if !hook(&info) {
            ldebug!(
                shared,
                "{peer}: publish refused: the application's publish handler said no"
            );
            return Err(("NetStream.Publish.Rejected", "refused by the application"));
        }
    }
    let mut active = shared.active.lock().unwrap();
    if let Some(a) = active.as_ref() {
        if !c.takeover {
            ldebug!(
                shared,
                "{peer}: publish refused: publisher {} from {} is publishing (takeover=false)",
                a.info.id,
                a.info.peer
            );
            return Err(("NetStream.Publish.BadName", "stream is busy"));
        }
        ldebug!(
            shared,
            "{peer}: takes over from publisher {} from {} (takeover=true)",
            a.info.id,
            a.info.peer
        );
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared.current.store(id, Ordering::Release);
    // The new publication starts in the output before the one taken over ends there: a
    // publisher's thread sees its socket shut at once and queues its end, which must not come
    // first (the source would take it for the end of the stream).
    shared.output.push_marker(Item::Started {
        publisher: id,
        peer,
    });
    if let Some(a) = active.as_ref() {
        a.kick.kick();
    }
    *active = Some(Active {
        info: PublisherInfo {
            id,
            peer,
            started: Instant::now(),
            in_chunk_size: conn.in_chunk_size(),
            app,
            fourcc_list: conn
                .connect_info()
                .map(|i| i.fourcc_list.clone())
                .unwrap_or_default(),
        },
        kick: kick.clone(),
    });
    ldebug!(
        shared,
        "{peer}: publish accepted: publisher {id} ({}, chunk size {})",
        req.kind,
        conn.in_chunk_size()
    );
    Ok(id)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Bytes a publisher thread reads at once at most.
const THREAD_READ: usize = 256 * 1024;

/// The name of a publisher's thread.
pub const PUBLISH_THREAD: &str = "rtmpsrvsrc-net";

/// The longest a publisher thread lets audio and metadata it queued wait for the next video
/// frame before it wakes the element's streaming thread for them (see [`publish_thread`]):
/// [`ListenerConfig::hold`] at most.
pub const MAX_HOLD: Duration = Duration::from_millis(50);

/// Hands an accepted publisher's plain TCP connection to a thread of its own
/// ([`publish_thread`]), or to the runtime's blocking pool if no thread can start.
#[allow(clippy::too_many_arguments)]
fn start_publish_thread(
    shared: Arc<Shared>,
    conn: Connection,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    publisher: u64,
    kick: Arc<Kick>,
) {
    // Other descriptors of the socket: a takeover and a stop shut it to end the thread's read.
    if let Ok(s) = socket2::SockRef::from(&stream).try_clone() {
        *kick.socket.lock().unwrap() = Some(s);
    }
    if let Ok(s) = socket2::SockRef::from(&stream).try_clone() {
        shared.threads.lock().unwrap().insert(conn_id, s);
    }
    // A takeover or stop that came before the descriptors were there.
    if kick.taken() || shared.stopped.load(Ordering::Acquire) {
        let _ = stream.shutdown(std::net::Shutdown::Read);
    }
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    ldebug!(
        shared,
        "{peer}: publisher {publisher} is read on a thread of its own ({PUBLISH_THREAD})"
    );
    let sh = shared.clone();
    let job = Arc::new(Mutex::new(Some(move || {
        publish_thread(sh, conn, stream, peer, conn_id, publisher, kick)
    })));
    let j = job.clone();
    let spawned = std::thread::Builder::new()
        .name(PUBLISH_THREAD.into())
        .spawn(move || {
            if let Some(job) = j.lock().unwrap().take() {
                job();
            }
        });
    if let Err(e) = spawned {
        ldebug!(
            shared,
            "{peer}: no thread for publisher {publisher} ({e}): read on the runtime's blocking pool"
        );
        if let Some(job) = job.lock().unwrap().take() {
            crate::runtime::handle().spawn_blocking(job);
        }
    }
}

/// A publisher's plain TCP connection after its publish was accepted, with blocking I/O on a
/// thread of its own: each read wakes this one thread and takes what has arrived (up to
/// [`THREAD_READ`]), where a task on the shared runtime woke a worker through its poller and
/// re-armed a timer for every read. Media goes to the output as on the runtime; the same
/// limits apply (idle timeout, the core's limits); a takeover or the element stopping shuts the
/// socket for reading, which ends the read.
///
/// Waking the element's streaming thread costs about as much as what it then does for a tag, so
/// the thread is woken once per read, and a read that brought only audio or metadata lets them
/// wait for the video frame that follows, at most [`ListenerConfig::hold`] (the read then waits
/// at most that long): at 30 fps one wake-up per video frame with the audio between, instead of
/// one per tag.
fn publish_thread(
    shared: Arc<Shared>,
    mut conn: Connection,
    mut stream: std::net::TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    publisher_id: u64,
    kick: Arc<Kick>,
) {
    use std::io::{ErrorKind, Read, Write};
    let _guard = OpenGuard(shared.clone(), conn_id);
    let mut publisher = Some(publisher_id);
    let mut timeout = shared.config.idle_timeout;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf = vec![0u8; THREAD_READ];
    let ended = |shared: &Shared| {
        if kick.taken() {
            End::TakenOver
        } else if shared.stopped.load(Ordering::Acquire) {
            End::Stopped
        } else {
            End::Closed
        }
    };
    // Since when tags wait in the output without the consumer woken for them.
    let mut held_since: Option<std::time::Instant> = None;
    let hold = shared.config.hold.min(MAX_HOLD);
    let end = loop {
        if kick.taken() {
            break End::TakenOver;
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => break ended(&shared),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e)
                if held_since.is_some()
                    && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                // No video frame came within `hold`: the held tags go now.
                shared.output.release();
                held_since = None;
                let _ = stream.set_read_timeout(Some(timeout));
                continue;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break End::Timeout(match publisher {
                    Some(_) => format!("nothing received for {timeout:?}"),
                    None => format!("nothing received for {timeout:?} after the publication ended"),
                });
            }
            Err(e) => {
                break match ended(&shared) {
                    End::Closed => End::Error(format!("read failed: {e}")),
                    other => other,
                };
            }
        };
        if publisher.is_some() {
            shared
                .counters
                .bytes_received
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        let mut end = None;
        // This read queued a video tag (the consumer is woken now), or only others.
        let (mut video, mut other) = (false, false);
        match conn.receive(&buf[..n]) {
            Ok(events) => {
                for ev in events {
                    match ev {
                        Event::Media(tag) => {
                            if let Some(id) = publisher
                                && shared.current.load(Ordering::Acquire) == id
                            {
                                if tag.kind == TagKind::Video {
                                    video = true;
                                } else {
                                    other = true;
                                }
                                shared.output.push_tag_held(tag);
                            }
                        }
                        Event::Unpublished(how) => {
                            // As on the runtime: the connection may stay a handshake-timeout.
                            if let Some(id) = publisher.take() {
                                end_publication(
                                    &shared,
                                    id,
                                    &format!("the client unpublished ({how})"),
                                );
                                ldebug!(
                                    shared,
                                    "{peer}: publisher {id} unpublished ({how}); the connection may close"
                                );
                            }
                            timeout = shared.config.handshake_timeout;
                            let _ = stream.set_read_timeout(Some(timeout));
                        }
                        // The core allows one publication per connection: not reported again.
                        Event::Publish(_) => {
                            conn.refuse_publish(
                                "NetStream.Publish.BadName",
                                "one publication per connection",
                            );
                            end = Some(End::Refused("one publication per connection"));
                        }
                        Event::Connected(_) => {}
                    }
                }
            }
            Err(e) => end = Some(End::Error(e.to_string())),
        }
        if video
            || end.is_some()
            || hold.is_zero()
            || held_since.is_some_and(|t| t.elapsed() >= hold)
        {
            shared.output.release();
            if held_since.take().is_some() {
                let _ = stream.set_read_timeout(Some(timeout));
            }
        } else if other && held_since.is_none() {
            held_since = Some(std::time::Instant::now());
            let _ = stream.set_read_timeout(Some(hold.min(timeout)));
        }
        let out = conn.take_output();
        if !out.is_empty() {
            match stream.write_all(&out) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break End::Timeout("the client read nothing for 10 s".into());
                }
                Err(e) => break End::Error(format!("write failed: {e}")),
            }
        }
        if let Some(end) = end {
            break end;
        }
    };
    // Nothing stays held behind the end.
    shared.output.release();
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if matches!(end, End::TakenOver) {
        conn.end_publish("NetStream.Unpublish.Success", "another publisher took over");
        let _ = stream.write_all(&conn.take_output());
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    closed(&shared, &conn, peer, &end, publisher);
    shared.threads.lock().unwrap().remove(&conn_id);
    shared.thread_ended.notify_all();
}
