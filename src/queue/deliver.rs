//! The delivery engine of queue mode: takes due messages from the [`Spool`], sends them
//! through a [`Transport`] (the same admission path and controller as passthrough),
//! and records each recipient's outcome durably — delivered, failed with a bounce
//! report, retried on the controller's backoff, or held while the account is paused.
//!
//! ```text
//! dispatcher ── one slot per concurrent transaction ──▶ deliver(id, due recipients)
//!    ▲  wakes on: new message, finished delivery, next due time, resume     │
//!    └──────── spool.record / remove after each transaction (durable) ◀─────┘
//! ```
//!
//! It must never lose a recipient (a state changes only by a durable spool commit, after
//! the attempt), never count an attempt or push the schedule out while paused, never
//! deliver the same message twice at once, never send a bounce for a bounce or to the
//! null sender, and never spin: every wait is on a wake-up or a bounded timer.
//!
//! # When outcomes cannot be written
//!
//! A provider's answer that cannot be recorded (disk full, I/O error) is not thrown
//! away: the outcome is kept in memory and its commit retried, and **dispatching halts
//! at the first failed commit** — nothing new is sent while the spool cannot say what
//! was sent. Only the transactions already in flight at that moment finish (their
//! outcomes are kept too). Once a commit succeeds again (the spool reopens its database
//! by itself) the kept outcomes are written, in order, and dispatching resumes. The
//! engine also starts halted and sends nothing before a first commit succeeded, so a
//! restart on a disk that is still full does not start sending either. A message can
//! thus reach the provider a second time only if the process ends while its outcome is
//! kept in memory (a crash, or a shutdown on a full disk); a bounce report or a webhook
//! call likewise goes out at most twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::delivery_log::{Action, DeliveryLog, LogEntry};
use super::dsn::{self, DsnInput, FailedRcpt};
use super::record::{Message, RcptState, StoredReply};
use super::schedule::{self, Decision, FailKind};
use super::transport::{LocalKind, RcptOutcome, Transport};
use super::webhook::{self, Webhook};
use super::{QueueId, Spool, SpoolError};
use crate::policy::clock::Clock;
use crate::policy::controller::Controller;
use crate::policy::pause::PauseState;
use crate::smtp::{EnhancedCode, Envelope, Reply};

/// What the engine needs of the controller: the time, pause state and retry timing.
pub trait Pacing: Send + Sync + 'static {
    /// Now, Unix ms: the controller's injected clock, the engine's only reading of time.
    fn now_ms(&self) -> u64;
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
    fn now_ms(&self) -> u64 {
        self.clock().unix_ms()
    }
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
    suppressed: Option<Arc<SuppressedFn>>,
    params: DeliveryParams,
    wake: Arc<Notify>,
    held: Arc<AtomicBool>,
    in_flight: Mutex<HashSet<QueueId>>,
    /// Messages whose last round could not read them (record or body): not before
    /// (unix ms), and how many times in a row. Keeps a broken message from being re-sent
    /// in a loop; the count stays until a round succeeds, so the wait keeps growing.
    delayed: Mutex<HashMap<QueueId, (u64, u32)>>,
    /// Outcomes that could not be written, and whether dispatching is halted.
    gate: Mutex<Gate>,
    /// No slot or rate cell was free (admission gave up): dispatch nothing before this
    /// (unix ms), so a long rate wait is not turned into a loop of futile attempts.
    busy_until: AtomicU64,
    stats: DeliveryStats,
    log: DeliveryLog,
    webhook: Option<Arc<Webhook>>,
}

/// Dispatching stops while `halted`; `kept` are outcomes waiting for their commit.
#[derive(Default)]
struct Gate {
    halted: bool,
    kept: Vec<Settle>,
    /// A failure was logged: say so when writes work again.
    failing: bool,
}

/// How a delivery round ended, for the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Outcomes recorded (or nothing to record).
    Done,
    /// Admission gave up (no slot or rate cell in time): the upstream is busy.
    Busy,
    /// The message could not be read: back this message off.
    StorageError,
    /// An outcome could not be written: it is kept, and dispatching is halted.
    Halted,
}

/// How long the dispatcher rests after admission gave up.
const BUSY_NAP_MS: u64 = 1000;
/// While halted, the kept outcomes (or a test commit) are retried after this, doubling
/// up to [`HALT_RETRY_MAX`].
const HALT_RETRY_MIN: Duration = Duration::from_millis(500);
const HALT_RETRY_MAX: Duration = Duration::from_secs(16);
/// Time spent paused is written to the spool at least this often while paused.
const PAUSE_SAVE_MS: u64 = 5_000;

