//! redis-rs async integration: the provider is a `StreamingCredentialsProvider`
//!
//! Give it to `AsyncConnectionConfig::set_credentials_provider` (multiplexed connections) or
//! the cluster builder's `set_credentials_provider`: each connection takes the current
//! credentials when it connects and sends `AUTH` with every newer generation. Every
//! subscription is a latest-value stream over the provider's shared state: a slow or dead
//! connection never delays another or the refresh, and it always gets the newest token, never
//! a backlog.
//!
//! Gaps that belong to redis-rs 1.x, not to us: its re-authentication task stops for good
//! after its first failed `AUTH` on a live connection, without telling the provider, and it
//! stores the password as a plain `String`. A subscription also yields the current credentials
//! at once, so a new connection sends one redundant `AUTH` right after its handshake.

use std::pin::Pin;

use futures_lite::{stream, Stream};
use redis::auth::{BasicAuth, StreamingCredentialsProvider};
use redis::{ErrorKind, RedisError, RedisResult};
use redis_entraid_core::event::Generation;

use crate::Provider;

impl StreamingCredentialsProvider for Provider {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        let start: (Provider, Option<Generation>, bool) = (self.clone(), None, false);
        Box::pin(stream::unfold(
            start,
            |(provider, seen, ended)| async move {
                if ended {
                    return None;
                }
                match provider.wait_newer(seen, None).await {
                    Some((generation, credentials)) => {
                        let auth = BasicAuth::new(
                            credentials.username().to_owned(),
                            credentials.password().expose_secret().to_owned(),
                        );
                        Some((Ok(auth), (provider, Some(generation), false)))
                    }
                    // Stopped before any token: one error, then the end of the stream.
                    None if seen.is_none() => Some((
                        Err(RedisError::from((
                            ErrorKind::AuthenticationFailed,
                            "the Entra ID token provider stopped before it had a token",
                        ))),
                        (provider, seen, true),
                    )),
                    None => None,
                }
            },
        ))
    }
}
