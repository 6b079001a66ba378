//! Integration tests for `mailvalve::upstream` against the scripted provider
//! (`support::provider`) over real loopback TCP. Every wait is bounded.

mod support;

use mailvalve::config::{Secret, UpstreamConfig};
use mailvalve::smtp::{Envelope, Reply};
use mailvalve::upstream::admission::AdmissionRequest;
use mailvalve::upstream::concurrency::{ConcurrencyLayer, ConcurrencyLimit, HoldPermit, Permit};
use mailvalve::upstream::{Admission, Connection, Settings, UpstreamError};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::provider::{Provider, TestCa};
use tower::ServiceExt;

/// Every test step is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

fn env(from: &str) -> Envelope {
    Envelope {
        from: from.into(),
        ..Envelope::default()
    }
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn connect(cfg: UpstreamConfig) -> Result<Connection, UpstreamError> {
    let s = Settings::new(cfg).expect("settings");
    within(Connection::connect(&s)).await
}

#[tokio::test]
async fn pipelined_envelope_goes_out_in_one_write() {
    let p = Provider::builder()
        .rcpt_reply("bad@example.org", "550 5.1.1 No such user")
        .start()
        .await;
    let mut c = connect(p.upstream_config()).await.unwrap();
    assert!(c.capabilities().pipelining);
    let (mail, rr) = within(c.envelope(
        &env("news@example.com"),
        &rcpts(&["a@example.org", "bad@example.org", "c@example.org"]),
    ))
    .await
    .unwrap();
    assert_eq!(mail.code, 250);
    let codes: Vec<u16> = rr.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 550, 250]);
    assert_eq!(rr[1].text(), "No such user");

    let cmds = p.commands();
    let tx: Vec<_> = cmds
        .iter()
        .filter(|c| c.line.starts_with("MAIL") || c.line.starts_with("RCPT"))
        .collect();
    assert_eq!(tx.len(), 4);
    assert!(
        tx.iter().all(|c| c.segment == tx[0].segment),
        "MAIL and RCPTs must arrive in one read: {tx:?}"
    );
    // The message is re-dot-stuffed and bare LFs become CRLF.
    let r = within(c.data(b"Subject: x\n\n.leading dot\r\nend"))
        .await
        .unwrap();
    assert_eq!(r.code, 250);
    assert_eq!(
        p.messages(),
        vec![b"Subject: x\r\n\r\n.leading dot\r\nend\r\n".to_vec()]
    );
    assert!(c.last_data_latency().is_some() && c.last_final_latency().is_some());
    within(c.quit()).await;
}

#[tokio::test]
async fn without_pipelining_one_by_one_and_no_rcpt_after_refused_mail() {
    let p = Provider::builder().pipelining(false).start().await;
    let mut c = connect(p.upstream_config()).await.unwrap();
    assert!(!c.capabilities().pipelining);
    let (mail, rr) = within(c.envelope(
        &env("a@example.com"),
        &rcpts(&["x@example.org", "y@example.org"]),
    ))
    .await
    .unwrap();
    assert_eq!((mail.code, rr.len()), (250, 2));
    let tx: Vec<_> = p
        .commands()
        .into_iter()
        .filter(|c| c.line.starts_with("MAIL") || c.line.starts_with("RCPT"))
        .collect();
    assert!(tx.windows(2).all(|w| w[0].segment < w[1].segment), "{tx:?}");

    let p = Provider::builder()
        .pipelining(false)
        .mail_reply("550 5.7.1 Sender not allowed")
        .start()
        .await;
    let mut c = connect(p.upstream_config()).await.unwrap();
    let (mail, rr) = within(c.envelope(&env("a@example.com"), &rcpts(&["x@example.org"])))
        .await
        .unwrap();
    assert_eq!(mail.code, 550);
    assert!(rr.is_empty());
    assert!(!p.lines().iter().any(|l| l.starts_with("RCPT")));
}

#[tokio::test]
async fn mail_parameters_only_when_advertised() {
    let p = Provider::builder().start().await; // SIZE, 8BITMIME, no SMTPUTF8
    let mut c = connect(p.upstream_config()).await.unwrap();
    let e = Envelope {
        from: "a@example.com".into(),
        size: Some(1234),
        eight_bit: true,
        smtputf8: true,
    };
    within(c.envelope(&e, &rcpts(&["b@example.org"])))
        .await
        .unwrap();
    assert!(p
        .lines()
        .contains(&"MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME".to_string()));
    // CR/LF in an address is refused before anything is written.
    let err = within(c.envelope(&env("a@example.com"), &rcpts(&["x@y\r\nDATA"])))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::BadAddress(_)));
}

