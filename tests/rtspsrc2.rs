//! rtspsrc2 against RTSP servers: our rtspserversink and (see rtspsrc2_stock.rs) the C
//! gst-rtsp-server. Frames must decode through the stock depayloaders and decoders.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

/// Runs a client pipeline until EOS (its sinks have `num-buffers`) or error, bounded.
fn run_client(desc: &str, timeout: Duration) -> Result<gst::Pipeline, String> {
    init();
    let pipeline = gst::parse::launch(desc)
        .map_err(|e| format!("{desc}: {e}"))?
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline.by_name("src").expect("a source named src");
    assert_ours(&src);
    let bus = pipeline.bus().unwrap();
    if pipeline.set_state(gst::State::Playing).is_err() {
        let msg =
            bus.timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error]);
        let _ = pipeline.set_state(gst::State::Null);
        return Err(match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Error(e)) => format!("{} ({:?})", e.error(), e.debug()),
            _ => "the state change failed without an error message".into(),
        });
    }
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let result = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(format!(
            "{} ({:?}) [{:?}]",
            e.error(),
            e.debug(),
            e.error().kind::<gst::ResourceError>()
        )),
        _ => Err(format!("no EOS within {timeout:?}")),
    };
    let stopped = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        stopped.elapsed()
    );
    result.map(|_| pipeline)
}

fn decode_video(url: &str, protocols: &str) -> Result<gst::Pipeline, String> {
    run_client(
        &format!(
            "rtspsrc2 name=src location={url} protocols={protocols} \
             ! rtph264depay ! h264parse ! avdec_h264 ! fakesink num-buffers=30"
        ),
        Duration::from_secs(20),
    )
}

#[test]
fn plays_rtspserversink_over_udp() {
    let server = ServerPipeline::start("", &av_source(false));
    decode_video(&server.url("/"), "udp").unwrap();
}

#[test]
fn plays_rtspserversink_over_tcp() {
    let server = ServerPipeline::start("", &av_source(false));
    decode_video(&server.url("/"), "tcp").unwrap();
}

#[test]
fn plays_rtspserversink_over_multicast() {
    let server = ServerPipeline::start(
        "multicast-iface=127.0.0.1 multicast-address-min=239.255.44.1 \
         multicast-address-max=239.255.44.9 multicast-port-min=48000 multicast-port-max=48100",
        &av_source(false),
    );
    let url = server.url("/");
    run_client(
        &format!(
            "rtspsrc2 name=src location={url} protocols=udp-mcast multicast-iface=lo \
             ! rtph264depay ! h264parse ! avdec_h264 ! fakesink num-buffers=30"
        ),
        Duration::from_secs(20),
    )
    .unwrap();
}

