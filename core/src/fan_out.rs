//! What each rotation cost: how long from a new token's arrival until every connection had
//! re-authenticated with it, and how much of the old token's life was left then
//!
//! Runtimes record each connection's `AUTH` outcome here (the latency and margin are measured
//! by the runtime, with its clock; this module only keeps and summarises them) and hand the
//! summaries to users as `Provider::fan_out_reports()`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::event::Generation;

/// How many rotations the log keeps (older ones are dropped first)
const KEPT_ROTATIONS: usize = 64;

/// How one credential generation reached the connections that re-authenticated in place
///
/// Latencies run from the moment the provider published the token to the moment a
/// connection's `AUTH` was answered `OK`, so they include the time the connection's task
/// waited to be scheduled. The margin is how long the token that connection held before was
/// still valid at that moment: the safety left by this rotation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FanOutReport {
    /// The generation the connections moved to
    pub generation: Generation,
    /// Connections whose `AUTH` with it was answered `OK`
    pub connections: usize,
    /// `AUTH` attempts that failed (refused, timed out) and were retried
    pub failed_attempts: u64,
    /// Median latency from the token's arrival to a connection's `AUTH` OK
    pub p50: Duration,
    /// 99th percentile of the same latency
    pub p99: Duration,
    /// The slowest connection: arrival to the last `AUTH` OK
    pub max: Duration,
    /// The least validity any connection's previous token had left when its `AUTH` with this
    /// one succeeded; `None` when no connection held an earlier token
    pub min_margin: Option<Duration>,
}

#[derive(Debug)]
struct Rotation {
    generation: Generation,
    latencies: Vec<Duration>,
    failed_attempts: u64,
    min_margin: Option<Duration>,
}

/// The per-provider log every re-authenticating connection writes to (shared by reference;
/// the lock is held for a push or a copy, never across anything else)
#[derive(Debug, Default)]
pub struct FanOutLog {
    rotations: Mutex<VecDeque<Rotation>>,
    /// The newest generation a connection failure was reported to the driver for
    reported: AtomicU64,
}

impl FanOutLog {
    fn with_rotation(&self, generation: Generation, f: impl FnOnce(&mut Rotation)) {
        let mut rotations = self
            .rotations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let position = rotations.iter().position(|r| r.generation == generation);
        let rotation = match position {
            Some(i) => &mut rotations[i],
            None => {
                if rotations.len() == KEPT_ROTATIONS {
                    rotations.pop_front();
                }
                rotations.push_back(Rotation {
                    generation,
                    latencies: Vec::new(),
                    failed_attempts: 0,
                    min_margin: None,
                });
                let last = rotations.len() - 1;
                &mut rotations[last]
            }
        };
        f(rotation);
    }

    /// A connection's `AUTH` with `generation` was answered `OK` `latency` after the token
    /// arrived, with `margin` left on the token it replaced (if it held one)
    pub fn record_ok(&self, generation: Generation, latency: Duration, margin: Option<Duration>) {
        self.with_rotation(generation, |r| {
            r.latencies.push(latency);
            if let Some(margin) = margin {
                r.min_margin = Some(r.min_margin.map_or(margin, |m| m.min(margin)));
            }
        });
    }

    /// Whether this is the first failure report for `generation` from any connection (later
    /// ones, and reports for older generations, are not worth sending): when a thousand
    /// connections refuse a token at once, one fresh token is what helps, and the event stream
    /// stays readable
    pub fn first_report_for(&self, generation: Generation) -> bool {
        self.reported.fetch_max(generation.0, Ordering::Relaxed) < generation.0
    }

    /// A connection's `AUTH` with `generation` failed (and will be retried)
    pub fn record_failure(&self, generation: Generation) {
        self.with_rotation(generation, |r| r.failed_attempts += 1);
    }

    /// One report per recorded rotation, oldest first
    pub fn reports(&self) -> Vec<FanOutReport> {
        let rotations = self
            .rotations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        rotations
            .iter()
            .map(|r| {
                let mut sorted = r.latencies.clone();
                sorted.sort_unstable();
                let at = |q: f64| -> Duration {
                    if sorted.is_empty() {
                        return Duration::ZERO;
                    }
                    // Nearest rank: the smallest value with at least q of the samples at or
                    // below it.
                    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
                    sorted[rank - 1]
                };
                FanOutReport {
                    generation: r.generation,
                    connections: sorted.len(),
                    failed_attempts: r.failed_attempts,
                    p50: at(0.50),
                    p99: at(0.99),
                    max: sorted.last().copied().unwrap_or_default(),
                    min_margin: r.min_margin,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let log = FanOutLog::default();
        for ms in 1..=100 {
            log.record_ok(
                Generation(2),
                Duration::from_millis(ms),
                Some(Duration::from_millis(1000 - ms)),
            );
        }
        log.record_failure(Generation(2));
        let report = &log.reports()[0];
        assert_eq!(report.connections, 100);
        assert_eq!(report.failed_attempts, 1);
        assert_eq!(report.p50, Duration::from_millis(50));
        assert_eq!(report.p99, Duration::from_millis(99));
        assert_eq!(report.max, Duration::from_millis(100));
        assert_eq!(report.min_margin, Some(Duration::from_millis(900)));
    }

    #[test]
    fn only_the_latest_rotations_are_kept() {
        let log = FanOutLog::default();
        for g in 0..(KEPT_ROTATIONS as u64 + 5) {
            log.record_ok(Generation(g), Duration::ZERO, None);
        }
        let reports = log.reports();
        assert_eq!(reports.len(), KEPT_ROTATIONS);
        assert_eq!(reports[0].generation, Generation(5));
    }
}
