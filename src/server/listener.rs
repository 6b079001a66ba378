//! The accept loop: one task per session, at most `max_sessions` at once (the rest get
//! `421 4.3.2` and are closed), and graceful shutdown.
//!
//! Shutdown: when the token fires the listener is closed at once; sessions between
//! transactions answer `421 4.3.2` and close by themselves; transactions in flight may
//! finish for up to `shutdown_grace`, then the grace token fires and they are closed with
//! `421 4.3.2`. The loop returns when every session task has ended.
//!
//! Must never: stop on a transient accept error (EMFILE and the like), or wait for a
//! session without a bound after the grace period.

use super::session;
use super::{Relay, Shared};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Session counters of one server, for status lines and tests: sessions open now, the
/// most open at once, and connections refused with `421 4.3.2` because `max_sessions`
/// were open. Read them while the server runs; they only ever describe this server.
#[derive(Debug, Default)]
pub struct SessionStats {
    active: AtomicUsize,
    max_active: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl SessionStats {
    /// Sessions open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    /// The most sessions that were open at once.
    pub fn max_active(&self) -> usize {
        self.max_active.load(Ordering::Relaxed)
    }
    /// Sessions accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Connections refused with `421 4.3.2` (too many sessions).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn opened(self: &Arc<Self>) -> ActiveGuard {
        let now = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_active.fetch_max(now, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(self))
    }
}

/// Counts one open session; dropped when the session task ends (or is aborted).
struct ActiveGuard(Arc<SessionStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// After the grace period, how long sessions get to write their 421 and close before
/// their tasks are aborted.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);

pub(crate) async fn accept_loop<R: Relay>(listener: TcpListener, shared: Arc<Shared<R>>) {
    let permits = Arc::new(Semaphore::new(shared.cfg.max_sessions));
    let mut sessions = JoinSet::new();
    let mut next_id: u64 = 0;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, public = shared.public, tls = shared.tls.is_some(), "listening");
    }
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            Some(done) = sessions.join_next(), if !sessions.is_empty() => log_join(done),
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                next_id += 1;
                let _ = tcp.set_nodelay(true);
                let span = tracing::info_span!("session", id = next_id, %peer);
                match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let open = shared.stats.opened();
                        let run = session::run(Arc::clone(&shared), tcp, permit);
                        sessions.spawn(
                            async move {
                                run.await;
                                drop(open);
                            }
                            .instrument(span),
                        );
                    }
                    Err(_) => {
                        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                        span.in_scope(|| tracing::warn!("too many sessions, refusing"));
                        sessions.spawn(session::reject_busy(tcp).instrument(span));
                    }
                }
            }
        }
    }
    drop(listener);
    tracing::info!(sessions = sessions.len(), "shutting down");

    let grace = shared.cfg.shutdown_grace;
    if tokio::time::timeout(grace, drain(&mut sessions))
        .await
        .is_err()
    {
        tracing::info!(
            sessions = sessions.len(),
            "shutdown grace over, closing transactions in flight"
        );
        shared.grace_over.cancel();
        if tokio::time::timeout(CLOSE_MARGIN, drain(&mut sessions))
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = sessions.len(),
                "aborting sessions that did not close"
            );
            sessions.abort_all();
            drain(&mut sessions).await;
        }
    }
    tracing::info!("server stopped");
}

async fn drain(sessions: &mut JoinSet<()>) {
    while let Some(done) = sessions.join_next().await {
        log_join(done);
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "session task panicked");
        }
    }
}
