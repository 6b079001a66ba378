//! Tests of classification: replies through the compiled table, precedence of user,
//! profile and built-in rules, retry hints, and the helpers the rule tests share.

use super::*;
use crate::policy::verdict::{PauseScope, ThrottleKind};
use crate::smtp::EnhancedCode;
use proptest::prelude::*;

pub(crate) const ACC: Verdict = Verdict::Accept;
pub(crate) const TC: Verdict = Verdict::Throttle(ThrottleKind::Connections);
pub(crate) const TR: Verdict = Verdict::Throttle(ThrottleKind::Rate);
pub(crate) const DEF: Verdict = Verdict::Defer { hint: None };
pub(crate) const SUP: Verdict = Verdict::Suppress;
pub(crate) const SB: Verdict = Verdict::SoftBounce;
pub(crate) const REJ: Verdict = Verdict::RejectMessage;
pub(crate) const PB: Verdict = Verdict::PolicyBlock;
pub(crate) const PA: Verdict = Verdict::Pause {
    scope: PauseScope::Auth,
    until: None,
};
pub(crate) const PE: Verdict = Verdict::ProtocolError;
pub(crate) const H: u64 = 3600;
pub(crate) const fn pq(secs: u64) -> Verdict {
    Verdict::Pause {
        scope: PauseScope::Quota,
        until: Some(Duration::from_secs(secs)),
    }
}
pub(crate) const fn def(secs: u64) -> Verdict {
    Verdict::Defer {
        hint: Some(Duration::from_secs(secs)),
    }
}

use Phase::{Auth, Data, DataEnd, Ehlo, Greeting, Mail, Rcpt, Rset, StartTls};

pub(crate) fn reply(code: u16, enhanced: &str, text: &str) -> Reply {
    let enhanced = EnhancedCode::parse_prefix(enhanced).map(|(e, _)| e);
    Reply {
        code,
        enhanced,
        lines: vec![text.to_string()],
    }
}

pub(crate) fn builtin() -> &'static Classifier {
    static SHARED: std::sync::OnceLock<Classifier> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| match Classifier::builtin() {
        Ok(c) => c,
        Err(e) => panic!("built-in rules must compile: {e}"),
    })
}

#[test]
fn non_smtp_codes_are_protocol_errors() {
    // 101 / 111 are client-side conditions; the parser refuses them, and a hand-built
    // reply with such a code is a protocol error, never a panic.
    assert!(Reply::parse(b"101 cannot open connection\r\n").is_err());
    assert!(Reply::parse(b"111 Connection refused\r\n").is_err());
    let c = builtin();
    for code in [0u16, 101, 111, 600, 999, 1000, u16::MAX] {
        assert_eq!(
            c.classify(Rcpt, &reply(code, "", "x")).verdict,
            PE,
            "{code}"
        );
    }
    assert_eq!(classify_error(DataEnd), PE);
}

#[test]
fn multi_line_reply_text_is_joined() {
    let c = builtin();
    let r = Reply {
        code: 550,
        enhanced: None,
        lines: vec![
            "The email account that you tried to reach does".into(),
            "not exist. Please try double-checking the recipient's address".into(),
        ],
    };
    assert_eq!(c.classify(Rcpt, &r).verdict, SUP);
    // Longer than the stack buffer: still joined.
    let mut long = r.clone();
    long.lines.insert(0, "x".repeat(600));
    assert_eq!(c.classify(Rcpt, &long).verdict, SUP);
    let greylist = Reply {
        code: 451,
        enhanced: Some(EnhancedCode::new(4, 7, 1)),
        lines: vec![
            "Greylisting in action,".into(),
            "please come back in 00:05:00".into(),
        ],
    };
    assert_eq!(c.classify(Rcpt, &greylist).verdict, def(300));
    let parsed = Reply::parse_lenient("550-5.1.1 The email account that you tried to reach does\n550-5.1.1 not exist.\n550 5.1.1 https://support.google.com/mail/?p=NoSuchUser")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.classify(Rcpt, &parsed).verdict, SUP);
}

