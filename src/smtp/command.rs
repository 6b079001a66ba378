//! Inbound commands: one framed line (see `line.rs`) parsed by smtp-proto into a
//! `Request`, and every parse failure mapped to the reply RFC 5321 asks for.
//!
//! The reverse-path of MAIL and the forward-path of RCPT are passed on exactly as the
//! mailer wrote them, or refused here with a 5xx — never rewritten. smtp-proto's address
//! parser rewrites in a few places (invalid UTF-8 becomes U+FFFD, `<postmaster>` becomes
//! the null path, the quotes of a quoted local part are dropped), so [`parse`] checks its
//! result against the path's raw bytes (see [`check_path`]). Rules:
//! - invalid UTF-8 or a control character in the path: `501 5.1.7` (MAIL) /
//!   `501 5.1.3` (RCPT); in a parameter: `501 5.5.4`;
//! - `<postmaster>` (any case, RFC 5321 4.5.1) stays `postmaster` as written;
//! - `RCPT TO:<>`: `501 5.1.3` — a forward-path is never null (RFC 5321 4.1.2);
//! - a quoted local part (`"john doe"@example.org`): `553 5.1.7` / `553 5.1.3`. Relaying
//!   it exactly would need the upstream client to send quoted strings (spaces) and the
//!   suppression list to know that `"john"@x` and `john@x` are one mailbox; RFC 5321
//!   4.1.2 asks hosts not to define such mailboxes, so it is refused before it is
//!   accepted rather than accepted and bounced later;
//! - a source route (`<@relay:user@example.org>`) is dropped and the mailbox passed on,
//!   as RFC 5321 4.1.1.3 asks a server to do;
//! - anything else smtp-proto would change is refused with `501`, never passed on.
//!
//! Whether a non-ASCII address is allowed depends on the MAIL's SMTPUTF8 parameter, which
//! is session state: the server checks that (`553 5.6.7`, RFC 6531 3.7.4.1).

use super::reply::{EnhancedCode, Reply};
pub use smtp_proto::Request;

pub type Command = Request<String>;

/// Parses one complete command line (it must end with CRLF).
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let mut it = line.iter();
    let cmd = Request::parse(&mut it)
        .map(|r| r.into_owned())
        .map_err(error_reply)?;
    match cmd {
        Request::Mail { mut from } => {
            from.address = check_path(line, from.address, Path::Reverse)?;
            Ok(Request::Mail { from })
        }
        Request::Rcpt { mut to } => {
            to.address = check_path(line, to.address, Path::Forward)?;
            Ok(Request::Rcpt { to })
        }
        other => Ok(other),
    }
}

/// Which path a MAIL or RCPT line carries; picks the enhanced code of a refusal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// MAIL FROM: bad sender address → x.1.7.
    Reverse,
    /// RCPT TO: bad destination address → x.1.3.
    Forward,
}

impl Path {
    fn refuse(self, code: u16, why: &str) -> Reply {
        let (detail, what) = match self {
            Path::Reverse => (7, "sender"),
            Path::Forward => (3, "recipient"),
        };
        Reply::new(
            code,
            EnhancedCode::new(5, 1, detail),
            format!("Bad {what} address: {why}"),
        )
    }
}

/// The address to pass on for a MAIL/RCPT `line` that smtp-proto parsed to `parsed`:
/// the path as the mailer wrote it, or the refusal.
fn check_path(line: &[u8], parsed: String, kind: Path) -> Result<String, Reply> {
    let Some(raw) = raw_path(line) else {
        // smtp-proto accepted a path this scanner cannot find: refuse rather than guess.
        return Err(kind.refuse(501, "syntax"));
    };
    let Ok(raw) = std::str::from_utf8(raw) else {
        return Err(kind.refuse(501, "not valid UTF-8"));
    };
    // Spaces around the path (`< a@example.org >`) are not part of the address.
    let raw = raw.trim_matches(' ');
    if std::str::from_utf8(line).is_err() {
        return Err(Reply::new(
            501,
            EnhancedCode::new(5, 5, 4),
            "Invalid parameter: not valid UTF-8",
        ));
    }
    if raw.contains('"') {
        return Err(kind.refuse(553, "quoted local parts are not supported"));
    }
    if raw.chars().any(char::is_control) {
        return Err(kind.refuse(501, "control characters"));
    }
    // RFC 5321 4.1.1.3: a source route is ignored; the mailbox after it is the address.
    let mailbox = match raw.strip_prefix('@') {
        Some(_) => raw.split_once(':').map_or(raw, |(_, m)| m),
        None => raw,
    };
    if mailbox.eq_ignore_ascii_case("postmaster") {
        return Ok(mailbox.to_string());
    }
    if kind == Path::Forward && mailbox.is_empty() {
        return Err(kind.refuse(501, "the null path <> is not a recipient"));
    }
    if parsed != mailbox {
        return Err(kind.refuse(501, "cannot be passed on unchanged"));
    }
    Ok(parsed)
}

