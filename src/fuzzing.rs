//! Entry points of the fuzz targets in `fuzz/`: each takes one raw input and feeds it to the code
//! that reads what the network sends. `tests/fuzz_corpus.rs` replays the committed corpus through
//! the same functions on stable. A panic (an assertion here or anywhere below) is a finding.
//!
//! Not part of the plugin's API.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;

use crate::hls::http::{self, ByteRange, HttpConfig, HttpServer};
use crate::hls::playlist::{Entry, Playlist, PlaylistConfig, PlaylistKind};
use crate::hls::store::{DirStore, FileKind, Job, Output, OutputConfig, Published};
use crate::rtmp::amf0;
use crate::rtmp::chunk::{ChunkDecoder, msg_type};
use crate::rtmp::client::{Phase, Publisher, PublisherConfig, StopCommands};
use crate::rtmp::flv::{FlvParser, Tag, TagKind};
use crate::rtmp::server::{Connection, ConnectionConfig, Event as ServerEvent};
use crate::rtp::jitterbuffer::{JitterBuffer, JitterBufferConfig, Output as JbOutput};
use crate::rtp::rtcp::{self, RtcpPacket};
use crate::rtp::stats::ReceiverStats;
use crate::rtp::timing::{SenderClock, Timeline};
use crate::rtp::{keyframe, parse_rtp_header, rtp_payload};
use crate::rtsp::auth::{self, Authenticator, Credentials};
use crate::rtsp::client::{StreamInfo, parse};
use crate::rtsp::codec::{Decoder, Frame, Limits};
use crate::rtsp::range::NptRange;
use crate::rtsp::sdp::{self, MediaDescription, SessionDescription};
use crate::rtsp::server::auth::{Access, AccessConfig, AuthMethods, Users};
use crate::rtsp::server::{Protocols, RecordConfig, Server, ServerConfig};
use crate::rtsp::transport::{parse_ssrc, parse_transports};
use crate::rtsp::tunnel::{self, Base64Decoder};

/// Splits `data` into its first byte, read as the size of the pieces the rest arrives in (so
/// that a message is seen split at every offset), and the rest.
fn pieces(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&step, rest) = data.split_first()?;
    Some((usize::from(step).max(1), rest))
}

