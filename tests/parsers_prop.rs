//! Property tests (stable toolchain) for the parsers of outside input that the fuzz
//! targets in `fuzz/` also cover: the inbound command parser, the provider reply parser,
//! the suppression CSV import and spool record decoding. (DATA framing has its own in
//! `src/smtp/data.rs`; the classifier in `src/policy/classify*.rs`.) Each parser gets a
//! round trip on generated well-formed input and a "never panics, refuses cleanly" run
//! on arbitrary bytes.

use mailvalve::policy::suppression::{Entry, Source};
use mailvalve::queue::{control, record, QueueId, RcptState};
use mailvalve::smtp::command::{self, Request};
use mailvalve::smtp::line::{find_line, MAX_COMMAND_LINE};
use mailvalve::smtp::reply::{EnhancedCode, Reply, MAX_REPLY_LINE};
use mailvalve::store::suppression_csv;
use proptest::prelude::*;
use std::time::{Duration, UNIX_EPOCH};

/// A dot-atom local part (no leading, trailing or doubled dot) at a plain domain.
fn address() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-zA-Z0-9%+_-]{1,8}", 1..4),
        "[a-z0-9][a-z0-9-]{0,14}",
        "[a-z]{2,6}",
    )
        .prop_map(|(l, d, t)| format!("{}@{d}.{t}", l.join(".")))
}

// ---------------------------------------------------------------------------------------
// Commands

proptest! {
    /// What mailers send parses to what they meant, whatever the case of the verb.
    #[test]
    fn mail_and_rcpt_carry_their_address_and_size(
        from in address(),
        to in address(),
        size in 0usize..100_000_000,
        upper in any::<bool>(),
    ) {
        let verb = |s: &str| if upper { s.to_uppercase() } else { s.to_lowercase() };
        let mail = format!("{}:<{from}> SIZE={size}\r\n", verb("MAIL FROM"));
        match command::parse(mail.as_bytes()) {
            Ok(Request::Mail { from: f }) => {
                prop_assert_eq!(f.address, from);
                prop_assert_eq!(f.size, size);
            }
            other => prop_assert!(false, "{mail:?} -> {other:?}"),
        }
        let rcpt = format!("{}:<{to}>\r\n", verb("RCPT TO"));
        match command::parse(rcpt.as_bytes()) {
            Ok(Request::Rcpt { to: t }) => prop_assert_eq!(t.address, to),
            other => prop_assert!(false, "{rcpt:?} -> {other:?}"),
        }
    }

    /// Any bytes: framed into lines as the session does, each line parsed; a refusal is
    /// a 5xx whose wire form is one CRLF-terminated reply.
    #[test]
    fn any_command_bytes_are_framed_and_parsed_or_refused(
        input in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':'), Just(b'<')],
            0..700,
        ),
    ) {
        let mut buf = input.as_slice();
        while let Ok(Some(n)) = find_line(buf, MAX_COMMAND_LINE) {
            prop_assert!(n <= MAX_COMMAND_LINE && buf[..n].ends_with(b"\r\n"));
            if let Err(reply) = command::parse(&buf[..n]) {
                prop_assert!(reply.is_permanent());
                let wire = reply.to_wire();
                let crlfs = wire.windows(2).filter(|w| w == b"\r\n").count();
                let lfs = wire.iter().filter(|&&b| b == b'\n').count();
                prop_assert_eq!(crlfs, lfs);
            }
            buf = &buf[n..];
        }
    }
}

// ---------------------------------------------------------------------------------------
// Replies

/// A reply as a provider might send it: lines that do not start with a digit (so a
/// plain reply's text cannot be mistaken for an enhanced code) and have no line breaks.
fn reply() -> impl Strategy<Value = Reply> {
    (
        200u16..=599,
        proptest::option::of((0u16..=999, 0u16..=999)),
        prop::collection::vec("([a-zA-Z][ -~]{0,100})?", 1..6),
    )
        .prop_map(|(code, enh, lines)| {
            let class = (code / 100) as u8;
            let enhanced = enh
                .filter(|_| matches!(class, 2 | 4 | 5))
                .map(|(s, d)| EnhancedCode::new(class, s, d));
            Reply {
                code,
                enhanced,
                lines,
            }
        })
}

