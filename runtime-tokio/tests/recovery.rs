//! Recovery end to end, through the emulator over a real redis-server: an identity outage
//! past token expiry, refused re-`AUTH`s, and App Service tokens (absolute `expires_on` only)
//! that arrive at the last moment
//!
//! Every timing bound here is set from measurements printed by these tests and by
//! `end_to_end.rs` (`--nocapture`); the reasoning is next to each bound.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis_entraid_core::config::{Config, RefreshPolicy, RetryPolicy};
use redis_entraid_core::identity::chain::DefaultChain;
use redis_entraid_core::identity::env as vars;
use redis_entraid_core::identity::managed::{ManagedIdentity, ManagedIdentityId};
use redis_entraid_core::identity::TokenSource as Flow;
use redis_entraid_emulator::{Emulator, Endpoint, Fault};
use redis_entraid_tokio::http::HttpClient;
use redis_entraid_tokio::redis_async::{EntraClient, EntraConnection, ManagerConfig};
use redis_entraid_tokio::{Identity, Provider, Startup};
use tokio::time::Instant;

fn config(max_retry_delay: Duration) -> Config {
    Config::builder()
        .refresh(
            RefreshPolicy::builder()
                .ratio(0.5)
                .lower_bound(Duration::from_secs(2))
                .min_interval(Duration::from_millis(500))
                .build()
                .unwrap(),
        )
        .retry(
            RetryPolicy::builder()
                .initial_delay(Duration::from_millis(100))
                .max_delay(max_retry_delay)
                .build()
                .unwrap(),
        )
        .request_timeout(Duration::from_millis(1500))
        .build()
        .unwrap()
}

async fn provider(emu: &Emulator, flow: Flow, config: Config) -> Provider {
    let client = HttpClient::builder()
        .ignore_ssl_cert_file()
        .add_root_certificates_pem(emu.ca_cert_pem().as_bytes())
        .unwrap()
        .build()
        .unwrap();
    Provider::builder()
        .config(config)
        .startup(Startup::Wait(Duration::from_secs(10)))
        .build_with_fetcher(Identity::with_client(flow, client))
        .await
        .unwrap()
}

fn secret_flow(emu: &Emulator) -> Flow {
    let env: BTreeMap<String, String> = emu.env().into_iter().collect();
    Flow::DefaultChain(DefaultChain::from_env(&env))
}

fn entra_client(emu: &Emulator, provider: &Provider) -> EntraClient {
    let addr = emu.redis_addr().unwrap();
    EntraClient::new(
        redis::Client::open(format!("redis://{addr}")).unwrap(),
        provider.clone(),
    )
}

