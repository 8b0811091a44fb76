//! Redis backplane: any number of nodes sharing one Redis form a cluster.
//! The same backplane runs on a Redis Cluster (`redis+cluster://` seed
//! URL, [`cluster`]): commands routed per slot, room and user channels as
//! *sharded* channels (`SPUBLISH`/`SSUBSCRIBE`) in their tag's slot, one
//! subscription connection per shard. Everything below holds in both modes
//! except where [`cluster`] says otherwise.
//!
//! - **Fan-out** goes through Redis pub/sub on per-room channels
//!   (`P:{room}:ch`) and per-user channels (`P:user:{user}`), so only nodes
//!   with members in a room receive its traffic. Each node has ONE pub/sub
//!   connection ([`pubsub`]), never one per client. Payloads are MessagePack
//!   envelopes ([`envelope`]).
//! - **Commands** go over one supervised multiplexed connection ([`conn`]);
//!   every call is bounded by `command_timeout` and fails fast with
//!   `Unavailable` while Redis is unreachable.
//! - **Atomicity**: storing and publishing a message, presence changes and
//!   their events, name claims and reaping are each ONE Lua script touching
//!   one hash tag ([`scripts`], layout in [`keys`]).
//! - **Liveness**: a node runs under an *instance id* `NODE#RANDOM`. Every
//!   `heartbeat` it pushes its expiry (`now + presence_ttl`, Redis time) in
//!   `P:{_cluster}:nodes`; presence entries (`user|instance`) and name claims
//!   belong to the instance. When an instance's expiry passes, the first
//!   surviving node whose heartbeat sees it claims it atomically (moves it to
//!   `P:{_cluster}:reaping` with a lease) and reaps it: for every room the
//!   instance recorded in `P:node:{instance}:rooms` one script removes its
//!   entries and publishes `user_left` (reason `timeout`) for each user left
//!   with no entry at all, then its name claims are released. A reaper that
//!   dies loses its lease after `max(presence_ttl, 4 × command_timeout)` and
//!   the next heartbeat of a survivor takes over (reaping is idempotent).
//! - **Arithmetic**: a node that dies at `t` last refreshed at `t' ≤ t`, so it
//!   expires at `t' + presence_ttl ≤ t + presence_ttl`; some survivor's
//!   heartbeat runs within one `heartbeat` after that and reaps. So a dead
//!   node's users vanish (presence reads and `user_left timeout`) within
//!   `presence_ttl + heartbeat` (plus the few milliseconds reaping takes).
//!   Presence reads additionally hide entries of instances known to be dead
//!   (being reaped, or reaped recently) so they never show a reaped node.
//! - **Events follow entry counts**: `user_joined` when a user's entry count
//!   in a room goes 0 → 1, `user_left` when it goes 1 → 0, counted over all
//!   instances, so joins and leaves pair up and never repeat, whatever the
//!   interleaving of nodes, deaths and reaping.
//! - **Recovery**: this node keeps a local map of the presence entries and
//!   name claims it holds (the desired state). If Redis restarts empty or
//!   this instance was reaped (a long partition), the heartbeat notices, the
//!   node registers a NEW instance id and re-registers every entry and claim
//!   (moving them from the old id atomically per room, so nothing flickers).
//!   A call that failed leaves its room or name "dirty"; the next good
//!   heartbeat reconciles it. The pub/sub supervisor resubscribes every
//!   channel after a reconnect and restarts a connection whose probe does
//!   not come back.
//!
//! All spawned tasks end on [`Backplane::shutdown`] or when the backplane is
//! dropped (one cancellation token, one task tracker).

mod cluster;
mod conn;
mod envelope;
mod keys;
mod pubsub;
mod scripts;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::{FromRedisValue, RedisResult, ScriptInvocation};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    page, random_token, Backplane, BackplaneError, Claim, DirectOutcome, Event, EventStream,
    Origin, PublishRequest, Published, Result, RoomSnapshot, Topic,
};
use crate::metrics::{Metrics, OpLabel};
use crate::protocol::{ChatMessage, LeaveReason, HISTORY_LEN};
use conn::{AnyConn, Commands, Conn};
use keys::Keys;
use pubsub::SubCmd;
use scripts::Scripts;

/// How long a `client_id` is remembered (same as the memory backplane).
const CLIENT_ID_TTL: Duration = super::memory::CLIENT_ID_TTL;
/// Dead instances a heartbeat claims at most.
const MAX_CLAIMS: usize = 16;
/// Rooms reaped or re-registered concurrently.
const CONCURRENCY: usize = 16;
/// How long `shutdown` waits for the tasks to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// Recent own publishes remembered on a Redis Cluster (see `own_recent`).
const OWN_RECENT: usize = 1024;

/// Settings of the Redis backplane.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prefix of every key and channel (default `relay`).
    pub prefix: String,
    /// Liveness heartbeat and pub/sub probe interval.
    pub heartbeat: Duration,
    /// How long a node's presence and claims survive without its heartbeat;
    /// must exceed `heartbeat`.
    pub presence_ttl: Duration,
    /// Upper bound of every Redis call (default 2 s).
    pub command_timeout: Duration,
    /// A room with no one present expires (epoch, sequence, history) this
    /// long after its last message, join or leave; zero: never (default 7
    /// days).
    pub room_idle_ttl: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "relay".into(),
            heartbeat: Duration::from_secs(25),
            presence_ttl: Duration::from_secs(75),
            command_timeout: Duration::from_secs(2),
            room_idle_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A backplane on Redis: one node of a cluster. See the module docs.
pub struct RedisBackplane {
    shared: Arc<Shared>,
    events_rx: Mutex<Option<EventStream>>,
}

/// Instances known dead: being reaped (or expired) and recently reaped.
#[derive(Debug, Default)]
struct DeadSet {
    reaping: HashSet<String>,
    gone: HashSet<String>,
}

/// Per-key async locks (rooms, names) holding this node's desired state;
/// entries are dropped when idle and empty.
struct Slots<T> {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<T>>>>,
}

