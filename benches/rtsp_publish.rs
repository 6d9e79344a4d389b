//! RTSP publishing both ways, in one run:
//! 1. rtspclientsink2 against the stock rtspclientsink, publishing the same stream into a
//!    gst-rtsp-server RECORD mount: the publisher's CPU and RSS.
//! 2. rtspserversrc against a gst-rtsp-server RECORD mount, each receiving the same stream from
//!    the stock rtspclientsink: the receiving server's CPU and RSS.
//!
//!     cargo bench --locked --bench rtsp_publish
//!
//! This process encodes BENCH_SECONDS + 10 s (default 30 s) of 720p30 H.264 (x264enc ultrafast,
//! `pattern=snow`, ~4 Mbit/s) and Opus (20 ms frames) once into a Matroska file in a temp dir.
//! Every publisher reads it with the same input pipeline, so that no encoder is measured:
//!
//!     filesrc ! matroskademux name=d  d.video_0 ! queue ! h264parse ! clocksync ! c.sink_0
//!       d.audio_0 ! queue ! clocksync ! c.sink_1   ELEMENT name=c location=URL protocols=P
//!
//! (`clocksync` plays it in real time for both sinks alike), each a `gst-launch-1.0` child.
//!
//! Part 1 (publishers): a gst-rtsp-server 1.22 RECORD mount (a child process, this binary with
//! `--serve-record`; each announced stream `identity ! fakesink`, its RTP packets counted) takes
//! rtspclientsink2 and rtspclientsink; two more children run the input pipeline alone into
//! `fakesink` (what both publishers' figures share), and the input through the stock payloaders the
//! stock publisher uses inside (`rtph264pay`, `rtpopuspay`; ours payloads H.264 and Opus in Rust)
//! into `fakesink`. Over UDP a fifth child sends the same datagrams through those payloaders and
//! `udpsink` to two sockets this process drains, without RTSP or RTCP: what the stock elements need
//! just to send this stream's datagrams (the table divides both publishers' CPU by it). They all
//! play at once and are measured over the same steady window (BENCH_SECONDS, default 20) that
//! starts 3 s after launch: CPU time of every thread (/proc/PID/task/*/schedstat) as a share of one
//! core, and peak RSS (VmHWM). BENCH_ROUNDS rounds (default 3) alternate which publisher starts
//! first; the CPU figures are means over the rounds, the ratios "without" subtract the shared
//! part's mean from both. The RTP packets the server got from each in the window are shown: they
//! must match (but for ours sending no access unit delimiters, about 6 % fewer). Before each
//! protocol's rounds, what one small send to a sleeping loopback receiver costs the sending thread
//! is measured; below the table, the floor: the input plus a send for each frame when it is due.
//!
//! Part 2 (receivers): two children, this binary with `--serve-record` (a gst-rtsp-server
//! RECORD mount as above) and with `--receive-ours` (`rtspserversrc`, each pad into the same
//! counting `fakesink`), each fed by its own stock `rtspclientsink` publishing the file (a
//! `gst-launch-1.0` child); measured as above, fresh servers every round.
//!
//! BENCH_PROTOCOLS (default `tcp,udp`) picks the lower transports; BENCH_PARTS (default
//! `publish,receive`) the parts.
//!
//! BENCH_BASELINE=DIR measures our elements against those of an earlier build instead of
//! against the stock ones: DIR holds that build's `libgstlivestreaming.so` (copy it aside before
//! changing the code); the method is the same, so the ratio tells whether a change made ours
//! cheaper, which the drift of this machine hides when two runs of the benchmark are compared.
//!
//! BENCH_OURS_PROPS="PROP=VALUE ..." adds properties to this build's rtspclientsink2 only (e.g.
//! `burst-latency=40`; with BENCH_BASELINE, the same build runs with and without them when
//! DIR holds a copy of it).
//!
//! BENCH_SERVE=SECONDS only encodes the file and serves a RECORD mount for that long, printing
//! the URL and the input pipeline, for profiling a publisher by hand (`perf record -g -p PID`).
//!
//! Under `cargo test` (no `--bench`) it is a smoke run: 2 s windows, one round, TCP.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

/// Mounts `/m0` ... of the part-1 server: one per publisher run, so that no run meets the
/// session a killed publisher left behind.
const MOUNTS: usize = 64;

