//! The demo's engine: a simulated provider ([`provider`]), mailvalve in front of it (the
//! same `relay::Relay` as `mailvalve run`, with the controller on demo timescales), and
//! a newsletter campaign through it ([`campaign`]), all over real TCP on loopback.
//! [`run_demo`] returns a [`DemoReport`] so tests can check the numbers; `cli::demo`
//! prints the live line and the summary.
//!
//! Two shows: **queue mode** (the default, as `mailvalve run` runs): the mailer hands the
//! whole campaign over in seconds, then mailvalve paces it out against a provider that
//! counts in fixed windows (as Postfix's anvil does), and says what it learned;
//! **passthrough** (`--mode passthrough`): every transaction relayed live against a
//! token-bucket provider, the mailer's threads slowed down by mailvalve's admission.
//!
//! It must never contact anything but loopback (`127.0.0.1`, ephemeral ports), never
//! touch the user's configuration, spool or suppression list (it uses fresh ones in a
//! temporary directory and removes them), never print (that is `cli`), and never run
//! unbounded: the campaign stops after `max_time`, every task ends, and the demo returns.
//!
//! The parts: [`provider`] (the simulated provider: a connection limit with 421, a rate
//! limit with 450 4.7.1, unknown recipients with 550 5.1.1, greylisting with 451),
//! [`campaign`] (the mailer: sender "threads" that retry 4xx after 1–3 s), and here the
//! wiring and the report.

pub mod campaign;
pub mod provider;

use crate::config::limits::Limits;
use crate::config::profile::Profile;
use crate::config::{Config, Mode, TlsMode};
use crate::policy::controller::{ControllerParams, ControllerStats};
use crate::policy::memory::LearnedState;
use crate::relay::{limits, Relay, RelayHandle};
use crate::server::SessionStats;
use anyhow::Context;
use campaign::{CampaignSpec, Counters};
use provider::{ProviderSpec, ProviderStats, RunningProvider, SimProvider};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything the demo can be tuned with.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Queue (store-and-forward, the default) or passthrough.
    pub mode: Mode,
    pub messages: usize,
    /// The campaign stops after this.
    pub max_time: Duration,
    /// The provider's connection limit (K): the next session gets 421.
    pub provider_connections: usize,
    /// The provider's rate (R), messages per minute, before 450 4.7.1.
    pub provider_rate_per_minute: u32,
    /// The provider counts in fixed windows of this length (R scaled to the window per
    /// window, as anvil does); `None`: a token bucket.
    pub provider_window: Option<Duration>,
    /// How long the provider takes per message.
    pub provider_latency: Duration,
    /// mailvalve's connection limit starts here ...
    pub initial_connections: usize,
    /// ... and may grow up to here (above K: it has to learn K).
    pub max_connections: usize,
    /// How long a learned ceiling holds before mailvalve probes above it once.
    pub probe_interval: Duration,
    /// The mailer's sender "threads".
    pub senders: usize,
}

impl Default for DemoOptions {
    /// Queue mode: 1000 messages against a provider with a fixed window of 5 s.
    fn default() -> Self {
        Self {
            mode: Mode::Queue,
            messages: 1000,
            max_time: Duration::from_secs(120),
            provider_window: Some(Duration::from_secs(5)),
            ..Self::passthrough()
        }
    }
}

impl DemoOptions {
    /// The passthrough show: a token-bucket provider, every transaction relayed live.
    pub fn passthrough() -> Self {
        Self {
            mode: Mode::Passthrough,
            messages: 2000,
            max_time: Duration::from_secs(90),
            provider_connections: 3,
            provider_rate_per_minute: 3600,
            provider_window: None,
            provider_latency: Duration::from_millis(20),
            initial_connections: 2,
            max_connections: 8,
            probe_interval: Duration::from_secs(15),
            senders: 10,
        }
    }
}

/// The mailer's view of one campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CampaignTotals {
    pub messages: usize,
    pub sent: u64,
    /// 4xx replies, each followed by a retry: the provider's rate limit (450 4.7.1) ...
    pub deferred_rate: u64,
    /// ... greylisting (451 4.7.1) ...
    pub deferred_greylist: u64,
    /// ... a connection the provider refused (421, relayed as 451 4.4.1/4.7.0) ...
    pub deferred_refused: u64,
    /// ... and mailvalve holding the message back (no connection or rate slot within
    /// `admission_wait`).
    pub deferred_held: u64,
    /// 5xx: given up.
    pub failed: u64,
    /// Of those, answered by mailvalve itself (a suppressed address).
    pub answered_locally: u64,
    /// Neither sent nor failed when it stopped.
    pub unfinished: usize,
    pub elapsed: Duration,
}

