//! The concurrency layer: at most `limit` leases exist at once. The permit is moved into
//! the response (the [`Lease`](super::Lease)) and freed only when the lease is released
//! or dropped.
//!
//! Why not `tower::limit::ConcurrencyLimit`: it frees its permit when the response
//! future completes, i.e. as soon as the connection is handed out, so it would bound
//! only the *handing out*, not the connections in use. We need the permit to live as
//! long as the lease.
//!
//! The limit itself is not kept here: [`ConcurrencyLimit`] observes it on a watch
//! channel — the controller's (`Controller::watch_limit`), or one of its own for an
//! admission without the policy ([`ConcurrencyLimit::new`], [`ConcurrencyLimit::set_limit`]).
//! The semaphore follows the watched value before a lease is handed out and when one
//! comes back, and waiters wake on a change: it grows at once and shrinks lazily (permits returned
//! while over the limit are forgotten), so shrinking never waits for, revokes or
//! deadlocks on permits that are out. This layer must never let a waiter wait past the
//! request's deadline.

use super::error::UpstreamError;
use super::request::AdmissionRequest;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};

/// A limit on simultaneous leases that follows a watched value.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    sem: Arc<Semaphore>,
    /// The limit as its owner publishes it.
    watched: watch::Receiver<usize>,
    /// The owner, when this limit is its own (no controller).
    own: Option<watch::Sender<usize>>,
    /// The limit the semaphore's permits (plus `debt`) were last sized for; changed only
    /// under `resizing`.
    applied: AtomicUsize,
    resizing: Mutex<()>,
    /// Permits to forget as they come back (the limit shrank while they were out).
    debt: AtomicUsize,
    in_use: AtomicUsize,
    max_in_use: AtomicUsize,
}

impl ConcurrencyLimit {
    /// A limit of its own, `n` (at least 1), changed with [`ConcurrencyLimit::set_limit`].
    pub fn new(n: usize) -> Arc<Self> {
        let (tx, rx) = watch::channel(n.max(1));
        Self::build(rx, Some(tx))
    }

    /// A limit that follows `limit` (the controller's): it changes when its owner
    /// publishes a new value, and only then.
    pub fn following(limit: watch::Receiver<usize>) -> Arc<Self> {
        Self::build(limit, None)
    }

    fn build(watched: watch::Receiver<usize>, own: Option<watch::Sender<usize>>) -> Arc<Self> {
        let n = (*watched.borrow()).max(1);
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(n)),
            watched,
            own,
            applied: AtomicUsize::new(n),
            resizing: Mutex::new(()),
            debt: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            max_in_use: AtomicUsize::new(0),
        })
    }

    /// The current limit (at least 1).
    pub fn limit(&self) -> usize {
        (*self.watched.borrow()).max(1)
    }

    /// Permits held right now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Most permits ever held at once (for tests and metrics).
    pub fn max_in_use(&self) -> usize {
        self.max_in_use.load(Ordering::Acquire)
    }

    /// Changes a limit of its own (at least 1). Growing frees waiters at once; shrinking
    /// takes free permits away now and the rest as leases come back. A limit that
    /// follows the controller changes only through the controller: ignored there.
    pub fn set_limit(&self, n: usize) {
        match &self.own {
            Some(tx) => {
                tx.send_replace(n.max(1));
                self.follow();
            }
            None => tracing::warn!("the controller owns this connection limit; set_limit ignored"),
        }
    }

    /// Sizes the semaphore for the watched limit, if it changed since the last time.
    fn follow(&self) {
        let n = self.limit();
        if n == self.applied.load(Ordering::Acquire) {
            return;
        }
        // Whole-value updates only: a poisoned lock guards a consistent count.
        let _resizing = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.applied.load(Ordering::Acquire);
        if n == old {
            return;
        }
        tracing::info!(connections = n, "concurrency limit changed");
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
        } else {
            let shrink = old - n;
            let forgotten = self.sem.forget_permits(shrink);
            self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        // Last: whoever sees the new value finds the semaphore already resized (and
        // whoever does not waits for the lock above).
        self.applied.store(n, Ordering::Release);
    }

    /// Forgets free permits while a shrink is still owed: a permit can come back to the
    /// semaphore without passing through [`Permit`]'s drop (a waiter that gave up, or
    /// left its wait to follow a change, hands back what it had been assigned).
    fn pay_debt(&self) {
        while self.debt.load(Ordering::Acquire) > 0 {
            let Ok(p) = self.sem.try_acquire() else {
                return;
            };
            let owed = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                .is_ok();
            if owed {
                p.forget();
            } else {
                return;
            }
        }
    }

    /// Waits for a permit (callers bound the wait), following the limit while waiting.
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, UpstreamError> {
        self.follow();
        self.pay_debt();
        let p = match self.sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(UpstreamError::Unusable),
            Err(tokio::sync::TryAcquireError::NoPermits) => self.wait().await?,
        };
        let now = self.in_use.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_in_use.fetch_max(now, Ordering::AcqRel);
        Ok(Permit {
            inner: Some(p),
            limit: self.clone(),
        })
    }

    /// No permit free: waits for one to come back or for the limit to grow.
    async fn wait(&self) -> Result<OwnedSemaphorePermit, UpstreamError> {
        let mut changes = self.watched.clone();
        loop {
            // Seen before it is applied: a change after this wakes the wait below.
            changes.borrow_and_update();
            self.follow();
            self.pay_debt();
            tokio::select! {
                // A change first: a permit handed back meanwhile is only taken after the
                // new limit was followed (a shrink may take it away).
                biased;
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The owner is gone: the limit stays as it is.
                        return self
                            .sem
                            .clone()
                            .acquire_owned()
                            .await
                            .map_err(|_| UpstreamError::Unusable);
                    }
                }
                p = self.sem.clone().acquire_owned() => {
                    return p.map_err(|_| UpstreamError::Unusable);
                }
            }
        }
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
        // Follow first: a shrink published before this permit comes back (the reply
        // that lowered the limit is often this lease's) must take it, not a waiter.
        self.limit.follow();
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

