//! Passthrough mode's glue: implements the server's [`Relay`] over the upstream
//! [`Admission`] stack. MAIL FROM leases a pooled provider connection (bounded by
//! `admission_wait`), MAIL and the pipelined RCPTs go upstream in one write, and every
//! reply comes back verbatim. At the end of the transaction the connection returns to the
//! pool for any session.
//!
//! It never makes up a positive reply: every failure becomes the upstream error's 4xx.

use crate::server::relay::{Relay, RelayTransaction};
use crate::smtp::{Envelope, Reply};
use crate::upstream::{Admission, Lease};

/// The passthrough relay: one shared admission stack for all mailer sessions.
#[derive(Clone)]
pub struct Passthrough {
    admission: Admission,
}

impl Passthrough {
    pub fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

/// An open transaction on a leased connection.
pub struct PassthroughTx {
    lease: Lease,
}

impl Relay for Passthrough {
    type Tx = PassthroughTx;

    async fn begin(
        &self,
        env: Envelope,
        rcpts: Vec<String>,
    ) -> Result<(PassthroughTx, Reply, Vec<Reply>), Reply> {
        let mut lease = self.admission.lease().await.map_err(|e| e.to_reply())?;
        match lease.envelope(&env, &rcpts).await {
            Ok((mail, replies)) if mail.class() == 2 => {
                Ok((PassthroughTx { lease }, mail, replies))
            }
            Ok((mail, _)) => {
                // The provider refused MAIL: the connection is fine, give it back.
                lease.release().await;
                Err(mail)
            }
            // Dropping the lease closes the broken connection and frees its permit.
            Err(e) => Err(e.to_reply()),
        }
    }
}

impl RelayTransaction for PassthroughTx {
    async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
        self.lease.rcpt(&rcpts).await.map_err(|e| e.to_reply())
    }

    async fn data(&mut self, message: Vec<u8>) -> Reply {
        self.lease
            .data(&message)
            .await
            .unwrap_or_else(|e| e.to_reply())
    }

    async fn end(self) {
        self.lease.release().await
    }
}
