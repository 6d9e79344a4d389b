//! rtspserversink's RTSP behaviour on the wire: every method, status codes for bad input (each
//! followed by a check that another client still plays), sessions, RTCP, REDIRECT, errors.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

/// After a bad request: a fresh client still gets the stream.
fn assert_still_serving(server: &ServerPipeline) {
    let mut c = RawClient::connect(server.port);
    c.play_tcp(&server.url("/"));
    assert_eq!(c.read_interleaved(0, 3).len(), 3);
}

#[test]
fn options_lists_the_methods() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let r = c.request("OPTIONS", "*", &[], "");
    assert_eq!(r.status, 200);
    let public = r.header("Public").unwrap();
    for m in [
        "OPTIONS",
        "DESCRIBE",
        "SETUP",
        "PLAY",
        "PAUSE",
        "TEARDOWN",
        "GET_PARAMETER",
        "SET_PARAMETER",
    ] {
        assert!(public.contains(m), "{m} missing from Public: {public}");
    }
}

#[test]
fn describe_answers_sdp_with_codec_parameters() {
    let server = ServerPipeline::start("", &av_source(true));
    let mut c = RawClient::connect(server.port);
    let url = server.url("/");
    let r = c.request("DESCRIBE", &url, &[("Accept", "application/sdp")], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/sdp"));
    assert!(r.header("Content-Base").unwrap().ends_with('/'));
    let sdp = String::from_utf8(r.body).unwrap();
    assert!(sdp.starts_with("v=0"), "{sdp}");
    assert!(sdp.contains("m=video 0 RTP/AVP 96"), "{sdp}");
    assert!(sdp.contains("a=rtpmap:96 H264/90000"), "{sdp}");
    assert!(sdp.contains("sprop-parameter-sets="), "{sdp}");
    assert!(sdp.contains("packetization-mode=1"), "{sdp}");
    assert!(sdp.contains("m=audio 0 RTP/AVP 97"), "{sdp}");
    assert!(sdp.contains("a=rtpmap:97 OPUS/48000/2"), "{sdp}");
    assert!(sdp.contains("a=control:stream=0"), "{sdp}");
    assert!(sdp.contains("a=control:stream=1"), "{sdp}");
    assert!(sdp.contains("a=range:npt=now-"), "{sdp}");
}

#[test]
fn setup_udp_answers_server_ports_and_play_answers_rtp_info() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let url = server.url("/");
    assert_eq!(c.request("DESCRIBE", &url, &[], "").status, 200);
    let r = c.request(
        "SETUP",
        &format!("{url}stream=0"),
        &[("Transport", "RTP/AVP;unicast;client_port=40000-40001")],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let transport = r.header("Transport").unwrap();
    assert!(transport.contains("client_port=40000-40001"), "{transport}");
    assert!(transport.contains("server_port="), "{transport}");
    let session_header = r.header("Session").unwrap();
    assert!(session_header.ends_with(";timeout=60"), "{session_header}");
    let session = r.session().unwrap();
    let r = c.request("PLAY", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Range"), Some("npt=now-"));
    let info = r.header("RTP-Info").unwrap();
    assert!(info.contains("stream=0;seq="), "{info}");
    assert!(info.contains(";rtptime="), "{info}");
    let r = c.request("TEARDOWN", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 200);
}

#[test]
fn malformed_request_gets_400_with_cseq_and_the_connection_goes_on() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    c.send_raw(b"THIS IS NOT RTSP\r\nCSeq: 42\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("CSeq"), Some("42"));
    // The same connection still works.
    let r = c.request("OPTIONS", "*", &[], "");
    assert_eq!(r.status, 200);
    assert_still_serving(&server);
}

#[test]
fn unknown_method_gets_501_and_client_only_methods_405() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let r = c.request("FLY", &server.url("/"), &[], "");
    assert_eq!(r.status, 501);
    let r = c.request("RECORD", &server.url("/"), &[], "");
    assert_eq!(r.status, 405);
    assert!(r.header("Allow").is_some());
    assert_still_serving(&server);
}

#[test]
fn unknown_mount_gets_404() {
    let server = ServerPipeline::start("mount-point=/cam", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let r = c.request("DESCRIBE", &server.url("/nope"), &[], "");
    assert_eq!(r.status, 404);
    let r = c.request(
        "SETUP",
        &server.url("/cam/stream=7"),
        &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        "",
    );
    assert_eq!(r.status, 404);
    let mut ok = RawClient::connect(server.port);
    ok.play_tcp(&server.url("/cam"));
    assert_eq!(ok.read_interleaved(0, 3).len(), 3);
}

#[test]
fn wrong_session_gets_454() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let url = server.url("/");
    let r = c.request("PLAY", &url, &[("Session", "doesnotexist")], "");
    assert_eq!(r.status, 454);
    let r = c.request("PAUSE", &url, &[("Session", "doesnotexist")], "");
    assert_eq!(r.status, 454);
    let r = c.request("GET_PARAMETER", &url, &[("Session", "doesnotexist")], "");
    assert_eq!(r.status, 454);
    assert_still_serving(&server);
}

/// Interleaved channels belong to the connection: a second session on it asking for the same
/// channels gets others, and a frame on a channel no stream uses is ignored and counted.
#[test]
fn sessions_on_one_connection_get_distinct_channels() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let url = format!("{}stream=0", server.url("/"));
    let transport = [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")];
    let channels: Vec<String> = (0..2)
        .map(|_| {
            let r = c.request("SETUP", &url, &transport, "");
            assert_eq!(r.status, 200, "SETUP: {r:?}");
            let t = r.header("Transport").unwrap();
            t.split(';')
                .find_map(|p| p.strip_prefix("interleaved="))
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(channels, ["0-1", "2-3"]);
    c.send_raw(b"$\x09\x00\x04abcd");
    let r = c.request("OPTIONS", "*", &[], "");
    assert_eq!(r.status, 200);
    let ignored = server.stats().get::<u64>("interleaved-ignored").unwrap();
    assert_eq!(ignored, 1);
}

#[test]
fn unsupported_transport_gets_461() {
    let server = ServerPipeline::start("protocols=tcp", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let url = format!("{}stream=0", server.url("/"));
    let r = c.request(
        "SETUP",
        &url,
        &[("Transport", "RTP/AVP;unicast;client_port=40000-40001")],
        "",
    );
    assert_eq!(r.status, 461);
    let r = c.request("SETUP", &url, &[("Transport", "garbage")], "");
    assert_eq!(r.status, 461);
    let r = c.request("SETUP", &url, &[], "");
    assert_eq!(r.status, 461);
    assert_still_serving(&server);
}

#[test]
fn require_gets_551() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let r = c.request("OPTIONS", "*", &[("Require", "com.example.magic")], "");
    assert_eq!(r.status, 551);
    assert_eq!(r.header("Unsupported"), Some("com.example.magic"));
    assert_still_serving(&server);
}

#[test]
fn oversized_headers_are_refused_and_the_connection_closed() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let mut msg = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n".to_vec();
    for i in 0..2000 {
        msg.extend_from_slice(format!("X-Filler-{i}: aaaaaaaaaaaaaaaaaaaa\r\n").as_bytes());
    }
    // The server may close before it has read everything: ignore write errors.
    let _ = std::io::Write::write_all(&mut c.stream, &msg);
    let r = c.read_response();
    assert_eq!(r.status, 400);
    let mut rest = Vec::new();
    let _ = c.stream.read_to_end(&mut rest);
    assert_still_serving(&server);
}

#[test]
fn oversized_body_gets_413() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    c.send_raw(b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 3\r\nContent-Length: 100000000\r\n\r\nxx");
    let r = c.read_response();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("CSeq"), Some("3"));
    assert_still_serving(&server);
}

#[test]
fn get_and_set_parameter() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let url = server.url("/");
    let (session, _) = c.play_tcp(&url);
    // Keep-alive with an empty body.
    let r = c.request("GET_PARAMETER", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 200);
    // Named parameters are answered.
    let r = c.request(
        "GET_PARAMETER",
        &url,
        &[("Session", &session), ("Content-Type", "text/parameters")],
        "session-timeout\r\nclients\r\n",
    );
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.contains("session-timeout: 60"), "{body}");
    assert!(body.contains("clients: 1"), "{body}");
    let r = c.request(
        "GET_PARAMETER",
        &url,
        &[("Session", &session)],
        "no-such-thing\r\n",
    );
    assert_eq!(r.status, 451);
    let r = c.request("SET_PARAMETER", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 200);
    let r = c.request(
        "SET_PARAMETER",
        &url,
        &[("Session", &session)],
        "brightness: 11\r\n",
    );
    assert_eq!(r.status, 451);
}

