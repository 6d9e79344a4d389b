//! Formatting for the server's log records: RTSP messages as one line, headers and bodies with
//! secrets removed (`Authorization` values, `user:pass@` in URLs). Everything here is meant to run
//! only once the level is known to be on.
//!
//! Specifications: RFC 2326 §6.1/§7.1 (request and status lines), RFC 7235 §4.2 (Authorization),
//! RFC 3986 §3.2.1 (userinfo in URLs).

use std::fmt;

use rtsp_types::{HeaderName, HeaderValue};

/// Headers whose values are credentials.
fn is_secret_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("proxy-authorization")
}

/// `text` with the user info of any `scheme://user:pass@host` in it replaced by `redacted`.
pub use crate::net::redact::mask_userinfo as redact_urls;

/// The headers (and a textual body) of a message, `Name: value` separated by `; `, secrets
/// redacted.
pub struct Dump<'a> {
    headers: Vec<(&'a HeaderName, &'a HeaderValue)>,
    body: &'a [u8],
}

impl<'a> Dump<'a> {
    pub fn new(
        headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
        body: &'a [u8],
    ) -> Self {
        Self {
            headers: headers.collect(),
            body,
        }
    }
}

/// Bodies longer than this are summarised by their size.
const MAX_BODY_LOGGED: usize = 4096;

impl fmt::Display for Dump<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.headers.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if is_secret_header(name.as_str()) {
                write!(f, "{name}: <redacted>")?;
            } else {
                write!(f, "{name}: {}", redact_urls(value.as_str()))?;
            }
        }
        if self.body.is_empty() {
            return Ok(());
        }
        let text = std::str::from_utf8(self.body)
            .ok()
            .filter(|t| t.len() <= MAX_BODY_LOGGED);
        match text {
            Some(t) => write!(
                f,
                "; body: {}",
                redact_urls(t.trim_end()).replace("\r\n", " | ")
            ),
            None => write!(f, "; body: {} bytes", self.body.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_values_are_redacted() {
        let req =
            rtsp_types::Request::builder(rtsp_types::Method::Options, rtsp_types::Version::V1_0)
                .header(rtsp_types::headers::CSEQ, "1")
                .header(rtsp_types::headers::AUTHORIZATION, "Basic c2VjcmV0")
                .header(
                    rtsp_types::headers::PROXY_AUTHORIZATION,
                    "Digest response=\"abc\"",
                )
                .build(b"a=b\r\n".to_vec());
        let text = Dump::new(req.headers(), req.body()).to_string();
        assert!(text.contains("CSeq: 1"), "{text}");
        assert!(text.contains("Authorization: <redacted>"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(!text.contains("abc"), "{text}");
        assert!(text.ends_with("body: a=b"), "{text}");
    }
}
