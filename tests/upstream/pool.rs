//! The admission stack over the pool: connection reuse, leases, per-connection limits,
//! idle expiry, admission wait, rate limit before the permit, concurrency limits.

use super::*;

#[tokio::test]
async fn pool_reuses_connections_with_rset_between() {
    let p = Provider::builder().start().await;
    let adm = Admission::new(settings(p.upstream_config()));
    for i in 1..=3 {
        let (r, n) = one_message(&adm).await;
        assert_eq!((r.code, n), (250, i));
    }
    // A transaction abandoned before DATA is reset before the connection is reused; a
    // completed one needs no RSET (the final reply ends it, RFC 5321 4.1.1.4).
    let mut lease = within(adm.lease()).await.unwrap();
    within(lease.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
        .await
        .unwrap();
    within(lease.release()).await;
    assert_eq!(p.connections_total(), 1);
    assert_eq!(adm.pool().idle_count(), 1);
    let verbs: Vec<String> = p
        .lines()
        .iter()
        .map(|l| l.split([' ', ':']).next().unwrap_or("").to_string())
        .filter(|v| v != "EHLO")
        .collect();
    assert_eq!(
        verbs,
        [
            "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "MAIL", "RCPT",
            "RSET"
        ]
    );
}

#[tokio::test]
async fn dropped_lease_closes_its_connection() {
    let p = Provider::builder().start().await;
    let adm = Admission::new(settings(p.upstream_config()));
    let lease = within(adm.lease()).await.unwrap();
    drop(lease);
    assert_eq!(adm.limit().in_use(), 0);
    one_message(&adm).await;
    assert_eq!(p.connections_total(), 2);
}

#[tokio::test]
async fn max_messages_per_connection_opens_a_new_one() {
    let p = Provider::builder().start().await;
    let mut cfg = p.upstream_config();
    cfg.max_messages_per_connection = 2;
    let adm = Admission::new(settings(cfg));
    for _ in 0..5 {
        one_message(&adm).await;
    }
    assert_eq!(p.connections_total(), 3);
    assert_eq!(p.lines().iter().filter(|l| *l == "QUIT").count(), 2);
}

#[tokio::test]
async fn idle_connections_expire() {
    let p = Provider::builder().start().await;
    let mut cfg = p.upstream_config();
    cfg.idle_timeout = Duration::from_millis(100);
    let adm = Admission::new(settings(cfg));
    one_message(&adm).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Closed by the reaper or, at the latest, when found on the next lease.
    one_message(&adm).await;
    assert_eq!(p.connections_total(), 2);
    assert!(p.lines().contains(&"QUIT".to_string()));
}

#[tokio::test]
async fn admission_wait_expiry_is_451_provider_busy() {
    let p = Provider::builder().start().await;
    let mut cfg = p.upstream_config();
    cfg.max_connections = 1;
    cfg.admission_wait = Duration::from_millis(200);
    let adm = Admission::new(settings(cfg));
    let held = within(adm.lease()).await.unwrap();
    let err = within(adm.lease()).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Busy(_)));
    assert_eq!(
        err.to_reply().to_string(),
        "451 4.7.0 Provider busy: no upstream connection free within 1s, try again later"
    );
    within(held.release()).await;
    one_message(&adm).await;
    assert_eq!(p.connections_total(), 1);
}

#[tokio::test]
async fn rate_limit_applies_before_the_permit() {
    let p = Provider::builder().start().await;
    let mut cfg = p.upstream_config();
    cfg.rate.per_second = Some(3);
    cfg.admission_wait = Duration::from_millis(100);
    let adm = Admission::new(settings(cfg));
    for _ in 0..3 {
        one_message(&adm).await; // the burst
    }
    let err = within(adm.lease()).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Busy(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_max_connections() {
    let p = Provider::builder().start().await;
    let mut cfg = p.upstream_config();
    cfg.max_connections = 2;
    let adm = Admission::new(settings(cfg));
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let adm = adm.clone();
        let (active, peak) = (active.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let mut lease = adm.lease().await.unwrap();
                let now = active.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                lease
                    .envelope(&env("a@example.com"), &rcpts(&["b@example.org"]))
                    .await
                    .unwrap();
                assert_eq!(lease.data(b"x\r\n").await.unwrap().code, 250);
                tokio::time::sleep(Duration::from_millis(5)).await;
                active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                lease.release().await;
            }
        }));
    }
    for t in tasks {
        within(t).await.unwrap();
    }
    assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    assert!(adm.limit().max_in_use() <= 2);
    assert!(
        p.connections_total() <= 2,
        "connections: {}",
        p.connections_total()
    );
    assert!(p.max_concurrent() <= 2);
    assert_eq!(p.messages().len(), 24);
}

/// A stand-in for the pool: responses that can hold a permit, no sockets.
#[derive(Debug, Default)]
struct FakeLease(Option<Permit>);

impl HoldPermit for FakeLease {
    fn hold_permit(&mut self, p: Permit) {
        self.0 = Some(p);
    }
}

#[tokio::test(start_paused = true)]
async fn permit_lives_in_the_response_and_limit_resizes() {
    let limit = ConcurrencyLimit::new(2);
    let svc = tower::ServiceBuilder::new()
        .layer(ConcurrencyLayer::new(limit.clone()))
        .service(tower::service_fn(|_req: AdmissionRequest| async {
            Ok::<_, UpstreamError>(FakeLease::default())
        }));
    let wait = Duration::from_secs(30);
    let a = svc
        .clone()
        .oneshot(AdmissionRequest::new(wait))
        .await
        .unwrap();
    let b = svc
        .clone()
        .oneshot(AdmissionRequest::new(wait))
        .await
        .unwrap();
    assert_eq!(limit.in_use(), 2);
    // Third waits the full admission_wait (simulated), then is refused.
    let start = tokio::time::Instant::now();
    let err = svc
        .clone()
        .oneshot(AdmissionRequest::new(wait))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Busy(_)));
    assert_eq!(start.elapsed(), wait);

    // Shrink while both are out: no deadlock, the next release is forgotten.
    limit.set_limit(1);
    drop(a);
    let err = svc
        .clone()
        .oneshot(AdmissionRequest::new(wait))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Busy(_)));
    drop(b);
    let c = svc
        .clone()
        .oneshot(AdmissionRequest::new(wait))
        .await
        .unwrap();
    assert_eq!(limit.in_use(), 1);
    // Grow: a second one fits again at once.
    limit.set_limit(2);
    let d = svc
        .clone()
        .oneshot(AdmissionRequest::new(wait))
        .await
        .unwrap();
    assert_eq!(limit.in_use(), 2);
    drop((c, d));
    assert_eq!(limit.in_use(), 0);
    assert_eq!(limit.max_in_use(), 2);
}

#[tokio::test]
async fn lowering_the_limit_closes_surplus_connections_on_release() {
    let p = Provider::builder().start().await;
    let adm = Admission::new(settings(p.upstream_config())); // max_connections = 2
    let a = within(adm.lease()).await.unwrap();
    let b = within(adm.lease()).await.unwrap();
    adm.limit().set_limit(1);
    within(a.release()).await;
    within(b.release()).await;
    assert_eq!(adm.pool().idle_count(), 1);
    assert_eq!(adm.limit().in_use(), 0);
    assert_eq!(p.lines().iter().filter(|l| *l == "QUIT").count(), 1);
    one_message(&adm).await;
    assert_eq!(p.connections_total(), 2);
}
