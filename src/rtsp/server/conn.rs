//! The outgoing side of one RTSP connection (plain TCP, or TLS over it).
//!
//! Specifications: RFC 2326 §10.12 and RFC 7826 §14 (interleaved data on the RTSP connection); the
//! queueing and drop policy are ours.
//!
//! Everything a connection sends (RTSP responses, server requests such as ANNOUNCE/REDIRECT and
//! interleaved RTP/RTCP) goes through one bounded queue drained by a writer task. Producers never
//! block: media that does not fit is refused as a whole frame and counted, so a client that stops
//! reading costs the pipeline nothing. A write that makes no progress for the stall timeout closes
//! the connection. On plain TCP, a frame for a connection with nothing queued or being written
//! goes to the socket at once from the sender's thread with a non-blocking write (what the socket
//! does not take is queued): with thousands of clients, waking a writer task per client per frame
//! cost more than the write.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::rtsp::codec::interleaved_header;

/// Control messages (responses, server requests) may exceed the media budget so they are never
/// lost behind media, but a peer that lets even those pile up this far is cut off.
const MAX_CONTROL_BYTES: usize = 1024 * 1024;
/// Most buffers handed to one vectored write (Linux's IOV_MAX is 1024; a frame larger than a
/// batch goes in several writes).
const MAX_BATCH_SLICES: usize = 1024;

/// The write half of a connection's byte stream.
pub trait ConnWriter: AsyncWrite + Unpin + Send + 'static {
    /// Whether written bytes may wait in the writer until a flush (TLS records): each batch then
    /// ends with one. Plain TCP hands everything to the socket and skips it.
    const BUFFERED: bool;

    /// The socket itself when bytes can go to it straight from the thread that has them (plain
    /// TCP): see [`ConnOut::send_media`].
    fn direct(&self) -> Option<Arc<OwnedWriteHalf>> {
        None
    }
}

/// The write half of a plain TCP connection, shared with the connection's [`ConnOut`] so that
/// media can be written without waking the writer task while nothing waits in the queue.
/// Writes never raise SIGPIPE (the element may live in a process that does not ignore it).
pub struct TcpWriter(Arc<OwnedWriteHalf>);

impl TcpWriter {
    pub fn new(half: OwnedWriteHalf) -> Self {
        Self(Arc::new(half))
    }

    /// The half itself, once no sender shares it (the writer task that shared it has ended).
    pub fn into_inner(self) -> Option<OwnedWriteHalf> {
        Arc::into_inner(self.0)
    }
}

/// Writes what the socket takes now: Err(WouldBlock) when it takes nothing.
#[cfg(target_os = "linux")]
fn try_write_socket(half: &OwnedWriteHalf, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let stream: &tokio::net::TcpStream = half.as_ref();
    stream.try_io(tokio::io::Interest::WRITABLE, || {
        send_dontwait(stream.as_raw_fd(), slices)
    })
}

/// One non-blocking `sendmsg` of `slices` (whatever the descriptor's own mode), without SIGPIPE:
/// what the socket takes, Err(WouldBlock) when it takes nothing.
#[cfg(target_os = "linux")]
fn send_dontwait(fd: std::os::fd::RawFd, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
    use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmsg};
    // At most IOV_MAX buffers per call (more is EMSGSIZE); the caller writes the rest next.
    let slices = &slices[..slices.len().min(MAX_BATCH_SLICES)];
    loop {
        match sendmsg::<SockaddrStorage>(
            fd,
            slices,
            &[],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => {}
            r => return r.map_err(std::io::Error::from),
        }
    }
}

/// Elsewhere (mio sets SO_NOSIGPIPE where the system has it).
#[cfg(not(target_os = "linux"))]
fn try_write_socket(half: &OwnedWriteHalf, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
    let stream: &tokio::net::TcpStream = half.as_ref();
    stream.try_write_vectored(slices)
}

