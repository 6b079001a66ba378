//! Store-and-forward for queue mode: the mailer gets `250` once a message is durable in
//! the [`spool`], and delivery workers send it later within the provider's limits.
//!
//! This module must never acknowledge a message before it is durable, never deliver a
//! half-written one, and never hold message bodies in memory. It imports `smtp` (and
//! `policy`), never `server`, `upstream` or `cli`.
//!
//! - [`spool`]: durable storage of bodies, envelopes and per-recipient states, with
//!   crash recovery and group commit. No SMTP, no network.
//! - [`id`]: short, sortable, file-name-safe queue ids.
//! - [`record`]: what is stored per message and per recipient.
//! - [`quota`]: the per-minute ledger that keeps hourly/daily quotas across restarts.
//! - [`schedule`]: what an attempt's verdict does to a recipient (pure).
//! - [`transport`]: what delivery needs from the upstream side (implemented in `cli`).
//! - [`control`]: operator commands, over a socket to the running instance or offline.
//! - [`deliver`]: the engine — due messages out through the transport, outcomes back
//!   into the spool, bounce reports ([`dsn`]), the [`delivery_log`] and the [`webhook`].

pub mod control;
pub mod deliver;
pub mod delivery_log;
pub mod dsn;
pub mod error;
pub mod headers;
pub mod id;
mod index;
pub mod quota;
pub mod record;
pub mod schedule;
pub mod spool;
pub mod transport;
pub mod webhook;
mod writer;

pub use error::SpoolError;
pub use id::{BadQueueId, QueueId};
pub use record::{Message, Rcpt, RcptState, StoredReply};
pub use spool::{Recovered, Spool, Which};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[queue]`: where the spool lives and how long a message may stay in it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// The spool directory (relative paths are relative to the working directory).
    pub dir: PathBuf,
    /// A recipient still undelivered after this long fails with a bounce report.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Send a bounce report (RFC 3464 DSN) to the envelope sender for every recipient
    /// that fails for good.
    pub bounces: bool,
    /// Envelope sender of bounce reports; empty = the null sender `<>` (RFC 3464).
    pub bounce_from: String,
    /// The JSON-lines delivery log; relative to the working directory. Absent =
    /// `<dir>/delivery.log`; `""` = no log.
    pub delivery_log: Option<PathBuf>,
    /// An HTTP POST per failed recipient, in the shape listmonk's bounce webhook takes.
    pub webhook: Option<webhook::WebhookConfig>,
}

impl QueueConfig {
    /// The delivery log's path, if there is one.
    pub fn delivery_log_path(&self) -> Option<PathBuf> {
        match &self.delivery_log {
            None => Some(self.dir.join("delivery.log")),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("mailvalve-spool"),
            max_age: Duration::from_secs(4 * 24 * 3600),
            bounces: true,
            bounce_from: String::new(),
            delivery_log: None,
            webhook: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_humantime() {
        let c: QueueConfig = toml::from_str("").unwrap();
        assert_eq!(c.dir, QueueConfig::default().dir);
        assert!(c.bounces);
        assert_eq!(
            c.delivery_log_path(),
            Some(PathBuf::from("mailvalve-spool/delivery.log"))
        );
        assert_eq!(c.max_age, Duration::from_secs(345_600));
        let c: QueueConfig =
            toml::from_str("dir = \"/var/spool/mv\"\nmax_age = \"2days 12h\"").unwrap();
        assert_eq!(c.dir, PathBuf::from("/var/spool/mv"));
        assert_eq!(c.max_age, Duration::from_secs(60 * 3600));
        assert!(toml::from_str::<QueueConfig>("maxage = \"1d\"").is_err());
    }
}
