//! `rsrtmpsink`: publishes FLV (from flvmux) to an RTMP or RTMPS server, a thin adapter over
//! [`crate::rtmp`]. Elementary streams on the `video`/`audio` request pads (HEVC, AV1, VP9,
//! Opus) become Enhanced RTMP tags that enter through the element's own `sink` pad.
//!
//! render() parses the FLV tags of each buffer and puts them on the publication's bounded queue;
//! a network thread sends them, so the streaming thread never waits for the
//! network. When the queue is full whole frames are dropped (video resumes at a keyframe) and counted in `stats`.

use std::str::FromStr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

use crate::messages;
use crate::rtmp::client::{Error as RtmpError, StopCommands};
use crate::rtmp::enhanced::{self, FourCc, PacketKind};
use crate::rtmp::flv::FlvParser;
use crate::rtmp::flv::{Tag, TagKind};
use crate::rtmp::net::{NetConfig, Notice, Publication, Stage};
use crate::rtmp::queue::Pushed;
use crate::rtmp::url::{Location, LocationError, Scheme};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rsrtmpsink",
        gst::DebugColorFlags::empty(),
        Some("RTMP publisher sink"),
    )
});

const DEFAULT_LOCATION: &str = "rtmp://localhost/live/myStream";
const DEFAULT_TIMEOUT_S: u32 = 5;
const DEFAULT_CHUNK_SIZE: u32 = 128;
const DEFAULT_FLASH_VERSION: &str = "LNX 10,0,32,18";
const DEFAULT_RECONNECT_ATTEMPTS: u32 = 5;
const DEFAULT_RECONNECT_INITIAL_DELAY_MS: u32 = 500;
const DEFAULT_RECONNECT_MAX_DELAY_MS: u32 = 10_000;
const DEFAULT_QUEUE_SIZE: u32 = 4 * 1024 * 1024;
/// rtmp2sink's range: kbit/s (1000 bit/s) whose bytes per second fit in 32 bits.
const MAX_PEAK_KBPS: u32 = 17_179_869;
/// The network thread gathers tags this long after the queue becomes non-empty (fewer
/// wake-ups and writes; RTMP's own latency is seconds): the `linger` property's default.
const DEFAULT_LINGER_MS: u32 = 5;
const MAX_LINGER_MS: u32 = 1000;
/// The largest FLV tag accepted from upstream: the RTMP message length field is 24 bits, and
/// script data gains an `@setDataFrame` prefix on the way.
const MAX_TAG_SIZE: usize = 0xff_ffff - 64;

/// Settings that cannot make a publication.
#[derive(Debug, thiserror::Error)]
enum SettingsError {
    #[error(transparent)]
    Location(#[from] LocationError),
    #[error("host, application and stream must not be empty")]
    Empty,
}

/// The GStreamer error for a failed publication: one place decides the domain from the core's
/// error and the stage it failed in.
fn resource_error(error: &RtmpError, stage: Stage) -> gst::ResourceError {
    if error.is_unauthorized() {
        return gst::ResourceError::NotAuthorized;
    }
    match (stage, error) {
        // It published, then the network failed it for good.
        (Stage::Lost, e) if e.is_network() => gst::ResourceError::Write,
        // Wrong location or server, refusals, protocol and TLS trouble.
        _ => gst::ResourceError::OpenWrite,
    }
}

#[derive(Debug, Clone)]
struct Settings {
    scheme: Scheme,
    host: String,
    port: u16,
    application: String,
    stream: String,
    /// Set when the last `location` did not parse; start() fails with it.
    location_error: Option<LocationError>,
    timeout_s: u32,
    chunk_size: u32,
    flash_version: String,
    tls_validation_flags: gio::TlsCertificateFlags,
    reconnect_attempts: u32,
    reconnect_initial_delay_ms: u32,
    reconnect_max_delay_ms: u32,
    queue_size: u32,
    stop_commands: RtmpStopCommands,
    async_connect: bool,
    peak_kbps: u32,
    linger_ms: u32,
    continue_timestamps: bool,
    username: String,
    password: String,
}

impl Default for Settings {
    fn default() -> Self {
        let l = Location::parse(DEFAULT_LOCATION).unwrap();
        Self {
            scheme: l.scheme,
            host: l.host,
            port: l.port,
            application: l.app,
            stream: l.stream,
            location_error: None,
            timeout_s: DEFAULT_TIMEOUT_S,
            chunk_size: DEFAULT_CHUNK_SIZE,
            flash_version: DEFAULT_FLASH_VERSION.into(),
            tls_validation_flags: gio::TlsCertificateFlags::VALIDATE_ALL,
            reconnect_attempts: DEFAULT_RECONNECT_ATTEMPTS,
            reconnect_initial_delay_ms: DEFAULT_RECONNECT_INITIAL_DELAY_MS,
            reconnect_max_delay_ms: DEFAULT_RECONNECT_MAX_DELAY_MS,
            queue_size: DEFAULT_QUEUE_SIZE,
            stop_commands: RtmpStopCommands::FCUNPUBLISH | RtmpStopCommands::DELETESTREAM,
            async_connect: true,
            peak_kbps: 0,
            linger_ms: DEFAULT_LINGER_MS,
            continue_timestamps: false,
            username: String::new(),
            password: String::new(),
        }
    }
}

impl Settings {
    fn location(&self) -> Location {
        Location::from_parts(
            self.scheme,
            &self.host,
            self.port,
            &self.application,
            &self.stream,
        )
    }

