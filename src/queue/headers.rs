//! The header section of a queued message, read for the few fields queue mode acts on:
//! `Content-Type` and `Auto-Submitted` (is it a bounce or an automatic reply? see
//! `dsn::is_bounce`), `X-Listmonk-Campaign` (the campaign a bounce is reported for,
//! see `webhook::campaign_uuid`) and `Subject` (stored when a message is accepted, for
//! `queue list`). The one place where both the bounce report and the
//! webhook read a message's headers.
//!
//! The fields are parsed by mail-parser (unfolding, comments, quoted parameters).
//! [`header_block`] is hand-written, and why: mail-parser's end of the header section is
//! not always the first empty line on malformed input (for `From: a\r\n\r\n\r\n=-A` it
//! takes the whole message), and the bounce report copies this block: it must never
//! carry a line of the body.
//!
//! Pure, no I/O. Must never read a field from the body (only [`header_block`] is
//! parsed), and never fail: a section that does not parse has no fields.

use mail_parser::{HeaderName, HeaderValue, Message, MessageParser};

/// The header section of `message`: everything before the first empty line, including the
/// line end of the last header line. A message without an empty line is all header; one
/// that starts with an empty line has none. Tolerates bare-LF line ends.
pub fn header_block(message: &[u8]) -> &[u8] {
    let mut pos = 0;
    while pos < message.len() {
        let rest = &message[pos..];
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return &message[..pos];
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => pos += nl + 1,
            None => return message,
        }
    }
    message
}

const LISTMONK_CAMPAIGN: &str = "X-Listmonk-Campaign";

/// The parsed header fields of one message (of its [`header_block`] only).
pub struct Fields<'a>(Option<Message<'a>>);

impl<'a> Fields<'a> {
    /// Parses the header section of `message` (a whole message, or a header section
    /// alone).
    pub fn of(message: &'a [u8]) -> Self {
        let parser = MessageParser::new()
            .header_content_type(HeaderName::ContentType)
            // RFC 3834's `auto-submitted` is a keyword with optional `;` parameters and
            // comments: the shape of a MIME type without a subtype.
            .header_content_type(HeaderName::AutoSubmitted)
            .header_raw(HeaderName::Other(LISTMONK_CAMPAIGN.into()))
            // Decoded (RFC 2047 encoded words), for `queue list`.
            .header_text(HeaderName::Subject);
        Self(parser.parse_headers(header_block(message)))
    }

    fn values(&self, name: HeaderName<'static>) -> impl Iterator<Item = &HeaderValue<'a>> + '_ {
        self.0
            .iter()
            .flat_map(move |m| m.header_values(name.clone()))
    }

    /// A `Content-Type` of `multipart/report` with `report-type=delivery-status` (RFC
    /// 3464): a bounce report.
    pub fn is_delivery_report(&self) -> bool {
        self.values(HeaderName::ContentType)
            .filter_map(HeaderValue::as_content_type)
            .any(|ct| {
                ct.ctype().eq_ignore_ascii_case("multipart")
                    && ct
                        .subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case("report"))
                    && ct.attributes().unwrap_or_default().iter().any(|a| {
                        a.name.eq_ignore_ascii_case("report-type")
                            && a.value.eq_ignore_ascii_case("delivery-status")
                    })
            })
    }

    /// `Auto-Submitted: auto-replied` (RFC 3834: a response such as a vacation notice or
    /// a report), with or without parameters and comments.
    pub fn is_auto_replied(&self) -> bool {
        self.values(HeaderName::AutoSubmitted)
            .filter_map(HeaderValue::as_content_type)
            .any(|v| v.ctype().to_ascii_lowercase().starts_with("auto-replied"))
    }

    /// The `Subject`, decoded (RFC 2047 encoded words), trimmed, at most 200 characters
    /// and on one line: what `mailvalve queue list` shows beside the recipient.
    pub fn subject(&self) -> Option<String> {
        let s = self.0.as_ref()?.subject()?;
        let one_line: String = s
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        (!one_line.is_empty()).then_some(one_line)
    }

    /// The first `X-Listmonk-Campaign` field, trimmed, as it stands.
    pub fn listmonk_campaign(&self) -> Option<&str> {
        self.values(HeaderName::Other(LISTMONK_CAMPAIGN.into()))
            .next()
            .and_then(HeaderValue::as_text)
            .map(str::trim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_is_decoded_and_on_one_line() {
        let f = Fields::of(b"From: a@b\r\nSubject: =?UTF-8?Q?Vereins-Newsletter_M=C3=A4rz?=\r\n\tTeil 2\r\n\r\nSubject: body\r\n");
        assert_eq!(
            f.subject().as_deref(),
            Some("Vereins-Newsletter März Teil 2")
        );
        assert_eq!(
            Fields::of(b"From: a@b\r\n\r\nSubject: in the body\r\n").subject(),
            None
        );
    }

    #[test]
    fn header_block_edges() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_block(b"\r\nbody"), b"");
        assert_eq!(header_block(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(header_block(b"A: 1"), b"A: 1");
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody"), b"A: 1\nB: 2\n");
        assert_eq!(header_block(b""), b"");
        // Where mail-parser's own end of the headers would take the body too.
        assert_eq!(header_block(b"From: a\r\n\r\n\r\n=-A"), b"From: a\r\n");
    }

    #[test]
    fn fields_are_read_from_the_header_section_only() {
        let f = Fields::of(
            b"Content-Type: multipart/report (a comment);\r\n\treport-type=\"Delivery-Status\"; boundary=x\r\n\r\n",
        );
        assert!(f.is_delivery_report());
        assert!(!f.is_auto_replied());
        let f = Fields::of(
            b"Content-Type: multipart/report; report-type=disposition-notification\r\n\r\n",
        );
        assert!(!f.is_delivery_report());
        let f = Fields::of(b"auto-submitted: (c) Auto-Replied; owner-email=\"a@b\"\r\n\r\n");
        assert!(f.is_auto_replied());
        let f = Fields::of(
            b"From: a@b\r\n\r\nAuto-Submitted: auto-replied\r\nX-Listmonk-Campaign: x\r\n",
        );
        assert!(!f.is_auto_replied(), "a body line is no header");
        assert_eq!(f.listmonk_campaign(), None);
        let f = Fields::of(b"x-listmonk-campaign:  Abc \r\nX-Listmonk-Campaign: second\r\n");
        assert_eq!(f.listmonk_campaign(), Some("Abc"));
        for nothing in [&b""[..], b"\r\nbody", b"no colon here", b"\xff\xfe: \x00"] {
            let f = Fields::of(nothing);
            assert!(!f.is_delivery_report() && !f.is_auto_replied());
            assert_eq!(f.listmonk_campaign(), None);
        }
    }
}
