//! What the machine asks of its driver: actions, events, ids and status

use std::time::{Duration, Instant};

use crate::error::{FetchError, ReauthError};
use crate::token::Credentials;

/// Identifies one token request; a response with another id is stale and ignored
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Counts the credentials pushed to connections; each new token gets the next one
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Generation(pub u64);

/// The next thing the driver must do, from [`TokenManager::poll_action`]
///
/// Exhaustive on purpose: this is the driver contract, so a new action must fail to compile in
/// every driver rather than be dropped by a catch-all arm.
///
/// [`TokenManager::poll_action`]: crate::machine::TokenManager::poll_action
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start a token request now; report it with `handle_response(id, ..)`. Give up at
    /// `deadline` (the machine also times the request out itself at that instant).
    FetchToken {
        /// Echo this in `handle_response`
        id: RequestId,
        /// 1 for the first try after a success, counting up while failures last
        attempt: u32,
        /// When the request must be abandoned
        deadline: std::time::Instant,
    },
    /// Send `AUTH <username> <password>` on every live connection; report the outcome with
    /// `handle_reauth_result(generation, ..)`
    Reauthenticate {
        /// The new credentials
        credentials: Credentials,
        /// Their generation
        generation: Generation,
    },
    /// Something the application may want to know (log it, count it, alert on it)
    Event(Event),
    /// Nothing more to do until `until` (call `handle_timeout` then) or until an input arrives;
    /// `None` means wait for input only. Always the last action of a drain.
    Wait {
        /// The next deadline
        until: Option<std::time::Instant>,
    },
}

/// Observable facts, for logs, metrics and alerts
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A new token arrived and was handed to connections
    Refreshed {
        /// Its generation
        generation: Generation,
        /// When it expires
        expires_at: Instant,
        /// When the next refresh is planned
        refresh_at: Instant,
    },
    /// The provider answered with a token that is not newer than the current one (a cached
    /// token); it was not pushed to connections and the next refresh was re-planned
    TokenNotNewer {
        /// Expiry of the token connections keep using
        expires_at: Instant,
        /// When the next refresh is planned
        refresh_at: Instant,
    },
    /// A token request failed; another is planned
    FetchFailed {
        /// Consecutive failures so far, this one included
        attempt: u32,
        /// Why it failed
        error: FetchError,
        /// Whether the retry policy judged it retryable (quick backoff) or not (max delay)
        retryable: bool,
        /// When the next request starts
        next_attempt_at: Instant,
    },
    /// `max_attempts` consecutive failures: reported once per failure streak. The machine
    /// keeps trying every `max_delay`; it never stops on its own.
    RetriesExhausted {
        /// Consecutive failures
        attempts: u32,
        /// The last error
        last_error: FetchError,
    },
    /// The current token expired before a replacement arrived; connections will be closed by
    /// the server until a new token is pushed
    Expired {
        /// Generation of the token that ran out
        generation: Generation,
    },
    /// Connections refused the new credentials; a fresh token is fetched when Redis rejected
    /// the token itself
    ReauthFailed {
        /// Generation that failed
        generation: Generation,
        /// Why
        error: ReauthError,
    },
    /// The host's wall clock disagrees with the identity provider's by more than the
    /// configured tolerance; reported for each token response that shows it, before that
    /// response's `Refreshed` / `FetchFailed`. Lifetimes were judged without the host clock
    /// (by the server's `Date`, or by the relative `expires_in`). Fix the host's time sync:
    /// other software on it (TLS, Kerberos) suffers too.
    ClockSkew {
        /// Whether the host clock is ahead of the server's (else behind)
        host_ahead: bool,
        /// By how much, within about a second plus the request's latency
        by: Duration,
        /// What showed it
        evidence: SkewEvidence,
    },
    /// `shutdown` was called; the machine emits nothing more
    Stopped,
}

/// How much an [`Event`] matters to an operator: the level a runtime logs it at
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Routine detail (a token that was not newer)
    Debug,
    /// The normal story: a new token, a clean stop
    Info,
    /// Something failed and is being handled (a retry, a refused `AUTH`, a wrong clock)
    Warn,
    /// Connections are at risk or lost (retries exhausted, a token expired)
    Error,
}

