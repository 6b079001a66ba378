//! The durable spool: where queue mode keeps a message from the moment the mailer hands
//! it over until every recipient has a final outcome. Pure storage: no SMTP, no network,
//! no retry policy.
//!
//! It must never acknowledge a message (return from [`Spool::put`]) before its body and
//! its envelope are durable; never let a half-written message be delivered (a crash
//! leaves only leftovers that [`Spool::open`] deletes); never hold message bodies in
//! memory (the index keeps ids, recipient states and due times; bodies are read from
//! disk when they are sent).
//!
//! # On disk
//!
//! ```text
//! <dir>/tmp/<id>      a body being written; never read, deleted at open
//! <dir>/msg/<id>      a complete, fsynced body
//! <dir>/queue.redb    id → JSON record: envelope, arrival time, per-recipient state
//! ```
//!
//! # Durability
//!
//! `put` writes the body to `tmp/<id>`, fsyncs the file, renames it to `msg/<id>`; then
//! the writer thread fsyncs `msg/` (making the rename durable) and commits the record in
//! redb (fsynced on commit). Only then does `put` return. The record is the commit
//! point: a body without a record is a put that never returned, and is deleted at open;
//! a record without a body cannot be delivered and is deleted too (it cannot arise from
//! a crash, only from someone deleting files). Record updates and removals are single
//! redb commits; a removed message's body is unlinked after its record is gone.
//!
//! # Group commit
//!
//! Body writes and their fsyncs run in parallel on tokio's blocking pool (the file
//! system merges concurrent fsyncs into few journal commits); everything else funnels
//! through one writer thread that commits all operations that queued up during its
//! previous commit in one transaction, with one directory fsync. Twenty mailer sessions
//! thus share fsyncs instead of queueing behind each other's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::id::IdGen;
use super::index::Index;
use super::record::{RcptState, Record};
use super::writer::{self, Op, Outcome};
use super::{Message, QueueId, SpoolError};
use crate::smtp::Envelope;

pub(crate) const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const DB_FILE: &str = "queue.redb";

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

/// Which messages `retry_now` makes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    One(QueueId),
    All,
}

/// State shared by the spool handle, body writers and the writer thread.
pub(crate) struct Shared {
    pub(crate) tmp: PathBuf,
    pub(crate) msg: PathBuf,
    pub(crate) db: Database,
    index: Mutex<Index>,
    ids: IdGen,
    #[cfg(test)]
    pub(crate) fail_next_commit: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn lock_index(&self) -> MutexGuard<'_, Index> {
        // The index is only changed by whole-value operations; a panic elsewhere while
        // holding the lock cannot leave it half-updated.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn body_path(&self, id: QueueId) -> PathBuf {
        self.msg.join(id.to_string())
    }
}