#[test]
fn decodebin_links_audio_and_video_pads_with_full_caps() {
    let server = ServerPipeline::start("", &av_source(true));
    let url = server.url("/");
    run_client(
        &format!(
            "rtspsrc2 name=src location={url} protocols=tcp \
             src. ! queue ! decodebin ! fakesink num-buffers=30 \
             src. ! queue ! decodebin ! fakesink num-buffers=50"
        ),
        Duration::from_secs(20),
    )
    .unwrap();
    // The pads' caps, while playing.
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location={url} protocols=tcp src. ! fakesink src. ! fakesink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let src = pipeline.by_name("src").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let caps: Vec<gst::Caps> = loop {
        let caps: Vec<gst::Caps> = src
            .src_pads()
            .iter()
            .filter_map(|p| p.current_caps())
            .collect();
        if caps.len() == 2 || Instant::now() > deadline {
            break caps;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(caps.len(), 2, "{caps:?}");
    let video = caps
        .iter()
        .find(|c| c.structure(0).unwrap().get::<&str>("media") == Ok("video"))
        .expect("video pad");
    let s = video.structure(0).unwrap();
    assert_eq!(s.get::<&str>("encoding-name").unwrap(), "H264");
    assert_eq!(s.get::<i32>("clock-rate").unwrap(), 90000);
    assert!(s.get::<&str>("sprop-parameter-sets").is_ok(), "{s}");
    assert_eq!(s.get::<&str>("packetization-mode").unwrap(), "1");
    let audio = caps
        .iter()
        .find(|c| c.structure(0).unwrap().get::<&str>("media") == Ok("audio"))
        .expect("audio pad");
    assert_eq!(
        audio
            .structure(0)
            .unwrap()
            .get::<&str>("encoding-name")
            .unwrap(),
        "OPUS"
    );
}

#[test]
fn stats_count_received_packets() {
    let server = ServerPipeline::start("", &av_source(false));
    let url = server.url("/");
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location={url} protocols=udp ! fakesink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let src = pipeline.by_name("src").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = src.property::<gst::Structure>("stats");
        let streams = stats.get::<gst::Array>("streams").unwrap();
        let received = streams
            .first()
            .and_then(|s| s.get::<gst::Structure>().ok())
            .map_or(0, |s| s.get::<u64>("packets-received").unwrap());
        if received >= 50 {
            let s = streams[0].get::<gst::Structure>().unwrap();
            assert_eq!(s.get::<i64>("packets-lost").unwrap(), 0, "{s}");
            assert_eq!(s.get::<u64>("packets-late").unwrap(), 0, "{s}");
            // Measured on the RTSP connection: SETUP and PLAY have been answered by now.
            let rtt = s.get::<f64>("round-trip-ms").unwrap();
            assert!(rtt > 0.0 && rtt < 1000.0, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn connection_refused_is_a_clear_error() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = run_client(
        &format!("rtspsrc2 name=src location=rtsp://127.0.0.1:{port}/ ! fakesink"),
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(err.contains("Could not play"), "{err}");
    assert!(err.contains("onnection refused"), "{err}");
}

#[test]
fn unknown_mount_is_a_clear_error() {
    let server = ServerPipeline::start("mount-point=/cam", &av_source(false));
    let err = run_client(
        &format!(
            "rtspsrc2 name=src location={} ! fakesink",
            server.url("/nothing-here")
        ),
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(err.contains("404"), "{err}");
    assert!(err.contains("DESCRIBE"), "{err}");
    assert!(err.contains("[Some(NotFound)]"), "{err}");
}

#[test]
fn a_server_that_goes_away_is_an_error_and_stopping_stays_bounded() {
    let server = ServerPipeline::start("", &av_source(false));
    let url = server.url("/");
    init();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location={url} protocols=tcp reconnect-attempts=2 \
         reconnect-initial-delay=100 ! fakesink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    drop(server);
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Error])
        .expect("an error when the server goes away");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    let text = e.error().to_string();
    assert!(text.contains("closed"), "{text}");
    assert!(text.contains("2 reconnection attempts failed"), "{text}");
    let t = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn invalid_settings_are_clear_errors() {
    init();
    let err = run_client(
        "rtspsrc2 name=src location=rtsp://127.0.0.1:9/ port-range=9000 ! fakesink",
        Duration::from_secs(5),
    );
    // Either the state change fails (posting the error) or an error arrives on the bus.
    let text = format!("{err:?}");
    assert!(text.contains("port-range"), "{text}");
}

/// An even/odd UDP port pair on loopback (RTP, RTCP).
fn udp_pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
    loop {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p.is_multiple_of(2)
            && let Ok(b) = std::net::UdpSocket::bind(("127.0.0.1", p + 1))
        {
            break (a, b);
        }
    }
}

/// A TCP proxy in front of an RTSP server that rewrites `client_port=A-B` in SETUP requests to
/// the RTP port `rewrite(A)` returns (RTCP one above), so that the server's UDP goes where a
/// test wants it, while RTSP (and interleaved data) passes verbatim.
struct ClientPortProxy {
    port: u16,
}

impl ClientPortProxy {
    fn start(server_port: u16, rewrite: impl Fn(u16) -> u16 + Send + Sync + 'static) -> Self {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};

        let rewrite = std::sync::Arc::new(rewrite);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", server_port)) else {
                    return;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let rewrite = rewrite.clone();
                // Server → client: verbatim.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                });
                // Client → server: header blocks rewritten, interleaved frames verbatim.
                std::thread::spawn(move || {
                    let mut pending: Vec<u8> = Vec::new();
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        loop {
                            if pending.first() == Some(&b'$') {
                                if pending.len() < 4 {
                                    break;
                                }
                                let len = 4 + u16::from_be_bytes([pending[2], pending[3]]) as usize;
                                if pending.len() < len {
                                    break;
                                }
                                let frame: Vec<u8> = pending.drain(..len).collect();
                                let _ = server.write_all(&frame);
                                continue;
                            }
                            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n")
                            else {
                                break;
                            };
                            let head: Vec<u8> = pending.drain(..end + 4).collect();
                            let text = String::from_utf8_lossy(&head).into_owned();
                            let text = match text.find("client_port=") {
                                Some(i) => {
                                    let rest = &text[i + "client_port=".len()..];
                                    let stop = rest
                                        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
                                        .unwrap_or(rest.len());
                                    let original: u16 = rest[..stop]
                                        .split('-')
                                        .next()
                                        .and_then(|p| p.parse().ok())
                                        .expect("client_port in SETUP");
                                    let hole = rewrite(original);
                                    format!(
                                        "{}client_port={}-{}{}",
                                        &text[..i],
                                        hole,
                                        hole + 1,
                                        &rest[stop..]
                                    )
                                }
                                None => text,
                            };
                            let _ = server.write_all(text.as_bytes());
                        }
                    }
                });
            }
        });
        ClientPortProxy { port }
    }

    /// UDP goes to a port pair that nobody reads, as behind a firewall.
    fn blackhole(server_port: u16) -> Self {
        let holes = udp_pair();
        let hole = holes.0.local_addr().unwrap().port();
        Self::start(server_port, move |_| {
            let _keep = &holes;
            hole
        })
    }

    /// RTP reaches the client with every pair of packets swapped; RTCP passes as is.
    fn reordering(server_port: u16, swapped: Arc<AtomicU64>) -> Self {
        Self::relaying(server_port, move |packet, held, send| {
            if let Some(first) = held.take() {
                send(packet);
                send(&first);
                swapped.fetch_add(1, Ordering::Relaxed);
            } else {
                *held = Some(packet.to_vec());
            }
        })
    }

    /// Every `nth` RTP packet never reaches the client (its sequence number goes to `dropped`);
    /// RTCP passes as is.
    fn losing(server_port: u16, nth: usize, dropped: Arc<Mutex<Vec<u16>>>) -> Self {
        let mut count = 0;
        Self::relaying(server_port, move |packet, _, send| {
            count += 1;
            if count % nth == 0 {
                dropped
                    .lock()
                    .unwrap()
                    .push(u16::from_be_bytes([packet[2], packet[3]]));
            } else {
                send(packet);
            }
        })
    }

    /// Relays the server's RTP to the client through `relay` (given each packet, a slot to hold
    /// one back, and the way on to the client); RTCP passes as is.
    fn relaying(
        server_port: u16,
        relay: impl FnMut(&[u8], &mut Option<Vec<u8>>, &dyn Fn(&[u8])) + Clone + Send + Sync + 'static,
    ) -> Self {
        Self::start(server_port, move |client_rtp| {
            let (rtp, rtcp) = udp_pair();
            let port = rtp.local_addr().unwrap().port();
            for (sock, to, through) in [(rtp, client_rtp, true), (rtcp, client_rtp + 1, false)] {
                let mut relay = relay.clone();
                std::thread::spawn(move || {
                    sock.set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    let mut held: Option<Vec<u8>> = None;
                    let mut buf = [0u8; 65536];
                    let send = |p: &[u8]| {
                        let _ = sock.send_to(p, ("127.0.0.1", to));
                    };
                    while let Ok(n) = sock.recv(&mut buf) {
                        if through {
                            relay(&buf[..n], &mut held, &send);
                        } else {
                            send(&buf[..n]);
                        }
                    }
                });
            }
            port
        })
    }
}

