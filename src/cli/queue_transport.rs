//! Queue mode's glue on the outbound side: implements the delivery engine's
//! [`Transport`] over the upstream [`Admission`] stack — the same pause gate, rate
//! limits, adaptive concurrency, pool and observer (classifier → controller →
//! suppression) that passthrough uses. One policy, two modes.
//!
//! It only translates: provider replies become [`Outcome::Reply`] with their phase,
//! every [`UpstreamError`] becomes [`Outcome::Local`] (or the provider reply it holds).
//! It must never report a recipient delivered without a 2xx at the end of DATA.

use crate::policy::verdict::Phase;
use crate::queue::transport::{LocalKind, Outcome, Transport};
use crate::smtp::{Envelope, Reply};
use crate::upstream::{Admission, UpstreamError};

pub struct AdmissionTransport {
    admission: Admission,
}

impl AdmissionTransport {
    pub fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

/// What an upstream failure means for a queued recipient.
fn outcome(e: &UpstreamError) -> Outcome {
    let provider = |phase, reply: &Reply| Outcome::Reply {
        phase,
        reply: reply.clone(),
    };
    match e {
        UpstreamError::Greeting(r) => provider(Phase::Greeting, r),
        UpstreamError::Ehlo(r) => provider(Phase::Ehlo, r),
        UpstreamError::Auth(r) => provider(Phase::Auth, r),
        UpstreamError::StartTls(Some(r)) => provider(Phase::StartTls, r),
        other => {
            let kind = match other {
                UpstreamError::Paused { .. } => LocalKind::Paused,
                UpstreamError::Busy(_) => LocalKind::Busy,
                UpstreamError::BadAddress(_) => LocalKind::BadAddress,
                // Connection setup failed, or the upstream backs off after failures: the
                // delivery engine waits for the upstream, not per message.
                UpstreamError::Connect(_)
                | UpstreamError::Tls(_)
                | UpstreamError::Backoff(_)
                | UpstreamError::StartTls(None)
                | UpstreamError::NoAuthMechanism => LocalKind::Unreachable,
                UpstreamError::Timeout {
                    phase: Phase::Greeting | Phase::Ehlo | Phase::StartTls | Phase::Auth,
                } => LocalKind::Unreachable,
                _ => LocalKind::Broken,
            };
            Outcome::Local {
                kind,
                reply: other.to_reply(),
            }
        }
    }
}

impl Transport for AdmissionTransport {
    async fn deliver(&self, env: &Envelope, rcpts: &[String], message: &[u8]) -> Vec<Outcome> {
        let all = |o: Outcome| vec![o; rcpts.len()];
        let mut lease = match self.admission.lease().await {
            Ok(l) => l,
            Err(e) => return all(outcome(&e)),
        };
        let (mail, replies) = match lease.envelope(env, rcpts).await {
            Ok(r) => r,
            // Dropping the lease closes the broken connection.
            Err(e) => return all(outcome(&e)),
        };
        if mail.class() != 2 {
            lease.release().await;
            return all(Outcome::Reply {
                phase: Phase::Mail,
                reply: mail,
            });
        }
        let mut out: Vec<Outcome> = replies
            .iter()
            .map(|r| Outcome::Reply {
                phase: Phase::Rcpt,
                reply: r.clone(),
            })
            .collect();
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
            // The transaction still open means DATA got no 354. A positive reply there
            // would mean "delivered" without the message ever being sent: a broken
            // provider, treated as a lost connection, never as delivered.
            Ok(r) if lease.in_transaction() && r.class() <= 3 => {
                tracing::warn!(reply = %r, "provider answered DATA without 354; message not sent");
                Outcome::Local {
                    kind: LocalKind::Broken,
                    reply: Reply::new(
                        451,
                        crate::smtp::EnhancedCode::new(4, 5, 0),
                        format!("Provider answered DATA with {} instead of 354", r.code),
                    ),
                }
            }
            Ok(r) if lease.in_transaction() => Outcome::Reply {
                phase: Phase::Data,
                reply: r,
            },
            Ok(r) => Outcome::Reply {
                phase: Phase::DataEnd,
                reply: r,
            },
            Err(e) => outcome(&e),
        };
        for i in accepted {
            out[i] = data.clone();
        }
        if matches!(data, Outcome::Local { .. }) {
            drop(lease);
        } else {
            lease.release().await;
        }
        out
    }
}
