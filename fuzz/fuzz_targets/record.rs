//! Decoding what the spool and the stores keep on disk, as read back after a restart:
//! a spool record (`queue::record::decode`; the first input byte 0), the quota ledger
//! (`quota.json`; 1) and a suppression entry (the redb value; 2). Bytes that do not
//! decode are an error, never a panic; what decodes is shown to the operator
//! (`mailvalve queue show`), turned into a bounce report, re-exported as CSV and
//! imported again — none of which may panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvalve::policy::suppression::Entry;
use mailvalve::queue::control::show;
use mailvalve::queue::dsn::{self, DsnInput, FailedRcpt};
use mailvalve::queue::quota::Ledger;
use mailvalve::queue::{record, QueueId, RcptState};
use mailvalve::store::suppression_csv;
use std::time::{Duration, UNIX_EPOCH};

#[path = "common.rs"]
mod common;

const NOW_MS: u64 = 1_760_000_000_000;

fn spool_record(bytes: &[u8]) {
    let Ok(m) = record::decode(QueueId::from_u64(42), bytes) else {
        return;
    };
    let _ = m.is_complete();
    let _ = show(&m, NOW_MS);
    let failed: Vec<FailedRcpt> = m
        .rcpts
        .iter()
        .filter_map(|r| {
            let (reply, attempts, expired) = match &r.state {
                RcptState::Failed { reply } => (reply, 1, false),
                RcptState::Pending {
                    attempts,
                    last_reply: Some(reply),
                    ..
                } => (reply, *attempts, true),
                _ => return None,
            };
            let _ = reply.to_string();
            Some(FailedRcpt {
                address: &r.address,
                reply,
                attempts,
                last_attempt_ms: m.received,
                expired,
            })
        })
        .collect();
    if failed.is_empty() {
        return;
    }
    let report = dsn::build(&DsnInput {
        reporting_mta: "mailvalve.example",
        queue_id: m.id,
        envelope_from: &m.envelope.from,
        arrival_ms: m.received,
        now_ms: NOW_MS.max(m.received),
        original: b"Subject: spring news\r\n\r\nHello\r\n",
        failed: &failed,
    });
    common::crlf_only(&report, "bounce report");
    for line in report.split(|&b| b == b'\n') {
        assert!(
            line.len() <= dsn::MAX_LINE + 1,
            "line of {} octets",
            line.len()
        );
    }
}

fn ledger(bytes: &[u8]) {
    let Ok(mut l) = serde_json::from_slice::<Ledger>(bytes) else {
        return;
    };
    let (h, d) = (l.last_hour(NOW_MS), l.last_day(NOW_MS));
    assert!(h <= d);
    l.add(NOW_MS, 3);
    let _ = (l.last_hour(u64::MAX), l.last_day(0));
}

fn suppression_entry(bytes: &[u8]) {
    let Ok(e) = serde_json::from_slice::<Entry>(bytes) else {
        return;
    };
    common::reply_wire(&e.rcpt_reply());
    let mut csv = Vec::new();
    suppression_csv::export(std::slice::from_ref(&e), &mut csv).expect("export to memory");
    // An entry that did not come through an import may not survive one (a stored address
    // without '@', say), but the import must answer either way.
    let _ = suppression_csv::import(csv.as_slice(), UNIX_EPOCH + Duration::from_secs(1));
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => spool_record(bytes),
        1 => ledger(bytes),
        _ => suppression_entry(bytes),
    }
});
