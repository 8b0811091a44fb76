//! A private `redis-server` for tests: spawned on a free loopback port
//! (never 6379) with no persistence, its files in a temp dir, polled with
//! PING until ready (the log is printed when it does not start), stoppable
//! and restartable on the same port for outage tests, killed and reaped on
//! drop. Needs the `redis-server` binary (Debian/Ubuntu: `apt-get install
//! redis-server`); set `REDIS_SERVER_BIN` to use another path.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or stopped) private redis-server.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Append-only file with fsync on every write: survives `stop`/`start`.
    persist: bool,
}

fn binary() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
}

/// Panics with a clear message when `redis-server` is not installed.
pub fn require_redis_server() {
    let found = Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{}` was not found: these tests run a real Redis. Install it \
         (e.g. `apt-get install -y redis-server`) or set REDIS_SERVER_BIN.",
        binary()
    );
}

/// A free loopback port (never 6379, the shared default).
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if port != 6379 {
            return port;
        }
    }
}

impl RedisServer {
    /// Starts a server on a free port. Retries on another port if the
    /// chosen one was taken meanwhile.
    pub fn new() -> RedisServer {
        Self::with_persistence(false)
    }

    /// A server whose data survives `stop`/`start` (AOF, fsync always), as a
    /// production Redis with persistence would.
    pub fn persistent() -> RedisServer {
        Self::with_persistence(true)
    }

    fn with_persistence(persist: bool) -> RedisServer {
        require_redis_server();
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                persist,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start:\n{last_log}");
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let dir: &Path = self.dir.path();
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.persist { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", binary()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ping() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                self.kill();
                return Err(self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One PING over a raw socket; true on `+PONG`.
    pub fn ping(&self) -> bool {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        let Ok(mut stream) = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// Stops the server abruptly (SIGKILL, as a crash or a network loss).
    /// Its data is gone unless the server is `persistent`.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port, empty (after `stop`).
    pub fn start(&mut self) {
        self.kill();
        if let Err(log) = self.spawn() {
            panic!("redis-server did not restart on port {}:\n{log}", self.port);
        }
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
