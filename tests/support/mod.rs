//! Shared helpers for integration tests. Each test binary uses only part of it.
#![allow(dead_code)]

pub mod capture;
pub mod client;
pub mod harness;
pub mod inbound;
pub mod postfix;
pub mod provider;
pub mod replies;
pub mod sink;
pub mod webhook_sink;
