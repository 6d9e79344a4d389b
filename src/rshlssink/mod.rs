use gst::glib;
use gst::prelude::*;

mod builtin;
mod imp;
mod output;

/// `playlist-type`: what kind of media playlist is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLsHlsSinkPlaylistType")]
pub enum PlaylistType {
    #[default]
    #[enum_value(
        name = "Live: a sliding window of playlist-length segments",
        nick = "live"
    )]
    Live = 0,
    #[enum_value(name = "Event: every segment stays listed", nick = "event")]
    Event = 1,
    #[enum_value(
        name = "VOD: every segment stays; EVENT while recording, VOD at end of stream",
        nick = "vod"
    )]
    Vod = 2,
}

/// `encryption`: segment encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLsHlsSinkEncryption")]
pub enum Encryption {
    #[default]
    #[enum_value(name = "None", nick = "none")]
    None = 0,
    #[enum_value(name = "AES-128 (CBC, key file and IV per segment)", nick = "aes-128")]
    Aes128 = 1,
}

/// `muxer`: what makes the transport stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLsHlsSinkMuxer")]
pub enum Muxer {
    #[default]
    #[enum_value(
        name = "Built-in (H.264, H.265, AAC, MPEG audio); mpegtsmux when a pad is requested for other caps",
        nick = "builtin"
    )]
    Builtin = 0,
    #[enum_value(name = "The stock mpegtsmux", nick = "mpegtsmux")]
    Mpegtsmux = 1,
}

/// `segment-format`: the container of the media segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLsHlsSinkSegmentFormat")]
pub enum SegmentFormat {
    #[default]
    #[enum_value(name = "MPEG-TS segments (.ts)", nick = "mpegts")]
    Mpegts = 0,
    #[enum_value(
        name = "Fragmented MP4 / CMAF: an init segment (EXT-X-MAP) and .m4s media segments (H.264, H.265, AV1, AAC, Opus)",
        nick = "fmp4"
    )]
    Fmp4 = 1,
}

glib::wrapper! {
    pub struct RsHlsSink(ObjectSubclass<imp::RsHlsSink>) @extends gst::Bin, gst::Element, gst::Object, @implements gst::ChildProxy;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    PlaylistType::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Encryption::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    Muxer::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    SegmentFormat::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "rshlssink",
        gst::Rank::NONE,
        RsHlsSink::static_type(),
    )
}