    fn set_location(&mut self, uri: &str) -> Result<(), LocationError> {
        match Location::parse(uri) {
            Ok(l) => {
                // rtmp://user:password@host/...: the credentials for Adobe/Limelight
                // authentication, as ffmpeg takes them (the location read back has none).
                if let Ok(url) = url::Url::parse(uri.trim())
                    && !url.username().is_empty()
                {
                    let decode = |s: &str| {
                        // Percent-decoding ('+' is no space in userinfo).
                        let s = s.replace('+', "%2B");
                        url::form_urlencoded::parse(format!("x={s}").as_bytes())
                            .next()
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default()
                    };
                    self.username = decode(url.username());
                    self.password = decode(url.password().unwrap_or_default());
                }
                self.scheme = l.scheme;
                self.host = l.host;
                self.port = l.port;
                self.application = l.app;
                self.stream = l.stream;
                self.location_error = None;
                Ok(())
            }
            Err(e) => {
                self.location_error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn net_config(&self) -> Result<NetConfig, SettingsError> {
        if let Some(e) = &self.location_error {
            return Err(SettingsError::Location(e.clone()));
        }
        if self.host.is_empty() || self.application.is_empty() || self.stream.is_empty() {
            return Err(SettingsError::Empty);
        }
        let f = self.tls_validation_flags;
        Ok(NetConfig {
            name: String::new(),
            location: self.location(),
            flash_version: self.flash_version.clone(),
            chunk_size: self.chunk_size,
            // 0 means "no timeout" for rtmp2sink; a bounded wait keeps a dead server from
            // hanging us, so 0 becomes a day.
            timeout: Duration::from_secs(if self.timeout_s == 0 {
                86_400
            } else {
                u64::from(self.timeout_s)
            }),
            tls: crate::tls_flags::validation(f),
            reconnect_attempts: self.reconnect_attempts,
            reconnect_initial_delay: Duration::from_millis(u64::from(
                self.reconnect_initial_delay_ms,
            )),
            reconnect_max_delay: Duration::from_millis(u64::from(
                self.reconnect_max_delay_ms
                    .max(self.reconnect_initial_delay_ms),
            )),
            queue_size: self.queue_size as usize,
            stop_commands: StopCommands {
                fc_unpublish: self.stop_commands.contains(RtmpStopCommands::FCUNPUBLISH),
                close_stream: self.stop_commands.contains(RtmpStopCommands::CLOSESTREAM),
                delete_stream: self.stop_commands.contains(RtmpStopCommands::DELETESTREAM),
            },
            connect_on_first_push: !self.async_connect,
            linger: Duration::from_millis(u64::from(self.linger_ms)),
            continue_timestamps: self.continue_timestamps,
            credentials: (!self.username.is_empty()).then(|| crate::rtmp::auth::Credentials {
                user: self.username.clone(),
                password: self.password.clone(),
            }),
            peak_rate: peak_rate(self.peak_kbps),
            fourcc_list: Vec::new(),
        })
    }
}

/// kbit/s (rtmp2sink's `peak-kbps`) to bytes per second; 0 is no limit.
fn peak_rate(kbps: u32) -> u64 {
    u64::from(kbps) * 125
}

struct State {
    publication: Publication,
    parser: FlvParser,
    timeout: Duration,
    /// Tags dropped at the queue (also in the queue's own count; kept for the log).
    logged_drop: bool,
}

/// An elementary-stream request pad (`video` or `audio`): its buffers become Enhanced RTMP tags
/// that enter the element through its own `sink` pad, so that preroll, sync and EOS are
/// BaseSink's as for FLV input.
struct ExInput {
    pad: gst::Pad,
    video: bool,
    fourcc: Option<FourCc>,
    /// The SequenceStart body, sent before the next frame when `config_sent` is false.
    config: Option<Vec<u8>>,
    config_sent: bool,
    /// AV1 without codec_data in its caps: (high bit depth, 12 bit, mono, subsampling x/y)
    /// for the av1C built from the first sequence header OBU.
    av1: Option<(bool, bool, bool, (bool, bool))>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    eos: bool,
}

#[derive(Default)]
struct ExInputs {
    inputs: Vec<ExInput>,
    /// stream-start, caps and segment sent into our sink pad.
    started: bool,
}

#[derive(Default)]
pub struct RsRtmpSink {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    ex: Mutex<ExInputs>,
}

/// The codec of an elementary input and its SequenceStart body, from its caps.
type ExConfig = (
    FourCc,
    Option<Vec<u8>>,
    Option<(bool, bool, bool, (bool, bool))>,
);

fn ex_config(caps: &gst::CapsRef) -> Result<ExConfig, String> {
    let s = caps.structure(0).ok_or("empty caps")?;
    let codec_data = || {
        s.get::<gst::Buffer>("codec_data")
            .ok()
            .and_then(|b| b.map_readable().ok().map(|m| m.to_vec()))
    };
    match s.name().as_str() {
        "video/x-h265" => {
            let config = codec_data().ok_or("H.265 caps without codec_data (hvcC)")?;
            Ok((FourCc::HEVC, Some(config), None))
        }
        "video/x-av1" => {
            if let Some(c) = codec_data() {
                return Ok((FourCc::AV1, Some(c), None));
            }
            let depth = s.get::<u32>("bit-depth-luma").unwrap_or(8);
            let chroma = s.get::<&str>("chroma-format").unwrap_or("4:2:0");
            let sub = match chroma {
                "4:4:4" => (false, false),
                "4:2:2" => (true, false),
                _ => (true, true),
            };
            Ok((
                FourCc::AV1,
                None,
                Some((depth > 8, depth > 10, chroma == "4:0:0", sub)),
            ))
        }
        "video/x-vp9" => {
            let profile = s
                .get::<&str>("profile")
                .ok()
                .and_then(|p| p.parse::<u8>().ok())
                .unwrap_or(0);
            let depth = u8::try_from(s.get::<u32>("bit-depth-luma").unwrap_or(8)).unwrap_or(8);
            Ok((
                FourCc::VP9,
                Some(enhanced::vp9_config_record(profile, 0, depth)),
                None,
            ))
        }
        "audio/x-opus" => {
            if let Ok(headers) = s.get::<gst::ArrayRef>("streamheader")
                && let Some(first) = headers.as_slice().first()
                && let Ok(buf) = first.get::<gst::Buffer>()
                && let Ok(map) = buf.map_readable()
                && map.starts_with(b"OpusHead")
            {
                return Ok((FourCc::OPUS, Some(map.to_vec()), None));
            }
            // No header in the caps: the family 0 head their fields describe.
            let channels = s.get::<i32>("channels").unwrap_or(2);
            if !(1..=2).contains(&channels) {
                return Err(format!(
                    "Opus caps with {channels} channels and no streamheader"
                ));
            }
            let rate = u32::try_from(s.get::<i32>("rate").unwrap_or(48000)).unwrap_or(48000);
            let mut head = b"OpusHead".to_vec();
            head.push(1);
            head.push(channels as u8);
            head.extend_from_slice(&0u16.to_le_bytes());
            head.extend_from_slice(&rate.to_le_bytes());
            head.extend_from_slice(&[0, 0, 0]);
            Ok((FourCc::OPUS, Some(head), None))
        }
        other => Err(format!("no Enhanced RTMP codec for {other}")),
    }
}

#[glib::object_subclass]
impl ObjectSubclass for RsRtmpSink {
    const NAME: &'static str = "GstLsRtmpSink";
    type Type = super::RsRtmpSink;
    type ParentType = gst_base::BaseSink;
    type Interfaces = (gst::URIHandler,);
}

impl ObjectImpl for RsRtmpSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("location")
                    .nick("Location")
                    .blurb(
                        "Location of the RTMP stream to publish: rtmp[s]://host[:port]/app[/instance]/stream[?query] \
                         (sets scheme, host, port, application and stream)",
                    )
                    .default_value(Some(DEFAULT_LOCATION))
                    .build(),
                glib::ParamSpecEnum::builder_with_default("scheme", RtmpScheme::Rtmp)
                    .nick("Scheme")
                    .blurb("RTMP connection scheme: rtmp (TCP), rtmps (TLS), rtmpt (tunnelled in HTTP), rtmpts (tunnelled in HTTPS), rtmpe (RC4-encrypted, not secure) or rtmpte (rtmpe tunnelled in HTTP)")
                    .build(),
                glib::ParamSpecString::builder("host")
                    .nick("Host")
                    .blurb("RTMP server host name or IP address")
                    .default_value(Some("localhost"))
                    .build(),
                glib::ParamSpecInt::builder("port")
                    .nick("Port")
                    .blurb("RTMP server port (by default 1935 for rtmp and rtmpe, 443 for rtmps and rtmpts, 80 for rtmpt and rtmpte)")
                    .minimum(1)
                    .maximum(65535)
                    .default_value(1935)
                    .build(),
                glib::ParamSpecString::builder("application")
                    .nick("Application")
                    .blurb("RTMP application path (all of the location's path but the last segment)")
                    .default_value(Some("live"))
                    .build(),
                glib::ParamSpecString::builder("stream")
                    .nick("Stream")
                    .blurb("RTMP stream path, usually the stream key (kept out of logs)")
                    .default_value(Some("myStream"))
                    .build(),
                glib::ParamSpecUInt::builder("timeout")
                    .nick("Timeout")
                    .blurb(
                        "RTMP timeout in seconds: for connecting, each step of the set-up, and a \
                         server that accepts no data while publishing (0 = one day)",
                    )
                    .default_value(DEFAULT_TIMEOUT_S)
                    .build(),
                glib::ParamSpecUInt::builder("chunk-size")
                    .nick("Chunk size")
                    .blurb("RTMP chunk size in bytes for what we send (Set Chunk Size is sent when it is not 128); applies from the next connection")
                    .minimum(1)
                    .maximum(crate::rtmp::chunk::MAX_CHUNK_SIZE)
                    .default_value(DEFAULT_CHUNK_SIZE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("flash-version")
                    .nick("Flash version")
                    .blurb("Flash version reported to the server (flashVer of connect)")
                    .default_value(Some(DEFAULT_FLASH_VERSION))
                    .build(),
                glib::ParamSpecFlags::builder::<gio::TlsCertificateFlags>("tls-validation-flags")
                .default_value(gio::TlsCertificateFlags::VALIDATE_ALL)
                .nick("TLS validation flags")
                .blurb(
                    "Certificate problems that fail an rtmps connection; e.g. 0 accepts any \
                     certificate, validate-all (the default) accepts only valid certificates \
                     for the host from a CA the system trusts",
                )
                .build(),
                glib::ParamSpecUInt::builder("reconnect-attempts")
                    .nick("Reconnect attempts")
                    .blurb(
                        "Reconnections after a publication drops before giving up with an error \
                         (0 = none; the first connection is never retried)",
                    )
                    .default_value(DEFAULT_RECONNECT_ATTEMPTS)
                    .build(),
                glib::ParamSpecUInt::builder("reconnect-initial-delay")
                    .nick("Reconnect initial delay")
                    .blurb("Milliseconds before the first reconnection attempt; doubles per attempt")
                    .default_value(DEFAULT_RECONNECT_INITIAL_DELAY_MS)
                    .build(),
                glib::ParamSpecUInt::builder("reconnect-max-delay")
                    .nick("Reconnect maximum delay")
                    .blurb("Milliseconds between reconnection attempts at most")
                    .default_value(DEFAULT_RECONNECT_MAX_DELAY_MS)
                    .build(),
                glib::ParamSpecUInt::builder("queue-size")
                    .nick("Queue size")
                    .blurb(
                        "Bytes of FLV tags queued for the network at most; beyond it whole frames \
                         are dropped (inter frames first, video resumes at a keyframe)",
                    )
                    .minimum(1024)
                    .default_value(DEFAULT_QUEUE_SIZE)
                    .build(),
                glib::ParamSpecUInt::builder("peak-kbps")
                    .nick("Peak bitrate")
                    .blurb(
                        "Bitrate in kbit/sec to pace outgoing packets (0 = no limit); when the \
                         stream is faster the queue fills and whole frames are dropped",
                    )
                    .maximum(MAX_PEAK_KBPS)
                    .default_value(0)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("async-connect")
                    .nick("Async connect")
                    .blurb(
                        "Connect when the element starts (READY to PAUSED), in the background; \
                         otherwise when the first buffer is rendered",
                    )
                    .default_value(true)
                    .build(),
                glib::ParamSpecFlags::builder::<RtmpStopCommands>("stop-commands")
                    .nick("Stop commands")
                    .blurb("RTMP commands sent when the publication stops (EOS or state change)")
                    .default_value(RtmpStopCommands::FCUNPUBLISH | RtmpStopCommands::DELETESTREAM)
                    .build(),
                glib::ParamSpecString::builder("username")
                    .nick("User name")
                    .blurb(
                        "For servers that ask for Adobe (authmod=adobe) or Limelight \
                         (authmod=llnw) authentication; also taken from \
                         rtmp://user:password@host/... in location",
                    )
                    .build(),
                glib::ParamSpecString::builder("password")
                    .nick("Password")
                    .blurb("The password for username (write-only, never logged)")
                    .write_only()
                    .build(),
                glib::ParamSpecUInt::builder("linger")
                    .nick("Linger")
                    .blurb(
                        "Milliseconds the network thread waits after the queue becomes non-empty \
                         before sending what gathered (at once when 64 KiB are queued): fewer \
                         wake-ups and writes (CPU) for at most this much added latency; 0 sends \
                         each tag at once",
                    )
                    .maximum(MAX_LINGER_MS)
                    .default_value(DEFAULT_LINGER_MS)
                    .build(),
                glib::ParamSpecBoolean::builder("continue-timestamps")
                    .nick("Continue timestamps")
                    .blurb(
                        "After a reconnection, send the first frame 1 ms after the last one sent \
                         and keep later frames' distances, so that the timestamps the server sees \
                         continue without the outage's gap; otherwise the pipeline's own \
                         timestamps are sent",
                    )
                    .default_value(false)
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Publication statistics: bytes sent and received, bitrate, \
                         acknowledgements, chunk and window sizes, reconnects, queue depth, drops",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => {
                let v = value.get::<Option<String>>().unwrap().unwrap_or_default();
                if let Err(e) = s.set_location(&v) {
                    gst::warning!(CAT, imp = self, "invalid location: {}", e);
                }
            }
            "scheme" => s.scheme = value.get::<RtmpScheme>().unwrap().into(),
            "host" => s.host = value.get::<Option<String>>().unwrap().unwrap_or_default(),
            "port" => s.port = value.get::<i32>().unwrap() as u16,
            "application" => {
                s.application = value.get::<Option<String>>().unwrap().unwrap_or_default()
            }
            "stream" => s.stream = value.get::<Option<String>>().unwrap().unwrap_or_default(),
            "timeout" => s.timeout_s = value.get().unwrap(),
            "chunk-size" => s.chunk_size = value.get().unwrap(),
            "flash-version" => {
                s.flash_version = value.get::<Option<String>>().unwrap().unwrap_or_default()
            }
            "tls-validation-flags" => s.tls_validation_flags = value.get().unwrap(),
            "reconnect-attempts" => s.reconnect_attempts = value.get().unwrap(),
            "reconnect-initial-delay" => s.reconnect_initial_delay_ms = value.get().unwrap(),
            "reconnect-max-delay" => s.reconnect_max_delay_ms = value.get().unwrap(),
            "queue-size" => s.queue_size = value.get().unwrap(),
            "stop-commands" => s.stop_commands = value.get().unwrap(),
            "async-connect" => s.async_connect = value.get().unwrap(),
            "linger" => s.linger_ms = value.get().unwrap(),
            "username" => s.username = value.get::<Option<String>>().unwrap().unwrap_or_default(),
            "password" => s.password = value.get::<Option<String>>().unwrap().unwrap_or_default(),
            "continue-timestamps" => s.continue_timestamps = value.get().unwrap(),
            "peak-kbps" => {
                s.peak_kbps = value.get().unwrap();
                let rate = peak_rate(s.peak_kbps);
                drop(s);
                if let Some(state) = self.state.lock().unwrap().as_ref() {
                    state.publication.set_peak_rate(rate);
                }
            }
            other => unimplemented!("property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => s.location().to_uri().to_value(),
            "scheme" => RtmpScheme::from(s.scheme).to_value(),
            "host" => s.host.to_value(),
            "port" => i32::from(s.port).to_value(),
            "application" => s.application.to_value(),
            "stream" => s.stream.to_value(),
            "timeout" => s.timeout_s.to_value(),
            "chunk-size" => s.chunk_size.to_value(),
            "flash-version" => s.flash_version.to_value(),
            "tls-validation-flags" => s.tls_validation_flags.to_value(),
            "reconnect-attempts" => s.reconnect_attempts.to_value(),
            "reconnect-initial-delay" => s.reconnect_initial_delay_ms.to_value(),
            "reconnect-max-delay" => s.reconnect_max_delay_ms.to_value(),
            "queue-size" => s.queue_size.to_value(),
            "stop-commands" => s.stop_commands.to_value(),
            "async-connect" => s.async_connect.to_value(),
            "linger" => s.linger_ms.to_value(),
            "username" => s.username.to_value(),
            "continue-timestamps" => s.continue_timestamps.to_value(),
            "peak-kbps" => s.peak_kbps.to_value(),
            "stats" => {
                drop(s);
                self.stats().to_value()
            }
            other => unimplemented!("property {other}"),
        }
    }
}

#[glib::flags(name = "GstLsRtmpStopCommands")]
pub enum RtmpStopCommands {
    #[flags_value(name = "FCUnpublish", nick = "fcunpublish")]
    FCUNPUBLISH = 0b001,
    #[flags_value(name = "closeStream", nick = "closestream")]
    CLOSESTREAM = 0b010,
    #[flags_value(name = "deleteStream", nick = "deletestream")]
    DELETESTREAM = 0b100,
}

#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLsRtmpScheme")]
pub enum RtmpScheme {
    #[enum_value(name = "RTMP over TCP", nick = "rtmp")]
    Rtmp = 0,
    #[enum_value(name = "RTMP over TLS", nick = "rtmps")]
    Rtmps = 1,
    #[enum_value(name = "RTMP tunnelled in HTTP", nick = "rtmpt")]
    Rtmpt = 2,
    #[enum_value(name = "RTMP tunnelled in HTTPS", nick = "rtmpts")]
    Rtmpts = 3,
    #[enum_value(name = "RTMP encrypted with RC4 (RTMPE)", nick = "rtmpe")]
    Rtmpe = 4,
    #[enum_value(name = "RTMPE tunnelled in HTTP", nick = "rtmpte")]
    Rtmpte = 5,
}

impl From<RtmpScheme> for Scheme {
    fn from(s: RtmpScheme) -> Self {
        match s {
            RtmpScheme::Rtmp => Scheme::Rtmp,
            RtmpScheme::Rtmps => Scheme::Rtmps,
            RtmpScheme::Rtmpt => Scheme::Rtmpt,
            RtmpScheme::Rtmpts => Scheme::Rtmpts,
            RtmpScheme::Rtmpe => Scheme::Rtmpe,
            RtmpScheme::Rtmpte => Scheme::Rtmpte,
        }
    }
}

impl From<Scheme> for RtmpScheme {
    fn from(s: Scheme) -> Self {
        match s {
            Scheme::Rtmp => RtmpScheme::Rtmp,
            Scheme::Rtmps => RtmpScheme::Rtmps,
            Scheme::Rtmpt => RtmpScheme::Rtmpt,
            Scheme::Rtmpts => RtmpScheme::Rtmpts,
            Scheme::Rtmpe => RtmpScheme::Rtmpe,
            Scheme::Rtmpte => RtmpScheme::Rtmpte,
        }
    }
}

impl GstObjectImpl for RsRtmpSink {}

impl ElementImpl for RsRtmpSink {
    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        _name: Option<&str>,
        _caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        let video = match templ.name_template() {
            "video" => true,
            "audio" => false,
            _ => return None,
        };
        let mut ex = self.ex.lock().unwrap();
        if ex.inputs.iter().any(|i| i.video == video) {
            gst::warning!(CAT, imp = self, "one {} pad at most", templ.name_template());
            return None;
        }
        let pad = gst::Pad::builder_from_template(templ)
            .name(templ.name_template())
            .chain_function(|pad, parent, buffer| {
                RsRtmpSink::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.ex_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                RsRtmpSink::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.ex_event(pad, event),
                )
            })
            .build();
        ex.inputs.push(ExInput {
            pad: pad.clone(),
            video,
            fourcc: None,
            config: None,
            config_sent: false,
            av1: None,
            segment: gst::FormattedSegment::new(),
            eos: false,
        });
        drop(ex);
        self.obj().add_pad(&pad).ok()?;
        Some(pad)
    }

