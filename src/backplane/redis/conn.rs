//! The command connection: one multiplexed Redis connection (commands are
//! pipelined over it by every caller concurrently) with its own supervisor.
//!
//! Why not a pool or `ConnectionManager`: while Redis is unreachable every
//! call must fail *immediately* (`Unavailable`), not queue behind a
//! reconnection attempt, and the backplane must know when a new connection
//! came up so it can re-register its state. So: a call takes the current
//! connection or fails at once; a connection-level error marks it down; the
//! supervisor reconnects with capped exponential backoff and full jitter and
//! then signals `reconnected`. A call that meets a connection broken since
//! it was last used (Redis restarted meanwhile) waits for the supervisor's
//! new connection, within its own timeout, and is retried once on it, so
//! the first request after Redis is back succeeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, ErrorKind, RedisError, RedisFuture, ServerErrorKind, Value,
};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::backplane::BackplaneError;

/// Capped exponential backoff with jitter: attempt n waits a random time in
/// `[d/2, d]` where `d = min(cap, base * 2^n)`.
#[derive(Debug)]
pub(super) struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub(super) fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let ms = exp.as_millis() as u64;
        Duration::from_millis(rand::random_range(ms / 2..=ms.max(1)))
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// True when the connection must be replaced: it is broken, or it points
/// at a server that is no longer the primary (after a failover the same
/// address may now be a read-only replica).
pub(super) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly))
}

/// Maps a Redis error to the backplane's: anything that says "the store is
/// not reachable or not serving now" is `Unavailable`, the rest `Internal`.
pub(super) fn map_error(op: &str, e: RedisError) -> BackplaneError {
    let transient = is_connection_error(&e)
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::ClusterConnectionNotFound)
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
        );
    if transient {
        BackplaneError::Unavailable(format!("{op}: {e}"))
    } else {
        BackplaneError::Internal(format!("{op}: {e}"))
    }
}

/// The supervised command connection.
pub(super) struct Conn {
    client: Client,
    config: AsyncConnectionConfig,
    timeout: Duration,
    /// The current connection and its generation; `None` while down.
    current: RwLock<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    /// Wakes the supervisor when the connection went down.
    wake: Notify,
    /// Signalled after every successful reconnection.
    pub(super) reconnected: Notify,
    /// The generation of the connection last installed and the number of
    /// failed reconnection attempts so far, for callers waiting for a
    /// replacement.
    installed: watch::Sender<(u64, u64)>,
}

impl Conn {
    /// Connects (bounded by `timeout`).
    pub(super) async fn open(client: Client, timeout: Duration) -> Result<Self, BackplaneError> {
        // No response timeout in the driver (its default is 500 ms): a slow
        // reply is not a broken connection. Calls are bounded by the
        // backplane's own timeout; a heartbeat that times out replaces the
        // connection.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        let con = Self::dial(&client, &config, timeout)
            .await
            .map_err(|e| map_error("connect", e))?;
        Ok(Conn {
            client,
            config,
            timeout,
            current: RwLock::new(Some((1, con))),
            generation: AtomicU64::new(1),
            wake: Notify::new(),
            reconnected: Notify::new(),
            installed: watch::Sender::new((1, 0)),
        })
    }

