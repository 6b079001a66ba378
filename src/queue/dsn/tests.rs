//! Tests of the bounce report: parsed back with mail-parser, line limits, hostile reply
//! text, boundaries, 8-bit originals, bounce recognition.

use super::*;
use mail_parser::{MessageParser, MimeHeaders};

const NEWSLETTER: &str = "Return-Path: <news@example.org>\r\n\
    From: Example News <news@example.org>\r\n\
    To: <reader@example.net>\r\n\
    Subject: Our spring newsletter\r\n\
    Message-ID: <campaign-42.reader@example.org>\r\n\
    X-Campaign: spring-2026\r\n\
    X-Listmonk-Campaign: 9f86b50d-5711-41c8-ab03-bc91c43d711b\r\n\
    List-Unsubscribe: <https://example.org/u/abc>\r\n\
    MIME-Version: 1.0\r\n\
    Content-Type: text/plain; charset=utf-8\r\n\
    \r\n\
    Hello reader,\r\n\
    .a line that starts with a dot\r\n\
    \r\n\
    bye\r\n";

fn reply(code: u16, enhanced: Option<&str>, text: &str) -> StoredReply {
    StoredReply {
        code,
        enhanced: enhanced.map(str::to_string),
        text: text.to_string(),
    }
}

const NOW: u64 = 1_776_153_909_000; // Tue, 14 Apr 2026 08:05:09 UTC
const ARRIVAL: u64 = NOW - 3 * 86_400_000 - 2 * 3_600_000;

fn input<'a>(failed: &'a [FailedRcpt<'a>], original: &'a [u8]) -> DsnInput<'a> {
    DsnInput {
        reporting_mta: "relay.example.org",
        queue_id: QueueId::from_u64(0x1234_5678_9abc),
        envelope_from: "news@example.org",
        arrival_ms: ARRIVAL,
        now_ms: NOW,
        original,
        failed,
    }
}

/// Every line ends in CRLF, none is longer than 998 octets, no bare CR or LF.
fn assert_lines(msg: &[u8]) {
    assert!(msg.ends_with(b"\r\n"));
    for (i, line) in msg.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue; // after the final LF
        }
        assert!(
            line.ends_with(b"\r"),
            "line {i} lacks CR: {:?}",
            String::from_utf8_lossy(line)
        );
        let body = &line[..line.len() - 1];
        assert!(!body.contains(&b'\r'), "bare CR in line {i}");
        assert!(body.len() <= MAX_LINE, "line {i} has {} octets", body.len());
    }
}

/// One failed recipient: one attempt, just now, not expired.
fn one<'a>(address: &'a str, reply: &'a StoredReply) -> FailedRcpt<'a> {
    FailedRcpt {
        address,
        reply,
        attempts: 1,
        last_attempt_ms: NOW,
        expired: false,
    }
}

fn part_text<'x>(m: &'x mail_parser::Message<'x>, ctype: &str) -> String {
    let p = m
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
                .as_deref()
                == Some(ctype)
        })
        .unwrap_or_else(|| panic!("no {ctype} part"));
    String::from_utf8(p.contents().to_vec()).unwrap()
}

