//! German descriptions of the built-in reply rules and the provider profiles' rules, for
//! `mailvalve explain --lang de`. The rules carry their English description (in
//! `policy::rules` and `config/providers/*.toml`); this table maps each one to German.
//! A test in `explain.rs` walks every built-in and profile rule and fails when one has
//! no German here, so a new rule cannot ship half-translated.
//!
//! Terms, used the same way everywhere: "Unterdrückungsliste" / "unterdrücken" for the
//! suppression list (an address mailvalve never sends to again), "Richtlinien-Ablehnung"
//! for a provider's policy refusal (spam, blocklist, relay), "Sperrliste" only for a
//! spam blocklist. It must never hold anything but static text.

/// The German description for a rule's English `description`, if the table has one.
pub fn german(en: &str) -> Option<&'static str> {
    Some(match en {
        // built-in rules (policy::rules::BUILTIN), in their order
        "2xx: the provider accepted the command" => "2xx: der Provider hat den Befehl angenommen",
        "354 after DATA: send the body" => "354 nach DATA: jetzt den Inhalt senden",
        "334 during AUTH: next credential step" => "334 während AUTH: nächster Schritt der Anmeldung",
        "3xx where no intermediate reply belongs (e.g. 354 at RCPT)" => {
            "3xx, wo keine Zwischenantwort hingehört (z. B. 354 auf RCPT)"
        }
        "5.4.5: Google daily sending quota; pause until the 24 h window resets" => {
            "5.4.5: tägliches Versandkontingent bei Google; Pause, bis das 24-Stunden-Fenster zurückgesetzt ist"
        }
        "5.2.251–255: Microsoft sender throttled for about a day" => {
            "5.2.251–255: Microsoft drosselt den Absender für etwa einen Tag"
        }
        "5.1.90: Microsoft daily recipient limit of the account" => {
            "5.1.90: tägliches Empfängerlimit des Kontos bei Microsoft"
        }
        "daily sending quota of the account (SES, Microsoft SubmissionQuotaExceeded, Google)" => {
            "tägliches Versandkontingent des Kontos (SES, Microsoft SubmissionQuotaExceeded, Google)"
        }
        "sending quota of the account (e.g. T-Online \"Send quota exceeded\"), window unknown: re-probe hourly" => {
            "Versandkontingent des Kontos (z. B. T-Online „Send quota exceeded“), Zeitfenster unbekannt: stündlich neu probieren"
        }
        "5xx to AUTH: credentials refused; retrying would lock the account" => {
            "5xx auf AUTH: Zugangsdaten abgelehnt; weitere Versuche würden das Konto sperren"
        }
        "530/534/535/538: authentication required, refused or not possible as configured" => {
            "530/534/535/538: Anmeldung nötig, abgelehnt oder so wie eingestellt nicht möglich"
        }
        "5.7.8–5.7.13: credentials invalid, mechanism, password change or account disabled" => {
            "5.7.8–5.7.13: Zugangsdaten ungültig, Anmeldeverfahren, Passwortwechsel nötig oder Konto deaktiviert"
        }
        "5.7.30 with the words \"basic authentication\" (Microsoft): password sign-in is switched off; the account needs OAuth2" => {
            "5.7.30 mit den Worten „basic authentication“ (Microsoft): die Anmeldung mit Passwort ist abgeschaltet; das Konto braucht OAuth2"
        }
        "5.7.139: Microsoft refused the sign-in (SMTP AUTH switched off for the tenant or mailbox, or wrong credentials)" => {
            "5.7.139: Microsoft lehnt die Anmeldung ab (SMTP AUTH für Mandant oder Postfach abgeschaltet, oder falsche Zugangsdaten)"
        }
        "5.7.14 \"log in via your web browser\" (Google): password sign-in refused; the account needs OAuth2 or an app password" => {
            "5.7.14 „log in via your web browser“ (Google): Anmeldung mit Passwort abgelehnt; das Konto braucht OAuth2 oder ein App-Passwort"
        }
        "the provider says we must authenticate" => "der Provider verlangt eine Anmeldung",
        "421: service closing the channel; with providers a connection limit" => {
            "421: der Dienst schließt die Verbindung; bei Providern ein Verbindungslimit"
        }
        "432 (4.3.2): Microsoft concurrent connection limit" => {
            "432 (4.3.2): Grenze gleichzeitiger Verbindungen bei Microsoft"
        }
        "too many connections / sessions / logins" => {
            "zu viele Verbindungen, Sitzungen oder Anmeldungen"
        }
        "temporary authentication failure: retry later, no pause" => {
            "vorübergehender Anmeldefehler: später erneut versuchen, keine Pause"
        }
        "4/5.2.121–122: Microsoft recipient's hourly receive limit (ReceivingRatePerm)" => {
            "4/5.2.121–122: stündliches Empfangslimit des Empfängers bei Microsoft (ReceivingRatePerm)"
        }
        "permanent-looking reply about the recipient's receive rate: retry later" => {
            "dauerhaft klingende Antwort über die Empfangsrate des Empfängers: später erneut versuchen"
        }
        "the recipient receives mail too fast: retry later" => {
            "der Empfänger bekommt zu schnell Mail: später erneut versuchen"
        }
        "4.7.x too many recipients: a recipient rate limit (Postfix smtpd_client_recipient_rate_limit)" => {
            "4.7.x zu viele Empfänger: eine Grenze für Empfänger pro Zeit (Postfix smtpd_client_recipient_rate_limit)"
        }
        "too many recipients from this client: a recipient rate limit" => {
            "zu viele Empfänger von diesem Absender-Rechner: eine Grenze für Empfänger pro Zeit"
        }
        "x.5.3 too many recipients: send the rest in another transaction" => {
            "x.5.3 zu viele Empfänger: die übrigen sofort in einer weiteren Transaktion senden"
        }
        "too many recipients: send the rest in another transaction" => {
            "zu viele Empfänger: die übrigen sofort in einer weiteren Transaktion senden"
        }
        "greylisting: retry after the given delay" => {
            "Greylisting: nach der genannten Wartezeit erneut versuchen"
        }
        "x.2.2: mailbox full" => "x.2.2: Postfach voll",
        "422: recipient mailbox over its storage limit" => {
            "422: Postfach des Empfängers über seinem Speicherlimit"
        }
        "mailbox full / over quota" => "Postfach voll bzw. Speicherkontingent überschritten",
        "5.1.7/5.1.8: our sender address is refused" => {
            "5.1.7/5.1.8: unsere Absenderadresse wird abgelehnt"
        }
        "5.1.x at MAIL FROM: about our sender, not a recipient" => {
            "5.1.x auf MAIL FROM: betrifft unseren Absender, keinen Empfänger"
        }
        "the sender address or account is refused" => {
            "Absenderadresse oder Konto werden abgelehnt"
        }
        "relaying denied: our account may not send there" => {
            "Relaying verweigert: unser Konto darf dorthin nicht senden"
        }
        "5.7.x: security or policy block (spam, blocklist, relay)" => {
            "5.7.x: Richtlinien-Ablehnung aus Sicherheitsgründen (Spam, Sperrliste, Relaying)"
        }
        "541/557/571/572: refused by anti-spam or relay policy" => {
            "541/557/571/572: abgelehnt durch Anti-Spam- oder Relaying-Richtlinien"
        }
        "5xx before any transaction: the server refuses to talk to us" => {
            "5xx vor jeder Transaktion: der Server verweigert das Gespräch"
        }
        "spam, blocklist or policy wording" => "Wortlaut über Spam, Sperrlisten oder Richtlinien",
        "5.1.x: bad recipient mailbox, domain or syntax" => {
            "5.1.x: ungültiges Empfängerpostfach, ungültige Domain oder Schreibweise"
        }
        "5.2.1: mailbox disabled" => "5.2.1: Postfach deaktiviert",
        "510–513 (non-standard forms of 5.1.0–5.1.3): bad address" => {
            "510–513 (nicht standardisierte Formen von 5.1.0–5.1.3): ungültige Adresse"
        }
        "no enhanced code, text says the user or mailbox does not exist" => {
            "kein erweiterter Code, laut Text existiert Benutzer oder Postfach nicht"
        }
        "5.2.3/5.3.4/5.6.x: message size or content" => "5.2.3/5.3.4/5.6.x: Größe oder Inhalt der Nachricht",
        "523/552: message exceeds a size or storage allocation" => {
            "523/552: Nachricht überschreitet eine Größen- oder Speichergrenze"
        }
        "message too large" => "Nachricht zu groß",
        "450/451/452 with 4.7.x: provider policy limit, slow down" => {
            "450/451/452 mit 4.7.x: Limit des Providers, langsamer senden"
        }
        "rate limit wording (rate, too much mail, try again later, send limit)" => {
            "Wortlaut eines Versandlimits (rate, too much mail, try again later, send limit)"
        }
        "other 4xx: temporary, retry with backoff" => {
            "sonstige 4xx: vorübergehend, später mit wachsender Wartezeit erneut versuchen"
        }
        "5xx to RSET makes no sense" => "5xx auf RSET ergibt keinen Sinn",
        "other 5xx: this message fails; unknown reasons never suppress" => {
            "sonstige 5xx: diese Nachricht scheitert; unbekannte Gründe unterdrücken nie eine Adresse"
        }
        "not a 2xx–5xx reply" => "keine Antwort im Bereich 2xx–5xx",
        // provider profiles (config/providers/*.toml)
        "Amazon SES: maximum sending rate exceeded" => {
            "Amazon SES: höchste Senderate überschritten"
        }
        "Amazon SES: daily message quota exceeded" => {
            "Amazon SES: tägliches Nachrichtenkontingent aufgebraucht"
        }
        "Google: daily user sending quota exceeded" => {
            "Google: tägliches Versandkontingent des Kontos aufgebraucht"
        }
        "IONOS: mail send limit exceeded; pause for an hour" => {
            "IONOS: Versandlimit überschritten; eine Stunde Pause"
        }
        "Microsoft: too many concurrent connections of this account" => {
            "Microsoft: zu viele gleichzeitige Verbindungen dieses Kontos"
        }
        "Microsoft: submission quota spent (SubmissionQuotaExceeded)" => {
            "Microsoft: Einlieferungskontingent aufgebraucht (SubmissionQuotaExceeded)"
        }
        "Microsoft: sender throttled for exceeding its limits (5.2.251–255)" => {
            "Microsoft: Absender wegen überschrittener Limits gedrosselt (5.2.251–255)"
        }
        "5.7.30: basic authentication (password) is not supported; the account needs OAuth2: run `mailvalve oauth login --profile office365`" => {
            "5.7.30: die einfache Anmeldung (Passwort) wird nicht unterstützt; das Konto braucht OAuth2: `mailvalve oauth login --profile office365` ausführen"
        }
        "5.7.30: basic authentication (password) is not supported; the account needs OAuth2: run `mailvalve oauth login --profile outlook-com`" => {
            "5.7.30: die einfache Anmeldung (Passwort) wird nicht unterstützt; das Konto braucht OAuth2: `mailvalve oauth login --profile outlook-com` ausführen"
        }
        "5.7.139: SMTP AUTH is disabled for this mailbox or tenant; an administrator must enable Authenticated SMTP for the mailbox, then OAuth2: `mailvalve oauth login --profile office365`" => {
            "5.7.139: SMTP AUTH ist für dieses Postfach oder den Mandanten abgeschaltet; ein Administrator muss „Authenticated SMTP“ für das Postfach einschalten, danach OAuth2: `mailvalve oauth login --profile office365`"
        }
        "5.7.139: Outlook.com refuses the sign-in (password sign-in is off for this account); the account needs OAuth2: `mailvalve oauth login --profile outlook-com`" => {
            "5.7.139: Outlook.com lehnt die Anmeldung ab (Anmeldung mit Passwort ist für dieses Konto abgeschaltet); das Konto braucht OAuth2: `mailvalve oauth login --profile outlook-com`"
        }
        "5.7.9 / 5.7.14: Google refuses the password sign-in; the account needs OAuth2 ([upstream.oauth2]) or an app password" => {
            "5.7.9 / 5.7.14: Google lehnt die Anmeldung mit Passwort ab; das Konto braucht OAuth2 ([upstream.oauth2]) oder ein App-Passwort"
        }
        "STRATO: transmit rate limit exceeded" => "STRATO: Senderate überschritten",
        "T-Online: send quota exceeded" => "T-Online: Versandkontingent aufgebraucht",
        _ => return None,
    })
}
