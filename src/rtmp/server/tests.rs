//! Unit tests of the server connection, driven by our own publisher state machine in memory and
//! by hand-made hostile bytes.
//!
//! Specifications: RTMP specification 1.0 §5.3-§5.4 and §7.2 (what the tests exchange).

use super::*;
use crate::rtmp::client::{self, Publisher, PublisherConfig, StopCommands};

fn publisher(app: &str, stream: &str) -> Publisher {
    Publisher::new(
        PublisherConfig {
            name: String::new(),
            app: app.into(),
            tc_url: format!("rtmp://127.0.0.1/{app}"),
            stream: stream.into(),
            flash_version: "FMLE/3.0".into(),
            chunk_size: 4096,
            max_message_size: 1 << 20,
            credentials: None,
            auth: Default::default(),
            fourcc_list: Vec::new(),
        },
        0,
        &[3; 1528],
    )
}

fn server(app: &str) -> Connection {
    Connection::new(
        ConnectionConfig {
            application: app.into(),
            peer: "127.0.0.1:1".into(),
            ..ConnectionConfig::default()
        },
        0,
        &[7; PACKET_SIZE],
    )
}

/// Exchanges bytes until neither side has anything to say; returns the server's events and the
/// publisher's.
fn pump(c: &mut Publisher, s: &mut Connection) -> Result<(Vec<Event>, Vec<client::Event>), Error> {
    let mut sev = Vec::new();
    let mut cev = Vec::new();
    for _ in 0..20 {
        let to_server = c.take_output();
        if !to_server.is_empty() {
            sev.extend(s.receive(&to_server)?);
        }
        let to_client = s.take_output();
        if !to_client.is_empty() {
            cev.extend(c.receive(&to_client).expect("publisher takes our answers"));
        }
        if to_server.is_empty() && to_client.is_empty() {
            break;
        }
    }
    Ok((sev, cev))
}

fn video(ts: u32, key: bool) -> Tag {
    Tag {
        kind: TagKind::Video,
        timestamp: ts,
        data: Bytes::from(vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0, 1, 2, 3]),
    }
}

#[test]
fn a_publisher_connects_publishes_and_unpublishes() {
    let mut c = publisher("live", "secret?token=1");
    let mut s = server("live");
    let (ev, _) = pump(&mut c, &mut s).unwrap();
    assert!(
        matches!(&ev[0], Event::Connected(i) if i.app == "live"),
        "{ev:?}"
    );
    let Some(Event::Publish(req)) = ev.last() else {
        panic!("no publish: {ev:?}");
    };
    assert_eq!(req.key, "secret");
    assert_eq!(req.query, "token=1");
    assert_eq!(req.kind, "live");
    assert_eq!(s.phase(), Phase::Deciding);
    s.accept_publish();
    let (_, cev) = pump(&mut c, &mut s).unwrap();
    assert!(cev.contains(&client::Event::Publishing), "{cev:?}");
    assert_eq!(s.in_chunk_size(), 4096, "the publisher's Set Chunk Size");
    // Media: whole messages, larger than a chunk too.
    c.send_tag(&video(0, true));
    let big = Tag {
        kind: TagKind::Audio,
        timestamp: 21,
        data: Bytes::from(vec![0xaf; 10_000]),
    };
    c.send_tag(&big);
    let (ev, _) = pump(&mut c, &mut s).unwrap();
    assert_eq!(ev, vec![Event::Media(video(0, true)), Event::Media(big)]);
    c.finish(StopCommands::default());
    let (ev, _) = pump(&mut c, &mut s).unwrap();
    assert_eq!(ev, vec![Event::Unpublished("FCUnpublish")]);
}

#[test]
fn a_refused_publish_is_the_clients_error() {
    let mut c = publisher("live", "wrong");
    let mut s = server("");
    pump(&mut c, &mut s).unwrap();
    s.refuse_publish("NetStream.Publish.BadName", "stream key refused");
    let out = s.take_output();
    let err = c.receive(&out).unwrap_err();
    assert!(
        err.to_string().contains("NetStream.Publish.BadName"),
        "{err}"
    );
    // Media sent without an accepted publish is ignored.
    let mut c = publisher("live", "k");
    let mut s = server("");
    pump(&mut c, &mut s).unwrap();
    s.refuse_publish("NetStream.Publish.BadName", "busy");
    let mut enc = ChunkEncoder::new();
    let mut bytes = Vec::new();
    enc.set_chunk_size(4096);
    enc.write(6, 0, msg_type::VIDEO, 1, &[0x17, 0], &mut bytes);
    assert_eq!(s.receive(&bytes).unwrap(), vec![]);
    assert_eq!(s.counters.media_ignored, 1);
}