#[tokio::test]
async fn helo_fallback_when_ehlo_refused() {
    let p = Provider::builder().no_ehlo().start().await;
    let c = connect(p.upstream_config()).await.unwrap();
    assert!(!c.capabilities().pipelining);
    let lines = p.lines();
    assert!(
        lines[0].starts_with("EHLO") && lines[1].starts_with("HELO"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn starttls_with_ca_file() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let p = Provider::builder().starttls(&ca).start().await;
    let mut cfg = p.upstream_config();
    cfg.ca_file = Some(ca.write_ca_file(dir.path()));
    let mut c = connect(cfg).await.unwrap();
    assert!(c.is_tls());
    assert!(
        !c.capabilities().starttls,
        "old capabilities must be forgotten"
    );
    within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
        .await
        .unwrap();
    let cmds = p.commands();
    let ehlos: Vec<_> = cmds.iter().filter(|c| c.line.starts_with("EHLO")).collect();
    assert_eq!(ehlos.len(), 2);
    assert!(!ehlos[0].tls && ehlos[1].tls);
    assert!(cmds
        .iter()
        .filter(|c| c.line.starts_with("MAIL"))
        .all(|c| c.tls));
}

#[tokio::test]
async fn starttls_untrusted_certificate_is_refused() {
    let ca = TestCa::new();
    let p = Provider::builder().starttls(&ca).start().await;
    let err = connect(p.upstream_config()).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Tls(_)), "{err:?}");
    assert_eq!(err.to_reply().class(), 4);
}

#[tokio::test]
async fn implicit_tls_and_verify_off() {
    let ca = TestCa::new();
    let p = Provider::builder().implicit_tls(&ca).start().await;
    let mut cfg = p.upstream_config();
    cfg.tls_verify = false;
    let c = connect(cfg).await.unwrap();
    assert!(c.is_tls());
}

#[tokio::test]
async fn starttls_required_but_not_offered() {
    let p = Provider::builder().start().await;
    let mut cfg = p.upstream_config();
    cfg.tls = mailvalve::config::TlsMode::Starttls;
    let err = connect(cfg).await.unwrap_err();
    assert!(matches!(err, UpstreamError::StartTls(None)), "{err:?}");
}

#[tokio::test]
async fn plaintext_injected_after_starttls_220_is_discarded() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    // If the client kept these bytes, it would take them as the reply to its post-TLS
    // EHLO (and fail, or believe the provider has no extensions).
    let p = Provider::builder()
        .starttls(&ca)
        .inject_after_starttls(b"554 5.7.0 injected in the clear\r\n")
        .start()
        .await;
    let mut cfg = p.upstream_config();
    cfg.ca_file = Some(ca.write_ca_file(dir.path()));
    let c = connect(cfg).await.expect("injection must be discarded");
    assert!(c.is_tls());
    assert!(c.capabilities().pipelining, "caps come from the TLS EHLO");
    let ehlos: Vec<_> = p
        .commands()
        .into_iter()
        .filter(|c| c.line.starts_with("EHLO"))
        .collect();
    assert_eq!(ehlos.len(), 2);
    assert!(ehlos[1].tls);
}

async fn auth_case(mechs: &[&str], good: bool) -> (Provider, Result<Connection, UpstreamError>) {
    let p = Provider::builder()
        .auth("user@example.com", "s3cret-pa55")
        .auth_mechanisms(mechs)
        .start()
        .await;
    let mut cfg = p.upstream_config();
    if !good {
        cfg.password = Some(Secret::new("wrong-pa55"));
    }
    let r = connect(cfg).await;
    (p, r)
}

