//! What the driver calls to get a token: anything that can fetch one within a timeout

use std::time::Duration;

use redis_entraid_core::error::FetchError;
use redis_entraid_core::token::TokenResponse;

/// Fetches one token, blocking, within `timeout`
///
/// The driver calls it on a short-lived thread of its own, so a slow source never delays
/// timers, commands or other subscribers; an answer that arrives after the machine gave up on
/// the request is ignored. [`IdentityFetcher`](crate::IdentityFetcher) runs any Entra ID flow;
/// closures `Fn(Duration) -> Result<TokenResponse, FetchError>` are fetchers too (tests, vaults).
///
/// ```
/// use std::time::Duration;
/// use redis_entraid_blocking_io::Fetcher;
/// use redis_entraid_core::token::{AccessToken, TokenResponse};
///
/// let source = |_timeout: Duration| Ok(TokenResponse::new(AccessToken::new("h.p.s")).with_expires_in(3600));
/// assert!(source.fetch(Duration::from_secs(1)).is_ok());
/// ```
pub trait Fetcher: Send + Sync + 'static {
    /// One token
    ///
    /// # Errors
    /// A [`FetchError`] saying whether trying again may help; the machine retries by policy.
    fn fetch(&self, timeout: Duration) -> Result<TokenResponse, FetchError>;

    /// A short name for logs and errors (never a secret)
    fn name(&self) -> String {
        "token source".to_owned()
    }
}

impl<F> Fetcher for F
where
    F: Fn(Duration) -> Result<TokenResponse, FetchError> + Send + Sync + 'static,
{
    fn fetch(&self, timeout: Duration) -> Result<TokenResponse, FetchError> {
        self(timeout)
    }
}
