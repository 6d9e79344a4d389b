//! Record mounts: a publisher pushes its streams into the server (ANNOUNCE, SETUP
//! `mode=record`, RECORD), the server hands them to its owner.
//!
//! Specifications: RFC 2326 §10.3 (ANNOUNCE), §10.11 (RECORD), §12.39 (Transport `mode`,
//! `client_port`, `server_port`, `interleaved`), §10.12 (interleaved data), §11.3.7 (455),
//! §11.3.8 (415 for a body that is not `application/sdp`); RFC 4566 (the announced SDP);
//! RFC 3550 §6.4.1 (Sender Reports from the publisher), §6.4.2 (Receiver Reports to it).
//!
//! One publisher at a time per mount. The methods, sessions, access control, TLS, tunnels and
//! limits are the play mount's ([`super::session`]); this module adds what differs: the
//! ANNOUNCE that describes the streams, SETUP with `mode=record` (any case, quoted or not) over
//! TCP interleaved or UDP (the server binds a port pair per stream and takes packets only from
//! the publisher's address), and RECORD.
//!
//! What the owner (the element) gets: [`RecordEvent`]s through a [`RecordQueue`], which never
//! blocks the connection's reader. Control events (announced, started, left) are always queued,
//! and bounded: one publisher at a time, and an ANNOUNCE is answered 503 while more than
//! [`MAX_ANNOUNCE_BACKLOG`] wait. RTP packets are dropped, and counted, once
//! [`RecordConfig::queue_packets`] wait unread; Sender Reports once as many events wait.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtsp_types::{Request, StatusCode, headers};
use tokio::task::AbortHandle;

use super::Shared;
use super::conn::{CloseReason, ConnOut};
use super::media::AliveStamp;
use super::session::{ConnCtx, Refusal, Session, refuse, session_header};
use crate::net::udp_in::Datagrams;
use crate::rtp::rtcp::{self, RtcpPacket};
use crate::rtp::stats::ReceiverStats;
use crate::rtsp::sdp::{MediaDescription, SessionDescription};
use crate::rtsp::transport::{LowerTransport, TransportSpec, parse_transports};

/// Methods a publisher may send to a record mount.
pub const RECORD_METHODS: &str =
    "OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN, GET_PARAMETER, SET_PARAMETER";

/// The highest RTP clock rate an announced stream may have (1 MHz: above every audio rate and
/// 90 kHz video; larger rates are nonsense that would only stress the timestamp arithmetic).
pub const MAX_CLOCK_RATE: u32 = 1_000_000;

/// How long a publisher's packets are still taken after its TEARDOWN or its connection's end:
/// ffmpeg flushes its RTP muxers (the last aggregated AAC packet) after sending TEARDOWN.
pub const LINGER: Duration = Duration::from_millis(250);

/// An ANNOUNCE is answered 503 while more events than this wait for the owner.
pub const MAX_ANNOUNCE_BACKLOG: usize = 1024;

/// Settings of a record mount.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// A second publisher replaces the first (else it is answered 455).
    pub takeover: bool,
    /// Streams an ANNOUNCE may describe at most (400 beyond).
    pub max_streams: usize,
    /// RTP packets waiting for the owner at most; beyond, new ones are dropped and counted.
    pub queue_packets: usize,
    /// How long the thread reading a TCP publisher lets its data gather in the socket before
    /// it takes it (see [`super::tcp_thread`]); zero: each read returns as soon as anything
    /// came. At most [`MAX_READ_HOLD`].
    pub read_hold: Duration,
}

/// The longest [`RecordConfig::read_hold`].
pub const MAX_READ_HOLD: Duration = Duration::from_millis(20);

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            takeover: false,
            max_streams: 16,
            queue_packets: 8192,
            read_hold: MAX_READ_HOLD,
        }
    }
}

/// Why a publisher is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftReason {
    /// It sent TEARDOWN.
    Teardown,
    /// Its RTSP connection closed.
    ConnectionClosed,
    /// Nothing from it (RTSP, RTP or RTCP) within the session timeout.
    Timeout,
    /// Another publisher took the mount over.
    TakenOver,
    /// The server stops.
    ServerStopped,
}

impl std::fmt::Display for LeftReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeftReason::Teardown => "it sent TEARDOWN",
            LeftReason::ConnectionClosed => "its connection closed",
            LeftReason::Timeout => "nothing arrived from it within the session timeout",
            LeftReason::TakenOver => "another publisher took the mount over",
            LeftReason::ServerStopped => "the server stopped",
        })
    }
}

/// What the server tells its owner about publishers.
#[derive(Debug, Clone)]
pub enum RecordEvent {
    /// A publisher described its streams (indices are positions in `streams`).
    Announced {
        publisher: u64,
        peer: SocketAddr,
        streams: Vec<MediaDescription>,
    },
    /// It sent RECORD.
    Started { publisher: u64 },
    /// RTP packets of one of its streams, in arrival order.
    Rtp {
        publisher: u64,
        stream: usize,
        packets: Vec<Bytes>,
    },
    /// A Sender Report of one of its streams: (NTP time, RTP time).
    SenderReport {
        publisher: u64,
        stream: usize,
        ntp: u64,
        rtptime: u32,
    },
    /// It is gone; nothing more of it follows.
    Left { publisher: u64, reason: LeftReason },
}

/// What the server measured of one stream of the publisher (RFC 3550 A.3, A.8), as its
/// Receiver Reports tell the publisher.
#[derive(Debug, Clone, Default)]
pub struct PublisherStreamStats {
    pub stream: usize,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_lost: i64,
    pub jitter: Duration,
    pub sender_reports: u64,
}

/// The current publisher's figures.
#[derive(Debug, Clone, Default)]
pub struct PublisherStats {
    pub publisher: u64,
    pub address: String,
    /// `tcp` or `udp`, per the first stream set up.
    pub transport: String,
    pub recording: bool,
    pub streams: Vec<PublisherStreamStats>,
}

/// Where the owner takes one stream's RTP packets straight from the server's tasks, once it is
/// ready for them (see [`RecordQueue::attach`]).
pub trait PacketSink: Send + Sync {
    /// Takes the packets without blocking; returns how many it dropped (its own bound).
    fn push(&self, packets: Vec<Bytes>) -> usize;

    /// Takes the packets on a thread that serves this stream alone (a UDP stream's receive
    /// thread), which may do the owner's work with them itself, blocking as long as that
    /// takes: the server holds no lock meanwhile. Packets handed over earlier with
    /// [`PacketSink::push`] must come first. By default the same as `push`.
    fn push_exclusive(&self, packets: Vec<Bytes>) -> usize {
        self.push(packets)
    }
}

/// The bounded hand-over from the server's tasks to the owner. Never blocks a producer.
///
/// Events come out of [`RecordQueue::pop`] in order. A stream's RTP packets skip that queue
/// once the owner has attached a [`PacketSink`] for the stream: the task that read them hands
/// them over itself, one thread hop (and one wake-up) fewer per packet than through a
/// dispatching thread. Packets that came before the sink are handed to it first, in order.
#[derive(Default)]
pub struct RecordQueue {
    state: Mutex<QueueState>,
    cond: Condvar,
    limit: usize,
    /// RTP packets dropped because the owner did not keep up.
    pub dropped: AtomicU64,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<RecordEvent>,
    packets: usize,
    /// Events in `events` that are not RTP.
    control: usize,
    closed: bool,
    /// (publisher, stream) → where its packets go directly.
    sinks: Vec<(u64, usize, Arc<dyn PacketSink>)>,
}

