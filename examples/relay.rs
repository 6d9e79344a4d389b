//! A relay: publishers push into `rtspserversrc`, viewers play the same stream from
//! `rtspserversink`, without re-encoding (the RTP packets pass through; the viewers' SDP carries
//! the publisher's codec parameters).
//!
//!     cargo run --example relay -- [--in-port 8554] [--in-mount /in] [--out-port 8555]
//!         [--out-mount /out] [--streams 2]
//!     ffmpeg -re -i file.mp4 -c copy -f rtsp -rtsp_transport tcp rtsp://127.0.0.1:8554/in
//!     ffplay rtsp://127.0.0.1:8555/out
//!
//! `--streams` is how many streams the publisher announces (video and audio: 2): each of
//! rtspserversrc's pads is linked, through a queue, to a request pad of rtspserversink. With
//! `wait-for-next-publisher`, a publisher that leaves and comes back with the same streams
//! continues the same presentation for the viewers.

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

/// The relay's pipeline description (the same as a `gst-launch-1.0` line).
fn relay_description(
    in_port: u16,
    in_mount: &str,
    out_port: u16,
    out_mount: &str,
    streams: usize,
) -> String {
    let mut desc = format!(
        "rtspserversrc name=in port={in_port} mount-point={in_mount} wait-for-next-publisher=true \
         rtspserversink name=out port={out_port} mount-point={out_mount}"
    );
    for _ in 0..streams {
        desc.push_str(" in. ! queue ! out.");
    }
    desc
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gst::init()?;
    gstlivestreaming::plugin_register_static()?;
    let in_port: u16 = arg("--in-port").map_or(Ok(8554), |p| p.parse())?;
    let out_port: u16 = arg("--out-port").map_or(Ok(8555), |p| p.parse())?;
    let in_mount = arg("--in-mount").unwrap_or_else(|| "/in".into());
    let out_mount = arg("--out-mount").unwrap_or_else(|| "/out".into());
    let streams: usize = arg("--streams").map_or(Ok(2), |p| p.parse())?;
    let desc = relay_description(in_port, &in_mount, out_port, &out_mount, streams);
    let pipeline = gst::parse::launch(&desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    pipeline.set_state(gst::State::Playing)?;
    println!(
        "publish to rtsp://127.0.0.1:{in_port}{in_mount}, play rtsp://127.0.0.1:{out_port}{out_mount}"
    );
    let bus = pipeline.bus().ok_or("no bus")?;
    for msg in bus.iter_timed(gst::ClockTime::NONE) {
        match msg.view() {
            gst::MessageView::Error(e) => {
                eprintln!("error: {} ({:?})", e.error(), e.debug());
                break;
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name().starts_with("rtspserversrc-")
                {
                    println!("{s}");
                }
            }
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null)?;
    Ok(())
}
