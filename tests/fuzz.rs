//! Property tests (a fixed number of cases, so they run in CI): no input may
//! panic the frame decoder or the validators, every decode error maps to a
//! protocol error code, and accepted commands satisfy the validation rules.

use proptest::prelude::*;
use relay::protocol::{
    decode_command, decode_server_frame, encode, is_valid_name, validate_text, Command, Encoding,
    ErrorCode, Limits,
};
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON values, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames that look like commands: a known or unknown type with a random
/// mix of the protocol's fields.
fn command_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just("join"),
        Just("leave"),
        Just("send"),
        Just("dm"),
        Just("typing"),
        Just("who"),
        Just("history"),
        Just("ping"),
        Just("nope"),
    ];
    let field = prop_oneof![
        Just("room"),
        Just("text"),
        Just("to"),
        Just("since"),
        Just("epoch"),
        Just("before"),
        Just("limit"),
        Just("active"),
        Just("client_id"),
        Just("ref"),
    ];
    let value = prop_oneof![
        "[A-Za-z0-9][A-Za-z0-9_.-]{0,40}".prop_map(Value::String),
        ".{0,60}".prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
        any::<bool>().prop_map(Value::Bool),
        any_json(),
    ];
    (kind, prop::collection::vec((field, value), 0..8)).prop_map(|(kind, fields)| {
        let mut m = serde_json::Map::new();
        m.insert("type".into(), json!(kind));
        for (k, v) in fields {
            m.insert(k.into(), v);
        }
        Value::Object(m)
    })
}

fn check(bytes: &[u8], encoding: Encoding) {
    let limits = Limits {
        max_text_chars: 100,
    };
    match decode_command(bytes, encoding, &limits) {
        Ok((command, _)) => match command {
            Command::Send {
                room,
                text,
                client_id,
            } => {
                assert!(is_valid_name(&room));
                assert!(!text.is_empty() && text.chars().count() <= 100);
                assert_eq!(text, text.trim());
                assert!(client_id.is_none_or(|c| !c.is_empty() && c.len() <= 64));
            }
            Command::Dm { to, text } => {
                assert!(is_valid_name(&to));
                assert!(!text.is_empty() && text.chars().count() <= 100);
            }
            Command::History { room, limit, .. } => {
                assert!(is_valid_name(&room));
                assert!((1..=50).contains(&limit));
            }
            Command::Join { room, .. }
            | Command::Leave { room }
            | Command::Typing { room, .. }
            | Command::Who { room } => assert!(is_valid_name(&room)),
            Command::Ping => {}
        },
        Err(e) => {
            assert!(matches!(
                e.code,
                ErrorCode::BadFrame | ErrorCode::Invalid | ErrorCode::TooLarge
            ));
            assert!(!e.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes, Encoding::Json);
        check(&bytes, Encoding::MsgPack);
        let _ = decode_server_frame(&bytes, Encoding::Json);
        let _ = decode_server_frame(&bytes, Encoding::MsgPack);
    }

    #[test]
    fn random_json_values_never_panic(v in any_json()) {
        check(v.to_string().as_bytes(), Encoding::Json);
        check(&rmp_serde::to_vec_named(&v).unwrap(), Encoding::MsgPack);
    }

    #[test]
    fn command_like_frames_decode_the_same_in_both_encodings(v in command_like()) {
        let limits = Limits { max_text_chars: 100 };
        let json = decode_command(v.to_string().as_bytes(), Encoding::Json, &limits);
        let msgpack = decode_command(&rmp_serde::to_vec_named(&v).unwrap(), Encoding::MsgPack, &limits);
        check(v.to_string().as_bytes(), Encoding::Json);
        match (json, msgpack) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a.code, b.code),
            // f64 values that are whole numbers differ between encodings only
            // in representation; either way no panic happened.
            _ => {}
        }
    }

    #[test]
    fn validators_never_panic(s in ".{0,80}", max in 1usize..50) {
        let _ = is_valid_name(&s);
        if let Ok(t) = validate_text(&s, &Limits { max_text_chars: max }) {
            prop_assert!(!t.is_empty() && t.chars().count() <= max);
        }
    }

    #[test]
    fn message_frames_round_trip(room in "[a-z0-9]{1,32}", text in ".{1,200}", id in 1u64.., ts in any::<u64>()) {
        let frame = relay::protocol::ServerFrame::Message(relay::protocol::ChatMessage {
            room, id, from: "a".into(), text, ts,
        });
        for enc in [Encoding::Json, Encoding::MsgPack] {
            prop_assert_eq!(decode_server_frame(&encode(&frame, enc), enc).unwrap(), frame.clone());
        }
    }
}
