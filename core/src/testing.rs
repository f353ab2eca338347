//! A simulated clock and a scripted identity provider for driving a [`TokenManager`]
//!
//! Enabled by the `testing` feature. The [`Harness`] owns `now`, answers each
//! [`Action::FetchToken`] through a script after a simulated latency, answers re-authentication
//! through another, and jumps straight to the machine's next deadline, so hours of token
//! lifetimes run in microseconds and every run is exactly reproducible.

#![allow(clippy::unwrap_used, missing_docs)]

pub mod ops;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::config::Config;
use crate::error::{FetchError, ReauthError};
use crate::event::{Action, Event, Generation, RequestId};
use crate::machine::TokenManager;
use crate::token::{AccessToken, TokenResponse};

/// The wall-clock time the harness starts at (2026-01-01T00:00:00Z)
pub const WALL_START: u64 = 1_767_225_600;

/// A JWT whose payload holds `claims_json`, with a dummy header and signature
pub fn unsigned_token(claims_json: &str) -> AccessToken {
    AccessToken::new(format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(claims_json)
    ))
}

/// How the scripted provider answers one fetch
#[derive(Clone, Debug)]
pub enum Reply {
    /// A token with `oid` "test-oid", valid for `ttl` seconds (as `expires_in` and `exp`)
    Token { ttl: i64, latency: Duration },
    /// Exactly this response
    Response {
        response: TokenResponse,
        latency: Duration,
    },
    /// This error
    Fail {
        error: FetchError,
        latency: Duration,
    },
    /// No answer at all: the machine must time the request out
    Hang,
}

impl Reply {
    /// A token valid for `ttl` seconds, answered after 50 ms
    pub fn token(ttl: i64) -> Self {
        Reply::Token {
            ttl,
            latency: Duration::from_millis(50),
        }
    }

    /// An error answered after 50 ms
    pub fn fail(error: impl Into<FetchError>) -> Self {
        Reply::Fail {
            error: error.into(),
            latency: Duration::from_millis(50),
        }
    }
}

/// What the script sees of a fetch (not [`crate::identity::FetchContext`], which is what a real
/// fetch needs from the world)
#[derive(Clone, Copy, Debug)]
pub struct ScriptedFetch {
    /// 0-based index of this fetch in the run
    pub index: usize,
    /// The machine's attempt number
    pub attempt: u32,
    /// Simulated time since the start
    pub elapsed: Duration,
}

type Script = Box<dyn FnMut(ScriptedFetch) -> Reply>;
type ReauthScript = Box<dyn FnMut(Generation, Duration) -> Result<(), ReauthError>>;

struct Pending {
    id: RequestId,
    due: Instant,
    result: Result<TokenResponse, FetchError>,
}

/// Drives a [`TokenManager`] with a simulated clock
pub struct Harness {
    pub machine: TokenManager,
    pub start: Instant,
    pub now: Instant,
    /// Added to the simulated wall clock, to model wall-clock jumps
    pub wall_skew: i64,
    script: Script,
    reauth: ReauthScript,
    pending: Option<Pending>,
    tokens_minted: u64,
    /// Every action except `Wait`, with the simulated time it was emitted
    pub trace: Vec<(Duration, Action)>,
    /// Start times of every fetch
    pub fetches: Vec<Duration>,
    /// Times and generations of every `Reauthenticate`
    pub reauths: Vec<(Duration, Generation)>,
}

impl Harness {
    /// A machine built from `config` at `start` (any instant: only differences matter), answering
    /// fetches through `script`; the caller supplies the instant so the core never reads a clock
    pub fn new(
        start: Instant,
        config: Config,
        script: impl FnMut(ScriptedFetch) -> Reply + 'static,
    ) -> Self {
        let mut harness = Self {
            machine: TokenManager::new(config, start),
            start,
            now: start,
            wall_skew: 0,
            script: Box::new(script),
            reauth: Box::new(|_, _| Ok(())),
            pending: None,
            tokens_minted: 0,
            trace: Vec::new(),
            fetches: Vec::new(),
            reauths: Vec::new(),
        };
        harness.drain();
        harness
    }

    /// Answers re-authentication through `script` instead of always succeeding
    pub fn with_reauth(
        mut self,
        script: impl FnMut(Generation, Duration) -> Result<(), ReauthError> + 'static,
    ) -> Self {
        self.reauth = Box::new(script);
        self
    }

    /// Simulated time since the start
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The simulated wall clock
    pub fn wall(&self) -> SystemTime {
        let secs = WALL_START as i64 + self.elapsed().as_secs() as i64 + self.wall_skew;
        UNIX_EPOCH
            + Duration::from_secs(secs.max(0) as u64)
            + Duration::from_nanos(self.elapsed().subsec_nanos().into())
    }

