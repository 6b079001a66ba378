//! The simulated mail provider of `mailvalve demo`: our own inbound server
//! ([`crate::server`]) on `127.0.0.1:0` with a [`Relay`] that delivers nowhere and
//! decides every reply from a small, deterministic model of a provider's limits.
//!
//! It must never contact anything: no upstream, no DNS, no file. It only listens on
//! loopback and counts what arrives.
//!
//! The model:
//! - **connections**: `max_sessions = K`, so the server answers the K+1st connection with
//!   `421 4.3.2 Too many connections, try later` (a real connection limit over TCP);
//! - **rate**: a token bucket of `rate_per_minute` with a small burst, or — with a
//!   `window` — a fixed window as Postfix's anvil counts one (the unit starts at the first
//!   MAIL after the previous one ended; up to `rate_per_minute × window` MAILs pass, every
//!   further one, refused ones counted too, is refused until the unit is over); a MAIL
//!   FROM over the limit gets `450 4.7.1 Error: too much mail, slow down`;
//! - **unknown recipients**: every [`UNKNOWN_EVERY`]th reader (`n % 50 == 7`) gets
//!   `550 5.1.1 <addr>: Recipient address rejected: User unknown`;
//! - **greylisting**: the first RCPT of every [`GREYLIST_EVERY`]th reader (`n % 97 == 3`)
//!   gets `451 4.7.1 Greylisted, please try again in 3 seconds`; later ones are accepted;
//! - **delivery**: DATA takes `data_latency`, then `250`, and each accepted recipient is
//!   counted as delivered (so duplicates would show).
//!
//! Why there is a second simulated provider (`tests/sim/provider.rs`): that one answers
//! the controller directly, in simulated time (tokio's paused clock would not drive real
//! sockets), so the simulation tests can assert exact numbers over hours of traffic in
//! milliseconds; this one is a real SMTP server on loopback, in real time, so the demo
//! shows the whole path — server, relay, admission, client — that `mailvalve run` takes.
//! The limits they model are the same (connections with 421, a rate with 450 4.7.1,
//! unknown recipients); what they are driven by cannot be.

use crate::config::ServerConfig;
use crate::server::{Relay, RelayTransaction, Server, SessionStats};
use crate::smtp::{EnhancedCode, Envelope, Reply};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every 50th reader (`n % 50 == 7`) does not exist.
pub const UNKNOWN_EVERY: u64 = 50;
const UNKNOWN_AT: u64 = 7;
/// Every 97th reader (`n % 97 == 3`) is greylisted once.
pub const GREYLIST_EVERY: u64 = 97;
const GREYLIST_AT: u64 = 3;
/// The domain of every simulated reader.
pub const DOMAIN: &str = "example.test";

/// The address of reader `n`.
pub fn reader(n: u64) -> String {
    format!("reader{n}@{DOMAIN}")
}

/// The reader number of `reader{n}@example.test` (any case, with or without `<>`).
pub fn reader_number(addr: &str) -> Option<u64> {
    let a = addr.trim().trim_matches(['<', '>']).to_ascii_lowercase();
    let (local, domain) = a.split_once('@')?;
    if domain != DOMAIN {
        return None;
    }
    local.strip_prefix("reader")?.parse().ok()
}

/// Whether reader `n` is one of the unknown recipients.
pub fn is_unknown(n: u64) -> bool {
    n % UNKNOWN_EVERY == UNKNOWN_AT
}

/// Whether reader `n` is greylisted on first contact.
pub fn is_greylisted(n: u64) -> bool {
    n % GREYLIST_EVERY == GREYLIST_AT
}

/// The provider's limits.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    /// Sessions at once (K); the next one gets 421.
    pub connections: usize,
    /// Messages per minute (R) before 450 4.7.1.
    pub rate_per_minute: u32,
    /// Token-bucket burst.
    pub burst: u32,
    /// A fixed counting window instead of the token bucket (`rate_per_minute` scaled to
    /// it is the number of MAILs per window).
    pub window: Option<Duration>,
    /// How long the provider takes to accept a message after the data.
    pub data_latency: Duration,
}

/// What the provider saw so far.
#[derive(Debug, Clone, Default)]
pub struct ProviderStats {
    /// Messages accepted with 250 after DATA (one per recipient here).
    pub delivered: u64,
    /// Distinct addresses delivered to.
    pub distinct: usize,
    /// Addresses that got more than one copy.
    pub duplicates: usize,
    /// MAIL FROM refused with 450 4.7.1 (over the rate).
    pub rate_refusals: u64,
    /// RCPTs for unknown recipients that reached the provider (550 5.1.1).
    pub unknown_rcpts: u64,
    /// 451 greylisting replies given.
    pub greylisted: u64,
}

