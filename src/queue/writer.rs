//! The spool's single writer thread: every change to the envelope database goes through
//! it, and it commits them in groups.
//!
//! Each round takes everything that queued up while the previous round was on disk (up
//! to `MAX_BATCH` operations), then:
//! 1. if the round has new messages: one fsync of `msg/`, which makes the renames of all
//!    their (already fsynced) bodies durable;
//! 2. one redb write transaction with every operation of the round, committed with
//!    immediate durability (fsynced before `commit` returns);
//! 3. only then the in-memory index is updated, bodies of removed messages unlinked,
//!    and every waiter answered.
//!
//! A failure in 1 or 2 fails every operation of the round that depended on it, deletes
//! the bodies of that round's new messages and leaves the index untouched: nothing is
//! acknowledged that is not on disk.
//!
//! A failure in 2 also means the database must be reopened (redb refuses everything
//! after an I/O error until then): the next round reopens it first, and rounds in the
//! following [`REOPEN_INTERVAL`] after a failed reopen fail at once with its error, so
//! a flood of mailers on a full disk does not turn into a flood of reopens.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use redb::ReadableTable;
use tokio::sync::{mpsc, oneshot};

use super::record::{RcptState, Record};
use super::spool::{fsync_dir, Shared, META, PAUSED_KEY, REOPEN_INTERVAL, TABLE};
use super::{QueueId, SpoolError};

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 1024;

/// What a finished operation reports back.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done,
    Removed(bool),
    Count(usize),
}

pub(crate) type Answer = oneshot::Sender<Result<Outcome, SpoolError>>;

#[derive(Debug)]
pub(crate) enum Op {
    /// A new message whose body is already durable at `body`.
    Insert {
        id: QueueId,
        record: Record,
        body: PathBuf,
        answer: Answer,
    },
    Update {
        id: QueueId,
        updates: Vec<(usize, RcptState)>,
        answer: Answer,
    },
    /// Removes a message; with `only_if_final`, only when no recipient is pending.
    Remove {
        id: QueueId,
        only_if_final: bool,
        answer: Answer,
    },
    /// Makes pending recipients due at `now` (one message, or all with `None`).
    RetryNow {
        id: Option<QueueId>,
        now: u64,
        answer: Answer,
    },
    /// Writes the spool's own state (the paused time) into the `meta` table.
    SaveState { answer: Answer },
}

/// What a staged operation will do to the index once the transaction is committed.
enum Effect {
    Set(Vec<(QueueId, Record)>),
    Remove(QueueId),
    Nothing,
}

struct Staged {
    answer: Answer,
    result: Result<(Outcome, Effect), SpoolError>,
    /// The body to delete if the round fails (new messages only).
    new_body: Option<PathBuf>,
}

/// The database's condition after a failed commit: the error, and when a reopen was
/// last tried (`None`: at the next round).
struct Broken {
    error: SpoolError,
    tried: Option<Instant>,
}

pub(crate) fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut broken: Option<Broken> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if let Some(b) = &mut broken {
            let due = match b.tried {
                None => true,
                Some(t) => t.elapsed() >= REOPEN_INTERVAL,
            };
            if due {
                match shared.reopen() {
                    Ok(()) => {
                        tracing::debug!("spool database reopened after a write error");
                        broken = None;
                    }
                    Err(e) => {
                        tracing::debug!("spool database cannot be reopened yet: {e}");
                        b.error = e;
                        b.tried = Some(Instant::now());
                    }
                }
            }
        }
        if let Some(b) = &broken {
            fail_all(ops, &b.error);
            continue;
        }
        if let Err(error) = round(&shared, ops) {
            broken = Some(Broken { error, tried: None });
        }
    }
}

/// Answers every operation with `err`, deleting the bodies of new messages.
fn fail_all(ops: Vec<Op>, err: &SpoolError) {
    for s in ops.into_iter().map(unanswered) {
        if let Some(b) = &s.new_body {
            remove_quietly(b);
        }
        let _ = s.answer.send(Err(err.clone()));
    }
}

