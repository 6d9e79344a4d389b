//! rtspclientsink2 publishing into real servers we did not write: the stock gst-rtsp-server 1.22
//! (in this process through its Rust bindings) with a RECORD mount, its output decoded and every
//! frame counted, over TCP and UDP; ffmpeg 5.1 listening (`-rtsp_flags listen`) and writing a
//! file that ffprobe counts.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::process::Command;

use common::rtmp::{TempDir, free_port, probe_file, wait_listening};

/// Distinct packet timestamps of the first video and the first audio stream of a file (ffprobe).
fn distinct_timestamps(path: &std::path::Path) -> (usize, usize) {
    let mut n = (0, 0);
    for (kind, slot) in [("v:0", &mut n.0), ("a:0", &mut n.1)] {
        let (out, timed_out) = run(
            Command::new("ffprobe").args([
                "-v",
                "error",
                "-select_streams",
                kind,
                "-show_entries",
                "packet=pts",
                "-of",
                "csv=p=0",
                &path.display().to_string(),
            ]),
            Duration::from_secs(30),
        );
        assert!(
            !timed_out && out.status.success(),
            "ffprobe {}",
            path.display()
        );
        let pts: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        *slot = pts.len();
    }
    n
}
use common::stock::{Access, Counts, StockServer, record_server, record_server_with, run_to_end};
use common::*;
use gst::prelude::*;

/// Video frames published: 4 s at 30 fps. Long enough for gst-rtsp-server's first Receiver
/// Report (rtpsession's first RTCP interval: half of 5 s, randomised, at most ~3.1 s after
/// SETUP), which the tests check is read back; with 3 s one came after the end of the stream.
const VIDEO_FRAMES: usize = 120;
/// Opus frames published (see [`OPUS`]).
const AUDIO_FRAMES: usize = 200;

/// The RECORD mount: each announced stream depayloaded and decoded into a counting fakesink.
const RECORD_LAUNCH: &str = "( rtph264depay name=depay0 ! h264parse ! avdec_h264 \
    ! fakesink name=vsink signal-handoffs=true sync=false async=false \
    rtpopusdepay name=depay1 ! opusdec ! fakesink name=asink signal-handoffs=true sync=false async=false )";

/// Opus audio: 20 ms frames, 4 s.
const OPUS: &str = "audiotestsrc num-buffers=200 samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=2 \
    ! opusenc frame-size=20 name=aenc";
/// AAC audio: 1024-sample frames, 4 s.
const AAC: &str = "audiotestsrc num-buffers=188 samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 \
    ! avenc_aac name=aenc";

/// The pipeline `desc`, whose `rtspclientsink2 name=sink` must be this plugin's.
fn our_pipeline(desc: &str) -> gst::Pipeline {
    let pipeline = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("pipeline '{desc}': {e}"))
        .downcast::<gst::Pipeline>()
        .expect("pipeline");
    assert_ours(&pipeline.by_name("sink").expect("an element named sink"));
    pipeline
}

/// The publishing pipeline: H.264 + `audio` from test sources (not live: the element's sinks
/// pace them in real time), into `rtspclientsink2 name=sink {props}`; counts what the encoders
/// made.
fn publisher(props: &str) -> (gst::Pipeline, Counts) {
    publisher_with(props, OPUS)
}

fn publisher_with(props: &str, audio: &str) -> (gst::Pipeline, Counts) {
    init();
    let desc = format!(
        "rtspclientsink2 name=sink {props} \
         videotestsrc num-buffers={VIDEO_FRAMES} ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 name=venc ! h264parse ! sink.sink_0 \
         {audio} ! sink.sink_1"
    );
    let pipeline = our_pipeline(&desc);
    let counts = Counts::default();
    for (name, counter) in [("venc", &counts.video), ("aenc", &counts.audio)] {
        let counter = counter.clone();
        let pad = pipeline.by_name(name).unwrap().static_pad("src").unwrap();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.fetch_add(1, Ordering::SeqCst);
            gst::PadProbeReturn::Ok
        });
    }
    (pipeline, counts)
}

/// Waits (bounded) until the server decoded `video` and `audio` frames.
fn wait_counts(counts: &Counts, video: usize, audio: usize) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = (
            counts.video.load(Ordering::SeqCst),
            counts.audio.load(Ordering::SeqCst),
        );
        if got == (video, audio) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn publish_into_gst_rtsp_server(protocol: &str, allowed: gst_rtsp::RTSPLowerTrans) {
    let connections = publish_into("rtsp", protocol, allowed, Access::default(), "");
    assert_eq!(connections, 1);
}

