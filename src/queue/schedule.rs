//! What happens to one queued recipient after a delivery attempt: delivered, failed for
//! good, retried (and whether the attempt counts), or held while the account is paused.
//! One function, [`decide`], of the attempt's [`RcptOutcome`] — a provider reply with
//! the verdict it got where it arrived, or a local failure — so nothing classifies a
//! reply twice. Pure: no clock, no I/O.
//!
//! It must never fail a recipient because of our own pacing (throttles, admission waits,
//! unreachable provider), never count an attempt while the account is paused, and never
//! suppress: suppression is the policy feedback path's job.

use std::time::Duration;

use super::transport::{LocalKind, RcptOutcome};
use crate::policy::classify::reply_hint;
use crate::policy::verdict::{Phase, ThrottleKind, Verdict};
use crate::smtp::Reply;

/// How a recipient failed for good (the bounce report and the webhook's "hard"/"soft").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The address is bad (5.1.x, 5.2.1, "user unknown").
    Address,
    /// The mailbox is full (5.2.2).
    Mailbox,
    /// This message was refused (size, content, policy); the address is fine.
    Message,
    /// Still deferred after `max_age`.
    Expired,
}

impl FailKind {
    /// listmonk's bounce types: "hard" for a bad address, "soft" otherwise.
    pub fn is_hard(self) -> bool {
        matches!(self, Self::Address)
    }
}

/// What a delivery attempt did to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    Failed(FailKind),
    /// Try again later. `counts`: the attempt is the message's (deferral), not our pacing
    /// (throttle, connection trouble), so it advances the backoff.
    Retry {
        counts: bool,
        hint: Option<Duration>,
    },
    /// The account is paused: keep the recipient exactly as it was.
    Hold,
    /// The provider takes no more recipients in this transaction (`452 4.5.3`): due
    /// again at once, in the next transaction, uncounted — RFC 5321 §4.5.3.1.10 asks the
    /// client to send the rest in another transaction, not to back off.
    NextTransaction,
    /// Throttled for our pace (rate, recipients) and the provider named no
    /// time: due again at once, uncounted. Admission holds it until the controller lets
    /// it go (a block's single probes, the learned pace), so a retry counts against the
    /// provider's window like any message and never waits a backoff on top — at the
    /// end of a campaign that backoff would leave the provider idle.
    Paced,
}

/// Whether `reply` in `phase` says "no more recipients in this transaction": a 4xx or 5xx
/// to RCPT with the enhanced code x.5.3, or 452 saying "too many recipients" (RFC 5321
/// gives 452 this meaning). The rule table still decides the verdict (defer); this only
/// says when its retry is due.
pub fn next_transaction_at_once(phase: Phase, reply: &Reply) -> bool {
    if phase != Phase::Rcpt || reply.class() < 4 {
        return false;
    }
    match reply.enhanced {
        Some(e) => e.subject == 5 && e.detail == 3,
        None => {
            reply.code == 452
                && reply
                    .text()
                    .to_ascii_lowercase()
                    .contains("too many recipients")
        }
    }
}

/// A permanent 5.7.x policy block of one message is retried this many times (it may be
/// a transient blocklisting) before the recipient fails with a bounce report.
pub const POLICY_BLOCK_ATTEMPTS: u32 = 3;

