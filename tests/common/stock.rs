//! The stock gst-rtsp-server 1.22 in the test process (through its Rust bindings), on
//! 127.0.0.1, serving a launch line at /live, optionally Digest-protected and over TLS (its one
//! port then speaks RTSPS; it answers tunnelled clients on it in any case); and rtspsrc2 playing
//! from it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

/// What gst-rtsp-server asks of its clients: nothing by default.
#[derive(Default, Clone, Copy)]
pub struct Access<'a> {
    /// The one user and password it accepts (Digest); else anonymous clients play.
    pub digest: Option<(&'a str, &'a str)>,
    /// Its certificate and key (PEM files): the port speaks TLS only.
    pub tls: Option<(&'a Path, &'a Path)>,
}

impl Access<'_> {
    /// The RTSPAuth that asks for it, with the role `factory` must grant (None: no RTSPAuth).
    fn auth(&self) -> Option<gst_rtsp_server::RTSPAuth> {
        if self.digest.is_none() && self.tls.is_none() {
            return None;
        }
        let auth = gst_rtsp_server::RTSPAuth::new();
        let mut token = gst_rtsp_server::RTSPToken::builder()
            .field("media.factory.role", "user")
            .build();
        match self.digest {
            Some((user, pass)) => {
                auth.set_supported_methods(gst_rtsp::RTSPAuthMethod::Digest);
                auth.add_digest(user, pass, &token);
            }
            None => auth.set_default_token(Some(&mut token)),
        }
        if let Some((cert, key)) = self.tls {
            let cert = gst_rtsp_server::gio::TlsCertificate::from_files(cert, key)
                .expect("the server's certificate and key");
            auth.set_tls_certificate(Some(&cert));
        }
        Some(auth)
    }
}

