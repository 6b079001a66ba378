//! Inbound ESMTP server.
pub mod relay;
