//! Interop tests: mailvalve between SMTP programs that nobody on this project wrote.
//!
//! * `swaks` plays the newsletter software (STARTTLS, AUTH PLAIN / LOGIN).
//! * `smtp-source` (Debian package `postfix`) plays a mailer under load.
//! * `smtp-sink` (same package) plays the provider, with its fault injection
//!   (`-Q CMD`: 421 and disconnect, `-r CMD`: 4xx) and its per-message dump (`-d`).
//!
//! Every test spawns the built binary (`CARGO_BIN_EXE_mailvalve`) and the tools as child
//! processes on 127.0.0.1 only, with ports picked by the OS. Every wait is bounded; every
//! child is killed when its guard drops, also when a test panics.
//!
//! When a tool is missing the test prints `SKIPPED: ...` and passes, unless
//! `MAILVALVE_REQUIRE_TOOLS` is set (CI sets it in `.ci/run`), then it fails.
//!
//! ## smtp-sink dump format (what the assertions rely on)
//!
//! `smtp-sink -d TEMPLATE` writes one file per transaction, named by expanding TEMPLATE
//! with strftime(3) and appending a random hex number. The file holds, one LF-terminated
//! line each (the CR of every CRLF is dropped, dot-stuffing is undone):
//!
//! ```text
//! X-Client-Addr: 127.0.0.1
//! X-Client-Proto: SMTP|ESMTP
//! X-Helo-Args: <helo name>            (only if HELO/EHLO was sent)
//! X-Mail-Args: <from@x> [params]
//! X-Rcpt-Args: <to@y> [params]        (one per RCPT, in order)
//! Received: from <helo> ([127.0.0.1])
//! \tby smtp-sink (smtp-sink) with ESMTP id <hex>;
//! \t<date>
//! <the message exactly as received, de-stuffed>
//! <one empty line>
//! ```
//!
//! `harness_sink_dump_matches_the_file_smtp_source_sent` checks these facts against the
//! installed tools without mailvalve in the path.

mod support;

use support::client::Client;
use support::harness::*;
use support::sink::start_sink;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// Bound for one swaks / check / short client run.
const SHORT_RUN: Duration = Duration::from_secs(60);
/// Bound for the 2000-message run (debug build, 2 cores in CI).
const LOAD_RUN: Duration = Duration::from_secs(240);

// ------------------------------------------------------------------------------------
// smtp-sink
// ------------------------------------------------------------------------------------

/// One smtp-sink dump file, split into the sink's own header block and the message.
#[derive(Debug)]
struct Dump {
    /// The `X-...: value` records smtp-sink writes (client, HELO, MAIL, RCPT args).
    records: Vec<(String, String)>,
    /// The message as the provider received it: everything after smtp-sink's
    /// `Received:` block, minus `Received:` trace fields a relay prepended
    /// (RFC 5321 4.4 requires relays to add one; they are not the mailer's bytes).
    message: Vec<u8>,
}

impl Dump {
    fn record(&self, key: &str) -> Vec<&str> {
        self.records
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Splits `bytes` into the first line (including its LF) and the rest.
fn split_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => bytes.split_at(i + 1),
        None => (bytes, &[][..]),
    }
}

/// Drops one header field (first line plus folded continuation lines) from the front.
fn skip_field(mut rest: &[u8]) -> &[u8] {
    let (_, r) = split_line(rest);
    rest = r;
    while rest.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        rest = split_line(rest).1;
    }
    rest
}

fn parse_dump(bytes: &[u8]) -> Dump {
    let mut rest = bytes;
    let mut records = Vec::new();
    while rest.starts_with(b"X-") {
        let (line, r) = split_line(rest);
        let line = String::from_utf8_lossy(line);
        let (k, v) = line
            .trim_end_matches('\n')
            .split_once(": ")
            .unwrap_or((&line, ""));
        records.push((k.to_string(), v.to_string()));
        rest = r;
    }
    assert!(
        rest.starts_with(b"Received: "),
        "smtp-sink dump without its Received block:\n{}",
        String::from_utf8_lossy(bytes)
    );
    rest = skip_field(rest);
    while rest.starts_with(b"Received:") {
        rest = skip_field(rest);
    }
    Dump {
        records,
        message: rest.to_vec(),
    }
}

