//! The rate layer: GCRA limits (governor) on leases, from `RateConfig`: per second,
//! minute, hour and day, every one that is set applies; none set means unlimited. A
//! quota is a limit whose burst equals the quota (`per_hour = 500` allows 500 at once,
//! then one every 7.2 s).
//!
//! Each lease is one message slot. This layer must never let a waiter wait past the
//! request's deadline. Known simplification: with several limits, a slot taken from an
//! earlier limit is not given back when a later one makes the request time out (the
//! limits are waited on longest window first, so a spent quota burns nothing else).

use super::error::UpstreamError;
use super::request::AdmissionRequest;
use crate::config::RateConfig;
use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// All configured limits.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Each limiter with its window (1 s, 60 s, 3600 s, 86 400 s).
    limiters: Vec<(Duration, DefaultDirectRateLimiter)>,
    /// Slots handed out since start (for the queue's persistent quota ledger).
    taken: AtomicU64,
}

impl RateLimits {
    pub fn new(cfg: &RateConfig) -> Arc<Self> {
        // Longest window first: a waiter blocks on a spent daily quota before it takes
        // a cell of the shorter limits, so waiting out a spent quota (and timing out)
        // does not burn the hourly or per-minute cells meanwhile.
        let windows = [
            (cfg.per_day, Duration::from_secs(86_400)),
            (cfg.per_hour, Duration::from_secs(3600)),
            (cfg.per_minute, Duration::from_secs(60)),
            (cfg.per_second, Duration::from_secs(1)),
        ];
        let limiters = windows
            .into_iter()
            .filter_map(|(n, window)| {
                let n = NonZeroU32::new(n?)?;
                let quota = Quota::with_period(window / n.get())?.allow_burst(n);
                Some((window, RateLimiter::direct(quota)))
            })
            .collect();
        Arc::new(Self {
            limiters,
            taken: AtomicU64::new(0),
        })
    }

    /// Counts messages already sent before a restart against the hourly and daily
    /// quotas (`last_hour`, `last_day`: how many in the past hour / day), so a restart
    /// does not hand out a spent quota again. Conservative: the slots count as taken
    /// now, so they come back a little later than they really would.
    pub fn preload(&self, last_hour: u32, last_day: u32) {
        for (window, l) in &self.limiters {
            let n = match window.as_secs() {
                3600 => last_hour,
                86_400 => last_day,
                _ => continue,
            };
            // Take what the quota still has, at most `n` (check_n refuses more than
            // the burst, so take one by one until the limiter says no).
            for _ in 0..n {
                if l.check().is_err() {
                    break;
                }
            }
        }
    }

    /// Slots handed out since start.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// No limit configured.
    pub fn is_unlimited(&self) -> bool {
        self.limiters.is_empty()
    }

    /// Waits until every limit allows one more message.
    pub async fn until_ready(&self) {
        for (_, l) in &self.limiters {
            l.until_ready().await;
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
    }
}

/// Layer for [`RateLimit`].
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limits: Arc<RateLimits>,
}

impl RateLimitLayer {
    pub fn new(limits: Arc<RateLimits>) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// Waits for a rate slot (by the request's deadline), then calls the inner service.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    limits: Arc<RateLimits>,
}

impl<S> Service<AdmissionRequest> for RateLimit<S>
where
    S: Service<AdmissionRequest, Error = UpstreamError> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
{
    type Response = S::Response;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<S::Response, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the rate slot, awaited (with a deadline) in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: AdmissionRequest) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limits.clone();
        Box::pin(async move {
            if !limits.is_unlimited() {
                tokio::time::timeout_at(req.deadline, limits.until_ready())
                    .await
                    .map_err(|_| UpstreamError::Busy(req.wait))?;
            }
            inner.oneshot(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn quota_is_a_burst_of_the_whole_quota() {
        let limits = RateLimits::new(&RateConfig {
            per_day: Some(200),
            per_hour: Some(500),
            ..RateConfig::default()
        });
        for _ in 0..200 {
            assert!(limits.until_ready().now_or_never().is_some());
        }
        assert!(limits.until_ready().now_or_never().is_none());
    }

    #[test]
    fn preload_spends_quota_sent_before_a_restart() {
        let limits = RateLimits::new(&RateConfig {
            per_day: Some(10),
            per_minute: Some(100),
            ..RateConfig::default()
        });
        limits.preload(3, 7);
        for _ in 0..3 {
            assert!(limits.until_ready().now_or_never().is_some());
        }
        assert!(
            limits.until_ready().now_or_never().is_none(),
            "7 + 3 = the day's 10"
        );
        assert_eq!(limits.taken(), 3);
        // More than the quota: just spent, no panic.
        let l = RateLimits::new(&RateConfig {
            per_hour: Some(2),
            ..RateConfig::default()
        });
        l.preload(50, 50);
        assert!(l.until_ready().now_or_never().is_none());
    }

    #[test]
    fn a_spent_daily_quota_does_not_burn_the_hourly_one() {
        let limits = RateLimits::new(&RateConfig {
            per_day: Some(2),
            per_hour: Some(3),
            ..RateConfig::default()
        });
        for _ in 0..2 {
            assert!(limits.until_ready().now_or_never().is_some());
        }
        // Ten waiters give up on the spent daily quota ...
        for _ in 0..10 {
            assert!(limits.until_ready().now_or_never().is_none());
        }
        // ... and the hourly limit still has its third cell.
        let hour = &limits.limiters[1];
        assert_eq!(hour.0, Duration::from_secs(3600));
        assert!(hour.1.check().is_ok(), "hourly cell burnt by waiters");
    }

    #[test]
    fn nothing_set_is_unlimited() {
        let limits = RateLimits::new(&RateConfig::default());
        assert!(limits.is_unlimited());
        assert!(limits.until_ready().now_or_never().is_some());
    }
}
