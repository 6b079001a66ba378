//! What the controller has learned, as plain data that outlives the process: the rate and
//! its ceiling, the connection limit and its ceiling, a pause with its end. The relay saves
//! it (queue mode: in the spool; passthrough: in its state file) and hands it back on start,
//! so a restart neither forgets a provider's limits nor runs into them again.
//!
//! Times are stored as *ages* ("learned 40 s before the save", "ends 300 s after the
//! save"), never as clock readings: the controller's clock starts at zero in each process.
//! Restoring takes the time that passed since the save and ages everything by it.
//!
//! This module must never hold a secret: an auth pause is kept as a scope only; whether
//! the credentials are still the same is for the caller to decide (it drops the pause
//! before restoring when they changed). It must never do I/O either — serialising and
//! writing the file is the caller's job.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::verdict::PauseScope;

/// Everything one upstream's controller learned. Each part is optional: a state saved
/// before a part existed restores what it has and leaves the rest at its start values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LearnedState {
    /// The message rate.
    pub rate: Option<RateMemory>,
    /// The recipient rate (providers that count recipients per time).
    pub recipient_rate: Option<RateMemory>,
    /// The connection limit.
    pub connections: Option<ConnectionMemory>,
    /// A pause in force when saved.
    pub pause: Option<PauseMemory>,
}

/// A learned rate (messages or recipients per second).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateMemory {
    /// The rate in force; `None` = unlimited.
    pub rate: Option<f64>,
    /// The rate at which the provider throttled (the learned ceiling).
    pub ceiling: Option<f64>,
    /// How long before the save the ceiling was learned.
    pub ceiling_age_ms: Option<u64>,
    /// The provider's counting window as inferred from its refusals, if known.
    pub window_ms: Option<u64>,
}

/// A learned connection limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionMemory {
    /// The limit in force.
    pub limit: usize,
    /// The most connections the provider allowed (the learned ceiling).
    pub ceiling: Option<usize>,
    /// How long before the save the ceiling was learned.
    pub ceiling_age_ms: Option<u64>,
    /// The learned least interval between opening new connections (a connection-rate
    /// limit), if one was learned.
    pub open_interval_ms: Option<u64>,
    /// How long before the save that interval was learned (its probe is due
    /// `probe_interval` after).
    pub open_interval_age_ms: Option<u64>,
    /// Growth was additive (a count limit had been met): no slow start after a restart.
    pub additive: bool,
}

/// Why sending was paused, as saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PausedFor {
    Auth,
    Quota,
    Policy,
}

impl From<PauseScope> for PausedFor {
    fn from(s: PauseScope) -> Self {
        match s {
            PauseScope::Auth => PausedFor::Auth,
            PauseScope::Quota => PausedFor::Quota,
            PauseScope::Policy => PausedFor::Policy,
        }
    }
}

impl From<PausedFor> for PauseScope {
    fn from(s: PausedFor) -> Self {
        match s {
            PausedFor::Auth => PauseScope::Auth,
            PausedFor::Quota => PauseScope::Quota,
            PausedFor::Policy => PauseScope::Policy,
        }
    }
}

/// A pause in force when saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseMemory {
    pub scope: PausedFor,
    /// How long after the save it ends by itself; `None` = only when resumed.
    pub remaining_ms: Option<u64>,
}

/// Milliseconds of a duration, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When something learned `age_ms` before a save that is `since_save` old happened, as a
/// clock time at `now`: `None` when that is further back than `horizon` (or than the
/// clock reaches), i.e. it has expired. A clock time cannot lie before the process
/// started, so anything older than `now` but younger than `horizon` is dated at zero —
/// it then holds a little longer than it would have, never shorter.
pub fn learned_at(
    age_ms: u64,
    since_save: Duration,
    now: Duration,
    horizon: Duration,
) -> Option<Duration> {
    let age = Duration::from_millis(age_ms).saturating_add(since_save);
    if age >= horizon {
        return None;
    }
    Some(now.saturating_sub(age))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_in_the_past_and_expires_at_the_horizon() {
        let s = Duration::from_secs;
        assert_eq!(learned_at(10_000, s(5), s(100), s(600)), Some(s(85)));
        assert_eq!(learned_at(10_000, s(5), s(3), s(600)), Some(s(0)));
        assert_eq!(learned_at(500_000, s(100), s(1000), s(600)), None);
    }

    #[test]
    fn old_files_without_newer_parts_still_read() {
        let st: LearnedState = serde_json::from_str(r#"{"rate":{"rate":2.5}}"#).unwrap_or_default();
        assert_eq!(st.rate.and_then(|r| r.rate), Some(2.5));
        assert!(st.connections.is_none());
        let p: PauseMemory =
            serde_json::from_str(r#"{"scope":"quota","remaining_ms":1000}"#).unwrap();
        assert_eq!(PauseScope::from(p.scope), PauseScope::Quota);
    }
}
