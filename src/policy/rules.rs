//! Reply rules: the `[[rules]]` tables of the config and of provider profiles
//! (`RuleSpec`), their compiled form (`Rule`), and the built-in defaults that encode
//! DESIGN "The reply policy".
//!
//! What a rule must never do: suppress an address on a reply that is not the address's
//! fault, or take a refusal for acceptance. Every rule whose verdict is `suppress` is
//! therefore confined, when compiled, to 5xx replies in the RCPT or DATA-end phase;
//! `soft-bounce` to 4xx/5xx in the same phases. A rule whose verdict is `accept` must
//! name codes that are all 2xx (`code = "250"`, `"2xx"`); one that could match anything
//! else is refused, naming the rule — an `accept` for a 5xx would count a refusal as
//! delivered. (The built-in table alone also accepts the two intermediate replies the
//! protocol asks for: `354` after DATA and `334` during AUTH, each only in its phase.)
//! A user rule cannot widen any of that. Compiling happens once (config load); the
//! matching in `classify.rs` does no parsing and no regex compilation.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::verdict::{PauseScope, Phase, ThrottleKind, Verdict};
use crate::smtp::EnhancedCode;

/// One rule as written in TOML:
///
/// ```toml
/// [[rules]]
/// code = "450"                       # "421", "4xx", "45x", or a list "450, 451"
/// enhanced = "4.7.*"                 # wildcards per component, ranges "5.2.251-255",
///                                    # "none" = the reply carries no enhanced code
/// text = "Mail send limit exceeded"  # case-insensitive regex over the reply text
/// phase = ["mail", "rcpt"]           # greeting ehlo starttls auth mail rcpt data data-end rset
/// verdict = "throttle-rate"
/// hint = "10m"                       # defer: used when the text carries no retry hint
/// until = "24h"                      # pause-*: likewise
/// description = "IONOS hourly limit"
/// ```
///
/// Every matcher is optional; a rule with none matches every reply. The verdicts are
/// `accept`, `throttle-connections`, `throttle-rate`, `defer`, `suppress`,
/// `soft-bounce`, `reject-message`, `policy-block`, `pause-auth`, `pause-quota`,
/// `pause-policy`, `protocol-error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub verdict: String,
    /// For `defer`: how long to wait when the reply text names no time itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// For `pause-*`: how long to pause when the reply text names no time itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Shown by `mailvalve explain`; generated from the matchers when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Where a rule comes from; earlier sources win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleSource {
    User,
    Profile,
    Builtin,
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleSource::User => "user",
            RuleSource::Profile => "profile",
            RuleSource::Builtin => "built-in",
        })
    }
}

