pub mod auth;
pub mod client;
pub mod codec;
pub mod ports;
pub mod range;
pub mod sdp;
pub mod server;
pub mod transport;
