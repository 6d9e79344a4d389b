//! `rshlssink`: HLS segments and playlists, written locally, served or uploaded.
//!
//! A bin: request pads `video` and `audio` (as hlssink2), each into its own minimal internal sink
//! whose frames the built-in muxer ([`crate::hls::ts`], interleaved by [`super::builtin`]) turns
//! into TS for [`crate::hls::writer::Writer`]; or, with `muxer=mpegtsmux` or for caps the
//! built-in muxer cannot take, → the stock `mpegtsmux` → one internal sink feeding the writer.
//! With `segment-format=fmp4` the internal sinks' frames become ISO BMFF samples instead
//! ([`crate::hls::fmp4`], never mpegtsmux), cut at the same points into fMP4 segments with an
//! init segment per format.
//! Probes on the input pads feed running times to [`crate::hls::planner::Planner`], which decides
//! where segments start (the first keyframe at or after each multiple of target-duration in
//! running time) and which keyframes to ask upstream for ahead of time; the probes send those
//! requests (force-key-unit) and announce each cut to the writer. The writer cuts the transport stream
//! there and queues each finished segment, key and playlist for an output worker thread, so the
//! streaming thread never waits for storage or the network.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use gio::prelude::*;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::builtin::{self, Builtin};
use super::output::OutputSink;
use super::{Encryption, Muxer, PlaylistType, SegmentFormat};
use crate::hls::http::{HttpConfig, HttpServer};
use crate::hls::iframes;
use crate::hls::location::{self, Locations};
use crate::hls::multivariant::{self, AudioRendition, Bandwidth, Codec, IFrameVariant, Variant};
use crate::hls::planner::{KeyframeRequest, Planner};
use crate::hls::playlist::{PlaylistConfig, PlaylistKind};
use crate::hls::s3::{S3Config, S3Settings, S3Store};
use crate::hls::segmenter::{SegmenterConfig, SplitOn};
use crate::hls::store::{DirStore, Output, OutputConfig, OutputEvent, Published, Store};
use crate::hls::store::{FileKind, Job, StoreError};
use crate::hls::upload::HttpStore;
use crate::hls::writer::{self, Writer, WriterConfig};
use crate::rtsp_server_props::{CertificatePem, tls_config};

/// Why rshlssink stops with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    /// Writing, uploading or deleting a file.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output did not finish within the flush timeout.
    #[error("timed out writing the last files")]
    FlushTimeout,
    /// The built-in muxer was given no stream it can mux.
    #[error("no streams to mux")]
    NoStreams,
    #[error("unreadable buffer")]
    Unmappable,
}

/// The one place that turns the core's errors into GStreamer errors, with the domain chosen
/// from the error's data (I/O error kind, HTTP status), never from its text.
fn post_error(element: &super::RsHlsSink, error: &SinkError) {
    use std::io::ErrorKind;
    let debug = format!("{error:?}");
    macro_rules! post {
        ($domain:expr) => {
            gst::element_error!(element, $domain, ("{}", error), ["{}", debug])
        };
    }
    match error {
        SinkError::Store(StoreError::Io { kind, .. }) => match kind {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
                post!(gst::ResourceError::NoSpaceLeft)
            }
            ErrorKind::PermissionDenied | ErrorKind::NotFound | ErrorKind::ReadOnlyFilesystem => {
                post!(gst::ResourceError::OpenWrite)
            }
            _ => post!(gst::ResourceError::Write),
        },
        SinkError::Store(
            StoreError::Http {
                status: 401 | 403, ..
            }
            | StoreError::S3 {
                status: 401 | 403, ..
            },
        ) => post!(gst::ResourceError::NotAuthorized),
        SinkError::Store(
            StoreError::Http { .. } | StoreError::S3 { .. } | StoreError::Network { .. },
        )
        | SinkError::FlushTimeout => post!(gst::ResourceError::Write),
        SinkError::Store(StoreError::Tls { .. } | StoreError::Application { .. }) => {
            post!(gst::ResourceError::OpenWrite)
        }
        SinkError::Store(StoreError::Location { .. }) => post!(gst::ResourceError::Settings),
        SinkError::NoStreams => post!(gst::StreamError::Format),
        SinkError::Unmappable => post!(gst::CoreError::Failed),
    }
}

/// hlssink2's signals in front of the real store: an application that returns an output stream
/// from `get-playlist-stream` / `get-fragment-stream` gets the file's bytes there instead;
/// `delete-fragment` tells it a segment expired (a local file of that name is deleted too).
struct SignalStore {
    element: glib::WeakRef<super::RsHlsSink>,
    inner: Arc<dyn Store>,
}

impl Store for SignalStore {
    fn put(&self, location: &str, kind: FileKind, data: &[u8]) -> Result<(), StoreError> {
        let signal = match kind {
            FileKind::Playlist => Some("get-playlist-stream"),
            FileKind::Segment | FileKind::Init | FileKind::Part => Some("get-fragment-stream"),
            FileKind::Key => None,
        };
        if let (Some(signal), Some(obj)) = (signal, self.element.upgrade())
            && let Some(stream) =
                obj.emit_by_name::<Option<gio::OutputStream>>(signal, &[&location])
        {
            let write = || -> Result<(), glib::Error> {
                stream.write_all(data, gio::Cancellable::NONE)?;
                stream.close(gio::Cancellable::NONE)
            };
            return write().map_err(|e| StoreError::Application {
                location: location.to_owned(),
                message: e.to_string(),
            });
        }
        self.inner.put(location, kind, data)
    }

    fn delete(&self, location: &str, kind: FileKind) -> Result<(), StoreError> {
        if matches!(kind, FileKind::Segment | FileKind::Init | FileKind::Part)
            && let Some(obj) = self.element.upgrade()
        {
            obj.emit_by_name::<()>("delete-fragment", &[&location]);
        }
        self.inner.delete(location, kind)
    }

    fn local_path(&self, location: &str) -> Option<std::path::PathBuf> {
        self.inner.local_path(location)
    }
}

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new("rshlssink", gst::DebugColorFlags::empty(), Some("HLS sink"))
});

const DEFAULT_LOCATION: &str = "segment%05d.ts";
/// The segments' default name with `segment-format=fmp4`.
const DEFAULT_FMP4_SEGMENT: &str = "segment%05d.m4s";
const DEFAULT_INIT_LOCATION: &str = "init%05d.mp4";
const DEFAULT_PLAYLIST_LOCATION: &str = "playlist.m3u8";
const DEFAULT_TARGET_DURATION: u32 = 15;
const DEFAULT_PLAYLIST_LENGTH: u32 = 5;
const DEFAULT_MAX_FILES: u32 = 10;
const DEFAULT_HTTP_PORT: i32 = -1;
const DEFAULT_HTTP_ADDRESS: &str = "0.0.0.0";
const DEFAULT_HTTP_MAX_CONNECTIONS: u32 = 100;
const DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS: u32 = 16;
const DEFAULT_HTTP_REQUEST_TIMEOUT: u32 = 10;
/// How long EOS waits for queued output.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stopping without EOS waits for queued output.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Settings {
    location: String,
    playlist_location: String,
    playlist_root: Option<String>,
    target_duration: u32,
    playlist_length: u32,
    max_files: u32,
    send_keyframe_requests: bool,
    playlist_type: PlaylistType,
    program_date_time: bool,
    encryption: Encryption,
    key_rotation: u32,
    resume: bool,
    http_port: i32,
    http_address: String,
    http_max_connections: u32,
    http_max_connections_per_address: u32,
    http_request_timeout: u32,
    upload_ca_file: Option<String>,
    s3: S3Settings,
    tls_certificate_file: Option<String>,
    tls_key_file: Option<String>,
    tls_certificate: Option<ServerCertificate>,
    muxer: Muxer,
    segment_format: SegmentFormat,
    init_location: String,
    /// LL-HLS part duration in seconds; 0: off.
    part_duration: f64,
    /// Write an I-frame playlist beside each (video) media playlist.
    i_frame_playlist: bool,
    /// Put before the key files' names (`NAME_key00000.key`): a rendition's, so that the
    /// renditions' keys never share a name. Not a property.
    key_name_prefix: String,
    /// A rendition's inner sink whose parent serves HTTP (no property).
    served: bool,
}

