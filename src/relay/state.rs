//! What a restart must not forget, for both modes, in one state file
//! (`<queue.dir>/quota.json`, see `queue::quota`): the quota ledger (messages and
//! recipients handed to the provider in the past day) and what the controller learned
//! (`Controller::memory`: rates and their ceilings, connections, a pause and its end).
//!
//! On start, before the first delivery: the ledger is counted into the rate limits and
//! the learned state is restored, aged by the time since it was saved. An auth pause is
//! restored only while the credentials are unchanged: the file keeps a salted PBKDF2
//! fingerprint of them (never the secret). While running, the state is saved when it
//! changed (checked every few seconds, so at most one write per interval) and once more
//! when the relay has stopped.
//!
//! It must never fail startup over an unreadable file (warn naming it, start fresh) and
//! never write a secret.

use crate::config::{Config, UpstreamConfig};
use crate::policy::clock::Clock;
use crate::policy::controller::Controller;
use crate::policy::memory::{LearnedState, PausedFor};
use crate::queue::quota::{Ledger, SavedLearning};
use crate::upstream::rate_limit::{RateLimits, Spent};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the state is checked for changes (and saved if it changed).
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// PBKDF2 rounds for the credentials fingerprint: it is computed once per start, and
/// makes guessing a password from a stolen state file slow.
const ROUNDS: u32 = 100_000;

/// What the credentials are made of, for the fingerprint: user and password, or the
/// OAuth2 identity (user, client id, the refresh token given or the token file's
/// content). Only ever hashed.
fn credential_material(u: &UpstreamConfig) -> Vec<u8> {
    let mut m = Vec::new();
    let mut part = |b: &[u8]| {
        m.extend_from_slice(&(b.len() as u64).to_le_bytes());
        m.extend_from_slice(b);
    };
    part(u.username.as_deref().unwrap_or("").as_bytes());
    match &u.oauth2 {
        Some(o) => {
            part(b"oauth2");
            part(o.client_id.as_deref().unwrap_or("").as_bytes());
            match &o.refresh_token {
                Some(t) => part(t.expose().as_bytes()),
                None => {
                    let file = o
                        .token_file
                        .clone()
                        .unwrap_or_else(|| crate::config::oauth::DEFAULT_TOKEN_FILE.into());
                    part(&std::fs::read(file).unwrap_or_default());
                }
            }
        }
        None => {
            part(b"password");
            part(
                u.password
                    .as_ref()
                    .map(|p| p.expose().as_bytes())
                    .unwrap_or(b""),
            );
        }
    }
    m
}

fn rounds() -> NonZeroU32 {
    NonZeroU32::new(ROUNDS).unwrap_or(NonZeroU32::MIN)
}

/// A salted fingerprint of the credentials in `u`: `pbkdf2-sha256$<salt>$<hash>`
/// (base64). Never the secret itself. `None` if the system has no randomness for a salt.
pub fn fingerprint(u: &UpstreamConfig) -> Option<String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut salt).ok()?;
    let mut hash = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds(),
        &salt,
        &credential_material(u),
        &mut hash,
    );
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    Some(format!(
        "pbkdf2-sha256${}${}",
        b64.encode(salt),
        b64.encode(hash)
    ))
}

/// Whether `stored` (from [`fingerprint`]) was made from the credentials in `u`.
pub fn same_credentials(stored: &str, u: &UpstreamConfig) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds(),
        &salt,
        &credential_material(u),
        &hash,
    )
    .is_ok()
}

/// `state` without its ages: what decides whether anything changed since the last save.
fn shape(state: &LearnedState) -> LearnedState {
    let mut s = state.clone();
    for r in [&mut s.rate, &mut s.recipient_rate].into_iter().flatten() {
        r.ceiling_age_ms = None;
    }
    if let Some(c) = &mut s.connections {
        c.ceiling_age_ms = None;
    }
    if let Some(p) = &mut s.pause {
        p.remaining_ms = None;
    }
    s
}

/// Restores what `ledger` says was learned, `now_unix_ms` being now: aged by the time
/// since the save; an auth pause dropped when the credentials changed. Returns the time
/// since the save, if anything was restored.
pub fn restore_learning(
    ledger: &Ledger,
    upstream: &UpstreamConfig,
    controller: &Controller,
    now_unix_ms: u64,
) -> Option<Duration> {
    let saved = ledger.learned.as_ref()?;
    let since = Duration::from_millis(now_unix_ms.saturating_sub(saved.saved_unix_ms));
    let mut state = saved.state.clone();
    if let Some(p) = state.pause.filter(|p| p.scope == PausedFor::Auth) {
        let unchanged = saved
            .credentials
            .as_deref()
            .is_some_and(|f| same_credentials(f, upstream));
        if !unchanged {
            tracing::info!(
                ?p,
                "state: the sign-in pause is not restored, the credentials changed since"
            );
            state.pause = None;
        }
    }
    controller.restore_memory(&state, since);
    tracing::info!(
        age_s = since.as_secs(),
        rate = ?state.rate.as_ref().and_then(|r| r.rate),
        connections = ?state.connections.as_ref().map(|c| c.limit),
        pause = ?state.pause.map(|p| p.scope),
        "state: restored what was learned before the restart"
    );
    Some(since)
}

