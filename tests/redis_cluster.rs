//! Relay processes on a real 3-master Redis Cluster (`--redis
//! redis+cluster://...`, sharded pub/sub): rooms, history, presence and
//! direct messages across nodes, and a real shard outage: one master is
//! killed (SIGKILL of the PID the test started) and restarted while traffic
//! flows; rooms on the other shards keep working the whole time, rooms on
//! the stopped shard answer `unavailable` and then recover (new epoch: the
//! shard restarted empty) with delivery across nodes restored.

#[path = "support/redis_cluster.rs"]
mod redis_cluster_support;
mod support;

use std::time::Duration;

use redis_cluster_support::RedisCluster;
use serde_json::json;
use support::*;

fn relay_on(cluster: &RedisCluster, id: &str) -> Node {
    let url = cluster.url();
    Node::start(&[
        "--redis",
        url.as_str(),
        "--node-id",
        id,
        "--heartbeat-ms",
        "200",
        "--redis-timeout-ms",
        "400",
        "--rate",
        "1000",
    ])
}

/// One room name per master (index = master), found by slot.
fn room_per_master(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let masters = cluster.ports().len();
    let mut rooms: Vec<Option<String>> = vec![None; masters];
    for i in 0.. {
        if rooms.iter().all(Option::is_some) {
            break;
        }
        let room = format!("{prefix}{i}");
        let owner = cluster.master_of(&format!("{{{room}}}"));
        if rooms[owner].is_none() {
            rooms[owner] = Some(room);
        }
    }
    rooms.into_iter().map(Option::unwrap).collect()
}

