//! Redis Cluster support: the `redis+cluster://` URL, the command
//! connection, and the sharded pub/sub supervisor.
//!
//! What the `redis` crate's cluster connection does for us (and is used
//! as is): it learns the slot map from the seed nodes, keeps one multiplexed
//! connection per shard, routes every command (and `EVALSHA`) by the slot of
//! its first key, follows `MOVED`/`ASK`, refreshes the topology on
//! redirections and connection errors, reconnects each shard in the
//! background, and (on a RESP3 connection with a push sender) tracks sharded
//! subscriptions and re-issues `SSUBSCRIBE` on a shard after it reconnected
//! or after a topology refresh moved slots.
//!
//! What is written here because the crate lacks it:
//! - a server that loses a slot (migration, failover) unsubscribes its
//!   clients with an `sunsubscribe` push; the crate takes that as a plain
//!   unsubscription and forgets the channel. The supervisor re-subscribes
//!   every channel the node still needs (the new `SSUBSCRIBE` is routed to
//!   the slot's new owner), retrying until it sticks.
//! - a sweep every heartbeat re-issues `SSUBSCRIBE` for every needed channel
//!   (idempotent on the server): a backstop for a lost subscription the crate
//!   did not notice, and it makes a connection that points at a failed-over
//!   address learn the new topology from the `MOVED` it gets.
//! - per-channel outcomes: a subscription on a shard that is down fails
//!   alone (`unavailable`); channels on other shards are not affected.
//! - recovery of room messages lost to a slot move ([`Gaps`]). Sharded
//!   pub/sub delivers a message only to the subscribers *on the node that
//!   ran the publish*. While a slot migrates, the publish script runs on
//!   the target as soon as the room's keys moved there (the crate follows
//!   the source's `ASK`), and once the target owns the slot it runs there
//!   for good; but this node's subscription stays on the source until the
//!   source gives the slot up (`sunsubscribe`) and the re-subscription
//!   reaches the target. Messages published in that window are acked and
//!   stored in history but never reach this node live. Room ids are
//!   gapless per epoch, so the reader tracks the last id it delivered per
//!   room channel: a message with a higher-than-next id, or a
//!   re-subscription after a move, makes it read the room's history and
//!   deliver the missing messages first, in id order; a message already
//!   delivered that way arrives live later and is dropped.
//!
//! - readiness: on one Redis a lost connection shows at once (the
//!   subscription connection's read fails); a cluster connection reconnects
//!   each shard silently, so [`probe`] asks the node registry's shard every
//!   [`PROBE_EVERY`] (or heartbeat, if shorter) and `/readyz` follows its
//!   answer: 503 within a few seconds of a total outage, whatever the
//!   heartbeat.
//!
//! Subscribe and unsubscribe requests are applied in call order by one task
//! (as on one Redis), so a quick unsubscribe/subscribe pair cannot be
//! reordered; a separate reader task turns pushes into events, so a shard
//! that is slow to answer a subscription never delays other shards' events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::map_error;
use super::pubsub::{changes, unavailable, Changes, Deliver, SubCmd};
use super::Shared;
use crate::backplane::{BackplaneError, Event, Result};

/// URL scheme of a Redis Cluster backplane.
pub(super) const SCHEME: &str = "redis+cluster://";

/// Requests applied together at most.
const MAX_BURST: usize = 10_000;
/// Channels (re-)subscribed concurrently.
const CONCURRENCY: usize = 256;
/// How often channels the server unsubscribed us from are retried.
const LOST_RETRY: Duration = Duration::from_millis(100);

/// Period of the readiness probe (shorter with a shorter heartbeat).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Asks the shard of the node registry (which every heartbeat needs) for
/// the registry's existence until the backplane is cancelled; records in
/// `registry_up` whether it answered within the command timeout.
pub(super) async fn probe(shared: Arc<Shared>) {
    use std::sync::atomic::Ordering;
    let period = shared.opts.heartbeat.min(PROBE_EVERY);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let key = shared.keys.nodes();
        let answer: Result<i64> = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = shared.cmd("probe", redis::cmd("EXISTS").arg(key).to_owned()) => r,
        };
        let up = answer.is_ok();
        if shared.registry_up.swap(up, Ordering::SeqCst) != up {
            if up {
                tracing::info!("redis cluster: the registry's shard answers again");
            } else {
                tracing::warn!("redis cluster: the registry's shard does not answer; not ready");
            }
        }
    }
}