/// A rule that cannot be compiled. `index` is the position in its `[[rules]]` array
/// (0-based, as in `rules[2]`), `field` the key that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin} rules[{index}].{field}: {message}")]
pub struct RuleError {
    pub origin: RuleSource,
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

/// The verdict a rule yields, before the reply's own retry hint is filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerdictKind {
    Accept,
    ThrottleConnections,
    ThrottleRate,
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
const ALL_PHASES: u16 = u16::MAX;
const ADDRESS_PHASES: u16 = phase_bit(Phase::Rcpt) | phase_bit(Phase::DataEnd);

/// Bit n set: the class-n digit may match (n = 0..=9).
type ClassMask = u16;
const CLASS_ANY: ClassMask = 0x3ff;

/// A three-digit code pattern; `None` per digit is a wildcard (`4xx`, `45x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CodePat([Option<u8>; 3]);

impl CodePat {
    fn parse(s: &str) -> Option<Self> {
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
    fn matches(&self, code: u16) -> bool {
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

    fn classes(&self) -> ClassMask {
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
    fn parse(s: &str) -> Option<Self> {
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
    fn has(&self, v: u16) -> bool {
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
    fn parse(s: &str) -> Option<Self> {
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
    fn matches(&self, e: Option<EnhancedCode>) -> bool {
        match (self, e) {
            (EnhPat::Absent, None) => true,
            (EnhPat::Code(c, s, d), Some(e)) => {
                c.has(u16::from(e.class)) && s.has(e.subject) && d.has(e.detail)
            }
            _ => false,
        }
    }
}

/// A compiled rule. Matching order inside: phase, class, code, enhanced code, then
/// (lazily, only when the rule is reached) the text regex.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) origin: RuleSource,
    pub(crate) index: usize,
    pub(crate) phases: u16,
    pub(crate) classes: ClassMask,
    pub(crate) codes: Vec<CodePat>,
    pub(crate) enhanced: Vec<EnhPat>,
    /// Index of the text pattern (in the classifier's `RegexSet`, pre-filter and
    /// per-pattern regexes).
    pub(crate) text: Option<usize>,
    pub(crate) kind: VerdictKind,
    /// `hint` / `until`: used when the reply text has no retry hint.
    pub(crate) default_time: Option<Duration>,
    pub(crate) description: String,
}

impl Rule {
    /// Every matcher except the text, in one test: the reference form of what
    /// `classify` does with the code index (`matches_code`), the phase mask and
    /// `matches_enhanced`.
    #[cfg(test)]
    pub(crate) fn matches_head(&self, phase: Phase, code: u16, e: Option<EnhancedCode>) -> bool {
        let class = code / 100;
        self.phases & phase_bit(phase) != 0
            && class <= 9
            && self.classes & (1 << class) != 0
            && (self.codes.is_empty() || self.codes.iter().any(|c| c.matches(code)))
            && (self.enhanced.is_empty() || self.enhanced.iter().any(|p| p.matches(e)))
    }

    /// The code part of `matches_head` (class and code patterns), for the code index.
    pub(crate) fn matches_code(&self, code: u16) -> bool {
        let class = code / 100;
        class <= 9
            && self.classes & (1 << class) != 0
            && (self.codes.is_empty() || self.codes.iter().any(|c| c.matches(code)))
    }

    /// The enhanced-code part of `matches_head`.
    #[inline]
    pub(crate) fn matches_enhanced(&self, e: Option<EnhancedCode>) -> bool {
        enhanced_matches(&self.enhanced, e)
    }
}

/// Whether `e` matches a rule's enhanced-code alternatives `pats` (none = any).
#[inline]
pub(crate) fn enhanced_matches(pats: &[EnhPat], e: Option<EnhancedCode>) -> bool {
    pats.is_empty() || pats.iter().any(|p| p.matches(e))
}

/// A rule's fields as borrowed strings, from a `RuleSpec` or a built-in entry.
pub(crate) struct RuleParts<'a> {
    pub(crate) phase: Option<Vec<&'a str>>,
    pub(crate) code: Option<&'a str>,
    pub(crate) enhanced: Option<&'a str>,
    pub(crate) text: Option<&'a str>,
    pub(crate) verdict: &'a str,
    pub(crate) hint: Option<&'a str>,
    pub(crate) until: Option<&'a str>,
    pub(crate) description: Option<&'a str>,
}

impl<'a> From<&'a RuleSpec> for RuleParts<'a> {
    fn from(s: &'a RuleSpec) -> Self {
        RuleParts {
            phase: s
                .phase
                .as_ref()
                .map(|v| v.iter().map(String::as_str).collect()),
            code: s.code.as_deref(),
            enhanced: s.enhanced.as_deref(),
            text: s.text.as_deref(),
            verdict: &s.verdict,
            hint: s.hint.as_deref(),
            until: s.until.as_deref(),
            description: s.description.as_deref(),
        }
    }
}

/// Compiles one rule. The text pattern is compiled here (so the error names this rule)
/// and appended, with its regex, to `patterns` for the classifier's `RegexSet`, literal
/// pre-filter and per-rule confirmation.
pub(crate) fn compile(
    origin: RuleSource,
    index: usize,
    p: &RuleParts<'_>,
    patterns: &mut Vec<(String, regex::bytes::Regex)>,
) -> Result<Rule, RuleError> {
    let err = |field: &'static str, message: String| RuleError {
        origin,
        index,
        field,
        message,
    };
    let kind = VerdictKind::parse(p.verdict).ok_or_else(|| {
        err(
            "verdict",
            format!(
                "unknown verdict {:?}; expected one of accept, throttle-connections, \
                 throttle-rate, defer, suppress, soft-bounce, reject-message, policy-block, \
                 pause-auth, pause-quota, pause-policy, protocol-error",
                p.verdict
            ),
        )
    })?;

    let mut phases = ALL_PHASES;
    if let Some(list) = &p.phase {
        if list.is_empty() {
            return Err(err("phase", "empty phase list".into()));
        }
        phases = 0;
        for name in list {
            let ph = Phase::parse(name).ok_or_else(|| {
                err(
                    "phase",
                    format!(
                        "unknown phase {name:?}; expected greeting, ehlo, starttls, auth, \
                         mail, rcpt, data, data-end or rset"
                    ),
                )
            })?;
            phases |= phase_bit(ph);
        }
    }

    let mut codes = Vec::new();
    let mut classes: ClassMask = 0;
    if let Some(c) = p.code {
        for alt in c.split([',', '|']) {
            let pat = CodePat::parse(alt).ok_or_else(|| {
                err(
                    "code",
                    format!("bad code pattern {alt:?}; expected e.g. \"421\", \"4xx\", \"45x\""),
                )
            })?;
            classes |= pat.classes();
            codes.push(pat);
        }
    } else {
        classes = CLASS_ANY;
    }

    let mut enhanced = Vec::new();
    if let Some(e) = p.enhanced {
        for alt in e.split([',', '|']) {
            let pat = EnhPat::parse(alt).ok_or_else(|| {
                err(
                    "enhanced",
                    format!(
                        "bad enhanced code pattern {alt:?}; expected e.g. \"5.1.1\", \
                         \"5.1.*\", \"5.2.251-255\" or \"none\""
                    ),
                )
            })?;
            enhanced.push(pat);
        }
    }

    // The safety net: an address is only ever suppressed on a permanent reply to RCPT
    // or to the end of DATA; a soft bounce likewise, on 4xx or 5xx.
    let guard = match kind {
        VerdictKind::Suppress => Some((1u16 << 5, "5xx")),
        VerdictKind::SoftBounce => Some(((1u16 << 4) | (1 << 5), "4xx or 5xx")),
        _ => None,
    };
    if let Some((allowed, what)) = guard {
        if p.phase.is_some() && phases & ADDRESS_PHASES == 0 {
            return Err(err(
                "phase",
                format!(
                    "verdict {:?} applies only to the rcpt and data-end phases",
                    p.verdict
                ),
            ));
        }
        phases &= ADDRESS_PHASES;
        if classes & allowed == 0 {
            return Err(err(
                "code",
                format!("verdict {:?} applies only to {what} replies", p.verdict),
            ));
        }
        classes &= allowed;
    }

    if kind == VerdictKind::Accept {
        let only_2xx = p.code.is_some() && classes == 1 << 2;
        let exact = |code: [u8; 3], phase: Phase| {
            codes.len() == 1
                && codes[0] == CodePat([Some(code[0]), Some(code[1]), Some(code[2])])
                && phases == phase_bit(phase)
        };
        let intermediate = origin == RuleSource::Builtin
            && (exact([3, 5, 4], Phase::Data) || exact([3, 3, 4], Phase::Auth));
        if !only_2xx && !intermediate {
            let what = match p.code {
                Some(c) => format!("code {c:?} matches replies outside 2xx"),
                None => "without a code it matches every reply, refusals included".into(),
            };
            return Err(err(
                "code",
                format!(
                    "verdict \"accept\" applies only to 2xx replies (e.g. code = \"250\" \
                     or \"2xx\"), and {what}: a refusal would count as delivered"
                ),
            ));
        }
    }

    let text = match p.text {
        Some(t) => {
            let re = regex::bytes::RegexBuilder::new(t)
                .case_insensitive(true)
                .build()
                .map_err(|e| err("text", format!("bad regex: {e}")))?;
            patterns.push((t.to_string(), re));
            Some(patterns.len() - 1)
        }
        None => None,
    };

    let parse_time =
        |field: &'static str, v: Option<&str>| -> Result<Option<Duration>, RuleError> {
            match v {
                None => Ok(None),
                Some(s) => humantime::parse_duration(s.trim())
                    .map(Some)
                    .map_err(|e| err(field, format!("bad duration {s:?}: {e}"))),
            }
        };
    let hint = parse_time("hint", p.hint)?;
    let until = parse_time("until", p.until)?;
    if hint.is_some() && kind != VerdictKind::Defer {
        return Err(err(
            "hint",
            "hint is only meaningful with verdict \"defer\"".into(),
        ));
    }
    if until.is_some()
        && !matches!(
            kind,
            VerdictKind::PauseAuth | VerdictKind::PauseQuota | VerdictKind::PausePolicy
        )
    {
        return Err(err(
            "until",
            "until is only meaningful with a pause-* verdict".into(),
        ));
    }

    let description = match p.description {
        Some(d) => d.to_string(),
        None => generated_description(p),
    };

    Ok(Rule {
        origin,
        index,
        phases,
        classes,
        codes,
        enhanced,
        text,
        kind,
        default_time: hint.or(until),
        description,
    })
}

fn generated_description(p: &RuleParts<'_>) -> String {
    let mut parts = Vec::new();
    if let Some(ph) = &p.phase {
        parts.push(format!("phase {}", ph.join("/")));
    }
    if let Some(c) = p.code {
        parts.push(format!("code {c}"));
    }
    if let Some(e) = p.enhanced {
        parts.push(format!("enhanced {e}"));
    }
    if let Some(t) = p.text {
        parts.push(format!("text /{t}/"));
    }
    if parts.is_empty() {
        parts.push("any reply".into());
    }
    format!("{} → {}", parts.join(", "), p.verdict)
}

/// A built-in rule, in the same vocabulary as `RuleSpec`.
pub(crate) struct Builtin {
    pub(crate) phase: &'static [&'static str],
    pub(crate) code: Option<&'static str>,
    pub(crate) enhanced: Option<&'static str>,
    pub(crate) text: Option<&'static str>,
    pub(crate) verdict: &'static str,
    /// `hint` for defer, `until` for pause-*.
    pub(crate) time: Option<&'static str>,
    pub(crate) description: &'static str,
}

impl Builtin {
    pub(crate) fn parts(&self) -> RuleParts<'static> {
        let timed = self.verdict.starts_with("pause");
        RuleParts {
            phase: (!self.phase.is_empty()).then(|| self.phase.to_vec()),
            code: self.code,
            enhanced: self.enhanced,
            text: self.text,
            verdict: self.verdict,
            hint: if timed { None } else { self.time },
            until: if timed { self.time } else { None },
            description: Some(self.description),
        }
    }
}

