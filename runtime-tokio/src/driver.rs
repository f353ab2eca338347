//! The driver task: runs the core's machine, fetches in tasks of its own, publishes what
//! handles read on a `watch` channel

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use redis_entraid_core::command::{Command, Signals};
use redis_entraid_core::error::FetchError;
use redis_entraid_core::event::{Action, Event, RequestId};
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::metrics::Recorder;
use redis_entraid_core::observed::Observed;
use redis_entraid_core::token::TokenResponse;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::provider::now;
use crate::source::Fetcher;

/// Hands `command` to the driver without ever waiting (the policy when the queue is full is
/// the core's: see [`Signals`])
pub(crate) fn deliver(signals: &Signals, commands: &mpsc::Sender<Command>, command: Command) {
    if let Some(command) = signals.admit(command) {
        if let Err(mpsc::error::TrySendError::Full(command)) = commands.try_send(command) {
            signals.overflowed(&command);
        }
    }
}

pub(crate) type FetchOutcome = (RequestId, Result<TokenResponse, FetchError>, SystemTime);

pub(crate) struct Driver {
    pub(crate) machine: TokenManager,
    pub(crate) source: Arc<dyn Fetcher>,
    pub(crate) state: watch::Sender<Observed>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) event_capacity: usize,
    pub(crate) dropped_events: Arc<AtomicU64>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) fetch: Option<JoinHandle<FetchOutcome>>,
    pub(crate) metrics: Recorder,
}

impl Driver {
    pub(crate) async fn run(mut self) {
        loop {
            let until = self.drain();
            if self.state.borrow().is_stopped() {
                break;
            }
            let sleep = async {
                match until {
                    Some(until) => {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await
                    }
                    None => std::future::pending().await,
                }
            };
            let fetch = async {
                match self.fetch.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            };
            enum Input {
                Command(Option<Command>),
                Fetched(Result<FetchOutcome, tokio::task::JoinError>),
                Timeout,
            }
            // Unbiased (tokio picks a random ready branch): a flood of commands must not starve
            // the timer or a finished fetch.
            let input = tokio::select! {
                command = self.commands.recv() => Input::Command(command),
                fetched = fetch => Input::Fetched(fetched),
                () = sleep => Input::Timeout,
            };
            let now = now();
            // The flags first: a request whose wake-up did not fit in the queue is seen here.
            self.signals.apply(&mut self.machine, now);
            match input {
                Input::Command(Some(command)) => self.machine.handle_command(command, now),
                Input::Command(None) => self.machine.shutdown(now),
                Input::Fetched(outcome) => {
                    self.fetch = None;
                    match outcome {
                        Ok((id, result, wall)) => {
                            let _ = self.machine.handle_response(id, result, wall, now);
                        }
                        Err(e) => tracing::error!("the token fetch task failed: {e}"),
                    }
                }
                Input::Timeout => self.machine.handle_timeout(now),
            }
        }
        if let Some(fetch) = self.fetch.take() {
            fetch.abort();
        }
        tracing::debug!("redis-entraid driver stopped");
    }

    fn drain(&mut self) -> Option<Instant> {
        loop {
            let action = self.machine.poll_action();
            let now = now();
            let status = self.machine.status();
            self.state
                .send_if_modified(|o| o.apply(&action, status, now));
            self.metrics.action(&action, now);
            match action {
                Action::Wait { until } => {
                    let dropped = self.dropped_events.load(Ordering::Relaxed);
                    return self.metrics.idle(now, dropped, until);
                }
                Action::FetchToken {
                    id,
                    attempt,
                    deadline,
                } => self.spawn_fetch(id, attempt, deadline),
                // Connections read the new credentials from the watch channel.
                Action::Reauthenticate { .. } => {}
                Action::Event(event) => {
                    redis_entraid_blocking_io::log_event!(&event, now);
                    // A full queue makes its laggiest receiver lose its oldest event.
                    if self.events.len() >= self.event_capacity {
                        self.dropped_events.fetch_add(1, Ordering::Relaxed);
                    }
                    // No receiver is not an error.
                    let _ = self.events.send(event);
                }
            }
        }
    }

    fn spawn_fetch(&mut self, id: RequestId, attempt: u32, deadline: Instant) {
        if let Some(previous) = self.fetch.take() {
            // The machine gave up on it (its id is stale now); do not let it linger.
            previous.abort();
        }
        let source = Arc::clone(&self.source);
        let timeout = deadline.saturating_duration_since(now());
        tracing::debug!(
            request = id.0,
            attempt,
            timeout_ms = timeout.as_millis() as u64,
            "fetching a token"
        );
        self.fetch = Some(tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, source.fetch(timeout)).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::TimedOut { after: timeout }),
            };
            (id, result, SystemTime::now())
        }));
    }
}
