//! Idle provider connections, reused last-in first-out (the warmest connection first,
//! so surplus ones age out), and the tower service at the bottom of the admission stack
//! that hands out a pooled connection or connects a new one.
//!
//! A connection goes back only if it is usable, was RSET cleanly and is under
//! `max_messages_per_connection`; idle ones older than `idle_timeout` are closed with
//! QUIT when found or by the reaper (kept longer while the controller paces new
//! connections: each one kept is an open the provider does not count). With the policy
//! in front (`Pool::with_backoff`), no new connection is opened while the controller
//! says wait — the connect backoff after failed or refused connects, or the learned gap
//! between opens — checked right before connecting and taken in one step
//! (`Controller::begin_connect`), so callers that were already waiting for a permit do
//! not each open one more. A caller with a deadline ([`Pool::take_until`]) then waits,
//! within it, for a connection to come back to the pool or for the wait to end; an idle
//! connection is always usable, whatever the backoff says.
//!
//! A reload replaces the settings ([`Pool::replace_settings`]: host, port, TLS,
//! credentials, timeouts) for the next connection: each connection remembers the
//! generation of the settings it was opened with, idle ones of an older generation are
//! closed (QUIT) instead of reused, and leased ones close after their transaction.
//!
//! The pool must never hand
//! out a connection that is known dead, and never hold its lock across an await.

use super::client::Connection;
use super::error::UpstreamError;
use super::settings::Settings;
use crate::policy::controller::Controller;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use std::time::Instant;
use tokio::sync::Notify;

struct Idle {
    conn: Connection,
    since: Instant,
}

/// The idle connections of one upstream.
pub struct Pool {
    /// The settings new connections are opened with, and their generation.
    settings: Mutex<(u64, Arc<Settings>)>,
    idle: Mutex<Vec<Idle>>,
    connects: AtomicUsize,
    /// Whose connect backoff a new connection waits for.
    backoff: Option<Arc<Controller>>,
    /// Connections handed out and not yet back (put, closed or dropped).
    out: AtomicUsize,
    /// Woken when a connection goes back to the idle list.
    returned: Notify,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .field("connects", &self.connects())
            .finish()
    }
}

impl Pool {
    pub fn new(settings: Arc<Settings>) -> Arc<Self> {
        Arc::new(Self {
            settings: Mutex::new((0, settings)),
            idle: Mutex::new(Vec::new()),
            connects: AtomicUsize::new(0),
            backoff: None,
            out: AtomicUsize::new(0),
            returned: Notify::new(),
        })
    }

    /// A pool that opens no new connection while `controller` backs the upstream off
    /// (`UpstreamError::Backoff` instead); pooled connections are still handed out.
    pub fn with_backoff(settings: Arc<Settings>, controller: Arc<Controller>) -> Arc<Self> {
        Arc::new(Self {
            settings: Mutex::new((0, settings)),
            idle: Mutex::new(Vec::new()),
            connects: AtomicUsize::new(0),
            backoff: Some(controller),
            out: AtomicUsize::new(0),
            returned: Notify::new(),
        })
    }

    /// The settings new connections are opened with now.
    pub fn settings(&self) -> Arc<Settings> {
        self.current().1
    }

