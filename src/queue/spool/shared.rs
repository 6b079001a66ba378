//! What the spool handle, body writers and the writer thread share: the directories,
//! the database (reopened after a write error), the in-memory index, the id generator
//! and the paused-time counter.
//!
//! Must never hand out the database while a reopen is under way (`None` then), and never
//! leave the index out of step with the disk after a reopen.

use super::{open_db, Faults, TABLE};
use crate::queue::id::IdGen;
use crate::queue::index::Index;
use crate::queue::record::Record;
use crate::queue::{QueueId, SpoolError};
use redb::{Database, ReadableTable};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

/// State shared by the spool handle, body writers and the writer thread.
pub(crate) struct Shared {
    pub(crate) tmp: PathBuf,
    pub(crate) msg: PathBuf,
    pub(super) db_path: PathBuf,
    /// `None` only while the writer reopens it after a write error.
    pub(super) db: RwLock<Option<Database>>,
    pub(super) index: Mutex<Index>,
    pub(super) ids: IdGen,
    /// See [`PAUSED_KEY`]; the durable copy is written by [`Spool::save_state`].
    pub(super) paused_ms: AtomicU64,
    pub(super) faults: Faults,
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
pub(super) fn load_index(db: &Database) -> Result<Index, SpoolError> {
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
