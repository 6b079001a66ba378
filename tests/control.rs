//! `mailvalve suppress ...` against a running `mailvalve run` (the built binary), in both
//! modes: the instance holds the suppression database (redb locks it), so the CLI must
//! reach the instance's open list over the control socket — and what it changes must
//! take effect at once (a RCPT to an address just added gets `550` from the running
//! instance). After the instance stops, the same commands open the database directly.
//!
//! The provider is the in-process scripted one (`support::provider`); the mailer is the
//! blocking client of `support::client`. Every wait is bounded; the child process is
//! killed when its guard drops.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;
use support::client::Client;
use support::harness::{mailvalve_cli, start_mailvalve, tempdir};
use support::provider::Provider;

fn config(mode: &str, provider_port: u16) -> String {
    format!(
        r#"mode = "{mode}"

[server]
listen = "{{LISTEN}}"
hostname = "mailvalve.test"
shutdown_grace = "2s"

[http]
listen = "127.0.0.1:0"

[upstream]
host = "127.0.0.1"
port = {provider_port}
tls = "none"
profile = "local"

[queue]
dir = "spool"

[suppression]
path = "suppression.redb"
"#
    )
}

/// `mailvalve suppress args... -c FILE` in `dir`: (success, stdout + stderr).
fn suppress(dir: &Path, args: &[&str]) -> (bool, String) {
    let all: Vec<&str> = std::iter::once("suppress")
        .chain(args.iter().copied())
        .collect();
    mailvalve_cli(dir, &all)
}

/// Waits (bounded) for the instance's control socket: the SMTP port may accept before
/// the instance has finished starting (queue mode opens the spool after binding it).
fn wait_for_socket(dir: &Path) {
    let sock = dir.join("spool").join("control.sock");
    for _ in 0..400 {
        if sock.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no control socket at {} after 20 s", sock.display());
}

/// The reply to `RCPT TO:<rcpt>` in a fresh transaction.
fn rcpt_reply(port: u16, rcpt: &str) -> (u16, String) {
    let mut c = Client::session(port).unwrap();
    let r = c.cmd("MAIL FROM:<news@example.org>").unwrap();
    assert_eq!(r.0, 250, "MAIL: {r:?}");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).unwrap();
    let _ = c.cmd("RSET");
    let _ = c.cmd("QUIT");
    r
}

fn suppress_commands_reach_the_running_instance(mode: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let provider = rt.block_on(Provider::builder().start());
    let dir = tempdir();
    let d = dir.path();
    let mut mv = start_mailvalve(d, &config(mode, provider.addr().port()), &[]);
    wait_for_socket(d);

    // add: the running instance refuses the address from now on.
    let (ok, out) = suppress(
        d,
        &["add", "Blocked@Example.org", "--reason", "asked to stop"],
    );
    assert!(
        ok,
        "suppress add failed against the running instance:\n{out}"
    );
    assert!(out.contains("suppressed blocked@example.org"), "{out}");
    let (code, text) = rcpt_reply(mv.port, "blocked@example.org");
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("asked to stop"), "{text}");
    assert_eq!(rcpt_reply(mv.port, "reader@example.org").0, 250);

    // list
    let (ok, out) = suppress(d, &["list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("blocked@example.org\t550 5.1.1\tasked to stop\tmanual\tcount=1"),
        "{out}"
    );
    assert!(out.contains("1 suppressed"), "{out}");

    // import: all lines checked first; a bad file changes nothing.
    let bad = d.join("bad.csv");
    fs::write(&bad, "address\nfirst@example.net\nnot-an-address\n").unwrap();
    let (ok, out) = suppress(d, &["import", bad.to_str().unwrap()]);
    assert!(
        !ok && out.contains("line 3") && out.contains("nothing was imported"),
        "{out}"
    );
    assert_eq!(rcpt_reply(mv.port, "first@example.net").0, 250);
    let good = d.join("good.csv");
    fs::write(
        &good,
        "address,code,enhanced,text\nfirst@example.net,550,5.1.1,gone\nsecond@example.net\n",
    )
    .unwrap();
    let (ok, out) = suppress(d, &["import", good.to_str().unwrap()]);
    assert!(ok && out.contains("imported 2 addresses"), "{out}");
    assert_eq!(rcpt_reply(mv.port, "first@example.net").0, 550);
    assert_eq!(rcpt_reply(mv.port, "Second@Example.net").0, 550);

    // export
    let csv = d.join("export.csv");
    let (ok, out) = suppress(d, &["export", "-o", csv.to_str().unwrap()]);
    assert!(ok, "{out}");
    let text = fs::read_to_string(&csv).unwrap();
    for a in [
        "blocked@example.org",
        "first@example.net",
        "second@example.net",
    ] {
        assert!(text.contains(a), "{a} missing from export:\n{text}");
    }

    // remove: sent to again at once.
    let (ok, out) = suppress(d, &["remove", "blocked@example.org"]);
    assert!(ok && out.contains("removed blocked@example.org"), "{out}");
    assert_eq!(rcpt_reply(mv.port, "blocked@example.org").0, 250);
    let (ok, out) = suppress(d, &["remove", "nobody@example.org"]);
    assert!(!ok && out.contains("not on the suppression list"), "{out}");

    // The socket the CLI used is the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let sock = d.join("spool").join("control.sock");
        let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "control socket mode {mode:o}");
        let db = fs::metadata(d.join("suppression.redb")).unwrap();
        assert_eq!(
            db.permissions().mode() & 0o777,
            0o600,
            "suppression db mode"
        );
    }
    mv.assert_alive();

    // Stopped: the same commands open the database directly and see the same list.
    mv.proc.terminate(Duration::from_secs(10));
    let (ok, out) = suppress(d, &["list"]);
    assert!(ok, "offline list:\n{out}");
    assert!(
        out.contains("first@example.net") && out.contains("second@example.net"),
        "{out}"
    );
    assert!(!out.contains("blocked@example.org"), "{out}");
    assert!(out.contains("2 suppressed"), "{out}");
    let (ok, out) = suppress(d, &["add", "late@example.org"]);
    assert!(ok, "offline add:\n{out}");
}

#[test]
fn suppress_commands_reach_a_running_passthrough_instance() {
    suppress_commands_reach_the_running_instance("passthrough");
}

#[test]
fn suppress_commands_reach_a_running_queue_instance() {
    suppress_commands_reach_the_running_instance("queue");
}

/// `mailvalve queue ...` against a passthrough instance: a clear answer, not a hang or a
/// confusing "no spool".
#[test]
fn queue_commands_against_a_passthrough_instance_say_so() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let provider = rt.block_on(Provider::builder().start());
    let dir = tempdir();
    let d = dir.path();
    let _mv = start_mailvalve(d, &config("passthrough", provider.addr().port()), &[]);
    wait_for_socket(d);
    let (ok, out) = mailvalve_cli(d, &["queue", "list"]);
    assert!(!ok, "{out}");
    assert!(out.contains("passthrough mode"), "{out}");
}
