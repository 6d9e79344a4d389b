//! `rtspsrc2`: an RTSP client source, a thin adapter over [`crate::rtsp::client`].
//!
//! The client runs as a task on the plugin's shared runtime and reports packets as events. Each SDP media gets a
//! sometimes pad (`stream_%u`, `application/x-rtp` caps from the SDP). A stream's packets are
//! jitter-buffered and pushed on a thread that serves that stream alone, as udpsrc pushes on
//! its own: its UDP socket's thread, or the RTSP connection's reader when the connection
//! carries only that stream (one wake-up per burst, no hand-off; the connection keeps its
//! requests answered while downstream blocks that thread, see [`crate::rtsp::client::conn`]).
//! When one TCP connection carries several streams, its reader hands each stream's packets to
//! the pad's task (a bounded queue, the overflow dropped and counted), so that a blocked
//! branch never holds up the others. The task also wakes when the jitter buffer has a gap to
//! give up on, and sleeps otherwise.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::rtp_receive::{
    PadState, StreamSetup, StreamWork, SyncReference, start_stream, stream_caps,
};
use crate::rtsp::client::{Client, ClientConfig, ClientError, ClientEvent, StreamInfo, redact_url};
use crate::rtsp::range::NptRange;
use crate::rtsp::tunnel::TunnelError;
use crate::rtsp_client_props::{ClientProps, Role};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtspsrc2",
        gst::DebugColorFlags::empty(),
        Some("RTSP client source"),
    )
});

const DEFAULT_LATENCY_MS: u32 = 200;
const DEFAULT_TIMEOUT_US: u64 = 5_000_000;
const DEFAULT_MAX_STREAMS: u32 = 16;

