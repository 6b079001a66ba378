//! The dashboard: one page with its script and style, embedded in the binary
//! (`include_str!`, no CDN, works offline). The page polls `/api/v1/status` and draws
//! hand-made SVG; it speaks English and German (`?lang=de` or the browser's language).
//!
//! It must never load anything from elsewhere (the Content-Security-Policy says so to
//! the browser) and never be framed by another site (clickjacking of its buttons).

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("assets/dashboard.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn with_headers(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn page() -> Response {
    with_headers("text/html; charset=utf-8", PAGE)
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "dashboard.js" => with_headers("text/javascript; charset=utf-8", SCRIPT),
        "dashboard.css" => with_headers("text/css; charset=utf-8", STYLE),
        _ => super::guard::json_error(StatusCode::NOT_FOUND, "no such asset"),
    }
}
