//! Property test of the rate learner (issue 10): for any limiter of the kinds real
//! providers use — fixed window with burst (anvil), sliding window, token bucket — with
//! any limit from one a minute to fifty a second and windows from one second to an hour,
//! once the provider has refused, the controller
//! - starts at most one upward probe above what it learned per probe interval, and
//! - never stays below half of the limit for longer than two windows.
//!
//! Simulated time (the controller's `ManualClock`); a sender with unlimited demand that
//! sends whenever admission lets it, each reply 1 ms later.

#[path = "sim/limiter.rs"]
#[allow(dead_code)]
mod limiter;

use std::time::Duration;

use limiter::{Kind, Limiter};
use mailvalve::policy::clock::{Clock, ManualClock};
use mailvalve::policy::controller::{Controller, ControllerParams, FeedbackCtx, Wait};
use mailvalve::policy::verdict::{Phase, ThrottleKind, Verdict};
use proptest::prelude::*;

const PROBE: Duration = Duration::from_secs(600);
/// The fewest events per window the property covers (one: anything less is no limit).
const MIN_LIMIT: f64 = 1.0;

struct Run {
    /// (time, pace in force; 0 while blocked) from the first refusal on.
    pace: Vec<(Duration, f64)>,
    first_refusal: Option<Duration>,
    /// Times an upward probe began.
    probe_starts: Vec<Duration>,
    end: Duration,
}

fn drive(mut lim: Limiter, duration: Duration) -> Run {
    let clock = ManualClock::new();
    let ctl = Controller::new(
        ControllerParams {
            probe_interval: PROBE,
            seed: Some(1),
            ..ControllerParams::default()
        },
        clock.clone(),
    );
    let ctx = FeedbackCtx {
        in_flight_connections: 1,
        working_connections: 1,
    };
    let refused = Verdict::Throttle(ThrottleKind::Rate);
    let mut run = Run {
        pace: Vec::new(),
        first_refusal: None,
        probe_starts: Vec::new(),
        end: duration,
    };
    let mut probes = 0u64;
    let mut steps = 0u64;
    while clock.now() < duration && steps < 3_000_000 {
        steps += 1;
        match ctl.admit() {
            Ok(()) => {
                clock.advance(Duration::from_millis(1));
                let now = clock.now();
                if lim.attempt(now) {
                    ctl.on_reply(Phase::DataEnd, &Verdict::Accept, ctx);
                } else {
                    run.first_refusal.get_or_insert(now);
                    ctl.on_reply(Phase::Mail, &refused, ctx);
                }
            }
            Err(Wait::Rate(d)) => clock.advance(d.max(Duration::from_micros(100))),
            Err(Wait::Paused { .. }) => panic!("no pauses here"),
        }
        let s = ctl.stats();
        let now = clock.now();
        if s.rate_probes > probes {
            probes = s.rate_probes;
            run.probe_starts.push(now);
        }
        if run.first_refusal.is_some() {
            let p = if s.rate_blocked {
                0.0
            } else {
                s.rate.unwrap_or(f64::INFINITY)
            };
            if run.pace.last().is_none_or(|(_, q)| *q != p) {
                run.pace.push((now, p));
            }
        }
    }
    run.end = clock.now();
    run
}

/// The longest stretch with the pace below `level`.
fn longest_below(pace: &[(Duration, f64)], level: f64, end: Duration) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since: Option<Duration> = None;
    for &(t, p) in pace {
        match (p < level, since) {
            (true, None) => since = Some(t),
            (false, Some(s)) => {
                longest = longest.max(t - s);
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        longest = longest.max(end.saturating_sub(s));
    }
    longest
}

/// The most events in any span of `span` starting at one of them.
fn most_in(times: &[Duration], span: Duration) -> usize {
    let mut most = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= span {
            lo += 1;
        }
        most = most.max(hi + 1 - lo);
    }
    most
}

/// The property for one limiter.
fn check(kind: Kind, window_log: f64, frac: f64) -> Result<(), TestCaseError> {
    let w = window_log.exp();
    let lo = (w / 60.0).max(MIN_LIMIT);
    let hi = (50.0 * w).min(2000.0).max(lo);
    let limit = (lo.ln() + frac * (hi.ln() - lo.ln()))
        .exp()
        .round()
        .max(1.0);
    let window = Duration::from_secs_f64(w);
    let per_sec = limit / w;
    let lim = Limiter::new(kind, limit, window, None);
    // Long enough for several windows and several probe intervals.
    let duration = (window * 8).max(PROBE * 4) + Duration::from_secs(120);
    let run = drive(lim, duration);
    if run.first_refusal.is_none() {
        // Never refused (the limit is above what slow start reached): nothing to show.
        return Ok(());
    }
    // Below half the limit: never longer than two windows (after the first refusal).
    let below = longest_below(&run.pace, per_sec / 2.0, run.end);
    prop_assert!(
        below <= window * 2,
        "{kind:?} {limit}/{w:.1}s: below half for {below:?} > 2 windows; pace {:?}",
        &run.pace.iter().take(40).collect::<Vec<_>>()
    );
    // Upward probes: at most one per probe interval.
    let probes = most_in(&run.probe_starts, PROBE);
    prop_assert!(
        probes <= 1,
        "{kind:?} {limit}/{w:.1}s: {probes} probes in one interval: {:?}",
        run.probe_starts
    );
    Ok(())
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Fixed), Just(Kind::Sliding), Just(Kind::Bucket)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn probes_are_rare_and_the_pace_never_sinks_below_half(
        kind in kind(),
        // Window 1 s … 1 h, log-uniform.
        window_log in 0.0f64..(3600f64).ln(),
        // Where the limit lies between one a minute and fifty a second (at least
        // MIN_LIMIT and at most 2000 per window, to keep each case quick), log-uniform.
        frac in 0.0f64..1.0,
    ) {
        check(kind, window_log, frac)?;
    }
}
