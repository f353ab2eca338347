//! Named scenarios: each pins one rule of the schedule on a simulated clock

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy, MAX_TOKEN_LIFETIME};
use redis_entraid_core::error::{
    EntraErrorBody, FetchError, ReauthError, ReauthErrorKind, ResponseError, TransportError,
};
use redis_entraid_core::event::{
    Action, Event, Generation, RequestId, SkewEvidence, Status, TimerKind,
};
use redis_entraid_core::jwt::JwtError;
use redis_entraid_core::testing::{sequence, unsigned_token, Harness, Reply, WALL_START};
use redis_entraid_core::token::TokenResponse;

/// The instant a simulation starts from: only differences matter, and the test (not the core)
/// reads the clock
#[allow(clippy::disallowed_methods)]
fn epoch() -> std::time::Instant {
    std::time::Instant::now()
}

const S: Duration = Duration::from_secs(1);
const HOUR: i64 = 3600;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A token the machine believes valid for exactly `ttl` seconds, answered with no latency so
/// times are exact
///
/// The provider says `ttl + 1`: an integer `expires_in` is counted one second short (see
/// `integer_expires_in_is_counted_one_second_short`), and the JWT `exp` it also carries is
/// later than that.
fn tok(ttl: i64) -> Reply {
    Reply::Token {
        ttl: ttl.saturating_add(1),
        latency: Duration::ZERO,
    }
}

fn fail(error: impl Into<FetchError>) -> Reply {
    Reply::Fail {
        error: error.into(),
        latency: Duration::ZERO,
    }
}

fn unavailable() -> FetchError {
    ResponseError::new("service unavailable", true)
        .with_status(503)
        .into()
}

fn invalid_client() -> FetchError {
    ResponseError::new("token request rejected", false)
        .with_status(401)
        .with_entra(EntraErrorBody::new("invalid_client"))
        .into()
}

/// Exact configuration: no retry jitter
fn config(ratio: f64, lower_bound: Duration, min_interval: Duration) -> Config {
    Config::builder()
        .refresh(
            RefreshPolicy::builder()
                .ratio(ratio)
                .lower_bound(lower_bound)
                .min_interval(min_interval)
                .build()
                .unwrap(),
        )
        .retry(RetryPolicy::builder().jitter(0.0).build().unwrap())
        .build()
        .unwrap()
}

fn default_exact() -> Config {
    config(0.7, secs(180), secs(10))
}

// ----- when to refresh --------------------------------------------------------------------

#[test]
fn ratio_dominates_for_long_tokens() {
    let mut h = Harness::new(
        epoch(),
        config(0.75, secs(600), secs(10)),
        sequence(vec![tok(2 * HOUR)]),
    );
    h.run_for(secs(2 * 3600 - 1));
    assert_eq!(h.fetches, vec![secs(0), secs(5400)]);
}

#[test]
fn lower_bound_wins_for_short_tokens() {
    let mut h = Harness::new(
        epoch(),
        config(0.7, secs(45 * 60), secs(10)),
        sequence(vec![tok(HOUR)]),
    );
    h.run_for(secs(1000));
    assert_eq!(h.fetches, vec![secs(0), secs(900)]);
}

#[test]
fn default_schedule_refreshes_one_hour_tokens_every_2520_seconds() {
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![tok(HOUR)]));
    h.run_for(secs(10 * 3600));
    let expected: Vec<Duration> = (0..=14).map(|n| secs(n * 2520)).collect();
    assert_eq!(h.fetches, expected);
    let generations: Vec<u64> = h.reauths.iter().map(|(_, g)| g.0).collect();
    assert_eq!(
        generations,
        (1..=15).collect::<Vec<_>>(),
        "each token is pushed once, in order"
    );
    assert_eq!(h.count_events(|e| matches!(e, Event::Expired { .. })), 0);
}

#[test]
fn token_shorter_than_lower_bound_refreshes_at_min_interval_without_hot_loop() {
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![tok(60)]));
    h.run_for(secs(60));
    let expected: Vec<Duration> = (0..=6).map(|n| secs(n * 10)).collect();
    assert_eq!(h.fetches, expected);
    assert_eq!(h.count_events(|e| matches!(e, Event::Expired { .. })), 0);
}

#[test]
fn token_lifetime_equal_to_lower_bound_refreshes_at_min_interval() {
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![tok(180)]));
    h.run_for(secs(25));
    assert_eq!(h.fetches, vec![secs(0), secs(10), secs(20)]);
}

#[test]
fn min_interval_wins_over_expiry_for_tokens_shorter_than_it() {
    // A 5 s token with a 10 s hot-loop guard: the guard wins, the token expires, and the
    // machine says so instead of hammering the provider.
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![tok(5)]));
    h.run_for(secs(24));
    assert_eq!(h.fetches, vec![secs(0), secs(10), secs(20)]);
    assert_eq!(h.count_events(|e| matches!(e, Event::Expired { .. })), 2);
}

#[test]
fn ratio_one_and_zero_lower_bound_refresh_no_later_than_expiry() {
    let mut h = Harness::new(
        epoch(),
        config(1.0, Duration::ZERO, secs(10)),
        sequence(vec![tok(100)]),
    );
    h.run_for(secs(150));
    assert_eq!(h.fetches, vec![secs(0), secs(100)]);
}

