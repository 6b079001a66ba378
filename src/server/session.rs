//! One inbound SMTP session: the read buffer, the pipelined command loop, the batched
//! reply buffer, the session state (HELO name, TLS, AUTH, the open relay transaction)
//! and the ways a session ends (QUIT, EOF, a timeout, shutdown, framing error).
//!
//! The loop executes every complete command already in the buffer, in order, queueing
//! the replies; only when it must wait for the client does it write them, in one go
//! (RFC 2920). Verb handlers live in their own files and may take further lines from the
//! buffer (pipelined RCPTs, the DATA body, an AUTH continuation).
//!
//! Every wait for the client happens in [`Session::read_more`], under the earliest of
//! these deadlines (each ends the session with `421 4.4.2`), so a client that trickles
//! one byte at a time cannot hold a session slot for longer than they allow:
//! - `idle_timeout`: silence, per read;
//! - `command_timeout`: a whole command line (or AUTH continuation) from the moment the
//!   server starts waiting for it;
//! - `data_block_timeout`: each [`DATA_BLOCK_BYTES`] of a message (or its end), while the
//!   DATA handler reads;
//! - `pre_mail_timeout`: everything from the greeting to the first MAIL FROM that passes
//!   the session's checks (so EHLO, STARTTLS and AUTH included).
//!
//! Must never: execute anything that follows a framing error in the buffer; log a
//! command line verbatim (AUTH lines carry credentials); wait on the client or the relay
//! without a bound (the deadlines above, shutdown grace).

use super::replies::{self, Timeout};
use super::{Relay, RelayTransaction, Shared};
use crate::smtp::command::{self, Command};
use crate::smtp::line::{find_line, LineError, MAX_COMMAND_LINE};
use crate::smtp::Reply;
use bytes::BytesMut;
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The session's connection: plain until STARTTLS succeeds (`Gone` only while the
/// handshake owns the socket; any I/O on it fails).
pub(crate) type Stream = crate::net::MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Failed AUTH attempts before the session is closed.
pub(crate) const MAX_AUTH_FAILURES: u32 = 3;
/// One DATA block for `data_block_timeout`: this many bytes of the message (or its end)
/// must arrive within the timeout — with the default 3 minutes a floor of about 360
/// bytes/s, which any real mailer exceeds by orders of magnitude.
pub const DATA_BLOCK_BYTES: usize = 64 * 1024;

/// Why the command loop stopped. The reply that goes with it (if any) has been queued
/// by the handler, except for `Timeout` and `Shutdown`, which `run` answers with 421.
#[derive(Debug)]
pub(crate) enum Close {
    /// QUIT answered, or a fatal reply (framing error, too many AUTH failures) queued.
    Done,
    /// The client closed the connection.
    Eof,
    /// A socket or TLS error; nothing more can be written.
    Io,
    Timeout(Timeout),
    Shutdown,
}

/// What the session is reading, for the deadline of [`Session::read_more`].
enum Reading {
    /// Command lines (and AUTH continuations).
    Commands,
    /// The body of DATA; the block being read, once a read started it.
    Data(Option<DataBlock>),
}

struct DataBlock {
    deadline: Instant,
    received: usize,
}

/// The relay transaction opened by MAIL FROM and what the session knows about it.
pub(crate) struct Transaction<T> {
    pub(crate) tx: T,
    /// Recipients the relay accepted (2xx).
    pub(crate) accepted: usize,
    /// The MAIL carried SMTPUTF8: non-ASCII recipients are allowed.
    pub(crate) smtputf8: bool,
}

pub(crate) struct Session<R: Relay> {
    pub(crate) shared: Arc<Shared<R>>,
    pub(crate) stream: Stream,
    pub(crate) rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// The name given in EHLO/HELO; `None` until then and again after STARTTLS.
    pub(crate) helo: Option<String>,
    /// The authenticated user name.
    pub(crate) user: Option<String>,
    pub(crate) auth_failures: u32,
    pub(crate) tx: Option<Transaction<R::Tx>>,
    /// A 4xx the relay gave to the last MAIL (or a dead transaction): answers the RCPTs
    /// and DATA that follow it, so the mailer retries them later instead of seeing 503.
    pub(crate) failed_mail: Option<Reply>,
    reading: Reading,
    /// When the command line being waited for must be complete; set by the first read
    /// for it, cleared when a line is taken.
    line_deadline: Option<Instant>,
    /// Until the first MAIL FROM: when the session must have sent one.
    pub(crate) pre_mail_deadline: Option<Instant>,
}

