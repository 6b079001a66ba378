//! A message body on its way into the spool: written to `tmp/<id>` as DATA arrives,
//! committed by `Spool::commit`, deleted when dropped uncommitted.
//!
//! Must never leave a refused message behind, and never hold a body in memory.

use crate::queue::{QueueId, SpoolError};
use std::fs;
use std::io;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

/// A message body on its way into the spool: the file `tmp/<id>`, written as DATA
/// arrives, so a message is never held whole in memory. Dropped without
/// `Spool::commit` (the message was refused, the session ended, a write failed), it
/// deletes its file: a refused message leaves nothing behind.
#[derive(Debug)]
pub struct BodyWriter {
    pub(super) id: QueueId,
    /// `None` after a write error or once `commit` took it.
    pub(super) file: Option<tokio::fs::File>,
    /// The file to delete on drop; `None` once `commit` owns it.
    pub(super) path: Option<PathBuf>,
    pub(super) len: u64,
    /// The first bytes of the message (at most [`HEAD_KEPT`]), for its `Subject`.
    pub(super) head: Vec<u8>,
}

/// How much of a message's start is kept in memory while it is written, to read its
/// `Subject` for `queue list`: header sections are short, and a body is never kept.
const HEAD_KEPT: usize = 16 * 1024;

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
        if self.head.len() < HEAD_KEPT {
            let take = chunk.len().min(HEAD_KEPT - self.head.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
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