fn is_message(f: &relay::protocol::ServerFrame, room: &str, text: &str) -> bool {
    let v = js(f);
    frame_type(f) == "message" && v["room"] == room && v["text"] == text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_history_presence_and_dms_across_nodes() {
    let rc = RedisCluster::new();
    let nodes: Vec<Node> = (0..3).map(|i| relay_on(&rc, &format!("n{i}"))).collect();
    let rooms = room_per_master(&rc, "lobby");
    let mut a = guest(&nodes[0], "alice").await;
    let mut b = guest(&nodes[1], "bob").await;
    let mut c = guest(&nodes[2], "carol").await;
    // The guest name is claimed cluster-wide.
    let taken = Connect::new(format!("{}?user=alice", nodes[2].url()))
        .open()
        .await
        .err()
        .expect("alice is taken");
    assert_eq!(taken.body["error"], "name_taken");

    // One room on every shard: messages, history and presence everywhere.
    for room in &rooms {
        let ja = js(&a.join(room).await);
        let jb = js(&b.join(room).await);
        assert_eq!(ja["epoch"], jb["epoch"]);
        assert_eq!(jb["presence"], json!(["alice", "bob"]));
        a.recv_where("user_joined bob", |f| {
            let v = js(f);
            frame_type(f) == "user_joined" && v["user"] == "bob" && v["room"] == *room
        })
        .await;
        let id = a.say(room, &format!("hello {room}")).await;
        assert_eq!(id, 1);
        let text = format!("hello {room}");
        b.recv_where("message", |f| is_message(f, room, &text))
            .await;
        let jc = js(&c.join(room).await);
        assert_eq!(jc["presence"], json!(["alice", "bob", "carol"]));
        assert_eq!(jc["history"][0]["text"], text);
        let h = js(&c
            .request(json!({"type":"history","room":room,"limit":10}))
            .await);
        assert_eq!(h["messages"][0]["id"], 1);
        let reply = format!("reply {room}");
        assert_eq!(c.say(room, &reply).await, 2);
        for x in [&mut a, &mut b] {
            x.recv_where("message", |f| is_message(f, room, &reply))
                .await;
        }
    }
    let p = js(&a.request(json!({"type":"who","room":rooms[1]})).await);
    assert_eq!(p["users"], json!(["alice", "bob", "carol"]));

    // Direct messages between nodes (user channels are sharded too).
    let ack = js(&b
        .request(json!({"type":"dm","to":"carol","text":"psst"}))
        .await);
    let d = js(&c.recv_type("direct").await);
    assert_eq!(
        (d["from"].as_str(), d["text"].as_str()),
        (Some("bob"), Some("psst"))
    );
    assert_eq!(d["id"], ack["id"]);
    let e = js(&a
        .request(json!({"type":"dm","to":"nobody","text":"?"}))
        .await);
    assert_eq!(e["code"], "user_offline");

    // Leaving and disconnecting reach the other nodes.
    b.request(json!({"type":"leave","room":rooms[0]})).await;
    let ul = js(&a.recv_type("user_left").await);
    assert_eq!(
        (
            ul["user"].as_str(),
            ul["room"].as_str(),
            ul["reason"].as_str()
        ),
        (Some("bob"), Some(rooms[0].as_str()), Some("leave"))
    );
    c.close().await;
    let ul = js(&a
        .recv_where("user_left carol", |f| {
            frame_type(f) == "user_left" && js(f)["user"] == "carol"
        })
        .await);
    assert_eq!(ul["reason"], "disconnect");
}

/// Traffic on the healthy shards: one message per room from `a`, acked and
/// received by `b` on the other node.
async fn traffic(a: &mut Client, b: &mut Client, healthy: &[String], step: &mut u32) {
    *step += 1;
    for room in healthy {
        let text = format!("tick {step}");
        let reply = a
            .request(json!({"type":"send","room":room,"text":text}))
            .await;
        assert_eq!(frame_type(&reply), "ack", "healthy room {room}: {reply:?}");
        b.recv_where("message", |f| is_message(f, room, &text))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_outage_affects_only_its_rooms() {
    let mut rc = RedisCluster::new();
    let nodes: Vec<Node> = (0..2).map(|i| relay_on(&rc, &format!("f{i}"))).collect();
    let rooms = room_per_master(&rc, "shard");
    // Stop a master that does not hold the node registry (`{_cluster}`),
    // so the nodes stay registered and only the rooms of that shard fail.
    let registry = rc.master_of("relay:{_cluster}:nodes");
    let victim = (0..rooms.len()).find(|i| *i != registry).unwrap();
    let victim_room = rooms[victim].clone();
    let healthy: Vec<String> = rooms
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, r)| r.clone())
        .collect();

    let mut a = guest(&nodes[0], "alice").await;
    let mut b = guest(&nodes[1], "bob").await;
    for room in &rooms {
        a.join(room).await;
        b.join(room).await;
    }
    let before = js(&a.join(&victim_room).await)["epoch"].clone();
    a.say(&victim_room, "before").await;
    b.recv_where("message", |f| is_message(f, &victim_room, "before"))
        .await;

    let mut step = 0u32;
    rc.stop(victim);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        traffic(&mut a, &mut b, &healthy, &mut step).await;
        let reply = js(&a
            .request(json!({"type":"send","room":victim_room,"text":"during"}))
            .await);
        if reply["code"] == "unavailable" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stopped shard's room never answered unavailable: {reply}"
        );
    }
    // Reads of the stopped shard fail the same way; the socket stays open.
    let e = js(&b
        .request(json!({"type":"history","room":victim_room}))
        .await);
    assert_eq!(e["code"], "unavailable");
    traffic(&mut a, &mut b, &healthy, &mut step).await;

    tokio::task::block_in_place(|| rc.start(victim));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        traffic(&mut a, &mut b, &healthy, &mut step).await;
        let reply = a
            .request(json!({"type":"send","room":victim_room,"text":"after"}))
            .await;
        if frame_type(&reply) == "ack" {
            break;
        }
        assert_eq!(js(&reply)["code"], "unavailable", "{reply:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted shard's room did not recover:\n{}",
            rc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Delivery across nodes on the recovered shard: the other node
    // re-subscribed on the restarted master.
    b.recv_where("message", |f| is_message(f, &victim_room, "after"))
        .await;
    // The shard restarted empty: the room's history was lost, so it has a
    // new epoch (clients recover with `recovered: false`).
    let after = js(&b.join(&victim_room).await)["epoch"].clone();
    assert_ne!(after, before);
    traffic(&mut a, &mut b, &healthy, &mut step).await;
}
