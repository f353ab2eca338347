//! The provider: one driver task running the core's machine, and cheap cloneable handles

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub(crate) use redis_entraid_core::command::Command;
use redis_entraid_core::command::{Signals, COMMAND_CAPACITY};
use redis_entraid_core::config::Config;
use redis_entraid_core::error::{FetchError, ReauthError};
use redis_entraid_core::event::{Action, Event, Generation, RequestId, Severity, Status};
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::observed::Observed;
use redis_entraid_core::startup::{Startup, StartupError};
use redis_entraid_core::token::{Credentials, TokenResponse};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::source::Fetcher;

/// The driver's clock: tokio's, so paused-time tests run hours of token lifetimes at once
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What every handle reads, published by the driver on a `watch` channel
pub(crate) type Snapshot = Observed;

/// Hands `command` to the driver without ever waiting (the policy when the queue is full is
/// the core's: see [`Signals`])
pub(crate) fn deliver(signals: &Signals, commands: &mpsc::Sender<Command>, command: Command) {
    if let Some(command) = signals.admit(command) {
        if let Err(mpsc::error::TrySendError::Full(command)) = commands.try_send(command) {
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
    /// falls further behind loses the oldest events (it sees `RecvError::Lagged`) rather than
    /// slowing anyone down
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = Some(capacity);
        self
    }

    /// Starts a provider that gets its tokens through `source`, any Entra ID identity flow,
    /// over the default reqwest client: spawns the driver task, then applies the startup policy
    ///
    /// ```no_run
    /// use redis_entraid_tokio::Provider;
    /// use redis_entraid_tokio::identity::imds::Imds;
    /// use redis_entraid_tokio::identity::managed::{ManagedIdentity, ManagedIdentityId};
    /// use redis_entraid_tokio::identity::TokenSource;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let identity = ManagedIdentity::Imds(Imds::new(ManagedIdentityId::SystemAssigned));
    /// let provider = Provider::builder().build(TokenSource::ManagedIdentity(identity)).await?;
    /// let credentials = provider.credentials().expect("the default startup waits for a token");
    /// println!("AUTH as {}", credentials.username());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StartupError::Http`] when the HTTP client cannot be set up, [`StartupError::Spawn`]
    /// outside a tokio runtime, [`StartupError::TimedOut`] or [`StartupError::FetchFailed`]
    /// when the startup policy is not met (the driver is then shut down).
    #[cfg(feature = "reqwest")]
    pub async fn build(
        self,
        source: redis_entraid_core::identity::TokenSource,
    ) -> Result<Provider, StartupError> {
        let identity = crate::source::Identity::new(source).map_err(StartupError::Http)?;
        self.build_with_fetcher(identity).await
    }

    /// Starts a provider on the default chain, configured from the process environment
    /// (the variables Azure SDKs use: `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_SECRET`, `AZURE_FEDERATED_TOKEN_FILE`, `IDENTITY_ENDPOINT`, ...)
    ///
    /// # Errors
    /// [`StartupError::Config`] for an invalid configuration (an unknown
    /// `AZURE_TOKEN_CREDENTIALS`), otherwise as [`build`](Self::build); when no identity works,
    /// the error lists what each step of the chain tried and why it failed.
    #[cfg(feature = "reqwest")]
    pub async fn build_from_env(self) -> Result<Provider, StartupError> {
        let source = crate::source::default_chain_from_env().map_err(StartupError::Config)?;
        self.build(source).await
    }

    /// Spawns the driver task around any [`Fetcher`] and applies the startup policy
    ///
    /// # Errors
    /// [`StartupError::Spawn`] outside a tokio runtime; [`StartupError::TimedOut`] or
    /// [`StartupError::FetchFailed`] when the startup policy is not met (the driver is then
    /// shut down).
    ///
    /// # Example
    /// ```
    /// use std::time::Duration;
    /// use redis_entraid_core::token::{AccessToken, TokenResponse};
    /// use redis_entraid_tokio::{Provider, Startup};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Any async closure `Fn(Duration) -> impl Future<Output = Result<TokenResponse, FetchError>>`
    /// // is a fetcher; real applications use `build(source)` or `Provider::from_env`.
    /// let provider = Provider::builder()
    ///     .startup(Startup::Wait(Duration::from_secs(5)))
    ///     .build_with_fetcher(|_timeout: Duration| async {
    ///         // header.{"oid":"me"}.signature
    ///         Ok(TokenResponse::new(AccessToken::new("e30.eyJvaWQiOiJtZSJ9.c2ln")).with_expires_in(3600))
    ///     })
    ///     .await?;
    /// assert_eq!(provider.credentials().map(|c| c.username().to_owned()).as_deref(), Some("me"));
    /// # Ok(()) }
    /// ```
    pub async fn build_with_fetcher(self, source: impl Fetcher) -> Result<Provider, StartupError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StartupError::Spawn(std::io::Error::other(
                "redis-entraid-tokio needs a tokio runtime: call build() from within one",
            ))
        })?;
        let (state_tx, state_rx) = watch::channel(Observed::default());
        let capacity = self.event_capacity.unwrap_or(256).max(1);
        let (events, _) = broadcast::channel(capacity);
        let (commands, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let signals = Arc::new(Signals::default());
        let dropped_events = Arc::new(AtomicU64::new(0));
        let driver = Driver {
            machine: TokenManager::new(seeded(self.config.clone()), now()),
            source: Arc::new(source),
            state: state_tx,
            events: events.clone(),
            event_capacity: capacity,
            dropped_events: Arc::clone(&dropped_events),
            commands: commands_rx,
            signals: Arc::clone(&signals),
            fetch: None,
        };
        let task = handle.spawn(driver.run());
        let provider = Provider {
            inner: Arc::new(Inner {
                state: state_rx,
                commands,
                signals,
                events,
                dropped_events,
                config: self.config,
                task,
                reported: Arc::new(AtomicU64::new(0)),
                #[cfg(feature = "redis")]
                fan_out: Arc::default(),
            }),
        };
        let startup = self.startup;
        let mut state = provider.inner.state.clone();
        let verdict = state.wait_for(|o| startup.verdict(o).is_some());
        let verdict = match startup.wait_limit() {
            Some(limit) => tokio::time::timeout(limit, verdict).await.ok(),
            None => Some(verdict.await),
        };
        let outcome = match verdict {
            Some(Ok(observed)) => startup.verdict(&observed).unwrap_or(Ok(())),
            // The driver is gone (it only drops its sender when it ends).
            Some(Err(_)) => startup
                .verdict(&provider.inner.state.borrow())
                .unwrap_or(Ok(())),
            None => Err(startup.timed_out(&provider.inner.state.borrow())),
        };
        // Dropping the provider on an error shuts the driver down.
        outcome.map(|()| provider)
    }
}