/// Plays rtsp://127.0.0.1:`port`/ over UDP with `latency` ms into a decoder until `packets`
/// RTP packets have left rtspsrc2 (20 s at most; an error fails the test). Returns (sequence
/// number, DISCONT, when it left) of every packet, in order, and the element's final stats.
fn play_recording_output(
    port: u16,
    latency: u32,
    packets: usize,
) -> (Vec<(u16, bool, Instant)>, gst::Structure) {
    // rtspsrc2 pushes single buffers and, for bursts, buffer lists.
    let (pipeline, src, out) = launch_recording_pads(
        &format!(
            "rtspsrc2 name=src location=rtsp://127.0.0.1:{port}/ protocols=udp \
             latency={latency} ! rtph264depay ! h264parse ! avdec_h264 ! fakesink"
        ),
        "src",
        |buffer, now| {
            let map = buffer.map_readable().unwrap();
            let discont = buffer.flags().contains(gst::BufferFlags::DISCONT);
            (u16::from_be_bytes([map[2], map[3]]), discont, now)
        },
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.lock().unwrap().len() < packets && Instant::now() < deadline {
        if let Some(msg) = pipeline.bus().unwrap().timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Error],
        ) && let gst::MessageView::Error(e) = msg.view()
        {
            panic!("{} {:?}", e.error(), e.debug());
        }
    }
    let stats = src.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    let out = out.lock().unwrap().clone();
    assert!(
        out.len() >= packets,
        "only {} packets within 20 s",
        out.len()
    );
    (out, stats)
}

