//! The node: THE façade between connections and the backplane. Sessions
//! and HTTP handlers ask the node (join, leave, publish, direct, typing,
//! who, history, accounts, readiness), never the backplane; the node checks
//! what a user may do, maps every failure to one [`NodeError`] (and so to
//! one PROTOCOL error code), keeps node-local state only (which local
//! sessions are in which room, which users have which local sessions) and
//! fans backplane events out to them.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the [`Node`], its errors, the commands, drain |
//! | `users.rs` | users' leases (name claims, dm topics) and session handles |
//! | `rooms.rs` | local rooms, race-free join with recovery, leave |
//! | `fanout.rs` | one backplane event to the local sessions it concerns |
//!
//! Who may call whom: `http` and `session` call `node`; `node` calls
//! `backplane` and uses `outbound` and `protocol`; nothing here knows of
//! sockets, HTTP or Redis. Maps are sharded (`DashMap`) and each room has
//! its own lock, so there is no global lock on the hot path; nothing awaits
//! under a lock.

mod fanout;
mod rooms;
mod users;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use rooms::{recover, Joined};
pub use users::{AttachError, Credential, SessionHandle, UserLease};

use crate::backplane::{
    BackplaneError, DirectOutcome, Origin, PublishRequest, Published, SharedBackplane,
};
use crate::metrics::Metrics;
use crate::outbound::DisconnectReason;
use crate::protocol::{ChatMessage, ErrorCode, LeaveReason};

/// What a node bounds per connection.
#[derive(Debug, Clone)]
pub struct NodeLimits {
    /// Most rooms one connection may join (`too_many_rooms` beyond).
    pub max_rooms_per_conn: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            max_rooms_per_conn: 256,
        }
    }
}

/// Why a command failed: the one error type of the façade. Each variant
/// maps to exactly one PROTOCOL error code ([`NodeError::code`]); the HTTP
/// layer maps codes to statuses in one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The command needs membership of the room.
    #[error("join `{0}` first")]
    NotMember(String),
    /// The dm recipient has no connection.
    #[error("user `{0}` is not connected")]
    UserOffline(String),
    /// The connection joined as many rooms as it may.
    #[error("a connection may join at most {0} rooms")]
    TooManyRooms(usize),
    /// The backplane is unreachable; the command was not applied.
    #[error("the backplane is unavailable; the command was not applied, retry later")]
    Unavailable(String),
    /// Anything else.
    #[error("internal error")]
    Internal(String),
}

impl NodeError {
    /// The PROTOCOL error code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::NotMember(_) => ErrorCode::NotMember,
            NodeError::UserOffline(_) => ErrorCode::UserOffline,
            NodeError::TooManyRooms(_) => ErrorCode::TooManyRooms,
            NodeError::Unavailable(_) => ErrorCode::Unavailable,
            NodeError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<BackplaneError> for NodeError {
    fn from(e: BackplaneError) -> Self {
        match e {
            BackplaneError::Unavailable(m) => NodeError::Unavailable(m),
            BackplaneError::Internal(m) => {
                tracing::error!(error = %m, "backplane error");
                NodeError::Internal(m)
            }
        }
    }
}

/// Result alias of node calls.
pub type NodeResult<T> = Result<T, NodeError>;

/// Node-local state: rooms, users and sessions of this process.
pub struct Node {
    backplane: SharedBackplane,
    node_id: String,
    guest_names: bool,
    limits: NodeLimits,
    rooms: DashMap<String, Arc<rooms::LocalRoom>>,
    users: DashMap<String, Arc<users::LocalUser>>,
    sessions: DashMap<u64, Arc<SessionHandle>>,
    next_session: AtomicU64,
    draining: AtomicBool,
    /// Node metrics.
    pub metrics: Arc<Metrics>,
    /// Tracks every task the node spawns.
    pub tasks: TaskTracker,
}

impl Node {
    /// Creates a node on a backplane. `guest_names`: whether user names are
    /// exclusive claims (guest auth mode).
    pub fn new(backplane: SharedBackplane, guest_names: bool, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_limits(backplane, guest_names, metrics, NodeLimits::default())
    }

    /// [`Node::new`] with per-connection limits.
    pub fn with_limits(
        backplane: SharedBackplane,
        guest_names: bool,
        metrics: Arc<Metrics>,
        limits: NodeLimits,
    ) -> Arc<Self> {
        Arc::new(Node {
            node_id: backplane.node_id().to_owned(),
            backplane,
            guest_names,
            limits,
            rooms: DashMap::new(),
            users: DashMap::new(),
            sessions: DashMap::new(),
            next_session: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            metrics,
            tasks: TaskTracker::new(),
        })
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.node_id
    }

