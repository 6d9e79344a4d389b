//! RTSP methods and sessions (RFC 2326 10, RFC 7826 13).
//!
//! Specifications: RFC 2326 §10.1-§10.10 (methods), §11 (status codes: 400, 404, 405, 454, 461,
//! 501, 503, 551, ...), §12.28 (Public), §12.29 (Range), §12.33 (RTP-Info), §12.37 (Session,
//! timeout), §12.39 (Transport); RFC 7826 §13, §17, §18.39, §18.40, §18.45, §18.49, §18.54.
//!
//! [`Shared::handle_request`] turns one parsed request into one response plus, for PLAY, the
//! work to do once the response is on its way (media must not overtake the PLAY response on an
//! interleaved connection). Access control ([`super::auth`]) comes first: the peer's address,
//! then the credentials (every method but OPTIONS, which gst-rtsp-server answers to anyone too),
//! then the application's hook. A session belongs to the connection and the user that made it:
//! to anyone else its id is unknown (454).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rtsp_types::{Method, Request, Response, StatusCode, Url, Version, headers};

use super::auth::{self, AccessRequest};
use super::conn::ConnOut;
use super::media::{
    AliveStamp, Dest, MulticastGroup, PushOutcome, StartGate, StartPoint, Stream, Target,
    multicast_socket,
};
use super::{ServerEvent, Shared};
use crate::rtsp::sdp::SessionDescription;
use crate::rtsp::transport::{LowerTransport, TransportSpec, parse_transports};

/// Methods a client may send to this server.
pub const PUBLIC_METHODS: &str =
    "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER";

/// How long a destination that found no keyframe in time waits for the next packet before the
/// PLAY answer goes out anyway.
const NEXT_PACKET_WAIT: Duration = Duration::from_millis(500);

/// A stream of a session that a PLAY starts.
struct Starting {
    id: usize,
    stream: Arc<Stream>,
    dest: Arc<Dest>,
    /// Where its start point is reported (unicast destinations added by this PLAY).
    gate: Option<Arc<StartGate>>,
}

/// One stream set up in a session.
pub struct SessionStream {
    pub stream: Arc<Stream>,
    pub dest: Arc<Dest>,
    pub transport: TransportSpec,
}

/// An RTSP session: the streams a client set up and whether they play.
pub struct Session {
    pub id: String,
    /// The connection that made it ([`ConnOut::id`]; for an HTTP tunnel that will be the GET
    /// connection's, whose output answers the POST connections' requests).
    pub conn_id: auth::ConnId,
    /// The user that made it (None when no users are configured).
    pub user: Option<String>,
    pub peer: SocketAddr,
    pub alive: Arc<AliveStamp>,
    pub timeout: Duration,
    pub playing: bool,
    /// A publisher's session on a record mount (its streams are the publisher's, not these).
    pub record: bool,
    pub streams: BTreeMap<usize, SessionStream>,
    pub created: Instant,
}

impl Session {
    /// Whether the connection and user of `ctx` made this session.
    fn belongs_to(&self, ctx: &ConnCtx) -> bool {
        self.conn_id == ctx.out.id && self.user == ctx.user
    }

    pub fn uses_tcp(&self) -> bool {
        self.streams
            .values()
            .any(|s| matches!(s.dest.target, Target::Tcp { .. }))
    }
}

/// The connection a request arrived on.
#[derive(Clone)]
pub struct ConnCtx {
    pub out: Arc<ConnOut>,
    pub local: SocketAddr,
    /// The user the request being handled authenticated as.
    pub user: Option<String>,
    /// What this connection set up, found without the server-wide sessions lock.
    pub setups: Arc<Mutex<ConnSetups>>,
}

/// The sessions a connection created and the interleaved channels its streams use. Entries of
/// ended sessions go stale and are pruned as they are met; both stay small (at most
/// `max_sessions_per_connection` sessions, 128 channel pairs).
#[derive(Default)]
pub struct ConnSetups {
    pub(super) sessions: Vec<String>,
    /// A record mount's interleaved channels (RTP and RTCP) → the publisher's stream.
    pub(super) record_channels: HashMap<u8, super::record::RecChannel>,
    /// RTCP channel → the destination and stream it reports on.
    channels: HashMap<u8, Channel>,
}

struct Channel {
    rtp: u8,
    dest: Weak<Dest>,
    stream: Weak<Stream>,
}

impl ConnSetups {
    /// The sessions this connection created that still exist.
    fn live_sessions(&mut self, conn: u64, sessions: &HashMap<String, Session>) -> usize {
        self.sessions
            .retain(|id| sessions.get(id).is_some_and(|s| s.conn_id == conn));
        self.sessions.len()
    }
}

impl ConnCtx {
    /// Whether a session this connection created still exists.
    pub fn has_session(&self, sessions: &HashMap<String, Session>) -> bool {
        let mut setups = self.setups.lock().unwrap();
        setups.live_sessions(self.out.id, sessions) > 0
    }

    /// Whether a publisher's streams are interleaved on this connection (a record mount).
    pub fn records_interleaved(&self) -> bool {
        !self.setups.lock().unwrap().record_channels.is_empty()
    }

    /// The destination and stream whose RTCP travels on interleaved `channel`.
    pub fn rtcp_channel(&self, channel: u8) -> Option<(Arc<Dest>, Arc<Stream>)> {
        let setups = self.setups.lock().unwrap();
        let c = setups.channels.get(&channel)?;
        Some((c.dest.upgrade()?, c.stream.upgrade()?))
    }
}

/// Work to do after the response has been queued.
pub enum After {
    Nothing,
    Play(String),
    /// Close the connection once the answer is out (a peer whose address is not allowed).
    Close,
}