/// The RECORD media: each stream's RTP into a fakesink, its packets counted. (`identity`, not a
/// depayloader: the stock rtspclientsink announces its streams in another order than its pads.)
const RECORD_LAUNCH: &str = "( identity name=depay0 \
    ! fakesink name=cnt0 sync=false async=false signal-handoffs=true \
    identity name=depay1 ! fakesink name=cnt1 sync=false async=false signal-handoffs=true )";

/// Connects the handoff of the fakesinks `cnt0`, `cnt1` in `bin` to `n`.
fn count_packets(bin: &gst::Bin, n: &Arc<AtomicU64>) {
    for name in ["cnt0", "cnt1"] {
        if let Some(sink) = bin.by_name(name) {
            let n = n.clone();
            sink.connect("handoff", false, move |_| {
                n.fetch_add(1, Ordering::Relaxed);
                None
            });
        }
    }
}

/// Video frames a second in the input.
const VIDEO_FPS: u64 = 30;
/// Audio frames a second in the input (Opus, 20 ms).
const AUDIO_FPS: u64 = 50;

/// Encodes `seconds` of 720p30 H.264 (~4 Mbit/s) and Opus into the Matroska file `path`.
fn pre_encode(path: &Path, seconds: u64) {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={v} pattern=snow \
         ! video/x-raw,width=1280,height=720,framerate={VIDEO_FPS}/1,format=I420 \
         ! x264enc bitrate=4000 speed-preset=ultrafast tune=zerolatency key-int-max=60 \
         ! h264parse ! queue ! m. \
         audiotestsrc num-buffers={a} samplesperbuffer=960 ! audio/x-raw,rate=48000,channels=2 \
         ! opusenc frame-size=20 ! queue ! m. \
         matroskamux name=m ! filesink location={p}",
        v = seconds * VIDEO_FPS,
        a = seconds * AUDIO_FPS,
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

/// How an input pipeline ends.
enum End<'a> {
    /// In this element (named `c`, with `sink_0`/`sink_1` request pads).
    Sink(&'a str),
    /// In two fakesinks: the input alone.
    Fakesink,
    /// In the stock payloaders (as the stock publisher uses inside) and two fakesinks.
    Payloaders,
    /// In the stock payloaders and two `udpsink`s to these loopback ports (video, audio): the
    /// same datagrams without RTSP or RTCP, the cheapest way the stock elements send them.
    BareUdp(u16, u16),
}

/// The input pipeline every publisher runs, ending as `end` says.
fn input_pipeline(file: &Path, end: End) -> Vec<String> {
    let (video, audio, sink) = match end {
        End::Sink(s) => ("c.sink_0".to_owned(), "c.sink_1".to_owned(), s),
        End::Fakesink => ("fakesink".to_owned(), "fakesink".to_owned(), ""),
        End::Payloaders => (
            "rtph264pay mtu=1400 config-interval=-1 ! fakesink".to_owned(),
            "rtpopuspay mtu=1400 ! fakesink".to_owned(),
            "",
        ),
        End::BareUdp(v, a) => (
            format!(
                "rtph264pay mtu=1400 config-interval=-1 ! udpsink host=127.0.0.1 port={v} sync=false"
            ),
            format!("rtpopuspay mtu=1400 ! udpsink host=127.0.0.1 port={a} sync=false"),
            "",
        ),
    };
    format!(
        "filesrc location={} ! matroskademux name=d \
         d.video_0 ! queue ! h264parse ! clocksync ! {video} \
         d.audio_0 ! queue ! clocksync ! {audio} {sink}",
        file.display(),
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// Two loopback UDP sockets (video, audio) that threads of this process read and count until
/// it is dropped: what the `udpsink`s of [`End::BareUdp`] send to.
struct UdpDrain {
    ports: [u16; 2],
    count: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpDrain {
    fn start() -> UdpDrain {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut ports = [0; 2];
        let mut threads = Vec::new();
        for port in &mut ports {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            *port = socket.local_addr().unwrap().port();
            let (count, stop) = (count.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv(&mut buf).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        UdpDrain {
            ports,
            count,
            stop,
            threads,
        }
    }
}

impl Drop for UdpDrain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Counts of RTP packets per name, printed by the serving children as `COUNT name n` once a second
/// and read back by the parent.
type Counters = Arc<Mutex<Vec<(String, Arc<AtomicU64>)>>>;

fn print_counts(counters: Counters) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let mut out = std::io::stdout().lock();
            for (name, n) in counters.lock().unwrap().iter() {
                let _ = writeln!(out, "COUNT {name} {}", n.load(Ordering::Relaxed));
            }
            let _ = out.flush();
        }
    });
}

/// The child: gst-rtsp-server with RECORD mounts `mounts` (e.g. `/m0`), taking publishers over
/// `protocols` (`tcp`, `udp`, `udp+tcp`); prints READY, then the RTP packets each mount got.
fn serve_record(port: &str, mounts: &[String], protocols: &str) {
    gst::init().unwrap();
    let main_loop = glib::MainLoop::new(None, false);
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(port);
    let counters: Counters = Arc::default();
    let mut lower = gst_rtsp::RTSPLowerTrans::empty();
    if protocols.contains("udp") {
        lower |= gst_rtsp::RTSPLowerTrans::UDP;
    }
    if protocols.contains("tcp") {
        lower |= gst_rtsp::RTSPLowerTrans::TCP;
    }
    for mount in mounts {
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(RECORD_LAUNCH);
        factory.set_transport_mode(gst_rtsp_server::RTSPTransportMode::RECORD);
        factory.set_protocols(lower);
        let n = Arc::new(AtomicU64::new(0));
        counters.lock().unwrap().push((mount.clone(), n.clone()));
        factory.connect_media_configure(move |_, media| {
            count_packets(&media.element().downcast::<gst::Bin>().unwrap(), &n);
        });
        server.mount_points().unwrap().add_factory(mount, factory);
    }
    let _id = server.attach(None).expect("attach");
    println!("READY");
    std::io::stdout().flush().unwrap();
    print_counts(counters);
    main_loop.run();
}

/// The child: rtspserversrc (of the plugin file `plugin`) at `/live` into the same sinks as
/// [`RECORD_LAUNCH`]; prints READY, then the RTP packets it got.
fn serve_ours(port: &str, protocols: &str, plugin: &Path) {
    gst::init().unwrap();
    load_plugin(plugin, "rtspserversrc");
    let pipeline = gst::parse::launch(&format!(
        "rtspserversrc name=s address=127.0.0.1 port={port} mount-point=/live protocols={protocols} \
         s. ! fakesink name=cnt0 sync=false async=false signal-handoffs=true \
         s. ! fakesink name=cnt1 sync=false async=false signal-handoffs=true"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let n = Arc::new(AtomicU64::new(0));
    count_packets(pipeline.upcast_ref(), &n);
    pipeline.set_state(gst::State::Playing).unwrap();
    let counters: Counters = Arc::new(Mutex::new(vec![("/live".into(), n)]));
    println!("READY");
    std::io::stdout().flush().unwrap();
    print_counts(counters);
    let bus = pipeline.bus().unwrap();
    if let Some(msg) = bus.timed_pop_filtered(gst::ClockTime::NONE, &[gst::MessageType::Error]) {
        panic!("rtspserversrc: {msg:?}");
    }
}

/// A serving child and the latest counts it printed.
struct Server {
    guard: Guard,
    counts: Arc<Mutex<std::collections::HashMap<String, u64>>>,
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().unwrap();
        let guard = Guard(child);
        let counts: Arc<Mutex<std::collections::HashMap<String, u64>>> = Arc::default();
        let c = counts.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("READY") {
                    let _ = tx.send(());
                } else if let Some(rest) = line.strip_prefix("COUNT ")
                    && let Some((name, n)) = rest.split_once(' ')
                    && let Ok(n) = n.parse()
                {
                    c.lock().unwrap().insert(name.to_owned(), n);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("server ready");
        Server { guard, counts }
    }

    fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    fn count(&self, name: &str) -> u64 {
        self.counts.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

/// Where the elements of one side come from.
struct Side {
    /// In the table.
    label: String,
    /// The publishing element (part 1).
    publisher: &'static str,
    /// Our plugin build in its GST_PLUGIN_PATH (and, for part 2, the rtspserversrc it loads);
    /// None: the stock elements.
    build: Option<PluginBuild>,
}

/// BENCH_OURS_PROPS: properties for this build's rtspclientsink2 only (part 1).
fn ours_props() -> String {
    std::env::var("BENCH_OURS_PROPS").unwrap_or_default()
}

/// A `gst-launch-1.0` child running `args`, its stderr into `log`.
fn launch(
    args: &[String],
    build: Option<&PluginBuild>,
    fallback: &PluginBuild,
    log: &Path,
) -> Guard {
    let mut cmd = Command::new("gst-launch-1.0");
    build.unwrap_or(fallback).plugin_env(&mut cmd);
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

/// What one child did over a window.
#[derive(Clone, Copy, Default)]
struct Figures {
    /// Share of one core.
    cpu: f64,
    /// Peak, MiB.
    rss: f64,
    /// RTP packets the server got in the window.
    frames: u64,
}

/// Measures `pids` over the same window of `seconds`, 3 s after their start; `frames` reads the
/// frame counters that go with them. Every one of `alive` must still run at the end.
fn window(
    pids: &[u32],
    seconds: u64,
    frames: &dyn Fn() -> Vec<u64>,
    alive: &mut [(&str, &mut Guard)],
) -> Vec<Figures> {
    std::thread::sleep(Duration::from_secs(3));
    let f0 = frames();
    let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu1: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let elapsed = t0.elapsed().as_secs_f64();
    let f1 = frames();
    for (label, guard) in alive.iter_mut() {
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "{label} exited before the window's end (its log is in the temp dir)"
        );
    }
    pids.iter()
        .enumerate()
        .map(|(k, &p)| Figures {
            cpu: (cpu1[k] - cpu0[k]) / elapsed,
            rss: peak_rss_mib(p),
            frames: f1.get(k).copied().unwrap_or(0) - f0.get(k).copied().unwrap_or(0),
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// One table row per protocol: per side mean CPU %, the ratio and its spread, peak RSS, frames.
fn row(proto: &str, runs: &[Vec<Figures>; 2], extra: &str) -> String {
    let cpu = |i: usize| -> Vec<f64> { runs[i].iter().map(|f| f.cpu).collect() };
    let rss = |i: usize| runs[i].iter().map(|f| f.rss).fold(0.0, f64::max);
    let frames = |i: usize| median(runs[i].iter().map(|f| f.frames as f64).collect());
    format!(
        "| {proto} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {:.0} / {:.0} |{extra}",
        mean(&cpu(0)) * 100.0,
        mean(&cpu(1)) * 100.0,
        mean(&cpu(0)) / mean(&cpu(1)),
        ratio_line(&cpu(0), &cpu(1)),
        rss(0),
        rss(1),
        frames(0),
        frames(1),
    )
}

#[allow(clippy::too_many_arguments)]
fn part_publish(
    sides: &[Side; 2],
    current: &PluginBuild,
    exe: &Path,
    dir: &Path,
    file: &Path,
    protocols: &[String],
    seconds: u64,
    rounds: usize,
) {
    let port = free_port();
    let mounts: Vec<String> = (0..MOUNTS).map(|m| format!("/m{m}")).collect();
    let server = Server::start({
        let mut c = Command::new(exe);
        c.args(["--serve-record", &port.to_string(), "udp+tcp"])
            .args(&mounts);
        c
    });
    println!();
    println!(
        "Publishers into gst-rtsp-server, {rounds} x {seconds} s, all at once; CPU % of one core"
    );
    println!();
    let [a, b] = [&sides[0].label, &sides[1].label];
    println!(
        "| protocol | {a} CPU % | {b} CPU % | ratio | per-round ratios | {a} RSS MiB | {b} RSS MiB | RTP packets received | input alone CPU % | ratio without it | input and payloaders CPU % | ratio without them | payloaders into udpsink CPU % (packets) | {a} ÷ that | {b} ÷ that |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut next_mount = 0;
    let mut floors = Vec::new();
    for proto in protocols {
        let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
        let (mut alone, mut paying, mut bare) = (Vec::new(), Vec::new(), Vec::new());
        // Over UDP, the same datagrams sent by the stock payloaders and `udpsink` alone, into
        // sockets this process drains: what sending them costs the stock elements without RTSP.
        let drain = (proto == "udp").then(UdpDrain::start);
        let wake = wake_cost(proto);
        for round in 0..rounds {
            let mut guards: Vec<(usize, Guard)> = Vec::new();
            let mut mount_of = [String::new(), String::new()];
            for &i in &round_order(round) {
                let mount = &mounts[next_mount % MOUNTS];
                next_mount += 1;
                mount_of[i] = mount.clone();
                let ours = sides[i]
                    .build
                    .as_ref()
                    .is_some_and(|b| b.label == "current");
                let sink = format!(
                    "{} name=c location=rtsp://127.0.0.1:{port}{mount} protocols={proto} {}",
                    sides[i].publisher,
                    if ours { ours_props() } else { String::new() }
                );
                let log = dir.join(format!("publish-{proto}-{round}-{i}.log"));
                guards.push((
                    i,
                    launch(
                        &input_pipeline(file, End::Sink(&sink)),
                        sides[i].build.as_ref(),
                        current,
                        &log,
                    ),
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut ends = vec![(2, End::Fakesink), (3, End::Payloaders)];
            if let Some(d) = &drain {
                ends.push((4, End::BareUdp(d.ports[0], d.ports[1])));
            }
            for (k, end) in ends {
                let log = dir.join(format!("alone-{proto}-{round}-{k}.log"));
                guards.push((k, launch(&input_pipeline(file, end), None, current, &log)));
            }
            guards.sort_by_key(|(i, _)| *i);
            let pids: Vec<u32> = guards.iter().map(|(_, g)| g.0.id()).collect();
            let counts = || -> Vec<u64> {
                let mut v: Vec<u64> = mount_of.iter().map(|m| server.count(m)).collect();
                if let Some(d) = &drain {
                    v.extend([0, 0, d.count.load(Ordering::Relaxed)]);
                }
                v
            };
            let labels = [
                a.as_str(),
                b.as_str(),
                "input alone",
                "input and payloaders",
                "payloaders into udpsink",
            ];
            let mut alive: Vec<(&str, &mut Guard)> =
                guards.iter_mut().map(|(i, g)| (labels[*i], g)).collect();
            let figs = window(&pids, seconds, &counts, &mut alive);
            eprintln!(
                "{proto} round {round}: {a} {:.2} %, {b} {:.2} %, input alone {:.2} %, \
                 input and payloaders {:.2} %, packets {} / {}",
                figs[0].cpu * 100.0,
                figs[1].cpu * 100.0,
                figs[2].cpu * 100.0,
                figs[3].cpu * 100.0,
                figs[0].frames,
                figs[1].frames
            );
            if let Some(f) = figs.get(4) {
                eprintln!(
                    "{proto} round {round}: payloaders into udpsink {:.2} %, packets {}",
                    f.cpu * 100.0,
                    f.frames
                );
                bare.push(*f);
            }
            runs[0].push(figs[0]);
            runs[1].push(figs[1]);
            alone.push(figs[2].cpu);
            paying.push(figs[3].cpu);
        }
        let (input, pay) = (mean(&alone), mean(&paying));
        let whole = |i: usize| mean(&runs[i].iter().map(|f| f.cpu).collect::<Vec<_>>());
        let net = |i: usize, floor: f64| whole(i) - floor;
        let floor = if bare.is_empty() {
            " - | - | - |".to_owned()
        } else {
            let cpu = mean(&bare.iter().map(|f| f.cpu).collect::<Vec<_>>());
            let packets = median(bare.iter().map(|f| f.frames as f64).collect());
            format!(
                " {:.2} ({packets:.0}) | {:.2} | {:.2} |",
                cpu * 100.0,
                whole(0) / cpu,
                whole(1) / cpu
            )
        };
        let wakes = (VIDEO_FPS + AUDIO_FPS) as f64;
        floors.push(format!(
            "{proto}: a small {} to a sleeping loopback receiver costs the sender {:.0} µs \
             here; {VIDEO_FPS} video and {AUDIO_FPS} audio frames a second, each sent when it \
             is due, wake the server {wakes} times a second: {:.2} % of a core, {:.2} % with \
             the input, {:.2}x of {b}'s CPU.",
            if proto == "udp" {
                "datagram"
            } else {
                "TCP write"
            },
            wake * 1e6,
            wake * wakes * 100.0,
            (input + wake * wakes) * 100.0,
            (input + wake * wakes) / whole(1),
        ));
        println!(
            "{}",
            row(
                proto,
                &runs,
                &format!(
                    " {:.2} | {:.2} | {:.2} | {:.2} |{floor}",
                    input * 100.0,
                    net(0, input) / net(1, input),
                    pay * 100.0,
                    net(0, pay) / net(1, pay)
                )
            )
        );
    }
    drop(server);
    if !floors.is_empty() {
        println!();
        println!("The floor under any publisher that sends each frame when it is due:");
        for f in floors {
            println!("- {f}");
        }
    }
}

/// What one small send to a receiver asleep in `recv` on loopback costs the sending thread
/// (seconds of its CPU), over UDP (a datagram) or TCP (a write on a connection): the sender's
/// softirq carries the data into the receiving socket and wakes the receiver. Measured over 200
/// sends of 160 bytes 20 ms apart, as audio frames go.
fn wake_cost(proto: &str) -> f64 {
    use std::io::Read;
    /// A connected UDP socket, each write one datagram.
    struct Datagrams(std::net::UdpSocket);
    impl Write for Datagrams {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.send(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (mut tx, receiver): (Box<dyn Write>, _) = if proto == "udp" {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while rx.recv(&mut buf).is_ok() {}
        });
        (Box::new(Datagrams(tx)), receiver)
    } else {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tx = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        tx.set_nodelay(true).unwrap();
        let (mut rx, _) = listener.accept().unwrap();
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while rx.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        (Box::new(tx), receiver)
    };
    // The thread's clock, not /proc/thread-self/schedstat: that is brought up to date only
    // when the scheduler next accounts, not on every read.
    let thread_cpu = || -> u64 {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    };
    let mut spent = 0;
    const SENDS: u32 = 200;
    for _ in 0..SENDS {
        std::thread::sleep(Duration::from_millis(20));
        let t0 = thread_cpu();
        tx.write_all(&[0u8; 160]).unwrap();
        spent += thread_cpu() - t0;
    }
    drop(tx);
    receiver.join().unwrap();
    spent as f64 / 1e9 / f64::from(SENDS)
}

#[allow(clippy::too_many_arguments)]
fn part_receive(
    sides: &[Side; 2],
    current: &PluginBuild,
    exe: &Path,
    dir: &Path,
    file: &Path,
    protocols: &[String],
    seconds: u64,
    rounds: usize,
) {
    let [la, lb] = [0, 1].map(|i| match &sides[i].build {
        Some(b) if b.label != "current" => format!("rtspserversrc {}", b.label),
        Some(_) => "rtspserversrc".to_owned(),
        None => "gst-rtsp-server".to_owned(),
    });
    println!();
    println!(
        "Receivers fed by rtspclientsink, {rounds} x {seconds} s, both at once; CPU % of one core"
    );
    println!();
    println!(
        "| protocol | {la} CPU % | {lb} CPU % | ratio | per-round ratios | {la} RSS MiB | {lb} RSS MiB | RTP packets received |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for proto in protocols {
        let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let mut servers: Vec<(usize, Server, u16, &str)> = Vec::new();
            for &i in &round_order(round) {
                let port = free_port();
                let mut c = Command::new(exe);
                let mount = match &sides[i].build {
                    Some(build) => {
                        c.args(["--receive-ours", &port.to_string(), proto])
                            .arg(&build.file);
                        "/live"
                    }
                    None => {
                        c.args(["--serve-record", &port.to_string(), proto, "/live"]);
                        "/live"
                    }
                };
                servers.push((i, Server::start(c), port, mount));
            }
            servers.sort_by_key(|(i, ..)| *i);
            let mut publishers: Vec<Guard> = Vec::new();
            for &i in &round_order(round) {
                let (_, _, port, mount) = &servers[i];
                let sink = format!(
                    "rtspclientsink name=c location=rtsp://127.0.0.1:{port}{mount} protocols={proto}"
                );
                let log = dir.join(format!("feed-{proto}-{round}-{i}.log"));
                publishers.push(launch(
                    &input_pipeline(file, End::Sink(&sink)),
                    None,
                    current,
                    &log,
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            let pids: Vec<u32> = servers.iter().map(|(_, s, ..)| s.pid()).collect();
            let counts = || -> Vec<u64> { servers.iter().map(|(_, s, _, m)| s.count(m)).collect() };
            let mut alive: Vec<(&str, &mut Guard)> = publishers
                .iter_mut()
                .map(|g| ("a feeding rtspclientsink", g))
                .collect();
            let figs = window(&pids, seconds, &counts, &mut alive);
            for (_, s, ..) in servers.iter_mut() {
                assert!(
                    s.guard.0.try_wait().unwrap().is_none(),
                    "a receiver exited early"
                );
            }
            eprintln!(
                "{proto} round {round}: {la} {:.2} %, {lb} {:.2} %, packets {} / {}",
                figs[0].cpu * 100.0,
                figs[1].cpu * 100.0,
                figs[0].frames,
                figs[1].frames
            );
            runs[0].push(figs[0]);
            runs[1].push(figs[1]);
        }
        println!("{}", row(proto, &runs, ""));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-record") {
        serve_record(&args[i + 1], &args[i + 3..], &args[i + 2]);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--receive-ours") {
        serve_ours(&args[i + 1], &args[i + 2], Path::new(&args[i + 3]));
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
    let protocols: Vec<String> = std::env::var("BENCH_PROTOCOLS")
        .unwrap_or_else(|_| if smoke { "tcp" } else { "tcp,udp" }.into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "publish,receive".into());
    let exe = std::env::current_exe().unwrap();
    let dir = std::env::temp_dir().join(format!("rtsp-publish-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("current")).unwrap();
    // Our plugin alone in a directory, for GST_PLUGIN_PATH (see PluginBuild::plugin_env).
    let built = PluginBuild::current();
    let current = PluginBuild {
        label: "current".into(),
        file: dir.join("current").join(PLUGIN_FILE),
    };
    std::fs::copy(&built.file, &current.file).unwrap();
    let baseline = PluginBuild::baseline();
    // Let the registries take in our plugin once, outside any measurement.
    for b in std::iter::once(&current).chain(baseline.as_ref()) {
        let _ = b
            .plugin_env(&mut Command::new("gst-inspect-1.0"))
            .arg("rtspclientsink2")
            .stdout(Stdio::null())
            .status();
    }
    let file: PathBuf = dir.join("input.mkv");
    pre_encode(&file, seconds + 10);
    let size = std::fs::metadata(&file).unwrap().len();
    let current_side = |label: &str| Side {
        label: label.into(),
        publisher: "rtspclientsink2",
        build: Some(PluginBuild {
            label: "current".into(),
            file: current.file.clone(),
        }),
    };
    let sides: [Side; 2] = match baseline {
        Some(b) => {
            println!("baseline: {}", b.file.display());
            [
                current_side("rtspclientsink2"),
                Side {
                    label: "rtspclientsink2 baseline".into(),
                    publisher: "rtspclientsink2",
                    build: Some(b),
                },
            ]
        }
        None => [
            current_side("rtspclientsink2"),
            Side {
                label: "rtspclientsink".into(),
                publisher: "rtspclientsink",
                build: None,
            },
        ],
    };
    if let Ok(serve) = std::env::var("BENCH_SERVE") {
        let port = free_port();
        let _server = Server::start({
            let mut c = Command::new(&exe);
            c.args(["--serve-record", &port.to_string(), "udp+tcp", "/m0", "/m1"]);
            c
        });
        println!("serving rtsp://127.0.0.1:{port}/m0 and /m1 (RECORD)");
        println!(
            "GST_PLUGIN_PATH={} gst-launch-1.0 {}",
            dir.join("current").display(),
            input_pipeline(
                &file,
                End::Sink(&format!(
                    "rtspclientsink2 name=c location=rtsp://127.0.0.1:{port}/m0 protocols=tcp"
                ))
            )
            .join(" ")
        );
        std::thread::sleep(Duration::from_secs(
            serve.parse().expect("BENCH_SERVE: seconds"),
        ));
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let (busy0, _) = machine_cpu_seconds();
    let t0 = Instant::now();
    println!(
        "input: {} s of 720p30 H.264 (pattern=snow, x264enc ultrafast) + Opus, {:.2} Mbit/s, \
         Matroska, played in real time by clocksync",
        seconds + 10,
        size as f64 * 8.0 / (seconds + 10) as f64 / 1e6
    );
    if parts.contains("publish") {
        part_publish(
            &sides, &current, &exe, &dir, &file, &protocols, seconds, rounds,
        );
    }
    if parts.contains("receive") {
        part_receive(
            &sides, &current, &exe, &dir, &file, &protocols, seconds, rounds,
        );
    }
    let (busy1, _) = machine_cpu_seconds();
    println!();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "machine: {:.0} % of its {cores} cores busy on average during the run (all processes)",
        (busy1 - busy0) / t0.elapsed().as_secs_f64() / cores as f64 * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
