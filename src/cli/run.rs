//! `mailvalve run`: start the relay with a loaded, validated configuration and serve
//! until SIGTERM or Ctrl-C, then shut down gracefully (open sessions get `421 4.3.2`).
//!
//! This is where the pieces are wired: the inbound server, the suppression list, the
//! passthrough relay over the upstream admission stack (or, in queue mode, the spool,
//! the queue relay and the delivery engine over that same stack), and the policy (classifier →
//! controller → pause gate, adaptive rate and concurrency) fed by every upstream reply.
//! SIGHUP resumes a paused account. It must never log the
//! configuration unredacted (`Secret` prints `***`).

use super::passthrough::Passthrough;
use super::queue_relay::QueueRelay;
use super::queue_transport::AdmissionTransport;
use super::wiring;
use crate::config::profile::{self, Profile};
use crate::config::Config;
use crate::config::Mode;
use crate::policy::classify::Classifier;
use crate::policy::clock::SystemClock;
use crate::policy::controller::{Controller, ControllerParams};
use crate::policy::suppression::{Recorder, Suppressions};
use crate::queue::deliver::{Delivery, DeliveryParams, SuppressedFn};
use crate::queue::delivery_log::DeliveryLog;
use crate::queue::quota::Ledger;
use crate::queue::webhook::Webhook;
use crate::queue::{control, Spool};
use crate::server::relay::BufferBudget;
use crate::server::suppress::SuppressingRelay;
use crate::store::suppression::RedbStore;
use crate::upstream::observer::PolicyObserver;
use crate::upstream::{Admission, ConcurrencyLimit, Settings};
use anyhow::Context;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs until shutdown. The configuration has already passed `config::validate`.
pub fn run(config: Config) -> anyhow::Result<()> {
    super::logging::init_tracing(&config.log.level);
    for w in crate::config::warnings(&config) {
        tracing::warn!("config: {w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let profile = match profile::builtin(&config.upstream.profile) {
        Some(p) => p?,
        None => anyhow::bail!(
            "config key upstream.profile: no provider profile {:?} (known: {})",
            config.upstream.profile,
            profile::names().collect::<Vec<_>>().join(", ")
        ),
    };
    let policy = Policy::build(&config, &profile)?;

    let listener = crate::server::bind(config.server.listen, config.server.listen_backlog)
        .with_context(|| {
            format!(
                "config key server.listen: cannot listen on {}",
                config.server.listen
            )
        })?;
    tracing::info!(
        listen = %config.server.listen,
        upstream = %format_args!("{}:{}", config.upstream.host, config.upstream.port),
        profile = %profile.name,
        mode = ?config.mode,
        "mailvalve ready"
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    tokio::spawn(resume_on_hangup(policy.controller.clone()));
    match config.mode {
        Mode::Passthrough => {
            let buffer = BufferBudget::new(
                config.server.passthrough_buffer,
                config.server.passthrough_buffer_wait,
            );
            // `mailvalve suppress ...` reaches the open list over the control socket.
            #[cfg(unix)]
            {
                let instance =
                    control::Instance::default().with_suppressions(policy.suppressions.clone());
                match control::serve(instance, config.queue.dir.clone(), shutdown.clone()) {
                    Ok(task) => drop(tokio::spawn(task)),
                    Err(e) => tracing::warn!(
                        "no control socket, `mailvalve suppress` cannot reach this instance: {e}"
                    ),
                }
            }
            let relay = Arc::new(SuppressingRelay::new(
                Passthrough::new(policy.admission.clone()).with_buffer(buffer),
                policy.suppressions.clone(),
            ));
            crate::server::serve(listener, Arc::new(config.server), relay, shutdown).await?;
        }
        Mode::Queue => {
            let queue = QueueMode::start(&config, &profile, &policy, shutdown.clone()).await?;
            let relay = Arc::new(SuppressingRelay::new(
                queue.relay.clone(),
                policy.suppressions.clone(),
            ));
            let served =
                crate::server::serve(listener, Arc::new(config.server.clone()), relay, shutdown)
                    .await;
            queue.stop().await;
            served?;
        }
    }
    tracing::info!("mailvalve stopped");
    Ok(())
}

/// Queue mode's running parts: the spool, the relay that fills it and the delivery
/// engine that empties it.
pub struct QueueMode {
    pub relay: QueueRelay,
    pub delivery: Arc<Delivery<AdmissionTransport, Controller>>,
    task: tokio::task::JoinHandle<()>,
}

impl QueueMode {
    /// Opens (and recovers) the spool and starts delivering. `shutdown` stops delivery;
    /// transactions in flight get `server.shutdown_grace` to finish.
    pub async fn start(
        config: &Config,
        profile: &Profile,
        policy: &Policy,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let qc = &config.queue;
        let dir = qc.dir.clone();
        let (spool, recovered) = tokio::task::spawn_blocking(move || Spool::open(&dir))
            .await
            .context("spool open task failed")?
            .with_context(|| {
                format!(
                    "config key queue.dir: cannot open the spool {}",
                    qc.dir.display()
                )
            })?;
        tracing::info!(
            dir = %qc.dir.display(),
            messages = recovered.messages,
            pending_recipients = recovered.pending_recipients,
            removed_partial = recovered.removed_partial,
            removed_orphans = recovered.removed_orphan_bodies + recovered.removed_orphan_records.len(),
            removed_finished = recovered.removed_finished,
            "spool opened"
        );
        let spool = Arc::new(spool);
        let limits = wiring::limits(config, profile);
        let params = DeliveryParams {
            workers: policy.controller.params().max_connections,
            rcpts_per_message: limits.recipients_per_message.unwrap_or(100).max(1),
            max_age: qc.max_age,
            bounces: qc.bounces,
            bounce_from: qc.bounce_from.clone(),
            hostname: config.server.hostname.clone(),
            ..DeliveryParams::default()
        };
        let log = match qc.delivery_log_path() {
            Some(p) => DeliveryLog::open(&p).with_context(|| {
                format!("config key queue.delivery_log: cannot open {}", p.display())
            })?,
            None => DeliveryLog::disabled(),
        };
        let webhook = match &qc.webhook {
            Some(w) => Some(
                Webhook::new(w.clone())
                    .map_err(|e| anyhow::anyhow!("config key queue.webhook.url: {e}"))?,
            ),
            None => None,
        };
        let list = policy.suppressions.clone();
        let suppressed: Arc<SuppressedFn> =
            Arc::new(move |addr: &str| list.lookup(addr).map(|e| e.rcpt_reply()));
        let delivery = Arc::new(
            Delivery::new(
                spool.clone(),
                Arc::new(AdmissionTransport::new(policy.admission.clone())),
                policy.controller.clone(),
                policy.classifier.clone(),
                params,
            )
            .with_suppression(suppressed)
            .with_log(log)
            .with_webhook(webhook),
        );
        let paused = control::pause_flag(&qc.dir).exists();
        if paused {
            tracing::warn!("queue: delivery paused by operator (mailvalve queue resume)");
        }
        delivery.hold_flag().store(paused, Ordering::Release);
        #[cfg(unix)]
        {
            let hooks = Arc::new(LiveHooks {
                delivery: delivery.clone(),
                controller: policy.controller.clone(),
            });
            let instance = control::Instance::queue(spool.clone(), hooks)
                .with_suppressions(policy.suppressions.clone());
            match control::serve(instance, qc.dir.clone(), shutdown.clone()) {
                Ok(task) => drop(tokio::spawn(task)),
                Err(e) => tracing::warn!(
                    "queue: no control socket, `mailvalve queue` and `mailvalve suppress` cannot reach this instance: {e}"
                ),
            }
        }
        // Before the first delivery: messages sent before a restart count against the
        // hourly and daily quotas.
        let ledger = Ledger::load(&qc.dir);
        let rates = policy.admission.rates().clone();
        let now = crate::queue::spool::now_ms();
        let (hour, day) = (ledger.last_hour(now), ledger.last_day(now));
        if hour > 0 || day > 0 {
            tracing::info!(
                last_hour = hour,
                last_day = day,
                "quota: counting messages sent before the restart"
            );
        }
        rates.preload(hour, day);
        tokio::spawn(keep_quota_ledger(
            ledger,
            qc.dir.clone(),
            rates,
            shutdown.clone(),
        ));
        let relay = QueueRelay::new(spool, delivery.waker());
        let task = tokio::spawn(delivery.clone().run(shutdown, config.server.shutdown_grace));
        Ok(Self {
            relay,
            delivery,
            task,
        })
    }

    /// Waits for the delivery engine to stop (after the shutdown token was cancelled).
    pub async fn stop(self) {
        if let Err(e) = self.task.await {
            tracing::error!("delivery engine ended abnormally: {e}");
        }
    }
}

/// Everything the policy consists of at run time, built from config + profile.
pub struct Policy {
    pub controller: Arc<Controller>,
    pub classifier: Arc<Classifier>,
    pub admission: Admission,
    pub suppressions: Arc<Suppressions<RedbStore>>,
}

impl Policy {
    /// Classifier, controller, the observer that feeds it from every upstream reply, and
    /// the admission stack it gates.
    pub fn build(config: &Config, profile: &Profile) -> anyhow::Result<Self> {
        Self::build_with(config, profile, wiring::controller_params(config, profile))
    }

    /// [`Policy::build`] with the controller's parameters given instead of derived from
    /// config + profile (`mailvalve demo` runs the same loop on shorter timescales).
    pub fn build_with(
        config: &Config,
        profile: &Profile,
        params: ControllerParams,
    ) -> anyhow::Result<Self> {
        let classifier = Arc::new(wiring::classifier(config, profile)?);
        tracing::info!(
            initial_connections = params.initial_connections,
            max_connections = params.max_connections,
            rate_per_second = ?params.rate_per_second,
            "policy limits"
        );
        let controller = Arc::new(Controller::new(params, SystemClock::new()));
        let suppressions = Arc::new(super::suppress::open(config)?);
        let limit = ConcurrencyLimit::new(controller.concurrency_limit());
        let mut upstream = config.upstream.clone();
        upstream.rate = wiring::fixed_rates(config, profile);
        let observer = Arc::new(PolicyObserver::new(
            classifier.clone(),
            controller.clone(),
            Some(suppressions.clone() as Arc<dyn Recorder>),
            limit.clone(),
        ));
        let settings = Settings::new(upstream)
            .map_err(|e| anyhow::anyhow!("upstream: {e}"))?
            .with_observer(observer);
        let admission = Admission::with_policy(settings, controller.clone(), limit);
        Ok(Self {
            controller,
            classifier,
            admission,
            suppressions,
        })
    }
}

/// Saves what was sent every 5 s (and at shutdown) into the quota ledger.
async fn keep_quota_ledger(
    mut ledger: Ledger,
    dir: std::path::PathBuf,
    rates: Arc<crate::upstream::rate_limit::RateLimits>,
    shutdown: CancellationToken,
) {
    let mut seen = rates.taken();
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => false,
            _ = shutdown.cancelled() => true,
        };
        let taken = rates.taken();
        let n = u32::try_from(taken.saturating_sub(seen)).unwrap_or(u32::MAX);
        seen = taken;
        if n > 0 {
            ledger.add(crate::queue::spool::now_ms(), n);
            let (l, d) = (ledger.clone(), dir.clone());
            match tokio::task::spawn_blocking(move || l.save(&d)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("quota ledger not saved: {e}"),
                Err(e) => tracing::warn!("quota ledger not saved: {e}"),
            }
        }
        if stop {
            break;
        }
    }
}

