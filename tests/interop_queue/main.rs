//! Queue mode against real SMTP peers: the built `mailvalve run` binary in queue mode,
//! an in-test mailer (a blocking SMTP client over `TcpStream` that records every
//! `250 ... queued as <id>` it got, and for which Message-ID), and `smtp-sink` (Debian
//! package `postfix`) as the provider, dumping each accepted transaction to a file
//! (`-d`), with its fault injection (`-Q MAIL`: 421 and disconnect at MAIL; `-r RCPT`:
//! `450 4.3.0` at RCPT).
//!
//! * `crash_kill9_three_times_loses_no_acknowledged_message`: 5000 messages while
//!   mailvalve is killed with SIGKILL three times and restarted on the same spool.
//! * `provider_faults_are_deferred_logged_and_delivered_once`: 421 at MAIL, then 4xx at
//!   RCPT, then a healthy provider; everything arrives exactly once.
//! * `disk_full_answers_452_keeps_the_spool_and_recovers`: the spool on a 2 MB tmpfs
//!   (root only).
//! * `outcomes_that_cannot_be_written_are_not_resent`: the spool's tmpfs kept full while
//!   delivering (redb latches "Previous I/O error"): dispatching halts instead of
//!   resending every message every few seconds, also after a restart; at most the
//!   transactions in flight at the kill arrive twice (root only).
//! * `finished_message_left_by_a_crash_is_removed_after_restart`: a message recorded as
//!   delivered but not yet removed when the process died is removed at restart (a bug
//!   the crash test found, now fixed in spool recovery).
//!
//! The null-sender case (no bounce for a bounce) runs in process: `tests/queue.rs`.
//!
//! Arrivals are counted by Message-ID: every message carries a unique one and ends with
//! the line `END <message-id>`. smtp-sink deletes the capture file of a transaction that
//! did not end with `.` (checked by hand: a session dropped mid-DATA leaves no file), so
//! a dump file is a message the provider accepted; the `END` line is checked anyway
//! and a dump without it is counted as `partial` and not as an arrival.
//!
//! Every wait and loop is bounded; every child process is killed when its guard drops.
//! A missing tool prints `SKIPPED: ...` and passes, unless `MAILVALVE_REQUIRE_TOOLS` is
//! set. Figures are printed with `println!` (`cargo test --test interop_queue --
//! --nocapture` shows them).
//!
//! One file per scenario beside this one (crash, provider_faults, disk_full); the sink,
//! mailvalve process and mailer helpers stay here.

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod disk_full;
mod provider_faults;

use support::client::{Client, Reply};
use support::harness::*;
use support::sink::start_sink;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mailvalve::queue::{RcptState, Spool, Which};

// ------------------------------------------------------------------------------------
// What arrived at smtp-sink (started on a port of our choosing, so that a faulty sink
// can be swapped for another)
// ------------------------------------------------------------------------------------

/// What arrived at the provider, by Message-ID.
#[derive(Debug, Default)]
struct Arrivals {
    /// Message-ID → complete dumps holding it.
    count: HashMap<String, usize>,
    /// Dump files without the final `END` line (or without a Message-ID).
    partial: usize,
}

impl Arrivals {
    fn scan(dirs: &[&Path]) -> Arrivals {
        let mut a = Arrivals::default();
        for dir in dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(bytes) = fs::read(e.path()) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&bytes);
                let id = text.lines().find_map(|l| {
                    l.strip_prefix("Message-ID: ")
                        .map(|v| v.trim().trim_matches(['<', '>']).to_string())
                });
                match id {
                    Some(id) if text.contains(&format!("\nEND {id}\n")) => {
                        *a.count.entry(id).or_default() += 1;
                    }
                    _ => a.partial += 1,
                }
            }
        }
        a
    }
    fn distinct(&self) -> usize {
        self.count.len()
    }
    fn total(&self) -> usize {
        self.count.values().sum()
    }
    /// Extra copies beyond the first.
    fn duplicates(&self) -> usize {
        self.total() - self.distinct()
    }
    fn max_copies(&self) -> usize {
        self.count.values().copied().max().unwrap_or(0)
    }
}

