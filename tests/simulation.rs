//! Simulation tests: the controller against a simulated provider in simulated time.
//! Each scenario is a file in `tests/scenarios/` with the provider's limits and the
//! ranges the run must land in (DESIGN "The controller"). Run with `--nocapture` to see
//! the figures.

#[path = "sim/mod.rs"]
mod sim;

#[test]
fn a_connection_limit() {
    sim::check("a_connection_limit");
}

#[test]
fn b_rate_limit() {
    sim::check("b_rate_limit");
}

#[test]
fn c_unknown_recipients() {
    sim::check("c_unknown_recipients");
}

#[test]
fn d_quota() {
    sim::check("d_quota");
}

#[test]
fn e_limit_lifted() {
    sim::check("e_limit_lifted");
}

#[test]
fn f_wrong_password() {
    sim::check("f_wrong_password");
}

#[test]
fn runs_are_deterministic() {
    let path = format!(
        "{}/tests/scenarios/b_rate_limit.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let sc: sim::Scenario = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sim::run(&sc).metrics, sim::run(&sc).metrics);
}

/// Issue 10's scenario matrix: every limiter kind, with `generic` settings and with a
/// matching profile, against the targets (see `sim::matrix`). Prints one table (the
/// README's "What mailvalve learns").
#[test]
fn matrix() {
    let dir = format!("{}/tests/scenarios/matrix", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 11, "{files:?}");
    let scenarios: Vec<(String, sim::matrix::MatrixScenario)> = files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            let m = toml::from_str(&text).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, m)
        })
        .collect();
    // Two threads: the scenarios are independent and the machine has two cores.
    let (a, b): (Vec<_>, Vec<_>) = scenarios.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let run_all = |part: Vec<(usize, &(String, sim::matrix::MatrixScenario))>| {
        part.into_iter()
            .map(|(i, (name, m))| (i, sim::matrix::rows(name, m)))
            .collect::<Vec<_>>()
    };
    let (mut ra, rb) = std::thread::scope(|s| {
        let hb = s.spawn(|| run_all(b));
        let ra = run_all(a);
        (ra, hb.join().unwrap_or_default())
    });
    ra.extend(rb);
    ra.sort_by_key(|(i, _)| *i);
    let rows: Vec<_> = ra.into_iter().flat_map(|(_, r)| r).collect();
    println!("{}", sim::matrix::table(&rows));
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r.pending.is_none() && !r.failures.is_empty())
        .map(|r| format!("{} ({}): {}", r.scenario, r.profile, r.failures.join("; ")))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}
