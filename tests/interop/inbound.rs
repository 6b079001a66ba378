//! d) inbound rules (issue 8): addresses exactly or refused; a burst of connections.

use super::*;

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
