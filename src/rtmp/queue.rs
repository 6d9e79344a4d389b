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