/// The seed node URLs of `redis+cluster://[USER:PASSWORD@]HOST:PORT,...[/]`,
/// or `None` when `url` is not a cluster URL.
pub(super) fn seeds(url: &str) -> Option<Result<Vec<String>>> {
    let rest = url.strip_prefix(SCHEME)?;
    let rest = rest.split(['/', '?']).next().unwrap_or("");
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let mut seeds = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let valid = host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !valid {
            return Some(Err(BackplaneError::Internal(format!(
                "invalid redis cluster seed `{host}`: expected HOST:PORT"
            ))));
        }
        seeds.push(format!("redis://{auth}{host}"));
    }
    if seeds.is_empty() {
        return Some(Err(BackplaneError::Internal(
            "redis+cluster:// URL names no seed node".into(),
        )));
    }
    Some(Ok(seeds))
}

fn builder(seeds: &[String], timeout: Duration) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // The crate gives up (and never sends a request late) once the
        // caller's bound passed: a call answered `unavailable` has no effect.
        .overall_response_timeout(Some(timeout))
}

async fn open(
    builder: ClusterClientBuilder,
    timeout: Duration,
    what: &str,
) -> Result<ClusterConnection> {
    let client = builder
        .build()
        .map_err(|e| BackplaneError::Internal(format!("invalid redis cluster URL: {e}")))?;
    tokio::time::timeout(timeout, client.get_async_connection())
        .await
        .map_err(|_| BackplaneError::Unavailable(format!("redis cluster {what} timed out")))?
        .map_err(|e| map_error(what, e))
}

/// The command connection (RESP2, no pushes).
pub(super) async fn connect_commands(
    seeds: &[String],
    timeout: Duration,
) -> Result<ClusterConnection> {
    open(builder(seeds, timeout), timeout, "connect").await
}

/// The subscription connection: RESP3, one connection per shard, pushes
/// (messages, subscription changes, disconnections) on the returned stream.
pub(super) async fn connect_pubsub(
    seeds: &[String],
    timeout: Duration,
) -> Result<(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = builder(seeds, timeout)
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(tx);
    let con = open(builder, timeout, "pubsub connect").await?;
    Ok((con, rx))
}

/// Runs the sharded pub/sub supervisor until the backplane is cancelled.
pub(super) async fn run(
    shared: Arc<Shared>,
    con: ClusterConnection,
    mut rx: mpsc::UnboundedReceiver<SubCmd>,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    let (lost_tx, mut lost_rx) = mpsc::unbounded_channel();
    let (reader_tx, reader_rx) = mpsc::unbounded_channel();
    shared.tasks.spawn(read_pushes(
        shared.clone(),
        pushes,
        lost_tx,
        reader_rx,
        shared.cancel.clone(),
    ));
    let mut desired: HashSet<String> = HashSet::new();
    let mut lost: HashSet<String> = HashSet::new();
    let heartbeat = shared.opts.heartbeat;
    let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(LOST_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let mut burst = vec![cmd];
                while burst.len() < MAX_BURST {
                    match rx.try_recv() {
                        Ok(c) => burst.push(c),
                        Err(_) => break,
                    }
                }
                apply(&shared, &con, &mut desired, burst, &reader_tx).await;
            }
            Some(channel) = lost_rx.recv() => {
                if desired.contains(&channel) {
                    tracing::info!(channel, "redis cluster moved a subscribed slot; re-subscribing");
                    lost.insert(channel);
                }
            }
            _ = retry.tick(), if !lost.is_empty() => {
                lost.retain(|c| desired.contains(c));
                let channels: Vec<String> = lost.iter().cloned().collect();
                for (channel, outcome) in subscribe_all(&shared, &con, channels).await {
                    if outcome.is_ok() {
                        lost.remove(&channel);
                        // Subscribed at the new owner: recover what was
                        // published there before.
                        let _ = reader_tx.send(ReaderCmd::CatchUp(channel));
                    }
                }
            }
            _ = sweep.tick() => {
                let channels: Vec<String> = desired.iter().cloned().collect();
                let failed = subscribe_all(&shared, &con, channels)
                    .await
                    .into_iter()
                    .filter(|(_, r)| r.is_err())
                    .count();
                if failed > 0 {
                    tracing::debug!(failed, "sharded resubscription sweep: some shards did not answer");
                }
            }
        }
    }
}