#[test]
fn single_recipient_report_parses() {
    let r = reply(550, Some("5.1.1"), "<reader@example.net>: user unknown");
    let failed = [FailedRcpt {
        last_attempt_ms: NOW - 1000,
        ..one("reader@example.net", &r)
    }];
    let dsn = build(&input(&failed, NEWSLETTER.as_bytes()));
    assert_lines(&dsn);
    assert!(!needs_8bitmime(&dsn));

    let m = MessageParser::default().parse(&dsn).unwrap();
    let ct = m.content_type().unwrap();
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
    assert_eq!(
        m.from().unwrap().first().unwrap().address(),
        Some("MAILER-DAEMON@relay.example.org")
    );
    assert_eq!(
        m.to().unwrap().first().unwrap().address(),
        Some("news@example.org")
    );
    assert_eq!(m.date().unwrap().to_timestamp() as u64, NOW / 1000);
    let mid = m.message_id().unwrap();
    assert!(
        mid.contains(&QueueId::from_u64(0x1234_5678_9abc).to_string()),
        "{mid}"
    );
    assert!(mid.ends_with("@relay.example.org"), "{mid}");
    assert_eq!(
        m.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );

    let human = part_text(&m, "text/plain");
    assert!(human.contains("<reader@example.net>"), "{human}");
    assert!(human.contains("550 5.1.1"), "{human}");
    assert!(human.contains("for good"), "{human}");

    let status = part_text(&m, "message/delivery-status");
    let qid_line = format!(
        "X-Mailvalve-Queue-ID: {}\r\n",
        QueueId::from_u64(0x1234_5678_9abc)
    );
    for want in [
        "Reporting-MTA: dns; relay.example.org\r\n",
        qid_line.as_str(),
        "Arrival-Date: Sat, 11 Apr 2026 06:05:09 +0000\r\n",
        "Final-Recipient: rfc822; reader@example.net\r\n",
        "Action: failed\r\n",
        "Status: 5.1.1\r\n",
        "Diagnostic-Code: smtp; 550 5.1.1 <reader@example.net>: user unknown\r\n",
        "Last-Attempt-Date: Tue, 14 Apr 2026 08:05:08 +0000\r\n",
    ] {
        assert!(status.contains(want), "missing {want:?} in\n{status}");
    }

    let headers = part_text(&m, "text/rfc822-headers");
    assert!(
        headers.contains("Message-ID: <campaign-42.reader@example.org>\r\n"),
        "{headers}"
    );
    assert!(headers.contains("X-Campaign: spring-2026\r\n"), "{headers}");
    assert!(
        !headers.contains("Hello reader"),
        "the body must not be included"
    );
}

#[test]
fn date_format() {
    assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
    assert_eq!(rfc5322_date(NOW), "Tue, 14 Apr 2026 08:05:09 +0000");
    // 2000-02-29 23:59:59 (leap day of a century leap year)
    assert_eq!(
        rfc5322_date(951_868_799_000),
        "Tue, 29 Feb 2000 23:59:59 +0000"
    );
    assert_eq!(
        rfc5322_date(4_102_444_800_000),
        "Fri, 1 Jan 2100 00:00:00 +0000"
    );
}

#[test]
fn multi_recipient_report_has_one_block_each() {
    let hard = reply(550, Some("5.1.1"), "no such user");
    let plain = reply(554, None, "rejected");
    let soft = reply(451, Some("4.7.1"), "try again later");
    let soft_plain = reply(450, None, "mailbox busy");
    let failed = [
        FailedRcpt {
            address: "a@example.net",
            reply: &hard,
            attempts: 1,
            last_attempt_ms: NOW - 5000,
            expired: false,
        },
        FailedRcpt {
            address: "b@example.net",
            reply: &plain,
            attempts: 2,
            last_attempt_ms: NOW - 4000,
            expired: false,
        },
        FailedRcpt {
            address: "c@example.net",
            reply: &soft,
            attempts: 17,
            last_attempt_ms: NOW - 3000,
            expired: true,
        },
        FailedRcpt {
            address: "d@example.net",
            reply: &soft_plain,
            attempts: 9,
            last_attempt_ms: NOW - 2000,
            expired: true,
        },
    ];
    let dsn = build(&input(&failed, NEWSLETTER.as_bytes()));
    assert_lines(&dsn);
    let m = MessageParser::default().parse(&dsn).unwrap();
    let status = part_text(&m, "message/delivery-status");
    let blocks: Vec<&str> = status.split("\r\n\r\n").collect();
    assert_eq!(blocks.len(), 5, "{status}");
    let want = [
        ("a@example.net", "5.1.1"),
        ("b@example.net", "5.0.0"),
        ("c@example.net", "4.7.1"),
        ("d@example.net", "4.0.0"),
    ];
    for (block, (addr, code)) in blocks[1..].iter().zip(want) {
        assert!(
            block.contains(&format!("Final-Recipient: rfc822; {addr}\r\n")),
            "{block}"
        );
        assert!(block.contains(&format!("Status: {code}\r\n")), "{block}");
        assert!(block.contains("Action: failed"), "{block}");
    }
    assert!(
        blocks[2].contains("Diagnostic-Code: smtp; 554 rejected"),
        "{status}"
    );
    let human = part_text(&m, "text/plain");
    assert!(human.contains("17 attempts"), "{human}");
    assert!(human.contains("3 days 2 hours"), "{human}");
    for (addr, _) in want {
        assert!(human.contains(addr), "{human}");
    }
    // Same input, same id; another recipient set, another id.
    let again = build(&input(&failed, NEWSLETTER.as_bytes()));
    assert_eq!(dsn, again);
    let other = build(&input(&failed[..1], NEWSLETTER.as_bytes()));
    let m2 = MessageParser::default().parse(&other).unwrap();
    assert_ne!(m.message_id(), m2.message_id());
}

