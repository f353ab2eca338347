//! The state the driver thread shares with every handle: latest credentials, status, events
//!
//! Readers never block the driver: credentials are a latest-value cell behind a mutex held for
//! a pointer copy, and events go to bounded per-subscriber queues that drop (and count) what a
//! slow subscriber cannot take.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis_entraid_core::event::Event;
use redis_entraid_core::observed::Observed;

/// Shared between the driver thread and every handle
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<Observed>,
    changed: Condvar,
    subscribers: Mutex<Vec<SyncSender<Event>>>,
    pub(crate) dropped_events: AtomicU64,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(Observed::default()),
            changed: Condvar::new(),
            subscribers: Mutex::new(Vec::new()),
            dropped_events: AtomicU64::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Observed> {
        // A panic while holding this lock cannot leave the state half-written (every update
        // is a single assignment), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Observed) -> bool) {
        if f(&mut self.lock()) {
            self.changed.notify_all();
        }
    }

    /// Waits until `ready` holds or `timeout` passes; returns the final state check
    pub(crate) fn wait_until<T>(
        &self,
        timeout: Option<Duration>,
        mut ready: impl FnMut(&Observed) -> Option<T>,
    ) -> Option<T> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = self.lock();
        loop {
            if let Some(value) = ready(&state) {
                return Some(value);
            }
            match deadline {
                None => {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    pub(crate) fn subscribe_events(&self, capacity: usize) -> Receiver<Event> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    pub(crate) fn publish_event(&self, event: &Event) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped_events.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}
