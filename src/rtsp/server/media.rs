//! The data plane: one [`Stream`] per media of the presentation, fanned out to destinations.
//!
//! Specifications: RFC 3550 §5.1 (sequence numbers, timestamps), §6.4.1 (the NTP/RTP mapping of
//! Sender Reports); RFC 2326 §12.33 (RTP-Info seq and rtptime), §12.39 (unicast and multicast
//! destinations, ttl), §10.12 (interleaved); RFC 7826 §18.45.
//!
//! A stream receives RTP packets from the producer (a GStreamer streaming thread in the element)
//! and forwards them, without blocking, to every playing destination: UDP unicast through the
//! stream's server port pair, one shared multicast group, or a TCP connection's bounded queue.
//! New destinations of video streams start at the next random-access point. The stream also
//! keeps the RTP/NTP mapping for Sender Reports.
//!
//! A client that sends PLAY gets [`Stream::add_pending`] destinations: the producer finds where
//! each one starts (the next keyframe for video, the next packet otherwise), reports that packet's
//! sequence number and timestamp through a [`StartGate`] and buffers from there, so the PLAY
//! answer's RTP-Info names the first packet the client receives (RFC 2326 12.33, RFC 7826 18.45).
//! [`Stream::activate`], called once the answer is queued, sends the buffer and goes live: no
//! media overtakes the answer on an interleaved connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::burst::{Burst, Offer};
use super::conn::{ConnOut, Frame};
use crate::rtp::{self, keyframe, ntp, rtcp};
use crate::rtsp::sdp::MediaDescription;

/// Monotonic "last heard from" stamp shared by a session and its destinations (RTCP from the
/// client keeps the session alive just like RTSP requests do).
#[derive(Debug)]
pub struct AliveStamp {
    epoch: Instant,
    millis: AtomicU64,
}

impl AliveStamp {
    pub fn new(epoch: Instant) -> Self {
        let s = Self {
            epoch,
            millis: AtomicU64::new(0),
        };
        s.touch();
        s
    }

    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.millis.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn idle(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.millis.load(Ordering::Relaxed)))
    }
}

/// Where one client's packets of one stream go.
pub enum Target {
    Udp { rtp: SocketAddr, rtcp: SocketAddr },
    Tcp { conn: Arc<ConnOut>, channel: u8 },
    Multicast { rtp: SocketAddr, rtcp: SocketAddr },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Udp { rtp, rtcp } => write!(f, "udp {rtp} (RTCP port {})", rtcp.port()),
            Target::Tcp { conn, channel } => write!(
                f,
                "tcp {} interleaved channels {channel}-{}",
                conn.peer,
                channel.wrapping_add(1)
            ),
            Target::Multicast { rtp, rtcp } => {
                write!(f, "multicast group {rtp} (RTCP port {})", rtcp.port())
            }
        }
    }
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Udp { .. } => "udp",
            Target::Tcp { .. } => "tcp",
            Target::Multicast { .. } => "udp-mcast",
        }
    }
}

/// Receiver Report figures last received for a destination.
#[derive(Debug, Clone, Copy, Default)]
pub struct RtcpFigures {
    pub reports: u64,
    pub fraction_lost: f64,
    pub cumulative_lost: i64,
    pub jitter: Duration,
    pub rtt: Option<Duration>,
}

/// One client's (or one multicast group's) subscription to one stream.
pub struct Dest {
    pub session: String,
    pub target: Target,
    pub alive: Arc<AliveStamp>,
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub packets_dropped: AtomicU64,
    /// Times packets were sent to it: writes for a TCP client, bursts for UDP (see
    /// [`super::burst`]: with a burst latency several frames go in one).
    pub bursts_sent: AtomicU64,
    pub rtcp: Mutex<RtcpFigures>,
}

impl Dest {
    pub fn new(session: String, target: Target, alive: Arc<AliveStamp>) -> Self {
        Self {
            session,
            target,
            alive,
            packets_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            packets_dropped: AtomicU64::new(0),
            bursts_sent: AtomicU64::new(0),
            rtcp: Mutex::new(RtcpFigures::default()),
        }
    }

