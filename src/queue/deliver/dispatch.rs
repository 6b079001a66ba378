//! The dispatcher of the delivery engine: one loop that takes due messages from the
//! spool into a bounded number of slots, rests while the account is paused, the provider
//! is unreachable or admission is busy, and halts while outcomes cannot be written (see
//! the engine's docs). It never sends anything itself: each slot runs one
//! [`round`](super::round).
//!
//! The slots follow the controller's connection limit ([`Pacing::slots`]): a raised
//! limit is used at once, a lowered one is obeyed as rounds finish (no round is cut
//! short). A wait after a refused new connection while others work does not stop the
//! dispatcher: the admission stack hands out the connections that work and spaces the
//! new ones; only an unreachable provider rests it.
//!
//! It must never spin (every wait is on a wake-up or a bounded timer), never take a
//! message that is in flight or backed off, and never dispatch while halted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Delivery, Pacing, Round, BUSY_NAP_MS, HALT_RETRY_MAX, HALT_RETRY_MIN, PAUSE_SAVE_MS};
use crate::policy::controller::Reachability;
use crate::queue::schedule;
use crate::queue::transport::Transport;
use crate::queue::{QueueId, SpoolError};

/// One running round's slot: counted while it lives, freed when the round ends (or its
/// task is dropped).
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Slot {
    fn take(active: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::AcqRel);
        Slot(active.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often the progress line is written while delivering.
const PROGRESS_EVERY_MS: u64 = 60_000;

impl<T: Transport, P: Pacing> Delivery<T, P> {
    /// Runs until `shutdown`, then lets the transactions in flight finish (at most
    /// `grace`) and returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        let mut slots = self.pacing.slots();
        // Rounds running now (each holds one slot).
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut next_expiry = 0u64;
        let mut halt_retry = HALT_RETRY_MIN;
        // Paused time not yet written to the spool.
        let mut unsaved_pause = 0u64;
        // Since when (Unix ms) the provider is unreachable, as last logged.
        let mut away_since: Option<u64> = None;
        // The counters at the last progress line, and when it was written.
        let mut progress = (self.stats(), self.pacing.now_ms());
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            away_since = self.log_reachability(away_since);
            progress = self.log_progress(progress);
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
            let unreachable =
                matches!(self.pacing.reachability(), Reachability::Unreachable { .. });
            let wait = unreachable
                .then(|| self.pacing.connect_wait())
                .flatten()
                .or_else(|| (busy > now).then(|| Duration::from_millis(busy - now)));
            if let Some(remaining) = wait {
                let nap = remaining.clamp(Duration::from_millis(10), Duration::from_secs(1));
                self.sleep(nap, &shutdown).await;
                continue;
            }
            // The provider was unreachable and the wait is over: check it before any
            // message is taken, so a provider still away costs no message a round and
            // writes nothing to the delivery log. Every failed check lengthens the wait
            // (up to `upstream.reachability_interval`).
            if matches!(self.pacing.reachability(), Reachability::Unreachable { .. }) {
                let checked = tokio::select! {
                    c = self.transport.check_reachable() => c,
                    _ = shutdown.cancelled() => break,
                };
                if checked == Some(false) {
                    if self.pacing.connect_wait().is_none() {
                        // A failure the controller did not count: never a tight loop.
                        self.sleep(Duration::from_secs(1), &shutdown).await;
                    }
                    continue;
                }
            }
            // A free slot: fewer rounds running than the limit allows now.
            let allowed = slots
                .as_mut()
                .map_or(self.params.workers, |rx| *rx.borrow_and_update())
                .max(1);
            if active.load(Ordering::Acquire) >= allowed {
                // A finished round wakes us, and so does a new limit.
                let changed = async {
                    match slots.as_mut() {
                        Some(rx) => {
                            if rx.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = changed => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let Some((id, idxs)) = self.next_job(self.pacing.now_ms()) else {
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
            let slot = Slot::take(&active);
            tokio::spawn(async move {
                let round = me.deliver(id, idxs).await;
                me.after_round(id, round, me.pacing.now_ms());
                me.lock_in_flight().remove(&id);
                drop(slot);
                me.wake.notify_one();
            });
        }
        // Let transactions in flight finish so their outcomes are recorded.
        let drained = async {
            while active.load(Ordering::Acquire) > 0 {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
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

    /// One info line a minute while there is something to tell: what happened in that
    /// minute and what is left. Returns the state to remember.
    fn log_progress(&self, (last, at): (super::StatsSnapshot, u64)) -> (super::StatsSnapshot, u64) {
        let now = self.pacing.now_ms();
        if now.saturating_sub(at) < PROGRESS_EVERY_MS {
            return (last, at);
        }
        let s = self.stats();
        if s != last {
            tracing::info!(
                delivered = s.delivered - last.delivered,
                deferred = s.deferred - last.deferred,
                failed = s.failed - last.failed,
                queued = self.spool.len(),
                "queue: progress in the last minute"
            );
        }
        (s, now)
    }

    /// Logs when the provider becomes unreachable and when it is back (once each, not at
    /// every check); returns the state to remember.
    fn log_reachability(&self, logged: Option<u64>) -> Option<u64> {
        match (self.pacing.reachability(), logged) {
            (Reachability::Unreachable { since_ms, .. }, None) => {
                tracing::warn!(
                    since = %crate::queue::delivery_log::rfc3339(since_ms),
                    "provider unreachable: delivery waits and checks it again at least every upstream.reachability_interval"
                );
                Some(since_ms)
            }
            (Reachability::Reachable, Some(since)) => {
                let away = Duration::from_millis(self.pacing.now_ms().saturating_sub(since));
                tracing::info!(
                    after = %humantime::format_duration(Duration::from_secs(away.as_secs())),
                    "provider reachable again: delivery resumes"
                );
                None
            }
            (_, state) => state,
        }
    }

    pub(super) async fn sleep(&self, d: Duration, shutdown: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified() => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Writes the paused time; a failure is one more failed commit: halt.
    pub(super) async fn save_pause(&self) {
        if let Err(e) = self.spool.save_state().await {
            tracing::error!("queue: cannot write the paused time: {e}; delivery halted");
            let mut gate = self.lock_gate();
            gate.halted = true;
            gate.failing = true;
        }
    }

    /// While halted: writes the kept outcomes (or, with none, makes a test commit).
    /// Returns true when that worked and dispatching resumed.
    pub(super) async fn settle_kept(&self) -> bool {
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

    /// Bookkeeping after a round at `now` (unix ms): a storage error backs the message
    /// off exponentially (2 s, 4 s, ... at most 5 min, growing for as long as the errors
    /// go on); a busy upstream rests the dispatcher.
    pub(super) fn after_round(&self, id: QueueId, round: Round, now: u64) {
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
    pub(super) fn next_job(&self, now: u64) -> Option<(QueueId, Vec<usize>)> {
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
}
