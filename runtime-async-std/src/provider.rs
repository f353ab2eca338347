//! The provider: a driver future running the core's machine, and cheap cloneable handles

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use async_broadcast::{InactiveReceiver, Receiver as EventReceiver, Sender as EventSender};
use async_channel::{Receiver, Sender, TrySendError};
use futures_lite::future;
use redis_entraid_blocking_io::{Fetcher, HttpConfig, IdentityFetcher};
pub(crate) use redis_entraid_core::command::Command;
use redis_entraid_core::command::{Signals, COMMAND_CAPACITY};
use redis_entraid_core::config::Config;
use redis_entraid_core::error::{FetchError, ReauthError};
use redis_entraid_core::event::{Action, Event, Generation, RequestId, Severity, Status};
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::startup::{Startup, StartupError};
use redis_entraid_core::token::{Credentials, TokenResponse};

use crate::shared::Shared;

/// What reaches the driver: a handle's command, or a fetch's answer from the blocking pool
pub(crate) enum Input {
    Command(Command),
    Fetched {
        id: RequestId,
        result: Result<TokenResponse, FetchError>,
        wall: SystemTime,
    },
}

/// Hands `command` to the driver without ever waiting (the policy when the queue is full is
/// the core's: see [`Signals`])
fn deliver(signals: &Signals, inputs: &Sender<Input>, command: Command) {
    if let Some(command) = signals.admit(command) {
        if let Err(TrySendError::Full(Input::Command(command))) =
            inputs.try_send(Input::Command(command))
        {
            signals.overflowed(&command);
        }
    }
}

/// The driver: a future that runs the token machine until the provider shuts down
///
/// Spawn it on any executor (`async_std::task::spawn(driver)`, `smol::spawn(driver).detach()`),
/// or let [`ProviderBuilder::build`] spawn it through the closure you give. It completes when
/// the last [`Provider`] handle is dropped or [`Provider::shutdown`] is called.
#[must_use = "the provider fetches nothing until its driver is spawned"]
pub struct Driver(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Driver")
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
    /// falls further behind loses its oldest events rather than slowing anyone down
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = Some(capacity);
        self
    }

    /// TLS settings for identity requests (extra root CAs; `SSL_CERT_FILE` is honoured anyway)
    pub fn http(mut self, http: HttpConfig) -> Self {
        self.http = http;
        self
    }

    /// The provider and its driver for any Entra ID identity flow, without spawning or waiting
    ///
    /// # Errors
    /// [`StartupError::Http`] when a CA file (or `SSL_CERT_FILE`) cannot be read.
    pub fn start(self, source: TokenSource) -> Result<(Provider, Driver), StartupError> {
        let fetcher = IdentityFetcher::new(source, &self.http).map_err(StartupError::Http)?;
        Ok(self.start_with_fetcher(fetcher))
    }

    /// The provider and its driver around any [`Fetcher`], without spawning or waiting
    pub fn start_with_fetcher(self, fetcher: impl Fetcher) -> (Provider, Driver) {
        let shared = Arc::new(Shared::new());
        let (tx, rx) = async_channel::bounded(COMMAND_CAPACITY);
        let signals = Arc::new(Signals::default());
        let (mut events, inactive) =
            async_broadcast::broadcast(self.event_capacity.unwrap_or(256).max(1));
        events.set_overflow(true);
        let inactive = inactive.deactivate();
        let run = run(
            TokenManager::new(seeded(self.config.clone()), Instant::now()),
            Arc::new(fetcher),
            Arc::clone(&shared),
            rx,
            tx.clone(),
            Arc::clone(&signals),
            events.clone(),
        );
        let provider = Provider {
            inner: Arc::new(Inner {
                shared,
                commands: tx,
                signals,
                events: inactive,
                config: self.config,
                reported: Arc::new(AtomicU64::new(0)),
                #[cfg(feature = "redis")]
                fan_out: Arc::default(),
            }),
        };
        (provider, Driver(Box::pin(run)))
    }

    /// Starts a provider for `source`: spawns the driver with `spawn`, then applies the
    /// startup policy
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), redis_entraid_async_std::StartupError> {
    /// use redis_entraid_async_std::Provider;
    /// use redis_entraid_core::identity::imds::Imds;
    /// use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
    /// use redis_entraid_core::identity::TokenSource;
    ///
    /// let source = TokenSource::ManagedIdentity(ManagedIdentity::Imds(Imds::new(ManagedIdentityId::SystemAssigned)));
    /// let provider = Provider::builder()
    ///     .build(source, |driver| { async_std::task::spawn(driver); })
    ///     .await?;
    /// println!("AUTH as {:?}", provider.credentials().map(|c| c.username().to_owned()));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StartupError`] when HTTP cannot be set up or the startup policy is not met (the
    /// driver is then shut down).
    pub async fn build(
        self,
        source: TokenSource,
        spawn: impl FnOnce(Driver),
    ) -> Result<Provider, StartupError> {
        let startup = self.startup;
        let (provider, driver) = self.start(source)?;
        spawn(driver);
        provider.apply_startup(startup).await.map(|()| provider)
    }

    /// Starts a provider on the default chain from the process environment
    ///
    /// # Errors
    /// [`StartupError::Config`] for an invalid configuration (an unknown
    /// `AZURE_TOKEN_CREDENTIALS`), otherwise as [`build`](Self::build).
    pub async fn build_from_env(
        self,
        spawn: impl FnOnce(Driver),
    ) -> Result<Provider, StartupError> {
        let chain = DefaultChain::try_from_env(&ProcessEnv).map_err(StartupError::Config)?;
        self.build(TokenSource::DefaultChain(chain), spawn).await
    }

    /// Starts a provider around any [`Fetcher`]: spawns the driver, applies the startup policy
    ///
    /// # Errors
    /// [`StartupError`] when the startup policy is not met (the driver is then shut down).
    pub async fn build_with_fetcher(
        self,
        fetcher: impl Fetcher,
        spawn: impl FnOnce(Driver),
    ) -> Result<Provider, StartupError> {
        let startup = self.startup;
        let (provider, driver) = self.start_with_fetcher(fetcher);
        spawn(driver);
        provider.apply_startup(startup).await.map(|()| provider)
    }
}

