//! SMTP replies: the three-digit code, the optional RFC 3463 enhanced status code and
//! the text lines, parsed from the wire (multi-line aware) and written back to it.
//!
//! Why not smtp-proto's `ResponseReceiver`: it stores the enhanced code as three single
//! digits (`[u8; 3]`), so `5.2.251` (Microsoft's "sender throttled") or `4.7.500` cannot
//! be represented, and those are exactly the codes the reply policy must tell apart.
//! RFC 3463 allows up to three digits in the subject and the detail.
//!
//! This module must never panic on provider input: anything that is not a well-formed
//! reply is a `ReplyError`, which the caller treats as a protocol error (a deferral).

use std::fmt;
use std::io::Write as _;

/// Longest reply line we accept from a peer (RFC 5321 says 512; providers send longer
/// ones in practice, so we are lenient but bounded).
pub const MAX_REPLY_LINE: usize = 2048;
/// Most lines in one multi-line reply (an EHLO reply has ~15; bounded against floods).
pub const MAX_REPLY_LINES: usize = 128;

/// An RFC 3463 enhanced status code such as `5.1.1` or `5.2.251`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `c.sss.ddd` at the start of `s`; returns the code and the bytes consumed
    /// (not counting a following space). The class must be 2, 4 or 5.
    pub fn parse_prefix(s: &str) -> Option<(Self, usize)> {
        let b = s.as_bytes();
        let class = *b.first()?;
        if !matches!(class, b'2' | b'4' | b'5') || b.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, n1) = digits(&b[2..])?;
        let pos = 2 + n1;
        if b.get(pos) != Some(&b'.') {
            return None;
        }
        let (detail, n2) = digits(&b[pos + 1..])?;
        let end = pos + 1 + n2;
        // The code must be followed by a space or the end of the line.
        match b.get(end) {
            None | Some(b' ') => Some((Self::new(class - b'0', subject, detail), end)),
            _ => None,
        }
    }
}

fn digits(b: &[u8]) -> Option<(u16, usize)> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 3 {
        return None;
    }
    let v = b[..n]
        .iter()
        .fold(0u16, |acc, c| acc * 10 + u16::from(c - b'0'));
    Some((v, n))
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line with the code (and the enhanced code, when every line
    /// carried the same one) stripped.
    pub lines: Vec<String>,
}

/// Why bytes from a peer are not a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line does not start with a 3-digit code 2xx-5xx: {0:?}")]
    BadCode(String),
    #[error("multi-line reply changes its code from {first} to {other}")]
    MixedCodes { first: u16, other: u16 },
    #[error("reply line longer than {MAX_REPLY_LINE} octets")]
    LineTooLong,
    #[error("reply has more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("bare CR or LF in reply")]
    BareLineEnding,
}

