//! Pieces the benchmarks share: a pre-encoded ~4 Mbit/s H.264 stream played in real time over
//! UDP, the stock gst-rtsp-server serving it (in a child process), and per-process CPU and
//! memory figures from /proc.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs benchmarks without it, and then
/// each one makes a short smoke run: both elements still work on the input, nothing is measured.
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Encodes 10 s of 720p30 H.264 at ~4 Mbit/s into memory.
pub fn pre_encode() -> Vec<gst::Buffer> {
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=300 pattern=snow \
         ! video/x-raw,width=1280,height=720,framerate=30/1,format=I420 \
         ! x264enc bitrate=4000 speed-preset=ultrafast tune=zerolatency key-int-max=60 \
         ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au \
         ! appsink name=sink sync=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        frames.push(sample.buffer_owned().unwrap());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    frames
}

/// Plays `frames` in a loop in real time, payloaded, to each UDP port. Returns the RTP caps
/// (for the servers' udpsrc) once the payloader has them, and a stop flag.
pub fn start_feeder(frames: Vec<gst::Buffer>, ports: &[u16]) -> (String, Arc<AtomicBool>) {
    let mut desc = String::from(
        "appsrc name=src is-live=true format=time \
           caps=video/x-h264,stream-format=byte-stream,alignment=au,framerate=30/1 \
         ! rtph264pay name=pay pt=96 config-interval=-1 mtu=1400 ! tee name=t",
    );
    for port in ports {
        desc.push_str(&format!(
            " t. ! queue ! udpsink host=127.0.0.1 port={port} sync=false"
        ));
    }
    let pipeline = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let pay_src = pipeline.by_name("pay").unwrap().static_pad("src").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_feed = stop.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        for (n, frame) in frames.iter().cycle().enumerate() {
            if stop_feed.load(Ordering::Relaxed) {
                break;
            }
            let due = start + Duration::from_secs_f64(n as f64 / 30.0);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut frame = frame.copy();
            {
                let f = frame.get_mut().unwrap();
                let pts = gst::ClockTime::from_nseconds(n as u64 * 1_000_000_000 / 30);
                f.set_pts(pts);
                f.set_dts(pts);
            }
            if src.push_buffer(frame).is_err() {
                break;
            }
        }
        let _ = pipeline.set_state(gst::State::Null);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let caps = loop {
        if let Some(c) = pay_src.current_caps()
            && c.structure(0)
                .is_some_and(|s| s.has_field("sprop-parameter-sets"))
        {
            break c;
        }
        assert!(Instant::now() < deadline, "the feeder produced no caps");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Only what a receiver needs: drop ssrc/seqnum/timestamp offsets of this payloader.
    let s = caps.structure(0).unwrap();
    let mut keep = gst::Structure::new_empty("application/x-rtp");
    for (k, v) in s.iter() {
        if !matches!(k.as_str(), "ssrc" | "timestamp-offset" | "seqnum-offset") {
            keep.set_value(k, v.clone());
        }
    }
    (keep.to_string(), stop)
}

/// The stock server in this (child) process: `--serve-stock PORT UDP_PORT CAPS PROTOCOLS`,
/// serving the RTP that arrives at UDP_PORT at `/stream` over PROTOCOLS (`tcp` or `udp+tcp`).
/// Prints READY when it listens.
pub fn serve_stock(port: &str, udp_port: &str, caps: &str, protocols: &str) {
    serve_stock_with(port, udp_port, caps, protocols, "", "identity name=pay0");
}

/// [`serve_stock`] with more properties for its `udpsrc` (e.g. `buffer-size=4194304`) and
/// another element chain after it than `identity name=pay0` (it must end in `pay0`).
pub fn serve_stock_with(
    port: &str,
    udp_port: &str,
    caps: &str,
    protocols: &str,
    udpsrc: &str,
    pay: &str,
) {
    gst::init().unwrap();
    let main_loop = glib::MainLoop::new(None, false);
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(port);
    server.set_backlog(1024);
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(&format!(
        "( udpsrc address=127.0.0.1 port={udp_port} {udpsrc} caps=\"{}\" ! {pay} )",
        caps.replace('"', "\\\"")
    ));
    factory.set_shared(true);
    factory.set_protocols(if protocols.contains("udp") {
        gst_rtsp::RTSPLowerTrans::UDP | gst_rtsp::RTSPLowerTrans::TCP
    } else {
        gst_rtsp::RTSPLowerTrans::TCP
    });
    server
        .mount_points()
        .unwrap()
        .add_factory("/stream", factory);
    let _id = server.attach(None).expect("attach");
    println!("READY");
    std::io::stdout().flush().unwrap();
    main_loop.run();
}

pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds the process has run, summed over its threads, at nanosecond resolution
/// (/proc/PID/task/TID/schedstat). Threads that already exited are not counted, so measure
/// over windows in which the process keeps its threads.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// utime+stime of the process from /proc/PID/stat: counts threads that already exited, at the
/// kernel tick's resolution (10 ms). For runs whose threads come and go.
pub fn cpu_seconds_total(pid: u32) -> f64 {
    const CLK_TCK: f64 = 100.0; // sysconf(_SC_CLK_TCK) on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; after "pid (comm)" they are at 11 and 12.
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / CLK_TCK
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn spawn_ready(mut cmd: Command) -> Guard {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("READY") || line.contains("PLAYING") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("server ready");
    std::thread::sleep(Duration::from_millis(500));
    guard
}

/// Resident memory of the process now (VmRSS), in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_field(pid, "VmRSS:").map_or(0.0, |kb| kb / 1024.0)
}

/// Threads of the process now (/proc/PID/status Threads).
pub fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads:").map_or(0, |n| n as u64)
}

