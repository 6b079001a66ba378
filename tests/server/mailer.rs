//! lettre as the mailer.

use super::*;

#[tokio::test]
async fn lettre_sends_50_messages_in_one_session() {
    use lettre::address::Envelope as LEnvelope;
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::extension::ClientId;

    let srv = start(cfg()).await;
    let mut conn = AsyncSmtpConnection::connect_tokio1(
        srv.addr,
        Some(WAIT),
        &ClientId::Domain("client.test".into()),
        None,
        None,
    )
    .await
    .unwrap();
    for i in 0..50 {
        let env = LEnvelope::new(
            Some("news@x.test".parse().unwrap()),
            vec![format!("reader{i}@y.test").parse().unwrap()],
        )
        .unwrap();
        let body = format!("Subject: issue {i}\r\n\r\nHello {i}\r\n.leading dot\r\n");
        let resp = timeout(WAIT, conn.send(&env, body.as_bytes()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.code().to_string(), "250");
    }
    conn.quit().await.unwrap();

    let msgs = srv.rec.messages();
    assert_eq!(msgs.len(), 50);
    for (i, m) in msgs.iter().enumerate() {
        let text = String::from_utf8_lossy(m);
        assert!(text.contains(&format!("Subject: issue {i}")), "{text}");
        assert!(text.contains("\r\n.leading dot\r\n"), "unstuffed: {text}");
    }
    let begins = srv.rec.begins();
    assert_eq!(begins.len(), 50);
    let ends = srv.rec.events().iter().filter(|e| **e == Ev::End).count();
    assert_eq!(
        ends, 50,
        "every transaction ended (connection back to the pool)"
    );
    srv.stop().await;
}
