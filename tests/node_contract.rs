//! The node contract suite: every user-visible behaviour of the wire protocol
//! (`PROTOCOL.md` §1–§3, and the additions in `docs/protocol-additions.md`)
//! written once, as an async function of a [`Topology`], and run against
//! three topologies by [`contract!`]:
//!
//! - `embedded`: one `relay serve` in the in-memory mode; clients A and B
//!   both connect to it;
//! - `redis`: two `relay serve` on one private redis-server; A connects to
//!   node 1, B to node 2;
//! - `redis_cluster`: two `relay serve` on a private 3-master Redis Cluster
//!   (shared by the tests that overlap in time, each under its own
//!   `--redis-prefix`); A on node 1, B on node 2.
//!
//! Real processes (testkit guards) on loopback ports, no mocks. Every wait is
//! bounded by `testkit::WAIT` (5 s). The same behaviour must hold on every
//! topology: a test that fails on one topology only is a product finding.
//!
//! Frames are compared whole (as decoded by the relay crate's protocol types
//! and re-serialized), with `ts` checked for plausibility and then compared
//! exactly where the protocol ties two of them together (`ack.ts` =
//! `message.ts`).

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use relay::protocol::ServerFrame;
use serde_json::{json, Value};
use testkit::redis::RedisServer;
use testkit::redis_cluster::RedisCluster;
use testkit::*;

/// Flags of every node in the suite: a rate limit out of the way of the
/// tests, and a 1 s heartbeat (presence TTL 3 s) so a busy 2-core machine
/// never expires a live node's presence.
const NODE_FLAGS: &[&str] = &["--rate", "1000", "--heartbeat-ms", "1000"];

/// What the nodes of a topology share.
enum Backplane {
    /// In-memory: the single node holds everything.
    Memory,
    /// One private redis-server for this test (held until the test ends).
    Redis { _server: RedisServer },
    /// The Redis Cluster shared by the tests running at the same time.
    Cluster { _shared: Arc<RedisCluster> },
}

/// The nodes a contract test talks to, and what they share. Dropping it
/// kills the nodes first, then (when no other test holds it) the backplane.
struct Topology {
    /// One node (embedded) or two (A's and B's), with their `--node-id`s;
    /// dropped before the backplane.
    nodes: Vec<(Node, String)>,
    /// Kept alive for the nodes.
    _backplane: Backplane,
}

/// The Redis Cluster of the tests that run at the same time: started by the
/// first, killed when the last one drops its handle (a static `Arc` would
/// outlive the test binary's processes; a `Weak` does not).
fn shared_cluster() -> Arc<RedisCluster> {
    static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cluster) = slot.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(RedisCluster::new());
    *slot = Arc::downgrade(&cluster);
    cluster
}

/// `relay serve` on `url` as node `id` with the suite's flags.
fn node_on(url: &str, id: &str, prefix: &str) -> (Node, String) {
    let mut args = vec!["--redis", url, "--node-id", id, "--redis-prefix", prefix];
    args.extend_from_slice(NODE_FLAGS);
    (Node::start(&args), id.to_owned())
}

impl Topology {
    /// One in-memory node; A and B are the same node.
    fn embedded() -> Topology {
        let mut args = vec!["--node-id", "solo"];
        args.extend_from_slice(NODE_FLAGS);
        Topology {
            nodes: vec![(Node::start(&args), "solo".into())],
            _backplane: Backplane::Memory,
        }
    }

    /// Two nodes on a fresh redis-server.
    fn redis() -> Topology {
        let redis = RedisServer::new();
        let nodes = vec![
            node_on(&redis.url(), "node1", "relay"),
            node_on(&redis.url(), "node2", "relay"),
        ];
        Topology {
            nodes,
            _backplane: Backplane::Redis { _server: redis },
        }
    }

    /// Two nodes on the shared Redis Cluster, under a prefix of this
    /// behaviour's own (so tests sharing the cluster never see each
    /// other's rooms, names or nodes).
    fn redis_cluster(behaviour: &str) -> Topology {
        let cluster = shared_cluster();
        let prefix = format!("ct-{behaviour}");
        let nodes = vec![
            node_on(&cluster.url(), &format!("{behaviour}-1"), &prefix),
            node_on(&cluster.url(), &format!("{behaviour}-2"), &prefix),
        ];
        Topology {
            nodes,
            _backplane: Backplane::Cluster { _shared: cluster },
        }
    }