/// Publishes to gst-rtsp-server's /live with the URL scheme `scheme` (`rtsps`, `rtsph`, ...).
fn publish_into(
    scheme: &str,
    protocol: &str,
    allowed: gst_rtsp::RTSPLowerTrans,
    access: Access,
    extra: &str,
) -> usize {
    let (server, decoded) = record_server_with(RECORD_LAUNCH, allowed, access);
    let (pipeline, encoded) = publisher(&format!(
        "location={} protocols={protocol} {extra}",
        server.url_as(scheme)
    ));
    let sink = pipeline.by_name("sink").unwrap();
    let result = run_to_end(&pipeline, Duration::from_secs(20));
    let stats = sink.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    result.unwrap();
    let video = encoded.video.load(Ordering::SeqCst);
    let audio = encoded.audio.load(Ordering::SeqCst);
    assert_eq!(video, VIDEO_FRAMES, "frames the encoder made");
    assert!(
        audio >= AUDIO_FRAMES,
        "Opus frames the encoder made: {audio}"
    );
    let got = wait_counts(&decoded, video, audio);
    assert_eq!(
        got,
        (video, audio),
        "frames decoded by gst-rtsp-server (video, audio) over {protocol}; {stats}"
    );
    // Nothing was dropped on the way out.
    let streams = stats.get::<gst::Array>("streams").unwrap();
    assert_eq!(streams.len(), 2, "{stats}");
    for s in streams.iter() {
        let s = s.get::<gst::Structure>().unwrap();
        assert_eq!(s.get::<u64>("frames-dropped").unwrap(), 0, "{stats}");
        assert!(s.get::<u64>("packets-sent").unwrap() > 0, "{stats}");
    }
    // The server's Receiver Reports were read back (see VIDEO_FRAMES for when the first comes).
    let reported = streams
        .iter()
        .filter_map(|s| s.get::<gst::Structure>().ok())
        .any(|s| s.get::<f64>("rtt-ms").unwrap() >= 0.0);
    assert!(reported, "no Receiver Report seen: {stats}");
    server.connections.load(Ordering::SeqCst)
}

#[test]
fn publishes_h264_and_opus_into_gst_rtsp_server_over_tcp() {
    publish_into_gst_rtsp_server("tcp", gst_rtsp::RTSPLowerTrans::TCP);
}

#[test]
fn publishes_h264_and_opus_into_gst_rtsp_server_over_udp() {
    publish_into_gst_rtsp_server("udp", gst_rtsp::RTSPLowerTrans::UDP);
}

/// `protocols` is an order: a server that allows only TCP gets TCP after refusing UDP.
/// With a burst latency, audio goes out over TCP with the next video frame: still every frame
/// of both, decoded by the server, and the held audio is sent at the end of the stream.
#[test]
fn publishes_every_frame_over_tcp_with_a_burst_latency() {
    let connections = publish_into(
        "rtsp",
        "tcp",
        gst_rtsp::RTSPLowerTrans::TCP,
        Access::default(),
        "burst-latency=40",
    );
    assert_eq!(connections, 1);
}

/// `frames-held` counts what waited: the audio frames, never the video, and nothing without a
/// burst latency.
#[test]
fn only_audio_is_held_and_counted() {
    for (props, audio_held) in [("burst-latency=40", true), ("", false)] {
        let (server, _) = record_server_with(
            RECORD_LAUNCH,
            gst_rtsp::RTSPLowerTrans::TCP,
            Access::default(),
        );
        let (pipeline, _) = publisher(&format!("location={} protocols=tcp {props}", server.url()));
        let sink = pipeline.by_name("sink").unwrap();
        let result = run_to_end(&pipeline, Duration::from_secs(20));
        let stats = sink.property::<gst::Structure>("stats");
        pipeline.set_state(gst::State::Null).unwrap();
        result.unwrap();
        let streams = stats.get::<gst::Array>("streams").unwrap();
        let held: Vec<u64> = streams
            .iter()
            .map(|s| {
                s.get::<gst::Structure>()
                    .unwrap()
                    .get::<u64>("frames-held")
                    .unwrap()
            })
            .collect();
        assert_eq!(held[0], 0, "video held ({props}): {stats}");
        assert_eq!(held[1] > 0, audio_held, "audio held ({props}): {stats}");
    }
}

#[test]
fn falls_back_to_tcp_when_the_server_refuses_udp() {
    publish_into_gst_rtsp_server("udp+tcp", gst_rtsp::RTSPLowerTrans::TCP);
}

/// H.264 and Opus are payloaded by our Rust payloaders (no `rtph264pay`/`rtpopuspay` inside the
/// element) and the stock depayloaders behind gst-rtsp-server decode every frame: H.264 as
/// `avc` (the parameter sets from codec_data, sent before every IDR) with `mtu=300`, so that
/// keyframes go as FU-A fragments of at most 300 bytes.
#[test]
fn rust_payloaders_are_decoded_by_the_stock_depayloaders() {
    init();
    let (server, decoded) = record_server_with(
        RECORD_LAUNCH,
        gst_rtsp::RTSPLowerTrans::TCP,
        Access::default(),
    );
    let desc = format!(
        "rtspclientsink2 name=sink location={} protocols=tcp mtu=300 \
         videotestsrc num-buffers={VIDEO_FRAMES} ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 name=venc ! h264parse \
         ! video/x-h264,stream-format=avc,alignment=au ! sink.sink_0 \
         {OPUS} ! sink.sink_1",
        server.url_as("rtsp")
    );
    let pipeline = our_pipeline(&desc);
    let sink = pipeline.by_name("sink").unwrap();
    let encoded = (Arc::new(Mutex::new(0usize)), Arc::new(Mutex::new(0usize)));
    for (name, counter) in [("venc", &encoded.0), ("aenc", &encoded.1)] {
        let counter = counter.clone();
        let pad = pipeline.by_name(name).unwrap().static_pad("src").unwrap();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            *counter.lock().unwrap() += 1;
            gst::PadProbeReturn::Ok
        });
    }
    let result = run_to_end(&pipeline, Duration::from_secs(20));
    let stats = sink.property::<gst::Structure>("stats");
    let inside: Vec<String> = sink
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.factory().map(|f| f.name().to_string()))
        .collect();
    pipeline.set_state(gst::State::Null).unwrap();
    result.unwrap();
    assert!(
        !inside.iter().any(|f| f.starts_with("rtp")),
        "a stock payloader inside: {inside:?}"
    );
    let (video, audio) = (*encoded.0.lock().unwrap(), *encoded.1.lock().unwrap());
    assert_eq!(video, VIDEO_FRAMES, "frames the encoder made");
    assert!(
        audio >= AUDIO_FRAMES,
        "Opus frames the encoder made: {audio}"
    );
    let got = wait_counts(&decoded, video, audio);
    assert_eq!(
        got,
        (video, audio),
        "frames decoded (video, audio); {stats}"
    );
    let streams = stats.get::<gst::Array>("streams").unwrap();
    let video_stats = streams.as_slice()[0].get::<gst::Structure>().unwrap();
    let packets = video_stats.get::<u64>("packets-sent").unwrap();
    let bytes = video_stats.get::<u64>("bytes-sent").unwrap();
    // Every packet at most 300 bytes: the payload bytes need more packets than that allows.
    assert!(
        bytes <= packets * (300 - 12),
        "{bytes} payload bytes in {packets} packets exceed mtu=300: {stats}"
    );
    assert!(packets > video as u64, "keyframes fragmented: {stats}");
}

