//! One exchange with the provider: a command line out, its reply in within a timeout,
//! held against what the protocol allows there (the guard of `client`'s docs), reported
//! to the observer (whose verdict travels on with the reply) — and the checks around it:
//! no bytes the provider sent unasked are ever taken for a reply, no reply grows past
//! [`MAX_REPLY_BYTES`](super::MAX_REPLY_BYTES), an idle pooled connection is probed
//! without waiting.
//!
//! Must never log an AUTH line (those go through `command_redacted`), and never leave a
//! connection usable after an I/O error, a timeout or a reply it cannot trust.

use super::{Connection, MAX_REPLY_BYTES};
use crate::policy::verdict::Phase;
use crate::smtp::{Reply, ReplyError};
use crate::upstream::answer::Answer;
use crate::upstream::auth;
use crate::upstream::error::UpstreamError;
use crate::upstream::expect::Expect;
use bytes::Buf;
use futures::FutureExt;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

impl Connection {
    /// Cheap liveness check for an idle pooled connection, without waiting: the
    /// provider closed it, or sent something unasked (typically `421 idle timeout`),
    /// means it is dead. Marks it unusable and returns false in that case.
    pub fn probe_idle(&mut self) -> bool {
        if !self.usable {
            return false;
        }
        if !self.rbuf.is_empty() {
            self.usable = false;
            return false;
        }
        match self.stream.read_buf(&mut self.rbuf).now_or_never() {
            None => true,
            Some(Ok(0)) | Some(Err(_)) => {
                self.usable = false;
                false
            }
            Some(Ok(_)) => {
                tracing::debug!("idle provider connection sent unsolicited data; closing it");
                self.usable = false;
                false
            }
        }
    }

    /// Sends one command line and reads its reply, which must be negative or one that
    /// `expect` allows. `AUTH` lines must go through [`Connection::command_redacted`].
    pub(crate) async fn command(
        &mut self,
        line: &str,
        phase: Phase,
        expect: Expect,
        wait: Duration,
    ) -> Result<Answer, UpstreamError> {
        auth::Commands::command_redacted(self, line, line, phase, expect, wait).await
    }

    /// Writes the command(s) in `bytes`, after checking that the provider has not sent
    /// anything since the last reply we read: bytes waiting now would be taken for the
    /// reply to this command (more replies than commands, e.g. a pipelined batch
    /// answered twice), so the connection is dropped instead.
    pub(super) async fn send(&mut self, bytes: &[u8], phase: Phase) -> Result<(), UpstreamError> {
        if !self.rbuf.is_empty() {
            let e = UpstreamError::Unsolicited {
                phase,
                bytes: self.rbuf.len(),
            };
            tracing::warn!(error = %e, "dropping the provider connection");
            self.usable = false;
            self.rbuf.clear();
            if let Some(obs) = &self.observer {
                obs.failure(Some(phase), &e);
            }
            return Err(e);
        }
        self.write(bytes, phase, self.timeouts.command).await
    }

