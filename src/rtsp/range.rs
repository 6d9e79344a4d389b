//! Normal Play Time ranges: the `Range` header of PLAY answers and the SDP `a=range:` attribute
//! (RFC 2326 §3.6 and §12.29, RFC 7826 §4.4.2 and §18.40, RFC 4566 §6 via RFC 2326 C.1.5).
//!
//! Specifications: RFC 2326 §3.6, §12.29; RFC 7826 §4.4.2, §18.40.
//!
//! `npt=0-`, `npt=now-`, `npt=10.5-20`, `npt=-20`, `npt=00:01:02.5-`: the times are parsed by
//! `rtsp-types`' typed [`rtsp_types::headers::NptRange`]; around it this module accepts what
//! servers write besides the grammar (spaces around `=` and `-`, `NPT` in capitals, a `;time=`
//! parameter, a start without `-`) and rejects what the typed parser would let through (a sign,
//! extra `:` fields). Bad input is None, never a panic; times too large for a [`Duration`] are bad
//! input.

use std::time::Duration;

use rtsp_types::headers::{NptRange as TypedRange, NptTime as TypedTime};

/// One end of an NPT range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NptTime {
    /// `now`: the live position.
    Now,
    /// A position from the start of the presentation.
    At(Duration),
}

impl NptTime {
    /// The position, None for `now`.
    pub fn position(self) -> Option<Duration> {
        match self {
            NptTime::Now => None,
            NptTime::At(d) => Some(d),
        }
    }

    fn from_typed(t: TypedTime) -> Option<Self> {
        let secs_nanos = |secs: u64, nanos: Option<u32>| {
            let nanos = nanos.unwrap_or(0);
            (nanos < 1_000_000_000).then(|| Duration::new(secs, nanos))
        };
        Some(match t {
            TypedTime::Now => NptTime::Now,
            TypedTime::Seconds(secs, nanos) => NptTime::At(secs_nanos(secs, nanos)?),
            TypedTime::Hms(h, m, s, nanos) => {
                if m >= 60 || s >= 60 {
                    return None;
                }
                let secs = h
                    .checked_mul(3600)?
                    .checked_add(u64::from(m) * 60 + u64::from(s))?;
                NptTime::At(secs_nanos(secs, nanos)?)
            }
        })
    }
}

/// An NPT range: `start` and `end`, each absent when open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NptRange {
    pub start: Option<NptTime>,
    pub end: Option<NptTime>,
}

impl NptRange {
    /// Parses `npt=A-B` leniently (see the module documentation). None for anything else,
    /// including other units (`clock=`, `smpte=`) and a range with neither end.
    pub fn parse(s: &str) -> Option<Self> {
        let (unit, value) = s.trim().split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("npt") {
            return None;
        }
        // RFC 2326 §12.29 allows `;time=<utc>` (when to play) after the range.
        let value = value.split_once(';').map_or(value, |(v, _)| v);
        // Lenient: a lone start (`npt=10`) is taken as an open range from it.
        let (a, b) = value.split_once('-').unwrap_or((value, ""));
        let (a, b) = (a.trim(), b.trim());
        // rtsp-types parses the numbers with `str::parse`, which would take a sign, and ignores
        // fields after the third of h:m:s.
        let plain = |t: &str| {
            t == "now"
                || (t
                    .bytes()
                    .all(|c| c.is_ascii_digit() || c == b':' || c == b'.')
                    && t.bytes().filter(|&c| c == b':').count() <= 2)
        };
        if !plain(a) || !plain(b) {
            return None;
        }
        let typed: TypedRange = format!("npt={a}-{b}").parse().ok()?;
        let (start, end) = match typed {
            TypedRange::Empty => return None,
            TypedRange::From(s) => (Some(s), None),
            TypedRange::FromTo(s, e) => (Some(s), Some(e)),
            TypedRange::To(e) => (None, Some(e)),
        };
        let start = start.map(NptTime::from_typed);
        let end = end.map(NptTime::from_typed);
        // A present end that does not convert makes the whole range bad.
        Some(Self {
            start: start.map_or(Some(None), |t| t.map(Some))?,
            end: end.map_or(Some(None), |t| t.map(Some))?,
        })
    }

