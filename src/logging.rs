//! The bridge from the cores' `log` records into GStreamer's debug system.
//!
//! The protocol cores (`src/rtsp`, `src/rtp`, `src/rtmp`, `src/hls`) know nothing of GStreamer:
//! they log through the `log` crate. The plugin installs [`install`] as the `log` logger when it
//! is registered, and every record lands in the GStreamer debug category of its core, so that
//! `GST_DEBUG=lsrtsp:5` shows the RTSP requests and answers the way `GST_DEBUG=rtspsrc:5` does for
//! the stock elements:
//!
//! | category | core | what it logs |
//! |---|---|---|
//! | `lsrtsp` | `src/rtsp` | RTSP requests and answers (5), headers (6), sessions, transports, reconnects |
//! | `lsrtp` | `src/rtp` | jitter buffer gaps, SSRC changes, lip-sync (5), RTCP reports (6) |
//! | `lsrtmp` | `src/rtmp` | handshake steps, commands and answers, chunk size and window changes, reconnects |
//! | `lshls` | `src/hls` | segment cuts and why, playlist writes, uploads and retries, HTTP requests |
//! | `livestreaming` | anything else | records of other targets |
//!
//! Levels: `log::error!` → ERROR (1), `warn!` → WARNING (2), `info!` → INFO (4), `debug!` → DEBUG
//! (5), `trace!` → LOG (6). A record is formatted only when its category's threshold lets it through.
//!
//! `trace!` is what the cores use per packet, so while none of our categories is at LOG or above
//! the `log` crate's own filter (`log::max_level`, one atomic load in the macro) stops it before
//! the bridge is called. That filter follows GStreamer's thresholds, which change without notice
//! (`GST_DEBUG`, `gst_debug_set_threshold_for_name`, ...): it is recomputed when the plugin is
//! registered, on every record that reaches the bridge (records at `debug!` and above always do:
//! they are not per packet), and once a second on the shared runtime ([`follow_thresholds`]).
//! Raising a category to LOG at run time thus shows its `trace!` records from the next
//! connection event, or within a second.
//!
//! A record may carry the name of the element it belongs to as the key-value `id`
//! (`log::debug!(id = name; "...")`); it is then logged with that id in place of an object, so the
//! line shows `<rtspsrc2-0>` as it would for a message about the element itself.
//!
//! When the plugin is linked statically into an application that has installed a `log` logger of
//! its own, that logger stays and receives the cores' records instead.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gst::glib;
use gst::glib::translate::IntoGStr;
use gst::log::DebugLogger;

/// The debug category of each core, created on first use.
struct Categories {
    rtsp: gst::DebugCategory,
    rtp: gst::DebugCategory,
    rtmp: gst::DebugCategory,
    hls: gst::DebugCategory,
    other: gst::DebugCategory,
}

static CATEGORIES: LazyLock<Categories> = LazyLock::new(|| Categories {
    rtsp: gst::DebugCategory::new(
        "lsrtsp",
        gst::DebugColorFlags::empty(),
        Some("livestreaming RTSP core: requests, answers, sessions, transports"),
    ),
    rtp: gst::DebugCategory::new(
        "lsrtp",
        gst::DebugColorFlags::empty(),
        Some("livestreaming RTP core: jitter buffer, RTCP, lip-sync"),
    ),
    rtmp: gst::DebugCategory::new(
        "lsrtmp",
        gst::DebugColorFlags::empty(),
        Some("livestreaming RTMP core: handshake, commands, chunk streams"),
    ),
    hls: gst::DebugCategory::new(
        "lshls",
        gst::DebugColorFlags::empty(),
        Some("livestreaming HLS core: segments, playlists, uploads, HTTP"),
    ),
    other: gst::DebugCategory::new(
        "livestreaming",
        gst::DebugColorFlags::empty(),
        Some("livestreaming plugin: records of no core"),
    ),
});

/// Routes `log` records to the core's GStreamer debug category.
struct Bridge;

/// The bridge is the `log` logger (so the `log` filter is ours to set).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The threshold watcher runs ([`follow_thresholds`]).
static FOLLOWING: AtomicBool = AtomicBool::new(false);

/// How often [`follow_thresholds`] looks at the thresholds.
const FOLLOW_PERIOD: Duration = Duration::from_secs(1);

/// Records of this target that reached the bridge (unit tests only).
#[cfg(test)]
static TEST_TARGET_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[cfg(test)]
const TEST_TARGET: &str = "gstlivestreaming::rtmp::logging_test";

/// The `log` filter our categories' thresholds call for: `Trace` when any of them lets LOG
/// records through, else `Debug` (records at debug and above are not per packet: they always
/// reach the bridge, which checks their category).
fn wanted_filter() -> log::LevelFilter {
    let c = &*CATEGORIES;
    let trace = [c.rtsp, c.rtp, c.rtmp, c.hls, c.other]
        .iter()
        .any(|cat| cat.above_threshold(gst::DebugLevel::Log));
    if trace {
        log::LevelFilter::Trace
    } else {
        log::LevelFilter::Debug
    }
}

