//! Secrets stay out of the debug log at every level: rsrtmpsink publishing to a real nginx-rtmp
//! with a stream key, rshlssink encrypting with AES-128 while serving, and rtspserversrc taking
//! a stock rtspclientsink's Digest-authenticated publication, each run in a
//! `gst-launch-1.0` child with `GST_DEBUG=*:9`; the whole log is searched for the secrets (the
//! stream key and a token of its query; every AES key in hex, both cases, and raw). The log must
//! also show the cores at work (handshake, commands, segment cuts), so that an empty or broken
//! log cannot pass.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::hls::{http_request, read_playlist, wait_for};
use common::rtmp::{Nginx, TempDir, free_port, probe_file, wait_file_settled};
use common::{ChildGuard, assert_absent, launch_logged, lines_with, plugin_dir, tail};

/// `gst-launch-1.0 -e PIPELINE` with everything logged at level 9 to `log` (stderr), no colour,
/// our plugin from target/ with a registry of its own. The registry is made first, quietly:
/// scanning every installed plugin with everything logged took most of a minute on a loaded
/// machine and was most of the log (our plugin is still loaded, and logs, in the child).
fn launch(dir: &Path, log: &Path, pipeline: &[&str]) -> ChildGuard {
    let (out, timed_out) = common::run(
        Command::new("gst-inspect-1.0")
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("GST_REGISTRY", dir.join("registry.bin"))
            .env_remove("GST_DEBUG")
            .arg("rtspserversrc"),
        Duration::from_secs(180),
    );
    assert!(
        !timed_out && out.status.success(),
        "gst-inspect-1.0 did not find our plugin: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    launch_logged(dir, log, &[&["-e"], pipeline].concat())
}

/// Waits for the child to end by itself within `timeout`; asserts it exited successfully.
fn wait_success(child: ChildGuard, timeout: Duration, what: &str) {
    let (out, timed_out) = child.wait_output(timeout);
    assert!(
        !timed_out,
        "{what}: gst-launch-1.0 did not finish within {timeout:?}"
    );
    assert!(
        out.status.success(),
        "{what}: gst-launch-1.0 failed: {}",
        out.status
    );
}

/// Lines of our category `cat` containing `text`.
fn count_lines(log: &str, cat: &str, text: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(&format!(" {cat} ")) && l.contains(text))
        .count()
}

/// Asserts that our category `cat` logged a line with each of `steps`: the log is not vacuous.
fn assert_logged(text: &str, cat: &str, steps: &[&str]) {
    for step in steps {
        assert!(
            count_lines(text, cat, step) > 0,
            "no {cat} line with '{step}' in {} bytes of log",
            text.len()
        );
    }
}

#[test]
fn the_stream_key_is_in_no_debug_log() {
    let dir = TempDir::new("secrets-rtmp");
    let nginx = Nginx::start();
    // The key and a token in its query: both are the stream name as far as RTMP goes.
    let key = "sk_live_Zq7Xw9Vb3Np5Lm";
    let token = "tok_Hh4Jj8Kk2Rr6";
    let location = format!("{}?token={token}", nginx.url(key));
    let log = dir.path().join("rtmp.log");
    let child = launch(
        dir.path(),
        &log,
        &[
            "videotestsrc",
            "num-buffers=60",
            "is-live=true",
            "!",
            "video/x-raw,width=160,height=120,framerate=30/1",
            "!",
            "x264enc",
            "tune=zerolatency",
            "speed-preset=ultrafast",
            "key-int-max=30",
            "!",
            "h264parse",
            "!",
            "flvmux",
            "streamable=true",
            "!",
            "rsrtmpsink",
            &format!("location={location}"),
        ],
    );
    wait_success(child, Duration::from_secs(120), "rsrtmpsink");
    // nginx really got the stream under that key.
    let recording = nginx.recording(key);
    wait_file_settled(&recording, Duration::from_secs(10));
    assert!(
        probe_file(&recording).stream("video").is_some(),
        "nginx recorded no video under the key"
    );

    let bytes = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    // Not vacuous: the RTMP core's steps are in the log, at both levels.
    assert_logged(
        &text,
        "lsrtmp",
        &[
            "handshake: S0 received",
            "handshake: S2 received",
            "sending connect",
            "sending publish",
            "publish (type live, stream name <redacted",
            "onStatus: level 'status', code 'NetStream.Publish.Start'",
            "Set Chunk Size received",
            "Window Acknowledgement Size received",
            "sending deleteStream",
        ],
    );
    assert!(count_lines(&text, "lsrtmp", "message from the server: type") > 0);
    assert!(
        count_lines(
            &text,
            "lsrtmp",
            "command to the server: [String(\"publish\")"
        ) > 0
    );
    assert!(text.lines().any(|l| l.contains(" rsrtmpsink ")));
    // Logged and printed, the stream name is never spelled out, nor its token.
    assert_absent(&bytes, key.as_bytes(), "the stream key");
    assert_absent(&bytes, token.as_bytes(), "the token of the stream name");
}

