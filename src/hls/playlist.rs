//! The media playlist: a window of finished segments, sequence numbers, rendering with m3u8-rs.
//!
//! Specifications: RFC 8216 §4.3.1 (EXTM3U, EXT-X-VERSION), §4.3.2.1 (EXTINF), §4.3.2.3 (EXT-X-
//! DISCONTINUITY), §4.3.2.4 (EXT-X-KEY), §4.3.2.5 (EXT-X-MAP), §4.3.2.6 (EXT-X-PROGRAM-DATE-TIME), §4.3.3.1-§4.3.3.5
//! (TARGETDURATION, MEDIA-SEQUENCE, DISCONTINUITY-SEQUENCE, ENDLIST, PLAYLIST-TYPE), §6.2.2 (live
//! playlists), §7 (protocol version); RFC 8216bis §4.4.3.7-§4.4.3.8, §4.4.4.9, §4.4.5.3 (the
//! LL-HLS tags), §4.4.5.4 (EXT-X-RENDITION-REPORT).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use m3u8_rs::{Key, KeyMethod, MediaPlaylist, MediaPlaylistType, MediaSegment};

/// What kind of playlist is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlaylistKind {
    /// A sliding window of the latest `playlist_length` segments.
    #[default]
    Live,
    /// Every segment stays; `EXT-X-PLAYLIST-TYPE:EVENT`.
    Event,
    /// Every segment stays; written as EVENT while recording, `EXT-X-PLAYLIST-TYPE:VOD` at the end
    /// (a VOD playlist must never change once published).
    Vod,
}

/// The encryption key that applies to a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentKey {
    /// URI of the key file as written in the playlist.
    pub uri: String,
    /// Initialisation vector.
    pub iv: [u8; 16],
}

/// One segment as listed in the playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Media sequence number.
    pub sequence: u64,
    /// URI as written in the playlist.
    pub uri: String,
    pub duration_s: f64,
    pub discontinuity: bool,
    pub key: Option<SegmentKey>,
    /// URI of the Media Initialization Section (fMP4 init segment) it needs, if any.
    pub map: Option<String>,
    pub program_date_time: Option<SystemTime>,
    /// LL-HLS parts (EXT-X-PART), listed while the segment is among the last ones.
    pub parts: Vec<PartEntry>,
}

/// One LL-HLS part (partial segment) as listed in the playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct PartEntry {
    pub uri: String,
    pub duration_s: f64,
    /// It starts with an independent frame (INDEPENDENT=YES).
    pub independent: bool,
}

/// EXT-X-RENDITION-REPORT (RFC 8216bis §4.4.5.4): where another rendition of the same
/// multivariant stream is, so that a player switching to it can ask at once for its next part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionReport {
    /// Its media playlist, relative to this one (they are side by side).
    pub uri: String,
    /// The media sequence number of its last segment, or of its last part when it has parts.
    pub last_msn: u64,
    /// The index of its last part (within `last_msn`), when it has parts.
    pub last_part: Option<u64>,
}

/// The last segment and part of every rendition of a multivariant stream, shared by their
/// writers: each updates its own when it writes its playlist and reports the others'.
#[derive(Debug, Default)]
pub struct RenditionReports {
    /// By playlist URI, in the renditions' order: (last MSN, last part) once known.
    last: Mutex<Vec<(String, Option<LastPart>)>>,
}

/// A playlist's last segment and part (see [`Playlist::last_part`]).
pub type LastPart = (u64, Option<u64>);

impl RenditionReports {
    /// The renditions' media playlist URIs (file names side by side).
    pub fn new(uris: impl IntoIterator<Item = String>) -> RenditionReports {
        RenditionReports {
            last: Mutex::new(uris.into_iter().map(|u| (u, None)).collect()),
        }
    }

    /// Rendition `uri` holds segment `last.0` (part `last.1` of it) now.
    pub fn update(&self, uri: &str, last: (u64, Option<u64>)) {
        if let Some(r) = self.last.lock().unwrap().iter_mut().find(|(u, _)| u == uri) {
            r.1 = Some(last);
        }
    }

    /// The reports of every rendition but `uri` that has a segment or part.
    pub fn others(&self, uri: &str) -> Vec<RenditionReport> {
        self.last
            .lock()
            .unwrap()
            .iter()
            .filter(|(u, _)| u != uri)
            .filter_map(|(u, last)| {
                last.map(|(last_msn, last_part)| RenditionReport {
                    uri: u.clone(),
                    last_msn,
                    last_part,
                })
            })
            .collect()
    }
}

/// Segments a resumed playlist must be able to add before its numbers run out.
pub const RESUME_HEADROOM: u64 = 1 << 32;

#[derive(Debug, Clone)]
pub struct PlaylistConfig {
    pub kind: PlaylistKind,
    /// Segments in a live playlist; 0 keeps every segment.
    pub playlist_length: usize,
    /// Configured EXT-X-TARGETDURATION in seconds (raised if a segment runs longer, which only
    /// happens when the input's keyframes come too rarely).
    pub target_duration_s: u64,
}

