//! RTSP tunnelled through HTTP, the server's side (the sans-I/O parts are
//! [`crate::rtsp::tunnel`]), on the RTSP port as gst-rtsp-server does it.
//!
//! Specifications: Apple's "Tunnelling RTSP and RTP through HTTP" (the GET/POST pair sharing an
//! `x-sessioncookie`, the POST body base64-encoded); RFC 9110 §9.3.1, §9.3.3 (GET, POST), RFC 4648
//! §4 (base64); RFC 2326 §10.12 (interleaved data, carried on the GET side).
//!
//! A connection whose first bytes are `GET ` or `POST ` is one side of a tunnel. The GET is
//! answered `200 OK` and registered under its `x-sessioncookie`; it waits at most
//! [`PAIRING_TIMEOUT`] for a POST naming the same cookie, then the pair is served as one RTSP
//! connection: the POST's base64 body, decoded, is what [`super::serve_stream`] reads, the GET
//! is where it writes (responses and interleaved media). The pair has the GET's connection id,
//! so the sessions created through the POST belong to the GET's connection. When a POST
//! closes, the tunnel stays open and a new POST with the same cookie takes over (as QuickTime
//! does); one POST at a time. The tunnel ends with its GET connection.
//!
//! Bounds: the HTTP head within the server's `request_timeout` and [`tunnel::MAX_HEAD`] bytes;
//! at most [`MAX_PENDING_PER_ADDRESS`] GETs per address waiting for their POST; decoded
//! requests pass the same [`crate::rtsp::codec::Limits`] as plain RTSP; a few decoded chunks in
//! flight.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::conn::ConnWriter;
use super::{Shared, serve_stream};
use crate::rtsp::tunnel::{self, Base64Decoder, Opening, Side, TunnelRequest, short_cookie};

/// How long a GET waits for its POST.
pub const PAIRING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP answer may take to leave. (How long a connection may take to show whether
/// it is RTSP or HTTP, and to send an HTTP head, is the server's `request_timeout`.)
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// GETs from one address that may wait for their POST at the same time.
pub const MAX_PENDING_PER_ADDRESS: usize = 4;
/// Decoded chunks queued from a POST to its tunnel before the POST's reads wait.
const CHUNKS_IN_FLIGHT: usize = 4;

/// What flows from a POST to its tunnel: decoded bytes, or why the POST broke the stream (the
/// tunnel's reader fails with it).
type Chunk = io::Result<Bytes>;

/// The open tunnels, by cookie.
#[derive(Default)]
pub(super) struct Tunnels(Mutex<HashMap<String, Tunnel>>);

struct Tunnel {
    /// The GET's address.
    peer: SocketAddr,
    /// Where POSTs send what they decode.
    input: mpsc::Sender<Chunk>,
    /// Taken by the first POST, to wake the GET.
    pairing: Option<oneshot::Sender<()>>,
    /// A POST is feeding the tunnel now.
    posting: bool,
}

/// Why a tunnel request is refused: the HTTP status and the reason for the log.
struct Refusal(u16, &'static str, String);

/// Removes a GET's tunnel when its connection ends.
struct Registration<'a> {
    tunnels: &'a Tunnels,
    cookie: String,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.tunnels.0.lock().unwrap().remove(&self.cookie);
    }
}

/// Marks a tunnel free for the next POST when a POST ends.
struct Posting<'a> {
    tunnels: &'a Tunnels,
    cookie: &'a str,
    input: mpsc::Sender<Chunk>,
}

impl Drop for Posting<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.tunnels.0.lock().unwrap().get_mut(self.cookie)
            && t.input.same_channel(&self.input)
        {
            t.posting = false;
        }
    }
}