/// Counts what `ledger` says was sent in the past hour / day against `rates`' quotas.
fn restore_quotas(ledger: &Ledger, rates: &RateLimits, now_unix_ms: u64) {
    let spent = Spent {
        messages_hour: ledger.last_hour(now_unix_ms),
        messages_day: ledger.last_day(now_unix_ms),
        recipients_day: ledger.recipients_last_day(now_unix_ms),
    };
    if spent != Spent::default() {
        tracing::info!(
            last_hour = spent.messages_hour,
            last_day = spent.messages_day,
            recipients_last_day = spent.recipients_day,
            "quota: counting messages sent before the restart"
        );
    }
    rates.preload(spent);
}

/// The running keeper of the state file.
pub struct StateKeeper {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for StateKeeper {
    /// Dropped without [`StateKeeper::finish`] (the relay failed to start): the keeper
    /// saves once and ends.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl StateKeeper {
    /// Loads the state file in `config.queue.dir`, restores the quotas and what was
    /// learned into `rates` / `controller`, and keeps the file up to date until
    /// [`StateKeeper::finish`]. Call before the first delivery.
    pub fn start(config: &Config, controller: Arc<Controller>, rates: Arc<RateLimits>) -> Self {
        let dir = config.queue.dir.clone();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "state: cannot create the directory: {e}");
        }
        let mut ledger = Ledger::load(&dir);
        let now = controller.clock().unix_ms();
        restore_quotas(&ledger, &rates, now);
        restore_learning(&ledger, &config.upstream, &controller, now);
        ledger.learned = None; // written afresh at the first save
        let credentials = fingerprint(&config.upstream);
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep(
            ledger,
            dir,
            credentials,
            rates,
            controller,
            stop.clone(),
        ));
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Saves one last time (the relay has stopped: every delivery is counted) and ends.
    pub async fn finish(mut self) {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .is_err()
        {
            tracing::warn!("state: the last save did not finish within 10 s");
        }
    }
}

async fn save(ledger: &Ledger, dir: &Path) {
    let (l, d) = (ledger.clone(), dir.to_path_buf());
    match tokio::task::spawn_blocking(move || l.save(&d)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(dir = %dir.display(), "state file not saved: {e}"),
        Err(e) => tracing::warn!(dir = %dir.display(), "state file not saved: {e}"),
    }
}

/// Saves the ledger and what was learned when either changed, checked every
/// [`SAVE_EVERY`], and once more at the end.
async fn keep(
    mut ledger: Ledger,
    dir: PathBuf,
    credentials: Option<String>,
    rates: Arc<RateLimits>,
    controller: Arc<Controller>,
    stop: CancellationToken,
) {
    let mut seen = (rates.taken(), rates.recipients_taken());
    let mut last_shape: Option<LearnedState> = None;
    loop {
        let last = tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => false,
            _ = stop.cancelled() => true,
        };
        let taken = (rates.taken(), rates.recipients_taken());
        let delta =
            |now: u64, before: u64| u32::try_from(now.saturating_sub(before)).unwrap_or(u32::MAX);
        let (messages, recipients) = (delta(taken.0, seen.0), delta(taken.1, seen.1));
        seen = taken;
        let now = controller.clock().unix_ms();
        let state = controller.memory();
        let changed = last_shape.as_ref() != Some(&shape(&state));
        if messages > 0 || recipients > 0 || changed || last {
            ledger.add_sent(now, messages, recipients);
            last_shape = Some(shape(&state));
            ledger.learned = Some(SavedLearning {
                saved_unix_ms: now,
                credentials: credentials.clone(),
                state,
            });
            save(&ledger, &dir).await;
        }
        if last {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn up(user: &str, pw: &str) -> UpstreamConfig {
        UpstreamConfig {
            username: Some(user.into()),
            password: Some(Secret::new(pw)),
            ..UpstreamConfig::default()
        }
    }

    #[test]
    fn the_fingerprint_tells_changed_credentials_and_holds_no_secret() {
        let a = up("me@example.org", "hunter2-very-secret");
        let f = fingerprint(&a).unwrap();
        assert!(
            !f.contains("hunter2") && !f.contains("me@example.org"),
            "{f}"
        );
        assert!(same_credentials(&f, &a));
        assert!(!same_credentials(&f, &up("me@example.org", "new-password")));
        assert!(!same_credentials(
            &f,
            &up("you@example.org", "hunter2-very-secret")
        ));
        assert_ne!(f, fingerprint(&a).unwrap(), "salted");
        assert!(!same_credentials("garbage", &a));
        assert!(!same_credentials("pbkdf2-sha256$!!$??", &a));
    }

    #[test]
    fn shape_ignores_ages_only() {
        use crate::policy::memory::{ConnectionMemory, PauseMemory, RateMemory};
        let a = LearnedState {
            rate: Some(RateMemory {
                rate: Some(2.0),
                ceiling: Some(3.0),
                ceiling_age_ms: Some(10),
                window_ms: None,
            }),
            connections: Some(ConnectionMemory {
                limit: 2,
                ceiling: Some(2),
                ceiling_age_ms: Some(5),
                open_interval_ms: None,
                ..ConnectionMemory::default()
            }),
            pause: Some(PauseMemory {
                scope: PausedFor::Quota,
                remaining_ms: Some(1000),
            }),
            ..LearnedState::default()
        };
        let mut older = a.clone();
        older.rate.as_mut().unwrap().ceiling_age_ms = Some(5000);
        older.pause.as_mut().unwrap().remaining_ms = Some(10);
        assert_eq!(shape(&a), shape(&older));
        let mut other = a.clone();
        other.connections.as_mut().unwrap().limit = 3;
        assert_ne!(shape(&a), shape(&other));
    }
}
