//! Counters of what the emulator saw and did.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A snapshot of the emulator's counters ([`Emulator::counters`](crate::Emulator::counters),
/// `GET /_emulator/counters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests to the IMDS token endpoint (including rejected and faulted ones).
    pub imds_requests: u64,
    /// Requests to the App Service identity endpoint.
    pub app_service_requests: u64,
    /// Requests to the Entra `/{tenant}/oauth2/v2.0/token` endpoint.
    pub entra_requests: u64,
    /// Access tokens issued by any endpoint (including faulty tokens).
    pub tokens_issued: u64,
    /// Injected faults served.
    pub faults_served: u64,
    /// Client connections the Redis proxy accepted.
    pub redis_connections_accepted: u64,
    /// Successful `AUTH` / `HELLO … AUTH`.
    pub redis_auth_ok: u64,
    /// Refused `AUTH` / `HELLO … AUTH` (bad signature, audience, user name, expired …).
    pub redis_auth_failed: u64,
    /// Connections closed because their token expired without a newer valid `AUTH`.
    pub redis_closed_for_expiry: u64,
    /// Commands relayed to the backend `redis-server`.
    pub redis_commands_forwarded: u64,
    /// Commands answered with an error by the proxy itself (`NOAUTH`, refused `AUTH` …).
    pub redis_commands_rejected: u64,
}

#[derive(Debug, Default)]
pub(crate) struct CounterCells {
    pub(crate) imds_requests: AtomicU64,
    pub(crate) app_service_requests: AtomicU64,
    pub(crate) entra_requests: AtomicU64,
    pub(crate) tokens_issued: AtomicU64,
    pub(crate) faults_served: AtomicU64,
    pub(crate) redis_connections_accepted: AtomicU64,
    pub(crate) redis_auth_ok: AtomicU64,
    pub(crate) redis_auth_failed: AtomicU64,
    pub(crate) redis_closed_for_expiry: AtomicU64,
    pub(crate) redis_commands_forwarded: AtomicU64,
    pub(crate) redis_commands_rejected: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl CounterCells {
    pub(crate) fn snapshot(&self) -> Counters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            imds_requests: g(&self.imds_requests),
            app_service_requests: g(&self.app_service_requests),
            entra_requests: g(&self.entra_requests),
            tokens_issued: g(&self.tokens_issued),
            faults_served: g(&self.faults_served),
            redis_connections_accepted: g(&self.redis_connections_accepted),
            redis_auth_ok: g(&self.redis_auth_ok),
            redis_auth_failed: g(&self.redis_auth_failed),
            redis_closed_for_expiry: g(&self.redis_closed_for_expiry),
            redis_commands_forwarded: g(&self.redis_commands_forwarded),
            redis_commands_rejected: g(&self.redis_commands_rejected),
        }
    }
}
