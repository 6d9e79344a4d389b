//! `rtspclientsink2`: publishes its inputs to an RTSP server (ANNOUNCE + RECORD), a drop-in for
//! stock `rtspclientsink`.
//!
//! Each request pad gets, once its caps are known, an appsink and, for H.264 and Opus, a Rust
//! payloader ([`crate::rtp::payload`]) that makes each sample's RTP packets in the appsink
//! callback (no payloader element, no buffer per packet); other codecs get the stock RTP
//! payloader in front of the appsink (none for `application/x-rtp`, see
//! [`crate::payloading`]). The payloader's media description (the Rust payloader's, or the
//! stock payloader's output caps) becomes the stream's SDP; once every pad has one, the publisher
//! ([`crate::rtsp::client::record::Publisher`]) connects and records. The appsink callbacks only
//! queue packets (never block on the network); frames that do not fit are dropped whole and a
//! keyframe is asked for upstream.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::payloading::{self, PayloadChain, media_description, sample_packets};
use crate::rtp::payload::Payloader;
use crate::rtsp::client::record::{NtpClock, PublishConfig, PublishEvent, Publisher, Pushed};
use crate::rtsp::client::{ClientConfig, ClientError, redact_url};
use crate::rtsp::sdp::MediaDescription;
use crate::rtsp_client_props::{ClientProps, Role};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtspclientsink2",
        gst::DebugColorFlags::empty(),
        Some("RTSP client sink (publisher)"),
    )
});

const DEFAULT_QUEUE_SIZE: u32 = 4 * 1024 * 1024;
const DEFAULT_DRAIN_TIMEOUT_MS: u32 = 5000;
const DEFAULT_MTU: u32 = 1400;
const DEFAULT_LATENCY_MS: u32 = 2000;

/// The clock of the Sender Reports' NTP time, as stock rtspclientsink's `ntp-time-source`.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLsRtspClientSink2NtpTimeSource")]
pub enum NtpTimeSource {
    #[default]
    #[enum_value(name = "NTP time based on realtime clock", nick = "ntp")]
    Ntp = 0,
    #[enum_value(name = "UNIX time based on realtime clock", nick = "unix")]
    Unix = 1,
    #[enum_value(name = "Running time based on pipeline clock", nick = "running-time")]
    RunningTime = 2,
    #[enum_value(name = "Pipeline clock time", nick = "clock-time")]
    ClockTime = 3,
}

/// No `Debug`: the shared part holds a password.
#[derive(Clone)]
struct Settings {
    client: ClientProps,
    queue_size: u32,
    drain_timeout_ms: u32,
    mtu: u32,
    latency_ms: u32,
    ntp_time_source: NtpTimeSource,
    udp_buffer_size: i32,
    burst_latency_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            client: ClientProps::new(Role::Publish),
            queue_size: DEFAULT_QUEUE_SIZE,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            mtu: DEFAULT_MTU,
            latency_ms: DEFAULT_LATENCY_MS,
            ntp_time_source: NtpTimeSource::Ntp,
            udp_buffer_size: 0,
            burst_latency_ms: 0,
        }
    }
}

impl Settings {
    fn publish_config(&self, name: String) -> Result<PublishConfig, String> {
        let client = ClientConfig {
            name,
            ..self.client.client_config()?
        };
        Ok(PublishConfig {
            client,
            queue_bytes: self.queue_size as usize,
            drain_timeout: Duration::from_millis(u64::from(self.drain_timeout_ms)),
            ntp_clock: NtpClock::default(),
            udp_buffer_size: usize::try_from(self.udp_buffer_size)
                .ok()
                .filter(|&n| n > 0),
            burst_latency: Duration::from_millis(u64::from(self.burst_latency_ms)),
        })
    }
}

/// The internal chain behind one request pad, and its stream.
struct PadChain {
    chain: PayloadChain,
    /// The SDP description of the payloader's output.
    media: Option<MediaDescription>,
    /// Its stream in the publisher (pads in id order), once publishing.
    index: Option<usize>,
    /// The Rust payloader, when the pad's format has one (shared with the appsink callback).
    native: NativeSlot,
}

/// A pad's Rust payloader; `None`: the stock payloader (or none) in front of the appsink.
type NativeSlot = Arc<Mutex<Option<Payloader>>>;

#[derive(Default)]
struct State {
    pads: BTreeMap<usize, PadChain>,
    next_pad: usize,
    /// Pads that saw EOS.
    eos: BTreeSet<usize>,
}

