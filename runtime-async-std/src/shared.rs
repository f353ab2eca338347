//! State the driver shares with every handle; async waiters are woken through an event
//! listener, never through a queue the driver could block on

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::Event as Notify;
use futures_lite::future;
use redis_entraid_core::error::FetchError;
use redis_entraid_core::event::{Generation, Status};
use redis_entraid_core::token::Credentials;

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) latest: Option<(Generation, Credentials)>,
    /// When `latest` arrived
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) received: Option<Instant>,
    /// When `latest` expires, as the machine reckons it
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) expires_at: Option<Instant>,
    pub(crate) status: Status,
    pub(crate) last_error: Option<FetchError>,
    pub(crate) failures_before_first_token: u32,
    pub(crate) stopped: bool,
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                latest: None,
                received: None,
                expires_at: None,
                status: Status::Starting { failures: 0 },
                last_error: None,
                failures_before_first_token: 0,
                stopped: false,
            }),
            changed: Notify::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single assignment, so a poisoned lock still holds a whole state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify(usize::MAX);
    }

    /// Waits until `ready` gives a value, or `timeout` passes (`None`: forever)
    pub(crate) async fn wait_until<T>(
        &self,
        timeout: Option<Duration>,
        mut ready: impl FnMut(&State) -> Option<T>,
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
