//! redis-entraid on tokio
//!
//! One driver task per [`Provider`] runs the core's
//! [`TokenManager`](redis_entraid_core::machine::TokenManager) in str0m's shape: drain every
//! action, perform it, then `select!` over the next deadline, the in-flight token fetch and
//! the command channel, and feed exactly one input with a fresh `now`. Time is read through
//! `tokio::time::Instant`, so tests with paused time run hours of token lifetimes in
//! milliseconds. Handles are cheap clones; dropping the last one stops the task.
//!
//! - [`Identity`] runs every Entra ID flow of the core (managed identity, service principal,
//!   workload identity, Azure CLI, the default chain...) over an [`AsyncHttpClient`]
//!   (by default redis-entraid-blocking-io's, ureq with rustls, on the blocking pool), and
//!   that crate's file reads and CLI runs on the blocking pool.
//! - Feature `redis`: [`redis_async`] makes redis-rs async connections authenticate on
//!   connect and re-`AUTH` on every new credential generation, and offers a RESP2 subscriber
//!   that swaps connections before the token expires.
//! - Feature `fred`: [`fred_provider`] implements fred's `CredentialProvider`.
//!
//! ```no_run
//! use redis_entraid_tokio::{Provider, Startup};
//! use std::time::Duration;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Provider::builder().startup(Startup::Wait(Duration::from_secs(30))).build_from_env().await?;
//! let credentials = provider.credentials();
//! # Ok(()) }
//! ```

mod builder;
mod driver;
#[cfg(feature = "fred")]
pub mod fred_provider;
pub mod http;
mod provider;
#[cfg(feature = "redis")]
pub mod redis_async;
mod source;

pub use builder::ProviderBuilder;
pub use http::AsyncHttpClient;
pub use provider::{Provider, Subscription, WeakProvider};
pub use redis_entraid_core::identity::HttpConfig;
pub use redis_entraid_core::startup::{Startup, StartupError};
pub use redis_entraid_core::{config, error, event, identity, token};
pub use source::{default_chain_from_env, BoxFuture, DefaultClient, Fetcher, Identity};

/// The README's examples, compiled as doctests so they cannot drift from the API
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
