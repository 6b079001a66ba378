//! The HTTP listener end to end over real loopback TCP: mailvalve in queue (or
//! passthrough) mode on the scripted provider (`support::provider`), its HTTP listener
//! on port 0, a raw HTTP/1.1 client. `/metrics` is parsed by an independent parser
//! (prometheus-parse) and checked line by line; every API route with good and bad
//! input; the guard (Host, cross-site, token); reload. Every wait is bounded.
//!
//! The harness is here; the tests are in tests/http/, one file per topic.

mod support;
use support::replies::read_replies;

#[path = "http/api.rs"]
mod api;
#[path = "http/browser.rs"]
mod browser;
#[path = "http/guard.rs"]
mod guard;
#[path = "http/metrics.rs"]
mod metrics;
#[path = "http/reload.rs"]
mod reload;

use mailvalve::config::{Config, HttpConfig, Mode, UpstreamConfig};
use mailvalve::http::HttpServer;
use mailvalve::relay::{Relay, RunningRelay};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

/// The header a state-changing request carries.
const STEER: (&str, &str) = ("X-Mailvalve-Steer", "1");

fn config(dir: &Path, up: UpstreamConfig) -> Config {
    let mut c = Config {
        mode: Mode::Queue,
        upstream: UpstreamConfig {
            profile: "local".into(),
            ..up
        },
        ..Config::default()
    };
    c.queue.dir = dir.join("spool");
    c.suppression.path = dir.join("suppression.redb");
    c.http = HttpConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..HttpConfig::default()
    };
    c
}

struct Mv {
    /// The configuration it runs (with the addresses it bound).
    cfg: Config,
    smtp: SocketAddr,
    http: SocketAddr,
    relay: RunningRelay,
    stop: CancellationToken,
    web: HttpServer,
}

/// mailvalve as `mailvalve run` starts it: the relay, then the HTTP listener.
async fn start(cfg: Config) -> Mv {
    start_from(cfg, None).await
}

/// [`start`], reloadable from `file` (as `run -c FILE`).
async fn start_from(mut cfg: Config, file: Option<PathBuf>) -> Mv {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cfg.server.listen = listener.local_addr().unwrap();
    cfg.server.shutdown_grace = Duration::from_millis(500);
    let stop = CancellationToken::new();
    let mut relay = Relay::new(cfg.clone()).unwrap();
    if file.is_some() {
        relay = relay.reloadable_from(file);
    }
    let relay = relay.start(listener, stop.clone()).await.unwrap();
    let web = mailvalve::http::start(&cfg.http, relay.handle().clone(), stop.clone())
        .await
        .unwrap()
        .expect("http listener on");
    Mv {
        cfg,
        smtp: relay.local_addr(),
        http: web.local_addr(),
        relay,
        stop,
        web,
    }
}

impl Mv {
    async fn get(&self, path: &str) -> Resp {
        http(self.http, "GET", path, &[], None).await
    }

    async fn post(&self, path: &str) -> Resp {
        http(self.http, "POST", path, &[STEER], None).await
    }

    async fn status(&self) -> Value {
        let r = self.get("/api/v1/status").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    async fn stop(self) {
        self.stop.cancel();
        timeout(WAIT, self.relay.wait()).await.unwrap().unwrap();
        timeout(WAIT, self.web.wait()).await.unwrap();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request (Host: the listener's address unless `headers` names one),
/// `Connection: close`, read to the end.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let mut s = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Sends one message in one session; returns every reply line.
async fn send(addr: SocketAddr, rcpts: &[&str], n: usize) -> Vec<String> {
    let mut s = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut script = "EHLO mailer.test\r\nMAIL FROM:<news@news.example>\r\n".to_string();
    for r in rcpts {
        script.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    script.push_str("DATA\r\n");
    s.write_all(script.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let before = 2 + 1 + rcpts.len() + 1;
    read_replies(&mut s, &mut buf, &mut replies, before).await;
    let body = format!("Subject: news {n}\r\n\r\nHello reader {n}.");
    s.write_all(format!("{body}\r\n.\r\nQUIT\r\n").as_bytes())
        .await
        .unwrap();
    read_replies(&mut s, &mut buf, &mut replies, before + 2).await;
    replies
}

/// Polls the status every 50 ms until `cond` holds, for at most `WAIT`.
async fn until(mv: &Mv, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = mv.status().await;
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; last status {s}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}
