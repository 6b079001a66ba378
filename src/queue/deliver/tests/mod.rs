//! The delivery engine against a scripted transport and a fake pacing, on a real spool
//! in a temporary directory: the rig here, the tests by topic in [`pacing`] (pauses,
//! backoff, expiry) and [`storage`] (outcomes that cannot be written, what is recorded
//! when). Every wait is bounded (`until`); no assertion is about how long anything took.

mod pacing;
mod slots;
mod storage;

use super::*;
use crate::policy::classify::Classifier;
use crate::policy::verdict::Phase;
use crate::queue::transport::{LocalKind, RcptOutcome};
use crate::smtp::{EnhancedCode, Envelope};
use std::collections::HashSet;
use std::sync::atomic::AtomicU32;
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A transport that answers from a script: `pause_first` transactions get a quota
/// reply at MAIL, the rest per recipient (`defer@` 451, everything else 250), or
/// `all_reply` for every recipient when set.
struct Scripted {
    calls: AtomicU32,
    pause_first: u32,
    /// Every attempt finds admission busy (no slot or rate cell in time).
    always_busy: bool,
    all_reply: Option<(Phase, &'static str)>,
    /// Transactions from this number on wait for a permit of `release` first.
    block_from: Option<u32>,
    release: Arc<Semaphore>,
    log: Mutex<Vec<Vec<String>>>,
    /// Like the controller after a quota reply: paused for 400 ms from then.
    pause: Arc<Mutex<Option<Instant>>>,
    classifier: Classifier,
}

impl Transport for Scripted {
    async fn deliver(&self, _env: &Envelope, rcpts: &[String], _m: &[u8]) -> Vec<RcptOutcome> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push(rcpts.to_vec());
        if self.block_from.is_some_and(|b| n >= b) {
            self.release.acquire().await.unwrap().forget();
        }
        if self.always_busy {
            let reply = Reply::new(451, EnhancedCode::new(4, 7, 0), "Provider busy");
            return vec![
                RcptOutcome::Local {
                    kind: LocalKind::Busy,
                    reply
                };
                rcpts.len()
            ];
        }
        if n < self.pause_first {
            *self.pause.lock().unwrap() = Some(Instant::now() + Duration::from_millis(400));
        }
        rcpts
            .iter()
            .map(|r| {
                let (phase, text) = if n < self.pause_first {
                    (Phase::Mail, "550 5.4.5 Daily sending quota exceeded")
                } else if let Some(all) = self.all_reply {
                    all
                } else if r.starts_with("defer@") {
                    (Phase::Rcpt, "451 4.3.0 Temporary local problem")
                } else if r.starts_with("gone@") {
                    (Phase::Rcpt, "550 5.1.1 User unknown")
                } else {
                    (Phase::DataEnd, "250 2.0.0 Ok")
                };
                // Classified where it arrives, as the upstream observer does.
                let reply = Reply::parse_lenient(text).unwrap();
                RcptOutcome::Reply {
                    phase,
                    verdict: self.classifier.classify(phase, &reply).verdict,
                    reply,
                }
            })
            .collect()
    }
}

/// Paused until `until` (set by the test), backoff of 50 ms × 2^attempt; the slots a
/// test publishes (`None`: `DeliveryParams::workers`).
struct FakePacing {
    until: Arc<Mutex<Option<Instant>>>,
    slots: Option<tokio::sync::watch::Receiver<usize>>,
}

impl Pacing for FakePacing {
    fn now_ms(&self) -> u64 {
        crate::policy::clock::wall_ms()
    }
    fn paused_for(&self) -> Option<Option<Duration>> {
        let u = (*self.until.lock().unwrap())?;
        let now = Instant::now();
        (now < u).then(|| Some(u - now))
    }
    fn retry_delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        hint.unwrap_or(Duration::from_millis(50 << attempt.min(10)))
    }
    fn slots(&self) -> Option<tokio::sync::watch::Receiver<usize>> {
        self.slots.clone()
    }
}

type Engine = Delivery<Scripted, FakePacing>;