/// `mailvalve queue pause | resume | status` against the running instance.
struct LiveHooks {
    delivery: Arc<Delivery<AdmissionTransport, Controller>>,
    controller: Arc<Controller>,
}

impl control::Hooks for LiveHooks {
    fn set_paused(&self, paused: bool) {
        self.delivery.hold_flag().store(paused, Ordering::Release);
        if !paused {
            // Resume also ends an account pause (refused credentials fixed).
            self.controller.resume();
        }
        self.delivery.waker().notify_one();
    }

    fn status(&self) -> String {
        let d = self.delivery.stats();
        let c = self.controller.stats();
        let pause = match self.controller.pause_state() {
            crate::policy::pause::PauseState::Running => "off".to_string(),
            crate::policy::pause::PauseState::Paused { scope, .. } => format!("{scope:?}"),
        };
        let halted = if self.delivery.is_halted() {
            "delivery: halted, the spool cannot be written (outcomes kept in memory)\n"
        } else {
            ""
        };
        format!(
            "instance: running\n{halted}since start: {} delivered, {} deferred, {} failed, {} bounce report(s), {} transaction(s)\nconnections: limit {} (ceiling {})\nrate: {}\naccount pause: {}\n",
            d.delivered,
            d.deferred,
            d.failed,
            d.bounces,
            d.transactions,
            c.concurrency_limit,
            c.concurrency_ceiling.map_or("none".into(), |n| n.to_string()),
            c.rate.map_or("unlimited".into(), |r| format!("{:.2} msg/s", r)),
            pause
        )
    }
}

/// SIGHUP resumes a paused account (after fixing the credentials, say).
async fn resume_on_hangup(controller: Arc<Controller>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        // Runs for the life of the process; each signal is one resume.
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: resuming sending");
            controller.resume();
        }
    }
    #[cfg(not(unix))]
    let _ = controller;
}

/// Cancels `token` on SIGTERM or Ctrl-C (SIGINT).
async fn on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); Ctrl-C still works");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: no new sessions; transactions in flight may finish");
    token.cancel();
}
