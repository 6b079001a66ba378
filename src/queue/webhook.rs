//! The bounce webhook: an optional HTTP POST per failed recipient, in the shape
//! listmonk's bounce webhook (`POST /webhooks/bounce`) accepts, so a newsletter tool
//! learns about hard and soft bounces at once instead of parsing report mails.
//!
//! listmonk's format (its docs `docs/content/bounces.md` and its handler
//! `cmd/bounce.go` → `models.Bounce`): a JSON object with `email` (string),
//! `campaign_uuid` (string; empty is skipped by its `record-bounce` query, anything else
//! must be a UUID), `source` (string, required), `type` (`"hard"`, `"soft"` or
//! `"complaint"`, required) and `meta`. The docs call `meta` "an escaped JSON string",
//! but the model field is a `json.RawMessage` stored as-is in a JSONB column and
//! listmonk's own bounce API returns it as an object, so we send an object (a string
//! would be stored as a JSON string, not as the metadata). Authentication is HTTP Basic
//! with an API user and its token.
//!
//! Why a hand-written HTTP/1.1 client: one POST with `Connection: close`, reading only
//! the status line, is about 100 lines over the tokio and tokio-rustls the crate already
//! has; reqwest or hyper would add dozens of crates and minutes of build time for it.
//! It is deliberately small: no redirects, no keep-alive, no chunked request bodies,
//! no proxy.
//!
//! This module must never put the password in an error, a log line or `Debug` output
//! (it is a `Secret`, and credentials inside the URL are refused), never wait longer
//! than the configured timeout, and never skip certificate verification.

use crate::config::webhook::{WebhookConfig, WebhookTarget};
use crate::config::Secret;
use base64::Engine as _;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde_json::{json, Value};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What `source` says in every payload.
pub const SOURCE: &str = "mailvalve";
/// Longest status line (and interim response) we read before giving up.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Most POSTs (connections) at once; the rest wait their turn. A mass expiry fails
/// thousands of recipients in one go, and the tool behind the webhook must not see
/// thousands of connections for it.
pub const MAX_CONCURRENT_POSTS: usize = 4;

/// listmonk's bounce payload for one recipient, without a campaign.
pub fn payload(email: &str, hard: bool, meta: &Value) -> Value {
    payload_for_campaign(email, "", hard, meta)
}

/// listmonk's bounce payload with the campaign's UUID (see [`campaign_uuid`]); a
/// `campaign_uuid` that is not a UUID is sent as `""`, because listmonk casts it to
/// `UUID` and would fail the whole request. A `null` meta is sent as `{}`.
pub fn payload_for_campaign(email: &str, campaign_uuid: &str, hard: bool, meta: &Value) -> Value {
    let campaign = if is_uuid(campaign_uuid) {
        campaign_uuid
    } else {
        ""
    };
    let meta = if meta.is_null() {
        json!({})
    } else {
        meta.clone()
    };
    json!({
        "email": email,
        "campaign_uuid": campaign,
        "source": SOURCE,
        "type": if hard { "hard" } else { "soft" },
        "meta": meta,
    })
}

/// The campaign UUID listmonk puts into every campaign mail (`X-Listmonk-Campaign`), read
/// from a header section (e.g. `dsn::header_block(message)`).
pub fn campaign_uuid(headers: &[u8]) -> Option<String> {
    for raw in headers.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(raw);
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("x-listmonk-campaign") {
                let v = value.trim();
                return is_uuid(v).then(|| v.to_ascii_lowercase());
            }
        }
    }
    None
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

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

fn io_err(e: std::io::Error) -> WebhookError {
    WebhookError::Io(e.to_string())
}

/// A validated webhook, ready to POST.
pub struct Webhook {
    target: WebhookTarget,
    /// The whole `Authorization` header value, when a username is configured.
    authorization: Option<String>,
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
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
    /// Checks the configuration ([`WebhookConfig::check`]) and, for https, loads the
    /// trusted roots. The error names the key and never the password.
    pub fn new(cfg: WebhookConfig) -> Result<Self, String> {
        let target = cfg.check()?;
        let authorization = cfg.username.as_ref().map(|u| {
            let pass = cfg.password.as_ref().map(Secret::expose).unwrap_or("");
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pass}"));
            format!("Basic {token}")
        });
        let tls = match &target.server_name {
            Some(name) => Some((tls_connector()?, name.clone())),
            None => None,
        };
        Ok(Self {
            target,
            authorization,
            timeout: cfg.timeout,
            tls,
            slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_POSTS),
        })
    }

    /// POSTs `body` as JSON. `Ok` for a 2xx status; any other status is
    /// [`WebhookError::Status`]. At most [`MAX_CONCURRENT_POSTS`] run at once (a call
    /// waits for its turn first); the exchange itself is bounded by the timeout.
    pub async fn post(&self, body: &Value) -> Result<(), WebhookError> {
        let json = serde_json::to_vec(body).map_err(|e| WebhookError::Body(e.to_string()))?;
        let request = self.request(&json);
        // Never closed, so `acquire` cannot fail; if it ever did, post unbounded rather
        // than lose the report.
        let _slot = self.slots.acquire().await.ok();
        match tokio::time::timeout(self.timeout, self.exchange(&request)).await {
            Ok(result) => result,
            Err(_) => Err(WebhookError::Timeout(self.timeout)),
        }
    }

    fn request(&self, body: &[u8]) -> Vec<u8> {
        let t = &self.target;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: mailvalve/{}\r\n\
             Content-Type: application/json\r\nAccept: application/json\r\n",
            t.path,
            t.host_header,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(a) = &self.authorization {
            head.push_str("Authorization: ");
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        req
    }

    async fn exchange(&self, request: &[u8]) -> Result<(), WebhookError> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| WebhookError::Connect {
                addr: t.host_header.clone(),
                error: e.to_string(),
            })?;
        // Only a latency tweak; a failure changes nothing that matters.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => talk(tcp, request).await,
            Some((connector, name)) => {
                let tls =
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| WebhookError::Tls {
                            host: t.host.clone(),
                            error: e.to_string(),
                        })?;
                talk(tls, request).await
            }
        }
    }
}

