//! rshlssink uploading to S3-compatible storage: a real s3s-fs 0.14.1 (a server that checks AWS
//! Signature V4, with an access key configured) on loopback; what it holds is listed and fetched
//! back with curl's own SigV4 signer (`--aws-sigv4`), not ours.
//!
//! Needs s3s-fs under `target/test-assets/s3s-fs/bin/` (`bash .ci/deps` installs it there).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::abr::{abr_sources, assert_uploaded_multivariant};
use common::hls::*;
use common::rtmp::{free_port, wait_listening};
use common::{ChildGuard, plugin_dir};
use gst::prelude::*;

const ACCESS_KEY: &str = "AKIDRSHLSSINKTEST";
/// With `/` and `+`, as AWS secrets have.
const SECRET: &str = "rshls/Secret+Key0123456789abcdefGHIJ";
const BUCKET: &str = "media";
/// SHA-256 of an empty body: s3s-fs wants x-amz-content-sha256, which curl 7.88 does not send.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn s3s_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-assets/s3s-fs/bin/s3s-fs");
    assert!(
        bin.exists(),
        "s3s-fs 0.14.1 is not installed at {} (run `bash .ci/deps`)",
        bin.display()
    );
    bin
}

/// s3s-fs on 127.0.0.1 with one access key, its data in a temporary directory.
struct S3s {
    _child: ChildGuard,
    dir: TempDir,
    port: u16,
}

/// An object fetched back: status, headers (lowercase names) and body.
struct Object {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Object {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl S3s {
    fn start() -> S3s {
        let dir = TempDir::new("s3s");
        std::fs::create_dir_all(dir.join("data").join(BUCKET)).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("s3s.log")).unwrap();
        let child = Command::new(s3s_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET])
            .arg(dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        let child = ChildGuard(Some(child));
        wait_listening(port, Duration::from_secs(20), "s3s-fs");
        S3s {
            _child: child,
            dir,
            port,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A GET signed by curl; the status, headers and body.
    fn get(&self, path_and_query: &str) -> Object {
        let body = self.dir.join("curl.body");
        let _ = std::fs::remove_file(&body);
        let (out, timed_out) = common::run(
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "20",
                    "--aws-sigv4",
                    "aws:amz:us-east-1:s3",
                ])
                .args(["--user", &format!("{ACCESS_KEY}:{SECRET}")])
                .args(["-H", &format!("x-amz-content-sha256: {EMPTY_SHA256}")])
                .args(["-D", "-", "-o"])
                .arg(&body)
                .arg(format!("{}/{BUCKET}/{path_and_query}", self.endpoint())),
            Duration::from_secs(30),
        );
        assert!(
            !timed_out && out.status.success(),
            "curl {path_and_query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let head = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Object {
            status,
            headers,
            body: std::fs::read(&body).unwrap_or_default(),
        }
    }

