//! The delivery engine of queue mode: takes due messages from the [`Spool`], sends them
//! through a [`Transport`] (the same admission path and controller as passthrough),
//! and records each recipient's outcome durably — delivered, failed with a bounce
//! report, retried on the controller's backoff, or held while the account is paused.
//!
//! ```text
//! dispatcher ── one slot per allowed connection ──▶ deliver(id, due recipients)
//!    ▲  wakes on: new message, finished delivery, next due time, resume     │
//!    └──────── spool.record / remove after each transaction (durable) ◀─────┘
//! ```
//!
//! Here the engine, its settings and counters; [`dispatch`] is the loop (slots, wake-ups,
//! pauses, the halt after a failed commit), [`round`] one delivery round of one message
//! (transactions, decisions, bounce reports, webhook calls, the durable record).
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

mod dispatch;
mod round;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::delivery_log::DeliveryLog;
use super::record::{Message, RcptState, StoredReply};
use super::schedule::FailKind;
use super::transport::Transport;
use super::webhook::Webhook;
use super::{QueueId, Spool};
use crate::policy::clock::Clock;
use crate::policy::controller::{Controller, Reachability};
use crate::policy::pause::PauseState;
use crate::smtp::Reply;

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
    /// Whether the provider can be reached, as the connect outcomes say.
    fn reachability(&self) -> Reachability {
        Reachability::Reachable
    }
    /// How many transactions may run at once, as it changes (the controller's learned
    /// connection limit, itself within the reloadable `max_connections`). `None` = the
    /// fixed [`DeliveryParams::workers`].
    fn slots(&self) -> Option<watch::Receiver<usize>> {
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
    fn reachability(&self) -> Reachability {
        Controller::reachability(self)
    }
    fn slots(&self) -> Option<watch::Receiver<usize>> {
        Some(self.watch_limit())
    }
}

/// Looks up whether an address is suppressed; `Some(reply)` is the local 550 for it.
pub type SuppressedFn = dyn Fn(&str) -> Option<Reply> + Send + Sync;

/// Settings of the engine (from `[queue]`, the profile and `[server]`).
#[derive(Debug, Clone)]
pub struct DeliveryParams {
    /// Transactions at once when the pacing publishes no limit of its own
    /// ([`Pacing::slots`]); with the controller, the slots follow its connection limit.
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
    /// Recipients failed because the suppression list holds them (not in `failed`).
    pub suppressed: AtomicU64,
    /// Recipients given up after `queue.max_age` (also counted in `failed`).
    pub expired: AtomicU64,
    /// Bounce webhook posts that succeeded / failed.
    pub webhook_ok: AtomicU64,
    pub webhook_failed: AtomicU64,
    /// The same outcomes for the current local calendar day (since start, if started
    /// today).
    today: Mutex<Today>,
}

/// Outcomes of one local calendar day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Today {
    /// Days since 1 January of year 1 (local time); 0 before the first outcome.
    pub day: i32,
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
}

/// Which counter an outcome goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counted {
    Delivered,
    Deferred,
    Failed,
}

/// The local calendar day of `unix_ms` (days since 1 January of year 1), in the system's
/// time zone: what "today" means to the person reading `queue status`.
pub fn local_day(unix_ms: u64) -> i32 {
    use chrono::Datelike;
    i64::try_from(unix_ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .date_naive()
                .num_days_from_ce()
        })
        .unwrap_or(0)
}

/// A snapshot of [`DeliveryStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    pub bounces: u64,
    pub transactions: u64,
    pub suppressed: u64,
    pub expired: u64,
    pub webhook_ok: u64,
    pub webhook_failed: u64,
    /// Today's outcomes (zero when nothing happened yet today).
    pub today: Today,
}

