//! Client-side RTSP authentication: Basic (RFC 7617) and Digest (RFC 7616, with the RFC 2617
//! and RFC 2069 forms many cameras and gst-rtsp-server still use), as RTSP borrows them from
//! HTTP (RFC 2326 12.5, RFC 7826 19). The hashing and the header tokenizer are shared with the
//! server side ([`crate::rtsp::server::auth`]).
//!
//! Specifications: RFC 7617 §2 (Basic); RFC 7616 §3.3-§3.4 (Digest with MD5, SHA-256, -sess,
//! qop=auth); RFC 2617 §3.2 and RFC 2069 §2.1 (the older Digest forms); RFC 2326 §12.5, §12.44; RFC
//! 7826 §18.8, §18.58, §19.1.

use std::fmt;

use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Without the password: a debug print must not show it.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Digest hash algorithms (RFC 7616 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl DigestAlgorithm {
    pub(crate) fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_uppercase().as_str() {
            "MD5" => Some(Self::Md5),
            "MD5-SESS" => Some(Self::Md5Sess),
            "SHA-256" => Some(Self::Sha256),
            "SHA-256-SESS" => Some(Self::Sha256Sess),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, Self::Md5Sess | Self::Sha256Sess)
    }

    /// The hex digest of `data` (RFC 7616 3.4: `H(data)`).
    pub(crate) fn hash(self, data: &str) -> String {
        match self {
            Self::Md5 | Self::Md5Sess => hex(&Md5::digest(data.as_bytes())),
            Self::Sha256 | Self::Sha256Sess => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `HA1` of RFC 7616 3.4.2 (not the -sess form): `H(user:realm:password)`.
pub(crate) fn ha1(alg: DigestAlgorithm, user: &str, realm: &str, password: &str) -> String {
    alg.hash(&format!("{user}:{realm}:{password}"))
}

/// The `response` of RFC 7616 3.4.1 from `HA1`: `H(HA1:nonce:nc:cnonce:auth:HA2)` with
/// qop=auth (`qop` gives nc and cnonce), the RFC 2069 `H(HA1:nonce:HA2)` without.
pub(crate) fn digest_response(
    alg: DigestAlgorithm,
    ha1: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = alg.hash(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => alg.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => alg.hash(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: String,
    },
    Digest {
        realm: String,
        nonce: String,
        opaque: Option<String>,
        /// None when the challenge named no algorithm (MD5 then, but not sent back).
        algorithm: Option<DigestAlgorithm>,
        qop_auth: bool,
        stale: bool,
        userhash: bool,
    },
}

impl Challenge {
    fn realm(&self) -> &str {
        match self {
            Challenge::Basic { realm } | Challenge::Digest { realm, .. } => realm,
        }
    }

    /// Higher is stronger: Digest SHA-256 > Digest MD5 > Basic.
    fn strength(&self) -> u8 {
        match self {
            Challenge::Basic { .. } => 1,
            Challenge::Digest {
                algorithm: Some(DigestAlgorithm::Sha256 | DigestAlgorithm::Sha256Sess),
                ..
            } => 3,
            Challenge::Digest { .. } => 2,
        }
    }
}

/// Authentication failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub String);

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthError {}

/// A tiny tokenizer for `scheme param=value, param="quoted \"value\"", scheme2 ...`.
struct Tokens<'a> {
    s: &'a str,
}

enum Token {
    /// A bare word followed by `=`: a parameter name.
    Param(String),
    /// A bare word not followed by `=`: a scheme (or a token68 we ignore).
    Word(String),
    Value(String),
    Comma,
}

impl Tokens<'_> {
    fn next(&mut self) -> Option<Token> {
        self.s = self.s.trim_start();
        let c = self.s.chars().next()?;
        if c == ',' {
            self.s = &self.s[1..];
            return Some(Token::Comma);
        }
        if c == '"' {
            let mut out = String::new();
            let mut chars = self.s[1..].char_indices();
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '\\' => {
                        if let Some((_, esc)) = chars.next() {
                            out.push(esc);
                        }
                    }
                    '"' => {
                        self.s = &self.s[1 + i + 1..];
                        return Some(Token::Value(out));
                    }
                    _ => out.push(ch),
                }
            }
            self.s = "";
            return Some(Token::Value(out));
        }
        let end = self
            .s
            .find(|ch: char| ch.is_whitespace() || ch == ',' || ch == '=')
            .unwrap_or(self.s.len());
        let word = self.s[..end].to_owned();
        self.s = &self.s[end..];
        let rest = self.s.trim_start();
        if let Some(after) = rest.strip_prefix('=') {
            // `token68==` style padding belongs to the word.
            if after.starts_with('=') || after.trim_start().is_empty() {
                self.s = after.trim_start_matches('=');
                return Some(Token::Word(word));
            }
            self.s = after;
            return Some(Token::Param(word));
        }
        if word.is_empty() {
            // A lone `=`: skip it.
            self.s = &self.s[1.min(self.s.len())..];
            return self.next();
        }
        Some(Token::Word(word))
    }
}

