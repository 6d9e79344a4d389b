//! FLV parsing of the element's input (`video/x-flv` from flvmux): the file header, then tags of
//! audio, video and script data, each followed by its PreviousTagSize. The parser takes bytes in
//! any split and hands out whole tags; what a tag is (keyframe, codec configuration, metadata)
//! decides how the publisher queues and resends it.
//!
//! Specifications: FLV specification 10.1 annex E.2 (header), E.3 (body, PreviousTagSize), E.4.1
//! (tag), E.4.2 (audio tags), E.4.3 (video tags, AVCPacketType), E.4.4 (script data); Enhanced RTMP
//! (ExVideoTagHeader: IsExHeader, PacketType, FourCC).

use bytes::{Bytes, BytesMut};

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

const FLV_HEADER_MIN: usize = 9;
const TAG_HEADER: usize = 11;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    Audio,
    Video,
    Script,
}

impl TagKind {
    /// The RTMP message type carrying this kind of tag.
    pub fn message_type(self) -> u8 {
        match self {
            TagKind::Audio => crate::rtmp::chunk::msg_type::AUDIO,
            TagKind::Video => crate::rtmp::chunk::msg_type::VIDEO,
            TagKind::Script => crate::rtmp::chunk::msg_type::DATA_AMF0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub kind: TagKind,
    /// Milliseconds (32 bits: 24 plus the extension byte).
    pub timestamp: u32,
    pub data: Bytes,
}

impl Tag {
    /// A video tag whose frame type is 1 (keyframe). Enhanced-RTMP headers (bit 7 set) keep the
    /// frame type in the same bits.
    pub fn is_keyframe(&self) -> bool {
        self.kind == TagKind::Video && self.data.first().is_some_and(|b| (b >> 4) & 0x7 == 1)
    }

    /// Codec configuration: AVC/HEVC sequence header (AVCPacketType 0), AAC AudioSpecificConfig
    /// (AACPacketType 0), or an Enhanced RTMP SequenceStart (video or audio).
    pub fn is_sequence_header(&self) -> bool {
        let (Some(&b0), Some(&b1)) = (self.data.first(), self.data.get(1)) else {
            return false;
        };
        match self.kind {
            TagKind::Video => {
                if b0 & 0x80 != 0 {
                    // Enhanced RTMP: PacketType 0 is SequenceStart, also inside a multitrack
                    // message (PacketType 6, the tracks' type in the next byte's low bits).
                    b0 & 0x0f == 0 || (b0 & 0x0f == 6 && b1 & 0x0f == 0)
                } else {
                    matches!(b0 & 0x0f, 7 | 12) && b1 == 0
                }
            }
            // AAC AudioSpecificConfig; Enhanced RTMP audio (SoundFormat 9) SequenceStart, also
            // in a multitrack message (AudioPacketType 5).
            TagKind::Audio => {
                (b0 >> 4 == 10 && b1 == 0) || b0 == 0x90 || (b0 == 0x95 && b1 & 0x0f == 0)
            }
            TagKind::Script => false,
        }
    }

    /// Video codec id (7 = AVC) or audio sound format (10 = AAC); None for script data.
    pub fn codec_id(&self) -> Option<u8> {
        let b0 = *self.data.first()?;
        match self.kind {
            TagKind::Video => Some(b0 & 0x0f),
            TagKind::Audio => Some(b0 >> 4),
            TagKind::Script => None,
        }
    }

    /// Whether this is the `onMetaData` script tag.
    pub fn is_metadata(&self) -> bool {
        self.kind == TagKind::Script
            && crate::rtmp::amf0::decode_all(&self.data)
                .ok()
                .and_then(|v| {
                    v.first()
                        .and_then(|n| n.as_str().map(|s| s == "onMetaData"))
                })
                .unwrap_or(false)
    }
}

/// Input that is not FLV the parser can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("FLV: header size {0}")]
    HeaderSize(usize),
    #[error("FLV: unknown tag type {0}")]
    UnknownTagType(u8),
    #[error("FLV: encrypted (filtered) tags are unsupported")]
    Encrypted,
    #[error("FLV: tag of {size} bytes exceeds the limit of {limit}")]
    TagTooLarge { size: usize, limit: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the file header (or the first tag when the header is missing).
    Start,
    /// Skipping the rest of the header and PreviousTagSize0.
    Skip(usize),
    Tags,
}

enum Step {
    NeedMore,
    Consume(usize),
    Tag {
        kind: TagKind,
        timestamp: u32,
        size: usize,
    },
}

/// Parses FLV from buffers. Input handed over as [`Bytes`] whose tags are whole (flvmux pushes
/// one tag per buffer) is sliced without copying; partial tags are gathered in a buffer.
#[derive(Debug)]
pub struct FlvParser {
    /// Gathered input (a tag split across feeds).
    buf: BytesMut,
    /// Input taken over as is; only one of `buf` and `direct` holds data at a time.
    direct: Bytes,
    state: State,
    max_tag_size: usize,
    /// From the header's flags.
    pub has_audio: Option<bool>,
    pub has_video: Option<bool>,
}

impl FlvParser {
    pub fn new(max_tag_size: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            direct: Bytes::new(),
            state: State::Start,
            max_tag_size,
            has_audio: None,
            has_video: None,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.gather();
        self.buf.extend_from_slice(data);
    }

    /// Like [`feed`](Self::feed), without a copy when nothing is pending.
    pub fn feed_bytes(&mut self, data: Bytes) {
        if self.buf.is_empty() && self.direct.is_empty() {
            self.direct = data;
        } else {
            self.gather();
            self.buf.extend_from_slice(&data);
        }
    }

    fn gather(&mut self) {
        if !self.direct.is_empty() {
            self.buf.extend_from_slice(&self.direct);
            self.direct = Bytes::new();
        }
    }

    /// Bytes held waiting for the rest of a tag.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.direct.len()
    }

    /// Starts over (a new stream: the file header may come again).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.direct = Bytes::new();
        self.state = State::Start;
    }

