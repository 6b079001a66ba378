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

/// `check` and `run` refuse the same reply rules, because validation compiles the rule
/// table: an `accept` for a code outside 2xx would count a refusal as delivered.
#[test]
fn an_accept_rule_outside_2xx_is_refused_by_check_and_run_alike() {
    let dir = std::env::temp_dir().join(format!("mailvalve-accept-rule-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nhost = \"127.0.0.1\"\nport = 2526\n\n\
             [queue]\ndir = \"{}\"\n\n[suppression]\npath = \"{}\"\n\n\
             [[rules]]\ncode = \"250\"\nverdict = \"accept\"\n\n\
             [[rules]]\ncode = \"550\"\ntext = \"queued\"\nverdict = \"accept\"\n",
            dir.join("spool").display(),
            dir.join("s.redb").display()
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let o = mailvalve(&["check", "-c", path], &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("rules[1].code"), "names the rule: {out}");
    assert!(
        out.contains(r#"code = "550""#) && out.contains(r#"text = "queued""#),
        "names its fields: {out}"
    );
    assert!(!out.contains("rules[0]"), "the 2xx rule is fine: {out}");

    // `run` refuses it before it listens; bounded, in case it starts after all.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailvalve"))
        .args(["run", "-c", path])
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let o = child.wait_with_output().unwrap();
    let out = text(&o);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "run must refuse: {out}"
    );
    assert!(out.contains("rules[1].code"), "{out}");
}
