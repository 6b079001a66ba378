//! Issue 10 point 2: the engine's slots follow the controller's connection limit — a
//! raised limit is used without a restart, a lowered one obeyed as rounds finish.

use super::*;

/// Every transaction waits for a release from the test, so the transactions begun are
/// the slots in use. Bounded waits only; "no more than" is checked after a pause in
/// which more would have begun if the slots allowed it.
#[tokio::test]
async fn the_slots_follow_the_published_limit() {
    let (tx, rx) = tokio::sync::watch::channel(2usize);
    let script = Script {
        block_from: Some(0),
        ..Script::default()
    };
    let params = DeliveryParams {
        workers: 3,
        ..DeliveryParams::default()
    };
    let (engine, dir) =
        engine_with_slots(tempfile::tempdir().unwrap(), script, params, None, Some(rx));
    let r = started(engine, dir);
    for i in 0..12 {
        put(&r, &[&format!("r{i}@example.org")]).await;
    }
    let release = r.engine.transport.release.clone();
    let wait = Duration::from_secs(10);
    until("two at the limit of two", wait, || r.calls() == 2).await;
    let_it_run(300).await;
    assert_eq!(r.calls(), 2, "no third slot at a limit of 2");
    // Raised above the configured workers: used at once.
    tx.send_replace(6);
    until("six at the limit of six", wait, || r.calls() == 6).await;
    let_it_run(300).await;
    assert_eq!(r.calls(), 6);
    // Lowered: the rounds out finish, then one at a time.
    tx.send_replace(1);
    release.add_permits(6);
    until("the six finished, one more", wait, || r.calls() == 7).await;
    let_it_run(300).await;
    assert_eq!(r.calls(), 7, "one slot at a limit of 1");
    release.add_permits(100);
    until("all delivered", wait, || r.engine.stats().delivered == 12).await;
    r.stop().await;
}
