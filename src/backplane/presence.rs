//! The presence contract: which users are in a room, counted per node (the
//! node calls in for a user's first and last local connection only), with
//! `UserJoined` / `UserLeft` events when a user's entry count cluster-wide
//! goes 0 → 1 and 1 → 0. A join also fixes the room's epoch and reads its
//! snapshot in the same atomic step, so a joining connection misses nothing
//! between the snapshot and its subscription.

use async_trait::async_trait;

use super::{Origin, Result};
use crate::protocol::{ChatMessage, LeaveReason};

/// A room's state as seen by a joining connection.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomSnapshot {
    /// Current epoch.
    pub epoch: String,
    /// Highest id assigned so far in this epoch (0 for none).
    pub last_id: u64,
    /// The kept history (at most 50), oldest first.
    pub messages: Vec<ChatMessage>,
    /// User names present, sorted.
    pub presence: Vec<String>,
}

/// Room presence and the join snapshot.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Fixes the room's epoch if new, optionally adds `user` on this node to
    /// the room's presence (emitting `UserJoined` when it is the user's first
    /// entry cluster-wide), and returns the room's snapshot.
    async fn join(
        &self,
        room: &str,
        user: &str,
        add_presence: bool,
        origin: Option<Origin>,
    ) -> Result<RoomSnapshot>;

    /// Removes `user` on this node from the room's presence, emitting
    /// `UserLeft` when it was the user's last entry cluster-wide.
    async fn leave(&self, room: &str, user: &str, reason: LeaveReason) -> Result<()>;

    /// User names present in the room, sorted.
    async fn presence(&self, room: &str) -> Result<Vec<String>>;
}
