//! The provider: one driver task running the core's machine, and cheap cloneable handles

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use redis_entraid_core::command::Command;
use redis_entraid_core::command::Signals;
use redis_entraid_core::config::Config;
use redis_entraid_core::event::{Event, Generation};
use redis_entraid_core::observed::Observed;
use redis_entraid_core::token::Credentials;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::builder::ProviderBuilder;
use crate::driver::deliver;

/// The driver's clock: tokio's, so paused-time tests run hours of token lifetimes at once
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What every handle reads, published by the driver on a `watch` channel
pub(crate) type Snapshot = Observed;

pub(crate) struct Inner {
    pub(crate) state: watch::Receiver<Snapshot>,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) dropped_events: Arc<AtomicU64>,
    pub(crate) config: Config,
    #[allow(dead_code)]
    pub(crate) task: JoinHandle<()>,
    #[cfg(feature = "redis")]
    pub(crate) fan_out: Arc<redis_entraid_core::fan_out::FanOutLog>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the last command sender already ends the driver's loop; say it explicitly
        // so the machine emits `Stopped`, and abort in case the task is parked in a fetch.
        // The driver reacts at its next poll; it owns no timers after that.
        deliver(&self.signals, &self.commands, Command::Shutdown);
    }
}

impl redis_entraid_core::handle::ProviderParts for Inner {
    fn observe<T>(&self, read: impl FnOnce(&Observed) -> T) -> T {
        read(&self.state.borrow())
    }

    fn deliver(&self, command: Command) {
        deliver(&self.signals, &self.commands, command);
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn now(&self) -> Instant {
        crate::provider::now()
    }
}

/// A running token provider: a cheap, cloneable handle to one driver task
///
/// Dropping the last clone shuts the driver down: the task ends at its next poll, its timer
/// and any in-flight fetch are dropped with it.
#[derive(Clone)]
pub struct Provider {
    pub(crate) inner: Arc<Inner>,
}

redis_entraid_core::provider_handle!(Provider, ProviderBuilder, inner);

impl Provider {
    /// A provider over the default chain configured from this process's environment
    /// variables (environment service principal, workload identity, managed identity, Azure
    /// CLI, azd), with the default configuration and startup policy and the default HTTP client
    ///
    /// # Errors
    /// As [`ProviderBuilder::build_from_env`].
    #[cfg(feature = "http-client")]
    pub async fn from_env() -> Result<Provider, crate::StartupError> {
        Provider::builder().build_from_env().await
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

    /// Stops the driver and waits (up to 5 s) until it has; other clones then see
    /// [`Status::Stopped`](redis_entraid_core::event::Status::Stopped)
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
pub struct WeakProvider {
    pub(crate) state: watch::Receiver<Snapshot>,
    commands: mpsc::WeakSender<Command>,
    signals: Arc<Signals>,
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
