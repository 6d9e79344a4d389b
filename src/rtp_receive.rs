//! The receive side of an RTP source element: a stream's jitter buffer, timestamps, lip-sync
//! from Sender Reports, and the pad task that pushes what is ready. Shared by `rtspsrc2` and
//! `rtspserversrc` (moved out of rtspsrc2 unchanged, with the element type, its debug category
//! and its segment bookkeeping passed in).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gst::glib;
use gst::prelude::*;

use crate::rtp::jitterbuffer::{
    JitterBuffer, JitterBufferConfig, JitterBufferStats, Output as JbOutput,
};
use crate::rtp::timing::{SenderClock, SyncOutcome, Timeline};
use crate::rtsp::sdp::MediaDescription;

/// Told (stream time, running time) when a segment starts after a seek.
pub type SegmentFn = Box<dyn Fn(gst::ClockTime, gst::ClockTime) + Send>;

/// What the element's event handler (on the client's thread) tells one pad task.
#[derive(Default)]
pub struct StreamSignals {
    /// A new session after a reconnection: re-base timestamps at the next packet.
    pub rebase: AtomicBool,
    /// A seek or a new session: output what the jitter buffer holds, then start it anew.
    pub restart: AtomicBool,
    /// After a seek: (stream time of the new data, its first RTP sequence number).
    pub resegment: Mutex<Option<(gst::ClockTime, Option<u16>)>>,
    /// The newest Sender Report not yet applied: (NTP time, RTP time).
    pub sender_report: Mutex<Option<(u64, u32)>>,
    /// The jitter buffer's figures, as of the task's last round.
    pub jitterbuffer: Mutex<JitterBufferStats>,
    /// New caps from an ANNOUNCEd description, to go out before the next buffer.
    pub caps: Mutex<Option<gst::Caps>>,
}

/// The sender's wallclock that lines the streams up (RFC 3550 6.4.1, see [`SenderClock`]).
/// Shared by the pads; reset with a new session.
pub type SyncReference = Arc<Mutex<SenderClock>>;

/// Everything a pad task does with one in-order packet: timestamps, segments after seeks and
/// reconnections, the push and what its result means.
pub struct StreamOutput {
    pub pad: gst::Pad,
    pub element: glib::WeakRef<gst::Element>,
    pub caps: gst::Caps,
    /// The element's debug category (the records keep their element's category).
    pub cat: gst::DebugCategory,
    /// Told (stream time, running time) when a segment starts after a seek.
    pub on_segment: Option<SegmentFn>,
    /// The stream's timeline; None for a clock rate of 0 (such streams get no pad).
    pub timing: Option<Timeline>,
    pub signals: Arc<StreamSignals>,
    pub sync: SyncReference,
    /// Buffers prepared this round, pushed together by [`Self::flush`] (one alone as a buffer:
    /// taking it out of a list would copy it).
    pub pending: Vec<gst::Buffer>,
}

impl StreamOutput {
    /// Lines this stream up with the others from a Sender Report: the sender's NTP clock says
    /// which RTP times of different streams were captured together, so once every stream has
    /// had a report, packets captured at the same moment carry the same PTS (as rtpbin's
    /// lip-sync does). The first stream to get a report anchors the shared timeline. False
    /// when the report cannot be used yet (no packet since the last re-base).
    pub fn apply_sender_report(&mut self, ntp: u64, rtptime: u32) -> bool {
        if self.signals.rebase.load(Ordering::Relaxed)
            || self.signals.resegment.lock().unwrap().is_some()
        {
            return false;
        }
        let Some(timing) = self.timing.as_mut() else {
            return false;
        };
        match self.sync.lock().unwrap().apply(timing, ntp, rtptime) {
            None => false,
            Some(SyncOutcome::Moved(correction)) => {
                gst::debug!(
                    self.cat,
                    obj = self.pad,
                    "sender report: moving the stream by {} ms",
                    correction as f64 / 1e6
                );
                true
            }
            Some(SyncOutcome::Anchored | SyncOutcome::InSync) => true,
        }
    }

