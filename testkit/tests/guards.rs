//! The guards against the real binaries: each starts, serves, and leaves no
//! process behind when dropped (checked by PID in /proc). Sentinel fails
//! over after `kill_master`; PostgreSQL answers `psql` on its database;
//! nginx proxies HTTP and the WebSocket upgrade to a relay node; a Redis
//! Cluster with replicas serves every slot. Needs redis-server, redis-cli,
//! nginx, postgresql 15 and the relay binary (`cargo build --bin relay`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::nginx::Nginx;
use testkit::postgres::Postgres;
use testkit::redis::query;
use testkit::redis_cluster::RedisCluster;
use testkit::sentinel::RedisSentinel;
use testkit::{cmd, Connect, Node};

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (bounded) until `pid` is gone: a reaped child disappears at once,
/// but nginx workers and the postmaster's children take a moment.
fn gone(pid: u32) -> bool {
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sentinel_fails_over_when_the_master_is_killed() {
    let mut s = RedisSentinel::new();
    let first = s.current_master().expect("a master");
    assert_eq!(first, s.data_ports()[0]);
    assert!(s.url().starts_with("redis+sentinel://127.0.0.1:"));
    assert!(s.url().ends_with("/relay"));
    assert_eq!(query(first, "SET k v").as_deref(), Some("+OK\r\n"));
    // The replica has it before the master goes.
    assert_eq!(query(first, "WAIT 1 5000").as_deref(), Some(":1\r\n"));

    let killed = s.kill_master();
    assert_eq!(killed, first);
    let next = s.wait_failover(killed);
    assert_eq!(next, s.data_ports()[1], "the replica was promoted");
    assert!(query(next, "INFO replication").is_some_and(|i| i.contains("role:master")));
    assert!(
        query(next, "GET k").is_some_and(|r| r.contains('v')),
        "replicated data"
    );
}

#[test]
fn postgres_serves_a_created_database_and_stops_on_drop() {
    let pg = Postgres::new();
    let url = pg.createdb("relay_test");
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/relay_test", pg.port())
    );
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["-d", "relay_test", "-tAc", "select current_database()"])
        .output()
        .expect("psql");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "relay_test");
    let pid = pg.postmaster_pid().expect("postmaster.pid");
    assert!(alive(pid));
    drop(pg);
    assert!(gone(pid), "the postmaster {pid} was stopped");
}

#[tokio::test]
async fn nginx_balances_websockets_over_relay_nodes() {
    let a = Node::start(&[]);
    let b = Node::start(&[]);
    let lb = Nginx::start(&[a.addr, b.addr]);
    let (status, body) = testkit::get(lb.addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let mut c = Connect::new(format!("{}?user=ann", lb.url()))
        .open()
        .await
        .expect("upgrade through nginx");
    c.join("lobby").await;
    let id = c.say("lobby", "through the balancer").await;
    assert!(id > 0);
    let pong = c.request(cmd::ping()).await;
    assert_eq!(testkit::frame_type(&pong), "pong");
    c.close().await;

    let pid = lb.pid().expect("running");
    drop(lb);
    assert!(gone(pid), "nginx {pid} stopped");
    let node_pid = a.pid();
    drop(a);
    assert!(gone(node_pid), "node {node_pid} killed and reaped");
}

#[test]
fn a_cluster_with_replicas_serves_every_slot() {
    let c = RedisCluster::with_replicas(3, 1);
    assert_eq!(c.ports().len(), 3);
    assert_eq!(c.replica_ports().len(), 3);
    for p in c.ports().iter().chain(&c.replica_ports()) {
        let info = query(*p, "CLUSTER INFO").unwrap_or_default();
        assert!(info.contains("cluster_state:ok"), "{p}: {info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{p}: {info}");
    }
    let pids: Vec<u32> = (0..3).filter_map(|i| c.pid(i)).collect();
    drop(c);
    assert!(pids.into_iter().all(gone));
}
