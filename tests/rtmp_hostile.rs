//! rsrtmpsink against servers that misbehave (scripted here on 127.0.0.1) and refusals from
//! nginx-rtmp: each is one clear error within `timeout`, no panic, no hang.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use gst::prelude::*;

use common::rtmp::{Nginx, Publish, av_flv_source, free_port};
use gstlivestreaming::rtmp::amf0::{self, Value};

/// The element's timeout in these tests (seconds) and the slack allowed on top.
const TIMEOUT_S: u64 = 2;
const SLACK: Duration = Duration::from_secs(3);

/// A one-connection server running `behave` on the accepted socket in a thread.
fn hostile(behave: impl FnOnce(TcpStream) + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    behave(s);
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    port
}

/// Plays the server's part of the plain handshake.
fn server_handshake(s: &mut TcpStream) {
    let mut c0c1 = [0u8; 1537];
    s.read_exact(&mut c0c1).unwrap();
    assert_eq!(c0c1[0], 3);
    let mut answer = vec![3u8];
    answer.extend_from_slice(&[0u8; 1536]);
    answer.extend_from_slice(&c0c1[1..]);
    s.write_all(&answer).unwrap();
    let mut c2 = [0u8; 1536];
    s.read_exact(&mut c2).unwrap();
}

/// Reads and discards until the peer closes or `d` passes.
fn drain_for(s: &mut TcpStream, d: Duration) {
    let deadline = Instant::now() + d;
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// Publishes a live stream to `url` and returns the error text and how long it took.
fn publish_error(url: &str, extra: &str) -> (String, gst::Structure, Duration) {
    let start = Instant::now();
    let p = Publish::start(
        &av_flv_source(100_000, false, true),
        &format!("location={url} timeout={TIMEOUT_S} {extra}"),
    );
    let (r, _) = p.wait(Duration::from_secs(TIMEOUT_S) + SLACK + Duration::from_secs(5));
    let elapsed = start.elapsed();
    let err = r.expect_err("an error");
    (err, p.stats(), elapsed)
}

fn assert_within_timeout(elapsed: Duration, err: &str) {
    assert!(
        elapsed < Duration::from_secs(TIMEOUT_S) + SLACK,
        "took {elapsed:?}: {err}"
    );
}

/// A server's answers that accept a publication: connect succeeds, createStream (transaction 4)
/// gives stream 1, publish starts.
fn publication_accepted() -> Vec<u8> {
    let mut answer = command_bytes(&[
        "_result".into(),
        1.0.into(),
        Value::Null,
        amf0::obj(&[("code", "NetConnection.Connect.Success".into())]),
    ]);
    answer.extend(command_bytes(&[
        "_result".into(),
        4.0.into(),
        Value::Null,
        1.0.into(),
    ]));
    answer.extend(command_bytes(&[
        "onStatus".into(),
        0.0.into(),
        Value::Null,
        amf0::obj(&[
            ("level", "status".into()),
            ("code", "NetStream.Publish.Start".into()),
        ]),
    ]));
    answer
}

#[test]
fn connection_refused() {
    let port = free_port();
    let (err, _, elapsed) = publish_error(&format!("rtmp://127.0.0.1:{port}/live/k"), "");
    assert!(
        err.contains("Could not publish to rtmp://127.0.0.1"),
        "{err}"
    );
    assert!(err.contains("refused"), "{err}");
    assert_within_timeout(elapsed, &err);
}

#[test]
fn server_closes_during_handshake() {
    let port = hostile(|mut s| {
        let mut c0 = [0u8; 100];
        let _ = s.read(&mut c0);
        // Gone before S0.
    });
    let (err, _, elapsed) = publish_error(&format!("rtmp://127.0.0.1:{port}/live/k"), "");
    assert!(
        err.contains("closed the connection waiting for the handshake"),
        "{err}"
    );
    assert_within_timeout(elapsed, &err);
}

#[test]
fn server_sends_garbage() {
    let port = hostile(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        drain_for(&mut s, Duration::from_secs(10));
    });
    let (err, _, elapsed) = publish_error(&format!("rtmp://127.0.0.1:{port}/live/k"), "");
    assert!(err.contains("not an RTMP server"), "{err}");
    assert!(err.contains("version 72"), "'H' is version 72: {err}");
    assert_within_timeout(elapsed, &err);
}

#[test]
fn server_never_starts_the_handshake() {
    let port = hostile(|mut s| drain_for(&mut s, Duration::from_secs(15)));
    let (err, _, elapsed) = publish_error(&format!("rtmp://127.0.0.1:{port}/live/k"), "");
    assert!(
        err.contains("timed out waiting for the handshake (S0/S1/S2)"),
        "{err}"
    );
    assert!(elapsed >= Duration::from_secs(TIMEOUT_S), "{elapsed:?}");
    assert_within_timeout(elapsed, &err);
}

