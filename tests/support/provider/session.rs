//! One connection to the scripted provider: admission against its connection limit,
//! TLS (implicit or after STARTTLS), and the command loop that answers per the script.

use super::{Log, ProviderBuilder, Received};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

struct ConnGuard(Arc<Mutex<Log>>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        l.current -= 1;
    }
}

pub(super) async fn serve(mut tcp: TcpStream, script: Arc<ProviderBuilder>, log: Arc<Mutex<Log>>) {
    let admitted = {
        let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
        let id = l.connections_total;
        l.connections_total += 1;
        let over_rate = script.connection_rate.is_some_and(|(n, window)| {
            let now = tokio::time::Instant::now();
            let unit = match l.rate_unit {
                Some((start, k)) if now.duration_since(start) < window => (start, k + 1),
                _ => (now, 1),
            };
            l.rate_unit = Some(unit);
            unit.1 > n
        });
        if over_rate || script.max_connections.is_some_and(|m| l.current >= m) {
            l.refused += 1;
            None
        } else {
            l.current += 1;
            l.max_concurrent = l.max_concurrent.max(l.current);
            Some(id)
        }
    };
    let Some(conn) = admitted else {
        let refusal: &[u8] = if script.connection_rate.is_some() {
            b"421 4.7.0 provider.test Error: too many connections from 127.0.0.1\r\n"
        } else {
            b"421 4.7.0 Too many connections, try again later\r\n"
        };
        let _ = tcp.write_all(refusal).await;
        let _ = tcp.shutdown().await;
        return;
    };
    let _guard = ConnGuard(log.clone());
    let mut st = Session {
        conn,
        script,
        log,
        buf: Vec::new(),
        segment: 0,
        authed: false,
        tls: false,
    };
    if st.script.implicit_tls && st.script.tls_stall {
        drain(&mut tcp).await;
        return;
    }
    if st.script.implicit_tls {
        let Some(cfg) = st.script.tls.clone() else {
            return;
        };
        let Ok(mut s) = TlsAcceptor::from(cfg).accept(tcp).await else {
            return;
        };
        st.tls = true;
        if write_line(&mut s, &st.script.greeting.clone())
            .await
            .is_err()
        {
            return;
        }
        st.run(&mut s).await;
        return;
    }
    if write_line(&mut tcp, &st.script.greeting.clone())
        .await
        .is_err()
    {
        return;
    }
    if !st.script.greeting.starts_with('2') {
        return;
    }
    if st.run(&mut tcp).await != Outcome::StartTls {
        return;
    }
    if st.script.tls_stall {
        drain(&mut tcp).await;
        return;
    }
    let Some(cfg) = st.script.tls.clone() else {
        return;
    };
    let Ok(mut s) = TlsAcceptor::from(cfg).accept(tcp).await else {
        return;
    };
    st.tls = true;
    st.buf.clear(); // plaintext pipelined after STARTTLS is discarded
    st.authed = false;
    st.run(&mut s).await;
}

#[derive(PartialEq, Eq)]
enum Outcome {
    Closed,
    StartTls,
}

struct Session {
    conn: usize,
    script: Arc<ProviderBuilder>,
    log: Arc<Mutex<Log>>,
    buf: Vec<u8>,
    segment: usize,
    authed: bool,
    tls: bool,
}

/// Reads and discards until the peer closes (a provider that never answers).
async fn drain(tcp: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = tcp.read(&mut chunk).await {
        if n == 0 {
            return;
        }
    }
}

async fn write_line<S: AsyncWrite + Unpin>(s: &mut S, line: &str) -> std::io::Result<()> {
    let mut out = line.as_bytes().to_vec();
    out.extend_from_slice(b"\r\n");
    s.write_all(&out).await?;
    s.flush().await
}

