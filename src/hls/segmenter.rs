//! Cuts a continuous MPEG transport stream into HLS segments.
//!
//! Specifications: RFC 8216 §3 and §3.2 (MPEG-2 TS segments, each with PAT and PMT, decodable on
//! its own), §4.3.3.1 (no segment longer than the target duration); ISO/IEC 13818-1 §2.4.3.2
//! (188-byte packets).
//!
//! The input is what a TS muxer emits: chunks of whole 188-byte packets, each chunk with a
//! presentation time (ns) and whether it may start a segment (the muxer flags the packets that
//! open a video keyframe). A segment is closed at the first split point at least
//! `target - tolerance` after its start, so with keyframes where the element asks for them no
//! segment runs longer than the target. Every segment starts with the latest PAT and PMT, so each
//! one decodes on its own.
//!
//! RFC 8216 §3 and §3.2 (MPEG-2 transport stream segments), ISO/IEC 13818-1 §2.4 (packets, PSI).

use std::collections::HashMap;

pub use super::fmp4::Part;

pub const TS_PACKET_SIZE: usize = 188;
const SYNC_BYTE: u8 = 0x47;

/// Where segments may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitOn {
    /// Chunks the muxer marked as a keyframe start (streams with video).
    Keyframes,
    /// Any packet that starts a PES packet of an elementary stream (audio-only streams).
    PesStart,
}

#[derive(Debug, Clone)]
pub struct SegmenterConfig {
    /// Target segment duration in ns; 0 cuts at every split point.
    pub target_ns: u64,
    /// A segment may be closed this much (ns) before the target, e.g. one frame, so that a
    /// keyframe requested just before the target still closes it.
    pub tolerance_ns: u64,
    pub split_on: SplitOn,
}

/// Why a segment was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// A split point arrived at least `target - tolerance` after the segment's start.
    TargetReached,
    /// The keyframe the element asked for at this boundary arrived ([`Segmenter::split_at`]).
    Requested,
    /// A discontinuity (format change, restart) was pending.
    Discontinuity,
    /// The stream ended or stopped ([`Segmenter::finish`]).
    End,
}

impl std::fmt::Display for CutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CutReason::TargetReached => "target duration reached at a split point",
            CutReason::Requested => "the requested keyframe for the boundary arrived",
            CutReason::Discontinuity => "discontinuity (format change)",
            CutReason::End => "end of the input",
        })
    }
}

/// A finished segment: complete transport stream data and its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Why it ends where it does.
    pub reason: CutReason,
    pub data: Vec<u8>,
    /// Start time (ns, the muxer's time base).
    pub start_ns: u64,
    pub duration_ns: u64,
    /// The first segment after a discontinuity (format change, restart).
    pub discontinuity: bool,
}

struct Current {
    data: Vec<u8>,
    start_ns: u64,
    discontinuity: bool,
    /// LL-HLS parts: where the current part starts in `data`, when, whether it starts with a
    /// keyframe, and how many parts are finished.
    part_offset: usize,
    part_start_ns: u64,
    part_independent: bool,
    parts: u32,
}

/// When segments are cut, whatever they carry: the rules shared by the TS [`Segmenter`] and the
/// fMP4 one ([`crate::hls::fmp4::FragmentSegmenter`]). The container side says where split points
/// are and whether a segment is open; this decides whether to cut there and where the new segment
/// starts.
#[derive(Debug)]
pub struct Cuts {
    config: SegmenterConfig,
    last_pts: Option<u64>,
    max_end_ns: Option<u64>,
    pending_discontinuity: bool,
    /// Split points announced by [`Cuts::split_at`] (stream time); once any was announced
    /// only those cut keyframe-split streams.
    splits: std::collections::VecDeque<(u64, u64)>,
    announced: bool,
}

impl Cuts {
    pub fn new(config: SegmenterConfig) -> Cuts {
        Cuts {
            config,
            last_pts: None,
            max_end_ns: None,
            pending_discontinuity: false,
            splits: std::collections::VecDeque::new(),
            announced: false,
        }
    }

    pub fn config(&self) -> &SegmenterConfig {
        &self.config
    }

    pub fn set_tolerance(&mut self, tolerance_ns: u64) {
        self.config.tolerance_ns = tolerance_ns;
    }

    /// The next segment is marked as a discontinuity and starts at the next split point,
    /// however short the current one is.
    pub fn discontinuity(&mut self) {
        self.pending_discontinuity = true;
    }

    /// Whether a discontinuity is pending (cleared: the segment being opened takes it).
    pub fn take_discontinuity(&mut self) -> bool {
        std::mem::take(&mut self.pending_discontinuity)
    }

