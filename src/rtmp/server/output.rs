//! The bounded queue between the connections (network side) and the element's streaming thread:
//! publishers start and end, tags in between. The network side never waits: when the queue holds
//! `limit` bytes of frames, an arriving frame is dropped whole (counted); after a dropped video
//! frame, video waits for the next keyframe, since the frames after it would not decode. Codec
//! configurations and metadata are never dropped.
//!
//! Specifications: none of its own (what a keyframe and a sequence header are: FLV specification
//! 10.1 annex E.4.2/E.4.3).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::super::enhanced;
use super::super::flv::{Tag, TagKind};

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A publisher's publication starts.
    Started {
        publisher: u64,
        peer: SocketAddr,
    },
    Tag(Tag),
    /// The publication ended: the client unpublished, disconnected or was replaced.
    Ended {
        publisher: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Popped {
    Timeout,
    /// [`Output::set_flushing`]: the element is unlocking or stopping.
    Flushing,
}

/// Counters, read by `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputStats {
    pub video_frames: u64,
    pub audio_frames: u64,
    pub frames_dropped: u64,
    pub bytes_queued: usize,
    /// The codecs of the latest video and audio tags (`h264`, `aac`, an Enhanced RTMP FourCC
    /// such as `hvc1`, or `id N` for the others), empty before any.
    pub video_codec: String,
    pub audio_codec: String,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Item>,
    bytes: usize,
    waiting_keyframe: bool,
    flushing: bool,
    /// Consumers blocked in [`Output::pop`]: a push wakes one only when there is one (a
    /// condition variable's notify is a system call even when nobody waits).
    waiters: usize,
    stats: OutputStats,
}

#[derive(Debug)]
pub struct Output {
    limit: usize,
    inner: Mutex<Inner>,
    cond: Condvar,
}

/// The codec of an audio or video tag, by FLV codec id or Enhanced RTMP FourCC.
pub fn codec_name(tag: &Tag) -> Option<String> {
    let b0 = *tag.data.first()?;
    let name = match tag.kind {
        TagKind::Video if b0 & 0x80 != 0 => {
            // A command frame carries no FourCC; a multitrack message has it after its
            // multitrack byte (the first track's, for many codecs).
            if (b0 >> 4) & 7 == 5 && b0 & 0x0f != 4 {
                return None;
            }
            let at = if b0 & 0x0f == 6 { 2 } else { 1 };
            let fourcc = tag.data.get(at..at + 4)?;
            return Some(String::from_utf8_lossy(fourcc).into_owned());
        }
        TagKind::Video => match b0 & 0x0f {
            2 => "h263",
            4 => "vp6",
            5 => "vp6a",
            7 => "h264",
            12 => "h265",
            13 => "av1",
            id => return Some(format!("id {id}")),
        },
        TagKind::Audio => match b0 >> 4 {
            2 => "mp3",
            7 => "pcma",
            8 => "pcmu",
            9 => {
                let at = if b0 & 0x0f == 5 { 2 } else { 1 };
                let fourcc = tag.data.get(at..at + 4)?;
                return Some(String::from_utf8_lossy(fourcc).into_owned());
            }
            10 => "aac",
            11 => "speex",
            id => return Some(format!("id {id}")),
        },
        TagKind::Script => return None,
    };
    Some(name.to_owned())
}

/// Whether a tag carries a coded frame (what `video-frames`/`audio-frames` count): not a
/// codec configuration, nor an AVC/HEVC end of sequence (AVCPacketType 2) or an Enhanced RTMP
/// SequenceStart / SequenceEnd / metadata packet (video or audio, multitrack included).
fn is_frame(tag: &Tag) -> bool {
    let (Some(&b0), b1) = (tag.data.first(), tag.data.get(1).copied()) else {
        return false;
    };
    if tag.kind != TagKind::Script
        && let Some(marker) = enhanced::is_config_or_marker(tag.kind == TagKind::Video, &tag.data)
    {
        // Enhanced RTMP (also multitrack): only CodedFrames carry a frame.
        return !marker;
    }
    match tag.kind {
        TagKind::Video => match b0 & 0x0f {
            7 | 12 | 13 => b1 == Some(1),
            _ => true,
        },
        TagKind::Audio => b0 >> 4 != 10 || b1 == Some(1),
        TagKind::Script => false,
    }
}

/// Codec configurations, metadata and the few tags that carry no frame (end of sequence) are
/// never dropped nor counted against the limit.
fn never_dropped(tag: &Tag) -> bool {
    tag.kind == TagKind::Script || tag.is_sequence_header() || !is_frame(tag)
}

