//! The delivery log: one JSON object per line for every recipient outcome in queue mode
//! (delivered, deferred, failed, expired, held, suppressed), so an operator can `tail -f`
//! it, grep it or load it into a spreadsheet, and see what happened to each address.
//!
//! This module must never panic and never stop delivery: a failing log (disk full,
//! file removed) is reported with one `tracing::warn!` per burst of failures and
//! otherwise ignored. It never logs message content or credentials, only the envelope
//! and the provider's reply.

use super::record::StoredReply;
use super::QueueId;
use serde::{Serialize, Serializer};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

/// What happened to one recipient.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The provider accepted it.
    Delivered,
    /// A temporary failure; it will be retried at `next_attempt_ms`.
    Deferred,
    /// A permanent failure; a bounce report goes to the sender.
    Failed,
    /// Still undelivered after the queue's `max_age`; a bounce report goes to the sender.
    Expired,
    /// Not tried because the account is paused (or the provider cannot be reached); no
    /// attempt was used up. Written once, when the hold starts.
    Held,
    /// Tried again after a hold: written once, when the hold ends, before the outcome.
    Resumed,
    /// Not tried because the address is on the suppression list.
    Suppressed,
}

/// Unix ms as an RFC 3339 time in UTC with milliseconds (`2026-12-03T12:41:32.000Z`),
/// what a person reads next to `ts_ms`.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A line as written: the RFC 3339 time first, then the entry's fields.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    entry: &'a LogEntry<'a>,
}

/// One line of the log.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct LogEntry<'a> {
    /// Unix ms of the outcome.
    pub ts_ms: u64,
    /// Written as the queue id's text form (the spool's file name).
    #[serde(serialize_with = "as_display")]
    pub queue_id: QueueId,
    pub from: &'a str,
    pub rcpt: &'a str,
    pub action: Action,
    /// The provider's reply, when there was one.
    pub reply: Option<&'a StoredReply>,
    /// The reply policy's verdict (e.g. `suppress`, `throttle-rate`).
    pub verdict: &'a str,
    /// Delivery attempts made so far, this one included.
    pub attempts: u32,
    /// Unix ms of the next attempt, for a deferral.
    pub next_attempt_ms: Option<u64>,
}

fn as_display<S: Serializer>(id: &QueueId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// The log file, or nothing (`disabled`). `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct DeliveryLog {
    inner: Option<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    // Each line is built in `line` and written with one `write_all` on the unbuffered
    // file, which is the same as a `BufWriter` flushed after every line, minus the
    // BufWriter's habit of keeping a failed half line buffered and writing it in front of
    // the next one.
    file: File,
    line: Vec<u8>,
    /// The last write failed: the next one starts on a fresh line, and the next failure
    /// is not logged again.
    failing: bool,
}

