//! DATA framing, both directions.
//!
//! Inbound, [`DataDecoder`] turns the dot-stuffed stream after `354` into the message.
//! Only a line that is exactly `.` CRLF, at the start of a line, ends it. A bare CR, a
//! bare LF or a NUL anywhere is a fatal framing error: the session must reply and close,
//! never guess where the message ends (that guess is what SMTP smuggling exploits).
//! Over-long lines and over-size messages are not fatal: the decoder keeps reading to
//! the real end so the session can answer `500 5.5.6` / `552 5.3.4` in step.
//!
//! Outbound, [`dot_stuff`] writes a message for the wire: CRLF line ends everywhere (a
//! bare CR or LF in the input becomes CRLF, so we never send one), a leading dot doubled,
//! and the `.` CRLF terminator appended.

/// RFC 5321 4.5.3.1.6: a text line is at most 1000 octets including CRLF.
pub const MAX_TEXT_LINE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("bare CR in message data")]
    BareCr,
    #[error("bare LF in message data")]
    BareLf,
    #[error("NUL in message data")]
    Nul,
}

/// What was wrong with a message that was framed correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    LineTooLong,
    TooBig,
}

/// Incremental decoder for one message. Feed it the bytes received after `354`.
#[derive(Debug)]
pub struct DataDecoder {
    max_size: usize,
    size: usize,
    in_long_line: bool,
    problem: Option<DataProblem>,
}

impl DataDecoder {
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size,
            size: 0,
            in_long_line: false,
            problem: None,
        }
    }

    /// Consumes complete lines from `input`, appending the unstuffed message to `out`.
    /// Returns the bytes consumed and whether the terminator was seen (the bytes after
    /// it are not consumed: with PIPELINING they are the next command). Bytes of an
    /// incomplete line are left for the next call.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), DataError> {
        if self.problem.is_none() {
            out.reserve(input.len());
        }
        // Consecutive body bytes of `input` not yet copied to `out`: lines are appended
        // a run at a time (a dot-stuffed line starts a new run after its dot).
        let mut run = 0..0;
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                // No complete line yet. Check what we have; swallow an over-long tail so
                // the buffer stays bounded (keep a trailing CR: its LF may follow).
                check_bytes(rest, true)?;
                if rest.len() >= line_limit(rest) {
                    let keep = usize::from(rest.last() == Some(&b'\r'));
                    self.in_long_line = true;
                    self.problem.get_or_insert(DataProblem::LineTooLong);
                    pos += rest.len() - keep;
                }
                break;
            };
            if lf == 0 || rest[lf - 1] != b'\r' {
                return Err(DataError::BareLf);
            }
            let line = &rest[..=lf];
            check_bytes(&line[..line.len() - 2], false)?;
            let start = pos;
            pos += line.len();
            if self.in_long_line {
                self.in_long_line = false;
                continue;
            }
            if line == b".\r\n" {
                out.extend_from_slice(&input[run]);
                return Ok((pos, true));
            }
            if line.len() > line_limit(line) {
                self.problem.get_or_insert(DataProblem::LineTooLong);
                continue;
            }
            let body = if line[0] == b'.' { start + 1 } else { start }..pos;
            self.size += body.len();
            if self.size > self.max_size {
                self.problem.get_or_insert(DataProblem::TooBig);
            }
            if self.problem.is_none() {
                if run.end == body.start {
                    run.end = body.end;
                } else {
                    out.extend_from_slice(&input[run]);
                    run = body;
                }
            }
        }
        out.extend_from_slice(&input[run]);
        Ok((pos, false))
    }

    /// Set once the message is known to be unacceptable (it is then not kept).
    pub fn problem(&self) -> Option<DataProblem> {
        self.problem
    }

    /// Unstuffed size so far.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// The longest a line may be on the wire, CRLF included: [`MAX_TEXT_LINE`], plus the
/// dot a sender doubled for transparency, which RFC 5321 4.5.3.1.6 does not count.
fn line_limit(line: &[u8]) -> usize {
    MAX_TEXT_LINE + usize::from(line.first() == Some(&b'.'))
}

/// `bytes` must contain no CR (none is allowed inside a line: the line's own CRLF has
/// been cut off) and no NUL. `partial`: a trailing CR may still be followed by LF.
fn check_bytes(bytes: &[u8], partial: bool) -> Result<(), DataError> {
    match memchr::memchr2(b'\r', 0, bytes) {
        None => Ok(()),
        Some(i) if bytes[i] == 0 => Err(DataError::Nul),
        // A CR: only a trailing one of a partial line may be the start of its CRLF;
        // anything after it is checked too.
        Some(i) if partial && i + 1 == bytes.len() => Ok(()),
        Some(_) => Err(DataError::BareCr),
    }
}

