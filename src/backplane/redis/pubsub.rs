//! The node's ONE pub/sub connection to a single Redis (on a Redis Cluster
//! the sharded supervisor in `cluster.rs` replaces it and shares
//! [`Deliver`]). A supervisor task owns it: it applies
//! subscribe/unsubscribe requests in the order they were queued (coalescing
//! a burst into one `UNSUBSCRIBE` and one `SUBSCRIBE` with many channels, so
//! an unsubscribe followed by a subscribe of the same channel keeps it),
//! resolves a subscribe only after Redis confirmed it, probes the connection
//! every heartbeat by publishing a nonce on the node's own probe channel,
//! and on loss or a probe that does not come back reconnects (capped
//! exponential backoff with jitter) and resubscribes every channel the node
//! needs in batches. A reader task per connection decodes messages and
//! pushes events into the node's stream in arrival order.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::{map_error, Backoff};
use super::{envelope, Shared};
use crate::backplane::{BackplaneError, Event, Result};

/// Channels per `SUBSCRIBE`/`UNSUBSCRIBE` command.
const BATCH: usize = 1000;
/// Requests applied together at most.
const MAX_BURST: usize = 10_000;
/// Direct-message ids remembered to drop the second copy a node subscribed
/// to both the recipient's and the sender's channel receives.
const DM_MEMORY: usize = 256;

/// A queued request.
pub(super) enum SubCmd {
    Subscribe(String, oneshot::Sender<Result<()>>),
    Unsubscribe(String),
}

enum Exit {
    Cancelled,
    Lost,
}

pub(super) fn unavailable(what: &str) -> BackplaneError {
    BackplaneError::Unavailable(format!("redis pub/sub {what}"))
}

/// Runs the supervisor until the backplane is cancelled. `initial` is the
/// connection `connect` established (already subscribed to the probe) from
/// `client`, which also makes the replacements.
pub(super) async fn run(
    shared: Arc<Shared>,
    client: redis::Client,
    mut rx: mpsc::UnboundedReceiver<SubCmd>,
    initial: (PubSubSink, PubSubStream),
) {
    let mut desired: HashSet<String> = HashSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(50), shared.backoff_cap());
    let mut initial = Some(initial);
    loop {
        let (mut sink, stream) = match initial.take() {
            Some(c) => c,
            None => match reconnect(&shared, &client, &mut rx, &mut desired, &mut backoff).await {
                Some(c) => c,
                None => return,
            },
        };
        let conn_cancel = shared.cancel.child_token();
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let mut reader = shared.tasks.spawn(read_loop(
            shared.clone(),
            stream,
            probe_tx,
            conn_cancel.clone(),
        ));
        shared.pubsub_up.store(true, Ordering::SeqCst);
        let exit = serve(
            &shared,
            &mut sink,
            &mut rx,
            &mut desired,
            probe_rx,
            &mut reader,
        )
        .await;
        shared.pubsub_up.store(false, Ordering::SeqCst);
        // Stops the reader (if still running); dropping the stream closes
        // the connection. The reader is tracked by the task tracker.
        conn_cancel.cancel();
        drop(reader);
        match exit {
            Exit::Cancelled => return,
            Exit::Lost => tracing::warn!("redis pub/sub connection lost; reconnecting"),
        }
    }
}

/// Applies a request while disconnected: subscriptions fail fast and have
/// no effect, unsubscriptions are recorded.
fn refuse(cmd: SubCmd, desired: &mut HashSet<String>) {
    match cmd {
        SubCmd::Subscribe(_, tx) => {
            let _ = tx.send(Err(unavailable("is disconnected")));
        }
        SubCmd::Unsubscribe(channel) => {
            desired.remove(&channel);
        }
    }
}

