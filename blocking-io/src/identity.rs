//! Runs any Entra ID identity flow of the core on plain threads: the blocking I/O backends of
//! the core's [`IdentityExecutor`]

use std::future::Future;
use std::time::{Duration, Instant};

use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::identity::cli::{CommandOutput, CommandSpec};
use redis_entraid_core::identity::custom::CustomSource;
use redis_entraid_core::identity::executor::{Backends, CallbackRunning, IdentityExecutor};
use redis_entraid_core::identity::{FetchContext, IdentityRequest, RequestMeta, TokenSource};
use redis_entraid_core::secret::SecretBytes;
use redis_entraid_core::token::TokenResponse;

use crate::http::HttpClient;
use crate::local::{read_file, run_command};
use crate::Fetcher;
use crate::HttpConfig;

/// Fetches tokens through an identity flow: HTTP with [`HttpClient`] (ureq, rustls), files with `std::fs`,
/// CLIs as child processes with a deadline, custom callbacks on a thread of their own
///
/// For the default chain, the source that produced the first token is used alone from then on,
/// as `DefaultAzureCredential` does.
///
/// `fetch` blocks its thread: call it from a plain thread or a blocking pool (as the providers
/// do), never from a task of an async runtime.
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
                http: HttpClient::from_config(http)?,
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
    http: HttpClient,
}

impl Backends for ThreadBackends {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn context(&self) -> Result<FetchContext, FetchError> {
        crate::fetch_context()
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