/// Makes the `log` filter follow our categories' current thresholds (when the bridge is the
/// logger): five loads, and a store when they changed.
pub fn refresh() {
    if !INSTALLED.load(Ordering::Relaxed) {
        return;
    }
    let want = wanted_filter();
    if log::max_level() != want {
        log::set_max_level(want);
    }
}

/// Watches the thresholds once a second on `runtime` (the shared runtime calls this when it
/// starts; once per process, and only when the bridge is the logger): a category raised to LOG
/// while no record reaches the bridge still gets its `trace!` records within a second.
pub fn follow_thresholds(runtime: &tokio::runtime::Handle) {
    if !INSTALLED.load(Ordering::Relaxed) || FOLLOWING.swap(true, Ordering::AcqRel) {
        return;
    }
    runtime.spawn(async {
        loop {
            tokio::time::sleep(FOLLOW_PERIOD).await;
            refresh();
        }
    });
}

static BRIDGE: Bridge = Bridge;

/// The crate's name as `module_path!()` spells it: the prefix of every core's log target.
const CRATE_PREFIX: &str = concat!(env!("CARGO_CRATE_NAME"), "::");

/// The category a record's target belongs to. Targets are module paths unless a record names
/// another; a core may also name its category directly (`target: "lsrtsp"`).
fn category_of(target: &str) -> gst::DebugCategory {
    let cats = &*CATEGORIES;
    let path = target.strip_prefix(CRATE_PREFIX).unwrap_or(target);
    let head = path.split("::").next().unwrap_or("");
    match head {
        "rtsp" | "lsrtsp" => cats.rtsp,
        "rtp" | "lsrtp" => cats.rtp,
        "rtmp" | "lsrtmp" => cats.rtmp,
        "hls" | "lshls" => cats.hls,
        _ => cats.other,
    }
}

/// `log`'s level as GStreamer's: `trace!` is GStreamer's LOG (6), the level stock elements use
/// for per-packet and header detail.
fn gst_level(level: log::Level) -> gst::DebugLevel {
    match level {
        log::Level::Error => gst::DebugLevel::Error,
        log::Level::Warn => gst::DebugLevel::Warning,
        log::Level::Info => gst::DebugLevel::Info,
        log::Level::Debug => gst::DebugLevel::Debug,
        log::Level::Trace => gst::DebugLevel::Log,
    }
}

/// Collects the `id` key-value of a record, if it has one.
struct IdVisitor(Option<String>);

impl<'kvs> log::kv::VisitSource<'kvs> for IdVisitor {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        if key.as_str() == "id" {
            // An empty id (a core used without a name, as in unit tests) is no id.
            self.0 = Some(value.to_string()).filter(|id| !id.is_empty());
        }
        Ok(())
    }
}

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        category_of(metadata.target()).above_threshold(gst_level(metadata.level()))
    }

    fn log(&self, record: &log::Record) {
        // Whatever reaches the bridge is rare enough to re-read the thresholds.
        refresh();
        #[cfg(test)]
        if record.target() == TEST_TARGET {
            TEST_TARGET_SEEN.fetch_add(1, Ordering::SeqCst);
        }
        let cat = category_of(record.target());
        let level = gst_level(record.level());
        // The only cost when the level is off: no formatting, no allocation.
        if !cat.above_threshold(level) {
            return;
        }
        let function = record.module_path().unwrap_or("");
        let line = record.line().unwrap_or(0);
        let mut id = IdVisitor(None);
        let _ = record.key_values().visit(&mut id);
        record
            .file()
            .unwrap_or("")
            .run_with_gstr(|file| match id.0 {
                Some(id) => cat.log_id(
                    glib::GString::from(id),
                    level,
                    file,
                    function,
                    line,
                    *record.args(),
                ),
                None => cat.log(
                    None::<&glib::Object>,
                    level,
                    file,
                    function,
                    line,
                    *record.args(),
                ),
            });
    }

    fn flush(&self) {}
}

