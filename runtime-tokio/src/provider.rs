//! The provider: one driver task running the core's machine, and cheap cloneable handles

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis_entraid_core::config::Config;
use redis_entraid_core::error::{ConfigError, FetchError, ReauthError, TransportError};
use redis_entraid_core::event::{Action, Event, Generation, RequestId, Status};
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::token::{Credentials, TokenResponse};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::source::TokenSource;

/// The driver's clock: tokio's, so paused-time tests run hours of token lifetimes at once
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What `build` waits for before it returns
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Startup {
    /// Wait up to this long for the first token, through retries; fail with the last error
    /// if none arrives in time
    Wait(Duration),
    /// Return at once; the first token arrives in the background
    Lazy,
    /// Wait for the first answer and fail on the first error, however retryable
    FailFast,
}

impl Default for Startup {
    fn default() -> Self {
        Startup::Wait(Duration::from_secs(30))
    }
}

/// Why a provider could not start
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// No token within the startup wait
    #[error("no token within {waited:?} of starting{}", last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    TimedOut {
        /// How long it waited
        waited: Duration,
        /// The last fetch error, if any
        last_error: Option<FetchError>,
    },
    /// The first fetch failed (fail-fast startup)
    #[error("the first token request failed: {0}")]
    FetchFailed(FetchError),
    /// The default HTTP client could not be built (e.g. an unreadable `SSL_CERT_FILE`)
    #[error("cannot build the HTTP client: {0}")]
    Client(TransportError),
    /// The identity configuration in the environment is invalid (e.g. an unknown
    /// `AZURE_TOKEN_CREDENTIALS` value), refused before any request, as the Azure SDKs do
    #[error("the identity configuration in the environment is invalid: {0}")]
    Config(ConfigError),
    /// `build` was called outside a tokio runtime
    #[error("redis-entraid-tokio needs a tokio runtime: call build() from within one")]
    NoRuntime,
}

/// The state every handle can read, published by the driver on a `watch` channel
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub(crate) latest: Option<(Generation, Credentials)>,
    /// When `latest` arrived (the driver's clock)
    pub(crate) received: Option<Instant>,
    /// When `latest` expires (the driver's clock)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) expires_at: Option<Instant>,
    pub(crate) status: Status,
    pub(crate) last_error: Option<FetchError>,
    pub(crate) failures_before_first_token: u32,
    pub(crate) stopped: bool,
}

/// How many commands may wait for the driver; beyond that, [`deliver`] coalesces or drops
/// (see [`Provider::refresh_now`] and [`Provider::report_reauth`]) instead of queueing without
/// limit
pub(crate) const COMMAND_CAPACITY: usize = 64;

/// Requests that are flags rather than queue entries, so they coalesce and a full queue can
/// never lose them: the driver reads both after every wake-up
#[derive(Debug, Default)]
pub(crate) struct Signals {
    refresh: AtomicBool,
    shutdown: AtomicBool,
}

