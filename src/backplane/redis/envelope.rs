//! The MessagePack envelope of everything published on Redis channels, and
//! the stored form of history entries. Scripts build both with Lua's
//! `cmsgpack` (maps with these field names); the node decodes them with
//! `rmp-serde`.
//!
//! Envelope `t` (kind) and its fields:
//!
//! | `t` | fields |
//! |---|---|
//! | `msg` | `room`, `id`, `from`, `text`, `ts`, `ep` (the room's epoch), optional `node`+`session` (origin), optional `tp` (W3C traceparent) |
//! | `joined` | `room`, `user`, `ts`, optional origin |
//! | `left` | `room`, `user`, `ts`, `reason` (`leave`, `disconnect`, `timeout`) |
//! | `typing` | `room`, `user`, `active`, origin |
//! | `dm` | `from`, `to`, `text`, `ts`, `id`, origin |
//! | `revoked` | `user`, optional `ts` (tokens issued at or before it), optional `jti` (one token) |

use serde::{Deserialize, Serialize};

use crate::backplane::{DirectMessage, Event, Origin};
use crate::protocol::{ChatMessage, LeaveReason};

/// One published event.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Envelope {
    /// Kind.
    pub(super) t: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) session: Option<u64>,
    /// The room's epoch (messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ep: Option<String>,
    /// W3C `traceparent` of the publisher (messages only, when it traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tp: Option<String>,
    /// A revoked token's id (`revoked` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) jti: Option<String>,
}

/// A history entry as stored in `P:{room}:history`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Stored {
    room: String,
    id: u64,
    from: String,
    text: String,
    ts: u64,
}

impl From<Stored> for ChatMessage {
    fn from(s: Stored) -> Self {
        ChatMessage {
            room: s.room,
            id: s.id,
            from: s.from,
            text: s.text,
            ts: s.ts,
        }
    }
}

/// Decodes one history entry.
pub(super) fn decode_stored(bytes: &[u8]) -> Option<ChatMessage> {
    rmp_serde::from_slice::<Stored>(bytes).ok().map(Into::into)
}

/// Encodes a typing indicator (the only event built on the node).
pub(super) fn typing(room: &str, user: &str, active: bool, origin: &Origin) -> Vec<u8> {
    let env = Envelope {
        t: "typing".into(),
        room: Some(room.to_owned()),
        user: Some(user.to_owned()),
        active: Some(active),
        node: Some(origin.node.clone()),
        session: Some(origin.session),
        ..Default::default()
    };
    rmp_serde::to_vec_named(&env).unwrap_or_default()
}

/// Encodes a revocation (built on the node).
pub(super) fn revoked(user: &str, at_ms: Option<u64>, jti: Option<&str>) -> Vec<u8> {
    let env = Envelope {
        t: "revoked".into(),
        user: Some(user.to_owned()),
        ts: at_ms,
        jti: jti.map(str::to_owned),
        ..Default::default()
    };
    rmp_serde::to_vec_named(&env).unwrap_or_default()
}

fn reason(s: &str) -> Option<LeaveReason> {
    match s {
        "leave" => Some(LeaveReason::Leave),
        "disconnect" => Some(LeaveReason::Disconnect),
        "timeout" => Some(LeaveReason::Timeout),
        _ => None,
    }
}

/// Decodes a published payload into an event; `None` for anything malformed.
pub(super) fn decode_event(bytes: &[u8]) -> Option<Event> {
    let e: Envelope = rmp_serde::from_slice(bytes).ok()?;
    let origin = match (e.node, e.session) {
        (Some(node), Some(session)) => Some(Origin { node, session }),
        _ => None,
    };
    Some(match e.t.as_str() {
        "msg" => Event::Message {
            message: ChatMessage {
                room: e.room?,
                id: e.id?,
                from: e.from?,
                text: e.text?,
                ts: e.ts?,
            },
            epoch: e.ep.unwrap_or_default(),
            origin,
            traceparent: e.tp,
        },
        "joined" => Event::UserJoined {
            room: e.room?,
            user: e.user?,
            ts: e.ts?,
            origin,
        },
        "left" => Event::UserLeft {
            room: e.room?,
            user: e.user?,
            ts: e.ts?,
            reason: reason(e.reason.as_deref()?)?,
        },
        "typing" => Event::Typing {
            room: e.room?,
            user: e.user?,
            active: e.active?,
            origin,
        },
        "dm" => Event::Direct {
            message: DirectMessage {
                from: e.from?,
                to: e.to?,
                text: e.text?,
                ts: e.ts?,
                id: e.id?,
            },
            origin,
        },
        "revoked" => Event::Revoked {
            user: e.user?,
            at_ms: e.ts,
            jti: e.jti,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_round_trip() {
        let origin = Origin {
            node: "n1".into(),
            session: 7,
        };
        let event = decode_event(&typing("lobby", "alice", true, &origin));
        assert_eq!(
            event,
            Some(Event::Typing {
                room: "lobby".into(),
                user: "alice".into(),
                active: true,
                origin: Some(origin),
            })
        );
    }

    #[test]
    fn message_carries_its_traceparent() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut env = Envelope {
            t: "msg".into(),
            room: Some("lobby".into()),
            id: Some(3),
            from: Some("alice".into()),
            text: Some("hi".into()),
            ts: Some(1),
            tp: Some(tp.into()),
            ..Default::default()
        };
        let bytes = rmp_serde::to_vec_named(&env).unwrap();
        assert!(matches!(
            decode_event(&bytes),
            Some(Event::Message { traceparent: Some(t), origin: None, .. }) if t == tp
        ));
        env.tp = None;
        let bytes = rmp_serde::to_vec_named(&env).unwrap();
        assert!(matches!(
            decode_event(&bytes),
            Some(Event::Message {
                traceparent: None,
                ..
            })
        ));
    }

    #[test]
    fn revocation_round_trip() {
        assert_eq!(
            decode_event(&revoked("alice", Some(5), None)),
            Some(Event::Revoked {
                user: "alice".into(),
                at_ms: Some(5),
                jti: None
            })
        );
        assert_eq!(
            decode_event(&revoked("bob", None, Some("j1"))),
            Some(Event::Revoked {
                user: "bob".into(),
                at_ms: None,
                jti: Some("j1".into())
            })
        );
    }

    #[test]
    fn malformed_is_none() {
        assert!(decode_event(b"\x01\x02").is_none());
        let env = Envelope {
            t: "msg".into(),
            ..Default::default()
        };
        assert!(decode_event(&rmp_serde::to_vec_named(&env).unwrap()).is_none());
    }
}