#[derive(Default)]
pub struct RtspClientSink2 {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Separate from `state` so the streaming threads take only this lock per buffer.
    publisher: Mutex<Option<Arc<Publisher>>>,
}

#[glib::object_subclass]
impl ObjectSubclass for RtspClientSink2 {
    const NAME: &'static str = "GstLsRtspClientSink2";
    type Type = super::RtspClientSink2;
    type ParentType = gst::Bin;
    type Interfaces = (gst::URIHandler,);
}

impl RtspClientSink2 {
    fn publisher(&self) -> Option<Arc<Publisher>> {
        self.publisher.lock().unwrap().clone()
    }

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let mut config = settings
            .publish_config(self.obj().name().to_string())
            .map_err(|e| {
                gst::error_msg!(gst::ResourceError::Settings, ("Invalid setting: {}", e))
            })?;
        config.ntp_clock = self.ntp_clock(settings.ntp_time_source);
        let location = redact_url(&config.client.url).into_owned();
        let mut state = self.state.lock().unwrap();
        if state.pads.is_empty() {
            return Err(gst::error_msg!(
                gst::CoreError::Pad,
                ("No sink pad was requested: nothing to publish")
            ));
        }
        let weak = self.obj().downgrade();
        let publisher = Publisher::start(config, state.pads.len(), move |event| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().on_event(event);
            }
        });
        state.eos.clear();
        for (index, chain) in state.pads.values_mut().enumerate() {
            chain.index = Some(index);
            if let Some(media) = &chain.media {
                publisher.set_media(index, media.clone());
            }
        }
        gst::info!(
            CAT,
            imp = self,
            "publishing {} streams to {location}",
            state.pads.len()
        );
        *self.publisher.lock().unwrap() = Some(Arc::new(publisher));
        Ok(())
    }

    /// The Sender Reports' clock for `ntp-time-source`: the wall clock since 1900 (`ntp`) or
    /// 1970 (`unix`), the pipeline's running time or its clock's time (none before the element
    /// has a clock: no Sender Report then).
    fn ntp_clock(&self, source: NtpTimeSource) -> NtpClock {
        let weak = self.obj().downgrade();
        let pipeline_time = move |running: bool| {
            let obj = weak.upgrade()?;
            let now = obj.clock()?.time();
            let time = if running {
                now.checked_sub(obj.base_time()?)?
            } else {
                now
            };
            Some(crate::rtp::ntp::duration_to_ntp(Duration::from_nanos(
                time.nseconds(),
            )))
        };
        match source {
            NtpTimeSource::Ntp => NtpClock::default(),
            NtpTimeSource::Unix => NtpClock::new(|| {
                let since = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?;
                Some(crate::rtp::ntp::duration_to_ntp(since))
            }),
            NtpTimeSource::RunningTime => NtpClock::new(move || pipeline_time(true)),
            NtpTimeSource::ClockTime => NtpClock::new(move || pipeline_time(false)),
        }
    }

    fn pad_of_index(&self, index: usize) -> Option<gst::GhostPad> {
        let state = self.state.lock().unwrap();
        state
            .pads
            .values()
            .find(|c| c.index == Some(index))
            .map(|c| c.chain.ghost.clone())
    }

    fn request_keyframe(pad: &gst::GhostPad) {
        gst::debug!(CAT, obj = pad, "requesting a keyframe upstream");
        let event = gst_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        pad.push_event(event);
    }

    fn on_event(&self, event: PublishEvent) {
        let obj = self.obj();
        match event {
            PublishEvent::Recording { transport } => {
                gst::info!(CAT, imp = self, "recording over {:?}", transport);
            }
            PublishEvent::Reconnecting {
                attempt,
                of,
                delay,
                reason,
            } => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "connection lost ({}): reconnection attempt {} of {} in {:?}",
                    reason,
                    attempt,
                    of,
                    delay
                );
                let _ = obj.post_message(crate::messages::reconnect(
                    &*obj,
                    "rtspclientsink2",
                    attempt,
                    of,
                    delay,
                    &reason,
                ));
            }
            PublishEvent::Reconnected => {
                gst::info!(CAT, imp = self, "reconnected");
                let _ = obj.post_message(crate::messages::reconnected(&*obj, "rtspclientsink2"));
            }
            PublishEvent::KeyframeWanted { stream } => {
                if let Some(pad) = self.pad_of_index(stream) {
                    Self::request_keyframe(&pad);
                }
            }
            PublishEvent::Error(e) => {
                let location = self
                    .settings
                    .lock()
                    .unwrap()
                    .client
                    .location
                    .as_deref()
                    .map(|l| redact_url(l).into_owned())
                    .unwrap_or_default();
                match &e {
                    ClientError::Unauthorized(_)
                    | ClientError::Status { status: 401, .. }
                    | ClientError::Status { status: 403, .. } => gst::element_imp_error!(
                        self,
                        gst::ResourceError::NotAuthorized,
                        ("Not authorized to publish to {}: {}", location, e)
                    ),
                    ClientError::Status { .. } => gst::element_imp_error!(
                        self,
                        gst::ResourceError::OpenWrite,
                        ("The server refused publishing to {}: {}", location, e)
                    ),
                    _ => gst::element_imp_error!(
                        self,
                        gst::ResourceError::Write,
                        ("Could not publish to {}: {}", location, e)
                    ),
                }
            }
        }
    }

    /// Builds (or rebuilds, on a codec change) the payloader chain for a pad's new caps: the
    /// Rust payloader where the format has one (rebuilt on every caps, keeping its SSRC and
    /// sequence numbers), else the stock one.
    fn ensure_chain(&self, pad: &gst::GhostPad, caps: &gst::Caps) -> Result<(), String> {
        let mtu = self.settings.lock().unwrap().mtu;
        let mut state = self.state.lock().unwrap();
        let Some((&id, pad_chain)) = state.pads.iter_mut().find(|(_, c)| &c.chain.ghost == pad)
        else {
            return Err("unknown pad".into());
        };
        let media = {
            let mut slot = pad_chain.native.lock().unwrap();
            let rtp = slot.as_ref().map(|p| p.rtp().clone());
            *slot = payloading::native_payloader(caps, payloading::payload_type(id), mtu, rtp);
            pad_chain.chain.ensure_with(
                self.obj().upcast_ref(),
                caps,
                id,
                mtu,
                *CAT,
                "publish",
                slot.is_some(),
            )?;
            slot.as_mut().and_then(|p| {
                p.take_media_change();
                p.media()
            })
        };
        drop(state);
        if let Some(media) = media {
            self.set_media(id, media);
        }
        Ok(())
    }

    /// Stream `id`'s media description is `desc` (before publishing: for the ANNOUNCE).
    fn set_media(&self, id: usize, desc: MediaDescription) {
        let index = {
            let mut state = self.state.lock().unwrap();
            let Some(chain) = state.pads.get_mut(&id) else {
                return;
            };
            chain.media = Some(desc.clone());
            chain.index
        };
        if let (Some(index), Some(publisher)) = (index, self.publisher()) {
            publisher.set_media(index, desc);
        }
    }

    fn sink_event(&self, pad: &gst::GhostPad, event: gst::Event) -> bool {
        payloading::sink_event(self.obj().upcast_ref(), pad, event, "publish", |caps| {
            self.ensure_chain(pad, caps)
        })
    }

    fn on_rtp_caps(&self, id: usize, caps: &gst::CapsRef, native: &NativeSlot) {
        if native.lock().unwrap().is_some() {
            // The elementary stream's caps: the Rust payloader describes the stream.
            return;
        }
        let Some(desc) = media_description(caps) else {
            gst::warning!(
                CAT,
                imp = self,
                "stream {} has unusable RTP caps {}",
                id,
                caps
            );
            return;
        };
        self.set_media(id, desc);
    }

    fn on_sample(&self, id: usize, sample: &gst::Sample, due: Instant, native: &NativeSlot) {
        let Some(publisher) = self.publisher() else {
            return;
        };
        let index = self
            .state
            .lock()
            .unwrap()
            .pads
            .get(&id)
            .and_then(|c| c.index);
        let Some(index) = index else { return };
        let mut want_keyframe = false;
        let mut push = |packets| {
            want_keyframe |=
                publisher.push(index, packets, due) == (Pushed::Dropped { first: true });
        };
        let changed = match native.lock().unwrap().as_mut() {
            Some(pay) => payloading::payload_sample(pay, sample, &mut push),
            None => {
                push(sample_packets(sample));
                None
            }
        };
        if let Some(media) = changed {
            self.set_media(id, media);
        }
        if want_keyframe {
            let pad = self
                .state
                .lock()
                .unwrap()
                .pads
                .get(&id)
                .map(|c| c.chain.ghost.clone());
            if let Some(pad) = pad {
                Self::request_keyframe(&pad);
            }
        }
    }

    /// EOS on pad `id`: once every pad has seen it, what is queued is sent and TEARDOWN follows
    /// (bounded); only then does this pad's EOS go on to the bin.
    fn on_eos(&self, id: usize) {
        let all = {
            let mut state = self.state.lock().unwrap();
            state.eos.insert(id);
            state.pads.keys().all(|k| state.eos.contains(k))
        };
        if all && let Some(publisher) = self.publisher() {
            gst::debug!(
                CAT,
                imp = self,
                "end of stream on every pad: draining, then TEARDOWN"
            );
            publisher.finish();
        }
    }

    fn stats_structure(&self) -> gst::Structure {
        let stats = self.publisher().map(|p| p.stats()).unwrap_or_default();
        let streams: Vec<gst::Structure> = stats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let rtt_ms = s.round_trip.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
                gst::Structure::builder("stream")
                    .field("stream", i as u32)
                    .field("packets-sent", s.packets_sent)
                    .field("bytes-sent", s.bytes_sent)
                    .field("frames-dropped", s.frames_dropped)
                    .field("frames-held", s.frames_held)
                    .field("packets-dropped", s.packets_dropped)
                    .field("ssrc", s.ssrc.unwrap_or(0))
                    .field("fraction-lost", u32::from(s.fraction_lost.unwrap_or(0)))
                    .field("cumulative-lost", s.cumulative_lost.unwrap_or(0))
                    .field("jitter", s.jitter.unwrap_or(0))
                    .field("rtt-ms", rtt_ms)
                    .build()
            })
            .collect();
        gst::Structure::builder("application/x-rtspclientsink2-stats")
            .field("streams", gst::Array::new(streams))
            .build()
    }
}