/// Hands `command` to the driver without ever waiting: a refresh request sets the refresh
/// flag (queueing a wake-up only if none is pending), a shutdown sets the shutdown flag, and a
/// re-authentication report is queued if there is room, else dropped (a dropped rejection still
/// sets the refresh flag, so the fresh token it asks for is not lost)
pub(crate) fn deliver(signals: &Signals, commands: &mpsc::Sender<Command>, command: Command) {
    match command {
        Command::RefreshNow => {
            if !signals.refresh.swap(true, Ordering::SeqCst) {
                // Full: the driver wakes for what is queued and reads the flag then.
                let _ = commands.try_send(Command::RefreshNow);
            }
        }
        Command::Shutdown => {
            signals.shutdown.store(true, Ordering::SeqCst);
            let _ = commands.try_send(Command::Shutdown);
        }
        Command::Reauth { generation, result } => {
            let rejected = matches!(&result, Err(e) if e.is_credential_rejection());
            if let Err(mpsc::error::TrySendError::Full(_)) =
                commands.try_send(Command::Reauth { generation, result })
            {
                tracing::debug!(
                    generation = generation.0,
                    "the driver's command queue is full; a re-authentication report was dropped"
                );
                if rejected {
                    signals.refresh.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

pub(crate) enum Command {
    RefreshNow,
    Reauth {
        generation: Generation,
        result: Result<(), ReauthError>,
    },
    Shutdown,
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

    /// Spawns the driver task and applies the startup policy
    ///
    /// # Errors
    /// [`StartupError::NoRuntime`] outside a tokio runtime; [`StartupError::TimedOut`] or
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
    /// // is a token source; real applications use `Identity` or `Provider::from_env`.
    /// let provider = Provider::builder()
    ///     .startup(Startup::Wait(Duration::from_secs(5)))
    ///     .build(|_timeout: Duration| async {
    ///         // header.{"oid":"me"}.signature
    ///         Ok(TokenResponse::new(AccessToken::new("e30.eyJvaWQiOiJtZSJ9.c2ln")).with_expires_in(3600))
    ///     })
    ///     .await?;
    /// assert_eq!(provider.credentials().map(|c| c.username().to_owned()).as_deref(), Some("me"));
    /// # Ok(()) }
    /// ```
    pub async fn build(self, source: impl TokenSource) -> Result<Provider, StartupError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StartupError::NoRuntime)?;
        let (state_tx, state_rx) = watch::channel(Snapshot {
            latest: None,
            received: None,
            expires_at: None,
            status: Status::Starting { failures: 0 },
            last_error: None,
            failures_before_first_token: 0,
            stopped: false,
        });
        let capacity = self.event_capacity.unwrap_or(256).max(1);
        let (events, _) = broadcast::channel(capacity);
        let (commands, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let signals = Arc::new(Signals::default());
        let driver = Driver {
            machine: TokenManager::new(seeded(self.config.clone()), now()),
            source: Arc::new(source),
            state: state_tx,
            events: events.clone(),
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
                config: self.config,
                task,
                reported: Arc::new(std::sync::atomic::AtomicU64::new(0)),
                #[cfg(feature = "redis")]
                fan_out: Arc::default(),
            }),
        };
        let mut state = provider.inner.state.clone();
        match self.startup {
            Startup::Lazy => Ok(provider),
            Startup::Wait(waited) => {
                let got = tokio::time::timeout(
                    waited,
                    state.wait_for(|s| s.latest.is_some() || s.stopped),
                )
                .await;
                match got {
                    Ok(Ok(s)) if s.latest.is_some() => {
                        drop(s);
                        Ok(provider)
                    }
                    _ => Err(StartupError::TimedOut {
                        waited,
                        last_error: provider.last_error(),
                    }),
                }
            }
            Startup::FailFast => {
                let outcome = state
                    .wait_for(|s| {
                        s.latest.is_some() || s.failures_before_first_token > 0 || s.stopped
                    })
                    .await
                    .map(|s| (s.latest.is_some(), s.last_error.clone()));
                match outcome {
                    Ok((true, _)) => Ok(provider),
                    Ok((false, Some(e))) => Err(StartupError::FetchFailed(e)),
                    _ => Err(StartupError::FetchFailed(FetchError::from(
                        TransportError::permanent("the driver stopped before the first token"),
                    ))),
                }
            }
        }
    }
}

struct Inner {
    state: watch::Receiver<Snapshot>,
    commands: mpsc::Sender<Command>,
    signals: Arc<Signals>,
    events: broadcast::Sender<Event>,
    config: Config,
    #[allow(dead_code)]
    task: JoinHandle<()>,
    reported: Arc<std::sync::atomic::AtomicU64>,
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
    /// CLI, azd), with the default configuration and the reqwest client
    ///
    /// # Errors
    /// [`StartupError::Config`] for an invalid configuration (an unknown
    /// `AZURE_TOKEN_CREDENTIALS`), [`StartupError::Client`] when the HTTP client cannot be
    /// built, otherwise as
    /// [`ProviderBuilder::build`].
    #[cfg(feature = "reqwest")]
    pub async fn from_env(startup: Startup) -> Result<Provider, StartupError> {
        let identity = crate::source::Identity::from_env()?;
        Provider::builder().startup(startup).build(identity).await
    }

    /// The latest credentials, if a token has arrived (check [`status`](Self::status) for
    /// whether they expired)
    pub fn credentials(&self) -> Option<Credentials> {
        self.inner
            .state
            .borrow()
            .latest
            .as_ref()
            .map(|(_, c)| c.clone())
    }

    /// How long ago the latest credentials arrived
    pub fn credentials_age(&self) -> Option<Duration> {
        self.inner
            .state
            .borrow()
            .received
            .map(|at| now().saturating_duration_since(at))
    }

    /// The latest credentials and their generation
    pub fn current(&self) -> Option<(Generation, Credentials)> {
        self.inner.state.borrow().latest.clone()
    }

    /// Waits up to `timeout` for credentials newer than `generation` (any, for `None`);
    /// after a shutdown it returns the last credentials, if any, at once
    pub async fn wait_newer(
        &self,
        generation: Option<Generation>,
        timeout: Duration,
    ) -> Option<(Generation, Credentials)> {
        let mut state = self.inner.state.clone();
        let waited = tokio::time::timeout(
            timeout,
            state.wait_for(|s| {
                s.stopped
                    || match (&s.latest, generation) {
                        (Some((g, _)), Some(seen)) => *g > seen,
                        (Some(_), None) => true,
                        _ => false,
                    }
            }),
        )
        .await;
        match waited {
            Ok(Ok(s)) => s.latest.clone(),
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

    /// Where the machine stands
    pub fn status(&self) -> Status {
        self.inner.state.borrow().status
    }

    /// The last fetch error since the last success, if any
    pub fn last_error(&self) -> Option<FetchError> {
        self.inner.state.borrow().last_error.clone()
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
        let _ = tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.stopped)).await;
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
    reported: Arc<std::sync::atomic::AtomicU64>,
    #[cfg(feature = "redis")]
    pub(crate) fan_out: Arc<redis_entraid_core::fan_out::FanOutLog>,
}

impl fmt::Debug for WeakProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakProvider")
            .field("stopped", &self.state.borrow().stopped)
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
        let (generation, credentials) = self.state.borrow_and_update().latest.clone()?;
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
            if self.state.borrow().stopped || self.state.changed().await.is_err() {
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
    source: Arc<dyn TokenSource>,
    state: watch::Sender<Snapshot>,
    events: broadcast::Sender<Event>,
    commands: mpsc::Receiver<Command>,
    signals: Arc<Signals>,
    fetch: Option<JoinHandle<FetchOutcome>>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let until = self.drain();
            if self.state.borrow().stopped {
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
            if self.signals.shutdown.load(Ordering::SeqCst) {
                self.machine.shutdown(now);
            }
            if self.signals.refresh.swap(false, Ordering::SeqCst) {
                self.machine.refresh_now(now);
            }
            match input {
                // Wake-ups only: their flags were read above.
                Input::Command(Some(Command::RefreshNow | Command::Shutdown)) => {}
                Input::Command(Some(Command::Reauth { generation, result })) => {
                    let _ = self.machine.handle_reauth_result(generation, result, now);
                }
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
            match self.machine.poll_action() {
                Action::Wait { until } => {
                    let status = self.machine.status();
                    self.state.send_if_modified(|s| {
                        let changed = s.status != status;
                        s.status = status;
                        changed
                    });
                    return until;
                }
                Action::FetchToken {
                    id,
                    attempt,
                    deadline,
                } => self.spawn_fetch(id, attempt, deadline),
                Action::Reauthenticate {
                    credentials,
                    generation,
                } => {
                    tracing::info!(
                        generation = generation.0,
                        username = credentials.username(),
                        "new credentials"
                    );
                    let status = self.machine.status();
                    let expires_at = match status {
                        Status::Valid { expires_at, .. } | Status::Retrying { expires_at, .. } => {
                            Some(expires_at)
                        }
                        _ => None,
                    };
                    self.state.send_modify(|s| {
                        s.latest = Some((generation, credentials));
                        s.received = Some(now());
                        s.expires_at = expires_at;
                        s.last_error = None;
                        s.status = status;
                    });
                }
                Action::Event(event) => self.on_event(event),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match &event {
            Event::FetchFailed {
                attempt,
                error,
                next_attempt_at,
                ..
            } => {
                tracing::warn!(
                    attempt,
                    retry_in_ms =
                        next_attempt_at.saturating_duration_since(now()).as_millis() as u64,
                    "token request failed: {error}"
                );
                let error = error.clone();
                self.state.send_modify(|s| {
                    if s.latest.is_none() {
                        s.failures_before_first_token += 1;
                    }
                    s.last_error = Some(error);
                });
            }
            Event::RetriesExhausted {
                attempts,
                last_error,
            } => {
                tracing::error!(
                    attempts,
                    "token refresh keeps failing, still retrying: {last_error}"
                );
            }
            Event::Expired { generation } => {
                tracing::error!(
                    generation = generation.0,
                    "token expired before a replacement arrived"
                );
            }
            Event::ReauthFailed { generation, error } => {
                tracing::warn!(
                    generation = generation.0,
                    "re-authentication failed: {error}"
                );
            }
            Event::ClockSkew {
                host_ahead,
                by,
                evidence,
            } => {
                tracing::warn!(
                    host_ahead,
                    by_s = by.as_secs(),
                    ?evidence,
                    "the host clock disagrees with the identity provider's; fix its time sync"
                );
            }
            Event::Stopped => {
                self.state.send_modify(|s| {
                    s.stopped = true;
                    s.status = Status::Stopped;
                });
            }
            _ => tracing::debug!(?event, "token event"),
        }
        // No receiver is not an error; a lagging receiver loses its oldest events.
        let _ = self.events.send(event);
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

/// Boxed future returned by [`TokenSource::fetch`]
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
