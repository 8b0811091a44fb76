//! Encoding and decoding of frames: JSON text frames and MessagePack binary
//! frames with named fields. Commands are decoded into a generic value first
//! so that a malformed frame (`bad_frame`) is told apart from a well-formed
//! frame with a bad field (`invalid`), and so both encodings share one
//! validation path.
//!
//! Over 600 lines only with its tests: the code is about 300 lines; the
//! tests, one per decoding rule and error code of both encodings, are the
//! other half.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::frames::{Command, CommandFrame, ErrorCode, Ref, ServerFrame};
use super::validate::{is_valid_name, validate_text, Limits, TextError};
use super::HISTORY_LEN;

/// The two wire encodings, chosen per connection by subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `relay.v1.json`: one JSON object per text frame.
    Json,
    /// `relay.v1.msgpack`: one MessagePack map per binary frame.
    MsgPack,
}

impl Encoding {
    /// Metric label / log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::MsgPack => "msgpack",
        }
    }

    /// The subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => super::SUBPROTOCOL_JSON,
            Encoding::MsgPack => super::SUBPROTOCOL_MSGPACK,
        }
    }
}

/// Why a frame could not become a command. Carries the `ref` when it could be
/// read, so the error reply can echo it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DecodeError {
    /// Error code for the client.
    pub code: ErrorCode,
    /// Explanation for the client.
    pub message: String,
    /// The command's ref, if readable.
    pub reference: Option<Ref>,
}

impl DecodeError {
    fn new(code: ErrorCode, message: impl Into<String>, reference: Option<Ref>) -> Self {
        DecodeError {
            code,
            message: message.into(),
            reference,
        }
    }
}

/// Serializes a server frame in the given encoding.
pub fn encode(frame: &ServerFrame, encoding: Encoding) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(frame, encoding, &mut out);
    out
}

/// Appends the encoding of `frame` to `out` (what [`encode`] returns).
pub fn encode_into(frame: &ServerFrame, encoding: Encoding, out: &mut Vec<u8>) {
    let start = out.len();
    // Serializing these plain data types cannot fail; if it did, nothing
    // half-written is left behind.
    let ok = match encoding {
        Encoding::Json => serde_json::to_writer(&mut *out, frame).is_ok(),
        Encoding::MsgPack => rmp_serde::encode::write_named(out, frame).is_ok(),
    };
    if !ok {
        out.truncate(start);
    }
}

impl CommandFrame<'_> {
    /// Serializes the command (with its `ref`) in the given encoding: what a
    /// client sends, and what [`decode_command`] reads back.
    pub fn encode(&self, encoding: Encoding) -> Vec<u8> {
        match encoding {
            // Plain data with string keys: serializing cannot fail.
            Encoding::Json => serde_json::to_vec(self).unwrap_or_default(),
            Encoding::MsgPack => rmp_serde::to_vec_named(self).unwrap_or_default(),
        }
    }
}

/// Decodes a server frame (used by clients: tests, the terminal chat, the
/// load test).
pub fn decode_server_frame(bytes: &[u8], encoding: Encoding) -> Result<ServerFrame, String> {
    decode_any::<ServerFrame>(bytes, encoding)
}

