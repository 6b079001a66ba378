//! The HTTP side of the bounce webhook: one POST per call, at most
//! [`MAX_CONCURRENT_POSTS`] at once, each bounded by the configured timeout.
//!
//! The HTTP/1.1 exchange is reqwest's (over hyper, with rustls and the ring provider the
//! crate already uses), configured to do what the webhook needs and nothing more: no
//! redirects (a 3xx is an error, as any other non-2xx status), no proxy from the
//! environment, HTTP/1.1 only, one connection per POST (`Connection: close`).
//!
//! The configuration and its URL are checked first, by `config::webhook` (by hand; it
//! says why), and the checked parts are rebuilt into reqwest's URL here.
//!
//! Must never put the password in an error, a log line or `Debug` output (the
//! `Authorization` value is marked sensitive and never formatted), never wait longer than
//! the configured timeout, and never skip certificate verification.

use crate::config::webhook::{WebhookConfig, WebhookTarget};
use crate::config::Secret;
use base64::Engine as _;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE};
use rustls::ClientConfig;
use serde_json::Value;
use std::error::Error as _;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Most POSTs (connections) at once; the rest wait their turn. A mass expiry fails
/// thousands of recipients in one go, and the tool behind the webhook must not see
/// thousands of connections for it.
pub const MAX_CONCURRENT_POSTS: usize = 4;

/// Why a POST did not succeed. Never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("bounce webhook: no answer within {0:?}")]
    Timeout(Duration),
    #[error("bounce webhook: cannot connect to {addr}: {error}")]
    Connect { addr: String, error: String },
    #[error("bounce webhook: TLS with {host} failed: {error}")]
    Tls { host: String, error: String },
    #[error("bounce webhook: connection error: {0}")]
    Io(String),
    #[error("bounce webhook: not a valid HTTP response: {0}")]
    BadResponse(String),
    #[error("bounce webhook: HTTP status {status} {reason}")]
    Status { status: u16, reason: String },
    #[error("bounce webhook: cannot encode the body: {0}")]
    Body(String),
}

/// A validated webhook, ready to POST.
pub struct Webhook {
    target: WebhookTarget,
    /// What the POST goes to: `target` as reqwest's URL.
    url: reqwest::Url,
    client: reqwest::Client,
    /// The whole `Authorization` header value (marked sensitive), when a username is
    /// configured.
    authorization: Option<HeaderValue>,
    timeout: Duration,
    /// [`MAX_CONCURRENT_POSTS`] permits, one per POST in progress.
    slots: tokio::sync::Semaphore,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("target", &self.target)
            .field("basic_auth", &self.authorization.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Webhook {
    /// Checks the configuration ([`WebhookConfig::check`]: URL, timeout, credentials)
    /// and, for https, loads the trusted roots. The error names the key and never the
    /// password.
    pub fn new(cfg: WebhookConfig) -> Result<Self, String> {
        let target = cfg.check()?;
        let url = reqwest_url(&target)?;
        let authorization = match &cfg.username {
            Some(u) => {
                let pass = cfg.password.as_ref().map(Secret::expose).unwrap_or("");
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pass}"));
                // Base64 is always a valid header value; the error cannot hold the secret.
                let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| "webhook.username cannot be sent in a header".to_string())?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            // The header names as the tools behind webhooks log them (`Authorization`).
            .http1_title_case_headers()
            .pool_max_idle_per_host(0)
            .user_agent(concat!("mailvalve/", env!("CARGO_PKG_VERSION")));
        if target.https {
            builder = builder.use_preconfigured_tls(tls_config()?);
        }
        let client = builder
            .build()
            .map_err(|e| format!("webhook: cannot set up the HTTP client: {}", chain(&e)))?;
        Ok(Self {
            target,
            url,
            client,
            authorization,
            timeout: cfg.timeout,
            slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_POSTS),
        })
    }

    /// POSTs `body` as JSON. `Ok` for a 2xx status; any other status is
    /// [`WebhookError::Status`]. At most [`MAX_CONCURRENT_POSTS`] run at once (a call
    /// waits for its turn first); the exchange itself is bounded by the timeout.
    pub async fn post(&self, body: &Value) -> Result<(), WebhookError> {
        let json = serde_json::to_vec(body).map_err(|e| WebhookError::Body(e.to_string()))?;
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(CONNECTION, "close")
            .body(json);
        if let Some(a) = &self.authorization {
            request = request.header(AUTHORIZATION, a.clone());
        }
        // Never closed, so `acquire` cannot fail; if it ever did, post unbounded rather
        // than lose the report.
        let _slot = self.slots.acquire().await.ok();
        // Only the status matters: the response body is never read, and dropping the
        // response closes the connection.
        let response = match tokio::time::timeout(self.timeout, request.send()).await {
            Ok(result) => result.map_err(|e| self.error(&e))?,
            Err(_) => return Err(WebhookError::Timeout(self.timeout)),
        };
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status {
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or("").to_string(),
            })
        }
    }

    /// Sorts reqwest's error into ours, with its causes as text (never the request, so
    /// never the `Authorization` header).
    fn error(&self, e: &reqwest::Error) -> WebhookError {
        let text = chain(e);
        if e.is_timeout() {
            WebhookError::Timeout(self.timeout)
        } else if caused_by_tls(e) {
            WebhookError::Tls {
                host: self.target.host.clone(),
                error: text,
            }
        } else if e.is_connect() {
            WebhookError::Connect {
                addr: self.target.host_header.clone(),
                error: text,
            }
        } else if caused_by_io(e) {
            WebhookError::Io(text)
        } else {
            WebhookError::BadResponse(text)
        }
    }
}