impl Event {
    /// The level to log this event at
    pub fn severity(&self) -> Severity {
        match self {
            Event::TokenNotNewer { .. } => Severity::Debug,
            Event::Refreshed { .. } | Event::Stopped => Severity::Info,
            Event::FetchFailed { .. } | Event::ReauthFailed { .. } | Event::ClockSkew { .. } => {
                Severity::Warn
            }
            Event::RetriesExhausted { .. } | Event::Expired { .. } => Severity::Error,
        }
    }

    /// One line for a log, with the durations counted from `now` (the driver's clock); holds no
    /// secret (errors never carry one)
    pub fn describe(&self, now: Instant) -> String {
        let from_now = |at: &Instant| at.saturating_duration_since(now).as_secs_f64();
        match self {
            Event::Refreshed {
                generation,
                expires_at,
                refresh_at,
            } => format!(
                "new token #{}: expires in {:.1}s, next refresh in {:.1}s",
                generation.0,
                from_now(expires_at),
                from_now(refresh_at)
            ),
            Event::TokenNotNewer {
                expires_at,
                refresh_at,
            } => format!(
                "the identity endpoint answered a token no newer than the current one \
                 (expires in {:.1}s); kept the current one, next refresh in {:.1}s",
                from_now(expires_at),
                from_now(refresh_at)
            ),
            Event::FetchFailed {
                attempt,
                error,
                retryable,
                next_attempt_at,
            } => format!(
                "token request #{attempt} failed ({}): {error}; next attempt in {:.1}s",
                if *retryable {
                    "retryable"
                } else {
                    "not retryable"
                },
                from_now(next_attempt_at)
            ),
            Event::RetriesExhausted {
                attempts,
                last_error,
            } => format!(
                "token refresh failed {attempts} times in a row, still retrying: {last_error}"
            ),
            Event::Expired { generation } => format!(
                "token #{} expired before a replacement arrived: connections will be closed \
                 by the server until a token is fetched",
                generation.0
            ),
            Event::ReauthFailed { generation, error } => format!(
                "re-authentication with token #{} failed: {error}",
                generation.0
            ),
            Event::ClockSkew {
                host_ahead,
                by,
                evidence,
            } => format!(
                "the host clock is {:.0}s {} the identity provider's (seen in {}); fix the \
                 host's time sync",
                by.as_secs_f64(),
                if *host_ahead { "ahead of" } else { "behind" },
                match evidence {
                    SkewEvidence::ServerDate => "the response's Date header",
                    SkewEvidence::Lifetimes => "the token's lifetimes",
                }
            ),
            Event::Stopped => "the token provider stopped".to_owned(),
        }
    }
}

/// How a [`Event::ClockSkew`] was detected
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkewEvidence {
    /// The response's HTTP `Date` header against the host's wall clock at receipt
    ServerDate,
    /// No `Date` header: an absolute expiry (`expires_on`, JWT `exp`) read with the host clock
    /// disagreed with the relative `expires_in`. Ahead may also mean the endpoint reported
    /// `expires_in` from issuance for a cached token; the relative lifetime was trusted.
    Lifetimes,
}

/// Where the machine stands, from [`TokenManager::status`]
///
/// [`TokenManager::status`]: crate::machine::TokenManager::status
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// No token yet
    Starting {
        /// Consecutive failures so far
        failures: u32,
    },
    /// A valid token, no failures since it arrived
    Valid {
        /// Its generation
        generation: Generation,
        /// When it expires
        expires_at: Instant,
    },
    /// A valid token, but refreshing it is failing
    Retrying {
        /// Its generation
        generation: Generation,
        /// When it expires
        expires_at: Instant,
        /// Consecutive failures
        failures: u32,
    },
    /// The last token expired and no replacement has arrived
    Expired {
        /// Generation of the expired token
        generation: Generation,
        /// Consecutive failures
        failures: u32,
    },
    /// `shutdown` was called
    Stopped,
}

/// Why the machine wants to be woken, from [`TokenManager::timeout_reason`]
///
/// [`TokenManager::timeout_reason`]: crate::machine::TokenManager::timeout_reason
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum TimerKind {
    /// The planned refresh of a valid token
    Refresh,
    /// The next try after a failure
    Retry,
    /// The in-flight request's deadline
    RequestTimeout,
    /// The current token's expiry
    Expiry,
}
