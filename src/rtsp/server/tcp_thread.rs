//! A recording publisher's plain TCP connection, read on a thread of its own.
//!
//! Specifications: RFC 2326 §10.11 (RECORD), §10.12 (interleaved data) and §12.37 (the session
//! timeout a publisher's RTSP and RTCP keep alive); the threading is ours.
//!
//! Once a publisher over plain TCP (not TLS, not an HTTP tunnel) has sent RECORD with its streams
//! interleaved on the connection, the connection's task hands its socket to a thread,
//! `rtsprec-tPORT` (PORT the publisher's, as in the logs), that reads it with blocking reads of up to [`READ_SIZE`] bytes: each read
//! wakes that one thread and takes whatever has arrived. On the shared runtime every read woke
//! the poller and then a worker for the task (a stock `rtspclientsink` writes each RTP packet
//! on its own, so a read mostly found one packet), most of the receiving process's time over
//! TCP. The socket leaves the runtime's poller altogether (a socket still registered for
//! reading wakes the poller for each segment even with no task reading it); the connection's
//! writer task stays on the runtime with the socket registered for writability only
//! ([`super::conn::FdWriter`]).
//!
//! The thread handles what it reads as the task did, through the same code
//! ([`super::on_message`]): interleaved RTP and RTCP go to the record mount directly, requests
//! (keep-alives, TEARDOWN, a new ANNOUNCE) are answered by the same request handling, run to
//! completion on the thread with the runtime's handle. The same limits apply: the request
//! timeout (a message begun must complete within it, a connection without a session is
//! closed after it without a request; the read wakes at least once a second to look), and the
//! session timeout (housekeeping ends the session, the connection then has none). Closing the
//! connection from elsewhere (a takeover, the server stopping, the writer failing) shuts the
//! socket for reading ([`ConnOut::set_reader_socket`]), which ends the thread's read at once.
//! The thread then returns why it ended to the connection's task, which closes the connection
//! as it always does.

use std::any::{Any, TypeId};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Chain;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

use super::conn::{CloseReason, ConnOut, TcpWriter};
use super::record::MAX_READ_HOLD;
use super::session::ConnCtx;
use super::{
    AbortOnDrop, Handled, ReadEnd, Shared, answer_request_timeout, on_interleaved, on_message,
};
use crate::rtsp::codec::{Decoder, Frame};

/// The name of a publisher connection's reading thread, before the publisher's port (like a
/// UDP stream's `rtsprec-PORT`; 15 bytes at most are kept).
pub const THREAD_PREFIX: &str = "rtsprec-t";

/// Bytes one read takes at most.
const READ_SIZE: usize = 256 * 1024;

/// The longest a read waits before the thread looks at the request timeout, when it does not
/// hold.
const TICK: Duration = Duration::from_secs(1);

/// While it holds, a read wakes the thread once this many bytes came, before the hold is over.
const LOWAT: i32 = 64 * 1024;

#[cfg(target_os = "linux")]
fn set_rcvlowat(stream: &std::net::TcpStream, bytes: i32) -> io::Result<()> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor and an int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const bytes).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_rcvlowat(_stream: &std::net::TcpStream, _bytes: i32) -> io::Result<()> {
    Ok(())
}

/// The reader of a plain TCP connection, as the connection's task gets it (the bytes read to
/// tell RTSP from HTTP, then the socket).
type PlainReader = Chain<std::io::Cursor<Vec<u8>>, OwnedReadHalf>;

/// Whether a connection read through `R` and written through `W` is plain TCP, whose socket can
/// go to a thread.
pub(super) fn eligible<R: 'static, W: 'static>() -> bool {
    cfg!(target_os = "linux")
        && TypeId::of::<R>() == TypeId::of::<PlainReader>()
        && TypeId::of::<W>() == TypeId::of::<TcpWriter>()
}

