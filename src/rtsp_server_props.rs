//! The properties rtspserversink and rtspserversrc share: where the server listens, its
//! protocols, session timeout, limits, access control and TLS, with their defaults, their
//! descriptions and their mapping onto [`ServerConfig`]. One definition, so that both elements
//! take the same values the same way; a [`Role`] words the few that differ (clients play from
//! rtspserversink, publishers record into rtspserversrc).

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use gio::prelude::TlsCertificateExt;
use gst::glib;
use gst::prelude::*;

use crate::net::server_tls::{self, Pem};
use crate::rtsp::codec::Limits;
use crate::rtsp::server::auth::{AccessConfig, AuthMethods, DEFAULT_REALM, Users, parse_networks};
use crate::rtsp::server::{Protocols, ServerConfig};

pub const DEFAULT_ADDRESS: &str = "0.0.0.0";
pub const DEFAULT_PORT: u32 = 8554;
pub const DEFAULT_MOUNT_POINT: &str = "/";
pub const DEFAULT_SESSION_TIMEOUT: u32 = 60;
pub const DEFAULT_MAX_SESSIONS: u32 = 1000;
pub const DEFAULT_MAX_SESSIONS_PER_CONNECTION: u32 = 8;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1000;
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: u32 = 32;
pub const DEFAULT_REQUEST_TIMEOUT: u32 = 10;
pub const DEFAULT_MAX_REQUEST_BODY_SIZE: u32 = 64 * 1024;
pub const DEFAULT_BACKLOG: i32 = 1024;
pub const DEFAULT_RTCP_INTERVAL: u32 = 5000;

/// Which element the properties are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// rtspserversink: clients play.
    Play,
    /// rtspserversrc: publishers record.
    Record,
}

impl Role {
    fn pick(self, play: &'static str, record: &'static str) -> &'static str {
        match self {
            Role::Play => play,
            Role::Record => record,
        }
    }

    /// Multicast is for players only.
    fn default_protocols(self) -> gst_rtsp::RTSPLowerTrans {
        match self {
            Role::Play => {
                gst_rtsp::RTSPLowerTrans::UDP
                    | gst_rtsp::RTSPLowerTrans::UDP_MCAST
                    | gst_rtsp::RTSPLowerTrans::TCP
            }
            Role::Record => gst_rtsp::RTSPLowerTrans::UDP | gst_rtsp::RTSPLowerTrans::TCP,
        }
    }
}

/// The authentication schemes the server offers (`auth-methods`). The type keeps rtspserversink's
/// name, which applications may know.
#[glib::flags(name = "GstLsRtspServerSinkAuthMethods")]
pub enum AuthMethodFlags {
    #[flags_value(
        name = "Basic (RFC 7617): the password itself, readable without TLS",
        nick = "basic"
    )]
    BASIC = 0b01,
    #[flags_value(name = "Digest (RFC 7616): SHA-256 and MD5", nick = "digest")]
    DIGEST = 0b10,
}

/// `bound-port`: read-only, the port the running server listens on (how the element knows it
/// is its own).
pub fn bound_port_spec() -> glib::ParamSpec {
    glib::ParamSpecInt::builder("bound-port")
        .nick("Bound port")
        .blurb("The port the server listens on (-1 when not listening)")
        .minimum(-1)
        .maximum(65535)
        .default_value(-1)
        .read_only()
        .build()
}

/// The shared settings. No `Debug`: `users` holds passwords.
#[derive(Clone)]
pub struct ServerProps {
    pub address: String,
    pub port: u32,
    pub mount_point: String,
    pub protocols: gst_rtsp::RTSPLowerTrans,
    pub session_timeout: u32,
    pub max_sessions: u32,
    pub max_sessions_per_connection: u32,
    pub max_connections: u32,
    pub max_connections_per_address: u32,
    pub request_timeout: u32,
    pub max_request_body_size: u32,
    pub backlog: i32,
    pub rtcp_interval: u32,
    pub users: Vec<String>,
    pub users_file: Option<String>,
    pub auth_methods: AuthMethodFlags,
    /// `auth-methods` was set by the application: Basic is then offered without TLS too.
    pub auth_methods_set: bool,
    pub realm: String,
    pub allowed_addresses: Option<String>,
    pub tls_certificate_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub tls_certificate: Option<CertificatePem>,
}

/// What `tls-certificate` was set to, as PEM (the object is not `Send` in gio-rs; reading it
/// gives an equal GTlsCertificate made from this PEM). No `Debug`: it holds the private key.
#[derive(Clone)]
pub struct CertificatePem {
    /// The certificate and its issuers, leaf first.
    chain: String,
    /// None when the key cannot be exported (a PKCS #11 key).
    key: Option<String>,
}