/// gst-rtsp-server running its own main loop on a thread of its own; stopped when dropped.
pub struct StockServer {
    pub port: u16,
    /// TCP connections it accepted (a client through the HTTP tunnel makes two: GET and POST).
    pub connections: Arc<AtomicUsize>,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StockServer {
    /// Serves `launch` (shared) at /live; `digest`: the one user and password it accepts.
    pub fn start(launch: &str, digest: Option<(&str, &str)>) -> StockServer {
        Self::start_full(launch, true, digest, |_, _| {})
    }

    /// As [`Self::start`], with `shared` as gst-rtsp-server's factory option; `setup` sees the
    /// factory and the mount points (for more mounts) before the server starts.
    pub fn start_full(
        launch: &str,
        shared: bool,
        digest: Option<(&str, &str)>,
        setup: impl FnOnce(&gst_rtsp_server::RTSPMediaFactory, &gst_rtsp_server::RTSPMountPoints),
    ) -> StockServer {
        let access = Access { digest, tls: None };
        Self::start_with(launch, shared, access, setup)
    }

    /// Serves `launch` (shared) at /live as `access` asks.
    pub fn start_secured(launch: &str, access: Access) -> StockServer {
        Self::start_with(launch, true, access, |_, _| {})
    }

    /// Serves `launch` at /live as `access` asks; `setup` sees the factory and the mount points.
    pub fn start_with(
        launch: &str,
        shared: bool,
        access: Access,
        setup: impl FnOnce(&gst_rtsp_server::RTSPMediaFactory, &gst_rtsp_server::RTSPMountPoints),
    ) -> StockServer {
        super::init();
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let server = gst_rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service("0");
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(shared);
        setup(&factory, &server.mount_points().unwrap());
        if let Some(auth) = access.auth() {
            server.set_auth(Some(&auth));
            factory.add_role_from_structure(
                &gst::Structure::builder("user")
                    .field("media.factory.access", true)
                    .field("media.factory.construct", true)
                    .build(),
            );
        }
        server.mount_points().unwrap().add_factory("/live", factory);
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        server.connect_client_connected(move |_, _| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let id = server.attach(Some(&ctx)).expect("attach gst-rtsp-server");
        let port = server.bound_port() as u16;
        let ml = main_loop.clone();
        let thread = std::thread::spawn(move || {
            let _server = server;
            let _id = id;
            ctx.with_thread_default(|| ml.run()).unwrap();
        });
        StockServer {
            port,
            connections,
            main_loop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        self.url_as("rtsp")
    }

    /// The URL of /live with another scheme (`rtsps`, `rtsph`, ...).
    pub fn url_as(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/live", self.port)
    }
}

/// Plays with `rtspsrc2 {extra}` into an H.264 decoder until 30 frames, or returns the error
/// with its domain and code, e.g. "[NotAuthorized]".
pub fn decode(extra: &str) -> Result<(), String> {
    decode_as("src", extra)
}

/// As [`decode`], with the rtspsrc2 named `name`.
pub fn decode_as(name: &str, extra: &str) -> Result<(), String> {
    super::init();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name={name} {extra} {name}. ! rtph264depay ! h264parse ! avdec_h264 ! fakesink num-buffers=30"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    super::assert_ours(&pipeline.by_name(name).unwrap());
    let bus = pipeline.bus().unwrap();
    let started = Instant::now();
    let _ = pipeline.set_state(gst::State::Playing);
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(20),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let result = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(format!(
            "{} [{:?}]",
            e.error(),
            e.error().kind::<gst::ResourceError>()
        )),
        _ => Err("neither EOS nor an error within 20 s".into()),
    };
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(started.elapsed() < Duration::from_secs(25));
    result
}

impl Drop for StockServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Buffers that reached the server's sinks.
#[derive(Default, Clone)]
pub struct Counts {
    pub video: Arc<AtomicUsize>,
    pub audio: Arc<AtomicUsize>,
    /// Bytes of the buffers counted in `audio`.
    pub audio_bytes: Arc<AtomicUsize>,
}

/// gst-rtsp-server with a RECORD mount at /live counting what it decodes.
pub fn record_server(launch: &str, protocols: gst_rtsp::RTSPLowerTrans) -> (StockServer, Counts) {
    record_server_with(launch, protocols, Access::default())
}

pub fn record_server_with(
    launch: &str,
    protocols: gst_rtsp::RTSPLowerTrans,
    access: Access,
) -> (StockServer, Counts) {
    let counts = Counts::default();
    let c = counts.clone();
    let server = StockServer::start_with(launch, false, access, move |factory, _| {
        factory.set_transport_mode(gst_rtsp_server::RTSPTransportMode::RECORD);
        factory.set_protocols(protocols);
        // At TEARDOWN the server sends EOS through its pipeline, so that what its jitter
        // buffers still hold is decoded too (else the last 200 ms may be cut).
        factory.set_eos_shutdown(true);
        factory.connect_media_configure(move |_, media| {
            let bin = media
                .element()
                .downcast::<gst::Bin>()
                .expect("the media is a bin");
            for (name, counter, bytes) in [
                ("vsink", &c.video, None),
                ("asink", &c.audio, Some(&c.audio_bytes)),
            ] {
                if let Some(sink) = bin.by_name(name) {
                    let (counter, bytes) = (counter.clone(), bytes.cloned());
                    sink.connect("handoff", false, move |args| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        if let (Some(bytes), Ok(buf)) = (&bytes, args[1].get::<gst::Buffer>()) {
                            bytes.fetch_add(buf.size(), Ordering::SeqCst);
                        }
                        None
                    });
                }
            }
        });
    });
    (server, counts)
}

/// Runs `pipeline` to EOS or an error (within `timeout`); it stays in PLAYING.
pub fn run_to_end(pipeline: &gst::Pipeline, timeout: Duration) -> Result<(), String> {
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(format!(
            "{} [{:?}] ({:?})",
            e.error(),
            e.error().kind::<gst::ResourceError>(),
            e.debug()
        )),
        _ => Err(format!("neither EOS nor an error within {timeout:?}")),
    }
}
