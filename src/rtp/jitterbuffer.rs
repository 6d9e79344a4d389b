//! A reordering RTP jitter buffer, sans I/O: the caller passes arrival times and asks what is
//! ready at a given instant.
//!
//! Specifications: RFC 3550 §5.1 (sequence numbers) and appendix A.1 (extension, sender restarts);
//! the waiting policy is ours.
//!
//! Packets leave in sequence order. A packet that is next in sequence leaves at once; a gap is
//! waited for until the first packet after it has been held for `latency`, then the missing
//! range is reported as [`Output::Lost`] and output goes on. Sequence numbers are extended to 64
//! bits against the highest one seen, so wraparound is invisible. A jump of more than
//! `max_dropout` either way is a sender restart once [`JUMP_RUN_RESTART`] packets in sequence
//! from the new number have come with none of the old numbering in between (RFC 3550 A.1 waits
//! for a second packet in sequence; a lone packet far off, such as a spoofed one, is dropped and
//! counted as a stray): what is buffered is released in order, and the buffer starts again with
//! the run. So is a run of [`LATE_RUN_RESTART`] packets in a row that are all older than what was
//! output: a sender that restarted a little behind its old numbers.
//!
//! Storage: the run of packets that is next in sequence, as they usually come, in a queue
//! (constant time per packet, no allocation once warm); packets beyond a gap in a `BTreeMap`
//! keyed by extended sequence number: reordering windows are small, so the map stays shallow,
//! and it needs no sizing against sequence gaps the way a ring would. When a gap fills, the run
//! after it moves from the map to the queue.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Consecutive late packets that mean the sender restarted behind its old sequence numbers.
pub const LATE_RUN_RESTART: u32 = 16;

/// Packets in sequence beyond `max_dropout` that mean the sender restarted at a new number.
pub const JUMP_RUN_RESTART: usize = 4;

/// Settings.
#[derive(Debug, Clone, Copy)]
pub struct JitterBufferConfig {
    /// How long a gap is waited for.
    pub latency: Duration,
    /// Packets held at most; beyond it the oldest gap is given up on at once.
    pub max_packets: usize,
    /// A sequence jump larger than this (either way) is a restart of the sender.
    pub max_dropout: u16,
}

impl Default for JitterBufferConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(200),
            max_packets: 4096,
            max_dropout: 3000,
        }
    }
}

/// What comes out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Packet {
        seq: u16,
        data: Bytes,
    },
    /// `count` packets from `first_seq` on never came (or came too late).
    Lost {
        first_seq: u16,
        count: u64,
    },
}

/// Why a pushed packet was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Duplicate,
    /// Older than what was already output.
    Late,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterBufferStats {
    pub pushed: u64,
    pub output: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub resets: u64,
    /// Packets far from the sequence (beyond `max_dropout`) that no run of
    /// [`JUMP_RUN_RESTART`] followed: dropped.
    pub strays: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterBufferConfig,
    /// Packets `next`, `next + 1`, ... without a gap.
    run: VecDeque<(Bytes, Instant)>,
    /// Packets after the first gap, all beyond `next + run.len()`.
    packets: BTreeMap<u64, (Bytes, Instant)>,
    /// Extended sequence number expected next; None before the first packet.
    next: Option<u64>,
    /// Highest extended sequence number seen.
    highest: u64,
    /// Released by a reset, to be output before anything else.
    released: VecDeque<Output>,
    /// Late packets in a row.
    late_run: u32,
    /// Packets in sequence far from the highest one (seq, data, arrival): a restart of the
    /// sender once [`JUMP_RUN_RESTART`] have come.
    jump: Vec<(u16, Bytes, Instant)>,
    stats: JitterBufferStats,
    /// Who logs: the `id` of the log records (e.g. `rtspsrc2-0:stream_0`), empty for none.
    name: String,
}

impl JitterBuffer {
    pub fn new(config: JitterBufferConfig) -> Self {
        Self {
            config,
            run: VecDeque::new(),
            packets: BTreeMap::new(),
            next: None,
            highest: 0,
            released: VecDeque::new(),
            late_run: 0,
            jump: Vec::new(),
            stats: JitterBufferStats::default(),
            name: String::new(),
        }
    }

