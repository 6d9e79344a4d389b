//! Where segments start, decided from the input before the muxer (RFC 8216 §3 and §6.2.1: each
//! segment should start with a keyframe, and no segment may run longer than
//! EXT-X-TARGETDURATION).
//!
//! Specifications: RFC 8216 §3 (media segments), §4.3.3.1 (EXT-X-TARGETDURATION), §6.2.1.
//!
//! Boundaries are the multiples of the target duration in running time. The planner asks
//! upstream for a keyframe at each boundary well ahead of time (encoders with lookahead must get
//! the request before they encode that frame), and says which video keyframe starts the next
//! segment: the first one at or after a boundary, half a frame of tolerance included. The element
//! turns the requests into force-key-unit events and announces each cut to the
//! [`Writer`](super::writer::Writer); nothing here knows GStreamer.

/// Requests stay at least this far (ns) ahead of the input, and three segments at least.
const MIN_HORIZON_NS: u64 = 5_000_000_000;

/// A keyframe to ask upstream for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyframeRequest {
    /// The segment boundary (running time, ns).
    pub boundary_ns: u64,
    /// The running time to put in the request: the boundary less the tolerance, so that a frame
    /// starting just before the boundary is the keyframe.
    pub at_ns: u64,
}

/// What to do for one video frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Keyframes to ask for now (in increasing order).
    pub requests: Vec<KeyframeRequest>,
    /// This keyframe starts a new segment.
    pub split: bool,
}

/// The segment planner of one stream (the video input; audio-only streams are cut by the
/// segmenter's own rule).
#[derive(Debug, Default, Clone)]
pub struct Planner {
    /// The last boundary a keyframe was asked for.
    requested_until: Option<u64>,
    /// Running time (presentation) of the keyframe that started the current segment.
    last_split: Option<u64>,
    /// Half a video frame (ns).
    tolerance_ns: u64,
}

impl Planner {
    pub fn new() -> Planner {
        Planner::default()
    }

    /// Half a frame of the video's frame rate (`numer/denom` frames per second) is the tolerance;
    /// returns it, or None (unchanged) for a rate that is no rate (0, negative, variable).
    pub fn set_framerate(&mut self, numer: i32, denom: i32) -> Option<u64> {
        let numer = u64::try_from(numer).ok().filter(|n| *n > 0)?;
        let denom = u64::try_from(denom).ok().filter(|d| *d > 0)?;
        // denom < 2^31: no overflow.
        self.tolerance_ns = 1_000_000_000 * denom / numer / 2;
        log::debug!(
            "frame rate {numer}/{denom}: a keyframe up to {} ns before a boundary starts the \
             segment",
            self.tolerance_ns
        );
        Some(self.tolerance_ns)
    }

    pub fn tolerance_ns(&self) -> u64 {
        self.tolerance_ns
    }

    /// The stream starts (before any frame is encoded): the first boundaries are asked for now,
    /// so that an encoder's lookahead cannot make the first segments run long. Nothing when
    /// requests were made already or `target_ns` is 0.
    pub fn start(&mut self, target_ns: u64) -> Vec<KeyframeRequest> {
        if target_ns == 0 || self.requested_until.is_some() {
            return Vec::new();
        }
        self.plan_requests(0, target_ns)
    }

    /// A video frame at running time `rt_ns` (presentation). `target_ns` 0 leaves every decision
    /// to the segmenter (every keyframe starts a segment).
    pub fn video_frame(&mut self, rt_ns: u64, keyframe: bool, target_ns: u64) -> Decision {
        if target_ns == 0 {
            return Decision::default();
        }
        let requests = self.plan_requests(rt_ns, target_ns);
        let mut split = false;
        if keyframe {
            let tol = self.tolerance_ns;
            let slot = |t: u64| t.saturating_add(tol) / target_ns;
            match self.last_split {
                None => {
                    log::debug!("first keyframe at {rt_ns} ns: the first segment starts here");
                    self.last_split = Some(rt_ns);
                }
                Some(last) if rt_ns < last => {
                    // Time went backwards without a discontinuity: start counting again.
                    log::debug!(
                        "keyframe at {rt_ns} ns is before the segment start {last} ns: \
                         boundaries count from here"
                    );
                    self.last_split = Some(rt_ns);
                }
                Some(last) if slot(rt_ns) > slot(last) => {
                    log::debug!(
                        "segment boundary: keyframe at {rt_ns} ns reaches boundary {} ns \
                         (target {target_ns} ns, previous segment started at {last} ns)",
                        slot(rt_ns).saturating_mul(target_ns)
                    );
                    self.last_split = Some(rt_ns);
                    split = true;
                }
                Some(last) => log::trace!(
                    "keyframe at {rt_ns} ns inside the segment that started at {last} ns: no cut"
                ),
            }
        }
        Decision { requests, split }
    }

    /// A discontinuity (format change, new stream, flush): planning starts over.
    pub fn discontinuity(&mut self) {
        log::debug!("discontinuity: keyframe requests and boundaries start over");
        self.reset();
    }