#[derive(Debug, Clone)]
pub struct Playlist {
    config: PlaylistConfig,
    entries: VecDeque<Entry>,
    /// Sequence number of the first entry (EXT-X-MEDIA-SEQUENCE).
    media_sequence: u64,
    /// Discontinuities that have slid out of the window (EXT-X-DISCONTINUITY-SEQUENCE).
    discontinuity_sequence: u64,
    next_sequence: u64,
    ended: bool,
    max_duration_s: f64,
    /// LL-HLS: the part target duration (s); None writes no LL-HLS tags.
    part_target_s: Option<f64>,
    /// Parts of the segment being filled, and the part expected next (EXT-X-PRELOAD-HINT).
    open_parts: Vec<PartEntry>,
    preload_hint: Option<String>,
    /// LL-HLS with renditions: the other renditions' positions (EXT-X-RENDITION-REPORT).
    reports: Vec<RenditionReport>,
}

/// A duration in seconds as written in LL-HLS attributes: up to millisecond precision, no
/// trailing zeros.
fn seconds(s: f64) -> String {
    let ms = (s * 1000.0).round() / 1000.0;
    format!("{ms}")
}

impl Playlist {
    pub fn new(config: PlaylistConfig) -> Playlist {
        Playlist {
            config,
            entries: VecDeque::new(),
            media_sequence: 0,
            discontinuity_sequence: 0,
            next_sequence: 0,
            ended: false,
            max_duration_s: 0.0,
            part_target_s: None,
            open_parts: Vec::new(),
            preload_hint: None,
            reports: Vec::new(),
        }
    }

    /// The last segment listed and, with parts, the last part listed (of the segment being
    /// filled when it has one, else of the last segment): what a rendition report of this
    /// playlist says (RFC 8216bis §4.4.5.4). None before the first segment or part.
    pub fn last_part(&self) -> Option<(u64, Option<u64>)> {
        if !self.open_parts.is_empty() {
            return Some((self.next_sequence, Some(self.open_parts.len() as u64 - 1)));
        }
        let last = self.entries.back()?;
        let part = (self.part_target_s.is_some() && !last.parts.is_empty())
            .then(|| last.parts.len() as u64 - 1);
        Some((last.sequence, part))
    }

    /// The other renditions' reports, written at the end of an LL-HLS playlist.
    pub fn set_rendition_reports(&mut self, reports: Vec<RenditionReport>) {
        self.reports = reports;
    }

    /// Turns LL-HLS on (RFC 8216bis §4.4.3.7, §4.4.3.8, §4.4.4.9, §4.4.5.3): EXT-X-PART-INF with
    /// this part target, EXT-X-SERVER-CONTROL, EXT-X-PART lines and EXT-X-PRELOAD-HINT.
    pub fn set_part_target(&mut self, part_target_s: Option<f64>) {
        self.part_target_s = part_target_s.filter(|t| *t > 0.0);
    }

    pub fn part_target(&self) -> Option<f64> {
        self.part_target_s
    }

    /// A finished part of the segment being filled (the next [`Playlist::add`] takes them).
    pub fn add_part(&mut self, part: PartEntry) {
        self.open_parts.push(part);
    }

    /// Parts of the segment being filled so far.
    pub fn open_parts(&self) -> usize {
        self.open_parts.len()
    }

    /// The URI of the part expected next (EXT-X-PRELOAD-HINT TYPE=PART).
    pub fn set_preload_hint(&mut self, uri: Option<String>) {
        self.preload_hint = uri;
    }

    /// CAN-SKIP-UNTIL (s): six target durations, the least RFC 8216bis §4.4.3.8 allows.
    pub fn skip_until(&self) -> u64 {
        6 * self.target_duration()
    }

    /// How many leading segments a delta update skips (`_HLS_skip=YES`): those that end at least
    /// CAN-SKIP-UNTIL before the end of the playlist.
    pub fn skippable(&self) -> usize {
        let limit = self.skip_until() as f64;
        let mut from_end: f64 = self.open_parts.iter().map(|p| p.duration_s).sum();
        let mut keep = 0;
        for e in self.entries.iter().rev() {
            if from_end >= limit {
                break;
            }
            from_end += e.duration_s;
            keep += 1;
        }
        self.entries.len() - keep
    }

