//! An in-process OAuth2 token endpoint for tests: a tokio TCP server on `127.0.0.1:0`
//! speaking just enough HTTP/1.1 (one request per connection, `Connection: close`) to
//! answer the refresh-token grant (RFC 6749 6), the device-authorization request and
//! the device-code grant (RFC 8628), and the authorization-code grant with PKCE. It issues access tokens `AT-1`, `AT-2`, ...,
//! remembers which are valid, and can expire or revoke them on command, so a scripted
//! SMTP provider can ask it whether a token is good.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
pub struct State {
    /// Refresh tokens the endpoint honours.
    pub refresh_tokens: HashSet<String>,
    /// Access tokens issued and still valid.
    pub valid: HashSet<String>,
    pub issued: usize,
    /// `expires_in` of every issued token.
    pub lifetime: u64,
    /// Every request body, decoded as form fields.
    pub requests: Vec<HashMap<String, String>>,
    /// Device flow: answers `authorization_pending` this many more times, then grants.
    pub pending_polls: usize,
    /// Device flow: answer `slow_down` once first.
    pub slow_down_once: bool,
    /// Device flow: the person declines.
    pub deny: bool,
    /// A refresh returns a rotated refresh token.
    pub rotate: bool,
    pub client_id: String,
    /// Device flow: the polling interval announced (seconds).
    pub interval: u64,
    /// Browser sign-in: the PKCE challenge the authorization address carried (the test,
    /// playing the authorization server, sets it); the code grant must bring its verifier.
    pub pkce_challenge: Option<String>,
}

#[derive(Clone)]
pub struct TokenEndpoint {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TokenEndpoint {
    /// Honours `refresh` as a refresh token for `client_id`; tokens live `lifetime` s.
    pub async fn start(client_id: &str, refresh: &str, lifetime: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            refresh_tokens: [refresh.to_string()].into(),
            lifetime,
            client_id: client_id.into(),
            interval: 5,
            ..State::default()
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let Some((path, body)) = read_request(&mut sock).await else {
                        return;
                    };
                    let (status, json) = answer(&st, &path, &body);
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                        json.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self {
            addr,
            state,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn device_url(&self) -> String {
        format!("http://{}/device", self.addr)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The refresh token is revoked (and the issued access tokens with it).
    pub fn revoke(&self) {
        let mut s = self.lock();
        s.refresh_tokens.clear();
        s.valid.clear();
    }

    pub fn issued(&self) -> usize {
        self.lock().issued
    }

    pub fn grant_types(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .map(|r| r.get("grant_type").cloned().unwrap_or_default())
            .collect()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 65536 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split(' ').nth(1)?.to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some((
        path,
        String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
    ))
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn err(code: &str) -> (&'static str, String) {
    (
        "400 Bad Request",
        format!(r#"{{"error":"{code}","error_description":"test endpoint says {code}"}}"#),
    )
}

fn answer(st: &Mutex<State>, path: &str, body: &str) -> (&'static str, String) {
    let f = form(body);
    let mut s = st.lock().unwrap();
    s.requests.push(f.clone());
    if f.get("client_id") != Some(&s.client_id) {
        return err("invalid_client");
    }
    if path == "/device" {
        return (
            "200 OK",
            format!(
                r#"{{"device_code":"DEVICE-CODE-1","user_code":"ABCD-EFGH","verification_uri":"https://login.example/device","expires_in":900,"interval":{},"message":"To sign in, open https://login.example/device and enter ABCD-EFGH."}}"#,
                s.interval
            ),
        );
    }
    match f.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {
            let rt = f.get("refresh_token").cloned().unwrap_or_default();
            if !s.refresh_tokens.contains(&rt) {
                return err("invalid_grant");
            }
            s.issued += 1;
            let token = format!("AT-{}", s.issued);
            s.valid.insert(token.clone());
            let rotated = if s.rotate {
                let new = format!("RT-rotated-{}", s.issued);
                s.refresh_tokens.insert(new.clone());
                format!(r#","refresh_token":"{new}""#)
            } else {
                String::new()
            };
            (
                "200 OK",
                format!(
                    r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{}{rotated}}}"#,
                    s.lifetime
                ),
            )
        }
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            if f.get("device_code").map(String::as_str) != Some("DEVICE-CODE-1") {
                return err("invalid_grant");
            }
            if s.deny {
                return err("access_denied");
            }
            if s.slow_down_once {
                s.slow_down_once = false;
                return err("slow_down");
            }
            if s.pending_polls > 0 {
                s.pending_polls -= 1;
                return err("authorization_pending");
            }
            s.issued += 1;
            let token = format!("AT-{}", s.issued);
            s.valid.insert(token.clone());
            s.refresh_tokens.insert("RT-from-device".into());
            (
                "200 OK",
                format!(
                    r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{},"refresh_token":"RT-from-device"}}"#,
                    s.lifetime
                ),
            )
        }
        Some("authorization_code") => {
            if f.get("code").map(String::as_str) != Some("AUTH-CODE-1") {
                return err("invalid_grant");
            }
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            if s.pkce_challenge.as_deref() != Some(s256(&verifier).as_str()) {
                return err("invalid_grant");
            }
            if !f
                .get("redirect_uri")
                .is_some_and(|r| r.starts_with("http://127.0.0.1:"))
            {
                return err("invalid_request");
            }
            s.issued += 1;
            let token = format!("AT-{}", s.issued);
            s.valid.insert(token.clone());
            s.refresh_tokens.insert("RT-from-browser".into());
            (
                "200 OK",
                format!(
                    r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{},"refresh_token":"RT-from-browser"}}"#,
                    s.lifetime
                ),
            )
        }
        _ => err("unsupported_grant_type"),
    }
}

/// RFC 7636 S256, computed independently of mailvalve's code (ring directly).
pub fn s256(verifier: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}
