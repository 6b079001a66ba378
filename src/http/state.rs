//! What every route of the HTTP listener shares: the handle on the running relay, the
//! listener's own settings (token, allowed host names, bound address) and the recent
//! history the dashboard draws.
//!
//! It must never hold the token anywhere but here, and never hand it to a response.

use super::history::History;
use crate::relay::RelayHandle;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub handle: RelayHandle,
    /// `http.token`, when set: required as `Authorization: Bearer ...`.
    pub token: Option<Arc<str>>,
    /// `http.allowed_hosts`: further names the Host header may carry.
    pub allowed_hosts: Arc<[String]>,
    /// Where the listener is bound.
    pub local: SocketAddr,
    pub history: Arc<History>,
}