    /// Continues after a previous run's playlist: its segments stay listed, numbering goes on and
    /// the next segment is a discontinuity.
    ///
    /// A previous playlist whose numbers leave less than [`RESUME_HEADROOM`] segments before the
    /// end of their range (a damaged or foreign file) is not continued: numbering starts anew.
    pub fn resume(config: PlaylistConfig, previous: &MediaPlaylist) -> Playlist {
        let needed = u64::try_from(previous.segments.len())
            .unwrap_or(u64::MAX)
            .saturating_add(RESUME_HEADROOM);
        if [previous.media_sequence, previous.discontinuity_sequence]
            .iter()
            .any(|n| n.checked_add(needed).is_none())
        {
            log::warn!(
                "not continuing the previous playlist: its media sequence {} or discontinuity \
                 sequence {} is too close to the end of the range",
                previous.media_sequence,
                previous.discontinuity_sequence
            );
            return Playlist::new(config);
        }
        let mut p = Playlist::new(config);
        p.media_sequence = previous.media_sequence;
        p.discontinuity_sequence = previous.discontinuity_sequence;
        p.next_sequence = previous.media_sequence;
        let mut key: Option<SegmentKey> = None;
        let mut map: Option<String> = None;
        for s in &previous.segments {
            if let Some(m) = &s.map {
                map = Some(m.uri.clone());
            }
            if let Some(k) = &s.key {
                key = match (&k.method, &k.uri) {
                    (KeyMethod::AES128, Some(uri)) => Some(SegmentKey {
                        uri: uri.clone(),
                        iv: k.iv.as_deref().and_then(parse_iv).unwrap_or_else(|| {
                            // Without an IV attribute the IV is the sequence number.
                            sequence_iv(p.next_sequence)
                        }),
                    }),
                    _ => None,
                };
            }
            let entry = Entry {
                sequence: p.next_sequence,
                uri: s.uri.clone(),
                duration_s: f64::from(s.duration),
                discontinuity: s.discontinuity,
                key: key.clone(),
                map: map.clone(),
                program_date_time: s.program_date_time.map(SystemTime::from),
                parts: Vec::new(),
            };
            p.max_duration_s = p.max_duration_s.max(entry.duration_s);
            p.entries.push_back(entry);
            p.next_sequence += 1;
        }
        p
    }

