//! Write-behind for the suppression store: [`WriteBehind`] wraps a durable
//! [`SuppressionStore`] and makes each `put` durable on a writer thread of its own, so
//! the feedback path — which runs on the async workers that answer RCPT — never waits
//! for a disk commit (redb fsyncs every commit).
//!
//! What it guarantees: writes are applied in the order they were made (the latest entry
//! of an address wins); a write that fails is kept and tried again (every second) until
//! it succeeds, never dropped; `put_all`, `remove` and `load_all` first wait until every
//! earlier write is durable, then run on the caller's thread (they are operator actions,
//! and must not be reordered with the writes before them); dropping the store writes
//! what is still pending before it returns. What it cannot do: a `kill -9` in the
//! moment between a reply and its commit loses that one write, exactly as if the reply
//! had arrived a moment later. It must never block `put`, and never hold a lock while
//! committing.

use crate::policy::suppression::{Entry, StoreError, SuppressionStore};
use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer waits before trying a failed commit again.
const RETRY: Duration = Duration::from_secs(1);

enum Op {
    Put(Entry),
    /// Commit everything before this, then answer (with the commit's result).
    Flush(mpsc::SyncSender<Result<(), StoreError>>),
}

/// A [`SuppressionStore`] whose `put` returns at once and is made durable by a writer
/// thread. See the module docs for the guarantees.
pub struct WriteBehind<S: SuppressionStore> {
    inner: Arc<S>,
    tx: Mutex<Option<Sender<Op>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<S: SuppressionStore> WriteBehind<S> {
    /// Starts the writer thread. If the thread cannot be started, every write is made on
    /// the caller's thread instead (slower, still durable).
    pub fn new(inner: S) -> Self {
        let inner = Arc::new(inner);
        let (tx, rx) = mpsc::channel();
        let store = inner.clone();
        let thread = std::thread::Builder::new()
            .name("suppression-writer".into())
            .spawn(move || writer(&*store, &rx));
        let (tx, thread) = match thread {
            Ok(t) => (Some(tx), Some(t)),
            Err(e) => {
                tracing::warn!(
                    "no suppression writer thread ({e}); writing on the caller's thread"
                );
                (None, None)
            }
        };
        Self {
            inner,
            tx: Mutex::new(tx),
            thread: Mutex::new(thread),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Waits until every write made so far is durable; `Err` if the last attempt to
    /// commit them failed (they stay queued and are tried again).
    pub fn flush(&self) -> Result<(), StoreError> {
        let (ack, done) = mpsc::sync_channel(1);
        if !self.send(Op::Flush(ack)) {
            return Ok(()); // no writer: every write was made in place
        }
        done.recv()
            .unwrap_or_else(|_| Err(StoreError("the suppression writer stopped".into())))
    }

    /// Hands `op` to the writer; false when there is none (then nothing was sent).
    fn send(&self, op: Op) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(op).is_ok(),
            None => false,
        }
    }
}

impl<S: SuppressionStore> SuppressionStore for WriteBehind<S> {
    fn load_all(&self) -> Result<Vec<Entry>, StoreError> {
        self.flush()?;
        self.inner.load_all()
    }

    /// Queued for the writer thread; returns at once.
    fn put(&self, entry: &Entry) -> Result<(), StoreError> {
        if self.send(Op::Put(entry.clone())) {
            return Ok(());
        }
        self.inner.put(entry)
    }

    fn put_all(&self, entries: &[Entry]) -> Result<(), StoreError> {
        self.flush()?;
        self.inner.put_all(entries)
    }

