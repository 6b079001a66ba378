//! STARTTLS.

use super::*;

#[tokio::test]
async fn starttls_discards_pipelined_plaintext_and_resets_the_session() {
    let pki = pki();
    let srv = start(ServerConfig {
        tls: Some(pki.tls.clone()),
        users: alice(),
        ..cfg()
    })
    .await;
    let mut c = srv.connect().await;
    let e = c.cmd("EHLO client.test").await;
    assert!(e.lines.contains(&"STARTTLS".to_string()));
    assert!(
        e.lines.contains(&"AUTH PLAIN LOGIN".to_string()),
        "loopback: AUTH without TLS"
    );
    // Authenticated before TLS: forgotten after it.
    let plain = b64(b"\0alice\0Sup3rS3cretPw");
    is(&c.cmd(&format!("AUTH PLAIN {plain}")).await, 235, "2.7.0");

    // STARTTLS and RSET in one segment: the RSET is never executed nor answered.
    c.send(b"STARTTLS\r\nRSET\r\n").await;
    is(&c.reply().await, 220, "2.0.0");
    let mut t = tls_upgrade(c, &pki).await;
    // State reset: EHLO is needed again...
    is(&t.cmd("MAIL FROM:<a@x.test>").await, 503, "5.5.1");
    let e = t.cmd("EHLO client.test").await;
    assert_eq!(e.code, 250);
    assert!(!e.lines.contains(&"STARTTLS".to_string()));
    assert!(e.lines.contains(&"AUTH PLAIN LOGIN".to_string()));
    // ...and AUTH too.
    is(&t.cmd("STARTTLS").await, 503, "5.5.1");
    is(&t.cmd(&format!("AUTH PLAIN {plain}")).await, 235, "2.7.0");
    is(&t.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
    is(&t.cmd("RCPT TO:<b@y.test>").await, 250, "2.1.5");
    assert_eq!(t.cmd("DATA").await.code, 354);
    t.send(b"over tls\r\n.\r\n").await;
    is(&t.reply().await, 250, "2.0.0");
    is(&t.cmd("QUIT").await, 221, "2.0.0");
    assert_eq!(srv.rec.messages(), vec![b"over tls\r\n".to_vec()]);
    srv.stop().await;
}

#[tokio::test]
async fn public_listener_needs_tls_for_auth_and_auth_for_mail() {
    let pki = pki();
    let srv = start_with(
        ServerConfig {
            tls: Some(pki.tls.clone()),
            users: alice(),
            ..cfg()
        },
        true,
    )
    .await;
    let mut c = srv.connect().await;
    let e = c.cmd("EHLO client.test").await;
    assert!(e.lines.contains(&"STARTTLS".to_string()));
    assert!(
        !e.lines.iter().any(|l| l.starts_with("AUTH")),
        "no AUTH before TLS"
    );
    let plain = b64(b"\0alice\0Sup3rS3cretPw");
    let r = c.cmd(&format!("AUTH PLAIN {plain}")).await;
    is(&r, 538, "5.7.11");
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 530, "5.7.0");
    is(&c.cmd("STARTTLS").await, 220, "2.0.0");
    let mut t = tls_upgrade(c, &pki).await;
    let e = t.cmd("EHLO client.test").await;
    assert!(e.lines.contains(&"AUTH PLAIN LOGIN".to_string()));
    is(&t.cmd("MAIL FROM:<a@x.test>").await, 530, "5.7.0");
    is(&t.cmd(&format!("AUTH PLAIN {plain}")).await, 235, "2.7.0");
    is(&t.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
    srv.stop().await;
}

#[tokio::test]
async fn lettre_with_starttls_and_auth() {
    use lettre::message::Message;
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    let pki = pki();
    let srv = start_with(
        ServerConfig {
            tls: Some(pki.tls.clone()),
            users: alice(),
            ..cfg()
        },
        true,
    )
    .await;
    let params = TlsParameters::builder("127.0.0.1".into())
        .add_root_certificate(Certificate::from_pem(pki.cert_pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    for mech in [Mechanism::Plain, Mechanism::Login] {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(srv.addr.port())
            .tls(Tls::Required(params.clone()))
            .credentials(Credentials::new("alice".into(), "Sup3rS3cretPw".into()))
            .authentication(vec![mech])
            .timeout(Some(WAIT))
            .build();
        let email = Message::builder()
            .from("News <news@x.test>".parse().unwrap())
            .to("reader@y.test".parse().unwrap())
            .subject(format!("via {mech:?}"))
            .body(String::from("Hello over TLS"))
            .unwrap();
        let resp = timeout(WAIT, mailer.send(email)).await.unwrap().unwrap();
        assert!(resp.is_positive());
    }
    assert_eq!(srv.rec.messages().len(), 2);

    // Wrong password: lettre sees the 535.
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(srv.addr.port())
        .tls(Tls::Required(params))
        .credentials(Credentials::new("alice".into(), "wrong".into()))
        .timeout(Some(WAIT))
        .build();
    let email = Message::builder()
        .from("news@x.test".parse().unwrap())
        .to("reader@y.test".parse().unwrap())
        .body(String::from("x"))
        .unwrap();
    let err = timeout(WAIT, mailer.send(email))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.status().map(|c| c.to_string()), Some("535".into()));
    assert_eq!(srv.rec.messages().len(), 2);
    srv.stop().await;
}
