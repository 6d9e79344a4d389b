//! Element side of RTP payloading, shared by the elements that take media and send RTP
//! (rtspserversink, rtspclientsink2): the stock payloader for an input format, the request-pad
//! chain behind it ([`PayloadChain`]: ghost pad, payloader, appsink), the SDP media description
//! of the payloader's output caps, and the packets of an appsink sample. For rtspclientsink2,
//! [`native_payloader`] picks the Rust payloader ([`crate::rtp::payload`]) of H.264, H.265 and Opus
//! instead: the chain is then ghost pad → appsink, and the element payloads each sample itself.

use std::str::FromStr;

use bytes::Bytes;
use gst::prelude::*;

use crate::rtp::payload;
use crate::rtsp::sdp::MediaDescription;

/// The `sink_%u` request pad template: the formats [`payloader_for`] payloads, and RTP as it is.
pub fn sink_pad_template() -> gst::PadTemplate {
    let caps = gst::Caps::from_str(
        "video/x-h264, stream-format=(string){ avc, byte-stream }; \
         video/x-h265, stream-format=(string){ hvc1, hev1, byte-stream }; \
         video/x-vp8; video/x-vp9; audio/x-opus; \
         audio/mpeg, mpegversion=(int)4, stream-format=(string)raw; \
         audio/mpeg, mpegversion=(int)1, layer=(int)[1, 3]; \
         audio/x-mulaw, rate=(int)8000, channels=(int)1; \
         audio/x-alaw, rate=(int)8000, channels=(int)1; \
         application/x-rtp",
    )
    .expect("valid caps");
    gst::PadTemplate::new(
        "sink_%u",
        gst::PadDirection::Sink,
        gst::PadPresence::Request,
        &caps,
    )
    .expect("valid template")
}

/// Payloader element and its properties for an input format.
pub fn payloader_for(
    caps: &gst::CapsRef,
    pt: u32,
    mtu: u32,
) -> Result<Option<gst::Element>, String> {
    let s = caps.structure(0).ok_or_else(|| "empty caps".to_string())?;
    let (factory, dynamic) = match s.name().as_str() {
        "application/x-rtp" => return Ok(None),
        "video/x-h264" => ("rtph264pay", true),
        "video/x-h265" => ("rtph265pay", true),
        "video/x-vp8" => ("rtpvp8pay", true),
        "video/x-vp9" => ("rtpvp9pay", true),
        "audio/x-opus" => ("rtpopuspay", true),
        "audio/mpeg" => match s.get::<i32>("mpegversion") {
            Ok(4) | Ok(2) => ("rtpmp4gpay", true),
            // MPEG audio has the static payload type 14 (RFC 3551).
            Ok(1) => ("rtpmpapay", false),
            _ => return Err(format!("unsupported audio/mpeg caps {caps}")),
        },
        "audio/x-mulaw" => ("rtppcmupay", false),
        "audio/x-alaw" => ("rtppcmapay", false),
        other => return Err(format!("no RTP payloader for '{other}'")),
    };
    let mut builder = gst::ElementFactory::make(factory).property("mtu", mtu);
    if dynamic {
        builder = builder.property("pt", pt);
    }
    if matches!(factory, "rtph264pay" | "rtph265pay") {
        // Parameter sets before every IDR: clients that join mid-stream decode at once.
        builder = builder
            .property("config-interval", -1i32)
            .property_from_str("aggregate-mode", "zero-latency");
    }
    builder
        .build()
        .map(Some)
        .map_err(|_| format!("element '{factory}' is missing (install gst-plugins-good)"))
}

/// The dynamic payload type of request pad `id` (96-127).
pub fn payload_type(id: usize) -> u8 {
    96 + (id % 32) as u8
}