/// Takes the connection's socket off the runtime: its read half from `reader`, its write half
/// from the writer task, which is asked to give it back (what is queued stays queued for the
/// next writer). Bytes `reader` held unread go to `decoder`. None when the connection closed
/// meanwhile; Err when the socket cannot leave the runtime.
pub(super) async fn take_socket<R: 'static, W: 'static>(
    reader: R,
    out: &ConnOut,
    writer_returned: &mut oneshot::Receiver<W>,
    decoder: &mut Decoder,
) -> io::Result<Option<std::net::TcpStream>> {
    let not_plain = || io::Error::other("not a plain TCP connection");
    let reader: Box<dyn Any> = Box::new(reader);
    let reader = reader.downcast::<PlainReader>().map_err(|_| not_plain())?;
    let (cursor, read_half) = reader.into_inner();
    let read = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    if let Some(rest) = cursor.get_ref().get(read..).filter(|r| !r.is_empty()) {
        decoder.extend(rest);
    }
    out.hand_back_writer();
    let Ok(writer) = writer_returned.await else {
        return Ok(None);
    };
    let writer: Box<dyn Any> = Box::new(writer);
    let write_half = writer
        .downcast::<TcpWriter>()
        .map_err(|_| not_plain())?
        .into_inner()
        .ok_or_else(|| io::Error::other("the socket is still shared"))?;
    let stream = read_half
        .reunite(write_half)
        .map_err(|_| io::Error::other("the halves are of different sockets"))?;
    // Leaves the runtime's poller.
    stream.into_std().map(Some)
}

/// Starts the thread reading `stream` (and a writer task for it on the runtime, returned).
/// The receiver gets why the reading ended. On the runtime.
pub(super) fn start(
    shared: Arc<Shared>,
    ctx: ConnCtx,
    decoder: Decoder,
    stream: std::net::TcpStream,
) -> io::Result<(AbortOnDrop, oneshot::Receiver<ReadEnd>)> {
    #[cfg(target_os = "linux")]
    let writer = super::conn::FdWriter::new(stream.try_clone()?)?;
    #[cfg(not(target_os = "linux"))]
    let writer: super::conn::TcpWriter = {
        return Err(io::Error::other("not on this system"));
    };
    let out = ctx.out.clone();
    // Blocking reads (the writer's sends do not block: each is a non-blocking call).
    stream.set_nonblocking(false)?;
    let hold = shared
        .record
        .as_ref()
        .map_or(Duration::ZERO, |r| r.config.read_hold.min(MAX_READ_HOLD));
    let tick = TICK
        .min(shared.config.request_timeout)
        .max(Duration::from_millis(10));
    let mut waits = Waits {
        hold,
        tick,
        holding: false,
    };
    waits.set(&stream, !hold.is_zero())?;
    let writer_task = AbortOnDrop(tokio::spawn({
        let out = out.clone();
        let stall = shared.config.client_stall_timeout;
        async move {
            let _ = out.run_writer(writer, stall).await;
        }
    }));
    out.set_reader_socket(socket2::SockRef::from(&stream).try_clone()?);
    let (tx, rx) = oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    sdebug!(
        &*shared.name,
        "{}: connection {} records: read on a thread of its own ({THREAD_PREFIX}{})",
        out.peer,
        out.id,
        out.peer.port()
    );
    let job = move || {
        let end = read_loop(&shared, &ctx, decoder, stream, waits, &rt);
        let _ = tx.send(end);
    };
    // The job goes to the runtime's blocking pool if no thread can start.
    let job = Arc::new(std::sync::Mutex::new(Some(job)));
    let j = job.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("{THREAD_PREFIX}{}", out.peer.port()))
        .spawn(move || {
            if let Some(job) = j.lock().unwrap().take() {
                job();
            }
        });
    if spawned.is_err()
        && let Some(job) = job.lock().unwrap().take()
    {
        tokio::task::spawn_blocking(job);
    }
    Ok((writer_task, rx))
}

/// Closes the connection when dropped: the connection's task, aborted while the thread reads,
/// ends the thread's read this way.
pub(super) struct CloseOnDrop(pub Option<Arc<ConnOut>>);

impl CloseOnDrop {
    /// The thread ended: the connection's task closes the connection itself.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(out) = &self.0 {
            out.close(CloseReason::Server);
        }
    }
}