/// What `tls-certificate` was set to. Its `Debug` form leaves the private key out.
#[derive(Clone)]
struct ServerCertificate(CertificatePem);

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCertificate")
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            location: DEFAULT_LOCATION.into(),
            playlist_location: DEFAULT_PLAYLIST_LOCATION.into(),
            playlist_root: None,
            target_duration: DEFAULT_TARGET_DURATION,
            playlist_length: DEFAULT_PLAYLIST_LENGTH,
            max_files: DEFAULT_MAX_FILES,
            send_keyframe_requests: true,
            playlist_type: PlaylistType::Live,
            program_date_time: false,
            encryption: Encryption::None,
            key_rotation: 0,
            resume: true,
            http_port: DEFAULT_HTTP_PORT,
            http_address: DEFAULT_HTTP_ADDRESS.into(),
            http_max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            http_max_connections_per_address: DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS,
            http_request_timeout: DEFAULT_HTTP_REQUEST_TIMEOUT,
            upload_ca_file: None,
            s3: S3Settings::default(),
            tls_certificate_file: None,
            tls_key_file: None,
            tls_certificate: None,
            muxer: Muxer::Builtin,
            segment_format: SegmentFormat::Mpegts,
            init_location: DEFAULT_INIT_LOCATION.into(),
            part_duration: 0.0,
            i_frame_playlist: false,
            key_name_prefix: String::new(),
            served: false,
        }
    }
}

/// Where an input pad's data goes.
enum Target {
    /// A request pad of mpegtsmux.
    Mux(gst::Pad),
    /// Its own internal sink, feeding the built-in muxer.
    Sink(OutputSink),
}

struct InputPad {
    ghost: gst::GhostPad,
    target: Target,
    video: bool,
}

/// Per-stream bookkeeping on the input side.
#[derive(Default)]
struct InputState {
    /// Where segments start and which keyframes to ask for (the decisions; this element only
    /// feeds it running times and turns its requests into force-key-unit events).
    planner: Planner,
    /// Caps and stream-start seen per pad, to notice changes.
    caps: Vec<(String, gst::Caps)>,
    stream_starts: Vec<String>,
}

#[derive(Default)]
pub struct RsHlsSink {
    settings: Mutex<Settings>,
    /// mpegtsmux, made when the first pad that needs it is requested.
    mux: Mutex<Option<gst::Element>>,
    /// The muxer chosen with the first pad (builtin until a pad needs mpegtsmux).
    mode: Mutex<Option<Muxer>>,
    builtin: Mutex<Builtin>,
    pads: Mutex<Vec<InputPad>>,
    writer: Mutex<Option<Writer>>,
    input: Mutex<InputState>,
    /// What the built-in server may serve; a rendition's inner rshlssink shares its parent's.
    published: Mutex<Arc<Published>>,
    /// A rendition's inner rshlssink: every rendition's position (EXT-X-RENDITION-REPORT), and
    /// its own playlist's name in it.
    reports: Mutex<Option<(Arc<crate::hls::playlist::RenditionReports>, String)>>,
    http: Mutex<Option<HttpServer>>,
    /// `video_%u` / `audio_%u` pads: renditions and the multivariant playlist.
    multivariant: Mutex<MultivariantState>,
}

/// A rendition of a multivariant stream: an inner rshlssink of its own (its own planner,
/// writer and media playlist) behind the `video_%u`/`audio_%u` ghost pad. Its segments start at
/// the same running times as every other rendition's, since every planner cuts at the multiples
/// of `target-duration` in running time and asks its encoder for keyframes there.
struct Rendition {
    name: String,
    video: bool,
    ghost: gst::GhostPad,
    child: super::RsHlsSink,
    /// Where its media playlist is, for the multivariant playlist's URI.
    playlist: String,
    bandwidth: Bandwidth,
    /// It writes an I-frame playlist (`i-frame-playlist`, video), and the peak bit rate of its
    /// I-frames so far.
    iframes: bool,
    iframe_peak_bps: u64,
    /// The codec string its fMP4 sample entry gives (`codecs` of its segment messages), which
    /// CODECS prefers to the one made from caps.
    entry_codecs: Option<String>,
}

#[derive(Default)]
struct MultivariantState {
    renditions: Vec<Rendition>,
    /// Writes the multivariant playlist (`playlist-location`).
    output: Option<Output>,
    location: String,
    playlist_root: Option<String>,
    /// What was written last (written again only when it changes).
    written: Option<String>,
}

#[glib::object_subclass]
impl ObjectSubclass for RsHlsSink {
    const NAME: &'static str = "GstLsHlsSink";
    type Type = super::RsHlsSink;
    type ParentType = gst::Bin;
}

fn clock_ns(t: Option<gst::ClockTime>) -> Option<u64> {
    t.map(|t| t.nseconds())
}

impl RsHlsSink {
    fn locations(settings: &Settings) -> Result<Locations, gst::ErrorMessage> {
        let invalid =
            |e| gst::error_msg!(gst::ResourceError::Settings, ("Invalid location: {}", e));
        let mut locations =
            location::resolve(&settings.location, &settings.playlist_location).map_err(invalid)?;
        if !settings.key_name_prefix.is_empty() {
            let dir = location::parent(locations.key.prefix());
            let name = format!("{}key%05d.key", settings.key_name_prefix);
            locations.key =
                location::Pattern::parse(&location::join(dir, &name)).map_err(invalid)?;
        }
        if settings.segment_format == SegmentFormat::Fmp4 {
            // The default names end in .m4s; a pattern the application gave stays as it is.
            let segment = if settings.location == DEFAULT_LOCATION {
                Some(DEFAULT_FMP4_SEGMENT.to_owned())
            } else if location::is_directory_like(&settings.location) {
                Some(location::join(
                    settings.location.trim_end_matches('/'),
                    DEFAULT_FMP4_SEGMENT,
                ))
            } else {
                None
            };
            if let Some(segment) = segment {
                locations.segment = location::Pattern::parse(&segment).map_err(invalid)?;
            }
        }
        Ok(locations)
    }

