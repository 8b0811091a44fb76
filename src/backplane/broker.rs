//! The broker contract: a room's messages are stored (history capped at 50)
//! and published in one atomic step, in id order per room; nodes subscribe
//! to the topics of their connections and receive the events on the
//! backplane's one stream. Typing indicators and direct messages ride the
//! same pub/sub (never stored here).

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{EventStream, Origin, Result, Topic};
use crate::protocol::ChatMessage;

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

/// Room messages, subscriptions, typing and direct messages.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Takes the event stream. Returns `None` after the first call.
    fn take_events(&self) -> Option<EventStream>;

    /// Subscribes this node to a topic. The request is queued synchronously,
    /// in call order with [`Broker::unsubscribe`], so a quick
    /// unsubscribe/subscribe pair cannot be reordered. The receiver resolves
    /// when events of the topic flow.
    fn subscribe(&self, topic: Topic) -> oneshot::Receiver<Result<()>>;

    /// Unsubscribes this node from a topic (queued in call order).
    fn unsubscribe(&self, topic: Topic);

    /// Atomically stores a message in the room's history (capped at 50) and
    /// publishes it. Returns only after both happened.
    async fn publish(&self, request: PublishRequest) -> Result<Published>;

    /// The newest `limit` messages with id < `before` (or the newest), oldest first.
    async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>>;

    /// Publishes an ephemeral typing indicator (never stored).
    async fn typing(&self, room: &str, user: &str, active: bool, origin: Origin) -> Result<()>;

    /// Routes a direct message to every node of `to` and of `from`.
    async fn direct(
        &self,
        from: &str,
        to: &str,
        text: &str,
        origin: Origin,
    ) -> Result<DirectOutcome>;
}
