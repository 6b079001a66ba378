//! Admission: the one path to an upstream connection, for passthrough sessions and
//! (later) queue workers alike. A tower stack, outermost first:
//!
//! ```text
//! RateLimit (governor GCRA, RateConfig)   ┐ both waits bounded together by
//! Concurrency (permit held by the Lease)  ┘ admission_wait → 451 4.7.0 Provider busy
//! PoolService (idle connection, or connect)
//! ```
//!
//! The deadline travels in the request ([`AdmissionRequest`]) rather than in a
//! `tower::timeout::Timeout` around the stack, so only the *waiting* is bounded by
//! `admission_wait`; connecting has its own `timeouts.connect`. With the policy, the
//! policy gate (pause, adaptive rate) is the outermost layer and the concurrency limit
//! follows the controller's ([`ConcurrencyLimit::following`]).
//!
//! This module must never hand out more leases than the concurrency limit, and never let
//! a caller wait past its deadline for a rate slot or a permit.

use super::concurrency::{ConcurrencyLayer, ConcurrencyLimit};
use super::error::UpstreamError;
use super::lease::Lease;
use super::lease::PoolService;
use super::policy_gate::PolicyGateLayer;
use super::pool::Pool;
use super::rate_limit::{RateLimitLayer, RateLimits};
pub use super::request::AdmissionRequest;
use super::settings::Settings;
use crate::policy::controller::Controller;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// The admission stack for one upstream. Cheap to share (`Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct Admission {
    svc: BoxCloneSyncService<AdmissionRequest, Lease, UpstreamError>,
    pool: Arc<Pool>,
    limit: Arc<ConcurrencyLimit>,
    rates: Arc<RateLimits>,
    wait: Duration,
    /// The policy in front (a refused greeting makes the next open wait), if any.
    controller: Option<Arc<Controller>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("pool", &self.pool)
            .field("limit", &self.limit)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Builds the stack from the settings. Inside a tokio runtime, also starts the idle
    /// reaper (it stops when the last `Admission` clone is dropped).
    pub fn new(settings: Arc<Settings>) -> Self {
        let limit = ConcurrencyLimit::new(settings.config.max_connections);
        Self::build(settings, None, limit)
    }

    /// The stack with the policy in front: pause gate and adaptive rate (the
    /// controller), then the configured fixed limits, the adaptive concurrency limit
    /// (`limit`, following the controller's) and the pool. `settings` should carry the
    /// observer that feeds `controller`.
    pub fn with_policy(
        settings: Arc<Settings>,
        controller: Arc<Controller>,
        limit: Arc<ConcurrencyLimit>,
    ) -> Self {
        Self::build(settings, Some(controller), limit)
    }

    fn build(
        settings: Arc<Settings>,
        controller: Option<Arc<Controller>>,
        limit: Arc<ConcurrencyLimit>,
    ) -> Self {
        let cfg = &settings.config;
        let rates = RateLimits::new(&cfg.rate);
        let wait = cfg.admission_wait;
        let pool = match &controller {
            Some(c) => Pool::with_backoff(settings.clone(), c.clone()),
            None => Pool::new(settings.clone()),
        };
        let gate = controller.clone().map(PolicyGateLayer::new);
        if tokio::runtime::Handle::try_current().is_ok() {
            pool.spawn_reaper();
        }
        let svc = ServiceBuilder::new()
            .option_layer(gate)
            .layer(RateLimitLayer::new(rates.clone()))
            .layer(ConcurrencyLayer::new(limit.clone()))
            .service(PoolService::new(pool.clone()));
        Self {
            svc: BoxCloneSyncService::new(svc),
            pool,
            limit,
            rates,
            wait,
            controller,
        }
    }

    /// A connection ready for MAIL FROM, after waiting at most `admission_wait` for a
    /// rate slot and a permit. `Err` carries the reason; `to_reply()` answers the mailer.
    ///
    /// A new connection greeted with "too many connections" (421 / 432) while other
    /// connections are working (leased or idle in the pool) is our surplus connection
    /// being refused, not the caller's transaction: the controller has already taken the
    /// refusal (a lower limit, or — when fewer work than have worked — a limit on the
    /// rate of new connections) and set the connect backoff, so the caller waits (within
    /// the same deadline) for one of the working connections to come back to the pool,
    /// or for the backoff to end, instead of getting `451` — a mailer such as smtp-source
    /// gives up the whole run on a 4xx at MAIL. The next open is never at once after a
    /// refusal; the deadline bounds it all. With no other connection working, the
    /// provider refuses us altogether and the error goes to the caller as before.
    /// (Without the policy nothing would space the opens: no retry then.)
    pub async fn lease(&self) -> Result<Lease, UpstreamError> {
        self.lease_for(1).await
    }

    /// [`Admission::lease`] for a transaction of `recipients` recipients (limits counted
    /// in recipients take that many).
    pub async fn lease_for(&self, recipients: usize) -> Result<Lease, UpstreamError> {
        let req = AdmissionRequest::new(self.wait).with_recipients(recipients);
        loop {
            // No new connection allowed before the deadline and none to reuse or to come
            // back: say so now, before a rate slot or a quota slot is spent on a
            // transaction that cannot go out.
            if let Some(w) = self.controller.as_ref().and_then(|c| c.connect_wait()) {
                let nothing_to_reuse = self.pool.idle_count() == 0 && self.pool.out() == 0;
                if nothing_to_reuse && Instant::now() + w > req.deadline {
                    return Err(UpstreamError::Backoff(w));
                }
            }
            let res = self.svc.clone().oneshot(req).await;
            match &res {
                Err(UpstreamError::Greeting(r))
                    if self.controller.is_some()
                        && matches!(r.code, 421 | 432)
                        && (self.limit.in_use() > 0 || self.pool.idle_count() > 0)
                        && Instant::now() < req.deadline =>
                {
                    tracing::debug!(reply = %r, "surplus provider connection refused; waiting for a working one");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no upstream lease");
                    return res;
                }
                Ok(_) => return res,
            }
        }
    }

    /// The concurrency limit, shared (without the policy, resize it with `set_limit`).
    pub fn limit(&self) -> &Arc<ConcurrencyLimit> {
        &self.limit
    }

    /// The rate limits in force.
    pub fn rates(&self) -> &Arc<RateLimits> {
        &self.rates
    }

    /// The connection pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}
