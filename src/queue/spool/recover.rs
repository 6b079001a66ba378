//! Crash recovery, run once by `Spool::open` on a database nobody else holds: records
//! are checked against their bodies, and what a crash left half-done is deleted —
//! bodies in `tmp/` (never acknowledged), bodies in `msg/` without a record (a put that
//! never committed), records whose body is really gone (`NotFound`), and messages whose
//! recipients were all final (a crash between the last outcome and the removal).
//!
//! Must never delete an acknowledged message it merely failed to read: any error other
//! than `NotFound` while checking a body stops `open` with an error naming the file, and
//! nothing is deleted (the transaction is dropped unchanged). An undecodable record is
//! left in place for an operator, with its body.

use super::{META, PAUSED_KEY, TABLE};
use crate::queue::id::IdGen;
use crate::queue::index::Index;
use crate::queue::record::Record;
use crate::queue::{QueueId, SpoolError};
use redb::{Database, ReadableTable};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What `Spool::open` found and cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Messages recovered (in the queue now).
    pub messages: usize,
    /// Their recipients still to be delivered.
    pub pending_recipients: usize,
    /// Half-written bodies deleted from `tmp/`.
    pub removed_partial: usize,
    /// Bodies in `msg/` without a record (a put interrupted before its commit) deleted.
    pub removed_orphan_bodies: usize,
    /// Records without a body deleted.
    pub removed_orphan_records: Vec<QueueId>,
    /// Messages whose recipients were all final — a crash between recording the last
    /// outcome and removing the message — removed (record, then body).
    pub removed_finished: usize,
    /// Records that could not be decoded: left in place (with their bodies), not
    /// queued, for an operator to look at.
    pub unreadable: Vec<QueueId>,
}

/// What recovery hands to `Spool::open`: the index of everything durable, the time spent
/// paused so far, and the report.
pub(super) struct Found {
    pub(super) index: Index,
    pub(super) paused_ms: u64,
    pub(super) recovered: Recovered,
}

/// Checks and cleans the spool whose database `db` is open (and locked): records first
/// (deleting nothing before every body has been checked), then `tmp/`, then `msg/`.
/// Every id seen is passed to `ids`, so new ids sort after them.
pub(super) fn recover(
    db: &Database,
    tmp: &Path,
    msg: &Path,
    ids: &IdGen,
) -> Result<Found, SpoolError> {
    let mut rec = Recovered::default();
    // 2. Records. Nothing is deleted before every body has been checked: an error
    // returns here and drops the transaction unchanged.
    let mut index = Index::default();
    let mut known = std::collections::HashSet::new();
    let mut orphans = Vec::new();
    let mut finished = Vec::new();
    let paused_ms;
    {
        let txn = db
            .begin_write()
            .map_err(|e| SpoolError::db("recovery", e))?;
        {
            let table = txn
                .open_table(TABLE)
                .map_err(|e| SpoolError::db("recovery", e))?;
            for row in table.iter().map_err(|e| SpoolError::db("recovery", e))? {
                let (k, v) = row.map_err(|e| SpoolError::db("recovery", e))?;
                let id = QueueId::from_u64(k.value());
                ids.observe(id);
                let body_exists = body_exists(&msg.join(id.to_string()))?;
                match serde_json::from_slice::<Record>(v.value()) {
                    _ if !body_exists => orphans.push(id),
                    Ok(r) if r.rcpts.iter().all(|r| r.state.is_final()) => finished.push(id),
                    Ok(r) => {
                        known.insert(id);
                        index.set(id, &r);
                    }
                    Err(e) => {
                        tracing::error!(%id, error = %e, "spool record unreadable; left in place");
                        known.insert(id);
                        rec.unreadable.push(id);
                    }
                }
            }
        }
        {
            let meta = txn
                .open_table(META)
                .map_err(|e| SpoolError::db("recovery", e))?;
            paused_ms = meta
                .get(PAUSED_KEY)
                .map_err(|e| SpoolError::db("recovery", e))?
                .map_or(0, |v| v.value());
        }
        if !orphans.is_empty() || !finished.is_empty() {
            let mut table = txn
                .open_table(TABLE)
                .map_err(|e| SpoolError::db("recovery", e))?;
            for id in &orphans {
                tracing::warn!(%id, "spool record without a body deleted");
                table
                    .remove(id.as_u64())
                    .map_err(|e| SpoolError::db("recovery", e))?;
            }
            for id in &finished {
                tracing::info!(%id, "finished message left by a crash removed");
                table
                    .remove(id.as_u64())
                    .map_err(|e| SpoolError::db("recovery", e))?;
            }
        }
        txn.commit().map_err(|e| SpoolError::db("recovery", e))?;
    }

    // 3. Half-written bodies: never delivered, never acknowledged.
    for entry in read_dir(tmp)? {
        remove_file(&entry)?;
        rec.removed_partial += 1;
    }

    // Record gone (committed) first, then the body: the same order as `remove`.
    for id in &finished {
        remove_file(&msg.join(id.to_string()))?;
    }
    rec.removed_finished = finished.len();
    rec.removed_orphan_records = orphans;

    // 4. Bodies whose put never committed.
    for path in read_dir(msg)? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match name.parse::<QueueId>() {
            Ok(id) => {
                ids.observe(id);
                if !known.contains(&id) {
                    remove_file(&path)?;
                    rec.removed_orphan_bodies += 1;
                }
            }
            Err(_) => {
                tracing::warn!(path = %path.display(), "foreign file in spool left alone")
            }
        }
    }

    let (messages, pending) = index.counts();
    rec.messages = messages;
    rec.pending_recipients = pending;
    Ok(Found {
        index,
        paused_ms,
        recovered: rec,
    })
}

