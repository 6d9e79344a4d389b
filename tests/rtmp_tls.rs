//! rsrtmpsink over RTMPS: stunnel4 with a self-signed certificate in front of nginx-rtmp; each
//! `tls-validation-flags` bit relaxes only its own check.

mod common;

use std::time::Duration;

use gst::prelude::*;

use common::rtmp::{Nginx, Publish, Stunnel, av_flv_source, probe_file, wait_file_settled};

const FRAMES: u32 = 150;

fn publish_to(url: &str, flags: &str) -> (Publish, Result<(), String>) {
    let p = Publish::start(
        &av_flv_source(FRAMES, true, false),
        &format!("location={url} sync=false timeout=3 {flags}"),
    );
    let (r, _) = p.wait(Duration::from_secs(60));
    (p, r)
}

#[test]
fn publishes_over_tls_when_validation_is_relaxed() {
    let nginx = Nginx::start();
    let tls = Stunnel::start(nginx.port, "IP:127.0.0.1,DNS:localhost");
    let (p, r) = publish_to(&tls.url("secure"), "tls-validation-flags=0");
    r.unwrap_or_else(|e| panic!("RTMPS publish: {e}"));
    assert_eq!(p.stats().get::<u64>("drops").unwrap(), 0);
    p.pipeline.set_state(gst::State::Null).unwrap();
    let rec = nginx.recording("secure");
    wait_file_settled(&rec, Duration::from_secs(10));
    let probe = probe_file(&rec);
    assert_eq!(probe.stream("video"), Some(("h264", u64::from(FRAMES))));
    assert_eq!(probe.stream("audio").map(|a| a.0), Some("aac"));
}

#[test]
fn default_validation_refuses_a_self_signed_certificate() {
    let nginx = Nginx::start();
    let tls = Stunnel::start(nginx.port, "IP:127.0.0.1");
    let (_p, r) = publish_to(&tls.url("secure"), "");
    let err = r.expect_err("a self-signed certificate is refused");
    assert!(
        err.contains("Could not publish to rtmps://127.0.0.1"),
        "{err}"
    );
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(!nginx.recording("secure").exists());
}

#[test]
fn identity_is_checked_when_only_the_ca_is_forgiven() {
    let nginx = Nginx::start();
    // The certificate names another host: refused while bad-identity is a validation flag.
    let tls = Stunnel::start(nginx.port, "DNS:other.example");
    let flags = "tls-validation-flags=bad-identity+expired+not-activated";
    let (_p, r) = publish_to(&tls.url("secure"), flags);
    let err = r.expect_err("wrong name");
    assert!(err.contains("certificate not valid for name"), "{err}");
    // The right name with the same flags is accepted.
    let tls = Stunnel::start(nginx.port, "IP:127.0.0.1");
    let (_p, r) = publish_to(&tls.url("secure2"), flags);
    r.unwrap_or_else(|e| panic!("the right name with an unknown CA: {e}"));
}

/// An expired self-signed certificate for another host has three problems: relaxing one or two
/// of them is not enough.
#[test]
fn an_expired_self_signed_certificate_for_another_host_needs_three_flags_relaxed() {
    let nginx = Nginx::start();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["other.example".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let tls = Stunnel::with_pem(nginx.port, &cert.pem(), &key.serialize_pem());
    for (checked, reason) in [
        // unknown-ca relaxed
        (
            "bad-identity+not-activated+expired+revoked+insecure+generic-error",
            "expired",
        ),
        // expired relaxed
        (
            "unknown-ca+bad-identity+not-activated+revoked+insecure+generic-error",
            "UnknownIssuer",
        ),
        // unknown-ca and expired relaxed
        (
            "bad-identity+not-activated+revoked+insecure+generic-error",
            "not valid for name",
        ),
    ] {
        let (_p, r) = publish_to(&tls.url("old"), &format!("tls-validation-flags={checked}"));
        let err = r.expect_err(checked);
        assert!(err.contains(reason), "{checked}: {err}");
    }
    assert!(!nginx.recording("old").exists());
    let flags = "tls-validation-flags=not-activated+revoked+insecure+generic-error";
    let (_p, r) = publish_to(&tls.url("old"), flags);
    r.unwrap_or_else(|e| panic!("all three problems relaxed: {e}"));
}
