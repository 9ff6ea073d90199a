//! `/console`: the operator console ([`console/`](../../../console)), its
//! built files compiled into the binary so it works with no network beyond
//! the engine. The console is only a client of this API: it holds no
//! credential of its own and calls the public endpoints with the key or
//! token the operator gives it.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// The files `npm run build` in `console/` writes (a test checks that they
/// are what the sources build).
const INDEX: &str = include_str!("../../../console/dist/index.html");
const SCRIPT: &str = include_str!("../../../console/dist/console.js");
const STYLE: &str = include_str!("../../../console/dist/console.css");

/// The console's own files only, and calls to this origin only: nothing is
/// fetched from anywhere else, and no other site may frame it.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::permanent("/console") }),
        )
        .route(
            "/console/console.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/console.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // A new engine's files are fetched again, never a stale mix.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}
