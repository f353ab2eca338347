//! [`EntraClient`] and [`EntraConnection`]: redis-rs multiplexed connections whose
//! re-authentication this crate owns

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};
use redis_entraid_core::event::Generation;
use redis_entraid_core::token::Credentials;
use tokio::task::JoinHandle;

use super::reauth::{self, Held};
use crate::provider::{now, Provider, WeakProvider};

/// How long a connect waits for usable credentials (the first token, or a fresh one when the
/// latest has expired) before it fails
const CREDENTIALS_WAIT: Duration = Duration::from_secs(30);

/// A redis-rs [`Client`](redis::Client) paired with a [`Provider`]: every connection it opens
/// authenticates with the provider's latest credentials and re-authenticates in place with
/// each newer token
///
/// The re-authentication is ours, not redis-rs's: a refused, failed or unanswered `AUTH` is
/// retried (50 ms doubling to 1 s, jittered) until it succeeds, a newer token supersedes it or
/// the connection is gone. Each rotation's fan-out (token arrival to every connection's
/// `AUTH` OK) is in [`Provider::fan_out_reports`].
///
/// ```no_run
/// use redis::AsyncCommands;
/// use redis_entraid_tokio::redis_async::EntraClient;
/// use redis_entraid_tokio::Provider;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let provider = Provider::from_env().await?;
/// let client = EntraClient::new(redis::Client::open("rediss://my-cache.redis.azure.net:10000")?, provider);
/// let mut con = client.get_multiplexed_connection().await?;
/// let () = con.set("k", "v").await?;
/// let mut manager = client.get_connection_manager().await?;
/// let _: Option<String> = manager.get("k").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EntraClient {
    client: redis::Client,
    provider: Provider,
}

impl EntraClient {
    /// Pairs `client` with `provider`. The client's URL must not carry a password: the
    /// provider's credentials replace any.
    pub fn new(client: redis::Client, provider: Provider) -> Self {
        Self { client, provider }
    }

    /// The redis-rs client
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The provider
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// A multiplexed connection with redis-rs's default settings
    ///
    /// # Errors
    /// As [`get_multiplexed_connection_with_config`](Self::get_multiplexed_connection_with_config).
    pub async fn get_multiplexed_connection(&self) -> RedisResult<EntraConnection> {
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
    ) -> RedisResult<EntraConnection> {
        let weak = self.provider.downgrade();
        let (generation, credentials, expires_at) =
            usable_credentials(&weak, None, CREDENTIALS_WAIT).await?;
        EntraConnection::open(
            &self.client,
            config,
            weak,
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
    pub async fn get_connection_manager(&self) -> RedisResult<super::EntraConnectionManager> {
        super::EntraConnectionManager::new(self.clone(), super::ManagerConfig::default()).await
    }

    /// A connection manager with `config`
    ///
    /// # Errors
    /// As [`get_connection_manager`](Self::get_connection_manager).
    pub async fn get_connection_manager_with_config(
        &self,
        config: super::ManagerConfig,
    ) -> RedisResult<super::EntraConnectionManager> {
        super::EntraConnectionManager::new(self.clone(), config).await
    }
}

/// Credentials worth connecting with: the latest, unless they are known to have expired, in
/// which case the next generation (waiting up to `wait`). `newer_than` skips generations the
/// caller already saw refused.
pub(crate) async fn usable_credentials(
    provider: &WeakProvider,
    newer_than: Option<Generation>,
    wait: Duration,
) -> RedisResult<(Generation, Credentials, Option<std::time::Instant>)> {
    let mut state = provider.state.clone();
    let usable = |s: &crate::provider::Snapshot| match s.latest() {
        Some((g, _)) if newer_than.is_some_and(|seen| *g <= seen) => false,
        Some(_) => s.expires_at().is_none_or(|e| e > now()),
        None => false,
    };
    let found = tokio::time::timeout(wait, state.wait_for(|s| s.is_stopped() || usable(s))).await;
    let stopped = || {
        RedisError::from((
            ErrorKind::AuthenticationFailed,
            "the redis-entraid provider has stopped",
        ))
    };
    match found {
        Ok(Ok(s)) if usable(&s) => match s.latest() {
            Some((g, c)) => Ok((*g, c.clone(), s.expires_at())),
            None => Err(stopped()),
        },
        Ok(_) => Err(stopped()),
        Err(_) => Err(RedisError::from((
            ErrorKind::AuthenticationFailed,
            "no usable Entra ID token",
            format!("none arrived within {wait:?}; see the provider's last_error() and events()"),
        ))),
    }
}

/// `client` with `credentials` in its connection settings, so redis-rs authenticates during
/// its own handshake: with RESP3 it sends `HELLO 3 AUTH user token`, so the protocol switch
/// never precedes authentication
pub(crate) fn with_credentials(
    client: &redis::Client,
    credentials: &Credentials,
) -> RedisResult<redis::Client> {
    // A copy forced by redis-rs: its connection settings hold the password as a plain
    // `String`, kept as long as the client (reconnections reuse it) and never wiped.
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_username(credentials.username())
        .set_password(credentials.password().expose_secret());
    redis::Client::open(info.set_redis_settings(settings))
}

/// Aborts the re-authentication task when the last handle of its connection is dropped
#[derive(Debug)]
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A redis-rs [`MultiplexedConnection`] that re-authenticates in place with every newer token
///
/// Use it as the multiplexed connection itself: it implements
/// [`ConnectionLike`](redis::aio::ConnectionLike) (so every `AsyncCommands` method works)
/// and dereferences to the [`MultiplexedConnection`] for the rest (RESP3 `subscribe`...).
/// Clones share the connection and its re-authentication; the re-authentication task ends
/// with the last clone, or when the connection is closed.
#[derive(Clone, Debug)]
pub struct EntraConnection {
    con: MultiplexedConnection,
    generation: Generation,
    _reauth: Arc<TaskGuard>,
}

impl EntraConnection {
    pub(crate) async fn open(
        client: &redis::Client,
        config: &AsyncConnectionConfig,
        provider: WeakProvider,
        generation: Generation,
        credentials: &Credentials,
        expires_at: Option<std::time::Instant>,
    ) -> RedisResult<Self> {
        let con = with_credentials(client, credentials)?
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        let held = Held {
            generation,
            expires_at,
        };
        let task = tokio::spawn(reauth::run(con.clone(), provider, held));
        Ok(Self {
            con,
            generation,
            _reauth: Arc::new(TaskGuard(task)),
        })
    }

    /// The credential generation the connection was opened with
    pub fn connected_generation(&self) -> Generation {
        self.generation
    }
}

impl Deref for EntraConnection {
    type Target = MultiplexedConnection;

    fn deref(&self) -> &MultiplexedConnection {
        &self.con
    }
}

impl DerefMut for EntraConnection {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.con
    }
}

impl ConnectionLike for EntraConnection {
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
