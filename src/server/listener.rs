//! The listening socket and the accept loop: one task per session, at most
//! `max_sessions` at once (the rest get `421 4.3.2` and are closed), on a listener that
//! is not loopback at most `max_sessions_per_ip` from one address (the rest get
//! `421 4.7.0`), and graceful shutdown.
//!
//! The socket is bound with a `listen_backlog` (default 1024) instead of the 128 that
//! std and tokio use, so a burst of connections waits in the kernel's queue until the
//! loop accepts it, and every connection is answered — with a greeting or a 421 — rather
//! than left without a word when the queue overflows.
//!
//! Shutdown: when the token fires the listener is closed at once; sessions between
//! transactions answer `421 4.3.2` and close by themselves; transactions in flight may
//! finish for up to `shutdown_grace`, then the grace token fires and they are closed with
//! `421 4.3.2`. The loop returns when every session task has ended.
//!
//! Must never: stop on a transient accept error (EMFILE and the like), close a
//! connection without a reply, or wait for a session without a bound after the grace
//! period.

use super::{replies, session};
use super::{Relay, ServerError, Shared};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
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
    refused_per_ip: AtomicU64,
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
    /// Connections refused with `421 4.7.0` (too many sessions from one address).
    pub fn refused_per_ip(&self) -> u64 {
        self.refused_per_ip.load(Ordering::Relaxed)
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

/// Sessions open per peer address, for `max_sessions_per_ip`.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    /// Takes a place for `ip` if it has fewer than `max` sessions open.
    fn try_open(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot(Arc::clone(self), ip))
    }
}

/// One session's place in [`PerIp`]; given back when the session ends.
struct IpSlot(Arc<PerIp>, IpAddr);

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// After the grace period, how long sessions get to write their 421 and close before
/// their tasks are aborted.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);

/// Binds `addr` with a listen backlog of `backlog` connections (the kernel may cap it:
/// Linux at net.core.somaxconn). Must be called inside the tokio runtime.
pub fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    // As std and tokio do on Unix: a restarted server can bind again at once, while the
    // old connections sit in TIME_WAIT. Not on Windows, where SO_REUSEADDR would let
    // another process take over a port in use; there the default is kept.
    #[cfg(unix)]
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(backlog).map_err(err)
}

pub(crate) async fn accept_loop<R: Relay>(listener: TcpListener, shared: Arc<Shared<R>>) {
    let permits = Arc::new(Semaphore::new(shared.cfg.max_sessions));
    let per_ip = Arc::new(PerIp::default());
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
                // Off loopback, one address may not take every slot.
                let ip_slot = if shared.public {
                    match per_ip.try_open(peer.ip(), shared.cfg.max_sessions_per_ip) {
                        Some(slot) => Some(slot),
                        None => {
                            shared.stats.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                            span.in_scope(|| {
                                tracing::warn!("too many sessions from this address, refusing")
                            });
                            let reply = replies::too_many_connections_from_address();
                            sessions.spawn(session::reject(tcp, reply).instrument(span));
                            continue;
                        }
                    }
                } else {
                    None
                };
                match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let open = shared.stats.opened();
                        let run = session::run(Arc::clone(&shared), tcp, (permit, ip_slot));
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
                        let reply = replies::too_many_connections();
                        sessions.spawn(session::reject(tcp, reply).instrument(span));
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
