//! `GET /ws`: everything is checked before the upgrade completes, and every
//! refusal is an HTTP response with a JSON body (PROTOCOL §1), never an
//! upgraded socket that is then closed. Order: draining, origin, capacity,
//! per-IP limit, subprotocol, identity (a valid guest name, or a verified
//! token; a token from the `relay_token` cookie only when the `Origin` is
//! absent or the node's own, PROTOCOL §8), the upgrade headers (so a plain
//! GET learns the verdicts above; an unsupported `Sec-WebSocket-Version`
//! answers 426 naming 13), then the name claim and the per-user limit. The `101` answer is built
//! here, and the upgraded socket goes to the session (`session::wire`).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::field::Empty;
use tracing::Instrument;

use super::limits::client_ip;
use super::{refuse, AppState};
use crate::node::{AttachError, Credential};
use crate::protocol::{is_valid_name, Encoding, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use crate::session::wire::Transport;
use crate::session::TokenSession;

/// A valid WebSocket upgrade request (RFC 6455 §4.2.1), before it is
/// answered. The 101 response and the upgraded socket are ours, not a
/// WebSocket library's: the connection's writer sends pre-built frames
/// straight to the socket (see `session::wire`).
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request is not a WebSocket upgrade.
pub struct NotUpgrade(StatusCode, &'static str);

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        with_version_hint(self.0, refuse(self.0, "invalid", self.1))
    }
}

/// A `426 Upgrade Required` names the version we speak (RFC 6455 §4.2.2:
/// `Sec-WebSocket-Version: 13`).
fn with_version_hint(status: StatusCode, mut response: Response) -> Response {
    if status == StatusCode::UPGRADE_REQUIRED {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    response
}

/// The comma-separated tokens of every `name` header, trimmed, empty ones
/// skipped.
fn header_tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(NotUpgrade(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket handshake is a GET request",
            ));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "`Connection` header did not include `upgrade`",
            ));
        }
        if !header_has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include `websocket`",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            return Err(NotUpgrade(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported `Sec-WebSocket-Version`: this server speaks 13",
            ));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ));
        };
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(NotUpgrade(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(WsUpgrade { key, on_upgrade })
    }
}

impl WsUpgrade {
    /// Accepts the upgrade: the `101` answer (with `protocol`, the chosen
    /// subprotocol, if any) and the connection it becomes once the answer is
    /// sent, read with frames and messages of at most `max_frame` bytes.
    /// The node's sessions and `examples/echo.rs` both start here.
    pub fn accept(
        self,
        protocol: Option<&'static str>,
        max_frame: usize,
    ) -> (
        Response,
        impl std::future::Future<Output = Option<crate::session::Socket>> + Send,
    ) {
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_frame))
            .max_frame_size(Some(max_frame))
            // Small: allocated per socket up front; larger frames grow it.
            .read_buffer_size(512)
            // Only control replies that the read side discards are written here.
            .write_buffer_size(0);
        let response = self.response(protocol);
        let on_upgrade = self.on_upgrade;
        let socket = async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return None;
                }
            };
            let (read, prefix, write) = Transport::from_upgraded(upgraded).split();
            let reader =
                WebSocketStream::from_partially_read(read, prefix, Role::Server, Some(config))
                    .await;
            Some(crate::session::Socket {
                reader,
                writer: write,
            })
        };
        (response, socket)
    }

    /// The `101 Switching Protocols` answer, with the chosen subprotocol.
    fn response(&self, protocol: Option<&'static str>) -> Response {
        let accept =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept);
        if let Some(p) = protocol {
            response = response.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        response
            .body(axum::body::Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// Chooses the encoding from `Sec-WebSocket-Protocol`: the first offered
/// protocol we speak wins; nothing offered means JSON. `Err` when protocols
/// were offered but none is ours.
fn choose_encoding(headers: &HeaderMap) -> Result<Option<Encoding>, ()> {
    let mut offered = header_tokens(headers, header::SEC_WEBSOCKET_PROTOCOL).peekable();
    if offered.peek().is_none() {
        return Ok(None);
    }
    for p in offered {
        match p {
            SUBPROTOCOL_JSON => return Ok(Some(Encoding::Json)),
            SUBPROTOCOL_MSGPACK => return Ok(Some(Encoding::MsgPack)),
            _ => {}
        }
    }
    Err(())
}

/// Where a handshake's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenSource {
    /// `Authorization: Bearer` or `?token=`: not sent by a browser on its own.
    Explicit,
    /// The `relay_token` cookie: a browser attaches it to any page's
    /// request, so the Origin must be checked (PROTOCOL §8).
    Cookie,
}

/// The login token of a handshake: `Authorization: Bearer`, `?token=`, or
/// the `relay_token` cookie, in that order.
pub(super) fn presented_token(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<(String, TokenSource)> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some((t.trim().to_owned(), TokenSource::Explicit));
    }
    if let Some(t) = query.get("token") {
        return Some((t.clone(), TokenSource::Explicit));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "relay_token")
        .map(|(_, v)| (v.to_owned(), TokenSource::Cookie))
}