/// The decision for one recipient's outcome of an attempt, and the verdict's name for
/// the delivery log. `attempts`: counted attempts before this one; `rcpts`: recipients
/// in the transaction; `backing_off`: the upstream is in its connect backoff (so an
/// unreachable provider holds the queue rather than delaying each message).
pub fn decide(
    out: &RcptOutcome,
    attempts: u32,
    rcpts: usize,
    backing_off: bool,
) -> (Decision, &'static str) {
    let retry = |counts| Decision::Retry { counts, hint: None };
    match out {
        RcptOutcome::Reply {
            phase,
            reply,
            verdict,
        } => {
            // After DATA one reply answers for every recipient of the transaction: it
            // cannot say which address is bad.
            let whole = rcpts > 1 && matches!(phase, Phase::Data | Phase::DataEnd);
            let d = decide_reply(verdict, *phase, reply, attempts, whole);
            (d, verdict.name())
        }
        RcptOutcome::Local { kind, .. } => match kind {
            LocalKind::Paused => (Decision::Hold, "paused"),
            // No update at all: the recipient stays due and is picked up again as soon
            // as a slot is free, or (unreachable) when the upstream's connect backoff has
            // passed.
            LocalKind::Busy => (Decision::Hold, "busy"),
            LocalKind::Unreachable if backing_off => (Decision::Hold, "unreachable"),
            // Without an upstream backoff in force (a failure the controller does not
            // count as a connect failure), delay the message instead, so a broken
            // upstream is never retried in a tight loop.
            LocalKind::Unreachable => (retry(false), "unreachable"),
            // Counted, so that a message that breaks the connection every time backs off
            // further and further instead of being re-sent every few seconds for days
            // (attempts only steer the backoff).
            LocalKind::Broken => (retry(true), "connection-lost"),
            LocalKind::BadAddress => (Decision::Failed(FailKind::Address), "bad-address"),
            // What the rule table makes of a 5.6.x refusal: this message, not the address.
            LocalKind::Unsendable => (
                Decision::Failed(FailKind::Message),
                Verdict::RejectMessage.name(),
            ),
        },
    }
}

/// The decision for `reply`, received in `phase` and classified as `verdict`, for a
/// recipient that has had `attempts` counted attempts before this one. `whole`: the reply
/// answered a whole transaction of several recipients (DATA, end of DATA), so it cannot
/// be about one address: an address verdict (unknown user, mailbox full) fails the
/// message for all of them, as a message failure — never "hard", never suppressed.
fn decide_reply(
    verdict: &Verdict,
    phase: Phase,
    reply: &Reply,
    attempts: u32,
    whole: bool,
) -> Decision {
    let class = reply.class();
    match verdict {
        Verdict::Suppress | Verdict::SoftBounce if whole && class >= 5 => {
            Decision::Failed(FailKind::Message)
        }
        // A 2xx at DATA-end; an accepted RCPT alone never reaches here.
        Verdict::Accept => Decision::Delivered,
        // Our pacing, not the message: uncounted, with the provider's own "try again
        // in ..." when it gives one.
        // A rate or recipient-rate throttle blocks admission until the learner's probe
        // is accepted, so the retry needs no backoff of its own. A connection throttle
        // does not: a provider that answers every MAIL with 421 after a good greeting
        // would be reconnected to in a tight loop.
        Verdict::Throttle(ThrottleKind::Rate | ThrottleKind::Recipients) => {
            match reply_hint(reply) {
                None => Decision::Paced,
                hint => Decision::Retry {
                    counts: false,
                    hint,
                },
            }
        }
        Verdict::Throttle(_) => Decision::Retry {
            counts: false,
            hint: reply_hint(reply),
        },
        // Before any recipient was named (greeting, EHLO, AUTH, MAIL) a policy block is
        // about the sender's account or IP, not this message: uncounted, never bounced.
        Verdict::PolicyBlock if !matches!(phase, Phase::Rcpt | Phase::Data | Phase::DataEnd) => {
            Decision::Retry {
                counts: false,
                hint: reply_hint(reply),
            }
        }
        Verdict::Defer { .. } if next_transaction_at_once(phase, reply) => {
            Decision::NextTransaction
        }
        Verdict::Defer { hint } => Decision::Retry {
            counts: true,
            hint: *hint,
        },
        Verdict::ProtocolError => Decision::Retry {
            counts: true,
            hint: None,
        },
        Verdict::Suppress => Decision::Failed(FailKind::Address),
        Verdict::SoftBounce if class >= 5 => Decision::Failed(FailKind::Mailbox),
        Verdict::SoftBounce => Decision::Retry {
            counts: true,
            hint: None,
        },
        Verdict::RejectMessage if class >= 5 => Decision::Failed(FailKind::Message),
        Verdict::RejectMessage => Decision::Retry {
            counts: true,
            hint: None,
        },
        Verdict::PolicyBlock if class >= 5 && attempts + 1 >= POLICY_BLOCK_ATTEMPTS => {
            Decision::Failed(FailKind::Message)
        }
        Verdict::PolicyBlock => Decision::Retry {
            counts: true,
            hint: None,
        },
        Verdict::Pause { .. } => Decision::Hold,
    }
}

