//! The delivery engine of queue mode: takes due messages from the [`Spool`], sends them
//! through a [`Transport`] (the same admission path and controller as passthrough),
//! and records each recipient's outcome durably — delivered, failed with a bounce
//! report, retried on the controller's backoff, or held while the account is paused.
//!
//! ```text
//! dispatcher ── one slot per concurrent transaction ──▶ deliver(id, due recipients)
//!    ▲  wakes on: new message, finished delivery, next due time, resume     │
//!    └──────────────── spool.record / remove (durable) ◀────────────────────┘
//! ```
//!
//! It must never lose a recipient (a state changes only by a durable spool commit, after
//! the attempt), never count an attempt or push the schedule out while paused, never
//! deliver the same message twice at once, never send a bounce for a bounce or to the
//! null sender, and never spin: every wait is on a wake-up or a bounded timer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::delivery_log::{Action, DeliveryLog, Outcome as LogOutcome};
use super::dsn::{self, DsnInput, FailedRcpt};
use super::record::{Message, RcptState, StoredReply};
use super::schedule::{self, Decision, FailKind};
use super::spool::now_ms;
use super::transport::{LocalKind, Outcome, Transport};
use super::webhook::{self, Webhook};
use super::{QueueId, Spool};
use crate::policy::classify::Classifier;
use crate::policy::clock::Clock;
use crate::policy::controller::Controller;
use crate::policy::pause::PauseState;
use crate::smtp::{EnhancedCode, Envelope, Reply};

/// What the engine needs of the controller: pause state and retry timing.
pub trait Pacing: Send + Sync + 'static {
    /// `Some(remaining)` while the account is paused (`None` inside: until resumed).
    fn paused_for(&self) -> Option<Option<Duration>>;
    /// Delay before counted retry number `attempt` (0-based), at least `hint`.
    fn retry_delay(&self, attempt: u32, hint: Option<Duration>) -> Duration;
    /// While the upstream backs off after connection failures: how much longer.
    fn connect_wait(&self) -> Option<Duration> {
        None
    }
}

impl<C: Clock + 'static> Pacing for Controller<C> {
    fn paused_for(&self) -> Option<Option<Duration>> {
        match self.pause_state() {
            PauseState::Paused { until, .. } => {
                let now = self.clock().now();
                Some(until.map(|u| u.saturating_sub(now)))
            }
            PauseState::Running => None,
        }
    }
    fn retry_delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        Controller::retry_delay(self, attempt, hint)
    }
    fn connect_wait(&self) -> Option<Duration> {
        Controller::connect_wait(self)
    }
}

/// Looks up whether an address is suppressed; `Some(reply)` is the local 550 for it.
pub type SuppressedFn = dyn Fn(&str) -> Option<Reply> + Send + Sync;

/// Settings of the engine (from `[queue]`, the profile and `[server]`).
#[derive(Debug, Clone)]
pub struct DeliveryParams {
    /// Transactions at once (the profile's maximum connections; admission narrows it).
    pub workers: usize,
    /// Recipients per transaction; a message with more is split.
    pub rcpts_per_message: usize,
    /// A recipient still pending this long after arrival fails.
    pub max_age: Duration,
    /// Send bounce reports (DSNs) to the envelope sender.
    pub bounces: bool,
    /// Envelope sender of bounce reports; empty = the null sender `<>`.
    pub bounce_from: String,
    /// Our name in bounce reports (Reporting-MTA).
    pub hostname: String,
    /// How often messages are checked for `max_age`.
    pub expiry_interval: Duration,
}

impl Default for DeliveryParams {
    fn default() -> Self {
        Self {
            workers: 2,
            rcpts_per_message: 100,
            max_age: Duration::from_secs(4 * 24 * 3600),
            bounces: true,
            bounce_from: String::new(),
            hostname: "mailvalve.localhost".into(),
            expiry_interval: Duration::from_secs(60),
        }
    }
}

/// Counters since start, for status output and tests.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub failed: AtomicU64,
    pub bounces: AtomicU64,
    pub transactions: AtomicU64,
}

/// A snapshot of [`DeliveryStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    pub bounces: u64,
    pub transactions: u64,
}

impl DeliveryStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            delivered: g(&self.delivered),
            deferred: g(&self.deferred),
            failed: g(&self.failed),
            bounces: g(&self.bounces),
            transactions: g(&self.transactions),
        }
    }
}

