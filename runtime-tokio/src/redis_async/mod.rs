//! redis-rs async integration: connections whose re-authentication this crate owns
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
//! Why not redis-rs's own `set_credentials_provider`? Its re-authentication task (1.x) stops
//! for good after one failed `AUTH` and tells nobody, and its `ConnectionManager` caches a
//! `WRONGPASS` met while reconnecting after an outage and fails every later command. The
//! provider still implements [`StreamingCredentialsProvider`](redis::auth::StreamingCredentialsProvider) for what has no other door:
//! **async cluster** connections (`ClusterClientBuilder::set_credentials_provider`, with
//! redis-rs's `cluster-async` feature enabled by the application: this crate does not enable it,
//! so applications without a cluster do not build its dependencies), whose node connections
//! redis-rs creates itself. There a failed node re-`AUTH` is reported
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
//! use redis::AsyncCommands;
//! use redis_entraid_tokio::redis_async::EntraClient;
//! use redis_entraid_tokio::Provider;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Provider::from_env().await?;
//! let client = EntraClient::new(redis::Client::open("rediss://my-cache.redis.azure.net:10000")?, provider);
//! let mut con = client.get_multiplexed_connection().await?;
//! let () = con.set("k", "v").await?;
//! let mut manager = client.get_connection_manager().await?;
//! let _: Option<String> = manager.get("k").await?;
//! # Ok(()) }
//! ```
//!
//! The connection code is written once for both async runtimes, in
//! `redis-entraid-redis-async`; this module lends it tokio's tasks and timers and names its
//! types for this crate's [`Provider`].
//!
//! Each rotation's fan-out (token arrival to every connection's `AUTH` OK, and the margin left
//! on the replaced token) is in [`Provider::fan_out_reports`].
//!
//! # Pub/sub
//!
//! RESP3 connections re-`AUTH` in place, subscriptions included (an [`EntraConnection`] with
//! a push sender). A RESP2 subscriber cannot send `AUTH` while subscribed, so
//! [`Resp2Subscriber`] swaps connections instead; see its documentation for what is
//! guaranteed.

mod resp2;

use std::future::Future;
use std::time::{Duration, Instant};

use redis_entraid_core::command::Command;
use redis_entraid_core::fan_out::FanOutLog;
use redis_entraid_core::observed::Observed;
use redis_entraid_redis_async as shared;

pub use redis_entraid_core::fan_out::FanOutReport;
pub use resp2::{Resp2Subscriber, RESP2_DEFAULT_CAPACITY};
pub use shared::{reauth_window, ManagerConfig, MAX_REAUTHS_IN_FLIGHT, MIN_REAUTHS_IN_FLIGHT};

use crate::provider::{Provider, WeakProvider};

redis_entraid_redis_async::runtime_integration!(Provider);

/// Tokio's tasks and timers, lent to the shared connection code
#[derive(Debug)]
pub struct Tokio;

/// Aborts a task when dropped
#[derive(Debug)]
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl shared::Runtime for Tokio {
    type Task = AbortOnDrop;

    fn spawn(task: impl Future<Output = ()> + Send + 'static) -> AbortOnDrop {
        AbortOnDrop(tokio::spawn(task))
    }

    fn spawn_detached(task: impl Future<Output = ()> + Send + 'static) {
        drop(tokio::spawn(task));
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn now() -> Instant {
        crate::provider::now()
    }
}

impl shared::ProviderLink for WeakProvider {
    type Runtime = Tokio;

    fn observe<T>(&self, read: impl FnOnce(&Observed) -> T) -> T {
        read(&self.state.borrow())
    }

    async fn wait_until<T: Send>(
        &self,
        mut ready: impl FnMut(&Observed) -> Option<T> + Send,
    ) -> Option<T> {
        let mut state = self.state.clone();
        let mut found = None;
        // An error means the driver is gone: nothing newer can come.
        let _ = state
            .wait_for(|s| {
                found = ready(s);
                found.is_some()
            })
            .await;
        found
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
