//! `relay chat`: the terminal chat client, for people and for scripts.
//!
//! It connects to a node's `/ws` endpoint (`ws://` or `wss://`), joins a room,
//! sends every line read from stdin to the current room and prints the room's
//! events on stdout, one line each, flushed per line. Status notices
//! (`* reconnecting…`) go to stderr, so stdout stays a clean transcript.
//!
//! Layout:
//! - [`ChatArgs`] and [`run`] (this file): command line and the outer
//!   connect / reconnect loop with exponential backoff and full jitter;
//! - `connect`: URL, headers, TLS (rustls) and the handshake;
//! - `input`: the stdin reader thread, Ctrl-C, and the `/command` parser;
//! - `output`: the only place that writes the client's UI to stdout/stderr;
//! - `cursor`: per-room recovery state (epoch, last id seen, dedupe by id);
//! - `session`: the protocol state machine of one connection.

mod connect;
mod cursor;
mod input;
mod output;
mod session;

use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;

use crate::protocol::{is_valid_name, Encoding};

use connect::Target;
use input::Inputs;
use output::Ui;
use session::{Chat, End};

/// Exit code of a clean exit (EOF, `/quit`, Ctrl-C).
const EXIT_OK: i32 = 0;
/// Exit code of a failure: refused or impossible connection, session expired
/// (4001), policy close (1008), or sent lines the server never confirmed.
const EXIT_FAILURE: i32 = 1;
/// Exit code of a bad command line.
const EXIT_USAGE: i32 = 2;

/// First reconnect delay cap; doubles per failed attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Largest reconnect delay cap.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

const AFTER_HELP: &str = "\
Input (one line each):
  TEXT             send TEXT to the current room (a line starting with // sends
                   it with one slash removed)
  /dm USER TEXT    direct message to USER
  /join ROOM       join ROOM (if needed) and make it the current room
  /leave [ROOM]    leave ROOM (default: the current room)
  /who             list who is online in the current room
  /history [N]     print the last N (1..=50, default 50) messages of the room
  /quit            send pending lines, close and exit (as EOF does)
  /help            this list

Output (stdout, one line per event, flushed per line):
  User 'bob' joined the chat        bob: Hello everyone!
  User 'bob' left the chat          [dm] alice -> bob: text
  Online in lobby: alice, bob       ! error CODE: message
  * some messages may have been missed   (a reconnect could not recover them)
Events of a joined room that is not the current one are prefixed with [#ROOM].
With --timestamps every event line starts with the server time [HH:MM:SS]
(local time). Typing indicators are not printed. Your own messages are not
echoed (the line you typed is already on your screen); they appear in the
history on a later join. Status notices (* joined, * reconnecting…,
* reconnected) go to stderr.

Connection: the room is joined on connect. When the connection drops (also on
close 1001 draining and 4000 slow consumer) the client reconnects with
exponential backoff (0.5 s doubling to 10 s, full jitter), rejoins its rooms
recovering missed messages, and resends unconfirmed lines without duplicates.
It gives up on 4001 (session expired) and 1008 (policy violation).

Lines piped in before the connection is up wait for it (and for the join),
so `printf 'hi\n' | relay chat URL --user bot` delivers, and
`relay chat URL --user bot </dev/null` prints the room's history and exits.
Exit: EOF on stdin or /quit waits (up to ~2 s without progress) for the
server to confirm the lines sent and answer the commands, then closes
normally (1000) and exits 0;
Ctrl-C closes at once and exits 0. Exit 1: could not connect, refused,
session expired or policy close, or lines left unconfirmed; 2: bad arguments.";

/// Wire encoding offered to the server (`Sec-WebSocket-Protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChatEncoding {
    /// `relay.v1.json`: JSON text frames.
    Json,
    /// `relay.v1.msgpack`: MessagePack binary frames.
    Msgpack,
}

impl From<ChatEncoding> for Encoding {
    fn from(e: ChatEncoding) -> Self {
        match e {
            ChatEncoding::Json => Encoding::Json,
            ChatEncoding::Msgpack => Encoding::MsgPack,
        }
    }
}

/// Command line of `relay chat`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct ChatArgs {
    /// WebSocket URL of a relay node: ws://HOST:PORT/ws or wss://HOST/ws.
    pub url: String,

    /// Your user name (guest mode; sent as ?user=NAME). Not needed with --token.
    #[arg(long, short = 'u', required_unless_present = "token")]
    pub user: Option<String>,

    /// Room joined on connect; lines you type go to it.
    #[arg(long, short = 'r', default_value = "lobby")]
    pub room: String,

    /// Prefix every event line with the server time as `[HH:MM:SS]` (local time).
    #[arg(long)]
    pub timestamps: bool,

    /// Login token (token auth mode), sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "RELAY_CHAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Wire encoding.
    #[arg(long, value_enum, default_value = "json")]
    pub encoding: ChatEncoding,

    /// wss: trust only the CA certificate(s) in this PEM file (for example a
    /// self-signed server certificate) instead of the built-in web roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// wss: accept any server certificate without verification (testing only).
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure: bool,
}