#[test]
fn pause_stops_this_client_only_and_play_resumes() {
    let server = ServerPipeline::start("", &av_source(false));
    let url = server.url("/");
    let mut a = RawClient::connect(server.port);
    let (sa, _) = a.play_tcp(&url);
    let mut b = RawClient::connect(server.port);
    b.play_tcp(&url);
    a.read_interleaved(0, 5);
    let r = a.request("PAUSE", &url, &[("Session", &sa)], "");
    assert_eq!(r.status, 200);
    // Drain what was queued before the PAUSE, then nothing more arrives for A...
    a.stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let quiet_since = Instant::now();
    let mut last_data = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(6) {
        match a.stream.read(&mut buf) {
            Ok(0) => panic!("server closed a paused connection"),
            Ok(_) => last_data = Instant::now(),
            Err(_) => break,
        }
    }
    assert!(
        last_data.elapsed() >= Duration::from_millis(1400),
        "still sending after PAUSE"
    );
    // ...while B keeps receiving.
    assert_eq!(b.read_interleaved(0, 30).len(), 30);
    // PLAY resumes A.
    a.stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let r = a.request("PLAY", &url, &[("Session", &sa)], "");
    assert_eq!(r.status, 200);
    assert_eq!(a.read_interleaved(0, 5).len(), 5);
}

