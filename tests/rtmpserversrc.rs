//! rtmpserversrc with real publishers we did not write: ffmpeg (`-f flv rtmp://`, `rtmps://`),
//! the stock rtmp2sink (rtmp and rtmps), the stock rtmpsink (librtmp, the digest handshake) and
//! our rsrtmpsink. Each publishes the same 3 s H.264+AAC file; the recording (rtmpserversrc !
//! filesink) is decoded by ffprobe with every frame counted, or the stream is decoded in-process
//! through flvdemux; both must have every frame of the file. Loopback only, every wait bounded,
//! every child killed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gst::prelude::*;

use common::rtmp::{TempDir, probe_file, self_signed_cert};
use common::{ChildGuard, assert_ours, init, run};

/// The input every publisher sends: 3 s of H.264 (30 fps, a keyframe a second) and AAC, with the
/// frames ffprobe counts in it.
use common::rtmp::test_flv as input;

/// Our rtmpserversrc on a free port in a pipeline of this process.
struct Server {
    pipeline: gst::Pipeline,
    src: gst::Element,
    port: u16,
    dir: TempDir,
    video: Arc<AtomicU64>,
    audio: Arc<AtomicU64>,
}

enum Out {
    /// `! filesink location=DIR/out.flv`
    Record,
    /// `! flvdemux`, each stream parsed, decoded and counted.
    Decode,
    /// As Decode, into sinks that synchronise on the clock and drop what is 20 ms late.
    DecodeSync,
}

impl Server {
    fn start(props: &str, out: Out) -> Server {
        init();
        let dir = TempDir::new("rtmpserversrc");
        let tail = match out {
            Out::Record => format!(
                "filesink name=sink location={}",
                dir.path().join("out.flv").display()
            ),
            Out::Decode => "flvdemux name=d \
                 d.video ! queue ! h264parse ! avdec_h264 ! fakesink name=v async=false \
                 d.audio ! queue ! aacparse ! avdec_aac ! fakesink name=a async=false"
                .to_owned(),
            Out::DecodeSync => "flvdemux name=d \
                 d.video ! queue ! h264parse ! avdec_h264 ! fakesink name=v async=false sync=true \
                     qos=false max-lateness=20000000 \
                 d.audio ! queue ! aacparse ! avdec_aac ! fakesink name=a async=false sync=true \
                     qos=false max-lateness=20000000"
                .to_owned(),
        };
        let desc = format!("rtmpserversrc name=src address=127.0.0.1 port=0 {props} ! {tail}");
        let pipeline = gst::parse::launch(&desc)
            .unwrap_or_else(|e| panic!("{desc}: {e}"))
            .downcast::<gst::Pipeline>()
            .unwrap();
        let src = pipeline.by_name("src").unwrap();
        assert_ours(&src);
        let video = Arc::new(AtomicU64::new(0));
        let audio = Arc::new(AtomicU64::new(0));
        for (name, counter) in [("v", &video), ("a", &audio)] {
            if let Some(sink) = pipeline.by_name(name) {
                let c = counter.clone();
                sink.static_pad("sink").unwrap().add_probe(
                    gst::PadProbeType::BUFFER,
                    move |_, _| {
                        c.fetch_add(1, Ordering::SeqCst);
                        gst::PadProbeReturn::Ok
                    },
                );
            }
        }
        pipeline.set_state(gst::State::Playing).unwrap();
        let port = src.property::<i32>("bound-port");
        assert!(port > 0, "bound-port {port}");
        Server {
            pipeline,
            src,
            port: port as u16,
            dir,
            video,
            audio,
        }
    }

    fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.port)
    }

    fn recording(&self) -> PathBuf {
        self.dir.path().join("out.flv")
    }

    fn stats(&self) -> gst::Structure {
        self.src.property::<gst::Structure>("stats")
    }

    /// Waits for EOS (the publisher left) or an error.
    fn wait_eos(&self, timeout: Duration) -> Result<Vec<gst::Structure>, String> {
        let bus = self.pipeline.bus().unwrap();
        let deadline = Instant::now() + timeout;
        let mut messages = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(left.as_nanos() as u64),
                &[
                    gst::MessageType::Eos,
                    gst::MessageType::Error,
                    gst::MessageType::Element,
                ],
            ) else {
                return Err(format!("no EOS within {timeout:?}"));
            };
            match msg.view() {
                gst::MessageView::Eos(_) => return Ok(messages),
                gst::MessageView::Error(e) => {
                    return Err(format!("{} ({:?})", e.error(), e.debug()));
                }
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure() {
                        messages.push(s.to_owned());
                    }
                }
                _ => {}
            }
        }
    }

    /// Stops the pipeline and counts the recording's frames with ffprobe: (video, audio).
    fn recorded(&self) -> (u64, u64) {
        self.pipeline.set_state(gst::State::Null).unwrap();
        let probe = probe_file(&self.recording());
        let v = probe.stream("video").map_or(0, |(c, n)| {
            assert_eq!(c, "h264");
            n
        });
        let a = probe.stream("audio").map_or(0, |(c, n)| {
            assert_eq!(c, "aac");
            n
        });
        (v, a)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// ffmpeg publishing the input in real time, stream copied, to `url`.
fn ffmpeg_publish(url: &str) -> ChildGuard {
    ChildGuard::spawn(Command::new("ffmpeg").args([
        "-v",
        "error",
        "-re",
        "-i",
        input().path.to_str().unwrap(),
        "-c",
        "copy",
        "-f",
        "flv",
        url,
    ]))
}

/// A gst-launch-1.0 child publishing the input, paced by the clock, through `sink`.
fn gst_publish(sink: &str) -> ChildGuard {
    let pipeline = format!(
        "filesrc location={} ! flvdemux name=d \
         d.video ! queue ! h264parse ! identity sync=true ! m. \
         d.audio ! queue ! aacparse ! identity sync=true ! m. \
         flvmux name=m streamable=true ! {sink}",
        input().path.display()
    );
    ChildGuard::spawn(
        Command::new("gst-launch-1.0")
            .env("GST_PLUGIN_PATH", plugin_dir())
            // A registry of its own beside the plugin: with the shared default one, every run
            // with another plugin path made the next stock gst-launch-1.0 rescan all plugins.
            .env(
                "GST_REGISTRY",
                plugin_dir().join("gst-registry-rtmp-tests.bin"),
            )
            .arg("-e")
            .args(pipeline.split_whitespace()),
    )
}

/// target/debug: our plugin for gst-launch-1.0 children (for rsrtmpsink).
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_owned()
}

fn wait_child(child: ChildGuard, timeout: Duration, what: &str) -> std::process::Output {
    let (out, timed_out) = child.wait_output(timeout);
    assert!(
        !timed_out,
        "{what} timed out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_every_frame(got: (u64, u64), what: &str) {
    let i = input();
    assert_eq!(
        got,
        (i.video, i.audio),
        "{what}: (video, audio) frames received vs in the file"
    );
}

/// Collects the `lsrtmp` and `rtmpserversrc` debug lines of this process.
fn capture_logs() -> Arc<Mutex<Vec<String>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        init();
        let logs: Arc<Mutex<Vec<String>>> = Default::default();
        let l = logs.clone();
        gst::log::remove_default_log_function();
        gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
            if (cat.name() == "lsrtmp" || cat.name() == "rtmpserversrc")
                && let Some(m) = msg.get()
            {
                l.lock().unwrap().push(m.to_string());
            }
        });
        gst::log::set_threshold_for_name("lsrtmp", gst::DebugLevel::Debug);
        gst::log::set_threshold_for_name("rtmpserversrc", gst::DebugLevel::Debug);
        logs
    })
    .clone()
}