    /// Feeds an RTCP compound packet received from this destination. Returns whether it held a
    /// report block ([`Dest::rtcp`] then has its figures).
    pub fn on_rtcp(&self, data: &[u8], clock_rate: u32) -> bool {
        self.alive.touch();
        let Ok(packets) = rtcp::parse_compound(data) else {
            return false;
        };
        let mut reported = false;
        let arrival = ntp::ntp_now();
        for packet in packets {
            let blocks = match packet {
                rtcp::RtcpPacket::ReceiverReport(rr) => rr.reports,
                rtcp::RtcpPacket::SenderReport(sr) => sr.reports,
                _ => continue,
            };
            // Our streams carry one SSRC, so any block is about it.
            if let Some(block) = blocks.first() {
                let mut f = self.rtcp.lock().unwrap();
                f.reports += 1;
                f.fraction_lost = f64::from(block.fraction_lost) / 256.0;
                f.cumulative_lost = i64::from(block.cumulative_lost);
                f.jitter = if clock_rate > 0 {
                    Duration::from_secs_f64(f64::from(block.jitter) / f64::from(clock_rate))
                } else {
                    Duration::ZERO
                };
                if let Some(rtt) = rtcp::round_trip_time(block, arrival) {
                    f.rtt = Some(rtt);
                }
                reported = true;
            }
        }
        reported
    }
}

/// Sender-side RTP state of a stream, taken from the packets that pass through it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RtpClock {
    pub ssrc: u32,
    pub last_seq: u16,
    pub last_rtptime: u32,
    /// When the last packet was due: the instant its RTP time stands for on the sender's
    /// timeline (its place on the pipeline clock, not when it reached the server, which a late
    /// encoder delays). Sender Reports extrapolate from it.
    pub last_due: Option<Instant>,
    pub packets: u64,
    pub octets: u64,
}

impl RtpClock {
    /// RTP timestamp that corresponds to `now`, extrapolated from the last packet's due time.
    pub fn rtptime_at(&self, now: Instant, clock_rate: u32) -> Option<u32> {
        let last = self.last_due?;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let ticks = (elapsed * f64::from(clock_rate)) as u64;
        Some(self.last_rtptime.wrapping_add(ticks as u32))
    }
}

/// Bytes a pending destination buffers at most between its start point and its activation
/// (normally milliseconds apart; a few seconds when another stream of the session waits for its
/// keyframe). Packets beyond are dropped and counted.
const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;

/// The first packet a destination receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPoint {
    pub seq: u16,
    pub rtptime: u32,
}

/// Where the producer tells a waiting PLAY handler the start point of a destination.
#[derive(Debug, Default)]
pub struct StartGate {
    start: Mutex<Option<StartPoint>>,
    notify: Notify,
}

impl StartGate {
    pub fn get(&self) -> Option<StartPoint> {
        *self.start.lock().unwrap()
    }

    fn set(&self, start: StartPoint) {
        *self.start.lock().unwrap() = Some(start);
        // Stores a permit when nobody waits yet: the waiter cannot miss it.
        self.notify.notify_one();
    }

    /// Waits until the start point is known or `deadline` passes (one waiter at a time).
    pub async fn wait_until(&self, deadline: tokio::time::Instant) -> Option<StartPoint> {
        loop {
            if let Some(start) = self.get() {
                return Some(start);
            }
            if tokio::time::timeout_at(deadline, self.notify.notified())
                .await
                .is_err()
            {
                return self.get();
            }
        }
    }
}

/// A destination whose PLAY is not answered yet.
struct Pending {
    /// The start must be a keyframe (video) rather than any packet.
    keyframe: bool,
    started: bool,
    gate: Arc<StartGate>,
    buffer: Vec<Bytes>,
    buffered_bytes: usize,
    dropped: u64,
}

impl Pending {
    /// Finds the start point in a pushed frame (once), then buffers from it.
    fn take(&mut self, packets: &[Bytes], first_key: Option<usize>) {
        let from = if self.started {
            0
        } else {
            let from = match (self.keyframe, first_key) {
                (false, _) => 0,
                (true, Some(i)) => i,
                (true, None) => return,
            };
            let Some((i, h)) = packets
                .iter()
                .enumerate()
                .skip(from)
                .find_map(|(i, p)| rtp::parse_rtp_header(p).ok().map(|h| (i, h)))
            else {
                return;
            };
            self.started = true;
            self.gate.set(StartPoint {
                seq: h.sequence,
                rtptime: h.timestamp,
            });
            i
        };
        for p in &packets[from..] {
            if self.buffered_bytes + p.len() > MAX_PENDING_BYTES {
                self.dropped += 1;
                continue;
            }
            self.buffered_bytes += p.len();
            self.buffer.push(p.clone());
        }
    }
}

