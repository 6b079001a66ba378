//! Reading SMTP replies off a raw tokio connection, for tests that drive mailvalve's
//! listener by hand (pipelined commands, exact reply counts). Bounded: every read waits
//! at most [`WAIT`] in all, and a closed connection fails the test with what was read.

use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// The longest a test waits for the replies it asked for.
pub const WAIT: Duration = Duration::from_secs(15);

/// Reads until `out` holds `n` final reply lines (continuation lines `250-…` are
/// skipped); `buf` keeps what was read past the last line for the next call.
pub async fn read_replies(s: &mut TcpStream, buf: &mut Vec<u8>, out: &mut Vec<String>, n: usize) {
    let deadline = Instant::now() + WAIT;
    while out.len() < n {
        while let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..pos]).to_string();
            buf.drain(..pos + 2);
            if line.as_bytes().get(3) != Some(&b'-') {
                out.push(line);
            }
        }
        if out.len() >= n {
            break;
        }
        let mut chunk = [0u8; 4096];
        let k = timeout(deadline - Instant::now(), s.read(&mut chunk))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(k > 0, "connection closed; replies so far: {out:?}");
        buf.extend_from_slice(&chunk[..k]);
    }
}
