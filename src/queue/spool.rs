//! The durable spool: where queue mode keeps a message from the moment the mailer hands
//! it over until every recipient has a final outcome. Pure storage: no SMTP, no network,
//! no retry policy.
//!
//! It must never acknowledge a message (return from [`Spool::put`] / [`Spool::commit`])
//! before its body and its envelope are durable; never let a half-written message be
//! delivered (a crash leaves only leftovers that [`Spool::open`] deletes); never delete
//! an acknowledged message it merely failed to read (only a body that is really gone,
//! `NotFound`, lets recovery drop its record); never hold message bodies in memory (the
//! index keeps ids, recipient states and due times; a body is streamed to disk as it
//! arrives and read from disk when it is sent).
//!
//! # On disk
//!
//! ```text
//! <dir>/tmp/<id>      a body being written; never read, deleted at open
//! <dir>/msg/<id>      a complete, fsynced body
//! <dir>/queue.redb    id → JSON record: envelope, arrival time, per-recipient state;
//!                     plus a small `meta` table (time spent paused). Mode 0600.
//! ```
//!
//! # Durability
//!
//! A body is written to `tmp/<id>` while DATA is still arriving ([`Spool::create_body`],
//! [`BodyWriter::write`]); [`Spool::commit`] fsyncs the file and renames it to
//! `msg/<id>`; then the writer thread fsyncs `msg/` (making the rename durable) and
//! commits the record in redb (fsynced on commit). Only then does `commit` return. The
//! record is the commit point: a body without a record is a put that never returned,
//! and is deleted at open; a record whose body is gone (`NotFound`) cannot be delivered
//! and is deleted too (it cannot arise from a crash, only from someone deleting files).
//! Any other error checking a body (EIO, EACCES, ELOOP, ...) stops `open` with an error
//! naming the file, and nothing is deleted. Record updates and removals are single redb
//! commits; a removed message's body is unlinked after its record is gone.
//!
//! # Write errors
//!
//! redb refuses every transaction after one I/O error ("Previous I/O error") until the
//! database is reopened. After a failed commit the writer therefore reopens the
//! database (at most every [`REOPEN_INTERVAL`]) before it tries again, and rebuilds the
//! index from what is on disk; until a reopen succeeds every operation fails at once
//! with the error that started it. [`Spool::save_state`] is a small real commit that
//! tells the delivery engine whether the spool takes writes again.
//!
//! # Group commit
//!
//! Body writes and their fsyncs run in parallel on tokio's blocking pool (the file
//! system merges concurrent fsyncs into few journal commits); everything else funnels
//! through one writer thread that commits all operations that queued up during its
//! previous commit in one transaction, with one directory fsync. Twenty mailer sessions
//! thus share fsyncs instead of queueing behind each other's.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::id::IdGen;
use super::index::Index;
use super::record::{RcptState, Record};
use super::writer::{self, Op, Outcome};
use super::{Message, QueueId, SpoolError};
use crate::smtp::Envelope;

pub(crate) const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Small durable counters of the spool (see [`PAUSED_KEY`]).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Total time (ms) the delivery engine spent paused, over the spool's whole life: a
/// message's age towards `max_age` leaves it out, also across restarts.
pub(crate) const PAUSED_KEY: &str = "paused_ms";
const DB_FILE: &str = "queue.redb";
/// After a failed commit, the database is reopened at most this often.
pub const REOPEN_INTERVAL: Duration = Duration::from_millis(250);

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

/// Test builds can make the database's storage fail every write, as a full disk does
/// (redb then latches "Previous I/O error" exactly as in production).
#[cfg(test)]
pub(crate) type Faults = Arc<std::sync::atomic::AtomicBool>;
#[cfg(not(test))]
pub(crate) type Faults = ();

/// State shared by the spool handle, body writers and the writer thread.
pub(crate) struct Shared {
    pub(crate) tmp: PathBuf,
    pub(crate) msg: PathBuf,
    db_path: PathBuf,
    /// `None` only while the writer reopens it after a write error.
    db: RwLock<Option<Database>>,
    index: Mutex<Index>,
    ids: IdGen,
    /// See [`PAUSED_KEY`]; the durable copy is written by [`Spool::save_state`].
    paused_ms: AtomicU64,
    faults: Faults,
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

    pub(crate) fn paused_ms(&self) -> u64 {
        self.paused_ms.load(Ordering::Acquire)
    }

