//! SDP ([RFC 4566]) as used by RTSP: built by the server for `DESCRIBE`, parsed by the client.
//!
//! Specifications: RFC 4566 §5 (SDP fields), §6 (rtpmap, fmtp); RFC 2326 appendix C (C.1.1 control,
//! C.1.5 range, C.1.7 connection information); RFC 7826 appendix D (D.1.1, D.1.6, D.1.8); RFC 3551
//! §6 (static payload types).
//!
//! RTSP-specific usage follows [RFC 2326 appendix C] and [RFC 7826 appendix D]: a session-level
//! `a=control:*` and `a=range:` (C.1.1, C.1.5), one `m=` line per stream with port 0 (unicast
//! ports are negotiated by `SETUP`) and its own `a=control:` URL, and `c=` giving a multicast
//! group and TTL when the server streams multicast (C.1.7).
//!
//! Both directions go through `sdp-types`; this module maps its generic model onto the one
//! payload format per stream that the server offers and the client plays:
//!
//! * building: `v=` `o=` `s=` `c=IN IP4 0.0.0.0` `t=0 0` `a=tool` `a=type:broadcast`
//!   `a=control:*` `a=range`, then per media `m=` `c=` (multicast) `b=AS` `a=rtpmap` `a=fmtp`
//!   `a=control` and the other attributes, with CRLF line endings (RFC 4566 section 5);
//! * parsing is tolerant of what cameras send: bare LF, trailing whitespace, stray lines that are
//!   not `x=...` (e.g. a trailing NUL), whitespace inside `rtpmap`/`fmtp`. Media that are not RTP,
//!   or whose format is not a payload type, are skipped; of several payload types the first is
//!   taken; static payload types without `rtpmap` get their RFC 3551 encoding and clock rate.
//!
//! [RFC 4566]: https://www.rfc-editor.org/rfc/rfc4566
//! [RFC 2326 appendix C]: https://www.rfc-editor.org/rfc/rfc2326#appendix-C
//! [RFC 7826 appendix D]: https://www.rfc-editor.org/rfc/rfc7826#appendix-D

use std::fmt;
use std::net::IpAddr;

use sdp_types::{
    AddrType, Attribute, Bandwidth, BandwidthType, Connection, Fmtp, FmtpParam, Media, NetType,
    Origin, RtpMap, Session,
};

/// Value of the session-level `a=tool:` attribute.
const TOOL: &str = "gst-plugin-livestreaming";

/// A presentation: session-level fields and one [`MediaDescription`] per stream.
#[derive(Debug, Clone)]
pub struct SessionDescription {
    /// `s=` line.
    pub session_name: String,
    /// Address in the `o=` line, e.g. "127.0.0.1".
    pub origin_address: String,
    /// `sess-id` of the `o=` line (0 when a parsed one is not a number).
    pub session_id: u64,
    /// `sess-version` of the `o=` line.
    pub session_version: u64,
    /// `a=range:` value (RFC 2326 C.1.5).
    ///
    /// e.g. Some("npt=now-") for live, Some("npt=0-12.5") for recorded
    pub range: Option<String>,
    /// The streams, in `m=` line order.
    pub media: Vec<MediaDescription>,
}

/// One stream (`m=` section) carrying a single RTP payload format.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaDescription {
    /// Media type: video|audio|application.
    pub media: String,
    /// RTP payload type.
    pub payload_type: u8,
    /// Encoding name of `a=rtpmap`, e.g. "H264", "OPUS" (empty if unknown).
    pub encoding_name: String,
    /// RTP clock rate of `a=rtpmap` (0 if unknown).
    pub clock_rate: u32,
    /// Encoding parameters of `a=rtpmap`: the channel count for audio.
    pub encoding_params: Option<String>,
    /// `a=fmtp` parameters, in order; a parameter without `=` has an empty value.
    pub fmtp: Vec<(String, String)>,
    /// `a=control:` URL, e.g. "stream=0", usually relative to the presentation URL (see
    /// [`resolve_control`]). Empty when there is none: the presentation URL controls the stream.
    pub control: String,
    /// c= line for multicast: (address, ttl); None → c=IN IP4 0.0.0.0 at session level.
    ///
    /// When parsing, the TTL defaults to 1 if the SDP carries none (as for IPv6).
    pub multicast: Option<(String, u8)>,
    /// Port of the `m=` line: 0 unless multicast.
    pub port: u16,
    /// `b=AS:` bandwidth in kbit/s.
    pub bandwidth_kbps: Option<u32>,
    /// other a= attributes (name, value) e.g. ("framerate", Some("30")), ("rtcp-fb", ...)
    pub attributes: Vec<(String, Option<String>)>,
}

