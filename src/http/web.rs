//! The web chat client, embedded in the binary at build time.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX: &str = include_str!("../../web/index.html");
const STYLE: &str = include_str!("../../web/style.css");

/// The page's ES modules (`web/app/*.js`: one concern a file) and the
/// JavaScript client library it runs on (`clients/js/index.js` and
/// `clients/js/src/*.js`, served under `/lib/relay/`: the page imports the
/// very files the npm package ships, no copy), by URL path.
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
        include_str!("../../clients/js/index.js"),
    ),
    (
        "/lib/relay/src/backoff.js",
        include_str!("../../clients/js/src/backoff.js"),
    ),
    (
        "/lib/relay/src/client.js",
        include_str!("../../clients/js/src/client.js"),
    ),
    (
        "/lib/relay/src/codec.js",
        include_str!("../../clients/js/src/codec.js"),
    ),
    (
        "/lib/relay/src/emitter.js",
        include_str!("../../clients/js/src/emitter.js"),
    ),
    (
        "/lib/relay/src/errors.js",
        include_str!("../../clients/js/src/errors.js"),
    ),
    (
        "/lib/relay/src/http.js",
        include_str!("../../clients/js/src/http.js"),
    ),
    (
        "/lib/relay/src/typing.js",
        include_str!("../../clients/js/src/typing.js"),
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

#[cfg(test)]
mod tests {
    use super::MODULES;
    use std::path::Path;

    /// The `.js` files of a folder of the repository, as URL paths.
    fn js_files(dir: &str, prefix: &str) -> Vec<String> {
        let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut out: Vec<String> = std::fs::read_dir(&full)
            .unwrap_or_else(|e| panic!("{}: {e}", full.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".js"))
            .map(|n| format!("{prefix}{n}"))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn every_module_of_the_page_and_the_library_is_served() {
        let mut want = js_files("web/app", "/app/");
        want.extend(js_files("clients/js/src", "/lib/relay/src/"));
        want.push("/lib/relay/index.js".to_owned());
        want.sort();
        let mut served: Vec<String> = MODULES.iter().map(|(p, _)| p.to_string()).collect();
        served.sort();
        assert_eq!(
            served, want,
            "add the new file to MODULES in src/http/web.rs"
        );
    }
}
