//! Issue 10, points 3 and 8: a provider that limits how often connections are opened
//! (Postfix's `smtpd_client_connection_rate_limit`, answered with the same `421 4.7.0
//! ... too many connections` as its concurrency limit), and one that drops every
//! connection at once in the middle of transactions and comes straight back. Counted,
//! not timed: connection attempts and refusals for a campaign, and the limit after it.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// A provider that takes 3 new connections per second and refuses the rest with
/// Postfix's text; connections carry 2 messages each, so 24 messages need 12 opens.
/// mailvalve must not answer a refused greeting with the next attempt at once (the
/// reported case: thousands of refused connection attempts for a thousand messages), and
/// must not take the refusals for a lower connection count.
#[tokio::test]
async fn a_connection_rate_limit_is_paced_not_hammered() {
    let p = Provider::builder()
        .connection_rate(3, Duration::from_secs(1))
        .start()
        .await;
    let mut up = p.upstream_config();
    up.max_messages_per_connection = 2;
    let q = queue(up, |c, prof| ControllerParams {
        initial_connections: 2,
        max_connections: 4,
        ..quick_retries(c, prof)
    })
    .await;
    const MESSAGES: usize = 24;
    for n in 0..MESSAGES {
        q.submit(&[&format!("r{n}@example.org")], n).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !q.spool.is_empty() {
        assert!(
            Instant::now() < deadline,
            "not delivered: {} of {MESSAGES} after {} attempts, {} refused",
            p.messages().len(),
            p.connections_total(),
            p.refused()
        );
        sleep(Duration::from_millis(50)).await;
    }
    let s = q.policy.controller.stats();
    println!(
        "connection rate 3/s, {MESSAGES} messages at 2 per connection: {} connection attempts, {} refused; limit {}, ceiling {:?}, open gap {:?}, rate refusals {}",
        p.connections_total(),
        p.refused(),
        s.concurrency_limit,
        s.concurrency_ceiling,
        s.open_gap,
        s.open_rate_refusals
    );
    assert_eq!(p.messages().len(), MESSAGES, "each message once");
    let needed = MESSAGES / 2;
    assert!(
        p.refused() <= needed,
        "{} refused connection attempts for {needed} needed opens",
        p.refused()
    );
    assert!(
        s.open_rate_refusals >= 1,
        "the rate was not recognised: {s:?}"
    );
    assert!(s.concurrency_limit >= 2, "the count was lowered: {s:?}");
    q.stop().await;
}

/// The reported case of point 8: the provider (a restart, a killed smtp-sink) closes
/// every connection at once in the middle of transactions, then is back at once. The
/// messages are retried and delivered; the connection limit is where it was, with no
/// ceiling held for the probe interval.
#[tokio::test]
async fn connections_lost_at_once_are_retried_and_lower_no_limit() {
    let down = Arc::new(AtomicBool::new(true));
    let p = Provider::builder()
        .drop_after_data_while(down.clone())
        .start()
        .await;
    let q = queue(p.upstream_config(), |c, prof| ControllerParams {
        initial_connections: 4,
        max_connections: 4,
        ..quick_retries(c, prof)
    })
    .await;
    const MESSAGES: usize = 8;
    for n in 0..MESSAGES {
        q.submit(&[&format!("r{n}@example.org")], n).await;
    }
    eventually("four messages dropped mid-transaction", || {
        p.messages().len() >= 4
    })
    .await;
    down.store(false, Ordering::SeqCst);
    eventually("all delivered after the provider is back", || {
        q.spool.is_empty()
    })
    .await;
    let s = q.policy.controller.stats();
    println!(
        "dropped mid-transaction, then back: {} messages received, limit {}, ceiling {:?}, lost {}",
        p.messages().len(),
        s.concurrency_limit,
        s.concurrency_ceiling,
        s.connections_lost
    );
    assert_eq!(s.concurrency_limit, 4, "{s:?}");
    assert_eq!(s.concurrency_ceiling, None, "no ceiling held: {s:?}");
    assert!(s.connections_lost >= 1, "{s:?}");
    let log = q.log();
    assert!(
        log.iter().filter(|(_, a)| a == "delivered").count() == MESSAGES,
        "{log:?}"
    );
    q.stop().await;
}

/// Point 8, the other half: no final reply in time (the seeds' "354 … too many threads"
/// case: the provider is overloaded by our sessions) steps the limit down by one — not
/// to the connections that happened to be working, and not for a lost connection.
#[tokio::test]
async fn a_reply_timeout_after_data_steps_down_by_one() {
    let p = Provider::builder()
        .final_delay(Duration::from_secs(24 * 3600))
        .start()
        .await;
    let q = queue(short_timeouts(p.upstream_config()), |c, prof| {
        ControllerParams {
            initial_connections: 4,
            max_connections: 4,
            ..quick_retries(c, prof)
        }
    })
    .await;
    q.submit(&["ok@example.org"], 1).await;
    eventually("the final reply timed out once", || {
        q.policy.controller.stats().reply_timeouts >= 1
    })
    .await;
    let s = q.policy.controller.stats();
    println!(
        "no final reply in time: limit {} (from 4), timeouts {}",
        s.concurrency_limit, s.reply_timeouts
    );
    // Retries may time out again before we look; each steps down once at most, and the
    // first leaves three.
    assert!(
        s.concurrency_limit >= 4 - s.reply_timeouts.min(3) as usize,
        "{s:?}"
    );
    assert!(s.concurrency_limit < 4, "{s:?}");
    q.stop().await;
}

/// Point 2: an unknown provider is learned, not capped. From one connection, a provider
/// that takes everything gets more connections as long as they are all in use (doubling
/// before any throttle), up to `max_connections`, and the delivery engine's slots follow
/// (they are no longer sized once at start).
#[tokio::test]
async fn connections_grow_from_one_while_the_provider_takes_them() {
    let p = Provider::builder()
        .final_delay(Duration::from_millis(100))
        .start()
        .await;
    let q = queue(p.upstream_config(), |c, prof| ControllerParams {
        initial_connections: 1,
        max_connections: 8,
        ..quick_retries(c, prof)
    })
    .await;
    const MESSAGES: usize = 80;
    for n in 0..MESSAGES {
        q.submit(&[&format!("r{n}@example.org")], n).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !q.spool.is_empty() {
        assert!(Instant::now() < deadline, "not delivered in time");
        sleep(Duration::from_millis(50)).await;
    }
    let s = q.policy.controller.stats();
    println!(
        "from 1 connection, {MESSAGES} messages: limit {}, provider saw at most {} at once, {} connections",
        s.concurrency_limit,
        p.max_concurrent(),
        p.connections_total()
    );
    assert!(s.concurrency_limit > 3, "{s:?}");
    assert!(p.max_concurrent() > 3, "{}", p.max_concurrent());
    assert!(p.max_concurrent() <= 8);
    assert_eq!(p.refused(), 0);
    q.stop().await;
}
