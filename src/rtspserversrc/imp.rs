//! `rtspserversrc`: an RTSP server that takes publishers (ANNOUNCE, SETUP `mode=record`, RECORD)
//! and outputs their streams, a thin adapter over [`crate::rtsp::server`] with a record mount.
//!
//! The server runs on the plugin's shared runtime and hands publishers and their packets over
//! through a bounded queue ([`RecordQueue`]); one thread of the element takes the events and
//! feeds each stream's pad the way rtspsrc2 does ([`crate::rtp_receive`]: jitter buffer,
//! timestamps, lip-sync from the publisher's Sender Reports, a pad task). Once a pad exists its
//! packets skip that thread ([`StreamSink`]): a UDP stream's receive thread jitter-buffers and
//! pushes them itself, a TCP publisher's reader (its thread `rtsprec-tPORT`) queues them for the
//! pad task.
//!
//! Pads: one sometimes pad `stream_%u` per announced stream, with `application/x-rtp` caps
//! carrying every fmtp parameter. A publisher that leaves ends its pads with EOS, or, with
//! `wait-for-next-publisher`, keeps them for the next one: a next publisher with the same caps
//! continues on the same pads (timestamps continue from the running time), one with other caps
//! gets new pads after the old ones got EOS and were removed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use bytes::Bytes;

use crate::rtp_receive::{
    PadQueue, PadState, StreamSetup, StreamWork, SyncReference, start_stream, stream_caps,
};
use crate::rtsp::sdp::MediaDescription;
use crate::rtsp::server::{
    MAX_READ_HOLD, PacketSink, RecordConfig, RecordEvent, RecordQueue, Server, ServerConfig,
};
use crate::rtsp_server_props::{self as props, Role, ServerProps};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtspserversrc",
        gst::DebugColorFlags::empty(),
        Some("RTSP server source (publishers push with ANNOUNCE/RECORD)"),
    )
});

const DEFAULT_LATENCY_MS: u32 = 200;
const DEFAULT_MAX_STREAMS: u32 = 16;

/// No `Debug`: the shared part holds passwords.
#[derive(Clone)]
struct Settings {
    /// Address, port, mount point, protocols, session timeout, limits, access, TLS: as
    /// rtspserversink's.
    server: ServerProps,
    latency_ms: u32,
    takeover: bool,
    wait_for_next_publisher: bool,
    max_streams: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerProps::new(Role::Record),
            latency_ms: DEFAULT_LATENCY_MS,
            takeover: false,
            wait_for_next_publisher: false,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

impl Settings {
    fn server_config(&self, name: String) -> Result<ServerConfig, String> {
        let mut config = self.server.server_config()?;
        // Publishers get no multicast.
        config.protocols.udp_multicast = false;
        config.name = name;
        config.record = Some(RecordConfig {
            takeover: self.takeover,
            max_streams: self.max_streams as usize,
            // A TCP publisher's data gathers in its socket for a quarter of the jitter buffer's
            // latency at most: its frames are late by no more than that covers.
            read_hold: (Duration::from_millis(u64::from(self.latency_ms)) / 4).min(MAX_READ_HOLD),
            ..RecordConfig::default()
        });
        Ok(config)
    }
}

/// Where the server hands one stream's RTP packets once its pad exists.
///
/// From a thread that serves the stream alone (a UDP publisher's `rtsprec-PORT`) the packets
/// go through the jitter buffer and downstream on that thread, as rtspsrc2's UDP readers push:
/// one wake-up per burst instead of that thread's plus the pad task's. From a connection's
/// reader (TCP interleaved: several streams on one connection, none may wait for another's
/// downstream) they go to the pad's queue, for its task. The pad task also releases packets waiting on a
/// gap when nothing arrives (the thread tells it the jitter buffer's new deadline), and ends
/// the stream.
struct StreamSink {
    work: Arc<Mutex<StreamWork>>,
    queue: Arc<PadQueue>,
}

impl StreamSink {
    fn of(pad: &PadState) -> Arc<dyn PacketSink> {
        Arc::new(StreamSink {
            work: pad.work.clone(),
            queue: pad.queue.clone(),
        })
    }
}

impl PacketSink for StreamSink {
    fn push(&self, packets: Vec<Bytes>) -> usize {
        self.queue.push(packets)
    }

