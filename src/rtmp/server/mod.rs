//! The RTMP server side, without GStreamer types: [`Connection`] is one publisher's connection as a
//! state machine without I/O (feed it the client's bytes, take the bytes to send, answer the
//! publish requests it reports); [`output`] is the bounded queue of media between the network
//! and the element, with whole-frame drops; [`listener`] runs the connections on the shared
//! runtime (plain TCP or TLS), enforces the limits and decides who publishes.
//!
//! Specifications: RTMP specification 1.0 §5.2 (handshake; the digest variant is Flash Media
//! Server practice, see [`super::handshake`]), §5.4 (Set Chunk Size, Abort, Acknowledgement,
//! Window Acknowledgement Size, Set Peer Bandwidth), §6.2/§7.1.7 (user control: Stream Begin,
//! ping), §7.2.1.1 (connect and its `_result`), §7.2.1.3 (createStream), §7.2.2.3 (deleteStream),
//! §7.2.2.6 (publish and onStatus NetStream.Publish.*); releaseStream, FCPublish, FCUnpublish
//! and `@setDataFrame` follow Flash Media Server and nginx-rtmp practice; Enhanced RTMP (Veovera,
//! v1/v2) for `fourCcList` and the v2 `videoFourCcInfoMap`/`audioFourCcInfoMap` in connect. The
//! stream key never appears in a log record.

pub mod listener;
pub mod output;

use bytes::Bytes;

use super::amf0::{self, DecodeError, Value};
use super::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, Message, msg_type};
use super::flv::{Tag, TagKind};
use super::handshake::{PACKET_SIZE, ServerHandshake, ServerHandshakeError, ServerStep};

const CSID_CONTROL: u32 = 2;
const CSID_COMMAND: u32 = 3;
const CSID_STATUS: u32 = 5;

const UC_STREAM_BEGIN: u16 = 0;
const UC_STREAM_EOF: u16 = 1;
const UC_PING_REQUEST: u16 = 6;
const UC_PING_RESPONSE: u16 = 7;

/// Message streams one connection may create.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 8;
/// Messages before the publish is accepted (commands) are small; larger ones are refused.
const MAX_COMMAND_SIZE: usize = 64 * 1024;
/// FourCCs recorded from a connect at most (`fourCcList` and the v2 info maps together).
const MAX_FOURCCS: usize = 64;
/// Enhanced RTMP v2 FourCcInfoMask bits.
const FOURCC_CAN_ENCODE: u32 = 0x02;
const FOURCC_CAN_FORWARD: u32 = 0x04;

/// Why a connection ends (the listener logs it with the peer).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("handshake: {0}")]
    Handshake(#[from] ServerHandshakeError),
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("command: {0}")]
    Amf(#[from] DecodeError),
    /// Something the protocol does not allow (message too short, limits).
    #[error("protocol: {0}")]
    Protocol(String),
    /// connect named an application the server does not serve.
    #[error("connect to application '{app}' refused: the server serves '{served}'")]
    WrongApplication { app: String, served: String },
    /// connect refused by Adobe/Limelight authentication: a step of the exchange (the client
    /// comes back on a new connection) or a failure. `reason` and `user` hold no secret.
    #[error("connect refused by authentication: {reason}{}", user.as_ref().map(|u| format!(" (user '{u}')")).unwrap_or_default())]
    AuthRefused {
        reason: &'static str,
        user: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The element's name, for logs.
    pub name: String,
    /// The peer's address, for logs.
    pub peer: String,
    /// The application clients must connect to; empty: any.
    pub application: String,
    /// Our chunk size (announced with Set Chunk Size after connect).
    pub chunk_size: u32,
    /// Window Acknowledgement Size and Set Peer Bandwidth announced after connect.
    pub window_ack_size: u32,
    /// Larger messages from the client end the connection.
    pub max_message_size: u32,
    /// When set, connect needs Adobe or Limelight authentication.
    pub auth: Option<std::sync::Arc<super::auth::ServerAuth>>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            peer: String::new(),
            application: String::new(),
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            max_message_size: 8 * 1024 * 1024,
            auth: None,
        }
    }
}

