//! Several relay processes on one real redis-server behave as one server:
//! rooms, history, presence, names and direct messages across nodes; node
//! crashes, Redis outages, ordering under concurrency, and a real nginx load
//! balancer in front. Names, tabs, DMs and recovery across two nodes are in
//! `tests/node_contract.rs` (its `redis` topology).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use relay::protocol::ServerFrame;
use serde_json::json;
use support::nginx::Nginx;
use support::redis::RedisServer;
use support::*;

struct Cluster {
    redis: RedisServer,
    nodes: Vec<Node>,
}

fn node_on(redis: &RedisServer, id: &str, extra: &[&str]) -> Node {
    let mut args = vec!["--rate", "1000"];
    args.extend_from_slice(extra);
    Node::in_cluster(&redis.url(), id, &args, &[])
}

fn cluster(n: usize, redis: RedisServer, extra: &[&str]) -> Cluster {
    let nodes = (0..n)
        .map(|i| node_on(&redis, &format!("node{i}"), extra))
        .collect();
    Cluster { redis, nodes }
}

#[tokio::test]
async fn messages_history_and_presence_are_shared_across_nodes() {
    let c = cluster(3, RedisServer::new(), &[]);
    let mut a = guest(&c.nodes[0], "alice").await;
    let mut b = guest(&c.nodes[1], "bob").await;
    let mut d = guest(&c.nodes[2], "carol").await;
    let ja = js(&a.join("lobby").await);
    let jb = js(&b.join("lobby").await);
    assert_eq!(ja["epoch"], jb["epoch"]);
    assert_eq!(jb["presence"], json!(["alice", "bob"]));
    assert_eq!(js(&a.recv_type("user_joined").await)["user"], "bob");
    a.say("lobby", "hello from node0").await;
    let m = js(&b.recv_type("message").await);
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str(), m["id"].as_u64()),
        (Some("alice"), Some("hello from node0"), Some(1))
    );
    let jd = js(&d.join("lobby").await);
    assert_eq!(jd["presence"], json!(["alice", "bob", "carol"]));
    assert_eq!(jd["history"][0]["text"], "hello from node0");
    assert_eq!(jd["epoch"], ja["epoch"]);
    for x in [&mut a, &mut b] {
        assert_eq!(js(&x.recv_type("user_joined").await)["user"], "carol");
    }
    d.say("lobby", "and from node2").await;
    for x in [&mut a, &mut b] {
        let m = js(&x.recv_type("message").await);
        assert_eq!(
            (m["id"].as_u64(), m["from"].as_str()),
            (Some(2), Some("carol"))
        );
    }
    d.expect_silence(200).await;
    let p = js(&a.request(json!({"type":"who","room":"lobby"})).await);
    assert_eq!(p["users"], json!(["alice", "bob", "carol"]));
    b.request(json!({"type":"leave","room":"lobby"})).await;
    for x in [&mut a, &mut d] {
        let ul = js(&x.recv_type("user_left").await);
        assert_eq!(
            (ul["user"].as_str(), ul["reason"].as_str()),
            (Some("bob"), Some("leave"))
        );
    }
    d.close().await;
    let ul = js(&a.recv_type("user_left").await);
    assert_eq!(
        (ul["user"].as_str(), ul["reason"].as_str()),
        (Some("carol"), Some("disconnect"))
    );
}

#[tokio::test]
async fn a_killed_node_leaves_no_ghosts() {
    let mut c = cluster(3, RedisServer::new(), &[]);
    let mut watchers = [
        guest(&c.nodes[0], "w0").await,
        guest(&c.nodes[1], "w1").await,
    ];
    for w in watchers.iter_mut() {
        w.join("g").await;
    }
    watchers[0].recv_type("user_joined").await;
    let mut victims = Vec::new();
    for name in ["v1", "v2", "v3"] {
        let mut v = guest(&c.nodes[2], name).await;
        v.join("g").await;
        victims.push(v);
    }
    for w in watchers.iter_mut() {
        for _ in 0..3 {
            w.recv_type("user_joined").await;
        }
    }
    let killed_at = std::time::Instant::now();
    c.nodes[2].kill9();
    for w in watchers.iter_mut() {
        let mut left = BTreeSet::new();
        while left.len() < 3 {
            match w.recv_type("user_left").await {
                ServerFrame::UserLeft { user, reason, .. } => {
                    assert_eq!(reason.as_str(), "timeout");
                    assert!(left.insert(user.clone()), "{user} left twice");
                }
                _ => unreachable!(),
            }
        }
        assert_eq!(
            left,
            BTreeSet::from(["v1".to_owned(), "v2".into(), "v3".into()])
        );
    }
    // presence TTL 600 ms + one heartbeat 200 ms (+ scheduling slack)
    assert!(
        killed_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        killed_at.elapsed()
    );
    for w in watchers.iter_mut() {
        w.expect_silence(600).await;
    }
    let p = js(&watchers[0].request(json!({"type":"who","room":"g"})).await);
    assert_eq!(p["users"], json!(["w0", "w1"]));
    // Their names are free again.
    let v = Connect::new(format!("{}?user=v1", c.nodes[0].url()))
        .open()
        .await
        .expect("v1 is free");
    v.close().await;
    drop(victims);
}

