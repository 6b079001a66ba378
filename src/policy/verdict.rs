//! What a provider reply means for mailvalve: the phase it was sent in, and the verdict
//! `classify` reaches. The controller, the relay and `explain` all act on a `Verdict`;
//! none of them looks at reply codes again.

use std::time::Duration;

/// Where in the conversation a reply was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    DataEnd,
    Rset,
}

/// What the provider is throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleKind {
    /// Too many simultaneous connections: lower the concurrency limit.
    Connections,
    /// Too many messages per time: lower the rate.
    Rate,
}

/// Why the whole account must stop sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseScope {
    /// Credentials refused: until an operator resumes or the config changes.
    Auth,
    /// A sending quota is spent: until its window resets.
    Quota,
    /// Repeated policy blocks (5.7.x): the sender's reputation, not the recipient.
    Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx, and 354 after DATA.
    Accept,
    /// Retry the message later; reduce connections or rate.
    Throttle(ThrottleKind),
    /// Retry later; `hint` is the provider's own "come back in ..." if it gave one.
    Defer { hint: Option<Duration> },
    /// The address is permanently bad: add it to the suppression list.
    Suppress,
    /// A mailbox-full style failure: suppress only after N occurrences in D days.
    SoftBounce,
    /// This message is permanently refused (size, content); the address is fine.
    RejectMessage,
    /// 5.7.x policy block: not the recipient's fault, never suppress; repeated → pause.
    PolicyBlock,
    /// The account cannot send. `until`: how long, when known (quota window).
    Pause {
        scope: PauseScope,
        until: Option<Duration>,
    },
    /// The reply made no sense (garbage, 6xx, wrong code for the phase): defer.
    ProtocolError,
}

impl Verdict {
    /// The verdict's name as `[[rules]]` spell it (`throttle-rate`, `pause-quota`, ...),
    /// for logs and the delivery log.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Throttle(ThrottleKind::Connections) => "throttle-connections",
            Self::Throttle(ThrottleKind::Rate) => "throttle-rate",
            Self::Defer { .. } => "defer",
            Self::Suppress => "suppress",
            Self::SoftBounce => "soft-bounce",
            Self::RejectMessage => "reject-message",
            Self::PolicyBlock => "policy-block",
            Self::Pause {
                scope: PauseScope::Auth,
                ..
            } => "pause-auth",
            Self::Pause {
                scope: PauseScope::Quota,
                ..
            } => "pause-quota",
            Self::Pause {
                scope: PauseScope::Policy,
                ..
            } => "pause-policy",
            Self::ProtocolError => "protocol-error",
        }
    }
}
