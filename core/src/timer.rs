//! Named monotonic deadlines; the earliest is the machine's next wake-up

use std::time::Instant;

use crate::event::TimerKind;

const KINDS: [TimerKind; 4] = [
    TimerKind::RequestTimeout,
    TimerKind::Expiry,
    TimerKind::Retry,
    TimerKind::Refresh,
];

/// One optional deadline per [`TimerKind`] (quinn's timer table)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimerTable {
    deadlines: [Option<Instant>; 4],
}

fn slot(kind: TimerKind) -> usize {
    match kind {
        TimerKind::RequestTimeout => 0,
        TimerKind::Expiry => 1,
        TimerKind::Retry => 2,
        TimerKind::Refresh => 3,
    }
}

impl TimerTable {
    /// Sets (or moves) a deadline
    pub fn set(&mut self, kind: TimerKind, at: Instant) {
        self.deadlines[slot(kind)] = Some(at);
    }

    /// Removes a deadline
    pub fn stop(&mut self, kind: TimerKind) {
        self.deadlines[slot(kind)] = None;
    }

    /// The deadline of `kind`, if set
    pub fn get(&self, kind: TimerKind) -> Option<Instant> {
        self.deadlines[slot(kind)]
    }

    /// Removes every deadline
    pub fn clear(&mut self) {
        self.deadlines = [None; 4];
    }

    /// Whether `kind` is set and due at `now`; a due deadline is removed
    pub fn take_due(&mut self, kind: TimerKind, now: Instant) -> bool {
        match self.deadlines[slot(kind)] {
            Some(at) if at <= now => {
                self.deadlines[slot(kind)] = None;
                true
            }
            _ => false,
        }
    }

    /// The earliest deadline and its kind; ties go to the kind listed first in `TimerKind`
    /// order of urgency (request timeout, expiry, retry, refresh)
    pub fn next(&self) -> Option<(Instant, TimerKind)> {
        KINDS
            .iter()
            .filter_map(|&kind| self.get(kind).map(|at| (at, kind)))
            .min_by_key(|&(at, _)| at)
    }
}
