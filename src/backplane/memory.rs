//! In-memory backplane: the embedded default. One [`MemoryHub`] holds the
//! shared state; each [`MemoryBackplane`] handle is one node on it. It is
//! single-process only: nodes in other processes cannot see it. Several
//! handles on one hub behave like nodes of a cluster, which the contract
//! tests use.
//!
//! Locks are `std::sync::Mutex`/`DashMap` shards: nothing awaits while
//! holding them. Each room also has a gate (an async mutex) held from the
//! id assignment to the last event pushed into the nodes' bounded event
//! queues, so every node sees a room's events in id order and a publisher
//! waits (instead of memory growing) while a node's queue is full. Direct
//! messages pass one hub-wide gate for the same reason.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use super::{
    now_ms, page, random_token, Accounts, Broker, Claim, DirectMessage, DirectOutcome, Event,
    EventStream, Liveness, Names, Origin, Presence, PublishRequest, Published, Result, Revocation,
    Revocations, RoomSnapshot, Topic,
};
use crate::protocol::{ChatMessage, LeaveReason, HISTORY_LEN};

/// How long a `client_id` is remembered for idempotent sends.
pub const CLIENT_ID_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
struct RoomState {
    /// Serialises the room's events from id assignment to delivery.
    gate: Arc<tokio::sync::Mutex<()>>,
    epoch: String,
    last_id: u64,
    history: VecDeque<ChatMessage>,
    /// user -> nodes holding a presence entry for them.
    presence: BTreeMap<String, BTreeSet<String>>,
    client_ids: HashMap<(String, String), (u64, u64)>,
    client_id_order: VecDeque<(Instant, (String, String))>,
}

impl RoomState {
    /// A room used for the first time: a new epoch.
    fn fresh() -> Self {
        RoomState {
            epoch: random_token(),
            ..Default::default()
        }
    }
}

struct NameClaim {
    token: String,
    nodes: HashSet<String>,
}

#[derive(Default)]
struct HubInner {
    rooms: DashMap<String, RoomState>,
    subscribers: DashMap<Topic, HashMap<String, mpsc::Sender<Event>>>,
    /// Serialises direct messages from id assignment to delivery.
    direct_gate: tokio::sync::Mutex<()>,
    names: Mutex<HashMap<String, NameClaim>>,
    accounts: DashMap<String, String>,
    nodes: DashMap<String, ()>,
    direct_seq: AtomicU64,
    /// user -> (tokens issued at or before this ms are revoked, until).
    revoked_users: DashMap<String, (u64, Instant)>,
    /// (user, jti) -> revoked until (Unix ms).
    revoked_tokens: DashMap<(String, String), u64>,
}

