//! An RTSP server for one live presentation, independent of GStreamer.
//!
//! Layering (after gortsplib/mediamtx): [`media`] is the data plane (streams fanned out to
//! destinations), [`session`] the RTSP methods and sessions, [`conn`] one TCP connection's
//! bounded output. [`Server`] ties them to a tokio runtime of its own, so the producer only
//! calls [`Server::push`], which never blocks.
//!
//! ```text
//!  producer ──push()──▶ Stream ──▶ UDP unicast (server port pair)
//!                          │  └──▶ multicast group
//!                          └─────▶ ConnOut queue ──writer task──▶ TCP (interleaved)
//!  TCP ──reader task──▶ Decoder ──▶ Shared::handle_request ──▶ ConnOut (responses)
//! ```

pub mod conn;
pub mod media;
pub mod session;
mod udp_out;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtsp_types::{Method, Request, StatusCode, Version, headers};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use self::conn::{CloseReason, ConnOut};
use self::media::Stream;
use self::session::{After, ConnCtx, Session, error_response};
use crate::rtsp::codec::{self, DecodeError, Decoder, Frame};
use crate::rtsp::sdp::MediaDescription;

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
    /// Open RTSP connections at most; further ones are closed at once.
    pub max_connections: usize,
    pub backlog: i32,
    /// Bytes of interleaved media queued per TCP client before whole frames are dropped.
    pub client_queue_bytes: usize,
    /// A TCP client whose socket accepts nothing for this long is disconnected.
    pub client_stall_timeout: Duration,
    pub rtcp_interval: Duration,
    /// How long DESCRIBE waits for the inputs to know their format before answering 503.
    pub describe_timeout: Duration,
    pub limits: codec::Limits,
    pub server_name: String,
    pub session_name: String,
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
            max_sessions: 0,
            max_connections: 1000,
            backlog: 1024,
            client_queue_bytes: 4 * 1024 * 1024,
            client_stall_timeout: Duration::from_secs(5),
            rtcp_interval: Duration::from_secs(5),
            describe_timeout: Duration::from_secs(10),
            limits: codec::Limits::default(),
            server_name: concat!("gst-plugin-livestreaming/", env!("CARGO_PKG_VERSION")).into(),
            session_name: "Live stream".into(),
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
    pub connections_refused: u64,
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
    sessions_timed_out: AtomicU64,
    clients_disconnected_slow: AtomicU64,
    frames_dropped_closed: AtomicU64,
}

/// State shared by the server's tasks and its handle.
pub struct Shared {
    config: ServerConfig,
    epoch: Instant,
    streams: RwLock<BTreeMap<usize, Arc<Stream>>>,
    sessions: Mutex<HashMap<String, Session>>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    /// Bumped whenever a stream's description changes; DESCRIBE waits on it.
    media_version: watch::Sender<u64>,
    events: EventFn,
    counters: Counters,
    next_conn_id: AtomicU64,
    sdp_session_id: u64,
    cname: String,
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
}

/// A running RTSP server. Dropping it stops the server and closes every connection.
pub struct Server {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    local_addr: SocketAddr,
}