    /// A's node (node 1).
    fn node_a(&self) -> &(Node, String) {
        &self.nodes[0]
    }

    /// B's node (node 2; the same node when embedded).
    fn node_b(&self) -> &(Node, String) {
        &self.nodes[self.nodes.len() - 1]
    }

    /// The WebSocket URL client A connects to.
    fn url_a(&self) -> String {
        self.node_a().0.url()
    }

    /// The WebSocket URL client B connects to.
    fn url_b(&self) -> String {
        self.node_b().0.url()
    }

    /// A guest `user` connected to A's node (checked by `welcome.session`).
    async fn a(&self, user: &str) -> Client {
        on_node(self.node_a(), user).await
    }

    /// A guest `user` connected to B's node (checked by `welcome.session`).
    async fn b(&self, user: &str) -> Client {
        on_node(self.node_b(), user).await
    }
}

/// A guest `user` on `node`, checked to be served by that node id.
async fn on_node((node, id): &(Node, String), user: &str) -> Client {
    let c = connect(&node.url(), user, None).await;
    assert!(
        c.session.starts_with(&format!("{id}/")),
        "{user} connected to {id} but its session is {}",
        c.session
    );
    c
}

/// A guest `user` on `url` (with a resume token when given); panics when
/// the handshake is refused.
async fn connect(url: &str, user: &str, resume: Option<&str>) -> Client {
    let url = match resume {
        Some(token) => format!("{url}?user={user}&resume={token}"),
        None => format!("{url}?user={user}"),
    };
    match Connect::new(&url).open().await {
        Ok(client) => client,
        Err(r) => panic!("{url}: refused {} {}", r.status, r.body),
    }
}

/// The refusal of a handshake to `url` (with its query); panics when it is
/// accepted.
async fn refused(url: String) -> Refused {
    match Connect::new(&url).open().await {
        Ok(_) => panic!("{url}: accepted, expected a refusal"),
        Err(r) => r,
    }
}

/// A second connection ("tab") of `first`'s user on `url`, by its resume
/// token.
async fn tab(url: &str, first: &Client) -> Client {
    let token = first.resume.as_deref().expect("a guest has a resume token");
    connect(url, &first.user, Some(token)).await
}

