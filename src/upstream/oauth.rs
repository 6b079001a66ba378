//! OAuth2 access tokens for signing in to the provider with XOAUTH2 / OAUTHBEARER
//! (Microsoft 365 and Google steer SMTP clients to OAuth2; password sign-in is ending).
//!
//! - [`TokenSource`]: the refresh-token grant (RFC 6749 6) against the provider's token
//!   endpoint; the access token is kept in memory only, refreshed [`REFRESH_MARGIN`]
//!   before it expires, and dropped when the provider refuses it
//!   ([`TokenSource::refused`]) so the next sign-in gets a fresh one.
//! - [`device`]: the device-authorization grant (RFC 8628) behind `mailvalve oauth login`.
//! - [`loopback`]: the browser sign-in (authorization code + PKCE, redirect to 127.0.0.1)
//!   for providers whose device flow does not grant the mail scope (Google).
//! - [`RefreshStore`]: where the refresh token lives — given in the configuration
//!   ([`Given`]), or the token file (`store::token_file`, which the relay plugs in).
//!
//! Hand-written over reqwest (already the webhook's HTTP client) rather than with the
//! `oauth2` crate: the refresh grant is one form POST and the device grant one POST plus
//! a bounded poll, while the crate would add chrono, sha2 and a typed-client layer for
//! that, and the part that matters here — which endpoint error means "revoked, pause the
//! account" (`invalid_grant`) and which means "try again later" — must be ours anyway.
//!
//! It must never put an access token, the refresh token or the client secret into a log
//! line, an error, a `Debug` output or an API response: they live in `Secret`s, and an
//! endpoint's error text is scrubbed of them before it is kept.

pub mod device;
pub mod loopback;

use crate::config::oauth::ResolvedOAuth2;
use crate::config::Secret;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An access token is refreshed this long before the endpoint said it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Lifetime assumed when the endpoint does not say (`expires_in` missing).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// One token request may take at most this long.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of an endpoint's error description kept (for the log and `check`).
const MAX_DESCRIPTION: usize = 300;

/// Why no access token could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OAuthError {
    /// The endpoint refused the refresh token or the client for good (`invalid_grant`,
    /// `invalid_client`, `unauthorized_client`, `invalid_scope`): signing in again
    /// (`mailvalve oauth login`) or fixing the configuration is needed. The account pauses.
    #[error("the OAuth2 token endpoint refused the refresh token ({code}{}): sign in again with `mailvalve oauth login`", fmt_desc(.description))]
    Refused {
        code: String,
        description: Option<String>,
    },
    /// No refresh token: neither `upstream.oauth2.refresh_token` nor a token file.
    #[error("no OAuth2 refresh token: {0}; run `mailvalve oauth login` first")]
    NoRefreshToken(String),
    /// The endpoint could not be reached, timed out, or answered something else (5xx,
    /// not JSON, `temporarily_unavailable`): retried later like an unreachable provider.
    #[error("OAuth2 token endpoint unavailable: {0}")]
    Unavailable(String),
}

fn fmt_desc(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

impl OAuthError {
    /// Whether the account must wait for a person (true) or a later retry may succeed.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, OAuthError::Unavailable(_))
    }
}

/// An access token and which refresh produced it (so a refusal drops only that one).
#[derive(Clone)]
pub struct AccessToken {
    pub(crate) secret: Secret,
    pub(crate) generation: u64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken(#{}, ***)", self.generation)
    }
}

/// What `check` and the status snapshot show about the tokens (never a token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStatus {
    /// Refreshes that succeeded since start.
    pub refreshes: u64,
    /// Unix seconds of the last successful refresh.
    pub last_refreshed: Option<u64>,
    /// The last refresh's error, if the last attempt failed.
    pub last_error: Option<String>,
}

struct Cached {
    token: Secret,
    /// On the source's clock.
    expires: Duration,
    /// How long it was issued for.
    lifetime: Duration,
    generation: u64,
}

/// The endpoint's successful reply (RFC 6749 5.1).
#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// The endpoint's error reply (RFC 6749 5.2).
#[derive(Deserialize)]
pub(crate) struct ErrorReply {
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) error_description: Option<String>,
}

type Now = Arc<dyn Fn() -> Duration + Send + Sync>;

/// Where the refresh token lives.
pub trait RefreshStore: Send + Sync + 'static {
    /// The refresh token now. `Err`: why there is none (names a file, never a token).
    fn load(&self) -> Result<Secret, String>;
    /// A refresh with it succeeded; `rotated` is the new refresh token when the endpoint
    /// issued one (Microsoft does on every refresh), to keep instead.
    fn refreshed(&self, rotated: Option<Secret>);
}

