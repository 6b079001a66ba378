//! The rate layer: GCRA limits (governor) on leases, from `RateConfig`: per second,
//! minute, hour and day, every one that is set applies; none set means unlimited. A
//! quota is a limit whose burst equals the quota (`per_hour = 500` allows 500 at once,
//! then one every 7.2 s). A quota the provider counts in recipients
//! (`recipients_per_day`: Amazon SES, Microsoft 365) takes as many cells as the
//! transaction has recipients ([`AdmissionRequest::recipients`]); the others take one
//! per message.
//!
//! A reload replaces the limits ([`RateLimits::replace`]) for the next lease: the new
//! limiters start full, less what the old hourly and daily ones had handed out (so a
//! reload does not hand out a spent quota again); waiters already queued on the old
//! limiters finish waiting on them.
//!
//! This layer must never let a waiter wait past the request's deadline. Known
//! simplification: with several limits, a slot taken from an earlier limit is not given
//! back when a later one makes the request time out (the limits are waited on longest
//! window first, so a spent quota burns nothing else).

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

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// One cell per message (transaction).
    Messages,
    /// One cell per recipient of the transaction.
    Recipients,
}

/// One limit: its window, what it counts, its burst and its limiter.
#[derive(Debug)]
struct Limit {
    window: Duration,
    unit: Unit,
    burst: NonZeroU32,
    limiter: DefaultDirectRateLimiter,
}

type Limiters = Arc<Vec<Limit>>;

/// What the quotas have handed out within their windows: before a restart (from the
/// ledger) or before a reload (carried over).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub messages_hour: u32,
    pub messages_day: u32,
    pub recipients_day: u32,
}

/// The quota windows whose spent part is tracked (for reloads).
const TRACKED: [(Duration, Unit); 3] = [
    (HOUR, Unit::Messages),
    (DAY, Unit::Messages),
    (DAY, Unit::Recipients),
];

/// All configured limits.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Each limit (longest window first); swapped whole by a reload (never held across
    /// an await: waiters clone the `Arc`).
    limiters: RwLock<Limiters>,
    /// What they were built from.
    config: RwLock<RateConfig>,
    /// Messages handed out since start (for the queue's persistent quota ledger).
    taken: AtomicU64,
    /// Recipients handed out since start (likewise).
    recipients_taken: AtomicU64,
    /// Cells handed out per tracked window (see [`TRACKED`]) since the window began (a
    /// fixed window, restarted when it has passed: a cheap upper bound of the sliding
    /// one), so a reload carries the spent part of a quota over.
    spent: std::sync::Mutex<Vec<(Duration, Unit, std::time::Instant, u64)>>,
}

