//! `/metrics`: the relay's figures in the Prometheus / OpenMetrics text format
//! (prometheus-client), one `mailvalve_` prefix, base units (seconds, bytes), counters
//! ending in `_total`, and no address or message text as a label.
//!
//! The registry is built per scrape: gauges and counters are read from the relay's
//! handle at that moment (the controller, the delivery engine, the spool, the
//! suppression list), the histograms and reply counters are the relay's own
//! (`relay::metrics`), shared by clone. So no figure is kept twice.
//!
//! It must never take long locks on the hot path: the spool is read off the async
//! workers, as `queue status` does.

use super::state::AppState;
use crate::policy::pause::PauseState;
use crate::policy::verdict::PauseScope;
use crate::queue::record::RcptState;
use crate::relay::metrics::{pause_reason, OutcomeLabel};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    mode: &'static str,
}

fn counter(v: u64) -> Counter {
    let c = Counter::<u64, AtomicU64>::default();
    c.inc_by(v);
    c
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::<i64>::default();
    g.set(v);
    g
}

fn gauge_f(v: f64) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(v);
    g
}

fn int(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Recipients in the spool by state, and the age of the oldest message (seconds).
struct QueueFigures {
    due: usize,
    waiting: usize,
    messages: usize,
    oldest_age: f64,
}

async fn queue_figures(s: &AppState) -> Option<QueueFigures> {
    let spool = s.handle.spool()?.clone();
    let now = crate::policy::clock::wall_ms();
    let msgs = tokio::task::spawn_blocking(move || spool.list())
        .await
        .ok()?
        .ok()?;
    let mut f = QueueFigures {
        due: 0,
        waiting: 0,
        messages: msgs.len(),
        oldest_age: 0.0,
    };
    for m in &msgs {
        f.oldest_age = f
            .oldest_age
            .max(now.saturating_sub(m.received) as f64 / 1000.0);
        for r in &m.rcpts {
            if let RcptState::Pending { next_attempt, .. } = r.state {
                if next_attempt <= now {
                    f.due += 1;
                } else {
                    f.waiting += 1;
                }
            }
        }
    }
    Some(f)
}

/// The whole exposition, as text.
pub async fn render(s: &AppState) -> Result<String, std::fmt::Error> {
    let h = &s.handle;
    let m = h.metrics();
    let mut r = Registry::with_prefix("mailvalve");

    let info = h.info();
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            mode: info.mode,
        })
        .set(1);
    r.register(
        "build_info",
        "Build and mode of this mailvalve (always 1)",
        build,
    );

    r.register(
        "messages_received",
        "Messages accepted from the mailer (queue: durable in the spool; passthrough: accepted by the provider)",
        m.received.clone(),
    );
    r.register(
        "message_size_bytes",
        "Sizes of the accepted messages",
        m.message_size.clone(),
    );

    let d = h.delivery_stats().unwrap_or_default();
    let outcomes = Family::<OutcomeLabel, Counter>::default();
    for (outcome, v) in [
        ("delivered", d.delivered),
        ("deferred", d.deferred),
        ("failed", d.failed.saturating_sub(d.expired)),
        ("expired", d.expired),
        ("suppressed", d.suppressed),
    ] {
        outcomes.get_or_create(&OutcomeLabel { outcome }).inc_by(v);
    }
    r.register(
        "deliveries",
        "Recipient deliveries by outcome (queue mode; failed excludes expired)",
        outcomes,
    );
    r.register(
        "bounce_reports",
        "Bounce reports (DSN) sent to envelope senders",
        counter(d.bounces),
    );
    r.register(
        "provider_replies",
        "Provider replies by code class and verdict",
        m.replies.clone(),
    );
    r.register(
        "provider_reply_latency_seconds",
        "Time to the provider's 354 (kind=data_start) and to its final reply after the message (kind=final)",
        m.reply_latency.clone(),
    );

    let limits = h.limits();
    let c = limits.controller;
    r.register(
        "upstream_connections_open",
        "Provider connections leased now",
        gauge(int(limits.connections_in_use)),
    );
    r.register(
        "upstream_connection_limit",
        "The connection limit in force now",
        gauge(int(c.concurrency_limit)),
    );
    r.register(
        "upstream_connection_max",
        "The configured maximum of provider connections",
        gauge(int(info.max_connections)),
    );
    if let Some(ceiling) = c.concurrency_ceiling {
        r.register(
            "upstream_connection_ceiling",
            "The connection ceiling learned from the provider's refusals",
            gauge(int(ceiling)),
        );
    }
    if let Some(rate) = c.rate {
        r.register(
            "upstream_rate_messages_per_second",
            "The message rate in force now",
            gauge_f(rate),
        );
    }
    if let Some(ceiling) = c.rate_ceiling {
        r.register(
            "upstream_rate_ceiling_messages_per_second",
            "The rate ceiling learned from the provider's throttling",
            gauge_f(ceiling),
        );
    }

    let paused = Family::<ReasonLabel, Gauge>::default();
    let account = match h.account_pause() {
        PauseState::Running => None,
        PauseState::Paused { scope, .. } => Some(scope),
    };
    for scope in [PauseScope::Auth, PauseScope::Quota, PauseScope::Policy] {
        paused
            .get_or_create(&ReasonLabel {
                reason: pause_reason(scope),
            })
            .set(i64::from(account == Some(scope)));
    }
    paused
        .get_or_create(&ReasonLabel { reason: "operator" })
        .set(i64::from(h.operator_paused()));
    r.register(
        "paused",
        "1 while sending is paused, by reason (auth, quota, policy, operator)",
        paused,
    );
    let pauses = Family::<ReasonLabel, Counter>::default();
    pauses
        .get_or_create(&ReasonLabel { reason: "provider" })
        .inc_by(c.pauses);
    pauses
        .get_or_create(&ReasonLabel { reason: "operator" })
        .inc_by(m.operator_pauses.get());
    r.register("pauses", "Pauses started, by who started them", pauses);

    if let Some(q) = queue_figures(s).await {
        let depth = Family::<StateLabel, Gauge>::default();
        depth
            .get_or_create(&StateLabel { state: "due" })
            .set(int(q.due));
        depth
            .get_or_create(&StateLabel { state: "waiting" })
            .set(int(q.waiting));
        r.register(
            "queue_recipients",
            "Recipients waiting in the spool: due now, or waiting for their next attempt",
            depth,
        );
        r.register(
            "queue_messages",
            "Messages in the spool",
            gauge(int(q.messages)),
        );
        r.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest message in the spool",
            gauge_f(q.oldest_age),
        );
    }

    let suppressed = h
        .policy()
        .suppressions
        .list()
        .iter()
        .filter(|e| e.suppressed)
        .count();
    r.register(
        "suppressed_addresses",
        "Addresses on the suppression list",
        gauge(int(suppressed)),
    );

    let posts = Family::<OutcomeLabel, Counter>::default();
    posts
        .get_or_create(&OutcomeLabel { outcome: "ok" })
        .inc_by(d.webhook_ok);
    posts
        .get_or_create(&OutcomeLabel { outcome: "failed" })
        .inc_by(d.webhook_failed);
    r.register("webhook_posts", "Bounce webhook posts by outcome", posts);
    r.register(
        "reloads",
        "Configuration reloads by outcome",
        m.reloads.clone(),
    );

    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}
