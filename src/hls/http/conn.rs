//! One connection of the built-in server, below hyper: what it is doing (waiting for a request,
//! or answering some), the deadlines that follow from that, its transport (which notes when the
//! client sends something and closes by lingering), and the body of every answer (which holds
//! the connection's "answering" mark until it is sent).
//!
//! hyper parses and writes the messages; the limits of the hand-written server it replaced are
//! kept here, where they apply to HTTP/1.1 and HTTP/2 alike: a request must arrive within the
//! request timeout of the connection starting to wait for it (HTTP/1.1: 408 when part of it
//! came, a silent close when nothing did; HTTP/2: GOAWAY), and an answer must be sent within
//! the request timeout plus [`WRITE_TIMEOUT`] (else the connection is dropped: a client that
//! does not read cannot hold a connection, HTTP/2 flow control or not).
//!
//! Specifications: RFC 9112 §9.3-§9.6 (persistent connections, closing them), RFC 9110 §15.5.9
//! (408 Request Timeout), RFC 9113 §6.8 (GOAWAY) and §5.1.2 (concurrent streams).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::hls::growing::{Growing, Piece};
use crate::runtime::TaskGroup;
use std::future::Future;

/// How long an answer may take to send, past the request timeout.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection that closes is still read from, so that the client gets the last
/// answer rather than a reset (RFC 9112 §9.6).
pub const LINGER: Duration = Duration::from_secs(1);
/// An answer's body is handed to hyper this much at a time, so that it asks for the next piece
/// only as the client reads: the "answering" mark lasts until (nearly) all is sent.
const CHUNK: usize = 64 * 1024;

/// Answers with file data that one connection may hold at once (made or being sent): HTTP/1.1
/// answers one request at a time; an HTTP/2 client's further streams wait for one of these, so
/// that streams that are not read cannot each pin a copy of a segment in memory.
pub const MAX_BODIES: usize = 4;

/// What a connection is doing, shared by its transport, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    bodies: Arc<Semaphore>,
    /// Told when an answer begins or the last one ends: the deadlines move then.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// The answers being made or sent, by a serial number: since when.
    answering: BTreeMap<u64, Instant>,
    next: u64,
    /// Since when no answer is being made or sent: the connection waits for a request.
    idle_since: Instant,
    /// Bytes came while waiting: part of a request.
    read_while_idle: bool,
    /// Written before the transport closes (an HTTP/1.1 answer of the watchdog's).
    last_words: Option<&'static [u8]>,
}

/// What the watchdog is to do about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing before this instant.
    Until(Instant),
    /// No request came within the request timeout: close.
    Idle,
    /// Part of a request came, not all of it, within the request timeout: 408 and close.
    Incomplete,
    /// An answer has not been sent within the request timeout and [`WRITE_TIMEOUT`]: drop.
    Stuck,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(State {
                answering: BTreeMap::new(),
                next: 0,
                idle_since: Instant::now(),
                read_while_idle: false,
                last_words: None,
            }),
            bodies: Arc::new(Semaphore::new(MAX_BODIES)),
            changed: Notify::new(),
        })
    }

    /// Returns once an answer has begun or the last one ended since the last call (at once if
    /// that happened before this call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// One of the connection's [`MAX_BODIES`] answers with file data, once one is free.
    pub async fn body_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.bodies.clone().acquire_owned().await.ok()
    }

    /// Marks a request as being answered until the returned mark is dropped (with the answer's
    /// body). Also returns since when the request was awaited: when the connection became idle
    /// for the first answer, now for one that overlaps others (HTTP/2 streams, whose request
    /// bodies each get their own deadline).
    pub fn begin(self: &Arc<Self>) -> (Answering, Instant) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let awaited_since = if state.answering.is_empty() {
            state.idle_since
        } else {
            now
        };
        let id = state.next;
        state.next += 1;
        state.answering.insert(id, now);
        drop(state);
        self.changed.notify_one();
        (
            Answering {
                activity: self.clone(),
                id,
            },
            awaited_since,
        )
    }

    fn note_read(&self) {
        let mut state = self.state.lock().unwrap();
        if state.answering.is_empty() {
            state.read_while_idle = true;
        }
    }

    /// What to do at `now`.
    pub fn verdict(&self, now: Instant, request_timeout: Duration) -> Verdict {
        let state = self.state.lock().unwrap();
        match state.answering.values().min() {
            Some(oldest) => {
                let deadline = *oldest + request_timeout + WRITE_TIMEOUT;
                if now >= deadline {
                    Verdict::Stuck
                } else {
                    Verdict::Until(deadline)
                }
            }
            None => {
                let deadline = state.idle_since + request_timeout;
                if now < deadline {
                    Verdict::Until(deadline)
                } else if state.read_while_idle {
                    Verdict::Incomplete
                } else {
                    Verdict::Idle
                }
            }
        }
    }

    /// Has the transport write `answer` before it closes.
    pub fn say_last(&self, answer: &'static [u8]) {
        self.state.lock().unwrap().last_words = Some(answer);
    }

    fn take_last_words(&self) -> Option<&'static [u8]> {
        self.state.lock().unwrap().last_words.take()
    }
}