impl CertificatePem {
    pub fn of(cert: &gio::TlsCertificate) -> Self {
        Self {
            chain: std::iter::successors(Some(cert.clone()), |c| c.issuer())
                .filter_map(|c| c.certificate_pem().map(String::from))
                .collect(),
            key: cert.private_key_pem().map(String::from),
        }
    }

    pub fn to_object(&self) -> Option<gio::TlsCertificate> {
        let pem = format!("{}{}", self.chain, self.key.as_deref().unwrap_or_default());
        gio::TlsCertificate::from_pem(&pem).ok()
    }

    /// The configuration serving it, as gst-rtsp-server serves a GTlsCertificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, server_tls::ServerTlsError> {
        server_tls::server_config(
            Pem {
                origin: "tls-certificate's certificate-pem",
                text: self.chain.as_bytes(),
            },
            Pem {
                origin: match self.key {
                    Some(_) => "tls-certificate's private-key-pem",
                    None => "tls-certificate's private-key-pem (NULL: a key GIO cannot export)",
                },
                text: self.key.as_deref().unwrap_or_default().as_bytes(),
            },
        )
    }
}

impl ServerProps {
    pub fn new(role: Role) -> Self {
        Self {
            address: DEFAULT_ADDRESS.into(),
            port: DEFAULT_PORT,
            mount_point: DEFAULT_MOUNT_POINT.into(),
            protocols: role.default_protocols(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_connection: DEFAULT_MAX_SESSIONS_PER_CONNECTION,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_request_body_size: DEFAULT_MAX_REQUEST_BODY_SIZE,
            backlog: DEFAULT_BACKLOG,
            rtcp_interval: DEFAULT_RTCP_INTERVAL,
            users: Vec::new(),
            users_file: None,
            auth_methods: AuthMethodFlags::BASIC | AuthMethodFlags::DIGEST,
            auth_methods_set: false,
            realm: DEFAULT_REALM.into(),
            allowed_addresses: None,
            tls_certificate_file: None,
            tls_key_file: None,
            tls_certificate: None,
        }
    }

    /// The shared properties' specifications, worded for `role`.
    pub fn param_specs(role: Role) -> Vec<glib::ParamSpec> {
        vec![
        glib::ParamSpecString::builder("address")
            .nick("Address")
            .blurb(role.pick("IP address to listen on for RTSP and to send UDP from", "IP address to listen on for RTSP and to receive UDP on"))
            .default_value(Some(DEFAULT_ADDRESS))
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("port")
            .nick("Port")
            .blurb("TCP port to listen on for RTSP (0 = pick a free one, see bound-port)")
            .maximum(65535)
            .default_value(DEFAULT_PORT)
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("mount-point")
            .nick("Mount point")
            .blurb(role.pick("Path of the presentation: clients open rtsp://host:port<mount-point>", "Path publishers ANNOUNCE to: rtsp://host:port<mount-point>"))
            .default_value(Some(DEFAULT_MOUNT_POINT))
            .mutable_ready()
            .build(),
        glib::ParamSpecFlags::builder::<gst_rtsp::RTSPLowerTrans>("protocols")
            .nick("Protocols")
            .blurb(role.pick("Lower transports clients may use (udp, udp-mcast, tcp)", "Lower transports publishers may use (udp, tcp)"))
            .default_value(role.default_protocols())
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("session-timeout")
            .nick("Session timeout")
            .blurb(role.pick("Seconds without RTSP or RTCP from a client before its session expires", "Seconds without RTSP, RTP or RTCP from the publisher before it is taken as gone"))
            .minimum(1)
            .default_value(DEFAULT_SESSION_TIMEOUT)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-sessions")
            .nick("Max sessions")
            .blurb("Maximum number of sessions (0 = unlimited); SETUP beyond it gets 503")
            .default_value(DEFAULT_MAX_SESSIONS)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-sessions-per-connection")
            .nick("Max sessions per connection")
            .blurb("Maximum number of sessions one RTSP connection may create and hold; SETUP beyond it gets 503")
            .minimum(1)
            .default_value(DEFAULT_MAX_SESSIONS_PER_CONNECTION)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-connections")
            .nick("Max connections")
            .blurb("Maximum number of open RTSP connections; more are closed at once")
            .minimum(1)
            .default_value(DEFAULT_MAX_CONNECTIONS)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-connections-per-address")
            .nick("Max connections per address")
            .blurb("Maximum number of open RTSP connections from one client address (IPv6: one /64); more are closed at once")
            .minimum(1)
            .default_value(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("request-timeout")
            .nick("Request timeout")
            .blurb("Seconds a request may take to arrive complete (else 408 and the connection is closed); a connection without a session is closed after this long without a request")
            .minimum(1)
            .default_value(DEFAULT_REQUEST_TIMEOUT)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-request-body-size")
            .nick("Max request body size")
            .blurb("Largest request body (Content-Length) in bytes; a larger one gets 413 and the connection is closed")
            .default_value(DEFAULT_MAX_REQUEST_BODY_SIZE)
            .mutable_ready()
            .build(),
        glib::ParamSpecInt::builder("backlog")
            .nick("Backlog")
            .blurb("Size of the listen queue of pending connections")
            .minimum(1)
            .default_value(DEFAULT_BACKLOG)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("rtcp-interval")
            .nick("RTCP interval")
            .blurb(role.pick("Average milliseconds between RTCP Sender Reports (randomised by ±50%)", "Average milliseconds between RTCP Receiver Reports to the publisher (randomised by ±50%)"))
            .minimum(100)
            .default_value(DEFAULT_RTCP_INTERVAL)
            .mutable_ready()
            .build(),
        gst::ParamSpecArray::builder("users")
            .nick("Users")
            .blurb(role.pick(
                "Who may play: \"user:password\" or \"user:realm:HA1\" strings (HA1 as htdigest writes it); as soon as there is a user, every request but OPTIONS needs credentials. gst-launch-1.0: users='<\"alice:S3cr3t\">'",
                "Who may publish: \"user:password\" or \"user:realm:HA1\" strings (HA1 as htdigest writes it); as soon as there is a user, every request but OPTIONS needs credentials. gst-launch-1.0: users='<\"alice:S3cr3t\">'",
            ))
            .element_spec(
                &glib::ParamSpecString::builder("user")
                    .nick("User")
                    .blurb("user:password or user:realm:HA1")
                    .build(),
            )
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("users-file")
            .nick("Users file")
            .blurb("Path of an htdigest file (user:realm:HA1 lines, as the htdigest tool writes) with more users; lines of other realms are skipped")
            .mutable_ready()
            .build(),
        glib::ParamSpecFlags::builder::<AuthMethodFlags>("auth-methods")
            .nick("Authentication methods")
            .blurb("Schemes offered when users are set: digest (SHA-256 and MD5) and basic (the password itself: by default offered only with TLS, without TLS only when this property is set)")
            .default_value(AuthMethodFlags::BASIC | AuthMethodFlags::DIGEST)
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("realm")
            .nick("Realm")
            .blurb("Authentication realm (part of every HA1; gst-rtsp-server's by default, so its htdigest files work)")
            .default_value(Some(DEFAULT_REALM))
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("allowed-addresses")
            .nick("Allowed addresses")
            .blurb("Comma-separated client addresses and networks (192.168.1.0/24, fd00::/8, 10.0.0.5) allowed to connect; others are answered 403 and disconnected (NULL or empty = all)")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("tls-certificate-file")
            .nick("TLS certificate file")
            .blurb("PEM file with the server's certificate (and its chain, leaf first): the port then speaks RTSPS only; the key comes from tls-key-file, or from this file when that is unset")
            .mutable_ready()
            .build(),
        glib::ParamSpecString::builder("tls-key-file")
            .nick("TLS key file")
            .blurb("PEM file with the private key of tls-certificate-file (unencrypted PKCS #8, PKCS #1 or SEC1)")
            .mutable_ready()
            .build(),
        glib::ParamSpecObject::builder::<gio::TlsCertificate>("tls-certificate")
            .nick("TLS certificate")
            .blurb("Certificate with its private key for RTSPS, as gst_rtsp_auth_set_tls_certificate takes it (its certificate-pem, issuers and private-key-pem are used): the port then speaks RTSPS only")
            .mutable_ready()
            .build(),
        ]
    }

    /// Sets a shared property; false when `name` is not one.
    pub fn set(&mut self, name: &str, value: &glib::Value) -> bool {
        let string = || {
            value
                .get::<Option<String>>()
                .expect("type checked")
                .unwrap_or_default()
        };
        // An empty path is no path.
        let non_empty = || Some(string()).filter(|v| !v.is_empty());
        match name {
            "address" => self.address = string(),
            "port" => self.port = value.get().expect("type checked"),
            "mount-point" => self.mount_point = string(),
            "protocols" => self.protocols = value.get().expect("type checked"),
            "session-timeout" => self.session_timeout = value.get().expect("type checked"),
            "max-sessions" => self.max_sessions = value.get().expect("type checked"),
            "max-sessions-per-connection" => {
                self.max_sessions_per_connection = value.get().expect("type checked")
            }
            "max-connections" => self.max_connections = value.get().expect("type checked"),
            "max-connections-per-address" => {
                self.max_connections_per_address = value.get().expect("type checked")
            }
            "request-timeout" => self.request_timeout = value.get().expect("type checked"),
            "max-request-body-size" => {
                self.max_request_body_size = value.get().expect("type checked")
            }
            "backlog" => self.backlog = value.get().expect("type checked"),
            "rtcp-interval" => self.rtcp_interval = value.get().expect("type checked"),
            "users" => {
                let users = value.get::<gst::Array>().expect("type checked");
                self.users = users
                    .iter()
                    .filter_map(|v| v.get::<String>().ok())
                    .collect();
            }
            "users-file" => self.users_file = value.get().expect("type checked"),
            "auth-methods" => {
                self.auth_methods = value.get().expect("type checked");
                self.auth_methods_set = true;
            }
            "realm" => self.realm = string(),
            "allowed-addresses" => self.allowed_addresses = value.get().expect("type checked"),
            "tls-certificate-file" => self.tls_certificate_file = non_empty(),
            "tls-key-file" => self.tls_key_file = non_empty(),
            "tls-certificate" => {
                self.tls_certificate = value
                    .get::<Option<gio::TlsCertificate>>()
                    .expect("type checked")
                    .as_ref()
                    .map(CertificatePem::of)
            }
            _ => return false,
        }
        true
    }

    /// A shared property's value; None when `name` is not one.
    pub fn get(&self, name: &str) -> Option<glib::Value> {
        Some(match name {
            "address" => self.address.to_value(),
            "port" => self.port.to_value(),
            "mount-point" => self.mount_point.to_value(),
            "protocols" => self.protocols.to_value(),
            "session-timeout" => self.session_timeout.to_value(),
            "max-sessions" => self.max_sessions.to_value(),
            "max-sessions-per-connection" => self.max_sessions_per_connection.to_value(),
            "max-connections" => self.max_connections.to_value(),
            "max-connections-per-address" => self.max_connections_per_address.to_value(),
            "request-timeout" => self.request_timeout.to_value(),
            "max-request-body-size" => self.max_request_body_size.to_value(),
            "backlog" => self.backlog.to_value(),
            "rtcp-interval" => self.rtcp_interval.to_value(),
            "users" => gst::Array::new(self.users.iter().cloned()).to_value(),
            "users-file" => self.users_file.to_value(),
            "auth-methods" => self.auth_methods.to_value(),
            "realm" => self.realm.to_value(),
            "allowed-addresses" => self.allowed_addresses.to_value(),
            "tls-certificate-file" => self.tls_certificate_file.to_value(),
            "tls-key-file" => self.tls_key_file.to_value(),
            "tls-certificate" => self
                .tls_certificate
                .as_ref()
                .and_then(CertificatePem::to_object)
                .to_value(),
            _ => return None,
        })
    }

    /// The server configuration these settings make (the element adds its own parts).
    pub fn server_config(&self) -> Result<ServerConfig, String> {
        let address = IpAddr::from_str(&self.address)
            .map_err(|_| format!("address '{}' is not an IP address", self.address))?;
        let mount_point = if self.mount_point.starts_with('/') {
            self.mount_point.clone()
        } else {
            format!("/{}", self.mount_point)
        };
        Ok(ServerConfig {
            address,
            port: self.port as u16,
            mount_point,
            protocols: Protocols {
                udp: self.protocols.contains(gst_rtsp::RTSPLowerTrans::UDP),
                udp_multicast: self.protocols.contains(gst_rtsp::RTSPLowerTrans::UDP_MCAST),
                tcp: self.protocols.contains(gst_rtsp::RTSPLowerTrans::TCP),
            },
            session_timeout: Duration::from_secs(u64::from(self.session_timeout)),
            max_sessions: self.max_sessions as usize,
            max_sessions_per_connection: self.max_sessions_per_connection as usize,
            max_connections: self.max_connections as usize,
            max_connections_per_address: self.max_connections_per_address as usize,
            request_timeout: Duration::from_secs(u64::from(self.request_timeout)),
            limits: Limits {
                max_body_bytes: self.max_request_body_size as usize,
                ..ServerConfig::default().limits
            },
            backlog: self.backlog,
            rtcp_interval: Duration::from_millis(u64::from(self.rtcp_interval)),
            access: self.access_config()?,
            tls: self.tls()?,
            ..ServerConfig::default()
        })
    }

    /// `users`, `users-file`, `auth-methods`, `realm` and `allowed-addresses` (without the
    /// `authorize` hook, which needs the element).
    pub fn access_config(&self) -> Result<AccessConfig, String> {
        let realm = &self.realm;
        let mut users = Users::default();
        users
            .add_entries(self.users.iter().map(String::as_str), realm)
            .map_err(|e| format!("users: {e}"))?;
        if let Some(path) = self.users_file.as_deref().filter(|p| !p.is_empty()) {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("users-file '{path}' cannot be read: {e}"))?;
            let added = users
                .add_htdigest(&text, realm)
                .map_err(|e| format!("users-file '{path}' {e}"))?;
            if added == 0 {
                return Err(format!(
                    "users-file '{path}' has no user of realm '{realm}'"
                ));
            }
        }
        // Basic shows the password to anyone on the path: by default it is offered only
        // inside TLS; without TLS only when the application named it in `auth-methods`.
        let tls = self.tls_certificate.is_some() || self.tls_certificate_file.is_some();
        let methods = AuthMethods {
            basic: self.auth_methods.contains(AuthMethodFlags::BASIC)
                && (tls || self.auth_methods_set),
            digest: self.auth_methods.contains(AuthMethodFlags::DIGEST),
        };
        if !users.is_empty() && !methods.basic && !methods.digest {
            return Err("auth-methods names no method, but users are set".into());
        }
        let allowed = parse_networks(self.allowed_addresses.as_deref().unwrap_or(""))
            .map_err(|e| format!("allowed-addresses: {e}"))?;
        Ok(AccessConfig {
            users,
            methods,
            realm: realm.clone(),
            allowed,
            ..AccessConfig::default()
        })
    }

    /// The RTSPS configuration from `tls-certificate` or the PEM files, if any is set.
    pub fn tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        tls_config(
            self.tls_certificate.as_ref(),
            self.tls_certificate_file.as_deref(),
            self.tls_key_file.as_deref(),
        )
    }
}

