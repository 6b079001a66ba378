//! a) swaks with STARTTLS and AUTH through mailvalve to smtp-sink.

use super::*;

#[test]
fn swaks_starttls_auth_through_mailvalve_reaches_smtp_sink() {
    const T: &str = "swaks_starttls_auth_through_mailvalve_reaches_smtp_sink";
    let (Some(sink_bin), Some(swaks)) = (need(T, "smtp-sink"), need(T, "swaks")) else {
        return;
    };
    let dir = tempdir();
    let (cert, key) = write_cert(dir.path());
    let sink = start_sink(&sink_bin, dir.path(), "provider", &[], free_port(), true);
    let config = passthrough_config(
        sink.port,
        "require_auth = true",
        "",
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [[server.users]]\nname = \"newsletter\"\npassword = \"Mailer-Pw-4711\"\n",
            cert.display(),
            key.display()
        ),
    );
    let mut relay = start_mailvalve(dir.path(), &config, &[]);

    let swaks_run = |mech: &str, password: &str, token: &str| {
        run(
            &format!("swaks-{mech}"),
            Command::new(&swaks)
                .args(["--server", &format!("127.0.0.1:{}", relay.port)])
                .args(["--ehlo", "mailer.test", "--timeout", "30"])
                .args(["--tls", "--tls-verify", "--tls-ca-path"])
                .arg(&cert)
                .args([
                    "--auth",
                    mech,
                    "--auth-user",
                    "newsletter",
                    "--auth-password",
                    password,
                ])
                .args(["--from", "sender@example.org", "--to", "rcpt@example.net"])
                .args(["--header", &format!("Subject: interop {token}")])
                .args(["--body", &format!("body {token}")]),
            dir.path(),
            SHORT_RUN,
        )
    };

    // Swaks' exit codes: 0 delivered, 28 AUTH failed, 29 TLS failed.
    for (mech, token) in [("PLAIN", "token-plain"), ("LOGIN", "token-login")] {
        let (st, out) = swaks_run(mech, "Mailer-Pw-4711", token);
        assert!(
            st.success(),
            "swaks AUTH {mech} failed ({st}):\n{out}\nmailvalve:\n{}",
            relay.proc.output()
        );
        assert!(out.contains("TLS started"), "swaks did not use TLS:\n{out}");
    }
    let (st, out) = swaks_run("PLAIN", "wrong-password", "token-wrong");
    assert_eq!(
        st.code(),
        Some(28),
        "a wrong password must fail AUTH:\n{out}"
    );
    relay.assert_alive();

    let files = sink.wait_dumps(2, Duration::from_secs(10));
    sleep(Duration::from_millis(300));
    let files = if files.len() == 2 {
        sink.dump_files()
    } else {
        files
    };
    assert_eq!(
        files.len(),
        2,
        "smtp-sink should hold exactly the two authenticated messages: {files:?}"
    );
    let mut seen = Vec::new();
    for f in &files {
        let d = read_dump(f);
        assert_eq!(d.record("X-Mail-Args").len(), 1);
        assert!(
            d.record("X-Mail-Args")[0].starts_with("<sender@example.org>"),
            "{:?}",
            d.records
        );
        assert_eq!(d.record("X-Rcpt-Args").len(), 1);
        assert!(
            d.record("X-Rcpt-Args")[0].starts_with("<rcpt@example.net>"),
            "{:?}",
            d.records
        );
        let text = String::from_utf8_lossy(&d.message);
        for token in ["token-plain", "token-login"] {
            if text.contains(&format!("Subject: interop {token}\n")) {
                assert!(text.contains(&format!("\nbody {token}\n")), "{text}");
                seen.push(token);
            }
        }
        assert!(!text.contains("token-wrong"));
    }
    seen.sort();
    assert_eq!(seen, ["token-login", "token-plain"]);
}
