//! The Lua scripts, loaded once per connection by `EVALSHA` (reloaded on
//! `NOSCRIPT` by [`redis::Script`]). Each lives in `scripts/NAME.lua`, with
//! `scripts/prelude.lua` (time, epoch and presence helpers) prepended, and
//! touches the keys of one hash tag only. The contract of each script is the
//! comment at the top of its file.

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("scripts/prelude.lua"),
            "\n",
            include_str!(concat!("scripts/", $file))
        ))
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
    pub(super) fn new() -> Self {
        Scripts {
            publish: script!("publish.lua"),
            join: script!("join.lua"),
            leave: script!("leave.lua"),
            sync_room: script!("sync_room.lua"),
            heartbeat: script!("heartbeat.lua"),
            lease: script!("lease.lua"),
            claim_name: script!("claim_name.lua"),
            release_name: script!("release_name.lua"),
            direct: script!("direct.lua"),
            nodes: script!("nodes.lua"),
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