#[test]
fn a_wrong_application_is_refused_at_connect() {
    let mut c = publisher("other", "k");
    let mut s = server("live");
    let err = pump(&mut c, &mut s).unwrap_err();
    assert!(matches!(err, Error::WrongApplication { .. }), "{err}");
    let out = s.take_output();
    assert!(c.receive(&out).is_err(), "the client sees _error");
}

#[test]
fn set_data_frame_becomes_on_metadata_and_aggregates_split() {
    let mut c = publisher("live", "k");
    let mut s = server("");
    pump(&mut c, &mut s).unwrap();
    s.accept_publish();
    pump(&mut c, &mut s).unwrap();
    let meta = amf0::encode_all(&[
        Value::from("@setDataFrame"),
        Value::from("onMetaData"),
        Value::EcmaArray(vec![("width".into(), Value::Number(320.0))]),
    ]);
    let mut enc = ChunkEncoder::new();
    enc.set_chunk_size(4096);
    let mut bytes = Vec::new();
    enc.write(5, 0, msg_type::DATA_AMF0, 1, &meta, &mut bytes);
    // An aggregate of two FLV tags (timestamps 1000 and 1040) sent at message time 500.
    let mut agg = Vec::new();
    crate::rtmp::flv::write_tag(&video(1000, true), &mut agg);
    crate::rtmp::flv::write_tag(&video(1040, false), &mut agg);
    enc.write(7, 500, msg_type::AGGREGATE, 1, &agg, &mut bytes);
    let ev = s.receive(&bytes).unwrap();
    let Event::Media(m) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert!(m.is_metadata());
    assert_eq!(
        amf0::decode_all(&m.data).unwrap()[0],
        Value::from("onMetaData")
    );
    assert_eq!(ev[1], Event::Media(video(500, true)));
    assert_eq!(ev[2], Event::Media(video(540, false)));
}

#[test]
fn pings_and_acknowledgements() {
    let mut c = publisher("live", "k");
    let mut s = server("");
    pump(&mut c, &mut s).unwrap();
    s.accept_publish();
    pump(&mut c, &mut s).unwrap();
    let mut enc = ChunkEncoder::new();
    enc.set_chunk_size(4096);
    let mut bytes = Vec::new();
    enc.write(
        2,
        0,
        msg_type::WINDOW_ACK_SIZE,
        0,
        &100u32.to_be_bytes(),
        &mut bytes,
    );
    enc.write(
        2,
        0,
        msg_type::USER_CONTROL,
        0,
        &[0, 6, 0, 0, 0, 9],
        &mut bytes,
    );
    s.receive(&bytes).unwrap();
    let out = s.take_output();
    // Ping response (event 7, value 9) and an Acknowledgement (more than 100 bytes came in).
    assert!(out.windows(6).any(|w| w == [0, 7, 0, 0, 0, 9]), "{out:?}");
    assert_eq!(s.counters.acks_sent, 1);
}

