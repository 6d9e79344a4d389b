//! Every input format rtspserversink accepts reaches a real client (ffprobe) with its codec
//! parameters in the SDP, and a format change mid-stream is announced to connected clients.

mod common;

use std::time::Duration;

use common::*;
use gst::prelude::*;

const VIDEO: &str =
    "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1,format=I420";
const AUDIO: &str = "audiotestsrc is-live=true ! audioconvert ! audioresample";

/// Serves `source` (which must end linked into `sink.`) and checks what ffprobe sees (one of
/// `codecs`) and what the SDP says.
fn check_any(source: &str, codecs: &[&str], sdp_needles: &[&str]) {
    let server = ServerPipeline::start("", source);
    let mut c = RawClient::connect(server.port);
    let r = c.request("DESCRIBE", &server.url("/"), &[], "");
    assert_eq!(r.status, 200, "{r:?}");
    let sdp = String::from_utf8(r.body).unwrap();
    for needle in sdp_needles {
        assert!(sdp.contains(needle), "'{needle}' missing from SDP:\n{sdp}");
    }
    let out = ffprobe(&server.url("/"), "tcp", "stream=codec_name");
    assert!(codecs.contains(&out.trim()), "ffprobe saw {out}");
    assert!(server.errors().is_empty(), "{:?}", server.errors());
}

fn check(source: &str, codec: &str, sdp_needles: &[&str]) {
    check_any(source, &[codec], sdp_needles);
}

#[test]
fn h265() {
    check(
        &format!(
            "{VIDEO} ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! sink."
        ),
        "hevc",
        &["H265/90000", "sprop-vps=", "sprop-sps=", "sprop-pps="],
    );
}

#[test]
fn vp8() {
    check(
        &format!("{VIDEO} ! vp8enc deadline=1 keyframe-max-dist=30 ! sink."),
        "vp8",
        &["VP8/90000"],
    );
}

#[test]
fn vp9() {
    check(
        &format!("{VIDEO} ! vp9enc deadline=1 cpu-used=8 keyframe-max-dist=30 ! sink."),
        "vp9",
        &["VP9/90000"],
    );
}

#[test]
fn aac() {
    check(
        &format!("{AUDIO} ! avenc_aac ! aacparse ! sink."),
        "aac",
        &["MPEG4-GENERIC/", "config=", "mode=AAC-hbr"],
    );
}

#[test]
fn pcmu() {
    check(
        &format!("{AUDIO} ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! sink."),
        "pcm_mulaw",
        &["m=audio 0 RTP/AVP 0", "PCMU/8000"],
    );
}

#[test]
fn pcma() {
    check(
        &format!("{AUDIO} ! audio/x-raw,rate=8000,channels=1 ! alawenc ! sink."),
        "pcm_alaw",
        &["m=audio 0 RTP/AVP 8", "PCMA/8000"],
    );
}

#[test]
fn mp3() {
    // FFmpeg names every RTP payload type 14 stream "mp2", whatever its layer.
    check_any(
        &format!("{AUDIO} ! lamemp3enc ! mpegaudioparse ! sink."),
        &["mp2", "mp3"],
        &["m=audio 0 RTP/AVP 14", "MPA/90000"],
    );
}

#[test]
fn already_payloaded_rtp_passes_through() {
    check(
        &format!("{VIDEO} ! vp8enc deadline=1 ! rtpvp8pay pt=100 ! sink."),
        "vp8",
        &["m=video 0 RTP/AVP 100", "a=rtpmap:100 VP8/90000"],
    );
}

#[test]
fn unsupported_input_is_refused_at_link_time() {
    init();
    let err = gst::parse::launch(&format!(
        "{VIDEO} ! x264enc ! mpegtsmux ! rtspserversink name=sink address=127.0.0.1 port=0"
    ))
    .expect_err("MPEG-TS must not link");
    assert!(err.to_string().contains("could not link"), "{err}");
}

#[test]
fn a_format_change_mid_stream_is_announced_with_the_new_sdp() {
    let server = ServerPipeline::start(
        "",
        "videotestsrc is-live=true ! capsfilter name=size caps=video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! sink.",
    );
    let mut c = RawClient::connect(server.port);
    let (session, _) = c.play_tcp(&server.url("/"));
    c.read_interleaved(0, 5);
    let size = server.pipeline.by_name("size").unwrap();
    size.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("width", 640i32)
            .field("height", 480i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .field("format", "I420")
            .build(),
    );
    c.stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let (start, headers) = c.read_request();
    assert!(start.starts_with("ANNOUNCE "), "{start}");
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("Content-Type").as_deref(), Some("application/sdp"));
    assert_eq!(get("Session").as_deref(), Some(session.as_str()));
    // A new client sees the new size.
    let out = ffprobe(&server.url("/"), "tcp", "stream=width,height");
    assert_eq!(out.trim(), "640,480");
}
