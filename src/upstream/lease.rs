//! A [`Lease`]: one provider connection plus the concurrency permit it was admitted
//! under, for one or more transactions of one caller; and [`PoolService`], the bottom of
//! the admission stack that checks one out of the pool.
//!
//! `release()` RSETs if needed and gives the connection back to the pool, then frees
//! the permit (in that order, so the next waiter finds the connection idle). Dropping a
//! lease without `release()` closes the connection and frees the permit. A lease must
//! never outlive its permit, and nothing here may block or deadlock in `Drop`.

use super::client::Connection;
use super::concurrency::{HoldPermit, Permit};
use super::error::UpstreamError;
use super::pool::Pool;
use super::request::AdmissionRequest;
use futures::future::BoxFuture;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

pub struct Lease {
    /// `Some` from creation until `release` or drop.
    conn: Option<Connection>,
    pool: Arc<Pool>,
    permit: Option<Permit>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("conn", &self.conn)
            .field("permit", &self.permit.is_some())
            .finish()
    }
}

impl Lease {
    pub(crate) fn new(conn: Connection, pool: Arc<Pool>) -> Self {
        Self {
            conn: Some(conn),
            pool,
            permit: None,
        }
    }

    /// Ends the lease: RSET when a transaction was begun and the connection is still
    /// usable, back to the pool (or closed), then the permit is freed.
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            // Open connections are the leases plus the idle ones. If the limit shrank
            // while this lease was out, close it instead of pooling it.
            let over = self
                .permit
                .as_ref()
                .is_some_and(|p| p.limit().in_use() + self.pool.idle_count() > p.limit().limit());
            if over {
                tracing::debug!("concurrency limit lowered; closing provider connection");
                self.pool.close(conn).await;
            } else {
                self.pool.put(conn).await;
            }
        }
        drop(self.permit.take());
    }
}

impl HoldPermit for Lease {
    fn hold_permit(&mut self, permit: Permit) {
        self.permit = Some(permit);
    }
}

impl Deref for Lease {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Invariant: `conn` is only taken by `release(self)` and `drop`, after which no
        // deref can happen.
        self.conn
            .as_ref()
            .expect("lease holds its connection until released")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("lease holds its connection until released")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.dropped();
            tracing::debug!("lease dropped without release; provider connection closed");
        }
        // The permit (if any) drops after the connection.
    }
}

/// The bottom of the admission stack: a [`Lease`] on a pooled or new connection
/// (without a permit; the concurrency layer adds it).
#[derive(Clone, Debug)]
pub struct PoolService {
    pool: Arc<Pool>,
}

impl PoolService {
    pub fn new(pool: Arc<Pool>) -> Self {
        Self { pool }
    }
}

impl Service<AdmissionRequest> for PoolService {
    type Response = Lease;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<Lease, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: AdmissionRequest) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            let conn = pool.take_until(Some(req.deadline)).await?;
            Ok(Lease::new(conn, pool))
        })
    }
}
