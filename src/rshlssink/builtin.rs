//! The built-in muxer path: each input pad ends in its own [`super::output::OutputSink`], whose
//! buffers come here. Frames are queued per input and handed to [`crate::hls::ts::TsMuxer`] in
//! decode-time order (as mpegtsmux interleaves them), and the packets of each frame go to the
//! writer as one chunk stamped with the frame's decode running time, flagged when it starts a
//! video keyframe: what the segmenter got from mpegtsmux.

use std::collections::VecDeque;

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
}

impl Input {
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
}

impl Builtin {
    pub fn add_input(&mut self, name: &str, video: bool) {
        self.inputs.push(Input {
            name: name.into(),
            video,
            codec: None,
            queue: VecDeque::new(),
            eos: false,
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

    /// New caps on an input: an error when the built-in muxer cannot take them.
    pub fn set_caps(&mut self, name: &str, caps: &gst::CapsRef) -> Result<(), String> {
        let codec = codec_for_caps(caps)
            .ok_or_else(|| format!("the built-in muxer cannot take {caps}: set muxer=mpegtsmux"))?;
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
}
