//! The response headers the client reads, parsed as IP cameras write them: `Session`
//! ([RFC 2326 section 12.37]), `RTP-Info` ([RFC 2326 section 12.33], [RFC 7826 section 18.45]),
//! `Public` ([RFC 2326 section 12.28]) and `Content-Base` ([RFC 2326 section 12.11], C.1.1).
//!
//! Specifications: RFC 2326 §12.11, §12.28, §12.33, §12.37, appendix C.1.1; RFC 7826 §18.45.
//!
//! `rtsp-types` has typed headers for some of these, but they take `;timeout=` only without
//! spaces, fail on `timeout = 60`, and split `RTP-Info` on every `,` and `;`. Cameras write
//! spaces around `;` and `=`, upper-case parameter names, quoted values, RTP-Info without
//! `rtptime` or with relative or full URLs. So: names are case-insensitive, whitespace around
//! separators is ignored, values may be quoted, and an unknown or malformed parameter is
//! ignored with a warning naming it, never the whole header. (`Transport` is parsed the same
//! way in [`crate::rtsp::transport`].)
//!
//! [RFC 2326 section 12.37]: https://www.rfc-editor.org/rfc/rfc2326#section-12.37
//! [RFC 2326 section 12.33]: https://www.rfc-editor.org/rfc/rfc2326#section-12.33
//! [RFC 7826 section 18.45]: https://www.rfc-editor.org/rfc/rfc7826#section-18.45
//! [RFC 2326 section 12.28]: https://www.rfc-editor.org/rfc/rfc2326#section-12.28
//! [RFC 2326 section 12.11]: https://www.rfc-editor.org/rfc/rfc2326#section-12.11

use std::time::Duration;

use super::{RtpInfo, StreamInfo};
use crate::rtsp::transport::split_unquoted;

/// `name` is the `id` of the warnings logged (the element's name).
///
/// `Session: id[;timeout=N]`: the session id and, if given and readable, the timeout.
///
/// The id is what precedes the first `;`, trimmed and unquoted; cameras also write
/// `id; timeout = 60`, `id;Timeout=60` and `id;timeout="60"`. A malformed timeout is ignored
/// with a warning (the default applies). None: no id at all.
pub fn parse_session(name: &str, value: &str) -> Option<(String, Option<Duration>)> {
    let mut params = split_unquoted(value, ';');
    let id = unquote(params.next().unwrap_or_default());
    if id.is_empty() {
        return None;
    }
    let mut timeout = None;
    for param in params.filter(|p| !p.is_empty()) {
        let (key, v) = key_value(param);
        if !key.eq_ignore_ascii_case("timeout") {
            log::warn!(id = name; "Session: ignoring the unknown parameter `{param}`");
            continue;
        }
        match v.and_then(|v| v.parse::<u64>().ok()) {
            Some(secs) => timeout = Some(Duration::from_secs(secs)),
            None => log::warn!(id = name; "Session: ignoring the malformed parameter `{param}`"),
        }
    }
    Some((id.to_owned(), timeout))
}

/// Whether a `Public` header lists `method` (names compared case-insensitively; commas, spaces
/// or both between them).
pub fn public_lists(value: &str, method: &str) -> bool {
    value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .any(|m| m.trim().eq_ignore_ascii_case(method))
}

/// The base URL for the description's control URLs: `Content-Base` (or `Content-Location`) as
/// the server sent it, trimmed and unquoted, made absolute against the request URL when it is
/// relative; the request URL when the header is missing, empty or unusable (with a warning).
pub fn content_base(name: &str, header: Option<&str>, request_url: &url::Url) -> String {
    let Some(value) = header.map(unquote).filter(|v| !v.is_empty()) else {
        return request_url.to_string();
    };
    if value.contains("://") {
        // As sent, trailing slash and all (see `resolve_control`); only a string that is no
        // URL at all is rejected.
        if url::Url::parse(value).is_ok() {
            return value.to_owned();
        }
    } else if let Ok(joined) = request_url.join(value) {
        return joined.to_string();
    }
    log::warn!(
        id = name;
        "Content-Base: ignoring the unusable value `{}`, using the request URL instead",
        super::redact_url(value)
    );
    request_url.to_string()
}

