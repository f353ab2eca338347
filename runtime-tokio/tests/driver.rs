//! The driver's behaviours only tokio's paused clock can show: hours of token lifetimes in
//! milliseconds (a day of hourly tokens, retries past exhaustion, the default 10 s request
//! timeout on a fetch that never completes, the slow pace of permanent errors) and the lag a
//! slow broadcast receiver sees
//!
//! The provider contract every runtime shares (startup policies, refresh requests, re-auth
//! reports, subscriptions, events, shutdown and drop) runs on real time for all three runtimes
//! in `tests/tests/provider_scenarios.rs`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_entraid_core::config::{Config, RetryPolicy};
use redis_entraid_core::error::{FetchError, ResponseError, TransportError};
use redis_entraid_core::event::{Event, Status};
use redis_entraid_core::testing::unsigned_token;
use redis_entraid_core::token::TokenResponse;
use redis_entraid_tokio::{Provider, Startup};
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);

/// A token valid for `ttl` seconds whose `exp` moves with tokio's (paused) clock
fn mint(start: Instant, ttl: i64) -> TokenResponse {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let exp = wall + start.elapsed().as_secs() as i64 + ttl;
    let token = unsigned_token(&format!(
        r#"{{"oid":"test-oid","tid":"t","aud":"https://redis.azure.com","exp":{exp}}}"#
    ));
    TokenResponse::new(token).with_expires_in(ttl)
}

/// A source answering after 50 ms; `fail_first` requests fail with a retryable 503
fn source(
    ttl: i64,
    fail_first: u32,
    calls: Arc<AtomicU32>,
) -> impl Fn(
    Duration,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<TokenResponse, FetchError>> + Send>,
> + Send
       + Sync
       + 'static {
    let start = Instant::now();
    move |_timeout| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if n < fail_first {
                Err(ResponseError::new("unavailable", true)
                    .with_status(503)
                    .into())
            } else {
                Ok(mint(start, ttl))
            }
        })
    }
}

fn counter() -> Arc<AtomicU32> {
    Arc::new(AtomicU32::new(0))
}

#[tokio::test(start_paused = true)]
async fn rotates_hourly_tokens_for_a_day_without_expiring() {
    let calls = counter();
    let provider = Provider::builder()
        .build_with_fetcher(source(3600, 0, calls.clone()))
        .await
        .unwrap();
    let mut events = provider.events();
    let mut subscription = provider.subscribe();
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < 24 * HOUR {
        if let Some((generation, _)) = subscription.wait_changed(HOUR).await {
            seen.push((started.elapsed(), generation));
        }
    }
    // Default policy: refresh at 0.7 * 3600 s = 42 min.
    assert!(seen.len() >= 33, "{} rotations", seen.len());
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_secs(2500) && gap <= Duration::from_secs(2540),
            "{gap:?}"
        );
    }
    let mut expired = 0;
    while let Ok(event) = events.try_recv() {
        expired += usize::from(matches!(event, Event::Expired { .. }));
    }
    assert_eq!(expired, 0);
    assert!(matches!(provider.status(), Status::Valid { .. }));
}

#[tokio::test(start_paused = true)]
async fn keeps_retrying_after_retries_are_exhausted_and_recovers() {
    let calls = counter();
    let config = Config::builder()
        .retry(
            RetryPolicy::builder()
                .max_attempts(3)
                .initial_delay(Duration::from_secs(1))
                .max_delay(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let provider = Provider::builder()
        .config(config)
        .startup(Startup::Lazy)
        .build_with_fetcher(source(3600, 10, calls.clone()))
        .await
        .unwrap();
    let mut events = provider.events();
    let got = provider.wait_newer(None, 2 * HOUR).await;
    assert!(got.is_some(), "never recovered");
    assert_eq!(calls.load(Ordering::SeqCst), 11);
    let mut exhausted = 0;
    let mut failed = 0;
    while let Ok(event) = events.try_recv() {
        match event {
            Event::RetriesExhausted { .. } => exhausted += 1,
            Event::FetchFailed { .. } => failed += 1,
            _ => {}
        }
    }
    assert_eq!(exhausted, 1);
    assert_eq!(failed, 10);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_fetch_times_out_and_is_retried() {
    let calls = counter();
    let c = calls.clone();
    let start = Instant::now();
    let provider = Provider::builder()
        .startup(Startup::Wait(Duration::from_secs(60)))
        .build_with_fetcher(move |_timeout: Duration| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    std::future::pending::<()>().await;
                }
                Ok(mint(start, 3600))
            }
        })
        .await
        .unwrap();
    assert!(provider.credentials().is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The default request timeout is 10 s; the retry follows about 1 s later.
    assert!(start.elapsed() >= Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_slow_event_receiver_lags_without_slowing_the_driver() {
    let provider = Provider::builder()
        .event_capacity(2)
        .build_with_fetcher(source(60, 0, counter()))
        .await
        .unwrap();
    let mut events = provider.events();
    let mut subscription = provider.subscribe();
    let _ = subscription.next_if_changed();
    // Tokens of 60 s with the default 3-minute lower bound rotate every 10 s (the minimum
    // interval); nobody reads the events meanwhile.
    let mut rotations = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        if subscription
            .wait_changed(Duration::from_secs(60))
            .await
            .is_some()
        {
            rotations += 1;
        }
    }
    assert!(rotations >= 20, "{rotations}");
    assert!(matches!(
        events.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_retried_at_the_slow_pace() {
    let calls = counter();
    let c = calls.clone();
    let provider = Provider::builder()
        .startup(Startup::Lazy)
        .build_with_fetcher(move |_timeout: Duration| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<TokenResponse, _>(TransportError::permanent("no such file").into()) }
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    // Non-retryable failures wait max_delay (30 s) between tries; they never stop.
    let n = calls.load(Ordering::SeqCst);
    assert!((15..=25).contains(&n), "{n} calls in 10 minutes");
    assert!(provider.last_error().is_some());
}
