//! One WebSocket connection. The reader task decodes frames (tungstenite),
//! applies the token bucket and limits, and runs commands against the node
//! and the backplane. The writer task drains the bounded outbound queue of
//! pre-built frames (everything queued, in as few `send()` calls as the
//! socket takes, see [`wire`]) and owns pings, pongs and the close frame.
//! This module knows nothing of Redis: it talks to [`crate::node::Node`] and
//! the backplane trait.

pub mod limit;
pub mod queue;
pub mod reason;
pub mod wire;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument;

use crate::backplane::{BackplaneError, DirectOutcome, PublishRequest};
use crate::node::{Node, SessionHandle, UserLease};
use crate::protocol::{
    decode_command, Command, Encoding, ErrorCode, LeaveReason, Limits, Ref, ServerFrame,
};
use limit::{TokenBucket, Verdict};
use queue::Batch;
use reason::DisconnectReason;
use wire::{Frame, ReadSide, WriteSide};

/// The reader's side of a connection: tungstenite over the socket's read half.
pub type WsReader = WebSocketStream<ReadSide>;

/// An upgraded connection's two halves.
pub struct Socket {
    /// Decodes the client's frames.
    pub reader: WsReader,
    /// Takes the frames the writer task sends.
    pub writer: WriteSide,
}

/// Per-connection settings, shared by all sessions of a node.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Ping interval; silence for twice this long closes the connection.
    pub heartbeat: Duration,
    /// Commands per second (burst 2×).
    pub rate: u32,
    /// Outbound queue capacity in frames.
    pub max_queue: usize,
    /// Input limits.
    pub limits: Limits,
}

/// How long the writer may take to deliver a close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a connection to its end. `expires`: when the session's token
/// expires (closes with 4001). Run it inside the connection's `session` span
/// (see [`session_span`]): the session records its number there and logs
/// its end in it.
///
/// The set-up runs synchronously when called (inside the connection's task);
/// the returned future holds only what lives for the whole connection. (An
/// `async fn` would also keep its arguments, the socket among them, in every
/// idle connection's state.)
pub fn run(
    socket: Socket,
    node: Arc<Node>,
    lease: UserLease,
    user: String,
    encoding: Encoding,
    config: Arc<SessionConfig>,
    expires: Option<Instant>,
) -> impl std::future::Future<Output = ()> + Send {
    let handle = node.open_session(&user, encoding, config.max_queue);
    tracing::Span::current().record("session", handle.id);
    let metrics = node.metrics.clone();
    let enc_label = crate::metrics::EncodingLabel {
        encoding: encoding.as_str(),
    };
    metrics.connections_opened.inc();
    metrics.connections.get_or_create(&enc_label).inc();
    handle.send(&ServerFrame::Welcome {
        user: user.clone(),
        node: node.id().to_owned(),
        session: format!("{}/{}", node.id(), handle.id),
        protocol: crate::protocol::PROTOCOL_VERSION,
        resume: lease.token.clone(),
        heartbeat_ms: config.heartbeat.as_millis() as u64,
    });

    let Socket {
        reader: mut stream,
        writer: sink,
    } = socket;
    let started = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let writer_done = CancellationToken::new();
    let writer = node.tasks.spawn(write_loop(
        sink,
        handle.clone(),
        last_seen.clone(),
        started,
        config.heartbeat,
        writer_done.clone(),
    ));

    let mut reader = Reader {
        node: node.clone(),
        handle: handle.clone(),
        config: config.clone(),
        rooms: HashSet::new(),
        bucket: TokenBucket::new(config.rate),
    };
    drop((user, config));
    async move {
        let read_reason = reader
            .read_loop(&mut stream, &last_seen, started, &writer_done, expires)
            .await;
        if let Some(reason) = read_reason {
            handle.queue.close(reason);
        }
        // Boxed: the clean-up's state is not part of every idle connection's
        // task (a future is as large as its largest await point).
        Box::pin(finish(Finish {
            node,
            handle,
            lease,
            rooms: std::mem::take(&mut reader.rooms),
            stream,
            writer,
            read_reason,
            enc_label,
            started,
        }))
        .await;
    }
}

/// What the end of a session needs.
struct Finish {
    node: Arc<Node>,
    handle: Arc<SessionHandle>,
    lease: UserLease,
    rooms: HashSet<String>,
    stream: WsReader,
    writer: tokio::task::JoinHandle<DisconnectReason>,
    read_reason: Option<DisconnectReason>,
    enc_label: crate::metrics::EncodingLabel,
    started: Instant,
}

