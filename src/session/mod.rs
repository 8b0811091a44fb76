//! One WebSocket connection: the transport and its two tasks. The reader
//! (`reader.rs`) decodes frames (tungstenite), applies the token bucket and
//! limits, and runs commands (`commands.rs`) by asking the node. The writer
//! (`writer.rs`) drains the bounded outbound queue of pre-built frames
//! (everything queued, in as few `send()` calls as the socket takes, see
//! [`wire`]) and owns pings, pongs and the close frame.
//!
//! This module knows nothing of the backplane: it talks to
//! [`crate::node::Node`] only, and takes its frames and queue from
//! [`crate::outbound`].

mod commands;
pub mod echo;
pub mod limit;
mod reader;
pub mod wire;
mod writer;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;

use crate::node::{Node, SessionHandle, UserLease};
use crate::outbound::DisconnectReason;
use crate::protocol::{Encoding, Limits, ServerFrame};
use limit::TokenBucket;
use reader::Reader;
use wire::{ReadSide, WriteSide};

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
    /// Outbound queue capacity in bytes.
    pub max_queue_bytes: usize,
    /// Input limits.
    pub limits: Limits,
}

/// How long the writer may take to deliver a close frame.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The token a session authenticated with (token and JWT modes).
#[derive(Debug, Clone)]
pub struct TokenSession {
    /// When the token expires (the session closes with 4001).
    pub expires: Instant,
    /// What a revocation compares (issue time, token id).
    pub credential: crate::node::Credential,
}

/// Runs a connection to its end. `token`: the session's token, whose expiry
/// or revocation closes it with 4001. Run it inside the connection's `session` span
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
    token: Option<TokenSession>,
) -> impl std::future::Future<Output = ()> + Send {
    let handle = node.open_session(&user, encoding, config.max_queue, config.max_queue_bytes);
    let expires = token.map(|t| {
        let _ = handle.credential.set(t.credential);
        t.expires
    });
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
    let writer = node.tasks.spawn(writer::write_loop(
        sink,
        handle.queue.clone(),
        last_seen.clone(),
        started,
        config.heartbeat,
        writer_done.clone(),
    ));

    let mut reader = Reader {
        node: node.clone(),
        handle: handle.clone(),
        config: config.clone(),
        bucket: TokenBucket::new(config.rate),
    };
    drop((user, config));
    async move {
        let read_reason = reader::read_loop(
            &mut reader,
            &handle.queue,
            &mut stream,
            &last_seen,
            started,
            &writer_done,
            expires,
        )
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
    stream: WsReader,
    writer: tokio::task::JoinHandle<writer::WriterEnd>,
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
        stream,
        writer,
        read_reason,
        enc_label,
        started,
    } = f;
    let metrics = node.metrics.clone();
    // The session is over: release the user and leave every room, before
    // the closing handshake, which may take a while with an unresponsive
    // peer.
    node.end_session(&handle, lease).await;
    let reason = close(stream, writer, read_reason).await;

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

/// The end of any connection: completes the closing handshake and makes
/// sure the writer is gone. While the writer sends our close frame, keep
/// reading (and discarding) until the peer's close frame or EOF: dropping a
/// socket with unread input would reset it and could destroy our close
/// frame. Not when the writer ended without getting its close frame out:
/// there is no handshake to complete then. The writer sends the close frame
/// within CLOSE_TIMEOUT (each of its writes is bounded); past that it is
/// aborted, which drops the socket's write half and the queued frames:
/// nothing of the connection outlives it by more than a few seconds,
/// whatever the peer does. Returns the connection's one reason.
async fn close(
    mut stream: WsReader,
    mut writer: tokio::task::JoinHandle<writer::WriterEnd>,
    read_reason: Option<DisconnectReason>,
) -> DisconnectReason {
    let mut ended = None;
    if read_reason != Some(DisconnectReason::ClientClosed) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            loop {
                tokio::select! {
                    end = &mut writer, if ended.is_none() => {
                        let end = end.ok();
                        ended = Some(end);
                        if !end.is_some_and(|e| e.close_sent) {
                            break;
                        }
                    }
                    m = stream.next() => match m {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
        })
        .await;
    }
    let end = match ended {
        Some(end) => end,
        None => match tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await {
            Ok(end) => end.ok(),
            Err(_) => {
                writer.abort();
                None
            }
        },
    };
    drop(stream);
    end.map_or(DisconnectReason::WriteError, |e| e.reason)
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
