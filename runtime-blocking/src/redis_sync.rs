//! redis-rs (sync API) integration: connections and an r2d2 pool that stay authenticated
//!
//! # How connections stay authenticated
//!
//! Every [`EntraConnection`] connects with the provider's current credentials in redis-rs's
//! own handshake (`AUTH <oid> <token>` on RESP2, `HELLO 3 AUTH <oid> <token>` on RESP3, so
//! `?protocol=resp3` URLs work), and sends `AUTH` again whenever a newer credential generation
//! exists: before its next command, and from the client's background re-authenticator for
//! connections that sit idle (in a pool or not), so the server never closes a connection
//! because its token expired.
//!
//! Idle connections are re-authenticated independently of each other, each on a short-lived
//! thread of its own: one connection whose peer stops answering never delays the others. Every
//! `AUTH` this module sends is bounded by the client's [auth timeout](EntraClient::auth_timeout)
//! (the connection's own read/write timeouts are restored afterwards); an `AUTH` that gets no
//! answer in time closes its connection, because a late answer would otherwise be read as the
//! reply to the next command.
//!
//! A refused `AUTH` (`WRONGPASS`, `NOAUTH`) is reported to the provider, which fetches a fresh
//! token (rate-limited by the core during a failure streak), and is retried with backoff until
//! it succeeds, a newer generation supersedes it, or the connection is gone. A command that met
//! a refusal is retried once after a successful re-authentication; a refusal is never
//! swallowed.
//!
//! # Closed connections, and blocking commands that outlive the token
//!
//! A connection busy with a command cannot be re-authenticated until the command returns
//! (Redis reads one command at a time). A blocking command such as `BLPOP key 0` that is still
//! waiting when the connection's token expires therefore ends like this:
//!
//! 1. the server (Azure Managed Redis, or the emulator) closes the connection at expiry;
//! 2. the blocked command returns an I/O error to its caller; it is **not** retried, since the
//!    server may have executed it;
//! 3. the next command on the same [`EntraConnection`] opens a new connection with the current
//!    credentials and runs on it; a pooled connection is reported broken by
//!    [`has_broken`](r2d2::ManageConnection::has_broken) and the pool opens a fresh one.
//!
//! The same reconnection happens after any closed connection (a network error, or an `AUTH`
//! that timed out). State the server kept for the old connection is lost (`CLIENT SETNAME`,
//! `WATCH`, an open `MULTI`); the database of the URL is selected again. Give blocking commands
//! a timeout shorter than the token's remaining lifetime, and loop, if an I/O error at expiry is
//! not acceptable.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use redis::{Cmd, ConnectionLike, ErrorKind, RedisError, RedisResult, Value};
use redis_entraid_core::error::{ReauthError, ReauthErrorKind};
use redis_entraid_core::event::{Generation, Status};
use redis_entraid_core::token::Credentials;

use crate::Provider;

/// How long a command or a connect keeps retrying after Redis rejected its credentials
const FRESH_TOKEN_WAIT: Duration = Duration::from_secs(15);

/// Default bound on one `AUTH` exchange
const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Default connect timeout of [`EntraClient::get_connection`]
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// First pause before retrying a refused `AUTH`; doubles up to [`RETRY_MAX`]
const RETRY_INITIAL: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// First pause before trying again a connection that was busy; doubles up to [`BUSY_MAX`]
const BUSY_INITIAL: Duration = Duration::from_millis(10);
const BUSY_MAX: Duration = Duration::from_millis(100);

/// What the client knows about one of its connections, from [`EntraClient::connections`]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStatus {
    /// The credential generation the connection last authenticated with
    pub generation: Option<Generation>,
    /// When that authentication succeeded
    pub authenticated_at: Option<Instant>,
    /// Whether the connection is open (a closed one reconnects on its next command)
    pub open: bool,
}

struct Link {
    /// `None` once closed: after an `AUTH` that got no answer, or a failed reconnect
    connection: Option<redis::Connection>,
    generation: Option<Generation>,
    /// The user's timeouts, restored after every `AUTH` and applied to reconnections
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl Link {
    fn is_open(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.is_open())
    }