    /// The keys under `prefix` (ListObjectsV2), without the prefix, sorted.
    fn list(&self, prefix: &str) -> Vec<String> {
        let o = self.get(&format!(
            "?list-type=2&prefix={}",
            prefix.replace('/', "%2F")
        ));
        let xml = String::from_utf8_lossy(&o.body).into_owned();
        assert_eq!(o.status, 200, "list {prefix}: {xml}");
        let mut keys: Vec<String> = xml
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>"))
            .map(|(k, _)| k.strip_prefix(prefix).unwrap_or(k).to_owned())
            .collect();
        keys.sort();
        keys
    }
}

/// A pipeline into `rshlssink location=s3://media/{prefix} {props}` with the test's credentials
/// (set as properties, not on the command line) and the endpoint `endpoint`.
fn s3_pipeline(
    endpoint: &str,
    prefix: &str,
    secret: &str,
    props: &str,
    sources: &str,
) -> gst::Pipeline {
    let (pipeline, sink) = pipeline(&format!("location=s3://{BUCKET}/{prefix} {props}"), sources);
    sink.set_property("s3-endpoint", endpoint);
    sink.set_property("s3-access-key-id", ACCESS_KEY);
    sink.set_property("s3-secret-access-key", secret);
    pipeline
}

const PROPS: &str = "target-duration=1 playlist-length=3 max-files=4";

/// [`video`] encoded by one x264 thread, so that two runs make the same bytes.
fn same_video(frames: u32, gop: u32) -> String {
    video(frames, gop).replace("x264enc ", "x264enc threads=1 ")
}

#[test]
fn a_stream_lands_in_the_bucket_as_a_local_run_writes_it() {
    let s3 = S3s::start();
    let p = s3_pipeline(&s3.endpoint(), "live", SECRET, PROPS, &same_video(300, 30));
    run_to_end(&p, Duration::from_secs(60)).expect("EOS");
    let local = TempDir::new("local");
    run_sink(
        &format!("location={} {PROPS}", local.str()),
        &same_video(300, 30),
    );
    assert_eq!(
        local.files(),
        [
            "playlist.m3u8",
            "segment00006.ts",
            "segment00007.ts",
            "segment00008.ts",
            "segment00009.ts"
        ]
    );
    // Listed: the same names, so the six expired segments were deleted.
    assert_eq!(s3.list("live/"), local.files());
    // Fetched back: the same bytes, stored with their types and caching.
    let fetched = TempDir::new("fetched");
    for name in local.files() {
        let o = s3.get(&format!("live/{name}"));
        assert_eq!(o.status, 200, "{name}");
        let written = std::fs::read(local.join(&name)).unwrap();
        assert!(
            o.body == written,
            "{name} differs from the local run's ({} bytes, {} locally)",
            o.body.len(),
            written.len()
        );
        let (ct, cc) = if name.ends_with(".m3u8") {
            ("application/vnd.apple.mpegurl", "no-cache")
        } else {
            ("video/mp2t", "public, max-age=86400")
        };
        assert_eq!(o.header("content-type"), Some(ct), "{name}");
        assert_eq!(o.header("cache-control"), Some(cc), "{name}");
        std::fs::write(fetched.join(&name), &o.body).unwrap();
    }
    let playlist = read_playlist(&fetched.join("playlist.m3u8"));
    assert!(playlist.end_list);
    assert_eq!(playlist.media_sequence, 7);
    assert_segments_readable(fetched.path(), &playlist);
    let probe = ffprobe(&fetched.join("playlist.m3u8").to_string_lossy(), &[]);
    assert_eq!(probe.streams, [("h264".to_string(), "video".to_string())]);
    // An expired segment is gone for S3 readers too.
    assert_eq!(s3.get("live/segment00000.ts").status, 404);
}

/// A multivariant stream in the bucket: the multivariant playlist, every rendition's media
/// playlist (and I-frame playlist) and its segments (expired ones deleted per rendition),
/// fetched back and read by ffprobe as a whole: three H.264 variants and the AAC group.
#[test]
fn a_multivariant_stream_lands_in_the_bucket() {
    let s3 = S3s::start();
    let p = s3_pipeline(
        &s3.endpoint(),
        "abr",
        SECRET,
        "target-duration=1 playlist-length=3 max-files=4 i-frame-playlist=true",
        &abr_sources(false, Some(240)),
    );
    run_to_end(&p, Duration::from_secs(60)).expect("EOS");
    let keys = s3.list("abr/");
    let fetched = TempDir::new("fetched");
    for name in &keys {
        let o = s3.get(&format!("abr/{name}"));
        assert_eq!(o.status, 200, "{name}");
        if name.ends_with(".m3u8") {
            assert_eq!(
                o.header("content-type"),
                Some("application/vnd.apple.mpegurl"),
                "{name}"
            );
            assert_eq!(o.header("cache-control"), Some("no-cache"), "{name}");
        }
        std::fs::write(fetched.join(name), &o.body).unwrap();
    }
    assert_uploaded_multivariant(fetched.path(), &keys, 4);
    let iframes: Vec<&String> = keys
        .iter()
        .filter(|k| k.ends_with("-iframes.m3u8"))
        .collect();
    assert_eq!(
        iframes,
        [
            "video_0-iframes.m3u8",
            "video_1-iframes.m3u8",
            "video_2-iframes.m3u8"
        ]
    );
    assert_eq!(s3.get("abr/video_1_segment00000.ts").status, 404);
    let probe = ffprobe(&fetched.join("playlist.m3u8").to_string_lossy(), &[]);
    let h264 = probe.streams.iter().filter(|(c, _)| c == "h264").count();
    assert_eq!(h264, 3, "{probe:?}");
    assert!(probe.streams.iter().any(|(c, _)| c == "aac"), "{probe:?}");
}

#[test]
fn a_wrong_secret_is_a_clear_error() {
    let s3 = S3s::start();
    let wrong = "not-the-Secret-0123456789";
    let p = s3_pipeline(&s3.endpoint(), "wrong", wrong, PROPS, &video(60, 30));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("an error within 60 s");
    p.set_state(gst::State::Null).unwrap();
    let gst::MessageView::Error(e) = msg.view() else {
        panic!("EOS although every upload was refused");
    };
    let text = e.error().to_string();
    assert!(
        e.error().matches(gst::ResourceError::NotAuthorized),
        "{:?}",
        e.error()
    );
    for part in [
        "PUT s3://media/wrong/segment00000.ts",
        "HTTP 403",
        "SignatureDoesNotMatch",
    ] {
        assert!(text.contains(part), "'{part}' not in: {text}");
    }
    let debug = format!("{text} {:?}", e.debug());
    assert!(
        !debug.contains(wrong) && !debug.contains("X-Amz-"),
        "{debug}"
    );
    assert!(s3.list("wrong/").is_empty());
}

/// `gst-launch-1.0 -e` 2 s of video into `rshlssink {sink}` with `env` set and everything
/// logged at level 9; the log.
fn launch_logged(dir: &Path, sink: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let log = dir.join("gst.log");
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", dir.join("registry.bin"))
        .env("GST_DEBUG", "*:9")
        .env("GST_DEBUG_NO_COLOR", "1")
        .env_remove("GST_DEBUG_FILE");
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.args(["-e", "videotestsrc", "num-buffers=60", "!"])
        .args(["video/x-raw,width=160,height=120,framerate=30/1", "!"])
        .args(["x264enc", "speed-preset=ultrafast", "key-int-max=30", "!"])
        .args(["h264parse", "!", "rshlssink"])
        .args(sink)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let mut child = ChildGuard(Some(cmd.spawn().expect("spawn gst-launch-1.0")));
    let c = child.0.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "gst-launch-1.0 did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "gst-launch-1.0 failed: {status}");
    std::fs::read(&log).unwrap()
}

/// GStreamer's parser echoes the command line (where the user typed a property's value): those
/// lines alone are excused, as in tests/secrets.rs.
const COMMAND_LINE_ECHO: &[&str] = &[
    " gstparse.c:",
    " parse.l:",
    " grammar.y:",
    " grammar.tab.c:",
    ":gst_parse_unescape:",
    " gstutils.c:",
];

fn assert_absent(log: &[u8], secret: &str, what: &str) {
    let lines: Vec<String> = log
        .split(|&b| b == b'\n')
        .filter(|l| l.windows(secret.len()).any(|w| w == secret.as_bytes()))
        .map(|l| String::from_utf8_lossy(&l[..l.len().min(600)]).into_owned())
        .filter(|l| !COMMAND_LINE_ECHO.iter().any(|f| l.contains(f)))
        .collect();
    assert!(
        lines.is_empty(),
        "{what} is in {} lines of the debug log:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

#[test]
fn credentials_from_the_environment_or_properties_never_reach_the_debug_log() {
    let s3 = S3s::start();
    let dir = TempDir::new("s3-secrets");
    let token = "FwoGZXIvYXdzEXAMPLEsessionTOKEN";
    let endpoint = s3.endpoint();
    let log = launch_logged(
        dir.path(),
        &[
            "location=s3://media/env",
            "target-duration=1",
            "playlist-length=1",
            "max-files=1",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", token),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL_S3", &endpoint),
        ],
    );
    assert_eq!(s3.list("env/"), ["playlist.m3u8", "segment00001.ts"]);
    let text = String::from_utf8_lossy(&log);
    // Not vacuous: the S3 output's steps are in the log.
    for step in [
        "S3 output: endpoint http://127.0.0.1:",
        "credentials from the environment with a session token",
        "upload: PUT s3://media/env/segment00000.ts answered HTTP 200",
        "upload: DELETE s3://media/env/segment00000.ts answered HTTP 204",
        "PUT s3://media/env/playlist.m3u8 (",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(" lshls ") && l.contains(step)),
            "no lshls line with '{step}' in {} bytes of log",
            log.len()
        );
    }
    assert_absent(&log, SECRET, "the secret access key");
    assert_absent(&log, token, "the session token");
    // Nor any request's signature or credential scope.
    assert_absent(&log, "X-Amz-Signature", "a signature");
    assert_absent(&log, "X-Amz-Credential", "a credential scope");

