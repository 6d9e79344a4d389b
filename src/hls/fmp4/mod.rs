//! Fragmented MP4 HLS segments: an initialisation segment per format (`EXT-X-MAP`) and media
//! segments of `styp` + `moof` + `mdat`, following CMAF's fragment rules (tfdt in every traf,
//! trun version 1, default-base-is-moof). Audio and video share the init segment and each
//! fragment (as muxed HLS does), so they are not separate CMAF tracks and the `cmf*` brands are
//! not claimed.
//!
//! Specifications: RFC 8216 §3.3 (fragmented MPEG-4 segments: a Media Initialization Section
//! with ftyp and moov, media segments of moof+mdat with tfdt), §4.3.2.5 (EXT-X-MAP), §7 (version
//! 6 for EXT-X-MAP); ISO/IEC 14496-12 and ISO/IEC 23000-19 (CMAF), see [`boxes`] for the boxes
//! and [`codec`] for the codec-specific parts.
//!
//! Box writing is our own ([`boxes`], one unit test per box kind), not a crate: the `mp4-atom`
//! crate (the maintained candidate; a general reader/writer of hundreds of box types) was
//! considered, but this needs fewer than 30 box kinds written, never read, and a writer with
//! no allocation per box beyond the output and no new dependency (nothing to build, audit or keep
//! compatible with rustc and `--locked`) is a few hundred lines. Decided in issue 13's fMP4 round.
//!
//! [`FragmentSegmenter`] takes samples per track in decode order (interleaved as the built-in TS
//! path interleaves them), cuts where the TS segmenter would ([`crate::hls::segmenter::Cuts`]:
//! announced keyframes, or the target duration at split points), and writes each segment as one
//! fragment. A sample's duration is the next sample's decode time minus its own (the last one of
//! a track at a cut: its buffer duration, else the previous duration), so the fragment's
//! timeline has no gaps. A segment is built from fragments ([`boxes::write_fragment`] writes one):
//! with LL-HLS parts a fragment per part, or, chunked (for the built-in server to stream the
//! part being filled), a fragment per video frame.
//!
//! Timestamps are the element's running time (ns) plus [`TIMESTAMP_OFFSET_NS`] (as the TS path
//! does), so that decode times before the first presentation time stay positive; composition
//! offsets are signed (trun version 1).

pub mod boxes;
pub mod codec;

use boxes::{FragmentSample, TrackRun};

#[cfg(test)]
use super::segmenter::SplitOn;
use super::segmenter::{CutReason, Cuts, Segment, SegmenterConfig};

/// Added to every timestamp (ns) before it is converted to a track's timescale.
pub const TIMESTAMP_OFFSET_NS: u64 = super::ts::TIMESTAMP_OFFSET_NS;

/// The sample description of a track (what goes into stsd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleEntry {
    /// `avc1` with an AVCDecoderConfigurationRecord.
    Avc {
        width: u16,
        height: u16,
        avcc: Vec<u8>,
    },
    /// `hvc1` with an HEVCDecoderConfigurationRecord (parameter sets in it).
    Hevc {
        width: u16,
        height: u16,
        hvcc: Vec<u8>,
    },
    /// `av01` with an AV1CodecConfigurationRecord.
    Av1 {
        width: u16,
        height: u16,
        av1c: Vec<u8>,
    },
    /// `mp4a` with an esds carrying this AudioSpecificConfig.
    Aac {
        channels: u16,
        rate: u32,
        asc: Vec<u8>,
    },
    /// `Opus` with dOps.
    Opus {
        channels: u16,
        pre_skip: u16,
        input_rate: u32,
        gain: i16,
        /// ChannelMappingFamily and its table, for families other than 0.
        mapping: Option<Vec<u8>>,
    },
}

impl SampleEntry {
    pub fn is_video(&self) -> bool {
        matches!(
            self,
            SampleEntry::Avc { .. } | SampleEntry::Hevc { .. } | SampleEntry::Av1 { .. }
        )
    }

    /// Width and height (video; 0x0 for audio).
    pub fn dimensions(&self) -> (u16, u16) {
        match self {
            SampleEntry::Avc { width, height, .. }
            | SampleEntry::Hevc { width, height, .. }
            | SampleEntry::Av1 { width, height, .. } => (*width, *height),
            _ => (0, 0),
        }
    }

    /// The sample entry's four-character code.
    pub fn fourcc(&self) -> &'static str {
        match self {
            SampleEntry::Avc { .. } => "avc1",
            SampleEntry::Hevc { .. } => "hvc1",
            SampleEntry::Av1 { .. } => "av01",
            SampleEntry::Aac { .. } => "mp4a",
            SampleEntry::Opus { .. } => "Opus",
        }
    }
}

