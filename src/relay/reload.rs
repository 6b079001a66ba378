//! Reloading the configuration while the relay runs (SIGHUP, `mailvalve reload`,
//! `POST /api/v1/reload`): re-read from where it came from, validate exactly as `check`
//! and `run` do (`config::load_validated`), and apply what can change for the next
//! transaction without dropping sessions or the queue.
//!
//! Takes effect at once: the reply rules (`[[rules]]` and the profile's), the
//! connection maximum and the rate ceiling (from
//! `upstream.max_connections`, `[upstream.limits]` and the profile's figures) — what was
//! learned is kept unless the limit it was learned against changed — the log level
//! (unless `RUST_LOG` decides it), the rate caps (`[upstream.rate]` and the profile's
//! quotas; the spent part of an hourly or daily quota is carried over), the provider
//! connection settings and credentials (host, port, TLS, username, password,
//! timeouts, HELO name, per-connection and idle limits: new connections use them, pooled
//! ones opened with the old settings close after their transaction), the bounce
//! webhook (queue mode, for the next post), and every valid reload ends an account pause
//! (fixed credentials). Said, not silently ignored: what needs a restart (`server.*`,
//! `http.*`, `mode`, `queue.dir`, the rest of `[queue]`, `[suppression]`, and
//! `upstream.admission_wait`).
//!
//! It must never leave a half-applied configuration (an invalid one changes nothing),
//! and never put a secret into its outcome (key names only).

use super::limits;
use super::metrics::{OutcomeLabel, RelayMetrics};
use super::policy::{profile_of, Policy};
use super::queue_mode::Engine;
use crate::config::Config;
use crate::queue::webhook::Webhook;
use crate::upstream::Settings;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// Sets the log level (a tracing filter) of the running process; `cli` installs it.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What a valid reload did.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// What changed and took effect, in words.
    pub applied: Vec<String>,
    /// Keys that changed but take effect only after a restart.
    pub restart_needed: Vec<String>,
}

impl ReloadOutcome {
    /// For the operator (`mailvalve reload`).
    pub fn text(&self) -> String {
        let mut out = String::from("configuration reloaded\n");
        if self.applied.is_empty() {
            out.push_str("no limit changed\n");
        }
        for a in &self.applied {
            out.push_str(&format!("applied: {a}\n"));
        }
        for k in &self.restart_needed {
            out.push_str(&format!("changed, takes effect after a restart: {k}\n"));
        }
        out
    }
}

/// The last reload, for the API and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// Unix milliseconds.
    pub at: u64,
    pub ok: bool,
    /// The error `check` would print, when it was refused.
    pub error: Option<String>,
    pub outcome: Option<ReloadOutcome>,
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file (or, `None`, the built-in defaults), plus `MAILVALVE__*` from the process
    /// environment — what `mailvalve run -c FILE` read.
    Loaded(Option<PathBuf>),
    /// Given by the caller (tests, the demo): nothing to re-read.
    Given,
}

/// The running configuration: the last valid one.
pub struct Running {
    config: Mutex<Arc<Config>>,
    source: Source,
    last: Mutex<Option<ReloadRecord>>,
    log_level: OnceLock<SetLogLevel>,
}

impl Running {
    pub fn new(config: Config, source: Source) -> Self {
        Self {
            config: Mutex::new(Arc::new(config)),
            source,
            last: Mutex::new(None),
            log_level: OnceLock::new(),
        }
    }

