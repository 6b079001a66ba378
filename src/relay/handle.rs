//! [`RelayHandle`]: the one handle on a running relay, cheap to clone. Whatever looks at
//! or steers the relay goes through it — the control socket (`mailvalve queue ...`,
//! through [`control::Hooks`], which the handle implements), SIGHUP, and later the HTTP
//! API.
//!
//! Read: limits and learned ceilings, the pause state and its reason, queue counts,
//! delivery counters, the relay's metrics. Steer: pause, resume, retry (one message or
//! all), delete, reload the configuration ([`super::reload`]).
//!
//! It must never change a recipient's state except through the spool's own durable
//! operations, and never block the caller for longer than one spool commit.

use super::metrics::RelayMetrics;
use super::policy::Policy;
use super::queue_mode::Engine;
use super::reload::{ReloadOutcome, Running};
use crate::config::Config;
use crate::policy::controller::ControllerStats;
use crate::policy::pause::PauseState;
use crate::queue::control::{self, Hooks, LiveStatus};
use crate::queue::deliver::StatsSnapshot;
use crate::queue::{QueueId, Spool, Which};
use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The handle. Clones share the relay.
#[derive(Clone)]
pub struct RelayHandle {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Arc<Policy>,
    /// Queue mode: the delivery engine (and through it the spool).
    queue: Option<Arc<Engine>>,
    /// The spool directory (the control socket and the operator's pause flag live
    /// there, in both modes).
    dir: PathBuf,
    /// What the relay runs: its configuration (the last valid one), where it came from.
    running: Running,
}

/// What the relay serves, for the API and the dashboard (no secrets).
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub mode: &'static str,
    pub profile: String,
    /// The provider's `host:port`.
    pub upstream: String,
    pub max_connections: usize,
}

/// The connection and rate limits now, with what was learned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Provider connections leased right now.
    pub connections_in_use: usize,
    /// The controller's limit, its learned ceiling, its rate (msg/s) and rate ceiling.
    pub controller: ControllerStats,
}

/// How many messages and recipients wait in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    pub messages: usize,
    pub pending_recipients: usize,
}

