//! Adaptive bitrate HLS: one live test pattern encoded by three x264enc at 640x360, 480x270 and
//! 320x180 (800, 400, 200 kbit/s) plus AAC audio, into one rshlssink through its `video_%u` and
//! `audio_%u` pads. The element writes a media playlist per rendition (`video_0.m3u8`, ...,
//! `audio_0.m3u8`), cut at the same running times (it asks each encoder for keyframes at the same
//! boundaries), and the multivariant playlist `playlist.m3u8` with the measured BANDWIDTH and
//! AVERAGE-BANDWIDTH, CODECS, RESOLUTION, FRAME-RATE and the audio group; its HTTP server serves
//! them all.
//!
//!     cargo run --release --example abr -- [--http-port 8080] [--dir /tmp/abr] [--fmp4]
//!         [--seconds N]
//!
//! Play with hls.js (any page with `hls.loadSource("http://127.0.0.1:8080/playlist.m3u8")`),
//! `ffplay http://127.0.0.1:8080/playlist.m3u8`, or Safari. Sizes are small to stay cheap on two
//! cores; 1080p/720p/360p is the same pipeline with other numbers.

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

/// (width, height, kbit/s) of each rendition.
const RENDITIONS: [(u32, u32, u32); 3] = [(640, 360, 800), (480, 270, 400), (320, 180, 200)];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gst::init()?;
    gstlivestreaming::plugin_register_static()?;

    let http_port: u16 = arg("--http-port").map_or(Ok(8080), |p| p.parse())?;
    let fmp4 = std::env::args().any(|a| a == "--fmp4");
    let seconds: Option<u32> = arg("--seconds").map(|s| s.parse()).transpose()?;
    let dir = arg("--dir").map_or_else(
        || std::env::temp_dir().join(format!("livestreaming-abr-{}", std::process::id())),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;

    let mut desc = format!(
        "rshlssink name=hls location={} target-duration=2 playlist-length=6 http-port={http_port} \
           segment-format={} \
         videotestsrc is-live=true \
           ! video/x-raw,width=640,height=360,framerate=30/1,format=I420 \
           ! clockoverlay time-format=\"%H:%M:%S\" ! tee name=t ",
        dir.display(),
        if fmp4 { "fmp4" } else { "mpegts" }
    );
    for (i, (w, h, kbps)) in RENDITIONS.iter().enumerate() {
        desc += &format!(
            "t. ! queue ! videoscale ! video/x-raw,width={w},height={h} \
               ! x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} \
               ! h264parse ! hls.video_{i} "
        );
    }
    desc +=
        "audiotestsrc is-live=true wave=ticks ! audioconvert ! voaacenc ! aacparse ! hls.audio_0";
    let pipeline = gst::parse::launch(&desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;

    pipeline.set_state(gst::State::Playing)?;
    println!("Three H.264 renditions and AAC audio, served by rshlssink:");
    println!("  http://127.0.0.1:{http_port}/playlist.m3u8 (multivariant)");
    println!("  files in {}", dir.display());
    println!("Play with: ffplay http://127.0.0.1:{http_port}/playlist.m3u8, or hls.js");

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
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "rshlssink-segment-added"
                {
                    println!(
                        "{}: {} ({:.3} s, {} bytes)",
                        msg.src().map(|s| s.name()).unwrap_or_default(),
                        s.get::<String>("location").unwrap_or_default(),
                        s.get::<f64>("duration").unwrap_or(0.0),
                        s.get::<u64>("bytes").unwrap_or(0)
                    );
                }
            }
            _ => {}
        }
        glib::ControlFlow::Continue
    })?;
    if let Some(seconds) = seconds {
        // End the stream after that long: the last segments and playlists are written.
        let p = pipeline.clone();
        glib::timeout_add_seconds_once(seconds, move || {
            p.send_event(gst::event::Eos::new());
        });
    } else {
        println!("Ctrl-C to stop.");
    }
    main_loop.run();
    pipeline.set_state(gst::State::Null)?;
    if seconds.is_some() {
        println!("{}", std::fs::read_to_string(dir.join("playlist.m3u8"))?);
    }
    Ok(())
}
