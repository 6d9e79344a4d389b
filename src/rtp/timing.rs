//! Receive-side RTP timelines: from 32-bit RTP timestamps to presentation times in nanoseconds,
//! and lip-sync of the streams of one sender.
//!
//! Specifications: RFC 3550 §5.1 (RTP timestamp), §6.4.1 (Sender Report NTP/RTP mapping);
//! RFC 1982 §3 (serial number arithmetic); RFC 6051 §2 (synchronisation of streams).
//!
//! * RFC 3550 §5.1: the RTP timestamp is 32 bits wide, starts at a random value, wraps, and
//!   counts in the payload format's clock rate. [`TimestampExtender`] unwraps it into a 64-bit
//!   count by serial-number arithmetic (RFC 1982 §3: the step to the previous timestamp is taken
//!   as the one of the two directions that is shorter than 2^31).
//! * [`Timeline`]: the presentation time of a packet is the receiver's running time at the
//!   stream's first packet plus the RTP time elapsed since, converted in 128-bit arithmetic (no
//!   overflow at any clock rate, jump or duration; exact to the nanosecond, rounded down). A jump
//!   of the RTP clock by more than [`RESYNC_STEP_NS`] between two packets (a sender restarting
//!   its clock, a hostile timestamp) starts the timeline anew at the current running time and is
//!   reported as a discontinuity, as rtpjitterbuffer resynchronizes on timestamps it cannot
//!   explain.
//! * RFC 3550 §6.4.1 (Sender Report NTP and RTP timestamps) and RFC 6051 §2 (synchronisation of
//!   RTP flows), the lip-sync RTSP (RFC 7826) receivers rely on: a Sender Report pairs the
//!   sender's NTP wallclock with an RTP time of the stream. [`SenderClock`] moves each stream's
//!   [`Timeline`] so that media the sender's wallclock says were captured at the same instant
//!   get the same presentation time, whatever the streams' clock rates, random RTP offsets and
//!   arrival times.
//!
//! Times are plain `u64`/`i128` nanoseconds; the element converts them to its clock types.

use std::num::NonZeroU32;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// The largest presentation time a [`Timeline`] hands out: `i64::MAX` ns (292 years), so that
/// every result is also a valid signed running time.
pub const MAX_PTS_NS: u64 = i64::MAX as u64;

/// A step of the RTP clock between two consecutive packets (either direction) beyond which the
/// timeline starts anew instead of following it: 60 s. B-frame reordering, packet loss and
/// silence suppression stay far below; a sender that restarted its clock or a hostile jump does
/// not. A stream whose packets are really minutes apart (sparse metadata) resyncs at each one,
/// which puts it where its arrival says.
pub const RESYNC_STEP_NS: i128 = 60 * NANOS_PER_SEC;

/// Sender Report corrections smaller than this are left alone: they are rounding, not skew.
pub const SYNC_TOLERANCE_NS: i128 = 1_000_000;

/// Why a [`Timeline`] cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// A clock rate of 0 Hz: no RTP time could be converted (division by zero).
    #[error("RTP clock rate 0 Hz")]
    ZeroClockRate,
}

/// Unwraps 32-bit RTP timestamps into a 64-bit count (RFC 3550 §5.1, RFC 1982 §3).
///
/// The first timestamp is placed in the second 2^32 cycle, so that a packet reordered before it
/// across a wrap still has a non-negative extended value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimestampExtender {
    last: Option<u64>,
}

impl TimestampExtender {
    /// Where the first timestamp is placed: `ts + FIRST_CYCLE`.
    pub const FIRST_CYCLE: u64 = 1 << 32;

    /// An extender that has seen no timestamp.
    pub const fn new() -> Self {
        Self { last: None }
    }

    /// The extended value of `ts` relative to the previous timestamp, without taking it: `ts`
    /// is placed within 2^31 of the previous one, forwards or backwards (a step of exactly 2^31
    /// counts as backwards). None before the first timestamp.
    pub fn peek(&self, ts: u32) -> Option<i128> {
        let last = self.last?;
        // Truncation to the low 32 bits is the point: the step modulo 2^32.
        let step = ts.wrapping_sub(last as u32) as i32;
        Some(i128::from(last) + i128::from(step))
    }

    /// Takes `ts` and returns its extended value. None when the value would leave the 64-bit
    /// range (only after billions of hostile backward or forward steps): the extender is then
    /// left as it was, and the caller starts anew (see [`Self::restart`]).
    pub fn extend(&mut self, ts: u32) -> Option<u64> {
        let ext = match self.peek(ts) {
            None => u64::from(ts) + Self::FIRST_CYCLE,
            Some(ext) => u64::try_from(ext).ok()?,
        };
        self.last = Some(ext);
        Some(ext)
    }

