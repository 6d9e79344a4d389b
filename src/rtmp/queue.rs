//! The bounded queue between the streaming thread and the network task, with the drop policy:
//! when a tag does not fit, whole frames are dropped and video resumes at the next keyframe.
//! Codec configuration and metadata are never dropped and are remembered, so that a new
//! connection can start with them.
//!
//! Specifications: none of its own: the drop policy is ours; what a keyframe and a sequence header
//! are comes from the FLV specification 10.1 annex E.4.3.

use std::collections::VecDeque;

use super::flv::{Tag, TagKind};

/// The latest metadata and codec configurations seen.
#[derive(Debug, Default, Clone)]
pub struct Headers {
    pub metadata: Option<Tag>,
    pub video: Option<Tag>,
    pub audio: Option<Tag>,
}

impl Headers {
    /// In the order a stream starts with them.
    pub fn tags(&self) -> impl Iterator<Item = &Tag> {
        [&self.metadata, &self.video, &self.audio]
            .into_iter()
            .flatten()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Dropped: the queue was full, or video waits for a keyframe after a drop.
    Dropped,
}

#[derive(Debug)]
pub struct TagQueue {
    items: VecDeque<Tag>,
    bytes: usize,
    limit: usize,
    /// After a dropped video frame: drop video until the next keyframe.
    waiting_keyframe: bool,
    pub headers: Headers,
    /// Whole frames dropped (by the queue or because they came before a keyframe).
    pub drops: u64,
    /// The stream has video: resuming waits for a keyframe.
    pub has_video: bool,
    /// Timestamps after a reconnection (`continue-timestamps`).
    pub rebase: Rebase,
}

fn is_header(tag: &Tag) -> bool {
    tag.kind == TagKind::Script || tag.is_sequence_header()
}

impl TagQueue {
    /// `limit`: bytes of tag data queued at most (headers always fit).
    pub fn new(limit: usize) -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
            limit,
            waiting_keyframe: false,
            headers: Headers::default(),
            drops: 0,
            has_video: false,
            rebase: Rebase::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push(&mut self, tag: Tag) -> Pushed {
        if is_header(&tag) {
            match tag.kind {
                TagKind::Script => {
                    if tag.is_metadata() {
                        self.headers.metadata = Some(tag.clone());
                    }
                }
                TagKind::Video => self.headers.video = Some(tag.clone()),
                TagKind::Audio => self.headers.audio = Some(tag.clone()),
            }
            self.enqueue(tag);
            return Pushed::Queued;
        }
        let video = tag.kind == TagKind::Video;
        if video {
            self.has_video = true;
        }
        if video && self.waiting_keyframe && !tag.is_keyframe() {
            self.drops += 1;
            log::trace!("video frame dropped: waiting for a keyframe after a drop");
            return Pushed::Dropped;
        }
        if self.bytes + tag.data.len() > self.limit {
            let header_bytes: usize = self
                .items
                .iter()
                .filter(|t| is_header(t))
                .map(|t| t.data.len())
                .sum();
            if tag.is_keyframe() && header_bytes + tag.data.len() <= self.limit {
                // A keyframe makes what is queued before it expendable: drop the queued frames
                // (the oldest, all of them non-headers) to make room for it.
                let before = self.items.len();
                let bytes_before = self.bytes;
                self.items.retain(is_header);
                self.drops += (before - self.items.len()) as u64;
                self.bytes = header_bytes;
                log::debug!(
                    "queue full ({bytes_before} of {} bytes): a keyframe of {} bytes replaces \
                     the {} frames queued",
                    self.limit,
                    tag.data.len(),
                    before - self.items.len()
                );
            }
            if self.bytes + tag.data.len() > self.limit {
                self.drops += 1;
                if video && !self.waiting_keyframe {
                    log::debug!(
                        "queue full ({} tags, {} of {} bytes): video frame of {} bytes dropped, \
                         video waits for the next keyframe ({} drops so far)",
                        self.items.len(),
                        self.bytes,
                        self.limit,
                        tag.data.len(),
                        self.drops
                    );
                } else {
                    log::trace!(
                        "queue full ({} of {} bytes): {:?} frame of {} bytes dropped",
                        self.bytes,
                        self.limit,
                        tag.kind,
                        tag.data.len()
                    );
                }
                if video {
                    self.waiting_keyframe = true;
                }
                return Pushed::Dropped;
            }
        }
        if tag.is_keyframe() && self.waiting_keyframe {
            log::debug!(
                "keyframe queued: video resumes after the drops ({} so far)",
                self.drops
            );
            self.waiting_keyframe = false;
        }
        self.enqueue(tag);
        Pushed::Queued
    }

