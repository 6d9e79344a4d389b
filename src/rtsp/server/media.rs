//! The data plane: one [`Stream`] per media of the presentation, fanned out to destinations.
//!
//! A stream receives RTP packets from the producer (a GStreamer streaming thread in the element)
//! and forwards them, without blocking, to every playing destination: UDP unicast through the
//! stream's server port pair, one shared multicast group, or a TCP connection's bounded queue.
//! New destinations of video streams start at the next random-access point. The stream also
//! keeps the RTP/NTP mapping for Sender Reports and RTP-Info.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::conn::ConnOut;
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
            rtcp: Mutex::new(RtcpFigures::default()),
        }
    }

    /// Feeds an RTCP compound packet received from this destination.
    pub fn on_rtcp(&self, data: &[u8], clock_rate: u32) {
        self.alive.touch();
        let Ok(packets) = rtcp::parse_compound(data) else {
            return;
        };
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
            }
        }
    }
}

/// Sender-side RTP state of a stream, taken from the packets that pass through it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RtpClock {
    pub ssrc: u32,
    pub last_seq: u16,
    pub last_rtptime: u32,
    pub last_arrival: Option<Instant>,
    pub packets: u64,
    pub octets: u64,
}

impl RtpClock {
    /// RTP timestamp that corresponds to `now`, extrapolated from the last packet.
    pub fn rtptime_at(&self, now: Instant, clock_rate: u32) -> Option<u32> {
        let last = self.last_arrival?;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let ticks = (elapsed * f64::from(clock_rate)) as u64;
        Some(self.last_rtptime.wrapping_add(ticks as u32))
    }
}

struct Entry {
    dest: Arc<Dest>,
    waiting_keyframe: bool,
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
    /// This push carried the stream's first packet: it is ready to be described.
    pub first_packet: bool,
}

/// One media stream of the presentation.
pub struct Stream {
    pub id: usize,
    description: Mutex<Option<MediaDescription>>,
    plane: Mutex<Plane>,
    /// RTP is sent from here (unicast). Non-blocking; a full send buffer drops the packet.
    pub rtp_socket: UdpSocket,
    /// RTCP is sent and received here.
    pub rtcp_socket: Arc<UdpSocket>,
    pub server_ports: (u16, u16),
    pub multicast: Mutex<Option<MulticastGroup>>,
    /// Sending socket for the multicast group (TTL and interface set), made on first use.
    pub multicast_socket: Mutex<Option<Arc<UdpSocket>>>,
    last_keyframe_request: Mutex<Option<Instant>>,
}

impl Stream {
    /// Creates a stream with an even/odd UDP port pair bound on `address`.
    pub fn new(id: usize, address: IpAddr) -> std::io::Result<Self> {
        let (rtp_socket, rtcp_socket) = crate::rtsp::ports::bind_port_pair(address, None)?;
        let server_ports = (
            rtp_socket.local_addr()?.port(),
            rtcp_socket.local_addr()?.port(),
        );
        Ok(Self {
            id,
            description: Mutex::new(None),
            plane: Mutex::new(Plane::default()),
            rtp_socket,
            rtcp_socket: Arc::new(rtcp_socket),
            server_ports,
            multicast: Mutex::new(None),
            multicast_socket: Mutex::new(None),
            last_keyframe_request: Mutex::new(None),
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
            waiting_keyframe: waiting,
        });
        PushOutcome {
            want_keyframe: waiting && self.keyframe_request_due(),
            first_packet: false,
        }
    }

    pub fn remove_dest(&self, dest: &Arc<Dest>) {
        self.plane
            .lock()
            .unwrap()
            .entries
            .retain(|e| !Arc::ptr_eq(&e.dest, dest));
    }

    pub fn dests(&self) -> Vec<Arc<Dest>> {
        let plane = self.plane.lock().unwrap();
        plane.entries.iter().map(|e| e.dest.clone()).collect()
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

    /// Forwards packets (normally one frame) to every playing destination. Never blocks.
    pub fn push(&self, packets: &[Bytes]) -> PushOutcome {
        let now = Instant::now();
        let codec = self.keyframe_codec();
        let mut plane = self.plane.lock().unwrap();
        let first_packet = plane.clock.packets == 0 && !packets.is_empty();
        for p in packets {
            if let Ok(h) = rtp::parse_rtp_header(p) {
                let c = &mut plane.clock;
                c.ssrc = h.ssrc;
                c.last_seq = h.sequence;
                c.last_rtptime = h.timestamp;
                c.last_arrival = Some(now);
                c.packets += 1;
                c.octets += h.payload_len as u64;
            }
        }
        if plane.entries.is_empty() {
            return PushOutcome {
                first_packet,
                ..PushOutcome::default()
            };
        }
        let first_key = match &codec {
            Some(enc) if plane.entries.iter().any(|e| e.waiting_keyframe) => {
                packets.iter().position(|p| is_keyframe_start(enc, p))
            }
            _ => None,
        };
        // Unicast UDP datagrams for every client go out together after the loop.
        let mut udp = super::udp_out::Batch::default();
        for entry in plane.entries.iter_mut() {
            let start = if entry.waiting_keyframe {
                match first_key {
                    Some(i) => i,
                    None => continue,
                }
            } else {
                0
            };
            let sent = self.send(&entry.dest, &packets[start..], &mut udp);
            if sent {
                entry.waiting_keyframe = false;
            } else if codec.is_some() {
                // A TCP queue overflowed: the frame was dropped whole; resume at a keyframe
                // so the client never decodes a broken reference chain.
                entry.waiting_keyframe = true;
            }
        }
        udp.flush(&self.rtp_socket);
        // Keep asking (at most once a second) while anyone waits: encoders may ignore a request.
        let waiting = plane.entries.iter().any(|e| e.waiting_keyframe);
        drop(plane);
        PushOutcome {
            want_keyframe: waiting && self.keyframe_request_due(),
            first_packet,
        }
    }

    fn send<'a>(
        &self,
        dest: &'a Dest,
        packets: &'a [Bytes],
        udp: &mut super::udp_out::Batch<'a>,
    ) -> bool {
        let mut ok = true;
        match &dest.target {
            Target::Tcp { conn, channel } => {
                if packets.iter().any(|p| p.len() > usize::from(u16::MAX)) {
                    ok = false;
                } else {
                    ok = conn.send_media(*channel, packets);
                }
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
            let bytes: usize = packets.iter().map(Bytes::len).sum();
            dest.packets_sent
                .fetch_add(packets.len() as u64, Ordering::Relaxed);
            dest.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        ok
    }

    /// UDP is lossy by nature: a packet the kernel refuses is counted and the rest still go.
    /// The burst goes in as few system calls as the platform allows (see [`super::udp_out`]).
    fn send_udp(&self, socket: &UdpSocket, dest: &Dest, to: SocketAddr, packets: &[Bytes]) {
        let refused = super::udp_out::send_burst(socket, to, packets);
        if refused > 0 {
            dest.packets_dropped.fetch_add(refused, Ordering::Relaxed);
        }
    }

    /// Builds a Sender Report for `dest` (counts are what this destination was sent).
    pub fn sender_report(&self, dest: &Dest, cname: &str) -> Option<Vec<u8>> {
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
        Some(out)
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
                conn.send_media(channel.wrapping_add(1), &[packet]);
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