    /// Forgets the previous timestamp: the next one starts a new count.
    pub fn restart(&mut self) {
        self.last = None;
    }

    /// The last extended value taken.
    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

/// A presentation time from [`Timeline::pts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pts {
    /// Nanoseconds of the receiver's running time, at most [`MAX_PTS_NS`].
    pub ns: u64,
    /// The timeline started anew at this packet after a jump of the RTP clock (see
    /// [`RESYNC_STEP_NS`]): the packet does not follow on from the previous one.
    pub resync: bool,
}

/// One stream's timeline: the running time of its first packet plus the RTP time elapsed since
/// (RFC 3550 §5.1), movable by lip-sync ([`SenderClock`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    clock_rate: NonZeroU32,
    extender: TimestampExtender,
    /// (running time in ns, extended RTP time) where the timeline starts.
    base: Option<(u64, u64)>,
    /// A resync happened and no packet has carried the news yet (the running time was
    /// unknown at the jump).
    resync_pending: bool,
}

impl Timeline {
    /// A timeline for a stream of `clock_rate` Hz (the SDP's rtpmap). 0 Hz is refused.
    pub fn new(clock_rate: u32) -> Result<Self, TimingError> {
        let clock_rate = NonZeroU32::new(clock_rate).ok_or(TimingError::ZeroClockRate)?;
        Ok(Self {
            clock_rate,
            extender: TimestampExtender::new(),
            base: None,
            resync_pending: false,
        })
    }

    /// The stream's clock rate in Hz.
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate.get()
    }

    /// Whether a packet has started the timeline (its running time was known).
    pub fn is_started(&self) -> bool {
        self.base.is_some()
    }

    /// Forgets everything: the next packet starts the timeline anew (a new session or segment,
    /// whose RTP clock has nothing to do with the old one).
    pub fn restart(&mut self) {
        self.extender.restart();
        self.base = None;
        self.resync_pending = false;
    }

    /// `ticks` of this stream's clock in nanoseconds, rounded towards zero. Never overflows:
    /// |ticks| < 2^65, so |ticks * 10^9| < 2^95.
    fn ticks_to_ns(&self, ticks: i128) -> i128 {
        ticks * NANOS_PER_SEC / i128::from(self.clock_rate.get())
    }

    /// The presentation time of a packet with RTP timestamp `ts`, in the order the packets are
    /// output. `now` gives the current running time in ns; it is called only where the timeline
    /// starts (the first packet, or a resync after a jump), and while it has no answer the
    /// packet gets no time (None). Packets before the start of the timeline (reordered before
    /// the first one) get its start time.
    pub fn pts(&mut self, ts: u32, now: impl FnOnce() -> Option<u64>) -> Option<Pts> {
        let mut resync = std::mem::take(&mut self.resync_pending);
        if let (Some(_), Some(ext), Some(last)) =
            (self.base, self.extender.peek(ts), self.extender.last())
        {
            let step = ext - i128::from(last);
            let step_ns = self.ticks_to_ns(step);
            if step_ns.abs() > RESYNC_STEP_NS || u64::try_from(ext).is_err() {
                log::debug!(
                    "RTP clock jumped by {step} ticks ({} ms at {} Hz): the timeline starts anew",
                    step_ns / 1_000_000,
                    self.clock_rate
                );
                self.restart();
                resync = true;
            }
        }
        let ext = match self.extender.extend(ts) {
            Some(ext) => ext,
            // Out of the 64-bit range before the timeline started: count anew.
            None => {
                self.extender.restart();
                self.extender.extend(ts)?
            }
        };
        if self.base.is_none() {
            let Some(start) = now() else {
                self.resync_pending = resync;
                return None;
            };
            self.base = Some((start.min(MAX_PTS_NS), ext));
        }
        let (base_ns, base_rtp) = self.base?;
        let ticks = ext.saturating_sub(base_rtp);
        let ns = i128::from(base_ns) + self.ticks_to_ns(i128::from(ticks));
        let ns = u64::try_from(ns.clamp(0, i128::from(MAX_PTS_NS))).unwrap_or(MAX_PTS_NS);
        Some(Pts { ns, resync })
    }

    /// The running time in ns at which RTP time `ts` falls on this timeline, without taking it
    /// (`ts` is placed within 2^31 of the last packet). None before the timeline has started;
    /// negative when before running time zero.
    pub fn time_of(&self, ts: u32) -> Option<i128> {
        let (base_ns, base_rtp) = self.base?;
        let ext = self.extender.peek(ts)?;
        Some(i128::from(base_ns) + self.ticks_to_ns(ext - i128::from(base_rtp)))
    }

    /// Moves the timeline by `ns` (kept within running time 0 ..= [`MAX_PTS_NS`]).
    pub fn shift(&mut self, ns: i128) {
        if let Some((base_ns, base_rtp)) = self.base {
            let moved = (i128::from(base_ns) + ns).clamp(0, i128::from(MAX_PTS_NS));
            let moved = u64::try_from(moved).unwrap_or(MAX_PTS_NS);
            self.base = Some((moved, base_rtp));
        }
    }
}

