//! Adobe authentication (`authmod=adobe`) between rtmpserversrc's `users` and real clients:
//! ffmpeg's own RTMP client (`rtmp://user:password@host/...`), and our rsrtmpsink (`username` /
//! `password` properties and the location's userinfo). Every frame of the publication is
//! counted in the recording; wrong or missing credentials are refused with the client's error;
//! the debug log of this process (lsrtmp, rsrtmpsink, rtmpserversrc at level 9) never holds the
//! password or a response. Limelight's method (`authmod=llnw`, an HTTP Digest over MD5) is
//! tested the same way with ffmpeg and rsrtmpsink. Loopback only, every wait bounded, every
//! child killed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use common::rtmp::{Publish, Recorder, av_flv_source, captured_logs, wait_line};

const PASSWORD: &str = "S3cr3t-pa55";

/// Every debug line of the RTMP categories, at every level.
fn logs() -> Arc<Mutex<Vec<String>>> {
    captured_logs(
        &["lsrtmp", "rsrtmpsink", "rtmpserversrc"],
        gst::DebugLevel::Memdump,
    )
}

fn assert_no_secret_logged() {
    let logs = logs();
    let logs = logs.lock().unwrap();
    for l in logs.iter() {
        assert!(
            !l.contains(PASSWORD) && !l.contains("response="),
            "secret in the log: {l}"
        );
    }
}

fn wait_log(timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
    wait_line(&logs(), timeout, pred).is_some()
}

use common::rtmp::test_flv as input;

/// rtmpserversrc with `users` (alice) recording into a file, asking for `authmod=adobe`.
fn start_server(users: &[&str]) -> Recorder {
    start_server_with(users, "adobe")
}

/// `authmod`: what the server asks for (`adobe`, `llnw`).
fn start_server_with(users: &[&str], authmod: &str) -> Recorder {
    let _ = logs();
    Recorder::start_with("rtmp-auth", "", "", |src| {
        src.set_property("users", gst::Array::new(users.iter().copied()));
        src.set_property("authmod", authmod);
    })
}

fn publishers(server: &Recorder) -> u64 {
    server.stats().get::<u64>("publishers").unwrap()
}

/// Waits for EOS (the publisher left), stops, and counts the recording's frames.
fn recorded(server: &Recorder) -> (u64, u64) {
    server.wait_eos(Duration::from_secs(30));
    server.recorded()
}

fn ffmpeg_publish(url: &str) -> std::process::Output {
    let (out, timed_out) =
        common::rtmp::ffmpeg_publish(url, &[]).wait_output(Duration::from_secs(40));
    assert!(!timed_out, "ffmpeg did not finish");
    out
}

