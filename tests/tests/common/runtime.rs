//! One provider contract over the three runtimes, so a scenario is written once
//!
//! [`Runtime::start`] builds a provider from [`Settings`] around a [`Script`] (a scripted
//! identity endpoint); the provider, its subscriptions and its event receivers are then driven
//! through [`ProviderHandle`], [`SubscriptionHandle`] and [`EventStream`] in blocking style.
//! The blocking runtime calls its own methods; tokio runs its futures on one shared
//! multi-thread runtime (`block_on`), async-std/smol on smol's (`smol::block_on`, drivers
//! spawned on smol's global executor). Time is real everywhere (only tokio has a paused clock;
//! its paused-time tests stay in `runtime-tokio/tests/driver.rs`).

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy};
use redis_entraid_core::error::{FetchError, ReauthError};
use redis_entraid_core::event::{Event, Generation, Status};
use redis_entraid_core::startup::{Startup, StartupError};
use redis_entraid_core::testing::{unsigned_token, Reply};
use redis_entraid_core::token::{Credentials, TokenResponse};

/// How long a [`Reply::Hang`] keeps its fetch busy: far past every request timeout used here
pub(crate) const HANG: Duration = Duration::from_secs(3);

/// Token number `n` (its `oid` is `oid-{n}`), valid for `ttl_s` seconds from now
pub(crate) fn token(n: usize, ttl_s: i64) -> TokenResponse {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs() as i64;
    let exp = now + ttl_s;
    TokenResponse::new(unsigned_token(&format!(
        r#"{{"oid":"oid-{n}","exp":{exp}}}"#
    )))
    .with_expires_in(ttl_s)
}

/// Fast settings on real time: refresh at half-life with no lower bound, 10 ms minimum
/// interval, retries from 20 ms up to 200 ms, requests cut at 500 ms
pub(crate) fn fast_config(min_interval: Duration) -> Config {
    Config::builder()
        .refresh(
            RefreshPolicy::builder()
                .ratio(0.5)
                .lower_bound(Duration::ZERO)
                .min_interval(min_interval)
                .build()
                .expect("valid refresh policy"),
        )
        .retry(
            RetryPolicy::builder()
                .initial_delay(Duration::from_millis(20))
                .max_delay(Duration::from_millis(200))
                .build()
                .expect("valid retry policy"),
        )
        .request_timeout(Duration::from_millis(500))
        .build()
        .expect("valid config")
}

/// What a provider is built with
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) config: Config,
    pub(crate) startup: Startup,
    pub(crate) event_capacity: Option<usize>,
}

impl Settings {
    /// [`fast_config`] with a 10 ms minimum interval, waiting up to 5 s for the first token
    pub(crate) fn fast() -> Self {
        Self {
            config: fast_config(Duration::from_millis(10)),
            startup: Startup::Wait(Duration::from_secs(5)),
            event_capacity: None,
        }
    }

    pub(crate) fn config(self, config: Config) -> Self {
        Self { config, ..self }
    }

    pub(crate) fn startup(self, startup: Startup) -> Self {
        Self { startup, ..self }
    }

    pub(crate) fn event_capacity(self, capacity: usize) -> Self {
        Self {
            event_capacity: Some(capacity),
            ..self
        }
    }
}

type ReplyFn = Box<dyn FnMut(usize) -> Reply + Send>;

struct ScriptInner {
    reply: Mutex<ReplyFn>,
    calls: AtomicUsize,
    started: Mutex<Vec<Instant>>,
}

/// A scripted identity endpoint: fetch number `n` (0-based) is answered by `reply(n)`, after
/// the reply's latency (a blocking sleep on the fetching thread); a [`Reply::Token`] is token
/// number `n + 1` (`oid-{n+1}`), a [`Reply::Hang`] keeps the fetch busy for [`HANG`]
///
/// Clones share the script; the providers built around it hold clones, so
/// [`released`](Self::released) tells when every provider (driver and fetches) let go of it.
#[derive(Clone)]
pub(crate) struct Script(Arc<ScriptInner>);

impl Script {
    pub(crate) fn new(reply: impl FnMut(usize) -> Reply + Send + 'static) -> Self {
        Self(Arc::new(ScriptInner {
            reply: Mutex::new(Box::new(reply)),
            calls: AtomicUsize::new(0),
            started: Mutex::new(Vec::new()),
        }))
    }

    /// Every fetch answered at once with a fresh token valid for `ttl_s` seconds
    pub(crate) fn tokens(ttl_s: i64) -> Self {
        Self::new(move |_| Reply::Token {
            ttl: ttl_s,
            latency: Duration::ZERO,
        })
    }

    /// Every fetch answered with `error`
    pub(crate) fn failing(error: impl Into<FetchError>) -> Self {
        let error = error.into();
        Self::new(move |_| Reply::Fail {
            error: error.clone(),
            latency: Duration::ZERO,
        })
    }

