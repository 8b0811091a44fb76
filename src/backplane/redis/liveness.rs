//! Redis liveness ([`Liveness`]): the heartbeat (`heartbeat.lua`) keeps
//! this instance's expiry in the node registry and reports dead instances;
//! a survivor claims a dead one with a lease (`lease.lua`) and reaps its
//! presence entries and name claims; a node whose instance was lost
//! re-registers everything it holds under a new instance id; rooms and
//! names left dirty by failed calls are reconciled on the next good beat.
//! Shutdown deregisters and ends every task.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;

use super::super::{BackplaneError, Liveness, Result};
use super::{
    lock, new_instance, node_of, RedisBackplane, Shared, CONCURRENCY, MAX_CLAIMS, SHUTDOWN_WAIT,
};
use crate::protocol::LeaveReason;

/// Instances known dead: being reaped (or expired) and recently reaped.
#[derive(Debug, Default)]
pub(super) struct DeadSet {
    pub(super) reaping: HashSet<String>,
    pub(super) gone: HashSet<String>,
}

/// Result of the heartbeat script.
pub(super) struct Beat {
    pub(super) registered: bool,
    pub(super) claims: Vec<String>,
    pub(super) reaping: Vec<String>,
    pub(super) gone: Vec<String>,
}

impl Shared {
    pub(super) fn reaper_lease(&self) -> Duration {
        self.opts.presence_ttl.max(self.opts.command_timeout * 4)
    }

    /// Tombstones of reaped instances are kept this long.
    pub(super) fn gone_retention(&self) -> Duration {
        (self.opts.presence_ttl * 10).max(Duration::from_secs(60))
    }

    /// Runs the heartbeat script for `instance` in `mode` (`beat` or
    /// `register`).
    pub(super) async fn heartbeat(&self, instance: &str, mode: &str) -> Result<Beat> {
        let mut inv = self.invoke(&self.scripts.heartbeat);
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

    pub(super) fn apply_beat(&self, beat: &Beat, instance: &str) {
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

    pub(super) fn dead_list(&self) -> Vec<String> {
        let dead = self.dead.read().unwrap_or_else(|e| e.into_inner());
        dead.reaping
            .iter()
            .chain(dead.gone.iter())
            .cloned()
            .collect()
    }

    /// One heartbeat: refresh liveness, learn dead instances, start reaping
    /// claimed ones, re-register if this instance was lost, and reconcile
    /// rooms and names left dirty by failed calls.
    pub(super) async fn beat(self: &Arc<Self>) {
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
    pub(super) async fn reregister(self: &Arc<Self>, old: &str) -> Result<()> {
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

    /// Retries what failed calls left behind.
    pub(super) async fn reconcile(self: &Arc<Self>) {
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

    pub(super) fn spawn_reaps(self: &Arc<Self>, claims: Vec<String>) {
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
    pub(super) async fn reap(self: &Arc<Self>, dead: &str) -> Result<usize> {
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

    pub(super) async fn lease(&self, dead: &str, op: &str) -> Result<bool> {
        let mut inv = self.invoke(&self.scripts.lease);
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
}

pub(super) async fn heartbeat_loop(shared: Arc<Shared>) {
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
impl Liveness for RedisBackplane {
    fn node_id(&self) -> &str {
        &self.shared.node_id
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
        let mut inv = s.invoke(&s.scripts.nodes);
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
