//! EHLO and HELO: start (or restart) the session and advertise what it may use.
//!
//! Must never advertise STARTTLS once TLS is active or when no certificate is
//! configured, nor AUTH on a public listener before TLS (RFC 4954 4: no plaintext
//! passwords over the network). EHLO/HELO in the middle of a transaction resets it
//! (RFC 5321 4.1.4).

use super::replies;
use super::session::Session;
use super::{Relay, RelayTransaction};
use crate::smtp::Reply;

impl<R: Relay> Session<R> {
    pub(crate) async fn handle_ehlo(&mut self, host: String) {
        self.reset_transaction().await;
        self.helo = Some(host);
        let cfg = &self.shared.cfg;
        let mut lines = vec![
            cfg.hostname.clone(),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.shared.max_message_size()),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.shared.tls.is_some() && !self.stream.is_tls() {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() && self.user.is_none() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        self.reply(Reply {
            code: 250,
            enhanced: None,
            lines,
        });
    }

    pub(crate) async fn handle_helo(&mut self, host: String) {
        self.reset_transaction().await;
        self.helo = Some(host);
        self.reply(replies::helo(&self.shared.cfg.hostname));
    }

    /// AUTH can be used now: users are configured and, on a public listener, TLS is on.
    pub(crate) fn auth_offered(&self) -> bool {
        !self.shared.cfg.users.is_empty() && (!self.shared.public || self.stream.is_tls())
    }

    /// EHLO/HELO: the transaction (if any) ends, as with RSET. A relay that outlives
    /// the shutdown grace loses its transaction (dropped, connection closed).
    async fn reset_transaction(&mut self) {
        self.failed_mail = None;
        if let Some(t) = self.tx.take() {
            let _ = self.shared.in_flight(t.tx.end()).await;
        }
    }
}
