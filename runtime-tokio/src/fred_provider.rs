//! fred integration: a [`CredentialProvider`] backed by a [`Provider`]
//!
//! fred asks a `CredentialProvider` for credentials on every connect (`fetch(Some(server))`)
//! and, when [`refresh_interval`](CredentialProvider::refresh_interval) is set, calls
//! `fetch(None)` on that fixed interval and sends `AUTH` (RESP2) or `HELLO 3 AUTH` (RESP3)
//! with the answer on every connection of the client.
//!
//! fred reads the interval once, when the client connects, so it cannot follow each token's
//! own refresh point. [`FredCredentials`] derives it from the machine's schedule instead: the
//! machine fetches a new token no later than `lower_bound` before the old one expires, so
//! polling every `lower_bound / 3` (clamped to 100 ms ..= 60 s, or set explicitly) hands every
//! new generation to fred at least twice before the previous token runs out. Between
//! rotations fred re-sends the current credentials, which Redis accepts; `fetch(None)` is a
//! pointer copy and never waits for the identity endpoint. The username is always the
//! token's `oid` (never fred's "default" fallback).
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

/// fred's [`CredentialProvider`] over a [`Provider`]
#[derive(Clone, Debug)]
pub struct FredCredentials {
    provider: Provider,
    interval: Option<Duration>,
    connect_wait: Duration,
}

impl FredCredentials {
    /// Credentials from `provider`, refreshed on fred's connections every
    /// `lower_bound / 3` of the provider's refresh policy
    pub fn new(provider: Provider) -> Self {
        Self {
            provider,
            interval: None,
            connect_wait: Duration::from_secs(30),
        }
    }

    /// Sets fred's refresh interval explicitly (keep it well below the refresh policy's
    /// lower bound)
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
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
            (self.provider.config().refresh().lower_bound() / 3)
                .clamp(Duration::from_millis(100), Duration::from_secs(60))
        })
    }

    async fn credentials(&self) -> Result<(Option<String>, Option<String>), Error> {
        let current = match self.provider.current() {
            Some(current) => Some(current),
            None => self.provider.wait_newer(None, self.connect_wait).await,
        };
        match current {
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
        _server: Option<&'b Server>,
    ) -> Pin<Box<dyn Future<Output = Result<(Option<String>, Option<String>), Error>> + Send + 'f>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(self.credentials())
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.interval())
    }
}