#[test]
fn server_never_answers_connect() {
    let port = hostile(|mut s| {
        server_handshake(&mut s);
        drain_for(&mut s, Duration::from_secs(15));
    });
    let (err, _, elapsed) = publish_error(&format!("rtmp://127.0.0.1:{port}/live/k"), "");
    assert!(
        err.contains("timed out waiting for the answer to connect"),
        "{err}"
    );
    assert!(elapsed >= Duration::from_secs(TIMEOUT_S), "{elapsed:?}");
    assert_within_timeout(elapsed, &err);
}

#[test]
fn server_sets_a_chunk_size_of_zero() {
    let port = hostile(|mut s| {
        server_handshake(&mut s);
        // Set Chunk Size 0 on chunk stream 2, type 0 header.
        let _ = s.write_all(&[2, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        drain_for(&mut s, Duration::from_secs(10));
    });
    let (err, _, elapsed) = publish_error(&format!("rtmp://127.0.0.1:{port}/live/k"), "");
    assert!(err.contains("invalid chunk size 0"), "{err}");
    assert_within_timeout(elapsed, &err);
}

#[test]
fn server_announces_a_huge_message() {
    let port = hostile(|mut s| {
        server_handshake(&mut s);
        // A 16 MiB command message, then some of its bytes.
        let _ = s.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff, 20, 0, 0, 0, 0]);
        let _ = s.write_all(&[0x41; 128]);
        drain_for(&mut s, Duration::from_secs(10));
    });
    let (err, _, elapsed) = publish_error(&format!("rtmp://127.0.0.1:{port}/live/k"), "");
    assert!(
        err.contains("message of 16777215 bytes (type 20) exceeds the limit"),
        "{err}"
    );
    assert_within_timeout(elapsed, &err);
}

/// A command message (AMF0, chunk stream 3, type 0 header, one chunk).
fn command_bytes(values: &[Value]) -> Vec<u8> {
    let payload = amf0::encode_all(values);
    assert!(payload.len() <= 128);
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![3, 0, 0, 0, len[1], len[2], len[3], 20, 0, 0, 0, 0];
    out.extend_from_slice(&payload);
    out
}

#[test]
fn server_rejects_connect() {
    let port = hostile(|mut s| {
        server_handshake(&mut s);
        let answer = command_bytes(&[
            "_error".into(),
            1.0.into(),
            Value::Null,
            amf0::obj(&[
                ("level", "error".into()),
                ("code", "NetConnection.Connect.Rejected".into()),
                ("description", "[ AccessManager.Reject ]".into()),
            ]),
        ]);
        let _ = s.write_all(&answer);
        drain_for(&mut s, Duration::from_secs(10));
    });
    let p = Publish::start(
        &av_flv_source(100_000, false, true),
        &format!("location=rtmp://127.0.0.1:{port}/live/k timeout={TIMEOUT_S}"),
    );
    let bus = p.pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(TIMEOUT_S + 5),
            &[gst::MessageType::Error],
        )
        .expect("an error");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    assert!(
        e.error().matches(gst::ResourceError::NotAuthorized),
        "{:?}",
        e.error()
    );
    let text = e.error().to_string();
    assert!(
        text.contains(
            "the server refused connect: NetConnection.Connect.Rejected ([ AccessManager.Reject ])"
        ),
        "{text}"
    );
}

#[test]
fn nginx_refuses_a_second_publisher_of_the_same_stream() {
    let nginx = Nginx::start();
    let url = nginx.url("taken");
    let first = Publish::start(
        &av_flv_source(100_000, false, true),
        &format!("location={url}"),
    );
    // Wait until the first one publishes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.stats().get::<bool>("publishing").unwrap() {
        assert!(Instant::now() < deadline, "first publisher never published");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (err, stats, elapsed) = publish_error(&url, "");
    assert!(
        err.contains("the server refused publish: NetStream.Publish.BadName"),
        "{err}"
    );
    assert!(!stats.get::<bool>("publishing").unwrap());
    assert_within_timeout(elapsed, &err);
    // The stream key is not in the message.
    assert!(!err.contains("/taken"), "{err}");
}