#[test]
fn high_and_low_ratios_refresh_between_ratio_point_and_expiry() {
    for ratio in [0.01, 0.5, 0.99] {
        let mut h = Harness::new(
            epoch(),
            config(ratio, Duration::ZERO, Duration::from_millis(1)),
            sequence(vec![tok(HOUR)]),
        );
        h.run_for(secs(3600));
        let second = h.fetches[1].as_secs_f64();
        assert!(
            second >= ratio * 3600.0 - 1e-6 && second <= 3600.0,
            "ratio {ratio}: {second}"
        );
    }
}

#[test]
fn tiny_ratio_is_precise_to_the_nanosecond() {
    let mut h = Harness::new(
        epoch(),
        config(0.0001, Duration::ZERO, Duration::from_millis(1)),
        sequence(vec![tok(HOUR)]),
    );
    h.run_for(secs(1));
    assert_eq!(h.fetches[1], Duration::from_millis(360));
}

#[test]
fn refresh_in_hint_moves_the_refresh_earlier() {
    let mut h = Harness::new(epoch(), default_exact(), |ctx| {
        let _ = ctx;
        Reply::Response {
            response: TokenResponse::new(unsigned_token(r#"{"oid":"o"}"#))
                .with_expires_in(86_400)
                .with_refresh_in(3600),
            latency: Duration::ZERO,
        }
    });
    h.run_for(secs(3600));
    assert_eq!(h.fetches, vec![secs(0), secs(3600)]);
}

#[test]
fn refresh_in_hint_later_than_the_ratio_point_is_ignored() {
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![Reply::Response {
            response: TokenResponse::new(unsigned_token(r#"{"oid":"o"}"#))
                .with_expires_in(3601)
                .with_refresh_in(3500),
            latency: Duration::ZERO,
        }]),
    );
    h.run_for(secs(2600));
    assert_eq!(h.fetches, vec![secs(0), secs(2520)]);
}

#[test]
fn refresh_jitter_only_moves_the_refresh_earlier() {
    for seed in 0..50 {
        let config = Config::builder()
            .refresh(RefreshPolicy::builder().jitter(0.5).build().unwrap())
            .rng_seed(seed)
            .build()
            .unwrap();
        let mut h = Harness::new(epoch(), config, sequence(vec![tok(HOUR)]));
        h.run_for(secs(2520));
        assert_eq!(h.fetches.len(), 2, "seed {seed}");
        let at = h.fetches[1];
        assert!(at >= secs(1260) && at <= secs(2520), "seed {seed}: {at:?}");
    }
}

#[test]
fn earliest_of_expires_in_expires_on_and_exp_wins() {
    let absolute = |h_wall: i64| Reply::Response {
        response: TokenResponse::new(unsigned_token(&format!(
            r#"{{"oid":"o","exp":{}}}"#,
            h_wall + 7200
        )))
        .with_expires_in(3600)
        // 49 s short of expires_in, within the clock skew tolerance: a cached token
        .with_expires_on(h_wall + 3550),
        latency: Duration::ZERO,
    };
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![absolute(WALL_START as i64)]),
    );
    h.run_for(Duration::ZERO);
    match h.machine.status() {
        Status::Valid { expires_at, .. } => assert_eq!(expires_at - h.start, secs(3550)),
        other => panic!("{other:?}"),
    }
    // JWT exp alone is enough when the response carries no lifetime.
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![Reply::Response {
            response: TokenResponse::new(unsigned_token(&format!(
                r#"{{"oid":"o","exp":{}}}"#,
                WALL_START + 600
            ))),
            latency: Duration::ZERO,
        }]),
    );
    h.run_for(Duration::ZERO);
    match h.machine.status() {
        Status::Valid { expires_at, .. } => assert_eq!(expires_at - h.start, secs(600)),
        other => panic!("{other:?}"),
    }
}

/// Answers the fetch in flight with `response` at `elapsed` after the start, the simulated
/// wall clock then reading `WALL_START + elapsed + h.wall_skew`
fn answer_at(h: &mut Harness, elapsed: Duration, response: TokenResponse) {
    h.now = h.start + elapsed;
    let (wall, now) = (h.wall(), h.now);
    assert!(h
        .machine
        .handle_response(RequestId(1), Ok(response), wall, now));
    h.drain();
}

fn expires_in_after_start(h: &Harness) -> Duration {
    match h.machine.status() {
        Status::Valid { expires_at, .. } => expires_at - h.start,
        other => panic!("{other:?}"),
    }
}

