//! The reader task of a connection: reads frames (tungstenite), applies the
//! token bucket, decodes and validates commands and runs them in order
//! (see `commands`), one `command` span each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument;

use super::limit::{TokenBucket, Verdict};
use super::{SessionConfig, WsReader};
use crate::node::{Node, SessionHandle};
use crate::outbound::{DisconnectReason, Frame, OutQueue};
use crate::protocol::{decode_command, Command, Encoding, ErrorCode, Ref, ServerFrame};

pub(super) struct Reader {
    pub(super) node: Arc<Node>,
    pub(super) handle: Arc<SessionHandle>,
    pub(super) config: Arc<SessionConfig>,
    pub(super) bucket: TokenBucket,
}

/// What a connection does with each data message it reads (the chat
/// commands of a session, or the echo of `examples/echo.rs`).
pub(super) trait Inbound: Send {
    /// Handles one text (`Encoding::Json`) or binary (`Encoding::MsgPack`)
    /// message; a reason ends the connection.
    fn data(
        &mut self,
        bytes: &[u8],
        encoding: Encoding,
    ) -> impl std::future::Future<Output = Option<DisconnectReason>> + Send;
}

/// Reads until the connection ends: answers pings through `queue`, hands
/// data messages to `inbound`, stops when the writer ended or `expires`
/// passed. Returns a reason when the read side decided the close (the
/// writer then sends the close frame); `None` when the writer ended first.
pub(super) async fn read_loop(
    inbound: &mut impl Inbound,
    queue: &OutQueue,
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
            Some(Ok(Message::Close(frame))) => return Some(peer_closed(frame)),
            Some(Ok(Message::Ping(data))) => {
                queue.push(Frame::pong(&data));
                continue;
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(t))) => (t.into(), Encoding::Json),
            Some(Ok(Message::Binary(b))) => (b, Encoding::MsgPack),
        };
        if let Some(reason) = inbound.data(&bytes, encoding).await {
            return Some(reason);
        }
    }
}

/// The reason of a close the peer started. tungstenite replaces a close
/// code that may not be sent (RFC 6455 §7.4) with 1002, which we answer.
fn peer_closed(frame: Option<tungstenite::protocol::CloseFrame>) -> DisconnectReason {
    match frame {
        Some(f) if f.code == tungstenite::protocol::frame::coding::CloseCode::Protocol => {
            DisconnectReason::ProtocolError
        }
        _ => DisconnectReason::ClientClosed,
    }
}

impl Inbound for Reader {
    async fn data(&mut self, bytes: &[u8], encoding: Encoding) -> Option<DisconnectReason> {
        // Boxed: the command futures (the largest state of a session)
        // live on the heap only while a command runs, so an idle
        // connection's task stays small.
        Box::pin(self.on_frame(bytes, encoding)).await
    }
}

impl Reader {
    pub(super) fn reply(&self, frame: ServerFrame) {
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
            Err(e) => {
                let code = e.code();
                let message = e.to_string();
                span.record("result", code.as_str());
                if matches!(code, ErrorCode::Internal | ErrorCode::Unavailable) {
                    span.record("otel.status_code", "ERROR");
                }
                self.fail(kind, code, message, reference);
            }
        }
        None
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

/// Maps a read error of the WebSocket layer to a disconnect reason.
pub(super) fn classify(error: tungstenite::Error) -> DisconnectReason {
    use tungstenite::Error as WsError;
    match error {
        WsError::Capacity(_) => DisconnectReason::FrameTooLarge,
        WsError::Utf8(_) => DisconnectReason::InvalidUtf8,
        WsError::Protocol(_) => DisconnectReason::ProtocolError,
        _ => DisconnectReason::ClientClosed,
    }
}
