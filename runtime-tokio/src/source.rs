//! Where tokens come from: anything that can fetch one asynchronously, and the executor that
//! runs the core's identity flows on tokio

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::cli::{CommandOutput, CommandSpec};
use redis_entraid_core::identity::{FetchContext, Step, TokenSource as CoreSource};
use redis_entraid_core::secret::SecretBytes;
use redis_entraid_core::token::TokenResponse;
use zeroize::Zeroize;

use crate::http::AsyncHttpClient;
use crate::provider::BoxFuture;

/// Fetches one token within `timeout`
///
/// The driver runs each fetch in a task of its own, so a slow source never delays timers,
/// commands or subscribers; an answer that arrives after the machine gave up on the request
/// is ignored (and the task aborted). Async closures
/// `Fn(Duration) -> impl Future<Output = Result<TokenResponse, FetchError>>` are sources;
/// [`Identity`] runs every Entra ID flow of the core.
///
/// ```
/// use std::time::Duration;
/// use redis_entraid_core::token::{AccessToken, TokenResponse};
/// use redis_entraid_tokio::TokenSource;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source = |_timeout: Duration| async { Ok(TokenResponse::new(AccessToken::new("h.p.s")).with_expires_in(3600)) };
/// assert!(source.fetch(Duration::from_secs(1)).await.is_ok());
/// # }
/// ```
pub trait TokenSource: Send + Sync + 'static {
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

impl<F, Fut> TokenSource for F
where
    F: Fn(Duration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenResponse, FetchError>> + Send + 'static,
{
    fn fetch(&self, timeout: Duration) -> BoxFuture<'_, Result<TokenResponse, FetchError>> {
        Box::pin(self(timeout))
    }
}

/// A core identity flow ([`redis_entraid_core::identity::TokenSource`]) executed with an
/// [`AsyncHttpClient`], `tokio::fs`, `tokio::process` and `spawn_blocking`
///
/// ```no_run
/// use redis_entraid_core::identity::TokenSource as Flow;
/// use redis_entraid_core::identity::managed::ManagedIdentity;
/// use redis_entraid_tokio::{Identity, Provider};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let flow: Flow = unimplemented!();
/// let provider = Provider::builder().build(Identity::new(flow)?).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Identity<C = DefaultClient> {
    source: CoreSource,
    client: C,
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
        Ok(Self {
            source,
            client: crate::http::ReqwestClient::builder().build()?,
        })
    }

    /// The default chain (environment, workload identity, managed identity, Azure CLI, azd)
    /// configured from this process's environment variables
    ///
    /// # Errors
    /// As [`Identity::new`].
    pub fn from_env() -> Result<Self, TransportError> {
        Self::new(default_chain_from_env())
    }
}

/// The default chain configured from the process environment
pub fn default_chain_from_env() -> CoreSource {
    CoreSource::DefaultChain(DefaultChain::from_env(&ProcessEnv))
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
        Self { source, client }
    }

    /// One token through the step machine (what the driver calls)
    ///
    /// # Errors
    /// The flow's classified [`FetchError`].
    pub async fn fetch_token(&self, timeout: Duration) -> Result<TokenResponse, FetchError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let ctx = FetchContext::new(SystemTime::now(), os_seed()?)
            .with_local_utc_offset_seconds(local_offset_seconds());
        let mut fetch = self.source.fetch(ctx);
        let mut step = fetch.start();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            step = match step? {
                Step::Done(token) => return Ok(token),
                Step::Http { request, meta } => {
                    let t = meta.timeout.map_or(left, |t| t.min(left));
                    match tokio::time::timeout(t, self.client.send(request, &meta, t)).await {
                        Ok(Ok(mut response)) => {
                            let next = fetch.on_http_response(&response);
                            // The body holds the access token, which the flow has copied into
                            // its `AccessToken`: wipe this copy.
                            response.body_mut().zeroize();
                            next
                        }
                        Ok(Err(e)) => fetch.on_transport_error(e.into()),
                        Err(_) => fetch.on_transport_error(FetchError::TimedOut { after: t }),
                    }
                }
                Step::ReadFile { path, max_len } => fetch.on_file(read_file(&path, max_len).await),
                Step::RunCommand(spec) => fetch.on_command_output(&run_command(&spec, left).await),
                Step::CallCustom(custom) => {
                    match tokio::task::spawn_blocking(move || custom.call()).await {
                        Ok(result) => fetch.on_custom_result(result),
                        Err(e) => fetch.on_custom_result(Err(TransportError::permanent(
                            "the custom token callback panicked",
                        )
                        .with_source(e)
                        .into())),
                    }
                }
            };
        }
    }
}

impl<C: AsyncHttpClient> TokenSource for Identity<C> {
    fn fetch(&self, timeout: Duration) -> BoxFuture<'_, Result<TokenResponse, FetchError>> {
        Box::pin(self.fetch_token(timeout))
    }

    fn name(&self) -> String {
        self.source.name()
    }
}

fn os_seed() -> Result<[u8; 32], FetchError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| {
        FetchError::from(TransportError::permanent(format!(
            "the operating system's random source failed: {e}"
        )))
    })?;
    Ok(seed)
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
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CommandOutput::not_found(),
        Err(e) => return CommandOutput::new(None, Vec::new(), e.to_string().into_bytes()),
    };
    let timeout = spec.timeout.min(left);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => CommandOutput::new(out.status.code(), out.stdout, out.stderr),
        Ok(Err(e)) => CommandOutput::new(None, Vec::new(), e.to_string().into_bytes()),
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => CommandOutput::new(
            None,
            Vec::new(),
            format!("timed out after {}ms", timeout.as_millis()).into_bytes(),
        ),
    }
}