const fn b(
    phase: &'static [&'static str],
    code: Option<&'static str>,
    enhanced: Option<&'static str>,
    text: Option<&'static str>,
    verdict: &'static str,
    time: Option<&'static str>,
    description: &'static str,
) -> Builtin {
    Builtin {
        phase,
        code,
        enhanced,
        text,
        verdict,
        time,
        description,
    }
}

const ANY: &[&str] = &[];
const ADDR: &[&str] = &["rcpt", "data-end"];

// Text patterns of the built-in rules. All are matched case-insensitively over the
// reply text (lines joined by a space). ASCII word boundaries (`(?-u:\b)`) keep the
// lazy DFA usable on non-ASCII (German) replies.

/// A daily sending quota of the account (Google, Microsoft, Amazon SES, German).
const QUOTA_DAILY: &str = r"daily (user )?(sending|message|recipient|submission) (quota|limit)|submission ?quota ?exceeded|reached (your|the|its) daily (sending |message |recipient )?limit|daily limit for (message )?recipients|tages(kontingent|limit)";
/// Another sending quota of the account (T-Online "Send quota exceeded").
const QUOTA_OTHER: &str =
    r"(send|sending|outbound|submission|versand|sende)[ -]?(quota|kontingent)";
const AUTH_TEXT: &str = r"authentication (is )?required|requires? authentication|must (first )?authenticate|authenticate first|needs? to authenticate|not authenticated|(anmeldung|authentifizierung) (ist )?erforderlich";
const CONN_TEXT: &str = r"too many (concurrent |simultaneous |parallel |open |smtp |active )*(connections|sessions)|concurrent connections|connection limit|too many (login|authentication|auth) (attempts|failures)|zu viele (gleichzeitige |parallele )?verbindungen";
/// The recipient's own receive limit (Microsoft ReceivingRatePerm, Gmail "receiving
/// mail at a rate"): retry this recipient later, the account is fine.
const RCPT_RATE: &str = r"receivingrateperm|recipientthresholdexceeded|receiving (mail )?(at a rate|too quickly)|receive (rate )?limit|(incoming|receiving) rate|recipient has exceeded";
const TOO_MANY_RCPT: &str = r"too many recipients|recipient limit|recipients? per (message|transaction)|zu viele empf(ä|ae)nger";
const GREYLIST: &str = r"gr[ae]y-?list";
const MAILBOX_FULL: &str = r"mailbox (is )?full|mailbox (size |storage )?(quota|limit) (exceeded|reached)|over (its |the |his |her )?(storage |disk |mailbox )?quota|(mailbox|disk|storage) quota|quota (exceeded|full)|exceeded (its|the) storage|insufficient (mailbox )?quota|postfach (ist )?(voll|(ü|ue)berf(ü|ue)llt)|speicherplatz.{0,20}(ersch(ö|oe)pft|voll|(ü|ue)berschritten)";
const SENDER_TEXT: &str = r"sender (address )?(rejected|denied|blocked|refused|not allowed|not permitted|unknown|invalid)|bad (outbound )?sender|sender verify failed|sender domain|absender(adresse)? (abgelehnt|unbekannt|ung(ü|ue)ltig|nicht erlaubt)|not allowed to send as|sendas ?denied|address is not verified|not authori[sz]ed to send";
const RELAY_TEXT: &str = r"relay(ing)? (access |request )?(denied|prohibited|refused|not (permitted|allowed|authori[sz]ed))|unable to relay|(not permitted|not allowed|cannot|can't) (to )?relay|we do not relay|relaying is not|relay not";
const POLICY_TEXT: &str = r"spam|black ?list|block ?list|blocked|blockiert|gesperrt|spamhaus|(?-u:\b)(dns)?rbl(?-u:\b)|reputation|listed (at|on|in|by)|polic(y|ies)|abuse";
const UNKNOWN_TEXT: &str = r"(user|mailbox|recipient|address|account|addressee)( name)? (is )?(unknown|not found|does not exist|doesn't exist|nonexistent|non-existent|not valid)|unknown (user|mailbox|recipient|address|account|local part)|no such (user|mailbox|recipient|address|account|person)|(does not|doesn't|did not) exist|invalid (recipient|mailbox)|not a valid (user|mailbox|recipient|address)|no mailbox (here )?by that name|doesn't have an? \S+ account|(benutzer|empf(ä|ae)nger|adresse|postfach|nutzer|konto|mailbox)\S* (ist )?(unbekannt|existiert nicht|nicht vorhanden|nicht gefunden)|unbekannte[rs]? (benutzer|empf(ä|ae)nger|adresse|postfach)|existiert nicht|gibt es nicht|kein(en)? (solche[rns]? )?(benutzer|empf(ä|ae)nger|postfach)";
const SIZE_TEXT: &str = r"message (size|too (big|large))|size limit|too (big|large)|exceeds? (the )?(maximum )?(message )?size|nachricht (ist )?zu gro(ß|ss)";
const RATE_TEXT: &str = r"(?-u:\b)rate(?-u:\b)|ratelimit|rate[- ]limit|too much mail|too many (messages|mails|e-?mails)|try again later|transmit|send(ing)? limit|throttl|peak|slow down|zu viele (nachrichten|e-?mails|mails)|versandlimit|sendelimit|sp(ä|ae)ter (erneut|nochmal|noch einmal) versuchen";

