//! What was learned survives a restart (issue 10 point 5), against the built
//! `mailvalve run` binary in queue mode and the in-process scripted provider: the state
//! file (`<queue.dir>/quota.json`) keeps the controller's learned state with its pause,
//! saved when it changes, so it survives `kill -9`; an auth pause is restored only while
//! the credentials are unchanged (the file holds a salted fingerprint, never the
//! password); a corrupt state file gets a warning naming it, is kept aside, and the
//! instance starts fresh with nothing queued lost. `mailvalve queue status` shows what
//! was learned and when.
//!
//! Every wait is bounded; the child process is killed (SIGKILL) when its guard drops.

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};
use support::client::Client;
use support::harness::{mailvalve_cli, start_mailvalve, tempdir, Relay};
use support::provider::Provider;

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD_WRONG: &str = "wrong-Secret-41";
const PASSWORD_RIGHT: &str = "right-Secret-42";

fn config(provider_port: u16, password: &str) -> String {
    format!(
        r#"mode = "queue"

[server]
listen = "{{LISTEN}}"
hostname = "mailvalve.test"
shutdown_grace = "2s"

[http]
listen = ""

[upstream]
host = "127.0.0.1"
port = {provider_port}
tls = "none"
profile = "local"
username = "me@example.org"
password = "{password}"

[queue]
dir = "spool"

[suppression]
path = "suppression.redb"
"#
    )
}

/// `mailvalve queue ARGS -c FILE` in `dir`: (success, stdout + stderr).
fn queue(dir: &Path, args: &[&str]) -> (bool, String) {
    let all: Vec<&str> = std::iter::once("queue")
        .chain(args.iter().copied())
        .collect();
    mailvalve_cli(dir, &all)
}

/// Polls (bounded) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) for the instance's control socket; `start` removes the one a killed
/// instance left behind first, so the CLI never opens the spool directly (and takes its
/// lock) while the instance is starting.
fn wait_for_socket(dir: &Path) {
    let sock = dir.join("spool").join("control.sock");
    wait_until("the control socket", || sock.exists());
}

fn send(port: u16, n: usize) {
    let mut c = Client::session(port).unwrap();
    let msg =
        format!("Subject: state {n}\r\nMessage-ID: <state-{n}@example.org>\r\n\r\nhello {n}\r\n");
    let r = c
        .send("news@example.org", "reader@example.net", &msg)
        .unwrap();
    assert_eq!(r.0, 250, "queued: {r:?}");
    let _ = c.cmd("QUIT");
}

fn state_file(dir: &Path) -> String {
    fs::read_to_string(dir.join("spool").join("quota.json")).unwrap_or_default()
}

fn auth_attempts(p: &Provider) -> usize {
    p.lines()
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("AUTH"))
        .count()
}

fn start(dir: &Path, provider: &Provider, password: &str) -> Relay {
    let _ = fs::remove_file(dir.join("spool").join("control.sock"));
    let mv = start_mailvalve(dir, &config(provider.addr().port(), password), &[]);
    wait_for_socket(dir);
    mv
}

#[test]
fn learned_state_survives_kill_9_and_an_auth_pause_only_with_the_same_credentials() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let provider = rt.block_on(
        Provider::builder()
            .auth("me@example.org", PASSWORD_RIGHT)
            .start(),
    );
    let dir = tempdir();
    let d = dir.path();

    // Run A, wrong password: the provider answers 535 5.7.8, the account is paused, and
    // the pause reaches the state file within the save interval.
    let mv = start(d, &provider, PASSWORD_WRONG);
    send(mv.port, 1);
    wait_until("the auth pause in the state file", || {
        state_file(d).contains("\"scope\":\"auth\"")
    });
    let text = state_file(d);
    assert!(
        !text.contains(PASSWORD_WRONG) && !text.contains("me@example.org"),
        "no secret, no user name in the state file: {text}"
    );
    assert!(text.contains("pbkdf2-sha256$"), "{text}");
    let attempts = auth_attempts(&provider);
    assert!(attempts >= 1);
    drop(mv); // kill -9

    // Run B, same credentials: the pause is back at once, before any new sign-in.
    let mv = start(d, &provider, PASSWORD_WRONG);
    let (ok, out) = queue(d, &["status"]);
    assert!(ok, "{out}");
    assert!(out.contains("account pause: on"), "restored pause: {out}");
    assert!(out.contains("learned (saved "), "{out}");
    assert!(out.contains("pause: sign-in refused"), "{out}");
    assert_eq!(
        auth_attempts(&provider),
        attempts,
        "a restored auth pause does not sign in again with the refused password"
    );
    drop(mv); // kill -9

    // Run C, the password changed: the saved auth pause is dropped, the message goes.
    let mv = start(d, &provider, PASSWORD_RIGHT);
    wait_until("message 1 delivered", || provider.messages().len() == 1);
    let (ok, out) = queue(d, &["status"]);
    assert!(ok, "{out}");
    assert!(out.contains("account pause: off"), "{out}");
    // A message queued with delivery paused by the operator, then kill -9.
    let (ok, out) = queue(d, &["pause"]);
    assert!(ok, "{out}");
    send(mv.port, 2);
    drop(mv); // kill -9

    // A corrupt state file: a warning naming it, kept aside, a fresh start, nothing
    // queued lost.
    fs::write(
        d.join("spool").join("quota.json"),
        b"{\"minutes\": [garbage",
    )
    .unwrap();
    let mut mv = start(d, &provider, PASSWORD_RIGHT);
    let (ok, out) = queue(d, &["resume"]);
    assert!(ok, "{out}");
    wait_until("message 2 delivered", || provider.messages().len() == 2);
    mv.assert_alive();
    let log = mv.proc.output();
    assert!(
        log.contains("quota.json is unreadable") && log.contains("quota.json.corrupt"),
        "the warning names the file: {log}"
    );
    assert_eq!(
        fs::read(d.join("spool").join("quota.json.corrupt")).unwrap(),
        b"{\"minutes\": [garbage"
    );
    assert!(!log.contains(PASSWORD_RIGHT) && !log.contains(PASSWORD_WRONG));
}

