//! Runs any Entra ID identity flow of the core: the one executor loop of `identity::Fetch`

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::identity::cli::{CommandOutput, CommandSpec};
use redis_entraid_core::identity::{FetchContext, Step, TokenSource};
use redis_entraid_core::secret::SecretBytes;
use redis_entraid_core::token::TokenResponse;
use zeroize::Zeroize;

use crate::http::{Http, HttpConfig};
use crate::Fetcher;

/// Fetches tokens through an identity flow: HTTP with reqwest (blocking), files with `std::fs`,
/// CLIs as child processes with a timeout
///
/// For the default chain, the source that produced the first token is used alone from then on,
/// as `DefaultAzureCredential` does.
///
/// `fetch` blocks its thread: call it from a plain thread (as the providers do), never from a
/// task of an async runtime (reqwest's blocking client refuses to run inside a tokio runtime).
pub struct IdentityFetcher {
    source: TokenSource,
    winner: Mutex<Option<TokenSource>>,
    http: Http,
}

impl std::fmt::Debug for IdentityFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityFetcher")
            .field("source", &self.source.name())
            .finish_non_exhaustive()
    }
}

impl IdentityFetcher {
    /// A fetcher for `source` with HTTP settings `http`
    ///
    /// # Errors
    /// A [`TransportError`] when a configured CA file (or `SSL_CERT_FILE`) cannot be read.
    pub fn new(source: TokenSource, http: &HttpConfig) -> Result<Self, TransportError> {
        Ok(Self {
            source,
            winner: Mutex::new(None),
            http: Http::new(http)?,
        })
    }

    fn current_source(&self) -> TokenSource {
        let winner = self.winner.lock().unwrap_or_else(|e| e.into_inner());
        winner.clone().unwrap_or_else(|| self.source.clone())
    }
}

fn os_seed() -> Result<[u8; 32], FetchError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| {
        FetchError::from(TransportError::permanent(format!(
            "the OS random source failed: {e}"
        )))
    })?;
    Ok(seed)
}

fn read_file(path: &std::path::Path, max_len: u64) -> Result<SecretBytes, TransportError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        TransportError::permanent(format!("cannot read {}: {e}", path.display())).with_source(e)
    })?;
    if meta.len() > max_len {
        return Err(TransportError::permanent(format!(
            "{} is {} bytes, more than the {max_len} allowed",
            path.display(),
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max_len).read_to_end(&mut bytes))
        .map_err(|e| {
            TransportError::permanent(format!("cannot read {}: {e}", path.display())).with_source(e)
        })?;
    Ok(SecretBytes::new(bytes))
}

fn run_command(spec: &CommandSpec, timeout: Duration) -> Result<CommandOutput, TransportError> {
    let program = if cfg!(windows) {
        &spec.windows_program
    } else {
        &spec.program
    };
    let mut child = match Command::new(program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CommandOutput::not_found()),
        Err(e) => {
            return Err(TransportError::new(format!("cannot start {program}: {e}")).with_source(e))
        }
    };
    // Drain both pipes on their own threads so a chatty process cannot block on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(MAX_OUTPUT).read_to_end(&mut buf);
        }
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(MAX_OUTPUT).read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout.min(spec.timeout);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TransportError::new(format!(
                    "{program} did not finish within {}s",
                    timeout.min(spec.timeout).as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(
                    TransportError::new(format!("waiting for {program} failed")).with_source(e)
                )
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(CommandOutput::new(status.code(), stdout, stderr))
}

const MAX_OUTPUT: u64 = 1024 * 1024;

impl Fetcher for IdentityFetcher {
    fn fetch(&self, timeout: Duration) -> Result<TokenResponse, FetchError> {
        let deadline = Instant::now() + timeout;
        let source = self.current_source();
        let mut fetch = source.fetch(FetchContext::new(SystemTime::now(), os_seed()?));
        let mut step = fetch.start();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            step = match step? {
                Step::Done(token) => {
                    if let Some(winner) = fetch.winner() {
                        tracing::info!(
                            source = winner.name(),
                            "the default chain found a working identity"
                        );
                        *self.winner.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(winner.clone());
                    }
                    return Ok(token);
                }
                _ if left.is_zero() => return Err(FetchError::TimedOut { after: timeout }),
                Step::Http { request, meta } => match self.http.send(request, &meta, left) {
                    Ok(mut response) => {
                        let next = fetch.on_http_response(&response);
                        // The body holds the access token, which the flow has copied into its
                        // `AccessToken`: wipe this copy.
                        response.body_mut().zeroize();
                        next
                    }
                    Err(e) => fetch.on_transport_error(e.into()),
                },
                Step::ReadFile { path, max_len } => fetch.on_file(read_file(&path, max_len)),
                Step::RunCommand(spec) => match run_command(&spec, left) {
                    Ok(output) => fetch.on_command_output(&output),
                    Err(e) => fetch.on_transport_error(e.into()),
                },
                Step::CallCustom(custom) => fetch.on_custom_result(custom.call()),
            };
        }
    }

    fn name(&self) -> String {
        self.source.name()
    }
}
