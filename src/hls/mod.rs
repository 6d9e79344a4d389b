//! HLS output without GStreamer types: MPEG-TS segmenting, media playlists (m3u8-rs), AES-128
//! encryption, atomic local output, HTTP upload and a built-in HTTP server.

pub mod crypto;
pub mod http;
pub mod location;
pub mod planner;
pub mod playlist;
pub mod segmenter;
pub mod store;
pub mod ts;
pub mod upload;
pub mod writer;
