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

/// The longest a read waits before the thread looks at the request timeout.
const TICK: Duration = Duration::from_secs(1);

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
    stream.set_read_timeout(Some(
        TICK.min(shared.config.request_timeout)
            .max(Duration::from_millis(10)),
    ))?;
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
        let end = read_loop(&shared, &ctx, decoder, stream, &rt);
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

/// The thread's loop: reads, handles what came, until the connection ends.
fn read_loop(
    shared: &Arc<Shared>,
    ctx: &ConnCtx,
    mut decoder: Decoder,
    mut stream: std::net::TcpStream,
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
                Ok(n) => break n,
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
