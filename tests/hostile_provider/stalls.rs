//! 8.7: silence after 354; 8.7: a greeting of 421, forever; 8.7: a TLS handshake that stalls.

use super::*;

// ------------------------------------------------------------------------------------
// 8.7: silence after 354.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn passthrough_silence_after_354_is_a_4xx_never_250() {
    let p = Provider::builder()
        .final_delay(Duration::from_secs(24 * 3600))
        .start()
        .await;
    let r = passthrough(short_timeouts(p.upstream_config())).await;
    let mut m = Mailer::connect(r.addr).await;
    let env = m
        .envelope("MAIL FROM:<news@news.example>", "ok@example.org")
        .await;
    assert!(env[2].starts_with("354"), "{env:?}");
    let last = m.body(1).await;
    println!("silence after 354: mailer got {last}");
    assert!(
        last.starts_with("451 4.4.2"),
        "the data_end timeout: {last}"
    );
    r.stop().await;
}

#[tokio::test]
async fn queue_silence_after_354_is_retried_never_delivered() {
    let p = Provider::builder()
        .final_delay(Duration::from_secs(24 * 3600))
        .start()
        .await;
    let q = queue(short_timeouts(p.upstream_config()), quick_retries).await;
    q.submit(&["ok@example.org"], 1).await;
    eventually("sent twice", || {
        p.messages().len() >= 2 || q.spool.is_empty()
    })
    .await;
    q.assert_still_queued("silence after 354");
    q.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.7: a greeting of 421, forever.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn queue_421_greeting_forever_backs_off_and_holds_the_queue() {
    let p = Provider::builder()
        .greeting("421 4.3.2 Service not available, closing transmission channel")
        .start()
        .await;
    // Default controller parameters: the engine's own pacing, nothing sped up.
    let q = queue(p.upstream_config(), |c, prof| {
        limits::controller_params(c, prof)
    })
    .await;
    const MESSAGES: usize = 20;
    for n in 0..MESSAGES {
        q.submit(&[&format!("r{n}@example.org")], n).await;
    }
    eventually("provider contacted", || p.connections_total() >= 1).await;
    // Watch the engine for a while: it must back off, not reconnect per message.
    sleep(Duration::from_secs(3)).await;
    let connections = p.connections_total();
    println!("421 greeting forever, {MESSAGES} queued messages: {connections} connections in ~3 s");
    assert!(
        connections <= 10,
        "{connections} connections for {MESSAGES} messages: no backoff"
    );
    let msgs = q.spool.list().unwrap();
    assert_eq!(msgs.len(), MESSAGES, "nothing delivered, bounced or lost");
    for m in &msgs {
        match &m.rcpts[0].state {
            RcptState::Pending { attempts, .. } => {
                assert_eq!(*attempts, 0, "a refused greeting uses no attempt: {m:?}")
            }
            s => panic!("must stay pending: {s:?}"),
        }
    }
    assert!(p.messages().is_empty());
    q.stop().await;
}

#[tokio::test]
async fn passthrough_421_greeting_forever_is_not_a_reconnect_per_transaction() {
    let p = Provider::builder()
        .greeting("421 4.3.2 Service not available, closing transmission channel")
        .start()
        .await;
    let r = passthrough(p.upstream_config()).await;
    const TRANSACTIONS: usize = 8;
    let mut m = Mailer::connect(r.addr).await;
    for _ in 0..TRANSACTIONS {
        m.send("MAIL FROM:<news@news.example>\r\n").await;
        let reply = m.replies(1).await.remove(0);
        assert!(reply.starts_with('4'), "{reply}");
    }
    let connections = p.connections_total();
    println!("421 greeting forever: {connections} connections for {TRANSACTIONS} transactions");
    assert!(connections <= 4, "{connections} connections: no backoff");
    r.stop().await;
}

// ------------------------------------------------------------------------------------
// 8.7: a TLS handshake that stalls.
// ------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stalled_tls_handshake_times_out() {
    let ca = TestCa::new();
    for script in [
        Provider::builder().implicit_tls(&ca).tls_stall(),
        Provider::builder().starttls(&ca).tls_stall(),
    ] {
        let p = script.start().await;
        let up = short_timeouts(p.upstream_config());
        let connect = up.timeouts.connect;
        let s = Settings::new(up).unwrap();
        let start = Instant::now();
        let err = timeout(WAIT, Connection::connect(&s))
            .await
            .expect("bounded by the connect timeout")
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Tls(_)), "{err:?}");
        // The handshake was given the configured time, not cut short (a lower bound:
        // safe on a slow machine).
        assert!(start.elapsed() >= connect, "{:?}", start.elapsed());
        assert_eq!(err.to_reply().class(), 4);
    }

    // Passthrough: the mailer hears a 4xx at MAIL.
    let p = Provider::builder()
        .implicit_tls(&ca)
        .tls_stall()
        .start()
        .await;
    let r = passthrough(short_timeouts(p.upstream_config())).await;
    let mut m = Mailer::connect(r.addr).await;
    m.send("MAIL FROM:<news@news.example>\r\n").await;
    let reply = m.replies(1).await.remove(0);
    assert!(reply.starts_with("451 4.7.5"), "{reply}");
    r.stop().await;
}

#[tokio::test]
async fn queue_a_stalled_tls_handshake_holds_the_message() {
    let ca = TestCa::new();
    let p = Provider::builder()
        .implicit_tls(&ca)
        .tls_stall()
        .start()
        .await;
    let q = queue(short_timeouts(p.upstream_config()), quick_retries).await;
    q.submit(&["ok@example.org"], 1).await;
    eventually("tried twice", || {
        p.connections_total() >= 2 || q.spool.is_empty()
    })
    .await;
    q.assert_still_queued("stalled TLS handshake");
    q.stop().await;
}
