//! One transaction on an open connection: MAIL FROM (with SIZE, 8BITMIME, SMTPUTF8 as
//! both sides allow), RCPT (pipelined when offered), DATA with the message re-dot-stuffed
//! and written in timed blocks, RSET and QUIT; and the local answers for what must not
//! go out (a non-ASCII address without SMTPUTF8, the rest after a 421).
//!
//! Must never send a bare CR or LF (addresses are checked, the message is re-dot-stuffed)
//! and never report a message as sent unless the provider's final reply said so.

use super::exchange::{check_arg, push_line};
use super::Connection;
use crate::policy::latency::LatencyKind;
use crate::policy::verdict::Phase;
use crate::smtp::data::dot_stuff;
use crate::smtp::{EnhancedCode, Envelope, Reply};
use crate::upstream::answer::Answer;
use crate::upstream::error::UpstreamError;
use crate::upstream::expect::Expect;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

/// Bytes of message written per timed write (RFC 5321's data block timeout applies to
/// each one, not to the whole message).
const DATA_CHUNK: usize = 64 * 1024;
/// Largest stuffing buffer a connection keeps between messages (an idle pooled
/// connection should not hold on to a big message's worth of memory).
const KEEP_WIRE: usize = 256 * 1024;
/// QUIT is a courtesy: never wait long for its reply.
const QUIT_WAIT: Duration = Duration::from_secs(5);
impl Connection {
    /// What identifies the message of the next transaction (the one the next
    /// [`Connection::envelope`] begins), for the observer: a mailbox-full reply counts
    /// toward suppression at most once per message and day. Taken over by `envelope`;
    /// without a call, the transaction has none.
    pub fn set_message_identity(&mut self, identity: Option<&str>) {
        self.next_identity = identity.map(Arc::from);
    }

    /// MAIL FROM (with SIZE=, BODY=8BITMIME, SMTPUTF8 when both sides have them) and one
    /// RCPT per address. With PIPELINING everything goes out in one write; without it,
    /// one by one, and no RCPT is sent when MAIL was refused (the rcpt vec is empty).
    /// After a 421 the remaining replies are copies of that 421.
    ///
    /// A non-ASCII address goes out only when MAIL carries SMTPUTF8 (RFC 6531): with a
    /// provider that does not offer it, such a recipient gets a local `553 5.6.7` and is
    /// not sent, and a non-ASCII sender gets it for MAIL (nothing is sent at all).
    pub async fn envelope(
        &mut self,
        env: &Envelope,
        rcpts: &[String],
    ) -> Result<(Answer, Vec<Answer>), UpstreamError> {
        self.ensure_usable()?;
        check_arg(&env.from)?;
        for r in rcpts {
            check_arg(r)?;
        }
        self.identity = self.next_identity.take();
        self.utf8_tx = env.smtputf8 && self.caps.smtputf8;
        self.accepted.clear();
        if !self.sendable(&env.from) {
            tracing::info!("non-ASCII sender and the provider offers no SMTPUTF8; not sent");
            return Ok((Answer::local(no_utf8_reply("sender")), Vec::new()));
        }
        let mut mail = String::with_capacity(env.from.len() + 48);
        mail.push_str("MAIL FROM:<");
        mail.push_str(&env.from);
        mail.push('>');
        if let (Some(size), Some(_)) = (env.size, self.caps.size) {
            let _ = write!(mail, " SIZE={size}");
        }
        if env.eight_bit && self.caps.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if self.utf8_tx {
            mail.push_str(" SMTPUTF8");
        }
        self.dirty = true;
        self.transactions += 1;

        if self.caps.pipelining {
            let mut out = Vec::with_capacity(mail.len() + 2 + rcpts.len() * 40);
            push_line(&mut out, &mail);
            for r in rcpts.iter().filter(|r| self.sendable(r)) {
                push_rcpt(&mut out, r);
            }
            tracing::trace!(rcpts = rcpts.len(), "> {mail} + RCPTs (pipelined)");
            self.send(&out, Phase::Mail).await?;
            let mail_reply = self
                .read_reply(Phase::Mail, Expect::MAIL, self.timeouts.mail)
                .await?;
            let rcpt_replies = if mail_reply.code == 421 {
                vec![mail_reply.clone(); rcpts.len()]
            } else {
                self.read_rcpt_replies(rcpts).await?
            };
            Ok((mail_reply, rcpt_replies))
        } else {
            let mail_reply = self
                .command(&mail, Phase::Mail, Expect::MAIL, self.timeouts.mail)
                .await?;
            if mail_reply.class() != 2 {
                return Ok((mail_reply, Vec::new()));
            }
            let rcpt_replies = self.rcpt(rcpts).await?;
            Ok((mail_reply, rcpt_replies))
        }
    }