/// ffmpeg 5.1 as the server (`-rtsp_flags listen`, which takes only a lowercase `mode=record`,
/// where stock rtspclientsink fails): the file it writes has every frame.
fn publish_into_ffmpeg(protocol: &str) {
    init();
    let dir = TempDir::new("rtspclientsink2-ffmpeg");
    let port = free_port();
    let out = dir.path().join("out.mkv");
    let ffmpeg = ChildGuard::spawn(Command::new("ffmpeg").args([
        "-nostdin",
        "-loglevel",
        "error",
        "-rtsp_flags",
        "listen",
        "-timeout",
        "15",
        "-i",
        &format!("rtsp://127.0.0.1:{port}/x"),
        "-c",
        "copy",
        "-y",
        &out.display().to_string(),
    ]));
    wait_listening(port, Duration::from_secs(10), "ffmpeg -rtsp_flags listen");
    let (pipeline, encoded) = publisher_with(
        &format!("location=rtsp://127.0.0.1:{port}/x protocols={protocol}"),
        AAC,
    );
    let sink = pipeline.by_name("sink").unwrap();
    // When the last EOS reached the element: from there to the pipeline's EOS is the drain and
    // TEARDOWN.
    let last_eos = Arc::new(Mutex::new(None::<Instant>));
    for pad in sink.sink_pads() {
        let last_eos = last_eos.clone();
        pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
            if let Some(gst::PadProbeData::Event(ev)) = &info.data
                && ev.type_() == gst::EventType::Eos
            {
                *last_eos.lock().unwrap() = Some(Instant::now());
            }
            gst::PadProbeReturn::Ok
        });
    }
    let result = run_to_end(&pipeline, Duration::from_secs(20));
    let ending = last_eos.lock().unwrap().map(|t| t.elapsed());
    let stats = sink.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    // ffmpeg answers TEARDOWN with a 501 without CSeq: taken as the answer (the only request
    // outstanding), the publish ends at once instead of after teardown-timeout (2 s).
    if result.is_ok() {
        let ending = ending.expect("EOS reached the element");
        assert!(
            ending < Duration::from_millis(1000),
            "{ending:?} from the last EOS to the end (drain and TEARDOWN)"
        );
    }
    let (output, timed_out) = ffmpeg.wait_output(Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    result.unwrap_or_else(|e| panic!("publishing to ffmpeg: {e}; ffmpeg: {stderr}"));
    assert!(!timed_out, "ffmpeg did not finish after TEARDOWN: {stderr}");
    let probe = probe_file(&out);
    let video = encoded.video.load(Ordering::SeqCst);
    let audio = encoded.audio.load(Ordering::SeqCst);
    assert_eq!(video, VIDEO_FRAMES);
    assert_eq!(probe.stream("video").map(|v| v.0), Some("h264"));
    assert_eq!(probe.stream("audio").map(|v| v.0), Some("aac"));
    // ffmpeg stores each RTP packet's NAL units as a packet of their own, so the parameter sets
    // sent before each keyframe are packets (and ffprobe "frames") with the keyframe's time: a
    // frame is a distinct timestamp.
    assert_eq!(
        distinct_timestamps(&out),
        (video, audio),
        "(video, audio) frames in ffmpeg's file; {stats}; ffmpeg: {stderr}"
    );
}

#[test]
fn publishes_h264_and_aac_into_ffmpeg_listening_over_tcp() {
    publish_into_ffmpeg("tcp");
}

#[test]
fn publishes_h264_and_aac_into_ffmpeg_listening_over_udp() {
    publish_into_ffmpeg("udp");
}

/// Publishing with `props` fails: the error's text and whether it is NotAuthorized / OpenWrite.
fn publish_error(props: &str) -> (String, Option<gst::ResourceError>) {
    let (pipeline, _) = publisher(props);
    let started = Instant::now();
    let err = run_to_end(&pipeline, Duration::from_secs(20)).expect_err("publishing must fail");
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let kind = if err.contains("[Some(NotAuthorized)]") {
        Some(gst::ResourceError::NotAuthorized)
    } else if err.contains("[Some(OpenWrite)]") {
        Some(gst::ResourceError::OpenWrite)
    } else {
        None
    };
    (err, kind)
}

#[test]
fn digest_with_the_right_credentials_publishes_every_frame() {
    let access = Access {
        digest: Some(("user", "pass")),
        tls: None,
    };
    let _ = publish_into(
        "rtsp",
        "tcp",
        gst_rtsp::RTSPLowerTrans::TCP,
        access,
        "user-id=user user-pw=pass",
    );
}

