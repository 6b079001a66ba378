//! The byte stream under a provider connection: `net::MaybeTls` with rustls's client
//! stream (plain TCP, or TLS after STARTTLS / from the start for implicit TLS).
//!
//! It must never add behaviour of its own: reads and writes pass through.

pub(crate) type Stream =
    crate::net::MaybeTls<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