/// Ends a session: leaves its rooms, releases the user, completes the
/// closing handshake and records the outcome.
async fn finish(f: Finish) {
    let Finish {
        node,
        handle,
        lease,
        rooms,
        mut stream,
        writer,
        read_reason,
        enc_label,
        started,
    } = f;
    let metrics = node.metrics.clone();
    // The session is over: release the user (on its last connection this
    // drops the direct-message subscription, so once others see `user_left`
    // a dm to the user answers `user_offline`), leave every room (the
    // user's last connection tells the others), all before the closing
    // handshake, which may take a while with an unresponsive peer.
    lease.release().await;
    for room in rooms {
        if let Err(e) = node.leave(&handle, &room, LeaveReason::Disconnect).await {
            tracing::warn!(room, error = %e, "leave on disconnect failed");
        }
    }
    node.close_session(&handle);
    // Closing handshake: while the writer sends our close frame, keep reading
    // (and discarding) until the peer's close frame or EOF. Dropping a socket
    // with unread input would reset it and could destroy our close frame.
    if read_reason != Some(DisconnectReason::ClientClosed) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let reason = match tokio::time::timeout(CLOSE_TIMEOUT * 2, writer).await {
        Ok(Ok(reason)) => reason,
        _ => DisconnectReason::WriteError,
    };

    metrics.connections.get_or_create(&enc_label).dec();
    metrics
        .connections_closed
        .get_or_create(&crate::metrics::CloseLabels {
            code: reason.close_code(),
            reason: reason.as_str(),
        })
        .inc();
    log_disconnect(reason, started.elapsed());
}

/// The span of one WebSocket connection, from upgrade to close (a root
/// span). Its fields (`user`, `node`, `session` once registered, `remote`:
/// the peer socket address, `ip`: the client address after trusted proxies,
/// `encoding`) prefix every log line of the connection, among them the
/// disconnect line.
pub fn session_span(
    user: &str,
    node: &str,
    remote: std::net::SocketAddr,
    ip: std::net::IpAddr,
    encoding: Encoding,
) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "session",
        user,
        node,
        session = Empty,
        %remote,
        %ip,
        encoding = encoding.as_str()
    )
}

/// Whether a disconnect is routine (the client left, or the node drains):
/// logged at debug; every other reason is logged at info.
fn is_routine(reason: DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::ClientClosed | DisconnectReason::Draining
    )
}

/// Logs the end of a session with its reason and close code.
fn log_disconnect(reason: DisconnectReason, lasted: Duration) {
    let lasted_ms = lasted.as_millis() as u64;
    if is_routine(reason) {
        tracing::debug!(
            reason = reason.as_str(),
            code = reason.close_code(),
            lasted_ms,
            "session closed"
        );
    } else {
        tracing::info!(
            reason = reason.as_str(),
            code = reason.close_code(),
            lasted_ms,
            "session closed"
        );
    }
}

/// Writes queued frames, pings, and the close frame. Returns why it stopped.
async fn write_loop(
    mut sink: WriteSide,
    handle: Arc<SessionHandle>,
    last_seen: Arc<AtomicU64>,
    started: Instant,
    heartbeat: Duration,
    done: CancellationToken,
) -> DisconnectReason {
    let reason = write_frames(&mut sink, &handle, &last_seen, started, heartbeat).await;
    if reason != DisconnectReason::WriteError {
        let frame = Frame::close(reason.close_code(), reason.close_text());
        // Boxed: its timer would otherwise enlarge every writer's state.
        let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
            wire::write_frames(&mut sink, std::slice::from_ref(&frame)).await?;
            sink.flush().await
        }))
        .await;
    }
    done.cancel();
    reason
}

