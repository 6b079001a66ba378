//! Reads a provider Postfix's log while a scenario runs and timestamps what happened:
//! each recipient delivered (to the `discard` transport), each refusal anvil logged,
//! each connection. Postfix's own timestamps have one-second resolution, so the log is
//! polled every `POLL` and an event gets the time it was first seen (at most `POLL`
//! late, the same for every event). Must never write to the log or to Postfix.

use super::support::postfix::anvil;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

/// How often the log is read.
pub const POLL: Duration = Duration::from_millis(100);

/// What the log said so far; times are since `Watch::start`'s `epoch`.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Postfix queue id → the Message-ID cleanup logged for it.
    msgid: HashMap<String, String>,
    /// (Message-ID, recipient) → how often it was delivered.
    pub delivered: HashMap<(String, String), usize>,
    /// When each delivery (one recipient) was seen, in order.
    pub delivered_at: Vec<Duration>,
    /// A delivery whose queue id had no Message-ID line (must stay 0).
    pub orphans: usize,
    /// When each refusal was seen, by anvil's log text (`support::postfix::anvil`).
    pub refused: HashMap<&'static str, Vec<Duration>>,
    /// Sessions smtpd accepted (greeted or refused).
    pub connects: usize,
    /// When the first of them was seen: anvil's first rate unit starts there.
    pub first_connect: Option<Duration>,
    /// Sessions smtpd ended with `421 4.7.0 ... Error: too many errors` (after
    /// `smtpd_hard_error_limit` errors, 20: each anvil 450 counts as one).
    pub error_limit: usize,
}

impl Tally {
    fn line(&mut self, line: &str, at: Duration) {
        if let Some(pos) = line.find(": message-id=<") {
            let qid = queue_id(&line[..pos]);
            let id = line[pos + ": message-id=<".len()..].trim_end();
            let id = id.strip_suffix('>').unwrap_or(id);
            self.msgid.insert(qid.to_string(), id.to_string());
        } else if let Some(pos) = line.find(": to=<") {
            if !line.contains(" status=sent ") {
                return;
            }
            let qid = queue_id(&line[..pos]);
            let rest = &line[pos + ": to=<".len()..];
            let rcpt = rest.split('>').next().unwrap_or("");
            match self.msgid.get(qid) {
                Some(id) => {
                    *self
                        .delivered
                        .entry((id.clone(), rcpt.to_string()))
                        .or_default() += 1;
                    self.delivered_at.push(at);
                }
                None => self.orphans += 1,
            }
        } else if line.contains("]: connect from ") {
            self.connects += 1;
            self.first_connect.get_or_insert(at);
        } else if line.contains("]: too many errors after ") {
            self.error_limit += 1;
        } else {
            for what in [
                anvil::CONNECTION_COUNT,
                anvil::CONNECTION_RATE,
                anvil::MESSAGE_RATE,
                anvil::RECIPIENT_RATE,
            ] {
                if line.contains(what) {
                    self.refused.entry(what).or_default().push(at);
                }
            }
        }
    }

    /// Refusals logged with `what` (an `anvil::*` text).
    pub fn refusals(&self, what: &str) -> usize {
        self.refused.get(what).map_or(0, Vec::len)
    }

    /// Deliveries in total (copies included).
    pub fn deliveries(&self) -> usize {
        self.delivered.values().sum()
    }
}

/// `Dec  3 15:46:18 provider postfix/cleanup[123]: 4Fh2Zk1x2: ` → `4Fh2Zk1x2`.
fn queue_id(before: &str) -> &str {
    before.rsplit(' ').next().unwrap_or("")
}

/// A thread reading the log until dropped.
pub struct Watch {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Reads `log` from byte `from` on; event times count from `epoch`.
    pub fn start(log: PathBuf, from: u64, epoch: Instant) -> Watch {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (tally.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut pos = from;
            let mut partial = String::new();
            while !s.load(Ordering::Relaxed) {
                let mut buf = Vec::new();
                if let Ok(mut f) = File::open(&log) {
                    if f.seek(SeekFrom::Start(pos)).is_ok() {
                        let _ = f.read_to_end(&mut buf);
                    }
                }
                pos += buf.len() as u64;
                let at = epoch.elapsed();
                partial.push_str(&String::from_utf8_lossy(&buf));
                // Only complete lines; the rest waits for the next read.
                if let Some(end) = partial.rfind('\n') {
                    let complete: String = partial.drain(..=end).collect();
                    let mut tally = t.lock().unwrap();
                    for line in complete.lines() {
                        tally.line(line, at);
                    }
                }
                sleep(POLL);
            }
        });
        Watch {
            tally,
            stop,
            thread: Some(thread),
        }
    }

    pub fn snapshot(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn tally_reads_postfix_lines() {
    let mut t = Tally::default();
    let s = Duration::from_secs(1);
    for l in [
        "Dec  3 15:46:18 provider postfix/smtpd[7]: connect from localhost[127.0.0.1]",
        "Dec  3 15:46:18 provider postfix/cleanup[8]: 4AbC: message-id=<m1@mailvalve.test>",
        "Dec  3 15:46:18 provider postfix/discard[9]: 4AbC: to=<a@example.net>, relay=none, \
         delay=0.01, delays=0/0/0/0, dsn=2.0.0, status=sent (example.net)",
        "Dec  3 15:46:18 provider postfix/discard[9]: 4AbC: to=<b@example.net>, relay=none, \
         delay=0.01, delays=0/0/0/0, dsn=2.0.0, status=sent (example.net)",
        "Dec  3 15:46:19 provider postfix/discard[9]: 4XyZ: to=<b@example.net>, relay=none, \
         delay=0.01, delays=0/0/0/0, dsn=2.0.0, status=sent (example.net)",
        "Dec  3 15:46:19 provider postfix/smtpd[7]: too many errors after RCPT from \
         localhost[127.0.0.1]",
        "Dec  3 15:46:19 provider postfix/smtpd[7]: warning: Message delivery request rate \
         limit exceeded: 21 from localhost[127.0.0.1] for service 127.0.0.1:2525",
    ] {
        t.line(l, s);
    }
    assert_eq!(t.connects, 1);
    assert_eq!(t.error_limit, 1);
    assert_eq!(t.deliveries(), 2);
    assert_eq!(t.orphans, 1);
    assert_eq!(
        t.delivered
            .get(&("m1@mailvalve.test".into(), "b@example.net".into())),
        Some(&1)
    );
    assert_eq!(t.refusals(anvil::MESSAGE_RATE), 1);
    assert_eq!(t.refusals(anvil::CONNECTION_RATE), 0);
}
