//! Node lifecycle: build the backplane and node from the configuration, serve
//! HTTP on an already bound listener, and drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::jwks::Jwks;
use crate::auth::{jwt, Verifier};
use crate::backplane::memory::MemoryBackplane;
use crate::backplane::redis::{RedisBackplane, RedisOptions};
use crate::backplane::SharedBackplane;
use crate::config::{AuthMode, Config};
use crate::http::limits::{AttemptLimiter, PerIp};
use crate::http::serve::{serve, ServeOptions};
use crate::http::tls::{ReloadingCert, TlsError};
use crate::http::{admin_router, router, AppState};
use crate::metrics::Metrics;
use crate::node::{Node, NodeLimits};
use crate::protocol::Limits;
use crate::session::SessionConfig;

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Listening or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// TLS files could not be used.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The backplane could not be reached at start-up.
    #[error("backplane: {0}")]
    Backplane(#[from] crate::backplane::BackplaneError),
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
}

/// File descriptors kept free for everything that is not a client socket
/// (Redis connections, log files, the listener, HTTP requests).
const FD_RESERVE: u64 = 256;

/// The accept queue of the listening socket. The default of `std`/tokio
/// (128) overflows when thousands of clients reconnect at once (a node
/// drain or restart); the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the HTTP listener with `SO_REUSEADDR` (a restarted node can take
/// its port back at once) and a [`LISTEN_BACKLOG`] accept queue.
pub fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024),
    }
}

