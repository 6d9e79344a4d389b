//! Helpers for the rshlssink tests: temporary directories, pipelines run to EOS in-process with
//! bounded waits, playlists parsed with m3u8-rs, ffprobe.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gst::prelude::*;

use super::{bus_until_end, launch_ours, run};

pub use super::TempDir;

/// `frames` of 320x240@30 H.264 video (finite, not live), keyframe every `gop` frames.
pub fn video(frames: u32, gop: u32) -> String {
    format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc speed-preset=ultrafast key-int-max={gop} ! h264parse ! h."
    )
}

/// AAC audio covering about `seconds` (44.1 kHz, 1024 samples a buffer).
pub fn audio(seconds: f64) -> String {
    let buffers = (seconds * 44100.0 / 1024.0).ceil() as u32;
    format!(
        "audiotestsrc num-buffers={buffers} samplesperbuffer=1024 ! audio/x-raw,rate=44100 \
         ! voaacenc ! aacparse ! h."
    )
}

/// A pipeline with `rshlssink name=h {props}` and `sources` linking into `h.`.
pub fn pipeline(props: &str, sources: &str) -> (gst::Pipeline, gst::Element) {
    launch_ours(&format!("rshlssink name=h {props} {sources}"), "h")
}

/// Waits for EOS or an error (at most `timeout`), then stops the pipeline.
pub fn run_to_end(pipeline: &gst::Pipeline, timeout: Duration) -> Result<(), String> {
    let bus = pipeline.bus().expect("bus");
    if pipeline.set_state(gst::State::Playing).is_err() {
        let err = first_error(&bus).unwrap_or_else(|| "state change failed".into());
        let _ = pipeline.set_state(gst::State::Null);
        return Err(err);
    }
    let result = match bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(msg) => match msg.view() {
            gst::MessageView::Eos(_) => Ok(()),
            gst::MessageView::Error(e) => Err(format!("{} ({:?})", e.error(), e.debug())),
            _ => unreachable!(),
        },
        None => Err(format!("no EOS within {timeout:?}")),
    };
    pipeline.set_state(gst::State::Null).expect("to NULL");
    result
}

/// [`run_to_end`] that also returns the element messages posted on the way.
pub fn run_collecting(
    pipeline: &gst::Pipeline,
    timeout: Duration,
) -> (Result<(), String>, Vec<gst::Structure>) {
    play(pipeline);
    let (result, messages) = bus_until_end(pipeline, timeout);
    pipeline.set_state(gst::State::Null).expect("to NULL");
    (result, messages)
}

/// Sets `pipeline` PLAYING; a failure panics with the error the element posted.
fn play(pipeline: &gst::Pipeline) {
    if pipeline.set_state(gst::State::Playing).is_err() {
        let err = first_error(&pipeline.bus().expect("bus"));
        let _ = pipeline.set_state(gst::State::Null);
        panic!("PLAYING: {}", err.as_deref().unwrap_or("no error posted"));
    }
}

fn first_error(bus: &gst::Bus) -> Option<String> {
    bus.pop_filtered(&[gst::MessageType::Error])
        .and_then(|m| match m.view() {
            gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
            _ => None,
        })
}

/// Runs `rshlssink {props}` with `sources` to EOS within 60 s and asserts it ended cleanly.
pub fn run_sink(props: &str, sources: &str) {
    let (p, _) = pipeline(props, sources);
    run_to_end(&p, Duration::from_secs(60)).expect("pipeline runs to EOS");
}

