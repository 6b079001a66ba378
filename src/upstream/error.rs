//! What can go wrong talking to the provider, and the reply the mailer gets for it.
//!
//! Every failure of the outbound side is an [`UpstreamError`]; [`UpstreamError::to_reply`]
//! turns it into a 4xx the mailer can act on ("try again later") that says why. This
//! module must never put a secret (password, AUTH exchange) into an error or a reply, and
//! `to_reply` must never answer 2xx or 5xx: a local failure is never the message's fault.

use super::answer::Answer;
use crate::policy::verdict::{PauseScope, Phase};
use crate::smtp::{EnhancedCode, Reply, ReplyError};
use std::io;
use std::time::Duration;

/// A failure on the outbound side.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect (or connect timeout) failed, or a write/read failed with an I/O error.
    #[error("cannot reach the provider: {0}")]
    Connect(#[source] io::Error),
    /// No answer (or no progress writing) within the configured RFC 5321 timeout.
    #[error("provider timed out in phase {}", .phase)]
    Timeout { phase: Phase },
    /// TLS configuration or handshake failure.
    #[error("TLS with the provider failed: {0}")]
    Tls(String),
    /// The greeting was not 2xx (e.g. `421 Too many connections`).
    #[error("provider refused the connection: {0}")]
    Greeting(Answer),
    /// Neither EHLO nor HELO was accepted.
    #[error("provider refused EHLO/HELO: {0}")]
    Ehlo(Answer),
    /// STARTTLS required but not offered (`None`) or refused (`Some(reply)`).
    #[error("provider STARTTLS failed: {}", .0.as_ref().map_or("not offered".to_string(), |r| r.to_string()))]
    StartTls(Option<Answer>),
    /// Credentials are configured, but the provider offers neither AUTH PLAIN nor LOGIN.
    #[error("provider offers no AUTH mechanism mailvalve supports (PLAIN, LOGIN)")]
    NoAuthMechanism,
    /// `[upstream.oauth2]` names a mechanism (XOAUTH2 / OAUTHBEARER) the provider does
    /// not offer.
    #[error("provider does not offer AUTH {0}, which upstream.oauth2.mechanism names")]
    NoOAuthMechanism(&'static str),
    /// No OAuth2 access token could be had (the token endpoint refused the refresh token,
    /// none is stored, or the endpoint is unreachable). Never holds a token.
    #[error("{0}")]
    OAuth(super::oauth::OAuthError),
    /// The provider rejected the credentials. Holds the provider's reply, never the secret.
    #[error("provider rejected the credentials: {0}")]
    Auth(Answer),
    /// The provider sent something that is not an SMTP reply.
    #[error("provider protocol error: {0}")]
    Protocol(#[from] ReplyError),
    /// A positive reply the protocol does not allow at this point of the conversation
    /// (`250` to STARTTLS or DATA, `334` where AUTH expects its final reply, `354` to
    /// RCPT, a `3xx` to the end of DATA): the two sides no longer agree on where they
    /// are, so the connection is dropped, the message retried and nothing is counted as
    /// accepted. Holds the reply for the log (an AUTH challenge is the provider's, never
    /// our secret).
    #[error("provider broke the protocol: {} in phase {}, where it is not a valid answer", .reply.code, .phase)]
    Unexpected { phase: Phase, reply: Reply },
    /// The provider sent bytes before a command it had not yet been given (more replies
    /// than commands, e.g. after pipelining): the replies can no longer be matched to
    /// the commands. The connection is dropped.
    #[error("provider sent {bytes} octets nobody asked for before phase {}", .phase)]
    Unsolicited { phase: Phase, bytes: usize },
    /// The provider closed the connection when a reply was expected.
    #[error("provider closed the connection")]
    Closed,
    /// An address or parameter we were asked to send would break the command line
    /// (CR, LF, angle brackets or other control characters). Nothing was sent.
    #[error("refusing to send malformed address {0:?}")]
    BadAddress(String),
    /// The connection was already unusable (earlier I/O error, timeout or 421).
    #[error("upstream connection is no longer usable")]
    Unusable,
    /// Admission: no rate slot or connection permit within `admission_wait`.
    #[error("no upstream connection free within {0:?}")]
    Busy(Duration),
    /// Admission: the policy paused the account (`remaining`: until when, if known).
    #[error("sending paused ({scope:?})")]
    Paused {
        scope: PauseScope,
        remaining: Option<Duration>,
    },
    /// Admission: recent connection failures; the upstream backs off this long.
    #[error("provider unreachable recently; backing off {0:?}")]
    Backoff(Duration),
}

impl UpstreamError {
    /// The reply for the mailer: always 4xx, says why, never carries a secret.
    pub fn to_reply(&self) -> Reply {
        let e = |s, d| EnhancedCode::new(4, s, d);
        match self {
            Self::Connect(io) => Reply::new(
                451,
                e(4, 1),
                format!("Provider unreachable: {}", io_reason(io)),
            ),
            Self::Timeout { phase } => Reply::new(
                451,
                e(4, 2),
                format!("Provider timed out waiting for {}", phase_wait(*phase)),
            ),
            Self::Tls(why) => Reply::new(
                451,
                e(7, 5),
                format!("TLS with the provider failed: {}", one_line(why)),
            ),
            Self::Greeting(r) => Reply::new(
                451,
                e(7, 0),
                format!("Provider refused the connection: {}", one_line(&r.text())),
            ),
            Self::Ehlo(r) => Reply::new(
                451,
                e(5, 0),
                format!("Provider refused EHLO: {}", one_line(&r.text())),
            ),
            Self::StartTls(None) => Reply::new(
                454,
                e(7, 0),
                "Provider does not offer STARTTLS, which the configuration requires",
            ),
            Self::StartTls(Some(r)) => Reply::new(
                454,
                e(7, 0),
                format!("Provider refused STARTTLS: {}", one_line(&r.text())),
            ),
            Self::NoAuthMechanism => Reply::new(
                454,
                e(7, 0),
                "Provider offers no AUTH mechanism mailvalve supports",
            ),
            Self::Auth(_) => Reply::new(454, e(7, 0), "Provider rejected mailvalve's credentials"),
            Self::NoOAuthMechanism(m) => Reply::new(
                454,
                e(7, 0),
                format!("Provider does not offer AUTH {m}, which the configuration requires"),
            ),
            Self::OAuth(o) if o.is_permanent() => Reply::new(
                454,
                e(7, 0),
                "Provider sign-in (OAuth2) is not possible: the refresh token was refused or is missing; run `mailvalve oauth login`",
            ),
            Self::OAuth(_) => Reply::new(
                451,
                e(4, 1),
                "Provider sign-in (OAuth2) failed: the token endpoint is unreachable, try again later",
            ),
            Self::Protocol(_) => Reply::new(
                451,
                e(5, 0),
                "Provider sent a malformed reply; try again later",
            ),
            Self::Unexpected { phase, reply } => Reply::new(
                451,
                e(5, 0),
                format!(
                    "Provider broke the SMTP protocol ({} to {}); connection dropped, try again later",
                    reply.code,
                    phase.name()
                ),
            ),
            Self::Unsolicited { phase, .. } => Reply::new(
                451,
                e(5, 0),
                format!(
                    "Provider sent replies nobody asked for (before {}); connection dropped, try again later",
                    phase.name()
                ),
            ),
            Self::Closed | Self::Unusable => Reply::new(
                451,
                e(4, 2),
                "Connection to the provider was lost; the message was not sent",
            ),
            Self::BadAddress(_) => Reply::new(
                451,
                e(5, 2),
                "Address cannot be relayed safely (control characters)",
            ),
            Self::Paused { scope, remaining } => {
                let when = match remaining {
                    Some(d) => format!("resuming in about {}", human(*d)),
                    None => {
                        "until an operator resumes it (SIGHUP to mailvalve, or a restart)".into()
                    }
                };
                match scope {
                    PauseScope::Auth => Reply::new(
                        454,
                        e(7, 0),
                        format!(
                            "Sending paused: the provider rejected mailvalve's credentials; {when}"
                        ),
                    ),
                    PauseScope::Quota => Reply::new(
                        451,
                        e(7, 0),
                        format!("Sending paused: the provider's sending quota is spent; {when}"),
                    ),
                    PauseScope::Policy => Reply::new(
                        451,
                        e(7, 0),
                        format!(
                            "Sending paused after repeated policy blocks by the provider; {when}"
                        ),
                    ),
                }
            }
            Self::Backoff(d) => Reply::new(
                451,
                e(4, 1),
                format!(
                    "Provider unreachable; mailvalve retries the connection in {}",
                    human(*d)
                ),
            ),
            Self::Busy(wait) => Reply::new(
                451,
                e(7, 0),
                format!(
                    "Provider busy: no upstream connection free within {}s, try again later",
                    wait.as_secs_f64().ceil() as u64
                ),
            ),
        }
    }

    /// The SMTP phase the failure belongs to, for the reply classifier.
    pub fn phase(&self) -> Option<Phase> {
        match self {
            Self::Timeout { phase } => Some(*phase),
            Self::Greeting(_) => Some(Phase::Greeting),
            Self::Ehlo(_) => Some(Phase::Ehlo),
            Self::StartTls(_) | Self::Tls(_) => Some(Phase::StartTls),
            Self::NoAuthMechanism | Self::Auth(_) | Self::NoOAuthMechanism(_) | Self::OAuth(_) => {
                Some(Phase::Auth)
            }
            Self::Unexpected { phase, .. } | Self::Unsolicited { phase, .. } => Some(*phase),
            _ => None,
        }
    }
}

/// `90s` → "1m 30s": short, for replies.
fn human(d: Duration) -> String {
    let s = d.as_secs().max(1);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::TimedOut => "connect timed out".into(),
        io::ErrorKind::NotFound => "host not found".into(),
        _ => one_line(&e.to_string()),
    }
}

fn phase_wait(p: Phase) -> &'static str {
    match p {
        Phase::Greeting => "the greeting",
        Phase::Ehlo => "the EHLO reply",
        Phase::StartTls => "the TLS handshake",
        Phase::Auth => "the AUTH reply",
        Phase::Mail => "the MAIL reply",
        Phase::Rcpt => "the RCPT reply",
        Phase::Data => "the 354 after DATA",
        Phase::DataEnd => "the final reply",
        Phase::Rset => "the RSET reply",
    }
}

