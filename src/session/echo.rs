//! An echo connection on exactly the session's transport: the same reader
//! loop, writer task, bounded queue and closing handshake as a chat
//! session, with an inbound handler that sends every message back. It
//! exists so the transport can be checked against the Autobahn|Testsuite
//! (RFC 6455) cases with `examples/echo.rs`; no node is involved.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reader::{read_loop, Inbound};
use super::{close, writer, Socket};
use crate::outbound::{DisconnectReason, Frame, OutQueue};
use crate::protocol::Encoding;

/// Sends each data message back as it came (text as text, binary as binary).
struct Echo {
    queue: Arc<OutQueue>,
}

impl Inbound for Echo {
    async fn data(&mut self, bytes: &[u8], encoding: Encoding) -> Option<DisconnectReason> {
        let frame = match encoding {
            Encoding::Json => Frame::text(bytes),
            Encoding::MsgPack => Frame::binary(bytes),
        };
        self.queue.push(frame);
        None
    }
}

/// Runs an echo connection to its end; returns why it ended.
pub async fn run(
    socket: Socket,
    heartbeat: Duration,
    max_queue: usize,
    max_queue_bytes: usize,
) -> DisconnectReason {
    let Socket {
        reader: mut stream,
        writer: sink,
    } = socket;
    let queue = Arc::new(OutQueue::bounded(max_queue, max_queue_bytes));
    let started = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let writer_done = CancellationToken::new();
    let writer = tokio::spawn(writer::write_loop(
        sink,
        queue.clone(),
        last_seen.clone(),
        started,
        heartbeat,
        writer_done.clone(),
    ));
    let mut echo = Echo {
        queue: queue.clone(),
    };
    let read_reason = read_loop(
        &mut echo,
        &queue,
        &mut stream,
        &last_seen,
        started,
        &writer_done,
        None,
    )
    .await;
    if let Some(reason) = read_reason {
        queue.close(reason);
    }
    close(stream, writer, read_reason).await
}