#[test]
fn teardown_per_stream_keeps_the_session_and_aggregate_ends_it() {
    let server = ServerPipeline::start("", &av_source(true));
    let url = server.url("/");
    let mut c = RawClient::connect(server.port);
    let (session, streams) = c.play_tcp(&url);
    assert_eq!(streams, 2);
    let r = c.request(
        "TEARDOWN",
        &format!("{url}stream=1"),
        &[("Session", &session)],
        "",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.session().is_some(),
        "per-stream teardown keeps the session"
    );
    let r = c.request("GET_PARAMETER", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 200);
    let r = c.request("TEARDOWN", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 200);
    let r = c.request("GET_PARAMETER", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 454);
}

#[test]
fn sessions_expire_without_keep_alive() {
    let server = ServerPipeline::start("session-timeout=2", &av_source(false));
    let url = server.url("/");
    let mut c = RawClient::connect(server.port);
    let r = c.request(
        "SETUP",
        &format!("{url}stream=0"),
        &[("Transport", "RTP/AVP;unicast;client_port=40010-40011")],
        "",
    );
    assert_eq!(r.status, 200);
    assert!(r.header("Session").unwrap().ends_with(";timeout=2"));
    let session = r.session().unwrap();
    // Keep-alives hold it...
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1000));
        let r = c.request("GET_PARAMETER", &url, &[("Session", &session)], "");
        assert_eq!(r.status, 200);
    }
    // ...silence ends it.
    std::thread::sleep(Duration::from_millis(3500));
    let r = c.request("PLAY", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 454);
    assert!(server.stats().get::<u64>("sessions-timed-out").unwrap() >= 1);
}

#[test]
fn sender_reports_reach_interleaved_clients() {
    use gstlivestreaming::rtp::{ntp, parse_rtp_header, rtcp};

    let server = ServerPipeline::start("rtcp-interval=500", &av_source(false));
    let mut c = RawClient::connect(server.port);
    c.play_tcp(&server.url("/"));
    // Collect RTP until the first SR; remember the last RTP timestamp and how much was sent.
    let (mut packets, mut octets, mut last_ts) = (0u32, 0u32, None);
    let sr = loop {
        match c.read_next() {
            Incoming::Data(0, p) => {
                let h = parse_rtp_header(&p).unwrap();
                packets += 1;
                octets += h.payload_len as u32;
                last_ts = Some(h.timestamp);
            }
            Incoming::Data(1, p) => {
                let parsed = rtcp::parse_compound(&p).expect("valid RTCP compound");
                assert!(
                    matches!(parsed.get(1), Some(rtcp::RtcpPacket::SourceDescription(_))),
                    "SDES follows the SR: {parsed:?}"
                );
                match &parsed[0] {
                    rtcp::RtcpPacket::SenderReport(sr) => break sr.clone(),
                    other => panic!("expected an SR, got {other:?}"),
                }
            }
            _ => {}
        }
    };
    // Counts are what this client was sent (it may arrive just after a packet we have not read).
    assert!(
        sr.packet_count >= packets && sr.packet_count <= packets + 50,
        "{sr:?} vs {packets}"
    );
    assert!(sr.octet_count >= octets, "{sr:?} vs {octets}");
    // The NTP time is now, and the RTP time is close to the last packet's (90 kHz, < 1 s apart).
    let age = std::time::SystemTime::now()
        .duration_since(ntp::ntp_to_system_time(sr.ntp_timestamp))
        .unwrap_or_default();
    assert!(age < Duration::from_secs(2), "SR NTP time is {age:?} old");
    let delta = sr
        .rtp_timestamp
        .wrapping_sub(last_ts.expect("RTP before the SR")) as i32;
    assert!(
        (-90_000..90_000).contains(&delta),
        "SR RTP time {delta} ticks off"
    );
}