    /// The start position; None when open or `now`.
    pub fn start_position(&self) -> Option<Duration> {
        self.start.and_then(NptTime::position)
    }

    /// The end position (the presentation's length in an SDP `a=range:npt=0-L`); None when open
    /// or `now`.
    pub fn end_position(&self) -> Option<Duration> {
        self.end.and_then(NptTime::position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> Option<NptTime> {
        Some(NptTime::At(Duration::new(secs, nanos)))
    }

    fn range(start: Option<NptTime>, end: Option<NptTime>) -> Option<NptRange> {
        Some(NptRange { start, end })
    }

    #[test]
    fn the_forms_servers_send() {
        assert_eq!(NptRange::parse("npt=0-"), range(at(0, 0), None));
        assert_eq!(NptRange::parse("npt=now-"), range(Some(NptTime::Now), None));
        assert_eq!(
            NptRange::parse("npt=10.5-20"),
            range(at(10, 500_000_000), at(20, 0))
        );
        assert_eq!(NptRange::parse("npt=-20"), range(None, at(20, 0)));
        assert_eq!(
            NptRange::parse("npt=00:01:02.5-"),
            range(at(62, 500_000_000), None)
        );
        assert_eq!(
            NptRange::parse("npt=1:00:00-2:30:00.125"),
            range(at(3600, 0), at(9000, 125_000_000))
        );
        assert_eq!(
            NptRange::parse("npt=0.000-12.3456789012"),
            None,
            "more than nanoseconds"
        );
        assert_eq!(
            NptRange::parse("npt=0.000-12.345678"),
            range(at(0, 0), at(12, 345_678_000))
        );
        let r = NptRange::parse("npt=now-").unwrap();
        assert_eq!((r.start_position(), r.end_position()), (None, None));
        let r = NptRange::parse("npt=3-12.5").unwrap();
        assert_eq!(r.start_position(), Some(Duration::from_secs(3)));
        assert_eq!(r.end_position(), Some(Duration::from_millis(12_500)));
    }

    #[test]
    fn odd_spacing_case_and_parameters() {
        let want = range(at(10, 500_000_000), at(20, 0));
        for s in [
            " npt=10.5-20 ",
            "npt = 10.5 - 20",
            "npt=10.5 -20\r\n",
            "NPT=10.5-20",
            "npt=10.5-20;time=19970123T143720Z",
            "\tnpt =10.5-\t20 ; time=x",
        ] {
            assert_eq!(NptRange::parse(s), want, "{s:?}");
        }
        assert_eq!(NptRange::parse("npt=10"), range(at(10, 0), None));
        assert_eq!(
            NptRange::parse("npt = now - "),
            range(Some(NptTime::Now), None)
        );
    }

    #[test]
    fn bad_input_is_none() {
        for s in [
            "",
            "npt",
            "npt=",
            "npt=-",
            "npt= - ",
            "npt=abc-",
            "npt=+5-",
            "npt=-+5",
            "npt=5--6",
            "npt=-5-10",
            "npt=1e3-",
            "npt=1.-",
            "npt=.5-",
            "npt=1:2:3:4-",
            "npt=1:60:00-",
            "npt=1:00:60-",
            "npt=1::2-",
            "npt=nan-",
            "npt=inf-",
            "npt=99999999999999999999-",
            "npt=5124095576030431:00:16-",
            "npt=18446744073709551615:00:00-",
            "clock=19961108T142300Z-19961108T143520Z",
            "smpte=10:12:33:20-",
            "npt=now-now now",
            "npt=1 0-",
            "npt=10.5-20\u{0}",
            "npt=\u{1F600}-",
        ] {
            assert_eq!(NptRange::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn the_largest_times_convert_without_overflow() {
        let max = u64::MAX;
        assert_eq!(
            NptRange::parse(&format!("npt={max}.999999999-")),
            range(at(max, 999_999_999), None)
        );
        // 5124095576030431 h 15 s is u64::MAX seconds (one more is refused, see above).
        let h = u64::MAX / 3600;
        assert_eq!(
            NptRange::parse(&format!("npt={h}:00:15.5-")),
            range(at(u64::MAX, 500_000_000), None)
        );
    }
}