#[test]
fn wrong_or_missing_credentials_are_a_clear_error() {
    let access = Access {
        digest: Some(("user", "pass")),
        tls: None,
    };
    let (server, decoded) =
        record_server_with(RECORD_LAUNCH, gst_rtsp::RTSPLowerTrans::TCP, access);
    for creds in ["user-id=user user-pw=wrong", ""] {
        let (err, kind) =
            publish_error(&format!("location={} protocols=tcp {creds}", server.url()));
        assert_eq!(
            kind,
            Some(gst::ResourceError::NotAuthorized),
            "{creds}: {err}"
        );
        assert!(!err.contains("wrong"), "the password is not shown: {err}");
    }
    assert_eq!(decoded.video.load(Ordering::SeqCst), 0);
}

/// A mount that only plays: ANNOUNCE is refused, and the error says so.
#[test]
fn a_server_refusing_to_record_is_a_clear_error() {
    let server = StockServer::start(
        "( videotestsrc ! x264enc ! rtph264pay name=pay0 pt=96 )",
        None,
    );
    let (err, kind) = publish_error(&format!("location={} protocols=tcp", server.url()));
    assert_eq!(kind, Some(gst::ResourceError::OpenWrite), "{err}");
    assert!(err.contains("ANNOUNCE"), "{err}");
}

/// A scripted server that accepts everything up to RECORD, which it answers `status`; it returns
/// the methods it was sent.
fn refuse_record_server(status: &str) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let status = status.to_owned();
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        script(stream, &status, None)
    });
    (port, thread)
}

/// Answers the requests on `stream` (RECORD with `record`) and returns their methods; with
/// `stall`, stops reading for that long after RECORD (a server that takes no data).
fn script(stream: std::net::TcpStream, record: &str, stall: Option<Duration>) -> Vec<String> {
    script_auth(stream, record, stall, None)
}

/// As [`script`]; with `basic` (the expected `Authorization` value), requests without it are
/// answered 401 with a Basic challenge. Interleaved data is read and skipped; each method is
/// listed with `+auth` when it carried `basic`.
fn script_auth(
    stream: std::net::TcpStream,
    record: &str,
    stall: Option<Duration>,
    basic: Option<&str>,
) -> Vec<String> {
    script_full(stream, record, stall, basic, &mut Seen::default())
}

/// What a scripted server saw besides the methods.
#[derive(Default, Debug)]
struct Seen {
    /// The NTP timestamps of the Sender Reports on channel 1 (stream 0's RTCP).
    sender_reports: Vec<u64>,
    /// The Transport header of each SETUP.
    transports: Vec<String>,
}

