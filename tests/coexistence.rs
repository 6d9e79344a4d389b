//! Our plugin registers in a process where another plugin already registered GTypes under the
//! names the upstream elements use (gst-plugins-rs's rtspsrc2 is `GstRtspSrc2`): GType names are
//! process-wide, so a clash would make our registration panic and lose the plugin.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

/// An element type registered under the name `$name`, as another plugin would.
macro_rules! upstream_type {
    ($module:ident, $name:literal) => {
        mod $module {
            use super::*;

            #[derive(Default)]
            pub struct Imp;

            #[glib::object_subclass]
            impl ObjectSubclass for Imp {
                const NAME: &'static str = $name;
                type Type = Element;
                type ParentType = gst::Element;
            }

            impl ObjectImpl for Imp {}
            impl GstObjectImpl for Imp {}
            impl ElementImpl for Imp {}

            glib::wrapper! {
                pub struct Element(ObjectSubclass<Imp>) @extends gst::Element, gst::Object;
            }
        }
    };
}

// The names of gst-plugins-rs's elements and the names our own types carried before.
upstream_type!(rtspsrc2_upstream, "GstRtspSrc2");
upstream_type!(rtspserversink_old, "GstRtspServerSink");
upstream_type!(rtmpsink_old, "GstRsRtmpSink");
upstream_type!(hlssink_old, "GstRsHlsSink");

#[test]
fn plugin_registers_beside_types_of_the_upstream_names() {
    gst::init().unwrap();
    let taken = [
        rtspsrc2_upstream::Element::static_type(),
        rtspserversink_old::Element::static_type(),
        rtmpsink_old::Element::static_type(),
        hlssink_old::Element::static_type(),
    ];
    assert_eq!(taken[0].name(), "GstRtspSrc2");

    gstlivestreaming::plugin_register_static().expect("our plugin registers");

    for (element, type_name) in [
        ("rtspsrc2", "GstLsRtspSrc2"),
        ("rtspserversink", "GstLsRtspServerSink"),
        ("rtspserversrc", "GstLsRtspServerSrc"),
        ("rsrtmpsink", "GstLsRtmpSink"),
        ("rtmpserversrc", "GstLsRtmpServerSrc"),
        ("rshlssink", "GstLsHlsSink"),
        ("rtspclientsink2", "GstLsRtspClientSink2"),
    ] {
        let e = gst::ElementFactory::make(element)
            .build()
            .unwrap_or_else(|e| panic!("{element}: {e}"));
        assert_eq!(e.type_().name(), type_name, "{element}");
        let plugin = e
            .factory()
            .and_then(|f| f.plugin_name())
            .map(|p| p.to_string());
        assert_eq!(plugin.as_deref(), Some("livestreaming"), "{element}");
        assert!(!taken.contains(&e.type_()), "{element}");
    }
}
