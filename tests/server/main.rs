//! Integration tests for the inbound ESMTP server over real TCP on 127.0.0.1: a raw
//! socket client for the edge cases, lettre as a real mailer, tokio-rustls for STARTTLS,
//! and a recording `Relay` standing in for the provider. Every wait is bounded.
//!
//! One file per section; the recording relay, the harness and the raw client are in
//! `tests/support/inbound.rs`.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod basics;
mod limits;
mod mailer;
mod shutdown;
mod slow_clients;
mod smuggling;
mod starttls;

use mailvalve::config::ServerConfig;
use mailvalve::server::Server;
use mailvalve::smtp::{EnhancedCode, Envelope, Reply};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use support::inbound::*;