    pub(super) async fn write(
        &mut self,
        bytes: &[u8],
        phase: Phase,
        wait: Duration,
    ) -> Result<(), UpstreamError> {
        let res = timeout(wait, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.usable = false;
                Err(io_error(e))
            }
            Err(_) => {
                self.usable = false;
                Err(UpstreamError::Timeout { phase })
            }
        }
    }

    /// Reads one complete (possibly multi-line) reply within `wait` and holds it against
    /// `expect` (the guard described in the module docs): a positive reply the protocol
    /// does not allow here is [`UpstreamError::Unexpected`] and is reported to the
    /// observer as a failure, never as a reply. A 421 marks the connection unusable (the
    /// provider is closing it) but is returned as a reply.
    pub(crate) async fn read_reply(
        &mut self,
        phase: Phase,
        expect: Expect,
        wait: Duration,
    ) -> Result<Answer, UpstreamError> {
        let res = timeout(wait, self.read_reply_inner()).await;
        let res = match res {
            Ok(Ok(r)) if !expect.allows(&r) => Err(UpstreamError::Unexpected { phase, reply: r }),
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout { phase }),
        };
        let rcpt = self.reply_for.take();
        let mut verdict = None;
        if let Some(obs) = self.observer.as_ref().filter(|_| !self.hold_replies) {
            match &res {
                Ok(r) => {
                    let about = match phase {
                        Phase::Rcpt => rcpt.as_deref(),
                        Phase::DataEnd if self.accepted.len() == 1 => {
                            self.accepted.first().map(String::as_str)
                        }
                        _ => None,
                    };
                    verdict = obs.reply(phase, r, about, self.identity.as_deref());
                }
                Err(e) => obs.failure(Some(phase), e),
            }
        }
        match res {
            Ok(r) => {
                if !r.is_positive() {
                    tracing::debug!(phase = phase.name(), reply = %r, "provider refused");
                }
                if r.code == 421 {
                    tracing::debug!(
                        phase = phase.name(),
                        "provider sent 421; connection closing"
                    );
                    self.usable = false;
                }
                Ok(Answer::provider(r, verdict))
            }
            Err(e) => {
                if matches!(e, UpstreamError::Unexpected { .. }) {
                    tracing::warn!(error = %e, "dropping the provider connection");
                }
                self.usable = false;
                Err(e)
            }
        }
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, UpstreamError> {
        loop {
            if let Some((reply, n)) = Reply::parse(&self.rbuf)? {
                self.rbuf.advance(n);
                return Ok(reply);
            }
            // The parser bounds line length and count; this bounds the buffer itself,
            // whatever the provider streams (bytes not yet split into lines included).
            // (The parser has no error of its own for "too many octets"; a reply this
            // long has too many lines of the longest kind.)
            if self.rbuf.len() > MAX_REPLY_BYTES {
                return Err(UpstreamError::Protocol(ReplyError::TooManyLines));
            }
            let room = (MAX_REPLY_BYTES + 1 - self.rbuf.len()).min(8192);
            self.rbuf.reserve(room);
            let n = (&mut self.stream)
                .take(room as u64)
                .read_buf(&mut self.rbuf)
                .await
                .map_err(io_error)?;
            if n == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }
}

fn io_error(e: io::Error) -> UpstreamError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => UpstreamError::Closed,
        _ => UpstreamError::Connect(e),
    }
}

pub(super) fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An address or name that goes into a command line: no control characters (so no CR
/// or LF), no angle brackets, no spaces.
pub(super) fn check_arg(s: &str) -> Result<(), UpstreamError> {
    if s.chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
    {
        return Err(UpstreamError::BadAddress(s.to_string()));
    }
    Ok(())
}

/// Every command goes out this way; AUTH's with the line logged redacted.
impl auth::Commands for Connection {
    /// Sends `line`, logging `shown` in its place (for AUTH exchanges), and reads its
    /// reply.
    async fn command_redacted(
        &mut self,
        line: &str,
        shown: &str,
        phase: Phase,
        expect: Expect,
        wait: Duration,
    ) -> Result<Answer, UpstreamError> {
        tracing::trace!("> {shown}");
        let mut out = Vec::with_capacity(line.len() + 2);
        push_line(&mut out, line);
        self.send(&out, phase).await?;
        let r = self.read_reply(phase, expect, wait).await?;
        tracing::trace!(phase = phase.name(), "< {}", r.code);
        Ok(r)
    }

    fn hold_replies(&mut self, hold: bool) {
        self.hold_replies = hold;
    }

    fn report(&mut self, phase: Phase, answer: Answer) -> Answer {
        match &self.observer {
            Some(obs) => {
                let verdict = obs.reply(phase, &answer.reply, None, None);
                Answer::provider(answer.reply, verdict)
            }
            None => answer,
        }
    }

    fn report_failure(&mut self, phase: Phase, error: &UpstreamError) {
        if let Some(obs) = &self.observer {
            obs.failure(Some(phase), error);
        }
    }
}
