//! Every input format rtspclientsink2 takes (the formats rtspserversink takes) published into
//! gst-rtsp-server's RECORD mount, where `decodebin` decodes it and every frame (video, Opus,
//! AAC, MP3) or every sample (PCMU, PCMA, L16) is counted against what the publisher made.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::stock::{Counts, record_server, run_to_end};
use common::{assert_ours, init};
use gst::prelude::*;

const VIDEO: &str =
    "videotestsrc num-buffers=30 ! video/x-raw,width=320,height=240,framerate=30/1,format=I420";

/// What the publisher made: buffers and bytes leaving the element named `enc`.
#[derive(Default, Clone)]
struct Made {
    buffers: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

/// How the server's output is compared with what was published.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Decoded video frames == encoded frames.
    VideoFrames,
    /// Decoded audio buffers == encoded frames (one decoded buffer per codec frame).
    AudioFrames,
    /// Decoded 16-bit samples == bytes made by `enc` times `factor` / 2 (an 8-bit G.711 sample
    /// decodes to 2 bytes: factor 2; L16 stays 2 bytes: factor 1).
    AudioBytes(usize),
}

/// Publishes `source` (ending in an element named `enc`; the rest linked into `sink.sink_0`)
/// with rtspclientsink2 over `protocol` into a gst-rtsp-server RECORD mount decoding it with
/// decodebin, and compares what it decoded with what was made.
fn publish(source: &str, protocol: &str, expect: Expect) {
    init();
    let sink_name = match expect {
        Expect::VideoFrames => "vsink",
        _ => "asink",
    };
    let launch = format!(
        "( decodebin name=depay0 ! fakesink name={sink_name} signal-handoffs=true sync=false async=false )"
    );
    let allowed = match protocol {
        "udp" => gst_rtsp::RTSPLowerTrans::UDP,
        _ => gst_rtsp::RTSPLowerTrans::TCP,
    };
    let (server, decoded): (_, Counts) = record_server(&launch, allowed);
    let desc = format!(
        "rtspclientsink2 name=sink location={} protocols={protocol} {source} ! sink.sink_0",
        server.url()
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap_or_else(|e| panic!("pipeline '{desc}': {e}"))
        .downcast::<gst::Pipeline>()
        .expect("pipeline");
    let sink = pipeline.by_name("sink").unwrap();
    assert_ours(&sink);
    let made = Made::default();
    let m = made.clone();
    pipeline
        .by_name("enc")
        .unwrap()
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                m.buffers.fetch_add(1, Ordering::SeqCst);
                m.bytes.fetch_add(buf.size(), Ordering::SeqCst);
            }
            gst::PadProbeReturn::Ok
        });
    let result = run_to_end(&pipeline, Duration::from_secs(30));
    let stats = sink.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    result.unwrap_or_else(|e| panic!("{source}: {e}"));
    let (made_buffers, made_bytes) = (
        made.buffers.load(Ordering::SeqCst),
        made.bytes.load(Ordering::SeqCst),
    );
    assert!(made_buffers > 0, "{source}: nothing made");
    let counter = |d: &Counts| match expect {
        Expect::VideoFrames => d.video.load(Ordering::SeqCst),
        Expect::AudioFrames => d.audio.load(Ordering::SeqCst),
        Expect::AudioBytes(_) => d.audio_bytes.load(Ordering::SeqCst),
    };
    let want = match expect {
        Expect::VideoFrames | Expect::AudioFrames => made_buffers,
        Expect::AudioBytes(factor) => made_bytes * factor,
    };
    // The server decodes what is left in its pipeline after TEARDOWN (eos-shutdown): wait.
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(&decoded) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        counter(&decoded),
        want,
        "{expect:?} decoded by gst-rtsp-server over {protocol} from '{source}'; {stats}"
    );
    let streams = stats.get::<gst::Array>("streams").unwrap();
    for s in streams.iter() {
        let s = s.get::<gst::Structure>().unwrap();
        assert_eq!(s.get::<u64>("frames-dropped").unwrap(), 0, "{stats}");
    }
}

#[test]
fn h265() {
    publish(
        &format!(
            "{VIDEO} ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h265parse name=enc"
        ),
        "tcp",
        Expect::VideoFrames,
    );
}

#[test]
fn vp8() {
    publish(
        &format!("{VIDEO} ! vp8enc deadline=1 keyframe-max-dist=15 name=enc"),
        "udp",
        Expect::VideoFrames,
    );
}

#[test]
fn vp9() {
    publish(
        &format!("{VIDEO} ! vp9enc deadline=1 cpu-used=8 keyframe-max-dist=15 name=enc"),
        "tcp",
        Expect::VideoFrames,
    );
}

#[test]
fn opus() {
    publish(
        "audiotestsrc num-buffers=50 samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=1 \
         ! opusenc frame-size=20 name=enc",
        "udp",
        Expect::AudioFrames,
    );
}

#[test]
fn aac() {
    publish(
        "audiotestsrc num-buffers=47 samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=1 \
         ! avenc_aac ! aacparse name=enc",
        "tcp",
        Expect::AudioFrames,
    );
}

#[test]
fn mp3() {
    publish(
        "audiotestsrc num-buffers=40 samplesperbuffer=1152 ! audio/x-raw,rate=44100,channels=1 \
         ! lamemp3enc ! mpegaudioparse name=enc",
        "tcp",
        Expect::AudioFrames,
    );
}

#[test]
fn pcmu() {
    publish(
        "audiotestsrc num-buffers=50 samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 \
         ! mulawenc name=enc",
        "udp",
        Expect::AudioBytes(2),
    );
}

#[test]
fn pcma() {
    publish(
        "audiotestsrc num-buffers=50 samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 \
         ! alawenc name=enc",
        "tcp",
        Expect::AudioBytes(2),
    );
}

#[test]
fn rtp_l16_payloaded_upstream() {
    publish(
        "audiotestsrc num-buffers=50 samplesperbuffer=441 \
         ! audio/x-raw,format=S16BE,rate=44100,channels=1,layout=interleaved \
         ! identity name=enc ! rtpL16pay",
        "tcp",
        Expect::AudioBytes(1),
    );
}

#[test]
fn rtp_h264_payloaded_upstream() {
    publish(
        &format!(
            "{VIDEO} ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 \
             ! h264parse name=enc ! rtph264pay config-interval=-1 pt=96"
        ),
        "udp",
        Expect::VideoFrames,
    );
}
