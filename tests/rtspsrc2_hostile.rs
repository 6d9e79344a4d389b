//! rtspsrc2 against a hostile RTSP server: a scripted peer that answers with garbage, wrong
//! CSeqs, missing headers, broken SDP, oversized messages and bad RTP. Each case must end in a
//! clear error (or a counted drop) within a bounded time: never a panic, never a hang. No real
//! server misbehaves on purpose, so this peer is ours.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream=0\r\n";

/// What the script answers to one request: raw bytes to send (None: say nothing).
type Script = fn(method: &str, cseq: &str) -> Option<Vec<u8>>;

fn ok(cseq: &str, extra: &str, body: &str) -> Vec<u8> {
    let len = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}{len}\r\n{body}").into_bytes()
}

/// A well-behaved answer for every method (TCP interleaved), used around the broken part.
fn normal(method: &str, cseq: &str) -> Vec<u8> {
    match method {
        "OPTIONS" => ok(
            cseq,
            "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n",
            "",
        ),
        "DESCRIBE" => ok(cseq, "Content-Type: application/sdp\r\n", SDP),
        "SETUP" => ok(
            cseq,
            "Session: 12345678;timeout=60\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
            "",
        ),
        _ => ok(cseq, "Session: 12345678\r\n", ""),
    }
}

/// Serves connections with `script` until dropped; returns the port. After PLAY it also sends
/// `after_play` on the connection.
fn hostile_server(script: Script, after_play: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || serve(conn, script, after_play));
        }
    });
    port
}

fn serve(mut conn: TcpStream, script: Script, after_play: &'static [u8]) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            let text = String::from_utf8_lossy(&head);
            if text.starts_with('$') {
                continue; // interleaved RTCP from the client
            }
            let method = text.split_whitespace().next().unwrap_or("").to_owned();
            let cseq = text
                .lines()
                .find_map(|l| l.strip_prefix("CSeq:"))
                .unwrap_or("0")
                .trim()
                .to_owned();
            if let Some(answer) = script(&method, &cseq) {
                let _ = conn.write_all(&answer);
            }
            if method == "PLAY" && !after_play.is_empty() {
                let _ = conn.write_all(after_play);
            }
        }
    }
}

/// Runs rtspsrc2 against the hostile server and returns the error it posts (bounded).
fn expect_error(port: u16, within: Duration) -> String {
    init();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location=rtsp://127.0.0.1:{port}/ protocols=tcp tcp-timeout=1000000 \
         reconnect-attempts=0 ! fakesink"
    ))
    .unwrap();
    assert_ours(
        &pipeline
            .downcast_ref::<gst::Bin>()
            .unwrap()
            .by_name("src")
            .unwrap(),
    );
    let started = Instant::now();
    let _ = pipeline.set_state(gst::State::Playing);
    let bus = pipeline.bus().unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(within.as_nanos() as u64),
        &[gst::MessageType::Error],
    );
    let text = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(e)) => e.error().to_string(),
        _ => panic!("no error within {within:?}"),
    };
    let t = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        t.elapsed()
    );
    assert!(started.elapsed() < within + Duration::from_secs(5));
    text
}

#[test]
fn garbled_responses_time_out_with_a_clear_error() {
    let port = hostile_server(|_, _| Some(b"HELLO THERE\r\nfoo\r\n\r\n".to_vec()), b"");
    let err = expect_error(port, Duration::from_secs(10));
    assert!(err.contains("no response to"), "{err}");
}

#[test]
fn responses_with_the_wrong_cseq_answer_nothing() {
    let port = hostile_server(|m, _| Some(normal(m, "999")), b"");
    let err = expect_error(port, Duration::from_secs(10));
    assert!(err.contains("no response to"), "{err}");
}

#[test]
fn setup_without_session_is_an_error() {
    let port = hostile_server(
        |m, c| {
            Some(match m {
                "SETUP" => ok(c, "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n", ""),
                _ => normal(m, c),
            })
        },
        b"",
    );
    let err = expect_error(port, Duration::from_secs(10));
    assert!(err.contains("without Session"), "{err}");
}

#[test]
fn bad_sdp_is_an_error() {
    let port = hostile_server(
        |m, c| {
            Some(match m {
                "DESCRIBE" => ok(
                    c,
                    "Content-Type: application/sdp\r\n",
                    "this is not SDP at all",
                ),
                _ => normal(m, c),
            })
        },
        b"",
    );
    let err = expect_error(port, Duration::from_secs(10));
    assert!(err.contains("SDP"), "{err}");
}

