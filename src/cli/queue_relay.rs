//! Queue mode's glue on the inbound side: implements the server's [`Relay`] over the
//! durable [`Spool`]. MAIL and RCPT are accepted at once (suppressed recipients were
//! already answered by `SuppressingRelay`); at the end of DATA the message is written
//! and fsynced, and only then does the mailer get `250 2.0.0 queued as <id>`.
//!
//! It must never answer 2xx before the message is durable; any storage failure (disk
//! full, spool not writable) is `452 4.3.1`, so the mailer keeps the message.

use crate::queue::Spool;
use crate::server::relay::{Relay, RelayTransaction};
use crate::smtp::{EnhancedCode, Envelope, Reply};
use std::sync::Arc;
use tokio::sync::Notify;

/// The queue relay: one spool shared by all mailer sessions.
#[derive(Clone)]
pub struct QueueRelay {
    spool: Arc<Spool>,
    /// Wakes the delivery engine when a message was queued.
    wake: Arc<Notify>,
}

impl QueueRelay {
    pub fn new(spool: Arc<Spool>, wake: Arc<Notify>) -> Self {
        Self { spool, wake }
    }
}

/// A transaction being collected: the envelope so far.
pub struct QueueTx {
    spool: Arc<Spool>,
    wake: Arc<Notify>,
    env: Envelope,
    rcpts: Vec<String>,
}

fn rcpt_ok() -> Reply {
    Reply::new(250, EnhancedCode::new(2, 1, 5), "Recipient ok")
}

impl Relay for QueueRelay {
    type Tx = QueueTx;

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
    async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
        let replies = vec![rcpt_ok(); rcpts.len()];
        self.rcpts.extend(rcpts);
        Ok(replies)
    }

    async fn data(&mut self, message: Vec<u8>) -> Reply {
        if self.rcpts.is_empty() {
            return Reply::new(554, EnhancedCode::new(5, 5, 1), "No valid recipients");
        }
        match self.spool.put(&self.env, &self.rcpts, &message).await {
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
