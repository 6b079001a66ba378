//! Tests of `explain`: plain words in both languages, one account per verdict, every
//! built-in and profile rule in German.

use super::*;

#[test]
fn too_many_connections() {
    let out = explain("421 4.7.0 Too many connections", None, None, Lang::En).unwrap();
    assert!(
        out.contains("too many connections: use fewer [throttle-connections]"),
        "{out}"
    );
    assert!(out.contains("drops its connection limit at once"), "{out}");
    assert!(
        out.contains("Step:     recipient (RCPT TO) (assumed; give --phase"),
        "{out}"
    );
    let out = explain(
        "421 4.7.0 Too many connections",
        Some(Phase::Mail),
        None,
        Lang::En,
    )
    .unwrap();
    assert!(out.contains("Step:     sender (MAIL FROM)\n"), "{out}");
}

#[test]
fn multi_line_unknown_user_is_suppressed() {
    let out = explain("550-5.1.1 The email account that you tried to reach does not exist.\n550 5.1.1 Please try again", None, None, Lang::En).unwrap();
    assert!(
        out.contains("Verdict:  the address is bad for good"),
        "{out}"
    );
    assert!(out.contains("suppression list"), "{out}");
    assert!(out.contains("5.1.1:"), "{out}");
}

#[test]
fn bare_354_is_the_data_phase() {
    let out = explain("354", None, None, Lang::En).unwrap();
    assert!(
        out.contains("Step:     start of the message (DATA)"),
        "{out}"
    );
    assert!(out.contains("Verdict:  accepted [accept]"), "{out}");
}

#[test]
fn profile_rules_apply() {
    let out = explain(
        "432 4.3.2 Concurrent connections limit exceeded",
        Some(Phase::Mail),
        Some("office365"),
        Lang::En,
    )
    .unwrap();
    assert!(out.contains("[throttle-connections]"), "{out}");
    assert!(
        out.contains("rule 1 of profile office365: Microsoft"),
        "{out}"
    );
    assert!(matches!(
        explain("250 ok", None, Some("nope"), Lang::En),
        Err(ExplainError::BadProfile(_))
    ));
}

#[test]
fn quota_pause_and_hint() {
    let out = explain(
        "550 5.4.5 Daily user sending quota exceeded",
        None,
        None,
        Lang::En,
    )
    .unwrap();
    assert!(out.contains("pause the account for 1 day"), "{out}");
    assert!(out.contains("451 4.7.0"), "{out}");
    assert!(!out.contains("1day") && !out.contains("86400"), "{out}");
    let out = explain(
        "451 4.7.1 Greylisted, try again in 5 minutes",
        None,
        None,
        Lang::En,
    )
    .unwrap();
    assert!(
        out.contains("at least that long") && out.contains("5 minutes"),
        "{out}"
    );
}

/// `452 4.5.3`: one account — the rest goes in the next transaction at once, not
/// "retried later with exponential backoff" as well.
#[test]
fn too_many_recipients_is_one_story() {
    for lang in [Lang::En, Lang::De] {
        let out = explain("452 4.5.3 Too many recipients", None, None, lang).unwrap();
        let lower = out.to_lowercase();
        assert!(
            lower.contains("at once") || lower.contains("sofort"),
            "{out}"
        );
        assert!(
            !lower.contains("backoff") && !lower.contains("exponentiell"),
            "{out}"
        );
    }
}

#[test]
fn german() {
    let out = explain(
        "535 5.7.8 Authentication credentials invalid",
        Some(Phase::Auth),
        None,
        Lang::De,
    )
    .unwrap();
    assert!(out.contains("Was mailvalve tut:"), "{out}");
    assert!(out.contains("Zugangsdaten"), "{out}");
    assert!(out.contains("eingebaute Regel"), "{out}");
    // One term for the suppression list, another for a policy refusal: the sentence
    // that used to contradict itself ("Richtlinien-Sperre ... nie gesperrt").
    let out = explain("554 5.7.1 Message rejected as spam", None, None, Lang::De).unwrap();
    assert!(out.contains("Richtlinien-Ablehnung"), "{out}");
    assert!(out.contains("Unterdrückungsliste"), "{out}");
    assert!(
        !out.contains("gesperrt") && !out.contains("Sperre "),
        "{out}"
    );
}

