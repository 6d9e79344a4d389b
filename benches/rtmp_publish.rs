//! rsrtmpsink against the stock rtmp2sink, publishing the same pre-encoded FLV to nginx-rtmp.
//!
//!     cargo build --release --locked && cargo bench --bench rtmp_publish
//!
//! This process encodes 20 s of 720p30 H.264 (~4 Mbit/s) and AAC into an FLV file once, starts
//! nginx-rtmp (`live on`, no players: it receives and discards) on 127.0.0.1, then runs each
//! publisher in a child process (this binary re-executed with `--publish`): the child reads the
//! file tag by tag, loops it BENCH_LOOPS times (timestamps continued), and pushes one tag per
//! buffer through `appsrc ! SINK location=... sync=false`, paced at BENCH_SPEED times real time
//! (default 20: ~84 Mbit/s). The pacing is the same for both; without it rsrtmpsink, which
//! never blocks its streaming thread, would drop frames whenever the producer outruns the
//! socket and so send less, while rtmp2sink blocks until the socket takes the data. The child
//! measures its own CPU time (utime+stime, CLOCK_PROCESS_CPUTIME_ID) from PLAYING to EOS, and
//! its peak RSS (VmHWM). Runs alternate between the two sinks, BENCH_RUNS times each (default
//! 3), medians reported. Bytes sent come from each sink's `stats`; ours also reports its drops
//! (must be 0 for a fair run).
//!
//! BENCH_BASELINE=DIR measures rsrtmpsink against the rsrtmpsink of an earlier build instead of
//! against rtmp2sink: DIR holds that build's `libgstlivestreaming.so` (copy it aside before
//! changing the code). Each child then loads its build's plugin file (the current one is the
//! plugin compiled with this benchmark); in each of BENCH_RUNS rounds both publish at once
//! (BENCH_TOGETHER=0: one after the other), which one starts first alternating, followed by the
//! producer alone; the per-round CPU ratios current / baseline and their mean are printed, of
//! the whole process and of the sink side: every thread but the child's main thread, which is
//! the producer (reading, parsing, pacing, pushing into appsrc); the rest is appsrc's streaming
//! thread and the sink's own.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstlivestreaming::rtmp::flv::{FlvParser, write_header, write_tag};

