//! Node lifecycle: build the backplane and node from the configuration, serve
//! HTTP on an already bound listener, and drain on shutdown.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::backplane::memory::MemoryBackplane;
use crate::backplane::SharedBackplane;
use crate::config::{AuthMode, Config};
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::protocol::Limits;
use crate::session::SessionConfig;

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Listening or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs a node on `listener` until `shutdown` resolves, then drains: the
/// node stops accepting sockets, closes the open ones with 1001 spread over
/// `--drain-secs`, and returns once they are gone.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let node_id = config.resolved_node_id();
    let metrics = Arc::new(Metrics::new());
    let backplane: SharedBackplane = Arc::new(MemoryBackplane::standalone(node_id.clone()));
    let node = Node::new(backplane.clone(), config.auth == AuthMode::Guest, metrics);
    node.start();
    let session = Arc::new(SessionConfig {
        heartbeat: config.heartbeat(),
        rate: config.rate,
        max_queue: config.max_queue as usize,
        limits: Limits {
            max_text_chars: config.max_text_chars as usize,
        },
    });
    let drain = config.drain();
    let state = AppState {
        node: node.clone(),
        config: Arc::new(config),
        session,
    };
    let app = router(state);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, node = node_id, "relay listening");

    let stop_http = tokio_util::sync::CancellationToken::new();
    let stop = stop_http.clone();
    let server = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .into_future(),
    );

    shutdown.await;
    tracing::info!("shutdown requested");
    node.drain(drain).await;
    stop_http.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server error"),
        Err(_) => tracing::warn!("http server did not stop in time"),
        _ => {}
    }
    backplane.shutdown().await;
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
