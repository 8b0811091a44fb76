//! Frame scanning on the hot path: a `message` frame's fields read straight
//! from the bytes (JSON) or borrowed (MessagePack) without building a
//! `ServerFrame`, and the latency stamp of a message's text.

use std::borrow::Cow;

use relay::protocol::Encoding;

/// The fields of a `message` frame that the load test needs, borrowed from
/// the frame. This is the hot path (one per delivery): it skips the
/// internally tagged `ServerFrame` enum, whose derive buffers every frame
/// into an owned tree first (~30% of the client's CPU at 1M deliveries/s).
/// Anything that is not a well-formed `message` goes through
/// `relay::protocol::decode_server_frame`; the tests check both agree.
#[derive(serde::Deserialize)]
pub(crate) struct FastFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    ts: Option<u64>,
}

pub(crate) struct FastMessage<'a> {
    pub(crate) room: Cow<'a, str>,
    pub(crate) id: u64,
    pub(crate) text: Cow<'a, str>,
}

/// The exact bytes relay's JSON encoder writes for a `message` frame
/// (`{"type":"message","room":R,"id":N,"from":F,"text":T,"ts":N}`), scanned
/// without a parser. Any deviation (another field order, an escape in a
/// string, ...) returns None and the frame takes the serde paths.
pub(crate) fn scan_json_message(b: &[u8]) -> Option<FastMessage<'_>> {
    fn string(b: &[u8]) -> Option<(&str, &[u8])> {
        let end = b.iter().position(|&c| c == b'"' || c == b'\\')?;
        if b[end] != b'"' {
            return None;
        }
        Some((std::str::from_utf8(&b[..end]).ok()?, &b[end + 1..]))
    }
    fn number(b: &[u8]) -> Option<(u64, &[u8])> {
        let end = b
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(b.len());
        if end == 0 || end > 19 {
            return None;
        }
        let mut n = 0u64;
        for &c in &b[..end] {
            n = n * 10 + u64::from(c - b'0');
        }
        Some((n, &b[end..]))
    }
    let b = b.strip_prefix(b"{\"type\":\"message\",\"room\":\"")?;
    let (room, b) = string(b)?;
    let b = b.strip_prefix(b",\"id\":")?;
    let (id, b) = number(b)?;
    let b = b.strip_prefix(b",\"from\":\"")?;
    let (_from, b) = string(b)?;
    let b = b.strip_prefix(b",\"text\":\"")?;
    let (text, b) = string(b)?;
    let b = b.strip_prefix(b",\"ts\":")?;
    let (_ts, b) = number(b)?;
    if b != b"}" {
        return None;
    }
    Some(FastMessage {
        room: Cow::Borrowed(room),
        id,
        text: Cow::Borrowed(text),
    })
}

pub(crate) fn fast_message(bytes: &[u8], enc: Encoding) -> Option<FastMessage<'_>> {
    if enc == Encoding::Json {
        if let Some(m) = scan_json_message(bytes) {
            return Some(m);
        }
    }
    let f: FastFrame<'_> = match enc {
        Encoding::Json => serde_json::from_slice(bytes).ok()?,
        Encoding::MsgPack => rmp_serde::from_slice(bytes).ok()?,
    };
    if f.kind != "message" || f.from.is_none() || f.ts.is_none() {
        return None;
    }
    Some(FastMessage {
        room: f.room?,
        id: f.id?,
        text: f.text?,
    })
}

/// Which node delivered a message, relative to the sender's. With Redis
/// both kinds go through Redis pub/sub (the sender's node receives its
/// own publication back); a cross-node delivery was made by another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Delivered by the node that holds the sender's connection.
    SameNode,
    /// Delivered by another node than the sender's.
    CrossNode,
    /// The text did not say (another sender than loadtest).
    Unknown,
}

/// The latency (µs) of a text sent as `t=<unix ns> n=<node> ...`, and the
/// sender's node when the text names it.
pub(crate) fn latency_us(text: &str, now: u64) -> Option<(u64, Option<&str>)> {
    let digits = text.strip_prefix("t=")?;
    let end = digits.find(' ').unwrap_or(digits.len());
    let sent: u64 = digits[..end].parse().ok()?;
    let node = digits[end..]
        .strip_prefix(" n=")
        .map(|rest| &rest[..rest.find(' ').unwrap_or(rest.len())]);
    Some((now.saturating_sub(sent) / 1000, node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::protocol::{
        decode_server_frame, encode, ChatMessage, Encoding, HistoryEntry, Ref, ServerFrame,
    };

    #[test]
    fn fast_path_agrees_with_the_protocol_decoder() {
        let msg = ChatMessage {
            room: "lobby".into(),
            id: 42,
            from: "alice".into(),
            text: "t=123 s=1 c=2 \"quoted\" é".into(),
            ts: 7,
        };
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let bytes = encode(&ServerFrame::Message(msg.clone()), enc);
            let fast = fast_message(&bytes, enc).expect("fast path");
            let Ok(ServerFrame::Message(slow)) = decode_server_frame(&bytes, enc) else {
                panic!("not a message");
            };
            assert_eq!(
                (fast.room.as_ref(), fast.id, fast.text.as_ref()),
                (slow.room.as_str(), slow.id, slow.text.as_str())
            );
            for other in [
                ServerFrame::Ack {
                    id: 1,
                    ts: 2,
                    room: Some("lobby".into()),
                    reference: Some(Ref::Int(3)),
                },
                ServerFrame::Joined {
                    room: "lobby".into(),
                    epoch: "e".into(),
                    presence: vec!["a".into()],
                    history: vec![HistoryEntry::from(msg.clone())],
                    recovered: false,
                    reference: None,
                },
                ServerFrame::Direct {
                    from: "a".into(),
                    to: "b".into(),
                    text: "x".into(),
                    ts: 1,
                    id: 2,
                },
                ServerFrame::Pong { reference: None },
            ] {
                assert!(
                    fast_message(&encode(&other, enc), enc).is_none(),
                    "{other:?}"
                );
            }
        }
    }

    #[test]
    fn latency_parses_the_stamp() {
        assert_eq!(latency_us("t=5000 s=1", 7000), Some((2, None)));
        assert_eq!(
            latency_us("t=5000 n=node2 s=1 c=3", 9000),
            Some((4, Some("node2")))
        );
        assert_eq!(latency_us("t=5000 n=", 9000), Some((4, Some(""))));
        assert_eq!(latency_us("hello", 9000), None);
        assert_eq!(latency_us("hello", 7000), None);
    }
}
