//! The backplane: everything nodes must share, as one trait per concern,
//! each in its own file with the types of its contract:
//!
//! - [`Broker`] (`broker.rs`): publish + history + subscribe, atomic and
//!   ordered per room; typing and direct messages on the same pub/sub;
//! - [`Presence`] (`presence.rs`): who is in a room, and the join snapshot
//!   (epoch, last id, history, presence) read atomically with the entry;
//! - [`Names`] (`names.rs`): guest name claims;
//! - [`Accounts`] (`accounts.rs`): registered accounts;
//! - [`Liveness`] (`liveness.rs`): this node's id, readiness, the live
//!   nodes, and leaving the cluster;
//! - [`Revocations`] (`revocations.rs`): revoked users and tokens.
//!
//! [`Backplane`] is all six at once, with two implementations: [`memory`]
//! (one process; the embedded default) and [`redis`] (any number of nodes).
//! Only `node/` calls it. Events coming back from the backplane (room
//! messages, presence changes, typing, direct messages) arrive on one
//! bounded stream that the node consumes, so the node and session code
//! cannot tell which backplane runs. Nothing here knows about WebSockets.

mod accounts;
mod broker;
mod liveness;
pub mod memory;
mod names;
mod presence;
pub mod redis;
mod revocations;

pub use accounts::Accounts;
pub use broker::{Broker, DirectOutcome, PublishRequest, Published};
pub use liveness::Liveness;
pub use names::{Claim, Names};
pub use presence::{Presence, RoomSnapshot};
pub use revocations::{Revocation, Revocations};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::protocol::{ChatMessage, LeaveReason};

/// Where an event came from: the node and the local session number there.
/// Used to skip the originating connection when fanning out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Node id.
    pub node: String,
    /// Session number, local to that node.
    pub session: u64,
}

/// A pub/sub topic a node can subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A room's messages, presence changes and typing.
    Room(String),
    /// A user's direct messages.
    User(String),
}

/// A direct message as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Text.
    pub text: String,
    /// Server time, Unix ms.
    pub ts: u64,
    /// Id, equal to the sender's `ack.id`.
    pub id: u64,
}

/// An event delivered by the backplane to every node subscribed to its topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stored room message.
    Message {
        /// The message.
        message: ChatMessage,
        /// The room's epoch the id belongs to (ids restart in a new epoch).
        epoch: String,
        /// The sending connection (skipped on fan-out).
        origin: Option<Origin>,
        /// W3C `traceparent` of the publishing span, when the publisher
        /// traces with OpenTelemetry: the parent of the `deliver` spans.
        traceparent: Option<String>,
    },
    /// A user's first connection (cluster-wide) joined a room.
    UserJoined {
        /// Room.
        room: String,
        /// User.
        user: String,
        /// Server time.
        ts: u64,
        /// The joining connection.
        origin: Option<Origin>,
    },
    /// A user's last connection (cluster-wide) left a room.
    UserLeft {
        /// Room.
        room: String,
        /// User.
        user: String,
        /// Server time.
        ts: u64,
        /// Why.
        reason: LeaveReason,
    },
    /// A typing indicator.
    Typing {
        /// Room.
        room: String,
        /// User.
        user: String,
        /// Typing or stopped.
        active: bool,
        /// The typing connection.
        origin: Option<Origin>,
    },
    /// Some of a user's tokens were revoked: close the connections they
    /// cover (delivered on the user's topic).
    Revoked {
        /// User.
        user: String,
        /// Tokens issued at or before this Unix ms.
        at_ms: Option<u64>,
        /// One token's id.
        jti: Option<String>,
    },
    /// A direct message, delivered to the nodes of both `to` and `from`.
    Direct {
        /// The message.
        message: DirectMessage,
        /// The sending connection (skipped on fan-out).
        origin: Option<Origin>,
    },
}

/// The receiving end of a backplane's event stream. It is bounded
/// ([`EVENT_QUEUE`] events): when the node falls behind, the backplane's
/// producers wait instead of buffering without bound.
pub type EventStream = mpsc::Receiver<Event>;

/// How many backplane events may wait for the node's dispatch.
pub const EVENT_QUEUE: usize = 8192;

/// Failures of backplane calls. Each maps to one client error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackplaneError {
    /// The shared store is unreachable; the call had no effect.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    /// Anything else (bad data in the store, a script error).
    #[error("backplane error: {0}")]
    Internal(String),
}

/// Result alias of backplane calls.
pub type Result<T, E = BackplaneError> = std::result::Result<T, E>;

/// Everything nodes share: the six concerns at once. Presence and
/// name-claim calls are made per node, not per connection: the node counts
/// its own connections and calls in only for a user's first (or last) local
/// connection. Any type with the six is a `Backplane`.
pub trait Backplane: Broker + Presence + Names + Accounts + Liveness + Revocations {}

impl<T: Broker + Presence + Names + Accounts + Liveness + Revocations + ?Sized> Backplane for T {}

/// A shared handle on a backplane.
pub type SharedBackplane = Arc<dyn Backplane>;

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new random epoch / token string (16 hex digits).
pub fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The newest `limit` messages with id < `before`, oldest first, from a
/// history slice sorted by id.
pub fn page(messages: &[ChatMessage], before: Option<u64>, limit: usize) -> Vec<ChatMessage> {
    let end = match before {
        Some(b) => messages.partition_point(|m| m.id < b),
        None => messages.len(),
    };
    messages[end.saturating_sub(limit)..end].to_vec()
}