/// An SDP that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpError(pub String);

impl fmt::Display for SdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SDP: {}", self.0)
    }
}

impl std::error::Error for SdpError {}

impl SessionDescription {
    /// The SDP text, with CRLF line endings, as sent in a `DESCRIBE` response.
    pub fn to_sdp_string(&self) -> String {
        let addrtype = match self.origin_address.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => AddrType::Ip6,
            _ => AddrType::Ip4,
        };
        let origin = Origin::new(
            self.session_id,
            self.session_version,
            NetType::In,
            addrtype,
            &self.origin_address,
        );
        // RFC 4566 section 5.3: "s= " when there is no meaningful name.
        let name = if self.session_name.is_empty() {
            " "
        } else {
            &self.session_name
        };
        let mut session = Session::new(origin, name);
        session.set_connection(Connection::new(NetType::In, AddrType::Ip4, "0.0.0.0"));
        session.add_attribute_with_value("tool", TOOL);
        session.add_attribute_with_value("type", "broadcast");
        session.add_attribute_with_value("control", "*");
        if let Some(range) = &self.range {
            session.add_attribute_with_value("range", range);
        }
        session.add_medias(self.media.iter().map(MediaDescription::to_sdp));
        // `Session::write` writes `t=0 0` when there is no time.
        session.to_string()
    }

    /// Parses an SDP (e.g. the body of a `DESCRIBE` response).
    ///
    /// A relative media `a=control` is joined to an absolute session-level `a=control` (as
    /// ffmpeg and GStreamer do); otherwise it is kept as is, to be resolved against the
    /// Content-Base with [`resolve_control`]. The range is the session-level one, or else the
    /// first media-level one.
    pub fn parse(text: &[u8]) -> Result<Self, SdpError> {
        let sdp = Session::parse(&clean_lines(text)).map_err(|e| SdpError(e.to_string()))?;
        let session_control = first_value(&sdp.attributes, "control").filter(|c| c.contains("://"));
        let session_multicast = sdp.connection.as_ref().and_then(multicast_group);
        let media = sdp
            .medias
            .iter()
            .filter_map(|m| MediaDescription::from_sdp(m, session_control, &session_multicast))
            .collect();
        let range = first_value(&sdp.attributes, "range")
            .or_else(|| {
                sdp.medias
                    .iter()
                    .find_map(|m| first_value(&m.attributes, "range"))
            })
            .map(str::to_owned);
        Ok(SessionDescription {
            session_name: sdp.session_name.trim().to_owned(),
            session_id: sdp.origin.sess_id.parse().unwrap_or(0),
            session_version: sdp.origin.sess_version,
            origin_address: sdp.origin.unicast_address,
            range,
            media,
        })
    }
}

