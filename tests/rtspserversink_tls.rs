//! rtspserversink serving RTSPS (`tls-certificate-file`/`tls-key-file`, `tls-certificate`) to real
//! clients we did not write: the stock C `rtspsrc` (`rtsps://`, `tls-validation-flags=0`,
//! `protocols=tcp`) and ffprobe; our rtspsrc2 checking the certificate; a hand-written rustls
//! client for the URLs the server answers with and for a client that stops reading; a plain RTSP
//! client on the TLS port fails while a TLS client keeps playing; credentials inside TLS.
//! Certificates are generated with rcgen for 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gio::prelude::TlsCertificateExt;
use gst::prelude::*;

use common::*;
use gstlivestreaming::net::tls::{TlsValidation, client_config};
use rustls::pki_types::pem::PemObject;

/// A certificate whose P-256 private key starts with its top bit set: GnuTLS writes such a key
/// with an extra zero byte (see a_gtlscertificate_object_serves_rtsps). rcgen's (ring's) PKCS #8
/// has the 32 bytes of the private key at offset 36.
fn gnutls_certs(tag: &str) -> Certs {
    Certs::new_where(tag, |der| der[36] & 0x80 != 0)
}

fn rtsps_url(server: &ServerPipeline) -> String {
    format!("rtsps://127.0.0.1:{}/", server.port)
}

/// The `packets-sent` of the server's playing TCP client, once there is one (bounded wait).
fn tcp_client_packets(server: &ServerPipeline) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = server.stats();
        let clients = stats.get::<gst::Array>("clients").unwrap();
        let sent = clients.iter().find_map(|c| {
            let c = c.get::<gst::Structure>().unwrap();
            (c.get::<&str>("transport") == Ok("tcp") && c.get::<bool>("playing") == Ok(true))
                .then(|| c.get::<u64>("packets-sent").unwrap())
                .filter(|sent| *sent > 0)
        });
        if let Some(sent) = sent {
            return sent;
        }
        assert!(
            Instant::now() < deadline,
            "no playing TCP client in {stats}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn stock_rtspsrc_plays_rtsps_over_tcp() {
    let certs = gnutls_certs("rtspsrc");
    let server = ServerPipeline::start(&certs.props(), &av_source(false));
    let frames = rtspsrc_decode(&rtsps_url(&server), "tcp", 30, "tls-validation-flags=0");
    assert_eq!(frames, 30);
    assert!(server.errors().is_empty(), "{:?}", server.errors());
}

#[test]
fn ffprobe_plays_rtsps() {
    let certs = gnutls_certs("ffprobe");
    let server = ServerPipeline::start(&certs.props(), &av_source(true));
    let out = ffprobe(&rtsps_url(&server), "tcp", "stream=codec_name,width,height");
    assert!(out.contains("h264,320,240"), "streams: {out}");
    assert!(out.contains("opus"), "streams: {out}");
}

