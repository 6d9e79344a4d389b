//! The stock gst-rtsp-server 1.22 in the test process (through its Rust bindings), on
//! 127.0.0.1, serving a launch line at /live, optionally Digest-protected.

use gst::glib;
use gst_rtsp_server::prelude::*;

/// gst-rtsp-server running its own main loop on a thread of its own; stopped when dropped.
pub struct StockServer {
    pub port: u16,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StockServer {
    /// Serves `launch` (shared) at /live; `digest`: the one user and password it accepts.
    pub fn start(launch: &str, digest: Option<(&str, &str)>) -> StockServer {
        Self::start_full(launch, true, digest, |_, _| {})
    }

    /// As [`Self::start`], with `shared` as gst-rtsp-server's factory option; `setup` sees the
    /// factory and the mount points (for more mounts) before the server starts.
    pub fn start_full(
        launch: &str,
        shared: bool,
        digest: Option<(&str, &str)>,
        setup: impl FnOnce(&gst_rtsp_server::RTSPMediaFactory, &gst_rtsp_server::RTSPMountPoints),
    ) -> StockServer {
        super::init();
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let server = gst_rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service("0");
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(shared);
        setup(&factory, &server.mount_points().unwrap());
        if let Some((user, pass)) = digest {
            let auth = gst_rtsp_server::RTSPAuth::new();
            auth.set_supported_methods(gst_rtsp::RTSPAuthMethod::Digest);
            let token = gst_rtsp_server::RTSPToken::builder()
                .field("media.factory.role", "user")
                .build();
            auth.add_digest(user, pass, &token);
            server.set_auth(Some(&auth));
            factory.add_role_from_structure(
                &gst::Structure::builder("user")
                    .field("media.factory.access", true)
                    .field("media.factory.construct", true)
                    .build(),
            );
        }
        server.mount_points().unwrap().add_factory("/live", factory);
        let id = server.attach(Some(&ctx)).expect("attach gst-rtsp-server");
        let port = server.bound_port() as u16;
        let ml = main_loop.clone();
        let thread = std::thread::spawn(move || {
            let _server = server;
            let _id = id;
            ctx.with_thread_default(|| ml.run()).unwrap();
        });
        StockServer {
            port,
            main_loop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/live", self.port)
    }
}

impl Drop for StockServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
