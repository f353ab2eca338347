//! The redis-rs credentials stream, with paused time: latest value only, never blocks the
//! driver, reports a connection that stopped re-authenticating

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::auth::StreamingCredentialsProvider;
use redis_entraid_core::event::{Event, Generation};
use redis_entraid_core::testing::unsigned_token;
use redis_entraid_core::token::TokenResponse;
use redis_entraid_tokio::Provider;
use tokio::time::Instant;

async fn provider(ttl: i64) -> Provider {
    let start = Instant::now();
    let n = Arc::new(AtomicU32::new(0));
    Provider::builder()
        .build_with_fetcher(move |_timeout: Duration| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            async move {
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let exp = wall + start.elapsed().as_secs() as i64 + ttl;
                let token = unsigned_token(&format!(r#"{{"oid":"oid-{i}","exp":{exp}}}"#));
                Ok(TokenResponse::new(token).with_expires_in(ttl))
            }
        })
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_stream_yields_the_current_credentials_then_each_newer_generation() {
    let provider = provider(3600).await;
    let mut stream = StreamingCredentialsProvider::subscribe(&provider);
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.username(), "oid-0");
    // Hourly tokens rotate at 42 min; the next item waits for it.
    let started = Instant::now();
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!(second.username(), "oid-1");
    assert!(started.elapsed() >= Duration::from_secs(2500));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_sees_only_the_latest_generation_and_never_delays_the_driver() {
    let provider = provider(60).await;
    let mut stalled = StreamingCredentialsProvider::subscribe(&provider);
    let _ = stalled.next().await.unwrap().unwrap();
    // Nobody polls `stalled` for ten minutes; the driver keeps rotating (every 10 s).
    tokio::time::sleep(Duration::from_secs(600)).await;
    let (latest, _) = provider.current().unwrap();
    assert!(latest.0 >= 50, "{latest:?}");
    let next = stalled.next().await.unwrap().unwrap();
    assert_eq!(next.username(), format!("oid-{}", latest.0 - 1));
}

#[tokio::test(start_paused = true)]
async fn a_stream_dropped_right_after_a_rotation_reports_the_failed_reauth_once() {
    let provider = provider(60).await;
    let mut events = provider.events();
    let mut streams: Vec<_> = (0..3)
        .map(|_| StreamingCredentialsProvider::subscribe(&provider))
        .collect();
    for s in &mut streams {
        let _ = s.next().await.unwrap().unwrap();
    }
    // Each stream is handed the rotated generation, then dropped before asking for more:
    // what redis-rs's re-auth task does when AUTH fails.
    for s in &mut streams {
        let _ = s.next().await.unwrap().unwrap();
    }
    drop(streams);
    let mut reported = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let Event::ReauthFailed { generation, .. } = event {
            reported.push(generation);
        }
    }
    assert_eq!(reported, vec![Generation(2)]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_ends_with_an_error_once_the_provider_stops() {
    let provider = provider(3600).await;
    let mut stream = StreamingCredentialsProvider::subscribe(&provider);
    let _ = stream.next().await.unwrap().unwrap();
    provider.shutdown().await;
    let end = stream.next().await.unwrap();
    assert_eq!(
        end.unwrap_err().kind(),
        redis::ErrorKind::AuthenticationFailed
    );
    assert!(stream.next().await.is_none());
}
