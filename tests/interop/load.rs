//! b) smtp-source load through mailvalve: every message arrives, unchanged.

use super::*;

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
