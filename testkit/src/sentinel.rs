//! A private Redis Sentinel setup for failover tests: a master, one replica
//! (`--replicaof`) and three sentinels (`redis-server FILE --sentinel`, each
//! with its own writable config: `sentinel monitor NAME 127.0.0.1 PORT 2`,
//! down after 1 s, failover timeout 5 s), all on free loopback ports. Ready
//! when the replica's link is up and every sentinel knows the replica and
//! the two other sentinels, so a [`RedisSentinel::kill_master`] is followed by
//! a failover within seconds. [`RedisSentinel::current_master`] asks the
//! sentinels (`SENTINEL get-master-addr-by-name`). Every process is killed
//! and reaped on drop.

use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::redis::{query, seeds, RedisProcess};

/// The name the sentinels monitor.
pub const MASTER_NAME: &str = "relay";

/// How long start-up and a failover may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A master, a replica and three sentinels.
pub struct RedisSentinel {
    /// Index 0 starts as the master, 1 as its replica.
    data: Vec<RedisProcess>,
    sentinels: Vec<RedisProcess>,
    _dir: tempfile::TempDir,
}

/// Counts the entries of a RESP array reply (`*N`), 0 when not an array.
fn array_len(reply: &str) -> usize {
    reply
        .strip_prefix('*')
        .and_then(|r| r.split("\r\n").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl RedisSentinel {
    /// Starts everything and waits until a failover would work.
    pub fn new() -> RedisSentinel {
        Self::try_new().unwrap_or_else(|e| panic!("redis sentinel did not start: {e}"))
    }

    /// Like [`RedisSentinel::new`], as a `Result`.
    pub fn try_new() -> Result<RedisSentinel, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mport = free_port();
        let mut master =
            RedisProcess::new(mport, dir.path().join("master"), &["--appendonly", "no"]);
        master.spawn()?;
        let mp = mport.to_string();
        let mut replica = RedisProcess::new(
            free_port(),
            dir.path().join("replica"),
            &["--appendonly", "no", "--replicaof", "127.0.0.1", &mp],
        );
        replica.spawn()?;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let sdir = dir.path().join(format!("sentinel{i}"));
            std::fs::create_dir_all(&sdir).map_err(|e| e.to_string())?;
            let conf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {mport} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n"
                ),
            )
            .map_err(|e| e.to_string())?;
            let mut s = RedisProcess::new(port, sdir, &["--sentinel"]);
            s.config = Some(conf);
            s.spawn()?;
            sentinels.push(s);
        }
        let setup = RedisSentinel {
            data: vec![master, replica],
            sentinels,
            _dir: dir,
        };
        setup.wait("the replica's link is up", |s| {
            query(s.data[0].port, "INFO replication")
                .is_some_and(|i| i.contains("connected_slaves:1") && i.contains("online"))
        })?;
        setup.wait("every sentinel knows the replica and its peers", |s| {
            s.sentinels.iter().all(|x| {
                query(x.port, &format!("SENTINEL replicas {MASTER_NAME}"))
                    .is_some_and(|r| array_len(&r) == 1)
                    && query(x.port, &format!("SENTINEL sentinels {MASTER_NAME}"))
                        .is_some_and(|r| array_len(&r) == 2)
            })
        })?;
        Ok(setup)
    }

    fn wait(&self, what: &str, check: impl Fn(&Self) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        while !check(self) {
            if Instant::now() > deadline {
                return Err(format!("{what}: not within {TIMEOUT:?}\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The backplane URL: `redis+sentinel://` with every sentinel and the
    /// master name.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://{}/{MASTER_NAME}",
            seeds(&self.sentinel_ports())
        )
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The ports of the two data servers (first the initial master).
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|s| s.port).collect()
    }

    /// The master's port as the first answering sentinel reports it.
    pub fn current_master(&self) -> Option<u16> {
        self.sentinels
            .iter()
            .filter(|s| s.is_running())
            .find_map(|s| {
                let reply = query(
                    s.port,
                    &format!("SENTINEL get-master-addr-by-name {MASTER_NAME}"),
                )?;
                // *2 $9 127.0.0.1 $N PORT
                reply.split("\r\n").nth(4)?.parse().ok()
            })
    }

    /// SIGKILLs the current master (by the PID the kit started) and returns
    /// its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.current_master().expect("the sentinels name a master");
        let m = self
            .data
            .iter_mut()
            .find(|d| d.port == port)
            .expect("the master is one of ours");
        m.kill();
        port
    }

    /// Waits until the sentinels name a master other than `old` that
    /// answers as a master, and returns its port.
    pub fn wait_failover(&self, old: u16) -> u16 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(p) = self.current_master().filter(|p| *p != old) {
                if query(p, "INFO replication").is_some_and(|i| i.contains("role:master")) {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no failover away from {old} within {TIMEOUT:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a killed data server again on its port (the sentinels turn it
    /// into a replica of the new master).
    pub fn restart(&mut self, port: u16) {
        let d = self
            .data
            .iter_mut()
            .find(|d| d.port == port)
            .expect("one of our data servers");
        d.spawn().unwrap_or_else(|e| panic!("restart {port}: {e}"));
    }

    /// Every log, for failure messages.
    pub fn logs(&self) -> String {
        self.data
            .iter()
            .chain(&self.sentinels)
            .map(|m| format!("--- {}\n{}", m.port, m.log()))
            .collect()
    }
}

impl Default for RedisSentinel {
    fn default() -> Self {
        Self::new()
    }
}