    pub fn config(&self) -> &PlaylistConfig {
        &self.config
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Adds a finished segment (its sequence number is assigned here and returned) and returns
    /// the entries that slid out of a live window.
    pub fn add(&mut self, mut entry: Entry) -> (u64, Vec<Entry>) {
        entry.sequence = self.next_sequence;
        if entry.parts.is_empty() {
            entry.parts = std::mem::take(&mut self.open_parts);
        }
        self.open_parts.clear();
        self.next_sequence += 1;
        self.max_duration_s = self.max_duration_s.max(entry.duration_s);
        let seq = entry.sequence;
        self.entries.push_back(entry);
        let mut removed = Vec::new();
        if self.config.kind == PlaylistKind::Live && self.config.playlist_length > 0 {
            while self.entries.len() > self.config.playlist_length {
                let old = self.entries.pop_front().expect("non-empty");
                self.media_sequence = old.sequence + 1;
                // A discontinuity tag that leaves the window is counted (RFC 8216 6.2.1).
                if old.discontinuity {
                    self.discontinuity_sequence += 1;
                }
                removed.push(old);
            }
        }
        (seq, removed)
    }

    /// Marks the end of the stream (EXT-X-ENDLIST; a VOD playlist becomes VOD).
    pub fn end(&mut self) {
        self.ended = true;
        self.preload_hint = None;
    }

    /// EXT-X-TARGETDURATION: the configured target, or more if a segment ran longer.
    pub fn target_duration(&self) -> u64 {
        let longest = self.max_duration_s.round() as u64;
        self.config.target_duration_s.max(longest).max(1)
    }

    /// Lowest EXT-X-VERSION that covers the tags in use (RFC 8216 section 7).
    pub fn version(&self) -> usize {
        let mut v = 1;
        if self.entries.iter().any(|e| e.key.is_some()) {
            // IV attribute of EXT-X-KEY.
            v = v.max(2);
        }
        if self
            .entries
            .iter()
            .any(|e| (e.duration_s as f32).fract() != 0.0)
        {
            // Decimal-floating-point EXTINF durations.
            v = v.max(3);
        }
        if self.entries.iter().any(|e| e.map.is_some()) {
            // EXT-X-MAP in a playlist without EXT-X-I-FRAMES-ONLY.
            v = v.max(6);
        }
        v
    }

    /// EXT-X-VERSION of a delta update that skips `skip` segments: 9 for EXT-X-SKIP (RFC
    /// 8216bis §7).
    fn version_with_skip(&self, skip: usize) -> usize {
        if skip > 0 {
            self.version().max(9)
        } else {
            self.version()
        }
    }

    /// Sequence number of the first segment whose parts are listed (the next sequence number
    /// when none are).
    pub fn first_sequence_with_parts(&self) -> u64 {
        self.entries
            .get(self.first_with_parts())
            .map_or(self.next_sequence, |e| e.sequence)
    }

    /// Which trailing entries list their parts: enough for the last three target durations
    /// (RFC 8216bis §4.4.4.9), counted with the open segment's parts.
    fn first_with_parts(&self) -> usize {
        let Some(_) = self.part_target_s else {
            return self.entries.len();
        };
        let limit = 3.0 * self.target_duration() as f64;
        let mut from_end: f64 = self.open_parts.iter().map(|p| p.duration_s).sum();
        let mut first = self.entries.len();
        for e in self.entries.iter().rev() {
            if from_end >= limit || e.parts.is_empty() {
                break;
            }
            from_end += e.duration_s;
            first -= 1;
        }
        first
    }

    fn part_line(p: &PartEntry) -> String {
        format!(
            "#EXT-X-PART:DURATION={},URI=\"{}\"{}",
            seconds(p.duration_s),
            p.uri,
            if p.independent {
                ",INDEPENDENT=YES"
            } else {
                ""
            }
        )
    }

    /// The playlist as m3u8-rs builds it (without the `EXT-X-KEY:METHOD=NONE` that
    /// [`Playlist::render`] puts before an EXT-X-MAP under a key: m3u8-rs cannot express it).
    pub fn to_media_playlist(&self) -> MediaPlaylist {
        self.media_playlist().0
    }

    /// The playlist, and the indexes of segments whose EXT-X-MAP comes while an AES-128 key is
    /// in effect (see [`Playlist::render`]).
    fn media_playlist(&self) -> (MediaPlaylist, Vec<usize>) {
        self.media_playlist_from(0)
    }

    /// The playlist without its first `skip` segments (a delta update): the first segment
    /// written carries the key and map in effect.
    fn media_playlist_from(&self, skip: usize) -> (MediaPlaylist, Vec<usize>) {
        let mut last_key: Option<&SegmentKey> = None;
        let mut last_map: Option<&String> = None;
        let mut clear_maps = Vec::new();
        let with_parts = self.first_with_parts();
        let segments = self
            .entries
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, e)| {
                let i = i - skip;
                // EXT-X-MAP applies until the next one: written when it changes.
                let map = (e.map.as_ref() != last_map).then(|| {
                    last_map = e.map.as_ref();
                    e.map.as_ref().map(|uri| m3u8_rs::Map {
                        uri: uri.clone(),
                        ..Default::default()
                    })
                });
                let map = map.flatten();
                if map.is_some() && last_key.is_some() {
                    // The init segment stays in clear: the key is cancelled before the MAP and
                    // written again after it.
                    clear_maps.push(i);
                    last_key = None;
                }
                // EXT-X-KEY applies until the next one: write it when the key or IV changes.
                let key = if e.key.as_ref() != last_key {
                    last_key = e.key.as_ref();
                    Some(match &e.key {
                        Some(k) => Key {
                            method: KeyMethod::AES128,
                            uri: Some(k.uri.clone()),
                            iv: Some(format_iv(&k.iv)),
                            keyformat: None,
                            keyformatversions: None,
                        },
                        None => Key {
                            method: KeyMethod::None,
                            uri: None,
                            iv: None,
                            keyformat: None,
                            keyformatversions: None,
                        },
                    })
                } else {
                    None
                };
                MediaSegment {
                    uri: e.uri.clone(),
                    duration: e.duration_s as f32,
                    discontinuity: e.discontinuity,
                    key,
                    map,
                    program_date_time: e
                        .program_date_time
                        .map(|t| chrono::DateTime::<chrono::Utc>::from(t).fixed_offset()),
                    unknown_tags: if i + skip >= with_parts {
                        e.parts
                            .iter()
                            .map(|p| m3u8_rs::ExtTag {
                                tag: Self::part_line(p)["#EXT-".len()..].to_owned(),
                                rest: None,
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                }
            })
            .collect();
        let playlist_type = match self.config.kind {
            PlaylistKind::Live => None,
            PlaylistKind::Event => Some(MediaPlaylistType::Event),
            PlaylistKind::Vod if self.ended => Some(MediaPlaylistType::Vod),
            PlaylistKind::Vod => Some(MediaPlaylistType::Event),
        };
        let playlist = MediaPlaylist {
            version: Some(self.version()),
            target_duration: self.target_duration(),
            media_sequence: self.media_sequence,
            segments,
            discontinuity_sequence: self.discontinuity_sequence,
            end_list: self.ended,
            playlist_type,
            ..Default::default()
        };
        (playlist, clear_maps)
    }

    /// The playlist text. An init segment is never encrypted: an EXT-X-KEY applies to the
    /// EXT-X-MAP tags after it too (RFC 8216 §4.3.2.4), so a MAP that follows one is preceded by
    /// `EXT-X-KEY:METHOD=NONE` (m3u8-rs writes a segment's MAP before its KEY, so the segment's
    /// own key comes after the MAP).
    ///
    /// LL-HLS (see [`Playlist::set_part_target`]): EXT-X-SERVER-CONTROL and EXT-X-PART-INF after
    /// the header's m3u8-rs tags, EXT-X-PART before the EXTINF of the last segments, the parts of
    /// the segment being filled and EXT-X-PRELOAD-HINT at the end (m3u8-rs knows none of them).
    pub fn render(&self) -> Vec<u8> {
        self.render_from(0)
    }

    /// A playlist delta update (`_HLS_skip=YES`, RFC 8216bis §6.2.5.1): the segments before the
    /// skip boundary replaced by `EXT-X-SKIP:SKIPPED-SEGMENTS` (EXT-X-VERSION 9). Without LL-HLS,
    /// or nothing to skip, the whole playlist.
    pub fn render_delta(&self) -> Vec<u8> {
        let skip = if self.part_target_s.is_some() {
            self.skippable()
        } else {
            0
        };
        self.render_from(skip)
    }

    fn render_from(&self, skip: usize) -> Vec<u8> {
        let out = self.render_segments(skip);
        let Some(part_target) = self.part_target_s else {
            return out;
        };
        // The header as m3u8-rs writes it: the same playlist without segments (and ENDLIST)
        // is a prefix of the whole text.
        let mut header_only = self.media_playlist_from(self.entries.len()).0;
        header_only.end_list = false;
        header_only.version = Some(self.version_with_skip(skip));
        let mut header = Vec::new();
        header_only
            .write_to(&mut header)
            .expect("writing to a Vec cannot fail");
        let text = String::from_utf8(out).expect("m3u8-rs writes UTF-8");
        let header = String::from_utf8(header).expect("m3u8-rs writes UTF-8");
        debug_assert!(text.starts_with(&header));
        let body = text.get(header.len()..).unwrap_or_default();
        let mut result = header;
        result.push_str(&format!(
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={},CAN-SKIP-UNTIL={}\n",
            seconds(3.0 * part_target),
            self.skip_until()
        ));
        result.push_str(&format!(
            "#EXT-X-PART-INF:PART-TARGET={}\n",
            seconds(part_target)
        ));
        if skip > 0 {
            result.push_str(&format!("#EXT-X-SKIP:SKIPPED-SEGMENTS={skip}\n"));
        }
        let (segments, endlist) = match body.strip_suffix("#EXT-X-ENDLIST\n") {
            Some(s) => (s, true),
            None => (body, false),
        };
        result.push_str(segments);
        if !self.ended {
            for p in &self.open_parts {
                result.push_str(&Self::part_line(p));
                result.push('\n');
            }
            if let Some(hint) = &self.preload_hint {
                result.push_str(&format!("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{hint}\"\n"));
            }
            for r in &self.reports {
                result.push_str(&format!(
                    "#EXT-X-RENDITION-REPORT:URI=\"{}\",LAST-MSN={}",
                    r.uri, r.last_msn
                ));
                if let Some(part) = r.last_part {
                    result.push_str(&format!(",LAST-PART={part}"));
                }
                result.push('\n');
            }
        }
        if endlist {
            result.push_str("#EXT-X-ENDLIST\n");
        }
        result.into_bytes()
    }

    fn render_segments(&self, skip: usize) -> Vec<u8> {
        let (mut playlist, clear_maps) = self.media_playlist_from(skip);
        playlist.version = Some(self.version_with_skip(skip));
        let mut out = Vec::new();
        playlist
            .write_to(&mut out)
            .expect("writing to a Vec cannot fail");
        if clear_maps.is_empty() {
            return out;
        }
        // Which segment each MAP line belongs to: the n-th MAP written is the n-th entry with one.
        let with_map: Vec<usize> = playlist
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.map.is_some())
            .map(|(i, _)| i)
            .collect();
        let text = String::from_utf8(out).expect("m3u8-rs writes UTF-8");
        let mut result = String::with_capacity(text.len() + 32 * clear_maps.len());
        let mut maps_seen = 0;
        for line in text.split_inclusive('\n') {
            if line.starts_with("#EXT-X-MAP:") {
                if with_map
                    .get(maps_seen)
                    .is_some_and(|i| clear_maps.contains(i))
                {
                    result.push_str("#EXT-X-KEY:METHOD=NONE\n");
                }
                maps_seen += 1;
            }
            result.push_str(line);
        }
        result.into_bytes()
    }
}

/// The IV HLS implies for a segment without an IV attribute: its sequence number.
pub fn sequence_iv(sequence: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[8..].copy_from_slice(&sequence.to_be_bytes());
    iv
}

pub fn format_iv(iv: &[u8; 16]) -> String {
    let mut s = String::from("0x");
    for b in iv {
        s.push_str(&format!("{b:02X}"));
    }
    s
}

pub fn parse_iv(s: &str) -> Option<[u8; 16]> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if hex.len() != 32 {
        return None;
    }
    let mut iv = [0u8; 16];
    for (i, b) in iv.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(iv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uri: &str, d: f64, disc: bool) -> Entry {
        Entry {
            sequence: 0,
            uri: uri.into(),
            duration_s: d,
            discontinuity: disc,
            key: None,
            map: None,
            program_date_time: None,
            parts: Vec::new(),
        }
    }

