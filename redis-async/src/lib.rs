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
mod window;

pub use connection::{client_with_credentials, EntraClient, EntraConnection};
pub use manager::{EntraConnectionManager, ManagerConfig};
pub use runtime::{ProviderHandle, ProviderLink, Runtime};
pub use stream::{credentials_stream, report_error};
pub use window::{reauth_window, MAX_REAUTHS_IN_FLIGHT, MIN_REAUTHS_IN_FLIGHT};

#[doc(hidden)]
pub mod __private {
    pub use futures_util::Stream;
    pub use redis;
}

/// Names the shared types for a runtime's provider and gives it the redis-rs doors: writes,
/// in the runtime's module, `EntraClient`, `EntraConnection` and `EntraConnectionManager`
/// (aliases for `$provider`), the `StreamingCredentialsProvider` impl (for async cluster
/// connections) and `report_error`, with their documentation, so the runtimes cannot drift
/// apart on them
#[macro_export]
macro_rules! runtime_integration {
    ($provider:ty) => {
        /// A redis-rs [`Client`](redis::Client) paired with a provider: every connection it
        /// opens authenticates with the provider's latest credentials and re-authenticates in
        /// place with each newer token (every method: [`EntraClient`]($crate::EntraClient))
        pub type EntraClient = $crate::EntraClient<$provider>;

        /// A redis-rs `MultiplexedConnection` that re-authenticates in place with every newer
        /// token (see [`EntraConnection`]($crate::EntraConnection))
        pub type EntraConnection = $crate::EntraConnection<$provider>;

        /// A connection that reconnects whenever it is lost, with the latest usable token (see
        /// [`EntraConnectionManager`]($crate::EntraConnectionManager))
        pub type EntraConnectionManager = $crate::EntraConnectionManager<$provider>;

        /// For async cluster connections (`ClusterClientBuilder::set_credentials_provider`);
        /// use [`EntraClient`] for everything else (see
        /// [`credentials_stream`]($crate::credentials_stream))
        impl $crate::__private::redis::auth::StreamingCredentialsProvider for $provider {
            fn subscribe(
                &self,
            ) -> ::std::pin::Pin<
                ::std::boxed::Box<
                    dyn $crate::__private::Stream<
                            Item = $crate::__private::redis::RedisResult<
                                $crate::__private::redis::auth::BasicAuth,
                            >,
                        > + Send
                        + 'static,
                >,
            > {
                $crate::credentials_stream($crate::ProviderHandle::downgrade(self))
            }
        }

        /// Reports a Redis error to the provider when it says the credentials were refused
        /// (`WRONGPASS`, `NOAUTH`, authentication failed): the provider publishes
        /// `Event::ReauthFailed` and fetches a fresh token. Returns whether it was such an
        /// error.
        pub fn report_error(
            provider: &$provider,
            error: &$crate::__private::redis::RedisError,
        ) -> bool {
            $crate::report_error(provider, error)
        }
    };
}