/// As [`script_auth`], filling `seen`; a SETUP for UDP is answered 461 (TCP only).
fn script_full(
    stream: std::net::TcpStream,
    record: &str,
    stall: Option<Duration>,
    basic: Option<&str>,
    seen: &mut Seen,
) -> Vec<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut methods = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // RTP packets on channel 0 since the last request.
    let mut rtp = 0usize;
    let mut transport = String::new();
    loop {
        // Interleaved data: `$`, channel, 16-bit length, payload.
        if reader
            .fill_buf()
            .map(|b| b.first() == Some(&b'$'))
            .unwrap_or(false)
        {
            let mut head = [0u8; 4];
            if reader.read_exact(&mut head).is_err() {
                break;
            }
            let mut data = vec![0; usize::from(u16::from_be_bytes([head[2], head[3]]))];
            if reader.read_exact(&mut data).is_err() {
                break;
            }
            rtp += usize::from(head[1] == 0);
            // RTCP of stream 0: a compound packet starting with a Sender Report (PT 200).
            if head[1] == 1 && data.len() >= 16 && data[1] == 200 {
                let ntp = u64::from_be_bytes(data[8..16].try_into().unwrap());
                seen.sender_reports.push(ntp);
            }
            continue;
        }
        if rtp > 0 {
            methods.push(format!("RTP*{rtp}"));
            rtp = 0;
        }
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let method = line.split(' ').next().unwrap_or("").to_owned();
        let (mut cseq, mut length, mut authorized) = (String::new(), 0usize, basic.is_none());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or(("", ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "cseq" => cseq = value.trim().to_owned(),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorized |= Some(value.trim()) == basic,
                "transport" => transport = value.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        let _ = reader.read_exact(&mut body);
        if !authorized {
            methods.push(method);
            let answer = format!(
                "RTSP/1.0 401 Unauthorized\r\nCSeq: {cseq}\r\nWWW-Authenticate: Basic realm=\"test\"\r\n\r\n"
            );
            if writer.write_all(answer.as_bytes()).is_err() {
                break;
            }
            continue;
        }
        // Streams set up so far (over TCP: UDP is refused).
        let setups = seen.transports.iter().filter(|t| t.contains("TCP")).count();
        if method == "SETUP" {
            seen.transports.push(transport.clone());
        }
        let answer = match method.as_str() {
            "SETUP" if !transport.contains("TCP") => {
                format!("RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n")
            }
            "SETUP" => format!(
                "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: 1234;timeout=60\r\n\
                 Transport: RTP/AVP/TCP;unicast;interleaved={}-{};mode=record\r\n\r\n",
                2 * setups,
                2 * setups + 1
            ),
            "RECORD" => format!("RTSP/1.0 {record}\r\nCSeq: {cseq}\r\nSession: 1234\r\n\r\n"),
            _ => format!(
                "RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN\r\n\r\n"
            ),
        };
        let recording = method == "RECORD";
        methods.push(if basic.is_some() {
            format!("{method}+auth")
        } else {
            method
        });
        if writer.write_all(answer.as_bytes()).is_err() {
            break;
        }
        if recording && let Some(stall) = stall {
            std::thread::sleep(stall);
            break;
        }
    }
    methods
}

#[test]
fn a_server_refusing_record_455_is_a_clear_error() {
    let (port, server) = refuse_record_server("455 Method Not Valid in This State");
    let (err, kind) = publish_error(&format!(
        "location=rtsp://127.0.0.1:{port}/x protocols=tcp reconnect-attempts=0"
    ));
    assert_eq!(kind, Some(gst::ResourceError::OpenWrite), "{err}");
    assert!(err.contains("RECORD with 455"), "{err}");
    let methods = server.join().unwrap();
    assert_eq!(
        methods[..5],
        ["OPTIONS", "ANNOUNCE", "SETUP", "SETUP", "RECORD"],
        "{methods:?}"
    );
}

/// A TCP relay in front of a server: `cut` closes every relayed connection (the server
/// "vanishes" for its clients) while new ones are still relayed.
struct Relay {
    port: u16,
    conns: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s) = (conns.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                c.lock().unwrap().extend([client, server]);
            }
        });
        Relay { port, conns, stop }
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// The server vanishes mid-stream (its connection is cut): the element posts
/// `rtspclientsink2-reconnect`, publishes again (ANNOUNCE, SETUP, RECORD) and the server decodes
/// the stream again from a keyframe.
#[test]
fn reconnects_when_the_server_vanishes_mid_stream() {
    let launch = "( rtph264depay name=depay0 ! h264parse ! avdec_h264 output-corrupt=false \
        ! fakesink name=vsink signal-handoffs=true sync=false async=false )";
    let (server, decoded) = record_server(launch, gst_rtsp::RTSPLowerTrans::TCP);
    let relay = Relay::start(server.port);
    init();
    let desc = format!(
        "rtspclientsink2 name=sink location=rtsp://127.0.0.1:{}/live protocols=tcp \
         reconnect-initial-delay=200 \
         videotestsrc is-live=true num-buffers=150 ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=300 ! h264parse ! sink.sink_0",
        relay.port
    );
    let pipeline = our_pipeline(&desc);
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut reconnect, mut reconnected, mut eos) = (false, false, false);
    let mut before = 0;
    let mut cut = false;
    while !eos && Instant::now() < deadline {
        if !cut && decoded.video.load(Ordering::SeqCst) >= 30 {
            before = decoded.video.load(Ordering::SeqCst);
            relay.cut();
            cut = true;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(50)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Element(e) => match e.structure().map(|s| s.name().as_str()) {
                Some("rtspclientsink2-reconnect") => reconnect = true,
                Some("rtspclientsink2-reconnected") => reconnected = true,
                _ => {}
            },
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            gst::MessageView::Eos(_) => eos = true,
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(cut, "the server never decoded 30 frames");
    assert!(eos, "no EOS within 20 s");
    assert!(
        reconnect && reconnected,
        "reconnect {reconnect}, reconnected {reconnected}"
    );
    // Without the keyframe asked for on reconnection (key-int-max=300: none would come), the
    // new session would decode nothing.
    let after = decoded.video.load(Ordering::SeqCst) - before;
    assert!(after >= 30, "{after} frames decoded after the reconnection");
}

/// The server vanishes for good: after `reconnect-attempts` a clear error.
#[test]
fn gives_up_with_an_error_when_the_server_is_gone() {
    let (server, decoded) = record_server(RECORD_LAUNCH, gst_rtsp::RTSPLowerTrans::TCP);
    let relay = Relay::start(server.port);
    let (pipeline, _) = publisher(&format!(
        "location=rtsp://127.0.0.1:{}/live protocols=tcp reconnect-attempts=2 reconnect-initial-delay=100",
        relay.port
    ));
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while decoded.video.load(Ordering::SeqCst) < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(relay);
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(10),
        &[gst::MessageType::Error, gst::MessageType::Eos],
    );
    pipeline.set_state(gst::State::Null).unwrap();
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(e)) => {
            let text = e.error().to_string();
            assert!(text.contains("2 reconnection attempts failed"), "{text}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

/// `rtsps://` with Digest: RTSP and the media inside TLS (the server's port speaks only TLS).
#[test]
fn publishes_over_rtsps_with_digest() {
    let dir = TempDir::new("rtspclientsink2-tls");
    let (cert, key) = common::rtmp::self_signed_cert(dir.path(), "IP:127.0.0.1");
    let access = Access {
        digest: Some(("user", "pass")),
        tls: Some((&cert, &key)),
    };
    let ca = cert.display().to_string();
    let _ = publish_into(
        "rtsps",
        "tcp",
        gst_rtsp::RTSPLowerTrans::TCP,
        access,
        &format!("user-id=user user-pw=pass tls-ca-file={ca}"),
    );
}

/// `rtsph://`: the session tunnelled through HTTP (GET and POST connections).
#[test]
fn publishes_through_the_http_tunnel() {
    let connections = publish_into(
        "rtsph",
        "tcp",
        gst_rtsp::RTSPLowerTrans::TCP | gst_rtsp::RTSPLowerTrans::HTTP,
        Access::default(),
        "",
    );
    assert_eq!(connections, 2, "the tunnel's GET and POST");
}

/// A server that takes no data after RECORD (its receive buffer small): the streaming threads
/// never wait for it, whole frames are dropped and counted, and at EOS the drain and TEARDOWN
/// are bounded by `drain-timeout` and `teardown-timeout`.
#[test]
fn a_stalled_server_costs_dropped_frames_not_a_blocked_pipeline() {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(1).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        script(stream, "200 OK", Some(Duration::from_secs(8)))
    });
    init();
    // 3 s of live 720p at about 8 Mbit/s: far more than the socket buffers take.
    let desc = format!(
        "rtspclientsink2 name=sink location=rtsp://127.0.0.1:{port}/x protocols=tcp \
         queue-size=200000 drain-timeout=300 teardown-timeout=300000000 reconnect-attempts=0 \
         videotestsrc is-live=true num-buffers=90 pattern=snow \
         ! video/x-raw,width=1280,height=720,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=8000 key-int-max=30 ! h264parse ! sink.sink_0"
    );
    let pipeline = our_pipeline(&desc);
    let sink = pipeline.by_name("sink").unwrap();
    let started = Instant::now();
    let result = run_to_end(&pipeline, Duration::from_secs(15));
    let elapsed = started.elapsed();
    let stats = sink.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    result.unwrap();
    // 3 s of input, then at most 0.3 s of draining and 0.3 s of TEARDOWN (plus start-up).
    assert!(elapsed < Duration::from_secs(6), "EOS after {elapsed:?}");
    let s = stats
        .get::<gst::Array>("streams")
        .unwrap()
        .first()
        .unwrap()
        .get::<gst::Structure>()
        .unwrap();
    assert!(s.get::<u64>("frames-dropped").unwrap() > 0, "{stats}");
    assert!(s.get::<u64>("packets-dropped").unwrap() > 0, "{stats}");
    let methods = server.join().unwrap();
    assert_eq!(methods, ["OPTIONS", "ANNOUNCE", "SETUP", "RECORD"]);
}