/// The engine. Build it, hand clones of [`Delivery::waker`] to whoever adds messages,
/// then `run` it.
pub struct Delivery<T: Transport, P: Pacing> {
    spool: Arc<Spool>,
    transport: Arc<T>,
    pacing: Arc<P>,
    classifier: Arc<Classifier>,
    suppressed: Option<Arc<SuppressedFn>>,
    params: DeliveryParams,
    wake: Arc<Notify>,
    held: Arc<AtomicBool>,
    in_flight: Mutex<HashSet<QueueId>>,
    /// Messages whose last round hit a storage error (record not written, body not
    /// readable): not before (unix ms), and how many times in a row. Keeps a broken
    /// message from being re-sent in a loop.
    delayed: Mutex<HashMap<QueueId, (u64, u32)>>,
    /// No slot or rate cell was free (admission gave up): dispatch nothing before this
    /// (unix ms), so a long rate wait is not turned into a loop of futile attempts.
    busy_until: AtomicU64,
    /// Time spent paused since start (ms); it does not count towards `max_age`.
    paused_ms: AtomicU64,
    stats: DeliveryStats,
    log: DeliveryLog,
    webhook: Option<Arc<Webhook>>,
}

/// How a delivery round ended, for the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Outcomes recorded (or nothing to record).
    Done,
    /// Admission gave up (no slot or rate cell in time): the upstream is busy.
    Busy,
    /// The spool could not be read or written: back this message off.
    StorageError,
}

/// How long the dispatcher rests after admission gave up.
const BUSY_NAP_MS: u64 = 1000;

/// One recipient that failed for good in this round, for the bounce report.
struct Failure {
    address: String,
    reply: StoredReply,
    kind: FailKind,
    attempts: u32,
}

impl<T: Transport, P: Pacing> Delivery<T, P> {
    pub fn new(
        spool: Arc<Spool>,
        transport: Arc<T>,
        pacing: Arc<P>,
        classifier: Arc<Classifier>,
        params: DeliveryParams,
    ) -> Self {
        Self {
            spool,
            transport,
            pacing,
            classifier,
            suppressed: None,
            params,
            wake: Arc::new(Notify::new()),
            held: Arc::new(AtomicBool::new(false)),
            in_flight: Mutex::new(HashSet::new()),
            delayed: Mutex::new(HashMap::new()),
            busy_until: AtomicU64::new(0),
            paused_ms: AtomicU64::new(0),
            stats: DeliveryStats::default(),
            log: DeliveryLog::disabled(),
            webhook: None,
        }
    }

    /// Recipients suppressed after they were queued fail at delivery time instead of
    /// reaching the provider.
    pub fn with_suppression(mut self, f: Arc<SuppressedFn>) -> Self {
        self.suppressed = Some(f);
        self
    }

    pub fn with_log(mut self, log: DeliveryLog) -> Self {
        self.log = log;
        self
    }

    pub fn with_webhook(mut self, webhook: Option<Webhook>) -> Self {
        self.webhook = webhook.map(Arc::new);
        self
    }