impl Session {
    /// Next CRLF-terminated line (without CRLF), or None on EOF/error.
    async fn read_line<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.segment += 1;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn record(&self, line: &str) {
        let mut l = self.log.lock().unwrap_or_else(|p| p.into_inner());
        l.commands.push(Received {
            conn: self.conn,
            segment: self.segment,
            line: line.to_string(),
            tls: self.tls,
        });
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, s: &mut S) -> Outcome {
        let script = self.script.clone();
        loop {
            let Some(line) = self.read_line(s).await else {
                return Outcome::Closed;
            };
            self.record(&line);
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("").to_string();
            if let Some((v, lines, len)) = &script.flood {
                if *v == verb {
                    if !self.flood(s, *lines, *len).await {
                        return Outcome::Closed;
                    }
                    continue;
                }
            }
            if let Some(line) = script.overrides.get(&verb) {
                if write_line(s, line).await.is_err() {
                    return Outcome::Closed;
                }
                if line.starts_with("421") {
                    return Outcome::Closed;
                }
                continue;
            }
            let reply: String = match verb.as_str() {
                "EHLO" if !script.ehlo => "502 5.5.2 EHLO not supported".into(),
                "EHLO" => {
                    let mut caps = vec!["provider.test greets you".to_string()];
                    if script.pipelining {
                        caps.push("PIPELINING".into());
                    }
                    if script.size > 0 {
                        caps.push(format!("SIZE {}", script.size));
                    }
                    caps.push("8BITMIME".into());
                    caps.push("ENHANCEDSTATUSCODES".into());
                    if script.tls.is_some() && !self.tls {
                        caps.push("STARTTLS".into());
                    }
                    if (script.auth.is_some() || script.oauth.is_some())
                        && !script.auth_mechs.is_empty()
                    {
                        caps.push(format!("AUTH {}", script.auth_mechs.join(" ")));
                    }
                    caps.extend(script.extra_caps.iter().cloned());
                    let n = caps.len();
                    caps.iter()
                        .enumerate()
                        .map(|(i, c)| format!("250{}{c}", if i + 1 == n { ' ' } else { '-' }))
                        .collect::<Vec<_>>()
                        .join("\r\n")
                }
                "HELO" => "250 provider.test".into(),
                "STARTTLS" if script.tls.is_none() || self.tls => {
                    "454 4.7.0 TLS not available".into()
                }
                "STARTTLS" => {
                    let mut out = b"220 2.0.0 Ready to start TLS\r\n".to_vec();
                    if let Some(inj) = &script.inject_after_starttls {
                        out.extend_from_slice(inj);
                    }
                    if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
                        return Outcome::Closed;
                    }
                    return Outcome::StartTls;
                }
                "AUTH" => match self.auth(s, &line).await {
                    Some(r) => r,
                    None => return Outcome::Closed,
                },
                "MAIL" if (script.auth.is_some() || script.oauth.is_some()) && !self.authed => {
                    "530 5.7.0 Authentication required".into()
                }
                "MAIL" => script.mail_reply.clone(),
                "RCPT" => {
                    let addr = line
                        .split_once('<')
                        .and_then(|(_, r)| r.split_once('>'))
                        .map(|(a, _)| a.to_ascii_lowercase())
                        .unwrap_or_default();
                    if script.rcpt_silent.contains(&addr) {
                        continue;
                    }
                    script
                        .rcpt_replies
                        .get(&addr)
                        .cloned()
                        .unwrap_or_else(|| script.rcpt_default.clone())
                }
                "DATA" if !script.data_reply.starts_with("354") => script.data_reply.clone(),
                "DATA" => {
                    if write_line(s, &script.data_reply).await.is_err() {
                        return Outcome::Closed;
                    }
                    let mut msg = Vec::new();
                    loop {
                        let Some(l) = self.read_line(s).await else {
                            return Outcome::Closed;
                        };
                        if l == "." {
                            break;
                        }
                        let l = l.strip_prefix('.').unwrap_or(&l);
                        msg.extend_from_slice(l.as_bytes());
                        msg.extend_from_slice(b"\r\n");
                    }
                    self.log
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .messages
                        .push(msg);
                    if script.drop_after_data
                        || script
                            .drop_switch
                            .as_ref()
                            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
                    {
                        return Outcome::Closed;
                    }
                    if let Some((v, lines, len)) = &script.flood {
                        if v == "." {
                            if !self.flood(s, *lines, *len).await {
                                return Outcome::Closed;
                            }
                            continue;
                        }
                    }
                    if let Some(d) = script.final_delay {
                        tokio::time::sleep(d).await;
                    }
                    script.final_reply.clone()
                }
                "RSET" => "250 2.0.0 Reset OK".into(),
                "NOOP" => "250 2.0.0 OK".into(),
                "QUIT" => {
                    let _ = write_line(s, "221 2.0.0 Bye").await;
                    let _ = s.shutdown().await;
                    return Outcome::Closed;
                }
                _ => "500 5.5.2 Command not recognized".into(),
            };
            if write_line(s, &reply).await.is_err() {
                return Outcome::Closed;
            }
            if reply.starts_with("421") {
                return Outcome::Closed;
            }
        }
    }

    /// One reply of `lines` lines of `len` octets, a line at a time; false when the
    /// client stopped reading (counted as an aborted write).
    async fn flood<S: AsyncWrite + Unpin>(&mut self, s: &mut S, lines: usize, len: usize) -> bool {
        let text = "x".repeat(len);
        for i in 0..lines {
            let sep = if i + 1 == lines { ' ' } else { '-' };
            let line = format!("250{sep}{text}\r\n");
            if s.write_all(line.as_bytes()).await.is_err() {
                self.log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .aborted_writes += 1;
                return false;
            }
            self.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .flood_lines_written += 1;
        }
        s.flush().await.is_ok()
    }

    /// AUTH PLAIN [initial-response] or AUTH LOGIN; returns the final reply.
    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        s: &mut S,
        line: &str,
    ) -> Option<String> {
        let mut words = line.split(' ').skip(1);
        let mech = words.next().unwrap_or("").to_ascii_uppercase();
        if let Some(check) = self.script.oauth.clone() {
            if !self.script.auth_mechs.contains(&mech) {
                return Some("504 5.5.4 Unrecognized authentication type".into());
            }
            let decoded = B64
                .decode(words.next().unwrap_or("").trim())
                .unwrap_or_default();
            if check(&mech, &decoded) {
                self.authed = true;
                return Some("235 2.7.0 Authentication successful".into());
            }
            // Google's error challenge: {"status":"401","schemes":"Bearer","scope":"..."}
            let challenge = B64.encode(
                br#"{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}"#,
            );
            write_line(s, &format!("334 {challenge}")).await.ok()?;
            let ack = self.read_line(s).await?;
            self.record(&ack);
            let want = if mech == "OAUTHBEARER" { "AQ==" } else { "" };
            if ack != want {
                return Some("501 5.5.2 Bad answer to the error challenge".into());
            }
            return Some("535 5.7.8 Username and Password not accepted".into());
        }
        let Some((user, pass)) = self.script.auth.clone() else {
            return Some("502 5.5.1 AUTH not available".into());
        };
        let ok = match mech.as_str() {
            "PLAIN" => {
                let blob = match words.next() {
                    Some(b) => b.to_string(),
                    None => {
                        write_line(s, "334 ").await.ok()?;
                        let l = self.read_line(s).await?;
                        self.record(&l);
                        l
                    }
                };
                let want = format!("\0{user}\0{pass}");
                B64.decode(blob.trim()).ok().as_deref() == Some(want.as_bytes())
            }
            "LOGIN" => {
                write_line(s, "334 VXNlcm5hbWU6").await.ok()?;
                let u = self.read_line(s).await?;
                self.record(&u);
                write_line(s, "334 UGFzc3dvcmQ6").await.ok()?;
                let p = self.read_line(s).await?;
                self.record(&p);
                B64.decode(u.trim()).ok().as_deref() == Some(user.as_bytes())
                    && B64.decode(p.trim()).ok().as_deref() == Some(pass.as_bytes())
            }
            _ => return Some("504 5.5.4 Unrecognized authentication type".into()),
        };
        if ok {
            self.authed = true;
            Some("235 2.7.0 Authentication successful".into())
        } else {
            Some("535 5.7.8 Authentication credentials invalid".into())
        }
    }
}
