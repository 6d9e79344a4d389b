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
use common::{assert_ours, init, play_bound};

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
        let port = play_bound(&pipeline, &src);
        Receiver {
            pipeline,
            src,
            port,
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
    let mut ffmpeg = common::rtmp::ffmpeg_publish(&rx.url("key"), &[]);
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

/// Frames our rsrtmpsink was given on each request pad.
struct Sent {
    video: u64,
    audio: u64,
}

/// Runs a publisher pipeline into `rsrtmpsink name=s location=URL` until its EOS (every tag
/// sent before rsrtmpsink lets EOS through), counting the buffers entering its request pads.
fn publish(branches: &str, url: &str) -> Sent {
    init();
    let pipeline = gst::parse::launch(&format!("{branches} rsrtmpsink name=s location={url}"))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline.by_name("s").unwrap();
    assert_ours(&sink);
    let count = |name: &str| {
        let n = Arc::new(AtomicU64::new(0));
        if let Some(pad) = sink.static_pad(name) {
            let n = n.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                n.fetch_add(1, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            });
        }
        n
    };
    let (video, audio) = (count("video"), count("audio"));
    let result = wait_end(&pipeline, Duration::from_secs(60));
    result.expect("the publisher ends with EOS");
    Sent {
        video: video.load(Ordering::SeqCst),
        audio: audio.load(Ordering::SeqCst),
    }
}

const VIDEO_RAW: &str = "videotestsrc is-live=true num-buffers=60 \
    ! video/x-raw,format=I420,width=320,height=240,framerate=30/1";
const OPUS: &str = "audiotestsrc is-live=true num-buffers=100 samplesperbuffer=960 \
    ! audio/x-raw,rate=48000,channels=2 ! opusenc ! s.audio";

/// rsrtmpsink publishes `branches` into rtmpserversrc `props`; every frame it was given is
/// decoded at the receiver, on pads whose caps start as `expect`.
fn round_trip(branches: &str, props: &str, expect: &[&str], codecs: (&str, &str)) {
    let rx = Receiver::start(props);
    let sent = publish(branches, &rx.url("key"));
    // The tags arrived as Enhanced RTMP (the FourCC in their ex-header).
    let stats = rx.src.property::<gst::Structure>("stats");
    assert_eq!(
        (
            stats.get::<String>("video-codec").unwrap().as_str(),
            stats.get::<String>("audio-codec").unwrap().as_str()
        ),
        codecs
    );
    let result = wait_end(&rx.pipeline, Duration::from_secs(30));
    result.expect("rtmpserversrc ends with EOS");
    let caps = rx.seen.caps.lock().unwrap().clone();
    for e in expect {
        assert!(caps.iter().any(|c| c.starts_with(e)), "{e} not in {caps:?}");
    }
    eprintln!(
        "sent {}/{}, decoded {:?}, caps {caps:?}",
        sent.video,
        sent.audio,
        rx.counts()
    );
    assert!(sent.video > 0 || sent.audio > 0);
    assert_eq!(rx.counts(), (sent.video, sent.audio), "decoded = sent");
}

/// HEVC (x265enc with B-frames: composition times) and Opus through Enhanced RTMP, into the
/// default `output=auto` pads; h265parse/avdec_h265 and opusparse/opusdec decode every frame.
#[test]
fn hevc_and_opus_rsrtmpsink_to_rtmpserversrc() {
    round_trip(
        &format!(
            "{VIDEO_RAW} ! x265enc speed-preset=ultrafast key-int-max=30 ! h265parse \
             ! video/x-h265,stream-format=hvc1,alignment=au ! s.video {OPUS}"
        ),
        "",
        &["video/x-h265, stream-format=(string)hvc1", "audio/x-opus"],
        ("hvc1", "Opus"),
    );
}

/// AV1 (av1enc: no codec_data in its caps; rsrtmpsink builds the av1C from the sequence header
/// OBU) into `output=elementary`; av1parse/av1dec decode every frame.
#[test]
fn av1_rsrtmpsink_to_rtmpserversrc() {
    round_trip(
        "videotestsrc is-live=true num-buffers=30 \
         ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
         ! av1enc cpu-used=8 usage-profile=realtime lag-in-frames=0 keyframe-max-dist=15 \
         ! av1parse ! video/x-av1,stream-format=obu-stream,alignment=tu ! s.video",
        "output=elementary",
        &["video/x-av1"],
        ("av01", ""),
    );
}

/// VP9 (vp9enc realtime) and Opus; vp9parse/vp9dec and opusdec decode every frame.
#[test]
fn vp9_and_opus_rsrtmpsink_to_rtmpserversrc() {
    round_trip(
        &format!(
            "{VIDEO_RAW} ! vp9enc deadline=1 lag-in-frames=0 cpu-used=8 keyframe-max-dist=30 \
             ! s.video {OPUS}"
        ),
        "",
        &["video/x-vp9", "audio/x-opus"],
        ("vp09", "Opus"),
    );
}

