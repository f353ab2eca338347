//! What redis-rs's own connections get from a provider: a credentials stream (for
//! `StreamingCredentialsProvider`), and a way to say Redis refused the credentials

use std::pin::Pin;

use futures_util::Stream;
use redis::auth::BasicAuth;
use redis::{ErrorKind, RedisError, RedisResult};
use redis_entraid_core::command::Command;
use redis_entraid_core::error::{ReauthError, ReauthErrorKind};
use redis_entraid_core::event::Generation;
use redis_entraid_core::token::Credentials;

use crate::runtime::{ProviderHandle, ProviderLink};

/// A copy forced by redis-rs's `BasicAuth` (owned `String`s), dropped without being wiped
fn basic_auth(credentials: &Credentials) -> BasicAuth {
    BasicAuth::new(
        credentials.username().to_owned(),
        credentials.password().expose_secret().to_owned(),
    )
}

struct StreamState<L: ProviderLink> {
    provider: L,
    seen: Option<Generation>,
    /// A generation yielded after the first item, whose `AUTH` is not known to have worked
    unconfirmed: Option<Generation>,
    ended: bool,
}

impl<L: ProviderLink> Drop for StreamState<L> {
    fn drop(&mut self) {
        if let Some(generation) = self.unconfirmed.take() {
            // One report per generation: when many connections die at once (a network
            // blip), one refresh is enough and the event stream stays readable.
            if !self.provider.fan_out().first_report_for(generation) {
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

/// The stream a runtime's `StreamingCredentialsProvider::subscribe` returns: for
/// connections redis-rs opens and re-authenticates itself (async cluster nodes)
///
/// A latest-value stream over the provider's published state: a slow or dead connection never
/// delays another or the refresh, and it always gets the newest token, never a backlog. It
/// holds `provider` weakly (it does not keep the driver alive). When redis-rs stops polling
/// right after being handed new credentials (its `AUTH` failed, or the connection closed),
/// the provider is told once per generation and fetches a fresh token. When the provider
/// stops, the stream yields one `AuthenticationFailed` error saying so (redis-rs logs it) and
/// ends.
pub fn credentials_stream<L: ProviderLink>(
    provider: L,
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
        let found = st
            .provider
            .wait_until(|s| {
                match s.latest() {
                    Some((g, c)) if seen.is_none_or(|seen| *g > seen) => {
                        return Some(Some((*g, c.clone())))
                    }
                    _ => {}
                }
                s.is_stopped().then_some(None)
            })
            .await
            .flatten();
        match found {
            Some((generation, credentials)) => {
                st.seen = Some(generation);
                if !first {
                    st.unconfirmed = Some(generation);
                }
                Some((Ok(basic_auth(&credentials)), st))
            }
            // Stopped: one error saying so (redis-rs logs it), then the end of the stream.
            None => {
                st.ended = true;
                let detail = if first {
                    "the Entra ID token provider stopped before it had a token"
                } else {
                    "the Entra ID token provider has stopped; the connection keeps its last \
                     token until it expires"
                };
                Some((
                    Err(RedisError::from((ErrorKind::AuthenticationFailed, detail))),
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
pub fn report_error<P: ProviderHandle>(provider: &P, error: &RedisError) -> bool {
    let code = error.code().unwrap_or_default();
    let kind = match code {
        "WRONGPASS" => ReauthErrorKind::WrongPass,
        "NOAUTH" => ReauthErrorKind::NoAuth,
        _ if error.kind() == ErrorKind::AuthenticationFailed => ReauthErrorKind::WrongPass,
        _ => return false,
    };
    let link = provider.downgrade();
    let generation = link.observe(|s| s.latest().map_or(Generation(0), |(g, _)| *g));
    link.send(Command::Reauth {
        generation,
        result: Err(ReauthError::new(
            kind,
            format!("Redis refused a command: {code}"),
        )),
    });
    true
}