#[derive(Clone)]
struct Settings {
    client: ClientProps,
    latency_ms: u32,
    timeout_us: u64,
    multicast_iface: Option<String>,
    max_streams: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            client: ClientProps::new(Role::Play),
            latency_ms: DEFAULT_LATENCY_MS,
            timeout_us: DEFAULT_TIMEOUT_US,
            multicast_iface: None,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

impl Settings {
    fn client_config(&self) -> Result<ClientConfig, String> {
        let client = self.client.client_config()?;
        let multicast_iface = match self.multicast_iface.as_deref() {
            None | Some("") => None,
            // The loopback interface by name, as rtspsrc users write it.
            Some("lo") => Some(std::net::Ipv4Addr::LOCALHOST),
            Some(v) => Some(v.parse().map_err(|_| {
                format!("multicast-iface '{v}' must be an IPv4 interface address or 'lo'")
            })?),
        };
        Ok(ClientConfig {
            udp_timeout: Duration::from_micros(self.timeout_us.max(1)),
            multicast_iface,
            max_streams: self.max_streams as usize,
            ..client
        })
    }
}

/// A position of an NPT range as a clock time (None: too large for one).
fn npt_time(d: Duration) -> Option<gst::ClockTime> {
    gst::ClockTime::try_from(d).ok()
}

#[derive(Default)]
struct State {
    client: Option<Arc<Client>>,
    pads: BTreeMap<usize, PadState>,
    dropped: u64,
    /// PAUSE was sent (PLAYING→PAUSED); PLAY goes out on the way back.
    paused: bool,
    /// The presentation's length from the SDP range; None for live streams.
    duration: Option<gst::ClockTime>,
    /// Stream time of the current play segment and the running time its data started at.
    play_base: Option<(gst::ClockTime, gst::ClockTime)>,
}

#[derive(Default)]
pub struct RtspSrc2 {
    settings: Mutex<Settings>,
    state: Arc<Mutex<State>>,
    sync: SyncReference,
}

#[glib::object_subclass]
impl ObjectSubclass for RtspSrc2 {
    const NAME: &'static str = "GstLsRtspSrc2";
    type Type = super::RtspSrc2;
    type ParentType = gst::Element;
    type Interfaces = (gst::URIHandler,);
}

/// RTP packets of one stream from the client (see [`ClientEvent::Rtp`]).
fn on_rtp(state: &Mutex<State>, stream: usize, packets: Vec<Bytes>, exclusive: bool) {
    let pad = state
        .lock()
        .unwrap()
        .pads
        .get(&stream)
        .map(|p| (p.work.clone(), p.queue.clone()));
    let Some((work, queue)) = pad else { return };
    if exclusive {
        // This thread serves this stream alone: it runs the stream.
        let mut work = work.lock().unwrap();
        work.process(packets);
        let deadline = work.jitterbuffer.next_deadline();
        if deadline.is_some() && deadline != work.told_deadline {
            work.told_deadline = deadline;
            queue.kick();
        }
    } else {
        // Other streams wait on this thread: the pad's task takes over.
        let dropped = queue.push(packets);
        if dropped > 0 {
            state.lock().unwrap().dropped += dropped as u64;
        }
    }
}

/// The GStreamer error domain of a client failure, as rtspsrc reports the same failures: refused
/// credentials are NOT_AUTHORIZED, an unknown presentation NOT_FOUND, transports the settings
/// cannot satisfy SETTINGS, everything else OPEN_READ.
fn resource_error(err: &ClientError) -> gst::ResourceError {
    match err {
        ClientError::Unauthorized(_)
        | ClientError::Status {
            status: 401 | 403 | 407,
            ..
        } => gst::ResourceError::NotAuthorized,
        ClientError::Status {
            status: 404 | 410, ..
        } => gst::ResourceError::NotFound,
        ClientError::NoTransport(_)
        | ClientError::TlsSettings(_)
        | ClientError::Status { status: 461, .. } => gst::ResourceError::Settings,
        ClientError::Tunnel(TunnelError::Status {
            status: 401 | 403 | 407,
            ..
        }) => gst::ResourceError::NotAuthorized,
        ClientError::Tunnel(TunnelError::Status {
            status: 404 | 410, ..
        }) => gst::ResourceError::NotFound,
        ClientError::Io { .. }
        | ClientError::Closed(_)
        | ClientError::Timeout(_)
        | ClientError::Protocol(_)
        | ClientError::Status { .. }
        | ClientError::Sdp(_)
        | ClientError::Tls { .. }
        | ClientError::Tunnel(_)
        | ClientError::TooManyStreams { .. } => gst::ResourceError::OpenRead,
    }
}

impl RtspSrc2 {
    fn on_event(&self, event: ClientEvent) {
        match event {
            ClientEvent::Described { streams, range } => {
                gst::info!(
                    CAT,
                    imp = self,
                    "{} streams, range {:?}",
                    streams.len(),
                    range
                );
                self.state.lock().unwrap().duration = range
                    .as_deref()
                    .and_then(NptRange::parse)
                    .and_then(|r| r.end_position())
                    .and_then(npt_time);
                // A dynamic payload type without a=rtpmap names no format: nothing downstream
                // could depayload it, so it gets no pad (rtspsrc's pad would not link either).
                let (known, unknown): (Vec<_>, Vec<_>) = streams
                    .into_iter()
                    .partition(|i| !i.media.encoding_name.is_empty() && i.media.clock_rate > 0);
                for info in &unknown {
                    gst::element_imp_warning!(
                        self,
                        gst::StreamError::CodecNotFound,
                        (
                            "Stream {} ({}, payload type {}) has no rtpmap: its format is unknown and it is not played",
                            info.index,
                            info.media.media,
                            info.media.payload_type
                        )
                    );
                }
                if known.is_empty() {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::CodecNotFound,
                        ("No stream of the description has a known format")
                    );
                    return;
                }
                for info in known {
                    self.add_stream_pad(&info);
                }
                self.obj().no_more_pads();
            }
            ClientEvent::SetUp { transport } => {
                gst::info!(CAT, imp = self, "streams set up over {:?}", transport);
            }
            ClientEvent::FallingBack { from, to } => {
                gst::warning!(CAT, imp = self, "no data over {:?}, trying {:?}", from, to);
                let _ = self.obj().post_message(
                    gst::message::Element::builder(
                        gst::Structure::builder("rtspsrc2-fallback")
                            .field("from", format!("{from:?}").to_lowercase())
                            .field("to", format!("{to:?}").to_lowercase())
                            .build(),
                    )
                    .src(&*self.obj())
                    .build(),
                );
            }
            ClientEvent::Playing { rtp_info, range } => {
                gst::info!(CAT, imp = self, "playing: {:?} {:?}", rtp_info, range);
                let start = range
                    .as_deref()
                    .and_then(NptRange::parse)
                    .and_then(|r| r.start_position())
                    .and_then(npt_time)
                    .unwrap_or(gst::ClockTime::ZERO);
                let state = self.state.lock().unwrap();
                if state.duration.is_some() {
                    // Recorded media: each PLAY starts a segment at the answered position;
                    // RTP-Info says where its packets begin. The timeline starts anew.
                    self.sync.lock().unwrap().reset();
                    for (index, p) in &state.pads {
                        let seq = rtp_info
                            .iter()
                            .find(|i| i.stream == *index)
                            .and_then(|i| i.seq);
                        *p.signals.resegment.lock().unwrap() = Some((start, seq));
                        *p.signals.sender_report.lock().unwrap() = None;
                        p.signals.restart.store(true, Ordering::Relaxed);
                    }
                }
            }
            ClientEvent::Rtp {
                stream,
                packets,
                exclusive,
            } => on_rtp(&self.state, stream, packets, exclusive),
            ClientEvent::Dropped { packets } => {
                self.state.lock().unwrap().dropped += packets;
            }
            ClientEvent::SenderReport {
                stream,
                ntp,
                rtptime,
            } => {
                if let Some(p) = self.state.lock().unwrap().pads.get(&stream) {
                    *p.signals.sender_report.lock().unwrap() = Some((ntp, rtptime));
                }
            }
            ClientEvent::Announce {
                streams: Ok(streams),
            } => {
                gst::info!(CAT, imp = self, "the server announced a new description");
                let state = self.state.lock().unwrap();
                for info in &streams {
                    let Some(p) = state.pads.get(&info.index) else {
                        continue;
                    };
                    // Codec parameters (sprop-parameter-sets, config, ...) reach the pad; the
                    // RTP clock and timeline stay (the server keeps its session going).
                    if info.media.clock_rate != p.clock_rate {
                        gst::warning!(
                            CAT,
                            obj = p.pad,
                            "ANNOUNCE changes the clock rate {} -> {}: not followed",
                            p.clock_rate,
                            info.media.clock_rate
                        );
                        continue;
                    }
                    *p.signals.caps.lock().unwrap() = Some(stream_caps(&info.media));
                }
            }
            ClientEvent::Announce { streams: Err(e) } => {
                gst::warning!(CAT, imp = self, "ignoring an unusable ANNOUNCE: {}", e);
            }
            ClientEvent::Redirect { location } => {
                gst::info!(CAT, imp = self, "redirected to {}", redact_url(&location));
            }
            ClientEvent::Reconnecting {
                attempt,
                of,
                delay,
                reason,
            } => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "connection lost ({}), reconnecting {}/{} in {:?}",
                    reason,
                    attempt,
                    of,
                    delay
                );
                let _ = self.obj().post_message(crate::messages::reconnect(
                    &*self.obj(),
                    "rtspsrc2",
                    attempt,
                    of,
                    delay,
                    &reason,
                ));
            }
            ClientEvent::Reconnected => {
                gst::info!(CAT, imp = self, "reconnected");
                // The new session's RTP clocks and sequence numbers start anew.
                self.sync.lock().unwrap().reset();
                for p in self.state.lock().unwrap().pads.values() {
                    *p.signals.sender_report.lock().unwrap() = None;
                    p.signals.rebase.store(true, Ordering::Relaxed);
                    p.signals.restart.store(true, Ordering::Relaxed);
                }
                let _ = self
                    .obj()
                    .post_message(crate::messages::reconnected(&*self.obj(), "rtspsrc2"));
            }
            ClientEvent::Closed { reason } => {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Read,
                    ("The RTSP connection closed: {}", reason)
                );
            }
            ClientEvent::Error(err) => {
                let location = self.settings.lock().unwrap().client.location.clone();
                // A refused certificate says what would make it pass.
                let hint = match err {
                    ClientError::Tls {
                        certificate: true, ..
                    } => {
                        " (set tls-ca-file to the CA that signed it, or leave the check out of tls-validation-flags)"
                    }
                    _ => "",
                };
                gst::element_imp_error!(
                    self,
                    resource_error(&err),
                    (
                        "Could not play {}: {}{}",
                        redact_url(location.as_deref().unwrap_or_default()),
                        err,
                        hint
                    )
                );
            }
        }
    }

    fn add_stream_pad(&self, info: &StreamInfo) {
        let obj = self.obj();
        let templ = obj.pad_template("stream_%u").expect("template");
        let pad = gst::Pad::builder_from_template(&templ)
            .name(format!("stream_{}", info.index))
            .query_function(|pad, parent, query| {
                RtspSrc2::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .event_function(|pad, parent, event| {
                RtspSrc2::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_event(pad, event),
                )
            })
            .build();
        let stream_id = format!("{}/{}", redact_url(&info.control), info.index);
        let latency = Duration::from_millis(u64::from(self.settings.lock().unwrap().latency_ms));
        let state = Arc::downgrade(&self.state);
        let setup = StreamSetup {
            element: obj.clone().upcast(),
            cat: *CAT,
            caps: stream_caps(&info.media),
            stream_id,
            clock_rate: info.media.clock_rate,
            latency,
            sync: self.sync.clone(),
            on_segment: Some(Box::new(move |time, pts| {
                if let Some(state) = state.upgrade() {
                    state.lock().unwrap().play_base = Some((time, pts));
                }
            })),
        };
        let pad_state = match start_stream(&pad, setup) {
            Ok(p) => p,
            Err(e) => {
                gst::warning!(CAT, imp = self, "cannot start pad task: {}", e);
                return;
            }
        };
        let _ = obj.add_pad(&pad);
        self.state
            .lock()
            .unwrap()
            .pads
            .insert(info.index, pad_state);
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        match query.view_mut() {
            gst::QueryViewMut::Duration(q) if q.format() == gst::Format::Time => {
                let Some(d) = self.state.lock().unwrap().duration else {
                    return false;
                };
                q.set(d);
                true
            }
            gst::QueryViewMut::Position(q) if q.format() == gst::Format::Time => {
                let Some((time, start_rt)) = self.state.lock().unwrap().play_base else {
                    return false;
                };
                let Some(now) = self.obj().current_running_time() else {
                    return false;
                };
                q.set(time + now.saturating_sub(start_rt));
                true
            }
            gst::QueryViewMut::Seeking(q) if q.format() == gst::Format::Time => {
                let duration = self.state.lock().unwrap().duration;
                q.set(
                    duration.is_some(),
                    gst::ClockTime::ZERO,
                    duration.unwrap_or(gst::ClockTime::ZERO),
                );
                true
            }
            _ => crate::rtp_receive::src_query(self.obj().upcast_ref(), pad, query, || {
                self.settings.lock().unwrap().latency_ms
            }),
        }
    }

    fn src_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Seek(seek) => {
                let (_rate, flags, start_type, start, _stop_type, _stop) = seek.get();
                let start = match start {
                    gst::GenericFormattedValue::Time(Some(t))
                        if start_type == gst::SeekType::Set =>
                    {
                        t
                    }
                    _ => return false,
                };
                self.seek(start, flags.contains(gst::SeekFlags::FLUSH))
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    /// A seek on recorded media: PLAY with `Range: npt=START-` (RFC 2326 10.5).
    fn seek(&self, start: gst::ClockTime, flush: bool) -> bool {
        let (client, pads, duration) = {
            let state = self.state.lock().unwrap();
            let pads: Vec<(gst::Pad, Arc<Mutex<StreamWork>>)> = state
                .pads
                .values()
                .map(|p| (p.pad.clone(), p.work.clone()))
                .collect();
            (state.client.clone(), pads, state.duration)
        };
        let (Some(client), Some(duration)) = (client, duration) else {
            gst::debug!(CAT, imp = self, "not seekable (live, or not connected)");
            return false;
        };
        if start > duration {
            return false;
        }
        if flush {
            for (pad, _) in &pads {
                let _ = pad.push_event(gst::event::FlushStart::new());
            }
        }
        let range = format!("npt={:.3}-", start.seconds_f64());
        let result = client.play(Some(range));
        if flush {
            for (pad, work) in &pads {
                // Serialized with the stream's data, which more than one thread may push.
                let _work = work.lock().unwrap();
                let _ = pad.push_event(gst::event::FlushStop::new(true));
            }
        }
        match result {
            Ok(()) => true,
            Err(e) => {
                gst::element_imp_error!(self, gst::ResourceError::Seek, ("Seek failed: {}", e));
                false
            }
        }
    }

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let mut config = self.settings.lock().unwrap().client_config().map_err(|e| {
            gst::error_msg!(gst::ResourceError::Settings, ("Invalid setting: {}", e))
        })?;
        // The core's log records carry the element's name (`GST_DEBUG=lsrtsp:5` shows <src>).
        config.name = self.obj().name().to_string();
        let weak = self.obj().downgrade();
        let state = self.state.clone();
        let client = Client::start(config, move |event| match event {
            // The hot path needs the pads only: no reference to the element is taken per burst
            // (upgrading a weak reference takes a process-wide lock).
            ClientEvent::Rtp {
                stream,
                packets,
                exclusive,
            } => on_rtp(&state, stream, packets, exclusive),
            event => {
                if let Some(obj) = weak.upgrade() {
                    obj.imp().on_event(event);
                }
            }
        })
        .map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Failed,
                ("Cannot start the RTSP client: {}", e)
            )
        })?;
        self.state.lock().unwrap().client = Some(Arc::new(client));
        Ok(())
    }

    fn client(&self) -> Option<Arc<Client>> {
        self.state.lock().unwrap().client.clone()
    }

    /// Sends the request `call` makes and replies to `promise` with its outcome once answered,
    /// from the shared runtime: rtspsrc's contract for its get-parameter/set-parameter action
    /// signals.
    fn parameter_request<F>(
        &self,
        promise: gst::Promise,
        reply_name: &'static str,
        call: impl FnOnce(&Client) -> F,
    ) -> bool
    where
        F: Future<Output = Result<Vec<u8>, ClientError>> + Send + 'static,
    {
        let Some(client) = self.client() else {
            return false;
        };
        let answer = call(&client);
        crate::runtime::handle().spawn(async move {
            let reply = match answer.await {
                Ok(body) => gst::Structure::builder(reply_name)
                    .field("rtsp-result", 200i32)
                    .field("body", String::from_utf8_lossy(&body).into_owned())
                    .build(),
                Err(ClientError::Status { status, .. }) => gst::Structure::builder(reply_name)
                    .field("rtsp-result", i32::from(status))
                    .build(),
                Err(e) => gst::Structure::builder(reply_name)
                    .field("rtsp-result", -1i32)
                    .field("error", e.to_string())
                    .build(),
            };
            promise.reply(Some(reply));
        });
        true
    }

    fn stop(&self) {
        let (client, pads) = {
            let mut state = self.state.lock().unwrap();
            (state.client.take(), std::mem::take(&mut state.pads))
        };
        // TEARDOWN, bounded by teardown-timeout.
        drop(client);
        for (_, p) in pads {
            p.remove(self.obj().upcast_ref());
        }
    }

    /// PLAYING→PAUSED: PAUSE goes out, and the state change does not wait for its answer (a
    /// failure is a warning: the server keeps sending, which a paused pipeline tolerates).
    fn pause(&self) {
        let Some(client) = self.client() else { return };
        // Set now: a PLAY that follows is queued behind the PAUSE and must be sent.
        self.state.lock().unwrap().paused = true;
        let answer = client.pause_async();
        let obj = self.obj().downgrade();
        crate::runtime::handle().spawn(async move {
            if let Err(e) = answer.await
                && let Some(obj) = obj.upgrade()
            {
                gst::warning!(CAT, obj = obj, "PAUSE failed: {}", e);
            }
        });
    }

    /// PAUSED→PLAYING after a PAUSE: PLAY goes out without waiting; a failure is an error.
    fn resume(&self) {
        let Some(client) = self.client() else { return };
        if !std::mem::take(&mut self.state.lock().unwrap().paused) {
            return;
        }
        let answer = client.play_async(None);
        let obj = self.obj().downgrade();
        crate::runtime::handle().spawn(async move {
            if let Err(e) = answer.await
                && let Some(obj) = obj.upgrade()
            {
                gst::element_error!(
                    obj,
                    gst::ResourceError::Read,
                    ("PLAY after PAUSE failed: {}", e)
                );
            }
        });
    }

    fn stats(&self) -> gst::Structure {
        let state = self.state.lock().unwrap();
        let streams: Vec<gst::Structure> = state
            .client
            .as_ref()
            .map(|c| c.stats())
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let jb = state
                    .pads
                    .get(&i)
                    .map(|p| *p.signals.jitterbuffer.lock().unwrap())
                    .unwrap_or_default();
                gst::Structure::builder("stream")
                    .field("stream", i as u32)
                    .field("packets-received", s.packets_received)
                    .field("bytes-received", s.bytes_received)
                    .field("packets-lost", s.packets_lost)
                    .field("packets-late", jb.late)
                    .field("packets-duplicate", jb.duplicates)
                    .field("jitter-ms", s.jitter.as_secs_f64() * 1000.0)
                    .field(
                        "round-trip-ms",
                        s.round_trip.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
                    )
                    .field("sender-reports", s.sender_reports)
                    .field("invalid-packets", s.invalid_packets)
                    .field("packets-unknown-payload", s.unknown_payload_packets)
                    .field("packets-foreign-address", s.foreign_packets)
                    .field("packets-foreign-ssrc", s.foreign_ssrc_packets)
                    .field("packets-stray", jb.strays)
                    .build()
            })
            .collect();
        gst::Structure::builder("application/x-rtspsrc2-stats")
            .field("packets-dropped", state.dropped)
            .field("streams", gst::Array::new(streams))
            .build()
    }
}