// ------------------------------------------------------------------------------------
// mailvalve in queue mode, on a fixed port, restartable on the same spool
// ------------------------------------------------------------------------------------

fn queue_config(listen: u16, upstream: u16, spool: &Path, upstream_extra: &str) -> String {
    format!(
        r#"mode = "queue"

[server]
listen = "127.0.0.1:{listen}"
hostname = "mailvalve.test"
shutdown_grace = "3s"

[http]
listen = "127.0.0.1:0"

[upstream]
host = "127.0.0.1"
port = {upstream}
tls = "none"
# smtp-sink is a server we run ourselves: no provider limits to respect.
profile = "local"
{upstream_extra}

[queue]
dir = "{spool}"
"#,
        spool = spool.display()
    )
}

/// Runs `mailvalve run` (run number `n`: its own config copy and log) until it accepts
/// on `port`.
fn start_mv(dir: &Path, n: usize, config: &str, port: u16) -> Proc {
    let path = dir.join(format!("mailvalve-{n}.toml"));
    fs::write(&path, config).unwrap();
    let mut cmd = Command::new(mailvalve());
    cmd.current_dir(dir)
        .arg("run")
        .arg("-c")
        .arg(&path)
        .env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let mut p = Proc::spawn(
        &format!("mailvalve[{n}]"),
        &mut cmd,
        dir.join(format!("mailvalve-{n}.log")),
    );
    p.wait_listening(port, STARTUP);
    p
}

fn assert_running(p: &mut Proc) {
    if let Some(st) = p.exited() {
        panic!("mailvalve exited ({st}); output:\n{}", p.output());
    }
}

/// Files in `<spool>/msg` (message bodies; one per queued message).
fn spool_bodies(spool: &Path) -> Vec<String> {
    fs::read_dir(spool.join("msg"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Opens the spool of a stopped mailvalve in this process and runs `f` on it.
fn with_spool<R>(spool: &Path, f: impl FnOnce(&Spool) -> R) -> R {
    let (s, _) = Spool::open(spool).expect("open the spool of a stopped mailvalve");
    let r = f(&s);
    drop(s);
    r
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls `cond` every 50 ms for at most `limit`; true if it held.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------------------------
// The mailer (`support::client::Client`): messages and their queue ids
// ------------------------------------------------------------------------------------

/// The queue id from `250 2.0.0 Ok: queued as <id>`.
fn queued_as(reply: &Reply) -> Option<String> {
    if reply.0 != 250 {
        return None;
    }
    let (_, id) = reply.1.split_once("queued as ")?;
    Some(id.trim().to_string())
}

/// A message of about `size` octets with Message-ID `<id>`, ending with `END id`.
/// No line starts with a dot, so the text is also its own dot-stuffed form.
fn message(id: &str, size: usize) -> String {
    let mut m = format!(
        "Message-ID: <{id}>\r\nFrom: news@news.example\r\nTo: reader@example.net\r\n\
         Subject: queue interop {id}\r\n\r\n"
    );
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-queue-filler\r\n";
    while m.len() + line.len() < size {
        m.push_str(line);
    }
    m.push_str(&format!("END {id}\r\n"));
    m
}

/// A seed for the random kill moments: `MAILVALVE_TEST_SEED`, else the clock.
fn seed() -> u64 {
    std::env::var("MAILVALVE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() ^ u64::from(std::process::id()))
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// With `MAILVALVE_TEST_KEEP` set, the test directory is not deleted (for debugging).
fn keep(dir: tempfile::TempDir) -> KeptDir {
    if std::env::var_os("MAILVALVE_TEST_KEEP").is_some() {
        KeptDir::Kept(dir.keep())
    } else {
        KeptDir::Temp(dir)
    }
}

enum KeptDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl KeptDir {
    fn path(&self) -> &Path {
        match self {
            KeptDir::Temp(d) => d.path(),
            KeptDir::Kept(p) => p,
        }
    }
}
