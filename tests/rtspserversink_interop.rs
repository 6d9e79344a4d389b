//! rtspserversink against real RTSP clients we did not write: ffprobe (FFmpeg 5.1) and the stock
//! C `rtspsrc`, over UDP, TCP and multicast, alone and many at once.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ffprobe_reads_audio_and_video_over_udp() {
    let server = ServerPipeline::start("", &av_source(true));
    let out = ffprobe(&server.url("/"), "udp", "stream=codec_name");
    assert!(out.contains("h264"), "codecs: {out}");
    assert!(out.contains("opus"), "codecs: {out}");
    assert!(server.errors().is_empty(), "{:?}", server.errors());
}

#[test]
fn ffprobe_reads_audio_and_video_over_tcp_on_a_mount_point() {
    let server = ServerPipeline::start("mount-point=/live/cam1", &av_source(true));
    let out = ffprobe(
        &server.url("/live/cam1"),
        "tcp",
        "stream=codec_name,width,height",
    );
    assert!(out.contains("h264,320,240"), "streams: {out}");
    assert!(out.contains("opus"), "streams: {out}");
}

#[test]
fn stock_rtspsrc_decodes_over_udp() {
    let server = ServerPipeline::start("", &av_source(false));
    assert_eq!(rtspsrc_decode(&server.url("/"), "udp", 30, ""), 30);
}

#[test]
fn stock_rtspsrc_decodes_over_tcp() {
    let server = ServerPipeline::start("", &av_source(true));
    assert_eq!(rtspsrc_decode(&server.url("/"), "tcp", 30, ""), 30);
}

/// Multicast settings with groups and ports of the test's own: tests run at once, and two
/// servers sending to one group or one port mix their streams in each other's clients (a socket
/// bound to a port receives every group joined on the host, IP_MULTICAST_ALL).
fn multicast(group: u8, port_min: u16) -> String {
    format!(
        "multicast-iface=127.0.0.1 multicast-address-min=239.255.{group}.1 \
         multicast-address-max=239.255.{group}.9 multicast-port-min={port_min} \
         multicast-port-max={}",
        port_min + 100
    )
}

/// Waits (bounded) until stats show a playing client on `transport` that was sent packets.
fn wait_for_client(server: &ServerPipeline, transport: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = server.stats();
        let clients = stats.get::<gst::Array>("clients").unwrap();
        let found = clients.iter().any(|c| {
            let c = c.get::<gst::Structure>().unwrap();
            c.get::<&str>("transport") == Ok(transport)
                && c.get::<bool>("playing") == Ok(true)
                && c.get::<u64>("packets-sent").unwrap() > 0
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {transport} client in {stats}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn stock_rtspsrc_decodes_over_multicast() {
    let server = ServerPipeline::start(&multicast(42, 46000), &av_source(false));
    let url = server.url("/");
    let client =
        std::thread::spawn(move || rtspsrc_decode(&url, "udp-mcast", 90, "multicast-iface=lo"));
    wait_for_client(&server, "udp-mcast");
    assert_eq!(client.join().unwrap(), 90);
    // The group's address comes from the configured range.
    let mut c = RawClient::connect(server.port);
    assert_eq!(c.request("DESCRIBE", &server.url("/"), &[], "").status, 200);
    let r = c.request(
        "SETUP",
        &format!("{}stream=0", server.url("/")),
        &[("Transport", "RTP/AVP;multicast")],
        "",
    );
    assert_eq!(r.status, 200);
    let t = r.header("Transport").unwrap();
    assert!(t.contains("destination=239.255.42.1"), "{t}");
    assert!(t.contains("port=46000-46001"), "{t}");
    assert!(t.contains("ttl=1"), "{t}");
}

#[test]
fn several_clients_of_every_transport_at_once() {
    let server = ServerPipeline::start(&multicast(43, 46200), &av_source(true));
    let url = server.url("/");
    let handles: Vec<_> = [
        ("udp", 0),
        ("tcp", 1),
        ("udp-mcast", 2),
        ("tcp", 3),
        ("udp", 5),
    ]
    .into_iter()
    .map(|(proto, i)| {
        let url = url.clone();
        std::thread::spawn(move || {
            if i % 2 == 0 {
                rtspsrc_decode(&url, proto, 30, "multicast-iface=lo")
            } else {
                let out = ffprobe(&url, proto, "stream=codec_name");
                u32::from(out.contains("h264") && out.contains("opus")) * 30
            }
        })
    })
    .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 30);
    }
}

#[test]
fn a_stalled_tcp_client_does_not_stop_the_others() {
    // Large frames (noise) so that the stalled client's socket buffers fill quickly.
    let server = ServerPipeline::start(
        "client-queue-size=262144 client-stall-timeout=2000",
        NOISE_VIDEO,
    );
    // A client that plays over TCP and never reads, with a tiny receive buffer.
    let mut stalled = RawClient::from_stream(connect_small_buffer(server.port));
    let (_session, _) = stalled.play_tcp(&server.url("/"));

    // Meanwhile a real client plays normally.
    assert_eq!(rtspsrc_decode(&server.url("/"), "tcp", 90, ""), 90);

    // The stalled client is dropped frames and finally disconnected, and that is counted.
    server.wait_slow_client_dropped(Duration::from_secs(30));
    drop(stalled);
}

#[test]
fn fifty_clients_connecting_and_playing_at_the_same_moment_all_receive() {
    // All from 127.0.0.1.
    let server = ServerPipeline::start("max-connections-per-address=50", &av_source(true));
    let url = server.url("/");
    let n = 50;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let url = url.clone();
            let barrier = barrier.clone();
            let port = server.port;
            std::thread::spawn(move || {
                barrier.wait();
                let mut c = RawClient::connect(port);
                let (_session, streams) = c.play_tcp(&url);
                assert_eq!(streams, 2);
                // Ten video packets each.
                assert_eq!(c.read_interleaved(0, 10).len(), 10);
                c
            })
        })
        .collect();
    let clients: Vec<RawClient> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let stats = server.stats();
    assert_eq!(stats.get::<u32>("sessions").unwrap(), n as u32, "{stats}");
    assert_eq!(stats.get::<u64>("frames-dropped").unwrap(), 0, "{stats}");
    drop(clients);
}

