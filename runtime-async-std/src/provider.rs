//! The provider: a driver future running the core's machine, and cheap cloneable handles

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use async_broadcast::{InactiveReceiver, Receiver as EventReceiver, Sender as EventSender};
use async_channel::{Receiver, Sender, TrySendError};
use futures_lite::future;
use redis_entraid_blocking::{Fetcher, HttpConfig, IdentityFetcher, Startup, StartupError};
use redis_entraid_core::config::Config;
use redis_entraid_core::error::{FetchError, ReauthError, TransportError};
use redis_entraid_core::event::{Action, Event, Generation, RequestId, Status};
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::TokenSource;
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::token::{Credentials, TokenResponse};

use crate::shared::Shared;

/// How many commands may wait for the driver; beyond that, [`deliver`] coalesces or drops
/// (see [`Provider::refresh_now`] and [`Provider::report_reauth`]) instead of queueing without
/// limit
const COMMAND_CAPACITY: usize = 64;

/// Requests that are flags rather than queue entries, so they coalesce and a full queue can
/// never lose them: the driver reads both after every wake-up
#[derive(Debug, Default)]
struct Signals {
    refresh: AtomicBool,
    shutdown: AtomicBool,
}

/// Hands `command` to the driver without ever waiting: a refresh request sets the refresh
/// flag (queueing a wake-up only if none is pending), a shutdown sets the shutdown flag, and a
/// re-authentication report is queued if there is room, else dropped (a dropped rejection still
/// sets the refresh flag, so the fresh token it asks for is not lost)
fn deliver(signals: &Signals, commands: &Sender<Command>, command: Command) {
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
            if let Err(TrySendError::Full(_)) =
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
        // Not sent this way: fetches on the blocking pool wait for room (see `drain`), so an
        // answer is never dropped; here, on an executor thread, nothing may wait.
        fetched @ Command::Fetched { .. } => {
            let _ = commands.try_send(fetched);
        }
    }
}

