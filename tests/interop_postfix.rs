//! Interop against a real throttling provider: a private Postfix `smtpd` that allows two
//! connections per client (anvil, `smtpd_client_connection_count_limit = 2`) and relays
//! everything it accepts to `smtp-sink`.
//!
//! ```text
//! smtp-source -s 20 -m 2000 ──▶ mailvalve (passthrough, starts at 4 connections)
//!     ──▶ Postfix smtpd (421 4.7.0 "too many connections" above 2) ──▶ smtp-sink -d
//! ```
//!
//! The check (from the issue): all 2000 messages arrive at smtp-sink, and the Postfix log
//! shows at most 3 refused connections — mailvalve learns the limit of 2 from the first
//! refusals and does not run into it again within `probe_interval` (10 min).
//!
//! Postfix is set up by the test itself in a temporary directory
//! (`support::postfix::Postfix`) and stopped when the guard drops, also when the test
//! panics. Starting Postfix needs root; without root (or without the tools) the test
//! prints `SKIPPED: ...` and passes, unless `MAILVALVE_REQUIRE_TOOLS` is set (CI), then
//! it fails. Refusals are counted by anvil's log line (`support::postfix::anvil`).

mod support;

use support::client::Client;
use support::harness::*;
use support::postfix::{anvil, tail, Postfix};
use support::sink::start_sink;

use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Bound for the 2000-message run (debug build, 2 cores in CI).
const LOAD_RUN: Duration = Duration::from_secs(240);
/// Postfix relays asynchronously: how long the last messages may take to reach the sink
/// after smtp-source is done.
const DRAIN: Duration = Duration::from_secs(120);

/// What anvil's refusal looks like in the Postfix log (the 421 reply text itself is not
/// logged).
const REFUSAL_LOG: &str = anvil::CONNECTION_COUNT;

/// Opens three raw connections to Postfix, one after the other, and returns the
/// greetings: anvil must greet the third with `421 4.7.0 ... too many connections`.
fn three_raw_greetings(port: u16) -> Vec<String> {
    let mut conns = Vec::new();
    let mut greetings = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(port).expect("connect to Postfix");
        greetings.push(c.reply().expect("Postfix greeting").1);
        conns.push(c);
    }
    for mut c in conns {
        let _ = c.write_line("QUIT");
    }
    greetings
}

// ------------------------------------------------------------------------------------
// mailvalve
// ------------------------------------------------------------------------------------

/// Passthrough to the Postfix smtpd, starting above its limit of 2 (4 connections,
/// at most 20), so that mailvalve has to learn the limit from Postfix's replies.
fn config(postfix_port: u16) -> String {
    format!(
        r#"mode = "passthrough"

[server]
listen = "{{LISTEN}}"
hostname = "mailvalve.test"

[http]
listen = "127.0.0.1:0"

[upstream]
host = "127.0.0.1"
port = {postfix_port}
tls = "none"
# A server we run ourselves: its replies are the only limits.
profile = "local"
max_connections = 20
# smtp-source aborts on any 4xx at MAIL, and mailvalve answers 451 when admission
# waits longer than this: 20 sessions sharing 2 connections must never get there.
admission_wait = "60s"

[upstream.limits]
initial_connections = 4
max_connections = 20
"#
    )
}

// ------------------------------------------------------------------------------------
// The test
// ------------------------------------------------------------------------------------