/// node-media-server 4.4.3 (installed by .ci/deps) as a child: RTMP on `port`, and for each
/// publish of /live/key a push relay of it to `target` (its relay task, the way its API adds
/// one), so what it relays is what it parsed and re-sent of the Enhanced RTMP it was given.
fn start_nms(dir: &std::path::Path, port: u16, target: &str) -> common::ChildGuard {
    let module = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-assets/nms/node_modules/node-media-server");
    assert!(
        module.join("package.json").exists(),
        "node-media-server 4.4.3 is not installed: run .ci/deps"
    );
    let script = dir.join("relay.cjs");
    std::fs::write(
        &script,
        r#"
const [modPath, rtmpPort, httpPort, target, data] = process.argv.slice(2);
const NodeMediaServer = require(modPath);
const nms = new NodeMediaServer({
  bind: "127.0.0.1",
  rtmp: { port: Number(rtmpPort) },
  http: { port: Number(httpPort) },
  store: { path: data },
  auth: { play: false, publish: false, secret: "unused" },
  record: { auto: false, path: data + "/record" },
  webadmin: { enable: false },
}, data + "/config.json");
nms.on("postPublish", (session) => {
  if (session.streamPath === "/live/key") {
    setImmediate(() => nms.relayServer.addTask({
      url: target, mode: "push", streamPath: "/live/key", reconnect: false,
    }));
  }
});
nms.run();
"#,
    )
    .unwrap();
    let http = common::rtmp::free_port();
    let child = common::ChildGuard::spawn(std::process::Command::new("node").args([
        script.to_str().unwrap(),
        module.to_str().unwrap(),
        &port.to_string(),
        &http.to_string(),
        target,
        dir.to_str().unwrap(),
    ]));
    common::rtmp::wait_listening(port, Duration::from_secs(20), "node-media-server");
    child
}

