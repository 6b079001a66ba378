//! Whether the account may send at all. A pause stops admission; it must never count as
//! a delivery attempt, never suppress or bounce anything, and never end by itself when
//! the reason is bad credentials (retrying a wrong password gets accounts locked).
//!
//! - `Auth`: until [`PauseGate::resume`] (operator command or config reload).
//! - `Quota` / `Policy`: until the given time (the quota window's reset), or earlier by
//!   `resume`.

use std::time::Duration;

use super::verdict::PauseScope;

/// The pause state as seen at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseState {
    Running,
    Paused {
        scope: PauseScope,
        /// Clock time at which sending resumes by itself; `None` = only by `resume()`.
        until: Option<Duration>,
    },
}

impl PauseState {
    pub fn is_paused(&self) -> bool {
        matches!(self, PauseState::Paused { .. })
    }
}

/// The pause gate.
#[derive(Debug, Clone, Default)]
pub struct PauseGate {
    current: Option<(PauseScope, Option<Duration>)>,
    pauses: u64,
}

impl PauseGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pauses. An `Auth` pause always wins (it has no end); otherwise the later end wins.
    pub fn pause(&mut self, scope: PauseScope, until: Option<Duration>, now: Duration) {
        let until = match scope {
            PauseScope::Auth => None,
            _ => until,
        };
        let next = match self.state(now) {
            PauseState::Running => {
                self.pauses += 1;
                (scope, until)
            }
            PauseState::Paused {
                scope: PauseScope::Auth,
                ..
            } => (PauseScope::Auth, None),
            PauseState::Paused {
                until: None,
                scope: s,
            } => (s, None),
            PauseState::Paused {
                until: Some(old),
                scope: s,
            } => match until {
                None => (scope, None),
                Some(new) if new > old => (scope, Some(new)),
                Some(_) => (s, Some(old)),
            },
        };
        self.current = Some(next);
    }

    /// Ends any pause (operator command, config reload).
    pub fn resume(&mut self) {
        self.current = None;
    }

    /// The state at `now`: a timed pause whose end has passed is over.
    pub fn state(&self, now: Duration) -> PauseState {
        match self.current {
            Some((_, Some(until))) if now >= until => PauseState::Running,
            Some((scope, until)) => PauseState::Paused { scope, until },
            None => PauseState::Running,
        }
    }

    pub fn is_paused(&self, now: Duration) -> bool {
        self.state(now).is_paused()
    }

    /// How many distinct pauses began.
    pub fn pauses(&self) -> u64 {
        self.pauses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn auth_pause_lasts_until_resume() {
        let mut g = PauseGate::new();
        g.pause(PauseScope::Auth, Some(s(5)), s(0));
        assert!(g.is_paused(s(1_000_000)));
        g.resume();
        assert!(!g.is_paused(s(1_000_000)));
    }

    #[test]
    fn quota_pause_ends_at_its_window() {
        let mut g = PauseGate::new();
        g.pause(PauseScope::Quota, Some(s(3600)), s(10));
        assert!(g.is_paused(s(3599)));
        assert!(!g.is_paused(s(3600)));
        assert_eq!(g.pauses(), 1);
    }

    #[test]
    fn later_end_wins_and_auth_is_never_shortened() {
        let mut g = PauseGate::new();
        g.pause(PauseScope::Quota, Some(s(100)), s(0));
        g.pause(PauseScope::Quota, Some(s(50)), s(1));
        assert_eq!(
            g.state(s(2)),
            PauseState::Paused {
                scope: PauseScope::Quota,
                until: Some(s(100))
            }
        );
        g.pause(PauseScope::Auth, None, s(3));
        g.pause(PauseScope::Quota, Some(s(10)), s(4));
        assert_eq!(
            g.state(s(200)),
            PauseState::Paused {
                scope: PauseScope::Auth,
                until: None
            }
        );
        assert_eq!(g.pauses(), 1, "one pause, extended");
    }
}
