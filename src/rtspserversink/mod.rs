use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct RtspServerSink(ObjectSubclass<imp::RtspServerSink>) @extends gst::Bin, gst::Element, gst::Object, @implements gst::ChildProxy;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "rtspserversink",
        gst::Rank::NONE,
        RtspServerSink::static_type(),
    )
}
