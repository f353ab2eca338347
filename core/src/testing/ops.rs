//! Random input sequences for the machine, and the invariants every sequence must keep
//!
//! Shared by the proptest suite and the `machine_ops` fuzz target: an [`Op`] is one input a
//! driver could feed; [`OpDriver::apply`] feeds it, drains the actions and panics with a
//! description when an invariant breaks.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, RefreshPolicy, RetryPolicy};
use crate::error::{FetchError, ReauthError, ReauthErrorKind, ResponseError, TransportError};
use crate::event::{Action, Event, Generation, RequestId};
use crate::machine::TokenManager;
use crate::testing::{unsigned_token, WALL_START};
use crate::token::TokenResponse;

/// How the provider answers the fetch in flight
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Answer {
    /// A fresh token valid for this many seconds (may be zero, negative or absurd)
    Token(i64),
    /// A token valid for this many seconds carrying only a JWT `exp` and a `refresh_in`
    TokenWithHint(i64, i64),
    /// The same token as last time
    SameToken,
    /// A token without an `oid`
    NoOid,
    /// Not a JWT at all
    Garbage,
    /// HTTP error, retryable or not, maybe with `Retry-After` seconds
    HttpError(bool, Option<u16>),
    /// The network failed
    Transport,
}

/// One input a driver could feed the machine
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// Let this many milliseconds pass, then `handle_timeout`
    Advance(u32),
    /// Jump to the machine's next deadline and `handle_timeout`
    AdvanceToDeadline,
    /// Answer the fetch in flight (ignored when none)
    Respond(Answer),
    /// Answer with an id that is not in flight
    RespondStale(u8),
    /// `refresh_now`
    RefreshNow,
    /// Report the latest generation's re-auth: ok, WRONGPASS or a connection error
    Reauth(u8),
    /// Report a re-auth for a generation that is not current
    ReauthStale(u8),
    /// Jump the wall clock by this many seconds
    WallJump(i32),
    /// Feed an instant this many milliseconds before the last one
    TimeBackwards(u16),
    /// `shutdown`
    Shutdown,
}

/// Feeds [`Op`]s into a machine, checking the invariants after each
pub struct OpDriver {
    /// The machine under test
    pub machine: TokenManager,
    start: Instant,
    now: Instant,
    wall_skew: i64,
    outstanding: Option<(RequestId, Instant)>,
    good_tokens: BTreeSet<String>,
    last_token: Option<TokenResponse>,
    last_generation: Option<Generation>,
    failures_since_success: u32,
    exhausted_in_streak: bool,
    stopped: bool,
    minted: u64,
    max_attempts: u32,
    /// Every action, as text with instants relative to the start
    pub trace: Vec<String>,
}

impl OpDriver {
    /// A driver over a machine built from `config` at `start` (any instant; the caller reads
    /// the clock, never the core)
    pub fn new(start: Instant, config: Config) -> Self {
        let max_attempts = config.retry().max_attempts();
        let mut driver = Self {
            machine: TokenManager::new(config, start),
            start,
            now: start,
            wall_skew: 0,
            outstanding: None,
            good_tokens: BTreeSet::new(),
            last_token: None,
            last_generation: None,
            failures_since_success: 0,
            exhausted_in_streak: false,
            stopped: false,
            minted: 0,
            max_attempts,
            trace: Vec::new(),
        };
        driver.drain();
        driver
    }

    /// A small configuration derived from fuzz bytes, so short runs cross many refreshes
    pub fn config_from(
        ratio_pct: u8,
        lower_bound_s: u16,
        min_interval_ms: u16,
        seed: u64,
    ) -> Config {
        let ratio = f64::from(ratio_pct % 100 + 1) / 100.0;
        Config::builder()
            .refresh(
                RefreshPolicy::builder()
                    .ratio(ratio)
                    .lower_bound(Duration::from_secs(u64::from(lower_bound_s % 600)))
                    .min_interval(Duration::from_millis(
                        u64::from(min_interval_ms % 30_000) + 1,
                    ))
                    .jitter(0.1)
                    .build()
                    .expect("valid by construction"),
            )
            .retry(
                RetryPolicy::builder()
                    .max_attempts(3)
                    .build()
                    .expect("valid by construction"),
            )
            .rng_seed(seed)
            .build()
            .expect("valid by construction")
    }

