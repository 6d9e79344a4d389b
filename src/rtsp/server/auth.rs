//! Access control for the RTSP server: which addresses may connect, which users may ask
//! (Basic or Digest credentials), and an application's hook that decides each request.
//!
//! Specifications: RFC 7235 §3.1 (401 with one `WWW-Authenticate` per challenge), §4.1, §4.2;
//! RFC 7617 §2 (Basic); RFC 7616 §3.3 (the challenge: realm, nonce, qop, algorithm, stale),
//! §3.4 and §3.4.1-§3.4.2 (the answer: response, nc, cnonce; also the RFC 2069 §2.1.2 form
//! without qop that gst-rtsp-server 1.22 and older clients send), §3.9.1 (test vectors), §5.4-§5.5
//! (limited-use nonces, replay); RFC 2326 §11.3.2 and §12.5 (401 and 403 in RTSP); RFC 4632
//! §3.1 and RFC 4291 §2.3 (address prefixes); Apache httpd's htdigest file (`user:realm:HA1`).
//!
//! Nonces carry their issue time and a MAC keyed with a secret of this server, so handing them
//! out costs no memory: only nonces that authenticated a request are remembered (bounded), with
//! the connection that first used them (another connection gets `stale=true`) and, with qop, the
//! last nonce count (a count that does not grow is a replay). A nonce expires when unused for the
//! lifetime. Every answer that proves the password but names an unusable nonce is answered
//! `stale=true`, so the client retries with the new nonce without asking its user again.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use url::Url;

use crate::rtsp::auth::{DigestAlgorithm, digest_response, ha1, parse_auth_params};

/// The server's identity of a client connection: sessions and nonces belong to one.
pub type ConnId = u64;

/// gst-rtsp-server's realm, so that htdigest files made for it work unchanged.
pub const DEFAULT_REALM: &str = "GStreamer RTSP Server";

/// Nonces in use remembered at most. Beyond, the oldest is forgotten and every nonce issued
/// before it is stale from then on (forgetting must not make a nonce usable again).
const MAX_NONCES_IN_USE: usize = 4096;

/// Hex digits of a nonce: issue time (12), salt (16), MAC (32).
const NONCE_LEN: usize = 60;

/// A setting that cannot be used. Never quotes a password or an HA1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("users entry {index}: {why} (expected user:password or user:realm:HA1)")]
    Entry { index: usize, why: String },
    #[error("line {line}: {why} (expected user:realm:HA1)")]
    Line { line: usize, why: &'static str },
    #[error("user '{0}' is given more than once")]
    Duplicate(String),
    #[error("'{0}' is not an IP address or a network such as 192.168.1.0/24 or fd00::/8")]
    Network(String),
}

/// What a user proves knowledge of.
#[derive(Clone)]
enum Secret {
    Password(String),
    /// `H(user:realm:password)` in lowercase hex, usable for one algorithm only.
    Ha1 {
        alg: DigestAlgorithm,
        ha1: String,
    },
}

impl Secret {
    /// HA1 for `alg`, if this secret can give it.
    fn ha1(&self, alg: DigestAlgorithm, user: &str, realm: &str) -> Option<String> {
        match self {
            Secret::Password(p) => Some(ha1(alg, user, realm, p)),
            Secret::Ha1 { alg: a, ha1 } => (*a == alg).then(|| ha1.clone()),
        }
    }

    fn can(&self, alg: DigestAlgorithm) -> bool {
        match self {
            Secret::Password(_) => true,
            Secret::Ha1 { alg: a, .. } => *a == alg,
        }
    }

    /// Whether `password` is this user's, compared as hashes of equal length.
    fn is_password(&self, user: &str, realm: &str, password: &str) -> bool {
        let (expected, given) = match self {
            Secret::Password(p) => {
                let h = DigestAlgorithm::Sha256;
                (h.hash(p), h.hash(password))
            }
            Secret::Ha1 { alg, ha1: h } => (h.clone(), ha1(*alg, user, realm, password)),
        };
        ct_eq(expected.as_bytes(), given.as_bytes())
    }
}

/// The users who may ask, with their passwords or HA1s. `Debug` shows only their names.
#[derive(Clone, Default)]
pub struct Users(HashMap<String, Secret>);

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_set().entries(names).finish()
    }
}

/// `realm:HA1` where HA1 is 32 (MD5, as htdigest writes) or 64 (SHA-256) hex digits after the
/// last `:`.
fn split_ha1(rest: &str) -> Option<(&str, Secret)> {
    let (realm, hex) = rest.rsplit_once(':')?;
    let alg = match hex.len() {
        32 => DigestAlgorithm::Md5,
        64 => DigestAlgorithm::Sha256,
        _ => return None,
    };
    hex.bytes().all(|b| b.is_ascii_hexdigit()).then(|| {
        let ha1 = hex.to_ascii_lowercase();
        (realm, Secret::Ha1 { alg, ha1 })
    })
}