/// The spool. Cheap to share behind an `Arc`; dropping it waits for the writer to finish
/// the round in progress.
pub struct Spool {
    shared: Arc<Shared>,
    tx: Option<mpsc::UnboundedSender<Op>>,
    writer: Option<JoinHandle<()>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create_dir(path: &Path) -> Result<(), SpoolError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(path)
        .map_err(|e| SpoolError::io(&format!("creating {}", path.display()), &e))?;
    if !path.is_dir() {
        return Err(SpoolError::Io(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    Ok(())
}

impl Spool {
    /// Opens the spool in `dir`, creating the layout if missing, deleting what a crash
    /// left half-done, and loading the index of everything durable. Blocking: call it
    /// at startup (or inside `spawn_blocking`).
    pub fn open(dir: &Path) -> Result<(Spool, Recovered), SpoolError> {
        let tmp = dir.join("tmp");
        let msg = dir.join("msg");
        create_dir(dir)?;
        create_dir(&tmp)?;
        create_dir(&msg)?;
        // The subdirectories must be durable before any body is renamed into them.
        fsync_dir(dir).map_err(|e| SpoolError::io("fsync of spool directory", &e))?;

        let mut rec = Recovered::default();
        let ids = IdGen::default();

        // 1. The database first: it is locked against a second process, so nothing
        // below can touch the files of a spool another instance is using.
        let db_path = dir.join(DB_FILE);
        let db = Database::create(&db_path)
            .map_err(|e| SpoolError::db(&format!("opening {}", db_path.display()), e))?;

        // 2. Half-written bodies: never delivered, never acknowledged.
        for entry in read_dir(&tmp)? {
            remove_file(&entry)?;
            rec.removed_partial += 1;
        }

        // 3. Records.
        let mut index = Index::default();
        let mut known = std::collections::HashSet::new();
        let mut orphans = Vec::new();
        let mut finished = Vec::new();
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
                    let body_exists = msg.join(id.to_string()).is_file();
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
        // Record gone (committed) first, then the body: the same order as `remove`.
        for id in &finished {
            remove_file(&msg.join(id.to_string()))?;
        }
        rec.removed_finished = finished.len();
        rec.removed_orphan_records = orphans;

        // 4. Bodies whose put never committed.
        for path in read_dir(&msg)? {
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

        let shared = Arc::new(Shared {
            tmp,
            msg,
            db,
            index: Mutex::new(index),
            ids,
            #[cfg(test)]
            fail_next_commit: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let w = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer::run(w, rx))
            .map_err(|e| SpoolError::io("starting spool writer", &e))?;
        Ok((
            Spool {
                shared,
                tx: Some(tx),
                writer: Some(writer),
            },
            rec,
        ))
    }

    /// Stores a message. Returns only when its body and envelope are durable; on error
    /// nothing of it remains and nothing was acknowledged. `rcpts` must not be empty.
    pub async fn put(
        &self,
        env: &Envelope,
        rcpts: &[String],
        body: &[u8],
    ) -> Result<QueueId, SpoolError> {
        if rcpts.is_empty() {
            return Err(SpoolError::Invalid("a message needs a recipient".into()));
        }
        let tx = self.sender()?;
        let now = now_ms();
        let id = self.shared.ids.next(now);
        let record = Record::new(env, rcpts, now, body.len() as u64);
        let body = body.to_vec();
        let shared = Arc::clone(&self.shared);
        // The blocking part runs to its end even if this future is dropped, and hands the
        // record to the writer itself: a body is never left without its commit attempt.
        let answer = tokio::task::spawn_blocking(move || {
            let path = write_body(&shared, id, &body)?;
            let (answer, rx) = oneshot::channel();
            let op = Op::Insert {
                id,
                record,
                body: path.clone(),
                answer,
            };
            if tx.send(op).is_err() {
                let _ = fs::remove_file(&path);
                return Err(SpoolError::Closed);
            }
            Ok(rx)
        })
        .await
        .map_err(|_| SpoolError::Closed)??;
        answer.await.map_err(|_| SpoolError::Closed)??;
        Ok(id)
    }

    /// Where the body of `id` is (it exists as long as the message is in the spool).
    pub fn body_path(&self, id: QueueId) -> PathBuf {
        self.shared.body_path(id)
    }

    /// Reads the body of `id` from disk.
    pub async fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        match tokio::fs::read(self.body_path(id)).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpoolError::NotFound(id)),
            Err(e) => Err(SpoolError::io(&format!("reading body of {id}"), &e)),
        }
    }

    /// Messages with recipients due at `now` (unix ms), earliest first, at most `limit`,
    /// each with the indices of its due recipients. The spool does not track what is in
    /// flight: the caller must not ask again for a message it is still delivering.
    pub fn due(&self, now: u64, limit: usize) -> Vec<(QueueId, Vec<usize>)> {
        self.shared.lock_index().due(now, limit)
    }

    /// The earliest `next_attempt` of any pending recipient (unix ms), for sleeping.
    pub fn next_due(&self) -> Option<u64> {
        self.shared.lock_index().next_due()
    }

    /// Messages accepted before `cutoff` (unix ms) that still have pending recipients:
    /// the ones older than `max_age`, for the scheduler to fail.
    pub fn received_before(&self, cutoff: u64) -> Vec<QueueId> {
        self.shared.lock_index().received_before(cutoff)
    }

    /// Number of messages in the spool.
    pub fn len(&self) -> usize {
        self.shared.lock_index().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Durably changes recipient states of `id` (all or nothing). A final state
    /// (`Delivered`, `Failed`) cannot be changed again.
    pub async fn record(
        &self,
        id: QueueId,
        updates: Vec<(usize, RcptState)>,
    ) -> Result<(), SpoolError> {
        let (answer, rx) = oneshot::channel();
        self.send(
            Op::Update {
                id,
                updates,
                answer,
            },
            rx,
        )
        .await
        .map(|_| ())
    }

    /// Removes `id` (record, then body) if every recipient is final; `Ok(false)` and
    /// nothing changed if some recipient is still pending.
    pub async fn remove(&self, id: QueueId) -> Result<bool, SpoolError> {
        self.remove_inner(id, true).await
    }

    /// Removes `id` whatever its recipients' states (operator command).
    pub async fn delete(&self, id: QueueId) -> Result<(), SpoolError> {
        self.remove_inner(id, false).await.map(|_| ())
    }

    async fn remove_inner(&self, id: QueueId, only_if_final: bool) -> Result<bool, SpoolError> {
        let (answer, rx) = oneshot::channel();
        match self
            .send(
                Op::Remove {
                    id,
                    only_if_final,
                    answer,
                },
                rx,
            )
            .await?
        {
            Outcome::Removed(b) => Ok(b),
            _ => Ok(true),
        }
    }

    /// Makes the pending recipients of one message, or of all, due now (durably).
    /// Returns how many messages changed.
    pub async fn retry_now(&self, which: Which) -> Result<usize, SpoolError> {
        let id = match which {
            Which::One(id) => Some(id),
            Which::All => None,
        };
        let (answer, rx) = oneshot::channel();
        match self
            .send(
                Op::RetryNow {
                    id,
                    now: now_ms(),
                    answer,
                },
                rx,
            )
            .await?
        {
            Outcome::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// The stored message `id` (without body), or `None`.
    pub fn get(&self, id: QueueId) -> Result<Option<Message>, SpoolError> {
        let txn = self
            .shared
            .db
            .begin_read()
            .map_err(|e| SpoolError::db("read", e))?;
        let table = txn
            .open_table(TABLE)
            .map_err(|e| SpoolError::db("read", e))?;
        let Some(v) = table
            .get(id.as_u64())
            .map_err(|e| SpoolError::db("read", e))?
        else {
            return Ok(None);
        };
        let r: Record = serde_json::from_slice(v.value())
            .map_err(|e| SpoolError::Db(format!("record {id} unreadable: {e}")))?;
        Ok(Some(r.into_message(id)))
    }

    /// Every readable message in the spool (without bodies), oldest first.
    pub fn list(&self) -> Result<Vec<Message>, SpoolError> {
        let txn = self
            .shared
            .db
            .begin_read()
            .map_err(|e| SpoolError::db("read", e))?;
        let table = txn
            .open_table(TABLE)
            .map_err(|e| SpoolError::db("read", e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| SpoolError::db("read", e))? {
            let (k, v) = row.map_err(|e| SpoolError::db("read", e))?;
            let id = QueueId::from_u64(k.value());
            // Unreadable records were reported at open; they are not part of the queue.
            if let Ok(r) = serde_json::from_slice::<Record>(v.value()) {
                out.push(r.into_message(id));
            }
        }
        Ok(out)
    }

    fn sender(&self) -> Result<mpsc::UnboundedSender<Op>, SpoolError> {
        self.tx.clone().ok_or(SpoolError::Closed)
    }

    async fn send(
        &self,
        op: Op,
        rx: oneshot::Receiver<Result<Outcome, SpoolError>>,
    ) -> Result<Outcome, SpoolError> {
        self.sender()?.send(op).map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    #[cfg(test)]
    pub(crate) fn fail_next_commit(&self) {
        self.shared
            .fail_next_commit
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its current round; waiting for it
        // releases the database lock before a new `open` of the same directory.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Writes `tmp/<id>`, fsyncs it and renames it to `msg/<id>`. On failure the tmp file is
/// deleted.
fn write_body(shared: &Shared, id: QueueId, body: &[u8]) -> Result<PathBuf, SpoolError> {
    let name = id.to_string();
    let tmp = shared.tmp.join(&name);
    let dst = shared.msg.join(&name);
    let result = (|| -> io::Result<()> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &dst)
    })();
    match result {
        Ok(()) => Ok(dst),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(SpoolError::io(&format!("writing body {name}"), &e))
        }
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
    use super::*;
    use crate::queue::record::StoredReply;
    use std::time::Instant;

    fn env() -> Envelope {
        Envelope {
            from: "news@sender.example".into(),
            size: None,
            eight_bit: false,
            smtputf8: false,
        }
    }

    fn rcpts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("r{i}@rcpt.example")).collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn delivered() -> RcptState {
        RcptState::Delivered {
            reply: StoredReply {
                code: 250,
                enhanced: Some("2.0.0".into()),
                text: "ok queued as 1".into(),
            },
        }
    }

    #[tokio::test]
    async fn put_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec, Recovered::default());
        let body = b"Subject: hi\r\n\r\nhello\r\n";
        let id = spool.put(&env(), &rcpts(2), body).await.unwrap();
        assert_eq!(spool.read_body(id).await.unwrap(), body);
        assert_eq!(fs::read(spool.body_path(id)).unwrap(), body);
        let m = spool.get(id).unwrap().unwrap();
        assert_eq!(m.envelope, env());
        assert_eq!(m.body_len, body.len() as u64);
        assert_eq!(m.rcpts[1].address, "r1@rcpt.example");
        assert_eq!(m.rcpts[1].state, RcptState::new_pending());
        assert_eq!(spool.due(now_ms(), 10), vec![(id, vec![0, 1])]);
        assert!(files(&dir.path().join("tmp")).is_empty());
        assert_eq!(files(&dir.path().join("msg")), vec![id.to_string()]);
        assert!(matches!(
            spool.put(&env(), &[], body).await,
            Err(SpoolError::Invalid(_))
        ));
    }

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
    async fn recipient_states_record_remove_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b);
        {
            let (spool, _) = Spool::open(dir.path()).unwrap();
            a = spool.put(&env(), &rcpts(3), b"a").await.unwrap();
            b = spool.put(&env(), &rcpts(1), b"b").await.unwrap();
            assert!(a < b);
            let later = now_ms() + 3_600_000;
            spool
                .record(
                    a,
                    vec![
                        (0, delivered()),
                        (
                            1,
                            RcptState::Pending {
                                attempts: 1,
                                next_attempt: later,
                                last_reply: None,
                            },
                        ),
                    ],
                )
                .await
                .unwrap();
            // Only recipient 2 of `a` is due now.
            assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![2]), (b, vec![0])]);
            // Not all final yet: remove refuses.
            assert!(!spool.remove(a).await.unwrap());
            // A final state stays final; a bad index is refused; all or nothing.
            assert!(matches!(
                spool
                    .record(a, vec![(2, delivered()), (0, delivered())])
                    .await,
                Err(SpoolError::Invalid(_))
            ));
            assert!(matches!(
                spool.record(a, vec![(9, delivered())]).await,
                Err(SpoolError::Invalid(_))
            ));
            assert!(matches!(
                spool.record(QueueId::from_u64(1), vec![]).await,
                Err(SpoolError::NotFound(_))
            ));
            spool.record(b, vec![(0, delivered())]).await.unwrap();
            assert!(spool.remove(b).await.unwrap());
            assert!(!spool.body_path(b).exists());
            assert!(spool.get(b).unwrap().is_none());
        }
        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.messages, 1);
        assert_eq!(rec.pending_recipients, 2);
        let m = spool.get(a).unwrap().unwrap();
        assert_eq!(m.rcpts[0].state, delivered());
        assert!(matches!(
            m.rcpts[1].state,
            RcptState::Pending { attempts: 1, .. }
        ));
        assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![2])]);
        // retry_now makes the deferred recipient due too, durably.
        assert_eq!(spool.retry_now(Which::All).await.unwrap(), 1);
        assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![1, 2])]);
        drop(spool);
        let (spool, _) = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![1, 2])]);
        // A new id after reopen sorts after the old ones.
        let c = spool.put(&env(), &rcpts(1), b"c").await.unwrap();
        assert!(c > a && c > b);
        spool.delete(a).await.unwrap();
        assert!(matches!(
            spool.delete(a).await,
            Err(SpoolError::NotFound(_))
        ));
        assert_eq!(
            spool
                .list()
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect::<Vec<_>>(),
            vec![c]
        );
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

    #[tokio::test]
    async fn failed_body_write_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let ok = spool.put(&env(), &rcpts(1), b"ok").await.unwrap();
        // Root ignores permissions, so break the layout instead: tmp/ becomes a file.
        let tmp = dir.path().join("tmp");
        fs::remove_dir(&tmp).unwrap();
        fs::write(&tmp, b"not a directory").unwrap();
        let err = spool.put(&env(), &rcpts(1), b"lost").await.unwrap_err();
        assert!(matches!(err, SpoolError::Io(_)), "{err:?}");
        assert_eq!(err.smtp_reply().code, 452);
        assert_eq!(spool.len(), 1);
        assert_eq!(files(&dir.path().join("msg")), vec![ok.to_string()]);
        // And msg/ a file: the rename fails, the tmp body is removed.
        fs::remove_file(&tmp).unwrap();
        fs::create_dir(&tmp).unwrap();
        let msg = dir.path().join("msg");
        let moved = dir.path().join("msg.bak");
        fs::rename(&msg, &moved).unwrap();
        fs::write(&msg, b"not a directory").unwrap();
        assert!(spool.put(&env(), &rcpts(1), b"lost").await.is_err());
        assert!(files(&tmp).is_empty());
        fs::remove_file(&msg).unwrap();
        fs::rename(&moved, &msg).unwrap();
        assert_eq!(spool.list().unwrap().len(), 1);
        drop(spool);
        let (_, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.messages, 1);
        assert_eq!(rec.removed_partial + rec.removed_orphan_bodies, 0);
    }

    #[tokio::test]
    async fn failed_commit_acknowledges_nothing_and_cleans_the_round() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let a = spool.put(&env(), &rcpts(1), b"a").await.unwrap();
        spool.fail_next_commit();
        let err = spool.put(&env(), &rcpts(1), b"b").await.unwrap_err();
        assert!(err.is_storage(), "{err:?}");
        assert_eq!(spool.len(), 1);
        assert_eq!(files(&dir.path().join("msg")), vec![a.to_string()]);
        // A failed update changes neither disk nor index.
        spool.fail_next_commit();
        assert!(spool.record(a, vec![(0, delivered())]).await.is_err());
        assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![0])]);
        // The spool keeps working afterwards.
        let c = spool.put(&env(), &rcpts(1), b"c").await.unwrap();
        assert_eq!(spool.len(), 2);
        drop(spool);
        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.messages, 2);
        assert_eq!(
            spool.get(a).unwrap().unwrap().rcpts[0].state,
            RcptState::new_pending()
        );
        assert!(spool.get(c).unwrap().is_some());
    }

    #[tokio::test]
    async fn open_refuses_a_broken_layout() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("msg"), b"file").unwrap();
        assert!(matches!(Spool::open(dir.path()), Err(SpoolError::Io(_))));
    }

    /// Not a benchmark with assertions: prints what this machine does. Run with
    /// `cargo test --release --lib queue::spool::tests::throughput -- --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn throughput_2000_puts_from_20_tasks() {
        // On the real disk, not a tmpfs, when MAILVALVE_SPOOL_BENCH_DIR says where.
        let base = std::env::var_os("MAILVALVE_SPOOL_BENCH_DIR").map(PathBuf::from);
        let dir = match &base {
            Some(b) => tempfile::tempdir_in(b).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let spool = Arc::new(Spool::open(dir.path()).unwrap().0);
        let mut body = b"Subject: newsletter\r\n\r\n".to_vec();
        body.resize(10 * 1024, b'x');
        let body = Arc::new(body);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let s = Arc::clone(&spool);
            let body = Arc::clone(&body);
            tasks.push(tokio::spawn(async move {
                for _ in 0..100 {
                    s.put(&env(), &rcpts(1), &body).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(spool.len(), 2000);
        println!(
            "spool: 2000 puts of 10 KB from 20 tasks in {:.3} s = {:.0} messages/s ({})",
            secs,
            2000.0 / secs,
            dir.path().display()
        );
    }
}