/// Connects and resubscribes everything (the probe channel and `desired`),
/// retrying with backoff. `None` when cancelled.
async fn reconnect(
    shared: &Arc<Shared>,
    client: &redis::Client,
    rx: &mut mpsc::UnboundedReceiver<SubCmd>,
    desired: &mut HashSet<String>,
    backoff: &mut Backoff,
) -> Option<(PubSubSink, PubSubStream)> {
    let timeout = shared.opts.command_timeout;
    loop {
        let delay = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(delay);
        loop {
            tokio::select! {
                _ = shared.cancel.cancelled() => return None,
                Some(cmd) = rx.recv() => refuse(cmd, desired),
                _ = &mut delay => break,
            }
        }
        let mut channels: Vec<String> = desired.iter().cloned().collect();
        channels.push(shared.probe_channel.clone());
        let attempt = async {
            let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                .await
                .map_err(|_| unavailable("connect timed out"))?
                .map_err(|e| map_error("pubsub connect", e))?;
            let (mut sink, stream) = pubsub.split();
            for chunk in channels.chunks(BATCH) {
                tokio::time::timeout(timeout, sink.subscribe(chunk))
                    .await
                    .map_err(|_| unavailable("resubscribe timed out"))?
                    .map_err(|e| map_error("resubscribe", e))?;
            }
            Ok::<_, BackplaneError>((sink, stream))
        };
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                _ = shared.cancel.cancelled() => return None,
                Some(cmd) = rx.recv() => refuse(cmd, desired),
                r = &mut attempt => break r,
            }
        };
        match result {
            Ok(c) => {
                backoff.reset();
                shared.count_reconnect();
                tracing::info!(channels = desired.len(), "redis pub/sub restored");
                return Some(c);
            }
            Err(e) => tracing::debug!(error = %e, "redis pub/sub reconnect failed"),
        }
    }
}

async fn serve(
    shared: &Arc<Shared>,
    sink: &mut PubSubSink,
    rx: &mut mpsc::UnboundedReceiver<SubCmd>,
    desired: &mut HashSet<String>,
    mut probe_rx: mpsc::UnboundedReceiver<u64>,
    reader: &mut tokio::task::JoinHandle<()>,
) -> Exit {
    let heartbeat = shared.opts.heartbeat;
    let probe_wait = heartbeat.max(shared.opts.command_timeout) * 2;
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return Exit::Cancelled,
            _ = &mut *reader => return Exit::Lost,
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return Exit::Cancelled };
                let mut burst = vec![cmd];
                while burst.len() < MAX_BURST {
                    match rx.try_recv() {
                        Ok(c) => burst.push(c),
                        Err(_) => break,
                    }
                }
                if apply(shared, sink, desired, burst).await.is_err() {
                    return Exit::Lost;
                }
            }
            Some(nonce) = probe_rx.recv() => {
                if matches!(probe, Some((n, _)) if n == nonce) {
                    probe = None;
                }
            }
            _ = ticker.tick() => {
                if let Some((_, deadline)) = probe {
                    if Instant::now() >= deadline {
                        tracing::warn!("redis pub/sub probe did not come back; restarting the connection");
                        return Exit::Lost;
                    }
                    continue;
                }
                let nonce = rand::random::<u64>();
                let channel = shared.probe_channel.clone();
                let cmd = redis::cmd("PUBLISH").arg(channel).arg(nonce.to_string()).to_owned();
                match shared.cmd::<i64>("probe", cmd).await {
                    // Redis says nobody listens on our probe channel: the
                    // subscription is gone although the socket looks alive.
                    Ok(0) => {
                        tracing::warn!("redis pub/sub probe has no subscriber; restarting the connection");
                        return Exit::Lost;
                    }
                    Ok(_) => probe = Some((nonce, Instant::now() + probe_wait)),
                    // The command connection is down; its supervisor handles it.
                    Err(_) => {}
                }
            }
        }
    }
}

/// What a burst of requests changes in the subscribed set.
pub(super) struct Changes {
    /// Channels no longer wanted.
    pub(super) gone: Vec<String>,
    /// Channels newly wanted.
    pub(super) new: Vec<String>,
    /// Who waits for which channel's subscription.
    pub(super) waiters: Vec<(String, oneshot::Sender<Result<()>>)>,
}

/// Applies a burst of requests, in order, to `desired` and returns the
/// difference to carry out on the connection.
pub(super) fn changes(desired: &mut HashSet<String>, burst: Vec<SubCmd>) -> Changes {
    let before = desired.clone();
    let mut waiters = Vec::new();
    for cmd in burst {
        match cmd {
            SubCmd::Subscribe(channel, tx) => {
                desired.insert(channel.clone());
                waiters.push((channel, tx));
            }
            SubCmd::Unsubscribe(channel) => {
                desired.remove(&channel);
            }
        }
    }
    Changes {
        gone: before.difference(desired).cloned().collect(),
        new: desired.difference(&before).cloned().collect(),
        waiters,
    }
}

