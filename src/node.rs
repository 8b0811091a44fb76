//! Node-local state and fan-out: which local sessions are in which room and
//! which users have which local sessions. Events from the backplane are
//! encoded once per encoding and the same bytes are queued to every local
//! recipient. Maps are sharded (`DashMap`) and each room has its own lock, so
//! there is no global lock on the hot path; nothing awaits under a lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::OnceCell;
use tokio_util::task::TaskTracker;

use crate::backplane::{
    now_ms, BackplaneError, Claim, Event, Origin, RoomSnapshot, SharedBackplane, Topic,
};
use crate::metrics::Metrics;
use crate::protocol::{
    encode_into, ChatMessage, Encoding, HistoryEntry, LeaveReason, Ref, ServerFrame,
};
use crate::session::queue::OutQueue;
use crate::session::reason::DisconnectReason;
use crate::session::wire::Frame;

/// How many recent messages a local room keeps to bridge the gap between a
/// joiner's history read and its registration as a member.
const RING_LEN: usize = 256;

/// A server frame encoded lazily, at most once per encoding, and shared by
/// reference between all local recipients.
pub struct SharedFrame {
    frame: ServerFrame,
    json: OnceLock<Frame>,
    msgpack: OnceLock<Frame>,
}

impl SharedFrame {
    /// Wraps a frame.
    pub fn new(frame: ServerFrame) -> Self {
        SharedFrame {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        }
    }

    /// The frame as a WebSocket frame in `encoding` (cheap clone of shared bytes).
    pub fn get(&self, encoding: Encoding) -> Frame {
        match encoding {
            Encoding::Json => self
                .json
                .get_or_init(|| to_wire(&self.frame, Encoding::Json))
                .clone(),
            Encoding::MsgPack => self
                .msgpack
                .get_or_init(|| to_wire(&self.frame, Encoding::MsgPack))
                .clone(),
        }
    }
}

/// Encodes one server frame as a complete WebSocket frame: text for JSON
/// (serde_json writes UTF-8), binary for MessagePack.
pub fn to_wire(frame: &ServerFrame, encoding: Encoding) -> Frame {
    Frame::encoded(encoding == Encoding::Json, |out| {
        encode_into(frame, encoding, out)
    })
}

/// A local connection as the node sees it.
pub struct SessionHandle {
    /// Local session number.
    pub id: u64,
    /// User name.
    pub user: String,
    /// Negotiated encoding.
    pub encoding: Encoding,
    /// Outbound queue.
    pub queue: Arc<OutQueue>,
}

impl SessionHandle {
    /// Queues a frame encoded for this session.
    pub fn send(&self, frame: &ServerFrame) -> bool {
        self.queue.push(to_wire(frame, self.encoding))
    }
}

#[derive(Default)]
struct RoomInner {
    /// Sessions joining or joined; the room is dropped when it reaches 0.
    refs: usize,
    members: HashMap<u64, Member>,
    /// Local connections per user (joining or joined).
    user_counts: HashMap<String, usize>,
    ring: VecDeque<(u64, Arc<SharedFrame>)>,
    /// The epoch of the ids in `ring` (a new epoch empties the ring).
    ring_epoch: Option<Arc<str>>,
}

/// A joined session and its join watermark.
struct Member {
    handle: Arc<SessionHandle>,
    /// Messages of this epoch with an id up to this one were in the `joined`
    /// snapshot: their events may still be on their way from the backplane
    /// and are skipped for this member. Cleared by the first newer message.
    seen: Option<(Arc<str>, u64)>,
}

struct LocalRoom {
    inner: Mutex<RoomInner>,
    subscribed: OnceCell<Result<(), BackplaneError>>,
    pending: Mutex<Option<tokio::sync::oneshot::Receiver<crate::backplane::Result<()>>>>,
}

#[derive(Default)]
struct ClaimState {
    leases: usize,
    token: Option<String>,
}

struct LocalUser {
    claim: tokio::sync::Mutex<ClaimState>,
    sessions: Mutex<HashMap<u64, Arc<SessionHandle>>>,
}

