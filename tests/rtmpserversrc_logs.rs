//! rtmpserversrc's debug log at every level (`GST_DEBUG=*:9`, a `gst-launch-1.0` child) while
//! ffmpeg publishes with a stream key and a token in its query: the server's decisions are there
//! with the peer (connection, handshake, connect, publish accepted, unpublish), the key and the
//! token nowhere (as tests/secrets.rs checks rsrtmpsink and rshlssink).

mod common;

use std::time::Duration;

use common::rtmp::{TempDir, ffmpeg_publish_file, free_port, wait_listening};
use common::{assert_absent, ffmpeg_test_media, launch_logged};

#[test]
fn decisions_are_logged_with_the_peer_and_the_stream_key_never() {
    let dir = TempDir::new("rtmpserversrc-logs");
    let input = dir.join("in.flv");
    ffmpeg_test_media(
        &input,
        "160x120",
        1,
        None,
        &["-preset", "ultrafast", "-f", "flv"],
    );
    let key = "sk_live_Pq4Wd8Zt2Mn6";
    let token = "tok_Yy3Uu7Ii1Oo5";
    let port = free_port();
    let log = dir.path().join("server.log");
    let server = launch_logged(
        dir.path(),
        &log,
        &[
            "rtmpserversrc",
            "address=127.0.0.1",
            &format!("port={port}"),
            &format!("stream-key={key}"),
            "!",
            "fakesink",
        ],
    );
    wait_listening(port, Duration::from_secs(60), "rtmpserversrc");
    let (out, timed_out) = ffmpeg_publish_file(
        &input,
        &format!("rtmp://127.0.0.1:{port}/live/{key}?token={token}"),
        &[],
    )
    .wait_output(Duration::from_secs(30));
    assert!(!timed_out && out.status.success(), "ffmpeg: {out:?}");
    // EOS after the publisher left: gst-launch-1.0 ends by itself.
    let (out, timed_out) = server.wait_output(Duration::from_secs(30));
    assert!(
        !timed_out,
        "gst-launch-1.0 did not end after the publisher left"
    );
    assert!(out.status.success(), "{}", out.status);

    let bytes = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let ours = |needle: &str| {
        text.lines()
            .any(|l| l.contains(" lsrtmp ") && l.contains("127.0.0.1:") && l.contains(needle))
    };
    for step in [
        "connection accepted",
        "S0+S1+S2 sent",
        "connect: app 'live'",
        "command publish",
        "publish request on message stream 1",
        "publish accepted: publisher 1",
        "NetStream.Publish.Start sent",
        "FCUnpublish: the publication ends",
        "publisher 1 unpublished (FCUnpublish)",
    ] {
        assert!(
            ours(step),
            "no lsrtmp line with the peer and '{step}'; the last lsrtmp lines:\n{}",
            last_lines(&text, 8)
        );
    }
    // The unpublish ends the stream, so the element may stop before ffmpeg closes its side:
    // the connection's last line says which came first.
    assert!(
        ours("connection closed: the client closed the connection")
            || ours("connection closed: the element stopped"),
        "no lsrtmp line with the peer closing the connection; the last lsrtmp lines:\n{}",
        last_lines(&text, 8)
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" lsrtmp ") && l.contains("message type 9")),
        "per-message lines at level 6"
    );
    for (secret, what) in [(key, "the stream key"), (token, "the token")] {
        assert_absent(&bytes, secret.as_bytes(), what);
    }
}

/// The last `n` lines of our categories, for a failure's message.
fn last_lines(text: &str, n: usize) -> String {
    let ours: Vec<&str> = text.lines().filter(|l| l.contains(" lsrtmp ")).collect();
    ours[ours.len().saturating_sub(n)..].join("\n")
}