    /// Prepares one packet for [`Self::flush`]; `discont` after a loss. False: the stream is
    /// over (EOS or error).
    pub fn output(&mut self, packet: Bytes, discont: bool) -> bool {
        let Ok(header) = crate::rtp::parse_rtp_header(&packet) else {
            return true;
        };
        // After a seek: drop what was sent before it, then start a segment at the new position
        // with the first new packet.
        let mut new_segment = None;
        if let Some((time, first_seq)) = *self.signals.resegment.lock().unwrap() {
            if first_seq.is_some_and(|f| (header.sequence.wrapping_sub(f) as i16) < 0) {
                return true;
            }
            // Cleared once the segment event is accepted (not while still flushing).
            new_segment = Some(time);
        }
        // After a reconnection the server's RTP clock starts anew: continue from now.
        let rebase = self.signals.rebase.swap(false, Ordering::Relaxed) || new_segment.is_some();
        if rebase && let Some(timing) = &mut self.timing {
            timing.restart();
        }
        // The clock is read only where a timeline starts.
        let element = &self.element;
        let now = || {
            element
                .upgrade()
                .and_then(|e| e.current_running_time())
                .map(gst::ClockTime::nseconds)
        };
        let stamp = self
            .timing
            .as_mut()
            .and_then(|t| t.pts(header.timestamp, now));
        // At most MAX_PTS_NS: never GST_CLOCK_TIME_NONE.
        let pts = stamp.map(|s| gst::ClockTime::from_nseconds(s.ns));
        let resync = stamp.is_some_and(|s| s.resync);
        if let (Some(time), Some(pts)) = (new_segment, pts) {
            let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
            segment.set_start(pts);
            segment.set_base(pts);
            segment.set_time(time);
            // Depayloaders take the stream time of their output from `npt-start` in the caps,
            // as rtspsrc sets it (GstRTPBaseDepayload).
            let mut npt_caps = self.caps.clone();
            if let Some(s) = npt_caps.make_mut().structure_mut(0) {
                s.set("npt-start", time.nseconds());
                s.set("play-speed", 1.0f64);
                s.set("play-scale", 1.0f64);
            }
            // What was prepared before belongs to the old segment.
            if !self.flush() {
                return false;
            }
            if !self.pad.push_event(gst::event::Caps::new(&npt_caps))
                || !self.pad.push_event(gst::event::Segment::new(&segment))
            {
                // The flushing seek is not over yet: try again with the next packet.
                return true;
            }
            *self.signals.resegment.lock().unwrap() = None;
            gst::debug!(self.cat, obj = self.pad, "new segment {:?}", segment);
            if let Some(f) = &self.on_segment {
                f(time, pts);
            }
        }
        let mut buffer = gst::Buffer::from_slice(packet);
        {
            let b = buffer.get_mut().expect("new buffer is writable");
            b.set_pts(pts);
            if discont || rebase || resync {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
        }
        self.pending.push(buffer);
        true
    }

    /// Pushes what this round prepared: one buffer alone, several as one list (depayloaders
    /// and sinks take a list in one call). False: the stream is over (EOS or error).
    pub fn flush(&mut self) -> bool {
        let result = match self.pending.len() {
            0 => return true,
            1 => self.pad.push(self.pending.pop().expect("one buffer")),
            n => {
                let mut list = gst::BufferList::new_sized(n);
                let l = list.get_mut().expect("a new list is writable");
                for buffer in self.pending.drain(..) {
                    l.add(buffer);
                }
                self.pad.push_list(list)
            }
        };
        match result {
            // An unlinked stream is one the application does not want; while a flushing seek
            // is under way the packet is stale. Either way the task goes on.
            Ok(_) | Err(gst::FlowError::NotLinked) | Err(gst::FlowError::Flushing) => true,
            // Downstream wants no more: like basesrc, finish the stream with EOS.
            Err(gst::FlowError::Eos) => {
                let _ = self.pad.push_event(gst::event::Eos::new());
                false
            }
            Err(err) => {
                if let Some(element) = self.element.upgrade() {
                    gst::element_error!(
                        element,
                        gst::StreamError::Failed,
                        ("Internal data stream error."),
                        ["streaming stopped, reason {:?}", err]
                    );
                }
                let _ = self.pad.push_event(gst::event::Eos::new());
                false
            }
        }
    }
}

/// Packets queued at most per pad for its task; beyond, they are dropped and counted.
pub const PAD_QUEUE_PACKETS: usize = 16 * 1024;

/// What a pad's task waits for: packets handed over by a thread that serves other streams too
/// (a TCP connection carrying several), a gap in the jitter buffer to give up on, or the end.
/// It sleeps otherwise, so a stream fed on its own thread costs the task no wake-ups.
#[derive(Default)]
pub struct PadQueue {
    state: Mutex<PadQueueState>,
    cond: Condvar,
}

#[derive(Default)]
struct PadQueueState {
    packets: Vec<Bytes>,
    /// The jitter buffer's deadline may have moved.
    kicked: bool,
    stopped: bool,
    /// The task sleeps in `wait`: only then is it woken (a wake-up is a system call).
    waiting: bool,
}

impl PadQueue {
    /// Queues `packets`; returns how many were dropped because the queue is full.
    pub fn push(&self, packets: Vec<Bytes>) -> usize {
        let mut state = self.state.lock().unwrap();
        let room = PAD_QUEUE_PACKETS.saturating_sub(state.packets.len());
        let dropped = packets.len().saturating_sub(room);
        state.packets.extend(packets.into_iter().take(room));
        self.wake(state);
        dropped
    }

