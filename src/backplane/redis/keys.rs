//! Every Redis key and channel name of the backplane, built under one
//! configurable prefix (`relay` by default).
//!
//! Keys of one room share the hash tag `{room}`, keys of one guest name the
//! tag `{name}`, keys of one node instance the tag `{instance}`, and the
//! cluster registry the tag `{_cluster}` (room and user names start with a
//! letter or digit, so no room can share it by accident). Every Lua script
//! touches the keys of exactly one tag, so one slot. On Redis Cluster the
//! room and user channels are *sharded* channels (`SPUBLISH`/`SSUBSCRIBE`):
//! a sharded channel lives on the shard owning its slot, so the room channel
//! carries the room's tag (a script publishing from Lua stays in its slot)
//! and the user channel the user's tag, shared with the user's direct
//! message counter. Commands outside scripts touch one key each, or keys of
//! one tag (`DEL` of an instance's two sets).
//!
//! | name | type | content |
//! |---|---|---|
//! | `P:{room}:seq` | string | last message id of the current epoch (idle TTL) |
//! | `P:{room}:epoch` | string | the room's epoch token (idle TTL) |
//! | `P:{room}:history` | list | last 50 messages, MessagePack, oldest first (idle TTL) |
//! | `P:{room}:presence` | zset (score 0) | `user|instance`, one per (user, node instance) |
//! | `P:{room}:cid:USER:CLIENT_ID` | string, TTL 300 s | `id:ts` of an idempotent send |
//! | `P:{room}:ch` | channel | room events (messages, presence, typing) |
//! | `P:user:{user}` | channel | a user's direct messages |
//! | `P:name:{user}:token` | string | a guest name claim's resume token |
//! | `P:name:{user}:holders` | set | node instances holding the claim |
//! | `P:{_cluster}:nodes` | zset | live node instances, score = liveness expiry (ms) |
//! | `P:{_cluster}:reaping` | zset | dead instances being reaped, score = lease expiry |
//! | `P:{_cluster}:reapers` | hash | dead instance → instance reaping it |
//! | `P:{_cluster}:gone` | zset | reaped instances (tombstones), score = reap time |
//! | `P:node:{instance}:rooms` | set | rooms where the instance holds presence entries |
//! | `P:node:{instance}:names` | set | guest names the instance holds |
//! | `P:probe:INSTANCE-TOKEN` | channel | a node's pub/sub liveness probe |
//! | `P:dm:seq` | string | direct message id counter (one Redis) |
//! | `P:user:{user}:dmseq` | string | the user's direct message id counter (Redis Cluster) |
//! | `P:accounts` | hash | account name → password hash |

//!
//! Idle TTL: while a room's presence set is empty, its seq, epoch and
//! history keys expire `--room-idle-ttl-secs` after the last message, join
//! or leave (every script touching them refreshes it); while anyone is
//! present they have none (`touch_room` in `scripts/prelude.lua`).

