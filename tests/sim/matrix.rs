//! The scenario matrix of issue 10: each file in `tests/scenarios/matrix/` is one
//! provider limiter, run twice — with `generic` controller settings (rate unknown,
//! cautious start) and with a matching profile — and measured against the targets:
//! long-run delivery ≥ 90% of the limit, ≤ 2% of messages refused, a raised limit
//! reached within two probe intervals, a lowered one obeyed within one window.

use std::time::Duration;

use serde::Deserialize;

use super::provider::ProviderSpec;
use super::{run, ControllerSpec, Outcome, RunSpec, Scenario};

/// One matrix file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixScenario {
    pub description: String,
    pub matrix: MatrixSpec,
    /// Controller settings as `generic` gives them.
    #[serde(default)]
    pub generic: ControllerSpec,
    /// Controller settings as the matching profile gives them.
    #[serde(default)]
    pub profile: ControllerSpec,
    pub provider: ProviderSpec,
    pub run: RunSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixSpec {
    /// The limiter in words, for the table.
    pub limiter: String,
    /// The provider's limit at the end of the run, in messages per second.
    pub limit_per_sec: f64,
    /// The limiter's window (for "obeyed within one window").
    pub window_secs: f64,
    /// Long-run delivery is measured from here to the end of the run.
    pub measure_from_secs: f64,
    /// `raised` or `lowered`: the provider's last change is measured.
    pub change: Option<String>,
    /// Why this row may miss its targets for now (work not in this branch); the row is
    /// printed and its figures kept, its targets are not asserted.
    pub pending: Option<String>,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub limiter: String,
    pub profile: &'static str,
    pub delivered_per_sec: f64,
    pub limit_per_sec: f64,
    pub percent_of_limit: f64,
    pub refused_percent: f64,
    pub reach_raised_secs: Option<f64>,
    pub obey_lowered_secs: Option<f64>,
    pub failures: Vec<String>,
    pub pending: Option<String>,
}

/// Targets.
pub const MIN_PERCENT_OF_LIMIT: f64 = 90.0;
pub const MAX_REFUSED_PERCENT: f64 = 2.0;

impl MatrixScenario {
    fn scenario(&self, controller: &ControllerSpec) -> Scenario {
        Scenario {
            description: self.description.clone(),
            controller: controller.clone(),
            provider: self.provider.clone(),
            run: self.run.clone(),
            expect: Default::default(),
        }
    }
}

/// Runs both variants of a matrix file.
pub fn rows(name: &str, m: &MatrixScenario) -> Vec<Row> {
    [("generic", &m.generic), ("profile", &m.profile)]
        .into_iter()
        .map(|(profile, c)| {
            let sc = m.scenario(c);
            let probe = sc.params().probe_interval.as_secs_f64();
            let out = run(&sc);
            measure(name, m, profile, probe, &out)
        })
        .collect()
}

fn measure(
    name: &str,
    m: &MatrixScenario,
    profile: &'static str,
    probe: f64,
    out: &Outcome,
) -> Row {
    let spec = &m.matrix;
    let end = out.metrics.get("sim_end_secs").copied().unwrap_or(0.0);
    let from = spec.measure_from_secs;
    let span = (end - from).max(1e-9);
    let in_span = out
        .deliveries
        .iter()
        .filter(|t| t.as_secs_f64() >= from && t.as_secs_f64() < end)
        .count();
    let delivered_per_sec = in_span as f64 / span;
    let percent = 100.0 * delivered_per_sec / spec.limit_per_sec;
    let refused_percent = 100.0 * out.refusals.len() as f64 / (out.deliveries.len().max(1) as f64);
    let change_at = m.provider.changes.last().map(|c| c.at_secs as f64);
    let mut reach_raised_secs = None;
    let mut obey_lowered_secs = None;
    let mut failures = Vec::new();
    match (spec.change.as_deref(), change_at) {
        (Some("raised"), Some(at)) => {
            // The first trailing bin (one window, at least a minute) after the change
            // in which ≥ 90% of the new limit was delivered.
            let bin = spec.window_secs.max(60.0);
            let lag = first_bin_at(&out.deliveries, at, bin, 0.9 * spec.limit_per_sec, end);
            reach_raised_secs = Some(lag.unwrap_or(f64::INFINITY));
            if lag.is_none_or(|l| l > 2.0 * probe) {
                failures.push(format!(
                    "raised limit reached after {lag:?} s > 2 probe intervals ({} s)",
                    2.0 * probe
                ));
            }
        }
        (Some("lowered"), Some(at)) => {
            // The first time after the change at which the pace in force (0 while
            // blocked) is at or below the new limit.
            let t = out
                .pace
                .iter()
                .find(|(t, p)| t.as_secs_f64() >= at && *p <= spec.limit_per_sec * 1.0001)
                .map(|(t, _)| t.as_secs_f64() - at);
            obey_lowered_secs = Some(t.unwrap_or(f64::INFINITY));
            if t.is_none_or(|l| l > spec.window_secs) {
                failures.push(format!(
                    "lowered limit obeyed after {t:?} s > one window ({} s)",
                    spec.window_secs
                ));
            }
        }
        _ => {}
    }
    if percent < MIN_PERCENT_OF_LIMIT {
        failures.push(format!(
            "{percent:.1}% of the limit < {MIN_PERCENT_OF_LIMIT}%"
        ));
    }
    if refused_percent > MAX_REFUSED_PERCENT {
        failures.push(format!(
            "{refused_percent:.2}% refused > {MAX_REFUSED_PERCENT}%"
        ));
    }
    Row {
        scenario: name.to_owned(),
        limiter: spec.limiter.clone(),
        profile,
        delivered_per_sec,
        limit_per_sec: spec.limit_per_sec,
        percent_of_limit: percent,
        refused_percent,
        reach_raised_secs,
        obey_lowered_secs,
        failures,
        pending: spec.pending.clone(),
    }
}

/// Seconds after `at` at which a trailing bin of `bin` seconds first held at least
/// `rate` × `bin` deliveries.
fn first_bin_at(deliveries: &[Duration], at: f64, bin: f64, rate: f64, end: f64) -> Option<f64> {
    let times: Vec<f64> = deliveries.iter().map(|d| d.as_secs_f64()).collect();
    let need = (rate * bin).ceil() as usize;
    let mut lo = 0usize;
    for (hi, &t) in times.iter().enumerate() {
        if t < at + bin.min(end) {
            continue;
        }
        while times[lo] <= t - bin {
            lo += 1;
        }
        if hi + 1 - lo >= need && times[lo] >= at {
            return Some(t - at);
        }
    }
    None
}

fn secs(x: Option<f64>) -> String {
    match x {
        None => "–".to_owned(),
        Some(v) if v.is_infinite() => "never".to_owned(),
        Some(v) => format!("{v:.0} s"),
    }
}

/// The table, as Markdown (it goes into the README as printed).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | limiter | profile | delivered/s | limit/s | % of limit | refused % | raised limit reached after | lowered limit obeyed after | targets |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let verdict = match (&r.pending, r.failures.is_empty()) {
            (_, true) => "met".to_owned(),
            (Some(p), false) => format!("missed (pending: {p})"),
            (None, false) => format!("MISSED: {}", r.failures.join("; ")),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.1} | {:.2} | {} | {} | {} |\n",
            r.scenario,
            r.limiter,
            r.profile,
            r.delivered_per_sec,
            r.limit_per_sec,
            r.percent_of_limit,
            r.refused_percent,
            secs(r.reach_raised_secs),
            secs(r.obey_lowered_secs),
            verdict
        ));
    }
    out
}