/// A request being answered; the connection is idle again once every one is dropped.
#[derive(Debug)]
pub struct Answering {
    activity: Arc<Activity>,
    id: u64,
}

impl Drop for Answering {
    fn drop(&mut self) {
        let mut state = self.activity.state.lock().unwrap();
        state.answering.remove(&self.id);
        if state.answering.is_empty() {
            state.idle_since = Instant::now();
            state.read_while_idle = false;
            drop(state);
            self.activity.changed.notify_one();
        }
    }
}

/// The body of every answer: its bytes (none for HEAD and errors), handed out a [`CHUNK`] at a
/// time, or the pieces of a part being written as they come ([`Answer::growing`]); and the
/// request's [`Answering`] mark, dropped with it once hyper has taken the last piece (and has
/// sent all but what fits its buffers).
pub struct Answer {
    data: Bytes,
    /// A part being written: its next piece, and the deadline for all of them.
    growing: Option<Streamed>,
    _answering: Answering,
    /// The permit of an answer with file data.
    _permit: Option<OwnedSemaphorePermit>,
    /// The request's body, if it is to be dropped only with the answer.
    _request: Option<Incoming>,
}

struct Streamed {
    part: Arc<Growing>,
    next: usize,
    deadline: Instant,
    waiting: Option<Pin<Box<dyn Future<Output = Piece> + Send>>>,
    /// Held while it is streamed: one of the server's held LL-HLS requests.
    _held: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("data", &self.data.len())
            .field("growing", &self.growing.is_some())
            .finish()
    }
}

/// A part being written was not completed before the answer's deadline (or was abandoned):
/// the body ends with this error, without its last chunk.
#[derive(Debug, thiserror::Error)]
#[error("the part being served was not completed")]
pub struct Incomplete;

impl Answer {
    pub fn new(
        data: Bytes,
        answering: Answering,
        permit: Option<OwnedSemaphorePermit>,
        request: Option<Incoming>,
    ) -> Answer {
        Answer {
            data,
            growing: None,
            _answering: answering,
            _permit: permit,
            _request: request,
        }
    }

