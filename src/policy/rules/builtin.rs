//! The built-in rule table: DESIGN "The reply policy" as data, in matching order (first
//! match wins), with the text patterns it uses. Must never suppress on a reply that is
//! not the address's fault; its tests (`builtin/tests.rs`) check it against the reply
//! tables of the seed material.

use super::compile::RuleParts;

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
/// Microsoft's "Basic authentication is not supported for Client Submission" (5.7.30).
const BASIC_AUTH_OFF: &str = r"basic auth";
/// Google's "Please log in via your web browser and then try again" (5.7.14).
const WEB_LOGIN: &str = r"log ?in (via|with|using|through) (your |a )?(web )?browser";
const CONN_TEXT: &str = r"too many (concurrent |simultaneous |parallel |open |smtp |active |new |tls )*(connections|sessions)|concurrent connections|connection limit|too many (login|authentication|auth) (attempts|failures)|zu viele (gleichzeitige |parallele )?verbindungen";
/// The recipient's own receive limit (Microsoft ReceivingRatePerm, Gmail "receiving
/// mail at a rate"): retry this recipient later, the account is fine.
const RCPT_RATE: &str = r"receivingrateperm|recipientthresholdexceeded|receiving (mail )?(at a rate|too quickly)|receive (rate )?limit|(incoming|receiving) rate|recipient has exceeded";
/// A limit on recipients per time of the sending client (Postfix
/// `smtpd_client_recipient_rate_limit`: `450 4.7.1 Error: too many recipients from
/// 192.0.2.1`).
const RCPT_RATE_LIMIT: &str = r"too many recipients from|recipient (address )?rate limit";
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
    // Password sign-in switched off by the provider, in whatever phase it is answered (a
    // 550 at MAIL or RCPT would otherwise read as a policy refusal of one message).
    // X.7.30 is "REQUIRETLS support required" (RFC 8689), so 5.7.30 pauses only with
    // Microsoft's wording; 5.7.139 is Microsoft's own (no IANA meaning) and always a
    // refused sign-in; 5.7.14 ("trust relationship", RFC 4468 BURL, which mailvalve
    // does not use) only with Google's "log in via your web browser".
    b(ANY, Some("5xx"), Some("5.7.30"), Some(BASIC_AUTH_OFF), "pause-auth", None, "5.7.30 with the words \"basic authentication\" (Microsoft): password sign-in is switched off; the account needs OAuth2"),
    b(ANY, Some("5xx"), Some("5.7.139"), None, "pause-auth", None, "5.7.139: Microsoft refused the sign-in (SMTP AUTH switched off for the tenant or mailbox, or wrong credentials)"),
    b(ANY, Some("5xx"), Some("5.7.14"), Some(WEB_LOGIN), "pause-auth", None, "5.7.14 \"log in via your web browser\" (Google): password sign-in refused; the account needs OAuth2 or an app password"),
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
    // Recipients per time (4.7.x, or Postfix's "too many recipients from <client>") is a
    // rate of the account; x.5.3 is the recipients of one transaction.
    b(ANY, Some("4xx"), Some("4.7.*"), Some(TOO_MANY_RCPT), "throttle-recipients", None, "4.7.x too many recipients: a recipient rate limit (Postfix smtpd_client_recipient_rate_limit)"),
    b(ANY, Some("4xx"), Some("none,4.7.*"), Some(RCPT_RATE_LIMIT), "throttle-recipients", None, "too many recipients from this client: a recipient rate limit"),
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

#[cfg(test)]
mod tests;