    fn enqueue(&mut self, tag: Tag) {
        self.bytes += tag.data.len();
        self.items.push_back(tag);
    }

    pub fn pop(&mut self) -> Option<Tag> {
        let t = self.items.pop_front()?;
        self.bytes -= t.data.len();
        Some(t)
    }

    /// Drops everything queued (stopping).
    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }
}

/// The consumer side after a (re)connection: headers first, then nothing until a keyframe when
/// the stream has video.
#[derive(Debug, Default)]
pub struct Resume {
    waiting: bool,
}

impl Resume {
    pub fn start(has_video: bool) -> Self {
        Self { waiting: has_video }
    }

    /// Whether to send `tag`; false means drop it (counted by the caller).
    pub fn admit(&mut self, tag: &Tag) -> bool {
        if is_header(tag) {
            return true;
        }
        if self.waiting {
            if tag.is_keyframe() {
                self.waiting = false;
                return true;
            }
            return false;
        }
        true
    }
}

/// Timestamps that continue across a reconnection. Without it (the default, as rtmp2sink and
/// ffmpeg do) a new connection carries the pipeline's own timestamps, so a server recording
/// both connections into one file, or a player that stays connected, sees a jump as long as
/// the outage. With it, the first frame after a reconnection is sent 1 ms after the last one sent
/// before it, and every later tag keeps its distance from that frame: the outage disappears
/// from the timeline (audio and video stay in sync: one offset for both).
#[derive(Debug, Default)]
pub struct Rebase {
    enabled: bool,
    /// The highest timestamp sent so far (after the offset).
    last: Option<u32>,
    /// Added to the pipeline's timestamps.
    offset: i64,
    /// Reconnected: the next frame sets a new offset.
    pending: bool,
}

impl Rebase {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// A new connection is publishing: the next frame continues from the last one sent.
    pub fn reconnected(&mut self) {
        self.pending = self.enabled && self.last.is_some();
    }

