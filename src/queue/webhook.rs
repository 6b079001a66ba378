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
//! - the configuration and its URL check live in `config::webhook` (checked without a
//!   client, so `mailvalve check` agrees with the running webhook).
//!
//! This module must never put the password in an error, a log line or `Debug` output
//! (it is a `Secret`, and credentials inside the URL are refused), never wait longer
//! than the configured timeout, and never skip certificate verification.

mod client;
mod payload;

pub use client::{Webhook, WebhookError, MAX_CONCURRENT_POSTS};
pub use payload::{campaign_uuid, payload, payload_for_campaign, SOURCE};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::webhook::{WebhookConfig, DEFAULT_TIMEOUT};
    use crate::config::Secret;
    use base64::Engine as _;

    #[test]
    fn the_client_never_shows_the_password() {
        let c = WebhookConfig {
            url: "https://api:hunter2@lm.example.org/".into(),
            username: Some("api".into()),
            password: Some(Secret::new("hunter2")),
            timeout: DEFAULT_TIMEOUT,
        };
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