/// Why a user could not attach to this node.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The guest name is held by someone without the presented resume token.
    #[error("name is taken")]
    NameTaken,
    /// The user already has the most connections allowed on this node.
    #[error("too many connections for this user")]
    TooManyConnections,
    /// The backplane failed.
    #[error(transparent)]
    Backplane(#[from] BackplaneError),
}

/// A user's hold on this node: while it lives, the user's name claim (guest
/// mode) and direct-message subscription stay. Dropping it releases them.
pub struct UserLease {
    node: Arc<Node>,
    user: String,
    /// The claim's resume token (guest mode).
    pub token: Option<String>,
}

impl UserLease {
    /// Releases the user now, awaited (dropping the lease releases it in the
    /// background). On the user's last lease the direct-message subscription
    /// is dropped before this returns.
    pub async fn release(mut self) {
        let user = std::mem::take(&mut self.user);
        let node = self.node.clone();
        drop(self);
        node.detach_user(&user).await;
    }
}

impl Drop for UserLease {
    fn drop(&mut self) {
        if self.user.is_empty() {
            return; // released already
        }
        let node = self.node.clone();
        let user = std::mem::take(&mut self.user);
        self.node
            .tasks
            .spawn(async move { node.detach_user(&user).await });
    }
}

/// Result of a join.
pub struct Joined {
    /// The room snapshot.
    pub snapshot: RoomSnapshot,
    /// History to send and whether it is exactly the missed messages.
    pub history: Vec<ChatMessage>,
    /// See PROTOCOL §3.
    pub recovered: bool,
}

