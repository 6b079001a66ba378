//! `mailvalve explain "<reply>"`: what a provider reply means, which rule decides it,
//! and exactly what mailvalve does about it — in English, or German with `--lang de`.
//! The rendering is a pure function ([`explain`]) so it is tested without the binary.
//!
//! It must never panic on what a person types: anything that is not a reply is an
//! [`ExplainError`] naming the problem.

use crate::config::profile;
use crate::policy::classify::{retry_hint, Classifier};
use crate::policy::verdict::{PauseScope, Phase, ThrottleKind, Verdict};
use crate::smtp::codes::{enhanced_meaning, meaning, Lang};
use crate::smtp::Reply;
use std::fmt::Write;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("not an SMTP reply: {0} (expected e.g. \"550 5.1.1 user unknown\" or \"354\")")]
    NotAReply(String),
    #[error(
        "unknown phase {0:?} (one of greeting, ehlo, starttls, auth, mail, rcpt, data, data-end)"
    )]
    BadPhase(String),
    #[error("no provider profile {0:?} (see `mailvalve profiles`)")]
    BadProfile(String),
    #[error("{0}")]
    Rules(String),
}

/// Parses `--phase` (`Phase::parse`, the one parser of phase names).
pub fn parse_phase(s: &str) -> Result<Phase, ExplainError> {
    Phase::parse(s).ok_or_else(|| ExplainError::BadPhase(s.to_string()))
}

