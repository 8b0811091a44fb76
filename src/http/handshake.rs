//! `GET /ws`: everything is checked before the upgrade completes, and every
//! refusal is an HTTP response with a JSON body (PROTOCOL §1), never an
//! upgraded socket that is then closed.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

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

/// The handshake handler.
pub(super) async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let metrics = app.node.metrics.clone();
    let refused = |reason: &'static str, status: StatusCode, code: &str, message: &str| {
        metrics.refused(reason);
        tracing::debug!(%peer, reason, "handshake refused");
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
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let status = rejection.status();
            return refused("not_websocket", status, "invalid", &rejection.body_text());
        }
    };
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
    let Some(user) = query.get("user").filter(|u| is_valid_name(u)).cloned() else {
        return refused(
            "invalid_user",
            StatusCode::BAD_REQUEST,
            "invalid",
            "query parameter `user` must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",
        );
    };
    let resume = query.get("resume").map(String::as_str);
    let lease = match app.node.attach_user(&user, resume).await {
        Ok(lease) => lease,
        Err(AttachError::NameTaken) => {
            return refused(
                "name_taken",
                StatusCode::CONFLICT,
                "name_taken",
                "this name is in use; pick another or present its resume token",
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
    tracing::debug!(%peer, user, encoding = encoding.as_str(), "handshake accepted");
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            crate::session::run(socket, node, lease, user, encoding, session, None)
        })
        .into_response()
}
