//! Every input format rtspclientsink2 takes (the formats rtspserversink takes) published into
//! gst-rtsp-server's RECORD mount, where `decodebin` decodes it and every frame (video, Opus,
//! AAC, MP3) or every sample (PCMU, PCMA, L16) is counted against what the publisher made; and
//! the same formats published by stock `rtspclientsink` into our rtspserversrc, whose pads
//! `decodebin` decodes, counted the same way.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::serversrc::{Receiver, wait_end};
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

impl Made {
    /// Counts what leaves `enc` in `pipeline`.
    fn count(pipeline: &gst::Pipeline) -> Made {
        let made = Made::default();
        let m = made.clone();
        pipeline
            .by_name("enc")
            .expect("an element named enc")
            .static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buf) = info.buffer() {
                    m.buffers.fetch_add(1, Ordering::SeqCst);
                    m.bytes.fetch_add(buf.size(), Ordering::SeqCst);
                }
                gst::PadProbeReturn::Ok
            });
        made
    }

    fn get(&self) -> (usize, usize) {
        (
            self.buffers.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
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
    let made = Made::count(&pipeline);
    let result = run_to_end(&pipeline, Duration::from_secs(30));
    let stats = sink.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    result.unwrap_or_else(|e| panic!("{source}: {e}"));
    let made = made.get();
    assert!(made.0 > 0, "{source}: nothing made");
    let counter = |d: &Counts| match expect {
        Expect::VideoFrames => d.video.load(Ordering::SeqCst),
        Expect::AudioFrames => d.audio.load(Ordering::SeqCst),
        Expect::AudioBytes(_) => d.audio_bytes.load(Ordering::SeqCst),
    };
    let want = want(made, expect);
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

/// What each published stream expects the other side to decode.
fn want(made: (usize, usize), expect: Expect) -> usize {
    match expect {
        Expect::VideoFrames | Expect::AudioFrames => made.0,
        Expect::AudioBytes(factor) => made.1 * factor,
    }
}

/// Stock `rtspclientsink` publishes `source` (as for [`publish`]) over `protocol` into our
/// rtspserversrc, whose pads are decoded with decodebin; compares what was decoded with what
/// was made.
fn receive(source: &str, protocol: &str, expect: Expect) {
    receive_less(source, protocol, expect, 0)
}

/// As [`receive`], with `lost` fewer units decoded than made.
fn receive_less(source: &str, protocol: &str, expect: Expect, lost: usize) {
    let receiver = Receiver::start("");
    let desc = format!(
        "rtspclientsink name=sink location={} protocols={protocol} latency=0 {source} ! sink.sink_0",
        receiver.url()
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap_or_else(|e| panic!("pipeline '{desc}': {e}"))
        .downcast::<gst::Pipeline>()
        .expect("pipeline");
    let made = Made::count(&pipeline);
    // Stock rtspclientsink 1.22 sometimes sends every packet and then never handles its EOS
    // (see `Ending::MayHangAtEos` in tests/rtspserversrc.rs; seen here 2 times in 60 runs,
    // VP8 and VP9, with 18 tests at once on 2 cores): after 15 s it is stopped, which closes
    // its connection, and the receiver must still have decoded every frame.
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(15),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    pipeline.set_state(gst::State::Null).unwrap();
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => {}
        Some(gst::MessageView::Error(e)) => {
            panic!(
                "rtspclientsink publishing '{source}': {} ({:?})",
                e.error(),
                e.debug()
            )
        }
        _ => eprintln!("rtspclientsink did not reach EOS within 15 s and was stopped"),
    }
    let counts = receiver.counts.clone();
    wait_end(&receiver.pipeline, Duration::from_secs(20)).unwrap_or_else(|e| {
        panic!(
            "rtspserversrc receiving '{source}': {e}; decoded {:?}",
            counts.get()
        )
    });
    let made = made.get();
    assert!(made.0 > 0, "{source}: nothing made");
    let got = match expect {
        Expect::VideoFrames => counts.video.load(Ordering::SeqCst),
        Expect::AudioFrames => counts.audio.load(Ordering::SeqCst),
        Expect::AudioBytes(_) => counts.audio_bytes.load(Ordering::SeqCst),
    } as usize;
    assert_eq!(
        got,
        want(made, expect) - lost,
        "{expect:?} decoded from rtspserversrc over {protocol}, published by rtspclientsink from '{source}'"
    );
    let stats = receiver.src.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("packets-dropped").unwrap(), 0, "{stats}");
}

fn h265() -> (String, Expect) {
    (
        format!(
            "{VIDEO} ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h265parse name=enc"
        ),
        Expect::VideoFrames,
    )
}

fn vp8() -> (String, Expect) {
    (
        // The profile fixed: behind stock rtspclientsink, vp8enc fails with "Invalid vpx
        // profile" otherwise (the caps it queries downstream leave it open).
        format!(
            "{VIDEO} ! vp8enc deadline=1 keyframe-max-dist=15 name=enc ! video/x-vp8,profile=(string)0"
        ),
        Expect::VideoFrames,
    )
}

fn vp9() -> (String, Expect) {
    (
        format!(
            "{VIDEO} ! vp9enc deadline=1 cpu-used=8 keyframe-max-dist=15 name=enc ! video/x-vp9,profile=(string)0"
        ),
        Expect::VideoFrames,
    )
}

fn opus() -> (String, Expect) {
    (
        "audiotestsrc num-buffers=50 samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=1 \
         ! opusenc frame-size=20 name=enc"
            .into(),
        Expect::AudioFrames,
    )
}

fn aac() -> (String, Expect) {
    (
        "audiotestsrc num-buffers=47 samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=1 \
         ! avenc_aac ! aacparse name=enc"
            .into(),
        Expect::AudioFrames,
    )
}

fn mp3() -> (String, Expect) {
    (
        "audiotestsrc num-buffers=40 samplesperbuffer=1152 ! audio/x-raw,rate=44100,channels=1 \
         ! lamemp3enc ! mpegaudioparse name=enc"
            .into(),
        Expect::AudioFrames,
    )
}

/// G.711 (`mulawenc` or `alawenc`) at 8 kHz: an 8-bit sample decodes to 2 bytes.
fn g711(encoder: &str) -> (String, Expect) {
    (
        format!(
            "audiotestsrc num-buffers=50 samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 \
             ! {encoder} name=enc"
        ),
        Expect::AudioBytes(2),
    )
}

fn rtp_l16() -> (String, Expect) {
    (
        "audiotestsrc num-buffers=50 samplesperbuffer=441 \
         ! audio/x-raw,format=S16BE,rate=44100,channels=1,layout=interleaved \
         ! identity name=enc ! rtpL16pay"
            .into(),
        Expect::AudioBytes(1),
    )
}

fn rtp_h264() -> (String, Expect) {
    (
        format!(
            "{VIDEO} ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 \
             ! h264parse name=enc ! rtph264pay config-interval=-1 pt=96"
        ),
        Expect::VideoFrames,
    )
}

#[test]
fn aac_into_gst_rtsp_server() {
    let (source, expect) = aac();
    publish(&source, "tcp", expect);
}

/// Stock rtspclientsink payloads AAC as MP4A-LATM (rtpmp4apay), and rtpmp4apay into
/// rtpmp4adepay and avdec_aac decodes one frame fewer than avenc_aac made even with no network
/// in between (47 of 48 in a plain `... ! rtpmp4apay ! rtpmp4adepay ! decodebin` pipeline;
/// MPEG4-GENERIC, ours, gives 48): exactly one frame less is expected.
#[test]
fn aac_from_rtspclientsink() {
    let (source, expect) = aac();
    receive_less(&source, "tcp", expect, 1);
}

macro_rules! both_ways {
    ($($publish:ident, $receive:ident, $format:expr, $protocol:literal;)*) => {$(
        #[test]
        fn $publish() {
            let (source, expect) = $format;
            publish(&source, $protocol, expect);
        }

        #[test]
        fn $receive() {
            let (source, expect) = $format;
            receive(&source, $protocol, expect);
        }
    )*};
}

both_ways! {
    h265_into_gst_rtsp_server, h265_from_rtspclientsink, h265(), "tcp";
    vp8_into_gst_rtsp_server, vp8_from_rtspclientsink, vp8(), "udp";
    vp9_into_gst_rtsp_server, vp9_from_rtspclientsink, vp9(), "tcp";
    opus_into_gst_rtsp_server, opus_from_rtspclientsink, opus(), "udp";
    mp3_into_gst_rtsp_server, mp3_from_rtspclientsink, mp3(), "tcp";
    pcmu_into_gst_rtsp_server, pcmu_from_rtspclientsink, g711("mulawenc"), "udp";
    pcma_into_gst_rtsp_server, pcma_from_rtspclientsink, g711("alawenc"), "tcp";
}

/// H.265 as `hvc1` (length-prefixed, the parameter sets from codec_data) into our Rust
/// payloader, over UDP: every frame decoded behind gst-rtsp-server.
#[test]
fn h265_hvc1_into_gst_rtsp_server() {
    let source = format!(
        "{VIDEO} ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! h265parse \
         ! video/x-h265,stream-format=hvc1,alignment=au ! identity name=enc"
    );
    publish(&source, "udp", Expect::VideoFrames);
}

// Stock rtspclientsink takes no `application/x-rtp` input ("could not link"): these are
// published one way only.
#[test]
fn rtp_l16_into_gst_rtsp_server() {
    let (source, expect) = rtp_l16();
    publish(&source, "tcp", expect);
}

#[test]
fn rtp_h264_into_gst_rtsp_server() {
    let (source, expect) = rtp_h264();
    publish(&source, "udp", expect);
}
