//! One inbound SMTP session: the read buffer, the pipelined command loop, the batched
//! reply buffer, the session state (HELO name, TLS, AUTH, the open relay transaction)
//! and the ways a session ends (QUIT, EOF, idle timeout, shutdown, framing error).
//!
//! The loop executes every complete command already in the buffer, in order, queueing
//! the replies; only when it must wait for the client does it write them, in one go
//! (RFC 2920). Verb handlers live in their own files and may take further lines from the
//! buffer (pipelined RCPTs, the DATA body, an AUTH continuation).
//!
//! Must never: execute anything that follows a framing error in the buffer; log a
//! command line verbatim (AUTH lines carry credentials); wait on the client or the relay
//! without a bound (idle timeout, shutdown grace).

use super::replies;
use super::starttls::Stream;
use super::{Relay, RelayTransaction, Shared};
use crate::smtp::command::{self, Command};
use crate::smtp::line::{find_line, LineError, MAX_COMMAND_LINE};
use crate::smtp::Reply;
use bytes::BytesMut;
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Failed AUTH attempts before the session is closed.
pub(crate) const MAX_AUTH_FAILURES: u32 = 3;

/// Why the command loop stopped. The reply that goes with it (if any) has been queued
/// by the handler, except for `Idle` and `Shutdown`, which `run` answers with 421.
#[derive(Debug)]
pub(crate) enum Close {
    /// QUIT answered, or a fatal reply (framing error, too many AUTH failures) queued.
    Done,
    /// The client closed the connection.
    Eof,
    /// A socket or TLS error; nothing more can be written.
    Io,
    Idle,
    Shutdown,
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
}

/// Runs one session to its end. `_permit` holds the session's `max_sessions` slot.
pub(crate) async fn run<R: Relay>(
    shared: Arc<Shared<R>>,
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
) {
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
    };
    tracing::debug!("session opened");
    s.reply(replies::greeting(&s.shared.cfg.hostname));
    let close = match s.command_loop().await {
        Ok(()) => Close::Done,
        Err(c) => c,
    };
    match close {
        Close::Idle => s.reply(replies::idle_timeout()),
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
            Ok(Some(n)) => Ok(Some(self.rbuf.split_to(n))),
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
            Command::Data => self.handle_data().await?,
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

    /// Writes the queued replies, then waits (bounded by the idle timeout) for more
    /// bytes from the client. Between transactions a shutdown ends the wait at once;
    /// inside one, only the end of the shutdown grace does.
    pub(crate) async fn read_more(&mut self) -> Result<(), Close> {
        self.flush().await?;
        let idle = self.shared.cfg.idle_timeout;
        let idle_between = self.tx.is_none();
        self.rbuf.reserve(READ_CHUNK);
        let shared = Arc::clone(&self.shared);
        let read = tokio::time::timeout(idle, self.stream.read_buf(&mut self.rbuf));
        tokio::select! {
            r = read => match r {
                Ok(Ok(0)) => {
                    tracing::debug!("client closed the connection");
                    Err(Close::Eof)
                }
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "read failed");
                    Err(Close::Io)
                }
                Err(_) => {
                    tracing::info!("idle timeout");
                    Err(Close::Idle)
                }
            },
            _ = shared.shutdown.cancelled(), if idle_between => Err(Close::Shutdown),
            _ = shared.grace_over.cancelled() => Err(Close::Shutdown),
        }
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

/// Tells a client over the session limit to come back later. Bounded: a client that
/// does not read cannot hold the task.
pub(crate) async fn reject_busy(mut tcp: TcpStream) {
    let wire = replies::too_many_connections().to_wire();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        tcp.write_all(&wire).await?;
        tcp.shutdown().await
    })
    .await;
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