/// The RTSP framing (`codec::Decoder`) fed in pieces; every response goes through the header
/// parsers of the client.
pub fn rtsp_codec(data: &[u8]) {
    let Some((step, data)) = pieces(data) else {
        return;
    };
    let limits = Limits {
        max_header_bytes: 2048,
        max_body_bytes: 4096,
    };
    let mut decoder = Decoder::new(limits);
    for piece in data.chunks(step) {
        decoder.extend(piece);
        loop {
            match decoder.decode() {
                Ok(Some(Frame::Response(resp))) => client_headers(&resp),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
}

const REQUEST_URL: &str = "rtsp://camera.example:554/live/ch1?channel=1";

/// What the client reads from a response's headers.
fn client_headers(resp: &rtsp_types::Response<Vec<u8>>) {
    use rtsp_types::headers;
    let request_url = url::Url::parse(REQUEST_URL).expect("valid URL");
    for (name, value) in resp.headers() {
        let value = value.as_str();
        match name {
            n if *n == headers::SESSION => {
                black_box(parse::parse_session("fuzz", value));
            }
            n if *n == headers::PUBLIC => {
                black_box(parse::public_lists(value, "GET_PARAMETER"));
            }
            n if *n == headers::CONTENT_BASE => {
                black_box(parse::content_base("fuzz", Some(value), &request_url));
            }
            n if *n == headers::LOCATION => {
                black_box(parse::location(value, &request_url));
            }
            n if *n == headers::RANGE => {
                black_box(NptRange::parse(value));
            }
            n if *n == headers::TRANSPORT => rtsp_transport(value.as_bytes()),
            n if *n == headers::WWW_AUTHENTICATE => rtsp_auth(value.as_bytes()),
            _ => {}
        }
    }
}

/// The Transport header; what is parsed must parse back the same from its text (the server
/// answers with it).
pub fn rtsp_transport(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    black_box(parse_ssrc(text));
    let Ok(specs) = parse_transports(text) else {
        return;
    };
    for spec in specs {
        let written = spec.to_string();
        match parse_transports(&written) {
            Ok(again) if again == [spec.clone()] => {}
            other => panic!("{spec:?} written as {written:?} parses as {other:?}"),
        }
    }
}

/// A DESCRIBE answer as the client reads it. Line 1: the Content-Base header, line 2: an
/// RTP-Info header for the PLAY answer, the rest: the SDP.
pub fn rtsp_sdp(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let (Some(base), Some(rtp_info), Some(body)) = (lines.next(), lines.next(), lines.next())
    else {
        return;
    };
    let request_url = url::Url::parse(REQUEST_URL).expect("valid URL");
    let base = parse::content_base("fuzz", Some(base), &request_url);
    let Ok(description) = SessionDescription::parse(body.as_bytes()) else {
        return;
    };
    black_box(description.range.as_deref().map(NptRange::parse));
    let streams: Vec<StreamInfo> = description
        .media
        .iter()
        .enumerate()
        .map(|(index, media)| StreamInfo {
            index,
            control: sdp::resolve_control(&base, &media.control),
            media: media.clone(),
        })
        .collect();
    for info in parse::parse_rtp_info("fuzz", rtp_info, &streams) {
        assert!(info.stream < streams.len(), "{info:?} names no stream");
    }
}

/// `WWW-Authenticate` values (one per line) and the client's answers to them.
pub fn rtsp_auth(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let challenges = auth::parse_challenges(text.lines());
    let Some(chosen) = auth::choose(&challenges) else {
        return;
    };
    let credentials = Credentials {
        user: "user".into(),
        password: "pa:ss\"word".into(),
    };
    let mut authenticator = Authenticator::new(credentials, chosen.clone()).with_cnonce("0a4f113b");
    for _ in 0..2 {
        let value = authenticator.authorization("DESCRIBE", REQUEST_URL);
        assert!(
            !value.contains(|c: char| c.is_ascii_control() && c != '\t'),
            "Authorization {value:?} for {chosen:?} is no header value"
        );
        if authenticator.on_unauthorized(&challenges) != Ok(true) {
            break;
        }
    }
}

/// The server's access check: one user with a password, one with an MD5 HA1 (what htdigest
/// writes) and one with a SHA-256 HA1; Basic and Digest offered.
static ACCESS: LazyLock<Access> = LazyLock::new(|| {
    let realm = "fuzz";
    let mut users = Users::default();
    users
        .add_entries(
            [
                "alice:S3cr3t",
                "bob:fuzz:1b4ca4a9e6d1ad4fb2e9d1bf0a0b1c5e",
                "carol:fuzz:5a2c1f4a1d8fb0f1c2e3d4a5b6c7d8e9f00112233445566778899aabbccddeef",
            ],
            realm,
        )
        .expect("valid users");
    Access::new(AccessConfig {
        users,
        methods: AuthMethods {
            basic: true,
            digest: true,
        },
        realm: realm.into(),
        ..AccessConfig::default()
    })
});

/// `Authorization` values (one per line) as the server checks them for DESCRIBE. The word
/// `NONCE` stands for a nonce the server issued (one the input cannot forge); a line `!N` makes
/// the following ones arrive on connection N (a nonce belongs to the first connection using it).
pub fn rtsp_server_auth(data: &[u8]) {
    let access = &*ACCESS;
    let challenges = access.challenges(false);
    let nonce = challenges
        .iter()
        .find_map(|c| {
            let start = c.find("nonce=\"")? + 7;
            let len = c[start..].find('"')?;
            Some(c[start..start + len].to_owned())
        })
        .expect("a Digest challenge with a nonce");
    let url = url::Url::parse(REQUEST_URL).expect("valid URL");
    let mut conn = 1;
    for line in String::from_utf8_lossy(data).lines() {
        if let Some(n) = line.strip_prefix('!') {
            conn = n.trim().parse().unwrap_or(1);
            continue;
        }
        let value = line.replace("NONCE", &nonce);
        let _ = black_box(access.authenticate(conn, "DESCRIBE", Some(&url), Some(&value)));
    }
}

/// RTSP over HTTP as both ends read it: the first bytes of a connection (server), a tunnel's
/// opening request and the GET's answer (client), then what follows the head as a POST body,
/// base64 decoded in pieces into the RTSP framing. Encoding the body and decoding it in pieces
/// gives it back.
pub fn rtsp_tunnel(data: &[u8]) {
    let Some((step, data)) = pieces(data) else {
        return;
    };
    black_box(tunnel::sniff(data));
    let _ = black_box(tunnel::parse_get_response(data));
    let body = match tunnel::parse_request(data) {
        Ok(Some((_, head))) => &data[head..],
        _ => data,
    };
    let mut base64 = Base64Decoder::new();
    let mut decoder = Decoder::new(Limits {
        max_header_bytes: 2048,
        max_body_bytes: 4096,
    });
    let mut plain = Vec::new();
    'pieces: for piece in body.chunks(step) {
        plain.clear();
        if base64.decode(piece, &mut plain).is_err() {
            break;
        }
        decoder.extend(&plain);
        loop {
            match decoder.decode() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break 'pieces,
            }
        }
    }
    let encoded = tunnel::encode(body);
    let mut base64 = Base64Decoder::new();
    let mut decoded = Vec::new();
    for piece in encoded.chunks(step) {
        base64
            .decode(piece, &mut decoded)
            .expect("what encode wrote decodes");
    }
    assert!(decoded == body, "base64 round trip changed the body");
}

/// The RTP fixed header and the keyframe detection of each video payload format.
pub fn rtp_header(data: &[u8]) {
    black_box(crate::rtp::is_rtcp(data));
    let Ok(header) = parse_rtp_header(data) else {
        return;
    };
    let payload = rtp_payload(data, &header);
    assert_eq!(payload.len(), header.payload_len);
    for name in ["H264", "H265", "VP8", "VP9"] {
        black_box(keyframe::starts_keyframe(name, payload));
    }
}

/// Compound RTCP; Sender and Receiver Reports must read back the same once written.
pub fn rtcp_compound(data: &[u8]) {
    let Ok(packets) = rtcp::parse_compound(data) else {
        return;
    };
    for packet in packets {
        let mut written = Vec::new();
        let blocks = match &packet {
            RtcpPacket::SenderReport(sr) => {
                rtcp::write_sender_report(sr, "fuzz", &mut written);
                &sr.reports
            }
            RtcpPacket::ReceiverReport(rr) => {
                rtcp::write_receiver_report(rr, "fuzz", &mut written);
                &rr.reports
            }
            _ => continue,
        };
        for block in blocks {
            black_box(rtcp::round_trip_time(block, 0x8000_0000_0000_0000));
        }
        let again = rtcp::parse_compound(&written);
        assert_eq!(
            again.as_ref().ok().and_then(|p| p.first()),
            Some(&packet),
            "written as {written:?}"
        );
    }
}

/// One step of the receive path (see [`rtp_receiver`]).
#[derive(Debug, Arbitrary)]
enum ReceiverOp {
    /// A packet arrives `after_us` after the previous step.
    Packet {
        seq: u16,
        timestamp: u32,
        after_us: u16,
        len: u8,
    },
    /// Time passes; whatever is due leaves the jitter buffer.
    Wait {
        ms: u16,
    },
    SenderReport {
        ntp: u64,
        rtptime: u32,
    },
    ReceiverReport,
    Drain,
    Reset,
}

/// The receive path of a stream driven by (sequence, timestamp, arrival) sequences: jitter
/// buffer, receiver statistics (RFC 3550 A.1, A.3, A.8), timeline and lip-sync.
pub fn rtp_receiver(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(clock_rate), Ok(latency_ms), Ok(max_packets), Ok(max_dropout)) = (
        u.arbitrary::<u32>(),
        u.arbitrary::<u8>(),
        u.int_in_range(1..=256usize),
        u.arbitrary::<u16>(),
    ) else {
        return;
    };
    let config = JitterBufferConfig {
        latency: Duration::from_millis(latency_ms.into()),
        max_packets,
        max_dropout,
    };
    let start = Instant::now();
    let mut now = start;
    let mut buffer = JitterBuffer::new(config);
    let mut stats = ReceiverStats::new(clock_rate);
    let mut timeline = Timeline::new(clock_rate).ok();
    let mut clock = SenderClock::new();
    let output = |out: JbOutput, now: Instant, timeline: &mut Option<Timeline>| {
        if let (JbOutput::Packet { data, .. }, Some(timeline)) = (out, timeline.as_mut()) {
            let timestamp = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
            let running = u64::try_from(now.duration_since(start).as_nanos()).ok();
            timeline.pts(timestamp, || running);
        }
    };
    let Ok(ops) = u.arbitrary_iter::<ReceiverOp>() else {
        return;
    };
    for op in ops {
        let Ok(op) = op else { break };
        match op {
            ReceiverOp::Packet {
                seq,
                timestamp,
                after_us,
                len,
            } => {
                now += Duration::from_micros(after_us.into());
                stats.on_packet(seq, timestamp, now, len.into());
                let data = Bytes::copy_from_slice(&timestamp.to_be_bytes());
                let _ = buffer.push(seq, data, now);
            }
            ReceiverOp::Wait { ms } => {
                now += Duration::from_millis(ms.into());
                while let Some(out) = buffer.pop(now) {
                    output(out, now, &mut timeline);
                }
                black_box(buffer.next_deadline());
            }
            ReceiverOp::SenderReport { ntp, rtptime } => {
                stats.on_sender_report(ntp, now);
                if let Some(timeline) = timeline.as_mut() {
                    clock.apply(timeline, ntp, rtptime);
                }
            }
            ReceiverOp::ReceiverReport => {
                stats.report_block(1, now);
                black_box((stats.jitter_duration(), stats.cumulative_lost()));
            }
            ReceiverOp::Drain => {
                for out in buffer.drain() {
                    output(out, now, &mut timeline);
                }
                assert!(buffer.is_empty(), "drained, yet {} held", buffer.len());
            }
            // As for a new sender: the statistics restart too.
            ReceiverOp::Reset => {
                buffer.reset();
                stats.new_source();
            }
        }
    }
}

