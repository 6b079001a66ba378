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
//! Hot path: the table is compiled once (`Classifier::new`). Per reply, an index by
//! code (0–999) gives the rules whose code patterns match, each with its phase mask at
//! hand; the enhanced code is integer compares. That walk stops at the first rule
//! without a text pattern — only text rules before it can still win. Their patterns
//! alone are then looked for in one literal scan of the lower-cased text
//! (`literals::LiteralFilter`), and a rule's regex runs only on a literal hit (not even
//! then for a plain list of words). The first rule in table order that matches wins, as
//! before. Non-ASCII or very long text takes the old path, one case-insensitive
//! `RegexSet` over all patterns, where the literal scan would not be sound. No regex is
//! compiled and nothing is allocated per reply (short texts are joined and lower-cased
//! in stack buffers).
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

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

use super::literals::{Candidates, LiteralFilter};
use super::rules::{self, Rule, RuleError, RuleParts, RuleSource, RuleSpec};
use super::verdict::{Phase, Verdict};
use crate::smtp::Reply;

/// The compiled rule table.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Rule>,
    /// The code index: `entries[starts[c]..starts[c + 1]]` are the rules whose class
    /// and code patterns match code `c` (0–999), in table order. No code above 999
    /// matches any rule.
    entries: Vec<Entry>,
    starts: Vec<u32>,
    /// The enhanced-code alternatives of every rule, back to back (see `Entry`).
    enhanced: Vec<rules::EnhPat>,
    /// All text patterns, for non-ASCII text (where the literal filter is not sound).
    set: RegexSet,
    /// The same patterns one by one, to confirm a pre-filter hit.
    regexes: Vec<Regex>,
    /// Which patterns can match an ASCII text.
    filter: LiteralFilter,
}

/// A rule in the code index, with everything the walk checks at hand (phase mask,
/// enhanced-code alternatives in `Classifier::enhanced`, text pattern), so that the
/// rule itself is only touched when it decides.
#[derive(Debug, Clone, Copy)]
struct Entry {
    rule: u32,
    phases: u16,
    /// `enhanced[enh..enh + enh_len]`; empty = any.
    enh_len: u16,
    enh: u32,
    /// The rule's text pattern, or `NO_TEXT`.
    text: u32,
}

const NO_TEXT: u32 = u32::MAX;

/// Highest code in the index; `matches_code` is false above it for every rule.
const MAX_CODE: u16 = 999;
/// Most text rules looked for at once, and the longest text lower-cased on the stack;
/// beyond either, `classify` takes the `RegexSet` path.
const PENDING: usize = 32;
const LOWER: usize = 512;
const SHORT: usize = 128;

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

