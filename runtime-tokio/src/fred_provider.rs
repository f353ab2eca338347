//! fred integration: a [`CredentialProvider`] backed by a [`Provider`]
//!
//! fred asks a `CredentialProvider` for credentials on every connect (`fetch(Some(server))`)
//! and, when [`refresh_interval`](CredentialProvider::refresh_interval) is set, calls
//! `fetch(None)` on that fixed interval and sends `AUTH` (RESP2) or `HELLO 3 AUTH` (RESP3)
//! with the answer on every connection of the client.
//!
//! fred reads the interval once, when the client connects, so it cannot follow each token's
//! own refresh point. [`FredCredentials`] follows the machine's schedule instead:
//! - fred polls often, every `lower_bound / 20` (clamped to 50 ms ..= 1 s, or set
//!   explicitly): a poll is a pointer copy, never a network call, so a new token reaches fred's
//!   connections within one interval of its arrival, even when identity faults delayed it to
//!   just before the old token's expiry;
//! - `fetch(None)` answers with credentials only while the latest token is fresh (it arrived
//!   less than `max(5 intervals, 1 s)` ago) and with `(None, None)` otherwise, which makes fred
//!   skip the `AUTH`: each connection re-authenticates a handful of times per rotation (5 to
//!   20), not on every poll, and a refresh task that the scheduler delays by up to a second
//!   (a busy runtime re-authenticating thousands of connections at the same instant) still
//!   sees every new token;
//! - `fetch(Some(server))` (every connect and reconnect) always answers with the latest
//!   credentials, waiting for the first token when none has arrived yet.
//!
//! `fetch` is a pointer copy and never waits for the identity endpoint. The username is always
//! the token's `oid` (never fred's "default" fallback). Gap: fred logs a failed refresh `AUTH`
//! and tries again at the next poll (while the token is fresh); it gives the provider no
//! signal, so such failures are not reported as events.
//!
//! ```no_run
//! use std::sync::Arc;
//! use fred::prelude::*;
//! use redis_entraid_tokio::{fred_provider::FredCredentials, Provider};
//!
//! # async fn demo(provider: Provider) -> Result<(), fred::error::Error> {
//! let mut config = Config::from_url("redis://my-cache.example:10000")?;
//! config.credential_provider = Some(Arc::new(FredCredentials::new(provider)));
//! let client = Builder::from_config(config).build()?;
//! client.init().await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fred::error::{Error, ErrorKind};
use fred::types::config::{CredentialProvider, Server};

use crate::provider::Provider;

/// The shortest explicit poll interval
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest explicit poll interval
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// fred's [`CredentialProvider`] over a [`Provider`]
#[derive(Clone, Debug)]
pub struct FredCredentials {
    provider: Provider,
    interval: Option<Duration>,
    connect_wait: Duration,
}

impl FredCredentials {
    /// Credentials from `provider`; fred polls every `lower_bound / 20` of the provider's
    /// refresh policy (50 ms ..= 1 s)
    pub fn new(provider: Provider) -> Self {
        Self {
            provider,
            interval: None,
            connect_wait: Duration::from_secs(30),
        }
    }

    /// Sets fred's poll interval explicitly; a new token reaches fred's connections up to one
    /// interval after it arrives, so keep it well below the refresh policy's lower bound
    ///
    /// Clamped to 10 ms ..= 1 day: zero would have fred send `AUTH` in a busy loop, and no
    /// token lives anywhere near a day, so anything longer already means "never in time".
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval.clamp(MIN_INTERVAL, MAX_INTERVAL));
        self
    }

    /// How long a connect waits for the first token (default 30 s)
    pub fn with_connect_wait(mut self, wait: Duration) -> Self {
        self.connect_wait = wait;
        self
    }

    /// The interval fred re-sends credentials at
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or_else(|| {
            (self.provider.config().refresh().lower_bound() / 20)
                .clamp(Duration::from_millis(50), Duration::from_secs(1))
        })
    }

    /// How long after its arrival `fetch(None)` keeps handing a new token to fred
    fn fresh_window(&self) -> Duration {
        self.interval()
            .saturating_mul(5)
            .max(Duration::from_secs(1))
    }

    async fn credentials(&self) -> Result<(Option<String>, Option<String>), Error> {
        let current = match self.provider.current() {
            Some(current) => Some(current),
            None => self.provider.wait_newer(None, self.connect_wait).await,
        };
        match current {
            // A copy forced by fred's `CredentialProvider` API (owned `String`s, one per
            // call); fred drops it after `AUTH`/`HELLO` without wiping it.
            Some((_, c)) => Ok((
                Some(c.username().to_owned()),
                Some(c.password().expose_secret().to_owned()),
            )),
            None => Err(Error::new(
                ErrorKind::Auth,
                "redis-entraid has no token yet (see the provider's last_error)",
            )),
        }
    }
}

impl CredentialProvider for FredCredentials {
    fn fetch<'a, 'b, 'f>(
        &'a self,
        server: Option<&'b Server>,
    ) -> Pin<Box<dyn Future<Output = Result<(Option<String>, Option<String>), Error>> + Send + 'f>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        let refresh_poll = server.is_none();
        Box::pin(async move {
            if refresh_poll {
                let fresh = self
                    .provider
                    .credentials_age()
                    .is_some_and(|age| age < self.fresh_window());
                if !fresh {
                    return Ok((None, None));
                }
            }
            self.credentials().await
        })
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.interval())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_entraid_core::token::{AccessToken, TokenResponse};

    #[tokio::test]
    async fn extreme_refresh_intervals_are_clamped_not_a_panic() {
        let provider = Provider::builder()
            .startup(crate::Startup::Lazy)
            .build_with_fetcher(|_t: Duration| async {
                Ok(TokenResponse::new(AccessToken::new("e30.e30.c2ln")).with_expires_in(3600))
            })
            .await
            .expect("a lazy provider starts");
        let longest = FredCredentials::new(provider.clone()).with_refresh_interval(Duration::MAX);
        assert_eq!(longest.interval(), MAX_INTERVAL);
        assert_eq!(longest.fresh_window(), MAX_INTERVAL * 5);
        let shortest = FredCredentials::new(provider).with_refresh_interval(Duration::ZERO);
        assert_eq!(shortest.interval(), MIN_INTERVAL);
        assert_eq!(shortest.fresh_window(), Duration::from_secs(1));
    }
}
