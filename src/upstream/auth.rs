//! AUTH PLAIN (preferred) or AUTH LOGIN with the configured credentials, or XOAUTH2 /
//! OAUTHBEARER (RFC 7628) with an OAuth2 access token ([`authenticate_oauth`]).
//!
//! Must never log, return or put into an error the password, the access token or the
//! base64 blobs that carry them: every line sent here is logged as `AUTH PLAIN <redacted>` and the like, and
//! a failure holds only the provider's reply. Each step names the reply it expects
//! (`334` to go on, `235` when done); anything else positive is the client's protocol
//! guard's [`UpstreamError::Unexpected`], never "authenticated".

use super::answer::Answer;
use super::error::UpstreamError;
use super::expect::Expect;
use super::oauth::TokenSource;
use crate::config::oauth::Mechanism;
use crate::config::Secret;
use crate::policy::verdict::Phase;
use crate::smtp::ehlo::Capabilities;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::future::Future;
use std::time::Duration;

/// What AUTH needs of a connection (`client::Connection` implements it): one command
/// and its reply, with the line logged as `shown`.
pub(crate) trait Commands {
    fn command_redacted(
        &mut self,
        line: &str,
        shown: &str,
        phase: Phase,
        expect: Expect,
        wait: Duration,
    ) -> impl Future<Output = Result<Answer, UpstreamError>> + Send;

    /// While `hold` is on, replies are read without reporting them to the policy.
    fn hold_replies(&mut self, hold: bool);

    /// Reports a reply that was read while held back (it becomes a reply like any other,
    /// with the policy's verdict).
    fn report(&mut self, phase: Phase, answer: Answer) -> Answer;

    /// Reports a failure that happened while replies were held back.
    fn report_failure(&mut self, phase: Phase, error: &UpstreamError);
}

/// Authenticates `conn`, which offered `caps`. PLAIN if offered, else LOGIN, else
/// `NoAuthMechanism`. Each step waits at most `wait`.
pub(crate) async fn authenticate<C: Commands>(
    conn: &mut C,
    caps: &Capabilities,
    wait: Duration,
    user: &str,
    pass: &Secret,
) -> Result<(), UpstreamError> {
    if caps.auth_plain {
        let mut raw = Vec::with_capacity(user.len() + pass.expose().len() + 2);
        raw.push(0);
        raw.extend_from_slice(user.as_bytes());
        raw.push(0);
        raw.extend_from_slice(pass.expose().as_bytes());
        let line = format!("AUTH PLAIN {}", B64.encode(&raw));
        let r = conn
            .command_redacted(
                &line,
                "AUTH PLAIN <redacted>",
                Phase::Auth,
                Expect::AUTH_DONE,
                wait,
            )
            .await?;
        return finish(r);
    }
    if caps.auth_login {
        let r = conn
            .command_redacted(
                "AUTH LOGIN",
                "AUTH LOGIN",
                Phase::Auth,
                Expect::AUTH_CONTINUE,
                wait,
            )
            .await?;
        if r.code != 334 {
            return finish(r);
        }
        let r = conn
            .command_redacted(
                &B64.encode(user),
                "<redacted username>",
                Phase::Auth,
                Expect::AUTH_CONTINUE,
                wait,
            )
            .await?;
        if r.code != 334 {
            return finish(r);
        }
        let r = conn
            .command_redacted(
                &B64.encode(pass.expose()),
                "<redacted password>",
                Phase::Auth,
                Expect::AUTH_DONE,
                wait,
            )
            .await?;
        return finish(r);
    }
    Err(UpstreamError::NoAuthMechanism)
}

/// `r` is negative or `235` (the guard refused anything else positive).
fn finish(r: Answer) -> Result<(), UpstreamError> {
    if r.code == 235 {
        tracing::debug!("authenticated with the provider");
        Ok(())
    } else {
        tracing::warn!(code = r.code, "provider rejected the credentials");
        Err(UpstreamError::Auth(r))
    }
}

/// Which SASL exchange [`authenticate_oauth`] runs, and what it needs besides the token.
pub(crate) struct OAuthLogin<'a> {
    pub mechanism: Mechanism,
    pub user: &'a str,
    /// For OAUTHBEARER's `host=` / `port=` (RFC 7628 3.1).
    pub host: &'a str,
    pub port: u16,
}

