//! The policy at run time, assembled once from the configuration and the provider
//! profile: classifier, controller, suppression list, and the upstream admission stack
//! whose observer feeds every provider reply to them. Both modes use this one [`Policy`].
//!
//! It must never raise a limit above what the user configured (the precedence lives in
//! [`super::limits`]) and never log a secret (the upstream settings redact their own).

use super::counting::CountingObserver;
use super::limits;
use super::metrics::RelayMetrics;
use crate::config::profile::{self, Profile};
use crate::config::Config;
use crate::policy::classify::Classifier;
use crate::policy::clock::SystemClock;
use crate::policy::controller::{Controller, ControllerParams};
use crate::policy::suppression::{Recorder, SoftPolicy, Suppressions};
use crate::store::suppression::RedbStore;
use crate::upstream::observer::PolicyObserver;
use crate::upstream::{Admission, ConcurrencyLimit, Settings};
use anyhow::Context;
use std::sync::Arc;

/// Everything the policy consists of at run time, built from config + profile.
pub struct Policy {
    pub controller: Arc<Controller>,
    /// The rule table at start; a reload replaces the observer's ([`Policy::classifier`]).
    pub classifier: Arc<Classifier>,
    /// Classifies every provider reply (and feeds the controller and the suppression list).
    pub observer: Arc<PolicyObserver>,
    pub admission: Admission,
    pub suppressions: Arc<Suppressions<RedbStore>>,
    /// What the relay counts for `/metrics` and the dashboard (fed by the observer).
    pub metrics: Arc<RelayMetrics>,
}

impl Policy {
    /// Classifier, controller, the observer that feeds it from every upstream reply, and
    /// the admission stack it gates.
    pub fn build(config: &Config, profile: &Profile) -> anyhow::Result<Self> {
        Self::build_with(config, profile, limits::controller_params(config, profile))
    }

    /// [`Policy::build`] with the controller's parameters given instead of derived from
    /// config + profile (the demo and tests run the same loop on shorter timescales).
    pub fn build_with(
        config: &Config,
        profile: &Profile,
        params: ControllerParams,
    ) -> anyhow::Result<Self> {
        let classifier = Arc::new(limits::classifier(config, profile)?);
        tracing::info!(
            initial_connections = params.initial_connections,
            max_connections = params.max_connections,
            rate_per_second = ?params.rate_per_second,
            "policy limits"
        );
        let controller = Arc::new(Controller::new(params, SystemClock::new()));
        let suppressions = Arc::new(open_suppressions(config)?);
        let limit = ConcurrencyLimit::following(controller.watch_limit());
        let mut upstream = config.upstream.clone();
        upstream.rate = limits::fixed_rates(config, profile);
        upstream.max_messages_per_connection = limits::messages_per_connection(config, profile);
        let metrics = Arc::new(RelayMetrics::default());
        let policy_observer = Arc::new(PolicyObserver::new(
            classifier.clone(),
            controller.clone(),
            Some(suppressions.clone() as Arc<dyn Recorder>),
            limit.clone(),
        ));
        let observer = Arc::new(CountingObserver::new(
            policy_observer.clone(),
            metrics.clone(),
        ));
        let mut settings = Settings::new(upstream)
            .map_err(|e| anyhow::anyhow!("upstream: {e}"))?
            .with_observer(observer)
            .with_message_size(limits::provider_message_size(config, profile));
        if let Some(tokens) = super::oauth::token_source(config, profile)? {
            settings = settings.with_tokens(tokens);
        }
        let admission = Admission::with_policy(settings, controller.clone(), limit);
        Ok(Self {
            controller,
            classifier,
            admission,
            suppressions,
            metrics,
            observer: policy_observer,
        })
    }
}

impl Policy {
    /// The reply rules in force now (the ones a reload installed, if any).
    pub fn current_classifier(&self) -> Arc<Classifier> {
        self.observer.classifier()
    }
}

/// The built-in provider profile the configuration names.
pub fn profile_of(config: &Config) -> anyhow::Result<Profile> {
    match profile::builtin(&config.upstream.profile) {
        Some(p) => Ok(p?),
        None => anyhow::bail!(
            "config key upstream.profile: no provider profile {:?} (known: {})",
            config.upstream.profile,
            profile::names().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Opens the suppression list named by `[suppression]` (redb; one process at a time).
pub fn open_suppressions(cfg: &Config) -> anyhow::Result<Suppressions<RedbStore>> {
    let store = RedbStore::open(&cfg.suppression.path).with_context(|| {
        format!(
            "suppression list (suppression.path = {})",
            cfg.suppression.path.display()
        )
    })?;
    let soft = SoftPolicy {
        threshold: cfg.suppression.soft_threshold,
        window_secs: cfg.suppression.soft_window.as_secs(),
    };
    Ok(Suppressions::open(store, soft)?)
}
