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
//!
//! One file per scenario beside this one; the smtp-sink dump reader and the mailvalve
//! configuration helpers stay here.

#[path = "../support/mod.rs"]
mod support;

mod harness_selftest;
mod inbound;
mod load;
mod provider_faults;
mod secrets;
mod swaks;

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

[http]
listen = "127.0.0.1:0"

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
