//! `classify(phase, &Reply) -> Verdict`: the one place where a provider reply becomes a
//! decision. Driven by an ordered rule table — user rules from the config, then the
//! provider profile's rules, then the built-in defaults (`rules::BUILTIN`) — where the
//! first matching rule wins.
//!
//! What it must never do: suppress an address on a reply that is not the address's
//! fault. Quotas, "too many recipients", the recipient's receive rate, policy blocks
//! (5.7.x, spam, blocklists, relaying denied) and sender-address problems are matched
//! before any address rule, unknown permanent failures end in `RejectMessage`, and the
//! compiler confines every `suppress` rule to 5xx at RCPT / end of DATA.
//!
//! Hot path: the table is compiled once (`Classifier::new`). Per reply, rules are
//! pre-filtered by reply class, phase, code and enhanced code are integer compares, and
//! the text patterns of all rules are one `RegexSet`, run at most once per reply and
//! only when a rule with a text pattern is reached. No regex is compiled, no text is
//! lower-cased (the set is case-insensitive), and a one-line reply is matched in place.
//!
//! Decisions on ambiguous replies (built-in defaults; a profile or user rule can
//! override any of them):
//!
//! | reply | verdict | why |
//! |---|---|---|
//! | 334 at AUTH, 354 at DATA | `Accept` | the expected intermediate replies |
//! | any other 3xx (354 at RCPT) | `ProtocolError` | makes no sense for the phase |
//! | 2xx in any phase | `Accept` | the provider took the command |
//! | 550 5.4.5, 5.2.251–255, 5.1.90, "daily … quota" | `Pause{Quota, 24h}` | daily/rolling-24 h windows |
//! | "Send quota exceeded" (T-Online, no window known) | `Pause{Quota, 1h}` | re-probe hourly; a wrong guess costs one refused message per hour, 24 h could idle a campaign for a day |
//! | a retry time in a pause or defer text | that time | the provider knows best; the rule's time is the fallback |
//! | 454 4.7.0 / any 4xx at AUTH | `Defer` | a *temporary* auth failure; pausing would need an operator |
//! | 4xx "too many login attempts" | `Throttle(Connections)` | fewer connections = fewer logins |
//! | 530 at any phase, 5xx at AUTH, "authentication required" | `Pause{Auth}` | the account is not set up to send |
//! | 5.1.7 / 5.1.8 (any phase), 5.1.x at MAIL, "sender … rejected" | `PolicyBlock` | our sender, not the recipient; repeated → pause |
//! | 5.7.1 "relaying denied", 572, 551 "relay" | `PolicyBlock` | our account may not relay there; never suppress |
//! | 5.7.x, 541, 557, 571, spam/blocklist wording | `PolicyBlock` | sender reputation |
//! | 5xx at greeting / EHLO / STARTTLS | `PolicyBlock` | the server refuses us, not a message |
//! | 5.5.3 / 452 4.5.3 / "too many recipients" | `Defer` | send the remaining recipients in another transaction |
//! | 5.2.121/122 ReceivingRatePerm, "receiving mail at a rate" | `Defer` (5xx: 1 h fallback) | the recipient's hourly limit; the account is fine, so no throttle |
//! | 5.2.2, 452 4.2.2, 422, "mailbox full" | `SoftBounce` | suppression only after N in D days |
//! | 552 without mailbox-full wording, 523, 5.2.3, 5.3.4, 5.6.x | `RejectMessage` | size/content |
//! | 550/551/553/554 without enhanced code | `Suppress` only with unknown-user wording (EN/DE), else `RejectMessage` | 550 is also used for policy |
//! | 510–513 without enhanced code | `Suppress` | the 3-digit spellings of 5.1.0–5.1.3 |
//! | 5xx to RSET | `ProtocolError` | RSET cannot fail meaningfully |
//! | any other 5xx | `RejectMessage` | unknown never suppresses |
//! | unparseable reply | `ProtocolError` (`classify_error`) | |

use std::fmt;
use std::time::Duration;

use regex::bytes::{RegexSet, RegexSetBuilder};

use super::rules::{self, Rule, RuleError, RuleParts, RuleSource, RuleSpec};
use super::verdict::{Phase, Verdict};
use crate::smtp::Reply;

/// The compiled rule table.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Rule>,
    /// Rule indices that can match a reply of class 2, 3, 4, 5 (in table order).
    by_class: [Vec<u32>; 4],
    /// Rule indices for codes outside 200–599 (only hand-built replies).
    other: Vec<u32>,
    set: RegexSet,
}