    /// Names the buffer in its log records (the element and pad it serves).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Inserts a packet with RTP sequence number `seq` that arrived at `arrival`.
    pub fn push(&mut self, seq: u16, data: Bytes, arrival: Instant) -> Result<(), Rejected> {
        self.stats.pushed += 1;
        let Some(next) = self.next else {
            // Far from zero, so that early packets of a reordered start still extend to >= 0.
            let ext = (1 << 32) + u64::from(seq);
            self.next = Some(ext);
            self.highest = ext;
            self.run.push_back((data, arrival));
            return Ok(());
        };
        let delta = i64::from(seq.wrapping_sub(self.highest as u16) as i16);
        if delta.unsigned_abs() > u64::from(self.config.max_dropout) {
            if self
                .jump
                .last()
                .is_none_or(|&(last, ..)| last.wrapping_add(1) != seq)
            {
                self.drop_jump();
            }
            self.jump.push((seq, data, arrival));
            if self.jump.len() < JUMP_RUN_RESTART {
                log::trace!(id = self.name.as_str(); "packet {seq} is {delta} from the sequence: held until more follow it");
                return Ok(());
            }
            log::debug!(
                id = self.name.as_str();
                "sequence jumped by {delta} (more than {}) and {JUMP_RUN_RESTART} packets followed in sequence: sender restart, {} packets held are released",
                self.config.max_dropout,
                self.len()
            );
            let run = std::mem::take(&mut self.jump);
            self.restart(run);
            return Ok(());
        }
        // The old numbering goes on: what jumped away was not the sender.
        self.drop_jump();
        let ext = (self.highest as i64 + delta) as u64;
        if ext < next {
            self.late_run += 1;
            if self.late_run >= LATE_RUN_RESTART {
                log::debug!(
                    id = self.name.as_str();
                    "{LATE_RUN_RESTART} late packets in a row (now {seq}): sender restart behind its old numbers"
                );
                self.restart(vec![(seq, data, arrival)]);
                return Ok(());
            }
            self.stats.late += 1;
            log::trace!(id = self.name.as_str(); "packet {seq} came after its place was given up: dropped");
            return Err(Rejected::Late);
        }
        self.late_run = 0;
        let run_end = next + self.run.len() as u64;
        if ext < run_end || self.packets.contains_key(&ext) {
            self.stats.duplicates += 1;
            log::trace!(id = self.name.as_str(); "packet {seq} is a duplicate: dropped");
            return Err(Rejected::Duplicate);
        }
        self.highest = self.highest.max(ext);
        if ext == run_end {
            self.run.push_back((data, arrival));
            // A filled gap: what waited behind it joins the run.
            while let Some(entry) = self.packets.first_entry() {
                if *entry.key() != next + self.run.len() as u64 {
                    break;
                }
                self.run.push_back(entry.remove());
            }
        } else {
            self.packets.insert(ext, (data, arrival));
        }
        Ok(())
    }

    /// Releases what is held and starts again with `run`, packets in sequence.
    fn restart(&mut self, run: Vec<(u16, Bytes, Instant)>) {
        self.stats.resets += 1;
        self.late_run = 0;
        let drained = self.drain();
        self.released.extend(drained);
        self.next = None;
        let count = run.len() as u64;
        for (seq, data, arrival) in run {
            self.push(seq, data, arrival).ok();
        }
        self.stats.pushed -= count; // counted once, when they came
    }

    /// Drops the packets that jumped away from the sequence.
    fn drop_jump(&mut self) {
        if !self.jump.is_empty() {
            self.stats.strays += self.jump.len() as u64;
            log::trace!(id = self.name.as_str(); "{} packet(s) far from the sequence dropped", self.jump.len());
            self.jump.clear();
        }
    }

