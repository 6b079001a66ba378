//! `mailvalve demo`: the whole idea in under a minute, without an account. It starts a
//! simulated provider and mailvalve in front of it, both over real TCP on loopback, sends
//! a newsletter campaign through mailvalve, shows a live status line and ends with a
//! summary of what the provider did and how mailvalve reacted.
//!
//! It must never contact anything but loopback (`127.0.0.1`, ephemeral ports), never
//! touch the user's configuration or suppression list (it uses a fresh list in a
//! temporary directory and removes it), and never run unbounded: the campaign stops after
//! `--seconds-max`, every task ends, and the demo returns.
//!
//! The parts: [`provider`] (the simulated provider: a connection limit with 421, a rate
//! limit with 450 4.7.1, unknown recipients with 550 5.1.1, greylisting with 451),
//! [`campaign`] (the mailer: sender "threads" that retry 4xx after 1–3 s), and here the
//! wiring — the same [`Policy`] as `mailvalve run`, with the controller on demo
//! timescales — the live line and the summary. [`run_demo`] returns a [`DemoReport`] so
//! tests can check the numbers.

pub mod campaign;
pub mod provider;

use super::passthrough::Passthrough;
use super::run::Policy;
use super::wiring;
use crate::config::profile::{self, Limits};
use crate::config::{Config, ServerConfig, TlsMode};
use crate::policy::controller::{Controller, ControllerParams, ControllerStats};
use crate::server::suppress::SuppressingRelay;
use crate::server::SessionStats;
use crate::upstream::ConcurrencyLimit;
use anyhow::Context;
use campaign::{CampaignSpec, Counters};
use provider::{ProviderSpec, ProviderStats, RunningProvider, SimProvider};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `mailvalve demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Messages in the campaign (one reader each).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub messages: u64,
    /// Stop the campaign after this many seconds even if it is not finished (the
    /// suppression check and shutdown take a few seconds more).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub seconds_max: u64,
}

/// How the live status line is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Not at all (tests).
    Off,
    /// Redrawn in place (`\r`) every 250 ms.
    Terminal,
    /// One line every 2 s (stderr is a file or a pipe).
    Lines,
}

impl Live {
    /// `Terminal` when stderr is a terminal, else `Lines`.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Live::Terminal
        } else {
            Live::Lines
        }
    }
}

/// Everything the demo can be tuned with.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub messages: usize,
    /// The campaign stops after this.
    pub max_time: Duration,
    /// The provider's connection limit (K): the next session gets 421.
    pub provider_connections: usize,
    /// The provider's rate (R), messages per minute, before 450 4.7.1.
    pub provider_rate_per_minute: u32,
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
    pub live: Live,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            messages: 2000,
            max_time: Duration::from_secs(90),
            provider_connections: 3,
            provider_rate_per_minute: 3600,
            provider_latency: Duration::from_millis(20),
            initial_connections: 2,
            max_connections: 8,
            probe_interval: Duration::from_secs(15),
            senders: 10,
            live: Live::Off,
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
    /// The whole demo, both campaigns included.
    pub elapsed: Duration,
}

impl DemoReport {
    /// True when the campaign finished before `max_time`.
    pub fn completed(&self) -> bool {
        self.campaign.unfinished == 0 && self.second.unfinished == 0
    }

    /// Messages delivered per minute during the main campaign.
    pub fn achieved_per_minute(&self) -> f64 {
        let secs = self.campaign.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.campaign.sent as f64 * 60.0 / secs
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

/// mailvalve's configuration for the demo: upstream = the simulated provider (plain
/// SMTP on loopback), the generic profile with room to grow above the provider's limit.
fn demo_config(opts: &DemoOptions, provider: SocketAddr, dir: &TempDir) -> Config {
    let mut cfg = Config::default();
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
fn demo_params(cfg: &Config, profile: &profile::Profile, opts: &DemoOptions) -> ControllerParams {
    let base = wiring::controller_params(cfg, profile);
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

/// What the live line reads.
struct Watch {
    start: Instant,
    messages: usize,
    sim: SimProvider,
    provider_sessions: Arc<SessionStats>,
    counters: Arc<Counters>,
    controller: Arc<Controller>,
    limit: Arc<ConcurrencyLimit>,
    suppressions:
        Arc<crate::policy::suppression::Suppressions<crate::store::suppression::RedbStore>>,
}

fn per_minute(rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{:.0}/min", r * 60.0),
        None => "unlimited".into(),
    }
}

impl Watch {
    fn line(&self) -> String {
        let stats = self.controller.stats();
        format!(
            "[{:5.1}s] sent {}/{}  deferred {}  suppressed {}  connections {}/{}  rate {}  pauses {}  refused {}",
            self.start.elapsed().as_secs_f64(),
            self.sim.stats().delivered,
            self.messages,
            self.counters.deferred(),
            suppressed_count(&self.suppressions),
            self.limit.in_use(),
            self.limit.limit(),
            per_minute(self.controller.rate()),
            stats.pauses,
            self.provider_sessions.refused(),
        )
    }
}

fn suppressed_count(
    list: &crate::policy::suppression::Suppressions<crate::store::suppression::RedbStore>,
) -> usize {
    list.list().iter().filter(|e| e.suppressed).count()
}

/// Draws the live line until `stop`, then once more (final numbers).
async fn live_line(watch: Arc<Watch>, mode: Live, stop: CancellationToken) {
    let period = match mode {
        Live::Off => return,
        Live::Terminal => Duration::from_millis(250),
        Live::Lines => Duration::from_secs(2),
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut width: usize = 0;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let line = watch.line();
        let mut err = std::io::stderr().lock();
        let _ = match mode {
            Live::Terminal => {
                let pad = width.saturating_sub(line.len());
                width = line.len();
                write!(err, "\r{line}{:pad$}", "")
            }
            _ => writeln!(err, "{line}"),
        };
        if last {
            if mode == Live::Terminal {
                let _ = writeln!(err);
            }
            let _ = err.flush();
            return;
        }
        let _ = err.flush();
    }
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
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.max_time;
    let dir = TempDir::new()?;

    let provider = RunningProvider::start(&ProviderSpec {
        connections: opts.provider_connections.max(1),
        rate_per_minute: opts.provider_rate_per_minute.max(1),
        burst: 5,
        data_latency: opts.provider_latency,
    })
    .await
    .context("simulated provider")?;

    let cfg = demo_config(&opts, provider.addr, &dir);
    let profile = match profile::builtin(&cfg.upstream.profile) {
        Some(p) => p?,
        None => anyhow::bail!("the built-in profile {:?} is missing", cfg.upstream.profile),
    };
    let policy = Policy::build_with(&cfg, &profile, demo_params(&cfg, &profile, &opts))?;

    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .context("mailvalve's demo listener on 127.0.0.1")?;
    let relay_addr = listener.local_addr()?;
    let server_cfg = Arc::new(ServerConfig {
        listen: relay_addr,
        ..cfg.server.clone()
    });
    let relay = Arc::new(SuppressingRelay::new(
        Passthrough::new(policy.admission.clone()),
        policy.suppressions.clone(),
    ));
    let server_stop = CancellationToken::new();
    let server = tokio::spawn(crate::server::serve(
        listener,
        server_cfg,
        relay,
        server_stop.clone(),
    ));

    let counters = Arc::new(Counters::default());
    let watch = Arc::new(Watch {
        start: started,
        messages: opts.messages,
        sim: provider.sim.clone(),
        provider_sessions: provider.sessions.clone(),
        counters: counters.clone(),
        controller: policy.controller.clone(),
        limit: policy.admission.limit().clone(),
        suppressions: policy.suppressions.clone(),
    });
    let live_stop = CancellationToken::new();
    let live = tokio::spawn(live_line(watch, opts.live, live_stop.clone()));

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

    // The controller as the campaign left it (idle, its rate would go on ramping up).
    let controller = policy.controller.stats();
    let final_rate = policy.controller.rate();

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

    live_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), live).await;

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
        suppressed: suppressed_count(&policy.suppressions),
        controller,
        final_rate,
        max_connections_used: policy.admission.limit().max_in_use(),
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

    // Shutdown, every step bounded: mailvalve's server, its provider connections, the
    // provider.
    server_stop.cancel();
    let abort = server.abort_handle();
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("demo relay: {e}"),
        Ok(Err(e)) => tracing::warn!("demo relay task: {e}"),
        Err(_) => abort.abort(),
    }
    let _ =
        tokio::time::timeout(Duration::from_secs(5), policy.admission.pool().close_idle()).await;
    provider.stop().await;
    drop(policy);
    drop(dir);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The summary printed at the end.
pub fn summary(r: &DemoReport) -> String {
    let o = &r.options;
    let c = &r.campaign;
    let s = &r.controller;
    let mut out = String::new();
    let status = if r.completed() {
        "finished"
    } else {
        "STOPPED at --seconds-max"
    };
    out.push_str(&format!(
        "\nmailvalve demo {status} in {:.1} s\n\n",
        r.elapsed.as_secs_f64()
    ));
    out.push_str(&format!(
        "  provider (simulated)  {} connections at once, {}/min, {} unknown recipients, greylisting\n",
        o.provider_connections,
        o.provider_rate_per_minute,
        r.unknown
    ));
    out.push_str(&format!(
        "  campaign              {} messages from {} sender threads, in {:.1} s\n",
        c.messages,
        o.senders,
        c.elapsed.as_secs_f64()
    ));
    out.push_str(&format!(
        "  delivered             {} of {} valid addresses exactly once ({} twice or more, {} missing)\n",
        r.delivered_once, r.valid, r.delivered_twice_or_more, r.missing
    ));
    out.push_str(&format!(
        "  achieved rate         {:.0}/min ({:.0}% of the provider's {}/min)\n",
        r.achieved_per_minute(),
        100.0 * r.achieved_per_minute() / f64::from(o.provider_rate_per_minute.max(1)),
        o.provider_rate_per_minute
    ));
    out.push_str(&format!(
        "  deferred (4xx)        {} = {} rate 450 4.7.1 + {} greylisting 451 + {} refused connection + {} held back by mailvalve\n",
        c.deferred(),
        c.deferred_rate,
        c.deferred_greylist,
        c.deferred_refused,
        c.deferred_held
    ));
    out.push_str(&format!(
        "  failed (5xx)          {} unknown recipients; suppression list now holds {}\n",
        c.failed, r.suppressed
    ));
    out.push_str(&format!(
        "  second campaign       {} messages to the unknown addresses: {} answered by mailvalve, {} reached the provider\n",
        r.second.messages, r.second.answered_locally, r.second_reached_provider
    ));
    out.push_str(&format!(
        "  provider saw          at most {} sessions at once, {} refused with 421, {} MAIL refused with 450\n",
        r.provider_max_sessions, r.provider_refused, r.provider.rate_refusals
    ));
    out.push_str(&format!(
        "  mailvalve ended at    {} connections allowed (ceiling {}; at most {} open or being opened at once), rate {} (ceiling {}); {} connection decreases, {} rate decreases, {} pauses\n",
        s.concurrency_limit,
        s.concurrency_ceiling
            .map_or_else(|| "none".to_string(), |c| c.to_string()),
        r.max_connections_used,
        per_minute(r.final_rate),
        s.rate_ceiling
            .map_or_else(|| "none".to_string(), |c| per_minute(Some(c))),
        s.connection_decreases,
        s.rate_decreases,
        s.pauses
    ));
    out.push('\n');
    out.push_str(&explain(r));
    out.push('\n');
    out
}

/// One paragraph: what happened, in words.
fn explain(r: &DemoReport) -> String {
    let o = &r.options;
    let c = &r.campaign;
    let s = &r.controller;
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let mut p = format!(
        "What happened: the mailer opened {} sessions to mailvalve and sent as fast as it \
         could. mailvalve started with {} connection{} to the provider and added one after \
         each run of successful messages; ",
        o.senders,
        o.initial_connections,
        plural(o.initial_connections as u64)
    );
    if r.provider_refused > 0 {
        p.push_str(&format!(
            "when the provider refused a connection with 421 ({} time{} in all, probes \
             included) it dropped back at once to the connections that were working, and \
             tried one more only after {} s. The provider never saw more than its {} \
             sessions. ",
            r.provider_refused,
            plural(r.provider_refused),
            o.probe_interval.as_secs(),
            o.provider_connections
        ));
    } else {
        p.push_str("the provider never had to refuse a connection. ");
    }
    if s.rate_decreases > 0 {
        p.push_str(&format!(
            "It knew no rate limit to begin with: the provider's \"450 4.7.1 too much mail\" \
             replies ({} in all) made it halve its rate {} time{}, after which it ramped back \
             up in 10% steps to just below the rate that had been refused. Over the whole \
             campaign the provider accepted {:.0} messages a minute of the {} it allows. ",
            r.provider.rate_refusals,
            s.rate_decreases,
            plural(s.rate_decreases),
            r.achieved_per_minute(),
            o.provider_rate_per_minute
        ));
    }
    p.push_str(&format!(
        "The mailer saw {} 4xx replies ({} rate, {} greylisting, {} refused connection, {} \
         held back by mailvalve because no connection or rate slot was free within 2 s) and \
         retried each after 1-3 s; the greylisted addresses went through on their second \
         try. The {} unknown addresses were rejected by the provider once each with 550 \
         5.1.1 and went on the suppression list, so in the second campaign mailvalve \
         answered {} of {} of them itself and the provider never saw those addresses again.",
        c.deferred(),
        c.deferred_rate,
        c.deferred_greylist,
        c.deferred_refused,
        c.deferred_held,
        r.suppressed,
        r.second.answered_locally,
        r.second.messages
    ));
    wrap(&p, 88)
}

fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut col = 0;
    for word in text.split_whitespace() {
        if col > 0 && col + 1 + word.len() > width {
            out.push('\n');
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out.push('\n');
    out
}

/// `mailvalve demo`: runs the demo on its own runtime and prints the summary.
pub fn main(args: &DemoArgs) -> anyhow::Result<()> {
    // Quiet by default: the live line and the summary tell the story. RUST_LOG=info
    // shows every provider reply and every policy decision.
    super::logging::init_tracing("error");
    let opts = DemoOptions {
        messages: usize::try_from(args.messages).unwrap_or(usize::MAX),
        max_time: Duration::from_secs(args.seconds_max),
        live: Live::for_stderr(),
        ..DemoOptions::default()
    };
    eprintln!(
        "mailvalve demo: a simulated provider ({} connections, {}/min, unknown recipients, \
         greylisting) on 127.0.0.1, mailvalve in front of it, {} messages from {} sender threads.",
        opts.provider_connections, opts.provider_rate_per_minute, opts.messages, opts.senders
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(run_demo(opts))?;
    print!("{}", summary(&report));
    let _ = std::io::stdout().flush();
    if !report.completed() {
        anyhow::bail!(
            "the demo stopped after --seconds-max={} with {} messages unfinished",
            args.seconds_max,
            report.campaign.unfinished + report.second.unfinished
        );
    }
    Ok(())
}
