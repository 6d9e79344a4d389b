//! The publisher's protocol state machine, without I/O: feed it the bytes the server sends, take
//! the bytes it wants sent. It runs the handshake, `connect`, `releaseStream`, `FCPublish`,
//! `createStream` and `publish`, answers pings, acknowledges what it received per the server's
//! window, honours the server's chunk size, and turns FLV tags into audio, video and data
//! messages. Server refusals (`_error`, `onStatus` with level `error`) become [`Error::Rejected`].
//!
//! Specifications: RTMP specification 1.0 §5.4 (protocol control: Set Chunk Size, Acknowledgement,
//! Window Acknowledgement Size, Set Peer Bandwidth), §6.2 and §7.1.7 (user control events, ping),
//! §7.1 (command, data, audio and video messages), §7.2.1.1 (connect), §7.2.1.3 (createStream),
//! §7.2.2.3 (deleteStream), §7.2.2.6 (publish); releaseStream, FCPublish and FCUnpublish follow
//! Flash Media Server practice (no specification).

use std::collections::HashMap;

use super::amf0::{self, DecodeError, Value};
use super::auth::{AuthFailure, ClientAuth, Credentials};
use super::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, Message, msg_type};
use super::flv::{Tag, TagKind};
use super::handshake::{self, ClientHandshake, HandshakeError};

/// Chunk stream ids, as most publishers use them.
const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_AUDIO: u32 = 4;
const CSID_DATA: u32 = 5;
const CSID_VIDEO: u32 = 6;
const CSID_STREAM_COMMAND: u32 = 8;

/// User Control event types.
const UC_STREAM_BEGIN: u16 = 0;
const UC_PING_REQUEST: u16 = 6;
const UC_PING_RESPONSE: u16 = 7;

/// Why a publication failed. The variants keep what the element needs to choose an error domain
/// and what a user needs to act: the I/O error kind, the command and the server's status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Socket errors (connection refused, unreachable, ...).
    #[error("network error: {context}: {message}")]
    Io {
        /// What we were doing (`connecting to host:port`, `waiting for ...`).
        context: String,
        kind: std::io::ErrorKind,
        message: String,
    },
    /// A step did not complete within the timeout.
    #[error("timed out {0}")]
    Timeout(String),
    /// The server accepted no data for `after` while `unsent` bytes waited.
    #[error("timed out sending: the server accepted nothing for {} s ({unsent} bytes unsent)", .after.as_secs_f32())]
    Stalled {
        after: std::time::Duration,
        unsent: usize,
    },
    /// The server closed the connection (cleanly, or with a reset: `kind`).
    #[error("the server closed the connection {context}{}", kind.map(|k| format!(" ({k})")).unwrap_or_default())]
    Closed {
        context: String,
        kind: Option<std::io::ErrorKind>,
    },
    /// TLS set-up or handshake.
    #[error("TLS: {0}")]
    Tls(String),
    /// The handshake's S0 was no RTMP.
    #[error("protocol error: handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server's chunk stream broke the rules.
    #[error("protocol error: chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    /// A command from the server that is no AMF0.
    #[error("protocol error: command from the server: {0}")]
    Amf(#[from] DecodeError),
    /// Any other protocol violation (short control messages, missing stream ids).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Authentication (Adobe or Limelight) could not go on: no credentials for a server that
    /// asks for them, or the server refused them.
    #[error("authentication: {0}")]
    Auth(#[from] AuthFailure),
    /// connect was refused with an authentication challenge: connect again (a new connection)
    /// with this state. Holds the response: its Display and Debug show no secret.
    #[error("the server asks for authentication ({}): connecting again", .0.authmod().map_or("?", |m| m.as_str()))]
    AuthRetry(Box<ClientAuth>),
    /// The server refused: `_error` or an error-level `onStatus`.
    #[error("the server refused {command}: {code}{}", if description.is_empty() { String::new() } else { format!(" ({description})") })]
    Rejected {
        command: String,
        /// `NetStream.Publish.BadName`, `NetConnection.Connect.Rejected`, ...
        code: String,
        description: String,
    },
}

impl Error {
    /// A refusal for want of authorization: a connect rejected, or a code of the
    /// `*.Unauthorized` / `*.Auth*` family (Wowza, Red5, nginx-rtmp's `on_publish` hooks).
    pub fn is_unauthorized(&self) -> bool {
        if matches!(self, Error::Auth(_)) {
            return true;
        }
        let Error::Rejected { code, .. } = self else {
            return false;
        };
        let last = code.rsplit('.').next().unwrap_or("");
        code == "NetConnection.Connect.Rejected"
            || last == "Unauthorized"
            || last.starts_with("Auth")
            || last == "Rejected"
    }

    /// Network trouble (the connection failed, stalled, timed out or was closed), as opposed to
    /// a server that refused or broke the protocol.
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Timeout(_) | Error::Stalled { .. } | Error::Closed { .. }
        )
    }
}

/// AMF values for a log line: every string (and property name) has the stream name redacted
/// before it is formatted, so that escaping cannot hide the key from the redaction.
struct RedactedValues<'a>(&'a [Value], &'a str);

impl std::fmt::Display for RedactedValues<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn clean(v: &Value, stream: &str) -> Value {
            let props = |p: &[(String, Value)]| {
                p.iter()
                    .map(|(k, v)| (redact(k, stream), clean(v, stream)))
                    .collect()
            };
            match v {
                Value::String(s) => Value::String(redact(s, stream)),
                Value::Object(p) => Value::Object(props(p)),
                Value::EcmaArray(p) => Value::EcmaArray(props(p)),
                Value::StrictArray(items) => {
                    Value::StrictArray(items.iter().map(|v| clean(v, stream)).collect())
                }
                other => other.clone(),
            }
        }
        let cleaned: Vec<Value> = self.0.iter().map(|v| clean(v, self.1)).collect();
        write!(f, "{cleaned:?}")
    }
}

