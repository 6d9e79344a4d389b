//! An RTSP server for one live presentation, independent of GStreamer.
//!
//! Specifications: RFC 2326 §10 (methods), §11 (status codes), §10.12 (interleaved data); RFC 7826
//! §13, §14, §17; RFC 3550 §6.4.1 (Sender Reports), §6.2 and §6.3.1 (report interval, randomised).
//!
//! Layering (after gortsplib/mediamtx): [`media`] is the data plane (streams fanned out to
//! destinations), [`session`] the RTSP methods and sessions, [`conn`] one TCP connection's
//! bounded output. [`Server`] runs them on the plugin's shared runtime ([`crate::runtime`]), so
//! the producer only calls [`Server::push`], which never blocks.
//!
//! Tasks: the server owns a [`TaskGroup`] holding its accept loop, its housekeeping (Sender
//! Reports, session expiry) and one RTCP receiver per stream. The accept loop owns every
//! connection's task in a [`JoinSet`] (the reader, which also answers requests and waits for a
//! PLAY's start point), and each connection task owns its writer task. A publisher recording
//! over plain TCP interleaved is read by a thread of its own instead ([`tcp_thread`]), its
//! connection's task waiting for that thread's end. [`Server::stop`] (or dropping the server)
//! aborts the group, which aborts all of them, closes every connection (which ends such a
//! thread's read) and stops the listening socket at once, without waiting on the runtime.
//!
//! RTSPS ([`ServerConfig::tls`]): a connection's task first completes the TLS handshake
//! (tokio-rustls, bounded), then serves the TLS stream like a plain one; plain TCP keeps its
//! owned halves and vectored writes, TLS takes the same vectored writes into its records.
//!
//! RTSP over HTTP ([`tunnel`]): a connection (plain or TLS) that starts with an HTTP `GET` or
//! `POST` is one side of a tunnel; a paired GET and POST are served as one RTSP connection.
//!
//! ```text
//!  producer ──push()──▶ Stream ──▶ UDP unicast (server port pair)
//!                          │  └──▶ multicast group
//!                          └─────▶ ConnOut queue ──writer task──▶ TCP (interleaved)
//!  TCP ──reader task──▶ Decoder ──▶ Shared::handle_request ──▶ ConnOut (responses)
//! ```
//!
//! Limits, for a server on a network: connections in all and per client address (checked at
//! accept), a deadline per request and for idle connections without a session (the reader's
//! timer), sessions in all and per connection (SETUP), request sizes ([`codec::Limits`]).
//! Interleaved RTCP is found through the connection's own channel map ([`ConnCtx`]).
//!
//! Logging (category `lsrtsp`, records carry the server's [`ServerConfig::name`] as `id`): at
//! debug every request and status line with peer, CSeq and session, connections accepted and
//! closed (why), sessions created, expired and torn down, transports chosen and refused (why),
//! slow clients' frame drops and stalls, keyframe requests, REDIRECT and ANNOUNCE; at trace the
//! headers (credentials redacted), RTCP receiver reports received and sender reports sent.

/// `log::debug!` with the server's name as the record's `id`.
macro_rules! sdebug {
    ($name:expr, $($arg:tt)+) => {
        ::log::debug!(id = $name; $($arg)+)
    };
}

/// `log::trace!` with the server's name as the record's `id`.
macro_rules! strace {
    ($name:expr, $($arg:tt)+) => {
        ::log::trace!(id = $name; $($arg)+)
    };
}

pub mod auth;
mod burst;
pub mod conn;
mod logfmt;
pub mod media;
pub mod record;
pub mod session;
mod tcp_thread;
mod tunnel;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtsp_types::{Method, Request, Response, StatusCode, Version, headers};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use self::conn::{CloseReason, ConnOut, ConnWriter};
use self::media::{Dest, Stream};
pub use self::record::{
    LeftReason, MAX_READ_HOLD, PacketSink, PublisherStats, PublisherStreamStats, RecordConfig,
    RecordEvent, RecordQueue,
};
use self::session::{After, ConnCtx, Session, error_response};
use crate::rtsp::codec::{self, DecodeError, Decoder, Frame};
use crate::rtsp::sdp::MediaDescription;
use crate::runtime::TaskGroup;

/// Which lower transports clients may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    pub udp: bool,
    pub udp_multicast: bool,
    pub tcp: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Self {
            udp: true,
            udp_multicast: true,
            tcp: true,
        }
    }
}

/// Where multicast groups come from.
#[derive(Debug, Clone)]
pub struct MulticastConfig {
    pub address_min: Ipv4Addr,
    pub address_max: Ipv4Addr,
    pub port_min: u16,
    pub port_max: u16,
    pub ttl: u8,
    /// Interface address to send multicast from (None: the routing table decides).
    pub iface: Option<Ipv4Addr>,
}

impl Default for MulticastConfig {
    fn default() -> Self {
        Self {
            address_min: Ipv4Addr::new(224, 3, 0, 1),
            address_max: Ipv4Addr::new(224, 3, 0, 254),
            port_min: 5000,
            port_max: 5999,
            ttl: 1,
            iface: None,
        }
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub address: IpAddr,
    /// 0 picks a free port; see [`Server::local_addr`].
    pub port: u16,
    pub mount_point: String,
    pub protocols: Protocols,
    pub multicast: MulticastConfig,
    pub session_timeout: Duration,
    /// 0 = unlimited.
    pub max_sessions: usize,
    /// Sessions one connection may have created and still hold.
    pub max_sessions_per_connection: usize,
    /// Open RTSP connections at most; further ones are closed at once.
    pub max_connections: usize,
    /// Open RTSP connections per client address (IPv6: per /64) at most.
    pub max_connections_per_address: usize,
    /// A request must arrive complete (head and body) within this after its first byte, else
    /// the connection is closed (with 408); a connection without a session that sends nothing
    /// for this long is closed too.
    pub request_timeout: Duration,
    pub backlog: i32,
    /// Bytes of interleaved media queued per TCP client before whole frames are dropped.
    pub client_queue_bytes: usize,
    /// How long a complete frame may wait to be sent together with the following ones (one
    /// write per TCP client, one `sendmmsg` per UDP client for all of them); zero sends each
    /// frame once complete. See [`burst`].
    pub burst_latency: Duration,
    /// A TCP client whose socket accepts nothing for this long is disconnected.
    pub client_stall_timeout: Duration,
    pub rtcp_interval: Duration,
    /// How long DESCRIBE waits for the inputs to know their format before answering 503.
    pub describe_timeout: Duration,
    pub limits: codec::Limits,
    pub server_name: String,
    pub session_name: String,
    /// How long a PLAY waits for a video stream's next keyframe, the first packet the client is
    /// sent and that the answer's RTP-Info names. After it, the client starts at the next packet.
    pub play_keyframe_wait: Duration,
    /// Name of the server in log records (the element's name).
    pub name: String,
    /// Who may connect and ask.
    pub access: auth::AccessConfig,
    /// With a certificate, the port speaks RTSPS only: TLS from the first byte, interleaved
    /// media inside it (as gst-rtsp-server with a certificate; UDP media stays possible).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A record mount: publishers push streams in (ANNOUNCE, SETUP mode=record, RECORD)
    /// instead of players taking them out; see [`Server::record_queue`].
    pub record: Option<RecordConfig>,
}

impl ServerConfig {
    /// The scheme of the server's URLs: `rtsps` with TLS, else `rtsp`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "rtsps" } else { "rtsp" }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8554,
            mount_point: "/".into(),
            protocols: Protocols::default(),
            multicast: MulticastConfig::default(),
            session_timeout: Duration::from_secs(60),
            max_sessions: 1000,
            max_sessions_per_connection: 8,
            max_connections: 1000,
            max_connections_per_address: 32,
            request_timeout: Duration::from_secs(10),
            backlog: 1024,
            client_queue_bytes: 4 * 1024 * 1024,
            burst_latency: Duration::ZERO,
            client_stall_timeout: Duration::from_secs(5),
            rtcp_interval: Duration::from_secs(5),
            describe_timeout: Duration::from_secs(10),
            // A client sends small bodies (GET_PARAMETER/SET_PARAMETER names), never media.
            limits: codec::Limits {
                max_body_bytes: 64 * 1024,
                ..codec::Limits::default()
            },
            server_name: concat!("gst-plugin-livestreaming/", env!("CARGO_PKG_VERSION")).into(),
            session_name: "Live stream".into(),
            play_keyframe_wait: Duration::from_secs(4),
            name: "rtsp-server".into(),
            access: auth::AccessConfig::default(),
            tls: None,
            record: None,
        }
    }
}

