//! The `mailvalve` binary's configuration commands, end to end: exit codes (0 ok,
//! 1 config error, 2 usage), the shipped config passing `check` (the README's first
//! command), and no password in anything the binary prints.

use std::process::{Command, Output};

const PASSWORD: &str = "Zz-integration-secret-0815";

fn mailvalve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailvalve"));
    cmd.args(args)
        .env_clear()
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run mailvalve")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn shipped_config_checks_ok() {
    let o = mailvalve(&["check", "-c", "config/mailvalve.toml"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("# provider profile: generic"), "{out}");
    assert!(out.contains("port = 2526"), "{out}");
}

#[test]
fn config_path_from_environment() {
    let o = mailvalve(&["check"], &[("MAILVALVE_CONFIG", "config/mailvalve.toml")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("# source: config/mailvalve.toml"));
}

#[test]
fn password_is_never_printed() {
    let env = [
        ("MAILVALVE__UPSTREAM__USERNAME", "me"),
        ("MAILVALVE__UPSTREAM__PASSWORD", PASSWORD),
    ];
    let o = mailvalve(&["check", "-c", "config/mailvalve.toml"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("password = \"***\""), "{}", text(&o));
    assert!(!text(&o).contains(PASSWORD));

    // Invalid: credentials in clear text to a remote host.
    let mut env = env.to_vec();
    env.push(("MAILVALVE__UPSTREAM__HOST", "smtp.example.org"));
    let o = mailvalve(&["check", "-c", "config/mailvalve.toml"], &env);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("key upstream.tls"), "{}", text(&o));
    assert!(!text(&o).contains(PASSWORD));

    let o = mailvalve(&["run", "-c", "config/mailvalve.toml"], &env);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!text(&o).contains(PASSWORD));
}

#[test]
fn missing_file_is_a_config_error() {
    for cmd in ["check", "run"] {
        let o = mailvalve(&[cmd, "-c", "does/not/exist.toml"], &[]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("does/not/exist.toml"), "{}", text(&o));
    }
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    assert_eq!(mailvalve(&["check", "--bogus"], &[]).status.code(), Some(2));
    assert_eq!(mailvalve(&["frobnicate"], &[]).status.code(), Some(2));
    assert_eq!(mailvalve(&[], &[]).status.code(), Some(2));
    assert_eq!(mailvalve(&["--help"], &[]).status.code(), Some(0));
    assert_eq!(mailvalve(&["--version"], &[]).status.code(), Some(0));
}