impl MediaDescription {
    fn to_sdp(&self) -> Media {
        let pt = self.payload_type;
        let mut media = Media {
            media: self.media.clone(),
            port: self.port,
            num_ports: None,
            proto: "RTP/AVP".into(),
            fmt: pt.to_string(),
            media_title: None,
            connections: Vec::new(),
            bandwidths: Vec::new(),
            key: None,
            attributes: Vec::new(),
        };
        if let Some((address, ttl)) = &self.multicast {
            media.add_connection(match address.parse::<IpAddr>() {
                // No TTL for IPv6 (RFC 4566 section 5.7).
                Ok(ip) => Connection::from_ip_addr_ttl(ip, Some(*ttl)),
                Err(_) => Connection::new(NetType::In, AddrType::Ip4, format!("{address}/{ttl}")),
            });
        }
        if let Some(kbps) = self.bandwidth_kbps {
            media.add_bandwidth(Bandwidth::new(BandwidthType::As, kbps.into()));
        }
        let rtpmap = RtpMap {
            payload_type: pt,
            encoding_name: self.encoding_name.clone(),
            clock_rate: self.clock_rate,
            encoding_params: self.encoding_params.clone(),
        };
        media.add_attribute_with_value("rtpmap", rtpmap);
        if !self.fmtp.is_empty() {
            let params = self.fmtp.iter().map(|(key, value)| FmtpParam {
                param: key.clone(),
                val: (!value.is_empty()).then(|| value.clone()),
            });
            let fmtp = Fmtp {
                fmt: pt,
                format_specific_params: params.collect(),
            };
            media.add_attribute_with_value("fmtp", fmtp);
        }
        if !self.control.is_empty() {
            media.add_attribute_with_value("control", &self.control);
        }
        media.add_attributes(self.attributes.iter().map(|(name, value)| Attribute {
            attribute: name.clone(),
            value: value.clone(),
        }));
        media
    }

    fn from_sdp(
        m: &Media,
        session_control: Option<&str>,
        session_multicast: &Option<(String, u8)>,
    ) -> Option<Self> {
        if !m.proto.get(..4)?.eq_ignore_ascii_case("RTP/") {
            return None;
        }
        let payload_type = m
            .fmt
            .split_ascii_whitespace()
            .next()?
            .parse::<u8>()
            .ok()
            .filter(|&pt| pt < 128)?;

        let rtpmap = values(&m.attributes, "rtpmap")
            .filter_map(|v| v.parse::<RtpMap>().ok())
            .find(|r| r.payload_type == payload_type);
        let (encoding_name, clock_rate, encoding_params) = match rtpmap {
            Some(r) => (
                r.encoding_name.trim().to_owned(),
                r.clock_rate,
                r.encoding_params
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty()),
            ),
            None => match static_payload_type(payload_type) {
                Some((name, rate, params)) => (name.into(), rate, params.map(Into::into)),
                None => (String::new(), 0, None),
            },
        };

        let fmtp = values(&m.attributes, "fmtp")
            .filter_map(|v| v.parse::<Fmtp>().ok())
            .find(|f| f.fmt == payload_type)
            .map(|f| {
                let params = f.format_specific_params.into_iter();
                params
                    .map(|p| {
                        (
                            p.param.trim().to_owned(),
                            p.val.unwrap_or_default().trim().to_owned(),
                        )
                    })
                    .filter(|(key, _)| !key.is_empty())
                    .collect()
            })
            .unwrap_or_default();

        let control = match (first_value(&m.attributes, "control"), session_control) {
            (Some(control), Some(base)) => resolve_control(base, control),
            (Some(control), None) => control.to_owned(),
            (None, base) => base.unwrap_or_default().to_owned(),
        };

        let multicast = m
            .connections
            .first()
            .map_or_else(|| session_multicast.clone(), multicast_group);
        let bandwidth_kbps = m
            .bandwidths
            .iter()
            .find(|b| b.bwtype.eq_ignore_ascii_case("AS"))
            .map(|b| u32::try_from(b.bandwidth).unwrap_or(u32::MAX));
        let attributes = m
            .attributes
            .iter()
            .filter(|a| {
                let name = a.attribute.trim();
                !["rtpmap", "fmtp", "control"]
                    .iter()
                    .any(|known| name.eq_ignore_ascii_case(known))
            })
            .map(|a| {
                let value = a.value.as_deref().map(|v| v.trim().to_owned());
                (a.attribute.trim().to_owned(), value)
            })
            .collect();

        Some(MediaDescription {
            media: m.media.clone(),
            payload_type,
            encoding_name,
            clock_rate,
            encoding_params,
            fmtp,
            control,
            multicast,
            port: m.port,
            bandwidth_kbps,
            attributes,
        })
    }
}