#[tokio::test]
async fn auth_plain_and_login_succeed_and_fail() {
    for mechs in [&["PLAIN", "LOGIN"][..], &["LOGIN"][..]] {
        let (p, r) = auth_case(mechs, true).await;
        let mut c = r.unwrap_or_else(|e| panic!("{mechs:?}: {e}"));
        let (mail, _) = within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
            .await
            .unwrap();
        assert_eq!(mail.code, 250, "{mechs:?}");
        let want = if mechs[0] == "PLAIN" {
            "AUTH PLAIN "
        } else {
            "AUTH LOGIN"
        };
        assert!(p.lines().iter().any(|l| l.starts_with(want)), "{mechs:?}");

        let (_p, r) = auth_case(mechs, false).await;
        let err = r.unwrap_err();
        match &err {
            UpstreamError::Auth(reply) => assert_eq!(reply.code, 535),
            other => panic!("{mechs:?}: {other:?}"),
        }
        let reply = err.to_reply();
        assert_eq!(
            reply.to_string(),
            "454 4.7.0 Provider rejected mailvalve's credentials"
        );
        assert!(!format!("{err} {err:?} {reply}").contains("pa55"));
    }
}

#[tokio::test]
async fn greeting_421_is_a_4xx_for_the_mailer() {
    let p = Provider::builder()
        .greeting("421 4.7.0 Too many connections")
        .start()
        .await;
    let err = connect(p.upstream_config()).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Greeting(ref r) if r.code == 421));
    assert_eq!(
        err.to_reply().to_string(),
        "451 4.7.0 Provider refused the connection: Too many connections"
    );
}

#[tokio::test]
async fn unreachable_provider() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = UpstreamConfig {
        port,
        tls: mailvalve::config::TlsMode::None,
        ..UpstreamConfig::default()
    };
    let err = connect(cfg).await.unwrap_err();
    assert_eq!(
        err.to_reply().to_string(),
        "451 4.4.1 Provider unreachable: connection refused"
    );
}

#[tokio::test]
async fn connection_dropped_after_data_is_an_error() {
    let p = Provider::builder().drop_after_data().start().await;
    let mut c = connect(p.upstream_config()).await.unwrap();
    within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
        .await
        .unwrap();
    let err = within(c.data(b"Subject: x\r\n\r\nbody\r\n"))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Closed), "{err:?}");
    assert_eq!(err.to_reply().class(), 4);
    assert!(!c.is_usable());
}

#[tokio::test]
async fn final_reply_timeout_is_an_error() {
    let p = Provider::builder()
        .final_delay(Duration::from_secs(3))
        .start()
        .await;
    let mut cfg = p.upstream_config();
    cfg.timeouts.data_end = Duration::from_millis(200);
    let mut c = connect(cfg).await.unwrap();
    within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
        .await
        .unwrap();
    let err = within(c.data(b"x\r\n")).await.unwrap_err();
    assert_eq!(
        err.to_reply().to_string(),
        "451 4.4.2 Provider timed out waiting for the final reply"
    );
    assert!(!c.is_usable());
}

#[tokio::test]
async fn rcpt_421_marks_connection_unusable() {
    let p = Provider::builder()
        .rcpt_reply("b@example.org", "421 4.7.0 Too many connections, closing")
        .start()
        .await;
    let mut c = connect(p.upstream_config()).await.unwrap();
    let (_, rr) = within(c.envelope(
        &env("a@example.com"),
        &rcpts(&["b@example.org", "c@example.org"]),
    ))
    .await
    .unwrap();
    assert_eq!(rr.iter().map(|r| r.code).collect::<Vec<_>>(), [421, 421]);
    assert!(!c.is_usable());
}

fn settings(cfg: UpstreamConfig) -> Arc<Settings> {
    Settings::new(cfg).expect("settings")
}