#[test]
fn aes_keys_are_in_no_debug_log() {
    let dir = TempDir::new("secrets-hls");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let port = free_port();
    let log = dir.path().join("hls.log");
    let mut child = launch(
        dir.path(),
        &log,
        &[
            "videotestsrc",
            "num-buffers=120",
            "is-live=true",
            "!",
            "video/x-raw,width=160,height=120,framerate=30/1",
            "!",
            "x264enc",
            "tune=zerolatency",
            "speed-preset=ultrafast",
            "key-int-max=15",
            "!",
            "h264parse",
            "!",
            "rshlssink",
            &format!("location={}", out.join("segment%05d.ts").display()),
            &format!("playlist-location={}", out.join("playlist.m3u8").display()),
            "target-duration=1",
            "encryption=aes-128",
            "key-rotation=1",
            "playlist-type=event",
            &format!("http-port={port}"),
            "http-address=127.0.0.1",
        ],
    );
    // While it runs, a client fetches the playlist, a key and a segment from the built-in
    // server (its requests are logged too).
    let playlist = out.join("playlist.m3u8");
    let ready = wait_for(Duration::from_secs(60), || {
        playlist.exists() && !read_playlist(&playlist).segments.is_empty()
    });
    if !ready {
        drop(child.0.take());
        panic!("no segment within 60 s");
    }
    let (status, _, body) = http_request(port, "GET", "/playlist.m3u8");
    assert_eq!(status, 200);
    let served = m3u8_rs::parse_media_playlist_res(&body).expect("served playlist");
    let first = &served.segments[0];
    let key_uri = first.key.as_ref().and_then(|k| k.uri.clone()).expect("key");
    let (status, _, served_key) = http_request(port, "GET", &format!("/{key_uri}"));
    assert_eq!(status, 200);
    assert_eq!(served_key.len(), 16);
    let (status, _, _) = http_request(port, "GET", &format!("/{}", first.uri));
    assert_eq!(status, 200);
    wait_success(child, Duration::from_secs(120), "rshlssink");

    // Every key the run wrote (key-rotation=1: one per segment), and the one served.
    let mut keys: Vec<Vec<u8>> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".key"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    keys.push(served_key);
    assert!(keys.len() >= 3, "{} keys", keys.len());

    let bytes = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert_logged(
        &text,
        "lshls",
        &[
            "cut (",
            "playlist ",
            "new AES-128 key",
            "written (",
            "HTTP 127.0.0.1:",
        ],
    );
    for key in &keys {
        assert_eq!(key.len(), 16);
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_absent(&bytes, hex.as_bytes(), "an AES key (lower-case hex)");
        assert_absent(
            &bytes,
            hex.to_uppercase().as_bytes(),
            "an AES key (upper-case hex)",
        );
        // Debug formatting of a byte array: [12, 34, ...].
        let list = format!("{key:?}");
        assert_absent(&bytes, list.as_bytes(), "an AES key (byte list)");
        assert_absent(&bytes, key, "an AES key (raw bytes)");
    }
}

