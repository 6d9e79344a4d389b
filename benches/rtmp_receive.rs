//! rtmpserversrc against nginx-rtmp + rtmp2src, each receiving the same ffmpeg publish, in one run.
//!
//!     cargo build --release --locked && cargo bench --locked --bench rtmp_receive
//!
//! This process encodes BENCH_SECONDS + 8 s (default 28 s) of 720p30 H.264 (x264enc ultrafast,
//! `pattern=snow`, ~4 Mbit/s) and AAC into an FLV file once, and counts its frames. In each round
//! two receivers start, each in child processes of its own:
//!
//! - ours: `rtmpserversrc ! fakesink` (this binary with `--receive-ours`, loading the plugin file
//!   of the build under test),
//! - the stock way to get RTMP into a pipeline: nginx-rtmp (`live on`, one process) and
//!   `rtmp2src location=rtmp://NGINX/live/KEY ! fakesink` (this binary with `--receive-stock`),
//!   playing before the publisher arrives; their CPU is added up,
//!
//! then one `ffmpeg -re -i FILE -c copy -f flv rtmp://...` per receiver (which publisher starts
//! first alternates between rounds). Each receiving child counts the FLV tags that reach its
//! fakesink (a pad probe parsing the FLV; audio and video frames, codec configurations not
//! counted). CPU is every thread's run time (/proc/PID/task/*/schedstat) over the same window of
//! BENCH_SECONDS (default 20) that starts 3 s after the publishers, as a share of one core; RSS
//! the peak (VmHWM). After the window the publishers play the file to its end, the receivers end
//! with EOS, and each must have received every frame of the file (checked: the run fails
//! otherwise, after printing its table). BENCH_ROUNDS rounds (default 3); means and the
//! per-round ratios ours / theirs are printed.
//!
//! The threads of each receiving process are listed per round (stderr).
//!
//! A second part (BENCH_PARTS, default `receive,publish`) measures publishers: rsrtmpsink against
//! rtmp2sink, each a `gst-launch-1.0` child playing the same file in real time (`filesrc !
//! flvdemux ! h264parse/aacparse ! clocksync ! flvmux ! SINK`) into an rtmpserversrc of the
//! current build, beside the same input pipeline into `fakesink` (the part both publishers share,
//! subtracted for the "without it" ratio); measured and checked as above.
//!
//! BENCH_BASELINE=DIR measures our elements against those of an earlier build instead: DIR holds
//! that build's `libgstlivestreaming.so` (copy it aside before changing the code); both receivers
//! are then `rtmpserversrc ! fakesink`, each loading its build's plugin, each fed by its own
//! ffmpeg, and both publishers rsrtmpsink; measured the same way.
//!
//! Under `cargo test` (no `--bench`) it is a smoke run: one round, a 2 s window.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstlivestreaming::rtmp::flv::{FlvParser, Tag, TagKind};

/// The stream key every publisher uses.
const KEY: &str = "bench";