    /// The next output ready at `now`, if any.
    pub fn pop(&mut self, now: Instant) -> Option<Output> {
        if let Some(out) = self.released.pop_front() {
            return Some(out);
        }
        let next = self.next?;
        if let Some((data, _)) = self.run.pop_front() {
            self.next = Some(next + 1);
            self.stats.output += 1;
            return Some(Output::Packet {
                seq: next as u16,
                data,
            });
        }
        let (&first, &(_, arrival)) = self.packets.iter().next()?;
        if first == next {
            let (data, _) = self.packets.remove(&first).expect("present");
            self.next = Some(next + 1);
            self.stats.output += 1;
            return Some(Output::Packet {
                seq: first as u16,
                data,
            });
        }
        // A gap before `first`: give up on it after `latency`, or at once when full.
        let waited = now.saturating_duration_since(arrival);
        let overdue = waited >= self.config.latency;
        if overdue || self.packets.len() > self.config.max_packets {
            let count = first - next;
            self.next = Some(first);
            self.stats.lost += count;
            if overdue {
                log::debug!(
                    id = self.name.as_str();
                    "gave up on {count} packet(s) from {} after waiting {waited:?} (latency {:?})",
                    next as u16,
                    self.config.latency
                );
            } else {
                log::debug!(
                    id = self.name.as_str();
                    "gave up on {count} packet(s) from {}: {} packets held, more than {}",
                    next as u16,
                    self.packets.len(),
                    self.config.max_packets
                );
            }
            return Some(Output::Lost {
                first_seq: next as u16,
                count,
            });
        }
        None
    }

