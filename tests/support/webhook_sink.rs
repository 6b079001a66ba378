//! A one-request HTTP server standing in for a bounce webhook receiver: it answers 200
//! and hands over the request it got. Bounded by the caller's test timeout.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A one-request HTTP server that answers 200 and hands over the request it got.
pub async fn one_post() -> (String, tokio::task::JoinHandle<String>) {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/bounce", http.local_addr().unwrap());
    let got = tokio::spawn(async move {
        let (mut s, _) = http.accept().await.unwrap();
        let mut req = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            req.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len || n == 0 {
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    return text;
                }
            }
            assert!(n > 0, "client closed early");
        }
    });
    (url, got)
}
