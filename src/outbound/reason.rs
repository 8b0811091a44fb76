//! Why a session ended: one enum, each reason with one close code and one
//! metric label.

/// The single reason a WebSocket session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client closed the connection (or the TCP stream ended).
    ClientClosed,
    /// The node is draining (shutdown or rolling update).
    Draining,
    /// Repeated abuse after `rate_limited`, or protocol abuse.
    Policy,
    /// A frame larger than `--max-frame-bytes`.
    FrameTooLarge,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// WebSocket protocol violation detected by the framing layer.
    ProtocolError,
    /// The outbound queue overflowed.
    SlowConsumer,
    /// The session's token expired.
    SessionExpired,
    /// The session's token was revoked (`/api/revoke`, `/api/logout`).
    Revoked,
    /// No sign of life for 2 × heartbeat.
    HeartbeatTimeout,
    /// Writing to the socket failed.
    WriteError,
    /// An unexpected server error.
    Internal,
}

impl DisconnectReason {
    /// The WebSocket close code sent for this reason.
    pub fn close_code(self) -> u16 {
        match self {
            DisconnectReason::ClientClosed => 1000,
            DisconnectReason::HeartbeatTimeout => 1000,
            DisconnectReason::Draining => 1001,
            DisconnectReason::ProtocolError => 1002,
            DisconnectReason::InvalidUtf8 => 1007,
            DisconnectReason::Policy => 1008,
            DisconnectReason::FrameTooLarge => 1009,
            DisconnectReason::Internal | DisconnectReason::WriteError => 1011,
            DisconnectReason::SlowConsumer => 4000,
            DisconnectReason::SessionExpired | DisconnectReason::Revoked => 4001,
        }
    }

    /// Metric label and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientClosed => "client_closed",
            DisconnectReason::Draining => "draining",
            DisconnectReason::Policy => "policy",
            DisconnectReason::FrameTooLarge => "frame_too_large",
            DisconnectReason::InvalidUtf8 => "invalid_utf8",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::SessionExpired => "session_expired",
            DisconnectReason::Revoked => "revoked",
            DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
            DisconnectReason::WriteError => "write_error",
            DisconnectReason::Internal => "internal",
        }
    }

    /// The close frame's reason text.
    pub fn close_text(self) -> &'static str {
        match self {
            DisconnectReason::ClientClosed => "bye",
            DisconnectReason::Draining => "node draining, reconnect",
            DisconnectReason::Policy => "policy violation",
            DisconnectReason::FrameTooLarge => "frame too large",
            DisconnectReason::InvalidUtf8 => "invalid utf-8",
            DisconnectReason::ProtocolError => "protocol error",
            DisconnectReason::SlowConsumer => "slow consumer",
            DisconnectReason::SessionExpired => "session expired",
            DisconnectReason::Revoked => "token revoked",
            DisconnectReason::HeartbeatTimeout => "heartbeat timeout",
            DisconnectReason::WriteError => "write error",
            DisconnectReason::Internal => "internal error",
        }
    }
}