    /// Fetches started so far
    pub(crate) fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }

    /// When each fetch started
    pub(crate) fn started(&self) -> Vec<Instant> {
        self.0.started.lock().expect("not poisoned").clone()
    }

    /// Whether no provider holds the script any more
    pub(crate) fn released(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// One fetch, as every runtime's fetcher performs it
    pub(crate) fn fetch(&self, timeout: Duration) -> Result<TokenResponse, FetchError> {
        let index = self.0.calls.fetch_add(1, Ordering::SeqCst);
        self.0
            .started
            .lock()
            .expect("not poisoned")
            .push(Instant::now());
        let reply = (self.0.reply.lock().expect("not poisoned"))(index);
        match reply {
            Reply::Token { ttl, latency } => {
                std::thread::sleep(latency);
                Ok(token(index + 1, ttl))
            }
            Reply::Response { response, latency } => {
                std::thread::sleep(latency);
                Ok(response)
            }
            Reply::Fail { error, latency } => {
                std::thread::sleep(latency);
                Err(error)
            }
            Reply::Hang => {
                std::thread::sleep(HANG);
                Err(FetchError::TimedOut { after: timeout })
            }
        }
    }
}

/// Polls `condition` every 5 ms until it holds or `limit` passes; whether it held
pub(crate) fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A runtime under test
pub(crate) trait Runtime {
    type Provider: ProviderHandle;
    /// Whether dropping the last handle returns only once the driver has ended (the blocking
    /// runtime joins its driver thread; the async ones end their task at its next poll)
    const DROP_JOINS_DRIVER: bool;

    /// Builds a provider around `script` and applies the startup policy
    fn start(settings: Settings, script: Script) -> Result<Self::Provider, StartupError>;
}

/// A provider handle, its async methods run to completion
pub(crate) trait ProviderHandle: Clone + Send + Sync + std::fmt::Debug + 'static {
    type Subscription: SubscriptionHandle;
    type Events: EventStream;

    fn credentials(&self) -> Option<Credentials>;
    fn current(&self) -> Option<(Generation, Credentials)>;
    fn status(&self) -> Status;
    fn last_error(&self) -> Option<FetchError>;
    fn dropped_events(&self) -> u64;
    fn wait_newer(
        &self,
        seen: Option<Generation>,
        timeout: Duration,
    ) -> Option<(Generation, Credentials)>;
    fn refresh_now(&self);
    fn report_reauth(&self, generation: Generation, result: Result<(), ReauthError>);
    fn shutdown(&self);
    fn subscribe(&self) -> Self::Subscription;
    fn events(&self) -> Self::Events;
}

/// A provider's latest-value subscription
pub(crate) trait SubscriptionHandle {
    fn next_if_changed(&mut self) -> Option<(Generation, Credentials)>;
    fn changed(&mut self) -> Option<(Generation, Credentials)>;
    fn wait_changed(&mut self, timeout: Duration) -> Option<(Generation, Credentials)>;
}

/// A provider's event receiver
pub(crate) trait EventStream {
    /// Every event already queued, without waiting (a lag notice is skipped)
    fn drain(&mut self) -> Vec<Event>;
    /// The next event, waiting up to `timeout`
    fn recv_within(&mut self, timeout: Duration) -> Option<Event>;
}

/// Implements [`ProviderHandle`] and [`SubscriptionHandle`] for a runtime's provider and
/// subscription: every method is the runtime's own, of the same name; the async ones are run
/// to completion with `$block_on`
macro_rules! handles {
    ($provider:ty, $subscription:ty, $events:ty, $block_on:path) => {
        impl ProviderHandle for $provider {
            type Subscription = $subscription;
            type Events = $events;

            fn credentials(&self) -> Option<Credentials> {
                Self::credentials(self)
            }
            fn current(&self) -> Option<(Generation, Credentials)> {
                Self::current(self)
            }
            fn status(&self) -> Status {
                Self::status(self)
            }
            fn last_error(&self) -> Option<FetchError> {
                Self::last_error(self)
            }
            fn dropped_events(&self) -> u64 {
                Self::dropped_events(self)
            }
            fn wait_newer(
                &self,
                seen: Option<Generation>,
                timeout: Duration,
            ) -> Option<(Generation, Credentials)> {
                $block_on(Self::wait_newer(self, seen, timeout))
            }
            fn refresh_now(&self) {
                Self::refresh_now(self);
            }
            fn report_reauth(&self, generation: Generation, result: Result<(), ReauthError>) {
                Self::report_reauth(self, generation, result);
            }
            #[allow(clippy::unit_arg)] // blocking: `done(())`, the shutdown already happened
            fn shutdown(&self) {
                $block_on(Self::shutdown(self));
            }
            fn subscribe(&self) -> Self::Subscription {
                Self::subscribe(self)
            }
            fn events(&self) -> Self::Events {
                Self::events(self)
            }
        }

        impl SubscriptionHandle for $subscription {
            fn next_if_changed(&mut self) -> Option<(Generation, Credentials)> {
                Self::next_if_changed(self)
            }
            fn changed(&mut self) -> Option<(Generation, Credentials)> {
                $block_on(Self::changed(self))
            }
            fn wait_changed(&mut self, timeout: Duration) -> Option<(Generation, Credentials)> {
                $block_on(Self::wait_changed(self, timeout))
            }
        }
    };
}