    // The same with the secrets as properties (echoed by GStreamer's parser alone).
    let log = launch_logged(
        dir.path(),
        &[
            "location=s3://media/props",
            "target-duration=1",
            &format!("s3-endpoint={endpoint}"),
            &format!("s3-access-key-id={ACCESS_KEY}"),
            &format!("s3-secret-access-key={SECRET}"),
            &format!("s3-session-token={token}"),
        ],
        &[],
    );
    assert_eq!(
        s3.list("props/"),
        ["playlist.m3u8", "segment00000.ts", "segment00001.ts"]
    );
    assert!(
        String::from_utf8_lossy(&log).contains("credentials from the s3-* properties"),
        "{} bytes of log",
        log.len()
    );
    assert_absent(&log, SECRET, "the secret access key");
    assert_absent(&log, token, "the session token");
    assert_absent(&log, "X-Amz-Signature", "a signature");
}

/// A TCP relay to `upstream` that counts the connections it accepts and can cut them all (as a
/// server or load balancer closing idle connections does).
struct CountingProxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingProxy {
    fn start(upstream: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, open, stop) = (accepted.clone(), open.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                    open.lock().unwrap().push(client.try_clone().unwrap());
                    open.lock().unwrap().push(server.try_clone().unwrap());
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16 * 1024];
                            while let Ok(n) = from.read(&mut buf) {
                                if n == 0 || to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = to.shutdown(Shutdown::Write);
                        });
                    }
                }
            })
        };
        CountingProxy {
            port,
            accepted,
            open,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Closes every relayed connection.
    fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs to EOS (or an error) within `timeout`, calling `during` from `after` on until it returns
/// true; the warnings posted on the way.
fn run_watching(
    pipeline: &gst::Pipeline,
    timeout: Duration,
    after: Duration,
    mut during: impl FnMut() -> bool,
) -> (Result<(), String>, Vec<String>) {
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let start = Instant::now();
    let mut done = false;
    let mut warnings = Vec::new();
    let result = loop {
        if start.elapsed() >= timeout {
            break Err(format!("no EOS within {timeout:?}"));
        }
        if !done && start.elapsed() >= after {
            done = during();
        }
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(50),
            &[
                gst::MessageType::Eos,
                gst::MessageType::Error,
                gst::MessageType::Warning,
            ],
        ) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => break Err(e.error().to_string()),
            gst::MessageView::Warning(w) => warnings.push(w.error().to_string()),
            _ => {}
        }
    };
    pipeline.set_state(gst::State::Null).unwrap();
    (result, warnings)
}

