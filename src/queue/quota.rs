//! The state file, `<queue.dir>/quota.json` (both modes): the persistent quota ledger —
//! how many messages and how many recipients were handed to the provider in each minute
//! of the past day, so that a restart does not reset an hourly or daily sending quota
//! (the provider keeps counting; so must we) — and what the controller had learned when
//! it was saved ([`SavedLearning`]: rates, ceilings, connections, a pause and its end),
//! so that a restart neither forgets the provider's limits nor runs into them again.
//!
//! Per-minute buckets keep it small (at most 1440 numbers) whatever the quota. It is
//! saved every few seconds (write to a temporary file, fsync, rename), not per message:
//! a crash forgets at most the last few seconds of counts. It must never fail startup:
//! an unreadable file is logged (naming it), kept aside as `quota.json.corrupt`, and
//! the ledger starts empty. It must never hold a secret: the credentials are kept as a
//! salted fingerprint only (`relay::state` makes it).

use crate::policy::memory::LearnedState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// What the controller had learned when the state was saved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SavedLearning {
    /// When it was saved (unix ms): restoring ages everything by the time since.
    pub saved_unix_ms: u64,
    /// A salted fingerprint of the credentials in use then (never the secret): an auth
    /// pause is restored only while they are unchanged.
    pub credentials: Option<String>,
    pub state: LearnedState,
}

/// Messages and recipients sent per minute (unix minute → count) over the past day, and
/// what was learned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Messages per minute.
    minutes: BTreeMap<u64, u32>,
    /// Recipients per minute (absent in ledgers written before recipient quotas: none).
    #[serde(default)]
    recipients: BTreeMap<u64, u32>,
    /// What was learned (absent in files written before: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned: Option<SavedLearning>,
}

impl Ledger {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("quota.json")
    }

    /// Where an unreadable file is kept aside.
    pub fn corrupt_path(dir: &Path) -> PathBuf {
        dir.join("quota.json.corrupt")
    }

    /// Loads the ledger; a missing file is an empty ledger, an unreadable one too: with
    /// a warning naming the file, which is kept aside as `quota.json.corrupt` for a look.
    pub fn load(dir: &Path) -> Self {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                let aside = Self::corrupt_path(dir);
                let kept = match std::fs::rename(&path, &aside) {
                    Ok(()) => format!("kept as {}", aside.display()),
                    Err(r) => format!("could not keep it aside: {r}"),
                };
                tracing::warn!(
                    path = %path.display(),
                    "state file {} is unreadable ({e}); {kept}; starting with empty quota \
                     counts and nothing learned (queued mail is not affected)",
                    path.display()
                );
                Self::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    "state file {} is unreadable ({e}); starting with empty quota counts and \
                     nothing learned (queued mail is not affected)",
                    path.display()
                );
                Self::default()
            }
        }
    }

    /// Reads the file without touching it (for `queue status`): `Ok(None)` when there is
    /// none, `Err` saying why it cannot be read.
    pub fn peek(dir: &Path) -> Result<Option<Self>, String> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("{} is unreadable: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{} is unreadable: {e}", path.display())),
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
        assert_eq!(
            std::fs::read(Ledger::corrupt_path(dir.path())).unwrap(),
            b"{not json",
            "the unreadable file is kept aside"
        );
        assert!(!Ledger::path(dir.path()).exists());
    }
}