    /// Where fMP4 init segments go: `init-location`, beside the segments when relative.
    fn init_pattern(
        settings: &Settings,
        locations: &Locations,
    ) -> Result<location::Pattern, gst::ErrorMessage> {
        let init = &settings.init_location;
        let full = if init.starts_with('/') || location::is_url(init) {
            init.clone()
        } else {
            location::join(location::parent(&locations.segment.format(0)), init)
        };
        location::Pattern::parse(&full).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ("Invalid init-location: {}", e)
            )
        })
    }

    fn make_store(
        &self,
        locations: &Locations,
    ) -> Result<(Arc<dyn Store>, OutputConfig), gst::ErrorMessage> {
        let (inner, config): (Arc<dyn Store>, OutputConfig) = if locations.upload {
            let (ca_file, s3) = {
                let s = self.settings.lock().unwrap();
                (s.upload_ca_file.clone(), s.s3.clone())
            };
            let ca_file = ca_file.as_deref().map(std::path::Path::new);
            let cannot = |e: &dyn std::fmt::Display| {
                gst::error_msg!(gst::ResourceError::Settings, ("Cannot upload: {}", e))
            };
            let any_s3 = [
                locations.segment.prefix(),
                locations.playlist.as_str(),
                locations.key.prefix(),
            ]
            .iter()
            .any(|l| location::is_s3(l));
            let store: Arc<dyn Store> = if any_s3 {
                let config = S3Config::resolve(&s3, |name| std::env::var(name).ok())
                    .map_err(|e| cannot(&e))?;
                Arc::new(S3Store::new(config, ca_file).map_err(|e| cannot(&e))?)
            } else {
                Arc::new(HttpStore::new(ca_file).map_err(|e| cannot(&e))?)
            };
            (
                store,
                // Never stall the pipeline on the origin: drop the oldest queued segment.
                OutputConfig {
                    block_when_full: false,
                    ..OutputConfig::default()
                },
            )
        } else {
            (Arc::new(DirStore), OutputConfig::default())
        };
        let store = SignalStore {
            element: self.obj().downgrade(),
            inner,
        };
        Ok((Arc::new(store), config))
    }

    fn start_writer(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let locations = Self::locations(&settings)?;
        let has_video = self.pads.lock().unwrap().iter().any(|p| p.video);
        let kind = match settings.playlist_type {
            PlaylistType::Live => PlaylistKind::Live,
            PlaylistType::Event => PlaylistKind::Event,
            PlaylistType::Vod => PlaylistKind::Vod,
        };
        let tolerance = self.input.lock().unwrap().planner.tolerance_ns();
        let fmp4 = settings.segment_format == SegmentFormat::Fmp4;
        if fmp4 && *self.mode.lock().unwrap() == Some(Muxer::Mpegtsmux) {
            return Err(gst::error_msg!(
                gst::CoreError::Negotiation,
                ("segment-format=fmp4 needs the built-in muxer (muxer=builtin)")
            ));
        }
        let fmp4_init = if fmp4 {
            Some(Self::init_pattern(&settings, &locations)?)
        } else {
            None
        };
        if settings.i_frame_playlist && settings.encryption != Encryption::None {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("i-frame-playlist cannot be combined with encryption (byte ranges of encrypted segments)")
            ));
        }
        self.builtin.lock().unwrap().set_fmp4(fmp4);
        let config = WriterConfig {
            locations: locations.clone(),
            playlist_root: settings.playlist_root.clone(),
            playlist: PlaylistConfig {
                kind,
                playlist_length: settings.playlist_length as usize,
                target_duration_s: u64::from(settings.target_duration),
            },
            max_files: settings.max_files as usize,
            encryption: (settings.encryption == Encryption::Aes128).then_some(writer::Encryption {
                key_rotation: settings.key_rotation,
            }),
            program_date_time: settings.program_date_time,
            segmenter: SegmenterConfig {
                target_ns: u64::from(settings.target_duration) * 1_000_000_000,
                tolerance_ns: tolerance,
                split_on: if has_video {
                    SplitOn::Keyframes
                } else {
                    SplitOn::PesStart
                },
            },
            fmp4_init,
            iframes: settings
                .i_frame_playlist
                .then(|| iframes::iframes_location(&locations.playlist)),
        };
        let init_prefix = config.fmp4_init.as_ref().map(|p| p.prefix().to_owned());
        let (store, output_config) = self.make_store(&locations)?;
        let output = Output::start(
            store,
            output_config,
            Some(self.published.lock().unwrap().clone()),
            self.output_events(),
        );
        if !locations.upload {
            for path in crate::hls::store::remove_stale_temporaries(
                &[&locations.playlist],
                &[
                    locations.segment.prefix(),
                    locations.key.prefix(),
                    init_prefix.as_deref().unwrap_or(locations.key.prefix()),
                ],
            ) {
                gst::info!(
                    CAT,
                    imp = self,
                    "removed {} left by an earlier run",
                    path.display()
                );
            }
        }
        let previous = (settings.resume && !locations.upload && kind != PlaylistKind::Vod)
            .then(|| std::fs::read(&locations.playlist).ok())
            .flatten()
            .and_then(|bytes| m3u8_rs::parse_media_playlist_res(&bytes).ok())
            .filter(|p| !p.end_list && !p.segments.is_empty())
            // Never TS segments after an EXT-X-MAP, nor fMP4 ones without one.
            .filter(|p| p.segments.iter().any(|s| s.map.is_some()) == fmp4);
        let mut writer = match previous {
            Some(p) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "continuing {} after sequence {}",
                    locations.playlist,
                    p.media_sequence + p.segments.len() as u64 - 1
                );
                Writer::resume(config, output, &p)
            }
            None => Writer::new(config, output),
        };
        if settings.part_duration > 0.0 {
            let part_ns = (settings.part_duration * 1e9).round() as u64;
            if !writer.set_part_duration(part_ns) {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("part-duration (LL-HLS parts) cannot be used with encryption")
                ));
            }
            // A rendition is served by its parent's server (`served`).
            let served = settings.http_port >= 0 || settings.served;
            writer.set_part_streaming(served);
            if let Some((reports, uri)) = self.reports.lock().unwrap().clone() {
                writer.set_rendition_reports(reports, uri);
            }
            gst::info!(
                CAT,
                imp = self,
                "LL-HLS: parts of {} s{}",
                settings.part_duration,
                if served {
                    ", the part being filled served as it is written"
                } else {
                    ""
                }
            );
        }
        *self.writer.lock().unwrap() = Some(writer);
        let mut input = self.input.lock().unwrap();
        input.planner.reset();
        input.caps.clear();
        input.stream_starts.clear();
        Ok(())
    }

    /// What the output worker reports becomes an error or a warning of the element.
    fn output_events(&self) -> Box<dyn Fn(OutputEvent) + Send + Sync> {
        let weak = self.obj().downgrade();
        Box::new(move |event| {
            let Some(obj) = weak.upgrade() else { return };
            match event {
                OutputEvent::Fatal(e) => post_error(&obj, &SinkError::Store(e)),
                OutputEvent::Dropped { .. } | OutputEvent::GaveUp { .. } => {
                    let msg = event.to_string();
                    gst::warning!(CAT, obj = obj, "{}", msg);
                    obj.post_message(
                        gst::message::Warning::builder(gst::ResourceError::Write, &msg)
                            .src(&obj)
                            .build(),
                    )
                    .ok();
                }
            }
        })
    }

    /// A `video_%u` / `audio_%u` pad: a rendition, written by an inner rshlssink.
    fn request_rendition(&self, templ: &gst::PadTemplate, name: Option<&str>) -> Option<gst::Pad> {
        let video = templ.name_template() == "video_%u";
        let kind = if video { "video" } else { "audio" };
        if !self.pads.lock().unwrap().is_empty() {
            gst::warning!(
                CAT,
                imp = self,
                "renditions ({}_%u) cannot be mixed with the video/audio pads",
                kind
            );
            return None;
        }
        if self.obj().current_state() > gst::State::Ready {
            gst::warning!(CAT, imp = self, "renditions are added before starting");
            return None;
        }
        let mut mv = self.multivariant.lock().unwrap();
        let taken = |n: &str| mv.renditions.iter().any(|r| r.name == n);
        let name = match name {
            Some(n) if !taken(n) && n.strip_prefix(kind)?.starts_with('_') => n.to_owned(),
            Some(_) => return None,
            None => (0..1000)
                .map(|i| format!("{kind}_{i}"))
                .find(|n| !taken(n))?,
        };
        let child = glib::Object::builder::<super::RsHlsSink>()
            .property("name", format!("rendition-{name}"))
            .build();
        self.obj().add(&child).ok()?;
        let target = child.request_pad_simple(kind)?;
        let ghost = gst::GhostPad::builder_from_template(templ)
            .name(name.as_str())
            .build();
        ghost.set_target(Some(&target)).ok()?;
        gst::debug!(CAT, imp = self, "rendition {} requested", name);
        mv.renditions.push(Rendition {
            name,
            video,
            ghost: ghost.clone(),
            child,
            playlist: String::new(),
            bandwidth: Bandwidth::new(0.0),
            iframes: false,
            iframe_peak_bps: 0,
            entry_codecs: None,
        });
        drop(mv);
        ghost.set_active(true).ok()?;
        self.obj().add_pad(&ghost).ok()?;
        Some(ghost.upcast())
    }

    fn has_renditions(&self) -> bool {
        !self.multivariant.lock().unwrap().renditions.is_empty()
    }

    /// Settings of each rendition's inner sink and the output of the multivariant playlist.
    /// Rendition NAME (the pad's name) writes `NAME.m3u8` beside `playlist-location` and
    /// `NAME_` + the segment (and init segment) names beside the segments.
    fn start_multivariant(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let locations = Self::locations(&settings)?;
        let fmp4 = settings.segment_format == SegmentFormat::Fmp4;
        let segment_name = if settings.location == DEFAULT_LOCATION
            || location::is_directory_like(&settings.location)
        {
            if fmp4 {
                DEFAULT_FMP4_SEGMENT
            } else {
                "segment%05d.ts"
            }
        } else {
            location::basename(&settings.location)
        };
        let segment_dir = location::parent(locations.segment.prefix());
        let playlist_dir = location::parent(&locations.playlist);
        let published = self.published.lock().unwrap().clone();
        let mut mv = self.multivariant.lock().unwrap();
        let report_uri = |r: &Rendition| format!("{}.m3u8", r.name);
        let reports = Arc::new(crate::hls::playlist::RenditionReports::new(
            mv.renditions.iter().map(report_uri),
        ));
        for r in &mut mv.renditions {
            *r.child.imp().reports.lock().unwrap() = Some((reports.clone(), report_uri(r)));
            let mut s = settings.clone();
            s.location = location::join(segment_dir, &format!("{}_{}", r.name, segment_name));
            s.playlist_location = location::join(playlist_dir, &format!("{}.m3u8", r.name));
            let init = &settings.init_location;
            s.init_location = location::join(
                location::parent(init),
                &format!("{}_{}", r.name, location::basename(init)),
            );
            s.http_port = -1;
            // Each rendition its own keys (rotated at the same sequence numbers, as the
            // segments are aligned): `NAME_key00000.key`.
            s.key_name_prefix = format!("{}_", r.name);
            // Audio renditions have no I-frames.
            s.i_frame_playlist &= r.video;
            r.iframes = s.i_frame_playlist;
            r.iframe_peak_bps = 0;
            r.entry_codecs = None;
            s.served = settings.http_port >= 0;
            r.playlist = s.playlist_location.clone();
            r.bandwidth = Bandwidth::new(f64::from(settings.target_duration));
            let child = r.child.imp();
            *child.settings.lock().unwrap() = s;
            *child.published.lock().unwrap() = published.clone();
        }
        let (store, output_config) = self.make_store(&locations)?;
        mv.output = Some(Output::start(
            store,
            output_config,
            Some(published),
            self.output_events(),
        ));
        mv.location = locations.playlist;
        mv.playlist_root = settings.playlist_root;
        mv.written = None;
        Ok(())
    }

    fn stop_multivariant(&self) {
        let output = self.multivariant.lock().unwrap().output.take();
        if let Some(o) = output
            && !o.close(STOP_TIMEOUT)
        {
            gst::warning!(CAT, imp = self, "the multivariant playlist was not written");
        }
    }

    /// A rendition finished a segment: its measured bandwidth, and the multivariant playlist
    /// once every rendition has a segment (and whenever it changes after that).
    fn on_rendition_segment(&self, src: &gst::Object, s: &gst::StructureRef) {
        let mut mv = self.multivariant.lock().unwrap();
        let Some(r) = mv
            .renditions
            .iter_mut()
            .find(|r| r.child.upcast_ref::<gst::Object>() == src)
        else {
            return;
        };
        let (Ok(bytes), Ok(duration)) = (s.get::<u64>("bytes"), s.get::<f64>("duration")) else {
            return;
        };
        r.bandwidth.add(bytes, duration);
        r.iframe_peak_bps = r
            .iframe_peak_bps
            .max(s.get::<u64>("i-frame-bitrate").unwrap_or(0));
        if let Ok(codecs) = s.get::<String>("codecs") {
            r.entry_codecs = Some(codecs);
        }
        if mv.renditions.iter().any(|r| r.bandwidth.segments == 0) {
            return;
        }
        let root = mv.playlist_root.as_deref();
        let mut variants = Vec::new();
        let mut audio = Vec::new();
        for r in &mv.renditions {
            let caps = r.ghost.current_caps();
            let st = caps.as_ref().and_then(|c| c.structure(0));
            let uri = location::playlist_uri(root, &r.playlist);
            let codec = match &r.entry_codecs {
                Some(c) => Some(Codec::Rfc6381(c.clone())),
                None => st.and_then(codec_of),
            };
            if r.video {
                variants.push(Variant {
                    uri,
                    codec,
                    resolution: st.and_then(|s| {
                        let w = s.get::<i32>("width").ok()?;
                        let h = s.get::<i32>("height").ok()?;
                        Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
                    }),
                    frame_rate: st
                        .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
                        .map(|f| (f.numer(), f.denom())),
                    bandwidth: r.bandwidth.clone(),
                    iframes: r.iframes.then(|| IFrameVariant {
                        uri: location::playlist_uri(root, &iframes::iframes_location(&r.playlist)),
                        peak_bps: r.iframe_peak_bps,
                    }),
                });
            } else {
                audio.push(AudioRendition {
                    name: r.name.clone(),
                    uri,
                    codec,
                    bandwidth: r.bandwidth.clone(),
                });
            }
        }
        let text = multivariant::render(&variants, &audio);
        if mv.written.as_deref() == Some(text.as_str()) {
            return;
        }
        let Some(output) = mv.output.as_ref() else {
            return;
        };
        gst::trace!(CAT, imp = self, "multivariant playlist:\n{}", text);
        let result = output.submit(Job::Put {
            location: mv.location.clone(),
            kind: FileKind::Playlist,
            data: Arc::new(text.clone().into_bytes()),
        });
        if let Err(e) = result {
            post_error(&self.obj(), &SinkError::Store(e));
            return;
        }
        mv.written = Some(text);
    }

    fn start_http(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        if settings.http_port < 0 {
            return Ok(());
        }
        let ip: std::net::IpAddr = settings.http_address.parse().map_err(|_| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                (
                    "http-address '{}' is not an IP address",
                    settings.http_address
                )
            )
        })?;
        let address = std::net::SocketAddr::new(ip, settings.http_port as u16);
        let tls = tls_config(
            settings.tls_certificate.as_ref().map(|c| &c.0),
            settings.tls_certificate_file.as_deref(),
            settings.tls_key_file.as_deref(),
        )
        .map_err(|e| {
            gst::error_msg!(gst::ResourceError::Settings, ("Cannot serve HTTPS: {}", e))
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = HttpServer::start(
            HttpConfig {
                address,
                max_connections: settings.http_max_connections as usize,
                max_connections_per_address: settings.http_max_connections_per_address as usize,
                request_timeout: std::time::Duration::from_secs(
                    settings.http_request_timeout.into(),
                ),
                playlist_cache_control: "no-cache".into(),
                tls,
            },
            self.published.lock().unwrap().clone(),
        )
        .map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenReadWrite,
                ("Could not listen for HTTP on {}: {}", address, e)
            )
        })?;
        gst::info!(
            CAT,
            imp = self,
            "serving HLS on {}://{}/",
            scheme,
            server.local_addr()
        );
        *self.http.lock().unwrap() = Some(server);
        self.obj().notify("http-bound-port");
        Ok(())
    }

    /// Writes what is buffered and waits for the output (EOS or stop).
    fn finish_writer(&self, end_of_stream: bool) -> Result<(), SinkError> {
        let mut guard = self.writer.lock().unwrap();
        let Some(w) = guard.as_mut() else {
            return Ok(());
        };
        if let Some(p) = w.finish(end_of_stream)? {
            self.post_segment_message(&p, None);
        }
        if !w.flush(FLUSH_TIMEOUT) {
            return Err(w
                .output()
                .failed()
                .map_or(SinkError::FlushTimeout, SinkError::Store));
        }
        Ok(())
    }

    /// Stopping without EOS: the partial segment and its playlist are queued and get
    /// [`STOP_TIMEOUT`] to be written, so that a dead origin cannot hold up a state change for long.
    fn stop_writer(&self) {
        {
            let mut builtin = self.builtin.lock().unwrap();
            if self.writer.lock().unwrap().is_some() {
                let _ = self.drain_builtin(&mut builtin, true);
            }
            builtin.reset();
        }
        let Some(mut w) = self.writer.lock().unwrap().take() else {
            return;
        };
        if let Err(e) = w.finish(false) {
            gst::warning!(CAT, imp = self, "stopping: {}", e);
        }
        if !w.close(STOP_TIMEOUT) {
            gst::warning!(
                CAT,
                imp = self,
                "stopping: gave up on output not written within {:?}",
                STOP_TIMEOUT
            );
        }
    }

    /// The muxer's output (it pushes lists of 188-byte packets): one lock per list.
    fn on_buffers<'a>(
        &self,
        buffers: impl Iterator<Item = &'a gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut guard = self.writer.lock().unwrap();
        let Some(w) = guard.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        for buffer in buffers {
            let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
            let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
            match w.push(&map, clock_ns(buffer.pts()), keyframe) {
                Ok(Some(p)) => {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "segment {} ({:.3} s) {}",
                        p.sequence,
                        p.duration_s,
                        p.location
                    );
                    self.post_segment_message(&p, None);
                }
                Ok(None) => {}
                Err(e) => {
                    drop(map);
                    drop(guard);
                    post_error(&self.obj(), &SinkError::Store(e));
                    return Err(gst::FlowError::Error);
                }
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// mpegtsmux and the sink after it, made and added on first use.
    fn mpegtsmux(&self) -> Option<gst::Element> {
        let mut guard = self.mux.lock().unwrap();
        if let Some(mux) = guard.as_ref() {
            return Some(mux.clone());
        }
        let obj = self.obj();
        let mux = gst::ElementFactory::make("mpegtsmux")
            .name("mux")
            .property_from_str("start-time-selection", "first")
            // Every packet made for an input buffer in one push (a list), not a push each.
            .property("alignment", 0i32)
            .build()
            .ok()?;
        let output = OutputSink::new("sink");
        let weak = obj.downgrade();
        let weak_eos = obj.downgrade();
        output.set_callbacks(
            Box::new(move |list| {
                let Some(obj) = weak.upgrade() else {
                    return Err(gst::FlowError::Flushing);
                };
                obj.imp().on_buffers(list.iter())
            }),
            Box::new(move || {
                if let Some(obj) = weak_eos.upgrade() {
                    obj.imp().on_eos();
                }
            }),
        );
        obj.add_many([&mux, output.upcast_ref()]).ok()?;
        mux.link(&output).ok()?;
        let _ = mux.sync_state_with_parent();
        let _ = output.sync_state_with_parent();
        *guard = Some(mux.clone());
        Some(mux)
    }

    /// An internal sink for input `name` on the built-in path.
    fn builtin_sink(&self, name: &str, video: bool) -> Option<OutputSink> {
        let obj = self.obj();
        let sink = OutputSink::new(&format!("{name}_sink"));
        let (w1, w2, w3) = (obj.downgrade(), obj.downgrade(), obj.downgrade());
        let (n1, n2, n3) = (name.to_string(), name.to_string(), name.to_string());
        sink.set_callbacks(
            Box::new(move |list| {
                let Some(obj) = w1.upgrade() else {
                    return Err(gst::FlowError::Flushing);
                };
                obj.imp().on_builtin_buffers(&n1, list)
            }),
            Box::new(move || {
                if let Some(obj) = w2.upgrade() {
                    obj.imp().on_builtin_eos(&n2);
                }
            }),
        );
        sink.set_event_callback(Box::new(move |event| {
            let Some(obj) = w3.upgrade() else {
                return Ok(());
            };
            let imp = obj.imp();
            match event.view() {
                gst::EventView::Caps(c) => imp.builtin.lock().unwrap().set_caps(&n3, c.caps()),
                gst::EventView::FlushStop(_) => {
                    imp.builtin.lock().unwrap().flush(&n3);
                    Ok(())
                }
                _ => Ok(()),
            }
        }));
        obj.add(&sink).ok()?;
        let _ = sink.sync_state_with_parent();
        self.builtin.lock().unwrap().add_input(name, video);
        Some(sink)
    }

    /// Input buffers on the built-in path: queued in running time, muxed in decode order.
    fn on_builtin_buffers(
        &self,
        name: &str,
        list: &gst::BufferListRef,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let segment = self
            .obj()
            .static_pad(name)
            .and_then(|p| p.sticky_event::<gst::event::Segment>(0))
            .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned());
        let running = |t: Option<gst::ClockTime>| -> Option<i64> {
            let t = t?;
            match segment.as_ref() {
                Some(seg) => match seg.to_running_time_full(t)? {
                    gst::Signed::Positive(t) => Some(t.nseconds() as i64),
                    gst::Signed::Negative(t) => Some(-(t.nseconds() as i64)),
                },
                None => Some(t.nseconds() as i64),
            }
        };
        let mut builtin = self.builtin.lock().unwrap();
        for buffer in list.iter_owned() {
            let (pts, dts) = (running(buffer.pts()), running(buffer.dts()));
            builtin.push(name, buffer, pts, dts);
        }
        self.drain_builtin(&mut builtin, false)
    }

    fn drain_builtin(
        &self,
        builtin: &mut Builtin,
        all: bool,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut guard = self.writer.lock().unwrap();
        let Some(w) = guard.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        match builtin.drain(w, all) {
            Ok(published) => {
                drop(guard);
                let codecs = builtin.entry_codecs();
                for p in &published {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "segment {} ({:.3} s) {}",
                        p.sequence,
                        p.duration_s,
                        p.location
                    );
                    self.post_segment_message(p, codecs.as_deref());
                }
                Ok(gst::FlowSuccess::Ok)
            }
            Err(e) => {
                drop(guard);
                post_error(&self.obj(), &e);
                Err(gst::FlowError::Error)
            }
        }
    }

    /// An input ended on the built-in path: once all have, everything queued is muxed and the
    /// playlist finished (before the last internal sink posts its EOS).
    fn on_builtin_eos(&self, name: &str) {
        let mut builtin = self.builtin.lock().unwrap();
        builtin.eos(name);
        if !builtin.all_eos() {
            let _ = self.drain_builtin(&mut builtin, false);
            return;
        }
        let _ = self.drain_builtin(&mut builtin, true);
        drop(builtin);
        self.on_eos();
    }

    /// Caps the built-in muxer cannot take arrived: before any data, every input moves to
    /// mpegtsmux (from the input's probe, before the caps reach the internal sink). Later, the
    /// caps are refused with an error.
    fn fall_back_to_mpegtsmux(&self, caps: &gst::Caps) {
        let mut pads = self.pads.lock().unwrap();
        let mut builtin = self.builtin.lock().unwrap();
        if builtin.started() {
            return;
        }
        gst::info!(CAT, imp = self, "{} needs mpegtsmux", caps);
        if self.switch_to_mpegtsmux(&mut pads, &mut builtin).is_none() {
            gst::warning!(CAT, imp = self, "could not switch to mpegtsmux");
        }
    }

    /// Moves every input to mpegtsmux (a pad the built-in muxer cannot take was requested).
    fn switch_to_mpegtsmux(&self, pads: &mut [InputPad], builtin: &mut Builtin) -> Option<()> {
        let mux = self.mpegtsmux()?;
        for p in pads.iter_mut() {
            if let Target::Sink(sink) = &p.target {
                let mux_pad = mux.request_pad_simple("sink_%d")?;
                p.ghost.set_target(Some(&mux_pad)).ok()?;
                let _ = sink.set_state(gst::State::Null);
                let _ = self.obj().remove(sink);
                builtin.remove_input(&p.ghost.name());
                p.target = Target::Mux(mux_pad);
            }
        }
        *self.mode.lock().unwrap() = Some(Muxer::Mpegtsmux);
        Some(())
    }

    /// Element message `rshlssink-segment-added` (location, sequence, duration in seconds, and
    /// the files deleted because of it) for applications that track the output. The file is
    /// queued for writing, not necessarily written yet. fMP4 H.264/H.265 adds `codecs`, the
    /// sample entry's RFC 6381 string, for the parent's multivariant playlist.
    fn post_segment_message(&self, p: &writer::Published, codecs: Option<&str>) {
        let deleted: Vec<glib::SendValue> = p.deleted.iter().map(|d| d.to_send_value()).collect();
        let s = gst::Structure::builder("rshlssink-segment-added")
            .field("location", &p.location)
            .field("sequence", p.sequence)
            .field("duration", p.duration_s)
            .field("bytes", p.bytes)
            .field("deleted", gst::List::new(deleted))
            .field("i-frame-bitrate", p.iframe_peak_bps)
            .field_if_some("codecs", codecs)
            .build();
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }

    fn on_eos(&self) {
        if let Err(e) = self.finish_writer(true) {
            post_error(&self.obj(), &e);
        }
    }

    /// Input buffers: note where the media ends and ask for the next segment's keyframe.
    fn on_input_buffer(&self, pad: &gst::Pad, video: bool, buffer: &gst::BufferRef) {
        let Some(segment) = pad
            .sticky_event::<gst::event::Segment>(0)
            .and_then(|e| e.segment().downcast_ref::<gst::ClockTime>().cloned())
        else {
            return;
        };
        let Some(rt) = segment.to_running_time(buffer.pts()) else {
            return;
        };
        let end = rt + buffer.duration().unwrap_or(gst::ClockTime::ZERO);
        let only_audio = !video && !self.pads.lock().unwrap().iter().any(|p| p.video);
        if (video || only_audio)
            && let Some(w) = self.writer.lock().unwrap().as_mut()
        {
            w.note_end(end.nseconds());
        }
        if !video {
            return;
        }
        let (target, send) = {
            let s = self.settings.lock().unwrap();
            (
                u64::from(s.target_duration) * 1_000_000_000,
                s.send_keyframe_requests,
            )
        };
        if target == 0 {
            // Every keyframe starts a segment: the segmenter's own rule.
            return;
        }
        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let rt = rt.nseconds();
        let decision = self
            .input
            .lock()
            .unwrap()
            .planner
            .video_frame(rt, keyframe, target);
        if send {
            self.request_keyframes(pad, &decision.requests);
        }
        if decision.split {
            // mpegtsmux stamps its packets with the decode time: announce the cut in that time.
            let dts_rt = match buffer.dts().map(|d| segment.to_running_time_full(d)) {
                Some(Some(gst::Signed::Positive(t))) => t.nseconds(),
                Some(Some(gst::Signed::Negative(_))) => 0,
                _ => rt,
            };
            gst::debug!(
                CAT,
                obj = pad,
                "segment boundary: keyframe at {} (decode {})",
                rt,
                dts_rt
            );
            if let Some(w) = self.writer.lock().unwrap().as_mut() {
                w.split_at(dts_rt, rt);
            }
        }
    }

    fn request_keyframes(&self, pad: &gst::Pad, requests: &[KeyframeRequest]) {
        for r in requests {
            gst::log!(
                CAT,
                obj = pad,
                "asking for a keyframe at running time {} (boundary {})",
                r.at_ns,
                r.boundary_ns
            );
            let event = gst_video::UpstreamForceKeyUnitEvent::builder()
                .running_time(gst::ClockTime::from_nseconds(r.at_ns))
                .all_headers(true)
                .build();
            pad.push_event(event);
        }
    }

    /// Input events: a format change after data has flowed, a new stream or a flush make the next
    /// segment a discontinuity.
    fn on_input_event(
        &self,
        pad: &gst::Pad,
        video: bool,
        flowing: &AtomicBool,
        event: &gst::EventRef,
    ) {
        let name = pad.name().to_string();
        let mut discontinuity = false;
        match event.view() {
            gst::EventView::Caps(c) => {
                let caps = c.caps_owned();
                // fMP4 never falls back (its caps are checked by the built-in path).
                let fmp4 = self.builtin.lock().unwrap().is_fmp4();
                if !fmp4 && caps.structure(0).is_some_and(|s| s.name() == "video/x-av1") {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        ("AV1 goes into fMP4 segments only: set segment-format=fmp4")
                    );
                } else if !fmp4
                    && *self.mode.lock().unwrap() == Some(Muxer::Builtin)
                    && builtin::codec_for_caps(&caps).is_none()
                {
                    self.fall_back_to_mpegtsmux(&caps);
                }
                let mut input = self.input.lock().unwrap();
                if video
                    && let Some(s) = caps.structure(0)
                    && let Ok(f) = s.get::<gst::Fraction>("framerate")
                    && let Some(tol) = input.planner.set_framerate(f.numer(), f.denom())
                {
                    drop(input);
                    if let Some(w) = self.writer.lock().unwrap().as_mut() {
                        w.set_tolerance(tol);
                    }
                    input = self.input.lock().unwrap();
                }
                // Caps refined before any data (parsers do that) are no discontinuity.
                let had_data = flowing.swap(false, Ordering::Relaxed);
                match input.caps.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, old)) if *old != caps && !had_data => *old = caps,
                    Some((_, old)) if *old != caps => {
                        gst::info!(CAT, obj = pad, "format change to {}: discontinuity", caps);
                        *old = caps;
                        discontinuity = true;
                    }
                    Some(_) => {}
                    None => input.caps.push((name, caps)),
                }
            }
            gst::EventView::StreamStart(_) => {
                let mut input = self.input.lock().unwrap();
                if input.stream_starts.contains(&name) {
                    gst::info!(CAT, obj = pad, "new stream: discontinuity");
                    discontinuity = true;
                } else {
                    input.stream_starts.push(name);
                    // Before any frame is encoded: ask for the first boundaries now, so that
                    // an encoder's lookahead cannot make the first segments run long.
                    let (target, send) = {
                        let s = self.settings.lock().unwrap();
                        (
                            u64::from(s.target_duration) * 1_000_000_000,
                            s.send_keyframe_requests,
                        )
                    };
                    if video && send {
                        let requests = input.planner.start(target);
                        drop(input);
                        self.request_keyframes(pad, &requests);
                    }
                }
            }
            gst::EventView::FlushStop(_) => discontinuity = true,
            _ => {}
        }
        if discontinuity {
            self.input.lock().unwrap().planner.discontinuity();
            if let Some(w) = self.writer.lock().unwrap().as_mut() {
                w.discontinuity();
            }
        }
    }
}

