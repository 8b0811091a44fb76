//! A private `redis-server` for tests: spawned on a free loopback port
//! (never 6379) with no persistence, its files in a temp dir, polled with
//! PING until ready (the log is printed when it does not start), stoppable
//! and restartable on the same port for outage tests, killed and reaped on
//! drop. Needs the `redis-server` binary (Debian/Ubuntu: `apt-get install
//! redis-server`); set `REDIS_SERVER_BIN` to use another path.
//!
//! [`RedisProcess`] is the one way the kit starts a `redis-server` (plain,
//! cluster member, replica or sentinel).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::process;

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The redis-server binary (`REDIS_SERVER_BIN` or `redis-server`).
pub fn server_binary() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
}

/// The redis-cli binary (`REDIS_CLI_BIN` or `redis-cli`).
pub fn cli_binary() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into())
}

/// Panics with a clear message when `redis-server` is not installed.
pub fn require_redis_server() {
    assert!(
        process::runs(&server_binary()),
        "`{}` was not found: these tests run a real Redis. Install it \
         (e.g. `apt-get install -y redis-server`) or set REDIS_SERVER_BIN.",
        server_binary()
    );
}

/// Sends one inline command to a local Redis over a raw socket and returns
/// the start of the reply (enough for PING and `CLUSTER INFO`).
pub fn query(port: u16, command: &str) -> Option<String> {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 8192];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `127.0.0.1:P1,127.0.0.1:P2,...`: the seed list of a backplane URL.
pub fn seeds(ports: &[u16]) -> String {
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    seeds.join(",")
}

/// One PING; true on `+PONG`.
pub fn ping_port(port: u16) -> bool {
    query(port, "PING").is_some_and(|r| r.starts_with("+PONG"))
}

/// One redis-server process on a loopback port with its files in `dir`:
/// started with [`RedisProcess::spawn`], ready when it answers PING.
pub struct RedisProcess {
    /// Its port.
    pub port: u16,
    /// Its working directory (data, `nodes.conf`, log).
    pub dir: PathBuf,
    /// Arguments after the defaults (or, with `config`, after the file).
    pub args: Vec<String>,
    /// A config file given first (sentinels need a writable one).
    pub config: Option<PathBuf>,
    child: Option<Child>,
}

impl RedisProcess {
    /// A process (not started yet) on `port` with its files in `dir`.
    pub fn new(port: u16, dir: PathBuf, args: &[&str]) -> RedisProcess {
        std::fs::create_dir_all(&dir).expect("redis dir");
        RedisProcess {
            port,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            config: None,
            child: None,
        }
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process was started and not stopped.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process and waits until it answers PING; on failure the
    /// process is killed and the error carries its log.
    pub fn spawn(&mut self) -> Result<(), String> {
        self.kill();
        let mut cmd = Command::new(server_binary());
        if let Some(conf) = &self.config {
            cmd.arg(conf);
        }
        let dir: &Path = &self.dir;
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", server_binary()))?;
        let port = self.port;
        let child = self.child.insert(child);
        if let Err(e) =
            process::wait_ready(child, "redis-server", START_TIMEOUT, || ping_port(port))
        {
            self.kill();
            return Err(format!("{e} (port {port}):\n{}", self.log()));
        }
        Ok(())
    }

    /// Whether the process was started and has exited since (it is reaped).
    pub fn exited(&mut self) -> bool {
        process::exited(&mut self.child)
    }

    /// SIGKILL (a crash) and reap.
    pub fn kill(&mut self) {
        process::kill(&mut self.child);
    }

    /// SIGTERM, SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        process::terminate(&mut self.child, grace);
    }

    /// A connection of the `redis` crate to this process.
    pub fn connection(&self) -> Option<::redis::Connection> {
        let client = ::redis::Client::open(self.url()).ok()?;
        client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running (or stopped) private redis-server.
pub struct RedisServer {
    proc: RedisProcess,
    _dir: tempfile::TempDir,
}

impl Default for RedisServer {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisServer {
    /// Starts a server on a free port. Retries on another port if the
    /// chosen one was taken meanwhile.
    pub fn new() -> RedisServer {
        Self::with_args(&[])
    }

    /// A server whose data survives `stop`/`start` (AOF, fsync always), as a
    /// production Redis with persistence would.
    pub fn persistent() -> RedisServer {
        Self::with_args(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A server with extra `redis-server` flags (they override the defaults).
    pub fn with_args(args: &[&str]) -> RedisServer {
        Self::try_with_args(args).unwrap_or_else(|e| panic!("redis-server did not start: {e}"))
    }

    /// Like [`RedisServer::with_args`], as a `Result`.
    pub fn try_with_args(args: &[&str]) -> Result<RedisServer, String> {
        if !process::runs(&server_binary()) {
            return Err(format!(
                "`{}` not found (apt-get install -y redis-server, or set REDIS_SERVER_BIN)",
                server_binary()
            ));
        }
        let mut all = vec!["--appendonly", "no"];
        all.extend_from_slice(args);
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
            let mut proc = RedisProcess::new(free_port(), dir.path().to_path_buf(), &all);
            match proc.spawn() {
                Ok(()) => return Ok(RedisServer { proc, _dir: dir }),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.proc.url()
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.proc.port
    }

    /// Its PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.proc.log_path()
    }

    /// One PING over a raw socket; true on `+PONG`.
    pub fn ping(&self) -> bool {
        ping_port(self.proc.port)
    }

    /// Stops the server abruptly (SIGKILL, as a crash or a network loss).
    /// Its data is gone unless the server is `persistent`.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port (after `stop`).
    pub fn start(&mut self) {
        if let Err(log) = self.proc.spawn() {
            panic!(
                "redis-server did not restart on port {}:\n{log}",
                self.proc.port
            );
        }
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Whether it exited on its own (it is reaped then).
    pub fn exited(&mut self) -> bool {
        self.proc.exited()
    }

    /// Stops it with SIGTERM (SIGKILL after `grace`).
    pub fn terminate(&mut self, grace: Duration) {
        self.proc.terminate(grace);
    }
}