    /// See [`Segmenter::split_at`].
    pub fn split_at(&mut self, pts_ns: u64, presentation_ns: u64) {
        self.announced = true;
        if self.splits.back().is_none_or(|b| b.0 < pts_ns) {
            self.splits.push_back((pts_ns, presentation_ns));
        }
    }

    /// See [`Segmenter::note_end`].
    pub fn note_end(&mut self, end_ns: u64) {
        self.max_end_ns = Some(self.max_end_ns.map_or(end_ns, |m| m.max(end_ns)));
    }

    /// Notes a timestamp from the input and returns the one to use (the latest seen when the
    /// input has none).
    pub fn saw(&mut self, pts_ns: Option<u64>) -> u64 {
        let pts = pts_ns.or(self.last_pts).unwrap_or(0);
        if let Some(p) = pts_ns {
            self.last_pts = Some(self.last_pts.map_or(p, |l| l.max(p)));
        }
        pts
    }

    /// Whether to cut before a split point at `pts` (`chunk_start`: the first packet of a muxer
    /// chunk, where announced cuts may happen), given the open segment's start and whether it
    /// has any data; if so, when the new segment starts and why.
    pub fn decide(
        &mut self,
        pts: u64,
        chunk_start: bool,
        open: Option<(u64, bool)>,
    ) -> Option<(u64, CutReason)> {
        let announced = self.config.split_on == SplitOn::Keyframes && self.announced;
        let mut due = None;
        if announced && chunk_start {
            while let Some(&(at, presentation)) = self.splits.front()
                && at <= pts + SPLIT_SLACK_NS
            {
                self.splits.pop_front();
                due = Some(presentation);
            }
        }
        let cut = match open {
            None => None,
            Some((_, true)) => None,
            Some((start, false)) if self.pending_discontinuity => {
                Some((due.unwrap_or(pts).max(start), CutReason::Discontinuity))
            }
            Some((start, false)) if announced => due.map(|d| (d.max(start), CutReason::Requested)),
            Some((start, false)) => {
                // The first split point at or after the next multiple of the target in stream
                // (running) time, not one target after the segment's start: audio-only segments
                // then do not drift by a frame each, and an audio rendition is cut where the
                // video renditions are (their planner's boundaries).
                let (target, tol) = (self.config.target_ns, self.config.tolerance_ns);
                let next = match target {
                    0 => 0,
                    t => (start.saturating_add(tol) / t)
                        .saturating_add(1)
                        .saturating_mul(t),
                };
                (pts.saturating_add(tol) >= next).then_some((pts, CutReason::TargetReached))
            }
        };
        if cut.is_none()
            && let Some((start, _)) = open
        {
            log::trace!(
                "split point at {pts} ns not taken: segment started at {start} ns, target {} ns, \
                 {} announced boundaries pending",
                self.config.target_ns,
                self.splits.len()
            );
        }
        cut
    }

    /// Where the last segment ends (end of stream, stop): the latest end time noted, or the
    /// latest timestamp seen; None when nothing was seen.
    pub fn end(&self) -> Option<u64> {
        match (self.max_end_ns, self.last_pts) {
            (Some(e), Some(l)) => Some(e.min(l + END_SLACK_NS)),
            (e, l) => e.or(l),
        }
    }
}

/// The TS segmenter. Push chunks in; finished segments come out.
///
/// LL-HLS parts ([`Segmenter::set_part_duration`]): a segment is also cut into parts, at the
/// start of a chunk that begins a frame of the split stream (the video PID, learnt from the
/// keyframe chunks; any elementary stream when audio-only), before the frame that would take the
/// part past the part duration (its length estimated by the previous frame's). Each part starts
/// with the PAT and PMT (those of the stream, repeated where the muxer did not just write them),
/// so that it can be demuxed on its own (its frames decode on their own only when it is
/// INDEPENDENT, from a keyframe); the segment is its parts' bytes in order.
pub struct Segmenter {
    cuts: Cuts,
    pat: Option<Vec<u8>>,
    pmt_pids: Vec<u16>,
    pmts: HashMap<u16, Vec<u8>>,
    current: Option<Current>,
    /// LL-HLS part duration (ns); 0: no parts.
    part_ns: u64,
    /// Finished parts not yet taken.
    ready: Vec<Part>,
    /// The PID whose frame starts may start a part (video), once known.
    split_pid: Option<u16>,
    /// The last keyframe chunk held no frame start: the next chunk's names the split PID.
    learn_split: bool,
    /// Stream time of the last frame start of `split_pid`, and the interval before it.
    last_frame: Option<u64>,
    frame_interval: Option<u64>,
}

