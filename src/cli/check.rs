//! `mailvalve check`: load and validate the configuration, print the effective settings
//! as TOML (secrets as `***`) and the selected provider profile; exit 0 if valid, 1 with
//! the problems on stderr otherwise.
//!
//! It must never print a secret: the settings are printed through `Serialize`, where
//! `Secret` writes `***`, and errors come from `config::load`, which redacts them.
//! The logic returns strings ([`check`]) so tests can search them for passwords.

use crate::config::{self, ConfigError, Loaded};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// What `check` would print, and whether the configuration is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Loads `path` (or the built-in defaults) with `env` on top, validates, and renders the
/// report. Reads no process state.
pub fn check<I>(path: Option<&Path>, env: I) -> CheckOutput
where
    I: IntoIterator<Item = (String, String)>,
{
    match config::load_validated(path, env) {
        Ok(loaded) => render(&loaded),
        Err(e) => failure(&e),
    }
}

/// The `check` subcommand: [`check`] with the process environment, printed.
pub fn main(path: Option<&Path>) -> ExitCode {
    let out = match config::process_env() {
        Ok(env) => check(path, env),
        Err(e) => failure(&e),
    };
    // A closed stdout/stderr is not worth a panic; the exit code still tells.
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    if out.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_CONFIG)
    }
}

fn failure(e: &ConfigError) -> CheckOutput {
    let problems = e.problems().len();
    let plural = if problems == 1 { "" } else { "s" };
    CheckOutput {
        ok: false,
        stdout: String::new(),
        stderr: format!(
            "{e}\nmailvalve check: configuration is invalid ({problems} problem{plural})\n"
        ),
    }
}

fn render(loaded: &Loaded) -> CheckOutput {
    let c = &loaded.config;
    let settings = match toml::to_string_pretty(c) {
        Ok(s) => s,
        Err(e) => {
            return CheckOutput {
                ok: false,
                stdout: String::new(),
                stderr: format!("mailvalve check: cannot render the settings: {e}\n"),
            }
        }
    };
    let source = match &loaded.path {
        Some(p) => p.display().to_string(),
        None => config::load::DEFAULTS_ORIGIN.to_owned(),
    };
    let overrides = if loaded.env_overrides.is_empty() {
        "none".to_owned()
    } else {
        loaded.env_overrides.join(", ")
    };
    let mut stdout = String::new();
    stdout.push_str("# mailvalve check: the configuration is valid\n");
    stdout.push_str(&format!("# source: {source}\n"));
    stdout.push_str(&format!("# environment overrides: {overrides}\n"));
    stdout.push_str(&format!("# mode: {}\n", mode_name(c)));
    stdout.push_str(&format!(
        "# provider profile: {} (upstream {}:{}, tls {})\n",
        c.upstream.profile,
        c.upstream.host,
        c.upstream.port,
        tls_name(c)
    ));
    if let Some(Ok(p)) = config::profile::builtin(&c.upstream.profile) {
        stdout.push_str(&format!(
            "# limits: {}\n",
            crate::relay::limits::describe(c, &p)
        ));
    }
    stdout.push_str(&super::oauth::check_report(loaded));
    stdout.push_str("# effective settings follow; passwords are shown as \"***\"\n\n");
    stdout.push_str(&settings);

    let mut stderr = String::new();
    for w in config::warnings(c) {
        stderr.push_str(&format!("warning: {w}\n"));
    }
    CheckOutput {
        ok: true,
        stdout,
        stderr,
    }
}

fn mode_name(c: &config::Config) -> &'static str {
    match c.mode {
        config::Mode::Passthrough => "passthrough",
        config::Mode::Queue => "queue",
    }
}

