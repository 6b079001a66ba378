//! AUTH PLAIN (preferred) or AUTH LOGIN with the configured credentials.
//!
//! Must never log, return or put into an error the password or the base64 blobs that
//! carry it: every line sent here is logged as `AUTH PLAIN <redacted>` and the like, and
//! a failure holds only the provider's reply. Each step names the reply it expects
//! (`334` to go on, `235` when done); anything else positive is the client's protocol
//! guard's [`UpstreamError::Unexpected`], never "authenticated".

use super::answer::Answer;
use super::error::UpstreamError;
use super::expect::Expect;
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
