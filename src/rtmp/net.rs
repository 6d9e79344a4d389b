//! The network side of a publication: one thread with a current-thread Tokio runtime (kept
//! rather than the plugin's shared runtime because it measured cheaper: see
//! [`Publication::start`]) that connects (TCP, or TLS for rtmps), drives the [`Publisher`], sends
//! the tags the streaming thread queued, and reconnects with bounded exponential backoff
//! ([`crate::net::backoff`]) when an established publication drops. The streaming thread only
//! ever locks the queue for a push; it never waits for the network.
//!
//! Specifications: RTMP specification 1.0 §5 (the chunk stream over TCP); RTMPS is RTMP inside
//! TLS (RFC 8446, RFC 5246) with server name indication (RFC 6066 §3) and certificate checks by
//! rustls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};

use super::client::{Error, Event, Phase, Publisher, PublisherConfig, StopCommands};
use super::flv::{Tag, TagKind};
use super::queue::{Pushed, Rebase, Resume, TagQueue};
use super::url::{Location, Scheme};
use crate::net::backoff::Backoff;
use crate::net::tls::TlsValidation;

#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The element's name, for logs (may be empty).
    pub name: String,
    pub location: Location,
    pub flash_version: String,
    pub chunk_size: u32,
    /// For connecting, each setup step, and a write that makes no progress.
    pub timeout: Duration,
    pub tls: TlsValidation,
    pub reconnect_attempts: u32,
    pub reconnect_initial_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// Bytes of tags queued at most.
    pub queue_size: usize,
    /// Commands sent when stopping a publication.
    pub stop_commands: StopCommands,
    /// Connect when the first tag is pushed rather than at once.
    pub connect_on_first_push: bool,
    /// How long the network thread waits after the queue becomes non-empty before it sends
    /// what has gathered (sooner once [`FLUSH_BYTES`] are queued): fewer wake-ups and writes
    /// for at most this much added latency. Zero sends each tag at once.
    pub linger: Duration,
    /// After a reconnection, timestamps continue from the last one sent (see [`Rebase`]).
    pub continue_timestamps: bool,
    /// For servers that ask for Adobe or Limelight authentication.
    pub credentials: Option<super::auth::Credentials>,
    /// The output bitrate limit in bytes per second (0: none); changeable while running with
    /// [`Publication::set_peak_rate`].
    pub peak_rate: u64,
    /// Enhanced RTMP: the codecs announced in connect's `fourCcList` (empty: none).
    pub fourcc_list: Vec<String>,
}

/// Queued bytes that end the linger early.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// When a publication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before it ever published: the location, the key or the server is wrong.
    Connecting,
    /// It published, dropped, and every reconnection attempt failed.
    Lost,
}

/// What the network side reports to the element.
#[derive(Debug, Clone)]
pub enum Notice {
    /// Publishing started (`reconnected`: after a drop).
    Publishing { reconnected: bool },
    Reconnecting {
        attempt: u32,
        of: u32,
        delay: Duration,
        reason: Error,
    },
    /// The publication ended with an error; nothing more will be sent. `context` says where
    /// to (the location, its stream name redacted) and, after a drop, how many attempts were made.
    Failed {
        error: Error,
        context: String,
        stage: Stage,
    },
    /// Something odd the server did that we tolerate.
    Warning(String),
    /// A status message from the server while publishing.
    Status { level: String, code: String },
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Bits per second sent over the last second.
    pub bitrate: u64,
    pub reconnects: u64,
    pub acks_received: u64,
    pub acks_sent: u64,
    pub bytes_acked: u32,
    pub in_chunk_size: u32,
    pub out_chunk_size: u32,
    pub in_window_ack_size: u32,
    pub out_window_ack_size: u32,
    pub video_tags: u64,
    pub audio_tags: u64,
    pub data_tags: u64,
    /// Frames skipped after a reconnection until the next keyframe.
    pub resume_drops: u64,
    pub publishing: bool,
    /// The current connection's counts already added to the totals above.
    session_bytes_in: u64,
    session_acks_received: u64,
    session_acks_sent: u64,
}

struct Shared {
    queue: Mutex<TagQueue>,
    wake: Notify,
    stats: Mutex<Stats>,
    /// Bytes taken from the queue and not yet written.
    in_flight: std::sync::atomic::AtomicUsize,
    failed: AtomicBool,
    /// The first tag was pushed (a deferred connection may start).
    pushed: AtomicBool,
    go: Notify,
    /// The output limit in bytes per second (0: none).
    peak_rate: AtomicU64,
}