#[test]
fn ffmpeg_publishes_with_adobe_authentication_every_frame() {
    let server = start_server(&["bob:other", &format!("alice:{PASSWORD}")]);
    let out = ffmpeg_publish(&format!(
        "rtmp://alice:{PASSWORD}@127.0.0.1:{}/live/key",
        server.port
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (v, a) = recorded(&server);
    assert_eq!((v, a), (input().video, input().audio), "every frame");
    assert!(wait_log(Duration::from_secs(1), |l| l
        .contains("connect authenticated: user 'alice'")));
    assert_no_secret_logged();
}

#[test]
fn ffmpeg_and_rsrtmpsink_publish_with_limelight_authentication() {
    let server = start_server_with(&[&format!("alice:{PASSWORD}")], "llnw");
    let out = ffmpeg_publish(&format!(
        "rtmp://alice:{PASSWORD}@127.0.0.1:{}/live/key",
        server.port
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (v, a) = recorded(&server);
    assert_eq!((v, a), (input().video, input().audio), "every frame");
    assert!(wait_log(Duration::from_secs(1), |l| l
        .contains("no credentials: authmod=llnw asked for")));
    // A wrong password fails with llnw too.
    let server = start_server_with(&[&format!("alice:{PASSWORD}")], "llnw");
    let out = ffmpeg_publish(&format!(
        "rtmp://alice:bad@127.0.0.1:{}/live/key",
        server.port
    ));
    assert!(!out.status.success());
    assert_eq!(publishers(&server), 0);
    drop(server);
    // rsrtmpsink answers llnw as well.
    let server = start_server_with(&[&format!("alice:{PASSWORD}")], "llnw");
    let p = Publish::start(
        &av_flv_source(90, true, false),
        &format!(
            "username=alice password={PASSWORD} location=rtmp://127.0.0.1:{}/live/key",
            server.port
        ),
    );
    let (r, _) = p.wait(Duration::from_secs(30));
    r.expect("rsrtmpsink with llnw");
    p.pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(recorded(&server).0, 90);
    assert_no_secret_logged();
}

#[test]
fn ffmpeg_with_a_wrong_password_or_none_is_refused() {
    let server = start_server(&[&format!("alice:{PASSWORD}")]);
    for (url, why) in [
        (
            format!("rtmp://alice:wrong@127.0.0.1:{}/live/key", server.port),
            "wrong user, password or challenge",
        ),
        (
            format!(
                "rtmp://mallory:{PASSWORD}@127.0.0.1:{}/live/key",
                server.port
            ),
            "wrong user, password or challenge",
        ),
        (
            format!("rtmp://127.0.0.1:{}/live/key", server.port),
            "no credentials",
        ),
    ] {
        let out = ffmpeg_publish(&url);
        assert!(!out.status.success(), "{why}: ffmpeg published");
        assert!(
            wait_log(Duration::from_secs(5), |l| l.contains(why)),
            "no log line '{why}'"
        );
    }
    assert_eq!(publishers(&server), 0);
    assert_no_secret_logged();
}

#[test]
fn rsrtmpsink_authenticates_with_properties_and_with_the_location() {
    for props in [
        format!("username=alice password={PASSWORD} location=rtmp://127.0.0.1:PORT/live/key"),
        format!("location=rtmp://alice:{PASSWORD}@127.0.0.1:PORT/live/key"),
    ] {
        let server = start_server(&[&format!("alice:{PASSWORD}")]);
        let p = Publish::start(
            &av_flv_source(90, true, false),
            &props.replace("PORT", &server.port.to_string()),
        );
        let (r, _) = p.wait(Duration::from_secs(30));
        r.unwrap_or_else(|e| panic!("{props}: {e}"));
        // The location read back carries no credentials.
        let location = p.sink.property::<String>("location");
        assert!(!location.contains(PASSWORD), "{location}");
        assert_eq!(p.sink.property::<String>("username"), "alice");
        p.pipeline.set_state(gst::State::Null).unwrap();
        let (v, _) = recorded(&server);
        assert_eq!(v, 90, "{props}");
    }
    assert_no_secret_logged();
}

#[test]
fn rsrtmpsink_with_a_wrong_password_fails_as_not_authorized() {
    let server = start_server(&[&format!("alice:{PASSWORD}")]);
    for props in ["username=alice password=wrong", ""] {
        let start = Instant::now();
        let p = Publish::start(
            &av_flv_source(100_000, false, true),
            &format!("location=rtmp://127.0.0.1:{}/live/key {props}", server.port),
        );
        let bus = p.pipeline.bus().unwrap();
        let msg = bus
            .timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Error])
            .expect("an error");
        let gst::MessageView::Error(e) = msg.view() else {
            unreachable!()
        };
        assert!(
            e.error().matches(gst::ResourceError::NotAuthorized),
            "{props}: {} {:?}",
            e.error(),
            e.debug()
        );
        assert!(start.elapsed() < Duration::from_secs(15));
        let text = format!("{} {:?}", e.error(), e.debug());
        assert!(text.contains("authentication"), "{text}");
        assert!(
            !text.contains(PASSWORD) && !text.contains("wrong"),
            "{text}"
        );
    }
    assert_eq!(publishers(&server), 0);
    assert_no_secret_logged();
}