    fn wall_secs(&self) -> i64 {
        self.wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    /// Mints a unique token valid for `ttl` seconds from the simulated wall clock
    pub fn mint(&mut self, ttl: i64) -> TokenResponse {
        self.tokens_minted += 1;
        let exp = self.wall_secs().saturating_add(ttl);
        let token = unsigned_token(&format!(
            r#"{{"oid":"test-oid","tid":"test-tenant","aud":"https://redis.azure.com","exp":{exp},"jti":"{}"}}"#,
            self.tokens_minted
        ));
        TokenResponse::new(token).with_expires_in(ttl)
    }

    /// Drains every action, recording them; answers fetches and re-auths by script
    pub fn drain(&mut self) {
        loop {
            match self.machine.poll_action() {
                Action::Wait { .. } => break,
                action => {
                    let at = self.elapsed();
                    self.trace.push((at, action.clone()));
                    match action {
                        Action::FetchToken { id, attempt, .. } => {
                            self.fetches.push(at);
                            let ctx = ScriptedFetch {
                                index: self.fetches.len() - 1,
                                attempt,
                                elapsed: at,
                            };
                            let reply = (self.script)(ctx);
                            self.pending = match reply {
                                Reply::Hang => None,
                                Reply::Token { ttl, latency } => Some(Pending {
                                    id,
                                    due: self.now + latency,
                                    result: Ok(self.mint(ttl)),
                                }),
                                Reply::Response { response, latency } => Some(Pending {
                                    id,
                                    due: self.now + latency,
                                    result: Ok(response),
                                }),
                                Reply::Fail { error, latency } => Some(Pending {
                                    id,
                                    due: self.now + latency,
                                    result: Err(error),
                                }),
                            };
                        }
                        Action::Reauthenticate { generation, .. } => {
                            self.reauths.push((at, generation));
                            let result = (self.reauth)(generation, at);
                            self.machine
                                .handle_reauth_result(generation, result, self.now);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Advances to the next event (a reply or a deadline) if it is at or before `limit`;
    /// returns false when nothing happens before `limit` (time is then set to `limit`)
    pub fn step_until(&mut self, limit: Instant) -> bool {
        let reply_due = self.pending.as_ref().map(|p| p.due);
        let next = match (reply_due, self.machine.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match next {
            Some(at) if at <= limit => {
                self.now = self.now.max(at);
                if reply_due.is_some_and(|due| due <= self.now) {
                    let pending = self.pending.take().unwrap();
                    let wall = self.wall();
                    self.machine
                        .handle_response(pending.id, pending.result, wall, self.now);
                } else {
                    self.machine.handle_timeout(self.now);
                }
                self.drain();
                true
            }
            _ => {
                self.now = self.now.max(limit);
                false
            }
        }
    }

    /// Runs the simulation for `d` of simulated time (bounded to 1 000 000 steps)
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        for _ in 0..1_000_000 {
            if !self.step_until(limit) {
                return;
            }
        }
        panic!("more than 1 000 000 steps in {d:?}: the machine is hot-looping");
    }

    /// Every event, with the simulated time it was emitted
    pub fn events(&self) -> Vec<(Duration, Event)> {
        self.trace
            .iter()
            .filter_map(|(at, a)| match a {
                Action::Event(e) => Some((*at, e.clone())),
                _ => None,
            })
            .collect()
    }

    /// The trace as text with every instant written as time since the start, so two runs can
    /// be compared
    pub fn normalized_trace(&self) -> String {
        let rel = |at: Instant| at.saturating_duration_since(self.start);
        let mut out = String::new();
        for (t, action) in &self.trace {
            let line = match action {
                Action::FetchToken {
                    id,
                    attempt,
                    deadline,
                } => {
                    format!(
                        "fetch {} attempt {attempt} deadline {:?}",
                        id.0,
                        rel(*deadline)
                    )
                }
                Action::Reauthenticate {
                    generation,
                    credentials,
                } => {
                    format!("reauth {} as {}", generation.0, credentials.username())
                }
                Action::Event(Event::Refreshed {
                    generation,
                    expires_at,
                    refresh_at,
                }) => format!(
                    "refreshed {} expires {:?} refresh {:?}",
                    generation.0,
                    rel(*expires_at),
                    rel(*refresh_at)
                ),
                Action::Event(Event::TokenNotNewer {
                    expires_at,
                    refresh_at,
                }) => {
                    format!(
                        "not newer expires {:?} refresh {:?}",
                        rel(*expires_at),
                        rel(*refresh_at)
                    )
                }
                Action::Event(Event::FetchFailed {
                    attempt,
                    error,
                    retryable,
                    next_attempt_at,
                }) => format!(
                    "failed {attempt} {error} retryable {retryable} next {:?}",
                    rel(*next_attempt_at)
                ),
                other => format!("{other:?}"),
            };
            out.push_str(&format!("{t:?} {line}\n"));
        }
        out
    }

    /// Number of events matching `pred`
    pub fn count_events(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.events().iter().filter(|(_, e)| pred(e)).count()
    }

    /// Drops the recorded trace (keeps the machine), to assert on what happens next
    pub fn clear_trace(&mut self) {
        self.trace.clear();
        self.fetches.clear();
        self.reauths.clear();
    }

    /// Replaces the fetch script
    pub fn set_script(&mut self, script: impl FnMut(ScriptedFetch) -> Reply + 'static) {
        self.script = Box::new(script);
    }

    /// Simulated time when the next fetch is planned, if any
    pub fn next_fetch_in(&self) -> Option<Duration> {
        self.machine
            .next_fetch_at()
            .map(|at| at.saturating_duration_since(self.start))
    }
}

/// A queue-backed script: answers fetches in order, then repeats the last answer
pub fn sequence(replies: Vec<Reply>) -> impl FnMut(ScriptedFetch) -> Reply {
    let mut queue: VecDeque<Reply> = replies.into();
    let mut last = Reply::Hang;
    move |_| {
        if let Some(next) = queue.pop_front() {
            last = next;
        }
        last.clone()
    }
}