    /// The offset now added to the pipeline's timestamps (0 when disabled).
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// `tag` with the timestamp it is sent with. Metadata and codec configuration sent ahead of
    /// the first frame after a reconnection take that frame's timestamp.
    pub fn apply(&mut self, mut tag: Tag) -> Tag {
        if !self.enabled {
            return tag;
        }
        let next = |last: Option<u32>| last.map_or(0, |l| l.saturating_add(1));
        let ts = if self.pending && is_header(&tag) {
            next(self.last)
        } else {
            if self.pending {
                self.pending = false;
                self.offset = i64::from(next(self.last)) - i64::from(tag.timestamp);
                log::debug!(
                    "continue-timestamps: the new connection continues at {} ms (pipeline \
                     timestamp {} ms, offset {} ms)",
                    next(self.last),
                    tag.timestamp,
                    self.offset
                );
            }
            let ts = (i64::from(tag.timestamp) + self.offset).clamp(0, i64::from(u32::MAX));
            let ts = u32::try_from(ts).unwrap_or(u32::MAX);
            self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
            ts
        };
        tag.timestamp = ts;
        tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn video(key: bool, len: usize) -> Tag {
        let mut d = vec![if key { 0x17 } else { 0x27 }, 1];
        d.resize(len, 0);
        Tag {
            kind: TagKind::Video,
            timestamp: 0,
            data: Bytes::from(d),
        }
    }

    fn audio(len: usize) -> Tag {
        let mut d = vec![0xaf, 1];
        d.resize(len, 0);
        Tag {
            kind: TagKind::Audio,
            timestamp: 0,
            data: Bytes::from(d),
        }
    }

    fn seq() -> Tag {
        Tag {
            kind: TagKind::Video,
            timestamp: 0,
            data: Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
        }
    }

    fn at(mut t: Tag, ts: u32) -> Tag {
        t.timestamp = ts;
        t
    }

    #[test]
    fn rebase_continues_after_a_reconnection() {
        // Disabled: timestamps untouched, before and after a reconnection.
        let mut r = Rebase::new(false);
        assert_eq!(r.apply(at(video(true, 10), 1000)).timestamp, 1000);
        r.reconnected();
        assert_eq!(r.apply(at(video(true, 10), 9000)).timestamp, 9000);
        // Enabled: untouched until a reconnection...
        let mut r = Rebase::new(true);
        r.reconnected(); // nothing sent yet: nothing to continue from
        assert_eq!(r.apply(at(video(true, 10), 500)).timestamp, 500);
        assert_eq!(r.apply(at(audio(10), 1020)).timestamp, 1020);
        assert_eq!(r.apply(at(video(false, 10), 1000)).timestamp, 1000);
        // ...then the 8 s outage disappears: headers and the keyframe at 1021, the rest keeps
        // its distance from the keyframe, audio and video alike.
        r.reconnected();
        assert_eq!(r.apply(at(seq(), 0)).timestamp, 1021);
        assert_eq!(r.apply(at(video(true, 10), 9000)).timestamp, 1021);
        assert_eq!(r.offset(), 1021 - 9000);
        assert_eq!(r.apply(at(audio(10), 8990)).timestamp, 1011);
        assert_eq!(r.apply(at(video(false, 10), 9033)).timestamp, 1054);
        // A second reconnection builds on the first; timestamps never go below 0 or wrap.
        r.reconnected();
        assert_eq!(r.apply(at(video(true, 10), 100)).timestamp, 1055);
        assert_eq!(r.apply(at(audio(10), 0)).timestamp, 955);
        let mut r = Rebase::new(true);
        r.apply(at(video(true, 10), u32::MAX - 1));
        r.reconnected();
        assert_eq!(r.apply(at(video(true, 10), 0)).timestamp, u32::MAX);
        assert_eq!(r.apply(at(video(true, 10), 5)).timestamp, u32::MAX);
    }

    #[test]
    fn drops_whole_frames_and_resumes_at_a_keyframe() {
        let mut q = TagQueue::new(1000);
        assert_eq!(q.push(seq()), Pushed::Queued);
        assert_eq!(q.push(video(true, 400)), Pushed::Queued);
        assert_eq!(q.push(video(false, 400)), Pushed::Queued);
        // Full: this inter frame is dropped, and so are the ones after it, even if they fit.
        assert_eq!(q.push(video(false, 400)), Pushed::Dropped);
        assert_eq!(q.pop().unwrap(), seq());
        assert!(q.pop().unwrap().is_keyframe());
        assert_eq!(q.push(video(false, 10)), Pushed::Dropped);
        // Audio still flows while it fits.
        assert_eq!(q.push(audio(100)), Pushed::Queued);
        assert_eq!(q.drops, 2);
        // A keyframe that does not fit evicts the queued frames (not the headers).
        q.push(seq());
        assert_eq!(q.push(video(true, 900)), Pushed::Queued);
        assert_eq!(q.drops, 4, "one inter frame and one audio frame evicted");
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop().unwrap(), seq());
        assert!(q.pop().unwrap().is_keyframe());
        assert_eq!(q.push(video(false, 10)), Pushed::Queued);
        // A keyframe larger than the whole queue is dropped and video waits for the next.
        assert_eq!(q.push(video(true, 2000)), Pushed::Dropped);
        assert_eq!(q.push(video(false, 10)), Pushed::Dropped);
        assert_eq!(q.len(), 1, "the queued frame was not evicted for nothing");
        assert!(q.headers.video.is_some());
        assert!(q.headers.metadata.is_none());
    }

    #[test]
    fn resume_waits_for_a_keyframe() {
        let mut r = Resume::start(true);
        assert!(!r.admit(&video(false, 10)));
        assert!(!r.admit(&audio(10)));
        assert!(r.admit(&seq()));
        assert!(r.admit(&video(true, 10)));
        assert!(r.admit(&video(false, 10)));
        let mut r = Resume::start(false);
        assert!(r.admit(&audio(10)));
    }
}