/// Builds key and channel names under a prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `relay`).
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn room(&self, room: &str, suffix: &str) -> String {
        format!("{}:{{{}}}:{}", self.prefix, room, suffix)
    }

    /// Last id of the room's epoch.
    pub(crate) fn seq(&self, room: &str) -> String {
        self.room(room, "seq")
    }

    /// The room's epoch token.
    pub(crate) fn epoch(&self, room: &str) -> String {
        self.room(room, "epoch")
    }

    /// The room's capped history list.
    pub(crate) fn history(&self, room: &str) -> String {
        self.room(room, "history")
    }

    /// The room's presence entries (`user|instance`).
    pub(crate) fn presence(&self, room: &str) -> String {
        self.room(room, "presence")
    }

    /// Idempotency record of one (room, user, client_id).
    pub(crate) fn client_id(&self, room: &str, user: &str, client_id: &str) -> String {
        self.room(room, &format!("cid:{user}:{client_id}"))
    }

    /// The room's pub/sub channel.
    pub(crate) fn room_channel(&self, room: &str) -> String {
        self.room(room, "ch")
    }

    /// A user's direct-message channel.
    pub(crate) fn user_channel(&self, user: &str) -> String {
        format!("{}:user:{{{}}}", self.prefix, user)
    }

    /// A guest name claim's resume token.
    pub(crate) fn name_token(&self, name: &str) -> String {
        format!("{}:name:{{{}}}:token", self.prefix, name)
    }

    /// The instances holding a guest name claim.
    pub(crate) fn name_holders(&self, name: &str) -> String {
        format!("{}:name:{{{}}}:holders", self.prefix, name)
    }

    fn cluster(&self, suffix: &str) -> String {
        format!("{}:{{_cluster}}:{}", self.prefix, suffix)
    }

    /// Live node instances scored by liveness expiry (Unix ms, Redis time).
    pub(crate) fn nodes(&self) -> String {
        self.cluster("nodes")
    }

    /// Dead instances being reaped, scored by the reaper's lease expiry.
    pub(crate) fn reaping(&self) -> String {
        self.cluster("reaping")
    }

    /// Dead instance → the instance reaping it.
    pub(crate) fn reapers(&self) -> String {
        self.cluster("reapers")
    }

    /// Reaped instances, scored by the time they were reaped.
    pub(crate) fn gone(&self) -> String {
        self.cluster("gone")
    }

    /// Rooms where an instance holds presence entries.
    pub(crate) fn node_rooms(&self, instance: &str) -> String {
        format!("{}:node:{{{}}}:rooms", self.prefix, instance)
    }

    /// Guest names an instance holds.
    pub(crate) fn node_names(&self, instance: &str) -> String {
        format!("{}:node:{{{}}}:names", self.prefix, instance)
    }

    /// A process's probe channel.
    pub(crate) fn probe_channel(&self, token: &str) -> String {
        format!("{}:probe:{}", self.prefix, token)
    }

    /// A recipient's direct-message id counter (Redis Cluster: in the slot
    /// of the recipient's channel, so the direct script runs in one slot).
    pub(crate) fn user_dm_seq(&self, user: &str) -> String {
        format!("{}:user:{{{}}}:dmseq", self.prefix, user)
    }

    /// The direct-message id counter.
    pub(crate) fn dm_seq(&self) -> String {
        format!("{}:dm:seq", self.prefix)
    }

    /// A user's revocation: tokens issued at or before this Unix ms are
    /// refused (expires with the revocation TTL). In the user's slot.
    pub(crate) fn revoked_user(&self, user: &str) -> String {
        format!("{}:revoked:{{{}}}", self.prefix, user)
    }

    /// One revoked token of a user (expires with the token).
    pub(crate) fn revoked_token(&self, user: &str, jti: &str) -> String {
        format!("{}:revoked:{{{}}}:jti:{}", self.prefix, user, jti)
    }

    /// Accounts: name → password hash.
    pub(crate) fn accounts(&self) -> String {
        format!("{}:accounts", self.prefix)
    }
}

/// The hash tag of a key (the part between the first `{` and the next `}`),
/// as Redis Cluster computes it.
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keys_share_one_tag() {
        let k = Keys::new("relay");
        assert_eq!(k.seq("lobby"), "relay:{lobby}:seq");
        assert_eq!(k.room_channel("lobby"), "relay:{lobby}:ch");
        assert_eq!(k.user_channel("alice"), "relay:user:{alice}");
        for key in [
            k.seq("lobby"),
            k.epoch("lobby"),
            k.history("lobby"),
            k.presence("lobby"),
            k.client_id("lobby", "alice", "c{1}"),
        ] {
            assert_eq!(hash_tag(&key), "lobby", "{key}");
        }
        assert_eq!(
            hash_tag(&k.name_token("bob")),
            hash_tag(&k.name_holders("bob"))
        );
        let cluster = [k.nodes(), k.reaping(), k.reapers(), k.gone()];
        assert!(cluster.iter().all(|c| hash_tag(c) == "_cluster"));
        assert_eq!(
            hash_tag(&k.node_rooms("n#1")),
            hash_tag(&k.node_names("n#1"))
        );
        assert_eq!(Keys::new("x").accounts(), "x:accounts");
        assert_eq!(
            hash_tag(&k.user_dm_seq("bob")),
            hash_tag(&k.user_channel("bob"))
        );
        assert_eq!(hash_tag(&k.room_channel("r")), hash_tag(&k.presence("r")));
    }
}
