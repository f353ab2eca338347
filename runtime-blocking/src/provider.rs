//! The provider: one driver thread running the core's machine, and cheap cloneable handles

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis_entraid_core::command::{Command, Signals};
use redis_entraid_core::config::Config;
use redis_entraid_core::event::{Event, Generation};
use redis_entraid_core::observed::Observed;
use redis_entraid_core::startup::StartupError;
use redis_entraid_core::token::Credentials;

use crate::builder::ProviderBuilder;
use crate::driver::{deliver, Input};
use crate::watch::Shared;

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: SyncSender<Input>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) thread: Option<JoinHandle<()>>,
    pub(crate) config: Config,
    pub(crate) event_capacity: usize,
    /// How rotations reached the connections of `redis_sync` (also read by the metrics)
    pub(crate) fan_out: Arc<redis_entraid_core::fan_out::FanOutLog>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        deliver(&self.signals, &self.commands, Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            // The driver only ever waits on its command channel, so it sees the shutdown at
            // once; fetch threads it left behind end with their own timeouts.
            let _ = thread.join();
        }
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

/// A running token provider: a cheap, cloneable handle to one driver thread
///
/// Dropping the last clone shuts the driver down and joins its thread.
#[derive(Clone)]
pub struct Provider {
    pub(crate) inner: Arc<Inner>,
}

redis_entraid_core::provider_handle!(Provider, ProviderBuilder, inner);

impl Provider {
    /// The default chain from the environment, default settings, waiting up to 30 s for the
    /// first token
    ///
    /// # Errors
    /// As [`ProviderBuilder::build_from_env`].
    pub fn from_env() -> Result<Provider, StartupError> {
        Self::builder().build_from_env()
    }

    /// Waits up to `timeout` for credentials newer than `generation` (any, for `None`);
    /// `None` when none arrive in time or the provider has stopped
    pub fn wait_newer(
        &self,
        generation: Option<Generation>,
        timeout: Duration,
    ) -> Option<(Generation, Credentials)> {
        self.inner
            .shared
            .wait_until(Some(timeout), |o| o.newer_or_stopped(generation))
            .flatten()
    }

    /// A latest-value view of the credentials: never queues, never back-pressures the driver
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            provider: self.clone(),
            seen: None,
        }
    }

    /// Every event from now on, on a bounded queue of its own
    pub fn events(&self) -> Receiver<Event> {
        self.inner
            .shared
            .subscribe_events(self.inner.event_capacity)
    }

    /// Events dropped because a subscriber's queue was full
    pub fn dropped_events(&self) -> u64 {
        self.inner
            .shared
            .dropped_events
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn record_fan_out_ok(&self, generation: Generation, latency: Duration) {
        self.inner.fan_out.record_ok(generation, latency, None);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn record_fan_out_failure(&self, generation: Generation) {
        self.inner.fan_out.record_failure(generation);
    }

    /// How the latest rotations reached the connections this crate re-authenticates
    /// ([`redis_sync`](crate::redis_sync) connections, pooled or not): per generation, the
    /// latency from the token's arrival to each connection's `AUTH` OK (p50, p99, max) and the
    /// retried attempts. Oldest first; the last 64 rotations are kept.
    pub fn fan_out_reports(&self) -> Vec<redis_entraid_core::fan_out::FanOutReport> {
        self.inner.fan_out.reports()
    }

    /// Stops the driver now (other clones then see [`Status::Stopped`](redis_entraid_core::event::Status::Stopped)); a flag, so even a
    /// full command queue cannot lose it
    pub fn shutdown(&self) {
        deliver(&self.inner.signals, &self.inner.commands, Command::Shutdown);
        self.inner
            .shared
            .wait_until(Some(Duration::from_secs(5)), |o| {
                o.is_stopped().then_some(())
            });
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

    /// Waits for credentials newer than the last ones returned; `None` once the provider has
    /// stopped
    pub fn changed(&mut self) -> Option<(Generation, Credentials)> {
        let newer = self
            .provider
            .inner
            .shared
            .wait_until(None, |o| o.newer_or_stopped(self.seen))
            .flatten();
        self.seen_now(newer)
    }

    /// Like [`changed`](Self::changed), giving up after `timeout`
    pub fn wait_changed(&mut self, timeout: Duration) -> Option<(Generation, Credentials)> {
        let newer = self.provider.wait_newer(self.seen, timeout);
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
