//! `mailvalve explain "<reply>"`: what a provider reply means, which rule decides it,
//! and exactly what mailvalve does about it — in English, or German with `--lang de`.
//! The rendering is a pure function ([`explain`]) so it is tested without the binary.
//!
//! It must never panic on what a person types: anything that is not a reply is an
//! [`ExplainError`] naming the problem.

use crate::config::profile;
use crate::policy::classify::{retry_hint, Classifier};
use crate::policy::rules::RuleSource;
use crate::policy::verdict::{PauseScope, Phase, ThrottleKind, Verdict};
use crate::smtp::codes::{enhanced_meaning, meaning, text_meaning, Lang};
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

/// A phase in words: which step of the conversation the reply answered.
pub fn phase_words(phase: Phase, lang: Lang) -> &'static str {
    let de = lang == Lang::De;
    match (phase, de) {
        (Phase::Greeting, false) => "greeting (the provider's first words after connecting)",
        (Phase::Greeting, true) => "Begrüßung (die ersten Worte des Providers nach dem Verbinden)",
        (Phase::Ehlo, false) => "EHLO (mailvalve introduces itself)",
        (Phase::Ehlo, true) => "EHLO (mailvalve stellt sich vor)",
        (Phase::StartTls, false) => "STARTTLS (switching to encryption)",
        (Phase::StartTls, true) => "STARTTLS (Wechsel zur Verschlüsselung)",
        (Phase::Auth, false) => "login (AUTH)",
        (Phase::Auth, true) => "Anmeldung (AUTH)",
        (Phase::Mail, false) => "sender (MAIL FROM)",
        (Phase::Mail, true) => "Absender (MAIL FROM)",
        (Phase::Rcpt, false) => "recipient (RCPT TO)",
        (Phase::Rcpt, true) => "Empfänger (RCPT TO)",
        (Phase::Data, false) => "start of the message (DATA)",
        (Phase::Data, true) => "Beginn der Nachricht (DATA)",
        (Phase::DataEnd, false) => "end of the message, after its content was sent",
        (Phase::DataEnd, true) => "Ende der Nachricht, nach dem Inhalt",
        (Phase::Rset, false) => "reset of the transaction (RSET)",
        (Phase::Rset, true) => "Zurücksetzen der Transaktion (RSET)",
    }
}

/// A duration in words, at most two units: "1 day", "2 hours 30 minutes", "1 Tag".
/// Hand-written: humantime prints "1day 2h", which is for config files, not people.
pub fn duration_words(d: Duration, lang: Lang) -> String {
    let de = lang == Lang::De;
    let secs = d.as_secs().max(1);
    let units: [(u64, &str, &str, &str, &str); 4] = [
        (86_400, "day", "days", "Tag", "Tage"),
        (3_600, "hour", "hours", "Stunde", "Stunden"),
        (60, "minute", "minutes", "Minute", "Minuten"),
        (1, "second", "seconds", "Sekunde", "Sekunden"),
    ];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, en1, en_n, de1, de_n) in units {
        if parts.len() == 2 {
            break;
        }
        let n = rest / size;
        if n == 0 {
            if !parts.is_empty() {
                break;
            }
            continue;
        }
        rest %= size;
        let word = match (n == 1, de) {
            (true, false) => en1,
            (false, false) => en_n,
            (true, true) => de1,
            (false, true) => de_n,
        };
        parts.push(format!("{n} {word}"));
    }
    parts.join(" ")
}

/// "for 1 day" with the dative in German ("für 1 Tag" but "für 2 Tage" is right too).
fn for_duration(d: Duration, lang: Lang) -> String {
    match lang {
        Lang::En => format!("for {}", duration_words(d, lang)),
        Lang::De => format!("für {}", duration_words(d, lang)),
    }
}

