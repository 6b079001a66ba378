//! Delivery status notifications (RFC 3464 bounce reports): the message queue mode sends
//! back to the envelope sender when recipients fail for good or expire, in the
//! `multipart/report; report-type=delivery-status` shape that newsletter tools already
//! parse to clean their lists. Also: recognising a bounce, so a bounce is never bounced.
//!
//! Pure: no I/O, no clock (the caller passes the times). This module must never produce
//! a line longer than 998 octets or a line end other than CRLF, and must never let text
//! from a provider reply start a header or MIME line of its own: reply text is folded,
//! its CR/LF/control characters become spaces and non-ASCII becomes `?`.
//!
//! The report is 7-bit ASCII except for what we copy verbatim: the original header
//! section (part three, marked `8bit` when it holds 8-bit octets) and a non-ASCII
//! envelope sender in `To:` (which needs SMTPUTF8 to be delivered anyway). A non-ASCII
//! recipient is written in RFC 6533's 7-bit `utf-8;` form (`\x{E9}`). [`needs_8bitmime`]
//! tells the sender whether to ask for `BODY=8BITMIME`.
//!
//! mail-builder writes the message: its header section (addresses, `Date`, `Message-ID`),
//! the `multipart/report` structure and each part's MIME header. Hand-written, and why:
//! the body of each part. The `message/delivery-status` fields (RFC 3464 §2.2, §2.3) are
//! header-like lines mail-builder has no type for, and they carry provider text that must
//! be folded and, past 998 octets, cut ([`header`]); the notification is wrapped text we
//! write in 7-bit; the original header section is copied octet for octet. So each part
//! is given to mail-builder as it is, with its transfer encoding named. The boundary is
//! ours too ([`pick_boundary`]): one that occurs nowhere in the parts, and the same for
//! the same input. mail-builder writes no preamble before the first part (RFC 2046
//! readers ignore it).

use super::headers;
use super::record::StoredReply;
use super::QueueId;
use crate::smtp::EnhancedCode;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;

/// RFC 5322's hard limit on a line, without the CRLF.
pub const MAX_LINE: usize = 998;
/// Where we fold what we write ourselves (RFC 5322's "SHOULD").
const FOLD_AT: usize = 78;

/// One recipient that failed for good.
#[derive(Debug, Clone, Copy)]
pub struct FailedRcpt<'a> {
    pub address: &'a str,
    /// The last reply from the provider for this recipient.
    pub reply: &'a StoredReply,
    pub attempts: u32,
    /// Unix ms of the last delivery attempt.
    pub last_attempt_ms: u64,
    /// True when the recipient gave up because the message stayed in the queue longer than
    /// `max_age` (the last reply was temporary); false for a permanent refusal.
    pub expired: bool,
}

/// Everything a report is made from.
#[derive(Debug, Clone, Copy)]
pub struct DsnInput<'a> {
    /// Our host name, as in `Reporting-MTA` and the `MAILER-DAEMON@` address.
    pub reporting_mta: &'a str,
    pub queue_id: QueueId,
    /// The envelope sender of the original message: where the report goes.
    pub envelope_from: &'a str,
    /// Unix ms when the original message was accepted.
    pub arrival_ms: u64,
    /// Unix ms now (the report's `Date`).
    pub now_ms: u64,
    /// The whole original message, CRLF line ends.
    pub original: &'a [u8],
    pub failed: &'a [FailedRcpt<'a>],
}