/// Each `scheme param=value, param="quoted", ...` in `WWW-Authenticate` or `Authorization`
/// values, in order: the scheme and its parameters (a token68, such as Basic credentials, reads
/// as a scheme without parameters).
pub(crate) fn parse_auth_params<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for value in values {
        let mut tokens = Tokens { s: value };
        let mut scheme: Option<String> = None;
        let mut params: Vec<(String, String)> = Vec::new();
        let mut pending_param: Option<String> = None;
        while let Some(tok) = tokens.next() {
            match tok {
                Token::Word(w) => {
                    if let Some(p) = pending_param.take() {
                        params.push((p, w));
                    } else if let Some(s) = scheme.replace(w) {
                        out.push((s, std::mem::take(&mut params)));
                    } else {
                        // Parameters before any scheme belong to none.
                        params.clear();
                    }
                }
                Token::Param(p) => pending_param = Some(p),
                Token::Value(v) => {
                    if let Some(p) = pending_param.take() {
                        params.push((p, v));
                    }
                }
                Token::Comma => {
                    pending_param = None;
                }
            }
        }
        if let Some(s) = scheme {
            out.push((s, params));
        }
    }
    out
}

/// Parses every challenge in the `WWW-Authenticate` values of a 401, in the server's order.
/// Unknown schemes and malformed challenges are skipped.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    parse_auth_params(values)
        .iter()
        .filter_map(|(scheme, params)| build(scheme, params))
        .collect()
}

fn build(scheme: &str, params: &[(String, String)]) -> Option<Challenge> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic {
            realm: get("realm").unwrap_or_default(),
        }),
        "digest" => {
            let algorithm = match get("algorithm") {
                Some(a) => Some(DigestAlgorithm::parse(&a)?),
                None => None,
            };
            let (realm, nonce, opaque) = (get("realm")?, get("nonce")?, get("opaque"));
            // Echoed in Authorization: a quoted-string holds no control character but HTAB
            // (RFC 9110 5.6.4), and a NUL or CR would garble our header.
            let echoed = [Some(&realm), Some(&nonce), opaque.as_ref()];
            if echoed
                .into_iter()
                .flatten()
                .any(|v| v.contains(|c: char| c.is_ascii_control() && c != '\t'))
            {
                return None;
            }
            Some(Challenge::Digest {
                realm,
                nonce,
                opaque,
                algorithm,
                qop_auth: get("qop")
                    .is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth"))),
                stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
                userhash: get("userhash").is_some_and(|s| s.eq_ignore_ascii_case("true")),
            })
        }
        _ => None,
    }
}

/// The strongest supported challenge: Digest SHA-256 > Digest MD5 > Basic.
pub fn choose(challenges: &[Challenge]) -> Option<&Challenge> {
    challenges
        .iter()
        .enumerate()
        // Among equals, the server's first.
        .max_by_key(|(i, c)| (c.strength(), std::cmp::Reverse(*i)))
        .map(|(_, c)| c)
}

/// Builds `Authorization` values for one session's requests.
pub struct Authenticator {
    credentials: Credentials,
    challenge: Challenge,
    nc: u32,
    cnonce: Option<String>,
}

impl Authenticator {
    pub fn new(credentials: Credentials, challenge: Challenge) -> Self {
        Self {
            credentials,
            challenge,
            nc: 0,
            cnonce: None,
        }
    }

    /// Uses a fixed client nonce (tests, RFC vectors).
    pub fn with_cnonce(mut self, cnonce: impl Into<String>) -> Self {
        self.cnonce = Some(cnonce.into());
        self
    }

