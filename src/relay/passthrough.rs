//! Passthrough mode's glue: implements the server's [`Relay`] over the upstream
//! [`Admission`] stack. MAIL FROM leases a pooled provider connection (bounded by
//! `admission_wait`), MAIL and the pipelined RCPTs go upstream in one write, and every
//! reply comes back verbatim. At the end of the transaction the connection returns to the
//! pool for any session.
//!
//! It never makes up a positive reply: every failure becomes the upstream error's 4xx,
//! and what reaches the mailer as the provider's reply has passed the upstream client's
//! one protocol guard (a `250` to DATA is an error there, so the mailer gets a 4xx, never
//! a `250` for a message that was not sent).
//!
//! A message is held in memory until its end (a bad one is refused before any of it is
//! relayed), in a [`BufferedBody`] counted against one [`BufferBudget`] for all sessions
//! (`server.passthrough_buffer`): memory stays bounded however many mailers send large
//! messages at once.
//!
//! Recipient quotas (`recipients_per_day`): the lease takes the recipients pipelined
//! with MAIL; each later RCPT takes its own from the quota without waiting, and one the
//! quota has no room for gets `451 4.7.0` and is not sent upstream.

use crate::server::relay::{BufferBudget, BufferedBody, Relay, RelayTransaction};
use crate::smtp::EnhancedCode;
use crate::smtp::{Envelope, Reply};
use crate::upstream::rate_limit::RateLimits;
use crate::upstream::{Admission, Lease};
use std::sync::Arc;

/// The passthrough relay: one shared admission stack for all mailer sessions.
#[derive(Clone)]
pub struct Passthrough {
    admission: Admission,
    buffer: Arc<BufferBudget>,
}

impl Passthrough {
    /// With the default buffer budget of `[server]`; see [`Passthrough::with_buffer`].
    pub fn new(admission: Admission) -> Self {
        let d = crate::config::ServerConfig::default();
        Self {
            admission,
            buffer: BufferBudget::new(d.passthrough_buffer, d.passthrough_buffer_wait),
        }
    }

    /// Message bodies of all sessions are held within `budget`.
    pub fn with_buffer(mut self, budget: Arc<BufferBudget>) -> Self {
        self.buffer = budget;
        self
    }
}

/// An open transaction on a leased connection.
pub struct PassthroughTx {
    lease: Lease,
    buffer: Arc<BufferBudget>,
    rates: Arc<RateLimits>,
    /// Recipients the lease already took from the recipient quotas but the transaction
    /// has not used yet (a lease takes at least one).
    prepaid: usize,
}

/// The reply for a recipient over the provider's daily recipient quota.
fn recipient_quota_spent() -> Reply {
    Reply::new(
        451,
        EnhancedCode::new(4, 7, 0),
        "The provider's daily recipient quota is spent; try this recipient again later",
    )
}

/// What identifies a passthrough message to the feedback path (a mailbox-full reply
/// counts once per message and day): all a transaction knows when RCPT is answered is
/// its envelope, so a mailer's retry of one message (same sender, same declared SIZE)
/// counts once. Two messages from one sender without SIZE may count as one: that errs
/// toward not suppressing.
fn envelope_identity(env: &Envelope) -> String {
    match env.size {
        Some(size) => format!("p:{}:{size}", env.from.to_lowercase()),
        None => format!("p:{}", env.from.to_lowercase()),
    }
}

impl Relay for Passthrough {
    type Tx = PassthroughTx;

    /// The provider's limit as its profile and its last EHLO `SIZE` say.
    fn max_message_size(&self) -> Option<usize> {
        self.admission.pool().settings().message_size.limit()
    }

    async fn begin(
        &self,
        env: Envelope,
        rcpts: Vec<String>,
    ) -> Result<(PassthroughTx, Reply, Vec<Reply>), Reply> {
        let mut lease = self
            .admission
            .lease_for(rcpts.len())
            .await
            .map_err(|e| e.to_reply())?;
        lease.set_message_identity(Some(&envelope_identity(&env)));
        match lease.envelope(&env, &rcpts).await {
            Ok((mail, replies)) if mail.class() == 2 => {
                let tx = PassthroughTx {
                    lease,
                    buffer: Arc::clone(&self.buffer),
                    rates: Arc::clone(self.admission.rates()),
                    prepaid: usize::from(rcpts.is_empty()),
                };
                let replies = replies.into_iter().map(Reply::from).collect();
                Ok((tx, mail.reply, replies))
            }
            Ok((mail, _)) => {
                // The provider refused MAIL: the connection is fine, give it back.
                lease.release().await;
                Err(mail.reply)
            }
            // Dropping the lease closes the broken connection and frees its permit.
            Err(e) => Err(e.to_reply()),
        }
    }
}

impl RelayTransaction for PassthroughTx {
    type Body = BufferedBody;

    async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
        let prepaid = self.prepaid.min(rcpts.len());
        self.prepaid -= prepaid;
        let more = u32::try_from(rcpts.len() - prepaid).unwrap_or(u32::MAX);
        if !self.rates.try_recipients(more) {
            // Nothing was taken: refuse the batch, the mailer retries these recipients.
            self.prepaid += prepaid;
            return Ok(vec![recipient_quota_spent(); rcpts.len()]);
        }
        match self.lease.rcpt(&rcpts).await {
            Ok(replies) => Ok(replies.into_iter().map(Reply::from).collect()),
            Err(e) => Err(e.to_reply()),
        }
    }

    async fn body(&mut self) -> Result<BufferedBody, Reply> {
        Ok(self.buffer.buffer())
    }

    async fn data(&mut self, message: BufferedBody) -> Reply {
        match self.lease.data(message.bytes()).await {
            Ok(answer) => answer.reply,
            Err(e) => e.to_reply(),
        }
    }

    async fn end(self) {
        self.lease.release().await
    }
}
