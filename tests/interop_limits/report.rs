//! Figures of an [`Outcome`] (delivered, long-run rate against the limit, refusals) and
//! the targets they are held to. Only arithmetic on what `watch` saw; never starts or
//! talks to anything.
//!
//! The targets are issue 10's (≥ 90% of the limit over the long run, ≤ 2% of messages
//! refused, no reconnect storm) with the margins a real Postfix on a noisy 2-core
//! machine needs — the reasons are next to each constant.

use super::scenario::{Kind, Outcome};
use super::support::postfix::anvil;
use super::watch::Tally;

use std::fmt::Write as _;
use std::time::Duration;

/// Long-run delivery rate at least this share of what the provider lets through
/// (`Scenario::limit_per_second`: anvil's limit per its effective window, one second
/// longer than configured). The issue asks ≥ 90% in simulated time. Against real anvil
/// a client that paces evenly also loses, per window, the time between the unit's reset
/// (a whole second) and its next send — half a gap between sends on average, 2–5% at
/// these rates — and the rest is noise this test cannot remove: events seen by polling
/// the log (±0.1 s), a debug build, and 2 cores shared by 9 Postfix instances, 9
/// mailvalves and other test binaries. Hence 10 points below the figure.
pub const MIN_SHARE_OF_LIMIT: f64 = 0.80;

/// Refusals at most this share of the delivered units, plus [`REFUSALS_PER_WINDOW`]
/// refused transactions per elapsed (effective) window — counted per recipient, since a
/// transaction refused at RCPT by a recipient rate limit logs one refusal per recipient.
/// The issue asks ≤ 2% in simulation, over long campaigns. A fixed-window limiter's
/// reset cannot be seen from outside, so finding it costs a refused probe now and then —
/// one per window is the most a client that follows a fixed window needs — and when the
/// limit is first hit every connection in flight gets its refusal before any reply can
/// be acted on: with campaigns of a few hundred units that start-up cost alone is a few
/// percent, hence 5%.
pub const MAX_REFUSED_SHARE: f64 = 0.05;
pub const REFUSALS_PER_WINDOW: usize = 1;

/// A connection-count limit costs a refused connection or two to find (mailvalve may
/// start above it), and one probe above it per probe interval (10 min, longer than the
/// run): the bound of `tests/interop_postfix.rs`.
pub const MAX_REFUSED_CONNECTIONS_COUNT: usize = 3;

/// A connection-rate limit: no reconnect storm — at most one refused connection attempt
/// per window, plus two for finding the limit at the start.
pub const REFUSED_CONNECTIONS_RATE_SLACK: usize = 2;

/// The figures of one outcome.
#[derive(Debug)]
pub struct Figures {
    pub units: usize,
    pub delivered: usize,
    pub duplicates: usize,
    pub orphans: usize,
    pub elapsed: Duration,
    /// Delivered units per second after the first window (rate kinds).
    pub long_run: Option<f64>,
    /// `long_run` over the nominal limit.
    pub share: Option<f64>,
    /// Every 4xx anvil logged (MAIL, RCPT and connection refusals).
    pub refusals: usize,
    /// Refused connection attempts (count or rate limit).
    pub refused_connections: usize,
    pub connects: usize,
    /// Windows the run spanned (rate kinds), at least 1.
    pub windows: usize,
}

impl Figures {
    pub fn of(o: &Outcome) -> Figures {
        let sc = &o.scenario;
        let t = &o.tally;
        let delivered = t.delivered.len();
        let refused_connections =
            t.refusals(anvil::CONNECTION_COUNT) + t.refusals(anvil::CONNECTION_RATE);
        let refusals = refused_connections
            + t.refusals(anvil::MESSAGE_RATE)
            + t.refusals(anvil::RECIPIENT_RATE);
        let long_run = sc
            .limit_per_second()
            .and_then(|_| long_run(t, sc.effective_window()));
        let share = long_run.zip(sc.limit_per_second()).map(|(r, l)| r / l);
        let windows = if sc.kind == Kind::ConnectionCount {
            1
        } else {
            (o.elapsed.as_secs_f64() / sc.effective_window().as_secs_f64()).ceil() as usize
        }
        .max(1);
        Figures {
            units: sc.units(),
            delivered,
            duplicates: t.deliveries() - delivered,
            orphans: t.orphans,
            elapsed: o.elapsed,
            long_run,
            share,
            refusals,
            refused_connections,
            connects: t.connects,
            windows,
        }
    }

    /// What misses the targets, one line each (empty: all met).
    /// What must hold in every run: every recipient delivered, exactly once.
    pub fn guarantee_misses(&self, o: &Outcome) -> Vec<String> {
        let mut m = self.misses(o);
        m.retain(|x| x.starts_with("delivered ") || x.contains("duplicate deliveries"));
        m
    }

