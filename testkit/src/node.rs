//! Relay nodes as child processes: `relay serve` on a loopback port (a free
//! one by default: `--listen 127.0.0.1:0`), its stderr in a log file in a
//! temp dir, ready when it prints `relay listening on http://ADDR` (the log
//! is in the panic when it does not), killed by its PID and reaped on drop.
//! The binary is [`relay_bin`]: `RELAY_BIN`, else the `relay` built beside
//! the running executable (tests, loadtest, the testkit binary), else
//! `target/{release,debug}/relay`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::process;

/// How long a node may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The relay binary: `explicit`, else `RELAY_BIN`, else the `relay` beside
/// the running executable or one directory up (integration tests run from
/// `target/debug/deps`), else `target/release/relay`, then
/// `target/debug/relay` under the current directory or the repository root.
pub fn relay_bin(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let env = std::env::var_os("RELAY_BIN").map(PathBuf::from);
    if let Some(p) = explicit.map(Path::to_path_buf).or(env) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("relay binary {} not found", p.display()))
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join("relay");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let mut roots = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("..")];
    if let Ok(cwd) = std::env::current_dir() {
        roots.insert(0, cwd);
    }
    for root in &roots {
        for profile in ["release", "debug"] {
            let p = root.join("target").join(profile).join("relay");
            if p.is_file() {
                return Ok(p.canonicalize().unwrap_or(p));
            }
        }
    }
    Err("no relay binary: build it (cargo build --bin relay) or set RELAY_BIN".into())
}

/// How to start a node; [`Node::builder`].
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    bin: Option<PathBuf>,
    listen: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log_dir: Option<PathBuf>,
    name: String,
}

impl NodeBuilder {
    /// The relay binary (default: [`relay_bin`]).
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    /// `--listen ADDR` (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// More `relay serve` flags.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable (overrides the default `RUST_LOG`).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Leaves `RUST_LOG` to the caller's environment (default:
    /// `relay=debug,info`, for test failure messages).
    pub fn inherit_log_level(mut self) -> Self {
        self.envs.retain(|(k, _)| k != "RUST_LOG");
        self
    }

    /// Writes the log as `DIR/NAME.log` instead of in a temp dir of its own.
    pub fn log_in(mut self, dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        self.log_dir = Some(dir.into());
        self.name = name.into();
        self
    }

    /// Starts the node and waits for its address.
    pub fn start(self) -> Result<Node, String> {
        let bin = relay_bin(self.bin.as_deref())?;
        let dir = match &self.log_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?),
        };
        let log_dir = self
            .log_dir
            .clone()
            .or_else(|| dir.as_ref().map(|d| d.path().to_path_buf()))
            .expect("a log dir");
        let log = log_dir.join(format!("{}.log", self.name));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(&bin)
            .arg("serve")
            .args(["--listen", &self.listen])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep reading stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let mut child = Some(child);
        let first = rx.recv_timeout(START_TIMEOUT).ok();
        let addr = first.as_deref().and_then(parse_listening);
        let Some(addr) = addr else {
            process::kill(&mut child);
            return Err(format!(
                "relay did not start (first line {first:?}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        };
        Ok(Node {
            child,
            addr,
            log,
            _dir: dir,
        })
    }
}

/// The address in `relay listening on http://ADDR` (also inside a JSON
/// log line).
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("http://")? + "http://".len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == '/')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A relay node running as a child process.
pub struct Node {
    child: Option<Child>,
    /// Its listen address.
    pub addr: SocketAddr,
    /// Its log file (stderr).
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Node {
    /// A builder with the test defaults (`RUST_LOG=relay=debug,info`, a free
    /// loopback port, a log in a temp dir).
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            bin: None,
            listen: "127.0.0.1:0".into(),
            args: Vec::new(),
            envs: vec![("RUST_LOG".into(), "relay=debug,info".into())],
            log_dir: None,
            name: "relay".into(),
        }
    }

    /// Starts `relay serve` on a free loopback port with extra flags.
    pub fn start(args: &[&str]) -> Node {
        Self::start_on("127.0.0.1:0", args)
    }

    /// Starts `relay serve --listen LISTEN` with extra flags.
    pub fn start_on(listen: &str, args: &[&str]) -> Node {
        Self::start_on_with_env(listen, args, &[])
    }

    /// Starts `relay serve` on a free loopback port with extra flags and
    /// extra environment variables (which may override `RUST_LOG`).
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Node {
        Self::start_on_with_env("127.0.0.1:0", args, envs)
    }

    /// Starts a cluster member: `--redis URL --node-id ID` with a 200 ms
    /// heartbeat (fast presence expiry and reaping), extra flags and
    /// environment.
    pub fn in_cluster(url: &str, id: &str, extra: &[&str], envs: &[(&str, &str)]) -> Node {
        let mut args = vec!["--redis", url, "--node-id", id, "--heartbeat-ms", "200"];
        args.extend_from_slice(extra);
        Self::start_with_env(&args, envs)
    }

    /// Starts `relay serve --listen LISTEN` with extra flags and environment.
    pub fn start_on_with_env(listen: &str, args: &[&str], envs: &[(&str, &str)]) -> Node {
        let mut b = Node::builder().listen(listen).args(args);
        for (k, v) in envs {
            b = b.env(*k, *v);
        }
        b.start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Its PID (0 once it has exited).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `ws://ADDR/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://ADDR`.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (a name such as `TERM`) to the node.
    pub fn signal(&self, sig: &str) {
        assert!(process::signal(self.pid(), sig), "kill -{sig} failed");
    }

    /// Sends SIGTERM if it still runs (nothing when it has exited): the
    /// start of a drain, for stopping many nodes at once.
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            process::signal(c.id(), "TERM");
        }
    }

    /// Whether the process has exited (it is reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten();
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Waits for the process to exit (bounded).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("node did not exit within {within:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (the node drains), SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        process::terminate(&mut self.child, grace);
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        process::kill(&mut self.child);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listening;

    #[test]
    fn the_listening_line_gives_the_address() {
        let a = "127.0.0.1:4000".parse().ok();
        assert_eq!(
            parse_listening("relay listening on http://127.0.0.1:4000"),
            a
        );
        assert_eq!(
            parse_listening(r#"{"msg":"relay listening on http://127.0.0.1:4000","x":1}"#),
            a
        );
        assert_eq!(parse_listening("something else"), None);
    }
}