/// A running publication.
pub struct Publication {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// Signalled when the network task has ended.
    done: std::sync::mpsc::Receiver<()>,
}

pub type NoticeFn = Box<dyn Fn(Notice) + Send + Sync>;

impl Publication {
    /// Starts connecting in the background on a thread of its own (`rsrtmpsink-net`) with a
    /// current-thread Tokio runtime (no further threads). `benches/rtmp_publish.rs` measured
    /// the alternatives worse on the sink side: a task on the plugin's shared runtime 1.18-1.50x
    /// (mean 1.31) the CPU, this thread driving the future with the shared runtime's I/O and
    /// timers (`Handle::block_on`) 1.05-1.32x (mean 1.14): each batch's wake-up (queue
    /// non-empty, 5 ms linger timer) then crosses threads. `notify` is called from that thread.
    pub fn start(config: NetConfig, notify: NoticeFn) -> std::io::Result<Publication> {
        let shared = Arc::new(Shared {
            queue: Mutex::new({
                let mut q = TagQueue::new(config.queue_size);
                q.rebase = Rebase::new(config.continue_timestamps);
                q
            }),
            wake: Notify::new(),
            stats: Mutex::new(Stats::default()),
            in_flight: Default::default(),
            failed: AtomicBool::new(false),
            pushed: AtomicBool::new(false),
            go: Notify::new(),
            peak_rate: AtomicU64::new(config.peak_rate),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("rsrtmpsink-net".into())
            .spawn(move || {
                /// Marks the publication ended even when the network side panics.
                struct Ended(Arc<Shared>, std::sync::mpsc::Sender<()>);
                impl Drop for Ended {
                    fn drop(&mut self) {
                        self.0.failed.store(true, Ordering::SeqCst);
                        let _ = self.1.send(());
                    }
                }
                let _ended = Ended(thread_shared.clone(), done_tx);
                runtime.block_on(run(config, thread_shared, stop_rx, &notify));
            })?;
        Ok(Publication { shared, stop, done })
    }

    /// Queues a tag for sending; never blocks on the network. The network thread is woken
    /// only when the queue goes from empty to non-empty (it drains everything queued when it
    /// runs) or when [`FLUSH_BYTES`] have gathered, not per tag.
    pub fn push(&self, tag: Tag) -> Pushed {
        if !self.shared.pushed.load(Ordering::Relaxed)
            && !self.shared.pushed.swap(true, Ordering::SeqCst)
        {
            self.shared.go.notify_one();
        }
        let (r, wake) = {
            let mut q = self.shared.queue.lock().unwrap();
            let before = q.bytes();
            let was_empty = q.is_empty();
            let r = q.push(tag);
            let wake = r == Pushed::Queued
                && (was_empty || (before < FLUSH_BYTES && q.bytes() >= FLUSH_BYTES));
            (r, wake)
        };
        if wake {
            self.shared.wake.notify_one();
        }
        r
    }

    /// Changes the output bitrate limit (bytes per second, 0: none) while running.
    pub fn set_peak_rate(&self, bytes_per_second: u64) {
        self.shared
            .peak_rate
            .store(bytes_per_second, Ordering::Relaxed);
        // A waiting network thread re-reads it.
        self.shared.wake.notify_one();
    }

    /// The network side has ended (failed or stopped): nothing queued will be sent.
    pub fn is_finished(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// A handle to wait for the queue to drain without holding on to the publication.
    pub fn drain_waiter(&self) -> DrainWaiter {
        DrainWaiter(self.shared.clone())
    }

    /// Waits until everything queued has been written, at most `timeout`. False on timeout or
    /// when the network side ended first.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        self.drain_waiter().wait(timeout)
    }

    /// Counters, with the queue's depth and drops: (stats, queued tags, queued bytes, drops).
    pub fn stats(&self) -> (Stats, usize, usize, u64) {
        let stats = self.shared.stats.lock().unwrap().clone();
        let q = self.shared.queue.lock().unwrap();
        let drops = q.drops + stats.resume_drops;
        (stats, q.len(), q.bytes(), drops)
    }

    /// Ends the publication (deleteStream when publishing) and waits for the network thread at
    /// most `timeout`. Called from a thread of the shared runtime (an application stopping the
    /// element from a bus handler there), it does not wait: the thread ends on its own.
    pub fn stop(self, timeout: Duration) {
        let _ = self.stop.send(true);
        self.shared.queue.lock().unwrap().clear();
        if tokio::runtime::Handle::try_current().is_err() {
            let _ = self.done.recv_timeout(timeout);
        }
        // Otherwise, or on timeout, the thread finishes on its own (every wait in it is bounded).
    }
}

pub struct DrainWaiter(Arc<Shared>);

impl DrainWaiter {
    /// See [`Publication::wait_drained`].
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let empty = self.0.queue.lock().unwrap().is_empty()
                && self.0.in_flight.load(Ordering::SeqCst) == 0;
            if empty {
                return true;
            }
            if self.0.failed.load(Ordering::SeqCst) || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Returns once a stop was asked for (or the publication was dropped). Holds no `watch::Ref`
/// across an await, so the task stays `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn backoff(cfg: &NetConfig, attempt: u32) -> Duration {
    Backoff::new(cfg.reconnect_initial_delay, cfg.reconnect_max_delay).delay(attempt)
}

async fn run(
    cfg: NetConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    notify: &NoticeFn,
) {
    if cfg.connect_on_first_push {
        tokio::select! {
            _ = shared.go.notified() => {}
            _ = stopped(&mut stop) => return,
        }
    }
    let mut ever_published = false;
    let mut failures = 0u32;
    // Adobe/Limelight authentication: each step is a new connection, at once.
    let mut auth = super::auth::ClientAuth::default();
    let mut auth_steps = 0;
    loop {
        let mut published = false;
        let result = session(
            &cfg,
            &shared,
            &mut stop,
            notify,
            ever_published,
            &mut published,
            &auth,
        )
        .await;
        shared.stats.lock().unwrap().publishing = false;
        if published {
            ever_published = true;
            failures = 0;
        }
        // A later connection starts the exchange anew (challenges are good once).
        let next_auth = match &result {
            Err(Error::AuthRetry(next)) if auth_steps < 3 && !*stop.borrow() => {
                Some((**next).clone())
            }
            _ => None,
        };
        if let Some(next) = next_auth {
            auth_steps += 1;
            log_id!(
                debug,
                &cfg.name,
                "connect to {} refused with an authentication challenge ({}): connecting again \
                 (step {auth_steps})",
                cfg.location,
                next.authmod().map_or("?", |m| m.as_str())
            );
            auth = next;
            continue;
        }
        auth = super::auth::ClientAuth::default();
        auth_steps = 0;
        let error = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        if *stop.borrow() {
            return;
        }
        if !ever_published {
            // The first connection fails fast: a wrong URL, key or server is no blink.
            log_id!(
                debug,
                &cfg.name,
                "could not publish to {}, no reconnection before a first publication: {error}",
                cfg.location
            );
            notify(Notice::Failed {
                error,
                context: format!("Could not publish to {}", cfg.location),
                stage: Stage::Connecting,
            });
            return;
        }
        failures += 1;
        if failures > cfg.reconnect_attempts {
            log_id!(
                debug,
                &cfg.name,
                "giving up on {} after {} reconnection attempts: {error}",
                cfg.location,
                cfg.reconnect_attempts
            );
            notify(Notice::Failed {
                error,
                context: format!(
                    "Lost the publication to {} and gave up after {} reconnection attempts",
                    cfg.location, cfg.reconnect_attempts
                ),
                stage: Stage::Lost,
            });
            return;
        }
        let delay = backoff(&cfg, failures);
        shared.stats.lock().unwrap().reconnects += 1;
        log_id!(
            debug,
            &cfg.name,
            "reconnection attempt {failures}/{} to {} in {} ms: {error}",
            cfg.reconnect_attempts,
            cfg.location,
            delay.as_millis()
        );
        notify(Notice::Reconnecting {
            attempt: failures,
            of: cfg.reconnect_attempts,
            delay,
            reason: error,
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn io_err(what: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::Closed {
            context: what.to_owned(),
            kind: None,
        },
        kind @ (std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe) => Error::Closed {
            context: what.to_owned(),
            kind: Some(kind),
        },
        kind => Error::Io {
            context: what.to_owned(),
            kind,
            message: e.to_string(),
        },
    }
}

/// A connection: the byte stream, and for RTMPT the task that carries it in HTTP requests
/// (awaited when stopping, so that the last bytes and the session's close go out).
type Connected = (Box<dyn Io>, Option<tokio::task::JoinHandle<()>>);

async fn connect(cfg: &NetConfig) -> Result<Connected, Error> {
    let loc = &cfg.location;
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    log_id!(
        debug,
        &cfg.name,
        "connecting to {}:{} over {} (timeout {} s)",
        loc.host,
        loc.port,
        match loc.scheme {
            Scheme::Rtmp => "TCP",
            Scheme::Rtmps => "TLS",
            Scheme::Rtmpt => "HTTP (RTMPT)",
            Scheme::Rtmpts => "HTTPS (RTMPTS)",
            Scheme::Rtmpe => "TCP (RTMPE)",
            Scheme::Rtmpte => "HTTP (RTMPTE)",
        },
        cfg.timeout.as_secs_f32()
    );
    let tcp = tokio::time::timeout_at(
        deadline,
        tokio::net::TcpStream::connect((loc.host.as_str(), loc.port)),
    )
    .await
    .map_err(|_| {
        Error::Timeout(format!(
            "connecting to {}:{} ({} s)",
            loc.host,
            loc.port,
            cfg.timeout.as_secs_f32()
        ))
    })?
    .map_err(|e| Error::Io {
        context: format!("connecting to {}:{}", loc.host, loc.port),
        kind: e.kind(),
        message: e.to_string(),
    })?;
    let _ = tcp.set_nodelay(true);
    log_id!(
        debug,
        &cfg.name,
        "TCP connection to {}:{} established: peer {}, local {}",
        loc.host,
        loc.port,
        tcp.peer_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string()),
        tcp.local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    );
    match loc.scheme {
        Scheme::Rtmp => return Ok((Box::new(tcp), None)),
        Scheme::Rtmpt => return tunnel(cfg, tcp, deadline).await,
        Scheme::Rtmpe => return rtmpe(cfg, tcp, None, deadline).await,
        Scheme::Rtmpte => {
            let (io, pump) = tunnel(cfg, tcp, deadline).await?;
            return rtmpe(cfg, io, pump, deadline).await;
        }
        Scheme::Rtmps | Scheme::Rtmpts => {}
    }
    let config = crate::net::tls::client_config(crate::net::tls::system_roots(), cfg.tls)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(loc.host.clone())
        .map_err(|e| Error::Tls(format!("'{}' is no valid server name: {e}", loc.host)))?;
    let tls = tokio::time::timeout_at(
        deadline,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| Error::Timeout("in the TLS handshake".into()))?
    .map_err(|e| Error::Tls(format!("handshake with {}:{}: {e}", loc.host, loc.port)))?;
    {
        let (_, conn) = tls.get_ref();
        log_id!(
            debug,
            &cfg.name,
            "TLS handshake with {}:{} done: {:?}, {:?}",
            loc.host,
            loc.port,
            conn.protocol_version(),
            conn.negotiated_cipher_suite().map(|s| s.suite())
        );
    }
    if loc.scheme == Scheme::Rtmpts {
        return tunnel(cfg, tls, deadline).await;
    }
    Ok((Box::new(tls), None))
}

/// RTMPE: the encrypted handshake over `stream` (TCP, or an RTMPT tunnel whose pump is
/// `inner`), then a task that gives the publisher core a plain handshake of its own and carries
/// its bytes RC4-encrypted both ways.
async fn rtmpe<S>(
    cfg: &NetConfig,
    mut stream: S,
    inner: Option<tokio::task::JoinHandle<()>>,
    deadline: tokio::time::Instant,
) -> Result<Connected, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use super::handshake::PACKET_SIZE;
    let mut random = [0u8; PACKET_SIZE];
    {
        use rand::RngExt;
        rand::rng().fill(&mut random[..]);
    }
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.as_millis() & 0xffff_ffff) as u32);
    let (client, c0c1) = super::rtmpe::Client::new(epoch, &random);
    let step = |what: &'static str| {
        move |r: Result<std::io::Result<()>, tokio::time::error::Elapsed>| match r {
            Err(_) => Err(Error::Timeout(format!("in the RTMPE handshake ({what})"))),
            Ok(Err(e)) => Err(io_err(what, e)),
            Ok(Ok(())) => Ok(()),
        }
    };
    step("sending C0+C1")(tokio::time::timeout_at(deadline, stream.write_all(&c0c1)).await)?;
    let mut answer = vec![0u8; 1 + 2 * PACKET_SIZE];
    step("waiting for S0+S1+S2")(
        tokio::time::timeout_at(deadline, stream.read_exact(&mut answer))
            .await
            .map(|r| r.map(|_| ())),
    )?;
    let keys = client
        .finish(&answer)
        .map_err(|e| Error::Protocol(format!("RTMPE: {e}")))?;
    step("sending C2")(tokio::time::timeout_at(deadline, stream.write_all(&keys.c2)).await)?;
    log_id!(
        debug,
        &cfg.name,
        "RTMPE handshake done (type {}, 1024-bit Diffie-Hellman): RC4 from now on",
        keys.version
    );
    let (core, shim) = tokio::io::duplex(256 * 1024);
    let task = tokio::spawn(rtmpe_shim(
        shim,
        stream,
        keys.to_server,
        keys.from_server,
        inner,
    ));
    Ok((Box::new(core), Some(task)))
}