impl RecordQueue {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    fn push_control(&self, event: RecordEvent) {
        let mut s = self.state.lock().unwrap();
        if s.closed {
            return;
        }
        s.events.push_back(event);
        s.control += 1;
        self.cond.notify_one();
    }

    /// Queues an event that may be dropped (a Sender Report: the next one will do) when as many
    /// events as the packet limit wait.
    fn push_droppable(&self, event: RecordEvent) {
        let mut s = self.state.lock().unwrap();
        if s.closed || s.events.len() >= self.limit {
            return;
        }
        s.events.push_back(event);
        s.control += 1;
        self.cond.notify_one();
    }

    /// Events other than RTP waiting for the owner.
    fn backlog(&self) -> usize {
        self.state.lock().unwrap().control
    }

    /// Hands packets to the stream's sink, or queues them unless that would exceed the limit;
    /// returns how many were dropped. `exclusive`: the calling thread serves this stream alone
    /// (see [`PacketSink::push_exclusive`]).
    fn push_packets(
        &self,
        publisher: u64,
        stream: usize,
        packets: Vec<Bytes>,
        exclusive: bool,
    ) -> usize {
        let mut s = self.state.lock().unwrap();
        if s.closed {
            return 0;
        }
        if let Some((_, _, sink)) = s
            .sinks
            .iter()
            .find(|(p, st, _)| *p == publisher && *st == stream)
        {
            let dropped = if exclusive {
                // Outside the lock: the sink may push downstream, which may block, and must
                // hold up neither the server's tasks nor the other streams. Nothing overtakes
                // what `attach` handed over: it did so before the sink was found here, and the
                // sink processes what it was handed first.
                let sink = sink.clone();
                drop(s);
                sink.push_exclusive(packets)
            } else {
                // Under the lock, so that nothing overtakes what `attach` hands over.
                let dropped = sink.push(packets);
                drop(s);
                dropped
            };
            self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            return dropped;
        }
        let n = packets.len();
        if s.packets + n > self.limit {
            drop(s);
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
            return n;
        }
        s.packets += n;
        s.events.push_back(RecordEvent::Rtp {
            publisher,
            stream,
            packets,
        });
        self.cond.notify_one();
        0
    }

    /// The next event, waiting at most `timeout`; None on timeout or once closed.
    pub fn pop(&self, timeout: Duration) -> Option<RecordEvent> {
        let mut s = self.state.lock().unwrap();
        if s.events.is_empty() && !s.closed {
            s = self.cond.wait_timeout(s, timeout).unwrap().0;
        }
        if s.closed {
            return None;
        }
        let event = s.events.pop_front()?;
        match &event {
            RecordEvent::Rtp { packets, .. } => s.packets -= packets.len(),
            _ => s.control -= 1,
        }
        Some(event)
    }

    /// From now on, `publisher`'s packets of `stream` go to `sink` as they arrive, those still
    /// queued first. Replaces an earlier sink of that stream.
    pub fn attach(&self, publisher: u64, stream: usize, sink: Arc<dyn PacketSink>) {
        let mut s = self.state.lock().unwrap();
        if s.closed {
            return;
        }
        let mut dropped = 0;
        let mut moved = 0;
        let events = std::mem::take(&mut s.events);
        for event in events {
            match event {
                RecordEvent::Rtp {
                    publisher: p,
                    stream: st,
                    packets,
                } if p == publisher && st == stream => {
                    moved += packets.len();
                    dropped += sink.push(packets);
                }
                other => s.events.push_back(other),
            }
        }
        s.packets -= moved;
        s.sinks
            .retain(|(p, st, _)| !(*p == publisher && *st == stream));
        s.sinks.push((publisher, stream, sink));
        drop(s);
        self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// Packets of `publisher` queue again (for [`RecordQueue::pop`]) instead of going to sinks.
    pub fn detach(&self, publisher: u64) {
        self.state
            .lock()
            .unwrap()
            .sinks
            .retain(|(p, _, _)| *p != publisher);
    }

    /// Ends the queue: waiters wake, nothing more is queued or handed to a sink.
    pub fn close(&self) {
        let mut s = self.state.lock().unwrap();
        s.closed = true;
        s.events.clear();
        s.packets = 0;
        s.control = 0;
        s.sinks.clear();
        self.cond.notify_all();
    }
}

/// How one announced stream reaches the server.
enum StreamTransport {
    Tcp { channels: (u8, u8) },
    Udp,
}

/// One announced stream.
struct PubStream {
    desc: MediaDescription,
    transport: Option<StreamTransport>,
    /// Reception figures for Receiver Reports.
    stats: Arc<Mutex<RecvState>>,
}

/// What the server knows of one stream's sender, for its Receiver Reports.
pub(super) struct RecvState {
    pub stats: ReceiverStats,
    pub ssrc: Option<u32>,
    pub sender_reports: u64,
    /// Where the reports go (UDP: the publisher's RTCP port, from the socket bound for it).
    pub udp: Option<(Arc<tokio::net::UdpSocket>, SocketAddr)>,
}

/// The publisher of the mount.
struct Publisher {
    id: u64,
    conn_id: u64,
    user: Option<String>,
    peer: SocketAddr,
    out: Arc<ConnOut>,
    streams: Vec<PubStream>,
    session: Option<String>,
    recording: bool,
    /// When it announced: one that has not sent RECORD within the session timeout is dropped,
    /// so that a connection kept open with keep-alives cannot hold the mount.
    announced: Instant,
    /// The session's stamp, kept for packets that come after the session ended (see LINGER).
    alive: Option<Arc<AliveStamp>>,
    /// It sent TEARDOWN or its connection closed: since when, and which. Its packets are still
    /// taken for [`LINGER`] (ffmpeg sends its last packets after TEARDOWN), then it is gone.
    leaving: Option<(Instant, LeftReason)>,
    /// UDP RTCP receivers, ended with the publisher.
    tasks: Vec<AbortHandle>,
    /// UDP RTP receive threads, stopped and joined with the publisher (after `tasks`).
    receivers: Vec<UdpRtpThread>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A record mount's state in the server.
pub(super) struct RecordState {
    pub config: RecordConfig,
    pub queue: Arc<RecordQueue>,
    publisher: Mutex<Option<Publisher>>,
    next_id: AtomicU64,
}

impl RecordState {
    pub fn new(config: RecordConfig) -> Self {
        Self {
            queue: Arc::new(RecordQueue::new(config.queue_packets)),
            config,
            publisher: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }
}

/// An interleaved channel of a recording connection.
pub(super) struct RecChannel {
    publisher: u64,
    stream: usize,
    rtcp: bool,
    alive: Weak<AliveStamp>,
    recv: Weak<Mutex<RecvState>>,
    /// A video stream's RTP: its packets are handed over a frame at a time once one with the
    /// marker bit came (see [`Shared::on_record_interleaved`]).
    coalesce: bool,
    /// A packet with the marker bit came: the publisher marks the ends of its frames.
    marks: bool,
    /// The packets of the video frame still arriving.
    pending: Vec<Bytes>,
}

type Resp = rtsp_types::Response<Vec<u8>>;

/// Checks an announced SDP; what is wrong with it as (status, why).
pub fn check_announce(
    content_type: Option<&str>,
    body: &[u8],
    max_streams: usize,
) -> Result<Vec<MediaDescription>, (StatusCode, String)> {
    let ct = content_type.unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return Err((
            StatusCode::UnsupportedMediaType,
            format!("Content-Type '{ct}' is not application/sdp"),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err((StatusCode::BadRequest, "the body is empty".into()));
    }
    // Count the m= lines before parsing: a body full of them is refused without more work.
    let m_lines = body
        .split(|&b| b == b'\n')
        .filter(|l| l.trim_ascii_start().starts_with(b"m="))
        .count();
    if m_lines > max_streams {
        return Err((
            StatusCode::BadRequest,
            format!("{m_lines} media, at most {max_streams} are taken"),
        ));
    }
    let sdp = SessionDescription::parse(body).map_err(|e| {
        (
            StatusCode::BadRequest,
            format!("the SDP does not parse: {}", e.0),
        )
    })?;
    if sdp.media.is_empty() {
        return Err((StatusCode::BadRequest, "the SDP has no RTP media".into()));
    }
    for (i, m) in sdp.media.iter().enumerate() {
        if m.encoding_name.is_empty() || m.clock_rate == 0 {
            return Err((
                StatusCode::BadRequest,
                format!(
                    "media {i} (payload type {}) names no format (no rtpmap)",
                    m.payload_type
                ),
            ));
        }
        if m.clock_rate > MAX_CLOCK_RATE {
            return Err((
                StatusCode::BadRequest,
                format!(
                    "media {i}: clock rate {} is above {MAX_CLOCK_RATE}",
                    m.clock_rate
                ),
            ));
        }
    }
    Ok(sdp.media)
}

/// Whether a SETUP URL names this stream control. `rest` is the URL's path after the mount
/// point, without leading slashes.
fn control_matches(control: &str, url: &rtsp_types::Url, rest: &str) -> bool {
    let control = control.trim();
    if control.contains("://") {
        return rtsp_types::Url::parse(control).is_ok_and(|c| {
            c.path().trim_end_matches('/') == url.path().trim_end_matches('/')
                && c.query() == url.query()
        });
    }
    let control = control.trim_start_matches('/');
    if control.is_empty() || control == "*" {
        return rest.is_empty();
    }
    let mut full = rest.to_owned();
    if let Some(q) = url.query() {
        full.push('?');
        full.push_str(q);
    }
    full == control || rest == control || full.ends_with(&format!("/{control}"))
}

impl Shared {
    fn record_state(&self) -> &RecordState {
        self.record.as_ref().expect("a record mount")
    }

    /// The request URL's path after the mount point (no slashes around it), or 404.
    fn mount_rest<'u>(&self, url: &'u rtsp_types::Url) -> Result<&'u str, Refusal> {
        let path = url.path().trim_end_matches('/');
        let mount = self.config.mount_point.trim_end_matches('/');
        let rest = path
            .strip_prefix(mount)
            .filter(|r| r.is_empty() || r.starts_with('/') || mount.is_empty())
            .ok_or_else(|| {
                refuse(
                    StatusCode::NotFound,
                    format!(
                        "path '{}' is not under the mount point '{}'",
                        url.path(),
                        self.config.mount_point
                    ),
                )
            })?;
        Ok(rest.trim_start_matches('/'))
    }

