//! Building a provider: settings, the token source, the startup policy

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use redis_entraid_blocking_io::{Fetcher, IdentityFetcher};
use redis_entraid_core::command::{Signals, COMMAND_CAPACITY};
use redis_entraid_core::handle::ProviderSettings;
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::metrics::Recorder;
use redis_entraid_core::startup::StartupError;

use crate::driver::Driver;
use crate::provider::{Inner, Provider};
use crate::watch::Shared;

/// Builds a [`Provider`]
#[derive(Clone, Debug, Default)]
pub struct ProviderBuilder {
    settings: ProviderSettings,
}

impl ProviderBuilder {
    redis_entraid_core::provider_builder_methods!(settings);

    /// Starts a provider that gets its tokens through `source`, any Entra ID identity flow
    ///
    /// ```no_run
    /// use redis_entraid_blocking::Provider;
    /// use redis_entraid_core::identity::imds::Imds;
    /// use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
    /// use redis_entraid_core::identity::TokenSource;
    ///
    /// let identity = ManagedIdentity::Imds(Imds::new(ManagedIdentityId::SystemAssigned));
    /// let provider = Provider::builder().build(TokenSource::ManagedIdentity(identity))?;
    /// let credentials = provider.credentials().expect("the default startup waits for a token");
    /// println!("AUTH as {}", credentials.username());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`StartupError`] when the HTTP client cannot be set up, the thread cannot start, or the
    /// startup policy is not met (the driver is then shut down).
    pub fn build(self, source: TokenSource) -> Result<Provider, StartupError> {
        let fetcher =
            IdentityFetcher::new(source, &self.settings.http).map_err(StartupError::Http)?;
        self.build_with_fetcher(fetcher)
    }

    /// Starts a provider on the default chain, configured from the process environment
    /// (the variables Azure SDKs use: `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_SECRET`, `AZURE_FEDERATED_TOKEN_FILE`, `IDENTITY_ENDPOINT`, ...)
    ///
    /// # Errors
    /// [`StartupError::Config`] for an invalid configuration (an unknown
    /// `AZURE_TOKEN_CREDENTIALS`), otherwise as [`build`](Self::build); when no identity works,
    /// the error lists what each step of the chain tried and why it failed.
    pub fn build_from_env(self) -> Result<Provider, StartupError> {
        let chain = DefaultChain::try_from_env(&redis_entraid_blocking_io::ProcessEnv)
            .map_err(StartupError::Config)?;
        self.build(TokenSource::DefaultChain(chain))
    }

    /// Starts the driver thread around any [`Fetcher`] and applies the startup policy
    ///
    /// # Errors
    /// [`StartupError`] when the thread cannot start, or when the startup policy is not met
    /// (the driver is then shut down).
    pub fn build_with_fetcher(self, source: impl Fetcher) -> Result<Provider, StartupError> {
        let shared = Arc::new(Shared::new());
        let (tx, rx) = mpsc::sync_channel(COMMAND_CAPACITY);
        let signals = Arc::new(Signals::default());
        let fan_out = Arc::new(redis_entraid_core::fan_out::FanOutLog::default());
        let driver = Driver {
            metrics: Recorder::new(source.name(), Some(Arc::clone(&fan_out))),
            signals: Arc::clone(&signals),
            machine: TokenManager::new(
                redis_entraid_blocking_io::seeded(self.settings.config.clone()),
                Instant::now(),
            ),
            source: Arc::new(source),
            shared: Arc::clone(&shared),
            inputs: rx,
            loopback: tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("redis-entraid".to_owned())
            .spawn(move || driver.run())
            .map_err(StartupError::Spawn)?;
        let provider = Provider {
            inner: Arc::new(Inner {
                shared,
                commands: tx,
                signals,
                thread: Some(thread),
                event_capacity: self.settings.event_capacity(),
                config: self.settings.config,
                fan_out,
            }),
        };
        let startup = self.settings.startup;
        let shared = &provider.inner.shared;
        match shared.wait_until(startup.wait_limit(), |o| startup.verdict(o)) {
            Some(Ok(())) => Ok(provider),
            // Dropping the provider shuts the driver down.
            Some(Err(e)) => Err(e),
            None => Err(startup.timed_out(&shared.lock())),
        }
    }
}
