//! rtspserversink against the stock gst-rtsp-server, serving one ~4 Mbit/s H.264 stream to N
//! TCP clients.
//!
//!     cargo bench --bench rtsp_server_clients
//!
//! This process pre-encodes 10 s of 720p30 H.264 once, then plays it in a loop in real time,
//! payloaded once, to two UDP ports. Each server runs in a child process and only fans that RTP
//! out: ours as `udpsrc ! rtspserversink` (already-payloaded input), the stock one as
//! gst-rtsp-server with `( udpsrc ! identity name=pay0 )`. So both do the same work and neither
//! encodes. N clients (threads here) DESCRIBE, SETUP over TCP and PLAY, then read everything.
//! The server's CPU time (utime+stime from /proc) over the window, divided by N × window, is the
//! CPU per client-second; RSS is its peak. The slowest client's bitrate shows whether anyone
//! was starved. Environment: BENCH_CLIENTS (default 1,10,50,100,200), BENCH_SECONDS (default 10).
//! Under `cargo test` (no `--bench`) it is a smoke run: 1 and 10 clients for 2 s.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A minimal RTSP client: DESCRIBE, SETUP (TCP), PLAY; then counts the bytes it reads.
fn client(port: u16, bytes: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let url = format!("rtsp://127.0.0.1:{port}/stream");
    let mut cseq = 0;
    let mut request = |s: &mut TcpStream,
                       r: &mut BufReader<TcpStream>,
                       line: String,
                       extra: &str|
     -> Result<(Vec<String>, String), String> {
        cseq += 1;
        write!(s, "{line} RTSP/1.0\r\nCSeq: {cseq}\r\n{extra}\r\n").map_err(|e| e.to_string())?;
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).map_err(|e| e.to_string())?;
            if l.trim().is_empty() {
                if headers.is_empty() {
                    continue;
                }
                break;
            }
            headers.push(l.trim().to_owned());
        }
        if !headers[0].contains(" 200 ") {
            return Err(headers[0].clone());
        }
        let len = headers
            .iter()
            .find_map(|h| h.strip_prefix("Content-Length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok((headers, String::from_utf8_lossy(&body).into_owned()))
    };
    let (h, sdp) = request(
        &mut s,
        &mut r,
        format!("DESCRIBE {url}"),
        "Accept: application/sdp\r\n",
    )?;
    let base = h
        .iter()
        .find_map(|v| v.strip_prefix("Content-Base:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or(format!("{url}/"));
    let control = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=control:"))
        .find(|c| *c != "*")
        .ok_or("no control")?;
    let control = if control.starts_with("rtsp://") {
        control.to_owned()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), control)
    };
    let (h, _) = request(
        &mut s,
        &mut r,
        format!("SETUP {control}"),
        "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
    )?;
    let session = h
        .iter()
        .find_map(|v| v.strip_prefix("Session:"))
        .map(|v| v.split(';').next().unwrap().trim().to_owned())
        .ok_or("no session")?;
    request(
        &mut s,
        &mut r,
        format!("PLAY {base}"),
        &format!("Session: {session}\r\n"),
    )?;
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match r.read(&mut buf) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// One measurement: (CPU s per client-second, peak RSS MiB, slowest client Mbit/s, failures).
fn measure(server: &mut Guard, port: u16, n: usize, seconds: u64) -> (f64, f64, f64, usize) {
    let pid = server.0.id();
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::default()).collect();
    let handles: Vec<_> = counters
        .iter()
        .map(|c| {
            let (c, stop) = (c.clone(), stop.clone());
            // A small stagger, so that the stock server's accept queue is not what is measured.
            std::thread::sleep(Duration::from_millis(5));
            std::thread::spawn(move || client(port, c, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_seconds(pid);
    let start: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let slowest = counters
        .iter()
        .zip(&start)
        .map(|(c, s)| (c.load(Ordering::Relaxed) - s) as f64 * 8.0 / elapsed / 1e6)
        .fold(f64::INFINITY, f64::min);
    let rss = peak_rss_mib(pid);
    stop.store(true, Ordering::Relaxed);
    let failures = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(Err("panic".into())))
        .filter(|r| r.is_err())
        .count();
    (cpu / (n as f64 * elapsed), rss, slowest, failures)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-stock") {
        serve_stock(&args[i + 1], &args[i + 2], &args[i + 3], "tcp");
        return;
    }
    gst::init().unwrap();
    let smoke = smoke();
    let clients: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| if smoke { "1,10" } else { "1,10,50,100,200" }.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 2 } else { 10 });
    let exe = std::env::current_exe().unwrap();
    let plugin_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_owned();
    assert!(
        plugin_dir.join("libgstlivestreaming.so").exists(),
        "build the plugin first: cargo build --release"
    );

    let frames = pre_encode();
    let bytes: usize = frames.iter().map(|b| b.size()).sum();
    let input_mbps = bytes as f64 * 8.0 / (frames.len() as f64 / 30.0) / 1e6;
    let udp = [free_udp_port(), free_udp_port()];
    let (caps, stop_feed) = start_feeder(frames, &udp);
    println!("input: {input_mbps:.2} Mbit/s H.264 720p30; window {seconds} s per run");
    println!();
    println!(
        "| clients | ours CPU s/client-s | stock CPU s/client-s | ratio | ours RSS MiB | stock RSS MiB | slowest client Mbit/s (ours / stock) | failed clients (ours / stock) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in clients {
        let ours_port = free_port();
        let mut ours = spawn_ready({
            let mut c = Command::new("gst-launch-1.0");
            c.env("GST_PLUGIN_PATH", &plugin_dir).args([
                "udpsrc",
                "address=127.0.0.1",
                &format!("port={}", udp[0]),
                &format!("caps=\"{}\"", caps.replace('"', "\\\"")),
                "!",
                "rtspserversink",
                "address=127.0.0.1",
                &format!("port={ours_port}"),
                "mount-point=/stream",
                "protocols=tcp",
            ]);
            c
        });
        let (o_cpu, o_rss, o_slow, o_fail) = measure(&mut ours, ours_port, n, seconds);
        drop(ours);
        let stock_port = free_port();
        let mut stock = spawn_ready({
            let mut c = Command::new(&exe);
            c.args([
                "--serve-stock",
                &stock_port.to_string(),
                &udp[1].to_string(),
                &caps,
            ]);
            c
        });
        let (s_cpu, s_rss, s_slow, s_fail) = measure(&mut stock, stock_port, n, seconds);
        drop(stock);
        println!(
            "| {n} | {o_cpu:.5} | {s_cpu:.5} | {:.2} | {o_rss:.1} | {s_rss:.1} | {o_slow:.2} / {s_slow:.2} | {o_fail} / {s_fail} |",
            o_cpu / s_cpu
        );
    }
    stop_feed.store(true, Ordering::Relaxed);
}
