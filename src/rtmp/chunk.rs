//! RTMP chunk streams: messages cut into chunks of the negotiated size, each with a basic header
//! (format 0-3 and chunk stream id) and a message header of 11, 7, 3 or 0 bytes, plus an extended
//! timestamp when the timestamp or delta does not fit in 24 bits.
//!
//! Specifications: RTMP specification 1.0 §5.3 (§5.3.1.1 basic header, §5.3.1.2 message header
//! types 0-3, §5.3.1.3 extended timestamp), §5.4.1 (Set Chunk Size), §5.4.2 (Abort Message).
//!
//! The encoder picks the smallest header that describes each message given the previous one on the
//! same chunk stream; the decoder reassembles messages from any interleaving of chunk streams and
//! refuses what would make it allocate without bound.
//!
//! Adobe RTMP Specification 1.0 §5.3 (chunking) and §5.4.1 (Set Chunk Size).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// The largest chunk size the spec allows (31 bits).
pub const MAX_CHUNK_SIZE: u32 = 0x7fff_ffff;
const EXTENDED: u32 = 0x00ff_ffff;

/// Message type ids.
pub mod msg_type {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const COMMAND_AMF0: u8 = 20;
    pub const AGGREGATE: u8 = 22;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

/// A chunk stream the decoder refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size {0}")]
    InvalidChunkSize(u32),
    #[error("more than {0} chunk streams")]
    TooManyStreams(usize),
    #[error("chunk of type {fmt} on chunk stream {csid} without a previous header")]
    NoPreviousHeader { fmt: u8, csid: u32 },
    #[error("new message header on chunk stream {csid} in the middle of a message")]
    HeaderInMessage { csid: u32 },
    #[error("message of {length} bytes (type {type_id}) exceeds the limit of {limit} bytes")]
    TooLarge {
        length: u32,
        type_id: u8,
        limit: u32,
    },
}

fn write_basic_header(fmt: u8, csid: u32, out: &mut Vec<u8>) {
    let f = fmt << 6;
    match csid {
        2..=63 => out.push(f | csid as u8),
        64..=319 => out.extend_from_slice(&[f, (csid - 64) as u8]),
        _ => {
            let v = csid - 64;
            out.extend_from_slice(&[f | 1, (v & 0xff) as u8, (v >> 8) as u8]);
        }
    }
}

fn write_u24(v: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&v.to_be_bytes()[1..]);
}

#[derive(Debug, Clone, Copy)]
struct SentHeader {
    timestamp: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The delta the last type 1/2 header carried; None after a type 0 header.
    delta: Option<u32>,
}

/// Cuts messages into chunks.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: u32,
    prev: HashMap<u32, SentHeader>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            prev: HashMap::new(),
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Takes effect for the messages written after it (send Set Chunk Size first).
    pub fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = size.clamp(1, MAX_CHUNK_SIZE);
    }

    /// Appends `payload` as one message on chunk stream `csid` (2..=65599) to `out`.
    pub fn write(
        &mut self,
        csid: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        assert!((2..=65599).contains(&csid), "chunk stream id {csid}");
        let length = payload.len() as u32;
        assert!(length <= 0xff_ffff, "message of {length} bytes");
        let prev = self.prev.get(&csid).copied();
        // Which header: 0 (everything), 1 (delta, length, type), 2 (delta), 3 (nothing).
        let (fmt, field) = match prev {
            Some(p) if p.stream_id == stream_id && timestamp >= p.timestamp => {
                let delta = timestamp - p.timestamp;
                if p.length != length || p.type_id != type_id {
                    (1, delta)
                } else if p.delta != Some(delta) {
                    (2, delta)
                } else {
                    (3, delta)
                }
            }
            _ => (0, timestamp),
        };
        let extended = field >= EXTENDED;
        let ts_field = if extended { EXTENDED } else { field };
        out.reserve(payload.len() + 18 + payload.len() / self.chunk_size.max(1) as usize * 8);
        write_basic_header(fmt, csid, out);
        if fmt <= 2 {
            write_u24(ts_field, out);
        }
        if fmt <= 1 {
            write_u24(length, out);
            out.push(type_id);
        }
        if fmt == 0 {
            out.extend_from_slice(&stream_id.to_le_bytes());
        }
        if extended {
            out.extend_from_slice(&field.to_be_bytes());
        }
        let size = self.chunk_size as usize;
        let mut rest = payload;
        let first = rest.len().min(size);
        out.extend_from_slice(&rest[..first]);
        rest = &rest[first..];
        while !rest.is_empty() {
            // Continuation chunks: type 3, repeating the extended timestamp when there is one.
            write_basic_header(3, csid, out);
            if extended {
                out.extend_from_slice(&field.to_be_bytes());
            }
            let n = rest.len().min(size);
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        self.prev.insert(
            csid,
            SentHeader {
                timestamp,
                length,
                type_id,
                stream_id,
                delta: if fmt == 0 { None } else { Some(field) },
            },
        );
    }

    /// Forgets the previous headers (a new connection starts with type 0 headers).
    pub fn reset(&mut self) {
        self.prev.clear();
        self.chunk_size = DEFAULT_CHUNK_SIZE;
    }
}

