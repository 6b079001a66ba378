//! Idle provider connections, reused last-in first-out (the warmest connection first,
//! so surplus ones age out), and the tower service at the bottom of the admission stack
//! that hands out a pooled connection or connects a new one.
//!
//! A connection goes back only if it is usable, was RSET cleanly and is under
//! `max_messages_per_connection`; idle ones older than `idle_timeout` are closed with
//! QUIT when found or by the reaper. With the policy in front (`Pool::with_backoff`), no
//! new connection is opened while the controller backs the upstream off after failed
//! connects — checked right before connecting, so callers that were already waiting for
//! a permit when the backoff began do not each open one more.
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

    /// The most recently used live idle connection, or a new one.
    pub async fn take(&self) -> Result<Connection, UpstreamError> {
        let (generation, settings) = self.current();
        let max_idle = settings.config.idle_timeout;
        loop {
            let item = self.lock().pop();
            let Some(Idle { mut conn, since }) = item else {
                break;
            };
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
                return Ok(conn);
            }
            tracing::debug!("pooled provider connection was closed by the provider");
        }
        if let Some(d) = self.backoff.as_ref().and_then(|c| c.connect_wait()) {
            return Err(UpstreamError::Backoff(d));
        }
        let mut conn = Connection::connect(&settings).await?;
        conn.generation = generation;
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// Gives a connection back after a transaction: RSET if one was begun, then keep it
    /// if still usable and under the per-connection message limit, else QUIT/close.
    pub async fn put(&self, mut conn: Connection) {
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
    }

    /// Ends the transaction politely and closes the connection (QUIT if usable).
    pub async fn close(&self, conn: Connection) {
        if conn.is_usable() {
            conn.quit().await;
        }
    }

    /// Closes (QUIT) every idle connection older than `idle_timeout`. Returns how many.
    pub async fn reap(&self) -> usize {
        let max_idle = self.settings().config.idle_timeout;
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