    pub fn kick(&self) {
        let mut state = self.state.lock().unwrap();
        state.kicked = true;
        self.wake(state);
    }

    pub fn stop(&self) {
        let mut state = self.state.lock().unwrap();
        state.stopped = true;
        self.wake(state);
    }

    fn wake(&self, state: std::sync::MutexGuard<'_, PadQueueState>) {
        if state.waiting {
            drop(state);
            self.cond.notify_one();
        }
    }

    /// Sleeps until packets come, `deadline` passes (never if None) or a kick. False once
    /// stopped. The packets are taken with [`Self::take`], under the stream's [`StreamWork`]
    /// lock.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.packets.is_empty() && !state.kicked && !state.stopped {
            state.waiting = true;
            state = match deadline {
                Some(d) => {
                    let timeout = d.saturating_duration_since(Instant::now());
                    self.cond.wait_timeout(state, timeout).unwrap().0
                }
                None => self.cond.wait(state).unwrap(),
            };
            state.waiting = false;
        }
        state.kicked = false;
        !state.stopped
    }

    /// The packets queued now (none once stopped). Taken under the stream's [`StreamWork`]
    /// lock, by the pad task or by a thread that feeds the stream itself: so packets queued
    /// before that thread's own are processed before them, whoever takes them.
    pub fn take(&self) -> Vec<Bytes> {
        let mut state = self.state.lock().unwrap();
        if state.stopped {
            return Vec::new();
        }
        std::mem::take(&mut state.packets)
    }
}

/// rtspserversrc's pads take the server's packets straight from the task that read them.
impl crate::rtsp::server::PacketSink for PadQueue {
    fn push(&self, packets: Vec<Bytes>) -> usize {
        PadQueue::push(self, packets)
    }
}

pub struct PadState {
    pub pad: gst::Pad,
    pub queue: Arc<PadQueue>,
    pub signals: Arc<StreamSignals>,
    pub work: Arc<Mutex<StreamWork>>,
    /// The RTP clock rate of the stream's description.
    pub clock_rate: u32,
}

impl PadState {
    /// Stops the stream's pad task and takes the pad off `element`.
    pub fn remove(self, element: &gst::Element) {
        // The task holds the stream lock while it waits: wake and stop it before deactivating,
        // as basesrc does.
        self.queue.stop();
        let _ = self.pad.stop_task();
        let _ = self.pad.set_active(false);
        let _ = element.remove_pad(&self.pad);
    }
}

/// One stream's receive path: the jitter buffer and what leaves it. Fed on the thread that
/// read the packets, as udpsrc's streaming thread pushes (one wake-up per burst instead of a
/// hand-off), and by the pad task when a gap's wait runs out. The lock makes one thread push
/// at a time.
pub struct StreamWork {
    pub jitterbuffer: JitterBuffer,
    pub out: StreamOutput,
    pub stream_id: String,
    /// stream-start, caps and segment were pushed.
    pub started: bool,
    /// Packets were lost since the last one pushed.
    pub lost: bool,
    /// Downstream ended the stream (EOS or an error): nothing more is pushed.
    pub finished: bool,
    /// The jitter buffer's deadline the pad task was last woken for: while a gap is waited
    /// for, every burst after it leaves the same deadline, and the task need not hear of it again.
    pub told_deadline: Option<Instant>,
}

