//! Publishing to an RTSP server: the client side of ANNOUNCE and RECORD, independent of
//! GStreamer.
//!
//! Specifications: RFC 2326 §10.1 (OPTIONS), §10.3 (ANNOUNCE with the SDP), §10.4 and §12.39
//! (SETUP, Transport with `mode=record`), §10.11 (RECORD), §10.7 (TEARDOWN), §10.12 (interleaved
//! data), §12.37 (Session timeout: keep-alives); RFC 7826 §13.3 and §18.54; RFC 4566 (the
//! announced description); RFC 3550 §6.4.1 (Sender Reports we send) and §6.4.2 (the server's
//! Receiver Reports: loss, jitter, round trip).
//!
//! [`Publisher::start`] runs on the plugin's shared runtime. It waits until every stream has
//! its media description, then connects over the same transport code as the playing client
//! ([`super::conn`]: clear, TLS, HTTP tunnel; Basic/Digest through [`super::Session`]),
//! announces, sets every stream up with `mode=record` (lowercase and unquoted: ffmpeg's listener
//! takes nothing else) over the first of `protocols` the server accepts, and RECORDs.
//!
//! [`Publisher::push`] never blocks: frames (the RTP packets of one input buffer) go into a
//! queue bounded in bytes; a frame that does not fit is dropped whole, and so is the rest of it
//! (packets with the same RTP timestamp pushed afterwards), counted per stream. The first drop
//! of a run asks for a keyframe ([`Pushed::Dropped`]). When the connection is lost the
//! publisher connects again with bounded exponential backoff, redoes ANNOUNCE/SETUP/RECORD,
//! throws away what queued meanwhile (counted as dropped) and asks for a keyframe.
//! [`Publisher::finish`] sends what is queued (bounded by `drain_timeout`), then TEARDOWN.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtsp_types::{Method, Url, headers};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot};

use super::conn::{Connection, DirectWriter, Incoming};
use super::{
    ClientConfig, ClientError, Session, TransportKind, carrier_of, check, host_port,
    interleaved_channels, media_source, redact_url,
};
use crate::net::udp_out;
use crate::rtp::{self, ntp, rtcp};
use crate::rtsp::auth;
use crate::rtsp::sdp::{MediaDescription, SessionDescription};
use crate::rtsp::transport::{LowerTransport, TransportSpec};

/// Publisher settings: the client's (URL, credentials, protocols in order, timeouts, TLS,
/// reconnection) and the queue's.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub client: ClientConfig,
    /// Bytes of RTP the queue holds at most; a frame that does not fit is dropped.
    pub queue_bytes: usize,
    /// At the end, how long what is queued may take to be sent before TEARDOWN.
    pub drain_timeout: Duration,
    /// The clock of the Sender Reports' NTP time (the wall clock by default).
    pub ntp_clock: NtpClock,
    /// Kernel buffer of the UDP sockets (send for RTP, receive for RTCP); `None`: 1 MiB.
    pub udp_buffer_size: Option<usize>,
    /// Over TCP, how long the frames of a stream that is not video (audio: a packet each) may
    /// wait to go out in one write with the next video frame; zero sends each at once.
    pub burst_latency: Duration,
}

/// Where the NTP timestamp of Sender Reports comes from: the wall clock (NTP epoch), or a
/// function giving a 64-bit NTP-format time (the element's: Unix time, running time, its
/// clock's time), `None` while it has none (that Sender Report is left out).
#[derive(Clone, Default)]
pub struct NtpClock(Option<Arc<dyn Fn() -> Option<u64> + Send + Sync>>);

impl NtpClock {
    pub fn new(now: impl Fn() -> Option<u64> + Send + Sync + 'static) -> NtpClock {
        NtpClock(Some(Arc::new(now)))
    }

    /// The time now, `None` when the clock has none.
    pub fn now(&self) -> Option<u64> {
        match &self.0 {
            Some(now) => now(),
            None => Some(ntp::ntp_now()),
        }
    }
}

impl std::fmt::Debug for NtpClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "NtpClock(custom)"
        } else {
            "NtpClock(wall)"
        })
    }
}

/// What happens to a publisher, reported through the callback given to [`Publisher::start`].
#[derive(Debug, Clone)]
pub enum PublishEvent {
    /// RECORD was accepted: the streams go out over `transport`.
    Recording { transport: TransportKind },
    /// The connection was lost; attempt `attempt` of `of` follows after `delay`.
    Reconnecting {
        attempt: u32,
        of: u32,
        delay: Duration,
        reason: String,
    },
    /// Recording again after a reconnection.
    Reconnected,
    /// Stream `stream` should start again at a keyframe (after drops or a reconnection).
    KeyframeWanted { stream: usize },
    /// Publishing failed for good (the publisher does nothing more).
    Error(ClientError),
}

/// The figures of one published stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishStats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// Frames dropped whole: the queue was full, or they were queued when the connection was
    /// lost.
    pub frames_dropped: u64,
    pub packets_dropped: u64,
    /// Frames that waited (over TCP, the burst latency) to go out with the next video frame.
    pub frames_held: u64,
    /// The SSRC of the stream's packets (the payloader's).
    pub ssrc: Option<u32>,
    /// From the server's last Receiver Report on this stream.
    pub fraction_lost: Option<u8>,
    pub cumulative_lost: Option<i32>,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: Option<u32>,
    pub round_trip: Option<Duration>,
}

/// What [`Publisher::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Dropped whole; `first`: the first drop of a run (ask for a keyframe).
    Dropped {
        first: bool,
    },
}

struct Frame {
    stream: usize,
    packets: Vec<Bytes>,
    bytes: usize,
    /// The instant its RTP time stands for on the pipeline's timeline (see
    /// [`Publisher::push`]): what Sender Reports map to wallclock, however long it waited.
    due: Instant,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Per stream: the RTP timestamp of the frame being dropped.
    dropping: Vec<Option<u32>>,
    /// Per stream: frames taken out of the queue (or never queued) whose sending has not
    /// finished. A frame may go straight to the socket only when none is overtaken: over TCP
    /// (one connection) when nothing is queued or in flight at all, over UDP (a socket per
    /// stream) when nothing of its own stream is.
    in_flight: Vec<usize>,
    /// While recording: how the streaming thread sends a frame itself.
    direct: Option<Arc<Direct>>,
    /// Per stream: its frames may be held for the next video frame (not video, and a video
    /// stream exists), over TCP with a burst latency.
    holdable: Vec<bool>,
    /// Since when every queued frame is held for the next video frame (none before it, the
    /// network thread not woken for them); `None`: nothing is held.
    held_since: Option<Instant>,
}

impl Queue {
    /// Takes every queued frame for one write by the streaming thread, counting them in
    /// flight: only when all of them are held and nothing else is being sent.
    fn take_held(&mut self) -> Option<Vec<Frame>> {
        if self.held_since.is_none() || self.in_flight.iter().any(|&n| n > 0) {
            return None;
        }
        self.held_since = None;
        let frames: Vec<Frame> = self.frames.drain(..).collect();
        self.bytes -= frames.iter().map(|f| f.bytes).sum::<usize>();
        for f in &frames {
            self.in_flight[f.stream] += 1;
        }
        Some(frames)
    }

    /// Puts back `frames` taken by [`Queue::take_held`] that could not be written (no longer
    /// in flight), ahead of anything queued since, for the network thread.
    fn put_back(&mut self, frames: Vec<Frame>) {
        for f in frames.into_iter().rev() {
            self.bytes += f.bytes;
            self.frames.push_front(f);
        }
    }
}

