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