struct Inner {
    shared: Arc<Shared>,
    commands: Sender<Input>,
    signals: Arc<Signals>,
    events: InactiveReceiver<Event>,
    config: Config,
    /// The newest generation a connection failure was reported for (one report each)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    reported: Arc<AtomicU64>,
    #[cfg(feature = "redis")]
    fan_out: Arc<redis_entraid_core::fan_out::FanOutLog>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never blocks; a flag, so even a full queue cannot lose it.
        deliver(&self.signals, &self.commands, Command::Shutdown);
    }
}

/// A running token provider: a cheap, cloneable handle to one driver
///
/// Dropping the last clone ends the driver.
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

    async fn apply_startup(&self, startup: Startup) -> Result<(), StartupError> {
        let shared = &self.inner.shared;
        let outcome = match shared
            .wait_until(startup.wait_limit(), |o| startup.verdict(o))
            .await
        {
            Some(verdict) => verdict,
            None => Err(startup.timed_out(&shared.lock())),
        };
        if outcome.is_err() {
            self.shutdown().await;
        }
        outcome
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

    /// Waits up to `timeout` (`None`: until shutdown) for credentials newer than `generation`
    /// (any, for `None`); after shutdown, returns what there is at once
    pub async fn wait_newer(
        &self,
        generation: Option<Generation>,
        timeout: Duration,
    ) -> Option<(Generation, Credentials)> {
        self.inner
            .shared
            .wait_until(Some(timeout), |o| o.newer_or_stopped(generation))
            .await
            .flatten()
    }

    /// A latest-value view of the credentials: never queues, never back-pressures the driver
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            provider: self.clone(),
            seen: None,
        }
    }

    /// Every event from now on; a receiver that falls behind loses its oldest events
    pub fn events(&self) -> EventReceiver<Event> {
        self.inner.events.activate_cloned()
    }

    /// Events lost because a subscriber's queue was full (each queue drops its oldest)
    pub fn dropped_events(&self) -> u64 {
        self.inner.shared.dropped_events.load(Ordering::Relaxed)
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

    /// A handle that does not keep the driver alive (used by connection integrations)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakProvider {
        WeakProvider {
            shared: Arc::clone(&self.inner.shared),
            commands: self.inner.commands.clone(),
            signals: Arc::clone(&self.inner.signals),
            reported: Arc::clone(&self.inner.reported),
            #[cfg(feature = "redis")]
            fan_out: Arc::clone(&self.inner.fan_out),
        }
    }

    /// How the latest rotations reached the connections this crate re-authenticates in place
    /// ([`EntraConnection`](crate::redis::EntraConnection) and the connections of an
    /// [`EntraConnectionManager`](crate::redis::EntraConnectionManager)): per generation, the
    /// latency from the token's arrival to each connection's `AUTH` OK (p50, p99, max),
    /// retried attempts and the least margin left on the replaced tokens. Oldest first; the
    /// last 64 rotations are kept.
    #[cfg(feature = "redis")]
    pub fn fan_out_reports(&self) -> Vec<crate::redis::FanOutReport> {
        self.inner.fan_out.reports()
    }

    /// Stops the driver and waits until it has stopped (other clones then see
    /// [`Status::Stopped`])
    pub async fn shutdown(&self) {
        deliver(&self.inner.signals, &self.inner.commands, Command::Shutdown);
        self.inner
            .shared
            .wait_until(Some(Duration::from_secs(5)), |o| {
                o.is_stopped().then_some(())
            })
            .await;
    }
}

