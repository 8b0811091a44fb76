//! Rooms on this node and joining them without races: the node subscribes
//! a room's topic on its first local member and drops it with the last,
//! reads the room's snapshot, and registers each member with its join point
//! so that every message is seen exactly once (in `joined.history`, in the
//! replay from the room's ring of recent frames, or live). PROTOCOL §3
//! recovery ([`recover`]) lives here too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::{Node, NodeError, SessionHandle};
use crate::backplane::{BackplaneError, RoomSnapshot, Topic};
use crate::outbound::SharedFrame;
use crate::protocol::{ChatMessage, HistoryEntry, LeaveReason, Ref, ServerFrame};

/// How many recent messages a local room keeps to bridge the gap between a
/// joiner's history read and its registration as a member.
pub(super) const RING_LEN: usize = 256;

#[derive(Default)]
pub(super) struct RoomInner {
    /// Sessions joining or joined; the room is dropped when it reaches 0.
    pub(super) refs: usize,
    pub(super) members: HashMap<u64, Member>,
    /// Local connections per user (joining or joined).
    pub(super) user_counts: HashMap<String, usize>,
    /// Joins in flight (snapshot read, not yet registered). Only while one
    /// is, dispatched messages are kept in `ring`.
    pub(super) joining: usize,
    /// Messages dispatched while a join was in flight, for its replay; at
    /// most [`RING_LEN`], released when the last join in flight ends.
    pub(super) ring: VecDeque<(u64, Arc<SharedFrame>)>,
    /// The epoch of the ids in `ring` (a new epoch empties the ring).
    pub(super) ring_epoch: Option<Arc<str>>,
}

impl RoomInner {
    /// A join in flight ended: the last one releases the ring.
    fn join_done(&mut self) {
        self.joining = self.joining.saturating_sub(1);
        if self.joining == 0 {
            self.ring = VecDeque::new();
            self.ring_epoch = None;
        }
    }
}

/// A joined session and its join watermark.
pub(super) struct Member {
    pub(super) handle: Arc<SessionHandle>,
    /// Messages of this epoch with an id up to this one were in the `joined`
    /// snapshot: their events may still be on their way from the backplane
    /// and are skipped for this member. Cleared by the first newer message.
    pub(super) seen: Option<(Arc<str>, u64)>,
}

pub(super) struct LocalRoom {
    pub(super) inner: Mutex<RoomInner>,
    subscribed: OnceCell<Result<(), BackplaneError>>,
    pending: Mutex<Option<tokio::sync::oneshot::Receiver<crate::backplane::Result<()>>>>,
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

impl Node {
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
    /// session as a member. A repeated join only refreshes (a new `joined`).
    pub async fn join(
        &self,
        session: &Arc<SessionHandle>,
        room_name: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        reference: Option<Ref>,
    ) -> Result<(), NodeError> {
        let already_member = session.is_member(room_name);
        if !already_member && session.room_count() >= self.limits.max_rooms_per_conn {
            return Err(NodeError::TooManyRooms(self.limits.max_rooms_per_conn));
        }
        let room = if already_member {
            match self.rooms.get(room_name) {
                Some(r) => r.clone(),
                None => return Err(NodeError::Internal("room state missing".into())),
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
        match &result {
            Ok(()) if !already_member => {
                if let Ok(mut rooms) = session.rooms.lock() {
                    rooms.insert(room_name.to_owned());
                }
            }
            Err(_) if !already_member => self.room_unref(room_name),
            _ => {}
        }
        result.map_err(NodeError::from)
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
            // From here until registration, dispatched messages are kept
            // for this joiner's replay: any message not kept was stored
            // before the snapshot below is read, so the snapshot has it.
            inner.joining += 1;
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
                        inner.join_done();
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
            inner.join_done();
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
    ) -> Result<(), NodeError> {
        let joined = session
            .rooms
            .lock()
            .map(|mut r| r.remove(room_name))
            .unwrap_or(false);
        if !joined {
            return Ok(());
        }
        let Some(room) = self.rooms.get(room_name).map(|r| r.clone()) else {
            return Ok(());
        };
        let last_of_user = {
            let Ok(mut inner) = room.inner.lock() else {
                return Err(NodeError::Internal("poisoned".into()));
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
        result.map_err(NodeError::from)
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
