//! The bounded outbound queue of one connection, bounded in frames and in
//! bytes. Producers (fan-out, command replies) never block: a push onto a
//! full queue marks the connection as a slow consumer instead. The writer takes everything queued at once, feeds it
//! to the socket and flushes once.
//!
//! A `std::sync::Mutex` is right here: it is held for a push or a swap, never
//! across an await. The writer always takes everything, so the queue is a
//! plain `Vec` swapped with the writer's (emptied) one: no per-frame copy on
//! the way out, and the two allocations are reused in turn. An empty `Vec`
//! allocates nothing, which keeps idle connections small.

use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use super::frame::Frame;
use super::reason::DisconnectReason;

#[derive(Default)]
struct State {
    items: Vec<Frame>,
    /// Bytes of `items` on the wire.
    bytes: usize,
    close: Option<DisconnectReason>,
}

/// The bytes a queue holds at most by default (`--max-queue-bytes`).
pub const DEFAULT_MAX_BYTES: usize = 4 << 20;

/// Outbound queue of already-encoded frames.
pub struct OutQueue {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    max_bytes: usize,
    /// Counts frames lost to an overflow (`relay_queue_dropped_frames_total`).
    dropped: Option<Counter>,
}

/// What the writer takes from the queue.
#[derive(Default)]
pub struct Batch {
    /// Frames to write, in order.
    pub frames: Vec<Frame>,
    /// Set when the connection must be closed after (or instead of) them.
    pub close: Option<DisconnectReason>,
}

impl OutQueue {
    /// A queue holding at most `capacity` frames (and the default byte bound).
    pub fn new(capacity: usize) -> Self {
        Self::bounded(capacity, DEFAULT_MAX_BYTES)
    }