/// The Rust payloader for an input format, where there is one: H.264 and H.265 in access
/// units (`avc`/`hvc1`/`hev1` with their codec_data, or `byte-stream`), Opus with at most two channels in channel
/// mapping family 0. `rtp` carries on an earlier payloader's SSRC, sequence numbers and
/// timestamp offset (a caps change); `None` makes new ones. `None`: the stock payloader.
pub fn native_payloader(
    caps: &gst::CapsRef,
    pt: u8,
    mtu: u32,
    rtp: Option<payload::RtpState>,
) -> Option<payload::Payloader> {
    let s = caps.structure(0)?;
    let mtu = usize::try_from(mtu).ok()?;
    match s.name().as_str() {
        "video/x-h264" => {
            let rtp = rtp.unwrap_or_else(|| payload::RtpState::new(pt, payload::H264_CLOCK_RATE));
            let alignment = s.get::<&str>("alignment").ok();
            match s.get::<&str>("stream-format").ok()? {
                "avc" if matches!(alignment, None | Some("au")) => {
                    let codec_data = s.get::<gst::Buffer>("codec_data").ok()?;
                    let map = codec_data.map_readable().ok()?;
                    payload::H264Payloader::with_avcc(rtp, mtu, &map)
                        .ok()
                        .map(payload::Payloader::H264)
                }
                "byte-stream" if alignment == Some("au") => Some(payload::Payloader::H264(
                    payload::H264Payloader::new(rtp, mtu, payload::H264Framing::ByteStream),
                )),
                _ => None,
            }
        }
        "video/x-h265" => {
            let rtp = rtp.unwrap_or_else(|| payload::RtpState::new(pt, payload::H264_CLOCK_RATE));
            let alignment = s.get::<&str>("alignment").ok();
            match s.get::<&str>("stream-format").ok()? {
                "hvc1" | "hev1" if matches!(alignment, None | Some("au")) => {
                    let codec_data = s.get::<gst::Buffer>("codec_data").ok()?;
                    let map = codec_data.map_readable().ok()?;
                    payload::H265Payloader::with_hvcc(rtp, mtu, &map)
                        .ok()
                        .map(payload::Payloader::H265)
                }
                "byte-stream" if alignment == Some("au") => Some(payload::Payloader::H265(
                    payload::H265Payloader::new(rtp, mtu, payload::H264Framing::ByteStream),
                )),
                _ => None,
            }
        }
        "audio/x-opus" => {
            let family = s.get::<i32>("channel-mapping-family").unwrap_or(0);
            let channels = s.get::<i32>("channels").unwrap_or(2);
            let rate = s.get::<i32>("rate").unwrap_or(48_000);
            if family != 0 || !(1..=2).contains(&channels) {
                return None;
            }
            let rtp = rtp.unwrap_or_else(|| payload::RtpState::new(pt, payload::OPUS_CLOCK_RATE));
            Some(payload::Payloader::Opus(payload::OpusPayloader::new(
                rtp,
                channels.unsigned_abs(),
                rate.unsigned_abs(),
            )))
        }
        _ => None,
    }
}

/// Payloads every buffer of an appsink sample (one frame each) with `pay`, at the buffer's
/// running time in the sample's segment; each frame's packets go to `frame` (none for a
/// buffer that made none). Returns the media description when it became known or changed.
pub fn payload_sample(
    pay: &mut payload::Payloader,
    sample: &gst::Sample,
    mut frame: impl FnMut(Vec<Bytes>),
) -> Option<MediaDescription> {
    let segment = sample
        .segment()
        .and_then(|s| s.downcast_ref::<gst::ClockTime>());
    let mut one = |buffer: &gst::BufferRef| {
        let Ok(map) = buffer.map_readable() else {
            return;
        };
        let running = segment
            .zip(buffer.pts())
            .and_then(|(seg, pts)| seg.to_running_time(pts))
            .map(gst::ClockTime::nseconds);
        let mut packets = Vec::new();
        pay.payload(&map, running, &mut packets);
        if !packets.is_empty() {
            frame(packets);
        }
    };
    if let Some(list) = sample.buffer_list() {
        for buffer in list.iter() {
            one(buffer);
        }
    } else if let Some(buffer) = sample.buffer() {
        one(buffer);
    }
    pay.take_media_change()
}

/// SDP media description from the caps of an RTP stream (the payloader's output).
pub fn media_description(caps: &gst::CapsRef) -> Option<MediaDescription> {
    let s = caps.structure(0)?;
    if s.name() != "application/x-rtp" {
        return None;
    }
    let media = s.get::<&str>("media").ok()?.to_owned();
    let payload_type = u8::try_from(s.get::<i32>("payload").ok()?).ok()?;
    let clock_rate = u32::try_from(s.get::<i32>("clock-rate").ok()?).ok()?;
    let encoding_name = s
        .get::<&str>("encoding-name")
        .map(str::to_owned)
        .unwrap_or_else(|_| match payload_type {
            0 => "PCMU".into(),
            8 => "PCMA".into(),
            _ => "unknown".into(),
        });
    let encoding_params = s.get::<&str>("encoding-params").ok().map(str::to_owned);
    let mut fmtp = Vec::new();
    let mut attributes = Vec::new();
    for (field, value) in s.iter() {
        let field = field.as_str();
        let text = if let Ok(v) = value.get::<&str>() {
            v.to_owned()
        } else if let Ok(v) = value.get::<i32>() {
            v.to_string()
        } else if let Ok(v) = value.get::<u32>() {
            v.to_string()
        } else {
            continue;
        };
        match field {
            "media" | "payload" | "clock-rate" | "encoding-name" | "encoding-params" | "ssrc"
            | "timestamp-offset" | "seqnum-offset" | "clock-base" | "seqnum-base" => {}
            // Same rule as gst_sdp_media_set_media_from_caps: `a-` fields are attributes.
            f if f.starts_with("a-") => attributes.push((f[2..].to_owned(), Some(text))),
            f if f.starts_with("x-") || f.starts_with("rtcp-fb-") || f.starts_with("extmap-") => {}
            f => fmtp.push((f.to_owned(), text)),
        }
    }
    Some(MediaDescription {
        media,
        payload_type,
        encoding_name,
        clock_rate,
        encoding_params,
        fmtp,
        control: String::new(),
        multicast: None,
        port: 0,
        bandwidth_kbps: None,
        attributes,
    })
}

