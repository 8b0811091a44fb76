//! The Lua scripts, loaded once per connection by `EVALSHA` (reloaded on
//! `NOSCRIPT` by [`redis::Script`]). Each lives in `scripts/NAME.lua`, with
//! `scripts/prelude.lua` (time, epoch and presence helpers) prepended, and
//! touches the keys of one hash tag only. The contract of each script is the
//! comment at the top of its file. The same text runs on one Redis and on a
//! Redis Cluster: every script's first argument is the publish command
//! (`PUBLISH` or `SPUBLISH`, see `scripts/prelude.lua` and `Shared::invoke`).

use redis::Script;

macro_rules! source {
    ($file:literal) => {
        concat!(
            include_str!("scripts/prelude.lua"),
            "\n",
            include_str!(concat!("scripts/", $file))
        )
    };
}

/// All scripts of the backplane.
pub(super) struct Scripts {
    /// Store-and-publish a room message (room tag).
    pub(super) publish: Script,
    /// Fix the epoch, add presence, read a snapshot (room tag).
    pub(super) join: Script,
    /// Remove one presence entry (room tag).
    pub(super) leave: Script,
    /// Reconcile an instance's entries in a room (room tag).
    pub(super) sync_room: Script,
    /// Liveness refresh, registration and reaper claims (cluster tag).
    pub(super) heartbeat: Script,
    /// A reaper's lease: extend or finish (cluster tag).
    pub(super) lease: Script,
    /// Claim a guest name (name tag).
    pub(super) claim_name: Script,
    /// Release a guest name (name tag).
    pub(super) release_name: Script,
    /// Route a direct message (dm counter).
    pub(super) direct: Script,
    /// Live node instances (cluster tag).
    pub(super) nodes: Script,
}

impl Scripts {
    /// Every script, compiled in.
    pub(super) fn new() -> Self {
        Scripts {
            publish: Script::new(source!("publish.lua")),
            join: Script::new(source!("join.lua")),
            leave: Script::new(source!("leave.lua")),
            sync_room: Script::new(source!("sync_room.lua")),
            heartbeat: Script::new(source!("heartbeat.lua")),
            lease: Script::new(source!("lease.lua")),
            claim_name: Script::new(source!("claim_name.lua")),
            release_name: Script::new(source!("release_name.lua")),
            direct: Script::new(source!("direct.lua")),
            nodes: Script::new(source!("nodes.lua")),
        }
    }

    /// Every script, for loading them up front.
    pub(super) fn all(&self) -> [&Script; 10] {
        [
            &self.publish,
            &self.join,
            &self.leave,
            &self.sync_room,
            &self.heartbeat,
            &self.lease,
            &self.claim_name,
            &self.release_name,
            &self.direct,
            &self.nodes,
        ]
    }
}

#[cfg(test)]
mod tests {
    /// No script body names a pub/sub command itself: it publishes with the
    /// command it is given (`PUBLISH` / `NUMSUB` of the prelude).
    #[test]
    fn scripts_publish_only_with_the_command_they_are_given() {
        for body in [
            include_str!("scripts/publish.lua"),
            include_str!("scripts/join.lua"),
            include_str!("scripts/leave.lua"),
            include_str!("scripts/sync_room.lua"),
            include_str!("scripts/direct.lua"),
            include_str!("scripts/heartbeat.lua"),
            include_str!("scripts/lease.lua"),
            include_str!("scripts/claim_name.lua"),
            include_str!("scripts/release_name.lua"),
            include_str!("scripts/nodes.lua"),
        ] {
            for literal in ["'PUBLISH'", "'SPUBLISH'", "'NUMSUB'", "'SHARDNUMSUB'"] {
                assert!(!body.contains(literal), "{literal} in {body}");
            }
        }
        assert!(include_str!("scripts/publish.lua").contains("redis.call(PUBLISH,"));
        assert!(include_str!("scripts/direct.lua").contains("'PUBSUB', NUMSUB,"));
        assert!(include_str!("scripts/prelude.lua").contains("redis.call(PUBLISH,"));
    }
}