/// How the streaming thread sends a frame itself while nothing waits in the queue: no
/// hand-over, no wake-up of the network thread.
enum Direct {
    /// The connection's writer and each stream's RTP channel.
    Tcp {
        writer: DirectWriter,
        channels: Vec<Option<u8>>,
    },
    /// Each stream's RTP socket (non-blocking) and the server's RTP port.
    Udp {
        outs: Vec<Option<(Arc<udp_out::UdpSender>, SocketAddr)>>,
    },
}

impl Direct {
    /// Over TCP, writes the packets of several frames (stream, packets) in one write if it can
    /// without waiting: Ok(true) when they were taken. Ok(false) over UDP.
    fn try_send_frames(&self, frames: &[(usize, &[Bytes])]) -> Result<bool, ClientError> {
        let Direct::Tcp { writer, channels } = self else {
            return Ok(false);
        };
        let mut list: Vec<(u8, &[u8])> = Vec::new();
        for &(stream, packets) in frames {
            let Some(Some(channel)) = channels.get(stream) else {
                return Ok(false);
            };
            list.extend(packets.iter().map(|p| (*channel, p.as_ref())));
        }
        writer.try_send_interleaved_many(&list)
    }

    /// Sends the packets of one frame of `stream` now if it can without waiting: Ok(true) when
    /// they were taken.
    fn try_send(&self, name: &str, stream: usize, packets: &[Bytes]) -> Result<bool, ClientError> {
        match self {
            Direct::Tcp { .. } => self.try_send_frames(&[(stream, packets)]),
            Direct::Udp { outs } => {
                let Some(Some((socket, to))) = outs.get(stream) else {
                    return Ok(false);
                };
                let refused = std::sync::atomic::AtomicU64::new(0);
                let mut batch = udp_out::Batch::default();
                batch.add(*to, packets, &refused);
                batch.flush(socket.as_ref());
                let refused = refused.into_inner();
                if refused > 0 {
                    log::trace!(id = name; "stream {stream}: {refused} RTP datagram(s) refused by the kernel (send buffer full)");
                }
                Ok(true)
            }
        }
    }
}

struct StreamState {
    stats: PublishStats,
    clock_rate: u32,
    /// RTP timestamp of the last packet sent and the instant it stands for (its frame's
    /// `due`), from which Sender Reports extrapolate.
    last: Option<(u32, Instant)>,
}

struct Shared {
    name: String,
    limit: usize,
    queue: Mutex<Queue>,
    /// Frames were queued, or a description was set.
    wake: Notify,
    media: Mutex<Vec<Option<MediaDescription>>>,
    streams: Vec<Mutex<StreamState>>,
    ntp_clock: NtpClock,
    udp_buffer_size: Option<usize>,
    burst_latency: Duration,
}

impl Shared {
    fn all_media(&self) -> Option<Vec<MediaDescription>> {
        self.media.lock().unwrap().iter().cloned().collect()
    }

    /// Throws away what is queued, counting it as dropped.
    fn clear_queue(&self) -> usize {
        let mut q = self.queue.lock().unwrap();
        q.held_since = None;
        let n = q.frames.len();
        for f in q.frames.drain(..) {
            if let Some(s) = self.streams.get(f.stream) {
                let mut s = s.lock().unwrap();
                s.stats.frames_dropped += 1;
                s.stats.packets_dropped += f.packets.len() as u64;
            }
        }
        q.bytes = 0;
        n
    }

    fn queue_empty(&self) -> bool {
        self.queue.lock().unwrap().frames.is_empty()
    }

    /// An RTCP packet from the server on stream `stream`: the report blocks on our source.
    fn on_rtcp(&self, stream: usize, data: &[u8]) {
        let Some(slot) = self.streams.get(stream) else {
            return;
        };
        let Ok(packets) = rtcp::parse_compound(data) else {
            return;
        };
        let arrival = ntp::ntp_now();
        let mut s = slot.lock().unwrap();
        let Some(ssrc) = s.stats.ssrc else { return };
        for packet in packets {
            let blocks = match packet {
                rtcp::RtcpPacket::ReceiverReport(rr) => rr.reports,
                rtcp::RtcpPacket::SenderReport(sr) => sr.reports,
                _ => continue,
            };
            for block in blocks.iter().filter(|b| b.ssrc == ssrc) {
                log::trace!(
                    target: "lsrtp",
                    id = self.name.as_str();
                    "stream {stream}: report from the server: {block:?}"
                );
                s.stats.fraction_lost = Some(block.fraction_lost);
                s.stats.cumulative_lost = Some(block.cumulative_lost);
                s.stats.jitter = Some(block.jitter);
                if let Some(rtt) = rtcp::round_trip_time(block, arrival) {
                    s.stats.round_trip = Some(rtt);
                }
            }
        }
    }
}

enum Command {
    /// Send what is queued (bounded), TEARDOWN, then answer.
    Finish(oneshot::Sender<()>),
    /// TEARDOWN now, then answer.
    Stop(oneshot::Sender<()>),
}

type EventFn = Arc<dyn Fn(PublishEvent) + Send + Sync>;

/// A running publisher. Dropping it sends TEARDOWN (bounded by the client's
/// `teardown_timeout`) and ends its tasks.
pub struct Publisher {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::AbortHandle,
    teardown_timeout: Duration,
    drain_timeout: Duration,
}

