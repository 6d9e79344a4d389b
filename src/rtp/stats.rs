//! Receiver-side statistics for one RTP source, following RFC 3550:
//!
//! Specifications: RFC 3550 appendix A.1 (sequence validation), A.3 (lost packets), A.8 (jitter),
//! §6.4.1 (report block fields: fraction lost, cumulative lost, jitter, LSR, DLSR).
//!
//! * Appendix A.1: sequence number validation. A new source is on probation until
//!   `MIN_SEQUENTIAL` packets arrive in sequence; afterwards gaps up to `MAX_DROPOUT` are accepted,
//!   packets up to `MAX_MISORDER` behind are counted as reordered or duplicated, and anything else
//!   is rejected unless the next packet continues it (the sender restarted: resynchronize).
//!   The extended sequence number counts 16-bit wrap cycles.
//! * Appendix A.3: expected and lost packet counts, and the fraction lost since the previous
//!   report, using interval snapshots taken by [`ReceiverStats::report_block`].
//! * Appendix A.8: interarrival jitter in RTP timestamp units, from arrival times converted to
//!   the RTP clock, in the integer form that keeps the estimate scaled by 16.

use std::time::{Duration, Instant};

use super::ntp::{duration_to_ntp_short, ntp_middle32};
use super::rtcp::ReportBlock;

/// Largest forward sequence jump accepted as a loss rather than a discontinuity.
pub const MAX_DROPOUT: u16 = 3000;
/// Largest backward sequence distance accepted as reordering or duplication.
pub const MAX_MISORDER: u16 = 100;
/// Sequential packets required before a new source is considered valid.
pub const MIN_SEQUENTIAL: u32 = 2;

const RTP_SEQ_MOD: u64 = 1 << 16;

/// Reception statistics of one RTP source, as needed for RTCP reception report blocks.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    clock_rate: u32,
    /// Whether any packet was seen yet.
    started: bool,
    /// Sequential packets still needed before the source is valid.
    probation: u32,
    max_seq: u16,
    base_seq: u16,
    /// After a large jump: the sequence number that would confirm a sender restart.
    bad_seq: Option<u16>,
    /// Sequence number wraps, shifted (a multiple of 2^16).
    cycles: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    rejected: u64,
    bytes: u64,
    /// Arrival time that maps to RTP clock 0 for jitter computation.
    epoch: Option<Instant>,
    /// Previous relative transit time (arrival minus RTP timestamp), in RTP units.
    last_transit: Option<u32>,
    /// Interarrival jitter times 16.
    jitter_x16: u64,
    /// LSR (middle 32 bits of the last SR's NTP timestamp) and when that SR arrived.
    last_sr: Option<(u32, Instant)>,
}