async fn rtmpe_shim<S>(
    mut core: tokio::io::DuplexStream,
    stream: S,
    mut enc: super::rtmpe::Rc4,
    mut dec: super::rtmpe::Rc4,
    inner: Option<tokio::task::JoinHandle<()>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use super::handshake::PACKET_SIZE;
    // The core's own plain handshake, answered here: S1 without a version, S2 echoing C1.
    let mut c0c1 = vec![0u8; 1 + PACKET_SIZE];
    if core.read_exact(&mut c0c1).await.is_ok() {
        let mut answer = vec![3u8];
        answer.resize(1 + PACKET_SIZE, 0);
        answer.extend_from_slice(&c0c1[1..]);
        let mut c2 = vec![0u8; PACKET_SIZE];
        if core.write_all(&answer).await.is_ok() && core.read_exact(&mut c2).await.is_ok() {
            let (mut sr, mut sw) = tokio::io::split(stream);
            let (mut cr, mut cw) = tokio::io::split(core);
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = cr.read(&mut buf).await {
                    enc.apply(&mut buf[..n]);
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = sw.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = sr.read(&mut buf).await {
                    dec.apply(&mut buf[..n]);
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            };
            // Either side's end ends the other (dropping the halves closes them).
            tokio::select! {
                () = up => {}
                () = down => {}
            }
        }
    }
    if let Some(inner) = inner {
        // RTMPTE: the tunnel sends what is left and closes its session.
        let _ = tokio::time::timeout(Duration::from_secs(3), inner).await;
    }
}

/// RTMPT: opens a tunnel session over `http` and returns the byte stream the publisher uses;
/// a task of this thread's runtime carries it in HTTP requests until the stream is dropped.
async fn tunnel<S>(
    cfg: &NetConfig,
    http: S,
    deadline: tokio::time::Instant,
) -> Result<Connected, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let loc = &cfg.location;
    let host = if loc.host.contains(':') {
        format!("[{}]:{}", loc.host, loc.port)
    } else {
        format!("{}:{}", loc.host, loc.port)
    };
    let open = super::tunnel::ClientTunnel::open(http, host, cfg.timeout, cfg.name.clone());
    let t = tokio::time::timeout_at(deadline, open)
        .await
        .map_err(|_| Error::Timeout("opening the RTMPT session".into()))?
        .map_err(|e| Error::Protocol(format!("RTMPT: {e}")))?;
    let (core, pump) = tokio::io::duplex(256 * 1024);
    let pump = tokio::spawn(t.pump(pump));
    Ok((Box::new(core), Some(pump)))
}

