//! rshlssink against the stock hlssink2 on the same pre-encoded H.264 + AAC input.
//!
//!     cargo bench --bench hls_sink
//!
//! This process encodes BENCH_SECONDS (default 60) of 720p30 H.264 (~4 Mbit/s, a keyframe every
//! 2 s) and AAC into a Matroska file once. Then each sink runs in a child process (this binary
//! again, so both are measured the same way) that demuxes the file as fast as it can (nothing
//! syncs to the clock) into `rshlssink` (its built-in muxer, `muxer=mpegtsmux`, and
//! `segment-format=fmp4`), `hlssink2`, or `mp4mux fragment-duration=2000` + the legacy `hlssink`
//! (the stock fMP4 comparison; its output is not valid HLS, see the README) with 2 s segments, runs to EOS and reports
//! the CPU time the pipeline run took (utime+stime, CLOCK_PROCESS_CPUTIME_ID, after start-up)
//! and its peak RSS (VmHWM). Demuxing and
//! parsing are the same in both, so the difference is the sinks' own work. BENCH_RUNS (default 3)
//! alternating runs each; medians are printed. Without `--bench` (as `cargo test --all-targets`
//! runs it) it is a 4 s smoke run.
//!
//! BENCH_BASELINE=DIR measures rshlssink (built-in muxer) against the rshlssink of an earlier
//! build instead of against hlssink2: DIR holds that build's `libgstlivestreaming.so` (copy it
//! aside before changing the code). Each child then loads its build's plugin file (the current
//! one is the plugin compiled with this benchmark); in each of BENCH_RUNS rounds both run at once
//! (BENCH_TOGETHER=0: one after the other), which one starts first alternating; the per-round
//! CPU ratios current / baseline and their mean are printed, of the whole process and of the
//! sink side: every thread but the main one and the demuxer's (`d:sink`), that is the queues'
//! threads (parsing, which is the same for both, and the sink's input) and the sink's own. A
//! pipeline run over 60 s of input takes about 0.1 s of CPU, so with a
//! baseline each child runs it BENCH_REPEAT times (default 5; 1 otherwise) and reports the sum.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

fn encode_input(path: &Path, seconds: u32) {
    let frames = seconds * 30;
    let buffers = (f64::from(seconds) * 48000.0 / 1024.0).ceil() as u32;
    let desc = format!(
        "matroskamux name=m ! filesink location={} \
         videotestsrc num-buffers={frames} pattern=snow \
           ! video/x-raw,width=1280,height=720,framerate=30/1,format=I420 \
           ! x264enc bitrate=4000 speed-preset=ultrafast key-int-max=60 ! h264parse ! queue ! m. \
         audiotestsrc num-buffers={buffers} samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 \
           ! voaacenc ! aacparse ! queue ! m.",
        path.display()
    );
    run_pipeline(&desc, Duration::from_secs(600), &[]);
}

/// Runs `desc` to EOS. Returns the CPU seconds its threads took but the main thread and those
/// named in `except` (taken when they are still there, at EOS).
fn run_pipeline(desc: &str, timeout: Duration, except: &[&str]) -> f64 {
    let pipeline = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    // Streaming threads come from a pool and may outlive a run: count what each did in this one.
    let before: std::collections::HashMap<u32, f64> = threads_cpu_seconds()
        .into_iter()
        .map(|(tid, _, s)| (tid, s))
        .collect();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS in time");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{desc}: {} ({:?})", e.error(), e.debug());
    }
    let main = std::process::id();
    let others = threads_cpu_seconds()
        .into_iter()
        .filter(|(tid, comm, _)| *tid != main && !except.contains(&comm.as_str()))
        .map(|(tid, _, s)| s - before.get(&tid).copied().unwrap_or(0.0))
        .sum();
    pipeline.set_state(gst::State::Null).unwrap();
    others
}

