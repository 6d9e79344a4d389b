//! Test harness shared by the integration tests: our elements in-process, real peers (ffprobe,
//! gst-launch-1.0 with the stock C elements) as child processes, every wait bounded, loopback only.
#![allow(dead_code)]
pub mod abr;
pub mod hls;
pub mod origin;
pub mod rtmp;
pub mod serversrc;
pub mod stock;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gst::prelude::*;

/// Initialises GStreamer and registers our plugin (once per test binary).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst init");
        gstlivestreaming::plugin_register_static().expect("register plugin");
    });
}

/// Asserts that an element was created from our plugin, not a stock one of the same name.
pub fn assert_ours(element: &gst::Element) {
    let factory = element.factory().expect("element has a factory");
    let plugin = factory.plugin_name().map(|p| p.to_string());
    assert_eq!(
        plugin.as_deref(),
        Some("livestreaming"),
        "element {} comes from plugin {:?}",
        factory.name(),
        plugin
    );
}

/// Parses `desc` into a pipeline (not started) and returns it with its element `name`, which
/// must come from our plugin.
pub fn launch_ours(desc: &str, name: &str) -> (gst::Pipeline, gst::Element) {
    init();
    let pipeline = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("pipeline '{desc}': {e}"))
        .downcast::<gst::Pipeline>()
        .expect("pipeline");
    let element = pipeline
        .by_name(name)
        .unwrap_or_else(|| panic!("no element {name} in '{desc}'"));
    assert_ours(&element);
    (pipeline, element)
}

/// Sets `pipeline` to PLAYING and returns the port `server` (ours, with a `bound-port`
/// property, asked for port 0) bound.
pub fn play_bound(pipeline: &gst::Pipeline, server: &gst::Element) -> u16 {
    pipeline
        .set_state(gst::State::Playing)
        .expect("pipeline to PLAYING");
    let port = server.property::<i32>("bound-port");
    assert!(port > 0, "bound-port is {port}");
    port as u16
}

/// Calls `f` with the buffer a `BUFFER | BUFFER_LIST` probe sees, or with each of its list.
pub fn each_buffer(info: &gst::PadProbeInfo, mut f: impl FnMut(&gst::BufferRef)) {
    if let Some(buffer) = info.buffer() {
        f(buffer);
    } else if let Some(list) = info.buffer_list() {
        list.iter().for_each(f);
    }
}

/// [`launch_ours`], and every buffer pushed on each pad the element `name` adds (alone or in a
/// list) recorded by `record`, which is also given when the probe saw it. Not started.
pub fn launch_recording_pads<T: Send + 'static>(
    desc: &str,
    name: &str,
    record: impl Fn(&gst::BufferRef, Instant) -> T + Send + Sync + Clone + 'static,
) -> (gst::Pipeline, gst::Element, Arc<Mutex<Vec<T>>>) {
    let (pipeline, element) = launch_ours(desc, name);
    let out: Arc<Mutex<Vec<T>>> = Arc::default();
    let probe_out = out.clone();
    element.connect_pad_added(move |_, pad| {
        let (out, record) = (probe_out.clone(), record.clone());
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, info| {
                let now = Instant::now();
                let mut out = out.lock().unwrap();
                each_buffer(info, |b| out.push(record(b, now)));
                gst::PadProbeReturn::Ok
            },
        );
    });
    (pipeline, element, out)
}

