//! Typed frames of protocol v1: the commands a client sends and the events and
//! replies a server sends. Field names are the wire names.

use serde::{Deserialize, Serialize};

/// A client-chosen correlation value echoed in replies (`ref`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    /// An integer ref.
    Int(i64),
    /// A string ref.
    Str(String),
}

/// A validated client command. Serializes to its wire form (without `ref`;
/// see [`CommandFrame`]), so `decode_command(encode(cmd)) == cmd`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Join a room, optionally recovering from `since`/`epoch`.
    Join {
        /// Room name.
        room: String,
        /// Last message id the client saw.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// Epoch the client saw with `since`.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// Leave a room.
    Leave {
        /// Room name.
        room: String,
    },
    /// Publish a message into a room.
    Send {
        /// Room name.
        room: String,
        /// Trimmed message text.
        text: String,
        /// Idempotency key.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// Direct message to a user.
    Dm {
        /// Recipient user name.
        to: String,
        /// Trimmed message text.
        text: String,
    },
    /// Typing indicator.
    Typing {
        /// Room name.
        room: String,
        /// Whether the user is typing.
        active: bool,
    },
    /// Ask for the presence list of a room.
    Who {
        /// Room name.
        room: String,
    },
    /// Page through a room's history.
    History {
        /// Room name.
        room: String,
        /// Exclusive upper bound on ids.
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// Number of messages, 1..=50.
        limit: usize,
    },
    /// Application-level ping.
    Ping,
}

/// A command as sent on the wire: the command's fields, its `type` and an
/// optional `ref`. Serialize it with `serde_json` or `rmp_serde::to_vec_named`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CommandFrame<'a> {
    /// The command.
    #[serde(flatten)]
    pub command: &'a Command,
    /// The correlation value echoed in the reply.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a Ref>,
}

impl Command {
    /// The wire `type` of this command (also a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Send { .. } => "send",
            Command::Dm { .. } => "dm",
            Command::Typing { .. } => "typing",
            Command::Who { .. } => "who",
            Command::History { .. } => "history",
            Command::Ping => "ping",
        }
    }
}

/// One stored or delivered room message (`message` frame and history entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Room name.
    pub room: String,
    /// Per-room id, strictly increasing within an epoch.
    pub id: u64,
    /// Sender's user name.
    pub from: String,
    /// Message text.
    pub text: String,
    /// Server time, Unix milliseconds.
    pub ts: u64,
}

/// Why a user left a room (`user_left.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The user sent `leave`.
    Leave,
    /// The user's last connection closed.
    Disconnect,
    /// The user's node stopped heart-beating.
    Timeout,
}

impl LeaveReason {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Leave => "leave",
            LeaveReason::Disconnect => "disconnect",
            LeaveReason::Timeout => "timeout",
        }
    }
}

/// Client-visible error codes (PROTOCOL §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Frame not decodable, not an object, no or unknown `type`.
    BadFrame,
    /// A field is missing, of the wrong type, or fails validation.
    Invalid,
    /// Command needs membership of the room.
    NotMember,
    /// DM recipient has no connection.
    UserOffline,
    /// Token bucket empty; see `retry_ms`.
    RateLimited,
    /// Text longer than the limit.
    TooLarge,
    /// The backplane is down; the command was not applied.
    Unavailable,
    /// Unexpected server error.
    Internal,
    /// The user may not do this here (second edition, §9).
    Forbidden,
    /// The connection joined as many rooms as it may (§9).
    TooManyRooms,
    /// `create` of a room that was used before (§9).
    RoomExists,
    /// The target of the command does not exist (§9).
    NotFound,
}

impl ErrorCode {
    /// Wire name (also a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotMember => "not_member",
            ErrorCode::UserOffline => "user_offline",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::NotFound => "not_found",
        }
    }
}

/// A frame sent by the server. Serialized with a `type` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame of every connection.
    Welcome {
        /// The user's name.
        user: String,
        /// Node id.
        node: String,
        /// Session id, unique in the cluster.
        session: String,
        /// Protocol version (1).
        protocol: u32,
        /// Guest resume token (null in token mode).
        resume: Option<String>,
        /// Server ping interval.
        heartbeat_ms: u64,
    },
    /// Reply to `join`.
    Joined {
        /// Room name.
        room: String,
        /// Room epoch.
        epoch: String,
        /// User names in the room.
        presence: Vec<String>,
        /// Messages, oldest first.
        history: Vec<HistoryEntry>,
        /// Whether `history` holds exactly the missed messages.
        recovered: bool,
        /// Echo of the command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `leave`.
    Left {
        /// Room name.
        room: String,
        /// Echo of the command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `send` and `dm`.
    Ack {
        /// Message id.
        id: u64,
        /// Server time.
        ts: u64,
        /// Room (for `send`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Echo of the command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// A room message from another connection.
    Message(ChatMessage),
    /// A direct message.
    Direct {
        /// Sender.
        from: String,
        /// Recipient.
        to: String,
        /// Text.
        text: String,
        /// Server time.
        ts: u64,
        /// Id (equals the sender's `ack.id`).
        id: u64,
    },
    /// A user's first connection joined the room.
    UserJoined {
        /// Room name.
        room: String,
        /// User name.
        user: String,
        /// Server time.
        ts: u64,
    },
    /// A user's last connection left the room.
    UserLeft {
        /// Room name.
        room: String,
        /// User name.
        user: String,
        /// Server time.
        ts: u64,
        /// Why.
        reason: LeaveReason,
    },
    /// Typing indicator of another member.
    Typing {
        /// Room name.
        room: String,
        /// User name.
        user: String,
        /// Typing or stopped.
        active: bool,
    },
    /// Reply to `who`.
    Presence {
        /// Room name.
        room: String,
        /// User names.
        users: Vec<String>,
        /// Echo of the command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `history`.
    History {
        /// Room name.
        room: String,
        /// Messages, oldest first.
        messages: Vec<HistoryEntry>,
        /// Echo of the command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `ping`.
    Pong {
        /// Echo of the command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// A command failed.
    Error {
        /// Error code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// Echo of the failed command's ref.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// With `rate_limited`: when to retry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_ms: Option<u64>,
    },
}

impl ServerFrame {
    /// Convenience constructor of an `error` frame.
    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<Ref>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            reference,
            retry_ms: None,
        }
    }
}

/// A history entry: a `message` object with its `type` tag, so clients can
/// hand history entries and live messages to the same code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "message")]
pub struct HistoryEntry {
    /// The message.
    #[serde(flatten)]
    pub message: ChatMessage,
}

impl From<ChatMessage> for HistoryEntry {
    fn from(message: ChatMessage) -> Self {
        HistoryEntry { message }
    }
}