/// One track of the init segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// Ticks per second of its timestamps: 90 kHz video, the sample rate for AAC, 48 kHz Opus.
    pub timescale: u32,
    pub entry: SampleEntry,
}

impl Track {
    /// The RFC 6381 codec string of the sample entry where the entry itself says more than caps
    /// do (the SPS's constraint flags): `avc1.PPCCLL` from the avcC, `hvc1....` from the hvcC.
    pub fn codecs(&self) -> Option<String> {
        match &self.entry {
            SampleEntry::Avc { avcc, .. } => Some(format!(
                "avc1.{:02X}{:02X}{:02X}",
                avcc.get(1)?,
                avcc.get(2)?,
                avcc.get(3)?
            )),
            SampleEntry::Hevc { hvcc, .. } => codec::hvc_codecs(hvcc),
            _ => None,
        }
    }

    /// The usual timescale for this entry.
    pub fn new(entry: SampleEntry) -> Track {
        let timescale = match &entry {
            SampleEntry::Aac { rate, .. } if *rate > 0 => *rate,
            SampleEntry::Aac { .. } | SampleEntry::Opus { .. } => 48000,
            _ => 90000,
        };
        Track { timescale, entry }
    }
}

/// One sample as the element hands it over (data already in ISO BMFF form, see [`codec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub data: Vec<u8>,
    /// Presentation and decode time (running time, ns; may be negative before the start).
    pub pts_ns: i64,
    pub dts_ns: i64,
    /// The buffer's duration, when it has one.
    pub duration_ns: Option<u64>,
    /// A sync sample (video keyframe; every audio sample).
    pub sync: bool,
}

/// ns → ticks of `timescale`, after [`TIMESTAMP_OFFSET_NS`]; saturating.
fn to_ticks(ns: i64, timescale: u32) -> u64 {
    let shifted = i128::from(ns) + i128::from(TIMESTAMP_OFFSET_NS);
    // Rounded to the nearest tick, so that 1/30 s frames are 3000 ticks apart at 90 kHz.
    let ticks = (shifted.max(0) * i128::from(timescale) + 500_000_000) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// A sample waiting for the next one of its track (which gives its duration).
struct Pending {
    sample: FragmentSample,
    dts: u64,
    /// From the buffer's duration, in ticks.
    hint: Option<u32>,
}

struct TrackState {
    timescale: u32,
    pending: Option<Pending>,
    last_duration: u32,
}

struct Open {
    start_ns: u64,
    discontinuity: bool,
    /// The samples of the fragment being filled (the current part).
    runs: Vec<TrackRun>,
    /// Samples pushed since it opened (pending ones included).
    samples: usize,
    /// The fragments already written (the segment's finished parts, and the chunks of the
    /// current one).
    fragments: Vec<u8>,
    /// Start of the current part (ns) and how many parts are finished.
    part_start_ns: u64,
    parts: u32,
    /// Chunked parts: the fragments of the current part written so far, and whether its first
    /// sample of the split track is a sync sample (known once one is written).
    part_data: Vec<u8>,
    part_independent: Option<bool>,
}

/// A finished LL-HLS part of the segment being filled: one moof+mdat fragment (several when
/// chunked, [`FragmentSegmenter::set_chunked`]; TS packets for the TS segmenter's parts).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Its index in its segment (from 0).
    pub index: u32,
    pub data: Vec<u8>,
    pub start_ns: u64,
    pub duration_ns: u64,
    /// It begins with a sync sample of the split track (EXT-X-PART INDEPENDENT=YES).
    pub independent: bool,
}

/// Cuts samples into fMP4 media segments (see the module doc).
pub struct FragmentSegmenter {
    cuts: Cuts,
    tracks: Vec<TrackState>,
    /// The track whose sync samples are split points: the first video track, else track 0.
    split_track: usize,
    current: Option<Open>,
    /// mfhd sequence number of the next fragment (from 1).
    fragment_sequence: u32,
    /// LL-HLS part duration (ns); 0 writes each segment as one fragment and reports no parts.
    part_ns: u64,
    /// Finished parts not yet taken ([`FragmentSegmenter::take_parts`]).
    ready: Vec<Part>,
    /// Write the current part as it fills, a fragment (CMAF chunk) per sample of the split
    /// track, so that it can be served while it is being written.
    chunked: bool,
}

