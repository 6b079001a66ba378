//! Outcomes that cannot be written, and what is on disk when.

use super::*;

/// Issue 8.3: the spool cannot be written (redb latched on a full disk) while a
/// delivery is in flight. The outcome is kept, nothing else is dispatched, nothing
/// is sent again; once writes work again the kept outcome is written and the rest
/// goes out, each message exactly once.
#[tokio::test]
async fn outcomes_that_cannot_be_written_are_kept_and_nothing_is_resent() {
    let params = DeliveryParams {
        workers: 1,
        ..DeliveryParams::default()
    };
    // The second transaction waits for the test, so the disk fills while it is out.
    let script = Script {
        block_from: Some(1),
        ..Script::default()
    };
    let (engine, dir) = engine_on(tempfile::tempdir().unwrap(), script, params, None);
    // Halted until a first commit succeeds, but nothing has failed: status must not say
    // the spool cannot be written (it did, right after every start).
    assert!(engine.is_halted());
    assert!(!engine.spool_failing());
    for i in 0..3 {
        put_in(engine.spool(), &[&format!("r{i}@example.org")]).await;
    }
    let r = started(engine, dir);
    // One worker: the first transaction was recorded before the second started.
    until("second transaction out", Duration::from_secs(5), || {
        r.calls() >= 2
    })
    .await;
    r.engine.spool().set_disk_full(true);
    r.engine.transport.release.add_permits(1);
    let_it_run(1500).await;
    let while_full = r.calls();
    println!("disk full for 1.5 s: {while_full} transaction(s) in all");
    // The one in flight when the disk filled ended (its outcome is kept); nothing
    // new went out, nothing again.
    assert_eq!(while_full, 2, "transactions while full");
    assert!(r.engine.is_halted());
    assert!(r.engine.spool_failing());
    let log = r.engine.transport.log.lock().unwrap().clone();
    let distinct: HashSet<&Vec<String>> = log.iter().collect();
    assert_eq!(
        distinct.len(),
        log.len(),
        "a message was sent twice: {log:?}"
    );
    r.engine.spool().set_disk_full(false);
    r.engine.transport.release.add_permits(10);
    until("all delivered", Duration::from_secs(20), || {
        r.engine.spool().is_empty()
    })
    .await;
    let log = r.engine.transport.log.lock().unwrap().clone();
    assert_eq!(log.len(), 3, "each message exactly once: {log:?}");
    assert_eq!(log.iter().collect::<HashSet<_>>().len(), 3, "{log:?}");
    assert_eq!(r.engine.stats().delivered, 3);
    assert!(!r.engine.spool_failing());
    r.stop().await;
}

/// Issue 8.3, after a restart: commits still fail, so nothing is sent until one
/// succeeds again.
#[tokio::test]
async fn a_restart_on_a_full_disk_sends_nothing_until_a_commit_succeeds() {
    let (engine, dir) = engine_on(
        tempfile::tempdir().unwrap(),
        Script::default(),
        DeliveryParams::default(),
        None,
    );
    put_in(engine.spool(), &["a@example.org"]).await;
    put_in(engine.spool(), &["b@example.org"]).await;
    engine.spool().set_disk_full(true);
    let r = started(engine, dir);
    let_it_run(1500).await;
    assert_eq!(r.calls(), 0, "sent while no commit could succeed");
    r.engine.spool().set_disk_full(false);
    until("all delivered", Duration::from_secs(20), || {
        r.engine.spool().is_empty()
    })
    .await;
    assert_eq!(r.calls(), 2);
    r.stop().await;
}