/// Runs one session to its end. `_slot` holds the session's place (`max_sessions`, and
/// the per-IP count) until the session ends.
pub(crate) async fn run<R: Relay, S>(shared: Arc<Shared<R>>, tcp: TcpStream, _slot: S) {
    let pre_mail_deadline = Some(Instant::now() + shared.cfg.pre_mail_timeout);
    let mut s = Session {
        shared,
        stream: Stream::Plain(tcp),
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        wbuf: Vec::with_capacity(1024),
        helo: None,
        user: None,
        auth_failures: 0,
        tx: None,
        failed_mail: None,
        reading: Reading::Commands,
        line_deadline: None,
        pre_mail_deadline,
    };
    tracing::debug!("session opened");
    s.reply(replies::greeting(&s.shared.cfg.hostname));
    let close = match s.command_loop().await {
        Ok(()) => Close::Done,
        Err(c) => c,
    };
    match close {
        Close::Timeout(t) => s.reply(replies::timeout(t)),
        Close::Shutdown => s.reply(replies::shutting_down()),
        Close::Done | Close::Eof | Close::Io => {}
    }
    tracing::debug!(reason = ?close, "session closing");
    if let Some(t) = s.tx.take() {
        // Give the upstream connection back when we still may; after the grace period
        // (or if `end` would outlive it) it is dropped, which closes it.
        let _ = s.shared.in_flight(t.tx.end()).await;
    }
    if !matches!(close, Close::Io | Close::Eof) {
        let _ = s.flush().await;
        let _ = tokio::time::timeout(s.shared.cfg.idle_timeout, s.stream.shutdown()).await;
    }
}

impl<R: Relay> Session<R> {
    async fn command_loop(&mut self) -> Result<(), Close> {
        loop {
            while let Some(line) = self.next_line()? {
                let cmd = command::parse(&line);
                drop(line);
                if self.shared.shutdown.is_cancelled()
                    && self.tx.is_none()
                    && !matches!(cmd, Ok(Command::Quit))
                {
                    return Err(Close::Shutdown);
                }
                self.dispatch(cmd).await?;
            }
            self.read_more().await?;
        }
    }

