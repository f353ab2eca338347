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
use redis_entraid_core::config::RetryPolicy;
use redis_entraid_core::error::{ReauthError, ReauthErrorKind};
use redis_entraid_core::event::Generation;
use redis_entraid_core::token::Credentials;

use crate::provider::{now, Command, Snapshot, WeakProvider};

/// An `AUTH` not answered within this is sent again. It queues behind the commands already
/// pipelined on the connection, so this bounds a stuck or very busy connection, not a slow
/// network. Two seconds leaves every Azure token (at least five minutes of life, refreshed
/// with at least the lower bound left) many retries before expiry; a timed-out `AUTH` that
/// completes later is harmless (the server keeps the newest `AUTH`'s token).
const AUTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Re-`AUTH`s in flight at once, over the whole process. A rotation wakes every
/// connection's task at the same moment; unbounded, a thousand `AUTH`s enter the runtime's
/// run queue and the server's at once, and every other command waits behind all of them
/// (measured with `bench/peers`: PING p99 more than doubled for the second after a rotation).
/// The fan-out is bound by `AUTH` throughput either way, so a bounded burst finishes about
/// as soon while other traffic waits behind at most this many.
const MAX_REAUTHS_IN_FLIGHT: usize = 32;

/// The permits behind [`MAX_REAUTHS_IN_FLIGHT`] (fair: first come, first served, so no
/// connection starves behind newer waiters)
static REAUTH_PERMITS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_REAUTHS_IN_FLIGHT);

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
    /// When that token expires (the driver's clock), if known
    pub(crate) expires_at: Option<Instant>,
}

/// A generation newer than `seen`, with what the task needs of it
struct Offer {
    generation: Generation,
    credentials: Credentials,
    received: Option<Instant>,
    expires_at: Option<Instant>,
}

fn offer_newer(snapshot: &Snapshot, seen: Generation) -> Option<Offer> {
    let (generation, credentials) = snapshot.latest()?;
    (*generation > seen).then(|| Offer {
        generation: *generation,
        credentials: credentials.clone(),
        received: snapshot.received(),
        expires_at: snapshot.expires_at(),
    })
}

/// Whether the connection itself is gone (no `AUTH` can help any more)
pub(crate) fn is_gone(error: &RedisError) -> bool {
    (error.is_connection_dropped() && !error.is_timeout()) || error.is_connection_refusal()
}

