//! Element side of RTP payloading, shared by the elements that take media and send RTP
//! (rtspserversink, rtspclientsink2): the stock payloader for an input format, the SDP media
//! description of the payloader's output caps, and the packets of an appsink sample.

use bytes::Bytes;

use crate::rtsp::sdp::MediaDescription;

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