#[test]
fn retry_hints() {
    let s = |n: u64| Some(Duration::from_secs(n));
    let cases: &[(&str, Option<Duration>)] = &[
        (
            "Greylisting in action, please come back in 00:02:00",
            s(120),
        ),
        ("please come back in 00:02:00 [minutes]", s(120)),
        ("come back in 05:30", s(330)),
        ("try again in 60 seconds", s(60)),
        ("in 60 seconds", s(60)),
        ("Try again in 5 minutes", s(300)),
        ("retry in 1 hour", s(3600)),
        ("Greylisted for 300 seconds", s(300)),
        ("retry after 60s", s(60)),
        ("retry after 10m.", s(600)),
        ("please wait 2 hrs", s(7200)),
        ("try again in a minute", s(60)),
        ("Bitte in 10 Minuten erneut versuchen", s(600)),
        ("Versuchen Sie es nach 2 Stunden erneut", s(7200)),
        ("quota resets in 1 day", s(86400)),
        ("come back in 400 days", Some(MAX_HINT)),
        ("try again later", None),
        ("Mailbox busy", None),
        ("in action", None),
        ("in 5 apples", None),
        ("in 99999999999999999999 seconds", None),
        ("in 12:99:99:99", None),
        ("in", None),
        ("", None),
    ];
    for (text, want) in cases {
        assert_eq!(retry_hint(text), *want, "{text:?}");
    }
}

pub(crate) fn spec(code: &str, text: Option<&str>, verdict: &str) -> RuleSpec {
    RuleSpec {
        code: Some(code.into()),
        text: text.map(Into::into),
        verdict: verdict.into(),
        ..RuleSpec::default()
    }
}

#[test]
fn precedence_user_over_profile_over_builtin() {
    let r = reply(450, "", "Mail send limit exceeded");
    let profile = [spec("450", Some("mail send limit"), "pause-quota")];
    let user = [spec("4xx", Some("SEND LIMIT"), "defer")];

    let only_builtin = builtin();
    let got = only_builtin.classify(Rcpt, &r);
    assert_eq!(got.verdict, TR);
    assert_eq!(got.origin, RuleSource::Builtin);

    let with_profile = Classifier::new(&[], &profile).unwrap_or_else(|e| panic!("{e}"));
    let got = with_profile.classify(Rcpt, &r);
    assert_eq!(
        got.verdict,
        Verdict::Pause {
            scope: PauseScope::Quota,
            until: None
        }
    );
    assert_eq!((got.origin, got.index), (RuleSource::Profile, 0));

    let with_user = Classifier::new(&user, &profile).unwrap_or_else(|e| panic!("{e}"));
    let got = with_user.classify(Rcpt, &r);
    assert_eq!(got.verdict, DEF);
    assert_eq!((got.origin, got.index), (RuleSource::User, 0));
    assert!(got.description.contains("defer"), "{}", got.description);

    // A user rule that does not match leaves the next source in charge.
    let got = with_user.classify(Rcpt, &reply(550, "5.1.1", "User unknown"));
    assert_eq!((got.verdict, got.origin), (SUP, RuleSource::Builtin));
}