    fn data(&self) -> &[u8] {
        if self.direct.is_empty() {
            &self.buf
        } else {
            &self.direct
        }
    }

    fn take(&mut self, n: usize) -> Bytes {
        if self.direct.is_empty() {
            self.buf.split_to(n).freeze()
        } else {
            self.direct.split_to(n)
        }
    }

    fn step(&mut self) -> Result<Step, FlvError> {
        let b = self.data();
        match self.state {
            State::Start => {
                if b.len() < 3 {
                    return Ok(Step::NeedMore);
                }
                if &b[..3] != b"FLV" {
                    // Input joined after the header (e.g. a restarted stream): tags directly.
                    self.state = State::Tags;
                    return Ok(Step::Consume(0));
                }
                if b.len() < FLV_HEADER_MIN {
                    return Ok(Step::NeedMore);
                }
                let flags = b[4];
                let size = u32::from_be_bytes(b[5..9].try_into().unwrap()) as usize;
                if !(FLV_HEADER_MIN..=1024).contains(&size) {
                    return Err(FlvError::HeaderSize(size));
                }
                self.has_audio = Some(flags & 0x04 != 0);
                self.has_video = Some(flags & 0x01 != 0);
                self.state = State::Skip(size + 4);
                Ok(Step::Consume(0))
            }
            State::Skip(n) => {
                let k = n.min(b.len());
                if k == 0 {
                    return Ok(Step::NeedMore);
                }
                self.state = if k < n {
                    State::Skip(n - k)
                } else {
                    State::Tags
                };
                Ok(Step::Consume(k))
            }
            State::Tags => {
                if b.len() >= 3 && &b[..3] == b"FLV" {
                    // A new file header in the stream (flvmux restarted): start over.
                    self.state = State::Start;
                    return Ok(Step::Consume(0));
                }
                if b.len() < TAG_HEADER {
                    return Ok(Step::NeedMore);
                }
                let h = &b[..TAG_HEADER];
                let kind = match h[0] & 0x1f {
                    TAG_AUDIO => TagKind::Audio,
                    TAG_VIDEO => TagKind::Video,
                    TAG_SCRIPT => TagKind::Script,
                    t => return Err(FlvError::UnknownTagType(t)),
                };
                if h[0] & 0x20 != 0 {
                    return Err(FlvError::Encrypted);
                }
                let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
                if size > self.max_tag_size {
                    return Err(FlvError::TagTooLarge {
                        size,
                        limit: self.max_tag_size,
                    });
                }
                let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
                if b.len() < TAG_HEADER + size + 4 {
                    return Ok(Step::NeedMore);
                }
                Ok(Step::Tag {
                    kind,
                    timestamp,
                    size,
                })
            }
        }
    }

    pub fn next_tag(&mut self) -> Result<Option<Tag>, FlvError> {
        loop {
            match self.step()? {
                Step::NeedMore => {
                    // Keep the partial tag: later input is appended to it.
                    self.gather();
                    return Ok(None);
                }
                Step::Consume(n) => {
                    let _ = self.take(n);
                }
                Step::Tag {
                    kind,
                    timestamp,
                    size,
                } => {
                    let _ = self.take(TAG_HEADER);
                    let data = self.take(size);
                    let _prev_size = self.take(4);
                    return Ok(Some(Tag {
                        kind,
                        timestamp,
                        data,
                    }));
                }
            }
        }
    }
}

/// Writes tags as an FLV file (for tests and the benchmark's input).
pub fn write_header(audio: bool, video: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"FLV\x01");
    out.push((u8::from(audio) << 2) | u8::from(video));
    out.extend_from_slice(&9u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
}