impl AsyncWrite for TcpWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let stream: &tokio::net::TcpStream = (*self.0).as_ref();
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            match try_write_socket(&self.0, bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let stream: &tokio::net::TcpStream = (*self.0).as_ref();
        Poll::Ready(socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write))
    }
}

impl ConnWriter for TcpWriter {
    const BUFFERED: bool = false;

    fn direct(&self) -> Option<Arc<OwnedWriteHalf>> {
        Some(self.0.clone())
    }
}

/// The write side of a plain TCP connection whose reading left the runtime for a thread of its
/// own (see [`super::tcp_thread`]): the socket is registered with the runtime's poller for
/// writability only, so that the publisher's data arriving wakes no runtime thread (a
/// registration for reading, even with no task reading, woke the poller for every segment).
/// The socket is in blocking mode for the reading thread; every write here is a non-blocking
/// `sendmsg` of its own.
#[cfg(target_os = "linux")]
pub struct FdWriter(tokio::io::unix::AsyncFd<std::net::TcpStream>);

#[cfg(target_os = "linux")]
impl FdWriter {
    /// Registers `stream` for writability; on the runtime.
    pub fn new(stream: std::net::TcpStream) -> std::io::Result<Self> {
        // SAFETY: the stream owns its descriptor, which stays open and the same until the
        // AsyncFd (which owns the stream) is dropped.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(stream, tokio::io::Interest::WRITABLE)
        }
        .map(Self)
        .map_err(std::io::Error::from)
    }
}

#[cfg(target_os = "linux")]
impl AsyncWrite for FdWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        use std::os::fd::AsRawFd;
        loop {
            let mut guard = std::task::ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| send_dontwait(fd.get_ref().as_raw_fd(), bufs)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => {}
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.0.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(target_os = "linux")]
impl ConnWriter for FdWriter {
    const BUFFERED: bool = false;
}

/// A TLS stream's half (tokio-rustls).
impl<S: AsyncRead + AsyncWrite + Send + 'static> ConnWriter for tokio::io::WriteHalf<S> {
    const BUFFERED: bool = true;
}

/// A group of RTP or RTCP packets (a frame, a compound) queued as a whole: one allocation per
/// push, shared by every connection it is queued for.
#[derive(Clone)]
pub struct Frame {
    packets: Arc<[Bytes]>,
    /// Bytes on the wire, interleaved headers included.
    wire_len: usize,
}

impl Frame {
    /// None when a packet is too large for an interleaved frame (RFC 2326 §10.12: 16-bit
    /// length).
    pub fn new(packets: &[Bytes]) -> Option<Frame> {
        let mut wire_len = 0;
        for p in packets {
            if p.len() > usize::from(u16::MAX) {
                return None;
            }
            wire_len += p.len() + 4;
        }
        Some(Frame {
            packets: packets.into(),
            wire_len,
        })
    }

    pub fn packets(&self) -> &[Bytes] {
        &self.packets
    }
}

enum Item {
    Control(Bytes),
    Media {
        channel: u8,
        frame: Frame,
    },
    /// What the socket did not take of a frame written straight from the sender's thread.
    Tail(Bytes),
}

impl Item {
    fn wire_len(&self) -> usize {
        match self {
            Item::Control(b) | Item::Tail(b) => b.len(),
            Item::Media { frame, .. } => frame.wire_len,
        }
    }

    /// Buffers it takes in a vectored write.
    fn slices(&self) -> usize {
        match self {
            Item::Control(_) | Item::Tail(_) => 1,
            Item::Media { frame, .. } => 2 * frame.packets.len(),
        }
    }
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    media_bytes: usize,
    control_bytes: usize,
    closed: bool,
    /// The writer task holds items it took from the queue and has not finished writing.
    writing: bool,
    /// The plain TCP socket media may be written to directly while nothing is queued or being
    /// written (see [`ConnOut::send_media`]); None for TLS, and once the connection closes.
    direct: Option<Arc<OwnedWriteHalf>>,
    /// Frames are being dropped since the queue first refused one; logged when it starts and
    /// when it ends, never per frame.
    dropping: Option<DropEpisode>,
    /// The writer task is to give its writer back (see [`ConnOut::hand_back_writer`]).
    handover: bool,
}