/// Things the server asks of its producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A client waits for a keyframe on this stream: ask the encoder for one.
    KeyframeRequest { stream: usize },
}

type EventFn = Box<dyn Fn(ServerEvent) + Send + Sync>;

/// Per-stream figures of one client.
#[derive(Debug, Clone, Default)]
pub struct ClientStreamStats {
    pub stream: usize,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_dropped: u64,
    /// Writes (TCP) or bursts (UDP) the packets went out in.
    pub bursts_sent: u64,
    pub rtcp_reports: u64,
    pub fraction_lost: f64,
    pub cumulative_lost: i64,
    pub jitter: Duration,
    pub rtt: Option<Duration>,
}

/// One session's figures.
#[derive(Debug, Clone, Default)]
pub struct ClientStats {
    pub session: String,
    pub address: String,
    pub transport: String,
    pub playing: bool,
    pub streams: Vec<ClientStreamStats>,
}

/// Server-wide figures.
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    pub connections: usize,
    pub connections_total: u64,
    /// Refused for `max_connections`.
    pub connections_refused: u64,
    /// Refused for `max_connections_per_address`.
    pub connections_refused_per_address: u64,
    /// Closed without a session after `request_timeout` without a request.
    pub connections_idle_closed: u64,
    /// Requests that did not arrive complete within `request_timeout` (the connection closed).
    pub requests_timed_out: u64,
    /// Requests refused for an oversized header block (400) or body (413).
    pub requests_too_large: u64,
    /// SETUPs refused for `max_sessions` or `max_sessions_per_connection` (503).
    pub sessions_refused: u64,
    /// Interleaved frames from clients on a channel of no stream they set up (ignored).
    pub interleaved_ignored: u64,
    pub sessions_timed_out: u64,
    pub clients_disconnected_slow: u64,
    pub frames_dropped: u64,
    pub clients: Vec<ClientStats>,
}

struct ConnEntry {
    out: Arc<ConnOut>,
    base_url: Option<String>,
}

#[derive(Default)]
struct Counters {
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    connections_refused_per_address: AtomicU64,
    connections_idle_closed: AtomicU64,
    requests_timed_out: AtomicU64,
    requests_too_large: AtomicU64,
    sessions_refused: AtomicU64,
    interleaved_ignored: AtomicU64,
    sessions_timed_out: AtomicU64,
    clients_disconnected_slow: AtomicU64,
    frames_dropped_closed: AtomicU64,
}

/// State shared by the server's tasks and its handle.
pub struct Shared {
    config: ServerConfig,
    access: auth::Access,
    /// `config.name`, shared with the connections for their log records.
    name: Arc<str>,
    epoch: Instant,
    streams: RwLock<BTreeMap<usize, Arc<Stream>>>,
    sessions: Mutex<HashMap<String, Session>>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    /// Open connections per client address (see [`address_key`]).
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Bumped whenever a stream's description changes; DESCRIBE waits on it.
    media_version: watch::Sender<u64>,
    events: EventFn,
    counters: Counters,
    next_conn_id: AtomicU64,
    /// HTTP tunnels by cookie.
    tunnels: tunnel::Tunnels,
    sdp_session_id: u64,
    cname: String,
    /// A record mount's publisher and the queue to the owner.
    record: Option<record::RecordState>,
    /// Our SSRC in Receiver Reports to publishers.
    record_ssrc: u32,
}

impl Shared {
    fn set_conn_base(&self, conn: u64, base: String) {
        if let Some(c) = self.conns.lock().unwrap().get_mut(&conn) {
            c.base_url = Some(base);
        }
    }

    fn stream(&self, id: usize) -> Option<Arc<Stream>> {
        self.streams.read().unwrap().get(&id).cloned()
    }

    /// Does what a push asks of the producer.
    fn after_push(&self, stream: usize, outcome: media::PushOutcome) {
        if outcome.first_packet {
            self.media_version.send_modify(|v| *v += 1);
        }
        if outcome.want_keyframe {
            sdebug!(
                &*self.name,
                "stream {stream}: asking upstream for a keyframe again: {} joining client(s) and \
                 {} client(s) that dropped frames still wait for one",
                outcome.joining,
                outcome.resyncing
            );
            (self.events)(ServerEvent::KeyframeRequest { stream });
        }
    }
}

/// A running RTSP server. [`Server::stop`] or dropping it stops the server and closes every
/// connection, without blocking.
pub struct Server {
    shared: Arc<Shared>,
    /// The accept loop (and with it every connection), housekeeping, the RTCP receivers.
    tasks: TaskGroup,
    /// Each stream's RTCP receiver, to end it when the stream is removed.
    /// Per stream: its RTCP receiver and its burst timer, aborted together.
    stream_tasks: Mutex<HashMap<usize, AbortHandle>>,
    /// Shared with the accept loop, so that stopping can close it at once (see [`Server::stop`]).
    listener: Arc<TcpListener>,
    local_addr: SocketAddr,
    stopped: AtomicBool,
}