struct Rig {
    engine: Arc<Engine>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// What the transport does besides the default script.
#[derive(Default, Clone, Copy)]
struct Script {
    pause_first: u32,
    always_busy: bool,
    all_reply: Option<(Phase, &'static str)>,
    block_from: Option<u32>,
}

async fn rig(pause_first: u32, params: DeliveryParams) -> Rig {
    rig_with(pause_first, false, params).await
}

async fn rig_with(pause_first: u32, always_busy: bool, params: DeliveryParams) -> Rig {
    let script = Script {
        pause_first,
        always_busy,
        ..Script::default()
    };
    let (engine, dir) = engine_on(tempfile::tempdir().unwrap(), script, params, None);
    started(engine, dir)
}

/// An engine on the spool in `dir`, not running yet.
fn engine_on(
    dir: tempfile::TempDir,
    script: Script,
    params: DeliveryParams,
    webhook: Option<Webhook>,
) -> (Arc<Engine>, tempfile::TempDir) {
    engine_with_slots(dir, script, params, webhook, None)
}

/// [`engine_on`] with the slots following `slots`.
fn engine_with_slots(
    dir: tempfile::TempDir,
    script: Script,
    params: DeliveryParams,
    webhook: Option<Webhook>,
    slots: Option<tokio::sync::watch::Receiver<usize>>,
) -> (Arc<Engine>, tempfile::TempDir) {
    let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap();
    let pause = Arc::new(Mutex::new(None));
    let engine = Delivery::new(
        Arc::new(spool),
        Arc::new(Scripted {
            calls: AtomicU32::new(0),
            pause_first: script.pause_first,
            always_busy: script.always_busy,
            all_reply: script.all_reply,
            block_from: script.block_from,
            release: Arc::new(Semaphore::new(0)),
            log: Mutex::new(Vec::new()),
            pause: pause.clone(),
            classifier: Classifier::builtin().unwrap(),
        }),
        Arc::new(FakePacing {
            until: pause,
            slots,
        }),
        params,
    )
    .with_webhook(webhook);
    (Arc::new(engine), dir)
}

fn started(engine: Arc<Engine>, dir: tempfile::TempDir) -> Rig {
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.clone().run(stop.clone(), Duration::from_secs(2)));
    Rig {
        engine,
        stop,
        task,
        _dir: dir,
    }
}

impl Rig {
    fn calls(&self) -> u32 {
        self.engine.transport.calls.load(Ordering::SeqCst)
    }
    async fn stop(self) -> tempfile::TempDir {
        self.stop.cancel();
        self.task.await.unwrap();
        self._dir
    }
}

async fn put_in(spool: &Spool, rcpts: &[&str]) -> QueueId {
    let env = Envelope {
        from: "news@example.org".into(),
        ..Envelope::default()
    };
    let rcpts: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
    spool
        .put(&env, &rcpts, b"Subject: hi\r\n\r\nbody\r\n")
        .await
        .unwrap()
}

/// Lets the engine run for a while (a bounded observation window, no assertion on
/// how long anything took).
async fn let_it_run(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A webhook receiver: every POST body, answered `200`.
async fn webhook_server() -> (Webhook, Arc<Mutex<Vec<serde_json::Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Bounded: a request is a few hundred bytes.
                for _ in 0..100 {
                    let n = c.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            seen.lock()
                                .unwrap()
                                .push(serde_json::from_str(body).unwrap());
                            let _ = c
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let hook = Webhook::new(crate::config::webhook::WebhookConfig {
        url: format!("http://{addr}/webhooks/bounce"),
        ..crate::config::webhook::WebhookConfig::default()
    })
    .unwrap();
    (hook, seen)
}

async fn put(r: &Rig, rcpts: &[&str]) -> QueueId {
    let id = put_in(r.engine.spool(), rcpts).await;
    r.engine.waker().notify_one();
    id
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// "Today" in `queue status` counts the current local day only: a new day starts at 0.
#[test]
fn today_counts_start_again_on_a_new_day() {
    let s = DeliveryStats::default();
    s.count(Counted::Delivered, 10);
    s.count(Counted::Delivered, 10);
    s.count(Counted::Failed, 10);
    let t = s.snapshot_on(10).today;
    assert_eq!((t.delivered, t.deferred, t.failed), (2, 0, 1));
    assert_eq!(s.snapshot_on(11).today.delivered, 0);
    s.count(Counted::Deferred, 11);
    let snap = s.snapshot_on(11);
    assert_eq!((snap.today.deferred, snap.today.delivered), (1, 0));
    assert_eq!((snap.delivered, snap.failed, snap.deferred), (2, 1, 1));
    // Local days: one day apart for timestamps 24 h apart.
    let d = local_day(1_776_153_909_000);
    assert_eq!(local_day(1_776_153_909_000 + 86_400_000), d + 1);
}