impl DeliveryStats {
    /// The counters, with "today" as of `day` (see [`local_day`]).
    pub fn snapshot_on(&self, day: i32) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let today = *self.today.lock().unwrap_or_else(|p| p.into_inner());
        StatsSnapshot {
            delivered: g(&self.delivered),
            deferred: g(&self.deferred),
            failed: g(&self.failed),
            bounces: g(&self.bounces),
            transactions: g(&self.transactions),
            suppressed: g(&self.suppressed),
            expired: g(&self.expired),
            webhook_ok: g(&self.webhook_ok),
            webhook_failed: g(&self.webhook_failed),
            today: if today.day == day {
                today
            } else {
                Today {
                    day,
                    ..Today::default()
                }
            },
        }
    }

    /// Counts one outcome, since start and on `day`.
    pub(crate) fn count(&self, what: Counted, day: i32) {
        let mut t = self.today.lock().unwrap_or_else(|p| p.into_inner());
        if t.day != day {
            *t = Today {
                day,
                ..Today::default()
            };
        }
        match what {
            Counted::Delivered => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                t.delivered += 1;
            }
            Counted::Deferred => {
                self.deferred.fetch_add(1, Ordering::Relaxed);
                t.deferred += 1;
            }
            Counted::Failed => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                t.failed += 1;
            }
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
    /// Recipients (message, index) whose hold was logged: a hold is logged once when it
    /// starts and once when it ends, not at every check.
    holds: Mutex<HashSet<(QueueId, usize)>>,
    /// Messages whose last round could not read them (record or body): not before
    /// (unix ms), and how many times in a row. Keeps a broken message from being re-sent
    /// in a loop; the count stays until a round succeeds, so the wait keeps growing.
    delayed: Mutex<HashMap<QueueId, (u64, u32)>>,
    /// Outcomes that could not be written, and whether dispatching is halted.
    gate: Mutex<Gate>,
    /// No slot or rate cell was free (admission gave up): dispatch nothing before this
    /// (unix ms), so a long rate wait is not turned into a loop of futile attempts.
    busy_until: AtomicU64,
    stats: Arc<DeliveryStats>,
    log: DeliveryLog,
    /// Replaced by a reload ([`Delivery::set_webhook`]) for the next post.
    webhook: std::sync::RwLock<Option<Arc<Webhook>>>,
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
            holds: Mutex::new(HashSet::new()),
            delayed: Mutex::new(HashMap::new()),
            // Nothing is sent before a first commit shows the spool takes writes.
            gate: Mutex::new(Gate {
                halted: true,
                ..Gate::default()
            }),
            busy_until: AtomicU64::new(0),
            stats: Arc::new(DeliveryStats::default()),
            log: DeliveryLog::disabled(),
            webhook: std::sync::RwLock::new(None),
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

    /// The bounce webhook now (the one a reload installed, if any).
    pub fn webhook(&self) -> Option<Arc<Webhook>> {
        self.webhook
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the bounce webhook (a reload) for the next post.
    pub fn set_webhook(&self, webhook: Option<Webhook>) {
        *self.webhook.write().unwrap_or_else(|e| e.into_inner()) = webhook.map(Arc::new);
    }

    pub fn with_webhook(self, webhook: Option<Webhook>) -> Self {
        self.set_webhook(webhook);
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
        self.stats.snapshot_on(local_day(self.pacing.now_ms()))
    }

    /// Counts one outcome (since start and today).
    pub(crate) fn count(&self, what: Counted) {
        self.stats.count(what, local_day(self.pacing.now_ms()));
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// True while dispatching is halted because outcomes could not be written (or no
    /// commit has succeeded yet since start).
    pub fn is_halted(&self) -> bool {
        self.lock_gate().halted
    }

    /// True while dispatching is halted because a write to the spool failed — not in the
    /// moment after start before the first test commit, which is halted too but healthy
    /// (what `queue status` must not report as a spool that cannot be written).
    pub fn spool_failing(&self) -> bool {
        let gate = self.lock_gate();
        gate.halted && gate.failing
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<QueueId>> {
        // Whole-value inserts and removes only: a poisoned lock holds a consistent set.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        // Whole-value changes only.
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_delayed(&self) -> std::sync::MutexGuard<'_, HashMap<QueueId, (u64, u32)>> {
        // Whole-value inserts and removes only.
        self.delayed.lock().unwrap_or_else(|e| e.into_inner())
    }
}
