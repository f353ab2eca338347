//! [`EntraClient`] and [`EntraConnection`]: redis-rs multiplexed connections whose
//! re-authentication this crate owns

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};
use redis_entraid_core::event::Generation;
use redis_entraid_core::observed::Observed;
use redis_entraid_core::token::Credentials;

use crate::manager::{EntraConnectionManager, ManagerConfig};
use crate::reauth::{self, Held};
use crate::runtime::{timeout, ProviderHandle, ProviderLink, Runtime, RuntimeOf};

/// How long a connect waits for usable credentials (the first token, or a fresh one when the
/// latest has expired) before it fails
const CREDENTIALS_WAIT: Duration = Duration::from_secs(30);

/// A redis-rs [`Client`](redis::Client) paired with a provider: every connection it opens
/// authenticates with the provider's latest credentials and re-authenticates in place with
/// each newer token
///
/// The re-authentication is ours, not redis-rs's: a refused, failed or unanswered `AUTH` is
/// retried (50 ms doubling to 1 s, jittered) until it succeeds, a newer token supersedes it or
/// the connection is gone. Each rotation's fan-out (token arrival to every connection's
/// `AUTH` OK) is in the provider's `fan_out_reports()`.
///
/// The runtimes name it for their provider: `redis_entraid_tokio::redis_async::EntraClient`,
/// `redis_entraid_async_std::redis::EntraClient`.
#[derive(Clone, Debug)]
pub struct EntraClient<P> {
    client: redis::Client,
    provider: P,
}

impl<P: ProviderHandle> EntraClient<P> {
    /// Pairs `client` with `provider`. The client's URL must not carry a password: the
    /// provider's credentials replace any.
    pub fn new(client: redis::Client, provider: P) -> Self {
        Self { client, provider }
    }

    /// The redis-rs client
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The provider
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// A multiplexed connection with redis-rs's default settings
    ///
    /// # Errors
    /// As [`get_multiplexed_connection_with_config`](Self::get_multiplexed_connection_with_config).
    pub async fn get_multiplexed_connection(&self) -> RedisResult<EntraConnection<P>> {
        self.get_multiplexed_connection_with_config(&AsyncConnectionConfig::new())
            .await
    }

    /// A multiplexed connection with `config` (timeouts, a RESP3 push sender for pub/sub...).
    /// Do not set a credentials provider on `config`: the connection would then also run
    /// redis-rs's own re-authentication.
    ///
    /// # Errors
    /// `AuthenticationFailed` when the provider has stopped or has had no usable token for
    /// 30 s; otherwise the connection's error (`WRONGPASS` if Redis refused the token, I/O
    /// errors...).
    pub async fn get_multiplexed_connection_with_config(
        &self,
        config: &AsyncConnectionConfig,
    ) -> RedisResult<EntraConnection<P>> {
        let link = self.provider.downgrade();
        let (generation, credentials, expires_at) =
            usable_credentials(&link, None, CREDENTIALS_WAIT).await?;
        EntraConnection::open(
            &self.client,
            config,
            link,
            generation,
            &credentials,
            expires_at,
        )
        .await
    }

    /// A connection manager: a multiplexed connection that reconnects whenever it is lost,
    /// with the latest usable credentials, however long the identity endpoint is down
    ///
    /// # Errors
    /// As [`get_multiplexed_connection`](Self::get_multiplexed_connection), for the first
    /// connection.
    pub async fn get_connection_manager(&self) -> RedisResult<EntraConnectionManager<P>> {
        EntraConnectionManager::new(self, ManagerConfig::default()).await
    }

    /// A connection manager with `config`
    ///
    /// # Errors
    /// As [`get_connection_manager`](Self::get_connection_manager).
    pub async fn get_connection_manager_with_config(
        &self,
        config: ManagerConfig,
    ) -> RedisResult<EntraConnectionManager<P>> {
        EntraConnectionManager::new(self, config).await
    }
}

