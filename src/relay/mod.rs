//! The application floor: the running relay. It assembles the policy and the limits
//! from the configuration ([`limits`], [`policy`]; OAuth2 sign-in's token source from
//! `[upstream.oauth2]` and the token file, [`oauth`]), runs passthrough (server → leased
//! upstream connection, [`passthrough`]) or queue mode (server → spool,
//! [`queue_relay`]; spool → upstream, [`transport`] and [`queue_mode`]), maps upstream
//! outcomes to what the queue records ([`transport`]), owns the background tasks (the
//! control socket, the quota ledger) and hands out one [`RelayHandle`] that reads and
//! steers it.
//!
//! ```text
//! cli ──▶ relay ──▶ server / upstream / queue ──▶ config ──▶ policy ──▶ smtp
//! ```
//!
//! [`Relay`] is the entry point: [`Relay::new`] builds it from a validated
//! configuration, [`Relay::start`] serves on a bound listener and returns the
//! [`RunningRelay`]. `mailvalve run`, the demo and the tests all start the relay this
//! way.
//!
//! It must never parse arguments or print (that is `cli`), never import `cli`, and never
//! acknowledge a message before the mode's own rule allows it (passthrough: the
//! provider's reply; queue: durable in the spool).

pub mod counting;
pub mod handle;
pub mod limits;
pub mod metrics;
pub mod oauth;
pub mod passthrough;
pub mod policy;
pub mod queue_mode;
pub mod queue_relay;
pub mod reload;
pub mod state;
pub mod transport;

pub use handle::RelayHandle;
pub use passthrough::Passthrough;
pub use policy::{open_suppressions, profile_of, Policy};
pub use queue_mode::QueueMode;

use crate::config::profile::Profile;
use crate::config::{Config, Mode};
use crate::policy::controller::ControllerParams;
use crate::server::relay::BufferBudget;
use crate::server::suppress::SuppressingRelay;
use counting::CountingRelay;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A relay assembled from its configuration, not yet serving.
pub struct Relay {
    config: Config,
    profile: Profile,
    policy: Arc<Policy>,
    source: reload::Source,
}

impl Relay {
    /// The profile, the policy and the limits from a configuration that passed
    /// `config::validate`. Opens the suppression list.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let profile = profile_of(&config)?;
        let params = limits::controller_params(&config, &profile);
        Self::build(config, profile, params)
    }

    /// [`Relay::new`] with the controller's parameters given (the demo and tests run
    /// the same loop on shorter timescales).
    pub fn with_params(config: Config, params: ControllerParams) -> anyhow::Result<Self> {
        let profile = profile_of(&config)?;
        Self::build(config, profile, params)
    }

    fn build(config: Config, profile: Profile, params: ControllerParams) -> anyhow::Result<Self> {
        let policy = Arc::new(Policy::build_with(&config, &profile, params)?);
        Ok(Self {
            config,
            profile,
            policy,
            source: reload::Source::Given,
        })
    }

    /// Says where the configuration was read from (`mailvalve run -c FILE`; `None` = the
    /// built-in defaults), so a reload reads it again from there, plus `MAILVALVE__*`.
    pub fn reloadable_from(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.source = reload::Source::Loaded(path);
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Serves mailer sessions on `listener` in the configured mode until `shutdown`:
    /// opens (and recovers) the spool and starts delivering in queue mode, and binds the
    /// control socket. Returns once it is serving.
    pub async fn start(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<RunningRelay> {
        let addr = listener.local_addr()?;
        let Relay {
            config,
            profile,
            policy,
            source,
        } = self;
        let running = reload::Running::new(config.clone(), source);
        let metrics = policy.metrics.clone();
        // Before the first delivery: the quotas spent and what was learned before a
        // restart; kept up to date until the relay has stopped.
        let keeper = state::StateKeeper::start(
            &config,
            policy.controller.clone(),
            policy.admission.rates().clone(),
        );
        let server = Arc::new(config.server.clone());
        let (handle, task) = match config.mode {
            Mode::Passthrough => {
                let buffer = BufferBudget::new(
                    config.server.passthrough_buffer,
                    config.server.passthrough_buffer_wait,
                );
                let handle =
                    RelayHandle::new(policy.clone(), None, config.queue.dir.clone(), running);
                let relay = Arc::new(SuppressingRelay::new(
                    CountingRelay::new(
                        Passthrough::new(policy.admission.clone()).with_buffer(buffer),
                        metrics,
                    ),
                    policy.suppressions.clone(),
                ));
                let s = shutdown.clone();
                let task = tokio::spawn(async move {
                    let served = crate::server::serve(listener, server, relay, s).await;
                    keeper.finish().await;
                    served?;
                    Ok(())
                });
                (handle, task)
            }
            Mode::Queue => {
                let queue = QueueMode::start(&config, &profile, &policy, shutdown.clone()).await?;
                let handle = RelayHandle::new(
                    policy.clone(),
                    Some(queue.delivery.clone()),
                    config.queue.dir.clone(),
                    running,
                );
                let relay = Arc::new(SuppressingRelay::new(
                    CountingRelay::new(queue.relay.clone(), metrics),
                    policy.suppressions.clone(),
                ));
                let s = shutdown.clone();
                let task = tokio::spawn(async move {
                    let served = crate::server::serve(listener, server, relay, s).await;
                    queue.stop().await;
                    keeper.finish().await;
                    served?;
                    Ok(())
                });
                (handle, task)
            }
        };
        serve_control(&handle, &config, shutdown.clone());
        Ok(RunningRelay {
            addr,
            handle,
            shutdown,
            task,
        })
    }
}

/// `mailvalve queue ...` and `mailvalve suppress ...` reach the running relay over its
/// control socket (Unix only; elsewhere the commands work on the files with the relay
/// stopped).
fn serve_control(handle: &RelayHandle, config: &Config, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use crate::queue::control;
        match control::serve(handle.control_instance(), config.queue.dir.clone(), shutdown) {
            Ok(task) => drop(tokio::spawn(task)),
            Err(e) => tracing::warn!(
                "no control socket, `mailvalve queue` and `mailvalve suppress` cannot reach this instance: {e}"
            ),
        }
    }
    #[cfg(not(unix))]
    let _ = (handle, config, shutdown);
}

/// A relay serving mailers.
pub struct RunningRelay {
    addr: SocketAddr,
    handle: RelayHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningRelay {
    /// Where mailers connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn handle(&self) -> &RelayHandle {
        &self.handle
    }

    /// Waits until the relay has stopped (after its shutdown token was cancelled): no
    /// new sessions, open ones told `421`, queue mode's transactions in flight finished
    /// or given up after `server.shutdown_grace`.
    pub async fn wait(self) -> anyhow::Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("the relay task ended abnormally: {e}")),
        }
    }

    /// Cancels the shutdown token and waits ([`RunningRelay::wait`]); then closes the
    /// idle provider connections.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let admission = self.handle.policy().admission.clone();
        let r = self.wait().await;
        admission.pool().close_idle().await;
        r
    }
}
