//! What reaches the log: never the password, and a warning at every connect while
//! certificate verification is off.

use super::*;

use crate::support::capture::Capture;

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
    // Other tests in this binary run on other threads without a subscriber; a callsite
    // they reach first can be cached as "never enabled" while this one is being set up
    // (tracing's interest cache is global). Recompute it now that ours is registered.
    tracing::callsite::rebuild_interest_cache();
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
    // Other tests in this binary run on other threads without a subscriber; a callsite
    // they reach first can be cached as "never enabled" while this one is being set up
    // (tracing's interest cache is global). Recompute it now that ours is registered.
    tracing::callsite::rebuild_interest_cache();
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