/// A `Location` (3xx answer or REDIRECT): trimmed and unquoted, made absolute against the
/// request URL when it is a path; None when it is no URL.
pub fn location(value: &str, request_url: &url::Url) -> Option<url::Url> {
    let value = unquote(value);
    if value.is_empty() {
        return None;
    }
    match url::Url::parse(value) {
        Ok(u) => Some(u),
        Err(url::ParseError::RelativeUrlWithoutBase) => request_url.join(value).ok(),
        Err(_) => None,
    }
}

/// Parses RTP-Info, matching each entry to a stream by its `url`.
///
/// Entries are separated by `,` and parameters by `;` outside quotes, with any whitespace
/// around them; names are case-insensitive; `seq` or `rtptime` may be missing (then None),
/// a malformed one is ignored with a warning. URLs may be absolute, an absolute path or
/// relative, quoted or not, with or without a trailing slash: an entry belongs to the stream
/// whose control URL ends with the entry's URL (or the other way round). With one stream, an
/// entry that matches nothing (cameras answer with the presentation URL) belongs to it.
pub fn parse_rtp_info(name: &str, value: &str, streams: &[StreamInfo]) -> Vec<RtpInfo> {
    let mut out: Vec<RtpInfo> = Vec::new();
    for entry in split_unquoted(value, ',').filter(|e| !e.is_empty()) {
        let mut info = RtpInfo::default();
        let mut url = None;
        for param in split_unquoted(entry, ';').filter(|p| !p.is_empty()) {
            let (key, v) = key_value(param);
            let key = key.to_ascii_lowercase();
            let ok = match key.as_str() {
                "url" => {
                    url = v.filter(|v| !v.is_empty());
                    url.is_some()
                }
                "seq" => {
                    info.seq = v.and_then(|v| v.parse().ok());
                    info.seq.is_some()
                }
                "rtptime" => {
                    info.rtptime = v.and_then(|v| v.parse().ok());
                    info.rtptime.is_some()
                }
                // RFC 7826 section 18.45: the SSRC the stream is sent with.
                "ssrc" => {
                    info.ssrc = v.and_then(crate::rtsp::transport::parse_ssrc);
                    info.ssrc.is_some()
                }
                _ => {
                    log::warn!(id = name; "RTP-Info: ignoring the unknown parameter `{param}`");
                    true
                }
            };
            if !ok {
                log::warn!(id = name; "RTP-Info: ignoring the malformed parameter `{param}`");
            }
        }
        let Some(url) = url else {
            log::warn!(id = name; "RTP-Info: ignoring the entry `{}` without url", super::redact_url(entry));
            continue;
        };
        let matched = streams
            .iter()
            .find(|s| same_resource(&s.control, url))
            .or_else(|| (streams.len() == 1).then(|| &streams[0]));
        match matched {
            Some(s) if !out.iter().any(|i| i.stream == s.index) => {
                info.stream = s.index;
                out.push(info);
            }
            Some(_) => {}
            None => log::warn!(
                id = name;
                "RTP-Info: the url `{}` names none of the streams",
                super::redact_url(url)
            ),
        }
    }
    out
}

/// Whether an RTP-Info `url` names the stream with control URL `control`.
fn same_resource(control: &str, url: &str) -> bool {
    let control = control.trim_end_matches('/');
    let url = url.trim_end_matches('/');
    if control.is_empty() || url.is_empty() {
        return false;
    }
    if control == url {
        return true;
    }
    // A full URL may differ from ours in the host's spelling, credentials or a default port:
    // compare from the path on.
    let path_of = |u: &str| -> Option<String> {
        let parsed = url::Url::parse(u).ok()?;
        let mut p = parsed.path().to_owned();
        if let Some(q) = parsed.query() {
            p.push('?');
            p.push_str(q);
        }
        Some(p.trim_end_matches('/').to_owned())
    };
    let (control, url) = match (path_of(control), path_of(url)) {
        (Some(c), Some(u)) => return c == u,
        (Some(c), None) => (c, url.to_owned()),
        (None, _) => (control.to_owned(), url.to_owned()),
    };
    // A relative url names the end of the path: `trackID=1` is `.../trackID=1`.
    let url = url.trim_start_matches('/');
    !url.is_empty()
        && control
            .strip_suffix(url)
            .is_some_and(|head| head.ends_with('/') || head.is_empty())
}

