//! Simulation of the controller against a simulated provider, in simulated time.
//!
//! A discrete-event loop: connections open (taking `connect_ms`), carry one transaction
//! at a time (`service_ms`), and the clock jumps from one event to the next — no real
//! sleeping, no tokio. Every reply goes through the real `policy::classify` (built-in
//! rules) and then the real `Controller`.

pub mod limiter;
pub mod matrix;
pub mod provider;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use mailvalve::policy::classify::Classifier;
use mailvalve::policy::clock::{Clock, ManualClock};
use mailvalve::policy::controller::{Controller, ControllerParams, Disposition, FeedbackCtx, Wait};
use mailvalve::policy::latency::LatencyKind;
use mailvalve::policy::verdict::{PauseScope, Phase, ThrottleKind, Verdict};
use mailvalve::smtp::Reply;
use serde::Deserialize;

use provider::{Provider, ProviderSpec};

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub description: String,
    #[serde(default)]
    pub controller: ControllerSpec,
    pub provider: ProviderSpec,
    pub run: RunSpec,
    /// metric name → allowed range.
    pub expect: BTreeMap<String, Range>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSpec {
    pub initial_connections: Option<usize>,
    pub max_connections: Option<usize>,
    pub probe_interval_secs: Option<u64>,
    pub rate_per_second: Option<f64>,
    /// `true`: the message rate starts unlimited (`rate_per_second = inf`).
    #[serde(default)]
    pub rate_unlimited_start: bool,
    pub rate_cap: Option<f64>,
    pub recipient_rate_per_second: Option<f64>,
    pub recipient_rate_cap: Option<f64>,
    pub ramp_window_secs: Option<u64>,
    pub quota_pause_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub messages: usize,
    #[serde(default = "service")]
    pub service_ms: u64,
    #[serde(default = "connect")]
    pub connect_ms: u64,
    #[serde(default = "max_secs")]
    pub max_sim_secs: u64,
    /// Operator runs `resume` (and fixes the password) at this time.
    pub resume_at_secs: Option<u64>,
    #[serde(default)]
    pub seed: u64,
    /// Recipients per message.
    #[serde(default = "one_rcpt")]
    pub recipients: usize,
    /// Transactions per connection before it is closed (default: no limit).
    pub messages_per_connection: Option<usize>,
}

fn one_rcpt() -> usize {
    1
}