impl CampaignTotals {
    pub fn deferred(&self) -> u64 {
        self.deferred_rate + self.deferred_greylist + self.deferred_refused + self.deferred_held
    }

    fn from_counters(messages: usize, c: &Counters, unfinished: usize, elapsed: Duration) -> Self {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Self {
            messages,
            sent: get(&c.sent),
            deferred_rate: get(&c.deferred_rate),
            deferred_greylist: get(&c.deferred_greylist),
            deferred_refused: get(&c.deferred_refused),
            deferred_held: get(&c.deferred_held),
            failed: get(&c.failed),
            answered_locally: get(&c.answered_locally),
            unfinished,
            elapsed,
        }
    }
}

/// What happened, in numbers.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub options: DemoOptions,
    /// The main campaign (every reader once).
    pub campaign: CampaignTotals,
    /// The second campaign: the unknown addresses again.
    pub second: CampaignTotals,
    /// Unknown-recipient RCPTs that reached the provider during the second campaign.
    pub second_reached_provider: u64,
    /// Readers with an existing address, and how many of them the provider got exactly
    /// once / more than once / never.
    pub valid: usize,
    pub delivered_once: usize,
    pub delivered_twice_or_more: usize,
    pub missing: usize,
    /// Unknown readers in the campaign.
    pub unknown: usize,
    pub provider: ProviderStats,
    /// Sessions at the provider: most at once, refused with 421.
    pub provider_max_sessions: usize,
    pub provider_refused: u64,
    /// Addresses on mailvalve's suppression list at the end.
    pub suppressed: usize,
    /// mailvalve's controller at the end of the main campaign, and its rate then
    /// (messages/s).
    pub controller: ControllerStats,
    pub final_rate: Option<f64>,
    /// Most provider connections mailvalve held at once, a refused attempt included.
    pub max_connections_used: usize,
    /// What mailvalve learned, as it would save it for a restart (rate and its ceiling,
    /// the provider's window when inferred, connections).
    pub learned: LearnedState,
    /// Queue mode: from the start of the campaign until the spool was empty (every
    /// message delivered or failed); `None` in passthrough or when it never emptied.
    pub drained: Option<Duration>,
    /// Queue mode: from the start until the spool was empty or the demo stopped.
    pub delivering: Duration,
    /// Queue mode: messages still in the spool when the demo stopped.
    pub left_in_queue: usize,
    /// The whole demo, both campaigns included.
    pub elapsed: Duration,
}

impl DemoReport {
    /// True when the campaign finished before `max_time` (queue mode: and the spool
    /// was emptied).
    pub fn completed(&self) -> bool {
        self.campaign.unfinished == 0
            && self.second.unfinished == 0
            && (self.options.mode == Mode::Passthrough || self.drained.is_some())
    }

    /// Messages delivered per minute during the main campaign (queue mode: until the
    /// spool was empty).
    pub fn achieved_per_minute(&self) -> f64 {
        let (n, d) = match self.options.mode {
            Mode::Passthrough => (self.campaign.sent, self.campaign.elapsed),
            Mode::Queue => (self.provider.delivered, self.delivering),
        };
        let secs = d.as_secs_f64();
        if secs > 0.0 {
            n as f64 * 60.0 / secs
        } else {
            0.0
        }
    }
}