struct Inner {
    state: watch::Receiver<Snapshot>,
    commands: mpsc::Sender<Command>,
    signals: Arc<Signals>,
    events: broadcast::Sender<Event>,
    dropped_events: Arc<AtomicU64>,
    config: Config,
    #[allow(dead_code)]
    task: JoinHandle<()>,
    reported: Arc<AtomicU64>,
    #[cfg(feature = "redis")]
    fan_out: Arc<redis_entraid_core::fan_out::FanOutLog>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the last command sender already ends the driver's loop; say it explicitly
        // so the machine emits `Stopped`, and abort in case the task is parked in a fetch.
        // The driver reacts at its next poll; it owns no timers after that.
        deliver(&self.signals, &self.commands, Command::Shutdown);
    }
}

/// A running token provider: a cheap, cloneable handle to one driver task
///
/// Dropping the last clone shuts the driver down: the task ends at its next poll, its timer
/// and any in-flight fetch are dropped with it.
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

    /// A provider over the default chain configured from this process's environment
    /// variables (environment service principal, workload identity, managed identity, Azure
    /// CLI, azd), with the default configuration and startup policy and the reqwest client
    ///
    /// # Errors
    /// As [`ProviderBuilder::build_from_env`].
    #[cfg(feature = "reqwest")]
    pub async fn from_env() -> Result<Provider, StartupError> {
        Provider::builder().build_from_env().await
    }

    /// The latest credentials, if a token has arrived (check [`status`](Self::status) for
    /// whether they expired)
    pub fn credentials(&self) -> Option<Credentials> {
        self.inner.state.borrow().latest().map(|(_, c)| c.clone())
    }

    /// How long ago the latest credentials arrived
    pub fn credentials_age(&self) -> Option<Duration> {
        let received = self.inner.state.borrow().received()?;
        Some(now().saturating_duration_since(received))
    }

    /// The latest credentials and their generation
    pub fn current(&self) -> Option<(Generation, Credentials)> {
        self.inner.state.borrow().latest().cloned()
    }

    /// Waits up to `timeout` for credentials newer than `generation` (any, for `None`);
    /// `None` when none arrive in time or the provider has stopped
    pub async fn wait_newer(
        &self,
        generation: Option<Generation>,
        timeout: Duration,
    ) -> Option<(Generation, Credentials)> {
        let mut state = self.inner.state.clone();
        let waited = tokio::time::timeout(
            timeout,
            state.wait_for(|o| o.newer_or_stopped(generation).is_some()),
        )
        .await;
        match waited {
            Ok(Ok(o)) => o.newer_than(generation),
            _ => None,
        }
    }

    /// A latest-value view of the credentials: never queues, never back-pressures the driver
    /// (a `tokio::sync::watch` receiver underneath)
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            state: self.inner.state.clone(),
            seen: None,
        }
    }

    /// Every event from now on, on a bounded `broadcast` queue of its own: a receiver that
    /// falls behind loses the oldest events (`RecvError::Lagged`), the driver never waits
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Events lost because a subscriber's queue was full (each queue drops its oldest)
    pub fn dropped_events(&self) -> u64 {
        self.inner.dropped_events.load(Ordering::Relaxed)
    }

    /// Where the machine stands
    pub fn status(&self) -> Status {
        self.inner.state.borrow().status()
    }

    /// The last fetch error since the last success, if any
    pub fn last_error(&self) -> Option<FetchError> {
        self.inner.state.borrow().last_error().cloned()
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
    /// token (`WRONGPASS`, `NOAUTH`) makes the driver fetch a fresh one. Every failure is
    /// published as [`Event::ReauthFailed`].
    ///
    /// Never waits. Reports queue up to 64 deep; beyond that (thousands of connections failing
    /// at once, faster than the driver reads) a report is dropped, with its
    /// [`Event::ReauthFailed`], but a dropped rejection still makes the driver fetch a fresh
    /// token. Only failures for the current generation change anything.
    pub fn report_reauth(&self, generation: Generation, result: Result<(), ReauthError>) {
        deliver(
            &self.inner.signals,
            &self.inner.commands,
            Command::Reauth { generation, result },
        );
    }

    /// Stops the driver and waits (up to 5 s) until it has; other clones then see
    /// [`Status::Stopped`]
    pub async fn shutdown(&self) {
        // A flag, so even a full command queue cannot lose it.
        deliver(&self.inner.signals, &self.inner.commands, Command::Shutdown);
        let mut state = self.inner.state.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), state.wait_for(Observed::is_stopped))
            .await;
    }

    /// A handle that does not keep the driver alive (used by connection integrations)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakProvider {
        WeakProvider {
            state: self.inner.state.clone(),
            commands: self.inner.commands.downgrade(),
            signals: Arc::clone(&self.inner.signals),
            reported: Arc::clone(&self.inner.reported),
            #[cfg(feature = "redis")]
            fan_out: Arc::clone(&self.inner.fan_out),
        }
    }

    /// How the latest rotations reached the connections this crate re-authenticates in place
    /// ([`EntraConnection`](crate::redis_async::EntraConnection) and the connections of an
    /// [`EntraConnectionManager`](crate::redis_async::EntraConnectionManager)): per
    /// generation, the latency from the token's arrival to each connection's `AUTH` OK
    /// (p50, p99, max), retried attempts and the least margin left on the replaced tokens.
    /// Oldest first; the last 64 rotations are kept.
    #[cfg(feature = "redis")]
    pub fn fan_out_reports(&self) -> Vec<crate::redis_async::FanOutReport> {
        self.inner.fan_out.reports()
    }
}

