//! Redis presence ([`Presence`]): a room's presence is a sorted set of
//! `user|instance` entries. `join.lua` fixes the epoch, adds the entry and
//! reads the snapshot in one script; `leave.lua` removes one entry;
//! `sync_room.lua` makes an instance's entries equal this node's desired
//! set (re-registration, reconciliation, reaping). Each publishes
//! `user_joined` / `user_left` when a user's entry count goes 0 → 1 / 1 → 0.
//! Entries of instances known dead are hidden from reads.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::super::{random_token, Origin, Presence, Result, RoomSnapshot};
use super::{lock, RedisBackplane, Shared};
use crate::protocol::LeaveReason;

impl Shared {
    /// Users of presence entries (`user|instance`) whose instance is not
    /// known dead, sorted. Entries of reaped instances that are still there
    /// (a write that raced the reaper) are cleaned up in the background.
    pub(super) fn live_users(self: &Arc<Self>, room: &str, entries: Vec<String>) -> Vec<String> {
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

    pub(super) fn spawn_cleanup(self: &Arc<Self>, room: &str, instance: String) {
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
    pub(super) async fn sync_room(
        &self,
        room: &str,
        instance: &str,
        old: &str,
        users: &[String],
        reason: LeaveReason,
    ) -> Result<()> {
        let mut inv = self.invoke(&self.scripts.sync_room);
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

    /// The join script: fixes the epoch, optionally adds an entry, reads
    /// the snapshot.
    pub(super) async fn join_script(
        self: &Arc<Self>,
        room: &str,
        user: &str,
        add: bool,
        instance: &str,
        origin: Option<&Origin>,
    ) -> Result<RoomSnapshot> {
        let mut inv = self.invoke(&self.scripts.join);
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
            messages: super::broker::decode_history(room, &history),
            presence: self.live_users(room, entries),
        })
    }
}

#[async_trait]
impl Presence for RedisBackplane {
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
            let mut inv = s.invoke(&s.scripts.leave);
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
}
