//! The sans-IO core of redis-entraid
//!
//! Azure Managed Redis and Azure Cache for Redis accept Microsoft Entra ID access tokens as
//! passwords (`AUTH <oid> <token>`) and close every connection whose token expires without a
//! newer `AUTH`. This crate decides *when* to fetch a token, *what* to do when a fetch fails and
//! *when* to push new credentials to connections, as a deterministic state machine,
//! [`machine::TokenManager`]. It does no I/O, spawns nothing, reads no clock and never sleeps:
//! time is an argument, randomness is seeded (one exception: the PS256 salt of a
//! client-certificate assertion, which `ring` draws from the OS itself), and the runtimes (`redis-entraid-tokio`,
//! `redis-entraid-async-std`, `redis-entraid-blocking`) perform the HTTP, the timers and the
//! Redis `AUTH`s. The same inputs always produce the same actions, so the whole schedule is
//! testable with a simulated clock, property-tested and fuzzed.
//!
//! # The contract
//!
//! Methods fall into four groups (quinn's shape):
//! - **getters** on `&self`: [`poll_timeout`], [`credentials`], [`status`], [`timeout_reason`];
//! - **inputs**: [`handle_timeout`], [`handle_response`], [`handle_reauth_result`];
//! - **commands**: [`refresh_now`] (e.g. Redis answered `WRONGPASS`), [`shutdown`];
//! - **output**: [`poll_action`].
//!
//! Rules a driver keeps:
//! 1. After every input or command, drain [`poll_action`] until it returns [`Action::Wait`]
//!    (str0m's single-mutation invariant). `Wait` always comes last.
//! 2. Perform each action: [`Action::FetchToken`] starts a token request (answer it with
//!    [`handle_response`] and the same id, before `deadline`); [`Action::Reauthenticate`] sends
//!    `AUTH` on every live connection (answer with [`handle_reauth_result`]);
//!    [`Action::Event`] is for logs and metrics.
//! 3. Sleep until `Wait { until }` or the next input, whichever is first, then call
//!    [`handle_timeout`] (or the input's handler) with a fresh `now`.
//! 4. `now` is monotonic; if a caller passes an earlier instant, the machine clamps it. Wall
//!    time enters only in [`handle_response`], to turn absolute expiries into monotonic
//!    deadlines at receipt, so a wall-clock jump later never moves a deadline.
//! 5. At most one fetch is in flight; a response with a stale id (after a timeout) is ignored.
//!
//! # Refresh rules
//!
//! `refresh_at = received + min(ratio * ttl, ttl - lower_bound)`, earlier if the provider's
//! `refresh_in` says so, never sooner than the minimum interval after the previous fetch
//! started (no hot loop on tiny or already-short tokens). Failed fetches back off
//! exponentially with jitter, honour `Retry-After`, and are pulled back before the current
//! token's expiry when a backoff would carry them past it. After `max_attempts` consecutive
//! failures the machine emits [`Event::RetriesExhausted`] once and keeps trying every
//! `max_delay`: it never stops on its own. A token that is not newer than the current one is
//! not pushed to connections. A refresh request (`refresh_now`, a `WRONGPASS`) during a
//! failure streak waits for the planned retry. Defaults are in [`config`].
//!
//! # Time rules
//!
//! The machine never believes a token lives longer than the server does. The earliest lifetime
//! wins; an integer `expires_in` counts from the send and one second short (the server's `exp`
//! is its issue time rounded down plus the lifetime); `expires_on` / `exp` are converted with
//! the server's `Date` header when the response has one (else the host wall clock, sub-second
//! part included). Without a `Date`, an absolute expiry shortens a relative `expires_in` only
//! within [`Config::clock_skew_tolerance`]; beyond it the host clock is taken to be wrong, the
//! relative lifetime is trusted and [`Event::ClockSkew`] is reported. Limit: an answer with
//! only absolute values and no `Date` can only be read with the host clock.
//!
//! [`Config::clock_skew_tolerance`]: config::Config::clock_skew_tolerance
//! [`Event::ClockSkew`]: event::Event::ClockSkew
//!
//! # The drain loop
//!
//! ```no_run
//! use std::time::{Instant, SystemTime};
//! use redis_entraid_core::config::Config;
//! use redis_entraid_core::error::{FetchError, TransportError};
//! use redis_entraid_core::event::{Action, RequestId};
//! use redis_entraid_core::machine::TokenManager;
//! use redis_entraid_core::token::TokenResponse;
//!
//! // Your I/O: an HTTP call through an identity flow, and AUTH on your connections.
//! fn fetch_token(_deadline: Instant) -> Result<TokenResponse, FetchError> {
//!     Err(TransportError::new("not wired up in this example").into())
//! }
//! fn sleep_until(_until: Option<Instant>) {}
//!
//! let mut machine = TokenManager::new(Config::default(), Instant::now());
//! loop {
//!     // 1. Drain every action the last input produced.
//!     let mut answered: Option<(RequestId, Result<TokenResponse, FetchError>)> = None;
//!     let until = loop {
//!         match machine.poll_action() {
//!             Action::FetchToken { id, deadline, .. } => answered = Some((id, fetch_token(deadline))),
//!             Action::Reauthenticate { credentials, generation } => {
//!                 // send AUTH credentials.username() credentials.password().expose_secret()
//!                 // on every connection, then:
//!                 machine.handle_reauth_result(generation, Ok(()), Instant::now());
//!             }
//!             Action::Event(event) => eprintln!("{event:?}"),
//!             Action::Wait { until } => break until,
//!         }
//!     };
//!     // 2. Feed exactly one input with a fresh `now`, then drain again.
//!     if let Some((id, result)) = answered {
//!         machine.handle_response(id, result, SystemTime::now(), Instant::now());
//!     } else {
//!         sleep_until(until);
//!         machine.handle_timeout(Instant::now());
//!     }
//! }
//! ```
//!
//! [`poll_timeout`]: machine::TokenManager::poll_timeout
//! [`credentials`]: machine::TokenManager::credentials
//! [`status`]: machine::TokenManager::status
//! [`timeout_reason`]: machine::TokenManager::timeout_reason
//! [`handle_timeout`]: machine::TokenManager::handle_timeout
//! [`handle_response`]: machine::TokenManager::handle_response
//! [`handle_reauth_result`]: machine::TokenManager::handle_reauth_result
//! [`refresh_now`]: machine::TokenManager::refresh_now
//! [`shutdown`]: machine::TokenManager::shutdown
//! [`poll_action`]: machine::TokenManager::poll_action
//! [`Action::Wait`]: event::Action::Wait
//! [`Action::FetchToken`]: event::Action::FetchToken
//! [`Action::Reauthenticate`]: event::Action::Reauthenticate
//! [`Action::Event`]: event::Action::Event
//! [`Event::RetriesExhausted`]: event::Event::RetriesExhausted

pub mod backoff;
pub mod command;
pub mod config;
pub mod error;
pub mod event;
pub mod fan_out;
pub mod handle;
pub mod identity;
pub mod jwt;
pub mod machine;
/// Metric names and the mapping of events and fan-out reports to observations (no recorder,
/// no clock: a runtime or the CLI records them with the `metrics` crate or anything else)
pub mod metrics;
pub mod observed;
pub mod reauth_window;
pub mod secret;
pub mod startup;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod timer;
pub mod token;