    async fn dial(
        client: &Client,
        config: &AsyncConnectionConfig,
        timeout: Duration,
    ) -> Result<MultiplexedConnection, RedisError> {
        match tokio::time::timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(config),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))),
        }
    }

    /// The current connection (cheap clone) and its generation.
    pub(super) fn get(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a connection is up.
    pub(super) fn is_up(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Marks connection `generation` broken (a later generation is kept).
    pub(super) fn mark_down(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if matches!(&*current, Some((g, _)) if *g == generation) {
            *current = None;
            drop(current);
            tracing::warn!("redis command connection lost; reconnecting");
            self.wake.notify_one();
        }
    }

    /// A connection newer than `failed` (which the caller just saw broken
    /// and marked down): waits for the supervisor's next reconnection
    /// attempt, at most until `deadline`; `None` if that attempt failed
    /// (Redis is really down: no point waiting for the backoff) or did not
    /// finish in time.
    pub(super) async fn replacement(
        &self,
        failed: u64,
        deadline: tokio::time::Instant,
    ) -> Option<(u64, MultiplexedConnection)> {
        let mut installed = self.installed.subscribe();
        let failures = installed.borrow().1;
        let outcome = installed.wait_for(|(g, f)| *g > failed || *f > failures);
        tokio::time::timeout_at(deadline, outcome)
            .await
            .ok()?
            .ok()?;
        self.get().filter(|(g, _)| *g > failed)
    }

    /// Reconnects whenever the connection is down, until cancelled.
    /// `on_reconnect` runs after each successful reconnection.
    pub(super) async fn supervise(
        &self,
        cancel: &CancellationToken,
        backoff_cap: Duration,
        on_reconnect: impl Fn(),
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(50), backoff_cap);
        loop {
            while self.is_up() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.wake.notified() => {}
                }
            }
            loop {
                let attempt = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = Self::dial(&self.client, &self.config, self.timeout) => r,
                };
                match attempt {
                    Ok(con) => {
                        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                            Some((generation, con));
                        self.installed.send_modify(|(g, _)| *g = generation);
                        tracing::info!("redis command connection restored");
                        backoff.reset();
                        on_reconnect();
                        self.reconnected.notify_one();
                        break;
                    }
                    Err(e) => {
                        self.installed.send_modify(|(_, f)| *f += 1);
                        let delay = backoff.next_delay();
                        tracing::debug!(error = %e, ?delay, "redis reconnect failed");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }
}

/// A command connection of either deployment, as the scripts and commands
/// see it: a multiplexed connection to one Redis, or the crate's cluster
/// connection (which routes each command by its first key's slot, follows
/// `MOVED`/`ASK` and reconnects to each shard by itself).
#[derive(Clone)]
pub(super) enum AnyConn {
    /// One Redis.
    Single(MultiplexedConnection),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConn::Single(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Single(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The command path of the backplane: the supervised single connection, or
/// a cluster connection. On a cluster there is no node-wide "down": each
/// shard fails (and recovers) on its own, so a call fails only when the
/// shard owning its keys does not answer within the call's timeout.
pub(super) enum Commands {
    /// One Redis ([`Conn`]).
    Single(Box<Conn>),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

impl Commands {
    /// The connection to use now and its generation (always 0 on a
    /// cluster); `None` while the single connection is down.
    pub(super) fn get(&self) -> Option<(u64, AnyConn)> {
        match self {
            Commands::Single(c) => c.get().map(|(g, con)| (g, AnyConn::Single(con))),
            Commands::Cluster(c) => Some((0, AnyConn::Cluster(c.clone()))),
        }
    }

    /// Marks the single connection broken (no-op on a cluster).
    pub(super) fn mark_down(&self, generation: u64) {
        if let Commands::Single(c) = self {
            c.mark_down(generation);
        }
    }

    /// After connection `failed` broke: the single connection's
    /// replacement, once the supervisor has dialled it (at most until
    /// `deadline`). `None` on a cluster, whose connection reconnects each
    /// shard by itself.
    pub(super) async fn replacement(
        &self,
        failed: u64,
        deadline: tokio::time::Instant,
    ) -> Option<(u64, AnyConn)> {
        match self {
            Commands::Single(c) => c
                .replacement(failed, deadline)
                .await
                .map(|(g, con)| (g, AnyConn::Single(con))),
            Commands::Cluster(_) => None,
        }
    }

    /// Whether commands can be sent (always on a cluster).
    pub(super) fn is_up(&self) -> bool {
        match self {
            Commands::Single(c) => c.is_up(),
            Commands::Cluster(_) => true,
        }
    }

    /// Resolves after the single connection was restored; never on a
    /// cluster.
    pub(super) async fn reconnected(&self) {
        match self {
            Commands::Single(c) => c.reconnected.notified().await,
            Commands::Cluster(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(25) && delays[0] <= Duration::from_millis(50));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(delays[9] >= Duration::from_millis(200));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
    }
}
