//! `mailvalve run`: start the relay with a loaded, validated configuration and serve
//! until SIGTERM or Ctrl-C, then shut down gracefully (open sessions get `421 4.3.2`).
//!
//! This is where the pieces are wired: the inbound server, the suppression list, the
//! passthrough relay over the upstream admission stack, and the policy (classifier →
//! controller → pause gate, adaptive rate and concurrency) fed by every upstream reply.
//! SIGHUP resumes a paused account. It must never log the
//! configuration unredacted (`Secret` prints `***`).

use super::passthrough::Passthrough;
use super::wiring;
use crate::config::profile::{self, Profile};
use crate::config::Config;
use crate::policy::clock::SystemClock;
use crate::policy::controller::{Controller, ControllerParams};
use crate::policy::suppression::{Recorder, Suppressions};
use crate::server::suppress::SuppressingRelay;
use crate::store::suppression::RedbStore;
use crate::upstream::observer::PolicyObserver;
use crate::upstream::{Admission, ConcurrencyLimit, Settings};
use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
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
    let relay = Arc::new(SuppressingRelay::new(
        Passthrough::new(policy.admission.clone()),
        policy.suppressions.clone(),
    ));

    let listener = TcpListener::bind(config.server.listen)
        .await
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
    crate::server::serve(listener, Arc::new(config.server), relay, shutdown).await?;
    tracing::info!("mailvalve stopped");
    Ok(())
}

/// Everything the policy consists of at run time, built from config + profile.
pub struct Policy {
    pub controller: Arc<Controller>,
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
            classifier,
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
            admission,
            suppressions,
        })
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
