//! The `metrics` feature: a driver hands its observations to the `metrics` facade, so an
//! installed exporter (here Prometheus's, rendered as text) sees tokens, failures, rotations,
//! the status and the remaining lifetime move

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use redis_entraid_core::config::{Config, RetryPolicy};
use redis_entraid_core::error::{FetchError, ResponseError};
use redis_entraid_core::event::Generation;
use redis_entraid_core::testing::unsigned_token;
use redis_entraid_core::token::TokenResponse;
use redis_entraid_tokio::{Provider, Startup};

/// A token valid for `ttl` seconds whose `exp` moves with tokio's (paused) clock (the wall
/// clock stands still in paused time, and a token with the same `exp` is not newer)
fn mint(start: tokio::time::Instant, ttl: i64) -> TokenResponse {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let exp = wall + start.elapsed().as_secs() as i64 + ttl;
    let token = unsigned_token(&format!(
        r#"{{"oid":"metrics-oid","aud":"https://redis.azure.com","exp":{exp}}}"#
    ));
    TokenResponse::new(token).with_expires_in(ttl)
}

/// The value of the first sample of `name` whose labels contain every one of `labels`
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .find(|line| labels.iter().all(|l| line.contains(l)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(start_paused = true)]
async fn the_driver_records_tokens_failures_rotations_and_the_remaining_lifetime() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    // Token 1 at once; a refresh fails twice (503), then token 2 arrives.
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let start = tokio::time::Instant::now();
    let fetcher = move |_timeout: Duration| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if n == 1 || n == 2 {
                Err(FetchError::from(
                    ResponseError::new("unavailable", true).with_status(503),
                ))
            } else {
                Ok(mint(start, 3600))
            }
        }
    };
    let config = Config::builder()
        .retry(
            RetryPolicy::builder()
                .initial_delay(Duration::from_secs(1))
                .max_delay(Duration::from_secs(2))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let provider = Provider::builder()
        .config(config)
        .startup(Startup::Wait(Duration::from_secs(5)))
        .build_with_fetcher(fetcher)
        .await
        .unwrap();
    let first = render_after(&handle, Duration::from_secs(2)).await;
    assert_eq!(
        sample(
            &first,
            "redis_entraid_token_requests_total",
            &[r#"outcome="ok""#]
        ),
        Some(1.0),
        "{first}"
    );
    let left = sample(&first, "redis_entraid_token_remaining_seconds", &[]).unwrap();
    assert!(
        (3590.0..=3600.0).contains(&left),
        "the gauge follows the clock: {left}\n{first}"
    );
    assert_eq!(
        sample(&first, "redis_entraid_status", &[r#"state="valid""#]),
        Some(1.0)
    );

    // A refresh that meets two 503s before it gets its token.
    tokio::time::sleep(Duration::from_secs(60)).await;
    provider.refresh_now();
    let newer = provider
        .wait_newer(Some(Generation(1)), Duration::from_secs(600))
        .await;
    assert!(newer.is_some(), "the refresh succeeds after two failures");
    let later = render_after(&handle, Duration::from_secs(2)).await;
    assert_eq!(
        sample(
            &later,
            "redis_entraid_token_requests_total",
            &[r#"outcome="error""#]
        ),
        Some(2.0),
        "{later}"
    );
    assert_eq!(
        sample(
            &later,
            "redis_entraid_fetch_failures_total",
            &[r#"kind="response""#]
        ),
        Some(2.0),
        "{later}"
    );
    assert_eq!(
        sample(&later, "redis_entraid_rotations_total", &[]),
        Some(1.0)
    );
    assert!(
        sample(
            &later,
            "redis_entraid_fetch_duration_seconds_count",
            &[r#"outcome="ok""#]
        )
        .is_some_and(|n| n >= 2.0),
        "{later}"
    );
    assert_eq!(
        sample(&later, "redis_entraid_events_dropped_total", &[]),
        Some(0.0)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

/// Lets the driver run for `wait` (paused time), then renders what the exporter holds
async fn render_after(handle: &PrometheusHandle, wait: Duration) -> String {
    tokio::time::sleep(wait).await;
    handle.render()
}