#[test]
fn a_gtlscertificate_object_serves_rtsps() {
    let certs = gnutls_certs("object");
    init();
    let cert = gio::TlsCertificate::from_files(&certs.cert, &certs.key).unwrap();
    // GnuTLS gives the key back with a leading zero the server must take.
    let key = cert.private_key_pem().unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    assert_eq!(
        key.secret_der()[34..37],
        [0x04, 0x21, 0x00],
        "GnuTLS's form"
    );
    let pipeline = gst::parse::launch(&format!(
        "rtspserversink name=sink address=127.0.0.1 port=0 {}",
        av_source(false)
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    assert_ours(&sink);
    sink.set_property("tls-certificate", &cert);
    // Read back: the same certificate.
    let read = sink.property::<gio::TlsCertificate>("tls-certificate");
    assert!(read.is_same(&cert));
    let started = pipeline.set_state(gst::State::Playing);
    let server = ServerPipeline {
        port: sink.property::<i32>("bound-port") as u16,
        pipeline,
        sink,
    };
    assert!(started.is_ok(), "{:?}", server.errors());
    let out = ffprobe(&rtsps_url(&server), "tcp", "stream=codec_name");
    assert!(out.contains("h264"), "streams: {out}");
}

/// Reads one RTSP response (head and body) from `r`.
fn read_response(r: &mut impl BufRead) -> String {
    let mut head = String::new();
    loop {
        let n = r.read_line(&mut head).expect("response");
        assert!(n > 0, "connection closed after {head:?}");
        if head.ends_with("\r\n\r\n") {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

fn header<'a>(response: &'a str, name: &str) -> &'a str {
    response
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {response}"))
        .trim()
}

type TlsClient = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// A TLS client on `tcp` that accepts the tests' self-signed certificates.
fn tls_client(tcp: TcpStream) -> TlsClient {
    let relaxed = TlsValidation {
        unknown_ca: false,
        ..TlsValidation::ALL
    };
    let config = client_config(Arc::new(rustls::RootCertStore::empty()), relaxed).unwrap();
    let name = "127.0.0.1".try_into().unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(rustls::StreamOwned::new(conn, tcp))
}

/// DESCRIBE, SETUP of stream 0 over TCP and PLAY with `rtsp://` URLs (as stock rtspsrc writes
/// them on its TLS connections); the three answers, each checked for 200.
fn play_writing_rtsp_urls(tls: &mut TlsClient, port: u16) -> [String; 3] {
    let plain = format!("rtsp://127.0.0.1:{port}/");
    let mut request = |text: String| {
        tls.get_mut().write_all(text.as_bytes()).unwrap();
        let answer = read_response(tls);
        assert!(answer.starts_with("RTSP/1.0 200"), "{text}: {answer}");
        answer
    };
    let describe = request(format!("DESCRIBE {plain} RTSP/1.0\r\nCSeq: 1\r\n\r\n"));
    let setup = request(format!(
        "SETUP {plain}stream=0 RTSP/1.0\r\nCSeq: 2\r\n\
         Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    ));
    let session = header(&setup, "Session").split(';').next().unwrap();
    let play = request(format!(
        "PLAY {plain} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n"
    ));
    [describe, setup, play]
}

/// A client that writes `rtsp://` URLs on its TLS connection is answered with `rtsps://` in
/// Content-Base and RTP-Info, and its interleaved media arrives inside TLS.
#[test]
fn content_base_and_rtp_info_say_rtsps() {
    let certs = gnutls_certs("urls");
    let server = ServerPipeline::start(&certs.props(), &av_source(false));
    let mut tls = tls_client(TcpStream::connect(("127.0.0.1", server.port)).unwrap());
    let [describe, _, play] = play_writing_rtsp_urls(&mut tls, server.port);
    assert_eq!(header(&describe, "Content-Base"), rtsps_url(&server));
    let rtp_info = header(&play, "RTP-Info");
    assert!(
        rtp_info.starts_with(&format!("url={}stream=0;", rtsps_url(&server))),
        "{rtp_info}"
    );
    // The first interleaved RTP packet, on channel 0.
    let mut frame = [0u8; 4];
    tls.read_exact(&mut frame).unwrap();
    assert_eq!(frame[..2], [b'$', 0]);
    let mut rtp = vec![0; usize::from(u16::from_be_bytes([frame[2], frame[3]]))];
    tls.read_exact(&mut rtp).unwrap();
    assert_eq!(rtp[0] >> 6, 2, "RTP version 2");
}

/// A TLS client that stops reading is dropped frames, then disconnected after
/// `client-stall-timeout`, while another TLS client plays on: the writer's stall detection works
/// through rustls's buffer.
#[test]
fn a_stalled_tls_client_is_disconnected_and_does_not_stop_the_others() {
    let certs = gnutls_certs("stall");
    // Large frames (noise) so that the stalled client's buffers fill quickly.
    let server = ServerPipeline::start(
        &format!(
            "{} client-queue-size=262144 client-stall-timeout=2000",
            certs.props()
        ),
        NOISE_VIDEO,
    );
    let mut stalled = tls_client(connect_small_buffer(server.port));
    play_writing_rtsp_urls(&mut stalled, server.port);

    let frames = rtspsrc_decode(&rtsps_url(&server), "tcp", 90, "tls-validation-flags=0");
    assert_eq!(frames, 90);

    server.wait_slow_client_dropped(Duration::from_secs(30));
    drop(stalled);
}

/// Plays `url` with stock rtspsrc until killed.
fn endless_rtspsrc(url: &str) -> ChildGuard {
    ChildGuard::spawn(
        Command::new("gst-launch-1.0").args(
            format!(
                "rtspsrc location={url} protocols=tcp tls-validation-flags=0 latency=200 \
             ! rtph264depay ! h264parse ! avdec_h264 ! fakesink"
            )
            .split_whitespace(),
        ),
    )
}

#[test]
fn a_plain_client_on_the_tls_port_fails_cleanly_and_a_tls_client_keeps_playing() {
    let certs = gnutls_certs("plain");
    let server = ServerPipeline::start(&certs.props(), &av_source(false));
    let mut player = endless_rtspsrc(&rtsps_url(&server));
    let before = tcp_client_packets(&server);

    // A plain RTSP request gets no RTSP answer: at most a TLS alert, then the end.
    let mut raw = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"OPTIONS rtsp://127.0.0.1/ RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    // Ok: the server closed the connection; a reset is as clean. A timeout is not.
    if let Err(e) = raw.read_to_end(&mut answer) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(
        !String::from_utf8_lossy(&answer).contains("RTSP/1.0"),
        "{answer:?}"
    );

    // Stock clients report an error and exit.
    let plain = server.url("/");
    let (out, timed_out) = run(
        Command::new("gst-launch-1.0")
            .args(format!("rtspsrc location={plain} protocols=tcp ! fakesink").split_whitespace()),
        Duration::from_secs(30),
    );
    assert!(
        !timed_out,
        "rtspsrc rtsp:// on the TLS port did not give up"
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, timed_out) = run(
        Command::new("ffprobe").args(["-v", "error", "-rtsp_transport", "tcp", &plain]),
        Duration::from_secs(30),
    );
    assert!(
        !timed_out,
        "ffprobe rtsp:// on the TLS port did not give up"
    );
    assert!(!out.status.success());

    // The TLS client was served throughout and still is.
    let after = tcp_client_packets(&server);
    std::thread::sleep(Duration::from_millis(500));
    let later = tcp_client_packets(&server);
    assert!(before < after && after < later, "{before} {after} {later}");
    assert!(
        player.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the TLS client stopped"
    );
    assert!(server.errors().is_empty(), "{:?}", server.errors());
}

/// Starts an rtspserversink with `props` (and `tls-certificate` set to `object`) and returns the
/// error its start posts.
fn start_error(props: &str, object: Option<&gio::TlsCertificate>) -> String {
    init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! x264enc ! rtspserversink name=sink address=127.0.0.1 \
         port=0 {props}"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    assert_ours(&sink);
    sink.set_property("tls-certificate", object);
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("error message");
    let _ = pipeline.set_state(gst::State::Null);
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    err.error().to_string()
}

#[test]
fn unusable_certificate_settings_fail_the_start_naming_the_file() {
    let certs = gnutls_certs("errors");
    let other = gnutls_certs("errors-other");
    let missing = certs.dir.join("missing.pem");
    let text = start_error(
        &format!(
            "tls-certificate-file={} tls-key-file={}",
            certs.cert.display(),
            missing.display()
        ),
        None,
    );
    assert!(text.contains(&missing.display().to_string()), "{text}");
    // The certificate file given as the key: no key in it.
    let text = start_error(
        &format!(
            "tls-certificate-file={} tls-key-file={}",
            certs.cert.display(),
            certs.cert.display()
        ),
        None,
    );
    assert!(
        text.contains("no private key") && text.contains(&certs.cert.display().to_string()),
        "{text}"
    );
    // Another certificate's key.
    let text = start_error(
        &format!(
            "tls-certificate-file={} tls-key-file={}",
            certs.cert.display(),
            other.key.display()
        ),
        None,
    );
    assert!(text.contains(&other.key.display().to_string()), "{text}");
    let text = start_error(&format!("tls-key-file={}", certs.key.display()), None);
    assert!(text.contains("without tls-certificate-file"), "{text}");

    // A GTlsCertificate without its private key.
    let pem = std::fs::read_to_string(&certs.cert).unwrap();
    let keyless = gio::TlsCertificate::from_pem(&pem).unwrap();
    let text = start_error("", Some(&keyless));
    assert!(
        text.contains("no private key") && text.contains("private-key-pem"),
        "{text}"
    );
    // Both ways at once.
    let whole = gio::TlsCertificate::from_files(&certs.cert, &certs.key).unwrap();
    let text = start_error(&certs.props(), Some(&whole));
    assert!(text.contains("not both"), "{text}");
}

/// Our rtspsrc2 plays `rtsps://` from rtspserversink with the certificate fully checked against
/// its CA file (the self-signed certificate for 127.0.0.1), and refuses it without that file.
#[test]
fn rtspsrc2_plays_rtsps_checking_the_certificate() {
    let certs = gnutls_certs("rtspsrc2");
    let server = ServerPipeline::start(&certs.props(), &av_source(false));
    let location = rtsps_url(&server);
    for protocols in ["tcp", "udp"] {
        let checked = common::stock::decode(&format!(
            "location={location} protocols={protocols} tls-ca-file={}",
            certs.cert.display()
        ));
        assert_eq!(checked, Ok(()), "{protocols}");
    }
    let unchecked = common::stock::decode(&format!("location={location}"));
    let err = unchecked.expect_err("a self-signed certificate without its CA file");
    assert!(err.contains("unknown issuer"), "{err}");
}

/// Credentials over RTSPS: Basic (the scheme TLS makes safe) and Digest both play, a missing
/// password gets 401.
#[test]
fn credentials_are_checked_inside_tls() {
    let certs = gnutls_certs("auth");
    let server = ServerPipeline::start(
        &format!(r#"{} users=<"alice:S3cr3t">"#, certs.props()),
        &av_source(false),
    );
    // Inside TLS, Basic is offered by default, after Digest.
    let mut tls = tls_client(TcpStream::connect(("127.0.0.1", server.port)).unwrap());
    let url = rtsps_url(&server);
    tls.get_mut()
        .write_all(format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").as_bytes())
        .unwrap();
    let answer = read_response(&mut tls);
    let challenges: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.strip_prefix("WWW-Authenticate:"))
        .map(str::trim)
        .collect();
    assert!(answer.starts_with("RTSP/1.0 401"), "{answer}");
    assert_eq!(challenges.len(), 3, "{answer}");
    assert!(challenges[2].starts_with("Basic "), "{answer}");
    let with_password = format!("rtsps://alice:S3cr3t@127.0.0.1:{}/", server.port);
    let out = ffprobe(&with_password, "tcp", "stream=codec_name");
    assert!(out.contains("h264"), "streams: {out}");
    let played = common::stock::decode(&format!(
        "location={} protocols=tcp tls-ca-file={} user-id=alice user-pw=S3cr3t",
        rtsps_url(&server),
        certs.cert.display()
    ));
    assert_eq!(played, Ok(()));
    let (out, timed_out) = run(
        Command::new("ffprobe").args(["-v", "error", &rtsps_url(&server)]),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!timed_out && !out.status.success(), "{err}");
    assert!(err.contains("401 Unauthorized"), "{err}");
}
