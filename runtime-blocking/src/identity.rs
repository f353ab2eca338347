//! Runs any Entra ID identity flow of the core: the one executor loop of `identity::Fetch`

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::identity::cli::{CommandOutput, CommandSpec};
use redis_entraid_core::identity::custom::CustomSource;
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
    callback: CallbackSlot,
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
            callback: CallbackSlot::default(),
        })
    }

    fn current_source(&self) -> TokenSource {
        let winner = self.winner.lock().unwrap_or_else(|e| e.into_inner());
        winner.clone().unwrap_or_else(|| self.source.clone())
    }
}

/// Runs custom token callbacks one at a time, each on a thread of its own, waiting for it only
/// until the fetch's deadline
///
/// A callback is ordinary blocking code that nothing can cancel. If one hangs, its thread
/// stays until it returns; rather than starting another (one stuck thread per retry, for
/// ever), later fetches fail at once with an error saying the earlier call is still running.
#[derive(Default)]
struct CallbackSlot {
    /// When the running call started; `None` when no call runs
    running: Arc<Mutex<Option<Instant>>>,
}

/// Frees the slot when the callback returns or panics
struct SlotGuard(Arc<Mutex<Option<Instant>>>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl CallbackSlot {
    fn call(&self, custom: CustomSource, left: Duration) -> Result<TokenResponse, FetchError> {
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
            *running = Some(Instant::now());
        }
        let guard = SlotGuard(Arc::clone(&self.running));
        let name = custom.name().to_owned();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("redis-entraid-callback".to_owned())
            .spawn(move || {
                let _guard = guard;
                let _ = tx.send(custom.call());
            })
            .map_err(|e| {
                // The closure (and the guard in it) is dropped: the slot is free again.
                TransportError::new("could not start a thread for the custom token callback")
                    .with_source(e)
            })?;
        match rx.recv_timeout(left) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(TransportError::new(format!(
                "the custom token callback {name:?} did not return within {}ms",
                left.as_millis()
            ))
            .into()),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(TransportError::permanent(
                format!("the custom token callback {name:?} panicked"),
            )
            .into()),
        }
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

/// Kills `child` and, on Unix, every process it started: the child leads a process group of
/// its own, so a background grandchild holding stdout cannot keep a fetch waiting
fn kill_tree(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_child(child),
            rustix::process::Signal::KILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn run_command(spec: &CommandSpec, timeout: Duration) -> Result<CommandOutput, TransportError> {
    let program = if cfg!(windows) {
        &spec.windows_program
    } else {
        &spec.program
    };
    let mut command = Command::new(program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(command_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CommandOutput::not_found()),
        Err(e) => {
            return Err(TransportError::new(format!("cannot start {program}: {e}")).with_source(e))
        }
    };
    // Drain both pipes on their own threads so a chatty process cannot block on a full pipe;
    // they report through channels so this thread can stop waiting at the deadline.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let limit = timeout.min(spec.timeout);
    let deadline = Instant::now() + limit;
    let timed_out = || {
        TransportError::new(format!(
            "{program} did not finish within {}ms",
            limit.as_millis()
        ))
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_tree(&mut child);
                return Err(timed_out());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill_tree(&mut child);
                return Err(
                    TransportError::new(format!("waiting for {program} failed")).with_source(e)
                );
            }
        }
    };
    // The program exited, but a process it left behind may still hold its output open: wait
    // for the output only until the deadline, then kill what is left of the group (the
    // reader threads then see end-of-file and end).
    let left = || deadline.saturating_duration_since(Instant::now());
    match (out.recv_timeout(left()), err.recv_timeout(left())) {
        (Ok(stdout), Ok(stderr)) => Ok(CommandOutput::new(status.code(), stdout, stderr)),
        _ => {
            kill_tree(&mut child);
            Err(TransportError::new(format!(
                "{program} exited, but a process it started kept its output open past the {}ms \
                 deadline",
                limit.as_millis()
            )))
        }
    }
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
                Step::CallCustom(custom) => {
                    fetch.on_custom_result(self.callback.call(custom, left))
                }
            };
        }
    }

    fn name(&self) -> String {
        self.source.name()
    }
}
