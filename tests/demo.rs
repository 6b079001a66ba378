//! `mailvalve demo` in-process, small: a campaign through mailvalve to the simulated
//! provider over loopback TCP, checked by numbers — every valid address delivered exactly
//! once, the unknown ones suppressed and answered locally the second time, few refused
//! connections. Bounded by `max_time` and an outer timeout.

use mailvalve::demo::{provider, run_demo, DemoOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_campaign_delivers_once_and_suppresses_unknowns() {
    let opts = DemoOptions {
        messages: 300,
        max_time: Duration::from_secs(60),
        provider_connections: 2,
        provider_rate_per_minute: 1800,
        initial_connections: 1,
        max_connections: 6,
        probe_interval: Duration::from_secs(5),
        senders: 8,
        ..DemoOptions::default()
    };
    let r = tokio::time::timeout(Duration::from_secs(120), run_demo(opts))
        .await
        .expect("the demo is bounded")
        .expect("the demo runs");
    println!("{r:#?}");

    assert!(r.completed(), "finished before max_time: {r:#?}");
    let unknown = (0..300u64).filter(|n| provider::is_unknown(*n)).count();
    assert_eq!(r.unknown, unknown);
    assert_eq!(r.valid, 300 - unknown);

    // Every valid address exactly once at the provider, nothing else delivered.
    assert_eq!(r.delivered_once, r.valid, "{r:#?}");
    assert_eq!((r.missing, r.delivered_twice_or_more), (0, 0));
    assert_eq!(r.provider.delivered, r.valid as u64);
    assert_eq!(r.campaign.sent, r.valid as u64);

    // Unknown recipients: rejected by the provider once each, suppressed, and answered by
    // mailvalve itself in the second campaign.
    assert_eq!(r.campaign.failed, unknown as u64);
    assert_eq!(r.provider.unknown_rcpts, unknown as u64);
    assert_eq!(r.suppressed, unknown);
    assert_eq!(r.second.messages, unknown);
    assert_eq!(r.second.answered_locally, unknown as u64);
    assert_eq!(r.second_reached_provider, 0);

    // The connection limit: never more than K sessions, and only a few refusals (the
    // first one that taught the limit, plus one per probe).
    assert!(r.provider_max_sessions <= 2);
    assert!(
        r.provider_refused <= 3 + r.controller.connection_probes,
        "421s: {}, probes: {}",
        r.provider_refused,
        r.controller.connection_probes
    );
    // The rate limit was learned from the 450s, not given.
    assert!(r.controller.rate_decreases >= 1);
    assert!(
        r.provider.greylisted >= 3,
        "readers 3, 100, 197 are greylisted"
    );
    assert_eq!(r.controller.pauses, 0);
}
