//! Inbound ESMTP server.
