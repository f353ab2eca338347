//! End to end on the async-io runtime (async-std / smol): redis-rs multiplexed connections and
//! a RESP3 subscriber opened through `EntraClient` (re-authentication owned by this crate),
//! over real sockets and a real redis-server behind the emulator's expiry-enforcing proxy
//!
//! Six-second tokens, 42 seconds, every identity flow at once; each rotation's fan-out
//! (token arrival to every connection's `AUTH` OK, and the margin left on the replaced token)
//! is printed. (The async-std crate's own `tests/recovery.rs` covers outages past expiry,
//! refused re-`AUTH`s and the connection manager.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, PushKind};
use redis_entraid_async_std::redis::{EntraClient, FanOutReport};
use redis_entraid_async_std::{HttpConfig, Provider, Startup};
use redis_entraid_core::event::Event;
use redis_entraid_emulator::{ClientCertificate, Emulator};
use redis_entraid_tests::{e2e_config, flows, Flow, Report, SCENARIO_DURATION, TOKEN_LIFETIME};

const CONNECTIONS: usize = 10;

async fn run_flow(
    flow: Flow,
    emu: &Emulator,
    ca: std::path::PathBuf,
    duration: Duration,
) -> (Report, u64, u64, Vec<FanOutReport>) {
    let provider = Provider::builder()
        .config(e2e_config())
        .http(HttpConfig::default().add_root_ca(ca).ignore_ssl_cert_file())
        .startup(Startup::Wait(Duration::from_secs(15)))
        .build(flow.source, |driver| smol::spawn(driver).detach())
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", flow.name));
    let mut events = provider.events();
    let addr = emu.redis_addr().expect("proxy address");
    let client = EntraClient::new(
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
    let mut subscriber = client
        .get_multiplexed_connection_with_config(&sub_config)
        .await
        .unwrap();
    subscriber.subscribe(&channel).await.unwrap();

    let mut tasks = Vec::new();
    for w in 0..CONNECTIONS {
        let mut conn = client
            .get_multiplexed_connection_with_config(&config)
            .await
            .unwrap();
        let (commands, failures) = (Arc::clone(&commands), Arc::clone(&failures));
        let key = format!("{}:{w}", flow.name);
        let channel = channel.clone();
        let name = flow.name;
        tasks.push(smol::spawn(async move {
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
                smol::Timer::after(Duration::from_millis(25)).await;
            }
            published
        }));
    }
    let mut published = 0;
    for task in tasks {
        published += task.await;
    }
    // Let the last messages arrive.
    smol::Timer::after(Duration::from_millis(300)).await;
    let mut fetch_failures = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, Event::FetchFailed { .. }) {
            fetch_failures += 1;
        }
    }
    let generation = provider.current().map_or(0, |(g, _)| g.0);
    // Taken while the subscriber still lives: it re-authenticated with every rotation.
    let fan_out = provider.fan_out_reports();
    drop(subscriber);
    let report = Report {
        name: flow.name.to_owned(),
        connections: CONNECTIONS + 1,
        commands: commands.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        rotations: generation.saturating_sub(1),
        fetch_failures,
    };
    (report, published, received.load(Ordering::Relaxed), fan_out)
}

#[test]
fn multiplexed_connections_and_a_resp3_subscriber_survive_rotations_on_every_flow() {
    let certificate = ClientCertificate::generate("redis-entraid-e2e-async").unwrap();
    let emu = Emulator::start_blocking(
        Emulator::builder()
            .token_lifetime(TOKEN_LIFETIME)
            .client_certificate(certificate.certificate_pem()),
    )
    .expect("the emulator starts (is redis-server installed? .ci/install-redis.sh)");
    let pem = std::env::temp_dir().join(format!(
        "redis-entraid-e2e-async-{}.pem",
        std::process::id()
    ));
    std::fs::write(&pem, certificate.pem()).unwrap();
    let flows = flows(&emu, &pem).unwrap();
    let ca = emu.ca_cert_path().to_owned();
    // One local executor runs the five flows concurrently; the connections' own tasks run on
    // smol's global executor, as redis-rs spawns them.
    let executor = smol::LocalExecutor::new();
    let results = smol::block_on(executor.run(async {
        let tasks: Vec<_> = flows
            .into_iter()
            .map(|flow| executor.spawn(run_flow(flow, &emu, ca.clone(), SCENARIO_DURATION)))
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        results
    }));
    let _ = std::fs::remove_file(&pem);
    let counters = emu.counters();
    println!("\nasync-io runtime (smol executor), 6 s tokens, 42 s, EntraClient multiplexed + RESP3 pub/sub");
    for (report, published, received, fan_out) in &results {
        println!("  {report}  pub/sub {received}/{published} received");
        print_fan_out(fan_out);
    }
    println!(
        "  emulator: {} connections accepted, {} AUTH ok, {} AUTH failed, {} closed for expiry",
        counters.redis_connections_accepted,
        counters.redis_auth_ok,
        counters.redis_auth_failed,
        counters.redis_closed_for_expiry
    );
    for (report, published, received, fan_out) in &results {
        assert_eq!(report.failures, 0, "{report}");
        // Every rotation reached every connection (the subscriber included); the last one may
        // have arrived while the workers were ending, so it is not counted.
        let (_, complete) = fan_out.split_last().expect("at least one rotation");
        for r in complete {
            assert_eq!(r.connections, report.connections, "{}: {r:?}", report.name);
        }
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

/// One line per flow: the worst of its rotations, then each rotation
fn print_fan_out(reports: &[FanOutReport]) {
    let worst = |f: fn(&FanOutReport) -> Duration| reports.iter().map(f).max().unwrap_or_default();
    let least_margin = reports.iter().filter_map(|r| r.min_margin).min();
    let retried: u64 = reports.iter().map(|r| r.failed_attempts).sum();
    println!(
        "    fan-out over {} rotations: worst p50 {:?}, worst p99 {:?}, max {:?}, least margin left {:?}, {retried} retried AUTHs",
        reports.len(),
        worst(|r| r.p50),
        worst(|r| r.p99),
        worst(|r| r.max),
        least_margin,
    );
    for r in reports {
        println!(
            "      generation {}: {} connections, p50 {:?}, p99 {:?}, max {:?}, margin {:?}",
            r.generation.0, r.connections, r.p50, r.p99, r.max, r.min_margin
        );
    }
}