/// Builds the backplane: Redis with `--redis` (retrying for a while when
/// Redis is not up yet), in-memory otherwise.
async fn connect_backplane(
    config: &Config,
    node_id: &str,
    metrics: &Arc<Metrics>,
) -> Result<SharedBackplane, ServeError> {
    let Some(url) = &config.redis else {
        tracing::info!("no --redis: single node, state in memory");
        return Ok(Arc::new(MemoryBackplane::standalone(node_id)));
    };
    let options = RedisOptions {
        prefix: config.redis_prefix.clone(),
        heartbeat: config.heartbeat(),
        presence_ttl: config.presence_ttl(),
        command_timeout: Duration::from_millis(config.redis_timeout_ms.max(10)),
        room_idle_ttl: Duration::from_secs(config.room_idle_ttl_secs),
    };
    let mut attempt = 0u32;
    loop {
        match RedisBackplane::connect(url, node_id.to_owned(), options.clone()).await {
            Ok(bp) => {
                bp.set_metrics(metrics.clone());
                tracing::info!(instance = bp.instance(), "connected to the Redis backplane");
                return Ok(Arc::new(bp));
            }
            // Only an unreachable Redis is worth waiting for; a bad URL or
            // setting will not get better.
            Err(e @ crate::backplane::BackplaneError::Internal(_)) => return Err(e.into()),
            Err(e) if attempt < 30 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "Redis not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How the node verifies tokens (`None`: guest mode). With `--jwks-url` the
/// document is fetched once here (bounded; a failure is logged and the node
/// starts with an empty cache) and refreshed until `stop`.
pub async fn verifier(
    config: &Config,
    stop: &CancellationToken,
) -> Result<Option<Arc<Verifier>>, ServeError> {
    Ok(match config.auth {
        AuthMode::Guest => None,
        AuthMode::Token => {
            let secrets = config.secret.clone().unwrap_or_default();
            let keys = crate::auth::TokenKeys::new(&secrets, config.token_ttl_secs)
                .ok_or_else(|| ServeError::Config("--auth token needs --secret".into()))?;
            Some(Arc::new(Verifier::Token(keys)))
        }
        AuthMode::Jwt => {
            let pem = match &config.jwt_key {
                Some(path) => jwt::load_pem_keys(path).map_err(ServeError::Config)?,
                None => Vec::new(),
            };
            let jwks = match &config.jwks_url {
                Some(url) => {
                    let jwks = Jwks::new(url).map_err(ServeError::Config)?;
                    match jwks.fetch().await {
                        Ok(n) => tracing::info!(url, keys = n, "JWKS loaded"),
                        Err(e) => {
                            tracing::warn!(url, error = %e, "JWKS not loaded at start; retried on the first unknown kid")
                        }
                    }
                    tokio::spawn(jwks.clone().refresh_until(stop.clone()));
                    Some(jwks)
                }
                None => None,
            };
            let settings = jwt::JwtSettings {
                secrets: config.jwt_secret.clone().unwrap_or_default(),
                issuer: config.jwt_issuer.clone(),
                audience: config.jwt_audience.clone(),
                leeway_secs: config.jwt_leeway_secs,
            };
            Some(Arc::new(Verifier::Jwt(jwt::JwtKeys::new(
                settings, pem, jwks,
            ))))
        }
    })
}

/// Runs a node on `listener` until `shutdown` resolves, then drains: the
/// node stops accepting sockets, closes the open ones with 1001 spread over
/// `--drain-secs`, and returns once they are gone.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let admin = match config.admin_listen {
        Some(addr) => Some(bind_listener(addr)?),
        None => None,
    };
    run_with_admin(config, listener, admin, shutdown).await
}

/// [`run`] with the `--admin-listen` listener already bound (`None`: no
/// admin port; `/metrics` stays on the public listener).
pub async fn run_with_admin(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let node_id = config.resolved_node_id();
    let metrics = Arc::new(Metrics::new());
    let nofile = raise_nofile_limit();
    // Descriptors: WebSocket sessions + HTTP connections not (yet) upgraded
    // + a reserve must fit under the open-file limit.
    let http_slots = (nofile / 10).clamp(64, 4096) as usize;
    let max_connections = config.max_connections.unwrap_or_else(|| {
        nofile
            .saturating_sub(FD_RESERVE + http_slots as u64)
            .max(16) as usize
    });
    if let Some(secrets) = &config.secret {
        crate::auth::check_secrets("--secret", secrets).map_err(ServeError::Config)?;
    }
    let stop_tasks = CancellationToken::new();
    let verifier = verifier(&config, &stop_tasks).await?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let reloading = ReloadingCert::load(cert, key)?;
            reloading.watch(stop_tasks.clone());
            Some(reloading.acceptor()?)
        }
        _ => None,
    };

    let backplane = connect_backplane(&config, &node_id, &metrics).await?;
    let node = Node::with_limits(
        backplane.clone(),
        config.auth == AuthMode::Guest,
        metrics.clone(),
        NodeLimits {
            max_rooms_per_conn: config.max_rooms_per_conn as usize,
        },
    );
    node.start();
    let session = Arc::new(SessionConfig {
        heartbeat: config.heartbeat(),
        rate: config.rate,
        max_queue: config.max_queue as usize,
        max_queue_bytes: config.max_queue_bytes as usize,
        limits: Limits {
            max_text_chars: config.max_text_chars as usize,
        },
    });
    let drain = config.drain();
    let attempts = Arc::new(AttemptLimiter::new(config.login_rate));
    {
        let attempts = attempts.clone();
        let stop = stop_tasks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => attempts.sweep(),
                }
            }
        });
    }
    {
        // `relay_cluster_nodes`: the live nodes as this node sees them,
        // refreshed every heartbeat (kept as is while the backplane fails).
        if let Ok(nodes) = node.nodes().await {
            metrics.cluster_nodes.set(nodes.len() as i64);
        }
        let node = node.clone();
        let metrics = metrics.clone();
        let stop = stop_tasks.clone();
        let period = config.heartbeat();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                // Not while draining: the backplane is being shut down.
                if node.is_draining() {
                    continue;
                }
                if let Ok(nodes) = node.nodes().await {
                    metrics.cluster_nodes.set(nodes.len() as i64);
                }
            }
        });
    }
    let handshake_timeout = config.handshake_timeout();
    let state_proxies = config.trusted_proxies.clone();
    let state = AppState {
        node: node.clone(),
        config: Arc::new(config),
        session,
        verifier,
        attempts,
        per_ip: Arc::new(PerIp::default()),
        max_connections,
    };
    metrics.connections_max.set(max_connections as i64);
    let admin_app = admin.as_ref().map(|_| admin_router(state.clone()));
    let app = router(state);
    tracing::info!(addr = %listener.local_addr()?, node = node_id, max_connections, tls = tls.is_some(), "relay listening");

    let stop_http = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        app,
        ServeOptions {
            tls,
            handshake_timeout,
            max_tcp: http_slots,
            trusted_proxies: state_proxies,
            metrics,
        },
        stop_http.clone(),
        Duration::from_secs(3),
    ));

    // The admin port (metrics, health) answers until the very end of a drain.
    let stop_admin = CancellationToken::new();
    let admin_server = match (admin, admin_app) {
        (Some(listener), Some(app)) => {
            tracing::info!(addr = %listener.local_addr()?, "admin listening (/metrics, /healthz, /readyz)");
            let stop = stop_admin.clone();
            Some(tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "admin listener failed");
                }
            }))
        }
        _ => None,
    };

    shutdown.await;
    tracing::info!("shutdown requested");
    node.drain(drain).await;
    stop_http.cancel();
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::warn!("http server did not stop in time");
    }
    node.shutdown_backplane().await;
    stop_admin.cancel();
    if let Some(admin) = admin_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    }
    stop_tasks.cancel();
    node.tasks.close();
    if tokio::time::timeout(Duration::from_secs(3), node.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish in time");
    }
    tracing::info!("drained, bye");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections larger than the old default backlog (128)
    /// completes its TCP handshakes while nothing accepts yet.
    #[tokio::test]
    async fn the_accept_queue_holds_a_reconnect_burst() {
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(LISTEN_BACKLOG);
        let burst = 600.min(somaxconn.min(LISTEN_BACKLOG) as usize);
        let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..burst).map(|_| async move {
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
                .ok()
                .and_then(Result::ok)
        });
        let streams = futures_util::future::join_all(connects).await;
        let queued = streams.iter().filter(|s| s.is_some()).count();
        assert_eq!(queued, burst, "every connection of the burst was queued");
        drop(listener);
    }
}
