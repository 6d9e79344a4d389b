//! The main demo: a live test pattern with a clock overlay and a ticking tone, encoded once and
//! served by our elements until Ctrl-C: over RTSP by `rtspserversink`, as HLS by `rshlssink`
//! (its own HTTP server), and published over RTMP by `rsrtmpsink` when given a server.
//!
//!     cargo run --release --example demo -- [--port 8554] [--mount /] [--http-port 8080]
//!         [--rtmp rtmp://host/app/key]
//!
//! It also shows how an application embeds the plugin's elements: register the plugin statically,
//! build a pipeline, read the element's `stats`.

use gst::glib;
use gst::prelude::*;

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gst::init()?;
    gstlivestreaming::plugin_register_static()?;

    let port: u16 = arg("--port").map_or(Ok(8554), |p| p.parse())?;
    let mount = arg("--mount").unwrap_or_else(|| "/".into());
    let http_port: u16 = arg("--http-port").map_or(Ok(8080), |p| p.parse())?;
    let rtmp = arg("--rtmp");
    let hls_dir = std::env::temp_dir().join(format!("livestreaming-demo-{}", std::process::id()));
    std::fs::create_dir_all(&hls_dir)?;

    // One encode of each; tees feed every element. RTSP carries Opus, HLS and RTMP AAC.
    let mut desc = format!(
        "videotestsrc is-live=true \
           ! video/x-raw,width=1280,height=720,framerate=30/1,format=I420 \
           ! clockoverlay time-format=\"%H:%M:%S\" font-desc=\"Sans 36\" shaded-background=true \
           ! x264enc tune=zerolatency speed-preset=veryfast bitrate=2500 key-int-max=60 \
           ! h264parse config-interval=-1 ! tee name=video \
         audiotestsrc is-live=true wave=ticks ! audioconvert ! audioresample ! tee name=audio \
         rtspserversink name=server port={port} mount-point={mount} \
         video. ! queue ! server. \
         audio. ! queue ! opusenc ! server. \
         rshlssink name=hls location={} target-duration=2 playlist-length=6 http-port={http_port} \
         video. ! queue ! hls.video \
         audio. ! queue ! voaacenc ! aacparse ! tee name=aac ! queue ! hls.audio",
        hls_dir.display()
    );
    if let Some(url) = &rtmp {
        // flvmux takes AVC-format H.264: the branch's own h264parse converts.
        desc.push_str(&format!(
            " flvmux streamable=true name=flv ! rsrtmpsink name=rtmp location={url} \
              video. ! queue ! h264parse ! flv.  aac. ! queue ! flv."
        ));
    }
    let pipeline = gst::parse::launch(&desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    let server = pipeline.by_name("server").ok_or("no rtspserversink")?;

    pipeline.set_state(gst::State::Playing)?;
    let url_path = mount.trim_start_matches('/');
    println!("A live test stream (H.264 video, a ticking tone) served by our elements:");
    println!("  RTSP (rtspserversink, Opus audio): rtsp://127.0.0.1:{port}/{url_path}");
    println!("  HLS  (rshlssink, AAC audio):       http://127.0.0.1:{http_port}/playlist.m3u8");
    println!("       segments written to {}", hls_dir.display());
    match &rtmp {
        Some(url) => println!("  RTMP (rsrtmpsink) publishing to   {url}"),
        None => println!("  RTMP (rsrtmpsink): add --rtmp rtmp://host/app/key to publish too"),
    }
    println!("Play them with:");
    println!("  ffplay -rtsp_transport tcp rtsp://127.0.0.1:{port}/{url_path}");
    println!("  gst-launch-1.0 playbin uri=rtsp://127.0.0.1:{port}/{url_path}");
    println!("  ffplay http://127.0.0.1:{http_port}/playlist.m3u8");
    println!("Ctrl-C to stop.");

    let main_loop = glib::MainLoop::new(None, false);
    let bus = pipeline.bus().ok_or("no bus")?;
    let ml = main_loop.clone();
    let _watch = bus.add_watch(move |_, msg| {
        match msg.view() {
            gst::MessageView::Error(err) => {
                eprintln!(
                    "Error from {}: {} ({:?})",
                    msg.src().map(|s| s.path_string()).unwrap_or_default(),
                    err.error(),
                    err.debug()
                );
                ml.quit();
            }
            gst::MessageView::Eos(_) => ml.quit(),
            _ => {}
        }
        glib::ControlFlow::Continue
    })?;
    // A line of statistics every 10 s.
    glib::timeout_add_seconds(10, move || {
        let stats = server.property::<gst::Structure>("stats");
        println!(
            "sessions: {}, connections: {}, dropped frames: {}",
            stats.get::<u32>("sessions").unwrap_or(0),
            stats.get::<u32>("connections").unwrap_or(0),
            stats.get::<u64>("frames-dropped").unwrap_or(0)
        );
        glib::ControlFlow::Continue
    });
    // Ctrl-C ends the process (the default SIGINT action); the kernel closes every socket.
    main_loop.run();
    pipeline.set_state(gst::State::Null)?;
    Ok(())
}
