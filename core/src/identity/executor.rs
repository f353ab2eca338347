//! The one executor of identity flows: walks a [`Fetch`](crate::identity::Fetch)'s steps through a runtime's I/O
//! backends and remembers which step of the default chain answered
//!
//! Runtimes supply only [`Backends`] (how to send a request, read a file, run a process, call
//! a callback, and read their clock); everything else is decided here once, for all of them:
//! the deadline over the whole walk, each request's timeout (`RequestMeta::timeout`, capped by
//! what is left), the response size cap, wiping response bodies once parsed, one custom
//! callback at a time per source, and sticking to the chain's winner so a refresh does not walk
//! the chain (IMDS probe included) again.
//!
//! The walk is an `async fn` because two of the three runtimes are async; it does no I/O of its
//! own and reads no clock (time comes from [`Backends::now`]). A blocking runtime's backends
//! answer at once, so it can drive the walk with any `block_on`.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zeroize::Zeroize;

use crate::error::{FetchError, TransportError};
use crate::identity::cli::{CommandOutput, CommandSpec};
use crate::identity::custom::CustomSource;
use crate::identity::{FetchContext, IdentityRequest, RequestMeta, Step, TokenSource};
use crate::secret::SecretBytes;
use crate::token::TokenResponse;

/// The most an identity endpoint's answer may weigh; token answers are a few KiB, so anything
/// larger is a misconfigured or hostile endpoint, refused before it costs memory
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// The most of a CLI's output that is read
pub const MAX_COMMAND_OUTPUT: u64 = 1024 * 1024;

/// A runtime's I/O for identity flows
///
/// Each method must finish within the `timeout` it is given (the executor computes it from the
/// fetch's deadline), and must not hold what it was handed after it returns, except as
/// documented on [`call_custom`](Self::call_custom).
pub trait Backends: Sync {
    /// The runtime's monotonic clock
    fn now(&self) -> Instant;

    /// What a fetch needs from the world: the wall clock, fresh OS randomness, the UTC offset
    ///
    /// # Errors
    /// When the OS random source fails.
    fn context(&self) -> Result<FetchContext, FetchError>;

    /// Sends `request` as `meta` says (proxy bypass, plain-http refusal, certificate pinning),
    /// reading at most [`MAX_RESPONSE_BODY`] bytes of body
    fn send(
        &self,
        request: IdentityRequest,
        meta: &RequestMeta,
        timeout: Duration,
    ) -> impl Future<Output = Result<http::Response<Vec<u8>>, TransportError>> + Send;

    /// Reads at most `max_len` bytes of `path`; a larger file is an error
    fn read_file(
        &self,
        path: &Path,
        max_len: u64,
    ) -> impl Future<Output = Result<SecretBytes, TransportError>> + Send;

    /// Runs `spec` in its own process group with its working directory set to the system
    /// directory (`/bin`, `%SYSTEMROOT%`), reading at most [`MAX_COMMAND_OUTPUT`] bytes of each
    /// stream, killing the whole group at the deadline
    fn run_command(
        &self,
        spec: &CommandSpec,
        timeout: Duration,
    ) -> impl Future<Output = CommandOutput> + Send;

    /// Calls `custom` off the executor (it may block) and waits up to `timeout` for it; the
    /// `running` guard must move with the call and drop only when the callback returns, so a
    /// callback that hangs is never started twice
    fn call_custom(
        &self,
        custom: CustomSource,
        running: CallbackRunning,
        timeout: Duration,
    ) -> impl Future<Output = Result<TokenResponse, FetchError>> + Send;
}

/// Held while a custom callback runs; dropping it lets the next fetch call the callback again
#[derive(Debug)]
pub struct CallbackRunning(Arc<Mutex<Option<Instant>>>);