impl Publisher {
    /// Starts publishing `streams` streams; it connects once each has its description
    /// ([`Publisher::set_media`]).
    pub fn start(
        config: PublishConfig,
        streams: usize,
        events: impl Fn(PublishEvent) + Send + Sync + 'static,
    ) -> Publisher {
        let shared = Arc::new(Shared {
            name: config.client.name.clone(),
            limit: config.queue_bytes.max(1),
            queue: Mutex::new(Queue {
                dropping: vec![None; streams],
                in_flight: vec![0; streams],
                holdable: vec![false; streams],
                ..Queue::default()
            }),
            wake: Notify::new(),
            media: Mutex::new(vec![None; streams]),
            streams: (0..streams)
                .map(|_| {
                    Mutex::new(StreamState {
                        stats: PublishStats::default(),
                        clock_rate: 0,
                        last: None,
                    })
                })
                .collect(),
            ntp_clock: config.ntp_clock.clone(),
            udp_buffer_size: config.udp_buffer_size,
            burst_latency: config.burst_latency,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let teardown_timeout = config.client.teardown_timeout;
        let drain_timeout = config.drain_timeout;
        let task = spawn_own_thread(run(config, shared.clone(), Arc::new(events), rx));
        Publisher {
            shared,
            commands: tx,
            task,
            teardown_timeout,
            drain_timeout,
        }
    }

    /// Sets (or replaces, before connecting) the description of stream `stream`; its control
    /// is set by the publisher.
    pub fn set_media(&self, stream: usize, media: MediaDescription) {
        let mut all = self.shared.media.lock().unwrap();
        if let Some(slot) = all.get_mut(stream) {
            if let Some(s) = self.shared.streams.get(stream) {
                s.lock().unwrap().clock_rate = media.clock_rate;
            }
            *slot = Some(media);
            let video =
                |m: &Option<MediaDescription>| m.as_ref().is_some_and(|m| m.media == "video");
            let any_video = all.iter().any(video);
            let holdable = all
                .iter()
                .map(|m| {
                    m.is_some() && !video(m) && any_video && !self.shared.burst_latency.is_zero()
                })
                .collect();
            drop(all);
            self.shared.queue.lock().unwrap().holdable = holdable;
            self.shared.wake.notify_one();
        }
    }

    /// Queues the RTP packets of one frame of stream `stream`, or drops them whole. Never
    /// blocks on the network. `due`: the instant the frame's RTP time stands for on the
    /// sender's timeline (earlier than now when the pipeline delivers it late); Sender Reports
    /// map RTP time to wallclock from it, not from when the frame left, so neither a late
    /// encoder nor the queue or the burst hold moves the server's view of the timeline.
    pub fn push(&self, stream: usize, packets: Vec<Bytes>, due: Instant) -> Pushed {
        let bytes: usize = packets.iter().map(Bytes::len).sum();
        let timestamp = packets
            .first()
            .and_then(|p| rtp::parse_rtp_header(p).ok())
            .map(|h| h.timestamp);
        let mut q = self.shared.queue.lock().unwrap();
        let Some(dropping) = q.dropping.get(stream).copied() else {
            return Pushed::Dropped { first: false };
        };
        // `new_frame`: a frame of its own (counted), else the rest of the one being dropped.
        let drop_it = |q: &mut Queue, new_frame: bool| {
            q.dropping[stream] = timestamp.or(dropping).or(Some(0));
            if let Some(s) = self.shared.streams.get(stream) {
                let mut s = s.lock().unwrap();
                s.stats.frames_dropped += u64::from(new_frame);
                s.stats.packets_dropped += packets.len() as u64;
            }
        };
        if dropping.is_some() && dropping == timestamp {
            drop_it(&mut q, false);
            return Pushed::Dropped { first: false };
        }
        if q.bytes.saturating_add(bytes) > self.shared.limit && !q.frames.is_empty() {
            let first = dropping.is_none();
            if first {
                log::debug!(
                    id = self.shared.name.as_str();
                    "stream {stream}: the send queue is full ({} bytes queued, limit {}): dropping frames",
                    q.bytes,
                    self.shared.limit
                );
            }
            drop_it(&mut q, true);
            return Pushed::Dropped { first };
        }
        if dropping.is_some() {
            log::debug!(
                id = self.shared.name.as_str();
                "stream {stream}: the send queue has room again"
            );
        }
        q.dropping[stream] = None;
        let tcp = q
            .direct
            .clone()
            .filter(|d| matches!(**d, Direct::Tcp { .. }));
        if let Some(direct) = tcp {
            let now = Instant::now();
            let mut frame = Some(Frame {
                stream,
                packets,
                bytes,
                due,
            });
            if q.holdable[stream] && (q.held_since.is_some() || q.frames.is_empty()) {
                // Over TCP a frame that is not video waits for the next video frame, to go out
                // in the same write: at most the burst latency (checked at its stream's next
                // frame, so an audio packet's interval more).
                let since = *q.held_since.get_or_insert(now);
                if let Some(s) = self.shared.streams.get(stream) {
                    s.lock().unwrap().stats.frames_held += 1;
                }
                q.bytes += bytes;
                q.frames.extend(frame.take());
                if now.duration_since(since) < self.shared.burst_latency {
                    return Pushed::Queued;
                }
            }
            if let Some(held) = q.take_held() {
                // In flight too, so that no other frame goes straight out meanwhile.
                if let Some(f) = &frame {
                    q.in_flight[f.stream] += 1;
                }
                drop(q);
                let mut list: Vec<(usize, &[Bytes])> = held
                    .iter()
                    .map(|f| (f.stream, f.packets.as_slice()))
                    .collect();
                list.extend(frame.iter().map(|f| (f.stream, f.packets.as_slice())));
                let taken = direct.try_send_frames(&list);
                q = self.shared.queue.lock().unwrap();
                for f in held.iter().chain(frame.iter()) {
                    q.in_flight[f.stream] -= 1;
                }
                match taken {
                    Ok(true) => {
                        drop(q);
                        for f in held.iter().chain(frame.iter()) {
                            account(&self.shared, f.stream, &f.packets, f.due);
                        }
                        return Pushed::Queued;
                    }
                    Ok(false) => {}
                    Err(e) => log::trace!(
                        id = self.shared.name.as_str();
                        "writing held frames from the streaming thread failed: {e}; queued"
                    ),
                }
                q.put_back(held);
            }
            let Some(frame) = frame else {
                // Held past the burst latency and not written: the network thread sends it.
                q.held_since = None;
                drop(q);
                self.shared.wake.notify_one();
                return Pushed::Queued;
            };
            let packets = frame.packets;
            return self.push_unheld(q, stream, packets, bytes, due);
        }
        self.push_unheld(q, stream, packets, bytes, due)
    }

    /// [`Publisher::push`] of a frame that is not held: straight to the socket if nothing
    /// would be overtaken, else queued for the network thread (with whatever is held).
    fn push_unheld<'a>(
        &'a self,
        mut q: std::sync::MutexGuard<'a, Queue>,
        stream: usize,
        packets: Vec<Bytes>,
        bytes: usize,
        due: Instant,
    ) -> Pushed {
        if let Some(direct) = q.direct.clone().filter(|d| match **d {
            Direct::Tcp { .. } => q.frames.is_empty() && q.in_flight.iter().all(|&n| n == 0),
            Direct::Udp { .. } => {
                q.in_flight[stream] == 0 && !q.frames.iter().any(|f| f.stream == stream)
            }
        }) {
            q.in_flight[stream] += 1;
            drop(q);
            let taken = direct.try_send(&self.shared.name, stream, &packets);
            q = self.shared.queue.lock().unwrap();
            q.in_flight[stream] -= 1;
            match taken {
                Ok(true) => {
                    drop(q);
                    account(&self.shared, stream, &packets, due);
                    return Pushed::Queued;
                }
                // Another write is in progress: the network thread sends it after that one.
                Ok(false) => {}
                // The network thread meets the error too, and reconnects.
                Err(e) => log::trace!(
                    id = self.shared.name.as_str();
                    "stream {stream}: writing a frame from the streaming thread failed: {e}; queued"
                ),
            }
        }
        q.bytes += bytes;
        q.frames.push_back(Frame {
            stream,
            packets,
            bytes,
            due,
        });
        // The network thread sends the held frames too.
        q.held_since = None;
        drop(q);
        self.shared.wake.notify_one();
        Pushed::Queued
    }

    /// The figures of every stream.
    pub fn stats(&self) -> Vec<PublishStats> {
        self.shared
            .streams
            .iter()
            .map(|s| s.lock().unwrap().stats.clone())
            .collect()
    }

    /// Sends what is queued (at most `drain_timeout`), then TEARDOWN (at most
    /// `teardown_timeout`); returns when done. Call it outside the runtime (it blocks).
    pub fn finish(&self) {
        // Nothing waits for a next video frame any more.
        self.shared.queue.lock().unwrap().held_since = None;
        self.shared.wake.notify_one();
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Finish(tx)).is_ok()
            && tokio::runtime::Handle::try_current().is_err()
        {
            let timeout = self.drain_timeout + self.teardown_timeout + Duration::from_millis(100);
            let _ = crate::runtime::handle()
                .block_on(async move { tokio::time::timeout(timeout, rx).await });
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(tx)).is_ok()
            && tokio::runtime::Handle::try_current().is_err()
        {
            let timeout = self.teardown_timeout;
            let _ = crate::runtime::handle()
                .block_on(async move { tokio::time::timeout(timeout, rx).await });
        }
        self.task.abort();
    }
}

