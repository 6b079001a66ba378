//! Command-line framing for the inbound side: find one CRLF-terminated line, refusing a
//! bare CR or a bare LF anywhere (no exemption for local clients: a mailer that sends
//! them is what SMTP smuggling exploits) and lines over the limit.
//!
//! Hand-written rather than smtp-proto's `LineReceiver`, which accepts a bare LF as a
//! line end — the very ambiguity this module exists to refuse.
//!
//! It must never accept a line that ends in anything but CRLF.

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line too long")]
    TooLong,
    #[error("bare CR in line")]
    BareCr,
    #[error("bare LF in line")]
    BareLf,
    #[error("NUL in line")]
    Nul,
}

/// Length (including CRLF) of the first complete line of `buf`, `Ok(None)` if more
/// bytes are needed. Errors are final for the connection: framing is lost.
pub fn find_line(buf: &[u8], max_len: usize) -> Result<Option<usize>, LineError> {
    for (i, &c) in buf.iter().enumerate() {
        match c {
            b'\n' => {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(LineError::BareLf);
                }
                if i + 1 > max_len {
                    return Err(LineError::TooLong);
                }
                return Ok(Some(i + 1));
            }
            b'\r' => {
                if let Some(&next) = buf.get(i + 1) {
                    if next != b'\n' {
                        return Err(LineError::BareCr);
                    }
                }
            }
            0 => return Err(LineError::Nul),
            _ => {}
        }
        if i + 1 >= max_len && buf.get(i + 1) != Some(&b'\n') {
            return Err(LineError::TooLong);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(find_line(b"NOOP\r\nQUIT\r\n", 512), Ok(Some(6)));
        assert_eq!(find_line(b"NOOP\r", 512), Ok(None));
        assert_eq!(find_line(b"NOOP", 512), Ok(None));
        assert_eq!(find_line(b"NOOP\nQUIT\r\n", 512), Err(LineError::BareLf));
        assert_eq!(find_line(b"NOOP\rQUIT\r\n", 512), Err(LineError::BareCr));
        assert_eq!(find_line(b"NO\0OP\r\n", 512), Err(LineError::Nul));
    }

    #[test]
    fn length_limit_counts_crlf() {
        let mut ok = vec![b'a'; 510];
        ok.extend_from_slice(b"\r\n");
        assert_eq!(find_line(&ok, 512), Ok(Some(512)));
        let mut long = vec![b'a'; 511];
        long.extend_from_slice(b"\r\n");
        assert_eq!(find_line(&long, 512), Err(LineError::TooLong));
        // An unterminated line is refused as soon as it cannot fit any more.
        assert_eq!(find_line(&[b'a'; 600], 512), Err(LineError::TooLong));
    }
}