/// What connection integrations hold: the latest value, and a way to report back that does
/// not keep the driver alive once every [`Provider`] is gone
#[derive(Clone)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct WeakProvider {
    pub(crate) state: watch::Receiver<Snapshot>,
    commands: mpsc::WeakSender<Command>,
    signals: Arc<Signals>,
    reported: Arc<AtomicU64>,
    #[cfg(feature = "redis")]
    pub(crate) fan_out: Arc<redis_entraid_core::fan_out::FanOutLog>,
}

impl fmt::Debug for WeakProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakProvider")
            .field("stopped", &self.state.borrow().is_stopped())
            .finish_non_exhaustive()
    }
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl WeakProvider {
    /// Whether this is the first failure report for `generation` (later ones are dropped)
    pub(crate) fn first_report_for(&self, generation: Generation) -> bool {
        self.reported
            .fetch_max(generation.0, std::sync::atomic::Ordering::Relaxed)
            < generation.0
    }

    /// Hands `command` to the driver if it still runs, never waiting (see [`deliver`])
    pub(crate) fn send(&self, command: Command) {
        if let Some(commands) = self.commands.upgrade() {
            deliver(&self.signals, &commands, command);
        }
    }
}

/// A latest-value subscription to a provider's credentials
#[derive(Clone, Debug)]
pub struct Subscription {
    state: watch::Receiver<Snapshot>,
    seen: Option<Generation>,
}

impl Subscription {
    /// Credentials newer than the last ones this subscription returned, if any, without
    /// waiting
    pub fn next_if_changed(&mut self) -> Option<(Generation, Credentials)> {
        let (generation, credentials) = self.state.borrow_and_update().latest().cloned()?;
        if self.seen.is_some_and(|seen| seen >= generation) {
            return None;
        }
        self.seen = Some(generation);
        Some((generation, credentials))
    }

