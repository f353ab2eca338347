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

// Tests need some instant to start from; its value never matters, only the offsets do.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};
    use std::time::SystemTime;

    use super::*;
    use crate::identity::chain::DefaultChain;

    /// Backends that answer at once: every request with `body`, the clock standing still
    struct Fake {
        now: Instant,
        body: Vec<u8>,
        requests: AtomicUsize,
    }

    impl Fake {
        fn answering(body: &[u8]) -> Self {
            Self {
                now: Instant::now(),
                body: body.to_vec(),
                requests: AtomicUsize::new(0),
            }
        }
    }

    impl Backends for Fake {
        fn now(&self) -> Instant {
            self.now
        }
        fn context(&self) -> Result<FetchContext, FetchError> {
            Ok(FetchContext::new(SystemTime::UNIX_EPOCH, [7; 32]))
        }
        async fn send(
            &self,
            _request: IdentityRequest,
            _meta: &RequestMeta,
            _timeout: Duration,
        ) -> Result<http::Response<Vec<u8>>, TransportError> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            Ok(http::Response::new(self.body.clone()))
        }
        async fn read_file(&self, path: &Path, _: u64) -> Result<SecretBytes, TransportError> {
            Err(TransportError::permanent(format!("no {}", path.display())))
        }
        async fn run_command(&self, _: &CommandSpec, _: Duration) -> CommandOutput {
            CommandOutput::not_found()
        }
        async fn call_custom(
            &self,
            custom: CustomSource,
            running: CallbackRunning,
            _: Duration,
        ) -> Result<TokenResponse, FetchError> {
            // A callback that never returns: its guard is kept, as a runtime's stuck thread would.
            std::mem::forget(running);
            custom.call()
        }
    }

    fn run<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(output) => output,
            Poll::Pending => unreachable!("the fake backends answer at once"),
        }
    }

    const TOKEN_ANSWER: &[u8] =
        br#"{"access_token":"e30.eyJvaWQiOiJtZSJ9.c2ln","expires_in":"3600","token_type":"Bearer"}"#;

    #[test]
    fn a_refresh_starts_from_the_chain_step_that_answered() {
        let chain = DefaultChain::try_from_env(&BTreeMap::<&str, &str>::new()).unwrap();
        let executor = IdentityExecutor::new(TokenSource::DefaultChain(chain));
        let backends = Fake::answering(TOKEN_ANSWER);
        run(executor.fetch(&backends, Duration::from_secs(5))).unwrap();
        let first = backends.requests.swap(0, Ordering::SeqCst);
        assert_eq!(first, 2, "the IMDS probe, then the token request");
        assert_eq!(
            executor.winner_name().as_deref(),
            Some("managed identity (IMDS)")
        );
        run(executor.fetch(&backends, Duration::from_secs(5))).unwrap();
        assert_eq!(
            backends.requests.load(Ordering::SeqCst),
            1,
            "no probe again: the winner is asked directly"
        );
    }

    #[test]
    fn an_oversized_answer_is_refused_whatever_the_http_client() {
        let mut huge = TOKEN_ANSWER.to_vec();
        huge.resize(MAX_RESPONSE_BODY + 1, b' ');
        let imds =
            crate::identity::managed::ManagedIdentity::Imds(crate::identity::imds::Imds::new(
                crate::identity::managed::ManagedIdentityId::SystemAssigned,
            ));
        let executor = IdentityExecutor::new(TokenSource::ManagedIdentity(imds));
        let error = run(executor.fetch(&Fake::answering(&huge), Duration::from_secs(5)))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("larger than the 1048576 bytes allowed"),
            "{error}"
        );
    }

    #[test]
    fn a_stuck_callback_is_not_started_twice() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let source = TokenSource::Custom(CustomSource::new("stuck", move |_: &str| {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(TransportError::new("took too long").into())
        }));
        let executor = IdentityExecutor::new(source);
        let backends = Fake::answering(b"");
        let _ = run(executor.fetch(&backends, Duration::from_secs(5)));
        let error = run(executor.fetch(&backends, Duration::from_secs(5)))
            .unwrap_err()
            .to_string();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(
            error.contains("still running from an earlier fetch"),
            "{error}"
        );
    }

    #[test]
    fn a_fetch_past_its_deadline_times_out() {
        let imds =
            crate::identity::managed::ManagedIdentity::Imds(crate::identity::imds::Imds::new(
                crate::identity::managed::ManagedIdentityId::SystemAssigned,
            ));
        let executor = IdentityExecutor::new(TokenSource::ManagedIdentity(imds));
        let error =
            run(executor.fetch(&Fake::answering(TOKEN_ANSWER), Duration::ZERO)).unwrap_err();
        assert!(matches!(error, FetchError::TimedOut { .. }), "{error:?}");
    }
}
