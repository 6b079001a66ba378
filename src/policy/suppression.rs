//! The suppression list: addresses the provider rejected for good, so they are never
//! sent to again. Pure logic over a [`SuppressionStore`] trait (the durable redb store
//! lives in `crate::store`); an in-memory index answers the per-RCPT lookup without
//! touching the disk.
//!
//! Keyed by the lower-cased address. Hard failures (5.1.x, 5.2.1, "user unknown")
//! suppress at once; soft ones (mailbox full) only after `threshold` occurrences within
//! `window`, where one message counts at most once a day (three quick retries of one
//! message are one occurrence, not three). This module must never suppress on its own
//! judgement of a reply: it is told by the classifier's verdict, and it never forgets an
//! entry except by `remove`.
//!
//! The index is updated at once; the store is told in the same order, under the same
//! lock, and may make the write durable off the caller's thread (`store::write_behind`):
//! the feedback path runs on the async workers that answer RCPT.

use crate::smtp::Reply;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;

/// Where an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A reply from the provider.
    Upstream,
    /// Added by an operator (`mailvalve suppress add`).
    Manual,
    /// Imported from CSV.
    Import,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Manual => "manual",
            Source::Import => "import",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "upstream" => Some(Source::Upstream),
            "manual" => Some(Source::Manual),
            "import" => Some(Source::Import),
            _ => None,
        }
    }
}

/// One address and why it is (or may become) suppressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Lower-cased address.
    pub address: String,
    /// The reply that caused it (code, enhanced code, text).
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
    pub count: u32,
    pub source: Source,
    /// False while a soft failure is being counted but has not reached the threshold.
    pub suppressed: bool,
    /// Times (unix seconds) of recent soft failures, newest last, at most `threshold`.
    #[serde(default)]
    pub soft_times: Vec<u64>,
    /// The messages whose soft failure was counted in the last day (at most
    /// [`SOFT_MARKS`]): another soft failure of one of them within a day of its mark is
    /// not counted again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub soft_marks: Vec<SoftMark>,
}

/// A message whose soft failure was counted, and when (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftMark {
    pub message: String,
    pub at: u64,
}

/// One message counts toward the soft threshold at most once in this long.
pub const SOFT_ONCE_PER: u64 = 24 * 3600;
/// Most messages remembered per address for [`SOFT_ONCE_PER`] (the oldest are
/// forgotten first; an address with more soft failures a day is suppressed long before).
pub const SOFT_MARKS: usize = 32;

impl Entry {
    /// The local reply to a RCPT for this address: `550 5.1.1` with the original reason.
    pub fn rcpt_reply(&self) -> Reply {
        let mut why = format!("{}", self.code);
        if let Some(e) = &self.enhanced {
            why.push(' ');
            why.push_str(e);
        }
        if !self.text.is_empty() {
            why.push(' ');
            why.push_str(&self.text);
        }
        Reply::new(
            550,
            crate::smtp::EnhancedCode::new(5, 1, 1),
            format!(
                "<{}> is suppressed by mailvalve (source: {}; provider said: {})",
                self.address,
                self.source.as_str(),
                why
            ),
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("suppression store: {0}")]
pub struct StoreError(pub String);

/// Durable storage for entries. `put_all` and `remove` must be durable (crash-safe)
/// before they return, `put_all` atomic, and both ordered after every earlier `put`.
/// `put` may return before its write is durable (the list calls it on the feedback
/// path, under its index lock), but must then make it durable in order and never drop
/// it (see `store::write_behind`).
pub trait SuppressionStore: Send + Sync + 'static {
    fn load_all(&self) -> Result<Vec<Entry>, StoreError>;
    fn put(&self, entry: &Entry) -> Result<(), StoreError>;
    fn put_all(&self, entries: &[Entry]) -> Result<(), StoreError>;
    fn remove(&self, address: &str) -> Result<bool, StoreError>;
}

/// Soft failures (mailbox full): suppress after `threshold` within `window_secs`.
#[derive(Debug, Clone, Copy)]
pub struct SoftPolicy {
    pub threshold: u32,
    pub window_secs: u64,
}

impl Default for SoftPolicy {
    fn default() -> Self {
        Self {
            threshold: 3,
            window_secs: 30 * 24 * 3600,
        }
    }
}

pub fn normalize(address: &str) -> String {
    address.trim().trim_matches(['<', '>']).to_lowercase()
}

/// The list: an in-memory index over a durable store.
pub struct Suppressions<S: SuppressionStore> {
    store: S,
    soft: SoftPolicy,
    index: RwLock<HashMap<String, Entry>>,
}

impl<S: SuppressionStore> Suppressions<S> {
    pub fn open(store: S, soft: SoftPolicy) -> Result<Self, StoreError> {
        let index = store
            .load_all()?
            .into_iter()
            .map(|e| (e.address.clone(), e))
            .collect();
        Ok(Self {
            store,
            soft,
            index: RwLock::new(index),
        })
    }