    /// Takes the next complete command line out of the buffer. A framing error queues
    /// its reply and ends the session; what follows it in the buffer is never looked at.
    pub(crate) fn next_line(&mut self) -> Result<Option<BytesMut>, Close> {
        match find_line(&self.rbuf, MAX_COMMAND_LINE) {
            Ok(Some(n)) => {
                // The next line gets its own `command_timeout`.
                self.line_deadline = None;
                Ok(Some(self.rbuf.split_to(n)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.framing_error(e)),
        }
    }

    pub(crate) fn framing_error(&mut self, e: LineError) -> Close {
        tracing::info!(error = %e, "command framing error, closing");
        self.rbuf.clear();
        match e {
            LineError::TooLong => self.reply(replies::command_line_too_long()),
            LineError::BareCr | LineError::BareLf | LineError::Nul => {
                self.reply(replies::bare_line_ending())
            }
        }
        Close::Done
    }

    async fn dispatch(&mut self, cmd: Result<Command, Reply>) -> Result<(), Close> {
        let cmd = match cmd {
            Ok(c) => c,
            Err(reply) => {
                tracing::debug!(code = reply.code, "unparsable command");
                self.reply(reply);
                return Ok(());
            }
        };
        // Only the verb: arguments of AUTH are credentials.
        tracing::debug!(verb = cmd.name(), "command");
        match cmd {
            Command::Ehlo { host } => self.handle_ehlo(host).await,
            Command::Helo { host } => self.handle_helo(host).await,
            Command::Mail { from } => self.handle_mail(from).await?,
            Command::Rcpt { to } => self.handle_rcpt(to).await?,
            Command::Data => {
                // Every read of the DATA handler is a read of the body: its deadline is
                // per data block (see `read_more`).
                self.reading = Reading::Data(None);
                let done = self.handle_data().await;
                self.reading = Reading::Commands;
                done?
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => self.handle_auth(mechanism, initial_response).await?,
            Command::StartTls => self.handle_starttls().await?,
            Command::Rset => {
                self.end_transaction().await?;
                self.failed_mail = None;
                self.reply(replies::ok());
            }
            Command::Noop { .. } => self.reply(replies::ok()),
            Command::Help { .. } => self.reply(replies::help()),
            Command::Vrfy { .. } => self.reply(replies::vrfy()),
            Command::Quit => {
                self.reply(replies::bye());
                return Err(Close::Done);
            }
            Command::Lhlo { .. }
            | Command::Bdat { .. }
            | Command::Expn { .. }
            | Command::Etrn { .. }
            | Command::Atrn { .. }
            | Command::Burl { .. } => self.reply(replies::not_implemented()),
        }
        Ok(())
    }

    /// Queues a reply; it is written with the others when the session next waits.
    pub(crate) fn reply(&mut self, reply: Reply) {
        match reply.enhanced {
            Some(e) => tracing::debug!(code = reply.code, enhanced = %e, "reply"),
            None => tracing::debug!(code = reply.code, "reply"),
        }
        reply.write_wire(&mut self.wbuf);
    }

    /// Writes the queued replies.
    pub(crate) async fn flush(&mut self) -> Result<(), Close> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let idle = self.shared.cfg.idle_timeout;
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(idle, write).await {
            Ok(Ok(())) => {
                self.wbuf.clear();
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed");
                Err(Close::Io)
            }
            Err(_) => {
                tracing::debug!("write timed out");
                Err(Close::Io)
            }
        }
    }

    /// Writes the queued replies, then waits for more bytes from the client, bounded by
    /// the earliest deadline that applies (see the module docs). Between transactions a
    /// shutdown ends the wait at once; inside one, only the end of the shutdown grace
    /// does.
    pub(crate) async fn read_more(&mut self) -> Result<(), Close> {
        self.flush().await?;
        let now = Instant::now();
        let (deadline, which) = self.read_deadline(now);
        let idle_between = self.tx.is_none();
        self.rbuf.reserve(READ_CHUNK);
        let shared = Arc::clone(&self.shared);
        let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf));
        tokio::select! {
            r = read => match r {
                Ok(Ok(0)) => {
                    tracing::debug!("client closed the connection");
                    Err(Close::Eof)
                }
                Ok(Ok(n)) => {
                    if let Reading::Data(Some(block)) = &mut self.reading {
                        block.received += n;
                    }
                    Ok(())
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "read failed");
                    Err(Close::Io)
                }
                Err(_) => {
                    tracing::info!(deadline = ?which, "client too slow, closing");
                    Err(Close::Timeout(which))
                }
            },
            _ = shared.shutdown.cancelled(), if idle_between => Err(Close::Shutdown),
            _ = shared.grace_over.cancelled() => Err(Close::Shutdown),
        }
    }

    /// The earliest deadline for the next read, and which one it is. Starts the
    /// command line's or the data block's deadline when this is its first read.
    fn read_deadline(&mut self, now: Instant) -> (Instant, Timeout) {
        let cfg = &self.shared.cfg;
        let mut earliest = (now + cfg.idle_timeout, Timeout::Idle);
        let mut consider = |at: Instant, which: Timeout| {
            if at < earliest.0 {
                earliest = (at, which);
            }
        };
        match &mut self.reading {
            Reading::Commands => {
                let line = *self.line_deadline.get_or_insert(now + cfg.command_timeout);
                consider(line, Timeout::Command);
                if let Some(pre_mail) = self.pre_mail_deadline {
                    consider(pre_mail, Timeout::PreMail);
                }
            }
            Reading::Data(block) => {
                let block = match block {
                    Some(b) if b.received < DATA_BLOCK_BYTES => b,
                    _ => block.insert(DataBlock {
                        deadline: now + cfg.data_block_timeout,
                        received: 0,
                    }),
                };
                consider(block.deadline, Timeout::DataBlock);
            }
        }
        earliest
    }

    /// The session sent a MAIL FROM that passed its checks: the pre-MAIL deadline no
    /// longer applies.
    pub(crate) fn mail_seen(&mut self) {
        self.pre_mail_deadline = None;
    }

    /// Ends the open relay transaction, if any (RSET, EHLO, a finished DATA).
    pub(crate) async fn end_transaction(&mut self) -> Result<(), Close> {
        if let Some(t) = self.tx.take() {
            self.shared.in_flight(t.tx.end()).await?;
        }
        Ok(())
    }

    /// RFC 3207 4.2: after the TLS handshake the session starts over.
    pub(crate) fn reset_after_tls(&mut self) {
        self.helo = None;
        self.user = None;
        self.auth_failures = 0;
        self.failed_mail = None;
    }

    /// AUTH is mandatory before MAIL: configured, or the listener is not loopback.
    pub(crate) fn auth_required(&self) -> bool {
        self.shared.cfg.require_auth || self.shared.public
    }
}

/// Tells a client over a session limit to come back later (`reply`, a 421). Bounded: a
/// client that does not read cannot hold the task.
pub(crate) async fn reject(mut tcp: TcpStream, reply: Reply) {
    let wire = reply.to_wire();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        tcp.write_all(&wire).await?;
        tcp.shutdown().await
    })
    .await;
}

impl<R: Relay> Shared<R> {
    /// The largest message taken now: `server.max_message_size`, or the relay's
    /// (the provider's) limit when that is smaller.
    pub(crate) fn max_message_size(&self) -> usize {
        let own = self.cfg.max_message_size;
        self.relay.max_message_size().map_or(own, |r| r.min(own))
    }
}

impl<R> Shared<R> {
    /// Runs relay work of an open transaction, cut short when the shutdown grace ends.
    /// (On `Shared`, not the session, so the session future needs no `Sync`.)
    pub(crate) async fn in_flight<F: Future>(&self, f: F) -> Result<F::Output, Close> {
        tokio::select! {
            r = f => Ok(r),
            _ = self.grace_over.cancelled() => {
                tracing::info!("shutdown grace over, abandoning the transaction");
                Err(Close::Shutdown)
            }
        }
    }
}