/// Runs the publisher on a thread of its own (`rtspclisink-net`) with a current-thread runtime,
/// as rsrtmpsink does: each frame wakes that one thread, where a task on the shared runtime
/// woke two of its workers per frame (`benches/rtsp_publish.rs`, BENCH_BASELINE: the publishing
/// process at 0.80x the CPU of the shared-runtime build). On the shared runtime if the thread
/// cannot start.
fn spawn_own_thread<F>(future: F) -> tokio::task::AbortHandle
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    type Job = (tokio::runtime::Runtime, tokio::task::JoinHandle<()>);
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let thread = std::thread::Builder::new()
        .name("rtspclisink-net".into())
        .spawn(move || {
            if let Ok((runtime, task)) = rx.recv() {
                let _ = runtime.block_on(task);
                // A write stuck on a server that does not read must not hold this thread.
                runtime.shutdown_background();
            }
        });
    let runtime = thread.ok().and_then(|_| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("rtspclisink-net")
            .build()
            .ok()
    });
    match runtime {
        Some(runtime) => {
            let task = runtime.spawn(future);
            let abort = task.abort_handle();
            let _ = tx.send((runtime, task));
            abort
        }
        None => crate::runtime::handle().spawn(future).abort_handle(),
    }
}

/// Where one stream's packets go.
enum Out {
    Tcp {
        rtp: u8,
        rtcp: u8,
    },
    Udp {
        /// Not registered with the runtime: sends never wait for room (a datagram the kernel
        /// refuses is counted), and every datagram freed would otherwise wake the network
        /// thread (a UDP socket is writable again after each one: edge-triggered EPOLLOUT).
        rtp: Arc<udp_out::UdpSender>,
        rtcp: Arc<UdpSocket>,
        to_rtp: SocketAddr,
        to_rtcp: SocketAddr,
    },
}