    /// The entry if `address` is suppressed (the hot path: one hash lookup).
    pub fn lookup(&self, address: &str) -> Option<Entry> {
        let key = normalize(address);
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        idx.get(&key).filter(|e| e.suppressed).cloned()
    }

    pub fn is_suppressed(&self, address: &str) -> bool {
        self.lookup(address).is_some()
    }

    /// A permanent failure of the address: suppressed from now on.
    pub fn record_hard(&self, address: &str, reply: &Reply, now: u64) -> Result<Entry, StoreError> {
        self.update(address, reply, now, Source::Upstream, |e, _| {
            e.suppressed = true;
            true
        })
    }

    /// A soft failure (mailbox full): counted; suppressed once `threshold` happened
    /// within the window. Returns the entry; `entry.suppressed` says which.
    pub fn record_soft(&self, address: &str, reply: &Reply, now: u64) -> Result<Entry, StoreError> {
        self.record_soft_for(address, reply, now, None)
    }

    /// [`Suppressions::record_soft`] for a reply about `message` (what identifies it:
    /// the queue's digest of the message, passthrough's of the envelope). A message
    /// already counted for this address within [`SOFT_ONCE_PER`] is not counted again
    /// (the entry's reply and `last_seen` are still updated). `None`: always counted.
    pub fn record_soft_for(
        &self,
        address: &str,
        reply: &Reply,
        now: u64,
        message: Option<&str>,
    ) -> Result<Entry, StoreError> {
        let soft = self.soft;
        self.update(address, reply, now, Source::Upstream, move |e, now| {
            if let Some(m) = message {
                e.soft_marks
                    .retain(|k| now.saturating_sub(k.at) < SOFT_ONCE_PER);
                if e.soft_marks.iter().any(|k| k.message == m) {
                    // Counted already today: a retry of the same message.
                    return false;
                }
                if e.soft_marks.len() >= SOFT_MARKS {
                    e.soft_marks.remove(0);
                }
                e.soft_marks.push(SoftMark {
                    message: m.to_string(),
                    at: now,
                });
            }
            e.soft_times
                .retain(|&t| now.saturating_sub(t) <= soft.window_secs);
            e.soft_times.push(now);
            let keep = soft.threshold.max(1) as usize;
            if e.soft_times.len() > keep {
                let drop = e.soft_times.len() - keep;
                e.soft_times.drain(..drop);
            }
            if e.soft_times.len() >= keep {
                e.suppressed = true;
            }
            true
        })
    }

