//! The HLS writer: segmenter, playlist, encryption and output put together.
//!
//! Specifications: RFC 8216 §6.2.1 (a playlist names only complete segments), §6.2.2 (live playlist
//! updates), §6.2.3 (encrypted segments and their keys), §3.3 and §4.3.2.5 (fMP4 init segments
//! named by EXT-X-MAP).
//!
//! The element feeds it the muxer's output (MPEG-TS) or samples per track (fMP4); each finished
//! segment is queued for output (key first, then segment, then the playlist that names it, then
//! deletions of expired files), so a playlist never names a file that is not complete.
//!
//! fMP4: an init segment is written for each set of tracks ([`Writer::set_tracks`]), before the
//! first segment that needs it, named by the `init` pattern with the sequence number of that
//! segment (so names never repeat, across restarts too); it is deleted once no stored segment
//! needs it. Init segments are never encrypted (see [`Playlist::render`]); with AES-128 the media
//! segments are encrypted whole, as TS segments are.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::crypto;
use super::fmp4::{self, FragmentSegmenter, Sample, Track};
use super::iframes::{self, IFrameEntry};
use super::location::Pattern;
use super::location::{Locations, playlist_uri, redact_location};
use super::playlist::{
    Entry, PartEntry, Playlist, PlaylistConfig, PlaylistKind, RenditionReports, SegmentKey,
};
use super::segmenter::{Segment, Segmenter, SegmenterConfig};
use super::store::{FileKind, Job, Output, StoreError};

#[derive(Debug, Clone)]
pub struct Encryption {
    /// A new key every this many segments; 0 keeps one key for the whole stream.
    pub key_rotation: u32,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub locations: Locations,
    pub playlist_root: Option<String>,
    pub playlist: PlaylistConfig,
    /// Segment files kept in storage at most (live playlists; 0 = keep all). Segments still in the
    /// playlist are never deleted.
    pub max_files: usize,
    pub encryption: Option<Encryption>,
    pub program_date_time: bool,
    pub segmenter: SegmenterConfig,
    /// Where fMP4 init segments go (`%d`: the sequence number of the first segment that uses
    /// it); None writes MPEG-TS.
    pub fmp4_init: Option<Pattern>,
    /// Where the I-frame playlist goes (`EXT-X-I-FRAMES-ONLY`, byte ranges of the keyframes in
    /// the segments, see [`super::iframes`]); None writes none. Not with encryption.
    pub iframes: Option<String>,
}

/// The segmenter of the configured container.
enum Cutter {
    Ts(Segmenter),
    Fmp4(FragmentSegmenter),
}

impl Cutter {
    fn current_start(&self) -> Option<u64> {
        match self {
            Cutter::Ts(s) => s.current_start(),
            Cutter::Fmp4(f) => f.current_start(),
        }
    }

    fn set_tolerance(&mut self, tolerance_ns: u64) {
        match self {
            Cutter::Ts(s) => s.set_tolerance(tolerance_ns),
            Cutter::Fmp4(f) => f.cuts().set_tolerance(tolerance_ns),
        }
    }

    fn split_at(&mut self, pts_ns: u64, presentation_ns: u64) {
        match self {
            Cutter::Ts(s) => s.split_at(pts_ns, presentation_ns),
            Cutter::Fmp4(f) => f.cuts().split_at(pts_ns, presentation_ns),
        }
    }

    fn discontinuity(&mut self) {
        match self {
            Cutter::Ts(s) => s.discontinuity(),
            Cutter::Fmp4(f) => f.cuts().discontinuity(),
        }
    }

    fn note_end(&mut self, end_ns: u64) {
        match self {
            Cutter::Ts(s) => s.note_end(end_ns),
            Cutter::Fmp4(f) => f.cuts().note_end(end_ns),
        }
    }

    fn finish(&mut self) -> Option<Segment> {
        match self {
            Cutter::Ts(s) => s.finish(),
            Cutter::Fmp4(f) => f.finish(),
        }
    }
}

struct CurrentInit {
    location: String,
    uri: String,
}

struct StoredSegment {
    sequence: u64,
    location: String,
    key_location: Option<String>,
    init_location: Option<String>,
}

struct CurrentKey {
    key: [u8; 16],
    location: String,
    uri: String,
    used: u32,
}

/// What happened to one finished segment (for logs and messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub sequence: u64,
    pub location: String,
    pub duration_s: f64,
    /// Size of the segment's media (before encryption), for measured bandwidths.
    pub bytes: u64,
    pub deleted: Vec<String>,
    /// With an I-frame playlist: the peak bit rate of the segment's I-frames (0 without).
    pub iframe_peak_bps: u64,
}

pub struct Writer {
    config: WriterConfig,
    segmenter: Cutter,
    playlist: Playlist,
    output: Output,
    stored: VecDeque<StoredSegment>,
    key_users: HashMap<String, usize>,
    key: Option<CurrentKey>,
    next_key_index: u64,
    /// fMP4: the tracks of the current init segment, that segment, and how many stored segments
    /// use each init segment.
    tracks: Vec<Track>,
    init: Option<CurrentInit>,
    init_users: HashMap<String, usize>,
    /// Stream time and wall-clock time of the first data, for EXT-X-PROGRAM-DATE-TIME.
    anchor: Option<(u64, SystemTime)>,
    /// LL-HLS: the part files of the segment being filled, and those of finished segments
    /// (deleted one segment after the playlist stops listing them).
    open_parts: Vec<String>,
    part_files: VecDeque<(u64, Vec<String>)>,
    /// The I-frames of the segments in the playlist, by sequence number.
    iframes: VecDeque<(u64, Vec<IFrameEntry>)>,
    /// LL-HLS with the built-in server: the part being filled and how many of its bytes were
    /// handed to the output ([`Job::Grow`]) so far.
    streaming: Option<(String, usize)>,
    /// A rendition of a multivariant stream: every rendition's position, and this one's
    /// playlist URI in it.
    reports: Option<(Arc<RenditionReports>, String)>,
    /// TS parts are served as they are written ([`Writer::set_part_streaming`]).
    stream_ts_parts: bool,
    /// The built-in server serves the output ([`Writer::set_part_streaming`]): the delta
    /// updates it answers `_HLS_skip` with are written.
    served: bool,
}

