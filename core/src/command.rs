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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::error::ReauthError;
use crate::event::Generation;
use crate::machine::TokenManager;

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
