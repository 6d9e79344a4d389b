//! rtmpserversrc against hostile clients (written here with raw sockets) while ffmpeg publishes
//! on another connection: a garbage handshake, Set Chunk Size 0 and 2^31, a 16 MiB message,
//! thousands of chunk stream ids, deeply nested AMF, a handshake never completed and 1000 idle
//! connections. Each ends with its own DEBUG line naming the peer and the reason, the element
//! keeps listening, and the recording of the real publisher still has every frame. Also: a
//! publisher faster than downstream loses whole frames (counted), never its connection.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use common::ChildGuard;
use common::rtmp::{Recorder, TempDir, captured_logs, wait_line};
use gstlivestreaming::rtmp::amf0::{self, Value};
use gstlivestreaming::rtmp::chunk::{ChunkEncoder, msg_type};

use common::rtmp::test_flv as input;

/// The `lsrtmp` debug lines of this process.
fn logs() -> Arc<Mutex<Vec<String>>> {
    captured_logs(&["lsrtmp"], gst::DebugLevel::Debug)
}

fn wait_log(timeout: Duration, needle: &str) -> Option<String> {
    wait_line(&logs(), timeout, |l| l.contains(needle))
}

/// rtmpserversrc with `props` recording through `middle`, this process's log captured.
fn start_server(props: &str, middle: &str) -> Recorder {
    logs();
    Recorder::start("rtmpserversrc-hostile", props, middle)
}

fn ffmpeg_publish(port: u16) -> ChildGuard {
    common::rtmp::ffmpeg_publish(&format!("rtmp://127.0.0.1:{port}/live/key"), &[])
}

/// A connection that has done the plain handshake; returns it and its local address (the peer
/// address the server logs).
fn handshaken(port: u16) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 1536]);
    s.write_all(&c0c1).unwrap();
    let mut answer = vec![0u8; 1 + 2 * 1536];
    s.read_exact(&mut answer).unwrap();
    s.write_all(&answer[1..1 + 1536]).unwrap();
    let local = s.local_addr().unwrap().to_string();
    (s, local)
}

fn message(type_id: u8, csid: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ChunkEncoder::new().write(csid, 0, type_id, 0, payload, &mut out);
    out
}

/// Sends `bytes` on a handshaken connection and waits for the server's log line about it.
fn expect_closed(port: u16, bytes: &[u8], reason: &str) {
    let (mut s, peer) = handshaken(port);
    let _ = s.write_all(bytes);
    let line = wait_log(
        Duration::from_secs(10),
        &format!("{peer}: connection closed"),
    )
    .unwrap_or_else(|| panic!("no 'connection closed' line for {peer} ({reason})"));
    assert!(line.contains(reason), "{line} should say {reason}");
}