#[derive(Debug, Default)]
struct InStream {
    timestamp: u32,
    /// The timestamp field of the last header (delta or absolute), for type 3 chunks.
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    extended: bool,
    have_header: bool,
    partial: Option<BytesMut>,
}

/// Reassembles messages from chunks.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    max_message_size: u32,
    max_streams: usize,
    streams: HashMap<u32, InStream>,
    /// Length, type and message stream id of the latest message header on any chunk stream: the
    /// default for a chunk stream whose first header is not of type 0.
    latest: Option<(u32, u8, u32)>,
    buf: BytesMut,
}

impl ChunkDecoder {
    /// `max_message_size`: larger messages are an error; the peer's chunk streams are limited too.
    pub fn new(max_message_size: u32) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_message_size,
            max_streams: 64,
            streams: HashMap::new(),
            latest: None,
            buf: BytesMut::new(),
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The peer's Set Chunk Size.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(ChunkError::InvalidChunkSize(size));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Drops a partly received message (the peer's Abort).
    pub fn abort(&mut self, csid: u32) {
        if let Some(s) = self.streams.get_mut(&csid) {
            s.partial = None;
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet parsed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, Ok(None) when more data is needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, ChunkError> {
        loop {
            match self.parse_chunk()? {
                Chunk::Incomplete => return Ok(None),
                Chunk::Message(m) => return Ok(Some(m)),
                Chunk::Partial => continue,
            }
        }
    }

    fn parse_chunk(&mut self) -> Result<Chunk, ChunkError> {
        let b = &self.buf[..];
        if b.is_empty() {
            return Ok(Chunk::Incomplete);
        }
        let fmt = b[0] >> 6;
        let (csid, mut pos) = match b[0] & 0x3f {
            0 => {
                if b.len() < 2 {
                    return Ok(Chunk::Incomplete);
                }
                (u32::from(b[1]) + 64, 2)
            }
            1 => {
                if b.len() < 3 {
                    return Ok(Chunk::Incomplete);
                }
                (u32::from(b[1]) + (u32::from(b[2]) << 8) + 64, 3)
            }
            n => (u32::from(n), 1),
        };
        let header_len = [11, 7, 3, 0][fmt as usize];
        if b.len() < pos + header_len {
            return Ok(Chunk::Incomplete);
        }
        if !self.streams.contains_key(&csid) && self.streams.len() >= self.max_streams {
            return Err(ChunkError::TooManyStreams(self.max_streams));
        }
        let u24 = |s: &[u8]| u32::from_be_bytes([0, s[0], s[1], s[2]]);
        let h = &b[pos..pos + header_len];
        let prev_have = self.streams.get(&csid).is_some_and(|p| p.have_header);
        if fmt != 0 && !prev_have {
            assume_previous_header(&mut self.streams, self.latest, fmt, csid)?;
        }
        let prev = self.streams.get(&csid);
        let continuing = prev.is_some_and(|p| p.partial.is_some());
        if continuing && fmt != 3 {
            return Err(ChunkError::HeaderInMessage { csid });
        }
        let field = if fmt <= 2 { u24(&h[0..3]) } else { 0 };
        let extended = if fmt <= 2 {
            field == EXTENDED
        } else {
            prev.is_some_and(|p| p.extended)
        };
        pos += header_len;
        let mut ext_value = 0;
        if extended {
            if b.len() < pos + 4 {
                return Ok(Chunk::Incomplete);
            }
            ext_value = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap());
            pos += 4;
        }
        let (length, type_id) = if fmt <= 1 {
            (u24(&h[3..6]), h[6])
        } else {
            let p = prev.unwrap();
            (p.length, p.type_id)
        };
        if length > self.max_message_size {
            return Err(ChunkError::TooLarge {
                length,
                type_id,
                limit: self.max_message_size,
            });
        }
        let already = prev
            .and_then(|p| p.partial.as_ref())
            .map_or(0, |p| p.len() as u32);
        let n = (length - already).min(self.chunk_size) as usize;
        if b.len() < pos + n {
            return Ok(Chunk::Incomplete);
        }
        // The whole chunk is here: commit.
        let stream_id = if fmt == 0 {
            Some(u32::from_le_bytes(h[7..11].try_into().unwrap()))
        } else {
            None
        };
        let _ = self.buf.split_to(pos);
        let data = self.buf.split_to(n);
        let s = self.streams.entry(csid).or_default();
        if !continuing {
            let value = if extended { ext_value } else { field };
            match fmt {
                0 => {
                    s.timestamp = value;
                    s.delta = value;
                    s.stream_id = stream_id.unwrap();
                }
                1 | 2 => {
                    s.timestamp = s.timestamp.wrapping_add(value);
                    s.delta = value;
                }
                _ => s.timestamp = s.timestamp.wrapping_add(s.delta),
            }
            s.length = length;
            s.type_id = type_id;
            s.extended = extended;
            s.have_header = true;
            self.latest = Some((length, type_id, s.stream_id));
        }
        let partial = s
            .partial
            // Grown as chunks arrive: a header alone (a peer announcing large messages on many
            // chunk streams) costs no more than a chunk.
            .get_or_insert_with(|| BytesMut::with_capacity((length as usize).min(64 * 1024)));
        partial.extend_from_slice(&data);
        if partial.len() as u32 == length {
            let payload = s.partial.take().unwrap().freeze();
            return Ok(Chunk::Message(Message {
                csid,
                timestamp: s.timestamp,
                type_id: s.type_id,
                stream_id: s.stream_id,
                payload,
            }));
        }
        Ok(Chunk::Partial)
    }
}