/// One recording session.
struct Recording {
    session: Session,
    kind: TransportKind,
    outs: Vec<Out>,
    /// Why the connection ended.
    closed: mpsc::UnboundedReceiver<String>,
    /// RTCP readers of UDP streams.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Recording {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

enum Outcome {
    /// Finished or stopped: nothing more to do.
    Done,
    /// The connection was lost (why).
    Lost(String),
}

async fn run(
    config: PublishConfig,
    shared: Arc<Shared>,
    events: EventFn,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let name = config.client.name.as_str();
    // Every stream needs its description before ANNOUNCE.
    let media = loop {
        if let Some(m) = shared.all_media() {
            break m;
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            cmd = commands.recv() => {
                if let Some(Command::Finish(done) | Command::Stop(done)) = cmd {
                    log::debug!(id = name; "stopped before every stream had its caps: nothing was published");
                    let _ = done.send(());
                }
                return;
            }
        }
    };
    let mut rec = match establish(&config, &media, &shared).await {
        Ok(r) => r,
        Err(e) => {
            log::debug!(id = name; "{}: publishing failed: {e}", redact_url(&config.client.url));
            events(PublishEvent::Error(e));
            return;
        }
    };
    events(PublishEvent::Recording {
        transport: rec.kind,
    });
    loop {
        let reason = match serve(&config, &shared, &mut rec, &mut commands).await {
            Outcome::Done => return,
            Outcome::Lost(reason) => reason,
        };
        match reconnect(&config, &media, &shared, &events, reason).await {
            Some(r) => {
                rec = r;
                events(PublishEvent::Reconnected);
                for stream in 0..media.len() {
                    events(PublishEvent::KeyframeWanted { stream });
                }
            }
            None => return,
        }
    }
}

async fn reconnect(
    config: &PublishConfig,
    media: &[MediaDescription],
    shared: &Arc<Shared>,
    events: &EventFn,
    reason: String,
) -> Option<Recording> {
    let c = &config.client;
    let backoff =
        crate::net::backoff::Backoff::new(c.reconnect_initial_delay, c.reconnect_max_delay);
    let mut last = reason.clone();
    for attempt in 1..=c.reconnect_attempts {
        let delay = backoff.delay(attempt);
        log::debug!(
            id = c.name.as_str();
            "{}: reconnection attempt {attempt} of {} in {delay:?}: {last}",
            redact_url(&c.url),
            c.reconnect_attempts
        );
        events(PublishEvent::Reconnecting {
            attempt,
            of: c.reconnect_attempts,
            delay,
            reason: last.clone(),
        });
        tokio::time::sleep(delay).await;
        // What queued meanwhile is stale: the stream resumes at a keyframe.
        let cleared = shared.clear_queue();
        log::debug!(id = c.name.as_str(); "dropped {cleared} frames queued while disconnected");
        match establish(config, media, shared).await {
            Ok(r) => return Some(r),
            Err(e) => last = e.to_string(),
        }
    }
    let reason = if c.reconnect_attempts == 0 {
        reason
    } else {
        format!(
            "{reason}; {} reconnection attempts failed, the last with: {last}",
            c.reconnect_attempts
        )
    };
    log::debug!(id = c.name.as_str(); "giving up: {reason}");
    events(PublishEvent::Error(ClientError::Closed(reason)));
    None
}

/// The SDP announced for `media`: stream `i` has the control `streamid=i`.
fn announce_sdp(media: &[MediaDescription], origin: IpAddr) -> String {
    let session_id = {
        use rand::RngExt;
        rand::rng().random::<u32>()
    };
    SessionDescription {
        session_name: "Session streamed with gst-plugin-livestreaming".into(),
        origin_address: origin.to_string(),
        session_id: u64::from(session_id),
        session_version: 1,
        range: None,
        media: media
            .iter()
            .enumerate()
            .map(|(i, m)| MediaDescription {
                control: format!("streamid={i}"),
                ..m.clone()
            })
            .collect(),
    }
    .to_sdp_string()
}

/// The URL of stream `i`: the presentation URL, `/`, its control (as ffmpeg and gst-rtsp-server
/// resolve the controls of an announced description).
fn stream_url(url: &Url, i: usize) -> Result<Url, ClientError> {
    let text = format!("{}/streamid={i}", url.as_str().trim_end_matches('/'));
    Url::parse(&text).map_err(|e| ClientError::Protocol(format!("bad stream URL: {e}")))
}

/// Connects, ANNOUNCEs `media`, SETUPs every stream with `mode=record` over the first of the
/// protocols the server accepts, and RECORDs.
async fn establish(
    config: &PublishConfig,
    media: &[MediaDescription],
    shared: &Arc<Shared>,
) -> Result<Recording, ClientError> {
    let c = &config.client;
    let mut url = Url::parse(&c.url)
        .map_err(|e| ClientError::Protocol(format!("invalid URL '{}': {e}", redact_url(&c.url))))?;
    let (url_credentials, clean) = auth::split_url_credentials(&url);
    url = clean;
    let carrier = carrier_of(c, &mut url)?;
    let credentials = c.credentials.clone().or(url_credentials);
    let (host, port) = host_port(&url, &carrier)?;
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let on_data = shared.clone();
    let conn = Connection::connect(
        &host,
        port,
        &carrier,
        c.tcp_timeout,
        c.limits,
        c.user_agent.clone(),
        c.name.clone(),
        move |incoming| match incoming {
            Incoming::Interleaved { channel, data } if channel % 2 == 1 => {
                on_data.on_rtcp(usize::from(channel / 2), &data);
            }
            Incoming::Closed(reason) => {
                let _ = closed_tx.send(reason);
            }
            _ => {}
        },
    )
    .await?;
    let peer = conn.peer();
    let mut session = Session {
        name: c.name.clone(),
        conn: Arc::new(conn),
        stats: Arc::new(RwLock::new(Arc::new(Vec::new()))),
        id: None,
        timeout: Duration::from_secs(60),
        url: url.clone(),
        auth: None,
        credentials,
        get_parameter_supported: Arc::new(AtomicBool::new(false)),
        kind: TransportKind::Tcp,
        streams: Vec::new(),
        transports: Vec::new(),
        tasks: Vec::new(),
        receivers: Vec::new(),
    };
    if let Ok(resp) = session.send(Method::Options, &url, Vec::new(), &[]).await {
        if resp.status() == rtsp_types::StatusCode::Unauthorized {
            return Err(ClientError::Unauthorized("OPTIONS refused with 401".into()));
        }
        if let Some(public) = resp.header(&headers::PUBLIC) {
            let lists = |m| super::parse::public_lists(public.as_str(), m);
            session
                .get_parameter_supported
                .store(lists("GET_PARAMETER"), std::sync::atomic::Ordering::Relaxed);
        }
    }
    let origin = match peer.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let sdp = announce_sdp(media, origin);
    log::trace!(id = c.name.as_str(); "{peer}: announcing\n{sdp}");
    let resp = session
        .send(
            Method::Announce,
            &url,
            sdp.into_bytes(),
            &[(headers::CONTENT_TYPE, "application/sdp")],
        )
        .await?;
    check(&resp, "ANNOUNCE")?;

    // Inside TLS or the tunnel the media stays inside too.
    let protocols: Vec<TransportKind> = if carrier.tls.is_some() || carrier.tunnel.is_some() {
        vec![TransportKind::Tcp]
    } else {
        c.protocols
            .iter()
            .copied()
            .filter(|k| *k != TransportKind::UdpMulticast)
            .collect()
    };
    if protocols.is_empty() {
        return Err(ClientError::NoTransport(
            "protocols allows neither udp nor tcp".into(),
        ));
    }
    let mut outs = Vec::new();
    let mut tasks = Vec::new();
    let mut chosen = None;
    // UDP port pairs for every stream, bound before the first UDP SETUP: with fewer free pairs
    // than streams (a small `port-range`) UDP is given up before any SETUP, for the next of
    // `protocols`, rather than failing at the second stream.
    let mut udp_pairs: Vec<Option<UdpPair>> = Vec::new();
    for i in 0..media.len() {
        let kinds = match chosen {
            Some(k) => vec![k],
            None => protocols.clone(),
        };
        let mut last_err = None;
        for kind in kinds {
            let pair = if kind == TransportKind::Tcp {
                None
            } else {
                if udp_pairs.is_empty() {
                    match bind_port_pairs(media.len(), c.port_range) {
                        Ok(pairs) => udp_pairs = pairs.into_iter().map(Some).collect(),
                        Err(e) if chosen.is_none() => {
                            log::debug!(
                                id = c.name.as_str();
                                "{peer}: {kind:?} not possible for recording ({e}), trying the next of {protocols:?}"
                            );
                            last_err = Some(e);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                udp_pairs.get_mut(i).and_then(Option::take)
            };
            match setup(&mut session, c, &url, i, kind, pair, shared).await {
                Ok((out, task)) => {
                    outs.push(out);
                    tasks.extend(task);
                    chosen = Some(kind);
                    last_err = None;
                    break;
                }
                Err(e @ ClientError::Status { status: 461, .. })
                | Err(e @ ClientError::NoTransport(_))
                    if chosen.is_none() =>
                {
                    log::debug!(
                        id = c.name.as_str();
                        "{peer}: {kind:?} refused for recording ({e}), trying the next of {protocols:?}"
                    );
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e.into_no_transport());
        }
    }
    let kind = chosen.unwrap_or(TransportKind::Tcp);
    let resp = session
        .send(
            Method::Record,
            &url,
            Vec::new(),
            &[(headers::RANGE, "npt=0.000-")],
        )
        .await?;
    check(&resp, "RECORD")?;
    log::debug!(
        id = c.name.as_str();
        "{peer}: recording {} streams over {kind:?}, session {}, timeout {:?}",
        media.len(),
        session.id.as_deref().unwrap_or("-"),
        session.timeout
    );
    session.kind = kind;
    Ok(Recording {
        session,
        kind,
        outs,
        closed,
        tasks,
    })
}

/// An RTP and an RTCP socket.
type UdpPair = (std::net::UdpSocket, std::net::UdpSocket);

/// A UDP port pair for each of `n` streams, within `range` if given; an error naming the range
/// when there are fewer free pairs than streams.
fn bind_port_pairs(n: usize, range: Option<(u16, u16)>) -> Result<Vec<UdpPair>, ClientError> {
    let bind = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    (0..n)
        .map(|i| {
            crate::rtsp::ports::bind_port_pair(bind, range).map_err(|e| {
                ClientError::NoTransport(format!("binding UDP ports for stream {i} of {n}: {e}"))
            })
        })
        .collect()
}

/// SETUP of stream `i` over `kind` with `mode=record`; `pair`: its UDP sockets, bound already.
async fn setup(
    session: &mut Session,
    c: &ClientConfig,
    url: &Url,
    i: usize,
    kind: TransportKind,
    pair: Option<UdpPair>,
    shared: &Arc<Shared>,
) -> Result<(Out, Option<tokio::task::JoinHandle<()>>), ClientError> {
    let control = stream_url(url, i)?;
    let mut sockets = None;
    let transport = match kind {
        TransportKind::Tcp => {
            let ch = interleaved_channels(i).ok_or_else(|| {
                ClientError::NoTransport(format!("stream {i} has no interleaved channels left"))
            })?;
            TransportSpec::tcp_interleaved(ch).to_string()
        }
        _ => {
            let (rtp_sock, rtcp_sock) = match pair {
                Some(pair) => pair,
                None => crate::rtsp::ports::bind_port_pair(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    c.port_range,
                )
                .map_err(|e| ClientError::io("binding UDP ports", &e))?,
            };
            if let Some(size) = shared.udp_buffer_size {
                let _ = socket2::SockRef::from(&rtp_sock).set_send_buffer_size(size);
                let _ = socket2::SockRef::from(&rtcp_sock).set_recv_buffer_size(size);
            }
            let p = rtp_sock
                .local_addr()
                .map_err(|e| ClientError::io("binding UDP ports", &e))?;
            let mut t = TransportSpec::udp_unicast();
            t.client_port = Some((p.port(), p.port().wrapping_add(1)));
            sockets = Some((rtp_sock, rtcp_sock));
            t.to_string()
        }
    };
    // Lowercase and unquoted: ffmpeg 5.1's listener refuses `mode=RECORD` and `mode="record"`.
    let transport = format!("{transport};mode=record");
    let reply = session.setup(&control, &transport).await?;
    log::debug!(
        id = session.name.as_str();
        "{}: stream {i} set up for recording over {kind:?}: the server answered `{reply}`",
        session.conn.peer()
    );
    match (kind, reply.lower, sockets) {
        (TransportKind::Tcp, LowerTransport::Tcp, _) => {
            let (rtp, rtcp) = reply
                .interleaved
                .or_else(|| interleaved_channels(i))
                .unwrap_or_default();
            Ok((Out::Tcp { rtp, rtcp }, None))
        }
        (_, LowerTransport::Udp, Some((rtp_sock, rtcp_sock))) if kind != TransportKind::Tcp => {
            let (rtp_port, rtcp_port) = reply.server_port.ok_or_else(|| {
                ClientError::NoTransport("the server answered UDP without server_port".into())
            })?;
            let ip = media_source(&reply, session.conn.peer().ip().to_canonical());
            let to_tokio = |s: std::net::UdpSocket| {
                s.set_nonblocking(true)
                    .and_then(|_| UdpSocket::from_std(s))
                    .map(Arc::new)
                    .map_err(|e| ClientError::io("setting up a UDP socket", &e))
            };
            let rtp = rtp_sock
                .set_nonblocking(true)
                .map(|_| Arc::new(udp_out::UdpSender::new(rtp_sock)))
                .map_err(|e| ClientError::io("setting up a UDP socket", &e))?;
            let rtcp = to_tokio(rtcp_sock)?;
            let reader = rtcp.clone();
            let shared = shared.clone();
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    match reader.recv_from(&mut buf).await {
                        Ok((n, _)) => shared.on_rtcp(i, &buf[..n]),
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            });
            Ok((
                Out::Udp {
                    rtp,
                    rtcp,
                    to_rtp: SocketAddr::new(ip, rtp_port),
                    to_rtcp: SocketAddr::new(ip, rtcp_port),
                },
                Some(task),
            ))
        }
        _ => Err(ClientError::NoTransport(format!(
            "asked for {kind:?}, the server answered '{reply}'"
        ))),
    }
}

/// Sends queued frames, Sender Reports and keep-alives until finished, stopped or the
/// connection is lost.
async fn serve(
    config: &PublishConfig,
    shared: &Arc<Shared>,
    rec: &mut Recording,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Outcome {
    let c = &config.client;
    let peer = rec.session.conn.peer();
    let keepalive_every = (rec.session.timeout / 2).max(Duration::from_secs(1));
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + keepalive_every,
        keepalive_every,
    );
    let mut rtcp_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(500),
        c.rtcp_interval.max(Duration::from_millis(100)),
    );
    let mut finishing: Option<(oneshot::Sender<()>, tokio::time::Instant)> = None;
    let _direct = DirectGuard::install(shared, rec);
    if rec.kind == TransportKind::Tcp {
        let held: Vec<usize> = {
            let q = shared.queue.lock().unwrap();
            (0..q.holdable.len()).filter(|&i| q.holdable[i]).collect()
        };
        if !held.is_empty() {
            log::debug!(
                id = c.name.as_str();
                "{peer}: streams {held:?} wait up to {:?} for the next video frame, to go out in its write (burst-latency)",
                shared.burst_latency
            );
        }
    }
    // Frames may have queued while connecting.
    shared.wake.notify_one();
    loop {
        let deadline = finishing
            .as_ref()
            .map_or_else(tokio::time::Instant::now, |(_, d)| *d);
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Finish(done)) => {
                    log::debug!(id = c.name.as_str(); "{peer}: end of stream: sending what is queued (at most {:?}), then TEARDOWN", config.drain_timeout);
                    finishing = Some((done, tokio::time::Instant::now() + config.drain_timeout));
                }
                Some(Command::Stop(done)) => {
                    log::debug!(id = c.name.as_str(); "{peer}: stopping: TEARDOWN");
                    shared.queue.lock().unwrap().direct = None;
                    let _ = tokio::time::timeout(c.teardown_timeout, rec.session.teardown()).await;
                    let _ = done.send(());
                    return Outcome::Done;
                }
                None => return Outcome::Done,
            },
            reason = rec.closed.recv() => {
                let reason = reason.unwrap_or_else(|| "the connection ended".into());
                log::debug!(id = c.name.as_str(); "{peer}: connection lost: {reason}");
                return Outcome::Lost(reason);
            }
            _ = shared.wake.notified() => {
                // At the end, a server that does not read holds the drain at most until the
                // deadline.
                let sent = match &finishing {
                    Some((_, deadline)) => tokio::time::timeout_at(*deadline, send_queued(shared, rec))
                        .await
                        .unwrap_or_else(|_| {
                            let left = shared.clear_queue();
                            log::debug!(id = c.name.as_str(); "{peer}: the queue did not drain within {:?}: {left} frames dropped", config.drain_timeout);
                            Ok(())
                        }),
                    None => send_queued(shared, rec).await,
                };
                if let Err(e) = sent {
                    log::debug!(id = c.name.as_str(); "{peer}: sending failed: {e}");
                    return Outcome::Lost(e.to_string());
                }
            }
            _ = rtcp_tick.tick() => send_sender_reports(shared, rec).await,
            _ = keepalive.tick(), if c.keep_alive => rec.session.keep_alive(),
            _ = tokio::time::sleep_until(deadline), if finishing.is_some() => {
                let left = shared.clear_queue();
                log::debug!(id = c.name.as_str(); "{peer}: the queue did not drain within {:?}: {left} frames dropped", config.drain_timeout);
            }
        }
        if finishing.is_some() && shared.queue_empty() {
            let (done, _) = finishing.take().expect("checked");
            send_sender_reports(shared, rec).await;
            log::debug!(id = c.name.as_str(); "{peer}: everything queued was sent: TEARDOWN");
            shared.queue.lock().unwrap().direct = None;
            let _ = tokio::time::timeout(c.teardown_timeout, rec.session.teardown()).await;
            let _ = done.send(());
            return Outcome::Done;
        }
    }
}