/// Sends the request and reads responses up to the first final (non-1xx) status line.
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> Result<(), WebhookError> {
    s.write_all(request).await.map_err(io_err)?;
    s.flush().await.map_err(io_err)?;
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    let mut start = 0; // where the current response begins in buf
    loop {
        let status_end = loop {
            if let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                break start + nl;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(WebhookError::BadResponse("status line too long".into()));
            }
            let n = s.read(&mut chunk).await.map_err(io_err)?;
            if n == 0 {
                return Err(WebhookError::BadResponse(
                    "connection closed before a status line".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let (status, reason) = parse_status_line(&buf[start..status_end])?;
        if !(100..200).contains(&status) {
            return if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(WebhookError::Status { status, reason })
            };
        }
        // An interim response (100 Continue, 103 Early Hints): skip its header section.
        let head_end = loop {
            if let Some(p) = find(&buf[start..], b"\r\n\r\n") {
                break start + p + 4;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(WebhookError::BadResponse(
                    "interim response too long".into(),
                ));
            }
            let n = s.read(&mut chunk).await.map_err(io_err)?;
            if n == 0 {
                return Err(WebhookError::BadResponse(
                    "connection closed after an interim response".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        start = head_end;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `HTTP/1.1 200 OK` → (200, "OK").
fn parse_status_line(line: &[u8]) -> Result<(u16, String), WebhookError> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || WebhookError::BadResponse(format!("{:?}", truncate(line, 100)));
    let mut it = line.splitn(3, ' ');
    let version = it.next().unwrap_or("");
    let code = it.next().unwrap_or("");
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let status: u16 = code.parse().map_err(|_| bad())?;
    let reason: String = it
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    Ok((status, truncate(&reason, 200).to_string()))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Certificate verification is always on, against `net::system_roots` (the same roots
/// the upstream client trusts).
fn tls_connector() -> Result<TlsConnector, String> {
    let roots = crate::net::system_roots();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("webhook TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::net::TcpListener;
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

    #[test]
    fn the_client_never_shows_the_password() {
        let w = Webhook::new(WebhookConfig {
            url: "https://lm.example.org/webhooks/bounce".into(),
            username: Some("api".into()),
            password: Some(Secret::new("hunter2")),
            timeout: crate::config::webhook::DEFAULT_TIMEOUT,
        })
        .unwrap();
        let shown = format!("{w:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let b64 = base64::engine::general_purpose::STANDARD.encode("api:hunter2");
        assert!(!shown.contains(&b64), "{shown}");
    }

    #[test]
    fn payload_and_campaign_header() {
        let uuid = "9f86b50d-5711-41c8-ab03-bc91c43d711b";
        let p = payload_for_campaign("a@b.example", uuid, false, &json!({"k": 1}));
        assert_eq!(
            p,
            json!({"email": "a@b.example", "campaign_uuid": uuid, "source": "mailvalve", "type": "soft", "meta": {"k": 1}})
        );
        let p = payload_for_campaign("a@b.example", "not-a-uuid", true, &json!({}));
        assert_eq!(p["campaign_uuid"], "");
        let headers = format!(
            "From: a@b\r\nx-listmonk-campaign:  {}\r\n",
            uuid.to_uppercase()
        );
        assert_eq!(campaign_uuid(headers.as_bytes()).as_deref(), Some(uuid));
        assert_eq!(campaign_uuid(b"From: a@b\r\n"), None);
        assert_eq!(campaign_uuid(b"X-Listmonk-Campaign: 42\r\n"), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK\r").unwrap(),
            (200, "OK".into())
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 404").unwrap(),
            (404, String::new())
        );
        assert!(parse_status_line(b"HTTP/2 200 OK").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK").is_err());
        assert!(parse_status_line(b"").is_err());
    }
}
