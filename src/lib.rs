//! GStreamer elements for live streaming protocols.
//!
//! The protocol cores (`rtsp`, `rtp`, `rtmp`, `hls`) are plain Rust without GStreamer types; the
//! element modules are thin adapters over them.
#![allow(clippy::non_send_fields_in_send_ty)]

#[doc(hidden)]
pub mod fuzzing;
pub mod hls;
mod logging;
pub mod messages;
pub mod net;
mod payloading;
pub mod rshlssink;
pub mod rsrtmpsink;
pub mod rtmp;
pub mod rtmpserversrc;
pub mod rtp;
pub mod rtp_receive;
pub mod rtsp;
mod rtsp_client_props;
mod rtsp_server_props;
pub mod rtspclientsink2;
pub mod rtspserversink;
pub mod rtspserversrc;
pub mod rtspsrc2;
pub mod runtime;
mod tls_flags;

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // The cores log through `log`; their records go to the lsrtsp/lsrtp/lsrtmp/lshls categories.
    logging::install();
    rtspserversink::register(plugin)?;
    rtspsrc2::register(plugin)?;
    rtspserversrc::register(plugin)?;
    rtspclientsink2::register(plugin)?;
    rshlssink::register(plugin)?;
    rsrtmpsink::register(plugin)?;
    rtmpserversrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    livestreaming,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
