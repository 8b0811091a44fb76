//! The web chat client, embedded in the binary at build time.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX: &str = include_str!("../../web/index.html");
const STYLE: &str = include_str!("../../web/style.css");

/// The page's ES modules (`web/app/*.js`: one concern a file) and its copy of
/// the JavaScript client library (`web/lib/relay/`, from `clients/js/`), by
/// URL path.
const MODULES: &[(&str, &str)] = &[
    (
        "/app/connection.js",
        include_str!("../../web/app/connection.js"),
    ),
    ("/app/dms.js", include_str!("../../web/app/dms.js")),
    ("/app/dom.js", include_str!("../../web/app/dom.js")),
    ("/app/login.js", include_str!("../../web/app/login.js")),
    ("/app/main.js", include_str!("../../web/app/main.js")),
    ("/app/nav.js", include_str!("../../web/app/nav.js")),
    ("/app/outbox.js", include_str!("../../web/app/outbox.js")),
    ("/app/render.js", include_str!("../../web/app/render.js")),
    ("/app/rooms.js", include_str!("../../web/app/rooms.js")),
    ("/app/state.js", include_str!("../../web/app/state.js")),
    ("/app/status.js", include_str!("../../web/app/status.js")),
    ("/app/storage.js", include_str!("../../web/app/storage.js")),
    ("/app/typing.js", include_str!("../../web/app/typing.js")),
    (
        "/lib/relay/index.js",
        include_str!("../../web/lib/relay/index.js"),
    ),
    (
        "/lib/relay/src/backoff.js",
        include_str!("../../web/lib/relay/src/backoff.js"),
    ),
    (
        "/lib/relay/src/client.js",
        include_str!("../../web/lib/relay/src/client.js"),
    ),
    (
        "/lib/relay/src/codec.js",
        include_str!("../../web/lib/relay/src/codec.js"),
    ),
    (
        "/lib/relay/src/emitter.js",
        include_str!("../../web/lib/relay/src/emitter.js"),
    ),
    (
        "/lib/relay/src/errors.js",
        include_str!("../../web/lib/relay/src/errors.js"),
    ),
    (
        "/lib/relay/src/http.js",
        include_str!("../../web/lib/relay/src/http.js"),
    ),
    (
        "/lib/relay/src/typing.js",
        include_str!("../../web/lib/relay/src/typing.js"),
    ),
];

/// Routes of the static files.
pub(super) fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/index.html",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        );
    for &(path, body) in MODULES {
        router = router.route(
            path,
            get(move || async move { file("text/javascript; charset=utf-8", body) }),
        );
    }
    router
}

/// The page's Content-Security-Policy: its own scripts, styles and images
/// only (the favicon is a `data:` URL), connections to this origin and to
/// WebSockets, no plugins, no `<base>` rewriting, and no framing at all.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self' ws: wss:; form-action 'self'; \
base-uri 'none'; object-src 'none'; frame-ancestors 'none'";

/// A static file with the security headers of PROTOCOL §11: CSP (no
/// framing), no referrer, no MIME sniffing, `X-Frame-Options: DENY` for
/// browsers without `frame-ancestors`.
fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
}