    /// The bytes of a part being written, each piece as it comes, until it is complete (or
    /// `deadline`: then the body fails).
    pub fn growing(
        part: Arc<Growing>,
        deadline: Instant,
        held: OwnedSemaphorePermit,
        answering: Answering,
        permit: Option<OwnedSemaphorePermit>,
        request: Option<Incoming>,
    ) -> Answer {
        Answer {
            growing: Some(Streamed {
                part,
                next: 0,
                deadline,
                waiting: None,
                _held: held,
            }),
            ..Answer::new(Bytes::new(), answering, permit, request)
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Incomplete;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if !this.data.is_empty() {
            let n = this.data.len().min(CHUNK);
            let piece = this.data.split_to(n);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let Some(s) = this.growing.as_mut() else {
            return Poll::Ready(None);
        };
        let waiting = s.waiting.get_or_insert_with(|| {
            let (part, index, deadline) = (s.part.clone(), s.next, s.deadline);
            Box::pin(async move { part.piece(index, deadline).await })
        });
        let piece = std::task::ready!(waiting.as_mut().poll(cx));
        s.waiting = None;
        match piece {
            Piece::Data(data) => {
                s.next += 1;
                // A large piece goes out a CHUNK at a time too.
                this.data = data;
                let n = this.data.len().min(CHUNK);
                Poll::Ready(Some(Ok(Frame::data(this.data.split_to(n)))))
            }
            Piece::End => {
                this.growing = None;
                Poll::Ready(None)
            }
            Piece::Failed => {
                this.growing = None;
                Poll::Ready(Some(Err(Incomplete)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.growing.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.growing {
            // Unknown: chunked transfer coding over HTTP/1.1.
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(self.data.len() as u64),
        }
    }
}

/// A connection's byte stream (TCP, or TLS over it) as hyper sees it: notes each read in the
/// [`Activity`]; when dropped, writes the last words if any, closes its sending side and reads
/// for at most [`LINGER`] (on a task of the server's group) so that the client reads the last
/// answer before the close.
pub struct Transport<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    inner: Option<S>,
    activity: Arc<Activity>,
    tasks: Arc<TaskGroup>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport<S> {
    pub fn new(inner: S, activity: Arc<Activity>, tasks: Arc<TaskGroup>) -> Self {
        Transport {
            inner: Some(inner),
            activity,
            tasks,
        }
    }

    fn inner(&mut self) -> io::Result<&mut S> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Transport<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let inner = self.inner()?;
        let polled = Pin::new(inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.note_read();
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Transport<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner()?).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Transport<S> {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        let last_words = self.activity.take_last_words();
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn(linger(stream, last_words));
        }
    }
}

/// Writes `last_words`, closes the sending side, and reads (dropping it) what the client still
/// sends until it closes too or [`LINGER`] has passed.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    last_words: Option<&'static [u8]>,
) {
    let sent = tokio::time::timeout(LINGER, async {
        if let Some(words) = last_words {
            stream.write_all(words).await?;
        }
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_what_the_connection_does() {
        let timeout = Duration::from_secs(10);
        let activity = Activity::new();
        let t0 = activity.state.lock().unwrap().idle_since;
        assert_eq!(activity.verdict(t0, timeout), Verdict::Until(t0 + timeout));
        assert_eq!(activity.verdict(t0 + timeout, timeout), Verdict::Idle);
        activity.note_read();
        assert_eq!(activity.verdict(t0 + timeout, timeout), Verdict::Incomplete);

        let (first, awaited) = activity.begin();
        assert_eq!(
            awaited, t0,
            "the first answer's request was awaited since idle"
        );
        let begun = activity.state.lock().unwrap().answering[&0];
        let (second, awaited) = activity.begin();
        assert!(awaited >= begun, "an overlapping request: since now");
        let stuck = begun + timeout + WRITE_TIMEOUT;
        assert_eq!(activity.verdict(begun, timeout), Verdict::Until(stuck));
        assert_eq!(activity.verdict(stuck, timeout), Verdict::Stuck);
        // Bytes read while answering are not part of a next request's wait.
        activity.note_read();
        drop(first);
        assert!(matches!(
            activity.verdict(stuck, timeout),
            Verdict::Stuck | Verdict::Until(_)
        ));
        drop(second);
        let idle = activity.state.lock().unwrap().idle_since;
        assert!(idle >= begun);
        assert_eq!(
            activity.verdict(idle, timeout),
            Verdict::Until(idle + timeout)
        );
        assert_eq!(activity.verdict(idle + timeout, timeout), Verdict::Idle);
    }

    #[test]
    fn a_connection_holds_at_most_max_bodies_answers_with_data() {
        let runtime = crate::runtime::handle();
        let activity = Activity::new();
        let held: Vec<_> = (0..MAX_BODIES)
            .map(|_| runtime.block_on(activity.body_permit()).unwrap())
            .collect();
        let next = {
            let activity = activity.clone();
            runtime.spawn(async move { activity.body_permit().await })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!next.is_finished(), "a fifth answer with data waits");
        let (mark, _) = activity.begin();
        let answer = Answer::new(
            Bytes::from_static(b"x"),
            mark,
            held.into_iter().next(),
            None,
        );
        drop(answer);
        assert!(runtime.block_on(next).unwrap().is_some());
    }

    #[test]
    fn an_answer_is_handed_out_in_pieces_and_releases_its_mark_when_dropped() {
        let activity = Activity::new();
        let (mark, _) = activity.begin();
        let mut body = Answer::new(Bytes::from(vec![7u8; CHUNK * 2 + 5]), mark, None, None);
        assert_eq!(body.size_hint().exact(), Some((CHUNK * 2 + 5) as u64));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut sizes = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            sizes.push(frame.into_data().unwrap().len());
        }
        assert_eq!(sizes, [CHUNK, CHUNK, 5]);
        assert!(body.is_end_stream());
        assert!(!activity.state.lock().unwrap().answering.is_empty());
        drop(body);
        assert!(activity.state.lock().unwrap().answering.is_empty());
    }
}