#[test]
fn rule_matchers() {
    let rules = [
        RuleSpec {
            phase: Some(vec!["data-end".into()]),
            enhanced: Some("5.7.*".into()),
            verdict: "pause-policy".into(),
            until: Some("2h".into()),
            description: Some("provider X blocks: pause".into()),
            ..RuleSpec::default()
        },
        RuleSpec {
            enhanced: Some("4.2.1-5".into()),
            verdict: "defer".into(),
            hint: Some("15m".into()),
            ..RuleSpec::default()
        },
        spec("45x", None, "throttle-rate"),
    ];
    let c = Classifier::new(&rules, &[]).unwrap_or_else(|e| panic!("{e}"));
    let pause = c.classify(DataEnd, &reply(550, "5.7.1", "blocked"));
    assert_eq!(
        pause.verdict,
        Verdict::Pause {
            scope: PauseScope::Policy,
            until: Some(Duration::from_secs(7200))
        }
    );
    assert_eq!(pause.description, "provider X blocks: pause");
    // Same reply at RCPT: the phase does not match, the built-in policy block applies.
    assert_eq!(
        c.classify(Rcpt, &reply(550, "5.7.1", "blocked")).verdict,
        PB
    );
    assert_eq!(
        c.classify(Rcpt, &reply(450, "4.2.3", "x")).verdict,
        def(900)
    );
    // The reply's own hint outranks the rule's fallback.
    assert_eq!(
        c.classify(Rcpt, &reply(450, "4.2.3", "try again in 2 minutes"))
            .verdict,
        def(120)
    );
    assert_eq!(c.classify(Rcpt, &reply(451, "", "x")).verdict, TR);
    assert_eq!(c.classify(Rcpt, &reply(461, "", "x")).verdict, DEF);
    // "none" matches only replies without an enhanced code.
    let none = [RuleSpec {
        enhanced: Some("none".into()),
        code: Some("550".into()),
        verdict: "policy-block".into(),
        ..RuleSpec::default()
    }];
    let c = Classifier::new(&none, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.classify(Rcpt, &reply(550, "", "user unknown")).verdict,
        PB
    );
    assert_eq!(
        c.classify(Rcpt, &reply(550, "5.1.1", "user unknown"))
            .verdict,
        SUP
    );
}

fn phase_strategy() -> impl Strategy<Value = Phase> {
    prop::sample::select(vec![
        Greeting, Ehlo, StartTls, Auth, Mail, Rcpt, Data, DataEnd, Rset,
    ])
}

proptest! {
    #[test]
    fn classify_never_panics_and_suppresses_only_5xx_at_rcpt(
        code in 200u16..=599,
        enh in proptest::option::of((0u16..=999, 0u16..=999)),
        lines in proptest::collection::vec("\\PC{0,120}", 0..4),
        phase in phase_strategy(),
    ) {
        let c = builtin();
        let class = (code / 100) as u8;
        let enhanced = enh
            .filter(|_| class != 3)
            .map(|(s, d)| EnhancedCode::new(class, s, d));
        let r = Reply { code, enhanced, lines };
        let got = c.classify(phase, &r);
        if matches!(got.verdict, Verdict::Suppress | Verdict::SoftBounce) {
            prop_assert!(matches!(phase, Rcpt | DataEnd));
            prop_assert!(code >= 400);
        }
        if got.verdict == Verdict::Suppress {
            prop_assert!(code >= 500);
        }
        if code < 300 {
            prop_assert_eq!(&got.verdict, &Verdict::Accept);
        }
        if let Verdict::Defer { hint: Some(h) } = got.verdict {
            prop_assert!(h <= MAX_HINT);
        }
    }

    #[test]
    fn retry_hint_never_panics(text in "\\PC{0,200}") {
        let _ = retry_hint(&text);
    }

    #[test]
    fn any_code_any_text(code in any::<u16>(), text in "\\PC{0,60}") {
        let c = builtin();
        let _ = c.classify(Rcpt, &Reply { code, enhanced: None, lines: vec![text] });
    }
}

/// Rough timing of the hot path; run with
/// `cargo test --release --lib classify_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn classify_timing() {
    let c = builtin();
    let replies = [
        (Rcpt, reply(250, "2.1.5", "Ok")),
        (DataEnd, reply(250, "2.0.0", "Ok: queued as 4F2A")),
        (
            Rcpt,
            reply(
                550,
                "5.1.1",
                "<x@example.org>: Recipient address rejected: User unknown",
            ),
        ),
        (Rcpt, reply(450, "4.7.1", "too much mail, try again later")),
        (DataEnd, reply(421, "4.7.0", "Too many connections")),
        (
            Rcpt,
            reply(550, "", "Requested action not taken: mailbox unavailable"),
        ),
        (
            Rcpt,
            reply(
                451,
                "4.7.1",
                "Greylisting in action, please come back in 00:02:00",
            ),
        ),
    ];
    for (phase, r) in &replies {
        let n = 200_000u32;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(c.classify(*phase, std::hint::black_box(r)));
        }
        println!("{:>6} ns  {r}", (t.elapsed() / n).as_nanos());
    }
}
