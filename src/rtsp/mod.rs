pub mod codec;
pub mod sdp;
pub mod server;
pub mod transport;