/// Token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            burst,
            per_second: f64::from(per_minute.max(1)) / 60.0,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A fixed window as anvil counts one: the unit starts at the first event after the
/// previous unit ended and lasts `len`; every event counts, refused ones too.
#[derive(Debug)]
struct Window {
    len: Duration,
    limit: u64,
    start: Option<Instant>,
    count: u64,
}

impl Window {
    fn new(per_minute: u32, len: Duration) -> Self {
        let limit = (f64::from(per_minute.max(1)) * len.as_secs_f64() / 60.0).floor();
        Self {
            len,
            // Saturating float-to-int: at least one per window.
            limit: (limit as u64).max(1),
            start: None,
            count: 0,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        match self.start {
            Some(s) if now.saturating_duration_since(s) < self.len => {}
            _ => (self.start, self.count) = (Some(now), 0),
        }
        self.count += 1;
        self.count <= self.limit
    }
}

/// The provider's message limit.
#[derive(Debug)]
enum Limiter {
    Bucket(Bucket),
    Window(Window),
}

impl Limiter {
    fn take(&mut self, now: Instant) -> bool {
        match self {
            Limiter::Bucket(b) => b.take(now),
            Limiter::Window(w) => w.take(now),
        }
    }
}

#[derive(Debug)]
struct State {
    bucket: Limiter,
    greylist_seen: HashSet<u64>,
    delivered: HashMap<String, u32>,
    stats: ProviderStats,
}

#[derive(Debug)]
struct Inner {
    data_latency: Duration,
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rcpt(&self, st: &mut State, addr: &str) -> Reply {
        let n = reader_number(addr);
        if n.is_some_and(is_unknown) {
            st.stats.unknown_rcpts += 1;
            return Reply::new(
                550,
                EnhancedCode::new(5, 1, 1),
                format!("<{addr}>: Recipient address rejected: User unknown"),
            );
        }
        if let Some(n) = n.filter(|n| is_greylisted(*n)) {
            if st.greylist_seen.insert(n) {
                st.stats.greylisted += 1;
                return Reply::new(
                    451,
                    EnhancedCode::new(4, 7, 1),
                    "Greylisted, please try again in 3 seconds",
                );
            }
        }
        Reply::new(250, EnhancedCode::new(2, 1, 5), "Ok")
    }
}

/// The simulated provider's [`Relay`]: replies from the model, mail goes nowhere.
#[derive(Debug, Clone)]
pub struct SimProvider {
    inner: Arc<Inner>,
}

impl SimProvider {
    pub fn new(spec: &ProviderSpec) -> Self {
        Self {
            inner: Arc::new(Inner {
                data_latency: spec.data_latency,
                state: Mutex::new(State {
                    bucket: match spec.window {
                        Some(len) => Limiter::Window(Window::new(spec.rate_per_minute, len)),
                        None => Limiter::Bucket(Bucket::new(spec.rate_per_minute, spec.burst)),
                    },
                    greylist_seen: HashSet::new(),
                    delivered: HashMap::new(),
                    stats: ProviderStats::default(),
                }),
            }),
        }
    }

    pub fn stats(&self) -> ProviderStats {
        self.inner.lock().stats.clone()
    }

    /// How many copies `addr` received.
    pub fn copies(&self, addr: &str) -> u32 {
        let key = addr.to_ascii_lowercase();
        self.inner.lock().delivered.get(&key).copied().unwrap_or(0)
    }
}

/// One transaction at the simulated provider.
pub struct SimTx {
    inner: Arc<Inner>,
    accepted: Vec<String>,
}

impl Relay for SimProvider {
    type Tx = SimTx;

    async fn begin(
        &self,
        _env: Envelope,
        rcpts: Vec<String>,
    ) -> Result<(SimTx, Reply, Vec<Reply>), Reply> {
        let mut st = self.inner.lock();
        if !st.bucket.take(Instant::now()) {
            st.stats.rate_refusals += 1;
            return Err(Reply::new(
                450,
                EnhancedCode::new(4, 7, 1),
                "Error: too much mail, slow down",
            ));
        }
        let mut tx = SimTx {
            inner: self.inner.clone(),
            accepted: Vec::new(),
        };
        let replies = rcpts
            .into_iter()
            .map(|r| {
                let reply = self.inner.rcpt(&mut st, &r);
                if reply.is_positive() {
                    tx.accepted.push(r);
                }
                reply
            })
            .collect();
        drop(st);
        Ok((
            tx,
            Reply::new(250, EnhancedCode::new(2, 1, 0), "Ok"),
            replies,
        ))
    }
}

impl RelayTransaction for SimTx {
    /// The simulated provider only counts messages; it takes them whole.
    type Body = Vec<u8>;

    async fn body(&mut self) -> Result<Vec<u8>, Reply> {
        Ok(Vec::new())
    }