    fn apply_user_timeouts(&self, connection: &redis::Connection) -> RedisResult<()> {
        connection.set_read_timeout(self.read_timeout)?;
        connection.set_write_timeout(self.write_timeout)
    }

    /// `AUTH` within `timeout`; a connection that did not answer is closed
    fn auth(
        &mut self,
        generation: Generation,
        credentials: &Credentials,
        timeout: Duration,
    ) -> RedisResult<()> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(closed());
        };
        let timeout = Some(timeout.max(Duration::from_millis(1)));
        // redis-rs copies each argument into the command's buffer, dropped unwiped after
        // sending: a copy its `Cmd` API forces.
        let mut auth = Cmd::new();
        auth.arg("AUTH")
            .arg(credentials.username())
            .arg(credentials.password().expose_secret());
        // `query` turns an error reply (`-WRONGPASS`) into `Err`; `req_command` would not.
        let result = connection
            .set_read_timeout(timeout)
            .and_then(|()| connection.set_write_timeout(timeout))
            .and_then(|()| auth.query::<()>(connection));
        let answered = match &result {
            Ok(()) => true,
            Err(e) => e.code().is_some() && connection.is_open(),
        };
        let restored = answered && self.restore_timeouts();
        if !restored {
            // Nothing says the reply will not come later and be read as the next command's.
            self.connection = None;
            return Err(match result {
                Err(e) if e.is_timeout() => RedisError::from((
                    ErrorKind::Io,
                    "Redis did not answer AUTH in time; the connection was closed",
                    format!(
                        "no reply within {timeout:?} ({e}); its next command reconnects, or raise EntraClient::auth_timeout"
                    ),
                )),
                Err(e) => e,
                Ok(()) => closed(),
            });
        }
        result?;
        self.generation = Some(generation);
        Ok(())
    }

    fn restore_timeouts(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| self.apply_user_timeouts(c).is_ok())
    }
}

/// One connection as the client and its re-authenticator share it
struct LinkCell {
    link: Mutex<Link>,
    status: Mutex<ConnectionStatus>,
    auth_timeout: Duration,
    /// A re-authentication thread is working on this connection
    reauth_running: AtomicBool,
}

impl LinkCell {
    fn lock(&self) -> MutexGuard<'_, Link> {
        // Every update of a link is a single assignment: a poisoned lock is still consistent.
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> ConnectionStatus {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies what `link` says into the lock-free-to-read status
    fn publish(&self, link: &Link) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.generation != link.generation {
            status.generation = link.generation;
            status.authenticated_at = Some(Instant::now());
        }
        status.open = link.is_open();
    }

    /// `AUTH` with `generation`, telling the provider about a failure
    fn auth(
        &self,
        link: &mut Link,
        provider: &Provider,
        generation: Generation,
        credentials: &Credentials,
    ) -> RedisResult<()> {
        let replaced = link.generation;
        let result = link.auth(generation, credentials, self.auth_timeout);
        self.publish(link);
        match &result {
            // A re-authentication (not a connection's first AUTH) counts towards its rotation.
            Ok(()) if replaced.is_some_and(|held| held < generation) => {
                let latency = provider.credentials_age().unwrap_or_default();
                provider.record_fan_out_ok(generation, latency);
            }
            Ok(()) => {}
            Err(e) => {
                provider.record_fan_out_failure(generation);
                provider.report_reauth(generation, Err(reauth_error(e)));
            }
        }
        result
    }
}

/// Starts re-authentication threads for idle connections when a new token arrives
struct Reauthenticator {
    provider: Provider,
    links: Mutex<Vec<Weak<LinkCell>>>,
}