impl Users {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds `user:password` entries, and `user:realm:HA1` ones (an entry whose text after the
    /// last `:` is 32 or 64 hex digits) whose realm must be `realm`.
    pub fn add_entries<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a str>,
        realm: &str,
    ) -> Result<(), ConfigError> {
        for (i, entry) in entries.into_iter().enumerate() {
            let err = |why: String| ConfigError::Entry { index: i + 1, why };
            let (user, rest) = entry
                .split_once(':')
                .ok_or_else(|| err("no ':' after the user name".into()))?;
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            let secret = match split_ha1(rest) {
                Some((r, _)) if r != realm => {
                    return Err(err(format!(
                        "user '{user}': the HA1 is for realm '{r}', the server's realm is \
                         '{realm}'"
                    )));
                }
                Some((_, secret)) => secret,
                None if rest.is_empty() => return Err(err(format!("user '{user}': no password"))),
                None => Secret::Password(rest.to_owned()),
            };
            self.insert(user, secret)?;
        }
        Ok(())
    }

    /// Adds the users of an htdigest file for `realm`; lines of other realms, empty lines and
    /// `#` comments are skipped. Returns how many were added.
    pub fn add_htdigest(&mut self, text: &str, realm: &str) -> Result<usize, ConfigError> {
        let mut added = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.trim_start().is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why| ConfigError::Line { line: i + 1, why };
            let (user, rest) = line.split_once(':').ok_or(err("no ':'"))?;
            let (r, secret) = split_ha1(rest).ok_or(err(
                "no realm and HA1 (32 or 64 hex digits) after the user name",
            ))?;
            if user.is_empty() {
                return Err(err("empty user name"));
            }
            if r == realm {
                self.insert(user, secret)?;
                added += 1;
            }
        }
        Ok(added)
    }

    fn insert(&mut self, user: &str, secret: Secret) -> Result<(), ConfigError> {
        match self.0.entry(user.to_owned()) {
            Entry::Occupied(_) => Err(ConfigError::Duplicate(user.to_owned())),
            Entry::Vacant(v) => {
                v.insert(secret);
                Ok(())
            }
        }
    }
}

/// The authentication schemes offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthMethods {
    pub basic: bool,
    pub digest: bool,
}

impl Default for AuthMethods {
    /// Digest only: Basic sends the password itself, readable on a connection without TLS.
    fn default() -> Self {
        Self {
            basic: false,
            digest: true,
        }
    }
}

/// An IPv4 or IPv6 network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for IpNet {
    type Err = ConfigError;

    /// `192.168.1.0/24`, `fd00::/8`, or an address alone (`/32`, `/128`).
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Network(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let p = u32::from(self.prefix);
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                p == 0 || (u32::from(n) ^ u32::from(a)) >> (32 - p) == 0
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                p == 0 || (u128::from(n) ^ u128::from(a)) >> (128 - p) == 0
            }
            _ => false,
        }
    }
}

/// A comma-separated list of addresses and networks (`allowed-addresses`); empty: none.
pub fn parse_networks(list: &str) -> Result<Vec<IpNet>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(IpNet::from_str)
        .collect()
}

/// One request as the authorisation hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// The authenticated user; None when no users are configured.
    pub user: Option<&'a str>,
    pub method: &'a str,
    /// The request URL's path with its query (`/live/stream=0`, `/cam?token=abc`), or `*`.
    pub path: &'a str,
    pub peer: SocketAddr,
}

/// Decides each request after authentication: true allows it. Called on a runtime thread, for
/// every request but OPTIONS: it must return quickly.
pub type AuthorizeFn = Arc<dyn Fn(&AccessRequest<'_>) -> bool + Send + Sync>;

/// Access settings. The default lets everyone in.
#[derive(Clone)]
pub struct AccessConfig {
    /// Credentials are required as soon as there is one.
    pub users: Users,
    pub methods: AuthMethods,
    pub realm: String,
    /// Peers allowed to connect; empty: all.
    pub allowed: Vec<IpNet>,
    /// A Digest nonce unused for this long is stale.
    pub nonce_lifetime: Duration,
    pub authorize: Option<AuthorizeFn>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            users: Users::default(),
            methods: AuthMethods::default(),
            realm: DEFAULT_REALM.into(),
            allowed: Vec::new(),
            nonce_lifetime: Duration::from_secs(120),
            authorize: None,
        }
    }
}

impl fmt::Debug for AccessConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessConfig")
            .field("users", &self.users)
            .field("methods", &self.methods)
            .field("realm", &self.realm)
            .field("allowed", &self.allowed)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("authorize", &self.authorize.is_some())
            .finish()
    }
}

