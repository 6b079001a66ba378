//! Errors of the spool, and the one SMTP reply the server gives for all storage trouble.
//! It must never put message content or credentials into an error.

use crate::smtp::{EnhancedCode, Reply};
use std::io;

use super::QueueId;

/// Why a spool operation did not happen. The variants carry text rather than the
/// `io::Error` so that one failed group commit can be reported to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// No space left (or quota exceeded) on the spool's file system.
    #[error("spool is full: {0}")]
    Full(String),
    /// Any other failure to read or write the spool (permissions, I/O error, ...).
    #[error("spool I/O error: {0}")]
    Io(String),
    /// The envelope database failed or holds something unreadable.
    #[error("spool database error: {0}")]
    Db(String),
    /// The spool's writer thread is gone (the spool is shutting down).
    #[error("spool is closed")]
    Closed,
    #[error("no message {0} in the spool")]
    NotFound(QueueId),
    /// A request that makes no sense (no recipients, recipient index out of range,
    /// changing a final recipient state).
    #[error("invalid spool request: {0}")]
    Invalid(String),
}

impl SpoolError {
    /// True for the failures a mailer should retry later: the spool could not store.
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            Self::Full(_) | Self::Io(_) | Self::Db(_) | Self::Closed
        )
    }

    /// What the inbound server answers at the end of DATA when `put` failed:
    /// `452 4.3.1` for every storage failure (RFC 3463: mail system full), so the mailer
    /// keeps the message and retries; nothing was acknowledged.
    pub fn smtp_reply(&self) -> Reply {
        if self.is_storage() {
            Reply::new(
                452,
                EnhancedCode::new(4, 3, 1),
                "Insufficient system storage, try again later",
            )
        } else {
            Reply::new(451, EnhancedCode::new(4, 3, 0), "Local error in processing")
        }
    }

    /// Classifies an I/O error: disk full and quota exceeded are `Full`.
    pub(crate) fn io(context: &str, e: &io::Error) -> Self {
        let msg = format!("{context}: {e}");
        if is_no_space(e) {
            Self::Full(msg)
        } else {
            Self::Io(msg)
        }
    }

    pub(crate) fn db(context: &str, e: impl Into<redb::Error>) -> Self {
        match e.into() {
            redb::Error::Io(io) => Self::io(context, &io),
            other => Self::Db(format!("{context}: {other}")),
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    // ENOSPC is 28 on Linux and the BSDs; EDQUOT is 122 on Linux, 69 on the BSDs/macOS.
    // (io::ErrorKind::StorageFull/QuotaExceeded need a newer Rust than our MSRV.)
    match e.raw_os_error() {
        Some(28) => true,
        #[cfg(target_os = "linux")]
        Some(122) => true,
        #[cfg(any(target_os = "macos", target_os = "freebsd", target_os = "openbsd"))]
        Some(69) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_full_and_maps_to_452_431() {
        let e = SpoolError::io("writing body", &io::Error::from_raw_os_error(28));
        assert!(matches!(e, SpoolError::Full(_)), "{e:?}");
        let r = e.smtp_reply();
        assert_eq!(
            (r.code, r.enhanced),
            (452, Some(EnhancedCode::new(4, 3, 1)))
        );
        let e = SpoolError::io("x", &io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(matches!(e, SpoolError::Io(_)));
        assert_eq!(e.smtp_reply().code, 452);
        let e = SpoolError::db("commit", io::Error::from_raw_os_error(28));
        assert!(matches!(e, SpoolError::Full(_)), "{e:?}");
    }
}
