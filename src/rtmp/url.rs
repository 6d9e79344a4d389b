//! RTMP locations: `rtmp[t][s]://host[:port]/app[/instance]/stream[?query]` (`rtmpt`: tunnelled
//! in HTTP, `rtmpts`: that inside TLS). Everything between the
//! host and the last path segment is the application (as rtmp2sink reads it); the last segment and
//! the query are the stream name, which usually is a secret stream key and is kept out of logs.
//!
//! Specifications: RFC 3986 (URI syntax); how an rtmp/rtmps location splits into application and
//! stream follows rtmp2sink and librtmp (there is no formal specification).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Rtmp,
    Rtmps,
    /// RTMP tunnelled in HTTP POST requests ([`super::tunnel`]).
    Rtmpt,
    /// RTMPT inside TLS (HTTPS).
    Rtmpts,
    /// RTMP encrypted with RC4 after a Diffie-Hellman handshake ([`super::rtmpe`]).
    Rtmpe,
    /// RTMPE in the RTMPT tunnel.
    Rtmpte,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Rtmp => 1935,
            Scheme::Rtmps => 443,
            Scheme::Rtmpt => 80,
            Scheme::Rtmpts => 443,
            Scheme::Rtmpe => 1935,
            Scheme::Rtmpte => 80,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Rtmp => "rtmp",
            Scheme::Rtmps => "rtmps",
            Scheme::Rtmpt => "rtmpt",
            Scheme::Rtmpts => "rtmpts",
            Scheme::Rtmpe => "rtmpe",
            Scheme::Rtmpte => "rtmpte",
        }
    }

    /// The connection is TLS (rtmps, rtmpts).
    pub fn tls(self) -> bool {
        matches!(self, Scheme::Rtmps | Scheme::Rtmpts)
    }

    /// RTMP travels in HTTP requests (rtmpt, rtmpts).
    pub fn tunnelled(self) -> bool {
        matches!(self, Scheme::Rtmpt | Scheme::Rtmpts | Scheme::Rtmpte)
    }

    /// RTMPE's handshake and RC4 (rtmpe, rtmpte).
    pub fn encrypted(self) -> bool {
        matches!(self, Scheme::Rtmpe | Scheme::Rtmpte)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Location {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub app: String,
    pub stream: String,
}

/// The stream key is redacted.
impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `rtmp://host:port/app/<N-character stream name>`: safe for logs and error messages.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/<{}-character stream name>",
            self.tc_url(),
            self.stream.chars().count()
        )
    }
}

/// A location that cannot be published to. The messages never quote the stream name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("location is not a URL ({0})")]
    NotAUrl(url::ParseError),
    #[error(
        "unsupported scheme '{0}' (rtmp://, rtmps://, rtmpt://, rtmpts://, rtmpe:// or rtmpte://)"
    )]
    Scheme(String),
    #[error("location has no host")]
    NoHost,
    #[error("location needs an application and a stream: rtmp://host/app/stream")]
    NoPath,
    #[error("location has no application: rtmp://host/app/stream")]
    NoApplication,
    #[error("location has no stream name: rtmp://host/app/stream")]
    NoStream,
}

impl Location {
    pub fn parse(location: &str) -> Result<Location, LocationError> {
        let url = url::Url::parse(location.trim()).map_err(LocationError::NotAUrl)?;
        let scheme = match url.scheme() {
            "rtmp" => Scheme::Rtmp,
            "rtmps" => Scheme::Rtmps,
            "rtmpt" => Scheme::Rtmpt,
            "rtmpts" => Scheme::Rtmpts,
            "rtmpe" => Scheme::Rtmpe,
            "rtmpte" => Scheme::Rtmpte,
            s => return Err(LocationError::Scheme(s.to_owned())),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(LocationError::NoHost),
        };
        if host.is_empty() {
            return Err(LocationError::NoHost);
        }
        let port = url.port().unwrap_or(scheme.default_port());
        let path = url.path().trim_start_matches('/');
        let (app, stream) = path.rsplit_once('/').ok_or(LocationError::NoPath)?;
        let app = app.trim_end_matches('/');
        if app.is_empty() {
            return Err(LocationError::NoApplication);
        }
        let mut stream = decode(stream);
        if stream.is_empty() {
            return Err(LocationError::NoStream);
        }
        if let Some(q) = url.query() {
            stream.push('?');
            stream.push_str(q);
        }
        Ok(Location {
            scheme,
            host,
            port,
            app: decode(app),
            stream,
        })
    }

