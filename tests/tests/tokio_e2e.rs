//! End to end on the tokio runtime: every identity flow through `Identity` (reqwest, tokio::fs),
//! redis-rs multiplexed connections and a RESP3 subscriber opened through `EntraClient`
//! (re-authentication owned by this crate), over real sockets and a real redis-server behind the
//! emulator's expiry-enforcing proxy
//!
//! Six-second tokens, 42 seconds, every identity flow at once. (The tokio crate's own
//! `tests/end_to_end.rs` covers 1000 connections, the connection manager, the cluster, RESP2
//! subscribers and fred on one flow, with and without faults.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncConnectionConfig, PushKind};
use redis_entraid_core::event::Event;
use redis_entraid_emulator::{ClientCertificate, Emulator};
use redis_entraid_tests::{e2e_config, flows, Flow, Report, SCENARIO_DURATION, TOKEN_LIFETIME};
use redis_entraid_tokio::http::ReqwestClient;
use redis_entraid_tokio::redis_async::EntraClient;
use redis_entraid_tokio::{Identity, Provider, Startup};
use tokio::time::Instant;

const CONNECTIONS: usize = 10;

async fn run_flow(flow: Flow, emu: &Emulator, duration: Duration) -> (Report, u64, u64) {
    let client = ReqwestClient::builder()
        .ignore_ssl_cert_file()
        .add_root_certificates_pem(emu.ca_cert_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let provider = Provider::builder()
        .config(e2e_config())
        .startup(Startup::Wait(Duration::from_secs(15)))
        .build_with_fetcher(Identity::with_client(flow.source, client))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", flow.name));
    let mut events = provider.events();
    let addr = emu.redis_addr().expect("proxy address");
    let redis_client = EntraClient::new(
        redis::Client::open(format!("redis://{addr}/?protocol=resp3")).unwrap(),
        provider.clone(),
    );
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    let commands = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;

    // A RESP3 subscriber: it must receive every message published while tokens rotate.
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let channel = format!("e2e:{}", flow.name);
    let sub_config =
        config
            .clone()
            .set_push_sender(move |info: redis::PushInfo| -> Result<(), ()> {
                if info.kind == PushKind::Message {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            });
    let mut subscriber = redis_client
        .get_multiplexed_connection_with_config(&sub_config)
        .await
        .unwrap();
    subscriber.subscribe(&channel).await.unwrap();

    let mut tasks = Vec::new();
    for w in 0..CONNECTIONS {
        let mut conn = redis_client
            .get_multiplexed_connection_with_config(&config)
            .await
            .unwrap();
        let (commands, failures) = (Arc::clone(&commands), Arc::clone(&failures));
        let key = format!("{}:{w}", flow.name);
        let channel = channel.clone();
        let name = flow.name;
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            let mut published = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let result: redis::RedisResult<u64> = async {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(i)
                        .query_async::<()>(&mut conn)
                        .await?;
                    redis::cmd("GET").arg(&key).query_async(&mut conn).await
                }
                .await;
                match result {
                    Ok(got) if got == i => commands.fetch_add(1, Ordering::Relaxed),
                    other => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("{name}: command failed: {other:?}");
                        }
                        0
                    }
                };
                if w == 0 && i.is_multiple_of(4) {
                    match redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(i)
                        .query_async::<u64>(&mut conn)
                        .await
                    {
                        Ok(_) => published += 1,
                        Err(e) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            eprintln!("{name}: publish failed: {e}");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            published
        }));
    }
    let mut published = 0;
    for task in tasks {
        published += task.await.unwrap();
    }
    // Let the last messages arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fetch_failures = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, Event::FetchFailed { .. }) {
            fetch_failures += 1;
        }
    }
    let generation = provider.current().map_or(0, |(g, _)| g.0);
    drop(subscriber);
    let report = Report {
        name: flow.name.to_owned(),
        connections: CONNECTIONS + 1,
        commands: commands.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        rotations: generation.saturating_sub(1),
        fetch_failures,
    };
    (report, published, received.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_connections_and_a_resp3_subscriber_survive_rotations_on_every_flow() {
    let certificate = ClientCertificate::generate("redis-entraid-e2e-tokio").unwrap();
    let emu = Emulator::builder()
        .token_lifetime(TOKEN_LIFETIME)
        .client_certificate(certificate.certificate_pem())
        .start()
        .await
        .expect("the emulator starts (is redis-server installed? .ci/install-redis.sh)");
    let pem = std::env::temp_dir().join(format!(
        "redis-entraid-e2e-tokio-{}.pem",
        std::process::id()
    ));
    std::fs::write(&pem, certificate.pem()).unwrap();
    let flows = flows(&emu, &pem).unwrap();
    let runs = flows
        .into_iter()
        .map(|flow| run_flow(flow, &emu, SCENARIO_DURATION));
    let results = futures_join_all(runs).await;
    let _ = std::fs::remove_file(&pem);
    let counters = emu.counters();
    println!("\ntokio runtime, 6 s tokens, 42 s, redis-rs multiplexed + RESP3 pub/sub");
    for (report, published, received) in &results {
        println!("  {report}  pub/sub {received}/{published} received");
    }
    println!(
        "  emulator: {} connections accepted, {} AUTH ok, {} AUTH failed, {} closed for expiry",
        counters.redis_connections_accepted,
        counters.redis_auth_ok,
        counters.redis_auth_failed,
        counters.redis_closed_for_expiry
    );
    for (report, published, received) in &results {
        assert_eq!(report.failures, 0, "{report}");
        assert!(
            report.rotations >= SCENARIO_DURATION.as_secs() / TOKEN_LIFETIME.as_secs(),
            "{report}"
        );
        assert!(*published > 50);
        assert_eq!(
            received, published,
            "{}: every published message arrived",
            report.name
        );
    }
    assert_eq!(counters.redis_closed_for_expiry, 0);
}

/// Runs the futures concurrently on this task and returns their outputs in order
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}
