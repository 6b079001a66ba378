//! The policy gate at the front of the admission stack: asks the controller whether the
//! account may send now (its pause gate, `policy::pause::PauseGate`, then its learned
//! message and recipient rates, the latter counted in the request's recipients). Paused (credentials refused, quota spent, repeated policy
//! blocks) → fails at once with [`UpstreamError::Paused`], so the mailer hears why
//! instead of hanging; the adaptive rate says "wait d" → waits, but never past the
//! request's deadline (then `Busy`, the same 451 as any admission timeout).
//!
//! It must never let a request through while the controller says paused.

use super::error::UpstreamError;
use super::request::AdmissionRequest;
use crate::policy::controller::{Controller, Reachability, Wait};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

#[derive(Clone)]
pub struct PolicyGateLayer {
    controller: Arc<Controller>,
}

impl PolicyGateLayer {
    pub fn new(controller: Arc<Controller>) -> Self {
        Self { controller }
    }
}

impl<S> Layer<S> for PolicyGateLayer {
    type Service = PolicyGate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyGate {
            inner,
            controller: self.controller.clone(),
        }
    }
}

#[derive(Clone)]
pub struct PolicyGate<S> {
    inner: S,
    controller: Arc<Controller>,
}

impl<S> Service<AdmissionRequest> for PolicyGate<S>
where
    S: Service<AdmissionRequest, Error = UpstreamError> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
{
    type Response = S::Response;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<S::Response, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: AdmissionRequest) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let controller = self.controller.clone();
        Box::pin(async move {
            // Bounded: each round either returns or sleeps until a time before the
            // deadline, and the rate limiter's wait is finite.
            loop {
                match controller.admit_n(req.recipients) {
                    Ok(()) => break,
                    Err(Wait::Paused { scope, remaining }) => {
                        return Err(UpstreamError::Paused { scope, remaining })
                    }
                    Err(Wait::Rate(d)) => {
                        let until = tokio::time::Instant::now() + d;
                        if until > req.deadline {
                            return Err(UpstreamError::Busy(req.wait));
                        }
                        tokio::time::sleep_until(until).await;
                    }
                }
            }
            // Connection failures with nothing else open back the whole upstream off:
            // don't try before the backoff has run out. A wait after a refused new
            // connection while others work is the pool's to keep (it still hands out
            // idle connections, and waits for one to come back within the deadline).
            if matches!(controller.reachability(), Reachability::Unreachable { .. }) {
                if let Some(d) = controller.connect_wait() {
                    return Err(UpstreamError::Backoff(d));
                }
            }
            inner.oneshot(req).await
        })
    }
}
