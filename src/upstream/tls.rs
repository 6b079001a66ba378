//! The TLS client configuration for the provider connection: TLS 1.2 minimum, the
//! `ring` provider, system roots (or webpki-roots when the system has none) plus an
//! optional CA file.
//!
//! This module must never skip certificate verification unless the configuration says
//! `tls_verify = false`; that case is logged loudly by the client at every connect.

use super::error::UpstreamError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the connector. `verify = false` installs a verifier that accepts any
/// certificate (test servers only).
pub fn connector(verify: bool, ca_file: Option<&Path>) -> Result<TlsConnector, UpstreamError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let config = if verify {
        builder
            .with_root_certificates(roots(ca_file)?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// System roots (webpki-roots if none are found) plus every certificate in `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, UpstreamError> {
    let mut store = crate::net::system_roots();
    if let Some(path) = ca_file {
        let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
            UpstreamError::Tls(format!("cannot read ca_file {}: {e}", path.display()))
        })?;
        let mut n = 0;
        for cert in iter {
            let cert = cert.map_err(|e| {
                UpstreamError::Tls(format!(
                    "bad certificate in ca_file {}: {e}",
                    path.display()
                ))
            })?;
            store.add(cert).map_err(|e| {
                UpstreamError::Tls(format!(
                    "unusable certificate in ca_file {}: {e}",
                    path.display()
                ))
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(UpstreamError::Tls(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            )));
        }
    }
    Ok(store)
}

/// The name the certificate must match: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, UpstreamError> {
    ServerName::try_from(host.to_string())
        .map_err(|e| UpstreamError::Tls(format!("invalid TLS server name {host:?}: {e}")))
}

/// `tls_verify = false`: accepts any certificate, still checks handshake signatures so
/// the session keys are at least bound to the presented key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