/// The verdict in plain words (its `[[rules]]` name follows in brackets, for people who
/// write rules).
pub fn verdict_words(v: &Verdict, lang: Lang) -> String {
    let de = lang == Lang::De;
    let words = match (v, de) {
        (Verdict::Accept, false) => "accepted".to_owned(),
        (Verdict::Accept, true) => "angenommen".to_owned(),
        (Verdict::Throttle(ThrottleKind::Connections), false) => {
            "too many connections: use fewer".to_owned()
        }
        (Verdict::Throttle(ThrottleKind::Connections), true) => {
            "zu viele Verbindungen: weniger verwenden".to_owned()
        }
        (Verdict::Throttle(ThrottleKind::Rate), false) => "too fast: send slower".to_owned(),
        (Verdict::Throttle(ThrottleKind::Rate), true) => "zu schnell: langsamer senden".to_owned(),
        (Verdict::Throttle(ThrottleKind::Recipients), false) => {
            "too many recipients per time: send fewer recipients per minute".to_owned()
        }
        (Verdict::Throttle(ThrottleKind::Recipients), true) => {
            "zu viele Empfänger pro Zeit: weniger Empfänger pro Minute senden".to_owned()
        }
        (Verdict::Defer { hint: None }, false) => "temporary: try again later".to_owned(),
        (Verdict::Defer { hint: None }, true) => {
            "vorübergehend: später erneut versuchen".to_owned()
        }
        (Verdict::Defer { hint: Some(h) }, false) => {
            format!("temporary: try again in {}", duration_words(*h, lang))
        }
        (Verdict::Defer { hint: Some(h) }, true) => format!(
            "vorübergehend: in {} erneut versuchen",
            duration_words(*h, lang)
        ),
        (Verdict::Suppress, false) => {
            "the address is bad for good: put it on the suppression list".to_owned()
        }
        (Verdict::Suppress, true) => {
            "die Adresse ist dauerhaft ungültig: auf die Unterdrückungsliste setzen".to_owned()
        }
        (Verdict::SoftBounce, false) => "mailbox full or similar (soft bounce)".to_owned(),
        (Verdict::SoftBounce, true) => "Postfach voll o. Ä. (weicher Fehler)".to_owned(),
        (Verdict::RejectMessage, false) => "this message is refused".to_owned(),
        (Verdict::RejectMessage, true) => "diese Nachricht wird abgelehnt".to_owned(),
        (Verdict::PolicyBlock, false) => {
            "policy refusal: a problem of the sender, not of the recipient".to_owned()
        }
        (Verdict::PolicyBlock, true) => {
            "Richtlinien-Ablehnung: ein Problem des Absenders, nicht des Empfängers".to_owned()
        }
        (Verdict::Pause { scope, until }, _) => {
            let why = match (scope, de) {
                (PauseScope::Auth, false) => "login refused",
                (PauseScope::Auth, true) => "Anmeldung abgelehnt",
                (PauseScope::Quota, false) => "sending quota used up",
                (PauseScope::Quota, true) => "Versandkontingent aufgebraucht",
                (PauseScope::Policy, false) => "repeated policy refusals",
                (PauseScope::Policy, true) => "wiederholte Richtlinien-Ablehnungen",
            };
            match (until, de) {
                (Some(d), false) => format!("pause the account {}: {why}", for_duration(*d, lang)),
                (Some(d), true) => format!("Konto {} pausieren: {why}", for_duration(*d, lang)),
                (None, false) => format!("pause the account: {why}"),
                (None, true) => format!("Konto pausieren: {why}"),
            }
        }
        (Verdict::ProtocolError, false) => "the reply does not fit this step".to_owned(),
        (Verdict::ProtocolError, true) => "die Antwort passt nicht zu diesem Schritt".to_owned(),
    };
    format!("{words} [{}]", v.name())
}

