//! redis-rs async integration: connections whose re-authentication this crate owns
//!
//! # Connections
//!
//! [`EntraClient`] pairs a `redis::Client` with a [`Provider`]:
//! - [`EntraClient::get_multiplexed_connection`] gives an [`EntraConnection`], a
//!   `MultiplexedConnection` that authenticates with the latest token (`HELLO 3 AUTH` on
//!   RESP3) and re-authenticates in place with every newer one. A refused, failed or
//!   unanswered `AUTH` is retried (50 ms doubling to 1 s) until it succeeds, a newer token
//!   supersedes it or the connection is gone; RESP3 subscriptions on it survive rotations.
//! - [`EntraClient::get_connection_manager`] gives an [`EntraConnectionManager`], which also
//!   reconnects whenever the connection is lost, with the latest usable token, retrying
//!   (`WRONGPASS` included) until it succeeds: it never stays down once a valid token exists.
//!
//! Why not redis-rs's own `set_credentials_provider`? Its re-authentication task (1.x) stops
//! for good after one failed `AUTH` and tells nobody, and its `ConnectionManager` caches a
//! `WRONGPASS` met while reconnecting after an outage and fails every later command. The
//! provider still implements [`StreamingCredentialsProvider`] for what has no other door:
//! **async cluster** connections (`ClusterClientBuilder::set_credentials_provider`, with
//! redis-rs's `cluster-async` feature enabled by the application: this crate does not enable it,
//! so applications without a cluster do not build its dependencies), whose node connections
//! redis-rs creates itself. There a failed node re-`AUTH` is reported
//! ([`Event::ReauthFailed`](redis_entraid_core::event::Event::ReauthFailed)) and answered with
//! a fresh token, but that node connection stays on its old token until the server closes it
//! at expiry and the cluster reconnects it with the latest one (its commands are retried by
//! the cluster client).
//!
//! Migrating from `AsyncConnectionConfig::new().set_credentials_provider(provider)`: drop the
//! `set_credentials_provider` call and open connections through
//! `EntraClient::new(client, provider)`; keep the rest of the config.
//!
//! Each rotation's fan-out (token arrival to every connection's `AUTH` OK, and the margin left
//! on the replaced token) is in [`Provider::fan_out_reports`].
//!
//! # Pub/sub
//!
//! RESP3 connections re-`AUTH` in place, subscriptions included (an [`EntraConnection`] with
//! a push sender). A RESP2 subscriber cannot send `AUTH` while subscribed, so
//! [`Resp2Subscriber`] swaps connections instead; see its documentation for what is
//! guaranteed.

mod connection;
mod manager;
mod reauth;
mod resp2;

pub use connection::{EntraClient, EntraConnection};
pub use manager::{EntraConnectionManager, ManagerConfig};
pub use redis_entraid_core::fan_out::FanOutReport;
pub use resp2::{Resp2Subscriber, RESP2_DEFAULT_CAPACITY};

use std::pin::Pin;

use futures_util::Stream;
use redis::auth::{BasicAuth, StreamingCredentialsProvider};
use redis::{ErrorKind, RedisError, RedisResult};
use redis_entraid_core::error::{ReauthError, ReauthErrorKind};
use redis_entraid_core::event::Generation;
use redis_entraid_core::token::Credentials;

use crate::provider::{Command, Provider, Snapshot, WeakProvider};

impl StreamingCredentialsProvider for Provider {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        credentials_stream(self.downgrade())
    }
}

/// A copy forced by redis-rs's `BasicAuth` (owned `String`s), dropped without being wiped
fn basic_auth(credentials: &Credentials) -> BasicAuth {
    BasicAuth::new(
        credentials.username().to_owned(),
        credentials.password().expose_secret().to_owned(),
    )
}

struct StreamState {
    provider: WeakProvider,
    seen: Option<Generation>,
    /// A generation yielded after the first item, whose `AUTH` is not known to have worked
    unconfirmed: Option<Generation>,
    ended: bool,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if let Some(generation) = self.unconfirmed.take() {
            // One report per generation: when many connections die at once (a network
            // blip), one refresh is enough and the event stream stays readable.
            if !self.provider.first_report_for(generation) {
                return;
            }
            tracing::warn!(
                generation = generation.0,
                "a redis-rs connection stopped re-authenticating right after being handed new \
                 credentials (its AUTH failed or it closed); fetching a fresh token"
            );
            self.provider.send(Command::Reauth {
                generation,
                result: Err(ReauthError::new(
                    ReauthErrorKind::Other,
                    "redis-rs stopped re-authenticating a connection after AUTH with these \
                     credentials (the AUTH failed or the connection closed)",
                )),
            });
            self.provider.send(Command::RefreshNow);
        }
    }
}

fn credentials_stream(
    provider: WeakProvider,
) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
    let state = StreamState {
        provider,
        seen: None,
        unconfirmed: None,
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        // Being polled again means the consumer finished with the previous item.
        st.unconfirmed = None;
        if st.ended {
            return None;
        }
        let first = st.seen.is_none();
        let seen = st.seen;
        let mut rx = st.provider.state.clone();
        let newer = |s: &Snapshot| match (s.latest(), seen) {
            (Some((g, _)), Some(seen)) => *g > seen,
            (Some(_), None) => true,
            _ => false,
        };
        let found = rx
            .wait_for(|s| s.is_stopped() || newer(s))
            .await
            .ok()
            .and_then(|s| if newer(&s) { s.latest().cloned() } else { None });
        match found {
            Some((generation, credentials)) => {
                st.seen = Some(generation);
                if !first {
                    st.unconfirmed = Some(generation);
                }
                Some((Ok(basic_auth(&credentials)), st))
            }
            None => {
                st.ended = true;
                Some((
                    Err(RedisError::from((
                        ErrorKind::AuthenticationFailed,
                        "the redis-entraid provider has stopped",
                    ))),
                    st,
                ))
            }
        }
    }))
}

/// Reports a Redis error to the provider when it says the credentials were refused
/// (`WRONGPASS`, `NOAUTH`, authentication failed): the provider publishes
/// [`Event::ReauthFailed`](redis_entraid_core::event::Event::ReauthFailed) and fetches a fresh
/// token. Returns whether it was such an error.
pub fn report_error(provider: &Provider, error: &RedisError) -> bool {
    let code = error.code().unwrap_or_default();
    let kind = match code {
        "WRONGPASS" => ReauthErrorKind::WrongPass,
        "NOAUTH" => ReauthErrorKind::NoAuth,
        _ if error.kind() == ErrorKind::AuthenticationFailed => ReauthErrorKind::WrongPass,
        _ => return false,
    };
    let generation = provider.current().map_or(Generation(0), |(g, _)| g);
    provider.report_reauth(
        generation,
        Err(ReauthError::new(
            kind,
            format!("Redis refused a command: {code}"),
        )),
    );
    true
}