fn read_dump(path: &Path) -> Dump {
    parse_dump(&fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

// ------------------------------------------------------------------------------------
// mailvalve
// ------------------------------------------------------------------------------------

/// A passthrough config: mailvalve on `{LISTEN}`, upstream = smtp-sink without TLS.
/// `server_extra` / `upstream_extra` are TOML lines added to those tables; `tail` holds
/// further tables (`[server.tls]`, `[[server.users]]`, ...) appended at the end.
fn passthrough_config(
    sink_port: u16,
    server_extra: &str,
    upstream_extra: &str,
    tail: &str,
) -> String {
    format!(
        r#"mode = "passthrough"

[server]
listen = "{{LISTEN}}"
hostname = "mailvalve.test"
{server_extra}

[upstream]
host = "127.0.0.1"
port = {sink_port}
tls = "none"
# smtp-sink is a server we run ourselves: no provider limits to respect.
profile = "local"
{upstream_extra}

{tail}
"#
    )
}

/// A self-signed certificate for `localhost` / 127.0.0.1, written as PEM files.
/// Returns (cert path, key path); the certificate is also its own CA for swaks.
fn write_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    fs::write(&cert, ck.cert.pem()).unwrap();
    fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

// ------------------------------------------------------------------------------------
// Harness self-test: the tools and the dump format, without mailvalve
// ------------------------------------------------------------------------------------

/// A message that is hard to relay unchanged: lines that need dot-stuffing, a lone dot,
/// an mbox `From ` line, trailing white space, a tab, UTF-8, empty lines, and a line of
/// 998 octets (1000 with CRLF: the longest RFC 5321 allows).
fn tricky_message() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(
        "From: Interop <from@example.org>\n\
         To: <to@example.net>\n\
         Subject: dots, long lines and 8 bit\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n\
         \n\
         .leading dot\n\
         ..two leading dots\n\
         .\n\
         . dot space\n\
         From the start of a line (mbox hazard)\n\
         trailing spaces   \n\
         \ttab-indented\n\
         umlauts \u{e4}\u{f6}\u{fc} \u{df} \u{20ac}\n\
         \n\
         \n"
        .as_bytes(),
    );
    m.push(b'L');
    m.extend_from_slice(&[b'x'; 996]);
    m.push(b'L');
    m.extend_from_slice(b"\n.\n..\nlast line\n");
    m
}

/// Checks the facts the other tests rely on: smtp-source's invocations, smtp-sink's
/// `-d` dump format (LF line ends, dot-stuffing undone, one extra empty line after the
/// message) — straight from smtp-source to smtp-sink.
#[test]
fn harness_sink_dump_matches_the_file_smtp_source_sent() {
    const T: &str = "harness_sink_dump_matches_the_file_smtp_source_sent";
    let (Some(sink_bin), Some(source)) = (need(T, "smtp-sink"), need(T, "smtp-source")) else {
        return;
    };
    let dir = tempdir();
    let msg = dir.path().join("message.txt");
    fs::write(&msg, tricky_message()).unwrap();
    let sink = start_sink(&sink_bin, dir.path(), "direct", &[], free_port(), true);

    let (st, out) = run(
        "smtp-source",
        Command::new(&source)
            .args(["-s", "2", "-m", "4", "-d", "-M", "client.test"])
            .args(["-f", "from@example.org", "-t", "to@example.net", "-F"])
            .arg(&msg)
            .arg(format!("127.0.0.1:{}", sink.port)),
        dir.path(),
        SHORT_RUN,
    );
    assert!(st.success(), "smtp-source failed ({st}):\n{out}");

    let files = sink.wait_dumps(4, Duration::from_secs(10));
    assert_eq!(files.len(), 4, "dumps: {files:?}");
    for f in &files {
        let d = read_dump(f);
        assert_eq!(
            d.record("X-Client-Proto"),
            ["SMTP"],
            "smtp-source speaks HELO"
        );
        assert_eq!(d.record("X-Helo-Args"), ["client.test"]);
        assert_eq!(d.record("X-Mail-Args"), ["<from@example.org>"]);
        assert_eq!(d.record("X-Rcpt-Args"), ["<to@example.net>"]);
        // What smtp-source -F sends is the file, and smtp-sink stores it with LF line
        // ends and the dots unstuffed, followed by one empty line of its own. (This
        // version of smtp-source also sends one empty line after the file: hence two.)
        let mut expected = tricky_message();
        let tail = &d.message[expected.len().min(d.message.len())..];
        assert_eq!(
            String::from_utf8_lossy(&d.message[..expected.len().min(d.message.len())]),
            String::from_utf8_lossy(&expected),
        );
        assert!(tail == b"\n" || tail == b"\n\n", "unexpected tail {tail:?}");
        expected.extend_from_slice(tail);
        assert_eq!(d.message, expected);
    }
}

// ------------------------------------------------------------------------------------
// a) swaks with STARTTLS and AUTH through mailvalve to smtp-sink
// ------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------
// b) smtp-source load through mailvalve: every message arrives, unchanged
// ------------------------------------------------------------------------------------

/// Replaces the values of the two header fields smtp-source varies per message (`Date:`
/// and `Message-Id:`) by a placeholder; returns the result and the Message-Id.
fn normalise_smtp_source_message(message: &[u8]) -> (Vec<u8>, String) {
    let mut out = Vec::with_capacity(message.len());
    let mut id = String::new();
    let mut rest = message;
    let mut in_header = true;
    while !rest.is_empty() {
        let (line, r) = split_line(rest);
        rest = r;
        if in_header && line == b"\n" {
            in_header = false;
        }
        if in_header && line.starts_with(b"Date: ") {
            out.extend_from_slice(b"Date: <varies>\n");
        } else if in_header && line.starts_with(b"Message-Id: ") {
            id = String::from_utf8_lossy(&line[12..]).trim().to_string();
            out.extend_from_slice(b"Message-Id: <varies>\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    (out, id)
}

/// 2000 messages of 10 KB from 20 parallel smtp-source sessions, through mailvalve in
/// passthrough mode, into smtp-sink.
///
/// What "byte-identical" means here: smtp-source -l generates each message as four
/// header fields (From, To, Date, Message-Id) and a fixed body. Date and Message-Id vary
/// per message (clock; pid.session.counter), everything else is the same for every
/// message. So the reference is one message sent by the same smtp-source invocation
/// straight to smtp-sink in the same test, and each relayed message must equal it byte
/// for byte after: (1) removing smtp-sink's own record block, (2) removing `Received:`
/// trace fields mailvalve prepends, (3) replacing the Date and Message-Id values by a
/// placeholder. Both sides pass through smtp-sink's storage (CRLF stored as LF, dots
/// unstuffed), so those transformations cancel out; a bare CR or LF introduced by the
/// relay would still show as a stray `\r` or an extra line. The Message-Ids must be 2000
/// distinct values: nothing lost, nothing delivered twice.
///
/// `preformatted_message_arrives_byte_identical` covers the strict case without any
/// normalisation (smtp-source -F, fixed content with dot-stuffing hazards).
#[test]
fn smtp_source_2000_messages_through_mailvalve_arrive_byte_identical() {
    const T: &str = "smtp_source_2000_messages_through_mailvalve_arrive_byte_identical";
    const MESSAGES: usize = 2000;
    let (Some(sink_bin), Some(source)) = (need(T, "smtp-sink"), need(T, "smtp-source")) else {
        return;
    };
    let dir = tempdir();
    let source_args = |port: u16, sessions: &str, count: &str| {
        let mut c = Command::new(&source);
        c.args([
            "-s",
            sessions,
            "-m",
            count,
            "-l",
            "10240",
            "-M",
            "client.test",
        ])
        .args(["-f", "from@example.org", "-t", "to@example.net"])
        .arg(format!("127.0.0.1:{port}"));
        c
    };

    // The reference: smtp-source straight to smtp-sink.
    let reference_sink = start_sink(&sink_bin, dir.path(), "reference", &[], free_port(), true);
    let (st, out) = run(
        "smtp-source-reference",
        &mut source_args(reference_sink.port, "1", "1"),
        dir.path(),
        SHORT_RUN,
    );
    assert!(
        st.success(),
        "smtp-source to smtp-sink failed ({st}):\n{out}"
    );
    let refs = reference_sink.wait_dumps(1, Duration::from_secs(10));
    assert_eq!(refs.len(), 1);
    let (reference, _) = normalise_smtp_source_message(&read_dump(&refs[0]).message);
    // 10240 payload octets = 128 lines of 78 characters + CRLF; stored with LF only.
    assert!(
        reference.len() > 128 * 79,
        "reference message too short: {}",
        reference.len()
    );

    // The same through mailvalve.
    let sink = start_sink(&sink_bin, dir.path(), "provider", &[], free_port(), true);
    let config = passthrough_config(
        sink.port,
        "",
        "max_connections = 20\nmax_messages_per_connection = 1000",
        "",
    );
    let mut relay = start_mailvalve(dir.path(), &config, &[]);
    let started = Instant::now();
    let (st, out) = run(
        "smtp-source-relayed",
        &mut source_args(relay.port, "20", &MESSAGES.to_string()),
        dir.path(),
        LOAD_RUN,
    );
    assert!(
        st.success(),
        "smtp-source through mailvalve failed ({st}):\n{out}\nmailvalve:\n{}",
        relay.proc.output()
    );
    eprintln!("{T}: {MESSAGES} messages in {:?}", started.elapsed());
    relay.assert_alive();

    let files = sink.wait_dumps(MESSAGES, Duration::from_secs(20));
    assert_eq!(files.len(), MESSAGES, "messages at smtp-sink");
    let mut ids = HashSet::new();
    for f in &files {
        let d = read_dump(f);
        assert_eq!(d.record("X-Mail-Args").len(), 1, "{}", f.display());
        assert!(
            d.record("X-Mail-Args")[0].starts_with("<from@example.org>"),
            "{:?}",
            d.records
        );
        assert_eq!(d.record("X-Rcpt-Args").len(), 1, "{}", f.display());
        assert!(
            d.record("X-Rcpt-Args")[0].starts_with("<to@example.net>"),
            "{:?}",
            d.records
        );
        let (message, id) = normalise_smtp_source_message(&d.message);
        if message != reference {
            panic!(
                "{} differs from the direct reference\n--- reference\n{}\n--- relayed\n{}",
                f.display(),
                String::from_utf8_lossy(&reference),
                String::from_utf8_lossy(&message)
            );
        }
        assert!(!id.is_empty(), "no Message-Id in {}", f.display());
        assert!(ids.insert(id.clone()), "Message-Id {id} delivered twice");
    }
    assert_eq!(ids.len(), MESSAGES);
}

/// A fixed message with dot-stuffing hazards, a 998-octet line and UTF-8, sent by
/// smtp-source -F (several messages per session, `-d`) through mailvalve: each must
/// arrive exactly as it arrives when smtp-source sends it straight to smtp-sink — no
/// normalisation at all, apart from `Received:` fields mailvalve prepends.
#[test]
fn preformatted_message_arrives_byte_identical() {
    const T: &str = "preformatted_message_arrives_byte_identical";
    const MESSAGES: usize = 50;
    let (Some(sink_bin), Some(source)) = (need(T, "smtp-sink"), need(T, "smtp-source")) else {
        return;
    };
    let dir = tempdir();
    let msg = dir.path().join("message.txt");
    fs::write(&msg, tricky_message()).unwrap();
    let send = |port: u16, sessions: &str, count: &str, name: &str| {
        run(
            name,
            Command::new(&source)
                .args(["-s", sessions, "-m", count, "-d", "-M", "client.test"])
                .args(["-f", "from@example.org", "-t", "to@example.net", "-F"])
                .arg(&msg)
                .arg(format!("127.0.0.1:{port}")),
            dir.path(),
            SHORT_RUN,
        )
    };

    let reference_sink = start_sink(&sink_bin, dir.path(), "reference", &[], free_port(), true);
    let (st, out) = send(reference_sink.port, "1", "1", "smtp-source-reference");
    assert!(st.success(), "{out}");
    let refs = reference_sink.wait_dumps(1, Duration::from_secs(10));
    assert_eq!(refs.len(), 1);
    let reference = read_dump(&refs[0]).message;

    let sink = start_sink(&sink_bin, dir.path(), "provider", &[], free_port(), true);
    let config = passthrough_config(sink.port, "", "max_connections = 5", "");
    let relay = start_mailvalve(dir.path(), &config, &[]);
    let (st, out) = send(
        relay.port,
        "5",
        &MESSAGES.to_string(),
        "smtp-source-relayed",
    );
    assert!(st.success(), "{out}\nmailvalve:\n{}", relay.proc.output());

    let files = sink.wait_dumps(MESSAGES, Duration::from_secs(10));
    assert_eq!(files.len(), MESSAGES);
    for f in &files {
        let got = read_dump(f).message;
        assert!(
            got == reference,
            "{} differs\n--- direct\n{}\n--- through mailvalve\n{}",
            f.display(),
            String::from_utf8_lossy(&reference),
            String::from_utf8_lossy(&got)
        );
    }
}

// ------------------------------------------------------------------------------------
// c) provider faults at RCPT reach the mailer as 4xx, never 250
// ------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------
// d) secrets never appear in output
// ------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------
// d) inbound rules (issue 8): addresses exactly or refused; a burst of connections
// ------------------------------------------------------------------------------------

/// Through the real binary to smtp-sink: `<postmaster>` arrives as `<postmaster>` (not
/// as the null path), in the case the mailer wrote; what cannot be passed on exactly is
/// refused at MAIL/RCPT with a 5xx and never reaches the provider.
#[test]
fn addresses_reach_smtp_sink_exactly_or_are_refused() {
    let test = "addresses_reach_smtp_sink_exactly_or_are_refused";
    let Some(sink_bin) = need(test, "smtp-sink") else {
        return;
    };
    let dir = tempdir();
    let sink = start_sink(&sink_bin, dir.path(), "provider", &[], free_port(), true);
    let config = passthrough_config(sink.port, "", "", "");
    let mut relay = start_mailvalve(dir.path(), &config, &[]);

    let mut c = Client::session(relay.port).expect("session");
    let code = |r: std::io::Result<(u16, String)>| r.expect("reply").0;
    assert_eq!(code(c.cmd("MAIL FROM:<\"news desk\"@example.org>")), 553);
    assert_eq!(code(c.cmd("MAIL FROM:<postmaster>")), 250);
    assert_eq!(code(c.cmd("RCPT TO:<Postmaster>")), 250);
    assert_eq!(code(c.cmd("RCPT TO:<>")), 501);
    assert_eq!(code(c.cmd("RCPT TO:<\"john doe\"@example.org>")), 553);
    assert_eq!(code(c.cmd("RCPT TO:<müller@example.org>")), 553);
    assert_eq!(code(c.cmd("DATA")), 354);
    for line in ["Subject: addresses", "", "exactly or not at all"] {
        c.write_line(line).expect("write");
    }
    assert_eq!(code(c.cmd(".")), 250);
    let _ = c.cmd("QUIT");
    relay.assert_alive();

    let dumps = sink.wait_dumps(1, SHORT_RUN);
    assert_eq!(dumps.len(), 1, "one transaction at the sink");
    let d = read_dump(&dumps[0]);
    assert_eq!(d.record("X-Mail-Args"), vec!["<postmaster>"]);
    assert_eq!(d.record("X-Rcpt-Args"), vec!["<Postmaster>"]);
}

/// `mailvalve run` binds with `server.listen_backlog`: while the process is stopped
/// (SIGSTOP) nothing accepts, yet 1000 connections complete their handshake in the
/// kernel's queue (a backlog of 128 holds 129; the rest hang in SYN retries). Once it
/// runs again, every one is answered: 220 up to `max_sessions`, 421 beyond.
#[cfg(target_os = "linux")]
#[test]
fn burst_of_1000_connections_to_mailvalve_run_is_answered_every_one() {
    const N: usize = 1000;
    support::client::allow_open_files(4 * N as libc::rlim_t);
    let dir = tempdir();
    // The upstream is never contacted: nobody sends MAIL.
    let config = passthrough_config(free_port(), "", "", "");
    let mut relay = start_mailvalve(dir.path(), &config, &[]);
    let signal = |sig: &str| {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(relay.proc.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig}");
    };

    signal("STOP");
    let mut clients = Vec::with_capacity(N);
    let mut failed = None;
    for i in 0..N {
        match Client::connect(relay.port) {
            Ok(c) => clients.push(c),
            Err(e) => {
                failed = Some(format!("connection {i}: {e}"));
                break;
            }
        }
    }
    signal("CONT");
    if let Some(f) = failed {
        panic!(
            "only {} of {N} connections got through the listen backlog ({f})",
            clients.len()
        );
    }

    let (mut greeted, mut busy) = (0, 0);
    for (i, c) in clients.iter_mut().enumerate() {
        let (code, text) = c
            .reply()
            .unwrap_or_else(|e| panic!("connection {i} got no reply: {e}"));
        match code {
            220 => greeted += 1,
            421 => {
                assert!(text.starts_with("421 4.3.2"), "{text}");
                busy += 1;
            }
            _ => panic!("connection {i}: unexpected {text}"),
        }
    }
    assert_eq!((greeted, busy), (200, N - 200), "max_sessions = 200");
    drop(clients);
    relay.assert_alive();
}