#[test]
fn postfix_with_two_connections_2000_messages_at_most_3_refusals() {
    const T: &str = "postfix_with_two_connections_2000_messages_at_most_3_refusals";
    const MESSAGES: usize = 2000;
    const MAX_REFUSALS: usize = 3;
    let (Some(postfix_bin), Some(sink_bin), Some(source)) = (
        need(T, "postfix"),
        need(T, "smtp-sink"),
        need(T, "smtp-source"),
    ) else {
        return;
    };
    if !is_root() {
        skip(T, "starting a private Postfix needs root");
        return;
    }
    let dir = tempdir();
    let sink = start_sink(&sink_bin, dir.path(), "sink", &[], free_port(), true);
    let postfix = Postfix::start(
        &postfix_bin,
        tool("script").as_deref(),
        dir.path(),
        &format!(
            "relayhost = [127.0.0.1]:{}
# The throttling provider: two connections per client; loopback is not exempt.
smtpd_client_connection_count_limit = 2
smtpd_client_event_limit_exceptions =",
            sink.port
        ),
    );

    // The provider really throttles: a third simultaneous client is refused by anvil.
    let greetings = three_raw_greetings(postfix.port);
    assert!(
        greetings[0].starts_with("220") && greetings[1].starts_with("220"),
        "first two clients must be greeted: {greetings:?}\nlog:\n{}",
        postfix.log_text()
    );
    assert!(
        greetings[2].starts_with("421 4.7.0") && greetings[2].contains("too many connections"),
        "third client must be refused by anvil: {greetings:?}\nlog:\n{}",
        postfix.log_text()
    );
    postfix.wait_sessions_closed(Duration::from_secs(10));
    assert_eq!(
        postfix.log_count(0, REFUSAL_LOG),
        1,
        "anvil's refusal must be logged as {REFUSAL_LOG:?}:\n{}",
        postfix.log_text()
    );
    let log_start = postfix.log_len();

    let relay = start_mailvalve(
        dir.path(),
        &config(postfix.port),
        &[("RUST_LOG", "mailvalve=info")],
    );
    let started = Instant::now();
    let (st, out) = run(
        "smtp-source",
        Command::new(&source)
            .args(["-s", "20", "-m", &MESSAGES.to_string(), "-l", "2048"])
            .args(["-M", "client.test"])
            .args(["-f", "from@example.org", "-t", "to@example.net"])
            .arg(format!("127.0.0.1:{}", relay.port)),
        dir.path(),
        LOAD_RUN,
    );
    let sent_in = started.elapsed();
    let refusals = postfix.log_count(log_start, REFUSAL_LOG);
    let mv_log = relay.proc.output();
    let limit_changes: Vec<&str> = mv_log
        .lines()
        .filter(|l| l.contains("concurrency limit changed"))
        .collect();
    assert!(
        st.success(),
        "smtp-source through mailvalve failed ({st}) after {sent_in:?}, \
         {refusals} refusals in the Postfix log:\n{out}\nmailvalve:\n{mv_log}"
    );

    // Postfix relays asynchronously: wait (bounded) until the sink has everything.
    let deadline = Instant::now() + DRAIN;
    while sink.count() < MESSAGES && Instant::now() < deadline {
        sleep(Duration::from_millis(200));
    }
    let delivered_in = started.elapsed();
    // Anything still to come would show up now.
    sleep(Duration::from_millis(500));
    let delivered = sink.count();
    let refusals = postfix.log_count(log_start, REFUSAL_LOG);
    eprintln!(
        "{T}: smtp-source done in {sent_in:?}; {delivered}/{MESSAGES} at smtp-sink after \
         {delivered_in:?}; Postfix refused {refusals} connection(s) (at most {MAX_REFUSALS}); \
         Postfix accepted {} connection(s); mailvalve limit changes: {limit_changes:#?}",
        postfix.log_count(log_start, ": connect from "),
    );
    assert_eq!(
        delivered,
        MESSAGES,
        "messages at smtp-sink ({} still in the Postfix queue); Postfix log tail:\n{}",
        postfix.queued(),
        tail(&postfix.log_text(), 40)
    );
    assert!(
        refusals <= MAX_REFUSALS,
        "Postfix refused {refusals} connections (at most {MAX_REFUSALS} allowed)\n\
         mailvalve limit changes: {limit_changes:#?}\nmailvalve log tail:\n{}",
        tail(&mv_log, 60)
    );
}
