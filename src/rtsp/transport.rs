//! The RTSP `Transport` header ([RFC 2326 section 12.39], [RFC 7826 section 18.54]).
//!
//! Specifications: RFC 2326 §12.39 (Transport); RFC 7826 §18.54 (Transport), §22.13 (transport
//! parameters).
//!
//! A client lists the transports it accepts in `SETUP`, most preferred first; the server echoes
//! the one it picked, completed with its own parameters (`server_port`, `ssrc`, ...).
//!
//! `rtsp-types` has a typed `Transport` header, but it matches keys and lower transports
//! case-sensitively, stores parameters in a map (losing their order) and rejects the whole header
//! on one bad alternative. Real clients need more tolerance, so this module parses the header by
//! hand:
//!
//! * keys, profiles and lower transports are case-insensitive (`rtp/avp`, `Client_Port`);
//! * whitespace around `,` `;` `=` and `-` is ignored, `mode` may be quoted or not;
//! * `RTP/AVP` and `RTP/AVP/UDP` mean UDP, `RTP/AVP/TCP` means TCP (RFC 2326 section 12.39);
//! * a single port or channel `a` means `a-(a+1)` (RTCP on the next one);
//! * `ssrc` is hexadecimal (RFC 2326: 8 hex digits), also as cameras write it: shorter, with a
//!   `0x` prefix, or in decimal when it has more than 8 digits; of an RFC 7826 `ssrc=a/b` list
//!   the first is kept;
//! * parameters this module does not interpret are kept verbatim in [`TransportSpec::other`]
//!   (a warning is logged for names that neither RFC defines);
//! * a malformed parameter (`ssrc=xyz`, `client_port=99999`, `ttl` without a value) is ignored
//!   with a warning naming it, never the whole alternative: a camera answering
//!   `ssrc=0x6f7c` still gets its `interleaved=0-1` read;
//! * alternatives that cannot be used (another protocol such as `RAW/RAW/UDP`) are skipped;
//!   only when no alternative is usable is the header an error.
//!
//! What we send ([`TransportSpec`]'s `Display`) stays strict: canonical names, 8-digit hex
//! `ssrc`, quoted `mode`.
//!
//! [RFC 2326 section 12.39]: https://www.rfc-editor.org/rfc/rfc2326#section-12.39
//! [RFC 7826 section 18.54]: https://www.rfc-editor.org/rfc/rfc7826#section-18.54

use std::fmt;

/// RTP profile of a transport (`RTP/<profile>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `AVP`, RTP audio/video profile (RFC 3551).
    Avp,
    /// `AVPF`, AVP with RTCP-based feedback (RFC 4585).
    Avpf,
    /// `SAVP`, secure RTP (RFC 3711).
    Savp,
    /// `SAVPF`, secure RTP with feedback (RFC 5124).
    Savpf,
}

impl Profile {
    fn as_str(self) -> &'static str {
        match self {
            Profile::Avp => "AVP",
            Profile::Avpf => "AVPF",
            Profile::Savp => "SAVP",
            Profile::Savpf => "SAVPF",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Profile::Avp, Profile::Avpf, Profile::Savp, Profile::Savpf]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

/// Lower transport carrying the RTP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowerTransport {
    /// UDP datagrams, unicast or multicast (the default when the header names none).
    Udp,
    /// Interleaved in the RTSP TCP connection (RFC 2326 section 10.12).
    Tcp,
}

/// One transport alternative of a `Transport` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportSpec {
    /// RTP profile.
    pub profile: Profile,
    /// Lower transport.
    pub lower: LowerTransport,
    /// `multicast` rather than `unicast`.
    pub multicast: bool,
    /// `destination` address, unquoted.
    pub destination: Option<String>,
    /// `source` address, unquoted.
    pub source: Option<String>,
    /// `client_port` RTP and RTCP ports.
    pub client_port: Option<(u16, u16)>,
    /// `server_port` RTP and RTCP ports.
    pub server_port: Option<(u16, u16)>,
    /// `interleaved` RTP and RTCP channels.
    pub interleaved: Option<(u8, u8)>,
    /// `port`: multicast RTP and RTCP ports.
    pub port: Option<(u16, u16)>,
    /// `ttl` of multicast packets.
    pub ttl: Option<u8>,
    /// `ssrc` of the stream sent by the server.
    pub ssrc: Option<u32>,
    /// `mode`, unquoted and upper-cased (e.g. `PLAY`, `RECORD`).
    pub mode: Option<String>,
    /// Parameters we don't interpret, kept verbatim (e.g. `RTCP-mux`, `append`, `setup=active`).
    pub other: Vec<String>,
}

