//! JSON endpoints under `/api`: accounts (register, login) in token mode,
//! and, with `--api-key`, server-side publishing, room history and presence,
//! and the list of live nodes. Keys and rate limits are checked before a
//! body is read; bodies are read bounded in size and time
//! (`limits::read_body`), and password hashing takes one of the node's few
//! hashing turns or answers 503 `busy`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::limits::{client_ip, read_body, SMALL_BODY_BYTES};
use super::{failure, refuse, AppState};
use crate::auth::{
    dummy_hash, hash_password, key_matches, try_hash_permit, valid_password, verify_password,
    HashPermit,
};
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

/// 503 `busy` with `Retry-After`: every password-hashing turn is taken.
fn busy() -> Response {
    let mut r = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "too many logins at once; retry in a second",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// A hashing turn, or the 503 `busy` answer (PROTOCOL §11).
#[allow(clippy::result_large_err)]
fn hash_turn(app: &AppState) -> Result<HashPermit, Response> {
    try_hash_permit().ok_or_else(|| {
        app.node.metrics.refused("hash_busy");
        busy()
    })
}

/// Reads and parses the credentials body (after the rate check), bounded
/// in size and time.
#[allow(clippy::result_large_err)]
async fn read_credentials(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Credentials, Response> {
    let body = read_body(
        body,
        headers,
        SMALL_BODY_BYTES,
        app.config.handshake_timeout(),
    )
    .await?;
    serde_json::from_slice::<Credentials>(&body).map_err(|_| {
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
    body: Body,
) -> Response {
    let ip = client_ip(peer, &headers, &app.config.trusted_proxies);
    if let Err(wait) = app.attempts.attempt(ip) {
        return too_many_attempts(wait);
    }
    let creds = match read_credentials(&app, &headers, body).await {
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
    let turn = match hash_turn(&app) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let password = creds.password;
    // The turn moves into the blocking task: it ends when the hash does,
    // even if the client has gone.
    let hashed = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        hash_password(&password)
    });
    let hash = match hashed.await {
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
    body: Body,
) -> Response {
    let ip = client_ip(peer, &headers, &app.config.trusted_proxies);
    if let Err(wait) = app.attempts.attempt(ip) {
        return too_many_attempts(wait);
    }
    let creds = match read_credentials(&app, &headers, body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(keys) = app.verifier.clone() else {
        return refuse(StatusCode::NOT_FOUND, "invalid", "logins are off");
    };
    let Some(keys) = keys.token_keys() else {
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
    let turn = match hash_turn(&app) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let password = creds.password;
    let ok = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let hash = stored.unwrap_or_else(|| dummy_hash().to_owned());
        verify_password(&password, &hash)
    })
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
pub(super) fn check_key(app: &AppState, headers: &HeaderMap) -> Result<(), Response> {
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

async fn publish(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = check_key(&app, &headers) {
        return r;
    }
    // A text the socket would accept fits a frame: the same bound here.
    let body = match read_body(
        body,
        &headers,
        app.config.max_frame_bytes as usize,
        app.config.handshake_timeout(),
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
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
        Err(TextError::Control) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid",
                "text holds a control character other than newline and tab",
            )
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