/// Installs the bridge as the `log` logger (once per process; called from plugin registration).
/// Returns false when another logger was installed first, which then keeps receiving the records.
pub fn install() -> bool {
    // Create the categories now, so that `gst-inspect-1.0 --gst-debug-help` lists them.
    LazyLock::force(&CATEGORIES);
    match log::set_logger(&BRIDGE) {
        Ok(()) => {
            // GStreamer's thresholds can change at run time: the bridge checks them per record,
            // and the `log` filter follows them (see the module's documentation).
            INSTALLED.store(true, Ordering::Relaxed);
            refresh();
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that change thresholds run one at a time.
    static THRESHOLDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn all_quiet() {
        let c = &*CATEGORIES;
        for cat in [c.rtsp, c.rtp, c.rtmp, c.hls, c.other] {
            cat.set_threshold(gst::DebugLevel::None);
        }
    }

    #[test]
    fn trace_below_the_threshold_never_reaches_the_bridge_and_follows_a_raise() {
        let _serial = THRESHOLDS.lock().unwrap_or_else(|e| e.into_inner());
        gst::init().unwrap();
        install();
        all_quiet();
        refresh();
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        let before = TEST_TARGET_SEEN.load(Ordering::SeqCst);
        for _ in 0..100 {
            log::trace!(target: TEST_TARGET, "per packet {}", 1);
        }
        assert_eq!(
            TEST_TARGET_SEEN.load(Ordering::SeqCst),
            before,
            "a trace record with every category below LOG was not stopped by the log filter"
        );
        // Debug records still reach the bridge (which drops them: lsrtmp is at NONE).
        log::debug!(target: TEST_TARGET, "a decision");
        assert_eq!(TEST_TARGET_SEEN.load(Ordering::SeqCst), before + 1);

        // Raised at run time, by name, as an application does: the watcher on the shared
        // runtime notices it without any record reaching the bridge.
        follow_thresholds(&crate::runtime::handle());
        gst::log::set_threshold_for_name("lsrtmp", gst::DebugLevel::Log);
        let deadline = std::time::Instant::now() + 10 * FOLLOW_PERIOD;
        while log::max_level() != log::LevelFilter::Trace {
            assert!(
                std::time::Instant::now() < deadline,
                "the log filter did not follow lsrtmp raised to LOG"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let seen = TEST_TARGET_SEEN.load(Ordering::SeqCst);
        log::trace!(target: TEST_TARGET, "per packet {}", 2);
        assert_eq!(TEST_TARGET_SEEN.load(Ordering::SeqCst), seen + 1);

        // Lowered again: the next record that reaches the bridge closes the filter.
        gst::log::set_threshold_for_name("lsrtmp", gst::DebugLevel::None);
        all_quiet();
        log::debug!(target: TEST_TARGET, "a decision");
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
    }

    #[test]
    fn targets_map_to_their_core_category() {
        gst::init().unwrap();
        install();
        let name = |t: &str| category_of(t).name().to_string();
        assert_eq!(name("gstlivestreaming::rtsp::server::session"), "lsrtsp");
        assert_eq!(name("gstlivestreaming::rtsp"), "lsrtsp");
        assert_eq!(name("gstlivestreaming::rtp::jitterbuffer"), "lsrtp");
        assert_eq!(name("gstlivestreaming::rtmp::client"), "lsrtmp");
        assert_eq!(name("gstlivestreaming::hls::store"), "lshls");
        assert_eq!(name("lsrtsp"), "lsrtsp");
        // A core whose name only starts like another's is not mistaken for it.
        assert_eq!(name("gstlivestreaming::rtspsrc2::imp"), "livestreaming");
        assert_eq!(name("rustls::client"), "livestreaming");
    }

    #[test]
    fn records_reach_gstreamer_with_level_and_id() {
        use std::sync::{Arc, Mutex};
        let _serial = THRESHOLDS.lock().unwrap_or_else(|e| e.into_inner());
        gst::init().unwrap();
        install();
        /// Category, level, message and id of each record seen.
        type Seen = Vec<(String, gst::DebugLevel, String, Option<String>)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let sink = seen.clone();
        let handler =
            gst::log::add_log_function(move |cat, level, _file, _func, _line, _obj, msg| {
                if cat.name().starts_with("ls") {
                    let id = msg.id().map(|id| id.to_string());
                    sink.lock().unwrap().push((
                        cat.name().to_string(),
                        level,
                        msg.get().map(|m| m.to_string()).unwrap_or_default(),
                        id,
                    ));
                }
            });
        CATEGORIES.rtmp.set_threshold(gst::DebugLevel::Log);
        CATEGORIES.hls.set_threshold(gst::DebugLevel::Warning);
        // Not waiting for the watcher.
        refresh();
        log::trace!(target: "gstlivestreaming::rtmp::chunk", "chunk size now {}", 4096);
        log::debug!(target: "gstlivestreaming::rtmp::client", id = "rsrtmpsink0"; "connect answered");
        // Below the threshold: dropped before formatting.
        log::debug!(target: "gstlivestreaming::hls::store", "segment cut");
        gst::log::remove_log_function(handler);
        // Other tests of this binary log too: quiet again.
        CATEGORIES.rtmp.set_threshold(gst::DebugLevel::None);
        CATEGORIES.hls.set_threshold(gst::DebugLevel::None);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, "lsrtmp");
        assert_eq!(seen[0].1, gst::DebugLevel::Log);
        assert_eq!(seen[0].2, "chunk size now 4096");
        assert_eq!(seen[1].2, "connect answered");
        assert!(seen[1].3.as_deref() == Some("rsrtmpsink0"), "{seen:?}");
    }
}