fn status_field(pid: u32, name: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
}

/// Machine-wide CPU seconds from /proc/stat: (busy, softirq), summed over all cores. Softirq
/// time is mostly the kernel delivering loopback packets; with tick-based accounting (no
/// CONFIG_IRQ_TIME_ACCOUNTING) it is also charged to the process it interrupted, or to
/// ksoftirqd when it was deferred. Busy time shows how loaded the (shared) machine was.
pub fn machine_cpu_seconds() -> (f64, f64) {
    const CLK_TCK: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy / CLK_TCK, get(6) / CLK_TCK)
}

/// The file name of our plugin in a build's output directory.
pub const PLUGIN_FILE: &str = "libgstlivestreaming.so";

/// One build of our plugin, for measuring the current build against an earlier one in the same
/// run (`BENCH_BASELINE=DIR`, DIR holding that build's `libgstlivestreaming.so`). The machine's
/// drift between two runs of a benchmark is larger than most changes, so a change is judged by
/// the ratio of the two builds measured side by side.
pub struct PluginBuild {
    /// In the output, e.g. "current" or "baseline".
    pub label: String,
    /// Its `libgstlivestreaming.so`.
    pub file: std::path::PathBuf,
}

impl PluginBuild {
    /// The plugin compiled together with this benchmark binary: cargo puts the cdylib next to
    /// the binary (target/release/deps under `cargo bench`), from the same compilation as the
    /// library the benchmark links, so it cannot be stale. Falls back to target/release
    /// (`cargo build --release`) when it is not there.
    pub fn current() -> Self {
        let exe = std::env::current_exe().unwrap();
        let deps = exe.parent().unwrap();
        let file = [deps, deps.parent().unwrap()]
            .iter()
            .map(|d| d.join(PLUGIN_FILE))
            .find(|f| f.exists())
            .unwrap_or_else(|| {
                panic!(
                    "no {PLUGIN_FILE} next to {}: cargo build --release --locked",
                    exe.display()
                )
            });
        Self {
            label: "current".into(),
            file,
        }
    }

