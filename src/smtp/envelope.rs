//! The envelope of one transaction as it travels from the mailer to the provider: the
//! reverse-path and the MAIL FROM parameters we carry over. Recipients are plain
//! addresses (`String`), one RCPT each.
//!
//! It must never hold policy or I/O: only what the transaction says.

/// MAIL FROM and the parameters mailvalve forwards when the provider supports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse-path without angle brackets; empty for the null sender `<>`.
    pub from: String,
    /// SIZE= the mailer declared, if any.
    pub size: Option<usize>,
    /// BODY=8BITMIME was given.
    pub eight_bit: bool,
    /// SMTPUTF8 was given.
    pub smtputf8: bool,
}
