//! The relay (examples/relay.rs): ffmpeg publishes into rtspserversrc, rtspserversink serves the
//! same packets (no re-encoding: the viewers' SDP has the publisher's parameter sets) to two
//! viewers at once, ffprobe and the stock rtspsrc, which decode from the keyframe they join at
//! (rtspsrc 60 frames, ffprobe at least 2 s worth of the 3 s it reads).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::hls::TempDir;
use common::{RawClient, ffmpeg_test_media, init, rtspsrc_decode, run};
use gst::prelude::*;

/// examples/relay.rs's pipeline, on free ports.
fn relay_description(streams: usize) -> String {
    let mut desc = String::from(
        "rtspserversrc name=in address=127.0.0.1 port=0 mount-point=/in \
         wait-for-next-publisher=true \
         rtspserversink name=out address=127.0.0.1 port=0 mount-point=/out",
    );
    for _ in 0..streams {
        desc.push_str(" in. ! queue ! out.");
    }
    desc
}

/// A publisher pipeline in this process, stopped when dropped.
struct PipelineGuard(gst::Pipeline);

impl Drop for PipelineGuard {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

#[test]
fn a_published_stream_is_relayed_to_two_viewers_without_reencoding() {
    relay_to_two_viewers(|file, in_port| {
        Box::new(common::serversrc::ffmpeg_publish(
            file,
            &format!("rtsp://127.0.0.1:{in_port}/in"),
            "tcp",
        ))
    });
}

#[test]
fn rtspclientsink2_publishing_is_relayed_to_two_viewers() {
    relay_to_two_viewers(|file, in_port| {
        let pipeline = gst::parse::launch(&format!(
            "filesrc location={} ! qtdemux name=d d.video_0 ! queue ! h264parse ! s.sink_0 \
             d.audio_0 ! queue ! aacparse ! s.sink_1 rtspclientsink2 name=s \
             location=rtsp://127.0.0.1:{in_port}/in protocols=tcp",
            file.display()
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        common::assert_ours(&pipeline.by_name("s").unwrap());
        pipeline.set_state(gst::State::Playing).unwrap();
        Box::new(PipelineGuard(pipeline))
    });
}

/// A 10 s file published into the relay by `publish(file, port)` (the returned guard stops it);
/// ffprobe and rtspsrc watch the relay's output at once.
fn relay_to_two_viewers(publish: impl FnOnce(&std::path::Path, i32) -> Box<dyn std::any::Any>) {
    init();
    let dir = TempDir::new("relay");
    let file = dir.join("test.mp4");
    ffmpeg_test_media(
        &file,
        "320x240",
        10,
        Some(48000),
        &["-bf", "0", "-shortest"],
    );

    let pipeline = gst::parse::launch(&relay_description(2))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let (input, output) = (
        pipeline.by_name("in").unwrap(),
        pipeline.by_name("out").unwrap(),
    );
    common::assert_ours(&input);
    common::assert_ours(&output);
    pipeline.set_state(gst::State::Playing).unwrap();
    let in_port = input.property::<i32>("bound-port");
    let out_port = output.property::<i32>("bound-port");
    assert!(in_port > 0 && out_port > 0);
    let publisher = publish(&file, in_port);

    // The publisher records; give the viewers a stream to join.
    let bus = pipeline.bus().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_nseconds(left.as_nanos() as u64),
                &[gst::MessageType::Element, gst::MessageType::Error],
            )
            .expect("the publisher starts");
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("{} ({:?})", e.error(), e.debug());
        }
        if msg
            .structure()
            .is_some_and(|s| s.name() == "rtspserversrc-publisher-started")
        {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("rtsp://127.0.0.1:{out_port}/out");

    // Without re-encoding: the viewers' SDP has the publisher's parameter sets.
    let sprop = input
        .static_pad("stream_0")
        .and_then(|p| p.current_caps())
        .and_then(|c| {
            c.structure(0)
                .and_then(|s| s.get::<String>("sprop-parameter-sets").ok())
        })
        .expect("the publisher's parameter sets");
    let mut c = RawClient::connect(out_port as u16);
    let d = c.request("DESCRIBE", &url, &[("Accept", "application/sdp")], "");
    assert_eq!(d.status, 200);
    let sdp = String::from_utf8_lossy(&d.body);
    assert!(sdp.contains(&sprop), "{sprop} not in {sdp}");

    // Two viewers at once: ffprobe reads 3 s of it, rtspsrc decodes 60 frames.
    let probe = {
        let url = url.clone();
        std::thread::spawn(move || {
            let (out, timed_out) = run(
                Command::new("ffprobe").args([
                    "-v",
                    "error",
                    "-rtsp_transport",
                    "tcp",
                    "-select_streams",
                    "v",
                    "-count_frames",
                    "-read_intervals",
                    "%+3",
                    "-show_entries",
                    "stream=nb_read_frames",
                    "-of",
                    "csv=p=0",
                    &url,
                ]),
                Duration::from_secs(30),
            );
            assert!(!timed_out, "ffprobe timed out");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
    };
    let decoded = rtspsrc_decode(&url, "tcp", 60, "");
    let probed: u64 = probe
        .join()
        .unwrap()
        .parse()
        .expect("ffprobe's frame count");
    assert_eq!(decoded, 60, "frames rtspsrc decoded");
    // 3 s at 30 frames/s, from the keyframe it joined at (one a second).
    assert!(probed >= 60, "ffprobe decoded {probed} frames in 3 s");
    let stats = output.property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("frames-dropped").unwrap(), 0, "{stats}");
    drop(publisher);
    pipeline.set_state(gst::State::Null).unwrap();
}