    /// The build named by BENCH_BASELINE, if set.
    pub fn baseline() -> Option<Self> {
        let dir = std::path::PathBuf::from(std::env::var_os("BENCH_BASELINE")?);
        let file = dir.join(PLUGIN_FILE);
        assert!(
            file.exists(),
            "BENCH_BASELINE: no {PLUGIN_FILE} in {}",
            dir.display()
        );
        Some(Self {
            label: "baseline".into(),
            file,
        })
    }

    /// For a `gst-launch-1.0` / `gst-inspect-1.0` child: finds the plugin in this build's
    /// directory (GST_PLUGIN_PATH) and keeps a registry cache of its own there (GST_REGISTRY), so
    /// that two builds of the plugin do not replace each other in the default registry at every
    /// start. The directory should hold no other shared objects (target/release/deps holds
    /// proc-macro libraries that the scanner would try): copy the file aside first.
    pub fn plugin_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        let dir = self.file.parent().unwrap();
        cmd.env("GST_PLUGIN_PATH", dir).env(
            "GST_REGISTRY",
            dir.join(format!("registry-{}.bin", self.label)),
        )
    }
}

/// In a benchmark's child process: registers the elements of the plugin in `file` (one build's
/// `libgstlivestreaming.so`) rather than those linked into the benchmark binary, and checks that
/// `element` now comes from that file (and not from a registry entry of another build).
pub fn load_plugin(file: &std::path::Path, element: &str) {
    let plugin =
        gst::Plugin::load_file(file).unwrap_or_else(|e| panic!("loading {}: {e}", file.display()));
    let from = gst::ElementFactory::find(element)
        .and_then(|f| f.plugin())
        .and_then(|p| p.filename());
    assert_eq!(
        from.as_deref(),
        plugin.filename().as_deref(),
        "{element} does not come from {}",
        file.display()
    );
}

/// CPU time of this whole process so far, every thread including those that already exited, at
/// nanosecond resolution (CLOCK_PROCESS_CPUTIME_ID: the utime+stime of /proc/self/stat without
/// its 10 ms ticks).
pub fn process_cpu_seconds() -> f64 {
    clock_seconds(2) // CLOCK_PROCESS_CPUTIME_ID
}

/// CPU time of the calling thread so far (CLOCK_THREAD_CPUTIME_ID), nanosecond resolution.
pub fn thread_cpu_seconds() -> f64 {
    clock_seconds(3) // CLOCK_THREAD_CPUTIME_ID
}

fn clock_seconds(clock: i32) -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec (64-bit Linux layout) for the call's duration.
    let rc = unsafe { clock_gettime(clock, &mut t) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    t.sec as f64 + t.nsec as f64 / 1e9
}

/// BENCH_TOGETHER (default 1): with a baseline, run the two builds at once in each round (same
/// machine state) rather than one after the other.
pub fn together() -> bool {
    std::env::var("BENCH_TOGETHER").map_or(true, |v| v != "0")
}

/// Who goes (or starts) first in round `round`: the current build (0) and the baseline (1)
/// alternate.
pub fn round_order(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// "0.98 1.03 1.01 (0.98-1.03), mean 1.01, median 1.01" for the per-round values
/// `current[i] / baseline[i]`.
pub fn ratio_line(current: &[f64], baseline: &[f64]) -> String {
    let ratios: Vec<f64> = current.iter().zip(baseline).map(|(c, b)| c / b).collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(0.0, f64::max);
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    format!(
        "{} ({min:.2}-{max:.2}), mean {mean:.2}, median {:.2}",
        each.join(" "),
        median(ratios.clone())
    )
}

/// CPU seconds so far of each live thread of this process: (thread id, name, seconds), from
/// /proc/self/task/TID/{comm,schedstat} (nanoseconds). Threads that exited are not listed.
pub fn threads_cpu_seconds() -> Vec<(u32, String, f64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
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
            Some((tid, comm.trim().to_owned(), ns as f64 / 1e9))
        })
        .collect()
}