impl Reauthenticator {
    fn start(provider: Provider) -> Arc<Self> {
        let this = Arc::new(Self {
            provider,
            links: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&this);
        let spawned = std::thread::Builder::new()
            .name("redis-entraid-reauth".to_owned())
            .spawn(move || Self::run(&weak));
        if let Err(e) = spawned {
            // Connections still re-authenticate before each command; only idle ones lose out.
            tracing::error!("could not start the idle re-authentication thread: {e}");
        }
        this
    }

    fn register(&self, cell: &Arc<LinkCell>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|l| l.strong_count() > 0);
        links.push(Arc::downgrade(cell));
    }

    fn live_links(&self) -> Vec<Arc<LinkCell>> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.iter().filter_map(Weak::upgrade).collect()
    }

    fn run(weak: &Weak<Self>) {
        let mut seen: Option<Generation> = None;
        loop {
            // Hold the provider only while waiting, so dropping every client ends this thread
            // within one wait.
            let Some(provider) = weak.upgrade().map(|this| this.provider.clone()) else {
                return;
            };
            let newer = provider.wait_newer(seen, Duration::from_millis(500));
            drop(provider);
            let Some((generation, _)) = newer else {
                continue;
            };
            seen = Some(generation);
            let Some(this) = weak.upgrade() else { return };
            for cell in this.live_links() {
                // A thread already at work on this connection picks up the newest generation.
                if cell.reauth_running.swap(true, Ordering::AcqRel) {
                    continue;
                }
                let (cell_weak, this_weak) = (Arc::downgrade(&cell), weak.clone());
                let spawned = std::thread::Builder::new()
                    .name("redis-entraid-reauth-conn".to_owned())
                    .spawn(move || reauth_connection(&cell_weak, &this_weak));
                if let Err(e) = spawned {
                    cell.reauth_running.store(false, Ordering::Release);
                    tracing::error!(
                        "could not start a re-authentication thread ({e}); the connection re-authenticates before its next command"
                    );
                }
            }
        }
    }
}

/// Clears a connection's "re-authentication running" flag however its thread ends
struct Running<'a>(&'a Weak<LinkCell>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(cell) = self.0.upgrade() {
            cell.reauth_running.store(false, Ordering::Release);
        }
    }
}

/// Whether the thread ending on `cell` must go on: a generation newer than the connection's
/// arrived after it looked, and no other thread took the connection since
fn newer_arrived(cell: &LinkCell, provider: &Provider) -> bool {
    cell.reauth_running.store(false, Ordering::Release);
    let status = cell.status();
    let newer = provider
        .current()
        .is_some_and(|(g, _)| status.generation.is_none_or(|have| have < g));
    status.open && newer && !cell.reauth_running.swap(true, Ordering::AcqRel)
}

/// Brings one idle connection to the newest generation: retries a busy connection and a
/// refused `AUTH` with backoff until it succeeds, a newer generation supersedes it (and is
/// applied instead), the connection is closed or dropped, or the provider stops
fn reauth_connection(cell: &Weak<LinkCell>, reauthenticator: &Weak<Reauthenticator>) {
    let _running = Running(cell);
    let mut busy_pause = BUSY_INITIAL;
    let mut retry_pause = RETRY_INITIAL;
    loop {
        let (Some(cell), Some(this)) = (cell.upgrade(), reauthenticator.upgrade()) else {
            return;
        };
        let provider = &this.provider;
        if provider.status() == Status::Stopped {
            return;
        }
        let Some((generation, credentials)) = provider.current() else {
            return;
        };
        let pause = match cell.link.try_lock() {
            Err(TryLockError::WouldBlock) => {
                // Busy with a command; the command path re-authenticates first if it can, and
                // an idle-again pooled connection must not outlive its token.
                let pause = busy_pause;
                busy_pause = (busy_pause * 2).min(BUSY_MAX);
                pause
            }
            Ok(mut link) => match attempt(&cell, &mut link, provider, generation, &credentials) {
                Attempt::Done => {
                    drop(link);
                    if newer_arrived(&cell, provider) {
                        continue;
                    }
                    // Another thread, if any, owns the flag now.
                    std::mem::forget(_running);
                    return;
                }
                Attempt::Again => continue,
                Attempt::Retry => {
                    let pause = retry_pause;
                    retry_pause = (retry_pause * 2).min(RETRY_MAX);
                    pause
                }
            },
            Err(TryLockError::Poisoned(p)) => {
                let mut link = p.into_inner();
                match attempt(&cell, &mut link, provider, generation, &credentials) {
                    Attempt::Done => {
                        drop(link);
                        if newer_arrived(&cell, provider) {
                            continue;
                        }
                        std::mem::forget(_running);
                        return;
                    }
                    Attempt::Again => continue,
                    Attempt::Retry => RETRY_MAX,
                }
            }
        };
        drop((cell, this));
        std::thread::sleep(pause);
    }
}

