//! Which SSRC a received stream follows: one sender per stream, changed only when the server
//! says so or after the new source has proved itself, never by a single packet.
//!
//! Specifications: RFC 3550 §8.2 (a sender may change its SSRC), appendix A.1 (a new source is
//! valid after consecutive packets: probation); RFC 2326 §12.39 and RFC 7826 §18.54 (the
//! Transport's `ssrc`), RFC 7826 §18.45 (RTP-Info's `ssrc`).
//!
//! The first packet of a session sets the sender (the SSRC the server announced, if it did).
//! Packets of another SSRC are held while that
//! source is on probation: it becomes the sender once [`SWITCH_PACKETS`] of its packets came in
//! sequence, or at least two in sequence spanning [`SWITCH_TIME`], with no packet of the old
//! sender in between (any packet of the old sender ends the probation and its held packets are
//! dropped). The held packets are then released in order, so a real change loses nothing. An
//! SSRC the server announced (SETUP's Transport, RTP-Info) becomes the sender with its first
//! packet. A lone packet of another SSRC, such as a spoofed one with a far sequence number,
//! never reaches the jitter buffer.

use std::time::{Duration, Instant};

/// Packets in sequence that make a source on probation the sender.
pub const SWITCH_PACKETS: usize = 8;

/// How long a source on probation (at least two packets in sequence, none from the old sender)
/// takes to become the sender when it sends fewer than [`SWITCH_PACKETS`] in that time (a sparse
/// stream).
pub const SWITCH_TIME: Duration = Duration::from_secs(1);

/// What to do with a packet, from [`SenderLock::admit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<T> {
    /// It comes from the sender: pass it on.
    Accept(T),
    /// It comes from another source, held while that source is on probation.
    Held,
    /// The sender changed from `from` to `to`: its held packets and this one, in arrival order.
    Switched { from: u32, to: u32, packets: Vec<T> },
}

/// A source on probation.
#[derive(Debug)]
struct Candidate<T> {
    ssrc: u32,
    /// The sequence number its next packet must have.
    next_seq: u16,
    /// When its first held packet arrived.
    since: Instant,
    held: Vec<T>,
}

/// The sender of one stream (see the module documentation). `T` is whatever the caller needs
/// back of a packet.
#[derive(Debug)]
pub struct SenderLock<T> {
    sender: Option<u32>,
    /// The SSRC the server said it sends with.
    announced: Option<u32>,
    candidate: Option<Candidate<T>>,
    rejected: u64,
}

impl<T> Default for SenderLock<T> {
    fn default() -> Self {
        Self {
            sender: None,
            announced: None,
            candidate: None,
            rejected: 0,
        }
    }
}

impl<T> SenderLock<T> {
    /// The current sender's SSRC, once a packet has set it.
    pub fn sender(&self) -> Option<u32> {
        self.sender
    }

    /// The server says the stream is (or will be) sent with `ssrc`: its next packet makes it the
    /// sender.
    pub fn announce(&mut self, ssrc: u32) {
        self.announced = Some(ssrc);
    }

    /// Whether reports of `ssrc` speak for this stream's sender: its current sender, or before
    /// the first packet the one the server announced.
    pub fn is_sender(&self, ssrc: u32) -> bool {
        self.sender.or(self.announced) == Some(ssrc)
    }

    /// Packets of sources that never became the sender: dropped.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Decides about a packet of `ssrc` with sequence number `seq` that arrived at `arrival`.
    pub fn admit(&mut self, ssrc: u32, seq: u16, arrival: Instant, packet: T) -> Verdict<T> {
        // Before the first packet, the announced SSRC stands for the sender.
        let Some(sender) = self.sender.or(self.announced) else {
            self.sender = Some(ssrc);
            return Verdict::Accept(packet);
        };
        if ssrc == sender {
            self.sender = Some(ssrc);
            self.give_up();
            return Verdict::Accept(packet);
        }
        let on_probation = self
            .candidate
            .as_ref()
            .is_some_and(|c| c.ssrc == ssrc && c.next_seq == seq);
        if !on_probation {
            self.give_up();
            self.candidate = Some(Candidate {
                ssrc,
                next_seq: seq,
                since: arrival,
                held: Vec::new(),
            });
        }
        let c = self.candidate.as_mut().expect("set above");
        c.next_seq = seq.wrapping_add(1);
        c.held.push(packet);
        let proved = c.held.len() >= SWITCH_PACKETS
            || (c.held.len() >= 2 && arrival.saturating_duration_since(c.since) >= SWITCH_TIME);
        if !proved && self.announced != Some(ssrc) {
            return Verdict::Held;
        }
        let c = self.candidate.take().expect("set above");
        self.sender = Some(ssrc);
        Verdict::Switched {
            from: sender,
            to: ssrc,
            packets: c.held,
        }
    }