/// What connect said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectInfo {
    pub app: String,
    pub tc_url: String,
    pub flash_ver: String,
    pub object_encoding: f64,
    /// Enhanced RTMP: the codecs the client can send (`fourCcList`, and the FourCCs its
    /// `videoFourCcInfoMap`/`audioFourCcInfoMap` mark as encodable or forwardable), recorded.
    pub fourcc_list: Vec<String>,
    /// The client sent E-RTMP v2 FourCC info maps: the answer carries ours.
    pub info_maps: bool,
}

/// A publish request, for the listener to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub stream_id: u32,
    /// The publishing name before `?`: the stream key. Never logged.
    pub key: String,
    /// After `?`, without it (tokens: never logged).
    pub query: String,
    /// `live`, `record` or `append`.
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// connect was answered (the application matched).
    Connected(ConnectInfo),
    /// publish: answer with [`Connection::accept_publish`] or [`Connection::refuse_publish`],
    /// then call [`Connection::receive`] (with no new bytes) for what came after it.
    Publish(PublishRequest),
    /// Audio, video or script data (`onMetaData`, `@setDataFrame` removed) of the accepted
    /// publication, timestamps as the client sent them.
    Media(Tag),
    /// The client ended its publication (FCUnpublish, closeStream or deleteStream).
    Unpublished(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Handshake,
    /// Waiting for connect.
    Connect,
    Connected,
    /// A publish is reported and not yet answered.
    Deciding,
    Publishing,
    Unpublished,
}

/// Counters for `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub acks_sent: u64,
    /// Media messages received before (or without) an accepted publish, ignored.
    pub media_ignored: u64,
}

/// One client's connection.
#[derive(Debug)]
pub struct Connection {
    config: ConnectionConfig,
    handshake: Option<ServerHandshake>,
    dec: ChunkDecoder,
    enc: ChunkEncoder,
    out: Vec<u8>,
    phase: Phase,
    streams_created: u32,
    publish_stream: Option<u32>,
    /// publish came on message stream 0 (tolerated): media on stream 0 belongs to it too.
    publish_on_zero: bool,
    /// The peer's Window Acknowledgement Size: acknowledge after that many bytes.
    peer_window: u32,
    last_ack: u64,
    pub counters: Counters,
    connect: Option<ConnectInfo>,
}