impl Tunnels {
    /// Registers a GET (its tunnel waits for a POST). Returns the POSTs' output and the pairing
    /// signal.
    fn open(
        &self,
        cookie: &str,
        peer: SocketAddr,
    ) -> Result<
        (
            Registration<'_>,
            mpsc::Receiver<Chunk>,
            oneshot::Receiver<()>,
        ),
        Refusal,
    > {
        let mut tunnels = self.0.lock().unwrap();
        if tunnels.contains_key(cookie) {
            return Err(Refusal(
                409,
                "Conflict",
                "its cookie names an open tunnel".into(),
            ));
        }
        let pending = tunnels
            .values()
            .filter(|t| t.pairing.is_some() && t.peer.ip() == peer.ip())
            .count();
        if pending >= MAX_PENDING_PER_ADDRESS {
            return Err(Refusal(
                503,
                "Service Unavailable",
                format!(
                    "{pending} GETs from {} already wait for their POST",
                    peer.ip()
                ),
            ));
        }
        let (input, output) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (pairing, paired) = oneshot::channel();
        tunnels.insert(
            cookie.to_owned(),
            Tunnel {
                peer,
                input,
                pairing: Some(pairing),
                posting: false,
            },
        );
        let registration = Registration {
            tunnels: self,
            cookie: cookie.to_owned(),
        };
        Ok((registration, output, paired))
    }

    /// Joins a POST to the GET with its cookie. Returns the GET's address and where to send.
    fn join<'a>(&'a self, cookie: &'a str) -> Result<(SocketAddr, Posting<'a>), Refusal> {
        let mut tunnels = self.0.lock().unwrap();
        let Some(t) = tunnels.get_mut(cookie) else {
            return Err(Refusal(404, "Not Found", "no GET has its cookie".into()));
        };
        if t.posting {
            return Err(Refusal(
                409,
                "Conflict",
                "another POST feeds its tunnel".into(),
            ));
        }
        t.posting = true;
        if let Some(pairing) = t.pairing.take() {
            let _ = pairing.send(());
        }
        let posting = Posting {
            tunnels: self,
            cookie,
            input: t.input.clone(),
        };
        Ok((t.peer, posting))
    }
}

/// Serves a connection (after TLS, if any): RTSP, or one side of an HTTP tunnel.
pub(super) async fn serve<R, W>(
    shared: Arc<Shared>,
    mut reader: R,
    writer: W,
    peer: SocketAddr,
    local: SocketAddr,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: ConnWriter,
{
    let name = &*shared.name;
    let mut start = Vec::new();
    let within = shared.config.request_timeout;
    let head = match tokio::time::timeout(within, read_head(&mut reader, &mut start)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            sdebug!(
                name,
                "{peer}: connection dropped before its first request: {e}"
            );
            return;
        }
        Err(_) => {
            shared
                .counters
                .connections_idle_closed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            sdebug!(
                name,
                "{peer}: connection dropped: its first bytes show no RTSP request or HTTP head \
                 within request-timeout ({within:?})"
            );
            return;
        }
    };
    let server = shared.config.server_name.as_str();
    match head {
        None => {
            let reader = io::Cursor::new(start).chain(reader);
            serve_stream(shared, reader, writer, peer, local).await;
        }
        Some(Err(e)) => {
            sdebug!(name, "{peer}: HTTP request refused (400): {e}");
            refuse(writer, &tunnel::error_response(400, "Bad Request", server)).await;
        }
        Some(Ok(_)) if !shared.access.address_allowed(peer.ip()) => {
            sdebug!(
                name,
                "{peer}: tunnel request refused (403): address {} is not in allowed-addresses",
                peer.ip()
            );
            refuse(writer, &tunnel::error_response(403, "Forbidden", server)).await;
        }
        Some(Ok((req, len))) => match req.side {
            Side::Get => serve_get(shared, req, reader, writer, peer, local).await,
            Side::Post => {
                let body = start.split_off(len);
                serve_post(&shared, req, body, reader, writer, peer).await;
            }
        },
    }
}

/// The head of the connection's first request: `None` for RTSP (what was read stays in
/// `start`), else the tunnel request or why it is none (and what was read).
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    start: &mut Vec<u8>,
) -> io::Result<Option<Result<(TunnelRequest, usize), tunnel::TunnelError>>> {
    let mut buf = [0u8; 2048];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        start.extend_from_slice(&buf[..n]);
        match tunnel::sniff(start) {
            Opening::NeedMore => continue,
            Opening::Rtsp => return Ok(None),
            Opening::Http => match tunnel::parse_request(start) {
                Ok(None) => continue,
                Ok(Some(head)) => return Ok(Some(Ok(head))),
                Err(e) => return Ok(Some(Err(e))),
            },
        }
    }
}