#[test]
fn long_hostile_reply_is_folded_and_cleaned() {
    let mut text = String::from("550-first line\r\nInjected: header\r\n\r\n--boundary ");
    for i in 0..300 {
        text.push_str(&format!("word{i} "));
    }
    text.push_str(&"x".repeat(3000)); // one "word" longer than any line
    text.push_str(" Grüße \u{1F600}\ttab\u{0}nul");
    let r = reply(550, Some("5.7.1"), &text);
    let failed = [FailedRcpt {
        attempts: 3,
        ..one("reader@example.net", &r)
    }];
    let dsn = build(&input(&failed, NEWSLETTER.as_bytes()));
    assert_lines(&dsn);
    assert!(
        dsn.is_ascii(),
        "non-ASCII reply text must not reach the report"
    );
    let s = String::from_utf8(dsn.clone()).unwrap();
    assert!(
        !s.contains("\r\nInjected:"),
        "reply text started a line of its own"
    );
    assert!(s.contains("Gr??e"), "non-ASCII becomes '?'");
    // The only control characters are line ends and the TAB that starts a folded
    // header line (mail-builder folds with CRLF TAB).
    assert!(
        s.split("\r\n")
            .all(|l| !l.trim_start_matches('\t').bytes().any(|b| b < 0x20)),
        "control characters from the reply reached the report"
    );
    let m = MessageParser::default().parse(&dsn).unwrap();
    assert_eq!(m.parts.len(), 4, "three parts under the root");
    let status = part_text(&m, "message/delivery-status");
    // Unfold the Diagnostic-Code and check the whole text is there.
    let diag = status
        .split("\r\n")
        .skip_while(|l| !l.starts_with("Diagnostic-Code:"))
        .take_while(|l| !l.starts_with("Last-Attempt-Date:"))
        .collect::<Vec<_>>()
        .join("");
    assert!(
        diag.starts_with(
            "Diagnostic-Code: smtp; 550 5.7.1 550-first line Injected: header --boundary word0"
        ),
        "{diag}"
    );
    assert!(diag.contains("word299"), "{diag}");
    assert!(diag.replace(' ', "").contains(&"x".repeat(3000)), "{diag}");
    for l in s.split("\r\n") {
        assert!(l.len() <= FOLD_AT.max(80) || !l.contains("word"), "{l}");
    }
}

#[test]
fn boundary_never_occurs_in_the_original() {
    let r = reply(550, Some("5.1.1"), "user unknown");
    let failed = [one("reader@example.net", &r)];
    let first = build(&input(&failed, NEWSLETTER.as_bytes()));
    let m = MessageParser::default().parse(&first).unwrap();
    let b = m
        .content_type()
        .unwrap()
        .attribute("boundary")
        .unwrap()
        .to_string();
    // An original that contains the boundary we would have chosen.
    let hostile = NEWSLETTER.replace("X-Campaign: spring-2026", &format!("X-Campaign: {b}"));
    let dsn = build(&input(&failed, hostile.as_bytes()));
    let m = MessageParser::default().parse(&dsn).unwrap();
    let b2 = m.content_type().unwrap().attribute("boundary").unwrap();
    assert!(!hostile.contains(b2));
    assert!(part_text(&m, "text/rfc822-headers").contains(&b));
}