/// One round. `Err` when the database transaction failed (it must be reopened).
fn round(shared: &Shared, mut ops: Vec<Op>) -> Result<(), SpoolError> {
    // 1. Make the renames of this round's bodies durable, once for all of them.
    if ops.iter().any(|op| matches!(op, Op::Insert { .. })) {
        if let Err(e) = fsync_dir(&shared.msg) {
            let err = SpoolError::io("fsync of msg/", &e);
            let (inserts, rest): (Vec<Op>, Vec<Op>) = ops
                .into_iter()
                .partition(|op| matches!(op, Op::Insert { .. }));
            for op in inserts {
                if let Op::Insert { body, answer, .. } = op {
                    remove_quietly(&body);
                    let _ = answer.send(Err(err.clone()));
                }
            }
            ops = rest;
            if ops.is_empty() {
                return Ok(());
            }
        }
    }

    // 2. One transaction for the whole round.
    let staged = match stage_and_commit(shared, ops) {
        Ok(staged) => staged,
        Err((err, staged)) => {
            for s in staged {
                if let Some(b) = &s.new_body {
                    remove_quietly(b);
                }
                let _ = s.answer.send(Err(err.clone()));
            }
            return Err(err);
        }
    };

    // 3. Committed: now the index may show it, then the waiters may hear it.
    let mut unlink = Vec::new();
    {
        let mut index = shared.lock_index();
        for s in &staged {
            if let Ok((_, effect)) = &s.result {
                match effect {
                    Effect::Set(recs) => {
                        for (id, rec) in recs {
                            index.set(*id, rec);
                        }
                    }
                    Effect::Remove(id) => {
                        index.remove(*id);
                        unlink.push(shared.body_path(*id));
                    }
                    Effect::Nothing => {}
                }
            }
        }
    }
    // A body left behind by a crash here has no record and is deleted at the next open.
    for path in unlink {
        remove_quietly(&path);
    }
    for s in staged {
        let _ = s.answer.send(s.result.map(|(outcome, _)| outcome));
    }
    Ok(())
}

/// Stages every operation in one write transaction and commits it. A storage error
/// anywhere fails the whole round (returned with the staged operations so the caller
/// can answer them); a logical error (unknown id, bad index) fails only its operation.
fn stage_and_commit(
    shared: &Shared,
    ops: Vec<Op>,
) -> Result<Vec<Staged>, (SpoolError, Vec<Staged>)> {
    let mut staged: Vec<Staged> = Vec::with_capacity(ops.len());
    let db = shared.db_read();
    let Some(db) = db.as_ref() else {
        let err = SpoolError::Db("database not open".into());
        return Err((err, ops.into_iter().map(unanswered).collect()));
    };
    let txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            let err = SpoolError::db("begin transaction", e);
            return Err((err, ops.into_iter().map(unanswered).collect()));
        }
    };
    let mut fatal: Option<SpoolError> = None;
    {
        let mut table = match txn.open_table(TABLE) {
            Ok(t) => t,
            Err(e) => {
                let err = SpoolError::db("open table", e);
                return Err((err, ops.into_iter().map(unanswered).collect()));
            }
        };
        for op in ops {
            if fatal.is_some() {
                staged.push(unanswered(op));
                continue;
            }
            let (answer, new_body, result) = match op {
                Op::Insert {
                    id,
                    record,
                    body,
                    answer,
                } => {
                    let r = put_record(&mut table, id, &record)
                        .map(|()| (Outcome::Done, Effect::Set(vec![(id, record)])));
                    (answer, Some(body), r)
                }
                Op::Update {
                    id,
                    updates,
                    answer,
                } => (answer, None, update(&mut table, id, updates)),
                Op::Remove {
                    id,
                    only_if_final,
                    answer,
                } => (answer, None, remove(&mut table, id, only_if_final)),
                Op::RetryNow { id, now, answer } => {
                    let ids = match id {
                        Some(id) => vec![id],
                        None => shared.lock_index().pending_ids(),
                    };
                    (answer, None, retry_now(&mut table, &ids, id.is_some(), now))
                }
                Op::SaveState { answer } => (answer, None, save_state(&txn, shared)),
            };
            if let Err(e) = &result {
                if e.is_storage() {
                    fatal = Some(e.clone());
                }
            }
            staged.push(Staged {
                answer,
                result,
                new_body,
            });
        }
    }
    if let Some(err) = fatal {
        // Dropping an uncommitted transaction aborts it.
        drop(txn);
        return Err((err, staged));
    }
    #[cfg(test)]
    if shared
        .fail_next_commit
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        drop(txn);
        return Err((SpoolError::Io("injected commit failure".into()), staged));
    }
    match txn.commit() {
        Ok(()) => Ok(staged),
        Err(e) => Err((SpoolError::db("commit", e), staged)),
    }
}