impl TransportSpec {
    fn new(lower: LowerTransport, multicast: bool) -> Self {
        TransportSpec {
            profile: Profile::Avp,
            lower,
            multicast,
            destination: None,
            source: None,
            client_port: None,
            server_port: None,
            interleaved: None,
            port: None,
            ttl: None,
            ssrc: None,
            mode: None,
            other: Vec::new(),
        }
    }

    /// `RTP/AVP;unicast` without ports.
    pub fn udp_unicast() -> Self {
        Self::new(LowerTransport::Udp, false)
    }

    /// `RTP/AVP/TCP;unicast;interleaved=<ch.0>-<ch.1>`.
    pub fn tcp_interleaved(ch: (u8, u8)) -> Self {
        TransportSpec {
            interleaved: Some(ch),
            ..Self::new(LowerTransport::Tcp, false)
        }
    }

    /// `RTP/AVP;multicast` without group or ports.
    pub fn udp_multicast() -> Self {
        Self::new(LowerTransport::Udp, true)
    }
}

/// A `Transport` header without any usable alternative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError(pub String);

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Transport header: {}", self.0)
    }
}

impl std::error::Error for TransportError {}

/// Parses a Transport header value: comma-separated alternatives in preference order.
///
/// `RTP/AVP` means UDP; `RTP/AVP/TCP` TCP; port ranges `a-b` or a single port `a` (RTCP = a+1);
/// ssrc in hex. Unusable alternatives are skipped (see the [module docs](self)); the result is
/// never empty.
pub fn parse_transports(value: &str) -> Result<Vec<TransportSpec>, TransportError> {
    let mut specs = Vec::new();
    let mut first_error = None;
    for alternative in split_unquoted(value, ',').filter(|a| !a.is_empty()) {
        match parse_spec(alternative) {
            Ok(spec) => specs.push(spec),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if specs.is_empty() => Err(TransportError(e)),
        None if specs.is_empty() => Err(TransportError("no transport".into())),
        _ => Ok(specs),
    }
}

fn parse_spec(alternative: &str) -> Result<TransportSpec, String> {
    let mut params = split_unquoted(alternative, ';');
    let protocol = params.next().unwrap_or_default();
    let mut parts = protocol.split('/').map(str::trim);
    let (Some(rtp), Some(profile), lower, None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("unsupported transport protocol `{protocol}`"));
    };
    let profile = Profile::parse(profile)
        .filter(|_| rtp.eq_ignore_ascii_case("RTP"))
        .ok_or_else(|| format!("unsupported transport protocol `{protocol}`"))?;
    let lower = match lower {
        None => LowerTransport::Udp,
        Some(l) if l.eq_ignore_ascii_case("UDP") => LowerTransport::Udp,
        Some(l) if l.eq_ignore_ascii_case("TCP") => LowerTransport::Tcp,
        Some(_) => return Err(format!("unsupported lower transport in `{protocol}`")),
    };
    let mut spec = TransportSpec {
        profile,
        ..TransportSpec::new(lower, false)
    };

    for param in params.filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.trim_end(), Some(unquote(v.trim()))),
            None => (param, None),
        };
        let key = key.to_ascii_lowercase();
        // A value with a quote inside cannot be written back.
        let quoted_inside = value.is_some_and(|v| v.contains('"'));
        if quoted_inside || !apply_param(&mut spec, &key, value) {
            log::warn!("Transport: ignoring the malformed parameter `{param}` of `{alternative}`");
            continue;
        }
        if !is_known_param(&key) {
            if !is_uninterpreted_param(&key) {
                log::warn!("Transport: ignoring the unknown parameter `{param}`");
            }
            spec.other.push(param.to_owned());
        }
    }
    Ok(spec)
}

