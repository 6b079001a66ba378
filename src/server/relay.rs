//! What an inbound session needs from whatever carries its mail onward. The session
//! knows nothing about upstream connections, pools or queues: `cli` wires an
//! implementation (passthrough: `upstream::Admission`; queue mode: the spool) into the
//! server. Tests use scripted implementations.
//!
//! Contract: a reply returned here is relayed to the mailer verbatim. An implementation
//! must never return a 2xx it did not get from the provider (passthrough) or before the
//! message is durable (queue), and must turn every failure (admission timeout,
//! unreachable provider, lost connection, full disk, no memory budget left) into a 4xx
//! reply that says why — never hang, never panic.
//!
//! # The message body
//!
//! The session never holds a whole message: it hands the body over in chunks as it
//! decodes DATA ([`RelayTransaction::body`] gives it a [`BodySink`]; each decoded chunk
//! goes to [`BodySink::write`]; at the end of DATA the sink goes back to
//! [`RelayTransaction::data`]). Queue mode writes the chunks to the spool file as they
//! come. A relay that must have the whole message before it can act (passthrough
//! refuses a bad message before relaying any of it) keeps it in a [`BufferedBody`],
//! whose bytes count against one [`BufferBudget`] shared by every session: a session
//! that would exceed it waits for room, at most the budget's wait, then the message is
//! refused with `451 4.3.1`. A sink dropped without `data` (the message was refused,
//! the session ended) must leave nothing behind.

use crate::smtp::{EnhancedCode, Envelope, Reply};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

    /// The largest message this relay can carry on now (the provider's own limit, as far
    /// as it is known), or `None` for no limit of its own. The session advertises
    /// (EHLO `SIZE`) and enforces (MAIL `SIZE=`, DATA) the smaller of this and
    /// `server.max_message_size`, so a message the provider would refuse is refused
    /// with `552 5.3.4` before it is taken.
    fn max_message_size(&self) -> Option<usize> {
        None
    }
}

/// Where the session puts the message body while DATA arrives.
pub trait BodySink: Send + 'static {
    /// Appends decoded message bytes (unstuffed, CRLF line ends). `Err`: the message
    /// cannot be taken (the reply, a 4xx, says why); the session reads the rest of DATA
    /// without keeping it, drops the sink and answers with that reply.
    fn write(&mut self, chunk: &[u8]) -> impl Future<Output = Result<(), Reply>> + Send;
}

/// An unbounded in-memory body, for relays that take a message at once (tests, the
/// demo's simulated provider). Real relays stream it or use a [`BufferedBody`].
impl BodySink for Vec<u8> {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), Reply> {
        self.extend_from_slice(chunk);
        Ok(())
    }
}

pub trait RelayTransaction: Send + 'static {
    /// What the body is written to while DATA arrives.
    type Body: BodySink;

    /// More recipients; one reply each. `Err`: the transaction is dead (connection lost)
    /// and the reply (4xx) answers every one of them.
    fn rcpt(
        &mut self,
        rcpts: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Reply>, Reply>> + Send;

    /// A new, empty body for the message that DATA is about to bring. `Err`: no message
    /// can be taken now (e.g. the spool cannot create a file); the reply answers DATA
    /// instead of `354`.
    fn body(&mut self) -> impl Future<Output = Result<Self::Body, Reply>> + Send;

    /// The end of DATA: the whole message is in `body` (it was written without error and
    /// the session found nothing wrong with it). Passthrough: DATA upstream, the
    /// message, the final reply (if the provider does not answer 354, its reply); queue
    /// mode: made durable, then `250`. A lost connection, a timeout or a failed write is
    /// a 4xx: the mailer must not believe the message was taken.
    fn data(&mut self, body: Self::Body) -> impl Future<Output = Reply> + Send;

    /// Ends the transaction (RSET if needed) and gives the connection back for reuse.
    /// Dropping a transaction without `end` closes its connection instead.
    fn end(self) -> impl Future<Output = ()> + Send;
}

/// The reply for a message that found no room in the [`BufferBudget`] in time.
pub fn no_buffer_room() -> Reply {
    Reply::new(
        451,
        EnhancedCode::new(4, 3, 1),
        "Too much mail in transit, try again later",
    )
}

/// The bytes of message bodies all sessions together may hold in memory, and how long a
/// session waits for room before its message is refused. Share one per server.
#[derive(Debug)]
pub struct BufferBudget {
    permits: Arc<Semaphore>,
    total: usize,
    wait: Duration,
}