    pub(super) fn announce(
        &self,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
    ) -> Result<Resp, Refusal> {
        let peer = ctx.out.peer;
        let url = req
            .request_uri()
            .ok_or_else(|| refuse(StatusCode::NotFound, "no request URL"))?;
        let rest = self.mount_rest(url)?;
        if !rest.is_empty() {
            return Err(refuse(
                StatusCode::NotFound,
                format!("ANNOUNCE of '{rest}' below the mount point"),
            ));
        }
        let rec = self.record_state();
        // Each ANNOUNCE queues events (and makes pads): one connection repeating it faster
        // than the element takes them would grow the queue without bound.
        let backlog = rec.queue.backlog();
        if backlog > MAX_ANNOUNCE_BACKLOG {
            return Err(refuse(
                StatusCode::ServiceUnavailable,
                format!("{backlog} publisher events wait for the element: it has not caught up"),
            ));
        }
        let streams = check_announce(
            req.header(&headers::CONTENT_TYPE).map(|v| v.as_str()),
            req.body(),
            rec.config.max_streams,
        )
        .map_err(|(status, why)| refuse(status, why))?;
        let mut slot = rec.publisher.lock().unwrap();
        let mut replaced = None;
        if let Some(old) = slot.as_ref() {
            let same = old.conn_id == ctx.out.id && old.user == ctx.user;
            if !same && !rec.config.takeover && old.leaving.is_none() {
                return Err(refuse(
                    StatusCode::MethodNotValidInThisState,
                    format!(
                        "the mount has a publisher ({}, publisher {}); record-takeover is off",
                        old.peer, old.id
                    ),
                ));
            }
            replaced = slot.take();
        }
        let id = rec.next_id.fetch_add(1, Ordering::Relaxed);
        for (i, m) in streams.iter().enumerate() {
            sdebug!(
                &*self.name,
                "{peer}: publisher {id} stream {i}: {} {}/{} payload type {} (control '{}')",
                m.media,
                m.encoding_name,
                m.clock_rate,
                m.payload_type,
                super::logfmt::redact_urls(&m.control)
            );
        }
        sdebug!(
            &*self.name,
            "{peer}: publisher {id} announced {} stream(s)",
            streams.len()
        );
        let pub_streams = streams
            .iter()
            .map(|d| PubStream {
                desc: d.clone(),
                transport: None,
                stats: Arc::new(Mutex::new(RecvState {
                    stats: ReceiverStats::new(d.clock_rate),
                    ssrc: None,
                    sender_reports: 0,
                    udp: None,
                })),
            })
            .collect();
        *slot = Some(Publisher {
            id,
            conn_id: ctx.out.id,
            user: ctx.user.clone(),
            peer,
            out: ctx.out.clone(),
            streams: pub_streams,
            session: None,
            recording: false,
            announced: Instant::now(),
            alive: None,
            leaving: None,
            tasks: Vec::new(),
            receivers: Vec::new(),
        });
        drop(slot);
        if let Some(old) = replaced {
            let reason = old.leaving.map_or(LeftReason::TakenOver, |(_, r)| r);
            self.end_publisher(old, reason, Some(ctx.out.id));
        }
        rec.queue.push_control(RecordEvent::Announced {
            publisher: id,
            peer,
            streams,
        });
        Ok(self.ok(cseq).build(Vec::new()))
    }

