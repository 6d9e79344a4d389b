//! RTMP without GStreamer types: the handshake (both sides), chunk streams, AMF0, the FLV input,
//! locations, the publisher state machine (sans I/O), the bounded tag queue with its drop policy,
//! the network thread that connects (RTMP or RTMPS) and reconnects, and the server that
//! publishers push into (`server`: a connection's state machine, the output queue, the listener).
//!
//! Specifications: Adobe RTMP Specification 1.0 (§5.2 handshake, §5.3 chunking, §5.4 protocol
//! control messages, §7 command messages and user control events); Adobe AMF0 specification;
//! Adobe FLV file format (Video File Format Specification v10.1, Annex E). Logs go to the
//! `lsrtmp` debug category; the stream name (the stream key) never appears in them.

/// A `log` record with the element's name as its `id` key-value when the name is known:
/// `log_id!(debug, name, "format", args...)`.
macro_rules! log_id {
    ($level:ident, $id:expr, $($arg:tt)+) => {{
        let id: &str = $id;
        if id.is_empty() {
            log::$level!($($arg)+)
        } else {
            log::$level!(id = id; $($arg)+)
        }
    }};
}

pub mod amf0;
pub mod auth;
pub mod chunk;
pub mod client;
pub mod enhanced;
pub mod flv;
pub mod handshake;
pub mod net;
pub mod queue;
pub mod rtmpe;
pub mod server;
pub mod tunnel;
pub mod url;