    fn part(uri: &str, independent: bool) -> PartEntry {
        PartEntry {
            uri: uri.into(),
            duration_s: 0.5,
            independent,
        }
    }

    /// A live LL-HLS playlist: 1 s target, 0.5 s parts, `segments` segments of two parts each,
    /// then one part of the segment being filled.
    fn low_latency(segments: u64) -> Playlist {
        let mut p = Playlist::new(PlaylistConfig {
            kind: PlaylistKind::Live,
            playlist_length: 10,
            target_duration_s: 1,
        });
        p.set_part_target(Some(0.5));
        for n in 0..segments {
            p.add_part(part(&format!("s{n}.0.m4s"), true));
            p.add_part(part(&format!("s{n}.1.m4s"), false));
            let mut e = entry(&format!("s{n}.m4s"), 1.0, false);
            e.map = Some("init.mp4".into());
            p.add(e);
        }
        p.add_part(part(&format!("s{segments}.0.m4s"), true));
        p.set_preload_hint(Some(format!("s{segments}.1.m4s")));
        p
    }

    #[test]
    fn low_latency_tags() {
        let p = low_latency(5);
        let text = String::from_utf8(p.render()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            &lines[..6],
            [
                "#EXTM3U",
                "#EXT-X-VERSION:6",
                "#EXT-X-TARGETDURATION:1",
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5,CAN-SKIP-UNTIL=6",
                "#EXT-X-PART-INF:PART-TARGET=0.5",
                "#EXT-X-MAP:URI=\"init.mp4\"",
            ],
            "{text}"
        );
        // Parts for the last three target durations: the open part and segments 3 and 4 (and
        // the segment that crosses the limit, 2).
        assert!(!text.contains("s1.0.m4s"), "{text}");
        assert!(text.contains("#EXT-X-PART:DURATION=0.5,URI=\"s2.0.m4s\",INDEPENDENT=YES\n"));
        assert!(text.contains("#EXT-X-PART:DURATION=0.5,URI=\"s4.1.m4s\"\n#EXTINF:1,\ns4.m4s\n"));
        assert!(text.ends_with(
            "s4.m4s\n#EXT-X-PART:DURATION=0.5,URI=\"s5.0.m4s\",INDEPENDENT=YES\n\
             #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"s5.1.m4s\"\n"
        ));
        // m3u8-rs still reads it (as unknown tags).
        let m = parse(&p);
        assert_eq!(m.segments.len(), 5);
        // No skipping below CAN-SKIP-UNTIL: the delta update is the whole playlist.
        assert_eq!(p.render_delta(), p.render());
    }

