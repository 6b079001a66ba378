//! SMTP vocabulary with no I/O and no policy: replies and enhanced status codes,
//! commands, line framing, DATA framing (dot-stuffing, the CRLF.CRLF terminator, bare
//! CR/LF refusal) and EHLO capabilities. It imports nothing else of this crate, so
//! everything here is testable with plain byte slices.
//!
//! It must never do I/O or decide anything; it never imports another floor.

pub mod codes;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod envelope;
pub mod line;
pub mod reply;

pub use envelope::Envelope;
pub use reply::{EnhancedCode, Reply, ReplyError};