/// The hostile inputs of the brief, each an error (never a panic, never a big allocation).
#[test]
fn hostile_clients_are_errors() {
    let connected = || {
        let mut c = publisher("live", "k");
        let mut s = server("");
        pump(&mut c, &mut s).unwrap();
        s.accept_publish();
        pump(&mut c, &mut s).unwrap();
        s
    };
    // A type 0 header each time: a fresh encoder.
    let chunk = |type_id: u8, payload: &[u8]| {
        let mut out = Vec::new();
        ChunkEncoder::new().write(3, 0, type_id, 0, payload, &mut out);
        out
    };
    // Chunk size 0 and 2^31.
    for size in [0u32, 0x8000_0000] {
        let e = connected()
            .receive(&chunk(msg_type::SET_CHUNK_SIZE, &size.to_be_bytes()))
            .unwrap_err();
        assert!(
            matches!(e, Error::Chunk(ChunkError::InvalidChunkSize(_))),
            "{e}"
        );
    }
    // A 16 MiB message is refused at its header.
    let mut s = connected();
    let e = s
        .receive(&[0x04, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0])
        .unwrap_err();
    assert!(
        matches!(e, Error::Chunk(ChunkError::TooLarge { .. })),
        "{e}"
    );
    // Thousands of chunk stream ids.
    let mut s = connected();
    let mut many = Vec::new();
    for csid in 64..3000u32 {
        let v = csid - 64;
        many.extend_from_slice(&[1, (v & 0xff) as u8, (v >> 8) as u8]);
        many.extend_from_slice(&[0, 0, 0, 0, 0, 0, 9, 1, 0, 0, 0]);
    }
    let e = s.receive(&many).unwrap_err();
    assert!(
        matches!(e, Error::Chunk(ChunkError::TooManyStreams(_))),
        "{e}"
    );
    // Deeply nested AMF in a command.
    let mut nested = vec![2, 0, 7];
    nested.extend_from_slice(b"connect");
    nested.extend_from_slice(&[0; 9]);
    for _ in 0..1000 {
        nested.extend_from_slice(&[3, 0, 1, b'a']);
    }
    let mut s = server("");
    let mut c = publisher("live", "k");
    let hs = c.take_output();
    s.receive(&hs).unwrap();
    let ans = s.take_output();
    c.receive(&ans).unwrap();
    let c2 = c.take_output();
    // c2 holds C2 and the publisher's connect: keep only C2.
    s.receive(&c2[..PACKET_SIZE]).unwrap();
    let mut enc = ChunkEncoder::new();
    let mut bytes = Vec::new();
    enc.write(3, 0, msg_type::COMMAND_AMF0, 0, &nested, &mut bytes);
    let e = s.receive(&bytes).unwrap_err();
    assert!(matches!(e, Error::Amf(DecodeError::TooDeep)), "{e}");
    // More createStream than allowed.
    let mut s = connected();
    let mut enc = ChunkEncoder::new();
    enc.set_chunk_size(4096);
    let mut bytes = Vec::new();
    for i in 0..20 {
        let cmd = amf0::encode_all(&[
            Value::from("createStream"),
            Value::Number(10.0 + f64::from(i)),
            Value::Null,
        ]);
        enc.write(3, 0, msg_type::COMMAND_AMF0, 0, &cmd, &mut bytes);
    }
    assert!(matches!(s.receive(&bytes), Err(Error::Protocol(_))));
    // Garbage instead of a handshake.
    assert!(matches!(
        server("").receive(b"GET / HTTP/1.1\r\n\r\n"),
        Err(Error::Handshake(_))
    ));
}

#[test]
fn every_split_of_a_session_gives_the_same_events() {
    let mut c = publisher("live", "k");
    // Record the publisher's bytes for one session.
    let mut client_bytes = Vec::new();
    let mut server_copy = server("");
    for _ in 0..10 {
        let b = c.take_output();
        client_bytes.extend_from_slice(&b);
        let _ = server_copy.receive(&b);
        let out = server_copy.take_output();
        if !out.is_empty() {
            let _ = c.receive(&out);
        }
        if server_copy.phase() == Phase::Deciding {
            server_copy.accept_publish();
            let out = server_copy.take_output();
            let _ = c.receive(&out);
            c.send_tag(&video(0, true));
            c.send_tag(&video(33, false));
            client_bytes.extend_from_slice(&c.take_output());
            break;
        }
    }
    for step in [1usize, 7, 1000] {
        let mut s = server("");
        let mut events = Vec::new();
        for piece in client_bytes.chunks(step) {
            let mut new = s.receive(piece).unwrap();
            while let Some(Event::Publish(_)) = new.last() {
                s.accept_publish();
                events.append(&mut new);
                new = s.receive(&[]).unwrap();
            }
            events.append(&mut new);
        }
        let media: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Media(_)))
            .collect();
        assert_eq!(media.len(), 2, "step {step}: {events:?}");
    }
}

