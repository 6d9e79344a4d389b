//! An RTSP client for one presentation, independent of GStreamer (RFC 2326 / 7826 client side).
//!
//! Specifications: RFC 2326 §10.1-§10.10 (OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN,
//! GET_PARAMETER, SET_PARAMETER, REDIRECT), §11.2 (3xx redirection), §3.6 and §12.29 (npt Range),
//! §12.33 (RTP-Info), §12.37 (Session and its timeout: keep-alives), appendix C.1.1 (control URLs
//! against Content-Base/Content-Location); RFC 7826 §13, §18.40, §18.45, §18.49; RFC 3550 §6.4.2
//! (Receiver Reports).
//!
//! [`Client::start`] runs the whole exchange as a task on the plugin's shared runtime: OPTIONS,
//! DESCRIBE (with Basic/Digest authentication and 3xx redirects), SETUP of every stream over the
//! first transport the server accepts, PLAY, keep-alives before the session times out, Receiver
//! Reports, and TEARDOWN (bounded) when stopped. What arrives is reported through
//! [`ClientEvent`]s; commands (PLAY with a range, PAUSE, GET/SET_PARAMETER) go through the
//! [`Client`] handle.

pub mod conn;
pub mod parse;
pub mod record;
mod udp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtsp_types::{Method, Request, Response, StatusCode, Url, Version, headers};
use tokio::sync::{mpsc, oneshot};

use self::conn::{Carrier, Connection, Incoming};
use self::udp::{SourceFilter, UdpReceiver};
pub use crate::net::tls::TlsValidation;
use crate::rtp::ssrc::{SenderLock, Verdict};
use crate::rtp::{self, rtcp, stats::ReceiverStats};
use crate::rtsp::auth::{self, Authenticator, Credentials};
use crate::rtsp::codec::Limits;
use crate::rtsp::sdp::{MediaDescription, SessionDescription, resolve_control};
use crate::rtsp::transport::{LowerTransport, TransportSpec, parse_transports};
use crate::runtime::TaskGroup;

/// Why the client failed. Each variant keeps what an application may act on: the I/O error's
/// kind, the status the server answered, the method it answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A socket operation failed.
    #[error("I/O error: {context}: {message}")]
    Io {
        /// What was being done ("connecting to host:port", "binding UDP ports", ...).
        context: String,
        kind: std::io::ErrorKind,
        message: String,
    },
    /// The connection or the client ended while something waited on it.
    #[error("I/O error: {0}")]
    Closed(String),
    #[error("timeout: {0}")]
    Timeout(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered a request with an error status.
    #[error("the server answered {method} with {status} {reason}")]
    Status {
        method: String,
        status: u16,
        reason: String,
    },
    #[error("not authorized: {0}")]
    Unauthorized(String),
    #[error("bad SDP: {0}")]
    Sdp(String),
    #[error("no usable transport: {0}")]
    NoTransport(String),
    /// TLS failed with `host`: its certificate was refused (`certificate`), or the handshake
    /// or a record (rustls's reason).
    #[error("TLS with {host}: {reason}")]
    Tls {
        host: String,
        reason: String,
        certificate: bool,
    },
    /// The TLS settings cannot be used (a CA file that cannot be read, ...).
    #[error("TLS settings: {0}")]
    TlsSettings(String),
    /// The HTTP tunnel could not be opened.
    #[error(transparent)]
    Tunnel(#[from] crate::rtsp::tunnel::TunnelError),
    /// The description lists more streams than allowed.
    #[error("the description lists {count} streams, more than the {limit} allowed (max-streams)")]
    TooManyStreams { count: usize, limit: usize },
}

impl ClientError {
    /// The error that ends a transport negotiation: one that already says no transport was
    /// usable stays as it is, any other (a 461) becomes the reason none was.
    fn into_no_transport(self) -> ClientError {
        match self {
            e @ ClientError::NoTransport(_) => e,
            e => ClientError::NoTransport(e.to_string()),
        }
    }

    /// An I/O error while doing `context`, keeping its kind.
    pub fn io(context: impl Into<String>, e: &std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// `location` (or any text) without the `user:password@` of its URLs, for error messages and
/// logs: a location is never shown with its credentials.
pub use crate::net::redact::strip_userinfo as redact_url;

/// The address a stream's UDP media come from: the SETUP answer's `source` when it names one
/// (RFC 2326 12.39), the RTSP connection's peer otherwise.
fn media_source(reply: &TransportSpec, peer: IpAddr) -> IpAddr {
    reply
        .source
        .as_deref()
        .and_then(|s| s.parse::<IpAddr>().ok())
        .unwrap_or(peer)
}

/// Lower transports the client may try, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Udp,
    UdpMulticast,
    Tcp,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `rtsp://host[:port]/path`; credentials in it are used and never sent in request lines.
    pub url: String,
    pub credentials: Option<Credentials>,
    pub protocols: Vec<TransportKind>,
    pub user_agent: String,
    /// Bounds connecting and every request/response exchange.
    pub tcp_timeout: Duration,
    /// How long TEARDOWN may take when stopping.
    pub teardown_timeout: Duration,
    /// No UDP data for this long after PLAY: set the session up again over TCP (if allowed).
    pub udp_timeout: Duration,
    pub port_range: Option<(u16, u16)>,
    pub keep_alive: bool,
    pub rtcp_interval: Duration,
    pub multicast_iface: Option<Ipv4Addr>,
    pub limits: Limits,
    /// Reconnection attempts after the connection is lost (0: report the loss as final).
    pub reconnect_attempts: u32,
    /// Delay before the first attempt; it doubles up to `reconnect_max_delay`.
    pub reconnect_initial_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// Streams (SDP media) a description may list at most; more is an error. At most
    /// [`MAX_STREAMS_LIMIT`]: each stream takes two interleaved channels of 256.
    pub max_streams: usize,
    /// Who is playing: the `id` of the client's log records (rtspsrc2's element name).
    pub name: String,
    /// TLS for `rtsps`, `rtspst` and `rtspsh` URLs, set up when one is played.
    pub tls: TlsSettings,
    /// Tunnel through HTTP for `rtsp` URLs too (rtspsrc's `protocols=http`).
    pub http_tunnel: bool,
}

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Which certificate problems fail the handshake.
    pub validation: TlsValidation,
    /// CA certificates (PEM) trusted besides the system's; a server presenting one of them as
    /// its own is trusted too (see [`crate::net::tls::client_config_pinning`]).
    pub ca_file: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            validation: TlsValidation::ALL,
            ca_file: None,
        }
    }
}

impl TlsSettings {
    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        use crate::net::tls;
        let ca_file = self.ca_file.as_deref();
        let settings = |e: &dyn std::fmt::Display| ClientError::TlsSettings(e.to_string());
        let roots = tls::roots_with_ca_file(ca_file).map_err(|e| settings(&e))?;
        let pinned = match ca_file {
            Some(path) => tls::ca_file_certificates(path).map_err(|e| settings(&e))?,
            None => Vec::new(),
        };
        tls::client_config_pinning(Arc::new(roots), pinned, self.validation)
            .map_err(|e| settings(&e))
    }
}

/// The most streams one RTSP connection can carry interleaved: two channels (RTP, RTCP) each.
pub const MAX_STREAMS_LIMIT: usize = 128;

/// The interleaved channels of stream `index` (RTP, RTCP): 2i and 2i+1, when they exist.
fn interleaved_channels(index: usize) -> Option<(u8, u8)> {
    let rtp = u8::try_from(index.checked_mul(2)?).ok()?;
    Some((rtp, rtp.checked_add(1)?))
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            credentials: None,
            protocols: vec![
                TransportKind::Udp,
                TransportKind::UdpMulticast,
                TransportKind::Tcp,
            ],
            user_agent: concat!("gst-plugin-livestreaming/", env!("CARGO_PKG_VERSION")).into(),
            tcp_timeout: Duration::from_secs(20),
            teardown_timeout: Duration::from_secs(2),
            udp_timeout: Duration::from_secs(5),
            port_range: None,
            keep_alive: true,
            rtcp_interval: Duration::from_secs(5),
            multicast_iface: None,
            limits: Limits::default(),
            reconnect_attempts: 5,
            reconnect_initial_delay: Duration::from_millis(500),
            reconnect_max_delay: Duration::from_secs(10),
            max_streams: 16,
            name: "rtsp-client".into(),
            tls: TlsSettings::default(),
            http_tunnel: false,
        }
    }
}

/// One stream of the presentation, as described by the server.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub index: usize,
    pub media: MediaDescription,
    /// The stream's control URL, resolved.
    pub control: String,
}

