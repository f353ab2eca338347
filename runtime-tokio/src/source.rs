//! Where tokens come from: anything that can fetch one asynchronously, and the executor that
//! runs the core's identity flows on tokio

use std::future::Future;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::cli::{CommandOutput, CommandSpec};
use redis_entraid_core::identity::custom::CustomSource;
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
    callback: CallbackSlot,
}

/// Runs custom token callbacks one at a time on tokio's blocking pool, waiting for each only
/// until the fetch's deadline
///
/// A blocking callback cannot be cancelled: a hung one holds its pool thread until it returns.
/// Rather than start another (one stuck pool thread per retry, until the pool is exhausted),
/// later fetches fail at once with an error saying the earlier call is still running. Clones
/// of an [`Identity`] share the slot.
#[derive(Clone, Debug, Default)]
struct CallbackSlot {
    /// When the running call started; `None` when no call runs
    running: Arc<Mutex<Option<std::time::Instant>>>,
}

/// Frees the slot when the callback returns or panics
struct SlotGuard(Arc<Mutex<Option<std::time::Instant>>>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl CallbackSlot {
    async fn call(
        &self,
        custom: CustomSource,
        left: Duration,
    ) -> Result<TokenResponse, FetchError> {
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(started) = *running {
                return Err(TransportError::new(format!(
                    "the custom token callback {:?} is still running from an earlier fetch \
                     (started {}ms ago); not starting another until it returns",
                    custom.name(),
                    started.elapsed().as_millis()
                ))
                .into());
            }
            *running = Some(std::time::Instant::now());
        }
        let guard = SlotGuard(Arc::clone(&self.running));
        let name = custom.name().to_owned();
        let call = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            custom.call()
        });
        match tokio::time::timeout(left, call).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(TransportError::permanent(format!(
                "the custom token callback {name:?} panicked"
            ))
            .with_source(e)
            .into()),
            Err(_) => Err(TransportError::new(format!(
                "the custom token callback {name:?} did not return within {}ms",
                left.as_millis()
            ))
            .into()),
        }
    }
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
            callback: CallbackSlot::default(),
        })
    }

    /// The default chain (environment, workload identity, managed identity, Azure CLI, azd)
    /// configured from this process's environment variables
    ///
    /// # Errors
    /// [`StartupError::Config`](crate::StartupError::Config) for an invalid configuration (an
    /// unknown `AZURE_TOKEN_CREDENTIALS`), [`StartupError::Client`](crate::StartupError::Client)
    /// when the HTTP client cannot be built.
    pub fn from_env() -> Result<Self, crate::StartupError> {
        let source = default_chain_from_env().map_err(crate::StartupError::Config)?;
        Self::new(source).map_err(crate::StartupError::Client)
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
            source,
            client,
            callback: CallbackSlot::default(),
        }
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
                    fetch.on_custom_result(self.callback.call(custom, left).await)
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