#[test]
fn absolute_expiry_counts_the_wall_clocks_fraction() {
    // Received at wall WALL_START + 0.9 s: expires_on 1200 s after WALL_START is 1199.1 s away
    // (1200 s after the start), not the 1200 s a wall clock truncated to whole seconds says.
    for (expires_on, exp) in [(Some(1200), None), (None, Some(1200))] {
        let mut h = Harness::new(epoch(), default_exact(), |_| Reply::Hang);
        let claims = match exp {
            Some(exp) => format!(r#"{{"oid":"o","exp":{}}}"#, WALL_START as i64 + exp),
            None => r#"{"oid":"o"}"#.to_owned(),
        };
        let mut response = TokenResponse::new(unsigned_token(&claims));
        if let Some(on) = expires_on {
            response = response.with_expires_on(WALL_START as i64 + on);
        }
        answer_at(&mut h, Duration::from_millis(900), response);
        assert_eq!(expires_in_after_start(&h), secs(1200));
        assert_eq!(
            h.machine.poll_timeout().map(|at| at - h.now),
            Some(Duration::from_millis(839_370)),
            "refresh 0.7 * 1199.1 s after receipt"
        );
    }
}

#[test]
fn integer_expires_in_is_counted_one_second_short() {
    // The server's exp is floor(issue) + lifetime, so "lifetime seconds after the send" may be
    // up to 1 s late when the request left in the second the token was issued.
    let mut h = Harness::new(epoch(), default_exact(), |_| Reply::Hang);
    let response = TokenResponse::new(unsigned_token(r#"{"oid":"o"}"#)).with_expires_in(3600);
    answer_at(&mut h, Duration::from_millis(300), response);
    assert_eq!(expires_in_after_start(&h), secs(3599));
    // Saturating: a 1 s lifetime is no lifetime at all.
    let mut h = Harness::new(epoch(), default_exact(), |_| Reply::Hang);
    let response = TokenResponse::new(unsigned_token(r#"{"oid":"o"}"#)).with_expires_in(1);
    answer_at(&mut h, Duration::ZERO, response);
    assert_eq!(
        h.count_events(|e| matches!(
            e,
            Event::FetchFailed {
                error: FetchError::AlreadyExpired,
                ..
            }
        )),
        1
    );
}

#[test]
fn relative_lifetime_counts_from_when_the_request_was_sent() {
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![Reply::Token {
            ttl: HOUR,
            latency: secs(2),
        }]),
    );
    h.run_for(secs(3));
    match h.machine.status() {
        // One second short, counted from the send at 0 (not from the receipt at 2 s).
        Status::Valid { expires_at, .. } => assert_eq!(expires_at - h.start, secs(3599)),
        other => panic!("{other:?}"),
    }
}

// ----- failures and retries ---------------------------------------------------------------

#[test]
fn retryable_error_then_recovery_backs_off_exponentially() {
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![fail(unavailable()), fail(unavailable()), tok(HOUR)]),
    );
    h.run_for(secs(10));
    assert_eq!(h.fetches, vec![secs(0), secs(1), secs(3)]);
    assert_eq!(h.reauths, vec![(secs(3), Generation(1))]);
    assert!(matches!(h.machine.status(), Status::Valid { .. }));
}

#[test]
fn retries_exhausted_is_reported_once_and_fetching_continues_at_max_delay() {
    let mut h = Harness::new(epoch(), default_exact(), |_| fail(unavailable()));
    h.run_for(secs(600));
    let mut expected = vec![0, 1, 3, 7, 15];
    expected.extend((45..=600).step_by(30));
    assert_eq!(
        h.fetches,
        expected.into_iter().map(secs).collect::<Vec<_>>()
    );
    assert_eq!(
        h.count_events(|e| matches!(e, Event::RetriesExhausted { attempts: 5, .. })),
        1
    );
    assert_eq!(
        h.count_events(|e| matches!(e, Event::RetriesExhausted { .. })),
        1
    );
    assert_eq!(h.machine.status(), Status::Starting { failures: 24 });
}

#[test]
fn recovery_on_the_last_allowed_attempt_does_not_report_exhaustion() {
    let mut replies = vec![fail(unavailable()); 4];
    replies.push(tok(HOUR));
    let mut h = Harness::new(epoch(), default_exact(), sequence(replies));
    h.run_for(secs(60));
    assert_eq!(
        h.count_events(|e| matches!(e, Event::RetriesExhausted { .. })),
        0
    );
    assert_eq!(h.reauths.len(), 1);
}

#[test]
fn exhaustion_is_reported_again_after_a_success_and_a_new_failure_streak() {
    let mut replies = vec![fail(unavailable()); 5];
    replies.push(tok(100));
    replies.extend(vec![fail(unavailable()); 5]);
    replies.push(tok(HOUR));
    let mut h = Harness::new(
        epoch(),
        config(0.7, Duration::ZERO, secs(1)),
        sequence(replies),
    );
    h.run_for(secs(400));
    assert_eq!(
        h.count_events(|e| matches!(e, Event::RetriesExhausted { .. })),
        2
    );
}

#[test]
fn non_retryable_error_waits_max_delay_and_never_stops() {
    let mut h = Harness::new(epoch(), default_exact(), |_| fail(invalid_client()));
    h.run_for(secs(300));
    let expected: Vec<Duration> = (0..=10).map(|n| secs(n * 30)).collect();
    assert_eq!(h.fetches, expected);
    let first = h.events().into_iter().find_map(|(_, e)| match e {
        Event::FetchFailed {
            retryable, error, ..
        } => Some((retryable, error)),
        _ => None,
    });
    let (retryable, error) = first.unwrap();
    assert!(!retryable);
    assert!(error.to_string().contains("invalid_client"), "{error}");
}

#[test]
fn user_predicate_overrides_which_errors_are_retried_quickly() {
    let config = Config::builder()
        .retry(
            RetryPolicy::builder()
                .jitter(0.0)
                .retry_if(|_| true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut h = Harness::new(
        epoch(),
        config,
        sequence(vec![fail(invalid_client()), tok(HOUR)]),
    );
    h.run_for(secs(5));
    assert_eq!(h.fetches, vec![secs(0), secs(1)]);
}

#[test]
fn retry_after_is_honoured_when_it_fits_before_expiry() {
    let throttled = ResponseError::new("throttled", true)
        .with_status(429)
        .with_retry_after(secs(120));
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![tok(HOUR), fail(throttled), tok(HOUR)]),
    );
    h.run_for(secs(2700));
    assert_eq!(h.fetches, vec![secs(0), secs(2520), secs(2640)]);
}

#[test]
fn retry_after_past_expiry_is_pulled_back_to_the_last_useful_start() {
    let throttled = ResponseError::new("throttled", true)
        .with_status(429)
        .with_retry_after(secs(3600));
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![tok(HOUR), fail(throttled), tok(HOUR)]),
    );
    h.run_for(secs(3700));
    // Expiry at 3600, request timeout 10 s: the last start that can still finish in time.
    assert_eq!(&h.fetches[..3], &[secs(0), secs(2520), secs(3590)]);
    assert_eq!(h.count_events(|e| matches!(e, Event::Expired { .. })), 0);
}