    fn remove(&self, address: &str) -> Result<bool, StoreError> {
        self.flush()?;
        self.inner.remove(address)
    }
}

impl<S: SuppressionStore> Drop for WriteBehind<S> {
    /// Closes the queue and waits for the writer to make the rest durable.
    fn drop(&mut self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The writer: takes whatever is queued, commits it in one transaction (the latest
/// entry per address), answers flushes, and keeps failed writes for the next try.
fn writer<S: SuppressionStore>(store: &S, rx: &Receiver<Op>) {
    let mut pending: HashMap<String, Entry> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut open = true;
    while open || !pending.is_empty() {
        // Wait for work; with writes pending after a failure, only until the retry.
        let first = if pending.is_empty() {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => break,
            }
        } else if open {
            match rx.recv_timeout(RETRY) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            }
        } else {
            None
        };
        let mut flushes = Vec::new();
        let mut next = first;
        loop {
            match next {
                Some(Op::Put(e)) => {
                    if !pending.contains_key(&e.address) {
                        order.push(e.address.clone());
                    }
                    pending.insert(e.address.clone(), e);
                }
                Some(Op::Flush(ack)) => flushes.push(ack),
                None => break,
            }
            next = match rx.try_recv() {
                Ok(op) => Some(op),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    None
                }
            };
        }
        let result = if pending.is_empty() {
            Ok(())
        } else {
            let batch: Vec<Entry> = order
                .iter()
                .filter_map(|a| pending.get(a).cloned())
                .collect();
            match store.put_all(&batch) {
                Ok(()) => {
                    pending.clear();
                    order.clear();
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(
                        entries = batch.len(),
                        "cannot record suppression ({e}); kept, trying again"
                    );
                    if !open {
                        // Shutting down and the store refuses: say what is lost.
                        tracing::error!(
                            entries = batch.len(),
                            "suppression entries not written at shutdown: {e}"
                        );
                        return;
                    }
                    Err(e)
                }
            }
        };
        for ack in flushes {
            let _ = ack.send(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| StoreError(e.0.clone())),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::suppression::MemoryStore;
    use crate::smtp::{EnhancedCode, Reply};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn entry(addr: &str, count: u32) -> Entry {
        Entry {
            address: addr.into(),
            code: 550,
            enhanced: Some("5.1.1".into()),
            text: "no such user".into(),
            first_seen: 1,
            last_seen: 1,
            count,
            source: crate::policy::suppression::Source::Upstream,
            suppressed: true,
            soft_times: Vec::new(),
            soft_marks: Vec::new(),
        }
    }

    /// Fails the first `fail` commits, then stores.
    struct Flaky {
        fail: AtomicUsize,
        mem: MemoryStore,
    }

    impl SuppressionStore for Flaky {
        fn load_all(&self) -> Result<Vec<Entry>, StoreError> {
            self.mem.load_all()
        }
        fn put(&self, e: &Entry) -> Result<(), StoreError> {
            self.put_all(std::slice::from_ref(e))
        }
        fn put_all(&self, e: &[Entry]) -> Result<(), StoreError> {
            if self
                .fail
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StoreError("disk full".into()));
            }
            self.mem.put_all(e)
        }
        fn remove(&self, a: &str) -> Result<bool, StoreError> {
            self.mem.remove(a)
        }
    }

    #[test]
    fn writes_arrive_in_order_and_remove_comes_after_them() {
        let w = WriteBehind::new(MemoryStore::default());
        for n in 1..=50 {
            w.put(&entry("a@b", n)).unwrap();
        }
        w.put(&entry("c@d", 1)).unwrap();
        assert!(w.remove("c@d").unwrap(), "the earlier put is durable first");
        let all = w.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].count, 50, "the latest write wins");
    }

    #[test]
    fn a_failed_write_is_kept_and_retried_not_lost() {
        let w = WriteBehind::new(Flaky {
            fail: AtomicUsize::new(1),
            mem: MemoryStore::default(),
        });
        w.put(&entry("a@b", 1)).unwrap();
        // The first commit fails: the write stays queued and a later flush (each one
        // makes the writer try again, as does the retry timer) finds it durable.
        let mut flushes = Vec::new();
        for _ in 0..20 {
            let r = w.flush();
            let ok = r.is_ok();
            flushes.push(r);
            if ok {
                break;
            }
        }
        assert!(flushes.last().is_some_and(|r| r.is_ok()), "{flushes:?}");
        assert_eq!(w.inner().fail.load(Ordering::Acquire), 0, "a commit failed");
        assert_eq!(w.inner().mem.load_all().unwrap().len(), 1);
    }

    #[test]
    fn drop_writes_what_is_pending() {
        let mem = Arc::new(MemoryStore::default());
        {
            let w = WriteBehind::new(mem.clone());
            for i in 0..100 {
                w.put(&entry(&format!("u{i}@b"), 1)).unwrap();
            }
        }
        assert_eq!(mem.load_all().unwrap().len(), 100);
    }

    #[test]
    fn suppressions_see_a_write_at_once_while_it_is_made_durable_elsewhere() {
        use crate::policy::suppression::{SoftPolicy, Suppressions};
        let s = Suppressions::open(
            WriteBehind::new(MemoryStore::default()),
            SoftPolicy::default(),
        )
        .unwrap();
        let r = Reply::new(550, EnhancedCode::new(5, 1, 1), "no such user");
        s.record_hard("x@y", &r, 1).unwrap();
        assert!(s.is_suppressed("x@y"));
    }
}