/// Announced split points match chunks up to this much (ns) earlier.
const SPLIT_SLACK_NS: u64 = 1_000_000;
/// The last segment ends at most this long after the last timestamp the muxer emitted: media the
/// element saw go in but the muxer never put out (stop without EOS) is not counted.
const END_SLACK_NS: u64 = 250_000_000;

/// PID of a TS packet.
pub fn packet_pid(p: &[u8]) -> u16 {
    (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2])
}

/// Whether a packet starts a PES packet or a PSI section (payload_unit_start_indicator).
pub fn packet_unit_start(p: &[u8]) -> bool {
    p[1] & 0x40 != 0
}

/// The payload of a TS packet (after the adaptation field), if any.
fn packet_payload(p: &[u8]) -> Option<&[u8]> {
    let afc = (p[3] >> 4) & 0x3;
    match afc {
        1 => Some(&p[4..]),
        3 => {
            let len = usize::from(*p.get(4)?);
            p.get(5 + len..)
        }
        _ => None,
    }
}

/// The PMT PIDs listed in a PAT packet (single-section PATs, as muxers write them).
fn pat_pmt_pids(p: &[u8]) -> Vec<u16> {
    let Some(payload) = packet_payload(p) else {
        return Vec::new();
    };
    let Some(&pointer) = payload.first() else {
        return Vec::new();
    };
    let Some(section) = payload.get(1 + usize::from(pointer)..) else {
        return Vec::new();
    };
    if section.len() < 8 || section[0] != 0x00 {
        return Vec::new();
    }
    let section_length = (usize::from(section[1] & 0x0f) << 8) | usize::from(section[2]);
    // 5 bytes of header after section_length, 4 bytes of CRC at the end.
    let end = (3 + section_length).saturating_sub(4).min(section.len());
    let mut pids = Vec::new();
    let mut i = 8;
    while i + 4 <= end {
        let program = u16::from_be_bytes([section[i], section[i + 1]]);
        let pid = (u16::from(section[i + 2] & 0x1f) << 8) | u16::from(section[i + 3]);
        if program != 0 {
            pids.push(pid);
        }
        i += 4;
    }
    pids
}

impl Segmenter {
    pub fn new(config: SegmenterConfig) -> Segmenter {
        Segmenter {
            cuts: Cuts::new(config),
            pat: None,
            pmt_pids: Vec::new(),
            pmts: HashMap::new(),
            current: None,
            part_ns: 0,
            ready: Vec::new(),
            split_pid: None,
            learn_split: false,
            last_frame: None,
            frame_interval: None,
        }
    }

    /// Writes each segment as parts of at most `part_ns` too (see the type's doc), reported by
    /// [`Segmenter::take_parts`]. 0: no parts.
    pub fn set_part_duration(&mut self, part_ns: u64) {
        self.part_ns = part_ns;
    }

    /// The parts finished since the last call, in order (a segment returned by
    /// [`Segmenter::push`] or [`Segmenter::finish`] is made of the parts taken before it and
    /// those returned with it: take them first).
    pub fn take_parts(&mut self) -> Vec<Part> {
        std::mem::take(&mut self.ready)
    }

    /// With parts: the part being filled, its index and its bytes so far.
    pub fn open_part(&self) -> Option<(u32, &[u8])> {
        self.current
            .as_ref()
            .filter(|_| self.part_ns > 0)
            .map(|c| (c.parts, c.data.get(c.part_offset..).unwrap_or_default()))
    }

    /// The tables to put in front of a part or segment that does not start with them.
    fn tables(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(pat) = &self.pat {
            out.extend_from_slice(pat);
            for pid in &self.pmt_pids {
                if let Some(pmt) = self.pmts.get(pid) {
                    out.extend_from_slice(pmt);
                }
            }
        }
        out
    }

    /// The PID of the frame a chunk starts: its first packet that is no PAT/PMT (PMT PIDs from
    /// a PAT in the chunk too), if that starts a PES packet.
    fn frame_start(&self, data: &[u8]) -> Option<u16> {
        let mut pmts = self.pmt_pids.clone();
        for p in data
            .chunks_exact(TS_PACKET_SIZE)
            .take_while(|p| p[0] == SYNC_BYTE)
        {
            let pid = packet_pid(p);
            if pid == 0 {
                if packet_unit_start(p) {
                    pmts.extend(pat_pmt_pids(p));
                }
                continue;
            }
            if pmts.contains(&pid) || pid == 0x1fff {
                continue;
            }
            return packet_unit_start(p).then_some(pid);
        }
        None
    }