#[tokio::test]
async fn redis_outage_and_recovery() {
    let mut c = cluster(2, RedisServer::persistent(), &[]);
    let mut a = guest(&c.nodes[0], "alice").await;
    let mut b = guest(&c.nodes[1], "bob").await;
    let epoch = js(&a.join("o").await)["epoch"].clone();
    b.join("o").await;
    a.recv_type("user_joined").await;
    let mut acked = vec![a.say("o", "before").await];
    b.recv_type("message").await;

    c.redis.stop();
    eventually(
        "readyz 503 on both nodes",
        Duration::from_secs(5),
        || async {
            get(c.nodes[0].addr, "/readyz").await.0 == 503
                && get(c.nodes[1].addr, "/readyz").await.0 == 503
        },
    )
    .await;
    let e = js(&a
        .request(json!({"type":"send","room":"o","text":"during"}))
        .await);
    assert_eq!(e["code"], "unavailable");
    let e = js(&b.request(json!({"type":"who","room":"o"})).await);
    assert_eq!(e["code"], "unavailable");
    // Sockets stay open; local things still work.
    assert_eq!(frame_type(&a.request(json!({"type":"ping"})).await), "pong");
    assert_eq!(get(c.nodes[0].addr, "/healthz").await.0, 200);

    c.redis.start();
    eventually("ready again", Duration::from_secs(10), || async {
        get(c.nodes[0].addr, "/readyz").await.0 == 200
            && get(c.nodes[1].addr, "/readyz").await.0 == 200
    })
    .await;
    // Cross-node delivery works again without a restart.
    let mut delivered = false;
    for _ in 0..50 {
        if let ServerFrame::Ack { id, .. } = a
            .request(json!({"type":"send","room":"o","text":"after"}))
            .await
        {
            acked.push(id);
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered);
    let m = js(&b.recv_type("message").await);
    assert_eq!(m["text"], "after");
    acked.push(b.say("o", "reply").await);
    assert_eq!(js(&a.recv_type("message").await)["text"], "reply");
    // Every acked message is in the history, and the epoch held.
    let h = js(&b.request(json!({"type":"history","room":"o"})).await);
    let ids: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, acked);
    let mut late = guest(&c.nodes[1], "late").await;
    assert_eq!(js(&late.join("o").await)["epoch"], epoch);
}