/// Publishing with Digest credentials (in `location` and as `user-pw`) from a `gst-launch-1.0`
/// child logging everything at level 9: neither the password nor a Digest response appears,
/// while the log shows the exchange (an empty log cannot pass).
#[test]
fn credentials_stay_out_of_the_debug_log() {
    const PASSWORD: &str = "pw-Zq81x";
    let exe = std::env::current_exe().unwrap();
    let plugins = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    assert!(
        plugins.join("libgstlivestreaming.so").exists(),
        "no libgstlivestreaming.so in {} (cargo build first)",
        plugins.display()
    );
    let launch = "( rtph264depay name=depay0 ! h264parse ! avdec_h264 \
        ! fakesink name=vsink signal-handoffs=true sync=false async=false )";
    let access = Access {
        digest: Some(("user", PASSWORD)),
        tls: None,
    };
    let (server, decoded) = record_server_with(launch, gst_rtsp::RTSPLowerTrans::TCP, access);
    let dir = TempDir::new("rtspclientsink2-secrets");
    for location in [
        format!(
            "location=rtsp://user:{PASSWORD}@127.0.0.1:{}/live",
            server.port
        ),
        format!(
            "location=rtsp://127.0.0.1:{}/live user-id=user user-pw={PASSWORD}",
            server.port
        ),
    ] {
        let log = dir.path().join("log.txt");
        let mut cmd = Command::new("gst-launch-1.0");
        cmd.env("GST_PLUGIN_PATH", &plugins)
            .env("GST_REGISTRY", dir.path().join("registry.bin"))
            .env("GST_DEBUG", "*:9")
            .env("GST_DEBUG_NO_COLOR", "1")
            .env_remove("GST_DEBUG_FILE")
            .args([
                "-e",
                "videotestsrc",
                "num-buffers=30",
                "!",
                "x264enc",
                "tune=zerolatency",
            ])
            .args(["!", "h264parse", "!", "rtspclientsink2", "protocols=tcp"])
            .args(location.split(' '));
        let (out, timed_out) = run(&mut cmd, Duration::from_secs(30));
        std::fs::write(&log, &out.stderr).unwrap();
        assert!(
            !timed_out && out.status.success(),
            "gst-launch-1.0 failed: {}",
            tail(&String::from_utf8_lossy(&out.stderr), 3000)
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("ANNOUNCE") && text.contains("RECORD") && text.contains("TEARDOWN"));
        // GStreamer's own parser echoes gst-launch-1.0's command line: not ours to hide.
        let echo = [" gstparse.c:", " parse.l:", ":gst_parse_unescape:"];
        let leaks: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(PASSWORD) && !echo.iter().any(|e| l.contains(e)))
            .collect();
        assert!(leaks.is_empty(), "the password is in the log: {leaks:?}");
        assert!(
            !text.contains("response=\""),
            "a Digest response is in the log"
        );
    }
    assert!(decoded.video.load(Ordering::SeqCst) > 0);
}

/// Basic authentication (the challenge on OPTIONS), every later request authorized, and at EOS
/// TEARDOWN after the data: the whole exchange with a scripted server.
#[test]
fn basic_auth_and_teardown_at_eos() {
    use base64::Engine;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:secret")
    );
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        script_auth(stream, "200 OK", None, Some(&expected))
    });
    init();
    let desc = format!(
        "rtspclientsink2 name=sink location=rtsp://127.0.0.1:{port}/x protocols=tcp \
         user-id=user user-pw=secret \
         videotestsrc num-buffers=15 ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! x264enc tune=zerolatency ! h264parse ! sink.sink_0"
    );
    let pipeline = our_pipeline(&desc);
    let sink = pipeline.by_name("sink").unwrap();
    let result = run_to_end(&pipeline, Duration::from_secs(15));
    let stats = sink.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    result.unwrap();
    let methods = server.join().unwrap();
    // Every packet sent arrived before TEARDOWN.
    let sent = stats
        .get::<gst::Array>("streams")
        .unwrap()
        .first()
        .and_then(|s| s.get::<gst::Structure>().ok())
        .map(|s| s.get::<u64>("packets-sent").unwrap())
        .unwrap();
    assert!(sent >= 15, "{stats}");
    assert_eq!(
        methods,
        [
            "OPTIONS",
            "OPTIONS+auth",
            "ANNOUNCE+auth",
            "SETUP+auth",
            "RECORD+auth",
            &format!("RTP*{sent}"),
            "TEARDOWN+auth"
        ],
        "{stats}"
    );
}