#[test]
fn publishers_credentials_are_in_no_server_log() {
    use md5::{Digest as _, Md5};
    let dir = TempDir::new("secrets-rtsp-record");
    let port = free_port();
    let password = "Pw_Rr5Tt9Yy3";
    let log = dir.path().join("server.log");
    let server = launch(
        dir.path(),
        &log,
        &[
            "rtspserversrc",
            "name=s",
            &format!("port={port}"),
            "mount-point=/rec",
            &format!("users=<\"alice:{password}\">"),
            "s.",
            "!",
            "fakesink",
        ],
    );
    // The stock publisher (Digest, MD5 without qop in 1.22) in a process of its own: only the
    // server's log is searched. It ends with EOS (a TEARDOWN, or only closing its connection);
    // the server then ends its pad.
    let url = format!("rtsp://127.0.0.1:{port}/rec");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read(&log).is_ok_and(|b| lines_with(&b, b"for publishers at").len() == 1) {
        assert!(Instant::now() < deadline, "rtspserversrc did not listen");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its own debug output stays low (only the server's log is searched), and it reads the
    // registry the server just wrote (same plugin path), so it starts without scanning the
    // plugins: the shared default registry is rewritten by every gst-launch-1.0 of other tests
    // with another plugin path. Its output goes to files, shown if it fails.
    let out_path = dir.path().join("publisher.out");
    let err_path = dir.path().join("publisher.err");
    let mut publisher = ChildGuard(Some(
        Command::new("gst-launch-1.0")
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("GST_REGISTRY", dir.path().join("registry.bin"))
            .env("GST_DEBUG", "*:2,rtspclientsink:5")
            .env("GST_DEBUG_NO_COLOR", "1")
            .env_remove("GST_DEBUG_FILE")
            .arg("-e")
            .args(
                format!(
                    "videotestsrc num-buffers=60 is-live=true \
                     ! video/x-raw,width=160,height=120,framerate=30/1 \
                     ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 \
                     ! rtspclientsink location={url} protocols=tcp user-id=alice \
                     user-pw={password}"
                )
                .split_whitespace(),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("spawn gst-launch-1.0"),
    ));
    // 60 frames (2 s live), then EOS: it ends within 3 s. But the stock rtspclientsink (1.22)
    // sometimes never posts EOS on a loaded machine: its EOS reaches its RTP session (BYE
    // sent), the server has every packet and the BYE and keeps sending receiver reports, yet
    // the pipeline never ends (seen once in ~20 runs beside two `yes`; killed by `timeout 60`
    // in CI). That is not what this test checks: once the server has logged the publication
    // (its RTP and a sender report) and 30 s have passed, the publisher is killed, which ends
    // the session as a closed connection does. Without that progress in 120 s it fails.
    let started = Instant::now();
    let recorded = || {
        let log = std::fs::read(&log).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        count_lines(&text, "lsrtsp", "first RTP packet") > 0
            && count_lines(&text, "lsrtsp", ": sender report ssrc") > 0
    };
    let child = publisher.0.as_mut().unwrap();
    let mut next_check = started + Duration::from_secs(30);
    let outcome = loop {
        if let Some(status) = child.try_wait().expect("wait publisher") {
            break Ok(status);
        }
        if Instant::now() >= next_check {
            if recorded() {
                eprintln!(
                    "rtspclientsink had not ended after {:?}: killed",
                    started.elapsed()
                );
                break Err(false);
            }
            next_check = Instant::now() + Duration::from_secs(1);
        }
        if started.elapsed() > Duration::from_secs(120) {
            break Err(true);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(publisher);
    if !matches!(outcome, Ok(s) if s.success()) && !matches!(outcome, Err(false)) {
        let server_log = std::fs::read(&log).unwrap_or_default();
        let server_lines: Vec<_> = String::from_utf8_lossy(&server_log)
            .lines()
            .filter(|l| l.contains(" lsrtsp ") && !l.contains(" LOG "))
            .map(|l| l.chars().take(300).collect::<String>())
            .collect();
        let stderr = std::fs::read(&err_path).unwrap_or_default();
        panic!(
            "rtspclientsink: {outcome:?} after {:?} (Err(true): no progress, killed)\n\
             --- stdout\n{}\n--- stderr (tail)\n{}\n\
             --- the server's lsrtsp debug lines (last 40)\n{}",
            started.elapsed(),
            String::from_utf8_lossy(&std::fs::read(&out_path).unwrap_or_default()),
            tail(&String::from_utf8_lossy(&stderr), 6000),
            server_lines[server_lines.len().saturating_sub(40)..].join("\n")
        );
    }
    wait_success(server, Duration::from_secs(60), "rtspserversrc");

    let bytes = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    // Not vacuous: the publication was authenticated and recorded, with its headers traced.
    assert_logged(
        &text,
        "lsrtsp",
        &[
            "ANNOUNCE refused: 401 Unauthorized: no credentials",
            "WWW-Authenticate: Digest realm=",
            "ANNOUNCE authenticated: user 'alice' (Digest MD5)",
            "SETUP authenticated: user 'alice' (Digest MD5)",
            "RECORD authenticated: user 'alice'",
            "request headers: ",
            "Authorization: <redacted>",
            "first RTP packet",
        ],
    );
    let ha1 = Md5::digest(format!("alice:GStreamer RTSP Server:{password}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert_absent(&bytes, password.as_bytes(), "the password");
    assert_absent(&bytes, ha1.as_bytes(), "the password's HA1");
    // The Digest answer (and the nonce it answers) travel only in Authorization.
    assert_absent(&bytes, b"response=", "a Digest response");
}
