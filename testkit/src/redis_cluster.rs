//! A private Redis Cluster for tests: three (or more) `redis-server
//! --cluster-enabled yes` processes on free loopback ports (never 6379), no
//! persistence, optionally with replicas, joined with `redis-cli --cluster
//! create ... --cluster-replicas R --cluster-yes`, polled until every node
//! reports `cluster_state:ok`. `cluster-require-full-coverage no` keeps the
//! other shards serving while one master is down. A master can be stopped
//! (SIGKILL of the PID this helper started) and restarted on its port: it
//! comes back empty, with its node id and slots from its `nodes.conf`. Every
//! process is killed and reaped on drop. A hash slot can be migrated live
//! from its owner to another master the way `redis-cli --cluster reshard`
//! does it ([`RedisCluster::migrate_slot`]: `SETSLOT IMPORTING`/`MIGRATING`,
//! `GETKEYSINSLOT` + `MIGRATE ... KEYS` until the slot is empty, `SETSLOT
//! NODE` everywhere), with a hook between the steps so a test can keep
//! traffic flowing in each intermediate state. Needs `redis-server` and
//! `redis-cli` (Debian/Ubuntu: `apt-get install redis-server`);
//! `REDIS_SERVER_BIN` / `REDIS_CLI_BIN` select other paths.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_cluster_port;
use crate::redis::{cli_binary, query, seeds, server_binary, RedisProcess};

/// How long starting (or joining) may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `CLUSTER INFO` says the cluster is usable from this node.
fn cluster_ok(m: &RedisProcess) -> bool {
    query(m.port, "CLUSTER INFO").is_some_and(|info| info.contains("cluster_state:ok"))
}

/// A running Redis Cluster.
pub struct RedisCluster {
    masters: Vec<RedisProcess>,
    replicas: Vec<RedisProcess>,
    _dir: tempfile::TempDir,
}

impl Default for RedisCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisCluster {
    /// Starts three masters and joins them into one cluster.
    pub fn new() -> RedisCluster {
        Self::with_masters(3)
    }

    /// Starts `n` (≥ 3) masters and joins them into one cluster.
    pub fn with_masters(n: usize) -> RedisCluster {
        Self::with_replicas(n, 0)
    }

    /// Starts `n` (≥ 3) masters with `replicas` replicas each.
    pub fn with_replicas(n: usize, replicas: usize) -> RedisCluster {
        Self::try_start(n, replicas, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `n` masters with `replicas` replicas each and extra
    /// `redis-server` flags; `Err` says what failed (with the log).
    pub fn try_start(n: usize, replicas: usize, args: &[&str]) -> Result<RedisCluster, String> {
        if n < 3 {
            return Err("a Redis Cluster needs at least 3 masters".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut all = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--cluster-require-full-coverage",
            "no",
            "--appendonly",
            "no",
        ];
        all.extend_from_slice(args);
        let mut members = Vec::new();
        for i in 0..n * (1 + replicas) {
            let mut m = RedisProcess::new(
                free_cluster_port(),
                dir.path().join(format!("node{i}")),
                &all,
            );
            m.spawn().map_err(|e| {
                format!(
                    "{} did not start ({e}): these tests run a real Redis Cluster; install \
                     redis-server (e.g. `apt-get install -y redis-server`)",
                    server_binary()
                )
            })?;
            members.push(m);
        }
        let out = Command::new(cli_binary())
            .args(["--cluster", "create"])
            .args(members.iter().map(|m| format!("127.0.0.1:{}", m.port)))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {} failed: {e}", cli_binary()))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let replica_list = members.split_off(n);
        let cluster = RedisCluster {
            masters: members,
            replicas: replica_list,
            _dir: dir,
        };
        for m in cluster.masters.iter().chain(&cluster.replicas) {
            wait_until(m, "cluster_state:ok", cluster_ok)?;
        }
        Ok(cluster)
    }

    /// The backplane URL: `redis+cluster://` with every master as a seed.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", seeds(&self.ports()))
    }

    /// The ports of the masters, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.masters.iter().map(|m| m.port).collect()
    }

    /// The ports of the replicas.
    pub fn replica_ports(&self) -> Vec<u16> {
        self.replicas.iter().map(|m| m.port).collect()
    }

    /// The PID of master `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.masters[i].pid()
    }

    /// A node that is up (for cluster-wide queries).
    fn any_connection(&self) -> ::redis::Connection {
        self.masters
            .iter()
            .filter(|m| m.is_running())
            .find_map(RedisProcess::connection)
            .expect("no cluster node answers")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        ::redis::cmd("CLUSTER")
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
        ::redis::cmd("CLUSTER")
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
        let setslot = |con: &mut ::redis::Connection, state: &str, id: &str| {
            let _: () = ::redis::cmd("CLUSTER")
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
            let keys: Vec<String> = ::redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut src)
                .expect("cluster getkeysinslot");
            if keys.is_empty() {
                break;
            }
            let _: ::redis::Value = ::redis::cmd("MIGRATE")
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
            if i != from && i != to && m.is_running() {
                let mut con = m.connection().expect("connect to a master");
                setslot(&mut con, "NODE", &dst_id);
            }
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while (0..self.masters.len())
            .filter(|i| self.masters[*i].is_running())
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
        let slots: Vec<::redis::Value> =
            ::redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).ok()?;
        let slot = i64::from(slot);
        for range in slots {
            let ::redis::Value::Array(items) = range else {
                continue;
            };
            let (Some(::redis::Value::Int(lo)), Some(::redis::Value::Int(hi))) =
                (items.first(), items.get(1))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&slot) {
                if let Some(::redis::Value::Array(node)) = items.get(2) {
                    if let Some(::redis::Value::Int(port)) = node.get(1) {
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
            .filter(|i| self.masters[*i].is_running())
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
        let m = &mut self.masters[i];
        m.spawn()
            .unwrap_or_else(|e| panic!("restarting redis-server failed: {e}"));
        wait_until(m, "cluster_state:ok after restart", cluster_ok)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Deletes every key under `prefix` on every master (a store wipe of
    /// one test's data).
    pub fn wipe(&self, prefix: &str) {
        for m in self.masters.iter().filter(|m| m.is_running()) {
            let mut con = m.connection().expect("connect to a master");
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query(&mut con)
                .expect("keys");
            for key in keys {
                let _: i64 = ::redis::cmd("DEL").arg(&key).query(&mut con).expect("del");
            }
        }
    }

    /// The logs of every member, for failure messages.
    pub fn logs(&self) -> String {
        self.masters
            .iter()
            .chain(&self.replicas)
            .map(|m| format!("--- {}\n{}", m.port, m.log()))
            .collect()
    }

    /// The port of a member that exited on its own, if any.
    pub fn exited(&mut self) -> Option<u16> {
        self.masters
            .iter_mut()
            .chain(&mut self.replicas)
            .find_map(|m| m.exited().then_some(m.port))
    }

    /// Stops every member with SIGTERM (SIGKILL after `grace`).
    pub fn terminate(&mut self, grace: Duration) {
        for m in self.masters.iter_mut().chain(&mut self.replicas) {
            m.terminate(grace);
        }
    }
}

fn wait_until(
    m: &RedisProcess,
    what: &str,
    check: impl Fn(&RedisProcess) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !check(m) {
        if Instant::now() > deadline {
            return Err(format!(
                "redis cluster node {} not ready ({what}) within {START_TIMEOUT:?}:\n{}",
                m.port,
                m.log()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
