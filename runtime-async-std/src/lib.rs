//! redis-entraid on async-io primitives: async-std, smol, or any executor
//!
//! The driver is a plain future ([`Driver`]) built on `async-io` timers and `async-channel`,
//! the primitives async-std and smol run on, so it runs under either (or any executor that can
//! spawn a `Send` future). Token requests run on the `blocking` thread pool through the same
//! identity executor (blocking-io's ureq client) as the blocking runtime, so a slow identity
//! endpoint never stalls the executor. Handles are cheap clones; dropping the last one ends the driver.
//!
//! With the `redis` feature, `redis::EntraClient` opens redis-rs multiplexed connections and
//! connection managers whose re-authentication this crate owns: every newer token is sent
//! with `AUTH`, retried until it works, and a lost connection is reopened with the latest
//! usable token. Those tasks run on smol's global executor, as redis-rs's own connection tasks
//! do. Moving from `AsyncConnectionConfig::set_credentials_provider(provider)`: open the
//! connections through `EntraClient::new(client, provider)` instead; the provider remains a
//! `StreamingCredentialsProvider` for async cluster connections. See the `redis` module.
//!
//! async-std itself is discontinued upstream (RUSTSEC-2025-0052) and only a dev-dependency
//! here: nothing in this crate depends on it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use redis_entraid_async_std::Provider;
//!
//! // The default chain from the environment; the driver spawned on smol.
//! let provider = Provider::builder().build_from_env(|driver| smol::spawn(driver).detach()).await?;
//! let mut subscription = provider.subscribe();
//! while let Some((generation, credentials)) = subscription.changed().await {
//!     println!("token #{} for {}", generation.0, credentials.username());
//! }
//! # Ok(()) }
//! ```

mod builder;
mod driver;
mod provider;
#[cfg(feature = "redis")]
pub mod redis;
mod shared;

pub use builder::ProviderBuilder;
pub use driver::Driver;
pub use provider::{Provider, Subscription, WeakProvider};
pub use redis_entraid_blocking_io::{Fetcher, HttpConfig, IdentityFetcher};
pub use redis_entraid_core::startup::{Startup, StartupError};
pub use redis_entraid_core::{config, error, event, identity, token};

/// The README's examples, compiled as doctests so they cannot drift from the API
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