impl<T: Default> Slots<T> {
    fn new() -> Self {
        Slots {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<T>> {
        lock(&self.map).entry(key.to_owned()).or_default().clone()
    }

    fn keys(&self) -> Vec<String> {
        lock(&self.map).keys().cloned().collect()
    }

    /// Gives back a slot taken with `get`; drops it when nobody else holds
    /// it and `empty` says its state is empty.
    fn put(&self, key: &str, slot: Arc<tokio::sync::Mutex<T>>, empty: impl Fn(&T) -> bool) {
        drop(slot);
        let mut map = lock(&self.map);
        let idle = map.get(key).is_some_and(|s| {
            Arc::strong_count(s) == 1 && s.try_lock().map(|g| empty(&g)).unwrap_or(false)
        });
        if idle {
            map.remove(key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Result of the heartbeat script.
struct Beat {
    registered: bool,
    claims: Vec<String>,
    reaping: Vec<String>,
    gone: Vec<String>,
}

struct Shared {
    node_id: String,
    opts: RedisOptions,
    keys: Keys,
    scripts: Scripts,
    /// Redis Cluster (sharded pub/sub, per-recipient DM counters).
    cluster: bool,
    conn: Commands,
    /// The single-Redis pub/sub probe channel (unused on a cluster).
    probe_channel: String,
    /// This node's current instance id (`NODE#RANDOM`).
    instance: RwLock<String>,
    /// Whether the instance is registered as far as this node knows.
    registered: AtomicBool,
    pubsub_up: AtomicBool,
    /// Redis Cluster: the shard of the node registry answered the last
    /// readiness probe (always true on one Redis).
    registry_up: AtomicBool,
    /// `shutdown` started: no more re-registration.
    closing: AtomicBool,
    dead: RwLock<DeadSet>,
    /// Room → users this node holds presence entries for.
    rooms: Slots<BTreeSet<String>>,
    /// Name → the claim's token while this node holds it.
    names: Slots<Option<String>>,
    dirty_rooms: Mutex<HashSet<String>>,
    dirty_names: Mutex<HashSet<String>>,
    /// (room, instance) cleanups in flight.
    cleanups: Mutex<HashSet<(String, String)>>,
    /// Instances this node is reaping.
    reaping: Mutex<HashSet<String>>,
    events_tx: Mutex<Option<mpsc::Sender<Event>>>,
    sub_tx: mpsc::UnboundedSender<SubCmd>,
    /// Redis Cluster: this node's recent publishes (room, id, ts, origin),
    /// so a message recovered from history after a slot move is still not
    /// echoed to its sender's connection (see `cluster::Gaps`).
    own_recent: Mutex<VecDeque<(String, u64, u64, Origin)>>,
    metrics: OnceLock<Arc<Metrics>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

fn new_instance(node_id: &str) -> String {
    format!("{node_id}#{}", random_token())
}

fn node_of(instance: &str) -> &str {
    instance
        .rsplit_once('#')
        .map(|(n, _)| n)
        .unwrap_or(instance)
}

/// The subscription side as `connect` opened it (built once and consumed at
/// once, so the size difference of the variants costs nothing).
#[allow(clippy::large_enum_variant)]
enum PubSub {
    /// One Redis: the client (for replacements) and the first connection.
    Single(
        redis::Client,
        (redis::aio::PubSubSink, redis::aio::PubSubStream),
    ),
    /// Redis Cluster: the RESP3 cluster connection and its pushes.
    Cluster(
        redis::cluster_async::ClusterConnection,
        mpsc::UnboundedReceiver<redis::PushInfo>,
    ),
}

impl RedisBackplane {
    /// Connects to Redis at `url` (`redis://` or `rediss://`), or to a Redis
    /// Cluster through its seed nodes
    /// (`redis+cluster://HOST:PORT,HOST:PORT,...`: sharded pub/sub, see
    /// `docs/redis-cluster.md`), registers this node and starts its tasks
    /// (heartbeat, reaper, connection supervisors, pub/sub reader). Fails
    /// with `Unavailable` when Redis cannot be reached within
    /// `command_timeout`.
    pub async fn connect(
        url: &str,
        node_id: String,
        options: RedisOptions,
    ) -> Result<Self, BackplaneError> {
        if options.heartbeat.is_zero() || options.presence_ttl <= options.heartbeat {
            return Err(BackplaneError::Internal(
                "presence_ttl must be longer than a non-zero heartbeat".into(),
            ));
        }
        if options.command_timeout.is_zero() {
            return Err(BackplaneError::Internal(
                "command_timeout must be non-zero".into(),
            ));
        }
        let timeout = options.command_timeout;
        let keys = Keys::new(&options.prefix);
        let probe_channel = keys.probe_channel(&format!("{node_id}#{}", random_token()));
        let (conn, pubsub) = match cluster::seeds(url) {
            None => {
                let client = redis::Client::open(url)
                    .map_err(|e| BackplaneError::Internal(format!("invalid redis url: {e}")))?;
                let conn = Conn::open(client.clone(), timeout).await?;
                let pubsub = tokio::time::timeout(timeout, async {
                    let (mut sink, stream) = client.get_async_pubsub().await?.split();
                    sink.subscribe(&probe_channel).await?;
                    Ok::<_, redis::RedisError>((sink, stream))
                })
                .await
                .map_err(|_| BackplaneError::Unavailable("redis pub/sub connect timed out".into()))?
                .map_err(|e| conn::map_error("pubsub connect", e))?;
                (
                    Commands::Single(Box::new(conn)),
                    PubSub::Single(client, pubsub),
                )
            }
            Some(seeds) => {
                let seeds = seeds?;
                let conn = cluster::connect_commands(&seeds, timeout).await?;
                let (con, pushes) = cluster::connect_pubsub(&seeds, timeout).await?;
                (Commands::Cluster(conn), PubSub::Cluster(con, pushes))
            }
        };
        let is_cluster = matches!(conn, Commands::Cluster(_));

        let (events_tx, events_rx) = mpsc::channel(crate::backplane::EVENT_QUEUE);
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            instance: RwLock::new(new_instance(&node_id)),
            node_id,
            opts: options,
            keys,
            scripts: Scripts::new(is_cluster),
            cluster: is_cluster,
            conn,
            probe_channel,
            registered: AtomicBool::new(false),
            pubsub_up: AtomicBool::new(true),
            registry_up: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            dead: RwLock::new(DeadSet::default()),
            rooms: Slots::new(),
            names: Slots::new(),
            dirty_rooms: Mutex::new(HashSet::new()),
            dirty_names: Mutex::new(HashSet::new()),
            cleanups: Mutex::new(HashSet::new()),
            reaping: Mutex::new(HashSet::new()),
            events_tx: Mutex::new(Some(events_tx)),
            sub_tx,
            own_recent: Mutex::new(VecDeque::new()),
            metrics: OnceLock::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        shared.load_scripts().await?;
        let instance = shared.instance();
        let beat = shared.heartbeat(&instance, "register").await?;
        shared.registered.store(true, Ordering::SeqCst);
        shared.apply_beat(&beat, &instance);

        if let Commands::Single(_) = &shared.conn {
            let s = shared.clone();
            shared.tasks.spawn(async move {
                let s2 = s.clone();
                if let Commands::Single(conn) = &s.conn {
                    conn.supervise(&s.cancel, s.backoff_cap(), move || {
                        // Not ready until a heartbeat confirmed (or restored)
                        // the registration on the new connection.
                        s2.registered.store(false, Ordering::SeqCst);
                        s2.count_reconnect();
                    })
                    .await;
                }
            });
        }
        match pubsub {
            PubSub::Single(client, pubsub) => {
                shared
                    .tasks
                    .spawn(pubsub::run(shared.clone(), client, sub_rx, pubsub));
            }
            PubSub::Cluster(con, pushes) => {
                shared
                    .tasks
                    .spawn(cluster::run(shared.clone(), con, sub_rx, pushes));
                shared.tasks.spawn(cluster::probe(shared.clone()));
            }
        }
        shared.tasks.spawn(heartbeat_loop(shared.clone()));
        shared.spawn_reaps(beat.claims);
        tracing::info!(node = shared.node_id, instance, "redis backplane connected");
        Ok(RedisBackplane {
            shared,
            events_rx: Mutex::new(Some(events_rx)),
        })
    }

    /// Reports backplane call latency, failures and reconnections into the
    /// node's metrics (`backplane_latency`, `backplane_errors`,
    /// `backplane_reconnects`). The first call wins.
    pub fn set_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.shared.metrics.set(metrics);
    }

    /// This node's current instance id (`NODE#RANDOM`; changes when the node
    /// re-registers after its liveness was lost). For logs and tests.
    pub fn instance(&self) -> String {
        self.shared.instance()
    }
}

impl Drop for RedisBackplane {
    /// Stops every task without deregistering: to other nodes this looks
    /// like a crash (its presence expires). Call `shutdown` first for a clean
    /// exit.
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// A call failed on a broken connection (now marked down).
struct Broken(BackplaneError);

impl Shared {
    fn instance(&self) -> String {
        self.instance
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn events_sender(&self) -> Option<mpsc::Sender<Event>> {
        lock(&self.events_tx).clone()
    }

    /// Cap of reconnection backoff: the heartbeat, within 0.5..=5 s.
    fn backoff_cap(&self) -> Duration {
        self.opts
            .heartbeat
            .clamp(Duration::from_millis(500), Duration::from_secs(5))
    }

    fn reaper_lease(&self) -> Duration {
        self.opts.presence_ttl.max(self.opts.command_timeout * 4)
    }

    /// Tombstones of reaped instances are kept this long.
    fn gone_retention(&self) -> Duration {
        (self.opts.presence_ttl * 10).max(Duration::from_secs(60))
    }

    fn observe(&self, op: &'static str, started: Instant, ok: bool) {
        if let Some(m) = self.metrics.get() {
            let label = OpLabel { op };
            m.backplane_latency
                .get_or_create(&label)
                .observe(started.elapsed().as_secs_f64());
            if !ok {
                m.backplane_errors.get_or_create(&label).inc();
            }
        }
    }

    fn count_error(&self, op: &'static str) {
        if let Some(m) = self.metrics.get() {
            m.backplane_errors.get_or_create(&OpLabel { op }).inc();
        }
    }

    fn count_reconnect(&self) {
        if let Some(m) = self.metrics.get() {
            m.backplane_reconnects.inc();
        }
    }

    /// Records a message this node published (Redis Cluster only).
    fn remember_own(&self, room: &str, id: u64, ts: u64, origin: &Origin) {
        let mut own = lock(&self.own_recent);
        if own.len() >= OWN_RECENT {
            own.pop_front();
        }
        own.push_back((room.to_owned(), id, ts, origin.clone()));
    }

    /// The origin of a message this node published recently, if any.
    fn own_origin(&self, room: &str, id: u64, ts: u64) -> Option<Origin> {
        lock(&self.own_recent)
            .iter()
            .rev()
            .find(|(r, i, t, _)| *i == id && *t == ts && r == room)
            .map(|(_, _, _, o)| o.clone())
    }

    /// The idle TTL of room keys, in seconds (0: never; at least 1 s
    /// otherwise).
    fn room_ttl_secs(&self) -> u64 {
        let ttl = self.opts.room_idle_ttl;
        if ttl.is_zero() {
            0
        } else {
            ttl.as_secs().max(1)
        }
    }

    /// Runs one Redis call on the command connection: fails at once when the
    /// connection is down, is bounded by `command_timeout`, marks the
    /// connection broken on connection errors, and records metrics.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: Fn(AnyConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        // A `redis` span only inside a traced operation (a command, a
        // publish): background heartbeats and probes do not start traces.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                "redis",
                op,
                otel.kind = "client",
                db.system = "redis",
                error = tracing::field::Empty
            )
        };
        let result = tracing::Instrument::instrument(
            async {
                if self.cancel.is_cancelled() {
                    return Err(BackplaneError::Unavailable("backplane is shut down".into()));
                }
                match self.conn.get() {
                    None => Err(BackplaneError::Unavailable("redis is unreachable".into())),
                    Some((generation, con)) => {
                        let deadline = tokio::time::Instant::now() + self.opts.command_timeout;
                        match self.attempt(op, generation, &f, con, deadline).await {
                            // The connection was broken before this call
                            // (Redis restarted since its last use): once
                            // more on the supervisor's new connection.
                            Err(Broken(e)) => {
                                match self.conn.replacement(generation, deadline).await {
                                    Some((generation, con)) => self
                                        .attempt(op, generation, &f, con, deadline)
                                        .await
                                        .unwrap_or_else(|Broken(e)| Err(e)),
                                    None => Err(e),
                                }
                            }
                            Ok(r) => r,
                        }
                    }
                }
            },
            span.clone(),
        )
        .await;
        if let Err(e) = &result {
            span.record("error", tracing::field::display(e));
        }
        self.observe(op, started, result.is_ok());
        result
    }

    /// One try of a call on connection `generation` until `deadline`;
    /// `Err(Broken)` when the connection failed (it is marked down).
    async fn attempt<T, F, Fut>(
        &self,
        op: &'static str,
        generation: u64,
        f: &F,
        con: AnyConn,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<Result<T>, Broken>
    where
        F: Fn(AnyConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout_at(deadline, f(con)).await {
            Err(_) => Ok(Err(BackplaneError::Unavailable(format!(
                "{op}: no reply from redis within {:?}",
                self.opts.command_timeout
            )))),
            Ok(Err(e)) if conn::is_connection_error(&e) => {
                self.conn.mark_down(generation);
                Err(Broken(conn::map_error(op, e)))
            }
            Ok(Err(e)) => Ok(Err(conn::map_error(op, e))),
            Ok(Ok(v)) => Ok(Ok(v)),
        }
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT).
    async fn eval<T: FromRedisValue>(
        &self,
        op: &'static str,
        invocation: ScriptInvocation<'_>,
    ) -> Result<T> {
        let invocation = &invocation;
        self.call(op, move |mut con| async move {
            invocation.invoke_async(&mut con).await
        })
        .await
    }

    /// Runs one command.
    async fn cmd<T: FromRedisValue>(&self, op: &'static str, cmd: redis::Cmd) -> Result<T> {
        let cmd = &cmd;
        self.call(
            op,
            move |mut con| async move { cmd.query_async(&mut con).await },
        )
        .await
    }

    /// The room's whole stored history (at most the cap), oldest first;
    /// `op` labels the call in metrics.
    async fn read_history(&self, op: &'static str, room: &str) -> Result<Vec<ChatMessage>> {
        let key = self.keys.history(room);
        let entries: Vec<Vec<u8>> = self
            .cmd(op, redis::cmd("LRANGE").arg(key).arg(0).arg(-1).to_owned())
            .await?;
        Ok(decode_history(room, &entries))
    }

    async fn load_scripts(&self) -> Result<()> {
        for script in self.scripts.all() {
            let invocation = &script.prepare_invoke();
            self.call("load_scripts", move |mut con| async move {
                invocation.load_async(&mut con).await
            })
            .await?;
        }
        Ok(())
    }

    /// Runs the heartbeat script for `instance` in `mode` (`beat` or
    /// `register`).
    async fn heartbeat(&self, instance: &str, mode: &str) -> Result<Beat> {
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.keys.nodes())
            .key(self.keys.reaping())
            .key(self.keys.reapers())
            .key(self.keys.gone())
            .arg(instance)
            .arg(self.opts.presence_ttl.as_millis() as u64)
            .arg(self.reaper_lease().as_millis() as u64)
            .arg(MAX_CLAIMS)
            .arg(mode)
            .arg(self.gone_retention().as_millis() as u64);
        let (registered, claims, reaping, gone): (i64, Vec<String>, Vec<String>, Vec<String>) =
            self.eval("heartbeat", inv).await?;
        Ok(Beat {
            registered: registered == 1,
            claims,
            reaping,
            gone,
        })
    }

    fn apply_beat(&self, beat: &Beat, instance: &str) {
        let mut dead = self.dead.write().unwrap_or_else(|e| e.into_inner());
        dead.reaping = beat
            .reaping
            .iter()
            .filter(|i| *i != instance)
            .cloned()
            .collect();
        dead.gone = beat
            .gone
            .iter()
            .filter(|i| *i != instance)
            .cloned()
            .collect();
    }

    fn dead_list(&self) -> Vec<String> {
        let dead = self.dead.read().unwrap_or_else(|e| e.into_inner());
        dead.reaping
            .iter()
            .chain(dead.gone.iter())
            .cloned()
            .collect()
    }

    /// Users of presence entries (`user|instance`) whose instance is not
    /// known dead, sorted. Entries of reaped instances that are still there
    /// (a write that raced the reaper) are cleaned up in the background.
    fn live_users(self: &Arc<Self>, room: &str, entries: Vec<String>) -> Vec<String> {
        let mut users = BTreeSet::new();
        let mut stale = Vec::new();
        {
            let dead = self.dead.read().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                let Some((user, instance)) = entry.split_once('|') else {
                    continue;
                };
                if dead.gone.contains(instance) {
                    stale.push(instance.to_owned());
                } else if !dead.reaping.contains(instance) {
                    users.insert(user.to_owned());
                }
            }
        }
        for instance in stale {
            self.spawn_cleanup(room, instance);
        }
        users.into_iter().collect()
    }

    fn spawn_cleanup(self: &Arc<Self>, room: &str, instance: String) {
        let key = (room.to_owned(), instance);
        if !lock(&self.cleanups).insert(key.clone()) {
            return;
        }
        let s = self.clone();
        self.tasks.spawn(async move {
            let (room, instance) = &key;
            if let Err(e) = s
                .sync_room(room, instance, "", &[], LeaveReason::Timeout)
                .await
            {
                tracing::debug!(room, instance, error = %e, "cleanup of a reaped instance failed");
            }
            lock(&s.cleanups).remove(&key);
        });
    }

    /// Makes `instance`'s entries in `room` equal `users` (see
    /// `scripts/sync_room.lua`).
    async fn sync_room(
        &self,
        room: &str,
        instance: &str,
        old: &str,
        users: &[String],
        reason: LeaveReason,
    ) -> Result<()> {
        let mut inv = self.scripts.sync_room.prepare_invoke();
        inv.key(self.keys.presence(room))
            .key(self.keys.epoch(room))
            .key(self.keys.seq(room))
            .key(self.keys.history(room))
            .arg(room)
            .arg(self.keys.room_channel(room))
            .arg(instance)
            .arg(old)
            .arg(reason.as_str())
            .arg(self.room_ttl_secs());
        for user in users {
            inv.arg(user);
        }
        let _: (i64, i64) = self.eval("sync", inv).await?;
        Ok(())
    }

    /// Claims `name` for `instance` (see `scripts/claim_name.lua`).
    async fn claim_script(
        &self,
        name: &str,
        instance: &str,
        resume: &str,
        token: &str,
        old: &str,
    ) -> Result<Option<String>> {
        let mut inv = self.scripts.claim_name.prepare_invoke();
        inv.key(self.keys.name_token(name))
            .key(self.keys.name_holders(name))
            .arg(instance)
            .arg(resume)
            .arg(token)
            .arg(old);
        for dead in self.dead_list() {
            inv.arg(dead);
        }
        let (granted, token): (i64, String) = self.eval("claim_name", inv).await?;
        Ok((granted == 1).then_some(token))
    }

    async fn release_script(&self, name: &str, instance: &str) -> Result<()> {
        let mut inv = self.scripts.release_name.prepare_invoke();
        inv.key(self.keys.name_token(name))
            .key(self.keys.name_holders(name))
            .arg(instance);
        let _: i64 = self.eval("release_name", inv).await?;
        Ok(())
    }

    fn srem(&self, key: String, member: &str) -> redis::Cmd {
        redis::cmd("SREM").arg(key).arg(member).to_owned()
    }

    fn sadd(&self, key: String, member: &str) -> redis::Cmd {
        redis::cmd("SADD").arg(key).arg(member).to_owned()
    }

    /// One heartbeat: refresh liveness, learn dead instances, start reaping
    /// claimed ones, re-register if this instance was lost, and reconcile
    /// rooms and names left dirty by failed calls.
    async fn beat(self: &Arc<Self>) {
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        let instance = self.instance();
        let beat = match self.heartbeat(&instance, "beat").await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "redis heartbeat failed");
                self.registered.store(false, Ordering::SeqCst);
                // A connection that cannot carry the heartbeat in time is
                // replaced (connection errors already marked it down).
                if matches!(e, BackplaneError::Unavailable(_)) {
                    if let Some((generation, _)) = self.conn.get() {
                        self.conn.mark_down(generation);
                    }
                }
                return;
            }
        };
        self.apply_beat(&beat, &instance);
        if !beat.registered {
            self.registered.store(false, Ordering::SeqCst);
            if let Err(e) = self.reregister(&instance).await {
                tracing::warn!(error = %e, "re-registration failed; retrying on the next heartbeat");
            }
            return;
        }
        self.registered.store(true, Ordering::SeqCst);
        self.spawn_reaps(beat.claims);
        self.reconcile().await;
    }

    /// Registers a new instance id and moves every presence entry and name
    /// claim this node holds to it (this instance's liveness was lost:
    /// Redis restarted empty, or it was reaped after a long partition).
    async fn reregister(self: &Arc<Self>, old: &str) -> Result<()> {
        if self.closing.load(Ordering::SeqCst) {
            return Ok(());
        }
        let instance = new_instance(&self.node_id);
        let beat = self.heartbeat(&instance, "register").await?;
        *self.instance.write().unwrap_or_else(|e| e.into_inner()) = instance.clone();
        self.apply_beat(&beat, &instance);
        tracing::warn!(
            old,
            instance,
            "liveness was lost; re-registering presence and claims"
        );

        let rooms = self.rooms.keys();
        futures_util::stream::iter(rooms)
            .for_each_concurrent(CONCURRENCY, |room| {
                let (s, instance) = (self.clone(), instance.clone());
                async move {
                    let slot = s.rooms.get(&room);
                    let users = slot.lock().await;
                    let users_vec: Vec<String> = users.iter().cloned().collect();
                    let result = async {
                        if !users_vec.is_empty() {
                            s.cmd::<i64>("sync", s.sadd(s.keys.node_rooms(&instance), &room))
                                .await?;
                        }
                        s.sync_room(&room, &instance, old, &users_vec, LeaveReason::Disconnect)
                            .await
                    }
                    .await;
                    drop(users);
                    if result.is_err() {
                        lock(&s.dirty_rooms).insert(room.clone());
                    }
                    s.rooms.put(&room, slot, BTreeSet::is_empty);
                }
            })
            .await;

        for name in self.names.keys() {
            let slot = self.names.get(&name);
            let held = slot.lock().await;
            let result = match held.as_deref() {
                Some(token) => self.reclaim(&name, &instance, token, old).await,
                None => Ok(()),
            };
            drop(held);
            if result.is_err() {
                lock(&self.dirty_names).insert(name.clone());
            }
            self.names.put(&name, slot, Option::is_none);
        }
        self.registered.store(true, Ordering::SeqCst);
        self.spawn_reaps(beat.claims);
        Ok(())
    }

    /// Re-takes a name this node holds, keeping its token.
    async fn reclaim(&self, name: &str, instance: &str, token: &str, old: &str) -> Result<()> {
        self.cmd::<i64>(
            "claim_name",
            self.sadd(self.keys.node_names(instance), name),
        )
        .await?;
        if self
            .claim_script(name, instance, token, token, old)
            .await?
            .is_none()
        {
            // Someone else took the name while this node was cut off. The
            // trait has no way to tell the sessions; they keep the name
            // locally until they disconnect.
            tracing::warn!(
                name,
                "guest name was taken by another node while this node was unreachable"
            );
            self.count_error("claim_conflict");
        }
        Ok(())
    }

    /// Retries what failed calls left behind.
    async fn reconcile(self: &Arc<Self>) {
        let rooms: Vec<String> = lock(&self.dirty_rooms).drain().collect();
        for room in rooms {
            let slot = self.rooms.get(&room);
            let users = slot.lock().await;
            let instance = self.instance();
            let users_vec: Vec<String> = users.iter().cloned().collect();
            let result = async {
                self.sync_room(&room, &instance, "", &users_vec, LeaveReason::Disconnect)
                    .await?;
                let key = self.keys.node_rooms(&instance);
                if users_vec.is_empty() {
                    self.cmd::<i64>("sync", self.srem(key, &room)).await
                } else {
                    self.cmd::<i64>("sync", self.sadd(key, &room)).await
                }
            }
            .await;
            drop(users);
            if result.is_err() {
                lock(&self.dirty_rooms).insert(room.clone());
            }
            self.rooms.put(&room, slot, BTreeSet::is_empty);
        }
        let names: Vec<String> = lock(&self.dirty_names).drain().collect();
        for name in names {
            let slot = self.names.get(&name);
            let held = slot.lock().await;
            let instance = self.instance();
            let result = match held.as_deref() {
                Some(token) => self.reclaim(&name, &instance, token, "").await,
                None => self.release(&name, &instance).await,
            };
            drop(held);
            if result.is_err() {
                lock(&self.dirty_names).insert(name.clone());
            }
            self.names.put(&name, slot, Option::is_none);
        }
    }

    async fn release(&self, name: &str, instance: &str) -> Result<()> {
        self.release_script(name, instance).await?;
        self.cmd::<i64>(
            "release_name",
            self.srem(self.keys.node_names(instance), name),
        )
        .await?;
        Ok(())
    }

    fn spawn_reaps(self: &Arc<Self>, claims: Vec<String>) {
        for dead in claims {
            if !lock(&self.reaping).insert(dead.clone()) {
                continue;
            }
            let s = self.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    _ = s.cancel.cancelled() => {}
                    r = s.reap(&dead) => match r {
                        Ok(rooms) => tracing::info!(instance = dead, rooms, "reaped a dead node"),
                        Err(e) => tracing::warn!(instance = dead, error = %e, "reaping failed; another node retries after the lease"),
                    }
                }
                lock(&s.reaping).remove(&dead);
            });
        }
    }

    /// Removes a dead instance's presence entries (publishing `user_left`
    /// with reason `timeout` where due) and name claims, then records it as
    /// gone. Returns the number of rooms processed.
    async fn reap(self: &Arc<Self>, dead: &str) -> Result<usize> {
        let started = Instant::now();
        let rooms: Vec<String> = self
            .cmd(
                "reap",
                redis::cmd("SMEMBERS")
                    .arg(self.keys.node_rooms(dead))
                    .to_owned(),
            )
            .await?;
        let count = rooms.len();
        for chunk in rooms.chunks(CONCURRENCY * 4) {
            let results: Vec<Result<()>> = futures_util::stream::iter(chunk.to_vec())
                .map(|room| {
                    let (s, dead) = (self.clone(), dead.to_owned());
                    async move {
                        s.sync_room(&room, &dead, "", &[], LeaveReason::Timeout)
                            .await
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>>>()?;
            if !self.lease(dead, "extend").await? {
                return Err(BackplaneError::Internal("reaper lease lost".into()));
            }
        }
        let names: Vec<String> = self
            .cmd(
                "reap",
                redis::cmd("SMEMBERS")
                    .arg(self.keys.node_names(dead))
                    .to_owned(),
            )
            .await?;
        for name in &names {
            self.release_script(name, dead).await?;
        }
        self.cmd::<i64>(
            "reap",
            redis::cmd("DEL")
                .arg(self.keys.node_rooms(dead))
                .arg(self.keys.node_names(dead))
                .to_owned(),
        )
        .await?;
        self.lease(dead, "done").await?;
        self.observe("reap", started, true);
        Ok(count)
    }

    async fn lease(&self, dead: &str, op: &str) -> Result<bool> {
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(self.keys.reaping())
            .key(self.keys.reapers())
            .key(self.keys.gone())
            .arg(dead)
            .arg(self.instance())
            .arg(op)
            .arg(self.reaper_lease().as_millis() as u64);
        let applied: i64 = self.eval("reap", inv).await?;
        Ok(applied == 1)
    }

    /// `PUBLISH` on one Redis, `SPUBLISH` (sharded) on a cluster.
    fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => self.keys.room_channel(room),
            Topic::User(user) => self.keys.user_channel(user),
        }
    }

    /// The join script: fixes the epoch, optionally adds an entry, reads
    /// the snapshot.
    async fn join_script(
        self: &Arc<Self>,
        room: &str,
        user: &str,
        add: bool,
        instance: &str,
        origin: Option<&Origin>,
    ) -> Result<RoomSnapshot> {
        let mut inv = self.scripts.join.prepare_invoke();
        inv.key(self.keys.epoch(room))
            .key(self.keys.seq(room))
            .key(self.keys.history(room))
            .key(self.keys.presence(room))
            .arg(room)
            .arg(user)
            .arg(if add { "1" } else { "0" })
            .arg(instance)
            .arg(random_token())
            .arg(self.keys.room_channel(room))
            .arg(origin.map(|o| o.node.as_str()).unwrap_or(""))
            .arg(origin.map(|o| o.session).unwrap_or(0))
            .arg(self.room_ttl_secs());
        let (epoch, last_id, history, entries): (String, u64, Vec<Vec<u8>>, Vec<String>) =
            self.eval("join", inv).await?;
        Ok(RoomSnapshot {
            epoch,
            last_id,
            messages: decode_history(room, &history),
            presence: self.live_users(room, entries),
        })
    }
}

