//! The driver: a future that runs the core's machine, fetches on the `blocking` pool and
//! publishes what handles read

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use async_broadcast::Sender as EventSender;
use async_channel::{Receiver, Sender, TrySendError};
use futures_lite::future;
use redis_entraid_blocking_io::Fetcher;
use redis_entraid_core::command::{Command, DriverInput, Signals, Wake};
use redis_entraid_core::event::{Action, Event};
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::metrics::Recorder;

use crate::shared::Shared;

/// What reaches the driver: a handle's command, or a fetch's answer from the blocking pool
pub(crate) type Input = DriverInput;

/// Hands `command` to the driver without ever waiting (the policy when the queue is full is
/// the core's: see [`Signals`])
pub(crate) fn deliver(signals: &Signals, inputs: &Sender<Input>, command: Command) {
    signals.deliver(command, |input| match inputs.try_send(input) {
        Err(TrySendError::Full(input)) => Some(input),
        _ => None,
    });
}

/// The driver: a future that runs the token machine until the provider shuts down
///
/// Spawn it on any executor (`async_std::task::spawn(driver)`, `smol::spawn(driver).detach()`),
/// or let [`ProviderBuilder::build`](crate::ProviderBuilder::build) spawn it through the closure you give. It completes when
/// the last [`Provider`](crate::Provider) handle is dropped or [`Provider::shutdown`](crate::Provider::shutdown) is called.
#[must_use = "the provider fetches nothing until its driver is spawned"]
pub struct Driver(pub(crate) Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Driver")
    }
}

/// Everything the driver future owns
pub(crate) struct Parts {
    pub(crate) machine: TokenManager,
    pub(crate) fetcher: Arc<dyn Fetcher>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) inputs: Receiver<Input>,
    pub(crate) loopback: Sender<Input>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) events: EventSender<Event>,
    pub(crate) metrics: Recorder,
}

pub(crate) async fn run(parts: Parts) {
    let Parts {
        mut machine,
        fetcher,
        shared,
        inputs,
        loopback,
        signals,
        events,
        mut metrics,
    } = parts;
    loop {
        let until = drain(
            &mut machine,
            &fetcher,
            &shared,
            &loopback,
            &events,
            &mut metrics,
        );
        if shared.lock().is_stopped() {
            return;
        }
        let received = match until {
            Some(until) => {
                future::or(async { Some(inputs.recv().await) }, async {
                    async_io::Timer::at(until).await;
                    None
                })
                .await
            }
            None => Some(inputs.recv().await),
        };
        let woke = match received {
            Some(Ok(input)) => Wake::Input(input),
            Some(Err(_)) => Wake::Closed,
            None => Wake::Timer,
        };
        machine.wake(&signals, woke, Instant::now());
    }
}

fn drain(
    machine: &mut TokenManager,
    fetcher: &Arc<dyn Fetcher>,
    shared: &Shared,
    loopback: &Sender<Input>,
    events: &EventSender<Event>,
    metrics: &mut Recorder,
) -> Option<Instant> {
    loop {
        let action = machine.poll_action();
        let now = Instant::now();
        let status = machine.status();
        shared.update(|o| o.apply(&action, status, now));
        metrics.action(&action, now);
        match action {
            Action::Wait { until } => {
                let dropped = shared.dropped_events.load(Ordering::Relaxed);
                return metrics.idle(now, dropped, until);
            }
            Action::FetchToken {
                id,
                attempt,
                deadline,
            } => {
                let timeout = deadline.saturating_duration_since(now);
                tracing::debug!(
                    request = id.0,
                    attempt,
                    timeout_ms = timeout.as_millis() as u64,
                    "fetching a token"
                );
                let fetcher = Arc::clone(fetcher);
                let reply = loopback.clone();
                // On the blocking pool: the fetch runs even though nobody polls the task, and
                // its answer comes back as an input; a late one is stale and ignored.
                blocking::unblock(move || {
                    let result = fetcher.fetch(timeout);
                    // Released before the driver can see the result, so the source is gone
                    // once the last provider handle and the driver are.
                    drop(fetcher);
                    // On a pool thread, so it may wait for room: the driver always drains.
                    let _ = reply.send_blocking(Input::Fetched {
                        id,
                        result,
                        wall: SystemTime::now(),
                    });
                })
                .detach();
            }
            // Connections read the new credentials from the shared state.
            Action::Reauthenticate { .. } => {}
            Action::Event(event) => {
                redis_entraid_blocking_io::log_event!(&event, now);
                // Overflow mode: a full queue drops its oldest event; this never waits.
                if let Ok(Some(_)) = events.try_broadcast(event) {
                    shared.dropped_events.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
