//! The process-wide window of re-`AUTH`s in flight: core's [`ReauthWindow`] decides its size
//! from each `AUTH`'s round trip, a semaphore holds that many permits
//!
//! Each burst of `AUTH`s (a rotation) starts from the minimum and learns its own path; the
//! window resets once nothing is in flight.
//!
//! One window for the whole process (every runtime, every provider, every server): what it
//! protects is other traffic, which a burst of `AUTH`s delays wherever it queues. Connections
//! to servers at different distances share it; the nearest sets the base round trip, which
//! makes the window careful for the farther ones, never reckless.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_lock::{Semaphore, SemaphoreGuard};
use redis_entraid_core::reauth_window::{Answer, ReauthWindow};

/// The fewest re-`AUTH`s the process lets be in flight at once: the window's floor, and its
/// size until round trips show the server has room for more
///
/// A rotation wakes every connection's task at the same moment; unbounded, a thousand
/// `AUTH`s enter the server's queue at once and every other command waits behind all of them
/// (measured with `bench/peers`: PING p99 grew 5× for the second after a rotation). The window
/// keeps about this many, at most, waiting at the server.
pub const MIN_REAUTHS_IN_FLIGHT: usize = 32;

/// The most re-`AUTH`s the window ever lets be in flight at once
///
/// Over a long path most of the `AUTH`s in flight are on the wire, not queued at the server,
/// so the window grows past [`MIN_REAUTHS_IN_FLIGHT`] while round trips stay at the path's
/// base: 4096 covers 40,000 `AUTH`s a second over a 100 ms round trip.
pub const MAX_REAUTHS_IN_FLIGHT: usize = 4096;

struct Shared {
    window: ReauthWindow,
    /// Permits that exist, held or not: the semaphore cannot shrink, so a smaller window is
    /// reached by forgetting permits as they come back
    issued: usize,
    in_flight: usize,
    /// `AUTH`s in flight or waiting for a place: the burst is over when none is left (a
    /// permit handed to a waiter that has not run yet is still a burst going on)
    demand: usize,
}

struct Window {
    permits: Semaphore,
    shared: Mutex<Shared>,
}

static WINDOW: Window = Window {
    permits: Semaphore::new(MIN_REAUTHS_IN_FLIGHT),
    shared: Mutex::new(Shared {
        window: ReauthWindow::new(MIN_REAUTHS_IN_FLIGHT, MAX_REAUTHS_IN_FLIGHT),
        issued: MIN_REAUTHS_IN_FLIGHT,
        in_flight: 0,
        demand: 0,
    }),
};

/// The shared counts stay consistent at every step (no step can panic halfway), so a lock
/// poisoned by an unrelated panic is still good to use.
fn shared() -> MutexGuard<'static, Shared> {
    WINDOW.shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many re-`AUTH`s the process lets be in flight now, between [`MIN_REAUTHS_IN_FLIGHT`]
/// and [`MAX_REAUTHS_IN_FLIGHT`]
#[must_use]
pub fn reauth_window() -> usize {
    shared().window.window()
}

/// Leave to send one `AUTH`: waits for a free place in the window (in the order callers came).
/// The caller reports how the `AUTH` went with [`Slot::answered`] or [`Slot::timed_out`];
/// a slot dropped otherwise (the connection went away, the task was cancelled) only frees
/// its place.
pub(crate) async fn acquire() -> Slot {
    let demand = Demand::enter();
    let permit = WINDOW.permits.acquire().await;
    let in_flight = {
        let mut shared = shared();
        shared.in_flight += 1;
        shared.in_flight
    };
    Slot {
        permit: Some(permit),
        in_flight,
        _demand: demand,
    }
}

/// One `AUTH` in the burst, from the moment it wants a place until it is settled
struct Demand;

impl Demand {
    fn enter() -> Self {
        shared().demand += 1;
        Demand
    }
}

impl Drop for Demand {
    fn drop(&mut self) {
        let mut shared = shared();
        shared.demand = shared.demand.saturating_sub(1);
        if shared.demand > 0 {
            return;
        }
        shared.window.on_idle();
        // The permits of a larger window wait in the semaphore now; take them back so the
        // next burst starts at the minimum. One a newcomer took first is forgotten when it
        // settles.
        let target = shared.window.window();
        while shared.issued > target {
            let Some(spare) = WINDOW.permits.try_acquire() else {
                break;
            };
            spare.forget();
            shared.issued -= 1;
        }
    }
}

/// One `AUTH`'s place in the window
pub(crate) struct Slot {
    permit: Option<SemaphoreGuard<'static>>,
    /// `AUTH`s in flight when this one left, itself included
    in_flight: usize,
    /// Dropped after the permit is settled, so the end of a burst sees every permit back
    _demand: Demand,
}

impl Slot {
    /// The server answered (`OK` or an error reply) `round_trip` after the `AUTH` was sent.
    pub(crate) fn answered(mut self, round_trip: Duration) {
        let in_flight = self.in_flight;
        self.settle(|w, others_waiting| {
            w.on_answer(Answer::new(round_trip, in_flight, others_waiting))
        });
    }

    /// No answer came in time.
    pub(crate) fn timed_out(mut self) {
        self.settle(|w, _| w.on_timeout());
    }

    /// Frees this place and resizes the window with `decide`, told whether others wait for
    /// a place (the burst is larger than the window)
    fn settle(&mut self, decide: impl FnOnce(&mut ReauthWindow, bool) -> usize) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut shared = shared();
        let others_waiting = shared.demand > shared.in_flight;
        shared.in_flight = shared.in_flight.saturating_sub(1);
        let target = decide(&mut shared.window, others_waiting);
        if shared.issued < target {
            WINDOW.permits.add_permits(target - shared.issued);
            shared.issued = target;
        } else if shared.issued > target {
            shared.issued -= 1;
            permit.forget();
            return;
        }
        drop(permit);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.settle(|w, _| w.window());
    }
}
