//! The writer task of a connection: drains the bounded outbound queue of
//! pre-built frames (everything queued, in as few `send()` calls as the
//! socket takes), sends a ping every heartbeat, closes a connection silent
//! for two heartbeats, and ends with the close frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{self, WriteSide};
use super::CLOSE_TIMEOUT;
use crate::node::SessionHandle;
use crate::outbound::{Batch, DisconnectReason, Frame};

/// Writes queued frames, pings, and the close frame. Returns why it stopped.
pub(super) async fn write_loop(
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