async fn one_message(adm: &Admission) -> (Reply, usize) {
    let mut lease = within(adm.lease()).await.unwrap();
    let (m, _) = within(lease.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
        .await
        .unwrap();
    assert_eq!(m.code, 250);
    let r = within(lease.data(b"Subject: t\r\n\r\nhi\r\n"))
        .await
        .unwrap();
    let n = lease.transactions_done();
    within(lease.release()).await;
    (r.reply, n)
}

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

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn password_never_appears_in_logs() {
    use base64::Engine;
    let cap = Capture::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(cap.clone())
        .with_ansi(false)
        .finish();
    let _g = tracing::subscriber::set_default(sub);
    let pass = "Sup3r-S3cret";
    let user = "user@example.com";
    for (mechs, pw) in [
        (&["PLAIN"][..], pass),
        (&["LOGIN"][..], pass),
        (&["PLAIN"][..], "Wr0ng-S3cret"),
    ] {
        let p = Provider::builder()
            .auth(user, pass)
            .auth_mechanisms(mechs)
            .start()
            .await;
        let mut cfg = p.upstream_config();
        cfg.password = Some(Secret::new(pw));
        cfg.tls_verify = false;
        let adm = Admission::new(settings(cfg));
        match within(adm.lease()).await {
            Ok(l) => within(l.release()).await,
            Err(e) => tracing::info!(error = %e, reply = %e.to_reply(), debug = ?e, "lease failed"),
        }
    }
    let out = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    assert!(out.contains("AUTH PLAIN <redacted>"), "{out}");
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in [
        pass.to_string(),
        "Wr0ng-S3cret".to_string(),
        b64.encode(format!("\0{user}\0{pass}")),
        b64.encode(pass),
        b64.encode(user),
    ] {
        assert!(!out.contains(&secret), "{secret} leaked:\n{out}");
    }
}

#[tokio::test]
async fn verify_off_warns_at_every_connect() {
    let cap = Capture::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(cap.clone())
        .with_ansi(false)
        .finish();
    let _g = tracing::subscriber::set_default(sub);
    let ca = TestCa::new();
    let p = Provider::builder().starttls(&ca).start().await;
    let mut cfg = p.upstream_config();
    cfg.tls_verify = false;
    let s = settings(cfg);
    for _ in 0..2 {
        let c = within(Connection::connect(&s)).await.unwrap();
        within(c.quit()).await;
    }
    let out = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    assert_eq!(out.matches("verification is OFF").count(), 2, "{out}");
}

/// The passthrough relay (`relay::Passthrough`) over this module: the mapping is as small
/// as promised, and the futures are `Send`.
#[tokio::test]
async fn relay_adapter_maps_trivially() {
    use mailvalve::relay::Passthrough;
    use mailvalve::server::relay::{BodySink, Relay, RelayTransaction};
    let p = Provider::builder()
        .rcpt_reply("bad@example.org", "550 5.1.1 No such user")
        .start()
        .await;
    let relay = Passthrough::new(Admission::new(settings(p.upstream_config())));
    let (mut tx, mail, rr) = within(relay.begin(env("a@example.com"), rcpts(&["b@example.org"])))
        .await
        .unwrap();
    assert_eq!((mail.code, rr[0].code), (250, 250));
    let more = within(tx.rcpt(rcpts(&["bad@example.org"]))).await.unwrap();
    assert_eq!(more[0].code, 550);
    let mut body = within(tx.body()).await.unwrap();
    within(body.write(b"hi\r\n")).await.unwrap();
    assert_eq!(within(tx.data(body)).await.code, 250);
    within(tx.end()).await;

    let p = Provider::builder()
        .mail_reply("550 5.7.1 Sender rejected")
        .start()
        .await;
    let adm = Admission::new(settings(p.upstream_config()));
    let relay = Passthrough::new(adm.clone());
    let err = within(relay.begin(env("a@example.com"), rcpts(&["b@example.org"])))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, 550);
    assert_eq!(adm.limit().in_use(), 0);
    assert_eq!(adm.pool().idle_count(), 1);
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

// ------------------------------------------------------------------------------------
// The one protocol guard (issue 8.1): a positive reply the protocol does not allow
// where it arrives is a broken connection, never a reply.
// ------------------------------------------------------------------------------------

/// Records what the client tells its observer.
#[derive(Default)]
struct Recording(Mutex<Vec<String>>);

impl mailvalve::upstream::observer::Observer for Recording {
    fn reply(
        &self,
        phase: mailvalve::policy::verdict::Phase,
        reply: &Reply,
        _rcpt: Option<&str>,
        _message: Option<&str>,
    ) -> Option<mailvalve::policy::verdict::Verdict> {
        self.0
            .lock()
            .unwrap()
            .push(format!("reply {phase:?} {}", reply.code));
        None
    }
    fn failure(&self, phase: Option<mailvalve::policy::verdict::Phase>, e: &UpstreamError) {
        let kind = match e {
            UpstreamError::Unexpected { .. } => "unexpected",
            UpstreamError::Unsolicited { .. } => "unsolicited",
            _ => "other",
        };
        self.0
            .lock()
            .unwrap()
            .push(format!("failure {phase:?} {kind}"));
    }
    fn connect_started(&self) {}
    fn connect_finished(&self, _ok: bool) {}
    fn latency(&self, _kind: mailvalve::policy::latency::LatencyKind, _sample: Duration) {}
}

fn observed(cfg: UpstreamConfig) -> (Arc<Settings>, Arc<Recording>) {
    let rec = Arc::new(Recording::default());
    let s = Settings::new(cfg).unwrap().with_observer(rec.clone());
    (s, rec)
}

#[tokio::test]
async fn a_positive_reply_out_of_place_is_unexpected_at_every_phase() {
    use mailvalve::policy::verdict::Phase;
    let ca = TestCa::new();
    // Set-up phases: connect fails.
    let setup = [
        (Provider::builder().greeting("250 hello"), Phase::Greeting),
        (Provider::builder().reply_to("EHLO", "220 hi"), Phase::Ehlo),
        (
            Provider::builder()
                .starttls(&ca)
                .reply_to("STARTTLS", "250 2.0.0 Ok"),
            Phase::StartTls,
        ),
        (
            Provider::builder()
                .auth("u", "p")
                .auth_mechanisms(&["PLAIN"])
                .reply_to("AUTH", "334 "),
            Phase::Auth,
        ),
        (
            Provider::builder()
                .auth("u", "p")
                .auth_mechanisms(&["LOGIN"])
                .reply_to("AUTH", "235 2.7.0 ok, without a password"),
            Phase::Auth,
        ),
    ];
    for (script, phase) in setup {
        let p = script.start().await;
        let (s, rec) = observed(p.upstream_config());
        let err = within(Connection::connect(&s)).await.unwrap_err();
        assert!(
            matches!(err, UpstreamError::Unexpected { phase: ph, .. } if ph == phase),
            "{phase:?}: {err:?}"
        );
        assert_eq!(err.to_reply().class(), 4, "{err}");
        let seen = rec.0.lock().unwrap().clone();
        assert_eq!(
            seen.last().map(String::as_str),
            Some(format!("failure Some({phase:?}) unexpected").as_str()),
            "the reply is reported as a failure, never as a reply: {seen:?}"
        );
    }

    // Transaction phases: the call fails and the connection is unusable.
    let p = Provider::builder().mail_reply("354 go on").start().await;
    let (s, _) = observed(p.upstream_config());
    let mut c = within(Connection::connect(&s)).await.unwrap();
    let err = within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Unexpected {
                phase: Phase::Mail,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!c.is_usable());

    let p = Provider::builder().rcpt_default("354 go on").start().await;
    let (s, _) = observed(p.upstream_config());
    let mut c = within(Connection::connect(&s)).await.unwrap();
    let err = within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Unexpected {
                phase: Phase::Rcpt,
                ..
            }
        ),
        "{err:?}"
    );

    for (script, phase) in [
        (Provider::builder().data_reply("250 2.0.0 Ok"), Phase::Data),
        (Provider::builder().final_reply("354 more"), Phase::DataEnd),
    ] {
        let p = script.start().await;
        let (s, rec) = observed(p.upstream_config());
        let mut c = within(Connection::connect(&s)).await.unwrap();
        within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
            .await
            .unwrap();
        let err = within(c.data(b"Subject: x\r\n\r\nbody\r\n"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::Unexpected { phase: ph, .. } if ph == phase),
            "{phase:?}: {err:?}"
        );
        assert!(!c.is_usable());
        let seen = rec.0.lock().unwrap().clone();
        assert!(
            !seen.iter().any(|l| l.starts_with("reply DataEnd 2")),
            "nothing may look delivered: {seen:?}"
        );
    }

    let p = Provider::builder()
        .reply_to("RSET", "354 what")
        .start()
        .await;
    let (s, _) = observed(p.upstream_config());
    let mut c = within(Connection::connect(&s)).await.unwrap();
    within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
        .await
        .unwrap();
    let err = within(c.rset()).await.unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Unexpected {
                phase: Phase::Rset,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!c.is_usable());
}