/// What a request gets.
pub struct Answer {
    pub resp: Resp,
    /// The `WWW-Authenticate` values of a 401, sent as one header each.
    pub challenges: Vec<String>,
    pub after: After,
}

impl Answer {
    fn new(resp: Resp, after: After) -> Self {
        Answer {
            resp,
            challenges: Vec::new(),
            after,
        }
    }
}

/// A request refused by access control.
struct Denial {
    status: StatusCode,
    why: String,
    /// A 401 whose credentials were right but whose nonce is not usable.
    stale: bool,
    close: bool,
}

impl Denial {
    fn forbidden(why: String) -> Self {
        Denial {
            status: StatusCode::Forbidden,
            why,
            stale: false,
            close: false,
        }
    }
}

/// What a request URL names, relative to the mount point.
enum Target_ {
    Presentation,
    Stream(usize),
}

type Resp = Response<Vec<u8>>;

/// A refused request: the status answered, and why (for the log).
pub struct Refusal {
    status: StatusCode,
    why: Cow<'static, str>,
}

impl From<StatusCode> for Refusal {
    fn from(status: StatusCode) -> Self {
        Refusal {
            status,
            why: Cow::Borrowed(""),
        }
    }
}

pub(super) fn refuse(status: StatusCode, why: impl Into<Cow<'static, str>>) -> Refusal {
    Refusal {
        status,
        why: why.into(),
    }
}

type Handled = Result<(Resp, After), Refusal>;

fn response(status: StatusCode, cseq: Option<&str>) -> rtsp_types::ResponseBuilder {
    let mut b = Response::builder(Version::V1_0, status);
    if let Some(c) = cseq {
        b = b.header(headers::CSEQ, c);
    }
    b
}

/// An error response with the CSeq echoed.
pub fn error_response(status: StatusCode, cseq: Option<&str>, server: &str) -> Resp {
    response(status, cseq)
        .header(headers::SERVER, server)
        .build(Vec::new())
}

impl Shared {
    pub(super) async fn handle_request(
        self: &Arc<Self>,
        ctx: &ConnCtx,
        req: Request<Vec<u8>>,
    ) -> Answer {
        let cseq = req.header(&headers::CSEQ).map(|v| v.as_str().to_owned());
        let cseq = cseq.as_deref();
        let server = self.config.server_name.as_str();
        let peer = ctx.out.peer;
        let method: &str = req.method().into();
        // Access control before anything else is looked at.
        let ctx = &match self.admit(ctx, &req, method) {
            Ok(user) => ConnCtx {
                user,
                ..ctx.clone()
            },
            Err(denial) => return self.deny(peer, method, cseq, denial),
        };
        if cseq.is_none() {
            sdebug!(&*self.name, "{peer}: {method} refused: no CSeq header");
            return Answer::new(
                error_response(StatusCode::BadRequest, None, server),
                After::Nothing,
            );
        }
        if req.version() != Version::V1_0 {
            sdebug!(
                &*self.name,
                "{peer}: {method} refused: RTSP version {:?} is not supported",
                req.version()
            );
            return Answer::new(
                error_response(StatusCode::RTSPVersionNotSupported, cseq, server),
                After::Nothing,
            );
        }
        if let Some(require) = req.header(&headers::REQUIRE) {
            // We implement no option tags (RFC 2326 12.32).
            sdebug!(
                &*self.name,
                "{peer}: {method} refused: requires option(s) '{}', none is supported",
                require.as_str()
            );
            let resp = response(StatusCode::OptionNotSupported, cseq)
                .header(headers::SERVER, server)
                .header(headers::UNSUPPORTED, require.as_str())
                .build(Vec::new());
            return Answer::new(resp, After::Nothing);
        }
        // Any request naming a session of its own keeps it alive.
        let session_id = req
            .header(&headers::SESSION)
            .map(|v| session_id_of(v.as_str()));
        if let Some(id) = &session_id
            && let Some(s) = self.sessions.lock().unwrap().get(id)
            && s.belongs_to(ctx)
        {
            s.alive.touch();
        }

        if self.record.is_some() {
            return self.handle_record_request(ctx, &req, cseq, session_id.as_deref());
        }
        let result = match req.method() {
            Method::Options => Ok((self.options(cseq), After::Nothing)),
            Method::Describe => self.describe(ctx, &req, cseq).await,
            Method::Setup => self.setup(ctx, &req, cseq, session_id.as_deref()),
            Method::Play => self.play(ctx, &req, cseq, session_id.as_deref()).await,
            Method::Pause => self.pause(ctx, &req, cseq, session_id.as_deref()),
            Method::Teardown => self.teardown(ctx, &req, cseq, session_id.as_deref()),
            Method::GetParameter => self.get_parameter(ctx, &req, cseq, session_id.as_deref()),
            Method::SetParameter => self.set_parameter(ctx, &req, cseq, session_id.as_deref()),
            Method::Announce | Method::Record | Method::Redirect | Method::PlayNotify => {
                Err(refuse(
                    StatusCode::MethodNotAllowed,
                    "a client's method (we only serve)",
                ))
            }
            Method::Extension(_) => Err(refuse(StatusCode::NotImplemented, "unknown method")),
        };
        self.answer(peer, method, cseq, result, PUBLIC_METHODS)
    }

