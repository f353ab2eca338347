//! Property tests: random input sequences keep every invariant, and liveness holds whenever
//! the provider answers

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;

use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy};
use redis_entraid_core::event::{Event, RequestId, Status};
use redis_entraid_core::machine::TokenManager;
use redis_entraid_core::testing::ops::{Answer, Op, OpDriver};
use redis_entraid_core::testing::{unsigned_token, Harness, Reply, ScriptedFetch, WALL_START};
use redis_entraid_core::token::TokenResponse;

/// The instant a simulation starts from: only differences matter, and the test (not the core)
/// reads the clock
#[allow(clippy::disallowed_methods)]
fn epoch() -> std::time::Instant {
    std::time::Instant::now()
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => (-100i64..200_000).prop_map(Answer::Token),
        1 => any::<i64>().prop_map(Answer::Token),
        1 => (-100i64..200_000, any::<i64>()).prop_map(|(t, h)| Answer::TokenWithHint(t, h)),
        1 => Just(Answer::SameToken),
        1 => Just(Answer::NoOid),
        1 => Just(Answer::Garbage),
        2 => (any::<bool>(), proptest::option::of(any::<u16>())).prop_map(|(r, a)| Answer::HttpError(r, a)),
        1 => Just(Answer::Transport),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..4_000_000).prop_map(Op::Advance),
        4 => Just(Op::AdvanceToDeadline),
        6 => answer().prop_map(Op::Respond),
        1 => any::<u8>().prop_map(Op::RespondStale),
        1 => Just(Op::RefreshNow),
        2 => any::<u8>().prop_map(Op::Reauth),
        1 => any::<u8>().prop_map(Op::ReauthStale),
        1 => any::<i32>().prop_map(Op::WallJump),
        1 => any::<u16>().prop_map(Op::TimeBackwards),
        1 => Just(Op::Shutdown).prop_filter("rare", |_| true),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (any::<u8>(), any::<u16>(), any::<u16>(), any::<u64>())
        .prop_map(|(r, lb, mi, seed)| OpDriver::config_from(r, lb, mi, seed))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Deadlines never in the past, at most one fetch in flight, attempts counted and bounded
    /// between successes, credentials only from good responses, stale inputs ignored.
    #[test]
    fn random_inputs_keep_every_invariant(config in config(), ops in proptest::collection::vec(op(), 1..200)) {
        let mut driver = OpDriver::new(epoch(), config);
        for op in ops {
            driver.apply(op);
        }
    }

    /// The same configuration and inputs give the same action trace.
    #[test]
    fn same_inputs_give_the_same_action_trace(config in config(), ops in proptest::collection::vec(op(), 1..100)) {
        let run = |config: Config, ops: &[Op]| {
            let mut driver = OpDriver::new(epoch(), config);
            for op in ops {
                driver.apply(op.clone());
            }
            driver.trace
        };
        prop_assert_eq!(run(config.clone(), &ops), run(config, &ops));
    }

    /// A token whose remaining validity exceeds the lower bound is always replaced before it
    /// expires when the provider answers within the lower bound.
    #[test]
    fn tokens_above_the_lower_bound_are_always_refreshed_before_expiry(
        ratio_pct in 1u32..=100,
        lower_bound_s in 1u64..600,
        ttls in proptest::collection::vec(1u64..100_000, 1..20),
        latency_pct in 0u64..100,
        seed in any::<u64>(),
        jitter in 0.0f64..=0.5,
    ) {
        let lower_bound = Duration::from_secs(lower_bound_s);
        // Latency strictly below the lower bound and the request timeout; lifetimes above it with room for the
        // minimum interval.
        let latency = lower_bound.min(Duration::from_secs(9)).mul_f64(latency_pct as f64 / 100.0 * 0.99);
        let min_interval = Duration::from_millis(1);
        let config = Config::builder()
            .refresh(
                RefreshPolicy::builder()
                    .ratio(f64::from(ratio_pct) / 100.0)
                    .lower_bound(lower_bound)
                    .min_interval(min_interval)
                    .jitter(jitter)
                    .build()
                    .unwrap(),
            )
            .retry(RetryPolicy::default())
            .rng_seed(seed)
            .build()
            .unwrap();
        let ttls: Vec<i64> = ttls.iter().map(|t| (t + lower_bound_s + 1) as i64).collect();
        let total: u64 = ttls.iter().map(|t| *t as u64).sum();
        let script = {
            let ttls = ttls.clone();
            move |ctx: ScriptedFetch| Reply::Token { ttl: ttls[ctx.index % ttls.len()], latency }
        };
        let mut h = Harness::new(epoch(), config, script);
        h.run_for(Duration::from_secs(total));
        prop_assert_eq!(h.count_events(|e| matches!(e, Event::Expired { .. })), 0);
        prop_assert!(h.reauths.len() >= 2 || total < 2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever the wall clock's sub-second fraction, the latency, when in it the server issued
    /// the token and which lifetime fields it sent, the machine never believes the token lives
    /// past the server's `exp`. The host clock may be off by hours when the answer has an
    /// `expires_in` or a `Date`; with only absolute values and no `Date` it is all there is.
    #[test]
    fn the_machine_never_outlives_the_servers_expiry(
        fraction_ns in 0u64..1_000_000_000,
        latency_ms in 0u64..10_000,
        issue_pct in 0u64..=100,
        lifetime in 1i64..200_000,
        host_skew_s in -10_000i64..10_000,
        with_expires_in in any::<bool>(),
        with_expires_on in any::<bool>(),
        with_date in any::<bool>(),
    ) {
        let start = epoch();
        let host_skew_s = if with_expires_in || with_date { host_skew_s } else { 0 };
        // The server's clock at `start` reads WALL_START + fraction.
        let server_at = |elapsed: Duration| {
            std::time::UNIX_EPOCH + Duration::from_secs(WALL_START) + Duration::from_nanos(fraction_ns) + elapsed
        };
        let unix_secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let latency = Duration::from_millis(latency_ms);
        let issued = server_at(latency * issue_pct as u32 / 100);
        let exp = unix_secs(issued) + lifetime;
        let mut response = TokenResponse::new(unsigned_token(&format!(r#"{{"oid":"o","exp":{exp}}}"#)));
        if with_expires_in {
            response = response.with_expires_in(lifetime);
        }
        if with_expires_on {
            response = response.with_expires_on(exp);
        }
        if with_date {
            response = response.with_server_date(std::time::UNIX_EPOCH + Duration::from_secs(unix_secs(issued) as u64));
        }
        let host_wall = if host_skew_s >= 0 {
            server_at(latency) + Duration::from_secs(host_skew_s as u64)
        } else {
            server_at(latency) - Duration::from_secs(host_skew_s.unsigned_abs())
        };
        let mut machine = TokenManager::new(Config::default(), start);
        prop_assert!(machine.handle_response(RequestId(1), Ok(response), host_wall, start + latency));
        // The server's expiry as a monotonic instant: exp on its clock.
        let server_expiry = start + (Duration::from_secs(exp as u64 - WALL_START) - Duration::from_nanos(fraction_ns));
        if let Status::Valid { expires_at, .. } = machine.status() {
            prop_assert!(expires_at <= server_expiry, "believed {:?} past the server", expires_at - server_expiry);
        }
    }
}

#[test]
fn rare_ops_sequence_regressions() {
    // Shutdown in the middle of a fetch, then every input: nothing may panic or emit.
    let mut driver = OpDriver::new(epoch(), Config::default());
    for op in [
        Op::Respond(Answer::Token(i64::MAX)),
        Op::AdvanceToDeadline,
        Op::Respond(Answer::TokenWithHint(-5, i64::MIN)),
        Op::WallJump(i32::MIN),
        Op::Respond(Answer::SameToken),
        Op::TimeBackwards(u16::MAX),
        Op::Shutdown,
        Op::Advance(u32::MAX),
        Op::RefreshNow,
        Op::Reauth(1),
        Op::AdvanceToDeadline,
    ] {
        driver.apply(op);
    }
}

/// One observation fed to a `ReauthWindow`: an answer (round trip in µs, in flight, others
/// waiting), a timeout or the end of a burst
#[derive(Clone, Debug)]
enum WindowInput {
    Answer(u64, usize, bool),
    Timeout,
    Idle,
}

fn window_input() -> impl Strategy<Value = WindowInput> {
    prop_oneof![
        8 => (0u64..10_000_000, 0usize..10_000, any::<bool>())
            .prop_map(|(rtt, n, waiting)| WindowInput::Answer(rtt, n, waiting)),
        1 => Just(WindowInput::Idle),
        1 => Just(WindowInput::Timeout),
    ]
}

proptest! {
    /// Whatever the server and network do, the re-AUTH window stays within its bounds and
    /// grows only by doubling or quadrupling when AUTHs waited for a place, the base round trip is the least one seen in the
    /// burst, and a burst's end brings the window back to its minimum.
    #[test]
    fn the_reauth_window_stays_within_its_bounds(
        min in 0usize..100,
        max in 0usize..5000,
        inputs in proptest::collection::vec(window_input(), 1..500),
    ) {
        use redis_entraid_core::reauth_window::{Answer, ReauthWindow};
        let mut w = ReauthWindow::new(min, max);
        let floor = w.window();
        let ceiling = max.max(floor);
        let mut least: Option<Duration> = None;
        let mut waited = false;
        for input in inputs {
            let before = w.window();
            match input {
                WindowInput::Answer(rtt, n, waiting) => {
                    let rtt = Duration::from_micros(rtt);
                    least = Some(least.map_or(rtt, |l| l.min(rtt)));
                    waited |= waiting;
                    let after = w.on_answer(Answer::new(rtt, n, waiting));
                    // Held, lowered, or doubled or quadrupled (up to the ceiling) after AUTHs
                    // waited.
                    prop_assert!(
                        after <= before
                            || (waited
                                && (after == (2 * before).min(ceiling)
                                    || after == (4 * before).min(ceiling))),
                        "{} -> {}", before, after
                    );
                    if after != before {
                        waited = false;
                    }
                    prop_assert_eq!(w.base_round_trip(), least);
                }
                WindowInput::Timeout => {
                    let after = w.on_timeout();
                    prop_assert!(after <= before);
                    waited = false;
                }
                WindowInput::Idle => {
                    w.on_idle();
                    least = None;
                    waited = false;
                    prop_assert_eq!(w.window(), floor);
                }
            }
            prop_assert!(w.window() >= floor && w.window() <= ceiling);
        }
    }
}
