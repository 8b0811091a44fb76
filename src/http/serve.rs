//! The accept loop: plain TCP or TLS, a cap on open connections, a deadline
//! for the TLS handshake and the HTTP request head (slowloris), HTTP/1.1 with
//! upgrades via hyper, and the peer address handed to handlers as
//! `ConnectInfo`. One client address holds at most a share of the slots
//! (`limits::per_address_share`; trusted proxies are exempt), so one host's
//! idle or slow connections cannot starve `/healthz` from another.
//! Upgraded WebSockets leave hyper and are tracked by the node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::limits::{per_address_share, PerIp};
use crate::metrics::Metrics;

/// Settings of the accept loop.
pub struct ServeOptions {
    /// TLS, when serving `https://`/`wss://` directly.
    pub tls: Option<TlsAcceptor>,
    /// Deadline of the TLS handshake and of each HTTP request head.
    pub handshake_timeout: Duration,
    /// Most TCP connections still speaking HTTP (an upgraded WebSocket
    /// leaves this count; the node caps sessions separately).
    pub max_tcp: usize,
    /// Peers exempt from the per-address share (`--trusted-proxies`: every
    /// client behind a proxy shares its address).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Metrics (refusals).
    pub metrics: Arc<Metrics>,
}

/// Serves `router` on `listener` until `stop` is cancelled; then waits (at
/// most `grace`) for in-flight HTTP requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    stop: CancellationToken,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(options.max_tcp));
    let per_address = Arc::new(PerIp::default());
    let share = per_address_share(options.max_tcp);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = peer.ip();
        let address_slot = if options.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            None
        } else {
            match per_address.acquire(ip, share) {
                Some(slot) => Some(slot),
                None => {
                    options.metrics.refused("tcp_ip_limit");
                    drop(tcp);
                    continue;
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            options.metrics.refused("tcp_limit");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let watcher = stop.clone();
        let tls = options.tls.clone();
        let timeout = options.handshake_timeout;
        let metrics = options.metrics.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _address_slot = address_slot;
            match tls {
                None => serve_connection(tcp, peer, router, timeout, watcher).await,
                Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        serve_connection(stream, peer, router, timeout, watcher).await
                    }
                    Ok(Err(e)) => {
                        metrics.refused("tls_error");
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                    }
                    Err(_) => {
                        metrics.refused("handshake_timeout");
                        tracing::debug!(%peer, "tls handshake timed out");
                    }
                },
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("some HTTP connections were still open at shutdown");
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    timeout: Duration,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            // Finish the request in flight, then close; upgraded sockets
            // have left hyper already and are drained by the node.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::trace!(%peer, error = %e, "http connection ended with an error");
    }
}