/// What mailvalve does for a verdict, in the chosen language: the same account the queue
/// (`queue::schedule::decide`) and the controller act on. `phase` and `class` (the
/// reply's first digit) matter where the queue treats 4xx and 5xx differently.
pub fn action(
    v: &Verdict,
    hint: Option<Duration>,
    reply: &Reply,
    phase: Phase,
    lang: Lang,
) -> String {
    let de = lang == Lang::De;
    let permanent = reply.class() >= 5;
    match v {
        Verdict::Accept => if de {
            "Nichts Besonderes: der Provider hat angenommen. Gelingt eine Reihe von Nachrichten, darf mailvalve eine Verbindung mehr öffnen (bis zur Obergrenze des Profils)."
        } else {
            "Nothing special: the provider accepted. After a run of successful messages mailvalve may open one more connection (up to the profile's maximum)."
        }.into(),
        Verdict::Throttle(ThrottleKind::Connections) => if de {
            "Zu viele Verbindungen: mailvalve senkt seine Verbindungsgrenze sofort auf die Zahl der Verbindungen, die gerade funktionierten (mindestens 1), merkt sich diese Obergrenze und probiert erst nach probe_interval (Standard 10 Minuten) wieder eine mehr. Die Nachricht wird erneut versucht; das zählt nicht als Zustellversuch. Im Passthrough-Modus bekommt das Mailprogramm ein 4xx und versucht es selbst erneut."
        } else {
            "Too many connections: mailvalve drops its connection limit at once to the connections that were working (at least 1), remembers that as a ceiling, and tries one more only after probe_interval (default 10 minutes). The message is retried; this does not count as a delivery attempt. In passthrough mode the mailer gets a 4xx and retries itself."
        }.into(),
        Verdict::Throttle(ThrottleKind::Rate) => if de {
            "Zu schnell: mailvalve sendet nur noch einzelne Proben in wachsenden Abständen, bis der Provider wieder annimmt. Dann misst es, wie viel der Provider in seinem letzten Zeitfenster angenommen hat, sendet gleichmäßig knapp darunter und probiert erst nach probe_interval (Standard 10 Minuten) vorsichtig mehr. Die Nachricht wird erneut versucht; das zählt nicht als Zustellversuch."
        } else {
            "Too fast: mailvalve sends only single probes at growing gaps until the provider accepts again. It then measures what the provider accepted over its last window, paces evenly just below that, and tries more only cautiously after probe_interval (default 10 minutes). The message is retried; this does not count as a delivery attempt."
        }.into(),
        Verdict::Throttle(ThrottleKind::Recipients) => if de {
            "Zu viele Empfänger pro Zeit: mailvalve lernt die Empfängerrate des Providers wie eine Nachrichtenrate (einzelne Proben, dann gleichmäßig knapp unter der angenommenen Menge) und zählt dabei Empfänger, nicht Nachrichten. Die Nachricht wird erneut versucht; das zählt nicht als Zustellversuch."
        } else {
            "Too many recipients per time: mailvalve learns the provider's recipient rate as it learns a message rate (single probes, then evenly just below what was accepted), counting recipients, not messages. The message is retried; this does not count as a delivery attempt."
        }.into(),
        Verdict::Defer { .. } if crate::queue::schedule::next_transaction_at_once(phase, reply) => if de {
            "Der Provider nimmt in dieser Transaktion keine weiteren Empfänger an. Die übrigen Empfänger gehen sofort in der nächsten Transaktion hinaus, wie RFC 5321 es vorsieht: ohne Wartezeit, ohne Zustellversuch zu verbrauchen. Im Passthrough-Modus bekommt das Mailprogramm diese Antwort und sendet die übrigen Empfänger selbst in einer weiteren Transaktion."
        } else {
            "The provider takes no more recipients in this transaction. The remaining recipients go out at once in the next transaction, as RFC 5321 intends: no waiting, no attempt used up. In passthrough mode the mailer gets this reply and sends the remaining recipients itself in another transaction."
        }.into(),
        Verdict::Defer { hint: h } => {
            let wait = match (h.or(hint), de) {
                (Some(d), false) => format!(" The provider asks for {}; mailvalve waits at least that long.", duration_words(d, lang)),
                (Some(d), true) => format!(" Der Provider nennt {}; mailvalve wartet mindestens so lange.", duration_words(d, lang)),
                (None, _) => String::new(),
            };
            if de {
                format!("Vorübergehend abgelehnt: der Empfänger wird später erneut versucht, mit exponentiell wachsender Wartezeit und zufälliger Streuung, damit nicht alle Wiederholungen gleichzeitig kommen.{wait} Gelingt die Zustellung bis queue.max_age (Standard 4 Tage) nicht, geht ein Unzustellbarkeitsbericht an den Absender. Im Passthrough-Modus bekommt das Mailprogramm diese Antwort.")
            } else {
                format!("Temporarily refused: the recipient is retried later, with exponentially growing waits and random spread so that retries do not all come at once.{wait} If it is not delivered within queue.max_age (default 4 days), a bounce report goes to the sender. In passthrough mode the mailer gets this reply.")
            }
        }
        Verdict::Suppress => if de {
            "Die Adresse ist dauerhaft ungültig: sie kommt auf die Unterdrückungsliste, und ein Unzustellbarkeitsbericht geht an den Absender. Künftige RCPT TO an sie beantwortet mailvalve selbst mit 550 5.1.1 und dem ursprünglichen Grund; der Provider sieht sie nie wieder. Kein erneuter Versuch."
        } else {
            "The address is bad for good: it goes on the suppression list, and a bounce report goes to the sender. Later RCPT TOs to it are answered by mailvalve itself with 550 5.1.1 and the original reason; the provider never sees it again. Nothing is retried."
        }.into(),
        Verdict::SoftBounce if permanent => if de {
            "Postfach voll o. Ä., dauerhaft gemeldet: dieser Empfänger scheitert, ein Unzustellbarkeitsbericht geht an den Absender. Auf die Unterdrückungsliste kommt die Adresse erst nach suppression.soft_threshold solchen Antworten (Standard 3) innerhalb von suppression.soft_window (Standard 30 Tage)."
        } else {
            "Mailbox full or similar, reported as permanent: this recipient fails and a bounce report goes to the sender. The address goes on the suppression list only after suppression.soft_threshold such replies (default 3) within suppression.soft_window (default 30 days)."
        }.into(),
        Verdict::SoftBounce => if de {
            "Postfach voll o. Ä., vorübergehend gemeldet: der Empfänger wird später erneut versucht. Auf die Unterdrückungsliste kommt die Adresse erst nach suppression.soft_threshold solchen Antworten (Standard 3) innerhalb von suppression.soft_window (Standard 30 Tage)."
        } else {
            "Mailbox full or similar, reported as temporary: the recipient is retried later. The address goes on the suppression list only after suppression.soft_threshold such replies (default 3) within suppression.soft_window (default 30 days)."
        }.into(),
        Verdict::RejectMessage if permanent => if de {
            "Diese Nachricht wird dauerhaft abgelehnt (Größe, Inhalt): sie scheitert, ein Unzustellbarkeitsbericht geht an den Absender. Die Adresse ist in Ordnung und kommt nicht auf die Unterdrückungsliste."
        } else {
            "This message is refused for good (size, content): it fails and a bounce report goes to the sender. The address is fine and does not go on the suppression list."
        }.into(),
        Verdict::RejectMessage => if de {
            "Diese Nachricht wird vorübergehend abgelehnt: sie wird später erneut versucht. Die Adresse kommt nicht auf die Unterdrückungsliste."
        } else {
            "This message is refused for now: it is retried later. The address does not go on the suppression list."
        }.into(),
        Verdict::PolicyBlock => if de {
            "Eine Richtlinien-Ablehnung (Spam-Verdacht, IP auf einer Sperrliste, Relaying verweigert): das Problem liegt beim Absender, nicht beim Empfänger — die Adresse kommt nie auf die Unterdrückungsliste. Die Nachricht wird erneut versucht; nach drei abgelehnten Versuchen scheitert sie mit einem Unzustellbarkeitsbericht. Drei solche Antworten in Folge pausieren das Konto für 1 Stunde."
        } else {
            "A policy refusal (spam suspicion, IP on a blocklist, relaying denied): the sender's problem, not the recipient's — the address never goes on the suppression list. The message is retried; after three refused attempts it fails with a bounce report. Three such replies in a row pause the account for 1 hour."
        }.into(),
        Verdict::Pause { scope: PauseScope::Auth, .. } => if de {
            "Die Zugangsdaten wurden abgelehnt: mailvalve stoppt jedes Senden, bis jemand es wieder freigibt (`mailvalve queue resume`, SIGHUP an mailvalve, oder ein Neustart nach Korrektur der Konfiguration) — erneute Versuche mit falschem Passwort führen zur Kontosperre. Neue MAIL FROM bekommen 454 4.7.0. Nichts geht verloren, nichts wird zurückgeschickt oder unterdrückt, kein Versuch wird verbraucht."
        } else {
            "The credentials were refused: mailvalve stops all sending until someone resumes it (`mailvalve queue resume`, SIGHUP to mailvalve, or a restart after fixing the config) — retrying a wrong password gets accounts locked. New MAIL FROMs get 454 4.7.0. Nothing is lost, bounced or suppressed, and no attempt is used up."
        }.into(),
        Verdict::Pause { scope, until } => {
            let when = until.or(hint).unwrap_or(Duration::from_secs(3600));
            let when = for_duration(when, lang);
            let why = match (scope, de) {
                (PauseScope::Quota, false) => "The account's sending quota is used up",
                (PauseScope::Quota, true) => "Das Versandkontingent des Kontos ist aufgebraucht",
                (_, false) => "The provider keeps refusing this account by policy",
                (_, true) => "Der Provider lehnt dieses Konto wiederholt aus Richtliniengründen ab",
            };
            if de {
                format!("{why}: mailvalve pausiert jedes Senden {when}, bis das Zeitfenster zurückgesetzt ist (oder bis `mailvalve queue resume`). Neue MAIL FROM bekommen 451 4.7.0 mit dem Grund. Nichts geht verloren, nichts wird zurückgeschickt oder unterdrückt, kein Versuch wird verbraucht.")
            } else {
                format!("{why}: mailvalve pauses all sending {when}, until the window resets (or until `mailvalve queue resume`). New MAIL FROMs get 451 4.7.0 with the reason. Nothing is lost, bounced or suppressed, and no attempt is used up.")
            }
        }
        Verdict::ProtocolError => if de {
            "Die Antwort passt nicht zu diesem Schritt des Dialogs: mailvalve behandelt sie wie eine vorübergehende Ablehnung und versucht es später erneut."
        } else {
            "The reply makes no sense at this point of the conversation: mailvalve treats it as a temporary refusal and retries later."
        }.into(),
    }
}

