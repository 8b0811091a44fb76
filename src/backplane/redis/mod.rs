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

mod accounts;
mod broker;
mod cluster;
mod conn;
mod envelope;
mod keys;
mod liveness;
mod names;
mod presence;
mod pubsub;
mod revocations;
mod scripts;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use redis::{FromRedisValue, RedisResult, ScriptInvocation};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{random_token, BackplaneError, Event, EventStream, Origin, Result, Topic};
use crate::metrics::{Metrics, OpLabel};
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
    dead: RwLock<liveness::DeadSet>,
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
            scripts: Scripts::new(),
            cluster: is_cluster,
            conn,
            probe_channel,
            registered: AtomicBool::new(false),
            pubsub_up: AtomicBool::new(true),
            registry_up: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            dead: RwLock::new(liveness::DeadSet::default()),
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
        shared.tasks.spawn(liveness::heartbeat_loop(shared.clone()));
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

    fn srem(&self, key: String, member: &str) -> redis::Cmd {
        redis::cmd("SREM").arg(key).arg(member).to_owned()
    }

    fn sadd(&self, key: String, member: &str) -> redis::Cmd {
        redis::cmd("SADD").arg(key).arg(member).to_owned()
    }

    /// A script's invocation with its first argument, the publish command
    /// (see `scripts/prelude.lua`); the caller adds keys and the script's own
    /// arguments.
    fn invoke<'a>(&self, script: &'a redis::Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(self.publish_command());
        invocation
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
        let s = Scripts::new();
        assert!(s.all().iter().all(|s| s.get_hash().len() == 40));
    }
}