/// A plain handshake and a connect with `command` as its command object: what the server made of
/// it and the bytes it answered.
fn connect_with(s: &mut Connection, command: Value) -> (ConnectInfo, Vec<u8>) {
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0; PACKET_SIZE]);
    s.receive(&c0c1).unwrap();
    let answer = s.take_output();
    s.receive(&answer[1..1 + PACKET_SIZE]).unwrap();
    let connect = amf0::encode_all(&[Value::from("connect"), Value::Number(1.0), command]);
    let mut bytes = Vec::new();
    ChunkEncoder::new().write(3, 0, msg_type::COMMAND_AMF0, 0, &connect, &mut bytes);
    let ev = s.receive(&bytes).unwrap();
    let Event::Connected(info) = &ev[0] else {
        panic!("{ev:?}")
    };
    (info.clone(), s.take_output())
}

#[test]
fn enhanced_rtmp_four_cc_list_is_recorded_and_echoed() {
    let mut s = server("");
    let (info, out) = connect_with(
        &mut s,
        amf0::obj(&[
            ("app", "live/".into()),
            ("tcUrl", "rtmp://h/live".into()),
            ("objectEncoding", Value::Number(0.0)),
            (
                "fourCcList",
                Value::StrictArray(vec!["hvc1".into(), "av01".into(), "Opus".into()]),
            ),
        ]),
    );
    assert_eq!(info.app, "live", "trailing slash removed");
    assert_eq!(info.fourcc_list, ["hvc1", "av01", "Opus"]);
    // The _result carries NetConnection.Connect.Success and the list back.
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("NetConnection.Connect.Success"));
    assert!(text.contains("fourCcList") && text.contains("hvc1"));
}

/// Enhanced RTMP v2: the FourCC info maps say which codecs the client can encode or forward
/// (those are recorded, not the ones it can only decode), and the answer carries the server's
/// maps: any codec forwarded.
#[test]
fn enhanced_rtmp_v2_four_cc_info_maps_are_read_and_answered() {
    let mut s = server("");
    let (info, out) = connect_with(
        &mut s,
        amf0::obj(&[
            ("app", "live".into()),
            ("tcUrl", "rtmp://h/live".into()),
            ("fourCcList", Value::StrictArray(vec!["hvc1".into()])),
            (
                "videoFourCcInfoMap",
                amf0::obj(&[
                    ("hvc1", Value::Number(2.0)),
                    ("av01", Value::Number(1.0)),
                    ("vp09", Value::Number(7.0)),
                    ("avc1", Value::Number(f64::NAN)),
                ]),
            ),
            (
                "audioFourCcInfoMap",
                Value::EcmaArray(vec![("Opus".into(), Value::Number(4.0))]),
            ),
        ]),
    );
    assert_eq!(info.fourcc_list, ["hvc1", "vp09", "Opus"]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("NetConnection.Connect.Success"));
    assert!(text.contains("videoFourCcInfoMap") && text.contains("audioFourCcInfoMap"));
}

/// Adobe authentication between our publisher and our server, in memory: three connections
/// (challenge asked, challenge answered, accepted); a wrong password ends at the third.
#[test]
fn adobe_authentication_takes_three_connections() {
    use crate::rtmp::auth::{ClientAuth, Credentials, ServerAuth};
    let alice = |password: &str| Credentials {
        user: "alice".into(),
        password: password.into(),
    };
    let auth = std::sync::Arc::new(ServerAuth::new(vec![alice("pw")], [9; 16]));
    for (password, accepted) in [("pw", true), ("bad", false)] {
        let mut state = ClientAuth::default();
        let mut outcome = None;
        for _ in 0..3 {
            let mut c = publisher("live", "key");
            c.set_auth(Some(alice(password)), state.clone());
            let mut s = Connection::new(
                ConnectionConfig {
                    application: "live".into(),
                    peer: "127.0.0.1:1".into(),
                    auth: Some(auth.clone()),
                    ..ConnectionConfig::default()
                },
                0,
                &[7; PACKET_SIZE],
            );
            let mut server_events = Vec::new();
            let mut client_error = None;
            for _ in 0..20 {
                let to_server = c.take_output();
                if !to_server.is_empty() {
                    match s.receive(&to_server) {
                        Ok(ev) => server_events.extend(ev),
                        Err(e) => assert!(matches!(e, Error::AuthRefused { .. }), "{e}"),
                    }
                }
                let to_client = s.take_output();
                if !to_client.is_empty()
                    && let Err(e) = c.receive(&to_client)
                {
                    client_error = Some(e);
                    break;
                }
                if to_server.is_empty() && to_client.is_empty() {
                    break;
                }
            }
            match client_error {
                Some(client::Error::AuthRetry(next)) => state = *next,
                Some(e) => {
                    outcome = Some(Err(e));
                    break;
                }
                None => {
                    assert!(
                        server_events
                            .iter()
                            .any(|e| matches!(e, Event::Connected(i) if i.app == "live")),
                        "{server_events:?}"
                    );
                    outcome = Some(Ok(()));
                    break;
                }
            }
        }
        match outcome {
            Some(Ok(())) => assert!(accepted, "{password} accepted"),
            Some(Err(e)) => {
                assert!(!accepted, "{password}: {e}");
                assert!(e.is_unauthorized(), "{e}");
            }
            None => panic!("no outcome in three connections"),
        }
    }
}