    #[test]
    fn rendition_reports_follow_the_other_renditions() {
        let reports = RenditionReports::new(["a.m3u8".to_owned(), "b.m3u8".to_owned()]);
        let mut a = low_latency(3);
        // Segment 3 is being filled, with its part 0 listed.
        assert_eq!(a.last_part(), Some((3, Some(0))));
        reports.update("a.m3u8", a.last_part().unwrap());
        assert!(reports.others("b.m3u8").len() == 1 && reports.others("a.m3u8").is_empty());
        let mut b = low_latency(2);
        b.add_part(part("s2.1.m4s", false));
        b.add(entry("s2.m4s", 1.0, false));
        // No part of segment 3 yet: the last part is segment 2's last.
        assert_eq!(b.last_part(), Some((2, Some(1))));
        reports.update("b.m3u8", b.last_part().unwrap());
        reports.update("unknown.m3u8", (9, None));
        a.set_rendition_reports(reports.others("a.m3u8"));
        b.set_rendition_reports(reports.others("b.m3u8"));
        let text = String::from_utf8(a.render()).unwrap();
        assert!(
            text.ends_with(
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"s3.1.m4s\"\n\
                 #EXT-X-RENDITION-REPORT:URI=\"b.m3u8\",LAST-MSN=2,LAST-PART=1\n"
            ),
            "{text}"
        );
        let text = String::from_utf8(b.render_delta()).unwrap();
        assert!(
            text.ends_with("#EXT-X-RENDITION-REPORT:URI=\"a.m3u8\",LAST-MSN=3,LAST-PART=0\n"),
            "{text}"
        );
        assert_eq!(parse(&a).segments.len(), 3);
        // Without parts: the last segment, no LAST-PART (and no report is written).
        let mut plain = live(3);
        assert_eq!(plain.last_part(), None);
        plain.add(entry("x0.ts", 2.0, false));
        assert!(plain.last_part().is_some_and(|(_, part)| part.is_none()));
        plain.set_rendition_reports(reports.others("a.m3u8"));
        assert!(
            !String::from_utf8(plain.render())
                .unwrap()
                .contains("RENDITION-REPORT")
        );
    }