/// `(scheme, lower-case host, port)` of an origin or a `Host` value, the
/// port made explicit from the scheme's default.
fn origin_parts(scheme: &str, authority: &str) -> Option<(String, String, u16)> {
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority: axum::http::uri::Authority = authority.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let port = authority.port_u16().unwrap_or(default);
    Some((scheme, authority.host().to_ascii_lowercase(), port))
}

/// Whether `origin` (an `Origin` header value) is the node's own origin as
/// the request names it: its `Host` header (or a trusted proxy's
/// `X-Forwarded-Host`), and `https` under TLS or when a trusted proxy says
/// `X-Forwarded-Proto: https`.
fn is_own_origin(app: &AppState, peer: SocketAddr, headers: &HeaderMap, origin: &str) -> bool {
    let proxied = app
        .config
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&peer.ip()));
    // The first (client-side) value of a header set by a trusted proxy.
    let forwarded = |name: &str| {
        headers
            .get(name)
            .filter(|_| proxied)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    };
    let forwarded_https =
        forwarded("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let scheme = if app.config.tls_cert.is_some() || forwarded_https {
        "https"
    } else {
        "http"
    };
    let host = forwarded("x-forwarded-host")
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()));
    let Some(host) = host else {
        return false;
    };
    let Some((o_scheme, o_authority)) = origin.trim().split_once("://") else {
        return false;
    };
    match (
        origin_parts(o_scheme, o_authority.trim_end_matches('/')),
        origin_parts(scheme, host.trim()),
    ) {
        (Some(o), Some(own)) => o == own,
        _ => false,
    }
}

/// The handshake handler: runs the checks inside a `handshake` span
/// (`remote`, `ip`, `node`, `user`, `encoding`, `outcome`: `accepted` or the
/// refusal reason).
pub(super) async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WsUpgrade, NotUpgrade>,
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
    ws: Result<WsUpgrade, NotUpgrade>,
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
    let (user, token) = match &app.verifier {
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
            let presented = presented_token(&headers, &query);
            if let (Some((_, TokenSource::Cookie)), Some(origin)) =
                (&presented, headers.get(header::ORIGIN))
            {
                let origin = origin.to_str().unwrap_or("");
                if !is_own_origin(&app, peer, &headers, origin) {
                    return refused(
                        "forbidden_origin",
                        StatusCode::FORBIDDEN,
                        "forbidden_origin",
                        "a cookie-authenticated handshake must come from this server's own origin",
                    );
                }
            }
            let claims = match presented {
                Some((t, _)) => keys.verify(&t).await.ok(),
                None => None,
            };
            let Some(claims) = claims else {
                return refused(
                    "unauthorized",
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing, invalid or expired token",
                );
            };
            let credential = Credential {
                iat_ms: claims.iat_ms,
                jti: claims.jti.clone(),
            };
            // Token mode needs the account; every mode checks revocation.
            let verdict = async {
                if keys.needs_account() && app.node.account_hash(&claims.sub).await?.is_none() {
                    return Ok(Some("unknown user"));
                }
                if app.node.is_revoked(&claims.sub, &credential).await? {
                    return Ok(Some("this token was revoked"));
                }
                Ok::<_, crate::node::NodeError>(None)
            }
            .await;
            match verdict {
                Ok(None) => {}
                Ok(Some(why)) => {
                    return refused(
                        "unauthorized",
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        why,
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
            (
                claims.sub,
                Some(TokenSession {
                    expires,
                    credential,
                }),
            )
        }
    };
    // Checked only now: a plain GET (what a browser page can send to learn
    // why its WebSocket was refused; the WebSocket API hides the status)
    // gets the origin, name and token verdicts above. Nothing is claimed
    // before this point.
    let ws = match ws {
        Ok(ws) => ws,
        Err(NotUpgrade(status, why)) => {
            return with_version_hint(status, refused("not_websocket", status, "invalid", why));
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
    // Echo a subprotocol only when the client offered one.
    let protocol = encoding.map(Encoding::subprotocol);
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
    let (response, socket) = ws.accept(protocol, max);
    // This task ends once the session's task is spawned: only the
    // connection's own state stays resident per socket.
    node.clone().tasks.spawn(
        async move {
            let Some(socket) = socket.await else {
                return;
            };
            let run = {
                let _entered = session_span.enter();
                crate::session::run(socket, node.clone(), lease, user, encoding, session, token)
            };
            node.tasks.spawn(
                async move {
                    let _ip_slot = ip_slot;
                    run.await
                }
                .instrument(session_span),
            );
        }
        .in_current_span(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::origin_parts;

    #[test]
    fn origins_compare_with_default_ports() {
        assert_eq!(
            origin_parts("https", "Chat.Example.com"),
            origin_parts("https", "chat.example.com:443")
        );
        assert_ne!(
            origin_parts("http", "chat.example.com"),
            origin_parts("https", "chat.example.com")
        );
        assert_ne!(
            origin_parts("http", "127.0.0.1:8080"),
            origin_parts("http", "127.0.0.1:8081")
        );
        assert_eq!(origin_parts("file", "x"), None);
        assert_eq!(origin_parts("http", "user@evil.example"), None);
    }
}