/// A run of media frames refused because the client reads too slowly.
#[derive(Debug, Clone, Copy)]
struct DropEpisode {
    since: Instant,
    frames: u64,
    packets: u64,
    bytes: usize,
}

/// What became of a frame written straight to the socket.
enum Direct {
    /// The socket took it whole.
    Done,
    /// The socket took none of it: queue the frame.
    Queue,
    /// The socket took a part: the rest is to be queued.
    Partial(Bytes),
}

/// Why a connection was closed by the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer went away or the socket failed.
    Peer,
    /// The peer stopped reading for longer than the stall timeout.
    Stalled,
    /// The peer let control messages pile up past [`MAX_CONTROL_BYTES`].
    ControlOverflow,
    /// The server is shutting down or dropped the client.
    Server,
}

/// Shared handle to a connection's outgoing queue.
pub struct ConnOut {
    pub id: u64,
    pub peer: SocketAddr,
    /// The server's name, for log records.
    name: Arc<str>,
    queue: Mutex<Queue>,
    notify: Notify,
    media_limit: usize,
    next_cseq: AtomicU32,
    closed_flag: AtomicBool,
    close_reason: Mutex<Option<CloseReason>>,
    /// Interleaved media frames refused because the queue was full.
    pub frames_dropped: AtomicU64,
    /// Packets inside those frames.
    pub packets_dropped: AtomicU64,
    /// Bytes written to the socket.
    pub bytes_written: AtomicU64,
    /// Wakes the reader side when the connection is closed from elsewhere.
    pub closed_notify: Notify,
    /// Told after each write the writer completes (see [`ConnOut::flush_control`]).
    written: Notify,
    /// The socket of a connection read by a thread of its own (see [`super::tcp_thread`]):
    /// closing the connection shuts it for reading, which ends the thread's blocking read.
    reader_socket: Mutex<Option<socket2::Socket>>,
}

impl ConnOut {
    pub fn new(id: u64, peer: SocketAddr, media_limit: usize, name: Arc<str>) -> Self {
        Self {
            id,
            peer,
            name,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            media_limit,
            next_cseq: AtomicU32::new(1),
            closed_flag: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            frames_dropped: AtomicU64::new(0),
            packets_dropped: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            closed_notify: Notify::new(),
            written: Notify::new(),
            reader_socket: Mutex::new(None),
        }
    }

    /// CSeq for a request the server sends (ANNOUNCE, REDIRECT).
    pub fn next_cseq(&self) -> u32 {
        self.next_cseq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed_flag.load(Ordering::Acquire)
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock().unwrap()
    }

    /// Marks the connection closed; the writer drains nothing more and the reader stops.
    pub fn close(&self, reason: CloseReason) {
        {
            let mut q = self.queue.lock().unwrap();
            if q.closed {
                return;
            }
            q.closed = true;
            q.direct = None;
            q.items.clear();
            q.media_bytes = 0;
            q.control_bytes = 0;
        }
        self.close_reason.lock().unwrap().get_or_insert(reason);
        self.closed_flag.store(true, Ordering::Release);
        self.notify.notify_one();
        self.closed_notify.notify_waiters();
        if let Some(socket) = self.reader_socket.lock().unwrap().take() {
            let _ = socket.shutdown(std::net::Shutdown::Read);
        }
    }

    /// The connection is read by a thread blocked on `socket` (another descriptor of it):
    /// closing the connection shuts it for reading, which wakes the thread. Shut at once when
    /// the connection is closed already.
    pub fn set_reader_socket(&self, socket: socket2::Socket) {
        let mut slot = self.reader_socket.lock().unwrap();
        // Under the lock that `close` takes after setting the flag: either this sees the flag,
        // or `close` finds the socket.
        if self.is_closed() {
            let _ = socket.shutdown(std::net::Shutdown::Read);
        } else {
            *slot = Some(socket);
        }
    }