/// Where part `index` of the segment at `segment_location` goes: `.INDEX` before the file name's
/// extension (`segment00012.m4s` → `segment00012.3.m4s`).
pub fn part_location(segment_location: &str, index: u32) -> String {
    let name_start = segment_location.rfind('/').map_or(0, |i| i + 1);
    match segment_location[name_start..].rfind('.') {
        Some(dot) if dot > 0 => {
            let at = name_start + dot;
            format!(
                "{}.{index}{}",
                &segment_location[..at],
                &segment_location[at..]
            )
        }
        _ => format!("{segment_location}.{index}"),
    }
}

/// The location of the delta update of the playlist at `playlist_location` (`_HLS_skip=YES`):
/// `playlist.m3u8` → `playlist-delta.m3u8`.
pub fn delta_location(playlist_location: &str) -> String {
    match playlist_location.strip_suffix(".m3u8") {
        Some(stem) => format!("{stem}-delta.m3u8"),
        None => format!("{playlist_location}-delta.m3u8"),
    }
}

impl Writer {
    pub fn new(config: WriterConfig, output: Output) -> Writer {
        let playlist = Playlist::new(config.playlist.clone());
        Writer::with_playlist(config, output, playlist)
    }

    /// Continues a previous run's playlist (same locations): numbering goes on, the next segment
    /// is a discontinuity, and the previous segments expire as new ones come.
    pub fn resume(
        config: WriterConfig,
        output: Output,
        previous: &m3u8_rs::MediaPlaylist,
    ) -> Writer {
        let playlist = Playlist::resume(config.playlist.clone(), previous);
        let mut w = Writer::with_playlist(config, output, playlist);
        let entries: Vec<Entry> = w.playlist.entries().cloned().collect();
        for e in entries {
            let location = w.config.locations.segment.format(e.sequence);
            if playlist_uri(w.config.playlist_root.as_deref(), &location) != e.uri {
                continue;
            }
            w.output.announce(&location, FileKind::Segment);
            w.stored.push_back(StoredSegment {
                sequence: e.sequence,
                location,
                key_location: None,
                // Init segments of the previous run are not deleted by this one.
                init_location: None,
            });
        }
        // Key files of the previous run are not known by location; new keys must not reuse a
        // number a previous key may have.
        w.next_key_index = w.playlist.next_sequence();
        w.segmenter.discontinuity();
        w
    }

    fn with_playlist(config: WriterConfig, output: Output, playlist: Playlist) -> Writer {
        Writer {
            segmenter: match config.fmp4_init {
                Some(_) => Cutter::Fmp4(FragmentSegmenter::new(config.segmenter.clone())),
                None => Cutter::Ts(Segmenter::new(config.segmenter.clone())),
            },
            playlist,
            output,
            stored: VecDeque::new(),
            key_users: HashMap::new(),
            key: None,
            next_key_index: 0,
            tracks: Vec::new(),
            init: None,
            init_users: HashMap::new(),
            anchor: None,
            open_parts: Vec::new(),
            part_files: VecDeque::new(),
            iframes: VecDeque::new(),
            streaming: None,
            reports: None,
            stream_ts_parts: false,
            served: false,
            config,
        }
    }

    /// LL-HLS (without encryption): segments are written as parts of about `part_ns` too, each published as soon as it is complete (see [`Playlist::set_part_target`]).
    /// False when parts cannot be written with this configuration.
    pub fn set_part_duration(&mut self, part_ns: u64) -> bool {
        if part_ns > 0 && self.config.encryption.is_some() {
            return false;
        }
        match &mut self.segmenter {
            Cutter::Fmp4(f) => f.set_part_duration(part_ns),
            Cutter::Ts(s) => s.set_part_duration(part_ns),
        }
        self.playlist
            .set_part_target((part_ns > 0).then(|| part_ns as f64 / 1e9));
        true
    }

    /// LL-HLS with the built-in server (`on`): the part being filled is written as it fills, a
    /// fragment per video frame (see [`FragmentSegmenter::set_chunked`]), and its bytes are
    /// handed to the server ([`Job::Grow`]), which streams them to a request for the
    /// preload-hinted part, and the delta updates it answers `_HLS_skip=YES` with are written
    /// beside the playlist. Without a server parts are one fragment each and no delta update is
    /// written.
    pub fn set_part_streaming(&mut self, on: bool) {
        let on = on && self.output.serves_local_files();
        self.served = on;
        match &mut self.segmenter {
            Cutter::Fmp4(f) => f.set_chunked(on),
            Cutter::Ts(_) => self.stream_ts_parts = on,
        }
    }

    /// A rendition of a multivariant stream, whose media playlist is `uri` in `reports`: its
    /// LL-HLS playlists report where the other renditions are (EXT-X-RENDITION-REPORT), and
    /// where it is goes into `reports` for theirs.
    pub fn set_rendition_reports(&mut self, reports: Arc<RenditionReports>, uri: String) {
        self.reports = Some((reports, uri));
    }

    /// Publishes the parts the segmenter finished, then `seg` (which they may end) or, with
    /// parts and no segment, the playlist that lists them.
    fn publish_parts_and(&mut self, seg: Option<Segment>) -> Result<Option<Published>, StoreError> {
        let parts = match &mut self.segmenter {
            Cutter::Fmp4(f) => f.take_parts(),
            Cutter::Ts(s) => s.take_parts(),
        };
        let any = !parts.is_empty();
        for part in parts {
            let sequence = self.playlist.next_sequence();
            let location =
                part_location(&self.config.locations.segment.format(sequence), part.index);
            log::trace!(
                "part {sequence}.{} ({}): {} ns, {} bytes{}",
                part.index,
                redact_location(&location),
                part.duration_ns,
                part.data.len(),
                if part.independent {
                    ", independent"
                } else {
                    ""
                }
            );
            self.output.submit(Job::Put {
                location: location.clone(),
                kind: FileKind::Part,
                data: Arc::new(part.data),
            })?;
            self.playlist.add_part(PartEntry {
                uri: playlist_uri(self.config.playlist_root.as_deref(), &location),
                duration_s: part.duration_ns as f64 / 1e9,
                independent: part.independent,
            });
            self.open_parts.push(location);
        }
        match seg {
            Some(seg) => self.publish(seg).map(Some),
            None => {
                if any {
                    self.put_playlist()?;
                } else {
                    self.stream_open_part()?;
                }
                Ok(None)
            }
        }
    }