/// What `classify` decided and which rule decided it (for logs and `explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification<'c> {
    pub verdict: Verdict,
    pub origin: RuleSource,
    /// Position of the rule in its own list (`rules[index]` of the config or profile,
    /// or of the built-in table).
    pub index: usize,
    pub description: &'c str,
}

impl fmt::Display for Classification<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} by {} rule {}: {}",
            self.verdict, self.origin, self.index, self.description
        )
    }
}

/// The verdict for a reply that could not be parsed (garbage, 6xx, bare LF floods):
/// the caller treats it as a protocol error, i.e. defers.
pub fn classify_error(_phase: Phase) -> Verdict {
    Verdict::ProtocolError
}

const NO_RULE: &str = "no rule matched";

impl Classifier {
    /// Compiles `user` rules, then `profile` rules, then the built-in defaults.
    pub fn new(user: &[RuleSpec], profile: &[RuleSpec]) -> Result<Classifier, RuleError> {
        let mut patterns = Vec::new();
        let mut rules = Vec::with_capacity(user.len() + profile.len() + rules::BUILTIN.len());
        for (origin, specs) in [(RuleSource::User, user), (RuleSource::Profile, profile)] {
            for (i, spec) in specs.iter().enumerate() {
                rules.push(rules::compile(
                    origin,
                    i,
                    &RuleParts::from(spec),
                    &mut patterns,
                )?);
            }
        }
        for (i, b) in rules::BUILTIN.iter().enumerate() {
            rules.push(rules::compile(
                RuleSource::Builtin,
                i,
                &b.parts(),
                &mut patterns,
            )?);
        }
        let set = RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .build()
            .map_err(|e| RuleError {
                origin: RuleSource::User,
                index: 0,
                field: "text",
                message: format!("the text patterns together are too large: {e}"),
            })?;
        let mut by_class: [Vec<u32>; 4] = Default::default();
        let mut other = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            for (slot, class) in by_class.iter_mut().zip(2u16..=5) {
                if r.may_match_class(class) {
                    slot.push(i);
                }
            }
            if [0u16, 1, 6, 7, 8, 9].iter().any(|&c| r.may_match_class(c)) {
                other.push(i);
            }
        }
        Ok(Classifier {
            rules,
            by_class,
            other,
            set,
        })
    }

    /// Only the built-in defaults.
    pub fn builtin() -> Result<Classifier, RuleError> {
        Self::new(&[], &[])
    }

    /// Every rule in matching order: (origin, index in its list, description).
    pub fn rules(&self) -> impl Iterator<Item = (RuleSource, usize, &str)> + '_ {
        self.rules
            .iter()
            .map(|r| (r.origin, r.index, r.description.as_str()))
    }

    /// The verdict for `reply`, received in `phase`, and the rule that reached it.
    pub fn classify(&self, phase: Phase, reply: &Reply) -> Classification<'_> {
        let class = reply.code / 100;
        let candidates: &[u32] = match class {
            2..=5 => &self.by_class[usize::from(class - 2)],
            _ => &self.other,
        };
        let mut text_hits: Option<regex::bytes::SetMatches> = None;
        for &i in candidates {
            let Some(rule) = self.rules.get(i as usize) else {
                continue;
            };
            if !rule.matches_head(phase, reply.code, reply.enhanced) {
                continue;
            }
            if let Some(t) = rule.text {
                let hits = text_hits.get_or_insert_with(|| self.match_text(reply));
                if !hits.matched(t) {
                    continue;
                }
            }
            let time = if rule.kind.timed() {
                reply_hint(reply).or(rule.default_time)
            } else {
                None
            };
            return Classification {
                verdict: rule.kind.verdict(time),
                origin: rule.origin,
                index: rule.index,
                description: &rule.description,
            };
        }
        Classification {
            verdict: Verdict::ProtocolError,
            origin: RuleSource::Builtin,
            index: rules::BUILTIN.len(),
            description: NO_RULE,
        }
    }

    /// Runs the regex set over the reply text: the lines joined by one space, matched
    /// in place for a one-line reply, in a stack buffer for short multi-line ones.
    fn match_text(&self, reply: &Reply) -> regex::bytes::SetMatches {
        const STACK: usize = 512;
        match reply.lines.as_slice() {
            [] => self.set.matches(b""),
            [one] => self.set.matches(one.as_bytes()),
            many => {
                let total: usize = many.iter().map(|l| l.len() + 1).sum::<usize>() - 1;
                if total <= STACK {
                    let mut buf = [0u8; STACK];
                    let mut n = 0;
                    for (k, l) in many.iter().enumerate() {
                        if k > 0 {
                            buf[n] = b' ';
                            n += 1;
                        }
                        buf[n..n + l.len()].copy_from_slice(l.as_bytes());
                        n += l.len();
                    }
                    self.set.matches(&buf[..n])
                } else {
                    self.set.matches(reply.text().as_bytes())
                }
            }
        }
    }
}

