//! Integration tests for `mailvalve::upstream` against the scripted provider
//! (`support::provider`) over real loopback TCP. Every wait is bounded.
//!
//! Shared helpers (and the relay adapter) are here; the tests are in tests/upstream/, one
//! file per topic.

mod support;

#[path = "upstream/connection.rs"]
mod connection;
#[path = "upstream/logs.rs"]
mod logs;
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
    (r, n)
}

/// The adapter `cli` needs between the inbound session and this module, written out
/// here to prove the mapping is as small as promised (and that the futures are `Send`).
mod relay_adapter {
    use super::*;
    use mailvalve::server::relay::{Relay, RelayTransaction};
    use mailvalve::upstream::Lease;

    pub struct Passthrough(pub Admission);
    pub struct Tx(Lease);

    impl Relay for Passthrough {
        type Tx = Tx;
        async fn begin(
            &self,
            env: Envelope,
            rcpts: Vec<String>,
        ) -> Result<(Tx, Reply, Vec<Reply>), Reply> {
            let mut lease = self.0.lease().await.map_err(|e| e.to_reply())?;
            match lease.envelope(&env, &rcpts).await {
                Ok((mail, rr)) if mail.class() == 2 => Ok((Tx(lease), mail, rr)),
                Ok((mail, _)) => {
                    lease.release().await;
                    Err(mail)
                }
                Err(e) => Err(e.to_reply()),
            }
        }
    }

    impl RelayTransaction for Tx {
        type Body = Vec<u8>;
        async fn body(&mut self) -> Result<Vec<u8>, Reply> {
            Ok(Vec::new())
        }
        async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
            self.0.rcpt(&rcpts).await.map_err(|e| e.to_reply())
        }
        async fn data(&mut self, message: Vec<u8>) -> Reply {
            self.0.data(&message).await.unwrap_or_else(|e| e.to_reply())
        }
        async fn end(self) {
            self.0.release().await
        }
    }
}

#[tokio::test]
async fn relay_adapter_maps_trivially() {
    use mailvalve::server::relay::{Relay, RelayTransaction};
    let p = Provider::builder()
        .rcpt_reply("bad@example.org", "550 5.1.1 No such user")
        .start()
        .await;
    let relay = relay_adapter::Passthrough(Admission::new(settings(p.upstream_config())));
    let (mut tx, mail, rr) = within(relay.begin(env("a@example.com"), rcpts(&["b@example.org"])))
        .await
        .unwrap();
    assert_eq!((mail.code, rr[0].code), (250, 250));
    let more = within(tx.rcpt(rcpts(&["bad@example.org"]))).await.unwrap();
    assert_eq!(more[0].code, 550);
    assert_eq!(within(tx.data(b"hi\r\n".to_vec())).await.code, 250);
    within(tx.end()).await;

    let p = Provider::builder()
        .mail_reply("550 5.7.1 Sender rejected")
        .start()
        .await;
    let relay = relay_adapter::Passthrough(Admission::new(settings(p.upstream_config())));
    let err = within(relay.begin(env("a@example.com"), rcpts(&["b@example.org"])))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, 550);
    assert_eq!(relay.0.limit().in_use(), 0);
    assert_eq!(relay.0.pool().idle_count(), 1);
}