#[test]
fn the_jitter_buffer_puts_reordered_udp_back_in_order() {
    let server = ServerPipeline::start("", &av_source(false));
    let swapped = Arc::new(AtomicU64::new(0));
    let proxy = ClientPortProxy::reordering(server.port, swapped.clone());
    let (out, _) = play_recording_output(proxy.port, 200, 300);
    let seqs: Vec<u16> = out.iter().map(|&(seq, _, _)| seq).collect();
    assert!(
        swapped.load(Ordering::Relaxed) >= 100,
        "the proxy swapped only {} pairs",
        swapped.load(Ordering::Relaxed)
    );
    let out_of_order: Vec<(u16, u16)> = seqs
        .windows(2)
        .filter(|w| w[1] != w[0].wrapping_add(1))
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(out_of_order.is_empty(), "not in sequence: {out_of_order:?}");
}

#[test]
fn lost_udp_packets_are_given_up_after_the_latency_and_output_goes_on_discont() {
    let server = ServerPipeline::start("", &av_source(false));
    let dropped: Arc<Mutex<Vec<u16>>> = Arc::default();
    let proxy = ClientPortProxy::losing(server.port, 25, dropped.clone());
    // The jitter buffer's decisions, as GST_DEBUG=lsrtp:5 shows them.
    /// Text and id of each record.
    type Records = Vec<(String, Option<String>)>;
    let gave_up: Arc<Mutex<Records>> = Arc::default();
    let sink = gave_up.clone();
    let lsrtp = gst::DebugCategory::get("lsrtp").expect("the lsrtp category");
    lsrtp.set_threshold(gst::DebugLevel::Debug);
    let handler = gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
        let text = msg.get().map(|m| m.to_string()).unwrap_or_default();
        if cat.name() == "lsrtp" && text.starts_with("gave up on") {
            sink.lock()
                .unwrap()
                .push((text, msg.id().map(|id| id.to_string())));
        }
    });
    let (out, stats) = play_recording_output(proxy.port, 100, 400);
    gst::log::remove_log_function(handler);
    lsrtp.set_threshold(gst::DebugLevel::None);
    let dropped = dropped.lock().unwrap().clone();
    // Every gap in the output is one packet the proxy dropped, and the packet after it is
    // DISCONT; everything else is in sequence and not DISCONT.
    let mut gaps = 0;
    for w in out.windows(2) {
        let ((a, _, left_a), (b, discont, left_b)) = (w[0], w[1]);
        if b == a.wrapping_add(1) {
            assert!(!discont, "{b} is DISCONT without a gap before it");
        } else {
            assert_eq!(b, a.wrapping_add(2), "gap of more than one after {a}");
            assert!(
                dropped.contains(&a.wrapping_add(1)),
                "{} was not dropped",
                a.wrapping_add(1)
            );
            assert!(discont, "{b} follows a gap but is not DISCONT");
            // The gap was waited for (the missing packet might have come late) for the
            // latency, 100 ms, and not much longer.
            let waited = left_b - left_a;
            assert!(
                (Duration::from_millis(90)..Duration::from_millis(500)).contains(&waited),
                "{b} left {waited:?} after {a}"
            );
            gaps += 1;
        }
    }
    assert!(gaps >= 10, "only {gaps} gaps in {} packets", out.len());
    // Each gap given up is one debug line naming the element and pad, the count and the wait.
    let gave_up = gave_up.lock().unwrap().clone();
    assert!(gave_up.len() >= gaps as usize, "{gave_up:?}");
    for (text, id) in &gave_up {
        assert!(
            text.contains("1 packet(s)") && text.contains("latency 100ms"),
            "{text}"
        );
        assert!(
            id.as_deref().is_some_and(|id| id.ends_with(":stream_0")),
            "{id:?}"
        );
    }
    let streams = stats.get::<gst::Array>("streams").unwrap();
    let s = streams[0].get::<gst::Structure>().unwrap();
    assert!(s.get::<i64>("packets-lost").unwrap() >= gaps, "{s}");
}

