//! AUTH.

use super::*;

#[tokio::test]
async fn auth_plain_and_login() {
    let srv = start(ServerConfig {
        users: alice(),
        require_auth: true,
        ..cfg()
    })
    .await;
    let mut c = srv.connect().await;
    is(&c.cmd("AUTH PLAIN").await, 503, "5.5.1"); // EHLO first
    c.cmd("EHLO client.test").await;
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 530, "5.7.0");
    is(
        &c.cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0wrong")))
            .await,
        535,
        "5.7.8",
    );
    is(&c.cmd("AUTH CRAM-MD5").await, 504, "5.5.4");
    // Cancel at the continuation.
    let r = c.cmd("AUTH PLAIN").await;
    assert_eq!((r.code, r.lines.clone()), (334, vec![String::new()]));
    is(&c.cmd("*").await, 501, "5.7.0");
    // Not base64.
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    is(&c.cmd("!!!").await, 501, "5.5.2");
    // LOGIN, step by step.
    let r = c.cmd("AUTH LOGIN").await;
    assert_eq!((r.code, r.lines[0].as_str()), (334, "VXNlcm5hbWU6"));
    let r = c.cmd(&b64(b"alice")).await;
    assert_eq!((r.code, r.lines[0].as_str()), (334, "UGFzc3dvcmQ6"));
    is(&c.cmd(&b64(b"Sup3rS3cretPw")).await, 235, "2.7.0");
    is(&c.cmd("AUTH PLAIN").await, 503, "5.5.1");
    let e = c.cmd("EHLO client.test").await;
    assert!(
        !e.lines.iter().any(|l| l.starts_with("AUTH")),
        "not offered again"
    );
    is(&c.cmd("MAIL FROM:<a@x.test>").await, 250, "2.1.0");
    is(&c.cmd("AUTH PLAIN").await, 503, "5.5.1");
    is(&c.cmd("QUIT").await, 221, "2.0.0");

    // PLAIN with a 334 continuation; authzid must match.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("AUTH PLAIN").await.code, 334);
    is(
        &c.cmd(&b64(b"bob\0alice\0Sup3rS3cretPw")).await,
        535,
        "5.7.8",
    );
    assert_eq!(c.cmd("AUTH PLAIN").await.code, 334);
    is(
        &c.cmd(&b64(b"alice\0alice\0Sup3rS3cretPw")).await,
        235,
        "2.7.0",
    );
    c.cmd("QUIT").await;

    // Three failures close the session.
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    let bad = format!("AUTH PLAIN {}", b64(b"\0alice\0nope"));
    is(&c.cmd(&bad).await, 535, "5.7.8");
    is(&c.cmd(&bad).await, 535, "5.7.8");
    is(&c.cmd(&bad).await, 421, "4.7.0");
    c.assert_closed().await;
    srv.stop().await;
}

/// A `MakeWriter` that appends to a shared buffer.
#[tokio::test]
async fn credentials_never_reach_the_log() {
    let srv = start(ServerConfig {
        users: alice(),
        ..cfg()
    })
    .await;
    let mut c = srv.connect().await;
    c.cmd("EHLO client.test").await;
    let ok_plain = b64(b"\0alice\0Sup3rS3cretPw");
    let bad_plain = b64(b"\0alice\0Sup3rS3cretPwTypo");
    is(
        &c.cmd(&format!("AUTH PLAIN {bad_plain}")).await,
        535,
        "5.7.8",
    );
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd(&b64(b"Sup3rS3cretPw")).await.code, 334); // password as user name
    is(&c.cmd(&b64(b"Sup3rS3cretPw")).await, 535, "5.7.8");
    is(
        &c.cmd(&format!("AUTH PLAIN {ok_plain}")).await,
        235,
        "2.7.0",
    );
    c.cmd("QUIT").await;
    c.assert_closed().await;
    srv.stop().await;

    // The log of every test in this binary so far, this one's included.
    let log = String::from_utf8(log_capture().0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("authenticated"), "capture works: {log}");
    assert!(log.contains("authentication failed"), "{log}");
    for secret in [
        "Sup3rS3cretPw".to_string(),
        ok_plain,
        bad_plain,
        b64(b"Sup3rS3cretPw"),
    ] {
        assert!(!log.contains(&secret), "{secret} leaked into:\n{log}");
    }
}