/// Builds the complete report message (header section and body, CRLF line ends, every
/// line at most 998 octets). Lines may begin with `.`: the sender dot-stuffs.
pub fn build(input: &DsnInput) -> Vec<u8> {
    let mta = sanitize_host(input.reporting_mta);
    let id = input.queue_id.to_string();

    let human = human_part(input, &mta, &id);
    let status = status_part(input, &mta, &id);
    let headers = headers_part(input.original);
    let eight_bit_headers = headers.iter().any(|&b| b >= 0x80);
    let boundary = pick_boundary(input, &id, &[&human, &status, &headers, input.original]);

    let to = sanitize_line(input.envelope_from.trim());
    let to = to.trim_start_matches('<').trim_end_matches('>');
    let to = if to.is_empty() {
        Address::new_group(Some("undisclosed-recipients"), Vec::new())
    } else {
        Address::new_address(None::<&str>, to)
    };
    // Each part's body is written by us (wrapped, folded, 7-bit or the original header
    // octets as they are); an explicit transfer encoding makes mail-builder copy it as it
    // is instead of choosing quoted-printable or base64.
    let part = |ctype: ContentType<'static>,
                description: &'static str,
                cte: &'static str,
                body: Vec<u8>| {
        MimePart::new(ctype, BodyPart::Binary(body.into()))
            .header("Content-Description", Raw::new(description))
            .transfer_encoding(cte)
    };
    let report = MimePart::new(
        // `report-type=delivery-status` unquoted, as Postfix and every MTA write it: some
        // bounce processors match that text as it is. mail-builder quotes every
        // attribute it writes, so this one goes with the type.
        ContentType::new("multipart/report; report-type=delivery-status")
            .attribute("boundary", boundary),
        vec![
            part(
                ContentType::new("text/plain").attribute("charset", "us-ascii"),
                "Notification",
                "7bit",
                human,
            ),
            part(
                ContentType::new("message/delivery-status"),
                "Delivery report",
                "7bit",
                status,
            ),
            part(
                ContentType::new("text/rfc822-headers"),
                "Undelivered message headers",
                if eight_bit_headers { "8bit" } else { "7bit" },
                headers,
            ),
        ],
    );
    let message = MessageBuilder::new()
        .from(Address::new_address(
            Some("Mail Delivery System"),
            format!("MAILER-DAEMON@{mta}"),
        ))
        .to(to)
        .subject("Undelivered Mail Returned to Sender")
        .date(Date::new(unix_secs(input.now_ms)))
        .message_id(message_id(input, &mta, &id))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report);
    let mut out = Vec::new();
    // Writing into a Vec cannot fail; if it ever did, what was written is still a report.
    let _ = message.write_to(&mut out);
    out
}

/// The header section of `message` (see [`headers::header_block`]).
pub use super::headers::header_block;

/// True when a message is itself a bounce or an automatic reply, which must never get a
/// report of its own: a null envelope sender (`""` or `"<>"`), a `Content-Type` of
/// `multipart/report` with `report-type=delivery-status`, or `Auto-Submitted:
/// auto-replied` (RFC 3834: a response such as a vacation notice or a report). An
/// `auto-generated` message — newsletters may say so — still gets its bounce report:
/// RFC 3464 exempts only the null sender, and the newsletter tool needs the bounce.
pub fn is_bounce(envelope_from: &str, message: &[u8]) -> bool {
    let from = envelope_from.trim();
    if from.is_empty() || from == "<>" {
        return true;
    }
    let fields = headers::Fields::of(message);
    fields.is_delivery_report() || fields.is_auto_replied()
}

/// True when the report holds 8-bit octets (from the original headers or a non-ASCII
/// envelope sender), so it must be sent with `BODY=8BITMIME`.
pub fn needs_8bitmime(report: &[u8]) -> bool {
    report.iter().any(|&b| b >= 0x80)
}

// ---------------------------------------------------------------------------------------
// The three parts.

fn human_part(input: &DsnInput, mta: &str, id: &str) -> Vec<u8> {
    let mut t = Text::default();
    t.para(&format!(
        "This is the mail relay at {mta}. Your message (queue id {id}, received {}) could \
         not be delivered to the recipients listed below. The relay has given up on them \
         and will not try them again.",
        rfc5322_date(input.arrival_ms)
    ));
    for f in input.failed {
        t.line(&format!("<{}>", xtext_addr(f.address)));
        let reply = reply_line(f.reply);
        let tries = match f.attempts {
            1 => "1 attempt".to_string(),
            n => format!("{n} attempts"),
        };
        let last = rfc5322_date(f.last_attempt_ms);
        let why = if f.expired {
            format!(
                "The provider kept answering that it could not take the message now, and \
                 the message has waited in the queue for {} ({tries}, the last on {last}). \
                 Its last answer was: {reply}",
                age(input.now_ms.saturating_sub(input.arrival_ms))
            )
        } else {
            format!(
                "The provider refused the message for this recipient for good ({tries}, \
                 the last on {last}). Its answer was: {reply}"
            )
        };
        t.indented(&why);
        t.blank();
    }
    t.para(
        "The delivery report and the headers of your message are attached. Please do not \
         answer this message; nobody reads replies to it.",
    );
    t.0
}