enum Attempt {
    /// Up to date, or nothing more to do for this connection
    Done,
    /// Authenticated; check for a newer generation at once
    Again,
    /// Refused; try again after a pause
    Retry,
}

fn attempt(
    cell: &LinkCell,
    link: &mut Link,
    provider: &Provider,
    generation: Generation,
    credentials: &Credentials,
) -> Attempt {
    if !link.is_open() {
        // Closed: its next command reconnects with fresh credentials.
        return Attempt::Done;
    }
    if link.generation.is_some_and(|g| g >= generation) {
        return Attempt::Done;
    }
    match cell.auth(link, provider, generation, credentials) {
        Ok(()) => Attempt::Again,
        Err(e) if !link.is_open() => {
            tracing::warn!("idle re-authentication closed the connection: {e}");
            Attempt::Done
        }
        Err(e) => {
            tracing::warn!(
                "Redis refused the re-authentication of an idle connection ({e}); retrying"
            );
            Attempt::Retry
        }
    }
}

fn is_auth_error(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::AuthenticationFailed)
        || e.code().is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH")
}

/// An error reply that says the connection's credentials were refused (redis-rs hands error
/// replies back as values; the caller's `query` turns them into errors later)
fn auth_error_reply(value: &Value) -> Option<RedisError> {
    match value {
        Value::ServerError(e) if matches!(e.code(), "WRONGPASS" | "NOAUTH") => {
            Some(e.clone().into())
        }
        _ => None,
    }
}

/// Something a command returned that may be a refusal of the credentials
trait Reply {
    fn auth_error(&self) -> Option<RedisError>;
}

impl Reply for Value {
    fn auth_error(&self) -> Option<RedisError> {
        auth_error_reply(self)
    }
}

impl Reply for Vec<Value> {
    fn auth_error(&self) -> Option<RedisError> {
        self.iter().find_map(auth_error_reply)
    }
}

fn reauth_error(e: &RedisError) -> ReauthError {
    let kind = match e.code() {
        Some("WRONGPASS") => ReauthErrorKind::WrongPass,
        Some("NOAUTH") => ReauthErrorKind::NoAuth,
        _ if e.kind() == ErrorKind::AuthenticationFailed => ReauthErrorKind::WrongPass,
        _ if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
            ReauthErrorKind::Connection
        }
        _ => ReauthErrorKind::Other,
    };
    ReauthError::new(kind, e.to_string())
}

fn no_credentials() -> RedisError {
    RedisError::from((
        ErrorKind::AuthenticationFailed,
        "no Entra ID token yet",
        "the provider has not obtained a token; check its status() and last_error()".to_owned(),
    ))
}

fn closed() -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "the connection is closed",
        "its next command reconnects with fresh credentials".to_owned(),
    ))
}

fn refused(e: &RedisError) -> RedisError {
    RedisError::from((
        ErrorKind::AuthenticationFailed,
        "Redis kept refusing the Entra ID token",
        format!(
            "{e}; retried with fresh tokens for {FRESH_TOKEN_WAIT:?}. Check that the identity's object id has a Redis access policy, and the provider's status() and last_error()"
        ),
    ))
}

/// The credentials to try after Redis refused `rejected`: a newer generation if one arrives
/// within `pause`, else the current one again (a refusal may be transient)
fn fresh_after(
    provider: &Provider,
    rejected: Option<Generation>,
    pause: Duration,
) -> RedisResult<(Generation, Credentials)> {
    provider
        .wait_newer(rejected, pause)
        .or_else(|| provider.current())
        .ok_or_else(no_credentials)
}