/// Resolves an `a=control` value against a base URL (Content-Base, Content-Location or the
/// request URL, RFC 2326 C.1.1; or an absolute session-level control).
///
/// `*` or an empty control is the base itself, an absolute URL is used as is, an absolute path
/// replaces the path of the base; anything else is appended after a `/`, the way ffmpeg and
/// GStreamer do it, rather than with RFC 3986 resolution. Cameras rely on that: Content-Base
/// `rtsp://cam/realmonitor?channel=1/` with `trackID=0` must give
/// `rtsp://cam/realmonitor?channel=1/trackID=0`.
pub fn resolve_control(base: &str, control: &str) -> String {
    let control = control.trim();
    if control.is_empty() || control == "*" {
        return base.to_owned();
    }
    if control.contains("://") {
        return control.to_owned();
    }
    if control.starts_with('/')
        && let Ok(url) = url::Url::parse(base).and_then(|b| b.join(control))
    {
        return url.into();
    }
    let separator = if base.ends_with('/') { "" } else { "/" };
    format!("{base}{separator}{control}")
}

/// Keeps only `x=...` lines, trimmed, so that `sdp-types` does not reject the whole description
/// for a trailing NUL, a stray CR or a blank line with spaces. Lines cameras get wrong and
/// that we need nothing of are repaired: an `o=` line without its six fields (TP-Link writes
/// seven, `o=- 14665860 31787219 1 IN IP4 ...`; others truncate it to `o=- 1001 1 IN`) keeps
/// its first three and last three or becomes a neutral one, and a truncated `c=IN` is dropped.
fn clean_lines(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split(|&b| b == b'\n').map(<[u8]>::trim_ascii) {
        if let [key, b'=', value @ ..] = line
            && key.is_ascii_alphabetic()
            && !line.iter().any(|&b| b == b'\0' || b == b'\r')
        {
            let fields: Vec<&[u8]> = value
                .split(u8::is_ascii_whitespace)
                .filter(|f| !f.is_empty())
                .collect();
            match (key, fields.len()) {
                (b'o', 6) | (b'o', 0) => out.extend_from_slice(line),
                (b'o', n) if n > 6 => {
                    out.extend_from_slice(b"o=");
                    let kept = fields[..3].iter().chain(&fields[n - 3..]);
                    out.extend_from_slice(&kept.copied().collect::<Vec<_>>().join(&b' '));
                }
                (b'o', _) => out.extend_from_slice(b"o=- 0 0 IN IP4 0.0.0.0"),
                (b'c', 0..3) => continue,
                _ => out.extend_from_slice(line),
            }
            out.push(b'\n');
        }
    }
    out
}

/// Trimmed values of the attributes called `name`.
fn values<'a>(attributes: &'a [Attribute], name: &'a str) -> impl Iterator<Item = &'a str> {
    attributes
        .iter()
        .filter(move |a| a.attribute.trim().eq_ignore_ascii_case(name))
        .filter_map(|a| a.value.as_deref().map(str::trim))
}

fn first_value<'a>(attributes: &'a [Attribute], name: &'a str) -> Option<&'a str> {
    values(attributes, name).next()
}

/// (address, ttl) of a multicast connection line.
fn multicast_group(connection: &Connection) -> Option<(String, u8)> {
    let address = connection.try_address().ok()?;
    address
        .ip
        .is_multicast()
        .then(|| (address.ip.to_string(), address.ttl.unwrap_or(1)))
}

