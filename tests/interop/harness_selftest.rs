//! Harness self-test: the tools and the dump format, without mailvalve.

use super::*;

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