/// Opens connections that authenticate with a provider's tokens
///
/// Clones share one idle re-authenticator thread, which ends when the last client and
/// connection are gone.
#[derive(Clone)]
pub struct EntraClient {
    client: redis::Client,
    reauthenticator: Arc<Reauthenticator>,
    auth_timeout: Duration,
}

impl fmt::Debug for EntraClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraClient")
            .field("server", &self.client.get_connection_info().addr())
            .field("auth_timeout", &self.auth_timeout)
            .finish_non_exhaustive()
    }
}

impl EntraClient {
    /// Wraps a redis-rs client (use `rediss://` for Azure; any user name or password in the
    /// URL is replaced by the provider's credentials). RESP2 and RESP3 (`?protocol=resp3`)
    /// both work.
    pub fn new(client: redis::Client, provider: Provider) -> Self {
        Self {
            client,
            reauthenticator: Reauthenticator::start(provider),
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
        }
    }

    /// How long one `AUTH` may wait for its reply (default 5 s; at least 1 ms) before its
    /// connection is closed; applies to connections opened from now on
    pub fn auth_timeout(mut self, timeout: Duration) -> Self {
        self.auth_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The provider
    pub fn provider(&self) -> &Provider {
        &self.reauthenticator.provider
    }

    /// The status of every live connection opened through this client or its clones
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        self.reauthenticator
            .live_links()
            .iter()
            .map(|cell| cell.status())
            .collect()
    }

    /// Connects and authenticates
    ///
    /// # Errors
    /// As [`get_connection_with_timeout`](Self::get_connection_with_timeout), with a 10 s
    /// timeout.
    pub fn get_connection(&self) -> RedisResult<EntraConnection> {
        self.get_connection_with_timeout(DEFAULT_CONNECT_TIMEOUT)
    }

    /// Connects within `timeout` and authenticates
    ///
    /// # Errors
    /// The connection error; an authentication error when the provider has no token yet, or
    /// when Redis refused every token tried (the provider is told of each refusal and fetches
    /// a fresh token; refusals are retried with backoff for up to `timeout`).
    pub fn get_connection_with_timeout(&self, timeout: Duration) -> RedisResult<EntraConnection> {
        let mut link = Link {
            connection: None,
            generation: None,
            read_timeout: None,
            write_timeout: None,
        };
        self.connect(&mut link, timeout)?;
        let cell = Arc::new(LinkCell {
            status: Mutex::new(ConnectionStatus::default()),
            link: Mutex::new(link),
            auth_timeout: self.auth_timeout,
            reauth_running: AtomicBool::new(false),
        });
        cell.publish(&cell.lock());
        self.reauthenticator.register(&cell);
        Ok(EntraConnection {
            cell,
            client: self.clone(),
        })
    }

    /// Opens the connection of `link` with the current credentials in redis-rs's handshake
    fn connect(&self, link: &mut Link, timeout: Duration) -> RedisResult<()> {
        let provider = self.provider();
        let started = Instant::now();
        let (mut generation, mut credentials) = provider.current().ok_or_else(no_credentials)?;
        let mut pause = RETRY_INITIAL;
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let error = match self.connect_as(&credentials, left.max(Duration::from_millis(1))) {
                Ok(connection) => {
                    link.apply_user_timeouts(&connection)?;
                    link.connection = Some(connection);
                    link.generation = Some(generation);
                    return Ok(());
                }
                Err(e) if is_auth_error(&e) => e,
                Err(e) => return Err(e),
            };
            provider.report_reauth(generation, Err(reauth_error(&error)));
            if started.elapsed() + pause >= timeout {
                return Err(refused(&error));
            }
            tracing::warn!("Redis refused the token of a new connection ({error}); retrying");
            (generation, credentials) = fresh_after(provider, Some(generation), pause)?;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    fn connect_as(
        &self,
        credentials: &Credentials,
        timeout: Duration,
    ) -> RedisResult<redis::Connection> {
        // A copy forced by redis-rs: its connection settings hold the password as a plain
        // `String` for the connection's life and never wipe it.
        let info = self.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_username(credentials.username())
            .set_password(credentials.password().expose_secret());
        redis::Client::open(info.set_redis_settings(settings))?.get_connection_with_timeout(timeout)
    }
}

/// A redis-rs connection that keeps itself authenticated; use it wherever a
/// [`ConnectionLike`] goes (`cmd.query(&mut conn)`, pipelines)
///
/// A closed connection (see the [module docs](self)) reconnects on its next command.
pub struct EntraConnection {
    cell: Arc<LinkCell>,
    client: EntraClient,
}

impl fmt::Debug for EntraConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraConnection")
            .field("status", &self.cell.status())
            .finish_non_exhaustive()
    }
}

