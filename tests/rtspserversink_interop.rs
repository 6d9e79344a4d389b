//! rtspserversink against real RTSP clients we did not write: ffprobe (FFmpeg 5.1) and the stock
//! C `rtspsrc`, over UDP, TCP and multicast, alone and many at once.

mod common;

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