/// Parameters [`apply_param`] interprets.
fn is_known_param(key: &str) -> bool {
    matches!(
        key,
        "unicast"
            | "multicast"
            | "destination"
            | "source"
            | "client_port"
            | "server_port"
            | "port"
            | "interleaved"
            | "ttl"
            | "ssrc"
            | "mode"
    )
}

/// Parameters RFC 2326/7826 define that we keep without interpreting them.
fn is_uninterpreted_param(key: &str) -> bool {
    matches!(
        key,
        "append"
            | "layers"
            | "rtcp-mux"
            | "setup"
            | "connection"
            | "dest_addr"
            | "src_addr"
            | "mikey"
    )
}

/// Sets the parameter `key` (lower case) on `spec`. False when its value is malformed (it is
/// then ignored); unknown keys are left to the caller.
fn apply_param(spec: &mut TransportSpec, key: &str, value: Option<&str>) -> bool {
    fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
        match value {
            Some(v) => {
                *slot = Some(v);
                true
            }
            None => false,
        }
    }
    match key {
        "unicast" => spec.multicast = false,
        "multicast" => spec.multicast = true,
        // RFC 2326 allows a bare `destination` (= the default address).
        "destination" => match value {
            Some(v) if !is_host(v) => return false,
            v => spec.destination = v.filter(|v| !v.is_empty()).map(str::to_owned),
        },
        "source" => {
            return set(
                &mut spec.source,
                value.filter(|v| is_host(v)).map(str::to_owned),
            );
        }
        "client_port" => return set(&mut spec.client_port, value.and_then(pair)),
        "server_port" => return set(&mut spec.server_port, value.and_then(pair)),
        "port" => return set(&mut spec.port, value.and_then(pair)),
        "interleaved" => return set(&mut spec.interleaved, value.and_then(pair)),
        "ttl" => return set(&mut spec.ttl, value.and_then(|v| v.parse().ok())),
        "ssrc" => {
            let first = value.and_then(|v| v.split('/').next());
            return set(&mut spec.ssrc, first.and_then(parse_ssrc));
        }
        "mode" => {
            return set(
                &mut spec.mode,
                value
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_ascii_uppercase()),
            );
        }
        _ => {}
    }
    true
}

/// A `destination` or `source` value: written back unquoted, so without separators.
fn is_host(v: &str) -> bool {
    !v.is_empty() && !v.contains([';', ','])
}

/// Splits on `sep` outside double-quoted strings and trims each piece.
pub(crate) fn split_unquoted(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let end = s.char_indices().find_map(|(i, c)| {
            if c == '"' {
                quoted = !quoted;
            }
            (c == sep && !quoted).then_some(i)
        });
        let (piece, tail) = match end {
            Some(i) => (&s[..i], Some(&s[i + sep.len_utf8()..])),
            None => (s, None),
        };
        rest = tail;
        Some(piece.trim())
    })
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .trim()
}

/// `a-b`, or `a` meaning `a-(a+1)`.
fn pair<T>(v: &str) -> Option<(T, T)>
where
    T: std::str::FromStr + TryFrom<u32> + Into<u32> + Copy,
{
    let parse = |s: &str| s.trim().parse::<T>().ok();
    match v.split_once('-') {
        Some((a, b)) => Some((parse(a)?, parse(b)?)),
        None => {
            let a = parse(v)?;
            Some((a, T::try_from(a.into() + 1).ok()?))
        }
    }
}

/// An `ssrc` value: hexadecimal as RFC 2326 writes it (up to 8 digits, `0x` prefix allowed), or
/// decimal when it has more digits than hex allows and fits 32 bits (cameras write both).
pub fn parse_ssrc(s: &str) -> Option<u32> {
    let s = s.trim();
    let hex = |h: &str| {
        let valid = !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| u32::from_str_radix(h, 16).ok()).flatten()
    };
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return hex(h);
    }
    hex(s).or_else(|| {
        (s.len() > 8 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    })
}

