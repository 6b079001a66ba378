//! Two thin wrappers that feed [`RelayMetrics`] without changing what they wrap: around
//! the upstream observer (every provider reply, already classified once there, and the
//! reply latencies) and around the inbound relay (messages accepted and their sizes, in
//! either mode).
//!
//! They must never change a reply, a verdict or the order of anything; they only count.

use super::metrics::RelayMetrics;
use crate::policy::latency::LatencyKind;
use crate::policy::verdict::{Phase, Verdict};
use crate::server::relay::{BodySink, Relay, RelayTransaction};
use crate::smtp::{Envelope, Reply};
use crate::upstream::observer::Observer;
use crate::upstream::UpstreamError;
use std::sync::Arc;
use std::time::Duration;

/// The upstream observer, counted.
pub struct CountingObserver<O> {
    inner: Arc<O>,
    metrics: Arc<RelayMetrics>,
}

impl<O> CountingObserver<O> {
    pub fn new(inner: Arc<O>, metrics: Arc<RelayMetrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<O: Observer> Observer for CountingObserver<O> {
    fn reply(
        &self,
        phase: Phase,
        reply: &Reply,
        rcpt: Option<&str>,
        message: Option<&str>,
    ) -> Option<Verdict> {
        let verdict = self.inner.reply(phase, reply, rcpt, message);
        if let Some(v) = &verdict {
            self.metrics
                .reply(phase.name(), reply, v, crate::policy::clock::wall_ms());
        }
        verdict
    }

    fn failure(&self, phase: Option<Phase>, error: &UpstreamError) {
        self.inner.failure(phase, error)
    }

    fn connect_started(&self) {
        self.inner.connect_started()
    }

    fn connect_finished(&self, ok: bool) {
        self.inner.connect_finished(ok)
    }

    fn latency(&self, kind: LatencyKind, sample: Duration) {
        let name = match kind {
            LatencyKind::To354 => "data_start",
            LatencyKind::ToFinal => "final",
        };
        self.metrics
            .reply_latency
            .get_or_create(&super::metrics::KindLabel { kind: name })
            .observe(sample.as_secs_f64());
        self.inner.latency(kind, sample)
    }
}

/// The inbound relay, counted: a message counts as received when the relay answered
/// its data with 2xx.
#[derive(Clone)]
pub struct CountingRelay<R> {
    inner: R,
    metrics: Arc<RelayMetrics>,
}

impl<R> CountingRelay<R> {
    pub fn new(inner: R, metrics: Arc<RelayMetrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<R: Relay> Relay for CountingRelay<R> {
    type Tx = CountingTx<R::Tx>;

    async fn begin(
        &self,
        env: Envelope,
        rcpts: Vec<String>,
    ) -> Result<(Self::Tx, Reply, Vec<Reply>), Reply> {
        let (tx, mail, replies) = self.inner.begin(env, rcpts).await?;
        Ok((
            CountingTx {
                inner: tx,
                metrics: self.metrics.clone(),
            },
            mail,
            replies,
        ))
    }
    /// The wrapped relay's limit: counting must not hide it (the session would
    /// advertise and accept more than the provider takes).
    fn max_message_size(&self) -> Option<usize> {
        self.inner.max_message_size()
    }
}

pub struct CountingTx<T> {
    inner: T,
    metrics: Arc<RelayMetrics>,
}

pub struct CountingBody<B> {
    inner: B,
    bytes: u64,
}

impl<B: BodySink> BodySink for CountingBody<B> {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), Reply> {
        self.inner.write(chunk).await?;
        self.bytes += chunk.len() as u64;
        Ok(())
    }
}

impl<T: RelayTransaction> RelayTransaction for CountingTx<T> {
    type Body = CountingBody<T::Body>;

    async fn rcpt(&mut self, rcpts: Vec<String>) -> Result<Vec<Reply>, Reply> {
        self.inner.rcpt(rcpts).await
    }

    async fn body(&mut self) -> Result<Self::Body, Reply> {
        Ok(CountingBody {
            inner: self.inner.body().await?,
            bytes: 0,
        })
    }

    async fn data(&mut self, body: Self::Body) -> Reply {
        let bytes = body.bytes;
        let reply = self.inner.data(body.inner).await;
        if reply.class() == 2 {
            self.metrics.received.inc();
            self.metrics.message_size.observe(bytes as f64);
        }
        reply
    }

    async fn end(self) {
        self.inner.end().await
    }
}
