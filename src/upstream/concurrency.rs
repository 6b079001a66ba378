//! The concurrency layer: at most `limit` leases exist at once. The permit is moved into
//! the response (the [`Lease`](super::Lease)) and freed only when the lease is released
//! or dropped.
//!
//! Why not `tower::limit::ConcurrencyLimit`: it frees its permit when the response
//! future completes, i.e. as soon as the connection is handed out, so it would bound
//! only the *handing out*, not the connections in use. We need the permit to live as
//! long as the lease.
//!
//! The limit is an [`Arc<ConcurrencyLimit>`] shared with whoever wants to change it (the
//! future adaptive controller): [`ConcurrencyLimit::set_limit`] grows at once and shrinks
//! lazily (permits returned while over the limit are forgotten), so shrinking never
//! waits for, revokes or deadlocks on permits that are out. This layer must never let a
//! waiter wait past the request's deadline.

use super::admission::AdmissionRequest;
use super::error::UpstreamError;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};

/// A resizable limit on simultaneous leases.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    sem: Arc<Semaphore>,
    limit: Mutex<usize>,
    /// Permits to forget as they come back (the limit shrank while they were out).
    debt: AtomicUsize,
    in_use: AtomicUsize,
    max_in_use: AtomicUsize,
}

impl ConcurrencyLimit {
    /// A limit of `n` (at least 1).
    pub fn new(n: usize) -> Arc<Self> {
        let n = n.max(1);
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(n)),
            limit: Mutex::new(n),
            debt: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            max_in_use: AtomicUsize::new(0),
        })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        *self.limit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Permits held right now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Most permits ever held at once (for tests and metrics).
    pub fn max_in_use(&self) -> usize {
        self.max_in_use.load(Ordering::Acquire)
    }

    /// Changes the limit (at least 1). Growing frees waiters at once; shrinking takes
    /// free permits away now and the rest as leases come back.
    pub fn set_limit(&self, n: usize) {
        let n = n.max(1);
        let mut limit = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        let old = *limit;
        *limit = n;
        if n > old {
            let mut grow = n - old;
            // First cancel outstanding debt, then add real permits.
            while grow > 0 {
                let paid = self
                    .debt
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                    .is_ok();
                if !paid {
                    break;
                }
                grow -= 1;
            }
            self.sem.add_permits(grow);
        } else if n < old {
            let shrink = old - n;
            let forgotten = self.sem.forget_permits(shrink);
            self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }

    /// Waits for a permit (callers bound the wait).
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, UpstreamError> {
        let p = self
            .sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| UpstreamError::Unusable)?;
        let now = self.in_use.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_in_use.fetch_max(now, Ordering::AcqRel);
        Ok(Permit {
            inner: Some(p),
            limit: self.clone(),
        })
    }
}

/// One slot of a [`ConcurrencyLimit`]; freed on drop.
#[derive(Debug)]
pub struct Permit {
    inner: Option<OwnedSemaphorePermit>,
    limit: Arc<ConcurrencyLimit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.in_use.fetch_sub(1, Ordering::AcqRel);
        if let Some(p) = self.inner.take() {
            let owed = self
                .limit
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                .is_ok();
            if owed {
                p.forget();
            }
        }
    }
}

impl Permit {
    /// The limit this permit belongs to.
    pub fn limit(&self) -> &Arc<ConcurrencyLimit> {
        &self.limit
    }
}

/// A response that can carry the permit it was admitted under.
pub trait HoldPermit {
    fn hold_permit(&mut self, permit: Permit);
}

/// Layer for [`Concurrency`].
#[derive(Clone, Debug)]
pub struct ConcurrencyLayer {
    limit: Arc<ConcurrencyLimit>,
}

impl ConcurrencyLayer {
    pub fn new(limit: Arc<ConcurrencyLimit>) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for ConcurrencyLayer {
    type Service = Concurrency<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Concurrency {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// Acquires a permit (by the request's deadline), calls the inner service, and puts
/// the permit into the response.
#[derive(Clone, Debug)]
pub struct Concurrency<S> {
    inner: S,
    limit: Arc<ConcurrencyLimit>,
}

impl<S> Service<AdmissionRequest> for Concurrency<S>
where
    S: Service<AdmissionRequest, Error = UpstreamError> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: HoldPermit + Send,
{
    type Response = S::Response;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<S::Response, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the permit, which is awaited (with a deadline) in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: AdmissionRequest) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit.clone();
        Box::pin(async move {
            let permit = tokio::time::timeout_at(req.deadline, limit.acquire())
                .await
                .map_err(|_| UpstreamError::Busy(req.wait))??;
            let mut resp = inner.oneshot(req).await?;
            resp.hold_permit(permit);
            Ok(resp)
        })
    }
}