#[test]
fn provider_failing_until_just_before_expiry_then_recovering_loses_no_connection() {
    let mut h = Harness::new(epoch(), default_exact(), |ctx| {
        if ctx.index == 0 {
            tok(HOUR)
        } else if ctx.elapsed < secs(3585) {
            fail(TransportError::new("connection refused"))
        } else {
            tok(HOUR)
        }
    });
    h.run_for(secs(3700));
    assert_eq!(
        h.count_events(|e| matches!(e, Event::Expired { .. })),
        0,
        "the token never ran out"
    );
    assert_eq!(
        h.count_events(|e| matches!(e, Event::RetriesExhausted { .. })),
        1
    );
    let second = h
        .reauths
        .iter()
        .find(|(_, g)| *g == Generation(2))
        .unwrap()
        .0;
    assert!(second < secs(3600), "new token pushed at {second:?}");
    // Every retry started before the old token expired.
    assert!(h
        .fetches
        .iter()
        .all(|&at| at < secs(3600) || at > secs(3700)));
}

#[test]
fn backoff_never_carries_a_retry_past_expiry_when_an_earlier_try_is_possible() {
    // Long backoff (max delay 1 h) against a 1 h token.
    let config = Config::builder()
        .retry(
            RetryPolicy::builder()
                .initial_delay(secs(600))
                .max_delay(secs(3600))
                .jitter(0.0)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut h = Harness::new(epoch(), config, |ctx| {
        if ctx.index == 0 {
            tok(HOUR)
        } else {
            fail(unavailable())
        }
    });
    h.run_for(secs(3599));
    // 2520 fails, +600 = 3120 fails, +1200 would be 4320 > 3600: pulled back to 3590.
    assert_eq!(h.fetches, vec![secs(0), secs(2520), secs(3120), secs(3590)]);
}

#[test]
fn hanging_request_is_cut_off_by_the_timeout_and_retried() {
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![Reply::Hang, tok(HOUR)]),
    );
    h.run_for(secs(12));
    assert_eq!(h.fetches, vec![secs(0), secs(11)]);
    let timed_out = h.count_events(|e| matches!(e, Event::FetchFailed { error: FetchError::TimedOut { after }, .. } if *after == secs(10)));
    assert_eq!(timed_out, 1);
    // The late answer of the abandoned request is ignored.
    let late = h.mint(HOUR);
    let now = h.now;
    assert!(!h
        .machine
        .handle_response(RequestId(1), Ok(late), h.wall(), now));
    assert_eq!(
        h.machine.poll_action(),
        Action::Wait {
            until: h.machine.poll_timeout()
        }
    );
}

#[test]
fn request_timeout_never_runs_past_the_current_tokens_validity() {
    let mut h = Harness::new(
        epoch(),
        config(1.0, secs(5), secs(10)),
        sequence(vec![tok(HOUR), Reply::Hang]),
    );
    h.run_for(secs(3596));
    let deadline = h.trace.iter().rev().find_map(|(_, a)| match a {
        Action::FetchToken { deadline, .. } => Some(*deadline),
        _ => None,
    });
    assert_eq!(
        deadline.unwrap() - h.start,
        secs(3600),
        "min(3595 + 10, expiry)"
    );
}

#[test]
fn expired_token_on_arrival_is_rejected_and_backed_off() {
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![tok(0), tok(-5), tok(HOUR)]),
    );
    h.run_for(secs(10));
    assert_eq!(h.fetches, vec![secs(0), secs(1), secs(3)]);
    assert_eq!(
        h.count_events(|e| matches!(
            e,
            Event::FetchFailed {
                error: FetchError::AlreadyExpired,
                ..
            }
        )),
        2
    );
    assert_eq!(
        h.reauths,
        vec![(secs(3), Generation(1))],
        "only the good token reaches connections"
    );
}

#[test]
fn token_without_oid_is_an_error_not_a_default_username() {
    let no_oid = Reply::Response {
        response: TokenResponse::new(unsigned_token(r#"{"exp":1999999999}"#)).with_expires_in(3600),
        latency: Duration::ZERO,
    };
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![no_oid]));
    h.run_for(secs(1));
    assert!(h.machine.credentials().is_none());
    assert_eq!(
        h.count_events(|e| matches!(
            e,
            Event::FetchFailed {
                error: FetchError::Token(JwtError::MissingOid),
                retryable: false,
                ..
            }
        )),
        1
    );
}