impl HubInner {
    /// The event queues of the nodes subscribed to `topic`.
    fn targets(&self, topic: &Topic) -> Vec<mpsc::Sender<Event>> {
        self.subscribers
            .get(topic)
            .map(|subs| subs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The event queues of the nodes subscribed to any of `topics`, each
    /// node once.
    fn targets_of_nodes(&self, topics: &[Topic]) -> Vec<mpsc::Sender<Event>> {
        let mut sent = HashSet::new();
        let mut out = Vec::new();
        for topic in topics {
            if let Some(subs) = self.subscribers.get(topic) {
                for (node, tx) in subs.iter() {
                    if sent.insert(node.clone()) {
                        out.push(tx.clone());
                    }
                }
            }
        }
        out
    }

    /// The gate of a room (created with the room).
    fn gate(&self, room: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.rooms
            .entry(room.to_owned())
            .or_insert_with(RoomState::fresh)
            .gate
            .clone()
    }
}

/// Pushes an event into each queue, in order; waits while one is full.
async fn emit(targets: Vec<mpsc::Sender<Event>>, event: Event) {
    for tx in targets {
        let _ = tx.send(event.clone()).await;
    }
}

/// Shared in-memory state of a single-process "cluster".
#[derive(Clone, Default)]
pub struct MemoryHub {
    inner: Arc<HubInner>,
}

impl MemoryHub {
    /// A new, empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backplane handle for a node with the given id.
    pub fn node(&self, node_id: impl Into<String>) -> MemoryBackplane {
        let node_id = node_id.into();
        let (tx, rx) = mpsc::channel(super::EVENT_QUEUE);
        self.inner.nodes.insert(node_id.clone(), ());
        MemoryBackplane {
            hub: self.inner.clone(),
            node_id,
            events_tx: Mutex::new(Some(tx)),
            events_rx: Mutex::new(Some(rx)),
        }
    }
}

/// One node's handle on a [`MemoryHub`].
pub struct MemoryBackplane {
    hub: Arc<HubInner>,
    node_id: String,
    /// Taken on shutdown, which ends the node's event stream once the hub
    /// dropped its copies too.
    events_tx: Mutex<Option<mpsc::Sender<Event>>>,
    events_rx: Mutex<Option<EventStream>>,
}

impl MemoryBackplane {
    /// A standalone single-node backplane (its own hub).
    pub fn standalone(node_id: impl Into<String>) -> Self {
        MemoryHub::new().node(node_id)
    }
}

#[async_trait]
impl Broker for MemoryBackplane {
    fn take_events(&self) -> Option<EventStream> {
        self.events_rx.lock().ok()?.take()
    }

    fn subscribe(&self, topic: Topic) -> oneshot::Receiver<Result<()>> {
        let (tx, rx) = oneshot::channel();
        let events = self.events_tx.lock().ok().and_then(|t| t.clone());
        let _ = tx.send(match events {
            Some(events) => {
                self.hub
                    .subscribers
                    .entry(topic)
                    .or_default()
                    .insert(self.node_id.clone(), events);
                Ok(())
            }
            None => Err(super::BackplaneError::Unavailable("shut down".into())),
        });
        rx
    }

    fn unsubscribe(&self, topic: Topic) {
        self.hub.subscribers.remove_if_mut(&topic, |_, subs| {
            subs.remove(&self.node_id);
            subs.is_empty()
        });
    }

    async fn publish(&self, req: PublishRequest) -> Result<Published> {
        let gate = self.hub.gate(&req.room);
        let _gate = gate.lock().await;
        let (event, targets, id, ts) = {
            let mut room = self
                .hub
                .rooms
                .entry(req.room.clone())
                .or_insert_with(RoomState::fresh);
            let now = Instant::now();
            while let Some((at, _)) = room.client_id_order.front() {
                if now.duration_since(*at) < CLIENT_ID_TTL {
                    break;
                }
                if let Some((_, key)) = room.client_id_order.pop_front() {
                    room.client_ids.remove(&key);
                }
            }
            let key = req
                .client_id
                .as_ref()
                .map(|c| (req.from.clone(), c.clone()));
            if let Some(key) = &key {
                if let Some(&(id, ts)) = room.client_ids.get(key) {
                    return Ok(Published {
                        id,
                        ts,
                        duplicate: true,
                    });
                }
            }
            room.last_id += 1;
            let message = ChatMessage {
                room: req.room.clone(),
                id: room.last_id,
                from: req.from,
                text: req.text,
                ts: now_ms(),
            };
            let (id, ts) = (message.id, message.ts);
            if let Some(key) = key {
                room.client_ids.insert(key.clone(), (id, ts));
                room.client_id_order.push_back((now, key));
            }
            room.history.push_back(message.clone());
            while room.history.len() > HISTORY_LEN {
                room.history.pop_front();
            }
            let event = Event::Message {
                message,
                epoch: room.epoch.clone(),
                origin: req.origin,
                traceparent: req.traceparent,
            };
            (
                event,
                self.hub.targets(&Topic::Room(req.room.clone())),
                id,
                ts,
            )
        };
        emit(targets, event).await;
        Ok(Published {
            id,
            ts,
            duplicate: false,
        })
    }

    async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>> {
        Ok(match self.hub.rooms.get_mut(room) {
            Some(mut room) => page(room.history.make_contiguous(), before, limit),
            None => Vec::new(),
        })
    }

    async fn typing(&self, room: &str, user: &str, active: bool, origin: Origin) -> Result<()> {
        let gate = self.hub.gate(room);
        let _gate = gate.lock().await;
        emit(
            self.hub.targets(&Topic::Room(room.to_owned())),
            Event::Typing {
                room: room.to_owned(),
                user: user.to_owned(),
                active,
                origin: Some(origin),
            },
        )
        .await;
        Ok(())
    }

    async fn direct(
        &self,
        from: &str,
        to: &str,
        text: &str,
        origin: Origin,
    ) -> Result<DirectOutcome> {
        let to_topic = Topic::User(to.to_owned());
        if !self.hub.subscribers.contains_key(&to_topic) {
            return Ok(DirectOutcome::Offline);
        }
        let _gate = self.hub.direct_gate.lock().await;
        let id = self.hub.direct_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let ts = now_ms();
        emit(
            self.hub
                .targets_of_nodes(&[to_topic, Topic::User(from.to_owned())]),
            Event::Direct {
                message: DirectMessage {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    text: text.to_owned(),
                    ts,
                    id,
                },
                origin: Some(origin),
            },
        )
        .await;
        Ok(DirectOutcome::Delivered { id, ts })
    }
}

#[async_trait]
impl Presence for MemoryBackplane {
    async fn join(
        &self,
        room_name: &str,
        user: &str,
        add_presence: bool,
        origin: Option<Origin>,
    ) -> Result<RoomSnapshot> {
        let gate = self.hub.gate(room_name);
        let _gate = gate.lock().await;
        let (snapshot, joined) = {
            let mut room = self
                .hub
                .rooms
                .entry(room_name.to_owned())
                .or_insert_with(RoomState::fresh);
            let mut joined = None;
            if add_presence {
                let nodes = room.presence.entry(user.to_owned()).or_default();
                let first = nodes.is_empty();
                nodes.insert(self.node_id.clone());
                if first {
                    joined = Some(Event::UserJoined {
                        room: room_name.to_owned(),
                        user: user.to_owned(),
                        ts: now_ms(),
                        origin,
                    });
                }
            }
            let snapshot = RoomSnapshot {
                epoch: room.epoch.clone(),
                last_id: room.last_id,
                messages: room.history.iter().cloned().collect(),
                presence: room.presence.keys().cloned().collect(),
            };
            (snapshot, joined)
        };
        if let Some(event) = joined {
            emit(self.hub.targets(&Topic::Room(room_name.to_owned())), event).await;
        }
        Ok(snapshot)
    }

    async fn leave(&self, room_name: &str, user: &str, reason: LeaveReason) -> Result<()> {
        let Some(gate) = self.hub.rooms.get(room_name).map(|r| r.gate.clone()) else {
            return Ok(());
        };
        let _gate = gate.lock().await;
        let last = {
            let Some(mut room) = self.hub.rooms.get_mut(room_name) else {
                return Ok(());
            };
            let Some(nodes) = room.presence.get_mut(user) else {
                return Ok(());
            };
            let last = nodes.remove(&self.node_id) && nodes.is_empty();
            if last {
                room.presence.remove(user);
            }
            last
        };
        if last {
            emit(
                self.hub.targets(&Topic::Room(room_name.to_owned())),
                Event::UserLeft {
                    room: room_name.to_owned(),
                    user: user.to_owned(),
                    ts: now_ms(),
                    reason,
                },
            )
            .await;
        }
        Ok(())
    }

    async fn presence(&self, room: &str) -> Result<Vec<String>> {
        Ok(self
            .hub
            .rooms
            .get(room)
            .map(|r| r.presence.keys().cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl Names for MemoryBackplane {
    async fn claim_name(&self, name: &str, resume: Option<&str>) -> Result<Claim> {
        let mut names = self
            .hub
            .names
            .lock()
            .map_err(|_| super::BackplaneError::Internal("poisoned".into()))?;
        match names.get_mut(name) {
            Some(claim) if !claim.nodes.is_empty() => {
                if resume == Some(claim.token.as_str()) {
                    claim.nodes.insert(self.node_id.clone());
                    Ok(Claim::Granted {
                        token: claim.token.clone(),
                    })
                } else {
                    Ok(Claim::Taken)
                }
            }
            _ => {
                let token = random_token();
                names.insert(
                    name.to_owned(),
                    NameClaim {
                        token: token.clone(),
                        nodes: HashSet::from([self.node_id.clone()]),
                    },
                );
                Ok(Claim::Granted { token })
            }
        }
    }

    async fn release_name(&self, name: &str) -> Result<()> {
        if let Ok(mut names) = self.hub.names.lock() {
            if let Some(claim) = names.get_mut(name) {
                claim.nodes.remove(&self.node_id);
                if claim.nodes.is_empty() {
                    names.remove(name);
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Accounts for MemoryBackplane {
    async fn create_account(&self, name: &str, password_hash: &str) -> Result<bool> {
        use dashmap::mapref::entry::Entry;
        Ok(match self.hub.accounts.entry(name.to_owned()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(password_hash.to_owned());
                true
            }
        })
    }

    async fn account_hash(&self, name: &str) -> Result<Option<String>> {
        Ok(self.hub.accounts.get(name).map(|h| h.clone()))
    }
}

#[async_trait]
impl Liveness for MemoryBackplane {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn ready(&self) -> bool {
        true
    }

    async fn nodes(&self) -> Result<Vec<String>> {
        let mut nodes: Vec<String> = self.hub.nodes.iter().map(|e| e.key().clone()).collect();
        nodes.sort();
        Ok(nodes)
    }

    async fn shutdown(&self) {
        if let Ok(mut tx) = self.events_tx.lock() {
            tx.take();
        }
        self.hub.nodes.remove(&self.node_id);
        self.hub.subscribers.retain(|_, subs| {
            subs.remove(&self.node_id);
            !subs.is_empty()
        });
    }
}

#[async_trait]
impl Revocations for MemoryBackplane {
    async fn revoke_user(&self, user: &str, at_ms: u64, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        self.hub.revoked_users.retain(|_, (_, until)| *until > now);
        self.hub
            .revoked_users
            .insert(user.to_owned(), (at_ms, now + ttl));
        emit(
            self.hub.targets(&Topic::User(user.to_owned())),
            Event::Revoked {
                user: user.to_owned(),
                at_ms: Some(at_ms),
                jti: None,
            },
        )
        .await;
        Ok(())
    }

    async fn revoke_token(&self, user: &str, jti: &str, until_ms: u64) -> Result<()> {
        let now = now_ms();
        self.hub.revoked_tokens.retain(|_, until| *until > now);
        self.hub
            .revoked_tokens
            .insert((user.to_owned(), jti.to_owned()), until_ms);
        emit(
            self.hub.targets(&Topic::User(user.to_owned())),
            Event::Revoked {
                user: user.to_owned(),
                at_ms: None,
                jti: Some(jti.to_owned()),
            },
        )
        .await;
        Ok(())
    }

    async fn revocation(&self, user: &str, jti: Option<&str>) -> Result<Revocation> {
        let user_at_ms = self
            .hub
            .revoked_users
            .get(user)
            .filter(|e| e.1 > Instant::now())
            .map(|e| e.0);
        let token_revoked = jti.is_some_and(|j| {
            self.hub
                .revoked_tokens
                .get(&(user.to_owned(), j.to_owned()))
                .is_some_and(|until| *until > now_ms())
        });
        Ok(Revocation {
            user_at_ms,
            token_revoked,
        })
    }
}
