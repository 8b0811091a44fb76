//! The `Backplane` contract: one generic test per behaviour, each run against
//! two nodes of one `MemoryHub`, against two `RedisBackplane` nodes on a
//! private redis-server, and against two `RedisBackplane` nodes on a private
//! 3-master Redis Cluster (sharded pub/sub). Redis-only tests cover node
//! death, Redis outages and restarts. Real redis-server, no mocks; short
//! timings, bounded waits.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::backplane::memory::MemoryHub;
use relay::backplane::redis::{RedisBackplane, RedisOptions};
use relay::backplane::{
    Backplane, BackplaneError, Broker, Claim, DirectOutcome, Event, EventStream, Origin,
    PublishRequest, Topic,
};
use relay::protocol::LeaveReason;
use testkit::redis::RedisServer;
use testkit::redis_cluster::RedisCluster;

/// How long a test waits for something expected.
const WAIT: Duration = Duration::from_secs(5);
/// Room every node subscribes to, for markers (on a Redis Cluster, one such
/// room per shard: see `Cluster::settle`).
const MARKER_ROOM: &str = "marker";

fn options() -> RedisOptions {
    RedisOptions {
        prefix: "t".into(),
        heartbeat: Duration::from_millis(200),
        presence_ttl: Duration::from_millis(600),
        command_timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Redis,
    RedisCluster,
}

/// Nodes of one cluster, with their event streams.
struct Cluster {
    kind: Kind,
    nodes: Vec<Arc<dyn Backplane>>,
    events: Vec<EventStream>,
    redis: Option<RedisServer>,
    /// The Redis Cluster of `Kind::RedisCluster`.
    redis_cluster: Option<RedisCluster>,
    /// Marker rooms every node subscribes to.
    marker_rooms: Vec<String>,
    markers: u64,
}

async fn memory_cluster(n: usize) -> Cluster {
    let hub = MemoryHub::new();
    let nodes: Vec<Arc<dyn Backplane>> = (0..n)
        .map(|i| Arc::new(hub.node(format!("m{i}"))) as Arc<dyn Backplane>)
        .collect();
    Cluster::new(Kind::Memory, nodes, None, vec![MARKER_ROOM.into()]).await
}

async fn redis_node(server: &RedisServer, id: &str) -> Arc<dyn Backplane> {
    Arc::new(
        RedisBackplane::connect(&server.url(), id.to_owned(), options())
            .await
            .expect("connect to redis"),
    )
}

async fn redis_cluster(n: usize) -> Cluster {
    let server = RedisServer::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(redis_node(&server, &format!("r{i}")).await);
    }
    Cluster::new(Kind::Redis, nodes, Some(server), vec![MARKER_ROOM.into()]).await
}

/// `n` nodes on a private 3-master Redis Cluster.
async fn redis_cluster_cluster(n: usize) -> Cluster {
    let cluster = tokio::task::spawn_blocking(RedisCluster::new)
        .await
        .expect("start a redis cluster");
    let mut nodes: Vec<Arc<dyn Backplane>> = Vec::new();
    for i in 0..n {
        nodes.push(Arc::new(
            RedisBackplane::connect(&cluster.url(), format!("c{i}"), options())
                .await
                .expect("connect to the redis cluster"),
        ));
    }
    // Order holds per shard only (one subscription connection each), so
    // `settle` needs a marker room on every shard.
    let mut markers: Vec<String> = vec![MARKER_ROOM.into()];
    let mut shards = BTreeSet::from([cluster.master_of(&format!("{{{MARKER_ROOM}}}"))]);
    for i in 1.. {
        if shards.len() == cluster.ports().len() {
            break;
        }
        let room = format!("{MARKER_ROOM}{i}");
        if shards.insert(cluster.master_of(&format!("{{{room}}}"))) {
            markers.push(room);
        }
    }
    let mut c = Cluster::new(Kind::RedisCluster, nodes, None, markers).await;
    c.redis_cluster = Some(cluster);
    c
}

impl Cluster {
    async fn new(
        kind: Kind,
        nodes: Vec<Arc<dyn Backplane>>,
        redis: Option<RedisServer>,
        marker_rooms: Vec<String>,
    ) -> Self {
        let events = nodes
            .iter()
            .map(|n| n.take_events().expect("event stream"))
            .collect();
        for node in &nodes {
            for room in &marker_rooms {
                subscribe(node, Topic::Room(room.clone())).await;
            }
        }
        Cluster {
            kind,
            nodes,
            events,
            redis,
            redis_cluster: None,
            marker_rooms,
            markers: 0,
        }
    }

    fn node(&self, i: usize) -> &Arc<dyn Backplane> {
        &self.nodes[i]
    }