    #[test]
    fn delta_update_skips_old_segments() {
        let p = low_latency(10);
        // s0..s3 end 6.5 s or more before the end (10.5 s, with the open part).
        assert_eq!(p.skippable(), 4);
        let text = String::from_utf8(p.render_delta()).unwrap();
        assert!(text.starts_with("#EXTM3U\n#EXT-X-VERSION:9\n"), "{text}");
        assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n"));
        assert!(!text.contains("s3.m4s"));
        // The first segment after the skip carries the map in effect.
        assert!(
            text.contains("#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:1,\ns4.m4s"),
            "{text}"
        );
        let m = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
        assert_eq!(m.segments.len(), 6);
        assert_eq!(m.media_sequence, 0);
        // The full playlist is unchanged by it.
        assert!(String::from_utf8(p.render()).unwrap().contains("s3.m4s"));
    }

    #[test]
    fn end_of_stream_drops_the_preload_hint() {
        let mut p = low_latency(2);
        p.add(entry("s2.m4s", 0.5, false));
        p.end();
        let text = String::from_utf8(p.render()).unwrap();
        assert!(!text.contains("PRELOAD-HINT"), "{text}");
        assert!(text.ends_with("s2.m4s\n#EXT-X-ENDLIST\n"), "{text}");
    }

    fn parse(p: &Playlist) -> MediaPlaylist {
        let bytes = p.render();
        m3u8_rs::parse_media_playlist_res(&bytes).expect("parses")
    }

    fn live(len: usize) -> Playlist {
        Playlist::new(PlaylistConfig {
            kind: PlaylistKind::Live,
            playlist_length: len,
            target_duration_s: 2,
        })
    }

    #[test]
    fn live_window_slides_and_counts_sequences() {
        let mut p = live(3);
        let mut removed = Vec::new();
        for i in 0..5 {
            let (seq, r) = p.add(entry(&format!("s{i}.ts"), 2.0, i == 2));
            assert_eq!(seq, i);
            removed.extend(r);
        }
        assert_eq!(
            removed.iter().map(|e| e.uri.as_str()).collect::<Vec<_>>(),
            ["s0.ts", "s1.ts"]
        );
        let m = parse(&p);
        assert_eq!(m.media_sequence, 2);
        assert_eq!(m.discontinuity_sequence, 0);
        assert_eq!(m.segments.len(), 3);
        assert!(m.segments[0].discontinuity);
        assert!(!m.end_list);
        assert_eq!(m.playlist_type, None);
        // The discontinuity leaves the window: the discontinuity sequence counts it.
        p.add(entry("s5.ts", 2.0, false));
        let m = parse(&p);
        assert_eq!(m.media_sequence, 3);
        assert_eq!(m.discontinuity_sequence, 1);
        assert!(!m.segments.iter().any(|s| s.discontinuity));
    }

    #[test]
    fn event_and_vod_keep_everything_and_vod_becomes_vod_at_the_end() {
        for kind in [PlaylistKind::Event, PlaylistKind::Vod] {
            let mut p = Playlist::new(PlaylistConfig {
                kind,
                playlist_length: 2,
                target_duration_s: 4,
            });
            for i in 0..5 {
                assert!(p.add(entry(&format!("s{i}.ts"), 3.5, false)).1.is_empty());
            }
            let m = parse(&p);
            assert_eq!(m.segments.len(), 5);
            assert_eq!(m.playlist_type, Some(MediaPlaylistType::Event));
            p.end();
            let m = parse(&p);
            assert!(m.end_list);
            let want = if kind == PlaylistKind::Vod {
                MediaPlaylistType::Vod
            } else {
                MediaPlaylistType::Event
            };
            assert_eq!(m.playlist_type, Some(want));
            assert_eq!(m.target_duration, 4);
            assert_eq!(m.version, Some(3));
        }
    }

    #[test]
    fn target_duration_rises_only_for_overlong_segments() {
        let mut p = live(0);
        p.add(entry("a.ts", 2.0, false));
        assert_eq!(p.target_duration(), 2);
        // 2.4 rounds to 2: still within the target (RFC 8216 4.3.3.1).
        p.add(entry("b.ts", 2.4, false));
        assert_eq!(p.target_duration(), 2);
        p.add(entry("c.ts", 3.6, false));
        assert_eq!(p.target_duration(), 4);
    }

    #[test]
    fn version_follows_the_tags_in_use() {
        let mut p = live(0);
        p.add(entry("a.ts", 2.0, false));
        assert_eq!(p.version(), 1);
        let mut e = entry("b.ts", 2.0, false);
        e.key = Some(SegmentKey {
            uri: "k0.key".into(),
            iv: sequence_iv(1),
        });
        p.add(e);
        assert_eq!(p.version(), 2);
        p.add(entry("c.ts", 1.5, false));
        assert_eq!(p.version(), 3);
    }