/// Plays a finite stream (4 s of 30 fps video and 20 ms Opus packets) over TCP with a raw
/// client until it ends, and returns per stream (video, audio) the frames the client received
/// (video: packets with the marker bit; audio: packets) and the writes the server made for it
/// (`bursts-sent`).
fn frames_and_writes(burst_latency: u32) -> [(u64, u64); 2] {
    let server = ServerPipeline::start(
        &format!("burst-latency={burst_latency}"),
        "videotestsrc is-live=true num-buffers=120 \
         ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! sink. \
         audiotestsrc is-live=true num-buffers=190 samplesperbuffer=960 \
         ! audio/x-raw,rate=48000 ! audioconvert ! opusenc ! sink.",
    );
    // Stock rtspsrc decodes the bursts, over TCP and UDP, while the raw client counts.
    let decoders: Vec<_> = ["tcp", "udp"]
        .into_iter()
        .map(|proto| {
            let url = server.url("/");
            std::thread::spawn(move || rtspsrc_decode(&url, proto, 30, ""))
        })
        .collect();
    let mut c = RawClient::connect(server.port);
    let (session, streams) = c.play_tcp(&server.url("/"));
    assert_eq!(streams, 2);
    let counts: Arc<[(AtomicU64, AtomicU64); 2]> = Arc::new(Default::default());
    let socket = c.stream.try_clone().unwrap();
    let reader = {
        let counts = counts.clone();
        std::thread::spawn(move || {
            while let Some((ch, p)) = c.next_interleaved() {
                if ch % 2 == 0 && (ch as usize) < 4 && p.len() >= 12 {
                    let (packets, frames) = &counts[ch as usize / 2];
                    packets.fetch_add(1, Ordering::Relaxed);
                    if ch != 0 || p[1] & 0x80 != 0 {
                        frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // The sources end; then every packet sent must have been read.
    let sent_and_writes = |stats: &gst::Structure| -> Option<[(u64, u64); 2]> {
        let clients = stats.get::<gst::Array>("clients").unwrap();
        let client = clients
            .iter()
            .map(|c| c.get::<gst::Structure>().unwrap())
            .find(|c| c.get::<&str>("session") == Ok(session.as_str()))?;
        let mut out = [(0, 0); 2];
        for s in client.get::<gst::Array>("streams").unwrap().iter() {
            let s = s.get::<gst::Structure>().unwrap();
            let i = s.get::<u32>("stream").unwrap() as usize;
            out[i] = (
                s.get::<u64>("packets-sent").unwrap(),
                s.get::<u64>("bursts-sent").unwrap(),
            );
        }
        Some(out)
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut last, mut stable_since) = (None, Instant::now());
    let result = loop {
        assert!(
            Instant::now() < deadline,
            "stream did not end: {}",
            server.stats()
        );
        std::thread::sleep(Duration::from_millis(200));
        let now = sent_and_writes(&server.stats()).expect("the client in stats");
        if last != Some(now) {
            (last, stable_since) = (Some(now), Instant::now());
            continue;
        }
        let read = |i: usize| counts[i].0.load(Ordering::Relaxed);
        if stable_since.elapsed() > Duration::from_secs(1)
            && read(0) == now[0].0
            && read(1) == now[1].0
        {
            break now;
        }
    };
    let _ = socket.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    for d in decoders {
        assert_eq!(
            d.join().unwrap(),
            30,
            "stock rtspsrc decodes with burst-latency={burst_latency}"
        );
    }
    let frames = |i: usize| counts[i].1.load(Ordering::Relaxed);
    [(frames(0), result[0].1), (frames(1), result[1].1)]
}

/// With `burst-latency` complete frames wait for the next ones and go to a TCP client in one
/// write: about half the writes at 30 fps with 100 ms (three frames a burst when the encoder
/// keeps time), and every frame still decodes in stock rtspsrc. Without it, one write a frame.
#[test]
fn burst_latency_sends_several_frames_per_write() {
    let [(video_frames, video_writes), (audio_frames, audio_writes)] = frames_and_writes(100);
    assert!(
        video_frames >= 60 && audio_frames >= 100,
        "{video_frames} / {audio_frames}"
    );
    assert!(
        video_writes * 10 <= video_frames * 7,
        "video: {video_writes} writes for {video_frames} frames"
    );
    assert!(
        audio_writes * 10 <= audio_frames * 7,
        "audio: {audio_writes} writes for {audio_frames} packets"
    );
    let [(video_frames, video_writes), (audio_frames, audio_writes)] = frames_and_writes(0);
    assert!(
        video_writes * 10 >= video_frames * 9,
        "video without burst latency: {video_writes} writes for {video_frames} frames"
    );
    // (The packets a client is sent between its start point and its PLAY answer go in one.)
    assert!(
        audio_writes * 10 >= audio_frames * 9,
        "audio without burst latency: {audio_writes} writes for {audio_frames} packets"
    );
}