impl StreamWork {
    /// Ends the stream: what the jitter buffer holds goes out in order, then EOS. Nothing more
    /// is pushed after it.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        // The stream's start events go out first, also when no packet ever came.
        if self.process(Vec::new()) {
            for output in self.jitterbuffer.drain() {
                if let JbOutput::Packet { data, .. } = output {
                    let discont = std::mem::take(&mut self.lost);
                    if !self.out.output(data, discont) {
                        break;
                    }
                } else {
                    self.lost = true;
                }
            }
            self.out.flush();
        }
        self.finished = true;
        let _ = self.out.pad.push_event(gst::event::Eos::new());
    }

    /// Takes `packets` in and pushes what is ready. False once the stream is over.
    pub fn process(&mut self, packets: impl IntoIterator<Item = Bytes>) -> bool {
        if self.finished {
            return false;
        }
        if !self.started {
            self.started = true;
            let pad = &self.out.pad;
            let _ = pad.push_event(gst::event::StreamStart::builder(&self.stream_id).build());
            let _ = pad.push_event(gst::event::Caps::new(&self.out.caps));
            let segment = gst::FormattedSegment::<gst::ClockTime>::new();
            let _ = pad.push_event(gst::event::Segment::new(&segment));
        }
        let announced = self.out.signals.caps.lock().unwrap().take();
        if let Some(caps) = announced {
            // What was prepared belongs to the old description.
            if !self.out.flush() {
                self.finished = true;
                return false;
            }
            gst::info!(
                self.out.cat,
                obj = self.out.pad,
                "new caps from ANNOUNCE: {}",
                caps
            );
            let _ = self.out.pad.push_event(gst::event::Caps::new(&caps));
            self.out.caps = caps;
        }
        let mut ready = Vec::new();
        let arrival = Instant::now();
        for packet in packets {
            if ready.is_empty() && self.out.signals.restart.swap(false, Ordering::Relaxed) {
                // What came before the seek or reconnection goes first, in order.
                ready = self.jitterbuffer.drain();
                self.jitterbuffer.reset();
            }
            if let Ok(header) = crate::rtp::parse_rtp_header(&packet) {
                let _ = self.jitterbuffer.push(header.sequence, packet, arrival);
            }
        }
        let signals = self.out.signals.clone();
        let mut report = signals.sender_report.lock().unwrap();
        if let Some((ntp, rtptime)) = *report
            && self.out.apply_sender_report(ntp, rtptime)
        {
            *report = None;
        }
        drop(report);
        *signals.jitterbuffer.lock().unwrap() = self.jitterbuffer.stats();
        let now = Instant::now();
        let jitterbuffer = &mut self.jitterbuffer;
        for output in ready
            .into_iter()
            .chain(std::iter::from_fn(|| jitterbuffer.pop(now)))
        {
            match output {
                JbOutput::Lost { .. } => self.lost = true,
                JbOutput::Packet { data, .. } => {
                    let discont = std::mem::take(&mut self.lost);
                    if !self.out.output(data, discont) {
                        self.finished = true;
                        return false;
                    }
                }
            }
        }
        if !self.out.flush() {
            self.finished = true;
        }
        !self.finished
    }
}

/// GstStructure field names start with a letter and use a small alphabet; SDP from the network
/// may carry anything.
fn valid_field_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

/// `application/x-rtp` caps for a stream, the way rtspsrc builds them from the SDP.
pub fn stream_caps(m: &MediaDescription) -> gst::Caps {
    let mut s = gst::Structure::builder("application/x-rtp")
        .field("media", m.media.as_str())
        .field("payload", i32::from(m.payload_type))
        .field("clock-rate", m.clock_rate as i32)
        .field("encoding-name", m.encoding_name.to_uppercase())
        .build();
    if let Some(p) = &m.encoding_params {
        s.set("encoding-params", p.as_str());
    }
    for (k, v) in &m.fmtp {
        let key = k.to_ascii_lowercase();
        // Never let an fmtp parameter override the fields above.
        if valid_field_name(&key) && !s.has_field(key.as_str()) {
            s.set(key.as_str(), v.as_str());
        }
    }
    for (k, v) in &m.attributes {
        if let Some(v) = v {
            let key = format!("a-{k}");
            if valid_field_name(&key) && !s.has_field(key.as_str()) {
                s.set(key.as_str(), v.as_str());
            }
        }
    }
    gst::Caps::builder_full().structure(s).build()
}

/// What a stream's pad needs besides the pad: see [`start_stream`].
pub struct StreamSetup {
    pub element: gst::Element,
    pub cat: gst::DebugCategory,
    pub caps: gst::Caps,
    pub stream_id: String,
    pub clock_rate: u32,
    pub latency: Duration,
    pub sync: SyncReference,
    pub on_segment: Option<SegmentFn>,
}

