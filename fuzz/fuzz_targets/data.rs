//! DATA framing and un-stuffing (`smtp::data`).
//!
//! 1. Arbitrary client bytes after `354`, fed as a session does (a buffer that grows by
//!    reads of arbitrary size and loses what the decoder consumed): the result must not
//!    depend on how the bytes were cut into reads, and must match one call with
//!    everything at once.
//! 2. Round trip: arbitrary message bytes through `dot_stuff` (what we send), then the
//!    decoder under arbitrary chunking: exactly the message comes back (line ends
//!    normalised to CRLF), the decoder stops exactly at the terminator, and a line is
//!    refused as too long only if it is (RFC 5321 4.5.3.1.6: 1000 octets with CRLF, not
//!    counting a dot added for transparency).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvalve::smtp::data::{dot_stuff, DataDecoder, DataError, DataProblem, MAX_TEXT_LINE};

#[path = "common.rs"]
mod common;
use common::Cuts;

#[derive(Debug, PartialEq)]
struct Outcome {
    result: Result<bool, DataError>,
    consumed: usize,
    out: Vec<u8>,
    problem: Option<DataProblem>,
    size: usize,
}

fn decode(wire: &[u8], cuts: &mut Option<Cuts>, max: usize, limit: usize) -> Outcome {
    let mut d = DataDecoder::new(limit);
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut consumed = 0;
    let mut result = Ok(false);
    while fed < wire.len() {
        let n = match cuts {
            Some(c) => c.next(max).min(wire.len() - fed),
            None => wire.len(),
        };
        buf.extend_from_slice(&wire[fed..fed + n]);
        fed += n;
        match d.feed(&buf, &mut out) {
            Ok((used, done)) => {
                assert!(used <= buf.len());
                buf.drain(..used);
                consumed += used;
                if done {
                    result = Ok(true);
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let problem = d.problem();
    // A message with a problem is not kept, whatever was written so far.
    let out = if result.is_ok() && problem.is_none() {
        out
    } else {
        Vec::new()
    };
    // After a framing error the session answers the same whatever the error (bare CR,
    // bare LF or NUL) and closes: only that there was one must agree, not which one a
    // line held first, nor how much went before it.
    if result.is_err() {
        return Outcome {
            result: Err(DataError::BareLf),
            consumed: 0,
            out: Vec::new(),
            problem: None,
            size: 0,
        };
    }
    // Before the terminator, how much of an unfinished over-long line was swallowed
    // yet depends on the reads (the buffer stays bounded either way); once the end is
    // seen, everything must agree.
    let consumed = if result == Ok(true) { consumed } else { 0 };
    Outcome {
        result,
        consumed,
        out,
        problem,
        size: d.size(),
    }
}

/// What the decoder must give back for `msg` sent through `dot_stuff`.
fn normalised(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    let mut i = 0;
    while i < msg.len() {
        match msg[i] {
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                if msg[i] == b'\r' && msg.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (seed, max, rest) = (data[0], usize::from(data[1] % 64) + 1, &data[2..]);
    let limit = if seed & 1 == 0 { usize::MAX } else { 4096 };

    // 1. Any bytes: the same outcome however they arrive.
    let whole = decode(rest, &mut None, 0, limit);
    let cut = decode(rest, &mut Some(Cuts::new(seed, data[1])), max, limit);
    assert_eq!(whole, cut, "outcome depends on how the bytes were cut");
    assert!(whole.consumed <= rest.len());
    if whole.result == Ok(true) {
        assert!(
            rest[..whole.consumed].ends_with(b"\r\n.\r\n") || rest[..whole.consumed] == *b".\r\n"
        );
    }

    // 2. Round trip of what we send.
    let mut wire = Vec::new();
    dot_stuff(rest, &mut wire);
    common::crlf_only(&wire, "dot_stuff");
    let stuffed = wire.len();
    wire.extend_from_slice(b"QUIT\r\n");
    let got = decode(&wire, &mut Some(Cuts::new(data[1], seed)), max, usize::MAX);
    if rest.contains(&0) {
        assert!(got.result.is_err(), "NUL accepted");
        return;
    }
    assert_eq!(got.result, Ok(true), "stuffed message not framed");
    assert_eq!(
        got.consumed, stuffed,
        "decoder did not stop at the terminator"
    );
    let want = normalised(rest);
    let too_long = want
        .split(|&b| b == b'\n')
        .any(|l| l.len() + 1 > MAX_TEXT_LINE);
    if too_long {
        assert_eq!(got.problem, Some(DataProblem::LineTooLong));
    } else {
        assert_eq!(got.problem, None);
        assert_eq!(got.out, want);
        assert_eq!(got.size, want.len());
    }
});
