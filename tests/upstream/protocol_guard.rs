//! The one protocol guard (issue 8.1): a positive reply the protocol does not allow
//! where it arrives is a broken connection, never a reply.

use super::*;

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
    // Two connections allowed and both in use: growth takes a run of two successful
    // transactions (Postfix's 1/N rule); before any throttle it doubles (slow start).
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
        4,
        "two transactions, one run"
    );
}