/// Why credentials were refused (for the log; the client only sees 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no credentials")]
    NoCredentials,
    #[error("unusable Authorization header: {0}")]
    Malformed(String),
    #[error("{0} is not an offered scheme")]
    NotOffered(&'static str),
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    #[error("user '{0}': wrong password")]
    WrongPassword(String),
    #[error("user '{user}': no secret for Digest {alg} (an HA1 of the other algorithm)")]
    NoSecretFor { user: String, alg: &'static str },
    #[error("user '{0}': the answer is for another realm")]
    WrongRealm(String),
    #[error("user '{0}': the Digest uri is not the request's URL")]
    WrongUri(String),
    #[error("user '{0}': stale nonce")]
    StaleNonce(String),
    #[error("user '{0}': the nonce belongs to another connection")]
    ForeignNonce(String),
    #[error("user '{user}': nonce count {nc:08x} replayed (last {last:08x})")]
    ReplayedNc { user: String, nc: u32, last: u32 },
}

impl Denied {
    /// The password was proven but the nonce cannot be used: answered `stale=true`.
    pub fn stale(&self) -> bool {
        matches!(
            self,
            Denied::StaleNonce(_) | Denied::ForeignNonce(_) | Denied::ReplayedNc { .. }
        )
    }
}

/// A user whose credentials were accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub user: String,
    /// `Basic`, `Digest MD5` or `Digest SHA-256`.
    pub scheme: &'static str,
}

/// A remembered nonce: the connection it belongs to, its last count, when it was issued and
/// last used (ms since [`Access::epoch`]).
struct NonceUse {
    conn: ConnId,
    nc: u32,
    issued: u64,
    last_used: u64,
}

#[derive(Default)]
struct NoncesInUse {
    map: HashMap<String, NonceUse>,
    /// Nonces issued at or before this are stale: one of them was forgotten.
    floor: Option<u64>,
}

impl NoncesInUse {
    fn insert(&mut self, nonce: String, entry: NonceUse, now: u64, lifetime: u64) {
        if self.map.len() >= MAX_NONCES_IN_USE {
            self.map
                .retain(|_, u| now.saturating_sub(u.last_used) <= lifetime);
        }
        if self.map.len() >= MAX_NONCES_IN_USE
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, u)| u.issued)
                .map(|(k, _)| k.clone())
            && let Some(u) = self.map.remove(&oldest)
        {
            self.floor = Some(self.floor.map_or(u.issued, |f| f.max(u.issued)));
        }
        self.map.insert(nonce, entry);
    }
}

/// A Digest `Authorization` value (RFC 7616 3.4).
struct DigestAnswer {
    username: String,
    realm: String,
    nonce: String,
    uri: String,
    response: String,
    algorithm: DigestAlgorithm,
    /// With qop=auth: the nonce count as sent, its value, and the client nonce.
    qop: Option<(String, u32, String)>,
}

impl DigestAnswer {
    fn parse(value: &str) -> Result<Self, Denied> {
        let malformed = |why: &str| Denied::Malformed(why.to_owned());
        let mut answers = parse_auth_params([value]);
        let (_, params) = answers
            .pop()
            .filter(|(s, _)| answers.is_empty() && s.eq_ignore_ascii_case("Digest"))
            .ok_or_else(|| malformed("not one Digest answer"))?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let need = |name: &str| {
            get(name)
                .map(str::to_owned)
                .ok_or_else(|| Denied::Malformed(format!("no {name}")))
        };
        let algorithm = match get("algorithm").map(|a| (a, DigestAlgorithm::parse(a))) {
            None => DigestAlgorithm::Md5,
            Some((_, Some(a @ (DigestAlgorithm::Md5 | DigestAlgorithm::Sha256)))) => a,
            Some((a, _)) => return Err(Denied::Malformed(format!("algorithm {a} not offered"))),
        };
        if get("userhash").is_some_and(|u| u.eq_ignore_ascii_case("true")) {
            return Err(malformed("userhash not offered"));
        }
        let qop = match get("qop") {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc = need("nc")?;
                let count = (nc.len() == 8)
                    .then(|| u32::from_str_radix(&nc, 16).ok())
                    .flatten()
                    .ok_or_else(|| malformed("nc is not 8 hex digits"))?;
                Some((nc, count, need("cnonce")?))
            }
            Some(q) => return Err(Denied::Malformed(format!("qop {q} not offered"))),
        };
        Ok(DigestAnswer {
            username: need("username")?,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: need("response")?,
            algorithm,
            qop,
        })
    }

    /// Whether the response is the one `ha1` gives for `method`.
    fn proves(&self, ha1: &str, method: &str) -> bool {
        let qop = self
            .qop
            .as_ref()
            .map(|(nc, _, cn)| (nc.as_str(), cn.as_str()));
        let expected = digest_response(self.algorithm, ha1, &self.nonce, qop, method, &self.uri);
        ct_eq(
            expected.as_bytes(),
            self.response.to_ascii_lowercase().as_bytes(),
        )
    }
}

/// Whether a Digest `uri` names the request's URL (absolute, or its path and query).
fn uri_matches(digest_uri: &str, request: Option<&Url>) -> bool {
    match request {
        None => digest_uri == "*",
        Some(url) => {
            Url::parse(digest_uri).is_ok_and(|u| &u == url) || digest_uri == path_and_query(url)
        }
    }
}

