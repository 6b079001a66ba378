//! What reaches the log: never the password, and a warning at every connect while
//! certificate verification is off.
//!
//! A test binary of its own, with one global TRACE subscriber: tracing keeps a global
//! cache of which log lines are enabled, and a scoped subscriber (`set_default`) raced
//! with the other upstream tests running on other threads — now and then the cache said
//! "trace off" and the redaction check saw no AUTH line at all. Only these tests log
//! into this capture; only `verify_off_warns_at_every_connect` uses TLS with
//! verification off, so its count is its own.

mod support;

use mailvalve::config::{Secret, UpstreamConfig};
use mailvalve::upstream::{Admission, Connection, Settings};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use support::capture::Capture;
use support::provider::{Provider, TestCa};

/// Every test step is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

fn settings(cfg: UpstreamConfig) -> Arc<Settings> {
    Settings::new(cfg).expect("settings")
}

/// Everything logged in this process, at every level.
fn logs() -> Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let cap = Capture::default();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(cap.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(sub).expect("the only subscriber");
        cap
    })
    .clone()
}

#[tokio::test]
async fn password_never_appears_in_logs() {
    use base64::Engine;
    let cap = logs();
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
    let cap = logs();
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