    /// Whether a chunk starts a frame of the split stream (where a part may start), learning
    /// which PID that is from keyframe chunks (or the chunk after one that holds only tables,
    /// as mpegtsmux's may).
    fn split_frame(&mut self, data: &[u8], keyframe: bool) -> bool {
        let pid = self.frame_start(data);
        if self.cuts.config().split_on == SplitOn::PesStart {
            return pid.is_some();
        }
        if keyframe || self.learn_split {
            self.learn_split = pid.is_none();
            if pid.is_some() {
                self.split_pid = pid;
            }
        }
        pid.is_some() && pid == self.split_pid
    }

    /// Before a chunk at `pts` (`split_frame`: it starts a frame of the split stream): closes the
    /// current part when that frame would take the part past the part duration.
    fn maybe_close_part(&mut self, data: &[u8], pts: u64, keyframe: bool, split_frame: bool) {
        if self.part_ns == 0 || !split_frame {
            return;
        }
        let audio_only = self.cuts.config().split_on == SplitOn::PesStart;
        let Some(c) = self.current.as_ref() else {
            return;
        };
        if c.data.len() <= c.part_offset {
            return;
        }
        let end = c.part_start_ns.saturating_add(self.part_ns);
        // PART-TARGET is a maximum (RFC 8216bis §4.4.3.7; 1 ms for rounding): the part ends
        // before the frame that would take it past it, or, before the frame length is known,
        // at the first frame at or after it (within the tolerance).
        let due = match self.frame_interval {
            Some(d) => pts.saturating_add(d) > end.saturating_add(1_000_000),
            None => pts.saturating_add(self.cuts.config().tolerance_ns) >= end,
        };
        if due {
            self.close_part(pts);
            let starts_with_pat = data.len() >= TS_PACKET_SIZE && packet_pid(data) == 0;
            let tables = if starts_with_pat {
                Vec::new()
            } else {
                self.tables()
            };
            if let Some(c) = self.current.as_mut() {
                c.data.extend_from_slice(&tables);
                c.part_independent = keyframe || audio_only;
            }
        }
    }

    /// Ends the current part at `end_ns` (reported when parts are on).
    fn close_part(&mut self, end_ns: u64) {
        let Some(c) = self.current.as_mut() else {
            return;
        };
        if self.part_ns == 0 || c.data.len() <= c.part_offset {
            return;
        }
        self.ready.push(Part {
            index: c.parts,
            data: c.data[c.part_offset..].to_vec(),
            start_ns: c.part_start_ns,
            duration_ns: end_ns.saturating_sub(c.part_start_ns),
            independent: c.part_independent,
        });
        c.parts += 1;
        c.part_offset = c.data.len();
        c.part_start_ns = end_ns;
    }

    pub fn config(&self) -> &SegmenterConfig {
        self.cuts.config()
    }

    pub fn set_tolerance(&mut self, tolerance_ns: u64) {
        self.cuts.set_tolerance(tolerance_ns);
    }

