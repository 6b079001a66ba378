//! `mailvalve queue` and `mailvalve suppress` over the HTTP API (`POST /api/v1/control`)
//! where there is no control socket: not on Unix, when the socket is absent but the
//! instance's HTTP listener answers, or when the operator says `--api URL`. The request
//! and the answer are the control socket's own text, so the output is the same.
//!
//! It sends the steer header (`X-Mailvalve-Steer`) and, when `http.token` is configured
//! (e.g. `MAILVALVE__HTTP__TOKEN`), the bearer token; it must never print the token.
//! Plain HTTP only (the API is on loopback unless a token and TLS are configured; this
//! client carries no root store, so `https://` URLs are refused by reqwest's TLS).

use crate::config::Config;
use anyhow::Context;
use std::time::Duration;

/// Where the API is, and how to authenticate.
pub struct Api {
    base: String,
    token: Option<String>,
    /// Given by the operator (`--api`): failing to reach it is an error, not "none
    /// running".
    explicit: bool,
    /// The configured spool directory, sent so that an instance with another spool
    /// (another configuration that happens to hold `http.listen`) refuses.
    spool: Option<String>,
}

impl Api {
    /// `--api URL`, else the configured `http.listen` (on an unspecified address: the
    /// loopback one); `None` when the listener is off.
    pub fn locate(explicit: Option<&str>, cfg: &Config) -> Option<Self> {
        let token = cfg.http.token.as_ref().map(|t| t.expose().to_string());
        if let Some(url) = explicit {
            return Some(Self {
                base: url.trim_end_matches('/').to_string(),
                token,
                explicit: true,
                spool: None,
            });
        }
        let mut addr = cfg.http.listen?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Some(Self {
            base: format!("http://{addr}"),
            token,
            explicit: false,
            spool: std::fs::canonicalize(&cfg.queue.dir)
                .unwrap_or_else(|_| cfg.queue.dir.clone())
                .to_str()
                // (A header value is visible ASCII; other paths are not sent.)
                .filter(|d| d.is_ascii())
                .map(str::to_string),
        })
    }

    /// Whether the operator named it (`--api`).
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }

    /// One control request. `Ok(None)`: nobody answers there (and `--api` was not
    /// given). `Ok(Some(answer))`: the instance's answer text or its error message.
    pub async fn request(
        &self,
        line: &str,
        body: &[u8],
    ) -> anyhow::Result<Option<Result<String, String>>> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(150))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot set up the HTTP client")?;
        let url = format!("{}/api/v1/control", self.base);
        let mut payload = Vec::with_capacity(line.len() + 1 + body.len());
        payload.extend_from_slice(line.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(body);
        let mut req = client
            .post(&url)
            .header("X-Mailvalve-Steer", "1")
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(payload);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(dir) = &self.spool {
            req = req.header("X-Mailvalve-Spool", dir);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() && !self.explicit => return Ok(None),
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot reach the instance's HTTP API at {}: {}",
                    self.base,
                    without_url(&e)
                ))
            }
        };
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading the answer of {}", self.base))?;
        if status.is_success() {
            return Ok(Some(Ok(text)));
        }
        // Errors are JSON {"error": "..."}.
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        match status.as_u16() {
            422 => Ok(Some(Err(msg))),
            // Another instance (another spool) holds this address: not ours.
            409 if !self.explicit => Ok(None),
            _ => Err(anyhow::anyhow!(
                "the instance's HTTP API at {} refused: {msg}",
                self.base
            )),
        }
    }
}

/// reqwest's error text without the URL (it could carry credentials in userinfo).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(err) = src {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&err.to_string());
        src = err.source();
    }
    if s.is_empty() {
        "request failed".into()
    } else {
        s
    }
}
