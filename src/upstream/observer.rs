//! The one feedback path from the provider to the policy. The client calls an
//! [`Observer`] for every reply of every phase, every connection failure and timeout,
//! and the 354 / final-reply latencies; [`PolicyObserver`] classifies each reply once,
//! hands the verdict back to the client (it travels with the reply), feeds it to the
//! controller (whose connection limit admission observes), and records suppressions for
//! the recipient the reply answered.
//!
//! A transaction accepted at the end of DATA is counted once, by the reply itself
//! (`Controller::on_reply(DataEnd, Accept)`); there is no second "delivered" signal.
//! Connection setup that fails — refused, TLS failure or a stalled handshake, no
//! greeting or EHLO in time, a protocol violation before MAIL, or a refused greeting
//! while no other connection is open — backs the whole upstream off
//! (`Controller::on_connect_failure`), so a provider that answers `421` forever is not
//! reconnected to in a loop.
//!
//! It must never block or do I/O on the caller's path: the suppression list records in
//! memory at once and leaves the durable write to its store's writer thread
//! (`store::write_behind`).

use super::concurrency::ConcurrencyLimit;
use super::error::UpstreamError;
use crate::policy::classify::Classifier;
use crate::policy::controller::{Controller, FeedbackCtx};
use crate::policy::latency::LatencyKind;
use crate::policy::suppression::Recorder;
use crate::policy::verdict::{Phase, Verdict};
use crate::smtp::Reply;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Observer: Send + Sync + 'static {
    /// A reply, with the recipient it answers when there is exactly one (RCPT, and the
    /// end of DATA of a single-recipient transaction), and what identifies the message
    /// when the caller said (`Connection::set_message_identity`). A 2xx at `DataEnd` is
    /// the one signal that the provider accepted a message. Returns the verdict when it
    /// classifies the reply (it then travels with the reply, see `upstream::Answer`).
    fn reply(
        &self,
        phase: Phase,
        reply: &Reply,
        rcpt: Option<&str>,
        message: Option<&str>,
    ) -> Option<Verdict>;
    /// No reply: refused, timed out, TLS failure, connection lost, garbage.
    fn failure(&self, phase: Option<Phase>, error: &UpstreamError);
    /// A new connection is being set up (TCP, greeting, EHLO, TLS, AUTH).
    fn connect_started(&self);
    /// Its setup ended: `ok` = ready for MAIL FROM. Called exactly once per start,
    /// after any replies of the setup were reported.
    fn connect_finished(&self, ok: bool);
    fn latency(&self, kind: LatencyKind, sample: Duration);
}

