//! rtspsrc2 over `rtsps://` and through the HTTP tunnel (`rtsph://`, `protocols=http`,
//! `rtspsh://`), against the stock C gst-rtsp-server 1.22 in this process serving TLS with a
//! certificate made by openssl: one signed by a test CA, one self-signed, one for another name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::rtmp::{TempDir, self_signed_cert};
use common::stock::{Access, StockServer, decode, decode_as};
use common::{init, run};

const LIVE: &str = "( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
    ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph264pay name=pay0 pt=96 config-interval=-1 )";

fn openssl(args: &[&str]) {
    let (out, timed_out) = run(Command::new("openssl").args(args), Duration::from_secs(30));
    assert!(
        !timed_out && out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// As [`decode`], with the lsrtsp debug lines about this rtspsrc2.
fn decode_logged(extra: &str) -> (Result<(), String>, Vec<String>) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("tls{}", N.fetch_add(1, Ordering::SeqCst));
    init();
    // Captured, not printed.
    gst::log::remove_default_log_function();
    gst::log::set_threshold_from_string("lsrtsp:5", false);
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let (sink, id) = (lines.clone(), name.clone());
    let handler = gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
        if cat.name() == "lsrtsp"
            && msg.id().is_some_and(|i| i.as_str() == id)
            && let Some(m) = msg.get()
        {
            sink.lock().unwrap().push(m.to_string());
        }
    });
    let result = decode_as(&name, extra);
    gst::log::remove_log_function(handler);
    let lines = lines.lock().unwrap().clone();
    (result, lines)
}

fn logged(lines: &[String], what: &str) -> bool {
    lines.iter().any(|l| l.contains(what))
}

