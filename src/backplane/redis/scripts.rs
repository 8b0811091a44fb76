//! The Lua scripts, loaded once per connection by `EVALSHA` (reloaded on
//! `NOSCRIPT` by [`redis::Script`]). Each lives in `scripts/NAME.lua`, with
//! `scripts/prelude.lua` (time, epoch and presence helpers) prepended, and
//! touches the keys of one hash tag only. The contract of each script is the
//! comment at the top of its file.

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

/// The script as run: verbatim on one Redis; on Redis Cluster every
/// `PUBLISH` becomes `SPUBLISH` and `PUBSUB NUMSUB` becomes
/// `PUBSUB SHARDNUMSUB` (sharded pub/sub: the channel hashes to the slot of
/// the script's keys, so both stay on the shard that runs the script).
fn script(source: &str, cluster: bool) -> Script {
    if cluster {
        Script::new(&sharded(source))
    } else {
        Script::new(source)
    }
}

/// A script's source rewritten for sharded pub/sub.
pub(super) fn sharded(source: &str) -> String {
    source
        .replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
        .replace("'PUBSUB', 'NUMSUB'", "'PUBSUB', 'SHARDNUMSUB'")
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
    /// The scripts for one Redis (`cluster` false) or Redis Cluster.
    pub(super) fn new(cluster: bool) -> Self {
        Scripts {
            publish: script(source!("publish.lua"), cluster),
            join: script(source!("join.lua"), cluster),
            leave: script(source!("leave.lua"), cluster),
            sync_room: script(source!("sync_room.lua"), cluster),
            heartbeat: script(source!("heartbeat.lua"), cluster),
            lease: script(source!("lease.lua"), cluster),
            claim_name: script(source!("claim_name.lua"), cluster),
            release_name: script(source!("release_name.lua"), cluster),
            direct: script(source!("direct.lua"), cluster),
            nodes: script(source!("nodes.lua"), cluster),
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
    use super::*;

    #[test]
    fn cluster_scripts_use_sharded_pubsub_only() {
        for source in [
            source!("publish.lua"),
            source!("join.lua"),
            source!("leave.lua"),
            source!("sync_room.lua"),
            source!("direct.lua"),
        ] {
            let sharded = sharded(source);
            assert!(!sharded.contains("'PUBLISH'"), "{sharded}");
            assert!(!sharded.contains("'NUMSUB'"), "{sharded}");
        }
        assert!(sharded(source!("publish.lua")).contains("redis.call('SPUBLISH',"));
        assert!(sharded(source!("direct.lua")).contains("'SHARDNUMSUB'"));
        let (single, cluster) = (Scripts::new(false), Scripts::new(true));
        assert_ne!(single.publish.get_hash(), cluster.publish.get_hash());
        // Nothing but the publish commands changes.
        let source = source!("heartbeat.lua");
        let back = sharded(source)
            .replace("'SPUBLISH'", "'PUBLISH'")
            .replace("'SHARDNUMSUB'", "'NUMSUB'");
        assert_eq!(back, source);
    }
}