/// `text` with every occurrence of the stream name (and of its parts before and after a `?`)
/// replaced: servers may echo the stream key in descriptions.
pub fn redact(text: &str, stream: &str) -> String {
    let mut out = text.to_owned();
    let mut secrets: Vec<&str> = vec![stream];
    if let Some((name, query)) = stream.split_once('?') {
        secrets.push(name);
        secrets.extend(
            query
                .split('&')
                .filter_map(|kv| kv.split_once('=').map(|(_, v)| v)),
        );
    }
    for secret in secrets {
        if !secret.is_empty() && out.contains(secret) {
            out = out.replace(secret, "<redacted>");
        }
    }
    out
}

/// Which commands end a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopCommands {
    pub fc_unpublish: bool,
    pub close_stream: bool,
    pub delete_stream: bool,
}

impl Default for StopCommands {
    /// rtmp2sink's default: FCUnpublish and deleteStream.
    fn default() -> Self {
        Self {
            fc_unpublish: true,
            close_stream: false,
            delete_stream: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The element's name, for logs (may be empty).
    pub name: String,
    pub app: String,
    pub tc_url: String,
    pub stream: String,
    pub flash_version: String,
    /// Our outgoing chunk size (Set Chunk Size is sent when it is not 128).
    pub chunk_size: u32,
    /// The largest message accepted from the server.
    pub max_message_size: u32,
    /// For servers that ask for Adobe or Limelight authentication.
    pub credentials: Option<Credentials>,
    /// Where the authentication exchange stands (its query goes on app and tcUrl).
    pub auth: ClientAuth,
    /// Enhanced RTMP: the codecs we may send (`fourCcList` in connect); empty: not sent.
    pub fourcc_list: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Handshake,
    Connect,
    CreateStream,
    Publish,
    Publishing,
    Closed,
}

impl Phase {
    /// What the publisher waits for, for timeouts and errors.
    pub fn waiting_for(self) -> &'static str {
        match self {
            Phase::Handshake => "waiting for the handshake (S0/S1/S2)",
            Phase::Connect => "waiting for the answer to connect",
            Phase::CreateStream => "waiting for the answer to createStream",
            Phase::Publish => "waiting for the answer to publish",
            Phase::Publishing => "while publishing",
            Phase::Closed => "after closing",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// connect succeeded.
    Connected,
    /// NetStream.Publish.Start: media may flow.
    Publishing,
    /// Any other status from the server (level, code, description).
    Status {
        level: String,
        code: String,
        description: String,
    },
    /// The handshake's S2 did not echo C1 (tolerated).
    HandshakeEchoMismatch,
}

/// Counters for `stats`.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub bytes_in: u64,
    pub acks_sent: u64,
    pub acks_received: u64,
    /// The byte count of the server's latest Acknowledgement.
    pub bytes_acked: u32,
    /// The server's Window Acknowledgement Size (acknowledge after this many bytes).
    pub in_window_ack_size: u32,
    /// The bandwidth the server asked for (Set Peer Bandwidth), echoed as our window size.
    pub out_window_ack_size: u32,
    pub pings: u64,
}

pub struct Publisher {
    config: PublisherConfig,
    phase: Phase,
    handshake: Option<ClientHandshake>,
    enc: ChunkEncoder,
    dec: ChunkDecoder,
    out: Vec<u8>,
    next_txn: f64,
    pending: HashMap<u64, &'static str>,
    stream_id: u32,
    last_ack: u64,
    pub counters: Counters,
}

impl Publisher {
    /// `epoch_ms` and `random` make C1.
    pub fn new(config: PublisherConfig, epoch_ms: u32, random: &[u8; 1528]) -> Self {
        let (hs, c0c1) = ClientHandshake::new(epoch_ms, random);
        let max = config.max_message_size;
        Self {
            config,
            phase: Phase::Handshake,
            handshake: Some(hs),
            enc: ChunkEncoder::new(),
            dec: ChunkDecoder::new(max),
            out: c0c1,
            next_txn: 1.0,
            pending: HashMap::new(),
            stream_id: 0,
            last_ack: 0,
            counters: Counters::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Credentials and the authentication state, before the handshake completes (tests and
    /// callers that build the config elsewhere).
    pub fn set_auth(&mut self, credentials: Option<Credentials>, auth: ClientAuth) {
        self.config.credentials = credentials;
        self.config.auth = auth;
    }

    /// Bytes to send (taken: the caller owns them now).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Appends the pending output to `buf` (avoids an allocation per write).
    pub fn append_output(&mut self, buf: &mut Vec<u8>) {
        if buf.is_empty() {
            std::mem::swap(buf, &mut self.out);
        } else {
            buf.append(&mut self.out);
        }
    }

    pub fn out_chunk_size(&self) -> u32 {
        self.enc.chunk_size()
    }

    pub fn in_chunk_size(&self) -> u32 {
        self.dec.chunk_size()
    }

    /// Feeds bytes from the server.
    pub fn receive(&mut self, data: &[u8]) -> Result<Vec<Event>, Error> {
        self.counters.bytes_in += data.len() as u64;
        let mut events = Vec::new();
        if let Some(hs) = self.handshake.as_mut() {
            let done = hs.feed(data)?;
            let Some(done) = done else {
                return Ok(events);
            };
            self.handshake = None;
            if !done.s2_echo_ok {
                events.push(Event::HandshakeEchoMismatch);
            }
            log_id!(
                debug,
                &self.config.name,
                "handshake done (server time {}); C2 sent",
                done.server_time
            );
            self.out.extend_from_slice(&done.c2);
            self.start_connect();
            self.dec.feed(&done.leftover);
        } else {
            self.dec.feed(data);
        }
        while let Some(msg) = self.dec.next_message()? {
            self.handle_message(msg, &mut events)?;
        }
        self.maybe_ack();
        Ok(events)
    }

    fn maybe_ack(&mut self) {
        let window = u64::from(self.counters.in_window_ack_size);
        // Acknowledge when a window's worth of bytes arrived since the last one; bytes_in
        // counts the handshake too, as servers count everything they send.
        if window > 0 && self.counters.bytes_in - self.last_ack >= window {
            self.last_ack = self.counters.bytes_in;
            let v = (self.counters.bytes_in & 0xffff_ffff) as u32;
            log_id!(
                trace,
                &self.config.name,
                "Acknowledgement sent: {v} bytes received (window {window})"
            );
            self.control(msg_type::ACKNOWLEDGEMENT, &v.to_be_bytes());
            self.counters.acks_sent += 1;
        }
    }

    fn control(&mut self, type_id: u8, payload: &[u8]) {
        self.enc
            .write(CSID_CONTROL, 0, type_id, 0, payload, &mut self.out);
    }

    fn command(&mut self, csid: u32, stream_id: u32, name: &'static str, args: &[Value]) -> f64 {
        let txn = self.next_txn;
        self.next_txn += 1.0;
        self.pending.insert(txn as u64, name);
        log_id!(
            debug,
            &self.config.name,
            "sending {name} (transaction {txn}, chunk stream {csid}, message stream {stream_id})"
        );
        let mut values = vec![Value::from(name), Value::Number(txn)];
        values.extend_from_slice(args);
        if name == "connect" && !self.config.auth.params().is_empty() {
            // app and tcUrl carry the authentication response.
            log_id!(
                trace,
                &self.config.name,
                "command to the server: connect (values not shown: they carry authentication)"
            );
        } else if log::log_enabled!(log::Level::Trace) {
            // publish, releaseStream and FCPublish carry the stream name: redacted.
            log_id!(
                trace,
                &self.config.name,
                "command to the server: {}",
                RedactedValues(&values, &self.config.stream)
            );
        }
        let payload = amf0::encode_all(&values);
        self.enc.write(
            csid,
            0,
            msg_type::COMMAND_AMF0,
            stream_id,
            &payload,
            &mut self.out,
        );
        txn
    }

    fn start_connect(&mut self) {
        if self.config.chunk_size != self.enc.chunk_size() {
            let size = self
                .config
                .chunk_size
                .clamp(1, super::chunk::MAX_CHUNK_SIZE);
            self.control(msg_type::SET_CHUNK_SIZE, &size.to_be_bytes());
            log_id!(
                debug,
                &self.config.name,
                "Set Chunk Size sent: our chunk size {} -> {size}",
                self.enc.chunk_size()
            );
            self.enc.set_chunk_size(size);
        }
        // tcUrl is the location without the stream name: no secret in it.
        log_id!(
            debug,
            &self.config.name,
            "connect: app '{}', tcUrl {}, flashVer '{}'",
            self.config.app,
            self.config.tc_url,
            self.config.flash_version
        );
        let params = self.config.auth.params();
        if let Some(m) = self.config.auth.authmod() {
            log_id!(
                debug,
                &self.config.name,
                "connect carries authmod={} for user '{}' ({})",
                m.as_str(),
                self.config
                    .credentials
                    .as_ref()
                    .map_or("", |c| c.user.as_str()),
                if self.config.auth.responded() {
                    "with our response"
                } else {
                    "asking for the challenge"
                }
            );
        }
        let mut props = vec![
            ("app", format!("{}{params}", self.config.app).into()),
            ("type", "nonprivate".into()),
            ("flashVer", self.config.flash_version.as_str().into()),
            ("tcUrl", format!("{}{params}", self.config.tc_url).into()),
        ];
        if !self.config.fourcc_list.is_empty() {
            log_id!(
                debug,
                &self.config.name,
                "connect announces Enhanced RTMP fourCcList {:?}",
                self.config.fourcc_list
            );
            props.push((
                "fourCcList",
                amf0::Value::StrictArray(
                    self.config
                        .fourcc_list
                        .iter()
                        .map(|f| f.as_str().into())
                        .collect(),
                ),
            ));
        }
        let cmd = amf0::obj(&props);
        self.command(CSID_COMMAND, 0, "connect", &[cmd]);
        self.phase = Phase::Connect;
    }

    fn handle_message(&mut self, msg: Message, events: &mut Vec<Event>) -> Result<(), Error> {
        let p = &msg.payload;
        log_id!(
            trace,
            &self.config.name,
            "message from the server: type {}, chunk stream {}, message stream {}, timestamp {}, {} bytes",
            msg.type_id,
            msg.csid,
            msg.stream_id,
            msg.timestamp,
            p.len()
        );
        let u32_at = |i: usize| -> Result<u32, Error> {
            p.get(i..i + 4)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
                .ok_or_else(|| {
                    Error::Protocol(format!(
                        "message type {} of {} bytes is too short",
                        msg.type_id,
                        p.len()
                    ))
                })
        };
        match msg.type_id {
            msg_type::SET_CHUNK_SIZE => {
                let size = u32_at(0)?;
                let before = self.dec.chunk_size();
                self.dec.set_chunk_size(size)?;
                log_id!(
                    debug,
                    &self.config.name,
                    "Set Chunk Size received: the server's chunk size {before} -> {size}"
                );
            }
            msg_type::ABORT => {
                let csid = u32_at(0)?;
                log_id!(
                    debug,
                    &self.config.name,
                    "Abort received for chunk stream {csid}"
                );
                self.dec.abort(csid)
            }
            msg_type::ACKNOWLEDGEMENT => {
                self.counters.bytes_acked = u32_at(0)?;
                self.counters.acks_received += 1;
                log_id!(
                    trace,
                    &self.config.name,
                    "Acknowledgement received: the server has {} bytes",
                    self.counters.bytes_acked
                );
            }
            msg_type::WINDOW_ACK_SIZE => {
                let size = u32_at(0)?;
                log_id!(
                    debug,
                    &self.config.name,
                    "Window Acknowledgement Size received: acknowledge every {size} bytes (was {})",
                    self.counters.in_window_ack_size
                );
                self.counters.in_window_ack_size = size;
            }
            msg_type::SET_PEER_BANDWIDTH => {
                let size = u32_at(0)?;
                let limit = match p.get(4) {
                    Some(0) => "hard",
                    Some(1) => "soft",
                    Some(2) => "dynamic",
                    _ => "unknown",
                };
                if size != self.counters.out_window_ack_size {
                    log_id!(
                        debug,
                        &self.config.name,
                        "Set Peer Bandwidth received: {size} bytes ({limit} limit); \
                         Window Acknowledgement Size {size} sent (was {})",
                        self.counters.out_window_ack_size
                    );
                    self.counters.out_window_ack_size = size;
                    self.control(msg_type::WINDOW_ACK_SIZE, &size.to_be_bytes());
                } else {
                    log_id!(
                        debug,
                        &self.config.name,
                        "Set Peer Bandwidth received: {size} bytes ({limit} limit), unchanged"
                    );
                }
            }
            msg_type::USER_CONTROL => {
                if p.len() < 2 {
                    return Err(Error::Protocol("User Control message too short".into()));
                }
                let event = u16::from_be_bytes([p[0], p[1]]);
                match event {
                    UC_PING_REQUEST => {
                        let ts = u32_at(2)?;
                        log_id!(
                            trace,
                            &self.config.name,
                            "Ping Request {ts} received, answered"
                        );
                        let mut resp = UC_PING_RESPONSE.to_be_bytes().to_vec();
                        resp.extend_from_slice(&ts.to_be_bytes());
                        self.control(msg_type::USER_CONTROL, &resp);
                        self.counters.pings += 1;
                    }
                    UC_STREAM_BEGIN => log_id!(
                        debug,
                        &self.config.name,
                        "Stream Begin received for message stream {}",
                        u32_at(2).unwrap_or(0)
                    ),
                    other => log_id!(
                        trace,
                        &self.config.name,
                        "User Control event {other} received, ignored"
                    ),
                }
            }
            msg_type::COMMAND_AMF0 | msg_type::COMMAND_AMF3 | msg_type::DATA_AMF0 => {
                // AMF3 commands start with a 0 byte and are AMF0 from there on.
                let body: &[u8] = if msg.type_id == msg_type::COMMAND_AMF3 {
                    p.get(1..).unwrap_or(&[])
                } else {
                    p
                };
                let values = amf0::decode_all(body)?;
                if log::log_enabled!(log::Level::Trace) {
                    // Servers may echo the stream name: the details are redacted.
                    log_id!(
                        trace,
                        &self.config.name,
                        "command from the server: {}",
                        RedactedValues(&values, &self.config.stream)
                    );
                }
                self.handle_command(values, events)?;
            }
            // Audio, video, aggregate and AMF3 data from the server: nothing for a publisher.
            other => log_id!(
                trace,
                &self.config.name,
                "message type {other} from the server ignored"
            ),
        }
        Ok(())
    }

    fn handle_command(&mut self, values: Vec<Value>, events: &mut Vec<Event>) -> Result<(), Error> {
        let Some(name) = values.first().and_then(Value::as_str) else {
            return Err(Error::Protocol(
                "command from the server without a name".into(),
            ));
        };
        let txn = values.get(1).and_then(Value::as_number).unwrap_or(0.0);
        let info = values.get(3).cloned().unwrap_or(Value::Null);
        // Servers may quote the stream name (the key) in the description: it is redacted here,
        // before it can reach a log line or an error message.
        let stream = self.config.stream.as_str();
        let status = |info: &Value| {
            (
                info.get_str("level").unwrap_or("").to_owned(),
                info.get_str("code").unwrap_or("").to_owned(),
                redact(info.get_str("description").unwrap_or(""), stream),
            )
        };
        match name {
            "_result" | "_error" => {
                let Some(cmd) = self.pending.remove(&(txn as u64)) else {
                    log_id!(
                        debug,
                        &self.config.name,
                        "{name} for transaction {txn}, which we did not send: ignored"
                    );
                    return Ok(());
                };
                let (level, code, description) = status(&info);
                log_id!(
                    debug,
                    &self.config.name,
                    "{cmd} (transaction {txn}) answered {name}: level '{level}', code '{code}', \
                     description '{description}'"
                );
                if name == "_error" && cmd == "connect" {
                    // The description unredacted: a short stream name may occur in a salt.
                    let raw = info.get_str("description").unwrap_or_default();
                    let random = {
                        use rand::RngExt;
                        rand::rng().random::<u32>()
                    };
                    if let Some(next) = self.config.auth.next(
                        self.config.credentials.as_ref(),
                        &self.config.app,
                        raw,
                        random,
                    )? {
                        return Err(Error::AuthRetry(Box::new(next)));
                    }
                }
                if name == "_error" {
                    // releaseStream and FCPublish are courtesies many servers do not know.
                    if matches!(cmd, "releaseStream" | "FCPublish") {
                        log_id!(
                            debug,
                            &self.config.name,
                            "{cmd} refused: not needed to publish, going on"
                        );
                        return Ok(());
                    }
                    return Err(Error::Rejected {
                        command: cmd.to_owned(),
                        code: if code.is_empty() {
                            "_error".into()
                        } else {
                            code
                        },
                        description,
                    });
                }
                match cmd {
                    "connect" => {
                        if level == "error" {
                            return Err(Error::Rejected {
                                command: "connect".into(),
                                code,
                                description,
                            });
                        }
                        events.push(Event::Connected);
                        log_id!(
                            debug,
                            &self.config.name,
                            "releaseStream, FCPublish: stream name <redacted, {} characters>",
                            self.config.stream.chars().count()
                        );
                        let stream = Value::from(self.config.stream.as_str());
                        self.command(
                            CSID_COMMAND,
                            0,
                            "releaseStream",
                            &[Value::Null, stream.clone()],
                        );
                        self.command(CSID_COMMAND, 0, "FCPublish", &[Value::Null, stream]);
                        self.command(CSID_COMMAND, 0, "createStream", &[Value::Null]);
                        self.phase = Phase::CreateStream;
                    }
                    "createStream" => {
                        let id = values.get(3).and_then(Value::as_number).ok_or_else(|| {
                            Error::Protocol("createStream answered without a stream id".into())
                        })?;
                        if !(0.0..=f64::from(u32::MAX)).contains(&id) {
                            return Err(Error::Protocol(format!(
                                "createStream answered stream id {id}"
                            )));
                        }
                        self.stream_id = id as u32;
                        log_id!(
                            debug,
                            &self.config.name,
                            "createStream answered message stream {}; publish (type live, \
                             stream name <redacted, {} characters>)",
                            self.stream_id,
                            self.config.stream.chars().count()
                        );
                        let stream = Value::from(self.config.stream.as_str());
                        self.command(
                            CSID_STREAM_COMMAND,
                            self.stream_id,
                            "publish",
                            &[Value::Null, stream, "live".into()],
                        );
                        self.phase = Phase::Publish;
                    }
                    _ => {}
                }
            }
            "onStatus" => {
                let (level, code, description) = status(&info);
                log_id!(
                    debug,
                    &self.config.name,
                    "onStatus: level '{level}', code '{code}', description '{description}'"
                );
                if level == "error" {
                    return Err(Error::Rejected {
                        command: if self.phase == Phase::Publishing {
                            "the stream".into()
                        } else {
                            "publish".into()
                        },
                        code,
                        description,
                    });
                }
                if code == "NetStream.Publish.Start" && self.phase == Phase::Publish {
                    self.phase = Phase::Publishing;
                    events.push(Event::Publishing);
                } else {
                    events.push(Event::Status {
                        level,
                        code,
                        description,
                    });
                }
            }
            "close" => {
                log_id!(debug, &self.config.name, "the server sent close");
                return Err(Error::Closed {
                    context: "(it sent the close command)".into(),
                    kind: None,
                });
            }
            // onBWDone, onFCPublish, _checkbw and friends.
            other => log_id!(
                debug,
                &self.config.name,
                "command '{other}' from the server ignored"
            ),
        }
        Ok(())
    }

    /// Encodes one FLV tag as a message on the publishing stream. Metadata is sent as
    /// `@setDataFrame onMetaData`.
    pub fn send_tag(&mut self, tag: &Tag) {
        debug_assert_eq!(self.phase, Phase::Publishing);
        let (csid, payload): (u32, std::borrow::Cow<[u8]>) = match tag.kind {
            TagKind::Audio => (CSID_AUDIO, (&tag.data[..]).into()),
            TagKind::Video => (CSID_VIDEO, (&tag.data[..]).into()),
            TagKind::Script => {
                let mut p = amf0::encode_all(&["@setDataFrame".into()]);
                p.extend_from_slice(&tag.data);
                (CSID_DATA, p.into())
            }
        };
        let ts = if tag.kind == TagKind::Script {
            0
        } else {
            tag.timestamp
        };
        self.enc.write(
            csid,
            ts,
            tag.kind.message_type(),
            self.stream_id,
            &payload,
            &mut self.out,
        );
    }

    /// The polite end of a publication: the commands of `stop` (rtmp2sink's stop-commands),
    /// in the order FCUnpublish, closeStream, deleteStream.
    pub fn finish(&mut self, stop: StopCommands) {
        if self.phase == Phase::Publishing {
            log_id!(
                debug,
                &self.config.name,
                "ending the publication: FCUnpublish {}, closeStream {}, deleteStream {}",
                stop.fc_unpublish,
                stop.close_stream,
                stop.delete_stream
            );
            let stream = Value::from(self.config.stream.as_str());
            let sid = self.stream_id;
            if stop.fc_unpublish {
                self.command(CSID_COMMAND, 0, "FCUnpublish", &[Value::Null, stream]);
            }
            if stop.close_stream {
                self.command(CSID_STREAM_COMMAND, sid, "closeStream", &[Value::Null]);
            }
            if stop.delete_stream {
                self.command(
                    CSID_COMMAND,
                    0,
                    "deleteStream",
                    &[Value::Null, Value::Number(f64::from(sid))],
                );
            }
        }
        self.phase = Phase::Closed;
    }
}

/// A message built by hand: for tests of the server side.
pub fn encode_command(enc: &mut ChunkEncoder, csid: u32, values: &[Value], out: &mut Vec<u8>) {
    enc.write(
        csid,
        0,
        msg_type::COMMAND_AMF0,
        0,
        &amf0::encode_all(values),
        out,
    );
}

/// The size of C0+C1 and of S0+S1+S2, for I/O code that wants to read exactly.
pub const C0C1_SIZE: usize = 1 + handshake::PACKET_SIZE;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn config() -> PublisherConfig {
        PublisherConfig {
            name: String::new(),
            app: "live".into(),
            tc_url: "rtmp://127.0.0.1:1935/live".into(),
            stream: "key".into(),
            flash_version: "LNX 10,0,32,18".into(),
            chunk_size: 4096,
            max_message_size: 1 << 20,
            credentials: None,
            auth: ClientAuth::default(),
            fourcc_list: Vec::new(),
        }
    }

    /// A scripted server: decodes what the publisher sends, answers like nginx-rtmp.
    struct Server {
        dec: ChunkDecoder,
        enc: ChunkEncoder,
    }

    impl Server {
        fn new() -> Self {
            Self {
                dec: ChunkDecoder::new(1 << 24),
                enc: ChunkEncoder::new(),
            }
        }

        fn read(&mut self, bytes: &[u8]) -> Vec<Message> {
            self.dec.feed(bytes);
            let mut msgs = Vec::new();
            while let Some(m) = self.dec.next_message().unwrap() {
                if m.type_id == msg_type::SET_CHUNK_SIZE {
                    let s = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                    self.dec.set_chunk_size(s).unwrap();
                }
                msgs.push(m);
            }
            msgs
        }

        fn command(&mut self, values: &[Value]) -> Vec<u8> {
            let mut out = Vec::new();
            encode_command(&mut self.enc, 3, values, &mut out);
            out
        }
    }

    fn names(msgs: &[Message]) -> Vec<String> {
        msgs.iter()
            .filter(|m| m.type_id == msg_type::COMMAND_AMF0)
            .map(|m| {
                amf0::decode_all(&m.payload).unwrap()[0]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// Handshake answer for the publisher's C0C1.
    fn handshake(p: &mut Publisher) -> Vec<u8> {
        let c0c1 = p.take_output();
        assert_eq!(c0c1.len(), C0C1_SIZE);
        let mut s = vec![3u8];
        s.extend_from_slice(&[0u8; 1536]);
        s.extend_from_slice(&c0c1[1..]);
        s
    }

    /// A publisher with `cfg` past the handshake, waiting for its connect's answer.
    fn handshaken(cfg: PublisherConfig) -> (Publisher, Server) {
        let mut p = Publisher::new(cfg, 0, &[1u8; 1528]);
        let s = handshake(&mut p);
        p.receive(&s).unwrap();
        (p, Server::new())
    }

    /// The server's answers to connect and createStream that let publishing go on.
    fn connected_answers(srv: &mut Server) -> Vec<u8> {
        let mut answer = srv.command(&[
            "_result".into(),
            1.0.into(),
            Value::Null,
            amf0::obj(&[("code", "NetConnection.Connect.Success".into())]),
        ]);
        answer.extend(srv.command(&["_result".into(), 4.0.into(), Value::Null, 1.0.into()]));
        answer
    }

    fn status(code: &str, level: &str) -> Vec<Value> {
        vec![
            "onStatus".into(),
            0.0.into(),
            Value::Null,
            amf0::obj(&[("level", level.into()), ("code", code.into())]),
        ]
    }

    fn to_publishing() -> (Publisher, Server) {
        let mut p = Publisher::new(config(), 0, &[1u8; 1528]);
        let mut srv = Server::new();
        let s = handshake(&mut p);
        assert!(p.receive(&s).unwrap().is_empty());
        let out = p.take_output();
        let msgs = srv.read(&out[1536..]);
        assert_eq!(msgs[0].type_id, msg_type::SET_CHUNK_SIZE);
        assert_eq!(names(&msgs), ["connect"]);
        let connect = amf0::decode_all(&msgs[1].payload).unwrap();
        assert_eq!(connect[2].get_str("app"), Some("live"));
        assert_eq!(
            connect[2].get_str("tcUrl"),
            Some("rtmp://127.0.0.1:1935/live")
        );
        assert_eq!(connect[2].get_str("type"), Some("nonprivate"));
        assert!(connect[2].get_str("flashVer").is_some());
        assert!(
            connect[2].get("fourCcList").is_none(),
            "no Enhanced RTMP announced without elementary inputs"
        );
        let mut answer = Vec::new();
        // Window ack size 100, peer bandwidth, chunk size 64 from the server.
        srv.enc.write(
            2,
            0,
            msg_type::WINDOW_ACK_SIZE,
            0,
            &100u32.to_be_bytes(),
            &mut answer,
        );
        srv.enc.write(
            2,
            0,
            msg_type::SET_PEER_BANDWIDTH,
            0,
            &[0, 0, 0x10, 0, 2],
            &mut answer,
        );
        srv.enc.write(
            2,
            0,
            msg_type::SET_CHUNK_SIZE,
            0,
            &64u32.to_be_bytes(),
            &mut answer,
        );
        srv.enc.set_chunk_size(64);
        answer.extend(srv.command(&[
            "_result".into(),
            1.0.into(),
            Value::Null,
            amf0::obj(&[
                ("level", "status".into()),
                ("code", "NetConnection.Connect.Success".into()),
                ("description", "x".repeat(100).into()),
            ]),
        ]));
        let ev = p.receive(&answer).unwrap();
        assert_eq!(ev, [Event::Connected]);
        assert_eq!(p.in_chunk_size(), 64);
        assert_eq!(p.counters.in_window_ack_size, 100);
        let msgs = srv.read(&p.take_output());
        // Window ack size echoed for the peer bandwidth, an acknowledgement (> 100 bytes in).
        assert!(msgs.iter().any(|m| m.type_id == msg_type::WINDOW_ACK_SIZE));
        assert!(msgs.iter().any(|m| m.type_id == msg_type::ACKNOWLEDGEMENT));
        assert_eq!(p.counters.acks_sent, 1);
        assert_eq!(names(&msgs), ["releaseStream", "FCPublish", "createStream"]);
        let out = srv.command(&["_result".into(), 4.0.into(), Value::Null, 1.0.into()]);
        assert!(p.receive(&out).unwrap().is_empty());
        let msgs = srv.read(&p.take_output());
        assert_eq!(names(&msgs), ["publish"]);
        let publish = amf0::decode_all(&msgs[0].payload).unwrap();
        assert_eq!(publish[3].as_str(), Some("key"));
        assert_eq!(publish[4].as_str(), Some("live"));
        assert_eq!(msgs[0].stream_id, 1);
        let out = srv.command(&status("NetStream.Publish.Start", "status"));
        assert_eq!(p.receive(&out).unwrap(), [Event::Publishing]);
        assert_eq!(p.phase(), Phase::Publishing);
        (p, srv)
    }

    #[test]
    fn connect_announces_the_enhanced_rtmp_four_cc_list() {
        let mut cfg = config();
        cfg.fourcc_list = vec!["hvc1".into(), "Opus".into()];
        let mut p = Publisher::new(cfg, 0, &[1u8; 1528]);
        let mut srv = Server::new();
        let s = handshake(&mut p);
        assert!(p.receive(&s).unwrap().is_empty());
        let out = p.take_output();
        let msgs = srv.read(&out[1536..]);
        let connect = amf0::decode_all(&msgs[1].payload).unwrap();
        assert_eq!(
            connect[2].get("fourCcList"),
            Some(&amf0::Value::StrictArray(vec![
                "hvc1".into(),
                "Opus".into()
            ]))
        );
    }

    #[test]
    fn publishes_and_finishes() {
        let (mut p, mut srv) = to_publishing();
        let meta = amf0::encode_all(&[
            "onMetaData".into(),
            Value::EcmaArray(vec![("width".into(), 320.0.into())]),
        ]);
        p.send_tag(&Tag {
            kind: TagKind::Script,
            timestamp: 0,
            data: meta.into(),
        });
        p.send_tag(&Tag {
            kind: TagKind::Video,
            timestamp: 33,
            data: Bytes::from(vec![0x17; 10_000]),
        });
        p.send_tag(&Tag {
            kind: TagKind::Audio,
            timestamp: 0x0100_0000,
            data: Bytes::from_static(&[0xaf, 1, 2]),
        });
        let msgs: Vec<Message> = srv
            .read(&p.take_output())
            .into_iter()
            .filter(|m| m.type_id != msg_type::ACKNOWLEDGEMENT)
            .collect();
        assert_eq!(msgs.len(), 3);
        let data = amf0::decode_all(&msgs[0].payload).unwrap();
        assert_eq!(data[0].as_str(), Some("@setDataFrame"));
        assert_eq!(data[1].as_str(), Some("onMetaData"));
        assert_eq!(msgs[1].type_id, msg_type::VIDEO);
        assert_eq!(msgs[1].payload.len(), 10_000);
        assert_eq!(msgs[1].timestamp, 33);
        assert_eq!(msgs[2].timestamp, 0x0100_0000);
        assert!(msgs.iter().all(|m| m.stream_id == 1));
        p.finish(StopCommands::default());
        let msgs = srv.read(&p.take_output());
        assert_eq!(names(&msgs), ["FCUnpublish", "deleteStream"]);
        let delete = amf0::decode_all(&msgs[1].payload).unwrap();
        assert_eq!(delete[3], Value::Number(1.0), "the stream id");
        // Other choices, and nothing once closed.
        let (mut p, mut srv) = to_publishing();
        p.finish(StopCommands {
            fc_unpublish: false,
            close_stream: true,
            delete_stream: false,
        });
        let msgs: Vec<Message> = srv
            .read(&p.take_output())
            .into_iter()
            .filter(|m| m.type_id == msg_type::COMMAND_AMF0)
            .collect();
        assert_eq!(names(&msgs), ["closeStream"]);
        assert_eq!(msgs[0].stream_id, 1);
        p.finish(StopCommands::default());
        assert!(!p.has_output());
    }

    #[test]
    fn answers_pings_and_counts_acks() {
        let (mut p, mut srv) = to_publishing();
        let mut out = Vec::new();
        srv.enc.write(
            2,
            0,
            msg_type::USER_CONTROL,
            0,
            &[0, 6, 0, 0, 1, 2],
            &mut out,
        );
        srv.enc.write(
            2,
            0,
            msg_type::ACKNOWLEDGEMENT,
            0,
            &5000u32.to_be_bytes(),
            &mut out,
        );
        p.receive(&out).unwrap();
        let msgs = srv.read(&p.take_output());
        let pong = msgs
            .iter()
            .find(|m| m.type_id == msg_type::USER_CONTROL)
            .expect("ping response");
        assert_eq!(&pong.payload[..], &[0, 7, 0, 0, 1, 2]);
        assert_eq!(p.counters.acks_received, 1);
        assert_eq!(p.counters.bytes_acked, 5000);
    }

    /// A pyrtmp-like server: its answers open chunk stream 3 with a type 1 header and the
    /// onStatus for publish arrives on message stream 0. Answers are matched by transaction id
    /// (commands) and taken on any message stream (onStatus), as ffmpeg does.
    #[test]
    fn tolerates_a_type_1_opening_header_and_on_status_on_stream_0() {
        let (mut p, _) = handshaken(config());
        let _ = p.take_output();
        let type1 = |values: &[Value]| {
            let body = amf0::encode_all(values);
            let mut out = vec![0x43, 0, 0, 0];
            out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            out.push(msg_type::COMMAND_AMF0);
            out.extend_from_slice(&body);
            out
        };
        let mut answer = vec![
            0x02, 0, 0, 0, 0, 0, 4, 5, 0, 0, 0, 0, 0x00, 0x4c, 0x4b, 0x40,
        ];
        answer.extend(type1(&[
            "_result".into(),
            1.0.into(),
            Value::Null,
            amf0::obj(&[("code", "NetConnection.Connect.Success".into())]),
        ]));
        assert_eq!(p.receive(&answer).unwrap(), [Event::Connected]);
        // Unknown transactions are ignored, the right one answers createStream.
        let mut answer = type1(&["_result".into(), 99.0.into(), Value::Null, 7.0.into()]);
        answer.extend(type1(&[
            "_result".into(),
            4.0.into(),
            Value::Null,
            1.0.into(),
        ]));
        assert!(p.receive(&answer).unwrap().is_empty());
        assert_eq!(p.phase(), Phase::Publish);
        let answer = type1(&status("NetStream.Publish.Start", "status"));
        assert_eq!(p.receive(&answer).unwrap(), [Event::Publishing]);
    }

    #[test]
    fn refusals_are_rejected_errors() {
        // BadName on publish.
        let (mut p, mut srv) = handshaken(config());
        let mut answer = connected_answers(&mut srv);
        answer.extend(srv.command(&status("NetStream.Publish.BadName", "error")));
        match p.receive(&answer) {
            Err(Error::Rejected { code, .. }) => assert_eq!(code, "NetStream.Publish.BadName"),
            other => panic!("{other:?}"),
        }
        // _error on connect.
        let (mut p, mut srv) = handshaken(config());
        let answer = srv.command(&[
            "_error".into(),
            1.0.into(),
            Value::Null,
            amf0::obj(&[
                ("level", "error".into()),
                ("code", "NetConnection.Connect.Rejected".into()),
                ("description", "go away".into()),
            ]),
        ]);
        let e = p.receive(&answer).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the server refused connect: NetConnection.Connect.Rejected (go away)"
        );
    }

    #[test]
    fn the_stream_name_never_reaches_an_error() {
        // A server quoting the key in its description (Red5 and Wowza do): redacted.
        let mut cfg = config();
        cfg.stream = "sk_live_SECRET?token=T0KEN".into();
        let (mut p, mut srv) = handshaken(cfg);
        let mut answer = connected_answers(&mut srv);
        answer.extend(srv.command(&[
            "onStatus".into(),
            0.0.into(),
            Value::Null,
            amf0::obj(&[
                ("level", "error".into()),
                ("code", "NetStream.Publish.Unauthorized".into()),
                (
                    "description",
                    "sk_live_SECRET is not allowed (token T0KEN)".into(),
                ),
            ]),
        ]));
        let e = p.receive(&answer).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("SECRET") && !text.contains("T0KEN"),
            "{text}"
        );
        assert!(text.contains("<redacted> is not allowed"), "{text}");
        assert!(e.is_unauthorized());
        assert!(!e.is_network());
    }

    #[test]
    fn refusals_are_classified_by_code() {
        let rejected = |code: &str| Error::Rejected {
            command: "publish".into(),
            code: code.into(),
            description: String::new(),
        };
        assert!(rejected("NetConnection.Connect.Rejected").is_unauthorized());
        assert!(rejected("NetStream.Publish.Unauthorized").is_unauthorized());
        assert!(rejected("NetStream.Publish.AuthFailed").is_unauthorized());
        assert!(!rejected("NetStream.Publish.BadName").is_unauthorized());
        assert!(!rejected("NetConnection.Connect.Failed").is_unauthorized());
        let closed = Error::Closed {
            context: "while publishing".into(),
            kind: Some(std::io::ErrorKind::ConnectionReset),
        };
        assert!(closed.is_network());
        assert_eq!(
            closed.to_string(),
            "the server closed the connection while publishing (connection reset)"
        );
        assert_eq!(redact("a key b", "key"), "a <redacted> b");
        // Values are redacted before Debug escapes them.
        let values = [
            Value::from("publish"),
            amf0::obj(&[("details", "k\"ey".into())]),
            Value::StrictArray(vec!["x k\"ey".into()]),
        ];
        let shown = RedactedValues(&values, "k\"ey").to_string();
        assert!(
            !shown.contains("k\\\"ey") && !shown.contains("k\"ey"),
            "{shown}"
        );
        assert_eq!(shown.matches("<redacted>").count(), 2, "{shown}");
        assert_eq!(redact("a k b v", "k?x=v"), "a <redacted> b <redacted>");
        assert_eq!(redact("nothing", ""), "nothing");
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut p = Publisher::new(config(), 0, &[1u8; 1528]);
        let _ = p.take_output();
        assert!(matches!(
            p.receive(b"<html>garbage"),
            Err(Error::Handshake(HandshakeError::Version(b'<')))
        ));
        // A bad chunk size after the handshake.
        let mut p = Publisher::new(config(), 0, &[1u8; 1528]);
        let mut s = handshake(&mut p);
        let mut enc = ChunkEncoder::new();
        enc.write(2, 0, msg_type::SET_CHUNK_SIZE, 0, &[0, 0, 0, 0], &mut s);
        assert!(matches!(
            p.receive(&s),
            Err(Error::Chunk(ChunkError::InvalidChunkSize(0)))
        ));
        // A huge message.
        let mut p = Publisher::new(config(), 0, &[1u8; 1528]);
        let mut s = handshake(&mut p);
        s.extend_from_slice(&[0x03, 0, 0, 0, 0xff, 0xff, 0xff, 20, 0, 0, 0, 0]);
        assert!(matches!(
            p.receive(&s),
            Err(Error::Chunk(ChunkError::TooLarge { type_id: 20, .. }))
        ));
    }
}
