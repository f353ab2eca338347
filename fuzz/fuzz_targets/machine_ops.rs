//! Arbitrary input sequences into the token machine: every invariant of
//! `redis_entraid_core::testing::ops` (deadlines never in the past, one fetch in flight,
//! attempts counted, credentials only from good responses, stale inputs ignored) must hold,
//! and nothing may panic or overflow.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use redis_entraid_core::testing::ops::{Op, OpDriver};

#[derive(Debug, Arbitrary)]
struct Input {
    ratio_pct: u8,
    lower_bound_s: u16,
    min_interval_ms: u16,
    seed: u64,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let config = OpDriver::config_from(input.ratio_pct, input.lower_bound_s, input.min_interval_ms, input.seed);
    let mut driver = OpDriver::new(std::time::Instant::now(), config);
    for op in input.ops.into_iter().take(500) {
        driver.apply(op);
    }
});