/// The RTMP chunk stream as the publisher reads it (Set Chunk Size honoured), fed in pieces.
pub fn rtmp_chunk(data: &[u8]) {
    let Some((step, data)) = pieces(data) else {
        return;
    };
    let mut decoder = ChunkDecoder::new(64 * 1024);
    for piece in data.chunks(step) {
        decoder.feed(piece);
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) if msg.type_id == msg_type::SET_CHUNK_SIZE => {
                    if let Some(size) = msg.payload.first_chunk::<4>()
                        && decoder.set_chunk_size(u32::from_be_bytes(*size)).is_err()
                    {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// AMF0 values; what is decoded encodes to bytes that decode to the same encoding.
pub fn amf0(data: &[u8]) {
    let Ok(values) = amf0::decode_all(data) else {
        return;
    };
    let encoded = amf0::encode_all(&values);
    let again = amf0::decode_all(&encoded).expect("our own encoding decodes");
    assert_eq!(amf0::encode_all(&again), encoded);
}

/// The publisher's state machine after a complete handshake, fed the server's bytes in pieces;
/// it sends a video tag whenever it is publishing, and stops politely at the end.
pub fn rtmp_publisher(data: &[u8]) {
    let Some((step, data)) = pieces(data) else {
        return;
    };
    let config = PublisherConfig {
        name: String::new(),
        app: "live".into(),
        tc_url: "rtmp://127.0.0.1/live".into(),
        stream: "key".into(),
        flash_version: "LNX 10,0,32,18".into(),
        chunk_size: 4096,
        max_message_size: 64 * 1024,
        // The authentication steps parse what the server says in a refused connect.
        credentials: Some(crate::rtmp::auth::Credentials {
            user: "u".into(),
            password: "p".into(),
        }),
        auth: Default::default(),
        fourcc_list: Vec::new(),
    };
    let mut publisher = Publisher::new(config, 0, &[7; 1528]);
    let c0c1 = publisher.take_output();
    // S0, S1, then S2 echoing C1.
    let mut handshake = vec![3];
    handshake.extend_from_slice(&[0; 1536]);
    handshake.extend_from_slice(&c0c1[1..]);
    publisher.receive(&handshake).expect("a valid handshake");
    let tag = Tag {
        kind: TagKind::Video,
        timestamp: 40,
        data: Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]),
    };
    for piece in data.chunks(step) {
        if publisher.receive(piece).is_err() {
            return;
        }
        if publisher.phase() == Phase::Publishing {
            publisher.send_tag(&tag);
        }
        publisher.take_output();
    }
    publisher.finish(StopCommands {
        fc_unpublish: true,
        close_stream: true,
        delete_stream: true,
    });
}

/// FLV as the RTMP sink reads its input, fed in pieces.
pub fn flv(data: &[u8]) {
    let Some((step, data)) = pieces(data) else {
        return;
    };
    let mut parser = FlvParser::new(64 * 1024);
    for piece in data.chunks(step) {
        parser.feed(piece);
        loop {
            match parser.next_tag() {
                Ok(Some(tag)) => {
                    black_box((
                        tag.is_keyframe(),
                        tag.is_sequence_header(),
                        tag.codec_id(),
                        tag.is_metadata(),
                    ));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// Enhanced RTMP tag bodies (`src/rtmp/enhanced.rs`) as rtmpserversrc reads a publisher's:
/// the input as a video and as an audio body (ex-headers, multitrack), classic AVC/AAC bodies,
/// the marker test, an OpusHead, an AV1 temporal unit's sequence header into av1C. A single-track
/// packet written back and parsed again is the same packet.
pub fn rtmp_enhanced(data: &[u8]) {
    use crate::rtmp::enhanced::{self, Message, PacketKind};
    let bytes = Bytes::copy_from_slice(data);
    let mut all = Vec::new();
    if let Ok(Message::Packets(p)) = enhanced::parse_video(&bytes) {
        assert!(p.len() <= enhanced::MAX_TRACKS);
        all.extend(p.into_iter().map(|p| (true, p)));
    }
    if let Ok(p) = enhanced::parse_audio(&bytes) {
        assert!(p.len() <= enhanced::MAX_TRACKS);
        all.extend(p.into_iter().map(|p| (false, p)));
    }
    for video in [true, false] {
        black_box(enhanced::is_config_or_marker(video, data));
        black_box(enhanced::classic_packet(video, &bytes));
    }
    black_box(enhanced::parse_opus_head(data));
    if let Some(obu) = enhanced::av1_sequence_header_obu(data) {
        let rec = enhanced::av1_config_record(obu, false, false, false, (true, true));
        assert_eq!(&rec[4..], obu);
    }
    for (video, p) in all {
        if video && p.kind == PacketKind::MultichannelConfig {
            continue;
        }
        let body = if video {
            enhanced::write_video(p.fourcc, p.kind, p.keyframe, &p.data)
        } else {
            enhanced::write_audio(p.fourcc, p.kind, &p.data)
        };
        let again = Bytes::from(body);
        let back = if video {
            match enhanced::parse_video(&again) {
                Ok(Message::Packets(mut q)) => q.pop(),
                other => panic!("{other:?}"),
            }
        } else {
            enhanced::parse_audio(&again).expect("written back").pop()
        };
        let back = back.expect("one packet");
        assert_eq!(
            (back.fourcc, back.kind, &back.data),
            (p.fourcc, p.kind, &p.data)
        );
        if video {
            assert_eq!(back.keyframe, p.keyframe);
        }
    }
}

/// The fMP4 writer's readers of encoder output (`src/hls/fmp4/codec.rs`): Annex B access units
/// and their parameter sets into avcC and hvcC (the whole input also taken as one SPS), ADTS,
/// OpusHead, AV1 temporal units and sequence headers into av1C.
pub fn hls_fmp4_codec(data: &[u8]) {
    use crate::hls::fmp4::codec::{self, NalCodec, ParameterSets};
    for nal in [NalCodec::H264, NalCodec::H265] {
        let (sample, sets) = codec::annexb_to_sample(data, nal);
        black_box(sample);
        black_box(codec::avcc(&sets));
        black_box(codec::hvcc(&sets));
        let whole = ParameterSets {
            vps: vec![vec![0x40, 0x01]],
            sps: vec![data.to_vec()],
            pps: vec![vec![0x44, 0x01]],
        };
        black_box(codec::avcc(&whole));
        black_box(codec::hvcc(&whole));
    }
    black_box(codec::adts_frames(data));
    black_box(codec::parse_opus_head(data));
    black_box(codec::av1_sample(data));
    if let Some(seq) = codec::av1_sequence_header(data) {
        black_box(codec::av1c(seq));
    }
    black_box(codec::av1c(data));
}

/// The HLS server's `Range` header parser (8 bytes of file length, then the header) and request
/// path check (the same text as the path).
pub fn hls_range(data: &[u8]) {
    let Some((len, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    let len = usize::try_from(u64::from_le_bytes(*len)).unwrap_or(usize::MAX);
    let header = String::from_utf8_lossy(header);
    if let ByteRange::Part(start, end) = http::byte_range(Some(&header), len) {
        assert!(
            start <= end && end < len,
            "{header:?} of {len}: {start}-{end}"
        );
    }
    if let http::Target::Name(name) = http::target(&header) {
        assert!(
            !name.is_empty() && name != "." && !name.contains(['/', '\\']) && !name.contains(".."),
            "{header:?} names {name:?}"
        );
    }
}

/// A previous run's playlist read back to resume it; then a segment is added and the playlist
/// rendered, as the sink does.
pub fn hls_playlist_resume(data: &[u8]) {
    let Ok(previous) = m3u8_rs::parse_media_playlist_res(data) else {
        return;
    };
    for kind in [PlaylistKind::Live, PlaylistKind::Event] {
        let config = PlaylistConfig {
            kind,
            playlist_length: 3,
            target_duration_s: 2,
        };
        let mut playlist = Playlist::resume(config, &previous);
        playlist.add(Entry {
            sequence: 0,
            uri: "segment.ts".into(),
            duration_s: 2.0,
            discontinuity: true,
            key: None,
            map: None,
            program_date_time: None,
            parts: Vec::new(),
        });
        let rendered = playlist.render();
        assert!(
            m3u8_rs::parse_media_playlist_res(&rendered).is_ok(),
            "we wrote an unreadable playlist: {}",
            String::from_utf8_lossy(&rendered)
        );
    }
}

/// Longer than libFuzzer's -timeout=1: a server that never closes is a finding.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).expect("connect to the server on loopback")
}

/// Sends `data`, half-closes the connection and reads the answer until the server closes.
fn finish(mut stream: TcpStream, data: &[u8], mut answer: Vec<u8>) -> Vec<u8> {
    // The server may hang up before it has read everything (oversized input).
    let _ = stream.write_all(data);
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.read_to_end(&mut answer);
    answer
}

fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    finish(connect(addr), data, Vec::new())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads into `answer` until it holds `needle`, for at most `wait`; false when it does not.
fn read_until(stream: &mut TcpStream, answer: &mut Vec<u8>, needle: &[u8], wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0; 4096];
    while find(answer, needle).is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// The built-in HLS server on loopback, serving a playlist and a 1000-byte segment.
static HLS_SERVER: LazyLock<(HttpServer, Output)> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("lsfuzz-hls-{}", std::process::id()));
    let published = Arc::new(Published::default());
    let output = Output::start(
        Arc::new(DirStore),
        OutputConfig::default(),
        Some(published.clone()),
        Box::new(|_| {}),
    );
    let segment: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    for (name, kind, data) in [
        ("playlist.m3u8", FileKind::Playlist, b"#EXTM3U\n".to_vec()),
        ("segment00000.ts", FileKind::Segment, segment),
    ] {
        let location = dir.join(name).to_string_lossy().into_owned();
        output
            .submit(Job::Put {
                location,
                kind,
                data: Arc::new(data),
            })
            .expect("queue a file");
    }
    assert!(output.flush(Duration::from_secs(10)), "files written");
    let config = HttpConfig {
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        max_connections: 64,
        max_connections_per_address: 64,
        request_timeout: crate::hls::http::DEFAULT_REQUEST_TIMEOUT,
        playlist_cache_control: "no-cache".into(),
        tls: None,
    };
    let server = HttpServer::start(config, published).expect("start the HLS server");
    (server, output)
});

/// Arbitrary bytes on one connection to the HLS server: every answer is an HTTP/1.x response
/// (hyper answers an HTTP/1.0 request with HTTP/1.0).
pub fn hls_http(data: &[u8]) {
    let answer = exchange(HLS_SERVER.0.local_addr(), data);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
        "answer {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// An RTSP server on loopback with one PCMU stream, fed a packet every 2 ms so that PLAY is
/// answered at once. TCP only: with UDP the server would send datagrams to whatever local ports
/// the input names.
static RTSP_SERVER: LazyLock<Server> = LazyLock::new(|| {
    let config = ServerConfig {
        address: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        protocols: Protocols {
            udp: false,
            udp_multicast: false,
            tcp: true,
        },
        play_keyframe_wait: Duration::ZERO,
        describe_timeout: Duration::from_millis(100),
        limits: Limits {
            max_header_bytes: 2048,
            max_body_bytes: 4096,
        },
        name: "fuzz".into(),
        ..ServerConfig::default()
    };
    let server = Server::start(config, |_| {}).expect("start the RTSP server");
    server.add_stream(0).expect("add a stream");
    server.set_stream_description(
        0,
        MediaDescription {
            media: "audio".into(),
            payload_type: 0,
            encoding_name: "PCMU".into(),
            clock_rate: 8000,
            encoding_params: None,
            fmtp: Vec::new(),
            control: "stream=0".into(),
            multicast: None,
            port: 0,
            bandwidth_kbps: None,
            attributes: Vec::new(),
        },
    );
    std::thread::spawn(|| {
        let mut seq = 0u16;
        loop {
            let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff];
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            RTSP_SERVER.push(0, &[Bytes::from(packet)], Instant::now());
            seq = seq.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    server
});

/// Stands for the id of the server's latest session in inputs of [`rtsp_server`]: ids are random.
const SESSION: &[u8] = b"SESSION";
/// Sent before the id is put in: its answer comes after those to everything sent before. The
/// empty lines first end a message left open (the server skips them between messages).
const MARK: &[u8] = b"\r\n\r\nOPTIONS * RTSP/1.0\r\nCSeq: 4294967295\r\n\r\n";
const MARK_ANSWERED: &[u8] = b"CSeq: 4294967295\r\n";
/// How long the answer to [`MARK`] is waited for (it never comes when the input before it ends
/// inside a body or interleaved frame), and how many ids are put in at most, to stay well within
/// -timeout=1.
const MARK_WAIT: Duration = Duration::from_millis(100);
const MAX_SESSION_IDS: usize = 3;

/// The id in the last `Session:` header of `answer` (empty when there is none).
fn latest_session(answer: &[u8]) -> &[u8] {
    const HEADER: &[u8] = b"\r\nSession: ";
    let Some(at) = answer.windows(HEADER.len()).rposition(|w| w == HEADER) else {
        return b"";
    };
    let id = &answer[at + HEADER.len()..];
    let end = id
        .iter()
        .position(|b| matches!(b, b';' | b'\r'))
        .unwrap_or(id.len());
    &id[..end]
}

/// Arbitrary bytes on one connection to the RTSP server (requests, interleaved data, garbage);
/// the first few `SESSION` in them become the id of the latest session the server answered.
pub fn rtsp_server(data: &[u8]) {
    drive_server(RTSP_SERVER.local_addr(), data);
}

/// An RTSP server on loopback with a record mount (what rtspserversrc runs): publishers'
/// ANNOUNCE bodies, SETUP `mode=record`, RECORD and interleaved RTP/RTCP. TCP only, as
/// [`RTSP_SERVER`]. A thread takes the queued events as the element would.
static RTSP_RECORD_SERVER: LazyLock<Server> = LazyLock::new(|| {
    let config = ServerConfig {
        address: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        protocols: Protocols {
            udp: false,
            udp_multicast: false,
            tcp: true,
        },
        limits: Limits {
            max_header_bytes: 2048,
            max_body_bytes: 4096,
        },
        name: "fuzz-record".into(),
        record: Some(RecordConfig {
            takeover: true,
            ..RecordConfig::default()
        }),
        ..ServerConfig::default()
    };
    let server = Server::start(config, |_| {}).expect("start the RTSP record server");
    let queue = server.record_queue().expect("a record mount");
    std::thread::spawn(move || {
        loop {
            black_box(queue.pop(Duration::from_millis(100)));
        }
    });
    server
});

/// Arbitrary bytes on one connection to a record mount, `SESSION` as in [`rtsp_server`].
pub fn rtsp_server_record(data: &[u8]) {
    drive_server(RTSP_RECORD_SERVER.local_addr(), data);
}

/// Sends `data` on one connection to the server at `addr`, putting the latest session id in
/// place of the first few `SESSION`.
fn drive_server(addr: SocketAddr, data: &[u8]) {
    let mut stream = connect(addr);
    let mut answer = Vec::new();
    let mut rest = data;
    for _ in 0..MAX_SESSION_IDS {
        let Some(at) = find(rest, SESSION) else { break };
        // The id comes from the answers to the messages before the one naming it: the mark goes
        // after the last empty line before it.
        let before = rest[..at]
            .windows(4)
            .rposition(|w| w == b"\r\n\r\n")
            .map_or(0, |end| end + 4);
        let sent = stream
            .write_all(&rest[..before])
            .and_then(|()| stream.write_all(MARK));
        if sent.is_err() || !read_until(&mut stream, &mut answer, MARK_ANSWERED, MARK_WAIT) {
            break;
        }
        let sent = stream
            .write_all(&rest[before..at])
            .and_then(|()| stream.write_all(latest_session(&answer)));
        rest = &rest[at + SESSION.len()..];
        if sent.is_err() {
            break;
        }
    }
    finish(stream, rest, answer);
}

/// The RTMP server's connection fed a client's bytes in pieces. The second byte chooses whether a
/// valid plain handshake (C0, C1, C2) comes first (even: the rest reaches the chunk and command
/// layers) or the input is the handshake itself (odd). Publishes are accepted or refused by the
/// parity of the key's length; whatever follows an accepted publish is read too.
pub fn rtmp_server(data: &[u8]) {
    let Some((step, data)) = pieces(data) else {
        return;
    };
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let config = ConnectionConfig {
        max_message_size: 64 * 1024,
        ..ConnectionConfig::default()
    };
    let mut conn = Connection::new(config, 0, &[5; crate::rtmp::handshake::PACKET_SIZE]);
    let mut input = Vec::new();
    if mode % 2 == 0 {
        input.push(3);
        input.extend_from_slice(&[0; 2 * crate::rtmp::handshake::PACKET_SIZE]);
    }
    input.extend_from_slice(data);
    for piece in input.chunks(step) {
        let mut events = match conn.receive(piece) {
            Ok(e) => e,
            Err(_) => return,
        };
        while !events.is_empty() {
            let mut again = false;
            for event in std::mem::take(&mut events) {
                match event {
                    ServerEvent::Publish(req) => {
                        if req.key.len() % 2 == 0 {
                            conn.accept_publish();
                            again = true;
                        } else {
                            conn.refuse_publish("NetStream.Publish.BadName", "odd");
                        }
                    }
                    ServerEvent::Media(tag) => {
                        black_box(tag.is_keyframe());
                    }
                    other => {
                        black_box(other);
                    }
                }
            }
            if again {
                match conn.receive(&[]) {
                    Ok(e) => events = e,
                    Err(_) => return,
                }
            }
        }
        black_box(conn.take_output());
    }
}
