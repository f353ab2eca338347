//! State the driver shares with every handle; async waiters are woken through an event
//! listener, never through a queue the driver could block on

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::Event as Notify;
use futures_lite::future;
use redis_entraid_core::observed::Observed;

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<Observed>,
    changed: Notify,
    /// Events a full subscriber queue lost (the oldest of that queue)
    pub(crate) dropped_events: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(Observed::default()),
            changed: Notify::new(),
            dropped_events: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Observed> {
        // Every update is a single assignment, so a poisoned lock still holds a whole state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Observed) -> bool) {
        if f(&mut self.lock()) {
            self.changed.notify(usize::MAX);
        }
    }

    /// Waits until `ready` gives a value, or `timeout` passes (`None`: forever)
    pub(crate) async fn wait_until<T>(
        &self,
        timeout: Option<Duration>,
        mut ready: impl FnMut(&Observed) -> Option<T>,
    ) -> Option<T> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            // Listen before checking, so a change between the check and the wait is not lost.
            let listener = self.changed.listen();
            if let Some(value) = ready(&self.lock()) {
                return Some(value);
            }
            match deadline {
                None => listener.await,
                Some(deadline) => {
                    let woke = future::or(
                        async {
                            listener.await;
                            true
                        },
                        async {
                            async_io::Timer::at(deadline).await;
                            false
                        },
                    )
                    .await;
                    if !woke {
                        return ready(&self.lock());
                    }
                }
            }
        }
    }
}