fn wait_log(logs: &Mutex<Vec<String>>, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if logs.lock().unwrap().iter().any(|l| pred(l)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn ffmpeg_publishes_every_frame_into_a_recording() {
    let server = Server::start("application=live stream-key=key", Out::Record);
    let ffmpeg = ffmpeg_publish(&server.url("key"));
    let out = wait_child(ffmpeg, Duration::from_secs(30), "ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages = server.wait_eos(Duration::from_secs(10)).expect("EOS");
    assert!(
        messages
            .iter()
            .any(|m| m.name() == "rtmpserversrc-publisher-started")
    );
    let left = messages
        .iter()
        .find(|m| m.name() == "rtmpserversrc-publisher-left")
        .expect("publisher-left message");
    assert!(left.get::<bool>("eos").unwrap());
    let stats = server.stats();
    assert_eq!(stats.get::<u64>("frames-dropped").unwrap(), 0);
    assert_eq!(stats.get::<u64>("video-frames").unwrap(), input().video);
    assert_eq!(stats.get::<u64>("audio-frames").unwrap(), input().audio);
    assert_eq!(stats.get::<String>("video-codec").unwrap(), "h264");
    assert_eq!(stats.get::<String>("audio-codec").unwrap(), "aac");
    assert_eq!(stats.get::<u64>("publishers").unwrap(), 1);
    // Every byte of the file's tags came over RTMP (with chunk headers on top).
    let file_size = std::fs::metadata(&input().path).unwrap().len();
    let bytes = stats.get::<u64>("bytes-received").unwrap();
    assert!(
        bytes > file_size * 9 / 10,
        "{bytes} bytes received, the file has {file_size}"
    );
    assert_every_frame(server.recorded(), "ffmpeg rtmp://");
}

#[test]
fn flvdemux_decodes_every_frame_ffmpeg_publishes() {
    let server = Server::start("", Out::Decode);
    let ffmpeg = ffmpeg_publish(&server.url("anykey?token=1"));
    let out = wait_child(ffmpeg, Duration::from_secs(30), "ffmpeg");
    assert!(out.status.success());
    server.wait_eos(Duration::from_secs(10)).expect("EOS");
    let got = (
        server.video.load(Ordering::SeqCst),
        server.audio.load(Ordering::SeqCst),
    );
    assert_every_frame(got, "decoded through flvdemux");
}

#[test]
fn stock_rtmp2sink_publishes_every_frame() {
    let server = Server::start("", Out::Record);
    let child = gst_publish(&format!("rtmp2sink location={}", server.url("key")));
    let out = wait_child(child, Duration::from_secs(30), "rtmp2sink");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_eos(Duration::from_secs(10)).expect("EOS");
    assert_every_frame(server.recorded(), "rtmp2sink");
}

#[test]
fn stock_librtmp_rtmpsink_publishes_every_frame_with_the_digest_handshake() {
    let logs = capture_logs();
    let server = Server::start("", Out::Record);
    let child = gst_publish(&format!("rtmpsink location={}", server.url("key")));
    let out = wait_child(child, Duration::from_secs(30), "rtmpsink");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // librtmp sends no FCUnpublish/deleteStream it waits for; it closes.
    server.wait_eos(Duration::from_secs(10)).expect("EOS");
    assert_every_frame(server.recorded(), "librtmp rtmpsink");
    let l = logs.lock().unwrap();
    assert!(
        l.iter()
            .any(|l| l.contains("digest handshake, S1 and S2 signed")),
        "librtmp used the digest handshake: {:?}",
        l.iter()
            .filter(|l| l.contains("handshake"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn our_rsrtmpsink_publishes_every_frame() {
    let server = Server::start("", Out::Record);
    let child = gst_publish(&format!("rsrtmpsink location={}", server.url("key")));
    let out = wait_child(child, Duration::from_secs(30), "rsrtmpsink");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_eos(Duration::from_secs(10)).expect("EOS");
    assert_every_frame(server.recorded(), "rsrtmpsink");
}

fn tls_props(dir: &Path) -> String {
    let (cert, key) = self_signed_cert(dir, "IP:127.0.0.1");
    format!(
        "tls-certificate-file={} tls-key-file={}",
        cert.display(),
        key.display()
    )
}

#[test]
fn rtmps_from_ffmpeg_and_rtmp2sink() {
    let certs = TempDir::new("rtmpserversrc-certs");
    let props = tls_props(certs.path());
    let server = Server::start(&props, Out::Record);
    let url = server.url("key").replace("rtmp://", "rtmps://");
    let out = wait_child(
        ffmpeg_publish(&url),
        Duration::from_secs(30),
        "ffmpeg rtmps",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_eos(Duration::from_secs(10)).expect("EOS");
    assert_every_frame(server.recorded(), "ffmpeg rtmps://");

    let server = Server::start(&props, Out::Record);
    let url = server.url("key").replace("rtmp://", "rtmps://");
    let child = gst_publish(&format!("rtmp2sink location={url} tls-validation-flags=0"));
    let out = wait_child(child, Duration::from_secs(30), "rtmp2sink rtmps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_eos(Duration::from_secs(10)).expect("EOS");
    assert_every_frame(server.recorded(), "rtmp2sink rtmps://");
}

#[test]
fn refused_publishes_are_the_clients_errors() {
    let logs = capture_logs();
    let server = Server::start("application=live stream-key=S3cretKey", Out::Record);
    // A wrong key, and a wrong application.
    for url in [
        server.url("WrongKey9"),
        format!("rtmp://127.0.0.1:{}/other/S3cretKey", server.port),
    ] {
        let out = wait_child(ffmpeg_publish(&url), Duration::from_secs(20), "ffmpeg");
        assert!(!out.status.success(), "ffmpeg to {url} succeeded");
    }
    assert!(wait_log(&logs, Duration::from_secs(5), |l| l
        .contains("publish refused: wrong stream key")));
    assert!(wait_log(&logs, Duration::from_secs(5), |l| l
        .contains("connect to application 'other' refused")));
    // The application's handler: sees app, key, address and query, and says no.
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let s = seen.clone();
    server.src.connect("publish", false, move |args| {
        let v: Vec<String> = args[1..]
            .iter()
            .map(|a| a.get::<String>().unwrap())
            .collect();
        s.lock().unwrap().push(v.join(" "));
        Some(false.to_value())
    });
    let out = wait_child(
        ffmpeg_publish(&server.url("S3cretKey?token=abc")),
        Duration::from_secs(20),
        "ffmpeg",
    );
    assert!(!out.status.success());
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["live S3cretKey 127.0.0.1 token=abc"]
    );
    assert!(wait_log(&logs, Duration::from_secs(5), |l| l
        .contains("publish handler said no")));
    let stats = server.stats();
    assert_eq!(stats.get::<u64>("publishes-refused").unwrap(), 2);
    // No key or token in any log line.
    for secret in ["S3cretKey", "WrongKey9", "token=abc"] {
        let l = logs.lock().unwrap();
        let leaked: Vec<_> = l.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaked.is_empty(), "{secret} logged: {leaked:?}");
    }
}

/// Waits until the element says a publisher publishes.
fn wait_publishing(server: &Server, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !server.stats().get::<bool>("publishing").unwrap() {
        assert!(Instant::now() < deadline, "nobody publishes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_publisher_is_refused_while_the_first_goes_on() {
    let logs = capture_logs();
    let server = Server::start("", Out::Record);
    let first = ffmpeg_publish(&server.url("key"));
    wait_publishing(&server, Duration::from_secs(10));
    let second = wait_child(
        ffmpeg_publish(&server.url("key")),
        Duration::from_secs(20),
        "second ffmpeg",
    );
    assert!(!second.status.success(), "the second publisher was taken");
    assert!(wait_log(&logs, Duration::from_secs(5), |l| l
        .contains("publish refused: publisher 1 from 127.0.0.1")
        && l.contains("takeover=false")));
    let out = wait_child(first, Duration::from_secs(30), "first ffmpeg");
    assert!(out.status.success());
    server.wait_eos(Duration::from_secs(10)).expect("EOS");
    assert_every_frame(server.recorded(), "the first publisher, undisturbed");
}

#[test]
fn takeover_replaces_the_publisher_and_the_stream_goes_on() {
    let server = Server::start("takeover=true", Out::Record);
    let first = ffmpeg_publish(&server.url("key"));
    wait_publishing(&server, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let second = ffmpeg_publish(&server.url("key"));
    let out = wait_child(second, Duration::from_secs(30), "second ffmpeg");
    assert!(out.status.success());
    let first = wait_child(first, Duration::from_secs(10), "first ffmpeg");
    assert!(!first.status.success(), "the first publisher was cut off");
    // One EOS, when the second leaves; the first's end was not the stream's.
    let messages = server.wait_eos(Duration::from_secs(10)).expect("EOS");
    let left: Vec<_> = messages
        .iter()
        .filter(|m| m.name() == "rtmpserversrc-publisher-left")
        .collect();
    assert_eq!(left.len(), 1, "{messages:?}");
    assert_eq!(server.stats().get::<u64>("publishers").unwrap(), 2);
    let (v, a) = server.recorded();
    let i = input();
    assert!(
        v > i.video && a > i.audio,
        "part of the first and all of the second: {v}/{a}"
    );
}

#[test]
fn wait_for_next_publisher_continues_the_stream() {
    let server = Server::start("wait-for-next-publisher=true", Out::Record);
    for n in 0..2 {
        let out = wait_child(
            ffmpeg_publish(&server.url("key")),
            Duration::from_secs(30),
            "ffmpeg",
        );
        assert!(out.status.success(), "publisher {n}");
    }
    // Both publications went through; no EOS came: end the stream ourselves.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().get::<u64>("video-frames").unwrap() < 2 * input().video {
        assert!(Instant::now() < deadline, "{}", server.stats());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.pipeline.send_event(gst::event::Eos::new()));
    server.wait_eos(Duration::from_secs(10)).expect("EOS");
    let i = input();
    let probe = probe_file(&server.recording());
    assert_eq!(probe.stream("video").unwrap().1, 2 * i.video);
    assert_eq!(probe.stream("audio").unwrap().1, 2 * i.audio);
    // The second publication's timestamps continue after the first's (6 s in all).
    let (out, _) = run(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=dts_time",
            "-of",
            "csv=p=0",
            server.recording().to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    );
    let dts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(dts.windows(2).all(|w| w[0] <= w[1]), "timestamps go back");
    let span = dts.last().unwrap() - dts.first().unwrap();
    assert!(span > 5.5, "the video spans {span} s");
}

#[test]
fn servers_run_on_the_shared_runtime_and_free_their_ports_at_once() {
    init();
    // Start the shared runtime first, so that its workers are not counted as new.
    drop(Server::start("", Out::Record));
    let before = common::threads_by_name();
    let servers: Vec<Server> = (0..5).map(|_| Server::start("", Out::Record)).collect();
    let after = common::threads_by_name();
    let new: Vec<(String, usize)> = after
        .iter()
        .filter_map(|(name, n)| {
            let was = before.get(name).copied().unwrap_or(0);
            (*n > was).then(|| (name.clone(), n - was))
        })
        .collect();
    // Only GStreamer's streaming threads, one per source (`src:src`; a pool thread may not be
    // renamed yet and still carry its creator's name; one freed by the first server may be
    // reused); no runtime worker, nothing of ours.
    let total: usize = new.iter().map(|(_, n)| n).sum();
    assert!(total <= 5, "new threads: {new:?}");
    assert!(
        new.iter().all(|(name, _)| name != "livestreaming-rt"
            && !name.starts_with("rtmp")
            && !name.starts_with("tokio")),
        "threads of our own: {new:?}"
    );
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    for s in &servers {
        s.pipeline.set_state(gst::State::Null).unwrap();
    }
    for port in ports {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} still taken after NULL: {e}"));
    }
}

#[test]
fn synchronised_sinks_render_every_frame_on_time() {
    // A buffer more than 20 ms late is dropped by the sink, not rendered: the sinks' own
    // statistics tell.
    let server = Server::start("latency=300", Out::DecodeSync);
    let mut q = gst::query::Latency::new();
    assert!(server.src.static_pad("src").unwrap().query(&mut q));
    let (live, min, _) = q.result();
    assert!(live && min >= gst::ClockTime::from_mseconds(300), "{min}");
    let out = wait_child(
        ffmpeg_publish(&server.url("key")),
        Duration::from_secs(30),
        "ffmpeg",
    );
    assert!(out.status.success());
    server.wait_eos(Duration::from_secs(10)).expect("EOS");
    for (name, expected) in [("v", input().video), ("a", input().audio)] {
        let sink = server.pipeline.by_name(name).unwrap();
        let stats = sink.property::<gst::Structure>("stats");
        let rendered = stats.get::<u64>("rendered").unwrap();
        let dropped = stats.get::<u64>("dropped").unwrap();
        // Every frame reaches the sink (no QoS: a decoder skipping frames would hide late
        // ones), and on time: wrong timestamps or latency would make most of them late. A
        // machine loaded by the parallel test run may delay one now and then.
        assert_eq!(rendered + dropped, expected, "{name}: {stats}");
        assert!(dropped <= expected / 50, "{name}: {stats}");
    }
}

/// A plain TCP publisher is read on a thread of its own (`rtmpsrvsrc-net`) once its publish is
/// accepted; going to NULL mid-publication shuts its socket: the thread ends the connection with
/// its reason before the state change returns, the publisher sees its connection end, and the
/// port binds again at once.
#[test]
fn a_publisher_has_a_thread_that_ends_when_the_element_stops() {
    let logs = capture_logs();
    let server = Server::start("", Out::Record);
    let publisher = ffmpeg_publish(&server.url("key"));
    wait_publishing(&server, Duration::from_secs(10));
    let line = wait_log(&logs, Duration::from_secs(5), |l| {
        l.contains("is read on a thread of its own (rtmpsrvsrc-net)")
    });
    assert!(line, "the publisher went to its thread");
    // The line comes just before the thread is spawned.
    common::wait_thread("rtmpsrvsrc-net", true);
    std::thread::sleep(Duration::from_millis(500));
    let port = server.port;
    server.pipeline.set_state(gst::State::Null).unwrap();
    std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("port {port} still taken after NULL: {e}"));
    // Stopping says what it closes, and waits for the thread's last line: a process that exits
    // at once keeps it.
    let logged = |needles: &[&str]| {
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    };
    assert!(
        logged(&[
            "stopping: closing 1 connection(s), 1 of them publishers on threads of their own"
        ]),
        "{:?}",
        logs.lock().unwrap()
    );
    assert!(
        logged(&["connection closed: the element stopped", "publisher 1"]),
        "the thread ended the connection before NULL returned"
    );
    let out = wait_child(publisher, Duration::from_secs(20), "ffmpeg");
    assert!(!out.status.success(), "ffmpeg saw its connection end");
}
