//! The provider: a driver future running the core's machine, and cheap cloneable handles

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_broadcast::{InactiveReceiver, Receiver as EventReceiver};
use async_channel::Sender;
pub(crate) use redis_entraid_core::command::Command;
use redis_entraid_core::command::Signals;
use redis_entraid_core::config::Config;
use redis_entraid_core::event::{Event, Generation};
use redis_entraid_core::observed::Observed;
use redis_entraid_core::startup::{Startup, StartupError};
use redis_entraid_core::token::Credentials;

use crate::builder::ProviderBuilder;
use crate::driver::{deliver, Driver, Input};
use crate::shared::Shared;

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: Sender<Input>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) events: InactiveReceiver<Event>,
    pub(crate) config: Config,
    #[cfg(feature = "redis")]
    pub(crate) fan_out: Arc<redis_entraid_core::fan_out::FanOutLog>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never blocks; a flag, so even a full queue cannot lose it.
        deliver(&self.signals, &self.commands, Command::Shutdown);
    }
}

impl redis_entraid_core::handle::ProviderParts for Inner {
    fn observe<T>(&self, read: impl FnOnce(&Observed) -> T) -> T {
        read(&self.shared.lock())
    }

    fn deliver(&self, command: Command) {
        deliver(&self.signals, &self.commands, command);
    }

    fn config(&self) -> &Config {
        &self.config
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A running token provider: a cheap, cloneable handle to one driver
///
/// Dropping the last clone ends the driver.
#[derive(Clone)]
pub struct Provider {
    pub(crate) inner: Arc<Inner>,
}

redis_entraid_core::provider_handle!(Provider, ProviderBuilder, inner);

impl Provider {
    /// The default chain from the environment, default settings, waiting up to 30 s for the
    /// first token; the driver is handed to `spawn`
    ///
    /// # Errors
    /// As [`ProviderBuilder::build_from_env`].
    pub async fn from_env(spawn: impl FnOnce(Driver)) -> Result<Provider, StartupError> {
        Self::builder().build_from_env(spawn).await
    }

    pub(crate) async fn apply_startup(&self, startup: Startup) -> Result<(), StartupError> {
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

    /// Waits up to `timeout` for credentials newer than `generation` (any, for `None`);
    /// `None` when none arrive in time or the provider has stopped
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

    /// A handle that does not keep the driver alive (used by connection integrations)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakProvider {
        WeakProvider {
            shared: Arc::clone(&self.inner.shared),
            commands: self.inner.commands.clone(),
            signals: Arc::clone(&self.inner.signals),
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
    /// [`Status::Stopped`](redis_entraid_core::event::Status::Stopped))
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
pub struct WeakProvider {
    pub(crate) shared: Arc<Shared>,
    commands: Sender<Input>,
    signals: Arc<Signals>,
    #[cfg(feature = "redis")]
    pub(crate) fan_out: Arc<redis_entraid_core::fan_out::FanOutLog>,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl WeakProvider {
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
