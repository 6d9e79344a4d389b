//! `rtspserversink`: a sink that is an RTSP server.
//!
//! Each request pad gets, once its caps are known, the stock RTP payloader for the codec (none for
//! `application/x-rtp`) and an appsink. The appsink callback hands the packets to
//! [`crate::rtsp::server::Server::push`], which fans them out without blocking; the payloader's
//! output caps become the stream's SDP media description.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::payloading::{self, PayloadChain, media_description, sample_packets};
use crate::rtsp::server::{MulticastConfig, Server, ServerConfig, ServerEvent, ServerStats};
use crate::rtsp_server_props::{self as props, Role, ServerProps};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtspserversink",
        gst::DebugColorFlags::empty(),
        Some("RTSP server sink"),
    )
});

const DEFAULT_CLIENT_QUEUE_SIZE: u32 = 4 * 1024 * 1024;
const DEFAULT_CLIENT_STALL_TIMEOUT: u32 = 5000;
const DEFAULT_BURST_LATENCY: u32 = 0;
const DEFAULT_MTU: u32 = 1400;
const DEFAULT_MCAST_ADDRESS_MIN: &str = "224.3.0.1";
const DEFAULT_MCAST_ADDRESS_MAX: &str = "224.3.0.254";
const DEFAULT_MCAST_PORT_MIN: u32 = 5000;
const DEFAULT_MCAST_PORT_MAX: u32 = 5999;
const DEFAULT_MCAST_TTL: u32 = 1;

/// No `Debug`: the shared part holds passwords.
#[derive(Clone)]
struct Settings {
    /// Address, port, mount point, protocols, session timeout, limits, access, TLS.
    server: ServerProps,
    client_queue_size: u32,
    client_stall_timeout: u32,
    burst_latency: u32,
    mtu: u32,
    mcast_address_min: String,
    mcast_address_max: String,
    mcast_port_min: u32,
    mcast_port_max: u32,
    mcast_ttl: u32,
    mcast_iface: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerProps::new(Role::Play),
            client_queue_size: DEFAULT_CLIENT_QUEUE_SIZE,
            client_stall_timeout: DEFAULT_CLIENT_STALL_TIMEOUT,
            burst_latency: DEFAULT_BURST_LATENCY,
            mtu: DEFAULT_MTU,
            mcast_address_min: DEFAULT_MCAST_ADDRESS_MIN.into(),
            mcast_address_max: DEFAULT_MCAST_ADDRESS_MAX.into(),
            mcast_port_min: DEFAULT_MCAST_PORT_MIN,
            mcast_port_max: DEFAULT_MCAST_PORT_MAX,
            mcast_ttl: DEFAULT_MCAST_TTL,
            mcast_iface: None,
        }
    }
}

impl Settings {
    fn server_config(&self) -> Result<ServerConfig, String> {
        let ipv4 = |name: &str, v: &str| {
            Ipv4Addr::from_str(v).map_err(|_| format!("{name} '{v}' is not an IPv4 address"))
        };
        let multicast = MulticastConfig {
            address_min: ipv4("multicast-address-min", &self.mcast_address_min)?,
            address_max: ipv4("multicast-address-max", &self.mcast_address_max)?,
            port_min: self.mcast_port_min as u16,
            port_max: self.mcast_port_max as u16,
            ttl: self.mcast_ttl as u8,
            iface: self
                .mcast_iface
                .as_deref()
                .map(|v| ipv4("multicast-iface", v))
                .transpose()?,
        };
        if !multicast.address_min.is_multicast() || !multicast.address_max.is_multicast() {
            return Err("the multicast address range must lie in 224.0.0.0/4".into());
        }
        if multicast.address_min > multicast.address_max || multicast.port_min >= multicast.port_max
        {
            return Err("the multicast address or port range is empty".into());
        }
        Ok(ServerConfig {
            multicast,
            client_queue_bytes: self.client_queue_size as usize,
            client_stall_timeout: Duration::from_millis(u64::from(self.client_stall_timeout)),
            burst_latency: Duration::from_millis(u64::from(self.burst_latency)),
            ..self.server.server_config()?
        })
    }
}

#[derive(Default)]
struct State {
    pads: BTreeMap<usize, PayloadChain>,
    next_pad: usize,
}

#[derive(Default)]
pub struct RtspServerSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Separate from `state` so the streaming threads take only this lock per buffer.
    server: Mutex<Option<Arc<Server>>>,
}

#[glib::object_subclass]
impl ObjectSubclass for RtspServerSink {
    const NAME: &'static str = "GstLsRtspServerSink";
    type Type = super::RtspServerSink;
    type ParentType = gst::Bin;
}

impl RtspServerSink {
    fn server(&self) -> Option<Arc<Server>> {
        self.server.lock().unwrap().clone()
    }

