//! The provider: one driver thread running the core's machine, and cheap cloneable handles

use std::fmt;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use redis_entraid_blocking_io::{Fetcher, HttpConfig, IdentityFetcher};
use redis_entraid_core::command::{Command, Signals, COMMAND_CAPACITY};
use redis_entraid_core::config::Config;
use redis_entraid_core::error::{FetchError, ReauthError, TransportError};
use redis_entraid_core::event::{Action, Event, Generation, RequestId, Severity, Status};
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::startup::{Startup, StartupError};
use redis_entraid_core::token::{Credentials, TokenResponse};

use crate::watch::Shared;

/// What reaches the driver: a handle's command, or a fetch thread's answer
enum Input {
    Command(Command),
    Fetched {
        id: RequestId,
        result: Result<TokenResponse, FetchError>,
        wall: SystemTime,
    },
}

/// Hands `command` to the driver without ever waiting (the policy when the queue is full is
/// the core's: see [`Signals`])
fn deliver(signals: &Signals, inputs: &SyncSender<Input>, command: Command) {
    if let Some(command) = signals.admit(command) {
        if let Err(TrySendError::Full(Input::Command(command))) =
            inputs.try_send(Input::Command(command))
        {
            signals.overflowed(&command);
        }
    }
}

/// Builds a [`Provider`]
#[derive(Clone, Debug, Default)]
pub struct ProviderBuilder {
    config: Config,
    startup: Startup,
    event_capacity: Option<usize>,
    http: HttpConfig,
}

impl ProviderBuilder {
    /// Refresh, retry and timeout settings
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// What [`build`](Self::build) waits for
    pub fn startup(mut self, startup: Startup) -> Self {
        self.startup = startup;
        self
    }