/// Node-local state: rooms, users and sessions of this process.
pub struct Node {
    backplane: SharedBackplane,
    node_id: String,
    guest_names: bool,
    rooms: DashMap<String, Arc<LocalRoom>>,
    users: DashMap<String, Arc<LocalUser>>,
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
        Arc::new(Node {
            node_id: backplane.node_id().to_owned(),
            backplane,
            guest_names,
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

    /// The backplane.
    pub fn backplane(&self) -> &SharedBackplane {
        &self.backplane
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

    /// Attaches a user (at handshake): claims the guest name cluster-wide on
    /// the user's first local connection, or checks the resume token.
    pub async fn attach_user(
        self: &Arc<Self>,
        user: &str,
        resume: Option<&str>,
        max_per_user: usize,
    ) -> Result<UserLease, AttachError> {
        let entry = self
            .users
            .entry(user.to_owned())
            .or_insert_with(|| {
                Arc::new(LocalUser {
                    claim: tokio::sync::Mutex::new(ClaimState::default()),
                    sessions: Mutex::new(HashMap::new()),
                })
            })
            .clone();
        let mut state = entry.claim.lock().await;
        if state.leases > 0 {
            if self.guest_names && resume != state.token.as_deref() {
                return Err(AttachError::NameTaken);
            }
            if state.leases >= max_per_user {
                return Err(AttachError::TooManyConnections);
            }
            state.leases += 1;
            return Ok(UserLease {
                node: self.clone(),
                user: user.to_owned(),
                token: state.token.clone(),
            });
        }
        let token = if self.guest_names {
            match self.backplane.claim_name(user, resume).await? {
                Claim::Granted { token } => Some(token),
                Claim::Taken => {
                    drop(state);
                    self.forget_user_if_unused(user, &entry);
                    return Err(AttachError::NameTaken);
                }
            }
        } else {
            None
        };
        let subscribed = self.backplane.subscribe(Topic::User(user.to_owned())).await;
        let subscribed = subscribed
            .map_err(|_| BackplaneError::Internal("subscription dropped".into()))
            .and_then(|r| r);
        if let Err(e) = subscribed {
            self.backplane.unsubscribe(Topic::User(user.to_owned()));
            if self.guest_names {
                let _ = self.backplane.release_name(user).await;
            }
            drop(state);
            self.forget_user_if_unused(user, &entry);
            return Err(e.into());
        }
        state.leases = 1;
        state.token = token.clone();
        self.metrics.users.inc();
        Ok(UserLease {
            node: self.clone(),
            user: user.to_owned(),
            token,
        })
    }

    async fn detach_user(&self, user: &str) {
        let Some(entry) = self.users.get(user).map(|e| e.clone()) else {
            return;
        };
        let mut state = entry.claim.lock().await;
        state.leases = state.leases.saturating_sub(1);
        if state.leases > 0 {
            return;
        }
        self.metrics.users.dec();
        self.backplane.unsubscribe(Topic::User(user.to_owned()));
        if self.guest_names {
            if let Err(e) = self.backplane.release_name(user).await {
                tracing::warn!(user, error = %e, "releasing name claim failed; it expires with this node's heartbeat");
            }
        }
        state.token = None;
        drop(state);
        self.forget_user_if_unused(user, &entry);
    }

    fn forget_user_if_unused(&self, user: &str, entry: &Arc<LocalUser>) {
        // Two strong refs: the map's and the caller's. More means another
        // attach is waiting on the claim lock and will reuse the entry.
        self.users.remove_if(user, |_, e| {
            Arc::ptr_eq(e, entry)
                && Arc::strong_count(e) == 2
                && e.claim.try_lock().map(|s| s.leases == 0).unwrap_or(false)
        });
    }

    /// Registers an upgraded session.
    pub fn open_session(
        &self,
        user: &str,
        encoding: Encoding,
        queue_capacity: usize,
    ) -> Arc<SessionHandle> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(SessionHandle {
            id,
            user: user.to_owned(),
            encoding,
            queue: Arc::new(OutQueue::with_drop_counter(
                queue_capacity,
                self.metrics.queue_dropped_frames.clone(),
            )),
        });
        if let Some(entry) = self.users.get(user) {
            if let Ok(mut sessions) = entry.sessions.lock() {
                sessions.insert(id, handle.clone());
            }
        }
        self.sessions.insert(id, handle.clone());
        if self.is_draining() {
            handle.queue.close(DisconnectReason::Draining);
        }
        handle
    }

    /// Unregisters a session (after it left its rooms).
    pub fn close_session(&self, handle: &SessionHandle) {
        self.sessions.remove(&handle.id);
        if let Some(entry) = self.users.get(&handle.user) {
            if let Ok(mut sessions) = entry.sessions.lock() {
                sessions.remove(&handle.id);
            }
        }
    }

    /// The origin of events caused by a session.
    pub fn origin(&self, session: u64) -> Origin {
        Origin {
            node: self.node_id.clone(),
            session,
        }
    }

    fn room_ref(&self, room: &str) -> Arc<LocalRoom> {
        let entry = self.rooms.entry(room.to_owned()).or_insert_with(|| {
            self.metrics.rooms.inc();
            let pending = self.backplane.subscribe(Topic::Room(room.to_owned()));
            Arc::new(LocalRoom {
                inner: Mutex::new(RoomInner::default()),
                subscribed: OnceCell::new(),
                pending: Mutex::new(Some(pending)),
            })
        });
        if let Ok(mut inner) = entry.inner.lock() {
            inner.refs += 1;
        }
        entry.clone()
    }

    fn room_unref(&self, room: &str) {
        self.rooms.remove_if(room, |_, r| {
            let Ok(mut inner) = r.inner.lock() else {
                return false;
            };
            inner.refs = inner.refs.saturating_sub(1);
            if inner.refs == 0 {
                // Queued under the map's shard lock: a later subscribe for the
                // same room is created after this removal and queued after it.
                self.backplane.unsubscribe(Topic::Room(room.to_owned()));
                self.metrics.rooms.dec();
                true
            } else {
                false
            }
        });
    }

    async fn wait_subscribed(room: &LocalRoom) -> Result<(), BackplaneError> {
        room.subscribed
            .get_or_init(|| async {
                let pending = room.pending.lock().ok().and_then(|mut p| p.take());
                match pending {
                    Some(rx) => rx.await.unwrap_or_else(|_| {
                        Err(BackplaneError::Internal("subscription dropped".into()))
                    }),
                    None => Err(BackplaneError::Internal("subscription lost".into())),
                }
            })
            .await
            .clone()
    }

    /// Joins a session to a room: subscribes the node, reads the snapshot
    /// (adding presence on the user's first local connection), then queues
    /// `joined` followed by anything that arrived meanwhile, and registers the
    /// session as a member. `already_member`: a repeated join only refreshes.
    pub async fn join(
        &self,
        session: &Arc<SessionHandle>,
        room_name: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        already_member: bool,
        reference: Option<Ref>,
    ) -> Result<(), BackplaneError> {
        let room = if already_member {
            match self.rooms.get(room_name) {
                Some(r) => r.clone(),
                None => return Err(BackplaneError::Internal("room state missing".into())),
            }
        } else {
            self.room_ref(room_name)
        };
        let result = self
            .join_inner(
                &room,
                session,
                room_name,
                since,
                epoch,
                already_member,
                reference,
            )
            .await;
        if result.is_err() && !already_member {
            self.room_unref(room_name);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn join_inner(
        &self,
        room: &Arc<LocalRoom>,
        session: &Arc<SessionHandle>,
        room_name: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        already_member: bool,
        reference: Option<Ref>,
    ) -> Result<(), BackplaneError> {
        Self::wait_subscribed(room).await?;
        let add_presence = if already_member {
            false
        } else {
            let mut inner = room
                .inner
                .lock()
                .map_err(|_| BackplaneError::Internal("poisoned".into()))?;
            let count = inner.user_counts.entry(session.user.clone()).or_default();
            *count += 1;
            let first = *count == 1;
            if first {
                // A (room, user) entry this node now holds (see `leave`).
                self.metrics.presence_entries.inc();
            }
            first
        };
        let snapshot = match self
            .backplane
            .join(
                room_name,
                &session.user,
                add_presence,
                Some(self.origin(session.id)),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                if !already_member {
                    if let Ok(mut inner) = room.inner.lock() {
                        if decrement(&mut inner.user_counts, &session.user) {
                            self.metrics.presence_entries.dec();
                        }
                    }
                }
                return Err(e);
            }
        };
        let joined = recover(snapshot, since, epoch);
        let mut presence = joined.snapshot.presence;
        if !presence.contains(&session.user) {
            presence.push(session.user.clone());
            presence.sort();
        }
        let last_id = joined.snapshot.last_id;
        let epoch: Arc<str> = Arc::from(joined.snapshot.epoch.as_str());
        let frame = ServerFrame::Joined {
            room: room_name.to_owned(),
            epoch: joined.snapshot.epoch,
            presence,
            history: joined.history.into_iter().map(HistoryEntry::from).collect(),
            recovered: joined.recovered,
            reference,
        };
        let mut inner = room
            .inner
            .lock()
            .map_err(|_| BackplaneError::Internal("poisoned".into()))?;
        session.send(&frame);
        if !already_member {
            // Messages dispatched here after the snapshot was read: replay.
            if inner.ring_epoch.as_deref() == Some(&*epoch) {
                for (id, frame) in inner.ring.iter() {
                    if *id > last_id {
                        session.queue.push(frame.get(session.encoding));
                    }
                }
            }
            // Messages in the snapshot not dispatched yet: skip on arrival.
            inner.members.insert(
                session.id,
                Member {
                    handle: session.clone(),
                    seen: Some((epoch, last_id)),
                },
            );
        }
        Ok(())
    }

    /// Removes a session from a room; on the user's last local connection
    /// the backplane removes the presence entry (and tells the others).
    pub async fn leave(
        &self,
        session: &SessionHandle,
        room_name: &str,
        reason: LeaveReason,
    ) -> Result<(), BackplaneError> {
        let Some(room) = self.rooms.get(room_name).map(|r| r.clone()) else {
            return Ok(());
        };
        let last_of_user = {
            let Ok(mut inner) = room.inner.lock() else {
                return Err(BackplaneError::Internal("poisoned".into()));
            };
            if inner.members.remove(&session.id).is_none() {
                return Ok(());
            }
            decrement(&mut inner.user_counts, &session.user)
        };
        if last_of_user {
            self.metrics.presence_entries.dec();
        }
        let result = if last_of_user {
            self.backplane.leave(room_name, &session.user, reason).await
        } else {
            Ok(())
        };
        self.room_unref(room_name);
        result
    }

    /// Delivers one backplane event to local sessions.
    fn dispatch(&self, event: Event) {
        match event {
            Event::Message {
                message,
                epoch,
                origin,
                traceparent,
            } => {
                let Some(room) = self.rooms.get(&message.room).map(|r| r.clone()) else {
                    return;
                };
                // The fan-out, in the publisher's trace when it sent one.
                let span = tracing::debug_span!(
                    "deliver",
                    room = %message.room,
                    id = message.id,
                    recipients = tracing::field::Empty,
                    otel.kind = "consumer"
                );
                if let Some(tp) = &traceparent {
                    crate::telemetry::set_remote_parent(&span, tp);
                }
                let _entered = span.enter();
                let latency = now_ms().saturating_sub(message.ts);
                self.metrics
                    .delivery_latency
                    .observe(latency as f64 / 1000.0);
                let id = message.id;
                let frame = Arc::new(SharedFrame::new(ServerFrame::Message(message)));
                let skip = self.local_origin(origin.as_ref());
                let Ok(mut inner) = room.inner.lock() else {
                    return;
                };
                let mut sent = 0u64;
                for member in inner.members.values_mut() {
                    if let Some((seen_epoch, seen_id)) = &member.seen {
                        if **seen_epoch == *epoch && id <= *seen_id {
                            continue;
                        }
                        member.seen = None;
                    }
                    let handle = &member.handle;
                    if Some(handle.id) == skip {
                        continue;
                    }
                    handle.queue.push(frame.get(handle.encoding));
                    sent += 1;
                }
                if inner.ring_epoch.as_deref() != Some(epoch.as_str()) {
                    inner.ring.clear();
                    inner.ring_epoch = Some(Arc::from(epoch.as_str()));
                }
                if inner.ring.len() >= RING_LEN {
                    inner.ring.pop_front();
                }
                inner.ring.push_back((id, frame));
                drop(inner);
                span.record("recipients", sent);
                self.metrics.messages_delivered.inc_by(sent);
                self.metrics.fanout_size.observe(sent as f64);
            }
            Event::UserJoined {
                room,
                user,
                ts,
                origin,
            } => {
                let skip = self.local_origin(origin.as_ref());
                let frame = SharedFrame::new(ServerFrame::UserJoined {
                    room: room.clone(),
                    user: user.clone(),
                    ts,
                });
                self.room_broadcast(&room, &frame, |m| Some(m.id) != skip && m.user != user);
            }
            Event::UserLeft {
                room,
                user,
                ts,
                reason,
            } => {
                let frame = SharedFrame::new(ServerFrame::UserLeft {
                    room: room.clone(),
                    user: user.clone(),
                    ts,
                    reason,
                });
                self.room_broadcast(&room, &frame, |m| m.user != user);
            }
            Event::Typing {
                room, user, active, ..
            } => {
                let frame = SharedFrame::new(ServerFrame::Typing {
                    room: room.clone(),
                    user: user.clone(),
                    active,
                });
                self.room_broadcast(&room, &frame, |m| m.user != user);
            }
            Event::Direct { message, origin } => {
                let skip = self.local_origin(origin.as_ref());
                let frame = SharedFrame::new(ServerFrame::Direct {
                    from: message.from.clone(),
                    to: message.to.clone(),
                    text: message.text,
                    ts: message.ts,
                    id: message.id,
                });
                let mut sent = 0;
                let mut users = vec![message.to];
                if message.from != users[0] {
                    users.push(message.from);
                }
                for user in users {
                    let Some(entry) = self.users.get(&user).map(|e| e.clone()) else {
                        continue;
                    };
                    let Ok(sessions) = entry.sessions.lock() else {
                        continue;
                    };
                    for s in sessions.values() {
                        if Some(s.id) != skip {
                            s.queue.push(frame.get(s.encoding));
                            sent += 1;
                        }
                    }
                }
                self.metrics.messages_delivered.inc_by(sent);
            }
        }
    }

    fn local_origin(&self, origin: Option<&Origin>) -> Option<u64> {
        origin.filter(|o| o.node == self.node_id).map(|o| o.session)
    }

    fn room_broadcast(
        &self,
        room: &str,
        frame: &SharedFrame,
        include: impl Fn(&SessionHandle) -> bool,
    ) {
        let Some(room) = self.rooms.get(room).map(|r| r.clone()) else {
            return;
        };
        let Ok(inner) = room.inner.lock() else {
            return;
        };
        for member in inner.members.values() {
            if include(&member.handle) {
                member.handle.queue.push(frame.get(member.handle.encoding));
            }
        }
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

fn decrement(counts: &mut HashMap<String, usize>, user: &str) -> bool {
    match counts.get_mut(user) {
        Some(c) if *c > 1 => {
            *c -= 1;
            false
        }
        Some(_) => {
            counts.remove(user);
            true
        }
        None => false,
    }
}

/// Applies PROTOCOL §3 recovery: when the epoch matches and every message
/// after `since` is still kept, the history is exactly the missed messages.
pub fn recover(snapshot: RoomSnapshot, since: Option<u64>, epoch: Option<&str>) -> Joined {
    let recoverable = match (since, epoch) {
        (Some(since), Some(epoch)) if epoch == snapshot.epoch && since <= snapshot.last_id => {
            since == snapshot.last_id
                || snapshot.messages.first().is_some_and(|m| m.id <= since + 1)
        }
        _ => false,
    };
    let history = if recoverable {
        let since = since.unwrap_or(0);
        snapshot
            .messages
            .iter()
            .filter(|m| m.id > since)
            .cloned()
            .collect()
    } else {
        snapshot.messages.clone()
    };
    Joined {
        snapshot,
        history,
        recovered: recoverable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(epoch: &str, ids: impl Iterator<Item = u64>, last: u64) -> RoomSnapshot {
        RoomSnapshot {
            epoch: epoch.into(),
            last_id: last,
            messages: ids
                .map(|id| ChatMessage {
                    room: "r".into(),
                    id,
                    from: "a".into(),
                    text: "t".into(),
                    ts: 0,
                })
                .collect(),
            presence: vec![],
        }
    }

    #[test]
    fn recovery_rules() {
        let j = recover(snap("e", 1..=10, 10), Some(7), Some("e"));
        assert!(j.recovered);
        assert_eq!(
            j.history.iter().map(|m| m.id).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        let j = recover(snap("e", 51..=100, 100), Some(50), Some("e"));
        assert!(j.recovered);
        assert_eq!(j.history.len(), 50);
        let j = recover(snap("e", 51..=100, 100), Some(49), Some("e"));
        assert!(!j.recovered, "message 50 is gone");
        assert_eq!(j.history.len(), 50);
        let j = recover(snap("e", 1..=10, 10), Some(7), Some("other"));
        assert!(!j.recovered);
        assert_eq!(j.history.len(), 10);
        let j = recover(snap("e", std::iter::empty(), 0), Some(0), Some("e"));
        assert!(j.recovered, "an epoch seen on an empty room stays valid");
        let j = recover(snap("e", 1..=3, 3), Some(0), Some("e"));
        assert!(j.recovered);
        assert_eq!(j.history.len(), 3);
        let j = recover(snap("e", 1..=3, 3), Some(9), Some("e"));
        assert!(!j.recovered, "since beyond the last id is inconsistent");
        let j = recover(snap("e", 1..=3, 3), None, None);
        assert!(!j.recovered);
    }
}