    /// A record mount's methods; DESCRIBE, PLAY and PAUSE are 405.
    fn handle_record_request(
        self: &Arc<Self>,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Answer {
        use super::record::RECORD_METHODS;
        let peer = ctx.out.peer;
        let method: &str = req.method().into();
        let nothing = |r: Result<Resp, Refusal>| r.map(|resp| (resp, After::Nothing));
        let result = match req.method() {
            Method::Options => Ok((
                self.ok(cseq)
                    .header(headers::PUBLIC, RECORD_METHODS)
                    .build(Vec::new()),
                After::Nothing,
            )),
            Method::Announce => nothing(self.announce(ctx, req, cseq)),
            Method::Setup => nothing(self.record_setup(ctx, req, cseq, session_id)),
            Method::Record => nothing(self.record(ctx, req, cseq, session_id)),
            Method::Teardown => self.teardown(ctx, req, cseq, session_id),
            Method::GetParameter => self.get_parameter(ctx, req, cseq, session_id),
            Method::SetParameter => self.set_parameter(ctx, req, cseq, session_id),
            Method::Describe
            | Method::Play
            | Method::Pause
            | Method::Redirect
            | Method::PlayNotify => Err(refuse(
                StatusCode::MethodNotAllowed,
                "this mount records: it takes publishers, not players",
            )),
            Method::Extension(_) => Err(refuse(StatusCode::NotImplemented, "unknown method")),
        };
        self.answer(peer, method, cseq, result, RECORD_METHODS)
    }

    /// The answer to a handled request, or to a refused one (logged with why).
    fn answer(
        &self,
        peer: SocketAddr,
        method: &str,
        cseq: Option<&str>,
        result: Handled,
        allow: &str,
    ) -> Answer {
        let server = self.config.server_name.as_str();
        match result {
            Ok((resp, after)) => Answer::new(resp, after),
            Err(Refusal { status, why }) => {
                let code = u16::from(status);
                if why.is_empty() {
                    sdebug!(&*self.name, "{peer}: {method} refused: {code} {status}");
                } else {
                    sdebug!(
                        &*self.name,
                        "{peer}: {method} refused: {code} {status}: {why}"
                    );
                }
                let mut b = response(status, cseq).header(headers::SERVER, server);
                if status == StatusCode::MethodNotAllowed {
                    b = b.header(headers::ALLOW, allow);
                }
                Answer::new(b.build(Vec::new()), After::Nothing)
            }
        }
    }

    /// The answer to a request refused by access control: 401 with the challenges, or 403.
    fn deny(&self, peer: SocketAddr, method: &str, cseq: Option<&str>, d: Denial) -> Answer {
        let code = u16::from(d.status);
        sdebug!(
            &*self.name,
            "{peer}: {method} refused: {code} {}: {}",
            d.status,
            d.why
        );
        let challenges = if d.status == StatusCode::Unauthorized {
            self.access.challenges(d.stale)
        } else {
            Vec::new()
        };
        for c in &challenges {
            strace!(&*self.name, "{peer}: WWW-Authenticate: {c}");
        }
        Answer {
            resp: error_response(d.status, cseq, &self.config.server_name),
            challenges,
            after: if d.close {
                After::Close
            } else {
                After::Nothing
            },
        }
    }

    /// Access control for one request: the user it authenticated as, or why it is refused.
    fn admit(
        &self,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        method: &str,
    ) -> Result<Option<String>, Denial> {
        let peer = ctx.out.peer;
        if !self.access.address_allowed(peer.ip()) {
            return Err(Denial {
                close: true,
                ..Denial::forbidden(format!(
                    "address {} is not in allowed-addresses; closing the connection",
                    peer.ip()
                ))
            });
        }
        let options = *req.method() == Method::Options;
        let authorization = req.header(&headers::AUTHORIZATION).map(|v| v.as_str());
        let mut user = None;
        if self.access.requires_credentials() && (!options || authorization.is_some()) {
            let checked =
                self.access
                    .authenticate(ctx.out.id, method, req.request_uri(), authorization);
            match checked {
                Ok(a) => {
                    sdebug!(
                        &*self.name,
                        "{peer}: {method} authenticated: user '{}' ({})",
                        a.user,
                        a.scheme
                    );
                    user = Some(a.user);
                }
                Err(denied) if options => sdebug!(
                    &*self.name,
                    "{peer}: OPTIONS answered without a user: {denied}"
                ),
                Err(denied) => {
                    return Err(Denial {
                        status: StatusCode::Unauthorized,
                        why: denied.to_string(),
                        stale: denied.stale(),
                        close: false,
                    });
                }
            }
        }
        if options {
            return Ok(user);
        }
        let path = req
            .request_uri()
            .map_or_else(|| "*".to_owned(), auth::path_and_query);
        let request = AccessRequest {
            user: user.as_deref(),
            method,
            path: &path,
            peer,
        };
        if !self.access.authorize(&request) {
            return Err(Denial::forbidden(match &user {
                Some(u) => format!("the authorize handler denied user '{u}'"),
                None => "the authorize handler denied it".into(),
            }));
        }
        Ok(user)
    }

    pub(super) fn ok(&self, cseq: Option<&str>) -> rtsp_types::ResponseBuilder {
        response(StatusCode::Ok, cseq).header(headers::SERVER, self.config.server_name.as_str())
    }

    /// 200 with the Session header when the request named a (valid) session.
    fn ok_in_session(
        &self,
        cseq: Option<&str>,
        session_id: Option<&str>,
        timeout: Option<u64>,
    ) -> rtsp_types::ResponseBuilder {
        let b = self.ok(cseq);
        match (session_id, timeout) {
            (Some(id), Some(t)) => b.header(headers::SESSION, session_header(id, t)),
            _ => b,
        }
    }

    fn options(&self, cseq: Option<&str>) -> Resp {
        self.ok(cseq)
            .header(headers::PUBLIC, PUBLIC_METHODS)
            .build(Vec::new())
    }

    /// Maps a request URL onto the presentation or one of its streams.
    fn resolve(&self, req: &Request<Vec<u8>>) -> Result<Target_, Refusal> {
        let url = req
            .request_uri()
            .ok_or_else(|| refuse(StatusCode::NotFound, "no request URL"))?;
        let path = url.path().trim_end_matches('/');
        let mount = self.config.mount_point.trim_end_matches('/');
        let rest = path.strip_prefix(mount).ok_or_else(|| {
            refuse(
                StatusCode::NotFound,
                format!(
                    "path '{}' is not under the mount point '{}'",
                    url.path(),
                    self.config.mount_point
                ),
            )
        })?;
        if rest.is_empty() {
            return Ok(Target_::Presentation);
        }
        // Tolerate `//stream=0` from clients that join a slash-terminated base with `/control`.
        let id = rest
            .trim_start_matches('/')
            .strip_prefix("stream=")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                refuse(
                    StatusCode::NotFound,
                    format!("'{rest}' names no stream of mount point '{mount}'"),
                )
            })?;
        if self.streams.read().unwrap().contains_key(&id) {
            Ok(Target_::Stream(id))
        } else {
            Err(refuse(
                StatusCode::NotFound,
                format!("there is no stream {id}"),
            ))
        }
    }

    /// The request's URL with a trailing slash; `rtsps://` on a TLS port, also when the client
    /// wrote `rtsp://` (stock rtspsrc does on its TLS connections).
    fn content_base(&self, url: &Url) -> String {
        let mut base = url.to_string();
        if self.config.tls.is_some() && url.scheme() == "rtsp" {
            base.insert(4, 's');
        }
        if !base.ends_with('/') {
            base.push('/');
        }
        base
    }

    /// The SDP of the presentation, once every stream knows its format.
    pub(super) fn sdp(&self, origin: IpAddr) -> Option<String> {
        let streams = self.streams.read().unwrap();
        if streams.is_empty() {
            return None;
        }
        let mut media = Vec::with_capacity(streams.len());
        for (id, stream) in streams.iter() {
            // Payloaders complete their caps (parameter sets) by the first packet.
            if stream.clock().packets == 0 {
                return None;
            }
            let mut m = stream.description()?;
            m.control = format!("stream={id}");
            m.port = 0;
            m.multicast = None;
            media.push(m);
        }
        let desc = SessionDescription {
            session_name: self.config.session_name.clone(),
            origin_address: origin.to_string(),
            session_id: self.sdp_session_id,
            session_version: self.media_version.borrow().to_owned().max(1),
            range: Some("npt=now-".into()),
            media,
        };
        Some(desc.to_sdp_string())
    }

    async fn describe(
        self: &Arc<Self>,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
    ) -> Handled {
        match self.resolve(req)? {
            Target_::Presentation => {}
            Target_::Stream(id) => {
                return Err(refuse(
                    StatusCode::NotFound,
                    format!("DESCRIBE of stream {id}: only the presentation is described"),
                ));
            }
        }
        let url = req.request_uri().ok_or(StatusCode::NotFound)?;
        // Wait (bounded) until every input has negotiated caps and produced its codec config.
        let deadline = tokio::time::Instant::now() + self.config.describe_timeout;
        let mut version = self.media_version.subscribe();
        let sdp = loop {
            if let Some(sdp) = self.sdp(ctx.local.ip()) {
                break sdp;
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(refuse(
                        StatusCode::ServiceUnavailable,
                        format!(
                            "the inputs have not all produced a format and a first packet within \
                             {:?} ({} stream(s))",
                            self.config.describe_timeout,
                            self.streams.read().unwrap().len()
                        ),
                    ));
                }
            }
        };
        self.set_conn_base(ctx.out.id, self.content_base(url));
        let resp = self
            .ok(cseq)
            .header(headers::CONTENT_BASE, self.content_base(url))
            .header(headers::CONTENT_TYPE, "application/sdp")
            .build(sdp.into_bytes());
        Ok((resp, After::Nothing))
    }

    fn setup(
        self: &Arc<Self>,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Handled {
        let peer = ctx.out.peer;
        let stream_id = match self.resolve(req)? {
            Target_::Stream(id) => id,
            // Some clients SETUP the aggregate URL of a single-stream presentation.
            Target_::Presentation => {
                let streams = self.streams.read().unwrap();
                match streams.keys().next() {
                    Some(id) if streams.len() == 1 => *id,
                    _ => {
                        return Err(refuse(
                            StatusCode::AggregateOperationNotAllowed,
                            format!(
                                "SETUP of the presentation URL, which has {} streams",
                                streams.len()
                            ),
                        ));
                    }
                }
            }
        };
        let stream = self
            .streams
            .read()
            .unwrap()
            .get(&stream_id)
            .cloned()
            .ok_or(StatusCode::NotFound)?;
        let header = req
            .header(&headers::TRANSPORT)
            .ok_or_else(|| refuse(StatusCode::UnsupportedTransport, "no Transport header"))?;
        let transports = parse_transports(header.as_str()).map_err(|e| {
            refuse(
                StatusCode::UnsupportedTransport,
                format!("Transport '{}' does not parse: {}", header.as_str(), e.0),
            )
        })?;

        let mut sessions = self.sessions.lock().unwrap();
        let existing = match session_id {
            Some(id) => {
                let session = sessions.get(id).ok_or_else(|| no_session(id))?;
                check_owner(session, ctx)?;
                Some(session)
            }
            None => None,
        };
        if let Some(s) = existing
            && s.playing
        {
            // Adding streams to a playing session is not supported (RFC 2326 10.4).
            return Err(refuse(
                StatusCode::MethodNotValidInThisState,
                format!("session {} is playing: streams are added before PLAY", s.id),
            ));
        }
        let mut setups = ctx.setups.lock().unwrap();
        if existing.is_none() {
            // 503 as gst-rtsp-server answers when its session pool is full.
            let (max, per_conn) = (
                self.config.max_sessions,
                self.config.max_sessions_per_connection,
            );
            let why = if max > 0 && sessions.len() >= max {
                Some(format!("max-sessions ({max}) reached"))
            } else if setups.live_sessions(ctx.out.id, &sessions) >= per_conn {
                Some(format!(
                    "max-sessions-per-connection ({per_conn}) reached on this connection"
                ))
            } else {
                None
            };
            if let Some(why) = why {
                self.counters
                    .sessions_refused
                    .fetch_add(1, Ordering::Relaxed);
                return Err(refuse(StatusCode::ServiceUnavailable, why));
            }
        }
        let alive = existing.map_or_else(
            || Arc::new(AliveStamp::new(self.epoch)),
            |s| s.alive.clone(),
        );
        let id = session_id.map_or_else(new_session_id, str::to_owned);
        // Channels are the connection's: in use by any of its streams but the one set up again.
        let used_channels: Vec<u8> = setups
            .channels
            .values()
            .filter_map(|c| Some((c.rtp, c.dest.upgrade()?, c.stream.upgrade()?)))
            .filter(|(_, dest, stream)| dest.session != id || stream.id != stream_id)
            .map(|(rtp, ..)| rtp)
            .collect();

        let (target, reply) = self
            .choose_transport(ctx, &stream, &transports, &used_channels)
            .map_err(|why| {
                refuse(
                    StatusCode::UnsupportedTransport,
                    format!("{why} (Transport: {})", header.as_str()),
                )
            })?;
        let created = !sessions.contains_key(&id);
        let dest = Arc::new(Dest::new(id.clone(), target, alive.clone()));

        if created {
            setups.sessions.push(id.clone());
        }
        if let Some((rtp, rtcp)) = reply.interleaved {
            setups.channels.insert(
                rtcp,
                Channel {
                    rtp,
                    dest: Arc::downgrade(&dest),
                    stream: Arc::downgrade(&stream),
                },
            );
        }
        drop(setups);
        let session = sessions.entry(id.clone()).or_insert_with(|| Session {
            id: id.clone(),
            conn_id: ctx.out.id,
            user: ctx.user.clone(),
            peer: ctx.out.peer,
            alive,
            timeout: self.config.session_timeout,
            playing: false,
            record: false,
            streams: BTreeMap::new(),
            created: Instant::now(),
        });
        session.streams.insert(
            stream_id,
            SessionStream {
                stream: stream.clone(),
                dest: dest.clone(),
                transport: reply.clone(),
            },
        );
        let timeout = session.timeout.as_secs();
        let count = sessions.len();
        drop(sessions);
        if created {
            sdebug!(
                &*self.name,
                "{peer}: session {id} created (timeout {timeout} s, {count} session(s))"
            );
        }
        sdebug!(
            &*self.name,
            "{peer}: session {id} stream {stream_id}: sending over {} (Transport: {reply})",
            dest.target
        );

        let resp = self
            .ok(cseq)
            .header(headers::TRANSPORT, reply.to_string())
            .header(headers::SESSION, session_header(&id, timeout))
            .build(Vec::new());
        Ok((resp, After::Nothing))
    }

    /// Picks the first transport alternative that the configuration allows.
    fn choose_transport(
        &self,
        ctx: &ConnCtx,
        stream: &Arc<Stream>,
        transports: &[TransportSpec],
        used_channels: &[u8],
    ) -> Result<(Target, TransportSpec), String> {
        let ssrc = stream.clock().ssrc;
        for t in transports {
            match (t.lower, t.multicast) {
                (LowerTransport::Tcp, _) if self.config.protocols.tcp => {
                    let channels = match t.interleaved {
                        Some((a, b)) if !used_channels.contains(&a) => (a, b),
                        _ => {
                            let base = (0u8..=254)
                                .step_by(2)
                                .find(|c| !used_channels.contains(c))
                                .ok_or("every interleaved channel is in use")?;
                            (base, base + 1)
                        }
                    };
                    let mut reply = TransportSpec::tcp_interleaved(channels);
                    reply.profile = t.profile;
                    reply.ssrc = Some(ssrc);
                    reply.mode = None;
                    let target = Target::Tcp {
                        conn: ctx.out.clone(),
                        channel: channels.0,
                    };
                    return Ok((target, reply));
                }
                (LowerTransport::Udp, false) if self.config.protocols.udp => {
                    let Some((rtp_port, rtcp_port)) = t.client_port else {
                        continue;
                    };
                    // Unicast goes back to the peer of the RTSP connection only: honouring a
                    // `destination` would make the server a traffic reflector.
                    let ip = ctx.out.peer.ip();
                    let mut reply = TransportSpec::udp_unicast();
                    reply.profile = t.profile;
                    reply.client_port = Some((rtp_port, rtcp_port));
                    reply.server_port = Some(stream.server_ports);
                    reply.ssrc = Some(ssrc);
                    let target = Target::Udp {
                        rtp: SocketAddr::new(ip, rtp_port),
                        rtcp: SocketAddr::new(ip, rtcp_port),
                    };
                    return Ok((target, reply));
                }
                (LowerTransport::Udp, true) if self.config.protocols.udp_multicast => {
                    let (address, port, ttl) = self.multicast_group(stream)?;
                    let mut reply = TransportSpec::udp_multicast();
                    reply.profile = t.profile;
                    reply.destination = Some(address.to_string());
                    reply.port = Some((port, port + 1));
                    reply.ttl = Some(ttl);
                    reply.ssrc = Some(ssrc);
                    let target = Target::Multicast {
                        rtp: SocketAddr::new(IpAddr::V4(address), port),
                        rtcp: SocketAddr::new(IpAddr::V4(address), port + 1),
                    };
                    return Ok((target, reply));
                }
                _ => continue,
            }
        }
        let p = self.config.protocols;
        Err(format!(
            "no alternative the server allows (udp {}, udp-mcast {}, tcp {}; UDP unicast needs \
             client_port)",
            on_off(p.udp),
            on_off(p.udp_multicast),
            on_off(p.tcp)
        ))
    }

    /// The stream's multicast group, allocated from the configured range on first use.
    fn multicast_group(&self, stream: &Arc<Stream>) -> Result<(Ipv4Addr, u16, u8), String> {
        let mut group = stream.multicast.lock().unwrap();
        if let Some(g) = group.as_ref() {
            return Ok((g.address, g.port, g.ttl));
        }
        let mc = &self.config.multicast;
        let span = u32::from(mc.address_max)
            .checked_sub(u32::from(mc.address_min))
            .ok_or("the multicast address range is empty")?
            + 1;
        let address = Ipv4Addr::from(u32::from(mc.address_min) + (stream.id as u32 % span));
        let port = u16::try_from(stream.id * 2)
            .ok()
            .and_then(|off| mc.port_min.checked_add(off))
            .filter(|p| *p < mc.port_max)
            .ok_or_else(|| {
                format!(
                    "no multicast port for stream {} in {}-{}",
                    stream.id, mc.port_min, mc.port_max
                )
            })?;
        let socket = multicast_socket(mc.ttl, mc.iface)
            .map_err(|e| format!("cannot make the multicast socket: {e}"))?;
        *stream.multicast_socket.lock().unwrap() = Some(Arc::new(socket));
        let dest = Arc::new(Dest::new(
            "multicast".into(),
            Target::Multicast {
                rtp: SocketAddr::new(IpAddr::V4(address), port),
                rtcp: SocketAddr::new(IpAddr::V4(address), port + 1),
            },
            Arc::new(AliveStamp::new(self.epoch)),
        ));
        *group = Some(MulticastGroup {
            address,
            port,
            ttl: mc.ttl,
            dest,
            players: 0,
        });
        sdebug!(
            &*self.name,
            "stream {}: multicast group {address}:{port}-{} ttl {} allocated",
            stream.id,
            port + 1,
            mc.ttl
        );
        Ok((address, port, mc.ttl))
    }

    async fn play(
        self: &Arc<Self>,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Handled {
        let peer = ctx.out.peer;
        let target = self.resolve(req)?;
        let id = session_id.ok_or_else(no_session_header)?;
        let base = req
            .request_uri()
            .map(|url| self.content_base(url))
            .unwrap_or_default();
        let base = match target {
            // A per-stream URL names the stream itself; its base is the presentation.
            Target_::Stream(_) => base
                .trim_end_matches('/')
                .rsplit_once('/')
                .map(|(b, _)| format!("{b}/"))
                .unwrap_or(base),
            Target_::Presentation => base,
        };
        let (mut starting, begins, timeout) = {
            let mut sessions = self.sessions.lock().unwrap();
            let session = owned(&mut sessions, id, ctx)?;
            if session.streams.is_empty() {
                return Err(refuse(
                    StatusCode::MethodNotValidInThisState,
                    format!("session {id} has no stream set up"),
                ));
            }
            if let Target_::Stream(sid) = target
                && session.streams.len() > 1
            {
                return Err(refuse(
                    StatusCode::OnlyAggregateOperationAllowed,
                    format!(
                        "PLAY of stream {sid} in session {id} of {} streams",
                        session.streams.len()
                    ),
                ));
            }
            let begins = !session.playing;
            session.playing = true;
            let starting: Vec<Starting> = session
                .streams
                .iter()
                .map(|(sid, st)| Starting {
                    id: *sid,
                    stream: st.stream.clone(),
                    dest: st.dest.clone(),
                    gate: None,
                })
                .collect();
            (starting, begins, session.timeout.as_secs())
        };
        let waited = Instant::now();
        if begins {
            let mut keyframes = Vec::new();
            for s in starting.iter_mut() {
                let outcome = match &s.dest.target {
                    Target::Multicast { .. } => join_multicast(&s.stream),
                    _ => {
                        let (gate, outcome) = s.stream.add_pending(s.dest.clone());
                        s.gate = Some(gate);
                        outcome
                    }
                };
                if outcome.want_keyframe {
                    keyframes.push(s.id);
                }
            }
            for stream in keyframes {
                sdebug!(
                    &*self.name,
                    "stream {stream}: asking upstream for a keyframe: session {id} of {peer} \
                     joins"
                );
                (self.events)(ServerEvent::KeyframeRequest { stream });
            }
            self.wait_for_start_points(peer, id, &starting).await;
        }

        let now = Instant::now();
        let mut rtp_info = String::new();
        for s in &starting {
            if !rtp_info.is_empty() {
                rtp_info.push(',');
            }
            let _ = write!(rtp_info, "url={base}stream={}", s.id);
            // Exact for unicast destinations that found their start; otherwise (multicast, a
            // PLAY of a playing session, a stream that sent nothing in time) the next packet
            // as far as can be told.
            let start = s.gate.as_ref().and_then(|g| g.get()).or_else(|| {
                let clock = s.stream.clock();
                clock
                    .rtptime_at(now, s.stream.clock_rate())
                    .map(|rtptime| StartPoint {
                        seq: clock.last_seq.wrapping_add(1),
                        rtptime,
                    })
            });
            if let Some(StartPoint { seq, rtptime }) = start {
                let _ = write!(rtp_info, ";seq={seq};rtptime={rtptime}");
            }
        }
        // Torn down or expired while waiting: its destinations are gone already.
        if !self.sessions.lock().unwrap().contains_key(id) {
            return Err(refuse(
                StatusCode::SessionNotFound,
                format!("session {id} ended while PLAY waited for its start"),
            ));
        }
        if begins {
            sdebug!(
                &*self.name,
                "{peer}: session {id} plays after {:.1?} waiting for its start; RTP-Info: \
                 {rtp_info}",
                waited.elapsed()
            );
        } else {
            sdebug!(
                &*self.name,
                "{peer}: session {id} already plays; RTP-Info: {rtp_info}"
            );
        }
        let resp = self
            .ok(cseq)
            .header(headers::RANGE, "npt=now-")
            .header(headers::RTP_INFO, rtp_info)
            .header(headers::SESSION, session_header(id, timeout))
            .build(Vec::new());
        let after = if begins {
            After::Play(id.to_owned())
        } else {
            After::Nothing
        };
        Ok((resp, after))
    }

    /// Waits (bounded) until every pending destination knows its first packet: video ones
    /// wait for a keyframe up to `play_keyframe_wait`, then take the next packet instead.
    async fn wait_for_start_points(&self, peer: SocketAddr, id: &str, starting: &[Starting]) {
        let wait = self.config.play_keyframe_wait;
        let deadline = tokio::time::Instant::now() + wait;
        for s in starting {
            if let Some(gate) = &s.gate {
                gate.wait_until(deadline).await;
            }
        }
        let late: Vec<&Starting> = starting
            .iter()
            .filter(|s| s.gate.as_ref().is_some_and(|g| g.get().is_none()))
            .collect();
        if late.is_empty() {
            return;
        }
        for s in &late {
            sdebug!(
                &*self.name,
                "{peer}: session {id} stream {}: no keyframe within {wait:?}, starting at the \
                 next packet",
                s.id
            );
            s.stream.start_anywhere(&s.dest);
        }
        let deadline = tokio::time::Instant::now() + NEXT_PACKET_WAIT;
        for s in &late {
            if let Some(gate) = &s.gate
                && gate.wait_until(deadline).await.is_none()
            {
                sdebug!(
                    &*self.name,
                    "{peer}: session {id} stream {}: no packet within {:?} more; RTP-Info \
                     guesses its next packet",
                    s.id,
                    NEXT_PACKET_WAIT
                );
            }
        }
    }

    /// Starts media for a session whose PLAY response has been queued: the pending
    /// destinations send what they buffered since their start point and go live.
    pub(super) fn start_playing(&self, id: &str) {
        let sessions = self.sessions.lock().unwrap();
        let Some(session) = sessions.get(id) else {
            return;
        };
        for (sid, st) in &session.streams {
            if matches!(st.dest.target, Target::Multicast { .. }) {
                continue;
            }
            let Some(a) = st.stream.activate(&st.dest) else {
                continue;
            };
            if a.dropped > 0 || !a.sent {
                sdebug!(
                    &*self.name,
                    "{}: session {id} stream {sid}: of the {} packets buffered since its start, \
                     {} did not fit{}",
                    session.peer,
                    a.packets as u64 + a.dropped,
                    a.dropped,
                    if a.sent {
                        ""
                    } else {
                        " and the client's queue refused the rest"
                    }
                );
            }
        }
    }

    fn pause(
        &self,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Handled {
        self.resolve(req)?;
        let id = session_id.ok_or_else(no_session_header)?;
        let mut sessions = self.sessions.lock().unwrap();
        let session = owned(&mut sessions, id, ctx)?;
        if session.playing {
            session.playing = false;
            for st in session.streams.values() {
                stop_stream(st);
            }
            sdebug!(&*self.name, "{}: session {id} paused", ctx.out.peer);
        }
        let timeout = session.timeout.as_secs();
        drop(sessions);
        let resp = self
            .ok(cseq)
            .header(headers::SESSION, session_header(id, timeout))
            .build(Vec::new());
        Ok((resp, After::Nothing))
    }

    fn teardown(
        &self,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Handled {
        let peer = ctx.out.peer;
        let target = self.resolve(req)?;
        let id = session_id.ok_or_else(no_session_header)?;
        let mut sessions = self.sessions.lock().unwrap();
        let session = owned(&mut sessions, id, ctx)?;
        let mut builder = self.ok(cseq);
        match target {
            Target_::Stream(sid) if session.streams.len() > 1 => {
                // Per-stream teardown (RFC 7826 13.7): the session stays with its other streams.
                let st = session.streams.remove(&sid).ok_or_else(|| {
                    refuse(
                        StatusCode::NotFound,
                        format!("stream {sid} is not set up in session {id}"),
                    )
                })?;
                if session.playing {
                    stop_stream(&st);
                }
                sdebug!(
                    &*self.name,
                    "{peer}: session {id} stream {sid} torn down; {} stream(s) remain",
                    session.streams.len()
                );
                builder = builder.header(
                    headers::SESSION,
                    session_header(id, session.timeout.as_secs()),
                );
            }
            _ => {
                if let Some(session) = sessions.remove(id) {
                    sdebug!(
                        &*self.name,
                        "{peer}: session {id} torn down by the client after {:.1?}",
                        session.created.elapsed()
                    );
                    end_session(session);
                    drop(sessions);
                    // Its publisher leaves with it (after the sessions lock: the publisher's
                    // lock is taken first elsewhere).
                    self.record_session_ended(id, super::record::LeftReason::Teardown);
                }
            }
        }
        Ok((builder.build(Vec::new()), After::Nothing))
    }

    fn get_parameter(
        &self,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Handled {
        if req.request_uri().is_some() {
            self.resolve(req)?;
        }
        let timeout = self.check_session(ctx, session_id)?;
        let body = String::from_utf8_lossy(req.body());
        let mut answer = String::new();
        for name in parameter_names(&body) {
            let value = match name.to_ascii_lowercase().as_str() {
                "session-timeout" => timeout.map_or_else(
                    || self.config.session_timeout.as_secs().to_string(),
                    |t| t.to_string(),
                ),
                "clients" => self.sessions.lock().unwrap().len().to_string(),
                "uptime" => self.epoch.elapsed().as_secs().to_string(),
                _ => {
                    return Err(refuse(
                        StatusCode::ParameterNotUnderstood,
                        format!("unknown parameter '{name}'"),
                    ));
                }
            };
            let _ = write!(answer, "{name}: {value}\r\n");
        }
        let mut b = self.ok_in_session(cseq, session_id, timeout);
        if !answer.is_empty() {
            b = b.header(headers::CONTENT_TYPE, "text/parameters");
        }
        Ok((b.build(answer.into_bytes()), After::Nothing))
    }

    fn set_parameter(
        &self,
        ctx: &ConnCtx,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Handled {
        if req.request_uri().is_some() {
            self.resolve(req)?;
        }
        let timeout = self.check_session(ctx, session_id)?;
        // No parameter is settable: any named one is not understood (RFC 2326 10.9).
        if let Some(name) = parameter_names(&String::from_utf8_lossy(req.body())).next() {
            return Err(refuse(
                StatusCode::ParameterNotUnderstood,
                format!("no parameter is settable ('{name}')"),
            ));
        }
        let b = self.ok_in_session(cseq, session_id, timeout);
        Ok((b.build(Vec::new()), After::Nothing))
    }

    /// 454 for a named session that does not exist or is not the caller's; its timeout
    /// otherwise.
    fn check_session(
        &self,
        ctx: &ConnCtx,
        session_id: Option<&str>,
    ) -> Result<Option<u64>, Refusal> {
        match session_id {
            None => Ok(None),
            Some(id) => owned(&mut self.sessions.lock().unwrap(), id, ctx)
                .map(|s| Some(s.timeout.as_secs())),
        }
    }
}

/// The session `id` if the caller made it. Someone else's session is answered as a missing one
/// (454), so that its id can be neither used nor probed.
fn owned<'s>(
    sessions: &'s mut HashMap<String, Session>,
    id: &str,
    ctx: &ConnCtx,
) -> Result<&'s mut Session, Refusal> {
    let session = sessions.get_mut(id).ok_or_else(|| no_session(id))?;
    check_owner(session, ctx)?;
    Ok(session)
}

fn check_owner(session: &Session, ctx: &ConnCtx) -> Result<(), Refusal> {
    if session.belongs_to(ctx) {
        return Ok(());
    }
    Err(refuse(
        StatusCode::SessionNotFound,
        format!(
            "session {} belongs to connection {} of {} (user {})",
            session.id,
            session.conn_id,
            session.peer,
            session.user.as_deref().unwrap_or("none")
        ),
    ))
}

fn no_session(id: &str) -> Refusal {
    refuse(
        StatusCode::SessionNotFound,
        format!("no session {id} (never created, expired or torn down)"),
    )
}

fn no_session_header() -> Refusal {
    refuse(StatusCode::SessionNotFound, "no Session header")
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// A multicast client starts playing: the group's destination is added with the first one.
/// Multicast clients join a group in mid-stream, so their RTP-Info is the best guess.
fn join_multicast(stream: &Stream) -> PushOutcome {
    let mut group = stream.multicast.lock().unwrap();
    match group.as_mut() {
        Some(g) => {
            g.players += 1;
            if g.players == 1 {
                stream.add_dest(g.dest.clone())
            } else {
                PushOutcome::default()
            }
        }
        None => PushOutcome::default(),
    }
}

/// Stops sending one stream of a session.
fn stop_stream(st: &SessionStream) {
    match &st.dest.target {
        Target::Multicast { .. } => {
            let mut group = st.stream.multicast.lock().unwrap();
            if let Some(g) = group.as_mut() {
                g.players = g.players.saturating_sub(1);
                if g.players == 0 {
                    st.stream.remove_dest(&g.dest);
                }
            }
        }
        _ => st.stream.remove_dest(&st.dest),
    }
}

/// Stops everything a session sends.
pub fn end_session(session: Session) {
    if session.playing {
        for st in session.streams.values() {
            stop_stream(st);
        }
    }
}

/// A `Session` header value (RFC 2326 12.37).
pub(super) fn session_header(id: &str, timeout_secs: u64) -> String {
    format!("{id};timeout={timeout_secs}")
}

/// The parameter names of a GET_PARAMETER/SET_PARAMETER `text/parameters` body, one a line
/// (for SET_PARAMETER the `name: value` lines count as names too).
fn parameter_names(body: &str) -> impl Iterator<Item = &str> {
    body.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// The session id of a `Session` header value (`id;timeout=60`).
fn session_id_of(value: &str) -> String {
    value.split(';').next().unwrap_or("").trim().to_owned()
}

pub(super) fn new_session_id() -> String {
    use rand::RngExt;
    let v: u64 = rand::rng().random();
    format!("{v:016x}")
}