    /// Queue length of each [`Provider::events`] receiver (default 256); a subscriber that
    /// falls further behind loses events rather than slowing anyone down
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = Some(capacity);
        self
    }

    /// TLS settings for identity requests (extra root CAs; `SSL_CERT_FILE` is honoured anyway)
    pub fn http(mut self, http: HttpConfig) -> Self {
        self.http = http;
        self
    }

    /// Starts a provider that gets its tokens through `source`, any Entra ID identity flow
    ///
    /// ```no_run
    /// use redis_entraid_blocking::Provider;
    /// use redis_entraid_core::identity::imds::Imds;
    /// use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
    /// use redis_entraid_core::identity::TokenSource;
    ///
    /// let identity = ManagedIdentity::Imds(Imds::new(ManagedIdentityId::SystemAssigned));
    /// let provider = Provider::builder().build(TokenSource::ManagedIdentity(identity))?;
    /// let credentials = provider.credentials().expect("the default startup waits for a token");
    /// println!("AUTH as {}", credentials.username());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`StartupError`] when the HTTP client cannot be set up, the thread cannot start, or the
    /// startup policy is not met (the driver is then shut down).
    pub fn build(self, source: TokenSource) -> Result<Provider, StartupError> {
        let fetcher = IdentityFetcher::new(source, &self.http).map_err(StartupError::Http)?;
        self.build_with_fetcher(fetcher)
    }

    /// Starts a provider on the default chain, configured from the process environment
    /// (the variables Azure SDKs use: `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_SECRET`, `AZURE_FEDERATED_TOKEN_FILE`, `IDENTITY_ENDPOINT`, ...)
    ///
    /// # Errors
    /// [`StartupError::Config`] for an invalid configuration (an unknown
    /// `AZURE_TOKEN_CREDENTIALS`), otherwise as [`build`](Self::build); when no identity works,
    /// the error lists what each step of the chain tried and why it failed.
    pub fn build_from_env(self) -> Result<Provider, StartupError> {
        let chain = DefaultChain::try_from_env(&ProcessEnv).map_err(StartupError::Config)?;
        self.build(TokenSource::DefaultChain(chain))
    }

    /// Starts the driver thread around any [`Fetcher`] and applies the startup policy
    ///
    /// # Errors
    /// [`StartupError`] when the thread cannot start, or when the startup policy is not met
    /// (the driver is then shut down).
    pub fn build_with_fetcher(self, source: impl Fetcher) -> Result<Provider, StartupError> {
        let shared = Arc::new(Shared::new());
        let (tx, rx) = mpsc::sync_channel(COMMAND_CAPACITY);
        let signals = Arc::new(Signals::default());
        let driver = Driver {
            signals: Arc::clone(&signals),
            machine: TokenManager::new(seeded(self.config.clone()), Instant::now()),
            source: Arc::new(source),
            shared: Arc::clone(&shared),
            inputs: rx,
            loopback: tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("redis-entraid".to_owned())
            .spawn(move || driver.run())
            .map_err(StartupError::Spawn)?;
        let provider = Provider {
            inner: Arc::new(Inner {
                shared,
                commands: tx,
                signals,
                thread: Some(thread),
                config: self.config,
                event_capacity: self.event_capacity.unwrap_or(256),
            }),
        };
        let startup = self.startup;
        let shared = &provider.inner.shared;
        match shared.wait_until(startup.wait_limit(), |o| startup.verdict(o)) {
            Some(Ok(())) => Ok(provider),
            // Dropping the provider shuts the driver down.
            Some(Err(e)) => Err(e),
            None => Err(startup.timed_out(&shared.lock())),
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    commands: SyncSender<Input>,
    signals: Arc<Signals>,
    thread: Option<JoinHandle<()>>,
    config: Config,
    event_capacity: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        deliver(&self.signals, &self.commands, Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            // The driver only ever waits on its command channel, so it sees the shutdown at
            // once; fetch threads it left behind end with their own timeouts.
            let _ = thread.join();
        }
    }
}

/// A running token provider: a cheap, cloneable handle to one driver thread
///
/// Dropping the last clone shuts the driver down and joins its thread.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// A builder with the default configuration and startup policy
    pub fn builder() -> ProviderBuilder {
        ProviderBuilder::default()
    }

    /// The default chain from the environment, default settings, waiting up to 30 s for the
    /// first token
    ///
    /// # Errors
    /// As [`ProviderBuilder::build_from_env`].
    pub fn from_env() -> Result<Provider, StartupError> {
        Self::builder().build_from_env()
    }

    /// The latest credentials, if a token has arrived (check [`status`](Self::status) for
    /// whether they expired)
    pub fn credentials(&self) -> Option<Credentials> {
        self.inner.shared.lock().latest().map(|(_, c)| c.clone())
    }

    /// The latest credentials and their generation
    pub fn current(&self) -> Option<(Generation, Credentials)> {
        self.inner.shared.lock().latest().cloned()
    }

    /// How long ago the latest credentials arrived
    pub fn credentials_age(&self) -> Option<Duration> {
        let received = self.inner.shared.lock().received()?;
        Some(received.elapsed())
    }

    /// Waits up to `timeout` for credentials newer than `generation` (any, for `None`);
    /// `None` when none arrive in time or the provider has stopped
    pub fn wait_newer(
        &self,
        generation: Option<Generation>,
        timeout: Duration,
    ) -> Option<(Generation, Credentials)> {
        self.inner
            .shared
            .wait_until(Some(timeout), |o| o.newer_or_stopped(generation))
            .flatten()
    }

    /// A latest-value view of the credentials: never queues, never back-pressures the driver
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            provider: self.clone(),
            seen: None,
        }
    }

    /// Every event from now on, on a bounded queue of its own
    pub fn events(&self) -> Receiver<Event> {
        self.inner
            .shared
            .subscribe_events(self.inner.event_capacity)
    }

    /// Events dropped because a subscriber's queue was full
    pub fn dropped_events(&self) -> u64 {
        self.inner
            .shared
            .dropped_events
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the machine stands
    pub fn status(&self) -> Status {
        self.inner.shared.lock().status()
    }

    /// The last fetch error since the last success, if any
    pub fn last_error(&self) -> Option<FetchError> {
        self.inner.shared.lock().last_error().cloned()
    }

    /// The configuration
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Fetches a new token as soon as the minimum refresh interval allows
    ///
    /// Never waits, and requests coalesce: any number of calls before the driver gets to them
    /// count as one (the machine would coalesce them anyway).
    pub fn refresh_now(&self) {
        deliver(
            &self.inner.signals,
            &self.inner.commands,
            Command::RefreshNow,
        );
    }

    /// Reports how a connection took the credentials of `generation`; a rejection of the
    /// token (`WRONGPASS`, `NOAUTH`) makes the driver fetch a fresh one
    ///
    /// Never waits. Reports queue up to 64 deep; beyond that (many connections failing at
    /// once, faster than the driver reads) a report is dropped, with its
    /// [`Event::ReauthFailed`], but a dropped rejection still makes the driver fetch a fresh
    /// token. Only failures for the current generation change anything.
    pub fn report_reauth(&self, generation: Generation, result: Result<(), ReauthError>) {
        deliver(
            &self.inner.signals,
            &self.inner.commands,
            Command::Reauth { generation, result },
        );
    }

    /// Stops the driver now (other clones then see [`Status::Stopped`]); a flag, so even a
    /// full command queue cannot lose it
    pub fn shutdown(&self) {
        deliver(&self.inner.signals, &self.inner.commands, Command::Shutdown);
        self.inner
            .shared
            .wait_until(Some(Duration::from_secs(5)), |o| {
                o.is_stopped().then_some(())
            });
    }
}

/// A latest-value subscription to a provider's credentials
#[derive(Clone, Debug)]
pub struct Subscription {
    provider: Provider,
    seen: Option<Generation>,
}

impl Subscription {
    /// Credentials newer than the last ones this subscription returned, if any, without
    /// waiting
    pub fn next_if_changed(&mut self) -> Option<(Generation, Credentials)> {
        let newer = self.provider.inner.shared.lock().newer_than(self.seen);
        self.seen_now(newer)
    }

