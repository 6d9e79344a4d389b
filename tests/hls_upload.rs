//! Upload to nginx WebDAV (PUT/DELETE) as the origin, retries while the origin is down, and
//! hlssink2's stream signals for applications that store the files themselves.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::hls::*;
use common::origin::{Nginx, files_in};
use common::rtmp::free_port;
use gst::prelude::*;

const PROPS: &str = "target-duration=1 playlist-length=3 max-files=4";

#[test]
fn nginx_origin_holds_what_a_local_run_writes() {
    let nginx = Nginx::start();
    run_sink(
        &format!("location=http://127.0.0.1:{}/live {PROPS}", nginx.port),
        &video(300, 30),
    );
    let local = TempDir::new("local");
    run_sink(
        &format!("location={} {PROPS}", local.str()),
        &video(300, 30),
    );

    let remote = nginx.www("live");
    assert_eq!(files_in(&remote), local.files());
    assert_eq!(
        local.files(),
        [
            "playlist.m3u8",
            "segment00006.ts",
            "segment00007.ts",
            "segment00008.ts",
            "segment00009.ts"
        ]
    );
    assert_eq!(
        std::fs::read(remote.join("playlist.m3u8")).unwrap(),
        std::fs::read(local.join("playlist.m3u8")).unwrap()
    );
    let playlist = read_playlist(&remote.join("playlist.m3u8"));
    assert!(playlist.end_list);
    assert_eq!(playlist.media_sequence, 7);
    for name in local.files() {
        let r = std::fs::read(remote.join(&name)).unwrap();
        let l = std::fs::read(local.join(&name)).unwrap();
        assert_eq!(r.len(), l.len(), "{name}");
    }
    assert_segments_readable(&remote, &playlist);
    // Expired segments were deleted on the origin with DELETE.
    let log = nginx.access_log();
    // Every request went over one kept-alive connection (nginx numbers its connections).
    let requests: Vec<&str> = log.lines().filter(|l| l.contains("/live/")).collect();
    let mut connections: Vec<&str> = requests
        .iter()
        .filter_map(|l| l.rsplit("connection=").next())
        .collect();
    connections.sort();
    connections.dedup();
    assert!(requests.len() >= 20, "{log}");
    assert_eq!(connections.len(), 1, "{log}");
    for i in 0..6 {
        assert!(
            log.contains(&format!("\"DELETE /live/segment{i:05}.ts HTTP/1.1\" 204")),
            "segment {i} not deleted: {log}"
        );
    }
    // And the origin serves it to players.
    let probe = ffprobe(
        &format!("http://127.0.0.1:{}/live/playlist.m3u8", nginx.port),
        &[],
    );
    assert_eq!(probe.streams, [("h264".to_string(), "video".to_string())]);
}

#[test]
fn uploads_are_retried_until_the_origin_comes_up() {
    let port = free_port();
    let dir = Nginx::configure(port);
    let (pipeline, _) = pipeline(
        &format!("location=http://127.0.0.1:{port}/late target-duration=1 playlist-type=vod"),
        &video(60, 30),
    );
    // The origin starts a moment after the stream: the first uploads fail and are retried.
    let starter = std::thread::spawn(move || {
        // (The element retries for about 3 s: 0.2 + 0.4 + 0.8 + 1.6 s of backoff.)
        std::thread::sleep(Duration::from_millis(500));
        Nginx::start_in(dir, port)
    });
    run_to_end(&pipeline, Duration::from_secs(60)).expect("EOS");
    let nginx = starter.join().unwrap();
    let remote = nginx.www("late");
    assert_eq!(
        files_in(&remote),
        ["playlist.m3u8", "segment00000.ts", "segment00001.ts"]
    );
    let playlist = read_playlist(&remote.join("playlist.m3u8"));
    assert!(playlist.end_list);
    assert_eq!(playlist.segments.len(), 2);
}

#[test]
fn an_origin_that_refuses_uploads_is_an_error() {
    let nginx = Nginx::start();
    // No WebDAV there: nginx answers PUT with 405, which no retry will change.
    let (pipeline, _) = pipeline(
        &format!(
            "location=http://127.0.0.1:{}/readonly/live target-duration=1",
            nginx.port
        ),
        &video(90, 30),
    );
    let err = run_to_end(&pipeline, Duration::from_secs(60)).expect_err("must fail");
    assert!(err.contains("HTTP 405"), "{err}");
    assert!(err.contains("/readonly/live/segment00000.ts"), "{err}");
}