    /// Asks the writer task to give its writer back ([`ConnOut::run_writer`] returns it) once
    /// it has written what it holds; what is queued stays queued for the next writer.
    pub fn hand_back_writer(&self) {
        self.queue.lock().unwrap().handover = true;
        self.notify.notify_one();
    }

    /// Queues an RTSP message. Never dropped; a peer that lets them pile up is disconnected.
    pub fn send_control(&self, msg: Bytes) {
        let overflow = {
            let mut q = self.queue.lock().unwrap();
            if q.closed {
                return;
            }
            q.control_bytes += msg.len();
            q.items.push_back(Item::Control(msg));
            q.control_bytes > MAX_CONTROL_BYTES
        };
        if overflow {
            self.close(CloseReason::ControlOverflow);
        } else {
            self.notify.notify_one();
        }
    }

    /// Queues a group of packets (one frame, or one RTCP compound) on `channel`, all or nothing.
    /// Returns false when the group was dropped because the queue is full or closed.
    /// The queue holds at most `media_limit` bytes, or one group of any size when it was empty.
    pub fn send_media(&self, channel: u8, frame: &Frame) -> bool {
        let total = frame.wire_len;
        let packets = frame.packets();
        let ended = {
            let mut q = self.queue.lock().unwrap();
            if q.closed {
                return false;
            }
            if let Some(direct) = q
                .direct
                .as_ref()
                .filter(|_| q.items.is_empty() && !q.writing)
            {
                let outcome = self.write_direct(direct, channel, packets, total);
                if !matches!(outcome, Direct::Queue) {
                    // The queue was empty: a drop episode is over.
                    let ended = q.dropping.take();
                    if let Direct::Partial(tail) = outcome {
                        q.media_bytes += tail.len();
                        q.items.push_back(Item::Tail(tail));
                        drop(q);
                        self.notify.notify_one();
                    } else {
                        drop(q);
                    }
                    if let Some(e) = ended {
                        self.log_caught_up(e);
                    }
                    return true;
                }
            }
            // An empty queue takes any frame, so frames larger than the limit still flow to a
            // client that keeps up.
            if q.media_bytes > 0 && q.media_bytes + total > self.media_limit {
                let queued = q.media_bytes;
                let started = q.dropping.is_none();
                let episode = q.dropping.get_or_insert(DropEpisode {
                    since: Instant::now(),
                    frames: 0,
                    packets: 0,
                    bytes: 0,
                });
                episode.frames += 1;
                episode.packets += packets.len() as u64;
                episode.bytes += total;
                drop(q);
                if started {
                    sdebug!(
                        &*self.name,
                        "{}: client reads too slowly: {queued} bytes queued (limit {}), dropping \
                         whole frames until it catches up",
                        self.peer,
                        self.media_limit
                    );
                }
                self.frames_dropped.fetch_add(1, Ordering::Relaxed);
                self.packets_dropped
                    .fetch_add(packets.len() as u64, Ordering::Relaxed);
                return false;
            }
            // A drop episode ends once the queue has drained to half its limit, not with the
            // first small frame that fits again.
            let ended = if q.media_bytes <= self.media_limit / 2 {
                q.dropping.take()
            } else {
                None
            };
            q.media_bytes += total;
            q.items.push_back(Item::Media {
                channel,
                frame: frame.clone(),
            });
            ended
        };
        self.notify.notify_one();
        if let Some(e) = ended {
            self.log_caught_up(e);
        }
        true
    }

    fn log_caught_up(&self, e: DropEpisode) {
        sdebug!(
            &*self.name,
            "{}: client caught up after {:.1?}: {} frames ({} packets, {} bytes) were dropped",
            self.peer,
            e.since.elapsed(),
            e.frames,
            e.packets,
            e.bytes
        );
    }