    /// Ends a publisher that is no longer the mount's: its session, its connection (unless it
    /// is `keep_conn`, the one taking over), and tells the owner.
    fn end_publisher(&self, old: Publisher, reason: LeftReason, keep_conn: Option<u64>) {
        sdebug!(
            &*self.name,
            "{}: publisher {} left: {reason}",
            old.peer,
            old.id
        );
        if let Some(sid) = &old.session {
            let s = self.sessions.lock().unwrap().remove(sid);
            if let Some(s) = s {
                super::session::end_session(s);
            }
        }
        if reason == LeftReason::TakenOver && keep_conn != Some(old.conn_id) {
            old.out.close(CloseReason::Server);
        }
        let id = old.id;
        drop(old);
        self.record_state().queue.push_control(RecordEvent::Left {
            publisher: id,
            reason,
        });
    }

    /// A session ended (TEARDOWN, timeout, its connection, the server stopping): its publisher
    /// leaves with it.
    pub(super) fn record_session_ended(&self, session: &str, reason: LeftReason) {
        let Some(rec) = self.record.as_ref() else {
            return;
        };
        let mut slot = rec.publisher.lock().unwrap();
        let Some(p) = slot
            .as_mut()
            .filter(|p| p.session.as_deref() == Some(session))
        else {
            return;
        };
        p.session = None;
        if matches!(reason, LeftReason::Teardown | LeftReason::ConnectionClosed) {
            if p.leaving.is_none() {
                sdebug!(
                    &*self.name,
                    "{}: publisher {} leaves ({reason}); its packets are taken for {LINGER:?} more",
                    p.peer,
                    p.id
                );
                p.leaving = Some((Instant::now(), reason));
            }
            return;
        }
        let old = slot.take().expect("checked");
        drop(slot);
        self.end_publisher(old, reason, None);
    }

    /// A connection closed: a publisher that announced on it and has no session leaves.
    pub(super) fn record_conn_closed(&self, conn: u64) {
        let Some(rec) = self.record.as_ref() else {
            return;
        };
        let mut slot = rec.publisher.lock().unwrap();
        if let Some(p) = slot.as_mut().filter(|p| p.conn_id == conn)
            && p.leaving.is_none()
        {
            p.leaving = Some((Instant::now(), LeftReason::ConnectionClosed));
        }
    }

    /// Ends a leaving publisher once [`LINGER`] has passed, and one that announced but has not
    /// sent RECORD within the session timeout (from housekeeping).
    pub(super) fn record_linger(&self) {
        let Some(rec) = self.record.as_ref() else {
            return;
        };
        let mut slot = rec.publisher.lock().unwrap();
        let Some(p) = slot.as_ref() else { return };
        let reason = match p.leaving {
            Some((since, reason)) if since.elapsed() >= LINGER => reason,
            None if !p.recording && p.announced.elapsed() > self.config.session_timeout => {
                sdebug!(
                    &*self.name,
                    "{}: publisher {} dropped: no RECORD within the session timeout ({} s) of its \
                     ANNOUNCE",
                    p.peer,
                    p.id,
                    self.config.session_timeout.as_secs()
                );
                LeftReason::Timeout
            }
            _ => return,
        };
        let old = slot.take().expect("checked");
        drop(slot);
        self.end_publisher(old, reason, None);
    }

    /// SETUP of one announced stream with `mode=record`.
    pub(super) fn record_setup(
        self: &Arc<Self>,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Resp, Refusal> {
        let peer = ctx.out.peer;
        let url = req
            .request_uri()
            .ok_or_else(|| refuse(StatusCode::NotFound, "no request URL"))?;
        let rest = self.mount_rest(url)?;
        let header = req
            .header(&headers::TRANSPORT)
            .ok_or_else(|| refuse(StatusCode::UnsupportedTransport, "no Transport header"))?;
        let transports = parse_transports(header.as_str()).map_err(|e| {
            refuse(
                StatusCode::UnsupportedTransport,
                format!("Transport '{}' does not parse: {}", header.as_str(), e.0),
            )
        })?;
        let rec = self.record_state();
        let mut slot = rec.publisher.lock().unwrap();
        let publisher = slot
            .as_mut()
            .filter(|p| p.conn_id == ctx.out.id && p.user == ctx.user && p.leaving.is_none())
            .ok_or_else(|| {
                refuse(
                    StatusCode::MethodNotValidInThisState,
                    "SETUP on a record mount without an ANNOUNCE of this connection",
                )
            })?;
        let index = match publisher
            .streams
            .iter()
            .position(|s| control_matches(&s.desc.control, url, rest))
        {
            Some(i) => i,
            None if publisher.streams.len() == 1 && rest.is_empty() => 0,
            None => {
                return Err(refuse(
                    StatusCode::NotFound,
                    format!("'{rest}' names no announced stream"),
                ));
            }
        };
        if publisher.recording {
            return Err(refuse(
                StatusCode::MethodNotValidInThisState,
                "the publisher records already: streams are set up before RECORD",
            ));
        }
        // The publisher's session, or a new one.
        if let (Some(named), Some(own)) = (session_id, publisher.session.as_deref())
            && named != own
        {
            return Err(refuse(
                StatusCode::SessionNotFound,
                format!("no session {named}"),
            ));
        }
        let mut chosen = None;
        for t in &transports {
            if !t
                .mode
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case("RECORD") || m == "RECEIVE")
            {
                continue;
            }
            match (t.lower, t.multicast) {
                (LowerTransport::Tcp, _) if self.config.protocols.tcp => {
                    chosen = Some(t.clone());
                    break;
                }
                (LowerTransport::Udp, false)
                    if self.config.protocols.udp && t.client_port.is_some() =>
                {
                    chosen = Some(t.clone());
                    break;
                }
                _ => {}
            }
        }
        let Some(t) = chosen else {
            let why = if transports.iter().all(|t| t.mode.is_none()) {
                "no mode=record: this mount only records"
            } else {
                "no alternative with mode=record the server allows (UDP unicast with client_port, \
                 or TCP interleaved)"
            };
            return Err(refuse(
                StatusCode::UnsupportedTransport,
                format!("{why} (Transport: {})", header.as_str()),
            ));
        };
        let sid = publisher
            .session
            .clone()
            .unwrap_or_else(super::session::new_session_id);
        let mut sessions = self.sessions.lock().unwrap();
        let alive = match sessions.get(&sid) {
            Some(s) => s.alive.clone(),
            None => {
                let max = self.config.max_sessions;
                if max > 0 && sessions.len() >= max {
                    self.counters
                        .sessions_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(refuse(
                        StatusCode::ServiceUnavailable,
                        format!("max-sessions ({max}) reached"),
                    ));
                }
                let alive = Arc::new(AliveStamp::new(self.epoch));
                sessions.insert(
                    sid.clone(),
                    Session {
                        id: sid.clone(),
                        conn_id: ctx.out.id,
                        user: ctx.user.clone(),
                        peer,
                        alive: alive.clone(),
                        timeout: self.config.session_timeout,
                        playing: false,
                        record: true,
                        streams: Default::default(),
                        created: Instant::now(),
                    },
                );
                ctx.setups.lock().unwrap().sessions.push(sid.clone());
                sdebug!(
                    &*self.name,
                    "{peer}: session {sid} created for publisher {} (timeout {} s)",
                    publisher.id,
                    self.config.session_timeout.as_secs()
                );
                alive
            }
        };
        drop(sessions);
        publisher.session = Some(sid.clone());
        publisher.alive = Some(alive.clone());
        let stream = &mut publisher.streams[index];
        let mut reply;
        match t.lower {
            LowerTransport::Tcp => {
                let mut setups = ctx.setups.lock().unwrap();
                // Channels of publishers gone (an earlier ANNOUNCE on this connection) are free.
                setups
                    .record_channels
                    .retain(|_, c| c.recv.strong_count() > 0);
                let used: Vec<u8> = setups.record_channels.keys().copied().collect();
                let channels = match t.interleaved {
                    Some((a, b)) if !used.contains(&a) && !used.contains(&b) => (a, b),
                    _ => {
                        let base = (0u8..=254)
                            .step_by(2)
                            .find(|c| !used.contains(c) && !used.contains(&(c + 1)))
                            .ok_or_else(|| {
                                refuse(
                                    StatusCode::UnsupportedTransport,
                                    "every interleaved channel is in use",
                                )
                            })?;
                        (base, base + 1)
                    }
                };
                let video = stream.desc.media.eq_ignore_ascii_case("video");
                for (ch, rtcp) in [(channels.0, false), (channels.1, true)] {
                    setups.record_channels.insert(
                        ch,
                        RecChannel {
                            publisher: publisher.id,
                            stream: index,
                            rtcp,
                            alive: Arc::downgrade(&alive),
                            recv: Arc::downgrade(&stream.stats),
                            coalesce: video && !rtcp,
                            marks: false,
                            pending: Vec::new(),
                        },
                    );
                }
                reply = TransportSpec::tcp_interleaved(channels);
                stream.transport = Some(StreamTransport::Tcp { channels });
            }
            LowerTransport::Udp => {
                let (rtp, rtcp) = crate::rtsp::ports::bind_port_pair(self.config.address, None)
                    .map_err(|e| {
                        refuse(
                            StatusCode::InternalServerError,
                            format!("cannot bind a UDP port pair: {e}"),
                        )
                    })?;
                let ports = (
                    rtp.local_addr().map_or(0, |a| a.port()),
                    rtcp.local_addr().map_or(0, |a| a.port()),
                );
                let client = t.client_port.unwrap_or_default();
                let runtime = crate::runtime::handle();
                let _guard = runtime.enter();
                let rtcp = tokio::net::UdpSocket::from_std(rtcp)
                    .map(Arc::new)
                    .map_err(|e| {
                        refuse(
                            StatusCode::InternalServerError,
                            format!("cannot use the UDP port pair: {e}"),
                        )
                    })?;
                stream.stats.lock().unwrap().udp =
                    Some((rtcp.clone(), SocketAddr::new(peer.ip(), client.1)));
                let ctx = UdpCtx {
                    shared: Arc::downgrade(self),
                    publisher: publisher.id,
                    stream: index,
                    source: peer.ip().to_canonical(),
                    coalesce: stream.desc.media.eq_ignore_ascii_case("video"),
                    alive: alive.clone(),
                    recv: stream.stats.clone(),
                };
                let receiver = UdpRtpThread::spawn(ctx.clone(), rtp).map_err(|e| {
                    refuse(
                        StatusCode::InternalServerError,
                        format!("cannot start the UDP receive thread: {e}"),
                    )
                })?;
                publisher.receivers.push(receiver);
                publisher
                    .tasks
                    .push(runtime.spawn(udp_rtcp_receiver(ctx, rtcp)).abort_handle());
                reply = TransportSpec::udp_unicast();
                reply.client_port = Some(client);
                reply.server_port = Some(ports);
                stream.transport = Some(StreamTransport::Udp);
            }
        }
        reply.profile = t.profile;
        reply.mode = Some("RECORD".into());
        sdebug!(
            &*self.name,
            "{peer}: publisher {} stream {index} set up (session {sid}, Transport: {reply})",
            publisher.id
        );
        Ok(self
            .ok(cseq)
            .header(headers::TRANSPORT, reply.to_string())
            .header(
                headers::SESSION,
                session_header(&sid, self.config.session_timeout.as_secs()),
            )
            .build(Vec::new()))
    }

