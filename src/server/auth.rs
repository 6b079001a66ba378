//! AUTH PLAIN and AUTH LOGIN (RFC 4954) against the configured `users`.
//!
//! Offered only when users are configured and, on a public listener, only after TLS
//! (`538 5.7.11` otherwise). Each password is compared in constant time for its length
//! and every configured user is checked, so timing tells little about which part was
//! wrong. On a listener that is not loopback each failure is answered only after
//! `auth_failure_delay`, so guessing passwords is slow. After [`MAX_AUTH_FAILURES`]
//! failures the session is closed with `421 4.7.0`.
//!
//! Must never: log, echo or keep credentials — not the AUTH line, not a continuation
//! line, not their base64, not a user name that failed (it may be a mistyped password);
//! allow AUTH inside a transaction or twice in a session.

use super::replies;
use super::session::{Close, Session, MAX_AUTH_FAILURES};
use super::{Relay, Shared};
use crate::config::User;
use base64::Engine as _;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

/// Decoded credentials; no `Debug`, so they cannot end up in a log line by accident.
struct Credentials {
    user: Vec<u8>,
    pass: Vec<u8>,
}

/// What a client's response to a challenge turned out to be.
enum Response {
    Data(Vec<u8>),
    /// Cancelled with `*` or not base64: the reply is queued, the exchange is over.
    Aborted,
}

impl<R: Relay> Session<R> {
    pub(crate) async fn handle_auth(
        &mut self,
        mechanism: u64,
        initial_response: String,
    ) -> Result<(), Close> {
        if self.shared.cfg.users.is_empty() {
            self.reply(replies::not_implemented());
            return Ok(());
        }
        if self.helo.is_none() {
            self.reply(replies::need_helo());
            return Ok(());
        }
        if self.user.is_some() {
            self.reply(replies::already_authenticated());
            return Ok(());
        }
        if self.tx.is_some() {
            self.reply(replies::in_transaction());
            return Ok(());
        }
        if !self.auth_offered() {
            self.reply(replies::encryption_required());
            return Ok(());
        }
        let initial = (!initial_response.is_empty()).then_some(initial_response);
        let creds = match mechanism {
            AUTH_PLAIN => self.auth_plain(initial).await?,
            AUTH_LOGIN => self.auth_login(initial).await?,
            _ => {
                self.reply(replies::auth_mechanism_unsupported());
                return Ok(());
            }
        };
        let Some(creds) = creds else {
            return Ok(());
        };
        match verify(&self.shared.cfg.users, &creds) {
            Some(name) => {
                tracing::info!(user = %name, "authenticated");
                self.user = Some(name);
                self.reply(replies::auth_ok());
            }
            None => {
                self.auth_failures += 1;
                tracing::info!(failures = self.auth_failures, "authentication failed");
                self.shared.auth_failure_pause().await?;
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    self.reply(replies::auth_too_many_failures());
                    return Err(Close::Done);
                }
                self.reply(replies::auth_failed());
            }
        }
        Ok(())
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`; authzid empty or equal to authcid.
    async fn auth_plain(&mut self, initial: Option<String>) -> Result<Option<Credentials>, Close> {
        let Response::Data(msg) = self.auth_response(initial, "").await? else {
            return Ok(None);
        };
        let mut parts = msg.split(|&b| b == 0);
        let (Some(authz), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            // Malformed: treated as wrong credentials.
            return Ok(Some(Credentials {
                user: Vec::new(),
                pass: Vec::new(),
            }));
        };
        let user = if authz.is_empty() || authz == user {
            user.to_vec()
        } else {
            Vec::new()
        };
        Ok(Some(Credentials {
            user,
            pass: pass.to_vec(),
        }))
    }

    /// The LOGIN mechanism: user name (possibly as the initial response), then password.
    async fn auth_login(&mut self, initial: Option<String>) -> Result<Option<Credentials>, Close> {
        let Response::Data(user) = self.auth_response(initial, "VXNlcm5hbWU6").await? else {
            return Ok(None);
        };
        let Response::Data(pass) = self.auth_response(None, "UGFzc3dvcmQ6").await? else {
            return Ok(None);
        };
        Ok(Some(Credentials { user, pass }))
    }

    /// The initial response if there is one, else a `334 <challenge>` and the client's
    /// next line; decoded from base64.
    async fn auth_response(
        &mut self,
        initial: Option<String>,
        challenge: &str,
    ) -> Result<Response, Close> {
        let text = match initial {
            Some(t) => t.into_bytes(),
            None => {
                self.reply(replies::auth_challenge(challenge));
                self.read_auth_line().await?
            }
        };
        match text.as_slice() {
            b"*" => {
                self.reply(replies::auth_cancelled());
                Ok(Response::Aborted)
            }
            b"=" => Ok(Response::Data(Vec::new())),
            b64 => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(d) => Ok(Response::Data(d)),
                Err(_) => {
                    self.reply(replies::auth_bad_base64());
                    Ok(Response::Aborted)
                }
            },
        }
    }

    /// One continuation line, without its CRLF. Framed like a command line (a bare CR or
    /// LF closes the session); bounded by the idle timeout.
    async fn read_auth_line(&mut self) -> Result<Vec<u8>, Close> {
        loop {
            if let Some(line) = self.next_line()? {
                let end = line.len().saturating_sub(2);
                return Ok(line[..end].to_vec());
            }
            self.read_more().await?;
        }
    }
}

impl<R> Shared<R> {
    /// Off loopback: waits `auth_failure_delay` before a failed AUTH is answered (ended
    /// early by shutdown). (On `Shared`, so the session future needs no `Sync`.)
    async fn auth_failure_pause(&self) -> Result<(), Close> {
        let delay = self.cfg.auth_failure_delay;
        if !self.public || delay.is_zero() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.shutdown.cancelled() => Err(Close::Shutdown),
        }
    }
}

/// The configured user these credentials belong to. Every user is checked and every
/// comparison runs over the full configured value.
fn verify(users: &[User], creds: &Credentials) -> Option<String> {
    let mut found = None;
    for u in users {
        let name_ok = ct_eq(u.name.as_bytes(), &creds.user);
        let pass_ok = ct_eq(u.password.expose().as_bytes(), &creds.pass);
        if name_ok & pass_ok & found.is_none() {
            found = Some(u.name.clone());
        }
    }
    found
}

/// Equality whose running time depends only on the length of `expected`.
fn ct_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, &e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!e);
        diff |= e ^ g;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret!"));
        assert!(!ct_eq(b"secret", b"secre"));
        assert!(!ct_eq(b"secret", b""));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn verify_picks_the_matching_user() {
        let users = vec![
            User {
                name: "a".into(),
                password: Secret::new("pa"),
            },
            User {
                name: "b".into(),
                password: Secret::new("pb"),
            },
        ];
        let c = |u: &str, p: &str| Credentials {
            user: u.as_bytes().to_vec(),
            pass: p.as_bytes().to_vec(),
        };
        assert_eq!(verify(&users, &c("b", "pb")).as_deref(), Some("b"));
        assert_eq!(verify(&users, &c("a", "pb")), None);
        assert_eq!(verify(&users, &c("", "")), None);
    }
}
