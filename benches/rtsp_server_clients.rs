//! Fan-out: rtspserversink against the stock gst-rtsp-server, serving one ~4.1 Mbit/s 720p30
//! H.264 stream to N clients over TCP interleaved and over UDP unicast.
//!
//!     cargo build --release --locked && cargo bench --locked --bench rtsp_server_clients
//!
//! This process pre-encodes 10 s of 720p30 H.264 once, then plays it in a loop in real time,
//! payloaded once, to two UDP ports. Each server runs in a child process and only fans that RTP
//! out: ours as `udpsrc ! rtspserversink` (already-payloaded input), the stock one as
//! gst-rtsp-server with a shared `( udpsrc ! identity name=pay0 )`. So both do the same work and
//! neither encodes. The clients are N RTSP sessions of the load generator (benches/loadgen), all
//! on one thread of this process. Once every session receives, a window of BENCH_SECONDS is
//! measured: the server's utime+stime over the window (% of one core), its RSS and threads at the
//! end, and per client the bitrate and RTP sequence gaps within the window.
//!
//! Environment: BENCH_TCP_CLIENTS (default 1,10,100,500,1000,2000), BENCH_UDP_CLIENTS (default
//! 100,1000; empty for none), BENCH_SECONDS (default 10), BENCH_SERVERS (default ours,stock).
//! BENCH_INPUT=h264 makes both servers depayload the input and payload it themselves (the fan-out
//! then gets a burst of packets per NAL unit, as from an encoder, not one packet at a time).
//! BENCH_BASELINE=DIR runs the rtspserversink of an earlier build too (DIR holds its
//! `libgstlivestreaming.so`, copied aside before changing the code; BENCH_SERVERS then defaults
//! to ours,baseline): the same run tells whether a change helped, which two runs on this
//! shared machine cannot. BENCH_UDP_GRO=0 turns off `UDP_GRO` on the generator's sockets (on by
//! default: see loadgen's `Config::udp_gro`). BENCH_CLIENT_READ_MS=N makes the generator read
//! every N ms instead of whenever data arrives (see loadgen's `Config::read_interval`).
//! BENCH_OURS_PROPS="PROP=VALUE ..." adds properties to this build's rtspserversink only (e.g.
//! `burst-latency=40`; with BENCH_BASELINE pointing at a copy of this build, the same run
//! compares the setting against the default).
//! Under `cargo test` (no `--bench`) it is a smoke run: 3 clients over TCP and over UDP for 2 s
//! per server, with BENCH_INPUT=h264 unless set, and every client of rtspserversink must receive
//! the full rate without a gap.
//!
//! The generator alone against any server (no servers started, nothing encoded):
//!
//!     cargo bench --bench rtsp_server_clients -- --url rtsp://127.0.0.1:8554/ \
//!         --clients 500 --transport tcp --seconds 10 --expect-mbps 4

mod common;
mod loadgen;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use loadgen::{Config, LoadGen, Report, Transport};

/// Both servers' input socket: room for a few frames, so that the bench's UDP feed is not what
/// drops packets when the fan-out of a frame takes longer than usual.
const INPUT_BUFFER: &str = "buffer-size=4194304";
/// BENCH_INPUT=h264: both servers depayload the input and payload it again themselves, so that
/// the fan-out gets what a payloader makes (a burst per NAL unit) instead of one packet at a time;
/// the stock one as rtspserversink configures its own rtph264pay.
const STOCK_REPAY: &str =
    "rtph264depay ! rtph264pay name=pay0 pt=96 config-interval=-1 aggregate-mode=zero-latency";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Ours,
    /// rtspserversink of an earlier build (BENCH_BASELINE).
    Baseline,
    Stock,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Ours => "rtspserversink",
            Server::Baseline => "baseline rtspserversink",
            Server::Stock => "gst-rtsp-server",
        }
    }
}

struct Row {
    cpu_percent: f64,
    rss: f64,
    threads: u64,
    report: Report,
    input_drops: u64,
    generator_drops: u64,
    /// Machine-wide, in % of one core: softirq time and all busy time (every process).
    softirq_percent: f64,
    machine_percent: f64,
}

