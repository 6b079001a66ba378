//! Every reply the server generates itself, in one place so the codes stay consistent.
//!
//! Replies from the provider never come from here: they are relayed verbatim. Nothing in
//! this file may be a 2xx to MAIL, RCPT or DATA — only the relay may say that.

use crate::smtp::{EnhancedCode, Reply};

const fn ec(class: u8, subject: u16, detail: u16) -> EnhancedCode {
    EnhancedCode::new(class, subject, detail)
}

pub fn greeting(hostname: &str) -> Reply {
    Reply::plain(220, format!("{hostname} ESMTP mailvalve"))
}

pub fn ok() -> Reply {
    Reply::new(250, ec(2, 0, 0), "OK")
}

pub fn helo(hostname: &str) -> Reply {
    Reply::plain(250, hostname.to_string())
}

pub fn bye() -> Reply {
    Reply::new(221, ec(2, 0, 0), "Bye")
}

pub fn help() -> Reply {
    Reply::new(
        214,
        ec(2, 0, 0),
        "mailvalve: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY STARTTLS AUTH",
    )
}

pub fn vrfy() -> Reply {
    Reply::new(
        252,
        ec(2, 5, 2),
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}

pub fn not_implemented() -> Reply {
    Reply::new(502, ec(5, 5, 1), "Command not implemented")
}

pub fn need_helo() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Send EHLO or HELO first")
}

pub fn need_mail() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Need MAIL command first")
}

pub fn nested_mail() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Nested MAIL command")
}

pub fn in_transaction() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Not allowed during a mail transaction")
}

pub fn no_valid_recipients() -> Reply {
    Reply::new(554, ec(5, 5, 1), "No valid recipients")
}

pub fn too_many_recipients() -> Reply {
    Reply::new(452, ec(4, 5, 3), "Too many recipients")
}

pub fn message_too_big() -> Reply {
    Reply::new(552, ec(5, 3, 4), "Message too big")
}

pub fn unsupported_parameter() -> Reply {
    Reply::new(555, ec(5, 5, 4), "Unsupported parameter")
}

/// RFC 6531 3.7.4.1: a non-ASCII address in a transaction whose MAIL had no SMTPUTF8.
pub fn non_ascii_needs_smtputf8() -> Reply {
    Reply::new(
        553,
        ec(5, 6, 7),
        "Non-ASCII address needs SMTPUTF8 on MAIL FROM",
    )
}

pub fn start_data() -> Reply {
    Reply::plain(354, "End data with <CR><LF>.<CR><LF>")
}

pub fn data_line_too_long() -> Reply {
    Reply::new(500, ec(5, 5, 6), "Line too long")
}

pub fn command_line_too_long() -> Reply {
    Reply::new(500, ec(5, 5, 2), "Line too long")
}

/// Bare CR, bare LF or NUL, in a command or in DATA: the session is closed after it.
pub fn bare_line_ending() -> Reply {
    Reply::new(
        550,
        ec(5, 5, 2),
        "Bare CR or LF is not allowed; closing connection",
    )
}

/// The relay broke its contract (e.g. fewer replies than recipients); never a 2xx.
pub fn local_error() -> Reply {
    Reply::new(451, ec(4, 3, 0), "Local error in processing")
}

/// A deadline for the client ran out (see `session.rs`); the session is closed.
pub(crate) fn timeout(which: Timeout) -> Reply {
    let text = match which {
        Timeout::Idle => "Idle timeout",
        Timeout::Command => "Timeout waiting for a complete command line",
        Timeout::DataBlock => "Timeout waiting for message data",
        Timeout::PreMail => "Timeout: no MAIL FROM in time",
    };
    Reply::new(421, ec(4, 4, 2), text)
}

pub fn shutting_down() -> Reply {
    Reply::new(421, ec(4, 3, 2), "Service shutting down")
}

pub fn too_many_connections() -> Reply {
    Reply::new(421, ec(4, 3, 2), "Too many connections, try later")
}

/// Off loopback, `max_sessions_per_ip` sessions from this address are open.
pub fn too_many_connections_from_address() -> Reply {
    Reply::new(
        421,
        ec(4, 7, 0),
        "Too many connections from your address, try later",
    )
}

pub fn ready_for_tls() -> Reply {
    Reply::new(220, ec(2, 0, 0), "Ready to start TLS")
}

pub fn tls_already_active() -> Reply {
    Reply::new(503, ec(5, 5, 1), "TLS already active")
}

pub fn auth_ok() -> Reply {
    Reply::new(235, ec(2, 7, 0), "Authentication successful")
}

pub fn auth_failed() -> Reply {
    Reply::new(535, ec(5, 7, 8), "Authentication credentials invalid")
}

pub fn auth_too_many_failures() -> Reply {
    Reply::new(421, ec(4, 7, 0), "Too many authentication failures")
}

pub fn already_authenticated() -> Reply {
    Reply::new(503, ec(5, 5, 1), "Already authenticated")
}

pub fn auth_required() -> Reply {
    Reply::new(530, ec(5, 7, 0), "Authentication required")
}

pub fn encryption_required() -> Reply {
    Reply::new(538, ec(5, 7, 11), "Encryption required")
}

pub fn auth_mechanism_unsupported() -> Reply {
    Reply::new(504, ec(5, 5, 4), "Unrecognized authentication type")
}

pub fn auth_cancelled() -> Reply {
    Reply::new(501, ec(5, 7, 0), "Authentication cancelled")
}

pub fn auth_bad_base64() -> Reply {
    Reply::new(501, ec(5, 5, 2), "Cannot decode response")
}

/// A `334` challenge: the text is base64 (or empty), so no enhanced code.
pub fn auth_challenge(b64: &str) -> Reply {
    Reply {
        code: 334,
        enhanced: None,
        lines: vec![b64.to_string()],
    }
}

/// Which deadline ran out while waiting for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// `idle_timeout`: nothing at all arrived.
    Idle,
    /// `command_timeout`: a command line did not arrive complete.
    Command,
    /// `data_block_timeout`: a block of the message did not arrive.
    DataBlock,
    /// `pre_mail_timeout`: no MAIL FROM in time.
    PreMail,
}
