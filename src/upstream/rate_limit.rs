//! The rate layer: GCRA limits (governor) on leases, from `RateConfig`: per second,
//! minute, hour and day, every one that is set applies; none set means unlimited. A
//! quota is a limit whose burst equals the quota (`per_hour = 500` allows 500 at once,
//! then one every 7.2 s).
//!
//! A reload replaces the limits ([`RateLimits::replace`]) for the next lease: the new
//! limiters start full, less what the old hourly and daily ones had handed out (so a
//! reload does not hand out a spent quota again); waiters already queued on the old
//! limiters finish waiting on them.
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
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

type Limiters = Arc<Vec<(Duration, DefaultDirectRateLimiter)>>;

/// All configured limits.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Each limiter with its window (1 s, 60 s, 3600 s, 86 400 s); swapped whole by a
    /// reload (never held across an await: waiters clone the `Arc`).
    limiters: RwLock<Limiters>,
    /// What they were built from.
    config: RwLock<RateConfig>,
    /// Slots handed out since start (for the queue's persistent quota ledger).
    taken: AtomicU64,
    /// Slots handed out per window (hour, day) since the window began (a fixed window,
    /// restarted when it has passed: a cheap upper bound of the sliding one), so a
    /// reload carries the spent part of a quota over.
    spent: std::sync::Mutex<Vec<(Duration, std::time::Instant, u64)>>,
}

impl RateLimits {
    pub fn new(cfg: &RateConfig) -> Arc<Self> {
        let me = Self::default();
        me.install(cfg, 0, 0);
        Arc::new(me)
    }

    /// The limits now in force.
    pub fn config(&self) -> RateConfig {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the limits (a reload) for the next lease; the hourly and daily quotas
    /// count what the old ones had handed out. Returns whether anything changed.
    pub fn replace(&self, cfg: &RateConfig) -> bool {
        if self.config() == *cfg {
            return false;
        }
        self.count_spent(0, 0);
        let spent = |secs: u64| {
            self.spent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(w, _, _)| w.as_secs() == secs)
                .map_or(0, |(_, _, n)| u32::try_from(*n).unwrap_or(u32::MAX))
        };
        let (hour, day) = (spent(3600), spent(86_400));
        self.install(cfg, hour, day);
        true
    }

    fn install(&self, cfg: &RateConfig, last_hour: u32, last_day: u32) {
        let limiters = Self::build(cfg);
        let now = std::time::Instant::now();
        *self.spent.lock().unwrap_or_else(|e| e.into_inner()) = [3600u64, 86_400]
            .into_iter()
            .map(|s| (Duration::from_secs(s), now, 0))
            .collect();
        *self.limiters.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(limiters);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = cfg.clone();
        self.preload(last_hour, last_day);
    }

    fn current(&self) -> Limiters {
        self.limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn build(cfg: &RateConfig) -> Vec<(Duration, DefaultDirectRateLimiter)> {
        // Longest window first: a waiter blocks on a spent daily quota before it takes
        // a cell of the shorter limits, so waiting out a spent quota (and timing out)
        // does not burn the hourly or per-minute cells meanwhile.
        let windows = [
            (cfg.per_day, Duration::from_secs(86_400)),
            (cfg.per_hour, Duration::from_secs(3600)),
            (cfg.per_minute, Duration::from_secs(60)),
            (cfg.per_second, Duration::from_secs(1)),
        ];
        windows
            .into_iter()
            .filter_map(|(n, window)| {
                let n = NonZeroU32::new(n?)?;
                let quota = Quota::with_period(window / n.get())?.allow_burst(n);
                Some((window, RateLimiter::direct(quota)))
            })
            .collect()
    }

    /// Counts messages already sent before a restart against the hourly and daily
    /// quotas (`last_hour`, `last_day`: how many in the past hour / day), so a restart
    /// does not hand out a spent quota again. Conservative: the slots count as taken
    /// now, so they come back a little later than they really would.
    pub fn preload(&self, last_hour: u32, last_day: u32) {
        self.count_spent(u64::from(last_hour), u64::from(last_day));
        for (window, l) in self.current().iter() {
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
        self.current().is_empty()
    }

    /// Waits until every limit allows one more message.
    pub async fn until_ready(&self) {
        let limiters = self.current();
        for (_, l) in limiters.iter() {
            l.until_ready().await;
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        self.count_spent(1, 1);
    }

    fn count_spent(&self, hour: u64, day: u64) {
        let now = std::time::Instant::now();
        for (w, since, n) in self
            .spent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            if now.duration_since(*since) >= *w {
                (*since, *n) = (now, 0);
            }
            *n += if w.as_secs() == 3600 { hour } else { day };
        }
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
        let all = limits.current();
        let hour = &all[1];
        assert_eq!(hour.0, Duration::from_secs(3600));
        assert!(hour.1.check().is_ok(), "hourly cell burnt by waiters");
    }

    #[test]
    fn a_replaced_limit_sets_the_pace_and_keeps_what_the_quota_spent() {
        let limits = RateLimits::new(&RateConfig {
            per_hour: Some(1),
            ..RateConfig::default()
        });
        assert!(limits.until_ready().now_or_never().is_some());
        assert!(limits.until_ready().now_or_never().is_none(), "hour spent");
        let raised = RateConfig {
            per_hour: Some(3),
            ..RateConfig::default()
        };
        assert!(limits.replace(&raised));
        assert!(!limits.replace(&raised), "the same limits change nothing");
        assert_eq!(limits.config(), raised);
        // 3 per hour, 1 of them already sent: two more now, then wait.
        assert!(limits.until_ready().now_or_never().is_some());
        assert!(limits.until_ready().now_or_never().is_some());
        assert!(limits.until_ready().now_or_never().is_none());
        assert!(limits.replace(&RateConfig::default()));
        assert!(limits.is_unlimited());
    }

    #[test]
    fn nothing_set_is_unlimited() {
        let limits = RateLimits::new(&RateConfig::default());
        assert!(limits.is_unlimited());
        assert!(limits.until_ready().now_or_never().is_some());
    }
}
