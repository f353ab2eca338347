//! Retry delays: exponential, capped, jittered from a seeded generator
//!
//! Attempt `n` (1-based) waits `initial * multiplier^(n-1)`, capped at `max_delay`, then scaled
//! by a factor drawn uniformly from `[1 - jitter, 1 + jitter]` and capped again, so no delay
//! ever exceeds `max_delay`. Past `max_attempts` every delay is the jittered `max_delay`.

use std::time::Duration;

use crate::config::RetryPolicy;

/// The retry delay of attempt `attempt` (1-based) before jitter
pub fn base_delay(policy: &RetryPolicy, attempt: u32) -> Duration {
    let max = policy.max_delay().as_secs_f64();
    let exponent = attempt.saturating_sub(1).min(1024) as i32;
    let raw = policy.initial_delay().as_secs_f64() * policy.multiplier().powi(exponent);
    // powi may reach infinity for large exponents; min() keeps it finite.
    Duration::from_secs_f64(raw.min(max))
}

/// Applies jitter to `delay` with `unit` drawn uniformly from [0, 1), capped at `max_delay`
///
/// Never below 1 ms, so a retry can never be scheduled for "now" and spin.
pub fn jittered(policy: &RetryPolicy, delay: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let factor = 1.0 + policy.jitter() * (2.0 * unit - 1.0);
    let seconds = (delay.as_secs_f64() * factor).min(policy.max_delay().as_secs_f64());
    Duration::from_secs_f64(seconds.max(0.001))
}

/// A seeded source of jittered delays; the same seed gives the same delays
#[derive(Clone, Debug)]
pub struct Backoff {
    rng: fastrand::Rng,
}

impl Backoff {
    /// A generator seeded with `seed`
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// A uniform draw from [0, 1), for the machine's other jitter (the refresh point)
    pub fn unit(&mut self) -> f64 {
        self.rng.f64()
    }

    /// The jittered delay before attempt `attempt + 1`, after `attempt` consecutive failures
    pub fn delay(&mut self, policy: &RetryPolicy, attempt: u32) -> Duration {
        let unit = self.unit();
        jittered(policy, base_delay(policy, attempt), unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy::builder().jitter(jitter).build().unwrap()
    }

    #[test]
    fn default_delays_double_from_one_second_to_the_thirty_second_cap() {
        let p = policy(0.0);
        let table: Vec<u64> = (1..=8).map(|n| base_delay(&p, n).as_secs()).collect();
        assert_eq!(table, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn custom_multiplier_and_cap_give_an_exact_table() {
        let p = RetryPolicy::builder()
            .initial_delay(Duration::from_millis(100))
            .multiplier(3.0)
            .max_delay(Duration::from_secs(2))
            .jitter(0.0)
            .build()
            .unwrap();
        let table: Vec<u128> = (1..=5).map(|n| base_delay(&p, n).as_millis()).collect();
        assert_eq!(table, vec![100, 300, 900, 2000, 2000]);
    }

    #[test]
    fn huge_attempt_numbers_stay_at_the_cap() {
        let p = policy(0.0);
        assert_eq!(base_delay(&p, u32::MAX), Duration::from_secs(30));
        assert_eq!(base_delay(&p, 0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_never_passes_the_cap() {
        let p = policy(0.2);
        assert_eq!(
            jittered(&p, Duration::from_secs(10), 0.0),
            Duration::from_secs(8)
        );
        assert_eq!(
            jittered(&p, Duration::from_secs(10), 0.5),
            Duration::from_secs(10)
        );
        assert_eq!(
            jittered(&p, Duration::from_secs(30), 0.999),
            Duration::from_secs(30)
        );
        assert_eq!(
            jittered(&p, Duration::from_secs(10), f64::NAN),
            Duration::from_secs(10)
        );
        let mut backoff = Backoff::new(7);
        for attempt in 1..50 {
            let d = backoff.delay(&p, attempt).as_secs_f64();
            let base = base_delay(&p, attempt).as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= (base * 1.2).min(30.0) + 1e-9,
                "{attempt}: {d}"
            );
        }
    }

    #[test]
    fn same_seed_gives_same_delays() {
        let p = policy(0.2);
        let mut a = Backoff::new(42);
        let mut b = Backoff::new(42);
        for n in 1..20 {
            assert_eq!(a.delay(&p, n), b.delay(&p, n));
        }
    }
}
