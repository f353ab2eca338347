//! Fault injection for the identity endpoints.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An identity endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `GET /metadata/identity/oauth2/token`.
    Imds,
    /// `GET /msi/token` (`IDENTITY_ENDPOINT`).
    AppService,
    /// `POST /{tenant}/oauth2/v2.0/token`.
    Entra,
}

/// What an injected fault does to a token request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status and the endpoint family's error body (500, 503, 404, 410, …).
    Status {
        /// HTTP status code.
        status: u16,
    },
    /// `429 Too Many Requests` with `Retry-After: <retry_after_secs>`.
    TooManyRequests {
        /// Value of the `Retry-After` header, seconds.
        retry_after_secs: u64,
    },
    /// `400` with `"error":"invalid_client"` (Entra shape, AADSTS7000215).
    InvalidClient,
    /// Wait this long, then answer normally.
    Delay {
        /// Delay in milliseconds.
        millis: u64,
    },
    /// `200 OK` with a body that is not JSON.
    MalformedBody,
    /// Close the connection without answering.
    CloseConnection,
    /// Issue a well-signed token without the `oid` claim.
    TokenWithoutOid,
    /// Issue a well-signed token whose `exp` is already in the past.
    ExpiredToken,
}

fn one() -> u32 {
    1
}

/// A fault for the next `count` token requests, optionally only those to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What it does.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many requests it applies to (default 1).
    #[serde(default = "one")]
    pub count: u32,
    /// Only requests to this endpoint (default: any token endpoint).
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
}

impl Fault {
    /// A fault for the next token request to any endpoint.
    pub fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            count: 1,
            endpoint: None,
        }
    }

    /// Fail with `status` (and the endpoint's error body).
    pub fn status(status: u16) -> Self {
        Self::new(FaultKind::Status { status })
    }

    /// 429 with `Retry-After`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(FaultKind::TooManyRequests { retry_after_secs })
    }

    /// Delay the answer.
    pub fn delay(d: Duration) -> Self {
        Self::new(FaultKind::Delay {
            millis: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Applies to the next `n` requests.
    pub fn times(mut self, n: u32) -> Self {
        self.count = n;
        self
    }

    /// Applies only to requests to `endpoint`.
    pub fn only(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }
}

/// The queue of pending faults of a running emulator ([`Emulator::faults`](crate::Emulator::faults)).
///
/// Faults apply in the order they were injected; a request takes one use of the first pending
/// fault that matches its endpoint.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    queue: Arc<Mutex<VecDeque<Fault>>>,
}

impl Faults {
    /// Queues a fault.
    pub fn inject(&self, fault: Fault) {
        if fault.count > 0 {
            self.lock().push_back(fault);
        }
    }

    /// Fails the next `n` token requests (any endpoint) with `status`.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.inject(Fault::status(status).times(n));
    }

    /// Removes every pending fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The faults still pending, with their remaining counts.
    pub fn pending(&self) -> Vec<Fault> {
        self.lock().iter().cloned().collect()
    }

    /// Takes one use of the first fault matching `endpoint`.
    pub(crate) fn take(&self, endpoint: Endpoint) -> Option<FaultKind> {
        let mut q = self.lock();
        let idx = q
            .iter()
            .position(|f| f.endpoint.is_none_or(|e| e == endpoint))?;
        let f = q.get_mut(idx)?;
        f.count -= 1;
        let kind = f.kind.clone();
        if f.count == 0 {
            q.remove(idx);
        }
        Some(kind)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Fault>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_taken_in_order_and_by_endpoint() {
        let f = Faults::default();
        f.inject(Fault::status(503).only(Endpoint::Entra));
        f.inject(Fault::too_many_requests(3).times(2));
        assert_eq!(
            f.take(Endpoint::Imds),
            Some(FaultKind::TooManyRequests {
                retry_after_secs: 3
            })
        );
        assert_eq!(
            f.take(Endpoint::Entra),
            Some(FaultKind::Status { status: 503 })
        );
        assert!(f.take(Endpoint::Entra).is_some());
        assert_eq!(f.take(Endpoint::Entra), None);
    }

    #[test]
    fn faults_parse_from_the_control_api_json() {
        let f: Fault =
            serde_json::from_str(r#"{"kind":"status","status":500,"count":2,"endpoint":"imds"}"#)
                .expect("json");
        assert_eq!(f, Fault::status(500).times(2).only(Endpoint::Imds));
        let f: Fault = serde_json::from_str(r#"{"kind":"close_connection"}"#).expect("json");
        assert_eq!(f, Fault::new(FaultKind::CloseConnection));
    }
}
