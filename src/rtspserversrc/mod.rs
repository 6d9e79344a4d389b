use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct RtspServerSrc(ObjectSubclass<imp::RtspServerSrc>) @extends gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "rtspserversrc",
        gst::Rank::NONE,
        RtspServerSrc::static_type(),
    )
}