    /// Notify it when a message was added or an operator changed something.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The operator's pause flag (`mailvalve queue pause`): while set, nothing is sent.
    pub fn hold_flag(&self) -> Arc<AtomicBool> {
        self.held.clone()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<QueueId>> {
        // Whole-value inserts and removes only: a poisoned lock holds a consistent set.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs until `shutdown`, then lets the transactions in flight finish (at most
    /// `grace`) and returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let workers = self.params.workers.max(1);
        let slots = Arc::new(Semaphore::new(workers));
        let mut next_expiry = 0u64;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = now_ms();
            // Paused by the operator or the account: nothing is taken from the spool,
            // nothing changes, and the time does not count towards `max_age` (a
            // weekend with refused credentials must not expire the whole queue).
            let paused = if self.held.load(Ordering::Acquire) {
                Some(None)
            } else {
                self.pacing.paused_for()
            };
            if let Some(remaining) = paused {
                let nap = remaining
                    .unwrap_or(Duration::from_secs(1))
                    .clamp(Duration::from_millis(10), Duration::from_secs(1));
                let started = std::time::Instant::now();
                self.sleep(nap, &shutdown).await;
                let slept = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                self.paused_ms.fetch_add(slept, Ordering::AcqRel);
                continue;
            }
            if now >= next_expiry {
                self.expire(now).await;
                next_expiry = schedule::next_attempt(now, self.params.expiry_interval);
            }
            // The provider unreachable (the upstream-wide connect backoff), or admission
            // just gave up: wait, without touching the spool.
            let busy = self.busy_until.load(Ordering::Acquire);
            let wait = self
                .pacing
                .connect_wait()
                .or_else(|| (busy > now).then(|| Duration::from_millis(busy - now)));
            if let Some(remaining) = wait {
                let nap = remaining.clamp(Duration::from_millis(10), Duration::from_secs(1));
                self.sleep(nap, &shutdown).await;
                continue;
            }
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let Some((id, idxs)) = self.next_job(now_ms()) else {
                drop(permit);
                let now = now_ms();
                let nap = match self.spool.next_due() {
                    Some(t) if t > now => Duration::from_millis(t - now),
                    // Due but in flight, or nothing queued: a finished delivery or a new
                    // message wakes us earlier.
                    _ => Duration::from_secs(1),
                };
                self.sleep(nap.min(Duration::from_secs(1)), &shutdown).await;
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let round = me.deliver(id, idxs).await;
                me.after_round(id, round);
                me.lock_in_flight().remove(&id);
                drop(permit);
                me.wake.notify_one();
            });
        }
        // Let transactions in flight finish so their outcomes are recorded.
        let all = u32::try_from(workers).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("queue: deliveries still in flight at shutdown; they will be retried");
        }
    }

    async fn sleep(&self, d: Duration, shutdown: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    fn lock_delayed(&self) -> std::sync::MutexGuard<'_, HashMap<QueueId, (u64, u32)>> {
        // Whole-value inserts and removes only.
        self.delayed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bookkeeping after a round: a storage error backs the message off exponentially
    /// (1 s, 2 s, ... at most 5 min); a busy upstream rests the dispatcher.
    fn after_round(&self, id: QueueId, round: Round) {
        let now = now_ms();
        match round {
            Round::Done => {
                self.lock_delayed().remove(&id);
            }
            Round::Busy => {
                self.busy_until
                    .fetch_max(now + BUSY_NAP_MS, Ordering::AcqRel);
            }
            Round::StorageError => {
                let mut d = self.lock_delayed();
                let n = d.get(&id).map_or(0, |e| e.1).saturating_add(1);
                let wait = 1000u64.saturating_mul(1 << n.min(9)).min(300_000);
                d.insert(id, (now + wait, n));
            }
        }
    }

    /// The earliest due message not already being delivered nor backed off; marks it
    /// in flight.
    fn next_job(&self, now: u64) -> Option<(QueueId, Vec<usize>)> {
        let mut busy = self.lock_in_flight();
        let mut delayed = self.lock_delayed();
        delayed.retain(|_, (until, _)| *until > now);
        let job = self
            .spool
            .due(now, busy.len() + delayed.len() + 1)
            .into_iter()
            .find(|(id, _)| !busy.contains(id) && !delayed.contains_key(id))?;
        busy.insert(job.0);
        Some(job)
    }

    /// Fails the pending recipients of messages older than `max_age` (those not being
    /// delivered right now; those are failed by `deliver` itself if they defer again).
    async fn expire(&self, now: u64) {
        let age = u64::try_from(self.params.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now
            .saturating_sub(age)
            .saturating_sub(self.paused_ms.load(Ordering::Acquire));
        for id in self.spool.received_before(cutoff) {
            if !self.lock_in_flight().insert(id) {
                continue;
            }
            match self.spool.get(id) {
                Ok(Some(msg)) => {
                    let mut failures = Vec::new();
                    let mut updates = Vec::new();
                    for (i, r) in msg.rcpts.iter().enumerate() {
                        if let RcptState::Pending {
                            attempts,
                            last_reply,
                            ..
                        } = &r.state
                        {
                            let reply = expired_reply(last_reply.as_ref());
                            self.stats.failed.fetch_add(1, Ordering::Relaxed);
                            self.log_outcome(
                                &msg,
                                &r.address,
                                Action::Expired,
                                &reply,
                                "expired",
                                *attempts,
                                None,
                            );
                            failures.push(Failure {
                                address: r.address.clone(),
                                reply: reply.clone(),
                                kind: FailKind::Expired,
                                attempts: *attempts,
                            });
                            updates.push((i, RcptState::Failed { reply }));
                        }
                    }
                    self.finish(&msg, None, updates, failures).await;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(%id, "queue: cannot read message to expire: {e}"),
            }
            self.lock_in_flight().remove(&id);
        }
    }

    /// One delivery round for message `id`, recipients `idxs` (all due).
    async fn deliver(&self, id: QueueId, idxs: Vec<usize>) -> Round {
        let msg = match self.spool.get(id) {
            Ok(Some(m)) => m,
            Ok(None) => return Round::Done,
            Err(e) => {
                tracing::error!(%id, "queue: cannot read message record: {e}");
                return Round::StorageError;
            }
        };
        let body = match self.spool.read_body(id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(%id, "queue: cannot read message body: {e}");
                return Round::StorageError;
            }
        };
        let mut busy = false;
        let mut updates: Vec<(usize, RcptState)> = Vec::new();
        let mut failures: Vec<Failure> = Vec::new();
        let mut todo = Vec::with_capacity(idxs.len());
        for i in idxs {
            let Some(r) = msg.rcpts.get(i) else { continue };
            let RcptState::Pending { attempts, .. } = r.state else {
                continue;
            };
            match self.suppressed.as_ref().and_then(|f| f(&r.address)) {
                Some(reply) => {
                    let reply = StoredReply::from(&reply);
                    self.log_outcome(
                        &msg,
                        &r.address,
                        Action::Suppressed,
                        &reply,
                        "suppressed",
                        attempts,
                        None,
                    );
                    failures.push(Failure {
                        address: r.address.clone(),
                        reply: reply.clone(),
                        kind: FailKind::Address,
                        attempts,
                    });
                    updates.push((i, RcptState::Failed { reply }));
                }
                None => todo.push(i),
            }
        }
        let per_tx = self.params.rcpts_per_message.max(1);
        // Time spent paused does not count (see `run`).
        let age = Duration::from_millis(
            now_ms()
                .saturating_sub(msg.received)
                .saturating_sub(self.paused_ms.load(Ordering::Acquire)),
        );
        for chunk in todo.chunks(per_tx) {
            let addrs: Vec<String> = chunk
                .iter()
                .map(|&i| msg.rcpts[i].address.clone())
                .collect();
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            let outcomes = self.transport.deliver(&msg.envelope, &addrs, &body).await;
            let now = now_ms();
            let mut held = false;
            for (k, &i) in chunk.iter().enumerate() {
                let rcpt = &msg.rcpts[i];
                let attempts = match rcpt.state {
                    RcptState::Pending { attempts, .. } => attempts,
                    _ => continue,
                };
                let Some(out) = outcomes.get(k) else {
                    tracing::error!(%id, "queue: transport returned too few outcomes");
                    continue;
                };
                let (decision, verdict) = self.decide(out, attempts);
                let reply = StoredReply::from(out.reply());
                match decision {
                    Decision::Delivered => {
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        self.log_outcome(
                            &msg,
                            &rcpt.address,
                            Action::Delivered,
                            &reply,
                            &verdict,
                            attempts + 1,
                            None,
                        );
                        updates.push((i, RcptState::Delivered { reply }));
                    }
                    Decision::Failed(kind) => {
                        self.fail(
                            &msg,
                            i,
                            reply,
                            kind,
                            attempts + 1,
                            &verdict,
                            &mut updates,
                            &mut failures,
                        );
                    }
                    Decision::Retry { counts, hint } if age >= self.params.max_age => {
                        let _ = (counts, hint);
                        self.fail(
                            &msg,
                            i,
                            reply,
                            FailKind::Expired,
                            attempts + 1,
                            &verdict,
                            &mut updates,
                            &mut failures,
                        );
                    }
                    Decision::Retry { counts, hint } => {
                        let delay = self
                            .pacing
                            .retry_delay(if counts { attempts } else { 0 }, hint);
                        let next = schedule::next_attempt(now, delay);
                        let attempts = attempts + u32::from(counts);
                        self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                        self.log_outcome(
                            &msg,
                            &rcpt.address,
                            Action::Deferred,
                            &reply,
                            &verdict,
                            attempts,
                            Some(next),
                        );
                        updates.push((
                            i,
                            RcptState::Pending {
                                attempts,
                                next_attempt: next,
                                last_reply: Some(reply),
                            },
                        ));
                    }
                    Decision::Hold => {
                        held = true;
                        busy |= matches!(
                            out,
                            Outcome::Local {
                                kind: LocalKind::Busy,
                                ..
                            }
                        );
                        if !matches!(
                            out,
                            Outcome::Local {
                                kind: LocalKind::Busy,
                                ..
                            }
                        ) {
                            self.log_outcome(
                                &msg,
                                &rcpt.address,
                                Action::Held,
                                &reply,
                                &verdict,
                                attempts,
                                None,
                            );
                        }
                    }
                }
            }
            if held {
                // The account is paused (or no slot was free): the rest of this
                // message waits too, untouched.
                break;
            }
        }
        let round = self.finish(&msg, Some(&body), updates, failures).await;
        if busy && round == Round::Done {
            Round::Busy
        } else {
            round
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        msg: &Message,
        i: usize,
        reply: StoredReply,
        kind: FailKind,
        attempts: u32,
        verdict: &str,
        updates: &mut Vec<(usize, RcptState)>,
        failures: &mut Vec<Failure>,
    ) {
        let address = msg.rcpts[i].address.clone();
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let action = if kind == FailKind::Expired {
            Action::Expired
        } else {
            Action::Failed
        };
        self.log_outcome(msg, &address, action, &reply, verdict, attempts, None);
        failures.push(Failure {
            address,
            reply: reply.clone(),
            kind,
            attempts,
        });
        updates.push((i, RcptState::Failed { reply }));
    }

    /// The decision for one outcome, and the verdict's name for the log.
    fn decide(&self, out: &Outcome, attempts: u32) -> (Decision, String) {
        match out {
            Outcome::Reply { phase, reply } => {
                let v = self.classifier.classify(*phase, reply).verdict;
                let d = schedule::decide(&v, *phase, reply, attempts);
                (d, v.name().to_string())
            }
            Outcome::Local { kind, .. } => match kind {
                LocalKind::Paused => (Decision::Hold, "paused".into()),
                // No update at all: the recipient stays due and is picked up again as
                // soon as a slot is free, or (unreachable) when the upstream's connect
                // backoff has passed.
                LocalKind::Busy => (Decision::Hold, "busy".into()),
                // Without an upstream backoff in force (a failure the controller does
                // not count as a connect failure), delay the message instead, so a
                // broken upstream is never retried in a tight loop.
                LocalKind::Unreachable if self.pacing.connect_wait().is_some() => {
                    (Decision::Hold, "unreachable".into())
                }
                LocalKind::Unreachable => (
                    Decision::Retry {
                        counts: false,
                        hint: None,
                    },
                    "unreachable".into(),
                ),
                // Counted, so that a message that breaks the connection every time
                // backs off further and further instead of being re-sent every few
                // seconds for days (attempts only steer the backoff).
                LocalKind::Broken => (
                    Decision::Retry {
                        counts: true,
                        hint: None,
                    },
                    "connection-lost".into(),
                ),
                LocalKind::BadAddress => {
                    (Decision::Failed(FailKind::Address), "bad-address".into())
                }
            },
        }
    }

    /// Bounce report first (so a crash between the two sends it twice rather than never),
    /// then the durable state change, then removal of a finished message.
    /// `body`: the message, when the caller has already read it.
    async fn finish(
        &self,
        msg: &Message,
        body: Option<&[u8]>,
        updates: Vec<(usize, RcptState)>,
        failures: Vec<Failure>,
    ) -> Round {
        if updates.is_empty() {
            return Round::Done;
        }
        if !failures.is_empty() {
            self.report(msg, body, &failures).await;
        }
        if let Err(e) = self.spool.record(msg.id, updates).await {
            // Not recorded: the recipients stay as they were and are retried after a
            // backoff (a delivered one may be sent again; never lost).
            tracing::error!(id = %msg.id, "queue: cannot record delivery outcome: {e}");
            return Round::StorageError;
        }
        match self.spool.remove(msg.id).await {
            Ok(_) => Round::Done,
            Err(e) => {
                tracing::error!(id = %msg.id, "queue: cannot remove finished message: {e}");
                Round::StorageError
            }
        }
    }

    /// The bounce report to the sender (unless the message is itself a bounce) and the
    /// webhook calls, for recipients that failed for good.
    async fn report(&self, msg: &Message, body: Option<&[u8]>, failures: &[Failure]) {
        if self.webhook.is_none() && !self.params.bounces {
            return;
        }
        let read;
        let body = match body {
            Some(b) => b,
            None => match self.spool.read_body(msg.id).await {
                Ok(b) => {
                    read = b;
                    &read[..]
                }
                Err(e) => {
                    tracing::error!(id = %msg.id, "queue: no bounce report, cannot read message: {e}");
                    return;
                }
            },
        };
        // A bounce that cannot be delivered is dropped: no report, no webhook (the
        // "failed" address would be the original sender's).
        if dsn::is_bounce(&msg.envelope.from, body) {
            return;
        }
        if let Some(hook) = &self.webhook {
            let campaign = webhook::campaign_uuid(dsn::header_block(body)).unwrap_or_default();
            for f in failures {
                let meta = serde_json::json!({
                    "queue_id": msg.id.to_string(),
                    "reply": f.reply.to_string(),
                    "kind": format!("{:?}", f.kind).to_lowercase(),
                });
                let payload =
                    webhook::payload_for_campaign(&f.address, &campaign, f.kind.is_hard(), &meta);
                let hook = Arc::clone(hook);
                tokio::spawn(async move {
                    if let Err(e) = hook.post(&payload).await {
                        tracing::warn!("bounce webhook failed: {e}");
                    }
                });
            }
        }
        if !self.params.bounces {
            return;
        }
        let now = now_ms();
        let rcpts: Vec<FailedRcpt> = failures
            .iter()
            .map(|f| FailedRcpt {
                address: &f.address,
                reply: &f.reply,
                attempts: f.attempts,
                last_attempt_ms: now,
                expired: f.kind == FailKind::Expired,
            })
            .collect();
        let report = dsn::build(&DsnInput {
            reporting_mta: &self.params.hostname,
            queue_id: msg.id,
            envelope_from: &msg.envelope.from,
            arrival_ms: msg.received,
            now_ms: now,
            original: body,
            failed: &rcpts,
        });
        let env = Envelope {
            from: self.params.bounce_from.clone(),
            eight_bit: dsn::needs_8bitmime(&report),
            ..Envelope::default()
        };
        match self
            .spool
            .put(&env, std::slice::from_ref(&msg.envelope.from), &report)
            .await
        {
            Ok(bid) => {
                self.stats.bounces.fetch_add(1, Ordering::Relaxed);
                tracing::info!(id = %msg.id, bounce = %bid, to = %msg.envelope.from, "bounce report queued");
                self.wake.notify_one();
            }
            Err(e) => tracing::error!(id = %msg.id, "queue: cannot queue bounce report: {e}"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn log_outcome(
        &self,
        msg: &Message,
        rcpt: &str,
        action: Action,
        reply: &StoredReply,
        verdict: &str,
        attempts: u32,
        next: Option<u64>,
    ) {
        self.log.write(&LogOutcome {
            ts_ms: now_ms(),
            queue_id: msg.id,
            from: &msg.envelope.from,
            rcpt,
            action,
            reply: Some(reply),
            verdict,
            attempts,
            next_attempt_ms: next,
        });
    }
}

/// The reply a recipient fails with when `max_age` passes: the provider's last one, or
/// a local 4.4.7 (RFC 3463: delivery time expired).
fn expired_reply(last: Option<&StoredReply>) -> StoredReply {
    match last {
        Some(r) => r.clone(),
        None => StoredReply::from(&Reply::new(
            451,
            EnhancedCode::new(4, 4, 7),
            "Delivery time expired",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::verdict::Phase;
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    /// A transport that answers from a script: `pause_first` transactions get a quota
    /// reply at MAIL, the rest per recipient (`defer@` 451, everything else 250).
    struct Scripted {
        calls: AtomicU32,
        pause_first: u32,
        /// Every attempt finds admission busy (no slot or rate cell in time).
        always_busy: bool,
        log: Mutex<Vec<Vec<String>>>,
        /// Like the controller after a quota reply: paused for 400 ms from then.
        pause: Arc<Mutex<Option<Instant>>>,
    }

    impl Transport for Scripted {
        async fn deliver(&self, _env: &Envelope, rcpts: &[String], _m: &[u8]) -> Vec<Outcome> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.log.lock().unwrap().push(rcpts.to_vec());
            if self.always_busy {
                let reply = Reply::new(451, EnhancedCode::new(4, 7, 0), "Provider busy");
                return vec![
                    Outcome::Local {
                        kind: LocalKind::Busy,
                        reply
                    };
                    rcpts.len()
                ];
            }
            if n < self.pause_first {
                *self.pause.lock().unwrap() = Some(Instant::now() + Duration::from_millis(400));
            }
            rcpts
                .iter()
                .map(|r| {
                    let (phase, text) = if n < self.pause_first {
                        (Phase::Mail, "550 5.4.5 Daily sending quota exceeded")
                    } else if r.starts_with("defer@") {
                        (Phase::Rcpt, "451 4.3.0 Temporary local problem")
                    } else {
                        (Phase::DataEnd, "250 2.0.0 Ok")
                    };
                    Outcome::Reply {
                        phase,
                        reply: Reply::parse_lenient(text).unwrap(),
                    }
                })
                .collect()
        }
    }

    /// Paused until `until` (set by the test), backoff of 50 ms × 2^attempt.
    struct FakePacing {
        until: Arc<Mutex<Option<Instant>>>,
    }

    impl Pacing for FakePacing {
        fn paused_for(&self) -> Option<Option<Duration>> {
            let u = (*self.until.lock().unwrap())?;
            let now = Instant::now();
            (now < u).then(|| Some(u - now))
        }
        fn retry_delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
            hint.unwrap_or(Duration::from_millis(50 << attempt.min(10)))
        }
    }

    struct Rig {
        engine: Arc<Delivery<Scripted, FakePacing>>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    async fn rig(pause_first: u32, params: DeliveryParams) -> Rig {
        rig_with(pause_first, false, params).await
    }

    async fn rig_with(pause_first: u32, always_busy: bool, params: DeliveryParams) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap();
        let pause = Arc::new(Mutex::new(None));
        let engine = Arc::new(Delivery::new(
            Arc::new(spool),
            Arc::new(Scripted {
                calls: AtomicU32::new(0),
                pause_first,
                always_busy,
                log: Mutex::new(Vec::new()),
                pause: pause.clone(),
            }),
            Arc::new(FakePacing { until: pause }),
            Arc::new(Classifier::builtin().unwrap()),
            params,
        ));
        let stop = CancellationToken::new();
        let task = tokio::spawn(engine.clone().run(stop.clone(), Duration::from_secs(2)));
        Rig {
            engine,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn put(r: &Rig, rcpts: &[&str]) -> QueueId {
        let env = Envelope {
            from: "news@example.org".into(),
            ..Envelope::default()
        };
        let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
        let id = r
            .engine
            .spool()
            .put(&env, &rcpts, b"Subject: hi\r\n\r\nbody\r\n")
            .await
            .unwrap();
        r.engine.waker().notify_one();
        id
    }

    async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + limit;
        while !f() {
            assert!(Instant::now() < end, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_pause_holds_without_an_attempt_and_resumes_when_it_ends() {
        let r = rig(1, DeliveryParams::default()).await;
        // The first transaction hits the quota; like the controller, the fake pacing
        // then pauses for 400 ms.
        let id = put(&r, &["a@example.org"]).await;
        until("first attempt", Duration::from_secs(5), || {
            r.engine.transport.calls.load(Ordering::SeqCst) >= 1
        })
        .await;
        let pause_end = r.engine.pacing.until.lock().unwrap().unwrap();
        assert_eq!(
            r.engine.transport.calls.load(Ordering::SeqCst),
            1,
            "no retry while paused"
        );
        let m = r.engine.spool().get(id).unwrap().unwrap();
        assert_eq!(
            m.rcpts[0].state,
            RcptState::new_pending(),
            "no attempt used, not rescheduled"
        );
        until("delivered after the pause", Duration::from_secs(5), || {
            r.engine.spool().is_empty()
        })
        .await;
        let done = Instant::now();
        assert!(done >= pause_end, "delivered during the pause");
        println!(
            "pause of 400 ms: delivered {:?} after it ended",
            done - pause_end
        );
        // Liveness, not speed: the schedule was not pushed out (the engine re-checks a
        // pause at least every second; a backoff would have meant 30 s and more).
        assert!(
            done - pause_end < Duration::from_secs(10),
            "resumed far too late"
        );
        assert_eq!(r.engine.stats().failed, 0);
        assert_eq!(r.engine.stats().bounces, 0);
        r.stop.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test]
    async fn deferred_recipients_back_off_and_expire_into_a_bounce() {
        let params = DeliveryParams {
            max_age: Duration::from_millis(600),
            expiry_interval: Duration::from_millis(100),
            rcpts_per_message: 1,
            ..DeliveryParams::default()
        };
        let r = rig(0, params).await;
        put(&r, &["ok@example.org", "defer@example.org"]).await;
        // ok@ delivered in its own transaction; defer@ retried on backoff, then expired
        // and bounced; the bounce (to news@) delivered.
        until("everything final", Duration::from_secs(5), || {
            r.engine.spool().is_empty()
        })
        .await;
        let s = r.engine.stats();
        let calls = r.engine.transport.log.lock().unwrap().clone();
        println!("transactions {calls:?}, stats {s:?}");
        assert!(
            calls.iter().all(|c| c.len() == 1),
            "split into single-recipient transactions"
        );
        let defer_tries = calls.iter().filter(|c| c[0] == "defer@example.org").count();
        // Backoff 50, 100, 200, 400 ms: a handful of tries in 600 ms, not dozens.
        assert!((2..=6).contains(&defer_tries), "{defer_tries} tries");
        assert_eq!(s.failed, 1);
        assert_eq!(s.bounces, 1);
        assert!(
            calls.iter().any(|c| c[0] == "news@example.org"),
            "bounce delivered"
        );
        r.stop.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_busy_upstream_is_not_retried_in_a_loop() {
        let r = rig_with(0, true, DeliveryParams::default()).await;
        put(&r, &["a@example.org"]).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let calls = r.engine.transport.calls.load(Ordering::SeqCst);
        println!("admission busy for 1.5 s: {calls} attempts");
        // A loop would make thousands; the dispatcher rests 1 s after each "busy".
        assert!((1..=4).contains(&calls), "{calls} attempts");
        let m = r.engine.spool().list().unwrap();
        assert_eq!(
            m[0].rcpts[0].state,
            RcptState::new_pending(),
            "busy changes nothing"
        );
        r.stop.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_commit_backs_the_message_off_instead_of_resending_it_at_once() {
        let r = rig(0, DeliveryParams::default()).await;
        // Queue the message while delivery is held, then make the next commit (the
        // first delivery's outcome) fail.
        r.engine.hold_flag().store(true, Ordering::SeqCst);
        put(&r, &["a@example.org"]).await;
        r.engine.spool().fail_next_commit();
        r.engine.hold_flag().store(false, Ordering::SeqCst);
        r.engine.waker().notify_one();
        let before = 0;
        until(
            "delivered after the backoff",
            Duration::from_secs(10),
            || r.engine.spool().is_empty(),
        )
        .await;
        let calls = r.engine.transport.calls.load(Ordering::SeqCst) - before;
        println!("record failed once: {calls} attempt(s) until delivered");
        assert_eq!(
            calls, 2,
            "the failed round, then one more after the backoff"
        );
        r.stop.cancel();
        r.task.await.unwrap();
    }

    #[tokio::test]
    async fn nothing_expires_while_the_account_is_paused() {
        let params = DeliveryParams {
            max_age: Duration::from_millis(200),
            expiry_interval: Duration::from_millis(20),
            ..DeliveryParams::default()
        };
        let r = rig(1, params).await;
        put(&r, &["a@example.org"]).await;
        // First attempt: quota reply, paused 400 ms — longer than max_age.
        until("delivered after the pause", Duration::from_secs(5), || {
            r.engine.spool().is_empty()
        })
        .await;
        let s = r.engine.stats();
        assert_eq!((s.failed, s.bounces, s.delivered), (0, 0, 1), "{s:?}");
        r.stop.cancel();
        r.task.await.unwrap();
    }
}