    fn update(
        &self,
        address: &str,
        reply: &Reply,
        now: u64,
        source: Source,
        apply: impl FnOnce(&mut Entry, u64) -> bool,
    ) -> Result<Entry, StoreError> {
        let key = normalize(address);
        let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
        let mut entry = idx.get(&key).cloned().unwrap_or_else(|| Entry {
            address: key.clone(),
            code: reply.code,
            enhanced: None,
            text: String::new(),
            first_seen: now,
            last_seen: now,
            count: 0,
            source,
            suppressed: false,
            soft_times: Vec::new(),
            soft_marks: Vec::new(),
        });
        entry.code = reply.code;
        entry.enhanced = reply.enhanced.map(|e| e.to_string());
        entry.text = reply.text();
        entry.last_seen = now;
        // `apply` says whether this occurrence counts (a soft failure of a message
        // already counted today does not).
        if apply(&mut entry, now) {
            entry.count = entry.count.saturating_add(1);
        }
        self.store.put(&entry)?;
        idx.insert(key, entry.clone());
        Ok(entry)
    }

    /// Adds entries given by an operator or an import, all or nothing.
    pub fn add_all(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
        self.store.put_all(&entries)?;
        for e in entries {
            idx.insert(e.address.clone(), e);
        }
        Ok(())
    }

    pub fn remove(&self, address: &str) -> Result<bool, StoreError> {
        let key = normalize(address);
        let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
        let removed = self.store.remove(&key)?;
        Ok(idx.remove(&key).is_some() || removed)
    }

    /// All entries (suppressed and counting), sorted by address.
    pub fn list(&self) -> Vec<Entry> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Entry> = idx.values().cloned().collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }
}

/// What the feedback path needs of the list: record a reply against an address.
/// Object-safe, so the upstream side need not know the store type.
pub trait Recorder: Send + Sync + 'static {
    /// Permanent failure of the address.
    fn hard(&self, address: &str, reply: &Reply, now: u64) -> Result<(), StoreError>;
    /// Mailbox-full style failure about `message` (when known: counted at most once a
    /// day per message); `Ok(true)` when this one made the address suppressed.
    fn soft(
        &self,
        address: &str,
        reply: &Reply,
        now: u64,
        message: Option<&str>,
    ) -> Result<bool, StoreError>;
}

impl<S: SuppressionStore> Recorder for Suppressions<S> {
    fn hard(&self, address: &str, reply: &Reply, now: u64) -> Result<(), StoreError> {
        self.record_hard(address, reply, now).map(|_| ())
    }
    fn soft(
        &self,
        address: &str,
        reply: &Reply,
        now: u64,
        message: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.record_soft_for(address, reply, now, message)
            .map(|e| e.suppressed)
    }
}

/// A store that keeps nothing on disk: for tests and the simulation.
#[derive(Default)]
pub struct MemoryStore(RwLock<HashMap<String, Entry>>);

impl SuppressionStore for MemoryStore {
    fn load_all(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect())
    }
    fn put(&self, entry: &Entry) -> Result<(), StoreError> {
        self.put_all(std::slice::from_ref(entry))
    }
    fn put_all(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        for e in entries {
            m.insert(e.address.clone(), e.clone());
        }
        Ok(())
    }
    fn remove(&self, address: &str) -> Result<bool, StoreError> {
        Ok(self
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address)
            .is_some())
    }
}