/// Frames that reach the sink ever later (identity sleeps 45 ms per 33 ms frame, so each is
/// 12 ms later than the one before) still stand for the instant they were captured at: the
/// Sender Reports' RTP clock keeps pace with their NTP clock. Taken from arrival, as before,
/// the RTP time would fall behind by a quarter of a second every second, and a receiver's
/// lip-sync would move its timeline at each report (rtspsrc2's PTS jumped back 345 ms in a CI
/// run on a loaded machine).
#[test]
fn sender_reports_keep_the_rtp_clock_when_frames_come_late() {
    use gstlivestreaming::rtp::{ntp, rtcp};

    let late = "videotestsrc is-live=true \
        ! video/x-raw,width=160,height=120,framerate=30/1,format=I420 \
        ! identity sleep-time=45000 \
        ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! sink.";
    let server = ServerPipeline::start("rtcp-interval=500", late);
    let mut c = RawClient::connect(server.port);
    c.play_tcp(&server.url("/"));
    let mut reports: Vec<rtcp::SenderReport> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // The first report and one at least 2 s of NTP time after it.
    while reports.len() < 2
        || ntp::ntp_diff_ns(
            reports.last().unwrap().ntp_timestamp,
            reports[0].ntp_timestamp,
        ) < 2_000_000_000
    {
        assert!(
            Instant::now() < deadline,
            "no two reports 2 s apart: {reports:?}"
        );
        if let Incoming::Data(1, p) = c.read_next() {
            let parsed = rtcp::parse_compound(&p).expect("valid RTCP compound");
            if let Some(rtcp::RtcpPacket::SenderReport(sr)) = parsed.first() {
                reports.push(sr.clone());
            }
        }
    }
    let (first, last) = (&reports[0], reports.last().unwrap());
    let ntp_ms = ntp::ntp_diff_ns(last.ntp_timestamp, first.ntp_timestamp) / 1_000_000;
    let rtp_ms = i64::from(last.rtp_timestamp.wrapping_sub(first.rtp_timestamp) as i32) / 90;
    assert!(
        (rtp_ms - ntp_ms).abs() <= 60,
        "between two Sender Reports {ntp_ms} ms of NTP time but {rtp_ms} ms of RTP time: {reports:?}"
    );
}

#[test]
fn receiver_reports_from_rtspsrc_over_udp_show_up_in_stats() {
    receiver_reports_from_rtspsrc("udp");
}

#[test]
fn receiver_reports_from_rtspsrc_over_tcp_show_up_in_stats() {
    receiver_reports_from_rtspsrc("tcp");
}

fn receiver_reports_from_rtspsrc(transport: &'static str) {
    let server = ServerPipeline::start("rtcp-interval=500", &av_source(false));
    let url = server.url("/");
    let t = std::thread::spawn(move || rtspsrc_decode(&url, transport, 200, ""));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        let stats = server.stats();
        let clients = stats.get::<gst::Array>("clients").unwrap();
        seen = clients.iter().any(|c| {
            let c = c.get::<gst::Structure>().unwrap();
            let streams = c.get::<gst::Array>("streams").unwrap();
            c.get::<&str>("transport") == Ok(transport)
                && streams.iter().any(|s| {
                    let s = s.get::<gst::Structure>().unwrap();
                    s.get::<u64>("rtcp-reports").unwrap() > 0
                        && s.get::<f64>("rtt-ms").unwrap() >= 0.0
                        && s.get::<u64>("packets-sent").unwrap() > 0
                })
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(seen, "no receiver report in stats: {}", server.stats());
    assert_eq!(t.join().unwrap(), 200);
}

#[test]
fn redirect_signal_sends_redirect_to_clients() {
    let server = ServerPipeline::start("", &av_source(false));
    let mut c = RawClient::connect(server.port);
    let (session, _) = c.play_tcp(&server.url("/"));
    let told = server
        .sink
        .emit_by_name::<u32>("redirect", &[&"rtsp://127.0.0.1:9/elsewhere"]);
    assert_eq!(told, 1);
    // Bounded by the client's read timeout.
    let (start, headers) = c.read_request();
    assert!(start.starts_with("REDIRECT "), "{start}");
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("Location").as_deref(),
        Some("rtsp://127.0.0.1:9/elsewhere")
    );
    assert_eq!(get("Session").as_deref(), Some(session.as_str()));
}

#[test]
fn port_in_use_is_a_clear_error() {
    init();
    let first = ServerPipeline::start("", &av_source(false));
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! x264enc ! rtspserversink name=sink address=127.0.0.1 port={}",
        first.port
    ))
    .unwrap();
    let sink = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap();
    assert_ours(&sink);
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("error message");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    let text = err.error().to_string();
    assert!(text.contains("Could not listen"), "{text}");
    assert!(text.contains(&first.port.to_string()), "{text}");
    let _ = pipeline.set_state(gst::State::Null);
    // The first server is unaffected.
    assert_still_serving(&first);
}