/// `/path?query` of a URL.
pub fn path_and_query(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Compares without stopping at the first difference (the lengths are not secret: hashes).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(diff) == 0
}

/// Access control as a running server applies it.
pub struct Access {
    config: AccessConfig,
    /// Keys the nonces' MACs; new for every server.
    secret: String,
    epoch: Instant,
    nonces: Mutex<NoncesInUse>,
}

impl Access {
    pub fn new(config: AccessConfig) -> Self {
        use rand::RngExt;
        Self {
            config,
            secret: format!("{:032x}", rand::rng().random::<u128>()),
            epoch: Instant::now(),
            nonces: Mutex::new(NoncesInUse::default()),
        }
    }

    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        let allowed = &self.config.allowed;
        allowed.is_empty() || allowed.iter().any(|n| n.contains(ip))
    }

    pub fn requires_credentials(&self) -> bool {
        !self.config.users.is_empty()
    }

    /// The application's decision (true when there is no hook).
    pub fn authorize(&self, req: &AccessRequest<'_>) -> bool {
        self.config.authorize.as_ref().is_none_or(|f| f(req))
    }

    /// The `WWW-Authenticate` values of a 401, strongest first: Digest SHA-256 and MD5 with one
    /// new nonce (an algorithm only if every user can answer it, both if none can), then Basic.
    /// Clients that take the last Digest challenge (ffmpeg, rtspsrc) get MD5.
    pub fn challenges(&self, stale: bool) -> Vec<String> {
        let realm = self.config.realm.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = Vec::with_capacity(3);
        if self.config.methods.digest {
            let nonce = self.new_nonce();
            let stale = if stale { ", stale=true" } else { "" };
            let all = [DigestAlgorithm::Sha256, DigestAlgorithm::Md5];
            let usable: Vec<DigestAlgorithm> = all
                .into_iter()
                .filter(|a| self.config.users.0.values().all(|s| s.can(*a)))
                .collect();
            let algs = if usable.is_empty() {
                &all[..]
            } else {
                &usable[..]
            };
            for alg in algs {
                out.push(format!(
                    "Digest realm=\"{realm}\", qop=\"auth\", algorithm={}, nonce=\"{nonce}\"{stale}",
                    alg.name()
                ));
            }
        }
        if self.config.methods.basic {
            out.push(format!("Basic realm=\"{realm}\""));
        }
        out
    }

    /// Checks a request's `Authorization` value. `conn` is the connection a Digest nonce
    /// belongs to once used, `uri` the request's URL (None for `*`).
    pub fn authenticate(
        &self,
        conn: ConnId,
        method: &str,
        uri: Option<&Url>,
        authorization: Option<&str>,
    ) -> Result<Authenticated, Denied> {
        let value = authorization.map(str::trim).ok_or(Denied::NoCredentials)?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("Basic") {
            if !self.config.methods.basic {
                return Err(Denied::NotOffered("Basic"));
            }
            self.basic(rest.trim())
        } else if scheme.eq_ignore_ascii_case("Digest") {
            if !self.config.methods.digest {
                return Err(Denied::NotOffered("Digest"));
            }
            self.digest(conn, method, uri, value)
        } else {
            Err(Denied::Malformed("unknown scheme".into()))
        }
    }

    fn basic(&self, token: &str) -> Result<Authenticated, Denied> {
        let malformed = |why: &str| Denied::Malformed(why.to_owned());
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|_| malformed("Basic credentials are not base64"))?;
        let text =
            String::from_utf8(decoded).map_err(|_| malformed("Basic credentials are not UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| malformed("no ':' in the Basic credentials"))?;
        let secret = self
            .config
            .users
            .0
            .get(user)
            .ok_or_else(|| Denied::UnknownUser(user.to_owned()))?;
        if !secret.is_password(user, &self.config.realm, password) {
            return Err(Denied::WrongPassword(user.to_owned()));
        }
        Ok(Authenticated {
            user: user.to_owned(),
            scheme: "Basic",
        })
    }

    fn digest(
        &self,
        conn: ConnId,
        method: &str,
        uri: Option<&Url>,
        value: &str,
    ) -> Result<Authenticated, Denied> {
        let answer = DigestAnswer::parse(value)?;
        let user = &answer.username;
        let realm = &self.config.realm;
        let secret = self
            .config
            .users
            .0
            .get(user)
            .ok_or_else(|| Denied::UnknownUser(user.clone()))?;
        if answer.realm != *realm {
            return Err(Denied::WrongRealm(user.clone()));
        }
        if !uri_matches(&answer.uri, uri) {
            return Err(Denied::WrongUri(user.clone()));
        }
        let ha1 = secret
            .ha1(answer.algorithm, user, realm)
            .ok_or_else(|| Denied::NoSecretFor {
                user: user.clone(),
                alg: answer.algorithm.name(),
            })?;
        if !answer.proves(&ha1, method) {
            return Err(Denied::WrongPassword(user.clone()));
        }
        self.use_nonce(conn, &answer)?;
        Ok(Authenticated {
            user: user.clone(),
            scheme: match answer.algorithm {
                DigestAlgorithm::Sha256 => "Digest SHA-256",
                _ => "Digest MD5",
            },
        })
    }

    /// Accepts the nonce of a proven answer once, for its connection, with a growing count.
    fn use_nonce(&self, conn: ConnId, answer: &DigestAnswer) -> Result<(), Denied> {
        let user = || answer.username.clone();
        // A nonce that is not ours (forged, or from before a restart) is as stale as an old one.
        let issued = self
            .nonce_issued(&answer.nonce)
            .ok_or_else(|| Denied::StaleNonce(user()))?;
        let now = self.now_ms();
        let lifetime = u64::try_from(self.config.nonce_lifetime.as_millis()).unwrap_or(u64::MAX);
        let nc = answer.qop.as_ref().map_or(0, |(_, nc, _)| *nc);
        let mut nonces = self.nonces.lock().unwrap();
        if nonces.floor.is_some_and(|f| issued <= f) {
            return Err(Denied::StaleNonce(user()));
        }
        let Some(used) = nonces.map.get_mut(&answer.nonce) else {
            if now.saturating_sub(issued) > lifetime {
                return Err(Denied::StaleNonce(user()));
            }
            let entry = NonceUse {
                conn,
                nc,
                issued,
                last_used: now,
            };
            nonces.insert(answer.nonce.clone(), entry, now, lifetime);
            return Ok(());
        };
        if now.saturating_sub(used.last_used) > lifetime {
            nonces.map.remove(&answer.nonce);
            return Err(Denied::StaleNonce(user()));
        }
        if used.conn != conn {
            return Err(Denied::ForeignNonce(user()));
        }
        if answer.qop.is_some() {
            if nc <= used.nc {
                return Err(Denied::ReplayedNc {
                    user: user(),
                    nc,
                    last: used.nc,
                });
            }
            used.nc = nc;
        }
        used.last_used = now;
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mac(&self, body: &str) -> String {
        let mut mac = DigestAlgorithm::Sha256.hash(&format!("{}:{body}", self.secret));
        mac.truncate(NONCE_LEN - 28);
        mac
    }

    fn new_nonce(&self) -> String {
        use rand::RngExt;
        let salt: u64 = rand::rng().random();
        let body = format!("{:012x}{salt:016x}", self.now_ms() & 0xffff_ffff_ffff);
        let mac = self.mac(&body);
        body + &mac
    }

    /// When a nonce of ours was issued; None for any other string.
    fn nonce_issued(&self, nonce: &str) -> Option<u64> {
        if nonce.len() != NONCE_LEN || !nonce.is_ascii() {
            return None;
        }
        let (body, mac) = nonce.split_at(28);
        if !ct_eq(self.mac(body).as_bytes(), mac.as_bytes()) {
            return None;
        }
        u64::from_str_radix(&body[..12], 16).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtsp::auth::{Authenticator, Challenge, Credentials, choose, parse_challenges};

    const REALM: &str = "GStreamer RTSP Server";

    fn access(entries: &[&str], methods: AuthMethods) -> Access {
        let mut users = Users::default();
        users.add_entries(entries.iter().copied(), REALM).unwrap();
        Access::new(AccessConfig {
            users,
            methods,
            ..AccessConfig::default()
        })
    }

    fn both() -> AuthMethods {
        AuthMethods {
            basic: true,
            digest: true,
        }
    }

    fn client(a: &Access, user: &str, password: &str) -> Authenticator {
        let challenges = a.challenges(false);
        let parsed = parse_challenges(challenges.iter().map(String::as_str));
        let credentials = Credentials {
            user: user.into(),
            password: password.into(),
        };
        Authenticator::new(credentials, choose(&parsed).unwrap().clone())
    }

    fn url() -> Url {
        Url::parse("rtsp://127.0.0.1:8554/live").unwrap()
    }

    /// The RFC 7616 3.9.1 answers with their own challenge's realm, for MD5 and SHA-256.
    #[test]
    fn rfc7616_vectors() {
        for (alg, response, ha1) in [
            (
                "MD5",
                "8ca523f5e9506fed4657c9700eebdbec",
                "3d78807defe7de2157e2b0b6573a855f",
            ),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
                "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232",
            ),
        ] {
            let header = format!(
                "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
                 uri=\"/dir/index.html\", algorithm={alg}, \
                 nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", nc=00000001, \
                 cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, \
                 response=\"{response}\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            );
            let answer = DigestAnswer::parse(&header).unwrap();
            assert_eq!(answer.algorithm.name(), alg);
            let realm = "http-auth@example.org";
            let password = Secret::Password("Circle of Life".into());
            let h = password.ha1(answer.algorithm, "Mufasa", realm).unwrap();
            assert_eq!(h, ha1);
            assert!(answer.proves(&h, "GET"), "{alg}");
            assert!(!answer.proves(&h, "POST"), "{alg}: the method is in HA2");
            let wrong = Secret::Password("Circle of life".into());
            let h = wrong.ha1(answer.algorithm, "Mufasa", realm).unwrap();
            assert!(!answer.proves(&h, "GET"), "{alg}");

            // The same user as an htdigest-style entry; the realm must be the server's.
            let mut users = Users::default();
            users
                .add_entries([format!("Mufasa:{realm}:{ha1}").as_str()], realm)
                .unwrap();
            let a = Access::new(AccessConfig {
                users,
                realm: realm.into(),
                ..AccessConfig::default()
            });
            let request = Url::parse("rtsp://example.org/dir/index.html").unwrap();
            // Right password, but the nonce is the RFC's, not one of ours: stale.
            let denied = a
                .authenticate(1, "GET", Some(&request), Some(&header))
                .unwrap_err();
            assert_eq!(denied, Denied::StaleNonce("Mufasa".into()), "{alg}");
            assert!(denied.stale());
            let denied = a
                .authenticate(1, "PLAY", Some(&request), Some(&header))
                .unwrap_err();
            assert_eq!(denied, Denied::WrongPassword("Mufasa".into()), "{alg}");
        }
    }

    #[test]
    fn digest_with_qop_sha256_and_replays() {
        let a = access(&["alice:S3cr3t"], AuthMethods::default());
        let mut c = client(&a, "alice", "S3cr3t");
        let h = c.authorization("DESCRIBE", url().as_str());
        assert!(
            h.contains("algorithm=SHA-256") && h.contains("qop=auth"),
            "{h}"
        );
        let ok = a
            .authenticate(7, "DESCRIBE", Some(&url()), Some(&h))
            .unwrap();
        assert_eq!(ok.user, "alice");
        assert_eq!(ok.scheme, "Digest SHA-256");
        // The same answer again: its nonce count does not grow.
        let replay = a.authenticate(7, "DESCRIBE", Some(&url()), Some(&h));
        assert!(
            matches!(&replay, Err(Denied::ReplayedNc { nc: 1, last: 1, .. })),
            "{replay:?}"
        );
        assert!(replay.unwrap_err().stale());
        // From another connection, even with a new count.
        let next = c.authorization("SETUP", url().as_str());
        assert_eq!(
            a.authenticate(8, "SETUP", Some(&url()), Some(&next)),
            Err(Denied::ForeignNonce("alice".into()))
        );
        // The client goes on with growing counts on its connection.
        let next = c.authorization("PLAY", url().as_str());
        assert!(a.authenticate(7, "PLAY", Some(&url()), Some(&next)).is_ok());
        // For another URL than the request's.
        let other = c.authorization("PLAY", "rtsp://127.0.0.1:8554/other");
        assert_eq!(
            a.authenticate(7, "PLAY", Some(&url()), Some(&other)),
            Err(Denied::WrongUri("alice".into()))
        );
    }

    #[test]
    fn digest_md5_without_qop_as_gst_rtsp_server_1_22_and_rtspsrc_answer() {
        let a = access(&["alice:S3cr3t"], AuthMethods::default());
        let challenges = a.challenges(false);
        assert_eq!(challenges.len(), 2, "{challenges:?}");
        assert!(challenges[0].contains("algorithm=SHA-256"));
        assert!(challenges[1].contains("algorithm=MD5"), "MD5 last");
        let Some(Challenge::Digest { realm, nonce, .. }) =
            parse_challenges([challenges[1].as_str()]).pop()
        else {
            panic!("{challenges:?}")
        };
        let plain = Challenge::Digest {
            realm,
            nonce,
            opaque: None,
            algorithm: None,
            qop_auth: false,
            stale: false,
            userhash: false,
        };
        let creds = Credentials {
            user: "alice".into(),
            password: "S3cr3t".into(),
        };
        let mut c = Authenticator::new(creds, plain);
        let h = c.authorization("DESCRIBE", url().as_str());
        assert!(!h.contains("qop") && !h.contains("algorithm"), "{h}");
        let ok = a
            .authenticate(3, "DESCRIBE", Some(&url()), Some(&h))
            .unwrap();
        assert_eq!(ok.scheme, "Digest MD5");
        // Without a count, the nonce is bound to its connection.
        assert!(
            a.authenticate(3, "DESCRIBE", Some(&url()), Some(&h))
                .is_ok()
        );
        assert_eq!(
            a.authenticate(4, "DESCRIBE", Some(&url()), Some(&h)),
            Err(Denied::ForeignNonce("alice".into()))
        );
    }

    #[test]
    fn wrong_or_missing_credentials() {
        let a = access(&["alice:S3cr3t"], AuthMethods::default());
        assert_eq!(
            a.authenticate(1, "DESCRIBE", Some(&url()), None),
            Err(Denied::NoCredentials)
        );
        let h = client(&a, "alice", "Guessed1").authorization("DESCRIBE", url().as_str());
        let denied = a
            .authenticate(1, "DESCRIBE", Some(&url()), Some(&h))
            .unwrap_err();
        assert_eq!(denied, Denied::WrongPassword("alice".into()));
        assert!(!denied.stale());
        assert!(
            !denied.to_string().contains("Guessed1"),
            "no password: {denied}"
        );
        let h = client(&a, "mallory", "S3cr3t").authorization("DESCRIBE", url().as_str());
        assert_eq!(
            a.authenticate(1, "DESCRIBE", Some(&url()), Some(&h)),
            Err(Denied::UnknownUser("mallory".into()))
        );
        // Basic is not offered by default.
        assert_eq!(
            a.authenticate(1, "DESCRIBE", Some(&url()), Some("Basic YWxpY2U6UzNjcjN0")),
            Err(Denied::NotOffered("Basic"))
        );
        for garbage in [
            "Digest",
            "Digest nonce=\"x\"",
            "Bearer abc",
            "Basic !!!",
            "",
        ] {
            assert!(matches!(
                a.authenticate(1, "DESCRIBE", Some(&url()), Some(garbage)),
                Err(Denied::Malformed(_) | Denied::NotOffered(_))
            ));
        }
    }

    #[test]
    fn nonces_expire_when_unused() {
        let mut users = Users::default();
        users.add_entries(["alice:S3cr3t"], REALM).unwrap();
        let a = Access::new(AccessConfig {
            users,
            nonce_lifetime: Duration::from_millis(50),
            ..AccessConfig::default()
        });
        let mut c = client(&a, "alice", "S3cr3t");
        let h = c.authorization("DESCRIBE", url().as_str());
        assert!(
            a.authenticate(1, "DESCRIBE", Some(&url()), Some(&h))
                .is_ok()
        );
        std::thread::sleep(Duration::from_millis(80));
        let h = c.authorization("SETUP", url().as_str());
        assert_eq!(
            a.authenticate(1, "SETUP", Some(&url()), Some(&h)),
            Err(Denied::StaleNonce("alice".into()))
        );
        // The 401 then offers a new nonce, marked stale, which the client adopts.
        let stale = a.challenges(true);
        assert!(stale.iter().all(|c| c.ends_with("stale=true")), "{stale:?}");
        let parsed = parse_challenges(stale.iter().map(String::as_str));
        assert_eq!(c.on_unauthorized(&parsed), Ok(true));
        let h = c.authorization("SETUP", url().as_str());
        assert!(a.authenticate(1, "SETUP", Some(&url()), Some(&h)).is_ok());
        // A nonce never used expires from its issue.
        let mut fresh = client(&a, "alice", "S3cr3t");
        std::thread::sleep(Duration::from_millis(80));
        let h = fresh.authorization("PLAY", url().as_str());
        assert_eq!(
            a.authenticate(1, "PLAY", Some(&url()), Some(&h)),
            Err(Denied::StaleNonce("alice".into()))
        );
    }

    #[test]
    fn nonces_in_use_are_bounded_and_forgotten_ones_stay_stale() {
        let a = access(&["alice:S3cr3t"], AuthMethods::default());
        let mut first = client(&a, "alice", "S3cr3t");
        let h = first.authorization("DESCRIBE", url().as_str());
        assert!(
            a.authenticate(1, "DESCRIBE", Some(&url()), Some(&h))
                .is_ok()
        );
        for conn in 2..=MAX_NONCES_IN_USE as u64 + 10 {
            let h = client(&a, "alice", "S3cr3t").authorization("DESCRIBE", url().as_str());
            assert!(
                a.authenticate(conn, "DESCRIBE", Some(&url()), Some(&h))
                    .is_ok()
            );
        }
        assert_eq!(a.nonces.lock().unwrap().map.len(), MAX_NONCES_IN_USE);
        // The first nonce was forgotten: stale, not usable afresh by another connection.
        let h = first.authorization("SETUP", url().as_str());
        assert_eq!(
            a.authenticate(99_999, "SETUP", Some(&url()), Some(&h)),
            Err(Denied::StaleNonce("alice".into()))
        );
    }

    #[test]
    fn basic_and_ha1_users() {
        // alice by password, bob by the MD5 HA1 of "bob:GStreamer RTSP Server:pw" (htdigest).
        let a = access(
            &[
                "alice:S3cr:3t",
                "bob:GStreamer RTSP Server:8527172253d146b652339669631ed48e",
            ],
            both(),
        );
        let basic = |user: &str, pass: &str| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            a.authenticate(1, "DESCRIBE", Some(&url()), Some(&format!("Basic {token}")))
        };
        assert_eq!(basic("alice", "S3cr:3t").unwrap().scheme, "Basic");
        assert_eq!(
            basic("alice", "S3cr"),
            Err(Denied::WrongPassword("alice".into()))
        );
        assert_eq!(basic("bob", "pw").unwrap().user, "bob");
        assert_eq!(
            basic("bob", "pw2"),
            Err(Denied::WrongPassword("bob".into()))
        );
        // bob has only an MD5 HA1: SHA-256 is not offered, and refused if answered.
        let challenges = a.challenges(false);
        assert_eq!(challenges.len(), 2, "{challenges:?}");
        assert!(challenges[0].contains("algorithm=MD5"));
        assert_eq!(challenges[1], format!("Basic realm=\"{REALM}\""));
        let h = client(&a, "bob", "pw").authorization("DESCRIBE", url().as_str());
        assert_eq!(
            a.authenticate(1, "DESCRIBE", Some(&url()), Some(&h))
                .unwrap()
                .scheme,
            "Digest MD5"
        );
    }

    #[test]
    fn user_entries_and_htdigest_files() {
        let mut users = Users::default();
        let add = |entries: &[&str]| Users::default().add_entries(entries.iter().copied(), REALM);
        assert!(matches!(
            add(&["nocolon"]),
            Err(ConfigError::Entry { index: 1, .. })
        ));
        assert!(matches!(
            add(&["a:b", ":pw"]),
            Err(ConfigError::Entry { index: 2, .. })
        ));
        assert!(matches!(
            add(&["a:"]),
            Err(ConfigError::Entry { index: 1, .. })
        ));
        assert_eq!(
            add(&["a:x", "a:y"]),
            Err(ConfigError::Duplicate("a".into()))
        );
        let other_realm = add(&["a:elsewhere:3d78807defe7de2157e2b0b6573a855f"]).unwrap_err();
        assert!(
            other_realm.to_string().contains("'elsewhere'"),
            "{other_realm}"
        );
        assert!(
            !other_realm.to_string().contains("3d7880"),
            "no HA1: {other_realm}"
        );
        assert!(add(&["a:secret"]).is_ok());

        let file = format!(
            "# made by htdigest\n\nalice:{REALM}:3d78807defe7de2157e2b0b6573a855f\r\n\
             carol:other realm:3d78807defe7de2157e2b0b6573a855f\n\
             dave:{REALM}:7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232\n"
        );
        assert_eq!(users.add_htdigest(&file, REALM), Ok(2));
        assert_eq!(format!("{users:?}"), "{\"alice\", \"dave\"}");
        let bad = format!("alice:{REALM}:3d78807defe7de2157e2b0b6573a855f\nbob:{REALM}:xyz\n");
        let e = Users::default().add_htdigest(&bad, REALM).unwrap_err();
        assert!(matches!(e, ConfigError::Line { line: 2, .. }), "{e}");
        assert!(e.to_string().starts_with("line 2:"), "{e}");
    }

    #[test]
    fn networks() {
        let nets = parse_networks(" 127.0.0.2/32, 10.0.0.0/8 ,fd00::/8, ::1,192.168.1.7").unwrap();
        let allowed = |ip: &str| nets.iter().any(|n| n.contains(ip.parse().unwrap()));
        assert!(allowed("127.0.0.2"));
        assert!(!allowed("127.0.0.1"));
        assert!(allowed("10.255.0.1"));
        assert!(!allowed("11.0.0.1"));
        assert!(allowed("fd12::1"));
        assert!(!allowed("fe80::1"));
        assert!(allowed("::1"));
        assert!(allowed("192.168.1.7"));
        assert!(
            allowed("::ffff:10.1.2.3"),
            "IPv4-mapped IPv6 counts as IPv4"
        );
        let everyone = parse_networks("0.0.0.0/0, ::/0").unwrap();
        assert!(
            everyone
                .iter()
                .any(|n| n.contains("8.8.8.8".parse().unwrap()))
        );
        assert!(parse_networks("").unwrap().is_empty());
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "host",
            "10.0.0.0/",
            "1.2.3.4/+8",
        ] {
            assert_eq!(
                parse_networks(&format!("127.0.0.1, {bad}")),
                Err(ConfigError::Network(bad.into())),
                "{bad}"
            );
        }
        let a = Access::new(AccessConfig {
            allowed: parse_networks("127.0.0.2").unwrap(),
            ..AccessConfig::default()
        });
        assert!(a.address_allowed("127.0.0.2".parse().unwrap()));
        assert!(!a.address_allowed("127.0.0.1".parse().unwrap()));
        assert!(Access::new(AccessConfig::default()).address_allowed("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn garbage_never_panics() {
        let a = access(&["alice:S3cr3t"], both());
        let mut seed = 0x9e37_79b9_u64;
        let alphabet = b"Digest Basic username=\"alice\",nonce=\x01qop=auth nc=0 \\\xc3\xa9";
        for _ in 0..20000 {
            let len = (seed % 60) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    alphabet[(seed >> 33) as usize % alphabet.len()]
                })
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = a.authenticate(1, "DESCRIBE", Some(&url()), Some(&s));
            let _ = a.nonce_issued(&s);
        }
    }
}