#[test]
fn applications_can_take_the_files_through_signals() {
    let dir = TempDir::new("signals");
    let (pipeline, sink) = pipeline(
        &format!(
            "location={}/seg%03d.ts playlist-location={}/p.m3u8 target-duration=1 \
             playlist-length=2 max-files=2",
            dir.str(),
            dir.str()
        ),
        &video(150, 30),
    );
    /// What the application received, by location.
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    type Streams = Arc<Mutex<HashMap<String, Sink>>>;
    let streams: Streams = Arc::default();
    let deleted = Arc::new(Mutex::new(Vec::<String>::new()));
    for signal in ["get-fragment-stream", "get-playlist-stream"] {
        let streams = streams.clone();
        sink.connect(signal, false, move |args| {
            let location = args[1].get::<String>().unwrap();
            let sink = Sink(Arc::default());
            streams.lock().unwrap().insert(location, sink.clone());
            let stream = gio::WriteOutputStream::new(sink);
            Some(Some(stream.upcast::<gio::OutputStream>()).to_value())
        });
    }
    {
        let deleted = deleted.clone();
        sink.connect("delete-fragment", false, move |args| {
            deleted
                .lock()
                .unwrap()
                .push(args[1].get::<String>().unwrap());
            None
        });
    }
    run_to_end(&pipeline, Duration::from_secs(60)).expect("EOS");
    // Nothing was written by the element itself.
    assert!(dir.files().is_empty(), "{:?}", dir.files());
    let streams = streams.lock().unwrap();
    let bytes = |loc: &str| -> Vec<u8> {
        let s = streams
            .get(loc)
            .unwrap_or_else(|| panic!("no stream for {loc}"));
        s.0.lock().unwrap().clone()
    };
    let playlist =
        m3u8_rs::parse_media_playlist_res(&bytes(&format!("{}/p.m3u8", dir.str()))).unwrap();
    assert!(playlist.end_list);
    let uris: Vec<&str> = playlist.segments.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["seg003.ts", "seg004.ts"]);
    for i in 0..5 {
        let data = bytes(&format!("{}/seg{i:03}.ts", dir.str()));
        assert_eq!(data[0], 0x47);
        assert_eq!(data.len() % 188, 0);
    }
    assert_eq!(
        *deleted.lock().unwrap(),
        [
            format!("{}/seg000.ts", dir.str()),
            format!("{}/seg001.ts", dir.str()),
            format!("{}/seg002.ts", dir.str())
        ]
    );
}

/// Runs openssl; panics with its output when it fails.
fn openssl(args: &[&str]) {
    let (out, timed_out) = common::run(Command::new("openssl").args(args), Duration::from_secs(30));
    assert!(
        !timed_out && out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=rshlssink test CA",
    ];
    ca.extend(ec);
    let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca);
    let (key, csr, pem, ext) = (
        p("server.key"),
        p("server.csr"),
        p("server.pem"),
        p("ext.cnf"),
    );
    let mut req = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ];
    req.extend(ec);
    openssl(&req);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &pem,
    ]);
    (ca_pem.into(), pem.into(), key.into())
}

#[test]
fn https_origin_with_a_private_ca() {
    let certs = TempDir::new("certs");
    let (ca, cert, key) = make_certificates(certs.path());
    let port = free_port();
    let dir = Nginx::configure_with(
        port,
        "ssl",
        &format!(
            "ssl_certificate {}; ssl_certificate_key {};",
            cert.display(),
            key.display()
        ),
    );
    let nginx = Nginx::start_in(dir, port);
    run_sink(
        &format!(
            "location=https://127.0.0.1:{port}/tls target-duration=1 playlist-type=vod \
             upload-ca-file={}",
            ca.display()
        ),
        &video(60, 30),
    );
    let remote = nginx.www("tls");
    assert_eq!(
        files_in(&remote),
        ["playlist.m3u8", "segment00000.ts", "segment00001.ts"]
    );
    assert!(read_playlist(&remote.join("playlist.m3u8")).end_list);

    // Without the CA the certificate is not trusted: a clear error, not endless retries.
    let (pipeline, _) = pipeline(
        &format!("location=https://127.0.0.1:{port}/untrusted target-duration=1"),
        &video(60, 30),
    );
    let err = run_to_end(&pipeline, Duration::from_secs(60)).expect_err("untrusted");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(files_in(&nginx.www("untrusted")).is_empty());
}

#[test]
fn an_origin_that_never_answers_does_not_stall_the_pipeline() {
    // Accepts connections and reads, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hole = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let (pipeline, _) = pipeline(
        &format!("location=http://127.0.0.1:{port}/hole target-duration=1"),
        LIVE_VIDEO,
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let started = std::time::Instant::now();
    // Live data keeps flowing although no upload completes.
    let flowing = wait_for(Duration::from_secs(15), || {
        pipeline
            .query_position::<gst::ClockTime>()
            .is_some_and(|p| p >= gst::ClockTime::from_seconds(3))
    });
    let position = pipeline.query_position::<gst::ClockTime>();
    let live_for = started.elapsed();
    let t0 = std::time::Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    let stopping = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hole.join().unwrap();
    assert!(flowing, "position {position:?} after {live_for:?}");
    assert!(
        live_for < Duration::from_secs(10),
        "3 s of live input took {live_for:?}"
    );
    // Stopping gives queued uploads a bounded time.
    assert!(
        stopping < Duration::from_secs(10),
        "stopping took {stopping:?}"
    );
}