#[test]
fn invalid_property_values_are_clear_errors() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc is-live=true ! x264enc ! rtspserversink name=sink port=0 multicast-address-min=10.0.0.1",
    )
    .unwrap();
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("error message");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    assert!(
        err.error().to_string().contains("multicast"),
        "{}",
        err.error()
    );
    let _ = pipeline.set_state(gst::State::Null);
}

/// Binds an even/odd UDP port pair on loopback, as an RTP client would.
fn client_port_pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
    loop {
        let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rtp.local_addr().unwrap().port();
        if port.is_multiple_of(2)
            && let Ok(rtcp) = std::net::UdpSocket::bind(("127.0.0.1", port + 1))
        {
            return (rtp, rtcp);
        }
    }
}

#[test]
fn receiver_reports_alone_keep_a_udp_session_alive() {
    let server = ServerPipeline::start("session-timeout=2", &av_source(false));
    let url = server.url("/");
    let (rtp_sock, rtcp_sock) = client_port_pair();
    rtp_sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let rtp_port = rtp_sock.local_addr().unwrap().port();
    let mut c = RawClient::connect(server.port);
    assert_eq!(c.request("DESCRIBE", &url, &[], "").status, 200);
    let transport = format!("RTP/AVP;unicast;client_port={}-{}", rtp_port, rtp_port + 1);
    let r = c.request(
        "SETUP",
        &format!("{url}stream=0"),
        &[("Transport", &transport)],
        "",
    );
    assert_eq!(r.status, 200);
    let server_rtcp: u16 = r
        .header("Transport")
        .unwrap()
        .split(';')
        .find_map(|p| p.strip_prefix("server_port="))
        .and_then(|p| p.split('-').nth(1))
        .and_then(|p| p.parse().ok())
        .expect("server_port");
    let session = r.session().unwrap();
    assert_eq!(
        c.request("PLAY", &url, &[("Session", &session)], "").status,
        200
    );

    // Only RTCP from here on: an RR every 500 ms for 5 s (2.5 timeouts).
    let rr = receiver_report();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        rtcp_sock.send_to(&rr, ("127.0.0.1", server_rtcp)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    // Still alive and still sending; the report made it into the stats.
    rtp_sock.recv(&mut buf).expect("RTP still flowing");
    let stats = server.stats();
    assert_eq!(stats.get::<u32>("sessions").unwrap(), 1, "{stats}");
    let client = stats.get::<gst::Array>("clients").unwrap()[0]
        .get::<gst::Structure>()
        .unwrap();
    let stream = client.get::<gst::Array>("streams").unwrap()[0]
        .get::<gst::Structure>()
        .unwrap();
    assert!(stream.get::<u64>("rtcp-reports").unwrap() >= 5, "{stream}");
    assert_eq!(stream.get::<f64>("fraction-lost").unwrap(), 0.25);
    assert_eq!(stream.get::<i64>("cumulative-lost").unwrap(), 7);

    // Silence: the session expires and sending stops.
    std::thread::sleep(Duration::from_millis(3500));
    let stats = server.stats();
    assert_eq!(stats.get::<u32>("sessions").unwrap(), 0, "{stats}");
    assert!(stats.get::<u64>("sessions-timed-out").unwrap() >= 1);
    // Empty what the socket buffered before the expiry, then a whole second must be silent.
    rtp_sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let drain_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < drain_until {
        let _ = rtp_sock.recv(&mut buf);
    }
    rtp_sock
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    assert!(rtp_sock.recv(&mut buf).is_err(), "RTP after expiry");
}

#[test]
fn new_clients_start_at_a_keyframe_requested_from_the_encoder() {
    use gstlivestreaming::rtp::{keyframe::starts_keyframe, parse_rtp_header, rtp_payload};

    // A 20 s GOP: without a force-key-unit request upstream a client would wait that long.
    let server = ServerPipeline::start(
        "",
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=600 ! sink.",
    );
    let url = server.url("/");
    // The first client's join makes the stream go; let it run past the first GOP start.
    let mut first = RawClient::connect(server.port);
    first.play_tcp(&url);
    first.read_interleaved(0, 60);
    for _ in 0..3 {
        let mut c = RawClient::connect(server.port);
        let started = Instant::now();
        c.play_tcp(&url);
        let packet = c.read_interleaved(0, 1).remove(0);
        let header = parse_rtp_header(&packet).unwrap();
        assert!(
            starts_keyframe("H264", rtp_payload(&packet, &header)),
            "first packet is not a keyframe start"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited {:?} for a keyframe",
            started.elapsed()
        );
        // One keyframe request per second at most: space the joins out.
        std::thread::sleep(Duration::from_millis(1100));
    }
}

/// `RTP-Info` of a PLAY answer: (control URL, seq, rtptime) per stream.
fn parse_rtp_info(value: &str) -> Vec<(String, Option<u16>, Option<u32>)> {
    value
        .split(',')
        .map(|entry| {
            let (mut url, mut seq, mut rtptime) = (String::new(), None, None);
            for param in entry.split(';') {
                match param.trim().split_once('=') {
                    Some(("url", v)) => url = v.to_owned(),
                    Some(("seq", v)) => seq = v.parse().ok(),
                    Some(("rtptime", v)) => rtptime = v.parse().ok(),
                    _ => {}
                }
            }
            (url, seq, rtptime)
        })
        .collect()
}

/// DESCRIBE + SETUP of every stream over TCP (stream i on channels 2i, 2i+1); returns the base
/// URL, the session id and the number of streams.
fn setup_tcp(c: &mut RawClient, url: &str) -> (String, String, usize) {
    let d = c.request("DESCRIBE", url, &[], "");
    assert_eq!(d.status, 200, "DESCRIBE: {d:?}");
    let base = d.header("Content-Base").unwrap().to_owned();
    let streams = String::from_utf8_lossy(&d.body)
        .lines()
        .filter(|l| l.starts_with("m="))
        .count();
    let mut session: Option<String> = None;
    for i in 0..streams {
        let transport = format!("RTP/AVP/TCP;unicast;interleaved={}-{}", 2 * i, 2 * i + 1);
        let mut headers = vec![("Transport", transport.as_str())];
        let sess = session.clone().unwrap_or_default();
        if session.is_some() {
            headers.push(("Session", sess.as_str()));
        }
        let r = c.request("SETUP", &format!("{base}stream={i}"), &headers, "");
        assert_eq!(r.status, 200, "SETUP: {r:?}");
        session = r.session();
    }
    (base, session.expect("session"), streams)
}

/// RFC 2326 12.33: the PLAY answer's `seq` and `rtptime` are those of the first packet the client
/// receives. Late joiners of a running stream (1 s GOP, so most joins land mid-GOP and video must
/// wait for a keyframe) check it on every stream, and that no media precedes the answer.
#[test]
fn rtp_info_names_the_first_packet_of_every_late_joiner() {
    use gstlivestreaming::rtp::{keyframe::starts_keyframe, parse_rtp_header, rtp_payload};

    let server = ServerPipeline::start("", &av_source(true));
    let url = server.url("/");
    // Let the stream run: later joins find it mid-GOP.
    let mut first = RawClient::connect(server.port);
    first.play_tcp(&url);
    first.read_interleaved(0, 30);
    drop(first);
    for join in 0..6u64 {
        // Joins 0.25-0.75 s apart: some come within a second of the previous keyframe request
        // (no new request upstream: they wait for the GOP's natural keyframe), some do not.
        std::thread::sleep(Duration::from_millis(250 + 100 * join));
        let mut c = RawClient::connect(server.port);
        let (base, session, streams) = setup_tcp(&mut c, &url);
        assert_eq!(streams, 2);
        c.cseq += 1;
        c.send_raw(
            format!(
                "PLAY {base} RTSP/1.0\r\nCSeq: {}\r\nSession: {session}\r\nRange: npt=0-\r\n\r\n",
                c.cseq
            )
            .as_bytes(),
        );
        let answer = match c.read_next() {
            Incoming::Response(r) => r,
            Incoming::Data(ch, d) => panic!(
                "join {join}: {} bytes of media on channel {ch} before the PLAY answer",
                d.len()
            ),
            Incoming::Request(start, _) => panic!("join {join}: {start} before the PLAY answer"),
        };
        assert_eq!(answer.status, 200, "join {join}: {answer:?}");
        let info = parse_rtp_info(answer.header("RTP-Info").expect("RTP-Info"));
        assert_eq!(info.len(), 2, "join {join}: {info:?}");
        // First packet on each RTP channel (0: video, 2: audio); bounded by the read timeout and a
        // frame count.
        let mut firsts: [Option<Vec<u8>>; 2] = [None, None];
        let mut frames = 0;
        while firsts.iter().any(Option::is_none) {
            frames += 1;
            assert!(frames < 5000, "join {join}: no packet on some stream");
            if let Incoming::Data(ch, data) = c.read_next()
                && ch % 2 == 0
            {
                let slot = &mut firsts[usize::from(ch / 2)];
                if slot.is_none() {
                    *slot = Some(data);
                }
            }
        }
        for (i, packet) in firsts.iter().enumerate() {
            let packet = packet.as_ref().unwrap();
            let h = parse_rtp_header(packet).unwrap();
            let (url, seq, rtptime) = &info[i];
            assert!(url.ends_with(&format!("stream={i}")), "{info:?}");
            assert_eq!(
                (*seq, *rtptime),
                (Some(h.sequence), Some(h.timestamp)),
                "join {join}, stream {i}: RTP-Info {info:?}, first packet seq {} rtptime {}",
                h.sequence,
                h.timestamp
            );
            if i == 0 {
                assert!(
                    starts_keyframe("H264", rtp_payload(packet, &h)),
                    "join {join}: video does not start at a keyframe"
                );
            }
        }
        let r = c.request("TEARDOWN", &base, &[("Session", &session)], "");
        assert_eq!(r.status, 200);
    }
}

/// The same over UDP: the first datagram on the client's RTP port is the one RTP-Info names.
#[test]
fn rtp_info_names_the_first_packet_of_a_late_udp_joiner() {
    use gstlivestreaming::rtp::parse_rtp_header;

    let server = ServerPipeline::start("", &av_source(false));
    let url = server.url("/");
    let mut c = RawClient::connect(server.port);
    assert_eq!(c.request("DESCRIBE", &url, &[], "").status, 200);
    // Mid-GOP.
    std::thread::sleep(Duration::from_millis(1400));
    let (rtp_sock, _rtcp_sock) = client_port_pair();
    rtp_sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = rtp_sock.local_addr().unwrap().port();
    let transport = format!("RTP/AVP;unicast;client_port={}-{}", port, port + 1);
    let r = c.request(
        "SETUP",
        &format!("{url}stream=0"),
        &[("Transport", &transport)],
        "",
    );
    assert_eq!(r.status, 200);
    let session = r.session().unwrap();
    let r = c.request("PLAY", &url, &[("Session", &session)], "");
    assert_eq!(r.status, 200);
    let info = parse_rtp_info(r.header("RTP-Info").unwrap());
    let mut buf = [0u8; 2048];
    let n = rtp_sock.recv(&mut buf).expect("RTP");
    let h = parse_rtp_header(&buf[..n]).unwrap();
    assert_eq!(
        (info[0].1, info[0].2),
        (Some(h.sequence), Some(h.timestamp)),
        "RTP-Info {info:?}"
    );
}

/// Stock rtspsrc joins a running stream (in-process, over TCP) and its jitter buffer, which takes
/// the first expected sequence number from RTP-Info, counts no packet lost; over UDP it decodes.
#[test]
fn stock_rtspsrc_joining_late_counts_no_loss() {
    let server = ServerPipeline::start("", &av_source(true));
    let url = server.url("/");
    let mut c = RawClient::connect(server.port);
    assert_eq!(c.request("DESCRIBE", &url, &[], "").status, 200);
    for (join, wait_ms) in [(0, 1400u64), (1, 600)] {
        // Mid-GOP (1 s GOP).
        std::thread::sleep(Duration::from_millis(wait_ms));
        // rtspsrc's pads are linked by a pad-added handler of our own: gst-launch's delayed
        // links through caps filters race when the two pads come at once from two streaming
        // threads (GStreamer 1.22), leaving one unlinked and the pipeline short of PLAYING.
        let pipeline = gst::parse::launch(&format!(
            "rtspsrc name=src location={url} protocols=tcp latency=200 \
             rtph264depay name=video ! fakesink rtpopusdepay name=audio ! fakesink"
        ))
        .unwrap();
        let bin = pipeline.downcast_ref::<gst::Bin>().unwrap();
        let src = bin.by_name("src").unwrap();
        assert_eq!(
            src.factory().unwrap().plugin_name().as_deref(),
            Some("rtsp"),
            "the stock rtspsrc"
        );
        let depays = [bin.by_name("video").unwrap(), bin.by_name("audio").unwrap()];
        src.connect_pad_added(move |_, pad| {
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let media = caps
                .structure(0)
                .and_then(|s| s.get::<String>("media").ok())
                .unwrap_or_default();
            if let Some(depay) = depays.iter().find(|d| d.name() == media.as_str()) {
                // A failure shows as that stream's jitter buffer pushing nothing.
                if let Err(e) = pad.link(&depay.static_pad("sink").unwrap()) {
                    eprintln!("linking rtspsrc's {media} pad failed: {e:?}");
                }
            }
        });
        let jitterbuffers = std::sync::Arc::new(std::sync::Mutex::new(Vec::<gst::Element>::new()));
        let jbs = jitterbuffers.clone();
        src.connect("new-manager", false, move |args| {
            let manager = args[1].get::<gst::Element>().unwrap();
            let jbs = jbs.clone();
            manager.connect("new-jitterbuffer", false, move |args| {
                jbs.lock()
                    .unwrap()
                    .push(args[1].get::<gst::Element>().unwrap());
                None
            });
            None
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        // Play until both jitter buffers have pushed more than 20 packets (a loaded machine
        // may take seconds to reach PLAYING), bounded by 20 s; an error or EOS fails at once.
        let bus = pipeline.bus().unwrap();
        let pushed_enough = || {
            let jbs = jitterbuffers.lock().unwrap();
            jbs.len() == 2
                && jbs.iter().all(|jb| {
                    let stats = jb.property::<gst::Structure>("stats");
                    stats.get::<u64>("num-pushed").unwrap() > 20
                })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut msg = None;
        while msg.is_none() && !pushed_enough() && std::time::Instant::now() < deadline {
            msg = bus.timed_pop_filtered(
                gst::ClockTime::from_mseconds(200),
                &[gst::MessageType::Error, gst::MessageType::Eos],
            );
        }
        // For a failure's message: where the pipeline and its sinks were.
        let (_, current, pending) = pipeline.state(gst::ClockTime::ZERO);
        let running = pipeline.current_running_time();
        let sinks: Vec<String> = bin
            .iterate_sinks()
            .into_iter()
            .flatten()
            .map(|s| {
                let pts = s
                    .property::<Option<gst::Sample>>("last-sample")
                    .and_then(|x| x.buffer().and_then(|b| b.pts()));
                format!("{} last pts {pts:?}", s.name())
            })
            .collect();
        let where_ = format!(
            "pipeline {current:?} (pending {pending:?}), running time {running:?}, {sinks:?}"
        );
        let _ = pipeline.set_state(gst::State::Null);
        assert!(msg.is_none(), "join {join}: {msg:?}");
        let jbs = jitterbuffers.lock().unwrap();
        assert_eq!(jbs.len(), 2, "join {join}: one jitter buffer per stream");
        let all = || {
            let streams: Vec<String> = jbs
                .iter()
                .map(|jb| format!("{}: {}", jb.name(), jb.property::<gst::Structure>("stats")))
                .collect();
            format!(
                "{}\n{where_}\nserver: {}",
                streams.join("\n"),
                server.sink.property::<gst::Structure>("stats")
            )
        };
        for jb in jbs.iter() {
            let stats = jb.property::<gst::Structure>("stats");
            assert!(
                stats.get::<u64>("num-pushed").unwrap() > 20,
                "join {join}: {}",
                all()
            );
            assert_eq!(
                stats.get::<u64>("num-lost").unwrap(),
                0,
                "join {join}: {stats}"
            );
        }
    }
    assert_eq!(rtspsrc_decode(&url, "udp", 30, ""), 30);
}