    /// Writes a frame to the socket from the calling thread (the pipeline's, for media): the
    /// same bytes as the writer task would, minus the task's wake-up and hand-over. Called with
    /// the queue locked, empty and no write in progress, so nothing can come in between.
    fn write_direct(
        &self,
        socket: &OwnedWriteHalf,
        channel: u8,
        packets: &[Bytes],
        total: usize,
    ) -> Direct {
        let headers: Vec<[u8; 4]> = packets
            .iter()
            .map(|p| interleaved_header(channel, u16::try_from(p.len()).unwrap_or(u16::MAX)))
            .collect();
        let slices: Vec<IoSlice<'_>> = packets
            .iter()
            .zip(&headers)
            .flat_map(|(p, h)| [IoSlice::new(h), IoSlice::new(p)])
            .collect();
        let written = match try_write_socket(socket, &slices) {
            Ok(n) => n,
            // A full send buffer, or a failing socket the writer task finds failing too.
            Err(_) => return Direct::Queue,
        };
        self.bytes_written
            .fetch_add(written as u64, Ordering::Relaxed);
        if written == total {
            return Direct::Done;
        }
        if written == 0 {
            return Direct::Queue;
        }
        // The rest, copied: rare (a send buffer filling up mid-frame) and small next to a copy
        // per client per frame.
        let mut tail = Vec::with_capacity(total - written);
        let mut skip = written;
        for s in &slices {
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            tail.extend_from_slice(&s[skip..]);
            skip = 0;
        }
        Direct::Partial(tail.into())
    }