/// What [`SenderClock::apply`] did with a Sender Report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The first report: it anchors the shared wallclock where this stream's timeline puts it.
    Anchored,
    /// The stream already lines up (within [`SYNC_TOLERANCE_NS`]).
    InSync,
    /// The stream's timeline was moved by this many ns to line up.
    Moved(i128),
}

/// The sender's wallclock shared by the streams of one session (RFC 3550 §6.4.1): the NTP time of
/// the first Sender Report applied and the running time (ns) it fell at. Start it anew with a new
/// session or segment ([`Self::reset`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderClock {
    anchor: Option<(u64, i128)>,
}

impl SenderClock {
    /// A clock without a reference yet.
    pub const fn new() -> Self {
        Self { anchor: None }
    }

    /// Forgets the reference: the next report anchors it again.
    pub fn reset(&mut self) {
        self.anchor = None;
    }

    /// Whether a report has anchored the wallclock.
    pub fn is_anchored(&self) -> bool {
        self.anchor.is_some()
    }

    /// Lines `timeline` up with the other streams from a Sender Report of its stream (`ntp`: the
    /// report's 64-bit NTP timestamp, `rtptime`: the RTP time of the same instant): the first
    /// report of the session anchors the wallclock, later ones move their stream so that its
    /// RTP time `rtptime` falls at the anchor's running time plus the NTP time elapsed since.
    /// None when the timeline has no packet yet (keep the report for later).
    pub fn apply(
        &mut self,
        timeline: &mut Timeline,
        ntp: u64,
        rtptime: u32,
    ) -> Option<SyncOutcome> {
        let at = timeline.time_of(rtptime)?;
        log::trace!(
            "sender report ntp {ntp:#018x} rtptime {rtptime} at {at} ns ({} Hz)",
            timeline.clock_rate()
        );
        let Some((ref_ntp, ref_ns)) = self.anchor else {
            self.anchor = Some((ntp, at));
            log::debug!("sender report anchors the wallclock at running time {at} ns");
            return Some(SyncOutcome::Anchored);
        };
        let want = ref_ns + i128::from(super::ntp::ntp_diff_ns(ntp, ref_ntp));
        let correction = want - at;
        if correction.abs() < SYNC_TOLERANCE_NS {
            return Some(SyncOutcome::InSync);
        }
        log::debug!(
            "sender report: moving the {} Hz stream by {} ms",
            timeline.clock_rate(),
            correction / 1_000_000
        );
        timeline.shift(correction);
        Some(SyncOutcome::Moved(correction))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// The presentation time of `ts`, starting the timeline at `start` ns if it starts here.
    fn pts(t: &mut Timeline, ts: u32, start: u64) -> Pts {
        t.pts(ts, || Some(start)).expect("a time")
    }

    /// A 64-bit NTP timestamp `secs` + `ms` after an arbitrary instant of 2026.
    fn ntp(secs: u64, ms: u64) -> u64 {
        let base = 3_975_000_000u64;
        ((base + secs) << 32) + ((ms << 32) / 1000)
    }

    #[test]
    fn extension_wraps_forwards_and_takes_a_reorder_back_across_the_wrap() {
        let mut e = TimestampExtender::new();
        let first = e.extend(0xffff_fff0).unwrap();
        assert_eq!(first, 0xffff_fff0 + (1 << 32));
        // Forwards across the wrap.
        assert_eq!(e.extend(0x10).unwrap(), first + 0x20);
        // A late packet from before the wrap.
        assert_eq!(e.extend(0xffff_fff8).unwrap(), first + 8);
        assert_eq!(e.extend(0x20).unwrap(), first + 0x30);
        // A packet reordered before the first one, across the wrap the other way.
        let mut e = TimestampExtender::new();
        let first = e.extend(0x5).unwrap();
        assert_eq!(e.extend(0xffff_fffb).unwrap(), first - 10);
    }

    #[test]
    fn pts_follow_the_wrap_and_a_reorder_across_it() {
        let mut t = Timeline::new(90_000).unwrap();
        let start = 7 * S;
        assert_eq!(pts(&mut t, 0xffff_fc18, start).ns, start); // 1000 ticks before the wrap
        // 2000 ticks later, across the wrap: 22.2 ms.
        let after = pts(&mut t, 0x3e8, 0);
        assert_eq!(
            after,
            Pts {
                ns: start + 22_222_222,
                resync: false
            }
        );
        // A late packet from before the wrap: 500 ticks after the first one.
        assert_eq!(pts(&mut t, 0xffff_fe0c, 0).ns, start + 5_555_555);
        // Reordered before the first packet: the start of the timeline.
        assert_eq!(pts(&mut t, 0xffff_fa00, 0).ns, start);
    }

    #[test]
    fn four_days_of_rtp_time_at_90_khz_stay_exact() {
        // A packet every 30 s for four days: the RTP timestamp wraps every 13.25 h and
        // ticks * 10^9 passes u64::MAX after 2.37 days.
        let mut t = Timeline::new(90_000).unwrap();
        let first = 4_000_000_000u32;
        let base = 5 * S;
        assert_eq!(pts(&mut t, first, base).ns, base);
        for step in 1..=(4 * 24 * 120u64) {
            let ts = first.wrapping_add((step * 30 * 90_000) as u32);
            let p = t.pts(ts, || panic!("the timeline is started")).unwrap();
            assert_eq!(
                p,
                Pts {
                    ns: base + step * 30 * S,
                    resync: false
                },
                "after {step} steps"
            );
        }
        // A fraction of a second: 1/90000 s rounds down to whole nanoseconds.
        let ts = first.wrapping_add((4 * 24 * 3600 * 90_000u64 + 1) as u32);
        assert_eq!(pts(&mut t, ts, 0).ns, base + 4 * 24 * 3600 * S + 11_111);
    }

    #[test]
    fn clock_rate_1_is_exact_and_clock_rate_0_is_refused() {
        assert_eq!(Timeline::new(0), Err(TimingError::ZeroClockRate));
        let mut t = Timeline::new(1).unwrap();
        assert_eq!(pts(&mut t, u32::MAX, S).ns, S);
        // One tick is a second; across the wrap.
        assert_eq!(pts(&mut t, 0, 0).ns, 2 * S);
        assert_eq!(pts(&mut t, 59, 0).ns, 61 * S);
        assert_eq!(t.time_of(60), Some(i128::from(62 * S)));
        // The largest clock rate: a tick is a fraction of a nanosecond.
        let mut t = Timeline::new(u32::MAX).unwrap();
        assert_eq!(pts(&mut t, 0, 0).ns, 0);
        assert_eq!(pts(&mut t, u32::MAX / 2, 0).ns, 499_999_999);
    }

    #[test]
    fn a_hostile_2_pow_31_jump_starts_the_timeline_anew_without_a_panic() {
        for rate in [1, 8_000, 90_000, 1_000_000, u32::MAX] {
            let mut t = Timeline::new(rate).unwrap();
            assert_eq!(pts(&mut t, 1000, 10 * S).ns, 10 * S);
            let small = 100u32.min(rate / 10);
            assert!(!pts(&mut t, 1000 + small, 0).resync);
            let at_jump = pts(&mut t, 1000 + small + (1 << 31), 20 * S);
            let after = pts(&mut t, 1000 + small + (1 << 31) + small, 30 * S);
            if rate <= 35_000_000 {
                // 2^31 ticks are more than a minute: a new timeline from the running time.
                assert_eq!(
                    at_jump,
                    Pts {
                        ns: 20 * S,
                        resync: true
                    },
                    "{rate} Hz"
                );
            } else {
                // At more than 35.8 MHz 2^31 ticks are less than a minute: taken as it is
                // (backwards: before the start of the timeline).
                assert_eq!(
                    at_jump,
                    Pts {
                        ns: 10 * S,
                        resync: false
                    },
                    "{rate} Hz"
                );
            }
            assert!(!after.resync, "{rate} Hz");
            assert!(after.ns >= at_jump.ns, "{rate} Hz");
            // Jumps forward just short of 2^31, over and over: every result is in range.
            let mut ts = 0u32;
            for _ in 0..100 {
                ts = ts.wrapping_add((1 << 31) - 1);
                let p = pts(&mut t, ts, 40 * S);
                assert!(p.ns <= MAX_PTS_NS);
            }
        }
    }

    #[test]
    fn a_timeline_without_a_running_time_gives_no_pts_until_it_has_one() {
        let mut t = Timeline::new(90_000).unwrap();
        assert_eq!(t.pts(1000, || None), None);
        assert!(!t.is_started());
        assert_eq!(t.time_of(1000), None);
        assert_eq!(pts(&mut t, 1900, 3 * S).ns, 3 * S);
        assert_eq!(pts(&mut t, 2800, 0).ns, 3 * S + 10_000_000);
        t.restart();
        assert!(!t.is_started());
        assert_eq!(pts(&mut t, 7, 9 * S).ns, 9 * S);
        // A jump while the running time is unknown: the first packet with a time says so.
        assert_eq!(t.pts(7 + 90_000 * 3600, || None), None);
        assert_eq!(t.pts(8 + 90_000 * 3600, || None), None);
        let p = pts(&mut t, 9 + 90_000 * 3600, 11 * S);
        assert_eq!(
            p,
            Pts {
                ns: 11 * S,
                resync: true
            }
        );
        assert!(!pts(&mut t, 10 + 90_000 * 3600, 0).resync);
    }

    #[test]
    fn shifting_stays_within_running_time_zero_and_max() {
        let mut t = Timeline::new(90_000).unwrap();
        pts(&mut t, 0, S);
        t.shift(-10 * i128::from(S));
        assert_eq!(pts(&mut t, 0, 0).ns, 0);
        t.shift(i128::MAX / 2);
        assert_eq!(pts(&mut t, 90_000, 0).ns, MAX_PTS_NS);
    }

    #[test]
    fn a_sender_report_moves_the_timeline() {
        let mut clock = SenderClock::new();
        let mut video = Timeline::new(90_000).unwrap();
        let mut audio = Timeline::new(48_000).unwrap();
        // No packet yet: the report waits.
        assert_eq!(clock.apply(&mut video, ntp(0, 0), 0), None);
        assert!(!clock.is_anchored());
        pts(&mut video, 1_000, 2 * S);
        // Video's RTP time 1000 + 90000 is NTP second 100: anchored at running time 3 s.
        assert_eq!(
            clock.apply(&mut video, ntp(100, 0), 91_000),
            Some(SyncOutcome::Anchored)
        );
        pts(&mut audio, 5_000, 2 * S + 300_000_000);
        // Audio's RTP time 5000 + 24000 (0.5 s after its first packet, at running time 2.8 s)
        // is NTP 100.25 s: it belongs at 3.25 s, 450 ms later.
        assert_eq!(
            clock.apply(&mut audio, ntp(100, 250), 29_000),
            Some(SyncOutcome::Moved(450_000_000))
        );
        assert_eq!(pts(&mut audio, 5_000, 0).ns, 2 * S + 750_000_000);
        // The same report again changes nothing.
        assert_eq!(
            clock.apply(&mut audio, ntp(100, 250), 29_000),
            Some(SyncOutcome::InSync)
        );
        clock.reset();
        assert!(!clock.is_anchored());
    }

    #[test]
    fn video_and_audio_captured_together_get_the_same_pts() {
        let mut clock = SenderClock::new();
        let mut video = Timeline::new(90_000).unwrap();
        let mut audio = Timeline::new(48_000).unwrap();
        // Random RTP offsets, first packets output 137 ms apart, not from the same instant.
        let (v0, a0) = (3_123_456_789u32, 77_777u32);
        pts(&mut video, v0, S);
        pts(&mut audio, a0, S + 137_000_000);
        // Sender Reports of both streams: NTP second 500 is video RTP time v0 + 9000 (0.1 s after
        // its first packet) and audio RTP time a0 + 14400 (0.3 s after its first packet).
        let (v_sr, a_sr) = (v0.wrapping_add(9_000), a0 + 14_400);
        assert_eq!(
            clock.apply(&mut video, ntp(500, 0), v_sr),
            Some(SyncOutcome::Anchored)
        );
        assert!(matches!(
            clock.apply(&mut audio, ntp(500, 0), a_sr),
            Some(SyncOutcome::Moved(_))
        ));
        // Media of the same NTP instants, up to 20 s after the reports: the same PTS.
        for ms in [0u32, 40, 1_000, 20_000] {
            let v = pts(&mut video, v_sr.wrapping_add(ms * 90), 0);
            let a = pts(&mut audio, a_sr + ms * 48, 0);
            assert_eq!(v.ns, a.ns, "{ms} ms after the report");
        }
        // The audio's report 21 s after the first, its RTP clock 2 ms behind the sender's
        // wallclock: the audio moves 2 ms later.
        let a_later = a_sr + 20_000 * 48 + 48_000;
        let moved = clock.apply(&mut audio, ntp(521, 0), a_later.wrapping_sub(96));
        assert_eq!(moved, Some(SyncOutcome::Moved(2_000_000)));
    }
}