/// The initial client response, before base64: XOAUTH2
/// `user=USER^Aauth=Bearer TOKEN^A^A`; OAUTHBEARER (RFC 7628 3.1)
/// `n,a=USER,^Ahost=HOST^Aport=PORT^Aauth=Bearer TOKEN^A^A` with `,` and `=` in the
/// user escaped as `=2C` / `=3D` (RFC 5801 saslname).
pub(crate) fn oauth_initial_response(login: &OAuthLogin<'_>, token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(login.user.len() + token.len() + 64);
    match login.mechanism {
        Mechanism::Xoauth2 => {
            out.extend_from_slice(b"user=");
            out.extend_from_slice(login.user.as_bytes());
            out.extend_from_slice(b"\x01auth=Bearer ");
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(b"\x01\x01");
        }
        Mechanism::Oauthbearer => {
            out.extend_from_slice(b"n,a=");
            for c in login.user.chars() {
                match c {
                    ',' => out.extend_from_slice(b"=2C"),
                    '=' => out.extend_from_slice(b"=3D"),
                    c => {
                        let mut buf = [0; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            out.extend_from_slice(b",\x01host=");
            out.extend_from_slice(login.host.as_bytes());
            out.extend_from_slice(format!("\x01port={}", login.port).as_bytes());
            out.extend_from_slice(b"\x01auth=Bearer ");
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(b"\x01\x01");
        }
    }
    out
}

/// What the client answers to the provider's error challenge (a `334` carrying a JSON
/// error): XOAUTH2 an empty line (Google's and Microsoft's documentation), OAUTHBEARER a
/// single `%x01` (RFC 7628 3.2.3), base64 `AQ==`.
pub(crate) fn oauth_error_ack(mechanism: Mechanism) -> &'static str {
    match mechanism {
        Mechanism::Xoauth2 => "",
        Mechanism::Oauthbearer => "AQ==",
    }
}

/// Signs in with an OAuth2 access token from `tokens` (XOAUTH2 or OAUTHBEARER, which
/// the provider must offer). A token the provider refuses (`535`, or an error challenge)
/// is dropped, refreshed and tried once more on the same connection; only the second
/// refusal reaches the policy (and pauses the account). A refusal that is not about the
/// token (`5.7.30`, `421`, ...) reaches it at once. A refresh the token endpoint refuses
/// is [`UpstreamError::OAuth`].
pub(crate) async fn authenticate_oauth<C: Commands>(
    conn: &mut C,
    caps: &Capabilities,
    wait: Duration,
    login: &OAuthLogin<'_>,
    tokens: &TokenSource,
) -> Result<(), UpstreamError> {
    let offered = match login.mechanism {
        Mechanism::Xoauth2 => caps.auth_xoauth2,
        Mechanism::Oauthbearer => caps.auth_oauthbearer,
    };
    if !offered {
        return Err(UpstreamError::NoOAuthMechanism(login.mechanism.name()));
    }
    let name = login.mechanism.name();
    let shown = format!("AUTH {name} <redacted>");
    for attempt in 0..2 {
        let last = attempt == 1;
        let token = tokens.access_token().await.map_err(UpstreamError::OAuth)?;
        let blob = B64.encode(oauth_initial_response(login, token.secret.expose()));
        let line = format!("AUTH {name} {blob}");
        // The first try's replies are held back from the policy: a refused token is
        // refreshed, not a reason to pause. They are reported below if not retried.
        conn.hold_replies(!last);
        let first = conn
            .command_redacted(&line, &shown, Phase::Auth, Expect::OAUTH_FIRST, wait)
            .await;
        let r = match first {
            Ok(r) if r.code == 334 => {
                tracing::info!(
                    mechanism = name,
                    error = %challenge_status(&r),
                    "provider refused the OAuth2 token"
                );
                conn.command_redacted(
                    oauth_error_ack(login.mechanism),
                    "<error acknowledged>",
                    Phase::Auth,
                    Expect::AUTH_DONE,
                    wait,
                )
                .await
                .map(|r| (r, true))
            }
            Ok(r) => Ok((r, false)),
            Err(e) => Err(e),
        };
        conn.hold_replies(false);
        let (r, challenged) = match r {
            Ok(x) => x,
            Err(e) => {
                if !last {
                    conn.report_failure(Phase::Auth, &e);
                }
                return Err(e);
            }
        };
        if r.code == 235 {
            tracing::debug!(mechanism = name, "authenticated with an OAuth2 token");
            return Ok(());
        }
        if !last && (challenged || r.code == 535) {
            tokens.refused(&token).await;
            continue;
        }
        let r = if last { r } else { conn.report(Phase::Auth, r) };
        return finish(r);
    }
    Err(UpstreamError::NoOAuthMechanism(name))
}

/// The `status` of the provider's base64 JSON error challenge (`{"status":"401",...}`),
/// for the log. Never the raw blob (bounded, and it is the provider's, not a secret).
fn challenge_status(r: &Answer) -> String {
    let text = r.text();
    let decoded = B64.decode(text.trim()).unwrap_or_default();
    match serde_json::from_slice::<serde_json::Value>(&decoded) {
        Ok(v) => v
            .get("status")
            .map(|s| s.to_string().trim_matches('"').to_string())
            .unwrap_or_else(|| "no status".into()),
        Err(_) => "unreadable challenge".into(),
    }
}