    /// Every event node `i` received before a marker (published by node `i`
    /// after everything done so far) came back; markers excluded. Every
    /// backplane delivers a node's subscriptions in publish order (a Redis
    /// Cluster per shard: one marker room per shard), so nothing published
    /// earlier can arrive after the markers.
    async fn settle(&mut self, i: usize) -> Vec<Event> {
        self.markers += 1;
        let marker = format!("m-{}", self.markers);
        for room in &self.marker_rooms {
            self.nodes[i]
                .typing(room, &marker, true, origin(&*self.nodes[i], 0))
                .await
                .expect("marker");
        }
        let mut pending: BTreeSet<String> = self.marker_rooms.iter().cloned().collect();
        let mut seen = Vec::new();
        loop {
            match next_event(&mut self.events[i]).await {
                Event::Typing { room, user, .. } if self.marker_rooms.contains(&room) => {
                    if user == marker {
                        pending.remove(&room);
                        if pending.is_empty() {
                            return seen;
                        }
                    }
                }
                other => seen.push(other),
            }
        }
    }

    /// Settles every node and returns their events.
    async fn settle_all(&mut self) -> Vec<Vec<Event>> {
        let mut all = Vec::new();
        for i in 0..self.nodes.len() {
            all.push(self.settle(i).await);
        }
        all
    }

    /// Wipes the shared store (Redis only): `false` for memory.
    async fn wipe(&self) -> bool {
        if let Some(cluster) = &self.redis_cluster {
            cluster.wipe(&options().prefix);
            return true;
        }
        let Some(server) = &self.redis else {
            return false;
        };
        let client = redis::Client::open(server.url()).expect("client");
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut con)
            .await
            .expect("flushall");
        true
    }
}

/// Waits until every subscribe/unsubscribe `node` queued before is applied
/// (requests apply in call order; `unsubscribe` has no completion signal).
async fn barrier(node: &Arc<dyn Backplane>) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    subscribe(node, Topic::Room(format!("barrier-{n}"))).await;
}

fn origin(node: &dyn Backplane, session: u64) -> Origin {
    Origin {
        node: node.node_id().to_owned(),
        session,
    }
}

async fn subscribe(node: &Arc<dyn Backplane>, topic: Topic) {
    tokio::time::timeout(WAIT, node.subscribe(topic))
        .await
        .expect("subscribe timed out")
        .expect("subscription dropped")
        .expect("subscribe failed");
}

async fn next_event(rx: &mut EventStream) -> Event {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("event stream closed")
}

fn request(room: &str, from: &str, text: &str, client_id: Option<&str>) -> PublishRequest {
    PublishRequest {
        room: room.into(),
        from: from.into(),
        text: text.into(),
        client_id: client_id.map(Into::into),
        origin: None,
        traceparent: None,
    }
}

fn message_ids(events: &[Event], room_name: &str) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } if message.room == room_name => Some(message.id),
            _ => None,
        })
        .collect()
}

fn message_epochs(events: &[Event], room_name: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { message, epoch, .. } if message.room == room_name => {
                Some(epoch.clone())
            }
            _ => None,
        })
        .collect()
}

fn joined(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::UserJoined { user, .. } => Some(user.clone()),
            _ => None,
        })
        .collect()
}

fn left(events: &[Event]) -> Vec<(String, LeaveReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::UserLeft { user, reason, .. } => Some((user.clone(), *reason)),
            _ => None,
        })
        .collect()
}

/// Polls `check` until it holds or `within` passed.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Generates `NAME::memory`, `NAME::redis` and `NAME::redis_cluster` for a
/// generic contract test.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(super::memory_cluster(2).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::redis_cluster(2).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                super::$name(super::redis_cluster_cluster(2).await).await;
            }
        }
    )*};
}

contract!(
    publish_order_and_gap_free_ids,
    history_cap_and_paging,
    epochs,
    idempotent_client_id,
    presence_across_nodes,
    name_claims,
    direct_message_routing,
    typing_is_published_not_stored,
    subscription_ordering,
    events_reach_only_subscribed_nodes,
);

/// Concurrent publishers on both nodes get gap-free ids; every subscribed
/// node sees the room's messages in id order; history keeps the last 50.
async fn publish_order_and_gap_free_ids(mut c: Cluster) {
    for node in &c.nodes {
        subscribe(node, Topic::Room("order".into())).await;
    }
    let mut tasks = Vec::new();
    for n in 0..2 {
        for t in 0..4 {
            let node = c.node(n).clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25 {
                    let p = node
                        .publish(request(
                            "order",
                            &format!("u{n}{t}"),
                            &format!("m{i}"),
                            None,
                        ))
                        .await
                        .expect("publish");
                    assert!(!p.duplicate);
                    ids.push(p.id);
                }
                ids
            }));
        }
    }
    let mut ids = Vec::new();
    for t in tasks {
        let mine = t.await.expect("task");
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one publisher's ids increase"
        );
        ids.extend(mine);
    }
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=200).collect::<Vec<u64>>(),
        "gap-free, no duplicates"
    );
    for i in 0..2 {
        let events = c.settle(i).await;
        assert_eq!(
            message_ids(&events, "order"),
            (1..=200).collect::<Vec<u64>>(),
            "node {i} sees the room in id order"
        );
    }
    let history = c.node(1).history("order", None, 50).await.expect("history");
    assert_eq!(
        history.iter().map(|m| m.id).collect::<Vec<_>>(),
        (151..=200).collect::<Vec<u64>>()
    );
}

