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
//! - `payload`: the JSON body and the campaign UUID (pure).
//! - `client`: the HTTP POST ([`Webhook`]), through reqwest.
//! - `url`: the URL check, by hand.
//!
//! This module must never put the password in an error, a log line or `Debug` output
//! (it is a `Secret`, and credentials inside the URL are refused), never wait longer
//! than the configured timeout, and never skip certificate verification.

mod client;
mod payload;
mod url;

pub use client::{Webhook, WebhookError, MAX_CONCURRENT_POSTS};
pub use payload::{campaign_uuid, payload, payload_for_campaign, SOURCE};

use crate::config::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// `[queue.webhook]` (or wherever the caller mounts it).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// e.g. `https://listmonk.example.org/webhooks/bounce`. No credentials in it.
    pub url: String,
    /// HTTP Basic user (listmonk: the API user).
    #[serde(default)]
    pub username: Option<String>,
    /// HTTP Basic password (listmonk: the API user's token).
    #[serde(default)]
    pub password: Option<Secret>,
    /// The whole request, connect to status line, must finish within this.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: None,
            password: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_userinfo(&self.url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The URL with anything between `://` and `@` in the authority replaced by `***`.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn config_from_toml_and_redaction() {
        let c: WebhookConfig = toml::from_str(
            "url = \"https://lm.example.org/webhooks/bounce\"\nusername = \"api\"\npassword = \"hunter2\"\ntimeout = \"3s\"",
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("hunter2"));
        let c: WebhookConfig = toml::from_str("url = \"http://127.0.0.1:9000/x\"").unwrap();
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(WebhookConfig::default().timeout, DEFAULT_TIMEOUT);
        assert!(toml::from_str::<WebhookConfig>("url = \"http://x/\"\npasswd = \"a\"").is_err());

        let c = WebhookConfig {
            url: "https://api:hunter2@lm.example.org/".into(),
            username: Some("api".into()),
            password: Some(Secret::new("hunter2")),
            timeout: DEFAULT_TIMEOUT,
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let err = Webhook::new(c.clone()).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let w = Webhook::new(WebhookConfig {
            url: "https://lm.example.org/webhooks/bounce".into(),
            ..c
        })
        .unwrap();
        let shown = format!("{w:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let b64 = base64::engine::general_purpose::STANDARD.encode("api:hunter2");
        assert!(!shown.contains(&b64), "{shown}");
    }
}