fn unanswered(op: Op) -> Staged {
    let (answer, new_body) = match op {
        Op::Insert { body, answer, .. } => (answer, Some(body)),
        Op::Update { answer, .. }
        | Op::Remove { answer, .. }
        | Op::RetryNow { answer, .. }
        | Op::SaveState { answer } => (answer, None),
    };
    Staged {
        answer,
        result: Err(SpoolError::Closed),
        new_body,
    }
}

type Table<'t> = redb::Table<'t, u64, &'static [u8]>;

fn put_record(table: &mut Table<'_>, id: QueueId, rec: &Record) -> Result<(), SpoolError> {
    let bytes = serde_json::to_vec(rec).map_err(|e| SpoolError::Db(format!("encode: {e}")))?;
    table
        .insert(id.as_u64(), bytes.as_slice())
        .map_err(|e| SpoolError::db("insert", e))?;
    Ok(())
}

fn get_record(table: &Table<'_>, id: QueueId) -> Result<Record, SpoolError> {
    let guard = table
        .get(id.as_u64())
        .map_err(|e| SpoolError::db("read", e))?
        .ok_or(SpoolError::NotFound(id))?;
    serde_json::from_slice(guard.value())
        .map_err(|e| SpoolError::Db(format!("record {id} unreadable: {e}")))
}

fn update(
    table: &mut Table<'_>,
    id: QueueId,
    updates: Vec<(usize, RcptState)>,
) -> Result<(Outcome, Effect), SpoolError> {
    let mut rec = get_record(table, id)?;
    // Validate all before changing any: an update is all or nothing.
    for (i, _) in &updates {
        let Some(r) = rec.rcpts.get(*i) else {
            return Err(SpoolError::Invalid(format!(
                "message {id} has {} recipients, no index {i}",
                rec.rcpts.len()
            )));
        };
        if r.state.is_final() && !updates.iter().any(|(j, s)| j == i && *s == r.state) {
            return Err(SpoolError::Invalid(format!(
                "recipient {i} of {id} already has a final state"
            )));
        }
    }
    for (i, state) in updates {
        if let Some(r) = rec.rcpts.get_mut(i) {
            r.state = state;
        }
    }
    put_record(table, id, &rec)?;
    Ok((Outcome::Done, Effect::Set(vec![(id, rec)])))
}

fn remove(
    table: &mut Table<'_>,
    id: QueueId,
    only_if_final: bool,
) -> Result<(Outcome, Effect), SpoolError> {
    if only_if_final {
        let rec = get_record(table, id)?;
        if rec.rcpts.iter().any(|r| !r.state.is_final()) {
            return Ok((Outcome::Removed(false), Effect::Nothing));
        }
    }
    let existed = table
        .remove(id.as_u64())
        .map_err(|e| SpoolError::db("remove", e))?
        .is_some();
    if !existed {
        return Err(SpoolError::NotFound(id));
    }
    Ok((Outcome::Removed(true), Effect::Remove(id)))
}

fn retry_now(
    table: &mut Table<'_>,
    ids: &[QueueId],
    one: bool,
    now: u64,
) -> Result<(Outcome, Effect), SpoolError> {
    let mut changed = Vec::new();
    for &id in ids {
        let mut rec = match get_record(table, id) {
            Ok(r) => r,
            // With "all", a message removed meanwhile is simply skipped.
            Err(SpoolError::NotFound(_)) if !one => continue,
            Err(e) => return Err(e),
        };
        let mut touched = false;
        for r in &mut rec.rcpts {
            if let RcptState::Pending { next_attempt, .. } = &mut r.state {
                if *next_attempt > now {
                    *next_attempt = now;
                    touched = true;
                }
            }
        }
        if touched {
            put_record(table, id, &rec)?;
            changed.push((id, rec));
        }
    }
    Ok((Outcome::Count(changed.len()), Effect::Set(changed)))
}

fn save_state(
    txn: &redb::WriteTransaction,
    shared: &Shared,
) -> Result<(Outcome, Effect), SpoolError> {
    let mut meta = txn
        .open_table(META)
        .map_err(|e| SpoolError::db("open meta table", e))?;
    meta.insert(PAUSED_KEY, shared.paused_ms())
        .map_err(|e| SpoolError::db("save state", e))?;
    Ok((Outcome::Done, Effect::Nothing))
}

fn remove_quietly(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not delete spool file; it is removed at the next start");
        }
    }
}