#[tokio::test]
async fn redis_restarted_empty_means_a_new_epoch() {
    let mut c = cluster(1, RedisServer::new(), &[]);
    let mut a = guest(&c.nodes[0], "alice").await;
    let epoch = js(&a.join("e").await)["epoch"].as_str().unwrap().to_owned();
    a.say("e", "lost soon").await;
    c.redis.stop();
    c.redis.start();
    eventually("ready again", Duration::from_secs(10), || async {
        get(c.nodes[0].addr, "/readyz").await.0 == 200
    })
    .await;
    // The first command may still meet the connection that died with the
    // old Redis and answer `unavailable`; clients retry.
    let mut b = None;
    for _ in 0..50 {
        if let Ok(client) = Connect::new(format!("{}?user=bob", c.nodes[0].url()))
            .open()
            .await
        {
            b = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b = b.expect("bob connects after the restart");
    let j = js(&b
        .request(json!({"type":"join","room":"e","since":1,"epoch":epoch}))
        .await);
    assert_eq!(j["recovered"], false);
    assert_ne!(j["epoch"].as_str().unwrap(), epoch);
}

/// After Redis restarts, with its data or wiped, the first handshake on
/// every node succeeds, though no node has used its command connection
/// since (a long heartbeat): the broken connection is replaced and the call
/// retried once instead of answering 503 `unavailable`.
#[tokio::test]
async fn the_first_request_after_a_redis_restart_succeeds() {
    for (kind, mut redis) in [
        ("persistent", RedisServer::persistent()),
        ("wiped", RedisServer::new()),
    ] {
        let nodes: Vec<Node> = (0..2)
            .map(|i| {
                Node::start(&[
                    "--redis",
                    &redis.url(),
                    "--node-id",
                    &format!("restart{i}"),
                    "--heartbeat-ms",
                    "30000",
                ])
            })
            .collect();
        for n in &nodes {
            guest(n, "warm").await.close().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.stop();
        redis.start();
        // Long enough for the old connections to see their end.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, n) in nodes.iter().enumerate() {
            let first = Connect::new(format!("{}?user=first{i}", n.url()))
                .open()
                .await;
            match first {
                Ok(c) => c.close().await,
                Err(r) => panic!(
                    "{kind} restart: first handshake on node {i}: {} {}\n{}",
                    r.status,
                    r.body,
                    n.logs()
                ),
            }
        }
    }
}

/// `redis-cli -p PORT ARGS...` output, trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `--room-idle-ttl-secs`: a room no one is in is forgotten (its keys are
/// gone from Redis, a later join sees a new epoch and no history) once idle
/// for the TTL; a room with someone in it keeps its state however long it
/// is quiet.
#[tokio::test]
async fn idle_rooms_expire_occupied_rooms_do_not() {
    let redis = RedisServer::new();
    let nodes = [
        node_on(&redis, "ttl0", &["--room-idle-ttl-secs", "1"]),
        node_on(&redis, "ttl1", &["--room-idle-ttl-secs", "1"]),
    ];
    let mut a = guest(&nodes[0], "alice").await;
    let idle_epoch = js(&a.join("idle").await)["epoch"].clone();
    a.say("idle", "soon forgotten").await;
    let mut c = guest(&nodes[1], "carol").await;
    let busy_epoch = js(&c.join("busy").await)["epoch"].clone();
    c.say("busy", "kept").await;
    // While alice is in the room its keys do not expire.
    assert_eq!(
        redis_cli(redis.port(), &["TTL", "relay:{idle}:epoch"]),
        "-1"
    );
    a.close().await;
    eventually("alice's leave starts the idle TTL", WAIT, || async {
        redis_cli(redis.port(), &["TTL", "relay:{idle}:epoch"]) != "-1"
    })
    .await;
    eventually("the idle room's keys expire", WAIT, || async {
        redis_cli(
            redis.port(),
            &[
                "EXISTS",
                "relay:{idle}:epoch",
                "relay:{idle}:seq",
                "relay:{idle}:history",
            ],
        ) == "0"
    })
    .await;
    let mut b = guest(&nodes[1], "bob").await;
    let j = js(&b.join("idle").await);
    assert_ne!(j["epoch"], idle_epoch, "a new epoch after expiry");
    assert_eq!(j["history"].as_array().unwrap().len(), 0);
    assert_eq!(b.say("idle", "fresh").await, 1, "ids start again");
    // Carol stayed in `busy` the whole time: same epoch, history kept.
    let mut d = guest(&nodes[0], "dave").await;
    let j = js(&d.join("busy").await);
    assert_eq!(j["epoch"], busy_epoch);
    assert_eq!(j["history"][0]["text"], "kept");
    assert_eq!(redis_cli(redis.port(), &["TTL", "relay:{busy}:seq"]), "-1");
    // `0` keeps rooms forever.
    let keep = node_on(&redis, "ttl2", &["--room-idle-ttl-secs", "0"]);
    let mut e = guest(&keep, "erin").await;
    e.join("forever").await;
    e.say("forever", "stays").await;
    e.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        redis_cli(redis.port(), &["TTL", "relay:{forever}:epoch"]),
        "-1"
    );
}

#[tokio::test]
async fn concurrent_senders_on_three_nodes_see_one_order() {
    let c = cluster(3, RedisServer::new(), &[]);
    let per_sender = 40u64;
    let mut receivers = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let mut r = guest(n, &format!("r{i}")).await;
        r.join("ord").await;
        receivers.push(r);
    }
    let mut senders = Vec::new();
    for i in 0..15 {
        let mut s = guest(&c.nodes[i % 3], &format!("s{i}")).await;
        s.join("ord").await;
        senders.push(s);
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                for k in 0..per_sender {
                    s.say("ord", &format!("{k}")).await;
                }
                s
            })
        })
        .collect();
    let total = per_sender * 15;
    let mut sequences = Vec::new();
    for mut r in receivers {
        let mut ids = Vec::new();
        while (ids.len() as u64) < total {
            if let ServerFrame::Message(m) = r.recv().await {
                ids.push(m.id);
            }
        }
        sequences.push(ids);
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected: Vec<u64> = (1..=total).collect();
    for s in &sequences {
        assert_eq!(s, &expected, "gap-free, in order, identical on every node");
    }
}

