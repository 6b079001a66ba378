//! Compiling one rule: a [`RuleSpec`](super::RuleSpec) or a built-in entry (as
//! [`RuleParts`]) into a [`Rule`] the classifier matches without parsing, with every
//! confinement of the module docs (`suppress` to 5xx at RCPT/DATA-end, `accept` to 2xx)
//! and an error that names the rule and the field.

use super::matchers::{
    phase_bit, ClassMask, CodePat, EnhPat, VerdictKind, ADDRESS_PHASES, ALL_PHASES, CLASS_ANY,
};
use super::spec::{RuleError, RuleSource, RuleSpec};
use crate::policy::verdict::Phase;
use crate::smtp::EnhancedCode;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use crate::policy::classify::tests::*;
    use crate::policy::classify::Classifier;
    use crate::policy::rules::{RuleSource, RuleSpec};
    use crate::policy::verdict::Phase::*;

    #[test]
    fn user_suppress_rules_are_confined() {
        // No phase given: implicitly RCPT / DATA-end, 5xx only.
        let rules = [spec("xxx", Some("gone"), "suppress")];
        let c = Classifier::new(&rules, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.classify(Rcpt, &reply(550, "", "gone")).verdict, SUP);
        assert_ne!(c.classify(Mail, &reply(550, "", "gone")).verdict, SUP);
        assert_ne!(c.classify(Rcpt, &reply(450, "", "gone")).verdict, SUP);
        assert_eq!(c.classify(Rcpt, &reply(250, "", "gone")).verdict, ACC);
    }

    #[test]
    fn rule_errors_name_the_rule_and_field() {
        let bad_regex = [
            spec("450", Some("ok"), "defer"),
            spec("450", Some("(unclosed"), "defer"),
        ];
        let e = Classifier::new(&[], &bad_regex)
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        assert_eq!(
            (e.origin, e.index, e.field),
            (RuleSource::Profile, 1, "text")
        );
        assert!(
            e.to_string()
                .starts_with("profile rules[1].text: bad regex"),
            "{e}"
        );

        let cases: Vec<(RuleSpec, &str)> = vec![
            (spec("4y1", None, "defer"), "code"),
            (spec("4211", None, "defer"), "code"),
            (spec("421", None, "slow-down"), "verdict"),
            (
                RuleSpec {
                    enhanced: Some("5.1".into()),
                    verdict: "defer".into(),
                    ..RuleSpec::default()
                },
                "enhanced",
            ),
            (
                RuleSpec {
                    enhanced: Some("7.1.1".into()),
                    verdict: "defer".into(),
                    ..RuleSpec::default()
                },
                "enhanced",
            ),
            (
                RuleSpec {
                    enhanced: Some("5.2.255-251".into()),
                    verdict: "defer".into(),
                    ..RuleSpec::default()
                },
                "enhanced",
            ),
            (
                RuleSpec {
                    phase: Some(vec!["rcpt".into(), "helo-world".into()]),
                    verdict: "defer".into(),
                    ..RuleSpec::default()
                },
                "phase",
            ),
            (
                RuleSpec {
                    phase: Some(vec!["mail".into()]),
                    verdict: "suppress".into(),
                    ..RuleSpec::default()
                },
                "phase",
            ),
            (spec("4xx", None, "suppress"), "code"),
            (
                RuleSpec {
                    hint: Some("soon".into()),
                    verdict: "defer".into(),
                    ..RuleSpec::default()
                },
                "hint",
            ),
            (
                RuleSpec {
                    hint: Some("5m".into()),
                    verdict: "throttle-rate".into(),
                    ..RuleSpec::default()
                },
                "hint",
            ),
            (
                RuleSpec {
                    until: Some("1h".into()),
                    verdict: "defer".into(),
                    ..RuleSpec::default()
                },
                "until",
            ),
        ];
        for (i, (s, field)) in cases.into_iter().enumerate() {
            let user = [spec("250", None, "accept"), s.clone()];
            match Classifier::new(&user, &[]) {
                Ok(_) => panic!("case {i} {s:?} must fail"),
                Err(e) => {
                    assert_eq!(
                        (e.origin, e.index, e.field),
                        (RuleSource::User, 1, field),
                        "case {i}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn accept_rules_are_confined_to_2xx_for_users_and_profiles() {
        for (origin, code) in [
            (RuleSource::User, "550"),
            (RuleSource::User, "5xx"),
            (RuleSource::User, "354"),
            (RuleSource::User, "250,450"),
            (RuleSource::Profile, "334"),
            (RuleSource::Profile, "xxx"),
        ] {
            let rule = [spec(code, Some("ok"), "accept")];
            let (user, profile): (&[RuleSpec], &[RuleSpec]) = match origin {
                RuleSource::User => (&rule, &[]),
                _ => (&[], &rule),
            };
            let e = Classifier::new(user, profile)
                .err()
                .unwrap_or_else(|| panic!("accept for {code} must be refused"));
            assert_eq!((e.origin, e.index, e.field), (origin, 0, "code"), "{e}");
            assert!(e.message.contains("2xx"), "{e}");
        }
        // No code at all would match every reply.
        let any = [RuleSpec {
            text: Some("ok".into()),
            verdict: "accept".into(),
            ..RuleSpec::default()
        }];
        assert!(Classifier::new(&any, &[]).is_err());
        for code in ["250", "2xx", "25x", "250,251"] {
            let c = Classifier::new(&[spec(code, Some("ok"), "accept")], &[])
                .unwrap_or_else(|e| panic!("{code}: {e}"));
            assert_eq!(c.classify(DataEnd, &reply(250, "", "ok")).verdict, ACC);
        }
        assert_eq!(
            Classifier::problems(
                &[spec("550", None, "accept"), spec("2xx", None, "accept")],
                &[]
            )
            .len(),
            1
        );
    }
}