impl DeliveryLog {
    /// Opens `path` for appending, creating the file if needed, readable by its owner
    /// only (it lists every recipient address). The parent directory must exist.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.append(true).create(true);
        let file = crate::platform::owner_only(&mut opts).open(path)?;
        // A log created by an older version may have the umask's mode.
        crate::platform::tighten(&file)?;
        Ok(Self {
            inner: Some(Mutex::new(Inner {
                file,
                line: Vec::with_capacity(512),
                failing: false,
            })),
        })
    }

    /// A log that writes nothing.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Appends one line. Never panics; an error is logged once per burst, not returned.
    pub fn write(&self, o: &LogEntry) {
        let Some(inner) = &self.inner else { return };
        // A panic elsewhere while holding the lock must not silence the log for good.
        let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.line.clear();
        if inner.failing {
            // A failed write may have left half a line: end it so this one parses.
            inner.line.push(b'\n');
        }
        let line = Line {
            time: rfc3339(o.ts_ms),
            entry: o,
        };
        if let Err(e) = serde_json::to_writer(&mut inner.line, &line) {
            tracing::warn!(error = %e, "delivery log: cannot serialize an outcome");
            return;
        }
        inner.line.push(b'\n');
        match inner.file.write_all(&inner.line) {
            Ok(()) => {
                if inner.failing {
                    tracing::info!("delivery log: writing again");
                    inner.failing = false;
                }
            }
            Err(e) => {
                if !inner.failing {
                    tracing::warn!(error = %e, "delivery log: write failed; further failures are not logged until a write succeeds");
                    inner.failing = true;
                }
            }
        }
    }

    #[cfg(test)]
    fn is_failing(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|m| m.lock().unwrap_or_else(|p| p.into_inner()).failing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn outcomes(reply: &StoredReply) -> [LogEntry<'_>; 3] {
        let base = LogEntry {
            ts_ms: 1_776_153_909_000,
            queue_id: QueueId::from_u64(42 << 20),
            from: "news@example.org",
            rcpt: "a@example.net",
            action: Action::Delivered,
            reply: Some(reply),
            verdict: "accept",
            attempts: 1,
            next_attempt_ms: None,
        };
        [
            base,
            LogEntry {
                rcpt: "b@example.net",
                action: Action::Deferred,
                verdict: "throttle-rate",
                attempts: 2,
                next_attempt_ms: Some(1_776_153_969_000),
                ..base
            },
            LogEntry {
                rcpt: "c@example.net",
                action: Action::Suppressed,
                reply: None,
                verdict: "suppress",
                attempts: 0,
                ..base
            },
        ]
    }

    #[test]
    fn three_lines_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.jsonl");
        let reply = StoredReply {
            code: 250,
            enhanced: Some("2.0.0".into()),
            text: "OK \"queued\"\nas 1234".into(),
        };
        {
            let log = DeliveryLog::open(&path).unwrap();
            for o in &outcomes(&reply) {
                log.write(o);
            }
            assert!(!log.is_failing());
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(text.ends_with('\n'));
        let id = QueueId::from_u64(42 << 20).to_string();
        assert_eq!(lines[0]["queue_id"], id.as_str());
        assert_eq!(lines[0]["ts_ms"], 1_776_153_909_000u64);
        // A time a person can read, next to the machine's.
        assert_eq!(lines[0]["time"], "2026-04-14T08:05:09.000Z");
        assert!(text.starts_with("{\"time\":"), "{text}");
        assert_eq!(lines[0]["from"], "news@example.org");
        assert_eq!(lines[0]["rcpt"], "a@example.net");
        assert_eq!(lines[0]["action"], "delivered");
        assert_eq!(lines[0]["reply"]["code"], 250);
        assert_eq!(lines[0]["reply"]["enhanced"], "2.0.0");
        assert_eq!(lines[0]["reply"]["text"], "OK \"queued\"\nas 1234");
        assert_eq!(lines[0]["next_attempt_ms"], Value::Null);
        assert_eq!(lines[1]["action"], "deferred");
        assert_eq!(lines[1]["verdict"], "throttle-rate");
        assert_eq!(lines[1]["attempts"], 2);
        assert_eq!(lines[1]["next_attempt_ms"], 1_776_153_969_000u64);
        assert_eq!(lines[2]["action"], "suppressed");
        assert_eq!(lines[2]["reply"], Value::Null);

        // Reopening appends.
        let log = DeliveryLog::open(&path).unwrap();
        log.write(&outcomes(&reply)[2]);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);
    }

    #[test]
    fn every_action_has_its_lowercase_name() {
        let names = [
            (Action::Delivered, "delivered"),
            (Action::Deferred, "deferred"),
            (Action::Failed, "failed"),
            (Action::Expired, "expired"),
            (Action::Held, "held"),
            (Action::Resumed, "resumed"),
            (Action::Suppressed, "suppressed"),
        ];
        for (a, n) in names {
            assert_eq!(serde_json::to_value(a).unwrap(), n);
        }
    }

    #[test]
    fn missing_parent_is_an_error_and_disabled_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DeliveryLog::open(&dir.path().join("no/such/dir/log.jsonl")).is_err());
        let log = DeliveryLog::disabled();
        assert!(!log.is_enabled());
        let reply = StoredReply {
            code: 250,
            enhanced: None,
            text: String::new(),
        };
        log.write(&outcomes(&reply)[0]);
    }

    #[test]
    fn write_errors_do_not_panic_and_mark_the_log_failing() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let full = Path::new("/dev/full");
        if !full.exists() {
            eprintln!("skipped: no /dev/full");
            return;
        }
        let log = DeliveryLog::open(full).unwrap();
        let reply = StoredReply {
            code: 451,
            enhanced: Some("4.7.1".into()),
            text: "later".into(),
        };
        for o in &outcomes(&reply) {
            log.write(o);
        }
        assert!(log.is_failing());
    }

    /// Issue 8.6: the log lists every recipient: owner only, also an older, wider one.
    #[cfg(unix)]
    #[test]
    fn the_log_is_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("delivery.log");
        let mode = || std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        drop(DeliveryLog::open(&path).unwrap());
        assert_eq!(mode(), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(DeliveryLog::open(&path).unwrap());
        assert_eq!(mode(), 0o600);
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<DeliveryLog>();
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let log = std::sync::Arc::new(DeliveryLog::open(&path).unwrap());
        let long = "x".repeat(4000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let log = log.clone();
                let long = &long;
                s.spawn(move || {
                    let reply = StoredReply {
                        code: 550,
                        enhanced: Some("5.1.1".into()),
                        text: long.clone(),
                    };
                    for o in &outcomes(&reply) {
                        log.write(o);
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 12);
        for l in text.lines() {
            serde_json::from_str::<Value>(l).unwrap();
        }
    }
}
