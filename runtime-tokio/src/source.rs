//! Where tokens come from: anything that can fetch one asynchronously, and the tokio backends
//! of the core's identity executor

use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
use crate::provider::BoxFuture;

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
/// [`IdentityExecutor`] over an [`AsyncHttpClient`], `tokio::fs`, `tokio::process` and
/// `spawn_blocking`
///
/// [`ProviderBuilder::build`](crate::ProviderBuilder::build) wraps a flow in one with the
/// default client; build one yourself for another client and pass it to
/// [`build_with_fetcher`](crate::ProviderBuilder::build_with_fetcher). For the default chain,
/// the step that answered first is used alone from then on. Clones share the executor (and so
/// the chain's winner and the one-callback-at-a-time slot).
///
/// ```no_run
/// use redis_entraid_core::identity::TokenSource;
/// use redis_entraid_tokio::http::ReqwestClient;
/// use redis_entraid_tokio::{Identity, Provider};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let flow: TokenSource = unimplemented!();
/// let client = ReqwestClient::builder().add_root_certificates_pem(b"...")?.build()?;
/// let provider = Provider::builder().build_with_fetcher(Identity::with_client(flow, client)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Identity<C = DefaultClient> {
    executor: Arc<IdentityExecutor>,
    backends: TokioBackends<C>,
}

/// The default HTTP client: reqwest with rustls when the `reqwest` feature is on
#[cfg(feature = "reqwest")]
pub type DefaultClient = crate::http::ReqwestClient;
/// The default HTTP client: none without the `reqwest` feature (use [`Identity::with_client`])
#[cfg(not(feature = "reqwest"))]
pub type DefaultClient = crate::http::NoClient;

#[cfg(feature = "reqwest")]
impl Identity<crate::http::ReqwestClient> {
    /// `source` over the default reqwest client (system roots, `SSL_CERT_FILE` honoured)
    ///
    /// # Errors
    /// [`TransportError`] when the HTTP client cannot be built (e.g. an unreadable
    /// `SSL_CERT_FILE`).
    pub fn new(source: CoreSource) -> Result<Self, TransportError> {
        Ok(Self::with_client(
            source,
            crate::http::ReqwestClient::builder().build()?,
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
    DefaultChain::try_from_env(&ProcessEnv).map(CoreSource::DefaultChain)
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
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| {
            FetchError::from(TransportError::permanent(format!(
                "the operating system's random source failed: {e}"
            )))
        })?;
        Ok(FetchContext::new(SystemTime::now(), seed)
            .with_local_utc_offset_seconds(local_offset_seconds()))
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
        read_file(path, max_len).await
    }

    async fn run_command(&self, spec: &CommandSpec, timeout: Duration) -> CommandOutput {
        run_command(spec, timeout).await
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

fn local_offset_seconds() -> i32 {
    // `time` refuses to read the local offset when it cannot do so soundly (several threads
    // on some platforms); UTC is then the answer, as the core's default.
    time::UtcOffset::current_local_offset().map_or(0, |o| o.whole_seconds())
}

async fn read_file(path: &std::path::Path, max_len: u64) -> Result<SecretBytes, TransportError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| io_error(path, e))?;
    if meta.len() > max_len {
        return Err(TransportError::permanent(format!(
            "{} is {} bytes, more than the {max_len} allowed",
            path.display(),
            meta.len()
        )));
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > max_len {
        return Err(TransportError::permanent(format!(
            "{} grew past the {max_len} bytes allowed",
            path.display()
        )));
    }
    Ok(SecretBytes::new(bytes))
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> TransportError {
    let message = format!("cannot read {}", path.display());
    if e.kind() == std::io::ErrorKind::NotFound {
        TransportError::permanent(message).with_source(e)
    } else {
        TransportError::new(message).with_source(e)
    }
}

/// Where CLIs run: never the application's directory, so a planted `az` there is not picked
/// up (the rule of `redis_entraid_core::identity::cli`)
fn command_dir() -> std::path::PathBuf {
    if cfg!(windows) {
        std::env::var_os("SYSTEMROOT")
            .filter(|d| !d.is_empty())
            .map_or_else(|| std::path::PathBuf::from(r"C:\Windows"), Into::into)
    } else {
        std::path::PathBuf::from("/bin")
    }
}

async fn run_command(spec: &CommandSpec, left: Duration) -> CommandOutput {
    let program = if cfg!(windows) {
        &spec.windows_program
    } else {
        &spec.program
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(command_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A process group of its own, so the deadline can kill whatever the CLI started too.
    #[cfg(unix)]
    command.process_group(0);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CommandOutput::not_found(),
        Err(e) => return CommandOutput::new(None, Vec::new(), e.to_string().into_bytes()),
    };
    let group = child.id();
    let timeout = spec.timeout.min(left);
    // Reading to end-of-file also waits for any grandchild holding stdout; the timeout covers
    // both, and dropping the future kills the child (kill_on_drop) and closes the pipes.
    let output = tokio::time::timeout(timeout, child.wait_with_output()).await;
    #[cfg(unix)]
    if output.is_err() {
        if let Some(pid) = group.and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
    #[cfg(not(unix))]
    let _ = group;
    match output {
        Ok(Ok(out)) => CommandOutput::new(out.status.code(), out.stdout, out.stderr),
        Ok(Err(e)) => CommandOutput::new(None, Vec::new(), e.to_string().into_bytes()),
        Err(_) => CommandOutput::new(
            None,
            Vec::new(),
            format!("timed out after {}ms", timeout.as_millis()).into_bytes(),
        ),
    }
}
