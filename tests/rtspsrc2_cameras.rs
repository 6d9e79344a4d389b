//! rtspsrc2 where users really use it: against IP cameras, as a new user runs it
//! (`gst-launch-1.0 rtspsrc2 location=... ! rtph264depay ! ...`).
//!
//! * gst-rtsp-server (the stock C server, in this process) describing audio before video: the
//!   pads carry their full caps when they appear, so delayed linking takes the video pad; and
//!   a wrong password never shows in errors, warnings, bus messages or our logs.
//! * A camera-quirks suite: a scripted RTSP server answering as a given camera does (from
//!   public reports of real cameras, cited per case), sending real H.264 (x264enc's output,
//!   payloaded by rtph264pay) interleaved over TCP. The stock `rtspsrc` and ours are run
//!   against each case as gst-launch-1.0 children with the same pipeline: ours must play every
//!   case the stock element plays.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

/// gst-rtsp-server on 127.0.0.1 serving `launch` at /live, optionally Digest-protected.
struct StockServer {
    port: u16,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StockServer {
    fn start(launch: &str, digest: Option<(&str, &str)>) -> StockServer {
        init();
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let server = gst_rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service("0");
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(true);
        if let Some((user, pass)) = digest {
            let auth = gst_rtsp_server::RTSPAuth::new();
            auth.set_supported_methods(gst_rtsp::RTSPAuthMethod::Digest);
            let token = gst_rtsp_server::RTSPToken::builder()
                .field("media.factory.role", "user")
                .build();
            auth.add_digest(user, pass, &token);
            server.set_auth(Some(&auth));
            factory.add_role_from_structure(
                &gst::Structure::builder("user")
                    .field("media.factory.access", true)
                    .field("media.factory.construct", true)
                    .build(),
            );
        }
        server.mount_points().unwrap().add_factory("/live", factory);
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
            main_loop,
            thread: Some(thread),
        }
    }
}

impl Drop for StockServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Audio (PCMA) described first, as pay0; H.264 video second.
const AUDIO_FIRST: &str = "( audiotestsrc is-live=true ! audio/x-raw,rate=8000,channels=1 ! alawenc \
    ! rtppcmapay name=pay0 pt=8 \
    videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
    ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph264pay name=pay1 pt=96 config-interval=-1 )";

/// Runs `launch` in this process until `frames` buffers reached the fakesink (then EOS), or
/// returns the first error.
fn play_in_process(launch: &str, within: Duration) -> Result<(), String> {
    init();
    let pipeline = gst::parse::launch(launch)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    assert_ours(&pipeline.by_name("src").unwrap());
    let bus = pipeline.bus().unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(within.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let result = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(format!("{} ({:?})", e.error(), e.debug())),
        _ => Err(format!("neither EOS nor an error within {within:?}")),
    };
    pipeline.set_state(gst::State::Null).unwrap();
    result
}

#[test]
fn delayed_linking_takes_the_video_pad_when_audio_is_described_first() {
    let server = StockServer::start(AUDIO_FIRST, None);
    let url = format!("rtsp://127.0.0.1:{}/live", server.port);
    // gst_parse_launch links `rtspsrc2 ! rtph264depay` at pad-added (delayed linking), as
    // gst-launch-1.0 does: the first pad whose caps fit.
    play_in_process(
        &format!(
            "rtspsrc2 name=src location={url} protocols=tcp ! rtph264depay ! h264parse \
             ! fakesink num-buffers=15"
        ),
        Duration::from_secs(20),
    )
    .unwrap();
    // The same from the command line.
    gst_launch_plays(
        Element::Ours,
        &format!("location={url} protocols=tcp"),
        15,
        Duration::from_secs(30),
    )
    .unwrap();
}

#[test]
fn pads_answer_caps_queries_with_the_full_caps_when_they_appear() {
    let server = StockServer::start(AUDIO_FIRST, None);
    init();
    let src = gst::ElementFactory::make("rtspsrc2")
        .property("location", format!("rtsp://127.0.0.1:{}/live", server.port))
        .property_from_str("protocols", "tcp")
        .build()
        .unwrap();
    let seen: Arc<Mutex<Vec<(String, Option<gst::Caps>, Option<gst::Caps>)>>> = Arc::default();
    let sink = seen.clone();
    src.connect_pad_added(move |_, pad| {
        // What a pad-added handler sees: the caps query and the sticky caps, before any data.
        sink.lock().unwrap().push((
            pad.name().to_string(),
            Some(pad.query_caps(None)),
            pad.sticky_event::<gst::event::Caps>(0)
                .map(|e| e.caps_owned()),
        ));
    });
    let pipeline = gst::Pipeline::new();
    pipeline.add(&src).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (name, queried, sticky) in seen.iter() {
        let queried = queried.as_ref().unwrap();
        assert_eq!(Some(queried), sticky.as_ref(), "{name}");
        let s = queried.structure(0).unwrap();
        assert!(queried.is_fixed(), "{name}: {queried}");
        assert!(s.get::<i32>("clock-rate").is_ok(), "{name}: {queried}");
        assert!(s.get::<i32>("payload").is_ok(), "{name}: {queried}");
    }
    let media: Vec<(&str, &str)> = seen
        .iter()
        .map(|(_, caps, _)| {
            let s = caps.as_ref().unwrap().structure(0).unwrap();
            (
                s.get::<&str>("media").unwrap(),
                s.get::<&str>("encoding-name").unwrap(),
            )
        })
        .collect();
    assert_eq!(media, [("audio", "PCMA"), ("video", "H264")]);
    let video = seen[1].1.as_ref().unwrap().structure(0).unwrap();
    assert!(video.has_field("sprop-parameter-sets"), "{video}");
    assert!(video.has_field("packetization-mode"), "{video}");
}

