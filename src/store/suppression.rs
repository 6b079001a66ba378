//! The suppression list in a redb database: one table, address → JSON entry. redb's
//! copy-on-write commits survive `kill -9` and power loss: a commit is either fully
//! there after restart or not at all.
//!
//! [`RedbFile`] commits on the caller's thread; [`RedbStore`], what the relay and the
//! CLI use, is that file behind a writer thread (`write_behind`), so recording a
//! suppression from a provider reply never waits for an fsync on an async worker.

use super::write_behind::WriteBehind;
use crate::policy::suppression::{Entry, StoreError, SuppressionStore};
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("suppression");

/// The database itself: every call is durable before it returns.
pub struct RedbFile {
    db: Database,
}

/// The suppression database with its writer thread (see the module docs).
pub type RedbStore = WriteBehind<RedbFile>;

impl WriteBehind<RedbFile> {
    /// Opens (or creates) the database at `path` and starts its writer.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        RedbFile::open(path).map(WriteBehind::new)
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl RedbFile {
    /// Opens (or creates) the database at `path`; the parent directory must exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        // Create the table so that reads on a fresh database find it.
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(TABLE).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }
}

impl SuppressionStore for RedbFile {
    fn load_all(&self) -> Result<Vec<Entry>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(TABLE).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let entry: Entry = serde_json::from_slice(v.value())
                .map_err(|e| StoreError(format!("entry {:?} unreadable: {e}", k.value())))?;
            out.push(entry);
        }
        Ok(out)
    }

    fn put(&self, entry: &Entry) -> Result<(), StoreError> {
        self.put_all(std::slice::from_ref(entry))
    }

    fn put_all(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(TABLE).map_err(err)?;
            for e in entries {
                let bytes = serde_json::to_vec(e).map_err(err)?;
                table
                    .insert(e.address.as_str(), bytes.as_slice())
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn remove(&self, address: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        let removed = {
            let mut table = tx.open_table(TABLE).map_err(err)?;
            let old = table.remove(address).map_err(err)?;
            old.is_some()
        };
        tx.commit().map_err(err)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::suppression::{SoftPolicy, Suppressions};
    use crate::smtp::{EnhancedCode, Reply};

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let r = Reply::new(550, EnhancedCode::new(5, 1, 1), "unknown user");
        {
            let s =
                Suppressions::open(RedbStore::open(&path).unwrap(), SoftPolicy::default()).unwrap();
            s.record_hard("A@b.example", &r, 5).unwrap();
            s.record_hard("c@d.example", &r, 6).unwrap();
            assert!(s.remove("c@d.example").unwrap());
        }
        let s = Suppressions::open(RedbStore::open(&path).unwrap(), SoftPolicy::default()).unwrap();
        let e = s.lookup("a@B.example").unwrap();
        assert_eq!(e.text, "unknown user");
        assert!(!s.is_suppressed("c@d.example"));
    }
}