#[test]
fn invalid_locations_fail_the_state_change() {
    common::init();
    for location in ["http://127.0.0.1/live/x", "rtmp://127.0.0.1/onlyapp"] {
        let p = gst::parse::launch(&format!(
            "fakesrc num-buffers=1 ! video/x-flv ! rsrtmpsink name=sink location={location}"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        common::assert_ours(&p.by_name("sink").unwrap());
        assert!(p.set_state(gst::State::Playing).is_err(), "{location}");
        let bus = p.bus().unwrap();
        let msg = bus
            .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
            .expect("error");
        let gst::MessageView::Error(e) = msg.view() else {
            unreachable!()
        };
        assert!(
            e.error().to_string().contains("Invalid RTMP location"),
            "{location}: {}",
            e.error()
        );
        let _ = p.set_state(gst::State::Null);
    }
}

/// A server that accepts the publication and then reads nothing more.
fn stalling_server() -> u16 {
    hostile(|mut s| {
        server_handshake(&mut s);
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        // connect, createStream (transaction 4) and publish answered in one go.
        let _ = s.write_all(&publication_accepted());
        // Hold the connection without reading.
        std::thread::sleep(Duration::from_secs(20));
    })
}

/// Synthetic FLV: a header, AVC configuration, then `n` frames of `size` bytes, a keyframe
/// every 30.
fn synthetic_flv(n: u32, size: usize) -> Vec<Vec<u8>> {
    use gstlivestreaming::rtmp::flv::{Tag, TagKind, write_header, write_tag};
    let mut first = Vec::new();
    write_header(false, true, &mut first);
    write_tag(
        &Tag {
            kind: TagKind::Video,
            timestamp: 0,
            data: vec![0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f].into(),
        },
        &mut first,
    );
    let mut buffers = vec![first];
    for i in 0..n {
        let mut data = vec![if i % 30 == 0 { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        data.resize(size, 0x55);
        let mut b = Vec::new();
        write_tag(
            &Tag {
                kind: TagKind::Video,
                timestamp: i * 33,
                data: data.into(),
            },
            &mut b,
        );
        buffers.push(b);
    }
    buffers
}

#[test]
fn a_server_that_stops_reading_costs_frames_not_the_streaming_thread() {
    common::init();
    let port = stalling_server();
    let pipeline = gst::Pipeline::new();
    let src = gst_app::AppSrc::builder()
        .caps(&gst::Caps::builder("video/x-flv").build())
        .format(gst::Format::Time)
        // push_buffer blocks while the sink has not rendered the previous ones.
        .block(true)
        .max_bytes(100_000)
        .build();
    let sink = gst::ElementFactory::make("rsrtmpsink")
        .property("location", format!("rtmp://127.0.0.1:{port}/live/k"))
        .property("timeout", TIMEOUT_S as u32)
        .property("queue-size", 1_000_000u32)
        .property("reconnect-attempts", 0u32)
        .property("sync", false)
        .build()
        .unwrap();
    common::assert_ours(&sink);
    pipeline.add_many([src.upcast_ref(), &sink]).unwrap();
    src.link(&sink).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // Wait until publishing, then push 60 MB in 2000 frames.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sink
        .property::<gst::Structure>("stats")
        .get::<bool>("publishing")
        .unwrap()
    {
        assert!(Instant::now() < deadline, "never published");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Push frames at full speed until the element gives up on the server. Once the kernel's
    // socket buffers are full nothing moves; render() must keep returning at once (frames are
    // dropped) while the network side waits `timeout` for progress, then fails.
    let bus = pipeline.bus().unwrap();
    let start = Instant::now();
    let mut slowest_push = Duration::ZERO;
    let mut pushed = 0;
    let error = 'outer: loop {
        for b in synthetic_flv(300, 30_000) {
            // Checked before every push: after the error render() fails, and a blocking appsrc
            // whose queue is full would wait for ever.
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                let gst::MessageView::Error(e) = msg.view() else {
                    unreachable!()
                };
                break 'outer e.error();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no error for the stalled server after {pushed} frames; stats {}",
                sink.property::<gst::Structure>("stats")
            );
            let t = Instant::now();
            let _ = src.push_buffer(gst::Buffer::from_slice(b));
            slowest_push = slowest_push.max(t.elapsed());
            pushed += 1;
        }
    };
    let stats = sink.property::<gst::Structure>("stats");
    let text = error.to_string();
    assert!(
        text.contains("the server accepted nothing for 2 s"),
        "{text}"
    );
    assert!(stats.get::<u64>("drops").unwrap() > 0, "{stats}");
    assert!(
        stats.get::<u64>("queue-bytes").unwrap() <= 1_000_000,
        "{stats}"
    );
    assert!(
        slowest_push < Duration::from_millis(500),
        "a push took {slowest_push:?}: render waited for the network"
    );
    let _ = pipeline.set_state(gst::State::Null);
}

#[test]
fn input_that_is_not_flv_is_a_format_error() {
    common::init();
    let port = hostile(|mut s| drain_for(&mut s, Duration::from_secs(10)));
    let pipeline = gst::Pipeline::new();
    let src = gst_app::AppSrc::builder()
        .caps(&gst::Caps::builder("video/x-flv").build())
        .build();
    let sink = gst::ElementFactory::make("rsrtmpsink")
        .property("location", format!("rtmp://127.0.0.1:{port}/live/k"))
        .property("timeout", 5u32)
        .build()
        .unwrap();
    common::assert_ours(&sink);
    pipeline.add_many([src.upcast_ref(), &sink]).unwrap();
    src.link(&sink).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // A tag of type 7 (no such thing), as a mislabelled stream would start.
    let _ = src.push_buffer(gst::Buffer::from_slice(
        b"\x07\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00hello\x00\x00\x00\x10".to_vec(),
    ));
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(3), &[gst::MessageType::Error])
        .expect("an error");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    assert!(
        e.error().matches(gst::StreamError::Format),
        "{:?}",
        e.error()
    );
    assert!(
        e.error()
            .to_string()
            .contains("The input is not valid FLV: FLV: unknown tag type 7"),
        "{}",
        e.error()
    );
    let _ = pipeline.set_state(gst::State::Null);
}

/// A server that accepts the publication and reports the names of the commands it receives
/// afterwards, until the client closes.
fn command_recording_server() -> (u16, std::sync::mpsc::Receiver<Vec<String>>) {
    use gstlivestreaming::rtmp::chunk::{ChunkDecoder, msg_type};
    let (tx, rx) = std::sync::mpsc::channel();
    let port = hostile(move |mut s| {
        server_handshake(&mut s);
        let mut dec = ChunkDecoder::new(1 << 24);
        let mut buf = vec![0u8; 65536];
        let mut names = Vec::new();
        let mut answered = false;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            dec.feed(&buf[..n]);
            while let Ok(Some(m)) = dec.next_message() {
                match m.type_id {
                    msg_type::SET_CHUNK_SIZE => {
                        let size = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                        dec.set_chunk_size(size).unwrap();
                    }
                    msg_type::COMMAND_AMF0 => {
                        let v = amf0::decode_all(&m.payload).unwrap();
                        names.push(v[0].as_str().unwrap().to_owned());
                    }
                    _ => {}
                }
            }
            if !answered && names.iter().any(|n| n == "connect") {
                answered = true;
                let _ = s.write_all(&publication_accepted());
            }
        }
        let _ = tx.send(names);
    });
    (port, rx)
}

#[test]
fn stop_commands_are_sent_at_the_end() {
    for (flags, expected) in [
        ("", vec!["FCUnpublish", "deleteStream"]),
        ("stop-commands=closestream", vec!["closeStream"]),
        ("stop-commands=0", vec![]),
    ] {
        let (port, names) = command_recording_server();
        let p = Publish::start(
            &av_flv_source(30, false, false),
            &format!("location=rtmp://127.0.0.1:{port}/live/k sync=false {flags}"),
        );
        let (r, _) = p.wait(Duration::from_secs(30));
        r.unwrap_or_else(|e| panic!("{flags}: {e}"));
        p.pipeline.set_state(gst::State::Null).unwrap();
        let names = names
            .recv_timeout(Duration::from_secs(10))
            .expect("the server saw the connection end");
        assert_eq!(
            &names[..4],
            ["connect", "releaseStream", "FCPublish", "createStream"],
            "{flags}"
        );
        assert_eq!(names[4], "publish");
        assert_eq!(&names[5..], &expected[..], "{flags}");
    }
}

/// Whether a connection arrives at `listener` within `d`.
fn connection_within(listener: &TcpListener, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if listener.accept().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn async_connect_false_connects_at_the_first_buffer() {
    common::init();
    for async_connect in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder()
            .caps(&gst::Caps::builder("video/x-flv").build())
            .build();
        let sink = gst::ElementFactory::make("rsrtmpsink")
            .property("location", format!("rtmp://127.0.0.1:{port}/live/k"))
            .property("async-connect", async_connect)
            .build()
            .unwrap();
        common::assert_ours(&sink);
        pipeline.add_many([src.upcast_ref(), &sink]).unwrap();
        src.link(&sink).unwrap();
        let _ = pipeline.set_state(gst::State::Playing);
        let early = connection_within(&listener, Duration::from_millis(1500));
        assert_eq!(early, async_connect, "async-connect={async_connect}");
        if !async_connect {
            let mut first = Vec::new();
            first.extend_from_slice(&synthetic_flv(1, 100)[0]);
            let _ = src.push_buffer(gst::Buffer::from_slice(first));
            assert!(
                connection_within(&listener, Duration::from_secs(5)),
                "no connection after the first buffer"
            );
        }
        let _ = pipeline.set_state(gst::State::Null);
    }
}
