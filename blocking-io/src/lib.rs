//! The blocking I/O behind redis-entraid's identity flows
//!
//! The core's [`IdentityExecutor`](redis_entraid_core::identity::executor::IdentityExecutor)
//! decides every rule of a fetch (deadlines, caps, the chain's winner, one callback at a time);
//! this crate supplies its blocking I/O: an HTTP client (ureq with rustls) with the proxy,
//! TLS and pinning rules, `std::fs`, child processes killed as a group at their deadline,
//! callbacks on threads of their own. `redis-entraid-blocking` calls it from short-lived
//! fetch threads, `redis-entraid-async-std` from the `blocking` thread pool, and
//! `redis-entraid-tokio` runs its HTTP client, file reads and CLI runs on tokio's blocking
//! pool; users name its types through those crates' re-exports.
//!
//! It also holds what every runtime reads from its host process, written once: the
//! environment the default chain is configured from ([`ProcessEnv`]), OS randomness for jitter
//! seeds ([`seeded`]) and each fetch's context ([`fetch_context`]), and the event log line
//! ([`log_event!`], which logs under the calling runtime's target).
//!
//! Feature `http` (default): the HTTP client and [`IdentityFetcher`]; without it, only the
//! local I/O ([`read_file`], [`run_command`]) and [`Fetcher`], for a runtime that brings its
//! own HTTP client. Feature `secret-safe-log` (on in every runtime's defaults): caps the `log`
//! crate at DEBUG (see the HTTP client's docs for why).

mod fetcher;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
mod identity;
mod local;
mod process;

pub use fetcher::Fetcher;
#[cfg(feature = "http")]
pub use http::{HttpClient, HttpClientBuilder};
#[cfg(feature = "http")]
pub use identity::IdentityFetcher;
pub use local::{read_file, run_command};
#[doc(hidden)]
pub use process::{__core, __tracing};
pub use process::{fetch_context, seeded, ProcessEnv};
pub use redis_entraid_core::identity::executor::MAX_RESPONSE_BODY;
pub use redis_entraid_core::identity::HttpConfig;