/// Lets the streaming thread send frames itself while a recording is served.
struct DirectGuard<'a>(&'a Shared);

impl<'a> DirectGuard<'a> {
    fn install(shared: &'a Shared, rec: &Recording) -> DirectGuard<'a> {
        let direct = if rec.kind == TransportKind::Tcp {
            Direct::Tcp {
                writer: rec.session.conn.direct_writer(),
                channels: rec
                    .outs
                    .iter()
                    .map(|o| match o {
                        Out::Tcp { rtp, .. } => Some(*rtp),
                        Out::Udp { .. } => None,
                    })
                    .collect(),
            }
        } else {
            Direct::Udp {
                outs: rec
                    .outs
                    .iter()
                    .map(|o| match o {
                        Out::Udp { rtp, to_rtp, .. } => Some((rtp.clone(), *to_rtp)),
                        Out::Tcp { .. } => None,
                    })
                    .collect(),
            }
        };
        shared.queue.lock().unwrap().direct = Some(Arc::new(direct));
        DirectGuard(shared)
    }
}

impl Drop for DirectGuard<'_> {
    fn drop(&mut self) {
        self.0.queue.lock().unwrap().direct = None;
    }
}

/// Frames sent per round, so that commands and reports are not held up by a long queue.
const FRAMES_PER_ROUND: usize = 64;

/// Counts `packets` of `stream` as sent (figures), and as the Sender Reports' reference: their
/// RTP time stands for the instant `due`.
fn account(shared: &Shared, stream: usize, packets: &[Bytes], due: Instant) {
    let Some(slot) = shared.streams.get(stream) else {
        return;
    };
    let mut s = slot.lock().unwrap();
    for p in packets {
        if let Ok(h) = rtp::parse_rtp_header(p) {
            s.stats.ssrc = Some(h.ssrc);
            s.last = Some((h.timestamp, due));
            s.stats.bytes_sent += rtp::rtp_payload(p, &h).len() as u64;
        }
        s.stats.packets_sent += 1;
    }
}

/// Ends a round's claim on [`Queue::in_flight`] (one per frame taken), however the round ends.
struct InFlight<'a>(&'a Shared, Vec<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock().unwrap();
        for &stream in &self.1 {
            q.in_flight[stream] -= 1;
        }
    }
}

