//! The HTTP listener (`[http]`, default `127.0.0.1:2580`): Prometheus metrics at
//! `/metrics`, the JSON API under `/api/v1/`, and the dashboard at `/` — a page embedded
//! in the binary, no CDN. It serves the running relay through its one handle
//! (`relay::RelayHandle`), in both modes.
//!
//! ```text
//! cli ──▶ http ──▶ relay ──▶ server / upstream / queue ──▶ config ──▶ policy ──▶ smtp
//! ```
//!
//! Security ([`guard`]): the Host header must name this listener (DNS rebinding);
//! state-changing requests need a header a browser does not send cross-site, or the
//! token; off loopback `config::validate` already insisted on `http.token` and
//! `http.tls`, and every request but the page itself needs the token. TLS is rustls with
//! ring, like the SMTP side (the same certificate loader).
//!
//! It must never return a secret (token, passwords, AUTH exchanges) or a message body,
//! and never steer the relay except through the handle.

pub mod api;
pub mod dashboard;
pub mod guard;
pub mod history;
pub mod metrics;
pub mod state;
pub mod view;

pub use state::AppState;

use crate::config::HttpConfig;
use crate::relay::RelayHandle;
use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a request's head may take to arrive.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest request body accepted (suppression adds, reload): JSON, never mail.
const MAX_BODY: usize = 1 << 20;

/// The listener, serving.
pub struct HttpServer {
    addr: SocketAddr,
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The dashboard's address, e.g. `http://127.0.0.1:2580/`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.addr)
    }

    /// Waits until the listener stopped (after its shutdown token was cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The router over `state` (tests call it without a socket, too).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/metrics", get(metrics_route))
        .nest("/api/v1", api::routes())
        .fallback(|| async { guard::json_error(StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn metrics_route(State(s): State<AppState>) -> Response {
    match metrics::render(&s).await {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => guard::json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        ),
    }
}

/// Binds `[http] listen` and serves until `shutdown`. `Ok(None)` when the listener is
/// off (`listen = ""`). The configuration passed `config::validate` (token and TLS off
/// loopback).
pub async fn start(
    cfg: &HttpConfig,
    handle: RelayHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<HttpServer>> {
    let Some(listen) = cfg.listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("config key http.listen: cannot listen on {listen}"))?;
    start_on(listener, cfg, handle, shutdown).map(Some)
}

/// [`start`] on a listener already bound (tests bind port 0).
pub fn start_on(
    listener: TcpListener,
    cfg: &HttpConfig,
    handle: RelayHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<HttpServer> {
    let addr = listener.local_addr()?;
    let acceptor = match &cfg.tls {
        Some(tls) => Some(
            crate::server::load_tls_acceptor(tls)
                .map_err(|e| anyhow::anyhow!("config key http.tls: {e}"))?,
        ),
        None => None,
    };
    let history = Arc::new(history::History::default());
    tokio::spawn(history.clone().run(handle.clone(), shutdown.clone()));
    let state = AppState {
        handle,
        token: cfg.token.as_ref().map(|t| Arc::from(t.expose())),
        allowed_hosts: cfg.allowed_hosts.clone().into(),
        local: addr,
        history,
    };
    let app = router(state);
    let tls = acceptor.is_some();
    let task = tokio::spawn(accept_loop(listener, app, acceptor, shutdown));
    Ok(HttpServer { addr, tls, task })
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: wait a moment instead of spinning.
                    tracing::warn!("http: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let app = app.clone();
        let acceptor = acceptor.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let service = TowerToHyperService::new(app);
            let mut builder = hyper::server::conn::http1::Builder::new();
            // A client that trickles its request head holds a connection at most this
            // long (slowloris).
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!("http: TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
        });
    }
}
