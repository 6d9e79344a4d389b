//! The built-in muxer path: each input pad ends in its own [`super::output::OutputSink`], whose
//! buffers come here. Frames are queued per input and handed to [`crate::hls::ts::TsMuxer`] in
//! decode-time order (as mpegtsmux interleaves them), and the packets of each frame go to the
//! writer as one chunk stamped with the frame's decode running time, flagged when it starts a
//! video keyframe: what the segmenter got from mpegtsmux.
//!
//! With `segment-format=fmp4` the same queues feed [`Writer::push_sample`] instead: each frame is
//! made an ISO BMFF sample ([`crate::hls::fmp4::codec`]) and the inputs' tracks (sample entries
//! made from the caps and, for H.264/H.265 byte-streams, from the parameter sets of the first
//! keyframe) go to [`Writer::set_tracks`], which writes a new init segment when they change.

use std::collections::VecDeque;

use crate::hls::fmp4::codec::{self as fcodec, NalCodec, ParameterSets};
use crate::hls::fmp4::{Sample, SampleEntry, Track};
use crate::hls::ts::{AdtsConfig, Codec, Frame, TsMuxer, TsMuxerConfig};
use crate::hls::writer::{Published, Writer};

/// An input may run this far (ns of decode time queued) ahead of one that has nothing queued
/// before its frames are muxed anyway, so that a stalled input cannot hold up the others forever.
const MAX_LEAD_NS: i64 = 5_000_000_000;

