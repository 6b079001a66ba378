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
//!
//! # Files
//!
//! Beside this file: `recover` (what `open` checks and cleans after a crash), `body` (a
//! body being written, [`BodyWriter`]), `shared` (state shared with the writer thread),
//! `faulty` (test builds only: a storage backend that fails like a full disk), `tests`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

mod body;
#[cfg(test)]
mod faulty;
mod recover;
mod shared;
#[cfg(test)]
mod tests;

pub use body::BodyWriter;
pub use recover::Recovered;
pub(crate) use shared::Shared;

use super::id::IdGen;
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

        // 2.-4. What a crash left behind (see `recover`).
        let found = recover::recover(&db, &tmp, &msg, &ids)?;

        let shared = Arc::new(Shared {
            tmp,
            msg,
            db_path,
            db: RwLock::new(Some(db)),
            index: Mutex::new(found.index),
            ids,
            paused_ms: AtomicU64::new(found.paused_ms),
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
            found.recovered,
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
                head: Vec::new(),
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
        let mut record = Record::new(env, rcpts, now_ms(), body.len, self.shared.paused_ms());
        record.subject = super::headers::Fields::of(&std::mem::take(&mut body.head)).subject();
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
