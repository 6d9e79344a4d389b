//! Element messages shared by the elements: what an application watches on the bus for
//! reconnections, posted the same way by rtspsrc2 (`rtspsrc2-reconnect`, `rtspsrc2-reconnected`)
//! and rsrtmpsink (`rsrtmpsink-reconnect`, `rsrtmpsink-reconnected`).
//!
//! `<element>-reconnect`, before each attempt:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `attempt` | `guint` | this attempt, from 1 |
//! | `max-attempts` | `guint` | the `reconnect-attempts` property |
//! | `delay-ms` | `guint64` | the wait before this attempt |
//! | `reason` | `gchararray` | why the connection was lost (never a password or stream key) |
//!
//! `<element>-reconnected`, once an attempt succeeded: no fields.

use std::time::Duration;

use gst::prelude::*;

/// The `<prefix>-reconnect` element message from `src`, before attempt `attempt` of `of`.
pub fn reconnect(
    src: &impl IsA<gst::Object>,
    prefix: &str,
    attempt: u32,
    of: u32,
    delay: Duration,
    reason: &str,
) -> gst::Message {
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    gst::message::Element::builder(
        gst::Structure::builder(format!("{prefix}-reconnect"))
            .field("attempt", attempt)
            .field("max-attempts", of)
            .field("delay-ms", delay_ms)
            .field("reason", reason)
            .build(),
    )
    .src(src)
    .build()
}

/// The `<prefix>-reconnected` element message from `src`.
pub fn reconnected(src: &impl IsA<gst::Object>, prefix: &str) -> gst::Message {
    gst::message::Element::builder(gst::Structure::builder(format!("{prefix}-reconnected")).build())
        .src(src)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messages_carry_the_documented_fields() {
        gst::init().unwrap();
        let bin = gst::Bin::with_name("camera-7");
        let m = reconnect(&bin, "rtspsrc2", 2, 5, Duration::from_millis(1500), "EOF");
        assert_eq!(m.src().map(|s| s.name()), Some("camera-7".into()));
        let s = m.structure().unwrap();
        assert_eq!(s.name(), "rtspsrc2-reconnect");
        assert_eq!(s.get::<u32>("attempt").unwrap(), 2);
        assert_eq!(s.get::<u32>("max-attempts").unwrap(), 5);
        assert_eq!(s.get::<u64>("delay-ms").unwrap(), 1500);
        assert_eq!(s.get::<&str>("reason").unwrap(), "EOF");
        assert_eq!(s.n_fields(), 4);

        let m = reconnect(&bin, "rsrtmpsink", 1, 1, Duration::MAX, "");
        let s = m.structure().unwrap();
        assert_eq!(s.get::<u64>("delay-ms").unwrap(), u64::MAX);

        let m = reconnected(&bin, "rsrtmpsink");
        let s = m.structure().unwrap();
        assert_eq!(s.name(), "rsrtmpsink-reconnected");
        assert_eq!(s.n_fields(), 0);
        assert!(matches!(m.view(), gst::MessageView::Element(_)));
    }
}