    /// Hands the output the bytes of the part being filled that it does not have yet (none for
    /// a part just begun: it becomes known to the server), for the built-in server to stream.
    fn stream_open_part(&mut self) -> Result<(), StoreError> {
        // TS parts grow a frame at a time anyway; fMP4 ones only when chunked.
        let open = match &self.segmenter {
            Cutter::Fmp4(f) if f.is_chunked() => f.open_part(),
            Cutter::Ts(s) if self.stream_ts_parts => s.open_part(),
            _ => None,
        };
        let Some((index, bytes)) = open else {
            return Ok(());
        };
        let sequence = self.playlist.next_sequence();
        let location = part_location(&self.config.locations.segment.format(sequence), index);
        let sent = match &self.streaming {
            Some((l, sent)) if *l == location => *sent,
            _ => {
                log::trace!(
                    "part {sequence}.{index} begins: served as it is written ({} bytes so far)",
                    bytes.len()
                );
                self.output.submit(Job::Grow {
                    location: location.clone(),
                    data: Arc::new(Vec::new()),
                })?;
                0
            }
        };
        if let Some(new) = bytes.get(sent..).filter(|b| !b.is_empty()) {
            self.output.submit(Job::Grow {
                location: location.clone(),
                data: Arc::new(new.to_vec()),
            })?;
        }
        self.streaming = Some((location, bytes.len().max(sent)));
        Ok(())
    }

    pub fn playlist(&self) -> &Playlist {
        &self.playlist
    }

    pub fn output(&self) -> &Output {
        &self.output
    }

    /// Start of the segment being filled (stream time, ns).
    pub fn current_segment_start(&self) -> Option<u64> {
        self.segmenter.current_start()
    }

    /// How early (ns) a keyframe may close a segment, e.g. half a frame.
    pub fn set_tolerance(&mut self, tolerance_ns: u64) {
        self.segmenter.set_tolerance(tolerance_ns);
    }

    /// The next segment starts at the keyframe the muxer stamps `pts_ns`, whose presentation
    /// time is `presentation_ns` (see [`Segmenter::split_at`]).
    pub fn split_at(&mut self, pts_ns: u64, presentation_ns: u64) {
        self.segmenter.split_at(pts_ns, presentation_ns);
    }

    pub fn discontinuity(&mut self) {
        self.segmenter.discontinuity();
    }

    /// Media up to `end_ns` has been fed (the end of the last frame).
    pub fn note_end(&mut self, end_ns: u64) {
        self.segmenter.note_end(end_ns);
    }

    fn anchor(&mut self, pts_ns: Option<u64>) {
        if self.anchor.is_none()
            && let Some(p) = pts_ns
        {
            self.anchor = Some((p, SystemTime::now()));
        }
    }

    /// fMP4: the tracks of the samples that follow. A change closes the segment being filled
    /// (published with the previous init segment), writes a new init segment, and makes the next
    /// segment a discontinuity. Nothing happens for the tracks in use.
    pub fn set_tracks(&mut self, tracks: Vec<Track>) -> Result<Option<Published>, StoreError> {
        let Some(pattern) = self.config.fmp4_init.clone() else {
            return Ok(None);
        };
        if tracks == self.tracks && self.init.is_some() {
            return Ok(None);
        }
        let closed = match &mut self.segmenter {
            Cutter::Fmp4(f) => f.set_tracks(&tracks),
            Cutter::Ts(_) => return Ok(None),
        };
        let published = self.publish_parts_and(closed)?;
        let location = pattern.format(self.playlist.next_sequence());
        let data = fmp4::boxes::init_segment(&tracks);
        log::debug!(
            "init segment {} for {} ({} bytes){}",
            redact_location(&location),
            tracks
                .iter()
                .map(|t| t.entry.fourcc())
                .collect::<Vec<_>>()
                .join("+"),
            data.len(),
            if self.init.is_some() {
                ": the format changed, the next segment is a discontinuity"
            } else {
                ""
            }
        );
        // Served and uploaded as a segment (video/mp4, long cache), but never dropped from a full
        // upload queue.
        self.output.submit(Job::Put {
            location: location.clone(),
            kind: FileKind::Init,
            data: Arc::new(data),
        })?;
        let uri = playlist_uri(self.config.playlist_root.as_deref(), &location);
        if let Some(old) = self.init.replace(CurrentInit { location, uri })
            && self.init_users.get(&old.location).copied().unwrap_or(0) == 0
            && old.location != self.init.as_ref().map_or("", |i| i.location.as_str())
        {
            log::debug!(
                "deleting init segment {}: no stored segment uses it",
                redact_location(&old.location)
            );
            self.output.submit(Job::Delete {
                location: old.location,
                kind: FileKind::Init,
            })?;
        }
        self.tracks = tracks;
        Ok(published)
    }

    /// fMP4: feeds one sample of track `track` (an index into the tracks given to
    /// [`Writer::set_tracks`]).
    pub fn push_sample(
        &mut self,
        track: usize,
        sample: Sample,
    ) -> Result<Option<Published>, StoreError> {
        self.anchor(u64::try_from(sample.dts_ns).ok());
        let Cutter::Fmp4(f) = &mut self.segmenter else {
            return Ok(None);
        };
        let seg = f.push(track, sample);
        self.publish_parts_and(seg)
    }

    /// Feeds muxer output.
    pub fn push(
        &mut self,
        data: &[u8],
        pts_ns: Option<u64>,
        keyframe: bool,
    ) -> Result<Option<Published>, StoreError> {
        self.anchor(pts_ns);
        let Cutter::Ts(s) = &mut self.segmenter else {
            return Ok(None);
        };
        let seg = s.push(data, pts_ns, keyframe);
        self.publish_parts_and(seg)
    }