    /// The `Authorization` value for `method` on `uri` (the request URI exactly as sent).
    pub fn authorization(&mut self, method: &str, uri: &str) -> String {
        let Credentials { user, password } = &self.credentials;
        match &self.challenge {
            Challenge::Basic { .. } => {
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {token}")
            }
            Challenge::Digest {
                realm,
                nonce,
                opaque,
                algorithm,
                qop_auth,
                userhash,
                ..
            } => {
                let alg = algorithm.unwrap_or(DigestAlgorithm::Md5);
                self.nc += 1;
                let nc = format!("{:08x}", self.nc);
                let cnonce = self.cnonce.clone().unwrap_or_else(|| {
                    use rand::RngExt;
                    format!("{:016x}", rand::rng().random::<u64>())
                });
                let mut ha1 = ha1(alg, user, realm, password);
                if alg.is_sess() {
                    ha1 = alg.hash(&format!("{ha1}:{nonce}:{cnonce}"));
                }
                let qop = qop_auth.then_some((nc.as_str(), cnonce.as_str()));
                let response = digest_response(alg, &ha1, nonce, qop, method, uri);
                let username = if *userhash {
                    alg.hash(&format!("{user}:{realm}"))
                } else {
                    user.clone()
                };
                let q = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
                let mut h = format!(
                    "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\"",
                    q(&username),
                    q(realm),
                    q(nonce),
                    q(uri),
                    response
                );
                if let Some(a) = algorithm {
                    h.push_str(&format!(", algorithm={}", a.name()));
                }
                if *qop_auth {
                    h.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{}\"", q(&cnonce)));
                }
                if let Some(o) = opaque {
                    h.push_str(&format!(", opaque=\"{}\"", q(o)));
                }
                if *userhash {
                    h.push_str(", userhash=true");
                }
                h
            }
        }
    }

    /// After another 401: a stale Digest nonce is adopted (`Ok(true)`: retry); anything else
    /// means the credentials are wrong.
    pub fn on_unauthorized(&mut self, challenges: &[Challenge]) -> Result<bool, AuthError> {
        let stale = challenges.iter().find(|c| {
            matches!(c, Challenge::Digest { stale: true, .. })
                && c.realm() == self.challenge.realm()
        });
        if let Some(c) = stale {
            self.challenge = c.clone();
            self.nc = 0;
            return Ok(true);
        }
        Err(AuthError(format!(
            "the server refused the credentials of user '{}' for realm '{}'",
            self.credentials.user,
            self.challenge.realm()
        )))
    }
}

