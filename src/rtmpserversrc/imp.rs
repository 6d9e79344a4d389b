//! `rtmpserversrc`: an RTMP (or RTMPS) server that publishers (ffmpeg, OBS, rtmp2sink, rtmpsink,
//! rsrtmpsink) push into, output as `video/x-flv` on its `src` pad, so that `flvdemux` follows:
//! the mirror of rsrtmpsink. Enhanced RTMP codecs flvdemux cannot read (HEVC, AV1, VP9, Opus)
//! come out as elementary streams on the sometimes pads `video` and `audio` (`output`), pushed
//! from the same streaming thread. A thin adapter over [`crate::rtmp::server`]: the listener runs on the
//! shared runtime and queues the accepted publication's tags in a bounded [`Output`] (whole
//! frames dropped, counted, when downstream is slower); `create` takes them out.
//!
//! Timestamps: the stream's time 0 is its first tag, at the running time it arrived (the base of
//! a new segment). Each publication's RTMP timestamps are moved to start where the clock is on
//! that timeline, in the FLV tags themselves (flvdemux reads those) and on the buffers, so a next
//! publisher (`wait-for-next-publisher`) continues it.

use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use bytes::Bytes;

use crate::rtmp::enhanced::{self, FourCc, Message, Packet, PacketKind};
use crate::rtmp::flv::{self, Tag, TagKind};
use crate::rtmp::server::listener::{Listener, ListenerConfig, PublishHook, PublishInfo};
use crate::rtmp::server::output::{Item, Output, Popped};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtmpserversrc",
        gst::DebugColorFlags::empty(),
        Some("RTMP server source (publishers push FLV over RTMP/RTMPS)"),
    )
});

const DEFAULT_ADDRESS: &str = "0.0.0.0";
const DEFAULT_PORT: u32 = 1935;
const DEFAULT_QUEUE_SIZE: u32 = 8 * 1024 * 1024;
const DEFAULT_MAX_CONNECTIONS: u32 = 100;
const DEFAULT_HANDSHAKE_TIMEOUT: u32 = 10;
const DEFAULT_IDLE_TIMEOUT: u32 = 30;
const DEFAULT_LATENCY_MS: u32 = 200;

/// Where the publication goes: see the README ("Enhanced RTMP").
#[derive(Debug, Eq, PartialEq, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLsRtmpServerSrcOutput")]
pub enum OutputMode {
    #[enum_value(
        name = "Everything as FLV on src (Enhanced RTMP tags pass unchanged; flvdemux cannot read them)",
        nick = "flv"
    )]
    Flv = 0,
    #[enum_value(
        name = "Elementary streams on the video and audio pads (H.264, H.265, AV1, VP9, VP8, AAC, Opus, MP3, AC-3, E-AC-3); nothing on src",
        nick = "elementary"
    )]
    Elementary = 1,
    #[enum_value(
        name = "Classic FLV codecs and metadata as FLV on src (when linked), Enhanced RTMP codecs on the video and audio pads",
        nick = "auto"
    )]
    #[default]
    Auto = 2,
}

/// No `Debug`: the stream key is a secret.
#[derive(Clone)]
struct Settings {
    address: String,
    port: u32,
    application: String,
    stream_key: String,
    takeover: bool,
    wait_for_next_publisher: bool,
    queue_size: u32,
    max_connections: u32,
    handshake_timeout: u32,
    idle_timeout: u32,
    latency_ms: u32,
    tls_certificate_file: Option<String>,
    tls_key_file: Option<String>,
    /// `1.2` or `1.3`: the newest TLS version offered.
    tls_max_version: String,
    /// `user:password` strings: when any, connect needs Adobe/Limelight authentication.
    users: Vec<String>,
    /// `adobe` or `llnw`: what a connect without credentials is told to use.
    authmod: String,
    rtmpt: bool,
    output: OutputMode,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS.into(),
            port: DEFAULT_PORT,
            application: String::new(),
            stream_key: String::new(),
            takeover: false,
            wait_for_next_publisher: false,
            queue_size: DEFAULT_QUEUE_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            latency_ms: DEFAULT_LATENCY_MS,
            tls_certificate_file: None,
            users: Vec::new(),
            authmod: "adobe".into(),
            tls_key_file: None,
            tls_max_version: "1.3".into(),
            rtmpt: true,
            output: OutputMode::Auto,
        }
    }
}

/// The streaming thread's state.
#[derive(Default)]
struct Stream {
    header_sent: bool,
    publisher: Option<u64>,
    /// The running time of the stream's first tag: the base of our segment, whose time 0 is
    /// that tag.
    base: Option<gst::ClockTime>,
    /// (this publication's offset on our timeline in ms, its first RTMP timestamp).
    rebase: Option<(i64, u32)>,
    /// The elementary-stream pads (`video`, `audio`), created by the first packet of each.
    video: Option<ExPad>,
    audio: Option<ExPad>,
    group_id: Option<gst::GroupId>,
    /// The track of a multitrack publication that goes to each pad (the first seen).
    video_track: Option<u8>,
    audio_track: Option<u8>,
    /// What was logged once for this publication.
    logged: std::collections::HashSet<&'static str>,
}

