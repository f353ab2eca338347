//! What a provider's `build` waits for, and why it may refuse to start
//!
//! The policy and its verdict are the same in every runtime; a runtime only waits, in its own
//! way, until [`Startup::verdict`] has an answer or [`Startup::wait_limit`] has passed.

use std::time::Duration;

use crate::error::{ConfigError, FetchError, TransportError};
use crate::observed::Observed;

/// What `build` waits for before it returns
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Startup {
    /// Wait up to this long for the first token, through retries; fail with the last error
    /// if none arrives in time
    Wait(Duration),
    /// Return at once; the first token arrives in the background
    Lazy,
    /// Wait for the first answer and fail on the first error, however retryable
    FailFast,
}

impl Default for Startup {
    fn default() -> Self {
        Startup::Wait(Duration::from_secs(30))
    }
}

impl Startup {
    /// How long `build` may wait for a verdict (`None`: until the first answer)
    pub fn wait_limit(&self) -> Option<Duration> {
        match self {
            Startup::Wait(waited) => Some(*waited),
            Startup::Lazy => Some(Duration::ZERO),
            Startup::FailFast => None,
        }
    }

    /// The verdict `observed` allows: `None` to keep waiting
    pub fn verdict(&self, observed: &Observed) -> Option<Result<(), StartupError>> {
        if matches!(self, Startup::Lazy) || observed.latest().is_some() {
            return Some(Ok(()));
        }
        let stopped_early = || {
            FetchError::from(TransportError::permanent(
                "the driver stopped before the first token",
            ))
        };
        match self {
            Startup::FailFast if observed.failures_before_first_token() > 0 => {
                Some(Err(StartupError::FetchFailed(
                    observed.last_error().cloned().unwrap_or_else(stopped_early),
                )))
            }
            _ if observed.is_stopped() => Some(Err(StartupError::FetchFailed(
                observed.last_error().cloned().unwrap_or_else(stopped_early),
            ))),
            _ => None,
        }
    }

    /// The verdict once [`wait_limit`](Self::wait_limit) has passed without one
    pub fn timed_out(&self, observed: &Observed) -> StartupError {
        StartupError::TimedOut {
            waited: self.wait_limit().unwrap_or_default(),
            last_error: observed.last_error().cloned(),
        }
    }
}

/// Why a provider could not start
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// No token within the startup wait
    #[error("no token within {waited:?} of starting{}", last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    TimedOut {
        /// How long it waited
        waited: Duration,
        /// The last fetch error, if any
        last_error: Option<FetchError>,
    },
    /// The first fetch failed (fail-fast startup), or the driver stopped before a token
    #[error("the first token request failed: {0}")]
    FetchFailed(FetchError),
    /// The HTTP client for identity requests could not be set up (e.g. an unreadable CA file,
    /// `SSL_CERT_FILE` included)
    #[error("could not set up HTTP for identity requests: {0}")]
    Http(TransportError),
    /// The identity configuration in the environment is invalid (e.g. an unknown
    /// `AZURE_TOKEN_CREDENTIALS` value), refused before any request, as the Azure SDKs do
    #[error("the identity configuration in the environment is invalid: {0}")]
    Config(ConfigError),
    /// The runtime could not start the driver: the blocking runtime could not start its
    /// thread, or the tokio runtime's `build` was called outside a tokio runtime
    #[error("could not start the redis-entraid driver: {0}")]
    Spawn(#[source] std::io::Error),
}