    fn wall(&self) -> SystemTime {
        let secs = (WALL_START as i64)
            .saturating_add((self.now - self.start).as_secs() as i64)
            .saturating_add(self.wall_skew);
        UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
    }

    fn mint(&mut self, ttl: i64, oid: bool, hint: Option<i64>) -> TokenResponse {
        self.minted += 1;
        let wall = self
            .wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let exp = wall.saturating_add(ttl);
        let oid = if oid { r#""oid":"fuzz-oid","# } else { "" };
        let token = unsigned_token(&format!(r#"{{{oid}"exp":{exp},"jti":{}}}"#, self.minted));
        match hint {
            Some(hint) => TokenResponse::new(token).with_refresh_in(hint),
            None => TokenResponse::new(token).with_expires_in(ttl),
        }
    }

    fn answer(&mut self, answer: Answer) -> Result<TokenResponse, FetchError> {
        match answer {
            Answer::Token(ttl) => Ok(self.mint(ttl, true, None)),
            Answer::TokenWithHint(ttl, hint) => Ok(self.mint(ttl, true, Some(hint))),
            Answer::SameToken => match self.last_token.clone() {
                Some(token) => Ok(token),
                None => Ok(self.mint(3600, true, None)),
            },
            Answer::NoOid => Ok(self.mint(3600, false, None)),
            Answer::Garbage => Ok(
                TokenResponse::new(crate::token::AccessToken::new("not-a-jwt"))
                    .with_expires_in(3600),
            ),
            Answer::HttpError(retryable, retry_after) => {
                let mut e = ResponseError::new("scripted", retryable).with_status(503);
                if let Some(s) = retry_after {
                    e = e.with_retry_after(Duration::from_secs(u64::from(s)));
                }
                Err(e.into())
            }
            Answer::Transport => Err(TransportError::new("scripted").into()),
        }
    }

    /// Feeds one op, drains, and checks every invariant
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                self.machine.handle_timeout(self.now);
            }
            Op::AdvanceToDeadline => {
                if let Some(at) = self.machine.poll_timeout() {
                    self.now = self.now.max(at);
                }
                self.machine.handle_timeout(self.now);
            }
            Op::Respond(answer) => {
                if let Some((id, _)) = self.outstanding {
                    let result = self.answer(answer);
                    if let Ok(token) = &result {
                        self.last_token = Some(token.clone());
                        if let Ok(claims) =
                            crate::jwt::decode_claims(token.access_token.expose_secret())
                        {
                            if claims.oid.is_some() {
                                self.good_tokens
                                    .insert(token.access_token.expose_secret().to_owned());
                            }
                        }
                    }
                    let wall = self.wall();
                    let accepted = self.machine.handle_response(id, result, wall, self.now);
                    assert!(accepted, "the response to the fetch in flight was refused");
                    self.outstanding = None;
                }
            }
            Op::RespondStale(n) => {
                let stale = RequestId(u64::from(n) + 1_000_000);
                let wall = self.wall();
                let token = self.mint(3600, true, None);
                assert!(
                    !self
                        .machine
                        .handle_response(stale, Ok(token), wall, self.now),
                    "stale id accepted"
                );
            }
            Op::RefreshNow => self.machine.refresh_now(self.now),
            Op::Reauth(kind) => {
                if let Some(generation) = self.last_generation {
                    let result = match kind % 3 {
                        0 => Ok(()),
                        1 => Err(ReauthError::new(ReauthErrorKind::WrongPass, "WRONGPASS")),
                        _ => Err(ReauthError::new(ReauthErrorKind::Connection, "reset")),
                    };
                    self.machine
                        .handle_reauth_result(generation, result, self.now);
                }
            }
            Op::ReauthStale(n) => {
                let stale = Generation(u64::from(n) + 1_000_000);
                assert!(
                    !self.machine.handle_reauth_result(stale, Ok(()), self.now),
                    "stale generation accepted"
                );
            }
            Op::WallJump(secs) => self.wall_skew = self.wall_skew.saturating_add(i64::from(secs)),
            Op::TimeBackwards(ms) => {
                let earlier = self
                    .now
                    .checked_sub(Duration::from_millis(u64::from(ms)))
                    .unwrap_or(self.start);
                let before = self.machine.poll_timeout();
                self.machine.handle_timeout(earlier);
                // Only a deadline still in the future must survive an instant from the past.
                if before.is_some_and(|at| at > self.now) {
                    assert_eq!(
                        self.machine.poll_timeout(),
                        before,
                        "an instant in the past fired a deadline"
                    );
                }
            }
            Op::Shutdown => {
                self.machine.shutdown(self.now);
                self.stopped = true;
                self.outstanding = None;
            }
        }
        self.drain();
    }

