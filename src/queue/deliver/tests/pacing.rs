//! Pauses, backoff, a busy upstream and expiry.

use super::*;

#[tokio::test]
async fn a_pause_holds_without_an_attempt_and_resumes_when_it_ends() {
    let r = rig(1, DeliveryParams::default()).await;
    // The first transaction hits the quota; like the controller, the fake pacing
    // then pauses for 400 ms.
    let id = put(&r, &["a@example.org"]).await;
    until("first attempt", Duration::from_secs(5), || {
        r.engine.transport.calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    let pause_end = r.engine.pacing.until.lock().unwrap().unwrap();
    assert_eq!(
        r.engine.transport.calls.load(Ordering::SeqCst),
        1,
        "no retry while paused"
    );
    let m = r.engine.spool().get(id).unwrap().unwrap();
    assert_eq!(
        m.rcpts[0].state,
        RcptState::new_pending(),
        "no attempt used, not rescheduled"
    );
    until("delivered after the pause", Duration::from_secs(5), || {
        r.engine.spool().is_empty()
    })
    .await;
    let done = Instant::now();
    assert!(done >= pause_end, "delivered during the pause");
    println!(
        "pause of 400 ms: delivered {:?} after it ended",
        done - pause_end
    );
    // Liveness, not speed: the schedule was not pushed out (the engine re-checks a
    // pause at least every second; a backoff would have meant 30 s and more).
    assert!(
        done - pause_end < Duration::from_secs(10),
        "resumed far too late"
    );
    assert_eq!(r.engine.stats().failed, 0);
    assert_eq!(r.engine.stats().bounces, 0);
    r.stop.cancel();
    r.task.await.unwrap();
}

#[tokio::test]
async fn deferred_recipients_back_off_and_expire_into_a_bounce() {
    let params = DeliveryParams {
        max_age: Duration::from_millis(600),
        expiry_interval: Duration::from_millis(100),
        rcpts_per_message: 1,
        ..DeliveryParams::default()
    };
    let r = rig(0, params).await;
    put(&r, &["ok@example.org", "defer@example.org"]).await;
    // ok@ delivered in its own transaction; defer@ retried on backoff, then expired
    // and bounced; the bounce (to news@) delivered.
    until("everything final", Duration::from_secs(5), || {
        r.engine.spool().is_empty()
    })
    .await;
    let s = r.engine.stats();
    let calls = r.engine.transport.log.lock().unwrap().clone();
    println!("transactions {calls:?}, stats {s:?}");
    assert!(
        calls.iter().all(|c| c.len() == 1),
        "split into single-recipient transactions"
    );
    let defer_tries = calls.iter().filter(|c| c[0] == "defer@example.org").count();
    // Backoff 50, 100, 200, 400 ms: a handful of tries in 600 ms, not dozens.
    assert!((2..=6).contains(&defer_tries), "{defer_tries} tries");
    assert_eq!(s.failed, 1);
    assert_eq!(s.bounces, 1);
    assert!(
        calls.iter().any(|c| c[0] == "news@example.org"),
        "bounce delivered"
    );
    r.stop.cancel();
    r.task.await.unwrap();
}

#[tokio::test]
async fn a_busy_upstream_is_not_retried_in_a_loop() {
    let r = rig_with(0, true, DeliveryParams::default()).await;
    put(&r, &["a@example.org"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let calls = r.engine.transport.calls.load(Ordering::SeqCst);
    println!("admission busy for 1.5 s: {calls} attempts");
    // A loop would make thousands; the dispatcher rests 1 s after each "busy".
    assert!((1..=4).contains(&calls), "{calls} attempts");
    let m = r.engine.spool().list().unwrap();
    assert_eq!(
        m[0].rcpts[0].state,
        RcptState::new_pending(),
        "busy changes nothing"
    );
    r.stop.cancel();
    r.task.await.unwrap();
}

/// Issue 8.6: time spent paused survives a restart. Held for longer than `max_age`,
/// restarted, the message is delivered, not expired.
#[tokio::test]
async fn time_paused_before_a_restart_does_not_count_towards_max_age() {
    let params = DeliveryParams {
        max_age: Duration::from_millis(2500),
        expiry_interval: Duration::from_millis(50),
        ..DeliveryParams::default()
    };
    let (engine, dir) = engine_on(
        tempfile::tempdir().unwrap(),
        Script::default(),
        params.clone(),
        None,
    );
    engine.hold_flag().store(true, Ordering::SeqCst);
    put_in(engine.spool(), &["a@example.org"]).await;
    let r = started(engine, dir);
    // "A weekend of refused credentials".
    let_it_run(3500).await;
    assert_eq!(r.calls(), 0);
    let dir = r.stop().await;
    // Restart, no longer paused.
    let (engine, dir) = engine_on(dir, Script::default(), params, None);
    let r = started(engine, dir);
    until("delivered or failed", Duration::from_secs(10), || {
        r.engine.spool().is_empty()
    })
    .await;
    let s = r.engine.stats();
    assert_eq!((s.delivered, s.failed, s.bounces), (1, 0, 0), "{s:?}");
    r.stop().await;
}

#[tokio::test]
async fn nothing_expires_while_the_account_is_paused() {
    let params = DeliveryParams {
        max_age: Duration::from_millis(200),
        expiry_interval: Duration::from_millis(20),
        ..DeliveryParams::default()
    };
    let r = rig(1, params).await;
    put(&r, &["a@example.org"]).await;
    // First attempt: quota reply, paused 400 ms — longer than max_age.
    until("delivered after the pause", Duration::from_secs(5), || {
        r.engine.spool().is_empty()
    })
    .await;
    let s = r.engine.stats();
    assert_eq!((s.failed, s.bounces, s.delivered), (0, 0, 1), "{s:?}");
    r.stop.cancel();
    r.task.await.unwrap();
}

/// A hold is written to the delivery log once when it starts and once when it ends —
/// not once per check (issue 15: 8 "held" lines in three minutes of outage).
#[tokio::test]
async fn a_hold_is_logged_once_when_it_starts_and_once_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("delivery.log");
    let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap();
    let pause = Arc::new(Mutex::new(None));
    let engine = Delivery::new(
        Arc::new(spool),
        Arc::new(Scripted {
            calls: AtomicU32::new(0),
            pause_first: 3,
            always_busy: false,
            all_reply: None,
            block_from: None,
            release: Arc::new(Semaphore::new(0)),
            log: Mutex::new(Vec::new()),
            pause: pause.clone(),
            classifier: Classifier::builtin().unwrap(),
        }),
        Arc::new(FakePacing {
            until: pause,
            slots: None,
        }),
        DeliveryParams::default(),
    )
    .with_log(DeliveryLog::open(&log_path).unwrap());
    let r = started(Arc::new(engine), dir);
    put(&r, &["a@example.org"]).await;
    until(
        "delivered after three holds",
        Duration::from_secs(20),
        || r.engine.spool().is_empty(),
    )
    .await;
    assert!(r.calls() >= 4, "{}", r.calls());
    let dir = r.stop().await;
    let text = std::fs::read_to_string(dir.path().join("delivery.log")).unwrap();
    let actions: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].to_string())
        .collect();
    assert_eq!(
        actions,
        ["\"held\"", "\"resumed\"", "\"delivered\""],
        "{text}"
    );
}
