use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct RsRtmpSink(ObjectSubclass<imp::RsRtmpSink>) @extends gst_base::BaseSink, gst::Element, gst::Object, @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "rsrtmpsink",
        gst::Rank::NONE,
        RsRtmpSink::static_type(),
    )
}