struct Setup {
    exe: std::path::PathBuf,
    plugin_dir: std::path::PathBuf,
    caps: String,
    udp: [u16; 2],
    input_mbps: f64,
    baseline: Option<std::path::PathBuf>,
    /// The baseline build has the per-address connection limits (lifted for the load).
    baseline_limits: bool,
    /// BENCH_INPUT=h264: the servers payload themselves.
    repay: bool,
}

fn spawn_server(setup: &Setup, server: Server, transport: Transport, port: u16) -> Guard {
    let caps = &setup.caps;
    match server {
        Server::Ours | Server::Baseline => spawn_ready({
            let mut c = Command::new("gst-launch-1.0");
            match (server, &setup.baseline) {
                (Server::Baseline, Some(dir)) => c
                    .env("GST_PLUGIN_PATH", dir)
                    .env("GST_REGISTRY", dir.join("registry.bin")),
                _ => c.env("GST_PLUGIN_PATH", &setup.plugin_dir),
            };
            c.args([
                "udpsrc",
                "address=127.0.0.1",
                &format!("port={}", setup.udp[0]),
                INPUT_BUFFER,
                &format!("caps=\"{}\"", caps.replace('"', "\\\"")),
                "!",
            ]);
            if setup.repay {
                c.args(["rtph264depay", "!"]);
            }
            c.args([
                "rtspserversink",
                "address=127.0.0.1",
                &format!("port={port}"),
                "mount-point=/stream",
                match transport {
                    Transport::Tcp => "protocols=tcp",
                    Transport::Udp => "protocols=udp+tcp",
                },
                "max-connections=100000",
                "backlog=4096",
            ]);
            if server == Server::Ours || setup.baseline_limits {
                // Every client comes from 127.0.0.1 (builds before issue 11 have none of these
                // limits).
                c.args([
                    "max-connections-per-address=100000",
                    "max-sessions=0",
                    "request-timeout=60",
                ]);
            }
            if server == Server::Ours
                && let Ok(props) = std::env::var("BENCH_OURS_PROPS")
            {
                c.args(props.split_whitespace());
            }
            c
        }),
        Server::Stock => spawn_ready({
            let mut c = Command::new(&setup.exe);
            c.args([
                "--serve-stock",
                &port.to_string(),
                &setup.udp[1].to_string(),
                caps,
                transport.name(),
                if setup.repay { "h264" } else { "rtp" },
            ]);
            c
        }),
    }
}

