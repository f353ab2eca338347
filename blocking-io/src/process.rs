//! What every runtime reads from its host process: the environment (for the default chain),
//! OS randomness and the wall clock (for a fleet's retry jitter and each fetch's context), and
//! the `tracing` subscriber (for events)

use std::time::SystemTime;

use redis_entraid_core::config::Config;
use redis_entraid_core::error::{FetchError, TransportError};
use redis_entraid_core::identity::env::EnvSource;
use redis_entraid_core::identity::FetchContext;

/// The process environment, read one variable at a time as the flows ask for it
///
/// Not a copy of `std::env::vars()`: that would hold every variable, `AZURE_CLIENT_SECRET` and
/// `IDENTITY_HEADER` included, in plain strings that are never wiped.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// `config` with a jitter seed from the OS, unless it already has one, so a fleet of
/// processes does not retry in lockstep
pub fn seeded(config: Config) -> Config {
    let mut seed = [0u8; 8];
    if getrandom::getrandom(&mut seed).is_err() {
        // No OS entropy (very rare): the process id and the clock still differ across a fleet.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        seed = (u64::from(std::process::id()) << 32 | u64::from(nanos)).to_le_bytes();
    }
    config.with_seed_if_unset(u64::from_le_bytes(seed))
}

/// What a fetch needs from the world: the wall clock and fresh OS randomness (for assertion
/// ids and nonces); CLI times without an offset are read as UTC
///
/// # Errors
/// A permanent [`TransportError`] when the OS random source fails.
pub fn fetch_context() -> Result<FetchContext, FetchError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| {
        FetchError::from(TransportError::permanent(format!(
            "the operating system's random source failed: {e}"
        )))
    })?;
    Ok(FetchContext::new(SystemTime::now(), seed))
}

#[doc(hidden)]
pub use redis_entraid_core as __core;
#[doc(hidden)]
pub use tracing as __tracing;

/// Logs a core [`Event`](redis_entraid_core::event::Event) at its severity, in the core's
/// words (the same line in every runtime), under the calling module's target (so
/// `RUST_LOG=redis_entraid_tokio=info` shows the refresh story)
///
/// ```
/// use std::time::Instant;
/// use redis_entraid_core::event::Event;
///
/// redis_entraid_blocking_io::log_event!(&Event::Stopped, Instant::now());
/// ```
#[macro_export]
macro_rules! log_event {
    ($event:expr, $now:expr) => {{
        let event: &$crate::__core::event::Event = $event;
        let line = event.describe($now);
        match event.severity() {
            $crate::__core::event::Severity::Debug => $crate::__tracing::debug!("{line}"),
            $crate::__core::event::Severity::Info => $crate::__tracing::info!("{line}"),
            $crate::__core::event::Severity::Warn => $crate::__tracing::warn!("{line}"),
            $crate::__core::event::Severity::Error => $crate::__tracing::error!("{line}"),
        }
    }};
}