async fn write_frames(
    sink: &mut WriteSide,
    handle: &SessionHandle,
    last_seen: &AtomicU64,
    started: Instant,
    heartbeat: Duration,
) -> DisconnectReason {
    let mut ticker = tokio::time::interval_at(started + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Batch::default();
    loop {
        let mut ping = false;
        tokio::select! {
            biased;
            _ = handle.queue.wait() => {}
            _ = ticker.tick() => {
                let seen = started + Duration::from_millis(last_seen.load(Ordering::Relaxed));
                if seen.elapsed() > heartbeat * 2 {
                    return DisconnectReason::HeartbeatTimeout;
                }
                ping = true;
            }
        }
        handle.queue.take(&mut batch);
        if let Some(DisconnectReason::SlowConsumer) = batch.close {
            return DisconnectReason::SlowConsumer;
        }
        if ping && batch.close.is_none() {
            batch.frames.push(Frame::ping());
        }
        if wire::write_frames(sink, &batch.frames).await.is_err() {
            return DisconnectReason::WriteError;
        }
        batch.frames.clear();
        if let Some(reason) = batch.close {
            return reason;
        }
        if sink.flush().await.is_err() {
            return DisconnectReason::WriteError;
        }
    }
}

struct Reader {
    node: Arc<Node>,
    handle: Arc<SessionHandle>,
    config: Arc<SessionConfig>,
    rooms: HashSet<String>,
    bucket: TokenBucket,
}

impl Reader {
    /// Reads until the connection ends. Returns a reason when the reader
    /// decided the close (the writer then sends the close frame).
    async fn read_loop(
        &mut self,
        stream: &mut WsReader,
        last_seen: &AtomicU64,
        started: Instant,
        writer_done: &CancellationToken,
        expires: Option<Instant>,
    ) -> Option<DisconnectReason> {
        // Boxed, and only with an expiry: a timer is large for a state that
        // every idle connection keeps.
        let mut expiry = expires.map(|at| Box::pin(tokio::time::sleep_until(at)));
        loop {
            let expired = async {
                match &mut expiry {
                    Some(sleep) => sleep.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                m = stream.next() => m,
                _ = writer_done.cancelled() => return None,
                _ = expired => return Some(DisconnectReason::SessionExpired),
            };
            last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let (bytes, encoding) = match next {
                None => return Some(DisconnectReason::ClientClosed),
                Some(Err(e)) => return Some(classify(e)),
                Some(Ok(Message::Close(_))) => return Some(DisconnectReason::ClientClosed),
                Some(Ok(Message::Ping(data))) => {
                    self.handle.queue.push(Frame::pong(&data));
                    continue;
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Text(t))) => (t.into(), Encoding::Json),
                Some(Ok(Message::Binary(b))) => (b, Encoding::MsgPack),
            };
            // Boxed: the command futures (the largest state of a session)
            // live on the heap only while a command runs, so an idle
            // connection's task stays small.
            if let Some(reason) = Box::pin(self.on_frame(&bytes, encoding)).await {
                return Some(reason);
            }
        }
    }

    fn reply(&self, frame: ServerFrame) {
        self.handle.send(&frame);
    }

    fn fail(
        &self,
        kind: &'static str,
        code: ErrorCode,
        message: impl Into<String>,
        reference: Option<Ref>,
    ) {
        self.node.metrics.command(kind, code.as_str());
        self.reply(ServerFrame::error(code, message, reference));
    }

    async fn on_frame(&mut self, bytes: &[u8], encoding: Encoding) -> Option<DisconnectReason> {
        match self.bucket.take() {
            Verdict::Allow => {}
            Verdict::Limited(wait) => {
                self.node.metrics.rate_limited.inc();
                // Decoded only to echo the command's ref; it is not run.
                let (kind, reference) = match decode_command(bytes, encoding, &self.config.limits) {
                    Ok((command, reference)) => (command.kind(), reference),
                    Err(e) => ("unknown", e.reference),
                };
                self.node.metrics.command(kind, "rate_limited");
                self.reply(ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    message: format!("more than {} commands per second", self.config.rate),
                    reference,
                    retry_ms: Some(wait.as_millis().max(1) as u64),
                });
                return None;
            }
            Verdict::Abuse => {
                self.node.metrics.rate_limited.inc();
                return Some(DisconnectReason::Policy);
            }
        }
        let (command, reference) = match decode_command(bytes, encoding, &self.config.limits) {
            Ok(c) => c,
            Err(e) => {
                self.fail("unknown", e.code, e.message, e.reference);
                return None;
            }
        };
        let kind = command.kind();
        // A root span: one trace per command, not one per connection.
        let span = tracing::debug_span!(
            parent: None,
            "command",
            r#type = kind,
            room = Empty,
            user = %self.handle.user,
            session = self.handle.id,
            result = Empty,
            otel.status_code = Empty
        );
        if let Some(room) = command_room(&command) {
            span.record("room", room);
        }
        let outcome = self
            .execute(command, reference.clone())
            .instrument(span.clone())
            .await;
        match outcome {
            Ok(()) => {
                span.record("result", "ok");
                self.node.metrics.command(kind, "ok");
            }
            Err((code, message)) => {
                span.record("result", code.as_str());
                if matches!(code, ErrorCode::Internal | ErrorCode::Unavailable) {
                    span.record("otel.status_code", "ERROR");
                }
                self.fail(kind, code, message, reference);
            }
        }
        None
    }

    async fn execute(
        &mut self,
        command: Command,
        reference: Option<Ref>,
    ) -> Result<(), (ErrorCode, String)> {
        let node = self.node.clone();
        let backplane = node.backplane();
        let user = self.handle.user.clone();
        match command {
            Command::Join { room, since, epoch } => {
                let already = self.rooms.contains(&room);
                node.join(
                    &self.handle,
                    &room,
                    since,
                    epoch.as_deref(),
                    already,
                    reference,
                )
                .await
                .map_err(backplane_error)?;
                self.rooms.insert(room);
            }
            Command::Leave { room } => {
                if self.rooms.remove(&room) {
                    node.leave(&self.handle, &room, LeaveReason::Leave)
                        .await
                        .map_err(backplane_error)?;
                }
                self.reply(ServerFrame::Left { room, reference });
            }
            Command::Send {
                room,
                text,
                client_id,
            } => {
                self.member(&room)?;
                // The store-and-publish call; its trace context travels with
                // the message to every delivering node.
                let span = tracing::debug_span!(
                    "publish",
                    room = %room,
                    id = Empty,
                    otel.kind = "producer"
                );
                let traceparent = crate::telemetry::traceparent(&span);
                let published = backplane
                    .publish(PublishRequest {
                        room: room.clone(),
                        from: user,
                        text,
                        client_id,
                        origin: Some(node.origin(self.handle.id)),
                        traceparent,
                    })
                    .instrument(span.clone())
                    .await
                    .map_err(backplane_error)?;
                span.record("id", published.id);
                if !published.duplicate {
                    node.metrics.messages_published.inc();
                }
                self.reply(ServerFrame::Ack {
                    id: published.id,
                    ts: published.ts,
                    room: Some(room),
                    reference,
                });
            }
            Command::Dm { to, text } => {
                match backplane
                    .direct(&user, &to, &text, node.origin(self.handle.id))
                    .await
                    .map_err(backplane_error)?
                {
                    DirectOutcome::Delivered { id, ts } => self.reply(ServerFrame::Ack {
                        id,
                        ts,
                        room: None,
                        reference,
                    }),
                    DirectOutcome::Offline => {
                        return Err((
                            ErrorCode::UserOffline,
                            format!("user `{to}` is not connected"),
                        ))
                    }
                }
            }
            Command::Typing { room, active } => {
                self.member(&room)?;
                backplane
                    .typing(&room, &user, active, node.origin(self.handle.id))
                    .await
                    .map_err(backplane_error)?;
            }
            Command::Who { room } => {
                self.member(&room)?;
                let mut users = backplane.presence(&room).await.map_err(backplane_error)?;
                if !users.contains(&user) {
                    users.push(user);
                    users.sort();
                }
                self.reply(ServerFrame::Presence {
                    room,
                    users,
                    reference,
                });
            }
            Command::History {
                room,
                before,
                limit,
            } => {
                let messages = backplane
                    .history(&room, before, limit)
                    .await
                    .map_err(backplane_error)?;
                self.reply(ServerFrame::History {
                    room,
                    messages: messages.into_iter().map(Into::into).collect(),
                    reference,
                });
            }
            Command::Ping => self.reply(ServerFrame::Pong { reference }),
        }
        Ok(())
    }

    fn member(&self, room: &str) -> Result<(), (ErrorCode, String)> {
        if self.rooms.contains(room) {
            Ok(())
        } else {
            Err((ErrorCode::NotMember, format!("join `{room}` first")))
        }
    }
}

/// The room a command is about, for its span.
fn command_room(command: &Command) -> Option<&str> {
    match command {
        Command::Join { room, .. }
        | Command::Leave { room }
        | Command::Send { room, .. }
        | Command::Typing { room, .. }
        | Command::Who { room }
        | Command::History { room, .. } => Some(room),
        Command::Dm { .. } | Command::Ping => None,
    }
}

fn backplane_error(e: BackplaneError) -> (ErrorCode, String) {
    match e {
        BackplaneError::Unavailable(_) => (
            ErrorCode::Unavailable,
            "the backplane is unavailable; the command was not applied, retry later".into(),
        ),
        BackplaneError::Internal(m) => {
            tracing::error!(error = %m, "backplane error");
            (ErrorCode::Internal, "internal error".into())
        }
    }
}

/// Maps a read error of the WebSocket layer to a disconnect reason.
fn classify(error: tungstenite::Error) -> DisconnectReason {
    use tungstenite::Error as WsError;
    match error {
        WsError::Capacity(_) => DisconnectReason::FrameTooLarge,
        WsError::Utf8(_) => DisconnectReason::InvalidUtf8,
        WsError::Protocol(_) => DisconnectReason::ProtocolError,
        _ => DisconnectReason::ClientClosed,
    }
}