/// The instant `sample` was due at `sink` (its running time plus the latency, on the pipeline
/// clock), taken back from now by how late it came: where its RTP time lies on the sender's
/// timeline, which Sender Reports must map to wallclock. A frame an encoder delivers late still
/// stands for the instant it was captured at, as rtpbin's reports take it from running time.
/// Now when the sample has no time (no clock yet, no PTS) or the lateness is beyond a minute.
pub fn sample_due(sink: &gst_app::AppSink, sample: &gst::Sample) -> std::time::Instant {
    use gst_base::prelude::BaseSinkExt;
    let now = std::time::Instant::now();
    let lateness_ns = || -> Option<i128> {
        let buffer = match sample.buffer_list() {
            Some(list) => list.get(0)?,
            None => sample.buffer()?,
        };
        let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
        let running = segment.to_running_time(buffer.pts()?)?;
        // gstreamer-app's AppSink wrapper does not name BaseSink as a parent type; it is one.
        let latency = sink.dynamic_cast_ref::<gst_base::BaseSink>()?.latency();
        let due = sink.base_time()? + running + latency;
        let clock_now = sink.clock()?.time();
        Some(i128::from(clock_now.nseconds()) - i128::from(due.nseconds()))
    };
    const LIMIT_NS: i128 = 60_000_000_000;
    match lateness_ns() {
        Some(ns) if ns > 0 && ns < LIMIT_NS => now
            .checked_sub(std::time::Duration::from_nanos(ns as u64))
            .unwrap_or(now),
        Some(ns) if ns < 0 && ns > -LIMIT_NS => now + std::time::Duration::from_nanos((-ns) as u64),
        _ => now,
    }
}

/// The RTP packets of an appsink sample (a buffer or a buffer list), without copying.
pub fn sample_packets(sample: &gst::Sample) -> Vec<Bytes> {
    let to_bytes = |buffer: gst::Buffer| -> Option<Bytes> {
        buffer
            .into_mapped_buffer_readable()
            .ok()
            .map(Bytes::from_owner)
    };
    if let Some(list) = sample.buffer_list() {
        (0..list.len())
            .filter_map(|i| list.get_owned(i))
            .filter_map(to_bytes)
            .collect()
    } else if let Some(buffer) = sample.buffer_owned() {
        to_bytes(buffer).into_iter().collect()
    } else {
        Vec::new()
    }
}

/// The internal chain behind one request pad of a sink element: ghost pad → stock payloader
/// (none for `application/x-rtp`) → appsink, the payloader rebuilt on a codec change.
pub struct PayloadChain {
    pub ghost: gst::GhostPad,
    pub appsink: gst_app::AppSink,
    payloader: Option<gst::Element>,
    /// Caps structure name the payloader was made for.
    codec: Option<String>,
}

impl PayloadChain {
    pub fn new(ghost: gst::GhostPad, appsink: gst_app::AppSink) -> Self {
        Self {
            ghost,
            appsink,
            payloader: None,
            codec: None,
        }
    }