fn status_part(input: &DsnInput, mta: &str, id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    header(&mut out, "Reporting-MTA", &format!("dns; {mta}"));
    header(&mut out, "X-Mailvalve-Queue-ID", id);
    header(&mut out, "Arrival-Date", &rfc5322_date(input.arrival_ms));
    for f in input.failed {
        out.extend_from_slice(b"\r\n");
        header(&mut out, "Final-Recipient", &final_recipient(f.address));
        header(&mut out, "Action", "failed");
        header(&mut out, "Status", &status_code(f.reply, f.expired));
        header(
            &mut out,
            "Diagnostic-Code",
            &format!("smtp; {}", reply_line(f.reply)),
        );
        header(
            &mut out,
            "Last-Attempt-Date",
            &rfc5322_date(f.last_attempt_ms),
        );
    }
    out
}

/// The original header section, line by line: kept as it is when it is well-formed;
/// a bare LF gets its CR, a bare CR becomes a space, a line over 998 octets is folded.
fn headers_part(original: &[u8]) -> Vec<u8> {
    let block = header_block(original);
    let mut out = Vec::with_capacity(block.len() + 2);
    for raw in block.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            continue; // the split's tail after the last LF
        }
        let line: Vec<u8> = line
            .iter()
            .map(|&b| if b == b'\r' { b' ' } else { b })
            .collect();
        let mut rest: &[u8] = &line;
        let mut first = true;
        while !rest.is_empty() {
            let room = if first { MAX_LINE } else { MAX_LINE - 1 };
            let n = rest.len().min(room);
            if !first {
                out.push(b' ');
            }
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            first = false;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Fields.

/// `550 5.1.1 text`, ASCII only, on one logical line (the caller folds it).
fn reply_line(r: &StoredReply) -> String {
    let mut s = format!("{:03}", r.code.min(999));
    if let Some(e) = valid_enhanced(r) {
        s.push(' ');
        s.push_str(&e.to_string());
    }
    let text = sanitize_line(&r.text);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !text.is_empty() {
        s.push(' ');
        s.push_str(&text);
    }
    s
}

/// The stored enhanced code, when it parses and its class is a failure class.
fn valid_enhanced(r: &StoredReply) -> Option<EnhancedCode> {
    let s = r.enhanced.as_deref()?.trim();
    match EnhancedCode::parse_prefix(s) {
        Some((e, n)) if n == s.len() && matches!(e.class, 4 | 5) => Some(e),
        _ => None,
    }
}

/// The reply's enhanced code, else 5.0.0 for a permanent reply, 4.0.0 for an expired
/// recipient whose last reply was temporary.
fn status_code(r: &StoredReply, expired: bool) -> String {
    if let Some(e) = valid_enhanced(r) {
        return e.to_string();
    }
    match r.code / 100 {
        5 => "5.0.0".into(),
        4 => "4.0.0".into(),
        _ if expired => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

fn final_recipient(addr: &str) -> String {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    if a.is_ascii() {
        format!("rfc822; {}", sanitize_line(a))
    } else {
        format!("utf-8; {}", xtext_addr(a))
    }
}

/// RFC 6533 `utf-8-addr-xtext` for a non-ASCII address (`\x{E9}` for each character that
/// is not a QCHAR); ASCII addresses come back as they are, minus control characters.
fn xtext_addr(addr: &str) -> String {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    if a.is_ascii() {
        return sanitize_line(a);
    }
    let mut s = String::with_capacity(a.len() + 16);
    for c in a.chars() {
        let qchar =
            matches!(c, '\x21'..='\x2a' | '\x2c'..='\x3c' | '\x3e'..='\x5b' | '\x5d'..='\x7e');
        if qchar {
            s.push(c);
        } else {
            s.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    s
}

/// `dsn.{queue id}.{now}.{hash of the recipients}@{mta}` (the brackets come with the header): unique per message, time and
/// set of failed recipients, and deterministic (the module has no clock of its own).
fn message_id(input: &DsnInput, mta: &str, id: &str) -> String {
    let mut h = Fnv::default();
    for f in input.failed {
        h.write(f.address.as_bytes());
        h.write(b"\0");
    }
    format!("dsn.{id}.{}.{:08x}@{mta}", input.now_ms, h.0 as u32)
}

/// A boundary that occurs in none of `parts` (nor, so, in the original message).
fn pick_boundary(input: &DsnInput, id: &str, parts: &[&[u8]]) -> String {
    let mut h = Fnv::default();
    h.write(&input.now_ms.to_be_bytes());
    h.write(input.original);
    for n in 0u32.. {
        let b = format!("=_mailvalve-dsn-{id}-{:016x}-{n}", h.0);
        if !parts.iter().any(|p| contains(p, b.as_bytes())) {
            return b;
        }
        h.write(&n.to_be_bytes());
    }
    // Unreachable in practice (2^32 collisions); still a valid boundary.
    format!("=_mailvalve-dsn-{id}")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[derive(Clone, Copy)]
struct Fnv(u64);
impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}
impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Text helpers.

/// One line of text from outside: CR, LF, TAB and other control characters become spaces,
/// non-ASCII becomes `?`.
fn sanitize_line(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        })
        .collect()
}

/// A host name for `Reporting-MTA` and the From address: printable ASCII without spaces.
fn sanitize_host(s: &str) -> String {
    let h: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '!'..='~' if !matches!(c, '<' | '>' | '@' | '"' | '(' | ')' | ',' | ';') => c,
            _ => '-',
        })
        .collect();
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

/// Writes `Name: value` (a field of the `message/delivery-status` part) folded at
/// whitespace near 78 columns. A word longer than that stands on a line of its own; one
/// that would pass [`MAX_LINE`] is cut (with a folding space), which only happens to
/// provider text.
fn header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    let mut col = name.len() + 1;
    let mut first = true;
    for word in value.split([' ', '\t']).filter(|w| !w.is_empty()) {
        let mut word = word.as_bytes();
        if !first && col + 1 + word.len() > FOLD_AT {
            out.extend_from_slice(b"\r\n");
            col = 0;
        }
        while col + 1 + word.len() > MAX_LINE {
            let n = MAX_LINE - col - 1;
            out.push(b' ');
            out.extend_from_slice(&word[..n]);
            out.extend_from_slice(b"\r\n");
            word = &word[n..];
            col = 0;
        }
        out.push(b' ');
        out.extend_from_slice(word);
        col += 1 + word.len();
        first = false;
    }
    out.extend_from_slice(b"\r\n");
}

/// Plain text wrapped at 76 columns, CRLF line ends.
#[derive(Default)]
struct Text(Vec<u8>);

impl Text {
    fn wrap(&mut self, s: &str, indent: &str) {
        let width = 76usize;
        let mut line = String::from(indent);
        for word in s.split_whitespace() {
            let mut word = word;
            if line.len() > indent.len() && line.len() + 1 + word.len() > width {
                self.push(&line);
                line = String::from(indent);
            }
            while indent.len() + word.len() > width {
                // A word longer than a line (a URL): cut it. Safe: sanitized text is ASCII.
                let n = width - indent.len();
                if line.len() > indent.len() {
                    self.push(&line);
                    line = String::from(indent);
                }
                let (head, tail) = word.split_at(n.min(word.len()));
                line.push_str(head);
                self.push(&line);
                line = String::from(indent);
                word = tail;
            }
            if word.is_empty() {
                continue;
            }
            if line.len() > indent.len() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if line.len() > indent.len() {
            self.push(&line);
        }
    }
    fn push(&mut self, line: &str) {
        self.0.extend_from_slice(line.as_bytes());
        self.0.extend_from_slice(b"\r\n");
    }
    fn para(&mut self, s: &str) {
        self.wrap(&sanitize_line(s), "");
        self.blank();
    }
    fn line(&mut self, s: &str) {
        self.wrap(&sanitize_line(s), "");
    }
    fn indented(&mut self, s: &str) {
        self.wrap(&sanitize_line(s), "    ");
    }
    fn blank(&mut self) {
        self.0.extend_from_slice(b"\r\n");
    }
}

/// `3 days 4 hours`, `25 minutes`: the two largest units.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    let units = [
        (86_400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let mut parts = Vec::new();
    let mut rest = s;
    for (len, name) in units {
        let n = rest / len;
        if n > 0 && parts.len() < 2 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
            rest %= len;
        } else if !parts.is_empty() {
            break;
        }
    }
    if parts.is_empty() {
        "less than a second".into()
    } else {
        parts.join(" ")
    }
}

// ---------------------------------------------------------------------------------------
// Dates.

/// RFC 5322 date-time in UTC: `Tue, 14 Apr 2026 08:05:09 +0000` (mail-builder's, as in
/// the report's `Date:`).
pub fn rfc5322_date(unix_ms: u64) -> String {
    Date::new(unix_secs(unix_ms)).to_rfc822()
}

fn unix_secs(unix_ms: u64) -> i64 {
    i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    const NEWSLETTER: &str = "Return-Path: <news@example.org>\r\n\
        From: Example News <news@example.org>\r\n\
        To: <reader@example.net>\r\n\
        Subject: Our spring newsletter\r\n\
        Message-ID: <campaign-42.reader@example.org>\r\n\
        X-Campaign: spring-2026\r\n\
        X-Listmonk-Campaign: 9f86b50d-5711-41c8-ab03-bc91c43d711b\r\n\
        List-Unsubscribe: <https://example.org/u/abc>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        \r\n\
        Hello reader,\r\n\
        .a line that starts with a dot\r\n\
        \r\n\
        bye\r\n";

    fn reply(code: u16, enhanced: Option<&str>, text: &str) -> StoredReply {
        StoredReply {
            code,
            enhanced: enhanced.map(str::to_string),
            text: text.to_string(),
        }
    }

    const NOW: u64 = 1_776_153_909_000; // Tue, 14 Apr 2026 08:05:09 UTC
    const ARRIVAL: u64 = NOW - 3 * 86_400_000 - 2 * 3_600_000;

    fn input<'a>(failed: &'a [FailedRcpt<'a>], original: &'a [u8]) -> DsnInput<'a> {
        DsnInput {
            reporting_mta: "relay.example.org",
            queue_id: QueueId::from_u64(0x1234_5678_9abc),
            envelope_from: "news@example.org",
            arrival_ms: ARRIVAL,
            now_ms: NOW,
            original,
            failed,
        }
    }

    /// Every line ends in CRLF, none is longer than 998 octets, no bare CR or LF.
    fn assert_lines(msg: &[u8]) {
        assert!(msg.ends_with(b"\r\n"));
        for (i, line) in msg.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue; // after the final LF
            }
            assert!(
                line.ends_with(b"\r"),
                "line {i} lacks CR: {:?}",
                String::from_utf8_lossy(line)
            );
            let body = &line[..line.len() - 1];
            assert!(!body.contains(&b'\r'), "bare CR in line {i}");
            assert!(body.len() <= MAX_LINE, "line {i} has {} octets", body.len());
        }
    }

    /// One failed recipient: one attempt, just now, not expired.
    fn one<'a>(address: &'a str, reply: &'a StoredReply) -> FailedRcpt<'a> {
        FailedRcpt {
            address,
            reply,
            attempts: 1,
            last_attempt_ms: NOW,
            expired: false,
        }
    }

    fn part_text<'x>(m: &'x mail_parser::Message<'x>, ctype: &str) -> String {
        let p = m
            .parts
            .iter()
            .find(|p| {
                p.content_type()
                    .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
                    .as_deref()
                    == Some(ctype)
            })
            .unwrap_or_else(|| panic!("no {ctype} part"));
        String::from_utf8(p.contents().to_vec()).unwrap()
    }

    #[test]
    fn single_recipient_report_parses() {
        let r = reply(550, Some("5.1.1"), "<reader@example.net>: user unknown");
        let failed = [FailedRcpt {
            last_attempt_ms: NOW - 1000,
            ..one("reader@example.net", &r)
        }];
        let dsn = build(&input(&failed, NEWSLETTER.as_bytes()));
        assert_lines(&dsn);
        assert!(!needs_8bitmime(&dsn));

        let m = MessageParser::default().parse(&dsn).unwrap();
        let ct = m.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
        assert_eq!(
            m.from().unwrap().first().unwrap().address(),
            Some("MAILER-DAEMON@relay.example.org")
        );
        assert_eq!(
            m.to().unwrap().first().unwrap().address(),
            Some("news@example.org")
        );
        assert_eq!(m.date().unwrap().to_timestamp() as u64, NOW / 1000);
        let mid = m.message_id().unwrap();
        assert!(
            mid.contains(&QueueId::from_u64(0x1234_5678_9abc).to_string()),
            "{mid}"
        );
        assert!(mid.ends_with("@relay.example.org"), "{mid}");
        assert_eq!(
            m.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );

        let human = part_text(&m, "text/plain");
        assert!(human.contains("<reader@example.net>"), "{human}");
        assert!(human.contains("550 5.1.1"), "{human}");
        assert!(human.contains("for good"), "{human}");

        let status = part_text(&m, "message/delivery-status");
        let qid_line = format!(
            "X-Mailvalve-Queue-ID: {}\r\n",
            QueueId::from_u64(0x1234_5678_9abc)
        );
        for want in [
            "Reporting-MTA: dns; relay.example.org\r\n",
            qid_line.as_str(),
            "Arrival-Date: Sat, 11 Apr 2026 06:05:09 +0000\r\n",
            "Final-Recipient: rfc822; reader@example.net\r\n",
            "Action: failed\r\n",
            "Status: 5.1.1\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 <reader@example.net>: user unknown\r\n",
            "Last-Attempt-Date: Tue, 14 Apr 2026 08:05:08 +0000\r\n",
        ] {
            assert!(status.contains(want), "missing {want:?} in\n{status}");
        }

        let headers = part_text(&m, "text/rfc822-headers");
        assert!(
            headers.contains("Message-ID: <campaign-42.reader@example.org>\r\n"),
            "{headers}"
        );
        assert!(headers.contains("X-Campaign: spring-2026\r\n"), "{headers}");
        assert!(
            !headers.contains("Hello reader"),
            "the body must not be included"
        );
    }

    #[test]
    fn date_format() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(NOW), "Tue, 14 Apr 2026 08:05:09 +0000");
        // 2000-02-29 23:59:59 (leap day of a century leap year)
        assert_eq!(
            rfc5322_date(951_868_799_000),
            "Tue, 29 Feb 2000 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date(4_102_444_800_000),
            "Fri, 1 Jan 2100 00:00:00 +0000"
        );
    }

    #[test]
    fn multi_recipient_report_has_one_block_each() {
        let hard = reply(550, Some("5.1.1"), "no such user");
        let plain = reply(554, None, "rejected");
        let soft = reply(451, Some("4.7.1"), "try again later");
        let soft_plain = reply(450, None, "mailbox busy");
        let failed = [
            FailedRcpt {
                address: "a@example.net",
                reply: &hard,
                attempts: 1,
                last_attempt_ms: NOW - 5000,
                expired: false,
            },
            FailedRcpt {
                address: "b@example.net",
                reply: &plain,
                attempts: 2,
                last_attempt_ms: NOW - 4000,
                expired: false,
            },
            FailedRcpt {
                address: "c@example.net",
                reply: &soft,
                attempts: 17,
                last_attempt_ms: NOW - 3000,
                expired: true,
            },
            FailedRcpt {
                address: "d@example.net",
                reply: &soft_plain,
                attempts: 9,
                last_attempt_ms: NOW - 2000,
                expired: true,
            },
        ];
        let dsn = build(&input(&failed, NEWSLETTER.as_bytes()));
        assert_lines(&dsn);
        let m = MessageParser::default().parse(&dsn).unwrap();
        let status = part_text(&m, "message/delivery-status");
        let blocks: Vec<&str> = status.split("\r\n\r\n").collect();
        assert_eq!(blocks.len(), 5, "{status}");
        let want = [
            ("a@example.net", "5.1.1"),
            ("b@example.net", "5.0.0"),
            ("c@example.net", "4.7.1"),
            ("d@example.net", "4.0.0"),
        ];
        for (block, (addr, code)) in blocks[1..].iter().zip(want) {
            assert!(
                block.contains(&format!("Final-Recipient: rfc822; {addr}\r\n")),
                "{block}"
            );
            assert!(block.contains(&format!("Status: {code}\r\n")), "{block}");
            assert!(block.contains("Action: failed"), "{block}");
        }
        assert!(
            blocks[2].contains("Diagnostic-Code: smtp; 554 rejected"),
            "{status}"
        );
        let human = part_text(&m, "text/plain");
        assert!(human.contains("17 attempts"), "{human}");
        assert!(human.contains("3 days 2 hours"), "{human}");
        for (addr, _) in want {
            assert!(human.contains(addr), "{human}");
        }
        // Same input, same id; another recipient set, another id.
        let again = build(&input(&failed, NEWSLETTER.as_bytes()));
        assert_eq!(dsn, again);
        let other = build(&input(&failed[..1], NEWSLETTER.as_bytes()));
        let m2 = MessageParser::default().parse(&other).unwrap();
        assert_ne!(m.message_id(), m2.message_id());
    }

    #[test]
    fn long_hostile_reply_is_folded_and_cleaned() {
        let mut text = String::from("550-first line\r\nInjected: header\r\n\r\n--boundary ");
        for i in 0..300 {
            text.push_str(&format!("word{i} "));
        }
        text.push_str(&"x".repeat(3000)); // one "word" longer than any line
        text.push_str(" Grüße \u{1F600}\ttab\u{0}nul");
        let r = reply(550, Some("5.7.1"), &text);
        let failed = [FailedRcpt {
            attempts: 3,
            ..one("reader@example.net", &r)
        }];
        let dsn = build(&input(&failed, NEWSLETTER.as_bytes()));
        assert_lines(&dsn);
        assert!(
            dsn.is_ascii(),
            "non-ASCII reply text must not reach the report"
        );
        let s = String::from_utf8(dsn.clone()).unwrap();
        assert!(
            !s.contains("\r\nInjected:"),
            "reply text started a line of its own"
        );
        assert!(s.contains("Gr??e"), "non-ASCII becomes '?'");
        // The only control characters are line ends and the TAB that starts a folded
        // header line (mail-builder folds with CRLF TAB).
        assert!(
            s.split("\r\n")
                .all(|l| !l.trim_start_matches('\t').bytes().any(|b| b < 0x20)),
            "control characters from the reply reached the report"
        );
        let m = MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(m.parts.len(), 4, "three parts under the root");
        let status = part_text(&m, "message/delivery-status");
        // Unfold the Diagnostic-Code and check the whole text is there.
        let diag = status
            .split("\r\n")
            .skip_while(|l| !l.starts_with("Diagnostic-Code:"))
            .take_while(|l| !l.starts_with("Last-Attempt-Date:"))
            .collect::<Vec<_>>()
            .join("");
        assert!(
            diag.starts_with(
                "Diagnostic-Code: smtp; 550 5.7.1 550-first line Injected: header --boundary word0"
            ),
            "{diag}"
        );
        assert!(diag.contains("word299"), "{diag}");
        assert!(diag.replace(' ', "").contains(&"x".repeat(3000)), "{diag}");
        for l in s.split("\r\n") {
            assert!(l.len() <= FOLD_AT.max(80) || !l.contains("word"), "{l}");
        }
    }

    #[test]
    fn boundary_never_occurs_in_the_original() {
        let r = reply(550, Some("5.1.1"), "user unknown");
        let failed = [one("reader@example.net", &r)];
        let first = build(&input(&failed, NEWSLETTER.as_bytes()));
        let m = MessageParser::default().parse(&first).unwrap();
        let b = m
            .content_type()
            .unwrap()
            .attribute("boundary")
            .unwrap()
            .to_string();
        // An original that contains the boundary we would have chosen.
        let hostile = NEWSLETTER.replace("X-Campaign: spring-2026", &format!("X-Campaign: {b}"));
        let dsn = build(&input(&failed, hostile.as_bytes()));
        let m = MessageParser::default().parse(&dsn).unwrap();
        let b2 = m.content_type().unwrap().attribute("boundary").unwrap();
        assert!(!hostile.contains(b2));
        assert!(part_text(&m, "text/rfc822-headers").contains(&b));
    }

    #[test]
    fn non_ascii_recipient_and_8bit_headers() {
        let r = reply(550, Some("5.1.1"), "unknown");
        let failed = [one("jörg@example.de", &r)];
        let original = "Subject: Grüße\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n";
        let dsn = build(&input(&failed, original.as_bytes()));
        assert_lines(&dsn);
        assert!(needs_8bitmime(&dsn));
        let s = String::from_utf8(dsn).unwrap();
        assert!(
            s.contains("Final-Recipient: utf-8; j\\x{F6}rg@example.de\r\n"),
            "{s}"
        );
        assert!(s.contains("Content-Transfer-Encoding: 8bit"), "{s}");
        assert!(
            s.contains("Subject: Grüße\r\n"),
            "original headers are kept as they are"
        );
    }

    #[test]
    fn headers_part_edges() {
        // A bare-LF original still yields CRLF lines in the report.
        assert_eq!(headers_part(b"A: 1\nB: 2\n\nbody"), b"A: 1\r\nB: 2\r\n");
        let long = format!("X-Long: {}\r\n\r\n", "y".repeat(2500));
        let part = headers_part(long.as_bytes());
        assert_lines(&part);
        assert_eq!(part.split(|&b| b == b'\n').count(), 4);
    }

    #[test]
    fn bounces_are_recognised() {
        let news = NEWSLETTER.as_bytes();
        assert!(
            !is_bounce("news@example.org", news),
            "an ordinary newsletter"
        );
        assert!(is_bounce("", news));
        assert!(is_bounce("<>", news));
        assert!(is_bounce(" <> ", news));

        let r = reply(550, Some("5.1.1"), "user unknown");
        let failed = [one("reader@example.net", &r)];
        let dsn = build(&input(&failed, news));
        assert!(is_bounce("someone@example.org", &dsn), "our own report");

        let auto = "From: a@b\r\nAuto-Submitted: auto-replied (vacation)\r\n\r\nx\r\n";
        assert!(is_bounce("a@b", auto.as_bytes()));
        let generated = "From: a@b\r\nAuto-Submitted: auto-generated\r\n\r\nx\r\n";
        assert!(
            !is_bounce("a@b", generated.as_bytes()),
            "a newsletter marked auto-generated still gets its bounce report"
        );
        let no = "From: a@b\r\nAuto-Submitted: No (a person wrote this)\r\n\r\nx\r\n";
        assert!(!is_bounce("a@b", no.as_bytes()));
        let folded = "From: a@b\r\nContent-Type: multipart/report;\r\n\treport-type=\"Delivery-Status\";\r\n boundary=x\r\n\r\n";
        assert!(is_bounce("a@b", folded.as_bytes()));
        let mdn = "Content-Type: multipart/report; report-type=disposition-notification\r\n\r\n";
        assert!(!is_bounce("a@b", mdn.as_bytes()));
        let mixed =
            "Content-Type: multipart/mixed; boundary=x\r\n\r\nAuto-Submitted: auto-replied\r\n";
        assert!(
            !is_bounce("a@b", mixed.as_bytes()),
            "a body line is no header"
        );
    }

    #[test]
    fn age_and_enhanced_validation() {
        assert_eq!(age(0), "less than a second");
        assert_eq!(age(61_000), "1 minute 1 second");
        assert_eq!(age(86_400_000 + 60_000), "1 day");
        assert_eq!(age(2 * 86_400_000 + 3_600_000 * 5), "2 days 5 hours");
        assert_eq!(
            status_code(&reply(550, Some("5.1.10"), ""), false),
            "5.1.10"
        );
        assert_eq!(status_code(&reply(550, Some("junk"), ""), false), "5.0.0");
        assert_eq!(status_code(&reply(550, Some("2.0.0"), ""), false), "5.0.0");
        assert_eq!(status_code(&reply(421, None, ""), true), "4.0.0");
    }
}