/// Child mode: run one sink over the input and print "cpu rss segments wall". With `plugin`,
/// rshlssink comes from that build's plugin file, else from this binary.
fn child(which: &str, input: &str, out: &str, plugin: Option<&Path>) {
    gst::init().unwrap();
    match plugin {
        Some(p) => load_plugin(p, "rshlssink"),
        None => gstlivestreaming::plugin_register_static().unwrap(),
    }
    let sink = match which {
        "ours" => format!(
            "rshlssink name=h location={out} target-duration=2 playlist-length=0 max-files=0 \
             playlist-type=vod"
        ),
        // The element as it was before its own muxer: the stock mpegtsmux inside.
        "ours-mpegtsmux" => format!(
            "rshlssink name=h location={out} target-duration=2 playlist-length=0 max-files=0 \
             playlist-type=vod muxer=mpegtsmux"
        ),
        "ours-fmp4" => format!(
            "rshlssink name=h location={out} target-duration=2 playlist-length=0 max-files=0 \
             playlist-type=vod segment-format=fmp4"
        ),
        "stock" => format!(
            "hlssink2 name=h location={out}/segment%05d.ts playlist-location={out}/playlist.m3u8 \
             target-duration=2 playlist-length=0 max-files=0"
        ),
        // GStreamer 1.22's only stock way to fragmented MP4 near HLS (its hlssink2 writes TS
        // only; hlscmafsink is gst-plugins-rs): fragmented mp4mux into the legacy hlssink. Its
        // output is not valid HLS: see the README.
        "stock-fmp4" => format!(
            "mp4mux name=h fragment-duration=2000 streamable=true \
             ! hlssink location={out}/segment%05d.m4s playlist-location={out}/playlist.m3u8 \
             target-duration=2 playlist-length=0 max-files=0"
        ),
        other => panic!("unknown sink {other}"),
    };
    let (video, audio) = if which == "stock-fmp4" {
        ("video_0", "audio_0")
    } else {
        ("video", "audio")
    };
    let desc = format!(
        "filesrc location={input} ! matroskademux name=d {sink} \
         d.video_0 ! queue ! h264parse ! h.{video} \
         d.audio_0 ! queue ! aacparse ! h.{audio}"
    );
    // Only the pipeline's run counts, not start-up (plugin loading is the same for both).
    let repeat = repeat(1);
    let cpu0 = process_cpu_seconds();
    let t0 = Instant::now();
    // The sink side: the queues' threads (parsing, the sink's input) and the sink's own; not
    // the demuxer's thread (its sink pad's task, "d:sink") nor the main thread.
    let mut sink_cpu = 0.0;
    for _ in 0..repeat {
        sink_cpu += run_pipeline(&desc, Duration::from_secs(600), &["d:sink"]);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu0;
    let playlist = std::fs::read(format!("{out}/playlist.m3u8")).unwrap();
    let segments = m3u8_rs::parse_media_playlist_res(&playlist)
        .map(|p| p.segments.len())
        .unwrap_or(0);
    println!(
        "{} {} {} {} {}",
        cpu,
        peak_rss_mib(std::process::id()),
        segments,
        wall,
        sink_cpu
    );
}

/// BENCH_REPEAT: how many times each child runs its pipeline over the input (the figures are
/// the sum), so that a run lasts long enough to measure without encoding more input.
fn repeat(default: u32) -> u32 {
    std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct RunResult {
    cpu: f64,
    /// Of the threads but the main one and the demuxer's.
    sink_cpu: f64,
    rss: f64,
    segments: usize,
    wall: f64,
}

fn run_child(
    exe: &Path,
    which: &str,
    input: &Path,
    out: &Path,
    plugin: Option<&Path>,
    repeat: u32,
) -> RunResult {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--child",
        which,
        &input.to_string_lossy(),
        &out.to_string_lossy(),
    ]);
    if let Some(p) = plugin {
        cmd.arg(p);
    }
    cmd.env("BENCH_REPEAT", repeat.to_string());
    let o = cmd.output().expect("run child");
    assert!(
        o.status.success(),
        "{which}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = String::from_utf8_lossy(&o.stdout);
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    RunResult {
        cpu: v[0],
        rss: v[1],
        segments: v[2] as usize,
        wall: v[3],
        sink_cpu: v[4],
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(
            &args[i + 1],
            &args[i + 2],
            &args[i + 3],
            args.get(i + 4).map(Path::new),
        );
        return;
    }
    gst::init().unwrap();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it: then a short
    // smoke run only checks that both sinks work on the input.
    let smoke = smoke();
    let seconds: u32 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 4 } else { 60 });
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1 } else { 3 });
    let exe = std::env::current_exe().unwrap();
    let work: PathBuf = std::env::temp_dir().join(format!("hls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let input = work.join("input.mkv");
    encode_input(&input, seconds);
    let size = std::fs::metadata(&input).unwrap().len();
    println!(
        "input: {seconds} s of 720p30 H.264 + AAC, {:.2} Mbit/s; {runs} runs each, medians",
        size as f64 * 8.0 / f64::from(seconds) / 1e6
    );
    if let Some(baseline) = PluginBuild::baseline() {
        let builds = [PluginBuild::current(), baseline];
        against_baseline(&builds, &exe, &input, &work, seconds, runs);
        let _ = std::fs::remove_dir_all(&work);
        return;
    }
    let rep = repeat(1);
    let mut ours = Vec::new();
    let mut ours_mpegtsmux = Vec::new();
    let mut ours_fmp4 = Vec::new();
    let mut stock = Vec::new();
    let mut stock_fmp4 = Vec::new();
    for _ in 0..runs {
        stock_fmp4.push(run_child(
            &exe,
            "stock-fmp4",
            &input,
            &work.join("stock-fmp4"),
            None,
            rep,
        ));
        ours_fmp4.push(run_child(
            &exe,
            "ours-fmp4",
            &input,
            &work.join("ours-fmp4"),
            None,
            rep,
        ));
        ours.push(run_child(
            &exe,
            "ours",
            &input,
            &work.join("ours"),
            None,
            rep,
        ));
        ours_mpegtsmux.push(run_child(
            &exe,
            "ours-mpegtsmux",
            &input,
            &work.join("ours-mpegtsmux"),
            None,
            rep,
        ));
        stock.push(run_child(
            &exe,
            "stock",
            &input,
            &work.join("stock"),
            None,
            rep,
        ));
    }
    let _ = std::fs::remove_dir_all(&work);
    // Both cut the same keyframes (every 2 s) into segments.
    assert_eq!(ours[0].segments, stock[0].segments);
    assert_eq!(ours_mpegtsmux[0].segments, stock[0].segments);
    assert_eq!(ours_fmp4[0].segments, stock[0].segments);
    assert_eq!(ours[0].segments as u32, seconds.div_ceil(2));
    let m = |v: &[RunResult], f: fn(&RunResult) -> f64| median(v.iter().map(f).collect());
    let (oc, sc) = (m(&ours, |r| r.cpu), m(&stock, |r| r.cpu));
    println!();
    println!("| sink | CPU s | wall s | peak RSS MiB | segments |\n|---|---|---|---|---|");
    println!(
        "| rshlssink | {oc:.2} | {:.2} | {:.1} | {} |",
        m(&ours, |r| r.wall),
        m(&ours, |r| r.rss),
        ours[0].segments
    );
    let mc = m(&ours_mpegtsmux, |r| r.cpu);
    println!(
        "| rshlssink muxer=mpegtsmux | {mc:.2} | {:.2} | {:.1} | {} |",
        m(&ours_mpegtsmux, |r| r.wall),
        m(&ours_mpegtsmux, |r| r.rss),
        ours_mpegtsmux[0].segments
    );
    let fc = m(&ours_fmp4, |r| r.cpu);
    println!(
        "| rshlssink segment-format=fmp4 | {fc:.2} | {:.2} | {:.1} | {} |",
        m(&ours_fmp4, |r| r.wall),
        m(&ours_fmp4, |r| r.rss),
        ours_fmp4[0].segments
    );
    println!(
        "| hlssink2 | {sc:.2} | {:.2} | {:.1} | {} |",
        m(&stock, |r| r.wall),
        m(&stock, |r| r.rss),
        stock[0].segments
    );
    let sfc = m(&stock_fmp4, |r| r.cpu);
    println!(
        "| mp4mux fragment-duration=2000 + hlssink | {sfc:.2} | {:.2} | {:.1} | {} |",
        m(&stock_fmp4, |r| r.wall),
        m(&stock_fmp4, |r| r.rss),
        stock_fmp4[0].segments
    );
    println!();
    println!("CPU ratio rshlssink / hlssink2: {:.2}", oc / sc);
    println!(
        "CPU ratio rshlssink muxer=mpegtsmux / hlssink2: {:.2}",
        mc / sc
    );
    println!(
        "CPU ratio rshlssink segment-format=fmp4 / hlssink2: {:.2}",
        fc / sc
    );
    println!(
        "CPU ratio rshlssink segment-format=fmp4 / mp4mux fragment-duration + hlssink: {:.2}",
        fc / sfc
    );
}

/// rshlssink of `builds[0]` (current) against that of `builds[1]` (baseline), `rounds` rounds.
fn against_baseline(
    builds: &[PluginBuild; 2],
    exe: &Path,
    input: &Path,
    work: &Path,
    seconds: u32,
    rounds: usize,
) {
    let together = together();
    let rep = repeat(5);
    for b in builds {
        println!("{}: {}", b.label, b.file.display());
    }
    println!(
        "rshlssink current against baseline, {rounds} rounds of {rep} pipeline runs per child, {}",
        if together {
            "both at once"
        } else {
            "one after the other"
        }
    );
    let mut runs: [Vec<RunResult>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        let order = round_order(r);
        let run = |i: usize| {
            let out = work.join(&builds[i].label);
            (
                i,
                run_child(exe, "ours", input, &out, Some(&builds[i].file), rep),
            )
        };
        let done: Vec<(usize, RunResult)> = if together {
            std::thread::scope(|s| {
                let handles: Vec<_> = order
                    .iter()
                    .map(|&i| {
                        let h = s.spawn(move || run(i));
                        // Let the first one get going, as the order says.
                        std::thread::sleep(Duration::from_millis(100));
                        h
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
        } else {
            order.iter().map(|&i| run(i)).collect()
        };
        for (i, res) in done {
            eprintln!(
                "round {r} {}: cpu {:.3} s (sink side {:.3} s), wall {:.2} s, rss {:.1} MiB, {} segments",
                builds[i].label, res.cpu, res.sink_cpu, res.wall, res.rss, res.segments
            );
            // Both cut every keyframe (every 2 s) into a segment.
            assert_eq!(
                res.segments as u32,
                seconds.div_ceil(2),
                "{}",
                builds[i].label
            );
            runs[i].push(res);
        }
    }
    let cpu = |i: usize| -> Vec<f64> { runs[i].iter().map(|r| r.cpu).collect() };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let sink_cpu = |i: usize| -> Vec<f64> { runs[i].iter().map(|r| r.sink_cpu).collect() };
    println!();
    println!(
        "| build | CPU s (mean) | of it the sink side | wall s (mean) | peak RSS MiB | segments |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, build) in builds.iter().enumerate() {
        let rs = &runs[i];
        println!(
            "| rshlssink {} | {:.3} | {:.3} | {:.3} | {:.1} | {} |",
            build.label,
            mean(&cpu(i)),
            mean(&sink_cpu(i)),
            mean(&rs.iter().map(|r| r.wall).collect::<Vec<_>>()),
            median(rs.iter().map(|r| r.rss).collect()),
            rs[0].segments
        );
    }
    println!();
    println!(
        "CPU current / baseline per round: {}",
        ratio_line(&cpu(0), &cpu(1))
    );
    println!(
        "The sink side alone (every thread but the main one and the demuxer's): {}",
        ratio_line(&sink_cpu(0), &sink_cpu(1))
    );
}