/// The causes of `e` (not `e` itself, whose text names the URL), innermost last. An I/O
/// error hides the error it wraps from `source()` (rustls's, for a failed handshake), so
/// that one is followed too.
fn causes(e: &reqwest::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut cause = e.source();
    // Bounded: a chain of errors is a handful long.
    while let Some(c) = cause.filter(|_| out.len() < 16) {
        out.push(c);
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    out
}

/// The text of the causes of `e`, joined by `: ` (a cause whose text its wrapper already
/// shows is left out).
fn chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in causes(e) {
        let s = c.to_string();
        if !parts.last().is_some_and(|last| last.contains(&s)) {
            parts.push(s);
        }
    }
    if parts.is_empty() {
        // reqwest's own text; the URL in it never holds credentials (refused above).
        parts.push(e.to_string());
    }
    truncate(&parts.join(": "), 300).to_string()
}

/// True when some cause is a rustls error (a failed handshake or certificate check).
fn caused_by_tls(e: &reqwest::Error) -> bool {
    causes(e).iter().any(|c| c.is::<rustls::Error>())
}

/// True when some cause is an I/O error (reset, broken pipe) rather than a response that
/// does not parse.
fn caused_by_io(e: &reqwest::Error) -> bool {
    causes(e).iter().any(|c| c.is::<std::io::Error>())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The checked target as reqwest's URL, rebuilt from its parts (no fragment).
fn reqwest_url(t: &WebhookTarget) -> Result<reqwest::Url, String> {
    let scheme = if t.https { "https" } else { "http" };
    let host = if t.host.contains(':') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let url = format!("{scheme}://{host}:{}{}", t.port, t.path);
    reqwest::Url::parse(&url).map_err(|e| format!("webhook.url is not a valid URL: {e}"))
}

/// Certificate verification is always on, against `net::system_roots` (the same roots
/// the upstream client trusts), with the ring provider the rest of the crate uses.
fn tls_config() -> Result<ClientConfig, String> {
    let roots = crate::net::system_roots();
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("webhook TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::webhook::payload;
    use serde_json::json;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    /// What the test server saw.
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    /// Accepts one connection, reads one request, answers with `response` (raw bytes after
    /// the request), and returns the request.
    async fn serve_once(response: &'static str) -> (SocketAddr, JoinHandle<Seen>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let seen = read_request(&mut s).await;
            s.write_all(response.as_bytes()).await.unwrap();
            s.shutdown().await.ok();
            seen
        });
        (addr, h)
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    async fn read_request(s: &mut TcpStream) -> Seen {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before the end of the head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        Seen {
            head,
            body: buf[head_end..head_end + len].to_vec(),
        }
    }

    fn hook(addr: SocketAddr, timeout: Duration) -> Webhook {
        Webhook::new(WebhookConfig {
            url: format!("http://{addr}/webhooks/bounce"),
            username: Some("api".into()),
            password: Some(Secret::new("s3cret-token")),
            timeout,
        })
        .unwrap()
    }

    fn bounded<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout(Duration::from_secs(10), f)
    }

    #[tokio::test]
    async fn posts_listmonk_payload_with_basic_auth() {
        let (addr, server) =
            serve_once("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"data\":true}").await;
        let w = hook(addr, Duration::from_secs(5));
        let meta = json!({"queue_id": "0000abc", "reply": "550 5.1.1 user unknown"});
        let body = payload("reader@example.net", true, &meta);
        bounded(w.post(&body)).await.unwrap().unwrap();
        let seen = server.await.unwrap();
        assert!(
            seen.head.starts_with("POST /webhooks/bounce HTTP/1.1\r\n"),
            "{}",
            seen.head
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("api:s3cret-token");
        assert!(
            seen.head
                .contains(&format!("\r\nAuthorization: Basic {basic}\r\n")),
            "{}",
            seen.head
        );
        assert!(seen.head.contains("\r\nContent-Type: application/json\r\n"));
        assert!(seen.head.contains(&format!("\r\nHost: {addr}\r\n")));
        assert!(seen.head.contains("\r\nConnection: close\r\n"));
        let got: Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(got, body);
        assert_eq!(got["email"], "reader@example.net");
        assert_eq!(got["type"], "hard");
        assert_eq!(got["source"], "mailvalve");
        assert_eq!(got["campaign_uuid"], "");
        assert!(got["meta"].is_object());
    }

    #[tokio::test]
    async fn non_2xx_is_an_error_naming_the_status() {
        let (addr, server) =
            serve_once("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n").await;
        let w = hook(addr, Duration::from_secs(5));
        let err = bounded(w.post(&payload("a@b.example", false, &Value::Null)))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err,
            WebhookError::Status {
                status: 500,
                reason: "Internal Server Error".into()
            }
        );
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("500"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let seen = server.await.unwrap();
        let got: Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(got["type"], "soft");
        assert_eq!(got["meta"], json!({}));
    }

    #[tokio::test]
    async fn interim_100_then_204_is_ok_and_garbage_is_not() {
        let (addr, _s) =
            serve_once("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").await;
        bounded(hook(addr, Duration::from_secs(5)).post(&json!({})))
            .await
            .unwrap()
            .unwrap();
        let (addr, _s) = serve_once("SMTP is not HTTP\r\n").await;
        let err = bounded(hook(addr, Duration::from_secs(5)).post(&json!({})))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, WebhookError::BadResponse(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = read_request(&mut s).await;
            // Hold the connection open without answering.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let w = hook(addr, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = bounded(w.post(&json!({"email": "x@y.example"})))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err, WebhookError::Timeout(Duration::from_millis(200)));
        assert!(started.elapsed() < Duration::from_secs(3));
        server.abort();
    }

    /// Issue 8.6: a mass expiry posts thousands of bounces; at most
    /// `MAX_CONCURRENT_POSTS` connections are open at once, and every post gets through.
    #[tokio::test]
    async fn posts_run_with_bounded_concurrency() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (o, m) = (open.clone(), most.clone());
        let server = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let _ = read_request(&mut s).await;
                    // Each request takes a while, so posts would pile up unbounded.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                    let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                });
            }
        });
        let w = Arc::new(hook(addr, Duration::from_secs(5)));
        let posts: Vec<_> = (0..24)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(
                    async move { w.post(&json!({ "email": format!("r{i}@x.example") })).await },
                )
            })
            .collect();
        for p in posts {
            bounded(p).await.unwrap().unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        println!("24 posts at once: at most {most} connections open");
        assert!(most <= MAX_CONCURRENT_POSTS, "{most} connections at once");
        server.abort();
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = bounded(hook(addr, Duration::from_secs(2)).post(&json!({})))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, WebhookError::Connect { .. }), "{err:?}");
    }

    /// Certificate verification stays on: an https webhook whose certificate no trusted
    /// root signed fails with a TLS error before any request is sent, and the error holds
    /// neither the password nor the Authorization value.
    #[tokio::test]
    async fn an_untrusted_certificate_is_refused() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
        let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            // The handshake fails on the client's side; a request never arrives.
            acceptor.accept(tcp).await.is_ok()
        });
        let w = Webhook::new(WebhookConfig {
            url: format!("https://localhost:{port}/webhooks/bounce"),
            username: Some("api".into()),
            password: Some(Secret::new("s3cret-token")),
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let err = bounded(w.post(&json!({}))).await.unwrap().unwrap_err();
        assert!(matches!(err, WebhookError::Tls { .. }), "{err:?}");
        let shown = format!("{err} {err:?}");
        let basic = base64::engine::general_purpose::STANDARD.encode("api:s3cret-token");
        assert!(
            !shown.contains("s3cret") && !shown.contains(&basic),
            "{shown}"
        );
        assert!(!bounded(server).await.unwrap().unwrap());
    }

    #[test]
    fn new_rejects_bad_credentials_and_timeouts() {
        let base = WebhookConfig {
            url: "http://127.0.0.1:9000/webhooks/bounce".into(),
            ..WebhookConfig::default()
        };
        assert!(Webhook::new(base.clone()).is_ok());
        assert!(Webhook::new(WebhookConfig {
            timeout: Duration::ZERO,
            ..base.clone()
        })
        .is_err());
        assert!(Webhook::new(WebhookConfig {
            username: Some("a:b".into()),
            ..base.clone()
        })
        .is_err());
        assert!(Webhook::new(WebhookConfig {
            password: Some(Secret::new("p")),
            ..base
        })
        .is_err());
    }
}
