//! Helpers for the rsrtmpsink tests: nginx-rtmp and stunnel in temporary directories, free ports,
//! waiting for a listener without connecting to it, publishing pipelines, ffprobe of recordings.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstlivestreaming::rtmp::client::{Phase, Publisher, PublisherConfig};

use super::{ChildGuard, bus_until_end, ffmpeg_test_media, init, launch_ours, play_bound, run};

pub use super::TempDir;

/// A free TCP port on 127.0.0.1 for a server a test starts (found bindable, then released).
///
/// Taken below the kernel's ephemeral range, where binding port 0 and outgoing connections get
/// their ports, and never handed out twice in one process: otherwise a server another test
/// binds to port 0 meanwhile, or a second call, could take the port before the child that was
/// given it binds it, and the test would talk to the wrong server.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&low| low > LOWEST + 1000)
        .unwrap_or(32_768);
    let span = ephemeral - LOWEST;
    // Test binaries run one after the other; starting where the process id points keeps two
    // runs on one machine apart as well.
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = LOWEST + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port between {LOWEST} and {ephemeral}");
}

/// Whether something listens on 127.0.0.1:`port`, from /proc/net/tcp: no connection is made, so
/// one-shot servers (ffmpeg -listen) are not disturbed.
pub fn is_listening(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X}");
    let any = format!("00000000:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && (f[1] == needle || f[1] == any) && f[3] == "0A"
        })
}

