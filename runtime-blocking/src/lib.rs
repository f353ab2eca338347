//! redis-entraid for synchronous Rust
//!
//! One driver thread per [`Provider`] runs the core's [`TokenManager`]: it sleeps with
//! `recv_timeout` (which is also how commands wake it), fetches tokens on short-lived threads so
//! a slow identity endpoint never delays anything else, and publishes each new token to every
//! handle. Handles are cheap clones; dropping the last one stops and joins the thread.
//!
//! With the `redis` feature, the `redis_sync` module keeps redis-rs sync connections and an r2d2
//! pool authenticated (RESP2 and RESP3). Idle connections are re-authenticated each on a thread of
//! its own, every `AUTH` bounded by a timeout, refused ones retried with backoff. A blocking
//! command (`BLPOP key 0`) still waiting when its connection's token expires cannot be
//! re-authenticated: the server closes the connection, the command returns an I/O error (never
//! retried), and the next command reconnects with fresh credentials (the pool replaces the
//! connection). Keep blocking timeouts shorter than a token's lifetime to avoid that error; the
//! `redis_sync` module docs give the details.
//!
//! [`TokenManager`]: redis_entraid_core::machine::TokenManager

mod provider;
#[cfg(feature = "redis")]
pub mod redis_sync;
mod watch;

pub use provider::{Provider, ProviderBuilder, Subscription};
pub use redis_entraid_blocking_io::{Fetcher, HttpConfig, IdentityFetcher};
pub use redis_entraid_core::startup::{Startup, StartupError};