impl FragmentSegmenter {
    pub fn new(config: SegmenterConfig) -> FragmentSegmenter {
        FragmentSegmenter {
            cuts: Cuts::new(config),
            tracks: Vec::new(),
            split_track: 0,
            current: None,
            fragment_sequence: 1,
            part_ns: 0,
            ready: Vec::new(),
            chunked: false,
        }
    }

    /// With parts: writes the part being filled as it fills, one fragment (a CMAF chunk:
    /// moof+mdat) for each sample of the split track once its duration is known (with the other
    /// tracks' samples before it), so that its bytes so far ([`FragmentSegmenter::open_part`])
    /// can be sent to a client that asked for it before it is complete. A part is then several
    /// fragments; the segment is still `styp` + its parts' bytes.
    pub fn set_chunked(&mut self, chunked: bool) {
        self.chunked = chunked;
    }

    pub fn is_chunked(&self) -> bool {
        self.chunked && self.part_ns > 0
    }

    /// The part being filled, with chunks: its index and the bytes written of it so far.
    pub fn open_part(&self) -> Option<(u32, &[u8])> {
        self.current
            .as_ref()
            .filter(|_| self.part_ns > 0)
            .map(|c| (c.parts, c.part_data.as_slice()))
    }

    /// Writes each segment as parts of about `part_ns` (a part closes at the first sample at or
    /// after that duration, within the cut tolerance), reported by
    /// [`FragmentSegmenter::take_parts`] as they finish. 0: one fragment per segment.
    pub fn set_part_duration(&mut self, part_ns: u64) {
        self.part_ns = part_ns;
    }

    /// The parts finished since the last call, in order. A segment returned by
    /// [`FragmentSegmenter::push`] (or [`FragmentSegmenter::finish`], `set_tracks`) is made of
    /// the parts taken before it and those returned with it: take them first.
    pub fn take_parts(&mut self) -> Vec<Part> {
        std::mem::take(&mut self.ready)
    }