fn decode_history(room: &str, entries: &[Vec<u8>]) -> Vec<ChatMessage> {
    entries
        .iter()
        .filter_map(|bytes| {
            let m = envelope::decode_stored(bytes);
            if m.is_none() {
                tracing::warn!(room, "undecodable history entry skipped");
            }
            m
        })
        .collect()
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let period = shared.opts.heartbeat;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = ticker.tick() => {}
            // Right after a reconnection: re-register without waiting.
            _ = shared.conn.reconnected() => {}
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = shared.beat() => {}
        }
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    fn take_events(&self) -> Option<EventStream> {
        lock(&self.events_rx).take()
    }

    fn subscribe(&self, topic: Topic) -> oneshot::Receiver<Result<()>> {
        let (tx, rx) = oneshot::channel();
        let channel = self.shared.channel(&topic);
        if let Err(mpsc::error::SendError(SubCmd::Subscribe(_, tx))) =
            self.shared.sub_tx.send(SubCmd::Subscribe(channel, tx))
        {
            let _ = tx.send(Err(BackplaneError::Unavailable(
                "backplane is shut down".into(),
            )));
        }
        rx
    }

    fn unsubscribe(&self, topic: Topic) {
        let channel = self.shared.channel(&topic);
        let _ = self.shared.sub_tx.send(SubCmd::Unsubscribe(channel));
    }

    async fn publish(&self, req: PublishRequest) -> Result<Published> {
        let s = &self.shared;
        let keys = &s.keys;
        let mut inv = s.scripts.publish.prepare_invoke();
        inv.key(keys.epoch(&req.room))
            .key(keys.seq(&req.room))
            .key(keys.history(&req.room))
            .key(keys.presence(&req.room));
        if let Some(client_id) = &req.client_id {
            inv.key(keys.client_id(&req.room, &req.from, client_id));
        }
        inv.arg(&req.room)
            .arg(&req.from)
            .arg(&req.text)
            .arg(random_token())
            .arg(keys.room_channel(&req.room))
            .arg(HISTORY_LEN)
            .arg(CLIENT_ID_TTL.as_secs())
            .arg(req.origin.as_ref().map(|o| o.node.as_str()).unwrap_or(""))
            .arg(req.origin.as_ref().map(|o| o.session).unwrap_or(0))
            .arg(req.traceparent.as_deref().unwrap_or(""))
            .arg(s.room_ttl_secs());
        let (duplicate, id, ts): (i64, u64, u64) = s.eval("publish", inv).await?;
        if s.cluster && duplicate == 0 {
            if let Some(origin) = &req.origin {
                s.remember_own(&req.room, id, ts, origin);
            }
        }
        Ok(Published {
            id,
            ts,
            duplicate: duplicate == 1,
        })
    }

    async fn join(
        &self,
        room: &str,
        user: &str,
        add_presence: bool,
        origin: Option<Origin>,
    ) -> Result<RoomSnapshot> {
        let s = &self.shared;
        if !add_presence {
            let instance = s.instance();
            return s
                .join_script(room, user, false, &instance, origin.as_ref())
                .await;
        }
        let slot = s.rooms.get(room);
        let mut users = slot.lock().await;
        let instance = s.instance();
        let result = async {
            if users.is_empty() {
                // Recorded first, so a reaper finds the room if this node
                // dies right after adding the entry.
                s.cmd::<i64>("join", s.sadd(s.keys.node_rooms(&instance), room))
                    .await?;
            }
            let added = users.insert(user.to_owned());
            let snapshot = s
                .join_script(room, user, true, &instance, origin.as_ref())
                .await;
            if snapshot.is_err() {
                // The join had no effect for the node; the entry may or may
                // not exist in Redis: reconcile later.
                if added {
                    users.remove(user);
                }
                lock(&s.dirty_rooms).insert(room.to_owned());
            }
            snapshot
        }
        .await;
        drop(users);
        s.rooms.put(room, slot, BTreeSet::is_empty);
        result
    }

    async fn leave(&self, room: &str, user: &str, reason: LeaveReason) -> Result<()> {
        let s = &self.shared;
        let slot = s.rooms.get(room);
        let mut users = slot.lock().await;
        // Removed from the desired state even if Redis fails below.
        users.remove(user);
        let instance = s.instance();
        let result = async {
            let mut inv = s.scripts.leave.prepare_invoke();
            inv.key(s.keys.presence(room))
                .key(s.keys.epoch(room))
                .key(s.keys.seq(room))
                .key(s.keys.history(room))
                .arg(room)
                .arg(user)
                .arg(&instance)
                .arg(reason.as_str())
                .arg(s.keys.room_channel(room))
                .arg(s.room_ttl_secs());
            let _: i64 = s.eval("leave", inv).await?;
            if users.is_empty() {
                s.cmd::<i64>("leave", s.srem(s.keys.node_rooms(&instance), room))
                    .await?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            lock(&s.dirty_rooms).insert(room.to_owned());
        }
        drop(users);
        s.rooms.put(room, slot, BTreeSet::is_empty);
        result
    }

    async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>> {
        let messages = self.shared.read_history("history", room).await?;
        Ok(page(&messages, before, limit))
    }

    async fn presence(&self, room: &str) -> Result<Vec<String>> {
        let s = &self.shared;
        let entries: Vec<String> = s
            .cmd(
                "presence",
                redis::cmd("ZRANGE")
                    .arg(s.keys.presence(room))
                    .arg(0)
                    .arg(-1)
                    .to_owned(),
            )
            .await?;
        Ok(s.live_users(room, entries))
    }

    async fn typing(&self, room: &str, user: &str, active: bool, origin: Origin) -> Result<()> {
        let s = &self.shared;
        let payload = envelope::typing(room, user, active, &origin);
        let _: i64 = s
            .cmd(
                "typing",
                redis::cmd(s.publish_command())
                    .arg(s.keys.room_channel(room))
                    .arg(payload)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn claim_name(&self, name: &str, resume: Option<&str>) -> Result<Claim> {
        let s = &self.shared;
        let slot = s.names.get(name);
        let mut held = slot.lock().await;
        // The node claims on a user's first local connection: it holds
        // nothing until this call succeeds.
        *held = None;
        let instance = s.instance();
        let result = async {
            // Recorded first, so a reaper finds the claim if this node dies.
            s.cmd::<i64>("claim_name", s.sadd(s.keys.node_names(&instance), name))
                .await?;
            let granted = s
                .claim_script(name, &instance, resume.unwrap_or(""), &random_token(), "")
                .await;
            match granted {
                Ok(Some(token)) => {
                    *held = Some(token.clone());
                    Ok(Claim::Granted { token })
                }
                Ok(None) => {
                    let _ = s
                        .cmd::<i64>("claim_name", s.srem(s.keys.node_names(&instance), name))
                        .await;
                    Ok(Claim::Taken)
                }
                Err(e) => {
                    lock(&s.dirty_names).insert(name.to_owned());
                    Err(e)
                }
            }
        }
        .await;
        drop(held);
        s.names.put(name, slot, Option::is_none);
        result
    }

    async fn release_name(&self, name: &str) -> Result<()> {
        let s = &self.shared;
        let slot = s.names.get(name);
        let mut held = slot.lock().await;
        *held = None;
        let instance = s.instance();
        let result = s.release(name, &instance).await;
        if result.is_err() {
            lock(&s.dirty_names).insert(name.to_owned());
        }
        drop(held);
        s.names.put(name, slot, Option::is_none);
        result
    }

    async fn direct(
        &self,
        from: &str,
        to: &str,
        text: &str,
        origin: Origin,
    ) -> Result<DirectOutcome> {
        let s = &self.shared;
        let mut inv = s.scripts.direct.prepare_invoke();
        // On a cluster the script runs in the recipient's slot (its counter
        // and channel) and the sender's copy is published separately: the
        // sender's channel lives in another slot.
        let (counter, sender_channel) = if s.cluster {
            (s.keys.user_dm_seq(to), String::new())
        } else {
            (s.keys.dm_seq(), s.keys.user_channel(from))
        };
        inv.key(counter)
            .arg(from)
            .arg(to)
            .arg(text)
            .arg(s.keys.user_channel(to))
            .arg(sender_channel)
            .arg(&origin.node)
            .arg(origin.session);
        let (delivered, id, ts, packed): (i64, u64, u64, Vec<u8>) = s.eval("direct", inv).await?;
        if delivered != 1 {
            return Ok(DirectOutcome::Offline);
        }
        if s.cluster && from != to {
            // Delivered to the recipient already: a failure here only costs
            // the sender's other connections their copy.
            let copy = redis::cmd("SPUBLISH")
                .arg(s.keys.user_channel(from))
                .arg(packed)
                .to_owned();
            if let Err(e) = s.cmd::<i64>("direct", copy).await {
                tracing::debug!(error = %e, "publishing the sender's copy of a direct message failed");
            }
        }
        Ok(DirectOutcome::Delivered { id, ts })
    }

    async fn create_account(&self, name: &str, password_hash: &str) -> Result<bool> {
        let s = &self.shared;
        let created: i64 = s
            .cmd(
                "create_account",
                redis::cmd("HSETNX")
                    .arg(s.keys.accounts())
                    .arg(name)
                    .arg(password_hash)
                    .to_owned(),
            )
            .await?;
        Ok(created == 1)
    }

    async fn account_hash(&self, name: &str) -> Result<Option<String>> {
        let s = &self.shared;
        s.cmd(
            "account_hash",
            redis::cmd("HGET")
                .arg(s.keys.accounts())
                .arg(name)
                .to_owned(),
        )
        .await
    }

    async fn ready(&self) -> bool {
        let s = &self.shared;
        !s.cancel.is_cancelled()
            && s.conn.is_up()
            && s.pubsub_up.load(Ordering::SeqCst)
            && s.registry_up.load(Ordering::SeqCst)
            && s.registered.load(Ordering::SeqCst)
    }

    async fn nodes(&self) -> Result<Vec<String>> {
        let s = &self.shared;
        let mut inv = s.scripts.nodes.prepare_invoke();
        inv.key(s.keys.nodes());
        let instances: Vec<String> = s.eval("nodes", inv).await?;
        let nodes: BTreeSet<String> = instances.iter().map(|i| node_of(i).to_owned()).collect();
        Ok(nodes.into_iter().collect())
    }

    async fn shutdown(&self) {
        let s = &self.shared;
        if s.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        let instance = &s.instance();
        futures_util::stream::iter(s.rooms.keys())
            .for_each_concurrent(CONCURRENCY, |room| async move {
                let slot = s.rooms.get(&room);
                let mut users = slot.lock().await;
                if let Err(e) = s
                    .sync_room(&room, instance, "", &[], LeaveReason::Disconnect)
                    .await
                {
                    tracing::warn!(room, error = %e, "removing presence on shutdown failed; it expires");
                }
                users.clear();
            })
            .await;
        for name in s.names.keys() {
            let slot = s.names.get(&name);
            let mut held = slot.lock().await;
            if held.take().is_some() {
                if let Err(e) = s.release_script(&name, instance).await {
                    tracing::warn!(name, error = %e, "releasing a name on shutdown failed; it expires");
                }
            }
        }
        let _ = s
            .cmd::<i64>(
                "shutdown",
                redis::cmd("DEL")
                    .arg(s.keys.node_rooms(instance))
                    .arg(s.keys.node_names(instance))
                    .to_owned(),
            )
            .await;
        let _ = s
            .cmd::<i64>(
                "shutdown",
                redis::cmd("ZREM")
                    .arg(s.keys.nodes())
                    .arg(instance)
                    .to_owned(),
            )
            .await;
        s.registered.store(false, Ordering::SeqCst);
        s.cancel.cancel();
        // Ends the event stream once the reader stopped.
        lock(&s.events_tx).take();
        s.tasks.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, s.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("redis backplane tasks did not stop in time");
        }
        tracing::info!(node = s.node_id, "redis backplane shut down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_map_back_to_nodes() {
        let i = new_instance("host-1#x");
        assert!(i.starts_with("host-1#x#"));
        assert_eq!(node_of(&i), "host-1#x");
        assert_eq!(node_of("plain"), "plain");
    }

    #[test]
    fn scripts_compile_into_the_binary() {
        let s = Scripts::new(false);
        assert!(s.all().iter().all(|s| s.get_hash().len() == 40));
    }
}