/// A refresh token given in the configuration or the environment: nothing to save (a
/// rotated one is used until restart; the given one stays valid at Microsoft and Google).
pub struct Given(pub Secret);

impl RefreshStore for Given {
    fn load(&self) -> Result<Secret, String> {
        Ok(self.0.clone())
    }
    fn refreshed(&self, _rotated: Option<Secret>) {}
}

/// Access tokens for one upstream. Share one per upstream: concurrent connections wait
/// for one refresh instead of each doing their own.
pub struct TokenSource {
    cfg: ResolvedOAuth2,
    store: Arc<dyn RefreshStore>,
    /// A refresh token the endpoint rotated to, when the store could not keep it.
    rotated: Mutex<Option<Secret>>,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Cached>>,
    generation: AtomicU64,
    status: Mutex<TokenStatus>,
    now: Now,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_endpoint", &self.cfg.token_endpoint)
            .field("client_id", &self.cfg.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A source on the real clock, with the refresh token from `store`.
    pub fn new(cfg: ResolvedOAuth2, store: Arc<dyn RefreshStore>) -> Result<Arc<Self>, OAuthError> {
        let start = std::time::Instant::now();
        Self::with_clock(cfg, store, Arc::new(move || start.elapsed()))
    }

    /// A source whose notion of "now" (for expiry) is `now` (tests drive it by hand).
    pub fn with_clock(
        cfg: ResolvedOAuth2,
        store: Arc<dyn RefreshStore>,
        now: Now,
    ) -> Result<Arc<Self>, OAuthError> {
        Ok(Arc::new(Self {
            http: http_client()?,
            cfg,
            store,
            rotated: Mutex::new(None),
            cached: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            status: Mutex::new(TokenStatus::default()),
            now,
        }))
    }

    pub fn config(&self) -> &ResolvedOAuth2 {
        &self.cfg
    }

    pub fn status(&self) -> TokenStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A token that is good for at least [`REFRESH_MARGIN`] more (refreshing if needed).
    pub async fn access_token(&self) -> Result<AccessToken, OAuthError> {
        let mut cached = self.cached.lock().await;
        let now = (self.now)();
        if let Some(c) = cached.as_ref() {
            // Refreshed REFRESH_MARGIN early, or halfway for tokens that live shorter.
            if now + REFRESH_MARGIN.min(c.lifetime / 2) < c.expires {
                return Ok(AccessToken {
                    secret: c.token.clone(),
                    generation: c.generation,
                });
            }
            tracing::debug!("OAuth2 access token expires soon; refreshing");
        }
        let res = self.refresh().await;
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match res {
            Ok((token, lifetime)) => {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                status.refreshes += 1;
                status.last_refreshed = Some(crate::policy::clock::wall_ms() / 1000);
                status.last_error = None;
                tracing::info!(
                    expires_in = lifetime.as_secs(),
                    "OAuth2 access token refreshed"
                );
                *cached = Some(Cached {
                    token: token.clone(),
                    expires: (self.now)() + lifetime,
                    lifetime,
                    generation,
                });
                Ok(AccessToken {
                    secret: token,
                    generation,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "OAuth2 token refresh failed");
                status.last_error = Some(e.to_string());
                *cached = None;
                Err(e)
            }
        }
    }

    /// The provider refused `token`: forget it (unless a newer one replaced it already),
    /// so the next [`TokenSource::access_token`] refreshes.
    pub async fn refused(&self, token: &AccessToken) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| c.generation == token.generation)
        {
            tracing::info!("provider refused the OAuth2 access token; it will be refreshed");
            *cached = None;
        }
    }