enum EntryState {
    /// Sending. `waiting_keyframe`: skipping frames until the next keyframe (a video
    /// destination after a dropped frame).
    Live { waiting_keyframe: bool },
    /// Looking for its start point, then buffering until [`Stream::activate`].
    Pending(Box<Pending>),
}

struct Entry {
    dest: Arc<Dest>,
    state: EntryState,
}

impl Entry {
    fn wants_keyframe(&self) -> bool {
        match &self.state {
            EntryState::Live { waiting_keyframe } => *waiting_keyframe,
            EntryState::Pending(p) => p.keyframe && !p.started,
        }
    }
}

/// What [`Stream::activate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activation {
    /// Packets buffered since the start point, now sent.
    pub packets: usize,
    /// Packets that did not fit the buffer.
    pub dropped: u64,
    /// Whether the buffer was accepted (a full TCP queue refuses it).
    pub sent: bool,
}

#[derive(Default)]
struct Plane {
    clock: RtpClock,
    entries: Vec<Entry>,
}

/// The multicast group of a stream, shared by all multicast clients.
pub struct MulticastGroup {
    pub address: Ipv4Addr,
    pub port: u16,
    pub ttl: u8,
    pub dest: Arc<Dest>,
    pub players: usize,
}

/// What the producer must do after a push.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    /// A destination is waiting for a keyframe: ask the encoder for one.
    pub want_keyframe: bool,
    /// With `want_keyframe`: destinations waiting to start, and ones waiting to resume after a
    /// dropped frame.
    pub joining: usize,
    pub resyncing: usize,
    /// This push carried the stream's first packet: it is ready to be described.
    pub first_packet: bool,
}

/// One media stream of the presentation.
pub struct Stream {
    pub id: usize,
    description: Mutex<Option<MediaDescription>>,
    plane: Mutex<Plane>,
    /// RTP is sent from here (unicast). Non-blocking; a full send buffer drops the packet.
    pub rtp_socket: crate::net::udp_out::UdpSender,
    /// RTCP is sent and received here.
    pub rtcp_socket: Arc<UdpSocket>,
    pub server_ports: (u16, u16),
    pub multicast: Mutex<Option<MulticastGroup>>,
    /// Sending socket for the multicast group (TTL and interface set), made on first use.
    pub multicast_socket: Mutex<Option<Arc<UdpSocket>>>,
    last_keyframe_request: Mutex<Option<Instant>>,
    /// A video frame's packets held until it is complete.
    burst: Mutex<Burst>,
    /// Told when the first packet of a burst is held, so that a timer releases it in time.
    burst_armed: Notify,
    /// Whether complete frames are held too (a burst latency): then streams without frame
    /// markers (audio) are grouped as well.
    bursts_held: bool,
}

impl Stream {
    /// Creates a stream with an even/odd UDP port pair bound on `address`; complete frames wait
    /// up to `burst_latency` to be sent together with the next ones (see [`super::burst`]).
    pub fn new(id: usize, address: IpAddr, burst_latency: Duration) -> std::io::Result<Self> {
        let (rtp_socket, rtcp_socket) = crate::rtsp::ports::bind_port_pair(address, None)?;
        let server_ports = (
            rtp_socket.local_addr()?.port(),
            rtcp_socket.local_addr()?.port(),
        );
        Ok(Self {
            id,
            description: Mutex::new(None),
            plane: Mutex::new(Plane::default()),
            rtp_socket: crate::net::udp_out::UdpSender::new(rtp_socket),
            rtcp_socket: Arc::new(rtcp_socket),
            server_ports,
            multicast: Mutex::new(None),
            multicast_socket: Mutex::new(None),
            last_keyframe_request: Mutex::new(None),
            burst: Mutex::new(Burst::with_latency(burst_latency)),
            bursts_held: !burst_latency.is_zero(),
            burst_armed: Notify::new(),
        })
    }

    pub fn description(&self) -> Option<MediaDescription> {
        self.description.lock().unwrap().clone()
    }

    /// Sets the stream's description; returns true if it replaced a different one.
    pub fn set_description(&self, desc: MediaDescription) -> bool {
        let mut d = self.description.lock().unwrap();
        let changed = d.as_ref().is_some_and(|old| *old != desc);
        *d = Some(desc);
        changed
    }