fn decode_any<T: DeserializeOwned>(bytes: &[u8], encoding: Encoding) -> Result<T, String> {
    match encoding {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Encoding::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// Decodes and validates one client frame.
pub fn decode_command(
    bytes: &[u8],
    encoding: Encoding,
    limits: &Limits,
) -> Result<(Command, Option<Ref>), DecodeError> {
    let value: Value = decode_any(bytes, encoding).map_err(|e| {
        DecodeError::new(
            ErrorCode::BadFrame,
            format!("frame is not valid {}: {e}", encoding.as_str()),
            None,
        )
    })?;
    let Value::Object(map) = value else {
        return Err(DecodeError::new(
            ErrorCode::BadFrame,
            "frame is not an object",
            None,
        ));
    };
    let reference = match map.get("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Ref::Str(s.clone())),
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().map(Ref::Int),
        Some(_) => {
            return Err(DecodeError::new(
                ErrorCode::Invalid,
                "`ref` must be a string or an integer",
                None,
            ))
        }
    };
    let fields = Fields {
        map: &map,
        reference: &reference,
    };
    let kind = match map.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(DecodeError::new(
                ErrorCode::BadFrame,
                "`type` must be a string",
                reference,
            ))
        }
        None => {
            return Err(DecodeError::new(
                ErrorCode::BadFrame,
                "frame has no `type`",
                reference,
            ))
        }
    };
    let command = match kind {
        "join" => {
            let since = fields.opt_u64("since")?;
            let epoch = fields.opt_str("epoch")?.map(str::to_owned);
            Command::Join {
                room: fields.name("room")?,
                since,
                epoch,
            }
        }
        "leave" => Command::Leave {
            room: fields.name("room")?,
        },
        "send" => {
            let room = fields.name("room")?;
            let text = fields.text(limits)?;
            let client_id = match fields.opt_str("client_id")? {
                None => None,
                Some(s) if !s.is_empty() && s.len() <= 64 => Some(s.to_owned()),
                Some(_) => return Err(fields.invalid("`client_id` must be 1..=64 bytes")),
            };
            Command::Send {
                room,
                text,
                client_id,
            }
        }
        "dm" => {
            let to = fields.name("to")?;
            Command::Dm {
                to,
                text: fields.text(limits)?,
            }
        }
        "typing" => {
            let room = fields.name("room")?;
            let active = match map.get("active") {
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(fields.invalid("`active` must be a boolean")),
                None => return Err(fields.invalid("missing field `active`")),
            };
            Command::Typing { room, active }
        }
        "who" => Command::Who {
            room: fields.name("room")?,
        },
        "history" => {
            let room = fields.name("room")?;
            let before = fields.opt_u64("before")?;
            let limit = match fields.opt_u64("limit")? {
                None => HISTORY_LEN,
                Some(n) if (1..=HISTORY_LEN as u64).contains(&n) => n as usize,
                Some(_) => return Err(fields.invalid("`limit` must be 1..=50")),
            };
            Command::History {
                room,
                before,
                limit,
            }
        }
        "ping" => Command::Ping,
        other => {
            return Err(DecodeError::new(
                ErrorCode::BadFrame,
                format!("unknown frame type `{}`", truncate(other, 32)),
                reference,
            ))
        }
    };
    Ok((command, reference))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

struct Fields<'a> {
    map: &'a Map<String, Value>,
    reference: &'a Option<Ref>,
}

