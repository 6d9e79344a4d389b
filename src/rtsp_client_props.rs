//! The properties rtspsrc2 and rtspclientsink2 share: the server's location, the transports,
//! the timeouts, credentials, reconnection, TLS and the client port range, with their defaults,
//! their descriptions and their mapping onto [`ClientConfig`]. One definition, so that both
//! elements take the same values the same way; a [`Role`] words the ones that differ (rtspsrc2
//! plays, rtspclientsink2 publishes).

use std::time::Duration;

use gst::glib;
use gst::prelude::*;

use crate::rtsp::auth::Credentials;
use crate::rtsp::client::{ClientConfig, TlsSettings, TransportKind, redact_url};

pub const DEFAULT_TCP_TIMEOUT_US: u64 = 20_000_000;
pub const DEFAULT_TEARDOWN_TIMEOUT_NS: u64 = 2_000_000_000;
pub const DEFAULT_RECONNECT_ATTEMPTS: u32 = 5;
pub const DEFAULT_RECONNECT_INITIAL_DELAY_MS: u32 = 500;
pub const DEFAULT_RECONNECT_MAX_DELAY_MS: u32 = 10_000;

/// The URI schemes both elements handle (the URI handler's protocols).
pub const URI_PROTOCOLS: &[&str] = &[
    "rtsp", "rtspu", "rtspt", "rtsps", "rtspst", "rtsph", "rtspsh",
];

/// Which element the properties are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// rtspsrc2: plays from the server.
    Play,
    /// rtspclientsink2: publishes to the server (ANNOUNCE + RECORD).
    Publish,
}

impl Role {
    fn pick(self, play: &'static str, publish: &'static str) -> &'static str {
        match self {
            Role::Play => play,
            Role::Publish => publish,
        }
    }

    /// The flags of `protocols` the element uses, in the order tried: multicast is for players
    /// only.
    fn transports(self) -> &'static [(gst_rtsp::RTSPLowerTrans, TransportKind)] {
        match self {
            Role::Play => &[
                (gst_rtsp::RTSPLowerTrans::UDP, TransportKind::Udp),
                (
                    gst_rtsp::RTSPLowerTrans::UDP_MCAST,
                    TransportKind::UdpMulticast,
                ),
                (gst_rtsp::RTSPLowerTrans::TCP, TransportKind::Tcp),
            ],
            Role::Publish => &[
                (gst_rtsp::RTSPLowerTrans::UDP, TransportKind::Udp),
                (gst_rtsp::RTSPLowerTrans::TCP, TransportKind::Tcp),
            ],
        }
    }

    fn default_protocols(self) -> gst_rtsp::RTSPLowerTrans {
        self.transports()
            .iter()
            .fold(gst_rtsp::RTSPLowerTrans::empty(), |all, (flag, _)| {
                all | *flag
            })
    }
}

/// The shared settings. No `Debug`: `user_pw` is a password.
#[derive(Clone)]
pub struct ClientProps {
    role: Role,
    pub location: Option<String>,
    pub protocols: gst_rtsp::RTSPLowerTrans,
    pub tcp_timeout_us: u64,
    pub teardown_timeout_ns: u64,
    pub keep_alive: bool,
    pub user_id: Option<String>,
    pub user_pw: Option<String>,
    pub user_agent: String,
    pub reconnect_attempts: u32,
    pub reconnect_initial_delay_ms: u32,
    pub reconnect_max_delay_ms: u32,
    pub tls_validation_flags: gio::TlsCertificateFlags,
    pub tls_ca_file: Option<String>,
    pub port_range: Option<String>,
}