/// Canonical form, e.g. `RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;ssrc=1A2B3C4D;mode="PLAY"`,
/// `RTP/AVP/TCP;unicast;interleaved=0-1` or `RTP/AVP;multicast;destination=224.3.0.1;port=5000-5001;ttl=1`.
impl fmt::Display for TransportSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RTP/")?;
        f.write_str(self.profile.as_str())?;
        if self.lower == LowerTransport::Tcp {
            f.write_str("/TCP")?;
        }
        f.write_str(if self.multicast {
            ";multicast"
        } else {
            ";unicast"
        })?;
        if let Some(d) = &self.destination {
            write!(f, ";destination={d}")?;
        }
        if let Some(s) = &self.source {
            write!(f, ";source={s}")?;
        }
        for (name, value) in [
            (
                "interleaved",
                self.interleaved.map(|(a, b)| (a.into(), b.into())),
            ),
            ("client_port", self.client_port),
            ("server_port", self.server_port),
            ("port", self.port),
        ] {
            if let Some((a, b)) = value {
                write!(f, ";{name}={a}-{b}")?;
            }
        }
        if let Some(ttl) = self.ttl {
            write!(f, ";ttl={ttl}")?;
        }
        if let Some(ssrc) = self.ssrc {
            write!(f, ";ssrc={ssrc:08X}")?;
        }
        if let Some(mode) = &self.mode {
            write!(f, ";mode=\"{mode}\"")?;
        }
        for other in &self.other {
            write!(f, ";{other}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(value: &str) -> TransportSpec {
        let mut specs = parse_transports(value).unwrap();
        assert_eq!(specs.len(), 1, "{value}");
        specs.remove(0)
    }

    /// Display then parse gives the same spec back.
    fn assert_round_trip(spec: &TransportSpec) {
        assert_eq!(&parse_one(&spec.to_string()), spec);
    }

    #[test]
    fn ffmpeg_udp() {
        let t = parse_one("RTP/AVP/UDP;unicast;client_port=5000-5001");
        assert_eq!(
            t,
            TransportSpec {
                client_port: Some((5000, 5001)),
                ..TransportSpec::udp_unicast()
            }
        );
        assert_eq!(t.to_string(), "RTP/AVP;unicast;client_port=5000-5001");
        assert_round_trip(&t);
    }

    #[test]
    fn ffmpeg_tcp() {
        let t = parse_one("RTP/AVP/TCP;unicast;interleaved=0-1");
        assert_eq!(t, TransportSpec::tcp_interleaved((0, 1)));
        assert_eq!(t.to_string(), "RTP/AVP/TCP;unicast;interleaved=0-1");
        assert_round_trip(&t);
    }

    #[test]
    fn gstreamer_rtspsrc_alternatives() {
        let specs = parse_transports(
            r#"RTP/AVP;unicast;client_port=51234-51235;mode="PLAY", RTP/AVP;multicast;mode="PLAY", RTP/AVP/TCP;unicast;interleaved=0-1;mode="PLAY""#,
        )
        .unwrap();
        let play = Some("PLAY".to_owned());
        assert_eq!(
            specs,
            [
                TransportSpec {
                    client_port: Some((51234, 51235)),
                    mode: play.clone(),
                    ..TransportSpec::udp_unicast()
                },
                TransportSpec {
                    mode: play.clone(),
                    ..TransportSpec::udp_multicast()
                },
                TransportSpec {
                    mode: play,
                    ..TransportSpec::tcp_interleaved((0, 1))
                },
            ]
        );
        for spec in &specs {
            assert_round_trip(spec);
        }
        assert_eq!(
            specs[0].to_string(),
            r#"RTP/AVP;unicast;client_port=51234-51235;mode="PLAY""#
        );
    }

    #[test]
    fn live555_udp() {
        let t = parse_one("RTP/AVP;unicast;client_port=6970-6971");
        assert_eq!(t.lower, LowerTransport::Udp);
        assert!(!t.multicast);
        assert_eq!(t.client_port, Some((6970, 6971)));
        assert_round_trip(&t);
    }

    #[test]
    fn multicast() {
        let t = parse_one("RTP/AVP;multicast;destination=224.2.0.1;port=3456-3457;ttl=16");
        assert_eq!(
            t,
            TransportSpec {
                destination: Some("224.2.0.1".into()),
                port: Some((3456, 3457)),
                ttl: Some(16),
                ..TransportSpec::udp_multicast()
            }
        );
        assert_round_trip(&t);
    }

    #[test]
    fn server_reply_canonical_forms() {
        let reply = TransportSpec {
            client_port: Some((5000, 5001)),
            server_port: Some((6000, 6001)),
            ssrc: Some(0x1A2B3C4D),
            mode: Some("PLAY".into()),
            ..TransportSpec::udp_unicast()
        };
        assert_eq!(
            reply.to_string(),
            r#"RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;ssrc=1A2B3C4D;mode="PLAY""#
        );
        assert_round_trip(&reply);

        let mc = TransportSpec {
            destination: Some("224.3.0.1".into()),
            port: Some((5000, 5001)),
            ttl: Some(1),
            ..TransportSpec::udp_multicast()
        };
        assert_eq!(
            mc.to_string(),
            "RTP/AVP;multicast;destination=224.3.0.1;port=5000-5001;ttl=1"
        );
        assert_eq!(
            TransportSpec::tcp_interleaved((2, 3)).to_string(),
            "RTP/AVP/TCP;unicast;interleaved=2-3"
        );
    }

    #[test]
    fn tolerant_syntax() {
        let t = parse_one(
            " rtp/avp/tcp ; Unicast ; INTERLEAVED = 4 ; mode=play ; ssrc=00c0ffee ; RTCP-mux ; x-foo=\"a;b\" ",
        );
        assert_eq!(t.lower, LowerTransport::Tcp);
        assert_eq!(t.interleaved, Some((4, 5)));
        assert_eq!(t.mode.as_deref(), Some("PLAY"));
        assert_eq!(t.ssrc, Some(0x00C0FFEE));
        assert_eq!(t.other, ["RTCP-mux", "x-foo=\"a;b\""]);
        assert_round_trip(&t);

        let t = parse_one("RTP/SAVPF;unicast;client_port=7000;server_port= 8000 - 8001");
        assert_eq!(t.profile, Profile::Savpf);
        assert_eq!(t.client_port, Some((7000, 7001)));
        assert_eq!(t.server_port, Some((8000, 8001)));
        assert_round_trip(&t);

        // RFC 7826 ssrc lists keep the first.
        assert_eq!(parse_one("RTP/AVP;ssrc=1/2").ssrc, Some(1));
    }

    #[test]
    fn unusable_alternatives_are_skipped() {
        let specs = parse_transports(
            "RAW/RAW/UDP;unicast, RTP/AVP/SCTP;unicast, RTP/AVP/TCP;interleaved=0-1",
        )
        .unwrap();
        assert_eq!(specs, [TransportSpec::tcp_interleaved((0, 1))]);
    }

    #[test]
    fn errors() {
        for value in ["", " , ", "RTP", "RTP/XYZ", "RTP/AVP/SCTP", "RTP/AVP/TCP/X"] {
            assert!(parse_transports(value).is_err(), "{value:?}");
        }
        let err = parse_transports("RAW/RAW/UDP;unicast").unwrap_err();
        assert!(err.to_string().contains("RAW/RAW/UDP"), "{err}");
    }

    #[test]
    fn malformed_parameters_are_ignored_not_the_header() {
        for (value, param) in [
            ("RTP/AVP;client_port=65535", "client_port"),
            ("RTP/AVP;client_port=99999-100000", "client_port"),
            ("RTP/AVP;client_port", "client_port"),
            ("RTP/AVP/TCP;interleaved=255", "interleaved"),
            ("RTP/AVP/TCP;interleaved=a-b", "interleaved"),
            ("RTP/AVP;ttl=256", "ttl"),
            ("RTP/AVP;ttl=-1", "ttl"),
            ("RTP/AVP;ssrc=123456789abc", "ssrc"),
            ("RTP/AVP;ssrc=xyz", "ssrc"),
            ("RTP/AVP;ssrc=0x", "ssrc"),
            ("RTP/AVP;source", "source"),
            ("RTP/AVP;mode=", "mode"),
        ] {
            let t = parse_one(value);
            assert_eq!(t.client_port, None, "{value}");
            assert_eq!(t.interleaved, None, "{value}");
            assert_eq!(t.ttl, None, "{value}");
            assert_eq!(t.ssrc, None, "{value}");
            assert_eq!(t.source, None, "{value}");
            assert_eq!(t.mode, None, "{value}");
            assert!(t.other.is_empty(), "{param} must not be kept: {t:?}");
        }
        // The rest of the alternative is read.
        let t = parse_one("RTP/AVP;unicast;client_port=5000-5001;server_port=x;ssrc=zz;mode=PLAY");
        assert_eq!(t.client_port, Some((5000, 5001)));
        assert_eq!(t.server_port, None);
        assert_eq!(t.mode.as_deref(), Some("PLAY"));
    }

    /// SETUP answers as IP cameras write them.
    #[test]
    fn camera_answers() {
        // `0x` prefix (scottlamb/retina#138).
        let t = parse_one(r#"RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=0x6f7c;mode="PLAY""#);
        assert_eq!(t.interleaved, Some((0, 1)));
        assert_eq!(t.ssrc, Some(0x6f7c));
        assert_eq!(t.mode.as_deref(), Some("PLAY"));
        // Decimal with more than 8 digits (bluenviron/gortsplib#95).
        let t = parse_one(
            "RTP/AVP/UDP;unicast;client_port=10100-10101;server_port=50024-50025;ssrc=937239728",
        );
        assert_eq!(t.ssrc, Some(937_239_728));
        assert_eq!(t.server_port, Some((50024, 50025)));
        // Fewer than 8 hex digits (bluenviron/mediamtx#396), upper-case 0X, ssrc before
        // interleaved (scottlamb/retina#120).
        assert_eq!(parse_one("RTP/AVP;ssrc=4317f").ssrc, Some(0x4317f));
        assert_eq!(parse_one("RTP/AVP;ssrc=0X00C0FFEE").ssrc, Some(0xC0FFEE));
        let t = parse_one("RTP/AVP/TCP;ssrc=22345684;interleaved=0-1");
        assert_eq!(t.ssrc, Some(0x22345684));
        assert_eq!(t.interleaved, Some((0, 1)));
        // Spaces around `;` and `=`, case, quotes.
        let t = parse_one(
            r#"RTP/AVP/TCP ; UNICAST ; Interleaved = 2 - 3 ; SSRC = "1A2B3C4D" ; Mode = "play""#,
        );
        assert_eq!(t.interleaved, Some((2, 3)));
        assert_eq!(t.ssrc, Some(0x1A2B3C4D));
        assert_eq!(t.mode.as_deref(), Some("PLAY"));
        // Destination and source given by some cameras even for TCP (ZoneMinder/zoneminder#911).
        let t = parse_one(
            "RTP/AVP/TCP;unicast;destination=192.168.10.180;source=192.168.10.20;interleaved=0-1",
        );
        assert_eq!(t.source.as_deref(), Some("192.168.10.20"));
        assert_eq!(t.interleaved, Some((0, 1)));
        // Unknown parameters are kept, the header is used.
        let t = parse_one("RTP/AVP;unicast;client_port=5000-5001;x-dahua=1;timeout=60");
        assert_eq!(t.client_port, Some((5000, 5001)));
        assert_eq!(t.other, ["x-dahua=1", "timeout=60"]);
    }

    #[test]
    fn ssrc_forms() {
        for (value, expected) in [
            ("1A2B3C4D", Some(0x1A2B3C4D)),
            ("1a2b3c4d", Some(0x1A2B3C4D)),
            ("0x6f7c", Some(0x6f7c)),
            ("0X6F7C", Some(0x6f7c)),
            (" 00000001 ", Some(1)),
            ("12345678", Some(0x12345678)),
            ("4294967295", Some(u32::MAX)),
            ("4294967296", None),
            ("123456789abc", None),
            ("0x123456789", None),
            ("", None),
            ("-1", None),
            ("+1", None),
        ] {
            assert_eq!(parse_ssrc(value), expected, "{value:?}");
        }
    }

    #[test]
    fn what_we_send_stays_canonical() {
        let t = parse_one(r#"rtp/avp/tcp ; interleaved = 0 ; ssrc=0x6f7c ; mode = play"#);
        assert_eq!(
            t.to_string(),
            r#"RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=00006F7C;mode="PLAY""#
        );
    }
}
