//! The async-io provider under async-std's own executor
//!
//! The provider contract every runtime shares (startup policies, refresh requests, re-auth
//! reports, subscriptions, events, shutdown and drop) runs for this crate on smol's executor in
//! `tests/tests/provider_scenarios.rs`; what stays here is what only this crate's API shows:
//! the driver spawned by async-std, and the `Driver` future itself completing once the last
//! handle is dropped.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis_entraid_async_std::Provider;
use redis_entraid_core::event::{Generation, Status};
use redis_entraid_core::testing::unsigned_token;
use redis_entraid_core::token::TokenResponse;

/// A token whose `oid` is `oid-1`, valid for an hour
fn token() -> TokenResponse {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    TokenResponse::new(unsigned_token(&format!(r#"{{"oid":"oid-1","exp":{exp}}}"#)))
        .with_expires_in(3600)
}

#[async_std::test]
async fn wait_startup_returns_with_the_first_token_under_async_std() {
    let provider = Provider::builder()
        .build_with_fetcher(
            |_t: Duration| Ok(token()),
            |driver| {
                async_std::task::spawn(driver);
            },
        )
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

#[async_std::test]
async fn dropping_the_last_handle_completes_the_driver_future() {
    let marker = Arc::new(());
    let held = Arc::clone(&marker);
    let fetcher = move |_t: Duration| {
        let _keep = &held;
        Ok(token())
    };
    let (provider, driver) = Provider::builder().start_with_fetcher(fetcher);
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
