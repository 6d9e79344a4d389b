//! A one-process RTSP load generator: N sessions against one URL on a single-threaded tokio
//! runtime (one OS thread), so that thousands of clients cost one core at most and their CPU
//! is measured apart from everything else in the process.
//!
//! Each session does OPTIONS, DESCRIBE, SETUP of every media of the SDP and PLAY, over TCP
//! interleaved or UDP unicast (an even/odd client port pair per session and media), then counts
//! the RTP bytes and packets it receives and checks the sequence numbers of every stream: a
//! packet whose number skips ahead is a gap (the skipped numbers are lost packets); the first
//! packet is checked against the PLAY answer's `RTP-Info: seq=` when the server sends one. UDP
//! is read with `recvmmsg` (every queued datagram of a socket in one system call). OPTIONS
//! with the session id keeps the session alive every 30 s; TEARDOWN ends it.
//!
//! Independent of the crate's own RTSP code on purpose: it is a client we did not write for the
//! server under test.
#![allow(dead_code)]

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// `rtsp://host:port/path` (host an IP address: no name lookup).
    pub url: String,
    pub clients: usize,
    pub transport: Transport,
    /// Sessions between connect and PLAY answer at the same time.
    pub concurrent_setups: usize,
    /// UDP sockets ask for `UDP_GRO`: the kernel hands over a sender's segmentation-offload
    /// burst as one message instead of cutting it into datagrams on delivery (over loopback
    /// that cutting runs on the sender's CPU and is billed to the server under test; on a
    /// real network it is the client machine's, or its NIC's).
    pub udp_gro: bool,
    /// Zero: the generator reads whenever data arrives (it sleeps in `epoll_wait` between, so
    /// over loopback the server's writes wake it up, on the server's CPU). Otherwise it reads
    /// every this often, as clients on a busy machine (or with interrupt coalescing) do: data
    /// arriving meanwhile only queues, and the wake-ups are the client machines' cost again.
    pub read_interval: Duration,
}

/// What one session has seen. Written by the generator's thread, read by anyone.
#[derive(Default, Debug)]
pub struct SessionStats {
    /// PLAY was answered 200.
    pub playing: AtomicBool,
    /// Something failed (refused, closed, timed out); see `error`.
    pub failed: AtomicBool,
    pub error: Mutex<Option<String>>,
    /// RTP packets and their bytes (RTP header included; no interleaved or UDP framing).
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets missing in the middle of a stream and how many holes they made.
    pub lost: AtomicU64,
    pub gaps: AtomicU64,
    /// Packets that came with an older number than one already seen (reordered or duplicated).
    pub late: AtomicU64,
    /// First packet's sequence number minus the PLAY answer's `RTP-Info: seq=` (signed; 0 when
    /// they match or there was no RTP-Info; summed over the streams).
    pub rtpinfo_off: AtomicI64,
    /// Streams whose first packet did not carry the RTP-Info sequence number.
    pub rtpinfo_wrong: AtomicU64,
}

impl SessionStats {
    fn fail(&self, why: String) {
        self.failed.store(true, Ordering::Relaxed);
        self.error.lock().unwrap().get_or_insert(why);
    }
}

/// A copy of every session's counters at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub at: Option<std::time::Instant>,
    pub sessions: Vec<SessionSnap>,
    /// CPU seconds of the generator's thread (utime+stime).
    pub cpu: f64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SessionSnap {
    pub playing: bool,
    pub failed: bool,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub gaps: u64,
    pub rtpinfo_wrong: u64,
    pub rtpinfo_off: i64,
}

/// Figures of a measuring window between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub clients: usize,
    /// Playing at the end of the window and never failed.
    pub connected: usize,
    pub failed: usize,
    /// Received less than 90 % of the expected bitrate in the window (failed ones included).
    pub starved: usize,
    /// Lost packets in the window.
    pub with_gaps: usize,
    pub lost: u64,
    /// First packet not the one RTP-Info announced (over the session's whole life).
    pub rtpinfo_wrong: usize,
    pub rtpinfo_off_median: i64,
    pub min_mbps: f64,
    pub median_mbps: f64,
    /// The generator's CPU in the window, in % of one core.
    pub cpu_percent: f64,
    pub first_error: Option<String>,
}