#[test]
fn non_ascii_recipient_and_8bit_headers() {
    let r = reply(550, Some("5.1.1"), "unknown");
    let failed = [one("jörg@example.de", &r)];
    let original = "Subject: Grüße\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n";
    let dsn = build(&input(&failed, original.as_bytes()));
    assert_lines(&dsn);
    assert!(needs_8bitmime(&dsn));
    let s = String::from_utf8(dsn).unwrap();
    assert!(
        s.contains("Final-Recipient: utf-8; j\\x{F6}rg@example.de\r\n"),
        "{s}"
    );
    assert!(s.contains("Content-Transfer-Encoding: 8bit"), "{s}");
    assert!(
        s.contains("Subject: Grüße\r\n"),
        "original headers are kept as they are"
    );
}

#[test]
fn headers_part_edges() {
    // A bare-LF original still yields CRLF lines in the report.
    assert_eq!(headers_part(b"A: 1\nB: 2\n\nbody"), b"A: 1\r\nB: 2\r\n");
    let long = format!("X-Long: {}\r\n\r\n", "y".repeat(2500));
    let part = headers_part(long.as_bytes());
    assert_lines(&part);
    assert_eq!(part.split(|&b| b == b'\n').count(), 4);
}

#[test]
fn bounces_are_recognised() {
    let news = NEWSLETTER.as_bytes();
    assert!(
        !is_bounce("news@example.org", news),
        "an ordinary newsletter"
    );
    assert!(is_bounce("", news));
    assert!(is_bounce("<>", news));
    assert!(is_bounce(" <> ", news));

    let r = reply(550, Some("5.1.1"), "user unknown");
    let failed = [one("reader@example.net", &r)];
    let dsn = build(&input(&failed, news));
    assert!(is_bounce("someone@example.org", &dsn), "our own report");

    let auto = "From: a@b\r\nAuto-Submitted: auto-replied (vacation)\r\n\r\nx\r\n";
    assert!(is_bounce("a@b", auto.as_bytes()));
    let generated = "From: a@b\r\nAuto-Submitted: auto-generated\r\n\r\nx\r\n";
    assert!(
        !is_bounce("a@b", generated.as_bytes()),
        "a newsletter marked auto-generated still gets its bounce report"
    );
    let no = "From: a@b\r\nAuto-Submitted: No (a person wrote this)\r\n\r\nx\r\n";
    assert!(!is_bounce("a@b", no.as_bytes()));
    let folded = "From: a@b\r\nContent-Type: multipart/report;\r\n\treport-type=\"Delivery-Status\";\r\n boundary=x\r\n\r\n";
    assert!(is_bounce("a@b", folded.as_bytes()));
    let mdn = "Content-Type: multipart/report; report-type=disposition-notification\r\n\r\n";
    assert!(!is_bounce("a@b", mdn.as_bytes()));
    let mixed = "Content-Type: multipart/mixed; boundary=x\r\n\r\nAuto-Submitted: auto-replied\r\n";
    assert!(
        !is_bounce("a@b", mixed.as_bytes()),
        "a body line is no header"
    );
}

#[test]
fn age_and_enhanced_validation() {
    assert_eq!(age(0), "less than a second");
    assert_eq!(age(61_000), "1 minute 1 second");
    assert_eq!(age(86_400_000 + 60_000), "1 day");
    assert_eq!(age(2 * 86_400_000 + 3_600_000 * 5), "2 days 5 hours");
    assert_eq!(
        status_code(&reply(550, Some("5.1.10"), ""), false),
        "5.1.10"
    );
    assert_eq!(status_code(&reply(550, Some("junk"), ""), false), "5.0.0");
    assert_eq!(status_code(&reply(550, Some("2.0.0"), ""), false), "5.0.0");
    assert_eq!(status_code(&reply(421, None, ""), true), "4.0.0");
}
