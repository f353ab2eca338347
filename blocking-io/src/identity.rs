//! Runs any Entra ID identity flow of the core on plain threads: the blocking I/O backends of
//! the core's [`IdentityExecutor`]

use std::future::Future;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::identity::cli::{CommandOutput, CommandSpec};
use redis_entraid_core::identity::custom::CustomSource;
use redis_entraid_core::identity::executor::{
    Backends, CallbackRunning, IdentityExecutor, MAX_COMMAND_OUTPUT,
};
use redis_entraid_core::identity::{FetchContext, IdentityRequest, RequestMeta, TokenSource};
use redis_entraid_core::secret::SecretBytes;
use redis_entraid_core::token::TokenResponse;

use crate::http::{Http, HttpConfig};
use crate::Fetcher;

/// Fetches tokens through an identity flow: HTTP with reqwest (blocking), files with `std::fs`,
/// CLIs as child processes with a deadline, custom callbacks on a thread of their own
///
/// For the default chain, the source that produced the first token is used alone from then on,
/// as `DefaultAzureCredential` does.
///
/// `fetch` blocks its thread: call it from a plain thread (as the providers do), never from a
/// task of an async runtime (reqwest's blocking client refuses to run inside a tokio runtime).
pub struct IdentityFetcher {
    executor: IdentityExecutor,
    backends: ThreadBackends,
}

impl std::fmt::Debug for IdentityFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityFetcher")
            .field("source", &self.executor.name())
            .finish_non_exhaustive()
    }
}

impl IdentityFetcher {
    /// A fetcher for `source`
    ///
    /// # Errors
    /// When the HTTP client cannot be set up (an unreadable or invalid CA file).
    pub fn new(source: TokenSource, http: &HttpConfig) -> Result<Self, TransportError> {
        Ok(Self {
            executor: IdentityExecutor::new(source),
            backends: ThreadBackends {
                http: Http::new(http)?,
            },
        })
    }

    /// Which step of the default chain answered, once one has
    pub fn winner(&self) -> Option<String> {
        self.executor.winner_name()
    }
}

impl Fetcher for IdentityFetcher {
    fn fetch(&self, timeout: Duration) -> Result<TokenResponse, FetchError> {
        let had_winner = self.executor.winner_name().is_some();
        let result = answer_now(self.executor.fetch(&self.backends, timeout));
        if let (false, Some(winner)) = (had_winner, self.executor.winner_name()) {
            tracing::info!(
                source = winner,
                "the default chain found a working identity"
            );
        }
        result
    }

    fn name(&self) -> String {
        self.executor.name()
    }
}

/// Runs a walk whose backends all answer before they return (they block this thread), so its
/// future is ready at the first poll
fn answer_now<F: Future>(walk: F) -> F::Output {
    let mut walk = std::pin::pin!(walk);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = walk.as_mut().poll(&mut context) {
            return output;
        }
        // Unreachable with these backends; yielding keeps a future mistake from spinning hot.
        std::thread::yield_now();
    }
}

/// I/O on the calling thread (helpers threads for pipes and callbacks)
struct ThreadBackends {
    http: Http,
}

impl Backends for ThreadBackends {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn context(&self) -> Result<FetchContext, FetchError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| {
            FetchError::from(TransportError::permanent(format!(
                "the OS random source failed: {e}"
            )))
        })?;
        Ok(FetchContext::new(SystemTime::now(), seed))
    }

    async fn send(
        &self,
        request: IdentityRequest,
        meta: &RequestMeta,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        self.http.send(request, meta, timeout)
    }

    async fn read_file(
        &self,
        path: &std::path::Path,
        max_len: u64,
    ) -> Result<SecretBytes, TransportError> {
        read_file(path, max_len)
    }

    async fn run_command(&self, spec: &CommandSpec, timeout: Duration) -> CommandOutput {
        run_command(spec, timeout)
            .unwrap_or_else(|e| CommandOutput::new(None, Vec::new(), e.to_string().into_bytes()))
    }

    async fn call_custom(
        &self,
        custom: CustomSource,
        running: CallbackRunning,
        timeout: Duration,
    ) -> Result<TokenResponse, FetchError> {
        call_on_thread(custom, running, timeout)
    }
}

/// Calls `custom` on a thread of its own and waits up to `timeout`; a callback that hangs
/// keeps its thread (and `running`), and the executor starts no other until it returns
fn call_on_thread(
    custom: CustomSource,
    running: CallbackRunning,
    timeout: Duration,
) -> Result<TokenResponse, FetchError> {
    let name = custom.name().to_owned();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("redis-entraid-callback".to_owned())
        .spawn(move || {
            let _running = running;
            let _ = tx.send(custom.call());
        })
        .map_err(|e| {
            // The closure (and the guard in it) is dropped: the slot is free again.
            TransportError::new("could not start a thread for the custom token callback")
                .with_source(e)
        })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(TransportError::new(format!(
            "the custom token callback {name:?} did not return within {}ms",
            timeout.as_millis()
        ))
        .into()),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(TransportError::permanent(
            format!("the custom token callback {name:?} panicked"),
        )
        .into()),
    }
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

fn command_dir() -> std::path::PathBuf {
    if cfg!(windows) {
        std::env::var_os("SYSTEMROOT")
            .filter(|d| !d.is_empty())
            .map_or_else(|| std::path::PathBuf::from(r"C:\Windows"), Into::into)
    } else {
        std::path::PathBuf::from("/bin")
    }
}

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
                let _ = pipe.take(MAX_COMMAND_OUTPUT).read_to_end(&mut buf);
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