/// A buffer grows by at least this (less only up to the message's end)...
const GROW_MIN: usize = 64 * 1024;
/// ...and by at most this at a time, so the room it holds beyond its bytes stays small.
const GROW_MAX: usize = 4 * 1024 * 1024;

impl BufferBudget {
    /// `total` bytes (at most `Semaphore::MAX_PERMITS`, about 2^61), `wait` for room.
    pub fn new(total: usize, wait: Duration) -> Arc<Self> {
        let total = total.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            wait,
        })
    }

    /// An empty body counting against this budget.
    pub fn buffer(self: &Arc<Self>) -> BufferedBody {
        BufferedBody {
            budget: Arc::clone(self),
            buf: Vec::new(),
            held: None,
        }
    }

    /// Bytes not held by any body right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Takes `n` more bytes of room, waiting at most the budget's wait.
    async fn take(&self, n: usize) -> Result<OwnedSemaphorePermit, Reply> {
        let n = u32::try_from(n).map_err(|_| no_buffer_room())?;
        if n as usize > self.total {
            return Err(no_buffer_room());
        }
        match tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_many_owned(n)).await
        {
            Ok(Ok(p)) => Ok(p),
            // Closed (never done) or timed out: no room.
            Ok(Err(_)) | Err(_) => Err(no_buffer_room()),
        }
    }
}

/// A message body held in memory, its allocation counted against a [`BufferBudget`]
/// until it is dropped.
#[derive(Debug)]
pub struct BufferedBody {
    budget: Arc<BufferBudget>,
    buf: Vec<u8>,
    /// Room held: the buffer's capacity.
    held: Option<OwnedSemaphorePermit>,
}

impl BufferedBody {
    /// The message so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

impl BodySink for BufferedBody {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), Reply> {
        let need = self.buf.len().saturating_add(chunk.len());
        let cap = self.buf.capacity();
        if need > cap {
            // The room is counted by capacity, the memory really taken; it grows in
            // bounded steps so a large message holds little beyond its bytes.
            let step = (cap / 2).clamp(GROW_MIN, GROW_MAX);
            let new_cap = need.max(cap.saturating_add(step));
            let more = self.budget.take(new_cap - cap).await?;
            match &mut self.held {
                Some(p) => p.merge(more),
                None => self.held = Some(more),
            }
            self.buf.reserve_exact(new_cap - self.buf.len());
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_would_exceed_the_budget_waits_then_is_refused_451() {
        let budget = BufferBudget::new(256 * 1024, Duration::from_secs(5));
        let mut a = budget.buffer();
        a.write(&[b'a'; 200 * 1024]).await.unwrap();
        assert!(budget.available() < 64 * 1024, "{}", budget.available());
        // b does not fit while a holds its room: it waits the budget's wait, then 451.
        let mut b = budget.buffer();
        let started = tokio::time::Instant::now();
        let err = b.write(&[b'b'; 100 * 1024]).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(
            (err.code, err.enhanced),
            (451, Some(EnhancedCode::new(4, 3, 1)))
        );
        // Room frees while c waits: c goes on.
        let mut c = budget.buffer();
        let freer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(a);
        });
        c.write(&[b'c'; 100 * 1024]).await.unwrap();
        freer.await.unwrap();
        assert_eq!(c.bytes().len(), 100 * 1024);
        drop((b, c));
        assert_eq!(budget.available(), budget.total(), "all room given back");
    }

    #[tokio::test(start_paused = true)]
    async fn the_room_held_is_the_capacity_and_grows_in_bounded_steps() {
        let budget = BufferBudget::new(64 * 1024 * 1024, Duration::from_secs(1));
        let mut a = budget.buffer();
        for _ in 0..(20 * 1024) {
            a.write(&[b'x'; 1024]).await.unwrap();
        }
        let held = budget.total() - budget.available();
        assert_eq!(a.bytes().len(), 20 * 1024 * 1024);
        assert!(held >= a.bytes().len(), "{held}");
        assert!(held <= a.bytes().len() + GROW_MAX, "{held}");
        // A message larger than the whole budget can never fit: refused at once.
        let small = BufferBudget::new(1024, Duration::from_secs(1));
        let mut b = small.buffer();
        assert_eq!(b.write(&[0; 2048]).await.unwrap_err().code, 451);
    }
}
