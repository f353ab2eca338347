//! What every provider handle reads, folded from the actions a driver drains
//!
//! Each runtime keeps one [`Observed`] behind its own cell (a mutex, a `watch` channel) and
//! calls [`Observed::apply`] for every action it drains, so the three runtimes agree on what a
//! handle sees: the latest credentials and when they arrived and expire, the machine's status,
//! the last fetch error since the last success, and how many fetches failed before the first
//! token (the startup policy's input).

use std::time::Instant;

use crate::error::FetchError;
use crate::event::{Action, Event, Generation, Status};
use crate::token::Credentials;

/// The state a driver publishes to its handles
#[derive(Clone, Debug)]
pub struct Observed {
    latest: Option<(Generation, Credentials)>,
    received: Option<Instant>,
    expires_at: Option<Instant>,
    status: Status,
    last_error: Option<FetchError>,
    failures_before_first_token: u32,
    stopped: bool,
}

impl Default for Observed {
    fn default() -> Self {
        Self {
            latest: None,
            received: None,
            expires_at: None,
            status: Status::Starting { failures: 0 },
            last_error: None,
            failures_before_first_token: 0,
            stopped: false,
        }
    }
}

impl Observed {
    /// Folds one drained `action`; `status` is the machine's status right after it was polled
    /// and `now` the driver's clock. Returns whether a handle could see a difference (so a
    /// runtime wakes its waiters only then).
    pub fn apply(&mut self, action: &Action, status: Status, now: Instant) -> bool {
        let status_changed = self.status != status;
        self.status = status;
        match action {
            Action::Reauthenticate {
                credentials,
                generation,
            } => {
                self.latest = Some((*generation, credentials.clone()));
                self.received = Some(now);
                self.expires_at = match status {
                    Status::Valid { expires_at, .. } | Status::Retrying { expires_at, .. } => {
                        Some(expires_at)
                    }
                    _ => None,
                };
                self.last_error = None;
                true
            }
            Action::Event(Event::FetchFailed { error, .. }) => {
                if self.latest.is_none() {
                    self.failures_before_first_token =
                        self.failures_before_first_token.saturating_add(1);
                }
                self.last_error = Some(error.clone());
                true
            }
            Action::Event(Event::Stopped) => {
                self.stopped = true;
                self.status = Status::Stopped;
                true
            }
            Action::Event(_) | Action::FetchToken { .. } | Action::Wait { .. } => status_changed,
        }
    }

    /// The latest credentials and their generation, if a token has arrived
    pub fn latest(&self) -> Option<&(Generation, Credentials)> {
        self.latest.as_ref()
    }

    /// Credentials newer than `seen` (any, for `None`)
    pub fn newer_than(&self, seen: Option<Generation>) -> Option<(Generation, Credentials)> {
        match (&self.latest, seen) {
            (Some((generation, _)), Some(seen)) if *generation <= seen => None,
            (latest, _) => latest.clone(),
        }
    }

    /// When a waiter for credentials newer than `seen` may stop waiting: `Some(Some(..))` with
    /// the newer credentials, `Some(None)` once the driver has stopped without any, `None` to
    /// keep waiting
    pub fn newer_or_stopped(
        &self,
        seen: Option<Generation>,
    ) -> Option<Option<(Generation, Credentials)>> {
        match self.newer_than(seen) {
            Some(newer) => Some(Some(newer)),
            None => self.stopped.then_some(None),
        }
    }

    /// When the latest credentials arrived (the driver's clock)
    pub fn received(&self) -> Option<Instant> {
        self.received
    }

    /// When the latest credentials expire (the driver's clock)
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// Where the machine stands
    pub fn status(&self) -> Status {
        self.status
    }

    /// The last fetch error since the last success
    pub fn last_error(&self) -> Option<&FetchError> {
        self.last_error.as_ref()
    }

    /// Fetches that failed before the first token arrived
    pub fn failures_before_first_token(&self) -> u32 {
        self.failures_before_first_token
    }

    /// Whether the driver has stopped
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }
}