/// What a failed `AUTH` means to the provider
pub(crate) fn reauth_error(error: &RedisError) -> ReauthError {
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

fn seed() -> u64 {
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
pub(crate) async fn run(mut con: MultiplexedConnection, provider: WeakProvider, mut held: Held) {
    let mut state = provider.state.clone();
    let policy = retry_policy();
    let mut backoff = Backoff::new(seed());
    loop {
        let seen = held.generation;
        let found = match state
            .wait_for(|s| s.is_stopped() || offer_newer(s, seen).is_some())
            .await
        {
            Ok(snapshot) => offer_newer(&snapshot, seen),
            Err(_) => None,
        };
        let Some(mut offer) = found else {
            return; // the provider has stopped
        };
        let mut failures = 0u32;
        loop {
            let outcome = {
                // Never closed, so `acquire` cannot fail; the timeout starts once it is our
                // turn, so waiting for a permit is never mistaken for an unanswered AUTH.
                let _permit = REAUTH_PERMITS.acquire().await;
                tokio::time::timeout(AUTH_TIMEOUT, auth(&mut con, &offer.credentials)).await
            };
            let error = match outcome {
                Ok(Ok(())) => {
                    let at = now();
                    let latency = offer.received.map(|r| at.saturating_duration_since(r));
                    let margin = held.expires_at.map(|e| e.saturating_duration_since(at));
                    provider.fan_out.record_ok(
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
                Ok(Err(e)) if is_gone(&e) => {
                    tracing::debug!("connection closed; its re-authentication ends: {e}");
                    return;
                }
                Ok(Err(e)) => reauth_error(&e),
                Err(_) => ReauthError::new(
                    ReauthErrorKind::Connection,
                    format!("no answer to AUTH within {AUTH_TIMEOUT:?}"),
                ),
            };
            failures = failures.saturating_add(1);
            provider.fan_out.record_failure(offer.generation);
            if provider.first_report_for(offer.generation) {
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
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                changed = state.wait_for(|s| s.is_stopped() || offer_newer(s, generation).is_some()) => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let (stopped, newer) = {
                let snapshot = state.borrow();
                (snapshot.is_stopped(), offer_newer(&snapshot, generation))
            };
            if stopped {
                return;
            }
            if let Some(newer) = newer {
                offer = newer;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use redis_entraid_core::config::{Config, RefreshPolicy};
    use redis_entraid_core::testing::unsigned_token;
    use redis_entraid_core::token::TokenResponse;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    use super::MAX_REAUTHS_IN_FLIGHT;
    use crate::redis_async::EntraClient;
    use crate::Provider;

    #[derive(Default)]
    struct AuthGauge {
        in_flight: AtomicUsize,
        max: AtomicUsize,
        done: AtomicUsize,
    }

    /// One RESP array command, or `None` at end of stream
    async fn read_command(r: &mut BufReader<TcpStream>) -> Option<Vec<Vec<u8>>> {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            line.clear();
            r.read_line(&mut line).await.ok()?;
            let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
            let mut arg = vec![0; len + 2];
            r.read_exact(&mut arg).await.ok()?;
            arg.truncate(len);
            args.push(arg);
        }
        Some(args)
    }

    /// A Redis stand-in that answers `+OK` to everything, each `AUTH` after 20 ms, and
    /// records how many `AUTH`s it was answering at once
    async fn slow_auth_server(gauge: Arc<AuthGauge>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let gauge = gauge.clone();
                tokio::spawn(async move {
                    let mut r = BufReader::new(socket);
                    while let Some(cmd) = read_command(&mut r).await {
                        if cmd.first().is_some_and(|c| c.eq_ignore_ascii_case(b"AUTH")) {
                            let now = gauge.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            gauge.max.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            gauge.in_flight.fetch_sub(1, Ordering::SeqCst);
                            gauge.done.fetch_add(1, Ordering::SeqCst);
                        }
                        if r.get_mut().write_all(b"+OK\r\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rotation_over_many_connections_keeps_the_re_auths_in_flight_bounded() {
        let gauge = Arc::new(AuthGauge::default());
        let addr = slow_auth_server(gauge.clone()).await;
        let n = Arc::new(AtomicUsize::new(0));
        let config = Config::builder()
            .refresh(
                RefreshPolicy::builder()
                    .min_interval(Duration::from_millis(1))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let provider = Provider::builder()
            .config(config)
            .build_with_fetcher(move |_timeout: Duration| {
                let i = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    let exp = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs()
                        + 3600;
                    let token = unsigned_token(&format!(r#"{{"oid":"oid","exp":{exp},"n":{i}}}"#));
                    Ok(TokenResponse::new(token).with_expires_in(3600))
                }
            })
            .await
            .unwrap();
        let client = EntraClient::new(
            redis::Client::open(format!("redis://{addr}")).unwrap(),
            provider.clone(),
        );
        const CONNECTIONS: usize = 200;
        let mut cons = Vec::new();
        for _ in 0..CONNECTIONS {
            cons.push(client.get_multiplexed_connection().await.unwrap());
        }
        // Connecting authenticated each connection once, one at a time; count the rotation only.
        gauge.max.store(0, Ordering::SeqCst);
        gauge.done.store(0, Ordering::SeqCst);
        provider.refresh_now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while gauge.done.load(Ordering::SeqCst) < CONNECTIONS {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {CONNECTIONS} re-AUTHs answered",
                gauge.done.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let max = gauge.max.load(Ordering::SeqCst);
        // Bounded, yet still concurrent: the fan-out is not serialised.
        assert!(
            max <= MAX_REAUTHS_IN_FLIGHT,
            "{max} AUTHs in flight at once"
        );
        assert!(max > 1, "the re-AUTHs ran one at a time");
        let report = provider.fan_out_reports().pop().unwrap();
        assert_eq!(report.connections, CONNECTIONS);
        assert_eq!(report.failed_attempts, 0);
        drop(cons);
    }
}
