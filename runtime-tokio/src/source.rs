//! Where tokens come from: anything that can fetch one asynchronously, and the tokio backends
//! of the core's identity executor

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::cli::{CommandOutput, CommandSpec};
use redis_entraid_core::identity::custom::CustomSource;
use redis_entraid_core::identity::executor::{Backends, CallbackRunning, IdentityExecutor};
use redis_entraid_core::identity::{
    FetchContext, IdentityRequest, RequestMeta, TokenSource as CoreSource,
};
use redis_entraid_core::secret::SecretBytes;
use redis_entraid_core::token::TokenResponse;

use crate::http::AsyncHttpClient;

/// Boxed future returned by [`Fetcher::fetch`]
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Fetches one token within `timeout`
///
/// The driver runs each fetch in a task of its own, so a slow source never delays timers,
/// commands or subscribers; an answer that arrives after the machine gave up on the request
/// is ignored (and the task aborted). Async closures
/// `Fn(Duration) -> impl Future<Output = Result<TokenResponse, FetchError>>` are fetchers;
/// [`Identity`] runs every Entra ID flow of the core.
///
/// ```
/// use std::time::Duration;
/// use redis_entraid_core::token::{AccessToken, TokenResponse};
/// use redis_entraid_tokio::Fetcher;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source = |_timeout: Duration| async { Ok(TokenResponse::new(AccessToken::new("h.p.s")).with_expires_in(3600)) };
/// assert!(source.fetch(Duration::from_secs(1)).await.is_ok());
/// # }
/// ```
pub trait Fetcher: Send + Sync + 'static {
    /// One token
    ///
    /// # Errors
    /// A [`FetchError`] saying whether trying again may help; the machine retries by policy.
    fn fetch(&self, timeout: Duration) -> BoxFuture<'_, Result<TokenResponse, FetchError>>;

    /// A short name for logs and errors (never a secret)
    fn name(&self) -> String {
        "token source".to_owned()
    }
}

impl<F, Fut> Fetcher for F
where
    F: Fn(Duration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenResponse, FetchError>> + Send + 'static,
{
    fn fetch(&self, timeout: Duration) -> BoxFuture<'_, Result<TokenResponse, FetchError>> {
        Box::pin(self(timeout))
    }
}

/// A core identity flow ([`redis_entraid_core::identity::TokenSource`]) run by the core's
/// [`IdentityExecutor`] over an [`AsyncHttpClient`], with redis-entraid-blocking-io's file
/// reads, CLI runs (process group killed at the deadline) and callbacks on tokio's blocking
/// pool (`spawn_blocking`)
///
/// [`ProviderBuilder::build`](crate::ProviderBuilder::build) wraps a flow in one with the
/// default client; build one yourself for another client and pass it to
/// [`build_with_fetcher`](crate::ProviderBuilder::build_with_fetcher). For the default chain,
/// the step that answered first is used alone from then on. Clones share the executor (and so
/// the chain's winner and the one-callback-at-a-time slot).
///
/// ```no_run
/// use redis_entraid_core::identity::TokenSource;
/// use redis_entraid_tokio::http::HttpClient;
/// use redis_entraid_tokio::{Identity, Provider};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let flow: TokenSource = unimplemented!();
/// let client = HttpClient::builder().add_root_certificates_pem(b"...")?.build()?;
/// let provider = Provider::builder().build_with_fetcher(Identity::with_client(flow, client)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Identity<C = DefaultClient> {
    executor: Arc<IdentityExecutor>,
    backends: TokioBackends<C>,
}

/// The default HTTP client: [`HttpClient`](crate::http::HttpClient) (ureq with rustls on the
/// blocking pool) when the `http-client` feature is on
#[cfg(feature = "http-client")]
pub type DefaultClient = crate::http::HttpClient;
/// The default HTTP client: none without the `http-client` feature (use
/// [`Identity::with_client`])
#[cfg(not(feature = "http-client"))]
pub type DefaultClient = crate::http::NoClient;

#[cfg(feature = "http-client")]
impl Identity<crate::http::HttpClient> {
    /// `source` over the default client (public roots, `SSL_CERT_FILE` honoured, proxies from
    /// the environment)
    ///
    /// # Errors
    /// [`TransportError`] when the HTTP client cannot be built (e.g. an unreadable
    /// `SSL_CERT_FILE`).
    pub fn new(source: CoreSource) -> Result<Self, TransportError> {
        Ok(Self::with_client(
            source,
            crate::http::HttpClient::builder().build()?,
        ))
    }