#[test]
fn username_override_replaces_the_oid() {
    let config = Config::builder()
        .username_override("app-user")
        .build()
        .unwrap();
    let no_oid = Reply::Response {
        response: TokenResponse::new(unsigned_token(r#"{"exp":1999999999}"#)).with_expires_in(3600),
        latency: Duration::ZERO,
    };
    let h = Harness::new(epoch(), config, sequence(vec![no_oid]));
    let mut h = h;
    h.run_for(secs(1));
    assert_eq!(h.machine.credentials().unwrap().username(), "app-user");
}

#[test]
fn response_without_any_lifetime_is_rejected() {
    let bare = Reply::Response {
        response: TokenResponse::new(unsigned_token(r#"{"oid":"o"}"#)),
        latency: Duration::ZERO,
    };
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![bare]));
    h.run_for(secs(1));
    assert_eq!(
        h.count_events(|e| matches!(
            e,
            Event::FetchFailed {
                error: FetchError::NoLifetime,
                ..
            }
        )),
        1
    );
}

#[test]
fn huge_lifetimes_are_clamped_and_never_overflow() {
    let huge = Reply::Response {
        response: TokenResponse::new(unsigned_token(r#"{"oid":"o","exp":9223372036854775807}"#))
            .with_expires_in(i64::MAX)
            .with_expires_on(i64::MAX)
            .with_refresh_in(i64::MAX),
        latency: Duration::ZERO,
    };
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![huge]));
    h.run_for(secs(1));
    match h.machine.status() {
        Status::Valid { expires_at, .. } => assert_eq!(expires_at - h.start, MAX_TOKEN_LIFETIME),
        other => panic!("{other:?}"),
    }
    let negative = Reply::Response {
        response: TokenResponse::new(unsigned_token(r#"{"oid":"o","exp":-9223372036854775807}"#))
            .with_expires_in(i64::MIN)
            .with_refresh_in(i64::MIN),
        latency: Duration::ZERO,
    };
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![negative]));
    h.run_for(secs(1));
    assert!(h.machine.credentials().is_none());
}

// ----- tokens that are not new, re-authentication -----------------------------------------

#[test]
fn same_token_returned_is_not_pushed_to_connections() {
    let response = {
        let mut h = Harness::new(epoch(), default_exact(), |_| Reply::Hang);
        h.mint(86_400)
    };
    let mut h = Harness::new(epoch(), default_exact(), move |_| Reply::Response {
        // 86 400 s as the machine counts it (one second short)
        response: response.clone().with_expires_in(86_401),
        latency: Duration::ZERO,
    });
    h.run_for(secs(80_000));
    assert_eq!(h.reauths.len(), 1, "the cached token is pushed once");
    // 0.7 * 86400 = 60480, then 0.7 of the 25920 s left = 18144 later.
    assert_eq!(h.fetches, vec![secs(0), secs(60_480), secs(78_624)]);
    assert_eq!(
        h.count_events(|e| matches!(e, Event::TokenNotNewer { .. })),
        2
    );
}

#[test]
fn token_expiring_before_the_current_one_is_not_pushed() {
    let mut h = Harness::new(
        epoch(),
        config(0.5, Duration::ZERO, secs(10)),
        sequence(vec![tok(HOUR), tok(600), tok(HOUR)]),
    );
    h.run_for(secs(1801));
    assert_eq!(h.reauths.len(), 1);
    assert_eq!(
        h.count_events(|e| matches!(e, Event::TokenNotNewer { .. })),
        1
    );
}

#[test]
fn wrongpass_on_reauth_leads_to_a_fresh_fetch() {
    let mut h =
        Harness::new(epoch(), default_exact(), |_| tok(HOUR)).with_reauth(|generation, _| {
            if generation == Generation(1) {
                Err(ReauthError::new(
                    ReauthErrorKind::WrongPass,
                    "WRONGPASS invalid username-password pair",
                ))
            } else {
                Ok(())
            }
        });
    h.run_for(secs(20));
    assert_eq!(
        h.fetches,
        vec![secs(0), secs(10)],
        "fresh fetch after the minimum interval"
    );
    assert_eq!(
        h.reauths,
        vec![(secs(0), Generation(1)), (secs(10), Generation(2))]
    );
    assert_eq!(
        h.count_events(|e| matches!(e, Event::ReauthFailed { .. })),
        1
    );
}

#[test]
fn connection_failure_on_reauth_does_not_refetch() {
    let mut h = Harness::new(epoch(), default_exact(), |_| tok(HOUR)).with_reauth(|_, _| {
        Err(ReauthError::new(
            ReauthErrorKind::Connection,
            "connection reset",
        ))
    });
    h.run_for(secs(100));
    assert_eq!(h.fetches, vec![secs(0)]);
}

#[test]
fn reauth_rejected_forever_refetches_at_most_once_per_min_interval() {
    let mut h = Harness::new(epoch(), default_exact(), |_| tok(HOUR))
        .with_reauth(|_, _| Err(ReauthError::new(ReauthErrorKind::WrongPass, "WRONGPASS")));
    h.run_for(secs(100));
    let expected: Vec<Duration> = (0..=10).map(|n| secs(n * 10)).collect();
    assert_eq!(h.fetches, expected);
}

#[test]
fn stale_reauth_results_are_ignored() {
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![tok(HOUR)]));
    let now = h.now;
    assert!(!h.machine.handle_reauth_result(
        Generation(99),
        Err(ReauthError::new(ReauthErrorKind::WrongPass, "x")),
        now
    ));
    assert_eq!(
        h.machine.poll_action(),
        Action::Wait {
            until: h.machine.poll_timeout()
        }
    );
    h.run_for(secs(100));
    assert_eq!(h.fetches, vec![secs(0)]);
}

