//! The blocking I/O behind redis-entraid's identity flows
//!
//! The core's [`IdentityExecutor`](redis_entraid_core::identity::executor::IdentityExecutor)
//! decides every rule of a fetch (deadlines, caps, the chain's winner, one callback at a time);
//! this crate supplies its I/O for runtimes that fetch on threads: reqwest's blocking client
//! with the proxy, TLS and pinning rules, `std::fs`, child processes killed as a group at their
//! deadline, callbacks on threads of their own. `redis-entraid-blocking` calls it from
//! short-lived fetch threads, `redis-entraid-async-std` from the `blocking` thread pool; users
//! name its types through those crates' re-exports.

mod fetcher;
mod http;
mod identity;

pub use fetcher::Fetcher;
pub use http::HttpConfig;
pub use identity::IdentityFetcher;
