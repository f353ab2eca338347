//! Building a provider: settings, the token source, the spawn hook, the startup policy

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

use crate::driver::{run, Driver, Parts};
use crate::provider::{Inner, Provider};
use crate::shared::Shared;

/// Builds a [`Provider`]
#[derive(Clone, Debug, Default)]
pub struct ProviderBuilder {
    settings: ProviderSettings,
}

impl ProviderBuilder {
    redis_entraid_core::provider_builder_methods!(settings);

    /// The provider and its driver for any Entra ID identity flow, without spawning or waiting
    ///
    /// # Errors
    /// [`StartupError::Http`] when a CA file (or `SSL_CERT_FILE`) cannot be read.
    pub fn start(self, source: TokenSource) -> Result<(Provider, Driver), StartupError> {
        let fetcher =
            IdentityFetcher::new(source, &self.settings.http).map_err(StartupError::Http)?;
        Ok(self.start_with_fetcher(fetcher))
    }

    /// The provider and its driver around any [`Fetcher`], without spawning or waiting
    pub fn start_with_fetcher(self, fetcher: impl Fetcher) -> (Provider, Driver) {
        let shared = Arc::new(Shared::new());
        let (tx, rx) = async_channel::bounded(COMMAND_CAPACITY);
        let signals = Arc::new(Signals::default());
        let (mut events, inactive) = async_broadcast::broadcast(self.settings.event_capacity());
        events.set_overflow(true);
        let inactive = inactive.deactivate();
        #[cfg(feature = "redis")]
        let fan_out = Arc::new(redis_entraid_core::fan_out::FanOutLog::default());
        #[cfg(feature = "redis")]
        let reported = Some(Arc::clone(&fan_out));
        #[cfg(not(feature = "redis"))]
        let reported = None;
        let metrics = Recorder::new(fetcher.name(), reported);
        let run = run(Parts {
            machine: TokenManager::new(
                redis_entraid_blocking_io::seeded(self.settings.config.clone()),
                Instant::now(),
            ),
            fetcher: Arc::new(fetcher),
            shared: Arc::clone(&shared),
            inputs: rx,
            loopback: tx.clone(),
            signals: Arc::clone(&signals),
            events: events.clone(),
            metrics,
        });
        let provider = Provider {
            inner: Arc::new(Inner {
                shared,
                commands: tx,
                signals,
                events: inactive,
                config: self.settings.config,
                #[cfg(feature = "redis")]
                fan_out,
            }),
        };
        (provider, Driver(Box::pin(run)))
    }

    /// Starts a provider for `source`: spawns the driver with `spawn`, then applies the
    /// startup policy
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), redis_entraid_async_std::StartupError> {
    /// use redis_entraid_async_std::Provider;
    /// use redis_entraid_core::identity::imds::Imds;
    /// use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
    /// use redis_entraid_core::identity::TokenSource;
    ///
    /// let source = TokenSource::ManagedIdentity(ManagedIdentity::Imds(Imds::new(ManagedIdentityId::SystemAssigned)));
    /// let provider = Provider::builder()
    ///     .build(source, |driver| { async_std::task::spawn(driver); })
    ///     .await?;
    /// println!("AUTH as {:?}", provider.credentials().map(|c| c.username().to_owned()));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StartupError`] when HTTP cannot be set up or the startup policy is not met (the
    /// driver is then shut down).
    pub async fn build(
        self,
        source: TokenSource,
        spawn: impl FnOnce(Driver),
    ) -> Result<Provider, StartupError> {
        let startup = self.settings.startup;
        let (provider, driver) = self.start(source)?;
        spawn(driver);
        provider.apply_startup(startup).await.map(|()| provider)
    }

    /// Starts a provider on the default chain from the process environment
    ///
    /// # Errors
    /// [`StartupError::Config`] for an invalid configuration (an unknown
    /// `AZURE_TOKEN_CREDENTIALS`), otherwise as [`build`](Self::build).
    pub async fn build_from_env(
        self,
        spawn: impl FnOnce(Driver),
    ) -> Result<Provider, StartupError> {
        let chain = DefaultChain::try_from_env(&redis_entraid_blocking_io::ProcessEnv)
            .map_err(StartupError::Config)?;
        self.build(TokenSource::DefaultChain(chain), spawn).await
    }

    /// Starts a provider around any [`Fetcher`]: spawns the driver, applies the startup policy
    ///
    /// # Errors
    /// [`StartupError`] when the startup policy is not met (the driver is then shut down).
    pub async fn build_with_fetcher(
        self,
        fetcher: impl Fetcher,
        spawn: impl FnOnce(Driver),
    ) -> Result<Provider, StartupError> {
        let startup = self.settings.startup;
        let (provider, driver) = self.start_with_fetcher(fetcher);
        spawn(driver);
        provider.apply_startup(startup).await.map(|()| provider)
    }
}
