//! Groups a video stream's packets into frame bursts before the fan-out.
//!
//! Specifications: RFC 3550 §5.1 (the marker bit, whose meaning the payload format defines); for
//! video formats it marks the last packet of a frame: RFC 6184 §5.1 (H.264), RFC 7798 §4.1
//! (H.265), RFC 7741 §4.1 (VP8), RFC 2435 §3 (JPEG). Audio formats give it other meanings (RFC
//! 3551 §4.1: the first packet of a talkspurt), so audio streams are not grouped.
//!
//! Pre-payloaded input (`udpsrc ! rtspserversink`, an RTP relay) reaches the server one packet
//! per buffer. Fanning each packet out on its own costs, per client, one queue operation and one
//! writer wake-up and system call (TCP) or one datagram built and routed by itself (UDP), 300-400
//! times a second for a 4 Mbit/s stream. A frame cannot be decoded before its last packet
//! (marker bit) arrives, so holding its earlier packets until then adds no decoding latency, and
//! the fan-out gets a burst it can send to every client in one go: one vectored write per TCP
//! client, and segmentation offload for a UDP client's run of full-size packets.
//!
//! A burst is released when a packet carries the marker bit, when it reaches [`MAX_PACKETS`]
//! or [`MAX_BYTES`], or [`LINGER`] after its first packet (input that never sets the marker, or
//! the last packets before the input stops; the server's timer covers the latter).
//!
//! With a burst latency (`burst-latency` on rtspserversink, 0 by default) complete frames are
//! held as well, so that several go to each client together: at thousands of TCP clients the
//! server's cost is mostly the kernel's work per write (TCP send path, and on loopback the
//! receiver's path too), so two frames per write take almost half the writes' cost off. A
//! complete frame waits at most the latency: the burst is released when the next frame is
//! expected to complete too late to join it (the interval between the last two frames is the
//! estimate), or by the timer at the latency after its first complete frame. Streams without
//! frame markers (audio) are grouped the same way, each packet being a frame.

use std::time::{Duration, Instant};

use bytes::Bytes;

/// Longest time a packet waits for the rest of its frame.
pub const LINGER: Duration = Duration::from_millis(5);
/// Largest burst in packets (a big keyframe is sent in several bursts).
pub const MAX_PACKETS: usize = 256;
/// Largest burst in bytes.
pub const MAX_BYTES: usize = 512 * 1024;
/// Largest burst latency accepted.
pub const MAX_LATENCY: Duration = Duration::from_secs(1);

/// What the producer does with the packets it offered.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Nothing was held and these packets end a frame: send them as they are.
    Through,
    /// Send this burst: the held packets followed by the offered ones.
    Release(Vec<Bytes>),
    /// The packets are held. `first` is true when they started a new burst: arm the timer for
    /// [`Burst::deadline`].
    Held { first: bool },
}

/// The packets of a frame not yet complete, and with a latency, complete frames waiting for
/// the ones that follow.
#[derive(Debug, Default)]
pub struct Burst {
    /// How long a complete frame may wait for the next ones (zero: not at all).
    latency: Duration,
    pending: Vec<Bytes>,
    bytes: usize,
    /// When the first held packet arrived.
    since: Option<Instant>,
    /// When the first complete frame held was completed.
    ready_since: Option<Instant>,
    /// When the last frame was completed (held or not), for the frame interval.
    last_complete: Option<Instant>,
}

impl Burst {
    /// A burst holding complete frames for up to `latency` (at most [`MAX_LATENCY`]).
    pub fn with_latency(latency: Duration) -> Self {
        Burst {
            latency: latency.min(MAX_LATENCY),
            ..Burst::default()
        }
    }

    /// Offers packets that arrived at `now`. `by_marker`: the marker bit ends a frame (video);
    /// otherwise every packet is a frame of its own (audio).
    pub fn offer(&mut self, packets: &[Bytes], now: Instant, by_marker: bool) -> Offer {
        let Some(last) = packets.last() else {
            return Offer::Held { first: false };
        };
        let ends_frame = !by_marker || has_marker(last);
        let mut send_now = false;
        if ends_frame {
            let interval = self
                .last_complete
                .replace(now)
                .map(|t| now.saturating_duration_since(t));
            if self.latency.is_zero() || !is_rtp(last) {
                send_now = true;
            } else {
                // Release unless the next frame is expected in time to join this burst.
                let due = *self.ready_since.get_or_insert(now) + self.latency;
                send_now = interval.is_some_and(|i| now + i >= due);
            }
        }
        if self.pending.is_empty() && send_now {
            self.ready_since = None;
            return Offer::Through;
        }
        let first = self.since.is_none();
        let since = *self.since.get_or_insert(now);
        self.pending.extend_from_slice(packets);
        self.bytes += packets.iter().map(Bytes::len).sum::<usize>();
        let late = match self.ready_since {
            Some(ready) => now >= ready + self.latency,
            None => now.saturating_duration_since(since) >= LINGER,
        };
        if send_now || late || self.pending.len() >= MAX_PACKETS || self.bytes >= MAX_BYTES {
            Offer::Release(self.take())
        } else {
            Offer::Held { first }
        }
    }

