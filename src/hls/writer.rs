//! The HLS writer: segmenter, playlist, encryption and output put together.
//!
//! Specifications: RFC 8216 §6.2.1 (a playlist names only complete segments), §6.2.2 (live playlist
//! updates), §6.2.3 (encrypted segments and their keys).
//!
//! The element feeds it the muxer's output; each finished segment is queued for output (key
//! first, then segment, then the playlist that names it, then deletions of expired files), so a
//! playlist never names a file that is not complete.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::crypto;
use super::location::{Locations, playlist_uri, redact_location};
use super::playlist::{Entry, Playlist, PlaylistConfig, PlaylistKind, SegmentKey};
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
}

struct StoredSegment {
    sequence: u64,
    location: String,
    key_location: Option<String>,
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
    pub deleted: Vec<String>,
}

pub struct Writer {
    config: WriterConfig,
    segmenter: Segmenter,
    playlist: Playlist,
    output: Output,
    stored: VecDeque<StoredSegment>,
    key_users: HashMap<String, usize>,
    key: Option<CurrentKey>,
    next_key_index: u64,
    /// Stream time and wall-clock time of the first data, for EXT-X-PROGRAM-DATE-TIME.
    anchor: Option<(u64, SystemTime)>,
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
            segmenter: Segmenter::new(config.segmenter.clone()),
            playlist,
            output,
            stored: VecDeque::new(),
            key_users: HashMap::new(),
            key: None,
            next_key_index: 0,
            anchor: None,
            config,
        }
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

    /// Feeds muxer output.
    pub fn push(
        &mut self,
        data: &[u8],
        pts_ns: Option<u64>,
        keyframe: bool,
    ) -> Result<Option<Published>, StoreError> {
        if self.anchor.is_none()
            && let Some(p) = pts_ns
        {
            self.anchor = Some((p, SystemTime::now()));
        }
        match self.segmenter.push(data, pts_ns, keyframe) {
            Some(seg) => self.publish(seg).map(Some),
            None => Ok(None),
        }
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
        let published = match self.segmenter.finish() {
            Some(seg) => Some(self.publish(seg)?),
            None => None,
        };
        if end_of_stream {
            self.playlist.end();
            log::debug!("end of stream: the playlist gets EXT-X-ENDLIST");
            self.put_playlist()?;
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
        let first = self.playlist.entries().next().map(|e| e.sequence);
        log::debug!(
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
            program_date_time,
        });
        debug_assert_eq!(seq, sequence);
        self.stored.push_back(StoredSegment {
            sequence,
            location: location.clone(),
            key_location: key.map(|k| k.1),
        });
        self.put_playlist()?;
        let deleted = self.expire()?;
        Ok(Published {
            sequence,
            location,
            duration_s,
            deleted,
        })
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
}