/// The room keeps 50 messages; `history(before, limit)` pages backwards.
async fn history_cap_and_paging(c: Cluster) {
    for i in 1..=60u64 {
        let node = c.node((i % 2) as usize);
        let p = node
            .publish(request("hist", "alice", &format!("text {i}"), None))
            .await
            .expect("publish");
        assert_eq!(p.id, i);
    }
    let ids = |v: Vec<relay::protocol::ChatMessage>| v.iter().map(|m| m.id).collect::<Vec<_>>();
    let all = c.node(0).history("hist", None, 50).await.expect("history");
    assert_eq!(all.len(), 50);
    assert_eq!(all[0].text, "text 11");
    assert_eq!(all[0].from, "alice");
    assert_eq!(all[0].room, "hist");
    assert_eq!(ids(all), (11..=60).collect::<Vec<u64>>());
    let b = c.node(1);
    assert_eq!(ids(b.history("hist", None, 3).await.unwrap()), [58, 59, 60]);
    assert_eq!(
        ids(b.history("hist", Some(30), 10).await.unwrap()),
        (20..=29).collect::<Vec<u64>>()
    );
    assert_eq!(ids(b.history("hist", Some(12), 50).await.unwrap()), [11]);
    assert!(b.history("hist", Some(11), 5).await.unwrap().is_empty());
    assert!(b
        .history("nothing-here", None, 50)
        .await
        .unwrap()
        .is_empty());
    let snapshot = b.join("hist", "bob", false, None).await.expect("join");
    assert_eq!(snapshot.last_id, 60);
    assert_eq!(ids(snapshot.messages), (11..=60).collect::<Vec<u64>>());
}

/// Epochs are fixed on first use (join or message), survive messages, and
/// change when the store lost the room (Redis only).
async fn epochs(mut c: Cluster) {
    subscribe(c.node(0), Topic::Room("ep".into())).await;
    let first = c
        .node(1)
        .join("ep", "bob", false, None)
        .await
        .expect("join");
    assert!(!first.epoch.is_empty());
    assert_eq!(first.last_id, 0);
    assert!(first.messages.is_empty());
    let p = c
        .node(0)
        .publish(request("ep", "alice", "hi", None))
        .await
        .unwrap();
    assert_eq!(p.id, 1);
    assert_eq!(
        message_epochs(&c.settle(0).await, "ep"),
        vec![first.epoch.clone()],
        "a message event carries its room's epoch"
    );
    let again = c
        .node(0)
        .join("ep", "alice", false, None)
        .await
        .expect("join");
    assert_eq!(
        again.epoch, first.epoch,
        "an epoch seen on an empty room stays"
    );
    assert_eq!(again.last_id, 1);

    c.node(1)
        .publish(request("ep2", "bob", "first", None))
        .await
        .unwrap();
    let e2 = c.node(0).join("ep2", "x", false, None).await.unwrap().epoch;
    c.node(0)
        .publish(request("ep2", "bob", "second", None))
        .await
        .unwrap();
    assert_eq!(
        c.node(1).join("ep2", "x", false, None).await.unwrap().epoch,
        e2
    );

    if c.kind == Kind::Memory {
        return; // the memory hub cannot lose its state
    }
    assert!(c.wipe().await);
    let after = c
        .node(0)
        .join("ep", "alice", false, None)
        .await
        .expect("join");
    assert_ne!(after.epoch, first.epoch, "a wiped room gets a new epoch");
    assert_eq!(after.last_id, 0);
    assert!(after.messages.is_empty());
    let p = c
        .node(1)
        .publish(request("ep", "alice", "again", None))
        .await
        .unwrap();
    assert_eq!(p.id, 1);
    assert_eq!(
        c.node(1).join("ep", "a", false, None).await.unwrap().epoch,
        after.epoch
    );
    assert_eq!(
        message_epochs(&c.settle(0).await, "ep"),
        vec![after.epoch.clone()],
        "events after a wipe carry the new epoch"
    );
    // A room first used by a message after the wipe.
    c.node(1)
        .publish(request("ep2", "bob", "x", None))
        .await
        .unwrap();
    assert_ne!(
        c.node(0).join("ep2", "x", false, None).await.unwrap().epoch,
        e2
    );
}

