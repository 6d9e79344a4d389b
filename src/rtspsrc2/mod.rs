use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct RtspSrc2(ObjectSubclass<imp::RtspSrc2>) @extends gst::Element, gst::Object, @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "rtspsrc2",
        gst::Rank::NONE,
        RtspSrc2::static_type(),
    )
}
