//! `[queue]`: where the spool lives, how long a message may stay in it, bounce reports,
//! the delivery log and the bounce webhook. Only the shape and defaults; `validate.rs`
//! checks the values. It must never open the spool or touch the disk.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[queue]`: where the spool lives and how long a message may stay in it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// The spool directory (relative to the config file's directory; see `load`).
    pub dir: PathBuf,
    /// A recipient still undelivered after this long fails with a bounce report.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Send a bounce report (RFC 3464 DSN) to the envelope sender for every recipient
    /// that fails for good.
    pub bounces: bool,
    /// Envelope sender of bounce reports; empty = the null sender `<>` (RFC 3464).
    pub bounce_from: String,
    /// The JSON-lines delivery log (relative to the config file's directory). Absent =
    /// `<dir>/delivery.log`; `""` = no log.
    pub delivery_log: Option<PathBuf>,
    /// An HTTP POST per failed recipient, in the shape listmonk's bounce webhook takes.
    pub webhook: Option<super::webhook::WebhookConfig>,
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