    fn release_pad(&self, pad: &gst::Pad) {
        self.ex.lock().unwrap().inputs.retain(|i| &i.pad != pad);
        let _ = self.obj().remove_pad(pad);
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "RTMP publisher",
                "Sink/Network",
                "Publishes FLV to an RTMP or RTMPS server, reconnecting when the connection drops",
                "gst-plugin-livestreaming developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::builder("video/x-flv").build();
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "video",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &gst::Caps::from_str(
                        "video/x-h265, stream-format=hvc1, alignment=au; \
                         video/x-av1, stream-format=obu-stream, alignment=tu; \
                         video/x-vp9",
                    )
                    .unwrap(),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "audio",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &gst::Caps::from_str("audio/x-opus, channel-mapping-family=[0, 1]").unwrap(),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl RsRtmpSink {
    fn ex_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        let sinkpad = self.obj().static_pad("sink").expect("sink pad");
        match event.view() {
            gst::EventView::Caps(c) => {
                let caps = c.caps();
                let config = match ex_config(caps) {
                    Ok(c) => c,
                    Err(e) => {
                        gst::element_imp_error!(
                            self,
                            gst::StreamError::Format,
                            ("{}: {}", pad.name(), e)
                        );
                        return false;
                    }
                };
                gst::debug!(CAT, imp = self, "{}: {} ({})", pad.name(), config.0, caps);
                let mut ex = self.ex.lock().unwrap();
                if let Some(input) = ex.inputs.iter_mut().find(|i| &i.pad == pad) {
                    let (fourcc, record, av1) = config;
                    if input.fourcc != Some(fourcc) || input.config != record || record.is_none() {
                        input.config_sent = false;
                    }
                    input.fourcc = Some(fourcc);
                    input.config = record;
                    input.av1 = av1;
                }
                true
            }
            gst::EventView::Segment(seg) => {
                let mut ex = self.ex.lock().unwrap();
                if let Some(input) = ex.inputs.iter_mut().find(|i| &i.pad == pad) {
                    match seg.segment().downcast_ref::<gst::ClockTime>() {
                        Some(s) => input.segment = s.clone(),
                        None => {
                            drop(ex);
                            gst::element_imp_error!(
                                self,
                                gst::StreamError::Format,
                                ("{}: only TIME segments are supported", pad.name())
                            );
                            return false;
                        }
                    }
                }
                true
            }
            gst::EventView::Eos(_) => {
                let all = {
                    let mut ex = self.ex.lock().unwrap();
                    if let Some(input) = ex.inputs.iter_mut().find(|i| &i.pad == pad) {
                        input.eos = true;
                    }
                    ex.inputs.iter().all(|i| i.eos || !i.pad.is_linked())
                };
                if all {
                    gst::debug!(CAT, imp = self, "every elementary input ended: EOS");
                    self.start_sink_stream(&sinkpad);
                    return sinkpad.send_event(event);
                }
                true
            }
            gst::EventView::FlushStart(_) | gst::EventView::FlushStop(_) => {
                sinkpad.send_event(event)
            }
            // Stream-start, tags...: the sink pad's stream is ours.
            _ => true,
        }
    }

    /// stream-start, caps and a TIME segment (running time) on our sink pad, once.
    fn start_sink_stream(&self, sinkpad: &gst::Pad) {
        {
            let mut ex = self.ex.lock().unwrap();
            if ex.started {
                return;
            }
            ex.started = true;
        }
        // (create_stream_id is for source pads.)
        let stream_id = format!("{}/ertmp", self.obj().name());
        sinkpad.send_event(gst::event::StreamStart::new(stream_id.as_str()));
        sinkpad.send_event(gst::event::Caps::new(&gst::Caps::new_empty_simple(
            "video/x-flv",
        )));
        let segment = gst::FormattedSegment::<gst::ClockTime>::new();
        sinkpad.send_event(gst::event::Segment::new(&segment));
    }

    fn ex_chain(
        &self,
        pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let sinkpad = self.obj().static_pad("sink").expect("sink pad");
        if sinkpad.is_linked() {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("Use either the sink pad (FLV) or the video/audio pads (elementary streams), not both")
            );
            return Err(gst::FlowError::Error);
        }
        let mut tags = Vec::with_capacity(2);
        let running_ms;
        {
            let mut ex = self.ex.lock().unwrap();
            let Some(input) = ex.inputs.iter_mut().find(|i| &i.pad == pad) else {
                return Err(gst::FlowError::Flushing);
            };
            let Some(fourcc) = input.fourcc else {
                return Err(gst::FlowError::NotNegotiated);
            };
            let rt = |t: Option<gst::ClockTime>| t.and_then(|t| input.segment.to_running_time(t));
            let Some(dts) = rt(buffer.dts()).or_else(|| rt(buffer.pts())) else {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{}: buffer without time dropped",
                    pad.name()
                );
                return Ok(gst::FlowSuccess::Ok);
            };
            let pts = rt(buffer.pts()).unwrap_or(dts);
            running_ms = dts;
            let ms = dts.mseconds();
            let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
            let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
            if input.config.is_none()
                && let Some((hbd, twelve, mono, sub)) = input.av1
                && let Some(obu) = enhanced::av1_sequence_header_obu(&map)
            {
                input.config = Some(enhanced::av1_config_record(obu, hbd, twelve, mono, sub));
                input.config_sent = false;
            }
            let kind = if input.video {
                TagKind::Video
            } else {
                TagKind::Audio
            };
            let body = |k: PacketKind, payload: &[u8]| {
                if input.video {
                    enhanced::write_video(fourcc, k, keyframe, payload)
                } else {
                    enhanced::write_audio(fourcc, k, payload)
                }
            };
            if !input.config_sent
                && let Some(config) = &input.config
            {
                tags.push(Tag {
                    kind,
                    timestamp: (ms & 0xffff_ffff) as u32,
                    data: Bytes::from(if input.video {
                        enhanced::write_video(fourcc, PacketKind::SequenceStart, true, config)
                    } else {
                        enhanced::write_audio(fourcc, PacketKind::SequenceStart, config)
                    }),
                });
                input.config_sent = true;
            }
            let cts = (pts.mseconds() as i64 - ms as i64).clamp(-0x80_0000, 0x7f_ffff) as i32;
            tags.push(Tag {
                kind,
                timestamp: (ms & 0xffff_ffff) as u32,
                data: Bytes::from(body(
                    PacketKind::CodedFrames {
                        composition_time: cts,
                    },
                    &map,
                )),
            });
        }
        self.start_sink_stream(&sinkpad);
        for tag in tags {
            let mut data = Vec::with_capacity(tag.data.len() + 15);
            crate::rtmp::flv::write_tag(&tag, &mut data);
            let mut out = gst::Buffer::from_mut_slice(data);
            out.get_mut().unwrap().set_pts(running_ms);
            sinkpad.chain(out)?;
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn stats(&self) -> gst::Structure {
        let state = self.state.lock().unwrap();
        let (st, depth, queued, drops) = match state.as_ref() {
            Some(s) => s.publication.stats(),
            None => Default::default(),
        };
        gst::Structure::builder("application/x-rtmp-stats")
            .field("out-bytes-total", st.bytes_out)
            .field("in-bytes-total", st.bytes_in)
            .field("out-bytes-acked", u64::from(st.bytes_acked))
            .field("bitrate", st.bitrate)
            .field("reconnects", st.reconnects)
            .field("acks-received", st.acks_received)
            .field("acks-sent", st.acks_sent)
            .field("in-chunk-size", st.in_chunk_size)
            .field("out-chunk-size", st.out_chunk_size)
            .field("in-window-ack-size", st.in_window_ack_size)
            .field("out-window-ack-size", st.out_window_ack_size)
            .field("queue-depth", depth as u64)
            .field("queue-bytes", queued as u64)
            .field("drops", drops)
            .field("video-tags", st.video_tags)
            .field("audio-tags", st.audio_tags)
            .field("data-tags", st.data_tags)
            .field("publishing", st.publishing)
            .build()
    }

    fn on_notice(element: &super::RsRtmpSink, notice: Notice) {
        match notice {
            Notice::Publishing { reconnected } => {
                gst::info!(
                    CAT,
                    obj = element,
                    "publishing (reconnected: {})",
                    reconnected
                );
                if reconnected {
                    let _ = element.post_message(messages::reconnected(element, "rsrtmpsink"));
                }
            }
            Notice::Reconnecting {
                attempt,
                of,
                delay,
                reason,
            } => {
                let reason = reason.to_string();
                gst::warning!(
                    CAT,
                    obj = element,
                    "publication lost ({}), reconnecting {}/{} in {:?}",
                    reason,
                    attempt,
                    of,
                    delay
                );
                let _ = element.post_message(messages::reconnect(
                    element,
                    "rsrtmpsink",
                    attempt,
                    of,
                    delay,
                    &reason,
                ));
            }
            Notice::Warning(w) => gst::warning!(CAT, obj = element, "{}", w),
            Notice::Status { level, code } => {
                gst::info!(CAT, obj = element, "server status {}: {}", level, code)
            }
            Notice::Failed {
                error,
                context,
                stage,
            } => {
                let text = format!("{context}: {error}");
                gst::error!(CAT, obj = element, "{}", text);
                // The core's errors never carry the stream name: the debug form is safe.
                let debug = format!("{error:?}");
                gst::element_error!(
                    element,
                    resource_error(&error, stage),
                    ("{}", text),
                    ["{}", debug]
                );
            }
        }
    }
}

impl BaseSinkImpl for RsRtmpSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let config = self.settings.lock().unwrap().net_config().map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ("Invalid RTMP location: {}", e)
            )
        })?;
        let mut config = config;
        config.name = self.obj().name().to_string();
        {
            let mut ex = self.ex.lock().unwrap();
            ex.started = false;
            for input in ex.inputs.iter_mut() {
                input.eos = false;
                input.config_sent = false;
                if input.video {
                    config
                        .fourcc_list
                        .extend(["hvc1", "av01", "vp09"].map(String::from));
                } else {
                    config.fourcc_list.push("Opus".into());
                }
            }
        }
        gst::info!(CAT, imp = self, "publishing to {}", config.location);
        let timeout = config.timeout;
        let element = self.obj().downgrade();
        let publication = Publication::start(
            config,
            Box::new(move |notice| {
                if let Some(e) = element.upgrade() {
                    RsRtmpSink::on_notice(&e, notice);
                }
            }),
        )
        .map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Failed,
                ("Could not start the network thread: {}", e)
            )
        })?;
        *self.state.lock().unwrap() = Some(State {
            publication,
            parser: FlvParser::new(MAX_TAG_SIZE),
            timeout,
            logged_drop: false,
        });
        // peak-kbps may have changed since the configuration was taken.
        let rate = peak_rate(self.settings.lock().unwrap().peak_kbps);
        if let Some(state) = self.state.lock().unwrap().as_ref() {
            state.publication.set_peak_rate(rate);
        }
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = self.state.lock().unwrap().take();
        if let Some(state) = state {
            let timeout = state.timeout.min(Duration::from_secs(3));
            state.publication.stop(timeout);
        }
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        // The tags keep the buffer's memory: no copy between flvmux and the chunk encoder.
        let map = buffer.clone().into_mapped_buffer_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::CoreError::Failed, ("Could not map buffer"));
            gst::FlowError::Error
        })?;
        let mut guard = self.state.lock().unwrap();
        let Some(state) = guard.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        if state.publication.is_finished() {
            // The error is on the bus already.
            return Err(gst::FlowError::Error);
        }
        state.parser.feed_bytes(Bytes::from_owner(map));
        loop {
            let tag = match state.parser.next_tag() {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => {
                    drop(guard);
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("The input is not valid FLV: {}", e)
                    );
                    return Err(gst::FlowError::Error);
                }
            };
            if state.publication.push(tag) == Pushed::Dropped && !state.logged_drop {
                state.logged_drop = true;
                gst::warning!(
                    CAT,
                    imp = self,
                    "the network is slower than the stream: dropping frames (counted in stats)"
                );
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Eos(_) = event.view() {
            // Let everything queued reach the server before the pipeline hears EOS.
            // Not under the state lock: `stats` stays readable meanwhile.
            let waiter = self
                .state
                .lock()
                .unwrap()
                .as_ref()
                .map(|s| (s.publication.drain_waiter(), s.timeout));
            if let Some((waiter, timeout)) = waiter
                && !waiter.wait(timeout)
            {
                gst::warning!(CAT, imp = self, "EOS: not everything queued could be sent");
            }
        }
        self.parent_event(event)
    }
}

impl URIHandlerImpl for RsRtmpSink {
    const URI_TYPE: gst::URIType = gst::URIType::Sink;

    fn protocols() -> &'static [&'static str] {
        &["rtmp", "rtmps", "rtmpt", "rtmpts", "rtmpe", "rtmpte"]
    }

    fn uri(&self) -> Option<String> {
        Some(self.settings.lock().unwrap().location().to_uri())
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        self.settings
            .lock()
            .unwrap()
            .set_location(uri)
            .map_err(|e| glib::Error::new(gst::URIError::BadUri, &e.to_string()))
    }
}
