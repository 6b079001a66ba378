//! Tests of the loader: file values, environment overrides, errors that name the key
//! and never a secret.

use super::*;
use crate::config::{Mode, TlsMode};
use std::time::Duration;

const PASSWORD: &str = "s3cr3t-Pa55w0rd";

#[test]
fn load_str_is_load_from_without_the_file() {
    let text = "[upstream]\nhost = \"smtp.example.org\"\nport = 587\n";
    let env = vec![("MAILVALVE__UPSTREAM__PORT".to_owned(), "465".to_owned())];
    let loaded = load_str(text, "fuzz input", env).unwrap();
    assert_eq!(loaded.config.upstream.host, "smtp.example.org");
    assert_eq!(loaded.config.upstream.port, 465);
    assert_eq!(loaded.env_overrides, ["MAILVALVE__UPSTREAM__PORT"]);
    let e = load_str(
        &format!("[upstream]\npassword = \"{PASSWORD}\"\nport = \"x\"\n"),
        "fuzz input",
        Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("fuzz input") && e.contains("upstream.port"),
        "{e}"
    );
    assert!(!e.contains(PASSWORD), "{e}");
}

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("mailvalve.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_err(text: &str, vars: &[(&str, &str)]) -> (PathBuf, ConfigError) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, text);
    let err = load_with_env(&path, env(vars)).unwrap_err();
    (path, err)
}

#[test]
fn empty_file_gives_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "");
    let c = load_with_env(&path, env(&[])).unwrap();
    assert_eq!(c.mode, Mode::Queue);
    assert_eq!(c.server.listen, "127.0.0.1:2525".parse().unwrap());
    assert_eq!(c.upstream.port, 587);
}

#[test]
fn file_values_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        r#"
mode = "passthrough"
[server]
listen = "127.0.0.1:2626"
idle_timeout = "2m"
[[server.users]]
name = "mailer"
password = "pw"
[upstream]
host = "smtp.example.org"
port = 465
tls = "implicit"
username = "me"
password = "pw2"
[upstream.rate]
per_minute = 30
[upstream.timeouts]
data_end = "10m 30s"
"#,
    );
    let c = load_with_env(&path, env(&[])).unwrap();
    assert_eq!(c.server.listen.port(), 2626);
    assert_eq!(c.server.idle_timeout, Duration::from_secs(120));
    assert_eq!(c.server.users[0].password.expose(), "pw");
    assert_eq!(c.upstream.tls, TlsMode::Implicit);
    assert_eq!(c.upstream.port, 465);
    assert_eq!(c.upstream.password.as_ref().unwrap().expose(), "pw2");
    assert_eq!(c.upstream.rate.per_minute, Some(30));
    assert_eq!(c.upstream.timeouts.data_end, Duration::from_secs(630));
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = load_with_env(&path, env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("cannot read"), "{msg}");
}

#[test]
fn unknown_key_names_file_and_key() {
    let (path, err) = load_err("[upstream]\nhost = \"x\"\nbogus = 1\n", &[]);
    let msg = err.to_string();
    assert_eq!(err.key(), Some("upstream.bogus"), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "config error in {}: key upstream.bogus: unknown key",
            path.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("host"), "lists the expected keys: {msg}");
}

#[test]
fn unknown_top_level_key_and_table() {
    let (_, err) = load_err("colour = \"blue\"\n", &[]);
    assert_eq!(err.key(), Some("colour"), "{err}");
    let (_, err) = load_err("[upstreams]\nhost = \"x\"\n", &[]);
    assert_eq!(err.key(), Some("upstreams"), "{err}");
    let (_, err) = load_err("[upstream.rate]\nper_week = 5\n", &[]);
    assert_eq!(err.key(), Some("upstream.rate.per_week"), "{err}");
    let (_, err) = load_err(
        "[[server.users]]\nname = \"a\"\npassword = \"b\"\nrole = 1\n",
        &[],
    );
    assert_eq!(err.key(), Some("server.users[0].role"), "{err}");
}

