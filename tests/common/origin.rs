//! An HTTP origin for upload tests: nginx with WebDAV PUT/DELETE on 127.0.0.1, everything in a
//! temporary directory, and the files it holds.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::hls::wait_for;
use super::rtmp::free_port;
use super::{ChildGuard, TempDir};

#[allow(unused_imports)]
pub use super::files_in;

/// nginx with `dav_methods PUT DELETE` on 127.0.0.1, everything in a temporary directory.
pub struct Nginx {
    _child: ChildGuard,
    pub dir: TempDir,
    pub port: u16,
}

impl Nginx {
    /// Configures nginx in a new directory for `port`, without starting it.
    pub fn configure(port: u16) -> TempDir {
        Nginx::configure_with(port, "", "")
    }

    /// With `listen_extra` after the listen address (e.g. "ssl") and `server_extra` directives.
    pub fn configure_with(port: u16, listen_extra: &str, server_extra: &str) -> TempDir {
        let dir = TempDir::new("nginx");
        let d = dir.str();
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let conf = format!(
            "user root;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               log_format withconn '$remote_addr [$time_local] \"$request\" $status \
                 connection=$connection';\n\
               access_log {d}/access.log withconn;\n\
               client_body_temp_path {d}/client_body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port} {listen_extra};\n\
                 {server_extra}\n\
                 root {d}/www;\n\
                 client_max_body_size 64m;\n\
                 location /readonly/ {{ }}\n\
                 location / {{\n\
                   dav_methods PUT DELETE;\n\
                   create_full_put_path on;\n\
                   dav_access user:rw group:r all:r;\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        dir
    }

    pub fn start_in(dir: TempDir, port: u16) -> Nginx {
        let d = dir.str();
        let child = ChildGuard::spawn(Command::new("nginx").args([
            "-p",
            &d,
            "-c",
            &format!("{d}/nginx.conf"),
            "-g",
            "daemon off; master_process off;",
        ]));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let up = wait_for(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        assert!(up, "nginx did not start on port {port}: {log}");
        Nginx {
            _child: child,
            dir,
            port,
        }
    }

    pub fn start() -> Nginx {
        let port = free_port();
        let dir = Nginx::configure(port);
        Nginx::start_in(dir, port)
    }

    pub fn www(&self, sub: &str) -> PathBuf {
        self.dir.join("www").join(sub)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}
