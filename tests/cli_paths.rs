//! One command line (issue 15, point 2): `-c FILE` works after any subcommand, and every
//! relative path in the file is relative to the file's directory — so `mailvalve queue
//! status -c /path/to/mailvalve.toml` run from anywhere finds the running instance of
//! that file (it used to say "no instance running" from another directory).
//!
//! The provider is the in-process scripted one; every wait is bounded; the child process
//! is killed when its guard drops.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::harness::{mailvalve, run, start_mailvalve, tempdir};
use support::provider::Provider;

const CLI: Duration = Duration::from_secs(60);

fn config(provider_port: u16) -> String {
    format!(
        r#"mode = "queue"

[server]
listen = "{{LISTEN}}"
hostname = "mailvalve.test"
shutdown_grace = "2s"

[upstream]
host = "127.0.0.1"
port = {provider_port}
tls = "none"
profile = "local"

[queue]
dir = "spool"
"#
    )
}

/// `mailvalve <args>` with `cwd` as the working directory.
fn cli(cwd: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(mailvalve());
    cmd.current_dir(cwd)
        .args(args)
        .env_remove("MAILVALVE_CONFIG");
    let (st, out) = run("mailvalve-cli", &mut cmd, cwd, CLI);
    (st.success(), out)
}

#[test]
fn queue_status_finds_the_instance_from_another_directory() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let provider = rt.block_on(Provider::builder().start());
    let dir = tempdir();
    let elsewhere = tempdir();
    let mut mv = start_mailvalve(dir.path(), &config(provider.addr().port()), &[]);
    let file = dir.path().join("mailvalve.toml");
    let file = file.to_str().unwrap();
    let sock = dir.path().join("spool/control.sock");
    for _ in 0..400 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sock.exists(), "no control socket at {}", sock.display());

    for args in [
        &["queue", "status", "-c", file][..],
        &["queue", "-c", file, "status"][..],
        &["-c", file, "queue", "status"][..],
        &["queue", "status", "--config", file][..],
    ] {
        let (ok, out) = cli(elsewhere.path(), args);
        assert!(ok, "{args:?}:\n{out}");
        assert!(out.contains("instance: running"), "{args:?}:\n{out}");
    }
    // The same through MAILVALVE_CONFIG.
    let mut cmd = Command::new(mailvalve());
    cmd.current_dir(elsewhere.path())
        .args(["queue", "status"])
        .env("MAILVALVE_CONFIG", file);
    let (st, out) = run("mailvalve-cli-env", &mut cmd, elsewhere.path(), CLI);
    assert!(st.success() && out.contains("instance: running"), "{out}");

    // Nothing was created in the other directory, and the suppression database sits
    // next to the file.
    assert!(!elsewhere.path().join("spool").exists());
    assert!(dir.path().join("mailvalve-suppression.redb").exists());
    mv.assert_alive();
}