    /// From separate parts, as rtmp2sink's host/port/application/stream properties give them.
    pub fn from_parts(scheme: Scheme, host: &str, port: u16, app: &str, stream: &str) -> Location {
        Location {
            scheme,
            host: host.to_owned(),
            port,
            app: app.trim_matches('/').to_owned(),
            stream: stream.to_owned(),
        }
    }

    /// The `tcUrl` of connect: the location without the stream.
    pub fn tc_url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{}://{}:{}/{}",
            self.scheme.as_str(),
            host,
            self.port,
            self.app
        )
    }

    /// The full location, stream key included (never log this); the port only when it is not
    /// the scheme's default.
    pub fn to_uri(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let port = if self.port == self.scheme.default_port() {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        format!(
            "{}://{host}{port}/{}/{}",
            self.scheme.as_str(),
            self.app,
            self.stream
        )
    }
}

fn decode(s: &str) -> String {
    // Percent-decoding of the path; invalid sequences stay as written.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let l = Location::parse("rtmp://127.0.0.1/live/stream").unwrap();
        assert_eq!(
            (
                l.scheme,
                l.host.as_str(),
                l.port,
                l.app.as_str(),
                l.stream.as_str()
            ),
            (Scheme::Rtmp, "127.0.0.1", 1935, "live", "stream")
        );
        assert_eq!(l.tc_url(), "rtmp://127.0.0.1:1935/live");
        let l = Location::parse("rtmps://example.com:8443/app/inst/key123?token=abc").unwrap();
        assert_eq!(l.scheme, Scheme::Rtmps);
        assert_eq!(l.port, 8443);
        assert_eq!(l.app, "app/inst");
        assert_eq!(l.stream, "key123?token=abc");
        assert_eq!(Location::parse("rtmps://h/a/s").unwrap().port, 443);
        let l = Location::parse("rtmp://[::1]:1936/live/s%20x").unwrap();
        assert_eq!(l.host, "::1");
        assert_eq!(l.stream, "s x");
        assert_eq!(l.tc_url(), "rtmp://[::1]:1936/live");
        assert_eq!(l.to_uri(), "rtmp://[::1]:1936/live/s x");
        let l = Location::parse("rtmp://h/live/k?a=b").unwrap();
        assert_eq!(l.to_uri(), "rtmp://h/live/k?a=b");
        assert_eq!(Location::parse(&l.to_uri()).unwrap(), l);
    }

    #[test]
    fn tunnel_schemes() {
        let l = Location::parse("rtmpt://127.0.0.1/live/key").unwrap();
        assert_eq!((l.scheme, l.port), (Scheme::Rtmpt, 80));
        assert!(l.scheme.tunnelled() && !l.scheme.tls());
        assert_eq!(l.tc_url(), "rtmpt://127.0.0.1:80/live");
        let l = Location::parse("rtmpts://h:8443/live/key").unwrap();
        assert_eq!((l.scheme, l.port), (Scheme::Rtmpts, 8443));
        assert!(l.scheme.tunnelled() && l.scheme.tls());
        assert_eq!(Location::parse(&l.to_uri()).unwrap(), l);
        let l = Location::parse("rtmpte://h/live/key").unwrap();
        assert_eq!((l.scheme, l.port), (Scheme::Rtmpte, 80));
        assert!(l.scheme.tunnelled() && l.scheme.encrypted() && !l.scheme.tls());
        let l = Location::parse("rtmpe://h/live/key").unwrap();
        assert_eq!((l.scheme, l.port), (Scheme::Rtmpe, 1935));
        assert!(!l.scheme.tunnelled() && l.scheme.encrypted());
        assert_eq!(
            Location::parse("rtmfp://h/a/s"),
            Err(LocationError::Scheme("rtmfp".into()))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            Location::parse("http://h/a/s"),
            Err(LocationError::Scheme("http".into()))
        );
        assert_eq!(
            Location::parse("rtmp://h/stream"),
            Err(LocationError::NoPath)
        );
        assert_eq!(
            Location::parse("rtmp://h/live/"),
            Err(LocationError::NoStream)
        );
        assert!(Location::parse("rtmp:///live/x").is_err());
        assert!(matches!(
            Location::parse("not a url"),
            Err(LocationError::NotAUrl(_))
        ));
    }

    #[test]
    fn stream_key_is_not_displayed() {
        let l = Location::parse("rtmp://h/live/sk_live_SECRET?k=SECRET2").unwrap();
        let shown = format!("{l} {l:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("rtmp://h:1935/live"));
    }
}
