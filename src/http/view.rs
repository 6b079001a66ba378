//! The status answer (`/api/v1/status`), shared by the API and the dashboard: per
//! upstream its limits, what was learned, its pause and the provider's last replies;
//! the campaign's progress and ETA; the last reload.
//!
//! It must never include a secret: the configuration appears only as the profile name
//! and the provider's host and port.

use super::history;
use super::state::AppState;
use crate::policy::pause::PauseState;
use crate::relay::metrics::pause_reason;
use serde_json::{json, Value};

pub async fn status(s: &AppState) -> Value {
    let h = &s.handle;
    let now = history::take(h);
    let pace = s.history.pace(&now);
    let limits = h.limits();
    let c = limits.controller;
    let queue = match h.queue_counts().await {
        Some(Ok(q)) => {
            json!({ "messages": q.messages, "pending_recipients": q.pending_recipients })
        }
        Some(Err(e)) => json!({ "error": e }),
        None => Value::Null,
    };
    let pending = queue["pending_recipients"].as_u64();
    let eta = match (pending, pace) {
        (Some(0), _) => Some(0.0),
        (Some(p), Some(pace)) if pace > 0.0 => Some(p as f64 / pace),
        _ => None,
    };
    let pause = match h.account_pause() {
        PauseState::Running => json!({ "paused": false }),
        PauseState::Paused { scope, until } => json!({
            "paused": true,
            "reason": pause_reason(scope),
            "until": until.map(|u| h.clock_to_wall_ms(u)),
        }),
    };
    let d = h.delivery_stats().unwrap_or_default();
    let info = h.info();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "mode": info.mode,
        "received": h.metrics().received.get(),
        "queue": queue,
        "delivery": {
            "delivered": d.delivered,
            "deferred": d.deferred,
            "failed": d.failed,
            "suppressed": d.suppressed,
            "expired": d.expired,
            "bounces": d.bounces,
            "transactions": d.transactions,
        },
        "operator_paused": h.operator_paused(),
        "pace_per_second": pace,
        "eta_seconds": eta,
        "upstreams": [{
            "name": info.upstream,
            "profile": info.profile,
            "connections": {
                "open": limits.connections_in_use,
                "limit": c.concurrency_limit,
                "learned_ceiling": c.concurrency_ceiling,
                "learned_at": c.concurrency_ceiling_at.map(|t| h.clock_to_wall_ms(t)),
                "max": info.max_connections,
                "decreases": c.connection_decreases,
            },
            "rate": {
                "per_second": c.rate,
                "learned_ceiling": c.rate_ceiling,
                "learned_at": c.rate_ceiling_at.map(|t| h.clock_to_wall_ms(t)),
                "decreases": c.rate_decreases,
            },
            "pause": pause,
            "pauses": c.pauses,
            "recent_replies": h.metrics().recent_replies(),
        }],
        "history": s.history.samples(),
        "reload": h.last_reload(),
    })
}
