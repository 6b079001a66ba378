//! A simulated mail provider: pure, driven by the simulation's clock. It enforces the
//! limits a scenario gives it and answers with the replies real providers send.

use std::time::Duration;

use mailvalve::smtp::{EnhancedCode, Reply};
use serde::Deserialize;

use super::limiter::{Kind, Limiter};

/// What a limiter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Counts {
    Messages,
    Recipients,
}

/// One rate limiter of the provider (`[[provider.limiters]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimiterSpec {
    pub kind: Kind,
    pub counts: Counts,
    /// Events per window.
    pub limit: f64,
    pub window_secs: f64,
    /// Token bucket depth (default: the limit).
    pub burst: Option<f64>,
}

/// New connections allowed per window (`smtpd_client_connection_rate_limit`: attempts
/// are counted, refused ones too, in a fixed unit); beyond it, `421 4.7.0` at the
/// greeting with the same text as a concurrency limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRateSpec {
    pub limit: f64,
    pub window_secs: f64,
}

/// Provider limits, from a scenario file's `[provider]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Simultaneous connections allowed; more are answered `421` at the greeting.
    pub max_connections: Option<usize>,
    /// Accepted messages per minute (token bucket refilled continuously); beyond it,
    /// `450 4.7.1` at MAIL FROM.
    pub rate_per_minute: Option<f64>,
    /// Token bucket depth.
    #[serde(default = "one")]
    pub rate_burst: f64,
    /// Rate limiters: fixed window (anvil), sliding window, token bucket; in messages
    /// (refused at MAIL: `450 4.7.1 Error: too much mail from ...`) or recipients
    /// (refused at RCPT: `450 4.7.1 Error: too many recipients from ...`).
    #[serde(default)]
    pub limiters: Vec<LimiterSpec>,
    /// A limit on new connections per window.
    pub connection_rate: Option<ConnectionRateSpec>,
    /// Every n-th message goes to an unknown recipient (`550 5.1.1`); 0 = none.
    #[serde(default)]
    pub unknown_every: usize,
    /// Messages per quota window; beyond it, `550 5.4.5` at MAIL FROM (a daily quota's
    /// words) or, with `quota_hourly`, `451 4.7.0 Hourly send quota exceeded`; both say
    /// when the window resets.
    pub quota: Option<u64>,
    #[serde(default = "hour")]
    pub quota_window_secs: u64,
    #[serde(default)]
    pub quota_hourly: bool,
    /// AUTH fails with `535 5.7.8` until the operator fixes it (`run.resume_at_secs`).
    #[serde(default)]
    pub wrong_password: bool,
    /// Limit changes at given times.
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub at_secs: u64,
    pub max_connections: Option<usize>,
    pub rate_per_minute: Option<f64>,
    /// A new limit for `limiters[limiter]` (default: the first).
    pub limit: Option<f64>,
    #[serde(default)]
    pub limiter: usize,
}

fn one() -> f64 {
    1.0
}
fn hour() -> u64 {
    3600
}

pub struct Provider {
    spec: ProviderSpec,
    max_connections: Option<usize>,
    rate_per_minute: Option<f64>,
    open: usize,
    tokens: f64,
    refilled_at: Duration,
    quota_window: u64,
    quota_used: u64,
    password_ok: bool,
    next_change: usize,
    limiters: Vec<(Counts, Limiter)>,
    conn_rate: Option<Limiter>,
}

/// What a transaction got, reply by reply, until the first refusal.
pub struct TransactionReplies {
    pub replies: Vec<(mailvalve::policy::verdict::Phase, Reply)>,
}

fn reply(code: u16, e: (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, EnhancedCode::new(e.0, e.1, e.2), text)
}

impl Provider {
    pub fn new(spec: ProviderSpec) -> Self {
        Self {
            max_connections: spec.max_connections,
            rate_per_minute: spec.rate_per_minute,
            tokens: spec.rate_burst,
            refilled_at: Duration::ZERO,
            quota_window: 0,
            quota_used: 0,
            password_ok: !spec.wrong_password,
            open: 0,
            next_change: 0,
            limiters: spec
                .limiters
                .iter()
                .map(|l| {
                    let w = Duration::from_secs_f64(l.window_secs);
                    (l.counts, Limiter::new(l.kind, l.limit, w, l.burst))
                })
                .collect(),
            conn_rate: spec.connection_rate.as_ref().map(|c| {
                let w = Duration::from_secs_f64(c.window_secs);
                Limiter::new(Kind::Fixed, c.limit, w, None)
            }),
            spec,
        }
    }

    /// Applies limit changes that are due; returns the time of the next one.
    pub fn apply_changes(&mut self, now: Duration) -> Option<Duration> {
        while let Some(c) = self.spec.changes.get(self.next_change) {
            let at = Duration::from_secs(c.at_secs);
            if at > now {
                return Some(at);
            }
            if c.max_connections.is_some() {
                self.max_connections = c.max_connections;
            }
            if c.rate_per_minute.is_some() {
                self.rate_per_minute = c.rate_per_minute;
            }
            if let (Some(l), Some((_, lim))) = (c.limit, self.limiters.get_mut(c.limiter)) {
                lim.set_limit(l);
            }
            self.next_change += 1;
        }
        None
    }