async fn send_queued(shared: &Shared, rec: &Recording) -> Result<(), ClientError> {
    let frames: Vec<Frame> = {
        let mut q = shared.queue.lock().unwrap();
        let n = q.frames.len().min(FRAMES_PER_ROUND);
        let frames: Vec<Frame> = q.frames.drain(..n).collect();
        q.bytes -= frames.iter().map(|f| f.bytes).sum::<usize>();
        if q.frames.is_empty() {
            // Held frames went too.
            q.held_since = None;
        } else {
            shared.wake.notify_one();
        }
        for f in &frames {
            q.in_flight[f.stream] += 1;
        }
        frames
    };
    if frames.is_empty() {
        return Ok(());
    }
    let _in_flight = InFlight(shared, frames.iter().map(|f| f.stream).collect());
    for f in &frames {
        account(shared, f.stream, &f.packets, f.due);
    }
    if rec.kind == TransportKind::Tcp {
        let mut packets: Vec<(u8, &[u8])> = Vec::new();
        for f in &frames {
            if let Some(Out::Tcp { rtp, .. }) = rec.outs.get(f.stream) {
                packets.extend(f.packets.iter().map(|p| (*rtp, p.as_ref())));
            }
        }
        return rec.session.conn.send_interleaved_many(&packets).await;
    }
    // A run of frames of one stream leaves in one `sendmmsg` (full-size fragments as one UDP
    // GSO send where the kernel takes it), as the stock client's multiudpsink sends a buffer
    // list. UDP is lossy by nature: a datagram the kernel refuses is counted, not waited for.
    let refused = std::sync::atomic::AtomicU64::new(0);
    let mut i = 0;
    while i < frames.len() {
        let stream = frames[i].stream;
        let run = frames[i..]
            .iter()
            .take_while(|f| f.stream == stream)
            .count();
        if let Some(Out::Udp { rtp, to_rtp, .. }) = rec.outs.get(stream) {
            let mut batch = udp_out::Batch::default();
            for f in &frames[i..i + run] {
                batch.add(*to_rtp, &f.packets, &refused);
            }
            batch.flush(rtp.as_ref());
        }
        i += run;
    }
    let refused = refused.into_inner();
    if refused > 0 {
        log::trace!(id = shared.name.as_str(); "{refused} RTP datagram(s) refused by the kernel (send buffer full)");
    }
    Ok(())
}

/// The RTP timestamp `elapsed` after `ts` at `clock_rate`.
fn rtp_time_after(ts: u32, elapsed: Duration, clock_rate: u32) -> u32 {
    let ticks = elapsed.as_nanos().saturating_mul(u128::from(clock_rate)) / 1_000_000_000;
    ts.wrapping_add((ticks % (1u128 << 32)) as u32)
}