    /// Starts consuming backplane events. Call once.
    pub fn start(self: &Arc<Self>) {
        let Some(mut events) = self.backplane.take_events() else {
            return;
        };
        let node = self.clone();
        self.tasks.spawn(async move {
            while let Some(event) = events.recv().await {
                node.metrics.backplane_events.inc();
                node.metrics.event_queue_depth.set(events.len() as i64);
                node.dispatch(event);
            }
        });
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Number of open local sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The origin of events caused by a session.
    pub fn origin(&self, session: u64) -> Origin {
        Origin {
            node: self.node_id.clone(),
            session,
        }
    }

    /// Ends a session: releases the user (on its last connection this drops
    /// the direct-message subscription, so once others see `user_left` a dm
    /// to the user answers `user_offline`), leaves every room (the user's
    /// last connection tells the others) and unregisters the session.
    pub async fn end_session(&self, handle: &SessionHandle, lease: UserLease) {
        lease.release().await;
        for room in handle.rooms() {
            if let Err(e) = self.leave(handle, &room, LeaveReason::Disconnect).await {
                tracing::warn!(room, error = %e, "leave on disconnect failed");
            }
        }
        self.unregister_session(handle);
    }

    /// `send`: stores and publishes a message of a member into its room
    /// (PROTOCOL §2); the `ack` may follow once this returns.
    pub async fn publish(
        &self,
        session: &SessionHandle,
        room: &str,
        text: String,
        client_id: Option<String>,
    ) -> NodeResult<Published> {
        if !session.is_member(room) {
            return Err(NodeError::NotMember(room.to_owned()));
        }
        // The store-and-publish call; its trace context travels with the
        // message to every delivering node.
        let span = tracing::debug_span!(
            "publish",
            room = %room,
            id = tracing::field::Empty,
            otel.kind = "producer"
        );
        self.store_and_publish(
            PublishRequest {
                room: room.to_owned(),
                from: session.user.clone(),
                text,
                client_id,
                origin: Some(self.origin(session.id)),
                traceparent: crate::telemetry::traceparent(&span),
            },
            span,
        )
        .await
    }

    /// A server-side publish (HTTP API) into a room as `from`.
    pub async fn publish_as(&self, room: &str, from: &str, text: String) -> NodeResult<Published> {
        // A root span per API publish: its trace continues on every node
        // that delivers the message (see `telemetry`).
        let span = tracing::debug_span!(
            parent: None,
            "publish",
            room = %room,
            source = "api",
            id = tracing::field::Empty,
            otel.kind = "producer"
        );
        self.store_and_publish(
            PublishRequest {
                room: room.to_owned(),
                from: from.to_owned(),
                text,
                client_id: None,
                origin: None,
                traceparent: crate::telemetry::traceparent(&span),
            },
            span,
        )
        .await
    }

    /// The one publish path of the node.
    async fn store_and_publish(
        &self,
        request: PublishRequest,
        span: tracing::Span,
    ) -> NodeResult<Published> {
        let published = self
            .backplane
            .publish(request)
            .instrument(span.clone())
            .await?;
        span.record("id", published.id);
        if !published.duplicate {
            self.metrics.messages_published.inc();
        }
        Ok(published)
    }

    /// `dm`: routes a direct message to every connection of `to` and the
    /// sender's other connections; returns the id and time for the `ack`.
    pub async fn direct(
        &self,
        session: &SessionHandle,
        to: &str,
        text: &str,
    ) -> NodeResult<(u64, u64)> {
        match self
            .backplane
            .direct(&session.user, to, text, self.origin(session.id))
            .await?
        {
            DirectOutcome::Delivered { id, ts } => Ok((id, ts)),
            DirectOutcome::Offline => Err(NodeError::UserOffline(to.to_owned())),
        }
    }

    /// `typing`: an ephemeral indicator to the room's other members.
    pub async fn typing(
        &self,
        session: &SessionHandle,
        room: &str,
        active: bool,
    ) -> NodeResult<()> {
        if !session.is_member(room) {
            return Err(NodeError::NotMember(room.to_owned()));
        }
        self.backplane
            .typing(room, &session.user, active, self.origin(session.id))
            .await?;
        Ok(())
    }

    /// `who`: the users present in a room the session joined (the caller
    /// included, even before its presence is visible everywhere).
    pub async fn who(&self, session: &SessionHandle, room: &str) -> NodeResult<Vec<String>> {
        if !session.is_member(room) {
            return Err(NodeError::NotMember(room.to_owned()));
        }
        let mut users = self.backplane.presence(room).await?;
        if !users.contains(&session.user) {
            users.push(session.user.clone());
            users.sort();
        }
        Ok(users)
    }

    /// `history`: the newest `limit` messages with id < `before`, oldest first.
    pub async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> NodeResult<Vec<ChatMessage>> {
        Ok(self.backplane.history(room, before, limit).await?)
    }

    /// The users present in a room (HTTP API).
    pub async fn presence(&self, room: &str) -> NodeResult<Vec<String>> {
        Ok(self.backplane.presence(room).await?)
    }

    /// Creates an account; false when the name exists.
    pub async fn create_account(&self, name: &str, password_hash: &str) -> NodeResult<bool> {
        Ok(self.backplane.create_account(name, password_hash).await?)
    }

    /// The stored password hash of an account.
    pub async fn account_hash(&self, name: &str) -> NodeResult<Option<String>> {
        Ok(self.backplane.account_hash(name).await?)
    }

    /// Revokes `user`'s tokens issued until now, cluster-wide, for `ttl`:
    /// every connection they authenticated closes with 4001. Returns the
    /// revocation moment (Unix ms).
    pub async fn revoke_user(&self, user: &str, ttl: Duration) -> NodeResult<u64> {
        let at = crate::backplane::now_ms();
        self.backplane.revoke_user(user, at, ttl).await?;
        Ok(at)
    }

    /// Revokes one token of `user` (by `jti`) until it expires (`until_ms`);
    /// the connections it authenticated close with 4001.
    pub async fn revoke_token(&self, user: &str, jti: &str, until_ms: u64) -> NodeResult<()> {
        Ok(self.backplane.revoke_token(user, jti, until_ms).await?)
    }

    /// Whether a token of `user` with `credential` was revoked.
    pub async fn is_revoked(&self, user: &str, credential: &Credential) -> NodeResult<bool> {
        let r = self
            .backplane
            .revocation(user, credential.jti.as_deref())
            .await?;
        Ok(r.token_revoked || credential.revoked_by(r.user_at_ms, None))
    }

    /// Whether the node can serve: not draining and its backplane reachable.
    pub async fn ready(&self) -> Result<(), NodeError> {
        if self.backplane.ready().await {
            Ok(())
        } else {
            Err(NodeError::Unavailable("backplane unreachable".into()))
        }
    }

    /// Ids of the live nodes of the cluster.
    pub async fn nodes(&self) -> NodeResult<Vec<String>> {
        Ok(self.backplane.nodes().await?)
    }

    /// Deregisters this node from the backplane (after its sessions closed).
    pub async fn shutdown_backplane(&self) {
        self.backplane.shutdown().await;
    }

    /// Starts draining: new sockets are refused; open ones are closed with
    /// 1001 in batches spread with jitter over `over`, so their reconnects do
    /// not arrive elsewhere as one storm. Returns when all sessions ended or
    /// `over` plus a grace period passed.
    pub async fn drain(&self, over: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let mut sessions: Vec<Arc<SessionHandle>> =
            self.sessions.iter().map(|e| e.value().clone()).collect();
        {
            use rand::seq::SliceRandom;
            sessions.shuffle(&mut rand::rng());
        }
        let total = sessions.len();
        tracing::info!(sessions = total, secs = over.as_secs_f64(), "draining");
        // Close everyone within 80% of the window, leaving time for the last
        // closes to complete, in up to 50 batches.
        let window = over.mul_f64(0.8);
        let batches = total.clamp(1, 50);
        let per_batch = total.div_ceil(batches).max(1);
        let step = window / batches as u32;
        for (i, chunk) in sessions.chunks(per_batch).enumerate() {
            if i > 0 && !step.is_zero() {
                let jitter = rand::random_range(0..=step.as_millis().max(1) as u64 / 2);
                tokio::time::sleep(step + Duration::from_millis(jitter) / 2).await;
            }
            for s in chunk {
                s.queue.close(DisconnectReason::Draining);
            }
        }
        // Sessions opened during the drain were closed on open.
        let deadline =
            tokio::time::Instant::now() + over.saturating_sub(window) + Duration::from_secs(2);
        while !self.sessions.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