/// A temporary directory for the demo's suppression list, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("mailvalve-demo-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// mailvalve's configuration for the demo: the chosen mode, upstream = the simulated
/// provider (plain SMTP on loopback), the generic profile with room to grow above the
/// provider's limit; the spool, the suppression list and the control socket in the
/// demo's own directory. Queue mode sends no bounce reports (they would go to the
/// simulated provider too).
fn demo_config(opts: &DemoOptions, provider: SocketAddr, dir: &TempDir) -> Config {
    let mut cfg = Config {
        mode: opts.mode,
        ..Config::default()
    };
    cfg.queue.dir = dir.0.join("spool");
    cfg.queue.bounces = false;
    cfg.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.server.shutdown_grace = Duration::from_secs(2);
    let up = &mut cfg.upstream;
    up.host = provider.ip().to_string();
    up.port = provider.port();
    up.tls = TlsMode::None;
    up.helo_name = "mailvalve.demo.test".into();
    up.profile = "generic".into();
    up.max_connections = opts.max_connections.max(1);
    // One connection carries the whole campaign: no reconnect churn in the picture.
    up.max_messages_per_connection = 100_000;
    up.admission_wait = Duration::from_secs(2);
    up.limits = Limits {
        initial_connections: Some(opts.initial_connections.max(1)),
        max_connections: Some(opts.max_connections.max(1)),
        ..Limits::default()
    };
    let t = &mut up.timeouts;
    t.connect = Duration::from_secs(5);
    t.greeting = Duration::from_secs(10);
    t.command = Duration::from_secs(10);
    t.mail = Duration::from_secs(10);
    t.rcpt = Duration::from_secs(10);
    t.data = Duration::from_secs(10);
    t.data_block = Duration::from_secs(10);
    t.data_end = Duration::from_secs(10);
    cfg.suppression.path = dir.0.join("suppression.redb");
    cfg
}

/// The controller on demo timescales: no rate ceiling (it must learn the provider's
/// rate from the 450s), a one-second ramp window, probes every `probe_interval`.
fn demo_params(cfg: &Config, profile: &Profile, opts: &DemoOptions) -> ControllerParams {
    let base = limits::controller_params(cfg, profile);
    ControllerParams {
        rate_per_second: None,
        rate_floor: ControllerParams::default().rate_floor,
        probe_interval: opts.probe_interval,
        ramp_window: Duration::from_secs(1),
        rate_holdoff: Duration::from_millis(500),
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(10),
        retry_min: Duration::from_millis(100),
        connect_backoff_base: Duration::from_millis(200),
        connect_backoff_max: Duration::from_secs(2),
        ..base
    }
}

/// What the demo looks like while it runs (for a live status line).
#[derive(Clone)]
pub struct Watch {
    start: Instant,
    messages: usize,
    sim: SimProvider,
    provider_sessions: Arc<SessionStats>,
    counters: Arc<Counters>,
    relay: RelayHandle,
}

/// One reading of [`Watch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    pub delivered: u64,
    pub messages: usize,
    pub deferred: u64,
    pub suppressed: usize,
    pub connections_in_use: usize,
    pub connection_limit: usize,
    /// mailvalve's rate now, messages/s; `None` = unlimited.
    pub rate: Option<f64>,
    pub pauses: u64,
    /// Sessions the provider refused with 421.
    pub refused: u64,
    /// Queue mode: messages in the spool.
    pub queued: Option<usize>,
}

impl Watch {
    pub fn progress(&self) -> Progress {
        let limits = self.relay.limits();
        Progress {
            elapsed: self.start.elapsed(),
            delivered: self.sim.stats().delivered,
            messages: self.messages,
            deferred: self.counters.deferred(),
            suppressed: suppressed_count(&self.relay),
            connections_in_use: limits.connections_in_use,
            connection_limit: limits.controller.concurrency_limit,
            rate: self.relay.policy().controller.rate(),
            pauses: limits.controller.pauses,
            refused: self.provider_sessions.refused(),
            queued: self.relay.spool().map(|s| s.len()),
        }
    }
}

fn suppressed_count(relay: &RelayHandle) -> usize {
    relay
        .policy()
        .suppressions
        .list()
        .iter()
        .filter(|e| e.suppressed)
        .count()
}

/// Runs one campaign with its own counters until done or `deadline`.
async fn campaign_until(
    spec: CampaignSpec,
    counters: Arc<Counters>,
    deadline: tokio::time::Instant,
) -> CampaignTotals {
    let messages = spec.readers.len();
    let start = Instant::now();
    let stop = CancellationToken::new();
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            stop.cancel();
        })
    };
    let out = campaign::run(spec, counters.clone(), stop).await;
    timer.abort();
    CampaignTotals::from_counters(messages, &counters, out.unfinished, start.elapsed())
}

/// Runs the whole demo: provider, mailvalve, the campaign, the unknown addresses once
/// more, and a clean shutdown. The report says what happened.
pub async fn run_demo(opts: DemoOptions) -> anyhow::Result<DemoReport> {
    run_demo_watched(opts, |_| {}).await
}