/// A chunk of type `fmt` (1-3) opens chunk stream `csid`, which has no previous header to
/// take the missing fields from. The spec forbids it, but servers do it (pyrtmp starts its
/// answers on chunk stream 3 with a type 1 header, having sent type 0 on chunk stream 2) and
/// ffmpeg accepts it, so we do too: the timestamp starts from 0; the message stream id (and
/// for types 2 and 3 the length and type) are those of the latest header on any chunk stream.
/// A type 2 or 3 chunk before any header at all has no sensible length: still an error.
/// The limits (chunk stream count, message size) apply to the result as to any header.
fn assume_previous_header(
    streams: &mut HashMap<u32, InStream>,
    latest: Option<(u32, u8, u32)>,
    fmt: u8,
    csid: u32,
) -> Result<(), ChunkError> {
    let (length, type_id, stream_id) = match (fmt, latest) {
        (_, Some(latest)) => latest,
        (1, None) => (0, 0, 0),
        _ => return Err(ChunkError::NoPreviousHeader { fmt, csid }),
    };
    if fmt == 1 {
        log::info!(
            "chunk of type 1 on chunk stream {csid} without a previous header: tolerated, \
                 assuming timestamp 0 and message stream {stream_id}"
        );
    } else {
        log::info!(
            "chunk of type {fmt} on chunk stream {csid} without a previous header: tolerated, \
                 assuming timestamp 0, message stream {stream_id}, length {length}, type {type_id}"
        );
    }
    let s = streams.entry(csid).or_default();
    s.timestamp = 0;
    s.delta = 0;
    s.length = length;
    s.type_id = type_id;
    s.stream_id = stream_id;
    s.extended = false;
    s.have_header = true;
    Ok(())
}