    fn drain(&mut self) {
        loop {
            let action = self.machine.poll_action();
            self.trace.push(self.describe(&action));
            match action {
                Action::Wait { until } => {
                    if let Some(until) = until {
                        assert!(
                            until >= self.now,
                            "deadline in the past: {:?} before now",
                            self.now - until
                        );
                        assert!(!self.stopped, "a deadline after shutdown");
                    }
                    break;
                }
                Action::FetchToken {
                    id,
                    attempt,
                    deadline,
                } => {
                    assert!(!self.stopped, "fetch after shutdown");
                    assert!(self.outstanding.is_none(), "two fetches in flight");
                    assert!(deadline > self.now, "fetch deadline not in the future");
                    assert_eq!(
                        attempt,
                        self.failures_since_success + 1,
                        "attempt numbering"
                    );
                    self.outstanding = Some((id, deadline));
                }
                Action::Reauthenticate {
                    credentials,
                    generation,
                } => {
                    assert!(
                        self.good_tokens
                            .contains(credentials.password().expose_secret()),
                        "credentials that no good response carried"
                    );
                    if let Some(last) = self.last_generation {
                        assert!(generation > last, "generations must increase");
                    }
                    self.last_generation = Some(generation);
                }
                Action::Event(Event::FetchFailed { attempt, error, .. }) => {
                    self.failures_since_success += 1;
                    assert_eq!(attempt, self.failures_since_success, "failure count");
                    if matches!(error, FetchError::TimedOut { .. }) {
                        self.outstanding = None;
                    }
                }
                Action::Event(Event::RetriesExhausted { attempts, .. }) => {
                    assert!(
                        !self.exhausted_in_streak,
                        "RetriesExhausted twice in one failure streak"
                    );
                    assert_eq!(attempts, self.max_attempts);
                    self.exhausted_in_streak = true;
                }
                Action::Event(Event::Refreshed { .. } | Event::TokenNotNewer { .. }) => {
                    self.failures_since_success = 0;
                    self.exhausted_in_streak = false;
                }
                Action::Event(_) => {}
            }
        }
    }

    fn describe(&self, action: &Action) -> String {
        let rel = |at: Instant| at.saturating_duration_since(self.start);
        match action {
            Action::Wait { until } => format!("wait {:?}", until.map(rel)),
            Action::FetchToken {
                id,
                attempt,
                deadline,
            } => {
                format!("fetch {} {attempt} {:?}", id.0, rel(*deadline))
            }
            Action::Reauthenticate { generation, .. } => format!("reauth {}", generation.0),
            Action::Event(Event::Refreshed {
                generation,
                expires_at,
                refresh_at,
            }) => {
                format!(
                    "refreshed {} {:?} {:?}",
                    generation.0,
                    rel(*expires_at),
                    rel(*refresh_at)
                )
            }
            Action::Event(Event::FetchFailed {
                attempt,
                next_attempt_at,
                ..
            }) => {
                format!("failed {attempt} {:?}", rel(*next_attempt_at))
            }
            Action::Event(e) => format!("{:?}", std::mem::discriminant(e)),
        }
    }
}
