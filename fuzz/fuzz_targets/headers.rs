//! Header parsing of arbitrary messages, as queue mode does for each failed message:
//! `dsn::header_block`, `dsn::is_bounce`, `webhook::campaign_uuid` (listmonk), and the
//! bounce report built around the original (`dsn::build`). The report must keep its
//! promises whatever the original holds: CRLF line ends only, no line over 998 octets,
//! and a MIME boundary that occurs nowhere but in its own delimiter lines.
//! Input: the message; its first line also serves as a failed recipient's address and
//! its second as the provider's reply text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvalve::queue::dsn::{self, DsnInput, FailedRcpt, MAX_LINE};
use mailvalve::queue::{webhook, QueueId, StoredReply};

#[path = "common.rs"]
mod common;

/// Checks a built report: line ends, line lengths, and the MIME structure.
pub fn check_report(report: &[u8]) {
    common::crlf_only(report, "bounce report");
    for line in report.split(|&b| b == b'\n') {
        assert!(line.len() <= MAX_LINE + 1, "line of {} octets", line.len());
    }
    let text = String::from_utf8_lossy(report);
    let b = text
        .split("boundary=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a boundary");
    let delimiter = format!("--{b}");
    let lines: Vec<&str> = text.split("\r\n").collect();
    let opening = lines.iter().filter(|l| **l == delimiter).count();
    let closing = lines
        .iter()
        .filter(|l| **l == format!("{delimiter}--"))
        .count();
    assert_eq!((opening, closing), (3, 1), "MIME structure");
    assert_eq!(text.matches(b).count(), 5, "boundary occurs elsewhere");
}

fuzz_target!(|data: &[u8]| {
    let block = dsn::header_block(data);
    assert!(data.starts_with(block));
    let bounce = dsn::is_bounce("news@example.org", data);
    assert!(dsn::is_bounce("", data) && dsn::is_bounce("<>", data));
    if let Some(uuid) = webhook::campaign_uuid(block) {
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid, uuid.to_ascii_lowercase());
    }
    let campaign = webhook::campaign_uuid(block).unwrap_or_default();
    let payload = webhook::payload_for_campaign(
        "a@example.net",
        &campaign,
        !bounce,
        &serde_json::Value::Null,
    );
    let _ = serde_json::to_string(&payload);

    let mut lines = data.split(|&b| b == b'\n');
    let address = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let text = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let r1 = StoredReply {
        code: 550,
        enhanced: Some("5.1.1".into()),
        text: "user unknown".into(),
    };
    let r2 = StoredReply {
        code: 452,
        enhanced: Some(text.chars().take(12).collect()),
        text,
    };
    let failed = [
        FailedRcpt {
            address: "reader@example.net",
            reply: &r1,
            attempts: 1,
            last_attempt_ms: 1_760_000_000_000,
            expired: false,
        },
        FailedRcpt {
            address: &address,
            reply: &r2,
            attempts: 7,
            last_attempt_ms: 1_760_300_000_000,
            expired: true,
        },
    ];
    let report = dsn::build(&DsnInput {
        reporting_mta: "mailvalve.example",
        queue_id: QueueId::from_u64(0x1234_5678_9abc),
        envelope_from: "news@example.org",
        arrival_ms: 1_760_000_000_000,
        now_ms: 1_760_400_000_000,
        original: data,
        failed: &failed,
    });
    check_report(&report);
    let _ = dsn::needs_8bitmime(&report);
    // A report is itself a bounce: never bounced again.
    assert!(dsn::is_bounce("news@example.org", &report));
});