impl RelayHandle {
    pub(crate) fn new(
        policy: Arc<Policy>,
        queue: Option<Arc<Engine>>,
        dir: PathBuf,
        running: Running,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                queue,
                dir,
                running,
            }),
        }
    }

    /// The relay's own counters and recent provider replies.
    pub fn metrics(&self) -> &Arc<RelayMetrics> {
        &self.inner.policy.metrics
    }

    /// Mode, profile and provider of the running configuration.
    pub fn info(&self) -> RunInfo {
        let c = self.inner.running.config();
        RunInfo {
            mode: match c.mode {
                crate::config::Mode::Queue => "queue",
                crate::config::Mode::Passthrough => "passthrough",
            },
            profile: c.upstream.profile.clone(),
            upstream: format!("{}:{}", c.upstream.host, c.upstream.port),
            max_connections: self.inner.policy.controller.max_connections(),
        }
    }

    /// The configuration running now (the last valid one).
    pub fn config(&self) -> Arc<Config> {
        self.inner.running.config()
    }

    /// A time on the controller's clock (a pause's end, when a ceiling was learned) as
    /// unix milliseconds.
    pub fn clock_to_wall_ms(&self, at: std::time::Duration) -> u64 {
        use crate::policy::clock::Clock;
        let clock = self.inner.policy.controller.clock();
        let now = clock.now();
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if at >= now {
            clock.unix_ms().saturating_add(ms(at - now))
        } else {
            clock.unix_ms().saturating_sub(ms(now - at))
        }
    }

    /// Re-reads the configuration from where it came from (file and `MAILVALVE__*`),
    /// validates it as `check` and `run` do, and applies it ([`RelayHandle::apply`]).
    /// `Err` (the error `check` prints) leaves the running configuration as it was.
    pub fn reload(&self) -> Result<ReloadOutcome, String> {
        let loaded = self.inner.running.load();
        let outcome = match loaded {
            Ok(cfg) => self.apply(cfg),
            Err(e) => Err(e),
        };
        self.inner.running.record(&outcome, self.metrics());
        outcome
    }

    /// Applies a configuration that passed `config::validate` (see [`super::reload`] for
    /// what takes effect and what needs a restart).
    pub fn apply(&self, config: Config) -> Result<ReloadOutcome, String> {
        let outcome = super::reload::apply(
            &self.inner.policy,
            self.inner.queue.as_deref(),
            &self.inner.running,
            config,
        )?;
        self.resume_account();
        Ok(outcome)
    }

    /// The spool directory (where the control socket lives).
    pub fn spool_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What the control socket (and `POST /api/v1/control`) serves: queue commands and
    /// the suppression list, on this handle.
    pub fn control_instance(&self) -> control::Instance {
        control::Instance::queue(Arc::new(self.clone()))
            .with_suppressions(self.policy().suppressions.clone())
    }

    /// Lets a reload change the log level (`mailvalve run` installs it).
    pub fn on_log_level(&self, f: super::reload::SetLogLevel) {
        self.inner.running.set_log_level_hook(f);
    }

    /// The last reload's outcome, if there was one.
    pub fn last_reload(&self) -> Option<super::reload::ReloadRecord> {
        self.inner.running.last()
    }

    /// The policy the relay runs (controller, classifier, admission, suppression list).
    pub fn policy(&self) -> &Arc<Policy> {
        &self.inner.policy
    }

    /// Queue mode's spool.
    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.inner.queue.as_ref().map(|d| d.spool())
    }

    /// The connection and rate limits now.
    pub fn limits(&self) -> Limits {
        Limits {
            connections_in_use: self.inner.policy.admission.limit().in_use(),
            controller: self.inner.policy.controller.stats(),
        }
    }

    /// The account's pause (credentials refused, quota spent, repeated policy blocks)
    /// and its reason.
    pub fn account_pause(&self) -> PauseState {
        self.inner.policy.controller.pause_state()
    }

    /// Whether the operator paused delivery (`mailvalve queue pause`).
    pub fn operator_paused(&self) -> bool {
        control::pause_flag(&self.inner.dir).exists()
    }

    /// Queue mode's counters since start.
    pub fn delivery_stats(&self) -> Option<StatsSnapshot> {
        self.inner.queue.as_ref().map(|d| d.stats())
    }

    /// Messages and pending recipients in the spool (queue mode). Reads every record:
    /// off the async workers.
    pub async fn queue_counts(&self) -> Option<Result<QueueCounts, String>> {
        let spool = self.spool()?.clone();
        let counted = tokio::task::spawn_blocking(move || {
            spool.list().map(|msgs| QueueCounts {
                messages: msgs.len(),
                pending_recipients: msgs
                    .iter()
                    .map(|m| m.rcpts.iter().filter(|r| !r.state.is_final()).count())
                    .sum(),
            })
        })
        .await;
        Some(match counted {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("queue count task failed: {e}")),
        })
    }

    fn engine(&self) -> Result<&Arc<Engine>, String> {
        self.inner
            .queue
            .as_ref()
            .ok_or_else(|| control::NO_QUEUE.into())
    }

    /// Pauses delivery (queue mode); survives restarts. Mail is still accepted.
    pub fn pause(&self) -> Result<(), String> {
        let engine = self.engine()?;
        control::set_pause_flag(&self.inner.dir, true)?;
        if !engine.hold_flag().swap(true, Ordering::AcqRel) {
            self.metrics().operator_pauses.inc();
        }
        tracing::info!("operator: delivery paused (queue pause); mail is still accepted");
        Ok(())
    }

    /// Resumes delivery; also ends an account pause (credentials fixed).
    pub fn resume(&self) -> Result<(), String> {
        let engine = self.engine()?;
        control::set_pause_flag(&self.inner.dir, false)?;
        engine.hold_flag().store(false, Ordering::Release);
        self.resume_account();
        engine.waker().notify_one();
        tracing::info!("operator: delivery resumed (queue resume)");
        Ok(())
    }

    /// Ends an account pause only (SIGHUP after fixing the credentials).
    pub fn resume_account(&self) {
        self.inner.policy.controller.resume();
        if let Some(engine) = &self.inner.queue {
            engine.waker().notify_one();
        }
    }

    /// Makes one message (or all) due now and wakes delivery; returns how many. Also
    /// ends the wait after connection failures: the provider is tried at once (an
    /// operator who says "retry" after the provider came back must not wait out a
    /// backoff).
    pub async fn retry(&self, which: Which) -> Result<usize, String> {
        let engine = self.engine()?;
        let n = control::retry(engine.spool(), which).await?;
        self.inner.policy.controller.try_connect_now();
        engine.waker().notify_one();
        match which {
            Which::All => tracing::info!(
                messages = n,
                "operator: retry of every message now (queue retry --all)"
            ),
            Which::One(id) => tracing::info!(%id, "operator: retry now (queue retry)"),
        }
        Ok(n)
    }

    /// Removes a message without delivering it (no bounce report).
    pub async fn delete(&self, id: QueueId) -> Result<(), String> {
        control::delete(self.engine()?.spool(), id).await?;
        tracing::info!(%id, "operator: message deleted without delivery (queue delete)");
        Ok(())
    }
}

/// The control socket's commands, against the running relay.
impl Hooks for RelayHandle {
    fn spool(&self) -> Option<&Spool> {
        RelayHandle::spool(self).map(|s| s.as_ref())
    }

    fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn set_paused(&self, paused: bool) -> Result<(), String> {
        if paused {
            self.pause()
        } else {
            self.resume()
        }
    }

    fn retry(&self, which: Which) -> BoxFuture<'_, Result<usize, String>> {
        Box::pin(RelayHandle::retry(self, which))
    }

    fn delete(&self, id: QueueId) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(RelayHandle::delete(self, id))
    }

    fn reload(&self) -> Result<String, String> {
        RelayHandle::reload(self).map(|o| o.text())
    }

    fn live(&self) -> Option<LiveStatus> {
        let engine = self.inner.queue.as_ref()?;
        let c = self.inner.policy.controller.stats();
        Some(LiveStatus {
            delivery: engine.stats(),
            halted: engine.spool_failing(),
            concurrency_limit: c.concurrency_limit,
            concurrency_ceiling: c.concurrency_ceiling,
            rate: c.rate,
            account_pause: match self.account_pause() {
                PauseState::Running => None,
                PauseState::Paused { scope, .. } => Some(scope),
            },
            reachability: self.inner.policy.controller.reachability(),
        })
    }
}
