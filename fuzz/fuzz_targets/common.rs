//! Checks shared by the targets (each target includes this file with `#[path]`).
#![allow(dead_code)]

/// Every line of `wire` ends in CRLF, and no CR or LF stands anywhere else: what we send
/// (replies to the mailer, reports) can never be read as an extra line.
pub fn crlf_only(wire: &[u8], what: &str) {
    for (i, &b) in wire.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(wire.get(i + 1), Some(&b'\n'), "{what}: bare CR at {i}"),
            b'\n' => assert!(i > 0 && wire[i - 1] == b'\r', "{what}: bare LF at {i}"),
            _ => {}
        }
    }
    assert!(
        wire.is_empty() || wire.ends_with(b"\r\n"),
        "{what}: no final CRLF"
    );
}

/// A reply as written to the wire: CRLF only, and every line carries the same code.
pub fn reply_wire(r: &mailvalve::smtp::Reply) {
    let wire = r.to_wire();
    crlf_only(&wire, "reply");
    let code = format!("{:03}", r.code);
    for line in wire.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with(code.as_bytes()),
            "reply line without its code"
        );
    }
}

/// A tiny deterministic generator for chunk sizes, seeded from the input.
pub struct Cuts(u32);

impl Cuts {
    pub fn new(seed: u8, extra: u8) -> Self {
        Self(u32::from(seed) << 8 | u32::from(extra) | 1)
    }
    /// 1..=max
    pub fn next(&mut self, max: usize) -> usize {
        // xorshift32
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        1 + (self.0 as usize) % max.max(1)
    }
}