    /// RECORD: the publisher starts sending.
    pub(super) fn record(
        &self,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Resp, Refusal> {
        let url = req
            .request_uri()
            .ok_or_else(|| refuse(StatusCode::NotFound, "no request URL"))?;
        self.mount_rest(url)?;
        let id =
            session_id.ok_or_else(|| refuse(StatusCode::SessionNotFound, "no Session header"))?;
        let rec = self.record_state();
        let mut slot = rec.publisher.lock().unwrap();
        let publisher = slot
            .as_mut()
            .filter(|p| {
                p.conn_id == ctx.out.id && p.user == ctx.user && p.session.as_deref() == Some(id)
            })
            .ok_or_else(|| {
                refuse(
                    StatusCode::SessionNotFound,
                    format!("no session {id} of a publisher on this connection"),
                )
            })?;
        let set_up = publisher
            .streams
            .iter()
            .filter(|s| s.transport.is_some())
            .count();
        let first = !publisher.recording;
        publisher.recording = true;
        let pid = publisher.id;
        drop(slot);
        if first {
            sdebug!(
                &*self.name,
                "{}: publisher {pid} records ({set_up} stream(s) set up)",
                ctx.out.peer
            );
            rec.queue
                .push_control(RecordEvent::Started { publisher: pid });
        }
        Ok(self
            .ok(cseq)
            .header(
                headers::SESSION,
                session_header(id, self.config.session_timeout.as_secs()),
            )
            .build(Vec::new()))
    }

    /// An interleaved frame on a record connection. False: not a record channel.
    ///
    /// A video stream's RTP packets are handed over a frame at a time once the publisher was
    /// seen to mark the ends of its frames (RFC 3550 §5.1 marker bit; RFC 6184 §5.1 for
    /// H.264): those without the marker bit (the frame goes on) wait on the channel until the
    /// one with it, one of another RTP timestamp (a frame whose end was not marked) or
    /// [`COALESCE_PACKETS`] of them. The packets of a frame follow each other on the
    /// connection, so this costs the frame no time worth speaking of, and the element's pad
    /// task one wake-up per frame instead of one per packet. Audio packets, and the packets of
    /// a publisher that sets no marker (nothing would end a frame but the next one), are
    /// handed over at once.
    pub(super) fn on_record_interleaved(&self, ctx: &ConnCtx, channel: u8, data: &Bytes) -> bool {
        let Some(rec) = self.record.as_ref() else {
            return false;
        };
        let mut setups = ctx.setups.lock().unwrap();
        let Some(c) = setups.record_channels.get_mut(&channel) else {
            return false;
        };
        let (publisher, stream, rtcp_channel) = (c.publisher, c.stream, c.rtcp);
        let (alive, recv) = (c.alive.upgrade(), c.recv.upgrade());
        let (Some(alive), Some(recv)) = (alive, recv) else {
            // The publisher is gone: its late packets are ignored.
            c.pending.clear();
            return true;
        };
        if c.coalesce && !c.marks && rtp_marker(data) {
            c.marks = true;
        }
        let packets = if !c.marks {
            vec![data.clone()]
        } else {
            let same_frame = c
                .pending
                .first()
                .is_none_or(|first| rtp_timestamp(first) == rtp_timestamp(data));
            c.pending.push(data.clone());
            if same_frame && !rtp_marker(data) && c.pending.len() < COALESCE_PACKETS {
                drop(setups);
                alive.touch();
                return true;
            }
            std::mem::take(&mut c.pending)
        };
        drop(setups);
        alive.touch();
        if rtcp_channel {
            self.on_publisher_rtcp(rec, publisher, stream, &recv, data);
        } else {
            on_publisher_rtp(rec, publisher, stream, &recv, packets, &self.name, false);
        }
        true
    }

    fn on_publisher_rtcp(
        &self,
        rec: &RecordState,
        publisher: u64,
        stream: usize,
        recv: &Mutex<RecvState>,
        data: &[u8],
    ) {
        let Ok(packets) = rtcp::parse_compound(data) else {
            strace!(
                &*self.name,
                "publisher {publisher} stream {stream}: unusable RTCP ({} bytes)",
                data.len()
            );
            return;
        };
        for p in packets {
            if let RtcpPacket::SenderReport(sr) = p {
                strace!(
                    &*self.name,
                    "publisher {publisher} stream {stream}: sender report ssrc {:08x} rtptime {} \
                     ({} packets, {} octets)",
                    sr.ssrc,
                    sr.rtp_timestamp,
                    sr.packet_count,
                    sr.octet_count
                );
                let mut st = recv.lock().unwrap();
                st.stats.on_sender_report(sr.ntp_timestamp, Instant::now());
                st.sender_reports += 1;
                drop(st);
                rec.queue.push_droppable(RecordEvent::SenderReport {
                    publisher,
                    stream,
                    ntp: sr.ntp_timestamp,
                    rtptime: sr.rtp_timestamp,
                });
            }
        }
    }

    /// The current publisher's figures (None without one).
    pub(super) fn publisher_stats(&self) -> Option<PublisherStats> {
        let rec = self.record.as_ref()?;
        let slot = rec.publisher.lock().unwrap();
        let p = slot.as_ref()?;
        let transport = p
            .streams
            .iter()
            .find_map(|s| match s.transport {
                Some(StreamTransport::Tcp { .. }) => Some("tcp"),
                Some(StreamTransport::Udp) => Some("udp"),
                None => None,
            })
            .unwrap_or("none");
        let streams = p
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let st = s.stats.lock().unwrap();
                PublisherStreamStats {
                    stream: i,
                    packets_received: st.stats.packets_received(),
                    bytes_received: st.stats.bytes_received(),
                    packets_lost: st.stats.cumulative_lost(),
                    jitter: st.stats.jitter_duration(),
                    sender_reports: st.sender_reports,
                }
            })
            .collect();
        Some(PublisherStats {
            publisher: p.id,
            address: p.peer.to_string(),
            transport: transport.into(),
            recording: p.recording,
            streams,
        })
    }