    fn current(&self) -> (u64, Arc<Settings>) {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New connections use `settings` from now on; connections opened with the old ones
    /// close after their transaction (idle ones are closed when next found).
    /// Outside a tokio runtime the idle ones are dropped (the socket closes, no QUIT).
    pub fn replace_settings(&self, settings: Arc<Settings>) {
        {
            let mut s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            *s = (s.0 + 1, settings);
        }
        let all: Vec<Idle> = self.lock().drain(..).collect();
        if !all.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                for i in all {
                    i.conn.quit().await;
                }
            });
        }
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// New connections opened so far.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long an idle connection is kept now.
    fn keepalive(&self, settings: &Settings) -> std::time::Duration {
        let configured = settings.config.idle_timeout;
        match &self.backoff {
            Some(c) => c.idle_keepalive(configured),
            None => configured,
        }
    }

    /// Connections handed out and not yet back.
    pub fn out(&self) -> usize {
        self.out.load(Ordering::Acquire)
    }

    fn back(&self) {
        let _ = self
            .out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// A leased connection was dropped without going back (closed with its lease).
    pub(crate) fn dropped(&self) {
        self.back();
    }

    /// The most recently used live idle connection, or a new one; while the controller
    /// says wait, `Err(Backoff)` at once.
    pub async fn take(&self) -> Result<Connection, UpstreamError> {
        self.take_until(None).await
    }

    /// [`Pool::take`], but while the controller says wait, waits until `deadline` for
    /// a connection to come back or for the wait to end — when that can happen in time:
    /// other connections are out, or the wait ends before the deadline and the provider
    /// is not unreachable.
    pub async fn take_until(
        &self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Connection, UpstreamError> {
        loop {
            // Registered before looking, so a connection put back meanwhile wakes us.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.take_idle().await {
                self.out.fetch_add(1, Ordering::AcqRel);
                return Ok(conn);
            }
            let wait = match self.backoff.as_ref().map(|c| c.begin_connect()) {
                None | Some(Ok(())) => break,
                Some(Err(w)) => w,
            };
            let now = tokio::time::Instant::now();
            let Some(deadline) = deadline.filter(|d| *d > now) else {
                return Err(UpstreamError::Backoff(wait));
            };
            let unreachable = self.backoff.as_ref().is_some_and(|c| {
                matches!(
                    c.reachability(),
                    crate::policy::controller::Reachability::Unreachable { .. }
                )
            });
            let ends_in_time = now + wait <= deadline && !unreachable;
            if !ends_in_time && self.out() == 0 {
                return Err(UpstreamError::Backoff(wait));
            }
            tokio::select! {
                _ = returned => {}
                _ = tokio::time::sleep_until((now + wait).min(deadline)) => {
                    if now + wait > deadline {
                        return Err(UpstreamError::Backoff(wait));
                    }
                }
            }
        }
        let (generation, settings) = self.current();
        let mut conn = Connection::connect(&settings).await?;
        conn.generation = generation;
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.out.fetch_add(1, Ordering::AcqRel);
        Ok(conn)
    }

    /// The most recently used live idle connection, if any (dead and outdated ones are
    /// closed on the way).
    async fn take_idle(&self) -> Option<Connection> {
        let (generation, settings) = self.current();
        let max_idle = self.keepalive(&settings);
        loop {
            let Idle { mut conn, since } = self.lock().pop()?;
            if since.elapsed() >= max_idle {
                tracing::debug!("closing idle provider connection (idle_timeout)");
                conn.quit().await;
                continue;
            }
            if conn.generation != generation {
                tracing::debug!(
                    "closing provider connection opened with the settings before a reload"
                );
                conn.quit().await;
                continue;
            }
            if conn.probe_idle() {
                tracing::trace!("reusing pooled provider connection");
                return Some(conn);
            }
            tracing::debug!("pooled provider connection was closed by the provider");
        }
    }

    /// Gives a connection back after a transaction: RSET if one was begun, then keep it
    /// if still usable and under the per-connection message limit, else QUIT/close.
    pub async fn put(&self, mut conn: Connection) {
        self.back();
        if conn.is_usable() && conn.in_transaction() {
            let _ = conn.rset().await;
        }
        if !conn.is_usable() {
            return; // dropped: the socket closes
        }
        let (generation, settings) = self.current();
        if conn.generation != generation {
            tracing::debug!(
                "provider connection opened before a reload: closing after its transaction"
            );
            conn.quit().await;
            return;
        }
        let max = settings.config.max_messages_per_connection.max(1);
        if conn.transactions_done() >= max {
            tracing::debug!(
                transactions = conn.transactions_done(),
                "provider connection reached max_messages_per_connection; closing"
            );
            conn.quit().await;
            return;
        }
        self.lock().push(Idle {
            conn,
            since: Instant::now(),
        });
        self.returned.notify_waiters();
    }

    /// Ends the transaction politely and closes the connection (QUIT if usable).
    pub async fn close(&self, conn: Connection) {
        self.back();
        if conn.is_usable() {
            conn.quit().await;
        }
    }

    /// Closes (QUIT) every idle connection older than `idle_timeout`. Returns how many.
    pub async fn reap(&self) -> usize {
        let max_idle = self.keepalive(&self.settings());
        let expired: Vec<Idle> = {
            let mut idle = self.lock();
            let (old, keep): (Vec<Idle>, Vec<Idle>) =
                idle.drain(..).partition(|i| i.since.elapsed() >= max_idle);
            *idle = keep;
            old
        };
        let n = expired.len();
        for i in expired {
            i.conn.quit().await;
        }
        n
    }

    /// QUITs every idle connection (shutdown).
    pub async fn close_idle(&self) {
        let all: Vec<Idle> = self.lock().drain(..).collect();
        for i in all {
            i.conn.quit().await;
        }
    }

    /// Runs [`Pool::reap`] every half `idle_timeout` until the pool is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Pool> = Arc::downgrade(self);
        let period =
            (self.settings().config.idle_timeout / 2).max(std::time::Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.reap().await;
            }
        })
    }
}
