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
    /// Opens (or creates) the database at `path`, and its directory if missing (owner
    /// only, like the spool's). A new file is created with mode 0600 (it holds addresses), and the directory entry is
    /// made durable. An existing file readable by others is used as it is, with a
    /// warning. Another process holding the database (a running mailvalve) is an error
    /// that says so.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let cannot =
            |e: &dyn std::fmt::Display| StoreError(format!("cannot open {}: {e}", path.display()));
        let (file, created) = open_file(path).map_err(|e| cannot(&e))?;
        let db = redb::Builder::new().create_file(file).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                "{} is in use by another process (a running mailvalve that did not answer on its control socket?)",
                path.display()
            )),
            e => cannot(&e),
        })?;
        if created {
            sync_parent(path).map_err(|e| cannot(&e))?;
        }
        // Create the table so that reads on a fresh database find it.
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(TABLE).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }
}

/// The database file, created 0600 in the same `open` that creates it (no window with
/// wider permissions); `true` when it was created now. Portable path: elsewhere the
/// file gets the platform's default permissions.
fn open_file(path: &Path) -> std::io::Result<(std::fs::File, bool)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            crate::platform::private_dir(&mut b).create(dir)?;
        }
    }
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    crate::platform::owner_only(&mut o);
    match o.clone().create_new(true).open(path) {
        Ok(f) => return Ok((f, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let f = o.open(path)?;
    if crate::platform::is_shared(&f.metadata()?) {
        tracing::warn!(
            path = %path.display(),
            "the suppression database is accessible by other users; `chmod 600` it (it holds addresses)"
        );
    }
    Ok((f, false))
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    crate::platform::fsync_dir(dir)
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

    /// `run` used to refuse a suppression path in a missing directory with a bare "No
    /// such file or directory"; the directory is now created, like the spool's.
    #[test]
    fn missing_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/lists/s.redb");
        let store = RedbStore::open(&path).unwrap();
        drop(store);
        assert!(path.is_file());
        // A directory that cannot be made (a file in the way) is an error naming the path.
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let bad = dir.path().join("file/s.redb");
        let e = RedbStore::open(&bad).err().unwrap();
        assert!(e.0.contains(&bad.display().to_string()), "{}", e.0);
    }

    #[cfg(unix)]
    #[test]
    fn database_file_is_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = RedbStore::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "created {mode:o}");
        drop(store);
        // Reopening keeps it (and the data).
        RedbStore::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_second_open_says_the_list_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let _first = RedbStore::open(&path).unwrap();
        let e = RedbStore::open(&path).err().unwrap();
        assert!(e.0.contains("in use by another process"), "{e}");
    }

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
