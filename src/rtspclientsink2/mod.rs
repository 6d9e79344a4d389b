use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct RtspClientSink2(ObjectSubclass<imp::RtspClientSink2>) @extends gst::Bin, gst::Element, gst::Object, @implements gst::ChildProxy, gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "rtspclientsink2",
        gst::Rank::NONE,
        RtspClientSink2::static_type(),
    )
}
