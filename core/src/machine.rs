//! `TokenManager`: the deterministic refresh state machine
//!
//! See the crate docs for the contract. In short: feed inputs (`handle_*`) and commands
//! (`refresh_now`, `shutdown`) with the current `Instant`, then drain [`TokenManager::poll_action`]
//! until it returns [`Action::Wait`].

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::backoff::Backoff;
use crate::config::{Config, MAX_TOKEN_LIFETIME};
use crate::error::{FetchError, ReauthError};
use crate::event::{Action, Event, Generation, RequestId, SkewEvidence, Status, TimerKind};
use crate::jwt;
use crate::timer::TimerTable;
use crate::token::{Credentials, TokenResponse};

/// A `Retry-After` longer than this is treated as this (a provider asking for a day is wrong).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

#[derive(Clone, Debug)]
struct InFlight {
    id: RequestId,
    sent_at: Instant,
    deadline: Instant,
}

#[derive(Clone, Debug)]
struct Current {
    credentials: Credentials,
    expires_at: Instant,
    generation: Generation,
}

/// A token that passed every check, before it is compared with the current one
struct Accepted {
    credentials: Credentials,
    expires_at: Instant,
    refresh_hint: Option<Instant>,
}

/// The token refresh state machine
///
/// It never blocks, never reads a clock and never does I/O; `now` is always the last argument.
/// Create it with [`TokenManager::new`], which plans the first fetch at once.
#[derive(Debug)]
pub struct TokenManager {
    config: Config,
    now: Instant,
    timers: TimerTable,
    actions: VecDeque<Action>,
    backoff: Backoff,
    next_request_id: u64,
    in_flight: Option<InFlight>,
    current: Option<Current>,
    last_generation: Generation,
    failures: u32,
    exhausted_reported: bool,
    expired: bool,
    last_fetch_started: Option<Instant>,
    stopped: bool,
}

fn add(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(MAX_TOKEN_LIFETIME))
        .unwrap_or(at)
}

fn clamp_seconds(seconds: i64) -> Duration {
    let max = MAX_TOKEN_LIFETIME.as_secs();
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0).min(max))
}

const NANOS_PER_SEC: i128 = 1_000_000_000;

fn nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

/// Nanoseconds since the Unix epoch, sub-second part included (negative before the epoch)
fn unix_nanos(wall: SystemTime) -> i128 {
    match wall.duration_since(UNIX_EPOCH) {
        Ok(d) => nanos(d),
        Err(e) => nanos(e.duration()).saturating_neg(),
    }
}

/// A lifetime in nanoseconds from now, clamped to 0 ..= [`MAX_TOKEN_LIFETIME`]
fn clamp_nanos(offset: i128) -> Duration {
    let max = nanos(MAX_TOKEN_LIFETIME);
    let clamped = u64::try_from(offset.clamp(0, max)).unwrap_or(u64::MAX);
    Duration::from_nanos(clamped).min(MAX_TOKEN_LIFETIME)
}

impl TokenManager {
    /// A machine that wants its first token now: the first [`poll_action`](Self::poll_action)
    /// returns [`Action::FetchToken`]
    pub fn new(config: Config, now: Instant) -> Self {
        let mut machine = Self {
            backoff: Backoff::new(config.effective_rng_seed()),
            config,
            now,
            timers: TimerTable::default(),
            actions: VecDeque::new(),
            next_request_id: 0,
            in_flight: None,
            current: None,
            last_generation: Generation(0),
            failures: 0,
            exhausted_reported: false,
            expired: false,
            last_fetch_started: None,
            stopped: false,
        };
        machine.start_fetch();
        machine
    }

    // ----- (A) getters -------------------------------------------------------------------

