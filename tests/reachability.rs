//! Back at once when the provider is back (issue 15, point 6), against a real provider:
//! `smtp-sink` (Debian package `postfix`) is not running while mail is queued, so
//! mailvalve's connections are refused again and again; then it starts on the same
//! port. With `upstream.reachability_interval = "2s"` the provider is checked at least
//! every 2 s however long it was away, so the queue goes out right after the restart —
//! before, the connect backoff had grown to a minute or more by then.
//!
//! `queue status` must say the provider is unreachable (and since when) during the
//! outage, and mailvalve's log must say once that it went away and once that it is back.
//!
//! Bounded waits only; the one bound on the resume (10 × the interval) is generous so a
//! busy machine does not fail it, while the old behaviour (a backoff of up to 64 s after
//! the failures seen here) would.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::client::Client;
use support::harness::{free_port, mailvalve, need, run, tempdir, Proc, STARTUP};
use support::sink::start_sink;

const T: &str = "reachability::delivery_resumes_within_the_interval_after_smtp_sink_restarts";

fn status(dir: &Path, config: &Path) -> String {
    let mut cmd = Command::new(mailvalve());
    cmd.current_dir(dir)
        .args(["queue", "status", "-c"])
        .arg(config);
    let (st, out) = run("mailvalve-status", &mut cmd, dir, Duration::from_secs(60));
    assert!(st.success(), "{out}");
    out
}

/// `N failed connection attempt(s)` from the status text, 0 when reachable.
fn failures(status: &str) -> u32 {
    status
        .split("UNREACHABLE since ")
        .nth(1)
        .and_then(|rest| rest.split_once('(').map(|x| x.1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn delivery_resumes_within_the_interval_after_smtp_sink_restarts() {
    let Some(sink_bin) = need(T, "smtp-sink") else {
        return;
    };
    let dir = tempdir();
    let d = dir.path();
    let (listen, provider) = (free_port(), free_port());
    let config = d.join("mailvalve.toml");
    fs::write(
        &config,
        format!(
            r#"mode = "queue"

[server]
listen = "127.0.0.1:{listen}"
hostname = "mailvalve.test"
shutdown_grace = "2s"

[upstream]
host = "127.0.0.1"
port = {provider}
tls = "none"
profile = "local"
reachability_interval = "2s"

[upstream.timeouts]
connect = "2s"

[queue]
dir = "spool"
"#
        ),
    )
    .unwrap();
    let mut cmd = Command::new(mailvalve());
    cmd.current_dir(d)
        .arg("run")
        .arg("-c")
        .arg(&config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    let mut mv = Proc::spawn("mailvalve", &mut cmd, d.join("mailvalve.log"));
    mv.wait_listening(listen, STARTUP);

    // Three messages while nothing listens on the provider's port.
    let mut c = Client::session(listen).unwrap();
    for n in 0..3 {
        let msg = format!(
            "Subject: outage {n}\r\nMessage-ID: <outage-{n}@mailvalve.test>\r\n\r\nhello\r\n"
        );
        let r = c
            .send("news@example.org", &format!("r{n}@example.net"), &msg)
            .unwrap();
        assert_eq!(r.0, 250, "{r:?}");
    }
    let _ = c.cmd("QUIT");

    // The outage, until the connection has failed often enough that an uncapped
    // backoff would be long (8 failures: caps of 1, 2, 4, ... 128 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    while Instant::now() < deadline {
        seen = status(d, &config);
        if failures(&seen) >= 8 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        failures(&seen) >= 8,
        "the outage was not seen:\n{seen}\n{}",
        mv.output()
    );
    assert!(seen.contains("provider: UNREACHABLE since 20"), "{seen}");
    assert!(seen.contains("3 recipient(s) pending"), "{seen}");

    // The provider comes back on the same port.
    let back = Instant::now();
    let sink = start_sink(&sink_bin, d, "back", &[], provider, true);
    let deadline = back + Duration::from_secs(60);
    while Instant::now() < deadline && sink.dump_files().len() < 3 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = back.elapsed();
    assert_eq!(sink.dump_files().len(), 3, "{}", mv.output());
    eprintln!("delivered {:?} after smtp-sink was back", took);
    assert!(
        took < Duration::from_secs(20),
        "delivery resumed only {took:?} after the provider was back (interval 2 s)"
    );
    let after = status(d, &config);
    assert!(after.contains("provider: reachable"), "{after}");

    let log = mv.output();
    assert_eq!(log.matches("provider unreachable").count(), 1, "{log}");
    assert_eq!(log.matches("provider reachable again").count(), 1, "{log}");
    mv.terminate(Duration::from_secs(10));
}