/// `SSUBSCRIBE`s every channel (one command each: channels of different
/// slots cannot share one), concurrently; the outcome of each.
async fn subscribe_all(
    shared: &Shared,
    con: &ClusterConnection,
    channels: Vec<String>,
) -> Vec<(String, Result<()>)> {
    use futures_util::StreamExt;
    let timeout = shared.opts.command_timeout;
    futures_util::stream::iter(channels)
        .map(|channel| {
            let mut con = con.clone();
            async move {
                let outcome = match tokio::time::timeout(timeout, con.ssubscribe(&channel)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(map_error("subscribe", e)),
                    Err(_) => Err(unavailable("subscribe timed out")),
                };
                (channel, outcome)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Applies a burst of requests in order against the subscribed set. Each
/// new channel's waiters get that channel's own outcome.
async fn apply(
    shared: &Shared,
    con: &ClusterConnection,
    desired: &mut HashSet<String>,
    burst: Vec<SubCmd>,
    reader: &mpsc::UnboundedSender<ReaderCmd>,
) {
    use futures_util::StreamExt;
    let Changes { gone, new, waiters } = changes(desired, burst);
    for channel in &gone {
        let _ = reader.send(ReaderCmd::Forget(channel.clone()));
    }
    if gone.is_empty() && new.is_empty() {
        for (_, tx) in waiters {
            let _ = tx.send(Ok(()));
        }
        return;
    }
    let started = Instant::now();
    let timeout = shared.opts.command_timeout;
    let unsubscribed: Vec<bool> = futures_util::stream::iter(gone)
        .map(|channel| {
            let mut con = con.clone();
            async move {
                match tokio::time::timeout(timeout, con.sunsubscribe(&channel)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::debug!(channel, error = %e, "sunsubscribe failed");
                        false
                    }
                    Err(_) => false,
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let outcomes = subscribe_all(shared, con, new).await;
    let mut ok = unsubscribed.iter().all(|u| *u);
    let mut failed = std::collections::HashMap::new();
    for (channel, outcome) in outcomes {
        if let Err(e) = outcome {
            // A failed subscription has no effect.
            desired.remove(&channel);
            failed.insert(channel, e);
            ok = false;
        }
    }
    shared.observe("subscribe", started, ok);
    for (channel, tx) in waiters {
        let outcome = match failed.get(&channel) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        };
        let _ = tx.send(outcome);
    }
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A request of the supervisor to the push reader.
enum ReaderCmd {
    /// The channel was re-subscribed after the server dropped it (its slot
    /// moved): recover the room messages published meanwhile.
    CatchUp(String),
    /// The node no longer subscribes the channel.
    Forget(String),
}

/// Per room channel: the room, its epoch and the last message id delivered
/// (see the module docs).
#[derive(Default)]
struct Gaps {
    last: HashMap<String, (String, String, u64)>,
}

impl Gaps {
    /// Delivers a room message received live on `channel`, first recovering
    /// from history the messages of its epoch between the last one delivered
    /// and it; drops it when it was already delivered.
    async fn message(
        &mut self,
        shared: &Shared,
        deliver: &mut Deliver,
        channel: &str,
        event: Event,
    ) {
        let Event::Message { message, epoch, .. } = &event else {
            deliver.event(event).await;
            return;
        };
        let id = message.id;
        // Updated in place: this runs for every room message.
        match self.last.get_mut(channel) {
            Some((room, e, last)) => {
                if e == epoch {
                    if id <= *last {
                        return;
                    }
                    if id > *last + 1 {
                        tracing::info!(
                            room,
                            from = *last + 1,
                            to = id - 1,
                            "room messages missed live; recovering them from history"
                        );
                        recover(shared, deliver, room, epoch, *last, Some(id)).await;
                    }
                } else {
                    e.clone_from(epoch);
                }
                *last = id;
            }
            None => {
                self.last.insert(
                    channel.to_owned(),
                    (message.room.clone(), epoch.clone(), id),
                );
            }
        }
        deliver.event(event).await;
    }

    /// Delivers what the room of `channel` published after the last message
    /// delivered (a re-subscription after a slot move).
    async fn catch_up(&mut self, shared: &Shared, deliver: &mut Deliver, channel: &str) {
        let Some((room, epoch, last)) = self.last.get(channel).cloned() else {
            return;
        };
        let now = recover(shared, deliver, &room, &epoch, last, None).await;
        if let Some(entry) = self.last.get_mut(channel) {
            if entry.1 == epoch && entry.2 < now {
                entry.2 = now;
            }
        }
    }
}

/// Reads the room's history and delivers its messages of `epoch` with ids
/// above `after` (and below `before`), in id order, each with its origin
/// when this node published it (so it is not echoed to its sender). Returns
/// the last id delivered (`after` if none). A failed read loses the gap
/// (logged, counted as a `gap_fill` error): it is not retried.
async fn recover(
    shared: &Shared,
    deliver: &mut Deliver,
    room: &str,
    epoch: &str,
    after: u64,
    before: Option<u64>,
) -> u64 {
    let read = async {
        let messages = shared.read_history("gap_fill", room).await?;
        // Read after the history: when the epoch is still the same, the
        // history read belonged to it.
        let current: Option<String> = shared
            .cmd(
                "gap_fill",
                redis::cmd("GET").arg(shared.keys.epoch(room)).to_owned(),
            )
            .await?;
        Ok::<_, BackplaneError>((messages, current))
    };
    let (messages, current) = match read.await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(room, error = %e, "could not recover missed room messages");
            shared.count_error("gap_fill");
            return after;
        }
    };
    if current.as_deref() != Some(epoch) {
        return after;
    }
    let mut last = after;
    for message in messages {
        if message.id <= last || before.is_some_and(|b| message.id >= b) {
            continue;
        }
        last = message.id;
        let origin = shared.own_origin(room, message.id, message.ts);
        deliver
            .event(Event::Message {
                message,
                epoch: epoch.to_owned(),
                origin,
                traceparent: None,
            })
            .await;
    }
    last
}

/// Turns pushes into events until cancelled; reports channels the server
/// unsubscribed us from, and recovers room messages missed live.
async fn read_pushes(
    shared: Arc<Shared>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    lost: mpsc::UnboundedSender<String>,
    mut cmds: mpsc::UnboundedReceiver<ReaderCmd>,
    cancel: CancellationToken,
) {
    let mut deliver = Deliver::new(&shared);
    let mut gaps = Gaps::default();
    loop {
        let push = tokio::select! {
            _ = cancel.cancelled() => return,
            Some(cmd) = cmds.recv() => {
                match cmd {
                    ReaderCmd::CatchUp(channel) => {
                        gaps.catch_up(&shared, &mut deliver, &channel).await;
                    }
                    ReaderCmd::Forget(channel) => {
                        gaps.last.remove(&channel);
                    }
                }
                continue;
            }
            push = pushes.recv() => push,
        };
        let Some(push) = push else { return };
        match push.kind {
            PushKind::SMessage => {
                let channel = push.data.first().and_then(bytes);
                let payload = push.data.get(1).and_then(bytes);
                if let (Some(channel), Some(payload)) = (channel, payload) {
                    let channel = String::from_utf8_lossy(channel);
                    if let Some(event) = super::pubsub::decode(&shared, &channel, payload) {
                        gaps.message(&shared, &mut deliver, &channel, event).await;
                    }
                }
            }
            PushKind::SUnsubscribe => {
                if let Some(channel) = push.data.first().and_then(bytes) {
                    let _ = lost.send(String::from_utf8_lossy(channel).into_owned());
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("a redis cluster shard connection dropped; the client reconnects and re-subscribes");
                shared.count_error("pubsub_disconnect");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_seed_nodes() {
        assert!(seeds("redis://127.0.0.1:6379/").is_none());
        let s = seeds("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/")
            .unwrap()
            .unwrap();
        assert_eq!(s, ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"]);
        let s = seeds("redis+cluster://u:p@h1:1,h2:2").unwrap().unwrap();
        assert_eq!(s, ["redis://u:p@h1:1", "redis://u:p@h2:2"]);
        assert!(seeds("redis+cluster://").unwrap().is_err());
        assert!(seeds("redis+cluster://h1").unwrap().is_err());
        assert!(seeds("redis+cluster://h1:x").unwrap().is_err());
    }
}
