//! The protocol state machine of the chat client: what it sends on connect
//! (rejoins with `since`/`epoch`, unconfirmed lines again under the same
//! `client_id`), how it turns server frames into transcript lines, how it
//! paces its sends (one in flight, slower after `rate_limited`), and when it
//! is done (EOF or `/quit` once every line is confirmed, or ~2 s without
//! progress).
//!
//! State that survives reconnects lives in [`Chat`]; the connection itself
//! is passed in, so the same code runs online and offline (while waiting to
//! reconnect, lines are queued and room changes remembered).
//!
//! Why one long file: it is one state machine (connect, rejoin, pacing,
//! confirmation, the end condition) whose states share `Chat`; its unit
//! tests, about a fifth of the file, drive it frame by frame.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};

use super::connect::{Conn, Incoming};
use super::cursor::RoomCursor;
use super::input::{parse, Action, Input, Inputs, COMMANDS_HELP};
use super::output::Ui;
use crate::protocol::{ErrorCode, HistoryEntry, Ref, ServerFrame};

/// After EOF or `/quit`: how long to wait without any line being confirmed
/// before giving up on the rest.
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// Extra slack on top of two heartbeats before a silent server counts as gone.
const LIVENESS_SLACK: Duration = Duration::from_secs(2);
/// Heartbeat assumed until `welcome` says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);
/// How often one line is retried after `rate_limited` / `unavailable`.
const MAX_TRIES: u32 = 20;
/// Longest line sent (bytes); longer ones would exceed the server's frame
/// limit (64 KiB by default) and get the connection closed with 1009.
const MAX_LINE_BYTES: usize = 60 * 1024;
/// Pace bounds after `rate_limited`.
const MIN_PACE: Duration = Duration::from_millis(50);
const MAX_PACE: Duration = Duration::from_secs(2);

/// How a session (or the whole client) ends.
#[derive(Debug)]
pub(crate) enum End {
    /// EOF or `/quit` (lines may be left unconfirmed after the grace time).
    Quit,
    /// Ctrl-C, SIGTERM, or stdout went away.
    Interrupted,
    /// Give up: 4001, 1008, refused handshake, impossible first connection.
    Fatal(String),
    /// The connection dropped: reconnect.
    Dropped(String),
}

/// A command awaiting its reply, by `ref`.
#[derive(Debug, Clone)]
enum Req {
    Join {
        room: String,
        /// `since` sent (a rejoin that recovers).
        since: Option<u64>,
        /// Part of the rejoin batch whose end prints `* reconnected`.
        counted: bool,
    },
    Leave,
    Send {
        cid: String,
    },
    Dm {
        to: String,
    },
    Who,
    History {
        room: String,
    },
}

/// A line for a room, kept until its `ack`.
#[derive(Debug)]
struct PendingSend {
    cid: String,
    room: String,
    text: String,
    /// Sent on the current connection, awaiting the reply.
    sent: bool,
    tries: u32,
}

/// Send pacing: normally as fast as acks come back (one line in flight);
/// after `rate_limited`, at most one line per `interval`, slowly speeding up
/// again, until the queue drains.
#[derive(Debug)]
struct Pacer {
    paced: bool,
    interval: Duration,
    next_at: Instant,
}

impl Pacer {
    fn new() -> Self {
        Pacer {
            paced: false,
            interval: MIN_PACE,
            next_at: Instant::now(),
        }
    }

    fn limited(&mut self, retry: Duration) {
        self.interval = if self.paced {
            self.interval.mul_f64(1.5).max(retry)
        } else {
            (retry * 2).max(MIN_PACE)
        }
        .min(MAX_PACE);
        self.paced = true;
        self.next_at = Instant::now() + retry.max(self.interval);
    }

    fn confirmed(&mut self) {
        if self.paced {
            self.interval = self.interval.mul_f64(0.97).max(Duration::from_millis(10));
        }
    }

    fn sent(&mut self) {
        if self.paced {
            self.next_at = Instant::now() + self.interval;
        }
    }
}

/// The client's state across connections.
pub(crate) struct Chat {
    ui: Ui,
    me: String,
    /// Joined (or to be joined) rooms, in join order.
    rooms: Vec<String>,
    current: Option<String>,
    cursors: HashMap<String, RoomCursor>,
    resume: Option<String>,
    sends: VecDeque<PendingSend>,
    /// Direct messages typed while disconnected (never sent yet).
    dms: VecDeque<(String, String)>,
    cid_prefix: String,
    next_seq: u64,
    next_ref: i64,
    /// Commands sent on this connection, oldest first, awaiting a reply.
    inflight: VecDeque<(i64, Req)>,
    pacer: Pacer,
    closing: bool,
    /// Last time a line was confirmed (or the flush started or a connection
    /// opened): the grace time after EOF counts from here.
    progress: Instant,
    heartbeat: Duration,
    rejoining: usize,
    connected_once: bool,
}