enum Chunk {
    Incomplete,
    Partial,
    Message(Message),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(csid: u32, ts: u32, type_id: u8, sid: u32, len: usize, seed: u8) -> Message {
        Message {
            csid,
            timestamp: ts,
            type_id,
            stream_id: sid,
            payload: Bytes::from(
                (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn encode(enc: &mut ChunkEncoder, msgs: &[Message]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            enc.write(
                m.csid,
                m.timestamp,
                m.type_id,
                m.stream_id,
                &m.payload,
                &mut out,
            );
        }
        out
    }

    fn decode_all(dec: &mut ChunkDecoder, bytes: &[u8], step: usize) -> Vec<Message> {
        let mut got = Vec::new();
        for piece in bytes.chunks(step) {
            dec.feed(piece);
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(dec.buffered(), 0);
        got
    }

    #[test]
    fn header_types_are_chosen_and_round_trip() {
        let msgs = vec![
            msg(4, 1000, 9, 1, 300, 1),         // type 0
            msg(4, 1033, 9, 1, 200, 2),         // type 1: length changed
            msg(4, 1066, 9, 1, 200, 3),         // type 2: same delta as before? 33 == 33 -> type 3
            msg(4, 1100, 9, 1, 200, 4),         // type 2: delta 34
            msg(4, 1134, 9, 1, 200, 5),         // type 3: same delta
            msg(4, 1134, 8, 1, 10, 6),          // type 1: type changed, delta 0
            msg(4, 500, 8, 1, 10, 7),           // type 0: timestamp went back
            msg(4, 600, 8, 2, 10, 8),           // type 0: stream id changed
            msg(3, 0, 20, 0, 5, 9),             // another chunk stream
            msg(100, 7, 18, 1, 129, 10),        // two-byte basic header
            msg(1000, 7, 18, 1, 0, 11),         // three-byte basic header, empty
            msg(5, 0x0100_0000, 9, 1, 400, 12), // extended timestamp
            msg(5, 0x0200_0000, 9, 1, 400, 13), // extended delta
            msg(5, 0x0300_0000, 9, 1, 400, 14), // type 3 with extended delta
        ];
        for chunk_size in [1u32, 2, 127, 128, 129, 4096, 65536] {
            let mut enc = ChunkEncoder::new();
            enc.set_chunk_size(chunk_size);
            let bytes = encode(&mut enc, &msgs);
            for step in [1usize, 7, 1000, bytes.len()] {
                let mut dec = ChunkDecoder::new(1 << 20);
                dec.set_chunk_size(chunk_size).unwrap();
                assert_eq!(
                    decode_all(&mut dec, &bytes, step),
                    msgs,
                    "chunk size {chunk_size} step {step}"
                );
            }
        }
    }

    #[test]
    fn headers_on_the_wire() {
        let mut enc = ChunkEncoder::new();
        let mut out = Vec::new();
        enc.write(3, 0, 20, 0, b"abc", &mut out);
        assert_eq!(
            out,
            [0x03, 0, 0, 0, 0, 0, 3, 20, 0, 0, 0, 0, b'a', b'b', b'c']
        );
        out.clear();
        enc.write(3, 10, 20, 0, b"xyz", &mut out);
        assert_eq!(out, [0x83, 0, 0, 10, b'x', b'y', b'z'], "type 2");
        out.clear();
        enc.write(3, 20, 20, 0, b"xyz", &mut out);
        assert_eq!(out, [0xc3, b'x', b'y', b'z'], "type 3");
        out.clear();
        enc.write(3, 25, 20, 0, b"xy", &mut out);
        assert_eq!(out, [0x43, 0, 0, 5, 0, 0, 2, 20, b'x', b'y'], "type 1");
        out.clear();
        // Continuation chunks are type 3 with the same chunk stream id.
        enc.write(3, 25, 20, 0, &[7u8; 200], &mut out);
        assert_eq!(out.len(), 8 + 128 + 1 + 72);
        assert_eq!(out[8 + 128], 0xc3);
        // Extended timestamp: 0xffffff in the header, 32 bits after it and in continuations.
        out.clear();
        let mut enc = ChunkEncoder::new();
        enc.write(6, 0x1234_5678, 9, 1, &[0u8; 130], &mut out);
        assert_eq!(&out[1..4], &[0xff, 0xff, 0xff]);
        assert_eq!(&out[12..16], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(out[16 + 128], 0xc6);
        assert_eq!(&out[17 + 128..21 + 128], &[0x12, 0x34, 0x56, 0x78]);
    }

    #[test]
    fn interleaved_chunk_streams() {
        // Two messages whose chunks interleave, as servers send them.
        let mut a = ChunkEncoder::new();
        let mut bytes = Vec::new();
        let mut m1 = Vec::new();
        a.write(4, 0, 9, 1, &[1u8; 200], &mut m1);
        let mut m2 = Vec::new();
        a.write(5, 0, 8, 1, &[2u8; 200], &mut m2);
        // m1 first chunk (12+128), m2 first chunk, m1 rest, m2 rest.
        bytes.extend_from_slice(&m1[..140]);
        bytes.extend_from_slice(&m2[..140]);
        bytes.extend_from_slice(&m1[140..]);
        bytes.extend_from_slice(&m2[140..]);
        let mut dec = ChunkDecoder::new(1 << 20);
        let got = decode_all(&mut dec, &bytes, 13);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].csid, 4);
        assert_eq!(&got[0].payload[..], &[1u8; 200]);
        assert_eq!(&got[1].payload[..], &[2u8; 200]);
    }

    /// What pyrtmp 0.3.1's SimpleRTMPController sends in answer to connect (bytes produced by
    /// its own classes): Window Acknowledgement Size with a type 0 header on chunk stream 2, then
    /// Set Peer Bandwidth, Stream Begin and Set Chunk Size 8192 with type 1 headers, then the
    /// `_result` for connect on chunk stream 3 with a type 1 header, though chunk stream 3 had
    /// none before. ffmpeg accepts this; so do we, taking the message stream id (0) of the
    /// latest header.
    #[test]
    fn pyrtmp_connect_answer_with_a_type_1_opening_header() {
        let mut bytes = vec![
            0x02, 0, 0, 0, 0, 0, 4, 5, 0, 0, 0, 0, 0x00, 0x4c, 0x4b, 0x40, // window ack size
            0x42, 0, 0, 0, 0, 0, 5, 6, 0x00, 0x4c, 0x4b, 0x40, 2, // set peer bandwidth
            0x42, 0, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0, 0, 0, // stream begin 0
            0x42, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0x20, 0, // set chunk size 8192
            0x43, 0, 0, 0, 0, 0, 0xba, 20, // _result: type 1 header on a new chunk stream
        ];
        let result = crate::rtmp::amf0::encode_all(&[
            "_result".into(),
            1.0.into(),
            crate::rtmp::amf0::obj(&[
                ("fmsVer", "FMS/3,0,123".into()),
                ("capabilities", 31.0.into()),
            ]),
            crate::rtmp::amf0::obj(&[
                ("level", "status".into()),
                ("code", "NetConnection.Connect.Success".into()),
                ("description", "Connection succeeds".into()),
                ("objectEncoding", 0.0.into()),
            ]),
        ]);
        assert_eq!(result.len(), 0xba);
        bytes.extend_from_slice(&result);
        for step in [1, 5, bytes.len()] {
            let mut dec = ChunkDecoder::new(1 << 20);
            let mut got = Vec::new();
            for piece in bytes.chunks(step) {
                dec.feed(piece);
                while let Some(m) = dec.next_message().unwrap() {
                    if m.type_id == msg_type::SET_CHUNK_SIZE {
                        dec.set_chunk_size(8192).unwrap();
                    }
                    got.push(m);
                }
            }
            let types: Vec<u8> = got.iter().map(|m| m.type_id).collect();
            assert_eq!(types, [5, 6, 4, 1, 20], "step {step}");
            let last = got.last().unwrap();
            assert_eq!((last.csid, last.stream_id, last.timestamp), (3, 0, 0));
            assert_eq!(&last.payload[..], &result[..]);
            // Later headers on chunk stream 3 build on the assumed one as on any other.
            dec.feed(&[0x83, 0, 0, 10]);
            dec.feed(&result);
            let m = dec.next_message().unwrap().unwrap();
            assert_eq!(
                (m.csid, m.stream_id, m.timestamp, m.type_id),
                (3, 0, 10, 20)
            );
        }
        // A type 2 or 3 opening header takes length and type from the latest header too.
        let mut dec = ChunkDecoder::new(1 << 20);
        dec.feed(&[0x02, 0, 0, 5, 0, 0, 2, 9, 1, 0, 0, 0, 0xaa, 0xbb]);
        dec.feed(&[0x84, 0, 0, 7, 0xcc, 0xdd, 0xc5, 0xee, 0xff]);
        let got: Vec<Message> = std::iter::from_fn(|| dec.next_message().unwrap()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!((got[1].csid, got[1].timestamp, got[1].stream_id), (4, 7, 1));
        assert_eq!((got[2].csid, got[2].timestamp, got[2].type_id), (5, 0, 9));
        assert_eq!(&got[2].payload[..], &[0xee, 0xff]);
    }

    #[test]
    fn hostile_chunks_are_errors() {
        let mut dec = ChunkDecoder::new(1000);
        assert!(dec.set_chunk_size(0).is_err());
        assert!(dec.set_chunk_size(0x8000_0000).is_err());
        // A message longer than the limit is refused at its header.
        dec.feed(&[0x03, 0, 0, 0, 0xff, 0xff, 0xff, 20, 0, 0, 0, 0]);
        assert!(dec.next_message().is_err());
        // A type 2 or 3 chunk before any header at all: no length to assume.
        for first in [0x83u8, 0xc3] {
            let mut dec = ChunkDecoder::new(1000);
            dec.feed(&[first, 0, 0, 0, 0]);
            assert_eq!(
                dec.next_message(),
                Err(ChunkError::NoPreviousHeader {
                    fmt: first >> 6,
                    csid: 3
                })
            );
        }
        // A tolerated type 1 header is held to the message size limit all the same.
        let mut dec = ChunkDecoder::new(1000);
        dec.feed(&[0x43, 0, 0, 0, 0xff, 0xff, 0xff, 20]);
        assert!(matches!(
            dec.next_message(),
            Err(ChunkError::TooLarge {
                length: 0xff_ffff,
                ..
            })
        ));
        // Too many chunk streams.
        let mut dec = ChunkDecoder::new(1000);
        let mut enc = ChunkEncoder::new();
        let mut out = Vec::new();
        for csid in 2..100 {
            // Each starts a message it never finishes.
            enc.write(csid, 0, 9, 1, &[0u8; 200], &mut out);
            out.truncate(out.len() - 72 - 1);
        }
        dec.feed(&out);
        let mut failed = false;
        for _ in 0..200 {
            match dec.next_message() {
                Err(_) => {
                    failed = true;
                    break;
                }
                Ok(None) => break,
                Ok(Some(_)) => {}
            }
        }
        assert!(failed, "64 chunk streams at most");
    }
}
