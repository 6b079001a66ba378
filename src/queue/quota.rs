//! The persistent quota ledger: how many messages — and how many recipients — were
//! handed to the provider in each minute of the past day, kept in `<spool>/quota.json`,
//! so that a restart does not reset an hourly or daily sending quota, in messages or in
//! recipients (the provider keeps counting; so must we).
//!
//! Per-minute buckets keep it small (at most 1440 numbers) whatever the quota. It is
//! saved every few seconds (write to a temporary file, fsync, rename), not per message:
//! a crash forgets at most the last few seconds of counts. It must never fail startup:
//! an unreadable ledger is logged and starts empty.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// Messages and recipients sent per minute (unix minute → count) over the past day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Messages per minute.
    minutes: BTreeMap<u64, u32>,
    /// Recipients per minute (absent in ledgers written before recipient quotas: none).
    #[serde(default)]
    recipients: BTreeMap<u64, u32>,
}

impl Ledger {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("quota.json")
    }

    /// Loads the ledger; a missing file is an empty ledger, an unreadable one too (with
    /// a warning).
    pub fn load(dir: &Path) -> Self {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "quota ledger unreadable, starting empty: {e}");
                Self::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "quota ledger unreadable, starting empty: {e}");
                Self::default()
            }
        }
    }

    /// Adds `n` messages sent at `now_ms` and forgets what is older than a day.
    pub fn add(&mut self, now_ms: u64, n: u32) {
        self.add_sent(now_ms, n, 0);
    }

    /// Adds `messages` messages to `recipients` recipients sent at `now_ms` and forgets
    /// what is older than a day.
    pub fn add_sent(&mut self, now_ms: u64, messages: u32, recipients: u32) {
        let oldest = now_ms.saturating_sub(DAY_MS) / MINUTE_MS;
        for (map, n) in [
            (&mut self.minutes, messages),
            (&mut self.recipients, recipients),
        ] {
            if n > 0 {
                let e = map.entry(now_ms / MINUTE_MS).or_insert(0);
                *e = e.saturating_add(n);
            }
            *map = map.split_off(&oldest);
        }
    }

    fn since(map: &BTreeMap<u64, u32>, now_ms: u64, window: u64) -> u32 {
        let from = now_ms.saturating_sub(window) / MINUTE_MS;
        map.range(from..)
            .fold(0u32, |a, (_, n)| a.saturating_add(*n))
    }

    /// Messages sent in the past hour.
    pub fn last_hour(&self, now_ms: u64) -> u32 {
        Self::since(&self.minutes, now_ms, HOUR_MS)
    }

    /// Messages sent in the past day.
    pub fn last_day(&self, now_ms: u64) -> u32 {
        Self::since(&self.minutes, now_ms, DAY_MS)
    }

    /// Recipients sent to in the past day.
    pub fn recipients_last_day(&self, now_ms: u64) -> u32 {
        Self::since(&self.recipients, now_ms, DAY_MS)
    }

    /// Writes the ledger durably (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join("quota.json.tmp");
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        crate::platform::fsync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_window_and_forgets_after_a_day() {
        let t0 = 1_800_000_000_000u64;
        let mut l = Ledger::default();
        l.add(t0, 5);
        l.add(t0 + 30 * MINUTE_MS, 3);
        l.add(t0 + 2 * HOUR_MS, 4);
        let now = t0 + 2 * HOUR_MS + 1000;
        assert_eq!(l.last_hour(now), 4);
        assert_eq!(l.last_day(now), 12);
        l.add(t0 + DAY_MS + 31 * MINUTE_MS, 0);
        assert_eq!(
            l.last_day(t0 + DAY_MS + 31 * MINUTE_MS),
            4,
            "older than a day: gone"
        );
    }

    #[test]
    fn counts_recipients_and_reads_ledgers_written_before_them() {
        let t0 = 1_800_000_000_000u64;
        let mut l = Ledger::default();
        l.add_sent(t0, 2, 7);
        l.add_sent(t0 + HOUR_MS, 1, 3);
        assert_eq!(l.last_day(t0 + HOUR_MS), 3);
        assert_eq!(l.recipients_last_day(t0 + HOUR_MS), 10);
        assert_eq!(l.recipients_last_day(t0 + DAY_MS + 2 * MINUTE_MS), 3);
        let dir = tempfile::tempdir().unwrap();
        l.save(dir.path()).unwrap();
        assert_eq!(Ledger::load(dir.path()), l);
        // A ledger from before recipient quotas: its messages count, recipients none.
        let minute = t0 / MINUTE_MS;
        std::fs::write(
            Ledger::path(dir.path()),
            format!("{{\"minutes\":{{\"{minute}\":5}}}}"),
        )
        .unwrap();
        let old = Ledger::load(dir.path());
        assert_eq!((old.last_day(t0), old.recipients_last_day(t0)), (5, 0));
    }

    #[test]
    fn survives_save_and_load_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Ledger::load(dir.path()), Ledger::default());
        let mut l = Ledger::default();
        l.add(1_800_000_000_000, 7);
        l.save(dir.path()).unwrap();
        assert_eq!(Ledger::load(dir.path()), l);
        std::fs::write(Ledger::path(dir.path()), b"{not json").unwrap();
        assert_eq!(Ledger::load(dir.path()), Ledger::default());
    }
}