impl Chat {
    /// A client for `user` that joins `room` on connect.
    pub(crate) fn new(ui: Ui, user: String, room: String) -> Self {
        let cid_prefix: String = {
            let mut rng = rand::rng();
            (0..12)
                .map(|_| {
                    char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[rng.random_range(0..36)])
                })
                .collect()
        };
        Chat {
            ui,
            me: user,
            rooms: vec![room.clone()],
            current: Some(room),
            cursors: HashMap::new(),
            resume: None,
            sends: VecDeque::new(),
            dms: VecDeque::new(),
            cid_prefix,
            next_seq: 1,
            next_ref: 1,
            inflight: VecDeque::new(),
            pacer: Pacer::new(),
            closing: false,
            progress: Instant::now(),
            heartbeat: DEFAULT_HEARTBEAT,
            rejoining: 0,
            connected_once: false,
        }
    }

    /// The user name (from `welcome` once connected).
    pub(crate) fn user(&self) -> &str {
        &self.me
    }

    /// The guest resume token from the last `welcome`.
    pub(crate) fn resume_token(&self) -> Option<String> {
        self.resume.clone()
    }

    /// The UI.
    pub(crate) fn ui(&self) -> &Ui {
        &self.ui
    }

    /// Lines and direct messages sent but not confirmed by the server.
    pub(crate) fn unconfirmed(&self) -> usize {
        self.sends.len()
            + self.dms.len()
            + self
                .inflight
                .iter()
                .filter(|(_, r)| matches!(r, Req::Dm { .. }))
                .count()
    }

    /// Runs `attempt` (a connection attempt) while still handling input.
    /// Before the first connection only Ctrl-C is handled: what a script
    /// pipes in waits until the client is connected and in its room.
    pub(crate) async fn connecting<F: Future>(
        &mut self,
        inputs: &mut Inputs,
        attempt: F,
    ) -> Result<F::Output, End> {
        tokio::pin!(attempt);
        loop {
            let deadline = self.offline_deadline();
            tokio::select! {
                r = &mut attempt => return Ok(r),
                ev = inputs.next(self.connected_once) => self.offline_input(ev)?,
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    return Err(End::Quit)
                }
            }
        }
    }

    /// Waits `delay` before the next reconnect attempt, handling input.
    pub(crate) async fn wait_offline(
        &mut self,
        inputs: &mut Inputs,
        delay: Duration,
    ) -> Result<(), End> {
        self.connecting(inputs, tokio::time::sleep(delay)).await
    }

    /// While disconnected and closing: give up after the grace time (never
    /// before the first connection, whose attempt has its own timeout).
    fn offline_deadline(&self) -> Option<Instant> {
        (self.closing && self.connected_once).then(|| self.progress + FLUSH_GRACE)
    }

    /// Closing is done when every line is confirmed and every command
    /// answered (so `echo /who | relay chat …` prints the reply, and
    /// `relay chat … </dev/null` prints the room's history).
    fn check_done(&self) -> Result<(), End> {
        if self.closing && self.unconfirmed() == 0 && self.inflight.is_empty() {
            Err(End::Quit)
        } else {
            Ok(())
        }
    }

    fn start_closing(&mut self) -> Result<(), End> {
        if !self.closing {
            self.closing = true;
            self.progress = Instant::now();
        }
        self.check_done()
    }

    /// The room marker of an event: `None` for the current room.
    fn other<'a>(&self, room: &'a str) -> Option<&'a str> {
        (self.current.as_deref() != Some(room)).then_some(room)
    }

    fn queue_line(&mut self, text: String) {
        let Some(room) = self.current.clone() else {
            self.ui.say("! not in a room: /join ROOM first");
            return;
        };
        if text.len() > MAX_LINE_BYTES {
            self.ui.say("! error too_large: line too long, not sent");
            return;
        }
        let cid = format!("{}-{}", self.cid_prefix, self.next_seq);
        self.next_seq += 1;
        self.sends.push_back(PendingSend {
            cid,
            room,
            text,
            sent: false,
            tries: 0,
        });
    }

    /// Forgets a room locally; returns whether it was joined.
    fn forget_room(&mut self, room: &str) -> bool {
        let Some(i) = self.rooms.iter().position(|r| r == room) else {
            return false;
        };
        self.rooms.remove(i);
        self.cursors.remove(room);
        self.sends.retain(|s| s.sent || s.room != room);
        if self.current.as_deref() == Some(room) {
            self.current = self.rooms.last().cloned();
            match &self.current {
                Some(r) => self.ui.notice(&format!("* now in {r}")),
                None => self.ui.notice("* not in any room: /join ROOM"),
            }
        }
        true
    }

    fn help(&self, unknown: Option<String>) {
        match unknown {
            Some(name) => self
                .ui
                .say(&format!("! unknown command {name}; {COMMANDS_HELP}")),
            None => self.ui.say(COMMANDS_HELP),
        }
    }

    /// Input while disconnected: lines and room changes are kept for the
    /// next connection; what needs the server now is refused.
    fn offline_input(&mut self, ev: Input) -> Result<(), End> {
        let line = match ev {
            Input::Interrupt => return Err(End::Interrupted),
            Input::Eof => return self.start_closing(),
            Input::Line(l) => l,
        };
        match parse(&line) {
            Action::Nothing => {}
            Action::Say(text) => self.queue_line(text),
            Action::Join(room) => {
                if !self.rooms.contains(&room) {
                    self.rooms.push(room.clone());
                }
                self.ui
                    .notice(&format!("* now in {room} (joins when connected)"));
                self.current = Some(room);
            }
            Action::Leave(room) => {
                let room = room.or_else(|| self.current.clone()).unwrap_or_default();
                if self.forget_room(&room) {
                    self.ui.notice(&format!("* left {room}"));
                } else {
                    self.ui.say(&format!("! not in {room}"));
                }
            }
            Action::Dm { to, text } => self.dms.push_back((to, text)),
            Action::Who | Action::History(_) => self.ui.say("! not connected"),
            Action::Quit => return self.start_closing(),
            Action::Help(unknown) => self.help(unknown),
            Action::Usage(usage) => self.ui.say(&format!("! {usage}")),
        }
        if self.ui.broken() {
            return Err(End::Interrupted);
        }
        Ok(())
    }

    /// Runs one connection until it ends.
    pub(crate) async fn session(
        &mut self,
        (mut conn, welcome): (Conn, ServerFrame),
        inputs: &mut Inputs,
        reconnect: bool,
    ) -> End {
        if let ServerFrame::Welcome {
            user,
            resume,
            heartbeat_ms,
            ..
        } = welcome
        {
            self.me = user;
            if resume.is_some() {
                self.resume = resume;
            }
            if heartbeat_ms > 0 {
                self.heartbeat = Duration::from_millis(heartbeat_ms);
            }
        }
        self.connected_once = true;
        self.inflight.clear();
        for s in &mut self.sends {
            s.sent = false;
        }
        self.progress = Instant::now();
        let mut last_rx = Instant::now();
        let mut step = self.start(&mut conn, reconnect).await;
        let end = loop {
            if let Err(end) = step.and_then(|()| self.check_done()) {
                break end;
            }
            if self.ui.broken() {
                break End::Interrupted;
            }
            let silent_at = last_rx + self.heartbeat * 2 + LIVENESS_SLACK;
            let flush_at = self.progress + FLUSH_GRACE;
            let pump_at = self.pacer.next_at;
            let pump_due = self.pacer.paced && self.sends.front().is_some_and(|s| !s.sent);
            step = tokio::select! {
                incoming = conn.next() => {
                    last_rx = Instant::now();
                    self.on_incoming(&mut conn, incoming).await
                }
                ev = inputs.next(true) => self.online_input(&mut conn, ev).await,
                _ = sleep_until(silent_at) => Err(End::Dropped("server silent".into())),
                _ = sleep_until(flush_at), if self.closing => Err(End::Quit),
                _ = sleep_until(pump_at), if pump_due => self.pump(&mut conn).await,
            };
        };
        match &end {
            End::Quit | End::Interrupted => conn.close().await,
            End::Dropped(_) => {
                for (_, req) in std::mem::take(&mut self.inflight) {
                    if let Req::Dm { to } = req {
                        self.ui.say(&format!(
                            "! direct message to {to} may not have been delivered"
                        ));
                    }
                }
            }
            End::Fatal(_) => {}
        }
        end
    }

    /// On connect: (re)join every room, then send queued lines.
    async fn start(&mut self, conn: &mut Conn, reconnect: bool) -> Result<(), End> {
        self.rejoining = 0;
        for room in self.rooms.clone() {
            let mut join = json!({"type": "join", "room": room});
            let since = self.cursors.get(&room).map(|c| {
                join["since"] = json!(c.since());
                join["epoch"] = json!(c.epoch);
                c.since()
            });
            if reconnect {
                self.rejoining += 1;
            }
            self.command(
                conn,
                join,
                Req::Join {
                    room,
                    since,
                    counted: reconnect,
                },
            )
            .await?;
        }
        if reconnect && self.rejoining == 0 {
            self.ui.notice("* reconnected");
        }
        while let Some((to, text)) = self.dms.pop_front() {
            let cmd = json!({"type": "dm", "to": to, "text": text});
            self.command(conn, cmd, Req::Dm { to }).await?;
        }
        self.pump(conn).await
    }

    /// Sends a command with a fresh `ref` and remembers it.
    async fn command(&mut self, conn: &mut Conn, mut cmd: Value, req: Req) -> Result<(), End> {
        let r = self.next_ref;
        self.next_ref += 1;
        cmd["ref"] = json!(r);
        self.inflight.push_back((r, req));
        conn.send(&cmd).await.map_err(End::Dropped)
    }

    /// Sends the next queued line if none is in flight and the pace allows.
    async fn pump(&mut self, conn: &mut Conn) -> Result<(), End> {
        let Some(front) = self.sends.front_mut() else {
            self.pacer.paced = false;
            return Ok(());
        };
        if front.sent || (self.pacer.paced && Instant::now() < self.pacer.next_at) {
            return Ok(());
        }
        front.sent = true;
        let cmd = json!({
            "type": "send",
            "room": front.room,
            "text": front.text,
            "client_id": front.cid,
        });
        let req = Req::Send {
            cid: front.cid.clone(),
        };
        self.pacer.sent();
        self.command(conn, cmd, req).await
    }

    /// Removes and returns the request a reply answers.
    fn take_req(&mut self, reference: &Option<Ref>) -> Option<Req> {
        let Some(Ref::Int(r)) = reference else {
            return None;
        };
        let i = self.inflight.iter().position(|(x, _)| x == r)?;
        self.inflight.remove(i).map(|(_, req)| req)
    }

    async fn online_input(&mut self, conn: &mut Conn, ev: Input) -> Result<(), End> {
        let line = match ev {
            Input::Interrupt => return Err(End::Interrupted),
            Input::Eof => return self.start_closing(),
            Input::Line(l) => l,
        };
        match parse(&line) {
            Action::Nothing => {}
            Action::Say(text) => {
                self.queue_line(text);
                self.pump(conn).await?;
            }
            Action::Dm { to, text } => {
                let cmd = json!({"type": "dm", "to": to, "text": text});
                self.command(conn, cmd, Req::Dm { to }).await?;
            }
            Action::Join(room) => {
                if self.rooms.contains(&room) {
                    self.ui.notice(&format!("* now in {room}"));
                    self.current = Some(room);
                } else {
                    self.rooms.push(room.clone());
                    self.current = Some(room.clone());
                    let cmd = json!({"type": "join", "room": room});
                    let req = Req::Join {
                        room,
                        since: None,
                        counted: false,
                    };
                    self.command(conn, cmd, req).await?;
                }
            }
            Action::Leave(room) => {
                let room = room.or_else(|| self.current.clone()).unwrap_or_default();
                if self.forget_room(&room) {
                    let cmd = json!({"type": "leave", "room": room});
                    self.command(conn, cmd, Req::Leave).await?;
                } else {
                    self.ui.say(&format!("! not in {room}"));
                }
            }
            Action::Who => match self.current.clone() {
                Some(room) => {
                    self.command(conn, json!({"type": "who", "room": room}), Req::Who)
                        .await?
                }
                None => self.ui.say("! not in a room"),
            },
            Action::History(limit) => match self.current.clone() {
                Some(room) => {
                    let cmd = json!({"type": "history", "room": room, "limit": limit});
                    self.command(conn, cmd, Req::History { room }).await?
                }
                None => self.ui.say("! not in a room"),
            },
            Action::Quit => return self.start_closing(),
            Action::Help(unknown) => self.help(unknown),
            Action::Usage(usage) => self.ui.say(&format!("! {usage}")),
        }
        Ok(())
    }

    async fn on_incoming(&mut self, conn: &mut Conn, incoming: Incoming) -> Result<(), End> {
        match incoming {
            Incoming::Frame(frame) => self.on_frame(conn, frame).await,
            Incoming::Other => Ok(()),
            Incoming::Lost(why) => Err(End::Dropped(why)),
            Incoming::Closed(code, reason) => Err(match code {
                Some(4001) => End::Fatal("session expired or token revoked (close 4001)".into()),
                Some(1008) => End::Fatal(format!(
                    "closed by the server for a policy violation (1008): {reason}"
                )),
                Some(1009) => {
                    // The line in flight was larger than the server's frame
                    // limit: drop it, or every reconnect would resend it.
                    if self.sends.front().is_some_and(|s| s.sent) {
                        self.sends.pop_front();
                        self.ui.say(
                            "! error too_large: line larger than the server accepts, not sent",
                        );
                    }
                    End::Dropped("closed 1009 (frame too large)".into())
                }
                Some(c) => End::Dropped(format!("closed {c} {reason}")),
                None => End::Dropped("closed".into()),
            }),
        }
    }

    fn print_message(&self, other_room: Option<&str>, from: &str, text: &str, ts: u64) {
        self.ui
            .event(Some(ts), other_room, &format!("{from}: {text}"));
    }

    async fn on_frame(&mut self, conn: &mut Conn, frame: ServerFrame) -> Result<(), End> {
        match frame {
            ServerFrame::Joined {
                room,
                epoch,
                presence,
                history,
                recovered,
                reference,
            } => {
                if let Some(Req::Join { since, counted, .. }) = self.take_req(&reference) {
                    if self.rooms.contains(&room) {
                        self.on_joined(&room, epoch, &presence, &history, recovered, since);
                    }
                    if counted {
                        self.rejoined();
                    }
                }
            }
            ServerFrame::Left { room, reference } => {
                self.take_req(&reference);
                self.ui.notice(&format!("* left {room}"));
            }
            ServerFrame::Ack {
                id,
                room,
                reference,
                ..
            } => match self.take_req(&reference) {
                Some(Req::Send { cid }) => {
                    self.sends.retain(|s| s.cid != cid);
                    if let Some(c) = room.as_ref().and_then(|r| self.cursors.get_mut(r)) {
                        c.see(id);
                    }
                    self.progress = Instant::now();
                    self.pacer.confirmed();
                    self.check_done()?;
                    self.pump(conn).await?;
                }
                Some(Req::Dm { .. }) => {
                    self.progress = Instant::now();
                    self.check_done()?;
                }
                _ => {}
            },
            ServerFrame::Message(m) => {
                if self.rooms.contains(&m.room) {
                    let cursor = self
                        .cursors
                        .entry(m.room.clone())
                        .or_insert_with(|| RoomCursor::new(String::new()));
                    if cursor.see(m.id) {
                        self.print_message(self.other(&m.room), &m.from, &m.text, m.ts);
                    }
                }
            }
            ServerFrame::Direct {
                from, to, text, ts, ..
            } => self
                .ui
                .event(Some(ts), None, &format!("[dm] {from} -> {to}: {text}")),
            ServerFrame::UserJoined { room, user, ts } => {
                if self.rooms.contains(&room) {
                    self.ui.event(
                        Some(ts),
                        self.other(&room),
                        &format!("User '{user}' joined the chat"),
                    );
                }
            }
            ServerFrame::UserLeft { room, user, ts, .. } => {
                if self.rooms.contains(&room) {
                    self.ui.event(
                        Some(ts),
                        self.other(&room),
                        &format!("User '{user}' left the chat"),
                    );
                }
            }
            ServerFrame::Presence {
                room,
                users,
                reference,
            } => {
                self.take_req(&reference);
                self.ui
                    .say(&format!("Online in {room}: {}", users.join(", ")));
            }
            ServerFrame::History {
                room,
                messages,
                reference,
            } => {
                if let Some(Req::History { room: asked }) = self.take_req(&reference) {
                    if messages.is_empty() {
                        self.ui.notice(&format!("* no messages in {asked}"));
                    }
                }
                for HistoryEntry { message: m } in &messages {
                    self.print_message(self.other(&room), &m.from, &m.text, m.ts);
                }
            }
            ServerFrame::Error {
                code,
                message,
                reference,
                retry_ms,
            } => {
                self.on_error(code, &message, &reference, retry_ms)?;
                // A refused line frees the slot: send the next (or wait for the pace).
                self.pump(conn).await?;
            }
            ServerFrame::Pong { reference } => {
                self.take_req(&reference);
            }
            ServerFrame::Typing { .. } | ServerFrame::Welcome { .. } => {}
        }
        Ok(())
    }

    fn rejoined(&mut self) {
        self.rejoining = self.rejoining.saturating_sub(1);
        if self.rejoining == 0 {
            self.ui.notice("* reconnected");
        }
    }

    fn on_joined(
        &mut self,
        room: &str,
        epoch: String,
        presence: &[String],
        history: &[HistoryEntry],
        recovered: bool,
        since: Option<u64>,
    ) {
        let other = self.other(room);
        let mut cursor = match self.cursors.remove(room) {
            // Same epoch (or only live messages seen so far): ids carry over.
            Some(mut c) if c.epoch == epoch || c.epoch.is_empty() => {
                c.epoch = epoch;
                c
            }
            _ => RoomCursor::new(epoch),
        };
        let rejoin = since.is_some();
        if rejoin && !recovered {
            self.ui
                .event(None, other, "* some messages may have been missed");
        }
        for HistoryEntry { message: m } in history {
            if !cursor.see(m.id) {
                continue;
            }
            // A line of ours stored just before the drop: it is about to be
            // resent (and deduplicated by `client_id`); do not echo it.
            let ours_pending = rejoin
                && m.from == self.me
                && self
                    .sends
                    .iter()
                    .any(|s| s.room == room && s.text == m.text);
            if !ours_pending {
                self.print_message(other, &m.from, &m.text, m.ts);
            }
        }
        if let Some(last) = history.last() {
            cursor.settle(last.message.id);
        }
        self.cursors.insert(room.to_owned(), cursor);
        if !rejoin {
            self.ui.notice(&format!(
                "* joined {room} ({} online: {})",
                presence.len(),
                presence.join(", ")
            ));
        }
    }

    fn on_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        reference: &Option<Ref>,
        retry_ms: Option<u64>,
    ) -> Result<(), End> {
        let req = match reference {
            Some(_) => self.take_req(reference),
            // The server refuses before decoding, so a `rate_limited` carries
            // no ref: replies come in order, it answers the oldest command.
            None if code == ErrorCode::RateLimited => self.inflight.pop_front().map(|(_, r)| r),
            None => None,
        };
        let show = || {
            self.ui
                .say(&format!("! error {}: {message}", code.as_str()))
        };
        match req {
            Some(Req::Send { cid }) => {
                let retry = match code {
                    ErrorCode::RateLimited => Some(Duration::from_millis(retry_ms.unwrap_or(100))),
                    ErrorCode::Unavailable => Some(Duration::from_secs(1)),
                    _ => None,
                };
                let Some(i) = self.sends.iter().position(|s| s.cid == cid) else {
                    return Ok(());
                };
                match retry {
                    Some(wait) if self.sends[i].tries < MAX_TRIES => {
                        // Not applied: send the same line again later.
                        self.sends[i].sent = false;
                        self.sends[i].tries += 1;
                        self.pacer.limited(wait);
                    }
                    _ => {
                        show();
                        self.sends.remove(i);
                        self.progress = Instant::now();
                        self.check_done()?;
                    }
                }
            }
            Some(Req::Join { room, counted, .. }) => {
                if counted
                    && matches!(
                        code,
                        ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
                    )
                {
                    return Err(End::Dropped(format!("rejoin of {room} failed: {message}")));
                }
                show();
                self.forget_room(&room);
                if counted {
                    self.rejoined();
                }
            }
            Some(Req::Dm { .. }) => {
                show();
                self.progress = Instant::now();
                self.check_done()?;
            }
            Some(Req::Leave | Req::Who | Req::History { .. }) | None => show(),
        }
        Ok(())
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_slows_down_after_limits_and_recovers() {
        let mut p = Pacer::new();
        assert!(!p.paced);
        p.limited(Duration::from_millis(10));
        assert!(p.paced);
        assert_eq!(p.interval, MIN_PACE);
        p.limited(Duration::from_millis(10));
        assert_eq!(p.interval, MIN_PACE.mul_f64(1.5));
        for _ in 0..100 {
            p.limited(Duration::from_millis(10));
        }
        assert_eq!(p.interval, MAX_PACE);
        let before = p.interval;
        p.confirmed();
        assert!(p.interval < before);
    }
}