impl ObjectImpl for RsHlsSink {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_element_flags(gst::ElementFlags::SINK);
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("location")
                    .nick("Location")
                    .blurb("Segment file name pattern with a %d directive (as hlssink2, e.g. /tmp/hls/segment%05d.ts), or a directory (segments are segment%05d.ts in it). An http:// or https:// URL uploads with PUT; s3://bucket/prefix uploads to S3-compatible storage (see the s3-* properties).")
                    .default_value(Some(DEFAULT_LOCATION))
                    .build(),
                glib::ParamSpecString::builder("playlist-location")
                    .nick("Playlist location")
                    .blurb("Playlist file. Relative names are put in the location's directory (or URL) when location is a directory or URL, else used as they are (as hlssink2)")
                    .default_value(Some(DEFAULT_PLAYLIST_LOCATION))
                    .build(),
                glib::ParamSpecString::builder("playlist-root")
                    .nick("Playlist root")
                    .blurb("URL prefix for the segment and key URIs in the playlist (default: file names relative to the playlist)")
                    .build(),
                glib::ParamSpecUInt::builder("target-duration")
                    .nick("Target duration")
                    .blurb("The target duration in seconds of a segment (0: cut at every keyframe). Segments are cut at the first keyframe that reaches it; keyframes are requested there")
                    .default_value(DEFAULT_TARGET_DURATION)
                    .build(),
                glib::ParamSpecUInt::builder("playlist-length")
                    .nick("Playlist length")
                    .blurb("Segments in a live playlist (at least 3 for players to follow, RFC 8216 6.3.3); 0 lists every segment")
                    .default_value(DEFAULT_PLAYLIST_LENGTH)
                    .build(),
                glib::ParamSpecUInt::builder("max-files")
                    .nick("Max files")
                    .blurb("Segment files kept for a live playlist; older ones are deleted once they have left the playlist (0 keeps all)")
                    .default_value(DEFAULT_MAX_FILES)
                    .build(),
                glib::ParamSpecBoolean::builder("send-keyframe-requests")
                    .nick("Send keyframe requests")
                    .blurb("Ask upstream for a keyframe (force-key-unit) where the next segment should start. If disabled the input must have keyframes in regular intervals")
                    .default_value(true)
                    .build(),
                glib::ParamSpecEnum::builder_with_default("playlist-type", PlaylistType::Live)
                    .nick("Playlist type")
                    .blurb("live: sliding window; event: every segment stays; vod: every segment stays, EXT-X-PLAYLIST-TYPE:VOD at end of stream")
                    .build(),
                glib::ParamSpecDouble::builder("part-duration")
                    .nick("Part duration")
                    .blurb("LL-HLS: write each segment as parts of about this many seconds too (EXT-X-PART, EXT-X-PRELOAD-HINT; e.g. 0.2-1), each published as soon as it is complete; MPEG-TS or fMP4, not with encryption. 0: off")
                    .minimum(0.0)
                    .maximum(10.0)
                    .default_value(0.0)
                    .build(),
                glib::ParamSpecBoolean::builder("i-frame-playlist")
                    .nick("I-frame playlist")
                    .blurb(
                        "Also write an I-frame playlist (EXT-X-I-FRAMES-ONLY: each keyframe as a byte \
                         range of its segment) beside each video media playlist, NAME-iframes.m3u8; \
                         with renditions it is listed as EXT-X-I-FRAME-STREAM-INF. Not with encryption",
                    )
                    .default_value(false)
                    .build(),
                glib::ParamSpecBoolean::builder("program-date-time")
                    .nick("Program date time")
                    .blurb("Write EXT-X-PROGRAM-DATE-TIME (wall-clock time of each segment's start)")
                    .default_value(false)
                    .build(),
                glib::ParamSpecEnum::builder_with_default("encryption", Encryption::None)
                    .nick("Encryption")
                    .blurb("Segment encryption: none, or aes-128 (EXT-X-KEY METHOD=AES-128, key files key%05d.key beside the segments, a random IV per segment)")
                    .build(),
                glib::ParamSpecUInt::builder("key-rotation")
                    .nick("Key rotation")
                    .blurb("With encryption, a new key every this many segments (0: one key for the whole stream)")
                    .default_value(0)
                    .build(),
                glib::ParamSpecInt::builder("http-port")
                    .nick("HTTP port")
                    .blurb("Serve the playlist, segments and keys over HTTP on this TCP port (0 picks a free one, -1 serves nothing). Only files this element wrote are served")
                    .minimum(-1)
                    .maximum(65535)
                    .default_value(DEFAULT_HTTP_PORT)
                    .build(),
                glib::ParamSpecString::builder("http-address")
                    .nick("HTTP address")
                    .blurb("IP address the built-in HTTP server listens on")
                    .default_value(Some(DEFAULT_HTTP_ADDRESS))
                    .build(),
                glib::ParamSpecUInt::builder("http-max-connections")
                    .nick("HTTP max connections")
                    .blurb("Open HTTP connections at most; more are answered 503")
                    .minimum(1)
                    .default_value(DEFAULT_HTTP_MAX_CONNECTIONS)
                    .build(),
                glib::ParamSpecUInt::builder("http-max-connections-per-address")
                    .nick("HTTP max connections per address")
                    .blurb("Open HTTP connections from one client address at most (an IPv6 client counts by its /64); more are answered 503")
                    .minimum(1)
                    .default_value(DEFAULT_HTTP_MAX_CONNECTIONS_PER_ADDRESS)
                    .build(),
                glib::ParamSpecUInt::builder("http-request-timeout")
                    .nick("HTTP request timeout")
                    .blurb("Seconds an HTTP request may take to arrive complete (else 408 and the connection is closed); a kept-alive connection idle this long is closed")
                    .minimum(1)
                    .default_value(DEFAULT_HTTP_REQUEST_TIMEOUT)
                    .build(),
                glib::ParamSpecInt::builder("http-bound-port")
                    .nick("HTTP bound port")
                    .blurb("The port the built-in HTTP server listens on (-1 when not serving)")
                    .minimum(-1)
                    .maximum(65535)
                    .default_value(-1)
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("tls-certificate-file")
                    .nick("TLS certificate file")
                    .blurb("PEM file with the built-in HTTP server's certificate (and its chain, leaf first): the server then speaks HTTPS only, HTTP/2 or HTTP/1.1 as the client's ALPN picks; the key comes from tls-key-file, or from this file when that is unset")
                    .build(),
                glib::ParamSpecString::builder("tls-key-file")
                    .nick("TLS key file")
                    .blurb("PEM file with the private key of tls-certificate-file (unencrypted PKCS #8, PKCS #1 or SEC1)")
                    .build(),
                glib::ParamSpecObject::builder::<gio::TlsCertificate>("tls-certificate")
                    .nick("TLS certificate")
                    .blurb("Certificate with its private key for the built-in HTTP server (its certificate-pem, issuers and private-key-pem are used): the server then speaks HTTPS only, HTTP/2 or HTTP/1.1 as the client's ALPN picks")
                    .build(),
                glib::ParamSpecString::builder("upload-ca-file")
                    .nick("Upload CA file")
                    .blurb("PEM file of CA certificates to trust for https:// uploads, besides the system's CA certificates")
                    .build(),
                glib::ParamSpecString::builder("s3-access-key-id")
                    .nick("S3 access key ID")
                    .blurb("Access key ID for s3:// locations (default: the AWS_ACCESS_KEY_ID environment variable)")
                    .build(),
                glib::ParamSpecString::builder("s3-secret-access-key")
                    .nick("S3 secret access key")
                    .blurb("Secret access key for s3:// locations (default: AWS_SECRET_ACCESS_KEY). Write-only: it is never read back nor logged")
                    .write_only()
                    .build(),
                glib::ParamSpecString::builder("s3-session-token")
                    .nick("S3 session token")
                    .blurb("Session token of temporary credentials for s3:// locations, with s3-access-key-id (default: AWS_SESSION_TOKEN with the environment's keys). Write-only")
                    .write_only()
                    .build(),
                glib::ParamSpecString::builder("s3-region")
                    .nick("S3 region")
                    .blurb("Region s3:// requests are signed for (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1)")
                    .build(),
                glib::ParamSpecString::builder("s3-endpoint")
                    .nick("S3 endpoint")
                    .blurb("http:// or https:// URL of an S3-compatible store, addressed path-style (ENDPOINT/bucket/key) (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS, virtual-hosted-style). https trusts upload-ca-file too")
                    .build(),
                glib::ParamSpecEnum::builder_with_default("muxer", Muxer::Builtin)
                    .nick("Muxer")
                    .blurb("What makes the MPEG-TS: builtin (H.264, H.265, AAC, MP3; falls back to mpegtsmux when a pad is requested for caps it cannot take) or the stock mpegtsmux. Read when pads are requested")
                    .build(),
                glib::ParamSpecEnum::builder_with_default("segment-format", SegmentFormat::Mpegts)
                    .nick("Segment format")
                    .blurb("Container of the media segments: mpegts, or fmp4 (fragmented MP4/CMAF with an init segment named by EXT-X-MAP; H.264, H.265, AV1, AAC, Opus; always the built-in muxer). With fmp4 the default segment names end in .m4s. Read when pads are requested and at start")
                    .build(),
                glib::ParamSpecString::builder("init-location")
                    .nick("Init segment location")
                    .blurb("fmp4: name pattern of init segments (%d: sequence number of the first segment that uses it), beside the segments when relative")
                    .default_value(Some(DEFAULT_INIT_LOCATION))
                    .build(),
                glib::ParamSpecBoolean::builder("resume")
                    .nick("Resume")
                    .blurb("When a live or event playlist without EXT-X-ENDLIST already exists at playlist-location, continue it (numbering goes on after a discontinuity) instead of starting over")
                    .default_value(true)
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            let stream_signal = |name: &'static str| {
                glib::subclass::Signal::builder(name)
                    .param_types([String::static_type()])
                    .return_type::<Option<gio::OutputStream>>()
                    // The first handler that returns a stream wins; none: the element writes.
                    .accumulator(|_hint, _acc, value| {
                        let got = value
                            .get::<Option<gio::OutputStream>>()
                            .ok()
                            .flatten()
                            .is_some();
                        if got {
                            std::ops::ControlFlow::Break(value.clone())
                        } else {
                            std::ops::ControlFlow::Continue(value.clone())
                        }
                    })
                    .class_handler(|_| Some(None::<gio::OutputStream>.to_value()))
                    .build()
            };
            vec![
                // (location) -> GOutputStream: where to write the playlist; NULL: the element
                // writes it to playlist-location itself.
                stream_signal("get-playlist-stream"),
                // (location) -> GOutputStream: where to write a segment; NULL: the element
                // writes it to the location itself.
                stream_signal("get-fragment-stream"),
                // (location): a segment expired.
                glib::subclass::Signal::builder("delete-fragment")
                    .param_types([String::static_type()])
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => {
                s.location = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_else(|| DEFAULT_LOCATION.into())
            }
            "playlist-location" => {
                s.playlist_location = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_else(|| DEFAULT_PLAYLIST_LOCATION.into())
            }
            "playlist-root" => s.playlist_root = value.get().expect("type checked"),
            "target-duration" => s.target_duration = value.get().expect("type checked"),
            "playlist-length" => s.playlist_length = value.get().expect("type checked"),
            "max-files" => s.max_files = value.get().expect("type checked"),
            "send-keyframe-requests" => {
                s.send_keyframe_requests = value.get().expect("type checked")
            }
            "playlist-type" => s.playlist_type = value.get().expect("type checked"),
            "program-date-time" => s.program_date_time = value.get().expect("type checked"),
            "i-frame-playlist" => s.i_frame_playlist = value.get().expect("type checked"),
            "part-duration" => s.part_duration = value.get().expect("type checked"),
            "encryption" => s.encryption = value.get().expect("type checked"),
            "key-rotation" => s.key_rotation = value.get().expect("type checked"),
            "resume" => s.resume = value.get().expect("type checked"),
            "muxer" => s.muxer = value.get().expect("type checked"),
            "segment-format" => s.segment_format = value.get().expect("type checked"),
            "init-location" => {
                s.init_location = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_else(|| DEFAULT_INIT_LOCATION.into())
            }
            "http-port" => s.http_port = value.get().expect("type checked"),
            "upload-ca-file" => s.upload_ca_file = value.get().expect("type checked"),
            "s3-access-key-id" => s.s3.access_key_id = value.get().expect("type checked"),
            "s3-secret-access-key" => s.s3.secret_access_key = value.get().expect("type checked"),
            "s3-session-token" => s.s3.session_token = value.get().expect("type checked"),
            "s3-region" => s.s3.region = value.get().expect("type checked"),
            "s3-endpoint" => s.s3.endpoint = value.get().expect("type checked"),
            "tls-certificate-file" | "tls-key-file" => {
                let path = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .filter(|p| !p.is_empty());
                match pspec.name() {
                    "tls-certificate-file" => s.tls_certificate_file = path,
                    _ => s.tls_key_file = path,
                }
            }
            "tls-certificate" => {
                s.tls_certificate = value
                    .get::<Option<gio::TlsCertificate>>()
                    .expect("type checked")
                    .as_ref()
                    .map(|c| ServerCertificate(CertificatePem::of(c)))
            }
            "http-address" => {
                s.http_address = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_else(|| DEFAULT_HTTP_ADDRESS.into())
            }
            "http-max-connections" => s.http_max_connections = value.get().expect("type checked"),
            "http-max-connections-per-address" => {
                s.http_max_connections_per_address = value.get().expect("type checked")
            }
            "http-request-timeout" => s.http_request_timeout = value.get().expect("type checked"),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap();
        match pspec.name() {
            "location" => s.location.to_value(),
            "playlist-location" => s.playlist_location.to_value(),
            "playlist-root" => s.playlist_root.to_value(),
            "target-duration" => s.target_duration.to_value(),
            "playlist-length" => s.playlist_length.to_value(),
            "max-files" => s.max_files.to_value(),
            "send-keyframe-requests" => s.send_keyframe_requests.to_value(),
            "playlist-type" => s.playlist_type.to_value(),
            "program-date-time" => s.program_date_time.to_value(),
            "i-frame-playlist" => s.i_frame_playlist.to_value(),
            "part-duration" => s.part_duration.to_value(),
            "encryption" => s.encryption.to_value(),
            "key-rotation" => s.key_rotation.to_value(),
            "resume" => s.resume.to_value(),
            "muxer" => s.muxer.to_value(),
            "segment-format" => s.segment_format.to_value(),
            "init-location" => s.init_location.to_value(),
            "http-port" => s.http_port.to_value(),
            "upload-ca-file" => s.upload_ca_file.to_value(),
            "s3-access-key-id" => s.s3.access_key_id.to_value(),
            "s3-region" => s.s3.region.to_value(),
            "s3-endpoint" => s.s3.endpoint.to_value(),
            "tls-certificate-file" => s.tls_certificate_file.to_value(),
            "tls-key-file" => s.tls_key_file.to_value(),
            "tls-certificate" => s
                .tls_certificate
                .as_ref()
                .and_then(|c| c.0.to_object())
                .to_value(),
            "http-address" => s.http_address.to_value(),
            "http-max-connections" => s.http_max_connections.to_value(),
            "http-max-connections-per-address" => s.http_max_connections_per_address.to_value(),
            "http-request-timeout" => s.http_request_timeout.to_value(),
            "http-bound-port" => self
                .http
                .lock()
                .unwrap()
                .as_ref()
                .map_or(-1, |h| i32::from(h.local_addr().port()))
                .to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for RsHlsSink {}

impl ElementImpl for RsHlsSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "HLS sink",
                "Sink/Muxer/Network",
                "HTTP Live Streaming: MPEG-TS segments and m3u8 playlists, written atomically, served or uploaded",
                "gst-plugin-livestreaming developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            // What mpegtsmux carries, split so that `! h.` links each input to the right pad;
            // AV1 for segment-format=fmp4 only.
            let video = gst::Caps::from_str(
                "video/x-h264, stream-format=(string)byte-stream, alignment=(string){ au, nal }; \
                 video/x-h265, stream-format=(string)byte-stream, alignment=(string){ au, nal }; \
                 video/mpeg, mpegversion=(int){ 1, 2, 4 }, systemstream=(boolean)false; \
                 video/x-av1, stream-format=(string)obu-stream, alignment=(string)tu",
            )
            .expect("valid caps");
            let audio = gst::Caps::from_str(
                "audio/mpeg, mpegversion=(int)1; \
                 audio/mpeg, mpegversion=(int){ 2, 4 }, stream-format=(string){ adts, raw }; \
                 audio/x-ac3; audio/x-eac3; audio/x-opus",
            )
            .expect("valid caps");
            vec![
                gst::PadTemplate::new(
                    "video",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &video,
                )
                .expect("valid template"),
                gst::PadTemplate::new(
                    "audio",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &audio,
                )
                .expect("valid template"),
                // Renditions of a multivariant stream, each with its own media playlist.
                gst::PadTemplate::new(
                    "video_%u",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &video,
                )
                .expect("valid template"),
                gst::PadTemplate::new(
                    "audio_%u",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Request,
                    &audio,
                )
                .expect("valid template"),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn request_new_pad(
        &self,
        templ: &gst::PadTemplate,
        _name: Option<&str>,
        caps: Option<&gst::Caps>,
    ) -> Option<gst::Pad> {
        if matches!(templ.name_template(), "video_%u" | "audio_%u") {
            return self.request_rendition(templ, _name);
        }
        if self.has_renditions() {
            gst::warning!(
                CAT,
                imp = self,
                "the video/audio pads cannot be mixed with renditions"
            );
            return None;
        }
        let video = templ.name_template() == "video";
        let name = templ.name_template().to_string();
        let mut pads = self.pads.lock().unwrap();
        if pads.iter().any(|p| p.ghost.name() == name) {
            gst::warning!(CAT, imp = self, "there is already a {} pad", name);
            return None;
        }
        // The built-in muxer unless asked for mpegtsmux or a pad needs it; switching is only
        // possible before data flows.
        let (wanted, fmp4) = {
            let s = self.settings.lock().unwrap();
            (s.muxer, s.segment_format == SegmentFormat::Fmp4)
        };
        // fMP4 is written by the built-in path only; caps it cannot take fail when they come.
        let supported = fmp4 || caps.is_none_or(builtin::caps_supported);
        let wanted = if fmp4 { Muxer::Builtin } else { wanted };
        let current = *self.mode.lock().unwrap();
        let mode = match current {
            Some(Muxer::Builtin) if !supported => {
                if self.obj().current_state() > gst::State::Ready {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "the built-in muxer cannot take {:?} and it is too late to switch",
                        caps
                    );
                    return None;
                }
                gst::info!(CAT, imp = self, "{:?} needs mpegtsmux", caps);
                self.switch_to_mpegtsmux(&mut pads, &mut self.builtin.lock().unwrap())?;
                Muxer::Mpegtsmux
            }
            Some(m) => m,
            None if wanted == Muxer::Mpegtsmux || !supported => Muxer::Mpegtsmux,
            None => Muxer::Builtin,
        };
        *self.mode.lock().unwrap() = Some(mode);
        let ghost = gst::GhostPad::builder_from_template(templ)
            .name(name.as_str())
            .build();
        let target = match mode {
            Muxer::Mpegtsmux => {
                let mux_pad = self.mpegtsmux()?.request_pad_simple("sink_%d")?;
                ghost.set_target(Some(&mux_pad)).ok()?;
                Target::Mux(mux_pad)
            }
            Muxer::Builtin => {
                let sink = self.builtin_sink(&name, video)?;
                ghost.set_target(sink.static_pad("sink").as_ref()).ok()?;
                Target::Sink(sink)
            }
        };
        let weak = self.obj().downgrade();
        let flowing = AtomicBool::new(false);
        ghost.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |pad, info| {
                let Some(obj) = weak.upgrade() else {
                    return gst::PadProbeReturn::Ok;
                };
                match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => {
                        flowing.store(true, Ordering::Relaxed);
                        obj.imp().on_input_buffer(pad.upcast_ref(), video, b)
                    }
                    Some(gst::PadProbeData::Event(e)) => {
                        obj.imp()
                            .on_input_event(pad.upcast_ref(), video, &flowing, e)
                    }
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
        pads.push(InputPad {
            ghost: ghost.clone(),
            target,
            video,
        });
        drop(pads);
        ghost.set_active(true).ok()?;
        self.obj().add_pad(&ghost).ok()?;
        Some(ghost.upcast())
    }

    fn release_pad(&self, pad: &gst::Pad) {
        let rendition = {
            let mut mv = self.multivariant.lock().unwrap();
            let idx = mv
                .renditions
                .iter()
                .position(|r| r.ghost.upcast_ref::<gst::Pad>() == pad);
            idx.map(|i| mv.renditions.remove(i))
        };
        if let Some(r) = rendition {
            let _ = r.ghost.set_active(false);
            let _ = self.obj().remove_pad(&r.ghost);
            let _ = r.child.set_state(gst::State::Null);
            let _ = self.obj().remove(&r.child);
            return;
        }
        let removed = {
            let mut pads = self.pads.lock().unwrap();
            let idx = pads
                .iter()
                .position(|p| p.ghost.upcast_ref::<gst::Pad>() == pad);
            idx.map(|i| pads.remove(i))
        };
        let Some(p) = removed else { return };
        match &p.target {
            Target::Mux(mux_pad) => {
                if let Some(mux) = self.mux.lock().unwrap().as_ref() {
                    mux.release_request_pad(mux_pad);
                }
            }
            Target::Sink(sink) => {
                self.builtin.lock().unwrap().remove_input(&p.ghost.name());
                let _ = sink.set_state(gst::State::Null);
                let _ = self.obj().remove(sink);
            }
        }
        let _ = p.ghost.set_active(false);
        let _ = self.obj().remove_pad(&p.ghost);
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady
            && let Err(err) = self.start_http()
        {
            self.post_error_message(err);
            return Err(gst::StateChangeError);
        }
        if transition == gst::StateChange::ReadyToPaused
            && let Err(err) = if self.has_renditions() {
                self.start_multivariant()
            } else {
                self.start_writer()
            }
        {
            self.post_error_message(err);
            return Err(gst::StateChangeError);
        }
        let result = self.parent_change_state(transition);
        if transition == gst::StateChange::PausedToReady || result.is_err() {
            self.stop_writer();
            self.stop_multivariant();
        }
        if transition == gst::StateChange::ReadyToNull || result.is_err() {
            self.http.lock().unwrap().take();
        }
        result
    }
}

impl BinImpl for RsHlsSink {
    fn handle_message(&self, message: gst::Message) {
        if let gst::MessageView::Element(e) = message.view()
            && let Some(s) = e.structure()
            && s.name() == "rshlssink-segment-added"
            && let Some(src) = message.src()
        {
            self.on_rendition_segment(src, s);
        }
        self.parent_handle_message(message)
    }
}

/// The codec of a rendition's caps, as plain data for the CODECS attribute.
fn codec_of(s: &gst::StructureRef) -> Option<Codec> {
    let get = |f: &str| s.get::<String>(f).ok();
    Some(match s.name().as_str() {
        "video/x-h264" => Codec::H264 {
            profile: get("profile"),
            level: get("level"),
        },
        "video/x-h265" => Codec::H265 {
            profile: get("profile"),
            tier: get("tier"),
            level: get("level"),
        },
        "video/x-av1" => Codec::Av1,
        "audio/mpeg" => match s.get::<i32>("mpegversion").ok()? {
            1 => Codec::Mp3,
            _ => Codec::Aac {
                profile: get("profile"),
            },
        },
        "audio/x-opus" => Codec::Opus,
        _ => return None,
    })
}