/// BENCH_CLIENT_READ_MS=N: the generator reads every N ms (see loadgen's `Config::read_interval`).
fn read_interval() -> Duration {
    Duration::from_millis(
        std::env::var("BENCH_CLIENT_READ_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// BENCH_UDP_GRO=0 makes the generator's UDP sockets take datagrams one by one.
fn udp_gro() -> bool {
    std::env::var("BENCH_UDP_GRO").map_or(true, |v| v != "0")
}

fn measure(setup: &Setup, server: Server, transport: Transport, n: usize, seconds: u64) -> Row {
    let port = free_port();
    let guard = spawn_server(setup, server, transport, port);
    let pid = guard.0.id();
    let input_port = match server {
        Server::Ours | Server::Baseline => setup.udp[0],
        Server::Stock => setup.udp[1],
    };
    let lg = LoadGen::start(Config {
        url: format!("rtsp://127.0.0.1:{port}/stream"),
        clients: n,
        transport,
        concurrent_setups: 32,
        udp_gro: udp_gro(),
        read_interval: read_interval(),
    });
    // Every session set up and past its first keyframe (one every 2 s), then a second more.
    lg.wait_receiving(Duration::from_secs(30 + n as u64 / 20));
    std::thread::sleep(Duration::from_secs(1));
    let gen_ports = lg.udp_ports.lock().unwrap().clone();
    let (in0, gd0) = (
        loadgen::udp_drops(&[input_port]),
        loadgen::udp_drops(&gen_ports),
    );
    let a = lg.snapshot();
    let cpu0 = cpu_seconds_total(pid);
    let m0 = machine_cpu_seconds();
    std::thread::sleep(Duration::from_secs(seconds));
    let m1 = machine_cpu_seconds();
    let cpu1 = cpu_seconds_total(pid);
    let b = lg.snapshot();
    let (in1, gd1) = (
        loadgen::udp_drops(&[input_port]),
        loadgen::udp_drops(&gen_ports),
    );
    let secs = match (a.at, b.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => seconds as f64,
    };
    let row = Row {
        cpu_percent: (cpu1 - cpu0) / secs * 100.0,
        rss: rss_mib(pid),
        threads: threads(pid),
        report: lg.report(&a, &b, setup.input_mbps),
        input_drops: in1.saturating_sub(in0),
        generator_drops: gd1.saturating_sub(gd0),
        softirq_percent: (m1.1 - m0.1) / secs * 100.0,
        machine_percent: (m1.0 - m0.0) / secs * 100.0,
    };
    lg.stop();
    drop(guard);
    row
}

fn print_header() {
    println!(
        "| transport | clients | server | CPU % of a core | RSS MiB | threads | connected | starved | with gaps (lost packets) | RTP-Info seq wrong (median off) | min / median Mbit/s | input drops | generator CPU % | generator drops | softirq % | machine busy % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_row(transport: Transport, n: usize, server: Server, r: &Row) {
    let g = &r.report;
    println!(
        "| {} | {n} | {} | {:.1} | {:.1} | {} | {} | {} | {} ({}) | {} ({}) | {:.2} / {:.2} | {} | {:.1} | {} | {:.0} | {:.0} |",
        transport.name(),
        server.name(),
        r.cpu_percent,
        r.rss,
        r.threads,
        g.connected,
        g.starved,
        g.with_gaps,
        g.lost,
        g.rtpinfo_wrong,
        g.rtpinfo_off_median,
        g.min_mbps,
        g.median_mbps,
        r.input_drops,
        g.cpu_percent,
        r.generator_drops,
        r.softirq_percent,
        r.machine_percent,
    );
    if let Some(e) = &g.first_error {
        eprintln!(
            "  ({} {n} {}: a session failed: {e})",
            server.name(),
            transport.name()
        );
    }
}

fn list(var: &str, fallback: Option<&str>, default: &str) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .or_else(|| fallback.and_then(|f| std::env::var(f).ok()))
        .unwrap_or_else(|| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// `--url URL [--clients N] [--transport tcp|udp] [--seconds S] [--expect-mbps X]`: the
/// generator alone.
fn generator_only(args: &[String]) {
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let url = get("--url").expect("--url");
    let clients = get("--clients").and_then(|v| v.parse().ok()).unwrap_or(10);
    let seconds = get("--seconds").and_then(|v| v.parse().ok()).unwrap_or(10);
    let expect = get("--expect-mbps")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let transport = match get("--transport").as_deref() {
        Some("udp") => Transport::Udp,
        _ => Transport::Tcp,
    };
    let lg = LoadGen::start(Config {
        url,
        clients,
        transport,
        concurrent_setups: 32,
        udp_gro: udp_gro(),
        read_interval: read_interval(),
    });
    let receiving = lg.wait_receiving(Duration::from_secs(30 + clients as u64 / 20));
    println!("{receiving} of {clients} sessions receiving; measuring {seconds} s");
    let a = lg.snapshot();
    std::thread::sleep(Duration::from_secs(seconds));
    let b = lg.snapshot();
    let r = lg.report(&a, &b, expect);
    println!(
        "connected {} failed {} starved (< 90% of {expect} Mbit/s) {} with gaps {} (lost {}) RTP-Info seq wrong {} (median off {}) min/median {:.2}/{:.2} Mbit/s generator CPU {:.1}%",
        r.connected,
        r.failed,
        r.starved,
        r.with_gaps,
        r.lost,
        r.rtpinfo_wrong,
        r.rtpinfo_off_median,
        r.min_mbps,
        r.median_mbps,
        r.cpu_percent
    );
    if let Some(e) = r.first_error {
        println!("first error: {e}");
    }
    lg.stop();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-stock") {
        let pay = match args.get(i + 5).map(String::as_str) {
            Some("h264") => STOCK_REPAY,
            _ => "identity name=pay0",
        };
        serve_stock_with(
            &args[i + 1],
            &args[i + 2],
            &args[i + 3],
            &args[i + 4],
            INPUT_BUFFER,
            pay,
        );
        return;
    }
    loadgen::self_check();
    loadgen::raise_nofile_limit();
    if args.iter().any(|a| a == "--url") {
        generator_only(&args);
        return;
    }
    gst::init().unwrap();
    let smoke = smoke();
    let tcp = list(
        "BENCH_TCP_CLIENTS",
        Some("BENCH_CLIENTS"),
        if smoke { "3" } else { "1,10,100,500,1000,2000" },
    );
    let udp = list(
        "BENCH_UDP_CLIENTS",
        None,
        if smoke { "3" } else { "100,1000" },
    );
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 2 } else { 10 });
    let baseline = std::env::var_os("BENCH_BASELINE").map(std::path::PathBuf::from);
    if let Some(dir) = &baseline {
        assert!(
            dir.join("libgstlivestreaming.so").exists(),
            "BENCH_BASELINE: no libgstlivestreaming.so in {}",
            dir.display()
        );
    }
    let servers: Vec<Server> = std::env::var("BENCH_SERVERS")
        .unwrap_or_else(|_| {
            if baseline.is_some() {
                "ours,baseline"
            } else {
                "ours,stock"
            }
            .into()
        })
        .split(',')
        .filter_map(|s| match s.trim() {
            "ours" => Some(Server::Ours),
            "baseline" if baseline.is_some() => Some(Server::Baseline),
            "stock" => Some(Server::Stock),
            _ => None,
        })
        .collect();
    let exe = std::env::current_exe().unwrap();
    // The plugin compiled with this binary (never a stale target/release one), alone in a
    // directory for GST_PLUGIN_PATH.
    let plugin_dir =
        std::env::temp_dir().join(format!("rtsp-clients-bench-{}", std::process::id()));
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::fs::copy(
        PluginBuild::current().file,
        plugin_dir.join("libgstlivestreaming.so"),
    )
    .unwrap();
    // An earlier build with the per-address limits of issue 11 needs them lifted as ours does.
    let baseline_limits = baseline.as_ref().is_some_and(|dir| {
        Command::new("gst-inspect-1.0")
            .arg("rtspserversink")
            .env("GST_PLUGIN_PATH", dir)
            .env("GST_REGISTRY", dir.join("registry.bin"))
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).contains("max-connections-per-address")
            })
    });

    let frames = pre_encode();
    let bytes: usize = frames.iter().map(|b| b.size()).sum();
    let input_mbps = bytes as f64 * 8.0 / (frames.len() as f64 / 30.0) / 1e6;
    let udp_ports = [free_udp_port(), free_udp_port()];
    let (caps, stop_feed) = start_feeder(frames, &udp_ports);
    let setup = Setup {
        exe,
        plugin_dir,
        baseline_limits,
        caps,
        udp: udp_ports,
        input_mbps,
        baseline,
        // The smoke run goes through the servers' own payloaders: that is where the UDP fan-out
        // gets bursts (and sends them with GSO).
        repay: match std::env::var("BENCH_INPUT") {
            Ok(v) => v == "h264",
            Err(_) => smoke,
        },
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "input: {input_mbps:.2} Mbit/s H.264 720p30; window {seconds} s per run; open files limit {}; load average at start: {}",
        loadgen::nofile_limit(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    print_header();
    let mut smoke_failures = Vec::new();
    for (transport, counts) in [(Transport::Tcp, &tcp), (Transport::Udp, &udp)] {
        for &n in counts {
            for &server in &servers {
                let row = measure(&setup, server, transport, n, seconds);
                print_row(transport, n, server, &row);
                let g = &row.report;
                if smoke
                    && server == Server::Ours
                    && (g.connected != n || g.starved > 0 || g.with_gaps > 0)
                {
                    smoke_failures.push(format!(
                        "{} {n} clients over {}: connected {}, starved {}, with gaps {}, first error {:?}",
                        server.name(),
                        transport.name(),
                        g.connected,
                        g.starved,
                        g.with_gaps,
                        g.first_error
                    ));
                }
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload average at the end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    stop_feed.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&setup.plugin_dir);
    assert!(smoke_failures.is_empty(), "{smoke_failures:#?}");
}
