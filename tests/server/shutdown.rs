//! Graceful shutdown.

use super::*;

#[tokio::test]
async fn shutdown_closes_idle_sessions_at_once() {
    let srv = start(cfg()).await;
    let mut idle = srv.connect().await;
    idle.cmd("EHLO client.test").await;
    let mut fresh = srv.connect().await;
    let addr = srv.addr;
    srv.stop.cancel();
    for c in [&mut idle, &mut fresh] {
        let r = c.reply_within(Duration::from_secs(1)).await;
        is(&r, 421, "4.3.2");
        assert_eq!(r.lines, vec!["Service shutting down"]);
        c.assert_closed().await;
    }
    timeout(WAIT, srv.task).await.unwrap().unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn shutdown_lets_a_transaction_finish_within_grace() {
    let srv = start(ServerConfig {
        shutdown_grace: Duration::from_secs(5),
        ..cfg()
    })
    .await;
    srv.rec.set_data_delay(Duration::from_millis(500));
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    assert_eq!(c.reply().await.code, 354);
    c.send(b"hello\r\n.\r\n").await;
    // The relay is busy with the message when shutdown starts.
    while srv.rec.messages().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.stop.cancel();
    is(&c.reply().await, 250, "2.0.0");
    is(&c.reply().await, 421, "4.3.2");
    c.assert_closed().await;
    timeout(WAIT, srv.task).await.unwrap().unwrap().unwrap();
    assert_eq!(srv.rec.events().last(), Some(&Ev::End));
}

#[tokio::test]
async fn shutdown_grace_expiry_closes_transactions_in_flight() {
    let srv = start(ServerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..cfg()
    })
    .await;
    srv.rec.set_data_delay(Duration::from_secs(60));
    // One session mid-DATA (relay hangs), one mid-transaction waiting for the client.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"hello\r\n.\r\n").await;
    let mut d = srv.connect().await;
    d.cmd("EHLO client.test").await;
    is(&d.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
    while srv.rec.messages().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t0 = std::time::Instant::now();
    srv.stop.cancel();
    for s in [&mut c, &mut d] {
        let r = s.reply_within(Duration::from_secs(3)).await;
        is(&r, 421, "4.3.2");
        s.assert_closed().await;
    }
    timeout(Duration::from_secs(3), srv.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}
