//! The writer task of a connection: drains the bounded outbound queue of
//! pre-built frames (everything queued, in as few `send()` calls as the
//! socket takes), sends a ping every heartbeat, closes a connection silent
//! for two heartbeats or whose socket takes no byte for two heartbeats (a
//! peer that stopped reading), and ends with the close frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{self, WriteSide};
use super::CLOSE_TIMEOUT;
use crate::outbound::{Batch, DisconnectReason, Frame, OutQueue};

/// How a writer ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct WriterEnd {
    /// Why the connection ends.
    pub(super) reason: DisconnectReason,
    /// Whether the close frame reached the socket (else there is no closing
    /// handshake to wait for).
    pub(super) close_sent: bool,
}

/// Writes queued frames, pings, and the close frame. Returns why it stopped.
pub(super) async fn write_loop(
    mut sink: WriteSide,
    queue: Arc<OutQueue>,
    last_seen: Arc<AtomicU64>,
    started: Instant,
    heartbeat: Duration,
    done: CancellationToken,
) -> WriterEnd {
    let reason = write_frames(&mut sink, &queue, &last_seen, started, heartbeat).await;
    let mut close_sent = false;
    if reason != DisconnectReason::WriteError {
        let frame = Frame::close(reason.close_code(), reason.close_text());
        // A slow consumer's socket is known to be backed up: a short try.
        let within = if reason == DisconnectReason::SlowConsumer {
            Duration::from_secs(1)
        } else {
            CLOSE_TIMEOUT
        };
        // Boxed: its timer would otherwise enlarge every writer's state.
        close_sent = Box::pin(async {
            wire::write_frames(&mut sink, std::slice::from_ref(&frame), within).await?;
            sink.flush(within).await
        })
        .await
        .is_ok();
    }
    done.cancel();
    WriterEnd { reason, close_sent }
}

async fn write_frames(
    sink: &mut WriteSide,
    queue: &OutQueue,
    last_seen: &AtomicU64,
    started: Instant,
    heartbeat: Duration,
) -> DisconnectReason {
    // A write that makes no progress this long ends the connection.
    let stall = heartbeat * 2;
    let mut ticker = tokio::time::interval_at(started + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Batch::default();
    loop {
        let mut ping = false;
        tokio::select! {
            biased;
            _ = queue.wait() => {}
            _ = ticker.tick() => {
                let seen = started + Duration::from_millis(last_seen.load(Ordering::Relaxed));
                if seen.elapsed() > heartbeat * 2 {
                    return DisconnectReason::HeartbeatTimeout;
                }
                ping = true;
            }
        }
        queue.take(&mut batch);
        if let Some(DisconnectReason::SlowConsumer) = batch.close {
            return DisconnectReason::SlowConsumer;
        }
        if ping && batch.close.is_none() {
            batch.frames.push(Frame::ping());
        }
        if wire::write_frames(sink, &batch.frames, stall)
            .await
            .is_err()
        {
            return DisconnectReason::WriteError;
        }
        // Free the batch now: a large one must not stay resident while the
        // connection idles.
        if batch.frames.capacity() > 64 {
            batch.frames = Vec::new();
        } else {
            batch.frames.clear();
        }
        if let Some(reason) = batch.close {
            return reason;
        }
        if sink.flush(stall).await.is_err() {
            return DisconnectReason::WriteError;
        }
    }
}