/// When a retried recipient is due again: `now_ms` plus the delay, saturating.
pub fn next_attempt(now_ms: u64, delay: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify::Classifier;

    /// The outcome of a one-recipient transaction answered `text` in `phase`, with the
    /// verdict the built-in rules give it where it arrives.
    fn answered(phase: Phase, text: &str) -> RcptOutcome {
        let c = Classifier::builtin().unwrap();
        let reply = Reply::parse_lenient(text).unwrap();
        let verdict = c.classify(phase, &reply).verdict;
        RcptOutcome::Reply {
            phase,
            reply,
            verdict,
        }
    }

    fn decision(phase: Phase, text: &str, attempts: u32) -> Decision {
        decide(&answered(phase, text), attempts, 1, false).0
    }

    /// `452 4.5.3` at RCPT: the rest goes in the next transaction at once, not after a
    /// backoff (issue 15); elsewhere, or a plain 452 "mailbox busy", is a normal defer.
    #[test]
    fn too_many_recipients_is_the_next_transaction_at_once() {
        assert_eq!(
            decision(Phase::Rcpt, "452 4.5.3 Too many recipients", 0),
            Decision::NextTransaction
        );
        assert_eq!(
            decision(Phase::Rcpt, "452 Too many recipients", 2),
            Decision::NextTransaction
        );
        assert!(matches!(
            decision(Phase::Rcpt, "452 4.2.2 Mailbox full", 0),
            Decision::Retry { .. }
        ));
        assert!(matches!(
            decision(Phase::Rcpt, "451 4.3.0 Try later", 0),
            Decision::Retry { counts: true, .. }
        ));
    }

    #[test]
    fn each_kind_of_reply() {
        use Decision::*;
        assert_eq!(decision(Phase::DataEnd, "250 2.0.0 Ok", 0), Delivered);
        assert_eq!(
            decision(Phase::Rcpt, "550 5.1.1 No such user", 0),
            Failed(FailKind::Address)
        );
        assert_eq!(
            decision(Phase::Rcpt, "552 5.2.2 Mailbox full", 0),
            Failed(FailKind::Mailbox)
        );
        assert_eq!(
            decision(Phase::DataEnd, "552 5.3.4 Message too big", 0),
            Failed(FailKind::Message)
        );
        // Our pace, no time named: due at once, admission holds it.
        assert_eq!(
            decision(Phase::Mail, "421 4.7.0 Too many connections", 0),
            Retry {
                counts: false,
                hint: None
            }
        );
        assert_eq!(
            decision(Phase::Rcpt, "450 4.7.1 Rate limit exceeded", 5),
            Paced
        );
        // With a time named: not before it.
        assert_eq!(
            decision(
                Phase::Mail,
                "450 4.7.1 Rate limit exceeded, try again in 45 seconds",
                0
            ),
            Retry {
                counts: false,
                hint: Some(Duration::from_secs(45))
            }
        );
        assert_eq!(
            decision(
                Phase::Rcpt,
                "451 4.7.1 Greylisted, try again in 5 minutes",
                0
            ),
            Retry {
                counts: true,
                hint: Some(Duration::from_secs(300))
            }
        );
        assert_eq!(decision(Phase::Auth, "535 5.7.8 Bad credentials", 0), Hold);
        assert_eq!(
            decision(
                Phase::Mail,
                "550 5.4.5 Daily user sending quota exceeded",
                0
            ),
            Hold
        );
    }

    #[test]
    fn quota_and_policy_never_fail_an_address() {
        for text in [
            "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            "550 Send quota exceeded",
            "452 4.5.3 Too many recipients",
        ] {
            let d = decision(Phase::Rcpt, text, 0);
            assert!(
                !matches!(d, Decision::Failed(FailKind::Address)),
                "{text}: {d:?}"
            );
        }
        // A 5.7.x block is retried a few times, then fails the message (not the address).
        let block = "554 5.7.1 Message rejected as spam";
        assert!(matches!(
            decision(Phase::DataEnd, block, 0),
            Decision::Retry { counts: true, .. } | Decision::Hold
        ));
        assert!(matches!(
            decision(Phase::DataEnd, block, POLICY_BLOCK_ATTEMPTS - 1),
            Decision::Failed(FailKind::Message) | Decision::Hold
        ));
    }

    #[test]
    fn an_address_verdict_for_a_whole_transaction_fails_the_message_not_the_address() {
        for text in [
            "550 5.1.1 <a@example.org>: Recipient address rejected: User unknown",
            "552 5.2.2 Mailbox full",
        ] {
            let out = answered(Phase::DataEnd, text);
            assert_eq!(
                decide(&out, 0, 2, false).0,
                Decision::Failed(FailKind::Message),
                "{text}"
            );
            // One recipient: the reply is about that address.
            assert!(matches!(
                decide(&out, 0, 1, false).0,
                Decision::Failed(FailKind::Address | FailKind::Mailbox)
            ));
        }
        // A 4xx for the whole transaction is retried as before.
        assert!(matches!(
            decide(
                &answered(Phase::DataEnd, "452 4.2.2 Mailbox full"),
                0,
                2,
                false
            )
            .0,
            Decision::Retry { .. }
        ));
    }

    /// The verdict that came with the reply decides, not a second reading of the reply:
    /// a user rule that calls a 550 a rate throttle is obeyed.
    #[test]
    fn the_decision_follows_the_verdict_that_came_with_the_reply() {
        let out = RcptOutcome::Reply {
            phase: Phase::Rcpt,
            reply: Reply::parse_lenient("550 5.1.1 try again in 2 minutes").unwrap(),
            verdict: Verdict::Throttle(crate::policy::verdict::ThrottleKind::Rate),
        };
        assert_eq!(
            decide(&out, 3, 1, false),
            (
                Decision::Retry {
                    counts: false,
                    hint: Some(Duration::from_secs(120))
                },
                "throttle-rate"
            )
        );
    }

    #[test]
    fn local_failures() {
        let local = |kind| RcptOutcome::Local {
            kind,
            reply: Reply::plain(451, "local"),
        };
        let cases = [
            (LocalKind::Paused, false, Decision::Hold),
            (LocalKind::Busy, false, Decision::Hold),
            (LocalKind::Unreachable, true, Decision::Hold),
            (
                LocalKind::Unreachable,
                false,
                Decision::Retry {
                    counts: false,
                    hint: None,
                },
            ),
            (
                LocalKind::Broken,
                false,
                Decision::Retry {
                    counts: true,
                    hint: None,
                },
            ),
            (
                LocalKind::BadAddress,
                false,
                Decision::Failed(FailKind::Address),
            ),
            (
                LocalKind::Unsendable,
                false,
                Decision::Failed(FailKind::Message),
            ),
        ];
        for (kind, backing_off, want) in cases {
            assert_eq!(decide(&local(kind), 0, 1, backing_off).0, want, "{kind:?}");
        }
    }

    #[test]
    fn next_attempt_saturates() {
        assert_eq!(next_attempt(1000, Duration::from_millis(500)), 1500);
        assert_eq!(
            next_attempt(u64::MAX - 1, Duration::from_secs(10)),
            u64::MAX
        );
    }
}