#[test]
fn refresh_now_coalesces_and_respects_the_min_interval() {
    let mut h = Harness::new(epoch(), default_exact(), |_| tok(HOUR));
    h.run_for(secs(3));
    let now = h.now;
    h.machine.refresh_now(now);
    h.machine.refresh_now(now);
    h.drain();
    assert_eq!(h.next_fetch_in(), Some(secs(10)));
    h.run_for(secs(20));
    assert_eq!(h.fetches, vec![secs(0), secs(10)]);
    let now = h.now;
    h.machine.refresh_now(now); // 23 s: 13 s after the last fetch, so at once
    h.drain();
    assert_eq!(h.fetches, vec![secs(0), secs(10), secs(23)]);
}

#[test]
fn refresh_requests_during_a_failure_streak_wait_for_the_planned_retry() {
    // A one-hour token, then the provider is down from its first refresh (2520 s) until 2700 s
    // and throttles with Retry-After; meanwhile every reconnect is refused (WRONGPASS) and the
    // application calls refresh_now. None of that may add a token request.
    let outage = |with_requests: bool| {
        let config = Config::builder().rng_seed(99).build().unwrap();
        let mut h = Harness::new(epoch(), config, |ctx| {
            if ctx.index == 0 || ctx.elapsed >= secs(2700) {
                tok(HOUR)
            } else if ctx.index % 3 == 0 {
                fail(
                    ResponseError::new("throttled", true)
                        .with_status(429)
                        .with_retry_after(secs(20)),
                )
            } else {
                fail(unavailable())
            }
        });
        h.run_for(secs(2500));
        for _ in 0..2000 {
            h.run_for(Duration::from_millis(200));
            let retrying = matches!(h.machine.status(), Status::Retrying { .. });
            if with_requests && retrying {
                let now = h.now;
                let rejected = ReauthError::new(ReauthErrorKind::WrongPass, "WRONGPASS");
                h.machine
                    .handle_reauth_result(Generation(1), Err(rejected), now);
                h.machine.refresh_now(now);
                h.drain();
            }
        }
        h.run_for(secs(600));
        let rejections = h.count_events(|e| matches!(e, Event::ReauthFailed { .. }));
        (h.fetches, rejections)
    };
    let (quiet, no_rejections) = outage(false);
    let (busy, rejections) = outage(true);
    assert_eq!(no_rejections, 0);
    assert!(rejections > 500, "the refusals were fed: {rejections}");
    assert!(
        quiet.len() > 5,
        "the outage had a failure streak: {quiet:?}"
    );
    assert_eq!(busy, quiet, "same token requests, at the same instants");
}

// ----- time -------------------------------------------------------------------------------

#[test]
fn wall_clock_jumps_do_not_move_monotonic_deadlines() {
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![tok(HOUR)]));
    h.run_for(Duration::ZERO);
    let before = h.machine.poll_timeout();
    h.wall_skew = 7200;
    h.run_for(secs(100));
    h.wall_skew = -7200;
    h.run_for(secs(100));
    assert_eq!(h.machine.poll_timeout(), before);
    h.run_for(secs(2400));
    assert_eq!(h.fetches, vec![secs(0), secs(2520)]);
}