/// Runs the chat client until EOF, `/quit`, Ctrl-C or a fatal close, and
/// returns the process exit code (see `relay chat --help`).
pub async fn run(args: ChatArgs) -> i32 {
    let ui = Ui::new(args.timestamps);
    if let Some(user) = &args.user {
        if !is_valid_name(user) {
            ui.fatal(&format!(
                "invalid user name {user:?}: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,31}}$"
            ));
            return EXIT_USAGE;
        }
    }
    if !is_valid_name(&args.room) {
        ui.fatal(&format!(
            "invalid room name {:?}: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,31}}$",
            args.room
        ));
        return EXIT_USAGE;
    }
    let target = match Target::new(&args) {
        Ok(t) => t,
        Err(e) => {
            ui.fatal(&e);
            return EXIT_USAGE;
        }
    };
    let mut inputs = Inputs::spawn();
    let user = args.user.clone().unwrap_or_default();
    let mut chat = Chat::new(ui, user, args.room.clone());

    let mut attempt: u32 = 0;
    let mut connected_once = false;
    loop {
        let user = chat.user().to_owned();
        let resume = chat.resume_token();
        let conn = match chat
            .connecting(&mut inputs, target.connect(&user, resume.as_deref()))
            .await
        {
            Err(end) => return finish(&chat, end),
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                if !connected_once || !e.retryable() {
                    return finish(&chat, End::Fatal(e.to_string()));
                }
                tracing::debug!(error = %e, attempt, "reconnect attempt failed");
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                if let Err(end) = chat.wait_offline(&mut inputs, delay).await {
                    return finish(&chat, end);
                }
                continue;
            }
        };
        attempt = 0;
        let reconnect = connected_once;
        connected_once = true;
        match chat.session(conn, &mut inputs, reconnect).await {
            End::Dropped(why) => {
                tracing::debug!(why, "connection dropped");
                chat.ui().notice("* reconnecting…");
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                if let Err(end) = chat.wait_offline(&mut inputs, delay).await {
                    return finish(&chat, end);
                }
            }
            end => return finish(&chat, end),
        }
    }
}

/// Reports how the client ended and maps it to an exit code.
fn finish(chat: &Chat, end: End) -> i32 {
    match end {
        End::Quit => {
            let lost = chat.unconfirmed();
            if lost == 0 {
                EXIT_OK
            } else {
                chat.ui()
                    .fatal(&format!("{lost} line(s) not confirmed by the server"));
                EXIT_FAILURE
            }
        }
        End::Interrupted => EXIT_OK,
        End::Fatal(message) => {
            chat.ui().fatal(&message);
            EXIT_FAILURE
        }
        // `run` reconnects instead; kept total for safety.
        End::Dropped(why) => {
            chat.ui().fatal(&format!("connection lost: {why}"));
            EXIT_FAILURE
        }
    }
}

/// The delay before reconnect attempt `attempt` (0-based): uniformly random
/// in `0..=min(10 s, 0.5 s × 2^attempt)` ("full jitter").
fn backoff(attempt: u32) -> Duration {
    let cap = backoff_cap(attempt);
    let ms = rand::rng().random_range(0..=cap.as_millis() as u64);
    Duration::from_millis(ms)
}

/// The upper bound of [`backoff`] for an attempt.
fn backoff_cap(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.min(16);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_ten() {
        assert_eq!(backoff_cap(0), Duration::from_millis(500));
        assert_eq!(backoff_cap(1), Duration::from_secs(1));
        assert_eq!(backoff_cap(2), Duration::from_secs(2));
        assert_eq!(backoff_cap(4), Duration::from_secs(8));
        assert_eq!(backoff_cap(5), Duration::from_secs(10));
        assert_eq!(backoff_cap(40), Duration::from_secs(10));
        for attempt in 0..8 {
            for _ in 0..50 {
                assert!(backoff(attempt) <= backoff_cap(attempt));
            }
        }
    }

    #[test]
    fn args_parse() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: ChatArgs,
        }
        let w = Wrap::try_parse_from(["chat", "ws://127.0.0.1:1/ws", "--user", "alice"]).unwrap();
        assert_eq!(w.args.room, "lobby");
        assert_eq!(w.args.encoding, ChatEncoding::Json);
        assert!(!w.args.timestamps);
        assert!(Wrap::try_parse_from(["chat", "ws://127.0.0.1:1/ws"]).is_err());
        let w = Wrap::try_parse_from([
            "chat",
            "wss://127.0.0.1:1/ws",
            "--token",
            "t",
            "--encoding",
            "msgpack",
            "--room",
            "dev",
            "--timestamps",
            "--insecure",
        ])
        .unwrap();
        assert_eq!(w.args.encoding, ChatEncoding::Msgpack);
        assert_eq!(w.args.room, "dev");
        assert!(w.args.insecure && w.args.timestamps);
    }
}
