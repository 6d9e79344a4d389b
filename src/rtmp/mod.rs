//! RTMP publishing without GStreamer types: the handshake, chunk streams, AMF0, the FLV input,
//! locations, the publisher state machine (sans I/O), the bounded tag queue with its drop policy,
//! and the network thread that connects (RTMP or RTMPS) and reconnects.
//!
//! Specifications: Adobe's RTMP specification 1.0 (December 2012), the AMF0 specification (Adobe,
//! 2007), the FLV format of the Adobe Flash Video File Format Specification 10.1 (annex E) and
//! Enhanced RTMP (Veovera) for HEVC and other FourCC codecs. Each module names its sections.

pub mod amf0;
pub mod chunk;
pub mod client;
pub mod flv;
pub mod handshake;
pub mod net;
pub mod queue;
pub mod url;
