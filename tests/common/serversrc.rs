//! Our rtspserversrc on a free port with every pad decoded (or depayloaded) and counted.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::prelude::*;

use super::{ChildGuard, assert_ours, bus_until_end, init, play_bound};

/// Decoded frames seen, by kind.
#[derive(Default, Clone)]
pub struct Counts {
    pub video: Arc<AtomicU64>,
    pub audio: Arc<AtomicU64>,
    /// Bytes of the buffers counted in `audio`.
    pub audio_bytes: Arc<AtomicU64>,
}

impl Counts {
    pub fn get(&self) -> (u64, u64) {
        (
            self.video.load(Ordering::SeqCst),
            self.audio.load(Ordering::SeqCst),
        )
    }
}

/// Links `pad` to a new `fakesink` (neither synchronising nor prerolling) in `pipeline`.
pub fn link_fakesink(pipeline: &gst::Pipeline, pad: &gst::Pad) {
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
        .unwrap();
    pipeline.add(&sink).unwrap();
    sink.sync_state_with_parent().unwrap();
    pad.link(&sink.static_pad("sink").unwrap()).unwrap();
}

/// Links `pad` through a decodebin into counting fakesinks.
pub fn decode_and_count(pipeline: &gst::Pipeline, pad: &gst::Pad, counts: &Counts) {
    let decodebin = gst::ElementFactory::make("decodebin").build().unwrap();
    pipeline.add(&decodebin).unwrap();
    let weak = pipeline.downgrade();
    let counts = counts.clone();
    decodebin.connect_pad_added(move |_, dpad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let caps = dpad.current_caps().unwrap_or_else(|| dpad.query_caps(None));
        let name = caps
            .structure(0)
            .map(|s| s.name().to_string())
            .unwrap_or_default();
        let counter = if name.starts_with("video/") {
            counts.video.clone()
        } else {
            counts.audio.clone()
        };
        link_fakesink(&pipeline, dpad);
        let bytes = counts.audio_bytes.clone();
        let audio = !name.starts_with("video/");
        dpad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            counter.fetch_add(1, Ordering::SeqCst);
            if let (true, Some(buf)) = (audio, info.buffer()) {
                bytes.fetch_add(buf.size() as u64, Ordering::SeqCst);
            }
            gst::PadProbeReturn::Ok
        });
    });
    decodebin.sync_state_with_parent().unwrap();
    pad.link(&decodebin.static_pad("sink").unwrap()).unwrap();
}

/// Plays `pipeline` until EOS or an error, at most `timeout`; then stops it.
pub fn wait_end(
    pipeline: &gst::Pipeline,
    timeout: Duration,
) -> Result<Vec<gst::Structure>, String> {
    if pipeline.current_state() != gst::State::Playing {
        pipeline.set_state(gst::State::Playing).unwrap();
    }
    let (result, messages) = bus_until_end(pipeline, timeout);
    pipeline.set_state(gst::State::Null).unwrap();
    result.map(|()| messages)
}

/// A pipeline with our rtspserversrc on a free port, every pad decoded and counted.
pub struct Receiver {
    pub pipeline: gst::Pipeline,
    pub src: gst::Element,
    pub port: u16,
    pub counts: Counts,
}

impl Receiver {
    /// Every pad decoded and counted.
    pub fn start(props: &str) -> Receiver {
        Self::start_with(props, decode_and_count)
    }

    pub fn start_with(props: &str, output: fn(&gst::Pipeline, &gst::Pad, &Counts)) -> Receiver {
        init();
        let pipeline = gst::Pipeline::new();
        let src = gst::parse::launch(&format!(
            "rtspserversrc address=127.0.0.1 port=0 mount-point=/live {props}"
        ))
        .unwrap();
        assert_ours(&src);
        pipeline.add(&src).unwrap();
        let counts = Counts::default();
        let (weak, c) = (pipeline.downgrade(), counts.clone());
        src.connect_pad_added(move |_, pad| {
            if let Some(p) = weak.upgrade() {
                output(&p, pad, &c);
            }
        });
        let port = play_bound(&pipeline, &src);
        Receiver {
            pipeline,
            src,
            port,
            counts,
        }
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/live", self.port)
    }

    /// The first stream's figures in `stats`; None until the element made its pad.
    pub fn first_stream(&self) -> Option<gst::Structure> {
        let stats = self.src.property::<gst::Structure>("stats");
        let streams = stats.get::<gst::Array>("streams").unwrap();
        streams.first().map(|s| s.get::<gst::Structure>().unwrap())
    }

    /// Waits (at most 5 s) until the first stream counts `packets` received.
    pub fn wait_packets_received(&self, packets: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let received = || {
            self.first_stream()
                .map_or(0, |s| s.get::<u64>("packets-received").unwrap())
        };
        while received() < packets {
            assert!(Instant::now() < deadline, "{:?}", self.first_stream());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// ffmpeg publishing `file` in real time, stream copied, to `url` over `transport` (`tcp`, `udp`).
pub fn ffmpeg_publish(file: &Path, url: &str, transport: &str) -> ChildGuard {
    ChildGuard::spawn(Command::new("ffmpeg").args([
        "-v",
        "error",
        "-re",
        "-i",
        file.to_str().unwrap(),
        "-c",
        "copy",
        // ffmpeg 5.1 packs several AAC frames per RTP packet and flushes the last packet only
        // after its TEARDOWN has closed the connection: without this the last 4-5 audio frames
        // never leave it (the server never receives them).
        "-max_delay",
        "0",
        "-f",
        "rtsp",
        "-rtsp_transport",
        transport,
        url,
    ]))
}