/// Which codec the built-in muxer makes of these caps; `None`: it cannot take them.
pub fn codec_for_caps(caps: &gst::CapsRef) -> Option<Codec> {
    let s = caps.structure(0)?;
    let alignment_au = || s.get::<&str>("alignment").map_or(true, |a| a == "au");
    let byte_stream = || {
        s.get::<&str>("stream-format")
            .map_or(true, |f| f == "byte-stream")
    };
    match s.name().as_str() {
        "video/x-h264" if byte_stream() && alignment_au() => Some(Codec::H264),
        "video/x-h265" if byte_stream() && alignment_au() => Some(Codec::H265),
        "audio/mpeg" => match s.get::<i32>("mpegversion").ok()? {
            1 => {
                let version = s.get::<i32>("mpegaudioversion").ok();
                let rate = s.get::<i32>("rate").ok();
                match (version, rate) {
                    (Some(1), _) => Some(Codec::Mpeg1Audio),
                    (Some(_), _) => Some(Codec::Mpeg2Audio),
                    (None, Some(r)) if r < 32000 => Some(Codec::Mpeg2Audio),
                    (None, _) => Some(Codec::Mpeg1Audio),
                }
            }
            2 | 4 => match s.get::<&str>("stream-format").ok()? {
                "adts" => Some(Codec::AacAdts),
                "raw" => {
                    let data = s.get::<gst::Buffer>("codec_data").ok()?;
                    let map = data.map_readable().ok()?;
                    AdtsConfig::from_audio_specific_config(&map).map(Codec::AacRaw)
                }
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// What an input carries on the fMP4 path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fmp4Codec {
    /// H.264 or H.265 byte-stream access units: the sample entry comes from the parameter sets.
    Nal {
        codec: NalCodec,
        width: u16,
        height: u16,
    },
    /// AV1 temporal units (obu-stream): the sample entry comes from the sequence header.
    Av1 { width: u16, height: u16 },
    /// Raw AAC, Opus: the sample entry comes from the caps.
    Ready(SampleEntry),
    /// ADTS: the sample entry comes from the first frame's header.
    Adts { rate: u32, channels: u16 },
}

/// Which fMP4 track these caps make; `None`: the fMP4 writer cannot take them.
pub fn fmp4_codec_for_caps(caps: &gst::CapsRef) -> Option<Fmp4Codec> {
    let s = caps.structure(0)?;
    let alignment_au = || s.get::<&str>("alignment").map_or(true, |a| a == "au");
    let byte_stream = || {
        s.get::<&str>("stream-format")
            .map_or(true, |f| f == "byte-stream")
    };
    let dim = |name: &str| {
        s.get::<i32>(name)
            .ok()
            .and_then(|v| u16::try_from(v).ok())
            .unwrap_or(0)
    };
    let rate = s
        .get::<i32>("rate")
        .ok()
        .and_then(|r| u32::try_from(r).ok());
    let channels = s
        .get::<i32>("channels")
        .ok()
        .and_then(|c| u16::try_from(c).ok());
    match s.name().as_str() {
        "video/x-h264" | "video/x-h265" if byte_stream() && alignment_au() => {
            Some(Fmp4Codec::Nal {
                codec: if s.name() == "video/x-h264" {
                    NalCodec::H264
                } else {
                    NalCodec::H265
                },
                width: dim("width"),
                height: dim("height"),
            })
        }
        "video/x-av1"
            if s.get::<&str>("stream-format")
                .map_or(true, |f| f == "obu-stream")
                && s.get::<&str>("alignment").map_or(true, |a| a == "tu") =>
        {
            Some(Fmp4Codec::Av1 {
                width: dim("width"),
                height: dim("height"),
            })
        }
        "audio/mpeg" if matches!(s.get::<i32>("mpegversion"), Ok(2 | 4)) => {
            match s.get::<&str>("stream-format").ok()? {
                "adts" => Some(Fmp4Codec::Adts {
                    rate: rate.unwrap_or(0),
                    channels: channels.unwrap_or(0),
                }),
                "raw" => {
                    let data = s.get::<gst::Buffer>("codec_data").ok()?;
                    let map = data.map_readable().ok()?;
                    let asc = map.to_vec();
                    let config = AdtsConfig::from_audio_specific_config(&asc);
                    Some(Fmp4Codec::Ready(SampleEntry::Aac {
                        channels: channels
                            .or_else(|| config.map(|c| u16::from(c.channel_config)))
                            .unwrap_or(2),
                        rate: rate?,
                        asc,
                    }))
                }
                _ => None,
            }
        }
        "audio/x-opus" => {
            // The OpusHead of the stream header when there is one, else the caps' fields
            // (mapping family 0: mono or stereo).
            let head = s
                .get::<gst::ArrayRef>("streamheader")
                .ok()
                .and_then(|a| a.first().and_then(|v| v.get::<gst::Buffer>().ok()))
                .and_then(|b| {
                    let map = b.map_readable().ok()?;
                    fcodec::parse_opus_head(&map)
                });
            let family = s.get::<i32>("channel-mapping-family").unwrap_or(0);
            let head = match head {
                Some(h) => h,
                None if family == 0 => fcodec::OpusHead {
                    channels: channels.unwrap_or(2),
                    pre_skip: 0,
                    input_rate: rate.unwrap_or(48000),
                    gain: 0,
                    mapping: None,
                },
                None => return None,
            };
            Some(Fmp4Codec::Ready(SampleEntry::Opus {
                channels: head.channels,
                pre_skip: head.pre_skip,
                input_rate: head.input_rate,
                gain: head.gain,
                mapping: head.mapping,
            }))
        }
        _ => None,
    }
}

/// Whether caps offered for a pad (at request time) can go through the built-in muxer: some of
/// them can (the final caps are checked again when they arrive).
pub fn caps_supported(caps: &gst::Caps) -> bool {
    caps.is_any()
        || caps.is_empty()
        || caps.iter().any(|s| {
            matches!(
                s.name().as_str(),
                "video/x-h264" | "video/x-h265" | "audio/mpeg"
            )
        })
}

struct Queued {
    buffer: gst::Buffer,
    pts: Option<i64>,
    dts: Option<i64>,
}

struct Input {
    name: String,
    video: bool,
    codec: Option<Codec>,
    queue: VecDeque<Queued>,
    eos: bool,
    /// fMP4: what the caps say, the track made of it (once known) and the last parameter sets.
    fmp4: Option<Fmp4Codec>,
    track: Option<Track>,
    sets: ParameterSets,
    /// Whether the writer has been given the tracks since this one's last changed.
    track_sent: bool,
    /// Frames dropped while waiting for the codec configuration.
    dropped: u64,
}

/// The sample entry of an H.264/H.265 input with these parameter sets.
fn nal_entry(
    codec: NalCodec,
    width: u16,
    height: u16,
    sets: &ParameterSets,
) -> Option<SampleEntry> {
    Some(match codec {
        NalCodec::H264 => SampleEntry::Avc {
            width,
            height,
            avcc: fcodec::avcc(sets)?,
        },
        NalCodec::H265 => SampleEntry::Hevc {
            width,
            height,
            hvcc: fcodec::hvcc(sets)?,
        },
    })
}

impl Input {
    /// Counts a frame dropped before the stream's configuration was known; the first one of a
    /// run is logged at debug level, the others at trace.
    fn note_dropped(&mut self) {
        if self.dropped == 0 {
            log::debug!(
                "{}: dropping frames until one carries the codec configuration (parameter sets \
                 or sequence header) the fMP4 init segment needs",
                self.name
            );
        }
        self.dropped += 1;
    }

    /// Sets the track (a new sample entry: the writer gets the new track list).
    fn set_track(&mut self, track: Option<Track>) {
        if self.dropped > 0 && track.is_some() {
            log::debug!(
                "{}: codec configuration found after {} dropped frames",
                self.name,
                self.dropped
            );
            self.dropped = 0;
        }
        self.track = track;
        self.track_sent = false;
    }

    /// fMP4: makes the track from the first queued frame that can give it (video frames before
    /// the first one with parameter sets cannot be decoded and are dropped).
    fn prime(&mut self) {
        if self.track.is_some() {
            return;
        }
        match self.fmp4.clone() {
            Some(Fmp4Codec::Nal {
                codec,
                width,
                height,
            }) => {
                while let Some(q) = self.queue.front() {
                    let sets = q
                        .buffer
                        .map_readable()
                        .map(|m| fcodec::annexb_to_sample(&m, codec).1)
                        .unwrap_or_default();
                    if sets.complete(codec)
                        && let Some(entry) = nal_entry(codec, width, height, &sets)
                    {
                        self.sets = sets;
                        self.set_track(Some(Track::new(entry)));
                        return;
                    }
                    log::trace!(
                        "{}: frame before the first parameter sets dropped (fMP4 needs them for \
                         its init segment)",
                        self.name
                    );
                    self.note_dropped();
                    self.queue.pop_front();
                }
            }
            Some(Fmp4Codec::Av1 { width, height }) => {
                while let Some(q) = self.queue.front() {
                    let found = q.buffer.map_readable().ok().and_then(|map| {
                        let seq = fcodec::av1_sequence_header(&map)?;
                        Some((seq.to_vec(), fcodec::av1c(seq)?))
                    });
                    if let Some((seq, av1c)) = found {
                        self.sets.sps = vec![seq];
                        self.set_track(Some(Track::new(SampleEntry::Av1 {
                            width,
                            height,
                            av1c,
                        })));
                        return;
                    }
                    log::trace!(
                        "{}: temporal unit before the first sequence header dropped",
                        self.name
                    );
                    self.note_dropped();
                    self.queue.pop_front();
                }
            }
            Some(Fmp4Codec::Adts { rate, channels }) => {
                let header = self
                    .queue
                    .front()
                    .and_then(|q| q.buffer.map_readable().ok())
                    .and_then(|map| fcodec::parse_adts(&map));
                if let Some(h) = header {
                    self.set_track(Some(Track::new(SampleEntry::Aac {
                        channels: if channels > 0 {
                            channels
                        } else {
                            u16::from(h.channel_config)
                        },
                        rate: if rate > 0 {
                            rate
                        } else {
                            adts_rate(h.frequency_index)
                        },
                        asc: h.audio_specific_config(),
                    })));
                }
            }
            Some(Fmp4Codec::Ready(entry)) => self.set_track(Some(Track::new(entry))),
            None => {}
        }
    }
}

/// Sampling frequencies of ADTS's sampling_frequency_index (ISO/IEC 14496-3 table 1.18).
fn adts_rate(index: u8) -> u32 {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    RATES.get(usize::from(index)).copied().unwrap_or(48000)
}

impl Input {
    /// fMP4: its caps came but no frame yet (after [`Input::prime`]), so its track is not known.
    /// The others must wait for it even when they run [`MAX_LEAD_NS`] ahead (a non-live audio
    /// source is all there before a video encoder's first frame, more so on a loaded machine):
    /// muxed now, they would start the stream with an init segment and a segment without this
    /// track, and a discontinuity when it comes. An input that sends frames it cannot use yet
    /// (before the codec configuration, dropped and counted) does not hold them up.
    fn awaits_first_frame(&self) -> bool {
        self.track.is_none() && self.queue.is_empty() && self.dropped == 0 && !self.eos
    }

    fn head_dts(&self) -> Option<i64> {
        self.queue.front().and_then(|q| q.dts.or(q.pts))
    }

    fn span(&self) -> i64 {
        match (
            self.head_dts(),
            self.queue.back().and_then(|q| q.dts.or(q.pts)),
        ) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        }
    }
}

#[derive(Default)]
pub struct Builtin {
    inputs: Vec<Input>,
    muxer: Option<(Vec<Codec>, TsMuxer)>,
    out: Vec<u8>,
    /// Whether any buffer came in (after that the inputs cannot move to mpegtsmux).
    started: bool,
    /// Samples for the fMP4 writer instead of TS packets.
    fmp4: bool,
}

impl Builtin {
    pub fn add_input(&mut self, name: &str, video: bool) {
        self.inputs.push(Input {
            name: name.into(),
            video,
            codec: None,
            queue: VecDeque::new(),
            eos: false,
            fmp4: None,
            track: None,
            sets: ParameterSets::default(),
            track_sent: false,
            dropped: 0,
        });
        // Video first: its PID is 0x100 and it carries the PCR.
        self.inputs.sort_by_key(|i| !i.video);
    }

    pub fn remove_input(&mut self, name: &str) {
        self.inputs.retain(|i| i.name != name);
    }

    fn input(&mut self, name: &str) -> Option<&mut Input> {
        self.inputs.iter_mut().find(|i| i.name == name)
    }

    /// Samples for the fMP4 writer ([`Builtin::drain`] then feeds [`Writer::push_sample`]).
    pub fn set_fmp4(&mut self, fmp4: bool) {
        self.fmp4 = fmp4;
    }

    pub fn is_fmp4(&self) -> bool {
        self.fmp4
    }

    /// fMP4: the RFC 6381 codec string the first input's sample entry gives (H.264/H.265, with
    /// the SPS's constraint flags, which caps do not carry), once its track is known.
    pub fn entry_codecs(&self) -> Option<String> {
        self.inputs
            .iter()
            .find_map(|i| i.track.as_ref().and_then(|t| t.codecs()))
    }

    /// New caps on an input: an error when the built-in muxer cannot take them.
    pub fn set_caps(&mut self, name: &str, caps: &gst::CapsRef) -> Result<(), String> {
        if self.fmp4 {
            let codec = fmp4_codec_for_caps(caps).ok_or_else(|| {
                format!(
                    "segment-format=fmp4 takes H.264 and H.265 (byte-stream, au), AV1 (obu-stream, \
                     tu), AAC and Opus, not {caps}"
                )
            })?;
            if let Some(i) = self.input(name) {
                // A video track is made again from the parameter sets, with the new size.
                let track = match &codec {
                    Fmp4Codec::Nal {
                        codec,
                        width,
                        height,
                    } => nal_entry(*codec, *width, *height, &i.sets).map(Track::new),
                    Fmp4Codec::Av1 { width, height } => i
                        .sets
                        .sps
                        .first()
                        .and_then(|seq| fcodec::av1c(seq))
                        .map(|av1c| {
                            Track::new(SampleEntry::Av1 {
                                width: *width,
                                height: *height,
                                av1c,
                            })
                        }),
                    _ => None,
                };
                i.set_track(track);
                i.fmp4 = Some(codec);
                i.eos = false;
            }
            return Ok(());
        }
        let codec = codec_for_caps(caps).ok_or_else(|| {
            // AV1: fMP4 takes it, mpegtsmux does not.
            if caps.structure(0).is_some_and(|s| s.name() == "video/x-av1") {
                format!("MPEG-TS segments cannot carry {caps}: set segment-format=fmp4")
            } else {
                format!("the built-in muxer cannot take {caps}: set muxer=mpegtsmux")
            }
        })?;
        if let Some(i) = self.input(name) {
            i.codec = Some(codec);
            i.eos = false;
        }
        Ok(())
    }

    pub fn push(&mut self, name: &str, buffer: gst::Buffer, pts: Option<i64>, dts: Option<i64>) {
        self.started = true;
        if let Some(i) = self.input(name) {
            i.eos = false;
            i.queue.push_back(Queued { buffer, pts, dts });
        }
    }

    pub fn eos(&mut self, name: &str) {
        if let Some(i) = self.input(name) {
            i.eos = true;
        }
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether every input has ended.
    pub fn all_eos(&self) -> bool {
        self.inputs.iter().all(|i| i.eos)
    }

    pub fn flush(&mut self, name: &str) {
        if let Some(i) = self.input(name) {
            i.queue.clear();
            i.eos = false;
        }
    }

    /// Clears everything (stop).
    pub fn reset(&mut self) {
        for i in &mut self.inputs {
            i.queue.clear();
            i.eos = false;
            i.codec = None;
            i.fmp4 = None;
            i.track = None;
            i.track_sent = false;
            i.dropped = 0;
            i.sets = ParameterSets::default();
        }
        self.muxer = None;
    }

    /// The next frame to mux: the earliest queued one once every live input has one queued (or
    /// `all` is set, or an input ran too far ahead).
    fn next(&self, all: bool) -> Option<usize> {
        let waiting = self.inputs.iter().any(|i| !i.eos && i.queue.is_empty());
        let lead = self.inputs.iter().any(|i| i.span() > MAX_LEAD_NS);
        if waiting && !all && !lead {
            return None;
        }
        self.inputs
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.queue.is_empty())
            .min_by_key(|(_, i)| i.head_dts().unwrap_or(i64::MIN))
            .map(|(n, _)| n)
    }

    /// Muxes what is ready into the writer; `all` muxes everything queued (end of stream).
    /// Returns the segments finished.
    pub fn drain(
        &mut self,
        writer: &mut Writer,
        all: bool,
    ) -> Result<Vec<Published>, super::imp::SinkError> {
        if self.fmp4 {
            return self.drain_fmp4(writer, all);
        }
        let mut published = Vec::new();
        while let Some(n) = self.next(all) {
            let codecs: Option<Vec<Codec>> = self.inputs.iter().map(|i| i.codec.clone()).collect();
            let Some(codecs) = codecs else {
                // An input without caps yet: mux what has caps only once it ends.
                if !all {
                    break;
                }
                self.inputs[n].queue.pop_front();
                continue;
            };
            if self.muxer.as_ref().is_none_or(|(c, _)| *c != codecs) {
                let muxer = TsMuxer::new(&codecs, TsMuxerConfig::default())
                    .ok_or(super::imp::SinkError::NoStreams)?;
                self.muxer = Some((codecs, muxer));
            }
            let input = &mut self.inputs[n];
            let video = input.video;
            let q = input.queue.pop_front().expect("queued");
            let keyframe = video && !q.buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
            let map = q
                .buffer
                .map_readable()
                .map_err(|_| super::imp::SinkError::Unmappable)?;
            self.out.clear();
            let (_, muxer) = self.muxer.as_mut().expect("made above");
            muxer.write_frame(
                n,
                &Frame {
                    data: &map,
                    pts_ns: q.pts,
                    dts_ns: q.dts,
                    keyframe,
                },
                &mut self.out,
            );
            let stamp = q.dts.or(q.pts).map(|t| t.max(0) as u64);
            if let Some(p) = writer.push(&self.out, stamp, keyframe)? {
                published.push(p);
            }
        }
        Ok(published)
    }

    /// [`Builtin::drain`] for the fMP4 writer.
    fn drain_fmp4(
        &mut self,
        writer: &mut Writer,
        all: bool,
    ) -> Result<Vec<Published>, super::imp::SinkError> {
        let mut published = Vec::new();
        loop {
            for i in &mut self.inputs {
                i.prime();
            }
            let Some(n) = self.next(all) else { break };
            if self
                .inputs
                .iter()
                .any(|i| i.fmp4.is_none() || i.awaits_first_frame())
                && !all
            {
                // An input without caps yet, or without its first frame (whose track the init
                // segment needs): mux the others only once it ends.
                break;
            }
            let input = &mut self.inputs[n];
            let q = input.queue.pop_front().expect("queued");
            let Some(codec) = input.fmp4.clone() else {
                continue;
            };
            let map = q
                .buffer
                .map_readable()
                .map_err(|_| super::imp::SinkError::Unmappable)?;
            let pts = q.pts.or(q.dts).unwrap_or(0);
            let dts = q.dts.or(q.pts).unwrap_or(0);
            let duration = q.buffer.duration().map(|d| d.nseconds());
            let sync = !input.video || !q.buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
            // (data, pts, dts, duration) of each sample the frame makes.
            let mut samples: Vec<(Vec<u8>, i64, i64, Option<u64>)> = Vec::with_capacity(1);
            match &codec {
                Fmp4Codec::Nal {
                    codec,
                    width,
                    height,
                } => {
                    let (data, sets) = fcodec::annexb_to_sample(&map, *codec);
                    if sets.complete(*codec) && sets != input.sets {
                        if let Some(entry) = nal_entry(*codec, *width, *height, &sets) {
                            if input.track.as_ref().is_some_and(|t| t.entry != entry) {
                                log::debug!("{}: new parameter sets: new init segment", input.name);
                            }
                            input.set_track(Some(Track::new(entry)));
                        }
                        input.sets = sets;
                    }
                    samples.push((data, pts, dts, duration));
                }
                Fmp4Codec::Av1 { width, height } => {
                    if let Some(seq) = fcodec::av1_sequence_header(&map)
                        && input.sets.sps.first().is_none_or(|s| s.as_slice() != seq)
                        && let Some(av1c) = fcodec::av1c(seq)
                    {
                        input.sets.sps = vec![seq.to_vec()];
                        input.set_track(Some(Track::new(SampleEntry::Av1 {
                            width: *width,
                            height: *height,
                            av1c,
                        })));
                    }
                    match fcodec::av1_sample(&map) {
                        Some(data) => samples.push((data, pts, dts, duration)),
                        None => log::debug!(
                            "{}: temporal unit with an OBU without size field dropped",
                            input.name
                        ),
                    }
                }
                Fmp4Codec::Adts { .. } => {
                    let (frames, _) = fcodec::adts_frames(&map);
                    let rate = match input.track.as_ref().map(|t| &t.entry) {
                        Some(SampleEntry::Aac { rate, .. }) => i64::from(*rate).max(1),
                        _ => 48000,
                    };
                    let frame_ns = 1024 * 1_000_000_000 / rate;
                    let count = i64::try_from(frames.len()).unwrap_or(1).max(1);
                    for (k, f) in (0i64..).zip(frames) {
                        let at = k.saturating_mul(frame_ns);
                        samples.push((
                            f.to_vec(),
                            pts.saturating_add(at),
                            dts.saturating_add(at),
                            duration.map(|d| d / count as u64),
                        ));
                    }
                }
                Fmp4Codec::Ready(_) => samples.push((map.to_vec(), pts, dts, duration)),
            }
            drop(map);
            if input.track.is_none() {
                continue;
            }
            let index = self.inputs[..n]
                .iter()
                .filter(|i| i.track.is_some())
                .count();
            // The track list goes to the writer when a track changed (a new init segment then).
            if self.inputs.iter().any(|i| !i.track_sent) {
                let tracks: Vec<Track> =
                    self.inputs.iter().filter_map(|i| i.track.clone()).collect();
                for i in &mut self.inputs {
                    i.track_sent = true;
                }
                if let Some(p) = writer.set_tracks(tracks)? {
                    published.push(p);
                }
            }
            for (data, pts_ns, dts_ns, duration_ns) in samples {
                if let Some(p) = writer.push_sample(
                    index,
                    Sample {
                        data,
                        pts_ns,
                        dts_ns,
                        duration_ns,
                        sync,
                    },
                )? {
                    published.push(p);
                }
            }
        }
        Ok(published)
    }
}
