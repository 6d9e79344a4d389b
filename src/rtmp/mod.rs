//! RTMP publishing without GStreamer types: the handshake, chunk streams, AMF0, the FLV input,
//! locations, the publisher state machine (sans I/O), the bounded tag queue with its drop policy,
//! and the network thread that connects (RTMP or RTMPS) and reconnects.

pub mod amf0;
pub mod chunk;
pub mod client;
pub mod flv;
pub mod handshake;
pub mod net;
pub mod queue;
pub mod url;