fn service() -> u64 {
    200
}
fn connect() -> u64 {
    300
}
fn max_secs() -> u64 {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Scenario {
    pub fn params(&self) -> ControllerParams {
        let c = &self.controller;
        let d = ControllerParams::default();
        ControllerParams {
            initial_connections: c.initial_connections.unwrap_or(d.initial_connections),
            max_connections: c.max_connections.unwrap_or(d.max_connections),
            probe_interval: c
                .probe_interval_secs
                .map_or(d.probe_interval, Duration::from_secs),
            rate_per_second: if c.rate_unlimited_start {
                Some(f64::INFINITY)
            } else {
                c.rate_per_second
            },
            rate_cap: c.rate_cap,
            recipient_rate_per_second: c.recipient_rate_per_second,
            recipient_rate_cap: c.recipient_rate_cap,
            ramp_window: c
                .ramp_window_secs
                .map_or(d.ramp_window, Duration::from_secs),
            quota_pause: c
                .quota_pause_secs
                .map_or(d.quota_pause, Duration::from_secs),
            seed: Some(self.run.seed),
            ..d
        }
    }
}

/// The real classifier with the built-in rules, built once.
pub fn classify(phase: Phase, r: &Reply) -> Verdict {
    static CLASSIFIER: std::sync::OnceLock<Classifier> = std::sync::OnceLock::new();
    CLASSIFIER
        .get_or_init(|| Classifier::builtin().expect("built-in rules compile"))
        .classify(phase, r)
        .verdict
}

#[derive(Debug, Clone)]
struct Msg {
    attempts: u32,
    holds: u32,
}

#[derive(Debug)]
enum ConnState {
    Connecting {
        done: Duration,
    },
    /// `used`: transactions this connection carried.
    Idle {
        used: usize,
    },
    Busy {
        done: Duration,
        msg: usize,
        used: usize,
    },
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub metrics: BTreeMap<String, f64>,
    /// When each message was delivered.
    pub deliveries: Vec<Duration>,
    /// When the provider refused something (a rate or recipient throttle, a quota
    /// reply, a refused connection).
    pub refusals: Vec<Duration>,
    /// (time, message rate in force or 0 while blocked), after every admission round.
    pub pace: Vec<(Duration, f64)>,
}

const MAX_STEPS: u64 = 20_000_000;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

/// Runs a scenario to completion (or `max_sim_secs`) and measures it.
pub fn run(sc: &Scenario) -> Outcome {
    let clock = ManualClock::new();
    let params = sc.params();
    let probe = params.probe_interval;
    let ctl = Controller::new(params, clock.clone());
    let mut prov = Provider::new(sc.provider.clone());
    let service = ms(sc.run.service_ms);
    let connect_time = ms(sc.run.connect_ms);
    let end = Duration::from_secs(sc.run.max_sim_secs);
    let resume_at = sc.run.resume_at_secs.map(Duration::from_secs);
    let mut resumed = false;

    let mut msgs = vec![
        Msg {
            attempts: 0,
            holds: 0
        };
        sc.run.messages
    ];
    let mut ready: VecDeque<usize> = (0..sc.run.messages).collect();
    let mut delayed: BinaryHeap<Reverse<(Duration, usize)>> = BinaryHeap::new();
    let mut conns: Vec<ConnState> = Vec::new();

    let (mut delivered, mut suppressed, mut rejected) = (0usize, 0usize, 0usize);
    let (mut refused, mut rate_throttles, mut defers, mut quota_replies) = (0u64, 0u64, 0u64, 0u64);
    let (mut auth_attempts, mut auth_before_resume) = (0u64, 0u64);
    let mut while_paused = 0u64;
    let mut last_delivery = Duration::ZERO;
    let mut first_pause: Option<Duration> = None;
    let mut first_delivery_after_pause: Option<Duration> = None;
    let mut reached_k: Option<Duration> = None;
    let mut max_working = 0usize;
    let mut steps = 0u64;
    let mut rcpt_throttles = 0u64;
    let mut deliveries: Vec<Duration> = Vec::new();
    let mut refusals: Vec<Duration> = Vec::new();
    let mut pace: Vec<(Duration, f64)> = Vec::new();

    while steps < MAX_STEPS {
        steps += 1;
        let now = clock.now();
        if now > end {
            break;
        }
        let next_change = prov.apply_changes(now);
        if let Some(r) = resume_at {
            if !resumed && now >= r {
                resumed = true;
                prov.fix_password();
                ctl.resume();
            }
        }
        let working = |conns: &Vec<ConnState>| {
            conns
                .iter()
                .filter(|c| !matches!(c, ConnState::Connecting { .. }))
                .count()
        };
        let busy = |conns: &Vec<ConnState>| {
            conns
                .iter()
                .filter(|c| matches!(c, ConnState::Busy { .. }))
                .count()
        };

        // 1. Connections that finished connecting.
        let mut i = 0;
        while i < conns.len() {
            if let ConnState::Connecting { done } = conns[i] {
                if done <= now {
                    let ctx = FeedbackCtx {
                        in_flight_connections: busy(&conns),
                        working_connections: working(&conns),
                    };
                    match prov.connect(now) {
                        Ok(()) => {
                            ctl.on_reply(Phase::Greeting, &Verdict::Accept, ctx);
                            conns[i] = ConnState::Idle { used: 0 };
                        }
                        Err((phase, reply)) => {
                            if reply.code == 421 {
                                refused += 1;
                                refusals.push(now);
                            }
                            if phase == Phase::Auth {
                                auth_attempts += 1;
                                if !resumed {
                                    auth_before_resume += 1;
                                }
                            }
                            let v = classify(phase, &reply);
                            ctl.on_reply(phase, &v, ctx);
                            conns.swap_remove(i);
                            continue;
                        }
                    }
                }
            }
            i += 1;
        }

        // 2. Transactions that finished.
        for i in 0..conns.len() {
            let ConnState::Busy { done, msg, used } = conns[i] else {
                continue;
            };
            if done > now {
                continue;
            }
            let ctx = FeedbackCtx {
                in_flight_connections: busy(&conns),
                working_connections: working(&conns),
            };
            conns[i] = ConnState::Idle { used: used + 1 };
            let tr = prov.transaction(now, msg, sc.run.recipients);
            let mut disposition = Disposition::Proceed;
            for (phase, reply) in &tr.replies {
                let v = classify(*phase, reply);
                match v {
                    Verdict::Throttle(ThrottleKind::Rate) => {
                        rate_throttles += 1;
                        refusals.push(now);
                    }
                    Verdict::Throttle(ThrottleKind::Recipients) => {
                        rcpt_throttles += 1;
                        refusals.push(now);
                    }
                    Verdict::Pause {
                        scope: PauseScope::Quota,
                        ..
                    } => {
                        quota_replies += 1;
                        refusals.push(now);
                    }
                    Verdict::Defer { .. } => defers += 1,
                    _ => {}
                }
                if *phase == Phase::Data {
                    ctl.on_latency(LatencyKind::To354, service / 4);
                }
                if *phase == Phase::DataEnd {
                    ctl.on_latency(LatencyKind::ToFinal, service / 2);
                }
                disposition = ctl.on_reply(*phase, &v, ctx);
                if disposition != Disposition::Proceed {
                    break;
                }
            }
            match disposition {
                Disposition::Proceed => {
                    delivered += 1;
                    deliveries.push(now);
                    last_delivery = now;
                    if first_pause.is_some() && first_delivery_after_pause.is_none() {
                        first_delivery_after_pause = Some(now);
                    }
                }
                Disposition::Retry {
                    hint,
                    counts_as_attempt,
                } => {
                    if counts_as_attempt {
                        let m = &mut msgs[msg];
                        let delay = ctl.retry_delay(m.attempts, hint);
                        m.attempts += 1;
                        delayed.push(Reverse((now + delay, msg)));
                    } else {
                        // Our pacing, not the message: straight back through admission.
                        ready.push_front(msg);
                    }
                }
                Disposition::Hold => {
                    msgs[msg].holds += 1;
                    ready.push_front(msg);
                }
                Disposition::Suppress | Disposition::SoftBounce => suppressed += 1,
                Disposition::Reject => rejected += 1,
            }
        }
        if ctl.is_paused() && first_pause.is_none() {
            first_pause = Some(now);
        }

        // 3. Close connections that carried their share, and idle ones above the limit.
        if let Some(per) = sc.run.messages_per_connection {
            let mut j = 0;
            while j < conns.len() {
                if matches!(conns[j], ConnState::Idle { used } if used >= per) {
                    conns.swap_remove(j);
                    prov.disconnect();
                } else {
                    j += 1;
                }
            }
        }
        let limit = ctl.concurrency_limit();
        let mut open = conns.len();
        let mut j = 0;
        while open > limit && j < conns.len() {
            if matches!(conns[j], ConnState::Idle { .. }) {
                conns.swap_remove(j);
                prov.disconnect();
                open -= 1;
            } else {
                j += 1;
            }
        }
        let w = working(&conns);
        max_working = max_working.max(w);
        if reached_k.is_none()
            && prov.max_connections().is_some_and(|k| w >= k)
            && !sc.provider.changes.is_empty()
            && next_change.is_none()
        {
            reached_k = Some(now);
        }

        // 4. Delayed messages that are due.
        while let Some(Reverse((t, id))) = delayed.peek().copied() {
            if t > now {
                break;
            }
            delayed.pop();
            ready.push_back(id);
        }

        // 5. Dispatch to idle connections through admission.
        let mut wake: Option<Duration> = None;
        for c in conns.iter_mut() {
            if ready.is_empty() {
                break;
            }
            let ConnState::Idle { used } = *c else {
                continue;
            };
            match ctl.admit_n(u32::try_from(sc.run.recipients).unwrap_or(u32::MAX)) {
                Ok(()) => {
                    if ctl.is_paused() {
                        while_paused += 1;
                    }
                    if let Some(id) = ready.pop_front() {
                        *c = ConnState::Busy {
                            used,
                            done: now + service,
                            msg: id,
                        };
                    }
                }
                Err(Wait::Rate(d)) => {
                    wake = Some(now + d.max(ms(1)));
                    break;
                }
                Err(Wait::Paused { remaining, .. }) => {
                    wake = remaining.map(|r| now + r.max(ms(1)));
                    break;
                }
            }
        }

        let st = ctl.stats();
        let now_pace = if st.rate_blocked || st.pauses > 0 && ctl.is_paused() {
            0.0
        } else {
            st.rate.unwrap_or(f64::INFINITY)
        };
        if pace.last().is_none_or(|(_, p)| *p != now_pace) {
            pace.push((now, now_pace));
        }

        // 6. Open connections while there is work and room.
        let idle = conns
            .iter()
            .filter(|c| matches!(c, ConnState::Idle { .. }))
            .count();
        let mut want = ready.len().saturating_sub(idle);
        while want > 0 && conns.len() < ctl.concurrency_limit() && !ctl.is_paused() {
            // Warm-up: while no session is established, open one connection at a time,
            // so a wrong password or a refusal is learned from a single attempt.
            let connecting = conns.len() - working(&conns);
            if working(&conns) == 0 && connecting > 0 {
                break;
            }
            if let Some(w) = ctl.connect_wait() {
                wake = Some(wake.map_or(now + w, |x: Duration| x.min(now + w)));
                break;
            }
            conns.push(ConnState::Connecting {
                done: now + connect_time,
            });
            want -= 1;
        }

        // 7. Next event.
        let mut next: Option<Duration> = wake;
        let mut consider = |t: Duration| {
            next = Some(next.map_or(t, |n: Duration| n.min(t)));
        };
        for c in &conns {
            match c {
                ConnState::Connecting { done } | ConnState::Busy { done, .. } => consider(*done),
                ConnState::Idle { .. } => {}
            }
        }
        if let Some(Reverse((t, _))) = delayed.peek() {
            consider(*t);
        }
        if let Some(t) = next_change {
            consider(t);
        }
        if let Some(r) = resume_at {
            if !resumed {
                consider(r);
            }
        }
        let Some(t) = next else { break };
        clock.advance_to(t.max(now));
        if t <= now && ready.is_empty() && delayed.is_empty() && busy(&conns) == 0 {
            break;
        }
    }

    let n = sc.run.messages.max(1) as f64;
    let elapsed = last_delivery.as_secs_f64().max(1e-9);
    let stats = ctl.stats();
    let mut m = BTreeMap::new();
    m.insert("steps".into(), steps as f64);
    m.insert(
        "sim_end_secs".into(),
        clock.now().as_secs_f64().min(end.as_secs_f64()),
    );
    m.insert("elapsed_secs".into(), elapsed);
    m.insert("delivered".into(), delivered as f64);
    m.insert("delivered_ratio".into(), delivered as f64 / n);
    m.insert("suppressed".into(), suppressed as f64);
    m.insert("rejected".into(), rejected as f64);
    m.insert("refused_connections".into(), refused as f64);
    let probes_elapsed = (clock.now().as_secs_f64() / probe.as_secs_f64().max(1e-9)).floor();
    m.insert("probe_intervals_elapsed".into(), probes_elapsed);
    m.insert(
        "refused_minus_probe_intervals".into(),
        refused as f64 - probes_elapsed,
    );
    if let Some(k) = sc.provider.max_connections {
        let ideal = n / (k as f64 / service.as_secs_f64());
        m.insert("throughput_ratio".into(), ideal / elapsed);
    }
    m.insert("rate_throttles".into(), rate_throttles as f64);
    m.insert("recipient_throttles".into(), rcpt_throttles as f64);
    m.insert(
        "deferral_ratio".into(),
        (rate_throttles + rcpt_throttles + defers) as f64 / n,
    );
    if let Some(r) = sc.provider.rate_per_minute {
        m.insert(
            "achieved_per_minute".into(),
            delivered as f64 / elapsed * 60.0,
        );
        m.insert("rate_ratio".into(), delivered as f64 / elapsed * 60.0 / r);
    }
    m.insert("quota_replies".into(), quota_replies as f64);
    m.insert(
        "attempts_used".into(),
        msgs.iter().map(|x| x.attempts as f64).sum(),
    );
    m.insert("holds".into(), msgs.iter().map(|x| x.holds as f64).sum());
    m.insert("transactions_while_paused".into(), while_paused as f64);
    m.insert("auth_attempts".into(), auth_attempts as f64);
    m.insert(
        "auth_attempts_before_resume".into(),
        auth_before_resume as f64,
    );
    if let (Some(p), Some(q)) = (first_pause, sc.provider.quota) {
        let _ = q;
        let window = sc.provider.quota_window_secs as f64;
        let reset = ((p.as_secs_f64() / window).floor() + 1.0) * window;
        if let Some(r) = first_delivery_after_pause {
            m.insert(
                "resume_lag_after_reset_secs".into(),
                r.as_secs_f64() - reset,
            );
        }
        m.insert("paused_at_secs".into(), p.as_secs_f64());
    }
    if let (Some(r), Some(c)) = (reached_k, sc.provider.changes.last()) {
        let lag = r.as_secs_f64() - c.at_secs as f64;
        m.insert("reach_lag_secs".into(), lag);
        m.insert(
            "reach_lag_probe_intervals".into(),
            lag / probe.as_secs_f64(),
        );
    }
    m.insert("max_working_connections".into(), max_working as f64);
    m.insert(
        "final_concurrency_limit".into(),
        stats.concurrency_limit as f64,
    );
    m.insert(
        "connection_decreases".into(),
        stats.connection_decreases as f64,
    );
    m.insert("connection_probes".into(), stats.connection_probes as f64);
    m.insert("rate_decreases".into(), stats.rate_decreases as f64);
    m.insert(
        "final_rate_per_minute".into(),
        stats.rate.map_or(-1.0, |r| r * 60.0),
    );
    m.insert("pauses".into(), stats.pauses as f64);
    Outcome {
        metrics: m,
        deliveries,
        refusals,
        pace,
    }
}

/// Loads `tests/scenarios/<name>.toml`, runs it, prints the figures, checks the ranges.
pub fn check(name: &str) {
    let path = format!("{}/tests/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let sc: Scenario = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let out = run(&sc);
    println!("scenario {name}: {}", sc.description);
    for (k, v) in &out.metrics {
        println!("  {k:32} {v:.4}");
    }
    let mut failures = Vec::new();
    for (k, r) in &sc.expect {
        let Some(v) = out.metrics.get(k) else {
            failures.push(format!("{k}: no such metric"));
            continue;
        };
        if r.min.is_some_and(|m| *v < m) || r.max.is_some_and(|m| *v > m) {
            failures.push(format!("{k} = {v:.4} outside [{:?}, {:?}]", r.min, r.max));
        } else {
            println!("  ok {k} = {v:.4} in [{:?}, {:?}]", r.min, r.max);
        }
    }
    assert!(failures.is_empty(), "scenario {name}: {failures:#?}");
}