// ---- blocking: the provider's own methods ----

pub(crate) struct Blocking;

impl Runtime for Blocking {
    type Provider = redis_entraid_blocking::Provider;
    const DROP_JOINS_DRIVER: bool = true;

    fn start(settings: Settings, script: Script) -> Result<Self::Provider, StartupError> {
        let mut builder = redis_entraid_blocking::Provider::builder()
            .config(settings.config)
            .startup(settings.startup);
        if let Some(capacity) = settings.event_capacity {
            builder = builder.event_capacity(capacity);
        }
        builder.build_with_fetcher(move |timeout| script.fetch(timeout))
    }
}

/// The blocking runtime's methods are already done when they return
fn done<T>(value: T) -> T {
    value
}

handles!(
    redis_entraid_blocking::Provider,
    redis_entraid_blocking::Subscription,
    std::sync::mpsc::Receiver<Event>,
    done
);

impl EventStream for std::sync::mpsc::Receiver<Event> {
    fn drain(&mut self) -> Vec<Event> {
        self.try_iter().collect()
    }
    fn recv_within(&mut self, timeout: Duration) -> Option<Event> {
        self.recv_timeout(timeout).ok()
    }
}

// ---- tokio: one shared multi-thread runtime, futures run with block_on ----

pub(crate) struct Tokio;

/// The runtime every tokio scenario's driver runs on (two workers, as on the test machine)
fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn tokio_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio_runtime().block_on(future)
}

impl Runtime for Tokio {
    type Provider = redis_entraid_tokio::Provider;
    const DROP_JOINS_DRIVER: bool = false;

    fn start(settings: Settings, script: Script) -> Result<Self::Provider, StartupError> {
        let mut builder = redis_entraid_tokio::Provider::builder()
            .config(settings.config)
            .startup(settings.startup);
        if let Some(capacity) = settings.event_capacity {
            builder = builder.event_capacity(capacity);
        }
        // The script blocks (its latency is a sleep), so it runs where tokio runs blocking
        // work; the driver's own timeout still cuts it at the request deadline.
        let fetcher = move |timeout: Duration| {
            let script = script.clone();
            async move {
                tokio::task::spawn_blocking(move || script.fetch(timeout))
                    .await
                    .expect("the script does not panic")
            }
        };
        tokio_block_on(builder.build_with_fetcher(fetcher))
    }
}

handles!(
    redis_entraid_tokio::Provider,
    redis_entraid_tokio::Subscription,
    tokio::sync::broadcast::Receiver<Event>,
    tokio_block_on
);

impl EventStream for tokio::sync::broadcast::Receiver<Event> {
    fn drain(&mut self) -> Vec<Event> {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut events = Vec::new();
        loop {
            match self.try_recv() {
                Ok(event) => events.push(event),
                Err(TryRecvError::Lagged(_)) => {}
                Err(_) => return events,
            }
        }
    }
    fn recv_within(&mut self, timeout: Duration) -> Option<Event> {
        use tokio::sync::broadcast::error::RecvError;
        tokio_block_on(async {
            tokio::time::timeout(timeout, async {
                loop {
                    match self.recv().await {
                        Ok(event) => return Some(event),
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return None,
                    }
                }
            })
            .await
            .ok()
            .flatten()
        })
    }
}

// ---- async-std: drivers on smol's global executor, futures run with smol::block_on ----

pub(crate) struct AsyncStd;

impl Runtime for AsyncStd {
    type Provider = redis_entraid_async_std::Provider;
    const DROP_JOINS_DRIVER: bool = false;

    fn start(settings: Settings, script: Script) -> Result<Self::Provider, StartupError> {
        let mut builder = redis_entraid_async_std::Provider::builder()
            .config(settings.config)
            .startup(settings.startup);
        if let Some(capacity) = settings.event_capacity {
            builder = builder.event_capacity(capacity);
        }
        smol::block_on(builder.build_with_fetcher(
            move |timeout| script.fetch(timeout),
            |driver| smol::spawn(driver).detach(),
        ))
    }
}

handles!(
    redis_entraid_async_std::Provider,
    redis_entraid_async_std::Subscription,
    async_broadcast::Receiver<Event>,
    smol::block_on
);

impl EventStream for async_broadcast::Receiver<Event> {
    fn drain(&mut self) -> Vec<Event> {
        use async_broadcast::TryRecvError;
        let mut events = Vec::new();
        loop {
            match self.try_recv() {
                Ok(event) => events.push(event),
                Err(TryRecvError::Overflowed(_)) => {}
                Err(_) => return events,
            }
        }
    }
    fn recv_within(&mut self, timeout: Duration) -> Option<Event> {
        use async_broadcast::RecvError;
        smol::block_on(smol::future::or(
            async {
                loop {
                    match self.recv().await {
                        Ok(event) => return Some(event),
                        Err(RecvError::Overflowed(_)) => {}
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
            async {
                smol::Timer::after(timeout).await;
                None
            },
        ))
    }
}