#[tokio::test]
async fn more_replies_than_commands_drop_the_connection() {
    // Each RCPT is answered twice: the extra reply must never be read as DATA's.
    let p = Provider::builder()
        .rcpt_default("250 2.1.5 Ok\r\n250 2.0.0 Ok")
        .start()
        .await;
    let (s, rec) = observed(p.upstream_config());
    let mut c = within(Connection::connect(&s)).await.unwrap();
    within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
        .await
        .unwrap();
    let err = within(c.data(b"Subject: x\r\n\r\nbody\r\n"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Unsolicited { .. } | UpstreamError::Unexpected { .. }
        ),
        "{err:?}"
    );
    assert!(!c.is_usable());
    assert!(p.messages().is_empty(), "no message was sent");
    let seen = rec.0.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|l| l.starts_with("reply Data")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn non_ascii_addresses_need_smtputf8_at_the_provider() {
    let utf8 = Envelope {
        from: "news@example.com".into(),
        smtputf8: true,
        ..Envelope::default()
    };
    // Without SMTPUTF8 at the provider: a local 553 5.6.7, the address never sent.
    let p = Provider::builder().start().await;
    let mut c = connect(p.upstream_config()).await.unwrap();
    let (mail, rr) = within(c.envelope(&utf8, &rcpts(&["jörg@example.org", "ok@example.org"])))
        .await
        .unwrap();
    assert_eq!(mail.code, 250);
    assert_eq!(rr.iter().map(|r| r.code).collect::<Vec<_>>(), [553, 250]);
    assert_eq!(
        rr[0].enhanced.map(|e| e.to_string()).as_deref(),
        Some("5.6.7")
    );
    assert!(p.lines().iter().all(|l| l.is_ascii()), "{:?}", p.lines());
    // A non-ASCII sender: MAIL itself, nothing sent.
    let from = Envelope {
        from: "zoë@example.com".into(),
        smtputf8: true,
        ..Envelope::default()
    };
    let before = p.lines().len();
    let (mail, rr) = within(c.envelope(&from, &rcpts(&["ok@example.org"])))
        .await
        .unwrap();
    assert_eq!((mail.code, rr.len()), (553, 0), "{mail}");
    assert_eq!(p.lines().len(), before, "nothing was sent");

    // With SMTPUTF8 offered: MAIL carries it and the address goes out as is.
    let p = Provider::builder().capability("SMTPUTF8").start().await;
    let mut c = connect(p.upstream_config()).await.unwrap();
    let (_, rr) = within(c.envelope(&utf8, &rcpts(&["jörg@example.org"])))
        .await
        .unwrap();
    assert_eq!(rr[0].code, 250);
    let lines = p.lines();
    assert!(
        lines.contains(&"MAIL FROM:<news@example.com> SMTPUTF8".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"RCPT TO:<jörg@example.org>".to_string()),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_successful_transaction_is_counted_once_by_the_controller() {
    use mailvalve::policy::classify::Classifier;
    use mailvalve::policy::clock::SystemClock;
    use mailvalve::policy::controller::{Controller, ControllerParams};
    use mailvalve::upstream::observer::PolicyObserver;
    let p = Provider::builder().start().await;
    // Two connections allowed and both in use: growth to three takes a run of two
    // successful transactions (Postfix's 1/N rule).
    let controller = Arc::new(Controller::new(
        ControllerParams {
            initial_connections: 2,
            max_connections: 10,
            ..ControllerParams::default()
        },
        SystemClock::new(),
    ));
    let limit = ConcurrencyLimit::new(2);
    let _held = (
        within(limit.acquire()).await.unwrap(),
        within(limit.acquire()).await.unwrap(),
    );
    let obs = Arc::new(PolicyObserver::new(
        Arc::new(Classifier::builtin().unwrap()),
        controller.clone(),
        None,
        limit.clone(),
    ));
    let s = Settings::new(p.upstream_config())
        .unwrap()
        .with_observer(obs);
    let mut c = within(Connection::connect(&s)).await.unwrap();
    async fn send(c: &mut Connection, n: usize) {
        within(c.envelope(&env("a@example.com"), &rcpts(&["b@example.org"])))
            .await
            .unwrap();
        let r = within(c.data(format!("Subject: {n}\r\n\r\nx\r\n").as_bytes()))
            .await
            .unwrap();
        assert_eq!(r.code, 250);
    }
    send(&mut c, 1).await;
    assert_eq!(
        controller.concurrency_limit(),
        2,
        "one transaction counted as two: the limit grew after one"
    );
    send(&mut c, 2).await;
    assert_eq!(
        controller.concurrency_limit(),
        3,
        "two transactions, one run"
    );
}