/// Joins `room` while messages stream in and collects the ids this client
/// sees (history of `joined`, then live messages) up to `last`.
async fn ids_seen_by_a_joiner(mut c: Client, room: &str, last: u64) -> Vec<u64> {
    let mut ids = match c.join(room).await {
        ServerFrame::Joined { history, .. } => history
            .into_iter()
            .map(|h| h.message.id)
            .collect::<Vec<_>>(),
        other => panic!("joined expected, got {other:?}"),
    };
    while ids.last().copied().unwrap_or(0) < last {
        if let ServerFrame::Message(m) = c.recv().await {
            ids.push(m.id);
        }
    }
    ids
}

#[tokio::test]
async fn joining_during_traffic_sees_every_message_once() {
    // The `joined` snapshot is read from Redis while the same messages are
    // still on their way through pub/sub: each must reach the joiner once,
    // in `history` or live, never in both and never neither.
    let c = cluster(2, RedisServer::new(), &[]);
    let (senders, per_sender) = (4u64, 60u64);
    let total = senders * per_sender;
    let mut joiners = Vec::new();
    for i in 0..16 {
        joiners.push(guest(&c.nodes[i % 2], &format!("j{i}")).await);
    }
    let mut tasks = Vec::new();
    for i in 0..senders {
        let mut s = guest(&c.nodes[0], &format!("s{i}")).await;
        s.join("race").await;
        tasks.push(tokio::spawn(async move {
            for k in 0..per_sender {
                s.say("race", &format!("{k}")).await;
            }
            s
        }));
    }
    let mut watchers = Vec::new();
    for j in joiners {
        watchers.push(tokio::spawn(ids_seen_by_a_joiner(j, "race", total)));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (i, w) in watchers.into_iter().enumerate() {
        let ids = w.await.unwrap();
        let first = ids.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..=total).collect();
        assert_eq!(ids, expected, "joiner j{i}: every id once, in order");
    }
}

#[tokio::test]
async fn three_nodes_behind_nginx() {
    let c = cluster(3, RedisServer::new(), &[]);
    let addrs: Vec<_> = c.nodes.iter().map(|n| n.addr).collect();
    let lb = Nginx::start(&addrs);
    let mut clients = Vec::new();
    let mut nodes_seen = BTreeSet::new();
    for i in 0..9 {
        let mut cl = Connect::new(format!("{}?user=u{i}", lb.url()))
            .open()
            .await
            .expect("through nginx");
        nodes_seen.insert(cl.session.split('/').next().unwrap().to_owned());
        cl.join("lb").await;
        clients.push(cl);
    }
    assert_eq!(
        nodes_seen.len(),
        3,
        "least_conn spreads clients over every node: {nodes_seen:?}"
    );
    for (i, client) in clients.iter_mut().enumerate() {
        for _ in (i + 1)..9 {
            client.recv_type("user_joined").await;
        }
    }
    let id = clients[0].say("lb", "through the balancer").await;
    for cl in clients.iter_mut().skip(1) {
        let m = js(&cl.recv_type("message").await);
        assert_eq!(
            (m["id"].as_u64(), m["text"].as_str()),
            (Some(id), Some("through the balancer"))
        );
    }
    let (s, _) = get(lb.addr, "/readyz").await;
    assert_eq!(s, 200);
    let (s, body) = get(lb.addr, "/").await;
    assert_eq!(s, 200);
    assert!(body.to_lowercase().contains("<html"));
}

#[tokio::test]
async fn corrupted_store_answers_internal_and_the_connection_survives() {
    let c = cluster(1, RedisServer::new(), &[]);
    let mut a = guest(&c.nodes[0], "alice").await;
    a.join("fine").await;
    // Someone wrote a wrong type where the room's history list lives.
    let status = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &c.redis.port().to_string(),
            "SET",
            "relay:{broken}:history",
            "not a list",
        ])
        .output()
        .expect("redis-cli");
    assert!(status.status.success());
    let e = js(&a.request(json!({"type":"history","room":"broken"})).await);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("internal"))
    );
    assert_eq!(e["ref"], 2);
    // Nothing else is affected.
    assert_eq!(a.say("fine", "still works").await, 1);
}
