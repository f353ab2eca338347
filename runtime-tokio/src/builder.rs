//! Building a provider: settings, the token source, the startup policy

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use redis_entraid_core::command::{Signals, COMMAND_CAPACITY};
use redis_entraid_core::handle::ProviderSettings;
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::metrics::Recorder;
use redis_entraid_core::observed::Observed;
use redis_entraid_core::startup::StartupError;
use tokio::sync::{broadcast, mpsc, watch};

use crate::driver::Driver;
use crate::provider::{now, Inner, Provider};
use crate::source::Fetcher;

/// Builds a [`Provider`]
#[derive(Clone, Debug, Default)]
pub struct ProviderBuilder {
    settings: ProviderSettings,
}

impl ProviderBuilder {
    redis_entraid_core::provider_builder_methods!(settings);

    /// Starts a provider that gets its tokens through `source`, any Entra ID identity flow,
    /// over the default HTTP client: spawns the driver task, then applies the startup policy
    ///
    /// ```no_run
    /// use redis_entraid_tokio::Provider;
    /// use redis_entraid_tokio::identity::imds::Imds;
    /// use redis_entraid_tokio::identity::managed::{ManagedIdentity, ManagedIdentityId};
    /// use redis_entraid_tokio::identity::TokenSource;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let identity = ManagedIdentity::Imds(Imds::new(ManagedIdentityId::SystemAssigned));
    /// let provider = Provider::builder().build(TokenSource::ManagedIdentity(identity)).await?;
    /// let credentials = provider.credentials().expect("the default startup waits for a token");
    /// println!("AUTH as {}", credentials.username());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StartupError::Http`] when the HTTP client cannot be set up, [`StartupError::Spawn`]
    /// outside a tokio runtime, [`StartupError::TimedOut`] or [`StartupError::FetchFailed`]
    /// when the startup policy is not met (the driver is then shut down).
    #[cfg(feature = "http-client")]
    pub async fn build(
        self,
        source: redis_entraid_core::identity::TokenSource,
    ) -> Result<Provider, StartupError> {
        let client = crate::http::HttpClient::from_config(&self.settings.http)
            .map_err(StartupError::Http)?;
        let identity = crate::source::Identity::with_client(source, client);
        self.build_with_fetcher(identity).await
    }

    /// Starts a provider on the default chain, configured from the process environment
    /// (the variables Azure SDKs use: `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_SECRET`, `AZURE_FEDERATED_TOKEN_FILE`, `IDENTITY_ENDPOINT`, ...)
    ///
    /// # Errors
    /// [`StartupError::Config`] for an invalid configuration (an unknown
    /// `AZURE_TOKEN_CREDENTIALS`), otherwise as [`build`](Self::build); when no identity works,
    /// the error lists what each step of the chain tried and why it failed.
    #[cfg(feature = "http-client")]
    pub async fn build_from_env(self) -> Result<Provider, StartupError> {
        let source = crate::source::default_chain_from_env().map_err(StartupError::Config)?;
        self.build(source).await
    }

    /// Spawns the driver task around any [`Fetcher`] and applies the startup policy
    ///
    /// # Errors
    /// [`StartupError::Spawn`] outside a tokio runtime; [`StartupError::TimedOut`] or
    /// [`StartupError::FetchFailed`] when the startup policy is not met (the driver is then
    /// shut down).
    ///
    /// # Example
    /// ```
    /// use std::time::Duration;
    /// use redis_entraid_core::token::{AccessToken, TokenResponse};
    /// use redis_entraid_tokio::{Provider, Startup};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Any async closure `Fn(Duration) -> impl Future<Output = Result<TokenResponse, FetchError>>`
    /// // is a fetcher; real applications use `build(source)` or `Provider::from_env`.
    /// let provider = Provider::builder()
    ///     .startup(Startup::Wait(Duration::from_secs(5)))
    ///     .build_with_fetcher(|_timeout: Duration| async {
    ///         // header.{"oid":"me"}.signature
    ///         Ok(TokenResponse::new(AccessToken::new("e30.eyJvaWQiOiJtZSJ9.c2ln")).with_expires_in(3600))
    ///     })
    ///     .await?;
    /// assert_eq!(provider.credentials().map(|c| c.username().to_owned()).as_deref(), Some("me"));
    /// # Ok(()) }
    /// ```
    pub async fn build_with_fetcher(self, source: impl Fetcher) -> Result<Provider, StartupError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StartupError::Spawn(std::io::Error::other(
                "redis-entraid-tokio needs a tokio runtime: call build() from within one",
            ))
        })?;
        let (state_tx, state_rx) = watch::channel(Observed::default());
        let capacity = self.settings.event_capacity();
        let (events, _) = broadcast::channel(capacity);
        let (commands, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let signals = Arc::new(Signals::default());
        let dropped_events = Arc::new(AtomicU64::new(0));
        #[cfg(feature = "redis")]
        let fan_out = Arc::new(redis_entraid_core::fan_out::FanOutLog::default());
        #[cfg(feature = "redis")]
        let reported = Some(Arc::clone(&fan_out));
        #[cfg(not(feature = "redis"))]
        let reported = None;
        let driver = Driver {
            metrics: Recorder::new(source.name(), reported),
            machine: TokenManager::new(
                redis_entraid_blocking_io::seeded(self.settings.config.clone()),
                now(),
            ),
            source: Arc::new(source),
            state: state_tx,
            events: events.clone(),
            event_capacity: capacity,
            dropped_events: Arc::clone(&dropped_events),
            commands: commands_rx,
            signals: Arc::clone(&signals),
            fetch: None,
        };
        let task = handle.spawn(driver.run());
        let provider = Provider {
            inner: Arc::new(Inner {
                state: state_rx,
                commands,
                signals,
                events,
                dropped_events,
                config: self.settings.config,
                task,
                #[cfg(feature = "redis")]
                fan_out,
            }),
        };
        let startup = self.settings.startup;
        let mut state = provider.inner.state.clone();
        let verdict = state.wait_for(|o| startup.verdict(o).is_some());
        let verdict = match startup.wait_limit() {
            Some(limit) => tokio::time::timeout(limit, verdict).await.ok(),
            None => Some(verdict.await),
        };
        let outcome = match verdict {
            Some(Ok(observed)) => startup.verdict(&observed).unwrap_or(Ok(())),
            // The driver is gone (it only drops its sender when it ends).
            Some(Err(_)) => startup
                .verdict(&provider.inner.state.borrow())
                .unwrap_or(Ok(())),
            None => Err(startup.timed_out(&provider.inner.state.borrow())),
        };
        // Dropping the provider on an error shuts the driver down.
        outcome.map(|()| provider)
    }
}
