//! A private 3-master Redis Cluster for tests: three `redis-server
//! --cluster-enabled yes` processes on free loopback ports (never 6379), no
//! persistence, joined with `redis-cli --cluster create ... --cluster-replicas
//! 0 --cluster-yes`, polled until every node reports `cluster_state:ok`.
//! `cluster-require-full-coverage no` keeps the other shards serving while
//! one master is down. A master can be stopped (SIGKILL of the PID this
//! helper started) and restarted on its port: it comes back empty, with its
//! node id and slots from its `nodes.conf`. Every process is killed and
//! reaped on drop. A hash slot can be migrated live from its owner to another
//! master the way `redis-cli --cluster reshard` does it ([`RedisCluster::
//! migrate_slot`]: `SETSLOT IMPORTING`/`MIGRATING`, `GETKEYSINSLOT` +
//! `MIGRATE ... KEYS` until the slot is empty, `SETSLOT NODE` everywhere),
//! with a hook between the steps so a test can keep traffic flowing in each
//! intermediate state. Needs `redis-server` and `redis-cli` (Debian/Ubuntu:
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
        self.owner_of_slot(self.slot(key))
    }

    /// The cluster node id of master `i` (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> String {
        let mut con = self.masters[i].connection().expect("connect to a master");
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut con)
            .expect("cluster myid")
    }

    /// Migrates hash slot `slot` live from its owner to master `to`, the
    /// standard way, calling `between(step)` after each step (the slot is
    /// then in that intermediate state) so a test can make traffic flow
    /// through every state:
    ///
    /// 1. `"importing"`: `CLUSTER SETSLOT slot IMPORTING src` on the target;
    /// 2. `"migrating"`: `CLUSTER SETSLOT slot MIGRATING dst` on the source;
    /// 3. `"moved-keys"`: `CLUSTER GETKEYSINSLOT` + `MIGRATE 127.0.0.1 port ""
    ///    0 5000 KEYS ...` repeated until the source holds no key of the slot
    ///    (keys created meanwhile are moved by the next round);
    /// 4. `"target-owns"`: `CLUSTER SETSLOT slot NODE dst` on the target;
    /// 5. `"done"`: the same on the source (which then drops its sharded
    ///    subscriptions of the slot with `sunsubscribe` pushes) and on every
    ///    other master, then waits until every master's `CLUSTER SLOTS`
    ///    names the target as the owner.
    ///
    /// Returns the number of keys moved.
    pub fn migrate_slot(&self, slot: u16, to: usize, mut between: impl FnMut(&str)) -> usize {
        let from = self.owner_of_slot(slot);
        assert_ne!(from, to, "slot {slot} already lives on master {to}");
        let (src_id, dst_id) = (self.node_id(from), self.node_id(to));
        let mut src = self.masters[from].connection().expect("connect to source");
        let mut dst = self.masters[to].connection().expect("connect to target");
        let setslot = |con: &mut redis::Connection, state: &str, id: &str| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .query(con)
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {state} {id}: {e}"));
        };
        setslot(&mut dst, "IMPORTING", &src_id);
        between("importing");
        setslot(&mut src, "MIGRATING", &dst_id);
        between("migrating");
        let mut moved = 0;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut src)
                .expect("cluster getkeysinslot");
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.masters[to].port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut src)
                .unwrap_or_else(|e| panic!("MIGRATE of slot {slot}: {e}"));
            moved += keys.len();
        }
        between("moved-keys");
        setslot(&mut dst, "NODE", &dst_id);
        between("target-owns");
        setslot(&mut src, "NODE", &dst_id);
        for (i, m) in self.masters.iter().enumerate() {
            if i != from && i != to && m.child.is_some() {
                let mut con = m.connection().expect("connect to a master");
                setslot(&mut con, "NODE", &dst_id);
            }
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while (0..self.masters.len())
            .filter(|i| self.masters[*i].child.is_some())
            .any(|i| self.owner_seen_by(i, slot) != Some(to))
        {
            assert!(
                Instant::now() < deadline,
                "slot {slot} not owned by master {to} everywhere:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        between("done");
        moved
    }

    /// Index of the master owning `slot`, as master `at` sees it.
    fn owner_seen_by(&self, at: usize, slot: u16) -> Option<usize> {
        let mut con = self.masters[at].connection()?;
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).ok()?;
        let slot = i64::from(slot);
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
                        return self.masters.iter().position(|m| i64::from(m.port) == *port);
                    }
                }
            }
        }
        None
    }

    /// Index of the master owning `slot` (as the first master that answers
    /// sees it).
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        (0..self.masters.len())
            .filter(|i| self.masters[*i].child.is_some())
            .find_map(|i| self.owner_seen_by(i, slot))
            .unwrap_or_else(|| panic!("slot {slot} has no owner"))
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