/// The decoder's tolerance serves rtmpserversrc too: a publisher whose first command opens
/// chunk stream 3 with a type 1 header (after a type 0 Set Chunk Size on chunk stream 2) is
/// taken.
#[test]
fn a_type_1_header_opening_a_chunk_stream_is_tolerated() {
    let mut s = server("live");
    let c0c1 = {
        let mut c = publisher("live", "key");
        c.take_output()
    };
    s.receive(&c0c1).unwrap();
    let s0s1s2 = s.take_output();
    let mut c2 = s0s1s2[1..1 + PACKET_SIZE].to_vec();
    let body = amf0::encode_all(&[
        "connect".into(),
        1.0.into(),
        amf0::obj(&[
            ("app", "live".into()),
            ("tcUrl", "rtmp://127.0.0.1/live".into()),
        ]),
    ]);
    c2.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0x10, 0]);
    c2.extend_from_slice(&[0x43, 0, 0, 0]);
    c2.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    c2.push(msg_type::COMMAND_AMF0);
    c2.extend_from_slice(&body);
    let ev = s.receive(&c2).unwrap();
    assert!(
        matches!(&ev[..], [Event::Connected(i)] if i.app == "live"),
        "{ev:?}"
    );
}

/// publish on message stream 0 after createStream (a client whose chunk headers lost the stream
/// id) is taken as publish on the stream createStream made, and media on stream 0 is its media.
/// Before any createStream it is still refused.
#[test]
fn publish_on_message_stream_0_is_tolerated_after_create_stream() {
    for create in [true, false] {
        let mut s = server("live");
        let c0c1 = publisher("live", "key").take_output();
        s.receive(&c0c1).unwrap();
        let s0s1s2 = s.take_output();
        let mut bytes = s0s1s2[1..1 + PACKET_SIZE].to_vec();
        let mut enc = ChunkEncoder::new();
        let cmd = |enc: &mut ChunkEncoder, sid: u32, values: &[Value], out: &mut Vec<u8>| {
            enc.write(
                3,
                0,
                msg_type::COMMAND_AMF0,
                sid,
                &amf0::encode_all(values),
                out,
            )
        };
        cmd(
            &mut enc,
            0,
            &[
                "connect".into(),
                1.0.into(),
                amf0::obj(&[("app", "live".into())]),
            ],
            &mut bytes,
        );
        if create {
            cmd(
                &mut enc,
                0,
                &["createStream".into(), 2.0.into(), Value::Null],
                &mut bytes,
            );
        }
        cmd(
            &mut enc,
            0,
            &[
                "publish".into(),
                3.0.into(),
                Value::Null,
                "key".into(),
                "live".into(),
            ],
            &mut bytes,
        );
        let r = s.receive(&bytes);
        if !create {
            assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
            continue;
        }
        let ev = r.unwrap();
        let Some(Event::Publish(req)) = ev.last() else {
            panic!("{ev:?}");
        };
        assert_eq!(req.stream_id, 1);
        s.accept_publish();
        let mut media = Vec::new();
        enc.write(
            6,
            40,
            msg_type::VIDEO,
            0,
            &[0x17, 1, 0, 0, 0, 9],
            &mut media,
        );
        let ev = s.receive(&media).unwrap();
        assert!(
            matches!(&ev[..], [Event::Media(t)] if t.timestamp == 40),
            "{ev:?}"
        );
    }
}