pub(crate) enum Command {
    Fetched {
        id: RequestId,
        result: Result<TokenResponse, FetchError>,
        wall: SystemTime,
    },
    RefreshNow,
    Reauth {
        generation: Generation,
        result: Result<(), ReauthError>,
    },
    Shutdown,
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
    /// # async fn demo() -> Result<(), redis_entraid_blocking::StartupError> {
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
    commands: Sender<Command>,
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
        let outcome = match startup {
            Startup::Wait(waited) => match shared
                .wait_until(Some(waited), |s| s.latest.as_ref().map(|_| ()))
                .await
            {
                Some(()) => Ok(()),
                None => Err(StartupError::TimedOut {
                    waited,
                    last_error: shared.lock().last_error.clone(),
                }),
            },
            Startup::FailFast => {
                let result = shared
                    .wait_until(None, |s| {
                        if s.latest.is_some() {
                            Some(Ok(()))
                        } else if s.failures_before_first_token > 0 || s.stopped {
                            Some(Err(s.last_error.clone()))
                        } else {
                            None
                        }
                    })
                    .await;
                match result {
                    Some(Ok(())) => Ok(()),
                    Some(Err(Some(e))) => Err(StartupError::FetchFailed(e)),
                    _ => Err(StartupError::FetchFailed(FetchError::from(
                        TransportError::permanent("the driver stopped before the first token"),
                    ))),
                }
            }
            _ => Ok(()),
        };
        if outcome.is_err() {
            self.shutdown().await;
        }
        outcome
    }

    /// The latest credentials, if a token has arrived (check [`status`](Self::status) for
    /// whether they expired)
    pub fn credentials(&self) -> Option<Credentials> {
        self.inner
            .shared
            .lock()
            .latest
            .as_ref()
            .map(|(_, c)| c.clone())
    }

    /// The latest credentials and their generation
    pub fn current(&self) -> Option<(Generation, Credentials)> {
        self.inner.shared.lock().latest.clone()
    }

    /// Waits up to `timeout` (`None`: until shutdown) for credentials newer than `generation`
    /// (any, for `None`); after shutdown, returns what there is at once
    pub async fn wait_newer(
        &self,
        generation: Option<Generation>,
        timeout: Option<Duration>,
    ) -> Option<(Generation, Credentials)> {
        self.inner
            .shared
            .wait_until(timeout, |s| {
                match (&s.latest, generation) {
                    (Some((g, c)), Some(seen)) if *g > seen => return Some(Some((*g, c.clone()))),
                    (Some((g, c)), None) => return Some(Some((*g, c.clone()))),
                    _ => {}
                }
                s.stopped.then_some(None)
            })
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

    /// Where the machine stands
    pub fn status(&self) -> Status {
        self.inner.shared.lock().status
    }

    /// The last fetch error since the last success, if any
    pub fn last_error(&self) -> Option<FetchError> {
        self.inner.shared.lock().last_error.clone()
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
            .wait_until(Some(Duration::from_secs(5)), |s| s.stopped.then_some(()))
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
    commands: Sender<Command>,
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
    /// Waits for credentials newer than the last ones this subscription returned; `None` once
    /// the provider has stopped
    pub async fn changed(&mut self) -> Option<(Generation, Credentials)> {
        let (generation, credentials) = self.provider.wait_newer(self.seen, None).await?;
        if self.seen.is_some_and(|seen| seen >= generation) {
            return None;
        }
        self.seen = Some(generation);
        Some((generation, credentials))
    }
}

async fn run(
    mut machine: TokenManager,
    fetcher: Arc<dyn Fetcher>,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    loopback: Sender<Command>,
    signals: Arc<Signals>,
    events: EventSender<Event>,
) {
    loop {
        let until = drain(&mut machine, &fetcher, &shared, &loopback, &events);
        if shared.lock().stopped {
            return;
        }
        let received = match until {
            Some(until) => {
                future::or(async { Some(commands.recv().await) }, async {
                    async_io::Timer::at(until).await;
                    None
                })
                .await
            }
            None => Some(commands.recv().await),
        };
        let now = Instant::now();
        // The flags first: a request whose wake-up did not fit in the queue is seen here.
        if signals.shutdown.load(Ordering::SeqCst) {
            machine.shutdown(now);
        }
        if signals.refresh.swap(false, Ordering::SeqCst) {
            machine.refresh_now(now);
        }
        match received {
            Some(Ok(Command::Fetched { id, result, wall })) => {
                machine.handle_response(id, result, wall, now);
            }
            // Wake-ups only: their flags were read above.
            Some(Ok(Command::RefreshNow | Command::Shutdown)) => {}
            Some(Ok(Command::Reauth { generation, result })) => {
                machine.handle_reauth_result(generation, result, now);
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
    loopback: &Sender<Command>,
    events: &EventSender<Event>,
) -> Option<Instant> {
    loop {
        match machine.poll_action() {
            Action::Wait { until } => {
                let status = machine.status();
                shared.update(|s| s.status = status);
                return until;
            }
            Action::FetchToken {
                id,
                attempt,
                deadline,
            } => {
                let timeout = deadline.saturating_duration_since(Instant::now());
                tracing::debug!(
                    request = id.0,
                    attempt,
                    timeout_ms = timeout.as_millis() as u64,
                    "fetching a token"
                );
                let fetcher = Arc::clone(fetcher);
                let reply = loopback.clone();
                // On the blocking pool: the fetch runs even though nobody polls the task, and
                // its answer comes back as a command; a late one is stale and ignored.
                blocking::unblock(move || {
                    let result = fetcher.fetch(timeout);
                    // Released before the driver can see the result, so the source is gone
                    // once the last provider handle and the driver are.
                    drop(fetcher);
                    // On a pool thread, so it may wait for room: the driver always drains.
                    let _ = reply.send_blocking(Command::Fetched {
                        id,
                        result,
                        wall: SystemTime::now(),
                    });
                })
                .detach();
            }
            Action::Reauthenticate {
                credentials,
                generation,
            } => {
                tracing::info!(
                    generation = generation.0,
                    username = credentials.username(),
                    "new credentials"
                );
                let status = machine.status();
                let expires_at = match status {
                    Status::Valid { expires_at, .. } | Status::Retrying { expires_at, .. } => {
                        Some(expires_at)
                    }
                    _ => None,
                };
                shared.update(|s| {
                    s.latest = Some((generation, credentials));
                    s.received = Some(Instant::now());
                    s.expires_at = expires_at;
                    s.last_error = None;
                    s.status = status;
                });
            }
            Action::Event(event) => {
                match &event {
                    Event::FetchFailed { attempt, error, .. } => {
                        tracing::warn!(attempt, "token request failed: {error}");
                        let error = error.clone();
                        shared.update(|s| {
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
                    Event::Stopped => shared.update(|s| {
                        s.stopped = true;
                        s.status = Status::Stopped;
                    }),
                    _ => tracing::debug!(?event, "token event"),
                }
                // Overflow mode: a full queue drops its oldest event; this never waits.
                let _ = events.try_broadcast(event);
            }
        }
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