impl Refusal {
    /// Logs why a tunnel's `side` (GET or POST) is refused and answers it.
    async fn answer<W: AsyncWrite + Unpin>(
        self,
        shared: &Shared,
        writer: W,
        peer: SocketAddr,
        side: &str,
        cookie: &str,
    ) {
        let Refusal(status, reason, why) = self;
        sdebug!(
            &*shared.name,
            "{peer}: tunnel {side} (cookie {cookie}…) refused ({status}): {why}"
        );
        let server = shared.config.server_name.as_str();
        refuse(writer, &tunnel::error_response(status, reason, server)).await;
    }
}

/// Sends an HTTP refusal and closes.
async fn refuse<W: AsyncWrite + Unpin>(mut writer: W, answer: &str) {
    let _ = tokio::time::timeout(HEAD_TIMEOUT, async {
        writer.write_all(answer.as_bytes()).await?;
        writer.shutdown().await
    })
    .await;
}

async fn serve_get<R, W>(
    shared: Arc<Shared>,
    req: TunnelRequest,
    mut reader: R,
    mut writer: W,
    peer: SocketAddr,
    local: SocketAddr,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: ConnWriter,
{
    let name = &*shared.name;
    let cookie = short_cookie(&req.cookie);
    let server = shared.config.server_name.as_str();
    let (_registration, output, paired) = match shared.tunnels.open(&req.cookie, peer) {
        Ok(opened) => opened,
        Err(refusal) => {
            refusal.answer(&shared, writer, peer, "GET", cookie).await;
            return;
        }
    };
    let answered = tokio::time::timeout(HEAD_TIMEOUT, async {
        writer
            .write_all(tunnel::get_response(server).as_bytes())
            .await?;
        writer.flush().await
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        sdebug!(
            name,
            "{peer}: tunnel GET (cookie {cookie}…) closed: answering it failed"
        );
        return;
    }
    sdebug!(
        name,
        "{peer}: tunnel opened by GET (cookie {cookie}…), waiting up to {PAIRING_TIMEOUT:?} for \
         its POST"
    );
    let mut ignored = [0u8; 256];
    let waited = tokio::time::timeout(PAIRING_TIMEOUT, async {
        tokio::select! {
            paired = paired => paired.is_ok(),
            // Nothing more comes on a GET (what does is ignored): this only sees its end.
            _ = async {
                while matches!(reader.read(&mut ignored).await, Ok(n) if n > 0) {}
            } => false,
        }
    })
    .await;
    let unpaired = match waited {
        Ok(true) => None,
        Ok(false) => Some("the client closed it before its POST".to_owned()),
        Err(_) => Some(format!("no POST within {PAIRING_TIMEOUT:?}")),
    };
    if let Some(why) = unpaired {
        sdebug!(name, "{peer}: tunnel (cookie {cookie}…) closed: {why}");
        return;
    }
    let input = TunnelReader {
        posts: output,
        get: reader,
        chunk: Bytes::new(),
    };
    serve_stream(shared.clone(), input, writer, peer, local).await;
    sdebug!(
        name,
        "{peer}: tunnel (cookie {cookie}…) closed with its GET connection"
    );
}

async fn serve_post<R, W>(
    shared: &Shared,
    req: TunnelRequest,
    body: Vec<u8>,
    mut reader: R,
    writer: W,
    peer: SocketAddr,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let name = &*shared.name;
    let cookie = short_cookie(&req.cookie);
    let (get_peer, posting) = match shared.tunnels.join(&req.cookie) {
        Ok(joined) => joined,
        Err(refusal) => {
            refusal.answer(shared, writer, peer, "POST", cookie).await;
            return;
        }
    };
    sdebug!(
        name,
        "{peer}: tunnel POST (cookie {cookie}…) paired with the GET from {get_peer}"
    );
    let mut decoder = Base64Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut input = body.as_slice();
    let why = loop {
        if let Err(why) = forward(&mut decoder, input, &posting.input).await {
            break why;
        }
        let n = tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) => break "the client closed it".to_owned(),
                Ok(n) => n,
                Err(e) => break format!("read error: {e}"),
            },
            _ = posting.input.closed() => break GET_CLOSED.to_owned(),
        };
        input = &buf[..n];
    };
    sdebug!(name, "{peer}: tunnel POST (cookie {cookie}…) closed: {why}");
}

