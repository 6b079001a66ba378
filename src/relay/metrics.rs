//! What the relay counts for `/metrics`, the API and the dashboard beyond the counters
//! its parts keep themselves (delivery outcomes, the controller's figures): messages
//! received and their sizes, every provider reply by code class and verdict, the
//! provider's reply latencies, operator pauses, reloads, and the provider's last
//! refusals (4xx/5xx) with their verdicts — what the dashboard shows as the provider's
//! words; the 2xx in between would push them out within a few messages.
//!
//! Fed by two thin wrappers ([`super::counting`]): one around the upstream observer (every
//! reply passes it once, already classified) and one around the inbound relay.
//!
//! It must never record an address or a message text as a metric label (labels are
//! fixed words: code class, verdict, kind), and never block the reply path for longer
//! than one short lock.

use crate::policy::verdict::{PauseScope, Verdict};
use crate::smtp::Reply;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// How many provider refusals (4xx/5xx) [`RelayMetrics::recent_replies`] keeps.
pub const RECENT_REPLIES: usize = 100;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplyLabels {
    /// `2xx` ... `5xx`.
    pub class: &'static str,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

type HistogramFamily = Family<KindLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 ms .. ~82 s
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// A provider reply as the API and the dashboard show it.
#[derive(Debug, Clone, Serialize)]
pub struct SeenReply {
    /// Unix milliseconds.
    pub at: u64,
    pub phase: &'static str,
    pub code: u16,
    pub text: String,
    pub verdict: &'static str,
}

/// The relay's own counters (cheap to share: clones of prometheus-client metrics share
/// their values).
pub struct RelayMetrics {
    /// Messages the mailer handed over and the relay accepted (queue: durable;
    /// passthrough: the provider said 250).
    pub received: Counter,
    /// Sizes of the accepted messages, in bytes.
    pub message_size: Histogram,
    /// Every provider reply, by code class and verdict.
    pub replies: Family<ReplyLabels, Counter>,
    /// Time to 354 and to the final reply after the message, in seconds.
    pub reply_latency: HistogramFamily,
    /// Provider replies that throttled (connections or rate): the dashboard's refusals.
    pub throttles: Counter,
    /// Operator pauses (`queue pause`, the API, the dashboard).
    pub operator_pauses: Counter,
    /// Reloads, by outcome (`applied`, `refused`).
    pub reloads: Family<OutcomeLabel, Counter>,
    recent: Mutex<VecDeque<SeenReply>>,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self {
            received: Counter::default(),
            // 1 KiB .. 64 MiB
            message_size: Histogram::new(exponential_buckets(1024.0, 4.0, 9)),
            replies: Family::default(),
            reply_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            throttles: Counter::default(),
            operator_pauses: Counter::default(),
            reloads: Family::default(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_REPLIES)),
        }
    }
}

impl RelayMetrics {
    /// Counts a classified provider reply; keeps it among the recent ones when it is a
    /// refusal (4xx/5xx).
    pub fn reply(&self, phase: &'static str, reply: &Reply, verdict: &Verdict, at: u64) {
        if matches!(verdict, Verdict::Throttle(_)) {
            self.throttles.inc();
        }
        let verdict = verdict.name();
        let keep = !reply.is_positive();
        self.replies
            .get_or_create(&ReplyLabels {
                class: class_name(reply.code),
                verdict,
            })
            .inc();
        if !keep {
            return;
        }
        let seen = SeenReply {
            at,
            phase,
            code: reply.code,
            text: reply.to_string(),
            verdict,
        };
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT_REPLIES {
                recent.pop_front();
            }
            recent.push_back(seen);
        }
    }

    /// The provider's last refusals, oldest first.
    pub fn recent_replies(&self) -> Vec<SeenReply> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn class_name(code: u16) -> &'static str {
    match code / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

/// A pause's reason as one word.
pub fn pause_reason(scope: PauseScope) -> &'static str {
    match scope {
        PauseScope::Auth => "auth",
        PauseScope::Quota => "quota",
        PauseScope::Policy => "policy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::verdict::ThrottleKind;

    #[test]
    fn counts_every_reply_and_keeps_the_last_refusals() {
        let m = RelayMetrics::default();
        let ok = Reply::plain(250, "ok");
        let busy = Reply::plain(421, "4.7.0 Too many connections");
        m.reply("rcpt", &ok, &Verdict::Accept, 1);
        m.reply(
            "greeting",
            &busy,
            &Verdict::Throttle(ThrottleKind::Connections),
            2,
        );
        for i in 0..RECENT_REPLIES as u64 + 5 {
            m.reply("data-end", &ok, &Verdict::Accept, 10 + i);
        }
        let recent = m.recent_replies();
        assert_eq!(recent.len(), 1, "2xx are counted, not kept: {recent:?}");
        assert_eq!(
            (recent[0].code, recent[0].verdict),
            (421, "throttle-connections")
        );
        assert_eq!(m.throttles.get(), 1);
        let accepted = m
            .replies
            .get_or_create(&ReplyLabels {
                class: "2xx",
                verdict: "accept",
            })
            .get();
        assert_eq!(accepted, RECENT_REPLIES as u64 + 6);
        for i in 0..RECENT_REPLIES as u64 + 5 {
            m.reply("rcpt", &busy, &Verdict::Defer { hint: None }, 100 + i);
        }
        assert_eq!(m.recent_replies().len(), RECENT_REPLIES, "bounded");
    }
}
