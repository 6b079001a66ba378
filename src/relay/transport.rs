//! Queue mode's glue on the outbound side: implements the delivery engine's
//! [`Transport`] over the upstream [`Admission`] stack — the same pause gate, rate
//! limits, adaptive concurrency, pool and observer (classifier → controller →
//! suppression) that passthrough uses. One policy, two modes.
//!
//! It only translates: provider replies become [`RcptOutcome::Reply`] with their phase
//! and the verdict the observer gave them where they arrived (each reply is classified
//! once, there), every [`UpstreamError`] becomes [`RcptOutcome::Local`] (or the provider
//! reply it holds), a reply the client made up becomes [`LocalKind::Unsendable`].
//! It must never report a recipient delivered without a 2xx at the end of DATA of its
//! own transaction. It does not check reply codes itself: the upstream client's one
//! guard turns every positive reply the protocol does not allow (a `250` to DATA, to
//! STARTTLS, a `334` at the end of AUTH) into an error before it gets here, so the
//! replies it translates are negative ones, the expected ones, and the final reply.

use crate::policy::verdict::Phase;
use crate::queue::transport::{LocalKind, RcptOutcome, Transport};
use crate::smtp::Envelope;
use crate::upstream::{Admission, Answer, UpstreamError};

pub struct AdmissionTransport {
    admission: Admission,
}

impl AdmissionTransport {
    pub fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

/// A reply for a queued recipient: the provider's, with the verdict it got where it
/// arrived, or the client's own refusal.
fn answered(phase: Phase, a: &Answer) -> RcptOutcome {
    let reply = a.reply.clone();
    match &a.verdict {
        Some(verdict) if !a.local => RcptOutcome::Reply {
            phase,
            reply,
            verdict: verdict.clone(),
        },
        _ if a.local && reply.class() == 5 => RcptOutcome::Local {
            kind: LocalKind::Unsendable,
            reply,
        },
        _ if a.local => RcptOutcome::Local {
            kind: LocalKind::Broken,
            reply,
        },
        // The relay's admission always carries the policy observer; a reply that was
        // not classified is retried, never taken as delivered or failed.
        _ => {
            tracing::error!(%reply, "provider reply without a verdict; retried");
            RcptOutcome::Local {
                kind: LocalKind::Broken,
                reply,
            }
        }
    }
}

/// What an upstream failure means for a queued recipient.
fn outcome(e: &UpstreamError) -> RcptOutcome {
    match e {
        UpstreamError::Greeting(r) => answered(Phase::Greeting, r),
        UpstreamError::Ehlo(r) => answered(Phase::Ehlo, r),
        UpstreamError::Auth(r) => answered(Phase::Auth, r),
        UpstreamError::StartTls(Some(r)) => answered(Phase::StartTls, r),
        other => {
            let setup = matches!(
                other.phase(),
                Some(Phase::Greeting | Phase::Ehlo | Phase::StartTls | Phase::Auth)
            );
            let kind = match other {
                UpstreamError::Paused { .. } => LocalKind::Paused,
                // The token endpoint refused the refresh token (or there is none): the
                // observer has paused the account; hold, count nothing.
                UpstreamError::OAuth(o) if o.is_permanent() => LocalKind::Paused,
                UpstreamError::Busy(_) => LocalKind::Busy,
                UpstreamError::BadAddress(_) => LocalKind::BadAddress,
                // Connection setup failed, or the upstream backs off after failures: the
                // delivery engine waits for the upstream, not per message.
                UpstreamError::Connect(_)
                | UpstreamError::Tls(_)
                | UpstreamError::Backoff(_)
                | UpstreamError::StartTls(None)
                | UpstreamError::NoAuthMechanism
                | UpstreamError::NoOAuthMechanism(_)
                | UpstreamError::OAuth(_) => LocalKind::Unreachable,
                // A connection that broke before MAIL (no greeting in time, a reply the
                // protocol does not allow during setup) is set-up trouble too.
                UpstreamError::Timeout { .. }
                | UpstreamError::Unexpected { .. }
                | UpstreamError::Unsolicited { .. }
                    if setup =>
                {
                    LocalKind::Unreachable
                }
                _ => LocalKind::Broken,
            };
            RcptOutcome::Local {
                kind,
                reply: other.to_reply(),
            }
        }
    }
}

/// What identifies a queued message to the feedback path (a mailbox-full reply counts
/// once per message and day): a digest of the sender, the size and the header section
/// (at most the first 64 KiB), which carries the Message-ID and Date. The same for
/// every retry and every chunk of one message, across restarts of one build, without
/// reading the whole body again. Not a security boundary: a collision only means two
/// messages count as one toward the soft-bounce threshold.
pub fn message_identity(env: &Envelope, message: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    const HEAD: usize = 64 * 1024;
    let head = message.get(..HEAD).unwrap_or(message);
    let head = memchr::memmem::find(head, b"\r\n\r\n").map_or(head, |i| &head[..i]);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env.from.hash(&mut h);
    message.len().hash(&mut h);
    head.hash(&mut h);
    format!("q:{:016x}", h.finish())
}

impl Transport for AdmissionTransport {
    async fn deliver(&self, env: &Envelope, rcpts: &[String], message: &[u8]) -> Vec<RcptOutcome> {
        let all = |o: RcptOutcome| vec![o; rcpts.len()];
        // Quotas the provider counts in recipients take this message's recipients.
        let mut lease = match self.admission.lease_for(rcpts.len()).await {
            Ok(l) => l,
            Err(e) => return all(outcome(&e)),
        };
        lease.set_message_identity(Some(&message_identity(env, message)));
        let (mail, replies) = match lease.envelope(env, rcpts).await {
            Ok(r) => r,
            // Dropping the lease closes the broken connection.
            Err(e) => return all(outcome(&e)),
        };
        if mail.class() != 2 {
            lease.release().await;
            return all(answered(Phase::Mail, &mail));
        }
        let mut out: Vec<RcptOutcome> = replies.iter().map(|r| answered(Phase::Rcpt, r)).collect();
        // A provider that answered fewer RCPTs than asked breaks the contract; the rest
        // are retried.
        while out.len() < rcpts.len() {
            out.push(outcome(&UpstreamError::Closed));
        }
        let accepted: Vec<usize> = (0..rcpts.len())
            .filter(|&i| replies.get(i).is_some_and(|r| r.class() == 2))
            .collect();
        if accepted.is_empty() {
            lease.release().await;
            return out;
        }
        let data = match lease.data(message).await {
            // The transaction still open means DATA was refused (4xx/5xx; the client's
            // guard lets no other answer than 354 through).
            Ok(r) if lease.in_transaction() => answered(Phase::Data, &r),
            Ok(r) => answered(Phase::DataEnd, &r),
            Err(e) => outcome(&e),
        };
        for i in accepted {
            out[i] = data.clone();
        }
        if matches!(data, RcptOutcome::Local { .. }) {
            drop(lease);
        } else {
            lease.release().await;
        }
        out
    }

    /// Opens one connection as delivery would (the observer tells the controller how it
    /// went) and keeps it in the pool for the next message; no message is sent.
    async fn check_reachable(&self) -> Option<bool> {
        let pool = self.admission.pool();
        match crate::upstream::Connection::connect(&pool.settings()).await {
            Ok(conn) => {
                pool.put(conn).await;
                Some(true)
            }
            Err(_) => Some(false),
        }
    }
}