/// Everything a wrong password shows the user: the bus's errors, warnings and element
/// messages (rendered in full) and our categories' log lines at every level.
#[test]
fn a_wrong_password_never_shows_in_errors_messages_or_logs() {
    const PASSWORD: &str = "S3cr3t-Pw-Never-Shown";
    let server = StockServer::start(AUDIO_FIRST, Some(("user", "pass")));
    init();
    let logged: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = logged.clone();
    let handler = gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
        let name = cat.name();
        if name.starts_with("ls") || name == "rtspsrc2" || name == "livestreaming" {
            if let Some(m) = msg.get() {
                sink.lock().unwrap().push(format!("{name}: {m}"));
            }
        }
    });
    gst::log::set_threshold_from_string("lsrtsp:9,lsrtp:9,rtspsrc2:9,livestreaming:9", false);
    let mut shown = Vec::new();
    for location in [
        // In the URL, and with the properties (the URL then carries a user only).
        format!("rtsp://user:{PASSWORD}@127.0.0.1:{}/live", server.port),
        format!(
            "rtsp://user@127.0.0.1:{}/live user-id=user user-pw={PASSWORD}",
            server.port
        ),
    ] {
        let pipeline = gst::parse::launch(&format!(
            "rtspsrc2 name=src location={location} protocols=tcp reconnect-attempts=0 \
             ! fakesink"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let bus = pipeline.bus().unwrap();
        let _ = pipeline.set_state(gst::State::Playing);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut error = None;
        while error.is_none() && Instant::now() < deadline {
            let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
                continue;
            };
            match msg.view() {
                gst::MessageView::Error(e) => {
                    let text = format!("{} {:?}", e.error(), e.debug());
                    shown.push(text.clone());
                    error = Some(text);
                }
                gst::MessageView::Warning(w) => {
                    shown.push(format!("{} {:?}", w.error(), w.debug()));
                }
                gst::MessageView::Element(_) | gst::MessageView::Info(_) => {
                    shown.push(format!("{msg:?}"));
                }
                _ => {}
            }
        }
        pipeline.set_state(gst::State::Null).unwrap();
        let error = error.expect("an error within 20 s");
        assert!(
            error.contains("refused the credentials of user 'user'"),
            "{error}"
        );
        assert!(
            error.contains(&format!("rtsp://127.0.0.1:{}/live", server.port)),
            "the location is named, without credentials: {error}"
        );
    }
    gst::log::set_threshold_from_string("lsrtsp:0,lsrtp:0,rtspsrc2:0,livestreaming:0", false);
    gst::log::remove_log_function(handler);
    let logged = logged.lock().unwrap();
    assert!(
        logged.iter().any(|l| l.starts_with("lsrtsp")),
        "the RTSP core logged nothing"
    );
    for line in shown.iter().chain(logged.iter()) {
        assert!(!line.contains(PASSWORD), "the password shows: {line}");
        assert!(!line.contains("user:"), "credentials show: {line}");
    }
}

/// Which element a gst-launch-1.0 child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    Stock,
    Ours,
}

/// target/debug (or release), where cargo put libgstlivestreaming.so.
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    assert!(
        dir.join("libgstlivestreaming.so").exists(),
        "no libgstlivestreaming.so in {} (cargo build first)",
        dir.display()
    );
    dir
}

/// `gst-launch-1.0 <element> <props> ! rtph264depay ! h264parse ! fakesink num-buffers=<frames>`:
/// Ok when it ends by EOS (every frame arrived) within `within`, else its output.
fn gst_launch_plays(
    element: Element,
    props: &str,
    frames: u32,
    within: Duration,
) -> Result<(), String> {
    let name = match element {
        Element::Stock => "rtspsrc",
        Element::Ours => "rtspsrc2",
    };
    let registry = std::env::temp_dir().join(format!(
        "rtspsrc2-cameras-registry-{}.bin",
        std::process::id()
    ));
    let pipeline = format!(
        "{name} name=src {props} latency=200 ! rtph264depay ! h264parse \
         ! fakesink num-buffers={frames}"
    );
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.env("GST_REGISTRY", &registry)
        .arg("-e")
        .args(pipeline.split_whitespace());
    if element == Element::Ours {
        cmd.env("GST_PLUGIN_PATH", plugin_dir());
    }
    let started = Instant::now();
    let (out, timed_out) = run(&mut cmd, within);
    let output = format!(
        "{name}: {} after {:?}\nstdout: {}\nstderr: {}",
        if timed_out {
            "timed out".to_owned()
        } else {
            out.status.to_string()
        },
        started.elapsed(),
        tail(&String::from_utf8_lossy(&out.stdout), 2000),
        tail(&String::from_utf8_lossy(&out.stderr), 2000)
    );
    if !timed_out && out.status.success() && !output.contains("ERROR") {
        Ok(())
    } else {
        Err(output)
    }
}