impl Fields<'_> {
    fn invalid(&self, message: impl Into<String>) -> DecodeError {
        DecodeError::new(ErrorCode::Invalid, message, self.reference.clone())
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, DecodeError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(format!("`{key}` must be a string"))),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, DecodeError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.invalid(format!("`{key}` must be a non-negative integer"))),
            Some(_) => Err(self.invalid(format!("`{key}` must be a non-negative integer"))),
        }
    }

    fn name(&self, key: &str) -> Result<String, DecodeError> {
        match self.opt_str(key)? {
            None => Err(self.invalid(format!("missing field `{key}`"))),
            Some(s) if is_valid_name(s) => Ok(s.to_owned()),
            Some(_) => Err(self.invalid(format!(
                "`{key}` must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,31}}$"
            ))),
        }
    }

    fn text(&self, limits: &Limits) -> Result<String, DecodeError> {
        let raw = self
            .opt_str("text")?
            .ok_or_else(|| self.invalid("missing field `text`"))?;
        validate_text(raw, limits).map_err(|e| match e {
            TextError::Empty => self.invalid("`text` is empty"),
            TextError::Control => {
                self.invalid("`text` holds a control character other than newline and tab")
            }
            TextError::TooLong { max } => DecodeError::new(
                ErrorCode::TooLarge,
                format!("`text` is longer than {max} characters"),
                self.reference.clone(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChatMessage, HistoryEntry, LeaveReason};

    fn limits() -> Limits {
        Limits::default()
    }

    fn all_frames() -> Vec<ServerFrame> {
        let msg = ChatMessage {
            room: "lobby".into(),
            id: 7,
            from: "alice".into(),
            text: "héllo".into(),
            ts: 1_700_000_000_000,
        };
        vec![
            ServerFrame::Welcome {
                user: "a".into(),
                node: "n".into(),
                session: "s".into(),
                protocol: 1,
                resume: Some("r".into()),
                heartbeat_ms: 25_000,
            },
            ServerFrame::Joined {
                room: "lobby".into(),
                epoch: "e1".into(),
                presence: vec!["a".into(), "b".into()],
                history: vec![HistoryEntry::from(msg.clone())],
                recovered: true,
                reference: Some(Ref::Int(3)),
            },
            ServerFrame::Left {
                room: "lobby".into(),
                reference: Some(Ref::Str("x".into())),
            },
            ServerFrame::Ack {
                id: 1,
                ts: 2,
                room: Some("lobby".into()),
                reference: None,
            },
            ServerFrame::Message(msg.clone()),
            ServerFrame::Direct {
                from: "a".into(),
                to: "b".into(),
                text: "t".into(),
                ts: 1,
                id: 9,
            },
            ServerFrame::UserJoined {
                room: "r".into(),
                user: "u".into(),
                ts: 1,
            },
            ServerFrame::UserLeft {
                room: "r".into(),
                user: "u".into(),
                ts: 1,
                reason: LeaveReason::Timeout,
            },
            ServerFrame::Typing {
                room: "r".into(),
                user: "u".into(),
                active: true,
            },
            ServerFrame::Presence {
                room: "r".into(),
                users: vec!["u".into()],
                reference: None,
            },
            ServerFrame::History {
                room: "r".into(),
                messages: vec![msg.into()],
                reference: None,
            },
            ServerFrame::Pong { reference: None },
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                reference: Some(Ref::Int(-1)),
                retry_ms: Some(50),
            },
        ]
    }

    #[test]
    fn server_frames_round_trip_in_both_encodings() {
        for frame in all_frames() {
            for enc in [Encoding::Json, Encoding::MsgPack] {
                let bytes = encode(&frame, enc);
                let back = decode_server_frame(&bytes, enc).expect("decodes");
                assert_eq!(back, frame, "{enc:?}");
            }
        }
    }

    #[test]
    fn json_wire_shape_matches_protocol() {
        let v: Value = serde_json::from_slice(&encode(
            &ServerFrame::Message(ChatMessage {
                room: "r".into(),
                id: 1,
                from: "a".into(),
                text: "t".into(),
                ts: 5,
            }),
            Encoding::Json,
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","room":"r","id":1,"from":"a","text":"t","ts":5})
        );
        let v: Value = serde_json::from_slice(&encode(
            &ServerFrame::UserLeft {
                room: "r".into(),
                user: "u".into(),
                ts: 1,
                reason: LeaveReason::Disconnect,
            },
            Encoding::Json,
        ))
        .unwrap();
        assert_eq!(v["type"], "user_left");
        assert_eq!(v["reason"], "disconnect");
    }

    #[test]
    fn msgpack_frames_are_maps_with_named_fields() {
        let bytes = encode(&ServerFrame::Pong { reference: None }, Encoding::MsgPack);
        let v: rmpv::Value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let map = v.as_map().expect("a map");
        assert_eq!(map[0].0.as_str(), Some("type"));
        assert_eq!(map[0].1.as_str(), Some("pong"));
    }

    fn cmd(json: &str) -> Result<(Command, Option<Ref>), DecodeError> {
        decode_command(json.as_bytes(), Encoding::Json, &limits())
    }

    #[test]
    fn decodes_every_command() {
        assert_eq!(
            cmd(r#"{"type":"join","room":"lobby","since":4,"epoch":"e","ref":1}"#).unwrap(),
            (
                Command::Join {
                    room: "lobby".into(),
                    since: Some(4),
                    epoch: Some("e".into())
                },
                Some(Ref::Int(1))
            )
        );
        assert!(matches!(
            cmd(r#"{"type":"leave","room":"a"}"#).unwrap().0,
            Command::Leave { .. }
        ));
        assert_eq!(
            cmd(r#"{"type":"send","room":"a","text":"  hi  ","client_id":"c1"}"#)
                .unwrap()
                .0,
            Command::Send {
                room: "a".into(),
                text: "hi".into(),
                client_id: Some("c1".into())
            }
        );
        assert!(matches!(
            cmd(r#"{"type":"dm","to":"bob","text":"x"}"#).unwrap().0,
            Command::Dm { .. }
        ));
        assert_eq!(
            cmd(r#"{"type":"typing","room":"a","active":false}"#)
                .unwrap()
                .0,
            Command::Typing {
                room: "a".into(),
                active: false
            }
        );
        assert!(matches!(
            cmd(r#"{"type":"who","room":"a"}"#).unwrap().0,
            Command::Who { .. }
        ));
        assert_eq!(
            cmd(r#"{"type":"history","room":"a","before":10,"limit":5}"#)
                .unwrap()
                .0,
            Command::History {
                room: "a".into(),
                before: Some(10),
                limit: 5
            }
        );
        assert_eq!(
            cmd(r#"{"type":"history","room":"a"}"#).unwrap().0,
            Command::History {
                room: "a".into(),
                before: None,
                limit: 50
            }
        );
        assert_eq!(
            cmd(r#"{"type":"ping","ref":"p"}"#).unwrap(),
            (Command::Ping, Some(Ref::Str("p".into())))
        );
    }

    #[test]
    fn msgpack_commands_decode_like_json() {
        #[derive(serde::Serialize)]
        struct Send<'a> {
            r#type: &'a str,
            room: &'a str,
            text: &'a str,
            r#ref: u32,
        }
        let bytes = rmp_serde::to_vec_named(&Send {
            r#type: "send",
            room: "lobby",
            text: "hey",
            r#ref: 5,
        })
        .unwrap();
        let (c, r) = decode_command(&bytes, Encoding::MsgPack, &limits()).unwrap();
        assert_eq!(r, Some(Ref::Int(5)));
        assert!(matches!(c, Command::Send { .. }));
    }

    #[test]
    fn malformed_frames_are_bad_frame() {
        for bad in [
            "not json",
            "[1,2]",
            "42",
            r#"{"room":"a"}"#,
            r#"{"type":7}"#,
            r#"{"type":"explode"}"#,
        ] {
            assert_eq!(cmd(bad).unwrap_err().code, ErrorCode::BadFrame, "{bad}");
        }
        assert_eq!(
            decode_command(&[0xc1, 0xff], Encoding::MsgPack, &limits())
                .unwrap_err()
                .code,
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn bad_fields_are_invalid_and_keep_the_ref() {
        for bad in [
            r#"{"type":"join","ref":9}"#,
            r#"{"type":"join","room":"-bad","ref":9}"#,
            r#"{"type":"join","room":"a","since":-1,"ref":9}"#,
            r#"{"type":"send","room":"a","ref":9}"#,
            r#"{"type":"send","room":"a","text":"   ","ref":9}"#,
            r#"{"type":"send","room":"a","text":5,"ref":9}"#,
            r#"{"type":"typing","room":"a","ref":9}"#,
            r#"{"type":"typing","room":"a","active":"yes","ref":9}"#,
            r#"{"type":"history","room":"a","limit":0,"ref":9}"#,
            r#"{"type":"history","room":"a","limit":51,"ref":9}"#,
            r#"{"type":"dm","to":"a b","text":"x","ref":9}"#,
        ] {
            let e = cmd(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::Invalid, "{bad}");
            assert_eq!(e.reference, Some(Ref::Int(9)), "{bad}");
        }
        assert_eq!(
            cmd(r#"{"type":"ping","ref":[1]}"#).unwrap_err().code,
            ErrorCode::Invalid
        );
    }

    #[test]
    fn long_text_is_too_large() {
        let text = "x".repeat(4001);
        let e = cmd(&format!(r#"{{"type":"send","room":"a","text":"{text}"}}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        let ok = "é".repeat(4000);
        assert!(cmd(&format!(r#"{{"type":"send","room":"a","text":"{ok}"}}"#)).is_ok());
    }

    #[test]
    fn commands_round_trip_through_their_wire_form() {
        let commands = [
            Command::Join {
                room: "lobby".into(),
                since: Some(4),
                epoch: Some("e".into()),
            },
            Command::Join {
                room: "lobby".into(),
                since: None,
                epoch: None,
            },
            Command::Leave { room: "r".into() },
            Command::Send {
                room: "r".into(),
                text: "héllo".into(),
                client_id: Some("c-1".into()),
            },
            Command::Send {
                room: "r".into(),
                text: "x".into(),
                client_id: None,
            },
            Command::Dm {
                to: "bob".into(),
                text: "psst".into(),
            },
            Command::Typing {
                room: "r".into(),
                active: true,
            },
            Command::Who { room: "r".into() },
            Command::History {
                room: "r".into(),
                before: Some(30),
                limit: 5,
            },
            Command::History {
                room: "r".into(),
                before: None,
                limit: HISTORY_LEN,
            },
            Command::Ping,
        ];
        let refs = [None, Some(Ref::Int(7)), Some(Ref::Str("x".into()))];
        for command in &commands {
            for reference in &refs {
                for encoding in [Encoding::Json, Encoding::MsgPack] {
                    let frame = CommandFrame {
                        command,
                        reference: reference.as_ref(),
                    };
                    let bytes = frame.encode(encoding);
                    let decoded = decode_command(&bytes, encoding, &limits()).unwrap();
                    assert_eq!(&decoded.0, command, "{encoding:?}");
                    assert_eq!(&decoded.1, reference, "{encoding:?}");
                }
            }
        }
        // The exact wire JSON: `type` first, absent options left out.
        let ping = CommandFrame {
            command: &Command::Ping,
            reference: None,
        };
        assert_eq!(ping.encode(Encoding::Json), br#"{"type":"ping"}"#);
        let send = CommandFrame {
            command: &commands[4],
            reference: Some(&Ref::Int(1)),
        };
        assert_eq!(
            String::from_utf8(send.encode(Encoding::Json)).unwrap(),
            r#"{"type":"send","room":"r","text":"x","ref":1}"#
        );
    }
}
