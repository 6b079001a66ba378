//! The in-memory index of the spool: for each message its id, arrival time and, per
//! recipient, either "pending (attempts, next attempt)" or "final". No addresses, no
//! replies, no bodies: a few dozen bytes per message, so memory stays flat however long
//! the queue gets. A `BTreeSet` ordered by the earliest pending attempt answers "what is
//! due" without scanning the whole queue.
//!
//! Only the spool's writer changes the index, and only after the change is committed to
//! disk; so the index never shows a state that a crash could take back.

use std::collections::{BTreeSet, HashMap};

use super::record::{RcptState, Record};
use super::QueueId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Pending { next_attempt: u64 },
    Final,
}

#[derive(Debug)]
struct Entry {
    /// Arrival on a clock that stands still while delivery is paused: the arrival time
    /// less the spool's paused time before it (see `Message::age_ms`).
    received: u64,
    rcpts: Vec<Slot>,
    /// The key under which the entry sits in `Index::due`: its earliest pending attempt.
    due_key: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    msgs: HashMap<QueueId, Entry>,
    due: BTreeSet<(u64, QueueId)>,
}

impl Index {
    /// Adds or replaces the entry for `id` from its stored record.
    pub(crate) fn set(&mut self, id: QueueId, rec: &Record) {
        self.remove(id);
        let rcpts: Vec<Slot> = rec
            .rcpts
            .iter()
            .map(|r| match r.state {
                RcptState::Pending { next_attempt, .. } => Slot::Pending { next_attempt },
                _ => Slot::Final,
            })
            .collect();
        let due_key = rcpts
            .iter()
            .filter_map(|s| match s {
                Slot::Pending { next_attempt } => Some(*next_attempt),
                Slot::Final => None,
            })
            .min();
        if let Some(k) = due_key {
            self.due.insert((k, id));
        }
        self.msgs.insert(
            id,
            Entry {
                received: rec.received.saturating_sub(rec.paused_at_arrival),
                rcpts,
                due_key,
            },
        );
    }

    pub(crate) fn remove(&mut self, id: QueueId) -> bool {
        match self.msgs.remove(&id) {
            Some(e) => {
                if let Some(k) = e.due_key {
                    self.due.remove(&(k, id));
                }
                true
            }
            None => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Messages with at least one recipient due at `now`, earliest due first, at most
    /// `limit`; for each the indices of its due recipients.
    pub(crate) fn due(&self, now: u64, limit: usize) -> Vec<(QueueId, Vec<usize>)> {
        self.due
            .range(..=(now, QueueId::from_u64(u64::MAX)))
            .take(limit)
            .filter_map(|&(_, id)| {
                let e = self.msgs.get(&id)?;
                let idx = e
                    .rcpts
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| matches!(s, Slot::Pending { next_attempt } if *next_attempt <= now))
                    .map(|(i, _)| i)
                    .collect();
                Some((id, idx))
            })
            .collect()
    }

    /// The earliest pending attempt in the whole spool.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.due.first().map(|&(t, _)| t)
    }

    /// Ids of messages that still have a pending recipient.
    pub(crate) fn pending_ids(&self) -> Vec<QueueId> {
        self.due.iter().map(|&(_, id)| id).collect()
    }

    /// Messages accepted before `cutoff` (unix ms, on the clock that stands still while
    /// paused) that still have a pending recipient.
    pub(crate) fn received_before(&self, cutoff: u64) -> Vec<QueueId> {
        let mut v: Vec<QueueId> = self
            .due
            .iter()
            .map(|&(_, id)| id)
            .filter(|id| self.msgs.get(id).is_some_and(|e| e.received < cutoff))
            .collect();
        v.sort();
        v
    }

    /// (messages, pending recipients)
    pub(crate) fn counts(&self) -> (usize, usize) {
        let pending = self
            .msgs
            .values()
            .map(|e| {
                e.rcpts
                    .iter()
                    .filter(|s| matches!(s, Slot::Pending { .. }))
                    .count()
            })
            .sum();
        (self.msgs.len(), pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Envelope;

    fn rec(states: &[Option<u64>]) -> Record {
        let rcpts: Vec<String> = (0..states.len()).map(|i| format!("r{i}@x")).collect();
        let mut r = Record::new(&Envelope::default(), &rcpts, 100, 1, 0);
        for (r, s) in r.rcpts.iter_mut().zip(states) {
            r.state = match s {
                Some(t) => RcptState::Pending {
                    attempts: 1,
                    next_attempt: *t,
                    last_reply: None,
                },
                None => RcptState::Failed {
                    reply: super::super::record::StoredReply {
                        code: 550,
                        enhanced: None,
                        text: String::new(),
                    },
                },
            };
        }
        r
    }

    #[test]
    fn due_orders_by_earliest_and_lists_only_due_recipients() {
        let mut ix = Index::default();
        let (a, b, c) = (
            QueueId::from_u64(1),
            QueueId::from_u64(2),
            QueueId::from_u64(3),
        );
        ix.set(a, &rec(&[Some(50), Some(10), None]));
        ix.set(b, &rec(&[Some(5)]));
        ix.set(c, &rec(&[None]));
        assert_eq!(ix.next_due(), Some(5));
        assert_eq!(ix.due(20, 10), vec![(b, vec![0]), (a, vec![1])]);
        assert_eq!(ix.due(20, 1), vec![(b, vec![0])]);
        assert_eq!(ix.due(4, 10), vec![]);
        // Replacing an entry moves its due key.
        ix.set(b, &rec(&[Some(100)]));
        assert_eq!(ix.due(60, 10), vec![(a, vec![0, 1])]);
        assert_eq!(ix.counts(), (3, 3));
        assert_eq!(ix.received_before(101), vec![a, b]);
        assert!(ix.remove(a));
        assert!(!ix.remove(a));
        assert_eq!(ix.next_due(), Some(100));
        assert_eq!(ix.pending_ids(), vec![b]);
    }
}