impl Output {
    /// `limit`: bytes of frames queued at most (headers and markers always fit, uncounted: they
    /// are few and small).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::new(Inner::default()),
            cond: Condvar::new(),
        }
    }

    /// A publisher starts or ends: never dropped.
    pub fn push_marker(&self, item: Item) {
        let mut inner = self.inner.lock().unwrap();
        if matches!(item, Item::Started { .. }) {
            // A new publication: video starts at its first keyframe anyway.
            inner.waiting_keyframe = false;
        }
        inner.items.push_back(item);
        self.wake(inner);
    }

    /// Releases the lock, waking a consumer if one waits.
    fn wake(&self, inner: std::sync::MutexGuard<'_, Inner>) {
        let waiting = inner.waiters > 0;
        drop(inner);
        if waiting {
            self.cond.notify_one();
        }
    }

    /// Queues a tag or drops it whole; returns whether it was queued.
    pub fn push_tag(&self, tag: Tag) -> bool {
        self.push(tag, true)
    }

    /// As [`Output::push_tag`], without waking the consumer: a reader that gathers tags wakes
    /// it once with [`Output::release`] (a consumer that is awake takes them anyway).
    pub fn push_tag_held(&self, tag: Tag) -> bool {
        self.push(tag, false)
    }

    /// Wakes the consumer if it waits and something is queued.
    pub fn release(&self) {
        let inner = self.inner.lock().unwrap();
        if !inner.items.is_empty() {
            self.wake(inner);
        }
    }

    fn push(&self, tag: Tag, wake: bool) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let header = never_dropped(&tag);
        match tag.kind {
            TagKind::Video => {
                if let Some(name) = codec_name(&tag)
                    && inner.stats.video_codec != name
                {
                    inner.stats.video_codec = name;
                }
            }
            TagKind::Audio => {
                if let Some(name) = codec_name(&tag)
                    && inner.stats.audio_codec != name
                {
                    inner.stats.audio_codec = name;
                }
            }
            TagKind::Script => {}
        }
        if !header {
            let video = tag.kind == TagKind::Video;
            let dropped = if video && inner.waiting_keyframe && !tag.is_keyframe() {
                true
            } else {
                inner.bytes + tag.data.len() > self.limit
            };
            if dropped {
                inner.stats.frames_dropped += 1;
                if video && !inner.waiting_keyframe {
                    log::debug!(
                        "output queue full ({} of {} bytes): video frame of {} bytes dropped, \
                         video resumes at the next keyframe ({} frames dropped so far)",
                        inner.bytes,
                        self.limit,
                        tag.data.len(),
                        inner.stats.frames_dropped
                    );
                    inner.waiting_keyframe = true;
                }
                return false;
            }
            if video {
                if inner.waiting_keyframe {
                    log::debug!(
                        "keyframe queued: video resumes ({} frames dropped so far)",
                        inner.stats.frames_dropped
                    );
                }
                inner.waiting_keyframe = false;
            }
            if is_frame(&tag) {
                if video {
                    inner.stats.video_frames += 1;
                } else {
                    inner.stats.audio_frames += 1;
                }
            }
        }
        if !header {
            inner.bytes += tag.data.len();
        }
        inner.items.push_back(Item::Tag(tag));
        if wake {
            self.wake(inner);
        }
        true
    }

    /// The next item, waiting at most `timeout` (`None`: until there is one or the queue is
    /// flushing; no timer, no clock read).
    pub fn pop(&self, timeout: Option<Duration>) -> Result<Item, Popped> {
        let mut inner = self.inner.lock().unwrap();
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if inner.flushing {
                return Err(Popped::Flushing);
            }
            if let Some(item) = inner.items.pop_front() {
                if let Item::Tag(t) = &item
                    && !never_dropped(t)
                {
                    inner.bytes -= t.data.len();
                }
                return Ok(item);
            }
            inner.waiters += 1;
            inner = match deadline {
                None => self.cond.wait(inner).unwrap(),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        inner.waiters -= 1;
                        return Err(Popped::Timeout);
                    }
                    self.cond.wait_timeout(inner, left).unwrap().0
                }
            };
            inner.waiters -= 1;
        }
    }

    /// While flushing, `pop` returns at once.
    pub fn set_flushing(&self, flushing: bool) {
        self.inner.lock().unwrap().flushing = flushing;
        self.cond.notify_all();
    }

    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.items.clear();
        inner.bytes = 0;
        inner.waiting_keyframe = false;
    }

    pub fn stats(&self) -> OutputStats {
        let inner = self.inner.lock().unwrap();
        OutputStats {
            bytes_queued: inner.bytes,
            ..inner.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn tag(kind: TagKind, b0: u8, b1: u8, len: usize) -> Tag {
        let mut data = vec![b0, b1];
        data.resize(len, 0);
        Tag {
            kind,
            timestamp: 0,
            data: Bytes::from(data),
        }
    }

    #[test]
    fn whole_frames_dropped_and_video_resumes_at_a_keyframe() {
        let q = Output::new(100);
        let seq = tag(TagKind::Video, 0x17, 0, 500);
        assert!(q.push_tag(seq.clone()), "a sequence header always fits");
        assert!(q.push_tag(tag(TagKind::Video, 0x17, 1, 60)));
        assert!(!q.push_tag(tag(TagKind::Video, 0x27, 1, 60)), "full");
        // Room again, but an inter frame after a drop would not decode.
        assert_eq!(q.pop(Some(Duration::ZERO)), Ok(Item::Tag(seq)));
        assert!(matches!(q.pop(Some(Duration::ZERO)), Ok(Item::Tag(_))));
        assert!(!q.push_tag(tag(TagKind::Video, 0x27, 1, 10)));
        assert!(
            q.push_tag(tag(TagKind::Audio, 0xaf, 1, 10)),
            "audio goes on"
        );
        assert!(q.push_tag(tag(TagKind::Video, 0x17, 1, 10)), "keyframe");
        assert!(q.push_tag(tag(TagKind::Video, 0x27, 1, 10)));
        // An end of sequence is queued, not counted as a frame.
        assert!(q.push_tag(tag(TagKind::Video, 0x17, 2, 5)));
        let s = q.stats();
        assert_eq!(s.frames_dropped, 2);
        assert_eq!(s.video_frames, 3);
        assert_eq!(s.audio_frames, 1);
        assert_eq!(s.video_codec, "h264");
        assert_eq!(s.audio_codec, "aac");
    }

    #[test]
    fn enhanced_configurations_are_never_dropped_nor_counted() {
        let q = Output::new(100);
        let ex = |kind, data: &[u8]| Tag {
            kind,
            timestamp: 0,
            data: Bytes::copy_from_slice(data),
        };
        // Opus SequenceStart (OpusHead) and an hvc1 SequenceStart in a multitrack message,
        // larger than the whole queue: kept, not frames.
        let mut opus_head = vec![0x90, b'O', b'p', b'u', b's'];
        opus_head.resize(300, 0);
        assert!(q.push_tag(ex(TagKind::Audio, &opus_head)));
        let mut mt = vec![0x96, 0x00, b'h', b'v', b'c', b'1', 0];
        mt.resize(300, 0);
        assert!(q.push_tag(ex(TagKind::Video, &mt)));
        assert!(q.push_tag(ex(TagKind::Audio, &[0x91, b'O', b'p', b'u', b's', 1])));
        assert!(q.push_tag(ex(TagKind::Video, &[0x93, b'a', b'v', b'0', b'1', 1])));
        // A command frame: no codec, no frame.
        assert!(q.push_tag(ex(TagKind::Video, &[0xd0, 0])));
        let s = q.stats();
        assert_eq!((s.video_frames, s.audio_frames), (1, 1));
        assert_eq!(s.video_codec, "av01");
        assert_eq!(s.audio_codec, "Opus");
        assert_eq!(s.bytes_queued, 12);
    }

    #[test]
    fn pop_waits_and_flushing_unblocks() {
        let q = std::sync::Arc::new(Output::new(100));
        assert_eq!(q.pop(Some(Duration::from_millis(10))), Err(Popped::Timeout));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop(None));
        std::thread::sleep(Duration::from_millis(50));
        q.set_flushing(true);
        assert_eq!(t.join().unwrap(), Err(Popped::Flushing));
        // An untimed pop is woken by the next push (pushes wake only a waiting consumer).
        q.set_flushing(false);
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop(None));
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while q.inner.lock().unwrap().waiters == 0 {
            assert!(
                std::time::Instant::now() < until,
                "the consumer never waited"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(q.push_tag(tag(TagKind::Audio, 0xaf, 1, 10)));
        assert!(matches!(t.join().unwrap(), Ok(Item::Tag(_))));
        assert_eq!(q.inner.lock().unwrap().waiters, 0);
        // A held tag does not wake the consumer; release does.
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pop(None));
        while q.inner.lock().unwrap().waiters == 0 {
            assert!(
                std::time::Instant::now() < until,
                "the consumer never waited"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(q.push_tag_held(tag(TagKind::Audio, 0xaf, 1, 10)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!t.is_finished(), "woken by a held tag");
        q.release();
        assert!(matches!(t.join().unwrap(), Ok(Item::Tag(_))));
    }
}