    /// The appsink of request pad `id` (`appsink_{id}`), with `callbacks`; `on_rtp_caps` sees
    /// the caps of the RTP stream arriving at it (the payloader's output).
    pub fn appsink(
        id: usize,
        callbacks: gst_app::AppSinkCallbacks,
        on_rtp_caps: impl Fn(&gst::CapsRef) + Send + Sync + 'static,
    ) -> Option<gst_app::AppSink> {
        let appsink = gst_app::AppSink::builder()
            .name(format!("appsink_{id}"))
            .sync(true)
            .buffer_list(true)
            .max_buffers(1)
            .build();
        // What happens after the appsink is payloading and queueing, microseconds: no 20 ms
        // processing deadline (basesink's default) added to the pipeline's latency, and so no
        // second sleep per buffer behind an element that already waited for its running time
        // (a live source's pacing, clocksync).
        appsink.set_property("processing-deadline", 0u64);
        appsink.set_callbacks(callbacks);
        appsink.static_pad("sink")?.add_probe(
            gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data
                    && let gst::EventView::Caps(c) = ev.view()
                {
                    on_rtp_caps(c.caps());
                }
                gst::PadProbeReturn::Ok
            },
        );
        Some(appsink)
    }

    /// Builds (or rebuilds, on a codec change) the payloader in `bin` for the pad's new caps.
    /// `verb` is what the element does with stream `id` ("publish", "stream"): the log says
    /// "{verb}ing CODEC as stream ID".
    pub fn ensure(
        &mut self,
        bin: &gst::Bin,
        caps: &gst::CapsRef,
        id: usize,
        mtu: u32,
        cat: gst::DebugCategory,
        verb: &str,
    ) -> Result<(), String> {
        self.ensure_with(bin, caps, id, mtu, cat, verb, false)
    }

    /// [`PayloadChain::ensure`], with `native`: no stock payloader, the element payloads
    /// what reaches the appsink itself ([`native_payloader`]).
    #[allow(clippy::too_many_arguments)]
    pub fn ensure_with(
        &mut self,
        bin: &gst::Bin,
        caps: &gst::CapsRef,
        id: usize,
        mtu: u32,
        cat: gst::DebugCategory,
        verb: &str,
        native: bool,
    ) -> Result<(), String> {
        let name = caps
            .structure(0)
            .map(|s| s.name().to_string())
            .ok_or("empty caps")?;
        let codec = if native {
            format!("{name} (payloaded in Rust)")
        } else {
            name
        };
        if self.codec.as_deref() == Some(codec.as_str()) {
            return Ok(());
        }
        if let Some(old) = self.payloader.take() {
            let _ = old.set_state(gst::State::Null);
            let _ = bin.remove(&old);
        }
        let pt = u32::from(payload_type(id));
        let payloader = if native {
            None
        } else {
            payloader_for(caps, pt, mtu)?
        };
        let sinkpad = match &payloader {
            Some(p) => {
                bin.add(p).map_err(|e| e.to_string())?;
                p.link(&self.appsink).map_err(|e| e.to_string())?;
                p.sync_state_with_parent().map_err(|e| e.to_string())?;
                p.static_pad("sink").ok_or("payloader has no sink pad")?
            }
            None => self
                .appsink
                .static_pad("sink")
                .ok_or("appsink has no sink pad")?,
        };
        self.ghost
            .set_target(Some(&sinkpad))
            .map_err(|e| e.to_string())?;
        gst::info!(
            cat,
            obj = &self.ghost,
            "{verb}ing {} as stream {}",
            codec,
            id
        );
        self.payloader = payloader;
        self.codec = Some(codec);
        Ok(())
    }

    /// Back to no payloader and no target (READY → NULL): the next caps build it again.
    pub fn reset(&mut self, bin: &gst::Bin) {
        if let Some(p) = self.payloader.take() {
            let _ = p.set_state(gst::State::Null);
            let _ = bin.remove(&p);
        }
        self.codec = None;
        let _ = self.ghost.set_target(None::<&gst::Pad>);
    }

    /// Takes the chain out of `bin` (the pad is released).
    pub fn remove(self, bin: &gst::Bin) {
        for element in self
            .payloader
            .iter()
            .chain(std::iter::once(self.appsink.upcast_ref()))
        {
            let _ = element.set_state(gst::State::Null);
            let _ = bin.remove(element);
        }
        let _ = self.ghost.set_active(false);
        let _ = bin.remove_pad(&self.ghost);
    }
}

/// The id of a newly requested pad `sink_N`: N from the requested name, else the next free one;
/// None when not a number, or taken (`exists`, logged as a warning of `element`).
pub fn request_pad_id(
    element: &gst::Element,
    cat: gst::DebugCategory,
    name: Option<&str>,
    next_pad: &mut usize,
    exists: impl Fn(usize) -> bool,
) -> Option<usize> {
    let id = match name.and_then(|n| n.strip_prefix("sink_")) {
        Some(n) => n.parse::<usize>().ok()?,
        None => *next_pad,
    };
    if exists(id) {
        gst::warning!(cat, obj = element, "pad sink_{} already exists", id);
        return None;
    }
    *next_pad = (*next_pad).max(id.checked_add(1)?);
    Some(id)
}

/// A request pad's event function: caps (re)build its chain through `ensure`; a failure is an
/// element error "Cannot {verb} CAPS on PAD: ..." and the event is refused.
pub fn sink_event(
    element: &gst::Element,
    pad: &gst::GhostPad,
    event: gst::Event,
    verb: &str,
    ensure: impl FnOnce(&gst::Caps) -> Result<(), String>,
) -> bool {
    if let gst::EventView::Caps(c) = event.view()
        && let Err(err) = ensure(&c.caps_owned())
    {
        gst::element_error!(
            element,
            gst::StreamError::Format,
            ("Cannot {} {} on {}: {}", verb, c.caps(), pad.name(), err)
        );
        return false;
    }
    gst::Pad::event_default(pad, Some(element), event)
}