/// RTP-Info for one stream (RFC 2326 12.33).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtpInfo {
    pub stream: usize,
    pub seq: Option<u16>,
    pub rtptime: Option<u32>,
    /// The SSRC the stream is sent with (RFC 7826 18.45).
    pub ssrc: Option<u32>,
}

/// What happens, in order.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// DESCRIBE succeeded. `range` is the presentation's npt range, if any.
    Described {
        streams: Vec<StreamInfo>,
        range: Option<String>,
    },
    /// Every stream is set up over `transport`.
    SetUp {
        transport: TransportKind,
    },
    /// No data arrived over `from` within the UDP timeout: setting up again over `to`.
    FallingBack {
        from: TransportKind,
        to: TransportKind,
    },
    /// PLAY succeeded.
    Playing {
        rtp_info: Vec<RtpInfo>,
        range: Option<String>,
    },
    /// RTP packets of one stream, in arrival order: what one wake-up of the receiving side
    /// found (a video frame is a burst of packets). Delivered on the thread that read them.
    Rtp {
        stream: usize,
        packets: Vec<Bytes>,
        /// That thread reads for this stream alone (its UDP socket's, or the RTSP
        /// connection's reader when the connection carries only this stream): the handler
        /// may do its work there and may block it, as downstream blocks udpsrc's thread (the
        /// socket's buffer takes what arrives meanwhile, and the connection keeps its
        /// requests answered, see [`conn`]). False: other streams wait on it too.
        exclusive: bool,
    },
    /// Interleaved packets were dropped before reaching their stream: they piled up beyond
    /// [`conn::BACKLOG_BYTES`] while the handler held the connection's reader.
    Dropped {
        packets: u64,
    },
    /// A Sender Report: `ntp` is the sender's wallclock for RTP time `rtptime`.
    SenderReport {
        stream: usize,
        ntp: u64,
        rtptime: u32,
    },
    /// The server sent ANNOUNCE with a new description (RFC 2326 10.3), e.g. after its input's
    /// format changed: the streams as it now describes them, or why the description is unusable.
    Announce {
        streams: Result<Vec<StreamInfo>, ClientError>,
    },
    /// The server sent REDIRECT (or a 3xx later in the session).
    Redirect {
        location: String,
    },
    /// The connection ended and will not be re-established.
    Closed {
        reason: String,
    },
    /// The connection was lost: attempt `attempt` of `of` starts after `delay`.
    Reconnecting {
        attempt: u32,
        of: u32,
        delay: Duration,
        reason: String,
    },
    /// A new session is playing after a reconnection; streams keep their indices.
    Reconnected,
    Error(ClientError),
}

/// Per-stream receive figures.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_lost: i64,
    pub jitter: Duration,
    pub sender_reports: u64,
    /// SSRC of the sender, from its RTP packets.
    pub sender_ssrc: u32,
    /// Packets dropped because they were not valid RTP/RTCP.
    pub invalid_packets: u64,
    /// RTP and RTCP datagrams dropped because they came from another address than the server's.
    pub foreign_packets: u64,
    /// RTP packets of another SSRC than the sender's that never became the sender, and Sender
    /// Reports of another SSRC: dropped.
    pub foreign_ssrc_packets: u64,
    /// The RTP payload type the description gives the stream.
    pub payload_type: u8,
    /// RTP packets dropped because they carried another payload type (one the description does
    /// not give this stream, so nothing downstream could read them).
    pub unknown_payload_packets: u64,
    /// Round-trip time to the server, from the last RTSP request and its response on the
    /// control connection. (A client that only receives learns no RTT from RTCP: report
    /// blocks give it to senders, RFC 3550 6.4.1.)
    pub round_trip: Option<Duration>,
}

enum Command {
    Play(Option<String>, oneshot::Sender<Result<(), ClientError>>),
    Pause(oneshot::Sender<Result<(), ClientError>>),
    GetParameter(Vec<u8>, oneshot::Sender<Result<Vec<u8>, ClientError>>),
    SetParameter(Vec<u8>, oneshot::Sender<Result<(), ClientError>>),
    Stop(oneshot::Sender<()>),
}

type EventFn = Arc<dyn Fn(ClientEvent) + Send + Sync>;

/// What a connection tells the session loop.
enum Control {
    Closed(String),
    Redirect(String),
}

/// A running client. Dropping it stops it (TEARDOWN bounded by `teardown_timeout`).
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    /// The session's task on the shared runtime; aborted when the client is dropped.
    tasks: TaskGroup,
    /// How long dropping the client waits for TEARDOWN (and for a request still in flight).
    teardown_timeout: Duration,
    stats: Arc<RwLock<SharedStats>>,
}

impl Client {
    /// Starts connecting, describing, setting up and playing `config.url`.
    pub fn start(
        config: ClientConfig,
        events: impl Fn(ClientEvent) + Send + Sync + 'static,
    ) -> std::io::Result<Client> {
        let (tx, rx) = mpsc::unbounded_channel();
        let events: EventFn = Arc::new(events);
        let stats: Arc<RwLock<SharedStats>> = Arc::default();
        let tasks = TaskGroup::new();
        let teardown_timeout = config.teardown_timeout;
        tasks.spawn(run(config, events, rx, stats.clone()));
        Ok(Client {
            commands: tx,
            tasks,
            teardown_timeout,
            stats,
        })
    }

    /// Sends a command at once; its answer comes through the returned future, which the caller
    /// may await anywhere (or drop: the command is carried out all the same).
    fn send<T, M>(&self, make: M) -> impl Future<Output = Result<T, ClientError>> + Send + use<T, M>
    where
        T: Send + 'static,
        M: FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Command,
    {
        let (tx, rx) = oneshot::channel();
        let sent = self.commands.send(make(tx)).is_ok();
        async move {
            if !sent {
                return Err(ClientError::Closed("the client is not running".into()));
            }
            rx.await
                .map_err(|_| ClientError::Closed("the client stopped".into()))?
        }
    }

    /// Sends a command and blocks until it is answered (not to be called inside the runtime).
    fn call<T, M>(&self, make: M) -> Result<T, ClientError>
    where
        T: Send + 'static,
        M: FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Command,
    {
        crate::runtime::handle().block_on(self.send(make))
    }

