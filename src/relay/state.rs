//! What a restart must not forget, for both modes: the quota ledger (messages and
//! recipients handed to the provider in the past day, `<spool>/quota.json`) counted into
//! the rate limits before the first delivery, and kept up to date while running.
//!
//! It must never fail startup over an unreadable file (warn, start empty) and never lose
//! the ledger's last counts at shutdown.

use crate::policy::clock::Clock;
use crate::policy::controller::Controller;
use crate::queue::quota::Ledger;
use crate::upstream::rate_limit::{RateLimits, Spent};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How often the ledger is saved while something is sent (and once at shutdown).
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads the ledger in `dir` and counts what it says was sent in the past hour / day
/// against `rates`' quotas. Call before the first delivery.
pub fn restore_quotas(dir: &std::path::Path, rates: &RateLimits, clock: &Controller) -> Ledger {
    let ledger = Ledger::load(dir);
    let now = clock.clock().unix_ms();
    let spent = Spent {
        messages_hour: ledger.last_hour(now),
        messages_day: ledger.last_day(now),
        recipients_day: ledger.recipients_last_day(now),
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
    ledger
}

/// Saves what was sent (messages and recipients) into the ledger every few seconds
/// while anything is sent, and at shutdown.
pub async fn keep_quota_ledger(
    mut ledger: Ledger,
    dir: PathBuf,
    rates: Arc<RateLimits>,
    clock: Arc<Controller>,
    shutdown: CancellationToken,
) {
    let mut seen = (rates.taken(), rates.recipients_taken());
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(SAVE_EVERY) => false,
            _ = shutdown.cancelled() => true,
        };
        let taken = (rates.taken(), rates.recipients_taken());
        let delta =
            |now: u64, before: u64| u32::try_from(now.saturating_sub(before)).unwrap_or(u32::MAX);
        let (messages, recipients) = (delta(taken.0, seen.0), delta(taken.1, seen.1));
        seen = taken;
        if messages > 0 || recipients > 0 {
            ledger.add_sent(clock.clock().unix_ms(), messages, recipients);
            let (l, d) = (ledger.clone(), dir.clone());
            match tokio::task::spawn_blocking(move || l.save(&d)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("quota ledger not saved: {e}"),
                Err(e) => tracing::warn!("quota ledger not saved: {e}"),
            }
        }
        if stop {
            break;
        }
    }
}