/// Applies a burst of requests in order against the subscribed set.
async fn apply(
    shared: &Shared,
    sink: &mut PubSubSink,
    desired: &mut HashSet<String>,
    burst: Vec<SubCmd>,
) -> std::result::Result<(), ()> {
    let Changes { gone, new, waiters } = changes(desired, burst);
    let timeout = shared.opts.command_timeout;
    let started = std::time::Instant::now();
    let mut result = Ok(());
    for chunk in gone.chunks(BATCH) {
        result = match tokio::time::timeout(timeout, sink.unsubscribe(chunk)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(map_error("unsubscribe", e)),
            Err(_) => Err(unavailable("unsubscribe timed out")),
        };
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        for chunk in new.chunks(BATCH) {
            result = match tokio::time::timeout(timeout, sink.subscribe(chunk)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(map_error("subscribe", e)),
                Err(_) => Err(unavailable("subscribe timed out")),
            };
            if result.is_err() {
                break;
            }
        }
    }
    if !new.is_empty() || !gone.is_empty() {
        shared.observe("subscribe", started, result.is_ok());
    }
    match result {
        Ok(()) => {
            for (_, tx) in waiters {
                let _ = tx.send(Ok(()));
            }
            Ok(())
        }
        Err(e) => {
            // A failed subscription has no effect; the connection restarts
            // and resubscribes what remains desired.
            for channel in &new {
                desired.remove(channel);
            }
            for (channel, tx) in waiters {
                let outcome = if new.contains(&channel) {
                    Err(e.clone())
                } else {
                    Ok(())
                };
                let _ = tx.send(outcome);
            }
            Err(())
        }
    }
}

/// Reads one connection's messages until it ends or is cancelled.
async fn read_loop(
    shared: Arc<Shared>,
    mut stream: PubSubStream,
    probe_tx: mpsc::UnboundedSender<u64>,
    cancel: CancellationToken,
) {
    let mut deliver = Deliver::new(&shared);
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else { return };
        let payload = msg.get_payload_bytes();
        if msg.get_channel_name() == shared.probe_channel {
            if let Some(nonce) = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse().ok())
            {
                let _ = probe_tx.send(nonce);
            }
            continue;
        }
        deliver
            .payload(&shared, msg.get_channel_name(), payload)
            .await;
    }
}

/// Decodes one payload received on `channel`; `None` (counted, logged) when
/// malformed.
pub(super) fn decode(shared: &Shared, channel: &str, payload: &[u8]) -> Option<Event> {
    let event = envelope::decode_event(payload);
    if event.is_none() {
        tracing::warn!(channel, "undecodable backplane payload dropped");
        shared.count_error("decode");
    }
    event
}

/// Turns channel payloads into events on the node's stream, in arrival
/// order, dropping the second copy of a direct message that a node
/// subscribed to both the recipient's and the sender's channel receives
/// (keyed by recipient and id: on Redis Cluster ids count per recipient).
pub(super) struct Deliver {
    events: Option<mpsc::Sender<Event>>,
    recent_dm: VecDeque<(String, u64)>,
}

impl Deliver {
    /// A deliverer into `shared`'s event stream.
    pub(super) fn new(shared: &Shared) -> Self {
        Deliver {
            events: shared.events_sender(),
            recent_dm: VecDeque::with_capacity(DM_MEMORY),
        }
    }

    /// Decodes one payload received on `channel` and delivers its event.
    pub(super) async fn payload(&mut self, shared: &Shared, channel: &str, payload: &[u8]) {
        if let Some(event) = decode(shared, channel, payload) {
            self.event(event).await;
        }
    }

    /// Delivers one event. When the node's event queue is full this waits
    /// (the reader stops reading; Redis holds the backlog, up to its pub/sub
    /// output limit, and a probe that cannot come back in time makes the
    /// supervisor treat the subscription as lost and repair it).
    pub(super) async fn event(&mut self, event: Event) {
        if let Event::Direct { message, .. } = &event {
            let key = (message.to.clone(), message.id);
            if self.recent_dm.contains(&key) {
                return;
            }
            if self.recent_dm.len() >= DM_MEMORY {
                self.recent_dm.pop_front();
            }
            self.recent_dm.push_back(key);
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(event).await;
        }
    }
}