    /// When the held packets must go out at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        match self.ready_since {
            Some(ready) => Some(ready + self.latency),
            None => self.since.map(|t| t + LINGER),
        }
    }

    /// The held packets if their time is up at `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<Vec<Bytes>> {
        (self.deadline()? <= now).then(|| self.take())
    }

    /// Gives back a released burst's buffer so the next burst reuses its allocation.
    pub fn recycle(&mut self, mut burst: Vec<Bytes>) {
        if self.pending.is_empty() && self.pending.capacity() < burst.capacity() {
            burst.clear();
            self.pending = burst;
        }
    }

    fn take(&mut self) -> Vec<Bytes> {
        self.bytes = 0;
        self.since = None;
        self.ready_since = None;
        std::mem::take(&mut self.pending)
    }
}

/// Whether a packet is RTP version 2; anything else is never held back.
fn is_rtp(packet: &[u8]) -> bool {
    packet.len() >= 2 && packet[0] >> 6 == 2
}

/// The RTP marker bit of a version 2 packet; anything else counts as ending a frame, so that
/// it is never held back.
fn has_marker(packet: &[u8]) -> bool {
    match packet {
        [b0, b1, ..] if b0 >> 6 == 2 => b1 & 0x80 != 0,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, marker: bool, len: usize) -> Bytes {
        let mut p = vec![0u8; len.max(12)];
        p[0] = 0x80;
        p[1] = 96 | if marker { 0x80 } else { 0 };
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        Bytes::from(p)
    }

    fn seqs(burst: &[Bytes]) -> Vec<u16> {
        burst
            .iter()
            .map(|p| u16::from_be_bytes([p[2], p[3]]))
            .collect()
    }

    #[test]
    fn a_frame_is_held_until_its_marker_packet() {
        let t0 = Instant::now();
        let mut b = Burst::default();
        assert_eq!(
            b.offer(&[packet(1, false, 1400)], t0, true),
            Offer::Held { first: true }
        );
        assert_eq!(b.deadline(), Some(t0 + LINGER));
        assert_eq!(
            b.offer(&[packet(2, false, 1400)], t0, true),
            Offer::Held { first: false }
        );
        let Offer::Release(burst) = b.offer(&[packet(3, true, 700)], t0, true) else {
            panic!("the marker packet releases the frame");
        };
        assert_eq!(seqs(&burst), [1, 2, 3]);
        assert_eq!(b.deadline(), None);
        b.recycle(burst);
        // A frame in one packet (or one buffer list ending the frame) goes straight through.
        assert_eq!(b.offer(&[packet(4, true, 500)], t0, true), Offer::Through);
        assert_eq!(
            b.offer(&[packet(5, false, 1400), packet(6, true, 9)], t0, true),
            Offer::Through
        );
    }

    #[test]
    fn input_without_markers_waits_at_most_the_linger() {
        let t0 = Instant::now();
        let mut b = Burst::default();
        assert_eq!(
            b.offer(&[packet(1, false, 100)], t0, true),
            Offer::Held { first: true }
        );
        assert_eq!(b.take_due(t0 + LINGER / 2), None);
        assert_eq!(seqs(&b.take_due(t0 + LINGER).unwrap()), [1]);
        assert_eq!(b.take_due(t0 + LINGER * 3), None);
        // A later packet past the linger releases what was held with it.
        b.offer(&[packet(2, false, 100)], t0, true);
        let Offer::Release(burst) = b.offer(&[packet(3, false, 100)], t0 + LINGER, true) else {
            panic!("released by age");
        };
        assert_eq!(seqs(&burst), [2, 3]);
    }

    #[test]
    fn a_burst_is_bounded_in_packets_and_bytes() {
        let t0 = Instant::now();
        let mut b = Burst::default();
        for seq in 0..MAX_PACKETS as u16 - 1 {
            assert!(matches!(
                b.offer(&[packet(seq, false, 100)], t0, true),
                Offer::Held { .. }
            ));
        }
        let Offer::Release(burst) = b.offer(&[packet(999, false, 100)], t0, true) else {
            panic!("released at MAX_PACKETS");
        };
        assert_eq!(burst.len(), MAX_PACKETS);
        let big = packet(1, false, MAX_BYTES / 2);
        assert!(matches!(
            b.offer(std::slice::from_ref(&big), t0, true),
            Offer::Held { .. }
        ));
        assert!(matches!(b.offer(&[big], t0, true), Offer::Release(v) if v.len() == 2));
    }

    #[test]
    fn anything_but_rtp_version_2_is_never_held() {
        let t0 = Instant::now();
        let mut b = Burst::default();
        assert_eq!(
            b.offer(&[Bytes::from_static(&[0x40, 0])], t0, true),
            Offer::Through
        );
        assert_eq!(b.offer(&[Bytes::new()], t0, true), Offer::Through);
        assert_eq!(b.offer(&[], t0, true), Offer::Held { first: false });
        assert_eq!(b.deadline(), None);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn with_a_latency_complete_frames_wait_for_the_next_one_that_can_join() {
        let t0 = Instant::now();
        let mut b = Burst::with_latency(ms(40));
        // The first frame: no interval known yet, held until the next one or the timer.
        assert_eq!(
            b.offer(&[packet(1, false, 1400)], t0, true),
            Offer::Held { first: true }
        );
        assert_eq!(
            b.offer(&[packet(2, true, 700)], t0 + ms(1), true),
            Offer::Held { first: false }
        );
        assert_eq!(b.deadline(), Some(t0 + ms(41)));
        // 30 fps: the frame after the next would complete past the latency, so the second
        // frame goes out with the first.
        let Offer::Release(burst) = b.offer(
            &[packet(3, false, 1400), packet(4, true, 9)],
            t0 + ms(34),
            true,
        ) else {
            panic!("two frames released together");
        };
        assert_eq!(seqs(&burst), [1, 2, 3, 4]);
        assert_eq!(b.deadline(), None);
        // From now on the interval is known: the third frame waits for the fourth.
        assert_eq!(
            b.offer(&[packet(5, true, 100)], t0 + ms(67), true),
            Offer::Held { first: true }
        );
        let Offer::Release(burst) = b.offer(&[packet(6, true, 100)], t0 + ms(100), true) else {
            panic!("released with the next frame");
        };
        assert_eq!(seqs(&burst), [5, 6]);
    }

    #[test]
    fn a_longer_latency_gathers_more_frames_and_the_timer_bounds_the_wait() {
        let t0 = Instant::now();
        let mut b = Burst::with_latency(ms(100));
        b.offer(&[packet(1, true, 100)], t0, true);
        b.offer(&[packet(2, true, 100)], t0 + ms(33), true);
        assert_eq!(
            b.offer(&[packet(3, true, 100)], t0 + ms(66), true),
            Offer::Held { first: false }
        );
        // The next frame is late: the timer releases the three at the latency.
        assert_eq!(b.take_due(t0 + ms(99)), None);
        assert_eq!(seqs(&b.take_due(t0 + ms(100)).unwrap()), [1, 2, 3]);
        // A frame arriving past its burst's latency releases it at once.
        b.offer(&[packet(4, true, 100)], t0 + ms(140), true);
        b.offer(&[packet(5, false, 100)], t0 + ms(150), true);
        assert!(matches!(
            b.offer(&[packet(6, false, 100)], t0 + ms(240), true),
            Offer::Release(v) if v.len() == 3
        ));
    }

    #[test]
    fn frames_rarer_than_the_latency_are_not_held() {
        let t0 = Instant::now();
        let mut b = Burst::with_latency(ms(40));
        assert!(matches!(
            b.offer(&[packet(1, true, 100)], t0, true),
            Offer::Held { .. }
        ));
        assert_eq!(seqs(&b.take_due(t0 + ms(40)).unwrap()), [1]);
        // 10 fps: holding could never gather a second frame.
        assert_eq!(
            b.offer(&[packet(2, true, 100)], t0 + ms(100), true),
            Offer::Through
        );
        assert_eq!(
            b.offer(&[packet(3, true, 100)], t0 + ms(200), true),
            Offer::Through
        );
        // Never longer than MAX_LATENCY.
        let mut b = Burst::with_latency(Duration::from_secs(3600));
        b.offer(&[packet(1, true, 100)], t0, true);
        assert_eq!(b.deadline(), Some(t0 + MAX_LATENCY));
    }

    #[test]
    fn without_markers_every_packet_is_a_frame() {
        let t0 = Instant::now();
        let mut b = Burst::with_latency(ms(40));
        // Audio every 20 ms, marker bit clear (it marks talkspurts, not frame ends).
        assert_eq!(
            b.offer(&[packet(1, false, 100)], t0, false),
            Offer::Held { first: true }
        );
        assert_eq!(b.deadline(), Some(t0 + ms(40)));
        let Offer::Release(burst) = b.offer(&[packet(2, false, 100)], t0 + ms(20), false) else {
            panic!("two packets per burst");
        };
        assert_eq!(seqs(&burst), [1, 2]);
        // Without a latency nothing is held.
        let mut b = Burst::default();
        assert_eq!(b.offer(&[packet(1, false, 100)], t0, false), Offer::Through);
    }

    #[test]
    fn anything_but_rtp_releases_what_a_latency_holds() {
        let t0 = Instant::now();
        let mut b = Burst::with_latency(ms(40));
        b.offer(&[packet(1, true, 100)], t0, true);
        let Offer::Release(burst) = b.offer(&[Bytes::from_static(&[0x40, 0])], t0 + ms(1), true)
        else {
            panic!("released");
        };
        assert_eq!(burst.len(), 2);
    }
}