impl Drop for CallbackRunning {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// An identity flow ready to fetch tokens again and again
#[derive(Debug)]
pub struct IdentityExecutor {
    source: TokenSource,
    winner: Mutex<Option<TokenSource>>,
    callback_started: Arc<Mutex<Option<Instant>>>,
}

impl IdentityExecutor {
    /// An executor for `source`
    pub fn new(source: TokenSource) -> Self {
        Self {
            source,
            winner: Mutex::new(None),
            callback_started: Arc::default(),
        }
    }

    /// The configured source's name (the chain's, before a step of it answers)
    pub fn name(&self) -> String {
        self.source.name()
    }

    /// The source a fetch starts from: the chain's winner once one answered, else the
    /// configured source
    pub fn current_source(&self) -> TokenSource {
        let winner = self.winner.lock().unwrap_or_else(|e| e.into_inner());
        winner.clone().unwrap_or_else(|| self.source.clone())
    }

    /// Which step of the default chain answered, once one has
    pub fn winner_name(&self) -> Option<String> {
        let winner = self.winner.lock().unwrap_or_else(|e| e.into_inner());
        winner.as_ref().map(TokenSource::name)
    }

    /// Fetches one token through `backends`, giving up after `timeout`
    ///
    /// # Errors
    /// The flow's [`FetchError`]: what the identity endpoint answered, a transport failure,
    /// [`FetchError::TimedOut`] when `timeout` passed, or (for the default chain) what each step
    /// tried and why it failed.
    pub async fn fetch<B: Backends>(
        &self,
        backends: &B,
        timeout: Duration,
    ) -> Result<TokenResponse, FetchError> {
        let deadline = backends.now() + timeout;
        let mut fetch = self.current_source().fetch(backends.context()?);
        let mut step = fetch.start();
        loop {
            let left = deadline.saturating_duration_since(backends.now());
            step = match step? {
                Step::Done(token) => {
                    if let Some(winner) = fetch.winner() {
                        *self.winner.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(winner.clone());
                    }
                    return Ok(token);
                }
                _ if left.is_zero() => return Err(FetchError::TimedOut { after: timeout }),
                Step::Http { request, meta } => {
                    let limit = meta.timeout.map_or(left, |t| t.min(left));
                    match backends.send(request, &meta, limit).await {
                        Ok(response) if response.body().len() > MAX_RESPONSE_BODY => {
                            let mut body = response.into_body();
                            body.zeroize();
                            fetch.on_transport_error(
                                TransportError::permanent(format!(
                                    "the identity endpoint's answer is larger than the {} \
                                     bytes allowed",
                                    MAX_RESPONSE_BODY
                                ))
                                .into(),
                            )
                        }
                        Ok(mut response) => {
                            let next = fetch.on_http_response(&response);
                            // The body holds the access token, which the flow has copied into
                            // its `AccessToken`: wipe this copy.
                            response.body_mut().zeroize();
                            next
                        }
                        Err(e) => fetch.on_transport_error(e.into()),
                    }
                }
                Step::ReadFile { path, max_len } => {
                    fetch.on_file(backends.read_file(&path, max_len).await)
                }
                Step::RunCommand(spec) => {
                    let output = backends.run_command(&spec, spec.timeout.min(left)).await;
                    fetch.on_command_output(&output)
                }
                Step::CallCustom(custom) => {
                    let result = match self.claim_callback(&custom, backends.now()) {
                        Ok(running) => backends.call_custom(custom, running, left).await,
                        Err(busy) => Err(busy),
                    };
                    fetch.on_custom_result(result)
                }
            };
        }
    }

    fn claim_callback(
        &self,
        custom: &CustomSource,
        now: Instant,
    ) -> Result<CallbackRunning, FetchError> {
        let mut started = self
            .callback_started
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(started) = *started {
            return Err(TransportError::new(format!(
                "the custom token callback {:?} is still running from an earlier fetch \
                 (started {}ms ago); not starting another until it returns",
                custom.name(),
                now.saturating_duration_since(started).as_millis()
            ))
            .into());
        }
        *started = Some(now);
        Ok(CallbackRunning(Arc::clone(&self.callback_started)))
    }
}
