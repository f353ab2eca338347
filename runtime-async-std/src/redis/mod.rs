//! redis-rs async integration (smol runtime support): connections whose re-authentication
//! this crate owns
//!
//! # Connections
//!
//! [`EntraClient`] pairs a `redis::Client` with a [`Provider`]:
//! - [`EntraClient::get_multiplexed_connection`] gives an [`EntraConnection`], a
//!   `MultiplexedConnection` that authenticates with the latest token (`HELLO 3 AUTH` on
//!   RESP3) and re-authenticates in place with every newer one. A refused, failed or
//!   unanswered `AUTH` is retried (50 ms doubling to 1 s) until it succeeds, a newer token
//!   supersedes it or the connection is gone; RESP3 subscriptions on it survive rotations.
//! - [`EntraClient::get_connection_manager`] gives an [`EntraConnectionManager`], which also
//!   reconnects whenever the connection is lost, with the latest usable token, retrying
//!   (`WRONGPASS` included) until it succeeds: it never stays down once a valid token exists.
//!
//! Each connection's re-authentication runs as a task on smol's global executor (where
//! redis-rs itself runs its connection drivers under `smol-comp`), so it works whatever
//! executor the application polls its own futures on (async-std, smol, a `block_on`). The
//! task ends with the last clone of its connection, or when the connection closes. Connections
//! hold no [`Provider`]: the driver stops when the last `Provider` is dropped, and the
//! connections' tasks end then.
//!
//! Why not redis-rs's own `set_credentials_provider`? Its re-authentication task (1.x) stops
//! for good after one failed `AUTH` and tells nobody, and its `ConnectionManager` caches a
//! `WRONGPASS` met while reconnecting after an outage and fails every later command. The
//! provider still implements [`StreamingCredentialsProvider`](redis::auth::StreamingCredentialsProvider) for what has no other door:
//! **async cluster** connections (`ClusterClientBuilder::set_credentials_provider`), whose
//! node connections redis-rs creates itself. There a failed node re-`AUTH` is reported
//! ([`Event::ReauthFailed`](redis_entraid_core::event::Event::ReauthFailed)) and answered with
//! a fresh token, but that node connection stays on its old token until the server closes it
//! at expiry and the cluster reconnects it with the latest one (its commands are retried by
//! the cluster client).
//!
//! Migrating from `AsyncConnectionConfig::new().set_credentials_provider(provider)`: drop the
//! `set_credentials_provider` call and open connections through
//! `EntraClient::new(client, provider)`; keep the rest of the config.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use redis::AsyncCommands;
//! use redis_entraid_async_std::redis::EntraClient;
//! use redis_entraid_async_std::Provider;
//!
//! let provider = Provider::builder().build_from_env(|driver| smol::spawn(driver).detach()).await?;
//! let client = EntraClient::new(
//!     redis::Client::open("rediss://my-cache.redis.azure.net:10000/?protocol=resp3")?,
//!     provider,
//! );
//! // Before: client.get_multiplexed_async_connection_with_config(
//! //     &AsyncConnectionConfig::new().set_credentials_provider(provider))
//! let mut con = client.get_multiplexed_connection().await?;
//! let () = con.set("k", "v").await?;
//! let mut manager = client.get_connection_manager().await?;
//! let _: Option<String> = manager.get("k").await?;
//! # Ok(()) }
//! ```
//!
//! The connection code is written once for both async runtimes, in
//! `redis-entraid-redis-async`; this module lends it smol's tasks and async-io's timers and
//! names its types for this crate's [`Provider`].
//!
//! Each rotation's fan-out (token arrival to every connection's `AUTH` OK, and the margin left
//! on the replaced token) is in [`Provider::fan_out_reports`].

use std::future::Future;
use std::time::{Duration, Instant};

use redis_entraid_core::command::Command;
use redis_entraid_core::fan_out::FanOutLog;
use redis_entraid_core::observed::Observed;
use redis_entraid_redis_async as shared;

pub use redis_entraid_core::fan_out::FanOutReport;
pub use shared::{reauth_window, ManagerConfig, MAX_REAUTHS_IN_FLIGHT, MIN_REAUTHS_IN_FLIGHT};

use crate::provider::WeakProvider;
use crate::Provider;

redis_entraid_redis_async::runtime_integration!(Provider);

/// smol's global executor (where redis-rs runs its own connection drivers under
/// `smol-comp`) and async-io's timers, lent to the shared connection code
#[derive(Debug)]
pub struct Smol;

impl shared::Runtime for Smol {
    /// Dropping a `smol::Task` cancels it.
    type Task = smol::Task<()>;

    fn spawn(task: impl Future<Output = ()> + Send + 'static) -> smol::Task<()> {
        smol::spawn(task)
    }

    fn spawn_detached(task: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(task).detach();
    }

    async fn sleep(duration: Duration) {
        async_io::Timer::after(duration).await;
    }

    fn now() -> Instant {
        Instant::now()
    }
}

impl shared::ProviderLink for WeakProvider {
    type Runtime = Smol;

    fn observe<T>(&self, read: impl FnOnce(&Observed) -> T) -> T {
        read(&self.shared.lock())
    }

    async fn wait_until<T: Send>(
        &self,
        ready: impl FnMut(&Observed) -> Option<T> + Send,
    ) -> Option<T> {
        self.shared.wait_until(None, ready).await
    }

    fn send(&self, command: Command) {
        WeakProvider::send(self, command);
    }

    fn fan_out(&self) -> &FanOutLog {
        &self.fan_out
    }
}

impl shared::ProviderHandle for Provider {
    type Link = WeakProvider;

    fn downgrade(&self) -> WeakProvider {
        Provider::downgrade(self)
    }
}
