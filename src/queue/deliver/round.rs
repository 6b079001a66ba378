//! One delivery round of the engine: the due recipients of one message, in
//! transactions of at most `rcpts_per_message`, each transaction's outcomes decided
//! (`schedule::decide`) and recorded durably before the next starts; bounce reports,
//! webhook calls and the delivery log for what failed for good; and the expiry of
//! messages older than `max_age`.
//!
//! It must never lose a recipient (a state changes only by a durable spool commit, after
//! the attempt), never send a bounce for a bounce or to the null sender, and never throw
//! an outcome away that could not be written: it is kept and dispatching halts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Delivery, Failure, Pacing, Round, Settle};
use crate::queue::delivery_log::{Action, LogEntry};
use crate::queue::dsn::{self, DsnInput, FailedRcpt};
use crate::queue::record::{Message, RcptState, StoredReply};
use crate::queue::schedule::{self, Decision, FailKind};
use crate::queue::transport::{LocalKind, RcptOutcome, Transport};
use crate::queue::webhook;
use crate::queue::{QueueId, SpoolError};
use crate::smtp::{EnhancedCode, Envelope, Reply};

impl<T: Transport, P: Pacing> Delivery<T, P> {
    /// Fails the pending recipients of messages older than `max_age` (those not being
    /// delivered right now; those are failed by `deliver` itself if they defer again).
    pub(super) async fn expire(&self, now: u64) {
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
                            self.count(super::Counted::Failed);
                            self.stats.expired.fetch_add(1, Ordering::Relaxed);
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
    pub(super) async fn deliver(&self, id: QueueId, idxs: Vec<usize>) -> Round {
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
                    self.stats.suppressed.fetch_add(1, Ordering::Relaxed);
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
                if decision != Decision::Hold && self.hold_ended(msg.id, i) {
                    self.log_outcome(
                        &msg,
                        &rcpt.address,
                        Action::Resumed,
                        &reply,
                        verdict,
                        attempts,
                        None,
                    );
                }
                match decision {
                    Decision::Delivered => {
                        self.count(super::Counted::Delivered);
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
                        self.count(super::Counted::Deferred);
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
                    Decision::NextTransaction | Decision::Paced => {
                        // Due now: the dispatcher takes the message again as soon as
                        // this round ends, for a transaction of its own (and, when
                        // paced, as soon as admission lets it go).
                        self.count(super::Counted::Deferred);
                        self.log_outcome(
                            &msg,
                            &rcpt.address,
                            Action::Deferred,
                            &reply,
                            verdict,
                            attempts,
                            Some(now),
                        );
                        updates.push((
                            i,
                            RcptState::Pending {
                                attempts,
                                next_attempt: now,
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
                        // No slot in time, or no new connection allowed yet (the
                        // connect backoff): the dispatcher rests before the next round.
                        busy |= is_busy
                            || matches!(
                                out,
                                RcptOutcome::Local {
                                    kind: LocalKind::Unreachable,
                                    ..
                                }
                            );
                        if !is_busy && self.hold_started(msg.id, i) {
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
    pub(super) fn fail(
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
        self.count(super::Counted::Failed);
        if kind == FailKind::Expired {
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
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
    pub(super) async fn finish(
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
    pub(super) async fn settle(
        &self,
        job: &mut Settle,
        body: Option<&[u8]>,
    ) -> Result<(), SpoolError> {
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
    pub(super) async fn report(
        &self,
        job: &mut Settle,
        body: Option<&[u8]>,
    ) -> Result<(), SpoolError> {
        let webhook = self.webhook();
        if webhook.is_none() && !self.params.bounces {
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
        if let (Some(hook), false) = (&webhook, job.hooked) {
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
                let stats = Arc::clone(&self.stats);
                // `post` runs at most a few at once; the rest wait their turn.
                tokio::spawn(async move {
                    match hook.post(&payload).await {
                        Ok(()) => stats.webhook_ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            tracing::warn!("bounce webhook failed: {e}");
                            stats.webhook_failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
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

    /// Records that recipient `i` of `id` is held; true the first time (log it then).
    fn hold_started(&self, id: QueueId, i: usize) -> bool {
        self.holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((id, i))
    }

    /// Records that recipient `i` of `id` is tried again; true if it was held.
    fn hold_ended(&self, id: QueueId, i: usize) -> bool {
        self.holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(id, i))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn log_outcome(
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