    fn start_server(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let mut config = settings.server_config().map_err(|e| {
            gst::error_msg!(gst::ResourceError::Settings, ("Invalid setting: {}", e))
        })?;
        // The core's records (category lsrtsp) carry the element's name.
        config.name = self.obj().name().to_string();
        props::set_authorize_hook(&mut config, self.obj().upcast_ref());
        let bind = std::net::SocketAddr::new(config.address, config.port);
        let (scheme, mount_point) = (config.scheme(), config.mount_point.clone());
        let weak = self.obj().downgrade();
        let server = Server::start(config, move |event| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().on_server_event(event);
            }
        })
        .map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenReadWrite,
                ("Could not listen for RTSP on {}: {}", bind, e)
            )
        })?;
        let ids: Vec<usize> = self.state.lock().unwrap().pads.keys().copied().collect();
        for id in ids {
            server.add_stream(id).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenReadWrite,
                    ("Could not bind UDP ports for stream {}: {}", id, e)
                )
            })?;
        }
        gst::info!(
            CAT,
            imp = self,
            "RTSP server listening on {scheme}://{}{mount_point}",
            server.local_addr()
        );
        *self.server.lock().unwrap() = Some(Arc::new(server));
        self.obj().notify("bound-port");
        Ok(())
    }

    fn on_server_event(&self, event: ServerEvent) {
        match event {
            ServerEvent::KeyframeRequest { stream } => {
                let pad = self
                    .state
                    .lock()
                    .unwrap()
                    .pads
                    .get(&stream)
                    .map(|c| c.ghost.clone());
                if let Some(pad) = pad {
                    gst::debug!(CAT, obj = pad, "requesting a keyframe upstream");
                    let event = gst_video::UpstreamForceKeyUnitEvent::builder()
                        .all_headers(true)
                        .build();
                    pad.push_event(event);
                }
            }
        }
    }

    /// Builds (or rebuilds, on a codec change) the payloader chain for a pad's new caps.
    fn ensure_chain(&self, pad: &gst::GhostPad, caps: &gst::Caps) -> Result<(), String> {
        let mtu = self.settings.lock().unwrap().mtu;
        let mut state = self.state.lock().unwrap();
        let Some((&id, chain)) = state.pads.iter_mut().find(|(_, c)| &c.ghost == pad) else {
            return Err("unknown pad".into());
        };
        chain.ensure(self.obj().upcast_ref(), caps, id, mtu, *CAT, "stream")
    }

    fn sink_event(&self, pad: &gst::GhostPad, event: gst::Event) -> bool {
        payloading::sink_event(self.obj().upcast_ref(), pad, event, "stream", |caps| {
            self.ensure_chain(pad, caps)
        })
    }

    fn on_rtp_caps(&self, id: usize, caps: &gst::CapsRef) {
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
        if let Some(server) = self.server() {
            server.set_stream_description(id, desc);
        }
    }

    fn stats_structure(stats: &ServerStats) -> gst::Structure {
        let clients: Vec<gst::Structure> = stats
            .clients
            .iter()
            .map(|c| {
                let streams: Vec<gst::Structure> = c
                    .streams
                    .iter()
                    .map(|s| {
                        gst::Structure::builder("stream")
                            .field("stream", s.stream as u32)
                            .field("packets-sent", s.packets_sent)
                            .field("bytes-sent", s.bytes_sent)
                            .field("packets-dropped", s.packets_dropped)
                            .field("bursts-sent", s.bursts_sent)
                            .field("rtcp-reports", s.rtcp_reports)
                            .field("fraction-lost", s.fraction_lost)
                            .field("cumulative-lost", s.cumulative_lost)
                            .field("jitter-ms", s.jitter.as_secs_f64() * 1000.0)
                            .field("rtt-ms", s.rtt.map_or(-1.0, |r| r.as_secs_f64() * 1000.0))
                            .build()
                    })
                    .collect();
                gst::Structure::builder("client")
                    .field("session", &c.session)
                    .field("address", &c.address)
                    .field("transport", &c.transport)
                    .field("playing", c.playing)
                    .field(
                        "bytes-sent",
                        c.streams.iter().map(|s| s.bytes_sent).sum::<u64>(),
                    )
                    .field(
                        "packets-sent",
                        c.streams.iter().map(|s| s.packets_sent).sum::<u64>(),
                    )
                    .field(
                        "packets-dropped",
                        c.streams.iter().map(|s| s.packets_dropped).sum::<u64>(),
                    )
                    .field("streams", gst::Array::new(streams))
                    .build()
            })
            .collect();
        gst::Structure::builder("application/x-rtspserversink-stats")
            .field("connections", stats.connections as u32)
            .field("connections-total", stats.connections_total)
            .field("connections-refused", stats.connections_refused)
            .field(
                "connections-refused-per-address",
                stats.connections_refused_per_address,
            )
            .field("connections-idle-closed", stats.connections_idle_closed)
            .field("requests-timed-out", stats.requests_timed_out)
            .field("requests-too-large", stats.requests_too_large)
            .field("sessions-refused", stats.sessions_refused)
            .field("interleaved-ignored", stats.interleaved_ignored)
            .field("sessions", stats.clients.len() as u32)
            .field("sessions-timed-out", stats.sessions_timed_out)
            .field("clients-disconnected-slow", stats.clients_disconnected_slow)
            .field("frames-dropped", stats.frames_dropped)
            .field("clients", gst::Array::new(clients))
            .build()
    }
}