struct ExPad {
    pad: gst::Pad,
    caps: gst::Caps,
}

/// Caps for a codec's elementary stream; `config` is its SequenceStart body. `None` when the
/// codec needs a configuration that has not come (H.264, H.265, AAC, Opus) or has no pad here.
fn ex_caps(fourcc: FourCc, config: Option<&Bytes>) -> Option<gst::Caps> {
    let codec_data = || config.map(|c| gst::Buffer::from_slice(c.clone()));
    let caps = match fourcc {
        FourCc::HEVC => gst::Caps::builder("video/x-h265")
            .field("stream-format", "hvc1")
            .field("alignment", "au")
            .field("codec_data", codec_data()?)
            .build(),
        FourCc::AVC => gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field("codec_data", codec_data()?)
            .build(),
        FourCc::AV1 => gst::Caps::builder("video/x-av1")
            .field("stream-format", "obu-stream")
            .field("alignment", "tu")
            .field_if_some("codec_data", codec_data().filter(|b| b.size() >= 4))
            .build(),
        FourCc::VP9 => gst::Caps::new_empty_simple("video/x-vp9"),
        FourCc::VP8 => gst::Caps::new_empty_simple("video/x-vp8"),
        FourCc::OPUS => {
            let head = enhanced::parse_opus_head(config?)?;
            let mut b = gst::Caps::builder("audio/x-opus")
                .field("rate", 48000i32)
                .field("channels", i32::from(head.channels))
                .field("channel-mapping-family", i32::from(head.mapping_family));
            if let Some((streams, coupled, map)) = &head.mapping {
                b = b
                    .field("stream-count", i32::from(*streams))
                    .field("coupled-count", i32::from(*coupled))
                    .field(
                        "channel-mapping",
                        gst::Array::new(map.iter().map(|&c| i32::from(c))),
                    );
            }
            b.build()
        }
        FourCc::AAC => gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 4i32)
            .field("stream-format", "raw")
            .field("codec_data", codec_data()?)
            .build(),
        FourCc::MP3 => gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 1i32)
            .field("layer", 3i32)
            .build(),
        FourCc::AC3 => gst::Caps::new_empty_simple("audio/x-ac3"),
        FourCc::EAC3 => gst::Caps::new_empty_simple("audio/x-eac3"),
        _ => return None,
    };
    Some(caps)
}

/// Where a tag goes.
enum Route {
    Src,
    Pads,
    Drop,
}

#[derive(Default)]
pub struct RtmpServerSrc {
    settings: Mutex<Settings>,
    listener: Mutex<Option<Listener>>,
    output: Mutex<Option<Arc<Output>>>,
    stream: Mutex<Stream>,
}

#[glib::object_subclass]
impl ObjectSubclass for RtmpServerSrc {
    const NAME: &'static str = "GstLsRtmpServerSrc";
    type Type = super::RtmpServerSrc;
    type ParentType = gst_base::PushSrc;
}

impl RtmpServerSrc {
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

    fn output(&self) -> Option<Arc<Output>> {
        self.output.lock().unwrap().clone()
    }

    /// FLV header flags from the first tag: the metadata's codec ids when it names them, else
    /// audio and video.
    fn header_flags(tag: &Tag) -> (bool, bool) {
        if tag.kind == TagKind::Script
            && let Ok(values) = crate::rtmp::amf0::decode_all(&tag.data)
            && let Some(meta) = values.get(1)
        {
            let audio = meta.get("audiocodecid").is_some();
            let video = meta.get("videocodecid").is_some();
            if audio || video {
                return (audio, video);
            }
        }
        (true, true)
    }

    /// The tag's time on our timeline in ms (the stream's first tag at 0), starting the
    /// segment at the first tag and each publication where the clock is.
    fn timeline_ms(&self, st: &mut Stream, tag: &Tag) -> i64 {
        if st.base.is_none() || st.rebase.is_none() {
            // The clock is read only where a stream or a publication starts: every other tag
            // is placed by its RTMP timestamp alone.
            let now = self
                .obj()
                .current_running_time()
                .unwrap_or(gst::ClockTime::ZERO);
            if st.base.is_none() {
                // Time 0 of the stream is now: a segment with this base makes the first tag's
                // running time its arrival time. flvdemux keeps the base of the segment it is
                // given (and starts its own at the first tag), so its output is on time as well.
                let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
                segment.set_base(now);
                if let Err(e) = self.obj().new_segment(segment.upcast_ref()) {
                    gst::warning!(CAT, imp = self, "cannot start a new segment: {}", e);
                }
                st.base = Some(now);
            }
            let base = st.base.unwrap_or_default();
            // A publication starts on our timeline where the clock is (0 for the first).
            let offset = now.saturating_sub(base).mseconds() as i64;
            gst::debug!(
                CAT,
                imp = self,
                "publication starts at {} ms of the stream (first RTMP timestamp {})",
                offset,
                tag.timestamp
            );
            st.rebase = Some((offset, tag.timestamp));
        }
        let (offset, first) = st.rebase.unwrap_or_default();
        // Signed: audio may start a little before the first video tag.
        let delta = i64::from(tag.timestamp.wrapping_sub(first) as i32);
        (offset + delta).max(0)
    }

