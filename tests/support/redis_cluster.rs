//! A private 3-master Redis Cluster for tests: three `redis-server
//! --cluster-enabled yes` processes on free loopback ports (never 6379), no
//! persistence, joined with `redis-cli --cluster create ... --cluster-replicas
//! 0 --cluster-yes`, polled until every node reports `cluster_state:ok`.
//! `cluster-require-full-coverage no` keeps the other shards serving while
//! one master is down. A master can be stopped (SIGKILL of the PID this
//! helper started) and restarted on its port: it comes back empty, with its
//! node id and slots from its `nodes.conf`. Every process is killed and
//! reaped on drop. Needs `redis-server` and `redis-cli` (Debian/Ubuntu:
//! `apt-get install redis-server`); `REDIS_SERVER_BIN` / `REDIS_CLI_BIN`
//! select other paths.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long starting (or joining) may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn server_binary() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
}

fn cli_binary() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into())
}

/// A free loopback port (never 6379) whose cluster bus port (+10000) is
/// free too.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if port == 6379 || port > 55_000 {
            continue;
        }
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One master of the cluster.
struct Master {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Master {
    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new(server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }

    /// `CLUSTER INFO` says the cluster is usable from this node.
    fn cluster_ok(&self) -> bool {
        let Some(mut con) = self.connection() else {
            return false;
        };
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query::<String>(&mut con)
            .map(|info| info.contains("cluster_state:ok"))
            .unwrap_or(false)
    }
}

/// A running 3-master Redis Cluster.
pub struct RedisCluster {
    masters: Vec<Master>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three masters and joins them into one cluster.
    pub fn new() -> RedisCluster {
        Self::with_masters(3)
    }

    /// Starts `n` (≥ 3) masters and joins them into one cluster.
    pub fn with_masters(n: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut masters = Vec::new();
        for i in 0..n {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let mut master = Master {
                port: free_port(),
                dir: node_dir,
                child: None,
            };
            master.spawn().unwrap_or_else(|e| {
                panic!(
                    "spawning {} failed ({e}): these tests run a real Redis Cluster; install \
                     redis-server (e.g. `apt-get install -y redis-server`)",
                    server_binary()
                )
            });
            masters.push(master);
        }
        let cluster = RedisCluster { masters, _dir: dir };
        for i in 0..n {
            cluster.wait_until(i, "redis-server answers", |m| m.connection().is_some());
        }
        let mut create = Command::new(cli_binary());
        create.args(["--cluster", "create"]);
        for m in &cluster.masters {
            create.arg(format!("127.0.0.1:{}", m.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {} failed: {e}", cli_binary()));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..n {
            cluster.wait_until(i, "cluster_state:ok", Master::cluster_ok);
        }
        cluster
    }

    fn wait_until(&self, i: usize, what: &str, check: impl Fn(&Master) -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !check(&self.masters[i]) {
            assert!(
                Instant::now() < deadline,
                "redis cluster node {} not ready ({what}) within {START_TIMEOUT:?}:\n{}",
                self.masters[i].port,
                self.masters[i].log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The backplane URL: `redis+cluster://` with every master as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The ports of the masters, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.masters.iter().map(|m| m.port).collect()
    }

    /// A node that is up (for cluster-wide queries).
    fn any_connection(&self) -> redis::Connection {
        self.masters
            .iter()
            .filter(|m| m.child.is_some())
            .find_map(Master::connection)
            .expect("no cluster node answers")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.any_connection())
            .expect("cluster keyslot")
    }

    /// Index of the master owning `key`'s slot.
    pub fn master_of(&self, key: &str) -> usize {
        let slot = self.slot(key) as i64;
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.any_connection())
            .expect("cluster slots");
        for range in slots {
            let redis::Value::Array(items) = range else {
                continue;
            };
            let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) =
                (items.first(), items.get(1))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&slot) {
                if let Some(redis::Value::Array(node)) = items.get(2) {
                    if let Some(redis::Value::Int(port)) = node.get(1) {
                        return self
                            .masters
                            .iter()
                            .position(|m| i64::from(m.port) == *port)
                            .expect("slot owner is one of ours");
                    }
                }
            }
        }
        panic!("slot {slot} of {key} has no owner");
    }

    /// Stops master `i` abruptly (SIGKILL of its PID): its shard's data is
    /// gone, the other shards keep serving.
    pub fn stop(&mut self, i: usize) {
        self.masters[i].kill();
    }

    /// Starts master `i` again on its port (empty, same node id and slots)
    /// and waits until it serves its slots again.
    pub fn start(&mut self, i: usize) {
        self.masters[i].kill();
        self.masters[i]
            .spawn()
            .unwrap_or_else(|e| panic!("restarting redis-server failed: {e}"));
        self.wait_until(i, "cluster_state:ok after restart", Master::cluster_ok);
    }

    /// Deletes every key under `prefix` on every master (a store wipe of
    /// one test's data).
    pub fn wipe(&self, prefix: &str) {
        for m in self.masters.iter().filter(|m| m.child.is_some()) {
            let mut con = m.connection().expect("connect to a master");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query(&mut con)
                .expect("keys");
            for key in keys {
                let _: i64 = redis::cmd("DEL").arg(&key).query(&mut con).expect("del");
            }
        }
    }

    /// The master logs, for failure messages.
    pub fn logs(&self) -> String {
        self.masters
            .iter()
            .map(|m| format!("--- {}\n{}", m.port, m.log()))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for m in &mut self.masters {
            m.kill();
        }
    }
}