/// Waits until `port` listens; panics with `what` after `timeout`.
pub fn wait_listening(port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while !is_listening(port) {
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx with the RTMP module, `application live { live on; record all; }` recording into its
/// directory (`DIR/rec/KEY.flv`).
pub struct Nginx {
    pub dir: TempDir,
    pub port: u16,
    child: Option<ChildGuard>,
}

impl Nginx {
    pub fn start() -> Nginx {
        Self::start_on(free_port(), TempDir::new("nginx"))
    }

    pub fn start_on(port: u16, dir: TempDir) -> Nginx {
        let mut n = Nginx {
            dir,
            port,
            child: None,
        };
        n.restart();
        n
    }

    /// Starts nginx (again), on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        let d = self.dir.path();
        std::fs::create_dir_all(d.join("rec")).unwrap();
        std::fs::create_dir_all(d.join("logs")).unwrap();
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log info;\n\
             worker_processes 1;\n\
             events {{ worker_connections 64; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096; ack_window 100000;\n\
               application live {{ live on; record all; record_path {d}/rec; record_unique off; }}\n\
             }} }}\n",
            d = d.display(),
            port = self.port
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let child = ChildGuard::spawn(Command::new("nginx").args([
            "-p",
            &d.display().to_string(),
            "-c",
            &d.join("nginx.conf").display().to_string(),
            "-g",
            "daemon off; master_process off;",
        ]));
        self.child = Some(child);
        wait_listening(self.port, Duration::from_secs(10), "nginx");
    }

    /// SIGKILL: the server vanishes without closing anything politely.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.take() {
            drop(c);
        }
        // The socket is gone once the process is.
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_listening(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.port)
    }

    pub fn recording(&self, key: &str) -> PathBuf {
        self.dir.path().join("rec").join(format!("{key}.flv"))
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// H.264 (+ AAC) into `flvmux streamable=true name=m` linked to `m.`; `frames` video frames at
/// 30 fps, audio of the same length.
pub fn av_flv_source(frames: u32, audio: bool, live: bool) -> String {
    let mut s = format!(
        "videotestsrc is-live={live} num-buffers={frames} \
         ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=800 \
         ! h264parse ! queue ! m. "
    );
    if audio {
        // 1024 samples per buffer at 44.1 kHz: one AAC frame each.
        let buffers = frames as u64 * 44100 / 30 / 1024;
        s.push_str(&format!(
            "audiotestsrc is-live={live} num-buffers={buffers} samplesperbuffer=1024 \
             ! audio/x-raw,rate=44100,channels=2 ! audioconvert ! voaacenc ! aacparse ! queue ! m. "
        ));
    }
    s.push_str("flvmux streamable=true name=m ! ");
    s
}

/// A publishing pipeline: `source` ending in `! ` followed by `rsrtmpsink name=sink {props}`.
pub struct Publish {
    pub pipeline: gst::Pipeline,
    pub sink: gst::Element,
}

impl Publish {
    pub fn start(source: &str, props: &str) -> Publish {
        let (pipeline, sink) =
            launch_ours(&format!("{source} rsrtmpsink name=sink {props}"), "sink");
        pipeline
            .set_state(gst::State::Playing)
            .expect("pipeline to PLAYING");
        Publish { pipeline, sink }
    }

    /// Waits for EOS or an error; Ok on EOS, Err(error text) otherwise. Element messages seen
    /// on the way are returned too.
    pub fn wait(&self, timeout: Duration) -> (Result<(), String>, Vec<gst::Structure>) {
        bus_until_end(&self.pipeline, timeout)
    }

    pub fn stats(&self) -> gst::Structure {
        self.sink.property::<gst::Structure>("stats")
    }
}

impl Drop for Publish {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// ffprobe of a file: per stream `codec_name,nb_read_frames` (counting every frame) and the
/// container duration in seconds.
pub struct Probe {
    pub streams: Vec<(String, String, u64)>,
    pub duration: f64,
}

pub fn probe_file(path: &Path) -> Probe {
    let (out, timed_out) = run(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,nb_read_frames:format=duration",
            "-of",
            "compact=p=0:nk=1",
            &path.display().to_string(),
        ]),
        Duration::from_secs(60),
    );
    assert!(!timed_out, "ffprobe timed out on {}", path.display());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ffprobe {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut streams = Vec::new();
    let mut duration = 0.0;
    for line in stdout.lines() {
        let f: Vec<&str> = line.split('|').collect();
        match f.len() {
            3 => streams.push((f[1].to_owned(), f[0].to_owned(), f[2].parse().unwrap_or(0))),
            1 => duration = f[0].parse().unwrap_or(0.0),
            _ => {}
        }
    }
    Probe { streams, duration }
}

impl Probe {
    /// (codec, frames) of the first stream of `kind` ("video"/"audio").
    pub fn stream(&self, kind: &str) -> Option<(&str, u64)> {
        self.streams
            .iter()
            .find(|(k, _, _)| k == kind)
            .map(|(_, c, n)| (c.as_str(), *n))
    }
}

/// Waits until `path` exists and its size stops changing (the writer has finished).
pub fn wait_file_settled(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let size = std::fs::metadata(path).ok().map(|m| m.len());
        if size.is_some() && size == last {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not settle within {timeout:?} (size {size:?})",
            path.display()
        );
        last = size;
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A self-signed certificate for `san` (e.g. "IP:127.0.0.1,DNS:localhost"), made with openssl:
/// (cert.pem, key.pem) in `dir`.
pub fn self_signed_cert(dir: &Path, san: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let (out, timed_out) = run(
        Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
            "-days",
            "2",
            "-subj",
            "/CN=rsrtmpsink test",
            "-addext",
            &format!("subjectAltName={san}"),
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ]),
        Duration::from_secs(30),
    );
    assert!(
        !timed_out && out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// stunnel4 terminating TLS on `tls_port` in front of 127.0.0.1:`port`.
pub struct Stunnel {
    pub dir: TempDir,
    pub tls_port: u16,
    _child: ChildGuard,
}

impl Stunnel {
    /// With a self-signed certificate for `san` made by openssl.
    pub fn start(port: u16, san: &str) -> Stunnel {
        let dir = TempDir::new("stunnel");
        let (cert, key) = self_signed_cert(dir.path(), san);
        Stunnel::serve(dir, port, &cert, &key)
    }

    /// With the PEM certificate and key given.
    pub fn with_pem(port: u16, cert_pem: &str, key_pem: &str) -> Stunnel {
        let dir = TempDir::new("stunnel");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        Stunnel::serve(dir, port, &cert, &key)
    }

    /// Starts stunnel4 on a free port. A port found free may be taken by another test's server
    /// before stunnel binds it: stunnel then exits at once, while the other server makes the
    /// port look listening. So the port counts as ours only once stunnel is still running a
    /// moment after it listens; otherwise another port is tried.
    fn serve(dir: TempDir, port: u16, cert: &Path, key: &Path) -> Stunnel {
        for _ in 0..5 {
            let tls_port = free_port();
            let conf = format!(
                "foreground = yes\n\
                 pid =\n\
                 output = {d}/stunnel.log\n\
                 [rtmps]\n\
                 accept = 127.0.0.1:{tls_port}\n\
                 connect = 127.0.0.1:{port}\n\
                 cert = {cert}\n\
                 key = {key}\n",
                d = dir.path().display(),
                cert = cert.display(),
                key = key.display(),
            );
            let conf_path = dir.path().join("stunnel.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let mut child = ChildGuard::spawn(Command::new("stunnel4").arg(&conf_path));
            wait_listening(tls_port, Duration::from_secs(10), "stunnel4");
            std::thread::sleep(Duration::from_millis(100));
            let exited = child
                .0
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if !exited {
                return Stunnel {
                    dir,
                    tls_port,
                    _child: child,
                };
            }
            eprintln!("stunnel4 could not keep port {tls_port}, trying another");
        }
        panic!("stunnel4 did not start on any of 5 free ports");
    }

    pub fn url(&self, key: &str) -> String {
        format!("rtmps://127.0.0.1:{}/live/{key}", self.tls_port)
    }
}

/// 3 s of H.264 (320x240, 30 fps, a keyframe a second) and AAC in FLV, encoded by ffmpeg once per
/// test process, with the frames ffprobe counts in it: what the RTMP server tests publish.
pub struct TestFlv {
    _dir: TempDir,
    pub path: PathBuf,
    pub video: u64,
    pub audio: u64,
}

pub fn test_flv() -> &'static TestFlv {
    static INPUT: std::sync::OnceLock<TestFlv> = std::sync::OnceLock::new();
    INPUT.get_or_init(|| {
        let dir = TempDir::new("rtmp-input");
        let path = dir.path().join("in.flv");
        ffmpeg_test_media(
            &path,
            "320x240",
            3,
            Some(44100),
            &["-preset", "ultrafast", "-b:a", "64k", "-f", "flv"],
        );
        let probe = probe_file(&path);
        let video = probe.stream("video").expect("video").1;
        let audio = probe.stream("audio").expect("audio").1;
        assert!(video >= 89 && audio >= 120, "input {video}/{audio}");
        TestFlv {
            _dir: dir,
            path,
            video,
            audio,
        }
    })
}

/// ffmpeg publishing `input` in real time (`-re`), stream copied, to `url`; `extra` goes before
/// `-f flv`.
pub fn ffmpeg_publish_file(input: &Path, url: &str, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new("ffmpeg")
            .args(["-v", "error", "-re", "-i"])
            .arg(input)
            .args(["-c", "copy"])
            .args(extra)
            .args(["-f", "flv", url]),
    )
}

/// ffmpeg publishing [`test_flv`] in real time to `url` (see [`ffmpeg_publish_file`]).
pub fn ffmpeg_publish(url: &str, extra: &[&str]) -> ChildGuard {
    ffmpeg_publish_file(&test_flv().path, url, extra)
}

/// The messages of the debug categories `categories` (each set to `level`) that this process
/// logs from the first call on, GStreamer's default log function removed. One capture a test
/// binary: later calls return it whatever they ask for.
pub fn captured_logs(categories: &[&str], level: gst::DebugLevel) -> Arc<Mutex<Vec<String>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        init();
        let logs: Arc<Mutex<Vec<String>>> = Default::default();
        let l = logs.clone();
        let wanted: Vec<String> = categories.iter().map(|c| c.to_string()).collect();
        gst::log::remove_default_log_function();
        gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
            if wanted.iter().any(|w| w == cat.name())
                && let Some(m) = msg.get()
            {
                l.lock().unwrap().push(m.to_string());
            }
        });
        for cat in categories {
            gst::log::set_threshold_for_name(cat, level);
        }
        logs
    })
    .clone()
}

