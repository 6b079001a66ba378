//! Inbound commands: one framed line (see `line.rs`) parsed by smtp-proto into a
//! `Request`, and every parse failure mapped to the reply RFC 5321 asks for.

use super::reply::{EnhancedCode, Reply};
pub use smtp_proto::Request;

pub type Command = Request<String>;

/// Parses one complete command line (it must end with CRLF).
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let mut it = line.iter();
    Request::parse(&mut it)
        .map(|r| r.into_owned())
        .map_err(error_reply)
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

    #[test]
    fn null_sender() {
        match parse(b"MAIL FROM:<>\r\n").unwrap() {
            Request::Mail { from } => assert_eq!(from.address, ""),
            other => panic!("{other:?}"),
        }
    }
}