impl ObjectImpl for RtspClientSink2 {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut specs = ClientProps::param_specs(Role::Publish);
            specs.extend([
                glib::ParamSpecUInt::builder("queue-size")
                    .nick("Queue size")
                    .blurb("Bytes of RTP queued for the server at most; when full, whole frames are dropped (counted in stats) and a keyframe is asked for")
                    .minimum(1)
                    .default_value(DEFAULT_QUEUE_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("drain-timeout")
                    .nick("Drain timeout")
                    .blurb("At end of stream, milliseconds the queue may take to be sent before TEARDOWN")
                    .default_value(DEFAULT_DRAIN_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("mtu")
                    .nick("MTU")
                    .blurb("Maximum size of the RTP packets made by the payloaders")
                    .minimum(64)
                    .default_value(DEFAULT_MTU)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("latency")
                    .nick("Latency")
                    .blurb("Accepted for rtspclientsink compatibility (its receive-side buffering); no effect: a publisher buffers nothing but its queue (queue-size)")
                    .default_value(DEFAULT_LATENCY_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder::<NtpTimeSource>("ntp-time-source")
                    .nick("NTP time source")
                    .blurb("Clock of the NTP time in Sender Reports: ntp (wall clock since 1900), unix (since 1970), running-time (the pipeline's), clock-time (its clock's)")
                    .default_value(NtpTimeSource::Ntp)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("udp-buffer-size")
                    .nick("UDP buffer size")
                    .blurb("Bytes of kernel buffer for the UDP sockets: send for RTP, receive for RTCP (0 = 1 MiB)")
                    .minimum(0)
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("burst-latency")
                    .nick("Burst latency")
                    .blurb(
                        "Over TCP, milliseconds a frame of a stream that is not video (an audio \
                         packet) may wait to be sent in one write with the next video frame; 0 \
                         sends each frame once complete. Trades audio latency for CPU: at 30 fps \
                         and 20 ms audio, 40 makes one write per video frame instead of one per \
                         packet",
                    )
                    .maximum(1000)
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Per stream: packets and bytes sent, frames and packets dropped, frames held for the next video frame (burst-latency), the server's receiver report figures (loss, jitter, round trip)")
                    .read_only()
                    .build(),
            ]);
            specs
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        if s.client.set(pspec.name(), value) {
            return;
        }
        match pspec.name() {
            "queue-size" => s.queue_size = value.get().expect("type checked"),
            "drain-timeout" => s.drain_timeout_ms = value.get().expect("type checked"),
            "mtu" => s.mtu = value.get().expect("type checked"),
            "latency" => s.latency_ms = value.get().expect("type checked"),
            "ntp-time-source" => s.ntp_time_source = value.get().expect("type checked"),
            "udp-buffer-size" => s.udp_buffer_size = value.get().expect("type checked"),
            "burst-latency" => s.burst_latency_ms = value.get().expect("type checked"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats_structure().to_value();
        }
        let s = self.settings.lock().unwrap();
        if let Some(value) = s.client.get(pspec.name()) {
            return value;
        }
        match pspec.name() {
            "queue-size" => s.queue_size.to_value(),
            "drain-timeout" => s.drain_timeout_ms.to_value(),
            "mtu" => s.mtu.to_value(),
            "latency" => s.latency_ms.to_value(),
            "ntp-time-source" => s.ntp_time_source.to_value(),
            "udp-buffer-size" => s.udp_buffer_size.to_value(),
            "burst-latency" => s.burst_latency_ms.to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for RtspClientSink2 {}

impl ElementImpl for RtspClientSink2 {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "RTSP client sink",
                "Sink/Network",
                "Publishes its inputs to an RTSP server (ANNOUNCE and RECORD over UDP or TCP-interleaved RTP)",
                "gst-plugin-livestreaming developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
            LazyLock::new(|| vec![crate::payloading::sink_pad_template()]);
        TEMPLATES.as_ref()
    }

    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        if self.publisher().is_some() {
            // The streams are announced once (ANNOUNCE's SDP); adding one would take a new
            // ANNOUNCE and SETUP, which servers handle unevenly: refused, visibly.
            gst::element_imp_warning!(
                self,
                gst::CoreError::Pad,
                ("Cannot add a stream while publishing"),
                [
                    "sink pads must be requested before the element leaves READY: the streams were announced when it started"
                ]
            );
            return None;
        }
        let mut state = self.state.lock().unwrap();
        let State { pads, next_pad, .. } = &mut *state;
        let id = payloading::request_pad_id(self.obj().upcast_ref(), *CAT, name, next_pad, |id| {
            pads.contains_key(&id)
        })?;

        let weak = self.obj().downgrade();
        let weak_eos = weak.clone();
        let weak_caps = weak.clone();
        let native: NativeSlot = Arc::default();
        let (native_sample, native_caps) = (native.clone(), native.clone());
        let appsink = PayloadChain::appsink(
            id,
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(obj) = weak.upgrade() else {
                        return Err(gst::FlowError::Flushing);
                    };
                    let due = payloading::sample_due(sink, &sample);
                    obj.imp().on_sample(id, &sample, due, &native_sample);
                    Ok(gst::FlowSuccess::Ok)
                })
                .eos(move |_| {
                    if let Some(obj) = weak_eos.upgrade() {
                        obj.imp().on_eos(id);
                    }
                })
                .build(),
            move |caps| {
                if let Some(obj) = weak_caps.upgrade() {
                    obj.imp().on_rtp_caps(id, caps, &native_caps);
                }
            },
        )?;

        let ghost = gst::GhostPad::builder_from_template(templ)
            .name(format!("sink_{id}"))
            .event_function(|pad, parent, event| {
                RtspClientSink2::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .build();
        let obj = self.obj();
        obj.add(&appsink).ok()?;
        let _ = appsink.sync_state_with_parent();
        state.pads.insert(
            id,
            PadChain {
                chain: PayloadChain::new(ghost.clone(), appsink),
                media: None,
                index: None,
                native,
            },
        );
        drop(state);
        ghost.set_active(true).ok()?;
        obj.add_pad(&ghost).ok()?;
        Some(ghost.upcast())
    }

    fn release_pad(&self, pad: &gst::Pad) {
        let chain = {
            let mut state = self.state.lock().unwrap();
            let id = state
                .pads
                .iter()
                .find(|(_, c)| c.chain.ghost.upcast_ref::<gst::Pad>() == pad)
                .map(|(id, _)| *id);
            id.and_then(|id| state.pads.remove(&id))
        };
        let Some(chain) = chain else {
            return;
        };
        chain.chain.remove(self.obj().upcast_ref());
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
        let result = self.parent_change_state(transition);
        if transition == gst::StateChange::PausedToReady || result.is_err() {
            // TEARDOWN (bounded by teardown-timeout) when the last reference goes.
            let publisher = self.publisher.lock().unwrap().take();
            drop(publisher);
            let mut state = self.state.lock().unwrap();
            for chain in state.pads.values_mut() {
                chain.index = None;
            }
        }
        if transition == gst::StateChange::ReadyToNull {
            let mut state = self.state.lock().unwrap();
            for chain in state.pads.values_mut() {
                chain.chain.reset(self.obj().upcast_ref());
                chain.media = None;
                *chain.native.lock().unwrap() = None;
            }
        }
        result
    }
}

impl BinImpl for RtspClientSink2 {}

impl URIHandlerImpl for RtspClientSink2 {
    const URI_TYPE: gst::URIType = gst::URIType::Sink;

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