/// Aborts a task when dropped: a connection's writer ends with the connection's task, also when
/// that one is aborted.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Server {
    /// Binds the listening socket (errors such as "address in use" are returned here) and starts
    /// serving on the plugin's shared runtime.
    pub fn start(
        config: ServerConfig,
        events: impl Fn(ServerEvent) + Send + Sync + 'static,
    ) -> io::Result<Server> {
        let listener = bind_listener(SocketAddr::new(config.address, config.port), config.backlog)?;
        let local_addr = listener.local_addr()?;
        let runtime = crate::runtime::handle();
        let (media_version, _) = watch::channel(0);
        let name: Arc<str> = config.name.as_str().into();
        let mut access = config.access.clone();
        // A nonce stays valid while in use, and keep-alives come about once a session timeout.
        access.nonce_lifetime = access
            .nonce_lifetime
            .max(config.session_timeout.saturating_mul(2));
        let record = config.record.clone().map(record::RecordState::new);
        let shared = Arc::new(Shared {
            record,
            record_ssrc: rand_u64() as u32,
            name,
            access: auth::Access::new(access),
            config,
            epoch: Instant::now(),
            streams: RwLock::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            per_address: Mutex::new(HashMap::new()),
            media_version,
            events: Box::new(events),
            counters: Counters::default(),
            next_conn_id: AtomicU64::new(1),
            tunnels: tunnel::Tunnels::default(),
            sdp_session_id: rand_u64() >> 2,
            cname: format!("rtspserversink-{:08x}", rand_u64() as u32),
        });
        let listener = {
            let _guard = runtime.enter();
            Arc::new(TcpListener::from_std(listener)?)
        };
        let tasks = TaskGroup::new();
        tasks.spawn(accept_loop(shared.clone(), listener.clone()));
        tasks.spawn(housekeeping(shared.clone()));
        Ok(Server {
            shared,
            tasks,
            stream_tasks: Mutex::new(HashMap::new()),
            listener,
            local_addr,
            stopped: AtomicBool::new(false),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A record mount's current publisher: what it sends, as measured for its Receiver Reports.
    pub fn publisher_stats(&self) -> Option<PublisherStats> {
        self.shared.publisher_stats()
    }

    /// A record mount's events (publishers announced, started, left, their RTP packets).
    pub fn record_queue(&self) -> Option<Arc<RecordQueue>> {
        self.shared.record.as_ref().map(|r| r.queue.clone())
    }

    /// Adds a stream (one `m=` line). Its UDP port pair is bound now.
    pub fn add_stream(&self, id: usize) -> io::Result<()> {
        let stream = Arc::new(Stream::new(
            id,
            self.shared.config.address,
            self.shared.config.burst_latency,
        )?);
        sdebug!(
            &*self.shared.name,
            "stream {id} added: RTP/RTCP from server ports {}-{}, complete frames held for \
             {:?} to go out together (burst-latency)",
            stream.server_ports.0,
            stream.server_ports.1,
            self.shared.config.burst_latency
        );
        if self.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        let (shared, s) = (self.shared.clone(), stream.clone());
        let task = self.tasks.spawn(async move {
            tokio::join!(
                rtcp_receiver(shared.clone(), s.clone()),
                burst_timer(shared, s)
            );
        });
        if let Some(old) = self
            .stream_tasks
            .lock()
            .unwrap()
            .insert(id, task.abort_handle())
        {
            old.abort();
        }
        self.shared.streams.write().unwrap().insert(id, stream);
        self.shared.media_version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Removes a stream; sessions keep their other streams.
    pub fn remove_stream(&self, id: usize) {
        let removed = self.shared.streams.write().unwrap().remove(&id);
        if let Some(task) = self.stream_tasks.lock().unwrap().remove(&id) {
            // Its socket is closed with the task.
            task.abort();
        }
        if removed.is_some() {
            sdebug!(
                &*self.shared.name,
                "stream {id} removed: its clients keep their other streams"
            );
            let mut sessions = self.shared.sessions.lock().unwrap();
            for s in sessions.values_mut() {
                s.streams.remove(&id);
            }
            drop(sessions);
            self.shared.media_version.send_modify(|v| *v += 1);
        }
    }

    /// Sets what a stream carries (from the negotiated format). When it changes while clients
    /// are connected, they are sent ANNOUNCE with the new SDP.
    pub fn set_stream_description(&self, id: usize, desc: MediaDescription) {
        let Some(stream) = self.shared.stream(id) else {
            return;
        };
        sdebug!(
            &*self.shared.name,
            "stream {id} carries {} {}/{} (payload type {})",
            desc.media,
            desc.encoding_name,
            desc.clock_rate,
            desc.payload_type
        );
        let changed = stream.set_description(desc);
        self.shared.media_version.send_modify(|v| *v += 1);
        if changed {
            self.announce(id);
        }
    }

    /// Forwards RTP packets of one stream to its clients. Never blocks. `due`: the instant
    /// their RTP time stands for on the sender's timeline (earlier than now when the pipeline
    /// delivers them late); Sender Reports map RTP time to wallclock from it, so a late frame
    /// does not move the receivers' timelines.
    pub fn push(&self, stream: usize, packets: &[Bytes], due: std::time::Instant) {
        let Some(s) = self.shared.stream(stream) else {
            return;
        };
        self.shared.after_push(stream, s.push(packets, due));
    }

    /// Sends REDIRECT (RFC 2326 10.10) to every client connection that has a session.
    /// Returns how many connections were told.
    pub fn redirect(&self, location: &str) -> usize {
        let targets = self.session_conns();
        for (out, base, session) in &targets {
            let cseq = out.next_cseq();
            sdebug!(
                &*self.shared.name,
                "{}: sending REDIRECT to {} (session {session}, CSeq {cseq})",
                out.peer,
                logfmt::redact_urls(location)
            );
            let req = Request::builder(Method::Redirect, Version::V1_0)
                .request_uri(base.clone())
                .header(headers::CSEQ, cseq.to_string())
                .header(headers::SESSION, session.as_str())
                .header(headers::LOCATION, location)
                .build(Vec::new());
            let mut buf = Vec::new();
            codec::encode_request(&req, &mut buf);
            out.send_control(buf.into());
        }
        targets.len()
    }

    /// Sends ANNOUNCE with the current SDP to every client connection that has a session.
    fn announce(&self, changed_stream: usize) {
        for (out, base, session) in self.session_conns() {
            let local = self.local_addr.ip();
            let Some(sdp) = self.shared.sdp(local) else {
                continue;
            };
            let cseq = out.next_cseq();
            sdebug!(
                &*self.shared.name,
                "{}: sending ANNOUNCE (session {session}, CSeq {cseq}): the format of stream \
                 {changed_stream} changed",
                out.peer
            );
            let req = Request::builder(Method::Announce, Version::V1_0)
                .request_uri(base)
                .header(headers::CSEQ, cseq.to_string())
                .header(headers::SESSION, session.as_str())
                .header(headers::CONTENT_TYPE, "application/sdp")
                .build(sdp.into_bytes());
            let mut buf = Vec::new();
            codec::encode_request(&req, &mut buf);
            out.send_control(buf.into());
        }
    }

    /// (connection, presentation URL, session id) for each connection that owns a session.
    fn session_conns(&self) -> Vec<(Arc<ConnOut>, rtsp_types::Url, String)> {
        let sessions = self.shared.sessions.lock().unwrap();
        let conns = self.shared.conns.lock().unwrap();
        let mut out = Vec::new();
        for s in sessions.values() {
            let Some(c) = conns.get(&s.conn_id) else {
                continue;
            };
            let base = c.base_url.clone().unwrap_or_else(|| {
                format!("{}://{}/", self.shared.config.scheme(), self.local_addr)
            });
            if let Ok(url) = rtsp_types::Url::parse(&base) {
                out.push((c.out.clone(), url, s.id.clone()));
            }
        }
        out
    }

    pub fn stats(&self) -> ServerStats {
        let shared = &self.shared;
        let conns = shared.conns.lock().unwrap();
        let frames_dropped = shared
            .counters
            .frames_dropped_closed
            .load(Ordering::Relaxed)
            + conns
                .values()
                .map(|c| c.out.frames_dropped.load(Ordering::Relaxed))
                .sum::<u64>();
        let connections = conns.len();
        drop(conns);
        let sessions = shared.sessions.lock().unwrap();
        let mut clients: Vec<ClientStats> = sessions
            .values()
            .map(|s| ClientStats {
                session: s.id.clone(),
                address: s.peer.to_string(),
                transport: s
                    .streams
                    .values()
                    .next()
                    .map_or("none", |st| st.dest.target.kind())
                    .to_owned(),
                playing: s.playing,
                streams: s
                    .streams
                    .iter()
                    .map(|(id, st)| {
                        // Multicast clients share the group's counters.
                        let dest = match &st.dest.target {
                            media::Target::Multicast { .. } => st
                                .stream
                                .multicast
                                .lock()
                                .unwrap()
                                .as_ref()
                                .map_or_else(|| st.dest.clone(), |g| g.dest.clone()),
                            _ => st.dest.clone(),
                        };
                        let rtcp = *dest.rtcp.lock().unwrap();
                        ClientStreamStats {
                            stream: *id,
                            packets_sent: dest.packets_sent.load(Ordering::Relaxed),
                            bytes_sent: dest.bytes_sent.load(Ordering::Relaxed),
                            packets_dropped: dest.packets_dropped.load(Ordering::Relaxed),
                            bursts_sent: dest.bursts_sent.load(Ordering::Relaxed),
                            rtcp_reports: rtcp.reports,
                            fraction_lost: rtcp.fraction_lost,
                            cumulative_lost: rtcp.cumulative_lost,
                            jitter: rtcp.jitter,
                            rtt: rtcp.rtt,
                        }
                    })
                    .collect(),
            })
            .collect();
        clients.sort_by(|a, b| a.session.cmp(&b.session));
        let c = &shared.counters;
        ServerStats {
            connections,
            connections_total: c.connections_total.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            connections_refused_per_address: c
                .connections_refused_per_address
                .load(Ordering::Relaxed),
            connections_idle_closed: c.connections_idle_closed.load(Ordering::Relaxed),
            requests_timed_out: c.requests_timed_out.load(Ordering::Relaxed),
            requests_too_large: c.requests_too_large.load(Ordering::Relaxed),
            sessions_refused: c.sessions_refused.load(Ordering::Relaxed),
            interleaved_ignored: c.interleaved_ignored.load(Ordering::Relaxed),
            sessions_timed_out: c.sessions_timed_out.load(Ordering::Relaxed),
            clients_disconnected_slow: c.clients_disconnected_slow.load(Ordering::Relaxed),
            frames_dropped,
            clients,
        }
    }
}

impl Server {
    /// Stops serving, at once and without waiting on the runtime (also when called from inside
    /// it): the listening socket stops listening before this returns (the port can be bound
    /// again right away), every connection is closed (its writer sends what the socket takes and
    /// hangs up) and every task of the server is aborted; their sockets close as the runtime
    /// drops them, within milliseconds. Later calls do nothing.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        sdebug!(
            &*self.shared.name,
            "stopping: closing {} connection(s), ending {} session(s)",
            self.shared.conns.lock().unwrap().len(),
            self.shared.sessions.lock().unwrap().len()
        );
        // The accept loop's end aborts the connections' tasks, theirs their writers.
        self.tasks.abort_all();
        self.stream_tasks.lock().unwrap().clear();
        // The accept loop may still hold the socket for a moment: shut it down so that it stops
        // listening now (Linux unhashes a listening socket on shutdown; pending connections are
        // reset) and a new server can bind the port before the runtime has dropped the task.
        if let Err(e) = socket2::SockRef::from(&*self.listener).shutdown(std::net::Shutdown::Both) {
            sdebug!(
                &*self.shared.name,
                "shutting down the listening socket failed: {e}"
            );
        }
        for c in self.shared.conns.lock().unwrap().values() {
            c.out.close(CloseReason::Server);
            // Logged here: the connection's task is aborted before it would log.
            if c.out.close_reason() == Some(CloseReason::Server) {
                sdebug!(
                    &*self.shared.name,
                    "{}: connection {} closed: the server is stopping ({} bytes sent, {} frames \
                     dropped)",
                    c.out.peer,
                    c.out.id,
                    c.out.bytes_written.load(Ordering::Relaxed),
                    c.out.frames_dropped.load(Ordering::Relaxed)
                );
            }
        }
        let sessions: Vec<Session> = self
            .shared
            .sessions
            .lock()
            .unwrap()
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in sessions {
            let id = s.id.clone();
            session::end_session(s);
            self.shared
                .record_session_ended(&id, LeftReason::ServerStopped);
        }
        // Pushes after this reach no one.
        self.shared.streams.write().unwrap().clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rand_u64() -> u64 {
    use rand::RngExt;
    rand::rng().random()
}

fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn accept_loop(shared: Arc<Shared>, listener: Arc<TcpListener>) {
    let name = &*shared.name;
    // Failures in a row: logged when they start and when they end, not every retry.
    let mut failures = 0u64;
    // Every connection's task: aborted when this task is (dropping a JoinSet aborts its tasks).
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Forget the connections that ended.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                if failures == 0 {
                    sdebug!(
                        name,
                        "accepting connections fails: {e}; retrying every 50 ms"
                    );
                }
                failures += 1;
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if failures > 0 {
            sdebug!(
                name,
                "accepting connections works again after {failures} failures"
            );
            failures = 0;
        }
        shared
            .counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        // Every connection task counts: also those that have not shown what they are yet and
        // the two halves of HTTP tunnels.
        let open = connections.len();
        if open >= shared.config.max_connections {
            shared
                .counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            sdebug!(
                name,
                "{peer}: connection refused: {open} open, max-connections is {}",
                shared.config.max_connections
            );
            drop(stream);
            continue;
        }
        let Some(slot) = AddressSlot::take(&shared, peer.ip()) else {
            shared
                .counters
                .connections_refused_per_address
                .fetch_add(1, Ordering::Relaxed);
            sdebug!(
                name,
                "{peer}: connection refused: max-connections-per-address ({}) open from {}",
                shared.config.max_connections_per_address,
                address_key(peer.ip())
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = serve_connection(shared.clone(), stream, peer);
        connections.spawn(async move {
            conn.await;
            drop(slot);
        });
    }
}

/// What `max-connections-per-address` counts as one address: an IPv4 address, or an IPv6 /64
/// (one subscriber's prefix; an IPv4-mapped address counts as its IPv4 one).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// One open connection counted against its address; released when dropped (also when the
/// connection's task is aborted).
struct AddressSlot {
    shared: Arc<Shared>,
    key: IpAddr,
}

impl AddressSlot {
    /// None when the address already has `max_connections_per_address` open.
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut open = shared.per_address.lock().unwrap();
        let n = open.get(&key).copied().unwrap_or(0);
        if n >= shared.config.max_connections_per_address {
            return None;
        }
        open.insert(key, n + 1);
        Some(AddressSlot {
            shared: shared.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.shared.per_address.lock().unwrap();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// How long the answers queued on a connection may take to leave before it is closed.
const ANSWER_BEFORE_CLOSE: Duration = Duration::from_secs(1);

/// Why the reader side of a connection stopped.
enum ReadEnd {
    Eof,
    Error(io::Error),
    /// Closed from elsewhere (writer failure, stall, server stopping).
    Closed,
    /// A request that leaves the byte stream unusable was answered.
    Fatal,
    /// The peer's address is not allowed; its request was answered 403.
    Refused,
    /// A request did not arrive complete within the request timeout (answered 408).
    RequestTimeout,
    /// No request for the request timeout on a connection without a session.
    Idle,
}

/// How long a client has to complete the TLS handshake of an RTSPS connection.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let name = &*shared.name;
    let Ok(local) = stream.local_addr() else {
        sdebug!(
            name,
            "{peer}: connection dropped: its local address is unknown"
        );
        return;
    };
    let Some(tls) = shared.config.tls.clone() else {
        // Plain TCP: owned halves, no lock between the reader and the writer.
        let (reader, writer) = stream.into_split();
        let writer = conn::TcpWriter::new(writer);
        return tunnel::serve(shared, reader, writer, peer, local).await;
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(stream)) => {
            let session = stream.get_ref().1;
            if let (Some(version), Some(suite)) = (
                session.protocol_version(),
                session.negotiated_cipher_suite(),
            ) {
                sdebug!(
                    name,
                    "{peer}: TLS handshake done ({version:?}, {:?})",
                    suite.suite()
                );
            }
            let (reader, writer) = tokio::io::split(stream);
            tunnel::serve(shared, reader, writer, peer, local).await;
        }
        // rustls's reason: a plain RTSP request is "received corrupt message of type
        // InvalidContentType".
        Ok(Err(e)) => sdebug!(
            name,
            "{peer}: connection dropped: TLS handshake failed: {e}"
        ),
        Err(_) => sdebug!(
            name,
            "{peer}: connection dropped: no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}"
        ),
    }
}

/// Serves one connection's requests from `reader` and its output through `writer`.
async fn serve_stream<R, W>(
    shared: Arc<Shared>,
    mut reader: R,
    writer: W,
    peer: SocketAddr,
    local: SocketAddr,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: ConnWriter,
{
    let name = &*shared.name;
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let out = Arc::new(ConnOut::new(
        id,
        peer,
        shared.config.client_queue_bytes,
        shared.name.clone(),
    ));
    let open = {
        let mut conns = shared.conns.lock().unwrap();
        conns.insert(
            id,
            ConnEntry {
                out: out.clone(),
                base_url: None,
            },
        );
        conns.len()
    };
    sdebug!(
        name,
        "{peer}: connection accepted on {local} (connection {id}, {open} open)"
    );
    // The writer task sends its writer here when asked to give it back (a publisher's socket
    // leaving the runtime for a thread, see `tcp_thread`).
    let (writer_back, mut writer_returned) = tokio::sync::oneshot::channel();
    let mut writer_task = AbortOnDrop(tokio::spawn({
        let out = out.clone();
        let stall = shared.config.client_stall_timeout;
        async move {
            if let Some(writer) = out.run_writer(writer, stall).await {
                let _ = writer_back.send(writer);
            }
        }
    }));
    let ctx = ConnCtx {
        out: out.clone(),
        local,
        user: None,
        setups: Default::default(),
    };
    let mut decoder = Decoder::new(shared.config.limits);
    let mut buf = vec![0u8; 16 * 1024];
    // When the message begun must be complete, or, with nothing buffered, when an idle
    // connection without a session is closed.
    let request_timeout = shared.config.request_timeout;
    let deadline = tokio::time::sleep(request_timeout);
    tokio::pin!(deadline);
    let end = 'conn: loop {
        let n = tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) => break ReadEnd::Eof,
                Err(e) => break ReadEnd::Error(e),
                Ok(n) => n,
            },
            _ = out.closed_notify.notified() => break ReadEnd::Closed,
            () = &mut deadline => {
                if decoder.buffered_len() > 0 {
                    answer_request_timeout(&shared, &out).await;
                    break ReadEnd::RequestTimeout;
                }
                if !ctx.has_session(&shared.sessions.lock().unwrap()) {
                    break ReadEnd::Idle;
                }
                // A connection with a session lives by the session timeout.
                deadline.as_mut().reset(tokio::time::Instant::now() + request_timeout);
                continue;
            }
        };
        if out.is_closed() {
            break ReadEnd::Closed;
        }
        // The clock restarts when a message begins in this read, or when nothing is left over.
        let mut restart = decoder.buffered_len() == 0;
        decoder.extend(&buf[..n]);
        let mut recording = false;
        loop {
            let decoded = match decoder.decode() {
                Ok(None) => break,
                Ok(Some(frame)) => Ok(frame),
                Err(e) => Err(e),
            };
            restart |= decoded.is_ok();
            match on_message(&shared, &ctx, decoded).await {
                Handled::Continue => {}
                Handled::Recording => recording = true,
                Handled::End(end) => break 'conn end,
            }
        }
        if restart {
            deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + request_timeout);
        }
        // A publisher over plain TCP interleaved started recording: from here on its socket is
        // read on a thread of its own.
        if recording && tcp_thread::eligible::<R, W>() && ctx.records_interleaved() {
            let taken =
                tcp_thread::take_socket(reader, &out, &mut writer_returned, &mut decoder).await;
            break match taken {
                // The connection closed meanwhile.
                Ok(None) => ReadEnd::Closed,
                Ok(Some(stream)) => match tcp_thread::start(shared.clone(), ctx, decoder, stream) {
                    Ok((writer, ended)) => {
                        // The first writer task has ended: this one takes its place.
                        writer_task = writer;
                        let guard = tcp_thread::CloseOnDrop(Some(out.clone()));
                        let end = ended.await.unwrap_or(ReadEnd::Closed);
                        guard.disarm();
                        end
                    }
                    Err(e) => ReadEnd::Error(e),
                },
                Err(e) => ReadEnd::Error(e),
            };
        }
    };
    if matches!(end, ReadEnd::Eof) {
        // A client may send its requests and then shut its side down (`printf ... | nc`):
        // its answers still go out.
        out.flush_control(ANSWER_BEFORE_CLOSE).await;
    }
    out.close(CloseReason::Peer);
    let _ = (&mut writer_task.0).await;
    let reason = out.close_reason();
    let c = &shared.counters;
    let counter = match (&end, reason) {
        (_, Some(CloseReason::Stalled)) => Some(&c.clients_disconnected_slow),
        (ReadEnd::RequestTimeout, _) => Some(&c.requests_timed_out),
        (ReadEnd::Idle, _) => Some(&c.connections_idle_closed),
        _ => None,
    };
    if let Some(counter) = counter {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let frames_dropped = out.frames_dropped.load(Ordering::Relaxed);
    shared
        .counters
        .frames_dropped_closed
        .fetch_add(frames_dropped, Ordering::Relaxed);
    shared.conns.lock().unwrap().remove(&id);
    let why: std::borrow::Cow<'static, str> = match (&end, reason) {
        (ReadEnd::Eof, _) => "the client closed it".into(),
        (ReadEnd::Error(e), _) => format!("read error: {e}").into(),
        (ReadEnd::Fatal, _) => "after an unusable request".into(),
        (ReadEnd::Refused, _) => "its address is not allowed".into(),
        (ReadEnd::RequestTimeout, _) => format!(
            "no complete request within request-timeout ({request_timeout:?}); answered 408"
        )
        .into(),
        (ReadEnd::Idle, _) => {
            format!("no request for request-timeout ({request_timeout:?}) and no session").into()
        }
        (ReadEnd::Closed, Some(CloseReason::Stalled)) => format!(
            "the client read nothing for {:?}",
            shared.config.client_stall_timeout
        )
        .into(),
        (ReadEnd::Closed, Some(CloseReason::ControlOverflow)) => {
            "the client let RTSP messages pile up unread".into()
        }
        // Logged by Server::stop.
        (ReadEnd::Closed, Some(CloseReason::Server)) => "".into(),
        (ReadEnd::Closed, _) => "write error".into(),
    };
    if !why.is_empty() {
        sdebug!(
            name,
            "{peer}: connection {id} closed: {why} ({} bytes sent, {frames_dropped} frames \
             dropped)",
            out.bytes_written.load(Ordering::Relaxed)
        );
    }
    // Sessions with interleaved streams cannot outlive their connection, nor can those not
    // playing (else a client reconnecting could fill max-sessions with sessions it never
    // plays); playing UDP ones live on until they time out.
    let ended: Vec<Session> = {
        let mut sessions = shared.sessions.lock().unwrap();
        let ids: Vec<String> = sessions
            .values()
            .filter(|s| s.conn_id == id && (s.uses_tcp() || !s.playing || s.record))
            .map(|s| s.id.clone())
            .collect();
        ids.iter().filter_map(|i| sessions.remove(i)).collect()
    };
    for s in ended {
        sdebug!(
            name,
            "{peer}: session {} ended with its connection after {:.1?} ({})",
            s.id,
            s.created.elapsed(),
            if s.uses_tcp() {
                "interleaved"
            } else {
                "not playing"
            }
        );
        let sid = s.id.clone();
        session::end_session(s);
        shared.record_session_ended(&sid, LeftReason::ConnectionClosed);
    }
    shared.record_conn_closed(id);
}

/// Answers 408 to a request that did not arrive complete in time, and lets the answer go out.
async fn answer_request_timeout(shared: &Shared, out: &ConnOut) {
    let resp = error_response(StatusCode::RequestTimeout, None, &shared.config.server_name);
    let mut bytes = Vec::new();
    codec::encode_response(&resp, &mut bytes);
    out.send_control(bytes.into());
    // The answer reaches the client, then hang up.
    out.flush_control(ANSWER_BEFORE_CLOSE).await;
}

/// What handling a message of a connection left to do.
enum Handled {
    Continue,
    /// A RECORD was answered 200.
    Recording,
    /// The connection ends.
    End(ReadEnd),
}

/// Handles one decoded message of a connection (a request, an answer to the server's request,
/// interleaved data) or a decoding error: the one place both readers (the connection's task
/// and a publisher's thread, see [`tcp_thread`]) handle them.
async fn on_message(
    shared: &Arc<Shared>,
    ctx: &ConnCtx,
    decoded: Result<Frame, DecodeError>,
) -> Handled {
    let name = &*shared.name;
    let out = &ctx.out;
    let peer = out.peer;
    match decoded {
        Ok(Frame::Request(req)) => {
            let session = shared.log_request(peer, &req);
            let record = req.method() == Method::Record;
            let answer = shared.handle_request(ctx, req).await;
            shared.log_response(peer, &answer.resp, session.as_deref());
            let recording = record && answer.resp.status() == StatusCode::Ok;
            let mut bytes = Vec::with_capacity(256);
            codec::encode_response_with(
                &answer.resp,
                &headers::WWW_AUTHENTICATE,
                &answer.challenges,
                &mut bytes,
            );
            out.send_control(bytes.into());
            match answer.after {
                After::Nothing => {}
                After::Play(session) => shared.start_playing(&session),
                After::Close => {
                    // The answer reaches the client, then hang up.
                    out.flush_control(ANSWER_BEFORE_CLOSE).await;
                    return Handled::End(ReadEnd::Refused);
                }
            }
            if recording {
                return Handled::Recording;
            }
        }
        // Answers to our ANNOUNCE/REDIRECT: nothing to do.
        Ok(Frame::Response(resp)) => {
            sdebug!(
                name,
                "{peer}: client answered RTSP/1.0 {} {} (CSeq {})",
                u16::from(resp.status()),
                resp.reason_phrase(),
                resp.header(&headers::CSEQ).map_or("none", |v| v.as_str())
            );
        }
        Ok(Frame::Interleaved { channel, data }) => {
            on_interleaved(shared, ctx, channel, &data);
        }
        Err(err) => {
            if matches!(
                err,
                DecodeError::BodyTooLarge { .. } | DecodeError::HeaderTooLarge { .. }
            ) {
                shared
                    .counters
                    .requests_too_large
                    .fetch_add(1, Ordering::Relaxed);
            }
            let status = match err {
                DecodeError::BodyTooLarge { .. } => StatusCode::RequestMessageBodyTooLarge,
                _ => StatusCode::BadRequest,
            };
            let cseq = err.cseq().map(|c| c.to_string());
            sdebug!(
                name,
                "{peer}: unusable request (CSeq {}): {}; answering {} {status}{}",
                cseq.as_deref().unwrap_or("unknown"),
                logfmt::redact_urls(&err.to_string()),
                u16::from(status),
                if err.is_fatal() { " and closing" } else { "" }
            );
            let resp = error_response(status, cseq.as_deref(), &shared.config.server_name);
            let mut bytes = Vec::new();
            codec::encode_response(&resp, &mut bytes);
            out.send_control(bytes.into());
            if err.is_fatal() {
                // The answer reaches the client, then hang up.
                out.flush_control(ANSWER_BEFORE_CLOSE).await;
                return Handled::End(ReadEnd::Fatal);
            }
        }
    }
    Handled::Continue
}

impl Shared {
    /// Request line at debug, headers at trace. Returns the request's session id when debug
    /// records are on, for the answer's record.
    fn log_request(&self, peer: SocketAddr, req: &Request<Vec<u8>>) -> Option<String> {
        if !log::log_enabled!(log::Level::Debug) {
            return None;
        }
        let name = &*self.name;
        let method: &str = req.method().into();
        let uri = req
            .request_uri()
            .map_or(std::borrow::Cow::Borrowed("*"), |u| {
                std::borrow::Cow::Owned(logfmt::redact_urls(u.as_str()).into_owned())
            });
        let session = req
            .header(&headers::SESSION)
            .map(|v| session_of(v.as_str()).to_owned());
        sdebug!(
            name,
            "{peer}: request {method} {uri} RTSP/1.0 (CSeq {}, session {})",
            req.header(&headers::CSEQ).map_or("none", |v| v.as_str()),
            session.as_deref().unwrap_or("none")
        );
        if log::log_enabled!(log::Level::Trace) {
            strace!(
                name,
                "{peer}: request headers: {}",
                logfmt::Dump::new(req.headers(), req.body())
            );
        }
        session
    }

    /// Status line at debug (with the answer's session, else the request's), headers at trace.
    fn log_response(&self, peer: SocketAddr, resp: &Response<Vec<u8>>, req_session: Option<&str>) {
        let name = &*self.name;
        sdebug!(
            name,
            "{peer}: answer RTSP/1.0 {} {} (CSeq {}, session {})",
            u16::from(resp.status()),
            resp.reason_phrase(),
            resp.header(&headers::CSEQ).map_or("none", |v| v.as_str()),
            resp.header(&headers::SESSION)
                .map(|v| session_of(v.as_str()))
                .or(req_session)
                .unwrap_or("none")
        );
        if log::log_enabled!(log::Level::Trace) {
            strace!(
                name,
                "{peer}: answer headers: {}",
                logfmt::Dump::new(resp.headers(), resp.body())
            );
        }
    }
}

/// The session id of a `Session` header value (`id;timeout=60`).
fn session_of(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

/// Logs a Receiver Report's figures (trace).
fn log_report(name: &str, from: &dyn std::fmt::Display, dest: &Dest, stream: usize) {
    let f = *dest.rtcp.lock().unwrap();
    strace!(
        name,
        "RTCP report from {from} (session {}, stream {stream}): fraction lost {:.1}%, \
         cumulative lost {}, jitter {:.1?}, RTT {}",
        dest.session,
        f.fraction_lost * 100.0,
        f.cumulative_lost,
        f.jitter,
        f.rtt
            .map_or_else(|| "unknown".to_owned(), |r| format!("{r:.1?}"))
    );
}

/// RTCP from a client on an interleaved channel: one lookup in the connection's own map.
fn on_interleaved(shared: &Shared, ctx: &ConnCtx, channel: u8, data: &Bytes) {
    if shared.on_record_interleaved(ctx, channel, data) {
        return;
    }
    if channel.is_multiple_of(2) {
        return; // RTP from a client: we only send.
    }
    let Some((dest, stream)) = ctx.rtcp_channel(channel) else {
        shared
            .counters
            .interleaved_ignored
            .fetch_add(1, Ordering::Relaxed);
        strace!(
            &*shared.name,
            "{}: {} bytes on interleaved channel {channel}, which no stream of it uses: ignored",
            ctx.out.peer,
            data.len()
        );
        return;
    };
    if dest.on_rtcp(data, stream.clock_rate()) && log::log_enabled!(log::Level::Trace) {
        log_report(&shared.name, &ctx.out.peer, &dest, stream.id);
    }
}

/// Receives RTCP on a stream's server port (Receiver Reports from UDP clients).
/// Releases a stream's held packets when the rest of their frame is late (see [`burst`]).
async fn burst_timer(shared: Arc<Shared>, stream: Arc<Stream>) {
    loop {
        stream.held().await;
        let mut next = Some(Instant::now() + burst::LINGER);
        while let Some(deadline) = next {
            tokio::time::sleep_until(deadline.into()).await;
            let outcome;
            (outcome, next) = stream.flush_due(Instant::now());
            shared.after_push(stream.id, outcome);
        }
    }
}

async fn rtcp_receiver(shared: Arc<Shared>, stream: Arc<Stream>) {
    let socket = match stream
        .rtcp_socket
        .try_clone()
        .and_then(tokio::net::UdpSocket::from_std)
    {
        Ok(s) => s,
        Err(e) => {
            sdebug!(
                &*shared.name,
                "stream {}: cannot receive RTCP: {e}",
                stream.id
            );
            return;
        }
    };
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            if shared.stream(stream.id).is_none() {
                return;
            }
            continue;
        };
        if shared.stream(stream.id).is_none() {
            return;
        }
        match stream.dest_for_rtcp_source(from) {
            Some(dest) => {
                if dest.on_rtcp(&buf[..n], stream.clock_rate())
                    && log::log_enabled!(log::Level::Trace)
                {
                    log_report(&shared.name, &from, &dest, stream.id);
                }
            }
            None => strace!(
                &*shared.name,
                "stream {}: {n} bytes of RTCP from {from}, no client of it: ignored",
                stream.id
            ),
        }
    }
}

