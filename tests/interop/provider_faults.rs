//! c) provider faults at RCPT reach the mailer as 4xx, never 250.

use super::*;

/// One transaction from a raw client; returns the RCPT reply if MAIL was accepted.
/// Panics if anything claims success for the recipient.
fn attempt_rcpt(port: u16, n: usize) -> Option<(u16, String)> {
    let mut c = Client::connect(port).expect("connect to mailvalve");
    let (code, text) = c.reply().expect("greeting");
    assert_eq!(code, 220, "greeting: {text}");
    let (code, text) = c.cmd("EHLO mailer.test").expect("EHLO");
    assert_eq!(code, 250, "EHLO: {text}");
    let (code, text) = c.cmd("MAIL FROM:<sender@example.org>").expect("MAIL reply");
    if code != 250 {
        // Admission may already hold the mailer back (upstream backing off).
        assert_eq!(
            code / 100,
            4,
            "MAIL (attempt {n}) must be 250 or 4xx: {text}"
        );
        let _ = c.cmd("QUIT");
        return None;
    }
    let reply = c
        .cmd(&format!("RCPT TO:<rcpt{n}@example.net>"))
        .expect("RCPT must get a reply, not a dropped connection");
    assert_eq!(
        reply.0 / 100,
        4,
        "RCPT (attempt {n}) must get the provider's temporary failure as 4xx, got: {}",
        reply.1
    );
    // The mailer may go on with RSET/QUIT; mailvalve may also have closed after a 421.
    let _ = c.cmd("QUIT");
    Some(reply)
}

fn provider_rcpt_fault(test: &str, faults: &[&str], expect_code: Option<u16>) {
    let (Some(sink_bin), Some(swaks)) = (need(test, "smtp-sink"), need(test, "swaks")) else {
        return;
    };
    let dir = tempdir();
    let sink = start_sink(
        &sink_bin,
        dir.path(),
        "provider",
        faults,
        free_port(),
        false,
    );
    let config = passthrough_config(sink.port, "", "admission_wait = \"3s\"", "");
    let mut relay = start_mailvalve(dir.path(), &config, &[]);

    // An unmodified mailer first: swaks exit 24 = "no RCPTs accepted" (23 if MAIL
    // already failed). Its transcript marks an unexpected reply with `<**`.
    let (st, out) = run(
        "swaks",
        Command::new(&swaks)
            .args(["--server", &format!("127.0.0.1:{}", relay.port)])
            .args(["--ehlo", "mailer.test", "--timeout", "30"])
            .args(["--from", "sender@example.org", "--to", "rcpt@example.net"])
            .args(["--body", "must not be delivered"]),
        dir.path(),
        SHORT_RUN,
    );
    assert_eq!(
        st.code(),
        Some(24),
        "swaks must see the RCPT refused:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("<** 4")),
        "swaks must see a 4xx:\n{out}"
    );
    assert!(
        !out.contains("<-  250 2.1.5") && !out.contains("-> DATA"),
        "RCPT must never be accepted:\n{out}"
    );
    relay.assert_alive();

    // Then a raw client, several times: a 4xx at RCPT (or at MAIL while mailvalve backs
    // off), never 250, and mailvalve stays up.
    let mut rcpt_replies = Vec::new();
    for n in 0..3 {
        if let Some(r) = attempt_rcpt(relay.port, n) {
            rcpt_replies.push(r);
        }
        relay.assert_alive();
    }
    if let (Some(code), Some((got, text))) = (expect_code, rcpt_replies.first()) {
        // The provider's own reply code is what passthrough promises to pass on.
        assert_eq!(*got, code, "RCPT reply: {text}");
    }

    // Still serving: a fresh session gets a greeting and EHLO.
    let mut c = Client::connect(relay.port).expect("mailvalve still accepts");
    assert_eq!(c.reply().expect("greeting").0, 220);
    assert_eq!(c.cmd("EHLO mailer.test").expect("EHLO").0, 250);
    assert_eq!(c.cmd("NOOP").expect("NOOP").0, 250);
    let _ = c.cmd("QUIT");
    relay.assert_alive();
    drop(sink);
}

/// smtp-sink -Q RCPT: 421 and disconnect after RCPT ("too many connections" style).
#[test]
fn provider_421_at_rcpt_reaches_mailer_as_4xx() {
    provider_rcpt_fault(
        "provider_421_at_rcpt_reaches_mailer_as_4xx",
        &["-Q", "RCPT"],
        None,
    );
}

/// smtp-sink -r RCPT: "450 4.3.0 Error: command failed" for every RCPT.
#[test]
fn provider_450_at_rcpt_reaches_mailer_as_4xx() {
    provider_rcpt_fault(
        "provider_450_at_rcpt_reaches_mailer_as_4xx",
        &["-r", "RCPT"],
        Some(450),
    );
}