    /// Waits for credentials newer than the last ones returned; `None` once the provider
    /// has stopped (and no newer credentials remain)
    pub async fn changed(&mut self) -> Option<(Generation, Credentials)> {
        loop {
            if let Some(next) = self.next_if_changed() {
                return Some(next);
            }
            if self.state.borrow().is_stopped() || self.state.changed().await.is_err() {
                return self.next_if_changed();
            }
        }
    }

    /// Like [`changed`](Self::changed), giving up after `timeout`
    pub async fn wait_changed(&mut self, timeout: Duration) -> Option<(Generation, Credentials)> {
        tokio::time::timeout(timeout, self.changed())
            .await
            .ok()
            .flatten()
    }
}

type FetchOutcome = (RequestId, Result<TokenResponse, FetchError>, SystemTime);

struct Driver {
    machine: TokenManager,
    source: Arc<dyn Fetcher>,
    state: watch::Sender<Observed>,
    events: broadcast::Sender<Event>,
    event_capacity: usize,
    dropped_events: Arc<AtomicU64>,
    commands: mpsc::Receiver<Command>,
    signals: Arc<Signals>,
    fetch: Option<JoinHandle<FetchOutcome>>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let until = self.drain();
            if self.state.borrow().is_stopped() {
                break;
            }
            let sleep = async {
                match until {
                    Some(until) => {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await
                    }
                    None => std::future::pending().await,
                }
            };
            let fetch = async {
                match self.fetch.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            };
            enum Input {
                Command(Option<Command>),
                Fetched(Result<FetchOutcome, tokio::task::JoinError>),
                Timeout,
            }
            // Unbiased (tokio picks a random ready branch): a flood of commands must not starve
            // the timer or a finished fetch.
            let input = tokio::select! {
                command = self.commands.recv() => Input::Command(command),
                fetched = fetch => Input::Fetched(fetched),
                () = sleep => Input::Timeout,
            };
            let now = now();
            // The flags first: a request whose wake-up did not fit in the queue is seen here.
            self.signals.apply(&mut self.machine, now);
            match input {
                Input::Command(Some(command)) => self.machine.handle_command(command, now),
                Input::Command(None) => self.machine.shutdown(now),
                Input::Fetched(outcome) => {
                    self.fetch = None;
                    match outcome {
                        Ok((id, result, wall)) => {
                            let _ = self.machine.handle_response(id, result, wall, now);
                        }
                        Err(e) => tracing::error!("the token fetch task failed: {e}"),
                    }
                }
                Input::Timeout => self.machine.handle_timeout(now),
            }
        }
        if let Some(fetch) = self.fetch.take() {
            fetch.abort();
        }
        tracing::debug!("redis-entraid driver stopped");
    }

    fn drain(&mut self) -> Option<Instant> {
        loop {
            let action = self.machine.poll_action();
            let now = now();
            let status = self.machine.status();
            self.state
                .send_if_modified(|o| o.apply(&action, status, now));
            match action {
                Action::Wait { until } => return until,
                Action::FetchToken {
                    id,
                    attempt,
                    deadline,
                } => self.spawn_fetch(id, attempt, deadline),
                // Connections read the new credentials from the watch channel.
                Action::Reauthenticate { .. } => {}
                Action::Event(event) => {
                    log_event(&event, now);
                    // A full queue makes its laggiest receiver lose its oldest event.
                    if self.events.len() >= self.event_capacity {
                        self.dropped_events.fetch_add(1, Ordering::Relaxed);
                    }
                    // No receiver is not an error.
                    let _ = self.events.send(event);
                }
            }
        }
    }

    fn spawn_fetch(&mut self, id: RequestId, attempt: u32, deadline: Instant) {
        if let Some(previous) = self.fetch.take() {
            // The machine gave up on it (its id is stale now); do not let it linger.
            previous.abort();
        }
        let source = Arc::clone(&self.source);
        let timeout = deadline.saturating_duration_since(now());
        tracing::debug!(
            request = id.0,
            attempt,
            timeout_ms = timeout.as_millis() as u64,
            "fetching a token"
        );
        self.fetch = Some(tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, source.fetch(timeout)).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::TimedOut { after: timeout }),
            };
            (id, result, SystemTime::now())
        }));
    }
}

/// Boxed future returned by [`Fetcher::fetch`]
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    if getrandom::getrandom(&mut seed).is_err() {
        // No OS entropy (very rare): the process id and the clock still differ across a fleet.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        seed = (u64::from(std::process::id()) << 32 | u64::from(nanos)).to_le_bytes();
    }
    config.with_seed_if_unset(u64::from_le_bytes(seed))
}