    /// PLAY without waiting: the answer comes through the future.
    pub fn play_async(
        &self,
        range: Option<String>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + use<> {
        self.send(|tx| Command::Play(range, tx))
    }

    /// PAUSE without waiting: the answer comes through the future.
    pub fn pause_async(&self) -> impl Future<Output = Result<(), ClientError>> + Send + use<> {
        self.send(Command::Pause)
    }

    /// GET_PARAMETER without waiting: the response body comes through the future.
    pub fn get_parameter_async(
        &self,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send + use<> {
        self.send(|tx| Command::GetParameter(body, tx))
    }

    /// SET_PARAMETER without waiting: the answer comes through the future.
    pub fn set_parameter_async(
        &self,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + use<> {
        self.send(|tx| Command::SetParameter(body, tx))
    }

    /// PLAY, optionally with a `Range` value such as `npt=12.5-`. Blocks until answered.
    pub fn play(&self, range: Option<String>) -> Result<(), ClientError> {
        self.call(|tx| Command::Play(range, tx))
    }

    /// Receive figures per stream.
    pub fn stats(&self) -> Vec<StreamStats> {
        let stats = self.stats.read().unwrap().clone();
        stats.iter().map(|s| s.lock().unwrap().1.clone()).collect()
    }
}

impl Drop for Client {
    /// TEARDOWN, then the session's tasks end. Waits at most `teardown_timeout` in all (a
    /// request still waiting for its answer included), and only on a thread outside the
    /// runtime: dropped inside it, the client aborts at once rather than block a worker.
    fn drop(&mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(tx)).is_ok()
            && tokio::runtime::Handle::try_current().is_err()
        {
            let timeout = self.teardown_timeout;
            // The timer is made inside the runtime: made outside, it finds no reactor.
            let _ = crate::runtime::handle()
                .block_on(async move { tokio::time::timeout(timeout, rx).await });
        }
        self.tasks.abort_all();
    }
}

/// Where one stream's packets come from.
enum StreamTransport {
    Udp {
        rtcp: Arc<tokio::net::UdpSocket>,
        server_rtcp: Option<SocketAddr>,
    },
    Tcp {
        rtcp_channel: u8,
    },
}

struct Session {
    /// The `id` of log records.
    name: String,
    conn: Arc<Connection>,
    /// Where the streams' figures are kept (the request round-trip time goes there too).
    stats: Arc<RwLock<SharedStats>>,
    id: Option<String>,
    timeout: Duration,
    url: Url,
    auth: Option<Authenticator>,
    credentials: Option<Credentials>,
    /// The server lists GET_PARAMETER (and has not refused it as a keep-alive).
    get_parameter_supported: Arc<AtomicBool>,
    kind: TransportKind,
    streams: Vec<StreamInfo>,
    transports: Vec<StreamTransport>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    receivers: Vec<UdpReceiver>,
}

/// Channel → (stream, is RTCP) for interleaved data.
type ChannelMap = Arc<RwLock<HashMap<u8, (usize, bool)>>>;
type SharedStats = Arc<Vec<Mutex<(ReceiverStats, StreamStats, SenderLock<HeldPacket>)>>>;
/// An RTP packet of a source on probation, kept until it becomes the sender.
type HeldPacket = (rtp::RtpHeader, Instant, Bytes);

async fn run(
    mut config: ClientConfig,
    events: EventFn,
    mut commands: mpsc::UnboundedReceiver<Command>,
    stats_cell: Arc<RwLock<SharedStats>>,
) {
    let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Control>();
    let channels: ChannelMap = Arc::default();
    let mut session = match establish(
        &config,
        &config.protocols,
        true,
        &events,
        &channels,
        &stats_cell,
        control_tx.clone(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            events(ClientEvent::Error(e));
            // Keep answering commands so callers never hang.
            while let Some(cmd) = commands.recv().await {
                fail(
                    cmd,
                    ClientError::Closed("the session could not be established".into()),
                );
            }
            return;
        }
    };
    let keepalive_every = (session.timeout / 2).max(Duration::from_secs(1));
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + keepalive_every,
        keepalive_every,
    );
    let mut rtcp_tick = tokio::time::interval(config.rtcp_interval);
    let our_ssrc: u32 = {
        use rand::RngExt;
        rand::rng().random()
    };
    // UDP that yields nothing within udp_timeout falls back to TCP, as rtspsrc does.
    let can_fall_back =
        session.kind != TransportKind::Tcp && config.protocols.contains(&TransportKind::Tcp);
    let udp_deadline = tokio::time::sleep(config.udp_timeout);
    tokio::pin!(udp_deadline);
    let mut watching_udp = can_fall_back;
    loop {
        tokio::select! {
            _ = &mut udp_deadline, if watching_udp => {
                watching_udp = false;
                let received: u64 = stats_cell.read().unwrap().iter()
                    .map(|s| s.lock().unwrap().1.packets_received).sum();
                if received == 0 {
                    log::debug!(
                        id = config.name.as_str();
                        "{}: no data over {:?} within {:?} of PLAY (a firewall or NAT dropping UDP?): setting the session up again over TCP",
                        session.conn.peer(),
                        session.kind,
                        config.udp_timeout
                    );
                    events(ClientEvent::FallingBack { from: session.kind, to: TransportKind::Tcp });
                    let _ = tokio::time::timeout(config.teardown_timeout, session.teardown()).await;
                    session.reset_transports(&channels);
                    // The old connection's end must not be taken for the new one's.
                    let (tx, rx) = mpsc::unbounded_channel::<Control>();
                    control_rx = rx;
                    match establish(&config, &[TransportKind::Tcp], false, &events, &channels, &stats_cell, tx).await {
                        Ok(s) => session = s,
                        Err(e) => {
                            events(ClientEvent::Error(e));
                            break;
                        }
                    }
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Command::Stop(done) => {
                        let _ = tokio::time::timeout(config.teardown_timeout, session.teardown()).await;
                        let _ = done.send(());
                        break;
                    }
                    Command::Play(range, reply) => {
                        let r = session.play(range.as_deref(), &events).await;
                        let _ = reply.send(r);
                    }
                    Command::Pause(reply) => {
                        let r = session.simple(Method::Pause, Vec::new()).await.map(|_| ());
                        let _ = reply.send(r);
                    }
                    Command::GetParameter(body, reply) => {
                        let r = session.simple(Method::GetParameter, body).await.map(|r| r.body().clone());
                        let _ = reply.send(r);
                    }
                    Command::SetParameter(body, reply) => {
                        let r = session.simple(Method::SetParameter, body).await.map(|_| ());
                        let _ = reply.send(r);
                    }
                }
            }
            _ = keepalive.tick(), if config.keep_alive => session.keep_alive(),
            _ = rtcp_tick.tick() => {
                let stats = stats_cell.read().unwrap().clone();
                session.send_receiver_reports(&stats, our_ssrc).await;
            }
            msg = control_rx.recv() => {
                let (tx, rx) = mpsc::unbounded_channel::<Control>();
                control_rx = rx;
                match msg {
                    Some(Control::Redirect(location)) => {
                        log::debug!(
                            id = config.name.as_str();
                            "{}: REDIRECT to {}: tearing down, a new session there",
                            session.conn.peer(),
                            redact_url(&location)
                        );
                        // RFC 2326 10.10: TEARDOWN here, a new session there.
                        let _ = tokio::time::timeout(config.teardown_timeout, session.teardown()).await;
                        session.reset_transports(&channels);
                        // Ours (user-id/user-pw, else the location's) go only to their origin.
                        config.credentials = match (Url::parse(&config.url), Url::parse(&location)) {
                            (Ok(from), Ok(to)) => {
                                let in_url = auth::split_url_credentials(&from).0;
                                let ours = config.credentials.take().or(in_url);
                                redirect_credentials(&config.name, &from, ours, &to)
                            }
                            _ => None,
                        };
                        config.url = location;
                        let mut protocols = vec![session.kind];
                        protocols.extend(config.protocols.iter().filter(|k| **k != session.kind));
                        match establish(&config, &protocols, false, &events, &channels, &stats_cell, tx).await {
                            Ok(s) if s.streams.len() == session.streams.len() => {
                                session = s;
                                events(ClientEvent::Reconnected);
                            }
                            Ok(_) => {
                                events(ClientEvent::Error(ClientError::Protocol(
                                    "the redirect target describes different streams".into(),
                                )));
                                break;
                            }
                            Err(e) => {
                                events(ClientEvent::Error(e));
                                break;
                            }
                        }
                    }
                    Some(Control::Closed(reason)) => {
                        match reconnect(&config, &session, reason, &events, &channels, &stats_cell, tx).await {
                            Some(s) => {
                                session = s;
                                events(ClientEvent::Reconnected);
                            }
                            None => break,
                        }
                    }
                    None => break,
                }
            }
        }
    }
    for t in session.tasks.drain(..) {
        t.abort();
    }
    session.receivers.clear();
    while let Ok(cmd) = commands.try_recv() {
        fail(cmd, ClientError::Closed("the client stopped".into()));
    }
}

fn fail(cmd: Command, err: ClientError) {
    match cmd {
        Command::Play(_, r) | Command::Pause(r) | Command::SetParameter(_, r) => {
            let _ = r.send(Err(err));
        }
        Command::GetParameter(_, r) => {
            let _ = r.send(Err(err));
        }
        Command::Stop(r) => {
            let _ = r.send(());
        }
    }
}

/// After the connection was lost: new sessions with bounded exponential backoff. `None` when
/// every attempt failed (then [`ClientEvent::Closed`] has been sent).
async fn reconnect(
    config: &ClientConfig,
    old: &Session,
    reason: String,
    events: &EventFn,
    channels: &ChannelMap,
    stats_cell: &Arc<RwLock<SharedStats>>,
    control_tx: mpsc::UnboundedSender<Control>,
) -> Option<Session> {
    let backoff = crate::net::backoff::Backoff::new(
        config.reconnect_initial_delay,
        config.reconnect_max_delay,
    );
    let mut last = reason.clone();
    // The transport that worked before, then the others.
    let mut protocols = vec![old.kind];
    protocols.extend(config.protocols.iter().filter(|k| **k != old.kind));
    for attempt in 1..=config.reconnect_attempts {
        let delay = backoff.delay(attempt);
        log::debug!(
            id = config.name.as_str();
            "{}: reconnection attempt {attempt} of {} in {delay:?}, over {protocols:?}: {last}",
            redact_url(&config.url),
            config.reconnect_attempts
        );
        events(ClientEvent::Reconnecting {
            attempt,
            of: config.reconnect_attempts,
            delay,
            reason: last.clone(),
        });
        tokio::time::sleep(delay).await;
        channels.write().unwrap().clear();
        match establish(
            config,
            &protocols,
            false,
            events,
            channels,
            stats_cell,
            control_tx.clone(),
        )
        .await
        {
            Ok(s) if s.streams.len() == old.streams.len() => return Some(s),
            Ok(_) => {
                last = "the server now describes different streams".into();
            }
            Err(e) => last = e.to_string(),
        }
    }
    let reason = if config.reconnect_attempts == 0 {
        reason
    } else {
        format!(
            "{reason}; {} reconnection attempts failed, the last with: {last}",
            config.reconnect_attempts
        )
    };
    log::debug!(id = config.name.as_str(); "giving up: {reason}");
    events(ClientEvent::Closed { reason });
    None
}

/// Connects, DESCRIBEs (following redirects), SETUPs every stream over the first of
/// `protocols` the server accepts, and PLAYs. `announce_streams`: emit [`ClientEvent::Described`]
/// (not when setting up again for a fallback: the streams are the same).
async fn establish(
    config: &ClientConfig,
    protocols: &[TransportKind],
    announce_streams: bool,
    events: &EventFn,
    channels: &ChannelMap,
    stats_cell: &Arc<RwLock<SharedStats>>,
    control_tx: mpsc::UnboundedSender<Control>,
) -> Result<Session, ClientError> {
    let mut url = Url::parse(&config.url).map_err(|e| {
        ClientError::Protocol(format!("invalid URL '{}': {e}", redact_url(&config.url)))
    })?;
    let (url_credentials, clean) = auth::split_url_credentials(&url);
    url = clean;
    let mut carrier = carrier_of(config, &mut url)?;
    let mut credentials = config.credentials.clone().or(url_credentials);

    let mut redirects = 0;
    let (mut session, describe) = loop {
        let conn = connect(
            config,
            &url,
            &carrier,
            events,
            channels,
            stats_cell,
            control_tx.clone(),
        )
        .await?;
        let mut session = Session {
            name: config.name.clone(),
            conn: Arc::new(conn),
            stats: stats_cell.clone(),
            id: None,
            timeout: Duration::from_secs(60),
            url: url.clone(),
            auth: None,
            credentials: credentials.clone(),
            get_parameter_supported: Arc::default(),
            kind: TransportKind::Tcp,
            streams: Vec::new(),
            transports: Vec::new(),
            tasks: Vec::new(),
            receivers: Vec::new(),
        };
        if let Ok(resp) = session.send(Method::Options, &url, Vec::new(), &[]).await
            && let Some(public) = resp.header(&headers::PUBLIC)
        {
            session.get_parameter_supported.store(
                self::parse::public_lists(public.as_str(), "GET_PARAMETER"),
                Ordering::Relaxed,
            );
        }
        let resp = session
            .send(
                Method::Describe,
                &url,
                Vec::new(),
                &[(headers::ACCEPT, "application/sdp")],
            )
            .await?;
        let status = u16::from(resp.status());
        if (300..400).contains(&status) {
            let location = resp
                .header(&headers::LOCATION)
                .ok_or_else(|| ClientError::Protocol(format!("{status} without Location")))?;
            redirects += 1;
            if redirects > 5 {
                return Err(ClientError::Protocol("too many redirects".into()));
            }
            let target = self::parse::location(location.as_str(), &url).ok_or_else(|| {
                ClientError::Protocol(format!(
                    "bad redirect Location '{}'",
                    redact_url(location.as_str())
                ))
            })?;
            // Credentials in the Location are used, never sent in request lines or shown.
            credentials = redirect_credentials(&config.name, &url, credentials, &target);
            url = auth::split_url_credentials(&target).1;
            carrier = carrier_of(config, &mut url)?;
            log::debug!(
                id = config.name.as_str();
                "{}: DESCRIBE redirected ({status}) to {url}",
                session.conn.peer()
            );
            events(ClientEvent::Redirect {
                location: url.to_string(),
            });
            continue;
        }
        check(&resp, "DESCRIBE")?;
        break (session, resp);
    };

    let base = self::parse::content_base(
        &config.name,
        describe
            .header(&headers::CONTENT_BASE)
            .or_else(|| describe.header(&headers::CONTENT_LOCATION))
            .map(|v| v.as_str()),
        &session.url,
    );
    let (sdp, streams) = streams_of(describe.body(), &base, config.max_streams)?;
    session.streams = streams;
    *stats_cell.write().unwrap() = Arc::new(
        session
            .streams
            .iter()
            .map(|s| {
                Mutex::new((
                    ReceiverStats::new(s.media.clock_rate),
                    StreamStats {
                        payload_type: s.media.payload_type,
                        ..StreamStats::default()
                    },
                    SenderLock::default(),
                ))
            })
            .collect(),
    );
    if announce_streams {
        events(ClientEvent::Described {
            streams: session.streams.clone(),
            range: sdp.range.clone(),
        });
    }

    // Inside TLS or the tunnel the media stays inside too: interleaved, whatever `protocols`.
    let protocols = if carrier.tls.is_some() || carrier.tunnel.is_some() {
        &[TransportKind::Tcp][..]
    } else {
        protocols
    };
    let mut last_err = None;
    let mut chosen = None;
    for kind in protocols {
        match session
            .setup_all(*kind, config, channels, events, stats_cell)
            .await
        {
            Ok(()) => {
                chosen = Some(*kind);
                break;
            }
            Err(e @ ClientError::Status { status: 461, .. })
            | Err(e @ ClientError::NoTransport(_)) => {
                log::debug!(
                    id = config.name.as_str();
                    "{}: {kind:?} refused ({e}), trying the next of {protocols:?}",
                    session.conn.peer()
                );
                last_err = Some(e);
                session.reset_transports(channels);
            }
            Err(e) => return Err(e),
        }
    }
    let Some(kind) = chosen else {
        return Err(last_err.map_or_else(
            || ClientError::NoTransport("no protocol allowed".into()),
            ClientError::into_no_transport,
        ));
    };
    session.kind = kind;
    log::debug!(
        id = config.name.as_str();
        "{}: {} streams set up over {kind:?}, session {}, timeout {:?}",
        session.conn.peer(),
        session.streams.len(),
        session.id.as_deref().unwrap_or("-"),
        session.timeout
    );
    events(ClientEvent::SetUp { transport: kind });
    session.play(Some("npt=0-"), events).await?;
    Ok(session)
}

/// Whether `a` and `b` have the same origin (RFC 6454: scheme, host and port, the scheme's
/// default one when none is given): where credentials given for one may be sent to the other.
fn same_origin(a: &Url, b: &Url) -> bool {
    let origin = |u: &Url| {
        (
            u.scheme().to_ascii_lowercase(),
            u.host_str().map(str::to_ascii_lowercase),
            u.port().unwrap_or(default_port(u.scheme())),
        )
    };
    origin(a) == origin(b)
}

/// The credentials for `to` after a redirect from `from`, where `ours` were used: `ours` (or
/// else the user info of `to`) on the same origin; on another one only the user info `to` itself
/// carries. Ours are never sent to another host than the one they were given for.
fn redirect_credentials(
    name: &str,
    from: &Url,
    ours: Option<Credentials>,
    to: &Url,
) -> Option<Credentials> {
    let theirs = auth::split_url_credentials(to).0;
    if same_origin(from, to) {
        return ours.or(theirs);
    }
    if ours.is_some() {
        log::debug!(
            id = name;
            "redirected to another host ({}): the credentials for {} are not sent there",
            redact_url(to.as_str()),
            redact_url(from.as_str())
        );
    }
    theirs
}

/// The port of a URL that names none: 322 with TLS (RFC 7826 §19.1), else 554.
fn default_port(scheme: &str) -> u16 {
    match scheme {
        "rtsps" | "rtspst" | "rtspsh" => 322,
        _ => 554,
    }
}

/// What carries the session to `url`, from its scheme as rtspsrc reads it: `rtsps` and
/// `rtspst` TLS, `rtsph` the HTTP tunnel, `rtspsh` the tunnel inside TLS, `rtsp`, `rtspt` and
/// `rtspu` neither (the tunnel when `config.http_tunnel`). The URL's scheme becomes the one
/// requests name: `rtsps` with TLS, else `rtsp`.
fn carrier_of(config: &ClientConfig, url: &mut Url) -> Result<Carrier, ClientError> {
    let (tls, tunnel) = match url.scheme() {
        "rtsp" | "rtspt" | "rtspu" => (false, false),
        "rtsps" | "rtspst" => (true, false),
        "rtsph" => (false, true),
        "rtspsh" => (true, true),
        other => {
            return Err(ClientError::Protocol(format!(
                "unsupported URL scheme '{other}'"
            )));
        }
    };
    // Between schemes that are not special to the URL standard, this cannot fail.
    let _ = url.set_scheme(if tls { "rtsps" } else { "rtsp" });
    let tls = if tls {
        Some(config.tls.client_config()?)
    } else {
        None
    };
    let tunnel = (tunnel || config.http_tunnel).then(|| {
        match &url[url::Position::BeforePath..url::Position::AfterQuery] {
            "" => "/".to_owned(),
            target => target.to_owned(),
        }
    });
    Ok(Carrier { tls, tunnel })
}

/// The host (without IPv6 brackets) and port to connect to for `url` over `carrier`.
fn host_port(url: &Url, carrier: &Carrier) -> Result<(String, u16), ClientError> {
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::Protocol(format!("no host in '{url}'")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    // RFC 7826 §19.1: 322 for rtsps.
    let port = url
        .port()
        .unwrap_or(if carrier.tls.is_some() { 322 } else { 554 });
    Ok((host, port))
}

async fn connect(
    config: &ClientConfig,
    url: &Url,
    carrier: &Carrier,
    events: &EventFn,
    channels: &ChannelMap,
    stats_cell: &Arc<RwLock<SharedStats>>,
    control_tx: mpsc::UnboundedSender<Control>,
) -> Result<Connection, ClientError> {
    let (host, port) = host_port(url, carrier)?;
    let events = events.clone();
    let channels = channels.clone();
    let stats_cell = stats_cell.clone();
    let mut batches = Batches::default();
    // Looked up once per read: the streams' figures, whether this connection carries a single
    // stream (its RTP and RTCP), which then may be run on the reader's thread, and the time of
    // arrival of what the read brought.
    let mut per_read: Option<(SharedStats, bool, Instant)> = None;
    let base_url = url.clone();
    let max_streams = config.max_streams;
    let log_name = config.name.clone();
    Connection::connect(
        &host,
        port,
        carrier,
        config.tcp_timeout,
        config.limits,
        config.user_agent.clone(),
        config.name.clone(),
        move |incoming| match incoming {
            Incoming::Interleaved { channel, data } => {
                let target = channels.read().unwrap().get(&channel).copied();
                if let Some((stream, is_rtcp)) = target {
                    let (stats, single, arrival) = per_read.get_or_insert_with(|| {
                        let map = channels.read().unwrap();
                        let single = map.values().all(|(s, _)| *s == stream);
                        (stats_cell.read().unwrap().clone(), single, Instant::now())
                    });
                    batches.exclusive = *single;
                    let packet = Packet {
                        stream,
                        is_rtcp,
                        data,
                        arrival: *arrival,
                    };
                    deliver(&events, stats, packet, &mut batches);
                }
            }
            Incoming::ReadDone => {
                batches.flush(&events);
                per_read = None;
            }
            Incoming::Dropped(packets) => events(ClientEvent::Dropped { packets }),
            Incoming::Request(req) => match req.method() {
                Method::Announce => {
                    let base = req
                        .header(&headers::CONTENT_BASE)
                        .map(|v| v.as_str().to_owned())
                        .or_else(|| req.request_uri().map(|u| u.to_string()))
                        .unwrap_or_else(|| base_url.to_string());
                    events(ClientEvent::Announce {
                        streams: streams_of(req.body(), &base, max_streams)
                            .map(|(_, streams)| streams),
                    });
                }
                Method::Redirect => {
                    let location = req
                        .header(&headers::LOCATION)
                        .map(|l| (l.as_str(), self::parse::location(l.as_str(), &base_url)));
                    if let Some((raw, None)) = location {
                        log::warn!(
                            id = log_name.as_str();
                            "ignoring a REDIRECT to the unusable Location `{}`",
                            redact_url(raw)
                        );
                    }
                    if let Some((_, Some(loc))) = location {
                        let location = String::from(loc);
                        events(ClientEvent::Redirect {
                            location: location.clone(),
                        });
                        let _ = control_tx.send(Control::Redirect(location));
                    }
                }
                _ => {}
            },
            Incoming::Closed(reason) => {
                let _ = control_tx.send(Control::Closed(reason));
            }
        },
    )
    .await
}

/// RTP packets per stream gathered from one wake-up of a reader, to be handed on together.
#[derive(Default)]
struct Batches {
    batches: Vec<(usize, Vec<Bytes>)>,
    /// See [`ClientEvent::Rtp::exclusive`].
    exclusive: bool,
    /// Packets the reader expects in this round: room for them is made at once, rather than
    /// by growing each batch.
    expected: usize,
}

impl Batches {
    /// Packets in one batch at most.
    const MAX: usize = 64;

    fn push(&mut self, events: &EventFn, stream: usize, packet: Bytes) {
        let i = match self.batches.iter().position(|(s, _)| *s == stream) {
            Some(i) => i,
            None => {
                self.batches.push((stream, Vec::new()));
                self.batches.len() - 1
            }
        };
        let packets = &mut self.batches[i].1;
        if packets.capacity() == 0 {
            packets.reserve(self.expected.min(Self::MAX));
        }
        packets.push(packet);
        if packets.len() >= Self::MAX {
            let packets = std::mem::take(packets);
            events(ClientEvent::Rtp {
                stream,
                packets,
                exclusive: self.exclusive,
            });
        }
    }

    fn flush(&mut self, events: &EventFn) {
        for (stream, packets) in &mut self.batches {
            if !packets.is_empty() {
                let packets = std::mem::take(packets);
                events(ClientEvent::Rtp {
                    stream: *stream,
                    packets,
                    exclusive: self.exclusive,
                });
            }
        }
    }
}

/// The streams a description (DESCRIBE's answer or an ANNOUNCE) lists, with their control URLs
/// resolved against `base`.
fn streams_of(
    body: &[u8],
    base: &str,
    max_streams: usize,
) -> Result<(SessionDescription, Vec<StreamInfo>), ClientError> {
    let sdp = SessionDescription::parse(body).map_err(|e| ClientError::Sdp(e.to_string()))?;
    if sdp.media.is_empty() {
        return Err(ClientError::Sdp("no RTP media in the description".into()));
    }
    let max = max_streams.min(MAX_STREAMS_LIMIT);
    if sdp.media.len() > max {
        return Err(ClientError::TooManyStreams {
            count: sdp.media.len(),
            limit: max,
        });
    }
    let streams = sdp
        .media
        .iter()
        .enumerate()
        .map(|(index, m)| StreamInfo {
            index,
            media: m.clone(),
            control: resolve_control(base, &m.control),
        })
        .collect();
    Ok((sdp, streams))
}

/// Accounts one packet; RTP joins `batches`, a Sender Report is an event at once.
/// A packet as it came in, RTP or RTCP.
struct Packet {
    stream: usize,
    is_rtcp: bool,
    data: Bytes,
    arrival: Instant,
}

fn deliver(events: &EventFn, stats: &SharedStats, packet: Packet, batches: &mut Batches) {
    let Packet {
        stream,
        is_rtcp,
        data,
        arrival,
    } = packet;
    let Some(slot) = stats.get(stream) else {
        return;
    };
    if is_rtcp {
        let Ok(packets) = rtcp::parse_compound(&data) else {
            slot.lock().unwrap().1.invalid_packets += 1;
            return;
        };
        for p in packets {
            if let rtcp::RtcpPacket::SenderReport(sr) = p {
                log::trace!(
                    target: "lsrtp",
                    "stream {stream}: sender report of SSRC {:08x}: NTP {:016x} = RTP {}, {} packets, {} bytes sent",
                    sr.ssrc,
                    sr.ntp_timestamp,
                    sr.rtp_timestamp,
                    sr.packet_count,
                    sr.octet_count
                );
                {
                    let mut s = slot.lock().unwrap();
                    // A report of another source must not move the stream's timeline.
                    if !s.2.is_sender(sr.ssrc) {
                        log::trace!(
                            target: "lsrtp",
                            "stream {stream}: ignoring the sender report of SSRC {:08x}: not the stream's sender",
                            sr.ssrc
                        );
                        s.1.foreign_ssrc_packets += 1;
                        continue;
                    }
                    s.0.on_sender_report(sr.ntp_timestamp, arrival);
                    s.1.sender_reports += 1;
                }
                events(ClientEvent::SenderReport {
                    stream,
                    ntp: sr.ntp_timestamp,
                    rtptime: sr.rtp_timestamp,
                });
            }
        }
        return;
    }
    let Ok(h) = rtp::parse_rtp_header(&data) else {
        slot.lock().unwrap().1.invalid_packets += 1;
        return;
    };
    let (one, switched) = {
        let mut s = slot.lock().unwrap();
        let (receiver, figures, sender) = &mut *s;
        if h.payload_type != figures.payload_type {
            figures.unknown_payload_packets += 1;
            return;
        }
        let (rejected, had_sender) = (sender.rejected(), sender.sender().is_some());
        let verdict = sender.admit(h.ssrc, h.sequence, arrival, (h, arrival, data));
        figures.foreign_ssrc_packets += sender.rejected() - rejected;
        if matches!(verdict, Verdict::Switched { .. }) {
            // The old sender's loss and jitter are not the new one's.
            receiver.new_source();
        }
        let mut account = |(h, arrival, data): HeldPacket| {
            receiver.on_packet(h.sequence, h.timestamp, arrival, h.payload_len);
            figures.sender_ssrc = h.ssrc;
            data
        };
        let released = match verdict {
            Verdict::Accept(packet) => (Some(account(packet)), Vec::new()),
            Verdict::Held => return,
            Verdict::Switched { from, to, packets } => {
                if had_sender {
                    log::debug!(
                        target: "lsrtp",
                        "stream {stream}: the sender's SSRC changed from {from:08x} to {to:08x}"
                    );
                } else {
                    log::debug!(
                        target: "lsrtp",
                        "stream {stream}: the sender's SSRC is {to:08x}, not {from:08x} as the server announced"
                    );
                }
                (None, packets.into_iter().map(account).collect())
            }
        };
        figures.packets_received = receiver.packets_received();
        figures.bytes_received = receiver.bytes_received();
        figures.packets_lost = receiver.cumulative_lost();
        figures.jitter = receiver.jitter_duration();
        released
    };
    for data in one.into_iter().chain(switched) {
        batches.push(events, stream, data);
    }
}

/// The server says stream `stream` is sent with `ssrc` (SETUP's Transport, RTP-Info).
fn announce_ssrc(stats: &SharedStats, stream: usize, ssrc: u32) {
    if let Some(slot) = stats.get(stream) {
        slot.lock().unwrap().2.announce(ssrc);
    }
}

fn check(resp: &Response<Vec<u8>>, method: &str) -> Result<(), ClientError> {
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(ClientError::Status {
            method: method.into(),
            status: u16::from(resp.status()),
            reason: resp.reason_phrase().to_owned(),
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Its RTCP readers and a keep-alive waiting for its answer end with it, also when the
        // client's task is aborted.
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Session {
    /// A request on this session: its id, credentials for the current challenge, a body as
    /// `text/parameters`.
    fn build_request(
        &mut self,
        method: Method,
        url: &Url,
        body: Vec<u8>,
        extra: &[(rtsp_types::HeaderName, &str)],
    ) -> Request<Vec<u8>> {
        let method_name = format!("{method:?}").to_uppercase();
        let mut b = Request::builder(method, Version::V1_0).request_uri(url.clone());
        for (name, value) in extra {
            b = b.header(name.clone(), *value);
        }
        if let Some(id) = &self.id {
            b = b.header(headers::SESSION, id.as_str());
        }
        if let Some(a) = &mut self.auth {
            b = b.header(
                headers::AUTHORIZATION,
                a.authorization(&method_name, url.as_str()),
            );
        }
        if !body.is_empty() && !extra.iter().any(|(n, _)| *n == headers::CONTENT_TYPE) {
            b = b.header(headers::CONTENT_TYPE, "text/parameters");
        }
        b.build(body)
    }

    /// Sends a keep-alive (GET_PARAMETER when the server lists it, OPTIONS otherwise) whose
    /// answer a task of its own waits for: commands, RTCP and stopping never wait for it, even
    /// when a camera answers it with another CSeq or not at all. A refused or unanswered
    /// keep-alive is not the end of the session (a dead connection shows as its end): a
    /// warning, and a refused GET_PARAMETER makes the next keep-alives OPTIONS.
    fn keep_alive(&mut self) {
        let get_parameter = self.get_parameter_supported.load(Ordering::Relaxed);
        let method = if get_parameter {
            Method::GetParameter
        } else {
            Method::Options
        };
        log::debug!(
            id = self.name.as_str();
            "{}: keep-alive {method:?} (session timeout {:?}, {})",
            self.conn.peer(),
            self.timeout,
            if get_parameter {
                "the server lists GET_PARAMETER"
            } else {
                "the server does not list GET_PARAMETER"
            }
        );
        let url = self.url.clone();
        let request = self.build_request(method.clone(), &url, Vec::new(), &[]);
        let conn = self.conn.clone();
        let stats = self.stats.clone();
        let supported = self.get_parameter_supported.clone();
        let name = self.name.clone();
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = conn.request(request).await;
            let peer = conn.peer();
            match result {
                Ok(resp) if resp.status().is_success() => {
                    let round_trip = sent.elapsed();
                    for slot in stats.read().unwrap().iter() {
                        slot.lock().unwrap().1.round_trip = Some(round_trip);
                    }
                }
                Ok(resp) if method == Method::GetParameter => {
                    log::warn!(
                        id = name.as_str();
                        "{peer}: the keep-alive GET_PARAMETER was refused ({} {}): using OPTIONS instead",
                        u16::from(resp.status()),
                        resp.reason_phrase()
                    );
                    supported.store(false, Ordering::Relaxed);
                }
                Ok(resp) => log::warn!(
                    id = name.as_str();
                    "{peer}: the keep-alive {method:?} was answered {} {}",
                    u16::from(resp.status()),
                    resp.reason_phrase()
                ),
                Err(e) => log::warn!(id = name.as_str(); "{peer}: keep-alive {method:?} failed: {e}"),
            }
        }));
    }

    /// Sends a request, answering authentication challenges.
    /// SETUP of one stream (`control`) with the `transport` asked for, as playing and
    /// publishing both do: the answer must succeed, the first one's Session id and timeout are
    /// adopted, and the Transport the server chose is returned.
    async fn setup(
        &mut self,
        control: &Url,
        transport: &str,
    ) -> Result<TransportSpec, ClientError> {
        let resp = self
            .send(
                Method::Setup,
                control,
                Vec::new(),
                &[(headers::TRANSPORT, transport)],
            )
            .await?;
        check(&resp, "SETUP")?;
        if self.id.is_none() {
            let (id, timeout) = resp
                .header(&headers::SESSION)
                .and_then(|v| self::parse::parse_session(&self.name, v.as_str()))
                .ok_or_else(|| ClientError::Protocol("SETUP answered without Session".into()))?;
            log::debug!(
                id = self.name.as_str();
                "{}: session {id}, timeout {}",
                self.conn.peer(),
                timeout.map_or("not given (60 s assumed)".into(), |t| format!("{} s", t.as_secs()))
            );
            self.id = Some(id);
            if let Some(t) = timeout {
                self.timeout = t.clamp(Duration::from_secs(1), Duration::from_secs(3600));
            }
        }
        resp.header(&headers::TRANSPORT)
            .and_then(|v| parse_transports(v.as_str()).ok())
            .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)))
            .ok_or_else(|| ClientError::Protocol("SETUP answered without Transport".into()))
    }

    async fn send(
        &mut self,
        method: Method,
        url: &Url,
        body: Vec<u8>,
        extra: &[(rtsp_types::HeaderName, &str)],
    ) -> Result<Response<Vec<u8>>, ClientError> {
        let method_name = format!("{method:?}").to_uppercase();
        for _attempt in 0..3 {
            let request = self.build_request(method.clone(), url, body.clone(), extra);
            let sent = Instant::now();
            let resp = self.conn.request(request).await?;
            let round_trip = sent.elapsed();
            for slot in self.stats.read().unwrap().iter() {
                slot.lock().unwrap().1.round_trip = Some(round_trip);
            }
            if resp.status() != StatusCode::Unauthorized {
                return Ok(resp);
            }
            let challenges = auth::parse_challenges(
                resp.headers()
                    .filter(|(n, _)| **n == headers::WWW_AUTHENTICATE)
                    .map(|(_, v)| v.as_str()),
            );
            match &mut self.auth {
                Some(a) => {
                    if !a
                        .on_unauthorized(&challenges)
                        .map_err(|e| ClientError::Unauthorized(e.to_string()))?
                    {
                        return Err(ClientError::Unauthorized(format!(
                            "{method_name} refused with 401"
                        )));
                    }
                }
                None => {
                    let creds = self.credentials.clone().ok_or_else(|| {
                        ClientError::Unauthorized(
                            "the server requires credentials (set user-id and user-pw)".into(),
                        )
                    })?;
                    let challenge = auth::choose(&challenges).cloned().ok_or_else(|| {
                        ClientError::Unauthorized("no supported authentication scheme".into())
                    })?;
                    self.auth = Some(Authenticator::new(creds, challenge));
                }
            }
        }
        Err(ClientError::Unauthorized(format!(
            "{method_name} still refused after authenticating"
        )))
    }

    /// A request on the presentation URL that must succeed.
    async fn simple(
        &mut self,
        method: Method,
        body: Vec<u8>,
    ) -> Result<Response<Vec<u8>>, ClientError> {
        let name = format!("{method:?}").to_uppercase();
        let url = self.url.clone();
        let resp = self.send(method, &url, body, &[]).await?;
        check(&resp, &name)?;
        Ok(resp)
    }

    fn reset_transports(&mut self, channels: &ChannelMap) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.receivers.clear();
        self.transports.clear();
        channels.write().unwrap().clear();
    }

    async fn setup_all(
        &mut self,
        kind: TransportKind,
        config: &ClientConfig,
        channels: &ChannelMap,
        events: &EventFn,
        stats_cell: &Arc<RwLock<SharedStats>>,
    ) -> Result<(), ClientError> {
        let peer_ip = self.conn.peer().ip().to_canonical();
        for i in 0..self.streams.len() {
            let control = Url::parse(&self.streams[i].control)
                .map_err(|e| ClientError::Sdp(format!("bad control URL: {e}")))?;
            let mut sockets = None;
            let transport = match kind {
                TransportKind::Tcp => {
                    let channels = interleaved_channels(i).ok_or_else(|| {
                        ClientError::NoTransport(format!(
                            "stream {i} has no interleaved channels left (at most {MAX_STREAMS_LIMIT} streams)"
                        ))
                    })?;
                    TransportSpec::tcp_interleaved(channels).to_string()
                }
                TransportKind::Udp => {
                    let bind = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                    let (rtp_sock, rtcp_sock) =
                        crate::rtsp::ports::bind_port_pair(bind, config.port_range)
                            .map_err(|e| ClientError::io("binding UDP ports", &e))?;
                    let p = rtp_sock
                        .local_addr()
                        .map_err(|e| ClientError::io("binding UDP ports", &e))?;
                    let mut t = TransportSpec::udp_unicast();
                    t.client_port = Some((p.port(), p.port() + 1));
                    sockets = Some((rtp_sock, rtcp_sock));
                    t.to_string()
                }
                TransportKind::UdpMulticast => TransportSpec::udp_multicast().to_string(),
            };
            let reply = self.setup(&control, &transport).await?;
            if let Some(ssrc) = reply.ssrc {
                announce_ssrc(&stats_cell.read().unwrap(), i, ssrc);
            }
            // UDP media (unicast or multicast) come from the Transport's `source` when it
            // names one (RFC 2326 12.39), from the RTSP connection's peer otherwise: datagrams
            // from any other sender are dropped.
            let server_ip = media_source(&reply, peer_ip);
            let stream_transport = match (kind, reply.lower, reply.multicast) {
                (TransportKind::Tcp, LowerTransport::Tcp, _) => {
                    // Ours when the server names none (the request had them: they exist).
                    let (rtp_ch, rtcp_ch) = reply
                        .interleaved
                        .or_else(|| interleaved_channels(i))
                        .unwrap_or_default();
                    let mut map = channels.write().unwrap();
                    map.insert(rtp_ch, (i, false));
                    map.insert(rtcp_ch, (i, true));
                    StreamTransport::Tcp {
                        rtcp_channel: rtcp_ch,
                    }
                }
                (TransportKind::Udp, LowerTransport::Udp, false) => {
                    let (rtp_sock, rtcp_sock) = sockets.take().expect("bound above");
                    // RTCP goes to the sender too.
                    let server_rtcp = reply
                        .server_port
                        .map(|(_, rtcp)| SocketAddr::new(server_ip, rtcp));
                    let sockets = (rtp_sock, rtcp_sock);
                    self.spawn_udp(i, sockets, Some(server_ip), server_rtcp, events, stats_cell)?
                }
                (TransportKind::UdpMulticast, LowerTransport::Udp, true) => {
                    let group: Ipv4Addr = reply
                        .destination
                        .as_deref()
                        .and_then(|d| d.parse().ok())
                        .ok_or_else(|| {
                            ClientError::Protocol("multicast SETUP without destination".into())
                        })?;
                    let (rtp_port, rtcp_port) = reply.port.ok_or_else(|| {
                        ClientError::Protocol("multicast SETUP without port".into())
                    })?;
                    let iface = config.multicast_iface.unwrap_or(Ipv4Addr::UNSPECIFIED);
                    let rtp_sock = join_multicast(group, rtp_port, iface)?;
                    let rtcp_sock = join_multicast(group, rtcp_port, iface)?;
                    let server_rtcp = Some(SocketAddr::new(IpAddr::V4(group), rtcp_port));
                    let sockets = (rtp_sock, rtcp_sock);
                    self.spawn_udp(i, sockets, Some(server_ip), server_rtcp, events, stats_cell)?
                }
                _ => {
                    return Err(ClientError::NoTransport(format!(
                        "asked for {kind:?}, the server answered '{reply}'"
                    )));
                }
            };
            log::debug!(
                id = self.name.as_str();
                "{}: stream {i} ({}) over {kind:?}: the server answered `{reply}`",
                self.conn.peer(),
                redact_url(&self.streams[i].control)
            );
            self.transports.push(stream_transport);
        }
        Ok(())
    }

    /// Receives stream `stream` on its (RTP, RTCP) sockets, from `server` only (None: from
    /// any sender).
    fn spawn_udp(
        &mut self,
        stream: usize,
        (rtp_sock, rtcp_sock): (std::net::UdpSocket, std::net::UdpSocket),
        server: Option<IpAddr>,
        server_rtcp: Option<SocketAddr>,
        events: &EventFn,
        stats_cell: &Arc<RwLock<SharedStats>>,
    ) -> Result<StreamTransport, ClientError> {
        let to_tokio = |s: std::net::UdpSocket| {
            s.set_nonblocking(true)
                .and_then(|_| tokio::net::UdpSocket::from_std(s))
                .map_err(|e| ClientError::io("setting up a UDP socket", &e))
        };
        // The figures of this session's streams: set before SETUP, replaced only with the
        // session (and these receivers).
        let stats = stats_cell.read().unwrap().clone();
        let filter = SourceFilter::new(&self.name, stream, server);
        self.receivers.push(UdpReceiver::spawn(
            stream,
            rtp_sock,
            filter.clone(),
            events.clone(),
            stats.clone(),
        )?);
        // RTCP is rare and also sent from here: it stays on the runtime.
        let rtcp = Arc::new(to_tokio(rtcp_sock)?);
        let socket = rtcp.clone();
        let events = events.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut batches = Batches::default();
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((_, from)) if !filter.admits(Some(from.ip())) => {
                        udp::count_foreign(&stats, stream);
                    }
                    Ok((n, _)) => {
                        let packet = Packet {
                            stream,
                            is_rtcp: true,
                            data: Bytes::copy_from_slice(&buf[..n]),
                            arrival: Instant::now(),
                        };
                        deliver(&events, &stats, packet, &mut batches);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
        Ok(StreamTransport::Udp { rtcp, server_rtcp })
    }

    async fn play(&mut self, range: Option<&str>, events: &EventFn) -> Result<(), ClientError> {
        let url = self.url.clone();
        let extra: Vec<(rtsp_types::HeaderName, &str)> =
            range.map(|r| (headers::RANGE, r)).into_iter().collect();
        let resp = self.send(Method::Play, &url, Vec::new(), &extra).await?;
        check(&resp, "PLAY")?;
        let rtp_info = resp
            .header(&headers::RTP_INFO)
            .map(|v| self::parse::parse_rtp_info(&self.name, v.as_str(), &self.streams))
            .unwrap_or_default();
        for info in &rtp_info {
            if let Some(ssrc) = info.ssrc {
                announce_ssrc(&self.stats.read().unwrap(), info.stream, ssrc);
            }
        }
        events(ClientEvent::Playing {
            rtp_info,
            range: resp.header(&headers::RANGE).map(|v| v.as_str().to_owned()),
        });
        Ok(())
    }

    async fn teardown(&mut self) {
        if self.id.is_some() {
            let url = self.url.clone();
            let _ = self.send(Method::Teardown, &url, Vec::new(), &[]).await;
        }
    }

    async fn send_receiver_reports(&self, stats: &SharedStats, our_ssrc: u32) {
        for (i, transport) in self.transports.iter().enumerate() {
            let Some(slot) = stats.get(i) else { continue };
            let rr = {
                let mut s = slot.lock().unwrap();
                if s.0.packets_received() == 0 {
                    continue;
                }
                let sender = s.1.sender_ssrc;
                let block = s.0.report_block(sender, Instant::now());
                rtcp::ReceiverReport {
                    ssrc: our_ssrc,
                    reports: vec![block],
                }
            };
            let mut out = Vec::with_capacity(64);
            rtcp::write_receiver_report(&rr, "rtspsrc2", &mut out);
            log::trace!(
                target: "lsrtp",
                id = self.name.as_str();
                "{}: RTCP receiver report for stream {i}: {:?}",
                self.conn.peer(),
                rr
            );
            match transport {
                StreamTransport::Udp {
                    rtcp,
                    server_rtcp: Some(to),
                } => {
                    let _ = rtcp.send_to(&out, *to).await;
                }
                StreamTransport::Udp { .. } => {}
                StreamTransport::Tcp { rtcp_channel } => {
                    let _ = self.conn.send_interleaved(*rtcp_channel, &out).await;
                }
            }
        }
    }
}