/// Issue 8.3: a failed recipient's bounce report cannot be stored and its outcome
/// cannot be written. The webhook is called once, the bounce report is queued once
/// when the disk has room again, the message is not sent again.
#[tokio::test]
async fn a_bounce_report_and_webhook_go_out_once_while_commits_fail() {
    let (hook, seen) = webhook_server().await;
    // The transaction waits for the test, so the disk can fill while it is out.
    let script = Script {
        block_from: Some(0),
        ..Script::default()
    };
    let (engine, dir) = engine_on(
        tempfile::tempdir().unwrap(),
        script,
        DeliveryParams::default(),
        Some(hook),
    );
    put_in(engine.spool(), &["gone@example.org"]).await;
    let r = started(engine, dir);
    until("the attempt", Duration::from_secs(5), || r.calls() >= 1).await;
    r.engine.spool().set_disk_full(true);
    r.engine.transport.release.add_permits(1);
    until("webhook called", Duration::from_secs(10), || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let_it_run(3000).await;
    assert_eq!(
        r.calls(),
        1,
        "sent again while the outcome could not be written"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "webhook called again");
    assert_eq!(r.engine.stats().bounces, 0, "no room for the bounce yet");
    r.engine.spool().set_disk_full(false);
    r.engine.transport.release.add_permits(10);
    // The bounce report itself is delivered too (to news@, scripted 250).
    until(
        "bounce queued and everything done",
        Duration::from_secs(20),
        || r.engine.spool().is_empty() && r.engine.stats().bounces == 1,
    )
    .await;
    let log = r.engine.transport.log.lock().unwrap().clone();
    assert_eq!(
        log,
        vec![
            vec!["gone@example.org".to_string()],
            vec!["news@example.org".into()]
        ]
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(r.engine.stats().bounces, 1);
    r.stop().await;
}

/// The hint of issue 8.3: a message that cannot be read is backed off further and
/// further; the count of failures in a row must survive the wait (it used to be
/// dropped when the wait ended, so the backoff never grew past 2 s).
#[tokio::test]
async fn the_storage_error_backoff_keeps_growing() {
    let (engine, _dir) = engine_on(
        tempfile::tempdir().unwrap(),
        Script::default(),
        DeliveryParams::default(),
        None,
    );
    let id = put_in(engine.spool(), &["a@example.org"]).await;
    engine.lock_gate().halted = false;
    let mut now = crate::policy::clock::wall_ms();
    let mut waits = Vec::new();
    for _ in 0..4 {
        engine.after_round(id, Round::StorageError, now);
        let until = engine.lock_delayed()[&id].0;
        waits.push(until - now);
        assert_eq!(engine.next_job(until - 1), None, "taken during its wait");
        now = until;
        // Due again: taken, tried, fails again.
        assert_eq!(engine.next_job(now).map(|j| j.0), Some(id));
        engine.lock_in_flight().remove(&id);
    }
    assert_eq!(waits, vec![2000, 4000, 8000, 16000]);
    engine.after_round(id, Round::Done, now);
    engine.after_round(id, Round::StorageError, now);
    assert_eq!(
        engine.lock_delayed()[&id].0 - now,
        2000,
        "reset by a good round"
    );
}

/// Issue 8.6: a message split into two transactions; the first one's outcome is on
/// disk before the second transaction ends, so a crash then cannot resend it.
#[tokio::test]
async fn each_transaction_of_a_split_message_is_recorded_when_it_ends() {
    let params = DeliveryParams {
        rcpts_per_message: 1,
        ..DeliveryParams::default()
    };
    let script = Script {
        block_from: Some(1),
        ..Script::default()
    };
    let (engine, dir) = engine_on(tempfile::tempdir().unwrap(), script, params, None);
    let id = put_in(engine.spool(), &["a@example.org", "b@example.org"]).await;
    let r = started(engine, dir);
    until("second transaction started", Duration::from_secs(5), || {
        r.calls() >= 2
    })
    .await;
    // The second transaction is still waiting for the provider.
    let m = r.engine.spool().get(id).unwrap().unwrap();
    assert!(
        matches!(m.rcpts[0].state, RcptState::Delivered { .. }),
        "first part not recorded while the second is in flight: {:?}",
        m.rcpts[0].state
    );
    assert_eq!(m.rcpts[1].state, RcptState::new_pending());
    r.engine.transport.release.add_permits(1);
    until("done", Duration::from_secs(5), || {
        r.engine.spool().is_empty()
    })
    .await;
    assert_eq!(r.calls(), 2);
    r.stop().await;
}

/// Issue 8.6: a 5xx at the end of DATA of a transaction with several recipients
/// fails all of them, as a message failure: no "hard" bounce for any address.
#[tokio::test]
async fn a_5xx_to_a_whole_transaction_fails_all_recipients_as_soft() {
    let (hook, seen) = webhook_server().await;
    let script = Script {
        all_reply: Some((
            Phase::DataEnd,
            "550 5.1.1 <a@example.org>: Recipient address rejected: User unknown",
        )),
        ..Script::default()
    };
    let params = DeliveryParams {
        bounces: false,
        ..DeliveryParams::default()
    };
    let (engine, dir) = engine_on(tempfile::tempdir().unwrap(), script, params, Some(hook));
    put_in(engine.spool(), &["a@example.org", "b@example.org"]).await;
    let r = started(engine, dir);
    until("both webhook calls", Duration::from_secs(10), || {
        seen.lock().unwrap().len() >= 2
    })
    .await;
    until("done", Duration::from_secs(5), || {
        r.engine.spool().is_empty()
    })
    .await;
    assert_eq!(r.engine.stats().failed, 2);
    let seen = seen.lock().unwrap().clone();
    for p in &seen {
        assert_eq!(p["type"], "soft", "{p}");
        assert_eq!(p["meta"]["kind"], "message", "{p}");
    }
    r.stop().await;
}
