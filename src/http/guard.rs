//! Who may talk to the HTTP listener, checked before any route runs:
//!
//! - **Host** must name this listener (`localhost`, a loopback or the bound address, or
//!   one of `http.allowed_hosts`). A page on another site whose name was made to resolve
//!   to 127.0.0.1 (DNS rebinding) sends its own name and is refused.
//! - **Bearer token**: when `http.token` is set, every request but the dashboard page
//!   itself (and its script and style) must carry `Authorization: Bearer <token>` (compared in constant time).
//! - **State-changing requests** (anything but GET and HEAD) must carry the header
//!   [`STEER_HEADER`] or the token. A browser sends a custom header cross-site only after
//!   a CORS preflight, and preflights (`OPTIONS`) are refused here; requests that say they
//!   come from another site (`Origin` not this host, `Sec-Fetch-Site: cross-site`) are
//!   refused as well.
//!
//! It must never echo the token or the `Authorization` header in a response or a log.

use super::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The header a state-changing request must carry (any value) when it has no token.
pub const STEER_HEADER: &str = "x-mailvalve-steer";

/// An error as JSON: `{"error": "..."}` with its status.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, axum::Json(body)).into_response()
}

/// The host part of a `Host` header value: `name`, `name:port`, `[v6]`, `[v6]:port`.
fn host_name(value: &str) -> &str {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match v.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => v,
    }
}

/// Whether `host` (the name part of a Host header) names this listener.
pub fn host_allowed(state: &AppState, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback() || ip == state.local.ip() || state.local.ip().is_unspecified();
    }
    state
        .allowed_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&host))
}

/// Compares without stopping at the first difference, so the time taken does not tell
/// how much of a guessed token was right. (Hand-written: eight lines, not worth a crate.)
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn has_token(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
}

/// Whether the browser says the request comes from another site.
fn cross_site(headers: &HeaderMap, host: &str) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return true;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // "null" (sandboxed frames, file: pages) is another site too.
        Some(origin) => {
            let authority = origin
                .split_once("://")
                .map(|(_, rest)| rest)
                .unwrap_or(origin);
            !authority.eq_ignore_ascii_case(host)
        }
        None => false,
    }
}

/// The middleware: refuses what the module docs describe, passes the rest on.
pub async fn guard(State(state): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let headers = req.headers();
    let Some(host_value) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return json_error(StatusCode::BAD_REQUEST, "a Host header is required");
    };
    if !host_allowed(&state, host_name(host_value)) {
        return json_error(
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served here (add it to http.allowed_hosts if it is yours)",
        );
    }
    if req.method() == Method::OPTIONS {
        return json_error(
            StatusCode::FORBIDDEN,
            "cross-origin requests are not accepted",
        );
    }
    let token_ok = has_token(&state, headers);
    let path = req.uri().path();
    let is_page = req.method() == Method::GET && (path == "/" || path.starts_with("/assets/"));
    if state.token.is_some() && !token_ok && !is_page {
        let mut r = json_error(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer <http.token>)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD);
    if changes_state {
        if cross_site(headers, host_value.trim()) {
            return json_error(
                StatusCode::FORBIDDEN,
                "a request from another site cannot steer mailvalve",
            );
        }
        if !token_ok && !headers.contains_key(STEER_HEADER) {
            return json_error(
                StatusCode::FORBIDDEN,
                format!(
                    "a state-changing request needs the header {STEER_HEADER} or the bearer token"
                ),
            );
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_cut_from_ports_and_brackets() {
        assert_eq!(host_name("localhost:2580"), "localhost");
        assert_eq!(host_name("[::1]:2580"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("example.org"), "example.org");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }

    #[test]
    fn origin_of_another_site_is_cross_site() {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&h, "127.0.0.1:2580"));
        h.insert(header::ORIGIN, "http://127.0.0.1:2580".parse().unwrap());
        assert!(!cross_site(&h, "127.0.0.1:2580"));
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h, "127.0.0.1:2580"));
    }
}
