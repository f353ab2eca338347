//! Unit behaviour of core modules, kept outside `core/src` because these tests read the clock
//! for a starting instant (only differences between instants matter) and the core never does
#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

mod executor {
    use std::future::Future;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use redis_entraid_core::error::{FetchError, TransportError};
    use redis_entraid_core::identity::cli::{CommandOutput, CommandSpec};
    use redis_entraid_core::identity::custom::CustomSource;
    use redis_entraid_core::identity::{FetchContext, IdentityRequest, RequestMeta, TokenSource};
    use redis_entraid_core::secret::SecretBytes;
    use redis_entraid_core::token::TokenResponse;

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};
    use std::time::SystemTime;

    use redis_entraid_core::identity::chain::DefaultChain;
    use redis_entraid_core::identity::executor::*;

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
        let imds = redis_entraid_core::identity::managed::ManagedIdentity::Imds(
            redis_entraid_core::identity::imds::Imds::new(
                redis_entraid_core::identity::managed::ManagedIdentityId::SystemAssigned,
            ),
        );
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
        let imds = redis_entraid_core::identity::managed::ManagedIdentity::Imds(
            redis_entraid_core::identity::imds::Imds::new(
                redis_entraid_core::identity::managed::ManagedIdentityId::SystemAssigned,
            ),
        );
        let executor = IdentityExecutor::new(TokenSource::ManagedIdentity(imds));
        let error =
            run(executor.fetch(&Fake::answering(TOKEN_ANSWER), Duration::ZERO)).unwrap_err();
        assert!(matches!(error, FetchError::TimedOut { .. }), "{error:?}");
    }
}