proptest! {
    /// Written to the wire and parsed back, a reply is the same, however the bytes
    /// arrive: every shorter prefix asks for more, the whole gives the reply and its
    /// length, and what follows (a pipelined reply) is not touched.
    #[test]
    fn replies_round_trip_through_the_wire(r in reply(), next in reply()) {
        let wire = r.to_wire();
        let mut both = wire.clone();
        both.extend_from_slice(&next.to_wire());
        prop_assert_eq!(Reply::parse(&both), Ok(Some((r.clone(), wire.len()))));
        for k in 0..wire.len() {
            prop_assert_eq!(Reply::parse(&wire[..k]), Ok(None), "prefix {}", k);
        }
        prop_assert_eq!(
            Reply::parse(&both[wire.len()..]),
            Ok(Some((next.clone(), both.len() - wire.len())))
        );
    }

    /// Any bytes: a reply, a request for more, or an error — never a panic, and a reply
    /// only from lines within the limits.
    #[test]
    fn any_reply_bytes_parse_or_are_refused(
        input in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b'-'), Just(b' '), b'0'..=b'9', Just(b'.')],
            0..600,
        ),
    ) {
        if let Ok(Some((r, n))) = Reply::parse(&input) {
            prop_assert!(n <= input.len());
            prop_assert!((200..600).contains(&r.code));
            prop_assert!(input[..n].split(|&b| b == b'\n').all(|l| l.len() <= MAX_REPLY_LINE + 1));
            if let Some(e) = r.enhanced {
                prop_assert_eq!(u16::from(e.class), r.code / 100);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Suppression CSV

fn entry() -> impl Strategy<Value = Entry> {
    (
        address(),
        200u16..600,
        proptest::option::of((4u8..=5, 0u16..=999, 0u16..=999)),
        "([!-~]([ -~]{0,40}[!-~])?)?",
        0u64..=253_402_300_799, // up to 9999-12-31T23:59:59Z
        0u64..=1_000_000_000,
        any::<u32>(),
        prop::sample::select(vec![Source::Upstream, Source::Manual, Source::Import]),
    )
        .prop_map(
            |(address, code, enh, text, first_seen, later, count, source)| Entry {
                address: address.to_lowercase(),
                code,
                enhanced: enh.map(|(c, s, d)| format!("{c}.{s}.{d}")),
                text,
                first_seen,
                last_seen: (first_seen + later).min(253_402_300_799),
                count,
                source,
                suppressed: true,
                soft_times: Vec::new(),
                soft_marks: Vec::new(),
            },
        )
}

proptest! {
    /// Export, then import: the same entries.
    #[test]
    fn csv_export_import_round_trip(entries in prop::collection::vec(entry(), 0..20)) {
        let mut csv = Vec::new();
        suppression_csv::export(&entries, &mut csv).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_760_000_000);
        let back = suppression_csv::import(csv.as_slice(), now).unwrap();
        prop_assert_eq!(back, entries);
    }

    /// Any bytes: imported whole, or refused with every error on a line that exists.
    #[test]
    fn any_csv_is_imported_or_refused_by_line(
        input in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b','), Just(b'"'), Just(b'\n'), Just(b'@'), b'a'..=b'z'],
            0..400,
        ),
    ) {
        let lines = input.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        match suppression_csv::import(input.as_slice(), UNIX_EPOCH) {
            Ok(entries) => {
                for e in entries {
                    prop_assert!(e.address.contains('@'));
                }
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in errors {
                    prop_assert!(e.line >= 1 && e.line <= lines, "{e} of {lines}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Spool records

fn stored_reply() -> impl Strategy<Value = serde_json::Value> {
    (200u16..=599, proptest::option::of("[245]\\.[0-9]{1,3}\\.[0-9]{1,3}"), "\\PC{0,60}")
        .prop_map(|(code, enhanced, text)| {
            serde_json::json!({"code": code, "enhanced": enhanced, "text": text})
        })
}

fn rcpt() -> impl Strategy<Value = serde_json::Value> {
    (
        address(),
        0u8..3,
        any::<u32>(),
        any::<u64>(),
        proptest::option::of(stored_reply()),
        stored_reply(),
    )
        .prop_map(
            |(address, state, attempts, next, last, reply)| match state {
                0 => {
                    let mut v = serde_json::json!({"address": address, "state": "pending",
                    "attempts": attempts, "next_attempt": next});
                    if let Some(l) = last {
                        v["last_reply"] = l;
                    }
                    v
                }
                1 => serde_json::json!({"address": address, "state": "delivered", "reply": reply}),
                _ => serde_json::json!({"address": address, "state": "failed", "reply": reply}),
            },
        )
}

proptest! {
    /// A stored record (also the shape of older versions, without the optional fields)
    /// decodes to the message it describes, and `queue show` shows every recipient.
    #[test]
    fn spool_records_decode(
        from in prop_oneof![Just(String::new()), address()],
        received in any::<u64>(),
        body_len in any::<u64>(),
        optional in proptest::option::of((proptest::option::of(0usize..1 << 30), any::<bool>(), any::<bool>())),
        rcpts in prop::collection::vec(rcpt(), 1..8),
        now in any::<u64>(),
    ) {
        let mut json = serde_json::json!({"from": from, "received": received,
            "body_len": body_len, "rcpts": rcpts});
        if let Some((size, eight_bit, smtputf8)) = optional {
            json["size"] = serde_json::json!(size);
            json["eight_bit"] = serde_json::json!(eight_bit);
            json["smtputf8"] = serde_json::json!(smtputf8);
        }
        let bytes = serde_json::to_vec(&json).unwrap();
        let m = record::decode(QueueId::from_u64(7), &bytes).unwrap();
        prop_assert_eq!(&m.envelope.from, &from);
        prop_assert_eq!((m.received, m.body_len), (received, body_len));
        prop_assert_eq!(m.rcpts.len(), rcpts.len());
        for (r, j) in m.rcpts.iter().zip(&rcpts) {
            prop_assert_eq!(&r.address, j["address"].as_str().unwrap());
            let state = match &r.state {
                RcptState::Pending { .. } => "pending",
                RcptState::Delivered { .. } => "delivered",
                RcptState::Failed { .. } => "failed",
            };
            prop_assert_eq!(state, j["state"].as_str().unwrap());
        }
        prop_assert_eq!(m.is_complete(), m.rcpts.iter().all(|r| r.state.is_final()));
        let shown = control::show(&m, now);
        for r in &m.rcpts {
            prop_assert!(shown.contains(&r.address));
        }
    }

    /// Any bytes: a message or an error, never a panic.
    #[test]
    fn any_record_bytes_decode_or_are_refused(
        input in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b'{'), Just(b'}'), Just(b'"'), Just(b':'), Just(b',')],
            0..300,
        ),
    ) {
        if let Ok(m) = record::decode(QueueId::from_u64(1), &input) {
            let _ = control::show(&m, 0);
        }
    }
}