/// The first line of `logs` that `pred` accepts, polled every 50 ms for at most `timeout`.
pub fn wait_line(
    logs: &Mutex<Vec<String>>,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = logs.lock().unwrap().iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Our rtmpserversrc on a free port of 127.0.0.1 (with `props`), recording through `middle`
/// (nothing, or elements ending in `!`) into DIR/out.flv; stopped when dropped.
pub struct Recorder {
    pub pipeline: gst::Pipeline,
    pub src: gst::Element,
    pub port: u16,
    pub dir: TempDir,
}

impl Recorder {
    pub fn start(tag: &str, props: &str, middle: &str) -> Recorder {
        Recorder::start_with(tag, props, middle, |_| {})
    }

    /// `setup` sets on rtmpserversrc what a launch line cannot (e.g. an array) before PLAYING.
    pub fn start_with(
        tag: &str,
        props: &str,
        middle: &str,
        setup: impl FnOnce(&gst::Element),
    ) -> Recorder {
        let dir = TempDir::new(tag);
        let (pipeline, src) = launch_ours(
            &format!(
                "rtmpserversrc name=src address=127.0.0.1 port=0 {props} ! {middle} \
                 filesink location={}",
                dir.join("out.flv").display()
            ),
            "src",
        );
        setup(&src);
        let port = play_bound(&pipeline, &src);
        Recorder {
            pipeline,
            src,
            port,
            dir,
        }
    }

    /// `SCHEME://127.0.0.1:PORT/live/KEY`
    pub fn url(&self, scheme: &str, key: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/live/{key}", self.port)
    }

    pub fn stats(&self) -> gst::Structure {
        self.src.property::<gst::Structure>("stats")
    }

    /// Asserts that the stream ends (the publisher left) by EOS, not an error, within `timeout`.
    pub fn wait_eos(&self, timeout: Duration) {
        let bus = self.pipeline.bus().unwrap();
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("EOS within the timeout");
        assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    }

    /// Waits at most `timeout` for a publisher.
    pub fn wait_publishing(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stats().get::<bool>("publishing").unwrap() {
            assert!(Instant::now() < deadline, "nobody publishes");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops and counts the recording's frames with ffprobe: (video, audio).
    pub fn recorded(&self) -> (u64, u64) {
        self.pipeline.set_state(gst::State::Null).unwrap();
        let probe = probe_file(&self.dir.join("out.flv"));
        (
            probe.stream("video").map_or(0, |s| s.1),
            probe.stream("audio").map_or(0, |s| s.1),
        )
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Our publisher state machine over a socket to 127.0.0.1:`port` (`live/key`, offering the
/// Enhanced RTMP `fourcc_list`), driven until the server accepted the publish (at most 10 s);
/// what it has to send next is still in it.
pub fn publishing_client(port: u16, fourcc_list: Vec<String>) -> (Publisher, TcpStream) {
    let mut p = Publisher::new(
        PublisherConfig {
            name: String::new(),
            app: "live".into(),
            tc_url: format!("rtmp://127.0.0.1:{port}/live"),
            stream: "key".into(),
            flash_version: "FMLE/3.0".into(),
            chunk_size: 4096,
            max_message_size: 1 << 20,
            credentials: None,
            auth: Default::default(),
            fourcc_list,
        },
        0,
        &[1; 1528],
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.phase() != Phase::Publishing {
        assert!(Instant::now() < deadline, "not publishing: {:?}", p.phase());
        s.write_all(&p.take_output()).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed by the server");
        p.receive(&buf[..n]).unwrap();
    }
    (p, s)
}

/// ffmpeg listening once on 127.0.0.1:`port` (`live/x`), copying what it receives into `out`;
/// `extra` goes before the output (e.g. `-copyts`, `-f flv`). Returns at once: wait for
/// [`is_listening`] where needed.
pub fn ffmpeg_listen(port: u16, out: &Path, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-listen", "1", "-i"])
            .arg(format!("rtmp://127.0.0.1:{port}/live/x"))
            .args(["-c", "copy"])
            .args(extra)
            .arg("-y")
            .arg(out),
    )
}
