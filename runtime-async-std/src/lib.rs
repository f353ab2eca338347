//! redis-entraid on async-io primitives: async-std, smol, or any executor
//!
//! The driver is a plain future ([`Driver`]) built on `async-io` timers and `async-channel`,
//! the primitives async-std and smol run on, so it runs under either (or any executor that can
//! spawn a `Send` future). Token requests run on the `blocking` thread pool through the same
//! ureq identity executor as the blocking runtime, so a slow identity endpoint never stalls the
//! executor. Handles are cheap clones; dropping the last one ends the driver.
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

mod provider;
#[cfg(feature = "redis")]
pub mod redis;
mod shared;

pub use provider::{Driver, Provider, ProviderBuilder, Subscription};
pub use redis_entraid_blocking::{Fetcher, HttpConfig, IdentityFetcher, Startup, StartupError};
