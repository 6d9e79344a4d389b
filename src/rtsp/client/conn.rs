//! One RTSP connection seen from the client: requests matched to responses by CSeq, interleaved
//! data and server requests (RFC 2326 10: ANNOUNCE, GET_PARAMETER, OPTIONS, REDIRECT) handed to
//! callbacks. A reader task owns the read half; writers share the write half.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rtsp_types::{Method, Request, Response, StatusCode, Version, headers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;

use super::ClientError;
use crate::rtsp::codec::{self, Decoder, Frame, Limits};

/// What the server sends besides responses.
pub enum Incoming {
    Interleaved {
        channel: u8,
        data: Bytes,
    },
    /// A request from the server; it has already been answered 200 OK.
    Request(Request<Vec<u8>>),
    /// Everything decoded from one read has been handed over: a point to pass on what was
    /// gathered from it.
    ReadDone,
    /// The connection ended (EOF, error, or garbage past recovery).
    Closed(String),
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Response<Vec<u8>>>>>>;
type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

async fn write_all(writer: &Writer, bytes: &[u8], timeout: Duration) -> Result<(), ClientError> {
    let mut w = writer.lock().await;
    tokio::time::timeout(timeout, w.write_all(bytes))
        .await
        .map_err(|_| ClientError::Timeout("writing to the server".into()))?
        .map_err(|e| ClientError::Io(format!("writing to the server: {e}")))
}

/// A connected RTSP control connection.
pub struct Connection {
    writer: Writer,
    pending: Pending,
    cseq: AtomicU32,
    timeout: Duration,
    user_agent: String,
    reader: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Connects within `timeout` and starts the reader task.
    pub async fn connect(
        host: &str,
        port: u16,
        timeout: Duration,
        limits: Limits,
        user_agent: String,
        on_incoming: impl Fn(Incoming) + Send + Sync + 'static,
    ) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| ClientError::Timeout(format!("connecting to {host}:{port}")))?
            .map_err(|e| ClientError::Io(format!("connecting to {host}:{port}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let reader = {
            let pending = pending.clone();
            let writer = writer.clone();
            tokio::spawn(async move {
                let reason =
                    read_loop(read, limits, &pending, &writer, timeout, &on_incoming).await;
                pending.lock().unwrap().clear();
                on_incoming(Incoming::Closed(reason));
            })
        };
        Ok(Connection {
            writer,
            pending,
            cseq: AtomicU32::new(1),
            timeout,
            user_agent,
            reader,
        })
    }

    async fn write(&self, bytes: &[u8]) -> Result<(), ClientError> {
        write_all(&self.writer, bytes, self.timeout).await
    }

    /// Sends interleaved data (RTCP to the server).
    pub async fn send_interleaved(&self, channel: u8, data: &[u8]) -> Result<(), ClientError> {
        let len = u16::try_from(data.len())
            .map_err(|_| ClientError::Protocol("interleaved packet too large".into()))?;
        let mut buf = Vec::with_capacity(data.len() + 4);
        buf.extend_from_slice(&codec::interleaved_header(channel, len));
        buf.extend_from_slice(data);
        self.write(&buf).await
    }

    /// Sends a request (CSeq and User-Agent are added) and waits for its response.
    pub async fn request(
        &self,
        mut req: Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, ClientError> {
        let cseq = self.cseq.fetch_add(1, Ordering::Relaxed);
        req.insert_header(headers::CSEQ, cseq.to_string());
        req.insert_header(headers::USER_AGENT, self.user_agent.as_str());
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(cseq, tx);
        let mut bytes = Vec::with_capacity(256);
        codec::encode_request(&req, &mut bytes);
        if let Err(e) = self.write(&bytes).await {
            self.pending.lock().unwrap().remove(&cseq);
            return Err(e);
        }
        let method = format!("{:?}", req.method()).to_uppercase();
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(ClientError::Io(format!(
                "connection closed while waiting for the {method} response"
            ))),
            Err(_) => {
                self.pending.lock().unwrap().remove(&cseq);
                Err(ClientError::Timeout(format!("no response to {method}")))
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(
    mut read: tokio::net::tcp::OwnedReadHalf,
    limits: Limits,
    pending: &Pending,
    writer: &Writer,
    timeout: Duration,
    on_incoming: &(impl Fn(Incoming) + Send + Sync),
) -> String {
    let mut decoder = Decoder::new(limits);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => return "the server closed the connection".into(),
            Ok(n) => n,
            Err(e) => return format!("reading from the server: {e}"),
        };
        decoder.extend(&buf[..n]);
        loop {
            match decoder.decode() {
                Ok(None) => break,
                Ok(Some(Frame::Interleaved { channel, data })) => {
                    on_incoming(Incoming::Interleaved { channel, data });
                }
                Ok(Some(Frame::Response(resp))) => {
                    let cseq = resp
                        .header(&headers::CSEQ)
                        .and_then(|v| v.as_str().trim().parse::<u32>().ok());
                    // A response with an unknown or missing CSeq answers nothing we asked.
                    if let Some(tx) = cseq.and_then(|c| pending.lock().unwrap().remove(&c)) {
                        let _ = tx.send(resp);
                    }
                }
                Ok(Some(Frame::Request(req))) => {
                    let status = match req.method() {
                        Method::Options
                        | Method::GetParameter
                        | Method::SetParameter
                        | Method::Announce
                        | Method::Redirect => StatusCode::Ok,
                        _ => StatusCode::NotImplemented,
                    };
                    let mut b = Response::builder(Version::V1_0, status);
                    if let Some(c) = req.header(&headers::CSEQ) {
                        b = b.header(headers::CSEQ, c.as_str());
                    }
                    let mut bytes = Vec::new();
                    codec::encode_response(&b.build(Vec::new()), &mut bytes);
                    if let Err(e) = write_all(writer, &bytes, timeout).await {
                        return e.to_string();
                    }
                    if status == StatusCode::Ok {
                        on_incoming(Incoming::Request(req));
                    }
                }
                Err(e) if e.is_fatal() => return format!("unreadable data from the server: {e}"),
                // A garbled message is skipped; the request it answered times out.
                Err(_) => {}
            }
        }
        on_incoming(Incoming::ReadDone);
    }
}
