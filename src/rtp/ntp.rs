//! NTP timestamp conversions used by RTCP (RFC 3550 section 4).
//!
//! Specifications: RFC 3550 §4 (NTP timestamps, the middle 32 bits); RFC 5905 §6 (NTP time
//! formats); RFC 4330 §3 (eras after 2036).
//!
//! A 64-bit NTP timestamp is seconds since 1900-01-01 00:00 UTC in the upper 32 bits and a
//! binary fraction of a second in the lower 32 bits. RTCP also uses the "middle 32 bits"
//! (16.16 fixed point seconds) for LSR/DLSR. The 32-bit seconds field wraps in February 2036;
//! [`ntp_to_system_time`] resolves the era like RFC 4330 section 3 (MSB clear means era 1).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Current wall-clock time as a 64-bit NTP timestamp.
pub fn ntp_now() -> u64 {
    system_time_to_ntp(SystemTime::now())
}

/// Converts a wall-clock time to a 64-bit NTP timestamp. Times before 1900 map to 0; the
/// seconds field wraps modulo 2^32 (NTP eras), so 2036 and later restart near 0.
pub fn system_time_to_ntp(t: SystemTime) -> u64 {
    let offset = u128::from(NTP_UNIX_OFFSET_SECS) * NANOS_PER_SEC;
    let nanos = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => offset + after.as_nanos(),
        Err(e) => offset.saturating_sub(e.duration().as_nanos()),
    };
    let secs = (nanos / NANOS_PER_SEC) as u32;
    let frac = (((nanos % NANOS_PER_SEC) << 32) / NANOS_PER_SEC) as u32;
    (u64::from(secs) << 32) | u64::from(frac)
}

/// A duration as a 64-bit NTP-format timestamp (seconds modulo 2^32 and a binary fraction):
/// for clocks with another epoch than 1900 (Unix time, a running time).
pub fn duration_to_ntp(d: Duration) -> u64 {
    let frac = ((u128::from(d.subsec_nanos()) << 32) / NANOS_PER_SEC) as u64;
    ((d.as_secs() & 0xffff_ffff) << 32) | frac
}

/// Converts a 64-bit NTP timestamp back to wall-clock time. Timestamps with the most
/// significant bit clear are taken to be in era 1 (from 2036-02-07 on), as RFC 4330 suggests,
/// so the supported range is 1968..2104. Exact inverse of [`system_time_to_ntp`] to the
/// nanosecond within that range.
pub fn ntp_to_system_time(ntp: u64) -> SystemTime {
    let mut secs = ntp >> 32;
    if secs & 0x8000_0000 == 0 {
        secs += 1 << 32;
    }
    let frac = u128::from(ntp & 0xffff_ffff);
    // Rounded to the nearest nanosecond, without carrying into the next second.
    let nanos = (((frac * NANOS_PER_SEC + (1 << 31)) >> 32) as u64).min(999_999_999);
    let since_1900 = Duration::from_secs(secs) + Duration::from_nanos(nanos);
    match since_1900.checked_sub(Duration::from_secs(NTP_UNIX_OFFSET_SECS)) {
        Some(after) => UNIX_EPOCH + after,
        None => UNIX_EPOCH - (Duration::from_secs(NTP_UNIX_OFFSET_SECS) - since_1900),
    }
}

