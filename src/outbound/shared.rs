//! Server frames encoded lazily, at most once per encoding, and shared by
//! reference between every local recipient (encode once, deliver many).

use std::sync::OnceLock;

use super::Frame;
use crate::protocol::{encode_into, Encoding, ServerFrame};

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

    /// The frame itself.
    pub fn frame(&self) -> &ServerFrame {
        &self.frame
    }
}

/// Encodes one server frame as a complete WebSocket frame: text for JSON
/// (serde_json writes UTF-8), binary for MessagePack.
pub fn to_wire(frame: &ServerFrame, encoding: Encoding) -> Frame {
    Frame::encoded(encoding == Encoding::Json, |out| {
        encode_into(frame, encoding, out)
    })
}