/// Credentials worth connecting with: the latest, unless they are known to have expired, in
/// which case the next generation (waiting up to `wait`). `newer_than` skips generations the
/// caller already saw refused.
pub(crate) async fn usable_credentials<L: ProviderLink>(
    provider: &L,
    newer_than: Option<Generation>,
    wait: Duration,
) -> RedisResult<(Generation, Credentials, Option<Instant>)> {
    let usable = |s: &Observed| {
        if let Some((g, c)) = s.latest() {
            let unseen = newer_than.is_none_or(|seen| *g > seen);
            if unseen && s.expires_at().is_none_or(|e| e > L::Runtime::now()) {
                return Some(Some((*g, c.clone(), s.expires_at())));
            }
        }
        s.is_stopped().then_some(None)
    };
    match timeout::<L::Runtime, _>(wait, provider.wait_until(usable)).await {
        Some(Some(Some(found))) => Ok(found),
        Some(Some(None) | None) => Err(RedisError::from((
            ErrorKind::AuthenticationFailed,
            "the redis-entraid provider has stopped",
        ))),
        None => Err(RedisError::from((
            ErrorKind::AuthenticationFailed,
            "no usable Entra ID token",
            format!("none arrived within {wait:?}; see the provider's last_error() and events()"),
        ))),
    }
}

/// `client` with `credentials` in its connection settings, so redis-rs authenticates during
/// its own handshake: with RESP3 it sends `HELLO 3 AUTH user token`, so the protocol switch
/// never precedes authentication
///
/// # Errors
/// When redis-rs refuses the connection settings (it re-validates them).
pub fn client_with_credentials(
    client: &redis::Client,
    credentials: &Credentials,
) -> RedisResult<redis::Client> {
    // A copy forced by redis-rs: its connection settings hold the password as a plain
    // `String` for the connection's life and never wipe it.
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_username(credentials.username())
        .set_password(credentials.password().expose_secret());
    redis::Client::open(info.set_redis_settings(settings))
}

/// A redis-rs [`MultiplexedConnection`] that re-authenticates in place with every newer token
///
/// Use it as the multiplexed connection itself: it implements
/// [`ConnectionLike`](redis::aio::ConnectionLike) (so every `AsyncCommands` method works)
/// and dereferences to the [`MultiplexedConnection`] for the rest (RESP3 `subscribe`...).
/// Clones share the connection and its re-authentication; the re-authentication task is
/// cancelled with the last clone, and ends by itself when the connection is closed or the
/// provider stops.
pub struct EntraConnection<P: ProviderHandle> {
    con: MultiplexedConnection,
    generation: Generation,
    /// Dropping the last clone cancels the re-authentication task.
    _reauth: Arc<<RuntimeOf<P> as Runtime>::Task>,
}

impl<P: ProviderHandle> Clone for EntraConnection<P> {
    fn clone(&self) -> Self {
        Self {
            con: self.con.clone(),
            generation: self.generation,
            _reauth: Arc::clone(&self._reauth),
        }
    }
}

impl<P: ProviderHandle> std::fmt::Debug for EntraConnection<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraConnection")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<P: ProviderHandle> EntraConnection<P> {
    pub(crate) async fn open(
        client: &redis::Client,
        config: &AsyncConnectionConfig,
        provider: P::Link,
        generation: Generation,
        credentials: &Credentials,
        expires_at: Option<Instant>,
    ) -> RedisResult<Self> {
        let con = client_with_credentials(client, credentials)?
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        let held = Held {
            generation,
            expires_at,
        };
        let task = RuntimeOf::<P>::spawn(reauth::run(con.clone(), provider, held));
        Ok(Self {
            con,
            generation,
            _reauth: Arc::new(task),
        })
    }

    /// The credential generation the connection was opened with
    pub fn connected_generation(&self) -> Generation {
        self.generation
    }
}

impl<P: ProviderHandle> Deref for EntraConnection<P> {
    type Target = MultiplexedConnection;

    fn deref(&self) -> &MultiplexedConnection {
        &self.con
    }
}

impl<P: ProviderHandle> DerefMut for EntraConnection<P> {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.con
    }
}

impl<P: ProviderHandle> ConnectionLike for EntraConnection<P> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.con.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.con.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.con.get_db()
    }
}