    /// When `pop` will next have something without another push (None: nothing pending).
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.released.is_empty() {
            return Some(Instant::now());
        }
        let next = self.next?;
        if let Some(&(_, arrival)) = self.run.front() {
            return Some(arrival);
        }
        let (&first, &(_, arrival)) = self.packets.iter().next()?;
        Some(if first == next {
            arrival
        } else {
            arrival + self.config.latency
        })
    }

    /// Everything held, in order, gaps reported: for EOS, a seek or a restart.
    pub fn drain(&mut self) -> Vec<Output> {
        let mut out: Vec<Output> = self.released.drain(..).collect();
        let mut next = self.next;
        let run = self.run.drain(..).zip(self.next.unwrap_or(0)..);
        let held = run.map(|(p, ext)| (ext, p)).collect::<Vec<_>>();
        for (ext, (data, _)) in held.into_iter().chain(std::mem::take(&mut self.packets)) {
            if let Some(n) = next
                && ext > n
            {
                self.stats.lost += ext - n;
                out.push(Output::Lost {
                    first_seq: n as u16,
                    count: ext - n,
                });
            }
            self.stats.output += 1;
            out.push(Output::Packet {
                seq: ext as u16,
                data,
            });
            next = Some(ext + 1);
        }
        self.next = next;
        out
    }

    /// Forgets everything (after a seek or reconnection); the next packet starts anew.
    pub fn reset(&mut self) {
        self.run.clear();
        self.packets.clear();
        self.released.clear();
        self.jump.clear();
        self.next = None;
        self.stats.resets += 1;
    }

    pub fn len(&self) -> usize {
        self.run.len() + self.packets.len() + self.released.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> JitterBufferStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATENCY: Duration = Duration::from_millis(200);

    fn jb() -> JitterBuffer {
        JitterBuffer::new(JitterBufferConfig {
            latency: LATENCY,
            max_packets: 64,
            max_dropout: 3000,
        })
    }

    fn pkt(seq: u16) -> Bytes {
        Bytes::copy_from_slice(&seq.to_be_bytes())
    }

    /// Pops everything ready at `now`.
    fn ready(jb: &mut JitterBuffer, now: Instant) -> Vec<Output> {
        std::iter::from_fn(|| jb.pop(now)).collect()
    }

    fn seqs(out: &[Output]) -> Vec<u16> {
        out.iter()
            .filter_map(|o| match o {
                Output::Packet { seq, .. } => Some(*seq),
                Output::Lost { .. } => None,
            })
            .collect()
    }

    #[test]
    fn in_order_packets_leave_at_once() {
        let t = Instant::now();
        let mut jb = jb();
        for s in 10..15 {
            jb.push(s, pkt(s), t).unwrap();
            assert_eq!(seqs(&ready(&mut jb, t)), vec![s]);
        }
        assert!(jb.is_empty());
        assert_eq!(jb.next_deadline(), None);
    }

    #[test]
    fn reordering_is_undone() {
        let t = Instant::now();
        let mut jb = jb();
        jb.push(1, pkt(1), t).unwrap();
        assert_eq!(seqs(&ready(&mut jb, t)), vec![1]);
        jb.push(4, pkt(4), t).unwrap();
        jb.push(2, pkt(2), t).unwrap();
        assert_eq!(seqs(&ready(&mut jb, t)), vec![2]);
        assert_eq!(jb.next_deadline(), Some(t + LATENCY));
        jb.push(3, pkt(3), t + Duration::from_millis(10)).unwrap();
        assert_eq!(seqs(&ready(&mut jb, t)), vec![3, 4]);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn a_filled_gap_joins_what_waited_behind_it_to_the_run() {
        let t = Instant::now();
        let mut jb = jb();
        for s in [1, 2, 5, 6, 4] {
            jb.push(s, pkt(s), t).unwrap();
        }
        // Held in the run and behind the gap alike.
        assert_eq!(jb.push(2, pkt(2), t), Err(Rejected::Duplicate));
        assert_eq!(jb.push(5, pkt(5), t), Err(Rejected::Duplicate));
        assert_eq!(jb.len(), 5);
        jb.push(3, pkt(3), t).unwrap();
        jb.push(7, pkt(7), t).unwrap();
        assert_eq!(seqs(&ready(&mut jb, t)), vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(jb.stats().duplicates, 2);
        // Drained with the run and a gap both held: in order, the gap reported.
        for s in [8, 9, 11] {
            jb.push(s, pkt(s), t).unwrap();
        }
        let out = jb.drain();
        assert_eq!(seqs(&out), vec![8, 9, 11]);
        assert_eq!(
            out[2],
            Output::Lost {
                first_seq: 10,
                count: 1
            }
        );
    }

    #[test]
    fn a_gap_not_filled_in_time_is_lost_and_output_goes_on() {
        let t = Instant::now();
        let mut jb = jb();
        jb.push(100, pkt(100), t).unwrap();
        ready(&mut jb, t);
        jb.push(103, pkt(103), t).unwrap();
        assert!(ready(&mut jb, t + Duration::from_millis(199)).is_empty());
        let out = ready(&mut jb, t + LATENCY);
        assert_eq!(
            out,
            vec![
                Output::Lost {
                    first_seq: 101,
                    count: 2
                },
                Output::Packet {
                    seq: 103,
                    data: pkt(103)
                }
            ]
        );
        // The missing ones arriving now are late.
        assert_eq!(jb.push(101, pkt(101), t + LATENCY), Err(Rejected::Late));
        assert_eq!(jb.stats().lost, 2);
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn duplicates_are_rejected() {
        let t = Instant::now();
        let mut jb = jb();
        jb.push(5, pkt(5), t).unwrap();
        jb.push(7, pkt(7), t).unwrap();
        assert_eq!(jb.push(7, pkt(7), t), Err(Rejected::Duplicate));
        assert_eq!(jb.stats().duplicates, 1);
    }

    #[test]
    fn wraparound_with_reordering() {
        let t = Instant::now();
        let mut jb = jb();
        jb.push(65533, pkt(65533), t).unwrap();
        for s in [65535, 0, 65534, 2, 1] {
            jb.push(s, pkt(s), t).unwrap();
        }
        assert_eq!(seqs(&ready(&mut jb, t)), vec![65533, 65534, 65535, 0, 1, 2]);
    }

    #[test]
    fn a_sender_restart_releases_what_was_held_and_starts_again() {
        let t = Instant::now();
        let mut jb = jb();
        jb.push(10, pkt(10), t).unwrap();
        jb.push(12, pkt(12), t).unwrap();
        let run = 40000..40000 + JUMP_RUN_RESTART as u16;
        for s in run.clone() {
            assert!(
                ready(&mut jb, t).len() <= 1,
                "nothing new before the run is complete"
            );
            jb.push(s, pkt(s), t).unwrap();
        }
        let out = ready(&mut jb, t);
        let mut want = vec![12];
        want.extend(run);
        assert_eq!(seqs(&out), want);
        assert_eq!(jb.stats().resets, 1);
        assert_eq!(jb.stats().lost, 1); // 11
        assert_eq!(jb.stats().strays, 0);
    }

    #[test]
    fn a_lone_packet_far_from_the_sequence_is_dropped_and_nothing_restarts() {
        let t = Instant::now();
        let mut jb = jb();
        let mut out = Vec::new();
        for s in 100..110u16 {
            jb.push(s, pkt(s), t).unwrap();
            // Spoofed: far ahead, far behind, and a short run, each between real packets.
            if s == 102 {
                jb.push(40000, pkt(40000), t).unwrap();
            }
            if s == 104 {
                jb.push(100u16.wrapping_sub(20000), pkt(0), t).unwrap();
            }
            if s == 106 {
                for f in 0..JUMP_RUN_RESTART as u16 - 1 {
                    jb.push(50000 + f, pkt(50000 + f), t).unwrap();
                }
            }
            out.extend(ready(&mut jb, t));
        }
        assert_eq!(seqs(&out), (100..110).collect::<Vec<_>>());
        assert_eq!(jb.stats().resets, 0);
        assert_eq!(jb.stats().lost, 0);
        assert_eq!(
            jb.stats().strays,
            2 + u64::from(JUMP_RUN_RESTART as u16 - 1)
        );
    }

    #[test]
    fn a_sender_restarting_slightly_behind_is_followed_after_a_short_run() {
        let t = Instant::now();
        let mut jb = jb();
        for s in 1000..1100 {
            jb.push(s, pkt(s), t).unwrap();
        }
        assert_eq!(seqs(&ready(&mut jb, t)).len(), 100);
        // The sender comes back 500 behind: the first few are late, then it is followed.
        let mut accepted = Vec::new();
        for s in 500..600u16 {
            if jb.push(s, pkt(s), t).is_ok() {
                accepted.push(s);
            }
        }
        let out = seqs(&ready(&mut jb, t));
        let first = 500 + LATE_RUN_RESTART as u16 - 1;
        assert_eq!(accepted, (first..600).collect::<Vec<_>>());
        assert_eq!(out, accepted);
        assert_eq!(jb.stats().late, u64::from(LATE_RUN_RESTART) - 1);
        assert_eq!(jb.stats().resets, 1);
    }

    #[test]
    fn memory_is_bounded() {
        let t = Instant::now();
        let mut jb = jb();
        jb.push(0, pkt(0), t).unwrap();
        ready(&mut jb, t);
        // Seq 1 never comes; 2..=70 pile up past max_packets (64).
        for s in 2..=70 {
            jb.push(s, pkt(s), t).unwrap();
        }
        let out = ready(&mut jb, t);
        assert_eq!(
            out[0],
            Output::Lost {
                first_seq: 1,
                count: 1
            }
        );
        assert_eq!(seqs(&out).len(), 69);
    }

    #[test]
    fn drain_gives_everything_in_order_with_gaps() {
        let t = Instant::now();
        let mut jb = jb();
        for s in [1, 3, 2, 6] {
            jb.push(s, pkt(s), t).unwrap();
        }
        let out = jb.drain();
        assert_eq!(seqs(&out), vec![1, 2, 3, 6]);
        assert!(out.contains(&Output::Lost {
            first_seq: 4,
            count: 2
        }));
        assert!(jb.is_empty());
    }

    #[test]
    fn shuffles_within_the_latency_come_out_whole_and_in_order() {
        let t = Instant::now();
        let mut jb = jb();
        let mut seed = 42u64;
        let mut rand = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        // 2000 packets starting near the wrap, shuffled in windows of 8, 1 ms apart.
        let mut order: Vec<u16> = (0..2000u32).map(|i| (65000 + i) as u16).collect();
        // Keep the very first in place so the buffer starts at the lowest number.
        for w in order[1..].chunks_mut(8) {
            for i in (1..w.len()).rev() {
                w.swap(i, rand() % (i + 1));
            }
        }
        let mut out = Vec::new();
        for (i, s) in order.iter().enumerate() {
            let now = t + Duration::from_millis(i as u64);
            jb.push(*s, pkt(*s), now).unwrap();
            out.extend(ready(&mut jb, now));
        }
        out.extend(jb.drain());
        let expected: Vec<u16> = (0..2000u32).map(|i| (65000 + i) as u16).collect();
        assert_eq!(seqs(&out), expected);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn random_input_never_panics() {
        let t = Instant::now();
        let mut jb = jb();
        let mut seed = 7u64;
        for i in 0..50_000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let s = (seed >> 40) as u16;
            let now = t + Duration::from_micros(i * 97);
            let _ = jb.push(s, Bytes::new(), now);
            while jb.pop(now).is_some() {}
            assert!(jb.len() <= 65 + 1);
        }
    }
}