/// `ts` of a frame, checked to be Unix milliseconds within a minute of now.
fn ts_of(v: &Value) -> u64 {
    let ts = v["ts"].as_u64().unwrap_or_else(|| panic!("no ts in {v}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(ts.abs_diff(now) < 60_000, "ts {ts} is not now ({now}): {v}");
    ts
}

/// The frame as JSON without its `ts` (checked by [`ts_of`]).
fn no_ts(f: &ServerFrame) -> Value {
    let mut v = js(f);
    ts_of(&v);
    v.as_object_mut().expect("an object").remove("ts");
    v
}

/// A `message` frame (live, or a history entry: they are the same object).
fn message(room: &str, id: u64, from: &str, text: &str, ts: u64) -> Value {
    json!({"type": "message", "room": room, "id": id, "from": from, "text": text, "ts": ts})
}

/// Asserts `f` is exactly `error` with `code` and `ref`, and a non-empty
/// human-readable message.
fn assert_error(f: &ServerFrame, code: &str, reference: i64) {
    let mut v = js(f);
    let text = v["message"].as_str().unwrap_or_default().to_owned();
    assert!(!text.is_empty(), "error without a message: {v}");
    v.as_object_mut().expect("an object").remove("message");
    assert_eq!(
        v,
        json!({"type": "error", "code": code, "ref": reference}),
        "({text})"
    );
}

/// Sends `text` to `room` and returns the ack as JSON, checked to be exactly
/// `ack {id, ts, room, ref}` with the given id.
async fn send_acked(c: &mut Client, room: &str, text: &str, id: u64) -> Value {
    let ack = js(&c.request(cmd::send(room, text)).await);
    let ts = ts_of(&ack);
    let reference = ack["ref"].clone();
    assert_eq!(
        ack,
        json!({"type": "ack", "id": id, "ts": ts, "room": room, "ref": reference})
    );
    ack
}

/// The `id`s of a list of messages.
fn ids(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {messages}"))
        .iter()
        .map(|m| m["id"].as_u64().expect("id"))
        .collect()
}

/// Generates, per behaviour `b`, a module `b` with three `#[tokio::test]`s
/// (`embedded`, `redis`, `redis_cluster`) that run `b(topology)`.
macro_rules! contract {
    ($($behaviour:ident),+ $(,)?) => {$(
        mod $behaviour {
            #[tokio::test]
            async fn embedded() {
                super::$behaviour(super::Topology::embedded()).await;
            }

            #[tokio::test]
            async fn redis() {
                super::$behaviour(super::Topology::redis()).await;
            }

            #[tokio::test]
            async fn redis_cluster() {
                super::$behaviour(super::Topology::redis_cluster(stringify!($behaviour))).await;
            }
        }
    )+};
}

contract!(
    join_and_broadcast,
    history_on_join_and_paging,
    presence_and_join_leave_notices,
    direct_messages,
    typing_is_relayed_and_never_stored,
    recovery_on_reconnect,
    guest_names_are_unique_across_nodes,
    idempotent_client_id,
    input_validation,
);

/// `join` answers `joined` (epoch, presence with the joiner, empty history,
/// not recovered); a later joiner is announced to the members; `send` is
/// acked with id and ts and delivered to every member connection except the
/// sender's own (its other tab included), text trimmed, with the ack's id
/// and ts.
async fn join_and_broadcast(t: Topology) {
    let mut a = t.a("alice").await;
    let mut b = t.b("bob").await;
    let mut c = t.a("carol").await;
    let ja = js(&a.join("lobby").await);
    let epoch = ja["epoch"].as_str().expect("epoch").to_owned();
    assert!(!epoch.is_empty());
    assert_eq!(
        ja,
        json!({"type": "joined", "room": "lobby", "epoch": epoch, "presence": ["alice"],
               "history": [], "recovered": false, "ref": 1})
    );
    let jb = js(&b.join("lobby").await);
    assert_eq!(
        jb,
        json!({"type": "joined", "room": "lobby", "epoch": epoch, "presence": ["alice", "bob"],
               "history": [], "recovered": false, "ref": 1})
    );
    assert_eq!(
        no_ts(&a.recv().await),
        json!({"type": "user_joined", "room": "lobby", "user": "bob"})
    );
    let jc = js(&c.join("lobby").await);
    assert_eq!(jc["presence"], json!(["alice", "bob", "carol"]));
    assert_eq!(jc["epoch"], epoch.as_str());
    for x in [&mut a, &mut b] {
        assert_eq!(
            no_ts(&x.recv().await),
            json!({"type": "user_joined", "room": "lobby", "user": "carol"})
        );
    }
    // alice's second tab, on B's node: no news to the others.
    let mut a2 = tab(&t.url_b(), &a).await;
    assert_eq!(
        js(&a2.join("lobby").await)["presence"],
        json!(["alice", "bob", "carol"])
    );

    let ack = send_acked(&mut a, "lobby", "  Hello everyone!  ", 1).await;
    let hello = message("lobby", 1, "alice", "Hello everyone!", ts_of(&ack));
    for x in [&mut b, &mut c, &mut a2] {
        assert_eq!(js(&x.recv().await), hello, "{}", x.user);
    }
    let ack = send_acked(&mut b, "lobby", "hi alice", 2).await;
    let hi = message("lobby", 2, "bob", "hi alice", ts_of(&ack));
    for x in [&mut a, &mut c, &mut a2] {
        assert_eq!(js(&x.recv().await), hi, "{}", x.user);
    }
    // Nobody gets anything else; the senders never see their own message.
    a.expect_silence(300).await;
    for x in [&mut b, &mut c, &mut a2] {
        x.expect_silence(50).await;
    }
}

/// `joined.history` holds the last 50 messages, oldest first, as `message`
/// entries; `history` pages back with `before` (exclusive) and `limit`
/// (1..=50), needs no membership, and refuses a limit out of range.
async fn history_on_join_and_paging(t: Topology) {
    let mut a = t.a("alice").await;
    a.join("hist").await;
    let mut all = vec![Value::Null];
    for id in 1..=55 {
        let text = format!("m{id}");
        let ack = send_acked(&mut a, "hist", &text, id).await;
        all.push(message("hist", id, "alice", &text, ts_of(&ack)));
    }
    let kept = |range: std::ops::RangeInclusive<usize>| Value::from(all[range].to_vec());

    let mut b = t.b("bob").await;
    let j = js(&b.join("hist").await);
    assert_eq!(j["history"], kept(6..=55));
    assert_eq!(j["recovered"], false);
    let h = js(&b.request(cmd::history("hist")).await);
    assert_eq!(
        h,
        json!({"type": "history", "room": "hist", "messages": kept(6..=55), "ref": 2})
    );
    let h = js(&b.request(cmd::history_page("hist", Some(30), 5)).await);
    assert_eq!(
        h,
        json!({"type": "history", "room": "hist", "messages": kept(25..=29), "ref": 3})
    );
    let h = js(&b.request(cmd::history_page("hist", None, 2)).await);
    assert_eq!(h["messages"], kept(54..=55));
    // Only the last 50 are kept: before 7 reaches 6 and no further.
    let h = js(&b.request(cmd::history_page("hist", Some(7), 50)).await);
    assert_eq!(h["messages"], kept(6..=6));
    let h = js(&b.request(cmd::history_page("hist", Some(6), 50)).await);
    assert_eq!(h["messages"], json!([]));
    // `history` needs no membership (docs/protocol-additions.md).
    let mut c = t.a("carol").await;
    let h = js(&c.request(cmd::history_page("hist", Some(56), 3)).await);
    assert_eq!(h["messages"], kept(53..=55));
    for (reference, limit) in [(2, 0), (3, 51)] {
        let e = c
            .request(json!({"type": "history", "room": "hist", "limit": limit}))
            .await;
        assert_error(&e, "invalid", reference);
    }
    // The joiner got no live copies of what it read from history.
    b.expect_silence(200).await;
}

/// `who` lists the room's users on every node; `leave` answers `left` and
/// the others see `user_left` (`leave`); a closed connection is seen as
/// `user_left` (`disconnect`); a re-join is announced again; `who` of a room
/// not joined is `not_member`.
async fn presence_and_join_leave_notices(t: Topology) {
    let mut a = t.a("alice").await;
    let mut b = t.b("bob").await;
    assert_eq!(js(&a.join("pres").await)["presence"], json!(["alice"]));
    assert_eq!(
        js(&b.join("pres").await)["presence"],
        json!(["alice", "bob"])
    );
    assert_eq!(
        no_ts(&a.recv().await),
        json!({"type": "user_joined", "room": "pres", "user": "bob"})
    );
    for x in [&mut a, &mut b] {
        assert_eq!(
            js(&x.request(cmd::who("pres")).await),
            json!({"type": "presence", "room": "pres", "users": ["alice", "bob"], "ref": 2})
        );
    }
    assert_eq!(
        js(&b.request(cmd::leave("pres")).await),
        json!({"type": "left", "room": "pres", "ref": 3})
    );
    assert_eq!(
        no_ts(&a.recv().await),
        json!({"type": "user_left", "room": "pres", "user": "bob", "reason": "leave"})
    );
    assert_eq!(
        js(&a.request(cmd::who("pres")).await)["users"],
        json!(["alice"])
    );
    let e = b.request(cmd::who("pres")).await;
    assert_error(&e, "not_member", 4);
    b.join("pres").await;
    assert_eq!(
        no_ts(&a.recv().await),
        json!({"type": "user_joined", "room": "pres", "user": "bob"})
    );
    b.close().await;
    assert_eq!(
        no_ts(&a.recv().await),
        json!({"type": "user_left", "room": "pres", "user": "bob", "reason": "disconnect"})
    );
    assert_eq!(
        js(&a.request(cmd::who("pres")).await)["users"],
        json!(["alice"])
    );
    a.expect_silence(200).await;
}

/// `dm` is acked (id, ts, no room) and delivered as `direct` (same id and
/// ts) to every connection of the recipient and to the sender's other
/// connections, on any node, and to nobody else; a DM to a user with no
/// connection (never connected, or gone) is `user_offline`.
async fn direct_messages(t: Topology) {
    let mut a1 = t.a("alice").await;
    let mut b1 = t.b("bob").await;
    let mut a2 = tab(&t.url_b(), &a1).await;
    let mut b2 = tab(&t.url_a(), &b1).await;
    let mut c = t.a("carol").await;

    let ack = js(&a1.request(cmd::dm("bob", "psst")).await);
    let (id, ts) = (ack["id"].as_u64().expect("id"), ts_of(&ack));
    assert_eq!(ack, json!({"type": "ack", "id": id, "ts": ts, "ref": 1}));
    let psst =
        json!({"type": "direct", "from": "alice", "to": "bob", "text": "psst", "ts": ts, "id": id});
    for x in [&mut b1, &mut b2, &mut a2] {
        assert_eq!(js(&x.recv().await), psst, "{}", x.user);
    }
    let ack = js(&b1.request(cmd::dm("alice", "  hi both tabs ")).await);
    let (id, ts) = (ack["id"].as_u64().expect("id"), ts_of(&ack));
    assert_eq!(ack, json!({"type": "ack", "id": id, "ts": ts, "ref": 1}));
    let hi = json!({"type": "direct", "from": "bob", "to": "alice", "text": "hi both tabs", "ts": ts, "id": id});
    for x in [&mut a1, &mut a2, &mut b2] {
        assert_eq!(js(&x.recv().await), hi, "{}", x.user);
    }
    for x in [&mut a1, &mut a2, &mut b1, &mut b2, &mut c] {
        x.expect_silence(100).await;
    }
    let e = a1.request(cmd::dm("nobody", "hi")).await;
    assert_error(&e, "user_offline", 2);

    // Once bob's last connection is gone (seen by alice as user_left in a
    // room they share), a DM to him is user_offline too.
    a1.join("dm").await;
    b1.join("dm").await;
    a1.recv_type("user_joined").await;
    b1.close().await;
    b2.close().await;
    assert_eq!(
        no_ts(&a1.recv().await),
        json!({"type": "user_left", "room": "dm", "user": "bob", "reason": "disconnect"})
    );
    let e = a1.request(cmd::dm("bob", "still there?")).await;
    assert_error(&e, "user_offline", 4);
    a2.expect_silence(200).await;
}

/// `typing` reaches the other members (not the typist, not non-members) as
/// `typing {room, user, active}`, has no reply, and is never stored; in a
/// room not joined it is `not_member`.
async fn typing_is_relayed_and_never_stored(t: Topology) {
    let mut a = t.a("alice").await;
    let mut b = t.b("bob").await;
    let mut outsider = t.b("dave").await;
    a.join("typ").await;
    b.join("typ").await;
    a.recv_type("user_joined").await;
    a.send(cmd::typing("typ", true)).await;
    assert_eq!(
        js(&b.recv().await),
        json!({"type": "typing", "room": "typ", "user": "alice", "active": true})
    );
    a.send(cmd::typing("typ", false)).await;
    assert_eq!(
        js(&b.recv().await),
        json!({"type": "typing", "room": "typ", "user": "alice", "active": false})
    );
    a.expect_silence(300).await;
    outsider.expect_silence(50).await;
    assert_eq!(
        js(&b.request(cmd::history("typ")).await)["messages"],
        json!([])
    );
    let mut c = t.a("carol").await;
    assert_eq!(js(&c.join("typ").await)["history"], json!([]));
    let e = outsider.request(cmd::typing("typ", true)).await;
    assert_error(&e, "not_member", 1);
    for x in [&mut a, &mut b] {
        x.recv_type("user_joined").await;
        x.expect_silence(200).await;
    }
}

/// A client that reconnects (with its resume token, through the other node)
/// and joins with `since` and `epoch` gets exactly the missed messages and
/// `recovered: true`; a wrong epoch, or a gap beyond the 50 kept, gives the
/// latest history and `recovered: false`; being up to date recovers nothing.
async fn recovery_on_reconnect(t: Topology) {
    let mut a = t.a("alice").await;
    let mut b = t.b("bob").await;
    let epoch = js(&b.join("rec").await)["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    a.join("rec").await;
    b.recv_type("user_joined").await;
    let one = send_acked(&mut a, "rec", "one", 1).await;
    assert_eq!(
        js(&b.recv().await),
        message("rec", 1, "alice", "one", ts_of(&one))
    );
    let token = b.resume.clone().expect("resume token");
    b.close().await;
    a.recv_type("user_left").await;
    let mut missed = Vec::new();
    for (id, text) in [(2, "two"), (3, "three")] {
        let ack = send_acked(&mut a, "rec", text, id).await;
        missed.push(message("rec", id, "alice", text, ts_of(&ack)));
    }

    let mut b = connect(&t.url_a(), "bob", Some(&token)).await;
    assert_eq!(
        js(&b.request(cmd::join_since("rec", 1, &epoch)).await),
        json!({"type": "joined", "room": "rec", "epoch": epoch, "presence": ["alice", "bob"],
               "history": missed, "recovered": true, "ref": 1})
    );
    let mut c = t.b("carol").await;
    let j = js(&c.request(cmd::join_since("rec", 1, "bogus")).await);
    assert_eq!(
        (j["recovered"].as_bool(), ids(&j["history"])),
        (Some(false), vec![1, 2, 3])
    );
    assert_eq!(j["epoch"], epoch.as_str());
    let mut d = t.b("dave").await;
    let j = js(&d.request(cmd::join_since("rec", 3, &epoch)).await);
    assert_eq!(
        (j["recovered"].as_bool(), ids(&j["history"])),
        (Some(true), vec![])
    );

    for id in 4..=55 {
        send_acked(&mut a, "rec", &format!("x{id}"), id).await;
    }
    // 4 and 5 are no longer kept: not recoverable from 3 ...
    let mut e = t.b("erin").await;
    let j = js(&e.request(cmd::join_since("rec", 3, &epoch)).await);
    let latest: Vec<u64> = (6..=55).collect();
    assert_eq!(
        (j["recovered"].as_bool(), ids(&j["history"])),
        (Some(false), latest.clone())
    );
    // ... but everything after 5 is.
    let mut f = t.b("frank").await;
    let j = js(&f.request(cmd::join_since("rec", 5, &epoch)).await);
    assert_eq!(
        (j["recovered"].as_bool(), ids(&j["history"])),
        (Some(true), latest)
    );
}

/// A guest name is claimed on every node while a connection holds it: a
/// second claim is refused with 409 `name_taken` (also with a wrong resume
/// token); the resume token lets a second tab on another node share it, and
/// the tabs count as one user in presence; the name is free again once the
/// last tab is gone. Names break the name rule: 400 `invalid`.
async fn guest_names_are_unique_across_nodes(t: Topology) {
    let mut a1 = t.a("alice").await;
    let token = a1.resume.clone().expect("resume token");
    assert!(!token.is_empty());
    for url in [t.url_b(), t.url_a()] {
        for query in ["user=alice", "user=alice&resume=wrong"] {
            let r = refused(format!("{url}?{query}")).await;
            assert_eq!(
                (r.status, r.body["error"].as_str()),
                (409, Some("name_taken")),
                "{query}: {}",
                r.body
            );
            assert!(r.body["message"].is_string(), "{}", r.body);
        }
    }
    let mut a2 = tab(&t.url_b(), &a1).await;
    assert_eq!(
        (a2.user.as_str(), a2.resume.as_deref()),
        ("alice", Some(token.as_str()))
    );

    let mut b = t.a("bob").await;
    b.join("tabs").await;
    assert_eq!(
        js(&a1.join("tabs").await)["presence"],
        json!(["alice", "bob"])
    );
    assert_eq!(
        no_ts(&b.recv().await),
        json!({"type": "user_joined", "room": "tabs", "user": "alice"})
    );
    assert_eq!(
        js(&a2.join("tabs").await)["presence"],
        json!(["alice", "bob"])
    );
    b.expect_silence(300).await;
    a1.close().await;
    b.expect_silence(300).await;
    assert_eq!(
        js(&b.request(cmd::who("tabs")).await)["users"],
        json!(["alice", "bob"])
    );
    a2.close().await;
    assert_eq!(
        no_ts(&b.recv().await),
        json!({"type": "user_left", "room": "tabs", "user": "alice", "reason": "disconnect"})
    );
    let url = format!("{}?user=alice", t.url_b());
    eventually("alice is free again", WAIT, || async {
        Connect::new(&url).open().await.is_ok()
    })
    .await;

    let long = "a".repeat(33);
    for bad in [
        "user=",
        "user=-x",
        "user=a%20b",
        &format!("user={long}"),
        "x=1",
    ] {
        let r = refused(format!("{}?{bad}", t.url_b())).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some("invalid")),
            "{bad}: {}",
            r.body
        );
    }
    let longest = connect(&t.url_b(), &"a".repeat(32), None).await;
    assert_eq!(longest.user.len(), 32);
}

/// `send` with a `client_id` sent again (on the same connection, or on
/// another connection of the same user on another node, as a client does
/// after a reconnect) is acked with the original id and ts and delivered
/// once; another key, or another user's same key, is a new message.
async fn idempotent_client_id(t: Topology) {
    let mut a = t.a("alice").await;
    let mut b = t.b("bob").await;
    a.join("idem").await;
    b.join("idem").await;
    a.recv_type("user_joined").await;
    let first = js(&a.request(cmd::send_once("idem", "once", "c-1")).await);
    let ts = ts_of(&first);
    assert_eq!(
        first,
        json!({"type": "ack", "id": 1, "ts": ts, "room": "idem", "ref": 2})
    );
    let again = js(&a.request(cmd::send_once("idem", "once", "c-1")).await);
    assert_eq!(
        again,
        json!({"type": "ack", "id": 1, "ts": ts, "room": "idem", "ref": 3})
    );
    let once = message("idem", 1, "alice", "once", ts);
    assert_eq!(js(&b.recv().await), once);
    b.expect_silence(300).await;

    let mut a2 = tab(&t.url_b(), &a).await;
    assert_eq!(js(&a2.join("idem").await)["history"], json!([once]));
    let retry = js(&a2.request(cmd::send_once("idem", "once", "c-1")).await);
    assert_eq!(
        retry,
        json!({"type": "ack", "id": 1, "ts": ts, "room": "idem", "ref": 2})
    );
    b.expect_silence(300).await;
    a.expect_silence(50).await;

    let next = js(&a.request(cmd::send_once("idem", "twice", "c-2")).await);
    assert_eq!(next["id"], 2);
    let twice = message("idem", 2, "alice", "twice", ts_of(&next));
    for x in [&mut b, &mut a2] {
        assert_eq!(js(&x.recv().await), twice, "{}", x.user);
    }
    let theirs = js(&b.request(cmd::send_once("idem", "mine", "c-1")).await);
    assert_eq!(theirs["id"], 3, "the key is per user");
    let mine = message("idem", 3, "bob", "mine", ts_of(&theirs));
    for x in [&mut a, &mut a2] {
        assert_eq!(js(&x.recv().await), mine, "{}", x.user);
    }
    let h = js(&b.request(cmd::history("idem")).await);
    assert_eq!(h["messages"], json!([once, twice, mine]));
    for x in [&mut a, &mut a2, &mut b] {
        x.expect_silence(100).await;
    }
}

/// Invalid input answers the documented codes with the command's `ref`:
/// room names off the rule, blank text, control characters, a missing
/// field, an over-long `client_id` or DM recipient are `invalid`; text over
/// 4000 characters (after trimming) is `too_large`. None of them has an
/// effect; 4000 characters (multi-byte ones too) are accepted.
async fn input_validation(t: Topology) {
    let mut a = t.a("alice").await;
    let mut b = t.b("bob").await;
    a.join("val").await;
    b.join("val").await;
    a.recv_type("user_joined").await;
    // `request` numbers refs 1, 2, ...; the join was 1.
    let mut reference = 1;
    let long_room = "r".repeat(33);
    for room in ["bad room", "", "-x", "a/b", long_room.as_str()] {
        let e = a.request(json!({"type": "join", "room": room})).await;
        reference += 1;
        assert_error(&e, "invalid", reference);
    }
    let long_id = "k".repeat(65);
    for bad in [
        json!({"type": "send", "room": "val", "text": "   "}),
        json!({"type": "send", "room": "val", "text": "a\u{7}b"}),
        json!({"type": "send", "room": "val"}),
        json!({"type": "send", "room": "val", "text": "hi", "client_id": long_id}),
        json!({"type": "send", "room": "bad room", "text": "hi"}),
        json!({"type": "dm", "to": "b@d", "text": "hi"}),
    ] {
        let e = a.request(bad).await;
        reference += 1;
        assert_error(&e, "invalid", reference);
    }
    for text in ["x".repeat(4001), format!(" {}é", "é".repeat(4000))] {
        let e = a.request(cmd::send("val", &text)).await;
        reference += 1;
        assert_error(&e, "too_large", reference);
    }
    // Nothing of that had an effect.
    b.expect_silence(300).await;
    assert_eq!(
        js(&b.request(cmd::history("val")).await)["messages"],
        json!([])
    );
    // The limit is 4000 characters after trimming, not bytes.
    let accepted = [
        "x".repeat(4000),
        "é".repeat(4000),
        "\t multi\nline \t".into(),
    ];
    for (i, text) in accepted.iter().enumerate() {
        let id = i as u64 + 1;
        let ack = send_acked(&mut a, "val", text, id).await;
        assert_eq!(
            js(&b.recv().await),
            message("val", id, "alice", text.trim(), ts_of(&ack))
        );
    }
    a.expect_silence(100).await;
    b.expect_silence(100).await;
}
