//! The rate layer: GCRA limits (governor) on leases, from `RateConfig`: per second,
//! minute, hour and day, every one that is set applies; none set means unlimited. A
//! quota is a limit whose burst equals the quota (`per_hour = 500` allows 500 at once,
//! then one every 7.2 s).
//!
//! Each lease is one message slot. This layer must never let a waiter wait past the
//! request's deadline. Known simplification: with several limits, a slot taken from an
//! earlier limit is not given back when a later one makes the request time out.

use super::admission::AdmissionRequest;
use super::error::UpstreamError;
use crate::config::RateConfig;
use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// All configured limits.
#[derive(Debug, Default)]
pub struct RateLimits {
    limiters: Vec<DefaultDirectRateLimiter>,
}

impl RateLimits {
    pub fn new(cfg: &RateConfig) -> Arc<Self> {
        let windows = [
            (cfg.per_second, Duration::from_secs(1)),
            (cfg.per_minute, Duration::from_secs(60)),
            (cfg.per_hour, Duration::from_secs(3600)),
            (cfg.per_day, Duration::from_secs(86_400)),
        ];
        let limiters = windows
            .into_iter()
            .filter_map(|(n, window)| {
                let n = NonZeroU32::new(n?)?;
                let quota = Quota::with_period(window / n.get())?.allow_burst(n);
                Some(RateLimiter::direct(quota))
            })
            .collect();
        Arc::new(Self { limiters })
    }

    /// No limit configured.
    pub fn is_unlimited(&self) -> bool {
        self.limiters.is_empty()
    }

    /// Waits until every limit allows one more message.
    pub async fn until_ready(&self) {
        for l in &self.limiters {
            l.until_ready().await;
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
    fn nothing_set_is_unlimited() {
        let limits = RateLimits::new(&RateConfig::default());
        assert!(limits.is_unlimited());
        assert!(limits.until_ready().now_or_never().is_some());
    }
}
