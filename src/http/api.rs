//! JSON endpoints under `/api`: accounts (register, login) in token mode,
//! and, with `--api-key`, server-side publishing, room history and presence,
//! and the list of live nodes.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::limits::client_ip;
use super::{failure, refuse, AppState};
use crate::auth::{dummy_hash, hash_password, key_matches, valid_password, verify_password};
use crate::protocol::{is_valid_name, validate_text, HistoryEntry, Limits, TextError};

/// Account routes (token mode only).
pub(super) fn account_routes() -> Router<AppState> {
    Router::new()
        .route("/api/register", post(register))
        .route("/api/login", post(login))
}

/// API-key routes (only when `--api-key` is set).
pub(super) fn key_routes() -> Router<AppState> {
    Router::new()
        .route("/api/publish", post(publish))
        .route("/api/rooms/{room}/history", get(room_history))
        .route("/api/rooms/{room}/presence", get(room_presence))
        .route("/api/nodes", get(nodes))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

fn too_many_attempts(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = refuse(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many attempts; retry in {secs} s"),
    );
    if let Ok(v) = secs.to_string().parse() {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

#[allow(clippy::result_large_err)]
fn parse_credentials(body: &[u8]) -> Result<Credentials, Response> {
    serde_json::from_slice::<Credentials>(body).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "expected JSON {\"username\": ..., \"password\": ...}",
        )
    })
}

async fn register(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let ip = client_ip(peer, &headers, &app.config.trusted_proxies);
    if let Err(wait) = app.attempts.attempt(ip) {
        return too_many_attempts(wait);
    }
    let creds = match parse_credentials(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !is_valid_name(&creds.username) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "username must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",
        );
    }
    if !valid_password(&creds.password) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "password must be 8 to 128 characters",
        );
    }
    let password = creds.password;
    let hash = match tokio::task::spawn_blocking(move || hash_password(&password)).await {
        Ok(Ok(h)) => h,
        _ => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "hashing failed",
            )
        }
    };
    match app.node.create_account(&creds.username, &hash).await {
        Ok(true) => (
            StatusCode::CREATED,
            Json(json!({ "username": creds.username })),
        )
            .into_response(),
        Ok(false) => refuse(
            StatusCode::CONFLICT,
            "name_taken",
            "this name is registered",
        ),
        Err(e) => failure(&e),
    }
}

async fn login(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let ip = client_ip(peer, &headers, &app.config.trusted_proxies);
    if let Err(wait) = app.attempts.attempt(ip) {
        return too_many_attempts(wait);
    }
    let creds = match parse_credentials(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(keys) = app.tokens.clone() else {
        return refuse(StatusCode::NOT_FOUND, "invalid", "logins are off");
    };
    let stored = if is_valid_name(&creds.username) {
        match app.node.account_hash(&creds.username).await {
            Ok(h) => h,
            Err(e) => return failure(&e),
        }
    } else {
        None
    };
    let known = stored.is_some();
    let hash = stored.unwrap_or_else(|| dummy_hash().to_owned());
    let password = creds.password;
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    if !(ok && known) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong user name or password",
        );
    }
    match keys.issue(&creds.username) {
        Ok((token, exp)) => {
            let secure = if app.config.tls_cert.is_some() {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "relay_token={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
                app.config.token_ttl_secs
            );
            let mut r = Json(
                json!({ "token": token, "expires_at": exp * 1000, "username": creds.username }),
            )
            .into_response();
            if let Ok(v) = cookie.parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "token signing failed",
        ),
    }
}

/// Checks `Authorization: Bearer KEY` against `--api-key`.
#[allow(clippy::result_large_err)]
fn check_key(app: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let keys = app.config.api_key.as_deref().unwrap_or_default();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !presented.is_empty() && key_matches(presented, keys) {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key",
        ))
    }
}

#[derive(Deserialize)]
struct PublishBody {
    room: String,
    text: String,
    from: Option<String>,
}

async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = check_key(&app, &headers) {
        return r;
    }
    let Ok(req) = serde_json::from_slice::<PublishBody>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "expected JSON {\"room\", \"text\", \"from\"?}",
        );
    };
    let from = req.from.unwrap_or_else(|| "server".to_owned());
    if !is_valid_name(&req.room) || !is_valid_name(&from) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "room and from must be valid names",
        );
    }
    let limits = Limits {
        max_text_chars: app.config.max_text_chars as usize,
    };
    let text = match validate_text(&req.text, &limits) {
        Ok(t) => t,
        Err(TextError::Empty) => {
            return refuse(StatusCode::BAD_REQUEST, "invalid", "text is empty")
        }
        Err(TextError::TooLong { max }) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("text is longer than {max} characters"),
            )
        }
    };
    match app.node.publish_as(&req.room, &from, text).await {
        Ok(p) => Json(json!({ "id": p.id, "ts": p.ts })).into_response(),
        Err(e) => failure(&e),
    }
}

async fn room_history(
    State(app): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_key(&app, &headers) {
        return r;
    }
    if !is_valid_name(&room) {
        return refuse(StatusCode::BAD_REQUEST, "invalid", "bad room name");
    }
    match app
        .node
        .history(&room, None, crate::protocol::HISTORY_LEN)
        .await
    {
        Ok(messages) => {
            let messages: Vec<HistoryEntry> = messages.into_iter().map(Into::into).collect();
            Json(json!({ "room": room, "messages": messages })).into_response()
        }
        Err(e) => failure(&e),
    }
}

async fn room_presence(
    State(app): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_key(&app, &headers) {
        return r;
    }
    if !is_valid_name(&room) {
        return refuse(StatusCode::BAD_REQUEST, "invalid", "bad room name");
    }
    match app.node.presence(&room).await {
        Ok(users) => Json(json!({ "room": room, "users": users })).into_response(),
        Err(e) => failure(&e),
    }
}

async fn nodes(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = check_key(&app, &headers) {
        return r;
    }
    match app.node.nodes().await {
        Ok(nodes) => Json(json!({ "nodes": nodes })).into_response(),
        Err(e) => failure(&e),
    }
}
