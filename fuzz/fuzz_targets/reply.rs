//! Provider replies (`smtp::reply`): multi-line, enhanced codes of up to three digits
//! (`5.2.251`), bounded lines and line counts, lenient line ends. The parser must be
//! incremental (a prefix of a complete reply asks for more bytes, never errs or
//! returns a different reply), its result must survive being written back to the wire
//! and parsed again, and everything that reads a parsed reply — EHLO capabilities, the
//! classifier for every phase, retry hints, `explain`'s lenient parser — takes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvalve::policy::classify::{retry_hint, Classifier, MAX_HINT};
use mailvalve::policy::verdict::Phase;
use mailvalve::smtp::codes::{enhanced_meaning, meaning, Lang};
use mailvalve::smtp::ehlo::Capabilities;
use mailvalve::smtp::reply::{Reply, MAX_REPLY_LINE, MAX_REPLY_LINES};
use std::sync::OnceLock;

#[path = "common.rs"]
mod common;

const PHASES: [Phase; 9] = Phase::ALL;

fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| Classifier::builtin().expect("built-in rules compile"))
}

fn consumers(r: &Reply) {
    assert!((200..600).contains(&r.code));
    assert!(!r.lines.is_empty() && r.lines.len() <= MAX_REPLY_LINES);
    if let Some(e) = r.enhanced {
        assert_eq!(u16::from(e.class), r.code / 100);
    }
    let _ = Capabilities::from_ehlo(r);
    for phase in PHASES {
        let _ = format!("{:?}", classifier().classify(phase, r));
    }
    if let Some(h) = retry_hint(&r.text()) {
        assert!(h <= MAX_HINT);
    }
    let _ = r.to_string();
    let _ = meaning(r.code, Lang::En);
    if let Some(e) = r.enhanced {
        let _ = enhanced_meaning(e, Lang::De);
    }
    common::reply_wire(r);
}

fuzz_target!(|data: &[u8]| {
    match Reply::parse(data) {
        Ok(Some((r, n))) => {
            assert!(n > 0 && n <= data.len());
            // Incremental: the bytes of the reply alone give the same reply; any prefix
            // of them (cut at each line end and just before the end) asks for more.
            assert_eq!(Reply::parse(&data[..n]), Ok(Some((r.clone(), n))));
            let cuts = data[..n]
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(i, _)| i + 1)
                .chain([n - 1, n / 2]);
            for k in cuts.filter(|&k| k < n) {
                assert_eq!(Reply::parse(&data[..k]), Ok(None), "prefix of {k} bytes");
            }
            consumers(&r);
            // Written back and parsed again: the same reply (when its lines still fit) —
            // up to the whitespace after an enhanced code, which the wire form cannot
            // keep for a line that had no code of its own (RFC 2034 repeats it on each).
            let wire = r.to_wire();
            if wire
                .split(|&b| b == b'\n')
                .all(|l| l.len() <= MAX_REPLY_LINE)
            {
                let (again, used) = Reply::parse(&wire)
                    .expect("our own wire form parses")
                    .expect("complete");
                assert_eq!(used, wire.len());
                assert_eq!((again.code, again.enhanced), (r.code, r.enhanced));
                let trim = |l: &Vec<String>| -> Vec<String> {
                    l.iter().map(|s| s.trim_start().to_string()).collect()
                };
                assert_eq!(trim(&again.lines), trim(&r.lines));
            }
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = Reply::parse_lenient(s) {
            consumers(&r);
        }
        let _ = retry_hint(s);
    }
});
