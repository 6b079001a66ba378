//! What an inbound session needs from whatever carries its mail onward. The session
//! knows nothing about upstream connections, pools or queues: `cli` wires an
//! implementation (passthrough: `upstream::Admission`) into the server. Tests use
//! scripted implementations.
//!
//! Contract: a reply returned here is relayed to the mailer verbatim. An implementation
//! must never return a 2xx it did not get from the provider (passthrough), and must turn
//! every failure (admission timeout, unreachable provider, lost connection) into a 4xx
//! reply that says why — never hang, never panic.

use crate::smtp::{Envelope, Reply};
use std::future::Future;

pub trait Relay: Send + Sync + 'static {
    type Tx: RelayTransaction;

    /// Starts a transaction: admission (bounded wait), then MAIL FROM and the given
    /// recipients upstream (pipelined when the provider allows). On success returns the
    /// open transaction, the provider's MAIL reply and one reply per recipient. `Err` is
    /// the reply for the mailer's MAIL FROM when no transaction could be started (the
    /// provider's own MAIL reply if it refused, or a local 4xx).
    fn begin(
        &self,
        env: Envelope,
        rcpts: Vec<String>,
    ) -> impl Future<Output = Result<(Self::Tx, Reply, Vec<Reply>), Reply>> + Send;
}

pub trait RelayTransaction: Send + 'static {
    /// More recipients; one reply each. `Err`: the transaction is dead (connection lost)
    /// and the reply (4xx) answers every one of them.
    fn rcpt(
        &mut self,
        rcpts: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Reply>, Reply>> + Send;

    /// DATA upstream, the message (unstuffed, CRLF line ends) and the final reply. If the
    /// provider does not answer 354, its reply is returned. A lost connection or a timeout
    /// is a 4xx: the mailer must not believe the message was sent.
    fn data(&mut self, message: Vec<u8>) -> impl Future<Output = Reply> + Send;

    /// Ends the transaction (RSET if needed) and gives the connection back for reuse.
    /// Dropping a transaction without `end` closes its connection instead.
    fn end(self) -> impl Future<Output = ()> + Send;
}