    #[test]
    fn keys_are_written_when_they_change_and_survive_a_round_trip() {
        let mut p = live(0);
        let k = |uri: &str, seq| SegmentKey {
            uri: uri.into(),
            iv: sequence_iv(seq),
        };
        for (i, key) in [Some(k("k0", 0)), Some(k("k0", 0)), Some(k("k1", 2)), None]
            .into_iter()
            .enumerate()
        {
            let mut e = entry(&format!("s{i}.ts"), 2.0, false);
            e.key = key;
            p.add(e);
        }
        let m = parse(&p);
        let keys: Vec<Option<(KeyMethod, Option<String>)>> = m
            .segments
            .iter()
            .map(|s| s.key.as_ref().map(|k| (k.method.clone(), k.uri.clone())))
            .collect();
        assert_eq!(
            keys,
            vec![
                Some((KeyMethod::AES128, Some("k0".into()))),
                None,
                Some((KeyMethod::AES128, Some("k1".into()))),
                None,
            ]
        );
        assert_eq!(
            m.segments[2].key.as_ref().unwrap().iv.as_deref(),
            Some("0x00000000000000000000000000000002")
        );
        // m3u8-rs parses METHOD=NONE as no tag, so only the encrypted entries round-trip.
        let resumed = Playlist::resume(p.config().clone(), &m);
        let entries: Vec<_> = resumed.entries().take(3).cloned().collect();
        assert_eq!(entries, p.entries().take(3).cloned().collect::<Vec<_>>());
    }

    #[test]
    fn resume_continues_numbering() {
        let mut p = live(3);
        for i in 0..5 {
            p.add(entry(&format!("s{i}.ts"), 2.0, false));
        }
        let m = parse(&p);
        let mut r = Playlist::resume(p.config().clone(), &m);
        assert_eq!(r.next_sequence(), 5);
        let (seq, removed) = r.add(entry("s5.ts", 2.0, true));
        assert_eq!(seq, 5);
        assert_eq!(removed[0].uri, "s2.ts");
        assert_eq!(parse(&r).media_sequence, 3);
    }

    #[test]
    fn program_date_time_is_written() {
        let mut p = live(0);
        let mut e = entry("a.ts", 2.0, false);
        e.program_date_time =
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_500));
        p.add(e);
        let text = String::from_utf8(p.render()).unwrap();
        assert!(
            text.contains("#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.500"),
            "{text}"
        );
    }

    #[test]
    fn maps_are_written_when_they_change_and_stay_outside_keys() {
        let mut p = live(3);
        let key = |iv: u8| SegmentKey {
            uri: "k.key".into(),
            iv: [iv; 16],
        };
        for (i, (map, k)) in [
            ("init0.mp4", None),
            ("init0.mp4", Some(key(1))),
            ("init2.mp4", Some(key(2))),
            ("init2.mp4", Some(key(3))),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = entry(&format!("s{i}.m4s"), 2.0, i == 2);
            e.map = Some(map.into());
            e.key = k;
            p.add(e);
        }
        assert_eq!(p.version(), 6);
        let text = String::from_utf8(p.render()).unwrap();
        // The window starts at s1: its MAP comes first (before its key), the new MAP of s2
        // after a METHOD=NONE, then s2's key again.
        let tags: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("#EXT-X-MAP") || l.starts_with("#EXT-X-KEY") || l.ends_with(".m4s")
            })
            .collect();
        assert_eq!(
            tags,
            [
                "#EXT-X-MAP:URI=\"init0.mp4\"",
                &format!(
                    "#EXT-X-KEY:METHOD=AES-128,URI=\"k.key\",IV={}",
                    format_iv(&[1; 16])
                ),
                "s1.m4s",
                "#EXT-X-KEY:METHOD=NONE",
                "#EXT-X-MAP:URI=\"init2.mp4\"",
                &format!(
                    "#EXT-X-KEY:METHOD=AES-128,URI=\"k.key\",IV={}",
                    format_iv(&[2; 16])
                ),
                "s2.m4s",
                &format!(
                    "#EXT-X-KEY:METHOD=AES-128,URI=\"k.key\",IV={}",
                    format_iv(&[3; 16])
                ),
                "s3.m4s",
            ],
            "{text}"
        );
        let parsed = parse(&p);
        assert_eq!(parsed.version, Some(6));
        assert_eq!(parsed.segments[1].map.as_ref().unwrap().uri, "init2.mp4");
        // Resuming keeps each segment's map.
        let resumed = Playlist::resume(p.config().clone(), &parsed);
        let maps: Vec<_> = resumed.entries().map(|e| e.map.clone().unwrap()).collect();
        assert_eq!(maps, ["init0.mp4", "init2.mp4", "init2.mp4"]);
        // Without maps the version stays below 6.
        let mut ts = live(3);
        ts.add(entry("a.ts", 2.0, false));
        assert_eq!(ts.version(), 1);
    }
}
