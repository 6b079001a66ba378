//! STARTTLS (RFC 3207): the rustls acceptor built from the configured PEM certificate
//! and key, the connection type that is plain TCP before and TLS after, and the verb.
//!
//! Must never: execute or answer plaintext that was pipelined behind STARTTLS (it is
//! discarded — a man in the middle could have injected it), keep any session state from
//! before the handshake (EHLO, AUTH), or put key material into an error or a log line.

use super::replies;
use super::session::{Close, Session, Stream};
use super::{Relay, ServerError};
use crate::config::ServerTls;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Builds the STARTTLS acceptor (TLS 1.2 and 1.3, ring provider) from PEM files: the
/// certificate chain, leaf first, and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_tls_acceptor(tls: &ServerTls) -> Result<TlsAcceptor, ServerError> {
    let cert_err = |reason: String| ServerError::Tls {
        path: tls.cert.clone(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| ServerError::Tls {
        path: tls.key.clone(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| cert_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| cert_err(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl<R: Relay> Session<R> {
    pub(crate) async fn handle_starttls(&mut self) -> Result<(), Close> {
        let Some(acceptor) = self.shared.tls.clone() else {
            self.reply(replies::not_implemented());
            return Ok(());
        };
        if self.stream.is_tls() {
            self.reply(replies::tls_already_active());
            return Ok(());
        }
        if self.tx.is_some() {
            self.reply(replies::in_transaction());
            return Ok(());
        }
        self.reply(replies::ready_for_tls());
        self.flush().await?;
        // RFC 3207 4.2: anything the client sent after STARTTLS before the handshake is
        // not to be trusted. It is dropped unread, never executed or answered.
        if !self.rbuf.is_empty() {
            tracing::warn!(
                bytes = self.rbuf.len(),
                "discarding plaintext pipelined after STARTTLS"
            );
            self.rbuf.clear();
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(Close::Io);
        };
        // Bounded by the idle timeout, and before MAIL by the pre-MAIL deadline too.
        let mut until = tokio::time::Instant::now() + self.shared.cfg.idle_timeout;
        if let Some(pre_mail) = self.pre_mail_deadline {
            until = until.min(pre_mail);
        }
        let handshake = tokio::time::timeout_at(until, acceptor.accept(tcp));
        let tls = tokio::select! {
            r = handshake => r,
            _ = self.shared.shutdown.cancelled() => return Err(Close::Io),
        };
        match tls {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                // RFC 3207 4.2: forget everything learned before TLS.
                self.reset_after_tls();
                tracing::debug!("TLS established");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake failed");
                Err(Close::Io)
            }
            Err(_) => {
                tracing::info!("TLS handshake timed out");
                Err(Close::Io)
            }
        }
    }
}