/// The first port of ten UDP ports that were free a moment ago (even).
fn free_udp_range() -> u16 {
    loop {
        let p = std::net::UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            & !1;
        if p < 65000 {
            return p;
        }
    }
}

/// Publishes 15 frames into a scripted server (TCP only: a UDP SETUP gets 461) with `props`;
/// returns what the server saw.
fn publish_to_script(props: &str) -> (Vec<String>, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut seen = Seen::default();
        let methods = script_full(stream, "200 OK", None, None, &mut seen);
        (methods, seen)
    });
    init();
    let desc = format!(
        "rtspclientsink2 name=sink location=rtsp://127.0.0.1:{port}/x {props} \
         videotestsrc num-buffers=15 ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! x264enc tune=zerolatency ! h264parse ! sink.sink_0"
    );
    let pipeline = our_pipeline(&desc);
    let result = run_to_end(&pipeline, Duration::from_secs(15));
    pipeline.set_state(gst::State::Null).unwrap();
    result.unwrap();
    server.join().unwrap()
}

/// `ntp-time-source` sets the clock of the Sender Reports' NTP time (the one sent at the end,
/// before TEARDOWN, is looked at): the wall clock since 1900 by default, since 1970 with
/// `unix`, the running time (the 0.5 s of input) with `running-time`.
#[test]
fn sender_reports_use_the_ntp_time_source() {
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    for (source, expected) in [
        ("ntp", unix_now() + 2_208_988_800),
        ("unix", unix_now()),
        ("running-time", 0),
    ] {
        let (_, seen) = publish_to_script(&format!("protocols=tcp ntp-time-source={source}"));
        let ntp = *seen
            .sender_reports
            .last()
            .unwrap_or_else(|| panic!("no Sender Report with {source}"));
        let secs = ntp >> 32;
        assert!(
            secs.abs_diff(expected) < 30,
            "{source}: NTP seconds {secs}, expected about {expected}"
        );
        if source == "running-time" {
            let t = Duration::from_nanos(
                (ntp >> 32) * 1_000_000_000 + (((ntp & 0xffff_ffff) * 1_000_000_000) >> 32),
            );
            assert!(
                t > Duration::from_millis(300) && t < Duration::from_secs(10),
                "running time {t:?}"
            );
        }
    }
}

/// `port-range` bounds the client ports offered in a UDP SETUP (refused here with 461, so the
/// stream goes over TCP after it).
#[test]
fn port_range_bounds_the_client_ports() {
    let first = free_udp_range();
    let last = first + 9;
    let (methods, seen) =
        publish_to_script(&format!("protocols=udp+tcp port-range={first}-{last}"));
    let udp = seen
        .transports
        .iter()
        .find(|t| !t.contains("TCP"))
        .unwrap_or_else(|| panic!("no UDP SETUP: {seen:?}; {methods:?}"));
    let ports = udp
        .split(';')
        .find_map(|p| p.trim().strip_prefix("client_port="))
        .unwrap_or_else(|| panic!("no client_port in {udp}"));
    let (rtp, rtcp) = ports.split_once('-').unwrap();
    let (rtp, rtcp): (u16, u16) = (rtp.parse().unwrap(), rtcp.parse().unwrap());
    assert!(
        (first..=last).contains(&rtp) && rtcp == rtp + 1 && rtp % 2 == 0,
        "{udp}"
    );
    assert!(methods.contains(&"TEARDOWN".to_string()), "{methods:?}");
}

/// `port-range` with one port pair for two streams: with `protocols=udp+tcp` the publish falls
/// back to TCP (every frame decoded by gst-rtsp-server), with `protocols=udp` it fails with an
/// error naming the range (it used to SETUP the first stream over UDP and then fail on the
/// second with the bare "Address already in use").
#[test]
fn a_port_range_too_small_for_every_stream_falls_back_or_names_the_range() {
    let first = free_udp_range();
    let range = format!("{first}-{}", first + 1);
    let both = gst_rtsp::RTSPLowerTrans::UDP | gst_rtsp::RTSPLowerTrans::TCP;
    publish_into(
        "rtsp",
        "udp+tcp",
        both,
        Access::default(),
        &format!("port-range={range}"),
    );
    let (server, _) = record_server(RECORD_LAUNCH, both);
    let (err, _) = publish_error(&format!(
        "location={} protocols=udp port-range={range}",
        server.url()
    ));
    assert!(err.contains(&format!("port-range {range}")), "{err}");
    assert_eq!(
        err.matches("no usable transport").count(),
        1,
        "said once: {err}"
    );
}