    async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
        let mut st = self.inner.lock();
        Ok(rcpts
            .into_iter()
            .map(|r| {
                let reply = self.inner.rcpt(&mut st, &r);
                if reply.is_positive() {
                    self.accepted.push(r);
                }
                reply
            })
            .collect())
    }

    async fn data(&mut self, _message: Vec<u8>) -> Reply {
        if !self.inner.data_latency.is_zero() {
            tokio::time::sleep(self.inner.data_latency).await;
        }
        if self.accepted.is_empty() {
            return Reply::new(554, EnhancedCode::new(5, 5, 1), "No valid recipients");
        }
        let mut st = self.inner.lock();
        for r in self.accepted.drain(..) {
            let copies = st.delivered.entry(r.to_ascii_lowercase()).or_insert(0);
            *copies += 1;
            if *copies == 2 {
                st.stats.duplicates += 1;
            }
            st.stats.delivered += 1;
        }
        st.stats.distinct = st.delivered.len();
        let id = st.stats.delivered;
        Reply::new(
            250,
            EnhancedCode::new(2, 0, 0),
            format!("Ok: queued as SIM{id:06}"),
        )
    }

    async fn end(self) {}
}

/// The provider, serving on loopback.
pub struct RunningProvider {
    pub addr: SocketAddr,
    pub sim: SimProvider,
    /// Sessions now / most at once / refused with 421.
    pub sessions: Arc<SessionStats>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningProvider {
    /// Binds `127.0.0.1:0` and serves until [`RunningProvider::stop`].
    pub async fn start(spec: &ProviderSpec) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let cfg = Arc::new(ServerConfig {
            listen: addr,
            hostname: "smtp.provider.test".into(),
            max_sessions: spec.connections.max(1),
            shutdown_grace: Duration::from_secs(1),
            ..ServerConfig::default()
        });
        let sim = SimProvider::new(spec);
        let server = Server::new(cfg, Arc::new(sim.clone()))?;
        let sessions = server.stats();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = server.serve(listener, token).await {
                tracing::error!("simulated provider: {e}");
            }
        });
        Ok(Self {
            addr,
            sim,
            sessions,
            stop,
            task,
        })
    }

    /// Stops accepting, closes the sessions and waits (bounded) for the server to end.
    pub async fn stop(self) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_numbers_round_trip() {
        assert_eq!(reader_number(&reader(57)), Some(57));
        assert_eq!(reader_number("<Reader7@Example.Test>"), Some(7));
        assert_eq!(reader_number("reader7@example.org"), None);
        assert_eq!(reader_number("readerx@example.test"), None);
        assert!(is_unknown(7) && is_unknown(57) && !is_unknown(8));
        assert!(is_greylisted(3) && is_greylisted(100) && !is_greylisted(4));
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(600, 2);
        b.last = t0;
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.take(t0), "burst spent");
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "10/s refills one in 100 ms"
        );
        assert!(!b.take(t0 + Duration::from_millis(150)));
    }

    /// anvil's fixed unit: a burst up to the limit, then refusals (counted) until the
    /// unit that began with the first MAIL is over; the next MAIL starts a new one.
    #[test]
    fn fixed_window_passes_a_burst_then_refuses_until_it_ends() {
        let t0 = Instant::now();
        let mut w = Window::new(60, Duration::from_secs(5)); // 5 per 5 s
        for _ in 0..5 {
            assert!(w.take(t0));
        }
        assert!(!w.take(t0 + Duration::from_secs(1)));
        assert!(!w.take(t0 + Duration::from_millis(4999)));
        assert!(w.take(t0 + Duration::from_secs(5)), "a new unit");
        assert!(w.take(t0 + Duration::from_secs(9)));
    }

    #[tokio::test]
    async fn model_replies() {
        let p = SimProvider::new(&ProviderSpec {
            connections: 1,
            rate_per_minute: 60,
            burst: 1,
            window: None,
            data_latency: Duration::ZERO,
        });
        let rcpts = vec![reader(1), reader(7), reader(3)];
        let Ok((mut tx, mail, replies)) = p.begin(Envelope::default(), rcpts).await else {
            panic!("first MAIL within the burst");
        };
        assert_eq!(mail.code, 250);
        let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
        assert_eq!(codes, [250, 550, 451]);
        assert_eq!(tx.data(b"x\r\n".to_vec()).await.code, 250);
        tx.end().await;
        let Err(r) = p.begin(Envelope::default(), vec![reader(3)]).await else {
            panic!("second MAIL at once is over the rate");
        };
        assert_eq!(
            (r.code, r.enhanced),
            (450, Some(EnhancedCode::new(4, 7, 1)))
        );
        let s = p.stats();
        assert_eq!((s.delivered, s.unknown_rcpts, s.greylisted), (1, 1, 1));
        assert_eq!(p.copies(&reader(1)), 1);
    }
}