    pub fn clock_rate(&self) -> u32 {
        self.description
            .lock()
            .unwrap()
            .as_ref()
            .map_or(90000, |d| d.clock_rate)
    }

    fn keyframe_codec(&self) -> Option<String> {
        let d = self.description.lock().unwrap();
        let d = d.as_ref()?;
        (d.media == "video").then(|| d.encoding_name.clone())
    }

    pub fn clock(&self) -> RtpClock {
        self.plane.lock().unwrap().clock
    }

    /// Starts sending to `dest`. Video destinations begin at the next keyframe.
    pub fn add_dest(&self, dest: Arc<Dest>) -> PushOutcome {
        let waiting = self.keyframe_codec().is_some();
        self.plane.lock().unwrap().entries.push(Entry {
            dest,
            state: EntryState::Live {
                waiting_keyframe: waiting,
            },
        });
        PushOutcome {
            want_keyframe: waiting && self.keyframe_request_due(),
            ..PushOutcome::default()
        }
    }

    /// Adds `dest` as pending: the producer looks for its start point (the next keyframe for
    /// video, the next packet otherwise), reports it through the returned gate and buffers from
    /// there until [`Stream::activate`]. Nothing is sent to `dest` before that.
    pub fn add_pending(&self, dest: Arc<Dest>) -> (Arc<StartGate>, PushOutcome) {
        let keyframe = self.keyframe_codec().is_some();
        let gate = Arc::new(StartGate::default());
        self.plane.lock().unwrap().entries.push(Entry {
            dest,
            state: EntryState::Pending(Box::new(Pending {
                keyframe,
                started: false,
                gate: gate.clone(),
                buffer: Vec::new(),
                buffered_bytes: 0,
                dropped: 0,
            })),
        });
        let want_keyframe = keyframe && self.keyframe_request_due();
        let outcome = PushOutcome {
            want_keyframe,
            joining: usize::from(want_keyframe),
            ..PushOutcome::default()
        };
        (gate, outcome)
    }

    /// A pending `dest` that found no keyframe in time starts at the next packet instead.
    pub fn start_anywhere(&self, dest: &Arc<Dest>) {
        let mut plane = self.plane.lock().unwrap();
        if let Some(Entry {
            state: EntryState::Pending(p),
            ..
        }) = plane
            .entries
            .iter_mut()
            .find(|e| Arc::ptr_eq(&e.dest, dest))
        {
            p.keyframe = false;
        }
    }