/// Sender Reports and session expiry.
async fn housekeeping(shared: Arc<Shared>) {
    let mut next_rtcp = tokio::time::Instant::now() + shared.config.rtcp_interval / 2;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        expire_sessions(&shared);
        shared.record_linger();
        if tokio::time::Instant::now() >= next_rtcp {
            send_sender_reports(&shared);
            shared.send_receiver_reports();
            // RFC 3550 6.3.1: randomise the interval to [0.5, 1.5] of its value.
            let factor = 0.5 + (rand_u64() % 1000) as f64 / 1000.0;
            next_rtcp = tokio::time::Instant::now() + shared.config.rtcp_interval.mul_f64(factor);
        }
    }
}

fn expire_sessions(shared: &Shared) {
    let expired: Vec<Session> = {
        let mut sessions = shared.sessions.lock().unwrap();
        let ids: Vec<String> = sessions
            .values()
            .filter(|s| s.alive.idle() > s.timeout)
            .map(|s| s.id.clone())
            .collect();
        ids.iter().filter_map(|i| sessions.remove(i)).collect()
    };
    shared
        .counters
        .sessions_timed_out
        .fetch_add(expired.len() as u64, Ordering::Relaxed);
    for s in expired {
        sdebug!(
            &*shared.name,
            "{}: session {} expired: no RTSP request or RTCP from the client for {:.1?} \
             (session-timeout {} s)",
            s.peer,
            s.id,
            s.alive.idle(),
            s.timeout.as_secs()
        );
        let id = s.id.clone();
        session::end_session(s);
        shared.record_session_ended(&id, LeftReason::Timeout);
    }
}