#[cfg(test)]
mod tests {
    //! The no-deadlock properties, with the limit driven the way the controller drives
    //! it: through the watch channel.
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(5);

    fn driven(n: usize) -> (watch::Sender<usize>, Arc<ConcurrencyLimit>) {
        let (tx, rx) = watch::channel(n);
        (tx, ConcurrencyLimit::following(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn limits_permits() {
        let (_tx, limit) = driven(2);
        let a = limit.acquire().await.unwrap();
        let _b = limit.acquire().await.unwrap();
        assert!(
            timeout(WAIT, limit.acquire()).await.is_err(),
            "a third at 2"
        );
        drop(a);
        assert!(timeout(WAIT, limit.acquire()).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn shrink_while_out_never_deadlocks_and_forgets_the_excess() {
        let (tx, limit) = driven(4);
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(limit.acquire().await.unwrap());
        }
        // The owner shrinks below what is out: returns at once.
        tx.send_replace(1);
        assert_eq!(limit.limit(), 1);
        // A waiter gets a permit once enough have come back.
        let waiter = {
            let limit = limit.clone();
            tokio::spawn(async move { timeout(WAIT, limit.acquire()).await.map(|p| p.is_ok()) })
        };
        out.truncate(1); // three returned: all forgotten
        tokio::task::yield_now().await;
        assert_eq!(limit.sem.available_permits(), 0);
        out.clear(); // the last one goes back to the waiter
        assert!(matches!(waiter.await, Ok(Ok(true))));
        assert_eq!(limit.in_use(), 0);
        assert_eq!(limit.sem.available_permits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_zero_and_growth_wakes_waiters_and_cancels_pending_forgets() {
        let (tx, limit) = driven(3);
        let a = limit.acquire().await.unwrap();
        let b = limit.acquire().await.unwrap();
        tx.send_replace(0);
        assert_eq!(limit.limit(), 1);
        // Over the limit now; a waiter is woken by growth alone, nothing returned.
        let waiter = {
            let limit = limit.clone();
            tokio::spawn(async move { timeout(WAIT, limit.acquire()).await.map(|p| p.is_ok()) })
        };
        tokio::task::yield_now().await;
        tx.send_replace(5);
        assert!(matches!(waiter.await, Ok(Ok(true))));
        drop((a, b));
        assert_eq!(limit.in_use(), 0);
        assert_eq!(
            limit.sem.available_permits(),
            5,
            "no permit forgotten after growth"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn many_tasks_under_random_resizing_finish() {
        let (tx, limit) = driven(3);
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let limit = limit.clone();
            tasks.push(tokio::spawn(async move {
                let p = timeout(Duration::from_secs(600), limit.acquire()).await;
                tokio::time::sleep(Duration::from_millis(10 + i % 7)).await;
                drop(p);
            }));
        }
        for l in [1usize, 5, 2, 8, 1, 3].iter().cycle().take(30) {
            tx.send_replace(*l);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in tasks {
            assert!(timeout(Duration::from_secs(600), t).await.is_ok());
        }
        tx.send_replace(3);
        limit.follow();
        assert_eq!(limit.in_use(), 0);
        assert_eq!(limit.sem.available_permits(), 3);
        assert!(limit.max_in_use() <= 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_of_its_own_is_set_and_one_that_follows_is_not() {
        let own = ConcurrencyLimit::new(2);
        own.set_limit(4);
        assert_eq!(own.limit(), 4);
        let (_tx, follows) = driven(2);
        follows.set_limit(4);
        assert_eq!(follows.limit(), 2, "only the owner changes it");
    }
}