/// The built-in defaults, in matching order (first match wins). See the report table in
/// `classify.rs` docs for why each ambiguous case lands where it does.
pub(crate) const BUILTIN: &[Builtin] = &[
    // --- positive and intermediate replies
    b(ANY, Some("2xx"), None, None, "accept", None, "2xx: the provider accepted the command"),
    b(&["data"], Some("354"), None, None, "accept", None, "354 after DATA: send the body"),
    b(&["auth"], Some("334"), None, None, "accept", None, "334 during AUTH: next credential step"),
    b(ANY, Some("3xx"), None, None, "protocol-error", None, "3xx where no intermediate reply belongs (e.g. 354 at RCPT)"),
    // --- the account cannot send: quotas (outrank every address-level reading)
    b(ANY, Some("5xx"), Some("5.4.5"), None, "pause-quota", Some("24h"), "5.4.5: Google daily sending quota; pause until the 24 h window resets"),
    b(ANY, Some("5xx"), Some("5.2.251-255"), None, "pause-quota", Some("24h"), "5.2.251–255: Microsoft sender throttled for about a day"),
    b(ANY, Some("5xx"), Some("5.1.90"), None, "pause-quota", Some("24h"), "5.1.90: Microsoft daily recipient limit of the account"),
    b(ANY, Some("4xx,5xx"), None, Some(QUOTA_DAILY), "pause-quota", Some("24h"), "daily sending quota of the account (SES, Microsoft SubmissionQuotaExceeded, Google)"),
    b(ANY, Some("4xx,5xx"), None, Some(QUOTA_OTHER), "pause-quota", Some("1h"), "sending quota of the account (e.g. T-Online \"Send quota exceeded\"), window unknown: re-probe hourly"),
    // --- the account cannot send: authentication
    b(&["auth"], Some("5xx"), None, None, "pause-auth", None, "5xx to AUTH: credentials refused; retrying would lock the account"),
    b(ANY, Some("530,534,535,538"), None, None, "pause-auth", None, "530/534/535/538: authentication required, refused or not possible as configured"),
    b(ANY, Some("5xx"), Some("5.7.8,5.7.9,5.7.11,5.7.12,5.7.13"), None, "pause-auth", None, "5.7.8–5.7.13: credentials invalid, mechanism, password change or account disabled"),
    b(ANY, Some("5xx"), None, Some(AUTH_TEXT), "pause-auth", None, "the provider says we must authenticate"),
    // --- connection throttling
    b(ANY, Some("421"), None, None, "throttle-connections", None, "421: service closing the channel; with providers a connection limit"),
    b(ANY, Some("432"), None, None, "throttle-connections", None, "432 (4.3.2): Microsoft concurrent connection limit"),
    b(ANY, Some("4xx"), None, Some(CONN_TEXT), "throttle-connections", None, "too many connections / sessions / logins"),
    b(&["auth"], Some("4xx"), None, None, "defer", None, "temporary authentication failure: retry later, no pause"),
    // --- the recipient's own limits: retry, never suppress, don't slow the account
    b(ANY, Some("4xx,5xx"), Some("*.2.121-122"), None, "defer", Some("1h"), "4/5.2.121–122: Microsoft recipient's hourly receive limit (ReceivingRatePerm)"),
    b(ANY, Some("5xx"), None, Some(RCPT_RATE), "defer", Some("1h"), "permanent-looking reply about the recipient's receive rate: retry later"),
    b(ANY, Some("4xx"), None, Some(RCPT_RATE), "defer", None, "the recipient receives mail too fast: retry later"),
    b(ANY, Some("4xx,5xx"), Some("*.5.3"), None, "defer", None, "x.5.3 too many recipients: send the rest in another transaction"),
    b(ANY, Some("4xx,5xx"), None, Some(TOO_MANY_RCPT), "defer", None, "too many recipients: send the rest in another transaction"),
    // --- temporary, specific
    b(ANY, Some("4xx"), None, Some(GREYLIST), "defer", None, "greylisting: retry after the given delay"),
    // --- mailbox full
    b(ADDR, Some("4xx,5xx"), Some("*.2.2"), None, "soft-bounce", None, "x.2.2: mailbox full"),
    b(ADDR, Some("422"), None, None, "soft-bounce", None, "422: recipient mailbox over its storage limit"),
    b(ADDR, Some("4xx,5xx"), None, Some(MAILBOX_FULL), "soft-bounce", None, "mailbox full / over quota"),
    // --- sender-side problems are not the recipient's fault
    b(ANY, Some("5xx"), Some("5.1.7,5.1.8"), None, "policy-block", None, "5.1.7/5.1.8: our sender address is refused"),
    b(&["mail"], Some("5xx"), Some("5.1.*"), None, "policy-block", None, "5.1.x at MAIL FROM: about our sender, not a recipient"),
    b(ANY, Some("5xx"), None, Some(SENDER_TEXT), "policy-block", None, "the sender address or account is refused"),
    b(ANY, Some("5xx"), None, Some(RELAY_TEXT), "policy-block", None, "relaying denied: our account may not send there"),
    b(ANY, Some("5xx"), Some("5.7.*"), None, "policy-block", None, "5.7.x: security or policy block (spam, blocklist, relay)"),
    b(ANY, Some("541,557,571,572"), None, None, "policy-block", None, "541/557/571/572: refused by anti-spam or relay policy"),
    b(&["greeting", "ehlo", "starttls"], Some("5xx"), None, None, "policy-block", None, "5xx before any transaction: the server refuses to talk to us"),
    b(ANY, Some("5xx"), None, Some(POLICY_TEXT), "policy-block", None, "spam, blocklist or policy wording"),
    // --- the address is bad: suppress
    b(ADDR, Some("5xx"), Some("5.1.*"), None, "suppress", None, "5.1.x: bad recipient mailbox, domain or syntax"),
    b(ADDR, Some("5xx"), Some("5.2.1"), None, "suppress", None, "5.2.1: mailbox disabled"),
    b(ADDR, Some("510,511,512,513"), Some("none"), None, "suppress", None, "510–513 (non-standard forms of 5.1.0–5.1.3): bad address"),
    b(ADDR, Some("550,551,553,554"), Some("none,5.0.0"), Some(UNKNOWN_TEXT), "suppress", None, "no enhanced code, text says the user or mailbox does not exist"),
    // --- this message is refused
    b(ANY, Some("5xx"), Some("5.2.3,5.3.4,5.6.*"), None, "reject-message", None, "5.2.3/5.3.4/5.6.x: message size or content"),
    b(ANY, Some("523,552"), None, None, "reject-message", None, "523/552: message exceeds a size or storage allocation"),
    b(ANY, Some("5xx"), None, Some(SIZE_TEXT), "reject-message", None, "message too large"),
    // --- 4xx rate limits, then everything else temporary
    b(ANY, Some("450,451,452"), Some("4.7.*"), None, "throttle-rate", None, "450/451/452 with 4.7.x: provider policy limit, slow down"),
    b(ANY, Some("4xx"), None, Some(RATE_TEXT), "throttle-rate", None, "rate limit wording (rate, too much mail, try again later, send limit)"),
    b(ANY, Some("4xx"), None, None, "defer", None, "other 4xx: temporary, retry with backoff"),
    // --- everything else permanent: the message fails, the address is kept
    b(&["rset"], Some("5xx"), None, None, "protocol-error", None, "5xx to RSET makes no sense"),
    b(ANY, Some("5xx"), None, None, "reject-message", None, "other 5xx: this message fails; unknown reasons never suppress"),
    // --- codes outside 2xx–5xx (only reachable through a hand-built Reply)
    b(ANY, None, None, None, "protocol-error", None, "not a 2xx–5xx reply"),
];
