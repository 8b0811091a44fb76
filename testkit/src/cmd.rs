//! Short constructors of typed `relay::protocol::Command`s for tests:
//! `client.request(cmd::send("lobby", "hi"))`.

use relay::protocol::{Command, HISTORY_LEN};

/// `join ROOM`.
pub fn join(room: &str) -> Command {
    Command::Join {
        room: room.into(),
        since: None,
        epoch: None,
    }
}

/// `join ROOM since ID epoch E` (recovery).
pub fn join_since(room: &str, since: u64, epoch: &str) -> Command {
    Command::Join {
        room: room.into(),
        since: Some(since),
        epoch: Some(epoch.into()),
    }
}

/// `leave ROOM`.
pub fn leave(room: &str) -> Command {
    Command::Leave { room: room.into() }
}

/// `send ROOM TEXT`.
pub fn send(room: &str, text: &str) -> Command {
    Command::Send {
        room: room.into(),
        text: text.into(),
        client_id: None,
    }
}

/// `send ROOM TEXT` with an idempotency key.
pub fn send_once(room: &str, text: &str, client_id: &str) -> Command {
    Command::Send {
        room: room.into(),
        text: text.into(),
        client_id: Some(client_id.into()),
    }
}

/// `dm TO TEXT`.
pub fn dm(to: &str, text: &str) -> Command {
    Command::Dm {
        to: to.into(),
        text: text.into(),
    }
}

/// `typing ROOM ACTIVE`.
pub fn typing(room: &str, active: bool) -> Command {
    Command::Typing {
        room: room.into(),
        active,
    }
}

/// `who ROOM`.
pub fn who(room: &str) -> Command {
    Command::Who { room: room.into() }
}

/// `history ROOM` (the default page: the newest 50).
pub fn history(room: &str) -> Command {
    history_page(room, None, HISTORY_LEN)
}

/// `history ROOM before B limit L`.
pub fn history_page(room: &str, before: Option<u64>, limit: usize) -> Command {
    Command::History {
        room: room.into(),
        before,
        limit,
    }
}

/// `ping`.
pub fn ping() -> Command {
    Command::Ping
}
