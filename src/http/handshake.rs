//! `GET /ws`: everything is checked before the upgrade completes, and every
//! refusal is an HTTP response with a JSON body (PROTOCOL §1), never an
//! upgraded socket that is then closed. Order: draining, upgrade headers,
//! origin, capacity, per-IP limit, subprotocol, identity (guest name claim or
//! token), per-user limit.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::field::Empty;
use tracing::Instrument;

use super::limits::client_ip;
use super::{refuse, AppState};
use crate::node::AttachError;
use crate::protocol::{is_valid_name, Encoding, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};

/// Chooses the encoding from `Sec-WebSocket-Protocol`: the first offered
/// protocol we speak wins; nothing offered means JSON. `Err` when protocols
/// were offered but none is ours.
fn choose_encoding(headers: &HeaderMap) -> Result<Option<Encoding>, ()> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    for p in &offered {
        match p.as_str() {
            SUBPROTOCOL_JSON => return Ok(Some(Encoding::Json)),
            SUBPROTOCOL_MSGPACK => return Ok(Some(Encoding::MsgPack)),
            _ => {}
        }
    }
    Err(())
}

/// The login token of a handshake: `Authorization: Bearer`, `?token=`, or
/// the `relay_token` cookie, in that order.
fn presented_token(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<String> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_owned());
    }
    if let Some(t) = query.get("token") {
        return Some(t.clone());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "relay_token")
        .map(|(_, v)| v.to_owned())
}

/// The handshake handler: runs the checks inside a `handshake` span
/// (`remote`, `ip`, `node`, `user`, `encoding`, `outcome`: `accepted` or the
/// refusal reason).
pub(super) async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let span = tracing::info_span!(
        "handshake",
        remote = %peer,
        ip = Empty,
        node = app.node.id(),
        user = Empty,
        encoding = Empty,
        outcome = Empty
    );
    check_and_upgrade(app, peer, headers, query, ws, span.clone())
        .instrument(span)
        .await
}

async fn check_and_upgrade(
    app: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    query: HashMap<String, String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    span: tracing::Span,
) -> Response {
    let metrics = app.node.metrics.clone();
    let refused = |reason: &'static str, status: StatusCode, code: &str, message: &str| {
        metrics.refused(reason);
        span.record("outcome", reason);
        tracing::debug!(reason, status = status.as_u16(), "handshake refused");
        refuse(status, code, message)
    };
    if app.node.is_draining() {
        return refused(
            "draining",
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining; connect to another node",
        );
    }
    if let (Some(allowed), Some(origin)) =
        (&app.config.allowed_origins, headers.get(header::ORIGIN))
    {
        let origin = origin.to_str().unwrap_or("");
        if !allowed.iter().any(|a| a.trim_end_matches('/') == origin) {
            return refused(
                "forbidden_origin",
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "origin not allowed",
            );
        }
    }
    if app.node.session_count() >= app.max_connections {
        return refused(
            "over_capacity",
            StatusCode::SERVICE_UNAVAILABLE,
            "over_capacity",
            "this node is full; retry or connect to another node",
        );
    }
    let ip = client_ip(peer, &headers, &app.config.trusted_proxies);
    span.record("ip", tracing::field::display(ip));
    let Some(ip_slot) = app.per_ip.acquire(ip, app.config.max_conns_per_ip) else {
        return refused(
            "ip_limit",
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "too many connections from this address",
        );
    };
    let encoding = match choose_encoding(&headers) {
        Ok(e) => e,
        Err(()) => {
            return refused(
                "bad_subprotocol",
                StatusCode::BAD_REQUEST,
                "invalid",
                "supported subprotocols: relay.v1.json, relay.v1.msgpack",
            )
        }
    };
    if let Some(e) = encoding {
        span.record("encoding", e.as_str());
    }
    let (user, expires) = match &app.tokens {
        None => {
            let Some(user) = query.get("user").filter(|u| is_valid_name(u)).cloned() else {
                return refused(
                    "invalid_user",
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "query parameter `user` must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",
                );
            };
            (user, None)
        }
        Some(keys) => {
            let claims = presented_token(&headers, &query).and_then(|t| keys.verify(&t).ok());
            let Some(claims) = claims else {
                return refused(
                    "unauthorized",
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing, invalid or expired token",
                );
            };
            match app.node.backplane().account_hash(&claims.sub).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return refused(
                        "unauthorized",
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "unknown user",
                    )
                }
                Err(_) => {
                    return refused(
                        "unavailable",
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "backplane unavailable, retry later",
                    )
                }
            }
            let left_ms = (claims.exp * 1000).saturating_sub(crate::backplane::now_ms());
            let expires = tokio::time::Instant::now() + std::time::Duration::from_millis(left_ms);
            (claims.sub, Some(expires))
        }
    };
    // Checked only now: a plain GET (what a browser page can send to learn
    // why its WebSocket was refused; the WebSocket API hides the status)
    // gets the origin, name and token verdicts above. Nothing is claimed
    // before this point.
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let status = rejection.status();
            return refused("not_websocket", status, "invalid", &rejection.body_text());
        }
    };
    span.record("user", user.as_str());
    let resume = query.get("resume").map(String::as_str);
    let lease = match app
        .node
        .attach_user(&user, resume, app.config.max_conns_per_user)
        .await
    {
        Ok(lease) => lease,
        Err(AttachError::NameTaken) => {
            return refused(
                "name_taken",
                StatusCode::CONFLICT,
                "name_taken",
                "this name is in use; pick another or present its resume token",
            )
        }
        Err(AttachError::TooManyConnections) => {
            return refused(
                "user_limit",
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "too many connections for this user",
            )
        }
        Err(AttachError::Backplane(e)) => {
            tracing::warn!(error = %e, "handshake: backplane failed");
            return refused(
                "unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "backplane unavailable, retry later",
            );
        }
    };
    let ws = match encoding {
        Some(e) => ws.protocols([e.subprotocol()]),
        None => ws,
    };
    let encoding = encoding.unwrap_or(Encoding::Json);
    let max = app.config.max_frame_bytes as usize;
    let node = app.node.clone();
    let session = app.session.clone();
    span.record("encoding", encoding.as_str());
    span.record("outcome", "accepted");
    tracing::debug!("handshake accepted");
    // The connection's own span: a root (a connection is not part of the
    // handshake's trace), linked to the handshake.
    let session_span = crate::session::session_span(&user, node.id(), peer, ip, encoding);
    session_span.follows_from(&span);
    ws.max_message_size(max)
        .max_frame_size(max)
        // Small: allocated per socket up front; larger frames grow it.
        .read_buffer_size(512)
        .write_buffer_size(32 * 1024)
        .on_upgrade(move |socket| {
            // The connection runs in a task of its own, and axum's upgrade
            // task (its state machine is three times larger) ends here:
            // only the connection's state stays resident per socket.
            let run = {
                let _entered = session_span.enter();
                crate::session::run(
                    socket,
                    node.clone(),
                    lease,
                    user,
                    encoding,
                    session,
                    expires,
                )
            };
            node.tasks.spawn(
                async move {
                    let _ip_slot = ip_slot;
                    run.await
                }
                .instrument(session_span),
            );
            std::future::ready(())
        })
        .into_response()
}