impl ReceiverStats {
    /// Creates empty statistics for a stream whose RTP clock runs at `clock_rate` Hz.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate,
            started: false,
            probation: MIN_SEQUENTIAL,
            max_seq: 0,
            base_seq: 0,
            bad_seq: None,
            cycles: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            rejected: 0,
            bytes: 0,
            epoch: None,
            last_transit: None,
            jitter_x16: 0,
            last_sr: None,
        }
    }

    /// Feed one received packet; `arrival` is a monotonic Instant. Returns false if the packet was rejected as out of the valid sequence window (counted as such).
    ///
    /// Also false, but not counted as rejected, for packets taken while the source is on
    /// probation: the first packet of a new source is not part of the statistics (A.1).
    pub fn on_packet(
        &mut self,
        seq: u16,
        rtp_ts: u32,
        arrival: Instant,
        payload_len: usize,
    ) -> bool {
        if !self.started {
            self.started = true;
            self.init_seq(seq);
            self.max_seq = seq.wrapping_sub(1);
            self.probation = MIN_SEQUENTIAL;
        }
        if !self.update_seq(seq) {
            return false;
        }
        self.bytes = self.bytes.saturating_add(payload_len as u64);
        self.update_jitter(rtp_ts, arrival);
        true
    }

    /// The stream's sender changed (a new SSRC, RFC 3550 §8.2): the statistics restart as for
    /// a new source (A.1): on probation again, with nothing expected, received or lost, no jitter
    /// and no Sender Report of it yet, so that the old sender's loss and jitter never show in the
    /// new one's report blocks. Only the payload byte count goes on (the stream's total).
    pub fn new_source(&mut self) {
        *self = Self {
            bytes: self.bytes,
            ..Self::new(self.clock_rate)
        };
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = None;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
        // The sender may have restarted its timestamps too.
        self.last_transit = None;
    }

    /// `update_seq` of RFC 3550 A.1; true if the packet counts as received.
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        }
        if udelta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles += RTP_SEQ_MOD;
            }
            self.max_seq = seq;
        } else if u64::from(udelta) <= RTP_SEQ_MOD - u64::from(MAX_MISORDER) {
            // A very large jump: accept it only if the next packet follows it.
            if self.bad_seq != Some(seq) {
                self.bad_seq = Some(seq.wrapping_add(1));
                self.rejected += 1;
                return false;
            }
            self.init_seq(seq);
        }
        // Otherwise a duplicate or reordered packet.
        self.received += 1;
        true
    }

    /// Interarrival jitter update of RFC 3550 A.8.
    fn update_jitter(&mut self, rtp_ts: u32, arrival: Instant) {
        let epoch = *self.epoch.get_or_insert(arrival);
        let transit = self.rtp_units_since(epoch, arrival).wrapping_sub(rtp_ts);
        if let Some(last) = self.last_transit.replace(transit) {
            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            self.jitter_x16 = self.jitter_x16 + d - ((self.jitter_x16 + 8) >> 4);
        }
    }

    /// Time from `epoch` to `t` in RTP clock units, modulo 2^32 (negative if `t` is earlier).
    fn rtp_units_since(&self, epoch: Instant, t: Instant) -> u32 {
        let (elapsed, before) = match t.checked_duration_since(epoch) {
            Some(d) => (d, false),
            None => (epoch.duration_since(t), true),
        };
        // Truncation to 32 bits is the RTP timestamp wrap. Whole seconds and the fraction apart,
        // to stay in 64 bits (this runs for every packet).
        let rate = u64::from(self.clock_rate);
        let units = (elapsed.as_secs().wrapping_mul(rate)
            + u64::from(elapsed.subsec_nanos()) * rate / 1_000_000_000) as u32;
        if before { units.wrapping_neg() } else { units }
    }

    /// Remembers an SR from the source: its LSR (middle 32 bits of `sr_ntp`) and arrival, for the
    /// LSR/DLSR fields of the next report blocks (RFC 3550 6.4.1).
    pub fn on_sender_report(&mut self, sr_ntp: u64, arrival: Instant) {
        self.last_sr = Some((ntp_middle32(sr_ntp), arrival));
    }

    /// Builds a report block for `ssrc` at time `now`, updating the interval snapshot used for fraction_lost.
    pub fn report_block(&mut self, ssrc: u32, now: Instant) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = match expected_interval {
            0 => 0,
            n => ((lost_interval << 8) / n).min(255) as u8,
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => (
                lsr,
                duration_to_ntp_short(now.saturating_duration_since(at)),
            ),
            None => (0, 0),
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            extended_highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }

    /// Whether the source passed probation (A.1) and is counted in the statistics.
    pub fn is_valid(&self) -> bool {
        self.started && self.probation == 0
    }

    /// Packets counted as received since the source became valid (or last resynchronized),
    /// duplicates included.
    pub fn packets_received(&self) -> u64 {
        self.received
    }

    /// Packets rejected as outside the valid sequence window.
    pub fn packets_rejected(&self) -> u64 {
        self.rejected
    }

    /// Packets expected minus packets received (A.3); negative when duplicates arrived.
    pub fn cumulative_lost(&self) -> i64 {
        let lost = i128::from(self.expected()) - i128::from(self.received);
        lost.clamp(i64::MIN.into(), i64::MAX.into()) as i64
    }

    /// Interarrival jitter in RTP timestamp units.
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_x16 >> 4).unwrap_or(u32::MAX)
    }

    /// Interarrival jitter as a duration (zero if the clock rate is 0).
    pub fn jitter_duration(&self) -> Duration {
        match self.clock_rate {
            0 => Duration::ZERO,
            rate => {
                Duration::from_nanos(u64::from(self.jitter()) * 1_000_000_000 / u64::from(rate))
            }
        }
    }

    /// Extended highest sequence number received: wrap cycles in the upper 16 bits (modulo 2^32).
    pub fn extended_highest_seq(&self) -> u32 {
        (self.cycles + u64::from(self.max_seq)) as u32
    }

    /// Payload bytes of the packets counted as received.
    pub fn bytes_received(&self) -> u64 {
        self.bytes
    }

    /// Packets expected since the base sequence number (A.3); 0 before the source is valid.
    fn expected(&self) -> u64 {
        if !self.is_valid() {
            return 0;
        }
        (self.cycles + u64::from(self.max_seq) + 1).saturating_sub(u64::from(self.base_seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    const FRAME: Duration = Duration::from_millis(20);
    const FRAME_TICKS: u32 = 1800; // 20 ms at 90 kHz

    /// Feeds `seqs` as a constant-rate 90 kHz stream with a constant network delay.
    fn feed(
        stats: &mut ReceiverStats,
        t0: Instant,
        seqs: impl IntoIterator<Item = u16>,
    ) -> Vec<bool> {
        seqs.into_iter()
            .map(|seq| {
                let n = u32::from(seq.wrapping_sub(1000));
                stats.on_packet(seq, n * FRAME_TICKS, t0 + FRAME * n, 100)
            })
            .collect()
    }

    #[test]
    fn probation_then_in_order_stream_across_wrap() {
        let mut stats = ReceiverStats::new(90_000);
        let t0 = Instant::now();
        let seqs: Vec<u16> = (0..200u16).map(|i| 65_400u16.wrapping_add(i)).collect();
        let accepted = feed(&mut stats, t0, seqs);
        assert!(!accepted[0], "first packet is on probation");
        assert!(accepted[1..].iter().all(|&a| a));
        assert!(stats.is_valid());
        assert_eq!(stats.packets_received(), 199);
        assert_eq!(stats.bytes_received(), 199 * 100);
        assert_eq!(
            stats.extended_highest_seq(),
            (1 << 16) + u32::from(65_400u16.wrapping_add(199))
        );
        assert_eq!(stats.cumulative_lost(), 0);
        assert_eq!(stats.jitter(), 0);
        let block = stats.report_block(7, t0);
        assert_eq!(
            (block.ssrc, block.fraction_lost, block.cumulative_lost),
            (7, 0, 0)
        );
        assert_eq!(block.extended_highest_seq, stats.extended_highest_seq());
    }

    #[test]
    fn probation_restarts_on_gap() {
        let mut stats = ReceiverStats::new(90_000);
        let t0 = Instant::now();
        assert_eq!(
            feed(&mut stats, t0, [10, 20, 21, 22]),
            [false, false, true, true]
        );
        assert_eq!(stats.packets_received(), 2);
        assert_eq!(stats.report_block(1, t0).extended_highest_seq, 22);
    }

    #[test]
    fn loss_and_fraction_lost_per_interval() {
        let mut stats = ReceiverStats::new(90_000);
        let t0 = Instant::now();
        // First interval: seq 1 validates, 2..=100 with 10 missing (expected 100, received 90).
        feed(&mut stats, t0, [0, 1]);
        feed(&mut stats, t0, (2..=100).filter(|s| s % 10 != 5));
        assert_eq!(stats.cumulative_lost(), 10);
        let block = stats.report_block(1, t0);
        assert_eq!(block.cumulative_lost, 10);
        assert_eq!(block.fraction_lost, (10 * 256 / 100) as u8);

        // Second interval: no loss; one reordered and one duplicate packet.
        assert_eq!(feed(&mut stats, t0, [101, 103, 102, 104, 104]), [true; 5]);
        let block = stats.report_block(1, t0);
        assert_eq!((block.fraction_lost, block.cumulative_lost), (0, 9));
        assert_eq!(block.extended_highest_seq, 104);

        // Empty interval.
        assert_eq!(stats.report_block(1, t0).fraction_lost, 0);

        // Everything lost but the last packet of the interval.
        feed(&mut stats, t0, [204]);
        assert_eq!(
            stats.report_block(1, t0).fraction_lost,
            (99 * 256 / 100) as u8
        );
    }

    #[test]
    fn large_jump_is_rejected_unless_confirmed() {
        let mut stats = ReceiverStats::new(90_000);
        let t0 = Instant::now();
        feed(&mut stats, t0, 1000..1010);
        // Isolated far jump: rejected and counted.
        assert_eq!(feed(&mut stats, t0, [30_000, 1010]), [false, true]);
        assert_eq!(stats.packets_rejected(), 1);
        // Too old to be reordering: rejected too.
        assert_eq!(feed(&mut stats, t0, [500]), [false]);
        assert_eq!(stats.packets_rejected(), 2);
        // Two sequential packets after the jump: the sender restarted, resync.
        assert_eq!(
            feed(&mut stats, t0, [40_000, 40_001, 40_002]),
            [false, true, true]
        );
        assert_eq!(stats.packets_rejected(), 3);
        assert_eq!(stats.packets_received(), 2);
        assert_eq!(stats.extended_highest_seq(), 40_002);
        assert_eq!(stats.cumulative_lost(), 0);
    }

    #[test]
    fn a_new_source_starts_from_nothing() {
        let mut stats = ReceiverStats::new(90_000);
        let t0 = Instant::now();
        // The old sender: loss, a large jitter, a Sender Report, a report sent.
        feed(&mut stats, t0, (0..200).filter(|s| s % 4 != 3));
        for i in 200..260u16 {
            let n = u32::from(i);
            let delay = Duration::from_millis(u64::from(i % 2) * 30);
            stats.on_packet(i, n * FRAME_TICKS, t0 + FRAME * n + delay, 100);
        }
        stats.on_sender_report(0x1234_5678_9abc_def0, t0);
        let old = stats.report_block(1, t0);
        assert!(old.cumulative_lost > 0 && old.jitter > 0 && old.last_sr != 0);
        let bytes = stats.bytes_received();

        // The new sender, numbering from 5000 (a gap of thousands, which must not count as
        // loss), at a constant delay.
        stats.new_source();
        assert!(!stats.is_valid());
        let t1 = t0 + Duration::from_secs(10);
        let accepted: Vec<bool> = (5000..5100u16)
            .map(|seq| {
                let n = u32::from(seq - 5000);
                stats.on_packet(seq, 777 + n * FRAME_TICKS, t1 + FRAME * n, 100)
            })
            .collect();
        assert!(
            !accepted[0],
            "the new source's first packet is on probation (A.1)"
        );
        assert!(accepted[1..].iter().all(|&a| a));
        let block = stats.report_block(2, t1);
        assert_eq!(
            (
                block.fraction_lost,
                block.cumulative_lost,
                block.jitter,
                block.last_sr,
                block.delay_since_last_sr
            ),
            (0, 0, 0, 0, 0),
            "{block:?}"
        );
        assert_eq!(block.extended_highest_seq, 5099);
        assert_eq!(stats.packets_received(), 99);
        assert_eq!(stats.packets_rejected(), 0);
        assert_eq!(stats.bytes_received(), bytes + 99 * 100);
    }

    #[test]
    fn jitter_is_zero_for_constant_delay_and_grows_with_variation() {
        let mut stats = ReceiverStats::new(90_000);
        let t0 = Instant::now();
        for i in 0..100u16 {
            let n = u32::from(i);
            stats.on_packet(i, 5000 + n * FRAME_TICKS, t0 + FRAME * n, 0);
        }
        assert_eq!(stats.jitter(), 0);

        // Delay alternating between 0 and 10 ms: |D| = 900 ticks per packet, and the estimator
        // converges towards 900.
        let mut previous = 0;
        for i in 100..400u16 {
            let n = u32::from(i);
            let delay = if i % 2 == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(10)
            };
            stats.on_packet(i, 5000 + n * FRAME_TICKS, t0 + FRAME * n + delay, 0);
            assert!(stats.jitter() >= previous);
            previous = stats.jitter();
        }
        assert!((850..=900).contains(&stats.jitter()), "{}", stats.jitter());
        let ms = stats.jitter_duration().as_secs_f64() * 1000.0;
        assert!((9.4..=10.0).contains(&ms), "{ms}");
        assert_eq!(stats.report_block(1, t0).jitter, stats.jitter());
    }

    #[test]
    fn report_carries_lsr_and_dlsr() {
        let mut stats = ReceiverStats::new(90_000);
        let t0 = Instant::now();
        assert_eq!(
            stats.report_block(1, t0),
            ReportBlock {
                ssrc: 1,
                ..Default::default()
            }
        );
        stats.on_sender_report(0xb44d_b705_2000_0000, t0);
        let block = stats.report_block(1, t0 + Duration::from_millis(5250));
        assert_eq!(
            (block.last_sr, block.delay_since_last_sr),
            (0xb705_2000, 0x0005_4000)
        );
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(42);
        let t0 = Instant::now();
        for clock_rate in [0, 8000, 90_000, u32::MAX] {
            let mut stats = ReceiverStats::new(clock_rate);
            let mut seq = 0u16;
            for _ in 0..20_000 {
                seq = match rng.random_range(0..4) {
                    0 => rng.random(),
                    1 => seq.wrapping_sub(rng.random_range(0..200)),
                    _ => seq.wrapping_add(rng.random_range(0..5)),
                };
                let arrival = t0 + Duration::from_millis(rng.random_range(0..10_000_000));
                stats.on_packet(seq, rng.random(), arrival, rng.random_range(0..2000));
                if rng.random_range(0..100) == 0 {
                    stats.on_sender_report(rng.random(), arrival);
                    stats.report_block(
                        1,
                        t0 + Duration::from_millis(rng.random_range(0..10_000_000)),
                    );
                }
            }
            let _ = (stats.jitter_duration(), stats.cumulative_lost());
        }
    }
}