/// The policy behind the observer: classifier, controller, suppression list.
pub struct PolicyObserver {
    /// Swapped whole by a configuration reload ([`PolicyObserver::set_classifier`]); a
    /// reply is classified by the table in force when it arrives.
    classifier: RwLock<Arc<Classifier>>,
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
        Self {
            classifier: RwLock::new(classifier),
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
}

impl PolicyObserver {
    fn connect_failed(&self, error: &UpstreamError) {
        let wait = self.controller.on_connect_failure();
        tracing::warn!(error = %error, backoff = ?wait, "provider connection failed");
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl PolicyObserver {
    /// The rule table in force.
    pub fn classifier(&self) -> Arc<Classifier> {
        self.classifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the rule table (configuration reload): the next reply is classified by
    /// `classifier`.
    pub fn set_classifier(&self, classifier: Arc<Classifier>) {
        *self.classifier.write().unwrap_or_else(|e| e.into_inner()) = classifier;
    }
}

impl Observer for PolicyObserver {
    fn reply(
        &self,
        phase: Phase,
        reply: &Reply,
        rcpt: Option<&str>,
        message: Option<&str>,
    ) -> Option<Verdict> {
        let classifier = self.classifier();
        let c = classifier.classify(phase, reply);
        let verdict = c.verdict;
        if verdict != Verdict::Accept {
            tracing::info!(phase = ?phase, reply = %reply, verdict = ?verdict, rule = %c.description, "provider reply");
        }
        self.controller
            .on_reply(phase, &verdict, self.ctx(verdict != Verdict::Accept));
        if let (Some(list), Some(rcpt)) = (&self.suppression, rcpt) {
            let res = match verdict {
                Verdict::Suppress => list.hard(rcpt, reply, now_secs()).map(|_| true),
                Verdict::SoftBounce => list.soft(rcpt, reply, now_secs(), message),
                _ => Ok(false),
            };
            match res {
                Ok(true) => tracing::info!(rcpt, reply = %reply, "address suppressed"),
                Ok(false) => {}
                Err(e) => tracing::error!(rcpt, "cannot record suppression: {e}"),
            }
        }
        Some(verdict)
    }

    fn failure(&self, phase: Option<Phase>, error: &UpstreamError) {
        let setup = matches!(
            error.phase(),
            Some(Phase::Greeting | Phase::Ehlo | Phase::StartTls | Phase::Auth)
        );
        match error {
            // The connection could not be set up: the upstream as a whole backs off.
            UpstreamError::Connect(_) | UpstreamError::Tls(_) => self.connect_failed(error),
            // The token endpoint refused the refresh token (revoked, expired, wrong
            // client) or there is none: like refused credentials, the account pauses until
            // someone signs in again. An unreachable endpoint backs off like a provider.
            UpstreamError::OAuth(e) if e.is_permanent() => {
                tracing::warn!(error = %e, "OAuth2 sign-in impossible; pausing the account");
                self.controller.on_reply(
                    Phase::Auth,
                    &Verdict::Pause {
                        scope: crate::policy::verdict::PauseScope::Auth,
                        until: None,
                    },
                    self.ctx(true),
                );
            }
            UpstreamError::OAuth(_) => self.connect_failed(error),
            UpstreamError::Timeout { .. }
            | UpstreamError::Unexpected { .. }
            | UpstreamError::Unsolicited { .. }
                if setup =>
            {
                self.connect_failed(error)
            }
            // A refused greeting (421 "too many connections") while other connections
            // are open is our surplus connection; the reply itself already lowered the
            // limit. With nothing else open, the provider refuses us altogether: back
            // off as after any failed connect, instead of reconnecting at once.
            UpstreamError::Greeting(_) if self.limit.in_use() <= 1 => self.connect_failed(error),
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
            // Garbage, a reply the protocol does not allow, replies nobody asked for.
            UpstreamError::Protocol(_)
            | UpstreamError::Unexpected { .. }
            | UpstreamError::Unsolicited { .. } => {
                let p = phase.unwrap_or(Phase::Greeting);
                self.controller
                    .on_reply(p, &Verdict::ProtocolError, self.ctx(true));
            }
            _ => {}
        }
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::controller::ControllerParams;
    use crate::policy::suppression::{
        Entry, MemoryStore, SoftPolicy, StoreError, SuppressionStore, Suppressions,
    };
    use crate::smtp::EnhancedCode;
    use crate::store::write_behind::WriteBehind;
    use std::sync::mpsc::{self, Receiver};
    use std::sync::Mutex;
    use std::thread::ThreadId;

    /// A store whose commits wait (at most 10 s) until the test opens the gate, and
    /// record on which thread they ran and whether they had to give up waiting.
    struct Gated {
        gate: Mutex<Receiver<()>>,
        commits: Arc<Mutex<Vec<(ThreadId, bool)>>>,
        mem: MemoryStore,
    }

    impl SuppressionStore for Gated {
        fn load_all(&self) -> Result<Vec<Entry>, StoreError> {
            self.mem.load_all()
        }
        fn put(&self, e: &Entry) -> Result<(), StoreError> {
            self.put_all(std::slice::from_ref(e))
        }
        fn put_all(&self, e: &[Entry]) -> Result<(), StoreError> {
            let gave_up = self
                .gate
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))
                .is_err();
            self.commits
                .lock()
                .unwrap()
                .push((std::thread::current().id(), gave_up));
            self.mem.put_all(e)
        }
        fn remove(&self, a: &str) -> Result<bool, StoreError> {
            self.mem.remove(a)
        }
    }

    #[test]
    fn a_suppression_is_recorded_without_waiting_for_the_disk() {
        let (open, gate) = mpsc::channel();
        let commits = Arc::new(Mutex::new(Vec::new()));
        let list = Arc::new(
            Suppressions::open(
                WriteBehind::new(Gated {
                    gate: Mutex::new(gate),
                    commits: commits.clone(),
                    mem: MemoryStore::default(),
                }),
                SoftPolicy::default(),
            )
            .unwrap(),
        );
        let obs = PolicyObserver::new(
            Arc::new(Classifier::builtin().unwrap()),
            Arc::new(Controller::new(
                ControllerParams::default(),
                crate::policy::clock::SystemClock::new(),
            )),
            Some(list.clone() as Arc<dyn Recorder>),
            ConcurrencyLimit::new(2),
        );
        let r = Reply::new(550, EnhancedCode::new(5, 1, 1), "No such user");
        // On the thread that answers RCPT: returns while the commit is still held up.
        obs.reply(Phase::Rcpt, &r, Some("gone@example.org"), None);
        assert!(list.is_suppressed("gone@example.org"), "in force at once");
        open.send(()).unwrap();
        drop(obs);
        drop(list); // the writer makes the rest durable before the store is gone
        let commits = commits.lock().unwrap().clone();
        assert_eq!(commits.len(), 1, "{commits:?}");
        let (thread, gave_up) = commits[0];
        assert_ne!(
            thread,
            std::thread::current().id(),
            "the commit ran on the caller's thread"
        );
        assert!(!gave_up, "the caller was blocked until the commit gave up");
    }
}
