//! Arbitrary configurations and input sequences into the token machine: every invariant of
//! `redis_entraid_core::testing::ops` (deadlines never in the past, one fetch in flight,
//! attempts counted, credentials only from good responses, stale inputs ignored) must hold,
//! and nothing may panic or overflow.
//!
//! The configuration spans every setting's whole allowed range and a little beyond it (so the
//! builders' validation is crossed too); a configuration the builders refuse is skipped, since
//! a machine can only ever be built from a valid one.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy};
use redis_entraid_core::testing::ops::{Op, OpDriver};

/// Raw settings; each is scaled so its allowed range (see `core/src/config.rs`) plus a margin
/// of invalid values is reachable
#[derive(Debug, Arbitrary)]
struct RawConfig {
    /// ratio: 0 ..= 1.09 (allowed (0, 1])
    ratio: u16,
    /// lower bound: 0 ..= 31 days (allowed 0 ..= 30 days)
    lower_bound_s: u32,
    /// min interval: 0 ..= ~1.03 h in ms (allowed 1 ms ..= 1 h)
    min_interval_ms: u32,
    /// refresh jitter: 0 ..= 0.55 (allowed 0 ..= 0.5)
    refresh_jitter: u16,
    /// attempts: 0 ..= 1099 (allowed 1 ..= 1000)
    max_attempts: u16,
    /// initial delay: 0 ..= ~1.03 h in ms (allowed 1 ms ..= max delay)
    initial_delay_ms: u32,
    /// multiplier: 0 ..= ~109 (allowed 1 ..= 100)
    multiplier: u16,
    /// max delay: 0 ..= ~1.03 h in ms (allowed 1 ms ..= 1 h)
    max_delay_ms: u32,
    /// retry jitter: 0 ..= 1 (allowed 0 ..= 0.9)
    retry_jitter: u16,
    /// request timeout: 0 ..= ~11 min in ms (allowed 1 ms ..= 10 min)
    request_timeout_ms: u32,
    /// clock-skew tolerance: 0 ..= 31 days (allowed 1 s ..= 30 days)
    clock_skew_s: u32,
    /// `None` leaves the seed unset (the core's fallback seed)
    seed: Option<u64>,
}

const DAY_S: u32 = 24 * 60 * 60;
const HOUR_MS: u32 = 60 * 60 * 1000;

impl RawConfig {
    fn build(&self) -> Option<Config> {
        let refresh = RefreshPolicy::builder()
            .ratio(f64::from(self.ratio) / 60_000.0)
            .lower_bound(Duration::from_secs(u64::from(
                self.lower_bound_s % (31 * DAY_S + 1),
            )))
            .min_interval(Duration::from_millis(u64::from(
                self.min_interval_ms % (HOUR_MS + HOUR_MS / 30),
            )))
            .jitter(f64::from(self.refresh_jitter) / 120_000.0)
            .build()
            .ok()?;
        let retry = RetryPolicy::builder()
            .max_attempts(u32::from(self.max_attempts % 1100))
            .initial_delay(Duration::from_millis(u64::from(
                self.initial_delay_ms % (HOUR_MS + HOUR_MS / 30),
            )))
            .multiplier(f64::from(self.multiplier) / 600.0)
            .max_delay(Duration::from_millis(u64::from(
                self.max_delay_ms % (HOUR_MS + HOUR_MS / 30),
            )))
            .jitter(f64::from(self.retry_jitter) / f64::from(u16::MAX))
            .build()
            .ok()?;
        let mut builder = Config::builder()
            .refresh(refresh)
            .retry(retry)
            .request_timeout(Duration::from_millis(u64::from(
                self.request_timeout_ms % (11 * 60 * 1000),
            )))
            .clock_skew_tolerance(Duration::from_secs(u64::from(
                self.clock_skew_s % (31 * DAY_S + 1),
            )));
        if let Some(seed) = self.seed {
            builder = builder.rng_seed(seed);
        }
        builder.build().ok()
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    config: RawConfig,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let Some(config) = input.config.build() else {
        return;
    };
    let mut driver = OpDriver::new(std::time::Instant::now(), config);
    for op in input.ops.into_iter().take(500) {
        driver.apply(op);
    }
});
