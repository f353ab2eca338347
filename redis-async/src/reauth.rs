//! The task each of our connections runs: `AUTH` with every newer credential generation,
//! retried until it succeeds, a newer generation supersedes it, or the connection is gone
//!
//! redis-rs's own re-authentication task (1.x) stops for good after one failed `AUTH` and
//! tells nobody, so a refused or timed-out re-`AUTH` left the connection on its old token
//! until the server closed it at expiry. This task owns the whole story instead.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::RedisError;
use redis_entraid_core::backoff::Backoff;
use redis_entraid_core::command::Command;
use redis_entraid_core::config::RetryPolicy;
use redis_entraid_core::error::{ReauthError, ReauthErrorKind};
use redis_entraid_core::event::Generation;
use redis_entraid_core::observed::Observed;
use redis_entraid_core::token::Credentials;

use crate::runtime::{timeout, ProviderLink, Runtime};
use crate::window;

/// An `AUTH` not answered within this is sent again. It queues behind the commands already
/// pipelined on the connection, so this bounds a stuck or very busy connection, not a slow
/// network. Two seconds leaves every Azure token (at least five minutes of life, refreshed
/// with at least the lower bound left) many retries before expiry; a timed-out `AUTH` that
/// completes later is harmless (the server keeps the newest `AUTH`'s token).
const AUTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Delays between `AUTH` retries: quick at first (a refused `AUTH` is usually a blip: a
/// failover, a token the server has not yet seen), then at most a second apart so a
/// connection is never far behind a token that would work.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::builder()
        .initial_delay(Duration::from_millis(50))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(1))
        .jitter(0.2)
        .build()
        .unwrap_or_default()
}

/// The credentials a connection authenticated with
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    pub(crate) generation: Generation,
    /// When that token expires (the runtime's clock), if known
    pub(crate) expires_at: Option<Instant>,
}

/// A generation newer than `seen`, with what the task needs of it
struct Offer {
    generation: Generation,
    credentials: Credentials,
    received: Option<Instant>,
    expires_at: Option<Instant>,
}

fn offer_newer(state: &Observed, seen: Generation) -> Option<Offer> {
    let (generation, credentials) = state.latest()?;
    (*generation > seen).then(|| Offer {
        generation: *generation,
        credentials: credentials.clone(),
        received: state.received(),
        expires_at: state.expires_at(),
    })
}

/// What the task waits for: a newer generation, or the provider's end (`None`)
fn next(state: &Observed, seen: Generation) -> Option<Option<Offer>> {
    if state.is_stopped() {
        return Some(None);
    }
    offer_newer(state, seen).map(Some)
}

/// Whether the connection itself is gone (no `AUTH` can help any more)
pub(crate) fn is_gone(error: &RedisError) -> bool {
    (error.is_connection_dropped() && !error.is_timeout()) || error.is_connection_refusal()
}

/// What a failed `AUTH` means to the provider
fn reauth_error(error: &RedisError) -> ReauthError {
    match error.code() {
        Some("WRONGPASS") => {
            ReauthError::new(ReauthErrorKind::WrongPass, "Redis answered WRONGPASS")
        }
        Some("NOAUTH") => ReauthError::new(ReauthErrorKind::NoAuth, "Redis answered NOAUTH"),
        Some(code) => ReauthError::new(ReauthErrorKind::Other, format!("Redis answered {code}")),
        None if error.is_timeout() => {
            ReauthError::new(ReauthErrorKind::Connection, "the AUTH timed out")
        }
        None => ReauthError::new(
            ReauthErrorKind::Connection,
            format!("the AUTH failed: {:?}", error.kind()),
        ),
    }
}

async fn auth(
    con: &mut MultiplexedConnection,
    credentials: &Credentials,
) -> Result<(), RedisError> {
    redis::cmd("AUTH")
        .arg(credentials.username())
        .arg(credentials.password().expose_secret())
        .query_async::<()>(con)
        .await
}

/// A jitter seed of its own for each connection
pub(crate) fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // Without OS randomness every connection would retry in step; the address of a local
    // is a poor but harmless fallback.
    if getrandom::getrandom(&mut bytes).is_err() {
        return std::ptr::addr_of!(bytes) as usize as u64;
    }
    u64::from_le_bytes(bytes)
}

/// Re-authenticates `con` with every generation newer than `held`, until the connection is
/// gone or the provider has stopped. Runs as a task owned by the connection's handles.
pub(crate) async fn run<L: ProviderLink>(
    mut con: MultiplexedConnection,
    provider: L,
    mut held: Held,
) {
    let policy = retry_policy();
    let mut backoff = Backoff::new(seed());
    loop {
        let seen = held.generation;
        let Some(mut offer) = provider.wait_until(|s| next(s, seen)).await.flatten() else {
            return; // the provider has stopped
        };
        let mut failures = 0u32;
        loop {
            let outcome = {
                // The timeout starts once the window has room, so waiting for a place is
                // never mistaken for an unanswered AUTH.
                let slot = window::acquire().await;
                let sent = L::Runtime::now();
                let outcome =
                    timeout::<L::Runtime, _>(AUTH_TIMEOUT, auth(&mut con, &offer.credentials))
                        .await;
                match &outcome {
                    // An error reply is a round trip too; a dropped connection is not.
                    Some(Err(e)) if e.code().is_none() => drop(slot),
                    Some(_) => slot.answered(L::Runtime::now().saturating_duration_since(sent)),
                    None => slot.timed_out(),
                }
                outcome
            };
            let error = match outcome {
                Some(Ok(())) => {
                    let at = L::Runtime::now();
                    let latency = offer.received.map(|r| at.saturating_duration_since(r));
                    let margin = held.expires_at.map(|e| e.saturating_duration_since(at));
                    provider.fan_out().record_ok(
                        offer.generation,
                        latency.unwrap_or_default(),
                        margin,
                    );
                    tracing::trace!(
                        generation = offer.generation.0,
                        "connection re-authenticated"
                    );
                    held = Held {
                        generation: offer.generation,
                        expires_at: offer.expires_at,
                    };
                    break;
                }
                Some(Err(e)) if is_gone(&e) => {
                    tracing::debug!("connection closed; its re-authentication ends: {e}");
                    return;
                }
                Some(Err(e)) => reauth_error(&e),
                None => ReauthError::new(
                    ReauthErrorKind::Connection,
                    format!("no answer to AUTH within {AUTH_TIMEOUT:?}"),
                ),
            };
            failures = failures.saturating_add(1);
            provider.fan_out().record_failure(offer.generation);
            if provider.fan_out().first_report_for(offer.generation) {
                // One report per generation for all connections: when a thousand refuse at
                // once, one fresh token is what helps, and the event stream stays readable.
                tracing::warn!(
                    generation = offer.generation.0,
                    "re-authentication failed, retrying: {error}"
                );
                provider.send(Command::Reauth {
                    generation: offer.generation,
                    result: Err(error),
                });
            }
            let delay = backoff.delay(&policy, failures);
            let generation = offer.generation;
            // Retry after the delay, or at once with a newer generation.
            let woke =
                timeout::<L::Runtime, _>(delay, provider.wait_until(|s| next(s, generation))).await;
            match woke {
                Some(Some(Some(newer))) => offer = newer,
                // The provider has stopped, or is gone.
                Some(Some(None) | None) => return,
                None => {}
            }
        }
    }
}