async fn session(
    cfg: &NetConfig,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    notify: &NoticeFn,
    reconnecting: bool,
    published: &mut bool,
    auth: &super::auth::ClientAuth,
) -> Result<(), Error> {
    let (stream, pump) = tokio::select! {
        s = connect(cfg) => s?,
        _ = stopped(stop) => return Ok(()),
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    {
        let mut st = shared.stats.lock().unwrap();
        st.session_bytes_in = 0;
        st.session_acks_received = 0;
        st.session_acks_sent = 0;
    }
    let mut random = [0u8; 1528];
    {
        use rand::RngExt;
        rand::rng().fill(&mut random[..]);
    }
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u32);
    let mut p = Publisher::new(
        PublisherConfig {
            name: cfg.name.clone(),
            app: cfg.location.app.clone(),
            tc_url: cfg.location.tc_url(),
            stream: cfg.location.stream.clone(),
            flash_version: cfg.flash_version.clone(),
            chunk_size: cfg.chunk_size,
            // Servers send commands and control messages; 1 MiB is plenty.
            max_message_size: 1 << 20,
            credentials: cfg.credentials.clone(),
            auth: auth.clone(),
            fourcc_list: cfg.fourcc_list.clone(),
        },
        epoch,
        &random,
    );
    let mut buf = vec![0u8; 64 * 1024];

    // Set-up: handshake, connect, createStream, publish; each step within the timeout.
    let mut phase = p.phase();
    let mut deadline = tokio::time::Instant::now() + cfg.timeout;
    loop {
        if p.has_output() {
            let out = p.take_output();
            tokio::time::timeout_at(deadline, wr.write_all(&out))
                .await
                .map_err(|_| Error::Timeout(format!("sending, {}", p.phase().waiting_for())))?
                .map_err(|e| io_err(p.phase().waiting_for(), e))?;
            shared.stats.lock().unwrap().bytes_out += out.len() as u64;
        }
        if p.phase() == Phase::Publishing {
            break;
        }
        if p.phase() != phase {
            phase = p.phase();
            deadline = tokio::time::Instant::now() + cfg.timeout;
        }
        let n = tokio::select! {
            r = tokio::time::timeout_at(deadline, rd.read(&mut buf)) => r
                .map_err(|_| Error::Timeout(format!(
                    "{} ({} s)", phase.waiting_for(), cfg.timeout.as_secs_f32()
                )))?
                .map_err(|e| io_err(phase.waiting_for(), e))?,
            _ = stopped(stop) => return Ok(()),
        };
        if n == 0 {
            return Err(Error::Closed {
                context: phase.waiting_for().to_owned(),
                kind: None,
            });
        }
        for ev in p.receive(&buf[..n])? {
            match ev {
                Event::HandshakeEchoMismatch => notify(Notice::Warning(
                    "the server's S2 does not echo our C1 (tolerated)".into(),
                )),
                Event::Status { level, code, .. } => notify(Notice::Status { level, code }),
                Event::Connected | Event::Publishing => {}
            }
        }
    }
    *published = true;
    log_id!(
        debug,
        &cfg.name,
        "publishing to {}{}",
        cfg.location,
        if reconnecting { " (reconnected)" } else { "" }
    );
    sync_stats(&p, shared);
    shared.stats.lock().unwrap().publishing = true;
    notify(Notice::Publishing {
        reconnected: reconnecting,
    });

    // A new connection after a drop starts with the metadata and codec configuration, then
    // waits for a keyframe.
    let mut resume = Resume::start(false);
    if reconnecting {
        let mut guard = shared.queue.lock().unwrap();
        let q = &mut *guard;
        q.rebase.reconnected();
        for t in q.headers.tags() {
            p.send_tag(&q.rebase.apply(t.clone()));
        }
        resume = Resume::start(q.has_video);
    }

    let mut out: Vec<u8> = Vec::new();
    let mut written = 0usize;
    // Progress is checked once per tick rather than with a timer per write.
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut tick_bytes = shared.stats.lock().unwrap().bytes_out;
    let mut tick_at = Instant::now();
    // After a wake-up: gather tags for `cfg.linger` before sending.
    let mut lingering = false;
    let linger = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(linger);
    // The peak-rate limit: waiting for tokens.
    let mut bucket = TokenBucket::new(0, Instant::now());
    let mut pacing = false;
    // TLS: everything written is handed to the socket only once flushed.
    let tls = cfg.location.scheme == Scheme::Rtmps;
    let mut unflushed = false;
    let pace = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pace);
    loop {
        if written == out.len() && !lingering && !unflushed {
            out.clear();
            written = 0;
            let mut sent = [0u64; 3];
            let mut skipped = 0;
            {
                let mut q = shared.queue.lock().unwrap();
                while out.len() < 256 * 1024 {
                    let Some(t) = q.pop() else { break };
                    if resume.admit(&t) {
                        let t = q.rebase.apply(t);
                        p.send_tag(&t);
                        sent[t.kind as usize] += 1;
                    } else {
                        skipped += 1;
                    }
                    p.append_output(&mut out);
                }
                p.append_output(&mut out);
                shared.in_flight.store(out.len(), Ordering::SeqCst);
            }
            if skipped > 0 {
                log_id!(
                    trace,
                    &cfg.name,
                    "{skipped} frames skipped: the new connection waits for a keyframe"
                );
            }
            if !out.is_empty() || skipped > 0 {
                let mut st = shared.stats.lock().unwrap();
                st.audio_tags += sent[TagKind::Audio as usize];
                st.video_tags += sent[TagKind::Video as usize];
                st.data_tags += sent[TagKind::Script as usize];
                st.resume_drops += skipped;
            }
            last_progress = Instant::now();
        }
        // How much the rate limit lets us write now.
        let mut allowed = out.len() - written;
        if allowed > 0 && !pacing {
            let rate = shared.peak_rate.load(Ordering::Relaxed);
            if rate > 0 {
                let now = Instant::now();
                bucket.set_rate(rate, now);
                match bucket.allow(now, allowed) {
                    Ok(n) => allowed = n,
                    Err(wait) => {
                        pacing = true;
                        pace.as_mut()
                            .reset(tokio::time::Instant::from_std(now + wait));
                    }
                }
            }
        }
        tokio::select! {
            biased;
            _ = stopped(stop) => {
                log_id!(
                    debug,
                    &cfg.name,
                    "stopping: {} bytes taken from the queue not yet written are dropped",
                    out.len() - written
                );
                p.finish(cfg.stop_commands);
                let bye = p.take_output();
                let grace = cfg.timeout.min(Duration::from_secs(1));
                let _ = tokio::time::timeout(grace, async {
                    wr.write_all(&bye).await?;
                    wr.shutdown().await
                }).await;
                if let Some(pump) = pump {
                    // RTMPT: the tunnel sends what is left and closes the session.
                    let _ = tokio::time::timeout(cfg.timeout.min(Duration::from_secs(3)), pump)
                        .await;
                }
                return Ok(());
            }
            r = rd.read(&mut buf) => {
                let n = r.map_err(|e| io_err("while publishing", e))?;
                if n == 0 {
                    return Err(Error::Closed {
                        context: "while publishing".into(),
                        kind: None,
                    });
                }
                for ev in p.receive(&buf[..n])? {
                    if let Event::Status { level, code, .. } = ev {
                        notify(Notice::Status { level, code });
                    }
                }
                // Pings and acknowledgements go out with the next write.
                if written == out.len() {
                    p.append_output(&mut out);
                    shared.in_flight.store(out.len(), Ordering::SeqCst);
                    lingering = false;
                }
                sync_stats(&p, shared);
            }
            // One branch for writing and, over TLS, flushing: both need the writer.
            w = async {
                if written < out.len() {
                    wr.write(&out[written..written + allowed]).await.map(Some)
                } else {
                    wr.flush().await.map(|()| None)
                }
            }, if (written < out.len() && !pacing) || (unflushed && written == out.len()) => {
                let Some(n) = w.map_err(|e| io_err("while publishing", e))? else {
                    unflushed = false;
                    last_progress = Instant::now();
                    shared.in_flight.store(0, Ordering::SeqCst);
                    continue;
                };
                if n == 0 {
                    return Err(Error::Closed {
                        context: "while publishing".into(),
                        kind: None,
                    });
                }
                written += n;
                if shared.peak_rate.load(Ordering::Relaxed) > 0 {
                    bucket.spend(n);
                }
                last_progress = Instant::now();
                shared.stats.lock().unwrap().bytes_out += n as u64;
                if written == out.len() {
                    if tls {
                        // rustls may hold records back when the socket was full.
                        unflushed = true;
                    } else {
                        shared.in_flight.store(0, Ordering::SeqCst);
                    }
                }
            }
            _ = &mut pace, if pacing => {
                pacing = false;
                // Waiting for the rate limit is not the server stalling.
                last_progress = Instant::now();
            }
            _ = shared.wake.notified(), if written == out.len() => {
                // The queue became non-empty: let more gather unless enough has, or the
                // linger is off.
                if lingering || cfg.linger.is_zero() {
                    lingering = false;
                } else {
                    lingering = true;
                    linger.as_mut().reset(tokio::time::Instant::now() + cfg.linger);
                }
            }
            _ = &mut linger, if lingering => lingering = false,
            _ = tick.tick() => {
                if (written < out.len() || unflushed) && !pacing
                    && last_progress.elapsed() >= cfg.timeout
                {
                    let (queued_tags, queued_bytes) = {
                        let q = shared.queue.lock().unwrap();
                        (q.len(), q.bytes())
                    };
                    log_id!(
                        debug,
                        &cfg.name,
                        "the server accepted nothing for {} ms ({} bytes unsent in the \
                         current write, {} tags / {} bytes queued): dropping the connection",
                        last_progress.elapsed().as_millis(),
                        out.len() - written,
                        queued_tags,
                        queued_bytes
                    );
                    return Err(Error::Stalled {
                        after: cfg.timeout,
                        unsent: out.len() - written,
                    });
                }
                let mut st = shared.stats.lock().unwrap();
                let elapsed = tick_at.elapsed().as_secs_f64();
                if elapsed > 0.0 {
                    st.bitrate = ((st.bytes_out - tick_bytes) as f64 * 8.0 / elapsed) as u64;
                }
                tick_bytes = st.bytes_out;
                tick_at = Instant::now();
            }
        }
    }
}