    fn push_exclusive(&self, packets: Vec<Bytes>) -> usize {
        let mut work = self.work.lock().unwrap();
        // What was queued for the pad task (the packets that came before the pad) goes
        // first: taken under the same lock as the task takes them.
        let mut queued = self.queue.take();
        if queued.is_empty() {
            work.process(packets);
        } else {
            queued.extend(packets);
            work.process(queued);
        }
        let deadline = work.jitterbuffer.next_deadline();
        if deadline.is_some() && deadline != work.told_deadline {
            work.told_deadline = deadline;
            self.queue.kick();
        }
        0
    }
}

/// The pads of the current (or last, while waiting) publisher.
#[derive(Default)]
struct Output {
    publisher: Option<u64>,
    /// The publisher of these pads left; the pads wait for the next one.
    left: bool,
    /// The pads were ended with EOS: a next publisher gets new ones.
    ended: bool,
    pads: BTreeMap<usize, PadState>,
    /// Their caps, to see whether a next publisher can continue on them.
    caps: Vec<gst::Caps>,
    /// Packets the pads' queues had no room for.
    dropped: u64,
    publishers: u64,
}

struct Running {
    server: Server,
    queue: Arc<RecordQueue>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct RtspServerSrc {
    settings: Mutex<Settings>,
    running: Mutex<Option<Running>>,
    output: Arc<Mutex<Output>>,
    sync: SyncReference,
}

#[glib::object_subclass]
impl ObjectSubclass for RtspServerSrc {
    const NAME: &'static str = "GstLsRtspServerSrc";
    type Type = super::RtspServerSrc;
    type ParentType = gst::Element;
}

impl RtspServerSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let mut config = settings
            .server_config(self.obj().name().to_string())
            .map_err(|e| {
                gst::error_msg!(gst::ResourceError::Settings, ("Invalid setting: {}", e))
            })?;
        props::set_authorize_hook(&mut config, self.obj().upcast_ref());
        let bind = std::net::SocketAddr::new(config.address, config.port);
        let server = Server::start(config, |_| {}).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                ("Could not listen for RTSP on {}: {}", bind, e)
            )
        })?;
        let queue = server.record_queue().expect("a record mount");
        let stop = Arc::new(AtomicBool::new(false));
        let (obj, q, s) = (self.obj().downgrade(), queue.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("rtspserversrc".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    // Closing the queue wakes it at once: the timeout is a fallback only (each
                    // wake-up costs, 10 a second were 4 % of the receiving process's CPU).
                    let Some(event) = q.pop(Duration::from_secs(1)) else {
                        continue;
                    };
                    let Some(obj) = obj.upgrade() else { return };
                    obj.imp().on_event(event, &q);
                }
            })
            .map_err(|e| {
                gst::error_msg!(gst::ResourceError::Failed, ["Cannot start a thread: {}", e])
            })?;
        gst::info!(
            CAT,
            imp = self,
            "listening on {} for publishers at {}",
            server.local_addr(),
            settings.server.mount_point
        );
        *self.running.lock().unwrap() = Some(Running {
            server,
            queue,
            thread: Some(thread),
            stop,
        });
        Ok(())
    }

    fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(mut r) = running {
            r.stop.store(true, Ordering::Release);
            r.queue.close();
            r.server.stop();
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
        let pads = {
            let mut out = self.output.lock().unwrap();
            out.publisher = None;
            out.caps.clear();
            out.left = false;
            out.ended = false;
            std::mem::take(&mut out.pads)
        };
        self.remove_pads(pads);
    }

    fn remove_pads(&self, pads: BTreeMap<usize, PadState>) {
        for (_, p) in pads {
            p.remove(self.obj().upcast_ref());
        }
    }

    fn post(
        &self,
        name: &str,
        fields: impl FnOnce(gst::structure::Builder) -> gst::structure::Builder,
    ) {
        let s = fields(gst::Structure::builder(name)).build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    /// One event from the server, on the element's dispatching thread. RTP packets come here
    /// only until the pads exist: then they go straight to the pads' queues (`attach`).
    fn on_event(&self, event: RecordEvent, queue: &RecordQueue) {
        match event {
            RecordEvent::Announced {
                publisher,
                peer,
                streams,
            } => self.on_announced(publisher, peer, streams, queue),
            RecordEvent::Started { publisher } => {
                gst::info!(CAT, imp = self, "publisher {} records", publisher);
                self.post("rtspserversrc-publisher-started", |b| {
                    b.field("publisher", publisher)
                });
            }
            RecordEvent::Rtp {
                publisher,
                stream,
                packets,
            } => {
                let mut out = self.output.lock().unwrap();
                if out.publisher != Some(publisher) {
                    return;
                }
                if let Some(p) = out.pads.get(&stream) {
                    let dropped = p.queue.push(packets);
                    out.dropped += dropped as u64;
                }
            }
            RecordEvent::SenderReport {
                publisher,
                stream,
                ntp,
                rtptime,
            } => {
                let out = self.output.lock().unwrap();
                if out.publisher == Some(publisher)
                    && let Some(p) = out.pads.get(&stream)
                {
                    *p.signals.sender_report.lock().unwrap() = Some((ntp, rtptime));
                }
            }
            RecordEvent::Left { publisher, reason } => {
                let wait = self.settings.lock().unwrap().wait_for_next_publisher
                    || reason == crate::rtsp::server::LeftReason::TakenOver;
                queue.detach(publisher);
                let mut out = self.output.lock().unwrap();
                if out.publisher != Some(publisher) {
                    return;
                }
                out.left = true;
                gst::info!(
                    CAT,
                    imp = self,
                    "publisher {} left: {}{}",
                    publisher,
                    reason,
                    if wait {
                        "; waiting for the next one"
                    } else {
                        "; end of stream"
                    }
                );
                // Posted before the EOS it may cause reaches the bus.
                self.post("rtspserversrc-publisher-left", |b| {
                    b.field("publisher", publisher)
                        .field("reason", format!("{reason:?}").to_lowercase())
                        .field("eos", !wait)
                });
                if !wait {
                    out.ended = true;
                    // A pad task may hold its work while downstream blocks: not under our lock.
                    let works: Vec<_> = out.pads.values().map(|p| p.work.clone()).collect();
                    drop(out);
                    for w in works {
                        w.lock().unwrap().finish();
                    }
                }
            }
        }
    }

    fn on_announced(
        &self,
        publisher: u64,
        peer: std::net::SocketAddr,
        streams: Vec<MediaDescription>,
        queue: &RecordQueue,
    ) {
        gst::info!(
            CAT,
            imp = self,
            "publisher {} from {} announced {} stream(s)",
            publisher,
            peer,
            streams.len()
        );
        let caps: Vec<gst::Caps> = streams.iter().map(stream_caps).collect();
        let mut out = self.output.lock().unwrap();
        out.publishers += 1;
        if !out.pads.is_empty() && out.caps == caps && !out.ended {
            // Same streams: the next publisher continues on the same pads. Its RTP clocks and
            // sequence numbers start anew.
            gst::info!(
                CAT,
                imp = self,
                "same caps as before: continuing on the same pads"
            );
            self.sync.lock().unwrap().reset();
            for p in out.pads.values() {
                *p.signals.sender_report.lock().unwrap() = None;
                p.signals.rebase.store(true, Ordering::Relaxed);
                p.signals.restart.store(true, Ordering::Relaxed);
            }
            out.publisher = Some(publisher);
            out.left = false;
            for (i, p) in &out.pads {
                queue.attach(publisher, *i, StreamSink::of(p));
            }
        } else {
            let old = std::mem::take(&mut out.pads);
            out.publisher = Some(publisher);
            out.left = false;
            out.ended = false;
            out.caps = caps.clone();
            drop(out);
            if !old.is_empty() {
                gst::info!(CAT, imp = self, "other streams than before: new pads");
                for p in old.values() {
                    p.work.lock().unwrap().finish();
                }
                self.remove_pads(old);
            }
            self.sync.lock().unwrap().reset();
            let latency =
                Duration::from_millis(u64::from(self.settings.lock().unwrap().latency_ms));
            let obj = self.obj();
            let templ = obj.pad_template("stream_%u").expect("template");
            let mut pads = BTreeMap::new();
            for (i, (m, caps)) in streams.iter().zip(caps).enumerate() {
                let pad = gst::Pad::builder_from_template(&templ)
                    .name(format!("stream_{i}"))
                    .query_function(|pad, parent, query| {
                        RtspServerSrc::catch_panic_pad_function(
                            parent,
                            || false,
                            |imp| imp.src_query(pad, query),
                        )
                    })
                    .build();
                let setup = StreamSetup {
                    element: obj.clone().upcast(),
                    cat: *CAT,
                    caps,
                    stream_id: format!("{}/publisher{publisher}/{i}", obj.name()),
                    clock_rate: m.clock_rate,
                    latency,
                    sync: self.sync.clone(),
                    on_segment: None,
                };
                match start_stream(&pad, setup) {
                    Ok(p) => {
                        pads.insert(i, p);
                    }
                    Err(e) => gst::warning!(CAT, imp = self, "cannot start pad task: {}", e),
                }
            }
            // Registered before the pads appear, so that packets find them.
            let added: Vec<gst::Pad> = pads.values().map(|p| p.pad.clone()).collect();
            let sinks: Vec<_> = pads.iter().map(|(i, p)| (*i, StreamSink::of(p))).collect();
            self.output.lock().unwrap().pads = pads;
            for pad in added {
                let _ = obj.add_pad(&pad);
            }
            obj.no_more_pads();
            // Once the pads are linked (pad-added handlers run inside add_pad); what came
            // before waits in the server's queue and goes first.
            for (i, q) in sinks {
                queue.attach(publisher, i, q);
            }
        }
        self.post("rtspserversrc-publisher-announced", |b| {
            b.field("publisher", publisher)
                .field("address", peer.to_string())
                .field("streams", streams.len() as u32)
        });
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        crate::rtp_receive::src_query(self.obj().upcast_ref(), pad, query, || {
            self.settings.lock().unwrap().latency_ms
        })
    }

    fn stats(&self) -> gst::Structure {
        let running = self.running.lock().unwrap();
        let queue_dropped = running
            .as_ref()
            .map_or(0, |r| r.queue.dropped.load(Ordering::Relaxed));
        let publisher = running.as_ref().and_then(|r| r.server.publisher_stats());
        drop(running);
        let out = self.output.lock().unwrap();
        let streams: Vec<gst::Structure> = out
            .pads
            .iter()
            .map(|(i, p)| {
                let jb = *p.signals.jitterbuffer.lock().unwrap();
                let rx = publisher
                    .as_ref()
                    .and_then(|p| p.streams.get(*i))
                    .cloned()
                    .unwrap_or_default();
                gst::Structure::builder("stream")
                    .field("stream", *i as u32)
                    .field("packets-received", rx.packets_received)
                    .field("bytes-received", rx.bytes_received)
                    .field("packets-lost", rx.packets_lost)
                    .field("jitter-ms", rx.jitter.as_secs_f64() * 1000.0)
                    .field("sender-reports", rx.sender_reports)
                    .field("packets-late", jb.late)
                    .field("packets-duplicate", jb.duplicates)
                    .build()
            })
            .collect();
        let (address, transport) = publisher
            .as_ref()
            .map_or((String::new(), String::new()), |p| {
                (p.address.clone(), p.transport.clone())
            });
        gst::Structure::builder("application/x-rtspserversrc-stats")
            .field("publishers", out.publishers)
            .field("publisher-address", address)
            .field("transport", transport)
            .field("publishing", out.publisher.is_some() && !out.left)
            .field("packets-dropped", out.dropped + queue_dropped)
            .field("streams", gst::Array::new(streams))
            .build()
    }
}

