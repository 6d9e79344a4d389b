//! Network helpers shared by the protocol cores and elements (no GStreamer types).
//!
//! Specifications: none of its own: helpers for the cores (see each module).
//!
//! * [`backoff`]: the bounded exponential backoff between reconnection and retry attempts
//!   (rtspsrc2's reconnects, rsrtmpsink's reconnects, rshlssink's upload retries).
//! * [`tls`]: the trust anchors of TLS clients: the system's CA certificates (as GStreamer's own
//!   TLS elements trust, via rustls-native-certs), loaded once per process, plus a PEM CA file.
//! * [`redact`]: URLs in text without their credentials, for errors and logs.
//! * [`server_tls`]: the certificate and key of TLS servers (rtspserversink's RTSPS) from PEM.
//! * [`udp_in`]: every datagram queued on a socket in one `recvmmsg`, for the UDP reader threads
//!   of rtspsrc2 and rtspserversrc.
//! * [`udp_out`]: RTP datagrams in as few system calls as possible (`sendmmsg`, UDP GSO), for
//!   rtspserversink's fan-out and rtspclientsink2's publication.

pub mod backoff;
pub mod redact;
pub mod server_tls;
pub mod tls;
pub mod udp_in;
pub mod udp_out;
