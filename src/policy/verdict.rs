//! What a provider reply means for mailvalve: the phase it was sent in, and the verdict
//! `classify` reaches. The controller, the relay and `explain` all act on a `Verdict`;
//! none of them looks at reply codes again.
//!
//! It must never hold behaviour beyond naming: verdicts are decided in `classify`.

use std::fmt;
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

impl Phase {
    /// Every phase, in the order of a conversation.
    pub const ALL: [Phase; 9] = [
        Self::Greeting,
        Self::Ehlo,
        Self::StartTls,
        Self::Auth,
        Self::Mail,
        Self::Rcpt,
        Self::Data,
        Self::DataEnd,
        Self::Rset,
    ];

    /// The name as the config's `[[rules]]`, `mailvalve explain` and the logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Greeting => "greeting",
            Self::Ehlo => "ehlo",
            Self::StartTls => "starttls",
            Self::Auth => "auth",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::Data => "data",
            Self::DataEnd => "data-end",
            Self::Rset => "rset",
        }
    }

    /// Reads a phase name: case, `-`, `_` and spaces do not matter, and a few other
    /// spellings are taken (`connect`, `banner`, `helo`, `mail-from`, `rcpt-to`, `eod`,
    /// `end-of-data`). The one parser for config rules and `mailvalve explain --phase`.
    pub fn parse(s: &str) -> Option<Phase> {
        let norm: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        Some(match norm.as_str() {
            "greeting" | "connect" | "banner" => Self::Greeting,
            "ehlo" | "helo" => Self::Ehlo,
            "starttls" => Self::StartTls,
            "auth" => Self::Auth,
            "mail" | "mailfrom" => Self::Mail,
            "rcpt" | "rcptto" => Self::Rcpt,
            "data" => Self::Data,
            "dataend" | "eod" | "enddata" | "endofdata" => Self::DataEnd,
            "rset" => Self::Rset,
            _ => return None,
        })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the provider is throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleKind {
    /// Too many simultaneous connections: lower the concurrency limit.
    Connections,
    /// Too many messages per time: lower the rate.
    Rate,
    /// Too many recipients per time (Postfix `450 4.7.1 Error: too many recipients
    /// from ...`, `smtpd_client_recipient_rate_limit`): lower the recipient rate. Not
    /// x.5.3 "too many recipients" in one transaction, which is a per-transaction limit.
    Recipients,
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
            Self::Throttle(ThrottleKind::Recipients) => "throttle-recipients",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_round_trip_and_aliases_parse() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.name()), Some(p));
            assert_eq!(Phase::parse(&p.name().to_uppercase()), Some(p));
        }
        assert_eq!(Phase::parse("end-of-data"), Some(Phase::DataEnd));
        assert_eq!(Phase::parse("Data_End"), Some(Phase::DataEnd));
        assert_eq!(Phase::parse("connect"), Some(Phase::Greeting));
        assert_eq!(Phase::parse("MAIL FROM"), Some(Phase::Mail));
        assert_eq!(Phase::parse("bogus"), None);
        assert_eq!(Phase::DataEnd.to_string(), "data-end");
    }
}
