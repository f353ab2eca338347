//! What a runtime lends the shared connection code: tasks, timers, its clock, and its
//! provider's state

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use redis_entraid_core::command::Command;
use redis_entraid_core::fan_out::FanOutLog;
use redis_entraid_core::observed::Observed;

/// An async runtime's tasks and timers
pub trait Runtime: Send + Sync + 'static {
    /// A spawned task that is cancelled when dropped (a connection's re-authentication ends
    /// with the connection's last handle)
    type Task: Debug + Send + Sync + 'static;

    /// Runs `task` on the runtime; dropping the returned handle cancels it
    fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self::Task;

    /// Runs `task` on the runtime to its end, without a handle
    fn spawn_detached(task: impl Future<Output = ()> + Send + 'static);

    /// Completes after `duration`
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;

    /// The clock the runtime's provider stamps tokens with (tokio's, so paused-time tests
    /// compare like with like)
    fn now() -> Instant;
}

/// A handle on a running provider that does not keep it alive: what connections hold
pub trait ProviderLink: Clone + Debug + Send + Sync + 'static {
    /// The runtime the provider's connections run on
    type Runtime: Runtime;

    /// Reads the provider's latest published state
    fn observe<T>(&self, read: impl FnOnce(&Observed) -> T) -> T;

    /// Waits until `ready` gives a value for the published state (checked now and after every
    /// change); `None` once the provider is gone without `ready` giving one
    fn wait_until<T: Send>(
        &self,
        ready: impl FnMut(&Observed) -> Option<T> + Send,
    ) -> impl Future<Output = Option<T>> + Send;

    /// Hands `command` to the provider's driver if it still runs, never waiting
    fn send(&self, command: Command);

    /// Where connections record how each rotation reached them, and whether a failure for a
    /// generation was already reported
    fn fan_out(&self) -> &FanOutLog;
}

/// A runtime's provider handle (the one users hold)
pub trait ProviderHandle: Clone + Debug + Send + Sync + 'static {
    /// Its weak counterpart
    type Link: ProviderLink;

    /// A handle that does not keep the provider's driver alive
    fn downgrade(&self) -> Self::Link;
}

/// The runtime of `P`'s connections
pub(crate) type RuntimeOf<P> = <<P as ProviderHandle>::Link as ProviderLink>::Runtime;

/// `future`'s output, or `None` once `timeout` has passed (the future is polled first, so a
/// ready answer is never lost to a timer that fired meanwhile)
pub(crate) async fn timeout<R: Runtime, T>(
    timeout: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let future = std::pin::pin!(future);
    let timer = std::pin::pin!(R::sleep(timeout));
    match futures_util::future::select(future, timer).await {
        futures_util::future::Either::Left((value, _)) => Some(value),
        futures_util::future::Either::Right(((), _)) => None,
    }
}
