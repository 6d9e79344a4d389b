//! rtmpserversrc's debug log at every level (`GST_DEBUG=*:9`, a `gst-launch-1.0` child) while
//! ffmpeg publishes with a stream key and a token in its query: the server's decisions are there
//! with the peer (connection, handshake, connect, publish accepted, unpublish), the key and the
//! token nowhere (as tests/secrets.rs checks rsrtmpsink and rshlssink).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::rtmp::{TempDir, free_port, wait_listening};
use common::{ChildGuard, run};

fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    assert!(
        dir.join("libgstlivestreaming.so").exists(),
        "no libgstlivestreaming.so in {} (cargo build first)",
        dir.display()
    );
    dir
}

/// GStreamer's parser echoes the command line (the user typed the key there); those lines alone
/// are excused, as in tests/secrets.rs.
const COMMAND_LINE_ECHO: &[&str] = &[
    " gstparse.c:",
    " parse.l:",
    " grammar.y:",
    " grammar.tab.c:",
    ":gst_parse_unescape:",
];

fn lines_with(log: &[u8], secret: &[u8]) -> Vec<String> {
    log.split(|&b| b == b'\n')
        .filter(|line| line.windows(secret.len()).any(|w| w == secret))
        .map(|line| String::from_utf8_lossy(&line[..line.len().min(600)]).into_owned())
        .filter(|line| !COMMAND_LINE_ECHO.iter().any(|f| line.contains(f)))
        .collect()
}

fn make_input(dir: &Path) -> PathBuf {
    let path = dir.join("in.flv");
    let (out, timed_out) = run(
        Command::new("ffmpeg").args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=30",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "flv",
            path.to_str().unwrap(),
        ]),
        Duration::from_secs(60),
    );
    assert!(!timed_out && out.status.success());
    path
}

#[test]
fn decisions_are_logged_with_the_peer_and_the_stream_key_never() {
    let dir = TempDir::new("rtmpserversrc-logs");
    let input = make_input(dir.path());
    let key = "sk_live_Pq4Wd8Zt2Mn6";
    let token = "tok_Yy3Uu7Ii1Oo5";
    let port = free_port();
    let log = dir.path().join("server.log");
    let server = ChildGuard(Some(
        Command::new("gst-launch-1.0")
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("GST_REGISTRY", dir.path().join("registry.bin"))
            .env("GST_DEBUG", "*:9")
            .env("GST_DEBUG_NO_COLOR", "1")
            .env_remove("GST_DEBUG_FILE")
            .args([
                "rtmpserversrc",
                "address=127.0.0.1",
                &format!("port={port}"),
                &format!("stream-key={key}"),
                "!",
                "fakesink",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("gst-launch-1.0"),
    ));
    wait_listening(port, Duration::from_secs(60), "rtmpserversrc");
    let (out, timed_out) = run(
        Command::new("ffmpeg").args([
            "-v",
            "error",
            "-re",
            "-i",
            input.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "flv",
            &format!("rtmp://127.0.0.1:{port}/live/{key}?token={token}"),
        ]),
        Duration::from_secs(30),
    );
    assert!(!timed_out && out.status.success(), "ffmpeg: {out:?}");
    // EOS after the publisher left: gst-launch-1.0 ends by itself.
    let mut child = server;
    let mut c = child.0.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("gst-launch-1.0 did not end after the publisher left");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");

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
        "connection closed: the client closed the connection",
    ] {
        assert!(ours(step), "no lsrtmp line with the peer and '{step}'");
    }
    assert!(
        text.lines()
            .any(|l| l.contains(" lsrtmp ") && l.contains("message type 9")),
        "per-message lines at level 6"
    );
    for (secret, what) in [(key, "the stream key"), (token, "the token")] {
        let lines = lines_with(&bytes, secret.as_bytes());
        assert!(
            lines.is_empty(),
            "{what} is in {} lines of the debug log:\n{}",
            lines.len(),
            lines.join("\n")
        );
    }
}