/// The TLS server configuration of the properties `tls-certificate` (`certificate`) or
/// `tls-certificate-file`/`tls-key-file`, if any is set (rtspserversink's, rtspserversrc's and
/// rshlssink's built-in HTTP server's).
pub fn tls_config(
    certificate: Option<&CertificatePem>,
    certificate_file: Option<&str>,
    key_file: Option<&str>,
) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let config = match (certificate, (certificate_file, key_file)) {
        (None, (None, None)) => return Ok(None),
        (Some(cert), (None, None)) => cert.server_config(),
        (None, (Some(cert), key)) => {
            server_tls::server_config_from_files(Path::new(cert), key.map(Path::new))
        }
        (None, (None, Some(_))) => {
            return Err("tls-key-file is set without tls-certificate-file".into());
        }
        (Some(_), _) => {
            return Err(
                "set either tls-certificate or tls-certificate-file/tls-key-file, not both".into(),
            );
        }
    };
    config.map(Some).map_err(|e| e.to_string())
}

/// The `authorize` signal both elements emit for each request but OPTIONS.
pub fn authorize_signal() -> glib::subclass::Signal {
    glib::subclass::Signal::builder("authorize")
        .param_types([
            String::static_type(),
            String::static_type(),
            String::static_type(),
            String::static_type(),
        ])
        .return_type::<bool>()
        .run_last()
        .class_handler(|_| Some(true.to_value()))
        .accumulator(|_, _, allow| {
            if allow.get::<bool>().unwrap_or(false) {
                std::ops::ControlFlow::Continue(allow.clone())
            } else {
                std::ops::ControlFlow::Break(allow.clone())
            }
        })
        .build()
}

/// Hooks the element's `authorize` signal into the server's access control.
pub fn set_authorize_hook(config: &mut ServerConfig, element: &gst::Element) {
    let weak = element.downgrade();
    config.access.authorize = Some(Arc::new(
        move |r: &crate::rtsp::server::auth::AccessRequest<'_>| {
            weak.upgrade().is_some_and(|obj| {
                let address = r.peer.ip().to_string();
                obj.emit_by_name::<bool>("authorize", &[&r.user, &r.method, &r.path, &address])
            })
        },
    ));
}
