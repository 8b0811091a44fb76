//! The backplane: everything nodes must share. A trait with two
//! implementations: [`memory`] (one process; the embedded default) and
//! [`redis`] (any number of nodes). Events coming back from the backplane (room
//! messages, presence changes, typing, direct messages) arrive on one stream
//! that the node consumes, so the node and session code cannot tell which
//! backplane runs. Nothing here knows about WebSockets.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

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

/// A request to store and publish one room message.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Room.
    pub room: String,
    /// Sender's user name.
    pub from: String,
    /// Validated text.
    pub text: String,
    /// Idempotency key (scoped to the sender).
    pub client_id: Option<String>,
    /// The sending connection, if any (none for the HTTP publish API).
    pub origin: Option<Origin>,
    /// W3C `traceparent` of the publishing span (OpenTelemetry on), carried
    /// to every receiving node with the event; never stored in history.
    pub traceparent: Option<String>,
}

/// Outcome of a publish: the stored message's id and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Per-room id.
    pub id: u64,
    /// Server time.
    pub ts: u64,
    /// True when `client_id` was seen before: nothing new was stored.
    pub duplicate: bool,
}

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

/// Outcome of a guest name claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node now holds the name; the token lets others share it.
    Granted {
        /// The claim's resume token.
        token: String,
    },
    /// Someone else holds the name and the resume token did not match.
    Taken,
}

/// Outcome of a direct message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectOutcome {
    /// Routed to the recipient's nodes.
    Delivered {
        /// Message id.
        id: u64,
        /// Server time.
        ts: u64,
    },
    /// The recipient has no connection anywhere.
    Offline,
}

/// Everything nodes share. Presence and name-claim calls are made per node,
/// not per connection: the node counts its own connections and calls in only
/// for a user's first (or last) local connection.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;

    /// Takes the event stream. Returns `None` after the first call.
    fn take_events(&self) -> Option<EventStream>;

    /// Subscribes this node to a topic. The request is queued synchronously,
    /// in call order with [`Backplane::unsubscribe`], so a quick
    /// unsubscribe/subscribe pair cannot be reordered. The receiver resolves
    /// when events of the topic flow.
    fn subscribe(&self, topic: Topic) -> oneshot::Receiver<Result<()>>;

    /// Unsubscribes this node from a topic (queued in call order).
    fn unsubscribe(&self, topic: Topic);

    /// Atomically stores a message in the room's history (capped at 50) and
    /// publishes it. Returns only after both happened.
    async fn publish(&self, request: PublishRequest) -> Result<Published>;

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

    /// The newest `limit` messages with id < `before` (or the newest), oldest first.
    async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>>;

    /// User names present in the room, sorted.
    async fn presence(&self, room: &str) -> Result<Vec<String>>;

    /// Publishes an ephemeral typing indicator (never stored).
    async fn typing(&self, room: &str, user: &str, active: bool, origin: Origin) -> Result<()>;

    /// Claims a guest name for this node (first local connection of the name).
    async fn claim_name(&self, name: &str, resume: Option<&str>) -> Result<Claim>;

    /// Releases this node's hold on a guest name (last local connection gone).
    async fn release_name(&self, name: &str) -> Result<()>;

    /// Routes a direct message to every node of `to` and of `from`.
    async fn direct(
        &self,
        from: &str,
        to: &str,
        text: &str,
        origin: Origin,
    ) -> Result<DirectOutcome>;

    /// Creates an account; false when the name exists.
    async fn create_account(&self, name: &str, password_hash: &str) -> Result<bool>;

    /// The stored password hash of an account.
    async fn account_hash(&self, name: &str) -> Result<Option<String>>;

    /// Whether the backplane is reachable (readiness).
    async fn ready(&self) -> bool;

    /// Ids of the live nodes of the cluster.
    async fn nodes(&self) -> Result<Vec<String>>;

    /// Deregisters this node (clean shutdown, after its sessions closed).
    async fn shutdown(&self);
}

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