    /// Start time of the segment being filled.
    pub fn current_start(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.start_ns)
    }

    /// The next segment is marked as a discontinuity and starts at the next split point,
    /// however short the current one is.
    pub fn discontinuity(&mut self) {
        self.cuts.discontinuity();
    }

    /// Announces that the next segment starts at the split point with timestamp `pts_ns` (the
    /// muxer's, a decode time) and that its media starts at `presentation_ns` (same clock), which
    /// is what its duration is counted from. The element decides where segments start from its
    /// input, where it knows which keyframes it asked for. From then on the elapsed-time rule no
    /// longer applies to keyframe splits.
    pub fn split_at(&mut self, pts_ns: u64, presentation_ns: u64) {
        self.cuts.split_at(pts_ns, presentation_ns);
    }

    /// Records that media up to `end_ns` (same time base as the chunks) has been fed, so that the
    /// last segment's duration includes the last frame's duration.
    pub fn note_end(&mut self, end_ns: u64) {
        self.cuts.note_end(end_ns);
    }

    /// Is this packet a split point under [`SplitOn::PesStart`]?
    fn is_pes_start(&self, p: &[u8]) -> bool {
        let pid = packet_pid(p);
        packet_unit_start(p) && pid >= 0x20 && pid != 0x1fff && !self.pmt_pids.contains(&pid)
    }

    fn remember_tables(&mut self, p: &[u8]) {
        let pid = packet_pid(p);
        if !packet_unit_start(p) {
            return;
        }
        if pid == 0 {
            self.pmt_pids = pat_pmt_pids(p);
            self.pmts.retain(|k, _| self.pmt_pids.contains(k));
            self.pat = Some(p.to_vec());
        } else if self.pmt_pids.contains(&pid) {
            self.pmts.insert(pid, p.to_vec());
        }
    }

    /// Feeds one chunk of whole TS packets. Returns the segment this chunk completed, if any.
    pub fn push(&mut self, data: &[u8], pts_ns: Option<u64>, keyframe: bool) -> Option<Segment> {
        let pts = self.cuts.saw(pts_ns);
        let mut completed = None;
        let mut offset = 0;
        // Parts: a frame of the split stream, and the length of the one before it.
        let split_frame = self.part_ns > 0 && self.split_frame(data, keyframe);
        if split_frame {
            if let Some(last) = self.last_frame
                && pts > last
            {
                self.frame_interval = Some(pts - last);
            }
            self.last_frame = Some(pts);
        }
        while offset + TS_PACKET_SIZE <= data.len() {
            let packet = &data[offset..offset + TS_PACKET_SIZE];
            if packet[0] != SYNC_BYTE {
                // Not packet aligned: keep the bytes, never split inside.
                break;
            }
            let split_point = match self.cuts.config().split_on {
                SplitOn::Keyframes => keyframe && offset == 0,
                SplitOn::PesStart => self.is_pes_start(packet),
            };
            let mut start = pts;
            let mut cut = false;
            if split_point
                && let Some((s, reason)) = self.cuts.decide(
                    pts,
                    offset == 0,
                    self.current
                        .as_ref()
                        .map(|c| (c.start_ns, c.data.is_empty())),
                )
            {
                completed = self.close(s, reason);
                start = s;
                cut = true;
            }
            if offset == 0 && !cut {
                self.maybe_close_part(data, pts, keyframe, split_frame);
            }
            let opens = self.current.is_none();
            self.remember_tables(packet);
            self.append(packet, start);
            if opens
                && offset == 0
                && let Some(c) = self.current.as_mut()
            {
                // The first part of a segment: it starts with a keyframe (or audio).
                c.part_independent = keyframe || self.cuts.config().split_on == SplitOn::PesStart;
            }
            offset += TS_PACKET_SIZE;
        }
        if offset < data.len() {
            let rest = &data[offset..];
            self.append(rest, pts);
        }
        completed
    }

    fn close(&mut self, end_ns: u64, reason: CutReason) -> Option<Segment> {
        self.close_part(end_ns);
        let c = self.current.take()?;
        Some(Segment {
            reason,
            duration_ns: end_ns.saturating_sub(c.start_ns),
            start_ns: c.start_ns,
            data: c.data,
            discontinuity: c.discontinuity,
        })
    }

    fn append(&mut self, bytes: &[u8], pts: u64) {
        if self.current.is_none() {
            let mut data = Vec::with_capacity(256 * 1024);
            let starts_with_pat =
                bytes.len() >= TS_PACKET_SIZE && bytes[0] == SYNC_BYTE && packet_pid(bytes) == 0;
            if !starts_with_pat && let Some(pat) = &self.pat {
                data.extend_from_slice(pat);
                for pid in &self.pmt_pids {
                    if let Some(pmt) = self.pmts.get(pid) {
                        data.extend_from_slice(pmt);
                    }
                }
            }
            self.current = Some(Current {
                data,
                start_ns: pts,
                discontinuity: self.cuts.take_discontinuity(),
                part_offset: 0,
                part_start_ns: pts,
                part_independent: false,
                parts: 0,
            });
        }
        if let Some(c) = self.current.as_mut() {
            c.data.extend_from_slice(bytes);
        }
    }

    /// Closes the segment being filled (end of stream, stop): it ends at the latest end time
    /// noted, or the latest timestamp seen.
    pub fn finish(&mut self) -> Option<Segment> {
        let end = self.cuts.end()?;
        let seg = self.close(end, CutReason::End)?;
        (!seg.data.is_empty()).then_some(seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn packet(pid: u16, unit_start: bool, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; TS_PACKET_SIZE];
        p[0] = SYNC_BYTE;
        p[1] = ((pid >> 8) as u8 & 0x1f) | if unit_start { 0x40 } else { 0 };
        p[2] = pid as u8;
        p[3] = 0x10;
        p
    }

    /// A PAT naming program 1 with its PMT on `pmt_pid`.
    fn pat(pmt_pid: u16) -> Vec<u8> {
        let mut p = packet(0, true, 0xff);
        let section = [
            0x00, // pointer field
            0x00, // table id
            0xb0,
            13, // section length: 5 + 4 + 4
            0x00,
            0x01,
            0xc1,
            0x00,
            0x00,
            0x00,
            0x01, // program 1
            0xe0 | (pmt_pid >> 8) as u8,
            pmt_pid as u8,
            0,
            0,
            0,
            0, // CRC (not checked)
        ];
        p[4..4 + section.len()].copy_from_slice(&section);
        p
    }

    fn config(target_s: u64, split_on: SplitOn) -> SegmenterConfig {
        SegmenterConfig {
            target_ns: target_s * SEC,
            tolerance_ns: 0,
            split_on,
        }
    }

    /// TS parts: cut before the video frame that would pass the part duration (audio chunks
    /// between frames never start one), each starting with PAT+PMT, INDEPENDENT on keyframes,
    /// the segment the parts' bytes in order, and the open part a prefix of what it becomes.
    #[test]
    fn ts_parts_make_up_their_segment_and_start_with_the_tables() {
        let mut seg = Segmenter::new(SegmenterConfig {
            target_ns: SEC,
            tolerance_ns: SEC / 60,
            split_on: SplitOn::Keyframes,
        });
        seg.set_part_duration(330_000_000);
        let (mut segments, mut parts) = (Vec::new(), vec![Vec::new()]);
        let mut open: Vec<(u32, Vec<u8>)> = Vec::new();
        for i in 0..75u64 {
            let pts = i * SEC / 30;
            let key = i % 30 == 0;
            let mut chunk = Vec::new();
            if key {
                chunk.extend(pat(0x20));
                chunk.extend(packet(0x20, true, 1));
            }
            chunk.extend(packet(0x41, true, 2));
            chunk.extend(packet(0x41, false, 2));
            let done = seg.push(&chunk, Some(pts), key);
            parts.last_mut().unwrap().extend(seg.take_parts());
            if let Some(done) = done {
                segments.push(done);
                parts.push(Vec::new());
            }
            // An audio frame halfway to the next video frame.
            assert!(
                seg.push(&packet(0x42, true, 3), Some(pts + SEC / 60), false)
                    .is_none()
            );
            parts.last_mut().unwrap().extend(seg.take_parts());
            let (index, bytes) = seg.open_part().unwrap();
            open.push((index, bytes.to_vec()));
        }
        seg.note_end(75 * SEC / 30);
        segments.extend(seg.finish());
        parts.last_mut().unwrap().extend(seg.take_parts());
        assert_eq!(segments.len(), 3);
        for (s, parts) in segments.iter().zip(&parts) {
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.data.clone()).collect();
            assert!(joined == s.data, "a segment is its parts' bytes");
            let d: Vec<u64> = parts.iter().map(|p| p.duration_ns / 1_000_000).collect();
            let indep: Vec<bool> = parts.iter().map(|p| p.independent).collect();
            if s.duration_ns == SEC {
                assert_eq!(d, [300, 300, 300, 100], "nine frames, and the rest");
                assert_eq!(indep, [true, false, false, false]);
            } else {
                assert_eq!(d, [300, 200]);
            }
            assert_eq!(d.iter().sum::<u64>(), s.duration_ns / 1_000_000);
            for p in parts {
                assert_eq!(packet_pid(&p.data), 0, "part {} starts with PAT", p.index);
                assert_eq!(packet_pid(&p.data[TS_PACKET_SIZE..]), 0x20, "then PMT");
                // A part's audio follows its video frames: its first frame is video.
                assert_eq!(packet_pid(&p.data[2 * TS_PACKET_SIZE..]), 0x41);
            }
        }
        let all: Vec<&Part> = parts.iter().flatten().collect();
        for (index, bytes) in &open {
            assert!(
                all.iter()
                    .any(|p| p.index == *index && p.data.starts_with(bytes)),
                "open part {index} is no prefix of a part"
            );
        }
        // Without a part duration: no parts.
        let mut plain = Segmenter::new(config(1, SplitOn::Keyframes));
        feed_video(&mut plain, 60);
        assert!(plain.take_parts().is_empty() && plain.open_part().is_none());
    }

    /// mpegtsmux's output: one packet per chunk, the keyframe flag on a chunk of tables only.
    /// The video PID is learnt from the chunk after it, and the first segment has parts too.
    #[test]
    fn ts_parts_from_one_packet_chunks() {
        let mut seg = Segmenter::new(SegmenterConfig {
            target_ns: SEC,
            tolerance_ns: SEC / 60,
            split_on: SplitOn::Keyframes,
        });
        seg.set_part_duration(330_000_000);
        let mut parts = Vec::new();
        let mut segments = Vec::new();
        for i in 0..45u64 {
            let pts = i * SEC / 30;
            let key = i % 30 == 0;
            if key {
                segments.extend(seg.push(&pat(0x20), Some(pts), true));
                seg.push(&packet(0x20, true, 1), None, false);
            }
            segments.extend(seg.push(&packet(0x41, true, 2), Some(pts), false));
            seg.push(&packet(0x41, false, 2), None, false);
            seg.push(&packet(0x42, true, 3), Some(pts + SEC / 60), false);
            parts.extend(seg.take_parts());
        }
        assert_eq!(segments.len(), 1);
        let d: Vec<u64> = parts.iter().map(|p| p.duration_ns / 1_000_000).collect();
        assert_eq!(d, [300, 300, 300, 100, 300]);
        let joined: Vec<u8> = parts[..4].iter().flat_map(|p| p.data.clone()).collect();
        assert!(joined == segments[0].data);
        assert!(parts[0].independent && parts[4].independent && !parts[1].independent);
    }

    #[test]
    fn parses_pmt_pids_from_pat() {
        assert_eq!(pat_pmt_pids(&pat(0x20)), vec![0x20]);
        assert_eq!(pat_pmt_pids(&pat(0x1000)), vec![0x1000]);
    }

    /// 30 fps video with a keyframe every second, each frame one packet (keyframes preceded by
    /// PAT+PMT as mpegtsmux writes them).
    fn feed_video(seg: &mut Segmenter, frames: u64) -> Vec<Segment> {
        let mut out = Vec::new();
        for i in 0..frames {
            let pts = i * SEC / 30;
            let key = i % 30 == 0;
            let mut chunk = Vec::new();
            if key {
                chunk.extend(pat(0x20));
                chunk.extend(packet(0x20, true, 1));
            }
            chunk.extend(packet(0x41, true, 2));
            out.extend(seg.push(&chunk, Some(pts), key));
        }
        seg.note_end(frames * SEC / 30);
        out.extend(seg.finish());
        out
    }

    #[test]
    fn cuts_at_keyframes_once_the_target_is_reached() {
        let mut seg = Segmenter::new(config(2, SplitOn::Keyframes));
        let out = feed_video(&mut seg, 150);
        let durations: Vec<u64> = out.iter().map(|s| s.duration_ns).collect();
        assert_eq!(durations, vec![2 * SEC, 2 * SEC, SEC]);
        let why: Vec<CutReason> = out.iter().map(|s| s.reason).collect();
        assert_eq!(
            why,
            [
                CutReason::TargetReached,
                CutReason::TargetReached,
                CutReason::End
            ]
        );
        assert_eq!(out[1].start_ns, 2 * SEC);
        // Every segment starts with the PAT.
        for s in &out {
            assert_eq!(packet_pid(&s.data), 0);
            assert_eq!(s.data.len() % TS_PACKET_SIZE, 0);
        }
        // Nothing lost, nothing duplicated: 150 frames + 5 PAT/PMT pairs.
        let total: usize = out.iter().map(|s| s.data.len()).sum();
        assert_eq!(total, (150 + 10) * TS_PACKET_SIZE);
    }

    #[test]
    fn tolerance_closes_a_segment_a_frame_early() {
        let mut seg = Segmenter::new(SegmenterConfig {
            target_ns: 2 * SEC,
            tolerance_ns: SEC / 60,
            split_on: SplitOn::Keyframes,
        });
        // A keyframe 10 ms before the target: within half a frame, it closes the segment.
        let a = seg.push(&pat(0x20), Some(0), true);
        assert!(a.is_none());
        let b = seg.push(&pat(0x20), Some(2 * SEC - SEC / 100), true);
        assert_eq!(b.unwrap().duration_ns, 2 * SEC - SEC / 100);
        let mut strict = Segmenter::new(config(2, SplitOn::Keyframes));
        strict.push(&pat(0x20), Some(0), true);
        assert!(
            strict
                .push(&pat(0x20), Some(2 * SEC - SEC / 100), true)
                .is_none()
        );
    }

    #[test]
    fn long_gops_make_long_segments_rather_than_cutting_inside_them() {
        let mut seg = Segmenter::new(config(1, SplitOn::Keyframes));
        let mut out = Vec::new();
        for i in 0..100u64 {
            let key = i % 45 == 0;
            out.extend(seg.push(&packet(0x41, true, 0), Some(i * SEC / 30), key));
        }
        seg.note_end(100 * SEC / 30);
        out.extend(seg.finish());
        let d: Vec<u64> = out.iter().map(|s| s.duration_ns).collect();
        assert_eq!(d, vec![45 * SEC / 30, 45 * SEC / 30, 10 * SEC / 30]);
    }

    #[test]
    fn audio_only_splits_at_pes_starts_and_repeats_the_tables() {
        let mut seg = Segmenter::new(config(1, SplitOn::PesStart));
        let mut out = Vec::new();
        out.extend(seg.push(&pat(0x20), Some(0), true));
        out.extend(seg.push(&packet(0x20, true, 1), Some(0), false));
        // AAC frames every 1024/48000 s, two packets each.
        let frame = 1024 * SEC / 48000;
        for i in 0..100u64 {
            out.extend(seg.push(&packet(0x44, true, 3), Some(i * frame), false));
            out.extend(seg.push(&packet(0x44, false, 3), Some(i * frame), false));
        }
        seg.note_end(100 * frame);
        out.extend(seg.finish());
        assert_eq!(
            out.len(),
            3,
            "{:?}",
            out.iter().map(|s| s.duration_ns).collect::<Vec<_>>()
        );
        for s in &out {
            assert_eq!(packet_pid(&s.data), 0, "PAT first");
            assert_eq!(packet_pid(&s.data[TS_PACKET_SIZE..]), 0x20, "PMT second");
            assert_eq!(packet_pid(&s.data[2 * TS_PACKET_SIZE..]), 0x44);
            assert!(packet_unit_start(&s.data[2 * TS_PACKET_SIZE..]));
        }
        let total: u64 = out.iter().map(|s| s.duration_ns).sum();
        assert_eq!(total, 100 * frame);
    }

    /// Audio-only cuts are the first frames at or after each multiple of the target, so they
    /// do not drift (one target after each segment's start, they would: 44.1 kHz AAC frames do
    /// not divide a second) and match the video renditions' boundaries.
    #[test]
    fn audio_only_cuts_at_multiples_of_the_target_without_drift() {
        let mut seg = Segmenter::new(config(1, SplitOn::PesStart));
        let mut out = Vec::new();
        out.extend(seg.push(&pat(0x20), Some(0), true));
        let frame = 1024 * SEC / 44100;
        for i in 0..(10 * 44100 / 1024) {
            out.extend(seg.push(&packet(0x44, true, 3), Some(i * frame), false));
        }
        let mut start = 0;
        for (k, s) in out.iter().enumerate() {
            start += s.duration_ns;
            let boundary = (k as u64 + 1) * SEC;
            assert!(
                start >= boundary && start < boundary + frame,
                "segment {} starts at {start} ns, boundary {boundary} ns",
                k + 1
            );
        }
        assert_eq!(out.len(), 9);
    }

    #[test]
    fn discontinuity_cuts_at_the_next_split_point_and_marks_the_segment() {
        let mut seg = Segmenter::new(config(10, SplitOn::Keyframes));
        assert!(seg.push(&pat(0x20), Some(0), true).is_none());
        assert!(seg.push(&packet(0x41, true, 0), Some(SEC), false).is_none());
        seg.discontinuity();
        assert!(
            seg.push(&packet(0x41, true, 0), Some(2 * SEC), false)
                .is_none()
        );
        let first = seg.push(&pat(0x20), Some(3 * SEC), true).expect("cut");
        assert!(!first.discontinuity);
        assert_eq!(first.duration_ns, 3 * SEC);
        assert_eq!(first.reason, CutReason::Discontinuity);
        let second = seg.finish().expect("last");
        assert!(second.discontinuity);
        assert_eq!(second.reason, CutReason::End);
    }

    #[test]
    fn announced_split_points_decide_where_keyframe_streams_are_cut() {
        let mut seg = Segmenter::new(config(1, SplitOn::Keyframes));
        // Keyframes every 0.5 s; the element announces cuts at 0.9 s and 2.4 s (decode times
        // 0.1 s before the presentation times it asked for).
        seg.split_at(900_000_000, SEC);
        seg.split_at(2_400_000_000, 2_500_000_000);
        let mut out = Vec::new();
        for pts in [0, 500, 900, 1500, 2000, 2400] {
            out.extend(seg.push(&pat(0x20), Some(pts * SEC / 1000), true));
        }
        out.extend(seg.push(&packet(0x41, true, 0), Some(2_900_000_000), false));
        seg.note_end(3 * SEC);
        out.extend(seg.finish());
        let d: Vec<u64> = out.iter().map(|s| s.duration_ns).collect();
        assert_eq!(d, vec![SEC, 1_500_000_000, 500_000_000]);
        let why: Vec<CutReason> = out.iter().map(|s| s.reason).collect();
        assert_eq!(
            why,
            [CutReason::Requested, CutReason::Requested, CutReason::End]
        );
    }

    #[test]
    fn media_the_muxer_never_emitted_does_not_lengthen_the_last_segment() {
        let mut seg = Segmenter::new(config(10, SplitOn::Keyframes));
        seg.push(&pat(0x20), Some(0), true);
        seg.push(&packet(0x41, true, 0), Some(SEC), false);
        // The element saw input up to 5 s, but the muxer got no further than 1 s.
        seg.note_end(5 * SEC);
        assert_eq!(seg.finish().unwrap().duration_ns, SEC + END_SLACK_NS);
    }

    #[test]
    fn finish_without_data_gives_nothing() {
        let mut seg = Segmenter::new(config(2, SplitOn::Keyframes));
        assert!(seg.finish().is_none());
    }
}
