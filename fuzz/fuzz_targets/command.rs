//! The inbound command path of a session: a buffer of client bytes framed into lines
//! (`smtp::line::find_line`, refusing bare CR/LF, NUL and over-long lines) and each line
//! parsed (`smtp::command::parse`). Never a panic; every refusal is a 5xx reply whose
//! wire form cannot inject a line; a framed line is exactly one CRLF-terminated line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailvalve::smtp::{command, line};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    loop {
        match line::find_line(buf, line::MAX_COMMAND_LINE) {
            Ok(Some(n)) => {
                assert!((2..=line::MAX_COMMAND_LINE).contains(&n) && n <= buf.len());
                let l = &buf[..n];
                assert!(l.ends_with(b"\r\n"));
                assert!(!l[..n - 2]
                    .iter()
                    .any(|&b| b == b'\r' || b == b'\n' || b == 0));
                match command::parse(l) {
                    Ok(cmd) => {
                        let _ = format!("{cmd:?}");
                    }
                    Err(reply) => {
                        assert!(reply.is_permanent(), "a refused command gets a 5xx");
                        common::reply_wire(&reply);
                    }
                }
                buf = &buf[n..];
            }
            Ok(None) => {
                assert!(buf.len() < line::MAX_COMMAND_LINE, "unterminated line kept");
                break;
            }
            Err(_) => break,
        }
    }
    // The parser on its own takes anything (unframed, unterminated).
    if let Err(reply) = command::parse(data) {
        common::reply_wire(&reply);
    }
});