/// Encoding name, clock rate and channels of the static payload types (RFC 3551 tables 4 and 5).
fn static_payload_type(pt: u8) -> Option<(&'static str, u32, Option<&'static str>)> {
    Some(match pt {
        0 => ("PCMU", 8000, None),
        3 => ("GSM", 8000, None),
        4 => ("G723", 8000, None),
        5 => ("DVI4", 8000, None),
        6 => ("DVI4", 16000, None),
        7 => ("LPC", 8000, None),
        8 => ("PCMA", 8000, None),
        9 => ("G722", 8000, None),
        10 => ("L16", 44100, Some("2")),
        11 => ("L16", 44100, None),
        12 => ("QCELP", 8000, None),
        13 => ("CN", 8000, None),
        14 => ("MPA", 90000, None),
        15 => ("G728", 8000, None),
        16 => ("DVI4", 11025, None),
        17 => ("DVI4", 22050, None),
        18 => ("G729", 8000, None),
        25 => ("CelB", 90000, None),
        26 => ("JPEG", 90000, None),
        28 => ("nv", 90000, None),
        31 => ("H261", 90000, None),
        32 => ("MPV", 90000, None),
        33 => ("MP2T", 90000, None),
        34 => ("H263", 90000, None),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h264_opus() -> SessionDescription {
        SessionDescription {
            session_name: "Session streamed with GStreamer".into(),
            origin_address: "127.0.0.1".into(),
            session_id: 1_188_340_656_180_883,
            session_version: 1,
            range: Some("npt=now-".into()),
            media: vec![
                MediaDescription {
                    media: "video".into(),
                    payload_type: 96,
                    encoding_name: "H264".into(),
                    clock_rate: 90000,
                    encoding_params: None,
                    fmtp: vec![
                        ("packetization-mode".into(), "1".into()),
                        ("profile-level-id".into(), "42c01f".into()),
                        (
                            "sprop-parameter-sets".into(),
                            "Z0LAH9kAUAW7ARAAAAMAEAAAAwPI8YMkgA==,aMuMsg==".into(),
                        ),
                    ],
                    control: "stream=0".into(),
                    multicast: None,
                    port: 0,
                    bandwidth_kbps: Some(2000),
                    attributes: vec![
                        ("framerate".into(), Some("30".into())),
                        ("rtcp-fb".into(), Some("96 nack pli".into())),
                    ],
                },
                MediaDescription {
                    media: "audio".into(),
                    payload_type: 97,
                    encoding_name: "OPUS".into(),
                    clock_rate: 48000,
                    encoding_params: Some("2".into()),
                    fmtp: vec![("sprop-stereo".into(), "0".into())],
                    control: "stream=1".into(),
                    multicast: None,
                    port: 0,
                    bandwidth_kbps: None,
                    attributes: vec![("sendonly".into(), None)],
                },
            ],
        }
    }

    #[test]
    fn build_h264_opus() {
        assert_eq!(
            h264_opus().to_sdp_string(),
            "v=0\r\n\
             o=- 1188340656180883 1 IN IP4 127.0.0.1\r\n\
             s=Session streamed with GStreamer\r\n\
             c=IN IP4 0.0.0.0\r\n\
             t=0 0\r\n\
             a=tool:gst-plugin-livestreaming\r\n\
             a=type:broadcast\r\n\
             a=control:*\r\n\
             a=range:npt=now-\r\n\
             m=video 0 RTP/AVP 96\r\n\
             b=AS:2000\r\n\
             a=rtpmap:96 H264/90000\r\n\
             a=fmtp:96 packetization-mode=1;profile-level-id=42c01f;\
             sprop-parameter-sets=Z0LAH9kAUAW7ARAAAAMAEAAAAwPI8YMkgA==,aMuMsg==\r\n\
             a=control:stream=0\r\n\
             a=framerate:30\r\n\
             a=rtcp-fb:96 nack pli\r\n\
             m=audio 0 RTP/AVP 97\r\n\
             a=rtpmap:97 OPUS/48000/2\r\n\
             a=fmtp:97 sprop-stereo=0\r\n\
             a=control:stream=1\r\n\
             a=sendonly\r\n"
        );
    }

    #[test]
    fn round_trip_h264_opus() {
        let built = h264_opus();
        let parsed = SessionDescription::parse(built.to_sdp_string().as_bytes()).unwrap();
        assert_eq!(parsed.session_name, built.session_name);
        assert_eq!(parsed.origin_address, built.origin_address);
        assert_eq!(parsed.session_id, built.session_id);
        assert_eq!(parsed.session_version, built.session_version);
        assert_eq!(parsed.range, built.range);
        assert_eq!(parsed.media, built.media);
    }

    #[test]
    fn build_and_parse_multicast() {
        let mut desc = h264_opus();
        desc.media.truncate(1);
        desc.media[0].multicast = Some(("224.3.0.1".into(), 16));
        desc.media[0].port = 5000;
        let text = desc.to_sdp_string();
        assert!(
            text.contains("m=video 5000 RTP/AVP 96\r\nc=IN IP4 224.3.0.1/16\r\nb=AS:2000\r\n"),
            "{text}"
        );
        let parsed = SessionDescription::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed.media, desc.media);
    }

    /// A Dahua-style camera: absolute session-level control, relative media controls, LF line
    /// endings, sloppy whitespace, a static payload type and a trailing NUL.
    const CAMERA: &str = "v=0\n\
        o=- 2251938202 2251938202 IN IP4 0.0.0.0\n\
        s=Media Server\n\
        c=IN IP4 0.0.0.0\n\
        t=0 0\n\
        a=control:rtsp://192.168.1.108:554/cam/realmonitor?channel=1&subtype=0/\n\
        a=range:npt=0-\n\
        a=packetization-supported:DH\n\
        a=type:broadcast\n\
        m=video 0 RTP/AVP 96\n\
        b=AS:4096\n\
        a=control:trackID=0\n\
        a=framerate:25.000000\n\
        a=rtpmap:96  H264/90000 \n\
        a=fmtp:96 packetization-mode=1; profile-level-id=4D002A; \
        sprop-parameter-sets=Z00AKpY1QPAET8s3AQEBAg==,aO4xsg==;\n\
        a=recvonly\n\
        m=audio 0 RTP/AVP 8 101\n\
        a=control:trackID=1\n\
        a=rtpmap:101 telephone-event/8000\n\
        a=fmtp:101 0-15\n\
        a=recvonly\n\
        m=application 0 RTP/AVP 107\n\
        a=control:rtsp://192.168.1.108:554/cam/realmonitor?channel=1&subtype=0/trackID=4\n\
        a=rtpmap:107 vnd.onvif.metadata/90000\n\
        \n\0";

    #[test]
    fn parse_camera() {
        let desc = SessionDescription::parse(CAMERA.as_bytes()).unwrap();
        assert_eq!(desc.session_name, "Media Server");
        assert_eq!(desc.session_id, 2251938202);
        assert_eq!(desc.range.as_deref(), Some("npt=0-"));
        let base = "rtsp://192.168.1.108:554/cam/realmonitor?channel=1&subtype=0/";
        let [video, audio, metadata] = &desc.media[..] else {
            panic!("{:?}", desc.media);
        };

        assert_eq!(video.media, "video");
        assert_eq!(
            (
                video.payload_type,
                video.encoding_name.as_str(),
                video.clock_rate
            ),
            (96, "H264", 90000)
        );
        assert_eq!(
            video.fmtp,
            [
                ("packetization-mode".into(), "1".into()),
                ("profile-level-id".into(), "4D002A".into()),
                (
                    "sprop-parameter-sets".into(),
                    "Z00AKpY1QPAET8s3AQEBAg==,aO4xsg==".into()
                ),
            ]
        );
        assert_eq!(video.control, format!("{base}trackID=0"));
        assert_eq!(video.bandwidth_kbps, Some(4096));
        assert_eq!(video.multicast, None);
        assert_eq!(
            video.attributes,
            [
                ("framerate".into(), Some("25.000000".into())),
                ("recvonly".into(), None),
            ]
        );

        // First format of `8 101`: static PCMA, whose fmtp does not apply.
        assert_eq!(
            (
                audio.payload_type,
                audio.encoding_name.as_str(),
                audio.clock_rate
            ),
            (8, "PCMA", 8000)
        );
        assert!(audio.fmtp.is_empty());
        assert_eq!(audio.control, format!("{base}trackID=1"));

        assert_eq!(metadata.encoding_name, "vnd.onvif.metadata");
        assert_eq!(metadata.control, format!("{base}trackID=4"));
    }

    #[test]
    fn parse_relative_controls_multicast_and_static_types() {
        let sdp = b"v=0\r\n\
            o=- 0 0 IN IP4 10.0.0.1\r\n\
            s=Stream\r\n\
            c=IN IP4 232.1.1.1/32\r\n\
            t=0 0\r\n\
            a=control:*\r\n\
            m=video 5004 RTP/AVP 33\r\n\
            a=control:trackID=1\r\n\
            m=audio 5006 RTP/AVP 14\r\n\
            c=IN IP4 232.1.1.2/8\r\n\
            a=range:npt=0-12.5\r\n\
            m=audio 0 RTP/AVP 0\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        let desc = SessionDescription::parse(sdp).unwrap();
        assert_eq!(desc.range.as_deref(), Some("npt=0-12.5"));
        let [ts, mpa, pcmu] = &desc.media[..] else {
            panic!("{:?}", desc.media);
        };
        assert_eq!((ts.encoding_name.as_str(), ts.clock_rate), ("MP2T", 90000));
        assert_eq!(ts.control, "trackID=1");
        assert_eq!(ts.multicast, Some(("232.1.1.1".into(), 32)));
        assert_eq!(ts.port, 5004);
        assert_eq!((mpa.encoding_name.as_str(), mpa.clock_rate), ("MPA", 90000));
        assert_eq!(mpa.multicast, Some(("232.1.1.2".into(), 8)));
        assert_eq!(
            mpa.attributes,
            [("range".into(), Some("npt=0-12.5".into()))]
        );
        assert_eq!(
            (pcmu.encoding_name.as_str(), pcmu.clock_rate),
            ("PCMU", 8000)
        );
        assert_eq!(pcmu.control, "");
    }

    #[test]
    fn control_resolution() {
        let base = "rtsp://cam:554/live/main";
        assert_eq!(resolve_control(base, "*"), base);
        assert_eq!(resolve_control(base, ""), base);
        assert_eq!(
            resolve_control(base, "trackID=1"),
            "rtsp://cam:554/live/main/trackID=1"
        );
        assert_eq!(
            resolve_control("rtsp://cam/live/", "track1"),
            "rtsp://cam/live/track1"
        );
        assert_eq!(
            resolve_control(base, "/other/track"),
            "rtsp://cam:554/other/track"
        );
        assert_eq!(resolve_control(base, "rtsp://x/y"), "rtsp://x/y");
    }

    #[test]
    fn repairs_origin_and_connection_lines() {
        // TP-Link (pixelbender/go-sdp#5): seven fields in o=.
        let sdp = SessionDescription::parse(
            b"v=0\r\no=- 14665860 31787219 1 IN IP4 192.168.35.39\r\ns=TP-LINK\r\nt=0 0\r\n\
              m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:track1\r\n",
        )
        .unwrap();
        assert_eq!(sdp.session_id, 14665860);
        assert_eq!(sdp.origin_address, "192.168.35.39");
        // Truncated o= and c= (AlexxIT/go2rtc#1663).
        let sdp = SessionDescription::parse(
            b"v=0\r\no=- 1001 1 IN\r\ns=VCP IPC Realtime stream\r\n\
              m=video 0 RTP/AVP 105\r\nc=IN\r\na=control:rtsp://192.168.0.60/media/video1/video\r\n\
              a=rtpmap:105 H264/90000\r\n",
        )
        .unwrap();
        assert_eq!(sdp.media.len(), 1);
        assert_eq!(
            sdp.media[0].control,
            "rtsp://192.168.0.60/media/video1/video"
        );
        assert_eq!(sdp.media[0].multicast, None);
        assert!(SessionDescription::parse(b"v=0\r\no=broken\r\ns=x\r\nt=0 0\r\n").is_ok());
    }

    #[test]
    fn errors() {
        for bad in [&b""[..], b"garbage", b"v=1\r\n", b"v=0\r\ns=a\r\nt=x y\r\n"] {
            assert!(SessionDescription::parse(bad).is_err(), "{bad:?}");
        }
        let err = SessionDescription::parse(b"v=0\r\ns=a\r\ns=b\r\n").unwrap_err();
        assert!(err.to_string().starts_with("invalid SDP"), "{err}");
    }
}