/// Joins `group` on `port` (RFC 1112) through the interface with address `iface`.
fn join_multicast(
    group: Ipv4Addr,
    port: u16,
    iface: Ipv4Addr,
) -> Result<std::net::UdpSocket, ClientError> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(|e| ClientError::io(format!("joining {group}:{port}"), &e))?;
    let io = |e: std::io::Error| ClientError::io(format!("joining {group}:{port}"), &e);
    sock.set_reuse_address(true).map_err(io)?;
    sock.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port).into())
        .map_err(io)?;
    sock.join_multicast_v4(&group, &iface).map_err(io)?;
    let _ = sock.set_recv_buffer_size(1 << 20);
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_channels_never_overflow() {
        assert_eq!(interleaved_channels(0), Some((0, 1)));
        assert_eq!(interleaved_channels(127), Some((254, 255)));
        assert_eq!(
            interleaved_channels(MAX_STREAMS_LIMIT - 1),
            Some((254, 255))
        );
        for i in [128, 129, 200, 255, 256, usize::MAX / 2, usize::MAX] {
            assert_eq!(interleaved_channels(i), None, "{i}");
        }
    }

    fn sdp_with_media(n: usize) -> Vec<u8> {
        let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n");
        for i in 0..n {
            sdp.push_str(&format!(
                "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream={i}\r\n"
            ));
        }
        sdp.into_bytes()
    }

    /// An RTP packet of payload type 96.
    fn rtp(ssrc: u32, seq: u16) -> Bytes {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(b"data");
        Bytes::from(p)
    }

    fn sender_report(ssrc: u32) -> Bytes {
        let sr = rtcp::SenderReport {
            ssrc,
            ntp_timestamp: 0x1234_5678_0000_0000,
            rtp_timestamp: 1,
            packet_count: 0,
            octet_count: 0,
            reports: Vec::new(),
        };
        let mut out = Vec::new();
        rtcp::write_sender_report(&sr, "x", &mut out);
        Bytes::from(out)
    }

    #[test]
    fn only_the_senders_packets_and_reports_are_delivered() {
        let seen: Arc<Mutex<Vec<ClientEvent>>> = Arc::default();
        let sink = seen.clone();
        let events: EventFn = Arc::new(move |e| sink.lock().unwrap().push(e));
        let stats: SharedStats = Arc::new(vec![Mutex::new((
            ReceiverStats::new(90000),
            StreamStats {
                payload_type: 96,
                ..StreamStats::default()
            },
            SenderLock::default(),
        ))]);
        let mut batches = Batches::default();
        let mut feed = |data: Bytes, is_rtcp: bool| {
            let packet = Packet {
                stream: 0,
                is_rtcp,
                data,
                arrival: Instant::now(),
            };
            deliver(&events, &stats, packet, &mut batches);
            batches.flush(&events);
        };
        for seq in 0..5 {
            feed(rtp(7, seq), false);
        }
        // Forged: a far packet and a Sender Report, both of another SSRC.
        feed(rtp(9, 40000), false);
        feed(sender_report(9), true);
        feed(sender_report(7), true);
        // A sustained change.
        for seq in 100..100 + rtp::ssrc::SWITCH_PACKETS as u16 {
            feed(rtp(8, seq), false);
        }
        let mut delivered = Vec::new();
        let mut reports = Vec::new();
        for e in seen.lock().unwrap().drain(..) {
            match e {
                ClientEvent::Rtp { packets, .. } => delivered.extend(
                    packets
                        .iter()
                        .map(|p| rtp::parse_rtp_header(p).unwrap().sequence),
                ),
                ClientEvent::SenderReport { rtptime, .. } => reports.push(rtptime),
                e => panic!("{e:?}"),
            }
        }
        let mut want: Vec<u16> = (0..5).collect();
        want.extend(100..100 + rtp::ssrc::SWITCH_PACKETS as u16);
        assert_eq!(delivered, want);
        assert_eq!(reports.len(), 1, "only the sender's report");
        let (receiver, figures, _) = &mut *stats[0].lock().unwrap();
        assert_eq!(figures.foreign_ssrc_packets, 2);
        assert_eq!(figures.sender_reports, 1);
        assert_eq!(figures.sender_ssrc, 8);
        // The new sender's statistics: nothing lost between the two numberings, no report yet.
        assert_eq!(figures.packets_lost, 0);
        let block = receiver.report_block(8, Instant::now());
        assert_eq!((block.cumulative_lost, block.last_sr), (0, 0), "{block:?}");
        assert_eq!(
            block.extended_highest_seq,
            99 + rtp::ssrc::SWITCH_PACKETS as u32
        );
    }

    #[test]
    fn credentials_follow_redirects_to_the_same_origin_only() {
        let url = |s: &str| Url::parse(s).unwrap();
        let ours = Some(Credentials {
            user: "alice".into(),
            password: "S3cr3t".into(),
        });
        let theirs = Some(Credentials {
            user: "bob".into(),
            password: "pw".into(),
        });
        let from = url("rtsp://cam:554/live");
        for same in [
            "rtsp://cam/other",
            "rtsp://CAM:554/x?y",
            "RTSP://cam/",
            "rtsp://bob:pw@cam/",
        ] {
            assert_eq!(
                redirect_credentials("t", &from, ours.clone(), &url(same)),
                ours,
                "{same}"
            );
        }
        for other in [
            "rtsp://evil/live",
            "rtsp://cam:8554/live",
            "rtsps://cam/live",
            "rtsp://cam.evil/live",
            "rtsp://127.0.0.1/live",
        ] {
            assert_eq!(
                redirect_credentials("t", &from, ours.clone(), &url(other)),
                None,
                "{other}"
            );
        }
        // Another host may get only what its own Location carries.
        assert_eq!(
            redirect_credentials("t", &from, ours.clone(), &url("rtsp://bob:pw@evil/")),
            theirs
        );
        assert_eq!(
            redirect_credentials("t", &from, None, &url("rtsp://bob:pw@cam/")),
            theirs
        );
    }

    #[test]
    fn the_number_of_streams_is_capped() {
        let (_, streams) = streams_of(&sdp_with_media(16), "rtsp://h/", 16).unwrap();
        assert_eq!(streams.len(), 16);
        let err = streams_of(&sdp_with_media(17), "rtsp://h/", 16).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("17 streams") && text.contains("16"), "{text}");
        // Never more than the channels allow, whatever the setting.
        assert_eq!(
            streams_of(&sdp_with_media(128), "rtsp://h/", usize::MAX)
                .unwrap()
                .1
                .len(),
            128
        );
        let err = streams_of(&sdp_with_media(200), "rtsp://h/", usize::MAX).unwrap_err();
        assert!(err.to_string().contains("200 streams"), "{err}");
    }

    #[test]
    fn the_scheme_chooses_tls_and_the_tunnel_and_requests_name_rtsp_or_rtsps() {
        let plain = ClientConfig::default();
        let http = ClientConfig {
            http_tunnel: true,
            ..ClientConfig::default()
        };
        for (config, location, tls, tunnel, request) in [
            (&plain, "rtsp://h/a", false, None, "rtsp://h/a"),
            (&plain, "rtspt://h:8554/a", false, None, "rtsp://h:8554/a"),
            (&plain, "rtsps://h/a?b=1", true, None, "rtsps://h/a?b=1"),
            (&plain, "rtspst://h/a", true, None, "rtsps://h/a"),
            (
                &plain,
                "rtsph://h/a?b=1",
                false,
                Some("/a?b=1"),
                "rtsp://h/a?b=1",
            ),
            (&plain, "rtspsh://h", true, Some("/"), "rtsps://h"),
            (&http, "rtsp://h/a", false, Some("/a"), "rtsp://h/a"),
        ] {
            let mut url = Url::parse(location).unwrap();
            let carrier = carrier_of(config, &mut url).unwrap();
            assert_eq!(carrier.tls.is_some(), tls, "{location}");
            assert_eq!(carrier.tunnel.as_deref(), tunnel, "{location}");
            assert_eq!(url.as_str(), request, "{location}");
        }
        let mut url = Url::parse("http://h/a").unwrap();
        assert!(matches!(
            carrier_of(&plain, &mut url),
            Err(ClientError::Protocol(_))
        ));
    }
}

#[cfg(test)]
mod lifecycle_tests {
    use super::*;
    use std::net::TcpListener;

    /// A client dropped on an application thread while its server never answers: the drop
    /// waits for TEARDOWN no longer than `teardown_timeout`, and does not panic.
    #[test]
    fn dropping_a_client_outside_the_runtime_is_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = ClientConfig {
            url: format!("rtsp://127.0.0.1:{port}/"),
            teardown_timeout: Duration::from_millis(300),
            ..ClientConfig::default()
        };
        let client = Client::start(config, |_| {}).unwrap();
        // Connected, waiting for the OPTIONS answer that never comes.
        let (_conn, _) = listener.accept().unwrap();
        let started = Instant::now();
        drop(client);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
