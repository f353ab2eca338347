//! redis-entraid for synchronous Rust
//!
//! One driver thread per [`Provider`] runs the core's [`TokenManager`]: it sleeps with
//! `recv_timeout` (which is also how commands wake it), fetches tokens on short-lived threads so
//! a slow identity endpoint never delays anything else, and publishes each new token to every
//! handle. Handles are cheap clones; dropping the last one stops and joins the thread.
//!
//! [`TokenManager`]: redis_entraid_core::machine::TokenManager

mod fetcher;
mod http;
mod identity;
mod provider;
#[cfg(feature = "redis")]
pub mod redis_sync;
mod watch;

pub use fetcher::Fetcher;
pub use http::HttpConfig;
pub use identity::IdentityFetcher;
pub use provider::{Provider, ProviderBuilder, Startup, StartupError, Subscription};
