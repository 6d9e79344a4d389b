//! rtspsrc2 against the stock rtspsrc, receiving the same ~4 Mbit/s H.264 stream.
//!
//!     cargo bench --bench rtsp_client
//!
//! This process pre-encodes 10 s of 720p30 H.264 once and plays it in a loop in real time,
//! payloaded, to a stock gst-rtsp-server (a child process, shared live media over UDP and TCP).
//! Each client is `gst-launch-1.0 rtspsrc2|rtspsrc location=... protocols=P ! fakesink` in a
//! child process of its own, with default settings. Figures:
//! - CPU: the client process's run time over a steady window (BENCH_SECONDS, default 20)
//!   that starts 3 s after launch, as a share of one core; RSS its peak. A client this light
//!   uses well under 1% of a core, and on a virtual machine the cost of the same work drifts
//!   by tens of percent from one minute to the next. So both clients play at once and are
//!   measured over the same window (the same packets, the same machine state), in
//!   BENCH_ROUNDS rounds (default 3) that alternate which one starts first; the figures are
//!   means over the rounds, and the spread of the per-round ratios is shown. BENCH_TOGETHER=0
//!   measures them one after the other instead (ABBA...), which shows that drift.
//! - First buffer: wall time from spawning the process to fakesink's first buffer (its
//!   `last-message` under `gst-launch-1.0 -v`), median of BENCH_STARTS runs (default 15).
//!   Process start-up (GStreamer init, registry) is the same for both and included.
//!
//! BENCH_PROTOCOLS (default `udp,tcp`) picks the protocols measured.
//!
//! BENCH_SERVE=SECONDS only serves the stream for that long and prints its URL, for
//! profiling a client by hand (`perf record`, `valgrind --tool=callgrind gst-launch-1.0 ...`).
//!
//! BENCH_BASELINE=DIR measures rtspsrc2 against the rtspsrc2 of an earlier build instead of
//! against rtspsrc: DIR holds that build's `libgstlivestreaming.so` (copy it aside before
//! changing the code). The same method then tells whether a change made rtspsrc2 cheaper, which
//! the drift of this machine hides when two runs of the benchmark are compared.
//!
//! Under `cargo test` (no `--bench`) it is a smoke run: 2 s windows, one start each.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

/// One of the two clients compared.
struct Client {
    /// In the table's header.
    label: String,
    element: &'static str,
    /// GST_PLUGIN_PATH.
    plugin_dir: PathBuf,
    /// A registry cache of its own for a baseline build, so that two builds of our plugin do
    /// not replace each other in the default one at every start.
    registry: Option<PathBuf>,
}

impl Client {
    fn command(&self, url: &str, proto: &str) -> Command {
        let mut c = Command::new("gst-launch-1.0");
        c.env("GST_PLUGIN_PATH", &self.plugin_dir);
        if let Some(r) = &self.registry {
            c.env("GST_REGISTRY", r);
        }
        c.args([
            self.element,
            &format!("location={url}"),
            &format!("protocols={proto}"),
            "!",
            "fakesink",
        ]);
        c
    }
}

