//! Queue mode's running parts: the spool (opened and recovered), the inbound relay that
//! fills it ([`QueueRelay`]) and the delivery engine that empties it through the
//! admission stack ([`AdmissionTransport`]). The quotas and what was learned are restored
//! before this starts (`relay::state`, both modes).
//!
//! Time is the controller's injected clock, for the engine and the ledger alike.
//!
//! It must never start delivering before the spool is recovered.

use super::limits;
use super::policy::Policy;
use super::queue_relay::QueueRelay;
use super::transport::AdmissionTransport;
use crate::config::profile::Profile;
use crate::config::Config;
use crate::policy::controller::Controller;
use crate::queue::deliver::{Delivery, DeliveryParams, SuppressedFn};
use crate::queue::delivery_log::DeliveryLog;
use crate::queue::webhook::Webhook;
use crate::queue::{control, Spool};
use anyhow::Context;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The delivery engine as queue mode runs it.
pub type Engine = Delivery<AdmissionTransport, Controller>;

/// Queue mode, started.
pub struct QueueMode {
    pub relay: QueueRelay,
    pub delivery: Arc<Engine>,
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
        let limits = limits::limits(config, profile);
        let params = DeliveryParams {
            // Only a fallback: the engine's slots follow the controller's connection
            // limit (`Pacing::slots`), within the reloadable maximum.
            workers: policy.controller.max_connections(),
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
        let relay = QueueRelay::new(spool, delivery.waker())
            .with_size_limit(policy.admission.pool().settings().message_size.clone());
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