    /// The default chain (environment, workload identity, managed identity, Azure CLI, azd)
    /// configured from this process's environment variables
    ///
    /// # Errors
    /// [`StartupError::Config`](crate::StartupError::Config) for an invalid configuration (an
    /// unknown `AZURE_TOKEN_CREDENTIALS`), [`StartupError::Http`](crate::StartupError::Http)
    /// when the HTTP client cannot be built.
    pub fn from_env() -> Result<Self, crate::StartupError> {
        let source = default_chain_from_env().map_err(crate::StartupError::Config)?;
        Self::new(source).map_err(crate::StartupError::Http)
    }
}

/// The default chain configured from the process environment
///
/// # Errors
/// A [`ConfigError`](redis_entraid_core::error::ConfigError) for an invalid configuration
/// (an unknown `AZURE_TOKEN_CREDENTIALS`), refused here as the Azure SDKs refuse it at
/// construction.
pub fn default_chain_from_env() -> Result<CoreSource, redis_entraid_core::error::ConfigError> {
    DefaultChain::try_from_env(&redis_entraid_blocking_io::ProcessEnv).map(CoreSource::DefaultChain)
}

impl<C: AsyncHttpClient> Identity<C> {
    /// `source` over a client of your own
    pub fn with_client(source: CoreSource, client: C) -> Self {
        Self {
            executor: Arc::new(IdentityExecutor::new(source)),
            backends: TokioBackends { client },
        }
    }

    /// Which step of the default chain answered, once one has
    pub fn winner(&self) -> Option<String> {
        self.executor.winner_name()
    }

    /// One token through the core's executor (what the driver calls)
    ///
    /// # Errors
    /// The flow's classified [`FetchError`].
    pub async fn fetch_token(&self, timeout: Duration) -> Result<TokenResponse, FetchError> {
        let had_winner = self.executor.winner_name().is_some();
        let result = self.executor.fetch(&self.backends, timeout).await;
        if let (false, Some(winner)) = (had_winner, self.executor.winner_name()) {
            tracing::info!(
                source = winner,
                "the default chain found a working identity"
            );
        }
        result
    }
}

impl<C: AsyncHttpClient> Fetcher for Identity<C> {
    fn fetch(&self, timeout: Duration) -> BoxFuture<'_, Result<TokenResponse, FetchError>> {
        Box::pin(self.fetch_token(timeout))
    }

    fn name(&self) -> String {
        self.executor.name()
    }
}

/// tokio's I/O for the core's identity executor
#[derive(Clone, Debug)]
struct TokioBackends<C> {
    client: C,
}

impl<C: AsyncHttpClient> Backends for TokioBackends<C> {
    fn now(&self) -> Instant {
        crate::provider::now()
    }

    fn context(&self) -> Result<FetchContext, FetchError> {
        redis_entraid_blocking_io::fetch_context()
    }

    async fn send(
        &self,
        request: IdentityRequest,
        meta: &RequestMeta,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        match tokio::time::timeout(timeout, self.client.send(request, meta, timeout)).await {
            Ok(answer) => answer,
            Err(_) => Err(TransportError::new(format!(
                "no answer within {}ms",
                timeout.as_millis()
            ))),
        }
    }

    async fn read_file(
        &self,
        path: &std::path::Path,
        max_len: u64,
    ) -> Result<SecretBytes, TransportError> {
        let path = path.to_owned();
        on_blocking_pool("reading a token file", move || {
            redis_entraid_blocking_io::read_file(&path, max_len)
        })
        .await?
    }

    async fn run_command(&self, spec: &CommandSpec, timeout: Duration) -> CommandOutput {
        let spec = spec.clone();
        on_blocking_pool("running a CLI", move || {
            redis_entraid_blocking_io::run_command(&spec, timeout)
        })
        .await
        .unwrap_or_else(|e| CommandOutput::new(None, Vec::new(), e.to_string().into_bytes()))
    }

    /// On tokio's blocking pool; a callback that hangs keeps its pool thread (and `running`),
    /// and the executor starts no other until it returns
    async fn call_custom(
        &self,
        custom: CustomSource,
        running: CallbackRunning,
        timeout: Duration,
    ) -> Result<TokenResponse, FetchError> {
        let name = custom.name().to_owned();
        let call = tokio::task::spawn_blocking(move || {
            let _running = running;
            custom.call()
        });
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(TransportError::permanent(format!(
                "the custom token callback {name:?} panicked"
            ))
            .with_source(e)
            .into()),
            Err(_) => Err(TransportError::new(format!(
                "the custom token callback {name:?} did not return within {}ms",
                timeout.as_millis()
            ))
            .into()),
        }
    }
}

/// Runs `job` (blocking I/O of blocking-io) on tokio's blocking pool
async fn on_blocking_pool<T: Send + 'static>(
    what: &str,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransportError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| TransportError::new(format!("the blocking task {what} failed")).with_source(e))
}