    /// Waits for credentials newer than the last ones returned; `None` once the provider has
    /// stopped
    pub fn changed(&mut self) -> Option<(Generation, Credentials)> {
        let newer = self
            .provider
            .inner
            .shared
            .wait_until(None, |o| o.newer_or_stopped(self.seen))
            .flatten();
        self.seen_now(newer)
    }

    /// Like [`changed`](Self::changed), giving up after `timeout`
    pub fn wait_changed(&mut self, timeout: Duration) -> Option<(Generation, Credentials)> {
        let newer = self.provider.wait_newer(self.seen, timeout);
        self.seen_now(newer)
    }

    fn seen_now(
        &mut self,
        newer: Option<(Generation, Credentials)>,
    ) -> Option<(Generation, Credentials)> {
        let (generation, credentials) = newer?;
        self.seen = Some(generation);
        Some((generation, credentials))
    }
}

struct Driver {
    machine: TokenManager,
    source: Arc<dyn Fetcher>,
    shared: Arc<Shared>,
    inputs: Receiver<Input>,
    loopback: SyncSender<Input>,
    signals: Arc<Signals>,
}

impl Driver {
    fn run(mut self) {
        loop {
            let until = self.drain();
            if self.shared.lock().is_stopped() {
                return;
            }
            let received = match until {
                Some(until) => self
                    .inputs
                    .recv_timeout(until.saturating_duration_since(Instant::now())),
                None => self
                    .inputs
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            let now = Instant::now();
            // The flags first: a request whose wake-up did not fit in the queue is seen here.
            self.signals.apply(&mut self.machine, now);
            match received {
                Ok(Input::Command(command)) => self.machine.handle_command(command, now),
                Ok(Input::Fetched { id, result, wall }) => {
                    self.machine.handle_response(id, result, wall, now);
                }
                Err(RecvTimeoutError::Disconnected) => self.machine.shutdown(now),
                Err(RecvTimeoutError::Timeout) => self.machine.handle_timeout(now),
            }
        }
    }

    fn drain(&mut self) -> Option<Instant> {
        loop {
            let action = self.machine.poll_action();
            let now = Instant::now();
            let status = self.machine.status();
            self.shared.update(|o| o.apply(&action, status, now));
            match action {
                Action::Wait { until } => return until,
                Action::FetchToken {
                    id,
                    attempt,
                    deadline,
                } => {
                    if let Err(error) = self.spawn_fetch(id, attempt, deadline) {
                        // Answered here: sending to its own full queue would block the driver.
                        self.machine
                            .handle_response(id, Err(error), SystemTime::now(), now);
                    }
                }
                // Connections read the new credentials from the shared state.
                Action::Reauthenticate { .. } => {}
                Action::Event(event) => {
                    log_event(&event, now);
                    self.shared.publish_event(&event);
                }
            }
        }
    }

    fn spawn_fetch(
        &self,
        id: RequestId,
        attempt: u32,
        deadline: Instant,
    ) -> Result<(), FetchError> {
        let source = Arc::clone(&self.source);
        let reply = self.loopback.clone();
        let timeout = deadline.saturating_duration_since(Instant::now());
        tracing::debug!(
            request = id.0,
            attempt,
            timeout_ms = timeout.as_millis() as u64,
            "fetching a token"
        );
        let spawned = std::thread::Builder::new()
            .name("redis-entraid-fetch".to_owned())
            .spawn(move || {
                let result = source.fetch(timeout);
                // Let go of the source before the driver can see the result: whoever then drops
                // the last provider handle finds the source released once the driver is joined
                // (dropping it after the send raced with that, seen as a flaky test).
                drop(source);
                // Waits for room in the queue: the driver always drains it.
                let _ = reply.send(Input::Fetched {
                    id,
                    result,
                    wall: SystemTime::now(),
                });
            });
        spawned.map(drop).map_err(|e| {
            TransportError::new("could not start a fetch thread")
                .with_source(e)
                .into()
        })
    }
}

/// Logs `event` at its severity (the line is the core's, the same in every runtime)
fn log_event(event: &Event, now: Instant) {
    let line = event.describe(now);
    match event.severity() {
        Severity::Debug => tracing::debug!("{line}"),
        Severity::Info => tracing::info!("{line}"),
        Severity::Warn => tracing::warn!("{line}"),
        Severity::Error => tracing::error!("{line}"),
    }
}

/// `config` with a jitter seed drawn from the OS when the user set none, so the processes of a
/// fleet do not retry and refresh in lockstep (an explicit `rng_seed` is kept)
fn seeded(config: Config) -> Config {
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_err() {
        // No OS entropy (very rare): the process id and the clock still differ across a fleet.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        seed = (u64::from(std::process::id()) << 32 | u64::from(nanos)).to_le_bytes();
    }
    config.with_seed_if_unset(u64::from_le_bytes(seed))
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