    /// The database for the writer's rounds (`None` while a reopen failed).
    pub(crate) fn db_read(&self) -> std::sync::RwLockReadGuard<'_, Option<Database>> {
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the database (shared with other readers and the writer's rounds).
    pub(crate) fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, SpoolError>,
    ) -> Result<R, SpoolError> {
        // Whole-value replacement only (by `reopen`): a poisoned lock holds a valid value.
        let g = self.db_read();
        match g.as_ref() {
            Some(db) => f(db),
            None => Err(SpoolError::Db(
                "database closed after a write error, not reopened yet".into(),
            )),
        }
    }

    /// Closes the database (releasing redb's file lock and its latched I/O error) and
    /// opens it again; then the index is rebuilt from what is on disk, because a commit
    /// that reported an error may still have reached the disk.
    pub(crate) fn reopen(&self) -> Result<(), SpoolError> {
        let mut g = self.db.write().unwrap_or_else(|e| e.into_inner());
        // Dropping it first: a second handle on the same file is refused by redb's lock.
        *g = None;
        let db = open_db(&self.db_path, &self.faults)?;
        let index = load_index(&db)?;
        *g = Some(db);
        drop(g);
        *self.lock_index() = index;
        Ok(())
    }
}

/// The index of every readable record with its recipients' states.
fn load_index(db: &Database) -> Result<Index, SpoolError> {
    let ctx = "reading the spool after reopening";
    let txn = db.begin_read().map_err(|e| SpoolError::db(ctx, e))?;
    let table = txn.open_table(TABLE).map_err(|e| SpoolError::db(ctx, e))?;
    let mut index = Index::default();
    for row in table.iter().map_err(|e| SpoolError::db(ctx, e))? {
        let (k, v) = row.map_err(|e| SpoolError::db(ctx, e))?;
        if let Ok(r) = serde_json::from_slice::<Record>(v.value()) {
            index.set(QueueId::from_u64(k.value()), &r);
        }
    }
    Ok(index)
}

/// Opens (creating if missing) the database file, readable by its owner only: it holds
/// every queued address.
fn open_db(path: &Path, faults: &Faults) -> Result<Database, SpoolError> {
    let ctx = || format!("opening {}", path.display());
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    // The non-Unix path: see `platform`.
    let file = crate::platform::owner_only(&mut opts)
        .open(path)
        .map_err(|e| SpoolError::io(&ctx(), &e))?;
    // An older spool's file may have been created with the umask's mode.
    crate::platform::tighten(&file)
        .map_err(|e| SpoolError::io(&format!("chmod 600 {}", path.display()), &e))?;
    let backend = redb::backends::FileBackend::new(file).map_err(|e| SpoolError::db(&ctx(), e))?;
    #[cfg(test)]
    let backend = faulty::FaultyBackend::new(backend, faults.clone());
    #[cfg(not(test))]
    let () = *faults;
    redb::Builder::new()
        .create_with_backend(backend)
        .map_err(|e| SpoolError::db(&ctx(), e))
}

/// The spool. Cheap to share behind an `Arc`; dropping it waits for the writer to finish
/// the round in progress.
pub struct Spool {
    shared: Arc<Shared>,
    tx: Option<mpsc::UnboundedSender<Op>>,
    writer: Option<JoinHandle<()>>,
}

/// The spool's own stamps (arrival, queue ids) read the wall clock the relay's
/// `SystemClock` reads.
pub(crate) fn now_ms() -> u64 {
    crate::policy::clock::wall_ms()
}

pub(crate) use crate::platform::fsync_dir;