    /// Index of the part being filled in the open segment: the next part to be finished (it
    /// holds at least the sample that opened it, so it is never skipped, whether it ends at its
    /// duration or at the segment's cut), for EXT-X-PRELOAD-HINT.
    pub fn open_part_index(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.parts)
    }

    pub fn cuts(&mut self) -> &mut Cuts {
        &mut self.cuts
    }

    pub fn current_start(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.start_ns)
    }

    /// New tracks (a new init segment): the segment being filled is closed (it belongs to the
    /// old init segment) and returned; the next one is a discontinuity when there was one.
    pub fn set_tracks(&mut self, tracks: &[Track]) -> Option<Segment> {
        let closed = if self.current.is_some() {
            self.cuts.discontinuity();
            let end = self.pending_end();
            self.flush_pending();
            self.close(end, CutReason::Discontinuity)
        } else {
            None
        };
        self.split_track = tracks.iter().position(|t| t.entry.is_video()).unwrap_or(0);
        self.tracks = tracks
            .iter()
            .map(|t| TrackState {
                timescale: t.timescale,
                pending: None,
                last_duration: 0,
            })
            .collect();
        closed
    }

    /// The latest decode end of what is pending or queued (ns on the Cuts clock), for closing a
    /// segment where the data ends.
    fn pending_end(&self) -> u64 {
        let mut end = self.current.as_ref().map_or(0, |c| c.start_ns);
        for t in &self.tracks {
            if let Some(p) = &t.pending {
                let d = p.hint.unwrap_or(t.last_duration);
                let ticks = p.dts.saturating_add(u64::from(d));
                let ns = u128::from(ticks) * 1_000_000_000 / u128::from(t.timescale.max(1));
                let ns = u64::try_from(ns)
                    .unwrap_or(u64::MAX)
                    .saturating_sub(TIMESTAMP_OFFSET_NS);
                end = end.max(ns);
            }
        }
        end
    }

    /// Feeds one sample of track `track` (decode order per track, tracks interleaved by decode
    /// time). Returns the segment it completed, if any.
    pub fn push(&mut self, track: usize, sample: Sample) -> Option<Segment> {
        let Some(state) = self.tracks.get_mut(track) else {
            log::debug!("sample for unknown track {track} dropped");
            return None;
        };
        let stamp = self
            .cuts
            .saw(Some(u64::try_from(sample.dts_ns).unwrap_or(0)));
        let dts = to_ticks(sample.dts_ns, state.timescale);
        let pts = to_ticks(sample.pts_ns, state.timescale);
        let offset = i64::try_from(pts)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(dts).unwrap_or(i64::MAX));
        let hint = sample.duration_ns.and_then(|d| {
            let ticks = (u128::from(d) * u128::from(state.timescale) + 500_000_000) / 1_000_000_000;
            u32::try_from(ticks).ok().filter(|t| *t > 0)
        });
        // The previous sample of this track is complete now: its duration is known.
        if let Some(p) = state.pending.take() {
            let delta = dts
                .checked_sub(p.dts)
                .and_then(|d| u32::try_from(d).ok())
                .filter(|d| *d > 0);
            let duration = delta.or(p.hint).unwrap_or(state.last_duration);
            Self::append(
                &mut self.current,
                track,
                p,
                duration,
                &mut state.last_duration,
            );
        }
        let split_point = sample.sync && track == self.split_track;
        let mut completed = None;
        if split_point
            && let Some((start, reason)) = self.cuts.decide(
                stamp,
                true,
                self.current.as_ref().map(|c| (c.start_ns, c.samples == 0)),
            )
        {
            // What other tracks hold back belongs to the segment being closed.
            self.flush_pending();
            completed = self.close(start, reason);
            self.open(start);
        }
        // A part closes before the sample of the split track that would take it past its
        // duration (PART-TARGET is a maximum, RFC 8216bis §4.4.3.7; 1 ms for rounding), or, for
        // samples without a duration, at the first one at or after it (within the tolerance).
        // The other tracks' samples arrive interleaved by decode time: those before it are in it.
        let part_end = self
            .current
            .as_ref()
            .map(|c| c.part_start_ns.saturating_add(self.part_ns));
        let part_due = part_end.is_some_and(|end| match sample.duration_ns {
            Some(d) if d > 0 => stamp.saturating_add(d) > end.saturating_add(1_000_000),
            _ => stamp.saturating_add(self.cuts.config().tolerance_ns) >= end,
        });
        if self.part_ns > 0
            && track == self.split_track
            && part_due
            && let Some(c) = self.current.as_ref()
            && c.runs.iter().any(|r| !r.samples.is_empty())
        {
            self.flush_pending();
            self.close_part(stamp);
        } else if self.chunked
            && self.part_ns > 0
            && track == self.split_track
            && let Some(c) = self.current.as_mut()
            && c.runs.iter().any(|r| !r.samples.is_empty())
        {
            // The previous sample of this track is complete: it goes out as a chunk of the
            // part, with the other tracks' samples that came before it.
            Self::write_chunk(c, self.split_track, &mut self.fragment_sequence);
        }
        if self.current.is_none() {
            self.open(stamp);
        }
        if let Some(c) = self.current.as_mut() {
            c.samples += 1;
        }
        self.tracks[track].pending = Some(Pending {
            sample: FragmentSample {
                data: sample.data,
                duration: 0,
                composition_offset: i32::try_from(offset).unwrap_or(if offset < 0 {
                    i32::MIN
                } else {
                    i32::MAX
                }),
                sync: sample.sync,
            },
            dts,
            hint,
        });
        completed
    }

    /// Moves every held-back sample into the open segment, with its buffer's duration (else
    /// its track's previous one): the next sample of its track will be in another segment.
    fn flush_pending(&mut self) {
        for (i, t) in self.tracks.iter_mut().enumerate() {
            if let Some(p) = t.pending.take() {
                let duration = p.hint.unwrap_or(t.last_duration);
                Self::append(&mut self.current, i, p, duration, &mut t.last_duration);
            }
        }
    }

    fn open(&mut self, start_ns: u64) {
        self.current = Some(Open {
            start_ns,
            discontinuity: self.cuts.take_discontinuity(),
            runs: vec![TrackRun::default(); self.tracks.len()],
            samples: 0,
            fragments: Vec::new(),
            part_start_ns: start_ns,
            parts: 0,
            part_data: Vec::new(),
            part_independent: None,
        });
    }

    fn append(
        current: &mut Option<Open>,
        track: usize,
        p: Pending,
        duration: u32,
        last_duration: &mut u32,
    ) {
        *last_duration = duration;
        let Some(run) = current.as_mut().and_then(|c| c.runs.get_mut(track)) else {
            return;
        };
        if run.samples.is_empty() {
            run.base_decode_time = p.dts;
        }
        let mut s = p.sample;
        s.duration = duration;
        run.samples.push(s);
    }

    /// Writes the samples in `c`'s runs as a fragment of its current part.
    fn write_chunk(c: &mut Open, split_track: usize, fragment_sequence: &mut u32) {
        let size: usize = c
            .runs
            .iter()
            .flat_map(|r| r.samples.iter().map(|s| s.data.len() + 16))
            .sum();
        c.part_data.reserve(size + 256);
        let start = c.part_data.len();
        boxes::write_fragment(&mut c.part_data, *fragment_sequence, &c.runs);
        *fragment_sequence = fragment_sequence.wrapping_add(1).max(1);
        if c.part_independent.is_none() {
            c.part_independent = c
                .runs
                .get(split_track)
                .and_then(|r| r.samples.first())
                .map(|s| s.sync);
        }
        for r in &mut c.runs {
            *r = TrackRun::default();
        }
        c.fragments.extend_from_slice(&c.part_data[start..]);
    }

    /// Writes the samples of the open segment's current part as a fragment (its last one, with
    /// chunks), ending the part at `end_ns` (reported as a part when parts are on).
    fn close_part(&mut self, end_ns: u64) {
        let Some(c) = self.current.as_mut() else {
            return;
        };
        if c.runs.iter().any(|r| !r.samples.is_empty()) {
            Self::write_chunk(c, self.split_track, &mut self.fragment_sequence);
        }
        if c.part_data.is_empty() {
            return;
        }
        let data = std::mem::take(&mut c.part_data);
        let independent = c.part_independent.take().unwrap_or(false);
        if self.part_ns > 0 {
            self.ready.push(Part {
                index: c.parts,
                data,
                start_ns: c.part_start_ns,
                duration_ns: end_ns.saturating_sub(c.part_start_ns),
                independent,
            });
        }
        c.parts += 1;
        c.part_start_ns = end_ns;
    }

    /// Closes the open segment at `end_ns`: a styp and its fragments (its parts).
    fn close(&mut self, end_ns: u64, reason: CutReason) -> Option<Segment> {
        self.close_part(end_ns);
        let c = self.current.take()?;
        if c.fragments.is_empty() {
            return None;
        }
        let mut data = Vec::with_capacity(c.fragments.len() + 32);
        boxes::write_styp(&mut data);
        data.extend_from_slice(&c.fragments);
        Some(Segment {
            reason,
            data,
            start_ns: c.start_ns,
            duration_ns: end_ns.saturating_sub(c.start_ns),
            discontinuity: c.discontinuity,
        })
    }

    /// Closes the segment being filled (end of stream, stop), with every held-back sample.
    pub fn finish(&mut self) -> Option<Segment> {
        self.flush_pending();
        let end = self.cuts.end()?;
        self.close(end, CutReason::End)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn tracks() -> Vec<Track> {
        vec![
            Track::new(SampleEntry::Avc {
                width: 320,
                height: 240,
                avcc: vec![1, 0x42, 0xc0, 0x1e, 0xff, 0xe0, 0],
            }),
            Track::new(SampleEntry::Aac {
                channels: 1,
                rate: 48000,
                asc: vec![0x11, 0x88],
            }),
        ]
    }

    #[test]
    fn codec_strings_come_from_the_sample_entry() {
        let t = tracks();
        assert_eq!(t[0].codecs().as_deref(), Some("avc1.42C01E"), "flags kept");
        assert_eq!(t[1].codecs(), None, "AAC: from caps");
        let short = Track::new(SampleEntry::Avc {
            width: 1,
            height: 1,
            avcc: vec![1, 0x42],
        });
        assert_eq!(short.codecs(), None);
    }

    fn video(i: u64, gop: u64) -> Sample {
        let t = (i * SEC / 30) as i64;
        Sample {
            data: vec![i as u8; 3],
            pts_ns: t,
            dts_ns: t,
            duration_ns: Some(SEC / 30),
            sync: i.is_multiple_of(gop),
        }
    }

    fn audio(i: u64) -> Sample {
        let t = (i * 1024 * SEC / 48000) as i64;
        Sample {
            data: vec![0xaa; 2],
            pts_ns: t,
            dts_ns: t,
            duration_ns: Some(1024 * SEC / 48000),
            sync: true,
        }
    }

    /// Parses a segment's trun sample counts and durations per track (ID order).
    fn runs(seg: &[u8]) -> Vec<(u64, Vec<u32>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(pos) = seg[i..].windows(4).position(|w| w == b"tfdt") {
            let tfdt = i + pos - 4;
            let base = u64::from_be_bytes(seg[tfdt + 12..tfdt + 20].try_into().unwrap());
            let trun = tfdt + 20;
            assert_eq!(&seg[trun + 4..trun + 8], b"trun");
            let flags = u32::from_be_bytes(seg[trun + 8..trun + 12].try_into().unwrap()) & 0xffffff;
            let count = u32::from_be_bytes(seg[trun + 12..trun + 16].try_into().unwrap());
            let per = if flags & 0x800 != 0 { 16 } else { 12 };
            let durations = (0..count as usize)
                .map(|n| {
                    let at = trun + 20 + n * per;
                    u32::from_be_bytes(seg[at..at + 4].try_into().unwrap())
                })
                .collect();
            out.push((base, durations));
            i = trun;
        }
        out
    }

    #[test]
    fn parts_never_exceed_the_part_target() {
        let mut s = FragmentSegmenter::new(SegmenterConfig {
            target_ns: SEC,
            tolerance_ns: SEC / 60,
            split_on: SplitOn::Keyframes,
        });
        // 0.33 s: ten 1/30 s frames would be 0.3333 s.
        s.set_part_duration(330_000_000);
        s.set_tracks(&tracks()[..1]);
        let mut parts = Vec::new();
        for i in 0..90 {
            s.push(0, video(i, 30));
            parts.extend(s.take_parts());
        }
        let d: Vec<u64> = parts.iter().map(|p| p.duration_ns / 1_000_000).collect();
        assert!(d.iter().all(|d| *d <= 330), "{d:?}");
        assert_eq!(
            &d[..4],
            [300, 300, 300, 100],
            "nine frames, and the rest of the second"
        );
    }

    #[test]
    fn parts_make_up_their_segment() {
        let mut s = FragmentSegmenter::new(SegmenterConfig {
            target_ns: 2 * SEC,
            tolerance_ns: SEC / 60,
            split_on: SplitOn::Keyframes,
        });
        s.set_part_duration(SEC / 2);
        assert!(s.set_tracks(&tracks()).is_none());
        let mut segments = Vec::new();
        let mut parts: Vec<Vec<Part>> = vec![Vec::new()];
        let mut a = 0;
        let mut hints = Vec::new();
        for i in 0..150 {
            while a * 1024 * 30 < i * 48000 {
                assert!(s.push(1, audio(a)).is_none() || a == 0);
                parts.last_mut().unwrap().extend(s.take_parts());
                a += 1;
            }
            let seg = s.push(0, video(i, 60));
            parts.last_mut().unwrap().extend(s.take_parts());
            if let Some(seg) = seg {
                segments.push(seg);
                parts.push(Vec::new());
                hints.push(s.open_part_index());
            }
            if i == 20 {
                // Frame 15 started part 1, which holds frames 15 to 20 so far.
                assert_eq!(s.open_part_index(), Some(1));
            }
        }
        s.cuts().note_end(150 * SEC / 30);
        segments.extend(s.finish());
        parts.last_mut().unwrap().extend(s.take_parts());
        assert_eq!(segments.len(), 3);
        assert_eq!(hints, [Some(0), Some(0)]);
        for (seg, parts) in segments.iter().zip(&parts) {
            // styp, then the parts' fragments in order.
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.data.clone()).collect();
            assert_eq!(&seg.data[seg.data.len() - joined.len()..], &joined[..]);
            assert_eq!(&seg.data[4..8], b"styp");
            assert_eq!(
                seg.data.len() - joined.len(),
                20,
                "only the styp before the parts"
            );
            let idx: Vec<u32> = parts.iter().map(|p| p.index).collect();
            let d: Vec<u64> = parts.iter().map(|p| p.duration_ns).collect();
            let indep: Vec<bool> = parts.iter().map(|p| p.independent).collect();
            if seg.duration_ns == 2 * SEC {
                assert_eq!(idx, [0, 1, 2, 3]);
                assert_eq!(d, [SEC / 2; 4]);
                assert_eq!(indep, [true, false, false, false]);
            } else {
                assert_eq!(d, [SEC / 2, SEC / 2]);
            }
            assert_eq!(parts[0].start_ns, seg.start_ns);
            assert_eq!(d.iter().sum::<u64>(), seg.duration_ns);
            // Each part is a moof + mdat of its own, with a traf for each track.
            for p in parts {
                assert_eq!(&p.data[4..8], b"moof");
                assert_eq!(runs(&p.data).len(), 2);
            }
        }
    }

    /// Chunked parts: the bytes of the part being filled grow a fragment per video frame, each
    /// state a prefix of the finished part, which is the same samples as unchunked (same
    /// durations, sync flags and INDEPENDENT), and the segment is still styp + its parts.
    #[test]
    fn chunked_parts_grow_by_whole_fragments_into_the_part() {
        let config = SegmenterConfig {
            target_ns: SEC,
            tolerance_ns: SEC / 60,
            split_on: SplitOn::Keyframes,
        };
        let mut plain = FragmentSegmenter::new(config.clone());
        let mut chunked = FragmentSegmenter::new(config);
        for s in [&mut plain, &mut chunked] {
            s.set_part_duration(SEC / 5);
            s.set_tracks(&tracks());
        }
        chunked.set_chunked(true);
        assert!(plain.open_part().is_none());
        let (mut plain_parts, mut parts, mut segments) = (Vec::new(), Vec::new(), Vec::new());
        // Each state of the open part: (index, bytes so far).
        let mut seen: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut a = 0;
        for i in 0..75 {
            while a * 1024 * 30 < i * 48000 {
                plain.push(1, audio(a));
                segments.extend(chunked.push(1, audio(a)));
                a += 1;
            }
            plain.push(0, video(i, 30));
            segments.extend(chunked.push(0, video(i, 30)));
            plain_parts.extend(plain.take_parts());
            parts.extend(chunked.take_parts());
            let (index, bytes) = chunked.open_part().expect("a part being filled");
            seen.push((index, bytes.to_vec()));
        }
        for s in [&mut plain, &mut chunked] {
            s.cuts().note_end(75 * SEC / 30);
        }
        plain.finish();
        segments.extend(chunked.finish());
        plain_parts.extend(plain.take_parts());
        parts.extend(chunked.take_parts());
        assert_eq!(segments.len(), 3);
        assert_eq!(parts.len(), plain_parts.len());
        for (p, q) in parts.iter().zip(&plain_parts) {
            assert_eq!(
                (p.index, p.start_ns, p.duration_ns, p.independent),
                (q.index, q.start_ns, q.duration_ns, q.independent)
            );
            // The same samples, in several fragments: one per video frame.
            let (runs_p, runs_q) = (runs(&p.data), runs(&q.data));
            let samples = |r: &[(u64, Vec<u32>)]| r.iter().map(|(_, d)| d.len()).sum::<usize>();
            assert_eq!(samples(&runs_p), samples(&runs_q));
            let moofs = p.data.windows(4).filter(|w| w == b"moof").count();
            let frames = (p.duration_ns + SEC / 60) / (SEC / 30);
            assert_eq!(moofs as u64, frames, "fragments of part {}", p.index);
        }
        // Every state seen of an open part is a prefix of that part once finished, and it
        // grew before the part was finished.
        for (index, bytes) in &seen {
            let part = parts
                .iter()
                .find(|p| p.index == *index && p.data.starts_with(bytes));
            assert!(
                part.is_some() || bytes.is_empty(),
                "part {index}: no prefix"
            );
        }
        assert!(seen.iter().filter(|(_, b)| !b.is_empty()).count() >= 40);
        for seg in &segments {
            assert_eq!(&seg.data[4..8], b"styp");
        }
        let first: Vec<u8> = parts
            .iter()
            .take_while(|p| p.start_ns < SEC)
            .flat_map(|p| p.data.clone())
            .collect();
        assert_eq!(&segments[0].data[20..], &first[..]);
    }

    #[test]
    fn cuts_at_keyframes_and_keeps_every_sample_once() {
        let mut s = FragmentSegmenter::new(SegmenterConfig {
            target_ns: 2 * SEC,
            tolerance_ns: 0,
            split_on: SplitOn::Keyframes,
        });
        assert!(s.set_tracks(&tracks()).is_none());
        let mut out = Vec::new();
        let mut a = 0;
        for i in 0..150 {
            // Audio interleaved by decode time.
            while a * 1024 * 30 < i * 48000 {
                out.extend(s.push(1, audio(a)));
                a += 1;
            }
            out.extend(s.push(0, video(i, 30)));
        }
        s.cuts().note_end(150 * SEC / 30);
        out.extend(s.finish());
        let d: Vec<u64> = out.iter().map(|s| s.duration_ns).collect();
        assert_eq!(d, [2 * SEC, 2 * SEC, SEC]);
        let mut video_samples = 0;
        let mut audio_samples = 0;
        let mut next_video = to_ticks(0, 90000);
        let mut next_audio = to_ticks(0, 48000);
        for seg in &out {
            assert_eq!(&seg.data[4..8], b"styp");
            let r = runs(&seg.data);
            assert_eq!(r.len(), 2, "a traf per track");
            // Each track's timeline continues where the previous segment ended.
            assert_eq!(r[0].0, next_video);
            assert_eq!(r[1].0, next_audio);
            next_video += r[0].1.iter().map(|d| u64::from(*d)).sum::<u64>();
            next_audio += r[1].1.iter().map(|d| u64::from(*d)).sum::<u64>();
            assert!(r[0].1.iter().all(|d| *d == 3000), "{:?}", r[0].1);
            assert!(r[1].1.iter().all(|d| *d == 1024));
            video_samples += r[0].1.len();
            audio_samples += r[1].1.len();
        }
        assert_eq!(video_samples, 150);
        assert_eq!(audio_samples, a as usize);
        // The first video sample of every segment is a keyframe (sync flags).
        for seg in &out {
            let trun = seg.data.windows(4).position(|w| w == b"trun").unwrap() - 4;
            assert_eq!(
                &seg.data[trun + 28..trun + 32],
                boxes::SYNC_SAMPLE_FLAGS.to_be_bytes()
            );
        }
    }

    #[test]
    fn composition_offsets_for_b_frames() {
        let mut s = FragmentSegmenter::new(SegmenterConfig {
            target_ns: 10 * SEC,
            tolerance_ns: 0,
            split_on: SplitOn::Keyframes,
        });
        s.set_tracks(&tracks()[..1]);
        let f = (SEC / 30) as i64;
        // I P B: decode 0,1,2 (minus one frame), presentation 0,2,1.
        for (pts, dts, sync) in [(0, -1, true), (2, 0, false), (1, 1, false)] {
            s.push(
                0,
                Sample {
                    data: vec![1],
                    pts_ns: pts * f,
                    dts_ns: dts * f,
                    duration_ns: Some(f as u64),
                    sync,
                },
            );
        }
        let seg = s.finish().unwrap();
        let trun = seg.data.windows(4).position(|w| w == b"trun").unwrap() - 4;
        let offsets: Vec<i32> = (0..3)
            .map(|n| {
                let at = trun + 20 + n * 16 + 12;
                i32::from_be_bytes(seg.data[at..at + 4].try_into().unwrap())
            })
            .collect();
        assert_eq!(offsets, [3000, 6000, 0]);
        let tfdt = seg.data.windows(4).position(|w| w == b"tfdt").unwrap() - 4;
        assert_eq!(
            u64::from_be_bytes(seg.data[tfdt + 12..tfdt + 20].try_into().unwrap()),
            90000 - 3000
        );
    }

    #[test]
    fn new_tracks_close_the_segment_and_mark_a_discontinuity() {
        let mut s = FragmentSegmenter::new(SegmenterConfig {
            target_ns: 10 * SEC,
            tolerance_ns: 0,
            split_on: SplitOn::Keyframes,
        });
        s.set_tracks(&tracks()[..1]);
        for i in 0..10 {
            assert!(s.push(0, video(i, 30)).is_none());
        }
        let first = s.set_tracks(&tracks()[..1]).expect("closed");
        assert_eq!(first.reason, CutReason::Discontinuity);
        assert_eq!(first.duration_ns, 10 * SEC / 30);
        assert!(!first.discontinuity);
        assert_eq!(runs(&first.data)[0].1.len(), 10);
        s.push(0, video(30, 30));
        s.cuts().note_end(31 * SEC / 30);
        let second = s.finish().unwrap();
        assert!(second.discontinuity);
        assert_eq!(second.start_ns, SEC);
    }

    #[test]
    fn audio_only_cuts_at_any_sample_and_mfhd_counts_up() {
        let mut s = FragmentSegmenter::new(SegmenterConfig {
            target_ns: SEC,
            tolerance_ns: 0,
            split_on: SplitOn::PesStart,
        });
        s.set_tracks(&tracks()[1..]);
        let mut out = Vec::new();
        for a in 0..100 {
            out.extend(s.push(0, audio(a)));
        }
        s.cuts().note_end(100 * 1024 * SEC / 48000);
        out.extend(s.finish());
        assert_eq!(out.len(), 3);
        let total: usize = out.iter().map(|s| runs(&s.data)[0].1.len()).sum();
        assert_eq!(total, 100);
        for (n, seg) in out.iter().enumerate() {
            let mfhd = seg.data.windows(4).position(|w| w == b"mfhd").unwrap() - 4;
            assert_eq!(
                u32::from_be_bytes(seg.data[mfhd + 12..mfhd + 16].try_into().unwrap()),
                n as u32 + 1
            );
        }
    }

    #[test]
    fn samples_for_unknown_tracks_and_hostile_times_do_not_panic() {
        let mut s = FragmentSegmenter::new(SegmenterConfig {
            target_ns: SEC,
            tolerance_ns: 0,
            split_on: SplitOn::Keyframes,
        });
        assert!(s.push(0, video(0, 1)).is_none());
        s.set_tracks(&tracks());
        for (pts, dts) in [(i64::MAX, i64::MIN), (i64::MIN, i64::MAX), (0, i64::MAX)] {
            s.push(
                0,
                Sample {
                    data: vec![],
                    pts_ns: pts,
                    dts_ns: dts,
                    duration_ns: Some(u64::MAX),
                    sync: true,
                },
            );
        }
        let _ = s.finish();
    }
}