/// The phase a reply most likely answers when none is given.
fn default_phase(code: u16) -> Phase {
    match code {
        220 => Phase::Greeting,
        334 | 235 => Phase::Auth,
        354 => Phase::Data,
        _ => Phase::Rcpt,
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

/// What mailvalve does for a verdict, in the chosen language.
fn action(v: &Verdict, hint: Option<Duration>, lang: Lang) -> String {
    let de = lang == Lang::De;
    match v {
        Verdict::Accept => if de {
            "Nichts Besonderes: der Provider hat angenommen. Gelingt eine Reihe von Nachrichten, darf mailvalve eine Verbindung mehr öffnen (bis zur Obergrenze des Profils)."
        } else {
            "Nothing special: the provider accepted. After a run of successful messages mailvalve may open one more connection (up to the profile's maximum)."
        }.into(),
        Verdict::Throttle(ThrottleKind::Connections) => if de {
            "Zu viele Verbindungen: mailvalve senkt die Verbindungsgrenze sofort auf die Zahl der Verbindungen, die gerade funktionierten (mindestens 1), merkt sie sich als Obergrenze und probiert erst nach probe_interval (10 Minuten) wieder eine mehr. Die Nachricht wird erneut versucht; das zählt nicht als Zustellversuch. Im Passthrough-Modus bekommt das Mailprogramm ein 4xx und versucht es später."
        } else {
            "Too many connections: mailvalve drops its connection limit at once to the connections that were working (at least 1), remembers that as a ceiling, and tries one more only after probe_interval (10 minutes). The message is retried; this does not count as a delivery attempt. In passthrough mode the mailer gets a 4xx and retries later."
        }.into(),
        Verdict::Throttle(ThrottleKind::Rate) => if de {
            "Zu schnell: mailvalve halbiert seine Senderate (nicht unter die Untergrenze) und steigert sie dann schrittweise um 10 % je Zeitfenster ohne Drosselung bis knapp unter die gelernte Obergrenze. Die Nachricht wird erneut versucht; das zählt nicht als Zustellversuch."
        } else {
            "Too fast: mailvalve halves its sending rate (not below the floor), then ramps it back up by 10% per window without throttling, to just below the learned ceiling. The message is retried; this does not count as a delivery attempt."
        }.into(),
        Verdict::Defer { hint: h } => {
            let h = h.or(hint);
            let wait = match (h, de) {
                (Some(d), false) => format!(" The provider asks for {}; mailvalve waits at least that long.", human(d)),
                (Some(d), true) => format!(" Der Provider nennt {}; mailvalve wartet mindestens so lange.", human(d)),
                (None, _) => String::new(),
            };
            if de {
                format!("Vorübergehend abgelehnt: die Nachricht wird später erneut versucht, mit exponentiell wachsender Wartezeit und zufälliger Streuung (full jitter), damit nicht alle Wiederholungen gleichzeitig kommen.{wait}")
            } else {
                format!("Temporarily refused: the message is retried later, with exponential backoff and full jitter so that retries do not all arrive at once.{wait}")
            }
        }
        Verdict::Suppress => if de {
            "Die Adresse ist dauerhaft ungültig: sie kommt auf die Sperrliste. Künftige RCPT an sie beantwortet mailvalve selbst mit 550 5.1.1 und dem ursprünglichen Grund; der Provider sieht sie nie wieder. Kein erneuter Versuch."
        } else {
            "The address is permanently bad: it goes on the suppression list. Later RCPTs to it are answered by mailvalve itself with 550 5.1.1 and the original reason; the provider never sees it again. Nothing is retried."
        }.into(),
        Verdict::SoftBounce => if de {
            "Postfach voll o. Ä.: zählt als weicher Fehler. Erst nach suppression.soft_threshold solchen Antworten (Standard 3) innerhalb von suppression.soft_window (Standard 30 Tage) kommt die Adresse auf die Sperrliste."
        } else {
            "Mailbox full or similar: counted as a soft failure. Only after suppression.soft_threshold such replies (default 3) within suppression.soft_window (default 30 days) does the address go on the suppression list."
        }.into(),
        Verdict::RejectMessage => if de {
            "Diese Nachricht wird dauerhaft abgelehnt (Größe, Inhalt). Die Adresse ist in Ordnung und wird nicht gesperrt; die Nachricht wird nicht wiederholt."
        } else {
            "This message is permanently refused (size, content). The address is fine and is not suppressed; the message is not retried."
        }.into(),
        Verdict::PolicyBlock => if de {
            "Eine Richtlinien-Sperre (Spam-Verdacht, IP auf einer Blockliste, Relaying verweigert): das Problem liegt beim Absender, nicht beim Empfänger — es wird nie gesperrt. Drei solche Antworten in Folge pausieren das Konto für eine Stunde."
        } else {
            "A policy block (spam suspicion, IP listed, relaying denied): the sender's problem, not the recipient's — never suppressed. Three in a row pause the account for an hour."
        }.into(),
        Verdict::Pause { scope: PauseScope::Auth, .. } => if de {
            "Die Zugangsdaten wurden abgelehnt: mailvalve stoppt jedes Senden, bis jemand es wieder freigibt (SIGHUP an mailvalve, oder ein Neustart nach Korrektur der Konfiguration) — erneute Versuche mit falschem Passwort führen zur Kontosperre. Neue MAIL FROM bekommen 454 4.7.0. Nichts wird gesperrt, zurückgeschickt oder als Versuch gezählt."
        } else {
            "The credentials were refused: mailvalve stops all sending until an operator resumes it (SIGHUP to mailvalve, or a restart after fixing the config) — retrying a wrong password gets accounts locked. New MAIL FROMs get 454 4.7.0. Nothing is suppressed, bounced or counted as an attempt."
        }.into(),
        Verdict::Pause { scope, until } => {
            let when = match (until.or(hint), de) {
                (Some(d), false) => format!("for {}", human(d)),
                (Some(d), true) => format!("für {}", human(d)),
                (None, false) => "for an hour".into(),
                (None, true) => "für eine Stunde".into(),
            };
            let why = match (scope, de) {
                (PauseScope::Quota, false) => "The account's sending quota is spent",
                (PauseScope::Quota, true) => "Das Sendekontingent des Kontos ist aufgebraucht",
                (_, false) => "The provider blocks this account",
                (_, true) => "Der Provider blockiert dieses Konto",
            };
            if de {
                format!("{why}: mailvalve pausiert jedes Senden {when}, bis das Zeitfenster zurückgesetzt ist. Neue MAIL FROM bekommen 451 4.7.0 mit dem Grund. Nichts geht verloren, nichts wird zurückgeschickt oder gesperrt, kein Versuch wird verbraucht.")
            } else {
                format!("{why}: mailvalve pauses all sending {when}, until the window resets. New MAIL FROMs get 451 4.7.0 with the reason. Nothing is lost, bounced or suppressed, and no attempt is used up.")
            }
        }
        Verdict::ProtocolError => if de {
            "Die Antwort passt nicht zu diesem Schritt des Dialogs: mailvalve behandelt sie wie eine vorübergehende Ablehnung und versucht es später erneut."
        } else {
            "The reply makes no sense at this point of the conversation: mailvalve treats it as a temporary failure and retries later."
        }.into(),
    }
}

/// The whole explanation as text.
pub fn explain(
    input: &str,
    phase: Option<Phase>,
    profile_name: Option<&str>,
    lang: Lang,
) -> Result<String, ExplainError> {
    if input.trim().is_empty() {
        return Err(ExplainError::NotAReply("empty input".into()));
    }
    let reply = Reply::parse_lenient(input).map_err(|e| ExplainError::NotAReply(e.to_string()))?;
    let phase = phase.unwrap_or_else(|| default_phase(reply.code));
    let classifier = match profile_name {
        Some(name) => {
            let p = profile::builtin(name)
                .ok_or_else(|| ExplainError::BadProfile(name.to_string()))?
                .map_err(|e| ExplainError::Rules(e.to_string()))?;
            crate::relay::limits::classifier(&crate::config::Config::default(), &p)
                .map_err(|e| ExplainError::Rules(e.to_string()))?
        }
        None => Classifier::builtin().map_err(|e| ExplainError::Rules(e.to_string()))?,
    };
    let c = classifier.classify(phase, &reply);
    let de = lang == Lang::De;
    let mut out = String::new();
    let label = |en: &'static str, de_: &'static str| if de { de_ } else { en };
    let _ = writeln!(out, "{:<10}{reply}", label("Reply:", "Antwort:"));
    let _ = writeln!(out, "{:<10}{}", label("Phase:", "Schritt:"), phase.name());
    let unknown = label("(no description known)", "(keine Beschreibung bekannt)");
    let _ = writeln!(
        out,
        "{:<10}{}",
        format!("{}:", reply.code),
        meaning(reply.code, lang).unwrap_or(unknown)
    );
    if let Some(e) = reply.enhanced {
        let _ = writeln!(
            out,
            "{:<10}{}",
            format!("{e}:"),
            enhanced_meaning(e, lang).unwrap_or(unknown)
        );
    }
    let _ = writeln!(
        out,
        "{:<10}{:?}  ({} {} {}: {})",
        label("Verdict:", "Urteil:"),
        c.verdict,
        c.origin,
        label("rule", "Regel"),
        c.index,
        c.description
    );
    let hint = retry_hint(&reply.text());
    let _ = writeln!(
        out,
        "\n{}\n{}",
        label("What mailvalve does:", "Was mailvalve tut:"),
        action(&c.verdict, hint, lang)
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_connections() {
        let out = explain("421 4.7.0 Too many connections", None, None, Lang::En).unwrap();
        assert!(out.contains("Throttle(Connections)"), "{out}");
        assert!(out.contains("drops its connection limit at once"), "{out}");
        assert!(out.contains("Phase:    rcpt"), "{out}");
    }

    #[test]
    fn multi_line_unknown_user_is_suppressed() {
        let out = explain("550-5.1.1 The email account that you tried to reach does not exist.\n550 5.1.1 Please try again", None, None, Lang::En).unwrap();
        assert!(out.contains("Verdict:  Suppress"), "{out}");
        assert!(out.contains("suppression list"), "{out}");
        assert!(out.contains("5.1.1:"), "{out}");
    }

    #[test]
    fn bare_354_is_the_data_phase() {
        let out = explain("354", None, None, Lang::En).unwrap();
        assert!(out.contains("Phase:    data"), "{out}");
        assert!(out.contains("Verdict:  Accept"), "{out}");
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
        assert!(out.contains("Throttle(Connections)"), "{out}");
        assert!(out.contains("profile"), "{out}");
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
        assert!(out.contains("Pause"), "{out}");
        assert!(out.contains("451 4.7.0"), "{out}");
        let out = explain(
            "451 4.7.1 Greylisted, try again in 5 minutes",
            None,
            None,
            Lang::En,
        )
        .unwrap();
        assert!(
            out.contains("at least that long") && out.contains("5m"),
            "{out}"
        );
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
}
