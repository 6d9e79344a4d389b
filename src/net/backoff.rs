//! Bounded exponential backoff: the first delay, doubled per attempt, capped at a maximum.
//!
//! Specifications: none of its own (the delays between reconnects and upload retries).

use std::time::Duration;

/// Delays between attempts: `initial`, `2 * initial`, `4 * initial`, ... at most `max`. The
/// arithmetic saturates: no attempt number or delay overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first attempt.
    pub initial: Duration,
    /// The longest delay. A maximum below `initial` caps every delay, `initial`'s too.
    pub max: Duration,
}

impl Backoff {
    /// Doubles from `initial` up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The delay before attempt `attempt`, counted from 1 (0 is taken as 1):
    /// `min(initial * 2^(attempt - 1), max)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delays of attempts 1, 2, 3, ... (endless: take as many as attempts are allowed).
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        (1..=u32::MAX).map(move |attempt| self.delay(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn doubles_up_to_the_maximum() {
        let b = Backoff::new(ms(500), ms(10_000));
        let delays: Vec<_> = b.delays().take(8).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000].map(ms)
        );
        assert_eq!(b.delay(0), ms(500));
        assert_eq!(b.delay(1), ms(500));
    }

    #[test]
    fn huge_attempts_and_delays_saturate() {
        let b = Backoff::new(ms(500), ms(10_000));
        for attempt in [31, 32, 33, 64, 1000, u32::MAX] {
            assert_eq!(b.delay(attempt), ms(10_000), "attempt {attempt}");
        }
        let b = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(b.delay(u32::MAX), Duration::MAX);
        let b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(b.delay(3), Duration::MAX);
    }

    #[test]
    fn a_maximum_below_the_first_delay_caps_it() {
        let b = Backoff::new(ms(500), ms(100));
        assert_eq!(b.delay(1), ms(100));
        let b = Backoff::new(Duration::ZERO, ms(100));
        assert!(b.delays().take(40).all(|d| d == Duration::ZERO));
    }
}
