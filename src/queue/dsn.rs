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
//! be folded and, past 998 octets, cut (`text::header`); the notification is wrapped text we
//! write in 7-bit; the original header section is copied octet for octet. So each part
//! is given to mail-builder as it is, with its transfer encoding named. The boundary is
//! ours too (`fields::pick_boundary`): one that occurs nowhere in the parts, and the same for
//! the same input. mail-builder writes no preamble before the first part (RFC 2046
//! readers ignore it).

mod fields;
#[cfg(test)]
mod tests;
mod text;

use super::headers;
use super::record::StoredReply;
use super::QueueId;
use fields::{final_recipient, message_id, pick_boundary, reply_line, status_code, xtext_addr};
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;
use text::{age, header, sanitize_host, sanitize_line, Text};

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
// Dates.

/// RFC 5322 date-time in UTC: `Tue, 14 Apr 2026 08:05:09 +0000` (mail-builder's, as in
/// the report's `Date:`).
pub fn rfc5322_date(unix_ms: u64) -> String {
    Date::new(unix_secs(unix_ms)).to_rfc822()
}

fn unix_secs(unix_ms: u64) -> i64 {
    i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX)
}