    /// Ends the probation of the current candidate, if any: its held packets are dropped.
    fn give_up(&mut self) {
        if let Some(c) = self.candidate.take() {
            self.rejected += c.held.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Admits packets `(ssrc, seq)` 10 ms apart; returns the sequence numbers let through and
    /// the switches seen.
    fn feed(lock: &mut SenderLock<u16>, packets: &[(u32, u16)]) -> (Vec<u16>, Vec<(u32, u32)>) {
        let t = Instant::now();
        let (mut passed, mut switches) = (Vec::new(), Vec::new());
        for (i, &(ssrc, seq)) in packets.iter().enumerate() {
            match lock.admit(ssrc, seq, t + 10 * MS * i as u32, seq) {
                Verdict::Accept(s) => passed.push(s),
                Verdict::Held => {}
                Verdict::Switched { from, to, packets } => {
                    switches.push((from, to));
                    passed.extend(packets);
                }
            }
        }
        (passed, switches)
    }

    fn run(ssrc: u32, seqs: std::ops::Range<u16>) -> Vec<(u32, u16)> {
        seqs.map(|s| (ssrc, s)).collect()
    }

    #[test]
    fn the_first_packet_sets_the_sender() {
        let mut lock = SenderLock::default();
        let (passed, switches) = feed(&mut lock, &run(7, 0..5));
        assert_eq!(passed, [0, 1, 2, 3, 4]);
        assert!(switches.is_empty());
        assert_eq!(lock.sender(), Some(7));
    }

    #[test]
    fn a_single_packet_of_another_ssrc_is_dropped() {
        let mut lock = SenderLock::default();
        let mut packets = run(7, 0..5);
        // A spoofed packet with a far sequence number, then the sender goes on.
        packets.push((9, 40000));
        packets.extend(run(7, 5..10));
        let (passed, switches) = feed(&mut lock, &packets);
        assert_eq!(passed, (0..10).collect::<Vec<_>>());
        assert!(switches.is_empty());
        assert_eq!(lock.sender(), Some(7));
        assert_eq!(lock.rejected(), 1);
    }

    #[test]
    fn a_sustained_change_is_followed_and_loses_nothing() {
        let mut lock = SenderLock::default();
        let mut packets = run(7, 0..5);
        packets.extend(run(8, 100..120));
        let (passed, switches) = feed(&mut lock, &packets);
        assert_eq!(switches, [(7, 8)]);
        let mut want: Vec<u16> = (0..5).collect();
        want.extend(100..120);
        assert_eq!(passed, want);
        assert_eq!(lock.rejected(), 0);
    }

    #[test]
    fn the_old_sender_interleaving_ends_the_probation() {
        let mut lock = SenderLock::default();
        let mut packets = run(7, 0..2);
        // A spoofer sending in sequence between the sender's packets never takes over.
        for i in 0..50u16 {
            packets.push((9, 1000 + 2 * i));
            packets.push((9, 1001 + 2 * i));
            packets.push((7, 2 + i));
        }
        let (passed, switches) = feed(&mut lock, &packets);
        assert!(switches.is_empty());
        assert_eq!(passed, (0..52).collect::<Vec<_>>());
        assert_eq!(lock.rejected(), 100);
    }

    #[test]
    fn packets_out_of_sequence_restart_the_probation() {
        let mut lock = SenderLock::default();
        let mut packets = run(7, 0..1);
        // Random sequence numbers never make a run.
        packets.extend((0..40u16).map(|i| (9, i.wrapping_mul(7919))));
        let (_, switches) = feed(&mut lock, &packets);
        assert!(switches.is_empty());
        assert_eq!(lock.sender(), Some(7));
    }

    #[test]
    fn a_sparse_new_source_takes_over_after_the_switch_time() {
        let mut lock = SenderLock::default();
        let t = Instant::now();
        assert_eq!(lock.admit(7, 0, t, 0), Verdict::Accept(0));
        assert_eq!(lock.admit(8, 50, t + MS, 50), Verdict::Held);
        assert_eq!(
            lock.admit(8, 51, t + MS + SWITCH_TIME, 51),
            Verdict::Switched {
                from: 7,
                to: 8,
                packets: vec![50, 51]
            }
        );
        // One packet alone, however late, is not enough.
        assert_eq!(lock.admit(9, 5, t + 10 * SWITCH_TIME, 5), Verdict::Held);
        assert_eq!(lock.sender(), Some(8));
    }

    #[test]
    fn an_announced_ssrc_takes_over_at_once() {
        let mut lock = SenderLock::default();
        let t = Instant::now();
        assert_eq!(lock.admit(7, 0, t, 0), Verdict::Accept(0));
        lock.announce(8);
        assert!(!lock.is_sender(8));
        assert_eq!(
            lock.admit(8, 500, t, 500),
            Verdict::Switched {
                from: 7,
                to: 8,
                packets: vec![500]
            }
        );
        assert!(lock.is_sender(8) && !lock.is_sender(7));
    }

    #[test]
    fn reports_speak_for_the_sender_only() {
        let mut lock: SenderLock<()> = SenderLock::default();
        assert!(!lock.is_sender(7));
        lock.announce(7);
        assert!(lock.is_sender(7));
        let t = Instant::now();
        // A spoofer's packet before the sender's first one is held, not taken.
        assert_eq!(lock.admit(9, 1, t, ()), Verdict::Held);
        assert!(lock.is_sender(7) && !lock.is_sender(9));
        assert_eq!(lock.admit(7, 1, t, ()), Verdict::Accept(()));
        assert_eq!(lock.sender(), Some(7));
        assert_eq!(lock.rejected(), 1);
    }
}
