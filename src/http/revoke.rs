//! Ending sessions from outside (PROTOCOL §8): `POST /api/revoke {user}`
//! with the API key revokes every token of the user issued until now,
//! cluster-wide (their connections close with 4001 within a second, and
//! those tokens are refused for `--revocation-ttl-secs`); `POST
//! /api/logout` revokes the presented token (Bearer or the `relay_token`
//! cookie, by its `jti`) and clears the cookie.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::api::check_key;
use super::handshake::presented_token;
use super::limits::{read_body, SMALL_BODY_BYTES};
use super::{failure, refuse, AppState};
use crate::protocol::is_valid_name;

/// `/api/revoke` (with `--api-key`).
pub(super) fn revoke_routes() -> Router<AppState> {
    Router::new().route("/api/revoke", post(revoke))
}

/// `/api/logout` (token and JWT modes).
pub(super) fn logout_routes() -> Router<AppState> {
    Router::new().route("/api/logout", post(logout))
}

#[derive(Deserialize)]
struct RevokeBody {
    user: String,
}

async fn revoke(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = check_key(&app, &headers) {
        return r;
    }
    let body = match read_body(
        body,
        &headers,
        SMALL_BODY_BYTES,
        app.config.handshake_timeout(),
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(req) = serde_json::from_slice::<RevokeBody>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "expected JSON {\"user\"}",
        );
    };
    if !is_valid_name(&req.user) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "user must be a valid name",
        );
    }
    match app
        .node
        .revoke_user(&req.user, app.config.revocation_ttl())
        .await
    {
        Ok(at) => Json(json!({ "user": req.user, "revoked_at": at })).into_response(),
        Err(e) => failure(&e),
    }
}

/// The `Set-Cookie` that removes `relay_token`.
fn clear_cookie(app: &AppState) -> String {
    let secure = if app.config.tls_cert.is_some() {
        "; Secure"
    } else {
        ""
    };
    format!("relay_token=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}")
}

async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let cleared = |mut r: Response| {
        if let Ok(v) = clear_cookie(&app).parse() {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    };
    let Some(verifier) = app.verifier.clone() else {
        return refuse(StatusCode::NOT_FOUND, "invalid", "no tokens in guest mode");
    };
    let presented = presented_token(&headers, &Default::default());
    let Some((token, _)) = presented else {
        // Nothing to revoke; the cookie (if any) is cleared all the same.
        return cleared(Json(json!({ "ok": true, "revoked": false })).into_response());
    };
    let Ok(claims) = verifier.verify(&token).await else {
        return cleared(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, invalid or expired token",
        ));
    };
    let Some(jti) = claims.jti.as_deref() else {
        return cleared(refuse(
            StatusCode::BAD_REQUEST,
            "invalid",
            "this token has no `jti`: revoke the user with /api/revoke instead",
        ));
    };
    match app
        .node
        .revoke_token(&claims.sub, jti, claims.exp.saturating_mul(1000))
        .await
    {
        Ok(()) => cleared(Json(json!({ "ok": true, "revoked": true })).into_response()),
        Err(e) => failure(&e),
    }
}
