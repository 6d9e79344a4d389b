//! rtspsrc2 against the stock C gst-rtsp-server 1.22 (in this process through its Rust
//! bindings): live audio+video over UDP and TCP, and Digest authentication with right, wrong and
//! missing credentials.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

const LIVE: &str = "( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
    ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph264pay name=pay0 pt=96 config-interval=-1 \
    audiotestsrc is-live=true ! audioconvert ! opusenc ! rtpopuspay name=pay1 pt=97 )";

/// gst-rtsp-server on 127.0.0.1 with one live mount at /live, optionally Digest-protected
/// (user "user", password "pass").
struct StockServer {
    port: u16,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StockServer {
    fn start(digest: bool) -> StockServer {
        Self::start_with(LIVE, true, digest)
    }

    /// Serves `launch` at /live; `shared` as gst-rtsp-server's factory option.
    fn start_with(launch: &str, shared: bool, digest: bool) -> StockServer {
        init();
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let server = gst_rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service("0");
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(shared);
        if digest {
            let auth = gst_rtsp_server::RTSPAuth::new();
            auth.set_supported_methods(gst_rtsp::RTSPAuthMethod::Digest);
            let token = gst_rtsp_server::RTSPToken::builder()
                .field("media.factory.role", "user")
                .build();
            auth.add_digest("user", "pass", &token);
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

    fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/live", self.port)
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

/// Plays `location` with rtspsrc2 into an H.264 decoder until 30 frames, or returns the error.
fn decode(extra: &str) -> Result<(), String> {
    init();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src {extra} src. ! rtph264depay ! h264parse ! avdec_h264 ! fakesink num-buffers=30"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    assert_ours(&pipeline.by_name("src").unwrap());
    let bus = pipeline.bus().unwrap();
    let started = Instant::now();
    let _ = pipeline.set_state(gst::State::Playing);
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(20),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let result = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(e.error().to_string()),
        _ => Err("neither EOS nor an error within 20 s".into()),
    };
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(started.elapsed() < Duration::from_secs(25));
    result
}

#[test]
fn plays_gst_rtsp_server_over_udp() {
    let server = StockServer::start(false);
    decode(&format!("location={} protocols=udp", server.url())).unwrap();
}

#[test]
fn plays_gst_rtsp_server_over_tcp() {
    let server = StockServer::start(false);
    decode(&format!("location={} protocols=tcp", server.url())).unwrap();
}

#[test]
fn digest_with_the_right_credentials() {
    let server = StockServer::start(true);
    decode(&format!(
        "location={} protocols=tcp user-id=user user-pw=pass",
        server.url()
    ))
    .unwrap();
}

#[test]
fn digest_with_credentials_in_the_url() {
    let server = StockServer::start(true);
    let url = format!("rtsp://user:pass@127.0.0.1:{}/live", server.port);
    decode(&format!("location={url} protocols=tcp")).unwrap();
}

#[test]
fn digest_with_wrong_credentials_is_a_clear_error() {
    let server = StockServer::start(true);
    let err = decode(&format!(
        "location={} protocols=tcp user-id=user user-pw=wrong reconnect-attempts=0",
        server.url()
    ))
    .unwrap_err();
    assert!(
        err.contains("refused the credentials of user 'user'"),
        "{err}"
    );
    assert!(
        !err.contains("wrong"),
        "the password must not be in the message: {err}"
    );
}

#[test]
fn digest_without_credentials_is_a_clear_error() {
    let server = StockServer::start(true);
    let err = decode(&format!(
        "location={} protocols=tcp reconnect-attempts=0",
        server.url()
    ))
    .unwrap_err();
    assert!(err.contains("requires credentials"), "{err}");
}

/// Writes a 10 s H.264 MP4 and returns its path (in a temp dir that lives with the returned guard).
fn ten_second_mp4() -> (std::path::PathBuf, TempDir) {
    init();
    let dir = TempDir::new();
    let path = dir.0.join("ten.mp4");
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=300 ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc speed-preset=ultrafast key-int-max=30 ! h264parse ! mp4mux \
         ! filesink location={}",
        path.display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    assert!(matches!(
        msg.map(|m| m.type_()),
        Some(gst::MessageType::Eos)
    ));
    pipeline.set_state(gst::State::Null).unwrap();
    (path, dir)
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "livestreaming-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn seeks_in_recorded_media() {
    let (mp4, _dir) = ten_second_mp4();
    let server = StockServer::start_with(
        &format!(
            "( filesrc location={} ! qtdemux name=d d.video_0 ! queue ! h264parse \
               ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
            mp4.display()
        ),
        false,
        false,
    );
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location={} protocols=tcp ! rtph264depay ! h264parse ! avdec_h264 \
         ! fakesink name=out sync=true",
        server.url()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    let duration = loop {
        if let Some(d) = pipeline.query_duration::<gst::ClockTime>() {
            break d;
        }
        assert!(Instant::now() < deadline, "no duration");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        (9_900..=10_100).contains(&duration.mseconds()),
        "duration {duration}"
    );
    std::thread::sleep(Duration::from_secs(1));
    pipeline
        .seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
            gst::ClockTime::from_seconds(5),
        )
        .expect("seek accepted");
    std::thread::sleep(Duration::from_millis(1500));
    let position = pipeline
        .query_position::<gst::ClockTime>()
        .expect("position");
    // 5 s plus the ~1.5 s played since, give or take a keyframe interval and latency.
    assert!(
        (5_000..=7_500).contains(&position.mseconds()),
        "position {position} after seeking to 5 s"
    );
    let bus = pipeline.bus().unwrap();
    if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        panic!("{msg:?}");
    }
    pipeline.set_state(gst::State::Null).unwrap();
}