#[test]
fn wrong_type_names_key_and_expectation() {
    let (path, err) = load_err("[upstream]\nport = \"abc\"\n", &[]);
    let msg = err.to_string();
    assert_eq!(err.key(), Some("upstream.port"), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "config error in {}: key upstream.port: invalid type: string \"abc\", expected u16",
            path.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("line 2"), "{msg}");

    // The config crate alone would take `true` as 1: the strict pass refuses it.
    let (_, err) = load_err("[upstream]\nmax_connections = true\n", &[]);
    assert_eq!(err.key(), Some("upstream.max_connections"), "{err}");

    let (_, err) = load_err("[upstream]\nport = 70000\n", &[]);
    assert_eq!(err.key(), Some("upstream.port"), "{err}");

    let (_, err) = load_err("[server]\nidle_timeout = \"5 parsecs\"\n", &[]);
    assert_eq!(err.key(), Some("server.idle_timeout"), "{err}");

    let (_, err) = load_err("[upstream]\ntls = \"sometimes\"\n", &[]);
    assert_eq!(err.key(), Some("upstream.tls"), "{err}");
    assert!(err.to_string().contains("starttls"), "{err}");

    let (_, err) = load_err("[server]\nlisten = \"localhost\"\n", &[]);
    assert_eq!(err.key(), Some("server.listen"), "{err}");

    let (_, err) = load_err("mode = \"stash\"\n", &[]);
    assert_eq!(err.key(), Some("mode"), "{err}");
    assert!(err.to_string().contains("queue"), "{err}");
}

