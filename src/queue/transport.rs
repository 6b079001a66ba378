//! What the delivery workers need from whatever carries a message to the provider: one
//! transaction (MAIL, RCPTs, DATA) and one outcome per recipient. `relay` implements it
//! over the upstream admission stack (the same path passthrough uses, so one policy
//! governs both modes); tests use scripted transports.
//!
//! Contract: an implementation must return exactly one [`RcptOutcome`] per recipient
//! given, in order, must never report a recipient delivered unless the provider accepted
//! the message for it, must hand on the verdict each provider reply got where it arrived
//! (nothing here classifies a reply again), and must turn every local failure into
//! [`RcptOutcome::Local`] — never hang past its own admission and protocol timeouts,
//! never panic.

use crate::policy::verdict::{Phase, Verdict};
use crate::smtp::{Envelope, Reply};
use std::future::Future;

/// Why no provider reply decides a recipient's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// The account is paused (admission refused): hold, count nothing.
    Paused,
    /// No connection or rate slot free in time: our pacing; try again soon.
    Busy,
    /// No connection could be set up (refused, TLS failure, no greeting, the upstream
    /// backing off after such failures). Not the message's fault: nothing about the
    /// recipient changes; the whole upstream backs off instead.
    Unreachable,
    /// The connection broke or timed out during the transaction. Retried after a
    /// backoff without using up an attempt.
    Broken,
    /// The address cannot be sent at all (it would break the command line).
    BadAddress,
    /// The address cannot go to this provider: the client refused it itself (`reply`,
    /// e.g. `553 5.6.7` for a non-ASCII address without SMTPUTF8). The message fails for
    /// it; the address is fine.
    Unsendable,
}

/// The result of one attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The provider's reply that decides this recipient, the phase it came in (`Mail`
    /// when MAIL was refused, `Rcpt`, `Data`, `DataEnd`, `Greeting`, `Auth`, ...), and
    /// the verdict it got where it arrived.
    Reply {
        phase: Phase,
        reply: Reply,
        verdict: Verdict,
    },
    /// No provider reply decides: `reply` is the local 4xx that says why.
    Local { kind: LocalKind, reply: Reply },
}

impl RcptOutcome {
    pub fn reply(&self) -> &Reply {
        match self {
            Self::Reply { reply, .. } | Self::Local { reply, .. } => reply,
        }
    }
}

pub trait Transport: Send + Sync + 'static {
    /// Delivers `message` (unstuffed, CRLF line ends) to `rcpts` in one transaction.
    fn deliver(
        &self,
        env: &Envelope,
        rcpts: &[String],
        message: &[u8],
    ) -> impl Future<Output = Vec<RcptOutcome>> + Send;

    /// The reachability check, while the provider is unreachable: open a connection
    /// (greeting, and whatever the session needs before a message) without sending any
    /// message, and report the outcome to the controller as any connect does. `Some(true)`
    /// when the provider answered, `Some(false)` when not; `None` when this transport
    /// cannot check on its own (then a message's delivery is the check).
    fn check_reachable(&self) -> impl Future<Output = Option<bool>> + Send {
        async { None }
    }
}
