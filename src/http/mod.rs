//! The HTTP surface of a node: the `/ws` handshake (origin, identity, limits,
//! then upgrade), health and readiness, metrics, the client configuration and
//! the embedded web chat.

mod api;
mod handshake;
mod revoke;
pub use handshake::{NotUpgrade, WsUpgrade};
pub mod limits;
pub mod serve;
pub mod tls;
mod web;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::config::Config;
use crate::node::{Node, NodeError};
use crate::protocol::ErrorCode;
use crate::session::SessionConfig;

/// Shared state of the router.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: Arc<Node>,
    /// The configuration.
    pub config: Arc<Config>,
    /// Per-session settings.
    pub session: Arc<SessionConfig>,
    /// How tokens are verified (`None`: guest mode).
    pub verifier: Option<Arc<crate::auth::Verifier>>,
    /// Register/login attempts per IP.
    pub attempts: Arc<limits::AttemptLimiter>,
    /// Open WebSocket connections per IP.
    pub per_ip: Arc<limits::PerIp>,
    /// Most WebSocket connections on this node.
    pub max_connections: usize,
}

/// A refusal with the JSON body of PROTOCOL §1: `{"error", "message"}`.
pub fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": code, "message": message.into() })),
    )
        .into_response()
}

/// The HTTP status of a PROTOCOL error code: the one mapping of failures
/// to statuses.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadFrame | ErrorCode::Invalid => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited | ErrorCode::TooManyRooms => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::NotMember | ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::UserOffline | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::RoomExists => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failed node call as an HTTP response: its code's status and the JSON
/// body of PROTOCOL §1 (internal details are logged, not shown).
pub fn failure(e: &NodeError) -> Response {
    let code = e.code();
    let message = match e {
        NodeError::Internal(_) => "internal error".to_owned(),
        NodeError::Unavailable(_) => "backplane unavailable, retry later".to_owned(),
        other => other.to_string(),
    };
    refuse(status_of(code), code.as_str(), message)
}

/// Builds the public router (with `--admin-listen`, without `/metrics`).
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    if state.verifier.as_ref().is_some_and(|v| v.needs_account()) {
        router = router.merge(api::account_routes());
    }
    if state.verifier.is_some() {
        router = router.merge(revoke::logout_routes());
    }
    if state.config.api_key.as_ref().is_some_and(|k| !k.is_empty()) {
        router = router.merge(api::key_routes());
        router = router.merge(revoke::revoke_routes());
    }
    if state.config.admin_listen.is_none() {
        router = router.route("/metrics", get(metrics));
    }
    router
        .route("/ws", get(handshake::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/config", get(client_config))
        .merge(web::routes())
        .with_state(state)
}

/// The router of `--admin-listen`: metrics, health and readiness only.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(axum::extract::State(app): axum::extract::State<AppState>) -> Response {
    if app.node.is_draining() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining",
        );
    }
    if let Err(e) = app.node.ready().await {
        return failure(&e);
    }
    (StatusCode::OK, "ready").into_response()
}

async fn metrics(axum::extract::State(app): axum::extract::State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.node.metrics.encode(),
    )
        .into_response()
}

/// What the web client needs to know about this server.
async fn client_config(axum::extract::State(app): axum::extract::State<AppState>) -> Response {
    let auth = match app.config.auth {
        crate::config::AuthMode::Guest => "guest",
        crate::config::AuthMode::Token => "token",
        crate::config::AuthMode::Jwt => "jwt",
    };
    Json(json!({
        "auth": auth,
        "node": app.node.id(),
        "max_text_chars": app.config.max_text_chars,
        "heartbeat_ms": app.config.heartbeat_ms,
        "protocol": crate::protocol::PROTOCOL_VERSION,
    }))
    .into_response()
}