/// rsrtmpsink publishes HEVC and Opus as Enhanced RTMP to node-media-server 4.4.3, which relays
/// the stream (its push relay) into rtmpserversrc: every frame rsrtmpsink was given decodes at
/// the end (h265parse/avdec_h265, opusparse/opusdec), and rtmpserversrc saw the `hvc1` and `Opus`
/// FourCCs nms sent. The inputs wait (valves) until the relay publishes, so nothing is sent
/// before nms has a subscriber.
#[test]
fn hevc_and_opus_through_node_media_server() {
    let rx = Receiver::start("");
    let dir = common::rtmp::TempDir::new("ertmp-nms");
    let port = common::rtmp::free_port();
    let mut nms = start_nms(dir.path(), port, &rx.url("key"));
    init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true num-buffers=90 \
         ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! valve name=vv drop=true \
         ! x265enc speed-preset=ultrafast key-int-max=30 ! h265parse \
         ! video/x-h265,stream-format=hvc1,alignment=au ! s.video \
         audiotestsrc is-live=true num-buffers=150 samplesperbuffer=960 \
         ! audio/x-raw,rate=48000,channels=2 ! valve name=va drop=true ! opusenc ! s.audio \
         rsrtmpsink name=s async-connect=true location=rtmp://127.0.0.1:{port}/live/key"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline.by_name("s").unwrap();
    let count = |name: &str| {
        let n = Arc::new(AtomicU64::new(0));
        let c = n.clone();
        sink.static_pad(name)
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                c.fetch_add(1, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            });
        n
    };
    let (video, audio) = (count("video"), count("audio"));
    pipeline.set_state(gst::State::Playing).unwrap();
    // The relay publishes into rtmpserversrc once nms has our publish.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !rx
        .src
        .property::<gst::Structure>("stats")
        .get::<bool>("publishing")
        .unwrap_or(false)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "node-media-server's relay never published into rtmpserversrc"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for v in ["vv", "va"] {
        pipeline.by_name(v).unwrap().set_property("drop", false);
    }
    wait_end(&pipeline, Duration::from_secs(60)).expect("the publisher ends with EOS");
    let sent = (video.load(Ordering::SeqCst), audio.load(Ordering::SeqCst));
    assert!(sent.0 > 60 && sent.1 > 100, "sent {sent:?}");
    // nms keeps the relay up a while after its publisher leaves: wait until rtmpserversrc has
    // received the frames (decoders hold the last ones until EOS), then stop nms, which ends
    // the relay's publication (EOS).
    let received = || {
        let st = rx.src.property::<gst::Structure>("stats");
        (
            st.get::<u64>("video-frames").unwrap_or(0),
            st.get::<u64>("audio-frames").unwrap_or(0),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while received() != sent && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = rx.src.property::<gst::Structure>("stats");
    let codecs = (
        stats.get::<String>("video-codec").unwrap(),
        stats.get::<String>("audio-codec").unwrap(),
    );
    let _ = nms.0.as_mut().map(|c| c.kill());
    let result = wait_end(&rx.pipeline, Duration::from_secs(15));
    let (out, _) = nms.wait_output(Duration::from_secs(5));
    result.unwrap_or_else(|e| {
        panic!(
            "rtmpserversrc: {e}; nms: {}",
            common::tail(&String::from_utf8_lossy(&out.stdout), 3000)
        )
    });
    assert_eq!((codecs.0.as_str(), codecs.1.as_str()), ("hvc1", "Opus"));
    let caps = rx.seen.caps.lock().unwrap().clone();
    assert!(
        caps.iter().any(|c| c.starts_with("video/x-h265"))
            && caps.iter().any(|c| c.starts_with("audio/x-opus")),
        "{caps:?}"
    );
    assert_eq!(rx.counts(), sent, "decoded after the relay = sent");
}

/// What a raw publisher (our client state machine over a socket) sends: multitrack messages
/// (OBS's kind: two HEVC tracks in one message) and hostile ex-headers (an unknown FourCC, a
/// truncated multitrack header, a track size beyond the message, 100 000 tracks). The `video`
/// pad carries track 0 only, with track 0's configuration as codec_data; the hostile tags are
/// skipped; the stream ends with EOS.
#[test]
fn multitrack_and_hostile_ex_headers_at_the_element() {
    use gstlivestreaming::rtmp::client::StopCommands;
    use gstlivestreaming::rtmp::flv::{Tag, TagKind};
    use std::io::Write;
    init();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("rtmpserversrc")
        .property("address", "127.0.0.1")
        .property("port", 0u32)
        .property_from_str("output", "elementary")
        .build()
        .unwrap();
    pipeline.add(&src).unwrap();
    let buffers = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let caps = Arc::new(std::sync::Mutex::new(Vec::<gst::Caps>::new()));
    let (weak, b, c) = (pipeline.downgrade(), buffers.clone(), caps.clone());
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        c.lock().unwrap().push(pad.current_caps().unwrap());
        let sink = gst::ElementFactory::make("fakesink")
            .property("async", false)
            .build()
            .unwrap();
        pipeline.add(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        let b = b.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                b.lock().unwrap().push(buf.map_readable().unwrap().to_vec());
            }
            gst::PadProbeReturn::Ok
        });
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    let port = src.property::<i32>("bound-port") as u16;

    let (mut p, mut s) = common::rtmp::publishing_client(port, vec!["hvc1".into()]);
    let video = |ts: u32, data: Vec<u8>| Tag {
        kind: TagKind::Video,
        timestamp: ts,
        data: data.into(),
    };
    // Hostile first: each is skipped, the connection stays.
    p.send_tag(&video(0, vec![0x91, b'x', b'y', b'z', b'w', 1, 2, 3]));
    p.send_tag(&video(0, vec![0x96, 0x13, b'h']));
    p.send_tag(&video(
        0,
        vec![0x96, 0x13, b'h', b'v', b'c', b'1', 0, 0xff, 0xff, 0xff, 1],
    ));
    let mut many = vec![0x96, 0x13, b'h', b'v', b'c', b'1'];
    for i in 0..100_000u32 {
        many.extend_from_slice(&[(i % 256) as u8, 0, 0, 0]);
    }
    p.send_tag(&video(0, many));
    // ManyTracks (1) SequenceStart: track 0 "cfg0", track 1 "cfg1".
    p.send_tag(&video(
        0,
        [
            &[0x96, 0x10, b'h', b'v', b'c', b'1', 0, 0, 0, 4][..],
            b"cfg0",
            &[1, 0, 0, 4],
            b"cfg1",
        ]
        .concat(),
    ));
    // ManyTracks CodedFramesX, keyframe then inter frames: track 0 "f0-N", track 1 "f1-N".
    for n in 0..5u8 {
        let b0 = if n == 0 { 0x96 } else { 0xa6 };
        p.send_tag(&video(
            u32::from(n) * 33,
            [
                &[b0, 0x13, b'h', b'v', b'c', b'1', 0, 0, 0, 4][..],
                &[b'f', b'0', b'-', b'0' + n],
                &[1, 0, 0, 4],
                &[b'f', b'1', b'-', b'0' + n],
            ]
            .concat(),
        ));
    }
    p.finish(StopCommands::default());
    s.write_all(&p.take_output()).unwrap();
    let result = wait_end(&pipeline, Duration::from_secs(15));
    drop(s);
    result.expect("EOS after the publisher left");
    let caps = caps.lock().unwrap().clone();
    assert_eq!(caps.len(), 1, "{caps:?}");
    let codec_data = caps[0]
        .structure(0)
        .unwrap()
        .get::<gst::Buffer>("codec_data")
        .unwrap();
    assert_eq!(&codec_data.map_readable().unwrap()[..], b"cfg0");
    let buffers = buffers.lock().unwrap().clone();
    let expected: Vec<Vec<u8>> = (0..5u8).map(|n| vec![b'f', b'0', b'-', b'0' + n]).collect();
    assert_eq!(
        buffers, expected,
        "track 0's frames, in order, nothing else"
    );
}