/// A token bucket for the output limit: `rate` bytes per second, bursts of at most
/// [`TokenBucket::burst`] bytes. No GStreamer, no clock of its own: the caller passes the time.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Writes smaller than this wait for tokens rather than trickle out in tiny pieces.
    const QUANTUM: usize = 4096;

    pub fn new(rate: u64, now: Instant) -> Self {
        let mut b = TokenBucket {
            rate: 0,
            tokens: 0.0,
            last: now,
        };
        b.set_rate(rate, now);
        b
    }

    /// At most 50 ms worth of data (and at least four quanta, so that a timer firing late
    /// loses no tokens) goes out at once.
    pub fn burst(&self) -> f64 {
        (self.rate as f64 * 0.05).max(4.0 * Self::QUANTUM as f64)
    }

    /// Applies a (possibly new) rate; a new rate starts with a full bucket.
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        if rate != self.rate {
            self.rate = rate;
            self.tokens = self.burst();
            self.last = now;
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst());
    }

    /// How many of `want` bytes may be written now (at least one), or how long to wait first.
    pub fn allow(&mut self, now: Instant, want: usize) -> Result<usize, Duration> {
        if self.rate == 0 {
            return Ok(want);
        }
        self.refill(now);
        let need = want.min(Self::QUANTUM) as f64;
        if self.tokens >= need {
            return Ok(want.min(self.tokens as usize).max(1));
        }
        Err(Duration::from_secs_f64(
            (need - self.tokens) / self.rate as f64,
        ))
    }

    /// Bytes written.
    pub fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// Copies the publisher's counters into the shared stats. Totals continue across connections.