pub fn read_playlist(path: &Path) -> m3u8_rs::MediaPlaylist {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    m3u8_rs::parse_media_playlist_res(&bytes).unwrap_or_else(|e| {
        panic!(
            "{} does not parse: {e:?}\n{}",
            path.display(),
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// Polls `cond` every 50 ms for at most `timeout`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// ffprobe's view of an input: (codec_name, codec_type) per stream, and the duration.
#[derive(Debug)]
pub struct Probe {
    pub streams: Vec<(String, String)>,
    pub duration: Option<f64>,
}

/// Runs ffprobe on `input` (file or URL), extra args first. Panics when ffprobe fails.
pub fn ffprobe(input: &str, extra: &[&str]) -> Probe {
    let (out, timed_out) = run(
        Command::new("ffprobe")
            .args(["-v", "error"])
            .args(extra)
            .args([
                "-show_entries",
                "stream=index,codec_name,codec_type:format=duration",
                "-of",
                "flat",
                input,
            ]),
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!timed_out, "ffprobe {input} timed out: {stderr}");
    assert!(out.status.success(), "ffprobe {input} failed: {stderr}");
    let mut streams: Vec<(u32, String, String)> = Vec::new();
    let mut duration = None;
    for line in stdout.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim_matches('"').to_owned();
        if key == "format.duration" {
            duration = value.parse().ok();
            continue;
        }
        // streams.stream.N.field (programs repeat the same streams: skip them)
        let Some(rest) = key.strip_prefix("streams.stream.") else {
            continue;
        };
        let Some((idx, field)) = rest.split_once('.') else {
            continue;
        };
        let idx: u32 = idx.parse().unwrap();
        if !streams.iter().any(|s| s.0 == idx) {
            streams.push((idx, String::new(), String::new()));
        }
        let s = streams.iter_mut().find(|s| s.0 == idx).unwrap();
        match field {
            "codec_name" => s.1 = value,
            "codec_type" => s.2 = value,
            _ => {}
        }
    }
    Probe {
        streams: streams.into_iter().map(|s| (s.1, s.2)).collect(),
        duration,
    }
}

/// Asserts every segment the playlist lists exists beside it and ffprobe reads it on its own.
pub fn assert_segments_readable(dir: &Path, playlist: &m3u8_rs::MediaPlaylist) {
    for s in &playlist.segments {
        let path = dir.join(&s.uri);
        assert!(path.exists(), "{} is listed but missing", s.uri);
        let probe = ffprobe(&path.to_string_lossy(), &[]);
        assert!(
            probe
                .streams
                .iter()
                .any(|(_, t)| t == "video" || t == "audio"),
            "{}: {probe:?}",
            s.uri
        );
    }
}

/// A raw HTTP/1.1 exchange on 127.0.0.1:`port` (`Connection: close`): status, headers, body.
/// Status, lower-cased headers, body.
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

pub fn http_request(port: u16, method: &str, path: &str) -> Response {
    try_http_request(port, method, path).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`http_request`] with extra header lines (`"Name: value"`).
pub fn http_request_with(port: u16, method: &str, path: &str, extra: &[&str]) -> Response {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

/// [`http_request`] that reports I/O errors instead of panicking.
pub fn try_http_request(port: u16, method: &str, path: &str) -> std::io::Result<Response> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://example.test\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(parse_response(&raw))
}

pub fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[end + 4..].to_vec())
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == &name.to_ascii_lowercase())
        .map(|(_, v)| v.as_str())
}

/// The live H.264 source most tests use.
pub const LIVE_VIDEO: &str = "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 \
     ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h.";

/// A live rshlssink pipeline serving its output over HTTP on a free port of 127.0.0.1, with at
/// least two segments published; stopped on drop.
pub struct Served {
    pub pipeline: gst::Pipeline,
    pub port: u16,
    pub dir: TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Starts `sources` into `rshlssink location=<temp dir> target-duration=1 http-port=0 {props}`
/// and waits (20 s at most) until its playlist names two segments.
pub fn serve_live(name: &str, props: &str, sources: &str) -> Served {
    serve_live_waiting_for(name, props, sources, "playlist.m3u8")
}

/// [`serve_live`], waiting for the media playlist `media_playlist` (a rendition's, when
/// playlist.m3u8 is a multivariant playlist) to name two segments.
pub fn serve_live_waiting_for(
    name: &str,
    props: &str,
    sources: &str,
    media_playlist: &str,
) -> Served {
    let dir = TempDir::new(name);
    let (pipeline, sink) = pipeline(
        &format!(
            "location={} target-duration=1 http-port=0 http-address=127.0.0.1 {props}",
            dir.str()
        ),
        sources,
    );
    play(&pipeline);
    let port = sink.property::<i32>("http-bound-port");
    assert!(port > 0, "http-bound-port {port}");
    let path = dir.join(media_playlist);
    assert!(
        wait_for(Duration::from_secs(20), || path.exists()
            && read_playlist(&path).segments.len() >= 2),
        "rshlssink wrote no playlist with two segments within 20 s"
    );
    Served {
        pipeline,
        port: port as u16,
        dir,
    }
}

/// A TCP connection to `port` on 127.0.0.1 from the loopback address `source` (e.g.
/// 127.0.0.2: another client as far as the server can tell), with a 10 s read timeout.
pub fn connect_from(source: [u8; 4], port: u16) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::from((source, 0)).into())?;
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect_timeout(&server.into(), Duration::from_secs(5))?;
    let stream = std::net::TcpStream::from(socket);
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// Reads one response to a `method` request from a kept-alive connection (its body by its
/// Content-Length; none for HEAD).
pub fn read_response(s: &mut std::net::TcpStream, method: &str) -> Response {
    use std::io::Read;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response head");
        raw.push(byte[0]);
    }
    let (status, headers, _) = parse_response(&raw);
    let len: usize = header(&headers, "content-length")
        .expect("Content-Length")
        .parse()
        .unwrap();
    let mut body = vec![0u8; if method == "HEAD" { 0 } else { len }];
    s.read_exact(&mut body).expect("response body");
    (status, headers, body)
}
