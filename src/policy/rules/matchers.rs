//! The vocabulary of a rule's matchers: verdict names ([`VerdictKind`]), phase names and
//! the phase mask, reply-code patterns (`421`, `4xx`, `45x`) and enhanced-code patterns
//! (`5.7.*`, `5.2.251-255`, `none`). Parsing and matching only; must never allocate on
//! the matching side (it runs for every reply).

use crate::policy::verdict::{PauseScope, Phase, ThrottleKind, Verdict};
use crate::smtp::EnhancedCode;
use std::time::Duration;

/// The verdict a rule yields, before the reply's own retry hint is filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerdictKind {
    Accept,
    ThrottleConnections,
    ThrottleRate,
    ThrottleRecipients,
    Defer,
    Suppress,
    SoftBounce,
    RejectMessage,
    PolicyBlock,
    PauseAuth,
    PauseQuota,
    PausePolicy,
    ProtocolError,
}

impl VerdictKind {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let norm = |c: char| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        };
        let s: String = s.trim().chars().map(norm).collect();
        Some(match s.as_str() {
            "accept" => Self::Accept,
            "throttle-connections" | "throttle-connection" => Self::ThrottleConnections,
            "throttle-rate" => Self::ThrottleRate,
            "throttle-recipients" | "throttle-recipient-rate" => Self::ThrottleRecipients,
            "defer" => Self::Defer,
            "suppress" => Self::Suppress,
            "soft-bounce" | "softbounce" => Self::SoftBounce,
            "reject-message" | "reject" => Self::RejectMessage,
            "policy-block" => Self::PolicyBlock,
            "pause-auth" => Self::PauseAuth,
            "pause-quota" => Self::PauseQuota,
            "pause-policy" => Self::PausePolicy,
            "protocol-error" => Self::ProtocolError,
            _ => return None,
        })
    }

    /// The verdict, with `time` (the reply's own hint, else the rule's default) where
    /// the verdict carries one.
    pub(crate) fn verdict(self, time: Option<Duration>) -> Verdict {
        match self {
            Self::Accept => Verdict::Accept,
            Self::ThrottleConnections => Verdict::Throttle(ThrottleKind::Connections),
            Self::ThrottleRate => Verdict::Throttle(ThrottleKind::Rate),
            Self::ThrottleRecipients => Verdict::Throttle(ThrottleKind::Recipients),
            Self::Defer => Verdict::Defer { hint: time },
            Self::Suppress => Verdict::Suppress,
            Self::SoftBounce => Verdict::SoftBounce,
            Self::RejectMessage => Verdict::RejectMessage,
            Self::PolicyBlock => Verdict::PolicyBlock,
            Self::PauseAuth => Verdict::Pause {
                scope: PauseScope::Auth,
                until: time,
            },
            Self::PauseQuota => Verdict::Pause {
                scope: PauseScope::Quota,
                until: time,
            },
            Self::PausePolicy => Verdict::Pause {
                scope: PauseScope::Policy,
                until: time,
            },
            Self::ProtocolError => Verdict::ProtocolError,
        }
    }

    /// Whether the verdict carries a duration (and the reply text is searched for one).
    pub(crate) fn timed(self) -> bool {
        matches!(
            self,
            Self::Defer | Self::PauseAuth | Self::PauseQuota | Self::PausePolicy
        )
    }
}

pub(crate) const fn phase_bit(p: Phase) -> u16 {
    1 << (p as u16)
}
pub(super) const ALL_PHASES: u16 = u16::MAX;
pub(super) const ADDRESS_PHASES: u16 = phase_bit(Phase::Rcpt) | phase_bit(Phase::DataEnd);

/// Bit n set: the class-n digit may match (n = 0..=9).
pub(super) type ClassMask = u16;
pub(super) const CLASS_ANY: ClassMask = 0x3ff;

/// A three-digit code pattern; `None` per digit is a wildcard (`4xx`, `45x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CodePat(pub(super) [Option<u8>; 3]);

impl CodePat {
    pub(super) fn parse(s: &str) -> Option<Self> {
        let b = s.trim().as_bytes();
        if b.len() != 3 {
            return None;
        }
        let mut d = [None; 3];
        for (slot, &c) in d.iter_mut().zip(b) {
            *slot = match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'x' | b'X' | b'*' => None,
                _ => return None,
            };
        }
        Some(Self(d))
    }

    #[inline]
    pub(super) fn matches(&self, code: u16) -> bool {
        if code > 999 {
            return false;
        }
        let digits = [
            (code / 100) as u8,
            (code / 10 % 10) as u8,
            (code % 10) as u8,
        ];
        self.0.iter().zip(digits).all(|(p, d)| match p {
            Some(p) => *p == d,
            None => true,
        })
    }

    pub(super) fn classes(&self) -> ClassMask {
        match self.0[0] {
            Some(c) => 1 << c,
            None => CLASS_ANY,
        }
    }
}

/// One component of an enhanced-code pattern: an inclusive range (`*` is 0..=max).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Comp(u16, u16);

impl Comp {
    pub(super) fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "*" || s.eq_ignore_ascii_case("x") {
            return Some(Comp(0, u16::MAX));
        }
        let num = |t: &str| -> Option<u16> {
            let t = t.trim();
            if t.is_empty() || t.len() > 3 || !t.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            t.parse().ok()
        };
        match s.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                (lo <= hi).then_some(Comp(lo, hi))
            }
            None => num(s).map(|n| Comp(n, n)),
        }
    }
    #[inline]
    pub(super) fn has(&self, v: u16) -> bool {
        self.0 <= v && v <= self.1
    }
}

/// An enhanced-code pattern alternative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnhPat {
    /// The reply carries no enhanced code.
    Absent,
    Code(Comp, Comp, Comp),
}

impl EnhPat {
    pub(super) fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") {
            return Some(EnhPat::Absent);
        }
        let mut it = s.split('.');
        let (c, sub, det) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        let class = Comp::parse(c)?;
        // The class is one digit: 2, 4 or 5 (or a wildcard).
        if class != Comp(0, u16::MAX) && !matches!(class, Comp(2 | 4 | 5, 2 | 4 | 5)) {
            return None;
        }
        Some(EnhPat::Code(class, Comp::parse(sub)?, Comp::parse(det)?))
    }

    #[inline]
    pub(super) fn matches(&self, e: Option<EnhancedCode>) -> bool {
        match (self, e) {
            (EnhPat::Absent, None) => true,
            (EnhPat::Code(c, s, d), Some(e)) => {
                c.has(u16::from(e.class)) && s.has(e.subject) && d.has(e.detail)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VerdictKind;

    #[test]
    fn verdict_names_are_the_rule_spellings() {
        for name in [
            "accept",
            "throttle-connections",
            "throttle-rate",
            "defer",
            "suppress",
            "soft-bounce",
            "reject-message",
            "policy-block",
            "pause-auth",
            "pause-quota",
            "pause-policy",
            "protocol-error",
        ] {
            let kind = VerdictKind::parse(name).unwrap();
            assert_eq!(kind.verdict(None).name(), name);
        }
    }
}
