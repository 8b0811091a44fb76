//! In-memory backplane: the embedded default. One [`MemoryHub`] holds the
//! shared state; each [`MemoryBackplane`] handle is one node on it. It is
//! single-process only: nodes in other processes cannot see it. Several
//! handles on one hub behave like nodes of a cluster, which the contract
//! tests use.
//!
//! Locks are `std::sync::Mutex`/`DashMap` shards: nothing awaits while
//! holding them, and events are pushed into unbounded channels under the
//! room's lock so that every node sees a room's events in id order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use super::{
    now_ms, page, random_token, Backplane, Claim, DirectMessage, DirectOutcome, Event, EventStream,
    Origin, PublishRequest, Published, Result, RoomSnapshot, Topic,
};
use crate::protocol::{ChatMessage, LeaveReason, HISTORY_LEN};

/// How long a `client_id` is remembered for idempotent sends.
pub const CLIENT_ID_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
struct RoomState {
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
    subscribers: DashMap<Topic, HashMap<String, mpsc::UnboundedSender<Event>>>,
    names: Mutex<HashMap<String, NameClaim>>,
    accounts: DashMap<String, String>,
    nodes: DashMap<String, ()>,
    direct_seq: AtomicU64,
}

impl HubInner {
    fn emit(&self, topic: &Topic, event: &Event) {
        if let Some(subs) = self.subscribers.get(topic) {
            for tx in subs.values() {
                let _ = tx.send(event.clone());
            }
        }
    }

    fn emit_to_nodes(&self, topics: &[Topic], event: &Event) {
        let mut sent = HashSet::new();
        for topic in topics {
            if let Some(subs) = self.subscribers.get(topic) {
                for (node, tx) in subs.iter() {
                    if sent.insert(node.clone()) {
                        let _ = tx.send(event.clone());
                    }
                }
            }
        }
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
        let (tx, rx) = mpsc::unbounded_channel();
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
    events_tx: Mutex<Option<mpsc::UnboundedSender<Event>>>,
    events_rx: Mutex<Option<EventStream>>,
}

impl MemoryBackplane {
    /// A standalone single-node backplane (its own hub).
    pub fn standalone(node_id: impl Into<String>) -> Self {
        MemoryHub::new().node(node_id)
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    fn node_id(&self) -> &str {
        &self.node_id
    }

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
        self.hub.emit(
            &Topic::Room(req.room),
            &Event::Message {
                message,
                epoch: room.epoch.clone(),
                origin: req.origin,
                traceparent: req.traceparent,
            },
        );
        Ok(Published {
            id,
            ts,
            duplicate: false,
        })
    }

    async fn join(
        &self,
        room_name: &str,
        user: &str,
        add_presence: bool,
        origin: Option<Origin>,
    ) -> Result<RoomSnapshot> {
        let mut room = self
            .hub
            .rooms
            .entry(room_name.to_owned())
            .or_insert_with(RoomState::fresh);
        if add_presence {
            let nodes = room.presence.entry(user.to_owned()).or_default();
            let first = nodes.is_empty();
            nodes.insert(self.node_id.clone());
            if first {
                self.hub.emit(
                    &Topic::Room(room_name.to_owned()),
                    &Event::UserJoined {
                        room: room_name.to_owned(),
                        user: user.to_owned(),
                        ts: now_ms(),
                        origin,
                    },
                );
            }
        }
        Ok(RoomSnapshot {
            epoch: room.epoch.clone(),
            last_id: room.last_id,
            messages: room.history.iter().cloned().collect(),
            presence: room.presence.keys().cloned().collect(),
        })
    }

    async fn leave(&self, room_name: &str, user: &str, reason: LeaveReason) -> Result<()> {
        let Some(mut room) = self.hub.rooms.get_mut(room_name) else {
            return Ok(());
        };
        let Some(nodes) = room.presence.get_mut(user) else {
            return Ok(());
        };
        if nodes.remove(&self.node_id) && nodes.is_empty() {
            room.presence.remove(user);
            self.hub.emit(
                &Topic::Room(room_name.to_owned()),
                &Event::UserLeft {
                    room: room_name.to_owned(),
                    user: user.to_owned(),
                    ts: now_ms(),
                    reason,
                },
            );
        }
        Ok(())
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

    async fn presence(&self, room: &str) -> Result<Vec<String>> {
        Ok(self
            .hub
            .rooms
            .get(room)
            .map(|r| r.presence.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn typing(&self, room: &str, user: &str, active: bool, origin: Origin) -> Result<()> {
        self.hub.emit(
            &Topic::Room(room.to_owned()),
            &Event::Typing {
                room: room.to_owned(),
                user: user.to_owned(),
                active,
                origin: Some(origin),
            },
        );
        Ok(())
    }

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
        let id = self.hub.direct_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let ts = now_ms();
        self.hub.emit_to_nodes(
            &[to_topic, Topic::User(from.to_owned())],
            &Event::Direct {
                message: DirectMessage {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    text: text.to_owned(),
                    ts,
                    id,
                },
                origin: Some(origin),
            },
        );
        Ok(DirectOutcome::Delivered { id, ts })
    }

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