impl ObjectImpl for RtspServerSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            // address, port, mount-point, protocols, session-timeout, limits, auth, TLS: shared
            // with rtspserversink.
            let mut specs = ServerProps::param_specs(Role::Record);
            specs.extend([
                props::bound_port_spec(),
                glib::ParamSpecUInt::builder("latency")
                    .nick("Latency")
                    .blurb("Jitter buffer size in milliseconds")
                    .default_value(DEFAULT_LATENCY_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-streams")
                    .nick("Max streams")
                    .blurb("Streams an ANNOUNCE may describe at most (400 beyond)")
                    .minimum(1)
                    .maximum(256)
                    .default_value(DEFAULT_MAX_STREAMS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("takeover")
                    .nick("Takeover")
                    .blurb("A second publisher replaces the first (FALSE: it is answered 455)")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-next-publisher")
                    .nick("Wait for next publisher")
                    .blurb("When the publisher leaves, keep the pads for the next one instead of ending them with EOS")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Publishers seen, whether one publishes, packets dropped, per-stream jitter buffer figures")
                    .read_only()
                    .build(),
            ]);
            specs
        });
        PROPERTIES.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            // Decide each request but OPTIONS, after its credentials were checked, as
            // rtspserversink's: (user or NULL, method, path with query, client IP address) ->
            // TRUE to allow; FALSE answers 403. Emitted on a runtime thread: return quickly.
            vec![props::authorize_signal()]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        if s.server.set(pspec.name(), value) {
            return;
        }
        match pspec.name() {
            "latency" => s.latency_ms = value.get().expect("type checked"),
            "max-streams" => s.max_streams = value.get().expect("type checked"),
            "takeover" => s.takeover = value.get().expect("type checked"),
            "wait-for-next-publisher" => {
                s.wait_for_next_publisher = value.get().expect("type checked")
            }
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        if let Some(v) = s.server.get(pspec.name()) {
            return v;
        }
        match pspec.name() {
            "bound-port" => {
                drop(s);
                self.running
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map_or(-1, |r| i32::from(r.server.local_addr().port()))
                    .to_value()
            }
            "latency" => s.latency_ms.to_value(),
            "max-streams" => s.max_streams.to_value(),
            "takeover" => s.takeover.to_value(),
            "wait-for-next-publisher" => s.wait_for_next_publisher.to_value(),
            "stats" => {
                drop(s);
                self.stats().to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for RtspServerSrc {}

impl ElementImpl for RtspServerSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "RTSP server source",
                "Source/Network",
                "An RTSP server that takes publishers (ANNOUNCE, SETUP mode=record, RECORD over UDP or TCP interleaved) and outputs their RTP streams",
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
        if transition == gst::StateChange::PausedToReady {
            self.stop();
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