    fn refresh_token(&self) -> Result<Secret, OAuthError> {
        if let Some(r) = self
            .rotated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(r);
        }
        self.store.load().map_err(OAuthError::NoRefreshToken)
    }

    /// One refresh-token grant. The new access token and its lifetime; a rotated
    /// refresh token is written back to the token file when it came from there.
    async fn refresh(&self) -> Result<(Secret, Duration), OAuthError> {
        let refresh = self.refresh_token()?;
        let scope = self.cfg.scopes.join(" ");
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose()),
            ("client_id", &self.cfg.client_id),
        ];
        if let Some(s) = &self.cfg.client_secret {
            form.push(("client_secret", s.expose()));
        }
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let secrets = self.secrets(&refresh);
        let (status, body) =
            post_form(&self.http, &self.cfg.token_endpoint, &form, &secrets).await?;
        if !status.is_success() {
            return Err(endpoint_error(status, &body, &secrets));
        }
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
            OAuthError::Unavailable(format!(
                "token endpoint answered {status} with an unreadable body ({})",
                e.classify_name()
            ))
        })?;
        if reply.access_token.is_empty() {
            return Err(OAuthError::Unavailable(
                "token endpoint answered without an access token".into(),
            ));
        }
        let rotated = reply
            .refresh_token
            .filter(|new| !new.is_empty() && new != refresh.expose())
            .map(Secret::new);
        if let Some(r) = &rotated {
            *self.rotated.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
        }
        self.store.refreshed(rotated);
        let lifetime = reply
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        Ok((Secret::new(reply.access_token), lifetime))
    }

    fn secrets(&self, refresh: &Secret) -> Vec<String> {
        let mut v = vec![refresh.expose().to_string()];
        if let Some(s) = &self.cfg.client_secret {
            v.push(s.expose().to_string());
        }
        v
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "JSON of the wrong shape",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// The HTTP client for token endpoints: rustls with ring and the system roots (the same
/// TLS stack as everything else), no redirects (a token request is never replayed
/// elsewhere), no proxy from the environment, bounded.
pub fn http_client() -> Result<reqwest::Client, OAuthError> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| OAuthError::Unavailable(format!("TLS setup: {e}")))?
    .with_root_certificates(crate::net::system_roots())
    .with_no_client_auth();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .use_preconfigured_tls(tls)
        .user_agent(concat!("mailvalve/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OAuthError::Unavailable(format!("cannot set up the HTTP client: {e}")))
}

/// POSTs `form` (x-www-form-urlencoded). The status and at most 64 KiB of body. Errors
/// are scrubbed of `secrets` (reqwest errors name the URL, never the body, but a URL
/// could be misconfigured to carry one).
pub(crate) async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
    secrets: &[String],
) -> Result<(reqwest::StatusCode, Vec<u8>), OAuthError> {
    let unavailable = |e: reqwest::Error| {
        let why = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "cannot connect".to_string()
        } else {
            e.without_url().to_string()
        };
        OAuthError::Unavailable(scrub(&format!("{}: {why}", endpoint_name(url)), secrets))
    };
    let resp = http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(unavailable)?;
    let status = resp.status();
    let mut body = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.map_err(unavailable)? {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            return Err(OAuthError::Unavailable(format!(
                "{}: reply body over 64 KiB",
                endpoint_name(url)
            )));
        }
    }
    Ok((status, body))
}

/// `https://host/path` without query (for messages).
fn endpoint_name(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_string()
}

/// An endpoint's error answer → [`OAuthError`]: the RFC 6749 5.2 codes that mean the
/// grant or the client is no good are permanent; anything else is "try later".
pub(crate) fn endpoint_error(
    status: reqwest::StatusCode,
    body: &[u8],
    secrets: &[String],
) -> OAuthError {
    match serde_json::from_slice::<ErrorReply>(body) {
        Ok(e) => {
            let description = e
                .error_description
                .map(|d| scrub(&d, secrets))
                .map(|d| one_line(&d));
            let code = one_line(&scrub(&e.error, secrets));
            match e.error.as_str() {
                "invalid_grant"
                | "invalid_client"
                | "unauthorized_client"
                | "invalid_scope"
                | "unsupported_grant_type" => OAuthError::Refused { code, description },
                _ => OAuthError::Unavailable(format!(
                    "token endpoint answered {status}: {code}{}",
                    fmt_desc(&description)
                )),
            }
        }
        Err(_) => OAuthError::Unavailable(format!("token endpoint answered {status}")),
    }
}

pub(crate) fn scrub(s: &str, secrets: &[String]) -> String {
    let mut out = s.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_DESCRIPTION {
        let mut cut = MAX_DESCRIPTION;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_errors() {
        let s = reqwest::StatusCode::BAD_REQUEST;
        let e = endpoint_error(
            s,
            br#"{"error":"invalid_grant","error_description":"AADSTS70000: token REFRESHSECRET revoked"}"#,
            &["REFRESHSECRET".into()],
        );
        assert!(e.is_permanent());
        let text = e.to_string();
        assert!(!text.contains("REFRESHSECRET"), "{text}");
        assert!(text.contains("invalid_grant"), "{text}");
        let e = endpoint_error(s, br#"{"error":"temporarily_unavailable"}"#, &[]);
        assert!(!e.is_permanent());
        let e = endpoint_error(reqwest::StatusCode::BAD_GATEWAY, b"<html>", &[]);
        assert!(!e.is_permanent());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = AccessToken {
            secret: Secret::new("TOKENVALUE"),
            generation: 3,
        };
        assert!(!format!("{t:?}").contains("TOKENVALUE"));
    }
}
