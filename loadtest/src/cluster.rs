//! `--spawn-cluster N`: a private redis-server (or, with `--redis-cluster M`,
//! a private M-master Redis Cluster) and N relay nodes on loopback, stopped
//! (SIGTERM, then SIGKILL, each by its own PID) when the run ends, even on
//! error.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A running private cluster.
pub(crate) struct Cluster {
    pub(crate) urls: Vec<String>,
    pub(crate) node_pids: Vec<u32>,
    pub(crate) redis_pid: Option<u32>,
    pub(crate) redis_url: Option<String>,
    pub(crate) dir: PathBuf,
    pub(crate) relay_bin: PathBuf,
    nodes: Vec<Child>,
    redis: Vec<Child>,
}

/// Which Redis to start for the nodes.
pub(crate) struct RedisSpec<'a> {
    /// redis-server binary.
    pub(crate) server_bin: &'a str,
    /// redis-cli binary (cluster creation).
    pub(crate) cli_bin: &'a str,
    /// `Some(M)`: a Redis Cluster of M masters; `None`: one redis-server.
    pub(crate) masters: Option<usize>,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A private, non-persistent redis-server on loopback `port`, with its files
/// and log in `dir`.
fn redis_command(bin: &str, port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--protected-mode", "yes", "--maxclients", "10000"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// The relay binary: --relay-bin / RELAY_BIN, else the `relay` beside this
/// executable (same build profile), else target/release/relay, then
/// target/debug/relay under the current directory or the repository root.
pub(crate) fn find_relay(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("relay binary {} not found", p.display());
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("relay")))
        .filter(|p| p.is_file())
    {
        return Ok(sibling);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut roots = vec![repo];
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
    bail!("no relay binary: build it (cargo build --release --bin relay) or set RELAY_BIN")
}

/// Sends one inline command to a local Redis and reads the start of the
/// reply (enough for PING and `CLUSTER INFO`).
fn redis_query(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// SIGTERM to every child (by its own PID), then SIGKILL to those still
/// running after `grace`.
fn terminate(children: &mut [Child], grace: Duration) {
    for child in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let deadline = Instant::now() + grace;
    for child in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Cluster {
    /// Starts Redis (unless `embedded`) and `n` relay nodes.
    pub(crate) fn start(
        n: usize,
        embedded: bool,
        relay_bin: Option<&Path>,
        redis: &RedisSpec<'_>,
        server_args: &[String],
    ) -> anyhow::Result<Cluster> {
        let redis_bin = redis.server_bin;
        if n == 0 {
            bail!("--spawn-cluster needs at least 1 node");
        }
        let relay_bin = find_relay(relay_bin)?;
        let dir = std::env::temp_dir().join(format!(
            "relay-loadtest-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let dir = dir.canonicalize()?;
        let mut cluster = Cluster {
            urls: Vec::new(),
            node_pids: Vec::new(),
            redis_pid: None,
            redis_url: None,
            dir: dir.clone(),
            relay_bin: relay_bin.clone(),
            nodes: Vec::new(),
            redis: Vec::new(),
        };
        if let (false, Some(masters)) = (embedded, redis.masters) {
            cluster.start_redis_cluster(masters, redis)?;
        } else if !embedded {
            let port = free_port()?;
            let child = redis_command(redis_bin, port, &dir)
                .spawn()
                .with_context(|| format!("starting {redis_bin}"))?;
            cluster.redis_pid = Some(child.id());
            cluster.redis.push(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !redis_ping(port) {
                if Instant::now() > deadline {
                    bail!(
                        "redis-server did not answer PING (log: {})",
                        dir.join("redis.log").display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            cluster.redis_url = Some(format!("redis://127.0.0.1:{port}"));
        }
        for k in 1..=n {
            let log = std::fs::File::create(dir.join(format!("node{k}.log")))?;
            let mut cmd = Command::new(&relay_bin);
            cmd.arg("serve")
                .args(["--listen", "127.0.0.1:0", "--node-id", &format!("node{k}")]);
            if let Some(url) = &cluster.redis_url {
                cmd.args(["--redis", url]);
            }
            cmd.args(server_args);
            if std::env::var_os("RELAY_LOG_LEVEL").is_none()
                && std::env::var_os("RUST_LOG").is_none()
            {
                cmd.env("RELAY_LOG_LEVEL", "warn");
            }
            if std::env::var_os("RELAY_DRAIN_SECS").is_none() {
                cmd.env("RELAY_DRAIN_SECS", "1");
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("starting {}", relay_bin.display()))?;
            cluster.node_pids.push(child.id());
            let stdout = child.stdout.take().context("node stdout")?;
            cluster.nodes.push(child);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let mut sent = false;
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if !sent {
                                if let Some(addr) =
                                    line.trim().strip_prefix("relay listening on http://")
                                {
                                    let _ = tx.send(addr.to_owned());
                                    sent = true;
                                }
                            }
                        }
                    }
                }
            });
            let addr = match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(a) => a,
                Err(_) => {
                    let log = std::fs::read_to_string(dir.join(format!("node{k}.log")))
                        .unwrap_or_default();
                    let tail: String = log
                        .lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n");
                    bail!("node{k} did not print `relay listening on http://ADDR`; its log ends with:\n{tail}");
                }
            };
            cluster.urls.push(format!("ws://{addr}/ws"));
        }
        Ok(cluster)
    }

    /// Starts `masters` cluster-enabled redis-servers, joins them with
    /// `redis-cli --cluster create` (no replicas) and waits until every one
    /// reports `cluster_state:ok`. The nodes get a `redis+cluster://` URL
    /// naming every master; `redis_pid` is the first master (the report
    /// samples one Redis process).
    fn start_redis_cluster(&mut self, masters: usize, spec: &RedisSpec<'_>) -> anyhow::Result<()> {
        if masters < 3 {
            bail!("--redis-cluster needs at least 3 masters (Redis Cluster's minimum)");
        }
        let mut ports = Vec::new();
        while ports.len() < masters {
            let port = free_port()?;
            // The cluster bus listens on port + 10000.
            if port < 55_000
                && !ports.contains(&port)
                && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
            {
                ports.push(port);
            }
        }
        for port in &ports {
            let dir = self.dir.join(format!("redis-{port}"));
            std::fs::create_dir_all(&dir)?;
            let child = redis_command(spec.server_bin, *port, &dir)
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-require-full-coverage", "no"])
                .spawn()
                .with_context(|| format!("starting {}", spec.server_bin))?;
            self.redis_pid.get_or_insert(child.id());
            self.redis.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in &ports {
            while !redis_ping(*port) {
                if Instant::now() > deadline {
                    bail!("redis-server on port {port} did not answer PING");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let out = Command::new(spec.cli_bin)
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", spec.cli_bin))?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &ports {
            while !redis_query(*port, "CLUSTER INFO")
                .is_some_and(|info| info.contains("cluster_state:ok"))
            {
                if Instant::now() > deadline {
                    bail!("redis cluster node {port} did not reach cluster_state:ok");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        self.redis_url = Some(format!("redis+cluster://{}", seeds.join(",")));
        Ok(())
    }

    /// Stops the nodes, then Redis.
    pub(crate) fn stop(&mut self) {
        terminate(&mut self.nodes, Duration::from_secs(5));
        self.nodes.clear();
        terminate(&mut self.redis, Duration::from_secs(3));
        self.redis.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