/// 20 s of 720p30 H.264 at ~4 Mbit/s and AAC, muxed by flvmux into `path`.
fn pre_encode(path: &Path) {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=600 pattern=snow \
         ! video/x-raw,width=1280,height=720,framerate=30/1,format=I420 \
         ! x264enc bitrate=4000 speed-preset=ultrafast tune=zerolatency key-int-max=60 \
         ! h264parse ! queue ! m. \
         audiotestsrc num-buffers=861 samplesperbuffer=1024 ! audio/x-raw,rate=44100,channels=2 \
         ! audioconvert ! voaacenc ! aacparse ! queue ! m. \
         flvmux name=m streamable=true ! filesink location={}",
        path.display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(300),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("encoding finished");
    assert!(
        matches!(msg.view(), gst::MessageView::Eos(_)),
        "encoding: {msg:?}"
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

/// The child: publishes `file` `loops` times through `sink` and prints its measurements. With
/// `plugin`, our elements come from that build's plugin file, else from this binary.
fn publish(sink: &str, file: &Path, url: &str, loops: u32, speed: f64, plugin: Option<&Path>) {
    gst::init().unwrap();
    match plugin {
        Some(p) => load_plugin(p, "rsrtmpsink"),
        None => gstlivestreaming::plugin_register_static().unwrap(),
    }
    // fakesink: the producer alone (reading, pacing, appsrc), the baseline in both numbers.
    let location = if sink == "fakesink" {
        String::new()
    } else {
        format!("location={url}")
    };
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time block=true max-bytes=1000000 caps=video/x-flv \
         ! {sink} name=sink {location} sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink_el = pipeline.by_name("sink").unwrap();
    let data = std::fs::read(file).unwrap();
    let cpu0 = process_cpu_seconds();
    // This (main) thread is the producer: it reads, parses, paces and pushes into appsrc. The
    // other threads are appsrc's streaming thread and the sink's own: the sink side.
    let main0 = thread_cpu_seconds();
    let t0 = Instant::now();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut header = Vec::new();
    write_header(true, true, &mut header);
    src.push_buffer(gst::Buffer::from_slice(header)).unwrap();
    let mut offset_ms = 0u32;
    for i in 0..loops {
        let mut parser = FlvParser::new(1 << 24);
        let mut last = 0;
        for piece in data.chunks(64 * 1024) {
            parser.feed(piece);
            while let Some(mut tag) = parser.next_tag().unwrap() {
                // The stream's metadata and codec configuration once, media every loop.
                if i > 0 && (tag.is_sequence_header() || tag.is_metadata()) {
                    continue;
                }
                last = last.max(tag.timestamp);
                tag.timestamp += offset_ms;
                let due = t0 + Duration::from_secs_f64(f64::from(tag.timestamp) / 1000.0 / speed);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let mut b = Vec::with_capacity(tag.data.len() + 15);
                write_tag(&tag, &mut b);
                if src.push_buffer(gst::Buffer::from_slice(b)).is_err() {
                    panic!("{sink}: push failed");
                }
            }
        }
        offset_ms += last + 33;
    }
    src.end_of_stream().unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{sink}: {} {:?}", e.error(), e.debug());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu0;
    let sink_cpu = cpu - (thread_cpu_seconds() - main0);
    let (sent, drops) = if sink_el.has_property("stats") {
        let stats = sink_el.property::<gst::Structure>("stats");
        (
            stats.get::<u64>("out-bytes-total").unwrap_or(0),
            stats.get::<u64>("drops").unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    pipeline.set_state(gst::State::Null).unwrap();
    println!(
        "RESULT cpu={cpu:.4} sinkcpu={sink_cpu:.4} wall={wall:.3} rss={:.1} sent={sent} drops={drops}",
        peak_rss_mib(std::process::id())
    );
    std::io::stdout().flush().unwrap();
}

struct Run {
    cpu: f64,
    /// Of every thread but the producer's.
    sink_cpu: f64,
    wall: f64,
    rss: f64,
    sent: u64,
    drops: u64,
}

fn run_child(
    exe: &Path,
    sink: &str,
    file: &Path,
    url: &str,
    loops: u32,
    speed: u32,
    plugin: Option<&Path>,
) -> Run {
    let mut cmd = Command::new(exe);
    cmd.args([
        "--publish",
        sink,
        &file.display().to_string(),
        url,
        &loops.to_string(),
        &speed.to_string(),
    ]);
    if let Some(p) = plugin {
        cmd.arg(p);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn publisher");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(r) = line.strip_prefix("RESULT ") {
                let _ = tx.send(r.to_owned());
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(600))
        .unwrap_or_else(|_| {
            let mut e = String::new();
            let _ = stderr.read_to_string(&mut e);
            panic!("{sink} publisher gave no result: {e}")
        });
    drop(guard);
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Run {
        cpu: field("cpu"),
        sink_cpu: field("sinkcpu"),
        wall: field("wall"),
        rss: field("rss"),
        sent: field("sent") as u64,
        drops: field("drops") as u64,
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--publish") {
        publish(
            &args[i + 1],
            Path::new(&args[i + 2]),
            &args[i + 3],
            args[i + 4].parse().unwrap(),
            args[i + 5].parse().unwrap(),
            args.get(i + 6).map(Path::new),
        );
        return;
    }
    gst::init().unwrap();
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    // `cargo test --all-targets` runs this without `--bench`: then a smoke run, one short
    // publication per sink.
    let smoke = smoke();
    let loops = env("BENCH_LOOPS", if smoke { 1 } else { 10 });
    let runs = env("BENCH_RUNS", if smoke { 1 } else { 3 });
    let speed = env("BENCH_SPEED", 20);
    let dir = std::env::temp_dir().join(format!("rtmp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("input.flv");
    pre_encode(&file);
    let size = std::fs::metadata(&file).unwrap().len();
    let port = free_port();
    let nginx = start_nginx(&dir, port);
    let exe = std::env::current_exe().unwrap();
    println!(
        "input: 20 s of 720p30 H.264 + AAC, {:.2} Mbit/s, {:.1} MB, looped {loops}x ({} s of media) per run, paced at {speed}x real time",
        size as f64 * 8.0 / 20.0 / 1e6,
        size as f64 / 1e6,
        20 * loops
    );
    if let Some(baseline) = PluginBuild::baseline() {
        let builds = [PluginBuild::current(), baseline];
        against_baseline(&builds, &exe, &file, port, loops, speed, runs as usize);
        drop(nginx);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let mut results: [Vec<Run>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for r in 0..runs {
        for (i, sink) in ["rsrtmpsink", "rtmp2sink", "fakesink"].iter().enumerate() {
            let url = format!("rtmp://127.0.0.1:{port}/live/bench{r}{i}");
            let run = run_child(&exe, sink, &file, &url, loops, speed, None);
            eprintln!(
                "{sink} run {r}: cpu {:.2} s, wall {:.2} s, rss {:.1} MiB, sent {} B, drops {}",
                run.cpu, run.wall, run.rss, run.sent, run.drops
            );
            results[i].push(run);
        }
    }
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
    let summary = |rs: &Vec<Run>| {
        (
            median(rs.iter().map(|r| r.cpu).collect()),
            median(rs.iter().map(|r| r.wall).collect()),
            median(rs.iter().map(|r| r.rss).collect()),
            median(rs.iter().map(|r| r.sent as f64).collect()),
            rs.iter().map(|r| r.drops).max().unwrap_or(0),
        )
    };
    let (oc, ow, or, os, od) = summary(&results[0]);
    let (sc, sw, sr, ss, _) = summary(&results[1]);
    let (bc, bw, br, _, _) = summary(&results[2]);
    println!();
    println!("| publisher | CPU s (median of {runs}) | wall s | peak RSS MiB | MB sent | drops |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| rsrtmpsink | {oc:.2} | {ow:.2} | {or:.1} | {:.1} | {od} |",
        os / 1e6
    );
    println!(
        "| rtmp2sink | {sc:.2} | {sw:.2} | {sr:.1} | {:.1} | n/a |",
        ss / 1e6
    );
    println!("| appsrc ! fakesink (the producer alone) | {bc:.2} | {bw:.2} | {br:.1} | 0 | 0 |");
    println!();
    println!(
        "CPU ratio rsrtmpsink / rtmp2sink: {:.2} (target <= 0.5); RSS ratio {:.2}",
        oc / sc,
        or / sr
    );
    println!(
        "Without the producer's share: CPU ratio {:.2}",
        (oc - bc) / (sc - bc)
    );
    if od > 0 {
        println!("rsrtmpsink dropped frames: not a like-for-like run; lower BENCH_SPEED");
    }
}

/// rsrtmpsink of `builds[0]` (current) against that of `builds[1]` (baseline), `rounds` rounds.
fn against_baseline(
    builds: &[PluginBuild; 2],
    exe: &Path,
    file: &Path,
    port: u16,
    loops: u32,
    speed: u32,
    rounds: usize,
) {
    let together = together();
    for b in builds {
        println!("{}: {}", b.label, b.file.display());
    }
    println!(
        "rsrtmpsink current against baseline, {rounds} rounds, {}",
        if together {
            "both at once"
        } else {
            "one after the other"
        }
    );
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let mut producer = Vec::new();
    for r in 0..rounds {
        let order = round_order(r);
        let publish = |i: usize| {
            let url = format!("rtmp://127.0.0.1:{port}/live/base{r}{i}");
            let run = run_child(
                exe,
                "rsrtmpsink",
                file,
                &url,
                loops,
                speed,
                Some(&builds[i].file),
            );
            (i, run)
        };
        let done: Vec<(usize, Run)> = if together {
            std::thread::scope(|s| {
                let handles: Vec<_> = order
                    .iter()
                    .map(|&i| {
                        let h = s.spawn(move || publish(i));
                        // Let the first one get going, as the order says.
                        std::thread::sleep(Duration::from_millis(100));
                        h
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
        } else {
            order.iter().map(|&i| publish(i)).collect()
        };
        for (i, run) in done {
            eprintln!(
                "round {r} {}: cpu {:.3} s, wall {:.2} s, rss {:.1} MiB, sent {} B, drops {}",
                builds[i].label, run.cpu, run.wall, run.rss, run.sent, run.drops
            );
            runs[i].push(run);
        }
        let url = format!("rtmp://127.0.0.1:{port}/live/producer{r}");
        let run = run_child(exe, "fakesink", file, &url, loops, speed, None);
        eprintln!(
            "round {r} producer alone: cpu {:.3} s, of it other threads {:.3} s",
            run.cpu, run.sink_cpu
        );
        producer.push(run);
    }
    let cpu = |i: usize| -> Vec<f64> { runs[i].iter().map(|r| r.cpu).collect() };
    let sink_cpu = |i: usize| -> Vec<f64> { runs[i].iter().map(|r| r.sink_cpu).collect() };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let p = median(producer.iter().map(|r| r.cpu).collect());
    let ps = median(producer.iter().map(|r| r.sink_cpu).collect());
    println!();
    println!("| build | CPU s (mean) | of it the sink side | peak RSS MiB | MB sent | drops |");
    println!("|---|---|---|---|---|---|");
    for (i, build) in builds.iter().enumerate() {
        let rs = &runs[i];
        println!(
            "| rsrtmpsink {} | {:.3} | {:.3} | {:.1} | {:.1} | {} |",
            build.label,
            mean(&cpu(i)),
            mean(&sink_cpu(i)),
            median(rs.iter().map(|r| r.rss).collect()),
            median(rs.iter().map(|r| r.sent as f64).collect()) / 1e6,
            rs.iter().map(|r| r.drops).max().unwrap_or(0)
        );
    }
    println!("| appsrc ! fakesink (the producer alone; median) | {p:.3} | {ps:.3} | | 0 | 0 |");
    println!();
    println!(
        "CPU current / baseline per round: {}",
        ratio_line(&cpu(0), &cpu(1))
    );
    println!(
        "The sink side alone (every thread but the producer's): {}",
        ratio_line(&sink_cpu(0), &sink_cpu(1))
    );
    if runs.iter().flatten().any(|r| r.drops > 0) {
        println!("rsrtmpsink dropped frames: not a like-for-like run; lower BENCH_SPEED");
    }
}