#[test]
fn provider_codes_and_markers_have_texts() {
    for (reply, word) in [
        ("535 5.7.30 Basic authentication is not supported for Client Submission", "OAuth2"),
        ("451 4.7.650 The mail server has been temporarily rate limited due to IP reputation", "Microsoft"),
        ("550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP", "Microsoft"),
        ("550 5.2.252 SendAsDenied; sender throttled", "Microsoft"),
        ("421 4.7.28 unusual rate of unsolicited mail", "Google"),
        ("550 5.7.26 Unauthenticated email from example.org is not accepted", "Gmail"),
        ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints", "Yahoo"),
    ] {
        for lang in [Lang::En, Lang::De] {
            let out = explain(reply, None, None, lang).unwrap();
            assert!(out.contains(word), "{reply}:\n{out}");
            assert!(!out.contains("keine Beschreibung") && !out.contains("no description"), "{reply}:\n{out}");
        }
    }
}

/// The provider's words for "password sign-in is off" pause the account even without
/// `--profile`, and the explanation names what to do (issue 11), in both languages.
/// 5.7.30 with its RFC 8689 meaning (REQUIRETLS) does not pause the account.
#[test]
fn password_sign_in_off_pauses_without_a_profile_and_names_the_way_out() {
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "550 5.7.30 Basic authentication is not supported for Client Submission",
            &["[pause-auth]", "mailvalve oauth login --profile office365", "OAuth2"],
            &["[pause-auth]", "mailvalve oauth login --profile office365", "OAuth2"],
        ),
        (
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
            &["[pause-auth]", "Authenticated SMTP", "administrator", "mailvalve oauth login --profile office365"],
            &["[pause-auth]", "Authenticated SMTP", "Administrator", "mailvalve oauth login --profile office365"],
        ),
        (
            "534 5.7.9 Application-specific password required.",
            &["[pause-auth]", "Google", "OAuth2", "app password"],
            &["[pause-auth]", "Google", "OAuth2", "App-Passwort"],
        ),
        (
            "534 5.7.14 Please log in via your web browser and then try again.",
            &["[pause-auth]", "Google", "OAuth2", "app password"],
            &["[pause-auth]", "Google", "OAuth2", "App-Passwort"],
        ),
    ];
    for (reply, en, de) in cases {
        for (lang, words) in [(Lang::En, en), (Lang::De, de)] {
            for phase in [
                None,
                Some(Phase::Auth),
                Some(Phase::Mail),
                Some(Phase::Rcpt),
            ] {
                let out = explain(reply, phase, None, lang).unwrap();
                for w in words {
                    assert!(
                        out.contains(w),
                        "{reply} {phase:?} {lang:?}: no {w:?} in\n{out}"
                    );
                }
                assert_plain(&out);
            }
        }
    }
    let out = explain(
        "550 5.7.30 REQUIRETLS support required",
        Some(Phase::Mail),
        None,
        Lang::En,
    )
    .unwrap();
    assert!(!out.contains("[pause-auth]"), "{out}");
    assert!(out.contains("REQUIRETLS"), "{out}");
}

#[test]
fn durations_in_words() {
    let d = |s| Duration::from_secs(s);
    assert_eq!(duration_words(d(86_400), Lang::En), "1 day");
    assert_eq!(duration_words(d(86_400), Lang::De), "1 Tag");
    assert_eq!(
        duration_words(d(3 * 3600 + 1800), Lang::En),
        "3 hours 30 minutes"
    );
    assert_eq!(duration_words(d(120), Lang::De), "2 Minuten");
    assert_eq!(duration_words(d(0), Lang::En), "1 second");
    assert_eq!(duration_words(d(90_061), Lang::En), "1 day 1 hour");
}

/// English words that must not appear in German text (lower-case whole words; the
/// config keys and SMTP verbs like `RCPT TO` are upper-case or joined by `_`/`.`).
const EN_STOP_WORDS: &[&str] = &[
    "the", "and", "is", "are", "of", "to", "for", "with", "not", "be", "this", "that", "from",
    "after", "until", "when", "which", "it", "or", "at", "by", "on", "was", "has", "its",
];

fn english_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| EN_STOP_WORDS.contains(w))
        .map(str::to_owned)
        .collect()
}

/// No Rust debug formatting in anything a person reads.
fn assert_plain(text: &str) {
    for bad in [
        "{ ",
        " }",
        "Some(",
        "None",
        "hint:",
        "scope:",
        "Duration",
        "Throttle(",
        "Pause {",
    ] {
        assert!(!text.contains(bad), "debug formatting {bad:?} in: {text}");
    }
}