/// `key=value` with whitespace around `=` and the value unquoted; `key` alone has no value.
fn key_value(param: &str) -> (&str, Option<&str>) {
    match param.split_once('=') {
        Some((k, v)) => (k.trim(), Some(unquote(v))),
        None => (param.trim(), None),
    }
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtsp::sdp::MediaDescription;

    fn stream(index: usize, control: &str) -> StreamInfo {
        StreamInfo {
            index,
            media: MediaDescription {
                media: "video".into(),
                payload_type: 96,
                encoding_name: "H264".into(),
                clock_rate: 90000,
                encoding_params: None,
                fmtp: Vec::new(),
                control: String::new(),
                multicast: None,
                port: 0,
                bandwidth_kbps: None,
                attributes: Vec::new(),
            },
            control: control.into(),
        }
    }

    fn info(stream: usize, seq: Option<u16>, rtptime: Option<u32>) -> RtpInfo {
        RtpInfo {
            stream,
            seq,
            rtptime,
            ssrc: None,
        }
    }

    #[test]
    fn session_forms() {
        let s = |v: &str| parse_session("test", v);
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(s("12345678"), Some(("12345678".into(), None)));
        assert_eq!(
            s("12345678;timeout=60"),
            Some(("12345678".into(), secs(60)))
        );
        // Spaces, case, quotes (Hikvision, Axis and others write these).
        assert_eq!(s(" 1234; timeout = 60 "), Some(("1234".into(), secs(60))));
        assert_eq!(s("1234;Timeout=60"), Some(("1234".into(), secs(60))));
        assert_eq!(s("1234 ;TIMEOUT=\"30\""), Some(("1234".into(), secs(30))));
        assert_eq!(
            s("\"ABCD-ef01\";timeout=5"),
            Some(("ABCD-ef01".into(), secs(5)))
        );
        // Odd ids (bluenviron/gortsplib#95).
        assert_eq!(
            s("121.254.102.120+7789+937239728"),
            Some(("121.254.102.120+7789+937239728".into(), None))
        );
        // Malformed or unknown parameters are ignored, the id is kept.
        assert_eq!(s("1234;timeout=abc"), Some(("1234".into(), None)));
        assert_eq!(s("1234;timeout"), Some(("1234".into(), None)));
        assert_eq!(s("1234;;x-foo=1;timeout=9"), Some(("1234".into(), secs(9))));
        assert_eq!(s(""), None);
        assert_eq!(s(" ;timeout=60"), None);
    }

    #[test]
    fn public_forms() {
        let p = "OPTIONS, DESCRIBE, SETUP, TEARDOWN, PLAY, PAUSE, GET_PARAMETER";
        assert!(public_lists(p, "GET_PARAMETER"));
        assert!(public_lists(
            "options,describe,get_parameter",
            "GET_PARAMETER"
        ));
        assert!(public_lists(
            "OPTIONS DESCRIBE GET_PARAMETER",
            "GET_PARAMETER"
        ));
        assert!(!public_lists(
            "OPTIONS, DESCRIBE, SET_PARAMETER",
            "GET_PARAMETER"
        ));
        assert!(!public_lists("X-GET_PARAMETERS", "GET_PARAMETER"));
    }

    #[test]
    fn content_base_forms() {
        let req = url::Url::parse("rtsp://cam:554/Streaming/Channels/101").unwrap();
        assert_eq!(
            content_base("test", None, &req),
            "rtsp://cam:554/Streaming/Channels/101"
        );
        assert_eq!(content_base("test", Some("  "), &req), req.as_str());
        // Kept as sent: Dahua's query with a trailing slash.
        assert_eq!(
            content_base(
                "test",
                Some("rtsp://cam/cam/realmonitor?channel=1&subtype=0/"),
                &req
            ),
            "rtsp://cam/cam/realmonitor?channel=1&subtype=0/"
        );
        assert_eq!(
            content_base("test", Some(" \"rtsp://cam/live/\" "), &req),
            "rtsp://cam/live/"
        );
        // Relative: against the request URL.
        assert_eq!(
            content_base("test", Some("/other/"), &req),
            "rtsp://cam:554/other/"
        );
        // Unusable: the request URL.
        assert_eq!(
            content_base("test", Some("rtsp://[::1"), &req),
            req.as_str()
        );
    }

    #[test]
    fn location_forms() {
        let req = url::Url::parse("rtsp://cam:554/live").unwrap();
        let l = |v: &str| location(v, &req).map(String::from);
        assert_eq!(
            l("rtsp://other:8554/x").as_deref(),
            Some("rtsp://other:8554/x")
        );
        assert_eq!(l(" \"rtsp://other/x\" ").as_deref(), Some("rtsp://other/x"));
        assert_eq!(l("/elsewhere").as_deref(), Some("rtsp://cam:554/elsewhere"));
        assert_eq!(l(""), None);
        assert_eq!(l("rtsp://[::1"), None);
    }

    #[test]
    fn rtp_info_matches_streams_by_url() {
        let streams = [
            stream(0, "rtsp://h/live/stream=0"),
            stream(1, "rtsp://h/live/stream=1"),
        ];
        let parsed = parse_rtp_info(
            "test",
            "url=rtsp://h/live/stream=1;seq=7;rtptime=900, url=rtsp://h/live/stream=0;seq=65535;rtptime=4294967295",
            &streams,
        );
        assert_eq!(
            parsed,
            [
                info(1, Some(7), Some(900)),
                info(0, Some(65535), Some(u32::MAX))
            ]
        );
        // Relative urls (some servers) and garbage.
        let parsed = parse_rtp_info(
            "test",
            "url=stream=0;seq=1, garbage;;;, url=nope;seq=2",
            &streams,
        );
        assert_eq!(parsed, [info(0, Some(1), None)]);
    }

    #[test]
    fn rtp_info_camera_forms() {
        let streams = [
            stream(
                0,
                "rtsp://192.168.1.10:554/cam/realmonitor?channel=1&subtype=0/trackID=0",
            ),
            stream(
                1,
                "rtsp://192.168.1.10:554/cam/realmonitor?channel=1&subtype=0/trackID=1",
            ),
        ];
        // Spaces around `;`, `,` and `=`, upper-case names, no rtptime.
        let parsed = parse_rtp_info(
            "test",
            "URL = rtsp://192.168.1.10:554/cam/realmonitor?channel=1&subtype=0/trackID=0 ; SEQ = 3187 ,\
             url=rtsp://192.168.1.10/cam/realmonitor?channel=1&subtype=0/trackID=1;seq=12;rtptime=0",
            &streams,
        );
        assert_eq!(
            parsed,
            [info(0, Some(3187), None), info(1, Some(12), Some(0))]
        );
        // Other host spelling, credentials, quoted url, trailing slash, rtptime only.
        let parsed = parse_rtp_info(
            "test",
            "url=\"rtsp://admin@CAMERA.local/cam/realmonitor?channel=1&subtype=0/trackID=1/\";rtptime=5",
            &streams,
        );
        assert_eq!(parsed, [info(1, None, Some(5))]);
        // Malformed values are ignored, the entry stays.
        let parsed = parse_rtp_info(
            "test",
            "url=trackID=0;seq=70000;rtptime=-1;ssrc=1234ABCDE",
            &streams,
        );
        assert_eq!(parsed, [info(0, None, None)]);
        // RFC 7826's ssrc.
        let parsed = parse_rtp_info("test", "url=trackID=0;seq=1;ssrc=1234ABCD", &streams);
        assert_eq!(
            parsed,
            [RtpInfo {
                ssrc: Some(0x1234_abcd),
                ..info(0, Some(1), None)
            }]
        );
        // An absolute path.
        let parsed = parse_rtp_info(
            "test",
            "url=/cam/realmonitor?channel=1&subtype=0/trackID=1;seq=1",
            &streams,
        );
        assert_eq!(parsed, [info(1, Some(1), None)]);
        // trackID=1 must not match trackID=11.
        let parsed = parse_rtp_info(
            "test",
            "url=rtsp://h/trackID=1;seq=1",
            &[
                stream(0, "rtsp://h/trackID=11"),
                stream(1, "rtsp://h/trackID=1"),
            ],
        );
        assert_eq!(parsed, [info(1, Some(1), None)]);
    }

    #[test]
    fn rtp_info_of_one_stream_may_name_the_presentation() {
        // ZoneMinder/zoneminder#911-style cameras answer with the presentation URL.
        let streams = [stream(0, "rtsp://192.168.10.20/live2.sdp/track1")];
        let parsed = parse_rtp_info(
            "test",
            "url=rtsp://192.168.10.20/live2.sdp;seq=3187;rtptime=0",
            &streams,
        );
        assert_eq!(parsed, [info(0, Some(3187), Some(0))]);
        // Not with several streams.
        let two = [
            stream(0, "rtsp://h/live/track1"),
            stream(1, "rtsp://h/live/track2"),
        ];
        assert!(parse_rtp_info("test", "url=rtsp://h/live;seq=1", &two).is_empty());
    }
}