/// The bytes between the `<` and the `>` that delimit the path of a MAIL or RCPT line
/// (the verb and `FROM:`/`TO:` contain neither), skipping a `>` inside a quoted string.
/// Hand-written: smtp-proto keeps no handle on the raw path it parsed.
fn raw_path(line: &[u8]) -> Option<&[u8]> {
    let start = line.iter().position(|&b| b == b'<')? + 1;
    let rest = &line[start..];
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in rest.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

fn error_reply(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => Reply::new(500, EnhancedCode::new(5, 5, 1), "Command not recognized"),
        E::SyntaxError { syntax } => {
            Reply::new(501, EnhancedCode::new(5, 5, 4), format!("Syntax: {syntax}"))
        }
        E::InvalidSenderAddress => {
            Reply::new(501, EnhancedCode::new(5, 1, 7), "Bad sender address syntax")
        }
        E::InvalidRecipientAddress => Reply::new(
            501,
            EnhancedCode::new(5, 1, 3),
            "Bad recipient address syntax",
        ),
        E::InvalidParameter { param } => Reply::new(
            501,
            EnhancedCode::new(5, 5, 4),
            format!("Invalid value for parameter {param}"),
        ),
        E::UnsupportedParameter { param } => Reply::new(
            555,
            EnhancedCode::new(5, 5, 4),
            format!("Unsupported parameter {}", sanitize(&param)),
        ),
        E::NeedsMoreData { .. } | E::ResponseTooLong | E::InvalidResponse { .. } => {
            Reply::new(500, EnhancedCode::new(5, 5, 2), "Syntax error")
        }
    }
}

/// Keeps echoed client text printable and short.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mail_with_params() {
        let c = parse(b"MAIL FROM:<a@example.org> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n").unwrap();
        match c {
            Request::Mail { from } => {
                assert_eq!(from.address, "a@example.org");
                assert_eq!(from.size, 1000);
                assert!(from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0);
                assert!(from.flags & smtp_proto::MAIL_SMTPUTF8 != 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_become_replies() {
        assert_eq!(parse(b"FOO\r\n").unwrap_err().code, 500);
        assert_eq!(parse(b"MAIL FROM:<a\r\n").unwrap_err().code / 100, 5);
        assert_eq!(parse(b"RCPT TO:\r\n").unwrap_err().code, 501);
    }

    fn mail(line: &[u8]) -> Result<String, Reply> {
        match parse(line)? {
            Request::Mail { from } => Ok(from.address),
            other => panic!("{other:?}"),
        }
    }

    fn rcpt(line: &[u8]) -> Result<String, Reply> {
        match parse(line)? {
            Request::Rcpt { to } => Ok(to.address),
            other => panic!("{other:?}"),
        }
    }

    fn refused(r: Result<String, Reply>) -> (u16, String) {
        let r = r.unwrap_err();
        (
            r.code,
            r.enhanced.map(|e| e.to_string()).unwrap_or_default(),
        )
    }

    #[test]
    fn postmaster_is_kept_as_written() {
        assert_eq!(mail(b"MAIL FROM:<postmaster>\r\n").unwrap(), "postmaster");
        assert_eq!(rcpt(b"RCPT TO:<Postmaster>\r\n").unwrap(), "Postmaster");
        assert_eq!(rcpt(b"RCPT TO:<POSTMASTER> \r\n").unwrap(), "POSTMASTER");
        assert_eq!(
            rcpt(b"RCPT TO:<postmaster@example.org>\r\n").unwrap(),
            "postmaster@example.org"
        );
    }

    #[test]
    fn null_recipient_is_refused() {
        assert_eq!(refused(rcpt(b"RCPT TO:<>\r\n")), (501, "5.1.3".into()));
        assert_eq!(mail(b"MAIL FROM:<>\r\n").unwrap(), "");
    }

    #[test]
    fn invalid_utf8_is_refused_not_replaced() {
        assert_eq!(
            refused(mail(b"MAIL FROM:<j\xfcrgen@example.org>\r\n")),
            (501, "5.1.7".into())
        );
        assert_eq!(
            refused(rcpt(b"RCPT TO:<\xc3(@example.org>\r\n")),
            (501, "5.1.3".into())
        );
        assert_eq!(
            refused(mail(b"MAIL FROM:<a@example.org> SIZE=1\xff\r\n")).0 / 100,
            5
        );
        assert_eq!(
            rcpt("RCPT TO:<müller@exämple.org>\r\n".as_bytes()).unwrap(),
            "müller@exämple.org"
        );
    }

    #[test]
    fn quoted_local_parts_are_refused() {
        for line in [
            b"RCPT TO:<\"john doe\"@example.org>\r\n".as_ref(),
            b"RCPT TO:<\"john\"@example.org>\r\n",
            b"RCPT TO:<\"a\\\"b\"@example.org>\r\n",
            b"RCPT TO:<\"a>b\"@example.org>\r\n",
        ] {
            assert_eq!(
                refused(rcpt(line)),
                (553, "5.1.3".into()),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            refused(mail(b"MAIL FROM:<\"x y\"@example.org>\r\n")),
            (553, "5.1.7".into())
        );
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(
            refused(rcpt(b"RCPT TO:<a\x7fb@example.org>\r\n")),
            (501, "5.1.3".into())
        );
        assert_eq!(
            refused(rcpt("RCPT TO:<a\u{85}b@example.org>\r\n".as_bytes())),
            (501, "5.1.3".into())
        );
    }

    #[test]
    fn source_routes_are_dropped_and_spaces_trimmed() {
        assert_eq!(
            rcpt(b"RCPT TO:<@relay.example,@b.example:user@example.org>\r\n").unwrap(),
            "user@example.org"
        );
        assert_eq!(
            rcpt(b"RCPT TO: <user@example.org>\r\n").unwrap(),
            "user@example.org"
        );
    }

    #[test]
    fn null_sender() {
        match parse(b"MAIL FROM:<>\r\n").unwrap() {
            Request::Mail { from } => assert_eq!(from.address, ""),
            other => panic!("{other:?}"),
        }
    }
}