pub struct LoadGen {
    pub config: Config,
    pub stats: Arc<Vec<SessionStats>>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    tid: u32,
    /// UDP ports of the sessions' RTP sockets (to read their drop counters in /proc/net/udp).
    pub udp_ports: Arc<Mutex<Vec<u16>>>,
}

impl LoadGen {
    /// Starts the sessions on their own thread and returns at once.
    pub fn start(config: Config) -> LoadGen {
        raise_nofile_limit();
        let stats: Arc<Vec<SessionStats>> = Arc::new(
            (0..config.clients)
                .map(|_| SessionStats::default())
                .collect(),
        );
        let (stop, stop_rx) = watch::channel(false);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let udp_ports = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (config, stats, udp_ports) = (config.clone(), stats.clone(), udp_ports.clone());
            std::thread::Builder::new()
                .name("loadgen".into())
                .spawn(move || {
                    let _ = tid_tx.send(thread_id());
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    rt.block_on(run(config, stats, stop_rx, udp_ports));
                })
                .expect("spawn the load generator thread")
        };
        let tid = tid_rx.recv().unwrap_or(0);
        LoadGen {
            config,
            stats,
            stop,
            thread: Some(thread),
            tid,
            udp_ports,
        }
    }

    /// Waits until every session plays and has received a packet, or failed, or `timeout`.
    /// Returns how many sessions are receiving.
    pub fn wait_receiving(&self, timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let receiving = self
                .stats
                .iter()
                .filter(|s| {
                    s.playing.load(Ordering::Relaxed)
                        && !s.failed.load(Ordering::Relaxed)
                        && s.packets.load(Ordering::Relaxed) > 0
                })
                .count();
            let failed = self
                .stats
                .iter()
                .filter(|s| s.failed.load(Ordering::Relaxed))
                .count();
            if receiving + failed >= self.stats.len() || std::time::Instant::now() >= deadline {
                return receiving;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Some(std::time::Instant::now()),
            cpu: thread_cpu_seconds(self.tid),
            sessions: self
                .stats
                .iter()
                .map(|s| SessionSnap {
                    playing: s.playing.load(Ordering::Relaxed),
                    failed: s.failed.load(Ordering::Relaxed),
                    packets: s.packets.load(Ordering::Relaxed),
                    bytes: s.bytes.load(Ordering::Relaxed),
                    lost: s.lost.load(Ordering::Relaxed),
                    gaps: s.gaps.load(Ordering::Relaxed),
                    rtpinfo_wrong: s.rtpinfo_wrong.load(Ordering::Relaxed),
                    rtpinfo_off: s.rtpinfo_off.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }

    /// The figures between two snapshots; `expected_mbps` is the stream's bitrate.
    pub fn report(&self, a: &Snapshot, b: &Snapshot, expected_mbps: f64) -> Report {
        let secs = match (a.at, b.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-3),
            _ => 1.0,
        };
        let mut mbps = Vec::with_capacity(b.sessions.len());
        let mut r = Report {
            clients: b.sessions.len(),
            cpu_percent: (b.cpu - a.cpu) / secs * 100.0,
            ..Report::default()
        };
        let mut offs = Vec::new();
        for (s0, s1) in a.sessions.iter().zip(&b.sessions) {
            let rate = (s1.bytes - s0.bytes) as f64 * 8.0 / secs / 1e6;
            mbps.push(rate);
            if s1.failed {
                r.failed += 1;
            } else if s1.playing {
                r.connected += 1;
            }
            if s1.failed || rate < 0.9 * expected_mbps {
                r.starved += 1;
            }
            if s1.lost > s0.lost {
                r.with_gaps += 1;
                r.lost += s1.lost - s0.lost;
            }
            if s1.rtpinfo_wrong > 0 {
                r.rtpinfo_wrong += 1;
                offs.push(s1.rtpinfo_off);
            }
        }
        mbps.sort_by(f64::total_cmp);
        offs.sort_unstable();
        r.min_mbps = mbps.first().copied().unwrap_or(0.0);
        r.median_mbps = mbps.get(mbps.len() / 2).copied().unwrap_or(0.0);
        r.rtpinfo_off_median = offs.get(offs.len() / 2).copied().unwrap_or(0);
        r.first_error = self
            .stats
            .iter()
            .find_map(|s| s.error.lock().unwrap().clone());
        r
    }

    /// TEARDOWN every session (each waits up to 2 s for the answer) and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Raises the soft limit of open files to the hard limit (children inherit it).
pub fn raise_nofile_limit() {
    use nix::libc;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The soft limit of open files of this process.
pub fn nofile_limit() -> u64 {
    use nix::libc;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain system call on a local struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

fn thread_id() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// utime+stime of one thread of this process (10 ms resolution).
fn thread_cpu_seconds(tid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// Drops counted by the kernel on the UDP sockets bound to `ports` on this machine
/// (/proc/net/udp, last column): datagrams that arrived to a full receive buffer.
pub fn udp_drops(ports: &[u16]) -> u64 {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let wanted: std::collections::HashSet<u16> = ports.iter().copied().collect();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            wanted
                .contains(&port)
                .then(|| f.last()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

async fn run(
    config: Config,
    stats: Arc<Vec<SessionStats>>,
    stop: watch::Receiver<bool>,
    udp_ports: Arc<Mutex<Vec<u16>>>,
) {
    let config = Arc::new(config);
    let setups = Arc::new(Semaphore::new(config.concurrent_setups.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.clients {
        let (config, stats, stop, setups, udp_ports) = (
            config.clone(),
            stats.clone(),
            stop.clone(),
            setups.clone(),
            udp_ports.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = session(&config, &stats, i, stop, &setups, &udp_ports).await {
                stats[i].fail(e);
            }
        });
    }
    // Paced reading: the thread sleeps between rounds instead of waiting for data; each round
    // (the task yields to the I/O driver) runs every session with data.
    let pacer = (!config.read_interval.is_zero()).then(|| {
        let interval = config.read_interval;
        tokio::spawn(async move {
            loop {
                std::thread::sleep(interval);
                tokio::task::yield_now().await;
            }
        })
    });
    while tasks.join_next().await.is_some() {}
    if let Some(p) = pacer {
        p.abort();
    }
}

const TIMEOUT: Duration = Duration::from_secs(20);

thread_local! {
    /// One read buffer for every TCP session of the thread (they never read at the same time).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
    /// recvmmsg slots shared the same way.
    static DGRAMS: RefCell<Dgrams> = RefCell::new(Dgrams::new());
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The RTSP connection during the handshake: requests and their answers.
struct Rtsp {
    stream: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
}

impl Rtsp {
    async fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        self.cseq += 1;
        let mut req = format!(
            "{method} {url} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: loadgen\r\n",
            self.cseq
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tokio::time::timeout(TIMEOUT, self.stream.write_all(req.as_bytes()))
            .await
            .map_err(|_| format!("{method}: write timed out"))?
            .map_err(|e| format!("{method}: {e}"))?;
        let resp = tokio::time::timeout(TIMEOUT, self.response())
            .await
            .map_err(|_| format!("{method}: no answer in {TIMEOUT:?}"))??;
        if resp.status != 200 {
            return Err(format!("{method} answered {}", resp.status));
        }
        Ok(resp)
    }

    async fn response(&mut self) -> Result<Response, String> {
        loop {
            if let Some((resp, used)) = parse_response(&self.buf)? {
                self.buf.drain(..used);
                return Ok(resp);
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed during the handshake".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One RTSP response at the start of `buf`, and how many bytes it took; interleaved frames
/// before it are skipped.
fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, String> {
    let mut start = 0;
    while buf.len() > start && buf[start] == b'$' {
        if buf.len() < start + 4 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buf[start + 2], buf[start + 3]]));
        if buf.len() < start + 4 + len {
            return Ok(None);
        }
        start += 4 + len;
    }
    let rest = &buf[start..];
    let Some(end) = find(rest, b"\r\n\r\n") else {
        if rest.len() > 64 * 1024 {
            return Err("RTSP header too long".into());
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&rest[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("RTSP/1.0 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an RTSP response: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let total = end + 4 + len;
    if rest.len() < total {
        return Ok(None);
    }
    let body = rest[end + 4..total].to_vec();
    Ok(Some((
        Response {
            status,
            headers,
            body,
        },
        start + total,
    )))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The control URLs of the SDP's media, resolved against `base`.
fn media_controls(sdp: &str, base: &str) -> Vec<String> {
    let mut controls = Vec::new();
    let mut in_media = false;
    let mut current: Option<String> = None;
    let mut count = 0;
    for line in sdp.lines().map(str::trim) {
        if line.starts_with("m=") {
            if in_media {
                controls.push(current.take());
            }
            in_media = true;
            count += 1;
        } else if in_media && let Some(c) = line.strip_prefix("a=control:") {
            current = Some(c.trim().to_owned());
        }
    }
    if in_media {
        controls.push(current);
    }
    debug_assert_eq!(controls.len(), count);
    controls
        .into_iter()
        .map(|c| match c.as_deref() {
            None | Some("*") => base.to_owned(),
            Some(c) if c.contains("://") => c.to_owned(),
            Some(c) if base.ends_with('/') => format!("{base}{c}"),
            Some(c) => format!("{base}/{c}"),
        })
        .collect()
}

fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Per-stream sequence number check.
#[derive(Default)]
struct SeqTrack {
    expected: Option<u16>,
    rtpinfo_seq: Option<u16>,
}

impl SeqTrack {
    #[inline]
    fn on_packet(&mut self, seq: u16, s: &SessionStats) {
        match self.expected {
            None => {
                if let Some(r) = self.rtpinfo_seq
                    && r != seq
                {
                    s.rtpinfo_wrong.fetch_add(1, Ordering::Relaxed);
                    s.rtpinfo_off
                        .fetch_add(i64::from(seq.wrapping_sub(r) as i16), Ordering::Relaxed);
                }
            }
            Some(e) if e == seq => {}
            Some(e) => {
                let d = seq.wrapping_sub(e);
                if d >= 0x8000 {
                    s.late.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                s.lost.fetch_add(u64::from(d), Ordering::Relaxed);
                s.gaps.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.expected = Some(seq.wrapping_add(1));
    }
}

fn rtp_seq(packet: &[u8]) -> Option<u16> {
    (packet.len() >= 12 && packet[0] >> 6 == 2).then(|| u16::from_be_bytes([packet[2], packet[3]]))
}

struct Media {
    control: String,
    track: SeqTrack,
    /// Interleaved RTP channel (TCP).
    channel: u8,
    /// RTP and RTCP sockets (UDP).
    sockets: Option<(std::net::UdpSocket, std::net::UdpSocket)>,
}

async fn session(
    config: &Config,
    stats: &Arc<Vec<SessionStats>>,
    index: usize,
    mut stop: watch::Receiver<bool>,
    setups: &Semaphore,
    udp_ports: &Mutex<Vec<u16>>,
) -> Result<(), String> {
    let s = &stats[index];
    let url = url::Url::parse(&config.url).map_err(|e| e.to_string())?;
    let host: IpAddr = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| "the URL's host must be an IP address")?;
    let addr = SocketAddr::new(host, url.port().unwrap_or(554));

    let permit = setups.acquire().await.map_err(|e| e.to_string())?;
    if *stop.borrow() {
        return Ok(());
    }
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let local_ip = stream.local_addr().map_err(|e| e.to_string())?.ip();
    let mut rtsp = Rtsp {
        stream,
        buf: Vec::new(),
        cseq: 0,
    };
    rtsp.request("OPTIONS", &config.url, &[]).await?;
    let desc = rtsp
        .request("DESCRIBE", &config.url, &[("Accept", "application/sdp")])
        .await?;
    let base = desc
        .header("Content-Base")
        .or(desc.header("Content-Location"))
        .unwrap_or(&config.url)
        .to_owned();
    let sdp = String::from_utf8_lossy(&desc.body).into_owned();
    let controls = media_controls(&sdp, &base);
    if controls.is_empty() {
        return Err("the SDP has no media".into());
    }
    let mut media = Vec::with_capacity(controls.len());
    let mut session_id: Option<String> = None;
    for (i, control) in controls.into_iter().enumerate() {
        let mut m = Media {
            control,
            track: SeqTrack::default(),
            channel: 0,
            sockets: None,
        };
        let transport = match config.transport {
            Transport::Tcp => {
                let ch = i.checked_mul(2).and_then(|c| u8::try_from(c).ok());
                let ch = ch.filter(|c| *c < 255).ok_or("too many media")?;
                m.channel = ch;
                format!("RTP/AVP/TCP;unicast;interleaved={}-{}", ch, ch + 1)
            }
            Transport::Udp => {
                let (rtp, rtcp) = bind_pair(local_ip, config.udp_gro)?;
                let port = rtp.local_addr().map_err(|e| e.to_string())?.port();
                udp_ports.lock().unwrap().push(port);
                m.sockets = Some((rtp, rtcp));
                format!("RTP/AVP;unicast;client_port={}-{}", port, port + 1)
            }
        };
        let mut headers = vec![("Transport", transport.as_str())];
        if let Some(id) = &session_id {
            headers.push(("Session", id.as_str()));
        }
        let resp = rtsp.request("SETUP", &m.control, &headers).await?;
        if session_id.is_none() {
            let id = resp
                .header("Session")
                .ok_or("SETUP answered without Session")?;
            session_id = Some(id.split(';').next().unwrap_or(id).trim().to_owned());
        }
        let answer = resp
            .header("Transport")
            .ok_or("SETUP answered without Transport")?;
        if config.transport == Transport::Tcp {
            m.channel = param(answer, "interleaved")
                .and_then(|v| v.split('-').next()?.trim().parse().ok())
                .unwrap_or(m.channel);
        } else if !answer.contains("client_port") && !answer.contains("server_port") {
            return Err(format!("UDP SETUP answered {answer:?}"));
        }
        media.push(m);
    }
    let session_id = session_id.unwrap_or_default();
    let play = rtsp
        .request(
            "PLAY",
            &base,
            &[("Session", session_id.as_str()), ("Range", "npt=0-")],
        )
        .await?;
    if let Some(info) = play.header("RTP-Info") {
        for entry in info.split(',') {
            let u = param(entry, "url").unwrap_or_default();
            let seq = param(entry, "seq").and_then(|v| v.parse::<u16>().ok());
            let m = media
                .iter_mut()
                .find(|m| m.control == u || m.control.ends_with(u) || u.ends_with(&m.control));
            if let (Some(m), Some(seq)) = (m, seq) {
                m.track.rtpinfo_seq = Some(seq);
            } else if media.len() == 1 && seq.is_some() {
                media[0].track.rtpinfo_seq = seq;
            }
        }
    }
    s.playing.store(true, Ordering::Relaxed);
    drop(permit);

    let Rtsp {
        mut stream,
        buf: leftover,
        mut cseq,
    } = rtsp;
    // UDP readers: one task per stream, on this thread.
    let mut readers = Vec::new();
    let mut tracks: Vec<(u8, SeqTrack)> = Vec::new();
    for m in media {
        match m.sockets {
            Some((rtp, rtcp)) => {
                let rtp = UdpSocket::from_std(rtp).map_err(|e| e.to_string())?;
                let (stats, stop) = (stats.clone(), stop.clone());
                readers.push(tokio::spawn(udp_reader(
                    rtp, rtcp, m.track, stats, index, stop,
                )));
            }
            None => tracks.push((m.channel, m.track)),
        }
    }

    let mut parser = Interleaved::default();
    let on_data = |parser: &mut Interleaved, data: &[u8], tracks: &mut Vec<(u8, SeqTrack)>| {
        parser.feed(data, &mut |channel, packet_head, len| {
            if channel % 2 == 0
                && let Some((_, t)) = tracks.iter_mut().find(|(c, _)| *c == channel)
            {
                s.packets.fetch_add(1, Ordering::Relaxed);
                s.bytes.fetch_add(len as u64, Ordering::Relaxed);
                if let Some(seq) = rtp_seq(packet_head) {
                    t.on_packet(seq, s);
                }
            }
        })
    };
    on_data(&mut parser, &leftover, &mut tracks)?;

    let keepalive = Duration::from_secs(30);
    let mut ka = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let result: Result<(), String> = loop {
        let mut ka_due = false;
        let mut stopping = false;
        tokio::select! {
            biased;
            _ = stop.changed() => stopping = true,
            _ = ka.tick() => ka_due = true,
            r = stream.readable() => if let Err(e) = r { break Err(e.to_string()) },
        }
        if stopping || *stop.borrow() {
            break Ok(());
        }
        if ka_due {
            cseq += 1;
            let req = format!(
                "OPTIONS {} RTSP/1.0\r\nCSeq: {cseq}\r\nSession: {session_id}\r\n\r\n",
                config.url
            );
            if let Err(e) = stream.write_all(req.as_bytes()).await {
                break Err(format!("keep-alive: {e}"));
            }
            continue;
        }
        let r = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match stream.try_read(&mut scratch) {
                Ok(0) => Err("the server closed the connection".to_string()),
                Ok(n) => on_data(&mut parser, &scratch[..n], &mut tracks),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        });
        if let Err(e) = r {
            break Err(e);
        }
    };
    // TEARDOWN, and wait (bounded) for its answer while data still flows.
    if result.is_ok() {
        cseq += 1;
        let req =
            format!("TEARDOWN {base} RTSP/1.0\r\nCSeq: {cseq}\r\nSession: {session_id}\r\n\r\n");
        if stream.write_all(req.as_bytes()).await.is_ok() {
            let answers = parser.rtsp_messages;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while parser.rtsp_messages == answers {
                    if stream.readable().await.is_err() {
                        return;
                    }
                    let done = SCRATCH.with(|scratch| {
                        let mut scratch = scratch.borrow_mut();
                        match stream.try_read(&mut scratch) {
                            Ok(0) => true,
                            Ok(n) => parser.feed(&scratch[..n], &mut |_, _, _| {}).is_err(),
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        }
                    });
                    if done {
                        return;
                    }
                }
            })
            .await;
        }
    }
    for r in readers {
        match r.await {
            Ok(Err(e)) => {
                if result.is_ok() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e.to_string()),
            Ok(Ok(())) => {}
        }
    }
    result
}

/// Binds an even RTP port and the odd one above it on `ip`.
fn bind_pair(ip: IpAddr, gro: bool) -> Result<(std::net::UdpSocket, std::net::UdpSocket), String> {
    for _ in 0..200 {
        let rtp = std::net::UdpSocket::bind((ip, 0)).map_err(|e| format!("bind: {e}"))?;
        let port = rtp.local_addr().map_err(|e| e.to_string())?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        let Ok(rtcp) = std::net::UdpSocket::bind((ip, port + 1)) else {
            continue;
        };
        let sock = socket2::SockRef::from(&rtp);
        let _ = sock.set_recv_buffer_size(1 << 20);
        if gro {
            nix::sys::socket::setsockopt(&rtp, nix::sys::socket::sockopt::UdpGroSegment, &true)
                .map_err(|e| format!("UDP_GRO: {e}"))?;
        }
        rtp.set_nonblocking(true).map_err(|e| e.to_string())?;
        rtcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        return Ok((rtp, rtcp));
    }
    Err("no free even/odd UDP port pair".into())
}

/// Reads one stream's RTP socket with recvmmsg until told to stop. RTCP is left unread (the
/// socket only exists so that the server's reports are not refused).
async fn udp_reader(
    rtp: UdpSocket,
    _rtcp: std::net::UdpSocket,
    mut track: SeqTrack,
    stats: Arc<Vec<SessionStats>>,
    index: usize,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let s = &stats[index];
    let fd = rtp.as_raw_fd();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            r = rtp.readable() => r.map_err(|e| e.to_string())?,
        }
        let r = rtp.try_io(Interest::READABLE, || {
            DGRAMS.with(|d| d.borrow_mut().recv(fd, &mut track, s))
        });
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("UDP receive: {e}")),
        }
    }
}

/// recvmmsg slots. A slot takes a whole `UDP_GRO` message (up to 64 KiB of datagrams of one
/// size, the last possibly shorter), whose segment size comes in a control message.
struct Dgrams {
    buf: Vec<u8>,
}

impl Dgrams {
    const SLOTS: usize = 64;
    const SLOT: usize = 65536;

    fn new() -> Self {
        Dgrams {
            buf: vec![0; Self::SLOTS * Self::SLOT],
        }
    }

    /// Reads every queued message (up to SLOTS); WouldBlock when the queue is (now) empty,
    /// which tells tokio to wait for the next readiness.
    fn recv(
        &mut self,
        fd: std::os::fd::RawFd,
        track: &mut SeqTrack,
        s: &SessionStats,
    ) -> std::io::Result<()> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmmsg};
        use std::io::IoSliceMut;
        let mut slots = self.buf.chunks_mut(Self::SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; Self::SLOTS] =
            std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
        // Fresh headers each time: nix 0.32 leaves each one's control length at what the
        // previous call received (0 after a datagram without one), which truncates the next.
        let mut headers = nix::sys::socket::MultiHeaders::<()>::preallocate(
            Self::SLOTS,
            Some(nix::cmsg_space!(i32)),
        );
        let received = recvmmsg(
            fd,
            &mut headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(std::io::Error::from)?;
        let messages: Vec<(usize, usize)> = received
            .map(|m| {
                let segment = m
                    .cmsgs()
                    .into_iter()
                    .flatten()
                    .find_map(|c| match c {
                        ControlMessageOwned::UdpGroSegments(n) => usize::try_from(n).ok(),
                        _ => None,
                    })
                    .filter(|&n| n > 0)
                    .unwrap_or(m.bytes.max(1));
                (m.bytes, segment)
            })
            .collect();
        let n = messages.len();
        let (mut packets, mut bytes) = (0, 0);
        for (slot, (len, segment)) in self.buf.chunks(Self::SLOT).zip(messages) {
            for datagram in slot[..len.min(Self::SLOT)].chunks(segment) {
                packets += 1;
                bytes += datagram.len() as u64;
                if let Some(seq) = rtp_seq(datagram) {
                    track.on_packet(seq, s);
                }
            }
        }
        s.packets.fetch_add(packets, Ordering::Relaxed);
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        if n < Self::SLOTS {
            // Drained: let tokio clear the readiness instead of paying one more EAGAIN.
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }
}

/// A streaming parser of what comes over an RTSP connection after PLAY: interleaved frames
/// (`$`, channel, 16-bit length) and RTSP messages between them. It keeps only the first bytes
/// of each frame (for the RTP sequence number) and never copies payload.
#[derive(Default)]
struct Interleaved {
    state: State,
    head: [u8; 4],
    head_len: usize,
    channel: u8,
    frame_len: usize,
    remaining: usize,
    rtp_head: [u8; 12],
    rtp_len: usize,
    rtsp: Vec<u8>,
    pub rtsp_messages: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Header,
    Body,
    RtspHead,
    RtspBody(usize),
}

impl Interleaved {
    /// Feeds received bytes; calls `on_frame(channel, first bytes of the frame, frame length)`
    /// for every complete frame.
    fn feed(
        &mut self,
        mut data: &[u8],
        on_frame: &mut dyn FnMut(u8, &[u8], usize),
    ) -> Result<(), String> {
        while !data.is_empty() {
            match self.state {
                State::Header => {
                    if self.head_len == 0 && data[0] != b'$' {
                        self.state = State::RtspHead;
                        continue;
                    }
                    let take = (4 - self.head_len).min(data.len());
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
                    self.head_len += take;
                    data = &data[take..];
                    if self.head_len == 4 {
                        self.head_len = 0;
                        self.channel = self.head[1];
                        self.frame_len =
                            usize::from(u16::from_be_bytes([self.head[2], self.head[3]]));
                        self.remaining = self.frame_len;
                        self.rtp_len = 0;
                        if self.remaining == 0 {
                            on_frame(self.channel, &[], 0);
                        } else {
                            self.state = State::Body;
                        }
                    }
                }
                State::Body => {
                    if self.rtp_len < self.rtp_head.len() {
                        let take = (self.rtp_head.len() - self.rtp_len)
                            .min(data.len())
                            .min(self.remaining);
                        self.rtp_head[self.rtp_len..self.rtp_len + take]
                            .copy_from_slice(&data[..take]);
                        self.rtp_len += take;
                        self.remaining -= take;
                        data = &data[take..];
                    }
                    let skip = self.remaining.min(data.len());
                    self.remaining -= skip;
                    data = &data[skip..];
                    if self.remaining == 0 {
                        on_frame(self.channel, &self.rtp_head[..self.rtp_len], self.frame_len);
                        self.state = State::Header;
                    }
                }
                State::RtspHead => {
                    let before = self.rtsp.len();
                    self.rtsp.extend_from_slice(data);
                    let from = before.saturating_sub(3);
                    match find(&self.rtsp[from..], b"\r\n\r\n") {
                        Some(p) => {
                            let end = from + p + 4;
                            data = &data[end - before..];
                            self.rtsp.truncate(end);
                            let head = String::from_utf8_lossy(&self.rtsp).into_owned();
                            if !head.starts_with("RTSP/") && !head.contains(" RTSP/1.0\r\n") {
                                return Err(format!("lost the interleaved framing at {head:.40?}"));
                            }
                            let len = head
                                .lines()
                                .filter_map(|l| l.split_once(':'))
                                .find(|(k, _)| k.trim().eq_ignore_ascii_case("Content-Length"))
                                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            self.rtsp.clear();
                            self.rtsp_messages += 1;
                            self.state = if len > 0 {
                                State::RtspBody(len)
                            } else {
                                State::Header
                            };
                        }
                        None => {
                            if self.rtsp.len() > 64 * 1024 {
                                return Err("lost the interleaved framing".into());
                            }
                            data = &[];
                        }
                    }
                }
                State::RtspBody(left) => {
                    let skip = left.min(data.len());
                    data = &data[skip..];
                    self.state = if left == skip {
                        State::Header
                    } else {
                        State::RtspBody(left - skip)
                    };
                }
            }
        }
        Ok(())
    }
}

/// Runs the parser's self-checks (benches have no test harness; the smoke run calls this).
pub fn self_check() {
    // Frames split at every position, with an RTSP answer in between.
    let mut wire = Vec::new();
    let mut expect = Vec::new();
    for seq in 0u16..20 {
        let mut pkt = vec![0x80, 96];
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&[0; 8]);
        pkt.extend(std::iter::repeat_n(7u8, usize::from(seq) * 13));
        wire.push(b'$');
        wire.push(0);
        wire.extend_from_slice(&(pkt.len() as u16).to_be_bytes());
        wire.extend_from_slice(&pkt);
        expect.push((seq, pkt.len()));
        if seq == 7 {
            wire.extend_from_slice(b"RTSP/1.0 200 OK\r\nCSeq: 9\r\nContent-Length: 3\r\n\r\nabc");
        }
    }
    for chunk in [1, 2, 3, 5, 64, 4096] {
        let mut p = Interleaved::default();
        let mut got = Vec::new();
        for c in wire.chunks(chunk) {
            p.feed(c, &mut |ch, head, len| {
                assert_eq!(ch, 0);
                got.push((rtp_seq(head).expect("an RTP header"), len));
            })
            .expect("parses");
        }
        assert_eq!(got, expect, "chunk size {chunk}");
        assert_eq!(p.rtsp_messages, 1);
    }
    // Sequence tracking: a hole of 3, a late packet, a wrong RTP-Info start.
    let s = SessionStats::default();
    let mut t = SeqTrack {
        rtpinfo_seq: Some(65530),
        ..SeqTrack::default()
    };
    for seq in [65534u16, 65535, 0, 4, 2, 5] {
        t.on_packet(seq, &s);
    }
    assert_eq!(s.rtpinfo_wrong.load(Ordering::Relaxed), 1);
    assert_eq!(s.rtpinfo_off.load(Ordering::Relaxed), 4);
    assert_eq!(s.lost.load(Ordering::Relaxed), 3);
    assert_eq!(s.gaps.load(Ordering::Relaxed), 1);
    assert_eq!(s.late.load(Ordering::Relaxed), 1);
    let c = media_controls(
        "v=0\r\na=control:*\r\nm=video 0 RTP/AVP 96\r\na=control:stream=0\r\nm=audio 0 RTP/AVP 97\r\na=control:rtsp://h/x/a\r\n",
        "rtsp://h/x/",
    );
    assert_eq!(c, ["rtsp://h/x/stream=0", "rtsp://h/x/a"]);
}