/// Bounded, single-line text for a reply (no CR/LF, at most 200 chars).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_is_4xx() {
        let all = [
            UpstreamError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused)),
            UpstreamError::Timeout {
                phase: Phase::DataEnd,
            },
            UpstreamError::Tls("bad\r\ncert".into()),
            UpstreamError::Greeting(Answer::provider(Reply::plain(421, "Too many"), None)),
            UpstreamError::Ehlo(Answer::provider(Reply::plain(550, "no"), None)),
            UpstreamError::StartTls(None),
            UpstreamError::NoAuthMechanism,
            UpstreamError::Auth(Answer::provider(Reply::plain(535, "bad"), None)),
            UpstreamError::Protocol(ReplyError::LineTooLong),
            UpstreamError::Unexpected {
                phase: Phase::Data,
                reply: Reply::plain(250, "Ok\r\nb"),
            },
            UpstreamError::Unsolicited {
                phase: Phase::Data,
                bytes: 12,
            },
            UpstreamError::Closed,
            UpstreamError::BadAddress("a\r\nb".into()),
            UpstreamError::Busy(Duration::from_millis(1500)),
        ];
        for e in all {
            let r = e.to_reply();
            assert_eq!(r.class(), 4, "{e}: {r}");
            assert!(!String::from_utf8_lossy(&r.to_wire()).contains("\r\nb"));
        }
        assert_eq!(
            UpstreamError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused))
                .to_reply()
                .to_string(),
            "451 4.4.1 Provider unreachable: connection refused"
        );
        assert_eq!(
            UpstreamError::Busy(Duration::from_millis(1500))
                .to_reply()
                .to_string(),
            "451 4.7.0 Provider busy: no upstream connection free within 2s, try again later"
        );
    }
}