/// How the thread's reads wait.
///
/// Holding (while the publisher sends): a read returns once [`LOWAT`] bytes have come or the
/// hold is over, with what came meanwhile (`SO_RCVLOWAT` and `SO_RCVTIMEO`), so that the
/// thread wakes about once per hold however the publisher writes (a stock `rtspclientsink`
/// writes each RTP packet on its own: a read per packet, or per few). A hold that brings
/// nothing ends holding: the next read returns with the first byte, waiting at most `tick`
/// (the request timeout's checks), and the hold resumes with it.
struct Waits {
    hold: Duration,
    tick: Duration,
    holding: bool,
}

impl Waits {
    fn set(&mut self, stream: &std::net::TcpStream, holding: bool) -> io::Result<()> {
        let holding = holding && !self.hold.is_zero();
        if holding {
            set_rcvlowat(stream, LOWAT)?;
            stream.set_read_timeout(Some(self.hold))?;
        } else {
            set_rcvlowat(stream, 1)?;
            stream.set_read_timeout(Some(self.tick))?;
        }
        self.holding = holding;
        Ok(())
    }
}

/// The thread's loop: reads, handles what came, until the connection ends.
fn read_loop(
    shared: &Arc<Shared>,
    ctx: &ConnCtx,
    mut decoder: Decoder,
    mut stream: std::net::TcpStream,
    mut waits: Waits,
    rt: &tokio::runtime::Handle,
) -> ReadEnd {
    let out = &ctx.out;
    let request_timeout = shared.config.request_timeout;
    let mut buf = vec![0u8; READ_SIZE];
    let mut deadline = Instant::now() + request_timeout;
    // What is buffered already (the rest of the read that brought RECORD) is handled first.
    let mut n = 0;
    loop {
        // The clock restarts when a message begins in this read, or when nothing is left over.
        let mut restart = decoder.buffered_len() == 0;
        decoder.extend(&buf[..n]);
        loop {
            let decoded = match decoder.decode() {
                Ok(None) => break,
                Ok(Some(Frame::Interleaved { channel, data })) => {
                    // The media: no detour through the runtime.
                    restart = true;
                    on_interleaved(shared, ctx, channel, &data);
                    continue;
                }
                Ok(Some(frame)) => Ok(frame),
                Err(e) => Err(e),
            };
            restart |= decoded.is_ok();
            match rt.block_on(on_message(shared, ctx, decoded)) {
                Handled::Continue | Handled::Recording => {}
                Handled::End(end) => return end,
            }
        }
        if restart {
            deadline = Instant::now() + request_timeout;
        } else if decoder.buffered_len() > 0 && Instant::now() >= deadline {
            rt.block_on(answer_request_timeout(shared, out));
            return ReadEnd::RequestTimeout;
        }
        n = loop {
            match stream.read(&mut buf) {
                Ok(0) if out.is_closed() => return ReadEnd::Closed,
                Ok(0) => return ReadEnd::Eof,
                Ok(n) => {
                    if !waits.holding
                        && let Err(e) = waits.set(&stream, true)
                    {
                        return ReadEnd::Error(e);
                    }
                    break n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if out.is_closed() {
                        return ReadEnd::Closed;
                    }
                    // Nothing came for a hold: wait for the next byte instead.
                    if waits.holding
                        && let Err(e) = waits.set(&stream, false)
                    {
                        return ReadEnd::Error(e);
                    }
                    if Instant::now() < deadline {
                        continue;
                    }
                    if decoder.buffered_len() > 0 {
                        rt.block_on(answer_request_timeout(shared, out));
                        return ReadEnd::RequestTimeout;
                    }
                    if !ctx.has_session(&shared.sessions.lock().unwrap()) {
                        return ReadEnd::Idle;
                    }
                    // A connection with a session lives by the session timeout.
                    deadline = Instant::now() + request_timeout;
                }
                Err(_) if out.is_closed() => return ReadEnd::Closed,
                Err(e) => return ReadEnd::Error(e),
            }
        };
        if out.is_closed() {
            return ReadEnd::Closed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RecordConfig, RecordEvent, Server, ServerConfig};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:streamid=0\r\n";

    fn server(request_timeout: Duration) -> Server {
        Server::start(
            ServerConfig {
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 0,
                mount_point: "/live".into(),
                request_timeout,
                record: Some(RecordConfig::default()),
                ..ServerConfig::default()
            },
            |_| {},
        )
        .unwrap()
    }

    /// Reads one answer: its status line and headers.
    fn answer(r: &mut BufReader<std::net::TcpStream>) -> String {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "closed: {head}");
            head.push_str(&line);
            if line == "\r\n" {
                return head;
            }
        }
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut f = vec![b'$', 0, 0, 14, 0x80, 0];
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        f.extend_from_slice(&[0x11, 0x22, 0x33, 0x44, 0xff, 0xff]);
        f
    }

    fn thread_exists(name: &str) -> bool {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
    }

    /// RECORD and the publisher's first packets in one write: the packets after RECORD in
    /// that read reach the mount as those read on the thread do, the thread reads on, and a
    /// request left incomplete there is answered 408 after the request timeout, which ends
    /// the connection and the thread.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_publisher_is_read_on_its_thread_from_the_bytes_after_record_on() {
        let server = server(Duration::from_millis(300));
        let queue = server.record_queue().unwrap();
        let url = format!("rtsp://{}/live", server.local_addr());
        let c = std::net::TcpStream::connect(server.local_addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let thread = format!("rtsprec-t{}", c.local_addr().unwrap().port());
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        write!(
            w,
            "ANNOUNCE {url} RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{SDP}",
            SDP.len()
        )
        .unwrap();
        assert!(answer(&mut r).starts_with("RTSP/1.0 200 "));
        write!(
            w,
            "SETUP {url}/streamid=0 RTSP/1.0\r\nCSeq: 2\r\n\
             Transport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\n\r\n"
        )
        .unwrap();
        let setup = answer(&mut r);
        assert!(setup.starts_with("RTSP/1.0 200 "), "{setup}");
        let session = setup
            .lines()
            .find_map(|l| l.strip_prefix("Session: "))
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let mut bytes =
            format!("RECORD {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n").into_bytes();
        for seq in 1..=3 {
            bytes.extend(rtp(seq));
        }
        w.write_all(&bytes).unwrap();
        assert!(answer(&mut r).starts_with("RTSP/1.0 200 "));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !thread_exists(&thread) {
            assert!(Instant::now() < deadline, "no thread {thread}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut seqs = Vec::new();
        while seqs.len() < 3 {
            assert!(Instant::now() < deadline, "packets {seqs:?}");
            if let Some(RecordEvent::Rtp { packets, .. }) = queue.pop(Duration::from_millis(100)) {
                seqs.extend(packets.iter().map(|p| u16::from_be_bytes([p[2], p[3]])));
            }
        }
        // A few bytes, far from the 64 KiB that end a hold early: taken when the hold (20 ms)
        // is over, not later.
        let sent = Instant::now();
        for seq in 4..=6 {
            w.write_all(&rtp(seq)).unwrap();
        }
        while seqs.len() < 6 {
            assert!(Instant::now() < deadline, "packets {seqs:?}");
            if let Some(RecordEvent::Rtp { packets, .. }) = queue.pop(Duration::from_millis(10)) {
                seqs.extend(packets.iter().map(|p| u16::from_be_bytes([p[2], p[3]])));
            }
        }
        assert!(
            sent.elapsed() < Duration::from_millis(250),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

        // A keep-alive is answered from the thread, an incomplete request gets 408.
        write!(
            w,
            "GET_PARAMETER {url} RTSP/1.0\r\nCSeq: 4\r\nSession: {session}\r\n\r\n"
        )
        .unwrap();
        let keep_alive = answer(&mut r);
        assert!(keep_alive.starts_with("RTSP/1.0 200 "), "{keep_alive}");
        assert!(keep_alive.contains("CSeq: 4\r\n"), "{keep_alive}");
        let start = Instant::now();
        w.write_all(b"GET_PARAMETER * RTSP/1.0\r\nCSeq: 5\r\n")
            .unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert!(rest.starts_with("RTSP/1.0 408 "), "{rest}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while thread_exists(&thread) {
            assert!(Instant::now() < deadline, "thread {thread} still there");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Counted by the connection's task on the runtime, once the thread has ended.
        while server.stats().requests_timed_out == 0 {
            assert!(Instant::now() < deadline, "the timeout was not counted");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.stats().requests_timed_out, 1);
    }
}