/// The first retry hint found in any line of the reply.
fn reply_hint(reply: &Reply) -> Option<Duration> {
    reply.lines.iter().find_map(|l| retry_hint(l))
}

/// Longest hint honoured; anything longer is clamped (a typo must not park mail for a
/// year).
pub const MAX_HINT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Finds a "retry after this long" in a reply text: `come back in 00:02:00`,
/// `in 60 seconds`, `try again in 5 minutes`, `retry in 1 hour`, `greylisted for 300
/// seconds`, `retry after 60s`, `please wait 5 min`, `in 10 Minuten`. A duration counts
/// only after one of the words *in, for, after, wait, within, nach*; `hh:mm:ss` and
/// `mm:ss` are read as durations. Clamped to [`MAX_HINT`].
pub fn retry_hint(text: &str) -> Option<Duration> {
    let mut tokens = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|t| !t.is_empty() && *t != ":")
        .peekable();
    while let Some(tok) = tokens.next() {
        const TRIGGERS: [&str; 6] = ["in", "for", "after", "wait", "within", "nach"];
        if !TRIGGERS.iter().any(|t| tok.eq_ignore_ascii_case(t)) {
            continue;
        }
        let Some(&first) = tokens.peek() else {
            break;
        };
        let secs = if first.contains(':') {
            clock(first)
        } else {
            let digits = first.bytes().take_while(u8::is_ascii_digit).count();
            let (num, suffix) = first.split_at(digits);
            let n = if num.is_empty() {
                const ONE: [&str; 6] = ["a", "an", "one", "eine", "einer", "einem"];
                ONE.iter()
                    .any(|w| first.eq_ignore_ascii_case(w))
                    .then_some(1)
            } else if num.len() <= 9 {
                num.parse::<u64>().ok()
            } else {
                None
            };
            match n {
                None => None,
                Some(n) if suffix.is_empty() || num.is_empty() => {
                    // The unit is the next token: "5 minutes", "a minute".
                    let mut ahead = tokens.clone();
                    ahead.next();
                    ahead.next().and_then(unit).map(|u| n.saturating_mul(u))
                }
                Some(n) => unit(suffix).map(|u| n.saturating_mul(u)),
            }
        };
        if let Some(s) = secs {
            return Some(Duration::from_secs(s).min(MAX_HINT));
        }
    }
    None
}

/// `hh:mm:ss` or `mm:ss` → seconds.
fn clock(t: &str) -> Option<u64> {
    let mut parts = [0u64; 3];
    let mut n = 0;
    for p in t.split(':') {
        if n == 3 || p.is_empty() || p.len() > 2 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        parts[n] = p.parse().ok()?;
        n += 1;
    }
    match n {
        3 => Some(parts[0] * 3600 + parts[1] * 60 + parts[2]),
        2 => Some(parts[0] * 60 + parts[1]),
        _ => None,
    }
}

/// Seconds per unit word (English and German), or `None` if it is not a time unit.
fn unit(t: &str) -> Option<u64> {
    const UNITS: [(&[&str], u64); 4] = [
        (
            &[
                "s", "sec", "secs", "second", "seconds", "sekunde", "sekunden", "sek",
            ],
            1,
        ),
        (&["m", "min", "mins", "minute", "minutes", "minuten"], 60),
        (
            &[
                "h", "hr", "hrs", "hour", "hours", "stunde", "stunden", "std",
            ],
            3600,
        ),
        (&["d", "day", "days", "tag", "tage", "tagen"], 86400),
    ];
    UNITS
        .iter()
        .find(|(words, _)| words.iter().any(|w| t.eq_ignore_ascii_case(w)))
        .map(|(_, s)| *s)
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
