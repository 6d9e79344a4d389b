//! The bin's internal sink: a minimal element (not registered) whose sink pad hands each buffer
//! the muxer pushes straight to a callback on the streaming thread. mpegtsmux pushes one buffer
//! per 188-byte packet, so this saves appsink's sample and queue work per packet.

use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

/// Gets the muxer's buffers, a list at a time (a single buffer comes as a list of one).
pub type BufferFn =
    Box<dyn Fn(&gst::BufferListRef) -> Result<gst::FlowSuccess, gst::FlowError> + Send + Sync>;
pub type EosFn = Box<dyn Fn() + Send + Sync>;
/// Sees every other event before it is handled (caps, flushes); an error rejects it.
pub type EventFn = Box<dyn Fn(&gst::EventRef) -> Result<(), String> + Send + Sync>;

glib::wrapper! {
    pub struct OutputSink(ObjectSubclass<imp::OutputSink>) @extends gst::Element, gst::Object;
}

impl OutputSink {
    pub fn new(name: &str) -> OutputSink {
        glib::Object::builder().property("name", name).build()
    }

    /// Sets what happens to buffers and at EOS (before the element posts its EOS message).
    pub fn set_callbacks(&self, on_buffer: BufferFn, on_eos: EosFn) {
        *self.imp().callbacks.lock().unwrap() = Some((on_buffer.into(), on_eos.into()));
    }

    /// Sets what sees the other events.
    pub fn set_event_callback(&self, on_event: EventFn) {
        *self.imp().on_event.lock().unwrap() = Some(on_event.into());
    }
}

mod imp {
    use super::*;
    use std::sync::Arc;

    type Callbacks = (Arc<super::BufferFn>, Arc<super::EosFn>);

    pub struct OutputSink {
        pub(super) callbacks: Mutex<Option<Callbacks>>,
        pub(super) on_event: Mutex<Option<Arc<super::EventFn>>>,
        sinkpad: gst::Pad,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for OutputSink {
        const NAME: &'static str = "GstLsHlsSinkOutput";
        type Type = super::OutputSink;
        type ParentType = gst::Element;

        fn with_class(klass: &Self::Class) -> Self {
            let templ = klass.pad_template("sink").expect("sink template");
            let sinkpad = gst::Pad::builder_from_template(&templ)
                .chain_function(|_pad, parent, buffer| {
                    OutputSink::catch_panic_pad_function(
                        parent,
                        || Err(gst::FlowError::Error),
                        |imp| imp.chain(buffer),
                    )
                })
                .chain_list_function(|_pad, parent, list| {
                    OutputSink::catch_panic_pad_function(
                        parent,
                        || Err(gst::FlowError::Error),
                        |imp| imp.chain_list(list),
                    )
                })
                .event_function(|pad, parent, event| {
                    OutputSink::catch_panic_pad_function(
                        parent,
                        || false,
                        |imp| imp.event(pad, event),
                    )
                })
                .build();
            OutputSink {
                callbacks: Mutex::new(None),
                on_event: Mutex::new(None),
                sinkpad,
            }
        }
    }

    impl OutputSink {
        fn callbacks(&self) -> Option<Callbacks> {
            self.callbacks.lock().unwrap().clone()
        }

        fn chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
            let mut list = gst::BufferList::new_sized(1);
            list.get_mut().expect("new list").add(buffer);
            self.chain_list(list)
        }

        fn chain_list(&self, list: gst::BufferList) -> Result<gst::FlowSuccess, gst::FlowError> {
            match self.callbacks() {
                Some((on_buffers, _)) => on_buffers(&list),
                None => Ok(gst::FlowSuccess::Ok),
            }
        }

        fn event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
            let on_event = self.on_event.lock().unwrap().clone();
            if event.type_() != gst::EventType::Eos
                && let Some(on_event) = on_event
                && let Err(e) = on_event(&event)
            {
                gst::element_imp_error!(self, gst::StreamError::Format, ("{}", e));
                return false;
            }
            match event.view() {
                gst::EventView::Eos(_) => {
                    if let Some((_, on_eos)) = self.callbacks() {
                        on_eos();
                    }
                    let obj = self.obj();
                    let msg = gst::message::Eos::builder()
                        .src(&*obj)
                        .seqnum(event.seqnum())
                        .build();
                    let _ = obj.post_message(msg);
                    true
                }
                // Nothing is downstream: everything else is handled as a pad without a peer
                // would (sticky events stay stored on the pad).
                _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
            }
        }
    }

    impl ObjectImpl for OutputSink {
        fn constructed(&self) {
            self.parent_constructed();
            let obj = self.obj();
            obj.set_element_flags(gst::ElementFlags::SINK);
            obj.add_pad(&self.sinkpad).expect("add sink pad");
        }
    }

    impl GstObjectImpl for OutputSink {}

    impl ElementImpl for OutputSink {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                gst::subclass::ElementMetadata::new(
                    "HLS sink output",
                    "Sink",
                    "rshlssink's internal sink for the muxer's output",
                    "gst-plugin-livestreaming developers",
                )
            });
            Some(&*METADATA)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                vec![
                    gst::PadTemplate::new(
                        "sink",
                        gst::PadDirection::Sink,
                        gst::PadPresence::Always,
                        &gst::Caps::new_any(),
                    )
                    .expect("valid template"),
                ]
            });
            TEMPLATES.as_ref()
        }
    }
}
