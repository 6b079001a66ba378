//! Integration tests for `mailvalve::upstream` against the scripted provider
//! (`support::provider`) over real loopback TCP. Every wait is bounded.
//!
//! Shared helpers (and the relay adapter) are here; the tests are in tests/upstream/, one
//! file per topic.

mod support;

#[path = "upstream/connection.rs"]
mod connection;
#[path = "upstream/pool.rs"]
mod pool;
#[path = "upstream/protocol_guard.rs"]
mod protocol_guard;

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
