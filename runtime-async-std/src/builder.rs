//! Building a provider: settings, the token source, the spawn hook, the startup policy

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use redis_entraid_blocking_io::{Fetcher, HttpConfig, IdentityFetcher};
use redis_entraid_core::command::{Signals, COMMAND_CAPACITY};
use redis_entraid_core::config::Config;
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::metrics::Recorder;
use redis_entraid_core::startup::{Startup, StartupError};

use crate::driver::{run, Driver, Parts};
use crate::provider::{Inner, Provider};
use crate::shared::Shared;

/// Builds a [`Provider`]
#[derive(Clone, Debug, Default)]
pub struct ProviderBuilder {
    config: Config,
    startup: Startup,
    event_capacity: Option<usize>,
    http: HttpConfig,
}

impl ProviderBuilder {
    /// Refresh, retry and timeout settings
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// What [`build`](Self::build) waits for
    pub fn startup(mut self, startup: Startup) -> Self {
        self.startup = startup;
        self
    }

    /// Queue length of each [`Provider::events`] receiver (default 256); a subscriber that
    /// falls further behind loses its oldest events rather than slowing anyone down
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = Some(capacity);
        self
    }

    /// TLS settings for identity requests (extra root CAs; `SSL_CERT_FILE` is honoured anyway)
    pub fn http(mut self, http: HttpConfig) -> Self {
        self.http = http;
        self
    }

    /// The provider and its driver for any Entra ID identity flow, without spawning or waiting
    ///
    /// # Errors
    /// [`StartupError::Http`] when a CA file (or `SSL_CERT_FILE`) cannot be read.
    pub fn start(self, source: TokenSource) -> Result<(Provider, Driver), StartupError> {
        let fetcher = IdentityFetcher::new(source, &self.http).map_err(StartupError::Http)?;
        Ok(self.start_with_fetcher(fetcher))
    }

    /// The provider and its driver around any [`Fetcher`], without spawning or waiting
    pub fn start_with_fetcher(self, fetcher: impl Fetcher) -> (Provider, Driver) {
        let shared = Arc::new(Shared::new());
        let (tx, rx) = async_channel::bounded(COMMAND_CAPACITY);
        let signals = Arc::new(Signals::default());
        let (mut events, inactive) =
            async_broadcast::broadcast(self.event_capacity.unwrap_or(256).max(1));
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
            machine: TokenManager::new(seeded(self.config.clone()), Instant::now()),
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
                config: self.config,
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
        let startup = self.startup;
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
        let chain = DefaultChain::try_from_env(&ProcessEnv).map_err(StartupError::Config)?;
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
        let startup = self.startup;
        let (provider, driver) = self.start_with_fetcher(fetcher);
        spawn(driver);
        provider.apply_startup(startup).await.map(|()| provider)
    }
}

/// fleet do not retry and refresh in lockstep (an explicit `rng_seed` is kept)
fn seeded(config: Config) -> Config {
    let mut seed = [0u8; 8];
    if getrandom::getrandom(&mut seed).is_err() {
        // No OS entropy (very rare): the process id and the clock still differ across a fleet.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        seed = (u64::from(std::process::id()) << 32 | u64::from(nanos)).to_le_bytes();
    }
    config.with_seed_if_unset(u64::from_le_bytes(seed))
}

/// The process environment, read one variable at a time as the flows ask for it
///
/// Not a copy of `std::env::vars()`: that would hold every variable, `AZURE_CLIENT_SECRET` and
/// `IDENTITY_HEADER` included, in plain strings that are never wiped.
struct ProcessEnv;

impl redis_entraid_core::identity::env::EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}
