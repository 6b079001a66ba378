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
//! greeting or EHLO in time, a close or a protocol violation before MAIL — backs the
//! whole upstream off (`Controller::on_connect_failure`) when no other connection works;
//! a refused greeting always makes the next open wait (the controller does that with the
//! reply), so a provider that answers `421` is never reconnected to in a loop. A new TLS
//! session refused while others work (a 4xx to STARTTLS, a handshake failing right
//! after it) is fed to the controller like a refused greeting. A connection lost without
//! a reply in a transaction is a fault (`Controller::on_connection_lost`), never a limit;
//! no 354 or final reply in time steps the limit down by one
//! (`Controller::on_reply_timeout`).
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
use crate::policy::verdict::{Phase, ThrottleKind, Verdict};
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

    /// A new session refused without a "too many connections" reply (see `failure`).
    fn session_refused(&self, error: &UpstreamError) {
        let ctx = self.ctx(true);
        if ctx.working_connections == 0 && ctx.in_flight_connections <= 1 {
            return self.connect_failed(error);
        }
        tracing::info!(error = %error, "provider refused a new session while others work");
        self.controller.on_reply(
            Phase::StartTls,
            &Verdict::Throttle(ThrottleKind::Connections),
            ctx,
        );
    }

    /// Connection setup broke off (closed, timed out, garbled) before MAIL: with nothing
    /// else working the provider is unreachable for us; otherwise the next new connection
    /// waits (no limit is learned from a setup without a refusal).
    fn setup_broke(&self, error: &UpstreamError) {
        let ctx = self.ctx(true);
        if ctx.working_connections == 0 && ctx.in_flight_connections <= 1 {
            self.connect_failed(error);
        } else {
            self.controller.on_connect_refused(ctx);
            tracing::debug!(error = %error, "provider connection setup broke off; next open waits");
        }
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
        // A rate throttle that says when to come back: the learner's next probe waits
        // that long (the reply's hint, as for a deferral).
        if let Verdict::Throttle(kind) = verdict {
            if let Some(wait) = crate::policy::classify::reply_hint(reply) {
                self.controller.on_throttle_hint(kind, wait);
            }
        }
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
            error.phase().or(phase),
            Some(Phase::Greeting | Phase::Ehlo | Phase::StartTls | Phase::Auth)
        );
        match error {
            // A refused greeting: the reply itself went through `reply` and the
            // controller has already decided (count or rate of connections) and set the
            // connect backoff — nothing more here.
            UpstreamError::Greeting(_) => {}
            // A new TLS session refused (a 4xx to STARTTLS: Postfix's limit on new TLS
            // sessions) or the handshake failing right after STARTTLS while other
            // connections work: the provider refuses new sessions, like a refused
            // greeting (count or rate, by what works). With nothing else working, the
            // connection could not be set up at all: the upstream backs off.
            UpstreamError::StartTls(Some(a))
                if a.reply.class() == 4
                    && a.verdict != Some(Verdict::Throttle(ThrottleKind::Connections)) =>
            {
                self.session_refused(error)
            }
            UpstreamError::Tls(_) if self.limit.in_use() > 1 => self.session_refused(error),
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
            // Closed, timed out or garbled before MAIL: the connection could not be set
            // up; never reconnected at once (a wait only, while others work).
            UpstreamError::Timeout { .. }
            | UpstreamError::Unexpected { .. }
            | UpstreamError::Unsolicited { .. }
            | UpstreamError::Closed
                if setup =>
            {
                self.setup_broke(error)
            }
            // No 354 in time, or no final reply in time: the "too many threads" case —
            // one connection fewer (the controller holds it until the next probe).
            UpstreamError::Timeout {
                phase: p @ (Phase::Data | Phase::DataEnd),
            } => {
                let fewer = self.controller.on_reply_timeout(*p);
                tracing::info!(
                    phase = p.name(),
                    fewer,
                    "provider reply timed out (one connection fewer when `fewer`)"
                );
            }
            // Closed without a reply in a transaction (a provider restart, a killed
            // server): a fault to retry, not a limit. The next connection's greeting says
            // whether the provider is back; only a refusal there lowers anything.
            UpstreamError::Closed => self.controller.on_connection_lost(phase),
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
        self.controller.on_connect_attempt();
    }

    fn connect_finished(&self, ok: bool) {
        // Saturating: a finish without a start must not wrap around.
        let _ = self
            .connecting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        self.controller.on_connect_finished(ok);
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

    /// The real client reports an open twice over: its greeting (a reply) and the end
    /// of its setup. The connection pacer must count it once, or every gap it learns
    /// between opens comes out half as long as the provider's window allows.
    #[test]
    fn an_open_is_counted_once() {
        let controller = Arc::new(Controller::new(
            ControllerParams::default(),
            crate::policy::clock::SystemClock::new(),
        ));
        let obs = PolicyObserver::new(
            Arc::new(Classifier::builtin().unwrap()),
            controller.clone(),
            None,
            ConcurrencyLimit::new(2),
        );
        for _ in 0..3 {
            obs.connect_started();
            let greeting = Reply::new(220, EnhancedCode::new(2, 0, 0), "provider ESMTP");
            obs.reply(Phase::Greeting, &greeting, None, None);
            let ehlo = Reply::new(250, EnhancedCode::new(2, 0, 0), "provider");
            obs.reply(Phase::Ehlo, &ehlo, None, None);
            obs.connect_finished(true);
        }
        assert_eq!(controller.stats().opens_accepted, 3);
    }
}