#[test]
fn uploads_share_one_kept_connection_and_survive_its_close() {
    let s3 = S3s::start();
    let proxy = CountingProxy::start(s3.port);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    // 10 segments, up to 10 playlists (one waiting in the queue is replaced by a newer one), 6
    // deletions: 20 requests or more.
    let p = s3_pipeline(&endpoint, "reuse", SECRET, PROPS, &video(300, 30));
    run_to_end(&p, Duration::from_secs(60)).expect("EOS");
    assert_eq!(s3.list("reuse/").len(), 5);
    assert_eq!(
        proxy.accepted(),
        1,
        "every request should have gone over one connection"
    );

    // A live stream whose kept connection is closed by the other end half-way: the next
    // upload goes on a new connection, no upload fails (the output worker's decisions, as
    // GST_DEBUG=lshls:5 shows them, name no failed attempt) or is given up.
    let records: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = records.clone();
    let lshls = gst::DebugCategory::get("lshls").expect("the lshls category");
    lshls.set_threshold(gst::DebugLevel::Debug);
    let handler = gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
        let text = msg.get().map(|m| m.to_string()).unwrap_or_default();
        if cat.name() == "lshls" && text.contains("s3://media/cut/") {
            sink.lock().unwrap().push(text);
        }
    });
    let proxy = CountingProxy::start(s3.port);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let p = s3_pipeline(
        &endpoint,
        "cut",
        SECRET,
        "target-duration=1 playlist-type=vod",
        "videotestsrc is-live=true num-buffers=150 ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=30 ! h264parse ! h.",
    );
    let (result, warnings) = run_watching(
        &p,
        Duration::from_secs(60),
        Duration::from_millis(2000),
        // Once the kept connection exists (a loaded machine may start late).
        || {
            let open = proxy.accepted() > 0;
            if open {
                proxy.cut();
            }
            open
        },
    );
    gst::log::remove_log_function(handler);
    lshls.set_threshold(gst::DebugLevel::None);
    result.expect("EOS");
    assert!(warnings.is_empty(), "{warnings:?}");
    let records = records.lock().unwrap();
    assert!(
        records.iter().any(|r| r.contains("answered HTTP 200")),
        "{records:#?}"
    );
    let failed: Vec<&String> = records
        .iter()
        .filter(|r| r.contains("failed (attempt"))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(
        s3.list("cut/"),
        [
            "playlist.m3u8",
            "segment00000.ts",
            "segment00001.ts",
            "segment00002.ts",
            "segment00003.ts",
            "segment00004.ts"
        ]
    );
    assert_eq!(
        proxy.accepted(),
        2,
        "one connection before the cut, one after"
    );
}