impl Reply {
    /// A reply with one line of text and an enhanced code.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without enhanced code (greeting, or a provider that sends none).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    pub fn class(&self) -> u16 {
        self.code / 100
    }
    pub fn is_positive(&self) -> bool {
        matches!(self.class(), 2 | 3)
    }
    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }
    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// All lines joined by a space: what the classifier's regexes look at.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The reply as the wire wants it: `250-...\r\n` continuation lines and a final
    /// `250 ...\r\n`, the enhanced code repeated on every line (RFC 2034). Any CR or LF
    /// inside a text line is replaced by a space, so a reply can never inject a line.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 * self.lines.len().max(1));
        self.write_wire(&mut out);
        out
    }

    pub fn write_wire(&self, out: &mut Vec<u8>) {
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            // Written in place (io::Write for Vec cannot fail): no String per line.
            let _ = write!(out, "{:03}{}", self.code, sep);
            if let Some(e) = self.enhanced {
                let _ = write!(out, "{e}");
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            let text = line.as_bytes();
            if memchr::memchr2(b'\r', b'\n', text).is_none() {
                out.extend_from_slice(text);
            } else {
                out.extend(
                    text.iter()
                        .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
                );
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Parses one complete reply from the start of `buf`. Returns `Ok(None)` when more
    /// bytes are needed, or the reply and the number of bytes it used. Lines must end in
    /// CRLF; a bare LF is tolerated from providers only as a line end (some old servers
    /// send it), a bare CR is an error.
    pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
        let mut pos = 0;
        let mut code = 0u16;
        let mut raw: Vec<&str> = Vec::new();
        loop {
            let rest = &buf[pos..];
            let Some(nl) = rest.iter().position(|&c| c == b'\n') else {
                if rest.len() > MAX_REPLY_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if nl > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            let mut line = &rest[..nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.contains(&b'\r') {
                return Err(ReplyError::BareLineEnding);
            }
            pos += nl + 1;
            let text = String::from_utf8_lossy(line);
            let (c, last, body) =
                split_code(line).ok_or_else(|| ReplyError::BadCode(text.into_owned()))?;
            if raw.is_empty() {
                code = c;
            } else if c != code {
                return Err(ReplyError::MixedCodes {
                    first: code,
                    other: c,
                });
            }
            // Safe: split_code only accepts ASCII up to `body`; the rest may be any
            // UTF-8 (SMTPUTF8 servers) or not; we keep it lossily.
            raw.push(body);
            if raw.len() > MAX_REPLY_LINES {
                return Err(ReplyError::TooManyLines);
            }
            if last {
                break;
            }
        }
        Ok(Some((Self::from_parts(code, &raw), pos)))
    }

    fn from_parts(code: u16, raw: &[&str]) -> Reply {
        // The enhanced code counts only if the first line has one whose class matches
        // the reply's class (a 250 with "5.0.0" text is not a 5.0.0 reply).
        let first = raw
            .first()
            .and_then(|l| EnhancedCode::parse_prefix(l))
            .filter(|(e, _)| u16::from(e.class) == code / 100);
        let enhanced = first.map(|(e, _)| e);
        let lines = raw
            .iter()
            .map(|l| match EnhancedCode::parse_prefix(l) {
                Some((e, n)) if Some(e) == enhanced => l[n..].trim_start().to_string(),
                _ => (*l).to_string(),
            })
            .collect();
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    /// Parses a reply given by a person (`mailvalve explain "550 5.1.1 ..."`): lines may be
    /// separated by LF or CRLF, the final CRLF may be missing, and a bare code (`"354"`)
    /// is allowed.
    pub fn parse_lenient(s: &str) -> Result<Reply, ReplyError> {
        let mut wire = String::new();
        let lines: Vec<&str> = s.trim().lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let l = l.trim_end();
            if l.len() == 3 {
                let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                wire.push_str(&format!("{l}{sep}\r\n"));
            } else {
                wire.push_str(l);
                wire.push_str("\r\n");
            }
        }
        match Reply::parse(wire.as_bytes())? {
            Some((r, _)) => Ok(r),
            None => Err(ReplyError::BadCode(s.to_string())),
        }
    }
}

/// `"250-text"` → (250, false, "text"); `"250 text"` / `"250"` → (250, true, ...).
fn split_code(line: &[u8]) -> Option<(u16, bool, &str)> {
    let (d, rest) = line.split_at_checked(3)?;
    if !(b'2'..=b'5').contains(&d[0]) || !d[1].is_ascii_digit() || !d[2].is_ascii_digit() {
        return None;
    }
    let code = u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0');
    let (last, body) = match rest.first() {
        None => (true, &rest[..0]),
        Some(b' ') => (true, &rest[1..]),
        Some(b'-') => (false, &rest[1..]),
        Some(_) => return None,
    };
    // Non-UTF-8 text from a provider is not an error; replace what cannot be read.
    let body = std::str::from_utf8(body).unwrap_or("");
    Some((code, last, body))
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                write!(f, " /")?;
            }
            if !l.is_empty() {
                write!(f, " {l}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Reply {
        let (r, n) = Reply::parse(s.as_bytes()).unwrap().unwrap();
        assert_eq!(n, s.len());
        r
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let r = one("550 5.1.1 <x@example.org>: user unknown\r\n");
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(r.lines, vec!["<x@example.org>: user unknown"]);
    }

    #[test]
    fn three_digit_detail() {
        let r = one("550 5.2.251 Sender throttled\r\n");
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 2, 251)));
    }

    #[test]
    fn multi_line_and_partial() {
        let s = "550-5.1.1 The email account that you tried to reach does\r\n550-5.1.1 not exist.\r\n550 5.1.1 https://support\r\n";
        assert_eq!(Reply::parse(&s.as_bytes()[..30]).unwrap(), None);
        let r = one(s);
        assert_eq!(r.lines.len(), 3);
        assert_eq!(r.lines[1], "not exist.");
    }

    #[test]
    fn class_mismatch_is_not_enhanced() {
        let r = one("250 5.0.0 odd but fine\r\n");
        assert_eq!(r.enhanced, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "hello\r\n",
            "6xx\r\n",
            "600 no\r\n",
            "12\r\n",
            "550x\r\n",
            "\r\n",
            "5a0 x\r\n",
        ] {
            assert!(Reply::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Reply::parse(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::MixedCodes { .. })
        ));
        assert!(Reply::parse(&[b'2'; 5000]).is_err());
    }

    #[test]
    fn wire_round_trip() {
        let r = Reply {
            code: 250,
            enhanced: Some(EnhancedCode::new(2, 0, 0)),
            lines: vec!["a".into(), "b\r\nINJECT".into()],
        };
        let w = r.to_wire();
        assert_eq!(w, b"250-2.0.0 a\r\n250 2.0.0 b  INJECT\r\n");
        assert_eq!(one(std::str::from_utf8(&w).unwrap()).lines[0], "a");
    }

    #[test]
    fn lenient() {
        assert_eq!(Reply::parse_lenient("354").unwrap().code, 354);
        let r = Reply::parse_lenient("550-5.1.1 a\n550 5.1.1 b").unwrap();
        assert_eq!(r.lines, vec!["a", "b"]);
    }
}