    /// Waits until the queued RTSP messages (and the media queued before them) are written, for
    /// at most `within`: an answer the connection is closed after (an error, or a client that
    /// half-closed its side) reaches the client first. False when time ran out or the
    /// connection closed first.
    pub async fn flush_control(&self, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            loop {
                let written = self.written.notified();
                tokio::pin!(written);
                written.as_mut().enable();
                {
                    let q = self.queue.lock().unwrap();
                    if q.closed {
                        return false;
                    }
                    if q.control_bytes == 0 {
                        return true;
                    }
                }
                tokio::select! {
                    () = written => {}
                    () = self.closed_notify.notified() => return false,
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Bytes of media currently queued.
    pub fn queued_media_bytes(&self) -> usize {
        self.queue.lock().unwrap().media_bytes
    }

    /// Drains the queue into `writer` until the connection closes, or gives `writer` back when
    /// asked to ([`ConnOut::hand_back_writer`]). `stall_timeout` bounds each write that makes
    /// no progress.
    pub async fn run_writer<W: ConnWriter>(
        self: Arc<Self>,
        mut writer: W,
        stall_timeout: Duration,
    ) -> Option<W> {
        // The socket is shared with senders only while this task owns the writer: the guard
        // takes it back however the task ends (closed, failed or aborted).
        struct Unshare<'a>(&'a ConnOut);
        impl Drop for Unshare<'_> {
            fn drop(&mut self) {
                self.0.queue.lock().unwrap().direct = None;
            }
        }
        {
            let mut q = self.queue.lock().unwrap();
            if !q.closed {
                q.direct = writer.direct();
            }
        }
        let _unshare = Unshare(&self);
        let mut batch: Vec<Item> = Vec::new();
        loop {
            {
                let mut q = self.queue.lock().unwrap();
                if q.closed {
                    break;
                }
                if q.handover {
                    q.handover = false;
                    drop(q);
                    return Some(writer);
                }
                // Whole items up to the slice budget; at least one, however large.
                let mut slices = 0;
                while let Some(item) = q.items.front() {
                    slices += item.slices();
                    if slices > MAX_BATCH_SLICES && !batch.is_empty() {
                        break;
                    }
                    batch.extend(q.items.pop_front());
                }
                q.writing = !batch.is_empty();
            }
            if batch.is_empty() {
                self.notify.notified().await;
                continue;
            }
            let result = write_batch(&mut writer, &batch, stall_timeout).await;
            let (mut media, mut control) = (0, 0);
            for item in batch.drain(..) {
                match item {
                    Item::Control(b) => control += b.len(),
                    Item::Media { frame, .. } => media += frame.wire_len,
                    Item::Tail(b) => media += b.len(),
                }
            }
            {
                let mut q = self.queue.lock().unwrap();
                q.writing = false;
                q.media_bytes = q.media_bytes.saturating_sub(media);
                q.control_bytes = q.control_bytes.saturating_sub(control);
            }
            self.written.notify_waiters();
            match result {
                Ok(()) => {
                    self.bytes_written
                        .fetch_add((media + control) as u64, Ordering::Relaxed);
                }
                Err(reason) => {
                    if reason == CloseReason::Stalled {
                        sdebug!(
                            &*self.name,
                            "{}: disconnecting a stalled client: its socket took nothing for \
                             {stall_timeout:?} ({} bytes of media queued)",
                            self.peer,
                            self.queued_media_bytes()
                        );
                    }
                    self.close(reason);
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), writer.shutdown()).await;
        None
    }
}

/// Writes a batch with vectored writes (one system call for many items on plain TCP; TLS takes
/// them into records the same way), then flushes what a TLS stream still holds.
async fn write_batch<W: ConnWriter>(
    writer: &mut W,
    batch: &[Item],
    stall_timeout: Duration,
) -> Result<(), CloseReason> {
    let headers: Vec<[u8; 4]> = batch
        .iter()
        .filter_map(|item| match item {
            Item::Media { channel, frame } => Some((*channel, frame.packets())),
            Item::Control(_) | Item::Tail(_) => None,
        })
        .flat_map(|(channel, packets)| {
            // Frame::new checked that every length fits.
            packets.iter().map(move |p| {
                interleaved_header(channel, u16::try_from(p.len()).unwrap_or(u16::MAX))
            })
        })
        .collect();
    let mut headers = headers.iter();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.iter().map(Item::slices).sum());
    for item in batch {
        match item {
            Item::Control(b) | Item::Tail(b) => slices.push(IoSlice::new(b.as_ref())),
            Item::Media { frame, .. } => {
                for (p, header) in frame.packets().iter().zip(&mut headers) {
                    slices.push(IoSlice::new(header));
                    slices.push(IoSlice::new(p.as_ref()));
                }
            }
        }
    }
    debug_assert_eq!(
        slices.iter().map(|s| s.len()).sum::<usize>(),
        batch.iter().map(Item::wire_len).sum::<usize>()
    );
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match tokio::time::timeout(stall_timeout, writer.write_vectored(slices)).await {
            Err(_) => return Err(CloseReason::Stalled),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(CloseReason::Peer),
            Ok(Ok(n)) => IoSlice::advance_slices(&mut slices, n),
        }
    }
    if W::BUFFERED {
        match tokio::time::timeout(stall_timeout, writer.flush()).await {
            Err(_) => return Err(CloseReason::Stalled),
            Ok(Err(_)) => return Err(CloseReason::Peer),
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(first: u8, packets: usize) -> Frame {
        let packets: Vec<Bytes> = (0..packets)
            .map(|i| Bytes::from(vec![first.wrapping_add(i as u8); 10 + i % 7]))
            .collect();
        Frame::new(&packets).unwrap()
    }

    fn wire(channel: u8, frame: &Frame) -> Vec<u8> {
        let mut v = Vec::new();
        for p in frame.packets() {
            v.extend_from_slice(&interleaved_header(channel, p.len() as u16));
            v.extend_from_slice(p);
        }
        v
    }

    #[tokio::test]
    async fn frames_and_messages_reach_the_socket_in_order_and_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut client, (server, peer)) = (client.unwrap(), accepted.unwrap());
        let out = Arc::new(ConnOut::new(1, peer, 1 << 20, "test".into()));
        // A frame needing more slices than one vectored write takes, between small ones.
        let (small, big) = (frame(1, 3), frame(50, MAX_BATCH_SLICES));
        let mut expected = Vec::new();
        assert!(out.send_media(0, &small));
        expected.extend(wire(0, &small));
        out.send_control(Bytes::from_static(b"RTSP/1.0 200 OK\r\n\r\n"));
        expected.extend_from_slice(b"RTSP/1.0 200 OK\r\n\r\n");
        assert!(out.send_media(2, &big));
        expected.extend(wire(2, &big));
        assert!(out.send_media(1, &small));
        expected.extend(wire(1, &small));
        let (_, write_half) = server.into_split();
        let write_half = TcpWriter::new(write_half);
        let writer = tokio::spawn(out.clone().run_writer(write_half, Duration::from_secs(5)));
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got == expected, "the bytes on the wire differ");
        assert_eq!(out.queued_media_bytes(), 0);
        assert_eq!(
            out.bytes_written.load(Ordering::Relaxed),
            expected.len() as u64
        );
        out.close(CloseReason::Server);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn media_goes_straight_to_the_socket_and_queues_behind_what_it_did_not_take() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut client, (server, peer)) = (client.unwrap(), accepted.unwrap());
        // Small buffers, so that the socket soon takes frames partly, then not at all.
        socket2::SockRef::from(&server)
            .set_send_buffer_size(8192)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(8192)
            .unwrap();
        let out = Arc::new(ConnOut::new(1, peer, 1 << 22, "test".into()));
        let (_, write_half) = server.into_split();
        let writer = tokio::spawn(
            out.clone()
                .run_writer(TcpWriter::new(write_half), Duration::from_secs(5)),
        );
        // The writer task shares the socket once it runs.
        tokio::time::timeout(Duration::from_secs(5), async {
            while out.queue.lock().unwrap().direct.is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let first = frame(1, 5);
        assert!(out.send_media(0, &first));
        assert_eq!(
            out.bytes_written.load(Ordering::Relaxed),
            first.wire_len as u64,
            "written before the send returned, without the writer task"
        );
        let mut expected = wire(0, &first);
        // Frames of about 6 KB and answers between them: far more than the buffers hold.
        for i in 0..60u8 {
            let packets: Vec<Bytes> = (0..4).map(|j| Bytes::from(vec![i ^ j; 1500])).collect();
            let f = Frame::new(&packets).unwrap();
            assert!(out.send_media(i % 2, &f));
            expected.extend(wire(i % 2, &f));
            if i % 7 == 0 {
                let msg = format!("RTSP/1.0 200 OK\r\nCSeq: {i}\r\n\r\n");
                out.send_control(Bytes::from(msg.clone()));
                expected.extend_from_slice(msg.as_bytes());
            }
        }
        assert!(
            out.queued_media_bytes() > 0,
            "the socket cannot have taken everything"
        );
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got == expected, "the bytes on the wire differ");
        assert_eq!(
            out.bytes_written.load(Ordering::Relaxed),
            expected.len() as u64
        );
        out.close(CloseReason::Server);
        writer.await.unwrap();
        assert!(out.queue.lock().unwrap().direct.is_none());
    }

    #[tokio::test]
    async fn flushing_waits_for_the_queued_answers_only_as_long_as_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut client, (server, peer)) = (client.unwrap(), accepted.unwrap());
        let out = Arc::new(ConnOut::new(1, peer, 1 << 20, "test".into()));
        assert!(
            out.flush_control(Duration::from_millis(10)).await,
            "nothing queued"
        );
        // No writer yet: the answer stays queued and the wait ends with its bound.
        out.send_control(Bytes::from_static(b"RTSP/1.0 400 Bad Request\r\n\r\n"));
        let start = Instant::now();
        assert!(!out.flush_control(Duration::from_millis(50)).await);
        assert!(start.elapsed() >= Duration::from_millis(50));
        let (_, write_half) = server.into_split();
        let write_half = TcpWriter::new(write_half);
        let writer = tokio::spawn(out.clone().run_writer(write_half, Duration::from_secs(5)));
        assert!(out.flush_control(Duration::from_secs(5)).await);
        let mut got = vec![0; 28];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"RTSP/1.0 400 Bad Request\r\n\r\n");
        out.close(CloseReason::Server);
        assert!(!out.flush_control(Duration::from_secs(5)).await, "closed");
        writer.await.unwrap();
    }

    /// A writer task asked for its writer gives it back and leaves what is queued; the socket,
    /// taken off the runtime and written through an [`FdWriter`] (registered for writability
    /// only, in blocking mode for a reading thread), carries on where it stopped.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_writer_handed_back_leaves_the_queue_to_the_next_writer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut client, (server, peer)) = (client.unwrap(), accepted.unwrap());
        let out = Arc::new(ConnOut::new(1, peer, 1 << 20, "test".into()));
        let (read_half, write_half) = server.into_split();
        let writer = tokio::spawn(
            out.clone()
                .run_writer(TcpWriter::new(write_half), Duration::from_secs(5)),
        );
        out.send_control(Bytes::from_static(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n"));
        let mut expected = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n".to_vec();
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        out.hand_back_writer();
        let writer = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap()
            .expect("the writer back");
        // Queued while no writer runs.
        let small = frame(1, 3);
        assert!(out.send_media(0, &small));
        out.send_control(Bytes::from_static(b"RTSP/1.0 200 OK\r\nCSeq: 2\r\n\r\n"));
        let stream = read_half
            .reunite(writer.into_inner().expect("no longer shared"))
            .unwrap()
            .into_std()
            .unwrap();
        stream.set_nonblocking(false).unwrap();
        let writer = tokio::spawn(out.clone().run_writer(
            FdWriter::new(stream.try_clone().unwrap()).unwrap(),
            Duration::from_secs(5),
        ));
        expected = wire(0, &small);
        expected.extend_from_slice(b"RTSP/1.0 200 OK\r\nCSeq: 2\r\n\r\n");
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got == expected, "the bytes on the wire differ");
        out.close(CloseReason::Server);
        assert!(writer.await.unwrap().is_none(), "closed, not handed back");
        // The writer shut its side down.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
    }

    /// Closing a connection read by a thread shuts its socket for reading: the blocked read
    /// returns at once.
    #[test]
    fn closing_ends_the_read_of_a_reading_thread() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, peer) = listener.accept().unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let out = Arc::new(ConnOut::new(1, peer, 1 << 20, "test".into()));
        out.set_reader_socket(socket2::SockRef::from(&server).try_clone().unwrap());
        let reader = std::thread::spawn(move || {
            let start = Instant::now();
            let n = std::io::Read::read(&mut server, &mut [0u8; 16]).unwrap();
            (n, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        out.close(CloseReason::Server);
        let (n, took) = reader.join().unwrap();
        assert_eq!(n, 0);
        assert!(took < Duration::from_secs(2), "{took:?}");
        // A socket handed over after the close is shut at once.
        let listener2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c2 = std::net::TcpStream::connect(listener2.local_addr().unwrap()).unwrap();
        let (mut late, _) = listener2.accept().unwrap();
        late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        out.set_reader_socket(socket2::SockRef::from(&late).try_clone().unwrap());
        assert_eq!(std::io::Read::read(&mut late, &mut [0u8; 16]).unwrap(), 0);
    }

    #[test]
    fn a_packet_too_large_to_interleave_makes_no_frame() {
        assert!(Frame::new(&[Bytes::from(vec![0; 65536])]).is_none());
        assert_eq!(
            Frame::new(&[Bytes::from(vec![0; 65535])]).unwrap().wire_len,
            65539
        );
    }
}
