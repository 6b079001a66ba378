//! `mailvalve demo` in-process, small: a campaign through mailvalve to the simulated
//! provider over loopback TCP, checked by numbers — every valid address delivered exactly
//! once, the unknown ones suppressed and answered locally the second time, few refused
//! connections. Both shows: queue mode (the default: the mailer hands everything over,
//! mailvalve paces it out against a fixed-window provider and reports what it learned)
//! and passthrough. Bounded by `max_time` and an outer timeout.

use mailvalve::config::Mode;
use mailvalve::demo::{provider, run_demo, DemoOptions, DemoReport};
use std::time::Duration;

async fn run(opts: DemoOptions) -> DemoReport {
    let r = tokio::time::timeout(Duration::from_secs(150), run_demo(opts))
        .await
        .expect("the demo is bounded")
        .expect("the demo runs");
    println!("{r:#?}");
    println!("{}", mailvalve::cli::demo::summary(&r));
    r
}

/// What both shows promise: every valid address once, the unknown ones suppressed and
/// answered locally the second time, the provider's connection limit respected.
fn delivered_once_and_suppressed(r: &DemoReport, messages: usize) {
    assert!(r.completed(), "finished before max_time: {r:#?}");
    let unknown = (0..messages as u64)
        .filter(|n| provider::is_unknown(*n))
        .count();
    assert_eq!(r.unknown, unknown);
    assert_eq!(r.valid, messages - unknown);

    // Every valid address exactly once at the provider, nothing else delivered.
    assert_eq!(r.delivered_once, r.valid, "{r:#?}");
    assert_eq!((r.missing, r.delivered_twice_or_more), (0, 0));
    assert_eq!(r.provider.delivered, r.valid as u64);

    // Unknown recipients: rejected by the provider once each, suppressed, and answered by
    // mailvalve itself in the second campaign.
    assert_eq!(r.provider.unknown_rcpts, unknown as u64);
    assert_eq!(r.suppressed, unknown);
    assert_eq!(r.second.messages, unknown);
    assert_eq!(r.second.answered_locally, unknown as u64);
    assert_eq!(r.second_reached_provider, 0);

    // The connection limit: never more than K sessions, and only a few refusals (the
    // first one that taught the limit, plus one per probe).
    assert!(r.provider_max_sessions <= r.options.provider_connections);
    assert!(
        r.provider_refused <= 3 + r.controller.connection_probes,
        "421s: {}, probes: {}",
        r.provider_refused,
        r.controller.connection_probes
    );
    assert!(
        r.provider.greylisted >= 3,
        "readers 3, 100, 197 are greylisted"
    );
    assert_eq!(r.controller.pauses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passthrough_campaign_delivers_once_and_suppresses_unknowns() {
    let r = run(DemoOptions {
        messages: 300,
        max_time: Duration::from_secs(60),
        provider_connections: 2,
        provider_rate_per_minute: 1800,
        initial_connections: 1,
        max_connections: 6,
        probe_interval: Duration::from_secs(5),
        senders: 8,
        ..DemoOptions::passthrough()
    })
    .await;
    assert_eq!(r.options.mode, Mode::Passthrough);
    delivered_once_and_suppressed(&r, 300);
    assert_eq!(r.campaign.sent, r.valid as u64);
    assert_eq!(r.campaign.failed, r.unknown as u64);
    // The rate limit was learned from the 450s, not given.
    assert!(r.controller.rate_decreases >= 1);
}

/// Queue mode, the default: the mailer hands every message over (250 once queued, no
/// 4xx from the provider reaches it), mailvalve empties the queue against a provider
/// that counts in fixed windows, learns a rate from its refusals, and reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_campaign_is_handed_over_then_paced_out_and_reports_what_was_learned() {
    let defaults = DemoOptions::default();
    assert_eq!(defaults.mode, Mode::Queue, "queue mode is the default show");
    assert!(defaults.provider_window.is_some(), "against a window limit");
    let r = run(DemoOptions {
        messages: 300,
        max_time: Duration::from_secs(90),
        provider_connections: 2,
        // 60 per 2 s window.
        provider_rate_per_minute: 1800,
        provider_window: Some(Duration::from_secs(2)),
        initial_connections: 1,
        max_connections: 6,
        probe_interval: Duration::from_secs(5),
        senders: 8,
        ..defaults
    })
    .await;
    delivered_once_and_suppressed(&r, 300);
    // The mailer's part: every message queued at once, the provider's refusals never
    // reached it.
    assert_eq!(
        r.campaign.sent, 300,
        "every message queued: {:#?}",
        r.campaign
    );
    assert_eq!(
        (r.campaign.deferred_rate, r.campaign.failed),
        (0, 0),
        "{:#?}",
        r.campaign
    );
    let drained = r.drained.expect("the queue emptied");
    assert!(drained >= r.campaign.elapsed);
    // The window limit was hit and learned as a rate.
    assert!(r.provider.rate_refusals >= 1, "{:#?}", r.provider);
    assert!(r.controller.rate_decreases >= 1);
    let rate = r.learned.rate.as_ref().expect("a learned rate");
    assert!(rate.rate.is_some() || rate.ceiling.is_some(), "{rate:?}");
    let text = mailvalve::cli::demo::summary(&r);
    assert!(text.contains("handed over to mailvalve's queue"), "{text}");
    assert!(text.contains("learned               rate "), "{text}");
}
