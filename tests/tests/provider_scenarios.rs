//! The provider's contract, written once and run on every runtime (blocking, tokio,
//! async-std/smol) with scripted identity endpoints and sub-second tokens on real time
//!
//! Each scenario is a function generic over [`Runtime`]; `every_runtime!` below runs it as
//! `blocking::name`, `tokio::name` and `async_std::name`. What only one runtime can show stays
//! in its crate: tokio's paused-time tests (a day of hourly tokens, retries past exhaustion, the
//! default 10 s request timeout, the slow pace of permanent errors, a lagging broadcast receiver)
//! in `runtime-tokio/tests/driver.rs`; the async-std driver under async-std's own executor in
//! `runtime-async-std/tests/provider.rs`. The command flood measures this process's memory and
//! so must not share it with parallel tests: it runs for every runtime, serialized, in
//! `bounded_resources.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

#[path = "common/runtime.rs"]
mod runtime;

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis_entraid_core::config::{Config, RetryPolicy};
use redis_entraid_core::error::{EntraErrorBody, ReauthError, ResponseError};
use redis_entraid_core::event::{Event, Generation, Status};
use redis_entraid_core::startup::{Startup, StartupError};
use redis_entraid_core::testing::Reply;
use runtime::{
    fast_config, AsyncStd, Blocking, EventStream as _, ProviderHandle as _, Runtime, Script,
    Settings, SubscriptionHandle as _, Tokio,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn unavailable() -> ResponseError {
    ResponseError::new("service unavailable", true).with_status(503)
}

/// Waits up to `limit` for [`Event::Stopped`], skipping other events
fn stopped_within(events: &mut impl runtime::EventStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(event) = events.recv_within(deadline.saturating_duration_since(Instant::now())) {
        if matches!(event, Event::Stopped) {
            return true;
        }
    }
    false
}

fn wait_startup_returns_with_the_first_token<R: Runtime>() {
    let script = Script::tokens(3600);
    let provider = R::start(Settings::fast(), script.clone()).unwrap();
    assert_eq!(provider.credentials().unwrap().username(), "oid-1");
    assert!(
        matches!(
            provider.status(),
            Status::Valid {
                generation: Generation(1),
                ..
            }
        ),
        "{:?}",
        provider.status()
    );
    assert_eq!(script.calls(), 1);
}

fn wait_startup_retries_through_failures<R: Runtime>() {
    let script = Script::new(|n| {
        if n < 2 {
            Reply::fail(unavailable())
        } else {
            Reply::token(3600)
        }
    });
    let provider = R::start(Settings::fast(), script.clone()).unwrap();
    assert_eq!(provider.credentials().unwrap().username(), "oid-3");
    assert_eq!(script.calls(), 3);
    assert!(
        provider.last_error().is_none(),
        "a success clears the last error"
    );
}

fn wait_startup_times_out_with_the_last_error<R: Runtime>() {
    let started = Instant::now();
    let err = R::start(
        Settings::fast().startup(Startup::Wait(ms(300))),
        Script::failing(unavailable()),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(took >= ms(300) && took < secs(3), "took {took:?}");
    match err {
        StartupError::TimedOut {
            waited,
            last_error: Some(e),
        } => {
            assert_eq!(waited, ms(300));
            assert!(e.to_string().contains("503"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// Retries 5 s apart: a second fetch within the test would mean fail-fast retried
fn slow_retries() -> Config {
    Config::builder()
        .retry(
            RetryPolicy::builder()
                .initial_delay(secs(5))
                .max_delay(secs(5))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn fail_fast_startup_returns_the_first_error<R: Runtime>() {
    let script = Script::new(|n| {
        if n == 0 {
            Reply::fail(
                ResponseError::new("token request rejected", false)
                    .with_status(401)
                    .with_entra(
                        EntraErrorBody::new("invalid_client")
                            .with_description("AADSTS7000215: Invalid client secret provided."),
                    ),
            )
        } else {
            Reply::token(3600)
        }
    });
    let settings = Settings::fast()
        .config(slow_retries())
        .startup(Startup::FailFast);
    let started = Instant::now();
    let err = R::start(settings, script.clone()).unwrap_err();
    assert!(started.elapsed() < secs(3), "waited for a retry");
    assert!(matches!(err, StartupError::FetchFailed(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("invalid_client") && text.contains("AADSTS7000215"),
        "{text}"
    );
    assert_eq!(script.calls(), 1);
}

fn lazy_startup_returns_at_once_and_the_token_follows<R: Runtime>() {
    // The first fetch blocks until the test lets it answer (or 5 s pass), so a build that
    // waited for the token would come back late, and with credentials.
    let (open, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let script = Script::new(move |_| {
        let _ = gate.lock().unwrap().recv_timeout(secs(5));
        Reply::token(3600)
    });
    let started = Instant::now();
    let provider = R::start(Settings::fast().startup(Startup::Lazy), script).unwrap();
    assert!(provider.credentials().is_none());
    assert!(
        started.elapsed() < secs(2),
        "took {:?}: a lazy build waited for the fetch",
        started.elapsed()
    );
    drop(open);
    let (generation, credentials) = provider.wait_newer(None, secs(5)).unwrap();
    assert_eq!(
        (generation, credentials.username()),
        (Generation(1), "oid-1")
    );
}

fn short_tokens_rotate_and_subscribers_see_every_generation_in_order<R: Runtime>() {
    // `expires_in: 2` counts as 1 s (integer lifetimes are counted 1 s short): a refresh
    // every half second.
    let script = Script::tokens(2);
    let provider = R::start(Settings::fast(), script.clone()).unwrap();
    let mut subscription = provider.subscribe();
    let mut seen = vec![subscription.changed().unwrap().0 .0];
    let deadline = Instant::now() + secs(4);
    while Instant::now() < deadline && seen.len() < 4 {
        if let Some((generation, _)) = subscription.wait_changed(secs(2)) {
            seen.push(generation.0);
        }
    }
    assert!(seen.len() >= 4, "generations seen: {seen:?}");
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
    assert!(script.calls() >= 4);
}

fn a_subscription_returns_each_generation_once<R: Runtime>() {
    let provider = R::start(Settings::fast(), Script::tokens(3600)).unwrap();
    let mut subscription = provider.subscribe();
    assert_eq!(subscription.next_if_changed().unwrap().0, Generation(1));
    assert!(subscription.next_if_changed().is_none());
    assert!(subscription.wait_changed(ms(100)).is_none());
    assert!(provider.wait_newer(Some(Generation(1)), ms(100)).is_none());
    provider.refresh_now();
    assert_eq!(subscription.wait_changed(secs(5)).unwrap().0, Generation(2));
    assert!(subscription.next_if_changed().is_none());
    // Another subscription starts from nothing: it sees the current generation.
    assert_eq!(
        provider.subscribe().next_if_changed().unwrap().0,
        Generation(2)
    );
    assert_eq!(provider.wait_newer(None, ms(1)).unwrap().0, Generation(2));
}

fn refresh_now_fetches_a_new_token<R: Runtime>() {
    let script = Script::tokens(3600);
    let provider = R::start(Settings::fast(), script.clone()).unwrap();
    std::thread::sleep(ms(20)); // past the 10 ms minimum interval
    provider.refresh_now();
    let (generation, credentials) = provider.wait_newer(Some(Generation(1)), secs(5)).unwrap();
    assert_eq!(
        (generation, credentials.username()),
        (Generation(2), "oid-2")
    );
    assert_eq!(script.calls(), 2);
}

fn a_burst_of_refresh_requests_is_one_fetch_after_the_minimum_interval<R: Runtime>() {
    let script = Script::tokens(3600);
    let settings = Settings::fast().config(fast_config(ms(300)));
    let before_build = Instant::now();
    let provider = R::start(settings, script.clone()).unwrap();
    for _ in 0..1000 {
        provider.refresh_now();
    }
    assert_eq!(
        provider.wait_newer(Some(Generation(1)), secs(5)).unwrap().0,
        Generation(2)
    );
    // The first fetch started after `before_build`, the second at least 300 ms after it.
    let started = script.started();
    assert!(
        started[1] >= before_build + ms(300),
        "the second fetch came {:?} after the build began",
        started[1] - before_build
    );
    // Nothing of the burst is left over for another fetch.
    assert!(provider.wait_newer(Some(Generation(2)), ms(600)).is_none());
    assert_eq!(script.calls(), 2);
}

fn a_rejected_reauth_is_reported_and_fetches_a_fresh_token<R: Runtime>() {
    let provider = R::start(Settings::fast(), Script::tokens(3600)).unwrap();
    let mut events = provider.events();
    provider.report_reauth(
        Generation(1),
        Err(ReauthError::from_server_reply(
            "WRONGPASS invalid username-password pair",
        )),
    );
    let (generation, _) = provider.wait_newer(Some(Generation(1)), secs(5)).unwrap();
    assert_eq!(generation, Generation(2));
    let got = events.drain();
    assert!(
        got.iter().any(|e| matches!(
            e,
            Event::ReauthFailed {
                generation: Generation(1),
                ..
            }
        )),
        "{got:?}"
    );
}

fn a_slow_event_subscriber_never_delays_refreshes_and_its_drops_are_counted<R: Runtime>() {
    // `expires_in: 2` counts as 1 s: a refresh every half second.
    let provider = R::start(Settings::fast().event_capacity(1), Script::tokens(2)).unwrap();
    let _never_read = provider.events();
    let reached = provider.wait_newer(Some(Generation(3)), secs(5));
    assert!(reached.is_some(), "refreshes stalled");
    assert!(provider.dropped_events() > 0);
}

fn a_hung_fetch_is_timed_out_and_retried_and_dropping_stays_prompt<R: Runtime>() {
    // The first request hangs for 3 s, past its 500 ms timeout; the retry answers.
    let script = Script::new(|n| {
        if n == 0 {
            Reply::Hang
        } else {
            Reply::token(3600)
        }
    });
    let provider = R::start(Settings::fast(), script).unwrap();
    assert_eq!(provider.credentials().unwrap().username(), "oid-2");
    let mut events = provider.events();
    let started = Instant::now();
    drop(provider);
    assert!(
        started.elapsed() < ms(500),
        "drop took {:?}",
        started.elapsed()
    );
    // The driver ends while the hung fetch still sleeps.
    assert!(stopped_within(&mut events, secs(1)));
}

fn dropping_the_last_handle_stops_the_driver<R: Runtime>() {
    let script = Script::tokens(3600);
    let provider = R::start(Settings::fast(), script.clone()).unwrap();
    let mut events = provider.events();
    let clone = provider.clone();
    drop(provider);
    assert!(
        clone.credentials().is_some(),
        "a clone keeps the driver alive"
    );
    assert!(!script.released());
    drop(clone);
    if R::DROP_JOINS_DRIVER {
        assert!(
            script.released(),
            "the drop returned before the driver ended"
        );
    }
    assert!(stopped_within(&mut events, secs(2)));
    assert!(
        runtime::eventually(secs(2), || script.released()),
        "the driver still holds its fetcher"
    );
}

fn shutdown_stops_every_clone_and_ends_subscriptions<R: Runtime>() {
    let provider = R::start(Settings::fast(), Script::tokens(3600)).unwrap();
    let clone = provider.clone();
    let mut events = provider.events();
    let mut subscription = clone.subscribe();
    assert!(subscription.next_if_changed().is_some());
    provider.shutdown();
    assert_eq!(clone.status(), Status::Stopped);
    assert!(stopped_within(&mut events, secs(2)));
    // Waiting ends instead of lasting for ever (or for the whole timeout).
    assert!(subscription.changed().is_none());
    let started = Instant::now();
    assert!(clone.wait_newer(Some(Generation(1)), secs(5)).is_none());
    assert!(started.elapsed() < secs(1), "took {:?}", started.elapsed());
}

/// Runs each scenario on every runtime: `blocking::name`, `tokio::name`, `async_std::name`
macro_rules! every_runtime {
    ($($scenario:ident),+ $(,)?) => {
        every_runtime!(@one blocking, Blocking, $($scenario),+);
        every_runtime!(@one tokio, Tokio, $($scenario),+);
        every_runtime!(@one async_std, AsyncStd, $($scenario),+);
    };
    (@one $module:ident, $runtime:ident, $($scenario:ident),+) => {
        mod $module {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario::<super::$runtime>();
                }
            )+
        }
    };
}

every_runtime!(
    wait_startup_returns_with_the_first_token,
    wait_startup_retries_through_failures,
    wait_startup_times_out_with_the_last_error,
    fail_fast_startup_returns_the_first_error,
    lazy_startup_returns_at_once_and_the_token_follows,
    short_tokens_rotate_and_subscribers_see_every_generation_in_order,
    a_subscription_returns_each_generation_once,
    refresh_now_fetches_a_new_token,
    a_burst_of_refresh_requests_is_one_fetch_after_the_minimum_interval,
    a_rejected_reauth_is_reported_and_fetches_a_fresh_token,
    a_slow_event_subscriber_never_delays_refreshes_and_its_drops_are_counted,
    a_hung_fetch_is_timed_out_and_retried_and_dropping_stays_prompt,
    dropping_the_last_handle_stops_the_driver,
    shutdown_stops_every_clone_and_ends_subscriptions,
);