const GET_CLOSED: &str = "its GET connection closed";

/// Decodes what a POST sent and passes it to its tunnel. Err: why the POST ends.
async fn forward(
    decoder: &mut Base64Decoder,
    input: &[u8],
    tunnel: &mpsc::Sender<Chunk>,
) -> Result<(), String> {
    let mut decoded = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let chunk = match decoder.decode(input, &mut decoded) {
        Ok(()) if decoded.is_empty() => return Ok(()),
        Ok(()) => Ok(decoded.into()),
        Err(e) => {
            let why = format!("{e}; the tunnel is closed");
            let _ = tunnel
                .send(Err(io::Error::new(io::ErrorKind::InvalidData, e)))
                .await;
            return Err(why);
        }
    };
    tunnel.send(chunk).await.map_err(|_| GET_CLOSED.to_owned())
}

/// What a tunnel's RTSP side reads: the decoded POSTs; the GET connection only for its end.
struct TunnelReader<R> {
    posts: mpsc::Receiver<Chunk>,
    get: R,
    chunk: Bytes,
}

impl<R: AsyncRead + Unpin> AsyncRead for TunnelReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.chunk.is_empty()
                && let Poll::Ready(chunk) = this.posts.poll_recv(cx)
            {
                match chunk {
                    Some(chunk) => this.chunk = chunk?,
                    // No tunnel any more: the end.
                    None => return Poll::Ready(Ok(())),
                }
            }
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(buf.remaining());
                buf.put_slice(&this.chunk.split_to(n));
                return Poll::Ready(Ok(()));
            }
            // Nothing from a POST now: watch the GET connection for its end (what a client
            // sends on it is ignored).
            let mut scratch = [0u8; 256];
            let mut ignored = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.get).poll_read(cx, &mut ignored) {
                Poll::Ready(Ok(())) if ignored.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: [u8; 4]) -> SocketAddr {
        (ip, 1000).into()
    }

    #[test]
    fn a_cookie_pairs_one_post_at_a_time() {
        let tunnels = Tunnels::default();
        let (registration, _output, mut paired) =
            tunnels.open("c", peer([127, 0, 0, 1])).ok().unwrap();
        assert!(matches!(
            tunnels.open("c", peer([127, 0, 0, 2])),
            Err(Refusal(409, ..))
        ));
        assert!(matches!(tunnels.join("C"), Err(Refusal(404, ..))));
        assert!(matches!(tunnels.join("c "), Err(Refusal(404, ..))));
        let (get, posting) = tunnels.join("c").ok().unwrap();
        assert_eq!(get, peer([127, 0, 0, 1]));
        assert_eq!(paired.try_recv(), Ok(()));
        assert!(matches!(tunnels.join("c"), Err(Refusal(409, ..))));
        // The POST closes: a new one takes over.
        drop(posting);
        let (_, posting) = tunnels.join("c").ok().unwrap();
        // The GET closes: its cookie is gone.
        drop(registration);
        drop(posting);
        assert!(matches!(tunnels.join("c"), Err(Refusal(404, ..))));
    }

    #[test]
    fn pending_gets_per_address_are_capped() {
        let tunnels = Tunnels::default();
        let opened: Vec<_> = (0..MAX_PENDING_PER_ADDRESS)
            .map(|i| {
                tunnels
                    .open(&i.to_string(), peer([127, 0, 0, 1]))
                    .ok()
                    .unwrap()
            })
            .collect();
        assert!(matches!(
            tunnels.open("x", peer([127, 0, 0, 1])),
            Err(Refusal(503, ..))
        ));
        assert!(tunnels.open("y", peer([127, 0, 0, 2])).is_ok());
        // A paired GET waits no more.
        let _posting = tunnels.join("0").ok().unwrap();
        assert!(tunnels.open("x", peer([127, 0, 0, 1])).is_ok());
        drop(opened);
    }
}
