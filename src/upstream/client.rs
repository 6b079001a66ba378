//! One SMTP client connection to the provider: connect (plain, implicit TLS or
//! STARTTLS), greeting, EHLO (HELO fallback), AUTH, and the transaction commands
//! (MAIL + RCPT pipelined when offered, DATA, RSET, QUIT).
//!
//! This module reports replies; it decides nothing about them (that is `policy`). It
//! must never send a bare CR or LF (addresses are checked, the message is re-dot-stuffed),
//! never log a password or an AUTH blob, never trust bytes buffered before a TLS
//! handshake, and never report a message as sent unless the provider said so: any I/O
//! error or timeout is an `Err` and leaves the connection unusable.
//!
//! **The one guard** (for passthrough and queue mode alike): every reply is checked
//! against what the protocol allows where it arrives (`Expect`): greeting `220`,
//! EHLO/HELO `250`, STARTTLS `220`, AUTH `334` continuations then `235`, MAIL/RCPT
//! `250`/`251`/`252`, DATA `354`, end of DATA any `2xx`, RSET `250`. A positive (2xx or
//! 3xx) reply that is not the expected one — a plaintext `250` injected in answer to
//! STARTTLS, a `334` where AUTH expects its final reply, a `250` to DATA — is a broken
//! connection: [`UpstreamError::Unexpected`], the connection is dropped, and the reply
//! never reaches the observer as a reply (so it is never classified, never counted, never
//! relayed to the mailer). Bytes that arrive before a command was sent (more replies
//! than commands) are [`UpstreamError::Unsolicited`]. Negative replies (4xx, 5xx) are
//! always allowed and returned as they are. A reply is at most
//! [`MAX_REPLY_BYTES`] octets; a longer one (a provider streaming `250-` lines forever)
//! is a protocol error, so memory stays bounded whatever the provider sends.
//!
//! SMTPUTF8 (RFC 6531): a non-ASCII address is sent only in a transaction whose MAIL
//! carried `SMTPUTF8`, which needs the provider to advertise it; otherwise that address
//! gets a local `553 5.6.7` and is never sent (a non-ASCII sender: MAIL itself gets it).
//!
//! The jobs, one file each under `client/`:
//! - `opening`: connect, TLS (implicit or STARTTLS), greeting, EHLO/HELO, AUTH — up to
//!   the point where MAIL FROM can be sent.
//! - `transaction`: MAIL, RCPT (pipelined when offered), DATA, RSET, QUIT, and the local
//!   answers for what must not be sent (non-ASCII addresses without SMTPUTF8).
//! - `exchange`: one command out and its reply in, held against the guard above, with
//!   the reply's verdict from the observer; the unsolicited-bytes check and the idle
//!   probe.

mod exchange;
mod opening;
mod transaction;

use super::error::UpstreamError;
use super::observer::Observer;
use super::stream::Stream;
use crate::config::UpstreamTimeouts;
use crate::smtp::ehlo::Capabilities;
use crate::smtp::reply::{MAX_REPLY_LINE, MAX_REPLY_LINES};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most octets a connection buffers while waiting for one reply: just above what the
/// parser can hold before it gives up (at most `MAX_REPLY_LINES` lines of at most
/// `MAX_REPLY_LINE` octets, plus one unfinished line). The parser normally errs first;
/// this bound holds whatever it does, so a provider streaming a reply of 100 000 lines
/// (or one endless line) costs a connection at most this much memory, then the
/// connection is dropped.
pub const MAX_REPLY_BYTES: usize = (MAX_REPLY_LINE + 2) * (MAX_REPLY_LINES + 1);

/// An open, greeted (and, when configured, encrypted and authenticated) connection.
pub struct Connection {
    stream: Stream,
    rbuf: BytesMut,
    caps: Capabilities,
    timeouts: UpstreamTimeouts,
    usable: bool,
    tls: bool,
    /// MAIL was sent since the last RSET: the next transaction needs a RSET first.
    dirty: bool,
    transactions: usize,
    created: Instant,
    last_data_latency: Option<Duration>,
    last_final_latency: Option<Duration>,
    /// Where replies, failures and latencies are reported (the policy).
    observer: Option<Arc<dyn Observer>>,
    /// The recipient the next RCPT reply answers (for the observer).
    reply_for: Option<String>,
    /// Recipients the provider accepted in the current transaction.
    accepted: Vec<String>,
    /// MAIL of the current transaction carried SMTPUTF8: non-ASCII addresses may go out.
    utf8_tx: bool,
    /// What identifies the message of the current transaction (for the observer: a
    /// soft bounce counts once per message and day), and the one the next `envelope`
    /// takes over.
    identity: Option<Arc<str>>,
    next_identity: Option<Arc<str>>,
    /// The generation of the pool's settings this connection was opened with (a
    /// reload closes older ones after their transaction).
    pub(crate) generation: u64,
    /// The last message as written (re-dot-stuffed), reused for the next one.
    wire: Vec<u8>,
    /// Replies are read without reporting them to the observer (the first OAuth2
    /// sign-in attempt: a refused token is refreshed, not a reason to pause).
    hold_replies: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("tls", &self.tls)
            .field("usable", &self.usable)
            .field("transactions", &self.transactions)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The capabilities of the current (post-STARTTLS, when used) EHLO.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    /// Transactions begun (MAIL FROM sent) on this connection.
    pub fn transactions_done(&self) -> usize {
        self.transactions
    }
    /// False after an I/O error, a timeout, a malformed reply or a 421.
    pub fn is_usable(&self) -> bool {
        self.usable
    }
    /// A transaction was begun and not yet RSET.
    pub fn in_transaction(&self) -> bool {
        self.dirty
    }
    /// The session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
    /// When the connection was opened.
    pub fn created(&self) -> Instant {
        self.created
    }
    /// Time from sending DATA to the provider's reply (354 or not), last transaction.
    pub fn last_data_latency(&self) -> Option<Duration> {
        self.last_data_latency
    }
    /// Time from the end of the message to the final reply, last transaction.
    pub fn last_final_latency(&self) -> Option<Duration> {
        self.last_final_latency
    }

    pub(crate) fn command_timeout(&self) -> Duration {
        self.timeouts.command
    }

    fn ensure_usable(&self) -> Result<(), UpstreamError> {
        if self.usable {
            Ok(())
        } else {
            Err(UpstreamError::Unusable)
        }
    }
}