/// The middle 32 bits of a 64-bit NTP timestamp (16.16 seconds), as used for LSR (RFC 3550 6.4.1).
pub fn ntp_middle32(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Converts a 16.16 fixed-point NTP short value (e.g. DLSR) to a duration, rounded to the
/// nearest nanosecond.
pub fn ntp_short_to_duration(v: u32) -> Duration {
    let frac = u64::from(v & 0xffff);
    Duration::from_secs(u64::from(v >> 16))
        + Duration::from_nanos((frac * 1_000_000_000 + (1 << 15)) >> 16)
}

/// Converts a duration to 16.16 fixed-point NTP short format, rounded to the nearest unit
/// (1/65536 s) and saturating at `u32::MAX` (about 18.2 hours).
pub fn duration_to_ntp_short(d: Duration) -> u32 {
    let units = ((d.as_nanos() << 16) + NANOS_PER_SEC / 2) / NANOS_PER_SEC;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// `a - b` in nanoseconds for two 64-bit NTP timestamps of the same sender: the wallclock time
/// between two Sender Reports. Differences are taken modulo 2^64, so the 2036 era rollover
/// between them is harmless.
pub fn ntp_diff_ns(a: u64, b: u64) -> i64 {
    let diff = i128::from(a.wrapping_sub(b) as i64);
    ((diff * NANOS_PER_SEC as i128) >> 32) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_ntp_timestamps() {
        assert_eq!(
            duration_to_ntp(Duration::from_millis(1500)),
            (1 << 32) | (1 << 31)
        );
        assert_eq!(duration_to_ntp(Duration::ZERO), 0);
        // Seconds wrap like NTP eras; no overflow.
        assert_eq!(duration_to_ntp(Duration::from_secs(1 << 32)), 0);
        let _ = duration_to_ntp(Duration::MAX);
    }

    #[test]
    fn differences_between_ntp_timestamps() {
        let t = 0xb44d_b705_2000_0000u64;
        assert_eq!(ntp_diff_ns(t + (3 << 32), t), 3_000_000_000);
        assert_eq!(ntp_diff_ns(t, t + (1 << 31)), -500_000_000);
        // Across the era rollover (2036): still a small positive step.
        assert_eq!(ntp_diff_ns(1 << 30, u64::MAX - (1 << 30) + 1), 500_000_000);
    }

    #[test]
    fn unix_epoch_and_known_dates() {
        assert_eq!(system_time_to_ntp(UNIX_EPOCH), NTP_UNIX_OFFSET_SECS << 32);
        // RFC 3550 6.4.1 example: 10 Nov 1995 11:33:25.125 UTC = 0xb44db705:20000000.
        let t = UNIX_EPOCH + Duration::from_millis(816_003_205_125);
        assert_eq!(system_time_to_ntp(t), 0xb44d_b705_2000_0000);
        assert_eq!(ntp_to_system_time(0xb44d_b705_2000_0000), t);
        assert_eq!(ntp_middle32(0xb44d_b705_2000_0000), 0xb705_2000);
    }

    #[test]
    fn round_trips_with_nanosecond_precision() {
        for nanos in [0u64, 1, 999_999_999, 123_456_789, 500_000_000] {
            for secs in [
                0u64,
                1_700_000_000,
                2_085_978_495,
                2_085_978_496,
                4_000_000_000,
            ] {
                let t = UNIX_EPOCH + Duration::new(secs, nanos as u32);
                assert_eq!(
                    ntp_to_system_time(system_time_to_ntp(t)),
                    t,
                    "{secs}.{nanos}"
                );
            }
        }
    }

    #[test]
    fn era_wrap_in_2036() {
        // 2036-02-07 06:28:16 UTC is NTP second 2^32.
        let wrap = UNIX_EPOCH + Duration::from_secs((1 << 32) - NTP_UNIX_OFFSET_SECS);
        assert_eq!(system_time_to_ntp(wrap), 0);
        assert_eq!(ntp_to_system_time(0), wrap);
        assert!(ntp_to_system_time(u64::MAX) < wrap);
    }

    #[test]
    fn before_1900_clamps() {
        let t = UNIX_EPOCH - Duration::from_secs(NTP_UNIX_OFFSET_SECS + 10);
        assert_eq!(system_time_to_ntp(t), 0);
    }

    #[test]
    fn now_is_plausible() {
        let now = ntp_to_system_time(ntp_now());
        let diff = match now.duration_since(SystemTime::now()) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(diff < Duration::from_secs(5), "{diff:?}");
    }

    #[test]
    fn short_format() {
        assert_eq!(
            ntp_short_to_duration(0x0005_4000),
            Duration::from_millis(5250)
        );
        assert_eq!(
            duration_to_ntp_short(Duration::from_millis(5250)),
            0x0005_4000
        );
        assert_eq!(
            duration_to_ntp_short(Duration::from_secs(1 << 16)),
            u32::MAX
        );
        assert_eq!(duration_to_ntp_short(Duration::MAX), u32::MAX);
        assert_eq!(ntp_short_to_duration(1), Duration::from_nanos(15_259));
        for v in [0, 1, 0xffff, 0x1_0000, 0x1234_5678, u32::MAX] {
            assert_eq!(duration_to_ntp_short(ntp_short_to_duration(v)), v);
        }
    }
}