impl EntraConnection {
    fn provider(&self) -> &Provider {
        self.client.provider()
    }

    /// The credential generation this connection last authenticated with
    pub fn generation(&self) -> Option<Generation> {
        self.cell.status().generation
    }

    /// What the client knows about this connection
    pub fn status(&self) -> ConnectionStatus {
        self.cell.status()
    }

    /// Sets the read timeout of commands (`None`: wait forever, the default); kept across
    /// re-authentications and reconnections
    ///
    /// # Errors
    /// When the socket refuses the setting (a zero duration).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> RedisResult<()> {
        let mut link = self.cell.lock();
        if let Some(connection) = &link.connection {
            connection.set_read_timeout(timeout)?;
        }
        link.read_timeout = timeout;
        Ok(())
    }

    /// Sets the write timeout of commands (`None`: wait forever, the default); kept across
    /// re-authentications and reconnections
    ///
    /// # Errors
    /// When the socket refuses the setting (a zero duration).
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> RedisResult<()> {
        let mut link = self.cell.lock();
        if let Some(connection) = &link.connection {
            connection.set_write_timeout(timeout)?;
        }
        link.write_timeout = timeout;
        Ok(())
    }

    /// Reconnects if the connection was closed, then sends `AUTH` if the provider holds newer
    /// credentials than the connection
    ///
    /// # Errors
    /// When there is no token yet, when reconnecting fails, when `AUTH` gets no answer within
    /// the client's auth timeout (the connection is then closed), or when Redis refuses the
    /// token (the provider is told, and fetches a fresh one).
    pub fn ensure_fresh(&mut self) -> RedisResult<()> {
        self.ready().map(drop)
    }

    /// The locked link, open and holding the newest credentials
    fn ready(&self) -> RedisResult<MutexGuard<'_, Link>> {
        let mut link = self.cell.lock();
        if !link.is_open() {
            link.connection = None;
            let reconnected = self.client.connect(&mut link, DEFAULT_CONNECT_TIMEOUT);
            self.cell.publish(&link);
            reconnected?;
            tracing::info!("reconnected a closed connection with fresh credentials");
        }
        let (generation, credentials) = self.provider().current().ok_or_else(no_credentials)?;
        if link.generation.is_some_and(|g| g >= generation) {
            return Ok(link);
        }
        self.cell
            .auth(&mut link, self.provider(), generation, &credentials)?;
        Ok(link)
    }

    /// After Redis rejected generation `rejected`: retry `AUTH` with backoff, with a newer
    /// token as soon as one arrives (the provider was told, and fetches one)
    fn recover(&self, mut rejected: Option<Generation>, error: &RedisError) -> RedisResult<()> {
        match rejected {
            Some(generation) => self
                .provider()
                .report_reauth(generation, Err(reauth_error(error))),
            None => self.provider().refresh_now(),
        }
        let started = Instant::now();
        let mut pause = RETRY_INITIAL;
        loop {
            let (generation, credentials) = fresh_after(self.provider(), rejected, pause)?;
            let mut link = self.cell.lock();
            if !link.is_open() {
                return Err(closed());
            }
            match self
                .cell
                .auth(&mut link, self.provider(), generation, &credentials)
            {
                Ok(()) => return Ok(()),
                Err(e) if is_auth_error(&e) && started.elapsed() < FRESH_TOKEN_WAIT => {
                    rejected = Some(generation);
                    pause = (pause * 2).min(RETRY_MAX);
                }
                Err(e) if is_auth_error(&e) => return Err(refused(&e)),
                Err(e) => return Err(e),
            }
        }
    }

    fn with_retry<T: Reply>(
        &mut self,
        mut f: impl FnMut(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let latest = self.provider().current().map(|(g, _)| g);
        let run = |link: &mut Link, f: &mut dyn FnMut(&mut redis::Connection) -> RedisResult<T>| {
            let connection = link.connection.as_mut().ok_or_else(closed)?;
            let reply = f(connection)?;
            match reply.auth_error() {
                Some(e) => Err(e),
                None => Ok(reply),
            }
        };
        let first = self.ready().and_then(|mut link| {
            let result = run(&mut link, &mut f);
            if result.is_err() && !link.is_open() {
                self.cell.publish(&link);
            }
            result
        });
        match first {
            Err(e) if is_auth_error(&e) => {
                // Either the AUTH with the latest token failed, or the command met NOAUTH /
                // WRONGPASS with the token the connection holds: the newer of the two was
                // rejected.
                let rejected = latest.max(self.generation());
                tracing::warn!(
                    "Redis rejected the connection's credentials ({e}); re-authenticating"
                );
                self.recover(rejected, &e)?;
                let mut link = self.cell.lock();
                let connection = link.connection.as_mut().ok_or_else(closed)?;
                f(connection)
            }
            other => other,
        }
    }
}