/// Encodes `seconds` of 720p30 H.264 (~4 Mbit/s) and AAC into the FLV file `path`.
fn pre_encode(path: &Path, seconds: u64) {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={v} pattern=snow \
         ! video/x-raw,width=1280,height=720,framerate=30/1,format=I420 \
         ! x264enc bitrate=4000 speed-preset=ultrafast tune=zerolatency key-int-max=60 \
         ! h264parse ! queue ! m. \
         audiotestsrc num-buffers={a} samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=2 \
         ! audioconvert ! voaacenc ! aacparse ! queue ! m. \
         flvmux name=m streamable=true ! filesink location={p}",
        v = seconds * 30,
        a = seconds * 44100 / 1024,
        p = path.display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("encoding finished");
    assert!(
        matches!(msg.view(), gst::MessageView::Eos(_)),
        "encoding: {msg:?}"
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Audio and video frames in FLV fed piece by piece (codec configurations, ends of sequence and
/// script data not counted): all of them, and those up to `cut` ms after the first tag. rtmp2src
/// sometimes loses the last video frame when the publisher leaves (its EOS on
/// `NetStream.Play.UnpublishNotify` comes first; ffmpeg playing from the same nginx gets it), so
/// the check that both sides received the file is on the frames before the cut.
#[derive(Debug)]
struct FrameCounter {
    parser: FlvParser,
    cut: u32,
    first: Option<u32>,
    /// Video, audio.
    all: (u64, u64),
    before_cut: (u64, u64),
}

impl FrameCounter {
    fn new(cut: u32) -> Self {
        Self {
            parser: FlvParser::new(1 << 24),
            cut,
            first: None,
            all: (0, 0),
            before_cut: (0, 0),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.parser.feed(data);
        while let Ok(Some(tag)) = self.parser.next_tag() {
            let first = *self.first.get_or_insert(tag.timestamp);
            if tag.is_sequence_header() || end_of_sequence(&tag) || tag.data.len() < 2 {
                continue;
            }
            let early = tag.timestamp.wrapping_sub(first) <= self.cut;
            let (all, before) = match tag.kind {
                TagKind::Video => (&mut self.all.0, &mut self.before_cut.0),
                TagKind::Audio => (&mut self.all.1, &mut self.before_cut.1),
                TagKind::Script => continue,
            };
            *all += 1;
            if early {
                *before += 1;
            }
        }
    }
}

/// An AVC end of sequence (AVCPacketType 2), or an Enhanced RTMP SequenceEnd (PacketType 2): no
/// frame (ffmpeg passes flvmux's on; nginx-rtmp does not).
fn end_of_sequence(tag: &Tag) -> bool {
    let (Some(&b0), Some(&b1)) = (tag.data.first(), tag.data.get(1)) else {
        return false;
    };
    tag.kind == TagKind::Video
        && if b0 & 0x80 != 0 {
            b0 & 0x0f == 2
        } else {
            b0 & 0x0f == 7 && b1 == 2
        }
}

/// Where to cut the FLV file at `path` for the check (see [`FrameCounter`]): about 1 s before
/// its end, in the middle of the widest gap between two of its frames there, so that a publisher
/// whose timestamps come out a few milliseconds off (remuxed, rebased) still has the same frames
/// on each side of it.
fn choose_cut(path: &Path) -> u32 {
    let mut parser = FlvParser::new(1 << 24);
    parser.feed(&std::fs::read(path).unwrap());
    let mut times = Vec::new();
    let mut first = None;
    while let Ok(Some(tag)) = parser.next_tag() {
        let first = *first.get_or_insert(tag.timestamp);
        if tag.kind != TagKind::Script && !tag.is_sequence_header() && !end_of_sequence(&tag) {
            times.push(tag.timestamp.wrapping_sub(first));
        }
    }
    times.sort_unstable();
    let end = times.last().copied().unwrap_or(0);
    let (from, to) = (end.saturating_sub(1500), end.saturating_sub(500));
    times
        .windows(2)
        .filter(|w| w[0] >= from && w[1] <= to)
        .max_by_key(|w| w[1] - w[0])
        .map_or(end.saturating_sub(1000), |w| (w[0] + w[1]) / 2)
}

/// The frames of the FLV file at `path`: (all, before `cut`), each (video, audio).
fn count_file(path: &Path, cut: u32) -> ((u64, u64), (u64, u64)) {
    let mut c = FrameCounter::new(cut);
    c.feed(&std::fs::read(path).unwrap());
    (c.all, c.before_cut)
}

/// The receiving child: `SOURCE ! fakesink`, the FLV reaching the fakesink counted. Prints
/// `READY PORT` (the port rtmpserversrc listens on, 0 for rtmp2src) once playing, `COUNT video
/// audio video-before-cut audio-before-cut` twice a second, and `EOS ...` with the same counts
/// at the end of the stream, then waits to be killed.
fn receive(source: &str, cut: u32, plugin: Option<&Path>) {
    gst::init().unwrap();
    if let Some(p) = plugin {
        load_plugin(p, "rtmpserversrc");
    }
    let pipeline = gst::parse::launch(&format!(
        "{source} name=src ! fakesink name=sink sync=false async=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let counter = Arc::new(Mutex::new(FrameCounter::new(cut)));
    let c = counter.clone();
    pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer()
                && let Ok(map) = buffer.map_readable()
            {
                c.lock().unwrap().feed(&map);
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    let src = pipeline.by_name("src").unwrap();
    let port = if src.has_property("bound-port") {
        src.property::<i32>("bound-port")
    } else {
        0
    };
    println!("READY {port}");
    std::io::stdout().flush().unwrap();
    let counts = move || {
        let c = counter.lock().unwrap();
        format!(
            "{} {} {} {}",
            c.all.0, c.all.1, c.before_cut.0, c.before_cut.1
        )
    };
    let bus = pipeline.bus().unwrap();
    loop {
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(500),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => {
                println!("EOS {}", counts());
                break;
            }
            Some(gst::MessageView::Error(e)) => {
                println!("ERROR {} {:?}", e.error(), e.debug());
                break;
            }
            _ => println!("COUNT {}", counts()),
        }
        std::io::stdout().flush().unwrap();
    }
    std::io::stdout().flush().unwrap();
    // Stay until the parent ends this process: a publisher may still be closing its session
    // (rtmp2sink reports an error when the server goes away before it has closed).
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What a receiving child reported last.
#[derive(Debug, Default, Clone)]
struct Report {
    /// Video, audio frames so far.
    frames: (u64, u64),
    /// Of them, up to the cut.
    before_cut: (u64, u64),
    /// The stream ended (EOS), or the error it ended with.
    end: Option<Result<(), String>>,
}

/// A receiving child: its process and what it printed.
struct Receiver {
    guard: Guard,
    port: u16,
    report: Arc<Mutex<Report>>,
}

impl Receiver {
    fn start(exe: &Path, args: &[&str]) -> Receiver {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn receiver");
        let stdout = child.stdout.take().unwrap();
        let guard = Guard(child);
        let report: Arc<Mutex<Report>> = Arc::default();
        let r = report.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let parse = |rest: &str, r: &mut Report| {
                let v: Vec<u64> = rest
                    .split_whitespace()
                    .map(|v| v.parse().unwrap_or(0))
                    .collect();
                let n = |i: usize| v.get(i).copied().unwrap_or(0);
                r.frames = (n(0), n(1));
                r.before_cut = (n(2), n(3));
            };
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("READY ") {
                    let _ = tx.send(port.trim().parse::<u16>().unwrap_or(0));
                } else if let Some(rest) = line.strip_prefix("COUNT ") {
                    parse(rest, &mut r.lock().unwrap());
                } else if let Some(rest) = line.strip_prefix("EOS ") {
                    let mut r = r.lock().unwrap();
                    parse(rest, &mut r);
                    r.end = Some(Ok(()));
                } else if let Some(rest) = line.strip_prefix("ERROR ") {
                    r.lock().unwrap().end = Some(Err(rest.to_owned()));
                }
            }
            let mut r = r.lock().unwrap();
            if r.end.is_none() {
                r.end = Some(Err("exited without EOS".into()));
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("receiver ready");
        Receiver {
            guard,
            port,
            report,
        }
    }

    fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    fn report(&self) -> Report {
        self.report.lock().unwrap().clone()
    }

    /// Waits until the stream ended (bounded).
    fn wait_end(&self, timeout: Duration) -> Report {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.report();
            if r.end.is_some() || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn start_nginx(dir: &Path, port: u16) -> Guard {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let conf = format!(
        "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
         pid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nworker_processes 1;\n\
         events {{ worker_connections 64; }}\n\
         rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; }} }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .args([
            "-p",
            &dir.display().to_string(),
            "-c",
            &dir.join("nginx.conf").display().to_string(),
            "-g",
            "daemon off; master_process off;",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// `ffmpeg -re -i FILE -c copy -f flv URL`, its messages into `log`.
fn publish(file: &Path, url: &str, log: &Path) -> Guard {
    let child = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-i"])
        .arg(file)
        .args(["-c", "copy", "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("ffmpeg");
    Guard(child)
}

/// One side of the comparison, as set up for a round.
struct Side {
    /// The processes whose CPU and memory count for this side.
    pids: Vec<u32>,
    /// Where its ffmpeg publishes.
    url: String,
    /// The child that counts what it received.
    receiver: Receiver,
    /// nginx, for the stock side.
    _server: Option<Guard>,
}

/// Where one side's receiver comes from.
enum Kind {
    /// rtmpserversrc of this plugin build.
    Ours(PluginBuild),
    /// nginx-rtmp + rtmp2src.
    Stock,
}

impl Kind {
    fn label(&self) -> String {
        match self {
            Kind::Ours(b) if b.label == "current" => "rtmpserversrc".into(),
            Kind::Ours(b) => format!("rtmpserversrc {}", b.label),
            Kind::Stock => "nginx-rtmp + rtmp2src".into(),
        }
    }

    fn start(&self, exe: &Path, dir: &Path, cut: u32) -> Side {
        match self {
            Kind::Ours(build) => {
                let receiver = Receiver::start(
                    exe,
                    &[
                        "--receive-ours",
                        &cut.to_string(),
                        &build.file.display().to_string(),
                        &format!(
                            "rtmpserversrc address=127.0.0.1 port=0 application=live \
                             stream-key={KEY}"
                        ),
                    ],
                );
                Side {
                    pids: vec![receiver.pid()],
                    url: format!("rtmp://127.0.0.1:{}/live/{KEY}", receiver.port),
                    receiver,
                    _server: None,
                }
            }
            Kind::Stock => {
                let port = free_port();
                let nginx_dir = dir.join(format!("nginx-{port}"));
                let nginx = start_nginx(&nginx_dir, port);
                let url = format!("rtmp://127.0.0.1:{port}/live/{KEY}");
                let receiver = Receiver::start(
                    exe,
                    &[
                        "--receive-stock",
                        &cut.to_string(),
                        &format!("rtmp2src location={url}"),
                    ],
                );
                // rtmp2src connects and asks to play from its streaming thread: let it be
                // waiting at nginx before the publisher comes.
                std::thread::sleep(Duration::from_secs(2));
                Side {
                    pids: vec![receiver.pid(), nginx.0.id()],
                    url,
                    receiver,
                    _server: Some(nginx),
                }
            }
        }
    }
}

/// One side over one round.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    /// Share of one core, all of the side's processes.
    cpu: f64,
    /// Of it, each process (receiver, then nginx).
    cpu_each: [f64; 2],
    /// Peak RSS, MiB, all of the side's processes.
    rss: f64,
    /// The publishing ffmpeg's share of one core.
    publisher_cpu: f64,
    /// Frames received in the window, video + audio.
    window_frames: u64,
}

/// Whether the child exited successfully within `timeout`.
fn exited_ok(child: &mut Guard, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.0.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => return false,
        }
    }
}

fn copy_of(b: &PluginBuild) -> PluginBuild {
    PluginBuild {
        label: b.label.clone(),
        file: b.file.clone(),
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// What every part of a run shares.
struct Setup {
    exe: PathBuf,
    dir: PathBuf,
    file: PathBuf,
    media_seconds: u64,
    /// The measuring window.
    seconds: u64,
    rounds: usize,
    /// See [`FrameCounter`].
    cut: u32,
    /// The file's frames (video, audio): all, and before the cut.
    file_all: (u64, u64),
    file_before: (u64, u64),
}

impl Setup {
    /// Waits until `receiver` saw the end of the stream and `publisher` exited, and checks that
    /// every frame of the file before the cut arrived. Returns whether it did, and the frames
    /// received in all.
    fn check(
        &self,
        what: &str,
        receiver: &Receiver,
        publisher: &mut Guard,
        log: &Path,
    ) -> (bool, (u64, u64)) {
        let report = receiver.wait_end(Duration::from_secs(self.media_seconds + 30));
        let publisher_ok = exited_ok(publisher, Duration::from_secs(10));
        let ok =
            report.end == Some(Ok(())) && report.before_cut == self.file_before && publisher_ok;
        if !ok {
            eprintln!(
                "{what}: received {:?} of the file's {:?} frames (video, audio) up to the cut \
                 (about 1 s before the end), end {:?}, publisher {} (its log: {})",
                report.before_cut,
                self.file_before,
                report.end,
                if publisher_ok {
                    "ok"
                } else {
                    "not done or failed"
                },
                log.display()
            );
        }
        (ok, report.frames)
    }
}

/// Run time so far of each thread of process `pid`: thread id -> (name, seconds), from
/// /proc/PID/task/TID/{comm,schedstat}.
fn threads_of(pid: u32) -> HashMap<u32, (String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let ns: u64 = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((tid, (comm.trim().to_owned(), ns as f64 / 1e9)))
        })
        .collect()
}

/// "name 0.41, other 0.12 (x2)": each thread name's share of one core in %, between two
/// [`threads_of`] snapshots `elapsed` seconds apart, largest first.
fn thread_shares(
    before: &HashMap<u32, (String, f64)>,
    after: &HashMap<u32, (String, f64)>,
    elapsed: f64,
) -> String {
    let mut by_name: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for (tid, (name, t1)) in after {
        let t0 = before.get(tid).map_or(0.0, |(_, t)| *t);
        let e = by_name.entry(name.as_str()).or_default();
        e.0 += (t1 - t0) / elapsed * 100.0;
        e.1 += 1;
    }
    let mut v: Vec<_> = by_name
        .into_iter()
        .filter(|(_, (s, _))| *s >= 0.01)
        .collect();
    v.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    v.iter()
        .map(|(name, (share, n))| {
            if *n > 1 {
                format!("{name} {share:.2} (x{n})")
            } else {
                format!("{name} {share:.2}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`window`] measured.
struct Measured {
    /// Per entry of `pids`, each process's share of one core.
    shares: Vec<Vec<f64>>,
    /// Frames received in the window, per entry of what `frames` returns.
    frames: Vec<u64>,
    /// Per process of `detail`, its threads' shares (see [`thread_shares`]).
    threads: Vec<String>,
}

/// Measures `pids` (each a list of processes whose CPU adds up) over the window: 3 s from now,
/// `seconds` long; and the threads of each process in `detail`.
fn window(
    pids: &[Vec<u32>],
    detail: &[u32],
    seconds: u64,
    frames: &dyn Fn() -> Vec<u64>,
) -> Measured {
    std::thread::sleep(Duration::from_secs(3));
    let f0 = frames();
    let cpu = || -> Vec<Vec<f64>> {
        pids.iter()
            .map(|ps| ps.iter().map(|&p| cpu_seconds(p)).collect())
            .collect()
    };
    let threads0: Vec<_> = detail.iter().map(|&p| threads_of(p)).collect();
    let cpu0 = cpu();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu1 = cpu();
    let threads1: Vec<_> = detail.iter().map(|&p| threads_of(p)).collect();
    let elapsed = t0.elapsed().as_secs_f64();
    let f1 = frames();
    Measured {
        shares: cpu1
            .iter()
            .zip(&cpu0)
            .map(|(b, a)| b.iter().zip(a).map(|(b, a)| (b - a) / elapsed).collect())
            .collect(),
        frames: f1.iter().zip(&f0).map(|(b, a)| b - a).collect(),
        threads: threads0
            .iter()
            .zip(&threads1)
            .map(|(a, b)| thread_shares(a, b, elapsed))
            .collect(),
    }
}

/// rtmpserversrc against nginx-rtmp + rtmp2src (or the baseline's rtmpserversrc), each fed by
/// ffmpeg. Returns whether every receiver got every frame.
fn part_receive(setup: &Setup, sides: &[Kind; 2]) -> bool {
    let Setup {
        exe,
        dir,
        file,
        seconds,
        rounds,
        cut,
        file_all,
        ..
    } = setup;
    let labels = [sides[0].label(), sides[1].label()];
    let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    let mut complete = true;
    for round in 0..*rounds {
        let started: Vec<Side> = sides.iter().map(|k| k.start(exe, dir, *cut)).collect();
        let mut publishers: Vec<(usize, Guard)> = Vec::new();
        for &i in &round_order(round) {
            let log = dir.join(format!("ffmpeg-{round}-{i}.log"));
            publishers.push((i, publish(file, &started[i].url, &log)));
            std::thread::sleep(Duration::from_millis(100));
        }
        publishers.sort_by_key(|(i, _)| *i);
        let mut pids: Vec<Vec<u32>> = started.iter().map(|s| s.pids.clone()).collect();
        pids.extend(publishers.iter().map(|(_, g)| vec![g.0.id()]));
        let frames = || -> Vec<u64> {
            started
                .iter()
                .map(|s| {
                    let (v, a) = s.receiver.report().frames;
                    v + a
                })
                .collect()
        };
        let detail: Vec<u32> = started.iter().map(|s| s.receiver.pid()).collect();
        let m = window(&pids, &detail, *seconds, &frames);
        for (k, side) in started.iter().enumerate() {
            let each = &m.shares[k];
            runs[k].push(Figures {
                cpu: each.iter().sum(),
                cpu_each: [
                    each.first().copied().unwrap_or(0.0),
                    each.get(1).copied().unwrap_or(0.0),
                ],
                rss: side.pids.iter().map(|&p| peak_rss_mib(p)).sum(),
                publisher_cpu: m.shares[2 + k][0],
                window_frames: m.frames[k],
            });
        }
        // The rest of the file, then every frame must have arrived.
        let mut totals = Vec::new();
        for (k, side) in started.iter().enumerate() {
            let log = dir.join(format!("ffmpeg-{round}-{k}.log"));
            let what = format!("round {round} {}", labels[k]);
            let (ok, all) = setup.check(&what, &side.receiver, &mut publishers[k].1, &log);
            complete &= ok;
            totals.push(all);
        }
        eprintln!(
            "round {round}: {} {:.2} %, {} {:.2} %{}, frames in the window {} / {}, \
             in all {:?} / {:?} of the file's {file_all:?}",
            labels[0],
            runs[0][round].cpu * 100.0,
            labels[1],
            runs[1][round].cpu * 100.0,
            match sides[1] {
                Kind::Stock => format!(
                    " (rtmp2src {:.2} + nginx {:.2})",
                    runs[1][round].cpu_each[0] * 100.0,
                    runs[1][round].cpu_each[1] * 100.0
                ),
                Kind::Ours(_) => String::new(),
            },
            runs[0][round].window_frames,
            runs[1][round].window_frames,
            totals[0],
            totals[1],
        );
        for (k, label) in labels.iter().enumerate() {
            eprintln!(
                "  {label}: receiving process's threads, CPU %: {}",
                m.threads[k]
            );
        }
    }
    let cpu = |i: usize| -> Vec<f64> { runs[i].iter().map(|f| f.cpu).collect() };
    let each =
        |i: usize, k: usize| mean(&runs[i].iter().map(|f| f.cpu_each[k]).collect::<Vec<_>>());
    let rss = |i: usize| runs[i].iter().map(|f| f.rss).fold(0.0, f64::max);
    let publisher = |i: usize| mean(&runs[i].iter().map(|f| f.publisher_cpu).collect::<Vec<_>>());
    let frames = |i: usize| median(runs[i].iter().map(|f| f.window_frames as f64).collect());
    let [a, b] = &labels;
    println!();
    println!(
        "Receivers fed by ffmpeg -re -c copy, {rounds} x {seconds} s, both at once; CPU % of one core"
    );
    println!();
    println!(
        "| {a} CPU % | {b} CPU % | ratio | per-round ratios | {a} RSS MiB | {b} RSS MiB | frames in the window | publishers' CPU % |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let b_cpu = match &sides[1] {
        Kind::Stock => format!(
            "{:.2} ({:.2} + {:.2})",
            mean(&cpu(1)) * 100.0,
            each(1, 0) * 100.0,
            each(1, 1) * 100.0
        ),
        Kind::Ours(_) => format!("{:.2}", mean(&cpu(1)) * 100.0),
    };
    println!(
        "| {:.2} | {b_cpu} | {:.2} | {} | {:.1} | {:.1} | {:.0} / {:.0} | {:.2} / {:.2} |",
        mean(&cpu(0)) * 100.0,
        mean(&cpu(0)) / mean(&cpu(1)),
        ratio_line(&cpu(0), &cpu(1)),
        rss(0),
        rss(1),
        frames(0),
        frames(1),
        publisher(0) * 100.0,
        publisher(1) * 100.0,
    );
    if matches!(sides[1], Kind::Stock) {
        println!();
        println!("(nginx-rtmp + rtmp2src: rtmp2src's process + nginx's, means)");
    }
    complete
}

/// The pipeline every GStreamer publisher runs: the file played in real time (`clocksync`),
/// remuxed by flvmux, into `sink` (`fakesink` for the input alone).
fn input_pipeline(file: &Path, sink: &str) -> Vec<String> {
    format!(
        "filesrc location={} ! flvdemux name=d \
         d.video ! queue ! h264parse ! clocksync ! m.video \
         d.audio ! queue ! aacparse ! clocksync ! m.audio \
         flvmux name=m streamable=true ! {sink}",
        file.display()
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// A `gst-launch-1.0` child running `args` with `build`'s plugin, its stderr into `log`.
fn launch(args: &[String], build: &PluginBuild, log: &Path) -> Guard {
    let mut cmd = Command::new("gst-launch-1.0");
    build.plugin_env(&mut cmd);
    let child = cmd
        .arg("-q")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("gst-launch-1.0");
    Guard(child)
}

/// rsrtmpsink against rtmp2sink (or the baseline's rsrtmpsink), each publishing the file in
/// real time into an rtmpserversrc of the current build; the input pipeline alone into fakesink
/// measured in the same window. Returns whether every receiver got every frame.
fn part_publish(
    setup: &Setup,
    sides: &[(String, &str, &PluginBuild); 2],
    current: &PluginBuild,
) -> bool {
    let Setup {
        exe,
        dir,
        file,
        seconds,
        rounds,
        cut,
        ..
    } = setup;
    let mut cpu: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut rss: [f64; 2] = [0.0; 2];
    let mut alone = Vec::new();
    let mut complete = true;
    for round in 0..*rounds {
        let receivers: Vec<Receiver> = (0..2)
            .map(|_| Kind::Ours(copy_of(current)).start(exe, dir, *cut).receiver)
            .collect();
        let mut publishers: Vec<(usize, Guard)> = Vec::new();
        for &i in &round_order(round) {
            let (_, sink, build) = &sides[i];
            let url = format!("rtmp://127.0.0.1:{}/live/{KEY}", receivers[i].port);
            let log = dir.join(format!("publish-{round}-{i}.log"));
            let args = input_pipeline(file, &format!("{sink} location={url}"));
            publishers.push((i, launch(&args, build, &log)));
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = dir.join(format!("publish-{round}-alone.log"));
        publishers.push((2, launch(&input_pipeline(file, "fakesink"), current, &log)));
        publishers.sort_by_key(|(i, _)| *i);
        let pids: Vec<Vec<u32>> = publishers.iter().map(|(_, g)| vec![g.0.id()]).collect();
        let m = window(&pids, &[], *seconds, &|| Vec::new());
        let shares = m.shares;
        for k in 0..2 {
            cpu[k].push(shares[k][0]);
            rss[k] = rss[k].max(peak_rss_mib(pids[k][0]));
        }
        alone.push(shares[2][0]);
        for (k, receiver) in receivers.iter().enumerate() {
            let log = dir.join(format!("publish-{round}-{k}.log"));
            let what = format!("round {round} {}", sides[k].0);
            let (ok, _) = setup.check(&what, receiver, &mut publishers[k].1, &log);
            complete &= ok;
        }
        eprintln!(
            "round {round}: {} {:.2} %, {} {:.2} %, input alone {:.2} %",
            sides[0].0,
            shares[0][0] * 100.0,
            sides[1].0,
            shares[1][0] * 100.0,
            shares[2][0] * 100.0
        );
    }
    let (a, b) = (&sides[0].0, &sides[1].0);
    let input = mean(&alone);
    println!();
    println!(
        "Publishers into rtmpserversrc, the file played in real time through flvdemux ! \
         clocksync ! flvmux, {rounds} x {seconds} s, all at once; CPU % of one core"
    );
    println!();
    println!(
        "| {a} CPU % | {b} CPU % | ratio | per-round ratios | {a} RSS MiB | {b} RSS MiB | input alone CPU % | ratio without it |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {:.2} | {:.2} |",
        mean(&cpu[0]) * 100.0,
        mean(&cpu[1]) * 100.0,
        mean(&cpu[0]) / mean(&cpu[1]),
        ratio_line(&cpu[0], &cpu[1]),
        rss[0],
        rss[1],
        input * 100.0,
        (mean(&cpu[0]) - input) / (mean(&cpu[1]) - input),
    );
    complete
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--receive-ours") {
        let cut = args[i + 1].parse().unwrap();
        receive(&args[i + 3], cut, Some(Path::new(&args[i + 2])));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--receive-stock") {
        receive(&args[i + 2], args[i + 1].parse().unwrap(), None);
        return;
    }
    gst::init().unwrap();
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let smoke = smoke();
    let seconds = env("BENCH_SECONDS", if smoke { 2 } else { 20 });
    let rounds = env("BENCH_ROUNDS", if smoke { 1 } else { 3 }) as usize;
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "receive,publish".into());
    let exe = std::env::current_exe().unwrap();
    let dir = std::env::temp_dir().join(format!("rtmp-receive-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("current")).unwrap();
    // Our plugin alone in a directory, for gst-launch-1.0's GST_PLUGIN_PATH (see
    // PluginBuild::plugin_env).
    let current = PluginBuild {
        label: "current".into(),
        file: dir.join("current").join(PLUGIN_FILE),
    };
    std::fs::copy(PluginBuild::current().file, &current.file).unwrap();
    let baseline = PluginBuild::baseline();
    // Let the registries take in our plugin once, outside any measurement.
    for b in std::iter::once(&current).chain(baseline.as_ref()) {
        let _ = b
            .plugin_env(&mut Command::new("gst-inspect-1.0"))
            .arg("rsrtmpsink")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let media_seconds = seconds + 8;
    let file: PathBuf = dir.join("input.flv");
    pre_encode(&file, media_seconds);
    // Frames up to about 1 s before the end of the file must arrive (see FrameCounter).
    let cut = choose_cut(&file);
    let (file_all, file_before) = count_file(&file, cut);
    let size = std::fs::metadata(&file).unwrap().len();
    println!(
        "input: {media_seconds} s of 720p30 H.264 (pattern=snow, x264enc ultrafast) + AAC, \
         {:.2} Mbit/s, FLV, {} video and {} audio frames ({} and {} up to {cut} ms, which must \
         arrive)",
        size as f64 * 8.0 / media_seconds as f64 / 1e6,
        file_all.0,
        file_all.1,
        file_before.0,
        file_before.1,
    );
    if let Some(b) = &baseline {
        println!("baseline: {}", b.file.display());
    }
    let setup = Setup {
        exe,
        dir: dir.clone(),
        file,
        media_seconds,
        seconds,
        rounds,
        cut,
        file_all,
        file_before,
    };
    let (busy0, _) = machine_cpu_seconds();
    let t0 = Instant::now();
    let mut complete = true;
    if parts.contains("receive") {
        let sides: [Kind; 2] = match &baseline {
            Some(b) => [Kind::Ours(copy_of(&current)), Kind::Ours(copy_of(b))],
            None => [Kind::Ours(copy_of(&current)), Kind::Stock],
        };
        complete &= part_receive(&setup, &sides);
    }
    if parts.contains("publish") {
        let sides = match &baseline {
            Some(b) => [
                ("rsrtmpsink".to_owned(), "rsrtmpsink", &current),
                ("rsrtmpsink baseline".to_owned(), "rsrtmpsink", b),
            ],
            None => [
                ("rsrtmpsink".to_owned(), "rsrtmpsink", &current),
                ("rtmp2sink".to_owned(), "rtmp2sink", &current),
            ],
        };
        complete &= part_publish(&setup, &sides, &current);
    }
    let (busy1, _) = machine_cpu_seconds();
    println!();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {:.0} % of its {cores} cores busy on average during the run (all processes)",
        (busy1 - busy0) / t0.elapsed().as_secs_f64() / cores as f64 * 100.0
    );
    assert!(
        complete,
        "a receiver did not get every frame of the file (see above; the logs are kept in {}): \
         not a like-for-like run",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