/// [`run_demo`], handing `on_start` a [`Watch`] once mailvalve serves (for a live line).
pub async fn run_demo_watched(
    opts: DemoOptions,
    on_start: impl FnOnce(Watch),
) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.max_time;
    let dir = TempDir::new()?;

    let provider = RunningProvider::start(&ProviderSpec {
        connections: opts.provider_connections.max(1),
        rate_per_minute: opts.provider_rate_per_minute.max(1),
        burst: 5,
        window: opts.provider_window,
        data_latency: opts.provider_latency,
    })
    .await
    .context("simulated provider")?;

    let cfg = demo_config(&opts, provider.addr, &dir);
    let profile = crate::relay::profile_of(&cfg)?;
    let params = demo_params(&cfg, &profile, &opts);
    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .context("mailvalve's demo listener on 127.0.0.1")?;
    let relay = Relay::with_params(cfg, params)?
        .start(listener, CancellationToken::new())
        .await?;
    let relay_addr = relay.local_addr();
    let handle = relay.handle().clone();
    let policy = handle.policy().clone();

    let counters = Arc::new(Counters::default());
    on_start(Watch {
        start: started,
        messages: opts.messages,
        sim: provider.sim.clone(),
        provider_sessions: provider.sessions.clone(),
        counters: counters.clone(),
        relay: handle.clone(),
    });

    let readers: Vec<u64> = (0..opts.messages as u64).collect();
    let unknown: Vec<u64> = readers
        .iter()
        .copied()
        .filter(|n| provider::is_unknown(*n))
        .collect();
    let retry = (Duration::from_secs(1), Duration::from_secs(3));
    let first = campaign_until(
        CampaignSpec {
            relay: relay_addr,
            readers: readers.clone(),
            senders: opts.senders.max(1),
            retry_min: retry.0,
            retry_max: retry.1,
        },
        counters.clone(),
        deadline,
    )
    .await;

    // Queue mode: the mailer is done; mailvalve paces the spool out to the provider.
    let drained = match handle.spool() {
        Some(spool) if opts.mode == Mode::Queue => {
            let spool = spool.clone();
            loop {
                if spool.is_empty() {
                    break Some(started.elapsed());
                }
                if tokio::time::Instant::now() >= deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        _ => None,
    };

    // The controller as the campaign left it (idle, its rate would go on ramping up).
    let controller = policy.controller.stats();
    let final_rate = policy.controller.rate();
    let learned = policy.controller.memory();
    let delivering = drained.unwrap_or_else(|| started.elapsed());
    let left_in_queue = handle.spool().map_or(0, |s| s.len());

    // The next campaign goes to the same list: the unknown addresses must now be
    // answered by mailvalve itself, without reaching the provider.
    let before = provider.sim.stats().unknown_rcpts;
    let second_deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(10));
    let second = campaign_until(
        CampaignSpec {
            relay: relay_addr,
            readers: unknown.clone(),
            senders: 2,
            retry_min: retry.0,
            retry_max: retry.1,
        },
        Arc::new(Counters::default()),
        second_deadline,
    )
    .await;
    let pstats = provider.sim.stats();
    let second_reached_provider = pstats.unknown_rcpts.saturating_sub(before);

    let mut report = DemoReport {
        campaign: first,
        second,
        second_reached_provider,
        valid: 0,
        delivered_once: 0,
        delivered_twice_or_more: 0,
        missing: 0,
        unknown: unknown.len(),
        provider: pstats,
        provider_max_sessions: provider.sessions.max_active(),
        provider_refused: provider.sessions.refused(),
        suppressed: suppressed_count(&handle),
        controller,
        final_rate,
        max_connections_used: policy.admission.limit().max_in_use(),
        learned,
        drained,
        delivering,
        left_in_queue,
        elapsed: Duration::ZERO,
        options: opts,
    };
    for &n in readers.iter().filter(|n| !provider::is_unknown(**n)) {
        report.valid += 1;
        match provider.sim.copies(&provider::reader(n)) {
            0 => report.missing += 1,
            1 => report.delivered_once += 1,
            _ => report.delivered_twice_or_more += 1,
        }
    }

    // Shutdown, every step bounded: mailvalve (its server, then its provider
    // connections), the provider.
    drop(handle);
    match tokio::time::timeout(Duration::from_secs(15), relay.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("demo relay: {e}"),
        Err(_) => tracing::warn!("demo relay: did not stop within 15 s"),
    }
    provider.stop().await;
    drop(policy);
    drop(dir);
    report.elapsed = started.elapsed();
    Ok(report)
}