#[test]
fn oversized_responses_end_the_connection_with_an_error() {
    let port = hostile_server(
        |m, c| {
            Some(match m {
                "DESCRIBE" => {
                    format!("RTSP/1.0 200 OK\r\nCSeq: {c}\r\nContent-Length: 999999999\r\n\r\nv=0")
                        .into_bytes()
                }
                _ => normal(m, c),
            })
        },
        b"",
    );
    let err = expect_error(port, Duration::from_secs(10));
    assert!(err.contains("DESCRIBE") || err.contains("closed"), "{err}");
}

#[test]
fn a_silent_server_times_out() {
    let port = hostile_server(|_, _| None, b"");
    let err = expect_error(port, Duration::from_secs(10));
    assert!(err.contains("no response to"), "{err}");
}

#[test]
fn invalid_rtp_is_dropped_and_counted() {
    // After PLAY: an interleaved "RTP" packet with version 0, then one that is too short.
    let port = hostile_server(
        |m, c| Some(normal(m, c)),
        b"$\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00$\x00\x00\x02\x80\x60",
    );
    let (pipeline, src) = play_tcp(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream_stat(&src, "invalid-packets") != 2 {
        assert!(
            Instant::now() < deadline,
            "{}",
            src.property::<gst::Structure>("stats")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And no error: bad packets are not fatal.
    let bus = pipeline.bus().unwrap();
    assert!(bus.pop_filtered(&[gst::MessageType::Error]).is_none());
    pipeline.set_state(gst::State::Null).unwrap();
}

/// rtspsrc2 (ours) playing the scripted server on `port` over TCP into a fakesink.
fn play_tcp(port: u16) -> (gst::Pipeline, gst::Element) {
    init();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location=rtsp://127.0.0.1:{port}/ protocols=tcp ! fakesink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap();
    assert_ours(&src);
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, src)
}

/// The first stream's figure `field`.
fn stream_stat(src: &gst::Element, field: &str) -> u64 {
    src.property::<gst::Structure>("stats")
        .get::<gst::Array>("streams")
        .unwrap()
        .first()
        .and_then(|s| s.get::<gst::Structure>().ok())
        .map_or(0, |s| s.get::<u64>(field).unwrap())
}

#[test]
fn rtp_with_another_payload_type_is_dropped_and_counted() {
    // After PLAY: RTP with payload type 33 (the description says 96), then three with 96 (a
    // new source counts once two came in sequence, RFC 3550 A.1).
    let port = hostile_server(
        |m, c| Some(normal(m, c)),
        b"$\x00\x00\x10\x80\x21\x00\x01\x00\x00\x00\x01\x00\x00\x00\x07abcd\
          $\x00\x00\x10\x80\x60\x00\x02\x00\x00\x00\x02\x00\x00\x00\x07abcd\
          $\x00\x00\x10\x80\x60\x00\x03\x00\x00\x00\x03\x00\x00\x00\x07abcd\
          $\x00\x00\x10\x80\x60\x00\x04\x00\x00\x00\x04\x00\x00\x00\x07abcd",
    );
    let (pipeline, src) = play_tcp(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream_stat(&src, "packets-received") < 1 {
        assert!(
            Instant::now() < deadline,
            "{}",
            src.property::<gst::Structure>("stats")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stream_stat(&src, "packets-unknown-payload"), 1);
    assert_eq!(stream_stat(&src, "invalid-packets"), 0);
    let bus = pipeline.bus().unwrap();
    assert!(bus.pop_filtered(&[gst::MessageType::Error]).is_none());
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn a_stream_of_unknown_format_gets_no_pad_and_a_warning() {
    // Video H.264, and audio with dynamic payload type 99 but no a=rtpmap.
    let port = hostile_server(
        |m, c| {
            Some(match m {
                "DESCRIBE" => ok(
                    c,
                    "Content-Type: application/sdp\r\n",
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                     m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream=0\r\n\
                     m=audio 0 RTP/AVP 99\r\na=control:stream=1\r\n",
                ),
                _ => normal(m, c),
            })
        },
        b"",
    );
    let (pipeline, src) = play_tcp(port);
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(10),
            &[gst::MessageType::Warning, gst::MessageType::Error],
        )
        .expect("a warning within 10 s");
    let gst::MessageView::Warning(w) = msg.view() else {
        panic!("{msg:?}");
    };
    let text = w.error().to_string();
    // The known stream's pad follows the warning.
    let deadline = Instant::now() + Duration::from_secs(5);
    while src.src_pads().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pads: Vec<String> = src
        .src_pads()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        text.contains("payload type 99") && text.contains("rtpmap"),
        "{text}"
    );
    assert_eq!(pads, ["stream_0"]);
}

#[test]
fn a_description_of_unknown_formats_only_is_an_error() {
    let port = hostile_server(
        |m, c| {
            Some(match m {
                "DESCRIBE" => ok(
                    c,
                    "Content-Type: application/sdp\r\n",
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                     m=video 0 RTP/AVP 99\r\na=control:stream=0\r\n",
                ),
                _ => normal(m, c),
            })
        },
        b"",
    );
    let err = expect_error(port, Duration::from_secs(10));
    assert!(err.contains("known format"), "{err}");
}

/// Answers everything but PAUSE, which it leaves unanswered.
fn never_answers_pause(method: &str, cseq: &str) -> Option<Vec<u8>> {
    (method != "PAUSE").then(|| normal(method, cseq))
}

#[test]
fn pausing_does_not_wait_for_the_servers_answer() {
    init();
    let port = hostile_server(never_answers_pause, b"");
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location=rtsp://127.0.0.1:{port}/ protocols=tcp tcp-timeout=10000000 \
         teardown-timeout=1000000000 reconnect-attempts=0 ! fakesink"
    ))
    .unwrap();
    let src = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("src")
        .unwrap();
    assert_ours(&src);
    pipeline.set_state(gst::State::Playing).unwrap();
    // Playing once the pad is there (the session is set up and PLAY answered).
    let deadline = Instant::now() + Duration::from_secs(10);
    while src.src_pads().is_empty() {
        assert!(Instant::now() < deadline, "no pad");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    pipeline.set_state(gst::State::Paused).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "PLAYING->PAUSED took {:?} (the server never answers PAUSE; tcp-timeout is 10 s)",
        t.elapsed()
    );
    // Stopping waits for TEARDOWN no longer than teardown-timeout, even behind the PAUSE.
    let t = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stopping took {:?}",
        t.elapsed()
    );
}