    fn tag_buffer(&self, st: &mut Stream, tag: Tag) -> gst::Buffer {
        let ts_ms = self.timeline_ms(st, &tag);
        // Script data carries no timing; at 0, ffmpeg's FLV reader still takes it for the
        // file's metadata (elsewhere, for a data stream).
        let out_tag = Tag {
            timestamp: if tag.kind == TagKind::Script {
                0
            } else {
                (ts_ms & 0xffff_ffff) as u32
            },
            ..tag
        };
        let mut data = Vec::with_capacity(out_tag.data.len() + 11 + 4 + 13);
        if !st.header_sent {
            let (audio, video) = Self::header_flags(&out_tag);
            flv::write_header(audio, video, &mut data);
            st.header_sent = true;
        }
        flv::write_tag(&out_tag, &mut data);
        let mut buffer = gst::Buffer::from_mut_slice(data);
        {
            let b = buffer.get_mut().unwrap();
            let ts = gst::ClockTime::from_mseconds(ts_ms as u64);
            b.set_dts(ts);
            if out_tag.kind != TagKind::Video {
                b.set_pts(ts);
            }
            if out_tag.kind == TagKind::Video && !out_tag.is_keyframe() {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        buffer
    }

    fn route(&self, mode: OutputMode, tag: &Tag) -> Route {
        let enhanced = match tag.kind {
            TagKind::Video => enhanced::is_enhanced_video(&tag.data),
            TagKind::Audio => enhanced::is_enhanced_audio(&tag.data),
            TagKind::Script => false,
        };
        match mode {
            OutputMode::Flv => Route::Src,
            OutputMode::Auto if enhanced => Route::Pads,
            OutputMode::Auto => Route::Src,
            OutputMode::Elementary if tag.kind == TagKind::Script => Route::Drop,
            OutputMode::Elementary => Route::Pads,
        }
    }

    fn log_once(&self, st: &mut Stream, key: &'static str, what: std::fmt::Arguments<'_>) {
        if st.logged.insert(key) {
            gst::debug!(CAT, imp = self, "{}", what);
        }
    }

    /// An audio or video tag for the elementary-stream pads: parsed (ex-header or classic),
    /// its configuration turned into caps, its frames pushed.
    fn push_elementary(&self, st: &mut Stream, tag: Tag) -> Result<(), gst::FlowError> {
        let video = tag.kind == TagKind::Video;
        let packets = if (video && enhanced::is_enhanced_video(&tag.data))
            || (!video && enhanced::is_enhanced_audio(&tag.data))
        {
            let parsed = if video {
                enhanced::parse_video(&tag.data).map(|m| match m {
                    Message::Packets(p) => p,
                    Message::Command(_) => Vec::new(),
                })
            } else {
                enhanced::parse_audio(&tag.data)
            };
            match parsed {
                Ok(p) => p,
                Err(e) => {
                    self.log_once(
                        st,
                        if video { "bad-video" } else { "bad-audio" },
                        format_args!(
                            "Enhanced RTMP tag skipped: {e} (logged once per publication)"
                        ),
                    );
                    return Ok(());
                }
            }
        } else {
            match enhanced::classic_packet(video, &tag.data) {
                Some(p) => vec![p],
                None => {
                    let codec = crate::rtmp::server::output::codec_name(&tag).unwrap_or_default();
                    if video {
                        self.log_once(
                            st,
                            "classic-video",
                            format_args!("video codec {codec} has no elementary pad: dropped (use output=flv and flvdemux)"),
                        );
                    } else {
                        self.log_once(
                            st,
                            "classic-audio",
                            format_args!("audio codec {codec} has no elementary pad: dropped (use output=flv and flvdemux)"),
                        );
                    }
                    return Ok(());
                }
            }
        };
        if packets.is_empty() {
            return Ok(());
        }
        let dts_ms = self.timeline_ms(st, &tag);
        for p in packets {
            let track = if video {
                *st.video_track.get_or_insert(p.track)
            } else {
                *st.audio_track.get_or_insert(p.track)
            };
            if p.track != track {
                self.log_once(
                    st,
                    if video {
                        "other-video-track"
                    } else {
                        "other-audio-track"
                    },
                    format_args!(
                        "multitrack: {} track {} ({}) not output, the pad carries track {}",
                        if video { "video" } else { "audio" },
                        p.track,
                        p.fourcc,
                        track
                    ),
                );
                continue;
            }
            self.push_packet(st, video, p, dts_ms)?;
        }
        Ok(())
    }

    fn push_packet(
        &self,
        st: &mut Stream,
        video: bool,
        p: Packet,
        dts_ms: i64,
    ) -> Result<(), gst::FlowError> {
        let composition_time = match p.kind {
            PacketKind::SequenceStart => {
                let Some(caps) = ex_caps(p.fourcc, Some(&p.data)) else {
                    self.log_once(
                        st,
                        if video {
                            "no-caps-video"
                        } else {
                            "no-caps-audio"
                        },
                        format_args!("codec {} has no elementary pad here: dropped", p.fourcc),
                    );
                    return Ok(());
                };
                let slot = if video { &mut st.video } else { &mut st.audio };
                match slot {
                    Some(ex) if ex.caps != caps => {
                        gst::debug!(CAT, imp = self, "{}: new caps {}", ex.pad.name(), caps);
                        ex.pad.push_event(gst::event::Caps::new(&caps));
                        ex.caps = caps;
                    }
                    Some(_) => {}
                    None => self.add_ex_pad(st, video, caps),
                }
                return Ok(());
            }
            PacketKind::CodedFrames { composition_time } => composition_time,
            // SequenceEnd, Metadata, channel layouts: nothing for the pad.
            _ => return Ok(()),
        };
        if (if video { &st.video } else { &st.audio }).is_none() {
            // Codecs whose caps need no configuration get their pad at the first frame.
            match ex_caps(p.fourcc, None) {
                Some(caps) => self.add_ex_pad(st, video, caps),
                None => {
                    self.log_once(
                        st,
                        if video {
                            "no-config-video"
                        } else {
                            "no-config-audio"
                        },
                        format_args!(
                            "{} frames before the codec configuration (SequenceStart): dropped",
                            p.fourcc
                        ),
                    );
                    return Ok(());
                }
            }
        }
        let Some(ex) = (if video { &st.video } else { &st.audio }) else {
            return Ok(());
        };
        let dts = gst::ClockTime::from_mseconds(dts_ms as u64);
        let pts =
            gst::ClockTime::from_mseconds((dts_ms + i64::from(composition_time)).max(0) as u64);
        let mut buffer = gst::Buffer::from_slice(p.data);
        {
            let b = buffer.get_mut().unwrap();
            b.set_dts(dts);
            b.set_pts(pts);
            if video && !p.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        let pad = ex.pad.clone();
        match pad.push(buffer) {
            Ok(_) => Ok(()),
            Err(gst::FlowError::NotLinked) => {
                self.log_once(
                    st,
                    if video {
                        "video-not-linked"
                    } else {
                        "audio-not-linked"
                    },
                    format_args!("{} is not linked: its frames are dropped", pad.name()),
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn add_ex_pad(&self, st: &mut Stream, video: bool, caps: gst::Caps) {
        let name = if video { "video" } else { "audio" };
        let templ = self.obj().pad_template(name).expect("template");
        let pad = gst::Pad::builder_from_template(&templ)
            .name(name)
            .flags(gst::PadFlags::FIXED_CAPS)
            .query_function(|pad, parent, query| {
                RtmpServerSrc::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.ex_pad_query(pad, query),
                )
            })
            .build();
        if let Err(e) = pad.set_active(true) {
            gst::warning!(CAT, imp = self, "cannot activate pad {}: {}", name, e);
        }
        let group = *st.group_id.get_or_insert_with(gst::GroupId::next);
        let stream_id = pad.create_stream_id(&*self.obj(), Some(name));
        pad.push_event(
            gst::event::StreamStart::builder(stream_id.as_str())
                .group_id(group)
                .build(),
        );
        pad.push_event(gst::event::Caps::new(&caps));
        let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
        segment.set_base(st.base.unwrap_or_default());
        pad.push_event(gst::event::Segment::new(&segment));
        gst::debug!(CAT, imp = self, "adding pad {} with caps {}", name, caps);
        let ex = ExPad {
            pad: pad.clone(),
            caps,
        };
        if video {
            st.video = Some(ex);
        } else {
            st.audio = Some(ex);
        }
        if let Err(e) = self.obj().add_pad(&pad) {
            gst::warning!(CAT, imp = self, "cannot add pad {}: {}", name, e);
        }
    }

    fn ex_pad_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let latency =
                gst::ClockTime::from_mseconds(u64::from(self.settings.lock().unwrap().latency_ms));
            q.set(true, latency, gst::ClockTime::NONE);
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn ex_pads(&self) -> Vec<gst::Pad> {
        let st = self.stream.lock().unwrap();
        [&st.video, &st.audio]
            .into_iter()
            .flatten()
            .map(|e| e.pad.clone())
            .collect()
    }

    fn stats(&self) -> gst::Structure {
        let out = self.output().map(|o| o.stats()).unwrap_or_default();
        let listener = self.listener.lock().unwrap();
        let mut b = gst::Structure::builder("application/x-rtmpserversrc-stats")
            .field("video-frames", out.video_frames)
            .field("audio-frames", out.audio_frames)
            .field("frames-dropped", out.frames_dropped)
            .field("bytes-queued", out.bytes_queued as u64)
            .field("video-codec", out.video_codec)
            .field("audio-codec", out.audio_codec);
        let Some(l) = listener.as_ref() else {
            return b.field("publishing", false).build();
        };
        let c = l.counters();
        use std::sync::atomic::Ordering::Relaxed;
        let bytes = c.bytes_received.load(Relaxed);
        b = b
            .field("connections", c.connections.load(Relaxed))
            .field("connections-open", c.open.load(Relaxed) as u64)
            .field("connections-refused", c.connections_refused.load(Relaxed))
            .field("publishes-refused", c.publishes_refused.load(Relaxed))
            .field("publishers", c.publishers.load(Relaxed))
            .field("bytes-received", bytes);
        match l.publisher() {
            Some(p) => {
                let secs = p.started.elapsed().as_secs_f64();
                let bitrate = if secs > 0.0 {
                    (bytes as f64 * 8.0 / secs) as u64
                } else {
                    0
                };
                b.field("publishing", true)
                    .field("publisher-address", p.peer.to_string())
                    .field("application", p.app)
                    .field("bitrate", bitrate)
                    .field("chunk-size", p.in_chunk_size)
                    .field("fourcc-list", gst::Array::new(p.fourcc_list))
                    .build()
            }
            None => b.field("publishing", false).build(),
        }
    }

    fn publish_hook(&self) -> PublishHook {
        let weak = self.obj().downgrade();
        Arc::new(move |info: &PublishInfo| {
            weak.upgrade().is_some_and(|obj| {
                let address = info.peer.ip().to_string();
                obj.emit_by_name::<bool>("publish", &[&info.app, &info.key, &address, &info.query])
            })
        })
    }
}

impl ObjectImpl for RtmpServerSrc {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(true);
        obj.set_format(gst::Format::Time);
        obj.set_do_timestamp(false);
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("address")
                    .nick("Address")
                    .blurb("IP address to listen on")
                    .default_value(Some(DEFAULT_ADDRESS))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("port")
                    .nick("Port")
                    .blurb("TCP port to listen on (0: a free one, see bound-port)")
                    .maximum(65535)
                    .default_value(DEFAULT_PORT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("bound-port")
                    .nick("Bound port")
                    .blurb("The port listened on (-1 when not listening)")
                    .minimum(-1)
                    .maximum(65535)
                    .default_value(-1)
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("application")
                    .nick("Application")
                    .blurb("The application publishers must connect to (the first path segment of rtmp://host/APP/KEY); empty: any")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stream-key")
                    .nick("Stream key")
                    .blurb("The stream key publishers must publish (empty: any); never logged")
                    .mutable_ready()
                    .build(),
                gst::ParamSpecArray::builder("users")
                    .nick("Users")
                    .blurb(
                        "Who may publish: \"user:password\" strings; as soon as there is one, \
                         connect needs Adobe (authmod=adobe) or Limelight (authmod=llnw) \
                         authentication, as ffmpeg and librtmp clients do it with \
                         rtmp://user:password@host/app/key. gst-launch-1.0: users='<\"alice:S3cr3t\">'",
                    )
                    .element_spec(
                        &glib::ParamSpecString::builder("user")
                            .nick("User")
                            .blurb("user:password")
                            .build(),
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("authmod")
                    .nick("Authentication method")
                    .blurb(
                        "With users: the method a connect without credentials is told to use, \
                         adobe or llnw (Limelight); a client may ask for the other",
                    )
                    .default_value(Some("adobe"))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("takeover")
                    .nick("Takeover")
                    .blurb("A second publisher replaces the first (FALSE: it is refused with NetStream.Publish.BadName)")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-next-publisher")
                    .nick("Wait for next publisher")
                    .blurb("When the publisher leaves, wait for the next one (its tags continue the stream) instead of ending with EOS")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("queue-size")
                    .nick("Queue size")
                    .blurb("Bytes of frames queued for downstream at most; beyond, whole frames are dropped (counted in stats)")
                    .minimum(1024)
                    .default_value(DEFAULT_QUEUE_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-connections")
                    .nick("Max connections")
                    .blurb("Connections that have not published yet at most; a new one closes the oldest of them (a publishing connection is never closed for a new one)")
                    .minimum(1)
                    .default_value(DEFAULT_MAX_CONNECTIONS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("handshake-timeout")
                    .nick("Handshake timeout")
                    .blurb("Seconds a connection has for the (TLS and RTMP) handshake, connect and publish")
                    .minimum(1)
                    .maximum(3600)
                    .default_value(DEFAULT_HANDSHAKE_TIMEOUT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("idle-timeout")
                    .nick("Idle timeout")
                    .blurb("Seconds without data after which a publisher is disconnected")
                    .minimum(1)
                    .maximum(3600)
                    .default_value(DEFAULT_IDLE_TIMEOUT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("latency")
                    .nick("Latency")
                    .blurb("Milliseconds reported as the source's latency: how late a tag may arrive after its timestamp (network jitter, bursts) and still be on time for synchronised sinks. A quarter of it (50 ms at most) is how long audio may wait for the next video frame to be pushed with it (fewer wake-ups of the streaming thread); 0: every tag pushed as it is read")
                    .maximum(60_000)
                    .default_value(DEFAULT_LATENCY_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("tls-certificate-file")
                    .nick("TLS certificate file")
                    .blurb("PEM certificate chain: the port then speaks RTMPS (TLS) only")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("tls-key-file")
                    .nick("TLS key file")
                    .blurb("PEM private key of tls-certificate-file (default: read from that file)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("tls-max-version")
                    .nick("TLS maximum version")
                    .blurb("The newest TLS version RTMPS offers: 1.3 (TLS 1.2 and 1.3) or 1.2 (TLS 1.2 only, for librtmp's rtmps://, e.g. the stock rtmpsink, which fails on TLS 1.3)")
                    .default_value(Some("1.3"))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("rtmpt")
                    .nick("RTMPT")
                    .blurb("Also serve RTMPT (RTMP tunnelled in HTTP POST requests) on the same port (inside TLS when a certificate is set: RTMPTS); a connection is HTTP when its first byte is a letter")
                    .default_value(true)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("output", OutputMode::Auto)
                    .nick("Output")
                    .blurb(
                        "flv: everything as FLV on src for flvdemux; elementary: the codecs \
                         as elementary streams on sometimes pads video and audio (H.264, H.265, \
                         AV1, VP9, AAC, Opus...), nothing on src; auto: classic FLV codecs on \
                         src (when linked), Enhanced RTMP ones (hvc1, av01, vp09, Opus...) on \
                         video and audio",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Connections, publishers, bytes, bitrate, frames, drops, codecs, the publisher's address and chunk size")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            // Decide each publish that passed application and stream-key: (application, stream
            // key, client IP address, query string after '?' in the publishing name) -> TRUE to
            // allow; FALSE answers onStatus NetStream.Publish.Rejected. As rtspserversink's
            // `authorize`: emitted on a runtime thread, return quickly; any handler returning
            // FALSE refuses; no handler allows.
            vec![
                glib::subclass::Signal::builder("publish")
                    .param_types([
                        String::static_type(),
                        String::static_type(),
                        String::static_type(),
                        String::static_type(),
                    ])
                    .return_type::<bool>()
                    .run_last()
                    .class_handler(|_| Some(true.to_value()))
                    .accumulator(|_, _, allow| {
                        if allow.get::<bool>().unwrap_or(false) {
                            std::ops::ControlFlow::Continue(allow.clone())
                        } else {
                            std::ops::ControlFlow::Break(allow.clone())
                        }
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        let string = || value.get::<Option<String>>().expect("type checked");
        match pspec.name() {
            "address" => s.address = string().unwrap_or_else(|| DEFAULT_ADDRESS.into()),
            "port" => s.port = value.get().expect("type checked"),
            "application" => s.application = string().unwrap_or_default(),
            "stream-key" => s.stream_key = string().unwrap_or_default(),
            "takeover" => s.takeover = value.get().expect("type checked"),
            "authmod" => {
                s.authmod = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_else(|| "adobe".into())
            }
            "users" => {
                s.users = value
                    .get::<gst::Array>()
                    .expect("type checked")
                    .iter()
                    .filter_map(|v| v.get::<String>().ok())
                    .collect();
            }
            "wait-for-next-publisher" => {
                s.wait_for_next_publisher = value.get().expect("type checked")
            }
            "queue-size" => s.queue_size = value.get().expect("type checked"),
            "max-connections" => s.max_connections = value.get().expect("type checked"),
            "handshake-timeout" => s.handshake_timeout = value.get().expect("type checked"),
            "idle-timeout" => s.idle_timeout = value.get().expect("type checked"),
            "latency" => s.latency_ms = value.get().expect("type checked"),
            "tls-certificate-file" => s.tls_certificate_file = string().filter(|f| !f.is_empty()),
            "tls-key-file" => s.tls_key_file = string().filter(|f| !f.is_empty()),
            "tls-max-version" => {
                s.tls_max_version = string().unwrap_or_else(|| "1.3".into());
            }
            "rtmpt" => s.rtmpt = value.get().expect("type checked"),
            "output" => s.output = value.get().expect("type checked"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "address" => s.address.to_value(),
            "port" => s.port.to_value(),
            "bound-port" => {
                drop(s);
                self.listener
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map_or(-1, |l| i32::from(l.local_addr().port()))
                    .to_value()
            }
            "application" => s.application.to_value(),
            "stream-key" => s.stream_key.to_value(),
            "takeover" => s.takeover.to_value(),
            "authmod" => s.authmod.to_value(),
            "users" => gst::Array::new(s.users.iter().cloned()).to_value(),
            "wait-for-next-publisher" => s.wait_for_next_publisher.to_value(),
            "queue-size" => s.queue_size.to_value(),
            "max-connections" => s.max_connections.to_value(),
            "handshake-timeout" => s.handshake_timeout.to_value(),
            "idle-timeout" => s.idle_timeout.to_value(),
            "latency" => s.latency_ms.to_value(),
            "tls-certificate-file" => s.tls_certificate_file.to_value(),
            "tls-key-file" => s.tls_key_file.to_value(),
            "tls-max-version" => s.tls_max_version.to_value(),
            "rtmpt" => s.rtmpt.to_value(),
            "output" => s.output.to_value(),
            "stats" => {
                drop(s);
                self.stats().to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for RtmpServerSrc {}

impl ElementImpl for RtmpServerSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "RTMP server source",
                "Source/Network",
                "An RTMP/RTMPS server that publishers push into; outputs their stream as FLV for flvdemux",
                "gst-plugin-livestreaming developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &gst::Caps::new_empty_simple("video/x-flv"),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "video",
                    gst::PadDirection::Src,
                    gst::PadPresence::Sometimes,
                    &gst::Caps::from_str(
                        "video/x-h265, stream-format=hvc1, alignment=au; \
                         video/x-h264, stream-format=avc, alignment=au; \
                         video/x-av1, stream-format=obu-stream, alignment=tu; \
                         video/x-vp9; video/x-vp8",
                    )
                    .unwrap(),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "audio",
                    gst::PadDirection::Src,
                    gst::PadPresence::Sometimes,
                    &gst::Caps::from_str(
                        "audio/x-opus; audio/mpeg, mpegversion=4, stream-format=raw; \
                         audio/mpeg, mpegversion=1, layer=3; audio/x-ac3; audio/x-eac3",
                    )
                    .unwrap(),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for RtmpServerSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let s = self.settings.lock().unwrap().clone();
        let address: std::net::IpAddr = s.address.parse().map_err(|_| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ("Invalid address '{}': not an IP address", s.address)
            )
        })?;
        let max: crate::net::server_tls::TlsMaxVersion =
            s.tls_max_version.parse().map_err(|e: String| {
                gst::error_msg!(gst::ResourceError::Settings, ("tls-max-version: {}", e))
            })?;
        let tls = match &s.tls_certificate_file {
            Some(cert) => Some(
                crate::net::server_tls::server_config_from_files_max(
                    std::path::Path::new(cert),
                    s.tls_key_file.as_deref().map(std::path::Path::new),
                    max,
                )
                .map_err(|e| {
                    gst::error_msg!(gst::ResourceError::Settings, ("Cannot serve RTMPS: {}", e))
                })?,
            ),
            None => None,
        };
        let auth = if s.users.is_empty() {
            None
        } else {
            let mut users = Vec::new();
            for u in &s.users {
                let Some((user, password)) = u.split_once(':') else {
                    // The entry may be a password alone: not quoted.
                    return Err(gst::error_msg!(
                        gst::ResourceError::Settings,
                        ("users: an entry is not \"user:password\"")
                    ));
                };
                users.push(crate::rtmp::auth::Credentials {
                    user: user.to_owned(),
                    password: password.to_owned(),
                });
            }
            let mut secret = [0u8; 16];
            {
                use rand::RngExt;
                rand::rng().fill(&mut secret[..]);
            }
            let offer = match s.authmod.as_str() {
                "adobe" => crate::rtmp::auth::AuthMod::Adobe,
                "llnw" => crate::rtmp::auth::AuthMod::Llnw,
                other => {
                    return Err(gst::error_msg!(
                        gst::ResourceError::Settings,
                        ("authmod '{}': adobe or llnw", other)
                    ));
                }
            };
            Some(Arc::new(
                crate::rtmp::auth::ServerAuth::new(users, secret).offering(offer),
            ))
        };
        let output = Arc::new(Output::new(s.queue_size as usize));
        let config = ListenerConfig {
            name: self.obj().name().to_string(),
            address,
            port: s.port as u16,
            application: s.application.clone(),
            stream_key: s.stream_key.clone(),
            takeover: s.takeover,
            tls,
            max_connections: s.max_connections as usize,
            handshake_timeout: Duration::from_secs(u64::from(s.handshake_timeout)),
            idle_timeout: Duration::from_secs(u64::from(s.idle_timeout)),
            hook: Some(self.publish_hook()),
            auth,
            rtmpt: s.rtmpt,
            // Audio may wait for the next video frame a quarter of the latency we report, 50 ms
            // at most (latency=0: never).
            hold: Duration::from_millis(u64::from(s.latency_ms / 4))
                .min(crate::rtmp::server::listener::MAX_HOLD),
            ..ListenerConfig::default()
        };
        let listener = Listener::start(config, output.clone()).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                (
                    "Could not listen for RTMP on {}:{}: {}",
                    s.address,
                    s.port,
                    e
                )
            )
        })?;
        gst::info!(
            CAT,
            imp = self,
            "listening on {} for RTMP{} publishers",
            listener.local_addr(),
            if s.tls_certificate_file.is_some() {
                "S"
            } else {
                ""
            }
        );
        *self.stream.lock().unwrap() = Stream::default();
        *self.output.lock().unwrap() = Some(output);
        *self.listener.lock().unwrap() = Some(listener);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(l) = self.listener.lock().unwrap().take() {
            l.stop();
        }
        let pads = {
            let mut st = self.stream.lock().unwrap();
            let pads: Vec<gst::Pad> = [st.video.take(), st.audio.take()]
                .into_iter()
                .flatten()
                .map(|e| e.pad)
                .collect();
            pads
        };
        for pad in pads {
            let _ = pad.set_active(false);
            let _ = self.obj().remove_pad(&pad);
        }
        if let Some(o) = self.output.lock().unwrap().take() {
            o.set_flushing(true);
            o.clear();
        }
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        false
    }

    /// No clock wait in the base class before each buffer: tags are pushed as they arrive
    /// (they arrive in real time; the sinks downstream synchronise, `latency` covers the
    /// publisher's jitter). basesrc's default for a live source waits on the clock for every
    /// buffer: a clock entry and a wait per tag, for tags already late or at most a few ms
    /// early.
    fn times(&self, _buffer: &gst::BufferRef) -> (Option<gst::ClockTime>, Option<gst::ClockTime>) {
        (None, None)
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let latency =
                gst::ClockTime::from_mseconds(u64::from(self.settings.lock().unwrap().latency_ms));
            q.set(true, latency, gst::ClockTime::NONE);
            return true;
        }
        BaseSrcImplExt::parent_query(self, query)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(o) = self.output() {
            o.set_flushing(true);
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(o) = self.output() {
            o.set_flushing(false);
        }
        Ok(())
    }
}

impl PushSrcImpl for RtmpServerSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let Some(output) = self.output() else {
            return Err(gst::FlowError::Flushing);
        };
        let (wait, mode) = {
            let s = self.settings.lock().unwrap();
            (s.wait_for_next_publisher, s.output)
        };
        loop {
            // Untimed: unlock and stop set the queue flushing, which wakes this wait.
            let item = match output.pop(None) {
                Ok(item) => item,
                Err(Popped::Flushing) => return Err(gst::FlowError::Flushing),
                Err(Popped::Timeout) => continue,
            };
            let mut st = self.stream.lock().unwrap();
            match item {
                Item::Started { publisher, peer } => {
                    gst::info!(
                        CAT,
                        imp = self,
                        "publisher {} from {} starts",
                        publisher,
                        peer
                    );
                    st.publisher = Some(publisher);
                    st.rebase = None;
                    st.logged.clear();
                    st.video_track = None;
                    st.audio_track = None;
                    drop(st);
                    self.post("rtmpserversrc-publisher-started", |b| {
                        b.field("publisher", publisher)
                            .field("address", peer.to_string())
                    });
                }
                Item::Ended { publisher, reason } => {
                    if st.publisher != Some(publisher) {
                        // A publisher taken over ends after its successor started.
                        continue;
                    }
                    st.publisher = None;
                    drop(st);
                    gst::info!(
                        CAT,
                        imp = self,
                        "publisher {} left: {}; {}",
                        publisher,
                        reason,
                        if wait {
                            "waiting for the next one"
                        } else {
                            "end of stream"
                        }
                    );
                    self.post("rtmpserversrc-publisher-left", |b| {
                        b.field("publisher", publisher)
                            .field("reason", reason.as_str())
                            .field("eos", !wait)
                    });
                    if !wait {
                        for pad in self.ex_pads() {
                            pad.push_event(gst::event::Eos::new());
                        }
                        return Err(gst::FlowError::Eos);
                    }
                }
                Item::Tag(tag) => {
                    if st.publisher.is_none() {
                        continue;
                    }
                    match self.route(mode, &tag) {
                        Route::Src => {
                            if mode == OutputMode::Auto && !self.obj().src_pad().is_linked() {
                                self.log_once(
                                    &mut st,
                                    "src-not-linked",
                                    format_args!(
                                        "src is not linked: classic FLV tags and metadata are dropped"
                                    ),
                                );
                                continue;
                            }
                            let buffer = self.tag_buffer(&mut st, tag);
                            return Ok(CreateSuccess::NewBuffer(buffer));
                        }
                        Route::Pads => self.push_elementary(&mut st, tag)?,
                        Route::Drop => {}
                    }
                }
            }
        }
    }
}
