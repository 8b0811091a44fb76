//! Fan-out: one backplane event to the local sessions it concerns. Each
//! event is encoded at most once per encoding and every recipient's queue
//! gets a clone of the same bytes; the originating connection is skipped.
//! Nothing awaits here: the room's lock is held only to push into queues.

use std::sync::Arc;

use super::rooms::RING_LEN;
use super::{Node, SessionHandle};
use crate::backplane::{now_ms, Event, Origin};
use crate::outbound::{DisconnectReason, SharedFrame};
use crate::protocol::ServerFrame;

impl Node {
    /// Delivers one backplane event to local sessions.
    pub(super) fn dispatch(&self, event: Event) {
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
                if inner.joining > 0 {
                    // A join is in flight: keep the message for its replay.
                    if inner.ring_epoch.as_deref() != Some(epoch.as_str()) {
                        inner.ring.clear();
                        inner.ring_epoch = Some(Arc::from(epoch.as_str()));
                    }
                    if inner.ring.len() >= RING_LEN {
                        inner.ring.pop_front();
                    }
                    inner.ring.push_back((id, frame));
                }
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
            Event::Revoked { user, at_ms, jti } => {
                let Some(entry) = self.users.get(&user).map(|e| e.clone()) else {
                    return;
                };
                let Ok(sessions) = entry.sessions.lock() else {
                    return;
                };
                for s in sessions.values() {
                    let covered = s
                        .credential
                        .get()
                        .is_some_and(|c| c.revoked_by(at_ms, jti.as_deref()));
                    if covered {
                        s.queue.close(DisconnectReason::Revoked);
                    }
                }
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
}