    /// Receiver Reports to the recording publisher's streams (from housekeeping).
    pub(super) fn send_receiver_reports(&self) {
        let Some(rec) = self.record.as_ref() else {
            return;
        };
        let slot = rec.publisher.lock().unwrap();
        let Some(p) = slot.as_ref().filter(|p| p.recording) else {
            return;
        };
        let now = Instant::now();
        for (i, s) in p.streams.iter().enumerate() {
            let mut st = s.stats.lock().unwrap();
            let Some(ssrc) = st.ssrc else { continue };
            let block = st.stats.report_block(ssrc, now);
            let rr = rtcp::ReceiverReport {
                ssrc: self.record_ssrc,
                reports: vec![block],
            };
            let mut bytes = Vec::with_capacity(64);
            rtcp::write_receiver_report(&rr, &self.cname, &mut bytes);
            strace!(
                &*self.name,
                "{}: receiver report to publisher {} stream {i}: fraction lost {}/256, \
                 cumulative lost {}, jitter {}",
                p.peer,
                p.id,
                block.fraction_lost,
                block.cumulative_lost,
                block.jitter
            );
            match (&s.transport, &st.udp) {
                (Some(StreamTransport::Tcp { channels }), _) => {
                    if let Some(frame) = super::conn::Frame::new(&[Bytes::from(bytes)]) {
                        p.out.send_media(channels.1, &frame);
                    }
                }
                (Some(StreamTransport::Udp), Some((socket, to))) => {
                    let _ = socket.try_send_to(&bytes, *to);
                }
                _ => {}
            }
        }
    }
}

/// Counts a packet for the reports and hands the packets over; `exclusive`: on a thread that
/// serves this stream alone (see [`PacketSink::push_exclusive`]).
fn on_publisher_rtp(
    rec: &RecordState,
    publisher: u64,
    stream: usize,
    recv: &Mutex<RecvState>,
    packets: Vec<Bytes>,
    name: &str,
    exclusive: bool,
) {
    {
        let mut st = recv.lock().unwrap();
        let now = Instant::now();
        for p in &packets {
            if let Ok(h) = crate::rtp::parse_rtp_header(p) {
                // The first packet at debug; SSRC changes at trace (a sender could change it
                // with every packet).
                if st.ssrc.is_none() {
                    sdebug!(
                        name,
                        "publisher {publisher} stream {stream}: first RTP packet, SSRC {:08x} \
                         (sequence number {}, payload type {})",
                        h.ssrc,
                        h.sequence,
                        h.payload_type
                    );
                } else if st.ssrc != Some(h.ssrc) {
                    strace!(
                        name,
                        "publisher {publisher} stream {stream}: SSRC {:08x} now",
                        h.ssrc
                    );
                }
                st.ssrc = Some(h.ssrc);
                let len = crate::rtp::rtp_payload(p, &h).len();
                st.stats.on_packet(h.sequence, h.timestamp, now, len);
            }
        }
    }
    let dropped = rec
        .queue
        .push_packets(publisher, stream, packets, exclusive);
    if dropped > 0 {
        let total = rec.queue.dropped.load(Ordering::Relaxed);
        // Logged when the count reaches the next power of two, not per packet.
        let before = total.saturating_sub(dropped as u64);
        if before.checked_ilog2() != total.checked_ilog2() {
            sdebug!(
                name,
                "publisher {publisher} stream {stream}: {dropped} packet(s) dropped: the element \
                 does not keep up ({total} dropped in all)"
            );
        }
    }
}

#[derive(Clone)]
struct UdpCtx {
    shared: Weak<Shared>,
    publisher: u64,
    stream: usize,
    /// The publisher's address (canonical: an IPv4-mapped IPv6 address as IPv4): datagrams
    /// from elsewhere are ignored.
    source: std::net::IpAddr,
    /// A video stream: the receive thread waits for the rest of a frame (see [`COALESCE`]).
    coalesce: bool,
    alive: Arc<AliveStamp>,
    recv: Arc<Mutex<RecvState>>,
}

/// RTP of one stream over UDP, on a thread of its own blocked in `recvmmsg`
/// ([`Datagrams`]): woken once per burst of datagrams, it takes every one queued and hands
/// those from the publisher's address to [`on_publisher_rtp`] in one go, as the stream's only
/// feeder (the owner's sink may jitter-buffer and push them downstream on this thread, see
/// [`PacketSink::push_exclusive`]). A task on the shared runtime paid per datagram a worker's
/// wake-up, an epoll round trip and a read that found the queue empty, most of the receiving
/// process's time over UDP. Dropping it stops the thread: shutting the socket down wakes it at
/// once on Linux (elsewhere within [`Self::POLL`]), and it is joined unless the drop happens on
/// the thread itself or the thread is handing packets over (downstream may block: the thread
/// then ends, and frees its port, as soon as that returns; the socket, shut down, takes nothing
/// more meanwhile).
struct UdpRtpThread {
    stop: Arc<AtomicBool>,
    /// The thread is handing packets to the owner.
    handing: Arc<AtomicBool>,
    /// The thread's socket, to shut down.
    socket: std::net::UdpSocket,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpRtpThread {
    /// How often the thread looks at its stop flag and the server when nothing wakes it: a
    /// fallback only, a shut-down socket wakes it at once.
    const POLL: Duration = Duration::from_secs(1);

    fn spawn(ctx: UdpCtx, socket: std::net::UdpSocket) -> std::io::Result<UdpRtpThread> {
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(Self::POLL))?;
        let handle = socket.try_clone()?;
        let port = socket.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let handing = Arc::new(AtomicBool::new(false));
        let (stopped, busy) = (stop.clone(), handing.clone());
        let thread = std::thread::Builder::new()
            // The port as in SETUP's answer and the logs (15 bytes at most are kept).
            .name(format!("rtsprec-{port}"))
            .spawn(move || udp_rtp_receiver(&ctx, &socket, &stopped, &busy))?;
        Ok(UdpRtpThread {
            stop,
            handing,
            socket: handle,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpRtpThread {
    fn drop(&mut self) {
        // SeqCst with `handing`: either the thread sees the flag before it hands packets over,
        // or this sees it handing them (and does not wait for downstream).
        self.stop.store(true, Ordering::SeqCst);
        // Linux wakes a reader of a shut-down socket even if it is not connected (the call
        // itself then reports ENOTCONN).
        let _ = socket2::SockRef::from(&self.socket).shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            // The thread itself may drop the last reference to the server (it holds one while
            // it hands packets over): it ends right after, having seen the flag. A thread
            // handing packets over ends once downstream returns: a server task (this drop
            // runs on one) does not wait for downstream.
            if t.thread().id() != std::thread::current().id()
                && !self.handing.load(Ordering::SeqCst)
            {
                let _ = t.join();
            }
        }
    }
}

/// How long the UDP receive thread of a video stream waits for the rest of a frame (an RTP
/// packet without the marker bit came last), how often at most, and up to how many packets.
const COALESCE: Duration = Duration::from_micros(1000);
const COALESCE_ROUNDS: usize = 4;
const COALESCE_PACKETS: usize = 256;

/// Whether an RTP packet has the marker bit (RFC 3550 §5.1; for video the last of a frame).
fn rtp_marker(p: &[u8]) -> bool {
    p.get(1).is_some_and(|b| b & 0x80 != 0)
}

/// An RTP packet's timestamp (RFC 3550 §5.1; None: too short to have one).
fn rtp_timestamp(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(4..8)?.try_into().ok()?))
}

/// The datagrams of the last read that come from the publisher, onto `packets`.
fn take_admitted(ctx: &UdpCtx, shared: &Shared, datagrams: &Datagrams, packets: &mut Vec<Bytes>) {
    // One allocation for them all, which the packets share.
    let mut chunk = datagrams.concat();
    for (d, &from) in datagrams.iter().zip(datagrams.sources()) {
        let data = chunk.split_to(d.len());
        if from.map(|ip| ip.to_canonical()) == Some(ctx.source) {
            packets.push(data);
        } else {
            strace!(
                &*shared.name,
                "stream {}: RTP from {}, not the publisher: ignored",
                ctx.stream,
                from.map_or("an unknown address".into(), |ip| ip.to_string())
            );
        }
    }
}

/// The loop of [`UdpRtpThread`]: until stopped or the server is gone.
fn udp_rtp_receiver(
    ctx: &UdpCtx,
    socket: &std::net::UdpSocket,
    stop: &AtomicBool,
    handing: &AtomicBool,
) {
    let mut datagrams = Datagrams::default();
    while !stop.load(Ordering::Acquire) {
        match datagrams.recv(socket) {
            Ok(n) if n > 0 && !stop.load(Ordering::Acquire) => {
                let Some(shared) = ctx.shared.upgrade() else {
                    return;
                };
                let mut packets = Vec::with_capacity(n);
                take_admitted(ctx, &shared, &datagrams, &mut packets);
                // The rest of a video frame is on its way: wait for it rather than be woken
                // per datagram, and hand the frame over once.
                if ctx.coalesce {
                    for _ in 0..COALESCE_ROUNDS {
                        if packets.last().is_none_or(|p| rtp_marker(p))
                            || packets.len() >= COALESCE_PACKETS
                        {
                            break;
                        }
                        std::thread::sleep(COALESCE);
                        match datagrams.recv_queued(socket) {
                            Ok(n) if n > 0 => take_admitted(ctx, &shared, &datagrams, &mut packets),
                            _ => break,
                        }
                    }
                }
                if packets.is_empty() {
                    continue;
                }
                ctx.alive.touch();
                // See `UdpRtpThread::drop`.
                handing.store(true, Ordering::SeqCst);
                if stop.load(Ordering::SeqCst) {
                    handing.store(false, Ordering::SeqCst);
                    break;
                }
                if let Some(rec) = shared.record.as_ref() {
                    on_publisher_rtp(
                        rec,
                        ctx.publisher,
                        ctx.stream,
                        &ctx.recv,
                        packets,
                        &shared.name,
                        true,
                    );
                }
                handing.store(false, Ordering::Release);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if ctx.shared.strong_count() == 0 {
                    return;
                }
            }
            Err(_) if stop.load(Ordering::Acquire) => {}
            Err(e) => {
                if let Some(shared) = ctx.shared.upgrade() {
                    strace!(
                        &*shared.name,
                        "stream {}: receiving RTP failed: {e}",
                        ctx.stream
                    );
                } else {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

async fn udp_rtcp_receiver(ctx: UdpCtx, socket: Arc<tokio::net::UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(shared) = ctx.shared.upgrade() else {
            return;
        };
        if from.ip().to_canonical() != ctx.source {
            continue;
        }
        ctx.alive.touch();
        // Reports go where the publisher's RTCP comes from (it may differ from client_port).
        if let Some((_, to)) = ctx.recv.lock().unwrap().udp.as_mut() {
            *to = from;
        }
        if let Some(rec) = shared.record.as_ref() {
            shared.on_publisher_rtcp(rec, ctx.publisher, ctx.stream, &ctx.recv, &buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n";

    #[test]
    fn announce_bodies_are_checked() {
        let ok = check_announce(Some("application/sdp"), SDP.as_bytes(), 16).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].control, "streamid=0");
        let status =
            |ct: Option<&str>, body: &str| check_announce(ct, body.as_bytes(), 16).unwrap_err().0;
        assert_eq!(
            status(Some("text/plain"), SDP),
            StatusCode::UnsupportedMediaType
        );
        assert_eq!(status(None, SDP), StatusCode::UnsupportedMediaType);
        assert_eq!(
            status(Some("application/sdp"), "garbage\r\n"),
            StatusCode::BadRequest
        );
        assert_eq!(status(Some("application/sdp"), ""), StatusCode::BadRequest);
        let no_media = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n";
        assert_eq!(
            status(Some("application/sdp"), no_media),
            StatusCode::BadRequest
        );
        let many = format!("{no_media}{}", "m=audio 0 RTP/AVP 0\r\n".repeat(500));
        assert_eq!(
            status(Some("application/sdp"), &many),
            StatusCode::BadRequest
        );
        let absurd = SDP.replace("H264/90000", "H264/4294967295");
        assert_eq!(
            status(Some("application/sdp"), &absurd),
            StatusCode::BadRequest
        );
        let no_rtpmap = SDP.replace("a=rtpmap:96 H264/90000\r\n", "");
        assert_eq!(
            status(Some("application/sdp"), &no_rtpmap),
            StatusCode::BadRequest
        );
    }

    #[test]
    fn setup_urls_match_controls() {
        let url = |s: &str| rtsp_types::Url::parse(s).unwrap();
        let u = url("rtsp://h:1/live/streamid=1");
        assert!(control_matches("streamid=1", &u, "streamid=1"));
        assert!(!control_matches("streamid=0", &u, "streamid=1"));
        assert!(control_matches(
            "rtsp://h:1/live/streamid=1",
            &u,
            "streamid=1"
        ));
        let base = url("rtsp://h:1/live");
        assert!(control_matches("*", &base, ""));
        assert!(control_matches("", &base, ""));
    }

    /// A sink that keeps what it gets, taking at most `room` packets.
    struct Collect {
        got: Mutex<Vec<Bytes>>,
        room: usize,
    }

    impl PacketSink for Collect {
        fn push(&self, packets: Vec<Bytes>) -> usize {
            let mut got = self.got.lock().unwrap();
            let n = packets.len();
            let take = n.min(self.room - got.len());
            got.extend(packets.into_iter().take(take));
            n - take
        }
    }

    #[test]
    fn an_attached_sink_gets_the_queued_packets_first_then_the_new_ones_directly() {
        let q = RecordQueue::new(100);
        let p = |b: &'static [u8]| vec![Bytes::from_static(b)];
        q.push_control(RecordEvent::Started { publisher: 1 });
        q.push_packets(1, 0, p(b"a"), false);
        q.push_packets(1, 1, p(b"other stream"), false);
        q.push_packets(1, 0, p(b"b"), false);
        let sink = Arc::new(Collect {
            got: Mutex::default(),
            room: 4,
        });
        q.attach(1, 0, sink.clone());
        q.push_packets(
            1,
            0,
            vec![Bytes::from_static(b"c"), Bytes::from_static(b"d")],
            false,
        );
        assert_eq!(*sink.got.lock().unwrap(), [&b"a"[..], b"b", b"c", b"d"]);
        // The sink's own bound counts as the queue's drops.
        assert_eq!(q.push_packets(1, 0, p(b"e"), false), 1);
        assert_eq!(q.dropped.load(Ordering::Relaxed), 1);
        // Everything else stays queued, in order; another publisher's packets too.
        q.push_packets(2, 0, p(b"next publisher"), false);
        let mut left = Vec::new();
        while let Some(e) = q.pop(Duration::from_millis(1)) {
            left.push(match e {
                RecordEvent::Started { .. } => "started".to_string(),
                RecordEvent::Rtp {
                    publisher, packets, ..
                } => format!("{publisher}:{}", String::from_utf8_lossy(&packets[0])),
                _ => "other".to_string(),
            });
        }
        assert_eq!(left, ["started", "1:other stream", "2:next publisher"]);
        // Detached, packets queue again; closed, nothing reaches the sink.
        q.detach(1);
        q.push_packets(1, 0, p(b"f"), false);
        assert!(q.pop(Duration::from_millis(1)).is_some());
        q.attach(1, 0, sink.clone());
        q.close();
        q.push_packets(1, 0, p(b"g"), false);
        assert_eq!(sink.got.lock().unwrap().len(), 4);
    }

    /// A sink that notes how each packet came, and whether the queue was locked meanwhile.
    #[derive(Default)]
    struct Feeder {
        queue: Mutex<Option<Arc<RecordQueue>>>,
        got: Mutex<Vec<(&'static str, Bytes)>>,
    }

    impl PacketSink for Feeder {
        fn push(&self, packets: Vec<Bytes>) -> usize {
            let mut got = self.got.lock().unwrap();
            got.extend(packets.into_iter().map(|p| ("queued", p)));
            0
        }

        fn push_exclusive(&self, packets: Vec<Bytes>) -> usize {
            let queue = self.queue.lock().unwrap().clone().unwrap();
            // Free: a sink pushing downstream here holds up neither the server's tasks nor
            // the other streams.
            let free = queue.state.try_lock().is_ok();
            let mut got = self.got.lock().unwrap();
            got.extend(
                packets
                    .into_iter()
                    .map(|p| (if free { "exclusive" } else { "under the lock" }, p)),
            );
            0
        }
    }

    #[test]
    fn a_thread_feeding_a_stream_alone_hands_its_packets_over_outside_the_queue_lock() {
        let q = Arc::new(RecordQueue::new(100));
        let p = |b: &'static [u8]| vec![Bytes::from_static(b)];
        let sink = Arc::new(Feeder::default());
        *sink.queue.lock().unwrap() = Some(q.clone());
        q.push_packets(1, 0, p(b"before"), true);
        q.attach(1, 0, sink.clone());
        q.push_packets(1, 0, p(b"udp"), true);
        q.push_packets(1, 0, p(b"tcp"), false);
        let got: Vec<_> = sink
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|(how, p)| (*how, String::from_utf8_lossy(p).into_owned()))
            .collect();
        assert_eq!(
            got,
            [
                ("queued", "before".to_string()),
                ("exclusive", "udp".to_string()),
                ("queued", "tcp".to_string())
            ]
        );
    }

    #[test]
    fn the_queue_drops_packets_beyond_its_limit_but_keeps_control_events() {
        let q = RecordQueue::new(2);
        let p = || vec![Bytes::from_static(b"x")];
        assert_eq!(q.push_packets(1, 0, p(), false), 0);
        assert_eq!(q.push_packets(1, 0, p(), false), 0);
        assert_eq!(q.push_packets(1, 0, p(), false), 1);
        q.push_control(RecordEvent::Started { publisher: 1 });
        assert_eq!(q.dropped.load(Ordering::Relaxed), 1);
        let mut n = 0;
        while q.pop(Duration::from_millis(1)).is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
        assert_eq!(q.push_packets(1, 0, p(), false), 0);
        // Sender Reports are dropped once the queue holds `limit` events; control events not.
        let sr = || RecordEvent::SenderReport {
            publisher: 1,
            stream: 0,
            ntp: 0,
            rtptime: 0,
        };
        q.push_droppable(sr());
        q.push_droppable(sr());
        q.push_control(RecordEvent::Started { publisher: 1 });
        assert_eq!(q.backlog(), 2);
        q.close();
        assert!(q.pop(Duration::from_millis(1)).is_none());
    }
}