/// Credentials in an `rtsp://user:pass@host/` URL (percent-decoded), and the URL without them.
pub fn split_url_credentials(url: &url::Url) -> (Option<Credentials>, url::Url) {
    if url.username().is_empty() && url.password().is_none() {
        return (None, url.clone());
    }
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let credentials = Credentials {
        user: decode(url.username()),
        password: decode(url.password().unwrap_or("")),
    };
    let mut clean = url.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    (Some(credentials), clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    fn response_of(header: &str) -> &str {
        let i = header.find("response=\"").unwrap() + "response=\"".len();
        &header[i..i + header[i..].find('"').unwrap()]
    }

    /// RFC 7616 3.9.1, MD5 and SHA-256.
    #[test]
    fn rfc7616_vectors() {
        for (alg, expected) in [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let header = format!(
                "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm={alg}, \
                 nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            );
            let challenges = parse_challenges([header.as_str()]);
            assert_eq!(challenges.len(), 1, "{challenges:?}");
            let mut a =
                Authenticator::new(creds("Mufasa", "Circle of Life"), challenges[0].clone())
                    .with_cnonce("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ");
            let h = a.authorization("GET", "/dir/index.html");
            assert_eq!(response_of(&h), expected, "{alg}: {h}");
            assert!(h.contains("nc=00000001"), "{h}");
            assert!(h.contains("qop=auth"), "{h}");
            assert!(h.contains("opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""));
            assert!(h.contains(&format!("algorithm={alg}")));
            // The nonce count goes up per request.
            assert!(a.authorization("GET", "/").contains("nc=00000002"));
        }
    }

    /// RFC 2617 3.5.
    #[test]
    fn rfc2617_vector() {
        let c = parse_challenges([
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        ]);
        let mut a = Authenticator::new(creds("Mufasa", "Circle Of Life"), c[0].clone())
            .with_cnonce("0a4f113b");
        let h = a.authorization("GET", "/dir/index.html");
        assert_eq!(response_of(&h), "6629fae49393a05397450978507c4ef1");
        // No algorithm in the challenge: none in the answer.
        assert!(!h.contains("algorithm="), "{h}");
    }

    /// Without qop (RFC 2069, gst-rtsp-server and many cameras): H(HA1:nonce:HA2).
    /// Expected value computed with: printf '%s' "$HA1:abc123:$HA2" | md5sum, where
    /// HA1 = md5("user:GStreamer RTSP Server:pass"), HA2 = md5("DESCRIBE:rtsp://127.0.0.1:8554/test").
    #[test]
    fn digest_without_qop() {
        let c = parse_challenges([r#"Digest realm="GStreamer RTSP Server", nonce="abc123""#]);
        let mut a = Authenticator::new(creds("user", "pass"), c[0].clone());
        let h = a.authorization("DESCRIBE", "rtsp://127.0.0.1:8554/test");
        // HA1 9db155140832df48f10c69ff26842e94, HA2 9e70e3dc403261d64044e1fc239afe0b.
        assert_eq!(response_of(&h), "5e90d41a54d513e1a5f52865c94e52be");
        assert!(!h.contains("nc="), "{h}");
        assert!(!h.contains("cnonce="), "{h}");
    }

    /// RFC 7617 2.
    #[test]
    fn basic() {
        let mut a = Authenticator::new(
            creds("Aladdin", "open sesame"),
            Challenge::Basic {
                realm: "WallyWorld".into(),
            },
        );
        assert_eq!(
            a.authorization("DESCRIBE", "rtsp://x/"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn parses_real_headers_and_chooses_the_strongest() {
        let c = parse_challenges([
            r#"Digest realm="GStreamer RTSP Server", nonce="1234abcd""#,
            r#"Basic realm="GStreamer RTSP Server""#,
        ]);
        assert_eq!(c.len(), 2);
        assert!(matches!(choose(&c), Some(Challenge::Digest { .. })));

        let c =
            parse_challenges([r#"Digest realm="IP Camera(12345)", nonce="abc", stale="FALSE""#]);
        assert!(matches!(
            &c[0],
            Challenge::Digest { realm, stale: false, .. } if realm == "IP Camera(12345)"
        ));

        let c = parse_challenges([
            r#"Digest realm="a", nonce="n", algorithm=SHA-256, qop="auth,auth-int", Digest realm="a", nonce="n", algorithm=MD5, Basic realm="a""#,
        ]);
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(matches!(
            choose(&c),
            Some(Challenge::Digest {
                algorithm: Some(DigestAlgorithm::Sha256),
                qop_auth: true,
                ..
            })
        ));

        let c = parse_challenges([r#"Basic realm="say \"hi\", ok""#]);
        assert_eq!(
            c,
            vec![Challenge::Basic {
                realm: "say \"hi\", ok".into()
            }]
        );
        // Unknown schemes and broken challenges are skipped.
        assert!(parse_challenges(["Bearer xyz==", "Digest realm=\"r\""]).is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        let alphabet = b"Digest Basic realm=\"\\,=abc ";
        for _ in 0..20000 {
            let len = (seed % 40) as usize;
            let s: String = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    alphabet[(seed >> 33) as usize % alphabet.len()] as char
                })
                .collect();
            let _ = parse_challenges([s.as_str()]);
        }
    }

    #[test]
    fn stale_nonces_are_adopted_and_wrong_credentials_are_an_error() {
        let first = parse_challenges([r#"Digest realm="r", nonce="one""#]);
        let mut a = Authenticator::new(creds("bob", "secret"), first[0].clone());
        let _ = a.authorization("DESCRIBE", "/");
        let stale = parse_challenges([r#"Digest realm="r", nonce="two", stale=true"#]);
        assert_eq!(a.on_unauthorized(&stale), Ok(true));
        assert!(a.authorization("DESCRIBE", "/").contains("nonce=\"two\""));
        let err = a.on_unauthorized(&first).unwrap_err().to_string();
        assert!(err.contains("bob") && err.contains("'r'"), "{err}");
        assert!(!err.contains("secret"));
    }

    #[test]
    fn credentials_in_urls() {
        let url = url::Url::parse("rtsp://us%40er:p%3Ass@host:554/path").unwrap();
        let (c, clean) = split_url_credentials(&url);
        assert_eq!(c, Some(creds("us@er", "p:ss")));
        assert_eq!(clean.as_str(), "rtsp://host:554/path");
        let plain = url::Url::parse("rtsp://host/x").unwrap();
        assert_eq!(split_url_credentials(&plain), (None, plain.clone()));
    }
}