fn all_verdicts() -> Vec<Verdict> {
    let h = Some(Duration::from_secs(300));
    let day = Some(Duration::from_secs(86_400));
    let mut v = vec![
        Verdict::Accept,
        Verdict::Throttle(ThrottleKind::Connections),
        Verdict::Throttle(ThrottleKind::Rate),
        Verdict::Throttle(ThrottleKind::Recipients),
        Verdict::Defer { hint: None },
        Verdict::Defer { hint: h },
        Verdict::Suppress,
        Verdict::SoftBounce,
        Verdict::RejectMessage,
        Verdict::PolicyBlock,
        Verdict::ProtocolError,
    ];
    for scope in [PauseScope::Auth, PauseScope::Quota, PauseScope::Policy] {
        v.push(Verdict::Pause { scope, until: None });
        v.push(Verdict::Pause { scope, until: day });
    }
    v
}

/// Every verdict (with a 4xx and a 5xx reply) and every phase reads as words in both
/// languages, and the German is German: it differs from the English and holds none
/// of the English stop words.
#[test]
fn every_verdict_and_phase_in_words_in_both_languages() {
    let replies = [
        Reply::parse_lenient("451 4.3.0 try later").unwrap(),
        Reply::parse_lenient("550 5.0.0 refused").unwrap(),
        Reply::parse_lenient("452 4.5.3 Too many recipients").unwrap(),
    ];
    for v in all_verdicts() {
        let (en, de) = (verdict_words(&v, Lang::En), verdict_words(&v, Lang::De));
        assert_plain(&en);
        assert_plain(&de);
        assert_ne!(en, de);
        assert!(
            english_words(&de).is_empty(),
            "{de}: {:?}",
            english_words(&de)
        );
        for reply in &replies {
            for phase in Phase::ALL {
                let en = action(&v, None, reply, phase, Lang::En);
                let de = action(&v, None, reply, phase, Lang::De);
                assert_plain(&en);
                assert_plain(&de);
                assert_ne!(en, de, "{v:?}");
                assert!(
                    english_words(&de).is_empty(),
                    "{v:?} {phase:?}: {de}\n{:?}",
                    english_words(&de)
                );
            }
        }
    }
    for phase in Phase::ALL {
        let (en, de) = (phase_words(phase, Lang::En), phase_words(phase, Lang::De));
        assert_ne!(en, de);
        assert!(english_words(de).is_empty(), "{de}");
    }
}

/// Every built-in rule and every provider profile's rule has a German description
/// that differs from the English one and holds no English stop words; the whole
/// explanation of a reply each rule decides is free of debug formatting.
#[test]
fn every_built_in_and_profile_rule_in_german() {
    let mut classifiers = vec![(None, Classifier::builtin().unwrap())];
    for name in profile::names() {
        let p = profile::builtin(name).unwrap().unwrap();
        let c = crate::relay::limits::classifier(&crate::config::Config::default(), &p).unwrap();
        classifiers.push((Some(name), c));
    }
    let mut seen = 0;
    for (name, c) in &classifiers {
        for (origin, index, en) in c.rules() {
            if name.is_some() && origin == RuleSource::Builtin {
                continue;
            }
            seen += 1;
            let de = crate::cli::rules_de::german(en)
                .unwrap_or_else(|| panic!("no German for {origin} rule {index} of {name:?}: {en:?} (add it to src/cli/rules_de.rs)"));
            assert_ne!(de, en);
            assert!(
                english_words(de).is_empty(),
                "{de}: {:?}",
                english_words(de)
            );
            let line = rule_words(origin, index, en, *name, Lang::De);
            assert!(english_words(&line).is_empty(), "{line}");
        }
    }
    assert!(seen > 50, "{seen}");
    // Whole explanations, both languages, for replies across the table.
    for reply in [
        "250 ok",
        "354 go ahead",
        "421 4.7.0 Too many connections",
        "450 4.7.1 rate limited",
        "451 4.3.0 try later",
        "452 4.2.2 mailbox full",
        "452 4.5.3 Too many recipients",
        "535 5.7.8 bad credentials",
        "550 5.1.1 unknown user",
        "550 5.4.5 Daily user sending quota exceeded",
        "552 5.3.4 message too big",
        "554 5.7.1 spam",
        "600 nonsense",
    ] {
        for lang in [Lang::En, Lang::De] {
            if let Ok(out) = explain(reply, None, None, lang) {
                assert_plain(&out);
            }
        }
    }
}

#[test]
fn garbage_is_an_error() {
    for bad in ["", "hello", "600 no", "5a0 x"] {
        assert!(
            matches!(
                explain(bad, None, None, Lang::En),
                Err(ExplainError::NotAReply(_))
            ),
            "{bad:?}"
        );
    }
    assert!(parse_phase("bogus").is_err());
    assert_eq!(parse_phase("data-end").unwrap(), Phase::DataEnd);
}