/// In process, passthrough: a rate learned from a provider's "450 4.7.1 too much
/// mail" (fed to the controller) is in the state file at `<queue.dir>/quota.json` after a stop, and the next
/// start begins at that rate instead of unlimited; `queue status`'s text says what was
/// learned and how long ago.
#[test]
fn a_learned_rate_is_restored_in_passthrough_too() {
    use mailvalve::config::{Config, Mode};
    use mailvalve::relay::Relay;
    use tokio_util::sync::CancellationToken;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let provider = rt.block_on(
        Provider::builder()
            .mail_reply("450 4.7.1 Error: too much mail, slow down")
            .start(),
    );
    let dir = tempdir();
    let mut cfg = Config {
        mode: Mode::Passthrough,
        upstream: provider.upstream_config(),
        ..Config::default()
    };
    cfg.upstream.profile = "local".into();
    cfg.queue.dir = dir.path().join("state");
    cfg.suppression.path = dir.path().join("suppression.redb");
    cfg.server.shutdown_grace = Duration::from_millis(500);
    let start = |cfg: Config| {
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut cfg = cfg;
            cfg.server.listen = listener.local_addr().unwrap();
            Relay::new(cfg)
                .unwrap()
                .start(listener, CancellationToken::new())
                .await
                .unwrap()
        })
    };

    let relay = start(cfg.clone());
    let controller = relay.handle().policy().controller.clone();
    assert_eq!(controller.rate(), None, "local: no rate known at first");
    // The learning itself is the controller's (tests/simulation.rs, the interop tests);
    // here it is fed the replies of a provider that took 20 messages and then said
    // "450 4.7.1 too much mail" until a probe was accepted again.
    {
        use mailvalve::policy::controller::FeedbackCtx;
        use mailvalve::policy::verdict::{Phase, ThrottleKind, Verdict};
        let ctx = FeedbackCtx {
            in_flight_connections: 1,
            working_connections: 1,
        };
        for _ in 0..20 {
            assert!(controller.admit().is_ok());
            controller.on_reply(Phase::DataEnd, &Verdict::Accept, ctx);
            std::thread::sleep(Duration::from_millis(10));
        }
        controller.on_reply(Phase::Mail, &Verdict::Throttle(ThrottleKind::Rate), ctx);
        wait_until("a probe admitted", || controller.admit().is_ok());
        controller.on_reply(Phase::DataEnd, &Verdict::Accept, ctx);
    }
    assert!(controller.rate().is_some(), "a rate was learned");
    let learned = controller.rate().unwrap();
    rt.block_on(async { tokio::time::timeout(WAIT, relay.stop()).await })
        .unwrap()
        .unwrap();
    let text = fs::read_to_string(dir.path().join("state").join("quota.json")).unwrap();
    assert!(text.contains("\"learned\""), "{text}");

    let relay = start(cfg);
    let rate = relay.handle().policy().controller.rate();
    let restored = rate.expect("the learned rate is restored, not unlimited");
    assert!(
        (restored - learned).abs() <= learned * 0.5,
        "restored {restored} vs learned {learned}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let status = mailvalve::queue::control::learned_text(&dir.path().join("state"), now);
    assert!(status.starts_with("learned (saved "), "{status}");
    assert!(status.contains("  rate: "), "{status}");
    rt.block_on(async { tokio::time::timeout(WAIT, relay.stop()).await })
        .unwrap()
        .unwrap();
}