/// Plays the clients `launch` (indices into `clients`, started in that order) at once and
/// measures them over the same steady window: per client, its index, CPU as a share of one
/// core and peak RSS MiB. Every client must still be running at the window's end.
fn steady_cpu(
    clients: &[Client; 2],
    url: &str,
    proto: &str,
    seconds: u64,
    launch: &[usize],
) -> Vec<(usize, f64, f64)> {
    let mut running: Vec<(usize, Guard)> = launch
        .iter()
        .map(|&i| {
            let child = clients[i]
                .command(url, proto)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gst-launch-1.0");
            (i, Guard(child))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let pids: Vec<u32> = running.iter().map(|(_, g)| g.0.id()).collect();
    let cpu0: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu1: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    let elapsed = t0.elapsed().as_secs_f64();
    running
        .iter_mut()
        .enumerate()
        .map(|(k, (i, guard))| {
            assert!(
                guard.0.try_wait().unwrap().is_none(),
                "{} over {proto} exited early",
                clients[*i].label
            );
            (*i, (cpu1[k] - cpu0[k]) / elapsed, peak_rss_mib(pids[k]))
        })
        .collect()
}

/// Seconds from spawn to the first buffer at fakesink.
fn first_buffer(client: &Client, url: &str, proto: &str) -> f64 {
    let mut cmd = client.command(url, proto);
    cmd.arg("silent=false").arg("-v");
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0");
    let mut guard = Guard(child);
    let stdout = guard.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("last-message = chain") {
                let _ = tx.send(start.elapsed().as_secs_f64());
                return;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{} over {proto}: no buffer within 20 s", client.label))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-stock") {
        serve_stock(&args[i + 1], &args[i + 2], &args[i + 3], "udp+tcp");
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
    let starts = env("BENCH_STARTS", if smoke { 1 } else { 15 }) as usize;
    let rounds = env("BENCH_ROUNDS", if smoke { 1 } else { 3 }) as usize;
    let together = env("BENCH_TOGETHER", 1) != 0;
    let exe = std::env::current_exe().unwrap();
    let plugin_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    assert!(
        plugin_dir.join("libgstlivestreaming.so").exists(),
        "build the plugin first: cargo build --release"
    );
    let ours = Client {
        label: "rtspsrc2".into(),
        element: "rtspsrc2",
        plugin_dir: plugin_dir.clone(),
        registry: None,
    };
    let other = match std::env::var_os("BENCH_BASELINE") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("libgstlivestreaming.so").exists(),
                "BENCH_BASELINE: no libgstlivestreaming.so in {}",
                dir.display()
            );
            Client {
                label: "baseline rtspsrc2".into(),
                element: "rtspsrc2",
                registry: Some(dir.join("registry.bin")),
                plugin_dir: dir,
            }
        }
        None => Client {
            label: "rtspsrc".into(),
            element: "rtspsrc",
            plugin_dir: plugin_dir.clone(),
            registry: None,
        },
    };
    let clients = [ours, other];
    // Let the registries take in our plugin once, outside any measurement.
    for c in &clients {
        let mut inspect = Command::new("gst-inspect-1.0");
        if let Some(r) = &c.registry {
            inspect.env("GST_REGISTRY", r);
        }
        let _ = inspect
            .env("GST_PLUGIN_PATH", &c.plugin_dir)
            .arg(c.element)
            .stdout(Stdio::null())
            .status();
    }

    let frames = pre_encode();
    let bytes: usize = frames.iter().map(|b| b.size()).sum();
    let input_mbps = bytes as f64 * 8.0 / (frames.len() as f64 / 30.0) / 1e6;
    let udp = free_udp_port();
    let (caps, stop_feed) = start_feeder(frames, &[udp]);
    let port = free_port();
    let _server = spawn_ready({
        let mut c = Command::new(&exe);
        c.args(["--serve-stock", &port.to_string(), &udp.to_string(), &caps]);
        c
    });
    let url = format!("rtsp://127.0.0.1:{port}/stream");
    if let Ok(serve) = std::env::var("BENCH_SERVE") {
        println!("serving {url}");
        std::thread::sleep(Duration::from_secs(
            serve.parse().expect("BENCH_SERVE: seconds"),
        ));
        stop_feed.store(true, Ordering::Relaxed);
        return;
    }
    println!(
        "input: {input_mbps:.2} Mbit/s H.264 720p30 from gst-rtsp-server; CPU over {rounds} x \
         {seconds} s each, {}; first buffer median of {starts}",
        if together {
            "both clients at once"
        } else {
            "one after the other"
        }
    );
    println!();
    let [a, b] = [&clients[0].label, &clients[1].label];
    println!(
        "| protocol | {a} CPU % | {b} CPU % | ratio | per-round ratios | {a} RSS MiB | {b} RSS MiB | {a} first buffer ms | {b} first buffer ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let protocols = std::env::var("BENCH_PROTOCOLS").unwrap_or_else(|_| "udp,tcp".into());
    for proto in protocols.split(',') {
        let mut cpu = [Vec::new(), Vec::new()];
        let mut rss = [0f64; 2];
        for round in 0..rounds {
            // Who starts first (together) or goes first (one after the other) alternates.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let runs: Vec<&[usize]> = if together {
                vec![&order]
            } else {
                order.chunks(1).collect()
            };
            for run in runs {
                for (i, c, r) in steady_cpu(&clients, &url, proto, seconds, run) {
                    cpu[i].push(c);
                    rss[i] = rss[i].max(r);
                }
            }
        }
        let ratios: Vec<f64> = cpu[0].iter().zip(&cpu[1]).map(|(o, s)| o / s).collect();
        let spread = format!(
            "{:.2}-{:.2}",
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max)
        );
        let [o_cpu, s_cpu] = cpu.map(|c| c.iter().sum::<f64>() / c.len() as f64);
        let [o_rss, s_rss] = rss;
        // Interleaved, so that any drift of the machine touches both alike.
        let mut firsts = [Vec::new(), Vec::new()];
        for _ in 0..starts {
            for (i, c) in clients.iter().enumerate() {
                firsts[i].push(first_buffer(c, &url, proto));
            }
        }
        let [o_first, s_first] = firsts.map(median);
        println!(
            "| {proto} | {:.2} | {:.2} | {:.2} | {spread} | {o_rss:.1} | {s_rss:.1} | {:.0} | {:.0} |",
            o_cpu * 100.0,
            s_cpu * 100.0,
            o_cpu / s_cpu,
            o_first * 1000.0,
            s_first * 1000.0
        );
    }
    stop_feed.store(true, Ordering::Relaxed);
}
