//! What handles ask of a driver, and how a full command queue loses nothing that matters
//!
//! Every runtime hands commands to its driver over a bounded queue and never waits on it. A
//! refresh request and a shutdown are flags ([`Signals`]) rather than queue entries: any
//! number of them coalesce into one, and a full queue cannot lose them, because the driver
//! reads the flags after every wake-up ([`Signals::apply`]). A re-authentication report is
//! queued when there is room and otherwise dropped and counted; a dropped *rejection* still
//! sets the refresh flag, so the fresh token it asks for is not lost.
//!
//! A runtime's whole delivery is:
//!
//! ```
//! use redis_entraid_core::command::{Command, Signals};
//! # struct Queue;
//! # impl Queue { fn try_send(&self, c: Command) -> Result<(), Command> { Err(c) } }
//! fn deliver(signals: &Signals, queue: &Queue, command: Command) {
//!     if let Some(command) = signals.admit(command) {
//!         // `Err` here means "full" (a closed queue means the driver is gone: nothing to do).
//!         if let Err(command) = queue.try_send(command) {
//!             signals.overflowed(&command);
//!         }
//!     }
//! }
//! # let signals = Signals::default();
//! # deliver(&signals, &Queue, Command::RefreshNow);
//! # assert!(signals.refresh_requested());
//! ```
//!
//! A driver whose fetches answer on the same queue (a thread or a blocking pool sending a
//! [`DriverInput::Fetched`] back) uses [`Signals::deliver`] and feeds whatever woke it to
//! [`TokenManager::wake`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use crate::error::{FetchError, ReauthError};
use crate::event::{Generation, RequestId};
use crate::machine::TokenManager;
use crate::token::TokenResponse;

/// What reaches a driver whose fetches run off its own loop: a handle's command, or a fetch's
/// answer
#[derive(Debug)]
pub enum DriverInput {
    /// From a handle
    Command(Command),
    /// A fetch's answer, for request `id`, received at `wall`
    Fetched {
        /// The request it answers (a stale one is ignored by the machine)
        id: RequestId,
        /// The token, or why there is none
        result: Result<TokenResponse, FetchError>,
        /// The wall clock when the answer came
        wall: SystemTime,
    },
}

/// What woke a driver
#[derive(Debug)]
pub enum Wake {
    /// An input from its queue
    Input(DriverInput),
    /// The deadline of its last [`Action::Wait`](crate::event::Action::Wait)
    Timer,
    /// Its queue closed: every handle is gone
    Closed,
}

/// How many commands may wait for a driver; beyond that, [`Signals`] coalesces or drops
pub const COMMAND_CAPACITY: usize = 64;

/// A request from a handle to its driver
#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    /// Fetch a new token as soon as the minimum refresh interval allows
    RefreshNow,
    /// How a connection took the credentials of `generation`
    Reauth {
        /// The generation the connection was given
        generation: Generation,
        /// `AUTH`'s outcome
        result: Result<(), ReauthError>,
    },
    /// Stop the driver
    Shutdown,
}

/// The coalescing half of a driver's command path, shared by the handles and the driver
#[derive(Debug, Default)]
pub struct Signals {
    refresh: AtomicBool,
    shutdown: AtomicBool,
    dropped_reports: AtomicU64,
}

impl Signals {
    /// Records `command`'s flag, if it has one, and returns what still has to be queued: a
    /// wake-up for the first refresh request since the driver last looked, every shutdown's
    /// wake-up, every re-authentication report
    pub fn admit(&self, command: Command) -> Option<Command> {
        match command {
            Command::RefreshNow => {
                (!self.refresh.swap(true, Ordering::SeqCst)).then_some(Command::RefreshNow)
            }
            Command::Shutdown => {
                self.shutdown.store(true, Ordering::SeqCst);
                Some(Command::Shutdown)
            }
            report @ Command::Reauth { .. } => Some(report),
        }
    }

    /// `command` did not fit in the full queue: a wake-up is not needed (the driver wakes for
    /// what is queued and reads the flags then); a report is counted as dropped, and a dropped
    /// rejection still asks for a refresh
    pub fn overflowed(&self, command: &Command) {
        if let Command::Reauth { result, .. } = command {
            self.dropped_reports.fetch_add(1, Ordering::Relaxed);
            if matches!(result, Err(e) if e.is_credential_rejection()) {
                self.refresh.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Hands `command` to a driver's queue without waiting: `try_send` sends the input and
    /// gives it back only when the queue is full (a closed queue means the driver is gone:
    /// nothing to do)
    pub fn deliver(
        &self,
        command: Command,
        try_send: impl FnOnce(DriverInput) -> Option<DriverInput>,
    ) {
        if let Some(command) = self.admit(command) {
            if let Some(DriverInput::Command(command)) = try_send(DriverInput::Command(command)) {
                self.overflowed(&command);
            }
        }
    }

    /// Hands the flags set since the last call to `machine` (the driver calls this after every
    /// wake-up, before the input that woke it)
    pub fn apply(&self, machine: &mut TokenManager, now: Instant) {
        if self.shutdown.load(Ordering::SeqCst) {
            machine.shutdown(now);
        }
        if self.refresh.swap(false, Ordering::SeqCst) {
            machine.refresh_now(now);
        }
    }

    /// Whether a refresh request waits for the driver
    pub fn refresh_requested(&self) -> bool {
        self.refresh.load(Ordering::SeqCst)
    }

    /// Whether a shutdown was requested
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Re-authentication reports dropped because the queue was full
    pub fn dropped_reports(&self) -> u64 {
        self.dropped_reports.load(Ordering::Relaxed)
    }
}

impl TokenManager {
    /// Feeds what woke a driver, after the flags of `signals` (a request whose wake-up did
    /// not fit in the queue is seen here)
    pub fn wake(&mut self, signals: &Signals, woke: Wake, now: Instant) {
        signals.apply(self, now);
        match woke {
            Wake::Input(DriverInput::Command(command)) => self.handle_command(command, now),
            Wake::Input(DriverInput::Fetched { id, result, wall }) => {
                self.handle_response(id, result, wall, now);
            }
            Wake::Timer => self.handle_timeout(now),
            Wake::Closed => self.shutdown(now),
        }
    }

    /// Feeds a queued command (its flag, if any, was already read by [`Signals::apply`])
    pub fn handle_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Reauth { generation, result } => {
                let _ = self.handle_reauth_result(generation, result, now);
            }
            // Wake-ups only.
            Command::RefreshNow | Command::Shutdown => {}
        }
    }
}