pub(crate) const NO_RULE: &str = "no rule matched";

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
        let (sources, regexes): (Vec<String>, Vec<Regex>) = patterns.into_iter().unzip();
        let set = RegexSetBuilder::new(&sources)
            .case_insensitive(true)
            .build()
            .map_err(|e| RuleError {
                origin: RuleSource::User,
                index: 0,
                field: "text",
                message: format!("the text patterns together are too large: {e}"),
            })?;
        let filter = LiteralFilter::new(&sources);
        let mut enhanced = Vec::new();
        let mut enh_at = Vec::with_capacity(rules.len());
        for r in &rules {
            enh_at.push(enhanced.len() as u32);
            enhanced.extend_from_slice(&r.enhanced);
        }
        let mut entries = Vec::new();
        let mut starts = Vec::with_capacity(usize::from(MAX_CODE) + 2);
        for code in 0..=MAX_CODE {
            starts.push(entries.len() as u32);
            for ((i, r), &enh) in rules.iter().enumerate().zip(&enh_at) {
                if r.matches_code(code) {
                    entries.push(Entry {
                        rule: i as u32,
                        phases: r.phases,
                        enh_len: r.enhanced.len() as u16,
                        enh,
                        text: r.text.map_or(NO_TEXT, |t| t as u32),
                    });
                }
            }
        }
        starts.push(entries.len() as u32);
        Ok(Classifier {
            rules,
            entries,
            starts,
            enhanced,
            set,
            regexes,
            filter,
        })
    }

    /// Every problem of the `user` and `profile` rules (each rule compiled on its own,
    /// then the whole table), in table order; empty when `Classifier::new` succeeds.
    /// Configuration validation reports them all at once, naming each rule.
    pub fn problems(user: &[RuleSpec], profile: &[RuleSpec]) -> Vec<RuleError> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        for (origin, specs) in [(RuleSource::User, user), (RuleSource::Profile, profile)] {
            for (i, spec) in specs.iter().enumerate() {
                if let Err(e) = rules::compile(origin, i, &RuleParts::from(spec), &mut scratch) {
                    out.push(e);
                }
            }
        }
        if out.is_empty() {
            if let Err(e) = Self::new(user, profile) {
                out.push(e);
            }
        }
        out
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
    ///
    /// First the walk without the text: the rules whose code, phase and enhanced code
    /// match, up to the first one without a text pattern (it wins unless a text rule
    /// before it matches). Only the text patterns of the rules before it are then looked
    /// for, in one literal scan (`first_text_match`).
    pub fn classify(&self, phase: Phase, reply: &Reply) -> Classification<'_> {
        let bit = rules::phase_bit(phase);
        let mut pending = [0u32; PENDING];
        let mut n = 0;
        let mut needed = Candidates::default();
        let mut winner = None;
        for e in self.candidates(reply.code) {
            if e.phases & bit == 0 || !self.enhanced_matches(e, reply.enhanced) {
                continue;
            }
            match e.text {
                NO_TEXT => {
                    winner = self.rules.get(e.rule as usize);
                    break;
                }
                t => {
                    if n == PENDING || !needed.set(t as usize) {
                        return self.classify_by_set(phase, reply);
                    }
                    if let Some(slot) = pending.get_mut(n) {
                        *slot = e.rule;
                    }
                    n += 1;
                }
            }
        }
        if n > 0 {
            let pending = pending.get(..n).unwrap_or_default();
            match with_text(reply, |text| self.first_text_match(text, needed, pending)) {
                Some(Some(rule)) => return self.decide(rule, reply),
                Some(None) => {}
                None => return self.classify_by_set(phase, reply),
            }
        }
        match winner {
            Some(rule) => self.decide(rule, reply),
            None => self.no_rule(),
        }
    }

    /// The first of the `pending` rules (in table order; their patterns are `needed`)
    /// whose text pattern matches `text`; `None` when the literal scan does not apply
    /// (non-ASCII or very long text), and the caller must use the `RegexSet`.
    fn first_text_match(
        &self,
        text: &[u8],
        needed: Candidates,
        pending: &[u32],
    ) -> Option<Option<&Rule>> {
        if text.len() > LOWER || !text.is_ascii() {
            return None;
        }
        // Two buffer sizes: zeroing 512 bytes for every short reply was measurable.
        let hits = if text.len() <= SHORT {
            self.scan_lowered::<SHORT>(text, needed)
        } else {
            self.scan_lowered::<LOWER>(text, needed)
        }?;
        if hits.is_empty() {
            return Some(None);
        }
        for &i in pending {
            let rule = self.rules.get(i as usize)?;
            let t = rule.text?;
            if hits.has(t) && (self.filter.hit_is_match(t) || self.regexes.get(t)?.is_match(text)) {
                return Some(Some(rule));
            }
        }
        Some(None)
    }

    #[inline]
    fn enhanced_matches(&self, e: &Entry, enhanced: Option<crate::smtp::EnhancedCode>) -> bool {
        e.enh_len == 0 || {
            let (a, n) = (e.enh as usize, usize::from(e.enh_len));
            rules::enhanced_matches(self.enhanced.get(a..a + n).unwrap_or_default(), enhanced)
        }
    }

    /// `filter.scan` of `text` lower-cased in an `N`-byte stack buffer.
    #[inline]
    fn scan_lowered<const N: usize>(&self, text: &[u8], needed: Candidates) -> Option<Candidates> {
        let mut buf = [0u8; N];
        let lower = buf.get_mut(..text.len())?;
        lower.copy_from_slice(text);
        lower.make_ascii_lowercase();
        Some(self.filter.scan(lower, needed))
    }

    /// The rules whose class and code match `code`, in table order.
    #[inline]
    fn candidates(&self, code: u16) -> &[Entry] {
        if code > MAX_CODE {
            return &[];
        }
        let c = usize::from(code);
        match (self.starts.get(c), self.starts.get(c + 1)) {
            (Some(&a), Some(&b)) => self.entries.get(a as usize..b as usize).unwrap_or_default(),
            _ => &[],
        }
    }

    /// `classify` with every text pattern through the `RegexSet` (run once, when the
    /// first rule with a text pattern is reached): for text the literal scan cannot
    /// take, and the semantics the fast path must reproduce.
    fn classify_by_set(&self, phase: Phase, reply: &Reply) -> Classification<'_> {
        let bit = rules::phase_bit(phase);
        let mut hits: Option<regex::bytes::SetMatches> = None;
        for e in self.candidates(reply.code) {
            if e.phases & bit == 0 {
                continue;
            }
            let Some(rule) = self.rules.get(e.rule as usize) else {
                continue;
            };
            if !rule.matches_enhanced(reply.enhanced) {
                continue;
            }
            if let Some(t) = rule.text {
                let hits = hits.get_or_insert_with(|| with_text(reply, |s| self.set.matches(s)));
                if !hits.matched(t) {
                    continue;
                }
            }
            return self.decide(rule, reply);
        }
        self.no_rule()
    }

    /// The classification by `rule`, with the reply's retry hint where it carries one.
    /// (`Accept` only ever comes from a rule the compiler confined to 2xx, or from the
    /// built-in 354-at-DATA / 334-at-AUTH rules: see `rules::compile`.)
    fn decide<'c>(&'c self, rule: &'c Rule, reply: &Reply) -> Classification<'c> {
        let time = if rule.kind.timed() {
            reply_hint(reply).or(rule.default_time)
        } else {
            None
        };
        Classification {
            verdict: rule.kind.verdict(time),
            origin: rule.origin,
            index: rule.index,
            description: &rule.description,
        }
    }

    fn no_rule(&self) -> Classification<'_> {
        Classification {
            verdict: Verdict::ProtocolError,
            origin: RuleSource::Builtin,
            index: rules::BUILTIN.len(),
            description: NO_RULE,
        }
    }

    /// The reference semantics of `classify`: every rule in order, all matchers in one
    /// test, every text pattern through the `RegexSet`.
    #[cfg(test)]
    fn classify_reference(&self, phase: Phase, reply: &Reply) -> Classification<'_> {
        let text = reply.text();
        let hits = self.set.matches(text.as_bytes());
        for rule in &self.rules {
            if rule.matches_head(phase, reply.code, reply.enhanced)
                && rule.text.is_none_or(|t| hits.matched(t))
            {
                return self.decide(rule, reply);
            }
        }
        self.no_rule()
    }
}

/// Calls `f` with the reply text: the lines joined by one space, in place for a
/// one-line reply, in a stack buffer for short multi-line ones.
fn with_text<R>(reply: &Reply, f: impl FnOnce(&[u8]) -> R) -> R {
    const STACK: usize = 512;
    match reply.lines.as_slice() {
        [] => f(b""),
        [one] => f(one.as_bytes()),
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
                f(&buf[..n])
            } else {
                f(reply.text().as_bytes())
            }
        }
    }
}

/// The first retry hint found in any line of the reply.
pub fn reply_hint(reply: &Reply) -> Option<Duration> {
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
mod equivalence;
#[cfg(test)]
pub(crate) mod tests;