    /// Sends what a pending `dest` buffered since its start point and makes it live. None when
    /// `dest` is not pending (removed meanwhile, or already live).
    pub fn activate(&self, dest: &Arc<Dest>) -> Option<Activation> {
        let video = self.keyframe_codec().is_some();
        let mut plane = self.plane.lock().unwrap();
        let entry = plane
            .entries
            .iter_mut()
            .find(|e| Arc::ptr_eq(&e.dest, dest))?;
        let EntryState::Pending(p) = &mut entry.state else {
            return None;
        };
        let buffer = std::mem::take(&mut p.buffer);
        let dropped = p.dropped;
        // Sent under the plane lock, as pushes are: nothing newer overtakes the buffer.
        let sent = buffer.is_empty() || {
            let out = Outgoing::new(&buffer);
            let mut udp = crate::net::udp_out::Batch::default();
            let sent = self.send(&entry.dest, &out, &mut udp);
            udp.flush(&self.rtp_socket);
            sent
        };
        entry.state = EntryState::Live {
            waiting_keyframe: !sent && video,
        };
        if dropped > 0 {
            entry
                .dest
                .packets_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        Some(Activation {
            packets: buffer.len(),
            dropped,
            sent,
        })
    }

    pub fn remove_dest(&self, dest: &Arc<Dest>) {
        self.plane
            .lock()
            .unwrap()
            .entries
            .retain(|e| !Arc::ptr_eq(&e.dest, dest));
    }

    /// Destinations being sent to (not the pending ones).
    pub fn dests(&self) -> Vec<Arc<Dest>> {
        let plane = self.plane.lock().unwrap();
        plane
            .entries
            .iter()
            .filter(|e| matches!(e.state, EntryState::Live { .. }))
            .map(|e| e.dest.clone())
            .collect()
    }

    /// At most one upstream keyframe request per second per stream.
    fn keyframe_request_due(&self) -> bool {
        let mut last = self.last_keyframe_request.lock().unwrap();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Forwards packets to every playing destination. Never blocks. A video stream's packets
    /// are sent a frame at a time (see [`super::burst`]): packets that do not end a frame are
    /// held until the one that does, or until [`Stream::flush_due`] releases them; with a
    /// burst latency, complete frames (and audio packets) wait for the next ones too. `due`:
    /// the instant the packets' RTP time stands for on the sender's timeline (earlier than now
    /// when they come late), from which Sender Reports map RTP time to wallclock.
    pub fn push(&self, packets: &[Bytes], due: Instant) -> PushOutcome {
        let now = Instant::now();
        let codec = self.keyframe_codec();
        let first_packet = self.record(packets, due);
        let mut outcome = if codec.is_some() || self.bursts_held {
            let mut burst = self.burst.lock().unwrap();
            match burst.offer(packets, now, codec.is_some()) {
                Offer::Through => self.fan_out(packets, codec.as_deref()),
                Offer::Release(frame) => {
                    let outcome = self.fan_out(&frame, codec.as_deref());
                    burst.recycle(frame);
                    outcome
                }
                Offer::Held { first } => {
                    if first {
                        self.burst_armed.notify_one();
                    }
                    PushOutcome::default()
                }
            }
        } else {
            self.fan_out(packets, codec.as_deref())
        };
        outcome.first_packet = first_packet;
        outcome
    }

    /// Sends the held packets whose time is up; returns what the producer must do and when the
    /// next held packets are due (the server's timer task calls this).
    pub fn flush_due(&self, now: Instant) -> (PushOutcome, Option<Instant>) {
        let mut burst = self.burst.lock().unwrap();
        let outcome = match burst.take_due(now) {
            Some(frame) => {
                let outcome = self.fan_out(&frame, self.keyframe_codec().as_deref());
                burst.recycle(frame);
                outcome
            }
            None => PushOutcome::default(),
        };
        (outcome, burst.deadline())
    }

    /// Waits until packets are held (see [`Stream::flush_due`]).
    pub async fn held(&self) {
        self.burst_armed.notified().await;
    }

    /// Updates the RTP/NTP mapping with packets `due` then; true for the stream's first.
    fn record(&self, packets: &[Bytes], due: Instant) -> bool {
        let mut plane = self.plane.lock().unwrap();
        let first_packet = plane.clock.packets == 0 && !packets.is_empty();
        for p in packets {
            if let Ok(h) = rtp::parse_rtp_header(p) {
                let c = &mut plane.clock;
                c.ssrc = h.ssrc;
                c.last_seq = h.sequence;
                c.last_rtptime = h.timestamp;
                c.last_due = Some(due);
                c.packets += 1;
                c.octets += h.payload_len as u64;
            }
        }
        first_packet
    }

    /// Sends packets to every destination; `codec` is the video encoding (keyframe detection).
    fn fan_out(&self, packets: &[Bytes], codec: Option<&str>) -> PushOutcome {
        let mut plane = self.plane.lock().unwrap();
        if plane.entries.is_empty() {
            return PushOutcome::default();
        }
        let first_key = match codec {
            Some(enc) if plane.entries.iter().any(Entry::wants_keyframe) => {
                packets.iter().position(|p| is_keyframe_start(enc, p))
            }
            _ => None,
        };
        // Unicast UDP datagrams for every client go out together after the loop.
        let mut udp = crate::net::udp_out::Batch::default();
        // What clients get: the whole push, or (waiting for one) from its keyframe on.
        let whole = Outgoing::new(packets);
        let from_key = first_key.map(|i| Outgoing::new(&packets[i..]));
        for entry in plane.entries.iter_mut() {
            let waiting_keyframe = match &mut entry.state {
                EntryState::Pending(p) => {
                    p.take(packets, first_key);
                    continue;
                }
                EntryState::Live { waiting_keyframe } => waiting_keyframe,
            };
            let out = if *waiting_keyframe {
                match &from_key {
                    Some(out) => out,
                    None => continue,
                }
            } else {
                &whole
            };
            let sent = self.send(&entry.dest, out, &mut udp);
            if sent {
                *waiting_keyframe = false;
            } else if codec.is_some() {
                // A TCP queue overflowed: the frame was dropped whole; resume at a keyframe
                // so the client never decodes a broken reference chain.
                *waiting_keyframe = true;
            }
        }
        udp.flush(&self.rtp_socket);
        // Keep asking (at most once a second) while anyone waits: encoders may ignore a request.
        let waiting = plane.entries.iter().any(Entry::wants_keyframe);
        let want_keyframe = waiting && self.keyframe_request_due();
        let (mut joining, mut resyncing) = (0, 0);
        if want_keyframe {
            for e in plane.entries.iter().filter(|e| e.wants_keyframe()) {
                match e.state {
                    EntryState::Pending(_) => joining += 1,
                    EntryState::Live { .. } => resyncing += 1,
                }
            }
        }
        drop(plane);
        PushOutcome {
            want_keyframe,
            first_packet: false,
            joining,
            resyncing,
        }
    }

    fn send<'a>(
        &self,
        dest: &'a Dest,
        out: &'a Outgoing<'a>,
        udp: &mut crate::net::udp_out::Batch<'a>,
    ) -> bool {
        let packets = out.packets;
        let mut ok = true;
        match &dest.target {
            Target::Tcp { conn, channel } => {
                ok = out.frame().is_some_and(|f| conn.send_media(*channel, f));
                if !ok {
                    dest.packets_dropped
                        .fetch_add(packets.len() as u64, Ordering::Relaxed);
                    return false;
                }
            }
            Target::Udp { rtp, .. } => udp.add(*rtp, packets, &dest.packets_dropped),
            Target::Multicast { rtp, .. } => {
                let socket = self.multicast_socket.lock().unwrap().clone();
                match socket {
                    Some(s) => self.send_udp(&s, dest, *rtp, packets),
                    None => ok = false,
                }
            }
        }
        if ok {
            dest.packets_sent
                .fetch_add(packets.len() as u64, Ordering::Relaxed);
            dest.bytes_sent
                .fetch_add(out.bytes as u64, Ordering::Relaxed);
            dest.bursts_sent.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// UDP is lossy by nature: a packet the kernel refuses is counted and the rest still go.
    /// The burst goes in as few system calls as the platform allows (see [`crate::net::udp_out`]).
    fn send_udp(&self, socket: &UdpSocket, dest: &Dest, to: SocketAddr, packets: &[Bytes]) {
        let refused = crate::net::udp_out::send_burst(socket, to, packets);
        if refused > 0 {
            dest.packets_dropped.fetch_add(refused, Ordering::Relaxed);
        }
    }

    /// Builds a Sender Report for `dest` (counts are what this destination was sent): the
    /// report and its compound packet (with SDES).
    pub fn sender_report(&self, dest: &Dest, cname: &str) -> Option<(rtcp::SenderReport, Vec<u8>)> {
        let clock = self.clock();
        let now = Instant::now();
        let rtp_timestamp = clock.rtptime_at(now, self.clock_rate())?;
        let sr = rtcp::SenderReport {
            ssrc: clock.ssrc,
            ntp_timestamp: ntp::ntp_now(),
            rtp_timestamp,
            packet_count: dest.packets_sent.load(Ordering::Relaxed) as u32,
            octet_count: dest.bytes_sent.load(Ordering::Relaxed) as u32,
            reports: Vec::new(),
        };
        let mut out = Vec::with_capacity(64);
        rtcp::write_sender_report(&sr, cname, &mut out);
        Some((sr, out))
    }

    /// Sends an RTCP packet to `dest` over its transport.
    pub fn send_rtcp(&self, dest: &Dest, packet: Bytes) {
        match &dest.target {
            Target::Udp { rtcp, .. } => {
                let _ = self.rtcp_socket.send_to(&packet, *rtcp);
            }
            Target::Multicast { rtcp, .. } => {
                if let Some(s) = self.multicast_socket.lock().unwrap().as_ref() {
                    let _ = s.send_to(&packet, *rtcp);
                }
            }
            Target::Tcp { conn, channel } => {
                if let Some(frame) = Frame::new(&[packet]) {
                    conn.send_media(channel.wrapping_add(1), &frame);
                }
            }
        }
    }

    /// The destination whose RTCP (or RTP) port matches `from`.
    pub fn dest_for_rtcp_source(&self, from: SocketAddr) -> Option<Arc<Dest>> {
        let plane = self.plane.lock().unwrap();
        plane
            .entries
            .iter()
            .find(|e| match &e.dest.target {
                Target::Udp { rtp, rtcp } => *rtcp == from || *rtp == from,
                _ => false,
            })
            .map(|e| e.dest.clone())
    }
}

/// Packets for destinations, with what is the same for all of them computed once.
struct Outgoing<'a> {
    packets: &'a [Bytes],
    /// Their payload bytes (RTP headers included), for the destinations' counters.
    bytes: usize,
    /// The packets as one queue item for TCP connections, made for the first one.
    frame: std::cell::OnceCell<Option<Frame>>,
}

impl<'a> Outgoing<'a> {
    fn new(packets: &'a [Bytes]) -> Self {
        Outgoing {
            packets,
            bytes: packets.iter().map(Bytes::len).sum(),
            frame: std::cell::OnceCell::new(),
        }
    }

    /// None when a packet is too large for interleaving.
    fn frame(&self) -> Option<&Frame> {
        self.frame.get_or_init(|| Frame::new(self.packets)).as_ref()
    }
}

fn is_keyframe_start(encoding: &str, packet: &[u8]) -> bool {
    match rtp::parse_rtp_header(packet) {
        Ok(h) => keyframe::starts_keyframe(encoding, rtp::rtp_payload(packet, &h)),
        Err(_) => false,
    }
}

/// Creates the multicast sending socket for a group.
pub fn multicast_socket(ttl: u8, iface: Option<Ipv4Addr>) -> std::io::Result<UdpSocket> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    sock.set_multicast_ttl_v4(u32::from(ttl))?;
    sock.set_multicast_loop_v4(true)?;
    if let Some(iface) = iface {
        sock.set_multicast_if_v4(&iface)?;
    }
    sock.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).into())?;
    sock.set_nonblocking(true)?;
    let _ = sock.set_send_buffer_size(1 << 20);
    Ok(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(media: &str, encoding: &str, clock_rate: u32) -> MediaDescription {
        MediaDescription {
            media: media.into(),
            payload_type: 96,
            encoding_name: encoding.into(),
            clock_rate,
            encoding_params: None,
            fmtp: Vec::new(),
            control: String::new(),
            multicast: None,
            port: 0,
            bandwidth_kbps: None,
            attributes: Vec::new(),
        }
    }

    /// An RTP packet that is a whole frame: version 2, marker, payload type 96, one payload
    /// byte (an H.264 NAL header).
    fn packet(seq: u16, ts: u32, nal: u8) -> Bytes {
        let mut p = vec![0x80, 0x80 | 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(&[nal, 0xaa]);
        Bytes::from(p)
    }

    const IDR: u8 = 0x65;
    const NON_IDR: u8 = 0x41;

    fn tcp_dest() -> (Arc<ConnOut>, Arc<Dest>) {
        let conn = Arc::new(ConnOut::new(
            1,
            "127.0.0.1:5000".parse().unwrap(),
            1 << 20,
            "test".into(),
        ));
        let dest = Arc::new(Dest::new(
            "s".into(),
            Target::Tcp {
                conn: conn.clone(),
                channel: 0,
            },
            Arc::new(AliveStamp::new(Instant::now())),
        ));
        (conn, dest)
    }

    fn stream(media: &str, encoding: &str) -> Stream {
        let s = Stream::new(0, IpAddr::V4(Ipv4Addr::LOCALHOST), Duration::ZERO).unwrap();
        s.set_description(description(media, encoding, 90000));
        s
    }

    #[test]
    fn a_pending_video_client_starts_at_the_keyframe_and_gets_nothing_before_activation() {
        let s = stream("video", "H264");
        s.push(&[packet(10, 1000, IDR)], Instant::now());
        let (conn, dest) = tcp_dest();
        let (gate, outcome) = s.add_pending(dest.clone());
        assert!(outcome.want_keyframe);
        assert_eq!(outcome.joining, 1);
        // Mid-GOP frames: no start yet.
        s.push(
            &[packet(11, 4000, NON_IDR), packet(12, 4000, NON_IDR)],
            Instant::now(),
        );
        assert_eq!(gate.get(), None);
        // The keyframe starts it; what follows is buffered, nothing is sent yet.
        let out = s.push(
            &[packet(13, 7000, 0x67), packet(14, 7000, IDR)],
            Instant::now(),
        );
        assert!(!out.want_keyframe);
        s.push(&[packet(15, 10000, NON_IDR)], Instant::now());
        assert_eq!(
            gate.get(),
            Some(StartPoint {
                seq: 13,
                rtptime: 7000
            })
        );
        assert_eq!(conn.queued_media_bytes(), 0);
        assert!(
            s.dests().is_empty(),
            "a pending client gets no Sender Report"
        );
        // Activation sends the buffer, then it is live.
        let a = s.activate(&dest).unwrap();
        assert_eq!(
            a,
            Activation {
                packets: 3,
                dropped: 0,
                sent: true
            }
        );
        assert_eq!(conn.queued_media_bytes(), 3 * (14 + 4));
        s.push(&[packet(16, 13000, NON_IDR)], Instant::now());
        assert_eq!(conn.queued_media_bytes(), 4 * (14 + 4));
        assert_eq!(s.dests().len(), 1);
        assert_eq!(s.activate(&dest), None, "already live");
    }

    /// `packet` without the marker: a frame's packet before its last.
    fn fragment(seq: u16, ts: u32, nal: u8) -> Bytes {
        let mut p = packet(seq, ts, nal).to_vec();
        p[1] &= 0x7f;
        Bytes::from(p)
    }

    #[test]
    fn a_video_frame_pushed_packet_by_packet_goes_to_clients_whole() {
        let s = stream("video", "H264");
        let (conn, dest) = tcp_dest();
        s.add_dest(dest);
        s.push(&[packet(1, 0, IDR)], Instant::now());
        assert_eq!(conn.queued_media_bytes(), 14 + 4);
        s.push(&[fragment(2, 3000, NON_IDR)], Instant::now());
        s.push(&[fragment(3, 3000, NON_IDR)], Instant::now());
        assert_eq!(
            conn.queued_media_bytes(),
            14 + 4,
            "held until the frame ends"
        );
        assert_eq!(
            s.clock().last_seq,
            3,
            "the clock follows arrivals, not releases"
        );
        s.push(&[packet(4, 3000, NON_IDR)], Instant::now());
        assert_eq!(conn.queued_media_bytes(), 4 * (14 + 4));
        // A frame whose end never comes is released by the timer's call.
        s.push(&[fragment(5, 6000, NON_IDR)], Instant::now());
        let (_, due) = s.flush_due(Instant::now());
        let due = due.expect("a deadline for the held packet");
        assert_eq!(conn.queued_media_bytes(), 4 * (14 + 4));
        assert_eq!(s.flush_due(due), (PushOutcome::default(), None));
        assert_eq!(conn.queued_media_bytes(), 5 * (14 + 4));
    }

    #[test]
    fn audio_packets_are_never_held() {
        let s = stream("audio", "OPUS");
        let (conn, dest) = tcp_dest();
        s.add_dest(dest);
        s.push(&[fragment(1, 0, 0x78)], Instant::now());
        assert_eq!(conn.queued_media_bytes(), 14 + 4);
    }

    #[test]
    fn a_pending_audio_client_starts_at_the_next_packet() {
        let s = stream("audio", "OPUS");
        s.push(&[packet(100, 960, 0x78)], Instant::now());
        let (_conn, dest) = tcp_dest();
        let (gate, outcome) = s.add_pending(dest);
        assert!(!outcome.want_keyframe);
        s.push(&[packet(101, 1920, 0x78)], Instant::now());
        assert_eq!(
            gate.get(),
            Some(StartPoint {
                seq: 101,
                rtptime: 1920
            })
        );
    }

    #[test]
    fn a_video_client_without_a_keyframe_in_time_starts_anywhere() {
        let s = stream("video", "H264");
        let (conn, dest) = tcp_dest();
        let (gate, _) = s.add_pending(dest.clone());
        s.push(&[packet(1, 0, NON_IDR)], Instant::now());
        assert_eq!(gate.get(), None);
        s.start_anywhere(&dest);
        s.push(&[packet(2, 3000, NON_IDR)], Instant::now());
        assert_eq!(
            gate.get(),
            Some(StartPoint {
                seq: 2,
                rtptime: 3000
            })
        );
        // Removed before activation (PAUSE, TEARDOWN): nothing is ever sent.
        s.remove_dest(&dest);
        assert_eq!(s.activate(&dest), None);
        assert_eq!(conn.queued_media_bytes(), 0);
    }

    #[tokio::test]
    async fn the_gate_wakes_its_waiter_or_times_out() {
        let gate = Arc::new(StartGate::default());
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        assert_eq!(gate.wait_until(soon).await, None);
        let setter = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            setter.set(StartPoint { seq: 7, rtptime: 8 });
        });
        let later = tokio::time::Instant::now() + Duration::from_secs(5);
        assert_eq!(
            gate.wait_until(later).await,
            Some(StartPoint { seq: 7, rtptime: 8 })
        );
    }
}