impl ClientProps {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            location: None,
            protocols: role.default_protocols(),
            tcp_timeout_us: DEFAULT_TCP_TIMEOUT_US,
            teardown_timeout_ns: DEFAULT_TEARDOWN_TIMEOUT_NS,
            keep_alive: true,
            user_id: None,
            user_pw: None,
            user_agent: ClientConfig::default().user_agent,
            reconnect_attempts: DEFAULT_RECONNECT_ATTEMPTS,
            reconnect_initial_delay_ms: DEFAULT_RECONNECT_INITIAL_DELAY_MS,
            reconnect_max_delay_ms: DEFAULT_RECONNECT_MAX_DELAY_MS,
            tls_validation_flags: gio::TlsCertificateFlags::VALIDATE_ALL,
            tls_ca_file: None,
            port_range: None,
        }
    }

    /// The shared properties' specifications, worded for `role`.
    pub fn param_specs(role: Role) -> Vec<glib::ParamSpec> {
        vec![
            glib::ParamSpecString::builder("location")
                .nick("Location")
                .blurb(role.pick(
                    "RTSP URL to play: rtsp://[user:password@]host[:port]/path; rtsps:// (or rtspst://) inside TLS, rtsph:// tunnelled through HTTP, rtspsh:// through HTTP inside TLS",
                    "RTSP URL to publish to: rtsp://[user:password@]host[:port]/path; rtsps:// inside TLS, rtsph:// tunnelled through HTTP, rtspsh:// through HTTP inside TLS",
                ))
                .mutable_ready()
                .build(),
            glib::ParamSpecFlags::builder::<gst_rtsp::RTSPLowerTrans>("protocols")
                .nick("Protocols")
                .blurb(role.pick(
                    "Lower transports to try, in the order udp, udp-mcast, tcp; http tunnels the session through HTTP (media interleaved)",
                    "Lower transports to try, in the order udp, tcp; http tunnels the session through HTTP (media interleaved)",
                ))
                .default_value(role.default_protocols())
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt64::builder("tcp-timeout")
                .nick("TCP timeout")
                .blurb("Microseconds to wait to connect and for each RTSP response")
                .default_value(DEFAULT_TCP_TIMEOUT_US)
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt64::builder("teardown-timeout")
                .nick("Teardown timeout")
                .blurb(role.pick(
                    "Nanoseconds that TEARDOWN may take when stopping (a dead server never hangs the state change)",
                    "Nanoseconds that TEARDOWN may take (a dead server never hangs the state change)",
                ))
                .default_value(DEFAULT_TEARDOWN_TIMEOUT_NS)
                .mutable_ready()
                .build(),
            glib::ParamSpecBoolean::builder("do-rtsp-keep-alive")
                .nick("Keep alive")
                .blurb(role.pick(
                    "Send keep-alive requests (GET_PARAMETER or OPTIONS) before the session times out",
                    "Send keep-alives (GET_PARAMETER or OPTIONS) before the session times out",
                ))
                .default_value(true)
                .mutable_ready()
                .build(),
            glib::ParamSpecString::builder("user-id")
                .nick("User ID")
                .blurb(role.pick(
                    "User name for Basic/Digest authentication (or put it in the URL)",
                    "User name for Basic/Digest authentication",
                ))
                .mutable_ready()
                .build(),
            glib::ParamSpecString::builder("user-pw")
                .nick("User password")
                .blurb("Password for Basic/Digest authentication")
                .mutable_ready()
                .build(),
            glib::ParamSpecString::builder("user-agent")
                .nick("User agent")
                .blurb("The User-Agent header sent with every request")
                .default_value(Some(ClientConfig::default().user_agent.as_str()))
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt::builder("reconnect-attempts")
                .nick("Reconnect attempts")
                .blurb(role.pick(
                    "Reconnections tried after the connection is lost before giving up with an error (0 = none)",
                    "Attempts to publish again after the connection is lost (0: fail at once)",
                ))
                .default_value(DEFAULT_RECONNECT_ATTEMPTS)
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt::builder("reconnect-initial-delay")
                .nick("Reconnect initial delay")
                .blurb(role.pick(
                    "Milliseconds before the first reconnection attempt; doubles per attempt",
                    "Milliseconds before the first reconnection attempt; doubled per attempt",
                ))
                .default_value(DEFAULT_RECONNECT_INITIAL_DELAY_MS)
                .mutable_ready()
                .build(),
            glib::ParamSpecUInt::builder("reconnect-max-delay")
                .nick("Reconnect max delay")
                .blurb("Milliseconds between reconnection attempts at most")
                .default_value(DEFAULT_RECONNECT_MAX_DELAY_MS)
                .mutable_ready()
                .build(),
            glib::ParamSpecFlags::builder::<gio::TlsCertificateFlags>("tls-validation-flags")
                .nick("TLS validation flags")
                .blurb(role.pick(
                    "Which problems of the server's certificate fail rtsps (0 accepts any certificate), checked against the system's CAs and tls-ca-file's",
                    "Certificate problems that fail an rtsps:// connection (0 accepts any certificate)",
                ))
                .default_value(gio::TlsCertificateFlags::VALIDATE_ALL)
                .mutable_ready()
                .build(),
            glib::ParamSpecString::builder("tls-ca-file")
                .nick("TLS CA file")
                .blurb(role.pick(
                    "PEM file of CA certificates trusted for rtsps besides the system's (a private CA, or a camera's own certificate authority)",
                    "PEM file of CA certificates trusted besides the system's",
                ))
                .mutable_ready()
                .build(),
            glib::ParamSpecString::builder("port-range")
                .nick("Port range")
                .blurb(role.pick(
                    "Client UDP port range MIN-MAX, e.g. 3000-3005 (NULL = any)",
                    "Client UDP port range MIN-MAX for RTP and RTCP, e.g. 3000-3005 (NULL = any)",
                ))
                .mutable_ready()
                .build(),
        ]
    }

    /// Sets a shared property; false when `name` is not one.
    pub fn set(&mut self, name: &str, value: &glib::Value) -> bool {
        match name {
            "location" => self.location = value.get().expect("type checked"),
            "protocols" => self.protocols = value.get().expect("type checked"),
            "tcp-timeout" => self.tcp_timeout_us = value.get().expect("type checked"),
            "teardown-timeout" => self.teardown_timeout_ns = value.get().expect("type checked"),
            "do-rtsp-keep-alive" => self.keep_alive = value.get().expect("type checked"),
            "user-id" => self.user_id = value.get().expect("type checked"),
            "user-pw" => self.user_pw = value.get().expect("type checked"),
            "user-agent" => {
                self.user_agent = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_default()
            }
            "reconnect-attempts" => self.reconnect_attempts = value.get().expect("type checked"),
            "reconnect-initial-delay" => {
                self.reconnect_initial_delay_ms = value.get().expect("type checked")
            }
            "reconnect-max-delay" => {
                self.reconnect_max_delay_ms = value.get().expect("type checked")
            }
            "tls-validation-flags" => {
                self.tls_validation_flags = value.get().expect("type checked")
            }
            "tls-ca-file" => self.tls_ca_file = value.get().expect("type checked"),
            "port-range" => self.port_range = value.get().expect("type checked"),
            _ => return false,
        }
        true
    }

    /// A shared property's value; None when `name` is not one.
    pub fn get(&self, name: &str) -> Option<glib::Value> {
        Some(match name {
            "location" => self.location.to_value(),
            "protocols" => self.protocols.to_value(),
            "tcp-timeout" => self.tcp_timeout_us.to_value(),
            "teardown-timeout" => self.teardown_timeout_ns.to_value(),
            "do-rtsp-keep-alive" => self.keep_alive.to_value(),
            "user-id" => self.user_id.to_value(),
            "user-pw" => self.user_pw.to_value(),
            "user-agent" => self.user_agent.to_value(),
            "reconnect-attempts" => self.reconnect_attempts.to_value(),
            "reconnect-initial-delay" => self.reconnect_initial_delay_ms.to_value(),
            "reconnect-max-delay" => self.reconnect_max_delay_ms.to_value(),
            "tls-validation-flags" => self.tls_validation_flags.to_value(),
            "tls-ca-file" => self.tls_ca_file.to_value(),
            "port-range" => self.port_range.to_value(),
            _ => return None,
        })
    }

    /// The URI handler's set_uri: `location`, once the URI parses (the error redacts a
    /// password in it).
    pub fn set_uri(&mut self, uri: &str) -> Result<(), glib::Error> {
        let url = url::Url::parse(uri).map_err(|e| {
            glib::Error::new(
                gst::URIError::BadUri,
                &format!("'{}': {e}", redact_url(uri)),
            )
        })?;
        self.location = Some(url.to_string());
        Ok(())
    }

    /// The client configuration these settings make (the element adds its own parts).
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let url = self
            .location
            .clone()
            .ok_or("no location set (rtsp://host[:port]/path)")?;
        let protocols: Vec<TransportKind> = self
            .role
            .transports()
            .iter()
            .filter(|(flag, _)| self.protocols.contains(*flag))
            .map(|&(_, kind)| kind)
            .collect();
        // The tunnel carries the media interleaved, whatever else the flags say.
        let http_tunnel = self.protocols.contains(gst_rtsp::RTSPLowerTrans::HTTP);
        if protocols.is_empty() && !http_tunnel {
            return Err(self
                .role
                .pick(
                    "protocols allows none of udp, udp-mcast, tcp, http",
                    "protocols allows none of udp, tcp, http",
                )
                .into());
        }
        let port_range =
            crate::rtsp::ports::parse_port_range(self.port_range.as_deref().unwrap_or(""))?;
        let credentials = self.user_id.clone().map(|user| Credentials {
            user,
            password: self.user_pw.clone().unwrap_or_default(),
        });
        Ok(ClientConfig {
            url,
            credentials,
            protocols,
            user_agent: self.user_agent.clone(),
            tcp_timeout: Duration::from_micros(self.tcp_timeout_us.max(1)),
            teardown_timeout: Duration::from_nanos(self.teardown_timeout_ns),
            port_range,
            keep_alive: self.keep_alive,
            reconnect_attempts: self.reconnect_attempts,
            reconnect_initial_delay: Duration::from_millis(u64::from(
                self.reconnect_initial_delay_ms,
            )),
            reconnect_max_delay: Duration::from_millis(u64::from(
                self.reconnect_max_delay_ms
                    .max(self.reconnect_initial_delay_ms),
            )),
            tls: TlsSettings {
                validation: crate::tls_flags::validation(self.tls_validation_flags),
                ca_file: self
                    .tls_ca_file
                    .as_deref()
                    .filter(|f| !f.is_empty())
                    .map(Into::into),
            },
            http_tunnel,
            ..ClientConfig::default()
        })
    }
}
