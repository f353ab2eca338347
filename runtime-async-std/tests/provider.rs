//! The async-io provider under async-std and smol, on real time with short tokens

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_entraid_async_std::{Provider, Startup, StartupError};
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

fn counting(
    ttl_s: i64,
) -> (
    Arc<AtomicU32>,
    impl Fn(Duration) -> Result<TokenResponse, FetchError> + Send + Sync,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    (calls, move |_t: Duration| {
        Ok(token(counter.fetch_add(1, Ordering::SeqCst) + 1, ttl_s))
    })
}

fn spawn_async_std(driver: redis_entraid_async_std::Driver) {
    async_std::task::spawn(driver);
}

#[async_std::test]
async fn wait_startup_returns_with_the_first_token_under_async_std() {
    let (_, fetcher) = counting(3600);
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(fetcher, spawn_async_std)
        .await
        .unwrap();
    assert_eq!(provider.credentials().unwrap().username(), "oid-1");
    assert!(matches!(
        provider.status(),
        Status::Valid {
            generation: Generation(1),
            ..
        }
    ));
}

#[test]
fn short_tokens_rotate_under_smol_and_subscribers_see_every_generation_in_order() {
    smol::block_on(async {
        // `expires_in: 2` counts as 1 s: integer lifetimes are counted 1 s short (the server's
        // `exp` may end up to 1 s before `sent + expires_in`).
        let (_, fetcher) = counting(2);
        let provider = Provider::builder()
            .config(fast())
            .build_with_fetcher(fetcher, |d| smol::spawn(d).detach())
            .await
            .unwrap();
        let mut subscription = provider.subscribe();
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let (generation, _) = subscription.changed().await.unwrap();
            seen.push(generation.0);
        }
        assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
    });
}

#[async_std::test]
async fn fail_fast_startup_returns_the_first_error() {
    let fetcher = |_t: Duration| -> Result<TokenResponse, FetchError> {
        Err(ResponseError::new("token request rejected", false)
            .with_status(401)
            .with_entra(EntraErrorBody::new("invalid_client"))
            .into())
    };
    let err = Provider::builder()
        .config(fast())
        .startup(Startup::FailFast)
        .build_with_fetcher(fetcher, spawn_async_std)
        .await
        .unwrap_err();
    assert!(matches!(err, StartupError::FetchFailed(_)), "{err:?}");
    assert!(err.to_string().contains("invalid_client"));
}

#[async_std::test]
async fn wait_startup_times_out_with_the_last_error() {
    let fetcher = |_t: Duration| -> Result<TokenResponse, FetchError> {
        Err(ResponseError::new("service unavailable", true)
            .with_status(503)
            .into())
    };
    let err = Provider::builder()
        .config(fast())
        .startup(Startup::Wait(Duration::from_millis(300)))
        .build_with_fetcher(fetcher, spawn_async_std)
        .await
        .unwrap_err();
    match err {
        StartupError::TimedOut {
            last_error: Some(e),
            ..
        } => assert!(e.to_string().contains("503")),
        other => panic!("{other:?}"),
    }
}

#[async_std::test]
async fn lazy_startup_returns_at_once_and_the_token_follows() {
    let fetcher = |_t: Duration| {
        std::thread::sleep(Duration::from_millis(200));
        Ok(token(9, 3600))
    };
    let started = Instant::now();
    let provider = Provider::builder()
        .config(fast())
        .startup(Startup::Lazy)
        .build_with_fetcher(fetcher, spawn_async_std)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "a blocking fetch never blocks the executor"
    );
    let (generation, credentials) = provider
        .wait_newer(None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (generation, credentials.username()),
        (Generation(1), "oid-9")
    );
}

#[async_std::test]
async fn wrongpass_report_fetches_a_fresh_token_and_is_an_event() {
    let (_, fetcher) = counting(3600);
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(fetcher, spawn_async_std)
        .await
        .unwrap();
    let mut events = provider.events();
    provider.report_reauth(
        Generation(1),
        Err(ReauthError::new(ReauthErrorKind::WrongPass, "WRONGPASS")),
    );
    let (generation, _) = provider
        .wait_newer(Some(Generation(1)), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(generation, Generation(2));
    let mut got = Vec::new();
    while let Ok(event) = events.try_recv() {
        got.push(event);
    }
    assert!(
        got.iter().any(|e| matches!(e, Event::ReauthFailed { .. })),
        "{got:?}"
    );
}

#[async_std::test]
async fn a_slow_event_subscriber_never_delays_refreshes() {
    // `expires_in: 2` counts as 1 s: integer lifetimes are counted 1 s short (the server's
    // `exp` may end up to 1 s before `sent + expires_in`).
    let (_, fetcher) = counting(2);
    let provider = Provider::builder()
        .config(fast())
        .event_capacity(1)
        .build_with_fetcher(fetcher, spawn_async_std)
        .await
        .unwrap();
    let _never_read = provider.events();
    let reached = provider
        .wait_newer(Some(Generation(3)), Duration::from_secs(5))
        .await;
    assert!(reached.is_some(), "refreshes continued");
}

#[async_std::test]
async fn dropping_the_last_handle_ends_the_driver() {
    let marker = Arc::new(());
    let held = Arc::clone(&marker);
    let fetcher = move |_t: Duration| {
        let _keep = &held;
        Ok(token(1, 3600))
    };
    let (provider, driver) = Provider::builder()
        .config(fast())
        .start_with_fetcher(fetcher);
    let task = async_std::task::spawn(driver);
    provider
        .wait_newer(None, Duration::from_secs(5))
        .await
        .unwrap();
    drop(provider);
    async_std::future::timeout(Duration::from_secs(2), task)
        .await
        .expect("the driver ended");
    assert_eq!(
        Arc::strong_count(&marker),
        1,
        "the driver and its fetcher are gone"
    );
}

#[async_std::test]
async fn shutdown_is_visible_to_every_clone_and_ends_subscriptions() {
    let (_, fetcher) = counting(3600);
    let provider = Provider::builder()
        .config(fast())
        .build_with_fetcher(fetcher, spawn_async_std)
        .await
        .unwrap();
    let clone = provider.clone();
    let mut subscription = clone.subscribe();
    assert!(subscription.changed().await.is_some());
    provider.shutdown().await;
    assert_eq!(clone.status(), Status::Stopped);
    assert_eq!(subscription.changed().await, None);
}