/// What connection integrations hold: the shared state and a way to report back, without
/// keeping the driver alive once every [`Provider`] is gone (the driver stops when the last
/// `Provider` drops, whatever holds one of these)
#[derive(Clone)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct WeakProvider {
    pub(crate) shared: Arc<Shared>,
    commands: Sender<Input>,
    signals: Arc<Signals>,
    reported: Arc<AtomicU64>,
    #[cfg(feature = "redis")]
    pub(crate) fan_out: Arc<redis_entraid_core::fan_out::FanOutLog>,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl WeakProvider {
    /// Whether this is the first failure report for `generation` (later ones are dropped)
    pub(crate) fn first_report_for(&self, generation: Generation) -> bool {
        self.reported.fetch_max(generation.0, Ordering::Relaxed) < generation.0
    }

    /// Hands `command` to the driver if it still runs, never waiting (see [`deliver`])
    pub(crate) fn send(&self, command: Command) {
        deliver(&self.signals, &self.commands, command);
    }
}

impl fmt::Debug for WeakProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakProvider").finish_non_exhaustive()
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

    /// Waits for credentials newer than the last ones this subscription returned; `None` once
    /// the provider has stopped
    pub async fn changed(&mut self) -> Option<(Generation, Credentials)> {
        let seen = self.seen;
        let newer = self
            .provider
            .inner
            .shared
            .wait_until(None, |o| o.newer_or_stopped(seen))
            .await
            .flatten();
        self.seen_now(newer)
    }

    /// Like [`changed`](Self::changed), giving up after `timeout`
    pub async fn wait_changed(&mut self, timeout: Duration) -> Option<(Generation, Credentials)> {
        let newer = self.provider.wait_newer(self.seen, timeout).await;
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

async fn run(
    mut machine: TokenManager,
    fetcher: Arc<dyn Fetcher>,
    shared: Arc<Shared>,
    inputs: Receiver<Input>,
    loopback: Sender<Input>,
    signals: Arc<Signals>,
    events: EventSender<Event>,
) {
    loop {
        let until = drain(&mut machine, &fetcher, &shared, &loopback, &events);
        if shared.lock().is_stopped() {
            return;
        }
        let received = match until {
            Some(until) => {
                future::or(async { Some(inputs.recv().await) }, async {
                    async_io::Timer::at(until).await;
                    None
                })
                .await
            }
            None => Some(inputs.recv().await),
        };
        let now = Instant::now();
        // The flags first: a request whose wake-up did not fit in the queue is seen here.
        signals.apply(&mut machine, now);
        match received {
            Some(Ok(Input::Command(command))) => machine.handle_command(command, now),
            Some(Ok(Input::Fetched { id, result, wall })) => {
                machine.handle_response(id, result, wall, now);
            }
            Some(Err(_)) => machine.shutdown(now),
            None => machine.handle_timeout(now),
        }
    }
}

fn drain(
    machine: &mut TokenManager,
    fetcher: &Arc<dyn Fetcher>,
    shared: &Shared,
    loopback: &Sender<Input>,
    events: &EventSender<Event>,
) -> Option<Instant> {
    loop {
        let action = machine.poll_action();
        let now = Instant::now();
        let status = machine.status();
        shared.update(|o| o.apply(&action, status, now));
        match action {
            Action::Wait { until } => return until,
            Action::FetchToken {
                id,
                attempt,
                deadline,
            } => {
                let timeout = deadline.saturating_duration_since(now);
                tracing::debug!(
                    request = id.0,
                    attempt,
                    timeout_ms = timeout.as_millis() as u64,
                    "fetching a token"
                );
                let fetcher = Arc::clone(fetcher);
                let reply = loopback.clone();
                // On the blocking pool: the fetch runs even though nobody polls the task, and
                // its answer comes back as an input; a late one is stale and ignored.
                blocking::unblock(move || {
                    let result = fetcher.fetch(timeout);
                    // Released before the driver can see the result, so the source is gone
                    // once the last provider handle and the driver are.
                    drop(fetcher);
                    // On a pool thread, so it may wait for room: the driver always drains.
                    let _ = reply.send_blocking(Input::Fetched {
                        id,
                        result,
                        wall: SystemTime::now(),
                    });
                })
                .detach();
            }
            // Connections read the new credentials from the shared state.
            Action::Reauthenticate { .. } => {}
            Action::Event(event) => {
                log_event(&event, now);
                // Overflow mode: a full queue drops its oldest event; this never waits.
                if let Ok(Some(_)) = events.try_broadcast(event) {
                    shared.dropped_events.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
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
