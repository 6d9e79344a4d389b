//! Helpers for the rsrtmpsink tests: nginx-rtmp and stunnel in temporary directories, free ports,
//! waiting for a listener without connecting to it, publishing pipelines, ffprobe of recordings.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gst::prelude::*;

use super::{ChildGuard, assert_ours, init, run};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "rsrtmpsink-{tag}-{}-{n}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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
        init();
        let desc = format!("{source} rsrtmpsink name=sink {props}");
        let pipeline = gst::parse::launch(&desc)
            .unwrap_or_else(|e| panic!("pipeline '{desc}': {e}"))
            .downcast::<gst::Pipeline>()
            .expect("pipeline");
        let sink = pipeline.by_name("sink").expect("sink");
        assert_ours(&sink);
        pipeline
            .set_state(gst::State::Playing)
            .expect("pipeline to PLAYING");
        Publish { pipeline, sink }
    }

    /// Waits for EOS or an error; Ok on EOS, Err(error text) otherwise. Element messages seen
    /// on the way are returned too.
    pub fn wait(&self, timeout: Duration) -> (Result<(), String>, Vec<gst::Structure>) {
        let bus = self.pipeline.bus().unwrap();
        let deadline = Instant::now() + timeout;
        let mut elements = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (Err(format!("no EOS or error within {timeout:?}")), elements);
            }
            let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(left.as_millis() as u64))
            else {
                continue;
            };
            match msg.view() {
                gst::MessageView::Eos(_) => return (Ok(()), elements),
                gst::MessageView::Error(e) => {
                    return (Err(format!("{} ({:?})", e.error(), e.debug())), elements);
                }
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure() {
                        elements.push(s.to_owned());
                    }
                }
                _ => {}
            }
        }
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
        let (out, timed_out) = run(
            Command::new("ffmpeg").args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=44100",
                "-t",
                "3",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "30",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-b:a",
                "64k",
                "-f",
                "flv",
                path.to_str().unwrap(),
            ]),
            Duration::from_secs(60),
        );
        assert!(
            !timed_out && out.status.success(),
            "ffmpeg: {}",
            String::from_utf8_lossy(&out.stderr)
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