fn response_timeout() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_serves_again_within_two_seconds_of_a_token_after_an_outage_past_expiry() {
    let emu = Emulator::builder()
        .token_lifetime(Duration::from_secs(4))
        .start()
        .await
        .unwrap();
    let provider = provider(&emu, secret_flow(&emu), config(Duration::from_millis(500))).await;
    let client = entra_client(&emu, &provider);
    let mut manager = client
        .get_connection_manager_with_config(ManagerConfig::new().connection(response_timeout()))
        .await
        .unwrap();
    let mut direct = client
        .get_multiplexed_connection_with_config(&response_timeout())
        .await
        .unwrap();
    let _: i64 = manager.incr("outage", 1).await.unwrap();

    // The identity endpoint fails every request until told otherwise: the token expires and
    // the proxy closes both connections.
    emu.faults()
        .inject(Fault::status(503).times(1_000_000).only(Endpoint::Entra));
    let mut subscription = provider.subscribe();
    let (outage_generation, _) = subscription.next_if_changed().unwrap();
    let outage_until = Instant::now() + Duration::from_secs(8);
    let mut failed_during_outage = 0u32;
    while Instant::now() < outage_until {
        if manager.incr::<_, _, i64>("outage", 1).await.is_err() {
            failed_during_outage += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        emu.counters().redis_closed_for_expiry >= 2,
        "the outage did not outlast the token: {:?}",
        emu.counters()
    );
    assert!(failed_during_outage > 0);
    assert!(direct.incr::<_, _, i64>("outage", 1).await.is_err());

    // The endpoint recovers: measure from the new token's arrival.
    emu.faults().clear();
    let (generation, _) = subscription
        .wait_changed(Duration::from_secs(10))
        .await
        .expect("a token after the outage");
    assert!(generation > outage_generation);
    let arrived = Instant::now();
    let mut manager_back = None;
    while arrived.elapsed() < Duration::from_secs(5) {
        if manager.incr::<_, _, i64>("outage", 1).await.is_ok() {
            manager_back = Some(arrived.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh: EntraConnection = client
        .get_multiplexed_connection_with_config(&response_timeout())
        .await
        .unwrap();
    let mut fresh = fresh;
    let _: i64 = fresh.incr("outage", 1).await.unwrap();
    eprintln!(
        "outage: {failed_during_outage} manager commands failed while no valid token existed; \
         manager served again {manager_back:?} after the new token, {} reconnections",
        manager.reconnections()
    );
    // 2 s is the promise (issue 9). Measured: 20-120 ms (one reconnect after the wake-up).
    let back = manager_back.expect("the manager never served again");
    assert!(back < Duration::from_secs(2), "manager back after {back:?}");
    // Every command after recovery works.
    for _ in 0..20 {
        let _: i64 = manager.incr("outage", 1).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reauth_is_retried_and_the_connection_survives() {
    const CONNECTIONS: usize = 100;
    let emu = Emulator::builder()
        .token_lifetime(Duration::from_secs(6))
        .start()
        .await
        .unwrap();
    let provider = provider(&emu, secret_flow(&emu), config(Duration::from_millis(500))).await;
    let client = entra_client(&emu, &provider);
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(
            client
                .get_multiplexed_connection_with_config(&response_timeout())
                .await
                .unwrap(),
        );
    }
    let mut manager = client
        .get_connection_manager_with_config(ManagerConfig::new().connection(response_timeout()))
        .await
        .unwrap();
    let mut subscription = provider.subscribe();
    let _ = subscription.next_if_changed();
    // Twice as many refusals as connections: every connection's first re-AUTH and many of
    // the retries are refused.
    emu.refuse_next_auths(2 * CONNECTIONS as u64);
    let started = Instant::now();
    // Three rotations: past the first token's expiry by far.
    for _ in 0..3 {
        subscription
            .wait_changed(Duration::from_secs(10))
            .await
            .expect("a rotation");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for con in &mut connections {
        let _: i64 = con.incr("refused", 1).await.unwrap();
    }
    let _: i64 = manager.incr("refused", 1).await.unwrap();
    let counters = emu.counters();
    let reports = provider.fan_out_reports();
    for r in &reports {
        eprintln!(
            "refused re-AUTH: generation {}: {} connections, {} retried AUTHs, p50 {:?}, p99 {:?}, max {:?}, least margin {:?}",
            r.generation.0, r.connections, r.failed_attempts, r.p50, r.p99, r.max, r.min_margin
        );
    }
    eprintln!("after {:?}: {counters:?}", started.elapsed());
    assert_eq!(emu.auths_to_refuse(), 0, "not every refusal was met");
    assert_eq!(counters.redis_closed_for_expiry, 0, "a connection expired");
    assert_eq!(manager.reconnections(), 0, "the manager had to reconnect");
    assert!(reports.iter().any(|r| r.failed_attempts > 0));
    assert!(reports
        .iter()
        .all(|r| r.connections == CONNECTIONS + 1 || r.generation.0 == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_service_tokens_that_arrive_at_the_last_moment_keep_every_connection() {
    const CONNECTIONS: usize = 100;
    const LIFETIME: Duration = Duration::from_secs(8);
    let emu = Emulator::builder()
        .token_lifetime(LIFETIME)
        .start()
        .await
        .unwrap();
    let env: BTreeMap<String, String> = [
        (
            vars::IDENTITY_ENDPOINT.to_owned(),
            emu.app_service_endpoint(),
        ),
        (
            vars::IDENTITY_HEADER.to_owned(),
            emu.identity_header().to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    let flow = Flow::ManagedIdentity(
        ManagedIdentity::detect(&env, ManagedIdentityId::SystemAssigned).unwrap(),
    );
    // Retries at most 200 ms apart, so a token fetched after the faults clear lands within
    // about 0.3 s (a retry delay plus one request).
    let provider = provider(&emu, flow, config(Duration::from_millis(200))).await;
    let client = entra_client(&emu, &provider);
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(
            client
                .get_multiplexed_connection_with_config(&response_timeout())
                .await
                .unwrap(),
        );
    }
    let mut subscription = provider.subscribe();
    let mut last_margin = Duration::MAX;
    let (mut generation, _) = subscription.next_if_changed().unwrap();
    for _ in 0..3 {
        // App Service answers with `expires_on` only: the machine's expiry for it.
        let expires_at = match provider.status() {
            redis_entraid_core::event::Status::Valid { expires_at, .. } => expires_at,
            other => panic!("unexpected status {other:?}"),
        };
        // Fail every token request until 1.5 s before expiry: the replacement arrives in the
        // last 1.5 s. Measured fan-out for 100 connections: well under 100 ms idle, under
        // 400 ms with the CPU saturated, so 1.5 s minus the 0.3 s retry leaves margin.
        emu.faults().inject(
            Fault::status(500)
                .times(1_000_000)
                .only(Endpoint::AppService),
        );
        let clear_at = expires_at - Duration::from_millis(1500);
        tokio::time::sleep_until(Instant::from_std(clear_at)).await;
        emu.faults().clear();
        let (next, _) = subscription
            .wait_changed(LIFETIME)
            .await
            .expect("a token after the faults cleared");
        assert!(next > generation);
        generation = next;
        tokio::time::sleep(Duration::from_millis(1600)).await;
        for con in &mut connections {
            let _: i64 = con.incr("last-moment", 1).await.unwrap();
        }
        if let Some(r) = provider.fan_out_reports().last() {
            eprintln!(
                "App Service, last moment: generation {}: {} connections, p50 {:?}, p99 {:?}, max {:?}, least margin {:?}",
                r.generation.0, r.connections, r.p50, r.p99, r.max, r.min_margin
            );
            last_margin = last_margin.min(r.min_margin.unwrap_or(Duration::MAX));
        }
    }
    let counters = emu.counters();
    assert_eq!(counters.redis_closed_for_expiry, 0, "{counters:?}");
    assert!(counters.faults_served > 0);
    eprintln!("App Service: least margin over the rounds {last_margin:?}");
}