impl RateLimits {
    pub fn new(cfg: &RateConfig) -> Arc<Self> {
        let me = Self::default();
        me.install(cfg, Spent::default());
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
        let spent = |w: Duration, u: Unit| {
            self.spent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(sw, su, _, _)| (*sw, *su) == (w, u))
                .map_or(0, |(_, _, _, n)| u32::try_from(*n).unwrap_or(u32::MAX))
        };
        let carried = Spent {
            messages_hour: spent(HOUR, Unit::Messages),
            messages_day: spent(DAY, Unit::Messages),
            recipients_day: spent(DAY, Unit::Recipients),
        };
        self.install(cfg, carried);
        true
    }

    fn install(&self, cfg: &RateConfig, carried: Spent) {
        let limiters = Self::build(cfg);
        let now = std::time::Instant::now();
        *self.spent.lock().unwrap_or_else(|e| e.into_inner()) =
            TRACKED.into_iter().map(|(w, u)| (w, u, now, 0)).collect();
        *self.limiters.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(limiters);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = cfg.clone();
        self.preload(carried);
    }

    fn current(&self) -> Limiters {
        self.limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn build(cfg: &RateConfig) -> Vec<Limit> {
        // Longest window first: a waiter blocks on a spent daily quota before it takes
        // a cell of the shorter limits, so waiting out a spent quota (and timing out)
        // does not burn the hourly or per-minute cells meanwhile.
        let windows = [
            (cfg.recipients_per_day, DAY, Unit::Recipients),
            (cfg.per_day, DAY, Unit::Messages),
            (cfg.per_hour, HOUR, Unit::Messages),
            (cfg.per_minute, Duration::from_secs(60), Unit::Messages),
            (cfg.per_second, Duration::from_secs(1), Unit::Messages),
        ];
        windows
            .into_iter()
            .filter_map(|(n, window, unit)| {
                let burst = NonZeroU32::new(n?)?;
                let quota = Quota::with_period(window / burst.get())?.allow_burst(burst);
                Some(Limit {
                    window,
                    unit,
                    burst,
                    limiter: RateLimiter::direct(quota),
                })
            })
            .collect()
    }

    /// Counts what was sent before a restart against the hourly and daily quotas, so a
    /// restart does not hand out a spent quota again. Conservative: the cells count as
    /// taken now, so they come back a little later than they really would.
    pub fn preload(&self, spent: Spent) {
        self.count_spent_all(spent);
        for l in self.current().iter() {
            let n = match (l.window, l.unit) {
                (HOUR, Unit::Messages) => spent.messages_hour,
                (DAY, Unit::Messages) => spent.messages_day,
                (DAY, Unit::Recipients) => spent.recipients_day,
                _ => continue,
            };
            // Take what the quota still has, at most `n` (check_n refuses more than
            // the burst, so take one by one until the limiter says no).
            for _ in 0..n {
                if l.limiter.check().is_err() {
                    break;
                }
            }
        }
    }

    /// Messages handed out since start.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Recipients handed out since start.
    pub fn recipients_taken(&self) -> u64 {
        self.recipients_taken.load(Ordering::Relaxed)
    }

    /// No limit configured.
    pub fn is_unlimited(&self) -> bool {
        self.current().is_empty()
    }

    /// Whether a limit counts recipients.
    pub fn counts_recipients(&self) -> bool {
        self.current().iter().any(|l| l.unit == Unit::Recipients)
    }

    /// Waits until every limit allows one more message of `recipients` recipients (at
    /// least 1; more than a recipient quota's whole burst takes the whole burst).
    pub async fn until_ready(&self, recipients: u32) {
        let limiters = self.current();
        let recipients = recipients.max(1);
        for l in limiters.iter() {
            match l.unit {
                Unit::Messages => l.limiter.until_ready().await,
                Unit::Recipients => {
                    let n = NonZeroU32::new(recipients.min(l.burst.get())).unwrap_or(l.burst);
                    // `n` is at most the burst, so capacity is never insufficient; if
                    // governor said so anyway, the message goes (never stuck for ever).
                    let _ = l.limiter.until_n_ready(n).await;
                }
            }
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        self.recipients_taken
            .fetch_add(u64::from(recipients), Ordering::Relaxed);
        self.count_spent(1, u64::from(recipients));
    }

    /// Takes `n` more recipients of an open transaction (passthrough: recipients after
    /// the ones admitted with the lease) from the recipient quotas without waiting.
    /// `false` (nothing taken) when a recipient quota has not that many left.
    pub fn try_recipients(&self, n: u32) -> bool {
        if n == 0 {
            return true;
        }
        let limiters = self.current();
        for l in limiters.iter().filter(|l| l.unit == Unit::Recipients) {
            let Some(n) = NonZeroU32::new(n.min(l.burst.get())) else {
                continue;
            };
            if !matches!(l.limiter.check_n(n), Ok(Ok(()))) {
                return false;
            }
        }
        self.recipients_taken
            .fetch_add(u64::from(n), Ordering::Relaxed);
        self.count_spent(0, u64::from(n));
        true
    }

    fn count_spent(&self, messages: u64, recipients: u64) {
        self.count_spent_all(Spent {
            messages_hour: u32::try_from(messages).unwrap_or(u32::MAX),
            messages_day: u32::try_from(messages).unwrap_or(u32::MAX),
            recipients_day: u32::try_from(recipients).unwrap_or(u32::MAX),
        });
    }

    fn count_spent_all(&self, add: Spent) {
        let now = std::time::Instant::now();
        for (w, u, since, n) in self
            .spent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            if now.duration_since(*since) >= *w {
                (*since, *n) = (now, 0);
            }
            *n += u64::from(match (*w, *u) {
                (HOUR, Unit::Messages) => add.messages_hour,
                (_, Unit::Messages) => add.messages_day,
                (_, Unit::Recipients) => add.recipients_day,
            });
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
                tokio::time::timeout_at(req.deadline, limits.until_ready(req.recipients))
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
            assert!(limits.until_ready(1).now_or_never().is_some());
        }
        assert!(limits.until_ready(1).now_or_never().is_none());
    }

    #[test]
    fn preload_spends_quota_sent_before_a_restart() {
        let limits = RateLimits::new(&RateConfig {
            per_day: Some(10),
            per_minute: Some(100),
            ..RateConfig::default()
        });
        limits.preload(Spent {
            messages_hour: 3,
            messages_day: 7,
            ..Spent::default()
        });
        for _ in 0..3 {
            assert!(limits.until_ready(1).now_or_never().is_some());
        }
        assert!(
            limits.until_ready(1).now_or_never().is_none(),
            "7 + 3 = the day's 10"
        );
        assert_eq!(limits.taken(), 3);
        // More than the quota: just spent, no panic.
        let l = RateLimits::new(&RateConfig {
            per_hour: Some(2),
            ..RateConfig::default()
        });
        l.preload(Spent {
            messages_hour: 50,
            messages_day: 50,
            recipients_day: 50,
        });
        assert!(l.until_ready(1).now_or_never().is_none());
    }

    #[test]
    fn a_spent_daily_quota_does_not_burn_the_hourly_one() {
        let limits = RateLimits::new(&RateConfig {
            per_day: Some(2),
            per_hour: Some(3),
            ..RateConfig::default()
        });
        for _ in 0..2 {
            assert!(limits.until_ready(1).now_or_never().is_some());
        }
        // Ten waiters give up on the spent daily quota ...
        for _ in 0..10 {
            assert!(limits.until_ready(1).now_or_never().is_none());
        }
        // ... and the hourly limit still has its third cell.
        let all = limits.current();
        let hour = &all[1];
        assert_eq!(hour.window, Duration::from_secs(3600));
        assert!(hour.limiter.check().is_ok(), "hourly cell burnt by waiters");
    }

    #[test]
    fn a_replaced_limit_sets_the_pace_and_keeps_what_the_quota_spent() {
        let limits = RateLimits::new(&RateConfig {
            per_hour: Some(1),
            ..RateConfig::default()
        });
        assert!(limits.until_ready(1).now_or_never().is_some());
        assert!(limits.until_ready(1).now_or_never().is_none(), "hour spent");
        let raised = RateConfig {
            per_hour: Some(3),
            ..RateConfig::default()
        };
        assert!(limits.replace(&raised));
        assert!(!limits.replace(&raised), "the same limits change nothing");
        assert_eq!(limits.config(), raised);
        // 3 per hour, 1 of them already sent: two more now, then wait.
        assert!(limits.until_ready(1).now_or_never().is_some());
        assert!(limits.until_ready(1).now_or_never().is_some());
        assert!(limits.until_ready(1).now_or_never().is_none());
        assert!(limits.replace(&RateConfig::default()));
        assert!(limits.is_unlimited());
    }

    /// A recipient quota (SES, Microsoft 365) takes one cell per recipient; the message
    /// limits one per message.
    #[test]
    fn a_recipient_quota_counts_recipients() {
        let limits = RateLimits::new(&RateConfig {
            recipients_per_day: Some(10),
            per_day: Some(100),
            ..RateConfig::default()
        });
        assert!(limits.counts_recipients());
        assert!(limits.until_ready(4).now_or_never().is_some());
        assert!(limits.until_ready(4).now_or_never().is_some());
        assert!(
            limits.until_ready(4).now_or_never().is_none(),
            "8 of 10 spent: 4 more do not fit"
        );
        assert!(limits.until_ready(2).now_or_never().is_some());
        assert_eq!((limits.taken(), limits.recipients_taken()), (3, 10));
        assert!(
            limits.until_ready(1).now_or_never().is_none(),
            "all 10 spent"
        );
        // More recipients than the whole quota: takes the whole quota, never stuck.
        let l = RateLimits::new(&RateConfig {
            recipients_per_day: Some(5),
            ..RateConfig::default()
        });
        assert!(l.until_ready(50).now_or_never().is_some());
        assert!(l.until_ready(1).now_or_never().is_none());
    }

    /// Recipients added to an open transaction take from the quota without waiting,
    /// all or nothing; a reload carries the recipients spent over, and so does preload.
    #[test]
    fn later_recipients_reloads_and_restarts_count_against_the_recipient_quota() {
        let limits = RateLimits::new(&RateConfig {
            recipients_per_day: Some(10),
            ..RateConfig::default()
        });
        assert!(limits.until_ready(3).now_or_never().is_some());
        assert!(limits.try_recipients(5));
        assert!(!limits.try_recipients(3), "only 2 left");
        assert!(limits.try_recipients(2));
        assert_eq!(limits.recipients_taken(), 10);
        assert!(limits.replace(&RateConfig {
            recipients_per_day: Some(12),
            ..RateConfig::default()
        }));
        assert!(limits.try_recipients(2), "12 - 10 carried over");
        assert!(!limits.try_recipients(1));
        let restarted = RateLimits::new(&RateConfig {
            recipients_per_day: Some(10),
            ..RateConfig::default()
        });
        restarted.preload(Spent {
            recipients_day: 9,
            ..Spent::default()
        });
        assert!(restarted.until_ready(1).now_or_never().is_some());
        assert!(restarted.until_ready(1).now_or_never().is_none());
    }

    #[test]
    fn nothing_set_is_unlimited() {
        let limits = RateLimits::new(&RateConfig::default());
        assert!(limits.is_unlimited());
        assert!(limits.until_ready(1).now_or_never().is_some());
    }
}