pub fn write_tag(tag: &Tag, out: &mut Vec<u8>) {
    let type_id = match tag.kind {
        TagKind::Audio => TAG_AUDIO,
        TagKind::Video => TAG_VIDEO,
        TagKind::Script => TAG_SCRIPT,
    };
    let size = tag.data.len() as u32;
    out.push(type_id);
    out.extend_from_slice(&size.to_be_bytes()[1..]);
    let ts = tag.timestamp.to_be_bytes();
    out.extend_from_slice(&[ts[1], ts[2], ts[3], ts[0]]);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&tag.data);
    out.extend_from_slice(&(size + TAG_HEADER as u32).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::amf0::{self, Value};

    fn tags() -> Vec<Tag> {
        let meta = amf0::encode_all(&[
            "onMetaData".into(),
            Value::EcmaArray(vec![("width".into(), 320.0.into())]),
        ]);
        vec![
            Tag {
                kind: TagKind::Script,
                timestamp: 0,
                data: meta.into(),
            },
            Tag {
                kind: TagKind::Video,
                timestamp: 0,
                data: Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64]),
            },
            Tag {
                kind: TagKind::Audio,
                timestamp: 0,
                data: Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
            },
            Tag {
                kind: TagKind::Video,
                timestamp: 0,
                data: Bytes::from_static(&[0x17, 1, 0, 0, 0, 0xaa]),
            },
            Tag {
                kind: TagKind::Audio,
                timestamp: 23,
                data: Bytes::from_static(&[0xaf, 1, 0x21]),
            },
            Tag {
                kind: TagKind::Video,
                timestamp: 0x0123_4567,
                data: Bytes::from_static(&[0x27, 1, 0, 0, 0, 0xbb]),
            },
        ]
    }

    #[test]
    fn parses_in_any_split() {
        let mut file = Vec::new();
        write_header(true, true, &mut file);
        for t in tags() {
            write_tag(&t, &mut file);
        }
        for step in [1, 5, 11, 100, file.len()] {
            let mut p = FlvParser::new(1 << 20);
            let mut got = Vec::new();
            for piece in file.chunks(step) {
                p.feed(piece);
                while let Some(t) = p.next_tag().unwrap() {
                    got.push(t);
                }
            }
            assert_eq!(got, tags(), "step {step}");
            assert_eq!(p.buffered(), 0);
            assert_eq!((p.has_audio, p.has_video), (Some(true), Some(true)));
        }
    }

    #[test]
    fn whole_tags_are_taken_without_copying() {
        let mut file = Vec::new();
        write_header(true, true, &mut file);
        for t in tags() {
            write_tag(&t, &mut file);
        }
        // One buffer per tag, as flvmux pushes them, plus a tag split in two.
        let split = file.len() - 5;
        let input = Bytes::from(file);
        let mut p = FlvParser::new(1 << 20);
        p.feed_bytes(input.slice(..split));
        let mut got = Vec::new();
        while let Some(t) = p.next_tag().unwrap() {
            got.push(t);
        }
        // Tags taken from the fed buffer point into it.
        let base = input.as_ptr() as usize;
        assert!(
            got.iter()
                .all(|t| (base..base + split).contains(&(t.data.as_ptr() as usize)))
        );
        p.feed_bytes(input.slice(split..));
        while let Some(t) = p.next_tag().unwrap() {
            got.push(t);
        }
        assert_eq!(got, tags());
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn classifies_tags() {
        let t = tags();
        assert!(t[0].is_metadata());
        assert!(!t[1].is_metadata());
        assert!(t[1].is_sequence_header() && t[1].is_keyframe());
        assert_eq!(t[1].codec_id(), Some(7));
        assert!(t[2].is_sequence_header());
        assert_eq!(t[2].codec_id(), Some(10));
        assert!(t[3].is_keyframe() && !t[3].is_sequence_header());
        assert!(!t[4].is_sequence_header() && !t[4].is_keyframe());
        assert!(!t[5].is_keyframe(), "inter frame");
        assert_eq!(t[5].timestamp, 0x0123_4567, "extended timestamp byte");
    }

    #[test]
    fn tags_without_header_and_a_second_header() {
        let mut bytes = Vec::new();
        write_tag(&tags()[3], &mut bytes);
        write_header(false, true, &mut bytes);
        write_tag(&tags()[5], &mut bytes);
        let mut p = FlvParser::new(1 << 20);
        p.feed(&bytes);
        assert_eq!(p.next_tag().unwrap(), Some(tags()[3].clone()));
        assert_eq!(p.next_tag().unwrap(), Some(tags()[5].clone()));
        assert_eq!(p.has_audio, Some(false));
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut p = FlvParser::new(1 << 20);
        p.feed(&[0x07, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(p.next_tag().is_err(), "unknown tag type");
        let mut p = FlvParser::new(100);
        p.feed(&[0x09, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(p.next_tag().is_err(), "oversized tag");
    }
}