/// node-media-server 4.4.3's relay publishes on message stream 1 and sends its media on message
/// stream 0: taken as the publication's (one per connection); another stream id still is not.
#[test]
fn media_on_message_stream_0_while_publishing_is_the_publications() {
    let mut c = publisher("live", "k");
    let mut s = server("live");
    pump(&mut c, &mut s).unwrap();
    s.accept_publish();
    pump(&mut c, &mut s).unwrap();
    let mut enc = ChunkEncoder::new();
    let mut bytes = Vec::new();
    enc.set_chunk_size(4096);
    let hvc1 = [0x90, b'h', b'v', b'c', b'1', 1, 2];
    enc.write(5, 40, msg_type::VIDEO, 0, &hvc1, &mut bytes);
    enc.write(4, 40, msg_type::AUDIO, 7, &[0xaf, 1, 0], &mut bytes);
    // The chunk encoder of the test starts at chunk size 128 on the server side: tell it.
    let mut set = Vec::new();
    ChunkEncoder::new().write(
        2,
        0,
        msg_type::SET_CHUNK_SIZE,
        0,
        &4096u32.to_be_bytes(),
        &mut set,
    );
    set.extend_from_slice(&bytes);
    let ev = s.receive(&set).unwrap();
    assert_eq!(
        ev,
        vec![Event::Media(Tag {
            kind: TagKind::Video,
            timestamp: 40,
            data: Bytes::copy_from_slice(&hvc1),
        })]
    );
    assert_eq!(
        s.counters.media_ignored, 1,
        "message stream 7 is no stream of ours"
    );
}

/// A plain TCP publisher's thread (the listener's `rtmpsrvsrc-net`) lets audio wait in the
/// output for a video frame at most `hold`: audio with no video after it still reaches the
/// consumer within about that (not at the idle timeout), and audio followed by video comes with
/// the video.
#[test]
fn held_audio_reaches_the_output_without_a_video_frame_after_it() {
    use super::listener::{Listener, ListenerConfig};
    use super::output::{Item, Output};
    use std::io::{ErrorKind, Read, Write};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let output = Arc::new(Output::new(1 << 20));
    let listener = Listener::start(
        ListenerConfig {
            port: 0,
            hold: Duration::from_millis(50),
            ..ListenerConfig::default()
        },
        output.clone(),
    )
    .unwrap();
    let mut sock = std::net::TcpStream::connect(listener.local_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut c = publisher("live", "key");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0; 65536];
    loop {
        assert!(Instant::now() < deadline, "not publishing after 10 s");
        let out = c.take_output();
        if !out.is_empty() {
            sock.write_all(&out).unwrap();
        }
        match sock.read(&mut buf) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => {
                if c.receive(&buf[..n])
                    .unwrap()
                    .contains(&client::Event::Publishing)
                {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        matches!(
            output.pop(Some(Duration::from_secs(5))),
            Ok(Item::Started { .. })
        ),
        "the publication starts"
    );
    let audio = |ts: u32| Tag {
        kind: TagKind::Audio,
        timestamp: ts,
        data: Bytes::from(vec![0xaf, 1, 0x21, 0x10, ts as u8]),
    };
    // Audio alone: held at most `hold` (a timed pop returns what is queued at its deadline
    // anyway, so the time tells whether the consumer was woken).
    c.send_tag(&audio(0));
    sock.write_all(&c.take_output()).unwrap();
    let sent = Instant::now();
    assert_eq!(
        output.pop(Some(Duration::from_secs(3))),
        Ok(Item::Tag(audio(0)))
    );
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "held audio waited {took:?}"
    );
    // Audio then video in one write: both, in order.
    c.send_tag(&audio(23));
    c.send_tag(&video(33, true));
    sock.write_all(&c.take_output()).unwrap();
    assert_eq!(
        output.pop(Some(Duration::from_secs(3))),
        Ok(Item::Tag(audio(23)))
    );
    assert_eq!(
        output.pop(Some(Duration::from_secs(3))),
        Ok(Item::Tag(video(33, true)))
    );
    listener.stop();
}
