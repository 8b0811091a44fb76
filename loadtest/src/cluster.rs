//! `--spawn-cluster N`: a private redis-server (or, with `--redis-cluster M`,
//! a private M-master Redis Cluster) and N relay nodes on loopback (with
//! `--nginx`, behind a private nginx, the clients' only target), started
//! with the `testkit` guards and stopped (SIGTERM, then SIGKILL, each by its
//! own PID) when the run ends, even on error. The node logs stay in `dir`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use testkit::nginx::Nginx;
use testkit::redis::RedisServer;
use testkit::redis_cluster::RedisCluster;
use testkit::Node;

/// A running private cluster.
pub(crate) struct Cluster {
    pub(crate) urls: Vec<String>,
    pub(crate) node_pids: Vec<u32>,
    pub(crate) redis_pid: Option<u32>,
    pub(crate) redis_url: Option<String>,
    pub(crate) dir: PathBuf,
    pub(crate) relay_bin: PathBuf,
    nodes: Vec<Node>,
    redis: Option<Redis>,
    nginx: Option<Nginx>,
}

enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
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

/// Flags of every private redis-server besides testkit's defaults.
const REDIS_ARGS: [&str; 4] = ["--protected-mode", "yes", "--maxclients", "10000"];

impl Cluster {
    /// Starts Redis (unless `embedded`), `n` relay nodes and, with `nginx`,
    /// a load balancer in front of them.
    pub(crate) fn start(
        n: usize,
        embedded: bool,
        nginx: bool,
        relay_bin: Option<&Path>,
        redis: &RedisSpec<'_>,
        server_args: &[String],
    ) -> anyhow::Result<Cluster> {
        if n == 0 {
            bail!("--spawn-cluster needs at least 1 node");
        }
        let relay_bin = testkit::relay_bin(relay_bin).map_err(|e| anyhow!(e))?;
        // testkit reads the Redis binaries from the environment.
        std::env::set_var("REDIS_SERVER_BIN", redis.server_bin);
        std::env::set_var("REDIS_CLI_BIN", redis.cli_bin);
        let dir = std::env::temp_dir().join(format!(
            "relay-loadtest-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let dir = dir.canonicalize()?;
        let backplane = match (embedded, redis.masters) {
            (true, _) => None,
            (false, Some(m)) => {
                if m < 3 {
                    bail!("--redis-cluster needs at least 3 masters (Redis Cluster's minimum)");
                }
                Some(Redis::Cluster(
                    RedisCluster::try_start(m, 0, &REDIS_ARGS).map_err(|e| anyhow!(e))?,
                ))
            }
            (false, None) => Some(Redis::Single(
                RedisServer::try_with_args(&REDIS_ARGS).map_err(|e| anyhow!(e))?,
            )),
        };
        let (redis_url, redis_pid) = match &backplane {
            None => (None, None),
            // The report samples one Redis process: the first master.
            Some(Redis::Cluster(c)) => (Some(c.url()), c.pid(0)),
            Some(Redis::Single(r)) => (Some(r.url()), r.pid()),
        };
        let mut cluster = Cluster {
            urls: Vec::new(),
            node_pids: Vec::new(),
            redis_pid,
            redis_url,
            dir: dir.clone(),
            relay_bin: relay_bin.clone(),
            nodes: Vec::new(),
            redis: backplane,
            nginx: None,
        };
        for k in 1..=n {
            let name = format!("node{k}");
            let mut node = Node::builder()
                .bin(&relay_bin)
                .args(["--node-id", &name])
                .inherit_log_level()
                .log_in(&dir, &name);
            if let Some(url) = &cluster.redis_url {
                node = node.args(["--redis", url]);
            }
            node = node.args(server_args);
            if std::env::var_os("RELAY_LOG_LEVEL").is_none()
                && std::env::var_os("RUST_LOG").is_none()
            {
                node = node.env("RELAY_LOG_LEVEL", "warn");
            }
            if std::env::var_os("RELAY_DRAIN_SECS").is_none() {
                node = node.env("RELAY_DRAIN_SECS", "1");
            }
            let node = node.start().map_err(|e| anyhow!("{name}: {e}"))?;
            cluster.node_pids.push(node.pid());
            cluster.urls.push(node.url());
            cluster.nodes.push(node);
        }
        if nginx {
            let upstreams: Vec<_> = cluster.nodes.iter().map(|n| n.addr).collect();
            let lb = Nginx::try_start(&upstreams, None).map_err(|e| anyhow!("nginx: {e}"))?;
            cluster.urls = vec![lb.url()];
            cluster.nginx = Some(lb);
        }
        Ok(cluster)
    }

    /// Stops nginx, the nodes (all at once: they drain in parallel), then
    /// Redis.
    pub(crate) fn stop(&mut self) {
        self.nginx = None;
        for node in &self.nodes {
            node.sigterm();
        }
        for node in &mut self.nodes {
            node.terminate(Duration::from_secs(5));
        }
        self.nodes.clear();
        match self.redis.take() {
            Some(Redis::Single(mut r)) => r.terminate(Duration::from_secs(3)),
            Some(Redis::Cluster(mut c)) => c.terminate(Duration::from_secs(3)),
            None => {}
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