/// Lets a caller keep a handle on the store (tests reopen the list over the same store).
impl<T: SuppressionStore> SuppressionStore for std::sync::Arc<T> {
    fn load_all(&self) -> Result<Vec<Entry>, StoreError> {
        (**self).load_all()
    }
    fn put(&self, entry: &Entry) -> Result<(), StoreError> {
        (**self).put(entry)
    }
    fn put_all(&self, entries: &[Entry]) -> Result<(), StoreError> {
        (**self).put_all(entries)
    }
    fn remove(&self, address: &str) -> Result<bool, StoreError> {
        (**self).remove(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::EnhancedCode;

    fn list() -> Suppressions<MemoryStore> {
        Suppressions::open(
            MemoryStore::default(),
            SoftPolicy {
                threshold: 3,
                window_secs: 100,
            },
        )
        .unwrap()
    }

    #[test]
    fn hard_failure_suppresses_case_insensitively() {
        let s = list();
        let r = Reply::new(550, EnhancedCode::new(5, 1, 1), "user unknown");
        s.record_hard("Bob@Example.ORG", &r, 10).unwrap();
        let e = s.lookup("<bob@example.org>").unwrap();
        assert_eq!(e.code, 550);
        assert_eq!(e.enhanced.as_deref(), Some("5.1.1"));
        let reply = e.rcpt_reply();
        assert_eq!(
            (reply.code, reply.enhanced),
            (550, Some(EnhancedCode::new(5, 1, 1)))
        );
        assert!(reply.text().contains("user unknown"));
    }

    #[test]
    fn soft_failures_need_n_within_window() {
        let s = list();
        let r = Reply::new(452, EnhancedCode::new(4, 2, 2), "mailbox full");
        assert!(!s.record_soft("a@b", &r, 0).unwrap().suppressed);
        assert!(!s.record_soft("a@b", &r, 50).unwrap().suppressed);
        // At 120 the first one (at 0) has left the 100 s window: still only two in it.
        assert!(!s.record_soft("a@b", &r, 120).unwrap().suppressed);
        assert!(!s.is_suppressed("a@b"));
        assert!(s.record_soft("a@b", &r, 130).unwrap().suppressed);
        assert!(s.is_suppressed("a@b"));
        assert_eq!(s.lookup("a@b").unwrap().count, 4);
    }

    #[test]
    fn one_message_counts_once_a_day() {
        let s = list();
        let r = Reply::new(452, EnhancedCode::new(4, 2, 2), "mailbox full");
        // Three quick retries of one message: one occurrence.
        for t in [0, 5, 10] {
            assert!(
                !s.record_soft_for("a@b", &r, t, Some("m1"))
                    .unwrap()
                    .suppressed
            );
        }
        let e = s.list().into_iter().find(|e| e.address == "a@b").unwrap();
        assert_eq!((e.soft_times.len(), e.count, e.last_seen), (1, 1, 10));
        // Two other messages the same day: three occurrences, suppressed.
        assert!(
            !s.record_soft_for("a@b", &r, 20, Some("m2"))
                .unwrap()
                .suppressed
        );
        assert!(
            s.record_soft_for("a@b", &r, 30, Some("m3"))
                .unwrap()
                .suppressed
        );
        // Another address is counted on its own.
        assert!(
            !s.record_soft_for("c@d", &r, 30, Some("m1"))
                .unwrap()
                .suppressed
        );
    }

    #[test]
    fn the_same_message_counts_again_the_next_day() {
        let s = Suppressions::open(
            MemoryStore::default(),
            SoftPolicy {
                threshold: 3,
                window_secs: 30 * 24 * 3600,
            },
        )
        .unwrap();
        let r = Reply::new(452, EnhancedCode::new(4, 2, 2), "mailbox full");
        let day = SOFT_ONCE_PER;
        assert!(
            !s.record_soft_for("a@b", &r, 0, Some("m"))
                .unwrap()
                .suppressed
        );
        assert!(
            !s.record_soft_for("a@b", &r, day - 1, Some("m"))
                .unwrap()
                .suppressed
        );
        assert!(
            !s.record_soft_for("a@b", &r, day, Some("m"))
                .unwrap()
                .suppressed
        );
        assert!(
            s.record_soft_for("a@b", &r, 2 * day, Some("m"))
                .unwrap()
                .suppressed
        );
    }

    #[test]
    fn survives_reopen_and_remove() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let r = Reply::new(550, EnhancedCode::new(5, 1, 1), "no");
        {
            let s = Suppressions::open(store.clone(), SoftPolicy::default()).unwrap();
            s.record_hard("x@y", &r, 1).unwrap();
        }
        let s = Suppressions::open(store, SoftPolicy::default()).unwrap();
        assert!(s.is_suppressed("x@y"));
        assert!(s.remove("X@Y").unwrap());
        assert!(!s.is_suppressed("x@y"));
    }
}
