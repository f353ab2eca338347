//! The blocking provider on real threads and real time, with sub-second tokens

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_entraid_blocking::{Provider, Startup, StartupError};
use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy};
use redis_entraid_core::error::{
    EntraErrorBody, FetchError, ReauthError, ReauthErrorKind, ResponseError,
};
use redis_entraid_core::event::{Event, Generation, Status};
use redis_entraid_core::testing::unsigned_token;
use redis_entraid_core::token::TokenResponse;

/// Token number `n` (its `oid` is `oid-{n}`), valid for `ttl_s` seconds
fn token(n: u32, ttl_s: i64) -> TokenResponse {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + ttl_s;
    TokenResponse::new(unsigned_token(&format!(
        r#"{{"oid":"oid-{n}","exp":{exp}}}"#
    )))
    .with_expires_in(ttl_s)
}

/// Fast settings: refresh at half-life, tiny intervals
fn fast() -> Config {
    Config::builder()
        .refresh(
            RefreshPolicy::builder()
                .ratio(0.5)
                .lower_bound(Duration::ZERO)
                .min_interval(Duration::from_millis(10))
                .build()
                .unwrap(),
        )
        .retry(
            RetryPolicy::builder()
                .initial_delay(Duration::from_millis(20))
                .max_delay(Duration::from_millis(200))
                .build()
                .unwrap(),
        )
        .request_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn counting_source(
    ttl_s: i64,
) -> (
    Arc<AtomicU32>,
    impl Fn(Duration) -> Result<TokenResponse, FetchError> + Send + Sync,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let source = move |_timeout: Duration| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(token(n, ttl_s))
    };
    (calls, source)
}

#[test]
fn wait_startup_returns_with_the_first_token() {
    let (_, source) = counting_source(3600);
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(source)
        .unwrap();
    let credentials = provider.credentials().unwrap();
    assert_eq!(credentials.username(), "oid-1");
    assert!(matches!(
        provider.status(),
        Status::Valid {
            generation: Generation(1),
            ..
        }
    ));
}

#[test]
fn fail_fast_startup_returns_the_first_error() {
    let source = |_t: Duration| -> Result<TokenResponse, FetchError> {
        Err(ResponseError::new("token request rejected", false)
            .with_status(401)
            .with_entra(
                EntraErrorBody::new("invalid_client")
                    .with_description("AADSTS7000215: Invalid client secret provided."),
            )
            .into())
    };
    let err = Provider::builder()
        .config(fast())
        .startup(Startup::FailFast)
        .build_with_fetcher(source)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StartupError::FetchFailed(_)), "{err:?}");
    assert!(
        text.contains("invalid_client") && text.contains("AADSTS7000215"),
        "{text}"
    );
}

#[test]
fn wait_startup_times_out_with_the_last_error() {
    let source = |_t: Duration| -> Result<TokenResponse, FetchError> {
        Err(ResponseError::new("service unavailable", true)
            .with_status(503)
            .into())
    };
    let started = Instant::now();
    let err = Provider::builder()
        .config(fast())
        .startup(Startup::Wait(Duration::from_millis(300)))
        .build_with_fetcher(source)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    match err {
        StartupError::TimedOut {
            last_error: Some(e),
            ..
        } => assert!(e.to_string().contains("503")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn lazy_startup_returns_at_once_and_the_token_follows() {
    let source = |_t: Duration| {
        std::thread::sleep(Duration::from_millis(200));
        Ok(token(7, 3600))
    };
    let started = Instant::now();
    let provider = Provider::builder()
        .config(fast())
        .startup(Startup::Lazy)
        .build_with_fetcher(source)
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(150));
    assert!(provider.credentials().is_none());
    let (generation, credentials) = provider.wait_newer(None, Duration::from_secs(5)).unwrap();
    assert_eq!(
        (generation, credentials.username()),
        (Generation(1), "oid-7")
    );
}

#[test]
fn short_tokens_rotate_and_every_generation_reaches_subscribers() {
    let (calls, source) = counting_source(2); // counts as 1 s: integer lifetimes are counted 1 s short
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(source)
        .unwrap();
    let mut subscription = provider.subscribe();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline && seen.len() < 4 {
        if let Some((generation, _)) = subscription.wait_changed(Duration::from_secs(2)) {
            seen.push(generation.0);
        }
    }
    assert!(seen.len() >= 4, "generations seen: {seen:?}");
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
    assert!(calls.load(Ordering::SeqCst) >= 4);
}

#[test]
fn refresh_now_fetches_a_new_token() {
    let (calls, source) = counting_source(3600);
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(source)
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    provider.refresh_now();
    let (generation, _) = provider
        .wait_newer(Some(Generation(1)), Duration::from_secs(5))
        .unwrap();
    assert_eq!(generation, Generation(2));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn wrongpass_report_fetches_a_fresh_token_and_reports_an_event() {
    let (_, source) = counting_source(3600);
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(source)
        .unwrap();
    let events = provider.events();
    provider.report_reauth(
        Generation(1),
        Err(ReauthError::new(
            ReauthErrorKind::WrongPass,
            "WRONGPASS invalid",
        )),
    );
    let (generation, _) = provider
        .wait_newer(Some(Generation(1)), Duration::from_secs(5))
        .unwrap();
    assert_eq!(generation, Generation(2));
    let got: Vec<Event> = events.try_iter().collect();
    assert!(
        got.iter().any(|e| matches!(e, Event::ReauthFailed { .. })),
        "{got:?}"
    );
}

#[test]
fn a_slow_event_subscriber_never_delays_refreshes() {
    let (_, source) = counting_source(2); // counts as 1 s: integer lifetimes are counted 1 s short
    let provider = Provider::builder()
        .config(fast())
        .event_capacity(1)
        .build_with_fetcher(source)
        .unwrap();
    let _never_read = provider.events();
    let reached = provider.wait_newer(Some(Generation(3)), Duration::from_secs(5));
    assert!(reached.is_some(), "refreshes continued");
    assert!(provider.dropped_events() > 0);
}

#[test]
fn a_hanging_source_is_timed_out_and_shutdown_stays_prompt() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let source = move |_t: Duration| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_secs(3));
        }
        Ok(token(2, 3600))
    };
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(source)
        .unwrap();
    // The first request hung past its 500 ms timeout; the retry answered.
    assert_eq!(provider.credentials().unwrap().username(), "oid-2");
    let started = Instant::now();
    drop(provider);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "drop joined the driver promptly"
    );
}

#[test]
fn dropping_the_last_handle_stops_the_driver() {
    let marker = Arc::new(());
    let held = Arc::clone(&marker);
    let source = move |_t: Duration| {
        let _keep = &held;
        Ok(token(1, 3600))
    };
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(source)
        .unwrap();
    let clone = provider.clone();
    drop(provider);
    assert!(
        clone.credentials().is_some(),
        "a clone keeps the driver alive"
    );
    assert_eq!(Arc::strong_count(&marker), 2);
    drop(clone);
    assert_eq!(
        Arc::strong_count(&marker),
        1,
        "the driver thread and its source are gone"
    );
}

#[test]
fn shutdown_is_visible_to_every_clone() {
    let (_, source) = counting_source(3600);
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(source)
        .unwrap();
    let clone = provider.clone();
    provider.shutdown();
    assert_eq!(clone.status(), Status::Stopped);
}