    /// How a reload changes the log level (once; later calls are ignored).
    pub fn set_log_level_hook(&self, f: SetLogLevel) {
        let _ = self.log_level.set(f);
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn set(&self, config: Config) {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        *c = Arc::new(config);
    }

    /// Reads and validates the configuration again, as `check` and `run` do.
    pub fn load(&self) -> Result<Config, String> {
        match &self.source {
            Source::Loaded(path) => crate::config::process_env()
                .and_then(|env| crate::config::load_validated(path.as_deref(), env))
                .map(|l| l.config)
                .map_err(|e| e.to_string()),
            Source::Given => Err(
                "this relay was started with a configuration given in code, not read from a \
                 file: there is nothing to re-read"
                    .into(),
            ),
        }
    }

    /// Remembers (and logs, and counts) a reload's outcome.
    pub fn record(&self, outcome: &Result<ReloadOutcome, String>, metrics: &RelayMetrics) {
        let at = crate::policy::clock::wall_ms();
        let rec = match outcome {
            Ok(o) => {
                tracing::info!(
                    applied = ?o.applied,
                    restart_needed = ?o.restart_needed,
                    "configuration reloaded"
                );
                ReloadRecord {
                    at,
                    ok: true,
                    error: None,
                    outcome: Some(o.clone()),
                }
            }
            Err(e) => {
                tracing::error!("configuration reload refused, the running one stays: {e}");
                ReloadRecord {
                    at,
                    ok: false,
                    error: Some(e.clone()),
                    outcome: None,
                }
            }
        };
        let outcome = if rec.ok { "applied" } else { "refused" };
        metrics
            .reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(rec);
    }

    pub fn last(&self) -> Option<ReloadRecord> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

fn differs<T: Serialize>(a: &T, b: &T) -> bool {
    toml::Value::try_from(a).ok() != toml::Value::try_from(b).ok()
}

/// The provider connection settings that changed (applied through the pool's new
/// settings; names only, never a value: the password is among them).
fn connection_keys(old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.upstream, &new.upstream);
    let mut out = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            out.push(format!("upstream.{key}"));
        }
    };
    check("host", o.host != n.host);
    check("port", o.port != n.port);
    check("tls", o.tls != n.tls);
    check("tls_verify", o.tls_verify != n.tls_verify);
    check("ca_file", o.ca_file != n.ca_file);
    check("helo_name", o.helo_name != n.helo_name);
    check("username", o.username != n.username);
    check(
        "password",
        o.password.as_ref().map(|p| p.expose()) != n.password.as_ref().map(|p| p.expose()),
    );
    check(
        "max_messages_per_connection",
        o.max_messages_per_connection != n.max_messages_per_connection,
    );
    check("idle_timeout", o.idle_timeout != n.idle_timeout);
    check("timeouts", differs(&o.timeouts, &n.timeouts));
    out
}

fn describe_rates(r: &crate::config::RateConfig) -> String {
    let parts: Vec<String> = [
        ("second", r.per_second),
        ("minute", r.per_minute),
        ("hour", r.per_hour),
        ("day", r.per_day),
    ]
    .into_iter()
    .filter_map(|(w, n)| n.map(|n| format!("{n} per {w}")))
    .collect();
    match parts.is_empty() {
        true => "none".into(),
        false => parts.join(", "),
    }
}

