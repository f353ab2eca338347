//! [`EntraConnectionManager`]: a reconnecting connection that never stays down once a valid
//! token exists
//!
//! redis-rs's `ConnectionManager` (1.x) caches a failed reconnect: when it reconnects after
//! an outage with a token that has expired meanwhile, Redis answers `WRONGPASS`, which it
//! treats as final, and every later command gets that error, however many fresh tokens
//! arrive. This manager reconnects with the latest usable credentials, retries with backoff,
//! and retries at once when a newer token arrives.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use event_listener::Event as Notify;
use redis::aio::ConnectionLike;
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};
use redis_entraid_core::backoff::Backoff;
use redis_entraid_core::config::RetryPolicy;
use redis_entraid_core::event::Generation;
use redis_entraid_core::observed::Observed;

use crate::connection::{usable_credentials, EntraClient, EntraConnection};
use crate::reauth::is_gone;
use crate::runtime::{timeout, ProviderHandle, ProviderLink, Runtime, RuntimeOf};

/// Settings of an [`EntraConnectionManager`]
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    connection: AsyncConnectionConfig,
    command_wait: Duration,
    connect_timeout: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            connection: AsyncConnectionConfig::new(),
            command_wait: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl ManagerConfig {
    /// The defaults: redis-rs's connection settings, commands wait up to 5 s for a
    /// reconnection, each connection attempt is cut after 10 s
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings of each connection (response timeout, RESP3 push sender...); do not set a
    /// credentials provider on it
    pub fn connection(mut self, config: AsyncConnectionConfig) -> Self {
        self.connection = config;
        self
    }

    /// How long a command issued while the manager reconnects waits for the new connection
    /// before it fails (default 5 s)
    pub fn command_wait(mut self, wait: Duration) -> Self {
        self.command_wait = wait;
        self
    }

    /// How long one connection attempt may take (default 10 s)
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

enum Slot<P: ProviderHandle> {
    Connected {
        con: EntraConnection<P>,
        epoch: u64,
    },
    Reconnecting {
        epoch: u64,
        last_error: Option<String>,
    },
    /// The provider has stopped: no connection can be made any more
    Stopped,
}

// Written out: a derive would ask `P: Clone`/`Debug` of the runtime's task type too.
impl<P: ProviderHandle> Clone for Slot<P> {
    fn clone(&self) -> Self {
        match self {
            Self::Connected { con, epoch } => Self::Connected {
                con: con.clone(),
                epoch: *epoch,
            },
            Self::Reconnecting { epoch, last_error } => Self::Reconnecting {
                epoch: *epoch,
                last_error: last_error.clone(),
            },
            Self::Stopped => Self::Stopped,
        }
    }
}

/// The current slot, and a notification on every change
struct SlotCell<P: ProviderHandle> {
    slot: Mutex<Slot<P>>,
    changed: Notify,
}

impl<P: ProviderHandle> SlotCell<P> {
    fn lock(&self) -> MutexGuard<'_, Slot<P>> {
        // Every update is a single assignment, so a poisoned lock still holds a whole slot.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn replace(&self, slot: Slot<P>) {
        *self.lock() = slot;
        self.changed.notify(usize::MAX);
    }

    /// Applies `f`; notifies waiters when it says it changed the slot. Returns that.
    fn modify_if(&self, f: impl FnOnce(&mut Slot<P>) -> bool) -> bool {
        let changed = f(&mut self.lock());
        if changed {
            self.changed.notify(usize::MAX);
        }
        changed
    }

    /// The slot once it is not reconnecting, or as it is after `wait`
    async fn settled(&self, wait: Duration) -> Slot<P> {
        let ready = || {
            let slot = self.lock();
            (!matches!(*slot, Slot::Reconnecting { .. })).then(|| slot.clone())
        };
        let settle = async {
            loop {
                // Listen before checking, so a change between the check and the wait is not
                // lost.
                let listener = self.changed.listen();
                if let Some(slot) = ready() {
                    return slot;
                }
                listener.await;
            }
        };
        match timeout::<RuntimeOf<P>, _>(wait, settle).await {
            Some(slot) => slot,
            None => self.lock().clone(),
        }
    }
}

struct Inner<P: ProviderHandle> {
    client: redis::Client,
    /// Not the provider itself: the manager does not keep the driver alive
    provider: P::Link,
    config: ManagerConfig,
    slot: SlotCell<P>,
}

/// A connection that reconnects whenever it is lost, with the latest usable token
///
/// Commands go to one [`EntraConnection`] (re-authenticated in place with every token).
/// When a command finds it closed, the manager reconnects in the background (a task on the
/// runtime): with the latest token if it is still valid, otherwise with the
/// next one as soon as it arrives, retrying every failure (`WRONGPASS` included) with backoff
/// (50 ms doubling to 2 s) and at once when a newer token arrives. Commands issued meanwhile
/// wait for the new connection (up to [`ManagerConfig::command_wait`]); the command that met
/// the closed connection gets its error, as with redis-rs's `ConnectionManager`. Clones share
/// the connection.
///
/// Pub/sub subscriptions are not restored after a reconnection; for RESP3 pub/sub use an
/// [`EntraConnection`] with a push sender, which keeps its subscriptions across rotations.
pub struct EntraConnectionManager<P: ProviderHandle> {
    inner: Arc<Inner<P>>,
}

impl<P: ProviderHandle> Clone for EntraConnectionManager<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P: ProviderHandle> std::fmt::Debug for EntraConnectionManager<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraConnectionManager")
            .field("reconnections", &self.reconnections())
            .finish_non_exhaustive()
    }
}