    /// Writes the segment being filled; at end of stream also closes the playlist.
    pub fn finish(&mut self, end_of_stream: bool) -> Result<Option<Published>, StoreError> {
        log::debug!(
            "{}: closing the segment being filled",
            if end_of_stream {
                "end of stream"
            } else {
                "stopping"
            }
        );
        let seg = self.segmenter.finish();
        let published = self.publish_parts_and(seg)?;
        if end_of_stream {
            self.playlist.end();
            log::debug!("end of stream: the playlist gets EXT-X-ENDLIST");
            self.put_playlist()?;
            self.put_iframes()?;
        }
        Ok(published)
    }

    /// Waits for the output to write everything queued; false on timeout or error.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.output.flush(timeout)
    }

    pub fn close(self, timeout: Duration) -> bool {
        self.output.close(timeout)
    }

    fn put_playlist(&mut self) -> Result<(), StoreError> {
        if self.playlist.part_target().is_some() {
            // Before the playlist that hints it: a request for the hint finds it being written.
            self.stream_open_part()?;
            // The part being filled: the next one to be published (never skipped, see
            // FragmentSegmenter::open_part_index).
            let hint = match &self.segmenter {
                Cutter::Fmp4(f) => f.open_part_index(),
                Cutter::Ts(s) => s.open_part().map(|(index, _)| index),
            }
            .map(|index| {
                let segment = self
                    .config
                    .locations
                    .segment
                    .format(self.playlist.next_sequence());
                playlist_uri(
                    self.config.playlist_root.as_deref(),
                    &part_location(&segment, index),
                )
            });
            self.playlist.set_preload_hint(hint);
            if let Some((reports, uri)) = &self.reports {
                if let Some(last) = self.playlist.last_part() {
                    reports.update(uri, last);
                }
                self.playlist.set_rendition_reports(reports.others(uri));
            }
            if self.served {
                // For the built-in server's `_HLS_skip=YES` requests; written before the
                // playlist, so a blocking request that sees the playlist finds it too.
                self.output.submit(Job::Put {
                    location: delta_location(&self.config.locations.playlist),
                    kind: FileKind::Playlist,
                    data: Arc::new(self.playlist.render_delta()),
                })?;
            }
        }
        let first = self.playlist.entries().next().map(|e| e.sequence);
        // With LL-HLS the playlist is rewritten for every part: the segment cuts stay at debug.
        let level = if self.playlist.part_target().is_some() {
            log::Level::Trace
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "playlist {}: media sequence {}, {} segments{}",
            redact_location(&self.config.locations.playlist),
            first.unwrap_or_else(|| self.playlist.next_sequence()),
            self.playlist.entries().count(),
            if self.playlist.is_ended() {
                ", ended"
            } else {
                ""
            }
        );
        self.output.submit(Job::Put {
            location: self.config.locations.playlist.clone(),
            kind: FileKind::Playlist,
            data: Arc::new(self.playlist.render()),
        })
    }

    fn next_key(&mut self) -> Result<(), StoreError> {
        let rotate = match (&self.key, &self.config.encryption) {
            (None, Some(_)) => true,
            (Some(k), Some(e)) => e.key_rotation > 0 && k.used >= e.key_rotation,
            _ => false,
        };
        if !rotate {
            return Ok(());
        }
        let location = self.config.locations.key.format(self.next_key_index);
        self.next_key_index += 1;
        let key = crypto::random_key();
        // The key's location only: never its bytes.
        log::debug!(
            "new AES-128 key {} (key {}, {})",
            redact_location(&location),
            self.next_key_index - 1,
            match (&self.key, &self.config.encryption) {
                (Some(k), Some(e)) => format!(
                    "rotation after {} segments (key-rotation {})",
                    k.used, e.key_rotation
                ),
                _ => "first key".to_owned(),
            }
        );
        self.output.submit(Job::Put {
            location: location.clone(),
            kind: FileKind::Key,
            data: Arc::new(key.to_vec()),
        })?;
        let uri = playlist_uri(self.config.playlist_root.as_deref(), &location);
        let old = self.key.replace(CurrentKey {
            key,
            location,
            uri,
            used: 0,
        });
        if let Some(old) = old
            && self.key_users.get(&old.location).copied().unwrap_or(0) == 0
        {
            log::debug!(
                "deleting key {}: no stored segment uses it",
                redact_location(&old.location)
            );
            self.output.submit(Job::Delete {
                location: old.location,
                kind: FileKind::Key,
            })?;
        }
        Ok(())
    }

    fn publish(&mut self, seg: Segment) -> Result<Published, StoreError> {
        let sequence = self.playlist.next_sequence();
        let location = self.config.locations.segment.format(sequence);
        let plain_bytes = seg.data.len();
        let iframe_entries = self.scan_iframes(&seg);
        let (data, key) = if self.config.encryption.is_some() {
            self.next_key()?;
            let k = self.key.as_mut().expect("a key after next_key");
            k.used += 1;
            let iv = crypto::random_iv();
            *self.key_users.entry(k.location.clone()).or_default() += 1;
            (
                crypto::encrypt_segment(&k.key, &iv, &seg.data),
                Some((
                    SegmentKey {
                        uri: k.uri.clone(),
                        iv,
                    },
                    k.location.clone(),
                )),
            )
        } else {
            (seg.data, None)
        };
        self.output.submit(Job::Put {
            location: location.clone(),
            kind: FileKind::Segment,
            data: Arc::new(data),
        })?;
        let program_date_time = if self.config.program_date_time {
            self.anchor.map(|(pts, wall)| {
                if seg.start_ns >= pts {
                    wall + Duration::from_nanos(seg.start_ns - pts)
                } else {
                    wall - Duration::from_nanos(pts - seg.start_ns)
                }
            })
        } else {
            None
        };
        let duration_s = seg.duration_ns as f64 / 1e9;
        log::debug!(
            "segment {sequence} cut ({}): {}, start {} ns, {duration_s:.3} s, {} bytes{}, key {}",
            seg.reason,
            redact_location(&location),
            seg.start_ns,
            plain_bytes,
            if seg.discontinuity {
                ", discontinuity"
            } else {
                ""
            },
            // The key's URI only (the IV is public, in the playlist); never the key.
            key.as_ref().map_or("none", |(k, _)| k.uri.as_str())
        );
        let (seq, _removed) = self.playlist.add(Entry {
            sequence,
            uri: playlist_uri(self.config.playlist_root.as_deref(), &location),
            duration_s,
            // Nothing before the first segment to be discontinuous with.
            discontinuity: seg.discontinuity && sequence > 0,
            key: key.as_ref().map(|k| k.0.clone()),
            map: self.init.as_ref().map(|i| i.uri.clone()),
            program_date_time,
            // The parts given to the playlist while it was filled.
            parts: Vec::new(),
        });
        debug_assert_eq!(seq, sequence);
        let init_location = self.init.as_ref().map(|i| i.location.clone());
        if let Some(l) = &init_location {
            *self.init_users.entry(l.clone()).or_default() += 1;
        }
        self.stored.push_back(StoredSegment {
            sequence,
            location: location.clone(),
            key_location: key.map(|k| k.1),
            init_location,
        });
        self.put_playlist()?;
        let iframe_peak_bps = iframe_entries.as_deref().map_or(0, iframes::peak_bps);
        if let Some(entries) = iframe_entries {
            self.iframes.push_back((sequence, entries));
            self.put_iframes()?;
        }
        let mut deleted = self.expire()?;
        deleted.extend(self.expire_parts(sequence)?);
        Ok(Published {
            sequence,
            location,
            duration_s,
            bytes: plain_bytes as u64,
            deleted,
            iframe_peak_bps,
        })
    }

    /// With an I-frame playlist: the I-frames of `seg` (before encryption, which an I-frame
    /// playlist does not go with).
    fn scan_iframes(&self, seg: &Segment) -> Option<Vec<IFrameEntry>> {
        self.config.iframes.as_ref()?;
        let duration_s = seg.duration_ns as f64 / 1e9;
        let (frames, timescale) = match &self.segmenter {
            Cutter::Ts(_) => (iframes::scan_ts(&seg.data), iframes::TS_TIMESCALE),
            Cutter::Fmp4(_) => {
                let video = self.tracks.iter().position(|t| t.entry.is_video())?;
                let id = u32::try_from(video + 1).ok()?;
                (
                    iframes::scan_fmp4(&seg.data, id),
                    self.tracks[video].timescale,
                )
            }
        };
        let entries = iframes::entries(&frames, timescale, duration_s);
        log::trace!(
            "{} I-frames in the segment ({})",
            entries.len(),
            entries
                .iter()
                .map(|e| format!("{}@{} {:.3} s", e.length, e.offset, e.duration_s))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Some(entries)
    }

    /// Writes the I-frame playlist: the entries of the segments the playlist lists.
    fn put_iframes(&mut self) -> Result<(), StoreError> {
        let Some(location) = self.config.iframes.clone() else {
            return Ok(());
        };
        let media = self.playlist.to_media_playlist();
        while self
            .iframes
            .front()
            .is_some_and(|(s, _)| *s < media.media_sequence)
        {
            self.iframes.pop_front();
        }
        let list = &self.iframes;
        let playlist = iframes::playlist(&media, |seq| {
            list.iter()
                .find(|(s, _)| *s == seq)
                .map(|(_, e)| e.as_slice())
        });
        let mut data = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = playlist.write_to(&mut data);
        log::trace!(
            "I-frame playlist {}: {} entries",
            redact_location(&location),
            playlist.segments.len()
        );
        self.output.submit(Job::Put {
            location,
            kind: FileKind::Playlist,
            data: Arc::new(data),
        })
    }

    /// Part files of segment `sequence` (just published) are kept; those of segments the
    /// playlist stopped listing parts for go one segment later.
    fn expire_parts(&mut self, sequence: u64) -> Result<Vec<String>, StoreError> {
        let parts = std::mem::take(&mut self.open_parts);
        if !parts.is_empty() {
            self.part_files.push_back((sequence, parts));
        }
        let keep_from = self.playlist.first_sequence_with_parts().saturating_sub(1);
        let mut deleted = Vec::new();
        while self.part_files.front().is_some_and(|(s, _)| *s < keep_from) {
            let (s, files) = self.part_files.pop_front().expect("non-empty");
            log::trace!(
                "deleting the {} parts of segment {s}: no longer listed",
                files.len()
            );
            for location in files {
                self.output.submit(Job::Delete {
                    location: location.clone(),
                    kind: FileKind::Part,
                })?;
                deleted.push(location);
            }
        }
        Ok(deleted)
    }

    /// Deletes segment files beyond `max_files` that are no longer in a live playlist, and key
    /// files no stored segment uses any more.
    fn expire(&mut self) -> Result<Vec<String>, StoreError> {
        let mut deleted = Vec::new();
        if self.config.playlist.kind != PlaylistKind::Live || self.config.max_files == 0 {
            return Ok(deleted);
        }
        let first_listed = self
            .playlist
            .entries()
            .next()
            .map_or(u64::MAX, |e| e.sequence);
        while self.stored.len() > self.config.max_files
            && self
                .stored
                .front()
                .is_some_and(|s| s.sequence < first_listed)
        {
            let old = self.stored.pop_front().expect("non-empty");
            log::debug!(
                "deleting segment {} ({}): beyond max-files {} and out of the playlist",
                old.sequence,
                redact_location(&old.location),
                self.config.max_files
            );
            self.output.submit(Job::Delete {
                location: old.location.clone(),
                kind: FileKind::Segment,
            })?;
            deleted.push(old.location);
            if let Some(kl) = old.key_location {
                let users = self.key_users.entry(kl.clone()).or_default();
                *users = users.saturating_sub(1);
                let current = self.key.as_ref().is_some_and(|k| k.location == kl);
                if *users == 0 && !current {
                    log::debug!(
                        "deleting key {}: its last segment expired",
                        redact_location(&kl)
                    );
                    self.key_users.remove(&kl);
                    self.output.submit(Job::Delete {
                        location: kl.clone(),
                        kind: FileKind::Key,
                    })?;
                    deleted.push(kl);
                }
            }
            if let Some(il) = old.init_location {
                let users = self.init_users.entry(il.clone()).or_default();
                *users = users.saturating_sub(1);
                let current = self.init.as_ref().is_some_and(|i| i.location == il);
                if *users == 0 && !current {
                    log::debug!(
                        "deleting init segment {}: its last segment expired",
                        redact_location(&il)
                    );
                    self.init_users.remove(&il);
                    self.output.submit(Job::Delete {
                        location: il.clone(),
                        kind: FileKind::Init,
                    })?;
                    deleted.push(il);
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::location::resolve;
    use crate::hls::segmenter::{SplitOn, TS_PACKET_SIZE};
    use crate::hls::store::{OutputConfig, Store, StoreError};
    use std::sync::Mutex;

    const SEC: u64 = 1_000_000_000;

    #[derive(Default)]
    struct MemStore {
        files: Mutex<HashMap<String, Vec<u8>>>,
        log: Mutex<Vec<String>>,
    }

    impl Store for MemStore {
        fn put(&self, l: &str, _: FileKind, d: &[u8]) -> Result<(), StoreError> {
            self.files.lock().unwrap().insert(l.into(), d.to_vec());
            self.log.lock().unwrap().push(format!("put {l}"));
            Ok(())
        }
        fn delete(&self, l: &str, _: FileKind) -> Result<(), StoreError> {
            self.files.lock().unwrap().remove(l);
            self.log.lock().unwrap().push(format!("delete {l}"));
            Ok(())
        }
    }

    fn writer(kind: PlaylistKind, encryption: Option<Encryption>) -> (Writer, Arc<MemStore>) {
        let store = Arc::new(MemStore::default());
        let output = Output::start(
            store.clone(),
            OutputConfig::default(),
            None,
            Box::new(|_| {}),
        );
        let config = WriterConfig {
            locations: resolve("/out", "playlist.m3u8").unwrap(),
            playlist_root: None,
            playlist: PlaylistConfig {
                kind,
                playlist_length: 3,
                target_duration_s: 1,
            },
            max_files: 4,
            encryption,
            program_date_time: false,
            segmenter: SegmenterConfig {
                target_ns: SEC,
                tolerance_ns: 0,
                split_on: SplitOn::Keyframes,
            },
            fmp4_init: None,
            iframes: None,
        };
        (Writer::new(config, output), store)
    }

    fn feed(w: &mut Writer, seconds: u64) {
        for i in 0..seconds * 10 {
            let mut p = vec![0u8; TS_PACKET_SIZE];
            p[0] = 0x47;
            p[1] = 0x40;
            p[2] = 0x41;
            p[3] = 0x10;
            w.push(&p, Some(i * SEC / 10), i % 10 == 0).unwrap();
        }
        w.note_end(seconds * SEC);
    }

    fn playlist(store: &MemStore) -> m3u8_rs::MediaPlaylist {
        let files = store.files.lock().unwrap();
        m3u8_rs::parse_media_playlist_res(&files["/out/playlist.m3u8"]).unwrap()
    }

    #[test]
    fn live_writes_segment_before_playlist_and_expires_old_files() {
        let (mut w, store) = writer(PlaylistKind::Live, None);
        feed(&mut w, 8);
        w.finish(true).unwrap();
        assert!(w.flush(Duration::from_secs(5)));
        let log = store.log.lock().unwrap().clone();
        let first_seg = log
            .iter()
            .position(|l| l == "put /out/segment00000.ts")
            .unwrap();
        let first_pl = log
            .iter()
            .position(|l| l == "put /out/playlist.m3u8")
            .unwrap();
        assert!(first_seg < first_pl, "{log:?}");
        let m = playlist(&store);
        assert_eq!(m.media_sequence, 5);
        assert!(m.end_list);
        let uris: Vec<_> = m.segments.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            ["segment00005.ts", "segment00006.ts", "segment00007.ts"]
        );
        let mut files: Vec<String> = store.files.lock().unwrap().keys().cloned().collect();
        files.sort();
        // max-files = 4: one expired segment stays for late readers.
        assert_eq!(
            files,
            [
                "/out/playlist.m3u8",
                "/out/segment00004.ts",
                "/out/segment00005.ts",
                "/out/segment00006.ts",
                "/out/segment00007.ts"
            ]
        );
    }

    #[test]
    fn event_keeps_everything() {
        let (mut w, store) = writer(PlaylistKind::Event, None);
        feed(&mut w, 6);
        w.finish(true).unwrap();
        assert!(w.flush(Duration::from_secs(5)));
        assert_eq!(playlist(&store).segments.len(), 6);
        assert_eq!(store.files.lock().unwrap().len(), 7);
    }

    #[test]
    fn encryption_rotates_keys_and_deletes_unused_ones() {
        let (mut w, store) = writer(PlaylistKind::Live, Some(Encryption { key_rotation: 2 }));
        feed(&mut w, 9);
        w.finish(true).unwrap();
        assert!(w.flush(Duration::from_secs(5)));
        let m = playlist(&store);
        let files = store.files.lock().unwrap();
        for s in &m.segments {
            // Every listed segment decrypts with the key its EXT-X-KEY names.
            let data = &files[&format!("/out/{}", s.uri)];
            assert_eq!(data.len() % 16, 0);
        }
        let keys: Vec<_> = m
            .segments
            .iter()
            .filter_map(|s| s.key.as_ref().and_then(|k| k.uri.clone()))
            .collect();
        assert_eq!(keys, ["key00003.key", "key00003.key", "key00004.key"]);
        let mut key_files: Vec<&String> = files.keys().filter(|k| k.ends_with(".key")).collect();
        key_files.sort();
        // Segments 5..8 are stored (max-files 4): keys 2, 3 and 4.
        assert_eq!(
            key_files,
            [
                "/out/key00002.key",
                "/out/key00003.key",
                "/out/key00004.key"
            ]
        );
        assert_eq!(files["/out/key00004.key"].len(), 16);
    }

    #[test]
    fn resume_continues_after_the_previous_playlist() {
        let (mut w, store) = writer(PlaylistKind::Live, None);
        feed(&mut w, 5);
        w.finish(false).unwrap();
        assert!(w.flush(Duration::from_secs(5)));
        let previous = playlist(&store);
        assert!(!previous.end_list);
        let config = w.config.clone();
        drop(w);
        let output = Output::start(
            store.clone(),
            OutputConfig::default(),
            None,
            Box::new(|_| {}),
        );
        let mut w = Writer::resume(config, output, &previous);
        feed(&mut w, 2);
        w.finish(true).unwrap();
        assert!(w.flush(Duration::from_secs(5)));
        let m = playlist(&store);
        assert_eq!(m.media_sequence, 4);
        let uris: Vec<_> = m.segments.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            ["segment00004.ts", "segment00005.ts", "segment00006.ts"]
        );
        assert!(m.segments[1].discontinuity);
        assert!(
            !store
                .files
                .lock()
                .unwrap()
                .contains_key("/out/segment00000.ts")
        );
    }

    fn fmp4_writer() -> (Writer, Arc<MemStore>) {
        let (w, store) = writer(PlaylistKind::Live, None);
        let mut config = w.config.clone();
        config.locations.segment = Pattern::parse("/out/segment%05d.m4s").unwrap();
        config.fmp4_init = Some(Pattern::parse("/out/init%05d.mp4").unwrap());
        let output = Output::start(
            store.clone(),
            OutputConfig::default(),
            None,
            Box::new(|_| {}),
        );
        (Writer::new(config, output), store)
    }

    fn avc(width: u16) -> Vec<Track> {
        vec![Track::new(fmp4::SampleEntry::Avc {
            width,
            height: 240,
            avcc: vec![1, 0x42, 0xc0, 0x1e, 0xff, 0xe0, 0],
        })]
    }

    /// 10 fps, a keyframe a second, from second `from` to `to`.
    fn feed_samples(w: &mut Writer, from: u64, to: u64) {
        for i in from * 10..to * 10 {
            let t = (i * SEC / 10) as i64;
            w.push_sample(
                0,
                Sample {
                    data: vec![0; 4],
                    pts_ns: t,
                    dts_ns: t,
                    duration_ns: Some(SEC / 10),
                    sync: i.is_multiple_of(10),
                },
            )
            .unwrap();
        }
        w.note_end(to * SEC);
    }

    #[test]
    fn fmp4_writes_init_segments_before_the_segments_that_need_them() {
        let (mut w, store) = fmp4_writer();
        w.set_tracks(avc(320)).unwrap();
        // The same tracks again: nothing new.
        assert!(w.set_tracks(avc(320)).unwrap().is_none());
        feed_samples(&mut w, 0, 3);
        // A format change at 3 s closes the segment being filled.
        let closed = w.set_tracks(avc(640)).unwrap().expect("segment closed");
        assert_eq!(closed.location, "/out/segment00002.m4s");
        feed_samples(&mut w, 3, 8);
        w.finish(true).unwrap();
        assert!(w.flush(Duration::from_secs(5)));
        let log = store.log.lock().unwrap().clone();
        let at = |l: &str| {
            log.iter()
                .position(|x| x == l)
                .unwrap_or_else(|| panic!("{l}: {log:?}"))
        };
        assert!(at("put /out/init00000.mp4") < at("put /out/segment00000.m4s"));
        assert!(at("put /out/init00003.mp4") < at("put /out/segment00003.m4s"));
        // init00000 went when segment00002, its last user, expired (max-files 4).
        assert!(at("delete /out/segment00002.m4s") < at("delete /out/init00000.mp4"));
        let m = playlist(&store);
        assert_eq!(m.version, Some(6));
        let uris: Vec<_> = m.segments.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            ["segment00005.m4s", "segment00006.m4s", "segment00007.m4s"]
        );
        assert_eq!(m.segments[0].map.as_ref().unwrap().uri, "init00003.mp4");
        let files = store.files.lock().unwrap();
        let init = &files["/out/init00003.mp4"];
        assert_eq!(&init[4..8], b"ftyp");
        // 640 wide in the second init segment's tkhd.
        assert!(init.windows(4).any(|x| x == (640u32 << 16).to_be_bytes()));
        let seg = &files["/out/segment00005.m4s"];
        assert_eq!(&seg[4..8], b"styp");
        drop(files);
        // The segment after the change is a discontinuity (listed while it was in the window).
        let text = String::from_utf8(m3u8_rs_text(&store)).unwrap();
        assert!(!text.contains("init00000"), "{text}");
    }

    fn m3u8_rs_text(store: &MemStore) -> Vec<u8> {
        store.files.lock().unwrap()["/out/playlist.m3u8"].clone()
    }

    #[test]
    fn low_latency_parts_are_published_before_the_playlist_that_lists_them() {
        let (mut w, store) = fmp4_writer();
        assert!(w.set_part_duration(SEC / 2));
        w.set_tracks(avc(320)).unwrap();
        let mut hints = Vec::new();
        for i in 0..60u64 {
            let t = (i * SEC / 10) as i64;
            w.push_sample(
                0,
                Sample {
                    data: vec![0; 4],
                    pts_ns: t,
                    dts_ns: t,
                    duration_ns: Some(SEC / 10),
                    sync: i.is_multiple_of(10),
                },
            )
            .unwrap();
            assert!(w.flush(Duration::from_secs(5)));
            let Some(text) = store
                .files
                .lock()
                .unwrap()
                .get("/out/playlist.m3u8")
                .cloned()
            else {
                continue;
            };
            let text = String::from_utf8(text).unwrap();
            if let Some(h) = text
                .lines()
                .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:"))
                && hints.last().map(String::as_str) != Some(h)
            {
                hints.push(h.to_owned());
            }
            // Every part the playlist names is there.
            let files = store.files.lock().unwrap();
            for l in text.lines().filter_map(|l| l.strip_prefix("#EXT-X-PART:")) {
                let uri = l.split('"').nth(1).unwrap();
                assert!(files.contains_key(&format!("/out/{uri}")), "{uri}: {text}");
            }
        }
        // Each hinted part came next: parts 0 and 1 of every segment, in order.
        let expected: Vec<String> = (0..6)
            .flat_map(|seg| (0..2).map(move |p| (seg, p)))
            .map(|(seg, p)| format!("TYPE=PART,URI=\"segment{seg:05}.{p}.m4s\""))
            .skip_while(|h| *h != hints[0])
            .take(hints.len())
            .collect();
        assert!(hints.len() >= 8, "{hints:?}");
        assert_eq!(hints, expected);
        let text = String::from_utf8(m3u8_rs_text(&store)).unwrap();
        assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.5\n"), "{text}");
        assert!(text.contains("#EXT-X-PART:DURATION=0.5,URI=\"segment00004.0.m4s\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=0.5,URI=\"segment00004.1.m4s\"\n#EXTINF:1,\nsegment00004.m4s"), "{text}");
        // Parts no longer listed are deleted (one segment later); without a server there is no
        // delta playlist.
        let files = store.files.lock().unwrap();
        assert!(!files.contains_key("/out/segment00000.0.m4s"));
        assert!(files.contains_key("/out/segment00004.1.m4s"));
        assert!(!files.contains_key("/out/playlist-delta.m3u8"));
        drop(files);
        // TS parts too, but not with encryption.
        let (mut ts, _) = writer(PlaylistKind::Live, None);
        assert!(ts.set_part_duration(SEC));
        let (mut encrypted, _) = writer(PlaylistKind::Live, Some(Encryption { key_rotation: 0 }));
        assert!(!encrypted.set_part_duration(SEC));
        assert!(encrypted.set_part_duration(0));
    }

    /// With the built-in server, the part each published playlist hints is being written
    /// (handed to the server, [`Job::Grow`]) or written by the time the playlist is out, and
    /// what was handed out of it grows into exactly its file.
    #[test]
    fn hinted_parts_are_handed_to_the_server_as_they_are_written() {
        use crate::hls::growing::{Growing, Piece};
        use crate::hls::store::{DirStore, Published};
        let dir = std::env::temp_dir().join(format!("hls-writer-grow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let published = Arc::new(Published::default());
        let output = Output::start(
            Arc::new(DirStore),
            OutputConfig::default(),
            Some(published.clone()),
            Box::new(|_| {}),
        );
        let (w, _) = writer(PlaylistKind::Live, None);
        let mut config = w.config.clone();
        let at = |name: &str| dir.join(name).to_string_lossy().into_owned();
        config.locations.segment = Pattern::parse(&at("segment%05d.m4s")).unwrap();
        config.locations.playlist = at("playlist.m3u8");
        config.fmp4_init = Some(Pattern::parse(&at("init%05d.mp4")).unwrap());
        let mut w = Writer::new(config, output);
        assert!(w.set_part_duration(SEC / 2));
        w.set_part_streaming(true);
        w.set_tracks(avc(320)).unwrap();
        let mut seen: Vec<(String, Arc<Growing>)> = Vec::new();
        for i in 0..40u64 {
            let t = (i * SEC / 10) as i64;
            let sample = Sample {
                data: vec![i as u8; 100],
                pts_ns: t,
                dts_ns: t,
                duration_ns: Some(SEC / 10),
                sync: i.is_multiple_of(10),
            };
            w.push_sample(0, sample).unwrap();
            assert!(w.flush(Duration::from_secs(5)));
            let Some(hint) = published
                .position("playlist.m3u8")
                .and_then(|p| p.preload_hint)
            else {
                continue;
            };
            match published.growing(&hint) {
                Some(g) => {
                    if seen.last().is_none_or(|(h, _)| *h != hint) {
                        seen.push((hint, g));
                    }
                }
                None => assert!(published.get(&hint).is_some(), "{hint}: neither"),
            }
        }
        assert!(w.finish(true).unwrap().is_some());
        assert!(w.flush(Duration::from_secs(5)));
        assert!(seen.len() >= 6, "{} hinted parts seen growing", seen.len());
        let runtime = crate::runtime::handle();
        for (hint, g) in seen {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            let (mut bytes, mut i) = (Vec::new(), 0);
            let end = loop {
                match runtime.block_on(g.piece(i, deadline)) {
                    Piece::Data(d) => bytes.extend_from_slice(&d),
                    end => break end,
                }
                i += 1;
            };
            assert_eq!(end, Piece::End, "{hint}");
            assert!(i > 2, "{hint}: {i} pieces");
            assert!(bytes == std::fs::read(dir.join(&hint)).unwrap(), "{hint}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn part_and_delta_locations() {
        assert_eq!(
            part_location("/a.b/segment00012.m4s", 3),
            "/a.b/segment00012.3.m4s"
        );
        assert_eq!(part_location("http://h/x/seg", 0), "http://h/x/seg.0");
        assert_eq!(
            delta_location("/out/playlist.m3u8"),
            "/out/playlist-delta.m3u8"
        );
    }

    #[test]
    fn fmp4_discontinuity_follows_a_format_change() {
        let (mut w, store) = fmp4_writer();
        w.set_tracks(avc(320)).unwrap();
        feed_samples(&mut w, 0, 2);
        w.set_tracks(avc(640)).unwrap();
        feed_samples(&mut w, 2, 3);
        w.finish(true).unwrap();
        assert!(w.flush(Duration::from_secs(5)));
        let m = playlist(&store);
        let disc: Vec<bool> = m.segments.iter().map(|s| s.discontinuity).collect();
        assert_eq!(disc, [false, false, true]);
        let maps: Vec<_> = m
            .segments
            .iter()
            .map(|s| s.map.as_ref().map(|m| m.uri.clone()))
            .collect();
        // Written where it changes (a map applies until the next one).
        let init = |n: &str| Some(format!("init0000{n}.mp4"));
        assert_eq!(maps, [init("0"), None, init("2")]);
    }
}
