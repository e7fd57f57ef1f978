//! A throwaway `redis-server` on a free loopback port, for tests and benchmarks: never the
//! shared one on 6379. The process ends when the value is dropped.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` child process.
pub struct LocalRedisServer {
    child: Child,
    pub port: u16,
}

impl LocalRedisServer {
    /// Start `redis-server` (from `PATH` or `/usr/bin`) with `extra` arguments and wait until
    /// it accepts connections.
    ///
    /// # Errors
    /// A message saying what failed: no binary, no free port, or no answer within 10 s.
    pub fn start(extra: &[&str]) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let binary = if Path::new("/usr/bin/redis-server").exists() {
            "/usr/bin/redis-server"
        } else {
            "redis-server"
        };
        let port_text = port.to_string();
        let mut args = vec![
            "--port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
        ];
        args.extend_from_slice(extra);
        let child = Command::new(binary)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {binary}: {e}; install redis-server"))?;
        let server = Self { child, port };

        let deadline = Instant::now() + Duration::from_secs(10);
        let probe_port = if let Some(i) = extra.iter().position(|a| *a == "--tls-port") {
            extra
                .get(i + 1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(port)
        } else {
            port
        };
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", probe_port)).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on port {port} did not start"))
    }

    /// A free loopback port, for a TLS listener beside the plain one.
    ///
    /// # Errors
    /// When no port can be had.
    pub fn free_port() -> Result<u16, String> {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalRedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