    pub fn max_connections(&self) -> Option<usize> {
        self.max_connections
    }

    /// The operator fixed the credentials.
    pub fn fix_password(&mut self) {
        self.password_ok = true;
    }

    /// A new connection: greeting, then AUTH. `Ok` = the session is ready.
    pub fn connect(
        &mut self,
        now: Duration,
    ) -> Result<(), (mailvalve::policy::verdict::Phase, Reply)> {
        use mailvalve::policy::verdict::Phase;
        let rate_ok = self.conn_rate.as_mut().is_none_or(|l| l.attempt(now));
        if !rate_ok || self.max_connections.is_some_and(|k| self.open >= k) {
            return Err((
                Phase::Greeting,
                Reply::plain(
                    421,
                    "Too many concurrent SMTP connections; please try again later",
                ),
            ));
        }
        if !self.password_ok {
            return Err((
                Phase::Auth,
                reply(535, (5, 7, 8), "Username and Password not accepted"),
            ));
        }
        self.open += 1;
        Ok(())
    }

    pub fn disconnect(&mut self) {
        self.open = self.open.saturating_sub(1);
    }

    /// One message transaction at `now`.
    pub fn transaction(
        &mut self,
        now: Duration,
        msg_id: usize,
        recipients: usize,
    ) -> TransactionReplies {
        use mailvalve::policy::verdict::Phase;
        let mut replies = Vec::with_capacity(4);
        // Quota window.
        if let Some(q) = self.spec.quota {
            let w = now.as_secs() / self.spec.quota_window_secs.max(1);
            if w != self.quota_window {
                self.quota_window = w;
                self.quota_used = 0;
            }
            if self.quota_used >= q {
                // Say when the window resets, as some providers do; the classifier reads
                // the time from the text (without it, a 5.4.5 pauses for 24 hours).
                let reset = (w + 1) * self.spec.quota_window_secs.max(1) - now.as_secs();
                let r = if self.spec.quota_hourly {
                    reply(
                        451,
                        (4, 7, 0),
                        &format!("Hourly send quota exceeded, try again in {reset} seconds"),
                    )
                } else {
                    reply(
                        550,
                        (5, 4, 5),
                        &format!("Daily user sending quota exceeded, try again in {reset} seconds"),
                    )
                };
                replies.push((Phase::Mail, r));
                return TransactionReplies { replies };
            }
        }
        // Message-rate limiters count MAIL commands (refused ones too, where they do).
        let mut mail_ok = true;
        for (counts, l) in &mut self.limiters {
            if *counts == Counts::Messages && !l.attempt(now) {
                mail_ok = false;
            }
        }
        if !mail_ok {
            replies.push((
                Phase::Mail,
                reply(450, (4, 7, 1), "Error: too much mail from 127.0.0.1"),
            ));
            return TransactionReplies { replies };
        }
        // Rate: token bucket.
        if let Some(r) = self.rate_per_minute {
            let dt = now.saturating_sub(self.refilled_at).as_secs_f64();
            self.tokens = (self.tokens + dt * r / 60.0).min(self.spec.rate_burst);
            self.refilled_at = now;
            if self.tokens < 1.0 {
                replies.push((
                    Phase::Mail,
                    reply(
                        450,
                        (4, 7, 1),
                        "Too much mail from your account, try again later",
                    ),
                ));
                return TransactionReplies { replies };
            }
        }
        replies.push((Phase::Mail, reply(250, (2, 1, 0), "Sender OK")));
        if self.spec.unknown_every > 0 && msg_id % self.spec.unknown_every == 0 {
            replies.push((
                Phase::Rcpt,
                reply(
                    550,
                    (5, 1, 1),
                    "The email account that you tried to reach does not exist",
                ),
            ));
            return TransactionReplies { replies };
        }
        for _ in 0..recipients.max(1) {
            let mut ok = true;
            for (counts, l) in &mut self.limiters {
                if *counts == Counts::Recipients && !l.attempt(now) {
                    ok = false;
                }
            }
            if !ok {
                replies.push((
                    Phase::Rcpt,
                    reply(450, (4, 7, 1), "Error: too many recipients from 127.0.0.1"),
                ));
                return TransactionReplies { replies };
            }
            replies.push((Phase::Rcpt, reply(250, (2, 1, 5), "Recipient OK")));
        }
        replies.push((Phase::Data, Reply::plain(354, "Go ahead")));
        if let Some(_r) = self.rate_per_minute {
            self.tokens -= 1.0;
        }
        if self.spec.quota.is_some() {
            self.quota_used += 1;
        }
        replies.push((Phase::DataEnd, reply(250, (2, 0, 0), "OK queued")));
        TransactionReplies { replies }
    }
}
