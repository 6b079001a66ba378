//! Inbound ESMTP server.
pub mod relay;
pub mod suppress;
