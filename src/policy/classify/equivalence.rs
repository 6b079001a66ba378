//! `classify` (code index, literal pre-filter, per-rule regexes) and its `RegexSet`
//! fallback must decide exactly as the plain walk over every rule with the whole
//! `RegexSet` (`classify_reference`).

use super::*;
use crate::smtp::EnhancedCode;
use proptest::prelude::*;

/// Phrases of every kind the rules look for, and near misses.
const WORDS: &[&str] = &[
    "Daily user sending quota exceeded",
    "SubmissionQuotaExceeded",
    "Send quota exceeded",
    "Authentication required",
    "too many connections from 127.0.0.1",
    "Too many concurrent SMTP connections",
    "ReceivingRatePerm",
    "receiving mail at a rate",
    "recipient has exceeded",
    "too many recipients",
    "Greylisted, please try again in 300 seconds",
    "grey-listing in action",
    "Mailbox full",
    "over quota",
    "Postfach ist voll",
    "Postfach ist überfüllt",
    "Sender address rejected",
    "Relay access denied",
    "listed at Spamhaus",
    "ſpam",
    "\u{212A}onto unbekannt",
    "poliCY",
    "User unknown in local recipient table",
    "Recipient address rejected",
    "Empfänger unbekannt",
    "Empfaenger unbekannt",
    "doesn't have a gmail account",
    "message too big",
    "Nachricht ist zu groß",
    "rate",
    "ratelimit",
    "operate",
    "try again later",
    "später erneut versuchen",
    "Ok",
    "",
    "RBL",
    "dnsrbl",
    "ABC",
    "abc",
    "für",
];

fn text() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(
            (prop::sample::select(WORDS), any::<bool>(), "[ -~]{0,4}"),
            0..4,
        ),
        "\\PC{0,10}",
    )
        .prop_map(|(parts, tail)| {
            let mut s = String::new();
            for (w, upper, glue) in parts {
                s.push_str(&glue);
                if upper {
                    s.push_str(&w.to_uppercase());
                } else {
                    s.push_str(w);
                }
            }
            s.push_str(&tail);
            s
        })
}

fn phase() -> impl Strategy<Value = Phase> {
    use Phase::*;
    prop::sample::select(vec![
        Greeting, Ehlo, StartTls, Auth, Mail, Rcpt, Data, DataEnd, Rset,
    ])
}

fn user_rules() -> Vec<RuleSpec> {
    let r = |text: &str, verdict: &str| RuleSpec {
        text: Some(text.into()),
        verdict: verdict.into(),
        ..RuleSpec::default()
    };
    vec![
        r("(?-i)ABC", "defer"),
        r(r"\bfur\b", "policy-block"),
        r("für", "throttle-rate"),
        r("ſpam", "pause-policy"),
        RuleSpec {
            code: Some("2xx".into()),
            ..r("x*y", "accept")
        },
    ]
}

fn check(c: &Classifier, phase: Phase, r: &Reply) -> Result<(), TestCaseError> {
    let want = c.classify_reference(phase, r);
    prop_assert_eq!(&c.classify(phase, r), &want, "{:?}", r);
    prop_assert_eq!(&c.classify_by_set(phase, r), &want, "{:?}", r);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn same_as_the_regex_set(
        code in prop_oneof![200u16..=599, prop::sample::select(vec![
            250u16, 354, 421, 450, 451, 452, 454, 535, 550, 551, 552, 553, 554, 571, 0, 999, 1000
        ])],
        enh in proptest::option::of((0u16..=260, 0u16..=260)),
        lines in proptest::collection::vec(text(), 0..4),
        phase in phase(),
        user in any::<bool>(),
    ) {
        static BUILTIN: std::sync::OnceLock<Classifier> = std::sync::OnceLock::new();
        static USER: std::sync::OnceLock<Classifier> = std::sync::OnceLock::new();
        let c = if user {
            USER.get_or_init(|| Classifier::new(&user_rules(), &[]).unwrap())
        } else {
            BUILTIN.get_or_init(|| Classifier::builtin().unwrap())
        };
        let class = (code / 100) as u8;
        let enhanced = enh
            .filter(|_| matches!(class, 2 | 4 | 5))
            .map(|(s, d)| EnhancedCode::new(class, s, d));
        check(c, phase, &Reply { code, enhanced, lines })?;
    }
}