#[test]
fn absolute_expiry_is_converted_with_the_wall_clock_at_receipt() {
    let mut h = Harness::new(epoch(), default_exact(), |_| Reply::Hang);
    h.wall_skew = 3600; // the wall clock jumped an hour ahead before the answer
    let wall = WALL_START as i64 + 3600;
    let response =
        TokenResponse::new(unsigned_token(r#"{"oid":"o"}"#)).with_expires_on(wall + 1200);
    let now = h.now;
    let wall_now = h.wall();
    assert!(h
        .machine
        .handle_response(RequestId(1), Ok(response), wall_now, now));
    h.drain();
    match h.machine.status() {
        Status::Valid { expires_at, .. } => assert_eq!(expires_at - h.start, secs(1200)),
        other => panic!("{other:?}"),
    }
}

/// A fresh token as the provider's (correct) clock sees it at `elapsed`: `exp` and maybe
/// `expires_on` are server time, whatever the host clock says
fn server_token(index: usize, elapsed: Duration, ttl: i64, relative: bool) -> TokenResponse {
    let exp = WALL_START as i64 + elapsed.as_secs() as i64 + ttl;
    let token = unsigned_token(&format!(r#"{{"oid":"o","exp":{exp},"jti":"{index}"}}"#));
    let response = TokenResponse::new(token).with_expires_on(exp);
    if relative {
        response.with_expires_in(ttl)
    } else {
        response
    }
}

fn skews(h: &Harness) -> Vec<(bool, Duration, SkewEvidence)> {
    h.events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::ClockSkew {
                host_ahead,
                by,
                evidence,
            } => Some((host_ahead, by, evidence)),
            _ => None,
        })
        .collect()
}

#[test]
fn host_clock_ahead_trusts_expires_in_and_reports_the_skew() {
    // 61 min ahead: every one-hour token used to look expired (total outage); 45 min ahead:
    // refreshes every 10 s. Now the schedule is the normal one.
    for minutes_ahead in [45, 61] {
        let mut h = Harness::new(epoch(), default_exact(), |ctx| Reply::Response {
            response: server_token(ctx.index, ctx.elapsed, HOUR, true),
            latency: Duration::ZERO,
        });
        h.wall_skew = minutes_ahead * 60;
        h.run_for(secs(10 * 3600));
        assert_eq!(h.fetches.len(), 15, "{minutes_ahead} min: {:?}", h.fetches);
        assert_eq!(
            h.count_events(|e| matches!(e, Event::FetchFailed { .. })),
            0
        );
        assert_eq!(h.count_events(|e| matches!(e, Event::Expired { .. })), 0);
        let reported = skews(&h);
        assert_eq!(reported.len(), 15, "once per response that shows it");
        // expires_in 3599 s against exp (3600 s - the wall's fraction) - skew: short by
        // skew - 1 s + fraction.
        let skew = secs(minutes_ahead as u64 * 60);
        assert!(
            reported.iter().all(|&(ahead, by, evidence)| ahead
                && by >= skew - S
                && by < skew
                && evidence == SkewEvidence::Lifetimes),
            "{reported:?}"
        );
        assert_eq!(reported[0].1, skew - S);
    }
    // Within the tolerance the host clock is believed: 4 min ahead shortens the lifetime.
    let mut h = Harness::new(epoch(), default_exact(), |ctx| Reply::Response {
        response: server_token(ctx.index, ctx.elapsed, HOUR, true),
        latency: Duration::ZERO,
    });
    h.wall_skew = 240;
    h.run_for(Duration::ZERO);
    assert_eq!(expires_in_after_start(&h), secs(3600 - 240));
    assert!(skews(&h).is_empty());
    // A tolerance larger than the skew restores "earliest wins", whatever the host says.
    let config = Config::builder()
        .clock_skew_tolerance(secs(2 * 3600))
        .build()
        .unwrap();
    let mut h = Harness::new(epoch(), config, |ctx| Reply::Response {
        response: server_token(ctx.index, ctx.elapsed, HOUR, true),
        latency: Duration::ZERO,
    });
    h.wall_skew = 61 * 60;
    h.run_for(Duration::ZERO);
    assert_eq!(
        h.count_events(|e| matches!(
            e,
            Event::FetchFailed {
                error: FetchError::AlreadyExpired,
                ..
            }
        )),
        1
    );
}

#[test]
fn server_date_converts_absolute_expiry_when_the_host_clock_is_wrong() {
    // App Service answers carry only expires_on; the Date header gives the server's clock.
    for host_skew in [61 * 60, -2 * 3600] {
        let mut h = Harness::new(epoch(), default_exact(), |_| Reply::Hang);
        h.wall_skew = host_skew;
        let server_now = std::time::UNIX_EPOCH + secs(WALL_START);
        let response = server_token(0, Duration::ZERO, HOUR, false).with_server_date(server_now);
        answer_at(&mut h, Duration::ZERO, response);
        // Date + 1 s (it is rounded down) + latency (0): 3599 s left.
        assert_eq!(expires_in_after_start(&h), secs(3599), "skew {host_skew}");
        assert_eq!(
            skews(&h),
            vec![(
                host_skew > 0,
                secs(host_skew.unsigned_abs()),
                SkewEvidence::ServerDate
            )]
        );
    }
    // A Date earlier than the token's own issue time is not the issuer's clock: ignored.
    let mut h = Harness::new(epoch(), default_exact(), |_| Reply::Hang);
    let issued = WALL_START as i64;
    let token = unsigned_token(&format!(
        r#"{{"oid":"o","iat":{issued},"exp":{}}}"#,
        issued + 3600
    ));
    let response = TokenResponse::new(token).with_server_date(std::time::UNIX_EPOCH);
    answer_at(&mut h, Duration::ZERO, response);
    assert_eq!(expires_in_after_start(&h), secs(3600));
    assert!(skews(&h).is_empty());
}

#[test]
fn host_clock_behind_never_lengthens_a_relative_lifetime() {
    let mut h = Harness::new(epoch(), default_exact(), |ctx| Reply::Response {
        response: server_token(ctx.index, ctx.elapsed, HOUR, true),
        latency: Duration::ZERO,
    });
    h.wall_skew = -3 * 3600;
    h.run_for(Duration::ZERO);
    assert_eq!(expires_in_after_start(&h), secs(3599));
    assert_eq!(
        skews(&h),
        vec![(false, secs(3 * 3600 + 1), SkewEvidence::Lifetimes)]
    );
}

#[test]
fn now_going_backwards_is_clamped() {
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![tok(HOUR)]));
    h.run_for(secs(100));
    let now = h.now;
    h.machine.handle_timeout(now); // the machine has now seen 100 s
    let timeout = h.machine.poll_timeout();
    let earlier = h.start;
    h.machine.handle_timeout(earlier);
    assert_eq!(
        h.machine.poll_timeout(),
        timeout,
        "a stale now fires nothing"
    );
    h.machine.refresh_now(earlier);
    h.drain();
    // The refresh was judged at the clamped now (100 s): past the minimum interval, so at once.
    assert_eq!(h.fetches, vec![secs(0), secs(100)]);
}

#[test]
fn suspend_past_expiry_reports_expiry_once_and_fetches_once() {
    let mut h = Harness::new(epoch(), default_exact(), |_| tok(HOUR));
    h.run_for(secs(100));
    h.clear_trace();
    h.now += Duration::from_secs(5 * 3600); // the laptop slept for five hours
    h.run_for(Duration::ZERO);
    assert_eq!(
        h.count_events(|e| matches!(
            e,
            Event::Expired {
                generation: Generation(1)
            }
        )),
        1
    );
    assert_eq!(h.fetches.len(), 1);
    assert_eq!(h.reauths.len(), 1, "the fresh token is pushed at once");
    assert!(matches!(
        h.machine.status(),
        Status::Valid {
            generation: Generation(2),
            ..
        }
    ));
}