fn sync_stats(p: &Publisher, shared: &Shared) {
    let mut st = shared.stats.lock().unwrap();
    let c = &p.counters;
    st.bytes_in += c.bytes_in - st.session_bytes_in;
    st.session_bytes_in = c.bytes_in;
    st.acks_received += c.acks_received - st.session_acks_received;
    st.session_acks_received = c.acks_received;
    st.acks_sent += c.acks_sent - st.session_acks_sent;
    st.session_acks_sent = c.acks_sent;
    st.bytes_acked = c.bytes_acked;
    st.in_window_ack_size = c.in_window_ack_size;
    st.out_window_ack_size = c.out_window_ack_size;
    st.in_chunk_size = p.in_chunk_size();
    st.out_chunk_size = p.out_chunk_size();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let cfg = NetConfig {
            name: String::new(),
            location: Location::parse("rtmp://h/a/s").unwrap(),
            flash_version: String::new(),
            chunk_size: 128,
            timeout: Duration::from_secs(1),
            tls: TlsValidation::ALL,
            reconnect_attempts: 5,
            reconnect_initial_delay: Duration::from_millis(500),
            reconnect_max_delay: Duration::from_millis(3000),
            queue_size: 1000,
            stop_commands: StopCommands::default(),
            connect_on_first_push: false,
            linger: Duration::ZERO,
            continue_timestamps: false,
            credentials: None,
            peak_rate: 0,
            fourcc_list: Vec::new(),
        };
        let d: Vec<u64> = (1..=6)
            .map(|a| backoff(&cfg, a).as_millis() as u64)
            .collect();
        assert_eq!(d, [500, 1000, 2000, 3000, 3000, 3000]);
    }

    #[test]
    fn token_bucket_holds_the_rate() {
        let t0 = Instant::now();
        // 100 kB/s: a 16384-byte burst, then 4096-byte quanta.
        let mut b = TokenBucket::new(100_000, t0);
        assert_eq!(b.allow(t0, 1_000_000), Ok(16384));
        b.spend(16384);
        let wait = b.allow(t0, 1_000_000).unwrap_err();
        assert!((wait.as_secs_f64() - 0.04096).abs() < 1e-6, "{wait:?}");
        // Sending as fast as allowed for 10 s of simulated time moves 10 s worth.
        let mut now = t0;
        let mut sent = 0usize;
        while now < t0 + Duration::from_secs(10) {
            match b.allow(now, 1_000_000) {
                Ok(n) => {
                    b.spend(n);
                    sent += n;
                }
                Err(w) => now += w,
            }
        }
        let expected = 1_000_000.0;
        assert!(
            (sent as f64 - expected).abs() < 10_000.0,
            "sent {sent}, expected about {expected}"
        );
        // Small writes are not held back for a whole quantum.
        let mut b = TokenBucket::new(100_000, t0);
        assert_eq!(b.allow(t0, 10), Ok(10));
        // No limit: everything at once.
        let mut b = TokenBucket::new(0, t0);
        assert_eq!(b.allow(t0, 123_456), Ok(123_456));
    }
}