    /// Every target missed: the guarantees, and issue 10's rate, refusal and connection
    /// targets.
    pub fn misses(&self, o: &Outcome) -> Vec<String> {
        let sc = &o.scenario;
        let mut m = Vec::new();
        if !o.complete || self.delivered < self.units {
            m.push(format!(
                "delivered {} of {} recipients within {:?}",
                self.delivered,
                self.units,
                sc.bound()
            ));
        }
        if self.duplicates > 0 || self.orphans > 0 {
            m.push(format!(
                "{} duplicate deliveries, {} deliveries of unknown messages",
                self.duplicates, self.orphans
            ));
        }
        if let Some(limit) = sc.limit_per_second() {
            match self.share {
                Some(s) if s >= MIN_SHARE_OF_LIMIT => {}
                Some(s) => m.push(format!(
                    "long-run rate {:.2}/s = {:.0}% of the limit {limit:.2}/s (target ≥ {:.0}%)",
                    self.long_run.unwrap_or(0.0),
                    s * 100.0,
                    MIN_SHARE_OF_LIMIT * 100.0
                )),
                None => m.push(
                    "no long-run rate: fewer than two whole windows between the first \
                     connection and the last delivery"
                        .into(),
                ),
            }
            let per_window = REFUSALS_PER_WINDOW * sc.rcpts_per_message;
            let bound = (MAX_REFUSED_SHARE * self.units as f64).floor() as usize
                + per_window * self.windows;
            if self.refusals > bound {
                m.push(format!(
                    "{} refusals (bound {bound}: {:.0}% of {} + {per_window} per window × {})",
                    self.refusals,
                    MAX_REFUSED_SHARE * 100.0,
                    self.units,
                    self.windows
                ));
            }
        }
        match sc.kind {
            Kind::ConnectionCount if self.refused_connections > MAX_REFUSED_CONNECTIONS_COUNT => m
                .push(format!(
                    "{} refused connections (bound {MAX_REFUSED_CONNECTIONS_COUNT})",
                    self.refused_connections
                )),
            Kind::ConnectionRate
                if self.refused_connections > self.windows + REFUSED_CONNECTIONS_RATE_SLACK =>
            {
                m.push(format!(
                    "{} refused connection attempts: a reconnect storm (bound {}: one per \
                     window × {} + {REFUSED_CONNECTIONS_RATE_SLACK})",
                    self.refused_connections,
                    self.windows + REFUSED_CONNECTIONS_RATE_SLACK,
                    self.windows
                ))
            }
            _ => {}
        }
        m
    }
}

/// Delivered units per second over the whole effective windows after the first: the
/// grid of windows starts at the first connection (where anvil's first unit starts),
/// the first window (the burst, finding the limit) and the last, partial one are left
/// out. So a client pacing evenly and one sending a burst at each reset both measure
/// what they get per window. `None` with fewer than one whole window in between.
fn long_run(t: &Tally, window: Duration) -> Option<f64> {
    let t0 = t
        .first_connect
        .or_else(|| t.delivered_at.first().copied())?;
    let last = *t.delivered_at.last()?;
    let w = window.as_secs_f64();
    // Whole windows before the one holding the last delivery.
    let k = ((last.saturating_sub(t0)).as_secs_f64() / w).floor() as u32;
    if k < 2 {
        return None;
    }
    let (from, to) = (t0 + window, t0 + window * k);
    let n = t
        .delivered_at
        .iter()
        .filter(|&&at| at >= from && at < to)
        .count();
    Some(n as f64 / (to - from).as_secs_f64())
}

/// The table `--nocapture` shows.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "units = recipients to deliver; submit = time the mailer needed (queue mode); \
         elapsed = until the provider delivered the last one (+: gave up); at limit = \
         units at exactly the provider's limit (per anvil's effective window, W + 1 s); % limit = \
         long-run / that limit; long-run = delivered per second in the \
         whole windows after the first (grid from the first connection, the last partial \
         window left out); refusals = anvil's 4xx (MAIL, RCPT, greetings); conn refd = refused \
         connection attempts; errs = sessions Postfix closed for too many errors\n",
    );
    let _ = writeln!(
        s,
        "{:<34} {:>6} {:>9} {:>7} {:>8} {:>8} {:>9} {:>8} {:>13} {:>9} {:>6} {:>5}",
        "scenario (limit, profile)",
        "units",
        "delivered",
        "submit",
        "elapsed",
        "at limit",
        "long-run",
        "% limit",
        "refusals (%)",
        "conn refd",
        "conns",
        "errs"
    );
    for o in outcomes {
        let f = Figures::of(o);
        let sc = &o.scenario;
        let ideal = if sc.limit_per_second().is_some() {
            format!("{:.0}s", sc.at_limit().as_secs_f64())
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "{:<34} {:>6} {:>9} {:>7} {:>8} {:>8} {:>9} {:>8} {:>13} {:>9} {:>6} {:>5}",
            sc.name(),
            f.units,
            if f.duplicates > 0 {
                format!("{}+{}dup", f.delivered, f.duplicates)
            } else {
                f.delivered.to_string()
            },
            format!("{:.1}s", o.submitted_in.as_secs_f64()),
            format!(
                "{:.1}s{}",
                f.elapsed.as_secs_f64(),
                if o.complete { "" } else { "+" }
            ),
            ideal,
            f.long_run.map_or("-".into(), |r| format!("{r:.2}/s")),
            f.share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
            format!(
                "{} ({:.1}%)",
                f.refusals,
                100.0 * f.refusals as f64 / f.units.max(1) as f64
            ),
            f.refused_connections,
            f.connects,
            o.tally.error_limit,
        );
    }
    s
}
