//! The one feedback path from the provider to the policy. The client calls an
//! [`Observer`] for every reply of every phase, every connection failure and timeout,
//! and the 354 / final-reply latencies; [`PolicyObserver`] classifies each reply once,
//! feeds the verdict to the controller, resizes the admission's concurrency limit to the
//! controller's, and records suppressions for the recipient the reply answered.
//!
//! It must never block or do I/O on the caller's path beyond the suppression store's
//! durable write (which only happens for a permanent address failure).

use super::concurrency::ConcurrencyLimit;
use super::error::UpstreamError;
use crate::policy::classify::Classifier;
use crate::policy::controller::{Controller, FeedbackCtx};
use crate::policy::latency::LatencyKind;
use crate::policy::suppression::Recorder;
use crate::policy::verdict::{Phase, Verdict};
use crate::smtp::Reply;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Observer: Send + Sync + 'static {
    /// A reply, with the recipient it answers when there is exactly one (RCPT, and the
    /// end of DATA of a single-recipient transaction).
    fn reply(&self, phase: Phase, reply: &Reply, rcpt: Option<&str>);
    /// No reply: refused, timed out, TLS failure, connection lost, garbage.
    fn failure(&self, phase: Option<Phase>, error: &UpstreamError);
    /// A new connection is being set up (TCP, greeting, EHLO, TLS, AUTH).
    fn connect_started(&self);
    /// Its setup ended: `ok` = ready for MAIL FROM. Called exactly once per start,
    /// after any replies of the setup were reported.
    fn connect_finished(&self, ok: bool);
    fn latency(&self, kind: LatencyKind, sample: Duration);
    /// The provider accepted a message.
    fn delivered(&self);
}

/// The policy behind the observer: classifier, controller, suppression list.
pub struct PolicyObserver {
    classifier: Arc<Classifier>,
    controller: Arc<Controller>,
    suppression: Option<Arc<dyn Recorder>>,
    limit: Arc<ConcurrencyLimit>,
    /// Connections in setup: they hold a permit but are not (yet) working.
    connecting: AtomicUsize,
}

impl PolicyObserver {
    pub fn new(
        classifier: Arc<Classifier>,
        controller: Arc<Controller>,
        suppression: Option<Arc<dyn Recorder>>,
        limit: Arc<ConcurrencyLimit>,
    ) -> Self {
        limit.set_limit(controller.concurrency_limit());
        Self {
            classifier,
            controller,
            suppression,
            limit,
            connecting: AtomicUsize::new(0),
        }
    }

    /// Working = leased connections that finished their setup; a refused one is not
    /// working, whether it was refused during setup (it is among `connecting`) or later.
    fn ctx(&self, refused: bool) -> FeedbackCtx {
        let in_use = self.limit.in_use().max(1);
        let connecting = self.connecting.load(Ordering::Acquire);
        let established = in_use.saturating_sub(connecting);
        FeedbackCtx {
            in_flight_connections: in_use,
            working_connections: if refused && connecting == 0 {
                established.saturating_sub(1)
            } else {
                established
            },
        }
    }

    fn sync_limit(&self) {
        let want = self.controller.concurrency_limit();
        if want != self.limit.limit() {
            tracing::info!(connections = want, "concurrency limit changed");
            self.limit.set_limit(want);
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Observer for PolicyObserver {
    fn reply(&self, phase: Phase, reply: &Reply, rcpt: Option<&str>) {
        let c = self.classifier.classify(phase, reply);
        let verdict = c.verdict;
        if verdict != Verdict::Accept {
            tracing::info!(phase = ?phase, reply = %reply, verdict = ?verdict, rule = %c.description, "provider reply");
        }
        self.controller
            .on_reply(phase, &verdict, self.ctx(verdict != Verdict::Accept));
        if let (Some(list), Some(rcpt)) = (&self.suppression, rcpt) {
            let res = match verdict {
                Verdict::Suppress => list.hard(rcpt, reply, now_secs()).map(|_| true),
                Verdict::SoftBounce => list.soft(rcpt, reply, now_secs()),
                _ => Ok(false),
            };
            match res {
                Ok(true) => tracing::info!(rcpt, reply = %reply, "address suppressed"),
                Ok(false) => {}
                Err(e) => tracing::error!(rcpt, "cannot record suppression: {e}"),
            }
        }
        self.sync_limit();
    }

    fn failure(&self, phase: Option<Phase>, error: &UpstreamError) {
        match error {
            // Before any reply: the upstream as a whole backs off.
            UpstreamError::Connect(_) | UpstreamError::Tls(_) => {
                let wait = self.controller.on_connect_failure();
                tracing::warn!(error = %error, backoff = ?wait, "provider connection failed");
            }
            // No 354 in time, or the connection dropped between DATA and the final
            // reply: the "too many threads" case, a connection throttle.
            UpstreamError::Timeout {
                phase: Phase::Data | Phase::DataEnd,
            }
            | UpstreamError::Closed
                if matches!(phase, Some(Phase::Data | Phase::DataEnd)) =>
            {
                self.controller.on_reply(
                    Phase::Data,
                    &Verdict::Throttle(crate::policy::verdict::ThrottleKind::Connections),
                    self.ctx(true),
                );
            }
            UpstreamError::Protocol(_) => {
                let p = phase.unwrap_or(Phase::Greeting);
                self.controller
                    .on_reply(p, &Verdict::ProtocolError, self.ctx(true));
            }
            _ => {}
        }
        self.sync_limit();
    }

    fn connect_started(&self) {
        self.connecting.fetch_add(1, Ordering::AcqRel);
    }

    fn connect_finished(&self, ok: bool) {
        // Saturating: a finish without a start must not wrap around.
        let _ = self
            .connecting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        if ok {
            self.controller.on_connect_success();
        }
    }

    fn latency(&self, kind: LatencyKind, sample: Duration) {
        if self.controller.on_latency(kind, sample) {
            tracing::info!(?kind, ?sample, "provider slowed down; one connection fewer");
        }
        self.sync_limit();
    }

    fn delivered(&self) {
        self.controller.on_transaction_success(self.ctx(false));
        self.sync_limit();
    }
}