    /// A queue holding at most `capacity` frames and `max_bytes` bytes (a
    /// single frame larger than that is still taken by an empty queue).
    pub fn bounded(capacity: usize, max_bytes: usize) -> Self {
        OutQueue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            dropped: None,
        }
    }

    /// A queue that counts in `dropped` every frame an overflow loses: the
    /// backlog discarded when it overflows, the frame that overflowed it, and
    /// frames offered afterwards until the connection is gone.
    pub fn with_drop_counter(capacity: usize, max_bytes: usize, dropped: Counter) -> Self {
        OutQueue {
            dropped: Some(dropped),
            ..Self::bounded(capacity, max_bytes)
        }
    }

    fn count_dropped(&self, n: usize) {
        if let Some(c) = &self.dropped {
            c.inc_by(n as u64);
        }
    }

    /// Queues a frame. Returns false when the queue is closed or was full (in
    /// which case it is now closed as a slow consumer).
    pub fn push(&self, frame: Frame) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if let Some(reason) = state.close {
            drop(state);
            if reason == DisconnectReason::SlowConsumer {
                self.count_dropped(1);
            }
            return false;
        }
        let len = frame.as_bytes().len();
        let over_bytes = !state.items.is_empty() && state.bytes + len > self.max_bytes;
        if state.items.len() >= self.capacity || over_bytes {
            state.close = Some(DisconnectReason::SlowConsumer);
            let lost = state.items.len() + 1;
            state.items = Vec::new();
            state.bytes = 0;
            drop(state);
            self.count_dropped(lost);
            self.notify.notify_one();
            return false;
        }
        let wake = state.items.is_empty();
        state.bytes += len;
        state.items.push(frame);
        drop(state);
        if wake {
            self.notify.notify_one();
        }
        true
    }

    /// Asks the writer to close the connection; the first reason wins.
    /// Frames already queued are still written, except for a slow consumer.
    pub fn close(&self, reason: DisconnectReason) {
        if let Ok(mut state) = self.state.lock() {
            if state.close.is_none() {
                state.close = Some(reason);
            }
        }
        self.notify.notify_one();
    }

    /// The close reason, if the queue was closed.
    pub fn closed(&self) -> Option<DisconnectReason> {
        self.state.lock().ok().and_then(|s| s.close)
    }

    /// Bytes queued (on the wire).
    pub fn bytes(&self) -> usize {
        self.state.lock().map(|s| s.bytes).unwrap_or(0)
    }

    /// Number of queued frames.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.items.len()).unwrap_or(0)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes everything queued: swaps the queue's frames with `out.frames`
    /// (emptied first, so its allocation is reused by the next pushes).
    pub fn take(&self, out: &mut Batch) {
        out.frames.clear();
        if out.frames.capacity() > 64 {
            // Give memory back after a burst.
            out.frames = Vec::new();
        }
        if let Ok(mut state) = self.state.lock() {
            std::mem::swap(&mut out.frames, &mut state.items);
            state.bytes = 0;
            out.close = state.close;
        } else {
            out.close = Some(DisconnectReason::Internal);
        }
    }

    /// Waits until something was pushed or the queue was closed.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_as_slow_consumer() {
        let q = OutQueue::new(2);
        assert!(q.push(Frame::text(b"a")));
        assert!(q.push(Frame::text(b"b")));
        assert!(!q.push(Frame::text(b"c")));
        assert_eq!(q.closed(), Some(DisconnectReason::SlowConsumer));
        let mut b = Batch::default();
        q.take(&mut b);
        assert!(b.frames.is_empty(), "a slow consumer's backlog is dropped");
        assert_eq!(b.close, Some(DisconnectReason::SlowConsumer));
    }

    #[test]
    fn overflow_losses_are_counted() {
        let dropped = Counter::default();
        let q = OutQueue::with_drop_counter(2, DEFAULT_MAX_BYTES, dropped.clone());
        assert!(q.push(Frame::text(b"a")));
        assert!(q.push(Frame::text(b"b")));
        assert_eq!(dropped.get(), 0);
        assert!(!q.push(Frame::text(b"c")));
        assert_eq!(dropped.get(), 3, "the backlog and the overflowing frame");
        assert!(!q.push(Frame::text(b"d")));
        assert_eq!(dropped.get(), 4, "frames offered after the overflow");
        let other = OutQueue::with_drop_counter(2, DEFAULT_MAX_BYTES, dropped.clone());
        other.close(DisconnectReason::Draining);
        assert!(!other.push(Frame::text(b"e")));
        assert_eq!(dropped.get(), 4, "a closing queue is no overflow");
    }

    #[test]
    fn overflow_in_bytes_closes_as_slow_consumer() {
        let q = OutQueue::bounded(1000, 100);
        let big = Frame::binary(&[0u8; 60]); // 62 bytes on the wire
        assert!(
            q.push(Frame::binary(&[0u8; 500])),
            "an empty queue takes any frame"
        );
        let mut b = Batch::default();
        q.take(&mut b);
        assert_eq!(q.bytes(), 0, "taking empties the byte count");
        assert!(q.push(big.clone()));
        assert_eq!(q.bytes(), 62);
        assert!(!q.push(big), "124 bytes > 100");
        assert_eq!(q.closed(), Some(DisconnectReason::SlowConsumer));
        q.take(&mut b);
        assert!(b.frames.is_empty());
    }

    #[test]
    fn close_keeps_queued_frames_and_first_reason_wins() {
        let q = OutQueue::new(8);
        q.push(Frame::text(b"a"));
        q.close(DisconnectReason::Draining);
        q.close(DisconnectReason::Policy);
        assert!(!q.push(Frame::text(b"b")));
        let mut b = Batch::default();
        q.take(&mut b);
        assert_eq!(b.frames.len(), 1);
        assert_eq!(b.close, Some(DisconnectReason::Draining));
    }

    #[tokio::test]
    async fn push_wakes_the_waiter() {
        let q = std::sync::Arc::new(OutQueue::new(8));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.wait().await });
        tokio::task::yield_now().await;
        q.push(Frame::text(b"x"));
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
