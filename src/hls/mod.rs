//! HLS output without GStreamer types: MPEG-TS segmenting, media playlists (m3u8-rs), AES-128
//! encryption, atomic local output, HTTP upload, S3 upload and a built-in HTTP server.
//!
//! Specifications: RFC 8216 (HLS: §3 media segments, §4 playlists, §5.2 AES-128, §6.2 server
//! responsibilities), ISO/IEC 13818-1 (MPEG-TS), RFC 9110 (HTTP semantics: PUT/DELETE uploads,
//! range requests of the built-in server). Logs go to the `lshls` debug category; AES keys never
//! appear in them, nor `user:password@` of upload URLs, nor S3 secrets and signatures.

pub mod crypto;
pub mod fmp4;
pub mod growing;
pub mod http;
pub mod iframes;
pub mod location;
pub mod multivariant;
pub mod planner;
pub mod playlist;
pub mod s3;
pub mod segmenter;
pub mod store;
pub mod ts;
pub mod upload;
pub mod writer;
