//! What holds the queue without spending attempts or bouncing: quotas, blocked sender
//! IPs, and restarts that must not forget either.

use super::*;

#[tokio::test]
async fn a_spent_quota_holds_the_queue_without_using_an_attempt_or_bouncing() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder()
        .mail_reply("550 5.4.5 Daily user sending quota exceeded")
        .start()
        .await;
    let mv = start(config(dir.path(), p.upstream_config())).await;
    let replies = mv.campaign(&["ok@example.org"], 1).await;
    assert!(
        replies[5].starts_with("250 2.0.0 Ok: queued"),
        "{replies:?}"
    );
    eventually("provider asked once", || {
        p.lines().iter().any(|l| l.starts_with("MAIL FROM"))
    })
    .await;
    // Give the engine time to (wrongly) retry or bounce.
    sleep(Duration::from_millis(500)).await;
    let mails = p
        .lines()
        .iter()
        .filter(|l| l.starts_with("MAIL FROM"))
        .count();
    assert_eq!(mails, 1, "paused: no second attempt");
    let left = mv.spool.list().unwrap();
    assert_eq!(left.len(), 1, "nothing lost, no bounce queued");
    assert_eq!(
        left[0].rcpts[0].state,
        RcptState::Pending {
            attempts: 0,
            next_attempt: 0,
            last_reply: None
        },
        "a pause uses up no attempt and does not push the schedule out"
    );
    mv.stop().await;
}

#[tokio::test]
async fn queued_mail_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // First run: the provider is down (nothing listens on its port).
    let port = closed_port();
    let p = Provider::builder().start().await;
    let mut down = p.upstream_config();
    down.port = port;
    let mv = start(config(dir.path(), down)).await;
    for n in 0..5 {
        let r = mv.campaign(&["ok@example.org"], n).await;
        assert!(r[5].starts_with("250 2.0.0 Ok: queued"), "{r:?}");
    }
    assert_eq!(mv.spool.len(), 5);
    mv.stop().await;
    // Second run, provider up: everything recovered and delivered, once.
    let mv = start(config(dir.path(), p.upstream_config())).await;
    // Connection failures backed the messages off (up to 30 s): make them due now, as
    // `mailvalve queue retry --all` does.
    mv.spool
        .retry_now(mailvalve::queue::Which::All)
        .await
        .unwrap();
    eventually("all five delivered", || p.messages().len() >= 5).await;
    eventually("spool empty", || mv.spool.is_empty()).await;
    assert_eq!(p.messages().len(), 5);
    mv.stop().await;
}

#[tokio::test]
async fn a_daily_quota_is_not_reset_by_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder().start().await;
    let mut cfg = config(dir.path(), p.upstream_config());
    cfg.upstream.limits.messages_per_day = Some(3);
    cfg.upstream.admission_wait = Duration::from_millis(300);
    let mv = start(cfg.clone()).await;
    for n in 0..3 {
        mv.campaign(&["ok@example.org"], n).await;
    }
    eventually("the day's three delivered", || p.messages().len() == 3).await;
    mv.stop().await; // saves the quota ledger
    let mv = start(cfg).await;
    let r = mv.campaign(&["ok@example.org"], 9).await;
    assert!(r[5].starts_with("250 2.0.0 Ok: queued"), "{r:?}");
    // Several admission waits pass: the quota is spent, the fourth stays queued.
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        p.messages().len(),
        3,
        "a restart must not hand out the spent quota"
    );
    assert_eq!(mv.spool.len(), 1);
    mv.stop().await;
}

#[tokio::test]
async fn a_blocked_sender_ip_holds_the_queue_and_never_bounces() {
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder()
        .greeting("554 5.7.1 Service unavailable; client host blocked")
        .start()
        .await;
    let mv = start(config(dir.path(), p.upstream_config())).await;
    mv.campaign(&["ok@example.org"], 1).await;
    eventually("provider contacted", || p.connections_total() >= 1).await;
    sleep(Duration::from_millis(500)).await;
    let m = mv.spool.list().unwrap();
    assert_eq!(m.len(), 1, "nothing bounced or lost: {m:?}");
    match &m[0].rcpts[0].state {
        RcptState::Pending { attempts, .. } => assert_eq!(*attempts, 0, "{m:?}"),
        s => panic!("must stay pending: {s:?}"),
    }
    mv.stop().await;
}
