//! The driver thread: runs the core's machine, fetches on short-lived threads, publishes what
//! handles read

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use redis_entraid_blocking_io::Fetcher;
use redis_entraid_core::command::{Command, DriverInput, Signals, Wake};
use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::event::{Action, RequestId};
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::metrics::Recorder;

use crate::watch::Shared;

/// What reaches the driver: a handle's command, or a fetch thread's answer
pub(crate) type Input = DriverInput;

/// Hands `command` to the driver without ever waiting (the policy when the queue is full is
/// the core's: see [`Signals`])
pub(crate) fn deliver(signals: &Signals, inputs: &SyncSender<Input>, command: Command) {
    signals.deliver(command, |input| match inputs.try_send(input) {
        Err(TrySendError::Full(input)) => Some(input),
        _ => None,
    });
}

pub(crate) struct Driver {
    pub(crate) machine: TokenManager,
    pub(crate) source: Arc<dyn Fetcher>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) inputs: Receiver<Input>,
    pub(crate) loopback: SyncSender<Input>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) metrics: Recorder,
}

impl Driver {
    pub(crate) fn run(mut self) {
        loop {
            let until = self.drain();
            if self.shared.lock().is_stopped() {
                return;
            }
            let received = match until {
                Some(until) => self
                    .inputs
                    .recv_timeout(until.saturating_duration_since(Instant::now())),
                None => self
                    .inputs
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            let woke = match received {
                Ok(input) => Wake::Input(input),
                Err(RecvTimeoutError::Timeout) => Wake::Timer,
                Err(RecvTimeoutError::Disconnected) => Wake::Closed,
            };
            self.machine.wake(&self.signals, woke, Instant::now());
        }
    }

    fn drain(&mut self) -> Option<Instant> {
        loop {
            let action = self.machine.poll_action();
            let now = Instant::now();
            let status = self.machine.status();
            self.shared.update(|o| o.apply(&action, status, now));
            self.metrics.action(&action, now);
            match action {
                Action::Wait { until } => {
                    let dropped = self.shared.dropped_events.load(Ordering::Relaxed);
                    return self.metrics.idle(now, dropped, until);
                }
                Action::FetchToken {
                    id,
                    attempt,
                    deadline,
                } => {
                    if let Err(error) = self.spawn_fetch(id, attempt, deadline) {
                        // Answered here: sending to its own full queue would block the driver.
                        self.machine
                            .handle_response(id, Err(error), SystemTime::now(), now);
                    }
                }
                // Connections read the new credentials from the shared state.
                Action::Reauthenticate { .. } => {}
                Action::Event(event) => {
                    redis_entraid_blocking_io::log_event!(&event, now);
                    self.shared.publish_event(&event);
                }
            }
        }
    }

    fn spawn_fetch(
        &self,
        id: RequestId,
        attempt: u32,
        deadline: Instant,
    ) -> Result<(), FetchError> {
        let source = Arc::clone(&self.source);
        let reply = self.loopback.clone();
        let timeout = deadline.saturating_duration_since(Instant::now());
        tracing::debug!(
            request = id.0,
            attempt,
            timeout_ms = timeout.as_millis() as u64,
            "fetching a token"
        );
        let spawned = std::thread::Builder::new()
            .name("redis-entraid-fetch".to_owned())
            .spawn(move || {
                let result = source.fetch(timeout);
                // Let go of the source before the driver can see the result: whoever then drops
                // the last provider handle finds the source released once the driver is joined
                // (dropping it after the send raced with that, seen as a flaky test).
                drop(source);
                // Waits for room in the queue: the driver always drains it.
                let _ = reply.send(Input::Fetched {
                    id,
                    result,
                    wall: SystemTime::now(),
                });
            });
        spawned.map(drop).map_err(|e| {
            TransportError::new("could not start a fetch thread")
                .with_source(e)
                .into()
        })
    }
}