/// Which rule decided, in words: "built-in rule 15: ..." / "eingebaute Regel 15: ...".
fn rule_words(
    origin: RuleSource,
    index: usize,
    description: &str,
    profile: Option<&str>,
    lang: Lang,
) -> String {
    let n = index + 1;
    let de = lang == Lang::De;
    let text = if de {
        super::rules_de::german(description).unwrap_or(description)
    } else {
        description
    };
    let profile = profile.unwrap_or("generic");
    match (origin, de) {
        (RuleSource::Builtin, false) => format!("built-in rule {n}: {text}"),
        (RuleSource::Builtin, true) => format!("eingebaute Regel {n}: {text}"),
        (RuleSource::Profile, false) => format!("rule {n} of profile {profile}: {text}"),
        (RuleSource::Profile, true) => format!("Regel {n} des Profils {profile}: {text}"),
        (RuleSource::User, false) => format!("rule {n} of your [[rules]]: {text}"),
        (RuleSource::User, true) => format!("Regel {n} Ihrer [[rules]]: {text}"),
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
    let assumed = phase.is_none();
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
    const W: usize = 10;
    let _ = writeln!(out, "{:<W$}{reply}", label("Reply:", "Antwort:"));
    let step = if assumed {
        format!(
            "{} {}",
            phase_words(phase, lang),
            label(
                "(assumed; give --phase if it answered another command)",
                "(angenommen; mit --phase einen anderen Schritt angeben)"
            )
        )
    } else {
        phase_words(phase, lang).to_owned()
    };
    let _ = writeln!(out, "{:<W$}{step}", label("Step:", "Schritt:"));
    let unknown = label("(no description known)", "(keine Beschreibung bekannt)");
    let _ = writeln!(
        out,
        "{:<W$}{}",
        format!("{}:", reply.code),
        meaning(reply.code, lang).unwrap_or(unknown)
    );
    if let Some(e) = reply.enhanced {
        let _ = writeln!(
            out,
            "{:<W$}{}",
            format!("{e}:"),
            enhanced_meaning(e, lang).unwrap_or(unknown)
        );
    }
    let text = reply.text();
    if let Some(note) = text_meaning(&text, lang) {
        let _ = writeln!(out, "{:<W$}{note}", label("Note:", "Hinweis:"));
    }
    let verdict = match c.verdict {
        Verdict::Defer { .. }
            if crate::queue::schedule::next_transaction_at_once(phase, &reply) =>
        {
            format!(
                "{} [{}]",
                label(
                    "no more recipients in this transaction: the rest at once in the next",
                    "keine weiteren Empfänger in dieser Transaktion: die übrigen sofort in der nächsten"
                ),
                c.verdict.name()
            )
        }
        _ => verdict_words(&c.verdict, lang),
    };
    let _ = writeln!(out, "{:<W$}{verdict}", label("Verdict:", "Urteil:"));
    let _ = writeln!(
        out,
        "{:<W$}{}",
        label("Rule:", "Regel:"),
        rule_words(c.origin, c.index, c.description, profile_name, lang)
    );
    let hint = retry_hint(&text);
    let _ = writeln!(
        out,
        "\n{}\n{}",
        label("What mailvalve does:", "Was mailvalve tut:"),
        action(&c.verdict, hint, &reply, phase, lang)
    );
    Ok(out)
}

#[cfg(test)]
mod tests;