    /// More recipients in the open transaction; one reply each (pipelined when offered).
    /// A non-ASCII address the transaction cannot carry gets a local `553 5.6.7`.
    pub async fn rcpt(&mut self, rcpts: &[String]) -> Result<Vec<Answer>, UpstreamError> {
        self.ensure_usable()?;
        for r in rcpts {
            check_arg(r)?;
        }
        if self.caps.pipelining {
            let mut out = Vec::with_capacity(rcpts.len() * 40);
            for r in rcpts.iter().filter(|r| self.sendable(r)) {
                push_rcpt(&mut out, r);
            }
            if !out.is_empty() {
                self.send(&out, Phase::Rcpt).await?;
            }
            return self.read_rcpt_replies(rcpts).await;
        }
        let mut replies = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            if !self.usable {
                // The provider said 421 and is closing: answer the rest the same way.
                let last = replies
                    .last()
                    .cloned()
                    .unwrap_or_else(|| Answer::local(closing_reply()));
                replies.push(last);
                continue;
            }
            if !self.sendable(r) {
                replies.push(Answer::local(no_utf8_reply("recipient")));
                continue;
            }
            self.reply_for = Some(r.clone());
            let reply = self
                .command(
                    &format!("RCPT TO:<{r}>"),
                    Phase::Rcpt,
                    Expect::RCPT,
                    self.timeouts.rcpt,
                )
                .await?;
            if reply.class() == 2 {
                self.accepted.push(r.clone());
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// The replies to the RCPTs of `rcpts` that were sent (in order), with the local
    /// `553 5.6.7` in the place of each one that was not.
    async fn read_rcpt_replies(&mut self, rcpts: &[String]) -> Result<Vec<Answer>, UpstreamError> {
        let mut replies: Vec<Answer> = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            if !self.sendable(r) {
                replies.push(Answer::local(no_utf8_reply("recipient")));
                continue;
            }
            if !self.usable {
                let last = replies
                    .last()
                    .cloned()
                    .unwrap_or_else(|| Answer::local(closing_reply()));
                replies.push(last);
                continue;
            }
            self.reply_for = Some(r.clone());
            let reply = self
                .read_reply(Phase::Rcpt, Expect::RCPT, self.timeouts.rcpt)
                .await?;
            if reply.class() == 2 {
                self.accepted.push(r.clone());
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Whether `addr` may go out in the current transaction: ASCII, or MAIL carried
    /// SMTPUTF8.
    fn sendable(&self, addr: &str) -> bool {
        addr.is_ascii() || self.utf8_tx
    }

    /// DATA, the message (re-dot-stuffed, CRLF only) and the final reply. A 4xx/5xx to
    /// DATA is returned as is (nothing is sent; the transaction stays open); any other
    /// positive reply than 354 is [`UpstreamError::Unexpected`]. A lost connection or a
    /// timeout after DATA is an `Err`: the message must not be reported as sent. `Ok`
    /// with a 2xx is the provider's acceptance of the message, and nothing else is.
    pub async fn data(&mut self, message: &[u8]) -> Result<Answer, UpstreamError> {
        self.ensure_usable()?;
        let start = Instant::now();
        let r = self
            .command("DATA", Phase::Data, Expect::DATA, self.timeouts.data)
            .await?;
        self.last_data_latency = Some(start.elapsed());
        if r.code != 354 {
            return Ok(r);
        }
        if let Some(obs) = &self.observer {
            obs.latency(LatencyKind::To354, start.elapsed());
        }
        // The stuffing buffer is kept for the next message unless it grew large.
        let mut wire = std::mem::take(&mut self.wire);
        wire.clear();
        dot_stuff(message, &mut wire);
        for chunk in wire.chunks(DATA_CHUNK) {
            self.write(chunk, Phase::DataEnd, self.timeouts.data_block)
                .await?;
        }
        if wire.capacity() <= KEEP_WIRE {
            self.wire = wire;
        }
        let end = Instant::now();
        let r = self
            .read_reply(Phase::DataEnd, Expect::DATA_END, self.timeouts.data_end)
            .await?;
        self.last_final_latency = Some(end.elapsed());
        if let Some(obs) = &self.observer {
            obs.latency(LatencyKind::ToFinal, end.elapsed());
        }
        // The final reply, positive or not, ends the transaction (RFC 5321 4.1.1.4):
        // no RSET is needed before the next MAIL, saving a round trip per message.
        self.dirty = false;
        tracing::debug!(code = r.code, bytes = message.len(), "message final reply");
        Ok(r)
    }

    /// RSET: ends the transaction. A reply other than 2xx leaves the connection unusable
    /// (we cannot know what state the provider is in).
    pub async fn rset(&mut self) -> Result<Reply, UpstreamError> {
        self.ensure_usable()?;
        let r = self
            .command("RSET", Phase::Rset, Expect::RSET, self.timeouts.command)
            .await?
            .reply;
        if r.class() == 2 {
            self.dirty = false;
        } else {
            self.usable = false;
        }
        Ok(r)
    }

    /// QUIT and close. Best effort, bounded: errors are ignored.
    pub async fn quit(mut self) {
        if self.usable {
            let wait = self.timeouts.command.min(QUIT_WAIT);
            let _ = self.command("QUIT", Phase::Rset, Expect::QUIT, wait).await;
        }
        let _ = timeout(QUIT_WAIT, self.stream.shutdown()).await;
    }
}

fn closing_reply() -> Reply {
    Reply::plain(421, "Service closing transmission channel")
}

/// The local answer for a non-ASCII address the provider cannot take (RFC 6531 3.7.4):
/// permanent for this message, never a reason to suppress the address.
fn no_utf8_reply(which: &str) -> Reply {
    Reply::new(
        553,
        EnhancedCode::new(5, 6, 7),
        format!("Non-ASCII {which} address needs SMTPUTF8, which the provider does not offer"),
    )
}

/// `RCPT TO:<addr>` CRLF, without a temporary String.
fn push_rcpt(out: &mut Vec<u8>, addr: &str) {
    out.extend_from_slice(b"RCPT TO:<");
    out.extend_from_slice(addr.as_bytes());
    out.extend_from_slice(b">\r\n");
}