/// Sets a new pad up for a stream: its work (jitter buffer, output), its stream-start and caps
/// stored as sticky events before the pad is added, and its task. The caller adds the pad.
pub fn start_stream(pad: &gst::Pad, setup: StreamSetup) -> Result<PadState, glib::BoolError> {
    let StreamSetup {
        element,
        cat,
        caps,
        stream_id,
        clock_rate,
        latency,
        sync,
        on_segment,
    } = setup;
    gst::debug!(cat, obj = pad, "caps {}", caps);
    let signals = Arc::new(StreamSignals::default());
    let work = Arc::new(Mutex::new(StreamWork {
        jitterbuffer: JitterBuffer::new(JitterBufferConfig {
            latency,
            ..JitterBufferConfig::default()
        })
        .with_name(format!("{}:{}", element.name(), pad.name())),
        out: StreamOutput {
            pad: pad.clone(),
            element: element.downgrade(),
            caps,
            cat,
            on_segment,
            timing: Timeline::new(clock_rate).ok(),
            signals: signals.clone(),
            sync,
            pending: Vec::new(),
        },
        stream_id: stream_id.clone(),
        started: false,
        lost: false,
        finished: false,
        told_deadline: None,
    }));
    let _ = pad.set_active(true);
    // The pad carries its stream and full caps before it is added, as rtspsrc's do: whoever
    // links it at pad-added (gst-launch's delayed linking, an application's handler) sees
    // media and encoding in a caps query, so `rtspsrc2 ! rtph264depay` takes the video pad
    // even when the description lists audio first. The pad task pushes them again with the
    // first data (the same events: downstream gets them once).
    let stream_start = gst::event::StreamStart::builder(&stream_id).build();
    let caps_event = gst::event::Caps::new(&work.lock().unwrap().out.caps);
    for event in [stream_start, caps_event] {
        if let Err(e) = pad.store_sticky_event(&event) {
            gst::warning!(cat, obj = pad, "cannot store {:?}: {:?}", event.type_(), e);
        }
    }
    let task_pad = pad.clone();
    let task_work = work.clone();
    let queue = Arc::new(PadQueue::default());
    let task_queue = queue.clone();
    pad.start_task(move || {
        let deadline = task_work.lock().unwrap().jitterbuffer.next_deadline();
        if !task_queue.wait(deadline) {
            let _ = task_pad.pause_task();
            return;
        }
        let mut work = task_work.lock().unwrap();
        // Under the lock (see `PadQueue::take`).
        let packets = task_queue.take();
        let due = work
            .jitterbuffer
            .next_deadline()
            .is_some_and(|d| d <= Instant::now());
        if (due || !packets.is_empty()) && !work.process(packets) {
            let _ = task_pad.pause_task();
        }
    })?;
    Ok(PadState {
        pad: pad.clone(),
        queue,
        signals,
        work,
        clock_rate,
    })
}

/// The `stream_%u` sometimes pad template of a source element: RTP out, one pad a stream.
pub fn src_pad_template() -> gst::PadTemplate {
    gst::PadTemplate::new(
        "stream_%u",
        gst::PadDirection::Src,
        gst::PadPresence::Sometimes,
        &gst::Caps::from_str("application/x-rtp").expect("valid caps"),
    )
    .expect("valid template")
}

/// A stream pad's answer to the queries both source elements answer alike: caps (the stream's
/// own from the description, from the moment the pad exists: the template's bare
/// `application/x-rtp` would let any depayloader link any pad), accept-caps, and latency (the
/// jitter buffer's, `latency_ms`); any other query as the default does.
pub fn src_query(
    element: &gst::Element,
    pad: &gst::Pad,
    query: &mut gst::QueryRef,
    latency_ms: impl FnOnce() -> u32,
) -> bool {
    match query.view_mut() {
        gst::QueryViewMut::Caps(q) => {
            let Some(caps) = pad.current_caps() else {
                return gst::Pad::query_default(pad, Some(element), query);
            };
            let result = match q.filter() {
                Some(filter) => filter.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
                None => caps,
            };
            q.set_result(&result);
            true
        }
        gst::QueryViewMut::AcceptCaps(q) => {
            let accepted = pad
                .current_caps()
                .is_none_or(|caps| q.caps().can_intersect(&caps));
            q.set_result(accepted);
            true
        }
        gst::QueryViewMut::Latency(q) => {
            q.set(
                true,
                gst::ClockTime::from_mseconds(u64::from(latency_ms())),
                gst::ClockTime::NONE,
            );
            true
        }
        _ => gst::Pad::query_default(pad, Some(element), query),
    }
}
