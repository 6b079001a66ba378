//! A resizable permit pool: at most `limit` permits out at once, and the limit can change
//! while permits are out. It must never deadlock when it shrinks (permits out beyond the
//! new limit are forgotten as they come back, nobody waits for them), never shrink to
//! zero (the minimum is 1), and never hand out more than the limit once the excess has
//! come back. This is the only async piece of `policy`.

use std::sync::{Arc, Mutex};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
struct Inner {
    sem: Arc<Semaphore>,
    /// `limit` and how many returning permits must be forgotten to reach it.
    state: Mutex<(usize, usize)>,
}

/// The pool. Cheap to clone; clones share the permits.
#[derive(Debug, Clone)]
pub struct PermitPool {
    inner: Arc<Inner>,
}

/// A permit; returns to the pool (or is forgotten, if the pool shrank) when dropped.
#[derive(Debug)]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    inner: Arc<Inner>,
}

/// The pool was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("permit pool closed")]
pub struct PoolClosed;

impl From<AcquireError> for PoolClosed {
    fn from(_: AcquireError) -> Self {
        PoolClosed
    }
}

impl PermitPool {
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                sem: Arc::new(Semaphore::new(limit)),
                state: Mutex::new((limit, 0)),
            }),
        }
    }

    /// Waits for a permit.
    pub async fn acquire(&self) -> Result<Permit, PoolClosed> {
        let p = self.inner.sem.clone().acquire_owned().await?;
        Ok(self.wrap(p))
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<Permit> {
        let p = self.inner.sem.clone().try_acquire_owned().ok()?;
        Some(self.wrap(p))
    }

    fn wrap(&self, p: OwnedSemaphorePermit) -> Permit {
        Permit {
            permit: Some(p),
            inner: self.inner.clone(),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.inner.lock().0
    }

    /// Permits free right now.
    pub fn available(&self) -> usize {
        self.inner.sem.available_permits()
    }

    /// Changes the limit (clamped to at least 1). Growing first cancels pending
    /// forgets, then adds permits. Shrinking takes free permits at once and marks the
    /// rest to be forgotten when they come back: it never waits.
    pub fn set_limit(&self, limit: usize) {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        let mut st = self.inner.lock();
        let (old, pending) = *st;
        if limit > old {
            let grow = limit - old;
            let cancel = grow.min(pending);
            let add = grow - cancel;
            *st = (limit, pending - cancel);
            self.inner.sem.add_permits(add);
        } else if limit < old {
            let mut shrink = old - limit;
            // Take what is free now (bounded by `shrink`).
            while shrink > 0 {
                match self.inner.sem.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        shrink -= 1;
                    }
                    Err(_) => break,
                }
            }
            *st = (limit, pending + shrink);
        }
    }

    /// Closes the pool: waiting and future `acquire` calls fail.
    pub fn close(&self) {
        self.inner.sem.close();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            let mut st = self.inner.lock();
            if st.1 > 0 {
                st.1 -= 1;
                p.forget();
            } else {
                drop(st);
                drop(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn limits_permits() {
        let pool = PermitPool::new(2);
        let a = pool.acquire().await;
        let b = pool.acquire().await;
        assert!(a.is_ok() && b.is_ok());
        assert!(pool.try_acquire().is_none());
        drop(a);
        assert!(timeout(WAIT, pool.acquire()).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn shrink_while_out_never_deadlocks_and_forgets_the_excess() {
        let pool = PermitPool::new(4);
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(pool.acquire().await);
        }
        // Shrink below what is out: must return at once.
        timeout(WAIT, async { pool.set_limit(1) })
            .await
            .unwrap_or_else(|_| panic!("set_limit blocked"));
        assert_eq!(pool.limit(), 1);
        // A waiter is woken once enough permits have come back.
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { timeout(WAIT, pool.acquire()).await })
        };
        out.truncate(1); // three returned: all forgotten
        tokio::task::yield_now().await;
        assert_eq!(pool.available(), 0);
        out.clear(); // the last one goes back to the waiter
        let got = waiter.await.map(|r| r.map(|p| p.is_ok()));
        assert!(matches!(got, Ok(Ok(true))));
        assert_eq!(pool.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_zero_and_grow_cancels_pending_forgets() {
        let pool = PermitPool::new(3);
        let a = pool.acquire().await;
        let b = pool.acquire().await;
        pool.set_limit(0);
        assert_eq!(pool.limit(), 1);
        pool.set_limit(3);
        drop(a);
        drop(b);
        assert_eq!(pool.available(), 3);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(timeout(WAIT, pool.acquire()).await.is_ok());
        }
        assert_eq!(held, vec![true; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn many_tasks_under_random_resizing_finish() {
        let pool = PermitPool::new(3);
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let p = timeout(Duration::from_secs(600), pool.acquire()).await;
                tokio::time::sleep(Duration::from_millis(10 + i % 7)).await;
                drop(p);
            }));
        }
        for l in [1usize, 5, 2, 8, 1, 3].iter().cycle().take(30) {
            pool.set_limit(*l);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in tasks {
            assert!(timeout(Duration::from_secs(600), t).await.is_ok());
        }
        pool.set_limit(3);
        assert_eq!(pool.available(), 3);
    }
}