#[test]
fn falls_back_to_tcp_when_udp_yields_nothing() {
    let server = ServerPipeline::start("", &av_source(false));
    let proxy = ClientPortProxy::blackhole(server.port);
    init();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location=rtsp://127.0.0.1:{}/ protocols=udp+tcp timeout=1000000 \
         ! rtph264depay ! h264parse ! avdec_h264 ! fakesink num-buffers=30",
        proxy.port
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    assert_ours(&pipeline.by_name("src").unwrap());
    let started = Instant::now();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let mut fell_back = false;
    let mut eos = false;
    while !eos {
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(20),
                &[
                    gst::MessageType::Element,
                    gst::MessageType::Eos,
                    gst::MessageType::Error,
                ],
            )
            .expect("EOS within 20 s");
        match msg.view() {
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "rtspsrc2-fallback"
                {
                    assert_eq!(s.get::<&str>("to").unwrap(), "tcp");
                    fell_back = true;
                }
            }
            gst::MessageView::Eos(_) => eos = true,
            gst::MessageView::Error(e) => panic!("{} {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(fell_back, "no fallback message");
    // One 1 s UDP timeout, then TCP: well under the 20 s bound.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Starts `rtspsrc2 location=URL ! fakesink` playing and waits for its first buffer.
fn playing_client(url: &str, protocols: &str) -> (gst::Pipeline, gst::Element) {
    init();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location={url} protocols={protocols} ! fakesink name=out signal-handoffs=true"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap();
    assert_ours(&src);
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    pipeline
        .by_name("out")
        .unwrap()
        .connect("handoff", false, move |_| {
            let _ = tx.try_send(());
            None
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("first buffer");
    (pipeline, src)
}

/// The `playing` flag of the server's only session.
fn server_session_playing(server: &ServerPipeline) -> Option<bool> {
    let stats = server.stats();
    let clients = stats.get::<gst::Array>("clients").unwrap();
    clients.first().map(|c| {
        c.get::<gst::Structure>()
            .unwrap()
            .get::<bool>("playing")
            .unwrap()
    })
}

#[test]
fn paused_sends_pause_and_playing_resumes() {
    let server = ServerPipeline::start("", &av_source(false));
    let (pipeline, _src) = playing_client(&server.url("/"), "tcp");
    assert_eq!(server_session_playing(&server), Some(true));
    // The state changes send PAUSE and PLAY without waiting for their answers.
    let session_playing = |playing| {
        common::hls::wait_for(Duration::from_secs(5), || {
            server_session_playing(&server) == Some(playing)
        })
    };
    pipeline.set_state(gst::State::Paused).unwrap();
    assert!(session_playing(false), "the server's session still plays");
    pipeline.set_state(gst::State::Playing).unwrap();
    assert!(session_playing(true), "the server's session does not play");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Asks the server for `session-timeout` through the `get-parameter` action signal; the reply
/// must be a 200.
fn get_session_timeout(src: &gst::Element) -> gst::Structure {
    let promise = gst::Promise::new();
    let sent = src.emit_by_name::<bool>(
        "get-parameter",
        &[&"session-timeout", &"text/parameters", &promise],
    );
    assert!(sent);
    assert_eq!(promise.wait(), gst::PromiseResult::Replied);
    let reply = promise.get_reply().unwrap().to_owned();
    assert_eq!(reply.get::<i32>("rtsp-result").unwrap(), 200, "{reply}");
    reply
}

#[test]
fn get_and_set_parameter_action_signals() {
    let server = ServerPipeline::start("", &av_source(false));
    let (pipeline, src) = playing_client(&server.url("/"), "tcp");
    let reply = get_session_timeout(&src);
    assert!(
        reply
            .get::<&str>("body")
            .unwrap()
            .contains("session-timeout: 60"),
        "{reply}"
    );

    let promise = gst::Promise::new();
    let sent = src.emit_by_name::<bool>(
        "set-parameter",
        &[&"brightness", &"11", &"text/parameters", &promise],
    );
    assert!(sent);
    assert_eq!(promise.wait(), gst::PromiseResult::Replied);
    let reply = promise.get_reply().unwrap().to_owned();
    // rtspserversink has no settable parameter: 451 Parameter Not Understood.
    assert_eq!(reply.get::<i32>("rtsp-result").unwrap(), 451, "{reply}");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Over TCP a single stream is pushed on the connection's reader thread. Downstream holding
/// that thread (a blocking probe here, a paused sink or a full queue in real life) must not
/// hold up the answers the connection carries: a GET_PARAMETER made meanwhile is answered at
/// once, not after tcp-timeout (20 s), and the stream goes on, in order, once let go.
#[test]
fn requests_are_answered_while_downstream_blocks_the_tcp_reader() {
    let server = ServerPipeline::start("", &av_source(false));
    let (pipeline, src) = playing_client(&server.url("/"), "tcp");
    let pad = src.src_pads().into_iter().next().unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let probe = pad
        .add_probe(
            gst::PadProbeType::BLOCK | gst::PadProbeType::DATA_DOWNSTREAM,
            move |_, _| {
                let _ = held_tx.try_send(());
                gst::PadProbeReturn::Ok
            },
        )
        .unwrap();
    held_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the probe never blocked");
    let started = Instant::now();
    get_session_timeout(&src);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    // Let go: the stream goes on without a gap being reported downstream.
    let (seq_tx, seq_rx) = std::sync::mpsc::channel::<u16>();
    let seq = move |b: &gst::BufferRef| {
        let map = b.map_readable().unwrap();
        let _ = seq_tx.send(u16::from_be_bytes([map[2], map[3]]));
    };
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, info| {
            match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => seq(b),
                Some(gst::PadProbeData::BufferList(l)) => l.iter().for_each(&seq),
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
    pad.remove_probe(probe);
    let seqs: Vec<u16> = (0..60)
        .map(|_| {
            seq_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("stream stopped")
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "{seqs:?}"
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn reconnects_when_the_server_restarts() {
    let first = ServerPipeline::start("", &av_source(false));
    let port = first.port;
    let url = first.url("/");
    init();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location={url} protocols=tcp reconnect-initial-delay=200 \
         ! fakesink name=out signal-handoffs=true"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let buffers = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = buffers.clone();
    pipeline
        .by_name("out")
        .unwrap()
        .connect("handoff", false, move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    let wait_for = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while buffers.load(std::sync::atomic::Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "stuck at {buffers:?} buffers");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(20);

    // The server goes away and comes back on the same port.
    drop(first);
    let second = ServerPipeline::start(&format!("port={port}"), &av_source(false));
    assert_eq!(second.port, port);
    let before = buffers.load(std::sync::atomic::Ordering::Relaxed);
    wait_for(before + 50);

    // Each attempt and the success were announced; no error.
    let bus = pipeline.bus().unwrap();
    let mut attempts = 0;
    let mut reconnected = false;
    while let Some(msg) = bus.pop() {
        match msg.view() {
            gst::MessageView::Element(e) => match e.structure().map(|s| s.name().as_str()) {
                Some("rtspsrc2-reconnect") => attempts += 1,
                Some("rtspsrc2-reconnected") => reconnected = true,
                _ => {}
            },
            gst::MessageView::Error(e) => panic!("{} {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
    assert!(attempts >= 1);
    assert!(reconnected);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn follows_a_redirect_from_the_server() {
    let a = ServerPipeline::start("", &av_source(false));
    let b = ServerPipeline::start("mount-point=/moved", &av_source(false));
    let (pipeline, _src) = playing_client(&a.url("/"), "tcp");
    let told = a.sink.emit_by_name::<u32>("redirect", &[&b.url("/moved")]);
    assert_eq!(told, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server_session_playing(&b) != Some(true) {
        assert!(
            Instant::now() < deadline,
            "never reached the redirect target"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old session was torn down.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server_session_playing(&a).is_some() {
        assert!(
            Instant::now() < deadline,
            "the first session was not torn down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

/// rtspserversink ANNOUNCEs a new SDP when its input changes format; rtspsrc2 puts the new
/// codec parameters on its pad (depayloaders and decoders see the new sprop-parameter-sets).
#[test]
fn an_announced_description_updates_the_pad_caps() {
    let server = ServerPipeline::start(
        "",
        "videotestsrc is-live=true ! capsfilter name=size \
           caps=video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! sink.",
    );
    let (pipeline, src) = playing_client(&server.url("/"), "tcp");
    let sprop = || {
        src.static_pad("stream_0")
            .and_then(|p| p.current_caps())
            .and_then(|c| {
                c.structure(0)
                    .and_then(|s| s.get::<String>("sprop-parameter-sets").ok())
            })
    };
    let before = sprop().expect("sprop-parameter-sets from DESCRIBE");
    server.pipeline.by_name("size").unwrap().set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("width", 640i32)
            .field("height", 480i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .field("format", "I420")
            .build(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        if let Some(now) = sprop()
            && now != before
        {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the caps still carry {before} 15 s after the format changed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The new parameter sets are what a new client is described.
    let mut c = RawClient::connect(server.port);
    let sdp = c
        .request(
            "DESCRIBE",
            &server.url("/"),
            &[("Accept", "application/sdp")],
            "",
        )
        .body;
    let sdp = String::from_utf8_lossy(&sdp).into_owned();
    assert!(sdp.contains(&after), "{after} not in {sdp}");
    if let Some(msg) = pipeline
        .bus()
        .unwrap()
        .pop_filtered(&[gst::MessageType::Error])
    {
        panic!("{msg:?}");
    }
    pipeline.set_state(gst::State::Null).unwrap();
}