#[test]
fn missing_required_key_in_table() {
    let (_, err) = load_err("[server.tls]\ncert = \"a.pem\"\n", &[]);
    assert_eq!(err.key(), Some("server.tls.key"), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn syntax_error_has_position_but_no_source_line() {
    let (path, err) = load_err("[upstream]\nusername = \"me\"\npassword = \"hunter2\n", &[]);
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn password_type_error_does_not_echo_value() {
    let (_, err) = load_err("[upstream]\nusername = \"me\"\npassword = 918273645\n", &[]);
    let msg = err.to_string();
    assert_eq!(err.key(), Some("upstream.password"), "{msg}");
    assert!(!msg.contains("918273645"), "{msg}");

    let (_, err) = load_err(
        "[[server.users]]\nname = \"a\"\npassword = [\"hunter2\"]\n",
        &[],
    );
    let msg = err.to_string();
    assert_eq!(err.key(), Some("server.users[0].password"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn password_in_a_wrong_place_is_scrubbed() {
    // The password value ends up echoed by a type error of another key.
    let text = format!("[upstream]\npassword = \"{PASSWORD}\"\nhost = 5\nport = \"{PASSWORD}\"\n");
    let (_, err) = load_err(&text, &[]);
    let msg = err.to_string();
    assert_eq!(err.key(), Some("upstream.host"), "{msg}");
    let text = format!("[upstream]\npassword = \"{PASSWORD}\"\nport = \"{PASSWORD}\"\n");
    let (_, err) = load_err(&text, &[]);
    let msg = err.to_string();
    assert_eq!(err.key(), Some("upstream.port"), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");
    assert!(msg.contains("***"), "{msg}");

    // Same via the environment.
    let (_, err) = load_err(
        "",
        &[
            ("MAILVALVE__UPSTREAM__PASSWORD", PASSWORD),
            ("MAILVALVE__UPSTREAM__PORT", PASSWORD),
        ],
    );
    let msg = err.to_string();
    assert_eq!(err.key(), Some("upstream.port"), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");
}

#[test]
fn env_overrides_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[upstream]\nhost = \"smtp.example.org\"\nport = 587\n[upstream.timeouts]\nconnect = \"5s\"\n",
    );
    let c = load_with_env(
        &path,
        env(&[
            ("MAILVALVE__UPSTREAM__PORT", "465"),
            ("MAILVALVE__UPSTREAM__TLS", "implicit"),
            ("MAILVALVE__UPSTREAM__USERNAME", "me"),
            ("MAILVALVE__UPSTREAM__PASSWORD", "x"),
            ("MAILVALVE__UPSTREAM__TLS_VERIFY", "false"),
            ("MAILVALVE__UPSTREAM__TIMEOUTS__CONNECT", "30s"),
            ("MAILVALVE__UPSTREAM__TIMEOUTS__DATA_END", "1h 5m"),
            ("MAILVALVE__UPSTREAM__RATE__PER_MINUTE", "30"),
            ("MAILVALVE__SERVER__LISTEN", "127.0.0.1:2626"),
            ("MAILVALVE__SERVER__MAX_RECIPIENTS", "500"),
            ("MAILVALVE__LOG__LEVEL", "debug"),
            ("UNRELATED", "1"),
            ("MAILVALVE_CONFIG", "not-a-key"),
        ]),
    )
    .unwrap();
    assert_eq!(c.upstream.host, "smtp.example.org");
    assert_eq!(c.upstream.port, 465);
    assert_eq!(c.upstream.tls, TlsMode::Implicit);
    assert!(!c.upstream.tls_verify);
    assert_eq!(c.upstream.username.as_deref(), Some("me"));
    assert_eq!(c.upstream.password.as_ref().unwrap().expose(), "x");
    assert_eq!(c.upstream.timeouts.connect, Duration::from_secs(30));
    assert_eq!(c.upstream.timeouts.data_end, Duration::from_secs(3900));
    assert_eq!(c.upstream.rate.per_minute, Some(30));
    assert_eq!(c.server.listen, "127.0.0.1:2626".parse().unwrap());
    assert_eq!(c.server.max_recipients, 500);
    assert_eq!(c.log.level, "debug");
}

#[test]
fn env_password_stays_a_string_even_if_numeric() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "");
    for pw in [
        "007",
        "1234",
        "1.50",
        "1e3",
        "TRUE",
        "  spaced  ",
        "-0",
        "0x10",
    ] {
        let c = load_with_env(&path, env(&[("MAILVALVE__UPSTREAM__PASSWORD", pw)])).unwrap();
        assert_eq!(c.upstream.password.as_ref().unwrap().expose(), pw);
    }
    let c = load_with_env(&path, env(&[("MAILVALVE__UPSTREAM__USERNAME", "0042")])).unwrap();
    assert_eq!(c.upstream.username.as_deref(), Some("0042"));
}

#[test]
fn env_without_file() {
    let loaded = load_from(
        None,
        env(&[("mailvalve__upstream__host", "smtp.example.org")]),
    )
    .unwrap();
    assert_eq!(loaded.config.upstream.host, "smtp.example.org");
    assert_eq!(loaded.path, None);
    assert_eq!(loaded.env_overrides, vec!["mailvalve__upstream__host"]);
}

#[test]
fn env_errors_name_the_variable_and_key() {
    let (_, err) = load_err("", &[("MAILVALVE__UPSTREAM__PORT", "abc")]);
    let msg = err.to_string();
    assert_eq!(err.key(), Some("upstream.port"), "{msg}");
    assert!(
        msg.starts_with(
            "config error in environment variable MAILVALVE__UPSTREAM__PORT: key upstream.port: invalid type: string \"abc\""
        ),
        "{msg}"
    );

    let (_, err) = load_err("", &[("MAILVALVE__UPSTREAM__PASWORD", PASSWORD)]);
    let msg = err.to_string();
    assert_eq!(err.key(), Some("upstream.pasword"), "{msg}");
    assert!(msg.contains("MAILVALVE__UPSTREAM__PASWORD"), "{msg}");
    assert!(msg.contains("unknown key"), "{msg}");

    let (_, err) = load_err("", &[("MAILVALVE__SERVER__TLS__CERT", "/x.pem")]);
    let msg = err.to_string();
    assert_eq!(err.key(), Some("server.tls.key"), "{msg}");
    assert!(msg.contains("MAILVALVE__SERVER__TLS__CERT"), "{msg}");

    let (_, err) = load_err("", &[("MAILVALVE__UPSTREAM__TLS", "sometimes")]);
    assert_eq!(err.key(), Some("upstream.tls"), "{err}");
    assert!(
        err.to_string().contains(
            "unknown variant `sometimes`, expected one of `implicit`, `starttls`, `none`"
        ),
        "{err}"
    );

    let (_, err) = load_err("", &[("MAILVALVE__UPSTREAM__TIMEOUTS__DATA", "soon")]);
    assert_eq!(err.key(), Some("upstream.timeouts.data"), "{err}");
}

#[test]
fn odd_variable_names_are_errors_not_panics() {
    for name in [
        "MAILVALVE__",
        "MAILVALVE____PORT",
        "MAILVALVE__UPSTREAM__RATE",
        "MAILVALVE__UPSTREAM__PORT__X",
        "MAILVALVE__UPSTREAM__",
        "MAILVALVE__SERVER__USERS__0__PASSWORD",
        "MAILVALVE__UPSTREAM[0]",
    ] {
        // Only a value at a password key is a secret; others may be echoed.
        let value = if name.contains("PASSWORD") {
            PASSWORD
        } else {
            "v"
        };
        let err = load_from(None, env(&[(name, value)])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(!msg.contains(PASSWORD), "{name}: {msg}");
    }
}

#[test]
fn validation_blames_a_variable_only_for_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[upstream]\ntls = \"none\"\nusername = \"me\"\npassword = \"pw\"\n",
    );
    let err = load_validated(
        Some(&path),
        env(&[("MAILVALVE__UPSTREAM__HOST", "smtp.example.org")]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.problems().len(), 1, "{msg}");
    assert!(
        msg.starts_with(&format!(
            "config error in {}: key upstream.tls:",
            path.display()
        )),
        "{msg}"
    );
}

#[test]
fn relative_paths_resolve_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[server.tls]\ncert = \"certs/c.pem\"\nkey = \"/abs/k.pem\"\n[upstream]\nca_file = \"ca.pem\"\n",
    );
    let c = load_with_env(&path, env(&[])).unwrap();
    let tls = c.server.tls.unwrap();
    assert_eq!(tls.cert, dir.path().join("certs/c.pem"));
    assert_eq!(tls.key, PathBuf::from("/abs/k.pem"));
    assert_eq!(c.upstream.ca_file.unwrap(), dir.path().join("ca.pem"));
}

/// The spool, the delivery log and the suppression database follow the file too,
/// written or defaulted; a variable's relative path stays relative to the current
/// directory; an empty delivery log stays "no log".
#[test]
fn data_paths_resolve_against_the_file_and_env_paths_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[queue]\ndir = \"spool\"\ndelivery_log = \"logs/d.log\"\n",
    );
    let c = load_with_env(&path, env(&[])).unwrap();
    assert_eq!(c.queue.dir, dir.path().join("spool"));
    assert_eq!(
        c.queue.delivery_log.as_deref(),
        Some(dir.path().join("logs/d.log").as_path())
    );
    assert_eq!(
        c.suppression.path,
        dir.path().join("mailvalve-suppression.redb")
    );

    let path = write(&dir, "[queue]\ndelivery_log = \"\"\n");
    let c = load_with_env(
        &path,
        env(&[
            ("MAILVALVE__QUEUE__DIR", "here/spool"),
            ("MAILVALVE__SUPPRESSION__PATH", "s.redb"),
        ]),
    )
    .unwrap();
    assert_eq!(c.queue.dir, PathBuf::from("here/spool"));
    assert_eq!(c.suppression.path, PathBuf::from("s.redb"));
    assert_eq!(c.queue.delivery_log_path(), None);

    // No file: nothing is resolved, the current directory is the base.
    let c = load_from(None, env(&[])).unwrap().config;
    assert_eq!(c.queue.dir, PathBuf::from("mailvalve-spool"));
}