impl ObjectImpl for RtspSrc2 {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut specs = ClientProps::param_specs(Role::Play);
            specs.extend([
                glib::ParamSpecUInt::builder("latency")
                    .nick("Latency")
                    .blurb("Milliseconds of jitter buffering (rtspsrc uses 2000; 200 covers reordering on real networks without making live video lag)")
                    .default_value(DEFAULT_LATENCY_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("timeout")
                    .nick("Timeout")
                    .blurb("Microseconds to wait for UDP data before trying the next protocol")
                    .default_value(DEFAULT_TIMEOUT_US)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("multicast-iface")
                    .nick("Multicast interface")
                    .blurb("IPv4 address of the interface to join multicast groups on ('lo' = 127.0.0.1)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-streams")
                    .nick("Maximum streams")
                    .blurb("Streams (SDP media) a description may list at most; a description with more is an error naming both numbers (each stream takes two interleaved channels, so at most 128)")
                    .minimum(1)
                    .maximum(crate::rtsp::client::MAX_STREAMS_LIMIT as u32)
                    .default_value(DEFAULT_MAX_STREAMS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Per stream: packets received, lost (RTCP's count), late and duplicate (dropped by the jitter buffer), with another payload type, from another address than the server's or of another SSRC than the sender's, far from the sequence with nothing following (all dropped), jitter, round-trip time (of RTSP requests; -1 before the first) and sender reports")
                    .read_only()
                    .build(),
            ]);
            specs
        });
        PROPERTIES.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            // As rtspsrc: get-parameter(name, content-type, promise) and
            // set-parameter(name, value, content-type, promise) return whether the request went
            // out; the promise gets a structure with `rtsp-result` (the status) and `body`.
            vec![
                glib::subclass::Signal::builder("get-parameter")
                    .param_types([
                        String::static_type(),
                        String::static_type(),
                        gst::Promise::static_type(),
                    ])
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let obj = args[0].get::<super::RtspSrc2>().expect("signal arg");
                        let name = args[1].get::<String>().expect("signal arg");
                        let promise = args[3].get::<gst::Promise>().expect("signal arg");
                        let body = format!("{name}\r\n").into_bytes();
                        let sent =
                            obj.imp()
                                .parameter_request(promise, "get-parameter-reply", |c| {
                                    c.get_parameter_async(body)
                                });
                        Some(sent.to_value())
                    })
                    .build(),
                glib::subclass::Signal::builder("set-parameter")
                    .param_types([
                        String::static_type(),
                        String::static_type(),
                        String::static_type(),
                        gst::Promise::static_type(),
                    ])
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let obj = args[0].get::<super::RtspSrc2>().expect("signal arg");
                        let name = args[1].get::<String>().expect("signal arg");
                        let value = args[2].get::<String>().expect("signal arg");
                        let promise = args[4].get::<gst::Promise>().expect("signal arg");
                        let body = format!("{name}: {value}\r\n").into_bytes();
                        let sent =
                            obj.imp()
                                .parameter_request(promise, "set-parameter-reply", |c| {
                                    let answer = c.set_parameter_async(body);
                                    async move { answer.await.map(|()| Vec::new()) }
                                });
                        Some(sent.to_value())
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        if s.client.set(pspec.name(), value) {
            return;
        }
        match pspec.name() {
            "latency" => s.latency_ms = value.get().expect("type checked"),
            "timeout" => s.timeout_us = value.get().expect("type checked"),
            "multicast-iface" => s.multicast_iface = value.get().expect("type checked"),
            "max-streams" => s.max_streams = value.get().expect("type checked"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats().to_value();
        }
        let s = self.settings.lock().unwrap();
        if let Some(value) = s.client.get(pspec.name()) {
            return value;
        }
        match pspec.name() {
            "latency" => s.latency_ms.to_value(),
            "timeout" => s.timeout_us.to_value(),
            "multicast-iface" => s.multicast_iface.to_value(),
            "max-streams" => s.max_streams.to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_element_flags(gst::ElementFlags::SOURCE);
    }
}

impl GstObjectImpl for RtspSrc2 {}

impl ElementImpl for RtspSrc2 {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "RTSP client source",
                "Source/Network",
                "Receives RTP streams from an RTSP server (UDP, multicast or TCP interleaved)",
                "gst-plugin-livestreaming developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
            LazyLock::new(|| vec![crate::rtp_receive::src_pad_template()]);
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused
            && let Err(err) = self.start()
        {
            self.post_error_message(err);
            return Err(gst::StateChangeError);
        }
        match transition {
            gst::StateChange::PausedToReady => self.stop(),
            gst::StateChange::PlayingToPaused => self.pause(),
            gst::StateChange::PausedToPlaying => self.resume(),
            _ => {}
        }
        let result = self.parent_change_state(transition)?;
        Ok(match transition {
            // A live source: no preroll.
            gst::StateChange::ReadyToPaused | gst::StateChange::PlayingToPaused => {
                gst::StateChangeSuccess::NoPreroll
            }
            _ => result,
        })
    }
}

impl URIHandlerImpl for RtspSrc2 {
    const URI_TYPE: gst::URIType = gst::URIType::Src;

    fn protocols() -> &'static [&'static str] {
        crate::rtsp_client_props::URI_PROTOCOLS
    }

    fn uri(&self) -> Option<String> {
        self.settings.lock().unwrap().client.location.clone()
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        self.settings.lock().unwrap().client.set_uri(uri)
    }
}