async fn send_sender_reports(shared: &Shared, rec: &Recording) {
    let Some(ntp_now) = shared.ntp_clock.now() else {
        return;
    };
    let now = Instant::now();
    for (i, out) in rec.outs.iter().enumerate() {
        let Some(slot) = shared.streams.get(i) else {
            continue;
        };
        let sr = {
            let s = slot.lock().unwrap();
            let (Some(ssrc), Some((ts, at))) = (s.stats.ssrc, s.last) else {
                continue;
            };
            rtcp::SenderReport {
                ssrc,
                ntp_timestamp: ntp_now,
                rtp_timestamp: rtp_time_after(ts, now.saturating_duration_since(at), s.clock_rate),
                packet_count: s.stats.packets_sent as u32,
                octet_count: s.stats.bytes_sent as u32,
                reports: Vec::new(),
            }
        };
        let mut packet = Vec::with_capacity(64);
        rtcp::write_sender_report(&sr, "rtspclientsink2", &mut packet);
        log::trace!(target: "lsrtp", id = shared.name.as_str(); "stream {i}: sender report {sr:?}");
        match out {
            Out::Tcp { rtcp, .. } => {
                let _ = rec
                    .session
                    .conn
                    .send_interleaved_many(&[(*rtcp, packet.as_slice())])
                    .await;
            }
            Out::Udp { rtcp, to_rtcp, .. } => {
                let _ = rtcp.send_to(&packet, *to_rtcp).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ts: u32, len: usize) -> Bytes {
        let mut p = vec![0u8; 12 + len];
        p[0] = 0x80;
        p[1] = 96;
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        Bytes::from(p)
    }

    fn publisher(queue_bytes: usize) -> Publisher {
        publisher_holding(queue_bytes, Duration::ZERO)
    }

    fn publisher_holding(queue_bytes: usize, burst_latency: Duration) -> Publisher {
        let config = PublishConfig {
            client: ClientConfig {
                url: "rtsp://127.0.0.1:9/x".into(),
                ..ClientConfig::default()
            },
            queue_bytes,
            drain_timeout: Duration::from_millis(100),
            ntp_clock: NtpClock::default(),
            udp_buffer_size: None,
            burst_latency,
        };
        // No description is set: it never connects, the queue only fills.
        Publisher::start(config, 2, |_| {})
    }

    /// A current-thread runtime for the publisher's tasks and sockets.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Lets the streaming thread send `p`'s two streams straight over UDP, as during a UDP
    /// recording; returns the receiving socket of each stream.
    fn send_directly_over_udp(p: &Publisher) -> Vec<std::net::UdpSocket> {
        let rx: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let outs = rx
            .iter()
            .map(|r| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                Some((
                    Arc::new(udp_out::UdpSender::new(s)),
                    r.local_addr().unwrap(),
                ))
            })
            .collect();
        p.shared.queue.lock().unwrap().direct = Some(Arc::new(Direct::Udp { outs }));
        rx
    }

    #[test]
    fn over_udp_a_frame_goes_straight_out_unless_its_stream_has_one_waiting() {
        let rt = runtime();
        let _guard = rt.enter();
        let p = publisher(10_000);
        let rx = send_directly_over_udp(&p);
        let recv = |i: usize| {
            rx[i]
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let n = rx[i].recv(&mut buf).unwrap();
            rtp::parse_rtp_header(&buf[..n]).unwrap().timestamp
        };
        // Nothing waiting: sent at once, counted as sent, nothing queued.
        assert_eq!(
            p.push(0, vec![packet(1, 100), packet(1, 50)], Instant::now()),
            Pushed::Queued
        );
        assert_eq!((recv(0), recv(0)), (1, 1));
        assert!(p.shared.queue_empty());
        assert_eq!(p.stats()[0].packets_sent, 2);
        // A frame of stream 0 in flight on the network thread: stream 0's next frame queues
        // behind it, stream 1's goes out meanwhile.
        p.shared.queue.lock().unwrap().in_flight[0] += 1;
        assert_eq!(
            p.push(0, vec![packet(2, 100)], Instant::now()),
            Pushed::Queued
        );
        assert_eq!(
            p.push(1, vec![packet(7, 100)], Instant::now()),
            Pushed::Queued
        );
        assert_eq!(recv(1), 7);
        p.shared.queue.lock().unwrap().in_flight[0] -= 1;
        // Stream 0 has a frame queued: the next one queues too, so none is overtaken.
        assert_eq!(
            p.push(0, vec![packet(3, 100)], Instant::now()),
            Pushed::Queued
        );
        let queued: Vec<u32> = p
            .shared
            .queue
            .lock()
            .unwrap()
            .frames
            .iter()
            .map(|f| rtp::parse_rtp_header(&f.packets[0]).unwrap().timestamp)
            .collect();
        assert_eq!(queued, [2, 3]);
    }

    /// Sender Reports extrapolate from the instant a frame was due, not from when it left:
    /// straight out from the streaming thread or queued behind another, a frame that came
    /// 300 ms late is the reference with its due instant.
    #[test]
    fn sender_reports_take_a_frame_at_its_due_instant_however_late_it_is_sent() {
        let rt = runtime();
        let _guard = rt.enter();
        let p = publisher(10_000);
        let _rx = send_directly_over_udp(&p);
        let last = |p: &Publisher| p.shared.streams[0].lock().unwrap().last;
        let due = Instant::now() - Duration::from_millis(300);
        assert_eq!(p.push(0, vec![packet(9000, 100)], due), Pushed::Queued);
        assert_eq!(last(&p), Some((9000, due)));
        // Queued behind a frame in flight: the frame keeps its due instant in the queue.
        p.shared.queue.lock().unwrap().in_flight[0] += 1;
        let later = due + Duration::from_millis(33);
        assert_eq!(p.push(0, vec![packet(12000, 100)], later), Pushed::Queued);
        let queued = p.shared.queue.lock().unwrap().frames[0].due;
        assert_eq!(queued, later);
    }

    /// Over TCP with a burst latency, an audio packet waits for the next video frame and goes
    /// out before it in the same write; one held past the latency goes at the next packet of
    /// its stream.
    #[test]
    fn over_tcp_audio_waits_for_the_next_video_frame_at_most_the_burst_latency() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rt = runtime();
        let _guard = rt.enter();
        let conn = rt
            .block_on(Connection::connect(
                "127.0.0.1",
                port,
                &super::super::conn::Carrier::default(),
                Duration::from_secs(5),
                crate::rtsp::codec::Limits::default(),
                "test".into(),
                "test".into(),
                |_| {},
            ))
            .unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let latency = Duration::from_millis(500);
        let p = publisher_holding(100_000, latency);
        {
            let mut q = p.shared.queue.lock().unwrap();
            q.holdable = vec![false, true];
            q.direct = Some(Arc::new(Direct::Tcp {
                writer: conn.direct_writer(),
                channels: vec![Some(0), Some(2)],
            }));
        }
        // Interleaved frames read by the server: (channel, RTP timestamp).
        let read = |server: &mut std::net::TcpStream, n: usize| -> Vec<(u8, u32)> {
            server
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            (0..n)
                .map(|_| {
                    let mut head = [0u8; 4];
                    server.read_exact(&mut head).unwrap();
                    assert_eq!(head[0], b'$');
                    let mut data = vec![0u8; usize::from(u16::from_be_bytes([head[2], head[3]]))];
                    server.read_exact(&mut data).unwrap();
                    (head[1], rtp::parse_rtp_header(&data).unwrap().timestamp)
                })
                .collect()
        };
        let nothing_yet = |server: &mut std::net::TcpStream| {
            server
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut b = [0u8; 1];
            assert!(server.read(&mut b).is_err(), "something was sent");
        };
        assert_eq!(
            p.push(1, vec![packet(10, 40)], Instant::now()),
            Pushed::Queued
        );
        assert_eq!(
            p.push(1, vec![packet(11, 40)], Instant::now()),
            Pushed::Queued
        );
        nothing_yet(&mut server);
        assert_eq!(p.stats()[1].packets_sent, 0);
        // The video frame takes the held audio along, after it.
        assert_eq!(
            p.push(0, vec![packet(1, 1000), packet(1, 500)], Instant::now()),
            Pushed::Queued
        );
        assert_eq!(read(&mut server, 4), [(2, 10), (2, 11), (0, 1), (0, 1)]);
        assert!(p.shared.queue_empty());
        assert_eq!(
            (p.stats()[0].packets_sent, p.stats()[1].packets_sent),
            (2, 2)
        );
        // No video comes: the held packet goes with its stream's first packet after the latency.
        assert_eq!(
            p.push(1, vec![packet(12, 40)], Instant::now()),
            Pushed::Queued
        );
        nothing_yet(&mut server);
        std::thread::sleep(latency);
        assert_eq!(
            p.push(1, vec![packet(13, 40)], Instant::now()),
            Pushed::Queued
        );
        assert_eq!(read(&mut server, 2), [(2, 12), (2, 13)]);
        // Something in flight (the network thread writing): the video frame queues behind the
        // held audio for the network thread, in order.
        assert_eq!(
            p.push(1, vec![packet(14, 40)], Instant::now()),
            Pushed::Queued
        );
        p.shared.queue.lock().unwrap().in_flight[0] += 1;
        assert_eq!(
            p.push(0, vec![packet(2, 100)], Instant::now()),
            Pushed::Queued
        );
        let q = p.shared.queue.lock().unwrap();
        let queued: Vec<(usize, u32)> = q
            .frames
            .iter()
            .map(|f| {
                (
                    f.stream,
                    rtp::parse_rtp_header(&f.packets[0]).unwrap().timestamp,
                )
            })
            .collect();
        assert_eq!(queued, [(1, 14), (0, 2)]);
        assert!(
            q.held_since.is_none(),
            "the network thread was left to send them"
        );
    }

    #[test]
    fn a_full_queue_drops_whole_frames_and_counts_them() {
        let p = publisher(300);
        assert_eq!(
            p.push(0, vec![packet(1, 100), packet(1, 100)], Instant::now()),
            Pushed::Queued
        );
        // 224 queued: a frame of 112 does not fit.
        assert_eq!(
            p.push(0, vec![packet(2, 100)], Instant::now()),
            Pushed::Dropped { first: true }
        );
        // The rest of frame 2 goes too, then frame 3 also finds no room.
        assert_eq!(
            p.push(0, vec![packet(2, 50)], Instant::now()),
            Pushed::Dropped { first: false }
        );
        assert_eq!(
            p.push(0, vec![packet(3, 100)], Instant::now()),
            Pushed::Dropped { first: false }
        );
        // A small frame fits again.
        assert_eq!(
            p.push(1, vec![packet(9, 10)], Instant::now()),
            Pushed::Queued
        );
        let stats = p.stats();
        assert_eq!(stats[0].frames_dropped, 2);
        assert_eq!(stats[0].packets_dropped, 3);
        assert_eq!(stats[1].frames_dropped, 0);
        // An unknown stream is refused, not a panic.
        assert_eq!(
            p.push(7, vec![packet(1, 1)], Instant::now()),
            Pushed::Dropped { first: false }
        );
    }

    #[test]
    fn sender_report_time_advances_with_the_clock() {
        assert_eq!(rtp_time_after(1000, Duration::from_secs(1), 90000), 91000);
        assert_eq!(
            rtp_time_after(u32::MAX, Duration::from_millis(1), 90000),
            89
        );
        let _ = rtp_time_after(0, Duration::MAX, u32::MAX);
    }

    #[test]
    fn the_announced_description_names_each_stream() {
        let m = MediaDescription {
            media: "video".into(),
            payload_type: 96,
            encoding_name: "H264".into(),
            clock_rate: 90000,
            encoding_params: None,
            fmtp: vec![("packetization-mode".into(), "1".into())],
            control: String::new(),
            multicast: None,
            port: 0,
            bandwidth_kbps: None,
            attributes: Vec::new(),
        };
        let sdp = announce_sdp(&[m.clone(), m], IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(sdp.contains("a=control:streamid=0\r\n"), "{sdp}");
        assert!(sdp.contains("a=control:streamid=1\r\n"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:96 H264/90000"), "{sdp}");
        let url = Url::parse("rtsp://h:1/live/x/").unwrap();
        assert_eq!(
            stream_url(&url, 1).unwrap().as_str(),
            "rtsp://h:1/live/x/streamid=1"
        );
    }
}