// ----- lifecycle --------------------------------------------------------------------------

#[test]
fn status_follows_the_token_through_its_life() {
    let mut h = Harness::new(epoch(), default_exact(), |ctx| match ctx.index {
        0 => fail(unavailable()),
        1 => tok(60),
        _ => fail(unavailable()),
    });
    assert_eq!(h.machine.status(), Status::Starting { failures: 0 });
    h.run_for(Duration::ZERO);
    assert_eq!(h.machine.status(), Status::Starting { failures: 1 });
    h.run_for(S);
    assert!(matches!(
        h.machine.status(),
        Status::Valid {
            generation: Generation(1),
            ..
        }
    ));
    h.run_for(secs(10));
    assert!(matches!(
        h.machine.status(),
        Status::Retrying { failures: 1, .. }
    ));
    h.run_for(secs(60));
    assert!(matches!(
        h.machine.status(),
        Status::Expired {
            generation: Generation(1),
            ..
        }
    ));
    let now = h.now;
    h.machine.shutdown(now);
    assert_eq!(h.machine.status(), Status::Stopped);
}

#[test]
fn shutdown_during_backoff_stops_everything() {
    let mut h = Harness::new(epoch(), default_exact(), |_| fail(unavailable()));
    h.run_for(secs(2));
    let now = h.now;
    h.machine.shutdown(now);
    assert_eq!(h.machine.poll_action(), Action::Event(Event::Stopped));
    assert_eq!(h.machine.poll_action(), Action::Wait { until: None });
    h.machine.handle_timeout(now + secs(1000));
    h.machine.refresh_now(now + secs(1000));
    assert!(!h
        .machine
        .handle_response(RequestId(3), Err(unavailable()), h.wall(), now));
    assert_eq!(h.machine.poll_action(), Action::Wait { until: None });
    assert_eq!(h.machine.poll_timeout(), None);
    assert_eq!(h.machine.timeout_reason(), None);
}

#[test]
fn spurious_timeouts_are_no_ops() {
    let mut h = Harness::new(epoch(), default_exact(), sequence(vec![tok(HOUR)]));
    h.run_for(Duration::ZERO);
    h.clear_trace();
    for n in 1..100 {
        let now = h.start + Duration::from_millis(n);
        h.machine.handle_timeout(now);
    }
    h.drain();
    assert!(h.trace.is_empty());
    assert_eq!(h.machine.timeout_reason(), Some(TimerKind::Refresh));
}

#[test]
fn same_seed_and_inputs_give_the_same_action_trace() {
    let run = || {
        let config = Config::builder()
            .refresh(RefreshPolicy::builder().jitter(0.3).build().unwrap())
            .rng_seed(1234)
            .build()
            .unwrap();
        let mut h = Harness::new(epoch(), config, |ctx| {
            if ctx.index % 3 == 1 {
                fail(unavailable())
            } else {
                tok(HOUR)
            }
        });
        h.run_for(secs(20_000));
        h.normalized_trace()
    };
    assert_eq!(run(), run());
}

#[test]
fn unseeded_configs_jitter_by_their_entropy_and_explicit_seeds_win() {
    // Retry jitter (default ±20 %) and refresh jitter both come from the seeded generator.
    let jittered =
        || Config::builder().refresh(RefreshPolicy::builder().jitter(0.3).build().unwrap());
    let fetches = |config: Config| {
        let mut h = Harness::new(epoch(), config, |ctx| {
            if ctx.index % 4 == 3 {
                tok(HOUR)
            } else {
                fail(unavailable())
            }
        });
        h.run_for(secs(4 * 3600));
        h.fetches
    };
    let unseeded = || jittered().build().unwrap();
    assert_eq!(unseeded().rng_seed(), None);
    let a = fetches(unseeded().with_seed_if_unset(1));
    let b = fetches(unseeded().with_seed_if_unset(2));
    assert_ne!(
        a[1], b[1],
        "different processes retry at different instants"
    );
    assert_ne!(a[4], b[4], "and refresh at different instants");
    assert_eq!(a, fetches(unseeded().with_seed_if_unset(1)));
    let pinned = || jittered().rng_seed(7).build().unwrap();
    assert_eq!(
        fetches(pinned().with_seed_if_unset(1)),
        fetches(pinned().with_seed_if_unset(2)),
        "an explicit seed is kept, whatever the entropy"
    );
}

#[test]
fn first_fetch_is_planned_at_construction() {
    let h = Harness::new(epoch(), default_exact(), |_| Reply::Hang);
    assert_eq!(h.fetches, vec![Duration::ZERO]);
    assert!(h.machine.is_fetching());
    assert_eq!(h.machine.timeout_reason(), Some(TimerKind::RequestTimeout));
}

#[test]
fn transport_errors_are_retryable_and_permanent_ones_are_not() {
    let mut h = Harness::new(
        epoch(),
        default_exact(),
        sequence(vec![
            fail(TransportError::permanent("az: command not found")),
            tok(HOUR),
        ]),
    );
    h.run_for(secs(40));
    assert_eq!(h.fetches, vec![secs(0), secs(30)]);
}