/// A test CA and a server certificate it signed for `san`: (ca.pem, cert.pem, key.pem) in `dir`.
fn ca_signed_cert(dir: &Path, san: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &p("ca.key"), "-out", &p("ca.pem"), "-days", "2"],
            &["-subj", "/CN=rtspsrc2 test CA"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", &p("key.pem"), "-out", &p("cert.csr")],
            &["-subj", "/CN=rtspsrc2 test server"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("cert.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("cert.pem"),
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// gst-rtsp-server serving RTSPS with a certificate for 127.0.0.1 signed by a test CA: the
/// server, the CA's file, and the directory that holds them.
fn tls_server(digest: Option<(&str, &str)>) -> (StockServer, PathBuf, TempDir) {
    let dir = TempDir::new("rtspsrc2-tls");
    let (ca, cert, key) = ca_signed_cert(dir.path(), "IP:127.0.0.1");
    let access = Access {
        digest,
        tls: Some((&cert, &key)),
    };
    (StockServer::start_secured(LIVE, access), ca, dir)
}

#[test]
fn plays_rtsps_with_the_ca_file() {
    let (server, ca, _dir) = tls_server(None);
    let ca = ca.display();
    decode(&format!(
        "location={} tls-ca-file={ca}",
        server.url_as("rtsps")
    ))
    .unwrap();
    // rtspst is rtsps, as rtspsrc reads it.
    decode(&format!(
        "location={} tls-ca-file={ca}",
        server.url_as("rtspst")
    ))
    .unwrap();
}

/// The media travels interleaved inside TLS, even where `protocols` would rather have UDP:
/// nothing of the session leaves the encrypted connection.
#[test]
fn rtsps_keeps_the_media_inside_tls() {
    let (server, ca, _dir) = tls_server(None);
    let location = server.url_as("rtsps");
    let (result, lines) = decode_logged(&format!(
        "location={location} tls-ca-file={} protocols=udp",
        ca.display()
    ));
    result.unwrap();
    assert!(logged(&lines, "TLS established"), "{lines:#?}");
    assert!(logged(&lines, "set up over Tcp"), "{lines:#?}");
}

#[test]
fn an_unknown_issuer_is_refused_by_default_with_a_clear_error() {
    let (server, _ca, _dir) = tls_server(None);
    let err = decode(&format!("location={}", server.url_as("rtsps"))).unwrap_err();
    assert!(err.contains("TLS with 127.0.0.1"), "{err}");
    assert!(
        err.contains("certificate signed by an unknown issuer"),
        "{err}"
    );
    assert!(err.contains("tls-ca-file"), "the hint: {err}");
    assert!(err.ends_with("[Some(OpenRead)]"), "{err}");
}

#[test]
fn a_self_signed_certificate_is_refused_by_default_and_accepted_when_relaxed_or_trusted() {
    let dir = TempDir::new("rtspsrc2-self-signed");
    let (cert, key) = self_signed_cert(dir.path(), "IP:127.0.0.1");
    let access = Access {
        digest: None,
        tls: Some((&cert, &key)),
    };
    let server = StockServer::start_secured(LIVE, access);
    let location = server.url_as("rtsps");
    let err = decode(&format!("location={location}")).unwrap_err();
    assert!(
        err.contains("certificate signed by an unknown issuer"),
        "{err}"
    );
    decode(&format!("location={location} tls-validation-flags=0")).unwrap();
    // The certificate as its own CA.
    decode(&format!(
        "location={location} tls-ca-file={}",
        cert.display()
    ))
    .unwrap();
}

#[test]
fn the_name_is_checked_when_only_the_ca_is_forgiven() {
    let dir = TempDir::new("rtspsrc2-other-name");
    let (_ca, cert, key) = ca_signed_cert(dir.path(), "DNS:other.example");
    let access = Access {
        digest: None,
        tls: Some((&cert, &key)),
    };
    let server = StockServer::start_secured(LIVE, access);
    let location = server.url_as("rtsps");
    let flags = "tls-validation-flags=bad-identity+expired+not-activated";
    let err = decode(&format!("location={location} {flags}")).unwrap_err();
    assert!(err.contains("certificate not valid for name"), "{err}");
    decode(&format!(
        "location={location} tls-validation-flags=expired+not-activated"
    ))
    .unwrap();
}

#[test]
fn a_missing_ca_file_is_a_settings_error() {
    let err =
        decode("location=rtsps://127.0.0.1:9/live tls-ca-file=/nonexistent/ca.pem").unwrap_err();
    assert!(
        err.contains("TLS settings: cannot read CA file /nonexistent/ca.pem"),
        "{err}"
    );
    assert!(err.ends_with("[Some(Settings)]"), "{err}");
}

#[test]
fn digest_over_tls() {
    let (server, ca, _dir) = tls_server(Some(("user", "pass")));
    let location = server.url_as("rtsps");
    let ca = ca.display();
    decode(&format!(
        "location={location} tls-ca-file={ca} user-id=user user-pw=pass"
    ))
    .unwrap();
    let err = decode(&format!(
        "location={location} tls-ca-file={ca} user-id=user user-pw=wrong"
    ))
    .unwrap_err();
    assert!(err.contains("[Some(NotAuthorized)]"), "{err}");
}

#[test]
fn plays_through_the_http_tunnel() {
    let server = StockServer::start(LIVE, None);
    let (result, lines) = decode_logged(&format!("location={}", server.url_as("rtsph")));
    result.unwrap();
    assert!(logged(&lines, "HTTP tunnel open"), "{lines:#?}");
    // The server saw the tunnel's two connections, GET and POST.
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    decode(&format!("location={} protocols=http", server.url())).unwrap();
    assert_eq!(server.connections.load(Ordering::SeqCst), 4);
    decode(&format!("location={} protocols=tcp", server.url())).unwrap();
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        5,
        "no tunnel for tcp"
    );
}

#[test]
fn plays_through_the_http_tunnel_inside_tls_with_digest() {
    let (server, ca, _dir) = tls_server(Some(("user", "pass")));
    decode(&format!(
        "location={} tls-ca-file={} user-id=user user-pw=pass",
        server.url_as("rtspsh"),
        ca.display()
    ))
    .unwrap();
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

/// `openssl req -x509`'s certificate for `san` as peers.md makes it, which is also a CA
/// (basicConstraints CA:TRUE): (cert.pem, key.pem) in `dir`.
fn self_signed_ca_cert(dir: &Path, san: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let san = format!("subjectAltName={san}");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &k,
        "-out",
        &c,
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        &san,
    ]);
    (cert, key)
}

/// A certificate that is also a CA is refused by webpki as a server's own; given as its own
/// CA file it is trusted (pinned), as rtspsrc's GnuTLS trusts it, and its name still checked.
#[test]
fn a_self_signed_ca_certificate_is_trusted_as_its_own_ca_file() {
    for (san, plays) in [("IP:127.0.0.1", true), ("DNS:other.example", false)] {
        let dir = TempDir::new("rtspsrc2-self-signed-ca");
        let (cert, key) = self_signed_ca_cert(dir.path(), san);
        let access = Access {
            digest: None,
            tls: Some((&cert, &key)),
        };
        let server = StockServer::start_secured(LIVE, access);
        let location = server.url_as("rtsps");
        match decode(&format!(
            "location={location} tls-ca-file={}",
            cert.display()
        )) {
            Ok(()) => assert!(plays, "{san}: played"),
            Err(e) => {
                assert!(!plays, "{san}: {e}");
                assert!(e.contains("certificate not valid for name"), "{e}");
            }
        }
    }
}