/// A repeated client_id returns the original id and ts; stored and
/// published once. The key is scoped to the sender.
async fn idempotent_client_id(mut c: Cluster) {
    subscribe(c.node(1), Topic::Room("idem".into())).await;
    let first = c
        .node(0)
        .publish(request("idem", "alice", "hello", Some("c-1")))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let dup = c
        .node(1)
        .publish(request("idem", "alice", "hello", Some("c-1")))
        .await
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!((dup.id, dup.ts), (first.id, first.ts));
    let other = c
        .node(0)
        .publish(request("idem", "bob", "hello", Some("c-1")))
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.id, first.id + 1);
    let history = c.node(0).history("idem", None, 50).await.unwrap();
    assert_eq!(history.len(), 2);
    let events = c.settle(1).await;
    assert_eq!(message_ids(&events, "idem"), [first.id, other.id]);
}

/// Presence counts users across nodes: one user_joined per user, user_left
/// only when their last node left, with the reason passed through.
async fn presence_across_nodes(mut c: Cluster) {
    for node in &c.nodes {
        subscribe(node, Topic::Room("pres".into())).await;
    }
    let (a, b) = (c.node(0).clone(), c.node(1).clone());
    let snap = a
        .join("pres", "alice", true, Some(origin(&*a, 1)))
        .await
        .unwrap();
    assert!(snap.presence.is_empty() || snap.presence == ["alice"]);
    let snap = b
        .join("pres", "alice", true, Some(origin(&*b, 1)))
        .await
        .unwrap();
    assert_eq!(snap.presence, ["alice"]);
    b.join("pres", "bob", true, None).await.unwrap();
    for events in c.settle_all().await {
        assert_eq!(
            joined(&events),
            ["alice", "bob"],
            "one user_joined per user"
        );
        match events
            .iter()
            .find(|e| matches!(e, Event::UserJoined { user, .. } if user == "alice"))
        {
            Some(Event::UserJoined { room, origin, .. }) => {
                assert_eq!(room, "pres");
                assert_eq!(origin.as_ref().map(|o| o.node.as_str()), Some(a.node_id()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(a.presence("pres").await.unwrap(), ["alice", "bob"]);
    assert_eq!(b.presence("pres").await.unwrap(), ["alice", "bob"]);

    a.leave("pres", "alice", LeaveReason::Disconnect)
        .await
        .unwrap();
    for events in c.settle_all().await {
        assert!(left(&events).is_empty(), "alice is still on the other node");
    }
    assert_eq!(a.presence("pres").await.unwrap(), ["alice", "bob"]);
    b.leave("pres", "alice", LeaveReason::Leave).await.unwrap();
    for events in c.settle_all().await {
        assert_eq!(left(&events), [("alice".to_owned(), LeaveReason::Leave)]);
    }
    assert_eq!(a.presence("pres").await.unwrap(), ["bob"]);
    let snap = a.join("pres", "carol", false, None).await.unwrap();
    assert_eq!(snap.presence, ["bob"]);
    // Leaving twice has no effect.
    b.leave("pres", "alice", LeaveReason::Leave).await.unwrap();
    b.leave("pres", "bob", LeaveReason::Timeout).await.unwrap();
    for events in c.settle_all().await {
        assert_eq!(left(&events), [("bob".to_owned(), LeaveReason::Timeout)]);
    }
    assert!(b.presence("pres").await.unwrap().is_empty());
}

/// Guest names: granted, taken without the token, shared with it, free
/// again when the last holder released it.
async fn name_claims(c: Cluster) {
    let (a, b) = (c.node(0), c.node(1));
    let Claim::Granted { token } = a.claim_name("bob", None).await.unwrap() else {
        panic!("first claim is granted");
    };
    assert!(!token.is_empty());
    assert_eq!(b.claim_name("bob", None).await.unwrap(), Claim::Taken);
    assert_eq!(
        b.claim_name("bob", Some("wrong")).await.unwrap(),
        Claim::Taken
    );
    assert_eq!(
        b.claim_name("bob", Some(&token)).await.unwrap(),
        Claim::Granted {
            token: token.clone()
        }
    );
    a.release_name("bob").await.unwrap();
    assert_eq!(
        a.claim_name("bob", None).await.unwrap(),
        Claim::Taken,
        "b still holds it"
    );
    assert_eq!(
        a.claim_name("bob", Some(&token)).await.unwrap(),
        Claim::Granted {
            token: token.clone()
        }
    );
    a.release_name("bob").await.unwrap();
    b.release_name("bob").await.unwrap();
    let Claim::Granted { token: fresh } = a.claim_name("bob", None).await.unwrap() else {
        panic!("a released name is free");
    };
    assert_ne!(fresh, token);
    // Other names are independent; releasing an unheld name is harmless.
    assert!(matches!(
        b.claim_name("carol", None).await.unwrap(),
        Claim::Granted { .. }
    ));
    b.release_name("nobody").await.unwrap();
}

/// Direct messages: offline without a subscribed node; delivered once to
/// each node subscribed to the recipient's or the sender's user topic.
async fn direct_message_routing(mut c: Cluster) {
    let (a, b) = (c.node(0).clone(), c.node(1).clone());
    subscribe(&a, Topic::User("alice".into())).await;
    subscribe(&b, Topic::User("bob".into())).await;
    assert_eq!(
        a.direct("alice", "carol", "hi", origin(&*a, 1))
            .await
            .unwrap(),
        DirectOutcome::Offline
    );
    for events in c.settle_all().await {
        assert!(
            events.is_empty(),
            "nothing delivered for an offline user: {events:?}"
        );
    }
    let DirectOutcome::Delivered { id, ts } = b
        .direct("bob", "alice", "hey", origin(&*b, 7))
        .await
        .unwrap()
    else {
        panic!("alice is online");
    };
    assert!(ts > 0);
    for events in c.settle_all().await {
        assert_eq!(events.len(), 1, "{events:?}");
        match &events[0] {
            Event::Direct { message, origin } => {
                assert_eq!((message.id, message.ts), (id, ts));
                assert_eq!(
                    (message.from.as_str(), message.to.as_str()),
                    ("bob", "alice")
                );
                assert_eq!(message.text, "hey");
                assert_eq!(origin.as_ref().map(|o| o.session), Some(7));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A node subscribed to both users still gets one copy.
    subscribe(&a, Topic::User("bob".into())).await;
    let DirectOutcome::Delivered { id: id2, .. } = b
        .direct("bob", "alice", "again", origin(&*b, 7))
        .await
        .unwrap()
    else {
        panic!("alice is online");
    };
    assert!(id2 > id);
    for events in c.settle_all().await {
        let ids: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Direct { message, .. } => Some(message.id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, [id2], "once per node");
    }
    // Unsubscribed: offline again.
    a.unsubscribe(Topic::User("alice".into()));
    barrier(&a).await;
    assert_eq!(
        b.direct("bob", "alice", "gone?", origin(&*b, 7))
            .await
            .unwrap(),
        DirectOutcome::Offline
    );
}

/// Typing indicators are published to the room, never stored.
async fn typing_is_published_not_stored(mut c: Cluster) {
    subscribe(c.node(1), Topic::Room("typ".into())).await;
    let a = c.node(0).clone();
    a.typing("typ", "alice", true, origin(&*a, 3))
        .await
        .unwrap();
    a.typing("typ", "alice", false, origin(&*a, 3))
        .await
        .unwrap();
    let events = c.settle(1).await;
    let typing: Vec<(String, bool, Option<u64>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Typing {
                room,
                user,
                active,
                origin,
            } if room == "typ" => Some((user.clone(), *active, origin.as_ref().map(|o| o.session))),
            _ => None,
        })
        .collect();
    assert_eq!(
        typing,
        [
            ("alice".to_owned(), true, Some(3)),
            ("alice".to_owned(), false, Some(3))
        ]
    );
    assert!(a.history("typ", None, 50).await.unwrap().is_empty());
    assert_eq!(a.join("typ", "x", false, None).await.unwrap().last_id, 0);
}

/// Subscribe/unsubscribe requests apply in call order: an unsubscribe
/// followed by a subscribe keeps the subscription; the reverse removes it.
async fn subscription_ordering(mut c: Cluster) {
    let a = c.node(0).clone();
    let b = c.node(1).clone();
    subscribe(&a, Topic::Room("ord".into())).await;
    a.unsubscribe(Topic::Room("ord".into()));
    let pending = a.subscribe(Topic::Room("ord".into()));
    tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    b.publish(request("ord", "bob", "kept", None))
        .await
        .unwrap();
    assert_eq!(message_ids(&c.settle(0).await, "ord"), [1]);

    let pending = a.subscribe(Topic::Room("ord2".into()));
    a.unsubscribe(Topic::Room("ord2".into()));
    let _ = tokio::time::timeout(WAIT, pending).await.expect("resolves");
    barrier(&a).await;
    b.publish(request("ord2", "bob", "dropped", None))
        .await
        .unwrap();
    assert!(message_ids(&c.settle(0).await, "ord2").is_empty());

    // Many topics queued at once all resolve.
    let pendings: Vec<_> = (0..50)
        .map(|i| a.subscribe(Topic::Room(format!("many{i}"))))
        .collect();
    for p in pendings {
        tokio::time::timeout(WAIT, p)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    b.publish(request("many49", "bob", "x", None))
        .await
        .unwrap();
    assert_eq!(message_ids(&c.settle(0).await, "many49"), [1]);
}

/// A room's events reach only the nodes subscribed to it.
async fn events_reach_only_subscribed_nodes(mut c: Cluster) {
    let (a, b) = (c.node(0).clone(), c.node(1).clone());
    subscribe(&a, Topic::Room("only".into())).await;
    b.publish(request("only", "bob", "hi", None)).await.unwrap();
    b.join("only", "bob", true, None).await.unwrap();
    b.typing("only", "bob", true, origin(&*b, 1)).await.unwrap();
    let on_a = c.settle(0).await;
    assert_eq!(message_ids(&on_a, "only"), [1]);
    assert_eq!(joined(&on_a), ["bob"]);
    assert_eq!(on_a.len(), 3, "{on_a:?}");
    let on_b = c.settle(1).await;
    assert!(on_b.is_empty(), "b is not subscribed: {on_b:?}");
    a.unsubscribe(Topic::Room("only".into()));
    barrier(&a).await;
    b.publish(request("only", "bob", "after", None))
        .await
        .unwrap();
    assert!(c.settle(0).await.is_empty());
}

// ---------------------------------------------------------------- Redis only

/// A node that stops heart-beating (dropped without shutdown) is reaped by
/// exactly one survivor: one `user_left` (timeout) per user it alone held,
/// its presence and name claims gone within presence_ttl + heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_node_death_is_reaped_once() {
    let mut c = redis_cluster(3).await;
    for i in 1..3 {
        subscribe(c.node(i), Topic::Room("dead".into())).await;
    }
    let a = c.node(0).clone();
    a.join("dead", "alice", true, None).await.unwrap();
    a.join("dead", "dave", true, None).await.unwrap();
    a.join("dead", "carol", true, None).await.unwrap();
    c.node(1).join("dead", "carol", true, None).await.unwrap();
    assert!(matches!(
        a.claim_name("alice", None).await.unwrap(),
        Claim::Granted { .. }
    ));
    assert_eq!(
        c.node(1).claim_name("alice", None).await.unwrap(),
        Claim::Taken
    );
    let dead_id = a.node_id().to_owned();
    c.settle_all().await;
    assert!(c.node(1).nodes().await.unwrap().contains(&dead_id));

    drop(a);
    let _ = c.nodes.remove(0);
    let _ = c.events.remove(0);
    let died = Instant::now();
    let ttl_plus_beat = options().presence_ttl + options().heartbeat;
    for i in 0..2 {
        let mut gone = BTreeSet::new();
        while gone.len() < 2 {
            match next_event(&mut c.events[i]).await {
                Event::UserLeft {
                    user, reason, room, ..
                } => {
                    assert_eq!(room, "dead");
                    assert_eq!(reason, LeaveReason::Timeout);
                    assert!(gone.insert(user.clone()), "duplicate user_left for {user}");
                }
                Event::Typing { room, .. } if room == MARKER_ROOM => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            gone,
            BTreeSet::from(["alice".to_owned(), "dave".to_owned()])
        );
    }
    let elapsed = died.elapsed();
    assert!(
        elapsed < ttl_plus_beat + Duration::from_secs(1),
        "reaped after {elapsed:?}"
    );
    for events in c.settle_all().await {
        assert!(left(&events).is_empty(), "exactly one reaper: {events:?}");
    }
    assert_eq!(c.node(0).presence("dead").await.unwrap(), ["carol"]);
    assert_eq!(
        c.node(1)
            .join("dead", "x", false, None)
            .await
            .unwrap()
            .presence,
        ["carol"]
    );
    assert!(matches!(
        c.node(0).claim_name("alice", None).await.unwrap(),
        Claim::Granted { .. }
    ));
    assert!(!c.node(0).nodes().await.unwrap().contains(&dead_id));
}

/// While Redis is down every call fails fast with `Unavailable`, and the
/// node is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast() {
    let mut c = redis_cluster(2).await;
    let a = c.node(0).clone();
    assert!(a.ready().await);
    c.redis.as_mut().unwrap().stop();
    let bound = options().command_timeout + Duration::from_millis(300);
    let unavailable = |r: Result<(), BackplaneError>, what: &str| match r {
        Err(BackplaneError::Unavailable(_)) => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    };
    let started = Instant::now();
    unavailable(
        a.publish(request("out", "alice", "x", None))
            .await
            .map(|_| ()),
        "publish",
    );
    assert!(
        started.elapsed() < bound,
        "publish took {:?}",
        started.elapsed()
    );
    eventually(
        Duration::from_secs(3),
        "not ready while redis is down",
        || {
            let a = a.clone();
            async move { !a.ready().await }
        },
    )
    .await;
    let calls: Vec<(&str, Result<(), BackplaneError>)> = vec![
        (
            "publish",
            a.publish(request("out", "alice", "x", None))
                .await
                .map(|_| ()),
        ),
        ("join", a.join("out", "alice", true, None).await.map(|_| ())),
        ("leave", a.leave("out", "alice", LeaveReason::Leave).await),
        ("history", a.history("out", None, 50).await.map(|_| ())),
        ("presence", a.presence("out").await.map(|_| ())),
        ("claim", a.claim_name("zed", None).await.map(|_| ())),
        (
            "direct",
            a.direct("a", "b", "x", origin(&*a, 1)).await.map(|_| ()),
        ),
        (
            "typing",
            a.typing("out", "alice", true, origin(&*a, 1)).await,
        ),
        ("account", a.create_account("acc", "hash").await.map(|_| ())),
        ("nodes", a.nodes().await.map(|_| ())),
    ];
    for (what, result) in calls {
        unavailable(result, what);
    }
    let started = Instant::now();
    let sub = tokio::time::timeout(WAIT, a.subscribe(Topic::Room("out".into())))
        .await
        .expect("subscribe resolves")
        .expect("not dropped");
    assert!(
        matches!(sub, Err(BackplaneError::Unavailable(_))),
        "{sub:?}"
    );
    assert!(started.elapsed() < bound);
}

/// After Redis comes back empty the nodes serve again without a restart:
/// ready, subscriptions restored, presence and claims re-registered, new
/// epochs for old rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers() {
    let mut c = redis_cluster(2).await;
    let (a, b) = (c.node(0).clone(), c.node(1).clone());
    subscribe(&a, Topic::Room("back".into())).await;
    let before = a.join("back", "alice", true, None).await.unwrap();
    b.publish(request("back", "bob", "one", None))
        .await
        .unwrap();
    let Claim::Granted { token } = a.claim_name("alice", None).await.unwrap() else {
        panic!("granted");
    };
    subscribe(&a, Topic::User("alice".into())).await;
    c.settle_all().await;

    c.redis.as_mut().unwrap().stop();
    eventually(Duration::from_secs(3), "a notices the outage", || {
        let a = a.clone();
        async move { !a.ready().await }
    })
    .await;
    c.redis.as_mut().unwrap().start();
    eventually(Duration::from_secs(10), "both nodes ready again", || {
        let (a, b) = (a.clone(), b.clone());
        async move { a.ready().await && b.ready().await }
    })
    .await;

    // Presence and the name claim were re-registered by a.
    eventually(Duration::from_secs(3), "alice present again", || {
        let b = b.clone();
        async move {
            b.presence("back")
                .await
                .map(|p| p == ["alice"])
                .unwrap_or(false)
        }
    })
    .await;
    assert_eq!(b.claim_name("alice", None).await.unwrap(), Claim::Taken);
    assert_eq!(
        b.claim_name("alice", Some(&token)).await.unwrap(),
        Claim::Granted {
            token: token.clone()
        },
        "the resume token survived"
    );

    // Subscriptions restored: events flow to a again.
    let p = b
        .publish(request("back", "bob", "two", None))
        .await
        .unwrap();
    assert_eq!(p.id, 1, "ids restart with the new epoch");
    let events = c.settle(0).await;
    assert_eq!(message_ids(&events, "back"), [1]);
    assert!(matches!(
        b.direct("bob", "alice", "dm", origin(&*b, 1))
            .await
            .unwrap(),
        DirectOutcome::Delivered { .. }
    ));

    let after = b.join("back", "bob", false, None).await.unwrap();
    assert_ne!(after.epoch, before.epoch, "the lost room has a new epoch");
    assert_eq!(after.last_id, 1);
}

/// A clean shutdown removes the node's presence (user_left disconnect),
/// its claims and its liveness, and ends its event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_shutdown_deregisters() {
    let mut c = redis_cluster(2).await;
    subscribe(c.node(1), Topic::Room("bye".into())).await;
    let a = c.node(0).clone();
    a.join("bye", "alice", true, None).await.unwrap();
    assert!(matches!(
        a.claim_name("alice", None).await.unwrap(),
        Claim::Granted { .. }
    ));
    c.settle(1).await;
    a.shutdown().await;
    assert!(!a.ready().await);
    let events = c.settle(1).await;
    assert_eq!(
        left(&events),
        [("alice".to_owned(), LeaveReason::Disconnect)]
    );
    assert!(c.node(1).presence("bye").await.unwrap().is_empty());
    assert!(matches!(
        c.node(1).claim_name("alice", None).await.unwrap(),
        Claim::Granted { .. }
    ));
    assert_eq!(
        c.node(1).nodes().await.unwrap(),
        [c.node(1).node_id().to_owned()]
    );
    let closed =
        tokio::time::timeout(WAIT, async { while c.events[0].recv().await.is_some() {} }).await;
    assert!(closed.is_ok(), "event stream ends after shutdown");
}

/// Accounts live in one Redis hash shared by all nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_accounts_are_shared() {
    let c = redis_cluster(2).await;
    assert!(c.node(0).create_account("ann", "h1").await.unwrap());
    assert!(!c.node(1).create_account("ann", "h2").await.unwrap());
    assert_eq!(
        c.node(1).account_hash("ann").await.unwrap().as_deref(),
        Some("h1")
    );
    assert_eq!(c.node(0).account_hash("nobody").await.unwrap(), None);
}

/// Killing the pub/sub connections (Redis stays up): the supervisors
/// reconnect and resubscribe every channel; events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_reconnects_and_resubscribes() {
    let mut c = redis_cluster(2).await;
    for i in 0..10 {
        subscribe(c.node(0), Topic::Room(format!("rs{i}"))).await;
    }
    let client = redis::Client::open(c.redis.as_ref().unwrap().url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(killed, 2, "one pub/sub connection per node");
    let b = c.node(1).clone();
    let mut got = false;
    let deadline = Instant::now() + WAIT;
    while !got && Instant::now() < deadline {
        let _ = b.publish(request("rs7", "bob", "ping", None)).await;
        if let Ok(Some(Event::Message { message, .. })) =
            tokio::time::timeout(Duration::from_millis(200), c.events[0].recv()).await
        {
            got = message.room == "rs7";
        }
    }
    assert!(
        got,
        "events flow again after the pub/sub connection was killed"
    );
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut con)
        .await
        .unwrap();
    eventually(WAIT, "both nodes resubscribed", || {
        let b = b.clone();
        async move { b.ready().await }
    })
    .await;
    assert!(
        clients.lines().count() <= 2,
        "never more than one pub/sub connection per node:\n{clients}"
    );
}

/// A TCP proxy whose existing connections can be frozen (bytes are
/// swallowed, sockets stay open): a half-dead network path.
struct FreezeProxy {
    port: u16,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
    next: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezeProxy {
    async fn start(upstream: u16) -> FreezeProxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(1));
        let (f, n) = (frozen_below.clone(), next.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let id = n.fetch_add(1, Ordering::SeqCst);
                let frozen = f.clone();
                tokio::spawn(async move {
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(pump(ri, wo, id, frozen.clone()), pump(ro, wi, id, frozen));
                });
            }
        });
        FreezeProxy {
            port,
            frozen_below,
            next,
            task,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Freezes every connection opened so far; new ones work.
    fn freeze_existing(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for FreezeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if id < frozen_below.load(std::sync::atomic::Ordering::SeqCst) {
            // Swallow: the peer sees an open socket that never answers.
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A zombie pub/sub connection (open socket, nothing delivered) is detected
/// by the probe and replaced; the command connection is replaced after its
/// heartbeat times out. Metrics count the reconnections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_zombie_connections_are_replaced() {
    let server = RedisServer::new();
    let proxy = FreezeProxy::start(server.port()).await;
    let opts = RedisOptions {
        presence_ttl: Duration::from_secs(3),
        ..options()
    };
    let a = RedisBackplane::connect(&proxy.url(), "za".into(), opts.clone())
        .await
        .expect("connect through the proxy");
    let metrics = Arc::new(relay::metrics::Metrics::new());
    a.set_metrics(metrics.clone());
    let mut events = a.take_events().unwrap();
    let a: Arc<dyn Backplane> = Arc::new(a);
    let b: Arc<dyn Backplane> = Arc::new(
        RedisBackplane::connect(&server.url(), "zb".into(), opts)
            .await
            .unwrap(),
    );
    subscribe(&a, Topic::Room("z".into())).await;
    a.join("z", "alice", true, None).await.unwrap();
    proxy.freeze_existing();

    let started = Instant::now();
    let mut got = false;
    while !got && started.elapsed() < Duration::from_secs(8) {
        let _ = b.publish(request("z", "bob", "are you there", None)).await;
        if let Ok(Some(Event::Message { message, .. })) =
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
        {
            got = message.room == "z";
        }
    }
    assert!(got, "events flow again after the connections froze");
    eventually(WAIT, "ready again", || {
        let a = a.clone();
        async move { a.ready().await }
    })
    .await;
    assert!(a.publish(request("z", "alice", "back", None)).await.is_ok());
    assert_eq!(b.presence("z").await.unwrap(), ["alice"]);
    let text = metrics.encode();
    let reconnects = text
        .lines()
        .find(|l| l.starts_with("relay_backplane_reconnects"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        reconnects >= 2.0,
        "command and pub/sub reconnections counted:\n{text}"
    );
    assert!(text.contains("op=\"publish\""), "latency by op:\n{text}");
    assert!(
        text.contains("relay_backplane_errors"),
        "errors counted:\n{text}"
    );
}