/// Whether the body of a record is there. `Ok(false)` only when it is really gone
/// (`NotFound`); anything else that keeps us from knowing is an error naming the file.
fn body_exists(path: &Path) -> Result<bool, SpoolError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(_) => Err(SpoolError::Io(format!(
            "checking message body {}: not a regular file; nothing was deleted, fix or \
             remove it by hand",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(SpoolError::io(
            &format!(
                "checking message body {} (nothing was deleted)",
                path.display()
            ),
            &e,
        )),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let ctx = || format!("listing {}", dir.display());
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| SpoolError::io(&ctx(), &e))? {
        out.push(entry.map_err(|e| SpoolError::io(&ctx(), &e))?.path());
    }
    Ok(out)
}

fn remove_file(path: &Path) -> Result<(), SpoolError> {
    let r = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(|e| SpoolError::io(&format!("deleting {}", path.display()), &e))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{delivered, env, files, rcpts};
    use super::super::*;

    #[tokio::test]
    async fn a_finished_message_left_by_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (done, open_one);
        {
            let (spool, _) = Spool::open(dir.path()).unwrap();
            done = spool.put(&env(), &rcpts(1), b"done").await.unwrap();
            open_one = spool.put(&env(), &rcpts(1), b"open").await.unwrap();
            // The outcome is recorded, then the process dies before `remove`.
            spool.record(done, vec![(0, delivered())]).await.unwrap();
        }
        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.removed_finished, 1);
        assert_eq!(rec.messages, 1);
        assert!(spool.get(done).unwrap().is_none());
        assert_eq!(files(&dir.path().join("msg")), vec![open_one.to_string()]);
    }

    #[tokio::test]
    async fn all_puts_recovered_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap().0);
        let mut tasks = Vec::new();
        for t in 0..10 {
            let s = Arc::clone(&spool);
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..20 {
                    let body = format!("task {t} message {i}");
                    ids.push(
                        s.put(&env(), &rcpts(1 + i % 3), body.as_bytes())
                            .await
                            .unwrap(),
                    );
                }
                ids
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.extend(t.await.unwrap());
        }
        drop(spool);
        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.messages, 200);
        assert_eq!(rec.removed_orphan_bodies + rec.removed_partial, 0);
        let mut listed: Vec<QueueId> = spool.list().unwrap().into_iter().map(|m| m.id).collect();
        ids.sort();
        listed.sort();
        assert_eq!(listed, ids);
        for id in ids {
            let body = String::from_utf8(spool.read_body(id).await.unwrap()).unwrap();
            assert!(body.starts_with("task "));
        }
    }

    #[tokio::test]
    async fn crash_leftovers_are_cleaned_not_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, lost);
        {
            let (spool, _) = Spool::open(dir.path()).unwrap();
            kept = spool.put(&env(), &rcpts(1), b"kept").await.unwrap();
            // A record whose body someone deleted: undeliverable.
            lost = spool.put(&env(), &rcpts(1), b"lost").await.unwrap();
            fs::remove_file(spool.body_path(lost)).unwrap();
        }
        // A crash while writing a body, and one after the rename but before the commit.
        let half = QueueId::from_u64(lost.as_u64() + 1).to_string();
        let uncommitted = QueueId::from_u64(lost.as_u64() + 2).to_string();
        fs::write(dir.path().join("tmp").join(&half), b"Subject: half").unwrap();
        fs::write(dir.path().join("msg").join(&uncommitted), b"complete").unwrap();

        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.removed_partial, 1);
        assert_eq!(rec.removed_orphan_bodies, 1);
        assert_eq!(rec.removed_orphan_records, vec![lost]);
        assert_eq!(rec.messages, 1);
        assert!(files(&dir.path().join("tmp")).is_empty());
        assert_eq!(files(&dir.path().join("msg")), vec![kept.to_string()]);
        assert_eq!(spool.due(now_ms(), 10), vec![(kept, vec![0])]);
        assert!(spool.get(lost).unwrap().is_none());
        // New ids never reuse those of the deleted leftovers.
        let next = spool.put(&env(), &rcpts(1), b"n").await.unwrap();
        assert!(next.to_string() > uncommitted);
    }

    /// Issue 8.2: a body that cannot be checked (here ELOOP, an error root gets too,
    /// unlike EACCES) is not "missing": the open stops naming the file, and nothing is
    /// deleted — neither the record nor anything else.
    #[cfg(unix)]
    #[tokio::test]
    async fn recovery_deletes_only_what_is_really_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (ok, looped);
        {
            let (spool, _) = Spool::open(dir.path()).unwrap();
            ok = spool.put(&env(), &rcpts(1), b"ok").await.unwrap();
            looped = spool.put(&env(), &rcpts(1), b"looped").await.unwrap();
        }
        let body = dir.path().join("msg").join(looped.to_string());
        let saved = dir.path().join("saved-body");
        fs::rename(&body, &saved).unwrap();
        // A symlink to itself: stat fails with ELOOP.
        std::os::unix::fs::symlink(&body, &body).unwrap();
        fs::write(dir.path().join("tmp").join("leftover"), b"half").unwrap();
        let err = match Spool::open(dir.path()) {
            Ok(_) => panic!("opened a spool whose body cannot be checked"),
            Err(e) => e,
        };
        let text = err.to_string();
        assert!(text.contains(&body.display().to_string()), "{text}");
        assert!(matches!(err, SpoolError::Io(_)), "{err:?}");
        // Nothing deleted: the tmp leftover is still there, and once the body is
        // readable again both messages are recovered.
        assert_eq!(files(&dir.path().join("tmp")), vec!["leftover".to_string()]);
        fs::remove_file(&body).unwrap();
        fs::rename(&saved, &body).unwrap();
        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.messages, 2, "{rec:?}");
        assert!(rec.removed_orphan_records.is_empty());
        assert_eq!(spool.read_body(looped).await.unwrap(), b"looped");
        assert!(spool.get(ok).unwrap().is_some());
        drop(spool);
        // A body that is really gone (NotFound) still lets its record go.
        fs::remove_file(&body).unwrap();
        let (_, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.removed_orphan_records, vec![looped]);
        assert_eq!(rec.messages, 1);
    }
}
