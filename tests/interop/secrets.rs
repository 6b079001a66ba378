//! d) secrets never appear in output.

use super::*;

/// Removes ANSI escape sequences, so a colourised log cannot hide a match.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Every form in which `password` of `user` could leak: plain, base64 (AUTH LOGIN), the
/// AUTH PLAIN blob with and without an authorization identity.
fn secret_forms(user: &str, password: &str) -> Vec<String> {
    vec![
        password.to_string(),
        B64.encode(password),
        B64.encode(format!("\0{user}\0{password}")),
        B64.encode(format!("{user}\0{user}\0{password}")),
    ]
}

fn assert_no_secret(what: &str, output: &str, forms: &[String]) {
    let clean = strip_ansi(output);
    for f in forms {
        if let Some(pos) = clean.find(f.as_str()) {
            let line_start = clean[..pos].rfind('\n').map_or(0, |i| i + 1);
            let line_end = clean[pos..].find('\n').map_or(clean.len(), |i| pos + i);
            panic!(
                "{what} leaks a secret ({f:?}) in this line:\n{}",
                &clean[line_start..line_end]
            );
        }
    }
}

#[test]
fn passwords_never_appear_in_check_output_or_trace_logs() {
    const T: &str = "passwords_never_appear_in_check_output_or_trace_logs";
    let (Some(sink_bin), Some(swaks)) = (need(T, "smtp-sink"), need(T, "swaks")) else {
        return;
    };
    const UP_USER: &str = "relay-account@example.org";
    const UP_PW: &str = "UpstreamSecret9Kz";
    const ENV_PW: &str = "EnvSecret5Tq";
    const IN_USER: &str = "newsletter";
    const IN_PW: &str = "InboundSecret7Qx";
    const WRONG_PW: &str = "WrongSecret3Vb";
    let mut forms = secret_forms(UP_USER, UP_PW);
    forms.extend(secret_forms(UP_USER, ENV_PW));
    forms.extend(secret_forms(IN_USER, IN_PW));
    forms.extend(secret_forms(IN_USER, WRONG_PW));

    let dir = tempdir();
    let (cert, key) = write_cert(dir.path());
    // smtp-sink advertises AUTH PLAIN LOGIN, so mailvalve authenticates upstream (smtp-sink
    // answers 250 instead of 235; whatever mailvalve makes of that, the exchange happens).
    let sink = start_sink(&sink_bin, dir.path(), "provider", &[], free_port(), false);
    let config = passthrough_config(
        sink.port,
        "",
        &format!("username = \"{UP_USER}\"\npassword = \"{UP_PW}\"\nadmission_wait = \"3s\""),
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [[server.users]]\nname = \"{IN_USER}\"\npassword = \"{IN_PW}\"\n",
            cert.display(),
            key.display()
        ),
    );

    // `check`, with the passwords from the file and with one from the environment.
    let config_path = dir.path().join("check.toml");
    fs::write(&config_path, config.replace("{LISTEN}", "127.0.0.1:2525")).unwrap();
    for env_pw in [None, Some(ENV_PW)] {
        let mut cmd = Command::new(mailvalve());
        cmd.arg("check").arg("-c").arg(&config_path);
        cmd.env("RUST_LOG", "trace").env("NO_COLOR", "1");
        if let Some(pw) = env_pw {
            cmd.env("MAILVALVE__UPSTREAM__PASSWORD", pw);
        }
        let (st, out) = run("mailvalve-check", &mut cmd, dir.path(), SHORT_RUN);
        assert!(st.success(), "mailvalve check failed ({st}):\n{out}");
        assert!(
            out.contains("***"),
            "check must show passwords as ***:\n{out}"
        );
        assert_no_secret("mailvalve check", &out, &forms);
    }

    // A short `run` at trace level: inbound AUTH (right and wrong password), a
    // transaction that makes mailvalve log in upstream, then shutdown.
    let mut relay = start_mailvalve(dir.path(), &config, &[("RUST_LOG", "trace")]);
    for (mech, pw) in [
        ("PLAIN", IN_PW),
        ("LOGIN", IN_PW),
        ("PLAIN", WRONG_PW),
        ("LOGIN", WRONG_PW),
    ] {
        let (_st, out) = run(
            "swaks",
            Command::new(&swaks)
                .args(["--server", &format!("127.0.0.1:{}", relay.port)])
                .args(["--ehlo", "mailer.test", "--timeout", "30"])
                .args(["--tls", "--tls-verify", "--tls-ca-path"])
                .arg(&cert)
                .args([
                    "--auth",
                    mech,
                    "--auth-user",
                    IN_USER,
                    "--auth-password",
                    pw,
                ])
                .args(["--from", "sender@example.org", "--to", "rcpt@example.net"])
                .args(["--body", "secret test"]),
            dir.path(),
            SHORT_RUN,
        );
        // swaks marks lines sent inside TLS with `~>`.
        assert!(
            out.contains("~> AUTH"),
            "swaks did not get to AUTH under TLS:\n{out}"
        );
        relay.assert_alive();
    }
    relay.proc.terminate(Duration::from_secs(10));
    let log = relay.proc.output();
    assert!(
        !log.trim().is_empty(),
        "mailvalve logged nothing at trace level"
    );
    eprintln!("{T}: checked {} log lines", log.lines().count());
    assert_no_secret("mailvalve run (RUST_LOG=trace)", &log, &forms);
}

/// A typo in a key next to a password must not make the error message quote the line
/// (and with it the password), as TOML parse errors like to.
#[test]
fn config_errors_never_echo_a_password() {
    let dir = tempdir();
    const PW: &str = "TypoSecret2Wd";
    let forms = secret_forms("u", PW);
    let cases = [
        format!("[upstream]\nusername = \"u\"\npasword = \"{PW}\"\n"),
        format!("[[server.users]]\nname = \"u\"\npassword = \"{PW}\"\nextra = 1\n"),
        format!("[upstream]\npassword = \"{PW}\"\nport = \"not a number\"\n"),
        format!("[upstream]\npassword = \"{PW}\n"),
    ];
    for (i, case) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        fs::write(&path, case).unwrap();
        let (st, out) = run(
            "mailvalve-check",
            Command::new(mailvalve())
                .arg("check")
                .arg("-c")
                .arg(&path)
                .env("NO_COLOR", "1")
                .env("RUST_LOG", "trace"),
            dir.path(),
            SHORT_RUN,
        );
        assert!(
            !st.success(),
            "check must reject bad config #{i}:\n{case}\n{out}"
        );
        assert_no_secret(&format!("check of bad config #{i}"), &out, &forms);
    }
}

/// The lookup itself: PATH first, then the sbin directories; absent names are `None`.
#[test]
fn tool_lookup_finds_executables_and_reports_missing_ones() {
    assert!(tool("sh").is_some(), "sh must be found through PATH");
    assert!(tool("mailvalve-no-such-tool").is_none());
}