/// Applies a validated configuration: see the module docs.
pub fn apply(
    policy: &Policy,
    delivery: Option<&Engine>,
    running: &Running,
    new: Config,
) -> Result<ReloadOutcome, String> {
    let profile = profile_of(&new).map_err(|e| format!("{e:#}"))?;
    let old = running.config();
    let old_profile = profile_of(&old).map_err(|e| format!("{e:#}"))?;
    // The provider connection settings: built first (the TLS connector reads the CA
    // file), keeping the observer that feeds the policy.
    let changed_connection = connection_keys(&old, &new);
    let settings = match changed_connection.is_empty() {
        true => None,
        false => {
            let current = policy.admission.pool().settings();
            let mut upstream = new.upstream.clone();
            upstream.rate = limits::fixed_rates(&new, &profile);
            let fresh = Settings::new(upstream).map_err(|e| format!("upstream: {e}"))?;
            let mut fresh = (*fresh).clone();
            fresh.observer = current.observer.clone();
            Some(Arc::new(fresh))
        }
    };
    let rates = limits::fixed_rates(&new, &profile);
    let rates_changed = rates != limits::fixed_rates(&old, &old_profile);
    // The bounce webhook (queue mode; validation checked the URL already).
    // (A `Secret` serializes redacted: its password is compared by value.)
    let hook_password = |c: &Config| {
        c.queue
            .webhook
            .as_ref()
            .and_then(|w| w.password.as_ref().map(|p| p.expose().to_string()))
    };
    let webhook_changed = differs(&old.queue.webhook, &new.queue.webhook)
        || hook_password(&old) != hook_password(&new);
    let webhook = match (&new.queue.webhook, webhook_changed && delivery.is_some()) {
        (Some(w), true) => Some(Some(
            Webhook::new(w.clone()).map_err(|e| format!("config key queue.webhook.url: {e}"))?,
        )),
        (None, true) => Some(None),
        (_, false) => None,
    };
    // Everything that can fail comes first, so a failure changes nothing. (The rules
    // were compiled by validation already, the same way.)
    let rules_changed =
        differs(&old.rules, &new.rules) || old.upstream.profile != new.upstream.profile;
    let classifier = match rules_changed {
        true => Some(limits::classifier(&new, &profile).map_err(|e| format!("{e:#}"))?),
        false => None,
    };
    let mut restart: Vec<String> = Vec::new();
    let mut need = |key: &str, changed: bool| {
        if changed {
            restart.push(key.to_string());
        }
    };
    need("mode", old.mode != new.mode);
    need("server", differs(&old.server, &new.server));
    need("http", differs(&old.http, &new.http));
    need("queue.dir", old.queue.dir != new.queue.dir);
    need(
        "queue (other than dir and webhook)",
        differs(
            &crate::config::QueueConfig {
                dir: PathBuf::new(),
                webhook: None,
                ..old.queue.clone()
            },
            &crate::config::QueueConfig {
                dir: PathBuf::new(),
                webhook: None,
                ..new.queue.clone()
            },
        ),
    );
    need("suppression", differs(&old.suppression, &new.suppression));
    need(
        "upstream.admission_wait",
        old.upstream.admission_wait != new.upstream.admission_wait,
    );
    let mut applied = Vec::new();
    if old.log.level != new.log.level {
        match running.log_level.get().map(|set| set(&new.log.level)) {
            Some(Ok(())) => applied.push(format!("log level: {}", new.log.level)),
            Some(Err(e)) => {
                tracing::warn!("log level not changed: {e}");
                restart.push("log.level".into());
            }
            // RUST_LOG decides, or no subscriber of ours.
            None => restart.push("log.level".into()),
        }
    }

    if let Some(classifier) = classifier {
        policy.observer.set_classifier(Arc::new(classifier));
        applied.push(format!(
            "reply rules: {} of [[rules]], then profile {}",
            new.rules.len(),
            profile.name
        ));
    }

    let params = limits::controller_params(&new, &profile);
    let before = policy.controller.stats();
    let max_before = policy.controller.max_connections();
    let (conc, rate) = policy
        .controller
        .set_limits(params.max_connections, params.rate_per_second);
    if conc {
        applied.push(format!(
            "connections: at most {} (was {max_before}){}",
            params.max_connections,
            if before.concurrency_ceiling.is_some() {
                "; the learned ceiling is dropped"
            } else {
                ""
            }
        ));
    }
    if rate {
        applied.push(format!(
            "rate: {} (was {}){}",
            params
                .rate_per_second
                .map_or("unlimited".into(), |r| format!("{r:.3} msg/s")),
            before
                .rate
                .map_or("unlimited".into(), |r| format!("{r:.3} msg/s")),
            if before.rate_ceiling.is_some() {
                "; the learned ceiling is dropped"
            } else {
                ""
            }
        ));
    }
    if let Some(settings) = settings {
        policy.admission.pool().replace_settings(settings);
        applied.push(format!(
            "provider connection: {} for new connections (pooled ones close after their transaction)",
            changed_connection.join(", ")
        ));
    }
    if rates_changed && policy.admission.rates().replace(&rates) {
        applied.push(format!("rate caps: {}", describe_rates(&rates)));
    }
    if let (Some(webhook), Some(delivery)) = (webhook, delivery) {
        delivery.set_webhook(webhook);
        applied.push(match &new.queue.webhook {
            Some(_) => "bounce webhook: changed, for the next post".into(),
            None => "bounce webhook: off".into(),
        });
    }
    if policy.controller.is_paused() {
        applied.push("account pause ended".into());
    }
    running.set(new);
    Ok(ReloadOutcome {
        applied,
        restart_needed: restart,
    })
}