    /// The configuration
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The earliest deadline: call [`handle_timeout`](Self::handle_timeout) then.
    /// `None` after shutdown.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next().map(|(at, _)| at)
    }

    /// Why the machine wants to wake at [`poll_timeout`](Self::poll_timeout)
    pub fn timeout_reason(&self) -> Option<TimerKind> {
        self.timers.next().map(|(_, kind)| kind)
    }

    /// The latest credentials pushed to connections, if any (check [`status`](Self::status)
    /// to learn whether they expired)
    pub fn credentials(&self) -> Option<&Credentials> {
        self.current.as_ref().map(|c| &c.credentials)
    }

    /// When the next fetch is planned (refresh or retry), if none is in flight
    pub fn next_fetch_at(&self) -> Option<Instant> {
        match (
            self.timers.get(TimerKind::Refresh),
            self.timers.get(TimerKind::Retry),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a token request is in flight
    pub fn is_fetching(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Where the machine stands
    pub fn status(&self) -> Status {
        if self.stopped {
            return Status::Stopped;
        }
        match &self.current {
            None => Status::Starting {
                failures: self.failures,
            },
            Some(c) if self.expired => Status::Expired {
                generation: c.generation,
                failures: self.failures,
            },
            Some(c) if self.failures > 0 => Status::Retrying {
                generation: c.generation,
                expires_at: c.expires_at,
                failures: self.failures,
            },
            Some(c) => Status::Valid {
                generation: c.generation,
                expires_at: c.expires_at,
            },
        }
    }

    // ----- (B) inputs --------------------------------------------------------------------

    /// Time passed: fire every due deadline. A call with nothing due is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.update_now(now);
        if self.stopped {
            return;
        }
        if self.timers.take_due(TimerKind::RequestTimeout, self.now) {
            if let Some(flight) = self.in_flight.take() {
                let after = flight.deadline.saturating_duration_since(flight.sent_at);
                self.on_failure(FetchError::TimedOut { after });
            }
        }
        if self.timers.take_due(TimerKind::Expiry, self.now) {
            self.on_expiry();
        }
        let refresh_due = self.timers.take_due(TimerKind::Refresh, self.now);
        let retry_due = self.timers.take_due(TimerKind::Retry, self.now);
        if (refresh_due || retry_due) && self.in_flight.is_none() {
            self.start_fetch();
        }
    }

    /// The outcome of the request `id`: a token, or why there is none
    ///
    /// `wall` is the wall-clock time at receipt; it only converts absolute expiries
    /// (`expires_on`, JWT `exp`) into monotonic deadlines, and only when the response has no
    /// [`server_date`](TokenResponse::server_date): the server's clock is preferred, and a host
    /// clock off by more than [`Config::clock_skew_tolerance`] is reported as
    /// [`Event::ClockSkew`] and never shortens a relative `expires_in`. Returns `false` (and changes nothing)
    /// when `id` is not the request in flight: a late answer after a timeout, or after shutdown.
    pub fn handle_response(
        &mut self,
        id: RequestId,
        result: Result<TokenResponse, FetchError>,
        wall: SystemTime,
        now: Instant,
    ) -> bool {
        self.update_now(now);
        let Some(flight) = self.in_flight.take_if(|f| f.id == id && !self.stopped) else {
            return false;
        };
        self.timers.stop(TimerKind::RequestTimeout);
        match result.and_then(|response| self.accept(response, flight.sent_at, wall)) {
            Ok(accepted) => self.on_success(accepted, flight.sent_at),
            Err(error) => self.on_failure(error),
        }
        true
    }

    /// How connections took the credentials of `generation`
    ///
    /// A rejection of the credentials themselves (`WRONGPASS`, `NOAUTH`) leads to a fresh
    /// fetch, no sooner than the minimum refresh interval after the last one, and during a
    /// failure streak no sooner than the planned retry. Returns `false` for a generation that
    /// is no longer current.
    pub fn handle_reauth_result(
        &mut self,
        generation: Generation,
        result: Result<(), ReauthError>,
        now: Instant,
    ) -> bool {
        self.update_now(now);
        if self.stopped || self.current.as_ref().map(|c| c.generation) != Some(generation) {
            return false;
        }
        if let Err(error) = result {
            let rejected = error.is_credential_rejection();
            self.emit(Event::ReauthFailed { generation, error });
            if rejected {
                self.schedule_refresh_soon();
            }
        }
        true
    }

    // ----- (C) commands ------------------------------------------------------------------

    /// Fetch a new token as soon as allowed: now, or the minimum refresh interval after the
    /// previous fetch started. Coalesces with a fetch already in flight or planned sooner.
    /// During a failure streak the planned retry stands: the backoff and any `Retry-After`
    /// still apply.
    pub fn refresh_now(&mut self, now: Instant) {
        self.update_now(now);
        if !self.stopped {
            self.schedule_refresh_soon();
        }
    }

    /// Stops the machine: every deadline is dropped, pending actions are discarded, a final
    /// [`Event::Stopped`] is queued, and every later input is ignored
    pub fn shutdown(&mut self, now: Instant) {
        self.update_now(now);
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.timers.clear();
        self.in_flight = None;
        self.actions.clear();
        self.actions.push_back(Action::Event(Event::Stopped));
    }

    // ----- (D) output --------------------------------------------------------------------

    /// The next action; drain until [`Action::Wait`], which always comes last
    #[must_use]
    pub fn poll_action(&mut self) -> Action {
        self.actions.pop_front().unwrap_or(Action::Wait {
            until: self.poll_timeout(),
        })
    }

    // ----- internals ---------------------------------------------------------------------

    fn update_now(&mut self, now: Instant) {
        // Time never goes backwards inside the machine.
        self.now = self.now.max(now);
    }

    fn emit(&mut self, event: Event) {
        self.actions.push_back(Action::Event(event));
    }

    fn start_fetch(&mut self) {
        self.timers.stop(TimerKind::Refresh);
        self.timers.stop(TimerKind::Retry);
        self.next_request_id += 1;
        let id = RequestId(self.next_request_id);
        let mut deadline = add(self.now, self.config.request_timeout());
        if let Some(current) = &self.current {
            // A request that outlives the token it replaces is useless; end it at expiry.
            if current.expires_at > self.now {
                deadline = deadline.min(current.expires_at);
            }
        }
        self.in_flight = Some(InFlight {
            id,
            sent_at: self.now,
            deadline,
        });
        self.last_fetch_started = Some(self.now);
        self.timers.set(TimerKind::RequestTimeout, deadline);
        self.actions.push_back(Action::FetchToken {
            id,
            attempt: self.failures.saturating_add(1),
            deadline,
        });
    }

    fn schedule_refresh_soon(&mut self) {
        // A retry is planned only during a failure streak: its backoff (or the provider's
        // `Retry-After`) already decided when the next request may go out, and a refresh request
        // (a `WRONGPASS`, `refresh_now`) must not move it earlier, or every refused reconnect
        // during an outage would become one more request to a provider that asked us to wait.
        if self.in_flight.is_some() || self.timers.get(TimerKind::Retry).is_some() {
            return;
        }
        let earliest = self
            .last_fetch_started
            .map_or(self.now, |t| add(t, self.config.refresh().min_interval()));
        if earliest <= self.now {
            self.start_fetch();
            return;
        }
        let planned = self.next_fetch_at().map_or(earliest, |at| at.min(earliest));
        self.timers.set(TimerKind::Refresh, planned);
    }

    fn accept(
        &mut self,
        response: TokenResponse,
        sent_at: Instant,
        wall: SystemTime,
    ) -> Result<Accepted, FetchError> {
        let claims = jwt::decode_claims(response.access_token.expose_secret())?;
        let username = match self.config.username_override() {
            Some(name) => name.to_owned(),
            None => claims.require_oid()?.to_owned(),
        };
        // Every lifetime is a signed offset in nanoseconds from now (receipt); the earliest one
        // that can be trusted wins, because the server enforces it.
        let latency = nanos(self.now.saturating_duration_since(sent_at));
        let tolerance = nanos(self.config.clock_skew_tolerance());
        let max = nanos(MAX_TOKEN_LIFETIME);
        // A relative lifetime counts from when the request was sent, and one second less than
        // it says: the server computes `exp` as floor(issue time) + lifetime, so "lifetime
        // seconds after the send" can end up to 1 s after `exp` when the request went out in
        // the same second as the issue.
        let relative = response
            .expires_in
            .map(|s| nanos(clamp_seconds(s.saturating_sub(1))).saturating_sub(latency));
        let host_now = unix_nanos(wall);
        // The server's clock, unless its Date predates the token's own issue time by more than
        // the tolerance (then it cannot be the issuer's clock).
        let server_date = response.server_date.map(unix_nanos).filter(|date| {
            claims.iat.is_none_or(|iat| {
                date.saturating_add(tolerance) >= i128::from(iat).saturating_mul(NANOS_PER_SEC)
            })
        });
        // Absolute values need the server's clock at receipt. The Date header was stamped (in
        // whole seconds, rounded down) somewhere between the send and now, so the server's
        // clock now reads less than Date + 1 s + latency: that bound never overestimates a
        // lifetime. Without a Date, the host's wall clock, sub-second part included.
        let reference = match server_date {
            Some(date) => date.saturating_add(NANOS_PER_SEC).saturating_add(latency),
            None => host_now,
        };
        // Host clock minus server clock, when it exceeds the tolerance (positive: ahead).
        let mut skew = server_date
            .map(|date| (host_now.saturating_sub(date), SkewEvidence::ServerDate))
            .filter(|(by, _)| by.abs() > tolerance);
        let mut remaining = relative;
        for at in [response.expires_on, claims.exp].into_iter().flatten() {
            let absolute = i128::from(at)
                .saturating_mul(NANOS_PER_SEC)
                .saturating_sub(reference)
                .clamp(-max, max);
            if let (Some(relative), None) = (relative, server_date) {
                // Read with the host clock, an absolute value may shorten the relative lifetime
                // only while they agree within the tolerance; falling further short means the
                // host clock is ahead (or `expires_in` is stale, the lesser risk: Redis rejects
                // an expired token and that triggers a refresh), so the relative one is kept.
                let shortfall = relative.saturating_sub(absolute);
                if shortfall.abs() > tolerance
                    && skew.is_none_or(|(by, _)| by.abs() < shortfall.abs())
                {
                    skew = Some((shortfall, SkewEvidence::Lifetimes));
                }
                if shortfall > tolerance {
                    continue;
                }
            }
            remaining = Some(remaining.map_or(absolute, |r| r.min(absolute)));
        }
        if let Some((by, evidence)) = skew {
            self.emit(Event::ClockSkew {
                host_ahead: by > 0,
                by: clamp_nanos(by.saturating_abs()),
                evidence,
            });
        }
        // Without a relative lifetime or a Date, the host clock is all there is: a host clock
        // ahead by more than the token's lifetime makes it look expired (documented limit).
        let remaining = remaining.ok_or(FetchError::NoLifetime)?;
        if remaining <= 0 {
            return Err(FetchError::AlreadyExpired);
        }
        let expires_at = add(self.now, clamp_nanos(remaining));
        let refresh_hint = response.refresh_in.map(|s| add(sent_at, clamp_seconds(s)));
        Ok(Accepted {
            credentials: Credentials::new(username, response.access_token),
            expires_at,
            refresh_hint,
        })
    }

    fn refresh_point(
        &mut self,
        expires_at: Instant,
        hint: Option<Instant>,
        sent_at: Instant,
    ) -> Instant {
        let policy = self.config.refresh();
        let ttl = expires_at.saturating_duration_since(self.now);
        let by_ratio = ttl.mul_f64(policy.ratio());
        let by_bound = ttl.saturating_sub(policy.lower_bound());
        let mut delay = by_ratio.min(by_bound);
        let jitter = policy.jitter();
        let min_interval = policy.min_interval();
        if jitter > 0.0 {
            let unit = self.backoff.unit();
            delay = delay.saturating_sub(delay.mul_f64(jitter * unit));
        }
        let mut at = add(self.now, delay);
        if let Some(hint) = hint {
            at = at.min(hint.max(self.now));
        }
        // The hot-loop guard wins over everything: tiny or already-short tokens are refreshed
        // at most once per minimum interval.
        at.max(add(sent_at, min_interval))
    }

    fn on_success(&mut self, accepted: Accepted, sent_at: Instant) {
        self.failures = 0;
        self.exhausted_reported = false;
        self.timers.stop(TimerKind::Retry);
        let newer = match &self.current {
            None => true,
            Some(current) => {
                accepted.expires_at > current.expires_at
                    && accepted.credentials.password() != current.credentials.password()
            }
        };
        if newer {
            let refresh_at =
                self.refresh_point(accepted.expires_at, accepted.refresh_hint, sent_at);
            self.last_generation = Generation(self.last_generation.0 + 1);
            let generation = self.last_generation;
            self.current = Some(Current {
                credentials: accepted.credentials.clone(),
                expires_at: accepted.expires_at,
                generation,
            });
            self.expired = false;
            self.timers.set(TimerKind::Expiry, accepted.expires_at);
            self.timers.set(TimerKind::Refresh, refresh_at);
            self.actions.push_back(Action::Reauthenticate {
                credentials: accepted.credentials,
                generation,
            });
            self.emit(Event::Refreshed {
                generation,
                expires_at: accepted.expires_at,
                refresh_at,
            });
        } else if let Some(expires_at) = self.current.as_ref().map(|c| c.expires_at) {
            // Keep the token connections already hold and plan from its expiry.
            let refresh_at = self.refresh_point(expires_at, None, sent_at);
            self.timers.set(TimerKind::Refresh, refresh_at);
            self.emit(Event::TokenNotNewer {
                expires_at,
                refresh_at,
            });
        }
    }

    fn on_failure(&mut self, error: FetchError) {
        self.failures = self.failures.saturating_add(1);
        let retry = self.config.retry().clone();
        let retryable = retry.is_retryable(&error);
        let mut delay = if retryable && self.failures < retry.max_attempts() {
            self.backoff.delay(&retry, self.failures)
        } else {
            // Past the budget, or an error a quick retry will not fix: the slow lane.
            self.backoff.delay(&retry, u32::MAX)
        };
        if let Some(after) = error.retry_after() {
            delay = delay.max(after.min(MAX_RETRY_AFTER));
        }
        let mut next = add(self.now, delay);
        if let Some(current) = self.current.as_ref().filter(|c| c.expires_at > self.now) {
            // Never let a backoff or a Retry-After carry the next try past the current token's
            // expiry while a try before it is still possible.
            if next > current.expires_at {
                let latest_start = current
                    .expires_at
                    .checked_sub(self.config.request_timeout())
                    .unwrap_or(self.now);
                next = if latest_start > self.now {
                    latest_start
                } else {
                    // Already inside the last request timeout: keep trying, but never spin.
                    add(self.now, retry.initial_delay().min(delay))
                };
            }
        }
        self.timers.set(TimerKind::Retry, next);
        self.emit(Event::FetchFailed {
            attempt: self.failures,
            error: error.clone(),
            retryable,
            next_attempt_at: next,
        });
        if self.failures >= retry.max_attempts() && !self.exhausted_reported {
            self.exhausted_reported = true;
            self.emit(Event::RetriesExhausted {
                attempts: self.failures,
                last_error: error,
            });
        }
    }

    fn on_expiry(&mut self) {
        if let Some(current) = &self.current {
            if !self.expired {
                self.expired = true;
                let generation = current.generation;
                self.emit(Event::Expired { generation });
            }
        }
    }
}
