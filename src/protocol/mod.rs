//! Wire protocol v1 (see `PROTOCOL.md`): frame types, the JSON and MessagePack
//! codecs and input validation. Nothing here knows about sockets or Redis.

mod codec;
mod frames;
mod validate;

pub use codec::{decode_command, decode_server_frame, encode, encode_into, DecodeError, Encoding};
pub use frames::*;
pub use validate::{is_valid_name, validate_text, Limits, TextError};

/// The protocol version announced in `welcome.protocol`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Subprotocol name of the JSON encoding (the default).
pub const SUBPROTOCOL_JSON: &str = "relay.v1.json";
/// Subprotocol name of the MessagePack encoding.
pub const SUBPROTOCOL_MSGPACK: &str = "relay.v1.msgpack";
/// How many messages every room keeps in its history.
pub const HISTORY_LEN: usize = 50;
