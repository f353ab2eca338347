//! redis-rs async connections whose re-authentication redis-entraid owns, written once for
//! every async runtime
//!
//! This crate is the shared half of `redis-entraid-tokio`'s `redis_async` module and
//! `redis-entraid-async-std`'s `redis` module: use those. Each runtime lends it what differs
//! between executors (a [`Runtime`]: spawning, sleeping, its clock) and a way to read and
//! talk to its provider (a [`ProviderHandle`] and its weak [`ProviderLink`]); everything else
//! (waiting for usable credentials, the per-connection re-`AUTH` task with its retries and
//! its process-wide bound, the reconnecting manager, the credentials stream for redis-rs's
//! `StreamingCredentialsProvider`) is here, so the runtimes behave the same.
//!
//! - [`EntraClient`] opens [`EntraConnection`]s (multiplexed connections that authenticate
//!   with the latest token and re-authenticate in place with every newer one) and
//!   [`EntraConnectionManager`]s (which also reconnect whenever the connection is lost).
//! - [`credentials_stream`] is the stream a runtime's `StreamingCredentialsProvider` impl
//!   returns, for the connections redis-rs opens itself (async cluster).
//! - [`report_error`] tells a provider that Redis refused its credentials.

mod connection;
mod manager;
mod reauth;
mod runtime;
mod stream;

pub use connection::{client_with_credentials, EntraClient, EntraConnection};
pub use manager::{EntraConnectionManager, ManagerConfig};
pub use reauth::MAX_REAUTHS_IN_FLIGHT;
pub use runtime::{ProviderHandle, ProviderLink, Runtime};
pub use stream::{credentials_stream, report_error};