impl ConnectionLike for EntraConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.with_retry(|c| c.req_packed_command(cmd))
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.with_retry(|c| c.req_packed_commands(cmd, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.client
            .client
            .get_connection_info()
            .redis_settings()
            .db()
    }

    fn check_connection(&mut self) -> bool {
        self.ready().is_ok_and(|mut link| {
            link.connection
                .as_mut()
                .is_some_and(|c| c.check_connection())
        })
    }

    fn is_open(&self) -> bool {
        self.cell.lock().is_open()
    }
}

/// An r2d2 connection manager for [`EntraConnection`]s
///
/// Pooled connections are re-authenticated on checkout when a newer token exists, and by the
/// client's background threads while they sit idle, so the server never drops an idle pooled
/// connection for an expired token. A connection the server closed (a blocking command that
/// outlived its token, a network error) is reported broken and replaced.
///
/// ```no_run
/// # fn demo(provider: redis_entraid_blocking::Provider) -> Result<(), Box<dyn std::error::Error>> {
/// use redis_entraid_blocking::redis_sync::{EntraClient, EntraConnectionManager};
/// let client = EntraClient::new(redis::Client::open("rediss://my-cache.redis.azure.net:10000")?, provider);
/// let pool = r2d2::Pool::builder().max_size(16).build(EntraConnectionManager::new(client))?;
/// let mut conn = pool.get()?;
/// let _: () = redis::cmd("SET").arg("key").arg("value").query(&mut *conn)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EntraConnectionManager {
    client: EntraClient,
}

impl EntraConnectionManager {
    /// A manager opening connections through `client`
    pub fn new(client: EntraClient) -> Self {
        Self { client }
    }
}

impl r2d2::ManageConnection for EntraConnectionManager {
    type Connection = EntraConnection;
    type Error = RedisError;

    fn connect(&self) -> Result<EntraConnection, RedisError> {
        self.client.get_connection()
    }

    fn is_valid(&self, conn: &mut EntraConnection) -> Result<(), RedisError> {
        conn.ensure_fresh()?;
        redis::cmd("PING").query::<()>(conn)
    }

    fn has_broken(&self, conn: &mut EntraConnection) -> bool {
        !conn.is_open()
    }
}
