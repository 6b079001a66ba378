//! The device-authorization grant (RFC 8628) behind `mailvalve oauth login`: ask the
//! provider for a user code, let the person sign in on any browser, poll (bounded) until
//! they did, and keep the refresh token.
//!
//! It must never print or return the device code, an access token or the refresh token
//! except as `Secret`s, and never poll faster than the provider asked (`interval`,
//! raised by 5 s on every `slow_down`) or longer than the code lives.

use super::{endpoint_error, post_form, OAuthError};
use crate::config::oauth::ResolvedOAuth2;
use crate::config::Secret;
use serde::Deserialize;
use std::future::Future;
use std::time::Duration;

/// RFC 8628 3.5: the interval when the provider names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// RFC 8628 3.5: `slow_down` adds this to the interval.
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// Never wait longer than this in all, whatever the provider says the code lives.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// What the person has to do: open `verification_uri` and type `user_code`.
pub struct Started {
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// The provider's own instructions (Microsoft sends one), if any.
    pub message: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
    device_code: Secret,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("verification_uri", &self.verification_uri)
            .field("user_code", &self.user_code)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct StartReply {
    device_code: String,
    user_code: String,
    /// Google says `verification_url`.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    #[serde(default)]
    message: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

#[derive(Deserialize)]
struct Granted {
    #[serde(default)]
    refresh_token: Option<String>,
}

fn secrets(cfg: &ResolvedOAuth2) -> Vec<String> {
    cfg.client_secret
        .iter()
        .map(|s| s.expose().to_string())
        .collect()
}

/// Asks the provider's device endpoint for a user code.
pub async fn start(http: &reqwest::Client, cfg: &ResolvedOAuth2) -> Result<Started, OAuthError> {
    let endpoint = cfg.device_endpoint.as_deref().ok_or_else(|| {
        OAuthError::NoRefreshToken(
            "no device endpoint: set upstream.oauth2.device_endpoint (the profile has none)".into(),
        )
    })?;
    let scope = cfg.scopes.join(" ");
    let mut form = vec![("client_id", cfg.client_id.as_str())];
    if !scope.is_empty() {
        form.push(("scope", scope.as_str()));
    }
    if let Some(s) = &cfg.client_secret {
        form.push(("client_secret", s.expose()));
    }
    let secrets = secrets(cfg);
    let (status, body) = post_form(http, endpoint, &form, &secrets).await?;
    if !status.is_success() {
        return Err(endpoint_error(status, &body, &secrets));
    }
    let r: StartReply = serde_json::from_slice(&body).map_err(|_| {
        OAuthError::Unavailable(format!(
            "device endpoint answered {status} without device_code, user_code and verification_uri"
        ))
    })?;
    Ok(Started {
        verification_uri: r.verification_uri,
        verification_uri_complete: r.verification_uri_complete,
        user_code: r.user_code,
        message: r.message,
        expires_in: Duration::from_secs(r.expires_in),
        interval: r
            .interval
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_INTERVAL)
            .max(Duration::from_secs(1)),
        device_code: Secret::new(r.device_code),
    })
}

/// Polls the token endpoint until the person signed in (the refresh token), refused
/// (`Refused`), or the code expired / `max_wait` passed (`Refused` with
/// `expired_token`). `sleep` waits between polls (tokio's in the CLI; tests count).
pub async fn wait_for_grant<S, F>(
    http: &reqwest::Client,
    cfg: &ResolvedOAuth2,
    started: &Started,
    max_wait: Duration,
    mut sleep: S,
) -> Result<Secret, OAuthError>
where
    S: FnMut(Duration) -> F,
    F: Future<Output = ()>,
{
    let limit = started.expires_in.min(max_wait);
    let mut waited = Duration::ZERO;
    let mut interval = started.interval;
    let mut form = vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", started.device_code.expose()),
        ("client_id", cfg.client_id.as_str()),
    ];
    if let Some(s) = &cfg.client_secret {
        form.push(("client_secret", s.expose()));
    }
    let mut secrets = secrets(cfg);
    secrets.push(started.device_code.expose().to_string());
    loop {
        if waited + interval > limit {
            return Err(OAuthError::Refused {
                code: "expired_token".into(),
                description: Some(format!("nobody signed in within {}s", limit.as_secs())),
            });
        }
        sleep(interval).await;
        waited += interval;
        let (status, body) = post_form(http, &cfg.token_endpoint, &form, &secrets).await?;
        if status.is_success() {
            let g: Granted = serde_json::from_slice(&body).map_err(|_| {
                OAuthError::Unavailable("token endpoint answered without a JSON body".into())
            })?;
            return match g.refresh_token {
                Some(t) if !t.is_empty() => Ok(Secret::new(t)),
                _ => Err(OAuthError::Refused {
                    code: "no_refresh_token".into(),
                    description: Some(
                        "the provider granted no refresh token; the scopes must include offline access (Microsoft: offline_access)".into(),
                    ),
                }),
            };
        }
        match serde_json::from_slice::<super::ErrorReply>(&body) {
            Ok(e) if e.error == "authorization_pending" => continue,
            Ok(e) if e.error == "slow_down" => {
                interval += SLOW_DOWN;
                continue;
            }
            Ok(e) if e.error == "access_denied" || e.error == "expired_token" => {
                return Err(OAuthError::Refused {
                    code: e.error,
                    description: Some("the sign-in was declined or the code expired".into()),
                })
            }
            _ => return Err(endpoint_error(status, &body, &secrets)),
        }
    }
}