/// Appends `msg` to `out` ready for the wire after `354`: CRLF line ends (bare CR or LF
/// normalised), leading dots doubled, terminated by `.` CRLF.
pub fn dot_stuff(msg: &[u8], out: &mut Vec<u8>) {
    out.reserve(msg.len() + msg.len() / 64 + 5);
    let mut bol = true;
    let mut i = 0;
    while i < msg.len() {
        // The text up to the next line end (or the end of the message), in one copy.
        let end = memchr::memchr2(b'\r', b'\n', &msg[i..]).map_or(msg.len(), |n| i + n);
        if end > i {
            if bol && msg[i] == b'.' {
                out.push(b'.');
            }
            out.extend_from_slice(&msg[i..end]);
            bol = false;
        }
        i = end;
        if i < msg.len() {
            // CRLF, bare CR or bare LF: each is one CRLF on the wire.
            out.extend_from_slice(b"\r\n");
            if msg[i] == b'\r' && msg.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            i += 1;
            bol = true;
        }
    }
    if !bol {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(wire: &[u8]) -> Result<(Vec<u8>, usize, bool), DataError> {
        let mut d = DataDecoder::new(1 << 20);
        let mut out = Vec::new();
        let (n, done) = d.feed(wire, &mut out)?;
        Ok((out, n, done))
    }

    #[test]
    fn unstuffs_and_stops_at_terminator() {
        let (out, n, done) = decode_all(b"a\r\n..b\r\n.\r\nQUIT\r\n").unwrap();
        assert!(done);
        assert_eq!(out, b"a\r\n.b\r\n");
        assert_eq!(n, 11);
    }

    #[test]
    fn smuggling_sequences_are_refused() {
        for seq in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\r.\n",
            b"\n.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\r\r\n",
        ] {
            let mut wire = b"Subject: x\r\n\r\nhello".to_vec();
            wire.extend_from_slice(seq);
            wire.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n");
            assert!(decode_all(&wire).is_err(), "{seq:?} must be refused");
        }
        // NUL before the dot: refused too.
        assert_eq!(decode_all(b"x\r\n\x00.\r\n").unwrap_err(), DataError::Nul);
    }

    #[test]
    fn long_lines_and_size() {
        let mut wire = vec![b'a'; 1200];
        wire.extend_from_slice(b"\r\nok\r\n.\r\n");
        let mut d = DataDecoder::new(100);
        let mut out = Vec::new();
        // Fed in small pieces, as from a socket.
        let mut pos = 0;
        let mut done = false;
        let mut buf = Vec::new();
        for chunk in wire.chunks(7) {
            buf.extend_from_slice(chunk);
            let (n, d2) = d.feed(&buf, &mut out).unwrap();
            buf.drain(..n);
            pos += n;
            if d2 {
                done = true;
                break;
            }
        }
        assert!(done);
        assert_eq!(pos, wire.len());
        assert_eq!(d.problem(), Some(DataProblem::LineTooLong));

        let mut d = DataDecoder::new(5);
        let (_, done) = d.feed(b"123456\r\n.\r\n", &mut Vec::new()).unwrap();
        assert!(done);
        assert_eq!(d.problem(), Some(DataProblem::TooBig));
    }

    /// Found by fuzzing (fuzz/ target `data`): a 998-octet line that starts with a dot
    /// is legal, but goes over the wire as 999 octets plus CRLF; the doubled dot must not
    /// count against the 1000-octet limit (RFC 5321 4.5.3.1.6), else we refuse with
    /// `500 5.5.6` a message our own `dot_stuff` (and every MTA) sends.
    #[test]
    fn a_doubled_dot_does_not_count_against_the_line_limit() {
        let mut legal = vec![b'.'];
        legal.extend_from_slice(&[b'y'; 997]);
        legal.extend_from_slice(b"\r\n");
        let mut wire = Vec::new();
        dot_stuff(&legal, &mut wire);
        assert_eq!(wire.iter().position(|&b| b == b'\r'), Some(999));
        for cut in [1, 7, 1000, wire.len()] {
            let mut d = DataDecoder::new(1 << 20);
            let (mut out, mut buf, mut done) = (Vec::new(), Vec::new(), false);
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                let (n, end) = d.feed(&buf, &mut out).unwrap();
                buf.drain(..n);
                done = end;
            }
            assert!(done);
            assert_eq!(d.problem(), None, "cut {cut}");
            assert_eq!(out, legal);
        }
        // One octet more is too long, doubled dot or not.
        let mut long = b"..".to_vec();
        long.extend_from_slice(&[b'y'; 998]);
        long.extend_from_slice(b"\r\n.\r\n");
        let mut d = DataDecoder::new(1 << 20);
        assert_eq!(d.feed(&long, &mut Vec::new()).unwrap(), (long.len(), true));
        assert_eq!(d.problem(), Some(DataProblem::LineTooLong));
    }

    #[test]
    fn stuffing() {
        let mut out = Vec::new();
        dot_stuff(b".a\r\nb\n.\r\nc", &mut out);
        assert_eq!(out, b"..a\r\nb\r\n..\r\nc\r\n.\r\n");
        let mut out = Vec::new();
        dot_stuff(b"", &mut out);
        assert_eq!(out, b".\r\n");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Message lines without CR/LF/NUL, some starting with dots, short enough to be legal.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::collection::vec(
                prop_oneof![Just(b'.'), 1u8..=9, 11u8..=12, 14u8..=255],
                0..80,
            ),
            0..30,
        )
        .prop_map(|lines| {
            let mut m = Vec::new();
            for l in lines {
                m.extend_from_slice(&l);
                m.extend_from_slice(b"\r\n");
            }
            m
        })
    }

    proptest! {
        /// stuff → decode gives back the message, however the wire is cut into reads,
        /// and the decoder stops exactly at the terminator.
        #[test]
        fn stuff_unstuff_round_trip(msg in message(), cuts in prop::collection::vec(1usize..64, 1..40), tail in prop::collection::vec(any::<u8>(), 0..20)) {
            let mut wire = Vec::new();
            dot_stuff(&msg, &mut wire);
            let framed_len = wire.len();
            wire.extend_from_slice(&tail);

            let mut dec = DataDecoder::new(usize::MAX);
            let mut out = Vec::new();
            let mut buf: Vec<u8> = Vec::new();
            let mut fed = 0;
            let mut consumed = 0;
            let mut cut = cuts.iter().cycle();
            let mut done = false;
            while !done && fed < wire.len() {
                let n = (*cut.next().unwrap_or(&1)).min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
                let (used, end) = dec.feed(&buf, &mut out).expect("valid framing");
                buf.drain(..used);
                consumed += used;
                done = end;
            }
            prop_assert!(done);
            prop_assert_eq!(consumed, framed_len);
            prop_assert_eq!(out, msg);
            prop_assert_eq!(dec.problem(), None);
        }

        /// Whatever bytes arrive, the decoder never panics and never consumes past input.
        #[test]
        fn decoder_total(input in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut dec = DataDecoder::new(1000);
            let mut out = Vec::new();
            if let Ok((n, _)) = dec.feed(&input, &mut out) {
                prop_assert!(n <= input.len());
            }
        }

        /// The line-at-a-time encoder writes exactly what a byte-at-a-time one does.
        #[test]
        fn stuffing_matches_bytewise(input in prop::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..400)) {
            let mut wire = Vec::new();
            dot_stuff(&input, &mut wire);
            let mut want = Vec::new();
            let mut bol = true;
            let mut i = 0;
            while i < input.len() {
                let c = input[i];
                if bol && c == b'.' {
                    want.push(b'.');
                }
                match c {
                    b'\r' | b'\n' => {
                        want.extend_from_slice(b"\r\n");
                        if c == b'\r' && input.get(i + 1) == Some(&b'\n') {
                            i += 1;
                        }
                        bol = true;
                    }
                    _ => {
                        want.push(c);
                        bol = false;
                    }
                }
                i += 1;
            }
            if !bol {
                want.extend_from_slice(b"\r\n");
            }
            want.extend_from_slice(b".\r\n");
            prop_assert_eq!(wire, want);
        }

        /// The encoder never emits a bare CR or LF, whatever it is given.
        #[test]
        fn stuffed_output_has_only_crlf(input in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut wire = Vec::new();
            dot_stuff(&input, &mut wire);
            for (i, &c) in wire.iter().enumerate() {
                if c == b'\n' { prop_assert!(i > 0 && wire[i - 1] == b'\r'); }
                if c == b'\r' { prop_assert_eq!(wire.get(i + 1), Some(&b'\n')); }
            }
            prop_assert!(wire.ends_with(b"\r\n.\r\n") || wire == b".\r\n");
        }
    }
}