impl ObjectImpl for RtspServerSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            // address, port, mount-point, protocols, session-timeout, limits, auth, TLS: shared
            // with rtspserversrc.
            let mut specs = ServerProps::param_specs(Role::Play);
            specs.extend([
                props::bound_port_spec(),
                glib::ParamSpecUInt::builder("client-queue-size")
                    .nick("Client queue size")
                    .blurb("Bytes of media queued per TCP client; when full, whole frames are dropped and the client resumes at the next keyframe")
                    .minimum(64 * 1024)
                    .default_value(DEFAULT_CLIENT_QUEUE_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("client-stall-timeout")
                    .nick("Client stall timeout")
                    .blurb("Milliseconds a TCP client may accept no data before it is disconnected")
                    .minimum(100)
                    .default_value(DEFAULT_CLIENT_STALL_TIMEOUT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("burst-latency")
                    .nick("Burst latency")
                    .blurb(
                        "Milliseconds a complete frame may wait to be sent to clients together \
                         with the frames that follow it (one write per TCP client, one sendmmsg \
                         per UDP client for all of them); 0 sends each frame once complete. \
                         Trades latency for CPU at many clients: at 30 fps, 40 sends two frames \
                         per write, halving the writes",
                    )
                    .maximum(1000)
                    .default_value(DEFAULT_BURST_LATENCY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("mtu")
                    .nick("MTU")
                    .blurb("Maximum size of one RTP packet in bytes (payloader mtu)")
                    .minimum(128)
                    .maximum(65000)
                    .default_value(DEFAULT_MTU)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("multicast-address-min")
                    .nick("Multicast address min")
                    .blurb("First IPv4 multicast group address handed to multicast clients")
                    .default_value(Some(DEFAULT_MCAST_ADDRESS_MIN))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("multicast-address-max")
                    .nick("Multicast address max")
                    .blurb("Last IPv4 multicast group address handed to multicast clients")
                    .default_value(Some(DEFAULT_MCAST_ADDRESS_MAX))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("multicast-port-min")
                    .nick("Multicast port min")
                    .blurb("First UDP port of multicast groups (RTP even, RTCP odd)")
                    .minimum(1024)
                    .maximum(65534)
                    .default_value(DEFAULT_MCAST_PORT_MIN)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("multicast-port-max")
                    .nick("Multicast port max")
                    .blurb("Last UDP port of multicast groups")
                    .minimum(1025)
                    .maximum(65535)
                    .default_value(DEFAULT_MCAST_PORT_MAX)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("multicast-ttl")
                    .nick("Multicast TTL")
                    .blurb("Time-to-live of multicast packets")
                    .minimum(1)
                    .maximum(255)
                    .default_value(DEFAULT_MCAST_TTL)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("multicast-iface")
                    .nick("Multicast interface")
                    .blurb("IPv4 address of the interface to send multicast from (NULL = routing table)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Server and per-client statistics: transports, packets and bytes sent, drops, RTCP receiver report figures")
                    .read_only()
                    .build(),
            ]);
            specs
        });
        PROPERTIES.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![
                // Tell every connected client to go to another URL (RTSP REDIRECT).
                glib::subclass::Signal::builder("redirect")
                    .param_types([String::static_type()])
                    .return_type::<u32>()
                    .action()
                    .class_handler(|args| {
                        let obj = args[0].get::<super::RtspServerSink>().expect("signal arg");
                        let location = args[1].get::<String>().expect("signal arg");
                        let told = obj
                            .imp()
                            .server()
                            .map_or(0, |s| s.redirect(&location) as u32);
                        Some(told.to_value())
                    })
                    .build(),
                // Decide each request but OPTIONS, after its credentials were checked:
                // (user or NULL when no users are set, method, path with query such as
                // "/live/stream=0" or "/live?token=abc", client IP address) -> TRUE to allow.
                // FALSE answers 403. The first handler returning FALSE ends the emission; with
                // no handler every request is allowed. Emitted on one of the plugin's runtime
                // threads, never the application's: return quickly and do not block.
                props::authorize_signal(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        if s.server.set(pspec.name(), value) {
            return;
        }
        let string = || {
            value
                .get::<Option<String>>()
                .expect("type checked")
                .unwrap_or_default()
        };
        match pspec.name() {
            "client-queue-size" => s.client_queue_size = value.get().expect("type checked"),
            "client-stall-timeout" => s.client_stall_timeout = value.get().expect("type checked"),
            "burst-latency" => s.burst_latency = value.get().expect("type checked"),
            "mtu" => s.mtu = value.get().expect("type checked"),
            "multicast-address-min" => s.mcast_address_min = string(),
            "multicast-address-max" => s.mcast_address_max = string(),
            "multicast-port-min" => s.mcast_port_min = value.get().expect("type checked"),
            "multicast-port-max" => s.mcast_port_max = value.get().expect("type checked"),
            "multicast-ttl" => s.mcast_ttl = value.get().expect("type checked"),
            "multicast-iface" => s.mcast_iface = value.get().expect("type checked"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        if let Some(v) = s.server.get(pspec.name()) {
            return v;
        }
        match pspec.name() {
            "bound-port" => self
                .server()
                .map_or(-1, |srv| i32::from(srv.local_addr().port()))
                .to_value(),
            "client-queue-size" => s.client_queue_size.to_value(),
            "client-stall-timeout" => s.client_stall_timeout.to_value(),
            "burst-latency" => s.burst_latency.to_value(),
            "mtu" => s.mtu.to_value(),
            "multicast-address-min" => s.mcast_address_min.to_value(),
            "multicast-address-max" => s.mcast_address_max.to_value(),
            "multicast-port-min" => s.mcast_port_min.to_value(),
            "multicast-port-max" => s.mcast_port_max.to_value(),
            "multicast-ttl" => s.mcast_ttl.to_value(),
            "multicast-iface" => s.mcast_iface.to_value(),
            "stats" => {
                let stats = self.server().map(|srv| srv.stats()).unwrap_or_default();
                Self::stats_structure(&stats).to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for RtspServerSink {}

impl ElementImpl for RtspServerSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "RTSP server sink",
                "Sink/Network",
                "Serves its inputs to RTSP clients (UDP, multicast and TCP-interleaved RTP)",
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
        let mut state = self.state.lock().unwrap();
        let State { pads, next_pad } = &mut *state;
        let id = payloading::request_pad_id(self.obj().upcast_ref(), *CAT, name, next_pad, |id| {
            pads.contains_key(&id)
        })?;

        let weak = self.obj().downgrade();
        let weak_caps = weak.clone();
        let appsink = PayloadChain::appsink(
            id,
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(obj) = weak.upgrade() else {
                        return Err(gst::FlowError::Flushing);
                    };
                    if let Some(server) = obj.imp().server() {
                        let due = payloading::sample_due(sink, &sample);
                        server.push(id, &sample_packets(&sample), due);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
            move |caps| {
                if let Some(obj) = weak_caps.upgrade() {
                    obj.imp().on_rtp_caps(id, caps);
                }
            },
        )?;

        let ghost = gst::GhostPad::builder_from_template(templ)
            .name(format!("sink_{id}"))
            .event_function(|pad, parent, event| {
                RtspServerSink::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .build();
        let obj = self.obj();
        obj.add(&appsink).ok()?;
        if let Some(server) = self.server()
            && let Err(e) = server.add_stream(id)
        {
            gst::element_imp_error!(
                self,
                gst::ResourceError::OpenReadWrite,
                ("Could not bind UDP ports for stream {}: {}", id, e)
            );
            let _ = obj.remove(&appsink);
            return None;
        }
        let _ = appsink.sync_state_with_parent();
        state
            .pads
            .insert(id, PayloadChain::new(ghost.clone(), appsink));
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
                .find(|(_, c)| c.ghost.upcast_ref::<gst::Pad>() == pad)
                .map(|(id, _)| *id);
            id.and_then(|id| state.pads.remove(&id).map(|c| (id, c)))
        };
        let Some((id, chain)) = chain else {
            return;
        };
        if let Some(server) = self.server() {
            server.remove_stream(id);
        }
        chain.remove(self.obj().upcast_ref());
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady
            && let Err(err) = self.start_server()
        {
            self.post_error_message(err);
            return Err(gst::StateChangeError);
        }
        let result = self.parent_change_state(transition);
        if transition == gst::StateChange::ReadyToNull || result.is_err() {
            if let Some(server) = self.server.lock().unwrap().take() {
                // Stopped now, not when the last reference goes (a `stats` read may hold one for
                // a moment): the port is free and the clients see the end before this returns.
                // Never blocks.
                server.stop();
            }
            if transition == gst::StateChange::ReadyToNull {
                let mut state = self.state.lock().unwrap();
                for chain in state.pads.values_mut() {
                    chain.reset(self.obj().upcast_ref());
                }
            }
        }
        result
    }
}

impl BinImpl for RtspServerSink {}
