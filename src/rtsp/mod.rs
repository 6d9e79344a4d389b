//! RTSP without GStreamer types: message framing, the Transport header, SDP, authentication, UDP
//! port pairs, the HTTP tunnel, the server and the client.
//!
//! Specifications: RTSP 1.0 (RFC 2326), with RTSP 2.0 (RFC 7826) where it clarifies what 1.0 peers
//! do; SDP (RFC 4566); RTP/RTCP (RFC 3550). Each module names the sections it implements.

pub mod auth;
pub mod client;
pub mod codec;
pub mod ports;
pub mod range;
pub mod sdp;
pub mod server;
pub mod transport;
pub mod tunnel;