    /// A new output (the element starts again): no request made, no segment started; the
    /// tolerance stays.
    pub fn reset(&mut self) {
        self.requested_until = None;
        self.last_split = None;
    }

    /// Boundaries to ask keyframes for so that requests stay a few segments ahead of `rt`.
    fn plan_requests(&mut self, rt: u64, target: u64) -> Vec<KeyframeRequest> {
        let horizon = target.saturating_mul(3).max(MIN_HORIZON_NS);
        let limit = rt.saturating_add(horizon);
        let mut next = match self.requested_until {
            // Beyond the horizon only when time went backwards: planned again from here.
            Some(r) if r.saturating_add(target) > rt && r <= limit => r,
            _ => rt - rt % target,
        };
        let mut out = Vec::new();
        while let Some(b) = next.checked_add(target)
            && b <= limit
        {
            next = b;
            out.push(KeyframeRequest {
                boundary_ns: b,
                at_ns: b.saturating_sub(self.tolerance_ns),
            });
        }
        if !out.is_empty() {
            log::debug!(
                "asking for keyframes at {} boundaries up to {next} ns (input at {rt} ns)",
                out.len()
            );
        }
        self.requested_until = Some(next);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn boundaries(r: &[KeyframeRequest]) -> Vec<u64> {
        r.iter().map(|r| r.boundary_ns / (SEC / 10)).collect()
    }

    #[test]
    fn requests_stay_a_horizon_ahead_without_repeats() {
        let mut p = Planner::new();
        p.set_framerate(30, 1);
        // 2 s segments: 6 s ahead at the start.
        let first = p.start(2 * SEC);
        assert_eq!(boundaries(&first), [20, 40, 60]);
        assert_eq!(first[0].at_ns, 2 * SEC - SEC / 60);
        assert!(p.start(2 * SEC).is_empty(), "only once");
        // Frames up to 2 s ask for nothing new, the frame at 2 s for the boundary at 8 s.
        let mut asked = Vec::new();
        for i in 0..=60 {
            asked.extend(p.video_frame(i * SEC / 30, i % 60 == 0, 2 * SEC).requests);
        }
        assert_eq!(boundaries(&asked), [80]);
        // 1 s segments keep at least 5 s ahead.
        let mut p = Planner::new();
        assert_eq!(boundaries(&p.start(SEC)), [10, 20, 30, 40, 50]);
    }

    #[test]
    fn the_first_keyframe_at_or_after_each_boundary_splits() {
        let mut p = Planner::new();
        p.set_framerate(30, 1);
        // Keyframes every 0.5 s, 1 s segments: every other keyframe splits; one 10 ms early
        // (within half a frame) counts as on the boundary.
        let keys = [0, 500, 990, 1500, 2000, 2500, 3100];
        let splits: Vec<bool> = keys
            .iter()
            .map(|ms| p.video_frame(ms * SEC / 1000, true, SEC).split)
            .collect();
        assert_eq!(splits, [false, false, true, false, true, false, true]);
        // Delta frames never split.
        assert!(!p.video_frame(5 * SEC, false, SEC).split);
        assert!(p.video_frame(5 * SEC + 1, true, SEC).split);
    }

    #[test]
    fn a_discontinuity_starts_over() {
        let mut p = Planner::new();
        p.video_frame(0, true, SEC);
        assert!(p.video_frame(SEC, true, SEC).split);
        p.discontinuity();
        // The first keyframe after it starts the segment (the segmenter cuts for the
        // discontinuity), and requests are planned again from there.
        let d = p.video_frame(10 * SEC, true, SEC);
        assert!(!d.split);
        assert_eq!(boundaries(&d.requests), [110, 120, 130, 140, 150]);
    }

    #[test]
    fn target_zero_leaves_cuts_to_the_segmenter() {
        let mut p = Planner::new();
        assert!(p.start(0).is_empty());
        assert_eq!(p.video_frame(SEC, true, 0), Decision::default());
    }

    #[test]
    fn hostile_times_and_rates_do_not_panic() {
        let mut p = Planner::new();
        assert_eq!(p.set_framerate(0, 1), None);
        assert_eq!(p.set_framerate(30, -1), None);
        assert_eq!(p.set_framerate(-30, 1), None);
        assert_eq!(
            p.set_framerate(1, i32::MAX),
            Some(1_000_000_000 * (i32::MAX as u64) / 2)
        );
        for rt in [u64::MAX, u64::MAX - 1, u64::MAX / 2, 0] {
            let d = p.video_frame(rt, true, SEC);
            assert!(d.requests.iter().all(|r| r.boundary_ns >= r.at_ns));
        }
        // A jump back to 0 after a huge time plans and splits from 0 again.
        let mut p = Planner::new();
        p.video_frame(u64::MAX - 5, true, 2 * SEC);
        let d = p.video_frame(0, true, 2 * SEC);
        assert_eq!(boundaries(&d.requests), [20, 40, 60]);
        assert!(!d.split);
        assert!(p.video_frame(2 * SEC, true, 2 * SEC).split);
    }
}