fn tls_name(c: &config::Config) -> &'static str {
    match c.upstream.tls {
        config::TlsMode::Implicit => "implicit",
        config::TlsMode::Starttls => "starttls",
        config::TlsMode::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "Xq9-very-secret-77";
    const USER_PASSWORD: &str = "inbound-pass-4242";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn all(out: &CheckOutput) -> String {
        format!("{}{}", out.stdout, out.stderr)
    }

    #[test]
    fn valid_config_prints_settings_and_profile_without_secrets() {
        let (_d, path) = file(&format!(
            "[[server.users]]\nname = \"m\"\npassword = \"{USER_PASSWORD}\"\n\
             [upstream]\nhost = \"smtp.example.org\"\nusername = \"me\"\npassword = \"{PASSWORD}\"\nprofile = \"gmail\"\n"
        ));
        let out = check(Some(&path), env(&[("MAILVALVE__UPSTREAM__PORT", "465")]));
        assert!(out.ok, "{}", out.stderr);
        let text = all(&out);
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(!text.contains(USER_PASSWORD), "{text}");
        assert!(text.contains("password = \"***\""), "{text}");
        assert!(text.contains("# provider profile: gmail"), "{text}");
        assert!(
            text.contains("# limits: rate starts at 20/min, learned upward"),
            "{text}"
        );
        assert!(text.contains("MAILVALVE__UPSTREAM__PORT"), "{text}");
        assert!(text.contains("port = 465"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }

    #[test]
    fn queue_settings_are_printed_and_the_webhook_password_is_not() {
        let (_d, path) = file(&format!(
            "mode = \"queue\"\n[queue]\ndir = \"/var/spool/mv\"\nmax_age = \"2days\"\n\
             [queue.webhook]\nurl = \"http://127.0.0.1:9000/webhooks/bounce\"\nusername = \"lm\"\npassword = \"{PASSWORD}\"\n"
        ));
        let out = check(Some(&path), env(&[]));
        assert!(out.ok, "{}", out.stderr);
        let text = all(&out);
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(text.contains("[queue]"), "{text}");
        assert!(text.contains("dir = \"/var/spool/mv\""), "{text}");
        assert!(
            text.contains("mode: queue") || text.contains("queue"),
            "{text}"
        );
        let (_d2, again) = file(&out.stdout);
        assert!(
            config::load_with_env(&again, env(&[])).is_ok(),
            "{}",
            out.stdout
        );
    }

    #[test]
    fn printed_settings_load_again() {
        let (_d, path) =
            file("[upstream]\nhost = \"smtp.example.org\"\n[upstream.rate]\nper_minute = 30\n");
        let out = check(Some(&path), env(&[]));
        assert!(out.ok, "{}", out.stderr);
        let (_d2, again) = file(&out.stdout);
        let c = config::load_with_env(&again, env(&[])).unwrap();
        assert_eq!(c.upstream.host, "smtp.example.org");
        assert_eq!(c.upstream.rate.per_minute, Some(30));
    }

    #[test]
    fn env_password_not_in_output() {
        let out = check(
            None,
            env(&[
                ("MAILVALVE__UPSTREAM__USERNAME", "me"),
                ("MAILVALVE__UPSTREAM__PASSWORD", PASSWORD),
            ]),
        );
        assert!(out.ok, "{}", out.stderr);
        assert!(
            out.stdout.contains("# source: built-in defaults"),
            "{}",
            out.stdout
        );
        assert!(!all(&out).contains(PASSWORD));
    }

    #[test]
    fn invalid_config_fails_without_leaking() {
        // Clear-text credentials to a remote host, plus a password echoed by a type
        // error elsewhere.
        let (_d, path) = file(&format!(
            "[upstream]\nhost = \"smtp.example.org\"\ntls = \"none\"\nusername = \"me\"\npassword = \"{PASSWORD}\"\n"
        ));
        let out = check(Some(&path), env(&[]));
        assert!(!out.ok);
        assert!(out.stdout.is_empty());
        assert!(out.stderr.contains("key upstream.tls"), "{}", out.stderr);
        assert!(!all(&out).contains(PASSWORD));

        let (_d, path) = file(&format!(
            "[upstream]\nusername = \"me\"\npassword = \"{PASSWORD}\"\nhelo_name = \"{PASSWORD}\"\nport = \"{PASSWORD}\"\n"
        ));
        let out = check(Some(&path), env(&[]));
        assert!(!out.ok);
        assert!(out.stderr.contains("key upstream.port"), "{}", out.stderr);
        assert!(!all(&out).contains(PASSWORD), "{}", out.stderr);

        let out = check(
            None,
            env(&[
                ("MAILVALVE__UPSTREAM__PASSWORD", PASSWORD),
                ("MAILVALVE__UPSTREAM__HOST", "smtp.example.org"),
                ("MAILVALVE__UPSTREAM__TLS", "none"),
            ]),
        );
        assert!(!out.ok);
        assert!(
            out.stderr.contains("key upstream.password"),
            "{}",
            out.stderr
        );
        assert!(!all(&out).contains(PASSWORD));
    }

    /// Every problem in one pass, each naming its key and what to do, counted.
    #[test]
    fn three_problems_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let (_d, path) = file(&format!(
            "[server]\nmax_sessions = 0\n[upstream]\nport = 0\n[suppression]\npath = \"{}\"\n",
            blocker.join("s.redb").display()
        ));
        let out = check(Some(&path), env(&[]));
        assert!(!out.ok);
        for key in ["server.max_sessions", "upstream.port", "suppression.path"] {
            assert!(
                out.stderr.contains(&format!("key {key}")),
                "{key}: {}",
                out.stderr
            );
        }
        assert!(out.stderr.contains("(3 problems)"), "{}", out.stderr);
        assert!(
            out.stderr.contains("is a file, not a directory"),
            "{}",
            out.stderr
        );
    }

    /// A suppression database in a directory that does not exist yet passes `check`:
    /// `run` creates the directory (it used to refuse with "No such file or directory").
    #[test]
    fn a_missing_suppression_directory_is_created_not_refused() {
        let (d, path) = file("[suppression]\npath = \"lists/s.redb\"\n");
        let out = check(Some(&path), env(&[]));
        assert!(out.ok, "{}", out.stderr);
        let cfg = config::load_validated(Some(&path), env(&[]))
            .unwrap()
            .config;
        assert_eq!(cfg.suppression.path, d.path().join("lists/s.redb"));
        let list = crate::relay::policy::open_suppressions(&cfg);
        assert!(list.is_ok(), "{:?}", list.err());
        assert!(d.path().join("lists/s.redb").is_file());
    }

    #[test]
    fn suspicious_settings_are_warnings() {
        let (_d, path) = file(
            "[upstream]\nhost = \"smtp.example.org\"\nport = 465\ntls = \"starttls\"\nprofile = \"office365\"\n",
        );
        let out = check(Some(&path), env(&[]));
        assert!(out.ok, "{}", out.stderr);
        assert!(
            out.stderr.contains("warning: key upstream.tls"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("warning: key upstream.host"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("smtp.office365.com"), "{}", out.stderr);
    }

    #[test]
    fn warnings_go_to_stderr_and_still_pass() {
        let out = check(None, env(&[("MAILVALVE__UPSTREAM__TLS_VERIFY", "false")]));
        assert!(out.ok);
        assert!(
            out.stderr.contains("warning: key upstream.tls_verify"),
            "{}",
            out.stderr
        );
    }
}
