//! RTSP methods and sessions (RFC 2326 10, RFC 7826 13).
//!
//! [`Shared::handle_request`] turns one parsed request into one response plus, for PLAY, the
//! work to do once the response is on its way (media must not overtake the PLAY response on an
//! interleaved connection).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtsp_types::{Method, Request, Response, StatusCode, Url, Version, headers};

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
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub alive: Arc<AliveStamp>,
    pub timeout: Duration,
    pub playing: bool,
    pub streams: BTreeMap<usize, SessionStream>,
    pub created: Instant,
}

impl Session {
    pub fn uses_tcp(&self) -> bool {
        self.streams
            .values()
            .any(|s| matches!(s.dest.target, Target::Tcp { .. }))
    }
}

/// The connection a request arrived on.
pub struct ConnCtx {
    pub out: Arc<ConnOut>,
    pub local: SocketAddr,
}

/// Work to do after the response has been queued.
pub enum After {
    Nothing,
    Play(String),
}

/// What a request URL names, relative to the mount point.
enum Target_ {
    Presentation,
    Stream(usize),
}

type Resp = Response<Vec<u8>>;

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
    ) -> (Resp, After) {
        let cseq = req.header(&headers::CSEQ).map(|v| v.as_str().to_owned());
        let cseq = cseq.as_deref();
        let server = self.config.server_name.as_str();
        if cseq.is_none() {
            return (
                error_response(StatusCode::BadRequest, None, server),
                After::Nothing,
            );
        }
        if req.version() != Version::V1_0 {
            return (
                error_response(StatusCode::RTSPVersionNotSupported, cseq, server),
                After::Nothing,
            );
        }
        if let Some(require) = req.header(&headers::REQUIRE) {
            // We implement no option tags (RFC 2326 12.32).
            let resp = response(StatusCode::OptionNotSupported, cseq)
                .header(headers::SERVER, server)
                .header(headers::UNSUPPORTED, require.as_str())
                .build(Vec::new());
            return (resp, After::Nothing);
        }
        // Any request naming a session keeps it alive.
        let session_id = req
            .header(&headers::SESSION)
            .map(|v| session_id_of(v.as_str()));
        if let Some(id) = &session_id
            && let Some(s) = self.sessions.lock().unwrap().get(id)
        {
            s.alive.touch();
        }

        let result = match req.method() {
            Method::Options => Ok((self.options(cseq), After::Nothing)),
            Method::Describe => self.describe(ctx, &req, cseq).await,
            Method::Setup => self.setup(ctx, &req, cseq, session_id.as_deref()),
            Method::Play => self.play(&req, cseq, session_id.as_deref()).await,
            Method::Pause => self.pause(&req, cseq, session_id.as_deref()),
            Method::Teardown => self.teardown(&req, cseq, session_id.as_deref()),
            Method::GetParameter => self.get_parameter(&req, cseq, session_id.as_deref()),
            Method::SetParameter => self.set_parameter(&req, cseq, session_id.as_deref()),
            Method::Announce | Method::Record | Method::Redirect | Method::PlayNotify => {
                Err(StatusCode::MethodNotAllowed)
            }
            Method::Extension(_) => Err(StatusCode::NotImplemented),
        };
        match result {
            Ok(r) => r,
            Err(status) => {
                let mut b = response(status, cseq).header(headers::SERVER, server);
                if status == StatusCode::MethodNotAllowed {
                    b = b.header(headers::ALLOW, PUBLIC_METHODS);
                }
                (b.build(Vec::new()), After::Nothing)
            }
        }
    }

    fn ok(&self, cseq: Option<&str>) -> rtsp_types::ResponseBuilder {
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
    fn resolve(&self, req: &Request<Vec<u8>>) -> Result<Target_, StatusCode> {
        let url = req.request_uri().ok_or(StatusCode::NotFound)?;
        let path = url.path().trim_end_matches('/');
        let mount = self.config.mount_point.trim_end_matches('/');
        let rest = path.strip_prefix(mount).ok_or(StatusCode::NotFound)?;
        if rest.is_empty() {
            return Ok(Target_::Presentation);
        }
        // Tolerate `//stream=0` from clients that join a slash-terminated base with `/control`.
        let id = rest
            .trim_start_matches('/')
            .strip_prefix("stream=")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or(StatusCode::NotFound)?;
        if self.streams.read().unwrap().contains_key(&id) {
            Ok(Target_::Stream(id))
        } else {
            Err(StatusCode::NotFound)
        }
    }

    fn content_base(url: &Url) -> String {
        let mut base = url.to_string();
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
    ) -> Result<(Resp, After), StatusCode> {
        match self.resolve(req)? {
            Target_::Presentation => {}
            Target_::Stream(_) => return Err(StatusCode::NotFound),
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
                _ => return Err(StatusCode::ServiceUnavailable),
            }
        };
        self.set_conn_base(ctx.out.id, Self::content_base(url));
        let resp = self
            .ok(cseq)
            .header(headers::CONTENT_BASE, Self::content_base(url))
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
    ) -> Result<(Resp, After), StatusCode> {
        let stream_id = match self.resolve(req)? {
            Target_::Stream(id) => id,
            // Some clients SETUP the aggregate URL of a single-stream presentation.
            Target_::Presentation => {
                let streams = self.streams.read().unwrap();
                if streams.len() != 1 {
                    return Err(StatusCode::AggregateOperationNotAllowed);
                }
                *streams.keys().next().unwrap()
            }
        };
        let stream = self
            .streams
            .read()
            .unwrap()
            .get(&stream_id)
            .cloned()
            .ok_or(StatusCode::NotFound)?;
        let transports = req
            .header(&headers::TRANSPORT)
            .ok_or(StatusCode::UnsupportedTransport)
            .and_then(|v| {
                parse_transports(v.as_str()).map_err(|_| StatusCode::UnsupportedTransport)
            })?;

        let mut sessions = self.sessions.lock().unwrap();
        let existing = match session_id {
            Some(id) => Some(sessions.get(id).ok_or(StatusCode::SessionNotFound)?),
            None => None,
        };
        if let Some(s) = existing {
            if s.playing {
                // Adding streams to a playing session is not supported (RFC 2326 10.4).
                return Err(StatusCode::MethodNotValidInThisState);
            }
        } else {
            let max = self.config.max_sessions;
            if max > 0 && sessions.len() >= max {
                return Err(StatusCode::ServiceUnavailable);
            }
        }
        let alive = existing.map_or_else(
            || Arc::new(AliveStamp::new(self.epoch)),
            |s| s.alive.clone(),
        );
        let used_channels: Vec<u8> = existing
            .map(|s| {
                s.streams
                    .values()
                    .filter(|st| st.stream.id != stream_id)
                    .filter_map(|st| st.transport.interleaved.map(|(a, _)| a))
                    .collect()
            })
            .unwrap_or_default();
        let id = session_id.map_or_else(new_session_id, str::to_owned);

        let (target, reply) = self
            .choose_transport(ctx, &stream, &transports, &used_channels)
            .ok_or(StatusCode::UnsupportedTransport)?;
        let dest = Arc::new(Dest::new(id.clone(), target, alive.clone()));

        let session = sessions.entry(id.clone()).or_insert_with(|| Session {
            id: id.clone(),
            conn_id: ctx.out.id,
            peer: ctx.out.peer,
            alive,
            timeout: self.config.session_timeout,
            playing: false,
            streams: BTreeMap::new(),
            created: Instant::now(),
        });
        session.conn_id = ctx.out.id;
        session.streams.insert(
            stream_id,
            SessionStream {
                stream: stream.clone(),
                dest,
                transport: reply.clone(),
            },
        );
        let timeout = session.timeout.as_secs();
        drop(sessions);

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
    ) -> Option<(Target, TransportSpec)> {
        let ssrc = stream.clock().ssrc;
        for t in transports {
            match (t.lower, t.multicast) {
                (LowerTransport::Tcp, _) if self.config.protocols.tcp => {
                    let channels = match t.interleaved {
                        Some((a, b)) if !used_channels.contains(&a) => (a, b),
                        _ => {
                            let base = (0u8..=254)
                                .step_by(2)
                                .find(|c| !used_channels.contains(c))?;
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
                    return Some((target, reply));
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
                    return Some((target, reply));
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
                    return Some((target, reply));
                }
                _ => continue,
            }
        }
        None
    }

    /// The stream's multicast group, allocated from the configured range on first use.
    fn multicast_group(&self, stream: &Arc<Stream>) -> Option<(Ipv4Addr, u16, u8)> {
        let mut group = stream.multicast.lock().unwrap();
        if let Some(g) = group.as_ref() {
            return Some((g.address, g.port, g.ttl));
        }
        let mc = &self.config.multicast;
        let span = u32::from(mc.address_max).checked_sub(u32::from(mc.address_min))? + 1;
        let address = Ipv4Addr::from(u32::from(mc.address_min) + (stream.id as u32 % span));
        let port = mc
            .port_min
            .checked_add(u16::try_from(stream.id * 2).ok()?)?;
        if port >= mc.port_max {
            return None;
        }
        let socket = multicast_socket(mc.ttl, mc.iface).ok()?;
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
        Some((address, port, mc.ttl))
    }

    async fn play(
        self: &Arc<Self>,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(Resp, After), StatusCode> {
        let target = self.resolve(req)?;
        let id = session_id.ok_or(StatusCode::SessionNotFound)?;
        let base = req
            .request_uri()
            .map(Self::content_base)
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
        let (starting, begins, timeout) = {
            let mut sessions = self.sessions.lock().unwrap();
            let session = sessions.get_mut(id).ok_or(StatusCode::SessionNotFound)?;
            if session.streams.is_empty() {
                return Err(StatusCode::MethodNotValidInThisState);
            }
            if let Target_::Stream(_) = target
                && session.streams.len() > 1
            {
                return Err(StatusCode::OnlyAggregateOperationAllowed);
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
        let mut starting = starting;
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
                (self.events)(ServerEvent::KeyframeRequest { stream });
            }
            self.wait_for_start_points(&starting).await;
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
            return Err(StatusCode::SessionNotFound);
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
    async fn wait_for_start_points(&self, starting: &[Starting]) {
        let deadline = tokio::time::Instant::now() + self.config.play_keyframe_wait;
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
            s.stream.start_anywhere(&s.dest);
        }
        let deadline = tokio::time::Instant::now() + NEXT_PACKET_WAIT;
        for s in &late {
            if let Some(gate) = &s.gate {
                gate.wait_until(deadline).await;
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
        for st in session.streams.values() {
            if !matches!(st.dest.target, Target::Multicast { .. }) {
                st.stream.activate(&st.dest);
            }
        }
    }

    fn pause(
        &self,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(Resp, After), StatusCode> {
        self.resolve(req)?;
        let id = session_id.ok_or(StatusCode::SessionNotFound)?;
        let mut sessions = self.sessions.lock().unwrap();
        let session = sessions.get_mut(id).ok_or(StatusCode::SessionNotFound)?;
        if session.playing {
            session.playing = false;
            for st in session.streams.values() {
                stop_stream(st);
            }
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
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(Resp, After), StatusCode> {
        let target = self.resolve(req)?;
        let id = session_id.ok_or(StatusCode::SessionNotFound)?;
        let mut sessions = self.sessions.lock().unwrap();
        let session = sessions.get_mut(id).ok_or(StatusCode::SessionNotFound)?;
        let mut builder = self.ok(cseq);
        match target {
            Target_::Stream(sid) if session.streams.len() > 1 => {
                // Per-stream teardown (RFC 7826 13.7): the session stays with its other streams.
                let st = session.streams.remove(&sid).ok_or(StatusCode::NotFound)?;
                if session.playing {
                    stop_stream(&st);
                }
                builder = builder.header(
                    headers::SESSION,
                    session_header(id, session.timeout.as_secs()),
                );
            }
            _ => {
                if let Some(session) = sessions.remove(id) {
                    end_session(session);
                }
            }
        }
        Ok((builder.build(Vec::new()), After::Nothing))
    }

    fn get_parameter(
        &self,
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(Resp, After), StatusCode> {
        if req.request_uri().is_some() {
            self.resolve(req)?;
        }
        let timeout = self.check_session(session_id)?;
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
                _ => return Err(StatusCode::ParameterNotUnderstood),
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
        req: &Request<Vec<u8>>,
        cseq: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(Resp, After), StatusCode> {
        if req.request_uri().is_some() {
            self.resolve(req)?;
        }
        let timeout = self.check_session(session_id)?;
        // No parameter is settable: any named one is not understood (RFC 2326 10.9).
        if parameter_names(&String::from_utf8_lossy(req.body()))
            .next()
            .is_some()
        {
            return Err(StatusCode::ParameterNotUnderstood);
        }
        let b = self.ok_in_session(cseq, session_id, timeout);
        Ok((b.build(Vec::new()), After::Nothing))
    }

    /// 454 for a named session that does not exist; its timeout otherwise.
    fn check_session(&self, session_id: Option<&str>) -> Result<Option<u64>, StatusCode> {
        match session_id {
            None => Ok(None),
            Some(id) => self
                .sessions
                .lock()
                .unwrap()
                .get(id)
                .map(|s| Some(s.timeout.as_secs()))
                .ok_or(StatusCode::SessionNotFound),
        }
    }
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
fn session_header(id: &str, timeout_secs: u64) -> String {
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

fn new_session_id() -> String {
    use rand::RngExt;
    let v: u64 = rand::rng().random();
    format!("{v:016x}")
}
