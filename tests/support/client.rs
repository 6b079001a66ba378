//! A blocking SMTP client over `TcpStream`, for interop tests that assert exact reply
//! codes: the mailer of `tests/interop/` and `tests/interop_queue/`, and the raw
//! connections of `tests/interop_postfix.rs`. Every read and write has a timeout and a
//! reply is at most `MAX_REPLY_LINES` lines, so no call can hang a test.
//!
//! [`allow_open_files`] lets a test open many connections at once.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A reply: its code and its full text (all lines, without the final line end).
pub type Reply = (u16, String);

/// Longest reply `Client::reply` reads before giving up.
pub const MAX_REPLY_LINES: usize = 200;

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects to `127.0.0.1:port` without reading the greeting.
    pub fn connect(port: u16) -> io::Result<Client> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Connects, expects the 220 greeting and a 250 to `EHLO mailer.test`: a session
    /// ready for `send`.
    pub fn session(port: u16) -> io::Result<Client> {
        let mut c = Client::connect(port)?;
        let (code, text) = c.reply()?;
        if code != 220 {
            return Err(io::Error::other(format!("greeting {text}")));
        }
        let (code, text) = c.cmd("EHLO mailer.test")?;
        if code != 250 {
            return Err(io::Error::other(format!("EHLO {text}")));
        }
        Ok(c)
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> io::Result<Reply> {
        let mut text = String::new();
        for _ in 0..MAX_REPLY_LINES {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed; got so far: {text:?}"),
                ));
            }
            text.push_str(&line);
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad reply line {line:?}"),
                    )
                })?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text.trim_end().to_string()));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reply of over {MAX_REPLY_LINES} lines"),
        ))
    }

    /// Sends `line` and CRLF, without waiting for a reply.
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())
    }

    /// Sends a command and reads its reply.
    pub fn cmd(&mut self, line: &str) -> io::Result<Reply> {
        self.write_line(line)?;
        self.reply()
    }

    /// One transaction. `Ok` holds the reply that ended it: the end-of-data reply, or
    /// the refusal of MAIL / RCPT / DATA (then the transaction is reset). `message` must
    /// already be dot-stuffed and end with CRLF.
    pub fn send(&mut self, from: &str, to: &str, message: &str) -> io::Result<Reply> {
        for line in [format!("MAIL FROM:<{from}>"), format!("RCPT TO:<{to}>")] {
            let r = self.cmd(&line)?;
            if r.0 != 250 {
                self.cmd("RSET")?;
                return Ok(r);
            }
        }
        let r = self.cmd("DATA")?;
        if r.0 != 354 {
            self.cmd("RSET")?;
            return Ok(r);
        }
        self.writer.write_all(message.as_bytes())?;
        self.writer.write_all(b".\r\n")?;
        self.reply()
    }
}

impl Client {
    /// One transaction to several recipients. `Ok` holds the reply that ended it: the
    /// end-of-data reply, or the first refusal (of MAIL, any RCPT, or DATA; then the
    /// transaction is reset). `message` must already be dot-stuffed and end with CRLF.
    pub fn send_many(&mut self, from: &str, to: &[String], message: &str) -> io::Result<Reply> {
        let lines = std::iter::once(format!("MAIL FROM:<{from}>"))
            .chain(to.iter().map(|t| format!("RCPT TO:<{t}>")));
        for line in lines {
            let r = self.cmd(&line)?;
            if r.0 != 250 {
                self.cmd("RSET")?;
                return Ok(r);
            }
        }
        let r = self.cmd("DATA")?;
        if r.0 != 354 {
            self.cmd("RSET")?;
            return Ok(r);
        }
        self.writer.write_all(message.as_bytes())?;
        self.writer.write_all(b".\r\n")?;
        self.reply()
    }
}

/// Raises this process's soft limit on open files to at least `n` (children started
/// afterwards inherit it), for tests that hold many connections at once; the default
/// soft limit is often 1024. Panics, naming the limit, if the hard limit is lower.
#[cfg(unix)]
pub fn allow_open_files(n: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            assert!(
                lim.rlim_max >= n,
                "this test needs {n} open files; the hard limit (ulimit -Hn) is {}",
                lim.rlim_max
            );
            lim.rlim_cur = n;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}