#[test]
fn hostile_clients_end_with_a_log_line_while_ffmpeg_publishes_every_frame() {
    let server = start_server("handshake-timeout=2 max-connections=50", "");
    let port = server.port;
    // 1000 idle connections, at most 50 kept waiting (the oldest make room).
    let idle: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert_eq!(idle.len(), 1000);
    let ffmpeg = ffmpeg_publish(port);

    // A garbage handshake.
    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let garbage_peer = g.local_addr().unwrap().to_string();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // A handshake never completed (C0 and half of C1).
    let mut stuck = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let stuck_peer = stuck.local_addr().unwrap().to_string();
    stuck.write_all(&[3u8; 700]).unwrap();

    expect_closed(
        port,
        &message(msg_type::SET_CHUNK_SIZE, 2, &0u32.to_be_bytes()),
        "invalid chunk size 0",
    );
    expect_closed(
        port,
        &message(msg_type::SET_CHUNK_SIZE, 2, &0x8000_0000u32.to_be_bytes()),
        "invalid chunk size 2147483648",
    );
    // A 16 MiB message announced (and partly sent).
    let mut huge = vec![0x04, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
    huge.extend_from_slice(&[0u8; 128]);
    expect_closed(port, &huge, "exceeds the limit");
    // Thousands of chunk stream ids, each with an empty message.
    let mut many = Vec::new();
    for v in 0..3000u32 {
        many.extend_from_slice(&[1, (v & 0xff) as u8, (v >> 8) as u8]);
        many.extend_from_slice(&[0, 0, 0, 0, 0, 0, 9, 1, 0, 0, 0]);
    }
    expect_closed(port, &many, "more than 64 chunk streams");
    // connect with its command object nested 1000 deep.
    let mut nested = amf0::encode_all(&[Value::from("connect"), Value::Number(1.0)]);
    for _ in 0..1000 {
        nested.extend_from_slice(&[3, 0, 1, b'a']);
    }
    expect_closed(
        port,
        &message(msg_type::COMMAND_AMF0, 3, &nested),
        "nested deeper than 32",
    );

    let line = wait_log(
        Duration::from_secs(10),
        &format!("{garbage_peer}: connection closed"),
    )
    .expect("garbage handshake logged");
    assert!(line.contains("not an RTMP client"), "{line}");
    let line = wait_log(
        Duration::from_secs(10),
        &format!("{stuck_peer}: connection closed"),
    )
    .expect("stuck handshake logged");
    assert!(line.contains("no complete handshake"), "{line}");
    assert!(
        wait_log(Duration::from_secs(5), "evicted by a newer connection").is_some(),
        "idle connections made room"
    );

    let (out, timed_out) = ffmpeg.wait_output(Duration::from_secs(30));
    assert!(!timed_out && out.status.success(), "ffmpeg: {out:?}");
    server.wait_eos(Duration::from_secs(10));
    let stats = server.src.property::<gst::Structure>("stats");
    assert!(stats.get::<u64>("connections").unwrap() >= 1007, "{stats}");
    assert_eq!(stats.get::<u64>("frames-dropped").unwrap(), 0);
    drop(idle);
    let i = input();
    assert_eq!(
        server.recorded(),
        (i.video, i.audio),
        "the real publisher's frames"
    );
}

#[test]
fn a_publisher_faster_than_downstream_loses_whole_frames_not_its_connection() {
    // Downstream takes 30 ms per tag (the file has about 75 tags a second) and the queue holds
    // 8 KiB: frames must be dropped, ffmpeg must not be slowed down.
    let server = start_server("queue-size=8192", "identity sleep-time=30000 !");
    let start = Instant::now();
    let ffmpeg = ffmpeg_publish(server.port);
    let (out, timed_out) = ffmpeg.wait_output(Duration::from_secs(30));
    assert!(!timed_out && out.status.success(), "ffmpeg: {out:?}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "ffmpeg took {:?}: the server held it back",
        start.elapsed()
    );
    server.wait_eos(Duration::from_secs(30));
    let stats = server.src.property::<gst::Structure>("stats");
    let dropped = stats.get::<u64>("frames-dropped").unwrap();
    let video = stats.get::<u64>("video-frames").unwrap();
    let audio = stats.get::<u64>("audio-frames").unwrap();
    let i = input();
    assert!(dropped > 0, "{stats}");
    assert_eq!(
        video + audio + dropped,
        i.video + i.audio,
        "every frame is either output or counted as dropped: {stats}"
    );
    // What was output is whole frames that decode: ffprobe reads every one of them.
    assert_eq!(server.recorded(), (video, audio));
    assert!(wait_log(Duration::from_secs(1), "video resumes at the next keyframe").is_some());
}

#[test]
fn a_plain_client_on_the_rtmps_port_is_closed_with_the_reason() {
    let certs = TempDir::new("rtmpserversrc-hostile-certs");
    let (cert, key) = common::rtmp::self_signed_cert(certs.path(), "IP:127.0.0.1");
    let server = start_server(
        &format!(
            "tls-certificate-file={} tls-key-file={} handshake-timeout=2",
            cert.display(),
            key.display()
        ),
        "",
    );
    // Plain RTMP: C0 and C1 where TLS expects a ClientHello.
    let mut plain = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let plain_peer = plain.local_addr().unwrap().to_string();
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 1536]);
    plain.write_all(&c0c1).unwrap();
    let line = wait_log(
        Duration::from_secs(10),
        &format!("{plain_peer}: connection closed"),
    )
    .expect("plain client logged");
    assert!(line.contains("TLS handshake failed"), "{line}");
    // A TLS client that never says anything.
    let silent = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let silent_peer = silent.local_addr().unwrap().to_string();
    let line = wait_log(
        Duration::from_secs(10),
        &format!("{silent_peer}: connection closed"),
    )
    .expect("silent client logged");
    assert!(line.contains("no TLS handshake within"), "{line}");
}

/// Our publisher over a socket, until the server accepted the publish.
fn publishing_client(port: u16) -> TcpStream {
    let (mut p, mut s) = common::rtmp::publishing_client(port, Vec::new());
    s.write_all(&p.take_output()).unwrap();
    s
}

#[test]
fn a_silent_publisher_is_disconnected_after_the_idle_timeout() {
    let server = start_server("idle-timeout=1", "");
    let start = Instant::now();
    let client = publishing_client(server.port);
    let peer = client.local_addr().unwrap().to_string();
    // Nothing more from the client: the element ends the stream.
    server.wait_eos(Duration::from_secs(10));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let line = wait_log(
        Duration::from_secs(5),
        &format!("{peer}: connection closed"),
    )
    .expect("logged");
    assert!(line.contains("nothing received for 1s"), "{line}");
    drop(client);
}
