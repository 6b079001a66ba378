//! Queue mode's glue on the inbound side: implements the server's [`Relay`] over the
//! durable [`Spool`]. MAIL and RCPT are accepted at once (suppressed recipients were
//! already answered by `SuppressingRelay`); DATA is written to the spool's `tmp/` file as
//! it arrives (no message is held in memory), and at its end the file is fsynced and the
//! record committed; only then does the mailer get `250 2.0.0 queued as <id>`. A refused
//! message (too big, bad line, framing error, lost session) leaves nothing behind.
//!
//! It must never answer 2xx before the message is durable; any storage failure (disk
//! full, spool not writable) is `452 4.3.1`, so the mailer keeps the message.

use crate::queue::spool::BodyWriter;
use crate::queue::Spool;
use crate::server::relay::{BodySink, Relay, RelayTransaction};
use crate::smtp::{EnhancedCode, Envelope, Reply};
use std::sync::Arc;
use tokio::sync::Notify;

/// The queue relay: one spool shared by all mailer sessions.
#[derive(Clone)]
pub struct QueueRelay {
    spool: Arc<Spool>,
    /// Wakes the delivery engine when a message was queued.
    wake: Arc<Notify>,
    /// The provider's message size limit (profile, EHLO `SIZE`): a message over it is
    /// refused at MAIL or DATA instead of queued and bounced later.
    size: Option<Arc<crate::upstream::settings::MessageSize>>,
}

impl QueueRelay {
    pub fn new(spool: Arc<Spool>, wake: Arc<Notify>) -> Self {
        Self {
            spool,
            wake,
            size: None,
        }
    }

    /// Takes only messages within the provider's limit `size`.
    pub fn with_size_limit(mut self, size: Arc<crate::upstream::settings::MessageSize>) -> Self {
        self.size = Some(size);
        self
    }
}

/// A transaction being collected: the envelope so far.
pub struct QueueTx {
    spool: Arc<Spool>,
    wake: Arc<Notify>,
    env: Envelope,
    rcpts: Vec<String>,
}

/// A message body going straight into the spool's `tmp/` file as DATA arrives; dropped
/// (message refused, session gone) it deletes the file.
pub struct QueueBody(BodyWriter);

impl BodySink for QueueBody {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), Reply> {
        self.0.write(chunk).await.map_err(|e| {
            tracing::error!("queue: message not stored, mailer told to retry: {e}");
            e.smtp_reply()
        })
    }
}

fn rcpt_ok() -> Reply {
    Reply::new(250, EnhancedCode::new(2, 1, 5), "Recipient ok")
}

impl Relay for QueueRelay {
    type Tx = QueueTx;

    fn max_message_size(&self) -> Option<usize> {
        self.size.as_ref().and_then(|s| s.limit())
    }

    async fn begin(
        &self,
        env: Envelope,
        rcpts: Vec<String>,
    ) -> Result<(QueueTx, Reply, Vec<Reply>), Reply> {
        let replies = vec![rcpt_ok(); rcpts.len()];
        let tx = QueueTx {
            spool: self.spool.clone(),
            wake: self.wake.clone(),
            env,
            rcpts,
        };
        Ok((
            tx,
            Reply::new(250, EnhancedCode::new(2, 1, 0), "Sender ok"),
            replies,
        ))
    }
}

impl RelayTransaction for QueueTx {
    type Body = QueueBody;

    async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
        let replies = vec![rcpt_ok(); rcpts.len()];
        self.rcpts.extend(rcpts);
        Ok(replies)
    }

    async fn body(&mut self) -> Result<QueueBody, Reply> {
        match self.spool.create_body().await {
            Ok(w) => Ok(QueueBody(w)),
            Err(e) => {
                tracing::error!("queue: cannot take a message, mailer told to retry: {e}");
                Err(e.smtp_reply())
            }
        }
    }

    async fn data(&mut self, body: QueueBody) -> Reply {
        if self.rcpts.is_empty() {
            return Reply::new(554, EnhancedCode::new(5, 5, 1), "No valid recipients");
        }
        match self.spool.commit(body.0, &self.env, &self.rcpts).await {
            Ok(id) => {
                self.wake.notify_one();
                Reply::new(
                    250,
                    EnhancedCode::new(2, 0, 0),
                    format!("Ok: queued as {id}"),
                )
            }
            Err(e) => {
                tracing::error!("queue: message not stored, mailer told to retry: {e}");
                e.smtp_reply()
            }
        }
    }

    async fn end(self) {}
}