impl<P: ProviderHandle> EntraConnectionManager<P> {
    pub(crate) async fn new(client: &EntraClient<P>, config: ManagerConfig) -> RedisResult<Self> {
        let provider = client.provider().downgrade();
        let client = client.client().clone();
        let con = connect_once(&client, &provider, &config, None).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                provider,
                config,
                slot: SlotCell {
                    slot: Mutex::new(Slot::Connected { con, epoch: 0 }),
                    changed: Notify::new(),
                },
            }),
        })
    }

    /// How many times the manager has reconnected
    pub fn reconnections(&self) -> u64 {
        match &*self.inner.slot.lock() {
            Slot::Connected { epoch, .. } | Slot::Reconnecting { epoch, .. } => *epoch,
            Slot::Stopped => 0,
        }
    }

    async fn connection(&self) -> RedisResult<(EntraConnection<P>, u64)> {
        let current = self
            .inner
            .slot
            .settled(self.inner.config.command_wait)
            .await;
        match current {
            Slot::Connected { con, epoch } => Ok((con, epoch)),
            Slot::Stopped => Err(RedisError::from((
                ErrorKind::AuthenticationFailed,
                "the redis-entraid provider has stopped; the connection manager cannot reconnect",
            ))),
            Slot::Reconnecting { last_error, .. } => Err(RedisError::from((
                ErrorKind::Io,
                "reconnecting to Redis",
                format!(
                    "no connection within {:?}; last attempt: {}",
                    self.inner.config.command_wait,
                    last_error.as_deref().unwrap_or("still in progress")
                ),
            ))),
        }
    }

    fn after(&self, epoch: u64, result: &RedisResult<impl Sized>) {
        let Err(error) = result else { return };
        let lost =
            is_gone(error) || error.is_unrecoverable_error() || error.code() == Some("NOAUTH");
        if !lost {
            return;
        }
        let started = self.inner.slot.modify_if(|s| match s {
            Slot::Connected { epoch: e, .. } if *e == epoch => {
                *s = Slot::Reconnecting {
                    epoch,
                    last_error: None,
                };
                true
            }
            _ => false,
        });
        if started {
            tracing::info!("Redis connection lost ({error}); reconnecting");
            RuntimeOf::<P>::spawn_detached(reconnect(Arc::downgrade(&self.inner), epoch));
        }
    }
}

/// One connection attempt with the latest usable credentials (newer than `refused`, when
/// set), waiting at most the connect timeout for them
async fn connect_once<P: ProviderHandle>(
    client: &redis::Client,
    provider: &P::Link,
    config: &ManagerConfig,
    refused: Option<Generation>,
) -> RedisResult<EntraConnection<P>> {
    let attempt = async {
        let (generation, credentials, expires_at) =
            usable_credentials(provider, refused, config.connect_timeout).await?;
        EntraConnection::open(
            client,
            &config.connection,
            provider.clone(),
            generation,
            &credentials,
            expires_at,
        )
        .await
    };
    match timeout::<RuntimeOf<P>, _>(config.connect_timeout, attempt).await {
        Some(result) => result,
        None => Err(RedisError::from((
            ErrorKind::Io,
            "connecting to Redis timed out",
            format!("after {:?}", config.connect_timeout),
        ))),
    }
}

fn retry_policy() -> RetryPolicy {
    RetryPolicy::builder()
        .initial_delay(Duration::from_millis(50))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(2))
        .jitter(0.2)
        .build()
        .unwrap_or_default()
}

/// Reconnects until it succeeds, the manager is dropped, or the provider stops
async fn reconnect<P: ProviderHandle>(inner: Weak<Inner<P>>, epoch: u64) {
    let mut backoff = Backoff::new(u64::from(std::process::id()) ^ epoch.rotate_left(17));
    let policy = retry_policy();
    let mut failures = 0u32;
    loop {
        // Hold the manager only while touching it, so dropping it ends this task.
        let Some(this) = inner.upgrade() else { return };
        let (client, provider, config) = (
            this.client.clone(),
            this.provider.clone(),
            this.config.clone(),
        );
        drop(this);
        if provider.observe(Observed::is_stopped) {
            if let Some(this) = inner.upgrade() {
                this.slot.replace(Slot::Stopped);
            }
            return;
        }
        let result = connect_once::<P>(&client, &provider, &config, None).await;
        let Some(this) = inner.upgrade() else { return };
        match result {
            Ok(con) => {
                tracing::info!(
                    generation = con.connected_generation().0,
                    "Redis connection re-established"
                );
                this.slot.replace(Slot::Connected {
                    con,
                    epoch: epoch + 1,
                });
                return;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(failures, "reconnecting to Redis failed: {error}");
                this.slot.replace(Slot::Reconnecting {
                    epoch,
                    last_error: Some(error.to_string()),
                });
                drop(this);
                let tried = provider.observe(|s| s.latest().map(|(g, _)| *g));
                let delay = backoff.delay(&policy, failures);
                // A newer token is worth trying at once; otherwise wait out the backoff.
                let _ = timeout::<RuntimeOf<P>, _>(
                    delay,
                    provider.wait_until(|s| {
                        (s.is_stopped() || s.latest().map(|(g, _)| *g) > tried).then_some(())
                    }),
                )
                .await;
            }
        }
    }
}

impl<P: ProviderHandle> ConnectionLike for EntraConnectionManager<P> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (mut con, epoch) = self.connection().await?;
            let result = con.req_packed_command(cmd).await;
            self.after(epoch, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (mut con, epoch) = self.connection().await?;
            let result = con.req_packed_commands(pipeline, offset, count).await;
            self.after(epoch, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner
            .client
            .get_connection_info()
            .redis_settings()
            .db()
    }
}