impl Connection {
    /// `epoch_ms` and `random`: S1's time and the random bytes of S1/S2.
    pub fn new(config: ConnectionConfig, epoch_ms: u32, random: &[u8; PACKET_SIZE]) -> Self {
        let dec = ChunkDecoder::new(config.max_message_size);
        Self {
            config,
            handshake: Some(ServerHandshake::new(epoch_ms, random)),
            dec,
            enc: ChunkEncoder::new(),
            out: Vec::new(),
            phase: Phase::Handshake,
            streams_created: 0,
            publish_stream: None,
            publish_on_zero: false,
            peer_window: 0,
            last_ack: 0,
            counters: Counters::default(),
            connect: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn connect_info(&self) -> Option<&ConnectInfo> {
        self.connect.as_ref()
    }

    /// The client's chunk size.
    pub fn in_chunk_size(&self) -> u32 {
        self.dec.chunk_size()
    }

    pub fn out_chunk_size(&self) -> u32 {
        self.enc.chunk_size()
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        self.counters.bytes_out += self.out.len() as u64;
        std::mem::take(&mut self.out)
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    /// Feeds bytes from the client.
    pub fn receive(&mut self, data: &[u8]) -> Result<Vec<Event>, Error> {
        self.counters.bytes_in += data.len() as u64;
        let mut events = Vec::new();
        if let Some(hs) = self.handshake.as_mut() {
            let mut step = hs.feed(data)?;
            if let ServerStep::Answer(answer) = step {
                log_id!(
                    debug,
                    &self.config.name,
                    "{}: C0+C1 received, S0+S1+S2 sent ({:?} handshake)",
                    self.config.peer,
                    hs.kind()
                );
                self.out.extend_from_slice(&answer);
                step = hs.feed(&[])?;
            }
            match step {
                ServerStep::Done { leftover } => {
                    self.handshake = None;
                    log_id!(
                        debug,
                        self.name(),
                        "{}: handshake done, waiting for connect",
                        self.config.peer
                    );
                    self.phase = Phase::Connect;
                    self.dec.feed(&leftover);
                }
                _ => return Ok(events),
            }
        } else {
            self.dec.feed(data);
        }
        // A publish waits for its answer: what follows it (media, often) is read after.
        while self.phase != Phase::Deciding
            && let Some(msg) = self.dec.next_message()?
        {
            self.handle_message(msg, &mut events)?;
        }
        self.maybe_ack();
        Ok(events)
    }

    fn maybe_ack(&mut self) {
        let window = u64::from(self.peer_window);
        if window > 0 && self.counters.bytes_in - self.last_ack >= window {
            self.last_ack = self.counters.bytes_in;
            let v = (self.counters.bytes_in & 0xffff_ffff) as u32;
            log_id!(
                trace,
                self.name(),
                "{}: Acknowledgement sent ({v} bytes)",
                self.config.peer
            );
            self.control(msg_type::ACKNOWLEDGEMENT, &v.to_be_bytes());
            self.counters.acks_sent += 1;
        }
    }

    fn control(&mut self, type_id: u8, payload: &[u8]) {
        self.enc
            .write(CSID_CONTROL, 0, type_id, 0, payload, &mut self.out);
    }

    fn user_control(&mut self, event: u16, value: u32) {
        let mut p = event.to_be_bytes().to_vec();
        p.extend_from_slice(&value.to_be_bytes());
        self.control(msg_type::USER_CONTROL, &p);
    }

    fn send_command(&mut self, csid: u32, stream_id: u32, values: &[Value]) {
        let payload = amf0::encode_all(values);
        self.enc.write(
            csid,
            0,
            msg_type::COMMAND_AMF0,
            stream_id,
            &payload,
            &mut self.out,
        );
    }

    fn on_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        let info = amf0::obj(&[
            ("level", level.into()),
            ("code", code.into()),
            ("description", description.into()),
        ]);
        self.send_command(
            CSID_STATUS,
            stream_id,
            &[
                Value::from("onStatus"),
                Value::Number(0.0),
                Value::Null,
                info,
            ],
        );
    }

    /// Accepts the reported publish: Stream Begin and onStatus NetStream.Publish.Start.
    pub fn accept_publish(&mut self) {
        let Some(sid) = self.publish_stream else {
            return;
        };
        self.user_control(UC_STREAM_BEGIN, sid);
        self.on_status(sid, "status", "NetStream.Publish.Start", "Start publishing");
        self.phase = Phase::Publishing;
        log_id!(
            debug,
            self.name(),
            "{}: publish accepted on message stream {sid}: NetStream.Publish.Start sent",
            self.config.peer
        );
    }

    /// Refuses the reported publish with onStatus `code` at level error (the client then
    /// gives up; the listener closes the connection after sending it).
    pub fn refuse_publish(&mut self, code: &str, description: &str) {
        let sid = self.publish_stream.take().unwrap_or(0);
        self.on_status(sid, "error", code, description);
        self.phase = Phase::Connected;
        log_id!(
            debug,
            self.name(),
            "{}: publish refused on message stream {sid}: {code} ({description})",
            self.config.peer
        );
    }

    /// Tells a publisher that its publication ended (taken over, element stopping).
    pub fn end_publish(&mut self, code: &str, description: &str) {
        if let Some(sid) = self.publish_stream {
            self.user_control(UC_STREAM_EOF, sid);
            self.on_status(sid, "status", code, description);
        }
    }

    fn handle_message(&mut self, msg: Message, events: &mut Vec<Event>) -> Result<(), Error> {
        let p = &msg.payload;
        log_id!(
            trace,
            self.name(),
            "{}: message type {}, chunk stream {}, message stream {}, timestamp {}, {} bytes",
            self.config.peer,
            msg.type_id,
            msg.csid,
            msg.stream_id,
            msg.timestamp,
            p.len()
        );
        let u32_at = |i: usize| -> Result<u32, Error> {
            p.get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| {
                    Error::Protocol(format!(
                        "message type {} of {} bytes is too short",
                        msg.type_id,
                        p.len()
                    ))
                })
        };
        let mut publishing = self.phase == Phase::Publishing
            && (Some(msg.stream_id) == self.publish_stream
                || (self.publish_on_zero && msg.stream_id == 0));
        if !publishing
            && self.phase == Phase::Publishing
            && msg.stream_id == 0
            && matches!(
                msg.type_id,
                msg_type::AUDIO
                    | msg_type::VIDEO
                    | msg_type::DATA_AMF0
                    | msg_type::DATA_AMF3
                    | msg_type::AGGREGATE
            )
        {
            // Liberal as ffmpeg: node-media-server 4.4.3's relay publishes on the stream
            // createStream made but sends its media on message stream 0. One publication per
            // connection, so stream 0's media can only be it.
            log_id!(
                info,
                self.name(),
                "{}: media on message stream 0 while publishing on {:?}: tolerated, taken as \
                 the publication's",
                self.config.peer,
                self.publish_stream
            );
            self.publish_on_zero = true;
            publishing = true;
        }
        match msg.type_id {
            msg_type::SET_CHUNK_SIZE => {
                let size = u32_at(0)?;
                let before = self.dec.chunk_size();
                self.dec.set_chunk_size(size)?;
                log_id!(
                    debug,
                    self.name(),
                    "{}: Set Chunk Size received: the client's chunk size {before} -> {size}",
                    self.config.peer
                );
            }
            msg_type::ABORT => {
                let csid = u32_at(0)?;
                self.dec.abort(csid);
            }
            msg_type::ACKNOWLEDGEMENT => {}
            msg_type::WINDOW_ACK_SIZE => {
                let size = u32_at(0)?;
                log_id!(
                    debug,
                    self.name(),
                    "{}: Window Acknowledgement Size received: acknowledging every {size} bytes",
                    self.config.peer
                );
                self.peer_window = size;
            }
            msg_type::SET_PEER_BANDWIDTH => {}
            msg_type::USER_CONTROL => {
                if p.len() < 2 {
                    return Err(Error::Protocol("User Control message too short".into()));
                }
                let event = u16::from_be_bytes([p[0], p[1]]);
                if event == UC_PING_REQUEST {
                    let v = u32_at(2)?;
                    self.user_control(UC_PING_RESPONSE, v);
                    log_id!(trace, self.name(), "{}: ping answered", self.config.peer);
                }
            }
            msg_type::AUDIO | msg_type::VIDEO => {
                if publishing {
                    let kind = if msg.type_id == msg_type::AUDIO {
                        TagKind::Audio
                    } else {
                        TagKind::Video
                    };
                    events.push(Event::Media(Tag {
                        kind,
                        timestamp: msg.timestamp,
                        data: msg.payload,
                    }));
                } else {
                    self.counters.media_ignored += 1;
                }
            }
            msg_type::DATA_AMF0 | msg_type::DATA_AMF3 => {
                let body = if msg.type_id == msg_type::DATA_AMF3 {
                    p.slice(1.min(p.len())..)
                } else {
                    p.clone()
                };
                if publishing && let Some(data) = script_data(&body)? {
                    events.push(Event::Media(Tag {
                        kind: TagKind::Script,
                        timestamp: msg.timestamp,
                        data,
                    }));
                }
            }
            msg_type::AGGREGATE => {
                if publishing {
                    split_aggregate(&msg, events)?;
                } else {
                    self.counters.media_ignored += 1;
                }
            }
            msg_type::COMMAND_AMF0 | msg_type::COMMAND_AMF3 => {
                if p.len() > MAX_COMMAND_SIZE {
                    return Err(Error::Protocol(format!(
                        "command of {} bytes (at most {MAX_COMMAND_SIZE})",
                        p.len()
                    )));
                }
                let body = if msg.type_id == msg_type::COMMAND_AMF3 {
                    &p[1.min(p.len())..]
                } else {
                    &p[..]
                };
                let values = amf0::decode_all(body)?;
                self.handle_command(msg.stream_id, &values, events)?;
            }
            other => {
                log_id!(
                    trace,
                    self.name(),
                    "{}: message type {other} ignored",
                    self.config.peer
                );
            }
        }
        Ok(())
    }

    fn result(&mut self, txn: f64, values: Vec<Value>) {
        let mut all = vec![Value::from("_result"), Value::Number(txn)];
        all.extend(values);
        self.send_command(CSID_COMMAND, 0, &all);
    }

    fn handle_command(
        &mut self,
        stream_id: u32,
        values: &[Value],
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let name = values.first().and_then(Value::as_str).unwrap_or_default();
        let txn = values.get(1).and_then(Value::as_number).unwrap_or(0.0);
        log_id!(
            debug,
            self.name(),
            "{}: command {name} (transaction {txn}, message stream {stream_id})",
            self.config.peer
        );
        match name {
            "connect" => self.on_connect(txn, values.get(2), events)?,
            "releaseStream" | "FCPublish" => {
                if name == "FCPublish" {
                    self.send_command(
                        CSID_COMMAND,
                        0,
                        &[
                            Value::from("onFCPublish"),
                            Value::Number(0.0),
                            Value::Null,
                            amf0::obj(&[
                                ("code", "NetStream.Publish.Start".into()),
                                ("description", "FCPublish".into()),
                            ]),
                        ],
                    );
                }
                if txn > 0.0 {
                    self.result(txn, vec![Value::Null, Value::Undefined]);
                }
            }
            "createStream" => {
                if self.phase == Phase::Connect {
                    return Err(Error::Protocol("createStream before connect".into()));
                }
                if self.streams_created >= MAX_STREAMS_PER_CONNECTION {
                    return Err(Error::Protocol(format!(
                        "more than {MAX_STREAMS_PER_CONNECTION} createStream on one connection"
                    )));
                }
                self.streams_created += 1;
                let sid = self.streams_created;
                self.result(txn, vec![Value::Null, Value::Number(f64::from(sid))]);
                log_id!(
                    debug,
                    self.name(),
                    "{}: createStream answered: message stream {sid}",
                    self.config.peer
                );
            }
            "publish" => {
                if self.phase != Phase::Connected {
                    return Err(Error::Protocol(format!(
                        "publish while {:?} (one publication per connection, after connect)",
                        self.phase
                    )));
                }
                let mut stream_id = stream_id;
                if stream_id == 0 && self.streams_created > 0 {
                    // Liberal as ffmpeg: a client whose headers lost the message stream id
                    // (a type 1 header opening its chunk stream) publishes on stream 0.
                    log_id!(
                        info,
                        self.name(),
                        "{}: publish on message stream 0: tolerated, taken as message stream {} \
                         (the last createStream made); media on either is taken",
                        self.config.peer,
                        self.streams_created
                    );
                    self.publish_on_zero = true;
                    stream_id = self.streams_created;
                }
                if stream_id == 0 || stream_id > self.streams_created {
                    return Err(Error::Protocol(format!(
                        "publish on message stream {stream_id}, which createStream did not make"
                    )));
                }
                let full = values.get(3).and_then(Value::as_str).unwrap_or_default();
                let kind = values
                    .get(4)
                    .and_then(Value::as_str)
                    .unwrap_or("live")
                    .to_owned();
                let (key, query) = match full.split_once('?') {
                    Some((k, q)) => (k.to_owned(), q.to_owned()),
                    None => (full.to_owned(), String::new()),
                };
                log_id!(
                    debug,
                    self.name(),
                    "{}: publish request on message stream {stream_id} ({kind}; stream key of \
                     {} characters, query of {})",
                    self.config.peer,
                    key.chars().count(),
                    query.chars().count()
                );
                self.publish_stream = Some(stream_id);
                self.phase = Phase::Deciding;
                events.push(Event::Publish(PublishRequest {
                    stream_id,
                    key,
                    query,
                    kind,
                }));
            }
            "FCUnpublish" | "closeStream" | "deleteStream" => {
                if matches!(self.phase, Phase::Publishing | Phase::Deciding) {
                    self.phase = Phase::Unpublished;
                    log_id!(
                        debug,
                        self.name(),
                        "{}: {name}: the publication ends",
                        self.config.peer
                    );
                    events.push(Event::Unpublished(match name {
                        "FCUnpublish" => "FCUnpublish",
                        "closeStream" => "closeStream",
                        _ => "deleteStream",
                    }));
                }
            }
            "_checkbw" | "getStreamLength" => {
                if txn > 0.0 {
                    self.result(txn, vec![Value::Null]);
                }
            }
            "_result" | "_error" | "onBWDone" | "@setDataFrame" | "onStatus" => {}
            other => {
                // play, seek and whatever else: this server only takes publishers.
                if txn > 0.0 {
                    log_id!(
                        debug,
                        self.name(),
                        "{}: command {other} refused with _error (only publishing is served)",
                        self.config.peer
                    );
                    let info = amf0::obj(&[
                        ("level", "error".into()),
                        ("code", "NetConnection.Call.Failed".into()),
                        ("description", "this server only takes publishers".into()),
                    ]);
                    self.send_command(
                        CSID_COMMAND,
                        0,
                        &[Value::from("_error"), Value::Number(txn), Value::Null, info],
                    );
                }
            }
        }
        Ok(())
    }

    fn on_connect(
        &mut self,
        txn: f64,
        cmd: Option<&Value>,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        if self.phase != Phase::Connect {
            return Err(Error::Protocol("a second connect".into()));
        }
        let get = |k: &str| {
            cmd.and_then(|c| c.get_str(k))
                .unwrap_or_default()
                .to_owned()
        };
        let mut fourcc_list: Vec<String> = match cmd.and_then(|c| c.get("fourCcList")) {
            Some(Value::StrictArray(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .take(MAX_FOURCCS)
                .collect(),
            _ => Vec::new(),
        };
        // Enhanced RTMP v2: maps of FourCC (or "*") to what the client can do with it; the
        // codecs it can encode or forward are the ones it may send.
        let mut info_maps = false;
        for key in ["videoFourCcInfoMap", "audioFourCcInfoMap"] {
            if let Some(Value::Object(entries) | Value::EcmaArray(entries)) =
                cmd.and_then(|c| c.get(key))
            {
                info_maps = true;
                for (fourcc, flags) in entries.iter().take(MAX_FOURCCS) {
                    let flags = flags.as_number().unwrap_or(0.0);
                    let sends = flags.is_finite()
                        && (flags as u32) & (FOURCC_CAN_ENCODE | FOURCC_CAN_FORWARD) != 0;
                    if sends && fourcc_list.len() < MAX_FOURCCS && !fourcc_list.contains(fourcc) {
                        fourcc_list.push(fourcc.clone());
                    }
                }
            }
        }
        let mut info = ConnectInfo {
            // Some clients put the query or a trailing slash in app.
            app: get("app").trim_end_matches('/').to_owned(),
            tc_url: get("tcUrl"),
            flash_ver: get("flashVer"),
            object_encoding: cmd
                .and_then(|c| c.get("objectEncoding"))
                .and_then(Value::as_number)
                .unwrap_or(0.0),
            fourcc_list,
            info_maps,
        };
        let app_name = info.app.split('?').next().unwrap_or_default();
        log_id!(
            debug,
            self.name(),
            "{}: connect: app '{app_name}', flashVer '{}', objectEncoding {}, fourCcList {:?}",
            self.config.peer,
            info.flash_ver,
            info.object_encoding,
            info.fourcc_list
        );
        if !self.config.application.is_empty() && app_name != self.config.application {
            let info_obj = amf0::obj(&[
                ("level", "error".into()),
                ("code", "NetConnection.Connect.Rejected".into()),
                ("description", "unknown application".into()),
            ]);
            self.send_command(
                CSID_COMMAND,
                0,
                &[
                    Value::from("_error"),
                    Value::Number(txn),
                    Value::Null,
                    info_obj,
                ],
            );
            return Err(Error::WrongApplication {
                app: app_name.to_owned(),
                served: self.config.application.clone(),
            });
        }
        if let Some(auth) = self.config.auth.clone() {
            let mut random = [0u8; 8];
            {
                use rand::RngExt;
                rand::rng().fill(&mut random[..]);
            }
            // The query carries the response and the challenges: only the user is logged.
            let user = info
                .app
                .split_once('?')
                .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("user=")))
                .map(str::to_owned);
            match auth.check(&info.app, &random) {
                super::auth::Verdict::Accept(user) => {
                    log_id!(
                        debug,
                        self.name(),
                        "{}: connect authenticated: user '{user}'",
                        self.config.peer
                    );
                    // The authentication query stays out of what is reported.
                    if let Some((app, _)) = info.app.split_once('?') {
                        info.app = app.to_owned();
                    }
                    if let Some((tc, _)) = info.tc_url.split_once('?') {
                        info.tc_url = tc.to_owned();
                    }
                }
                super::auth::Verdict::Refuse {
                    description,
                    reason,
                } => {
                    log_id!(
                        debug,
                        self.name(),
                        "{}: connect refused by authentication: {reason}{}",
                        self.config.peer,
                        user.as_ref()
                            .map(|u| format!(" (user '{u}')"))
                            .unwrap_or_default()
                    );
                    let info_obj = amf0::obj(&[
                        ("level", "error".into()),
                        ("code", "NetConnection.Connect.Rejected".into()),
                        ("description", description.into()),
                    ]);
                    self.send_command(
                        CSID_COMMAND,
                        0,
                        &[
                            Value::from("_error"),
                            Value::Number(txn),
                            Value::Null,
                            info_obj,
                        ],
                    );
                    return Err(Error::AuthRefused { reason, user });
                }
            }
        }
        let window = self.config.window_ack_size;
        self.control(msg_type::WINDOW_ACK_SIZE, &window.to_be_bytes());
        let mut bw = window.to_be_bytes().to_vec();
        bw.push(2);
        self.control(msg_type::SET_PEER_BANDWIDTH, &bw);
        let size = self.config.chunk_size.clamp(1, 0xff_ffff);
        self.control(msg_type::SET_CHUNK_SIZE, &size.to_be_bytes());
        self.enc.set_chunk_size(size);
        let props = amf0::obj(&[
            ("fmsVer", "FMS/3,5,7,7009".into()),
            ("capabilities", Value::Number(31.0)),
            ("mode", Value::Number(1.0)),
        ]);
        let mut status = vec![
            ("level".to_owned(), Value::from("status")),
            (
                "code".to_owned(),
                Value::from("NetConnection.Connect.Success"),
            ),
            (
                "description".to_owned(),
                Value::from("Connection succeeded."),
            ),
            (
                "objectEncoding".to_owned(),
                Value::Number(info.object_encoding),
            ),
        ];
        if !info.fourcc_list.is_empty() {
            // Enhanced RTMP: we take the FLV the client sends as it is.
            status.push((
                "fourCcList".to_owned(),
                Value::StrictArray(
                    info.fourcc_list
                        .iter()
                        .map(|s| Value::from(s.as_str()))
                        .collect(),
                ),
            ));
        }
        if info.info_maps {
            // What this server does with each codec: it decodes nothing itself and passes every
            // codec on to the pipeline (E-RTMP v2 FourCcInfoMask CanForward, for any FourCC).
            for key in ["videoFourCcInfoMap", "audioFourCcInfoMap"] {
                status.push((
                    key.to_owned(),
                    Value::Object(vec![(
                        "*".to_owned(),
                        Value::Number(f64::from(FOURCC_CAN_FORWARD)),
                    )]),
                ));
            }
        }
        self.result(txn, vec![props, Value::Object(status)]);
        log_id!(
            debug,
            self.name(),
            "{}: connect accepted: Window Acknowledgement Size {window}, Set Peer Bandwidth \
             {window} (dynamic), Set Chunk Size {size}, _result NetConnection.Connect.Success",
            self.config.peer
        );
        self.phase = Phase::Connected;
        self.connect = Some(info.clone());
        events.push(Event::Connected(info));
        Ok(())
    }
}

/// Script data as an FLV tag holds it: `onMetaData` and its array, with the `@setDataFrame`
/// wrapper publishers add removed. Other data messages are not media: None.
fn script_data(body: &Bytes) -> Result<Option<Bytes>, Error> {
    let values = amf0::decode_all(body)?;
    match values.first().and_then(Value::as_str) {
        Some("@setDataFrame") => {
            if values.get(1).and_then(Value::as_str) == Some("onMetaData") {
                Ok(Some(Bytes::from(amf0::encode_all(&values[1..]))))
            } else {
                Ok(None)
            }
        }
        Some("onMetaData") => Ok(Some(body.clone())),
        _ => Ok(None),
    }
}

/// The FLV tags inside an aggregate message (§7.1.6), timestamps moved so that the first one is
/// the message's.
fn split_aggregate(msg: &Message, events: &mut Vec<Event>) -> Result<(), Error> {
    let p = &msg.payload;
    let mut pos = 0usize;
    let mut first_ts: Option<u32> = None;
    while pos < p.len() {
        let Some(h) = p.get(pos..pos + 11) else {
            return Err(Error::Protocol(
                "aggregate message: truncated tag header".into(),
            ));
        };
        let kind = match h[0] {
            8 => Some(TagKind::Audio),
            9 => Some(TagKind::Video),
            18 => Some(TagKind::Script),
            _ => None,
        };
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let start = pos + 11;
        let Some(end) = start.checked_add(size).filter(|&e| e <= p.len()) else {
            return Err(Error::Protocol(
                "aggregate message: tag overruns the message".into(),
            ));
        };
        let base = *first_ts.get_or_insert(ts);
        if let Some(kind) = kind {
            events.push(Event::Media(Tag {
                kind,
                timestamp: msg.timestamp.wrapping_add(ts.wrapping_sub(base)),
                data: p.slice(start..end),
            }));
        }
        // PreviousTagSize follows each tag.
        pos = end + 4;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