fn create_dir(path: &Path) -> Result<(), SpoolError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    crate::platform::private_dir(&mut b)
        .create(path)
        .map_err(|e| SpoolError::io(&format!("creating {}", path.display()), &e))?;
    if !path.is_dir() {
        return Err(SpoolError::Io(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    Ok(())
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
        #[cfg(test)]
        let faults: Faults = Arc::new(std::sync::atomic::AtomicBool::new(false));
        #[cfg(not(test))]
        let faults: Faults = ();

        // 1. The database first: it is locked against a second process, so nothing
        // below can touch the files of a spool another instance is using.
        let db_path = dir.join(DB_FILE);
        let db = open_db(&db_path, &faults)?;
        // Its directory entry must be durable too, or a crash could lose the file.
        fsync_dir(dir).map_err(|e| SpoolError::io("fsync of spool directory", &e))?;

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
        for entry in read_dir(&tmp)? {
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
            db_path,
            db: RwLock::new(Some(db)),
            index: Mutex::new(index),
            ids,
            paused_ms: AtomicU64::new(paused_ms),
            faults,
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

    /// Stores a message that is already in memory (a bounce report, tests). Returns only
    /// when its body and envelope are durable; on error nothing of it remains and
    /// nothing was acknowledged. `rcpts` must not be empty.
    pub async fn put(
        &self,
        env: &Envelope,
        rcpts: &[String],
        body: &[u8],
    ) -> Result<QueueId, SpoolError> {
        if rcpts.is_empty() {
            return Err(SpoolError::Invalid("a message needs a recipient".into()));
        }
        let mut w = self.create_body().await?;
        w.write(body).await?;
        self.commit(w, env, rcpts).await
    }

    /// Starts a new message body in `tmp/`: write it with [`BodyWriter::write`] as it
    /// arrives, then [`Spool::commit`] it. Dropping the writer deletes the file.
    pub async fn create_body(&self) -> Result<BodyWriter, SpoolError> {
        self.sender()?;
        let id = self.shared.ids.next(now_ms());
        let path = self.shared.tmp.join(id.to_string());
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        match crate::platform::owner_only_async(&mut opts)
            .open(&path)
            .await
        {
            Ok(file) => Ok(BodyWriter {
                id,
                file: Some(file),
                path: Some(path),
                len: 0,
            }),
            Err(e) => Err(SpoolError::io(&format!("creating body {id}"), &e)),
        }
    }

    /// Makes a body written with [`Spool::create_body`] durable (fsync, rename into
    /// `msg/`) and commits its record. Returns only when both are on disk; on error
    /// nothing of it remains and nothing was acknowledged. `rcpts` must not be empty.
    pub async fn commit(
        &self,
        mut body: BodyWriter,
        env: &Envelope,
        rcpts: &[String],
    ) -> Result<QueueId, SpoolError> {
        if rcpts.is_empty() {
            return Err(SpoolError::Invalid("a message needs a recipient".into()));
        }
        let tx = self.sender()?;
        let id = body.id;
        let ctx = || format!("writing body {id}");
        let mut file = body
            .file
            .take()
            .ok_or_else(|| SpoolError::Io(format!("body {id} already failed")))?;
        file.flush().await.map_err(|e| SpoolError::io(&ctx(), &e))?;
        let file = file.into_std().await;
        let record = Record::new(env, rcpts, now_ms(), body.len, self.shared.paused_ms());
        // From here on the blocking part owns the file: it runs to its end even if this
        // future is dropped, and hands the record to the writer itself, so a body is
        // never left without its commit attempt.
        let Some(tmp) = body.path.take() else {
            return Err(SpoolError::Io(format!("body {id} already committed")));
        };
        let dst = self.shared.body_path(id);
        let answer = tokio::task::spawn_blocking(move || {
            let durable = file.sync_all().and_then(|()| {
                drop(file);
                fs::rename(&tmp, &dst)
            });
            if let Err(e) = durable {
                let _ = fs::remove_file(&tmp);
                return Err(SpoolError::io(&format!("writing body {id}"), &e));
            }
            let (answer, rx) = oneshot::channel();
            let op = Op::Insert {
                id,
                record,
                body: dst.clone(),
                answer,
            };
            if tx.send(op).is_err() {
                let _ = fs::remove_file(&dst);
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
        let path = self.body_path(id);
        let err = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::NotFound(id),
            _ => SpoolError::io(&format!("reading body of {id}"), &e),
        };
        let len = tokio::fs::metadata(&path).await.map_err(err)?.len();
        // Allocated here, on the calling (async worker) thread, and only filled on the
        // blocking pool. glibc keeps memory freed by a thread in that thread's arena, and
        // large message buffers allocated on dozens of blocking-pool threads stayed
        // resident: 200 x 25 MiB messages with delivery attempts peaked at 297 MiB, and
        // at 123 MiB with the arenas limited to two (benches/big-messages-rss.sh).
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0).saturating_add(1));
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            File::open(&path)?.read_to_end(&mut buf)?;
            Ok::<_, io::Error>(buf)
        })
        .await
        .map_err(|_| SpoolError::Closed)?;
        read.map_err(err)
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

    /// Messages with pending recipients whose age at `now` (unix ms), not counting the
    /// time spent paused since they arrived ([`Spool::paused_ms`]), has reached
    /// `max_age`: the ones for the scheduler to fail.
    pub fn expired(&self, now: u64, max_age: Duration) -> Vec<QueueId> {
        let age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        // Ages are measured on a clock that stands still while paused: arrival and now
        // both minus the paused time before them (see `Message::age_ms`).
        let cutoff = now
            .saturating_sub(self.shared.paused_ms())
            .saturating_sub(age);
        self.shared.lock_index().received_before(cutoff)
    }

    /// Total time (ms) delivery was paused over the spool's life (survives restarts once
    /// [`Spool::save_state`] has written it).
    pub fn paused_ms(&self) -> u64 {
        self.shared.paused_ms()
    }

    /// Adds time spent paused (in memory; [`Spool::save_state`] makes it durable).
    pub fn add_paused(&self, ms: u64) {
        let _ = self
            .shared
            .paused_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_add(ms))
            });
    }

    /// Commits the spool's own state (the paused time). A real, fsynced commit: its
    /// success also says that the spool takes writes again after a failure.
    pub async fn save_state(&self) -> Result<(), SpoolError> {
        let (answer, rx) = oneshot::channel();
        self.send(Op::SaveState { answer }, rx).await.map(|_| ())
    }

    /// Number of messages in the spool.
    pub fn len(&self) -> usize {
        self.shared.lock_index().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Durably changes recipient states of `id` (all or nothing). A final state
    /// (`Delivered`, `Failed`) cannot be changed again; setting a recipient to the state
    /// it already has is accepted (a retried commit that had reached the disk).
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
        self.shared.with_db(|db| {
            let txn = db.begin_read().map_err(|e| SpoolError::db("read", e))?;
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
        })
    }

    /// Every readable message in the spool (without bodies), oldest first.
    pub fn list(&self) -> Result<Vec<Message>, SpoolError> {
        self.shared.with_db(|db| {
            let txn = db.begin_read().map_err(|e| SpoolError::db("read", e))?;
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
        })
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

    /// While `on`, every write of the database fails with ENOSPC, as on a full disk.
    #[cfg(test)]
    pub(crate) fn set_disk_full(&self, on: bool) {
        self.shared.faults.store(on, Ordering::SeqCst);
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

/// A message body on its way into the spool: the file `tmp/<id>`, written as DATA
/// arrives, so a message is never held whole in memory. Dropped without
/// [`Spool::commit`] (the message was refused, the session ended, a write failed), it
/// deletes its file: a refused message leaves nothing behind.
#[derive(Debug)]
pub struct BodyWriter {
    id: QueueId,
    /// `None` after a write error or once `commit` took it.
    file: Option<tokio::fs::File>,
    /// The file to delete on drop; `None` once `commit` owns it.
    path: Option<PathBuf>,
    len: u64,
}

impl BodyWriter {
    /// Appends `chunk`. After an error the writer is spent: drop it.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        let id = self.id;
        let Some(file) = self.file.as_mut() else {
            return Err(SpoolError::Io(format!(
                "body {id}: an earlier write failed"
            )));
        };
        if let Err(e) = file.write_all(chunk).await {
            self.file = None;
            return Err(SpoolError::io(&format!("writing body {id}"), &e));
        }
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        // The handle first (tokio finishes a write in flight in the background; the
        // unlink below does not depend on it).
        self.file = None;
        if let Some(path) = self.path.take() {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a refused body; it is removed at the next start");
                }
            }
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

/// A storage backend for test builds that fails every write while its switch is on:
/// the full disk of issue 8 without mounting anything.
#[cfg(test)]
mod faulty {
    use redb::backends::FileBackend;
    use redb::StorageBackend;
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Debug)]
    pub(crate) struct FaultyBackend {
        inner: FileBackend,
        fail: Arc<AtomicBool>,
    }

    impl FaultyBackend {
        pub(crate) fn new(inner: FileBackend, fail: Arc<AtomicBool>) -> Self {
            Self { inner, fail }
        }
        fn check(&self) -> io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                Err(io::Error::from_raw_os_error(28))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for FaultyBackend {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            self.inner.read(offset, len)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self, eventual: bool) -> io::Result<()> {
            self.check()?;
            self.inner.sync_data(eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }
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
            let failed = RcptState::Failed {
                reply: StoredReply {
                    code: 550,
                    enhanced: None,
                    text: "no".into(),
                },
            };
            assert!(matches!(
                spool.record(a, vec![(2, delivered()), (0, failed)]).await,
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
            // The same final state again (a retried commit that had reached the disk)
            // is accepted and changes nothing.
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

    /// Issue 8.6: the database holds every queued address: owner only, also when an
    /// older spool had it wider.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_is_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let db = dir.path().join(DB_FILE);
        drop(Spool::open(dir.path()).unwrap());
        assert_eq!(mode(&db), 0o600);
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        assert_eq!(mode(&db), 0o600);
        let id = spool.put(&env(), &rcpts(1), b"x").await.unwrap();
        assert_eq!(mode(&spool.body_path(id)), 0o600);
    }

    /// Issue 8.3: after a write error redb refuses everything ("Previous I/O error")
    /// until reopened. The spool reopens it by itself once writes work again; nothing
    /// acknowledged is lost, nothing half-done shows.
    #[tokio::test]
    async fn a_latched_database_is_reopened_when_writes_work_again() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let a = spool.put(&env(), &rcpts(2), b"a").await.unwrap();
        spool.set_disk_full(true);
        let err = spool.record(a, vec![(0, delivered())]).await.unwrap_err();
        assert!(err.is_storage(), "{err:?}");
        assert!(spool.put(&env(), &rcpts(1), b"b").await.is_err());
        assert!(spool.save_state().await.is_err());
        spool.set_disk_full(false);
        // Latched: it takes a reopen (at most every REOPEN_INTERVAL) to write again.
        let mut ok = false;
        for _ in 0..100 {
            if spool.save_state().await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(REOPEN_INTERVAL / 4).await;
        }
        assert!(ok, "never writable again");
        spool.record(a, vec![(0, delivered())]).await.unwrap();
        let b = spool.put(&env(), &rcpts(1), b"b").await.unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.due(now_ms(), 10), vec![(a, vec![1]), (b, vec![0])]);
        assert!(files(&dir.path().join("tmp")).is_empty());
        assert_eq!(files(&dir.path().join("msg")).len(), 2);
        drop(spool);
        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.messages, 2);
        assert_eq!(spool.get(a).unwrap().unwrap().rcpts[0].state, delivered());
    }

    /// Issue 8.6: the time spent paused is kept in the spool, so a restart after a
    /// paused weekend does not expire the queue; a message only gets credit for pauses
    /// after it arrived.
    #[tokio::test]
    async fn paused_time_survives_a_reopen_and_counts_from_arrival() {
        const DAY: u64 = 24 * 3600 * 1000;
        let max_age = Duration::from_millis(4 * DAY);
        let dir = tempfile::tempdir().unwrap();
        let (old, t0);
        {
            let (spool, _) = Spool::open(dir.path()).unwrap();
            old = spool.put(&env(), &rcpts(1), b"old").await.unwrap();
            t0 = spool.get(old).unwrap().unwrap().received;
            spool.add_paused(3 * DAY);
            spool.save_state().await.unwrap();
        }
        let (spool, _) = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.paused_ms(), 3 * DAY);
        let young = spool.put(&env(), &rcpts(1), b"young").await.unwrap();
        let m = spool.get(young).unwrap().unwrap();
        assert_eq!(m.paused_at_arrival, 3 * DAY);
        // Five days after `old` arrived, three of them paused: two days old.
        let later = t0 + 5 * DAY;
        assert_eq!(
            spool
                .get(old)
                .unwrap()
                .unwrap()
                .age_ms(later, spool.paused_ms()),
            2 * DAY
        );
        // `young` arrived (just) after the pause: no credit, five days old, expired.
        assert_eq!(spool.expired(later, max_age), vec![young]);
        // Seven days after, give or take an hour: `old` has four unpaused days, less or
        // more an hour.
        assert_eq!(
            spool.expired(t0 + 7 * DAY - 3_600_000, max_age),
            vec![young]
        );
        assert_eq!(
            spool.expired(t0 + 7 * DAY + 3_600_000, max_age),
            vec![old, young]
        );
    }

    /// Issue 8.4: a body is written to `tmp/` as it arrives; a refused one (the writer
    /// dropped) leaves nothing behind, a committed one moves to `msg/`.
    #[tokio::test]
    async fn bodies_stream_to_tmp_and_leave_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let mut w = spool.create_body().await.unwrap();
        for _ in 0..64 {
            w.write(&[b'x'; 1024]).await.unwrap();
        }
        assert_eq!(w.len(), 65536);
        assert_eq!(files(&dir.path().join("tmp")).len(), 1);
        drop(w);
        assert!(files(&dir.path().join("tmp")).is_empty());
        let mut w = spool.create_body().await.unwrap();
        w.write(b"Subject: a\r\n\r\n").await.unwrap();
        w.write(b"body\r\n").await.unwrap();
        let id = spool.commit(w, &env(), &rcpts(1)).await.unwrap();
        assert!(files(&dir.path().join("tmp")).is_empty());
        assert_eq!(
            spool.read_body(id).await.unwrap(),
            b"Subject: a\r\n\r\nbody\r\n"
        );
        assert_eq!(spool.get(id).unwrap().unwrap().body_len, 20);
        // No recipients: refused, and nothing left either.
        let w = spool.create_body().await.unwrap();
        assert!(matches!(
            spool.commit(w, &env(), &[]).await,
            Err(SpoolError::Invalid(_))
        ));
        assert!(files(&dir.path().join("tmp")).is_empty());
        assert_eq!(spool.len(), 1);
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