/// Plays the scripted server on `port` over TCP until `want` buffers reached the sink (at most
/// 10 s); returns their PTS. Asserts that no error was posted.
fn sink_pts(port: u16, want: usize) -> Vec<Option<gst::ClockTime>> {
    init();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location=rtsp://127.0.0.1:{port}/ protocols=tcp ! \
         fakesink name=sink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    assert_ours(&pipeline.by_name("src").unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe_seen = seen.clone();
    pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, info| {
                let mut seen = probe_seen.lock().unwrap();
                match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => seen.push(b.pts()),
                    Some(gst::PadProbeData::BufferList(l)) => {
                        seen.extend(l.iter().map(|b| b.pts()))
                    }
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let error = pipeline
        .bus()
        .unwrap()
        .pop_filtered(&[gst::MessageType::Error]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(error.is_none(), "{error:?}");
    seen.lock().unwrap().clone()
}

/// `n` interleaved RTP packets (channel 0, payload type 96, sequence 0..n) with the RTP
/// timestamps `ts(i)`.
fn interleaved_rtp(n: u16, ts: impl Fn(u16) -> u32) -> &'static [u8] {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(b"$\x00\x00\x10\x80\x60");
        out.extend_from_slice(&i.to_be_bytes());
        out.extend_from_slice(&ts(i).to_be_bytes());
        out.extend_from_slice(b"\x00\x00\x00\x07abcd");
    }
    Box::leak(out.into_boxed_slice())
}

#[test]
fn hostile_rtp_timestamp_jumps_at_a_1_hz_clock_never_panic() {
    // A 1 Hz RTP clock, and every packet 2^31 - 1 ticks (68 years) after the previous one, the
    // last ones exactly 2^31 (the ambiguous half): ticks * 10^9 in u64 overflowed after a few.
    let port = hostile_server(
        |m, c| {
            Some(match m {
                "DESCRIBE" => ok(
                    c,
                    "Content-Type: application/sdp\r\n",
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                     m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/1\r\na=control:stream=0\r\n",
                ),
                _ => normal(m, c),
            })
        },
        interleaved_rtp(24, |i| {
            let i = u32::from(i);
            if i < 20 {
                i.wrapping_mul((1 << 31) - 1)
            } else {
                (i - 20).wrapping_mul(1 << 31)
            }
        }),
    );
    let pts = sink_pts(port, 24);
    assert_eq!(pts.len(), 24, "{pts:?}");
    // Every buffer has a time, and a sane one: the timeline starts anew at each jump.
    assert!(
        pts.iter()
            .all(|t| t.is_some_and(|t| t < gst::ClockTime::from_seconds(3600))),
        "{pts:?}"
    );
}

#[test]
fn an_sdp_range_beyond_any_clock_time_is_ignored() {
    // `a=range:npt=0-1e300` once made a clock time of 10^300 s (a panic on the client's thread).
    let port = hostile_server(
        |m, c| {
            Some(match m {
                "DESCRIBE" => ok(
                    c,
                    "Content-Type: application/sdp\r\n",
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                     a=range:npt=0-1e300\r\n\
                     m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream=0\r\n",
                ),
                _ => normal(m, c),
            })
        },
        interleaved_rtp(3, |i| 1000 + 3000 * u32::from(i)),
    );
    let pts = sink_pts(port, 3);
    assert_eq!(pts.len(), 3, "{pts:?}");
}

/// An SDP with `n` H.264 media.
fn many_media(n: usize) -> String {
    let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n");
    for i in 0..n {
        sdp.push_str(&format!(
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream={i}\r\n"
        ));
    }
    sdp
}

#[test]
fn a_description_of_200_streams_is_refused_with_the_count_and_the_limit() {
    // 200 media would need interleaved channels up to 399: before the cap, channel numbers
    // overflowed (a panic in debug builds, clashing channels in release).
    let port = hostile_server(
        |m, c| {
            Some(match m {
                "DESCRIBE" => ok(c, "Content-Type: application/sdp\r\n", &many_media(200)),
                "SETUP" => ok(
                    c,
                    "Session: 12345678;timeout=60\r\nTransport: RTP/AVP/TCP;unicast\r\n",
                    "",
                ),
                _ => normal(m, c),
            })
        },
        b"",
    );
    let err = expect_error(port, Duration::from_secs(10));
    assert!(
        err.contains("200 streams") && err.contains("16") && err.contains("max-streams"),
        "{err}"
    );
}

#[test]
fn max_streams_admits_up_to_its_value() {
    init();
    let port = hostile_server(
        |m, c| {
            Some(match m {
                "DESCRIBE" => ok(c, "Content-Type: application/sdp\r\n", &many_media(20)),
                _ => normal(m, c),
            })
        },
        b"",
    );
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc2 name=src location=rtsp://127.0.0.1:{port}/ protocols=tcp max-streams=20 \
         reconnect-attempts=0 ! fakesink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap();
    assert_eq!(src.property::<u32>("max-streams"), 20);
    pipeline.set_state(gst::State::Playing).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while src.src_pads().len() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pads = src.src_pads().len();
    let error = pipeline
        .bus()
        .unwrap()
        .pop_filtered(&[gst::MessageType::Error]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(error.is_none(), "{error:?}");
    assert_eq!(pads, 20);
}

#[test]
fn a_sustained_change_of_the_senders_ssrc_is_logged_once_and_a_lone_spoofed_packet_not_at_all() {
    // Six packets of SSRC 7, one of SSRC 9 with a far sequence number and timestamp (spoofed),
    // then twenty of SSRC 8 continuing the sequence: a real change, followed after a few packets
    // in sequence (none of them lost); the spoofed one is dropped, nothing restarts.
    let mut packets = interleaved_rtp(27, |i| 1000 + 3000 * u32::from(i)).to_vec();
    // Each interleaved packet is 4 + 16 bytes: sequence at 4 + 2, timestamp at 4 + 4, SSRC at
    // 4 + 8.
    let spoofed = &mut packets[6 * 20..7 * 20];
    spoofed[6..8].copy_from_slice(&40000u16.to_be_bytes());
    spoofed[8..12].copy_from_slice(&0x8000_0000u32.to_be_bytes());
    spoofed[15] = 9;
    for i in 7..27 {
        packets[i * 20 + 15] = 8;
    }
    let packets: &'static [u8] = Box::leak(packets.into_boxed_slice());
    let port = hostile_server(|m, c| Some(normal(m, c)), packets);
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let sink = seen.clone();
    init();
    let lsrtp = gst::DebugCategory::get("lsrtp").expect("the lsrtp category");
    lsrtp.set_threshold(gst::DebugLevel::Debug);
    let handler = gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
        let text = msg.get().map(|m| m.to_string()).unwrap_or_default();
        if cat.name() == "lsrtp" && (text.contains("SSRC changed") || text.contains("restart")) {
            sink.lock().unwrap().push(text);
        }
    });
    let pts = sink_pts(port, 26);
    gst::log::remove_log_function(handler);
    lsrtp.set_threshold(gst::DebugLevel::None);
    assert_eq!(pts.len(), 26, "{pts:?}");
    // One timeline: 1/30 s apart (the missing packet's place left empty).
    let ns: Vec<u64> = pts.iter().map(|t| t.expect("a time").nseconds()).collect();
    for (i, w) in ns.windows(2).enumerate() {
        let step = if i == 5 { 2 } else { 1 };
        assert!(
            (w[1] - w[0]).abs_diff(step * 1_000_000_000 / 30) <= 1,
            "{ns:?}"
        );
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["stream 0: the sender's SSRC changed from 00000007 to 00000008"],
        "{seen:?}"
    );
}