fn send_sender_reports(shared: &Shared) {
    let streams: Vec<Arc<Stream>> = shared.streams.read().unwrap().values().cloned().collect();
    for stream in streams {
        for dest in stream.dests() {
            if let Some((sr, bytes)) = stream.sender_report(&dest, &shared.cname) {
                strace!(
                    &*shared.name,
                    "RTCP sender report to {} (session {}, stream {}): rtptime {}, {} packets, \
                     {} octets",
                    dest.target,
                    dest.session,
                    stream.id,
                    sr.rtp_timestamp,
                    sr.packet_count,
                    sr.octet_count
                );
                stream.send_rtcp(&dest, Bytes::from(bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn config() -> ServerConfig {
        ServerConfig {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            ..ServerConfig::default()
        }
    }

    /// A connection that has started an RTSP request (the server counts it from then on).
    fn connect_rtsp(addr: SocketAddr) -> std::net::TcpStream {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"OPTIONS").unwrap();
        c
    }

    /// Waits (bounded) until the server counts `n` open connections.
    fn wait_connections(server: &Server, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.stats().connections < n {
            assert!(Instant::now() < deadline, "{n} connections not accepted");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn stopping_closes_connections_and_frees_the_port_at_once() {
        let server = Server::start(config(), |_| {}).unwrap();
        server.add_stream(0).unwrap();
        let addr = server.local_addr();
        let mut clients: Vec<std::net::TcpStream> = (0..5).map(|_| connect_rtsp(addr)).collect();
        wait_connections(&server, clients.len());
        let start = Instant::now();
        drop(server);
        assert!(start.elapsed() < Duration::from_millis(100));
        // The port is free before the runtime has dropped the tasks.
        let again = Server::start(
            ServerConfig {
                port: addr.port(),
                ..config()
            },
            |_| {},
        )
        .expect("the port is bound again right after the stop");
        for c in &mut clients {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            assert_eq!(c.read(&mut [0u8; 16]).unwrap(), 0, "end of stream");
        }
        drop(again);
    }

    /// Reads until the server closes the connection (bounded); returns what it sent.
    fn read_to_close(c: &mut std::net::TcpStream) -> String {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .expect("the server closes the connection");
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn a_client_that_shuts_its_side_down_after_its_requests_gets_every_answer() {
        let server = Server::start(config(), |_| {}).unwrap();
        let mut c = std::net::TcpStream::connect(server.local_addr()).unwrap();
        // Many requests in one go: the last answers are still queued when the end is read.
        let requests: String = (1..=200)
            .map(|n| format!("OPTIONS * RTSP/1.0\r\nCSeq: {n}\r\n\r\n"))
            .collect();
        std::io::Write::write_all(&mut c, requests.as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let answers = read_to_close(&mut c);
        assert_eq!(answers.matches("RTSP/1.0 200 ").count(), 200);
        assert!(answers.contains("CSeq: 200\r\n"));
    }

    #[test]
    fn incomplete_requests_and_idle_connections_are_closed_after_the_request_timeout() {
        let server = Server::start(
            ServerConfig {
                request_timeout: Duration::from_millis(300),
                ..config()
            },
            |_| {},
        )
        .unwrap();
        let addr = server.local_addr();
        let mut partial = std::net::TcpStream::connect(addr).unwrap();
        let mut idle = std::net::TcpStream::connect(addr).unwrap();
        let mut answered = std::net::TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        std::io::Write::write_all(&mut partial, b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n").unwrap();
        std::io::Write::write_all(&mut answered, b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").unwrap();
        assert!(read_to_close(&mut partial).starts_with("RTSP/1.0 408 "));
        assert_eq!(read_to_close(&mut idle), "");
        // Answered, then closed as idle: it has no session.
        assert!(read_to_close(&mut answered).starts_with("RTSP/1.0 200 "));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // Counted once the connection's task has ended, just after the socket closed.
        let deadline = Instant::now() + Duration::from_secs(2);
        while server.stats().connections > 0 {
            assert!(Instant::now() < deadline, "connections not ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        let stats = server.stats();
        assert_eq!(stats.requests_timed_out, 1);
        assert_eq!(stats.connections_idle_closed, 2);
    }

    #[test]
    fn connections_beyond_the_per_address_limit_are_closed_at_once() {
        let server = Server::start(
            ServerConfig {
                max_connections_per_address: 2,
                ..config()
            },
            |_| {},
        )
        .unwrap();
        let addr = server.local_addr();
        let kept: Vec<_> = (0..2).map(|_| connect_rtsp(addr)).collect();
        wait_connections(&server, 2);
        let mut refused = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(read_to_close(&mut refused), "");
        assert_eq!(server.stats().connections_refused_per_address, 1);
        // A slot is free again once a connection ends.
        drop(kept);
        let deadline = Instant::now() + Duration::from_secs(2);
        while server.stats().connections > 0 {
            assert!(Instant::now() < deadline, "connections not closed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _again = connect_rtsp(addr);
        wait_connections(&server, 1);
    }

    #[test]
    fn address_key_groups_ipv6_by_64_and_unmaps_ipv4() {
        let key = |s: &str| address_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
    }

    /// Waits (bounded) until both ports of a pair can be bound again.
    fn wait_released((rtp, rtcp): (u16, u16)) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let free = [rtp, rtcp]
                .iter()
                .all(|p| std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, *p)).is_ok());
            if free {
                return;
            }
            assert!(Instant::now() < deadline, "ports {rtp}-{rtcp} still bound");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn removing_a_stream_or_stopping_releases_its_udp_ports() {
        let server = Server::start(config(), |_| {}).unwrap();
        server.add_stream(0).unwrap();
        server.add_stream(1).unwrap();
        let ports = [0, 1].map(|id| server.shared.stream(id).unwrap().server_ports);
        // Its RTCP receiver holds the socket until the runtime has dropped the aborted task.
        server.remove_stream(1);
        wait_released(ports[1]);
        drop(server);
        wait_released(ports[0]);
    }

    #[test]
    fn a_server_dropped_inside_the_runtime_stops_without_blocking() {
        let server = Server::start(config(), |_| {}).unwrap();
        let addr = server.local_addr();
        let mut client = connect_rtsp(addr);
        wait_connections(&server, 1);
        let stopped = crate::runtime::handle().block_on(async move {
            crate::runtime::handle()
                .spawn(async move {
                    let start = Instant::now();
                    drop(server);
                    start.elapsed()
                })
                .await
                .unwrap()
        });
        assert!(stopped < Duration::from_millis(100), "{stopped:?}");
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        assert_eq!(client.read(&mut [0u8; 16]).unwrap(), 0, "end of stream");
    }
}