impl Server {
    /// Binds the listening socket (errors such as "address in use" are returned here) and starts
    /// serving on a runtime of its own.
    pub fn start(
        config: ServerConfig,
        events: impl Fn(ServerEvent) + Send + Sync + 'static,
    ) -> io::Result<Server> {
        let listener = bind_listener(SocketAddr::new(config.address, config.port), config.backlog)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rtsp-server")
            .enable_all()
            .build()?;
        let (media_version, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            config,
            epoch: Instant::now(),
            streams: RwLock::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            media_version,
            events: Box::new(events),
            counters: Counters::default(),
            next_conn_id: AtomicU64::new(1),
            sdp_session_id: rand_u64() >> 2,
            cname: format!("rtspserversink-{:08x}", rand_u64() as u32),
        });
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(listener)?
        };
        runtime.spawn(accept_loop(shared.clone(), listener));
        runtime.spawn(housekeeping(shared.clone()));
        Ok(Server {
            shared,
            runtime: Some(runtime),
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Adds a stream (one `m=` line). Its UDP port pair is bound now.
    pub fn add_stream(&self, id: usize) -> io::Result<()> {
        let stream = Arc::new(Stream::new(id, self.shared.config.address)?);
        if let Some(rt) = &self.runtime {
            rt.spawn(rtcp_receiver(self.shared.clone(), stream.clone()));
        }
        self.shared.streams.write().unwrap().insert(id, stream);
        self.shared.media_version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Removes a stream; sessions keep their other streams.
    pub fn remove_stream(&self, id: usize) {
        let removed = self.shared.streams.write().unwrap().remove(&id);
        if removed.is_some() {
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
        let changed = stream.set_description(desc);
        self.shared.media_version.send_modify(|v| *v += 1);
        if changed {
            self.announce();
        }
    }

    /// Forwards RTP packets of one stream to its clients. Never blocks.
    pub fn push(&self, stream: usize, packets: &[Bytes]) {
        let Some(s) = self.shared.stream(stream) else {
            return;
        };
        let outcome = s.push(packets);
        if outcome.first_packet {
            self.shared.media_version.send_modify(|v| *v += 1);
        }
        if outcome.want_keyframe {
            (self.shared.events)(ServerEvent::KeyframeRequest { stream });
        }
    }

    /// Sends REDIRECT (RFC 2326 10.10) to every client connection that has a session.
    /// Returns how many connections were told.
    pub fn redirect(&self, location: &str) -> usize {
        let targets = self.session_conns();
        for (out, base, session) in &targets {
            let req = Request::builder(Method::Redirect, Version::V1_0)
                .request_uri(base.clone())
                .header(headers::CSEQ, out.next_cseq().to_string())
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
    fn announce(&self) {
        for (out, base, session) in self.session_conns() {
            let local = self.local_addr.ip();
            let Some(sdp) = self.shared.sdp(local) else {
                continue;
            };
            let req = Request::builder(Method::Announce, Version::V1_0)
                .request_uri(base)
                .header(headers::CSEQ, out.next_cseq().to_string())
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
            let base = c
                .base_url
                .clone()
                .unwrap_or_else(|| format!("rtsp://{}/", self.local_addr));
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
            sessions_timed_out: c.sessions_timed_out.load(Ordering::Relaxed),
            clients_disconnected_slow: c.clients_disconnected_slow.load(Ordering::Relaxed),
            frames_dropped,
            clients,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for c in self.shared.conns.lock().unwrap().values() {
            c.out.close(CloseReason::Server);
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        let sessions: Vec<Session> = self
            .shared
            .sessions
            .lock()
            .unwrap()
            .drain()
            .map(|(_, s)| s)
            .collect();
        sessions.into_iter().for_each(session::end_session);
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

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared
            .counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        if shared.conns.lock().unwrap().len() >= shared.config.max_connections {
            shared
                .counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(shared.clone(), stream, peer));
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let out = Arc::new(ConnOut::new(id, peer, shared.config.client_queue_bytes));
    shared.conns.lock().unwrap().insert(
        id,
        ConnEntry {
            out: out.clone(),
            base_url: None,
        },
    );
    let (mut reader, writer) = stream.into_split();
    let writer_task = tokio::spawn(
        out.clone()
            .run_writer(writer, shared.config.client_stall_timeout),
    );
    let ctx = ConnCtx {
        out: out.clone(),
        local,
    };
    let mut decoder = Decoder::new(shared.config.limits);
    let mut buf = vec![0u8; 16 * 1024];
    'conn: loop {
        let n = tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = out.closed_notify.notified() => break,
        };
        if out.is_closed() {
            break;
        }
        decoder.extend(&buf[..n]);
        loop {
            match decoder.decode() {
                Ok(None) => break,
                Ok(Some(Frame::Request(req))) => {
                    let (resp, after) = shared.handle_request(&ctx, req).await;
                    let mut bytes = Vec::with_capacity(256);
                    codec::encode_response(&resp, &mut bytes);
                    out.send_control(bytes.into());
                    if let After::Play(session) = after {
                        shared.start_playing(&session);
                    }
                }
                // Answers to our ANNOUNCE/REDIRECT: nothing to do.
                Ok(Some(Frame::Response(_))) => {}
                Ok(Some(Frame::Interleaved { channel, data })) => {
                    on_interleaved(&shared, id, channel, &data);
                }
                Err(err) => {
                    let status = match err {
                        DecodeError::BodyTooLarge { .. } => StatusCode::RequestMessageBodyTooLarge,
                        _ => StatusCode::BadRequest,
                    };
                    let cseq = err.cseq().map(|c| c.to_string());
                    let resp = error_response(status, cseq.as_deref(), &shared.config.server_name);
                    let mut bytes = Vec::new();
                    codec::encode_response(&resp, &mut bytes);
                    out.send_control(bytes.into());
                    if err.is_fatal() {
                        // Let the writer flush the answer, then hang up.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break 'conn;
                    }
                }
            }
        }
    }
    out.close(CloseReason::Peer);
    let _ = writer_task.await;
    if out.close_reason() == Some(CloseReason::Stalled) {
        shared
            .counters
            .clients_disconnected_slow
            .fetch_add(1, Ordering::Relaxed);
    }
    shared.counters.frames_dropped_closed.fetch_add(
        out.frames_dropped.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    shared.conns.lock().unwrap().remove(&id);
    // Sessions with interleaved streams cannot outlive their connection; UDP ones time out.
    let ended: Vec<Session> = {
        let mut sessions = shared.sessions.lock().unwrap();
        let ids: Vec<String> = sessions
            .values()
            .filter(|s| s.conn_id == id && s.uses_tcp())
            .map(|s| s.id.clone())
            .collect();
        ids.iter().filter_map(|i| sessions.remove(i)).collect()
    };
    ended.into_iter().for_each(session::end_session);
}

/// RTCP from a client on an interleaved channel.
fn on_interleaved(shared: &Shared, conn: u64, channel: u8, data: &[u8]) {
    if channel.is_multiple_of(2) {
        return; // RTP from a client: we only send.
    }
    let sessions = shared.sessions.lock().unwrap();
    for s in sessions.values().filter(|s| s.conn_id == conn) {
        for st in s.streams.values() {
            if st.transport.interleaved.map(|(_, rtcp)| rtcp) == Some(channel) {
                st.dest.on_rtcp(data, st.stream.clock_rate());
                return;
            }
        }
    }
}

/// Receives RTCP on a stream's server port (Receiver Reports from UDP clients).
async fn rtcp_receiver(shared: Arc<Shared>, stream: Arc<Stream>) {
    let socket = match stream
        .rtcp_socket
        .try_clone()
        .and_then(tokio::net::UdpSocket::from_std)
    {
        Ok(s) => s,
        Err(_) => return,
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
        if let Some(dest) = stream.dest_for_rtcp_source(from) {
            dest.on_rtcp(&buf[..n], stream.clock_rate());
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
        if tokio::time::Instant::now() >= next_rtcp {
            send_sender_reports(&shared);
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
    expired.into_iter().for_each(session::end_session);
}

fn send_sender_reports(shared: &Shared) {
    let streams: Vec<Arc<Stream>> = shared.streams.read().unwrap().values().cloned().collect();
    for stream in streams {
        for dest in stream.dests() {
            if let Some(sr) = stream.sender_report(&dest, &shared.cname) {
                stream.send_rtcp(&dest, Bytes::from(sr));
            }
        }
    }
}