/// `udp-buffer-size` sets the kernel send buffer of the RTP socket (the kernel doubles it), as
/// `ss` shows it while publishing over UDP into gst-rtsp-server.
#[test]
fn udp_buffer_size_sets_the_socket_buffers() {
    let (server, _decoded) = record_server(RECORD_LAUNCH, gst_rtsp::RTSPLowerTrans::UDP);
    let first = free_udp_range();
    let (pipeline, _) = publisher(&format!(
        "location={} protocols=udp port-range={first}-{} udp-buffer-size=300000",
        server.url(),
        first + 9
    ));
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The sockets bound in the range (the pair at `first` may have been taken meanwhile) and
    // their memory figures.
    let skmem = loop {
        let (out, _) = run(
            Command::new("ss").args([
                "-uamn",
                &format!("( sport >= :{first} and sport <= :{} )", first + 9),
            ]),
            Duration::from_secs(5),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let found: Vec<String> = text
            .split_whitespace()
            .filter(|w| w.starts_with("skmem:"))
            .map(str::to_owned)
            .collect();
        if found.len() >= 4 {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "not 4 sockets from {first}: {text}; {}",
            sink.property::<gst::Structure>("stats")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    pipeline.set_state(gst::State::Null).unwrap();
    // Each stream's RTP socket.
    let rtp = skmem.iter().filter(|m| m.contains(",tb600000,")).count();
    assert_eq!(rtp, 2, "{skmem:?}");
}

/// A pad requested once publishing started is refused (no new ANNOUNCE), with a warning
/// message saying why; the publish goes on to its end.
#[test]
fn pads_requested_while_publishing_are_refused_with_a_warning() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        script(stream, "200 OK", None)
    });
    init();
    let pipeline = gst::parse::launch(&format!(
        "rtspclientsink2 name=sink location=rtsp://127.0.0.1:{port}/x protocols=tcp \
         videotestsrc num-buffers=30 ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! x264enc tune=zerolatency ! h264parse ! sink.sink_0"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let (changed, _, _) = pipeline.state(gst::ClockTime::from_seconds(10));
    changed.unwrap();
    assert!(sink.request_pad_simple("sink_%u").is_none());
    assert_eq!(sink.sink_pads().len(), 1);
    let bus = pipeline.bus().unwrap();
    let warning = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(5),
            &[gst::MessageType::Warning],
        )
        .expect("a warning message");
    let gst::MessageView::Warning(w) = warning.view() else {
        unreachable!()
    };
    assert!(
        w.error().to_string().contains("while publishing"),
        "{}",
        w.error()
    );
    let result = run_to_end(&pipeline, Duration::from_secs(15));
    pipeline.set_state(gst::State::Null).unwrap();
    result.unwrap();
    let methods = server.join().unwrap();
    assert_eq!(
        methods.last().map(String::as_str),
        Some("TEARDOWN"),
        "{methods:?}"
    );
}

/// The sink adds no latency of its own: behind a live source, the latency our sink pads answer
/// is what upstream reports. A stock basesink adds its 20 ms `processing-deadline`, which also
/// made every buffer wait on the clock a second time behind a synchronising element (clocksync,
/// a live source) for work that takes microseconds here (payloading and queueing).
#[test]
fn the_sink_adds_no_latency_of_its_own() {
    init();
    let (server, decoded) = record_server_with(
        RECORD_LAUNCH,
        gst_rtsp::RTSPLowerTrans::TCP,
        Access::default(),
    );
    let desc = format!(
        "rtspclientsink2 name=sink location={} protocols=tcp \
         videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h264parse \
         ! clocksync ! sink.sink_0 \
         audiotestsrc is-live=true samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=2 \
         ! opusenc frame-size=20 ! sink.sink_1",
        server.url()
    );
    let pipeline = our_pipeline(&desc);
    pipeline.set_state(gst::State::Playing).unwrap();
    // Publishing for real: the server decodes frames of both streams.
    let deadline = Instant::now() + Duration::from_secs(15);
    while (decoded.video.load(Ordering::SeqCst) < 10 || decoded.audio.load(Ordering::SeqCst) < 10)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The element's answer (a bin: the largest of its sinks') against what each sink pad's
    // upstream reports.
    let sink = pipeline.by_name("sink").unwrap();
    let mut ours = gst::query::Latency::new();
    assert!(sink.query(&mut ours), "latency query on the element");
    let mut upstream = Vec::new();
    for pad in sink.sink_pads() {
        let peer = pad.peer().expect("linked");
        let mut q = gst::query::Latency::new();
        assert!(peer.query(&mut q), "upstream of {}", pad.name());
        upstream.push(q.result());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        decoded.video.load(Ordering::SeqCst) >= 10 && decoded.audio.load(Ordering::SeqCst) >= 10,
        "the server decoded too little"
    );
    let (live, min, _) = ours.result();
    assert_eq!(upstream.len(), 2);
    assert!(
        live && upstream.iter().all(|u| u.0),
        "live: {ours:?}, upstream {upstream:?}"
    );
    let expected = upstream.iter().map(|u| u.1).max().unwrap();
    assert_eq!(min, expected, "minimum latency; upstream {upstream:?}");
}

/// `latency` is accepted (gst-launch lines written for rtspclientsink set it) and kept.
#[test]
fn latency_is_accepted() {
    init();
    let e = gst::parse::launch("rtspclientsink2 latency=0").unwrap();
    assert_eq!(e.property::<u32>("latency"), 0);
    let d = gst::ElementFactory::make("rtspclientsink2")
        .build()
        .unwrap();
    assert_eq!(d.property::<u32>("latency"), 2000);
}

/// As the stock element, ours is a URI handler for sinks: `rtsp://` and its variants.
#[test]
fn is_a_uri_handler_for_rtsp_sinks() {
    init();
    let e = gst::ElementFactory::make("rtspclientsink2")
        .build()
        .unwrap();
    let handler = e.dynamic_cast_ref::<gst::URIHandler>().unwrap();
    assert_eq!(handler.uri_type(), gst::URIType::Sink);
    handler.set_uri("rtsps://127.0.0.1:8322/live").unwrap();
    assert_eq!(
        e.property::<Option<String>>("location").as_deref(),
        Some("rtsps://127.0.0.1:8322/live")
    );
    assert!(handler.set_uri("not a url").is_err());
}