/// The OAuth2 token file is a data path like the spool: written or defaulted, it lives
/// next to the config file; a variable's relative path stays relative to the current
/// directory.
#[test]
fn token_file_resolves_against_the_file_like_the_data_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[upstream.oauth2]\nclient_id = \"c\"\n");
    let c = load_with_env(&path, env(&[])).unwrap();
    let o = c.upstream.oauth2.unwrap();
    assert_eq!(
        o.token_file.unwrap(),
        dir.path().join("mailvalve-oauth2-token.json")
    );

    let path = write(
        &dir,
        "[upstream.oauth2]\nclient_id = \"c\"\ntoken_file = \"secret/t.json\"\n",
    );
    let c = load_with_env(&path, env(&[])).unwrap();
    let o = c.upstream.oauth2.unwrap();
    assert_eq!(o.token_file.unwrap(), dir.path().join("secret/t.json"));

    let c = load_with_env(
        &path,
        env(&[("MAILVALVE__UPSTREAM__OAUTH2__TOKEN_FILE", "here/t.json")]),
    )
    .unwrap();
    let o = c.upstream.oauth2.unwrap();
    assert_eq!(o.token_file.unwrap(), PathBuf::from("here/t.json"));
}

#[test]
fn validated_load_attributes_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[server]\nmax_recipients = 10\n");
    let err = load_validated(
        Some(&path),
        env(&[("MAILVALVE__UPSTREAM__MAX_CONNECTIONS", "0")]),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.problems().len(), 2, "{msg}");
    assert!(
        msg.contains(&format!(
            "config error in {}: key server.max_recipients:",
            path.display()
        )),
        "{msg}"
    );
    assert!(
        msg.contains(
            "config error in environment variable MAILVALVE__UPSTREAM__MAX_CONNECTIONS: key upstream.max_connections:"
        ),
        "{msg}"
    );
}