/// A directory removed on drop (a stale one of the same name is removed first).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "livestreaming-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn str(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// File names in the directory, sorted.
    pub fn files(&self) -> Vec<String> {
        files_in(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost (made by rcgen) and its key, as PEM
/// files in a directory removed when dropped.
pub struct Certs {
    pub dir: TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn new(tag: &str) -> Certs {
        Certs::new_where(tag, |_| true)
    }

    /// With the first key generated whose PKCS #8 DER `accept` takes.
    pub fn new_where(tag: &str, accept: impl Fn(&[u8]) -> bool) -> Certs {
        let dir = TempDir::new(tag);
        let generated = std::iter::repeat_with(|| {
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap()
        })
        .find(|g| accept(&g.signing_key.serialize_der()))
        .unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        Certs { dir, cert, key }
    }

    /// `tls-certificate-file=CERT tls-key-file=KEY`: our servers' properties serving it.
    pub fn props(&self) -> String {
        format!(
            "tls-certificate-file={} tls-key-file={}",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// File names in `dir`, sorted (none when it cannot be read).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// target/debug (or release): cargo puts libgstlivestreaming.so next to the test binary's
/// deps/; for `GST_PLUGIN_PATH` of gst-launch-1.0 children.
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    assert!(
        dir.join("libgstlivestreaming.so").exists(),
        "no libgstlivestreaming.so in {} (cargo build first)",
        dir.display()
    );
    dir
}

/// `gst-launch-1.0 ARGS` with our plugin from target/ (a registry of its own in `dir`) and
/// everything logged at level 9, without colour, into the file `log` (its stderr).
pub fn launch_logged(dir: &Path, log: &Path, args: &[&str]) -> ChildGuard {
    let stderr = std::fs::File::create(log).expect("log file");
    let child = Command::new("gst-launch-1.0")
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", dir.join("registry.bin"))
        .env("GST_DEBUG", "*:9")
        .env("GST_DEBUG_NO_COLOR", "1")
        .env_remove("GST_DEBUG_FILE")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn gst-launch-1.0");
    ChildGuard(Some(child))
}

/// GStreamer's own parser echoes gst-launch-1.0's command line (`escaping argument
/// location=...`, the properties it sets): a secret is there because the user typed it, in
/// code that is not ours and that no element can silence. Those lines alone are excused.
pub const COMMAND_LINE_ECHO: &[&str] = &[
    " gstparse.c:",
    " parse.l:",
    " grammar.y:",
    " grammar.tab.c:",
    ":gst_parse_unescape:",
];

/// The lines of `log` holding `secret` (at most 600 bytes of each), except GStreamer's echo of
/// the command line.
pub fn lines_with(log: &[u8], secret: &[u8]) -> Vec<String> {
    assert!(!secret.is_empty(), "searching for nothing");
    // memchr (optimised in test builds too): a level-9 log is tens of MB, which a byte-by-byte
    // search in an unoptimised test took minutes over on a loaded machine.
    let mut lines = Vec::new();
    let mut next_line = 0;
    for at in memchr::memmem::find_iter(log, secret) {
        if at < next_line {
            continue;
        }
        let start = memchr::memrchr(b'\n', &log[..at]).map_or(0, |i| i + 1);
        let end = memchr::memchr(b'\n', &log[at..]).map_or(log.len(), |i| at + i);
        next_line = end + 1;
        let line = &log[start..end];
        lines.push(String::from_utf8_lossy(&line[..line.len().min(600)]).into_owned());
    }
    lines.retain(|line| !COMMAND_LINE_ECHO.iter().any(|f| line.contains(f)));
    lines
}

/// Asserts that no line of `log` but the command line's echo holds `secret` (`what` names it).
pub fn assert_absent(log: &[u8], secret: &[u8], what: &str) {
    let lines = lines_with(log, secret);
    assert!(
        lines.is_empty(),
        "{what} is in {} lines of the debug log:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

/// Pops `pipeline`'s bus until EOS or an error, at most `timeout`: Ok on EOS, Err(error text)
/// otherwise; with the element messages seen on the way. Leaves the pipeline's state alone.
pub fn bus_until_end(
    pipeline: &gst::Pipeline,
    timeout: Duration,
) -> (Result<(), String>, Vec<gst::Structure>) {
    let bus = pipeline.bus().expect("bus");
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(left.as_nanos() as u64),
            &[
                gst::MessageType::Eos,
                gst::MessageType::Error,
                gst::MessageType::Element,
            ],
        ) else {
            break Err(format!("no EOS within {timeout:?}"));
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => break Err(format!("{} ({:?})", e.error(), e.debug())),
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure() {
                    messages.push(s.to_owned());
                }
            }
            _ => {}
        }
    };
    (result, messages)
}

/// Encodes ffmpeg's lavfi test sources into `path` within 60 s: `seconds` of H.264 (`size`,
/// e.g. "320x240", 30 fps, a keyframe every 30 frames, yuv420p), with AAC of a 440 Hz sine at
/// `audio_rate` Hz when given; `output_args` go before the output (e.g. `-preset ultrafast`,
/// `-f flv`). Panics with ffmpeg's stderr when it fails.
pub fn ffmpeg_test_media(
    path: &Path,
    size: &str,
    seconds: u32,
    audio_rate: Option<u32>,
    output_args: &[&str],
) {
    let video = format!("testsrc=size={size}:rate=30");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-y", "-f", "lavfi", "-i", &video]);
    if let Some(rate) = audio_rate {
        cmd.args(["-f", "lavfi", "-i"])
            .arg(format!("sine=frequency=440:sample_rate={rate}"));
    }
    cmd.arg("-t")
        .arg(seconds.to_string())
        .args(["-c:v", "libx264", "-g", "30", "-pix_fmt", "yuv420p"]);
    if audio_rate.is_some() {
        cmd.args(["-c:a", "aac"]);
    }
    cmd.args(output_args).arg(path);
    let (out, timed_out) = run(&mut cmd, Duration::from_secs(60));
    assert!(
        !timed_out && out.status.success(),
        "ffmpeg making {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running pipeline with an `rtspserversink name=sink port=0` in it.
pub struct ServerPipeline {
    pub pipeline: gst::Pipeline,
    pub sink: gst::Element,
    pub port: u16,
}

/// The usual live test input: H.264 video (+ Opus audio when `audio`).
pub fn av_source(audio: bool) -> String {
    let mut s = String::from(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! sink.",
    );
    if audio {
        s.push_str(" audiotestsrc is-live=true ! audioconvert ! opusenc ! sink.");
    }
    s
}

impl ServerPipeline {
    /// `sink_props` are extra properties for rtspserversink; `sources` link into `sink.`.
    pub fn start(sink_props: &str, sources: &str) -> ServerPipeline {
        let (pipeline, sink) = launch_ours(
            &format!("rtspserversink name=sink address=127.0.0.1 port=0 {sink_props} {sources}"),
            "sink",
        );
        let port = play_bound(&pipeline, &sink);
        ServerPipeline {
            pipeline,
            sink,
            port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "rtsp://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    pub fn stats(&self) -> gst::Structure {
        self.sink.property::<gst::Structure>("stats")
    }

    /// Errors posted on the bus so far.
    pub fn errors(&self) -> Vec<String> {
        let bus = self.pipeline.bus().unwrap();
        let mut out = Vec::new();
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                out.push(format!("{} ({:?})", e.error(), e.debug()));
            }
        }
        out
    }
}

/// Large frames (640x480 noise at 8 Mbit/s, live) into `sink.`: a client that does not read
/// fills its socket buffers quickly.
pub const NOISE_VIDEO: &str = "videotestsrc is-live=true pattern=snow \
     ! video/x-raw,width=640,height=480,framerate=30/1 \
     ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=8000 ! sink.";

/// A TCP connection to 127.0.0.1:`port` with a 4 KiB receive buffer, for a client that will
/// not read: the server's side fills quickly.
pub fn connect_small_buffer(port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    sock.into()
}

impl ServerPipeline {
    /// Waits at most `timeout` until the server has dropped frames for a slow client and
    /// disconnected it (both counted in its stats).
    pub fn wait_slow_client_dropped(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            let slow = stats.get::<u64>("clients-disconnected-slow").unwrap();
            let dropped = stats.get::<u64>("frames-dropped").unwrap();
            if slow >= 1 && dropped >= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stalled client not handled: {stats}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A client's RTCP Receiver Report (RFC 3550 §6.4.2), as bytes: SSRC 0x12345678 reporting on
/// SSRC 1 (fraction lost 64/256, 7 lost), with the SDES CNAME "test-client".
pub fn receiver_report() -> Vec<u8> {
    use gstlivestreaming::rtp::rtcp;
    let mut out = Vec::new();
    rtcp::write_receiver_report(
        &rtcp::ReceiverReport {
            ssrc: 0x1234_5678,
            reports: vec![rtcp::ReportBlock {
                ssrc: 1,
                fraction_lost: 64,
                cumulative_lost: 7,
                ..Default::default()
            }],
        },
        "test-client",
        &mut out,
    );
    out
}

impl Drop for ServerPipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A child process that is killed when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        ChildGuard(Some(child))
    }

    /// Waits at most `timeout`; kills the process if it is still running then. Its output is
    /// drained while it runs, so a chatty child never blocks on a full pipe.
    pub fn wait_output(mut self, timeout: Duration) -> (Output, bool) {
        let mut child = self.0.take().unwrap();
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + timeout;
        let timed_out = loop {
            match child.try_wait() {
                Ok(Some(_)) => break false,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    break true;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break true,
            }
        };
        let status = child.wait().expect("wait child");
        let output = Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        };
        (output, timed_out)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a command to completion within `timeout` (killed otherwise).
pub fn run(cmd: &mut Command, timeout: Duration) -> (Output, bool) {
    ChildGuard::spawn(cmd).wait_output(timeout)
}

/// Runs ffprobe on `url` and returns its stdout (CSV of `entries`).
pub fn ffprobe(url: &str, transport: &str, entries: &str) -> String {
    let (out, timed_out) = run(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-rtsp_transport",
            transport,
            "-show_entries",
            entries,
            "-of",
            "csv=p=0",
            url,
        ]),
        Duration::from_secs(30),
    );
    assert!(
        !timed_out,
        "ffprobe timed out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Plays `url` with the stock C rtspsrc into avdec_h264 and returns how many frames decoded.
pub fn rtspsrc_decode(url: &str, protocols: &str, frames: u32, extra: &str) -> u32 {
    let pipeline = format!(
        "rtspsrc location={url} protocols={protocols} latency=200 {extra} \
         ! rtph264depay ! h264parse ! avdec_h264 ! fakesink num-buffers={frames} silent=false"
    );
    let (out, timed_out) = run(
        Command::new("gst-launch-1.0")
            .args(["-v", "-e"])
            .args(pipeline.split_whitespace()),
        Duration::from_secs(40),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !timed_out,
        "rtspsrc timed out; stdout tail: {}\nstderr: {}",
        tail(&stdout, 1500),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.matches("fakesink0: last-message = chain").count() as u32
}

pub fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// A hand-driven RTSP connection for protocol tests.
pub struct RawClient {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    pub cseq: u32,
}

/// What the server sent.
#[derive(Debug)]
pub enum Incoming {
    Data(u8, Vec<u8>),
    Response(RawResponse),
    Request(String, Vec<(String, String)>),
}

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn session(&self) -> Option<String> {
        self.header("Session")
            .map(|s| s.split(';').next().unwrap().trim().to_owned())
    }
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        RawClient::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> RawClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        RawClient {
            stream,
            reader,
            cseq: 0,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads and discards what comes until the server closes the connection, waiting at most
    /// `within` for each read: Ok once it is closed, an error (a timeout) otherwise.
    pub fn read_until_closed(&mut self, within: Duration) -> std::io::Result<()> {
        self.stream.set_read_timeout(Some(within))?;
        std::io::copy(&mut self.stream, &mut std::io::sink()).map(|_| ())
    }

    /// Sends a request with the next CSeq and the given extra header lines.
    pub fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> RawResponse {
        self.cseq += 1;
        let mut msg = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        for (k, v) in headers {
            msg.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            msg.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        msg.push_str("\r\n");
        msg.push_str(body);
        self.send_raw(msg.as_bytes());
        let resp = self.read_response();
        if let Some(c) = resp.header("CSeq") {
            assert_eq!(c.trim(), self.cseq.to_string(), "CSeq echoed");
        }
        resp
    }

    /// Reads whatever the server sends next.
    pub fn read_next(&mut self) -> Incoming {
        let buf = self.reader.fill_buf().expect("read");
        assert!(!buf.is_empty(), "connection closed by server");
        if buf[0] == b'$' {
            let mut hdr = [0u8; 4];
            self.reader
                .read_exact(&mut hdr)
                .expect("interleaved header");
            let len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
            let mut data = vec![0u8; len];
            self.reader.read_exact(&mut data).expect("interleaved body");
            return Incoming::Data(hdr[1], data);
        }
        let (start, headers, body) = self.read_message();
        match start.strip_prefix("RTSP/1.0 ") {
            Some(rest) => Incoming::Response(RawResponse {
                status: rest[..3].parse().expect("status code"),
                headers,
                body,
            }),
            None => Incoming::Request(start, headers),
        }
    }

    /// Reads the next interleaved frame (channel, data); None once the connection is closed
    /// or fails, for readers that run until their test shuts the socket down.
    pub fn next_interleaved(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let buf = self.reader.fill_buf().ok()?;
            if buf.is_empty() {
                return None;
            }
            if buf[0] != b'$' {
                self.read_message();
                continue;
            }
            let mut hdr = [0u8; 4];
            self.reader.read_exact(&mut hdr).ok()?;
            let mut data = vec![0u8; u16::from_be_bytes([hdr[2], hdr[3]]) as usize];
            self.reader.read_exact(&mut data).ok()?;
            return Some((hdr[1], data));
        }
    }

    /// Reads the next RTSP response, skipping interleaved frames and server requests.
    pub fn read_response(&mut self) -> RawResponse {
        loop {
            if let Incoming::Response(r) = self.read_next() {
                return r;
            }
        }
    }

    /// Reads the next request the server sends (ANNOUNCE, REDIRECT), skipping everything else.
    pub fn read_request(&mut self) -> (String, Vec<(String, String)>) {
        loop {
            if let Incoming::Request(start, headers) = self.read_next() {
                return (start, headers);
            }
        }
    }

    /// Reads one message (request or response): start line, headers, body.
    fn read_message(&mut self) -> (String, Vec<(String, String)>, Vec<u8>) {
        let mut start = String::new();
        self.reader.read_line(&mut start).expect("start line");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).expect("body");
        (start.trim_end().to_owned(), headers, body)
    }

    /// Reads interleaved frames until `n` have arrived on `channel` (bounded by the read timeout).
    pub fn read_interleaved(&mut self, channel: u8, n: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while got.len() < n {
            if let Incoming::Data(ch, data) = self.read_next()
                && ch == channel
            {
                got.push(data);
            }
        }
        got
    }

    /// DESCRIBE + SETUP every stream over TCP + PLAY; returns the session id and stream count.
    pub fn play_tcp(&mut self, url: &str) -> (String, usize) {
        let d = self.request("DESCRIBE", url, &[("Accept", "application/sdp")], "");
        assert_eq!(d.status, 200, "DESCRIBE: {d:?}");
        let sdp = String::from_utf8_lossy(&d.body).into_owned();
        let base = d.header("Content-Base").unwrap_or(url).to_owned();
        let controls: Vec<String> = sdp
            .lines()
            .filter_map(|l| l.trim().strip_prefix("a=control:"))
            .filter(|c| *c != "*")
            .map(str::to_owned)
            .collect();
        let mut session: Option<String> = None;
        for (i, control) in controls.iter().enumerate() {
            let transport = format!("RTP/AVP/TCP;unicast;interleaved={}-{}", 2 * i, 2 * i + 1);
            let mut headers = vec![("Transport", transport.as_str())];
            let sess;
            if let Some(s) = &session {
                sess = s.clone();
                headers.push(("Session", sess.as_str()));
            }
            let r = self.request("SETUP", &format!("{base}{control}"), &headers, "");
            assert_eq!(r.status, 200, "SETUP: {r:?}");
            session = r.session();
        }
        let session = session.expect("session");
        let r = self.request(
            "PLAY",
            &base,
            &[("Session", &session), ("Range", "npt=0-")],
            "",
        );
        assert_eq!(r.status, 200, "PLAY: {r:?}");
        (session, controls.len())
    }
}

/// The process's threads by name (`comm`, at most 15 characters), for tests that count them.
pub fn threads_by_name() -> std::collections::BTreeMap<String, usize> {
    let mut names = std::collections::BTreeMap::<String, usize>::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        *names.entry(comm.trim().to_string()).or_default() += 1;
    }
    names
}

/// Waits (at most 5 s) until this process has a thread named `name`, or has none.
pub fn wait_thread(name: &str, present: bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while threads_by_name().contains_key(name) != present {
        assert!(
            std::time::Instant::now() < deadline,
            "thread {name} present: {}, expected {present}: {:?}",
            !present,
            threads_by_name()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The number of threads of this process (/proc/self/status).
pub fn threads_of_this_process() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads: in /proc/self/status")
}

/// Adds `src` (an rtspsrc2) to `pipeline` with a fakesink its pad links to once it appears;
/// `receiving` counts the sinks that got their first buffer.
pub fn add_counted_receiver(
    pipeline: &gst::Pipeline,
    src: &gst::Element,
    receiving: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
        .unwrap();
    pipeline.add_many([src, &sink]).unwrap();
    let sink_weak = sink.downgrade();
    src.connect_pad_added(move |_, pad| {
        if let Some(sink) = sink_weak.upgrade() {
            let _ = pad.link(&sink.static_pad("sink").unwrap());
        }
    });
    let counter = receiving.clone();
    let first = std::sync::Once::new();
    sink.static_pad("sink").unwrap().add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, _| {
            first.call_once(|| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            gst::PadProbeReturn::Ok
        },
    );
}

/// A real client's output (a child's stdout) counted as it arrives, to measure the rate at which
/// it receives a live stream: each read is logged with its time and the bytes before it.
pub struct ByteMeter {
    /// (when a read returned, bytes received before it)
    reads: std::sync::Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
}

impl ByteMeter {
    /// Counts `child`'s stdout on a thread of its own, until it closes.
    pub fn of_stdout(child: &mut ChildGuard) -> ByteMeter {
        let mut stdout = child.0.as_mut().unwrap().stdout.take().expect("stdout");
        let reads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = reads.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                log.lock().unwrap().push((Instant::now(), total));
                total += n as u64;
            }
        });
        ByteMeter { reads }
    }

    /// Bytes received so far (but the last read's, which [`ByteMeter::rate`] counts only once
    /// a read follows it).
    pub fn received(&self) -> u64 {
        self.reads.lock().unwrap().last().map_or(0, |r| r.1)
    }

    /// Waits at most `timeout` for the first bytes.
    pub fn wait_for_data(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.reads.lock().unwrap().is_empty() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Bytes per second received over about the next `window`: from the first read after it
    /// starts to the first read after it ends (waiting up to `window` more for that one), so
    /// that a client receiving in bursts (an HLS segment at a time) is measured over whole
    /// bursts, and a client receiving nothing at the end counts as receiving nothing.
    pub fn rate(&self, window: Duration) -> f64 {
        let first_after = |t: Instant, wait: Duration| {
            let deadline = t + wait;
            loop {
                let found = {
                    let reads = self.reads.lock().unwrap();
                    let i = reads.partition_point(|r| r.0 < t);
                    reads.get(i).copied()
                };
                if let Some(r) = found {
                    return r;
                }
                let now = Instant::now();
                if now >= deadline {
                    // Nothing arrived: everything so far, at the end of the wait.
                    let reads = self.reads.lock().unwrap();
                    return (now, reads.last().map_or(0, |r| r.1));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let t0 = Instant::now();
        let start = first_after(t0, window);
        let end = first_after(start.0 + window, window);
        (end.1 - start.1) as f64 / (end.0 - start.0).as_secs_f64().max(1e-3)
    }
}

/// Asserts that a client's rate `during` an attack is within 5% (plus `slack` bytes/s) of its
/// rate `before` it.
pub fn assert_rate_kept(client: &str, before: f64, during: f64, slack: f64) {
    eprintln!("{client}: {before:.0} B/s before the attack, {during:.0} B/s during it");
    assert!(
        during >= before * 0.95 - slack,
        "{client}'s rate fell from {before:.0} B/s to {during:.0} B/s"
    );
}

/// An attacking connection as the attacker sees it.
pub struct Conn {
    pub stream: TcpStream,
    pub opened: Instant,
    pub answer: Vec<u8>,
    /// When the server closed it.
    pub closed: Option<Instant>,
}

impl Conn {
    /// Connects from `source` to 127.0.0.1:`port` and sends `first`; `None` when refused.
    pub fn open(source: [u8; 4], port: u16, first: &[u8]) -> Option<Conn> {
        let mut stream = hls::connect_from(source, port).ok()?;
        stream.set_nonblocking(true).unwrap();
        let _ = stream.write_all(first);
        Some(Conn {
            stream,
            opened: Instant::now(),
            answer: Vec::new(),
            closed: None,
        })
    }

    /// Reads what the server sent; notes when it closed.
    pub fn poll(&mut self) {
        let mut buf = [0u8; 1024];
        while self.closed.is_none() {
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = Some(Instant::now()),
                Ok(n) => self.answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => self.closed = Some(Instant::now()),
            }
        }
    }

    /// The status code of the first answer (RTSP or HTTP).
    pub fn status(&self) -> Option<&str> {
        let space = self.answer.iter().position(|&b| b == b' ')?;
        self.answer
            .get(space + 1..space + 4)
            .and_then(|code| std::str::from_utf8(code).ok())
    }

    /// How long the server kept it open (so far).
    pub fn lifetime(&self) -> Duration {
        self.closed.unwrap_or_else(Instant::now) - self.opened
    }
}