/// One recipient that failed for good in this round, for the bounce report.
struct Failure {
    address: String,
    reply: StoredReply,
    kind: FailKind,
    attempts: u32,
}

/// Outcomes of one transaction (or one expiry) on their way to the spool: the webhook
/// calls and the bounce report for its failures, then the new recipient states, then
/// the removal of a finished message. Each step is done once; a step that fails keeps
/// the rest for a retry.
struct Settle {
    msg: Message,
    updates: Vec<(usize, RcptState)>,
    failures: Vec<Failure>,
    /// Every recipient is final once `updates` are in: remove the message.
    finished: bool,
    hooked: bool,
    bounced: bool,
    recorded: bool,
}

impl<T: Transport, P: Pacing> Delivery<T, P> {
    pub fn new(
        spool: Arc<Spool>,
        transport: Arc<T>,
        pacing: Arc<P>,
        params: DeliveryParams,
    ) -> Self {
        Self {
            spool,
            transport,
            pacing,
            suppressed: None,
            params,
            wake: Arc::new(Notify::new()),
            held: Arc::new(AtomicBool::new(false)),
            in_flight: Mutex::new(HashSet::new()),
            delayed: Mutex::new(HashMap::new()),
            // Nothing is sent before a first commit shows the spool takes writes.
            gate: Mutex::new(Gate {
                halted: true,
                ..Gate::default()
            }),
            busy_until: AtomicU64::new(0),
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

    /// True while dispatching is halted because outcomes could not be written (or no
    /// commit has succeeded yet since start).
    pub fn is_halted(&self) -> bool {
        self.lock_gate().halted
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<QueueId>> {
        // Whole-value inserts and removes only: a poisoned lock holds a consistent set.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        // Whole-value changes only.
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs until `shutdown`, then lets the transactions in flight finish (at most
    /// `grace`) and returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let workers = self.params.workers.max(1);
        let slots = Arc::new(Semaphore::new(workers));
        let mut next_expiry = 0u64;
        let mut halt_retry = HALT_RETRY_MIN;
        // Paused time not yet written to the spool.
        let mut unsaved_pause = 0u64;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Outcomes that could not be written come first; nothing is sent until they
            // are on disk.
            if self.is_halted() {
                if self.settle_kept().await {
                    halt_retry = HALT_RETRY_MIN;
                } else {
                    self.sleep(halt_retry, &shutdown).await;
                    halt_retry = (halt_retry * 2).min(HALT_RETRY_MAX);
                }
                continue;
            }
            let now = self.pacing.now_ms();
            // Paused by the operator or the account: nothing is taken from the spool,
            // nothing changes, and the time does not count towards `max_age` (a
            // weekend with refused credentials must not expire the whole queue, not
            // even across a restart: the spool keeps the total).
            let paused = if self.held.load(Ordering::Acquire) {
                Some(None)
            } else {
                self.pacing.paused_for()
            };
            if let Some(remaining) = paused {
                let nap = remaining
                    .unwrap_or(Duration::from_secs(1))
                    .clamp(Duration::from_millis(10), Duration::from_secs(1));
                let started = self.pacing.now_ms();
                self.sleep(nap, &shutdown).await;
                let slept = self.pacing.now_ms().saturating_sub(started);
                self.spool.add_paused(slept);
                unsaved_pause = unsaved_pause.saturating_add(slept);
                if unsaved_pause >= PAUSE_SAVE_MS || shutdown.is_cancelled() {
                    unsaved_pause = 0;
                    self.save_pause().await;
                }
                continue;
            }
            if unsaved_pause > 0 {
                unsaved_pause = 0;
                self.save_pause().await;
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
            let Some((id, idxs)) = self.next_job(self.pacing.now_ms()) else {
                drop(permit);
                let now = self.pacing.now_ms();
                let nap = match self.spool.next_due() {
                    Some(t) if t > now => Duration::from_millis(t - now),
                    // Due but in flight, or nothing queued, or halted: a finished
                    // delivery or a new message wakes us earlier.
                    _ => Duration::from_secs(1),
                };
                self.sleep(nap.min(Duration::from_secs(1)), &shutdown).await;
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let round = me.deliver(id, idxs).await;
                me.after_round(id, round, me.pacing.now_ms());
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
        // One last try for outcomes that could not be written, and the paused time.
        if self.is_halted() {
            self.settle_kept().await;
        }
        let kept = self.lock_gate().kept.len();
        if kept > 0 {
            tracing::error!(
                messages = kept,
                "queue: delivery outcomes could not be written before shutdown; these messages will be sent again"
            );
        }
        if unsaved_pause > 0 {
            self.save_pause().await;
        }
    }

    async fn sleep(&self, d: Duration, shutdown: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Writes the paused time; a failure is one more failed commit: halt.
    async fn save_pause(&self) {
        if let Err(e) = self.spool.save_state().await {
            tracing::error!("queue: cannot write the paused time: {e}; delivery halted");
            let mut gate = self.lock_gate();
            gate.halted = true;
            gate.failing = true;
        }
    }

    /// While halted: writes the kept outcomes (or, with none, makes a test commit).
    /// Returns true when that worked and dispatching resumed.
    async fn settle_kept(&self) -> bool {
        let jobs = std::mem::take(&mut self.lock_gate().kept);
        let had_jobs = !jobs.is_empty();
        let mut left = Vec::new();
        let mut error: Option<SpoolError> = None;
        for mut job in jobs {
            if error.is_none() {
                if let Err(e) = self.settle(&mut job, None).await {
                    error = Some(e);
                }
            }
            if error.is_some() {
                left.push(job);
            }
        }
        if !had_jobs {
            if let Err(e) = self.spool.save_state().await {
                error = Some(e);
            }
        }
        let mut gate = self.lock_gate();
        // Kept during this call by transactions still in flight: older ones first.
        let newer = std::mem::take(&mut gate.kept);
        gate.kept = left;
        gate.kept.extend(newer);
        match error {
            None if gate.kept.is_empty() => {
                gate.halted = false;
                if std::mem::take(&mut gate.failing) {
                    tracing::warn!("queue: the spool takes writes again; delivery resumes");
                }
                true
            }
            None => false,
            Some(e) => {
                gate.failing = true;
                tracing::warn!(
                    kept = gate.kept.len(),
                    "queue: the spool still cannot be written ({e}); delivery stays halted"
                );
                false
            }
        }
    }

    fn lock_delayed(&self) -> std::sync::MutexGuard<'_, HashMap<QueueId, (u64, u32)>> {
        // Whole-value inserts and removes only.
        self.delayed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bookkeeping after a round at `now` (unix ms): a storage error backs the message
    /// off exponentially (2 s, 4 s, ... at most 5 min, growing for as long as the errors
    /// go on); a busy upstream rests the dispatcher.
    fn after_round(&self, id: QueueId, round: Round, now: u64) {
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
            // The whole dispatcher waits (see `settle_kept`).
            Round::Halted => {}
        }
    }

    /// The earliest due message not already being delivered nor backed off; marks it
    /// in flight. Nothing while halted.
    fn next_job(&self, now: u64) -> Option<(QueueId, Vec<usize>)> {
        let mut busy = self.lock_in_flight();
        // Under the in-flight lock: a round that kept its outcome halted the gate before
        // it left `in_flight`, so its message cannot be taken again with a stale state.
        if self.is_halted() {
            return None;
        }
        let delayed = self.lock_delayed();
        let waiting = delayed.values().filter(|(until, _)| *until > now).count();
        let job = self
            .spool
            .due(now, busy.len() + waiting + 1)
            .into_iter()
            .find(|(id, _)| {
                !busy.contains(id) && !matches!(delayed.get(id), Some((until, _)) if *until > now)
            })?;
        busy.insert(job.0);
        Some(job)
    }

    /// Fails the pending recipients of messages older than `max_age` (those not being
    /// delivered right now; those are failed by `deliver` itself if they defer again).
    async fn expire(&self, now: u64) {
        for id in self.spool.expired(now, self.params.max_age) {
            {
                let mut busy = self.lock_in_flight();
                if self.is_halted() {
                    return;
                }
                if !busy.insert(id) {
                    continue;
                }
            }
            match self.spool.get(id) {
                Ok(Some(mut msg)) => {
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
                    self.finish(&mut msg, None, updates, failures).await;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(%id, "queue: cannot read message to expire: {e}"),
            }
            self.lock_in_flight().remove(&id);
        }
    }

    /// One delivery round for message `id`, recipients `idxs` (all due). The outcomes of
    /// each transaction are recorded as soon as it ends, so a message split into several
    /// transactions never sends an accepted part again after a crash.
    async fn deliver(&self, id: QueueId, idxs: Vec<usize>) -> Round {
        let mut msg = match self.spool.get(id) {
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
        let age = Duration::from_millis(msg.age_ms(self.pacing.now_ms(), self.spool.paused_ms()));
        for chunk in todo.chunks(per_tx) {
            let addrs: Vec<String> = chunk
                .iter()
                .map(|&i| msg.rcpts[i].address.clone())
                .collect();
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
            let outcomes = self.transport.deliver(&msg.envelope, &addrs, &body).await;
            let now = self.pacing.now_ms();
            // Read only when it matters (a lock on the controller).
            let backing_off = outcomes.iter().any(|o| {
                matches!(
                    o,
                    RcptOutcome::Local {
                        kind: LocalKind::Unreachable,
                        ..
                    }
                )
            }) && self.pacing.connect_wait().is_some();
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
                let (decision, verdict) = schedule::decide(out, attempts, chunk.len(), backing_off);
                let reply = StoredReply::from(out.reply());
                match decision {
                    Decision::Delivered => {
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        self.log_outcome(
                            &msg,
                            &rcpt.address,
                            Action::Delivered,
                            &reply,
                            verdict,
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
                            verdict,
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
                            verdict,
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
                            verdict,
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
                        let is_busy = matches!(
                            out,
                            RcptOutcome::Local {
                                kind: LocalKind::Busy,
                                ..
                            }
                        );
                        busy |= is_busy;
                        if !is_busy {
                            self.log_outcome(
                                &msg,
                                &rcpt.address,
                                Action::Held,
                                &reply,
                                verdict,
                                attempts,
                                None,
                            );
                        }
                    }
                }
            }
            // This transaction's outcomes (with the suppressed recipients, the first
            // time) are written before the next transaction starts.
            let round = self
                .finish(
                    &mut msg,
                    Some(&body),
                    std::mem::take(&mut updates),
                    std::mem::take(&mut failures),
                )
                .await;
            if round != Round::Done {
                return round;
            }
            if held {
                // The account is paused (or no slot was free): the rest of this
                // message waits too, untouched.
                break;
            }
        }
        // Only suppressed recipients were due.
        let round = self.finish(&mut msg, Some(&body), updates, failures).await;
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

    /// Writes outcomes of `msg`: bounce report first (so a crash between the two sends
    /// it twice rather than never), then the durable state change, then removal of a
    /// finished message. `msg` is updated to the new states. `body`: the message, when
    /// the caller has already read it. What cannot be written is kept and dispatching
    /// halts (`Round::Halted`).
    async fn finish(
        &self,
        msg: &mut Message,
        body: Option<&[u8]>,
        updates: Vec<(usize, RcptState)>,
        failures: Vec<Failure>,
    ) -> Round {
        if updates.is_empty() {
            return Round::Done;
        }
        for (i, state) in &updates {
            if let Some(r) = msg.rcpts.get_mut(*i) {
                r.state = state.clone();
            }
        }
        let mut job = Settle {
            msg: msg.clone(),
            updates,
            finished: msg.is_complete(),
            failures,
            hooked: false,
            bounced: false,
            recorded: false,
        };
        match self.settle(&mut job, body).await {
            Ok(()) => Round::Done,
            Err(e) => {
                tracing::error!(
                    id = %msg.id,
                    "queue: cannot record delivery outcome: {e}; kept in memory, delivery halted until the spool can be written again"
                );
                let mut gate = self.lock_gate();
                gate.kept.push(job);
                gate.halted = true;
                gate.failing = true;
                Round::Halted
            }
        }
    }

    /// Does what is left of `job`. `Err` only for a storage failure (the job is then
    /// to be kept and retried); anything else is logged and the step counted as done.
    async fn settle(&self, job: &mut Settle, body: Option<&[u8]>) -> Result<(), SpoolError> {
        let reported = job.hooked && job.bounced;
        if !job.failures.is_empty() && !reported {
            self.report(job, body).await?;
        }
        let id = job.msg.id;
        if !job.recorded {
            match self.spool.record(id, job.updates.clone()).await {
                Ok(()) => {}
                Err(e) if e.is_storage() => return Err(e),
                Err(SpoolError::NotFound(_)) => {
                    // Deleted by the operator meanwhile.
                    job.finished = false;
                }
                Err(e) => tracing::error!(%id, "queue: delivery outcome refused by the spool: {e}"),
            }
            job.recorded = true;
        }
        if job.finished {
            match self.spool.remove(id).await {
                Ok(_) | Err(SpoolError::NotFound(_)) => {}
                Err(e) if e.is_storage() => return Err(e),
                Err(e) => tracing::error!(%id, "queue: cannot remove finished message: {e}"),
            }
            job.finished = false;
        }
        Ok(())
    }

    /// The webhook calls and the bounce report to the sender (unless the message is
    /// itself a bounce), for recipients that failed for good; each at most once per
    /// job. `Err` when the bounce report could not be stored (retried with the job).
    async fn report(&self, job: &mut Settle, body: Option<&[u8]>) -> Result<(), SpoolError> {
        if self.webhook.is_none() && !self.params.bounces {
            job.hooked = true;
            job.bounced = true;
            return Ok(());
        }
        let msg = &job.msg;
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
                    job.hooked = true;
                    job.bounced = true;
                    return Ok(());
                }
            },
        };
        // A bounce that cannot be delivered is dropped: no report, no webhook (the
        // "failed" address would be the original sender's).
        if dsn::is_bounce(&msg.envelope.from, body) {
            job.hooked = true;
            job.bounced = true;
            return Ok(());
        }
        if let (Some(hook), false) = (&self.webhook, job.hooked) {
            let campaign = webhook::campaign_uuid(dsn::header_block(body)).unwrap_or_default();
            for f in &job.failures {
                let meta = serde_json::json!({
                    "queue_id": msg.id.to_string(),
                    "reply": f.reply.to_string(),
                    "kind": format!("{:?}", f.kind).to_lowercase(),
                });
                let payload =
                    webhook::payload_for_campaign(&f.address, &campaign, f.kind.is_hard(), &meta);
                let hook = Arc::clone(hook);
                // `post` runs at most a few at once; the rest wait their turn.
                tokio::spawn(async move {
                    if let Err(e) = hook.post(&payload).await {
                        tracing::warn!("bounce webhook failed: {e}");
                    }
                });
            }
        }
        job.hooked = true;
        if !self.params.bounces || job.bounced {
            job.bounced = true;
            return Ok(());
        }
        let now = self.pacing.now_ms();
        let rcpts: Vec<FailedRcpt> = job
            .failures
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
            Err(e) if e.is_storage() => {
                tracing::error!(id = %msg.id, "queue: cannot queue bounce report: {e}");
                return Err(e);
            }
            Err(e) => tracing::error!(id = %msg.id, "queue: cannot queue bounce report: {e}"),
        }
        job.bounced = true;
        Ok(())
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
        self.log.write(&LogEntry {
            ts_ms: self.pacing.now_ms(),
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
    use crate::policy::classify::Classifier;
    use crate::policy::verdict::Phase;
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    /// A transport that answers from a script: `pause_first` transactions get a quota
    /// reply at MAIL, the rest per recipient (`defer@` 451, everything else 250), or
    /// `all_reply` for every recipient when set.
    struct Scripted {
        calls: AtomicU32,
        pause_first: u32,
        /// Every attempt finds admission busy (no slot or rate cell in time).
        always_busy: bool,
        all_reply: Option<(Phase, &'static str)>,
        /// Transactions from this number on wait for a permit of `release` first.
        block_from: Option<u32>,
        release: Arc<Semaphore>,
        log: Mutex<Vec<Vec<String>>>,
        /// Like the controller after a quota reply: paused for 400 ms from then.
        pause: Arc<Mutex<Option<Instant>>>,
        classifier: Classifier,
    }

    impl Transport for Scripted {
        async fn deliver(&self, _env: &Envelope, rcpts: &[String], _m: &[u8]) -> Vec<RcptOutcome> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.log.lock().unwrap().push(rcpts.to_vec());
            if self.block_from.is_some_and(|b| n >= b) {
                self.release.acquire().await.unwrap().forget();
            }
            if self.always_busy {
                let reply = Reply::new(451, EnhancedCode::new(4, 7, 0), "Provider busy");
                return vec![
                    RcptOutcome::Local {
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
                    } else if let Some(all) = self.all_reply {
                        all
                    } else if r.starts_with("defer@") {
                        (Phase::Rcpt, "451 4.3.0 Temporary local problem")
                    } else if r.starts_with("gone@") {
                        (Phase::Rcpt, "550 5.1.1 User unknown")
                    } else {
                        (Phase::DataEnd, "250 2.0.0 Ok")
                    };
                    // Classified where it arrives, as the upstream observer does.
                    let reply = Reply::parse_lenient(text).unwrap();
                    RcptOutcome::Reply {
                        phase,
                        verdict: self.classifier.classify(phase, &reply).verdict,
                        reply,
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
        fn now_ms(&self) -> u64 {
            crate::policy::clock::wall_ms()
        }
        fn paused_for(&self) -> Option<Option<Duration>> {
            let u = (*self.until.lock().unwrap())?;
            let now = Instant::now();
            (now < u).then(|| Some(u - now))
        }
        fn retry_delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
            hint.unwrap_or(Duration::from_millis(50 << attempt.min(10)))
        }
    }

    type Engine = Delivery<Scripted, FakePacing>;

    struct Rig {
        engine: Arc<Engine>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    /// What the transport does besides the default script.
    #[derive(Default, Clone, Copy)]
    struct Script {
        pause_first: u32,
        always_busy: bool,
        all_reply: Option<(Phase, &'static str)>,
        block_from: Option<u32>,
    }

    async fn rig(pause_first: u32, params: DeliveryParams) -> Rig {
        rig_with(pause_first, false, params).await
    }

    async fn rig_with(pause_first: u32, always_busy: bool, params: DeliveryParams) -> Rig {
        let script = Script {
            pause_first,
            always_busy,
            ..Script::default()
        };
        let (engine, dir) = engine_on(tempfile::tempdir().unwrap(), script, params, None);
        started(engine, dir)
    }

    /// An engine on the spool in `dir`, not running yet.
    fn engine_on(
        dir: tempfile::TempDir,
        script: Script,
        params: DeliveryParams,
        webhook: Option<Webhook>,
    ) -> (Arc<Engine>, tempfile::TempDir) {
        let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap();
        let pause = Arc::new(Mutex::new(None));
        let engine = Delivery::new(
            Arc::new(spool),
            Arc::new(Scripted {
                calls: AtomicU32::new(0),
                pause_first: script.pause_first,
                always_busy: script.always_busy,
                all_reply: script.all_reply,
                block_from: script.block_from,
                release: Arc::new(Semaphore::new(0)),
                log: Mutex::new(Vec::new()),
                pause: pause.clone(),
                classifier: Classifier::builtin().unwrap(),
            }),
            Arc::new(FakePacing { until: pause }),
            params,
        )
        .with_webhook(webhook);
        (Arc::new(engine), dir)
    }

    fn started(engine: Arc<Engine>, dir: tempfile::TempDir) -> Rig {
        let stop = CancellationToken::new();
        let task = tokio::spawn(engine.clone().run(stop.clone(), Duration::from_secs(2)));
        Rig {
            engine,
            stop,
            task,
            _dir: dir,
        }
    }

    impl Rig {
        fn calls(&self) -> u32 {
            self.engine.transport.calls.load(Ordering::SeqCst)
        }
        async fn stop(self) -> tempfile::TempDir {
            self.stop.cancel();
            self.task.await.unwrap();
            self._dir
        }
    }

    async fn put_in(spool: &Spool, rcpts: &[&str]) -> QueueId {
        let env = Envelope {
            from: "news@example.org".into(),
            ..Envelope::default()
        };
        let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
        spool
            .put(&env, &rcpts, b"Subject: hi\r\n\r\nbody\r\n")
            .await
            .unwrap()
    }

    /// Lets the engine run for a while (a bounded observation window, no assertion on
    /// how long anything took).
    async fn let_it_run(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// A webhook receiver: every POST body, answered `200`.
    async fn webhook_server() -> (Webhook, Arc<Mutex<Vec<serde_json::Value>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Bounded: a request is a few hundred bytes.
                    for _ in 0..100 {
                        let n = c.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Length: "))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if body.len() >= len {
                                seen.lock()
                                    .unwrap()
                                    .push(serde_json::from_str(body).unwrap());
                                let _ = c
                                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                    .await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        let hook = Webhook::new(crate::config::webhook::WebhookConfig {
            url: format!("http://{addr}/webhooks/bounce"),
            ..crate::config::webhook::WebhookConfig::default()
        })
        .unwrap();
        (hook, seen)
    }

    async fn put(r: &Rig, rcpts: &[&str]) -> QueueId {
        let id = put_in(r.engine.spool(), rcpts).await;
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

    /// Issue 8.3: the spool cannot be written (redb latched on a full disk) while a
    /// delivery is in flight. The outcome is kept, nothing else is dispatched, nothing
    /// is sent again; once writes work again the kept outcome is written and the rest
    /// goes out, each message exactly once.
    #[tokio::test]
    async fn outcomes_that_cannot_be_written_are_kept_and_nothing_is_resent() {
        let params = DeliveryParams {
            workers: 1,
            ..DeliveryParams::default()
        };
        // The second transaction waits for the test, so the disk fills while it is out.
        let script = Script {
            block_from: Some(1),
            ..Script::default()
        };
        let (engine, dir) = engine_on(tempfile::tempdir().unwrap(), script, params, None);
        for i in 0..3 {
            put_in(engine.spool(), &[&format!("r{i}@example.org")]).await;
        }
        let r = started(engine, dir);
        // One worker: the first transaction was recorded before the second started.
        until("second transaction out", Duration::from_secs(5), || {
            r.calls() >= 2
        })
        .await;
        r.engine.spool().set_disk_full(true);
        r.engine.transport.release.add_permits(1);
        let_it_run(1500).await;
        let while_full = r.calls();
        println!("disk full for 1.5 s: {while_full} transaction(s) in all");
        // The one in flight when the disk filled ended (its outcome is kept); nothing
        // new went out, nothing again.
        assert_eq!(while_full, 2, "transactions while full");
        assert!(r.engine.is_halted());
        let log = r.engine.transport.log.lock().unwrap().clone();
        let distinct: HashSet<&Vec<String>> = log.iter().collect();
        assert_eq!(
            distinct.len(),
            log.len(),
            "a message was sent twice: {log:?}"
        );
        r.engine.spool().set_disk_full(false);
        r.engine.transport.release.add_permits(10);
        until("all delivered", Duration::from_secs(20), || {
            r.engine.spool().is_empty()
        })
        .await;
        let log = r.engine.transport.log.lock().unwrap().clone();
        assert_eq!(log.len(), 3, "each message exactly once: {log:?}");
        assert_eq!(log.iter().collect::<HashSet<_>>().len(), 3, "{log:?}");
        assert_eq!(r.engine.stats().delivered, 3);
        r.stop().await;
    }

    /// Issue 8.3, after a restart: commits still fail, so nothing is sent until one
    /// succeeds again.
    #[tokio::test]
    async fn a_restart_on_a_full_disk_sends_nothing_until_a_commit_succeeds() {
        let (engine, dir) = engine_on(
            tempfile::tempdir().unwrap(),
            Script::default(),
            DeliveryParams::default(),
            None,
        );
        put_in(engine.spool(), &["a@example.org"]).await;
        put_in(engine.spool(), &["b@example.org"]).await;
        engine.spool().set_disk_full(true);
        let r = started(engine, dir);
        let_it_run(1500).await;
        assert_eq!(r.calls(), 0, "sent while no commit could succeed");
        r.engine.spool().set_disk_full(false);
        until("all delivered", Duration::from_secs(20), || {
            r.engine.spool().is_empty()
        })
        .await;
        assert_eq!(r.calls(), 2);
        r.stop().await;
    }

    /// Issue 8.3: a failed recipient's bounce report cannot be stored and its outcome
    /// cannot be written. The webhook is called once, the bounce report is queued once
    /// when the disk has room again, the message is not sent again.
    #[tokio::test]
    async fn a_bounce_report_and_webhook_go_out_once_while_commits_fail() {
        let (hook, seen) = webhook_server().await;
        // The transaction waits for the test, so the disk can fill while it is out.
        let script = Script {
            block_from: Some(0),
            ..Script::default()
        };
        let (engine, dir) = engine_on(
            tempfile::tempdir().unwrap(),
            script,
            DeliveryParams::default(),
            Some(hook),
        );
        put_in(engine.spool(), &["gone@example.org"]).await;
        let r = started(engine, dir);
        until("the attempt", Duration::from_secs(5), || r.calls() >= 1).await;
        r.engine.spool().set_disk_full(true);
        r.engine.transport.release.add_permits(1);
        until("webhook called", Duration::from_secs(10), || {
            !seen.lock().unwrap().is_empty()
        })
        .await;
        let_it_run(3000).await;
        assert_eq!(
            r.calls(),
            1,
            "sent again while the outcome could not be written"
        );
        assert_eq!(seen.lock().unwrap().len(), 1, "webhook called again");
        assert_eq!(r.engine.stats().bounces, 0, "no room for the bounce yet");
        r.engine.spool().set_disk_full(false);
        r.engine.transport.release.add_permits(10);
        // The bounce report itself is delivered too (to news@, scripted 250).
        until(
            "bounce queued and everything done",
            Duration::from_secs(20),
            || r.engine.spool().is_empty() && r.engine.stats().bounces == 1,
        )
        .await;
        let log = r.engine.transport.log.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                vec!["gone@example.org".to_string()],
                vec!["news@example.org".into()]
            ]
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(r.engine.stats().bounces, 1);
        r.stop().await;
    }

    /// The hint of issue 8.3: a message that cannot be read is backed off further and
    /// further; the count of failures in a row must survive the wait (it used to be
    /// dropped when the wait ended, so the backoff never grew past 2 s).
    #[tokio::test]
    async fn the_storage_error_backoff_keeps_growing() {
        let (engine, _dir) = engine_on(
            tempfile::tempdir().unwrap(),
            Script::default(),
            DeliveryParams::default(),
            None,
        );
        let id = put_in(engine.spool(), &["a@example.org"]).await;
        engine.lock_gate().halted = false;
        let mut now = crate::policy::clock::wall_ms();
        let mut waits = Vec::new();
        for _ in 0..4 {
            engine.after_round(id, Round::StorageError, now);
            let until = engine.lock_delayed()[&id].0;
            waits.push(until - now);
            assert_eq!(engine.next_job(until - 1), None, "taken during its wait");
            now = until;
            // Due again: taken, tried, fails again.
            assert_eq!(engine.next_job(now).map(|j| j.0), Some(id));
            engine.lock_in_flight().remove(&id);
        }
        assert_eq!(waits, vec![2000, 4000, 8000, 16000]);
        engine.after_round(id, Round::Done, now);
        engine.after_round(id, Round::StorageError, now);
        assert_eq!(
            engine.lock_delayed()[&id].0 - now,
            2000,
            "reset by a good round"
        );
    }

    /// Issue 8.6: a message split into two transactions; the first one's outcome is on
    /// disk before the second transaction ends, so a crash then cannot resend it.
    #[tokio::test]
    async fn each_transaction_of_a_split_message_is_recorded_when_it_ends() {
        let params = DeliveryParams {
            rcpts_per_message: 1,
            ..DeliveryParams::default()
        };
        let script = Script {
            block_from: Some(1),
            ..Script::default()
        };
        let (engine, dir) = engine_on(tempfile::tempdir().unwrap(), script, params, None);
        let id = put_in(engine.spool(), &["a@example.org", "b@example.org"]).await;
        let r = started(engine, dir);
        until("second transaction started", Duration::from_secs(5), || {
            r.calls() >= 2
        })
        .await;
        // The second transaction is still waiting for the provider.
        let m = r.engine.spool().get(id).unwrap().unwrap();
        assert!(
            matches!(m.rcpts[0].state, RcptState::Delivered { .. }),
            "first part not recorded while the second is in flight: {:?}",
            m.rcpts[0].state
        );
        assert_eq!(m.rcpts[1].state, RcptState::new_pending());
        r.engine.transport.release.add_permits(1);
        until("done", Duration::from_secs(5), || {
            r.engine.spool().is_empty()
        })
        .await;
        assert_eq!(r.calls(), 2);
        r.stop().await;
    }

    /// Issue 8.6: a 5xx at the end of DATA of a transaction with several recipients
    /// fails all of them, as a message failure: no "hard" bounce for any address.
    #[tokio::test]
    async fn a_5xx_to_a_whole_transaction_fails_all_recipients_as_soft() {
        let (hook, seen) = webhook_server().await;
        let script = Script {
            all_reply: Some((
                Phase::DataEnd,
                "550 5.1.1 <a@example.org>: Recipient address rejected: User unknown",
            )),
            ..Script::default()
        };
        let params = DeliveryParams {
            bounces: false,
            ..DeliveryParams::default()
        };
        let (engine, dir) = engine_on(tempfile::tempdir().unwrap(), script, params, Some(hook));
        put_in(engine.spool(), &["a@example.org", "b@example.org"]).await;
        let r = started(engine, dir);
        until("both webhook calls", Duration::from_secs(10), || {
            seen.lock().unwrap().len() >= 2
        })
        .await;
        until("done", Duration::from_secs(5), || {
            r.engine.spool().is_empty()
        })
        .await;
        assert_eq!(r.engine.stats().failed, 2);
        let seen = seen.lock().unwrap().clone();
        for p in &seen {
            assert_eq!(p["type"], "soft", "{p}");
            assert_eq!(p["meta"]["kind"], "message", "{p}");
        }
        r.stop().await;
    }

    /// Issue 8.6: time spent paused survives a restart. Held for longer than `max_age`,
    /// restarted, the message is delivered, not expired.
    #[tokio::test]
    async fn time_paused_before_a_restart_does_not_count_towards_max_age() {
        let params = DeliveryParams {
            max_age: Duration::from_millis(2500),
            expiry_interval: Duration::from_millis(50),
            ..DeliveryParams::default()
        };
        let (engine, dir) = engine_on(
            tempfile::tempdir().unwrap(),
            Script::default(),
            params.clone(),
            None,
        );
        engine.hold_flag().store(true, Ordering::SeqCst);
        put_in(engine.spool(), &["a@example.org"]).await;
        let r = started(engine, dir);
        // "A weekend of refused credentials".
        let_it_run(3500).await;
        assert_eq!(r.calls(), 0);
        let dir = r.stop().await;
        // Restart, no longer paused.
        let (engine, dir) = engine_on(dir, Script::default(), params, None);
        let r = started(engine, dir);
        until("delivered or failed", Duration::from_secs(10), || {
            r.engine.spool().is_empty()
        })
        .await;
        let s = r.engine.stats();
        assert_eq!((s.delivered, s.failed, s.bounces), (1, 0, 0), "{s:?}");
        r.stop().await;
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
